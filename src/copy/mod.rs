//! The copy engine: the one place in npkio that moves bytes, file to file or memory to file.
//!
//! A copy is described as a list of [`Extent`]s (`len` bytes from a source at an offset to a
//! destination at an offset). [`copy_extents`] and [`copy_from_memory`] cut every extent into
//! chunks of at most [`CopyOptions::chunk_size`] bytes whose boundaries fall on page boundaries
//! of the destination (with `pread`/`pwrite`, extents laid end to end in one destination are
//! cut as one: a chunk then gathers the bytes of many small extents into one buffer and one
//! write; and small extents end to end in one source are read with one `pread` and scattered
//! to their destinations), and hand the chunks to a small pool of worker threads: in order, except
//! that a worker prefers a destination that no other worker is writing, since Linux serializes
//! buffered writes to one file on its inode lock (with two workers on one tensor file, `perf`
//! showed 7% of the import's time spinning on that lock). With [`NewFiles`], the workers also
//! create the destination files as they reach them, so that creating hundreds of files (which
//! the kernel serializes on their directory) overlaps with copying.
//!
//! # Sources that change under us
//!
//! A source file may be truncated by another process while we copy it. npkio never reads a
//! source file through a user-space mapping, so that can never raise `SIGBUS`: source bytes
//! only ever reach us through `pread` or `copy_file_range`, where the kernel reports a short
//! read (turned into [`Side::Read`] with [`io::ErrorKind::UnexpectedEof`]). The only mapping
//! npkio touches is a window of the *destination*, which is the caller's own fresh file; and
//! even there, on the file-to-file path, the bytes are written into the window by the kernel
//! (`pread` into the mapped window), so a fault surfaces as `EFAULT`, not as a signal. Windows are
//! at most one chunk long and unmapped as soon as the chunk is done, so mapped pages never pile
//! up in the resident set.
//!
//! # Measurements (`examples/copy_methods.rs`)
//!
//! 2 vCPUs (AMD EPYC VM, 1 MiB L2 per core), ext4 on a virtual disk, Linux 6.18, one 1 GiB
//! file to one new file, warm page cache, one child process per run, `sync` between runs,
//! 5 runs interleaved, median seconds; `cp` (coreutils 9.1, one `copy_file_range` call) took
//! 0.28-0.30 s in the same runs. Peak RSS about 10 MiB, most of it the process itself.
//!
//! | method, threads             | 512 KiB chunks | 8 MiB chunks |
//! |-----------------------------|----------------|--------------|
//! | ReadWrite, 1                | 0.22           | 0.22-0.24    |
//! | ReadWrite, 2                | 0.15           | 0.16         |
//! | ReadWrite, 4                | 0.16           | 0.16         |
//! | CopyFileRange, 1 / 2 / 4    | 0.22 / 0.22 / 0.22 | 0.21 / 0.21 / 0.24 |
//! | MmapSource, 1 / 2           | 0.30 / 0.32    | 0.20 / 0.28  |
//! | Mmap (mapped dst), 1 / 2    | 5.7 / 4.8      | 0.33 / 0.29  |
//! | from memory (Auto), 1 / 2   | 0.19 / 0.20    | 0.19 / 0.20  |
//! | from memory, one `write_all`| 0.31-2.85 from run to run | |
//!
//! Findings:
//! - Buffered `pread`/`pwrite` is the fastest method and the only one that gains from a second
//!   thread, but only with a buffer the kernel copies into and out of quickly: page-aligned
//!   like the destination offset, and small enough to stay in the core's cache
//!   ([`BOUNCE_SIZE`]). With a `malloc`ed buffer (16 bytes past a page boundary) and 8 MiB
//!   pieces, the same copy took 1.1-1.6 s. Each chunk goes through the buffer in pieces of
//!   [`BOUNCE_SIZE`], so the chunk size does not matter to speed.
//! - Large `write`s straight from user memory are erratic here: one `write_all` of 1 GiB took
//!   0.31 s in one run and 2.85 s in another, and 8 MiB `pwrite`s from memory 1.1-2.3 s, while
//!   the same bytes in [`BOUNCE_SIZE`] pieces took 0.19-0.20 s every time. From memory, the
//!   engine writes in such pieces.
//! - `copy_file_range` is steady but does not scale (buffered writes into one file are
//!   serialized on its inode lock, and splicing costs about what `cp` costs); it gains nothing
//!   for npkio's layouts, where tensors never sit at block-aligned offsets in both files, so
//!   filesystems with reflinks could not share blocks either.
//! - A mapped destination is slow on ext4: each write fault on the fallocated (unwritten)
//!   file starts read-ahead that zero-fills pages (`ext4_mpage_readpages` → `memset` in
//!   `perf`), which is pathological with small windows.
//!
//! So [`CopyMethod::Auto`] is `pread`/`pwrite` (from memory: `pwrite`), in pieces of
//! [`BOUNCE_SIZE`] bytes.
//!
//! # Layout
//!
//! This file holds the public types and entry points; `plan` cuts extents into chunks and
//! checks a request, `scheduler` runs the workers and hands them chunks, `methods` moves one
//! chunk's bytes by each [`CopyMethod`].
//!
//! # Many small files
//!
//! The free functions start a scoped pool per call. A conversion that copies in batches
//! (thousands of tensor files, bounded by the open-file limit) keeps one [`Workers`] for all
//! its calls instead: 18,000 files had made 142 threads, one pool per batch of 256. Small new
//! files are not preallocated ([`size_new_file`]), and no `statx` is made per new file, so
//! an import costs per file what a plain writer pays: `openat`, `pwrite`, `close`, and a
//! share of one `pread` (`strace -c -f`). What remains is ext4's own cost of creating files:
//! `perf` puts most of an 18,000-file import in inode allocation (`find_inode_bit`,
//! `recently_deleted`, `find_get_block_common`) and the directory lock.
//!
//! The other way, many small sources into one file (an export of 100,000 tensors of 10 KB),
//! one `pwrite` per tensor had the two workers spinning on the file's inode lock for a quarter
//! of the time and zero-filling the partial pages each write began and ended in for a tenth
//! (`perf`). Extents that continue each other in a destination are therefore gathered: a
//! chunk reads its parts into the worker's buffer and writes it [`BOUNCE_SIZE`] bytes at a
//! time (100,000 `pwrite`s became 2,000; the export's system time fell by about 40 %).
//! Likewise an import reads small tensors that lie end to end in its source together, up to
//! [`BOUNCE_SIZE`] bytes, and writes each to its own file (100,000 `pread`s became 2,400).

