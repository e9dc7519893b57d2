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
use super::source::{LoadTensor, Piece};
use super::{Loader, Request, Slice};
use crate::dtype::DType;
use crate::error::{Error, ErrorKind, Result};

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

/// Most bytes of a span read at once for a strided slice: small enough that the buffer
/// stays in the core's cache while the rows are copied out of it.
const STRIDE_SPAN: u64 = 1 << 20;

/// A request checked against the checkpoint.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub(crate) tensor: usize,
    pub(crate) dim: usize,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) conv: Conversion,
    pub(crate) dtype: DType,
    pub(crate) shape: Vec<u64>,
    pub(crate) nbytes: u64,
}

/// The `[start, end)` that `rank` of `world` gets of a dimension of length `len`: the
/// first `len % world` ranks get `len / world + 1` indices, the others `len / world`, in
/// rank order. `None` when `world` is 0 or `rank >= world`.
pub fn shard_range(len: u64, rank: u64, world: u64) -> Option<(u64, u64)> {
    if world == 0 || rank >= world {
        return None;
    }
    let (q, r) = (len / world, len % world);
    let start = rank * q + rank.min(r);
    let size = q + u64::from(rank < r);
    Some((start, start + size))
}

pub(crate) fn resolve(loader: &Loader, req: &Request) -> std::result::Result<Resolved, Error> {
    let inv = |msg: String| Error::new(ErrorKind::InvalidArgument, msg);
    let &tensor = loader
        .opened
        .by_name
        .get(&req.name)
        .ok_or_else(|| inv("no such tensor".to_string()))?;
    let t = &loader.opened.tensors[tensor];
    let to = req.dtype.unwrap_or(t.dtype);
    let conv = Conversion::between(t.dtype, to).ok_or_else(|| {
        Error::new(
            ErrorKind::Unsupported,
            format!(
                "cannot convert {} to {} while loading (supported: BF16/F16 to F32, F32 to \
                 BF16/F16, BF16 to F16 and F16 to BF16)",
                t.dtype, to
            ),
        )
    })?;
    let (dim, start, end) = match req.slice {
        None => (0, 0, t.shape.first().copied().unwrap_or(1)),
        Some(s) => {
            let dim = match s {
                Slice::Range { dim, .. } | Slice::Shard { dim, .. } => dim,
            };
            let Some(&len) = t.shape.get(dim) else {
                return Err(inv(format!(
                    "slice along dimension {dim}, but the tensor has {} dimension(s) (shape {:?})",
                    t.shape.len(),
                    t.shape
                )));
            };
            match s {
                Slice::Range { start, end, .. } => {
                    if start > end || end > len {
                        return Err(inv(format!(
                            "slice [{start}, {end}) of dimension {dim} is out of range (length \
                             {len}, shape {:?})",
                            t.shape
                        )));
                    }
                    (dim, start, end)
                }
                Slice::Shard { rank, world, .. } => {
                    let (a, b) = shard_range(len, rank, world).ok_or_else(|| {
                        inv(format!(
                            "shard rank {rank} of world {world} is not a valid shard"
                        ))
                    })?;
                    (dim, a, b)
                }
            }
        }
    };
    let mut shape = t.shape.clone();
    if let Some(d) = shape.get_mut(dim) {
        *d = end - start;
    }
    let elems: u64 = shape.iter().product();
    let bits = u64::from(t.dtype.bits());
    if bits % 8 != 0 && req.slice.is_some() {
        let inner: u64 = t.shape[dim + 1..].iter().product();
        if (inner * bits) % 8 != 0 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "a slice of this {} tensor along dimension {dim} does not fall on byte \
                     boundaries",
                    t.dtype
                ),
            ));
        }
    }
    let nbytes = (elems * u64::from(to.bits())).div_ceil(8);
    Ok(Resolved {
        tensor,
        dim,
        start,
        end,
        conv,
        dtype: to,
        shape,
        nbytes,
    })
}

/// Validates every request; on any failure, one error listing every invalid request.
pub(crate) fn resolve_all(loader: &Loader, reqs: &[Request]) -> Result<Vec<Resolved>> {
    let mut out = Vec::with_capacity(reqs.len());
    let mut bad: Vec<(usize, Error)> = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        match resolve(loader, r) {
            Ok(x) => out.push(x),
            Err(e) => bad.push((i, e)),
        }
    }
    if bad.is_empty() {
        return Ok(out);
    }
    Err(request_errors(loader, reqs, bad))
}

