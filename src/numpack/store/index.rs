//! Finding arrays by name without a second copy of every name: an open-addressing table
//! of array positions, hashed by name (keyed per process, as `HashMap` is), the names
//! compared where the arrays keep them. Four bytes an array at most half full, instead of a
//! map entry and a copy of the name.

use std::hash::BuildHasher;

use std::collections::hash_map::RandomState;

use super::Array;

/// No array in this slot.
const EMPTY: u32 = u32::MAX;

/// Positions in `NumPack::arrays`, by the array's name.
pub(super) struct NameIndex {
    slots: Vec<u32>,
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

    fn start(&self, name: &str) -> usize {
        (self.hasher.hash_one(name) as usize) & (self.slots.len() - 1)
    }

    /// The position of the array `name` in `arrays` (the arrays this index was built on).
    pub(super) fn get(&self, name: &str, arrays: &[Array]) -> Option<usize> {
        let mask = self.slots.len() - 1;
        let mut at = self.start(name);
        loop {
            match self.slots[at] {
                EMPTY => return None,
                i if arrays[i as usize].record.name == name => return Some(i as usize),
                _ => at = (at + 1) & mask,
            }
        }
    }

    /// Adds `arrays[i]`, whose name is not in the index yet.
    pub(super) fn insert(&mut self, i: usize, arrays: &[Array]) {
        let i = u32::try_from(i).expect("fewer than 2^32 arrays");
        if (self.len + 1) * 2 > self.slots.len() {
            let old = std::mem::replace(&mut self.slots, vec![EMPTY; table_size(self.len + 1)]);
            self.len = 0;
            for j in old.into_iter().filter(|&j| j != EMPTY) {
                self.place(j, arrays);
            }
        }
        self.place(i, arrays);
    }

    fn place(&mut self, i: u32, arrays: &[Array]) {
        let mask = self.slots.len() - 1;
        let mut at = self.start(&arrays[i as usize].record.name);
        while self.slots[at] != EMPTY {
            at = (at + 1) & mask;
        }
        self.slots[at] = i;
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
