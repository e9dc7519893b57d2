//! `NpkioNumpack`: a NumPack directory opened for reading and changing.

use std::ffi::c_char;
use std::sync::Mutex;

use super::args::{desc_input, give_json, metadata_arg, path_arg, slice_arg, str_arg, Out};
use super::dtype::{NpkioDtype, NpkioTensorDesc, NpkioTensorView};
use super::error::{FfiError, FfiResult, NpkioStatus};
use super::handle::{
    free_handle, handle_mut, handle_ref, into_handle, shape_ptr, take_handle, Handle, Interner,
};
use super::list::{self, MetadataList};
use super::panic::status_boundary;
use crate::numpack::store::Unresolved;
use crate::numpack::{NumPack, Rows};

/// A NumPack directory (opaque). Made by `npkio_numpack_open` or `npkio_numpack_create`,
/// freed by `npkio_numpack_free` or `npkio_numpack_close`.
///
/// Every name, shape and data pointer it hands out stays valid until it is freed, even
/// after the array is changed, replaced or deleted through it: the store keeps old
/// mappings alive (a view then shows the bytes as they were when it was taken).
#[derive(Debug)]
pub struct NpkioNumpack {
    pub(super) store: NumPack,
    /// Array names, sorted: what `npkio_numpack_name` indexes. Rebuilt after each change.
    list: Vec<String>,
    /// Copies of the names, shapes and metadata handed to C; only grows.
    strings: Mutex<Interner>,
    /// The rows the last `npkio_numpack_get_rows` gathered.
    rows: Vec<u8>,
}

impl NpkioNumpack {
    fn new(store: NumPack) -> NpkioNumpack {
        let mut h = NpkioNumpack {
            store,
            list: Vec::new(),
            strings: Mutex::new(Interner::default()),
            rows: Vec::new(),
        };
        h.refresh();
        h
    }

    fn refresh(&mut self) {
        self.list = self.store.names().into_iter().map(str::to_string).collect();
    }

    fn interner(&self) -> std::sync::MutexGuard<'_, Interner> {
        // A panic while holding the lock leaves the interner whole (inserts are atomic).
        self.strings.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Handle for NpkioNumpack {
    const ARG: &'static str = "npk";
}

impl MetadataList for NpkioNumpack {
    fn metadata_len(&self) -> usize {
        self.store.safetensors_metadata().map_or(0, <[_]>::len)
    }

    fn metadata_entry(&self, i: usize) -> FfiResult<[(*const c_char, usize); 2]> {
        let (k, v) = &self.store.safetensors_metadata().unwrap_or_default()[i];
        let mut strings = self.interner();
        Ok([strings.name(k), strings.name(v)])
    }
}

/// Opens an existing NumPack directory, validating its metadata and every data file (an
/// array whose files are damaged fails with its own error when read; the others read).
///
/// The handle reads one committed state of each array: once another writer has changed the
/// store, reading an array not read before reads it as the store is now if its dtype and
/// shape are still those the handle describes, and fails with `NPKIO_STATUS_BUSY` if not
/// (open it again then), never with the new bytes under the old dtype and shape. Changes
/// through the handle fail with `NPKIO_STATUS_BUSY` after any change by another writer.
///
/// On success `*out` receives a new handle; the caller frees it with `npkio_numpack_free`
/// (or `npkio_numpack_close`).
///
/// # Safety
///
/// `path` NULL or a NUL-terminated string; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_open(
    path: *const c_char,
    out: *mut *mut NpkioNumpack,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (path, out) = unsafe { (path_arg(path, "path")?, Out::new(out, "out")?) };
        out.set(into_handle(NpkioNumpack::new(NumPack::open(path)?)));
        Ok(())
    })
}

/// Opens the NumPack directory at `path`, creating an empty one if there is none. With
/// `drop_if_exists`, an existing NumPack directory is removed first. A path that exists but
/// is not a NumPack directory is never removed: that is an error. All of it happens under
/// the lock conversions into `path` take (which first restores a store an interrupted
/// conversion left aside), so a conversion publishing there meanwhile comes before or after.
///
/// On success `*out` receives a new handle; the caller frees it with `npkio_numpack_free`.
///
/// # Safety
///
/// `path` NULL or a NUL-terminated string; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_create(
    path: *const c_char,
    drop_if_exists: bool,
    out: *mut *mut NpkioNumpack,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (path, out) = unsafe { (path_arg(path, "path")?, Out::new(out, "out")?) };
        let store = NumPack::create(path, drop_if_exists)?;
        out.set(into_handle(NpkioNumpack::new(store)));
        Ok(())
    })
}

