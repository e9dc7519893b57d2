//! The system calls under the loader: positioned reads (buffered and `O_DIRECT`), page
//! residency with `mincore`, and `posix_fadvise`.
//!
//! Source bytes only ever reach npkio through `pread`, so a file truncated during a load is
//! a short read (an error), never `SIGBUS`. The only mapping made here is the one `mincore`
//! needs to ask which pages are resident; nothing reads through it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::sys::io::short;
pub(crate) use crate::sys::io::{page_size, read_exact_at};

/// Alignment of `O_DIRECT` offsets, lengths and buffers. 4096 covers every logical block
/// size in common use (512 and 4096 bytes).
pub(crate) const BLOCK: u64 = 4096;

/// A buffer whose start is aligned to [`BLOCK`], reused from task to task: an anonymous
/// mapping, with transparent huge pages asked for (`MADV_HUGEPAGE`) when it is 2 MiB or
/// more. `O_DIRECT` reads into it become few large device requests: with scattered 4 KiB
/// pages an 8 MiB read needs 2048 segments, which the virtual disk measured (254 segments
/// a request) split into many small requests, and such reads took twice as long as reads
/// into physically contiguous memory.
pub(crate) struct Aligned {
    ptr: *mut u8,
    cap: usize,
}

impl Default for Aligned {
    fn default() -> Self {
        Aligned {
            ptr: std::ptr::null_mut(),
            cap: 0,
        }
    }
}

const HUGE: usize = 2 << 20;

impl Aligned {
    /// At least `len` bytes starting on a [`BLOCK`] boundary (zeroed when first mapped);
    /// `OutOfMemory` when the memory cannot be had (`ENOMEM` under `ulimit -v`).
    pub(crate) fn get(&mut self, len: usize) -> io::Result<&mut [u8]> {
        if self.cap < len {
            self.release(); // the old one first: memory stays bounded
            let oom = || {
                io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!("cannot map a buffer of {len} bytes: out of memory"),
                )
            };
            let cap = len
                .checked_next_multiple_of(HUGE)
                .ok_or_else(oom)?
                .max(BLOCK as usize);
            // SAFETY: a fresh private anonymous mapping, checked for failure below.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    cap,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot map a buffer of {cap} bytes: {e}"),
                ));
            }
            if cap >= HUGE {
                // SAFETY: advice on our own mapping; failure only means small pages.
                unsafe { libc::madvise(p, cap, libc::MADV_HUGEPAGE) };
            }
            self.ptr = p.cast();
            self.cap = cap;
        }
        // SAFETY: `len <= cap` bytes of our mapping (page-aligned, so block-aligned),
        // initialised (anonymous memory reads as zeros), borrowed mutably through `self`.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr, len) })
    }

    /// `len` bytes from `at` (within what [`Aligned::get`] gave).
    pub(crate) fn view(&self, at: usize, len: usize) -> &[u8] {
        assert!(at + len <= self.cap);
        // SAFETY: inside our mapping, borrowed through `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.add(at), len) }
    }

    fn release(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: our own mapping of `cap` bytes, unmapped once.
            unsafe { libc::munmap(self.ptr.cast(), self.cap) };
            self.ptr = std::ptr::null_mut();
            self.cap = 0;
        }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        self.release();
    }
}

/// Opens the file behind `f` again with `O_DIRECT` (through `/proc/self/fd`, so it is the
/// same file even if its path was replaced since); `None` when the filesystem refuses it
/// (tmpfs, some FUSE and network filesystems answer `EINVAL`), and the chunks are then read
/// buffered through `f`. A new open file description is needed: setting `O_DIRECT` with
/// `fcntl` on a duplicate would change the buffered descriptor too.
///
/// Without `/proc` (some containers and chroots), the file is opened by `path`, which may
/// name another file by now (replaced by a rename): that descriptor is used only when it is
/// the file `f` is (same device and inode), and `None` is returned otherwise.
pub(crate) fn open_direct(f: &File, path: &Path) -> Option<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            // Non-blocking: a path replaced by a FIFO must not hang the open.
            .custom_flags(libc::O_DIRECT | libc::O_NONBLOCK)
            .open(p)
    };
    let proc = std::path::PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
    match open(&proc) {
        Ok(d) => Some(d),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let d = open(path).ok()?;
            same_file(f, &d).then_some(d)
        }
        Err(_) => None,
    }
}

