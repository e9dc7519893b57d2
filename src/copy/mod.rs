//! The copy engine: it moves the conversions' bytes, file to file or memory to file. (The
//! loader, `src/load`, reads into caller memory by its own plan, and `save.rs` writes tensors
//! in memory to one SafeTensors file; neither goes through here.)
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
//! # Measurements
//!
//! The methods were measured with `examples/copy_methods.rs`; the runs and findings are in
//! `docs/benchmarks.md` ("The copy engine"). In short: buffered `pread`/`pwrite` through a
//! page-aligned buffer of [`BOUNCE_SIZE`] is the fastest method and the only one that gains
//! from a second thread; large writes straight from user memory are erratic, so from memory
//! the engine writes in such pieces too; `copy_file_range` is steady but does not scale and
//! gains nothing for npkio's layouts; a mapped destination is slow on ext4. So
//! [`CopyMethod::Auto`] is `pread`/`pwrite` (from memory: `pwrite`), in pieces of
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
//! The free functions start a scoped pool per call; a conversion that copies in batches
//! keeps one [`Workers`] for all its calls instead. Small new files are not preallocated
//! ([`size_new_file`]) and no `statx` is made per new file. Extents that continue each other
//! in a destination are gathered into one buffer and written [`BOUNCE_SIZE`] bytes at a time,
//! and small extents end to end in one source are read with one `pread`. The measurements
//! behind these choices are in `docs/benchmarks.md` ("The copy engine").

mod files;
mod methods;
mod plan;
mod scheduler;

use std::fmt;
use std::fs::File;
use std::io;

pub use crate::sys::fsutil::preallocate;
pub use files::{NewFiles, SourceFiles};
pub use methods::BOUNCE_SIZE;
use plan::{Dsts, Sources};
pub use scheduler::Workers;
use scheduler::{run, run_files};

/// Default chunk size in bytes: 8 MiB.
///
/// A chunk is the unit workers take from the queue (and progress is reported in). Each worker
/// holds at most one chunk's mapped window in flight with the mapped methods, and one buffer of
/// [`BOUNCE_SIZE`] with `pread`/`pwrite`, so the engine's own footprint is at most
/// `threads × 8 MiB` (16 MiB with the default 2 threads), far below 64 MiB, and 1 MiB with the
/// default method. Measured (docs/benchmarks.md): `pread`/`pwrite` runs as fast with 8 MiB
/// chunks as with 512 KiB; the mapped methods are much slower with small chunks.
pub const DEFAULT_CHUNK_SIZE: usize = 8 << 20;

/// The `extent` of a [`CopyError`] that is not about one extent (for example a `chunk_size` of 0).
pub const NO_EXTENT: usize = usize::MAX;

/// How bytes travel from source to destination.
///
/// Every method is safe against a source truncated during the copy: it yields a
/// [`Side::Read`] error, never a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
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
/// Measured on 2 cores (docs/benchmarks.md): a second worker makes `pread`/`pwrite` about
/// 1.4x faster and is neutral for `copy_file_range`; 4 threads on 2 cores are never better.
/// Measurements on a 16-core machine also got worse past a few threads (memory bandwidth,
/// page-cache locking).
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
    if len < PREALLOCATE_MIN || crate::sys::fsutil::fallocate(file, len)? {
        return Ok(());
    }
    // Not supported here: set the length instead, as `preallocate` does.
    preallocate(file, len)
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
        use std::sync::atomic::{AtomicUsize, Ordering};
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
