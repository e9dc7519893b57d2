//! The C ABI: a thin skin over the Rust core, declared in `include/npkio.h`.
//!
//! Rules every function follows (the header repeats them):
//!
//! - Every function that can fail returns an [`NpkioStatus`]; the calling thread's last
//!   error message says more ([`npkio_last_error_message`]).
//! - Every pointer argument is checked: NULL where a value is required gives
//!   `NPKIO_STATUS_NULL_ARGUMENT`. A pointer whose count is 0 is ignored and may be NULL.
//! - Out-parameters are written only on success.
//! - Handles (`NpkioSafetensors`, `NpkioSafetensorsIter`, `NpkioNumpack`, `NpkioTensors`)
//!   are opaque, made by npkio and freed by npkio's `_free` function, never by `free()`.
//!   Freeing NULL does nothing. Freeing a handle twice, or using it after it is freed, is
//!   the caller's error and is not detected.
//! - Every pointer npkio gives out (names, shapes, tensor data) belongs to the handle it
//!   came from and stays valid until that handle is freed, not longer.
//! - Paths are NUL-terminated byte strings (any bytes the OS accepts); tensor names,
//!   keys and metadata are NUL-terminated UTF-8.
//! - A handle may be used from several threads at once through the functions that take it
//!   as `const`; a function that takes it non-`const` must not run concurrently with any
//!   other use of the same handle.
//! - A panic inside npkio becomes `NPKIO_STATUS_PANIC`, never an abort.

use std::collections::HashSet;
use std::ffi::{c_char, CStr};
use std::path::Path;

pub mod convert;
pub mod dtype;
pub mod error;
pub mod numpack;
pub(crate) mod panic;
pub mod safetensors;
pub mod tensors;

pub use convert::{
    npkio_from_safetensors, npkio_from_safetensors_file, npkio_to_safetensors_file,
    npkio_to_safetensors_file_sharded, NPKIO_DEFAULT_CHUNK_SIZE, NPKIO_FLAG_DURABLE,
    NPKIO_FLAG_NO_WAIT,
};
pub use dtype::{
    npkio_dtype_bits, npkio_dtype_name, npkio_dtype_numpy_name, NpkioDtype, NpkioTensorDesc,
    NpkioTensorView,
};
pub use error::{
    npkio_last_error_copy, npkio_last_error_message, npkio_last_error_status, npkio_status_name,
    NpkioStatus,
};
pub use numpack::*;
pub use safetensors::*;
pub use tensors::*;

use error::{FfiError, FfiResult};

/// The library's version, the same as `NPKIO_VERSION_STRING`, NUL-terminated. The string
/// is static: never free it.
#[no_mangle]
pub extern "C" fn npkio_version() -> *const c_char {
    panic::value_boundary(std::ptr::null(), || VERSION.as_ptr())
}

const VERSION: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => panic!("the version has no NUL"),
    };

// ---------------------------------------------------------------------------------------
// Arguments in

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

// ---------------------------------------------------------------------------------------
// Handles: always `Box`ed, made by `into_handle`, borrowed by `handle_ref`/`handle_mut`,
// freed by `free_handle`.

pub(crate) fn into_handle<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// # Safety
///
/// `p` must be NULL or a live handle of type `T` made by [`into_handle`], not mutated
/// during `'a`.
pub(crate) unsafe fn handle_ref<'a, T>(p: *const T, what: &str) -> FfiResult<&'a T> {
    if p.is_null() {
        return Err(FfiError::null(what));
    }
    // SAFETY: a live `Box<T>` made by `into_handle` (the caller's contract).
    Ok(unsafe { &*p })
}

/// # Safety
///
/// `p` must be NULL or a live handle of type `T` made by [`into_handle`], not used
/// elsewhere during `'a`.
pub(crate) unsafe fn handle_mut<'a, T>(p: *mut T, what: &str) -> FfiResult<&'a mut T> {
    if p.is_null() {
        return Err(FfiError::null(what));
    }
    // SAFETY: a live `Box<T>` made by `into_handle`, used by nobody else meanwhile.
    Ok(unsafe { &mut *p })
}

/// Takes back ownership of a handle; `None` for NULL.
///
/// # Safety
///
/// `p` must be NULL or a live handle of type `T` made by [`into_handle`]; it must not be
/// used again.
pub(crate) unsafe fn take_handle<T>(p: *mut T) -> Option<Box<T>> {
    // SAFETY: made by `Box::into_raw` in `into_handle` and not freed yet (the contract).
    (!p.is_null()).then(|| unsafe { Box::from_raw(p) })
}

// ---------------------------------------------------------------------------------------
// Strings and shapes out

/// A name handed to C: its bytes followed by a NUL, so it doubles as a C string unless the
/// name itself holds a NUL (the length is authoritative).
pub(crate) fn c_name(s: &str) -> Box<[u8]> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v.into_boxed_slice()
}

/// (pointer, length without the NUL) of a [`c_name`].
pub(crate) fn name_parts(b: &[u8]) -> (*const c_char, usize) {
    (b.as_ptr().cast(), b.len() - 1)
}

/// Pointer to a shape, NULL for a 0-d one.
pub(crate) fn shape_ptr(shape: &[u64]) -> *const u64 {
    if shape.is_empty() {
        std::ptr::null()
    } else {
        shape.as_ptr()
    }
}

/// Pointer to bytes, NULL for none.
pub(crate) fn data_ptr(data: &[u8]) -> *const u8 {
    if data.is_empty() {
        std::ptr::null()
    } else {
        data.as_ptr()
    }
}

/// Keeps strings and shapes handed to C alive for as long as their handle, one copy of
/// each distinct value. Boxed contents never move, so pointers stay valid as it grows.
#[derive(Default, Debug)]
pub(crate) struct Interner {
    names: HashSet<Box<[u8]>>,
    shapes: HashSet<Box<[u64]>>,
}

impl Interner {
    /// The interned [`c_name`] of `s`.
    pub(crate) fn name(&mut self, s: &str) -> (*const c_char, usize) {
        let key = c_name(s);
        if let Some(b) = self.names.get(&key) {
            return name_parts(b);
        }
        let parts = name_parts(&key);
        self.names.insert(key);
        parts
    }

    /// The interned copy of `shape` (NULL for a 0-d shape).
    pub(crate) fn shape(&mut self, shape: &[u64]) -> *const u64 {
        if let Some(b) = self.shapes.get(shape) {
            return shape_ptr(b);
        }
        let b: Box<[u64]> = shape.into();
        let p = shape_ptr(&b);
        self.shapes.insert(b);
        p
    }
}