/// Whether two descriptors are of the same file (device and inode).
pub(crate) fn same_file(a: &File, b: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (a.metadata(), b.metadata()) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Whether an error from an `O_DIRECT` read means "not possible here" rather than a real
/// failure (the filesystem wants another alignment, or no direct I/O at all).
pub(crate) fn direct_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
    )
}

/// Reads bytes `[off, off + len)` of `f` (opened with `O_DIRECT`) through `buf`, in aligned
/// blocks; returns where the requested bytes start in `buf` (for [`Aligned::view`]) and how
/// many of them were read with `O_DIRECT`. A file whose size is not a multiple of the block
/// size is fine: the last block is short. A file that ends before `off + len` is
/// `UnexpectedEof`.
///
/// After a short count that is not a block multiple and not at the file's end (signals,
/// FUSE), the next offset is no longer aligned: the rest is read through `plain`, a
/// buffered descriptor of the same file. `f` itself keeps `O_DIRECT` (clearing it with
/// `fcntl` on a duplicate would clear it on the open file description `f` shares).
pub(crate) fn read_direct(
    f: &File,
    plain: &File,
    off: u64,
    len: usize,
    buf: &mut Aligned,
) -> io::Result<(usize, u64)> {
    let a = off - off % BLOCK;
    let end = off + len as u64;
    let e = end.div_ceil(BLOCK) * BLOCK;
    let span = (e - a) as usize;
    let b = buf.get(span)?;
    let need = (end - a) as usize;
    let head = (off - a) as usize;
    let mut done = 0usize;
    while done < need {
        // Offsets and lengths stay block multiples until the file's end, where the kernel
        // returns a short count.
        match f
            .read_at(&mut b[done..span], a + done as u64)
            .map(short_read_for_tests)
        {
            Ok(0) => return Err(short(end, a + done as u64)),
            Ok(n) => {
                done += n;
                if n % BLOCK as usize != 0 && done < need {
                    let direct = done.saturating_sub(head) as u64;
                    read_exact_at(plain, &mut b[done..need], a + done as u64)?;
                    return Ok((head, direct));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((head, len as u64))
}

#[cfg(test)]
thread_local! {
    /// Unit tests: the count the next `O_DIRECT` read reports, cut short as a signal or
    /// FUSE may cut it.
    static SHORT_READ: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The count of bytes a read returned (`got`), except in unit tests that ask for one
/// short read.
fn short_read_for_tests(got: usize) -> usize {
    #[cfg(test)]
    if let Some(n) = SHORT_READ.with(|c| c.take()) {
        return n.min(got);
    }
    got
}

/// A temporary read-only mapping of a file range, only ever passed to `mincore` to ask
/// which pages are in the page cache. Nothing reads through it, so a file truncated
/// meanwhile cannot raise SIGBUS; it is unmapped on drop.
pub(crate) struct Residency {
    ptr: *mut libc::c_void,
    len: usize,
    base: u64,
    page: u64,
}

// SAFETY: the mapping is only passed to `mincore`, which any thread may call on it; it is
// unmapped once, on drop.
unsafe impl Send for Residency {}
// SAFETY: as above; `mostly_resident` takes `&self` and writes nothing shared.
unsafe impl Sync for Residency {}

impl Residency {
    /// Maps `[off, off + len)` of `f`; `None` for an empty range or a refused mapping.
    pub(crate) fn map(f: &File, off: u64, len: u64) -> Option<Residency> {
        use std::os::fd::AsRawFd;
        if len == 0 {
            return None;
        }
        let page = page_size();
        let base = off - off % page;
        let maplen = usize::try_from(off + len - base).ok()?;
        // SAFETY: a shared read-only mapping of a file we hold open, checked for failure;
        // it is never dereferenced (see the type's docs).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                maplen,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                base as libc::off_t,
            )
        };
        (ptr != libc::MAP_FAILED).then_some(Residency {
            ptr,
            len: maplen,
            base,
            page,
        })
    }

    /// Whether most of `samples` pages spread evenly over `[off, off + len)` (inside the
    /// mapped range) are resident: one `mincore` call of one page each.
    pub(crate) fn mostly_resident(&self, off: u64, len: u64, samples: u64) -> bool {
        let first = (off - self.base) / self.page;
        let last = (off + len - 1 - self.base) / self.page;
        let pages = last - first + 1;
        let n = samples.min(pages).max(1);
        let mut resident = 0;
        for k in 0..n {
            let p = first + k * pages / n;
            if (p * self.page) as usize >= self.len {
                break;
            }
            let mut v = 0u8;
            // SAFETY: one page inside our mapping; `v` receives one byte.
            let rc = unsafe {
                libc::mincore(
                    self.ptr.cast::<u8>().add((p * self.page) as usize).cast(),
                    self.page as usize,
                    &mut v,
                )
            };
            if rc == 0 && v & 1 != 0 {
                resident += 1;
            }
        }
        resident * 2 >= n
    }
}

impl Drop for Residency {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Asks the kernel to drop `[off, off + len)` of `f` from the page cache (drop-behind).
/// Advice only: errors are ignored.
pub(crate) fn drop_cache(f: &File, off: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise takes a descriptor we own and plain integers.
    unsafe {
        libc::posix_fadvise(
            f.as_raw_fd(),
            off as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `len` patterned bytes in a directory of the local filesystem (tmpfs
    /// refuses `O_DIRECT`), opened buffered and with `O_DIRECT`; `None` when the filesystem
    /// refuses `O_DIRECT`.
    fn direct_pair(dir: &Path, len: usize) -> Option<(Vec<u8>, File, File)> {
        use std::os::unix::fs::OpenOptionsExt;
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let path = dir.join("data");
        std::fs::write(&path, &data).unwrap();
        let plain = File::open(&path).unwrap();
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .ok()?;
        let mut probe = Aligned::default();
        read_direct(&direct, &plain, 0, 1, &mut probe).ok()?;
        Some((data, plain, direct))
    }

    fn has_direct(f: &File) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: F_GETFL on a descriptor we own.
        let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        flags & libc::O_DIRECT != 0
    }

    #[test]
    fn a_short_unaligned_direct_read_leaves_the_descriptor_direct() {
        let dir = tempfile::tempdir().unwrap();
        let Some((data, plain, direct)) = direct_pair(dir.path(), 1 << 20) else {
            eprintln!("SKIPPED: the filesystem refuses O_DIRECT");
            return;
        };
        assert!(has_direct(&direct));
        let mut buf = Aligned::default();
        // The first read returns 5000 bytes: the next offset is no longer aligned.
        SHORT_READ.with(|c| c.set(Some(5000)));
        let (off, len) = (100u64, 300_000usize);
        let (at, direct_bytes) = read_direct(&direct, &plain, off, len, &mut buf).unwrap();
        assert!(buf.view(at, len) == &data[off as usize..off as usize + len]);
        // Bytes 100..5000 came with O_DIRECT, the rest buffered.
        assert_eq!(direct_bytes, 4900);
        assert!(
            has_direct(&direct),
            "the O_DIRECT descriptor went buffered after a short read"
        );
    }

    #[test]
    fn a_buffer_that_cannot_be_mapped_is_an_error() {
        let mut a = Aligned::default();
        for len in [usize::MAX, 1 << 62] {
            let e = a.get(len).unwrap_err();
            assert!(e.to_string().contains("cannot map a buffer"), "{e}");
        }
        // The next request that fits works.
        assert_eq!(a.get(4096).unwrap().len(), 4096);
    }

    #[test]
    fn aligned_buffers_start_on_a_block() {
        let mut a = Aligned::default();
        for len in [1, 4096, 5000, 100] {
            let b = a.get(len).unwrap();
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % BLOCK as usize, 0);
        }
    }
}
