//! System calls written once: positioned reads that fill their buffer, the page size, and
//! `openat`.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

/// The system's page size (4096 where it cannot be asked).
pub(crate) fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf only reads its integer argument.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if p > 0 && (p as u64).is_power_of_two() {
            p as u64
        } else {
            4096
        }
    })
}

/// Reads exactly `buf.len()` bytes at `off`; a file that ends first is `UnexpectedEof`.
pub(crate) fn read_exact_at(f: &File, buf: &mut [u8], off: u64) -> io::Result<()> {
    read_counted(f, buf, off).map_err(|(_, e)| e)
}

/// [`read_exact_at`], saying on failure how many bytes it had read.
pub(crate) fn read_counted(f: &File, buf: &mut [u8], off: u64) -> Result<(), (usize, io::Error)> {
    let end = off + buf.len() as u64;
    let mut got = 0usize;
    while got < buf.len() {
        let at = off + got as u64;
        match f.read_at(&mut buf[got..], at) {
            Ok(0) => return Err((got, short(end, at))),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((got, e)),
        }
    }
    Ok(())
}

/// The error of a file that ends at `at`, before `end`.
pub(crate) fn short(end: u64, at: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the file ends at byte {at}, before byte {end} (truncated while being read?)"),
    )
}

/// A path or name as a C string (`InvalidInput` when it holds a NUL).
pub(crate) fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `openat(dir, name, flags | O_CLOEXEC, mode)`, retried when interrupted. `mode` counts
/// only with `O_CREAT`.
pub(crate) fn openat(
    dir: RawFd,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: `name` is a valid NUL-terminated string; the result is checked.
        let fd = unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                flags | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: `fd` was just returned by openat and is owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_that_ends_first_is_unexpected_eof_with_both_offsets() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[7u8; 100]).unwrap();
        let mut buf = [0u8; 50];
        read_exact_at(&f, &mut buf, 50).unwrap();
        assert_eq!(buf, [7u8; 50]);
        let (got, e) = read_counted(&f, &mut buf, 80).unwrap_err();
        assert_eq!((got, e.kind()), (20, io::ErrorKind::UnexpectedEof));
        let msg = e.to_string();
        assert!(msg.contains("100") && msg.contains("130"), "{msg}");
    }

    #[test]
    fn the_page_size_is_a_power_of_two() {
        assert!(page_size().is_power_of_two() && page_size() >= 4096);
    }
}
