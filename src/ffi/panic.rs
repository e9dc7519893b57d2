//! The panic boundary: every exported function runs its body through one of these, so a
//! panic in npkio becomes `NPKIO_STATUS_PANIC` (or a no-op for `_free`), never an abort and
//! never an unwind into C.
//!
//! It depends on `error.rs` alone (the status type and the last-error record).
//!
//! The crate keeps the default `panic = "unwind"` so that `catch_unwind` works. After a
//! panic the handle involved may hold a half-done change: the only safe thing left to do
//! with it is to free it.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::error::{clear_last_error, set_last_error, FfiError, FfiResult, NpkioStatus};

/// Runs the body of a status-returning function: clears the calling thread's last error,
/// runs `body`, and turns an error or a panic into a status with a message.
pub(crate) fn status_boundary(body: impl FnOnce() -> FfiResult<()>) -> NpkioStatus {
    clear_last_error();
    // `AssertUnwindSafe`: after a panic the caller is told (NPKIO_STATUS_PANIC) and the
    // documented rule is that the handle involved may only be freed.
    let outcome = catch_unwind(AssertUnwindSafe(body));
    let err = match outcome {
        Ok(Ok(())) => return NpkioStatus::Ok,
        Ok(Err(e)) => e,
        Err(payload) => FfiError::new(
            NpkioStatus::Panic,
            format!(
                "internal error: npkio panicked: {}",
                payload_text(&*payload)
            ),
        ),
    };
    let status = err.status;
    set_last_error(err);
    status
}

/// Runs the body of a function that returns a value and cannot fail (`npkio_version`,
/// `npkio_dtype_name`, the `_free` functions): a panic yields `fallback` and leaves the
/// last error alone.
pub(crate) fn value_boundary<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

fn payload_text(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::last_error::{npkio_last_error_message, npkio_last_error_status};
    use std::ffi::CStr;

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let status = status_boundary(|| panic!("boom {}", 42));
        assert_eq!(status, NpkioStatus::Panic);
        assert_eq!(npkio_last_error_status(), NpkioStatus::Panic);
        // SAFETY: the pointer is valid until the next status-returning call on this thread.
        let msg = unsafe { CStr::from_ptr(npkio_last_error_message()) };
        assert!(msg.to_str().unwrap().contains("boom 42"), "{msg:?}");
    }

    #[test]
    fn a_panic_in_a_value_function_yields_the_fallback() {
        assert_eq!(value_boundary(7, || panic!("no")), 7);
    }
}
