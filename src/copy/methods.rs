//! Moving one chunk's bytes, by each [`CopyMethod`](super::CopyMethod): `pread`/`pwrite`
//! through a page-aligned bounce buffer, `copy_file_range`, a mapped destination window, or a
//! mapped source window handed to `pwrite`; and the positioned I/O under them.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use super::plan::{regular_len, short_source, Chunk, Dsts, Part, Plan, Sources};
use super::{Cause, CopyMethod, Side};
use crate::sys::io::{page_size, read_counted, read_exact_at};

/// How a chunk's bytes travel, as [`CopyMethod`] resolves for the sources and platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Strategy {
    ReadWrite,
    CopyFileRange,
    MapDst,
    MapSrc,
}

/// The strategy for `method`, for sources in memory or in files.
pub(super) fn strategy(method: CopyMethod, from_memory: bool) -> Strategy {
    let s = match method {
        CopyMethod::Auto => Strategy::ReadWrite,
        CopyMethod::Mmap => Strategy::MapDst,
        CopyMethod::ReadWrite => Strategy::ReadWrite,
        CopyMethod::CopyFileRange if from_memory => Strategy::ReadWrite,
        CopyMethod::CopyFileRange => Strategy::CopyFileRange,
        CopyMethod::MmapSource if from_memory => Strategy::ReadWrite,
        CopyMethod::MmapSource => Strategy::MapSrc,
    };
    match s {
        Strategy::CopyFileRange if !cfg!(any(target_os = "linux", target_os = "android")) => {
            Strategy::ReadWrite
        }
        Strategy::MapSrc if !cfg!(unix) => Strategy::ReadWrite,
        s => s,
    }
}

/// Where a call's chunks come from and go to, and how their bytes travel: what a worker
/// needs to copy one chunk.
pub(super) struct Route<'a> {
    pub(super) sources: &'a Sources<'a>,
    pub(super) dsts: &'a Dsts<'a>,
    /// Destination lengths at the start, for the caller's open files (None: not a regular
    /// file); mapped windows past the end would not reach the file, so such chunks are written
    /// with pwrite.
    pub(super) dst_lens: Vec<Option<u64>>,
    pub(super) strategy: Strategy,
    /// Set once copy_file_range reported it cannot serve these files.
    pub(super) cfr_unsupported: AtomicBool,
}

/// Why a chunk failed.
pub(super) enum Fault {
    /// An OS error (or a source shorter than the chunk).
    Io(io::Error),
    /// Destination `dst` could not be created. The worker that tried to create it has the
    /// cause; the others, which found it failed, have `None`.
    Create { dst: usize, cause: Option<Cause> },
    /// Source `src` could not be opened (the same way).
    Open { src: usize, cause: Option<Cause> },
}

/// A method's result: the side at fault and the OS error.
type ChunkResult = Result<(), (Side, io::Error)>;

/// Why a chunk failed: the extent at fault, its side, and the fault.
pub(super) type ChunkFailure = (usize, Side, Fault);

/// Copies chunk `c` of `plan`, creating its destination first if it is a new file not yet
/// created.
pub(super) fn copy_chunk(
    sh: &Route<'_>,
    plan: &Plan<'_>,
    c: &Chunk,
    buf: &mut Bounce,
) -> Result<(), ChunkFailure> {
    let destination = |d: usize, extent: usize| {
        sh.dsts.get(d).map_err(|cause| {
            let fault = Fault::Create { dst: d, cause };
            (extent, Side::Write, fault)
        })
    };
    if c.scatter && c.several {
        return scatter(sh, plan, c, buf, destination);
    }
    let dst = destination(c.dst, c.extent)?;
    if c.several {
        return gather(sh, plan, c, dst, buf);
    }
    if let Sources::OnUse(s) = sh.sources {
        let src = s
            .acquire(c.src)
            .map_err(|cause| (c.extent, Side::Read, Fault::Open { src: c.src, cause }))?;
        let done = copy_file_chunk(sh, c, &src, dst, buf);
        drop(src);
        s.release(c.src);
        return done.map_err(|(side, e)| (c.extent, side, Fault::Io(e)));
    }
    copy_chunk_to(sh, c, dst, buf).map_err(|(side, e)| (c.extent, side, Fault::Io(e)))
}