/// Frees a handle. Every change is already on disk, so nothing is lost; every pointer the
/// handle gave out becomes invalid. NULL is a no-op.
///
/// # Safety
///
/// `npk` must be NULL or a handle not freed yet; it must not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_free(npk: *mut NpkioNumpack) {
    // SAFETY: the caller's contract above.
    unsafe { free_handle(npk) }
}

/// Closes and frees a handle, reporting any failure to release it. The handle is freed
/// whatever the status, and every pointer it gave out becomes invalid. NULL is
/// `NPKIO_STATUS_NULL_ARGUMENT` (and frees nothing).
///
/// # Safety
///
/// `npk` must be NULL or a handle not freed yet; it must not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_close(npk: *mut NpkioNumpack) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above.
        let h = unsafe { take_handle(npk) }.ok_or_else(|| FfiError::null("npk"))?;
        h.store.close()?;
        Ok(())
    })
}

/// With `durable`, every later change through this handle syncs its data before the
/// metadata points at it, and syncs the directory after. Off by default.
///
/// # Safety
///
/// `npk` NULL or a live handle, not used concurrently.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_set_durable(
    npk: *mut NpkioNumpack,
    durable: bool,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let h = unsafe { handle_mut(npk, "npk") }?;
        h.store.set_durable(durable);
        Ok(())
    })
}

/// Writes the number of arrays to `*count`.
///
/// # Safety
///
/// `npk` NULL or a live handle; `count` NULL or a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_count(
    npk: *const NpkioNumpack,
    count: *mut usize,
) -> NpkioStatus {
    // SAFETY: the caller's contract above.
    unsafe { list::count(npk, count, |h| h.list.len()) }
}

/// Writes the name of the `index`-th array (names sorted bytewise) as a pointer to UTF-8
/// bytes followed by a NUL, and its length without the NUL. The indices refer to the
/// arrays as they are now: a change (save, delete) renumbers them. The string itself stays
/// valid until the handle is freed.
///
/// # Safety
///
/// `npk` NULL or a live handle; `name` and `name_len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_name(
    npk: *const NpkioNumpack,
    index: usize,
    name: *mut *const c_char,
    name_len: *mut usize,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (h, name, name_len) = unsafe {
            (
                handle_ref(npk, "npk")?,
                Out::new(name, "name")?,
                Out::new(name_len, "name_len")?,
            )
        };
        let n = h.list.get(index).ok_or_else(|| {
            let path = Some(h.store.path());
            FfiError::out_of_range(path, "array", index, h.list.len(), "arrays")
        })?;
        let (p, len) = h.interner().name(n);
        name.set(p);
        name_len.set(len);
        Ok(())
    })
}

/// Writes the names of all arrays (sorted bytewise, as `npkio_numpack_name` indexes them)
/// as one UTF-8 JSON array of strings, `["a","b",...]`, so that a binding lists a
/// directory with one call instead of one per array.
///
/// `json_len`, `buffer` and `capacity` work as in `npkio_safetensors_metadata_json`.
///
/// # Safety
///
/// `npk` NULL or a live handle; `buffer` NULL (only when `capacity` is 0) or `capacity`
/// writable bytes; `json_len` a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_names_json(
    npk: *const NpkioNumpack,
    buffer: *mut c_char,
    capacity: usize,
    json_len: *mut usize,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (h, len_out) = unsafe { (handle_ref(npk, "npk")?, Out::new(json_len, "json_len")?) };
        // Serializing strings into a Vec cannot fail.
        let doc = serde_json::to_vec(&h.list).unwrap_or_default();
        // SAFETY: the caller's contract on `buffer`.
        unsafe { give_json(doc, buffer, capacity, len_out) }
    })
}

