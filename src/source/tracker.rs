//! Per-partition commit tracking.
//!
//! Guarantee (invariant 1 in docs/design.md): the commit point of a partition
//! is the lowest offset that was read and is not yet complete (landed or
//! durably dead-lettered); with nothing outstanding it is one past the highest
//! offset read. Completions may arrive in any order; the commit point never
//! passes an unfinished offset and never moves backwards.
//!
//! A partition's state belongs to one assignment *epoch*. When a partition is
//! revoked its state is dropped; completions that arrive later for the old
//! epoch are ignored (their changes are landed all the same, and a
//! redelivery after reassignment is absorbed by the WAL).

use std::collections::{BTreeSet, HashMap};

pub type TopicPartition = (String, i32);

#[derive(Debug, Default, Clone)]
pub struct PartitionState {
    outstanding: BTreeSet<i64>,
    /// One past the highest offset read.
    next: Option<i64>,
    /// The last commit point handed out by [`Tracker::take_commits`].
    committed: Option<i64>,
}

impl PartitionState {
    pub fn begin(&mut self, offset: i64) {
        self.outstanding.insert(offset);
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    pub fn complete(&mut self, offset: i64) {
        self.outstanding.remove(&offset);
    }

    /// The offset to commit (the next one to consume), if any was read.
    pub fn commit_point(&self) -> Option<i64> {
        match self.outstanding.first() {
            Some(&lowest) => Some(lowest),
            None => self.next,
        }
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }
}

#[derive(Debug, Default)]
pub struct Tracker {
    parts: HashMap<TopicPartition, (u64, PartitionState)>,
    next_epoch: u64,
}

impl Tracker {
    /// Records that `offset` was read; returns the partition's epoch.
    pub fn begin(&mut self, tp: &TopicPartition, offset: i64) -> u64 {
        if !self.parts.contains_key(tp) {
            self.next_epoch += 1;
            self.parts.insert(tp.clone(), (self.next_epoch, PartitionState::default()));
        }
        let (epoch, state) = self.parts.get_mut(tp).expect("inserted above");
        state.begin(offset);
        *epoch
    }

    /// Records that `offset` is complete. Ignored for a stale epoch.
    pub fn complete(&mut self, tp: &TopicPartition, epoch: u64, offset: i64) {
        if let Some((e, state)) = self.parts.get_mut(tp) {
            if *e == epoch {
                state.complete(offset);
            }
        }
    }

    /// Forgets a revoked partition.
    pub fn revoke(&mut self, tp: &TopicPartition) {
        self.parts.remove(tp);
    }

    /// Commit points that moved forward since the last call.
    pub fn take_commits(&mut self) -> Vec<(TopicPartition, i64)> {
        let mut out = Vec::new();
        for (tp, (_, state)) in self.parts.iter_mut() {
            if let Some(point) = state.commit_point() {
                if state.committed.is_none_or(|c| point > c) {
                    state.committed = Some(point);
                    out.push((tp.clone(), point));
                }
            }
        }
        out.sort();
        out
    }

    /// Changes read but not complete, over all partitions.
    pub fn outstanding(&self) -> usize {
        self.parts.values().map(|(_, s)| s.outstanding()).sum()
    }

    /// Changes read but not complete in `parts`.
    pub fn outstanding_in(&self, parts: &[TopicPartition]) -> usize {
        parts.iter().filter_map(|tp| self.parts.get(tp)).map(|(_, s)| s.outstanding()).sum()
    }

    /// The commit points of `parts` (those that read anything).
    pub fn points_in(&self, parts: &[TopicPartition]) -> Vec<(TopicPartition, i64)> {
        parts.iter().filter_map(|tp| Some((tp.clone(), self.parts.get(tp)?.1.commit_point()?))).collect()
    }