mod methods;
mod plan;
mod scheduler;

use std::fmt;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

pub use crate::fsutil::preallocate;
pub use methods::BOUNCE_SIZE;
use plan::{regular_len, Dsts, Sources};
pub use scheduler::Workers;
use scheduler::{run, run_files};

/// Default chunk size in bytes: 8 MiB.
///
/// A chunk is the unit workers take from the queue (and progress is reported in). Each worker
/// holds at most one chunk's mapped window in flight with the mapped methods, and one buffer of
/// [`BOUNCE_SIZE`] with `pread`/`pwrite`, so the engine's own footprint is at most
/// `threads × 8 MiB` (16 MiB with the default 2 threads), far below 64 MiB, and 1 MiB with the
/// default method. Measured (module docs): `pread`/`pwrite` runs as fast with 8 MiB chunks as
/// with 512 KiB; the mapped methods are much slower with small chunks.
pub const DEFAULT_CHUNK_SIZE: usize = 8 << 20;

/// The `extent` of a [`CopyError`] that is not about one extent (for example a `chunk_size` of 0).
pub const NO_EXTENT: usize = usize::MAX;

/// How bytes travel from source to destination.
///
/// Every method is safe against a source truncated during the copy: it yields a
/// [`Side::Read`] error, never a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CopyMethod {
    /// The fastest method measured (see the module docs): [`CopyMethod::ReadWrite`].
    #[default]
    Auto,
    /// A window of the destination (at most one chunk) is mapped, and the source is `pread`
    /// straight into it by the kernel: one copy, no bounce buffer, and no user-space access to
    /// the source. From memory, the bytes are copied into the window. The window is unmapped
    /// after each chunk. Where a destination is shorter than an extent's end, that chunk is
    /// written with [`CopyMethod::ReadWrite`] instead, as is every chunk of a destination that
    /// cannot be mapped (for example one opened write-only). Slow on ext4 (see the module docs).
    ///
    /// Caution: from memory, bytes are stored through the mapping by user space. On a
    /// filesystem where [`preallocate`] could not reserve the blocks (no `fallocate`), a disk
    /// that fills up during the copy then raises SIGBUS instead of returning an error. Every
    /// other method, and this one between files, reports a full disk as an error.
    Mmap,
    /// `pread` into a page-aligned buffer per worker, then `pwrite`, [`BOUNCE_SIZE`] bytes at
    /// a time (from memory: `pwrite` straight from the slice, in pieces of the same size).
    ReadWrite,
    /// Linux `copy_file_range`, which may share blocks (reflink) or copy inside the kernel.
    /// Falls back to [`CopyMethod::ReadWrite`] on `EXDEV`, `ENOSYS`, `EOPNOTSUPP` and `EINVAL`,
    /// for the rest of the call, and on non-Linux platforms. From memory it is `ReadWrite`.
    CopyFileRange,
    /// A window of the source (at most one chunk) is mapped read-only and handed to `pwrite`,
    /// so the kernel copies from it; a truncated source makes `pwrite` fail with `EFAULT`
    /// (never `SIGBUS`, as user space never touches the window). Unix only; elsewhere, and from
    /// memory, it is `ReadWrite`.
    MmapSource,
}

