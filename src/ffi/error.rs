//! Status codes, the failure type of the C ABI's function bodies, and the calling thread's
//! last-error record.
//!
//! Every function that can fail returns an [`NpkioStatus`]. On failure it also records a
//! message for the calling thread, read with `npkio_last_error_message` or copied with
//! `npkio_last_error_copy` (both in `last_error.rs`). Each status-returning function
//! clears the record when it starts, so after `NPKIO_STATUS_OK` the message is empty. The
//! functions that do not return a status (`npkio_*_free`, `npkio_version`, the name
//! functions and the `npkio_last_error_*` functions themselves) leave the record alone, so
//! freeing handles while cleaning up after a failure keeps its message.
//!
//! `NpkioStatus` is written out below because it is the C contract: cbindgen reads this
//! enum, and it does not expand macros. Its values 1 to 8 are the core's
//! [`ErrorKind`]s: the mapping between the two is generated from the core's kind table
//! (`crate::error::error_kinds!`), with a compile-time check that each kind has the C
//! status of the same name and number.
//!
//! This module depends on nothing else in `ffi`; `panic.rs` builds on it.

use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::path::Path;

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
    /// Another process holds the output's lock, or was writing the sharded checkpoint
    /// being opened (it changed while being opened: open it again).
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

/// Reads the core's kind table into `From<ErrorKind> for NpkioStatus`.
macro_rules! status_of_kind {
    ($($(#[doc = $doc:literal])* $kind:ident = $n:literal,)*) => {
        impl From<ErrorKind> for NpkioStatus {
            /// The status of the same name and number (a match, so a new kind fails to
            /// compile here until `NpkioStatus` has it).
            fn from(kind: ErrorKind) -> NpkioStatus {
                match kind {
                    $(ErrorKind::$kind => NpkioStatus::$kind,)*
                }
            }
        }

        // Each kind keeps its number in C.
        const _: () = {
            $(assert!(
                NpkioStatus::$kind as u32 == $n && ErrorKind::$kind as u32 == $n,
                concat!("NpkioStatus::", stringify!($kind), " is not ErrorKind's number"),
            );)*
        };
    };
}

crate::error::error_kinds!(status_of_kind);

/// Every status and its name as the header spells it. (cbindgen writes the names; a test
/// checks this table against the committed header, which the drift test checks against
/// this enum.)
const STATUS_NAMES: [(NpkioStatus, &CStr); 14] = [
    (NpkioStatus::Ok, c"NPKIO_STATUS_OK"),
    (NpkioStatus::Io, c"NPKIO_STATUS_IO"),
    (NpkioStatus::NotFound, c"NPKIO_STATUS_NOT_FOUND"),
    (NpkioStatus::AlreadyExists, c"NPKIO_STATUS_ALREADY_EXISTS"),
    (NpkioStatus::Malformed, c"NPKIO_STATUS_MALFORMED"),
    (NpkioStatus::KeyNotFound, c"NPKIO_STATUS_KEY_NOT_FOUND"),
    (NpkioStatus::Unsupported, c"NPKIO_STATUS_UNSUPPORTED"),
    (
        NpkioStatus::InvalidArgument,
        c"NPKIO_STATUS_INVALID_ARGUMENT",
    ),
    (NpkioStatus::Busy, c"NPKIO_STATUS_BUSY"),
    (NpkioStatus::NullArgument, c"NPKIO_STATUS_NULL_ARGUMENT"),
    (NpkioStatus::InvalidUtf8, c"NPKIO_STATUS_INVALID_UTF8"),
    (
        NpkioStatus::BufferTooSmall,
        c"NPKIO_STATUS_BUFFER_TOO_SMALL",
    ),
    (
        NpkioStatus::IndexOutOfRange,
        c"NPKIO_STATUS_INDEX_OUT_OF_RANGE",
    ),
    (NpkioStatus::Panic, c"NPKIO_STATUS_PANIC"),
];

impl NpkioStatus {
    /// The status with number `n`, if there is one.
    pub fn from_u32(n: u32) -> Option<NpkioStatus> {
        STATUS_NAMES
            .iter()
            .map(|&(s, _)| s)
            .find(|&s| s as u32 == n)
    }

    /// The name as the header spells it, NUL-terminated.
    pub(crate) fn c_name(self) -> &'static CStr {
        STATUS_NAMES
            .iter()
            .find(|&&(s, _)| s == self)
            .map_or(c"", |&(_, name)| name)
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

    /// `index` at or past `len`: "`path`: `noun` index `index` is out of range (`len`
    /// `nouns`)", the path left out when there is none.
    pub(crate) fn out_of_range(
        path: Option<&Path>,
        noun: &str,
        index: usize,
        len: usize,
        nouns: &str,
    ) -> FfiError {
        let at = path.map_or(String::new(), |p| format!("{}: ", p.display()));
        FfiError::new(
            NpkioStatus::IndexOutOfRange,
            format!("{at}{noun} index {index} is out of range ({len} {nouns})"),
        )
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> FfiError {
        FfiError::new(e.kind().into(), e.to_string())
    }
}

/// The calling thread's last error.
pub(crate) struct LastError {
    pub(crate) status: NpkioStatus,
    /// The message, NUL-terminated; empty after a success.
    pub(crate) message: CString,
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

/// Runs `f` on the calling thread's last error.
pub(crate) fn with_last_error<T>(f: impl FnOnce(&LastError) -> T) -> T {
    LAST_ERROR.with(|l| f(&l.borrow()))
}

#[cfg(test)]
pub(crate) mod tests {
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
            assert_eq!(NpkioStatus::from(k) as u32, k as u32, "{k:?}");
        }
    }

    #[test]
    fn numbers_are_unique_and_round_trip() {
        for (s, _) in STATUS_NAMES {
            assert_eq!(NpkioStatus::from_u32(s as u32), Some(s));
        }
        assert_eq!(NpkioStatus::from_u32(9), None);
        assert_eq!(NpkioStatus::from_u32(u32::MAX), None);
    }

    #[test]
    fn names_are_the_header_names() {
        let header = include_str!("../../include/npkio.h");
        let in_header = enum_values(header, "NPKIO_STATUS_");
        let ours: Vec<(String, u32)> = STATUS_NAMES
            .iter()
            .map(|&(s, n)| (n.to_str().unwrap().to_string(), s as u32))
            .collect();
        assert_eq!(ours, in_header);
    }

    /// `(NAME, value)` of every `    PREFIX... = value,` line of the header.
    pub(crate) fn enum_values(header: &str, prefix: &str) -> Vec<(String, u32)> {
        header
            .lines()
            .filter_map(|l| {
                let (name, value) = l.trim().strip_suffix(',')?.split_once(" = ")?;
                let value = value.parse().ok()?;
                name.starts_with(prefix).then(|| (name.to_string(), value))
            })
            .collect()
    }
}
