//! From requests to tasks: validation, slices as byte runs, merging and chunking.
//!
//! A request's output is the sliced tensor in C order. With a slice along dimension `k` of
//! a tensor of shape `[d0, ..., dn-1]`, write `outer = d0 × ... × d(k-1)`, `row = dk × inner`
//! bytes and `run = (end - start) × inner` bytes, where `inner` is the byte size of one index
//! of dimension `k`. The output is then `outer` runs of `run` bytes, the `o`-th taken at
//! logical offset `o × row + start × inner`. When `outer` is 1 (dimension 0, or leading
//! dimensions of size 1) or the slice covers the whole dimension, that is one contiguous
//! run. Otherwise it is strided, and read by the rule in [`STRIDE_ROW_READ`] and
//! [`STRIDE_MAX_GAP`].

use super::convert::Conversion;
pub(crate) use super::resolve::{bytes_of, request_errors, resolve, resolve_all, Resolved};
use super::source::{LoadTensor, Piece};
use super::Loader;
use std::collections::TryReserveError;

use crate::error::Result;

/// Strided slices: rows of at least this many bytes are read one `pread` each, straight into
/// the destination (the system call costs little beside the copy, and no byte of the gap is
/// read).
pub const STRIDE_ROW_READ: u64 = 64 << 10;

/// Strided slices with shorter rows: when the gap between two rows is at most this many
/// bytes, the span covering a group of rows (at most 1 MiB) is read with one `pread` into a
/// buffer and the rows are copied out; with larger gaps, each row is read with its own
/// `pread` straight into the destination.
///
/// Measured (`load_bench --strided`, 2 cores, warm, 128 tensors `[1024, 4096]` BF16, rows
/// of 8 KiB, slice `[0, w)` of dimension 1; seconds, per-row `pread` / span `pread` + copy):
/// gap 8160 B: 0.104 / 0.135; gap 7680: 0.128 / 0.156; gap 6144: 0.164 / 0.180; gap 4096:
/// 0.193 / 0.168; gap 1024: 0.213 / 0.300 (8 MiB spans) and better with 1 MiB spans. A
/// `pread` costs about as much as copying 4-6 KB here, hence the limit.
pub const STRIDE_MAX_GAP: u64 = 4 << 10;

/// Strided slices in object storage: rows of at least this many bytes are fetched one
/// ranged GET each (the gaps not fetched); shorter rows are fetched as spans holding many
/// rows and their gaps, one GET of up to a chunk each.
pub const REMOTE_ROW_READ: u64 = 1 << 20;

/// Most bytes of a span read at once for a strided slice: small enough that the buffer
/// stays in the core's cache while the rows are copied out of it.
const STRIDE_SPAN: u64 = 1 << 20;

/// Where a task's bytes go: `len` bytes to request `req`'s output at `out_off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seg {
    pub(crate) req: usize,
    pub(crate) out_off: u64,
    pub(crate) len: u64,
}

/// What a task does with the span it reads.
#[derive(Clone, Debug)]
pub(crate) enum Kind {
    /// The span's bytes go unchanged to the segments, in order (their lengths add up to the
    /// span's).
    Contig(Vec<Seg>),
    /// `count` rows of `run` source bytes, `stride` apart from the span's start, converted
    /// and written one after the other to `req`'s output from `out_off`. With `each`, every
    /// row is read on its own instead of the whole span.
    Rows {
        req: usize,
        out_off: u64,
        conv: Conversion,
        stride: u64,
        run: u64,
        count: u64,
        each: bool,
    },
}

/// A unit of work: read `len` bytes of file `file` at `offset` and deliver them.
#[derive(Clone, Debug)]
pub(crate) struct Task {
    pub(crate) file: usize,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) kind: Kind,
}

