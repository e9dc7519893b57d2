//! Planning a copy: where chunks come from and go to, how extents are cut into chunks, and
//! the checks every request passes before a byte moves.

use std::fs::File;
use std::io;
use std::sync::OnceLock;

use super::{Cause, CopyError, CopyOptions, Extent, NewFiles, Side, SourceFiles, NO_EXTENT};

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

/// The system's page size (4096 where it cannot be asked).
pub(super) fn page_size() -> u64 {
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
pub(super) struct Plan<'a> {
    pub(super) extents: &'a [Extent],
    /// `first[i]` is the global number of extent `i`'s first chunk; `first[len]` the total.
    pub(super) first: Vec<u64>,
    chunk: u64,
    page: u64,
}

/// One chunk of one extent.
#[derive(Clone, Copy, Debug)]
pub(super) struct Chunk {
    pub(super) extent: usize,
    pub(super) src: usize,
    pub(super) dst: usize,
    pub(super) src_offset: u64,
    pub(super) dst_offset: u64,
    pub(super) len: u64,
}

impl<'a> Plan<'a> {
    pub(super) fn new(extents: &'a [Extent], chunk: u64) -> Self {
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

    pub(super) fn total(&self) -> u64 {
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
    pub(super) fn chunks_of(&self, i: usize) -> u64 {
        self.first[i + 1] - self.first[i]
    }

    /// Chunk `j` of extent `i`.
    pub(super) fn chunk(&self, i: usize, j: u64) -> Chunk {
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
