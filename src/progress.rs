//! Progress reports, one shape for conversions and loads: `(bytes done so far, bytes in
//! all)`, called one at a time and never going backwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A progress callback: `(bytes done so far, bytes to do in all)`.
///
/// Called after each chunk from the worker threads, one call at a time (a C callback need
/// not be thread-safe), with `done` never smaller than in the call before; the last call
/// of a run that succeeds has `done == total`. A conversion counts the tensor bytes it
/// copies, a load the bytes it delivers.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// The copy engine's progress: the bytes of each chunk copied, from its workers.
pub(crate) type CopyProgress<'a> = Option<&'a (dyn Fn(u64) + Sync)>;

/// Counts the bytes of one run and reports them to its [`Progress`], if it has one.
pub(crate) struct Counter<'a> {
    progress: Option<&'a (dyn Fn(u64, u64) + Send + Sync)>,
    total: u64,
    done: AtomicU64,
    /// Held across the addition and the call, so that calls come one at a time and in the
    /// order of their counts.
    calls: Mutex<()>,
}

impl<'a> Counter<'a> {
    /// A counter of `total` bytes, starting at `done`.
    pub(crate) fn new(progress: Option<&'a Progress>, done: u64, total: u64) -> Counter<'a> {
        Counter {
            progress: progress.map(|p| &**p),
            total,
            done: AtomicU64::new(done),
            calls: Mutex::new(()),
        }
    }

    /// Counts `n` more bytes done, and reports the sum.
    pub(crate) fn add(&self, n: u64) {
        match self.progress {
            None => {
                self.done.fetch_add(n, Ordering::Relaxed);
            }
            Some(p) => {
                let _one_at_a_time = self.calls.lock().unwrap_or_else(|e| e.into_inner());
                let done = self.done.fetch_add(n, Ordering::Relaxed).saturating_add(n);
                p(done, self.total);
            }
        }
    }

    /// The bytes counted so far.
    pub(crate) fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// A callback for the copy engine, given the bytes of each chunk it copies; `None` when
    /// nobody listens (the copy then skips the calls). Lent as [`CopyProgress`] by
    /// [`copy_progress`].
    pub(crate) fn for_copy(&self) -> Option<impl Fn(u64) + Sync + '_> {
        self.progress.map(|_| move |n| self.add(n))
    }
}

/// [`Counter::for_copy`]'s callback as the copy engine takes it.
pub(crate) fn copy_progress<F: Fn(u64) + Sync>(f: &Option<F>) -> CopyProgress<'_> {
    match f {
        Some(f) => Some(f),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_come_in_order_from_many_threads_and_end_at_the_total() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let progress: Progress = {
            let seen = Arc::clone(&seen);
            Arc::new(move |done, total| seen.lock().unwrap().push((done, total)))
        };
        let counter = Counter::new(Some(&progress), 5, 5 + 8 * 1000);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| (0..1000).for_each(|_| counter.add(1)));
            }
        });
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 8000);
        assert!(
            seen.windows(2).all(|w| w[0].0 < w[1].0),
            "a report went back"
        );
        assert_eq!(seen.last(), Some(&(8005, 8005)));
        assert_eq!(counter.done(), 8005);
    }

    #[test]
    fn without_a_listener_bytes_are_still_counted() {
        let counter = Counter::new(None, 0, 10);
        assert!(counter.for_copy().is_none());
        counter.add(4);
        counter.add(6);
        assert_eq!(counter.done(), 10);
    }
}
