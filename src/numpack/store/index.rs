//! Finding arrays by name without a second copy of every name: the positions of
//! `NumPack::arrays` in a [`Positions`] table, hashed by name, the names compared where the
//! arrays keep them.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use super::Array;
use crate::positions::Positions;

/// Positions in `NumPack::arrays`, by the array's name.
#[derive(Debug)]
pub(super) struct NameIndex {
    positions: Positions,
    hasher: RandomState,
}

impl NameIndex {
    /// An empty index with room for `n` names.
    pub(super) fn with_capacity(n: usize) -> NameIndex {
        NameIndex {
            positions: Positions::with_capacity(n),
            hasher: RandomState::new(),
        }
    }

    /// The index of `arrays`, each name once.
    pub(super) fn of(arrays: &[Array]) -> NameIndex {
        let mut index = NameIndex::with_capacity(arrays.len());
        for i in 0..arrays.len() {
            index.insert(i, arrays);
        }
        index
    }

    /// The position of the array `name` in `arrays` (the arrays this index was built on).
    pub(super) fn get(&self, name: &str, arrays: &[Array]) -> Option<usize> {
        self.positions.get(self.hasher.hash_one(name), |i| {
            arrays[i].record.name == name
        })
    }

    /// Adds `arrays[i]`, whose name is not in the index yet.
    pub(super) fn insert(&mut self, i: usize, arrays: &[Array]) {
        let h = self.hasher.hash_one(&arrays[i].record.name);
        self.positions.insert(h, i);
    }

    /// Empties the index.
    pub(super) fn clear(&mut self) {
        *self = NameIndex::with_capacity(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::numpack::store::{make_record, Storage};

    #[test]
    fn every_name_is_found_and_no_other() {
        let mut arrays = Vec::new();
        let mut index = NameIndex::with_capacity(0);
        for i in 0..1000 {
            let name = format!("w{i}");
            let (r, _) =
                make_record(&name, format!("data_{name}.npkd"), DType::U8, &[1], 0).unwrap();
            arrays.push(Array::new(r, DType::U8, Storage::Plain));
            index.insert(i, &arrays);
        }
        for i in 0..1000 {
            assert_eq!(index.get(&format!("w{i}"), &arrays), Some(i));
            assert_eq!(index.get(&format!("x{i}"), &arrays), None);
        }
        assert_eq!(NameIndex::of(&arrays).get("w999", &arrays), Some(999));
        index.clear();
        assert_eq!(index.get("w1", &arrays), None);
    }
}
