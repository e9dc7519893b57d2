//! The copy engine: the one place in npkio that moves bytes, file to file or memory to file.
//!
//! A copy is described as a list of [`Extent`]s (`len` bytes from a source at an offset to a
//! destination at an offset). [`copy_extents`] and [`copy_from_memory`] cut every extent into
//! chunks of at most [`CopyOptions::chunk_size`] bytes whose boundaries fall on page boundaries
//! of the destination, and hand the chunks to a small pool of worker threads: in order, except
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

use std::fmt;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

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
/// the OS error.
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
    pub source: io::Error,
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
        Some(&self.source)
    }
}

impl CopyError {
    fn invalid(extent: usize, side: Side, msg: String) -> Self {
        CopyError {
            extent,
            side,
            source: io::Error::new(io::ErrorKind::InvalidInput, msg),
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

/// Size `file` to `len` bytes, reserving the blocks where the filesystem can.
///
/// On Linux this is `fallocate` (which never shrinks), falling back to `set_len` where the
/// filesystem does not support it; the file is then set to exactly `len` bytes. Elsewhere it is
/// `set_len`.
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::unix::io::AsRawFd;
        if len > 0 {
            let off_len = libc::off_t::try_from(len).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "length does not fit in off_t")
            })?;
            loop {
                // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by
                // `file`, which outlives the call.
                let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, off_len) };
                if rc == 0 {
                    break;
                }
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => break,
                    _ => return Err(err),
                }
            }
        }
    }
    // fallocate grows but never shrinks; set_len makes the length exactly `len` (a no-op when
    // fallocate already did it).
    if file.metadata()?.len() != len {
        file.set_len(len)?;
    }
    Ok(())
}

/// Copy every extent from files to files.
///
/// Destinations are already preallocated by the caller to at least the extents' ends (see
/// [`preallocate`]). Extents are cut into chunks of at most `chunk_size`, aligned to page
/// boundaries in the destination (the first chunk of an extent ends at a page boundary, the
/// following ones are whole pages), and copied by `threads` workers on a rayon pool, in
/// order of the extents except that a worker skips ahead (a bounded distance) to a
/// destination no other worker is writing. Extents must not overlap in a destination, nor a destination range
/// overlap a source range of the same file.
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
    run_files(srcs, &Dsts::Open(dsts), extents, opts, progress)
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
        &Sources::Memory(srcs),
        &Dsts::Open(dsts),
        extents,
        opts,
        progress,
    )
}

/// Destination files that the workers create themselves, each just before its first chunk.
///
/// Creating a file is serialized by the kernel on its directory; when hundreds of files are
/// created by the workers rather than up front, one worker creates while the other copies. A
/// file with no bytes to copy is never created here: [`NewFiles::into_files`] says which were.
pub struct NewFiles<'a> {
    create: Box<dyn Fn(usize) -> io::Result<File> + Sync + 'a>,
    slots: Vec<OnceLock<Result<Created, (io::ErrorKind, String)>>>,
}

struct Created {
    file: File,
    /// Its length just after creation (None: not a regular file).
    len: Option<u64>,
}

impl<'a> NewFiles<'a> {
    /// `count` destinations; destination `i` is `create(i)`, called at most once, from
    /// whichever worker first needs it. `create` should size the file (see [`preallocate`]).
    pub fn new(count: usize, create: impl Fn(usize) -> io::Result<File> + Sync + 'a) -> Self {
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

    fn get(&self, i: usize) -> io::Result<&Created> {
        let slot = self.slots[i].get_or_init(|| {
            (self.create)(i)
                .map(|file| {
                    let len = regular_len(&file);
                    Created { file, len }
                })
                .map_err(|e| (e.kind(), e.to_string()))
        });
        slot.as_ref()
            .map_err(|(kind, msg)| io::Error::new(*kind, msg.clone()))
    }

    /// The files created, in destination order (`None` where none was: no bytes went there,
    /// the copy stopped first, or creating it failed).
    pub fn into_files(self) -> Vec<Option<File>> {
        self.slots
            .into_iter()
            .map(|s| s.into_inner().and_then(Result::ok).map(|c| c.file))
            .collect()
    }
}

/// [`copy_extents`] into files created on first use (see [`NewFiles`]). A failure to create
/// a destination is a [`Side::Write`] error of the extent that needed it.
pub fn copy_extents_into(
    srcs: &[&File],
    dsts: &NewFiles<'_>,
    extents: &[Extent],
    opts: &CopyOptions,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<(), CopyError> {
    run_files(srcs, &Dsts::New(dsts), extents, opts, progress)
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
        &Sources::Memory(srcs),
        &Dsts::New(dsts),
        extents,
        opts,
        progress,
    )
}

// ---------------------------------------------------------------------------------------------
// Planning: extents -> chunks.

enum Sources<'a> {
    Files {
        files: &'a [&'a File],
        /// Length of each source at the start, `None` if it is not a regular file.
        lens: &'a [Option<u64>],
    },
    Memory(&'a [&'a [u8]]),
}

