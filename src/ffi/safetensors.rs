//! `NpkioSafetensors`: a SafeTensors file, mapped and validated; and
//! `NpkioSafetensorsIter`, an iteration over some or all of its tensors.
//!
//! Opening reads and checks the header only; tensor bytes are read when the caller reads
//! through a view's `data`. So `npkio_safetensors_open` also gives a file's description
//! without reading any tensor byte: count, views (dtype, shape), data offsets and
//! metadata entries.
//!
//! Both handles read a checkpoint: a single file, or a sharded one given by its
//! `*.safetensors.index.json` or a directory holding it, as the Rust core's
//! `get_safetensors_metadata` and `iter_safetensors` do.

use std::ffi::c_char;
use std::path::Path;

use super::args::{give_json, path_arg, str_list_arg, Out};
use super::dtype::{NpkioDtype, NpkioTensorView};
use super::error::{FfiResult, NpkioStatus};
use super::handle::{c_name, free_handle, handle_mut, handle_ref, into_handle, name_parts, Handle};
use super::list::{self, MetadataList, TensorList};
use super::panic::status_boundary;
use crate::dtype::DType;
use crate::safetensors::index::Checkpoint;

/// An open SafeTensors file or sharded checkpoint (opaque). Made by
/// `npkio_safetensors_open`, freed by `npkio_safetensors_free`.
#[derive(Debug)]
pub struct NpkioSafetensors {
    file: Checkpoint,
    /// Tensor names as C strings, in file order.
    names: Vec<Box<[u8]>>,
    /// `__metadata__` pairs as C strings, in file order.
    metadata: Vec<CPair>,
}

/// A key and a value, each a [`c_name`].
type CPair = (Box<[u8]>, Box<[u8]>);

impl NpkioSafetensors {
    fn open(path: &Path) -> FfiResult<NpkioSafetensors> {
        let file = Checkpoint::open(path)?;
        let names = file.infos().map(|t| c_name(&t.name)).collect();
        let metadata = file
            .metadata()
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| (c_name(k), c_name(v)))
            .collect();
        Ok(NpkioSafetensors {
            file,
            names,
            metadata,
        })
    }
}

impl Handle for NpkioSafetensors {
    const ARG: &'static str = "st";
}

impl TensorList for NpkioSafetensors {
    fn len(&self) -> usize {
        self.file.len()
    }

    fn path(&self) -> &Path {
        self.file.path()
    }

    fn view(&self, i: usize) -> FfiResult<NpkioTensorView> {
        let v = self.file.view(i);
        Ok(NpkioTensorView::new(
            name_parts(&self.names[i]),
            v.dtype,
            v.shape,
            v.data,
        ))
    }

    fn position(&self, name: &str) -> FfiResult<usize> {
        // `select` of one key: its index, or KEY_NOT_FOUND naming the checkpoint.
        Ok(self.file.select(Some(&[name]))?[0])
    }
}

impl MetadataList for NpkioSafetensors {
    fn metadata_len(&self) -> usize {
        self.metadata.len()
    }

    fn metadata_entry(&self, i: usize) -> FfiResult<[(*const c_char, usize); 2]> {
        let (k, v) = &self.metadata[i];
        Ok([name_parts(k), name_parts(v)])
    }
}

/// Opens a SafeTensors file: maps it and validates its header (offsets, shapes, dtypes).
/// No tensor byte is read. `path` may also be a sharded checkpoint's
/// `*.safetensors.index.json`, or a directory holding one: every shard is then opened and
/// checked against the index, and the handle reads as one file whose tensors run shard by
/// shard (shards in name order) and whose `__metadata__` is the first shard's.
///
/// On success `*out` receives a new handle, which the caller owns and frees with
/// `npkio_safetensors_free`. Every view taken from it stays valid until then. The file is
/// mapped: if another process truncates it while views are in use, reading their data
/// raises SIGBUS, so do not let the file be changed while it is open.
///
/// # Safety
///
/// `path` must be NULL or a NUL-terminated string; `out` must be NULL or point to writable
/// storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn npkio_safetensors_open(
    path: *const c_char,
    out: *mut *mut NpkioSafetensors,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (path, out) = unsafe { (path_arg(path, "path")?, Out::new(out, "out")?) };
        out.set(into_handle(NpkioSafetensors::open(path)?));
        Ok(())
    })
}

