//! The SafeTensors side: a reader that maps the file and borrows tensor bytes from the
//! mapping, and a header writer byte-compatible with the `safetensors` crate's serializer.
//!
//! Header validation is the crate's own (its `TensorInfo` deserializer for each entry, its
//! `Metadata::new` for offsets and sizes; `SafeTensors::read_metadata` names the errors);
//! npkio parses the header once into its own table, keeping what the crate does not: the
//! order of the `__metadata__` entries.

pub mod index;
pub mod reader;
pub mod writer;

pub use reader::{SafeTensorsFile, Tensor, TensorInfo};
pub use writer::{plan_header, HeaderPlan};
