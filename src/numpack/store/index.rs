//! Finding arrays by name without a second copy of every name: an open-addressing table
//! of array positions, hashed by name (keyed per process, as `HashMap` is), the names
//! compared where the arrays keep them. Each slot holds the position and 32 bits of the
//! name's hash, so that a probe reads an array's name only when those match: eight bytes a
//! slot, at most half full, instead of a map entry and a copy of the name.

use std::hash::BuildHasher;

use std::collections::hash_map::RandomState;

use super::Array;

/// No array in this slot.
const EMPTY: u64 = 0;

/// The slot of array `i` whose name hashes to `h`: the high half of the hash, and `i + 1`.
fn slot(i: u32, h: u64) -> u64 {
    (h & !0xffff_ffff) | (u64::from(i) + 1)
}

/// The array position a slot holds.
fn position(s: u64) -> usize {
    (s & 0xffff_ffff) as usize - 1
}

/// Where the probe for hash `h` (or a slot holding it) starts: from the high half, the one
/// a slot keeps.
fn start(h: u64, mask: usize) -> usize {
    (h >> 32) as usize & mask
}

/// Whether a slot's hash bits are those of `h`.
fn same_tag(s: u64, h: u64) -> bool {
    (s ^ h) & !0xffff_ffff == 0
}

/// Positions in `NumPack::arrays`, by the array's name.
pub(super) struct NameIndex {
    slots: Vec<u64>,
    len: usize,
    hasher: RandomState,
}

impl std::fmt::Debug for NameIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameIndex").field("len", &self.len).finish()
    }
}

impl NameIndex {
    /// An empty index with room for `n` names.
    pub(super) fn with_capacity(n: usize) -> NameIndex {
        NameIndex {
            slots: vec![EMPTY; table_size(n)],
            len: 0,
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

    fn hash(&self, name: &str) -> u64 {
        self.hasher.hash_one(name)
    }

    /// The position of the array `name` in `arrays` (the arrays this index was built on).
    pub(super) fn get(&self, name: &str, arrays: &[Array]) -> Option<usize> {
        let h = self.hash(name);
        let mask = self.slots.len() - 1;
        let mut at = start(h, mask);
        loop {
            match self.slots[at] {
                EMPTY => return None,
                s if same_tag(s, h) && arrays[position(s)].record.name == name => {
                    return Some(position(s))
                }
                _ => at = (at + 1) & mask,
            }
        }
    }

    /// Adds `arrays[i]`, whose name is not in the index yet.
    pub(super) fn insert(&mut self, i: usize, arrays: &[Array]) {
        let i = u32::try_from(i)
            .ok()
            .filter(|&i| i < u32::MAX)
            .expect("fewer than 2^32 - 1 arrays");
        if (self.len + 1) * 2 > self.slots.len() {
            let old = std::mem::replace(&mut self.slots, vec![EMPTY; table_size(self.len + 1)]);
            self.len = 0;
            for s in old.into_iter().filter(|&s| s != EMPTY) {
                self.place(s);
            }
        }
        self.place(slot(i, self.hash(&arrays[i as usize].record.name)));
    }

    /// Puts a slot in the first free place from where its hash starts.
    fn place(&mut self, s: u64) {
        let mask = self.slots.len() - 1;
        let mut at = start(s, mask);
        while self.slots[at] != EMPTY {
            at = (at + 1) & mask;
        }
        self.slots[at] = s;
        self.len += 1;
    }

    /// Empties the index.
    pub(super) fn clear(&mut self) {
        *self = NameIndex::with_capacity(0);
    }
}

/// A power of two at least twice `n` (and at least 8): the table stays at most half full.
fn table_size(n: usize) -> usize {
    n.saturating_mul(2).max(8).next_power_of_two()
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