/// Copies a chunk that takes bytes from several extents through the worker's buffer: each
/// part is read into its place, and the buffer is written with one `pwrite` per
/// [`BOUNCE_SIZE`] bytes. Tensors of a few kilobytes laid end to end in a SafeTensors file
/// are written 512 KiB at a time, page-aligned, instead of one small `pwrite` each: with two
/// workers, those small writes had spent a quarter of an export of 100,000 tensors spinning on
/// the file's inode lock, and a tenth zero-filling the partial pages they began and ended in
/// (`perf`).
fn gather(
    sh: &Route<'_>,
    plan: &Plan<'_>,
    c: &Chunk,
    dst: &File,
    buf: &mut Bounce,
) -> Result<(), ChunkFailure> {
    let mut g = Gather {
        at: c.dst_offset,
        filled: 0,
        end: c.dst_offset + c.len,
    };
    for p in plan.parts(c) {
        debug_assert_eq!(p.dst_offset, g.at + g.filled as u64);
        read_source(sh.sources, p.src, |read| g.put(dst, buf, &p, read))
            .map_err(|cause| (p.extent, Side::Read, Fault::Open { src: p.src, cause }))?
            .map_err(|(side, e)| (p.extent, side, Fault::Io(e)))?;
    }
    debug_assert_eq!((g.at, g.filled), (g.end, 0));
    Ok(())
}

/// Copies a chunk of small extents that lie end to end in one source: one read of them all
/// into the worker's buffer, then one `pwrite` for each, into its own destination (created
/// first if it is a new file). An import of 100,000 tensors of 10 KB reads its source
/// 512 KiB at a time instead of once per tensor.
fn scatter<'d>(
    sh: &Route<'_>,
    plan: &Plan<'_>,
    c: &Chunk,
    buf: &mut Bounce,
    destination: impl Fn(usize, usize) -> Result<&'d File, ChunkFailure>,
) -> Result<(), ChunkFailure> {
    let b = buf.slice(c.len as usize, c.dst_offset);
    let read = read_source(sh.sources, c.src, |read| read(b, c.src_offset))
        .map_err(|cause| (c.extent, Side::Read, Fault::Open { src: c.src, cause }))?;
    if let Err((got, e)) = read {
        // The extent whose bytes could not be read.
        let at = c.src_offset + got as u64;
        let p = plan
            .parts(c)
            .find(|p| p.src_offset + p.len > at)
            .expect("a short read ends inside the chunk");
        let e = match e.kind() {
            io::ErrorKind::UnexpectedEof => short_source(p.src_offset + p.len, at),
            _ => e,
        };
        return Err((p.extent, Side::Read, Fault::Io(e)));
    }
    for p in plan.parts(c) {
        let dst = destination(p.dst, p.extent)?;
        let from = (p.src_offset - c.src_offset) as usize;
        write_all_at(dst, &b[from..from + p.len as usize], p.dst_offset)
            .map_err(|e| (p.extent, Side::Write, Fault::Io(e)))?;
    }
    Ok(())
}

/// Fills `bytes` from a source at an offset; on failure, says how many bytes it had read.
type SourceRead<'a> = dyn FnMut(&mut [u8], u64) -> Result<(), (usize, io::Error)> + 'a;