/// Tuning knobs for [`copy_extents`] and [`copy_from_memory`].
#[derive(Clone, Debug)]
pub struct CopyOptions {
    /// Largest chunk a worker copies at once, in bytes; must not be 0. When it is at least a
    /// page, chunks are cut on page boundaries of the destination.
    pub chunk_size: usize,
    /// Worker threads; 0 means [`default_threads`].
    pub threads: usize,
    /// How the bytes travel.
    pub method: CopyMethod,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            threads: 0,
            method: CopyMethod::Auto,
        }
    }
}

/// One contiguous run of bytes: `len` bytes from `srcs[src]` at `src_offset` to `dsts[dst]` at
/// `dst_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Index into the sources.
    pub src: usize,
    /// Byte offset in the source.
    pub src_offset: u64,
    /// Index into the destinations.
    pub dst: usize,
    /// Byte offset in the destination.
    pub dst_offset: u64,
    /// Number of bytes; 0 does nothing.
    pub len: u64,
}

/// Which side of an extent failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Reading the source failed, or the source was shorter than the extent.
    Read,
    /// Writing the destination failed (or the request itself was invalid).
    Write,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Read => "reading the source",
            Side::Write => "writing the destination",
        })
    }
}

/// A failed copy: which extent (index into the slice given, or [`NO_EXTENT`]), which side, and
/// why.
///
/// Invalid requests (an index out of range, an offset overflow, a `chunk_size` of 0) are
/// [`io::ErrorKind::InvalidInput`]; a source shorter than an extent is [`Side::Read`] with
/// [`io::ErrorKind::UnexpectedEof`].
#[derive(Debug)]
pub struct CopyError {
    /// Index of the failing extent in the slice given, or [`NO_EXTENT`].
    pub extent: usize,
    /// Which side failed.
    pub side: Side,
    /// The underlying error.
    pub source: Cause,
}

/// Why a copy failed: an OS error, or the error a destination's creation returned, as it
/// returned it.
#[derive(Debug)]
pub enum Cause {
    /// An I/O error: reading, writing, an invalid request, or creating a destination of
    /// [`NewFiles::new`].
    Io(io::Error),
    /// The npkio error with which creating a destination failed, unchanged (its path, array
    /// and message stay the creator's): the conversions create their data files this way.
    Create(crate::Error),
}

impl Cause {
    /// The kind of the OS error (for [`Cause::Create`], of the OS error inside it; `Other`
    /// when there is none).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Cause::Io(e) => e.kind(),
            Cause::Create(e) => e.io_kind(),
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Io(e) => e.fmt(f),
            Cause::Create(e) => e.fmt(f),
        }
    }
}

impl fmt::Display for CopyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.extent == NO_EXTENT {
            write!(f, "copy failed {}: {}", self.side, self.source)
        } else {
            write!(
                f,
                "copy of extent {} failed {}: {}",
                self.extent, self.side, self.source
            )
        }
    }
}

impl std::error::Error for CopyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(match &self.source {
            Cause::Io(e) => e,
            Cause::Create(e) => e,
        })
    }
}