/// Frees a handle from `npkio_safetensors_open` and unmaps the file. Every view taken from
/// it becomes invalid. NULL is a no-op.
///
/// # Safety
///
/// `st` must be NULL or a handle from `npkio_safetensors_open` that was not freed yet; it
/// must not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn npkio_safetensors_free(st: *mut NpkioSafetensors) {
    // SAFETY: the caller's contract above.
    unsafe { free_handle(st) }
}

/// Writes the number of tensors to `*count`.
///
/// # Safety
///
/// `st` must be NULL or a live handle; `count` must be NULL or point to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_safetensors_count(
    st: *const NpkioSafetensors,
    count: *mut usize,
) -> NpkioStatus {
    // SAFETY: the caller's contract above.
    unsafe { list::count(st, count, TensorList::len) }
}

/// Fills `*view` with the tensor at `index` in file order (by data offset), 0-based.
/// `NPKIO_STATUS_INDEX_OUT_OF_RANGE` when `index` is not below the count. Looping over
/// 0..count is the zero-copy iteration: `view->data` points into the mapped file.
///
/// The view's pointers stay valid until `npkio_safetensors_free(st)`.
///
/// # Safety
///
/// `st` must be NULL or a live handle; `view` must be NULL or point to a writable
/// `NpkioTensorView`.
#[no_mangle]
pub unsafe extern "C" fn npkio_safetensors_get(
    st: *const NpkioSafetensors,
    index: usize,
    view: *mut NpkioTensorView,
) -> NpkioStatus {
    // SAFETY: the caller's contract above.
    unsafe { list::get(st, index, view) }
}

/// Fills `*view` with the tensor called `name` (exact, case-sensitive UTF-8), and
/// `*index`, when `index` is not NULL, with its position. `NPKIO_STATUS_KEY_NOT_FOUND`
/// when there is none.
///
/// The view's pointers stay valid until `npkio_safetensors_free(st)`.
///
/// # Safety
///
/// `st` must be NULL or a live handle; `name` NULL or a NUL-terminated string; `view` NULL
/// or writable; `index` NULL or a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_safetensors_find(
    st: *const NpkioSafetensors,
    name: *const c_char,
    view: *mut NpkioTensorView,
    index: *mut usize,
) -> NpkioStatus {
    // SAFETY: the caller's contract above.
    unsafe { list::find(st, name, view, index) }
}

/// Writes the `index`-th tensor's `data_offsets` (file order, as `npkio_safetensors_get`
/// numbers them): `[*begin, *end)` in bytes, relative to the start of the data section of
/// the file holding it (its shard, for a sharded checkpoint), as the header states them.
///
/// # Safety
///
/// `st` must be NULL or a live handle; `begin` and `end` NULL or writable `uint64_t`s.
#[no_mangle]
pub unsafe extern "C" fn npkio_safetensors_data_offsets(
    st: *const NpkioSafetensors,
    index: usize,
    begin: *mut u64,
    end: *mut u64,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (st, begin, end) = unsafe {
            (
                handle_ref(st, "st")?,
                Out::new(begin, "begin")?,
                Out::new(end, "end")?,
            )
        };
        let (b, e) = st.file.info(st.check_index(index)?).data_offsets;
        begin.set(b);
        end.set(e);
        Ok(())
    })
}