/// What `npkio_numpack_info` says about an array. Its pointers belong to the handle and
/// stay valid until it is freed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NpkioArrayInfo {
    /// The name: `name_len` bytes of UTF-8 followed by a NUL.
    pub name: *const c_char,
    /// Bytes in the name, without the NUL.
    pub name_len: usize,
    /// The true dtype (BF16 for an array npkio stored as uint16, and so on).
    pub dtype: NpkioDtype,
    /// Number of dimensions of the logical shape.
    pub ndim: usize,
    /// The logical shape (rows after deletions); NULL when `ndim` is 0.
    pub shape: *const u64,
    /// Logical byte length.
    pub nbytes: u64,
    /// The dtype NumPack 0.7 itself sees.
    pub storage_dtype: NpkioDtype,
    /// Number of dimensions of the stored shape.
    pub storage_ndim: usize,
    /// The shape NumPack 0.7 sees (physical rows, stand-in shapes); NULL when 0-d.
    pub storage_shape: *const u64,
    /// Rows deleted by drop and still physically present.
    pub deleted_rows: u64,
    /// Whether the array is split into segment files.
    pub segmented: bool,
    /// Whether `npkio_numpack_view` maps the data file without copying.
    pub zero_copy: bool,
}

/// Fills `*info` with the description of the array called `name`
/// (`NPKIO_STATUS_KEY_NOT_FOUND` if there is none).
///
/// # Safety
///
/// `npk` NULL or a live handle; `name` NULL or a NUL-terminated string; `info` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_info(
    npk: *const NpkioNumpack,
    name: *const c_char,
    info: *mut NpkioArrayInfo,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (h, name, out) = unsafe {
            (
                handle_ref(npk, "npk")?,
                str_arg(name, "name")?,
                Out::new(info, "info")?,
            )
        };
        let i = h.store.info(name)?;
        let mut strings = h.interner();
        let (name, name_len) = strings.name(&i.name);
        out.set(NpkioArrayInfo {
            name,
            name_len,
            dtype: i.dtype.into(),
            ndim: i.shape.len(),
            shape: shape_ptr(strings.shape(&i.shape)),
            nbytes: i.nbytes,
            storage_dtype: i.storage_dtype.into(),
            storage_ndim: i.storage_shape.len(),
            storage_shape: shape_ptr(strings.shape(&i.storage_shape)),
            deleted_rows: i.deleted_rows,
            segmented: i.segmented,
            zero_copy: i.zero_copy,
        });
        Ok(())
    })
}

/// Fills `*view` with the array called `name`: its logical bytes (active rows, in C
/// order). Zero-copy when the array is one file with no deleted rows; otherwise gathered
/// once into memory the handle keeps.
///
/// The view's pointers stay valid until the handle is freed, even if the array is later
/// changed or deleted through the handle (the view keeps showing the old bytes). Another
/// process truncating the data file while the view is used raises SIGBUS.
///
/// # Safety
///
/// `npk` NULL or a live handle; `name` NULL or a NUL-terminated string; `view` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_view(
    npk: *const NpkioNumpack,
    name: *const c_char,
    view: *mut NpkioTensorView,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (h, name, out) = unsafe {
            (
                handle_ref(npk, "npk")?,
                str_arg(name, "name")?,
                Out::new(view, "view")?,
            )
        };
        let v = h.store.view(name)?;
        let mut strings = h.interner();
        let name = strings.name(v.name);
        out.set(NpkioTensorView::new(
            name,
            v.dtype,
            strings.shape(v.shape),
            v.data,
        ));
        Ok(())
    })
}

/// Saves `count` arrays, replacing any of the same name; all are written or, on failure,
/// none is visible. npkio copies the bytes during the call and keeps no pointer to
/// `arrays`.
///
/// # Safety
///
/// `npk` NULL or a live handle, not used concurrently; `arrays` NULL (only when `count` is
/// 0) or `count` descriptions whose pointers follow `NpkioTensorDesc`'s rules.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_save(
    npk: *mut NpkioNumpack,
    arrays: *const NpkioTensorDesc,
    count: usize,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (h, descs) = unsafe { (handle_mut(npk, "npk")?, slice_arg(arrays, count, "arrays")?) };
        let inputs = descs
            .iter()
            .enumerate()
            // SAFETY: each description follows NpkioTensorDesc's rules (the contract).
            .map(|(i, d)| unsafe { desc_input(d, i) })
            .collect::<FfiResult<Vec<_>>>()?;
        let result = h.store.save(&inputs);
        h.refresh();
        result?;
        Ok(())
    })
}

/// Appends rows to the array called `name`: `nbytes` bytes holding whole rows of its dtype
/// and row shape, in C order.
///
/// # Safety
///
/// `npk` NULL or a live handle, not used concurrently; `name` NULL or a NUL-terminated
/// string; `data` NULL (only when `nbytes` is 0) or `nbytes` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_append(
    npk: *mut NpkioNumpack,
    name: *const c_char,
    data: *const u8,
    nbytes: usize,
) -> NpkioStatus {
    // SAFETY: the caller's contract above is the one `append` needs.
    unsafe { append(npk, name, data, nbytes, None) }
}

