//! The C ABI: a thin skin over the Rust core, declared in `include/npkio.h`.
//!
//! Rules every function follows (the header repeats them):
//!
//! - Every function that can fail returns an [`NpkioStatus`]; the calling thread's last
//!   error message says more ([`npkio_last_error_message`]).
//! - Every pointer argument is checked: NULL where a value is required gives
//!   `NPKIO_STATUS_NULL_ARGUMENT`. A pointer whose count is 0 is ignored and may be NULL.
//! - Out-parameters are written only on success.
//! - Handles (`NpkioSafetensors`, `NpkioSafetensorsIter`, `NpkioNumpack`, `NpkioTensors`,
//!   `NpkioLoader`) are opaque, made by npkio and freed by npkio's `_free` function, never
//!   by `free()`. Freeing NULL does nothing. Freeing a handle twice, or using it after it
//!   is freed, is the caller's error and is not detected.
//! - Every pointer npkio gives out (names, shapes, tensor data) belongs to the handle it
//!   came from and stays valid until that handle is freed, not longer.
//! - Paths are NUL-terminated byte strings (any bytes the OS accepts); tensor names,
//!   keys and metadata are NUL-terminated UTF-8.
//! - A handle may be used from several threads at once through the functions that take it
//!   as `const`; a function that takes it non-`const` must not run concurrently with any
//!   other use of the same handle.
//! - A panic inside npkio becomes `NPKIO_STATUS_PANIC`, never an abort.
//!
//! The files: one a handle (`safetensors.rs`, `tensors.rs`, `numpack.rs`, `load.rs`) or a
//! group of functions (`convert.rs`, `dtype.rs`, `last_error.rs`; `save.rs`: tensors in
//! memory straight to SafeTensors; `summary.rs` and `numpack_records.rs`: a file's or a
//! directory's whole description as one JSON document); and the shared machinery,
//! `args.rs` (arguments in), `handle.rs` (handle ownership and what handles hand out),
//! `list.rs` (the count/get/find functions), `error.rs` (statuses and the last error) and
//! `panic.rs` (the boundary every exported function runs behind). Every exported
//! function is written out, because cbindgen reads items as written and does not expand
//! macros; what they share is in those helpers, so each body is a few lines.

use std::ffi::{c_char, CStr};

mod args;
pub mod convert;
pub mod dtype;
pub mod error;
mod handle;
pub mod last_error;
mod list;
pub mod numpack;
pub mod numpack_records;
pub mod options;
pub(crate) mod panic;
pub mod safetensors;
pub mod save;
pub mod summary;
pub mod tensors;
pub mod units;
// The loader's C skin.
pub mod load;

pub use convert::*;
pub use dtype::{
    npkio_dtype_bits, npkio_dtype_name, npkio_dtype_numpy_name, NpkioDtype, NpkioTensorDesc,
    NpkioTensorView,
};
pub use error::NpkioStatus;
pub use last_error::{
    npkio_last_error_copy, npkio_last_error_message, npkio_last_error_status, npkio_status_name,
};
pub use load::*;
pub use numpack::*;
pub use numpack_records::*;
pub use options::NpkioProgress;
pub use safetensors::*;
pub use save::*;
pub use summary::*;
pub use tensors::*;
pub use units::npkio_parse_size;

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
