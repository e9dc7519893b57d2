//! Conversions under failure: killed at any moment or at every step of publishing, failing
//! writes, sources truncated underneath, concurrent writers, shared and hostile output
//! directories, and exhausted resources (open files, address space, threads).

#[path = "../common/mod.rs"]
mod common;

mod atomicity;
mod concurrency;
mod crash;
mod limits_inspect;
mod limits_load;
mod limits_memory;
mod limits_nofile;
mod publish;
mod publish_shared;
mod truncation;