impl CopyError {
    fn invalid(extent: usize, side: Side, msg: String) -> Self {
        CopyError {
            extent,
            side,
            source: Cause::Io(io::Error::new(io::ErrorKind::InvalidInput, msg)),
        }
    }
}

/// The thread count that `threads: 0` resolves to: `min(available_parallelism, 2)`.
///
/// Measured on 2 cores (module docs): a second worker makes `pread`/`pwrite` about 1.4x faster
/// and is neutral for `copy_file_range`; 4 threads on 2 cores are never better. Measurements on
/// a 16-core machine also got worse past a few threads (memory bandwidth, page-cache locking).
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 2)
}

/// Copy every extent from files to files.
///
/// Destinations are already preallocated by the caller to at least the extents' ends (see
/// [`preallocate`]). Extents are cut into chunks of at most `chunk_size`, aligned to page
/// boundaries in the destination (the first chunk of an extent ends at a page boundary, the
/// following ones are whole pages), and copied by `threads` workers on a rayon pool, in
/// order of the extents except that a worker skips ahead (a bounded distance) to a
/// destination no other worker is writing. Extents must not overlap in a destination, nor a
/// destination range overlap a source range of the same file.
///
/// A source shorter than `src_offset + len`, at the start or because it shrinks during the
/// copy, is an error (`Side::Read`, `io::ErrorKind::UnexpectedEof`), never a hang or a signal.
/// On error the first failing chunk (in copy order) is reported; chunks in flight on other
/// workers finish, no new ones start, and the destinations are left partly written.
///
/// `progress`, if given, is called with the number of bytes of each chunk just completed, from
/// any worker thread.
pub fn copy_extents(
    srcs: &[&File],
    dsts: &[&File],
    extents: &[Extent],
    opts: &CopyOptions,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<(), CopyError> {
    run_files(None, srcs, &Dsts::Open(dsts), extents, opts, progress)
}

/// Copy every extent from memory to files: `Extent.src` indexes `srcs` and `src_offset` is an
/// offset into that slice.
///
/// Everything else is as in [`copy_extents`]; an extent beyond the end of its slice is
/// `Side::Read` with `io::ErrorKind::UnexpectedEof`.
pub fn copy_from_memory(
    srcs: &[&[u8]],
    dsts: &[&File],
    extents: &[Extent],
    opts: &CopyOptions,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<(), CopyError> {
    run(
        None,
        &Sources::Memory(srcs),
        &Dsts::Open(dsts),
        extents,
        opts,
        progress,
    )
}

/// Files shorter than this are not preallocated by [`size_new_file`].
pub const PREALLOCATE_MIN: u64 = 1 << 20;

/// Sizes a file just created (empty) for a copy that writes all of its `len` bytes: a file of
/// at least [`PREALLOCATE_MIN`] bytes is preallocated (its blocks reserved, so that a full
/// disk fails here, before bytes move, and it is laid out in one piece), with one `fallocate`
/// and no `statx` (which a file just created does not need: `fallocate` leaves it exactly
/// `len` long). A smaller file is left empty, for the copy's writes to extend: a tensor file
/// of a mixture-of-experts checkpoint is typically 10-60 KB, and one `fallocate` for each of
/// 18,000 of them bought nothing measurable (`docs/benchmarks.md`); a full disk is then
/// reported by the write. The mapped method writes such files with `pwrite`.
pub fn size_new_file(file: &File, len: u64) -> io::Result<()> {
    if len < PREALLOCATE_MIN {
        return Ok(());
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::unix::io::AsRawFd;
        let off_len = libc::off_t::try_from(len).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "length does not fit in off_t")
        })?;
        loop {
            // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by
            // `file`, which outlives the call.
            let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, off_len) };
            if rc == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                // Not supported here: set the length instead, as `preallocate` does.
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => break,
                _ => return Err(err),
            }
        }
    }
    preallocate(file, len)
}

/// Destination files that the workers create themselves, each just before its first chunk.
///
/// Creating a file is serialized by the kernel on its directory; when hundreds of files are
/// created by the workers rather than up front, one worker creates while the other copies. A
/// file with no bytes to copy is never created here: [`NewFiles::into_files`] says which were.
pub struct NewFiles<'a> {
    create: Box<dyn Fn(usize) -> Result<File, Cause> + Sync + 'a>,
    /// Per destination, once tried: the file, or `None` when creating it failed (its error
    /// went to the worker that tried).
    slots: Vec<OnceLock<Option<Created>>>,
}

