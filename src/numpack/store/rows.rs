//! Operations on rows chosen by index: read some rows, drop them, replace them. Indices may
//! be negative (counting from the end) or a slice with Python's rules; they are resolved
//! against the array as the store holds it in the same call that acts on them, never in
//! one call and used in another. For a change, the lock's check (see `generation`) makes
//! sure the store on disk is still the one the indices were resolved against.

use crate::dtype::{self, DType};
use crate::error::{Error, ErrorKind, Result};

use super::mutate::ArrayInput;
use super::NumPack;

/// Rows of an array, as it reads now (rows after deletions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows<'a> {
    /// Row indices, in order (repeats allowed where the operation allows them); a negative
    /// index counts from the end (`-1` is the last row).
    Indices(&'a [i64]),
    /// Row indices as [`Rows::Indices`], those that name no row skipped instead of refused
    /// (NumPack's `drop`, which ignores them).
    Existing(&'a [i64]),
    /// `start:stop:step` with Python's rules: bounds default by the sign of `step`, negative
    /// ones count from the end, out-of-range ones are clipped; `step` must not be 0.
    Slice {
        /// First row (default: the first, or the last for a negative step).
        start: Option<i64>,
        /// Row the slice stops before (default: past the end in the step's direction).
        stop: Option<i64>,
        /// Distance between rows, not 0.
        step: i64,
    },
}

/// Why rows could not be resolved against an array of `len` rows.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unresolved {
    /// The index given is not a row of the array.
    OutOfRange { index: i64, len: u64 },
    /// A slice step of 0.
    ZeroStep,
}

impl Unresolved {
    pub(crate) fn message(&self) -> String {
        match self {
            Unresolved::OutOfRange { index, len } => {
                format!("row index {index} is out of range for an array of {len} rows")
            }
            Unresolved::ZeroStep => "slice step cannot be zero".to_string(),
        }
    }
}

/// The row numbers `rows` names in an array of `len` rows.
pub(crate) fn resolve(rows: Rows<'_>, len: u64) -> std::result::Result<Vec<u64>, Unresolved> {
    let n = i128::from(len);
    let row = |i: i64| {
        let j = if i < 0 {
            n + i128::from(i)
        } else {
            i128::from(i)
        };
        (0..n).contains(&j).then_some(j as u64)
    };
    match rows {
        Rows::Existing(idx) => Ok(idx.iter().filter_map(|&i| row(i)).collect()),
        Rows::Indices(idx) => idx
            .iter()
            .map(|&i| row(i).ok_or(Unresolved::OutOfRange { index: i, len }))
            .collect(),
        Rows::Slice { start, stop, step } => {
            if step == 0 {
                return Err(Unresolved::ZeroStep);
            }
            let step = i128::from(step);
            // Python's slice.indices.
            let (lower, upper) = if step < 0 { (-1, n - 1) } else { (0, n) };
            let bound = |b: Option<i64>, default: i128| match b {
                None => default,
                Some(b) => {
                    let b = i128::from(b);
                    if b < 0 {
                        (b + n).max(lower)
                    } else {
                        b.min(upper)
                    }
                }
            };
            let start = bound(start, if step < 0 { upper } else { lower });
            let stop = bound(stop, if step < 0 { lower } else { upper });
            let mut out = Vec::new();
            let mut i = start;
            while (step > 0 && i < stop) || (step < 0 && i > stop) {
                out.push(i as u64);
                i += step;
            }
            Ok(out)
        }
    }
}

impl NumPack {
    /// The rows `rows` names in the array `name` as the store holds it now, and the
    /// array's logical row count. A 0-d array has no rows.
    fn resolve_in(&self, name: &str, rows: Rows<'_>) -> Result<Vec<u64>> {
        self.resolve_rows(name, rows)?.map_err(|u| {
            Error::invalid_argument(u.message())
                .at(&self.dir)
                .array(name)
        })
    }

    /// [`NumPack::resolve_in`], an index out of range told apart (the C API reports it with
    /// its own status).
    pub(crate) fn resolve_rows(
        &self,
        name: &str,
        rows: Rows<'_>,
    ) -> Result<std::result::Result<Vec<u64>, Unresolved>> {
        let a = self.get_listed(name)?;
        let Some(&len) = a.logical_shape().first() else {
            return Err(
                Error::new(ErrorKind::Unsupported, "a 0-d array has no rows")
                    .at(&self.dir)
                    .array(name),
            );
        };
        Ok(resolve(rows, len))
    }

    /// Rows of an array (NumPack's `getitem`): its dtype, the shape of the rows taken
    /// (`[rows taken, row shape...]`) and their bytes, copied, in the order given. The
    /// indices are resolved against the same state the bytes are read from.
    pub fn get_rows(&self, name: &str, rows: Rows<'_>) -> Result<(DType, Vec<u64>, Vec<u8>)> {
        let picked = self.resolve_in(name, rows)?;
        self.gather_rows(name, &picked)
    }

    /// The rows `picked` (resolved) of the array `name`: dtype, shape and bytes.
    pub(crate) fn gather_rows(
        &self,
        name: &str,
        picked: &[u64],
    ) -> Result<(DType, Vec<u64>, Vec<u8>)> {
        let v = self.view(name)?;
        let row = row_bytes(v.dtype, v.shape);
        let mut data = Vec::with_capacity(picked.len().saturating_mul(row));
        for &r in picked {
            let at = r as usize * row;
            data.extend_from_slice(&v.data[at..at + row]);
        }
        let mut shape = v.shape.to_vec();
        shape[0] = picked.len() as u64;
        Ok((v.dtype, shape, data))
    }

