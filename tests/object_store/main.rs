//! Reading checkpoints from object storage, against a real S3-compatible server (s3s-fs on
//! 127.0.0.1, see server.rs) and a fault-injecting proxy in front of it (proxy.rs).

#[path = "../common/mod.rs"]
mod common;

mod http;
mod proxy;
mod server;

#[cfg(feature = "cli")]
mod cli;
mod engine;
mod harness;
