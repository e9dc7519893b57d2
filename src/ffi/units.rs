//! Byte sizes written by people, for hosts that take them from their own users
//! (`"5GB"` for a shard size, say): the same parser as the command line and Python.

use std::ffi::c_char;

use super::args::{str_arg, Out};
use super::error::NpkioStatus;
use super::panic::status_boundary;

/// Parses a byte size such as `"4096"`, `"64MB"` (powers of 1000), `"100MiB"` or `"8M"`
/// (powers of 1024), `"1.5GiB"` (a fraction rounds down to whole bytes) into `*out`. Zero
/// and sizes past 2^64 - 1 are refused with `NPKIO_STATUS_INVALID_ARGUMENT`.
///
/// # Safety
///
/// `text` NULL or a NUL-terminated string; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn npkio_parse_size(text: *const c_char, out: *mut u64) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above.
        let out = unsafe { Out::new(out, "out") }?;
        // SAFETY: the caller's contract above.
        let text = unsafe { str_arg(text, "text") }?;
        out.set(crate::units::parse_size(text)?);
        Ok(())
    })
}
