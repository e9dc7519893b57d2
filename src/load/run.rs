//! Running a plan: worker threads take tasks in file order and read them with buffered
//! `pread` or `O_DIRECT`, straight into the destinations or into staging buffers handed to
//! a sink.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use super::convert::Conversion;
use super::dst::{dst_slice, pread_direct, scatter, RawDst};
use super::io::{self as lio, Aligned, BLOCK};
use super::plan::{Kind, Plan, Seg, Task, Unit};
use super::{LoadOptions, LoadReport, Loader, Method, Request, SinkFn};
use crate::error::{Error, ErrorKind, Result};
use crate::progress::Counter;

/// Where tasks deliver.
pub(crate) enum Target<'a> {
    /// Into the requests' destinations.
    Memory(&'a [RawDst]),
    /// Through staging buffers to a sink.
    Sink {
        sink: &'a SinkFn<'a>,
        /// Caller-provided staging buffers, one per worker; empty: npkio allocates them.
        buffers: Vec<RawDst>,
    },
}

struct Shared<'a> {
    loader: &'a Loader,
    /// The files opened for this window of tasks (by file index; `None` for files the
    /// loader keeps open and files outside the window).
    window: &'a [Option<File>],
    reqs: &'a [Request],
    plan: &'a Plan,
    /// This window's units, and after each the count of its tasks and those before it.
    units: &'a [Unit],
    ends: Vec<u64>,
    /// For [`Method::Auto`], a residency map per file of the window (by file index).
    residency: Vec<Option<lio::Residency>>,
    target: &'a Target<'a>,
    opts: &'a LoadOptions,
    direct_files: Vec<OnceLock<Option<File>>>,
    direct_refused: AtomicBool,
    next: AtomicU64,
    stop: AtomicBool,
    errors: Mutex<Vec<(u64, Error)>>,
    direct_bytes: AtomicU64,
    progress: Counter<'a>,
    staging_size: usize,
}

impl Shared<'_> {
    /// File `f`: kept open by the loader, or opened for this window.
    fn file(&self, f: usize) -> &File {
        file_of(self.loader, self.window, f)
    }

    /// Task `i` of the window (`None` past its end).
    fn task(&self, i: u64) -> Option<Task> {
        task_at(self.plan, self.units, &self.ends, i)
    }

    /// Whether `t` is read with `O_DIRECT`.
    fn direct(&self, t: &Task) -> bool {
        match self.opts.method {
            Method::Buffered => false,
            Method::Direct => true,
            Method::Auto => auto_direct(&self.residency, t),
        }
    }
}

/// Task `i` of the units whose cumulative task counts are `ends`.
fn task_at(plan: &Plan, units: &[Unit], ends: &[u64], i: u64) -> Option<Task> {
    let u = ends.partition_point(|&e| e <= i);
    let unit = units.get(u)?;
    let before = if u == 0 { 0 } else { ends[u - 1] };
    Some(plan.task(unit, i - before))
}

/// [`Method::Auto`]: `O_DIRECT` for a task of at least [`AUTO_DIRECT_MIN`] bytes whose
/// pages are mostly not in the page cache.
fn auto_direct(residency: &[Option<lio::Residency>], t: &Task) -> bool {
    if t.read_len() < AUTO_DIRECT_MIN {
        return false; // small reads: the page cache's read-ahead serves them well
    }
    residency[t.file]
        .as_ref()
        .is_some_and(|res| !res.mostly_resident(t.offset, t.len, RESIDENCY_SAMPLES))
}

fn file_of<'a>(loader: &'a Loader, window: &'a [Option<File>], f: usize) -> &'a File {
    loader.opened.files[f]
        .file
        .as_ref()
        .or(window[f].as_ref())
        .expect("the files of a window are open")
}

/// For [`Method::Auto`]: a residency map of each file over the range the window's units
/// read in it (by file index; `None` elsewhere and for other methods).
fn residency_maps(
    loader: &Loader,
    window: &[Option<File>],
    units: &[Unit],
    method: Method,
) -> Vec<Option<lio::Residency>> {
    let mut out: Vec<Option<lio::Residency>> =
        (0..loader.opened.files.len()).map(|_| None).collect();
    if method != Method::Auto {
        return out;
    }
    // Units are sorted by file: one mapping per file.
    let mut i = 0;
    while i < units.len() {
        let f = units[i].file;
        let mut j = i;
        while j < units.len() && units[j].file == f {
            j += 1;
        }
        let lo = units[i..j].iter().map(|u| u.lo).min().unwrap_or(0);
        let hi = units[i..j].iter().map(|u| u.hi).max().unwrap_or(0);
        out[f] = lio::Residency::map(file_of(loader, window, f), lo, hi - lo);
        i = j;
    }
    out
}