impl Task {
    /// Output bytes the task delivers.
    pub(crate) fn out_len(&self) -> u64 {
        match &self.kind {
            Kind::Contig(segs) => segs.iter().map(|s| s.len).sum(),
            Kind::Rows {
                conv, run, count, ..
            } => {
                let (a, b) = conv.sizes();
                run / a * b * count
            }
        }
    }

    /// Bytes the task reads from the file.
    pub(crate) fn read_len(&self) -> u64 {
        match &self.kind {
            Kind::Rows {
                each: true,
                run,
                count,
                ..
            } => run * count,
            _ => self.len,
        }
    }

    /// The request the task's first output byte belongs to.
    pub(crate) fn first_req(&self) -> usize {
        match &self.kind {
            Kind::Contig(segs) => segs[0].req,
            Kind::Rows { req, .. } => *req,
        }
    }
}

/// Limits on the tasks a plan is cut into.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Most source bytes a task reads.
    pub(crate) chunk: u64,
    /// Most output bytes a task delivers (the staging size for a sink).
    pub(crate) out: u64,
    /// Whether contiguous runs of different requests may share a task.
    pub(crate) merge_requests: bool,
    /// Whether the files are objects in object storage, where a request costs far more
    /// than a system call: strided slices are then read as spans of up to a chunk (gaps
    /// included) unless their rows reach [`REMOTE_ROW_READ`].
    pub(crate) remote: bool,
}

/// A contiguous run of source bytes before merging and chunking.
#[derive(Clone, Copy, Debug)]
struct Run {
    file: usize,
    offset: u64,
    len: u64,
    seg: Seg,
    /// Logical offset of the run in its tensor (for element alignment when converting).
    logical: u64,
    conv: Conversion,
}

/// The tasks of a load, described compactly: a unit per group of merged runs and per
/// piece of a strided slice, each producing its tasks on demand ([`Plan::task`]). The
/// plan's memory grows with the requests and the pieces of their tensors, never with their
/// bytes: a tensor of any size through a small staging buffer is a few units of many
/// tasks each.
pub(crate) struct Plan {
    /// Units sorted by file and offset.
    pub(crate) units: Vec<Unit>,
    /// The merged runs of the [`Shape::Group`] units, each group a range of them.
    runs: Vec<Run>,
}

/// Tasks of one file, in increasing offsets.
#[derive(Clone, Debug)]
pub(crate) struct Unit {
    pub(crate) file: usize,
    /// Where its first task starts.
    pub(crate) lo: u64,
    /// Where its last task ends.
    pub(crate) hi: u64,
    /// How many tasks.
    pub(crate) count: u64,
    shape: Shape,
}

#[derive(Clone, Debug)]
enum Shape {
    /// Runs `runs` of the plan, adjacent in the file, cut at `base + k × step`: the first
    /// task is `[lo, base)`, then `step` bytes each, the last one ending at `hi`.
    Group {
        runs: std::ops::Range<usize>,
        base: u64,
        step: u64,
    },
    /// Rows of `run` bytes, `stride` apart from `lo`, each cut into `per_row` tasks of at
    /// most `step` bytes; row `i` goes to `req`'s output at `out_off + i × run_out`.
    LongRows {
        req: usize,
        conv: Conversion,
        stride: u64,
        run: u64,
        out_off: u64,
        run_out: u64,
        per_row: u64,
        step: u64,
    },
    /// `rows` rows of `run` bytes, `stride` apart from `lo`, `per_task` rows a task (one
    /// read of the span, or with `each` one read a row).
    ShortRows {
        req: usize,
        conv: Conversion,
        stride: u64,
        run: u64,
        out_off: u64,
        run_out: u64,
        rows: u64,
        per_task: u64,
        each: bool,
    },
}

impl Plan {
    /// Tasks in all.
    pub(crate) fn task_count(&self) -> u64 {
        self.units
            .iter()
            .fold(0u64, |a, u| a.saturating_add(u.count))
    }

