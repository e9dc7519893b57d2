//! Storage layout: the dtype and shape NumPack 0.7 stores for an array, its metadata record,
//! and the files that hold its bytes.

use std::path::PathBuf;

use crate::dtype::{self, DType};
use crate::error::{Error, Result};
use crate::numpack::metadata::ArrayRecord;
use crate::numpack::naming;
use crate::numpack::sidecar::Entry;

use super::Array;

/// Where an array's bytes live. One word: the common case names no path of its own.
#[derive(Clone, Debug)]
pub enum Storage {
    /// One `.npkd` file: the record's `data_file` (checked to stay inside the directory when
    /// the store opened, and again, as it is opened, by `NumPack::open_data`).
    Plain,
    /// A manifest and its segment files.
    Segmented(Box<Segments>),
    /// None usable: the placeholder of an array whose record was refused. No file of it is
    /// named, so that nothing is removed or linked through a path that was refused.
    Refused,
}

/// A segmented array's files.
#[derive(Clone, Debug)]
pub struct Segments {
    /// The `.npkseg` manifest.
    pub manifest: PathBuf,
    /// The segments in row order: (relative path, rows, bytes).
    pub segments: Vec<(PathBuf, u64, u64)>,
}

/// The shape NumPack 0.7 stores for an array of `dtype` and true `shape`: `[1]` for a 0-d
/// array; for F4/F6 the last dimension counted in bytes when it divides evenly, else the
/// flat byte count; otherwise the shape itself.
pub fn storage_shape(dtype: DType, shape: &[u64]) -> Vec<u64> {
    if shape.is_empty() {
        return vec![1];
    }
    if dtype.is_byte_sized() {
        return shape.to_vec();
    }
    let bits = u64::from(dtype.bits());
    let last = shape[shape.len() - 1];
    match last.checked_mul(bits) {
        Some(b) if b % 8 == 0 => {
            let mut s = shape.to_vec();
            let n = s.len();
            s[n - 1] = b / 8;
            s
        }
        _ => vec![dtype::byte_len(dtype, shape).unwrap_or(0)],
    }
}

/// The metadata record, and the sidecar entry if one is needed, for an array stored at
/// `data_file`.
pub fn make_record(
    name: &str,
    data_file: String,
    dtype: DType,
    shape: &[u64],
    last_modified: u64,
) -> Result<(ArrayRecord, Option<Entry>)> {
    let size_bytes = dtype::byte_len(dtype, shape).ok_or_else(|| {
        Error::invalid_argument(format!("shape {shape:?} of {dtype} overflows")).array(name)
    })?;
    let sshape = storage_shape(dtype, shape);
    let record = ArrayRecord {
        name: name.to_string(),
        shape: sshape,
        data_file,
        last_modified,
        size_bytes,
        dtype_code: dtype.storage_code(),
        compression: 0,
        compression_level: 0,
        original_size: 0,
        compressed_size: 0,
        block_info: None,
    };
    let entry = needs_entry(&record, dtype, shape).then(|| Entry::new(&record, dtype, shape));
    Ok((record, entry))
}

/// Whether an array of `dtype` and true `shape` stored as `record` needs a sidecar entry:
/// when NumPack 0.7 has no such dtype, or stores another shape.
pub fn needs_entry(record: &ArrayRecord, dtype: DType, shape: &[u64]) -> bool {
    dtype.numpack_code().is_none() || record.shape != shape
}

pub(super) fn physical_rows(a: &Array) -> u64 {
    a.record.shape.first().copied().unwrap_or(1)
}

pub(super) fn logical_len(a: &Array) -> u64 {
    match &a.bitmap {
        None => a.record.size_bytes,
        Some(b) => {
            let row_bytes = a
                .record
                .size_bytes
                .checked_div(physical_rows(a))
                .unwrap_or(0);
            row_bytes * b.active_count()
        }
    }
}

pub(super) fn is_zero_copy(a: &Array) -> bool {
    logical_len(a) == 0 || (matches!(a.storage, Storage::Plain) && a.bitmap.is_none())
}

pub(super) fn bitmap_path(record: &ArrayRecord) -> PathBuf {
    let stem = naming::stem_of(&record.data_file).unwrap_or(&record.name);
    PathBuf::from(naming::bitmap_file(stem))
}

pub(super) fn files_of(a: &Array) -> Vec<PathBuf> {
    let mut files = Vec::new();
    files.extend(data_files_of(a));
    files.push(bitmap_path(&a.record));
    files
}

/// The data file, or manifest and segments, of `a`, relative to the directory (as checked:
/// `./x` is `x`).
pub(super) fn data_files_of(a: &Array) -> Vec<PathBuf> {
    match &a.storage {
        Storage::Plain => crate::sys::paths::checked_relative(&a.record.data_file)
            .ok()
            .into_iter()
            .collect(),
        Storage::Segmented(s) => std::iter::once(s.manifest.clone())
            .chain(s.segments.iter().map(|x| x.0.clone()))
            .collect(),
        Storage::Refused => Vec::new(),
    }
}