/// Tasks sampled, spread evenly over a window, to decide whether [`Method::Auto`] reads
/// some with `O_DIRECT` (which sets the default thread count).
const AUTO_SAMPLES: u64 = 64;

/// Pages of a task [`Method::Auto`] asks `mincore` about (one call each, spread evenly):
/// asking about every page of a 1 GiB checkpoint cost about 20 ms, a fifth of a warm load.
const RESIDENCY_SAMPLES: u64 = 16;

/// Tasks reading fewer bytes than this are read buffered by [`Method::Auto`].
const AUTO_DIRECT_MIN: u64 = 256 << 10;

/// Runs the plan's tasks (units sorted by file). Files the loader does not keep open are
/// opened a window at a time: the units of at most half the open-file budget's worth of
/// them run, then those files are closed and the next window opens (with their `O_DIRECT`
/// descriptors, a window takes at most the budget). `total` is the output's length.
pub(crate) fn run(
    loader: &Loader,
    reqs: &[Request],
    plan: &Plan,
    target: &Target<'_>,
    opts: &LoadOptions,
    staging_size: usize,
    total: u64,
) -> Result<LoadReport> {
    // Objects in object storage: ranged GETs by `concurrency` workers, no `O_DIRECT`.
    let remote_opts;
    let opts = if loader.is_remote() {
        remote_opts = opts
            .clone()
            .method(Method::Buffered)
            .drop_behind(false)
            .threads(opts.concurrency_or_default());
        &remote_opts
    } else {
        opts
    };
    let files = &loader.opened.files;
    let units = &plan.units;
    let per_window = (crate::sys::fdlimit::open_file_budget() / 2).max(1);
    let mut report = LoadReport {
        bytes_out: total,
        bytes_read: plan.read_len(),
        direct_bytes: 0,
        tasks: usize::try_from(plan.task_count()).unwrap_or(usize::MAX),
        threads: 0,
        direct_refused: false,
    };
    let mut window: Vec<Option<File>> = (0..files.len()).map(|_| None).collect();
    let mut done = 0u64;
    let mut start = 0;
    loop {
        // The window: units up to the first that needs one file too many.
        let mut end = start;
        let mut opened: Vec<usize> = Vec::new();
        while end < units.len() {
            let f = units[end].file;
            if files[f].file.is_none() && opened.last() != Some(&f) {
                if opened.len() == per_window {
                    break;
                }
                opened.push(f);
            }
            end += 1;
        }
        for &f in &opened {
            window[f] = files[f].open_now()?;
        }
        let w = run_window(
            loader,
            &window,
            reqs,
            plan,
            &units[start..end],
            target,
            opts,
            staging_size,
            (report.bytes_out, &mut done, &mut report.direct_bytes),
        );
        for &f in &opened {
            window[f] = None;
        }
        let (threads, refused) = w?;
        report.threads = report.threads.max(threads);
        report.direct_refused |= refused;
        if end >= units.len() {
            return Ok(report);
        }
        start = end;
    }
}

