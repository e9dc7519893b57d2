//! npkio: lossless, zero-copy conversion between SafeTensors files and NumPack directories.
//!
//! The design in one screen:
//!
//! - [`dtype`]: one [`DType`] for both formats and the table that maps between them.
//! - [`numpack`]: the NumPack 0.7 format (metadata, bitmaps, segments, file naming, the
//!   `npkio.json` sidecar) and the [`NumPack`] store.
//! - [`safetensors`](mod@safetensors): the reader (a mapped file, tensors as borrowed views),
//!   the header writer byte-compatible with the `safetensors` crate, sharded checkpoints.
//! - [`convert`]: the six functions of the API ([`from_safetensors_file`],
//!   [`to_safetensors_file`], [`from_safetensors`], [`to_safetensors`],
//!   [`get_safetensors_metadata`], [`iter_safetensors`]); outputs are built beside their
//!   target and appear in one rename.
//! - [`view`]: [`TensorView`], the borrowed view of a tensor that both formats hand out.
//! - [`copy`]: the one place that moves bytes, in parallel page-aligned chunks.
//! - [`ffi`]: the C ABI (`include/npkio.h`), a thin skin over the above.
//!
//! ```
//! # fn main() -> npkio::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors");
//! # let npk = dir.path().join("tiny.npk");
//! # let back = dir.path().join("back.safetensors");
//! use npkio::{from_safetensors_file, to_safetensors_file, NumPack, DEFAULT_CHUNK_SIZE};
//!
//! // What is in the checkpoint (header only).
//! let meta = npkio::get_safetensors_metadata(&model)?;
//! assert_eq!(meta.tensors.len(), 21);
//!
//! // To NumPack and back: byte-identical.
//! from_safetensors_file(&model, &npk, None::<&[&str]>, false, DEFAULT_CHUNK_SIZE)?;
//! to_safetensors_file(&npk, &back, None::<&[&str]>, None, DEFAULT_CHUNK_SIZE)?;
//! assert!(std::fs::read(&model).unwrap() == std::fs::read(&back).unwrap());
//!
//! // Zero-copy views of the NumPack side, with the true dtype (BF16 here).
//! let store = NumPack::open(&npk)?;
//! let w = store.view("lm_head.weight")?;
//! assert_eq!((w.dtype, w.shape, w.borrowed), (npkio::DType::BF16, &[256u64, 64][..], true));
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod convert;
pub mod copy;
pub mod dtype;
pub mod error;
pub mod ffi;
mod fsutil;
mod names;
pub mod numpack;
mod paths;
mod publish;
pub mod safetensors;
pub mod save;
pub mod view;

pub use convert::{
    from_safetensors, from_safetensors_file, from_safetensors_file_with, from_safetensors_with,
    get_safetensors_metadata, iter_safetensors, to_safetensors, to_safetensors_file,
    to_safetensors_file_with, Options, SafeTensorsIter, SafeTensorsMetadata, TensorInput,
    TensorMeta, Tensors, DEFAULT_CHUNK_SIZE,
};
pub use dtype::DType;
pub use error::{Error, ErrorKind, Result};
pub use numpack::NumPack;
pub use save::{safetensors_header, save_safetensors_file};
pub use view::TensorView;