/// Writes whether the file has a `__metadata__` section to `*present` (a file may have an
/// empty one, which differs from none).
///
/// # Safety
///
/// `st` must be NULL or a live handle; `present` NULL or a writable `bool`.
#[no_mangle]
pub unsafe extern "C" fn npkio_safetensors_has_metadata(
    st: *const NpkioSafetensors,
    present: *mut bool,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (st, present) = unsafe { (handle_ref(st, "st")?, Out::new(present, "present")?) };
        present.set(st.file.metadata().is_some());
        Ok(())
    })
}

/// Writes the number of `__metadata__` entries to `*count` (0 when there is none).
///
/// # Safety
///
/// `st` must be NULL or a live handle; `count` NULL or a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_safetensors_metadata_count(
    st: *const NpkioSafetensors,
    count: *mut usize,
) -> NpkioStatus {
    // SAFETY: the caller's contract above.
    unsafe { list::count(st, count, MetadataList::metadata_len) }
}

/// Writes the `index`-th `__metadata__` entry (file order): key and value, each as a
/// pointer to UTF-8 bytes followed by a NUL, and a length without the NUL. The strings
/// belong to the handle and stay valid until `npkio_safetensors_free(st)`.
///
/// # Safety
///
/// `st` must be NULL or a live handle; the four out-pointers NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn npkio_safetensors_metadata_get(
    st: *const NpkioSafetensors,
    index: usize,
    key: *mut *const c_char,
    key_len: *mut usize,
    value: *mut *const c_char,
    value_len: *mut usize,
) -> NpkioStatus {
    // SAFETY: the caller's contract above.
    unsafe { list::metadata_get(st, index, key, key_len, value, value_len) }
}

// ---------------------------------------------------------------------------------------
// Iteration

/// An iteration over a SafeTensors file's tensors (opaque). Made by
/// `npkio_safetensors_iter_open`, freed by `npkio_safetensors_iter_free`.
#[derive(Debug)]
pub struct NpkioSafetensorsIter {
    st: NpkioSafetensors,
    order: Vec<usize>,
    next: usize,
}

/// Opens `path` (a file, or a sharded checkpoint as `npkio_safetensors_open` takes it) and
/// starts an iteration over its tensors: all of them in file order when
/// `keys` is NULL, else the `keys_count` tensors named in `keys`, in that order
/// (duplicates skipped; `keys_count == 0` with `keys != NULL` selects none). A key that is
/// not in the file is an error (`NPKIO_STATUS_KEY_NOT_FOUND`) before anything is yielded.
///
/// On success `*out` receives a new iterator owning its own mapping of the file; free it
/// with `npkio_safetensors_iter_free`. Views it yields stay valid until then.
///
/// # Safety
///
/// `path` NULL or a NUL-terminated string; `keys` NULL or `keys_count` pointers to
/// NUL-terminated strings; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn npkio_safetensors_iter_open(
    path: *const c_char,
    keys: *const *const c_char,
    keys_count: usize,
    out: *mut *mut NpkioSafetensorsIter,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (path, keys, out) = unsafe {
            (
                path_arg(path, "path")?,
                str_list_arg(keys, keys_count, "keys")?,
                Out::new(out, "out")?,
            )
        };
        let st = NpkioSafetensors::open(path)?;
        let order = st.file.select(keys.as_deref())?;
        out.set(into_handle(NpkioSafetensorsIter { st, order, next: 0 }));
        Ok(())
    })
}