    /// Source bytes the tasks read (saturating).
    pub(crate) fn read_len(&self) -> u64 {
        self.units.iter().fold(0u64, |a, u| {
            let n = match u.shape {
                Shape::Group { .. } => u.hi - u.lo,
                Shape::LongRows { run, stride, .. } => {
                    // `hi - lo` spans the rows and the gaps between them.
                    let rows = (u.hi - u.lo - run) / stride + 1;
                    rows.saturating_mul(run)
                }
                Shape::ShortRows {
                    run,
                    stride,
                    rows,
                    each,
                    ..
                } => {
                    if each {
                        rows.saturating_mul(run)
                    } else {
                        // Each task reads from its first row's start to its last row's end.
                        (u.hi - u.lo).saturating_sub((u.count - 1).saturating_mul(stride - run))
                    }
                }
            };
            a.saturating_add(n)
        })
    }

    /// Task `k` (`k < unit.count`) of `unit`.
    pub(crate) fn task(&self, unit: &Unit, k: u64) -> Task {
        match unit.shape {
            Shape::Group {
                ref runs,
                base,
                step,
            } => {
                let cur = if k == 0 {
                    unit.lo
                } else {
                    base + (k - 1) * step
                };
                let next = unit.hi.min(base + k * step);
                let g = &self.runs[runs.clone()];
                let first = g[0];
                if first.conv != Conversion::None {
                    // Converted runs are single (never merged).
                    let (a, b) = first.conv.sizes();
                    return Task {
                        file: unit.file,
                        offset: cur,
                        len: next - cur,
                        kind: Kind::Rows {
                            req: first.seg.req,
                            out_off: first.seg.out_off + (cur - first.offset) / a * b,
                            conv: first.conv,
                            stride: next - cur,
                            run: next - cur,
                            count: 1,
                            each: false,
                        },
                    };
                }
                let mut segs = Vec::new();
                let mut i = g.partition_point(|r| r.offset + r.len <= cur);
                let mut pos = cur;
                while pos < next {
                    let r = g[i];
                    let take_end = (r.offset + r.len).min(next);
                    segs.push(Seg {
                        req: r.seg.req,
                        out_off: r.seg.out_off + (pos - r.offset),
                        len: take_end - pos,
                    });
                    pos = take_end;
                    i += 1;
                }
                Task {
                    file: unit.file,
                    offset: cur,
                    len: next - cur,
                    kind: Kind::Contig(segs),
                }
            }
            Shape::LongRows {
                req,
                conv,
                stride,
                run,
                out_off,
                run_out,
                per_row,
                step,
            } => {
                let (row, j) = (k / per_row, k % per_row);
                let at = j * step;
                let len = step.min(run - at);
                let (a, b) = conv.sizes();
                let out_off = out_off + row * run_out + at / a * b;
                let offset = unit.lo + row * stride + at;
                let kind = if conv == Conversion::None {
                    Kind::Contig(vec![Seg { req, out_off, len }])
                } else {
                    Kind::Rows {
                        req,
                        out_off,
                        conv,
                        stride: len,
                        run: len,
                        count: 1,
                        each: false,
                    }
                };
                Task {
                    file: unit.file,
                    offset,
                    len,
                    kind,
                }
            }
            Shape::ShortRows {
                req,
                conv,
                stride,
                run,
                out_off,
                run_out,
                rows,
                per_task,
                each,
            } => {
                let first = k * per_task;
                let n = per_task.min(rows - first);
                Task {
                    file: unit.file,
                    offset: unit.lo + first * stride,
                    len: (n - 1) * stride + run,
                    kind: Kind::Rows {
                        req,
                        out_off: out_off + first * run_out,
                        conv,
                        stride,
                        run,
                        count: n,
                        each,
                    },
                }
            }
        }
    }

    /// The request of the unit's first output byte.
    pub(crate) fn first_req(&self, unit: &Unit) -> usize {
        match unit.shape {
            Shape::Group { ref runs, .. } => self.runs[runs.start].seg.req,
            Shape::LongRows { req, .. } | Shape::ShortRows { req, .. } => req,
        }
    }
}