/// Where chunks go: files opened by the caller, or files created on first use.
enum Dsts<'a> {
    Open(&'a [&'a File]),
    New(&'a NewFiles<'a>),
}

impl Dsts<'_> {
    fn len(&self) -> usize {
        match self {
            Dsts::Open(f) => f.len(),
            Dsts::New(n) => n.len(),
        }
    }

    fn get(&self, i: usize) -> io::Result<&File> {
        match self {
            Dsts::Open(f) => Ok(f[i]),
            Dsts::New(n) => n.get(i).map(|c| &c.file),
        }
    }
}

fn regular_len(f: &File) -> Option<u64> {
    match f.metadata() {
        Ok(m) if m.is_file() => Some(m.len()),
        _ => None,
    }
}

fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        #[cfg(unix)]
        {
            // SAFETY: sysconf only reads its integer argument.
            let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            if p > 0 && (p as u64).is_power_of_two() {
                return p as u64;
            }
        }
        4096
    })
}

/// How extents map to chunks. Chunk numbers are global across extents, in extent order.
struct Plan<'a> {
    extents: &'a [Extent],
    /// `first[i]` is the global number of extent `i`'s first chunk; `first[len]` the total.
    first: Vec<u64>,
    chunk: u64,
    page: u64,
}

/// One chunk of one extent.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    extent: usize,
    src: usize,
    dst: usize,
    src_offset: u64,
    dst_offset: u64,
    len: u64,
}

impl<'a> Plan<'a> {
    fn new(extents: &'a [Extent], chunk: u64) -> Self {
        let page = page_size();
        let mut plan = Plan {
            extents,
            first: Vec::with_capacity(extents.len() + 1),
            chunk,
            page,
        };
        let mut total = 0u64;
        for e in extents {
            plan.first.push(total);
            total = total.saturating_add(plan.count(e));
        }
        plan.first.push(total);
        plan
    }

    fn total(&self) -> u64 {
        self.first.last().copied().unwrap_or(0)
    }

    /// Size of every chunk but the first of an extent.
    fn step(&self) -> u64 {
        if self.chunk >= self.page {
            self.chunk & !(self.page - 1)
        } else {
            self.chunk
        }
    }

    /// Size of the first chunk of `e`: up to the last page boundary within `chunk` bytes.
    fn first_len(&self, e: &Extent) -> u64 {
        let n = if self.chunk >= self.page {
            let end = e.dst_offset.saturating_add(self.chunk) & !(self.page - 1);
            end - e.dst_offset
        } else {
            self.chunk
        };
        n.min(e.len)
    }

    fn count(&self, e: &Extent) -> u64 {
        if e.len == 0 {
            return 0;
        }
        let first = self.first_len(e);
        1 + (e.len - first).div_ceil(self.step())
    }

    /// Chunks of extent `i`.
    fn chunks_of(&self, i: usize) -> u64 {
        self.first[i + 1] - self.first[i]
    }

