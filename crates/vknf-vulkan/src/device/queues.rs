//! Which queues a function's streams submit to, so that one function's work does not queue behind
//! another's while the device has queues enough.
//!
//! A device opened for functions hands each function a view ([`Device::for_function`]) holding a
//! [`QueueLease`]. Each stream the function opens takes a queue by [`choose_queue`]: its first
//! stream takes a queue no other function uses; further streams take another free queue only while
//! one more stays free for the next function, and otherwise reuse the function's own queues. When
//! every queue is taken (a device with one queue, such as lavapipe, or more functions than queues),
//! the function shares the queue fewest functions use. A lease gives its queues back when the
//! function's last stream is gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use serde::Serialize;

use super::{Device, DeviceShared, QueueKind};

/// What a new stream of a function does, given how many functions use each queue of the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueChoice {
    /// Take this queue, which the function did not use yet (shared when others use it too).
    Take(usize),
    /// Use this queue, which the function already uses.
    Reuse(usize),
}

/// The policy: `owners[q]` functions use queue `q` now, the function uses `mine` already, and this is
/// its `turn`-th stream of the family (to spread reuse round-robin).
pub fn choose_queue(owners: &[usize], mine: &[usize], turn: usize) -> QueueChoice {
    let mut free = (0..owners.len()).filter(|&q| owners[q] == 0);
    let first_free = free.next();
    let another_free = free.next().is_some();
    match first_free {
        Some(queue) if mine.is_empty() || another_free => QueueChoice::Take(queue),
        _ if !mine.is_empty() => QueueChoice::Reuse(mine[turn % mine.len()]),
        _ => {
            let least_shared = (0..owners.len()).min_by_key(|&q| (owners[q], q)).unwrap_or(0);
            QueueChoice::Take(least_shared)
        }
    }
}

/// One queue a function's streams submit to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssignedQueue {
    /// Compute or transfer (a transfer stream on a device without a transfer-only family is on a
    /// compute queue and says `compute`).
    pub kind: QueueKind,
    /// The queue family.
    pub family: u32,
    /// The queue's index in its family.
    pub queue: usize,
    /// Other functions submit to it too.
    pub shared: bool,
}

/// The queues one function holds on one device; given back when dropped.
pub struct QueueLease {
    device: Arc<DeviceShared>,
    function: String,
    /// Queues taken, by family: `[compute, transfer]`.
    mine: Mutex<[Vec<usize>; 2]>,
    turns: [AtomicUsize; 2],
}

fn slot(device: &DeviceShared, kind: QueueKind) -> (usize, QueueKind) {
    match kind {
        QueueKind::Transfer if device.transfer.is_some() => (1, QueueKind::Transfer),
        _ => (0, QueueKind::Compute),
    }
}

impl QueueLease {
    pub(crate) fn new(device: Arc<DeviceShared>, function: &str) -> QueueLease {
        QueueLease {
            device,
            function: function.to_owned(),
            mine: Mutex::new([Vec::new(), Vec::new()]),
            turns: [AtomicUsize::new(0), AtomicUsize::new(0)],
        }
    }

    /// The queue of `kind`'s family the function's next stream submits to.
    pub(crate) fn pick(&self, kind: QueueKind) -> usize {
        let (index, kind) = slot(&self.device, kind);
        let family = self.device.family(kind);
        let mut mine = self.mine.lock();
        let mut owners = family.owners.lock();
        let turn = self.turns[index].fetch_add(1, Ordering::Relaxed);
        match choose_queue(&owners, &mine[index], turn) {
            QueueChoice::Reuse(queue) => queue,
            QueueChoice::Take(queue) => {
                owners[queue] += 1;
                mine[index].push(queue);
                tracing::info!(
                    function = %self.function,
                    kind = ?kind,
                    family = family.family,
                    queue,
                    shared = owners[queue] > 1,
                    "queue assigned"
                );
                queue
            }
        }
    }

