//! The loader against a plain reference.

#[path = "../common/mod.rs"]
mod common;

mod load;