/// Runs `read` with a reader of source `src`: a file (opened first, and released after,
/// when the workers open the sources on use) or a slice of memory, whose bounds every extent
/// was checked against in `validate`. `Err` when the source could not be opened, as
/// [`SourceFiles::acquire`](super::SourceFiles) says.
fn read_source<R>(
    sources: &Sources<'_>,
    src: usize,
    read: impl FnOnce(&mut SourceRead<'_>) -> R,
) -> Result<R, Option<Cause>> {
    match sources {
        Sources::Files { files, .. } => Ok(read(&mut |b, off| read_counted(files[src], b, off))),
        Sources::OnUse(s) => {
            let file = s.acquire(src)?;
            let done = read(&mut |b, off| read_counted(&file, b, off));
            drop(file);
            s.release(src);
            Ok(done)
        }
        Sources::Memory(m) => Ok(read(&mut |b, off| {
            let from = off as usize;
            b.copy_from_slice(&m[src][from..from + b.len()]);
            Ok(())
        })),
    }
}

/// A gathered chunk being filled: the piece at `at` holds `filled` bytes so far.
struct Gather {
    at: u64,
    filled: usize,
    end: u64,
}

impl Gather {
    /// Reads part `p` into the buffer with `read(bytes, source offset)`, writing out every
    /// piece it completes.
    fn put(
        &mut self,
        dst: &File,
        buf: &mut Bounce,
        p: &Part,
        read: &mut SourceRead<'_>,
    ) -> ChunkResult {
        let mut done = 0u64;
        while done < p.len {
            let piece = (self.end - self.at).min(BOUNCE_SIZE as u64) as usize;
            let n = ((p.len - done) as usize).min(piece - self.filled);
            let b = buf.slice(piece, self.at);
            read(&mut b[self.filled..self.filled + n], p.src_offset + done)
                .map_err(|(_, e)| (Side::Read, e))?;
            self.filled += n;
            done += n as u64;
            if self.filled == piece {
                write_all_at(dst, b, self.at).map_err(|e| (Side::Write, e))?;
                self.at += piece as u64;
                self.filled = 0;
            }
        }
        Ok(())
    }
}

/// Copies chunk `c` into `dst` with the call's strategy.
fn copy_chunk_to(sh: &Route<'_>, c: &Chunk, dst: &File, buf: &mut Bounce) -> ChunkResult {
    // Bounds were checked in validate; the slicing below cannot fail.
    let len = c.len as usize;
    match sh.sources {
        Sources::Memory(m) => {
            let start = c.src_offset as usize;
            let src = &m[c.src][start..start + len];
            if sh.strategy == Strategy::MapDst && fits(sh, c) {
                if let Some(map) = map_window(dst, c.dst_offset, len, true) {
                    return mapdst_from_memory(src, &map);
                }
            }
            // In pieces: one large pwrite from user memory was measured up to 10x slower
            // than the same bytes in BOUNCE_SIZE pieces (docs/benchmarks.md).
            for (i, piece) in src.chunks(BOUNCE_SIZE).enumerate() {
                let at = c.dst_offset + (i * BOUNCE_SIZE) as u64;
                write_all_at(dst, piece, at).map_err(|e| (Side::Write, e))?;
            }
            Ok(())
        }
        Sources::Files { files, .. } => copy_file_chunk(sh, c, files[c.src], dst, buf),
        Sources::OnUse(_) => unreachable!("opened by copy_chunk"),
    }
}

/// Copies chunk `c` from the file `src` into `dst` with the call's strategy.
fn copy_file_chunk(
    sh: &Route<'_>,
    c: &Chunk,
    src: &File,
    dst: &File,
    buf: &mut Bounce,
) -> ChunkResult {
    let len = c.len as usize;
    match sh.strategy {
        Strategy::MapDst if fits(sh, c) => {
            if let Some(map) = map_window(dst, c.dst_offset, len, true) {
                return mapdst_from_file(src, &map, c.src_offset);
            }
        }
        Strategy::MapSrc => {
            if let Some(map) = map_window(src, c.src_offset, len, false) {
                return mapsrc(src, dst, &map, c);
            }
        }
        Strategy::CopyFileRange if !sh.cfr_unsupported.load(Ordering::Relaxed) => {
            return copy_range(sh, src, dst, c, buf);
        }
        _ => {}
    }
    read_write(src, dst, c.src_offset, c.dst_offset, len, buf)
}

/// Whether the chunk lies within the destination as it was at the start (so a mapped window
/// reaches the file).
fn fits(sh: &Route<'_>, c: &Chunk) -> bool {
    let len = match sh.dsts {
        Dsts::Open(_) => sh.dst_lens.get(c.dst).copied().flatten(),
        Dsts::New(n) => n.get(c.dst).ok().and_then(|f| f.len()),
    };
    matches!(len, Some(l) if c.dst_offset + c.len <= l)
}

/// Largest piece a worker moves through its buffer with one `pread` and one `pwrite`.
///
/// Small enough that the buffer stays in the core's cache between the two copies (the kernel
/// copies into it, then out of it), large enough that the system calls do not show. Measured
/// on 1 GiB, 2 threads, page-aligned buffer (docs/benchmarks.md): 512 KiB 0.21 s both ways, 256 KiB
/// 0.25 s, 1 MiB 0.22 s for an export but 0.50-0.83 s for an import; `cp` 0.30-0.36 s.
pub const BOUNCE_SIZE: usize = 512 << 10;

/// A worker's buffer for `pread`/`pwrite`, reused from chunk to chunk.
///
/// The kernel's copies to and from user memory are much slower when the buffer is not aligned
/// like the file offset it is written to: with the buffer 16 bytes past a page boundary (where
/// `malloc` puts a large block), a 1 GiB copy in 8 MiB chunks took 1.1-1.6 s instead of
/// 0.24-0.27 s. So the slice handed out sits at the destination offset's position within a
/// page (after the first chunk of an extent, that is a page boundary).
#[derive(Default)]
pub(super) struct Bounce {
    buf: Vec<u8>,
}

impl Bounce {
    /// `len` bytes whose address is congruent to `dst_offset` modulo the page size.
    fn slice(&mut self, len: usize, dst_offset: u64) -> &mut [u8] {
        let page = page_size() as usize;
        if self.buf.len() < len + page {
            self.buf = vec![0; len + page];
        }
        let want = (dst_offset % page as u64) as usize;
        let start = (want + page - self.buf.as_ptr() as usize % page) % page;
        &mut self.buf[start..start + len]
    }
}

/// pread into the worker's buffer, then pwrite, [`BOUNCE_SIZE`] bytes at a time.
fn read_write(
    src: &File,
    dst: &File,
    src_offset: u64,
    dst_offset: u64,
    len: usize,
    buf: &mut Bounce,
) -> ChunkResult {
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(BOUNCE_SIZE);
        let (s, d) = (src_offset + done as u64, dst_offset + done as u64);
        let b = buf.slice(n, d);
        read_exact_at(src, b, s).map_err(|e| (Side::Read, e))?;
        write_all_at(dst, b, d).map_err(|e| (Side::Write, e))?;
        done += n;
    }
    Ok(())
}