    /// The queues taken so far.
    pub fn queues(&self) -> Vec<AssignedQueue> {
        let mine = self.mine.lock();
        let mut queues = Vec::new();
        for (index, kind) in [(0, QueueKind::Compute), (1, QueueKind::Transfer)] {
            if mine[index].is_empty() {
                continue;
            }
            let family = self.device.family(kind);
            let owners = family.owners.lock();
            queues.extend(mine[index].iter().map(|&queue| AssignedQueue {
                kind,
                family: family.family,
                queue,
                shared: owners[queue] > 1,
            }));
        }
        queues
    }

    /// The function the lease is for.
    pub fn function(&self) -> &str {
        &self.function
    }
}

impl Drop for QueueLease {
    fn drop(&mut self) {
        let mine = self.mine.get_mut();
        for (index, kind) in [(0, QueueKind::Compute), (1, QueueKind::Transfer)] {
            if mine[index].is_empty() {
                continue;
            }
            let mut owners = self.device.family(kind).owners.lock();
            for &queue in &mine[index] {
                owners[queue] = owners[queue].saturating_sub(1);
            }
        }
    }
}

impl Device {
    /// A view of this device for the function `function`: its streams take queues by the policy of
    /// [`choose_queue`], apart from other functions' while the device has queues enough. Everything
    /// else is the same device.
    pub fn for_function(&self, function: &str) -> Device {
        Device {
            shared: self.shared.clone(),
            lease: Some(Arc::new(QueueLease::new(self.shared.clone(), function))),
        }
    }

    /// The queues this view's function has taken so far (`None` for a device not opened for a
    /// function).
    pub fn queue_assignment(&self) -> Option<Vec<AssignedQueue>> {
        self.lease.as_ref().map(|lease| lease.queues())
    }

    /// How many functions use each queue of `kind`'s family now.
    pub fn queue_owners(&self, kind: QueueKind) -> Vec<usize> {
        self.shared.family(kind).owners.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streams of functions `(function, streams)` opened in order on a family of `queues` queues;
    /// returns each function's queues and the owners of each queue.
    fn assign(queues: usize, functions: &[usize]) -> (Vec<Vec<usize>>, Vec<usize>) {
        let mut owners = vec![0; queues];
        let mut assigned = Vec::new();
        for &streams in functions {
            let mut mine: Vec<usize> = Vec::new();
            let mut used = Vec::new();
            for turn in 0..streams {
                let queue = match choose_queue(&owners, &mine, turn) {
                    QueueChoice::Take(queue) => {
                        owners[queue] += 1;
                        mine.push(queue);
                        queue
                    }
                    QueueChoice::Reuse(queue) => queue,
                };
                used.push(queue);
            }
            assigned.push(used);
        }
        (assigned, owners)
    }

    #[test]
    fn functions_get_queues_of_their_own_while_the_device_has_them() {
        // Four queues, three lanes a function: the first takes three and leaves one for the second.
        let (assigned, owners) = assign(4, &[3, 3]);
        assert_eq!(assigned, vec![vec![0, 1, 2], vec![3, 3, 3]]);
        assert_eq!(owners, vec![1, 1, 1, 1]);
        // Eight queues: each function spreads over three of its own.
        let (assigned, _) = assign(8, &[3, 3]);
        assert_eq!(assigned, vec![vec![0, 1, 2], vec![3, 4, 5]]);
    }

    #[test]
    fn without_enough_queues_functions_share_the_least_shared() {
        // One queue (lavapipe): everyone shares it.
        let (assigned, owners) = assign(1, &[3, 3, 2]);
        assert_eq!(assigned, vec![vec![0, 0, 0], vec![0, 0, 0], vec![0, 0]]);
        assert_eq!(owners, vec![3]);
        // Two queues, three functions: the third shares one queue with one other function only.
        let (assigned, owners) = assign(2, &[3, 3, 3]);
        assert_eq!(assigned, vec![vec![0, 0, 0], vec![1, 1, 1], vec![0, 0, 0]]);
        assert_eq!(owners, vec![2, 1]);
    }

    #[test]
    fn a_single_function_still_spreads_over_all_but_one_queue() {
        let (assigned, _) = assign(4, &[6]);
        assert_eq!(assigned, vec![vec![0, 1, 2, 0, 1, 2]]);
    }
}
