//! The SafeTensors side: a reader that maps the file and borrows tensor bytes from the
//! mapping, and a header writer byte-compatible with the `safetensors` crate's serializer.
//!
//! Header parsing and validation are the crate's own (`SafeTensors::read_metadata`); npkio
//! adds only what the crate does not keep: the order of the `__metadata__` entries.

pub mod index;
pub mod reader;
pub mod writer;

pub use reader::{SafeTensorsFile, Tensor, TensorInfo};
pub use writer::{plan_header, HeaderPlan};