struct Created {
    file: File,
    /// Its length just after creation (None: not a regular file), asked only by the mapped
    /// method: a `statx` per file is a cost of its own with thousands of small files.
    len: OnceLock<Option<u64>>,
}

impl Created {
    fn len(&self) -> Option<u64> {
        *self.len.get_or_init(|| regular_len(&self.file))
    }
}

impl<'a> NewFiles<'a> {
    /// `count` destinations; destination `i` is `create(i)`, called at most once, from
    /// whichever worker first needs it. `create` may size the file (see [`size_new_file`]);
    /// the copy's writes extend it otherwise.
    /// Its error is the [`Cause::Io`] of the copy's error.
    pub fn new(count: usize, create: impl Fn(usize) -> io::Result<File> + Sync + 'a) -> Self {
        Self::with_cause(count, move |i| create(i).map_err(Cause::Io))
    }

    /// [`NewFiles::new`] for a `create` that fails with an npkio error (naming the output and
    /// array as the caller wants them named): the copy's error carries it unchanged, as
    /// [`Cause::Create`].
    pub(crate) fn with_npkio_errors(
        count: usize,
        create: impl Fn(usize) -> crate::Result<File> + Sync + 'a,
    ) -> Self {
        Self::with_cause(count, move |i| create(i).map_err(Cause::Create))
    }

    fn with_cause(count: usize, create: impl Fn(usize) -> Result<File, Cause> + Sync + 'a) -> Self {
        NewFiles {
            create: Box::new(create),
            slots: (0..count).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Number of destinations.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no destinations.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Destination `i`, created on the first call. When creating it fails, the caller that
    /// tried gets `Err(Some(error))` and every later caller `Err(None)`.
    fn get(&self, i: usize) -> Result<&Created, Option<Cause>> {
        let mut failed = None;
        let slot = self.slots[i].get_or_init(|| match (self.create)(i) {
            Ok(file) => Some(Created {
                file,
                len: OnceLock::new(),
            }),
            Err(e) => {
                failed = Some(e);
                None
            }
        });
        slot.as_ref().ok_or(failed)
    }

    /// The files created, in destination order (`None` where none was: no bytes went there,
    /// the copy stopped first, or creating it failed).
    pub fn into_files(self) -> Vec<Option<File>> {
        self.slots
            .into_iter()
            .map(|s| s.into_inner().flatten().map(|c| c.file))
            .collect()
    }
}

/// Source files that the workers open themselves: each when a worker first needs it, and
/// closed once its last chunk is copied, so that a copy from thousands of small files opens
/// them in parallel with the copying, a few at a time.
///
/// At most `limit` of them are kept open between chunks; past that, a source is opened for
/// one chunk and closed after it, so the descriptors open at once stay within `limit` plus
/// one per worker, whatever order the extents use the sources in. The counts of chunks that
/// tell when a source is done are taken at the start of each copy: use a `SourceFiles` for
/// one copy.
pub struct SourceFiles<'a> {
    open: Box<dyn Fn(usize) -> Result<File, Cause> + Sync + 'a>,
    slots: Vec<Mutex<SourceSlot>>,
    /// Per source: reads of it by chunks (see `Plan::reads_per_source`) not yet done.
    left: Vec<AtomicU64>,
    limit: usize,
    /// Sources kept open now.
    kept: AtomicUsize,
}

/// A source of [`SourceFiles`].
enum SourceSlot {
    Closed,
    Open(Arc<File>),
    /// Opening it failed; the error went to the worker that tried.
    Failed,
}

impl<'a> SourceFiles<'a> {
    /// `count` sources, at most `limit` (at least 1) kept open at once; source `i` is
    /// `open(i)`, called from whichever worker needs it. Its error is the [`Cause::Io`] of
    /// the copy's error ([`Side::Read`]).
    pub fn new(
        count: usize,
        limit: usize,
        open: impl Fn(usize) -> io::Result<File> + Sync + 'a,
    ) -> Self {
        Self::with_cause(count, limit, move |i| open(i).map_err(Cause::Io))
    }

