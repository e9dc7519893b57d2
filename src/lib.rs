//! npkio: lossless, zero-copy conversion between SafeTensors files and NumPack directories.
//!
//! The design in one screen (modules in `src/`; the API is what this page lists):
//!
//! - `dtype`: one [`DType`] for both formats and C, generated from one table.
//! - `numpack`: the NumPack 0.7 format (metadata, bitmaps, segments, file naming, the
//!   `npkio.json` sidecar) and the [`NumPack`] store.
//! - `safetensors`: the reader ([`SafeTensorsFile`], tensors as borrowed views), the header
//!   writer byte-compatible with the `safetensors` crate, sharded checkpoints
//!   ([`Checkpoint`]).
//! - `convert`: the six functions of the API ([`from_safetensors_file`],
//!   [`to_safetensors_file`], [`from_safetensors`], [`to_safetensors`],
//!   [`get_safetensors_metadata`], [`iter_safetensors`]) and their [`Options`].
//! - `publish`: outputs are built beside their target under a lock and appear in one
//!   rename.
//! - `view`: [`TensorView`], the borrowed view of a tensor that both formats hand out.
//! - `copy`: the copy engine that moves the conversions' bytes, in parallel page-aligned
//!   chunks ([`CopyMethod`]).
//! - [`load`]: the loader: tensors and slices of any checkpoint into the caller's memory or
//!   a sink, buffered or `O_DIRECT`, validated before any byte moves. A public module of
//!   its own: its vocabulary (`Request`, `Slice`, `Method`, `Staging`) is the loader's.
//! - [`ffi`]: the C ABI (`include/npkio.h`), a thin skin over the above.
//! - `error`: one [`Error`] whose [`ErrorKind`] is the C status and the CLI's exit code.
//! - `container` ([`Container::detect`]), `save` ([`save_safetensors_file`]), `units`
//!   ([`parse_size`]).
//! - `sys`: the filesystem layer under all of the above (positioned reads, `openat`,
//!   `safe_open`: files inside a directory, never followed out; atomic small files;
//!   `fdlimit`: batches sized from `RLIMIT_NOFILE`).
//! - `positions`: one hash table of positions, for lookups by name without copying names.
//! - `progress`: one [`Progress`] callback, `(bytes done, bytes in all)`, for conversions
//!   and loads alike.
//!
//! Tensors are described by kind of question, never twice for one:
//!
//! | what | type | holds |
//! |---|---|---|
//! | what a file says | [`TensorInfo`] | a SafeTensors header entry: name, dtype, shape, offsets |
//! | | [`TensorMeta`] | the same in [`get_safetensors_metadata`]'s table (keyed by name), with the shard of a sharded checkpoint |
//! | | [`ArrayInfo`] | a NumPack array: logical and stored dtype and shape, dropped rows |
//! | what a load delivers | [`load::LoadTensor`] | a tensor a [`load::Loader`] can read: dtype, logical shape and bytes |
//! | | [`load::Output`] | what one [`load::Request`] delivers: dtype, sliced shape, bytes |
//! | bytes, borrowed | [`TensorView`] | name, dtype, shape and bytes borrowed from a mapping |
//! | | [`Tensor`] | one of [`iter_safetensors`]'s tensors: a view that keeps its file mapped |
//! | | [`ArrayInput`] | a tensor in the caller's memory, going into a store |
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
#![deny(missing_docs)]

mod container;
mod convert;
mod copy;
mod dtype;
mod error;
pub mod ffi;
mod hook;
pub mod load;
mod names;
mod numpack;
mod positions;
mod progress;
mod publish;
pub mod remote;
mod safetensors;
mod save;
mod sys;
mod units;
mod view;

pub use container::Container;
pub use convert::{
    from_safetensors, from_safetensors_file, from_safetensors_file_with, from_safetensors_with,
    get_safetensors_metadata, iter_safetensors, to_safetensors, to_safetensors_file,
    to_safetensors_file_with, Options, SafeTensorsIter, SafeTensorsMetadata, TensorMeta, Tensors,
    DEFAULT_CHUNK_SIZE,
};
pub use copy::CopyMethod;
pub use dtype::DType;
pub use error::{Error, ErrorKind, Result};
pub use numpack::{ArrayInfo, ArrayInput, NumPack, Rows};
pub use progress::Progress;
pub use safetensors::index::Checkpoint;
pub use safetensors::{SafeTensorsFile, Tensor, TensorInfo};
pub use save::{safetensors_header, save_safetensors_file};
pub use units::parse_size;
pub use view::TensorView;

/// Another name for [`ArrayInput`], the in-memory tensor [`from_safetensors`] and
/// [`NumPack::save`] take; kept for existing callers.
#[deprecated(
    since = "0.1.0",
    note = "use `ArrayInput`, the one in-memory tensor type"
)]
pub type TensorInput<'a> = ArrayInput<'a>;

/// Building blocks that npkio's own tests, benchmarks and fuzz targets exercise directly:
/// the copy engine, the NumPack metadata, bitmap and segment codecs, the SafeTensors header
/// writer, and the dtype tables. Not part of the API: they change without notice.
#[doc(hidden)]
pub mod internals {
    /// The copy engine.
    pub mod copy {
        pub use crate::copy::*;
    }
    /// Dtype tables and sizes.
    pub mod dtype {
        pub use crate::dtype::*;
    }
    /// The NumPack format's codecs.
    pub mod numpack {
        pub use crate::numpack::{bitmap, metadata, segments, sidecar};

        /// The metadata record of an array of `store`, as on disk.
        pub fn record<'a>(
            store: &'a crate::NumPack,
            name: &str,
        ) -> crate::Result<&'a metadata::ArrayRecord> {
            store.record(name)
        }

        /// The files that make up an array of `store`, relative to its directory: data
        /// file or manifest and segments, and the deletion bitmap if any.
        pub fn array_files(
            store: &crate::NumPack,
            name: &str,
        ) -> crate::Result<Vec<std::path::PathBuf>> {
            store.array_files(name)
        }
    }
    /// Points where a test runs its own code in the middle of an operation.
    pub mod hooks {
        pub use crate::hook::{set, Hook};
    }
    /// The SafeTensors header writer.
    pub mod safetensors {
        pub use crate::safetensors::writer;
    }
}
