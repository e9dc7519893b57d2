//! Requests checked against the checkpoint: the tensor, the slice (a range or a shard),
//! the dtype to deliver, and the output's shape and length.

use super::convert::Conversion;
use super::{Loader, Request, Slice};
use crate::dtype::DType;
use crate::error::{Error, ErrorKind, Result};

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
    // The sliced shape has no more elements than the tensor, whose byte length fits in 64
    // bits; the output's length in another dtype may not (F16 to F32 doubles it).
    let too_large = || {
        inv(format!(
            "the output ({to} {shape:?}) would be more than 2^64 bytes"
        ))
    };
    let elems = crate::dtype::element_count(&shape).ok_or_else(too_large)?;
    let bits = t.dtype.bits();
    if bits % 8 != 0 && req.slice.is_some() {
        let inner = crate::dtype::element_count(&t.shape[dim + 1..]).ok_or_else(too_large)?;
        if (u128::from(inner) * u128::from(bits)) % 8 != 0 {
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
    let nbytes = bytes_of(elems, to.bits()).ok_or_else(too_large)?;
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

/// The bytes `elems` elements of `bits` bits take (rounded up to a whole byte), `None`
/// past `u64::MAX`.
pub(crate) fn bytes_of(elems: u64, bits: u32) -> Option<u64> {
    u64::try_from((u128::from(elems) * u128::from(bits)).div_ceil(8)).ok()
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
