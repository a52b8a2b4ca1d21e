//! The flow table's expiry order: entries (deadline, flow id, slot), taken smallest first.
//!
//! A binary heap did this at a cost of two to four cache-missing sift passes a flow. But a
//! flow's deadline is its last packet's time plus a constant (the idle timeout, or the linger
//! after close), and capture time rarely goes backwards, so the entries of each kind arrive
//! already in order: each kind has a FIFO lane, appended to while that stays sorted, and a heap
//! takes the entries that would break a lane's order (timestamps that step back, re-queued
//! entries). The smallest entry is the smallest of the three heads, so entries come out in the
//! same total order a single heap gives.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// One queued deadline: ordered by deadline, then flow id, then slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Entry((u64, u64, u32));

impl Entry {
    pub(super) fn new(deadline: u64, id: u64, slot: u32) -> Self {
        Self((deadline, id, slot))
    }
    pub(super) fn deadline(&self) -> u64 {
        self.0.0
    }
    pub(super) fn id(&self) -> u64 {
        self.0.1
    }
    pub(super) fn slot(&self) -> u32 {
        self.0.2
    }
}

/// Which constant a deadline adds to a packet time: entries of one kind are pushed in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lane {
    /// Last packet plus the idle timeout.
    Idle,
    /// Last packet plus the linger after close.
    Linger,
}

/// Entries, smallest first; see the module's comment.
#[derive(Debug)]
pub(super) struct ExpiryQueue {
    idle: VecDeque<Entry>,
    linger: VecDeque<Entry>,
    unordered: BinaryHeap<Reverse<Entry>>,
    /// The smallest entry's deadline (`u64::MAX` when empty): every packet asks whether a flow
    /// is due, and this answers it with one comparison.
    earliest: u64,
}

impl Default for ExpiryQueue {
    fn default() -> Self {
        Self {
            idle: VecDeque::new(),
            linger: VecDeque::new(),
            unordered: BinaryHeap::new(),
            earliest: u64::MAX,
        }
    }
}

/// Where the smallest entry is.
enum Head {
    Idle,
    Linger,
    Unordered,
}

impl ExpiryQueue {
    /// Entries held (stale ones included).
    pub(super) fn len(&self) -> usize {
        self.idle.len() + self.linger.len() + self.unordered.len()
    }

    /// Adds an entry of the given kind.
    #[inline]
    pub(super) fn push(&mut self, entry: Entry, lane: Lane) {
        let fifo = match lane {
            Lane::Idle => &mut self.idle,
            Lane::Linger => &mut self.linger,
        };
        if fifo.back().is_none_or(|last| *last <= entry) {
            fifo.push_back(entry);
        } else {
            self.unordered.push(Reverse(entry));
        }
        self.earliest = self.earliest.min(entry.deadline());
    }

    /// The smallest entry's deadline, `u64::MAX` when there is none.
    #[inline]
    pub(super) fn earliest_deadline(&self) -> u64 {
        self.earliest
    }

    #[inline]
    fn head(&self) -> Option<(Entry, Head)> {
        let mut best: Option<(Entry, Head)> = self.idle.front().map(|e| (*e, Head::Idle));
        for (candidate, from) in [
            (self.linger.front().copied(), Head::Linger),
            (self.unordered.peek().map(|r| r.0), Head::Unordered),
        ] {
            if let Some(candidate) = candidate
                && best.as_ref().is_none_or(|(b, _)| candidate < *b)
            {
                best = Some((candidate, from));
            }
        }
        best
    }

    /// The smallest entry.
    #[inline]
    pub(super) fn peek(&self) -> Option<Entry> {
        self.head().map(|(entry, _)| entry)
    }

    /// Removes the smallest entry.
    #[inline]
    pub(super) fn pop(&mut self) -> Option<Entry> {
        let (entry, from) = self.head()?;
        match from {
            Head::Idle => self.idle.pop_front(),
            Head::Linger => self.linger.pop_front(),
            Head::Unordered => self.unordered.pop().map(|r| r.0),
        };
        self.earliest = self.head().map_or(u64::MAX, |(next, _)| next.deadline());
        Some(entry)
    }

    /// Replaces every entry by `entries`.
    pub(super) fn rebuild(&mut self, entries: impl Iterator<Item = Entry>) {
        let mut sorted: Vec<Entry> = entries.collect();
        sorted.sort_unstable();
        self.idle = sorted.into();
        self.linger.clear();
        self.unordered.clear();
        self.earliest = self.idle.front().map_or(u64::MAX, Entry::deadline);
    }

    /// Drops every entry.
    pub(super) fn clear(&mut self) {
        self.idle.clear();
        self.linger.clear();
        self.unordered.clear();
        self.earliest = u64::MAX;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Pushes and pops in any mix, with any lanes and any order of deadlines, give what one
        /// binary heap gives.
        #[test]
        fn pops_what_one_heap_pops(ops in proptest::collection::vec((0u8..4, 0u64..50, 0u64..8, any::<bool>()), 0..300)) {
            let mut queue = ExpiryQueue::default();
            let mut heap = BinaryHeap::new();
            for (i, (op, deadline, id, linger)) in ops.into_iter().enumerate() {
                if op == 0 {
                    prop_assert_eq!(queue.pop(), heap.pop().map(|r: Reverse<Entry>| r.0));
                } else {
                    let entry = Entry::new(deadline, id, i as u32);
                    queue.push(entry, if linger { Lane::Linger } else { Lane::Idle });
                    heap.push(Reverse(entry));
                }
                prop_assert_eq!(queue.peek(), heap.peek().map(|r| r.0));
                prop_assert_eq!(queue.earliest_deadline(), heap.peek().map_or(u64::MAX, |r| r.0.deadline()));
                prop_assert_eq!(queue.len(), heap.len());
            }
            while let Some(Reverse(expected)) = heap.pop() {
                prop_assert_eq!(queue.pop(), Some(expected));
            }
            prop_assert_eq!(queue.pop(), None);
        }
    }
}