    /// Chunk `j` of extent `i`.
    fn chunk(&self, i: usize, j: u64) -> Chunk {
        let e = &self.extents[i];
        let first = self.first_len(e);
        let (start, len) = if j == 0 {
            (0, first)
        } else {
            let start = first + (j - 1) * self.step();
            (start, self.step().min(e.len - start))
        };
        Chunk {
            extent: i,
            src: e.src,
            dst: e.dst,
            src_offset: e.src_offset + start,
            dst_offset: e.dst_offset + start,
            len,
        }
    }
}

fn validate(
    sources: &Sources<'_>,
    dsts: &Dsts<'_>,
    extents: &[Extent],
    opts: &CopyOptions,
) -> Result<(), CopyError> {
    if opts.chunk_size == 0 {
        return Err(CopyError::invalid(
            NO_EXTENT,
            Side::Write,
            "chunk_size must not be 0".into(),
        ));
    }
    let n_src = match sources {
        Sources::Files { files, .. } => files.len(),
        Sources::Memory(m) => m.len(),
    };
    for (i, e) in extents.iter().enumerate() {
        if e.len == 0 {
            continue;
        }
        if e.src >= n_src {
            return Err(CopyError::invalid(
                i,
                Side::Read,
                format!("source index {} out of range ({} sources)", e.src, n_src),
            ));
        }
        if e.dst >= dsts.len() {
            return Err(CopyError::invalid(
                i,
                Side::Write,
                format!(
                    "destination index {} out of range ({} destinations)",
                    e.dst,
                    dsts.len()
                ),
            ));
        }
        let src_end = e.src_offset.checked_add(e.len);
        let dst_end = e.dst_offset.checked_add(e.len);
        if !matches!(src_end, Some(end) if end <= i64::MAX as u64) {
            return Err(CopyError::invalid(
                i,
                Side::Read,
                "source offset + length overflows".into(),
            ));
        }
        if !matches!(dst_end, Some(end) if end <= i64::MAX as u64) {
            return Err(CopyError::invalid(
                i,
                Side::Write,
                "destination offset + length overflows".into(),
            ));
        }
        let avail = match sources {
            Sources::Files { lens, .. } => lens[e.src],
            Sources::Memory(m) => Some(m[e.src].len() as u64),
        };
        if let (Some(avail), Some(end)) = (avail, src_end) {
            if end > avail {
                return Err(CopyError {
                    extent: i,
                    side: Side::Read,
                    source: short_source(end, avail),
                });
            }
        }
    }
    Ok(())
}

fn short_source(end: u64, avail: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("source ends at byte {avail}, before the extent's end at byte {end}"),
    )
}

// ---------------------------------------------------------------------------------------------
// Running: workers pull chunks from a shared scheduler.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strategy {
    ReadWrite,
    CopyFileRange,
    MapDst,
    MapSrc,
}

