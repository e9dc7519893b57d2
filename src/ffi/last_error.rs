//! Reading the calling thread's last error, and status names: the functions C calls after
//! a status other than `NPKIO_STATUS_OK`. None of them changes the last error.

use std::ffi::c_char;

use super::error::{with_last_error, NpkioStatus};
use super::panic::value_boundary;

/// The message of the calling thread's last failed call, as a NUL-terminated UTF-8
/// string; the empty string when the last status-returning call succeeded (or there was
/// none). Never NULL.
///
/// The string belongs to npkio. It stays valid until the calling thread next calls a
/// function that returns an `NpkioStatus`; copy it to keep it. Other threads have their
/// own messages.
#[no_mangle]
pub extern "C" fn npkio_last_error_message() -> *const c_char {
    value_boundary(c"".as_ptr(), || with_last_error(|l| l.message.as_ptr()))
}

/// The status of the calling thread's last status-returning call (`NPKIO_STATUS_OK` if it
/// succeeded or there was none).
#[no_mangle]
pub extern "C" fn npkio_last_error_status() -> NpkioStatus {
    value_boundary(NpkioStatus::Panic, || with_last_error(|l| l.status))
}

/// Copies the calling thread's last error message into `buf`, NUL-terminated.
///
/// `*needed`, when `needed` is not NULL, receives the bytes the whole message takes with
/// its NUL. If `buf_len` is at least that, the message is copied and the result is
/// `NPKIO_STATUS_OK`; otherwise as much as fits is copied (still NUL-terminated, when
/// `buf_len > 0`) and the result is `NPKIO_STATUS_BUFFER_TOO_SMALL`. `buf` may be NULL
/// only when `buf_len` is 0 (to ask for the size). This function does not change the
/// last error.
///
/// # Safety
///
/// `buf` must be NULL or point to `buf_len` writable bytes; `needed` must be NULL or point
/// to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_last_error_copy(
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> NpkioStatus {
    value_boundary(NpkioStatus::Panic, || {
        with_last_error(|l| {
            let bytes = l.message.as_bytes_with_nul();
            if !needed.is_null() {
                // SAFETY: the caller passes NULL or a writable, aligned `size_t`.
                unsafe { needed.write(bytes.len()) };
            }
            if buf_len == 0 {
                // Even the empty message needs one byte for its NUL.
                return NpkioStatus::BufferTooSmall;
            }
            if buf.is_null() {
                return NpkioStatus::NullArgument;
            }
            let n = bytes.len().min(buf_len);
            // SAFETY: `buf` points to `buf_len >= n` writable bytes (the caller's contract),
            // and npkio's message cannot overlap the caller's buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buf, n);
                *buf.add(n - 1) = 0;
            }
            if n == bytes.len() {
                NpkioStatus::Ok
            } else {
                NpkioStatus::BufferTooSmall
            }
        })
    })
}

/// The name of a status number as the header spells it (`"NPKIO_STATUS_MALFORMED"`), or
/// NULL for a number that is no status. The string is static: never free it.
#[no_mangle]
pub extern "C" fn npkio_status_name(status: u32) -> *const c_char {
    value_boundary(std::ptr::null(), || {
        NpkioStatus::from_u32(status).map_or(std::ptr::null(), |s| s.c_name().as_ptr())
    })
}