/// One error naming every invalid request (kind of the first one).
pub(crate) fn request_errors(loader: &Loader, reqs: &[Request], bad: Vec<(usize, Error)>) -> Error {
    let kind = bad[0].1.kind();
    let first = reqs[bad[0].0].name.clone();
    let n = bad.len();
    let text: Vec<String> = bad
        .into_iter()
        .map(|(i, e)| format!("request {i} ({:?}): {}", reqs[i].name, e.message()))
        .collect();
    let prefix = if n == 1 {
        String::new()
    } else {
        format!("{n} invalid requests, nothing read: ")
    };
    Error::new(kind, format!("{prefix}{}", text.join("; ")))
        .at(loader.path())
        .array(first)
}

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

/// Cuts the resolved requests into tasks, sorted by file and offset.
pub(crate) fn tasks(loader: &Loader, res: &[Resolved], lim: Limits) -> Vec<Task> {
    let page = super::io::page_size();
    let mut runs: Vec<Run> = Vec::new();
    let mut tasks: Vec<Task> = Vec::new();
    for (req, r) in res.iter().enumerate() {
        let t = &loader.opened.tensors[r.tensor];
        plan_request(t, r, req, lim, &mut runs, &mut tasks);
    }
    // Merge neighbouring unconverted runs: same file, adjacent bytes, and (when allowed
    // across requests) whatever their destinations are; a task then scatters with one
    // vectored read.
    runs.sort_by_key(|r| (r.file, r.offset));
    let mut groups: Vec<Vec<Run>> = Vec::new();
    for r in runs {
        if r.conv == Conversion::None {
            if let Some(g) = groups.last_mut() {
                let last = g.last().expect("groups are never empty");
                if last.conv == Conversion::None
                    && last.file == r.file
                    && last.offset + last.len == r.offset
                    && (lim.merge_requests
                        || (last.seg.req == r.seg.req
                            && last.seg.out_off + last.seg.len == r.seg.out_off))
                    && g.len() < 512
                {
                    g.push(r);
                    continue;
                }
            }
        }
        groups.push(vec![r]);
    }
    for g in groups {
        chunk_group(&g, lim, page, &mut tasks);
    }
    tasks.sort_by_key(|t| (t.file, t.offset));
    tasks
}

