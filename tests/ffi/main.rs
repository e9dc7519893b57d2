//! The C ABI as C uses it: the API against the fixtures, misuse, malformed inputs, threads,
//! the loader's C functions, the C examples, the committed header and the Python package's
//! ctypes declarations of it.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod convert_with;
mod examples;
mod header;
mod load;
mod malformed;
mod misuse;
mod prototypes;
mod stress;
mod units;

/// A path as a C string.
fn c(p: impl AsRef<std::path::Path>) -> std::ffi::CString {
    std::ffi::CString::new(p.as_ref().to_str().unwrap()).unwrap()
}

/// Asserts success, showing the C API's message otherwise.
#[track_caller]
fn ok(status: npkio::ffi::NpkioStatus) {
    assert_eq!(
        status,
        npkio::ffi::NpkioStatus::Ok,
        "{}",
        common::last_message()
    );
}