/// Map a window of `len` bytes at `offset` of `file` (writable or read-only), or `None` if the
/// file cannot be mapped (for example a destination opened write-only), in which case the
/// caller falls back to pread/pwrite. Dropping the window unmaps it.
fn map_window(file: &File, offset: u64, len: usize, writable: bool) -> Option<memmap2::MmapRaw> {
    let mut o = memmap2::MmapOptions::new();
    o.offset(offset).len(len);
    let map = if writable {
        o.map_raw(file)
    } else {
        o.map_raw_read_only(file)
    };
    map.ok()
}

/// Let the kernel pread the source straight into the mapped destination window `map`.
fn mapdst_from_file(src: &File, map: &memmap2::MmapRaw, src_offset: u64) -> ChunkResult {
    // SAFETY: `map` is a fresh shared, writable mapping of `map.len()` bytes of the
    // destination, which lies within the file's length (checked by `fits`) and is not accessed
    // through any other pointer while this slice lives (chunks never overlap in a destination,
    // and the window is private to this worker). The destination is the caller's own file; even
    // if it shrank, the only access to this memory is the kernel's copy in pread below, which
    // reports EFAULT rather than raising SIGBUS.
    let window = unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr(), map.len()) };
    read_exact_at(src, window, src_offset).map_err(|e| {
        if e.raw_os_error() == Some(libc::EFAULT) {
            return (Side::Write, e);
        }
        (Side::Read, e)
    })
    // The caller drops `map` next: munmap, so the window's pages leave our resident set.
}

