//! Arguments in: every pointer C hands npkio goes through one of these, which check it for
//! NULL (where a value is required), alignment, size and UTF-8 before the core sees it.
//! Out-parameters are checked up front the same way ([`Out`]) and written only on success.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::{c_char, CStr};
use std::path::Path;

use super::dtype::{dtype_arg, NpkioTensorDesc};
use super::error::{FfiError, FfiResult, NpkioStatus};
use crate::numpack::ArrayInput;

/// A NUL-terminated string argument, as bytes.
///
/// # Safety
///
/// `p` must be NULL or point to a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn cstr_bytes<'a>(p: *const c_char, what: &str) -> FfiResult<&'a [u8]> {
    if p.is_null() {
        return Err(FfiError::null(what));
    }
    // SAFETY: not NULL, and the caller guarantees a NUL-terminated string living for 'a.
    Ok(unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
///
/// As [`cstr_bytes`].
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> FfiResult<&'a str> {
    // SAFETY: forwarded contract.
    let bytes = unsafe { cstr_bytes(p, what) }?;
    std::str::from_utf8(bytes).map_err(|e| {
        FfiError::new(
            NpkioStatus::InvalidUtf8,
            format!("argument `{what}` is not valid UTF-8: {e}"),
        )
    })
}

/// A path argument: NUL-terminated bytes, taken as the OS takes them.
///
/// # Safety
///
/// As [`cstr_bytes`].
pub(crate) unsafe fn path_arg<'a>(p: *const c_char, what: &str) -> FfiResult<&'a Path> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: forwarded contract.
    let bytes = unsafe { cstr_bytes(p, what) }?;
    if bytes.is_empty() {
        return Err(FfiError::invalid(format!("argument `{what}` is empty")));
    }
    Ok(Path::new(std::ffi::OsStr::from_bytes(bytes)))
}

/// `count` elements at `p`; `count == 0` gives an empty slice whatever `p` is.
///
/// # Safety
///
/// When `count > 0`, `p` must be NULL or point to `count` initialised `T`s that outlive
/// `'a` and are not written meanwhile.
pub(crate) unsafe fn slice_arg<'a, T>(p: *const T, count: usize, what: &str) -> FfiResult<&'a [T]> {
    if count == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(FfiError::null(what));
    }
    if !p.is_aligned() {
        return Err(FfiError::invalid(format!(
            "argument `{what}` is not aligned for its type"
        )));
    }
    match count.checked_mul(std::mem::size_of::<T>()) {
        Some(bytes) if bytes <= isize::MAX as usize => {}
        _ => {
            return Err(FfiError::invalid(format!(
                "argument `{what}`: count {count} is too large"
            )))
        }
    }
    // SAFETY: not NULL, aligned, the size fits in isize, and the caller guarantees `count`
    // initialised elements that live for 'a.
    Ok(unsafe { std::slice::from_raw_parts(p, count) })
}

/// An array of UTF-8 strings: `None` when `p` is NULL (the "all" selection), else the
/// `count` strings (`count == 0` gives the empty selection).
///
/// # Safety
///
/// `p` must be NULL or point to `count` pointers, each a NUL-terminated string; all must
/// outlive `'a`.
pub(crate) unsafe fn str_list_arg<'a>(
    p: *const *const c_char,
    count: usize,
    what: &str,
) -> FfiResult<Option<Vec<&'a str>>> {
    if p.is_null() {
        return if count == 0 {
            Ok(None)
        } else {
            Err(FfiError::null(what))
        };
    }
    // SAFETY: forwarded contract; `p` is not NULL.
    let ptrs = unsafe { slice_arg(p, count, what) }?;
    let mut out = Vec::with_capacity(ptrs.len());
    for (i, &s) in ptrs.iter().enumerate() {
        // SAFETY: the caller guarantees each pointer is NULL or a NUL-terminated string.
        out.push(unsafe { str_arg(s, &format!("{what}[{i}]")) }?);
    }
    Ok(Some(out))
}

/// An out-parameter checked for NULL and alignment up front and written at the end.
pub(crate) struct Out<T>(*mut T);

impl<T> Out<T> {
    /// # Safety
    ///
    /// `p` must be NULL or point to storage for one `T` that is writable until [`Out::set`].
    pub(crate) unsafe fn new(p: *mut T, what: &str) -> FfiResult<Out<T>> {
        if p.is_null() {
            return Err(FfiError::null(what));
        }
        if !p.is_aligned() {
            return Err(FfiError::invalid(format!(
                "argument `{what}` is not aligned for its type"
            )));
        }
        Ok(Out(p))
    }

    /// Writes the value, without reading or dropping what was there.
    pub(crate) fn set(self, value: T) {
        // SAFETY: checked non-NULL and aligned in `new`, whose caller guarantees writable
        // storage; `write` does not drop the caller's uninitialised contents.
        unsafe { self.0.write(value) }
    }
}

/// A caller's array of `count` `T`s for npkio to fill: checked for NULL (when `count > 0`)
/// and alignment up front, written at the end.
pub(crate) struct OutArray<T> {
    p: *mut T,
    count: usize,
}