/// Appends `rows` rows to the array called `name`: `nbytes` bytes holding exactly that many
/// rows of its dtype and row shape, in C order (0 bytes for rows of 0 bytes, such as those
/// of an array of shape `(n, 0)`, which `npkio_numpack_append` cannot count).
///
/// # Safety
///
/// `npk` NULL or a live handle, not used concurrently; `name` NULL or a NUL-terminated
/// string; `data` NULL (only when `nbytes` is 0) or `nbytes` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_append_rows(
    npk: *mut NpkioNumpack,
    name: *const c_char,
    data: *const u8,
    nbytes: usize,
    rows: u64,
) -> NpkioStatus {
    // SAFETY: the caller's contract above is the one `append` needs.
    unsafe { append(npk, name, data, nbytes, Some(rows)) }
}

/// The body of `npkio_numpack_append` (`rows: None`) and `npkio_numpack_append_rows`.
/// Safety: the contract of `npkio_numpack_append`.
unsafe fn append(
    npk: *mut NpkioNumpack,
    name: *const c_char,
    data: *const u8,
    nbytes: usize,
    rows: Option<u64>,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract, checked for NULL inside.
        let (h, name, data) = unsafe {
            (
                handle_mut(npk, "npk")?,
                str_arg(name, "name")?,
                slice_arg(data, nbytes, "data")?,
            )
        };
        match rows {
            None => h.store.append(name, data)?,
            Some(rows) => h.store.append_rows(name, data, rows)?,
        }
        Ok(())
    })
}

/// Deletes rows of the array called `name`: `count` row indices as the array reads now
/// (logical, 0-based), marked in the deletion bitmap as NumPack does.
///
/// # Safety
///
/// `npk` NULL or a live handle, not used concurrently; `name` NULL or a NUL-terminated
/// string; `rows` NULL (only when `count` is 0) or `count` readable `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_drop_rows(
    npk: *mut NpkioNumpack,
    name: *const c_char,
    rows: *const u64,
    count: usize,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (h, name, rows) = unsafe {
            (
                handle_mut(npk, "npk")?,
                str_arg(name, "name")?,
                slice_arg(rows, count, "rows")?,
            )
        };
        h.store.drop_rows(name, rows)?;
        Ok(())
    })
}

/// Deletes the array called `name` and its files. Views of it taken earlier stay valid
/// until the handle is freed.
///
/// # Safety
///
/// `npk` NULL or a live handle, not used concurrently; `name` NULL or a NUL-terminated
/// string.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_delete(
    npk: *mut NpkioNumpack,
    name: *const c_char,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (h, name) = unsafe { (handle_mut(npk, "npk")?, str_arg(name, "name")?) };
        let result = h.store.delete(name);
        h.refresh();
        result?;
        Ok(())
    })
}

/// Writes the number of SafeTensors `__metadata__` entries the directory carries (from
/// the file it was converted from, or `npkio_numpack_set_metadata`) to `*count`.
///
/// # Safety
///
/// `npk` NULL or a live handle; `count` NULL or a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_metadata_count(
    npk: *const NpkioNumpack,
    count: *mut usize,
) -> NpkioStatus {
    // SAFETY: the caller's contract above.
    unsafe { list::count(npk, count, MetadataList::metadata_len) }
}

/// Writes the `index`-th metadata entry: key and value as pointers to UTF-8 bytes followed
/// by a NUL, and lengths without the NUL. The strings stay valid until the handle is
/// freed; the indices refer to the metadata as it is now.
///
/// # Safety
///
/// `npk` NULL or a live handle; the four out-pointers NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_metadata_get(
    npk: *const NpkioNumpack,
    index: usize,
    key: *mut *const c_char,
    key_len: *mut usize,
    value: *mut *const c_char,
    value_len: *mut usize,
) -> NpkioStatus {
    // SAFETY: the caller's contract above.
    unsafe { list::metadata_get(npk, index, key, key_len, value, value_len) }
}

