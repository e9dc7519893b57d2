//! The one pattern of the C API's options structs (`NpkioLoadOptions`,
//! `NpkioConvertOptions`): `struct_size` first, filled by the struct's `_init(&o, sizeof o)`
//! with the defaults; read no further than the caller's `struct_size`, so that a header and
//! a library of different versions agree on what was passed. Also the progress callback
//! both structs carry.

use std::ffi::c_void;
use std::sync::Arc;

use super::error::{FfiError, FfiResult};
use crate::progress::Progress;

/// Called after each chunk with the bytes done so far and the bytes to do in all, from
/// npkio's worker threads, one call at a time, `done` never going back.
pub type NpkioProgress = Option<unsafe extern "C" fn(user: *mut c_void, done: u64, total: u64)>;

/// An options struct of the C API.
///
/// # Safety
///
/// The implementing type is `#[repr(C)]`, its first field is `struct_size: usize`, and
/// every bit pattern of its fields' bytes that a C caller can write is a valid value
/// (integers, `bool` checked by C's own rules, raw pointers, optional function pointers).
pub(crate) unsafe trait SizedOptions: Copy {
    /// The struct's C name, for messages.
    const NAME: &'static str;
    /// Its `_init` function's name, for messages.
    const INIT: &'static str;

    /// The defaults, `struct_size` being the struct's own size.
    fn defaults() -> Self;

    /// Sets `struct_size`.
    fn set_struct_size(&mut self, n: usize);
}

/// The smallest `struct_size` npkio accepts: every field of the first version, which is
/// the whole struct as it is now (fields added later will not count here).
fn check_size<T: SizedOptions>(size: usize, what: &str) -> FfiResult<()> {
    let min = std::mem::size_of::<T>();
    if size < min {
        return Err(FfiError::invalid(format!(
            "{what} is {size}; an {} has {min} bytes at least (fill it with {}(&options, \
             sizeof options))",
            T::NAME,
            T::INIT,
        )));
    }
    Ok(())
}

/// The body of every `_options_init`: fills the `size` bytes at `options` with the
/// defaults, `struct_size` becoming the bytes npkio knows of (`size`, or its own size when
/// `size` is larger: a header newer than the library). Nothing is written on failure.
///
/// # Safety
///
/// `options` NULL or `size` writable bytes.
pub(crate) unsafe fn init<T: SizedOptions>(options: *mut T, size: usize) -> FfiResult<()> {
    if options.is_null() {
        return Err(FfiError::null("options"));
    }
    if !options.is_aligned() {
        return Err(FfiError::invalid(
            "argument `options` is not aligned for its type",
        ));
    }
    check_size::<T>(size, "size")?;
    let mut o = T::defaults();
    let n = size.min(std::mem::size_of::<T>());
    o.set_struct_size(n);
    // SAFETY: `options` is not NULL, aligned, and points to `size >= n` writable bytes
    // (the caller's contract); `o` is npkio's own.
    unsafe {
        std::ptr::copy_nonoverlapping(std::ptr::addr_of!(o).cast::<u8>(), options.cast::<u8>(), n)
    };
    Ok(())
}

/// The caller's options, read no further than their `struct_size`, on top of the
/// defaults; the defaults for NULL.
///
/// # Safety
///
/// `options` NULL or `struct_size` readable bytes (at least the first field) laid out as
/// `T`.
pub(crate) unsafe fn read<T: SizedOptions>(options: *const T) -> FfiResult<T> {
    let mut o = T::defaults();
    if options.is_null() {
        return Ok(o);
    }
    if !options.is_aligned() {
        return Err(FfiError::invalid(
            "argument `options` is not aligned for its type",
        ));
    }
    // SAFETY: not NULL and aligned; the first field, a `usize`, is always there (the
    // caller's contract and the trait's).
    let size = unsafe { options.cast::<usize>().read() };
    check_size::<T>(size, "options.struct_size")?;
    let n = size.min(std::mem::size_of::<T>());
    // SAFETY: the caller's struct holds `size >= n` bytes; `o` holds `n` (at most its own
    // size); the two cannot overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            options.cast::<u8>(),
            std::ptr::addr_of_mut!(o).cast::<u8>(),
            n,
        )
    };
    o.set_struct_size(n);
    Ok(o)
}

/// A caller's pointer, handed to its callbacks from npkio's threads.
#[derive(Clone, Copy)]
pub(crate) struct User(pub(crate) *mut c_void);
// SAFETY: npkio never dereferences it; the caller's callbacks, documented as called from
// worker threads, decide what it means.
unsafe impl Send for User {}
// SAFETY: as above.
unsafe impl Sync for User {}

/// The caller's progress callback, with its pointer, as the core takes it.
pub(crate) fn progress(callback: NpkioProgress, user: *mut c_void) -> Option<Progress> {
    callback.map(|f| {
        let user = User(user);
        Arc::new(move |done: u64, total: u64| {
            let u = user;
            // SAFETY: the caller's callback with the caller's pointer, as documented.
            unsafe { f(u.0, done, total) }
        }) as Progress
    })
}
