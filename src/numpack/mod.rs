//! The NumPack 0.7 format: metadata, deletion bitmaps, segments, file naming, the npkio
//! sidecar, and the store that ties them together.
//!
//! The on-disk format is described in `docs/format.md`.

pub mod bitmap;
pub mod metadata;
pub mod naming;
pub mod segments;
pub mod sidecar;
pub mod store;

pub use store::{ArrayInfo, ArrayInput, NumPack, Rows};
