//! Planning a copy: where chunks come from and go to, how extents are cut into chunks, and
//! the checks every request passes before a byte moves.

use std::fs::File;
use std::io;

use super::{
    Cause, CopyError, CopyOptions, Extent, NewFiles, Side, SourceFiles, BOUNCE_SIZE, NO_EXTENT,
};
use crate::sys::io::page_size;

/// Where chunks come from: files, or slices of memory.
pub(super) enum Sources<'a> {
    Files {
        files: &'a [&'a File],
        /// Length of each source at the start, `None` if it is not a regular file.
        lens: &'a [Option<u64>],
    },
    Memory(&'a [&'a [u8]]),
    /// Files the workers open when they first need them (see [`SourceFiles`]).
    OnUse(&'a SourceFiles<'a>),
}

/// Where chunks go: files opened by the caller, or files created on first use.
pub(super) enum Dsts<'a> {
    Open(&'a [&'a File]),
    New(&'a NewFiles<'a>),
}

impl Dsts<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Dsts::Open(f) => f.len(),
            Dsts::New(n) => n.len(),
        }
    }

    /// Destination `i`, created first if it is a new file; `Err` when creating it failed
    /// (see [`NewFiles::get`]).
    pub(super) fn get(&self, i: usize) -> Result<&File, Option<Cause>> {
        match self {
            Dsts::Open(f) => Ok(f[i]),
            Dsts::New(n) => n.get(i).map(|c| &c.file),
        }
    }
}

/// A file's length, or `None` if it is not a regular file.
pub(super) fn regular_len(f: &File) -> Option<u64> {
    match f.metadata() {
        Ok(m) if m.is_file() => Some(m.len()),
        _ => None,
    }
}

/// How extents map to chunks.
///
/// When the plan groups (copies through a buffer), consecutive extents form runs of two
/// kinds. Extents that continue each other in one destination are *gathered*: chunks are cut
/// from the run as from one extent, so one chunk may take bytes from several extents (an
/// export of 100,000 tensors of 10 KB writes its file in 512 KiB pieces instead of one small
/// `pwrite` per tensor). Small extents that continue each other in one source are
/// *scattered*: one chunk reads them all with one `pread` and writes each to its destination
/// (an import of 100,000 tensors reads its source 512 KiB at a time instead of once per
/// tensor). Any other extent is a run of its own. Chunk numbers are global across runs, in
/// extent order.
pub(super) struct Plan<'a> {
    pub(super) extents: &'a [Extent],
    runs: Vec<Run>,
    /// `first[r]` is the global number of run `r`'s first chunk; `first[runs]` the total.
    first: Vec<u64>,
    chunk: u64,
    page: u64,
}

/// How a run's chunks are cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// One extent, or extents each beginning in the destination where the one before ends:
    /// cut into chunks at page boundaries of the destination.
    Cut,
    /// Small extents each beginning in the source where the one before ends: one chunk.
    Scatter,
}

/// Extents `start..end`: `len` bytes in all, from `src` at `src_offset` or (not both) to
/// `dst` at `dst_offset`.
#[derive(Clone, Copy, Debug)]
struct Run {
    kind: Kind,
    start: usize,
    end: usize,
    src: usize,
    src_offset: u64,
    dst: usize,
    dst_offset: u64,
    len: u64,
}

/// Largest extent that is scattered: one of a few tensors read together.
const SCATTER_MAX: u64 = BOUNCE_SIZE as u64 / 4;

/// One chunk of one run: `len` bytes taken from the run's extents from `extent` on. When
/// `several` is false the chunk lies in extent `extent` alone, `len` bytes from source `src` at
/// `src_offset` to destination `dst` at `dst_offset`. With `scatter`, the chunk is the whole
/// run, `len` bytes of source `src` at `src_offset`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Chunk {
    pub(super) run: usize,
    pub(super) extent: usize,
    pub(super) src: usize,
    pub(super) dst: usize,
    pub(super) src_offset: u64,
    pub(super) dst_offset: u64,
    pub(super) len: u64,
    /// Whether the chunk takes bytes from more than one extent.
    pub(super) several: bool,
    pub(super) scatter: bool,
}

