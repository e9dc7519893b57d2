//! Files the copy's workers create or open themselves, as they reach them: [`NewFiles`]
//! (destinations created on first use) and [`SourceFiles`] (sources opened on first use and
//! closed after their last chunk).

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::plan::{regular_len, Plan};
use super::Cause;
#[cfg(doc)]
use super::{size_new_file, Side};

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

pub(super) struct Created {
    pub(super) file: File,
    /// Its length just after creation (None: not a regular file), asked only by the mapped
    /// method: a `statx` per file is a cost of its own with thousands of small files.
    len: OnceLock<Option<u64>>,
}

impl Created {
    pub(super) fn len(&self) -> Option<u64> {
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
    pub(super) fn get(&self, i: usize) -> Result<&Created, Option<Cause>> {
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
    pub(super) fn count_reads(&self, plan: &Plan<'_>) {
        let mut count = vec![0u64; self.left.len()];
        plan.reads_per_source(&mut count);
        for (n, c) in self.left.iter().zip(count) {
            n.store(c, Ordering::Relaxed);
        }
    }

    /// Source `i` for one read by a chunk, opened if it is not open. When opening fails, the worker
    /// that tried gets `Err(Some(error))` and every later one `Err(None)`.
    pub(super) fn acquire(&self, i: usize) -> Result<Arc<File>, Option<Cause>> {
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
    pub(super) fn debug_assert_all_closed(&self) {
        debug_assert!(self.left.iter().all(|n| n.load(Ordering::Relaxed) == 0));
        debug_assert_eq!(self.kept.load(Ordering::Relaxed), 0);
    }

    /// One read of source `i` is done: after its last, the source is closed.
    pub(super) fn release(&self, i: usize) {
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