/// Runs one window of units; returns the threads used and whether `O_DIRECT` was refused.
/// `progress` is the load's total output, and its bytes delivered and read with `O_DIRECT`
/// so far, added to.
#[allow(clippy::too_many_arguments)]
fn run_window(
    loader: &Loader,
    window: &[Option<File>],
    reqs: &[Request],
    plan: &Plan,
    units: &[Unit],
    target: &Target<'_>,
    opts: &LoadOptions,
    staging_size: usize,
    progress: (u64, &mut u64, &mut u64),
) -> Result<(usize, bool)> {
    let mut ends = Vec::with_capacity(units.len());
    let mut count = 0u64;
    for u in units {
        count = count.saturating_add(u.count);
        ends.push(count);
    }
    let residency = residency_maps(loader, window, units, opts.method);
    let any_direct = match opts.method {
        Method::Buffered => false,
        Method::Direct => true,
        Method::Auto => (0..AUTO_SAMPLES.min(count)).any(|k| {
            task_at(plan, units, &ends, k * count / AUTO_SAMPLES.min(count))
                .is_some_and(|t| auto_direct(&residency, &t))
        }),
    };
    let mut threads = match opts.threads {
        0 if any_direct => DIRECT_THREADS,
        0 => crate::copy::default_threads(),
        n => n,
    };
    if let Target::Sink { buffers, .. } = target {
        if !buffers.is_empty() {
            threads = threads.min(buffers.len());
        }
    }
    threads = threads.clamp(1, usize::try_from(count).unwrap_or(usize::MAX).max(1));
    let (total, done, direct_bytes) = progress;
    let sh = Shared {
        loader,
        window,
        reqs,
        plan,
        units,
        ends,
        residency,
        target,
        opts,
        direct_files: (0..loader.opened.files.len())
            .map(|_| OnceLock::new())
            .collect(),
        direct_refused: AtomicBool::new(false),
        next: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        errors: Mutex::new(Vec::new()),
        direct_bytes: AtomicU64::new(0),
        progress: Counter::new(opts.progress.as_ref(), *done, total),
        staging_size,
    };
    if threads == 1 {
        worker(&sh, 0);
    } else {
        std::thread::scope(|s| {
            for w in 0..threads {
                let sh = &sh;
                let spawned = std::thread::Builder::new()
                    .name(format!("npkio-load-{w}"))
                    .spawn_scoped(s, move || worker(sh, w));
                if let Err(e) = spawned {
                    // Out of threads (RLIMIT_NPROC, cgroup pids limit): stop the workers
                    // started and fail the load.
                    sh.stop.store(true, Ordering::Relaxed);
                    let err = Error::io(
                        &loader.path,
                        &format!("starting worker thread {} of {threads} to load", w + 1),
                        e,
                    );
                    sh.errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((0, err));
                    break;
                }
            }
        });
    }
    *direct_bytes += sh.direct_bytes.load(Ordering::Relaxed);
    *done = sh.progress.done();
    let mut errors = sh.errors.into_inner().unwrap_or_else(|e| e.into_inner());
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.0);
        let n = errors.len();
        let (_, e) = errors.swap_remove(0);
        if n == 1 {
            return Err(e);
        }
        let msg = format!("{} (and {} more failed task(s))", e.message(), n - 1);
        let mut out = Error::new(e.kind(), msg);
        if let Some(p) = e.path() {
            out = out.at(p);
        }
        if let Some(a) = e.array_name() {
            out = out.array(a);
        }
        return Err(out);
    }
    Ok((threads, sh.direct_refused.load(Ordering::Relaxed)))
}

/// Workers when some task is read with `O_DIRECT` and the caller left the count to npkio:
/// direct reads wait on the device, so more reads in flight than cores pays (measured in
/// `examples/load_bench.rs`).
const DIRECT_THREADS: usize = 4;

struct Buffers {
    /// Source bytes (direct reads, converted and strided tasks).
    bounce: Aligned,
    /// npkio's own staging buffer for a sink.
    staging: Aligned,
}

fn worker(sh: &Shared<'_>, w: usize) {
    let mut bufs = Buffers {
        bounce: Aligned::default(),
        staging: Aligned::default(),
    };
    loop {
        if sh.stop.load(Ordering::Relaxed) {
            return;
        }
        let i = sh.next.fetch_add(1, Ordering::Relaxed);
        let Some(task) = sh.task(i) else { return };
        let task = &task;
        if let Err(e) = do_task(sh, w, task, sh.direct(task), &mut bufs) {
            sh.stop.store(true, Ordering::Relaxed);
            let req = task.first_req();
            let f = &sh.loader.opened.files[task.file];
            let name = &sh.reqs[req].name;
            let err = match e {
                TaskError::Io(e) if remote_error(&e).is_some() => {
                    remote_error(&e).expect("checked just above")
                }
                TaskError::Io(e) => Error::io(
                    &f.path,
                    &format!(
                        "reading bytes {}..{} for request {req}",
                        task.offset,
                        task.offset + task.len
                    ),
                    e,
                ),
                TaskError::Sink(msg) => Error::new(
                    ErrorKind::Io,
                    format!("the sink refused request {req}'s bytes: {msg}"),
                ),
            }
            .array(name.clone());
            sh.errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((i, err));
            return;
        }
        let out = task.out_len();
        sh.progress.add(out);
    }
}

