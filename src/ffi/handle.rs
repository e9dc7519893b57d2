//! Handles and what they hand out.
//!
//! Every handle is a `Box` made by [`into_handle`], borrowed by [`handle_ref`] and
//! [`handle_mut`], and freed by [`free_handle`] (the body of every `npkio_*_free`). The
//! names and shapes a handle hands to C are kept alive by the handle itself ([`c_name`],
//! [`Interner`]).

use std::collections::HashSet;
use std::ffi::c_char;

use super::error::{FfiError, FfiResult};
use super::panic::value_boundary;

/// A handle type: what C holds a pointer to.
pub(crate) trait Handle {
    /// The name exported functions give the handle argument (`"st"`, `"npk"`), for
    /// messages.
    const ARG: &'static str;
}

/// A new handle owning `value`.
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

/// The body of every `npkio_*_free`: drops the handle behind the panic boundary; NULL is a
/// no-op. A panic in a destructor is swallowed (the memory may then leak), never unwound
/// into C.
///
/// # Safety
///
/// As [`take_handle`].
pub(crate) unsafe fn free_handle<T>(p: *mut T) {
    // SAFETY: forwarded contract.
    value_boundary((), || drop(unsafe { take_handle(p) }))
}

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

    /// The interned copy of `shape`.
    pub(crate) fn shape(&mut self, shape: &[u64]) -> &[u64] {
        if !self.shapes.contains(shape) {
            self.shapes.insert(shape.into());
        }
        self.shapes.get(shape).map_or(&[], |b| b)
    }
}
