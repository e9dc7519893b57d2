//! Deletion bitmaps (`deleted_<name>.npkb`): which rows of an array are still active.
//!
//! Current layout: `u64 total_rows, u64 deleted_count, ceil(total_rows / 64) x u64 words`;
//! the older layout is the words alone. Row `r` is active when bit `r % 64` of word `r / 64`
//! is set.

use std::path::Path;

use crate::error::{Error, Result};

/// The active rows of an array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitmap {
    total_rows: u64,
    words: Vec<u64>,
}

fn words_for(rows: u64) -> u64 {
    rows.div_ceil(64)
}

impl Bitmap {
    /// Every one of `rows` rows active.
    pub fn all_active(rows: u64) -> Bitmap {
        let mut words = vec![u64::MAX; words_for(rows) as usize];
        if rows % 64 != 0 {
            if let Some(last) = words.last_mut() {
                *last = (1u64 << (rows % 64)) - 1;
            }
        }
        Bitmap {
            total_rows: rows,
            words,
        }
    }

    /// Decodes `bytes` (the content of `path`) for an array of `physical_rows` rows.
    ///
    /// The length decides the layout: `16 + 8 * ceil(rows / 64)` bytes with a header whose
    /// row count matches, or `8 * ceil(rows / 64)` bytes of words alone. Anything else is
    /// refused. The caller has checked the file length against the array before reading it,
    /// so `bytes` is never larger than the array warrants.
    ///
    /// The active rows are read as NumPack 0.7's `load` reads them: the bits decide, except
    /// that a header counting 0 deleted rows means every row is active (NumPack then does
    /// not look at the bits). The header's count is not checked against the bits.
    pub fn decode(bytes: &[u8], physical_rows: u64, path: &Path) -> Result<Bitmap> {
        let words_len = words_for(physical_rows)
            .checked_mul(8)
            .ok_or_else(|| Error::malformed(path, "row count overflows"))?;
        let header_len = words_len + 16;
        let len = bytes.len() as u64;
        let (words_bytes, header) = if len == header_len {
            let total = u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes"));
            let deleted = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
            (&bytes[16..], Some((total, deleted)))
        } else if len == words_len {
            (bytes, None)
        } else {
            return Err(Error::malformed(
                path,
                format!(
                    "deletion bitmap is {len} bytes; an array of {physical_rows} rows needs \
                     {header_len} (or {words_len} in the old layout)"
                ),
            ));
        };
        let words: Vec<u64> = words_bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let mut bitmap = Bitmap {
            total_rows: physical_rows,
            words,
        };
        bitmap.clear_tail();
        if let Some((total, deleted)) = header {
            if total != physical_rows {
                return Err(Error::malformed(
                    path,
                    format!(
                        "deletion bitmap counts {total} rows but the array has {physical_rows}"
                    ),
                ));
            }
            // NumPack 0.7's `load` consults the bits only when the header counts deleted
            // rows; with a count of 0 it reads every row, whatever the bits say. When the
            // count is not 0 the bits alone decide, whether or not the count agrees with
            // them (NumPack 0.7.0's `append` after a `drop` resets the bits of the last
            // word and keeps the count). Read as NumPack reads.
            if deleted == 0 {
                return Ok(Bitmap::all_active(physical_rows));
            }
        }
        Ok(bitmap)
    }

    /// Bits past the last row mean nothing; keep them clear so counts stay exact.
    fn clear_tail(&mut self) {
        let rows = self.total_rows;
        if rows % 64 != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << (rows % 64)) - 1;
            }
        }
    }

    /// Encodes the current layout (with header).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.words.len() * 8);
        out.extend_from_slice(&self.total_rows.to_le_bytes());
        out.extend_from_slice(&self.deleted_count().to_le_bytes());
        for w in &self.words {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Physical rows covered.
    pub fn total_rows(&self) -> u64 {
        self.total_rows
    }

    /// Rows still active.
    pub fn active_count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Rows deleted.
    pub fn deleted_count(&self) -> u64 {
        self.total_rows - self.active_count()
    }

    /// Whether physical row `row` is active.
    pub fn is_active(&self, row: u64) -> bool {
        row < self.total_rows
            && self
                .words
                .get((row / 64) as usize)
                .is_some_and(|w| w >> (row % 64) & 1 == 1)
    }

    /// Runs of consecutive active rows as `(first_row, row_count)`, in order.
    pub fn active_runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut row = 0;
        while row < self.total_rows {
            let w = self.words[(row / 64) as usize] >> (row % 64);
            // Jump over whole words quickly.
            if w == 0 {
                row = (row / 64 + 1) * 64;
                continue;
            }
            let skip = u64::from(w.trailing_zeros());
            row += skip;
            let ones = u64::from((self.words[(row / 64) as usize] >> (row % 64)).trailing_ones());
            let ones = ones.min(self.total_rows - row);
            match runs.last_mut() {
                Some((start, len)) if *start + *len == row => *len += ones,
                _ => runs.push((row, ones)),
            }
            row += ones;
        }
        runs
    }

    /// Adds `rows` active rows at the end.
    pub fn extend_active(&mut self, rows: u64) {
        let old = self.total_rows;
        self.total_rows += rows;
        self.words.resize(words_for(self.total_rows) as usize, 0);
        for r in old..self.total_rows {
            self.words[(r / 64) as usize] |= 1 << (r % 64);
        }
    }

    /// Deletes the rows at the given *logical* indices (positions among active rows).
    /// Returns an error message naming the first index out of range.
    pub fn delete_logical(&mut self, indices: &[u64]) -> std::result::Result<(), String> {
        let active = self.active_count();
        let mut sorted: Vec<u64> = indices.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if let Some(&bad) = sorted.last().filter(|&&i| i >= active) {
            return Err(format!(
                "row index {bad} out of range: the array has {active} rows"
            ));
        }
        let mut physical = Vec::with_capacity(sorted.len());
        let mut want = sorted.iter().peekable();
        let mut logical = 0u64;
        'outer: for (start, len) in self.active_runs() {
            while let Some(&&i) = want.peek() {
                if i >= logical + len {
                    break;
                }
                physical.push(start + (i - logical));
                want.next();
                if want.peek().is_none() {
                    break 'outer;
                }
            }
            logical += len;
        }
        for r in physical {
            self.words[(r / 64) as usize] &= !(1 << (r % 64));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_counts() {
        let mut b = Bitmap::all_active(130);
        assert_eq!(b.active_runs(), vec![(0, 130)]);
        b.delete_logical(&[0, 64, 129]).unwrap();
        assert_eq!(b.active_count(), 127);
        assert_eq!(b.active_runs(), vec![(1, 63), (65, 64)]);
        // Logical index 0 is now physical row 1.
        b.delete_logical(&[0]).unwrap();
        assert!(!b.is_active(1));
        assert!(b.delete_logical(&[126]).is_err());
        let enc = b.encode();
        assert_eq!(Bitmap::decode(&enc, 130, Path::new("b")).unwrap(), b);
        assert_eq!(Bitmap::decode(&enc[16..], 130, Path::new("b")).unwrap(), b);
        assert!(Bitmap::decode(&enc[..20], 130, Path::new("b")).is_err());
        b.extend_active(3);
        // Row 129 stays deleted; the new rows 130..133 are active.
        assert_eq!(b.active_runs()[1..], [(65, 64), (130, 3)]);
    }
}
