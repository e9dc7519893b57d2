//! The caller's destinations as the workers write them: raw pointers lent for a load,
//! sliced per segment, and the raw `O_DIRECT` reads that land in them.

use std::fs::File;
use std::io;

use super::io::BLOCK;
use super::plan::Seg;

/// A request's destination: `cap` writable bytes at `ptr`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawDst {
    pub(crate) ptr: *mut u8,
    pub(crate) cap: usize,
}

// SAFETY: the destinations are caller memory that the caller lends for the duration of the
// load (the Rust API takes `&mut` borrows, the C ABI states the contract); workers write
// disjoint ranges of them (validated: no two requests overlap, tasks never overlap within a
// request), and each staging buffer is used by one worker.
unsafe impl Send for RawDst {}
// SAFETY: as above.
unsafe impl Sync for RawDst {}

/// The output bytes `[off, off + len)` of request `req` in memory.
///
/// # Safety
///
/// The range must lie inside the request's destination (validated before the run) and no
/// other live slice may cover it (tasks write disjoint ranges).
pub(crate) unsafe fn dst_slice<'a>(
    dsts: &[RawDst],
    req: usize,
    off: u64,
    len: u64,
) -> &'a mut [u8] {
    let d = dsts[req];
    debug_assert!(off + len <= d.cap as u64);
    // SAFETY: the caller's contract above; the pointer is valid for `cap` bytes.
    unsafe { std::slice::from_raw_parts_mut(d.ptr.add(off as usize), len as usize) }
}

/// Copies `bytes`, the file's bytes from offset `at`, into the segments, which hold the
/// file's bytes from offset `start` on.
pub(crate) fn scatter(dsts: &[RawDst], segs: &[Seg], start: u64, at: u64, bytes: &[u8]) {
    let end = at + bytes.len() as u64;
    let mut pos = start;
    for s in segs {
        let (x, y) = (pos.max(at), (pos + s.len).min(end));
        if x < y {
            // SAFETY: validated range of the request's destination, written by this task
            // alone.
            let d = unsafe { dst_slice(dsts, s.req, s.out_off + (x - pos), y - x) };
            d.copy_from_slice(&bytes[(x - at) as usize..(y - at) as usize]);
        }
        pos += s.len;
    }
}

/// Reads exactly `len` bytes at `off` into `ptr` with an `O_DIRECT` descriptor (address,
/// offset and length block-aligned), by system calls on the raw pointer: the bytes may
/// span several requests' destinations that follow each other in memory. Returns how many
/// were read with `O_DIRECT`: after a short count that is not a block multiple, offsets
/// are no longer aligned and the rest is read through `plain`, a buffered descriptor of the
/// same file (`df` keeps `O_DIRECT`).
///
/// # Safety
///
/// `ptr` must be valid for writes of `len` bytes that nothing else accesses meanwhile.
pub(crate) unsafe fn pread_direct(
    df: &File,
    plain: &File,
    mut ptr: *mut u8,
    mut len: usize,
    mut off: u64,
) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut fd = df.as_raw_fd();
    let mut direct = 0u64;
    while len > 0 {
        // SAFETY: the caller's contract; the kernel writes at most `len` bytes.
        let n = unsafe { libc::pread(fd, ptr.cast(), len, off as libc::off_t) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = n as usize;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the file ends at byte {off}, before byte {} (truncated during the load?)",
                    off + len as u64
                ),
            ));
        }
        if fd == df.as_raw_fd() {
            direct += n as u64;
            if n % BLOCK as usize != 0 {
                fd = plain.as_raw_fd();
            }
        }
        ptr = ptr.wrapping_add(n);
        len -= n;
        off += n as u64;
    }
    Ok(direct)
}