    /// [`SourceFiles::new`] for an `open` that fails with an npkio error (naming the file
    /// and array as the caller wants them named): the copy's error carries it unchanged, as
    /// [`Cause::Create`].
    pub(crate) fn with_npkio_errors(
        count: usize,
        limit: usize,
        open: impl Fn(usize) -> crate::Result<File> + Sync + 'a,
    ) -> Self {
        Self::with_cause(count, limit, move |i| open(i).map_err(Cause::Create))
    }

    fn with_cause(
        count: usize,
        limit: usize,
        open: impl Fn(usize) -> Result<File, Cause> + Sync + 'a,
    ) -> Self {
        SourceFiles {
            open: Box::new(open),
            slots: (0..count).map(|_| Mutex::new(SourceSlot::Closed)).collect(),
            left: (0..count).map(|_| AtomicU64::new(0)).collect(),
            limit: limit.max(1),
            kept: AtomicUsize::new(0),
        }
    }

    /// Number of sources.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no sources.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Counts the reads of each source by the chunks of `plan`, before the workers start.
    fn count_reads(&self, plan: &plan::Plan<'_>) {
        let mut count = vec![0u64; self.left.len()];
        plan.reads_per_source(&mut count);
        for (n, c) in self.left.iter().zip(count) {
            n.store(c, Ordering::Relaxed);
        }
    }

