//! Status codes and the calling thread's last error.
//!
//! Every function that can fail returns an [`NpkioStatus`]. On failure it also records a
//! message for the calling thread, read with [`npkio_last_error_message`] or copied with
//! [`npkio_last_error_copy`]. Each status-returning function clears the record when it
//! starts, so after `NPKIO_STATUS_OK` the message is empty. The functions that do not
//! return a status (`npkio_*_free`, `npkio_version`, the name functions and the
//! `npkio_last_error_*` functions themselves) leave the record alone, so freeing handles
//! while cleaning up after a failure keeps its message.

use std::cell::RefCell;
use std::ffi::{c_char, CString};

use crate::error::{Error, ErrorKind};

/// The outcome of an npkio call. The numbers are stable and never reused: 1 to 8 are the
/// Rust core's `ErrorKind` numbers; 100 and up are failures of the C interface itself.
///
/// Functions return it as a 32-bit unsigned integer; code that takes a status back as a
/// number (`npkio_status_name`) accepts any value.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NpkioStatus {
    /// Success.
    Ok = 0,
    /// An operating-system I/O error (permission denied, disk full, ...).
    Io = 1,
    /// A file or directory that should exist does not.
    NotFound = 2,
    /// The output exists and the operation was asked not to touch it.
    AlreadyExists = 3,
    /// The input is not a valid file of its format (corrupt, truncated or hostile).
    Malformed = 4,
    /// A tensor or array name that is not in the container.
    KeyNotFound = 5,
    /// Valid input that npkio or the target format cannot represent.
    Unsupported = 6,
    /// A bad argument (chunk size 0, shape and data disagreeing, unknown dtype number, ...).
    InvalidArgument = 7,
    /// Another process holds the output's lock.
    Busy = 8,
    /// A required pointer argument was NULL.
    NullArgument = 100,
    /// A name, key or metadata string was not valid UTF-8.
    InvalidUtf8 = 101,
    /// The caller's buffer is too small (`npkio_last_error_copy`).
    BufferTooSmall = 102,
    /// An index at or past the count (`npkio_safetensors_get` and the like).
    IndexOutOfRange = 103,
    /// npkio panicked: a bug in npkio. The handle involved may only be freed.
    Panic = 104,
}

impl NpkioStatus {
    /// The status for a core error kind (a match, so a new kind fails to compile here).
    pub(crate) fn from_kind(kind: ErrorKind) -> NpkioStatus {
        match kind {
            ErrorKind::Io => NpkioStatus::Io,
            ErrorKind::NotFound => NpkioStatus::NotFound,
            ErrorKind::AlreadyExists => NpkioStatus::AlreadyExists,
            ErrorKind::Malformed => NpkioStatus::Malformed,
            ErrorKind::KeyNotFound => NpkioStatus::KeyNotFound,
            ErrorKind::Unsupported => NpkioStatus::Unsupported,
            ErrorKind::InvalidArgument => NpkioStatus::InvalidArgument,
            ErrorKind::Busy => NpkioStatus::Busy,
        }
    }

    /// Every status, for tables and tests.
    const ALL: [NpkioStatus; 14] = [
        NpkioStatus::Ok,
        NpkioStatus::Io,
        NpkioStatus::NotFound,
        NpkioStatus::AlreadyExists,
        NpkioStatus::Malformed,
        NpkioStatus::KeyNotFound,
        NpkioStatus::Unsupported,
        NpkioStatus::InvalidArgument,
        NpkioStatus::Busy,
        NpkioStatus::NullArgument,
        NpkioStatus::InvalidUtf8,
        NpkioStatus::BufferTooSmall,
        NpkioStatus::IndexOutOfRange,
        NpkioStatus::Panic,
    ];

    /// The status with number `n`, if there is one.
    pub fn from_u32(n: u32) -> Option<NpkioStatus> {
        NpkioStatus::ALL.iter().copied().find(|s| *s as u32 == n)
    }

    /// The name as the header spells it, NUL-terminated.
    fn c_name(self) -> &'static std::ffi::CStr {
        match self {
            NpkioStatus::Ok => c"NPKIO_STATUS_OK",
            NpkioStatus::Io => c"NPKIO_STATUS_IO",
            NpkioStatus::NotFound => c"NPKIO_STATUS_NOT_FOUND",
            NpkioStatus::AlreadyExists => c"NPKIO_STATUS_ALREADY_EXISTS",
            NpkioStatus::Malformed => c"NPKIO_STATUS_MALFORMED",
            NpkioStatus::KeyNotFound => c"NPKIO_STATUS_KEY_NOT_FOUND",
            NpkioStatus::Unsupported => c"NPKIO_STATUS_UNSUPPORTED",
            NpkioStatus::InvalidArgument => c"NPKIO_STATUS_INVALID_ARGUMENT",
            NpkioStatus::Busy => c"NPKIO_STATUS_BUSY",
            NpkioStatus::NullArgument => c"NPKIO_STATUS_NULL_ARGUMENT",
            NpkioStatus::InvalidUtf8 => c"NPKIO_STATUS_INVALID_UTF8",
            NpkioStatus::BufferTooSmall => c"NPKIO_STATUS_BUFFER_TOO_SMALL",
            NpkioStatus::IndexOutOfRange => c"NPKIO_STATUS_INDEX_OUT_OF_RANGE",
            NpkioStatus::Panic => c"NPKIO_STATUS_PANIC",
        }
    }
}