/// Advances the iteration. When a tensor remains, fills `*view` with it and sets
/// `*has_view` to true; at the end sets `*has_view` to false and leaves `*view` alone.
/// The view's pointers stay valid until `npkio_safetensors_iter_free(iter)`.
///
/// ```c
/// NpkioTensorView v;
/// bool more;
/// while (npkio_safetensors_iter_next(it, &v, &more) == NPKIO_STATUS_OK && more) { ... }
/// ```
///
/// # Safety
///
/// `iter` NULL or a live iterator (not used concurrently); `view` and `has_view` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn npkio_safetensors_iter_next(
    iter: *mut NpkioSafetensorsIter,
    view: *mut NpkioTensorView,
    has_view: *mut bool,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (iter, view, has_view) = unsafe {
            (
                handle_mut(iter, "iter")?,
                Out::new(view, "view")?,
                Out::new(has_view, "has_view")?,
            )
        };
        match iter.order.get(iter.next) {
            Some(&i) => {
                let v = iter.st.view(i)?;
                iter.next += 1;
                view.set(v);
                has_view.set(true);
            }
            None => has_view.set(false),
        }
        Ok(())
    })
}

/// Describes, in one UTF-8 JSON document, every tensor the iteration `iter` has still to
/// yield, in order, without advancing it, so that a binding builds all its views from one
/// call instead of one `npkio_safetensors_iter_next` per tensor:
///
/// `{"regions": [[address, length], ...], "kinds": [[dtype, [shape..], nbytes], ...],
/// "names": [..], "kind": [..], "region": [..], "offset": [..]}`
///
/// The last four lists have one entry per tensor, in order. A region is the data section
/// of one mapped file of the checkpoint: `length` bytes at the memory address `address`
/// (an integer). A kind is a dtype (an `NpkioDtype` number), shape and byte length shared
/// by tensors (each listed once, so that a binding makes its shape object once). The
/// `i`-th tensor is named `names[i]`, has the kind `kinds[kind[i]]`, and its bytes are
/// the kind's `nbytes` bytes at `offset[i]` in the region `regions[region[i]]`. The memory
/// stays valid until `npkio_safetensors_iter_free(iter)`, as for views.
///
/// `json_len`, `buffer` and `capacity` work as in `npkio_safetensors_metadata_json`.
///
/// # Safety
///
/// `iter` NULL or a live iterator; `buffer` NULL (only when `capacity` is 0) or `capacity`
/// writable bytes; `json_len` a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_safetensors_iter_table_json(
    iter: *const NpkioSafetensorsIter,
    buffer: *mut c_char,
    capacity: usize,
    json_len: *mut usize,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (iter, len_out) =
            unsafe { (handle_ref(iter, "iter")?, Out::new(json_len, "json_len")?) };
        let doc = iter_table(iter);
        // SAFETY: the caller's contract on `buffer`.
        unsafe { give_json(doc, buffer, capacity, len_out) }
    })
}

/// Appends `items` to `out` as a JSON list, each written by `each`.
fn push_list<T>(out: &mut Vec<u8>, items: &[T], mut each: impl FnMut(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (k, x) in items.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        each(out, x);
    }
    out.push(b']');
}

/// Appends `n` to `out` in decimal.
fn push_u64(out: &mut Vec<u8>, n: u64) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{n}");
}