    /// Deletes rows given by index (negative ones count from the end) or by slice:
    /// [`NumPack::drop_rows`] with the indices resolved in the same call. The change's
    /// check under the lock fails with `Busy` if another writer changed the store since
    /// this handle read it, so the rows dropped are those the indices named.
    pub fn drop_rows_at(&mut self, name: &str, rows: Rows<'_>) -> Result<()> {
        let picked = self.resolve_in(name, rows)?;
        self.drop_rows(name, &picked)
    }

    /// Overwrites rows of existing arrays (NumPack's `replace`): each value, named as its
    /// array, holds the new rows (`[rows named, row shape...]`, or one row, given with or
    /// without its leading axis of 1, written to every row named) in the array's dtype.
    /// Each array is saved whole with the rows replaced, all in one commit, as
    /// [`NumPack::save`] does; its dropped rows stay dropped. Indices are resolved in the
    /// same call against the state the rewrite starts from; the lock's check refuses a
    /// store changed by another writer since.
    pub fn replace_rows(&mut self, values: &[ArrayInput<'_>], rows: Rows<'_>) -> Result<()> {
        let mut rebuilt: Vec<(DType, Vec<u64>, Vec<u8>)> = Vec::with_capacity(values.len());
        for v in values {
            let picked = self.resolve_in(v.name, rows)?;
            let view = self.view(v.name)?;
            let row_shape = &view.shape[1..];
            let fits = v.shape.get(1..) == Some(row_shape)
                && (v.shape[0] == picked.len() as u64 || v.shape[0] == 1);
            if v.dtype != view.dtype || !(fits || v.shape == row_shape) {
                return Err(Error::invalid_argument(format!(
                    "cannot write {} values of shape {:?} into {} rows of an array of {} whose \
                     rows have shape {row_shape:?}",
                    v.dtype,
                    v.shape,
                    picked.len(),
                    view.dtype
                ))
                .at(&self.dir)
                .array(v.name));
            }
            v.check().map_err(|e| e.at(&self.dir))?;
            let row = row_bytes(view.dtype, view.shape);
            let mut data = view.data.to_vec();
            let one_row = v.data.len() == row;
            for (k, &r) in picked.iter().enumerate() {
                let from = if one_row { 0 } else { k * row };
                let at = r as usize * row;
                data[at..at + row].copy_from_slice(&v.data[from..from + row]);
            }
            rebuilt.push((view.dtype, view.shape.to_vec(), data));
        }
        let inputs: Vec<ArrayInput<'_>> = values
            .iter()
            .zip(&rebuilt)
            .map(|(v, (dtype, shape, data))| ArrayInput {
                name: v.name,
                dtype: *dtype,
                shape,
                data,
            })
            .collect();
        self.save(&inputs)
    }
}

/// Bytes of one row of an array of `dtype` and logical `shape` (at least one dimension).
fn row_bytes(dtype: DType, shape: &[u64]) -> usize {
    let elems = dtype::element_count(&shape[1..]).unwrap_or(0);
    dtype.byte_len(elems).unwrap_or(0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(start: Option<i64>, stop: Option<i64>, step: i64, n: u64) -> Vec<u64> {
        resolve(Rows::Slice { start, stop, step }, n).unwrap()
    }

    #[test]
    fn indices_out_of_range_are_refused_or_skipped() {
        let idx = [-1, 7, -6, 0, 5];
        assert_eq!(
            resolve(Rows::Indices(&idx), 5),
            Err(Unresolved::OutOfRange { index: 7, len: 5 })
        );
        assert_eq!(resolve(Rows::Existing(&idx), 5), Ok(vec![4, 0]));
        assert_eq!(
            resolve(Rows::Existing(&[i64::MIN, i64::MAX]), 5),
            Ok(vec![])
        );
    }

    #[test]
    fn slices_follow_python() {
        assert_eq!(py(None, None, 1, 5), [0, 1, 2, 3, 4]);
        assert_eq!(py(None, None, -1, 5), [4, 3, 2, 1, 0]);
        assert_eq!(py(Some(-2), None, 1, 5), [3, 4]);
        assert_eq!(py(Some(1), Some(100), 2, 5), [1, 3]);
        assert_eq!(py(Some(-100), Some(2), 1, 5), [0, 1]);
        assert_eq!(py(Some(3), Some(-100), -1, 5), [3, 2, 1, 0]);
        assert_eq!(py(Some(10), None, -2, 5), [4, 2, 0]);
        assert_eq!(py(None, None, 1, 0), Vec::<u64>::new());
        assert_eq!(
            resolve(
                Rows::Slice {
                    start: None,
                    stop: None,
                    step: 0
                },
                3
            ),
            Err(Unresolved::ZeroStep)
        );
    }

    #[test]
    fn negative_indices_count_from_the_end() {
        assert_eq!(
            resolve(Rows::Indices(&[-1, 0, -3, 2]), 3).unwrap(),
            [2, 0, 0, 2]
        );
        assert_eq!(
            resolve(Rows::Indices(&[3]), 3),
            Err(Unresolved::OutOfRange { index: 3, len: 3 })
        );
        assert_eq!(
            resolve(Rows::Indices(&[i64::MIN]), 3),
            Err(Unresolved::OutOfRange {
                index: i64::MIN,
                len: 3
            })
        );
    }
}