/// A failure on its way to C: a status and a message.
#[derive(Debug)]
pub(crate) struct FfiError {
    pub(crate) status: NpkioStatus,
    pub(crate) message: String,
}

/// `Result` of the bodies behind the panic boundary.
pub(crate) type FfiResult<T> = Result<T, FfiError>;

impl FfiError {
    pub(crate) fn new(status: NpkioStatus, message: impl Into<String>) -> FfiError {
        FfiError {
            status,
            message: message.into(),
        }
    }

    /// A NULL pointer passed for argument `what`.
    pub(crate) fn null(what: &str) -> FfiError {
        FfiError::new(
            NpkioStatus::NullArgument,
            format!("argument `{what}` is NULL"),
        )
    }

    pub(crate) fn invalid(message: impl Into<String>) -> FfiError {
        FfiError::new(NpkioStatus::InvalidArgument, message)
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> FfiError {
        FfiError::new(NpkioStatus::from_kind(e.kind()), e.to_string())
    }
}

struct LastError {
    status: NpkioStatus,
    /// The message, NUL-terminated; empty after a success.
    message: CString,
}

thread_local! {
    static LAST_ERROR: RefCell<LastError> = RefCell::new(LastError {
        status: NpkioStatus::Ok,
        message: CString::default(),
    });
}

pub(crate) fn clear_last_error() {
    LAST_ERROR.with(|l| {
        let mut l = l.borrow_mut();
        if l.status != NpkioStatus::Ok {
            l.status = NpkioStatus::Ok;
            l.message = CString::default();
        }
    });
}

pub(crate) fn set_last_error(e: FfiError) {
    // A message may quote a name holding a NUL byte: spell it out rather than cut it short.
    let text = e.message.replace('\0', "\\0");
    let message = CString::new(text).unwrap_or_default();
    LAST_ERROR.with(|l| {
        *l.borrow_mut() = LastError {
            status: e.status,
            message,
        }
    });
}

/// The message of the calling thread's last failed call, as a NUL-terminated UTF-8
/// string; the empty string when the last status-returning call succeeded (or there was
/// none). Never NULL.
///
/// The string belongs to npkio. It stays valid until the calling thread next calls a
/// function that returns an `NpkioStatus`; copy it to keep it. Other threads have their
/// own messages.
#[no_mangle]
pub extern "C" fn npkio_last_error_message() -> *const c_char {
    super::panic::value_boundary(c"".as_ptr(), || {
        LAST_ERROR.with(|l| l.borrow().message.as_ptr())
    })
}

/// The status of the calling thread's last status-returning call (`NPKIO_STATUS_OK` if it
/// succeeded or there was none).
#[no_mangle]
pub extern "C" fn npkio_last_error_status() -> NpkioStatus {
    super::panic::value_boundary(NpkioStatus::Panic, || {
        LAST_ERROR.with(|l| l.borrow().status)
    })
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
    super::panic::value_boundary(NpkioStatus::Panic, || {
        LAST_ERROR.with(|l| {
            let l = l.borrow();
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
    super::panic::value_boundary(std::ptr::null(), || {
        NpkioStatus::from_u32(status).map_or(std::ptr::null(), |s| s.c_name().as_ptr())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_kinds_keep_their_numbers() {
        let kinds = [
            ErrorKind::Io,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::Malformed,
            ErrorKind::KeyNotFound,
            ErrorKind::Unsupported,
            ErrorKind::InvalidArgument,
            ErrorKind::Busy,
        ];
        for k in kinds {
            assert_eq!(NpkioStatus::from_kind(k) as u32, k as u32, "{k:?}");
        }
    }

    #[test]
    fn numbers_are_unique_and_round_trip() {
        for s in NpkioStatus::ALL {
            assert_eq!(NpkioStatus::from_u32(s as u32), Some(s));
        }
        assert_eq!(NpkioStatus::from_u32(9), None);
        assert_eq!(NpkioStatus::from_u32(u32::MAX), None);
    }
}
