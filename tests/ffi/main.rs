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
