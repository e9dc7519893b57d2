//! Conversions both ways: the fixtures, random tensors, sharded checkpoints, exports from
//! stores of many arrays, the copy engine, and headers and checkpoints of many tensors under
//! low open-file limits.

#[path = "../common/mod.rs"]
mod common;

mod copy_engine;
mod export_sources;
mod header_only;
mod progress;
mod roundtrip_props;
mod safetensors_fixtures;
mod scale;
mod sharded;
mod shards_nofile;