/// Appends `x` to `v`, growing it fallibly: the plan is as long as the requests and the
/// pieces of their tensors, which the input decides.
fn push<T>(v: &mut Vec<T>, x: T) -> std::result::Result<(), TryReserveError> {
    if v.len() == v.capacity() {
        v.try_reserve(v.len().max(16))?;
    }
    v.push(x);
    Ok(())
}

/// Cuts the resolved requests into a plan, its units sorted by file and offset; out of
/// memory is an `Io` error.
pub(crate) fn plan(loader: &Loader, res: &[Resolved], lim: Limits) -> Result<Plan> {
    let page = super::io::page_size();
    let mut runs: Vec<Run> = Vec::new();
    let mut units: Vec<Unit> = Vec::new();
    let oom = |_| super::source::out_of_memory(loader.path(), "the plan of a load");
    for (req, r) in res.iter().enumerate() {
        let t = &loader.opened.tensors[r.tensor];
        plan_request(t, r, req, lim, &mut runs, &mut units).map_err(oom)?;
    }
    // Merge neighbouring unconverted runs: same file, adjacent bytes, and (when allowed
    // across requests) whatever their destinations are; a task then scatters with one
    // vectored read. A group is a range of the sorted runs.
    runs.sort_by_key(|r| (r.file, r.offset));
    let mut start = 0;
    for i in 0..runs.len() {
        let r = runs[i];
        let joins = i > start
            && r.conv == Conversion::None
            && {
                let last = runs[i - 1];
                last.conv == Conversion::None
                    && last.file == r.file
                    && last.offset + last.len == r.offset
                    && (lim.merge_requests
                        || (last.seg.req == r.seg.req
                            && last.seg.out_off + last.seg.len == r.seg.out_off))
            }
            && i - start < 512;
        if !joins && i > start {
            push(&mut units, group(&runs, start..i, lim, page)).map_err(oom)?;
            start = i;
        }
    }
    if start < runs.len() {
        push(&mut units, group(&runs, start..runs.len(), lim, page)).map_err(oom)?;
    }
    units.sort_by_key(|u| (u.file, u.lo));
    Ok(Plan { units, runs })
}

/// Source bytes per task: `lim.chunk`, and no more than `lim.out` output bytes; a multiple
/// of the source element size `a` (and of the page size when at least a page), so that
/// cuts fall on element boundaries and, on a grid of file offsets, on block boundaries:
/// an `O_DIRECT` read then covers exactly its chunk, with no block read twice by two
/// neighbouring chunks.
fn step_of(conv: Conversion, lim: Limits, page: u64) -> u64 {
    let (a, b) = conv.sizes();
    let target = lim.chunk.min((lim.out / b).saturating_mul(a)).max(a);
    let step = if target >= page {
        target - target % page
    } else {
        target
    };
    (step - step % a).max(a)
}

/// The unit of a group of adjacent runs: cut on a grid of `step` in file offsets, moved
/// back to element boundaries when converting (the same distance for every cut, as the
/// step is a multiple of the element size).
fn group(runs: &[Run], range: std::ops::Range<usize>, lim: Limits, page: u64) -> Unit {
    let g = &runs[range.clone()];
    let first = g[0];
    let (lo, hi) = (first.offset, g[g.len() - 1].offset + g[g.len() - 1].len);
    let (a, _) = first.conv.sizes();
    let step = step_of(first.conv, lim, page);
    let grid = (lo / step + 1) * step;
    let back = (grid - first.offset + first.logical) % a;
    let mut base = grid - back;
    if base <= lo {
        base += step;
    }
    let count = if base < hi {
        (hi - 1 - base) / step + 2
    } else {
        1
    };
    Unit {
        file: first.file,
        lo,
        hi,
        count,
        shape: Shape::Group {
            runs: range,
            base,
            step,
        },
    }
}