/// The document of `npkio_safetensors_iter_table_json`.
fn iter_table(iter: &NpkioSafetensorsIter) -> Vec<u8> {
    use std::collections::HashMap;
    let file = &iter.st.file;
    let rest = iter.order.get(iter.next..).unwrap_or_default();
    // Region of each shard, numbered in order of first use.
    let mut region_of: Vec<Option<usize>> = vec![None; file.shards().len()];
    let mut regions: Vec<(usize, u64)> = Vec::new();
    let mut kind_of: HashMap<(DType, &[u64]), usize> = HashMap::new();
    let mut kinds: Vec<(DType, &[u64], usize)> = Vec::new();
    // (kind, region, offset) of each tensor.
    let mut rows: Vec<(usize, usize, u64)> = Vec::with_capacity(rest.len());
    for &i in rest {
        let (s, _) = file.location(i);
        let info = file.info(i);
        let view = file.view(i);
        let region = *region_of[s].get_or_insert_with(|| {
            let shard = &file.shards()[s];
            // The view's bytes start `begin` bytes into the data section.
            let base = (view.data.as_ptr() as usize).wrapping_sub(info.data_offsets.0 as usize);
            regions.push((base, shard.file_len() - shard.data_start()));
            regions.len() - 1
        });
        let kind = *kind_of.entry((info.dtype, &info.shape)).or_insert_with(|| {
            kinds.push((info.dtype, &info.shape, view.data.len()));
            kinds.len() - 1
        });
        rows.push((kind, region, info.data_offsets.0));
    }
    let mut out = Vec::with_capacity(128 + rest.len() * 80);
    out.extend_from_slice(b"{\"regions\":");
    push_list(&mut out, &regions, |o, &(base, len)| {
        o.push(b'[');
        push_u64(o, base as u64);
        o.push(b',');
        push_u64(o, len);
        o.push(b']');
    });
    out.extend_from_slice(b",\"kinds\":");
    push_list(&mut out, &kinds, |o, &(dtype, shape, nbytes)| {
        o.push(b'[');
        push_u64(o, NpkioDtype::from(dtype) as u64);
        o.push(b',');
        push_list(o, shape, |o, &d| push_u64(o, d));
        o.push(b',');
        push_u64(o, nbytes as u64);
        o.push(b']');
    });
    out.extend_from_slice(b",\"names\":");
    push_list(&mut out, rest, |o, &i| {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *o, &file.info(i).name);
    });
    out.extend_from_slice(b",\"kind\":");
    push_list(&mut out, &rows, |o, r| push_u64(o, r.0 as u64));
    out.extend_from_slice(b",\"region\":");
    push_list(&mut out, &rows, |o, r| push_u64(o, r.1 as u64));
    out.extend_from_slice(b",\"offset\":");
    push_list(&mut out, &rows, |o, r| push_u64(o, r.2));
    out.push(b'}');
    out
}

/// Frees an iterator and unmaps its file; every view it yielded becomes invalid. NULL is a
/// no-op.
///
/// # Safety
///
/// `iter` must be NULL or an iterator from `npkio_safetensors_iter_open` not freed yet; it
/// must not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn npkio_safetensors_iter_free(iter: *mut NpkioSafetensorsIter) {
    // SAFETY: the caller's contract above.
    unsafe { free_handle(iter) }
}

/// Opens again the file that holds tensor `index` (in `npkio_safetensors_get`'s order) of
/// `st`, for a private (copy-on-write) mapping of its bytes: writes a new descriptor, open
/// for reading, to `*fd`, and the tensor's first byte's offset in that file to `*offset`.
/// The file is checked to be the one `st` validated (same device, inode and length; a
/// file replaced or resized since is `NPKIO_STATUS_MALFORMED`), so a mapping of
/// `[*offset, *offset + nbytes)` shows the bytes `st`'s views show. The caller owns the
/// descriptor and closes it (`close`); nothing is written on failure.
///
/// # Safety
///
/// `st` must be NULL or a live handle; `fd` and `offset` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn npkio_safetensors_tensor_fd(
    st: *const NpkioSafetensors,
    index: usize,
    fd: *mut std::ffi::c_int,
    offset: *mut u64,
) -> NpkioStatus {
    status_boundary(|| {
        use std::os::unix::io::IntoRawFd;
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (st, fd, offset) = unsafe {
            (
                handle_ref(st, "st")?,
                Out::new(fd, "fd")?,
                Out::new(offset, "offset")?,
            )
        };
        let (shard, _) = st.file.location(st.check_index(index)?);
        let file = &st.file.shards()[shard];
        let begin = st.file.info(index).data_offsets.0;
        // Checked: the header was validated against the file's length, but say so here.
        let at = file.data_start().checked_add(begin).ok_or_else(|| {
            crate::error::Error::malformed(file.path(), "tensor offset overflows")
        })?;
        let opened = file.reopen()?;
        offset.set(at);
        fd.set(opened.into_raw_fd());
        Ok(())
    })
}