    /// Source `i` for one read by a chunk, opened if it is not open. When opening fails, the worker
    /// that tried gets `Err(Some(error))` and every later one `Err(None)`.
    fn acquire(&self, i: usize) -> Result<Arc<File>, Option<Cause>> {
        let mut slot = match self.slots[i].lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        match &*slot {
            SourceSlot::Open(f) => return Ok(Arc::clone(f)),
            SourceSlot::Failed => return Err(None),
            SourceSlot::Closed => {}
        }
        let file = match (self.open)(i) {
            Ok(f) => Arc::new(f),
            Err(e) => {
                *slot = SourceSlot::Failed;
                return Err(Some(e));
            }
        };
        // Kept for its next chunks if it has more and the limit allows; else closed when
        // this chunk is done.
        let more = self.left[i].load(Ordering::Relaxed) > 1;
        if more && self.kept.fetch_add(1, Ordering::Relaxed) < self.limit {
            *slot = SourceSlot::Open(Arc::clone(&file));
        } else if more {
            self.kept.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(file)
    }

    /// After a copy that succeeded, every read was counted and released: no source is left
    /// open (checked in debug builds).
    fn debug_assert_all_closed(&self) {
        debug_assert!(self.left.iter().all(|n| n.load(Ordering::Relaxed) == 0));
        debug_assert_eq!(self.kept.load(Ordering::Relaxed), 0);
    }

    /// One read of source `i` is done: after its last, the source is closed.
    fn release(&self, i: usize) {
        if self.left[i].fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let mut slot = match self.slots[i].lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if matches!(*slot, SourceSlot::Open(_)) {
            *slot = SourceSlot::Closed;
            self.kept.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// [`copy_extents`] from files opened on first use (see [`SourceFiles`]). A failure to open
/// a source is a [`Side::Read`] error of the extent that needed it, whose cause is the error
/// opening it returned. A source shorter than an extent is found by the read, not before
/// the copy starts.
pub fn copy_extents_from(
    srcs: &SourceFiles<'_>,
    dsts: &[&File],
    extents: &[Extent],
    opts: &CopyOptions,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<(), CopyError> {
    run(
        None,
        &Sources::OnUse(srcs),
        &Dsts::Open(dsts),
        extents,
        opts,
        progress,
    )
}

/// [`copy_extents`] into files created on first use (see [`NewFiles`]). A failure to create
/// a destination is a [`Side::Write`] error of the extent that needed it, whose cause is the
/// error creating it returned.
pub fn copy_extents_into(
    srcs: &[&File],
    dsts: &NewFiles<'_>,
    extents: &[Extent],
    opts: &CopyOptions,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<(), CopyError> {
    run_files(None, srcs, &Dsts::New(dsts), extents, opts, progress)
}

/// [`copy_from_memory`] into files created on first use (see [`NewFiles`]).
pub fn copy_from_memory_into(
    srcs: &[&[u8]],
    dsts: &NewFiles<'_>,
    extents: &[Extent],
    opts: &CopyOptions,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<(), CopyError> {
    run(
        None,
        &Sources::Memory(srcs),
        &Dsts::New(dsts),
        extents,
        opts,
        progress,
    )
}

/// The copies of this module on threads kept from call to call (see [`Workers`]):
/// `opts.threads` is ignored, the workers' own count applies.
impl Workers {
    /// [`copy_extents`] on these workers.
    pub fn copy_extents(
        &self,
        srcs: &[&File],
        dsts: &[&File],
        extents: &[Extent],
        opts: &CopyOptions,
        progress: Option<&(dyn Fn(u64) + Sync)>,
    ) -> Result<(), CopyError> {
        run_files(Some(self), srcs, &Dsts::Open(dsts), extents, opts, progress)
    }

    /// [`copy_extents_from`] on these workers.
    pub fn copy_extents_from(
        &self,
        srcs: &SourceFiles<'_>,
        dsts: &[&File],
        extents: &[Extent],
        opts: &CopyOptions,
        progress: Option<&(dyn Fn(u64) + Sync)>,
    ) -> Result<(), CopyError> {
        run(
            Some(self),
            &Sources::OnUse(srcs),
            &Dsts::Open(dsts),
            extents,
            opts,
            progress,
        )
    }

    /// [`copy_from_memory`] on these workers.
    pub fn copy_from_memory(
        &self,
        srcs: &[&[u8]],
        dsts: &[&File],
        extents: &[Extent],
        opts: &CopyOptions,
        progress: Option<&(dyn Fn(u64) + Sync)>,
    ) -> Result<(), CopyError> {
        let sources = Sources::Memory(srcs);
        run(
            Some(self),
            &sources,
            &Dsts::Open(dsts),
            extents,
            opts,
            progress,
        )
    }

    /// [`copy_extents_into`] on these workers.
    pub fn copy_extents_into(
        &self,
        srcs: &[&File],
        dsts: &NewFiles<'_>,
        extents: &[Extent],
        opts: &CopyOptions,
        progress: Option<&(dyn Fn(u64) + Sync)>,
    ) -> Result<(), CopyError> {
        run_files(Some(self), srcs, &Dsts::New(dsts), extents, opts, progress)
    }

    /// [`copy_from_memory_into`] on these workers.
    pub fn copy_from_memory_into(
        &self,
        srcs: &[&[u8]],
        dsts: &NewFiles<'_>,
        extents: &[Extent],
        opts: &CopyOptions,
        progress: Option<&(dyn Fn(u64) + Sync)>,
    ) -> Result<(), CopyError> {
        let sources = Sources::Memory(srcs);
        run(
            Some(self),
            &sources,
            &Dsts::New(dsts),
            extents,
            opts,
            progress,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Sources opened by the workers: every byte lands where it should, whatever order the
    /// extents use the sources in and however few may stay open; a source used by one run of
    /// extents is opened once; one that cannot be opened fails the copy with its own error.
    #[test]
    fn sources_opened_on_use_copy_every_byte_and_report_their_own_errors() {
        use std::os::unix::fs::FileExt;
        use std::sync::atomic::AtomicUsize;
        let n = 40usize;
        let len = 9_000u64;
        let srcs: Vec<File> = (0..n)
            .map(|i| {
                let mut f = tempfile::tempfile().unwrap();
                f.write_all(&vec![i as u8 + 1; 2 * len as usize]).unwrap();
                f
            })
            .collect();
        // In order (each source's two extents together), then interleaved.
        let in_order: Vec<usize> = (0..2 * n).map(|k| k / 2).collect();
        let interleaved: Vec<usize> = (0..2 * n).map(|k| k % n).collect();
        for (order, once) in [(&in_order, true), (&interleaved, false)] {
            let mut seen = vec![0u64; n];
            let extents: Vec<Extent> = order
                .iter()
                .enumerate()
                .map(|(k, &src)| {
                    let e = Extent {
                        src,
                        src_offset: seen[src] * len,
                        dst: 0,
                        dst_offset: k as u64 * len,
                        len,
                    };
                    seen[src] += 1;
                    e
                })
                .collect();
            for (threads, limit) in [(1, 1), (2, 1), (2, 8), (4, 64)] {
                let opens = AtomicUsize::new(0);
                let files = SourceFiles::new(n, limit, |i| {
                    opens.fetch_add(1, Ordering::Relaxed);
                    srcs[i].try_clone()
                });
                let dst = tempfile::tempfile().unwrap();
                preallocate(&dst, 2 * n as u64 * len).unwrap();
                let opts = CopyOptions {
                    chunk_size: 4096,
                    threads,
                    method: CopyMethod::Auto,
                };
                copy_extents_from(&files, &[&dst], &extents, &opts, None).unwrap();
                for (k, &src) in order.iter().enumerate() {
                    let mut got = vec![0u8; len as usize];
                    dst.read_exact_at(&mut got, k as u64 * len).unwrap();
                    assert!(got.iter().all(|&b| b == src as u8 + 1), "extent {k}");
                }
                let opened = opens.load(Ordering::Relaxed);
                assert!(opened >= n);
                if once && limit >= threads {
                    assert_eq!(opened, n, "t{threads} limit {limit}");
                }
            }
        }
        // Source 7 cannot be opened: its extent fails with its error.
        let extents: Vec<Extent> = (0..n)
            .map(|i| Extent {
                src: i,
                src_offset: 0,
                dst: 0,
                dst_offset: i as u64 * len,
                len,
            })
            .collect();
        for threads in [1, 2, 4] {
            let files = SourceFiles::with_npkio_errors(n, 4, |i| {
                if i == 7 {
                    let gone = io::Error::from(io::ErrorKind::NotFound);
                    return Err(crate::Error::io("/in/data_b.npkd", "opening", gone).array("b"));
                }
                Ok(srcs[i].try_clone().unwrap())
            });
            let dst = tempfile::tempfile().unwrap();
            preallocate(&dst, n as u64 * len).unwrap();
            let opts = CopyOptions {
                chunk_size: 4096,
                threads,
                method: CopyMethod::Auto,
            };
            let err = copy_extents_from(&files, &[&dst], &extents, &opts, None).unwrap_err();
            assert_eq!((err.extent, err.side), (7, Side::Read));
            let Cause::Create(e) = err.source else {
                panic!("t{threads}: not the opener's error: {err}");
            };
            assert_eq!(e.array_name(), Some("b"));
            assert_eq!(e.path(), Some(std::path::Path::new("/in/data_b.npkd")));
        }
    }

    /// Whichever worker tries to create a destination, and whichever chunk of it reports the
    /// failure, the caller gets the creation's own npkio error, path and array included.
    #[test]
    fn a_destination_that_cannot_be_created_fails_with_its_own_npkio_error() {
        let len = 40_000u64;
        let mut src = tempfile::tempfile().unwrap();
        src.write_all(&vec![7u8; 3 * len as usize]).unwrap();
        let extents: Vec<Extent> = (0..3)
            .map(|i| Extent {
                src: 0,
                src_offset: i as u64 * len,
                dst: i,
                dst_offset: 0,
                len,
            })
            .collect();
        for method in [CopyMethod::ReadWrite, CopyMethod::Mmap] {
            for threads in [1, 2, 4] {
                for _ in 0..20 {
                    let new_files = NewFiles::with_npkio_errors(3, |i| {
                        if i == 1 {
                            let refused = io::Error::from(io::ErrorKind::PermissionDenied);
                            return Err(
                                crate::Error::io("/out/b.npy", "creating", refused).array("b")
                            );
                        }
                        let f = tempfile::tempfile().unwrap();
                        preallocate(&f, len).unwrap();
                        Ok(f)
                    });
                    let opts = CopyOptions {
                        chunk_size: 4096,
                        threads,
                        method,
                    };
                    let err = copy_extents_into(&[&src], &new_files, &extents, &opts, None)
                        .expect_err("destination 1 cannot be created");
                    assert_eq!((err.extent, err.side), (1, Side::Write));
                    assert_eq!(err.source.kind(), io::ErrorKind::PermissionDenied);
                    let Cause::Create(e) = err.source else {
                        panic!("{method:?} t{threads}: not the creation's error: {err}");
                    };
                    assert_eq!(e.path(), Some(std::path::Path::new("/out/b.npy")));
                    assert_eq!(e.array_name(), Some("b"));
                    assert!(new_files.into_files()[1].is_none());
                }
            }
        }
    }
}