/// Replaces the SafeTensors metadata the directory carries: `keys == NULL` removes it;
/// otherwise the `count` pairs `keys[i]`, `values[i]` replace it (`count == 0` with
/// `keys != NULL` leaves an empty one). Keys must be distinct.
///
/// # Safety
///
/// `npk` NULL or a live handle, not used concurrently; `keys` and `values` NULL or `count`
/// pointers to NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_set_metadata(
    npk: *mut NpkioNumpack,
    keys: *const *const c_char,
    values: *const *const c_char,
    count: usize,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (h, pairs) = unsafe { (handle_mut(npk, "npk")?, metadata_arg(keys, values, count)?) };
        h.store.set_safetensors_metadata(pairs)?;
        Ok(())
    })
}

/// Opens again the data file of array `name` for a private (copy-on-write) mapping of it,
/// when the array's bytes are that whole file as stored (one file, no dropped rows, at
/// least one byte): writes a new descriptor, open for reading, to `*fd` and the bytes to
/// map (from offset 0) to `*len`. Otherwise (segments, dropped rows, no bytes: arrays that
/// `npkio_numpack_view` gathers) writes -1 to `*fd` and 0 to `*len`. The file is opened and
/// checked as `npkio_numpack_view` opens it (inside the directory, long enough for the
/// array). The caller owns the descriptor and closes it (`close`).
///
/// # Safety
///
/// `npk` NULL or a live handle; `name` NULL or a NUL-terminated UTF-8 string; `fd` and
/// `len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_data_fd(
    npk: *const NpkioNumpack,
    name: *const c_char,
    fd: *mut std::ffi::c_int,
    len: *mut u64,
) -> NpkioStatus {
    status_boundary(|| {
        use std::os::unix::io::IntoRawFd;
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (h, name, fd, len) = unsafe {
            (
                handle_ref(npk, "npk")?,
                str_arg(name, "name")?,
                Out::new(fd, "fd")?,
                Out::new(len, "len")?,
            )
        };
        match h.store.plain_data_file(name)? {
            Some((file, n)) => {
                len.set(n);
                fd.set(file.into_raw_fd());
            }
            None => {
                len.set(0);
                fd.set(-1);
            }
        }
        Ok(())
    })
}

/// Rows of an array, as it reads now (rows after deletions): `count` indices, or with
/// `is_slice` nonzero the slice `start:stop:step` with Python's rules.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NpkioRows {
    /// `count` row indices in order; a negative one counts from the end (-1 is the last
    /// row). Ignored (may be NULL) when `count` is 0 or `is_slice` is nonzero.
    pub indices: *const i64,
    /// Number of indices.
    pub count: usize,
    /// Nonzero: the rows are the slice below instead of the indices.
    pub is_slice: u8,
    /// Nonzero when `start` is given; else the slice starts at the first row (the last for
    /// a negative step).
    pub has_start: u8,
    /// Nonzero when `stop` is given; else the slice runs to the end in its direction.
    pub has_stop: u8,
    /// First row; negative counts from the end; clipped to the array.
    pub start: i64,
    /// Row the slice stops before; negative counts from the end; clipped to the array.
    pub stop: i64,
    /// Distance between rows; not 0.
    pub step: i64,
    /// Nonzero: indices that name no row are skipped instead of refused (NumPack's `drop`
    /// ignores them). Ignored for a slice, whose bounds are clipped anyway.
    pub skip_out_of_range: u8,
}

/// The rows `r` describes.
///
/// # Safety
///
/// `r` NULL or a readable `NpkioRows` whose `indices` follow its rules.
unsafe fn rows_arg<'a>(r: *const NpkioRows) -> FfiResult<Rows<'a>> {
    // SAFETY: the caller's contract.
    let r = unsafe { r.as_ref() }.ok_or_else(|| FfiError::null("rows"))?;
    if r.is_slice != 0 {
        return Ok(Rows::Slice {
            start: (r.has_start != 0).then_some(r.start),
            stop: (r.has_stop != 0).then_some(r.stop),
            step: r.step,
        });
    }
    // SAFETY: the caller's contract on `indices`.
    let indices = unsafe { slice_arg(r.indices, r.count, "rows.indices")? };
    Ok(if r.skip_out_of_range != 0 {
        Rows::Existing(indices)
    } else {
        Rows::Indices(indices)
    })
}

/// Checks that `rows` names rows of the array `name` as `h` holds it: an index out of
/// range is `NPKIO_STATUS_INDEX_OUT_OF_RANGE`.
fn check_rows(h: &NpkioNumpack, name: &str, rows: Rows<'_>) -> FfiResult<Vec<u64>> {
    match h.store.resolve_rows(name, rows)? {
        Ok(picked) => Ok(picked),
        Err(u) => {
            let at = format!(
                "{}: array {name:?}: {}",
                h.store.path().display(),
                u.message()
            );
            Err(match u {
                Unresolved::OutOfRange { .. } => FfiError::new(NpkioStatus::IndexOutOfRange, at),
                Unresolved::ZeroStep => FfiError::invalid(at),
            })
        }
    }
}

