//! The flow table's index: slot numbers found by the hash of their flow's key.
//!
//! Open addressing with linear probing over one array of 8-byte entries, each holding the upper
//! half of its key's hash (a tag) and the slot number. A lookup reads one entry (one cache line,
//! usually) and compares tags, so only the flow whose tag matches is read to compare keys: a
//! packet's lookup costs one cache miss in the index and one in its flow, where a table of
//! control bytes and a separate array of slot numbers cost two in the index. Removal shifts the
//! entries after the hole back (no tombstones), so probe runs stay as short as the load allows.

/// An empty entry; a full one is `tag << 32 | (slot + 1)`, never 0.
const EMPTY: u64 = 0;

/// Entries at least twice the slots held: runs stay short.
const MIN_ENTRIES: usize = 16;

/// Slot numbers by hash; the keys themselves live in the flows and are compared by the caller.
#[derive(Debug)]
pub(super) struct SlotIndex {
    entries: Vec<u64>,
    len: usize,
}

impl Default for SlotIndex {
    fn default() -> Self {
        Self {
            entries: vec![EMPTY; MIN_ENTRIES],
            len: 0,
        }
    }
}

#[inline]
fn tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}

#[inline]
fn entry(hash: u64, slot: u32) -> u64 {
    (u64::from(tag(hash)) << 32) | (u64::from(slot) + 1)
}

#[inline]
fn slot_of(entry: u64) -> u32 {
    (entry as u32).wrapping_sub(1)
}

impl SlotIndex {
    /// Slots held.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn mask(&self) -> usize {
        self.entries.len() - 1
    }

    /// The first entry a hash probes: its tag's low bits (the tag is all of the hash an entry keeps).
    #[inline]
    fn home(&self, tag: u32) -> usize {
        tag as usize & self.mask()
    }

    /// The slot whose hash is `hash` and for which `is_key(slot)` holds.
    #[inline]
    pub(super) fn find(&self, hash: u64, mut is_key: impl FnMut(u32) -> bool) -> Option<u32> {
        let tag = tag(hash);
        let mask = self.mask();
        let mut at = self.home(tag);
        loop {
            let found = self.entries[at];
            if found == EMPTY {
                return None;
            }
            if (found >> 32) as u32 == tag && is_key(slot_of(found)) {
                return Some(slot_of(found));
            }
            at = (at + 1) & mask;
        }
    }

    /// Adds `slot` under `hash` (the caller knows it is not there yet).
    pub(super) fn insert(&mut self, hash: u64, slot: u32) {
        if (self.len + 1) * 2 > self.entries.len() {
            self.grow();
        }
        self.place(entry(hash, slot));
        self.len += 1;
    }

    fn place(&mut self, new: u64) {
        let mask = self.mask();
        let mut at = self.home((new >> 32) as u32);
        while self.entries[at] != EMPTY {
            at = (at + 1) & mask;
        }
        self.entries[at] = new;
    }

    fn grow(&mut self) {
        let doubled = vec![EMPTY; self.entries.len() * 2];
        let old = std::mem::replace(&mut self.entries, doubled);
        for full in old.into_iter().filter(|&e| e != EMPTY) {
            self.place(full);
        }
    }

    /// Removes `slot`, held under `hash`; false when it was not there.
    pub(super) fn remove(&mut self, hash: u64, slot: u32) -> bool {
        let wanted = entry(hash, slot);
        let mask = self.mask();
        let mut hole = self.home(tag(hash));
        loop {
            match self.entries[hole] {
                EMPTY => return false,
                found if found == wanted => break,
                _ => hole = (hole + 1) & mask,
            }
        }
        // Backward shift: each later entry of the run that may sit at the hole (the hole is not
        // before its home, cyclically) moves there, and its old place becomes the hole.
        let mut at = (hole + 1) & mask;
        loop {
            let moving = self.entries[at];
            if moving == EMPTY {
                break;
            }
            let home = self.home((moving >> 32) as u32);
            if at.wrapping_sub(home) & mask >= at.wrapping_sub(hole) & mask {
                self.entries[hole] = moving;
                hole = at;
            }
            at = (at + 1) & mask;
        }
        self.entries[hole] = EMPTY;
        self.len -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Inserts and removes in any mix, with hashes that collide in their tags and homes, find
        /// what a `HashMap` of slot to hash finds.
        #[test]
        fn finds_what_a_map_finds(ops in proptest::collection::vec((any::<bool>(), 0u32..64, 0u64..6), 0..400)) {
            let mut index = SlotIndex::default();
            let mut map: HashMap<u32, u64> = HashMap::new();
            // Few distinct hashes: long runs, equal tags, wrap-around at the array's end.
            let hash_of = |h: u64| (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 0xf) << 28;
            for (add, slot, h) in ops {
                let hash = hash_of(h);
                if add && !map.contains_key(&slot) {
                    index.insert(hash, slot);
                    map.insert(slot, hash);
                } else if !add {
                    let held = map.get(&slot).copied();
                    prop_assert_eq!(index.remove(held.unwrap_or(hash), slot), held.is_some());
                    map.remove(&slot);
                }
                prop_assert_eq!(index.len(), map.len());
                for (&slot, &hash) in &map {
                    prop_assert_eq!(index.find(hash, |s| s == slot), Some(slot));
                }
                for other in 0..64u32 {
                    if !map.contains_key(&other) {
                        for h in 0..6 {
                            prop_assert_eq!(index.find(hash_of(h), |s| s == other), None);
                        }
                    }
                }
            }
        }
    }
}
