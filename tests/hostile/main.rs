//! Hostile inputs: one fixture per known attack, mutations of every valid fixture, special
//! files where a regular one is expected, and look-alike files beside a sharded checkpoint.

#[path = "../common/mod.rs"]
mod common;

mod malformed;
mod mutations;
mod sharded_cleanup;
mod special_files;