enum TaskError {
    Io(io::Error),
    Sink(String),
}

impl From<io::Error> for TaskError {
    fn from(e: io::Error) -> Self {
        TaskError::Io(e)
    }
}

/// The `O_DIRECT` descriptor of file `f`, `None` when the filesystem refuses it.
fn direct_file<'s>(sh: &'s Shared<'_>, f: usize) -> Option<&'s File> {
    let d = sh.direct_files[f].get_or_init(|| {
        let src = &sh.loader.opened.files[f];
        lio::open_direct(sh.file(f), &src.path)
    });
    if d.is_none() {
        sh.direct_refused.store(true, Ordering::Relaxed);
    }
    d.as_ref()
}

/// Reads `[off, off + len)` of file `f` into `bounce`; returns the bytes.
fn read_span<'b>(
    sh: &Shared<'_>,
    f: usize,
    off: u64,
    len: usize,
    direct: bool,
    bounce: &'b mut Aligned,
) -> io::Result<&'b [u8]> {
    if direct {
        if let Some(df) = direct_file(sh, f) {
            match lio::read_direct(df, sh.file(f), off, len, bounce) {
                Ok((start, direct)) => {
                    sh.direct_bytes.fetch_add(direct, Ordering::Relaxed);
                    return Ok(bounce.view(start, len));
                }
                Err(e) if lio::direct_refused(&e) => {
                    sh.direct_refused.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
    }
    let b = bounce.get(len)?;
    read_at(sh, f, b, off)?;
    drop_behind(sh, f, off, len as u64);
    Ok(b)
}

/// Reads exactly `buf.len()` bytes of file `f` at `off`: `pread` of a local file, a ranged
/// GET of an object in object storage (whose error, naming the URL and the bytes, travels
/// inside the `io::Error`: see [`remote_error`]).
fn read_at(sh: &Shared<'_>, f: usize, buf: &mut [u8], off: u64) -> io::Result<()> {
    match &sh.loader.opened.files[f].remote {
        Some(r) => r.read_into(off, &mut [buf]).map_err(io::Error::other),
        None => lio::read_exact_at(sh.file(f), buf, off),
    }
}

/// The error of a ranged GET carried by `e`, if it carries one.
fn remote_error(e: &io::Error) -> Option<Error> {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<Error>())
        .map(Error::duplicate)
}

/// With [`LoadOptions::drop_behind`], drops `[off, off + len)` of local file `f` from the
/// page cache.
fn drop_behind(sh: &Shared<'_>, f: usize, off: u64, len: u64) {
    if sh.opts.drop_behind && sh.loader.opened.files[f].remote.is_none() {
        lio::drop_cache(sh.file(f), off, len);
    }
}

fn do_task(
    sh: &Shared<'_>,
    w: usize,
    t: &Task,
    direct: bool,
    bufs: &mut Buffers,
) -> std::result::Result<(), TaskError> {
    match sh.target {
        Target::Memory(dsts) => memory_task(sh, dsts, t, direct, bufs),
        Target::Sink { sink, buffers } => {
            if let (true, Kind::Contig(segs)) = (buffers.is_empty(), &t.kind) {
                // npkio's own staging: read straight into it (direct reads too, it is
                // aligned), so each worker holds one buffer, not two.
                let len = t.len as usize;
                let data = read_span(sh, t.file, t.offset, len, direct, &mut bufs.staging)?;
                return sink(segs[0].req, segs[0].out_off, data).map_err(TaskError::Sink);
            }
            let out_len = t.out_len() as usize;
            let staging: &mut [u8] = if buffers.is_empty() {
                bufs.staging.get(sh.staging_size.max(out_len))?
            } else {
                let b = buffers[w];
                debug_assert!(out_len <= b.cap);
                // SAFETY: buffer `w` belongs to this worker alone for the whole run, and the
                // caller lends `cap` writable bytes (the contract of the sink functions).
                unsafe { std::slice::from_raw_parts_mut(b.ptr, b.cap) }
            };
            let (req, out_off) = match &t.kind {
                Kind::Contig(segs) => (segs[0].req, segs[0].out_off),
                Kind::Rows { req, out_off, .. } => (*req, *out_off),
            };
            let out = &mut staging[..out_len];
            fill(sh, t, direct, &mut bufs.bounce, out)?;
            sink(req, out_off, out).map_err(TaskError::Sink)
        }
    }
}

/// Pointer mode: deliver the task straight into the destinations.
fn memory_task(
    sh: &Shared<'_>,
    dsts: &[RawDst],
    t: &Task,
    direct: bool,
    bufs: &mut Buffers,
) -> std::result::Result<(), TaskError> {
    match &t.kind {
        Kind::Contig(segs) if !direct => {
            read_vectored(sh, dsts, t, segs)?;
            Ok(())
        }
        Kind::Contig(segs) if aligned_like_file(dsts, t, segs) => {
            direct_into(sh, dsts, t, segs, &mut bufs.bounce)?;
            Ok(())
        }
        Kind::Contig(segs) => {
            let src = read_span(sh, t.file, t.offset, t.len as usize, true, &mut bufs.bounce)?;
            let mut pos = 0usize;
            for s in segs {
                // SAFETY: validated range of the request's destination, written by this
                // task alone.
                let d = unsafe { dst_slice(dsts, s.req, s.out_off, s.len) };
                d.copy_from_slice(&src[pos..pos + s.len as usize]);
                pos += s.len as usize;
            }
            Ok(())
        }
        Kind::Rows { req, out_off, .. } => {
            // SAFETY: as above.
            let out = unsafe { dst_slice(dsts, *req, *out_off, t.out_len()) };
            fill(sh, t, direct, &mut bufs.bounce, out)
        }
    }
}

/// Whether every segment's destination sits at the same position within a block as its
/// file offset, so that `O_DIRECT` can read the aligned middle straight into it.
fn aligned_like_file(dsts: &[RawDst], t: &Task, segs: &[Seg]) -> bool {
    let mut off = t.offset;
    segs.iter().all(|s| {
        let p = dsts[s.req].ptr as u64 + s.out_off;
        let ok = p.wrapping_sub(off) % BLOCK == 0;
        off += s.len;
        ok
    })
}

/// `O_DIRECT` straight into the destinations (no bounce copy). When the segments follow
/// each other in memory (an arena laid out like the file), the block-aligned middle of the
/// whole task is one read; otherwise each segment's middle is. The unaligned ends (less than
/// a block each) go through the bounce buffer.
fn direct_into(
    sh: &Shared<'_>,
    dsts: &[RawDst],
    t: &Task,
    segs: &[Seg],
    bounce: &mut Aligned,
) -> io::Result<()> {
    let Some(df) = direct_file(sh, t.file) else {
        return read_vectored(sh, dsts, t, segs);
    };
    let ptr = |s: &Seg| dsts[s.req].ptr.wrapping_add(s.out_off as usize);
    let in_one_piece = segs
        .windows(2)
        .all(|w| ptr(&w[0]).wrapping_add(w[0].len as usize) == ptr(&w[1]));
    // (file offset, length, first segment, how many) of each piece read in place.
    let mut pieces = Vec::new();
    if in_one_piece {
        pieces.push((t.offset, t.len, 0, segs.len()));
    } else {
        let mut off = t.offset;
        for (i, s) in segs.iter().enumerate() {
            pieces.push((off, s.len, i, 1));
            off += s.len;
        }
    }
    for (off, len, first, n) in pieces {
        let segs = &segs[first..first + n];
        let (a, b) = (off.next_multiple_of(BLOCK), (off + len) / BLOCK * BLOCK);
        if a >= b {
            let src = read_span(sh, t.file, off, len as usize, true, bounce)?;
            scatter(dsts, segs, off, off, src);
            continue;
        }
        let at = ptr(&segs[0]).wrapping_add((a - off) as usize);
        // SAFETY: `[a, b)` lies inside the piece, whose bytes are the segments' validated
        // destination ranges, consecutive in memory and written by this task alone.
        match unsafe { pread_direct(df, sh.file(t.file), at, (b - a) as usize, a) } {
            Ok(direct) => {
                sh.direct_bytes.fetch_add(direct, Ordering::Relaxed);
            }
            Err(e) if lio::direct_refused(&e) => {
                sh.direct_refused.store(true, Ordering::Relaxed);
                let src = read_span(sh, t.file, a, (b - a) as usize, false, bounce)?;
                scatter(dsts, segs, off, a, src);
            }
            Err(e) => return Err(e),
        }
        for (x, y) in [(off, a), (b, off + len)] {
            if x < y {
                let src = read_span(sh, t.file, x, (y - x) as usize, true, bounce)?;
                scatter(dsts, segs, off, x, src);
            }
        }
    }
    Ok(())
}

/// Buffered read of a contiguous task into its segments: one `preadv` (continued with
/// `pread` after a short read).
fn read_vectored(sh: &Shared<'_>, dsts: &[RawDst], t: &Task, segs: &[Seg]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if let Some(r) = &sh.loader.opened.files[t.file].remote {
        // One ranged GET whose body is scattered into the segments.
        let mut bufs: Vec<&mut [u8]> = segs
            .iter()
            // SAFETY: validated ranges of the requests' destinations, disjoint, written by
            // this task alone.
            .map(|s| unsafe { dst_slice(dsts, s.req, s.out_off, s.len) })
            .collect();
        return r.read_into(t.offset, &mut bufs).map_err(io::Error::other);
    }
    let file = sh.file(t.file);
    if let [s] = segs {
        // SAFETY: validated range of the request's destination, written by this task alone.
        let d = unsafe { dst_slice(dsts, s.req, s.out_off, s.len) };
        lio::read_exact_at(file, d, t.offset)?;
        if sh.opts.drop_behind {
            lio::drop_cache(file, t.offset, t.len);
        }
        return Ok(());
    }
    let iov: Vec<libc::iovec> = segs
        .iter()
        .map(|s| libc::iovec {
            // SAFETY: in bounds of the request's destination (validated).
            iov_base: unsafe { dsts[s.req].ptr.add(s.out_off as usize) }.cast(),
            iov_len: s.len as usize,
        })
        .collect();
    let n = loop {
        // SAFETY: every iovec points into caller memory lent for the load, disjoint from
        // what other tasks write; the kernel writes at most their lengths.
        let n = unsafe {
            libc::preadv(
                file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                t.offset as libc::off_t,
            )
        };
        if n >= 0 {
            break n as u64;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    if n < t.len {
        // Finish segment by segment from where the kernel stopped.
        let mut pos = 0u64;
        for s in segs {
            let (a, b) = (pos, pos + s.len);
            pos = b;
            if b <= n {
                continue;
            }
            let skip = n.saturating_sub(a);
            // SAFETY: as above.
            let d = unsafe { dst_slice(dsts, s.req, s.out_off + skip, s.len - skip) };
            lio::read_exact_at(file, d, t.offset + a + skip)?;
        }
    }
    if sh.opts.drop_behind {
        lio::drop_cache(file, t.offset, t.len);
    }
    Ok(())
}

/// Produces a task's output bytes into `out` (exactly `t.out_len()` long).
fn fill(
    sh: &Shared<'_>,
    t: &Task,
    direct: bool,
    bounce: &mut Aligned,
    out: &mut [u8],
) -> std::result::Result<(), TaskError> {
    match &t.kind {
        Kind::Contig(_) => {
            if direct {
                let src = read_span(sh, t.file, t.offset, t.len as usize, true, bounce)?;
                out.copy_from_slice(src);
            } else {
                read_at(sh, t.file, out, t.offset)?;
                drop_behind(sh, t.file, t.offset, t.len);
            }
        }
        &Kind::Rows {
            conv,
            stride,
            run,
            count,
            each,
            ..
        } => {
            let (a, b) = conv.sizes();
            let run_out = (run / a * b) as usize;
            let run = run as usize;
            if each {
                for r in 0..count as usize {
                    let off = t.offset + r as u64 * stride;
                    let o = &mut out[r * run_out..(r + 1) * run_out];
                    if conv == Conversion::None && !direct {
                        read_at(sh, t.file, o, off)?;
                    } else {
                        let src = read_span(sh, t.file, off, run, direct, bounce)?;
                        conv.run(src, o);
                    }
                }
                if !direct {
                    drop_behind(sh, t.file, t.offset, t.len);
                }
            } else {
                let src = read_span(sh, t.file, t.offset, t.len as usize, direct, bounce)?;
                for r in 0..count as usize {
                    let s = r * stride as usize;
                    conv.run(&src[s..s + run], &mut out[r * run_out..(r + 1) * run_out]);
                }
            }
        }
    }
    Ok(())
}