    /// The current commit point of every tracked partition.
    pub fn commit_points(&self) -> Vec<(TopicPartition, Option<i64>)> {
        let mut v: Vec<_> = self.parts.iter().map(|(tp, (_, s))| (tp.clone(), s.committed)).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> TopicPartition {
        ("t".into(), 0)
    }

    #[test]
    fn commit_point_waits_for_the_lowest_unfinished_offset() {
        let mut t = Tracker::default();
        let e = t.begin(&tp(), 10);
        for o in 11..15 {
            t.begin(&tp(), o);
        }
        t.complete(&tp(), e, 12);
        t.complete(&tp(), e, 13);
        assert_eq!(t.take_commits(), vec![(tp(), 10)]);
        t.complete(&tp(), e, 10);
        assert_eq!(t.take_commits(), vec![(tp(), 11)]);
        t.complete(&tp(), e, 11);
        assert_eq!(t.take_commits(), vec![(tp(), 14)]);
        t.complete(&tp(), e, 14);
        assert_eq!(t.take_commits(), vec![(tp(), 15)]);
        assert_eq!(t.take_commits(), vec![], "no repeated commits");
    }

    #[test]
    fn gaps_in_offsets_are_fine() {
        let mut t = Tracker::default();
        let e = t.begin(&tp(), 3);
        t.begin(&tp(), 7);
        t.complete(&tp(), e, 7);
        assert_eq!(t.take_commits(), vec![(tp(), 3)]);
        t.complete(&tp(), e, 3);
        assert_eq!(t.take_commits(), vec![(tp(), 8)]);
    }

    #[test]
    fn stale_epoch_completions_are_ignored_after_revoke() {
        let mut t = Tracker::default();
        let old = t.begin(&tp(), 5);
        t.revoke(&tp());
        let new = t.begin(&tp(), 5);
        assert_ne!(old, new);
        t.complete(&tp(), old, 5);
        assert_eq!(t.take_commits(), vec![(tp(), 5)]);
        t.complete(&tp(), new, 5);
        assert_eq!(t.take_commits(), vec![(tp(), 6)]);
    }

    #[test]
    fn commit_point_never_moves_backwards() {
        let mut t = Tracker::default();
        let e = t.begin(&tp(), 10);
        t.complete(&tp(), e, 10);
        assert_eq!(t.take_commits(), vec![(tp(), 11)]);
        t.begin(&tp(), 4); // a redelivery of an older offset
        assert_eq!(t.take_commits(), vec![]);
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any completion order: the commit point never passes an
            /// unfinished offset, and reaches the end when all complete.
            #[test]
            fn commit_point_never_passes_an_unfinished_offset(
                offsets in proptest::collection::btree_set(0i64..500, 1..60),
                order in proptest::collection::vec(any::<proptest::sample::Index>(), 60),
            ) {
                let tp: TopicPartition = ("t".into(), 0);
                let mut t = Tracker::default();
                let offsets: Vec<i64> = offsets.into_iter().collect();
                let mut epoch = 0;
                for &o in &offsets {
                    epoch = t.begin(&tp, o);
                }
                let mut unfinished = offsets.clone();
                let mut last = None;
                for idx in order.iter().take(offsets.len()) {
                    let o = unfinished.remove(idx.index(unfinished.len()));
                    t.complete(&tp, epoch, o);
                    for (_, point) in t.take_commits() {
                        if let Some(&lowest) = unfinished.iter().min() {
                            prop_assert!(point <= lowest, "committed {point} past unfinished {lowest}");
                        }
                        prop_assert!(last.is_none_or(|l| point > l), "commit point moved backwards");
                        last = Some(point);
                    }
                    if unfinished.is_empty() {
                        break;
                    }
                }
                for o in unfinished.clone() {
                    t.complete(&tp, epoch, o);
                }
                t.take_commits();
                let end = offsets.last().unwrap() + 1;
                prop_assert_eq!(t.commit_points(), vec![(tp, Some(end))]);
            }
        }
    }
}