fn strategy(method: CopyMethod, from_memory: bool) -> Strategy {
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

/// Hands out chunks to workers: in copy order, except that a worker prefers a destination no
/// other worker is writing, so that workers do not queue on one file's lock (Linux serializes
/// buffered writes to one inode). With one destination (or one worker) the order is strict.
struct Scheduler {
    state: Mutex<SchedState>,
}

struct SchedState {
    /// Per extent: its next chunk to hand out.
    next: Vec<u64>,
    /// First extent that may still have chunks to hand out.
    lo: usize,
    /// Per destination: workers copying into it right now.
    busy: Vec<u32>,
}

/// How far past the first unfinished extent a worker looks for an idle destination.
const LOOKAHEAD: usize = 64;

impl Scheduler {
    fn new(plan: &Plan<'_>, n_dsts: usize) -> Self {
        Scheduler {
            state: Mutex::new(SchedState {
                next: vec![0; plan.extents.len()],
                lo: 0,
                busy: vec![0; n_dsts],
            }),
        }
    }

    /// The next chunk for a worker that has just finished a chunk into `done` (if any), as
    /// (global chunk number, chunk); `None` when every chunk has been handed out.
    fn next(&self, plan: &Plan<'_>, done: Option<usize>) -> Option<(u64, Chunk)> {
        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(d) = done {
            st.busy[d] -= 1;
        }
        let n = plan.extents.len();
        while st.lo < n && st.next[st.lo] >= plan.chunks_of(st.lo) {
            st.lo += 1;
        }
        if st.lo == n {
            return None;
        }
        let open = |st: &SchedState, i: usize| st.next[i] < plan.chunks_of(i);
        let idle = (st.lo..n.min(st.lo + LOOKAHEAD))
            .find(|&i| open(&st, i) && st.busy[plan.extents[i].dst] == 0);
        let i = idle.unwrap_or(st.lo);
        let j = st.next[i];
        st.next[i] += 1;
        st.busy[plan.extents[i].dst] += 1;
        Some((plan.first[i] + j, plan.chunk(i, j)))
    }
}

/// State shared by the workers of one call.
struct Shared<'a> {
    sources: &'a Sources<'a>,
    dsts: &'a Dsts<'a>,
    /// Destination lengths at the start, for the caller's open files (None: not a regular
    /// file); mapped windows past the end would not reach the file, so such chunks are written
    /// with pwrite.
    dst_lens: Vec<Option<u64>>,
    plan: Plan<'a>,
    sched: Scheduler,
    strategy: Strategy,
    failed: AtomicBool,
    /// Set once copy_file_range reported it cannot serve these files.
    cfr_unsupported: AtomicBool,
    /// First failure in copy order: (chunk number, error).
    error: Mutex<Option<(u64, CopyError)>>,
    progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

/// [`run`] from source files, whose lengths at the start bound the extents.
fn run_files(
    srcs: &[&File],
    dsts: &Dsts<'_>,
    extents: &[Extent],
    opts: &CopyOptions,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<(), CopyError> {
    let src_lens: Vec<Option<u64>> = srcs.iter().map(|f| regular_len(f)).collect();
    let sources = Sources::Files {
        files: srcs,
        lens: &src_lens,
    };
    run(&sources, dsts, extents, opts, progress)
}

fn run(
    sources: &Sources<'_>,
    dsts: &Dsts<'_>,
    extents: &[Extent],
    opts: &CopyOptions,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<(), CopyError> {
    validate(sources, dsts, extents, opts)?;
    let plan = Plan::new(extents, opts.chunk_size as u64);
    let total = plan.total();
    if total == 0 {
        return Ok(());
    }
    let strategy = strategy(opts.method, matches!(sources, Sources::Memory(_)));
    let dst_lens = match dsts {
        Dsts::Open(files) if strategy == Strategy::MapDst => {
            files.iter().map(|f| regular_len(f)).collect()
        }
        _ => Vec::new(),
    };
    let shared = Shared {
        sources,
        dsts,
        dst_lens,
        sched: Scheduler::new(&plan, dsts.len()),
        plan,
        strategy,
        failed: AtomicBool::new(false),
        cfr_unsupported: AtomicBool::new(false),
        error: Mutex::new(None),
        progress,
    };
    let threads = match opts.threads {
        0 => default_threads(),
        n => n,
    };
    let threads = usize::try_from(total)
        .map_or(threads, |t| threads.min(t))
        .max(1);
    if threads == 1 {
        worker(&shared);
    } else {
        // A scoped pool: its threads are joined before this returns, so no worker outlives
        // the call (a C host may fork, or unload the library, right after it).
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("npkio-copy-{i}"))
            .build_scoped(
                |thread| thread.run(),
                |pool| {
                    pool.broadcast(|_| worker(&shared));
                },
            )
            .map_err(|e| CopyError {
                extent: NO_EXTENT,
                side: Side::Write,
                source: io::Error::other(e),
            })?;
    }
    let error = match shared.error.into_inner() {
        Ok(e) => e,
        Err(poisoned) => poisoned.into_inner(),
    };
    match error {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

fn worker(sh: &Shared<'_>) {
    let mut buf = Bounce::default();
    let mut done = None;
    while !sh.failed.load(Ordering::Relaxed) {
        let Some((k, c)) = sh.sched.next(&sh.plan, done.take()) else {
            break;
        };
        done = Some(c.dst);
        match copy_chunk(sh, &c, &mut buf) {
            Ok(()) => {
                if let Some(p) = sh.progress {
                    p(c.len);
                }
            }
            Err((side, source)) => {
                sh.failed.store(true, Ordering::Relaxed);
                let mut slot = match sh.error.lock() {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
                if !matches!(slot.as_ref(), Some((first, _)) if *first <= k) {
                    *slot = Some((
                        k,
                        CopyError {
                            extent: c.extent,
                            side,
                            source,
                        },
                    ));
                }
                break;
            }
        }
    }
}

type ChunkResult = Result<(), (Side, io::Error)>;

fn copy_chunk(sh: &Shared<'_>, c: &Chunk, buf: &mut Bounce) -> ChunkResult {
    let dst = sh.dsts.get(c.dst).map_err(|e| (Side::Write, e))?;
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
            // than the same bytes in BOUNCE_SIZE pieces (module docs).
            for (i, piece) in src.chunks(BOUNCE_SIZE).enumerate() {
                let at = c.dst_offset + (i * BOUNCE_SIZE) as u64;
                write_all_at(dst, piece, at).map_err(|e| (Side::Write, e))?;
            }
            Ok(())
        }
        Sources::Files { files, .. } => {
            let src = files[c.src];
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
    }
}

/// Whether the chunk lies within the destination as it was at the start (so a mapped window
/// reaches the file).
fn fits(sh: &Shared<'_>, c: &Chunk) -> bool {
    let len = match sh.dsts {
        Dsts::Open(_) => sh.dst_lens.get(c.dst).copied().flatten(),
        Dsts::New(n) => n.get(c.dst).ok().and_then(|f| f.len),
    };
    matches!(len, Some(l) if c.dst_offset + c.len <= l)
}

/// Largest piece a worker moves through its buffer with one `pread` and one `pwrite`.
///
/// Small enough that the buffer stays in the core's cache between the two copies (the kernel
/// copies into it, then out of it), large enough that the system calls do not show. Measured
/// on 1 GiB, 2 threads, page-aligned buffer (module docs): 512 KiB 0.21 s both ways, 256 KiB
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
struct Bounce {
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
        #[cfg(unix)]
        if e.raw_os_error() == Some(libc::EFAULT) {
            return (Side::Write, e);
        }
        (Side::Read, e)
    })
    // The caller drops `map` next: munmap, so the window's pages leave our resident set.
}

/// pwrite the chunk to the destination straight from the mapped source window `map`.
#[cfg(unix)]
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

#[cfg(not(unix))]
fn mapsrc(src: &File, dst: &File, _map: &memmap2::MmapRaw, c: &Chunk) -> ChunkResult {
    let mut buf = Bounce::default();
    read_write(
        src,
        dst,
        c.src_offset,
        c.dst_offset,
        c.len as usize,
        &mut buf,
    )
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
fn copy_range(sh: &Shared<'_>, src: &File, dst: &File, c: &Chunk, buf: &mut Bounce) -> ChunkResult {
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
fn copy_range(
    _sh: &Shared<'_>,
    src: &File,
    dst: &File,
    c: &Chunk,
    buf: &mut Bounce,
) -> ChunkResult {
    read_write(src, dst, c.src_offset, c.dst_offset, c.len as usize, buf)
}

// ---------------------------------------------------------------------------------------------
// Positioned I/O.

#[cfg(unix)]
fn read_at(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(f, buf, off)
}

#[cfg(unix)]
fn write_at(f: &File, buf: &[u8], off: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::write_at(f, buf, off)
}

#[cfg(windows)]
fn read_at(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(f, buf, off)
}

#[cfg(windows)]
fn write_at(f: &File, buf: &[u8], off: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_write(f, buf, off)
}

/// Read exactly `buf.len()` bytes at `off`; a source that ends first is `UnexpectedEof`.
fn read_exact_at(f: &File, mut buf: &mut [u8], mut off: u64) -> io::Result<()> {
    let end = off + buf.len() as u64;
    while !buf.is_empty() {
        match read_at(f, buf, off) {
            Ok(0) => return Err(short_source(end, off)),
            Ok(n) => {
                buf = &mut buf[n..];
                off += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