impl<T: Copy> OutArray<T> {
    /// # Safety
    ///
    /// When `count > 0`, `p` must be NULL or point to `count` `T`s writable until
    /// [`OutArray::set`] and not overlapping npkio's own memory.
    pub(crate) unsafe fn new(p: *mut T, count: usize, what: &str) -> FfiResult<OutArray<T>> {
        if count > 0 && p.is_null() {
            return Err(FfiError::null(what));
        }
        if !p.is_aligned() {
            return Err(FfiError::invalid(format!(
                "argument `{what}` is not aligned for its type"
            )));
        }
        Ok(OutArray { p, count })
    }

    /// Writes `values` (at most `count`: the caller checked) to the array's start, without
    /// reading what was there.
    pub(crate) fn set(self, values: &[T]) {
        assert!(
            values.len() <= self.count,
            "more values than the array holds"
        );
        if values.is_empty() {
            return;
        }
        // SAFETY: checked non-NULL (count > 0) and aligned in `new`, whose caller
        // guarantees `count >= values.len()` writable `T`s that npkio's cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.p, values.len()) }
    }
}

/// An out-parameter the caller may leave NULL.
///
/// # Safety
///
/// As [`Out::new`].
pub(crate) unsafe fn optional_out<T>(p: *mut T, what: &str) -> FfiResult<Option<Out<T>>> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded contract.
        unsafe { Out::new(p, what) }.map(Some)
    }
}

/// Metadata pairs from two parallel arrays: `None` when `keys` is NULL.
///
/// # Safety
///
/// `keys`, `values` NULL or `count` pointers to NUL-terminated strings.
pub(crate) unsafe fn metadata_arg(
    keys: *const *const c_char,
    values: *const *const c_char,
    count: usize,
) -> FfiResult<Option<Vec<(String, String)>>> {
    // SAFETY: forwarded contract.
    let Some(keys) = (unsafe { str_list_arg(keys, count, "metadata_keys") })? else {
        return Ok(None);
    };
    if values.is_null() && count > 0 {
        return Err(FfiError::null("metadata_values"));
    }
    // SAFETY: forwarded contract; NULL with count 0 gives an empty list.
    let values = unsafe { str_list_arg(values, count, "metadata_values") }?.unwrap_or_default();
    let mut seen = HashSet::new();
    let mut pairs = Vec::with_capacity(count);
    for (k, v) in keys.into_iter().zip(values) {
        if !seen.insert(k) {
            return Err(FfiError::invalid(format!(
                "metadata key {k:?} is given twice"
            )));
        }
        pairs.push((k.to_string(), v.to_string()));
    }
    Ok(Some(pairs))
}

/// The core's input for a C description.
///
/// # Safety
///
/// The pointers in `d` must satisfy the rules of [`NpkioTensorDesc`] for `'a`.
pub(crate) unsafe fn desc_input<'a>(d: &NpkioTensorDesc, i: usize) -> FfiResult<ArrayInput<'a>> {
    // SAFETY: the caller's contract on the description's pointers.
    unsafe {
        Ok(ArrayInput {
            name: str_arg(d.name, &format!("tensors[{i}].name"))?,
            dtype: dtype_arg(d.dtype)?,
            shape: slice_arg(d.shape, d.ndim, &format!("tensors[{i}].shape"))?,
            data: slice_arg(d.data.cast::<u8>(), d.nbytes, &format!("tensors[{i}].data"))?,
        })
    }
}

thread_local! {
    /// The last document a `*_json` function of this thread could not copy to the caller's
    /// buffer, for `npkio_json_take`; empty when there is none.
    static UNTAKEN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Keeps `doc` as the calling thread's untaken document (an empty one: none), freeing the
/// one kept before.
fn keep_untaken(doc: Vec<u8>) {
    UNTAKEN.with(|u| *u.borrow_mut() = doc);
}

/// Takes the calling thread's untaken document (empty when there is none).
pub(crate) fn take_untaken() -> Vec<u8> {
    UNTAKEN.with(|u| std::mem::take(&mut *u.borrow_mut()))
}

/// Copies a JSON document to a caller's buffer: its length to `len_out` always; the bytes
/// (NUL-terminated when there is room) only when `capacity` holds them, else
/// `NPKIO_STATUS_BUFFER_TOO_SMALL`, so that the caller can retry with a buffer that fits,
/// or take this very document with `npkio_json_take` (it is kept for the calling thread).
///
/// # Safety
///
/// `buffer` NULL or `capacity` writable bytes.
pub(crate) unsafe fn give_json(
    doc: Vec<u8>,
    buffer: *mut c_char,
    capacity: usize,
    len_out: Out<usize>,
) -> FfiResult<()> {
    len_out.set(doc.len());
    if capacity < doc.len() {
        let err = FfiError::new(
            NpkioStatus::BufferTooSmall,
            format!(
                "the document takes {} bytes; the buffer has {capacity}",
                doc.len()
            ),
        );
        keep_untaken(doc);
        return Err(err);
    }
    keep_untaken(Vec::new());
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