/// The bytes a chunk takes from one extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Part {
    pub(super) extent: usize,
    pub(super) src: usize,
    pub(super) dst: usize,
    pub(super) src_offset: u64,
    pub(super) dst_offset: u64,
    pub(super) len: u64,
}

impl<'a> Plan<'a> {
    /// Cuts `extents` into chunks of at most `chunk` bytes; with `group`, extents are
    /// gathered and scattered (see [`Plan`]).
    pub(super) fn new(extents: &'a [Extent], chunk: u64, group: bool) -> Self {
        let page = page_size();
        let mut runs: Vec<Run> = Vec::with_capacity(if group { 0 } else { extents.len() });
        for (i, e) in extents.iter().enumerate() {
            // Extents with no bytes (whose indices and offsets were not checked) stay alone.
            if let Some(r) = runs.last_mut().filter(|r| group && r.len > 0 && e.len > 0) {
                let alone = r.end - r.start == 1;
                let gathers = r.kind == Kind::Cut
                    && r.dst == e.dst
                    && r.dst_offset.checked_add(r.len) == Some(e.dst_offset);
                let scatters = (r.kind == Kind::Scatter || alone && r.len <= SCATTER_MAX)
                    && e.len <= SCATTER_MAX
                    && r.len + e.len <= BOUNCE_SIZE as u64
                    && r.src == e.src
                    && r.src_offset.checked_add(r.len) == Some(e.src_offset);
                if gathers || scatters {
                    if !gathers {
                        r.kind = Kind::Scatter;
                    }
                    r.end = i + 1;
                    r.len += e.len;
                    continue;
                }
            }
            runs.push(Run {
                kind: Kind::Cut,
                start: i,
                end: i + 1,
                src: e.src,
                src_offset: e.src_offset,
                dst: e.dst,
                dst_offset: e.dst_offset,
                len: e.len,
            });
        }
        runs.shrink_to_fit();
        let mut plan = Plan {
            extents,
            first: Vec::with_capacity(runs.len() + 1),
            runs,
            chunk,
            page,
        };
        let mut total = 0u64;
        for r in &plan.runs {
            plan.first.push(total);
            total = total.saturating_add(plan.count(r));
        }
        plan.first.push(total);
        plan
    }

    pub(super) fn total(&self) -> u64 {
        self.first.last().copied().unwrap_or(0)
    }

    /// Number of runs.
    pub(super) fn runs(&self) -> usize {
        self.runs.len()
    }

    /// The destination of run `r`.
    pub(super) fn run_dst(&self, r: usize) -> usize {
        self.runs[r].dst
    }

    /// The global number of run `r`'s chunk `j`.
    pub(super) fn chunk_number(&self, r: usize, j: u64) -> u64 {
        self.first[r] + j
    }

    /// Size of every chunk but the first of a run.
    fn step(&self) -> u64 {
        if self.chunk >= self.page {
            self.chunk & !(self.page - 1)
        } else {
            self.chunk
        }
    }

    /// Size of the first chunk of `r`: up to the last page boundary within `chunk` bytes.
    fn first_len(&self, r: &Run) -> u64 {
        let n = if self.chunk >= self.page {
            let end = r.dst_offset.saturating_add(self.chunk) & !(self.page - 1);
            end - r.dst_offset
        } else {
            self.chunk
        };
        n.min(r.len)
    }

    fn count(&self, r: &Run) -> u64 {
        if r.len == 0 {
            return 0;
        }
        if r.kind == Kind::Scatter {
            return 1;
        }
        let first = self.first_len(r);
        1 + (r.len - first).div_ceil(self.step())
    }

    /// The chunk of the cut run `r` that holds the byte `at` bytes into the run.
    fn chunk_at(&self, r: &Run, at: u64) -> u64 {
        let first = self.first_len(r);
        if at < first {
            0
        } else {
            1 + (at - first) / self.step()
        }
    }

    /// Chunks of run `r`.
    pub(super) fn chunks_of(&self, r: usize) -> u64 {
        self.first[r + 1] - self.first[r]
    }

