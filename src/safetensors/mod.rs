//! The SafeTensors side: a reader that maps the file and borrows tensor bytes from the
//! mapping, and a header writer byte-compatible with the `safetensors` crate's serializer.
//!
//! Header validation follows the crate's own rules: each entry is read with the fields and
//! types of its `TensorInfo`, the dtype by its `Dtype`, and the table is checked as its
//! `Metadata::validate` checks it, with the same errors (`SafeTensors::read_metadata` names
//! a parse error exactly as the crate does). npkio parses the header once, in
//! `header::read_metadata`, the one parser of untrusted SafeTensors headers: every caller
//! (the Rust API, the C ABI, the command line) goes through it. Its table keeps what the
//! crate does not: the order of the `__metadata__` entries.

mod header;
pub mod index;
pub mod reader;
pub mod writer;

pub use reader::{SafeTensorsFile, Tensor, TensorInfo};
pub use writer::{plan_header, HeaderPlan};
