//! The `npkio` command line as a user runs it.

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod load;