/// Copies rows of the array called `name` (NumPack's `getitem`), chosen by index (negative
/// ones count from the end) or by slice, resolved in this call against the array as the
/// handle holds it, and fills `*view` with them: shape `[rows taken, row shape...]`, in the
/// order given. The view's data stays valid until the next `npkio_numpack_get_rows` on
/// this handle or the handle is freed; its name and shape until the handle is freed. An
/// index out of range is `NPKIO_STATUS_INDEX_OUT_OF_RANGE`.
///
/// # Safety
///
/// `npk` NULL or a live handle, not used concurrently; `name` NULL or a NUL-terminated
/// string; `rows` NULL or a readable `NpkioRows` following its rules; `view` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_get_rows(
    npk: *mut NpkioNumpack,
    name: *const c_char,
    rows: *const NpkioRows,
    view: *mut NpkioTensorView,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (h, name, rows, out) = unsafe {
            (
                handle_mut(npk, "npk")?,
                str_arg(name, "name")?,
                rows_arg(rows)?,
                Out::new(view, "view")?,
            )
        };
        let picked = check_rows(h, name, rows)?;
        let (dtype, shape, data) = h.store.gather_rows(name, &picked)?;
        h.rows = data;
        let h: &NpkioNumpack = h;
        let mut strings = h.interner();
        let name = strings.name(name);
        out.set(NpkioTensorView::new(
            name,
            dtype,
            strings.shape(&shape),
            &h.rows,
        ));
        Ok(())
    })
}

/// Deletes rows of the array called `name`, chosen by index (negative ones count from the
/// end) or by slice, resolved in this call against the array as the handle holds it; the
/// change fails with `NPKIO_STATUS_BUSY` if another writer changed the store since, so the
/// rows deleted are those named. As `npkio_numpack_drop_rows` otherwise.
///
/// # Safety
///
/// `npk` NULL or a live handle, not used concurrently; `name` NULL or a NUL-terminated
/// string; `rows` NULL or a readable `NpkioRows` following its rules.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_drop_rows_at(
    npk: *mut NpkioNumpack,
    name: *const c_char,
    rows: *const NpkioRows,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (h, name, rows) = unsafe {
            (
                handle_mut(npk, "npk")?,
                str_arg(name, "name")?,
                rows_arg(rows)?,
            )
        };
        let picked = check_rows(h, name, rows)?;
        h.store.drop_rows(name, &picked)?;
        Ok(())
    })
}

/// Overwrites rows of existing arrays (NumPack's `replace`): `values[i]` names an array and
/// holds its new rows in the array's dtype (shape `[rows named, row shape...]`, or one row,
/// with or without a leading 1, written to every row named). The rows, chosen by index
/// (negative ones count from the end) or by slice, are resolved in this call against each
/// array as the handle holds it. Every array is saved whole with its rows replaced, all in
/// one commit as `npkio_numpack_save`; its dropped rows stay dropped.
///
/// # Safety
///
/// `npk` NULL or a live handle, not used concurrently; `values` NULL (only when `count` is
/// 0) or `count` descriptions following `NpkioTensorDesc`'s rules; `rows` NULL or a
/// readable `NpkioRows` following its rules.
#[no_mangle]
pub unsafe extern "C" fn npkio_numpack_replace_rows(
    npk: *mut NpkioNumpack,
    values: *const NpkioTensorDesc,
    count: usize,
    rows: *const NpkioRows,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (h, descs, rows) = unsafe {
            (
                handle_mut(npk, "npk")?,
                slice_arg(values, count, "values")?,
                rows_arg(rows)?,
            )
        };
        let inputs = descs
            .iter()
            .enumerate()
            // SAFETY: each description follows NpkioTensorDesc's rules (the contract).
            .map(|(i, d)| unsafe { desc_input(d, i) })
            .collect::<FfiResult<Vec<_>>>()?;
        for v in &inputs {
            check_rows(h, v.name, rows)?;
        }
        let result = h.store.replace_rows(&inputs, rows);
        h.refresh();
        result?;
        Ok(())
    })
}
