//! A NumPack directory's array records in one call: `npkio_numpack_records_json` gives
//! every array's record as stored in `metadata.npkm` (physical shape, data file,
//! modification time, size, dtype code) and its logical shape, as one JSON document, so
//! that a binding answers NumPack's `get_metadata` and `get_modify_time` with a single
//! foreign call.

use std::ffi::c_char;

use serde_json::{json, Map, Value};

use super::args::{give_json, Out};
use super::error::NpkioStatus;
use super::handle::handle_ref;
use super::numpack::NpkioNumpack;
use super::panic::status_boundary;

/// Writes a JSON document describing every array of the directory `npk` to `buffer`:
///
/// `{"base_dir": "...", "arrays": {name: {"shape": [physical], "logical_shape": [..],
/// "data_file": "data_x.npkd", "last_modified": microseconds, "size_bytes": n,
/// "dtype_code": n, "deleted_rows": n}, ...}}`, arrays sorted by name; `base_dir` is the
/// directory's path (lossily UTF-8).
///
/// `*json_len` receives the document's length in bytes (without a NUL). When `capacity`
/// is at least that, the document is copied to `buffer` (NUL-terminated when there is room)
/// and the result is `NPKIO_STATUS_OK`; otherwise nothing else is written and the result
/// is `NPKIO_STATUS_BUFFER_TOO_SMALL`: call again with a buffer of `*json_len` bytes.
///
/// # Safety
///
/// `npk` NULL or a live handle; `buffer` NULL (only when `capacity` is 0) or `capacity`
/// writable bytes; `json_len` a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_records_json(
    npk: *const NpkioNumpack,
    buffer: *mut c_char,
    capacity: usize,
    json_len: *mut usize,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (h, len_out) = unsafe { (handle_ref(npk, "npk")?, Out::new(json_len, "json_len")?) };
        let store = &h.store;
        let mut arrays = Map::new();
        for name in store.names() {
            let r = store.record(name)?;
            let info = store.info(name)?;
            arrays.insert(
                name.to_string(),
                json!({
                    "shape": r.shape,
                    "logical_shape": info.shape,
                    "data_file": r.data_file,
                    "last_modified": r.last_modified,
                    "size_bytes": r.size_bytes,
                    "dtype_code": r.dtype_code,
                    "deleted_rows": info.deleted_rows,
                }),
            );
        }
        let doc = json!({
            "base_dir": store.path().to_string_lossy(),
            "arrays": Value::Object(arrays),
        });
        let doc = serde_json::to_vec(&doc).unwrap_or_default();
        // SAFETY: the caller's contract on `buffer`.
        unsafe { give_json(doc, buffer, capacity, len_out) }
    })
}