/// The piece holding logical byte `at` of `t` (pieces are in logical order).
fn piece_at(t: &LoadTensor, at: u64) -> Option<&Piece> {
    let i = t.pieces.partition_point(|p| p.logical + p.len <= at);
    t.pieces.get(i)
}

/// Adds the runs of a contiguous logical range `[at, at + len)` of `t`, split at piece
/// boundaries.
fn contiguous(
    t: &LoadTensor,
    r: &Resolved,
    req: usize,
    mut at: u64,
    len: u64,
    mut out_off: u64,
    runs: &mut Vec<Run>,
) -> std::result::Result<(), TryReserveError> {
    let (a, b) = r.conv.sizes();
    let end = at + len;
    while at < end {
        let p = piece_at(t, at).expect("validated ranges lie inside the tensor");
        let take = end.min(p.logical + p.len) - at;
        let out_len = take / a * b;
        push(
            runs,
            Run {
                file: p.file,
                offset: p.offset + (at - p.logical),
                len: take,
                seg: Seg {
                    req,
                    out_off,
                    len: out_len,
                },
                logical: at,
                conv: r.conv,
            },
        )?;
        at += take;
        out_off += out_len;
    }
    Ok(())
}

fn plan_request(
    t: &LoadTensor,
    r: &Resolved,
    req: usize,
    lim: Limits,
    runs: &mut Vec<Run>,
    units: &mut Vec<Unit>,
) -> std::result::Result<(), TryReserveError> {
    if r.nbytes == 0 || t.nbytes == 0 {
        return Ok(());
    }
    if t.shape.is_empty() {
        return contiguous(t, r, req, 0, t.nbytes, 0, runs);
    }
    let k = r.dim;
    // None of these overflow: the tensor's byte length fits in 64 bits and is not zero, so
    // every partial product of its shape times the element size is at most that length.
    let outer: u64 = t.shape[..k].iter().product();
    let inner = crate::dtype::element_count(&t.shape[k + 1..])
        .and_then(|n| bytes_of(n, t.dtype.bits()))
        .expect("a part of a tensor's shape is no larger than the tensor");
    let dk = t.shape[k];
    let row = dk * inner;
    let first = r.start * inner;
    let run = (r.end - r.start) * inner;
    if outer == 1 || run == row {
        let len = if run == row { t.nbytes } else { run };
        let at = if run == row { 0 } else { first };
        return contiguous(t, r, req, at, len, 0, runs);
    }
    let (a, b) = r.conv.sizes();
    let run_out = run / a * b;
    let gap = row - run;
    let (row_read, span) = if lim.remote {
        (REMOTE_ROW_READ, lim.chunk)
    } else {
        (STRIDE_ROW_READ, STRIDE_SPAN)
    };
    let long = run >= row_read || run_out > lim.out;
    let each = !lim.remote && gap > STRIDE_MAX_GAP;
    let per_task = if each {
        (lim.out.min(lim.chunk) / run_out).max(1)
    } else {
        (lim.chunk.min(span) / row).min(lim.out / run_out).max(1)
    };
    let step = step_of(r.conv, lim, 1);
    // One unit per piece: the rows starting in it (a piece holds whole dimension-0 rows,
    // and a strided slice's rows never straddle one).
    let last = (outer - 1) * row + first;
    for p in &t.pieces {
        let p_end = p.logical + p.len;
        if p_end <= first || p.logical > last {
            continue;
        }
        let o0 = p.logical.saturating_sub(first).div_ceil(row);
        let o1 = outer.min((p_end - first).div_ceil(row));
        if o0 >= o1 {
            continue;
        }
        let rows = o1 - o0;
        let lo = p.offset + (o0 * row + first - p.logical);
        let hi = lo + (rows - 1) * row + run;
        let (count, shape) = if long {
            let per_row = run.div_ceil(step);
            (
                rows * per_row,
                Shape::LongRows {
                    req,
                    conv: r.conv,
                    stride: row,
                    run,
                    out_off: o0 * run_out,
                    run_out,
                    per_row,
                    step,
                },
            )
        } else {
            (
                rows.div_ceil(per_task),
                Shape::ShortRows {
                    req,
                    conv: r.conv,
                    stride: row,
                    run,
                    out_off: o0 * run_out,
                    run_out,
                    rows,
                    per_task,
                    each,
                },
            )
        };
        push(
            units,
            Unit {
                file: p.file,
                lo,
                hi,
                count,
                shape,
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::load::Request;

    /// Every task of `plan`, unit by unit.
    fn all_tasks(plan: &Plan) -> Vec<Task> {
        let mut out = Vec::new();
        for u in &plan.units {
            for k in 0..u.count {
                out.push(plan.task(u, k));
            }
        }
        out
    }

    #[test]
    fn the_tasks_a_plan_describes_deliver_each_output_byte_once() {
        let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/tiny-llama.safetensors");
        let loader = Loader::open(model).unwrap();
        let mut reqs = Vec::new();
        for t in loader.tensors() {
            let to = match t.dtype {
                DType::BF16 => DType::F32,
                _ => DType::BF16,
            };
            reqs.push(Request::new(&t.name));
            reqs.push(Request::new(&t.name).to(to));
            if t.shape.len() == 2 {
                for (dim, s, e) in [(0, 3, 50), (1, 1, 2), (1, 5, 60), (1, 0, 33)] {
                    let e = e.min(t.shape[dim]);
                    reqs.push(Request::new(&t.name).slice(dim, s, e));
                    reqs.push(Request::new(&t.name).slice(dim, s, e).to(to));
                }
            }
        }
        let res = resolve_all(&loader, &reqs).unwrap();
        for (chunk, out, merge, remote) in [
            (4096, u64::MAX, true, false),
            (4096, 4096, false, false),
            (8 << 20, 8192, false, false),
            (12288, u64::MAX, true, false),
            (12288, u64::MAX, true, true),
            (1 << 20, 8192, false, true),
        ] {
            let lim = Limits {
                chunk,
                out,
                merge_requests: merge,
                remote,
            };
            let plan = plan(&loader, &res, lim).unwrap();
            let tasks = all_tasks(&plan);
            assert_eq!(tasks.len() as u64, plan.task_count());
            let read: u64 = tasks.iter().map(Task::read_len).sum();
            assert_eq!(read, plan.read_len(), "{lim:?}");
            let mut got: Vec<(usize, u64, u64)> = Vec::new();
            for (u, t) in plan
                .units
                .iter()
                .flat_map(|u| std::iter::repeat_n(u, u.count as usize))
                .zip(&tasks)
            {
                assert!(
                    u.lo <= t.offset && t.offset + t.len <= u.hi,
                    "{t:?} in {u:?}"
                );
                assert!(t.len <= chunk.max(STRIDE_SPAN), "{t:?}");
                assert!(t.out_len() <= out, "{t:?}");
                match &t.kind {
                    Kind::Contig(segs) => {
                        assert_eq!(segs.iter().map(|s| s.len).sum::<u64>(), t.len);
                        got.extend(segs.iter().map(|s| (s.req, s.out_off, s.len)));
                    }
                    Kind::Rows { req, out_off, .. } => got.push((*req, *out_off, t.out_len())),
                }
            }
            got.sort();
            let mut next = vec![0u64; reqs.len()];
            for (req, off, len) in got {
                assert_eq!(off, next[req], "request {req} ({:?}), {lim:?}", reqs[req]);
                next[req] += len;
            }
            for (i, r) in res.iter().enumerate() {
                assert_eq!(next[i], r.nbytes, "request {i} ({:?})", reqs[i]);
            }
        }
    }
}
