//! npkio: lossless, zero-copy conversion between SafeTensors files and NumPack directories.
#![warn(missing_docs)]

pub mod convert;
pub mod copy;
pub mod dtype;
pub mod error;
pub mod ffi;
pub mod numpack;
mod publish;
pub mod safetensors;

pub use convert::{
    from_safetensors, from_safetensors_file, from_safetensors_file_with, from_safetensors_with,
    get_safetensors_metadata, iter_safetensors, to_safetensors, to_safetensors_file,
    to_safetensors_file_with, Options, SafeTensorsIter, SafeTensorsMetadata, TensorInput,
    TensorMeta, Tensors, DEFAULT_CHUNK_SIZE,
};
pub use dtype::DType;
pub use error::{Error, ErrorKind, Result};
pub use numpack::NumPack;
