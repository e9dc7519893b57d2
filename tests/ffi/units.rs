//! `npkio_parse_size`: the one size parser, as C hosts reach it.

use std::ffi::CString;

use npkio::ffi::{npkio_parse_size, NpkioStatus};

fn parse(text: &str) -> Result<u64, NpkioStatus> {
    let c = CString::new(text).unwrap();
    let mut out = 0u64;
    // SAFETY: a valid string and a writable out-pointer.
    match unsafe { npkio_parse_size(c.as_ptr(), &mut out) } {
        NpkioStatus::Ok => Ok(out),
        s => Err(s),
    }
}

#[test]
fn sizes_parse_as_on_the_command_line() {
    assert_eq!(parse("5GB"), Ok(5_000_000_000));
    assert_eq!(parse("500MiB"), Ok(500 << 20));
    assert_eq!(parse("1.5KiB"), Ok(1536));
    assert_eq!(parse("16EiB"), Err(NpkioStatus::InvalidArgument));
    assert_eq!(
        parse("18446744073709551616"),
        Err(NpkioStatus::InvalidArgument)
    );
    assert_eq!(parse("18446744073709551615"), Ok(u64::MAX));
    assert_eq!(parse("0"), Err(NpkioStatus::InvalidArgument));
    assert_eq!(parse("-1"), Err(NpkioStatus::InvalidArgument));
}

#[test]
fn null_arguments_are_refused() {
    let mut out = 7u64;
    // SAFETY: NULL is allowed and refused.
    let s = unsafe { npkio_parse_size(std::ptr::null(), &mut out) };
    assert_eq!(s, NpkioStatus::NullArgument);
    assert_eq!(out, 7);
    let c = CString::new("1").unwrap();
    // SAFETY: NULL out is allowed and refused.
    let s = unsafe { npkio_parse_size(c.as_ptr(), std::ptr::null_mut()) };
    assert_eq!(s, NpkioStatus::NullArgument);
}
