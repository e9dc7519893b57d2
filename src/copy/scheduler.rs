//! Running a copy: a scoped pool of workers pulling chunks from a scheduler that keeps them
//! off each other's destinations, and the first failure in copy order.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::methods::{copy_chunk, strategy, Bounce, Fault, Route, Strategy};
use super::plan::{regular_len, validate, Chunk, Dsts, Plan, Sources};
use super::{default_threads, Cause, CopyError, CopyOptions, Extent, Side, NO_EXTENT};

/// Hands out chunks to workers: in copy order, except that a worker prefers a destination no
/// other worker is writing, so that workers do not queue on one file's lock (Linux serializes
/// buffered writes to one inode). With one destination (or one worker) the order is strict.
struct Scheduler {
    state: Mutex<SchedState>,
}

struct SchedState {
    /// Per run of extents: its next chunk to hand out.
    next: Vec<u64>,
    /// First run that may still have chunks to hand out.
    lo: usize,
    /// Per destination: workers copying into it right now.
    busy: Vec<u32>,
}

/// How far past the first unfinished run a worker looks for an idle destination.
const LOOKAHEAD: usize = 64;

impl Scheduler {
    fn new(plan: &Plan<'_>, n_dsts: usize) -> Self {
        Scheduler {
            state: Mutex::new(SchedState {
                next: vec![0; plan.runs()],
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
        let n = plan.runs();
        while st.lo < n && st.next[st.lo] >= plan.chunks_of(st.lo) {
            st.lo += 1;
        }
        if st.lo == n {
            return None;
        }
        let open = |st: &SchedState, i: usize| st.next[i] < plan.chunks_of(i);
        let idle = (st.lo..n.min(st.lo + LOOKAHEAD))
            .find(|&i| open(&st, i) && st.busy[plan.run_dst(i)] == 0);
        let i = idle.unwrap_or(st.lo);
        let j = st.next[i];
        st.next[i] += 1;
        st.busy[plan.run_dst(i)] += 1;
        Some((plan.chunk_number(i, j), plan.chunk(i, j)))
    }
}

/// State shared by the workers of one call.
pub(super) struct Shared<'a> {
    /// Where chunks come from and go to, and how their bytes travel.
    route: Route<'a>,
    plan: Plan<'a>,
    sched: Scheduler,
    failed: AtomicBool,
    failures: Mutex<Failures>,
    progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

/// What went wrong in one call.
#[derive(Default)]
struct Failures {
    /// The first failure in copy order: (chunk number, extent, side, fault), where a
    /// [`Fault::Create`] has given its cause to `creating`.
    first: Option<(u64, usize, Side, Fault)>,
    /// Why each destination that could not be created failed, from the worker that tried
    /// (whichever chunk reports the failure, it is this error that the caller gets).
    creating: Vec<(usize, Cause)>,
    /// The same for each source that could not be opened.
    opening: Vec<(usize, Cause)>,
}

impl Failures {
    fn record(&mut self, k: u64, extent: usize, side: Side, fault: Fault) {
        let fault = match fault {
            Fault::Create { dst, cause } => {
                self.creating.extend(cause.map(|c| (dst, c)));
                Fault::Create { dst, cause: None }
            }
            Fault::Open { src, cause } => {
                self.opening.extend(cause.map(|c| (src, c)));
                Fault::Open { src, cause: None }
            }
            f => f,
        };
        if !matches!(self.first, Some((first, ..)) if first <= k) {
            self.first = Some((k, extent, side, fault));
        }
    }

    /// The first failure as the caller sees it.
    fn into_error(mut self) -> Option<CopyError> {
        let (_, extent, side, fault) = self.first?;
        let source = match fault {
            Fault::Io(e) => Cause::Io(e),
            Fault::Create { dst, .. } => match self.creating.iter().position(|(d, _)| *d == dst) {
                Some(at) => self.creating.swap_remove(at).1,
                // Not reached: the worker that tried to create `dst` recorded why.
                None => Cause::Io(io::Error::other("creating the destination failed")),
            },
            Fault::Open { src, .. } => match self.opening.iter().position(|(s, _)| *s == src) {
                Some(at) => self.opening.swap_remove(at).1,
                // Not reached: the worker that tried to open `src` recorded why.
                None => Cause::Io(io::Error::other("opening the source failed")),
            },
        };
        Some(CopyError {
            extent,
            side,
            source,
        })
    }
}

/// Worker threads kept for a whole conversion: every copy run on them reuses the same
/// threads, where [`copy_extents`](super::copy_extents) and the other free functions start
/// and join a pool per call. A conversion of many small files copies in batches (bounded by
/// the open-file limit); with a pool per batch, 18,000 files made 142 threads.
///
/// Dropping it joins the threads, so none outlives it (a C host may fork, or unload the
/// library, right after a conversion returns).
pub struct Workers {
    /// `None` with one thread: chunks are copied on the caller's thread.
    pool: Option<rayon::ThreadPool>,
    handles: Vec<std::thread::JoinHandle<()>>,
    threads: usize,
}

impl Workers {
    /// `threads` workers (0: [`default_threads`]); with one, no thread is started.
    pub fn new(threads: usize) -> io::Result<Workers> {
        let threads = match threads {
            0 => default_threads(),
            n => n,
        };
        let mut handles = Vec::with_capacity(threads);
        if threads == 1 {
            return Ok(Workers {
                pool: None,
                handles,
                threads,
            });
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .spawn_handler(|t| {
                let h = std::thread::Builder::new()
                    .name(format!("npkio-copy-{}", t.index()))
                    .spawn(move || t.run())?;
                handles.push(h);
                Ok(())
            })
            .build();
        match pool {
            Ok(pool) => Ok(Workers {
                pool: Some(pool),
                handles,
                threads,
            }),
            Err(e) => {
                // rayon has told the threads started so far to stop: wait for them.
                for h in handles {
                    let _ = h.join();
                }
                Err(io::Error::other(e))
            }
        }
    }

    /// Number of worker threads (1: the caller's own).
    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Dropping the pool tells its threads to stop once idle; then wait for them.
        drop(self.pool.take());
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.threads)
            .finish()
    }
}

/// [`run`] from source files, whose lengths at the start bound the extents.
pub(super) fn run_files(
    workers: Option<&Workers>,
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
    run(workers, &sources, dsts, extents, opts, progress)
}

/// Copies every extent: validates, plans, and runs the workers: those given, or a scoped
/// pool of `opts.threads` started for this call.
pub(super) fn run(
    workers: Option<&Workers>,
    sources: &Sources<'_>,
    dsts: &Dsts<'_>,
    extents: &[Extent],
    opts: &CopyOptions,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<(), CopyError> {
    validate(sources, dsts, extents, opts)?;
    let strategy = strategy(opts.method, matches!(sources, Sources::Memory(_)));
    // Through a buffer, neighbouring extents are gathered into one write, or scattered
    // from one read.
    let plan = Plan::new(
        extents,
        opts.chunk_size as u64,
        strategy == Strategy::ReadWrite,
    );
    let total = plan.total();
    if total == 0 {
        return Ok(());
    }
    if let Sources::OnUse(s) = sources {
        s.count_reads(&plan);
    }
    let dst_lens = match dsts {
        Dsts::Open(files) if strategy == Strategy::MapDst => {
            files.iter().map(|f| regular_len(f)).collect()
        }
        _ => Vec::new(),
    };
    let shared = Shared {
        route: Route {
            sources,
            dsts,
            dst_lens,
            strategy,
            cfr_unsupported: AtomicBool::new(false),
        },
        sched: Scheduler::new(&plan, dsts.len()),
        plan,
        failed: AtomicBool::new(false),
        failures: Mutex::new(Failures::default()),
        progress,
    };
    match workers {
        Some(w) => match &w.pool {
            // A copy with fewer chunks than threads leaves the others idle: they find no
            // chunk and return at once.
            Some(pool) if total > 1 => {
                pool.broadcast(|_| worker(&shared));
            }
            _ => worker(&shared),
        },
        None => {
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
                // A scoped pool: its threads are joined before this returns, so no worker
                // outlives the call (a C host may fork, or unload the library, right after it).
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
                        source: Cause::Io(io::Error::other(e)),
                    })?;
            }
        }
    }
    let failures = match shared.failures.into_inner() {
        Ok(f) => f,
        Err(poisoned) => poisoned.into_inner(),
    };
    match failures.into_error() {
        Some(e) => Err(e),
        None => {
            if let Sources::OnUse(s) = sources {
                s.debug_assert_all_closed();
            }
            Ok(())
        }
    }
}

/// One worker: takes chunks and copies them until none is left or a copy has failed.
fn worker(sh: &Shared<'_>) {
    let mut buf = Bounce::default();
    let mut done = None;
    while !sh.failed.load(Ordering::Relaxed) {
        let Some((k, c)) = sh.sched.next(&sh.plan, done.take()) else {
            break;
        };
        done = Some(c.dst);
        match copy_chunk(&sh.route, &sh.plan, &c, &mut buf) {
            Ok(()) => {
                if let Some(p) = sh.progress {
                    p(c.len);
                }
            }
            Err((extent, side, fault)) => {
                sh.failed.store(true, Ordering::Relaxed);
                let mut failures = match sh.failures.lock() {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
                failures.record(k, extent, side, fault);
                break;
            }
        }
    }
}