/// Splits a group of adjacent runs into tasks of at most `lim.chunk` source bytes (and
/// `lim.out` output bytes), cutting on page boundaries of the file where possible and on
/// element boundaries when converting.
fn chunk_group(g: &[Run], lim: Limits, page: u64, tasks: &mut Vec<Task>) {
    let first = g[0];
    let conv = first.conv;
    let (a, b) = conv.sizes();
    let end = g.last().map(|r| r.offset + r.len).expect("non-empty");
    // Source bytes per task: the output limit scaled back to source bytes.
    let target = lim.chunk.min((lim.out / b).saturating_mul(a)).max(a);
    let mut cur = first.offset;
    let mut ri = 0usize; // current run
    while cur < end {
        // Cut on a grid of the chunk size in file offsets (a page multiple), so that the
        // chunks of a long run start and end on block boundaries: an O_DIRECT read then
        // covers exactly its chunk, with no block read twice by two neighbouring chunks.
        let step = if target >= page {
            target - target % page
        } else {
            target
        };
        let mut next = end.min((cur / step + 1) * step);
        if next < end && a > 1 {
            // Element boundary relative to the run's logical start (runs hold whole
            // elements, so `end` is one).
            next -= (next - first.offset + first.logical) % a;
            if next <= cur {
                let far = end.min(cur + target);
                next = far - (far - first.offset + first.logical) % a;
                if next <= cur {
                    next = end;
                }
            }
        }
        if conv != Conversion::None {
            // Converted runs are single (never merged).
            let out_off = first.seg.out_off + (cur - first.offset) / a * b;
            tasks.push(Task {
                file: first.file,
                offset: cur,
                len: next - cur,
                kind: Kind::Rows {
                    req: first.seg.req,
                    out_off,
                    conv,
                    stride: next - cur,
                    run: next - cur,
                    count: 1,
                    each: false,
                },
            });
        } else {
            let mut segs = Vec::new();
            let mut pos = cur;
            while pos < next {
                let r = g[ri];
                let r_end = r.offset + r.len;
                let take_end = r_end.min(next);
                segs.push(Seg {
                    req: r.seg.req,
                    out_off: r.seg.out_off + (pos - r.offset),
                    len: take_end - pos,
                });
                pos = take_end;
                if pos == r_end {
                    ri += 1;
                }
            }
            tasks.push(Task {
                file: first.file,
                offset: cur,
                len: next - cur,
                kind: Kind::Contig(segs),
            });
        }
        cur = next;
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
) {
    let (a, b) = r.conv.sizes();
    let end = at + len;
    while at < end {
        let p = piece_at(t, at).expect("validated ranges lie inside the tensor");
        let take = end.min(p.logical + p.len) - at;
        let out_len = take / a * b;
        runs.push(Run {
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
        });
        at += take;
        out_off += out_len;
    }
}

fn plan_request(
    t: &LoadTensor,
    r: &Resolved,
    req: usize,
    lim: Limits,
    runs: &mut Vec<Run>,
    tasks: &mut Vec<Task>,
) {
    if r.nbytes == 0 || t.nbytes == 0 {
        return;
    }
    let bits = u64::from(t.dtype.bits());
    if t.shape.is_empty() {
        contiguous(t, r, req, 0, t.nbytes, 0, runs);
        return;
    }
    let k = r.dim;
    let outer: u64 = t.shape[..k].iter().product();
    let inner = t.shape[k + 1..].iter().product::<u64>() * bits / 8;
    let dk = t.shape[k];
    let row = dk * inner;
    let first = r.start * inner;
    let run = (r.end - r.start) * inner;
    if outer == 1 || run == row {
        let len = if run == row { t.nbytes } else { run };
        let at = if run == row { 0 } else { first };
        contiguous(t, r, req, at, len, 0, runs);
        return;
    }
    let (a, b) = r.conv.sizes();
    let run_out = run / a * b;
    let gap = row - run;
    if run >= STRIDE_ROW_READ || run_out > lim.out {
        for o in 0..outer {
            contiguous(t, r, req, o * row + first, run, o * run_out, runs);
        }
        return;
    }
    let each = gap > STRIDE_MAX_GAP;
    let per_task = if each {
        (lim.out.min(lim.chunk) / run_out).max(1)
    } else {
        (lim.chunk.min(STRIDE_SPAN) / row)
            .min(lim.out / run_out)
            .max(1)
    };
    let mut o = 0u64;
    while o < outer {
        let at = o * row + first;
        let p = piece_at(t, at).expect("validated ranges lie inside the tensor");
        // Rows of one group stay inside one piece (a piece holds whole dimension-0 rows,
        // and a strided slice's rows never straddle one).
        let in_piece = (p.logical + p.len - at + gap) / row;
        let n = per_task.min(outer - o).min(in_piece.max(1));
        tasks.push(Task {
            file: p.file,
            offset: p.offset + (at - p.logical),
            len: (n - 1) * row + run,
            kind: Kind::Rows {
                req,
                out_off: o * run_out,
                conv: r.conv,
                stride: row,
                run,
                count: n,
                each,
            },
        });
        o += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_dimension_with_the_first_ranks_one_longer() {
        assert_eq!(shard_range(10, 0, 3), Some((0, 4)));
        assert_eq!(shard_range(10, 1, 3), Some((4, 7)));
        assert_eq!(shard_range(10, 2, 3), Some((7, 10)));
        assert_eq!(shard_range(2, 3, 4), Some((2, 2)));
        assert_eq!(shard_range(5, 0, 0), None);
        assert_eq!(shard_range(5, 2, 2), None);
        for len in 0..20 {
            for world in 1..6 {
                let mut next = 0;
                for rank in 0..world {
                    let (s, e) = shard_range(len, rank, world).unwrap();
                    assert_eq!(s, next);
                    assert!(e - s == len / world || e - s == len / world + 1);
                    next = e;
                }
                assert_eq!(next, len);
            }
        }
    }
}
