//! A checkpoint's whole description in one call: `npkio_safetensors_metadata_json` gives
//! what `get_safetensors_metadata` returns (every tensor's dtype, shape and offsets, and the
//! `__metadata__`) as one compact JSON document, so that a binding builds its result from a
//! single foreign call instead of several per tensor. `npkio_safetensors_bytes_json` does
//! the same for a whole file held in memory, so that a binding can view its tensors in
//! place (the `load(bytes)` of the `safetensors` packages).

use std::ffi::c_char;

use serde_json::{json, Map, Value};

use super::args::{path_arg, slice_arg, Out};
use super::error::{FfiError, FfiResult, NpkioStatus};
use super::panic::status_boundary;
use crate::convert::{get_safetensors_metadata, SafeTensorsMetadata};
use crate::dtype::DType;

/// One tensor's entry.
fn tensor_json(dtype: &str, shape: &[u64], (begin, end): (u64, u64)) -> Value {
    json!({"shape": shape, "dtype": dtype, "data_offsets": [begin, end]})
}

/// The JSON text of a checkpoint's description.
fn metadata_json(meta: &SafeTensorsMetadata) -> Vec<u8> {
    let mut tensors = Map::with_capacity(meta.tensors.len());
    for (name, t) in &meta.tensors {
        let dtype = t.dtype.safetensors_name().unwrap_or(t.dtype.numpy_name());
        tensors.insert(name.clone(), tensor_json(dtype, &t.shape, t.data_offsets));
    }
    let metadata: Map<String, Value> = meta
        .metadata
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut doc = Map::with_capacity(3);
    doc.insert("tensors".into(), Value::Object(tensors));
    doc.insert("metadata".into(), Value::Object(metadata));
    doc.insert("has_metadata".into(), Value::Bool(meta.metadata.is_some()));
    // Serializing a `Value` of strings, numbers and objects cannot fail.
    serde_json::to_vec(&Value::Object(doc)).unwrap_or_default()
}

/// The JSON text describing a whole SafeTensors file held in memory, validated by the
/// `safetensors` crate as its `deserialize` validates it.
fn bytes_json(data: &[u8]) -> FfiResult<Vec<u8>> {
    let (n, meta) = ::safetensors::SafeTensors::read_metadata(data).map_err(|e| {
        FfiError::new(
            NpkioStatus::Malformed,
            format!("invalid SafeTensors data: {e}"),
        )
    })?;
    let mut tensors = Map::new();
    for name in meta.offset_keys() {
        let Some(info) = meta.info(&name) else {
            continue;
        };
        let Some(dtype) = DType::from_safetensors(info.dtype) else {
            return Err(FfiError::new(
                NpkioStatus::Unsupported,
                format!("tensor {name:?}: dtype {} is not supported", info.dtype),
            ));
        };
        let shape: Vec<u64> = info.shape.iter().map(|&d| d as u64).collect();
        let offsets = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
        let dtype = dtype.safetensors_name().unwrap_or(dtype.numpy_name());
        tensors.insert(name, tensor_json(dtype, &shape, offsets));
    }
    let mut doc = Map::with_capacity(2);
    doc.insert("tensors".into(), Value::Object(tensors));
    doc.insert("data_start".into(), json!(8 + n));
    Ok(serde_json::to_vec(&Value::Object(doc)).unwrap_or_default())
}

/// Copies `doc` to the caller's buffer as both functions here promise.
///
/// # Safety
///
/// `buffer` NULL or `capacity` writable bytes.
unsafe fn give(
    doc: &[u8],
    buffer: *mut c_char,
    capacity: usize,
    len_out: Out<usize>,
) -> FfiResult<()> {
    len_out.set(doc.len());
    if capacity < doc.len() {
        return Err(FfiError::new(
            NpkioStatus::BufferTooSmall,
            format!(
                "the description takes {} bytes; the buffer has {capacity}",
                doc.len()
            ),
        ));
    }
    if buffer.is_null() {
        return Err(FfiError::null("buffer"));
    }
    // SAFETY: `buffer` points to `capacity >= doc.len()` writable bytes (the caller's
    // contract), which npkio's buffer cannot overlap; the NUL only when it fits.
    unsafe {
        std::ptr::copy_nonoverlapping(doc.as_ptr().cast::<c_char>(), buffer, doc.len());
        if capacity > doc.len() {
            *buffer.add(doc.len()) = 0;
        }
    }
    Ok(())
}

/// Describes the SafeTensors file (or sharded checkpoint: its `*.safetensors.index.json`
/// or a directory holding one) `path` in one UTF-8 JSON document, reading headers only:
///
/// `{"tensors": {name: {"shape": [..], "dtype": "F32", "data_offsets": [begin, end]}, ...},
/// "metadata": {key: value, ...}, "has_metadata": true}`
///
/// Tensors are in file order (shard by shard), `data_offsets` relative to the data section
/// of the file holding the tensor; `metadata` is the `__metadata__` section (the first
/// shard's), `{}` with `has_metadata` false when there is none.
///
/// `*json_len` receives the document's length in bytes (without a NUL). When
/// `capacity` is at least that, the document is copied to `buffer` (NUL-terminated when
/// there is room for it) and the result is `NPKIO_STATUS_OK`; otherwise nothing else is
/// written and the result is `NPKIO_STATUS_BUFFER_TOO_SMALL`: call again with a buffer of
/// `*json_len` bytes.
///
/// # Safety
///
/// `path` NULL or a NUL-terminated string; `buffer` NULL (only when `capacity` is 0) or
/// `capacity` writable bytes; `json_len` a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_safetensors_metadata_json(
    path: *const c_char,
    buffer: *mut c_char,
    capacity: usize,
    json_len: *mut usize,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (path, len_out) = unsafe { (path_arg(path, "path")?, Out::new(json_len, "json_len")?) };
        let doc = metadata_json(&get_safetensors_metadata(path)?);
        // SAFETY: the caller's contract on `buffer`.
        unsafe { give(&doc, buffer, capacity, len_out) }
    })
}

/// Describes a whole SafeTensors file held in memory (`data`, `len` bytes), validated as
/// the `safetensors` crate's `deserialize` validates it, in one UTF-8 JSON document:
///
/// `{"tensors": {name: {"shape": [..], "dtype": "F32", "data_offsets": [begin, end]}, ...},
/// "data_start": 8 + header length}`
///
/// Tensors are in the order of their offsets; `data_offsets` are relative to `data_start`.
/// `json_len`, `buffer` and `capacity` work as in `npkio_safetensors_metadata_json`. npkio
/// reads `data` during the call only.
///
/// # Safety
///
/// `data` NULL (only when `len` is 0) or `len` readable bytes; `buffer` NULL (only when
/// `capacity` is 0) or `capacity` writable bytes; `json_len` a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_safetensors_bytes_json(
    data: *const u8,
    len: usize,
    buffer: *mut c_char,
    capacity: usize,
    json_len: *mut usize,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (data, len_out) = unsafe {
            (
                slice_arg(data, len, "data")?,
                Out::new(json_len, "json_len")?,
            )
        };
        let doc = bytes_json(data)?;
        // SAFETY: the caller's contract on `buffer`.
        unsafe { give(&doc, buffer, capacity, len_out) }
    })
}
