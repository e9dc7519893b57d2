//! The tensor view both formats hand out: a name, a dtype, a shape and the bytes in C order,
//! borrowed from the object that produced the view.

use crate::dtype::DType;

/// A read-only view of one tensor (a SafeTensors tensor or a NumPack array).
///
/// Everything is borrowed from the object that made the view ([`SafeTensorsFile`],
/// [`Checkpoint`] or [`NumPack`]) and stays valid as long as it does.
///
/// [`SafeTensorsFile`]: crate::safetensors::SafeTensorsFile
/// [`Checkpoint`]: crate::safetensors::index::Checkpoint
/// [`NumPack`]: crate::NumPack
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    /// The tensor's name.
    pub name: &'a str,
    /// The true dtype.
    pub dtype: DType,
    /// The shape (for a NumPack array, the logical shape: rows after deletions).
    pub shape: &'a [u64],
    /// The bytes in C order.
    pub data: &'a [u8],
    /// True when `data` borrows a mapped file (always, for a SafeTensors tensor); false when
    /// the store gathered a copy (segmented NumPack arrays and arrays with deleted rows,
    /// gathered once and cached).
    pub borrowed: bool,
}
