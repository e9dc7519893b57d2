//! One small hash table for npkio's lookups by name: positions in a list the caller keeps
//! (the arrays of a store, the records of a conversion), found by a 64-bit hash the caller
//! computes (keyed per process, as `HashMap` is) and a comparison the caller makes. No key
//! is copied: each slot holds a position and the high 32 bits of its hash, so that a probe
//! compares a key only when those match; eight bytes a slot, at most half full, instead of
//! a map entry and a copy of the name.

/// No position in this slot.
const EMPTY: u64 = 0;

/// The slot of position `i` whose key hashes to `h`: the high half of the hash, and `i + 1`.
fn slot(i: u32, h: u64) -> u64 {
    (h & !0xffff_ffff) | (u64::from(i) + 1)
}

/// The position a slot holds.
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

/// A power of two at least twice `n` (and at least 8): the table stays at most half full.
fn table_size(n: usize) -> usize {
    n.saturating_mul(2).max(8).next_power_of_two()
}

/// Positions in a caller's list, by the hash of their key.
pub(crate) struct Positions {
    slots: Vec<u64>,
    len: usize,
}

impl std::fmt::Debug for Positions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Positions").field("len", &self.len).finish()
    }
}

impl Positions {
    /// An empty table with room for `n` positions.
    pub(crate) fn with_capacity(n: usize) -> Positions {
        Positions {
            slots: vec![EMPTY; table_size(n)],
            len: 0,
        }
    }

    /// The first position of hash `h` for which `is` says its key is the one looked for.
    pub(crate) fn get(&self, h: u64, mut is: impl FnMut(usize) -> bool) -> Option<usize> {
        let mask = self.slots.len() - 1;
        let mut at = start(h, mask);
        loop {
            match self.slots[at] {
                EMPTY => return None,
                s if same_tag(s, h) && is(position(s)) => return Some(position(s)),
                _ => at = (at + 1) & mask,
            }
        }
    }

    /// Adds position `i`, whose key hashes to `h`.
    pub(crate) fn insert(&mut self, h: u64, i: usize) {
        let i = u32::try_from(i)
            .ok()
            .filter(|&i| i < u32::MAX)
            .expect("fewer than 2^32 - 1 positions");
        if (self.len + 1) * 2 > self.slots.len() {
            let old = std::mem::replace(&mut self.slots, vec![EMPTY; table_size(self.len + 1)]);
            self.len = 0;
            for s in old.into_iter().filter(|&s| s != EMPTY) {
                self.place(s);
            }
        }
        self.place(slot(i, h));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_found_and_no_other_even_when_hashes_collide() {
        // Keys i, hashed so that every fourth shares its neighbour's hash.
        let hash = |k: u64| (k / 4).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let keys: Vec<u64> = (0..1000).collect();
        let mut t = Positions::with_capacity(0);
        for (i, &k) in keys.iter().enumerate() {
            t.insert(hash(k), i);
        }
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(t.get(hash(k), |p| keys[p] == k), Some(i));
        }
        assert_eq!(t.get(hash(5000), |p| keys[p] == 5000), None);
        assert_eq!(t.get(hash(3), |p| keys[p] == 5000), None);
    }
}