    /// Per source, how many times a chunk reads from it: one per chunk of an extent that a
    /// chunk does not share, more where gathered chunks run across extents, one for a
    /// scattered chunk.
    pub(super) fn reads_per_source(&self, count: &mut [u64]) {
        for r in &self.runs {
            if r.kind == Kind::Scatter {
                count[r.src] += u64::from(r.len > 0);
                continue;
            }
            let mut at = 0u64;
            for e in &self.extents[r.start..r.end] {
                if e.len > 0 {
                    let chunks = self.chunk_at(r, at + e.len - 1) - self.chunk_at(r, at) + 1;
                    count[e.src] += chunks;
                }
                at += e.len;
            }
        }
    }

    /// Chunk `j` of run `r`.
    pub(super) fn chunk(&self, r: usize, j: u64) -> Chunk {
        let run = &self.runs[r];
        if run.kind == Kind::Scatter {
            // A scattered run has two extents or more, each with bytes; the first gives the
            // chunk's ends.
            return Chunk {
                run: r,
                extent: run.start,
                src: run.src,
                dst: run.dst,
                src_offset: run.src_offset,
                dst_offset: run.dst_offset,
                len: run.len,
                several: true,
                scatter: true,
            };
        }
        let first = self.first_len(run);
        let (start, len) = if j == 0 {
            (0, first)
        } else {
            let start = first + (j - 1) * self.step();
            (start, self.step().min(run.len - start))
        };
        let dst_offset = run.dst_offset + start;
        let end = dst_offset + len;
        let exts = &self.extents[run.start..run.end];
        // The first extent with bytes at or after the chunk's start.
        let k = run.start + exts.partition_point(|e| e.dst_offset + e.len <= dst_offset);
        let e = &self.extents[k];
        // Every extent of a run of several has bytes (see `new`): a chunk that goes past
        // extent `k`'s end takes bytes from the next one too.
        let several = e.dst_offset + e.len < end;
        Chunk {
            run: r,
            extent: k,
            src: e.src,
            dst: run.dst,
            src_offset: e.src_offset + (dst_offset - e.dst_offset),
            dst_offset,
            len,
            several,
            scatter: false,
        }
    }

    /// The parts of chunk `c`, in extent order (for a gathered chunk, destination order; for
    /// a scattered one, source order).
    pub(super) fn parts<'p>(&'p self, c: &Chunk) -> impl Iterator<Item = Part> + 'p {
        let (first, run_end) = (c.extent, self.runs[c.run].end);
        let (scatter, start, end) = (c.scatter, c.dst_offset, c.dst_offset + c.len);
        self.extents[first..run_end]
            .iter()
            .enumerate()
            .take_while(move |(_, e)| scatter || e.dst_offset < end)
            .map(move |(i, e)| {
                let (from, to) = if scatter {
                    (e.dst_offset, e.dst_offset + e.len)
                } else {
                    (e.dst_offset.max(start), (e.dst_offset + e.len).min(end))
                };
                Part {
                    extent: first + i,
                    src: e.src,
                    dst: e.dst,
                    src_offset: e.src_offset + (from - e.dst_offset),
                    dst_offset: from,
                    len: to - from,
                }
            })
    }
}

/// Checks a request before anything is copied: a chunk size, indices in range, no offset
/// overflow, and every extent within its source as it is now.
pub(super) fn validate(
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
        Sources::OnUse(s) => s.len(),
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
            // Not open yet: the opener checks the length, and a short read is an error.
            Sources::OnUse(_) => None,
        };
        if let (Some(avail), Some(end)) = (avail, src_end) {
            if end > avail {
                return Err(CopyError {
                    extent: i,
                    side: Side::Read,
                    source: Cause::Io(short_source(end, avail)),
                });
            }
        }
    }
    Ok(())
}

/// The error of a source that ends at `avail`, before an extent's `end`.
pub(super) fn short_source(end: u64, avail: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("source ends at byte {avail}, before the extent's end at byte {end}"),
    )
}
