//! What every message read from Kafka is waiting for, shared by the
//! coordinator (which registers messages), the ship tasks (which resolve
//! dedup keys as they land) and the rebalance callback (which, on revoke,
//! waits for the revoked partitions' in-flight changes and commits them).
//!
//! A message completes in the [`Tracker`] when every row it produced is
//! resolved (landed, or durably dead-lettered). Rows whose key is already in
//! flight wait for that key instead of being shipped again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::tracker::{TopicPartition, Tracker};
use crate::key::DedupKey;

/// One message waiting for its rows.
struct Waiting {
    tp: TopicPartition,
    epoch: u64,
    offset: i64,
    remaining: usize,
}

#[derive(Default)]
pub struct Progress {
    pub tracker: Tracker,
    next_id: u64,
    msgs: HashMap<u64, Waiting>,
    keys: HashMap<DedupKey, Vec<u64>>,
}

pub type SharedProgress = Arc<Mutex<Progress>>;

pub fn lock(p: &SharedProgress) -> MutexGuard<'_, Progress> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// A message being registered: [`Progress::begin`], then `wait_for` per row, then `finish`.
pub struct Registration {
    id: u64,
    tp: TopicPartition,
    epoch: u64,
    offset: i64,
    remaining: usize,
}

impl Progress {
    pub fn begin(&mut self, tp: TopicPartition, offset: i64) -> Registration {
        let epoch = self.tracker.begin(&tp, offset);
        self.next_id += 1;
        Registration { id: self.next_id, tp, epoch, offset, remaining: 0 }
    }

    pub fn is_in_flight(&self, key: &DedupKey) -> bool {
        self.keys.contains_key(key)
    }

    /// The message waits for `key` (shipped by this message, or already in flight).
    pub fn wait_for(&mut self, r: &mut Registration, key: DedupKey) {
        self.keys.entry(key).or_default().push(r.id);
        r.remaining += 1;
    }

    /// Ends the registration; a message that waits for nothing completes now.
    pub fn finish(&mut self, r: Registration) {
        if r.remaining == 0 {
            self.tracker.complete(&r.tp, r.epoch, r.offset);
        } else {
            self.msgs.insert(r.id, Waiting { tp: r.tp, epoch: r.epoch, offset: r.offset, remaining: r.remaining });
        }
    }

    /// These keys are landed or dead-lettered, durably.
    pub fn resolve(&mut self, keys: &[DedupKey]) {
        for key in keys {
            for id in self.keys.remove(key).unwrap_or_default() {
                if let Some(w) = self.msgs.get_mut(&id) {
                    w.remaining -= 1;
                    if w.remaining == 0 {
                        if let Some(w) = self.msgs.remove(&id) {
                            self.tracker.complete(&w.tp, w.epoch, w.offset);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_completes_when_all_its_keys_resolve_and_shares_keys_in_flight() {
        let mut p = Progress::default();
        let tp: TopicPartition = ("t".into(), 0);
        let (a, b) = (DedupKey([1; 32]), DedupKey([2; 32]));
        let mut m0 = p.begin(tp.clone(), 0);
        p.wait_for(&mut m0, a);
        p.wait_for(&mut m0, b);
        p.finish(m0);
        // Offset 1 is a duplicate of a key in flight.
        assert!(p.is_in_flight(&a));
        let mut m1 = p.begin(tp.clone(), 1);
        p.wait_for(&mut m1, a);
        p.finish(m1);
        let m2 = p.begin(tp.clone(), 2);
        p.finish(m2);
        assert_eq!(p.tracker.take_commits(), vec![(tp.clone(), 0)]);
        p.resolve(&[a]);
        assert_eq!(p.tracker.take_commits(), vec![], "offset 0 still waits for b");
        p.resolve(&[b]);
        assert_eq!(p.tracker.take_commits(), vec![(tp, 3)]);
    }
}