/// pwrite the chunk to the destination straight from the mapped source window `map`.
fn mapsrc(src: &File, dst: &File, map: &memmap2::MmapRaw, c: &Chunk) -> ChunkResult {
    use std::os::unix::io::AsRawFd;
    let base = map.as_ptr();
    let mut done = 0usize;
    let len = c.len as usize;
    while done < len {
        // SAFETY: `base + done .. base + len` lies inside the live mapping `map`. User space
        // never dereferences it; only the kernel reads it, and a page past the source's end
        // (if the source was truncated) makes pwrite return EFAULT or a short count instead
        // of raising SIGBUS. The descriptor is borrowed from `dst`, open for the call.
        let n = unsafe {
            libc::pwrite(
                dst.as_raw_fd(),
                base.add(done).cast(),
                len - done,
                (c.dst_offset + done as u64) as libc::off_t,
            )
        };
        if n > 0 {
            done += n as usize;
            continue;
        }
        let err = if n == 0 {
            io::Error::new(
                io::ErrorKind::WriteZero,
                "the destination accepted no more bytes",
            )
        } else {
            io::Error::last_os_error()
        };
        if err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        // Tell a shrunk source from a failing destination.
        let end = c.src_offset + c.len;
        if let Some(avail) = regular_len(src) {
            if avail < end {
                return Err((Side::Read, short_source(end, avail)));
            }
        }
        return Err((Side::Write, err));
    }
    Ok(())
}

/// Copy the slice into the mapped destination window `map` (of the same length).
fn mapdst_from_memory(src: &[u8], map: &memmap2::MmapRaw) -> ChunkResult {
    // SAFETY: as in `mapdst_from_file`, the window is a fresh writable mapping of `src.len()`
    // bytes inside the destination file (checked by `fits`), used by this worker only. The
    // destination is the caller's own fresh file, which nobody else truncates, so the user-space
    // copy below cannot fault.
    let window = unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr(), map.len()) };
    window.copy_from_slice(src);
    Ok(())
}

/// copy_file_range, falling back to pread/pwrite from where it stopped.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn copy_range(sh: &Route<'_>, src: &File, dst: &File, c: &Chunk, buf: &mut Bounce) -> ChunkResult {
    use std::os::unix::io::AsRawFd;
    let mut src_off = c.src_offset as libc::loff_t;
    let mut dst_off = c.dst_offset as libc::loff_t;
    let mut left = c.len as usize;
    while left > 0 {
        // SAFETY: both descriptors are open for the duration of the call (borrowed from
        // `File`s), and the offset pointers point to live, exclusively borrowed locals.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut src_off,
                dst.as_raw_fd(),
                &mut dst_off,
                left,
                0,
            )
        };
        if n > 0 {
            left -= n as usize;
            continue;
        }
        if n == 0 {
            // End of the source: it is shorter than the extent.
            let end = c.src_offset + c.len;
            return Err((Side::Read, short_source(end, src_off as u64)));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) => {
                sh.cfr_unsupported.store(true, Ordering::Relaxed);
            }
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => return Err((Side::Write, err)),
            // Anything else: pread/pwrite will tell which side is at fault.
            _ => {}
        }
        break;
    }
    if left == 0 {
        return Ok(());
    }
    read_write(src, dst, src_off as u64, dst_off as u64, left, buf)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn copy_range(_sh: &Route<'_>, src: &File, dst: &File, c: &Chunk, buf: &mut Bounce) -> ChunkResult {
    read_write(src, dst, c.src_offset, c.dst_offset, c.len as usize, buf)
}

// ---------------------------------------------------------------------------------------------
// Positioned I/O.

fn write_at(f: &File, buf: &[u8], off: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::write_at(f, buf, off)
}

fn write_all_at(f: &File, mut buf: &[u8], mut off: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match write_at(f, buf, off) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the destination accepted no more bytes",
                ))
            }
            Ok(n) => {
                buf = &buf[n..];
                off += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounce_slices_sit_like_the_destination_offset_within_a_page() {
        let page = page_size() as usize;
        let mut b = Bounce::default();
        for (len, dst_offset) in [
            (1, 0),
            (4096, 1),
            (BOUNCE_SIZE, 4095),
            (10, 100),
            (70_000, 8),
        ] {
            let s = b.slice(len, dst_offset as u64);
            assert_eq!(s.len(), len);
            assert_eq!(
                s.as_ptr() as usize % page,
                dst_offset % page,
                "{len} at {dst_offset}"
            );
        }
    }
}
