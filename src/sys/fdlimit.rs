//! How many files a conversion may keep open at once, from the process's open-file limit.
//!
//! A conversion of many tensors opens its files a batch at a time. The batch size comes from
//! the soft `RLIMIT_NOFILE` (first raised to the hard limit where the process may, once per
//! process), less the descriptors already open and a margin for what the conversion opens
//! besides the batch (the source, the lock, the staging directory, temporary files, the
//! metadata). It is at most [`MAX_BATCH`] and at least 1: under a limit of 64, a
//! conversion of 1000 tensors goes in batches of a few dozen files.

use std::sync::Once;

/// Largest batch, whatever the limit: more open files gain nothing measurable.
pub(crate) const MAX_BATCH: usize = 256;

/// Descriptors kept free for what a conversion opens besides a batch (source files, lock,
/// staging directory, temporary files, metadata, the copy threads' own needs).
const MARGIN: usize = 24;

/// Raises the soft open-file limit to the hard one, once per process (where the process
/// may; failing that, the limit stays as it was).
pub(crate) fn raise_soft_limit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Some(mut lim) = get_limit() else {
            return;
        };
        if lim.rlim_cur >= lim.rlim_max {
            return;
        }
        // An unlimited hard limit cannot be the soft one on Linux (it is capped by
        // fs.nr_open): ask for a large finite number instead.
        lim.rlim_cur = if lim.rlim_max == libc::RLIM_INFINITY {
            1 << 20
        } else {
            lim.rlim_max
        };
        // SAFETY: a valid rlimit structure; failure leaves the limit unchanged.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    });
}

fn get_limit() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out pointer.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim)
}

/// Descriptors open in this process now (from `/proc/self/fd`; a guess where it cannot be
/// read).
fn open_now() -> usize {
    match std::fs::read_dir("/proc/self/fd") {
        // The listing itself holds one descriptor.
        Ok(entries) => entries.count().saturating_sub(1),
        Err(_) => 32,
    }
}

/// How many files a conversion may open at once now: the soft limit (raised first, see
/// [`raise_soft_limit`]) less what is open and a margin, between 1 and [`MAX_BATCH`].
pub(crate) fn open_file_budget() -> usize {
    raise_soft_limit();
    let soft = match get_limit() {
        Some(l) if l.rlim_cur == libc::RLIM_INFINITY => usize::MAX,
        Some(l) => usize::try_from(l.rlim_cur).unwrap_or(usize::MAX),
        None => return MAX_BATCH,
    };
    soft.saturating_sub(open_now())
        .saturating_sub(MARGIN)
        .clamp(1, MAX_BATCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_within_bounds() {
        let b = open_file_budget();
        assert!((1..=MAX_BATCH).contains(&b), "{b}");
    }
}
