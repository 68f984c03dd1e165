//! Which key list (`l` record) holds each resolved key: the WAL's in-memory
//! index, rebuilt on open from the key lists, so that a new key costs no
//! sled lookup and sled holds one record per commit instead of one per key.
//!
//! # What it guarantees
//!
//! Every resolved key the WAL holds is in exactly one key list (a key
//! resolved again leaves its older list in the same commit). For each such
//! key `k` in list `g`, either `overflow[k] == g`, or `k` is not in
//! `overflow` and `index[prefix(k)] == g`. So [`Marks::candidate`] names the
//! one list that may hold `k`, and the caller confirms it there (the list is
//! sorted: a binary search). A key the index does not name is not held: no
//! sled read at all. Two keys share a prefix (the first 8 bytes of a blake3
//! hash) with probability about n²/2^65 for n keys held; the second of them
//! goes to `overflow`, which otherwise stays empty.
//!
//! Memory: 13 bytes per slot of the prefix table (its slots are a power of
//! two, 8/7 to 16/7 per key: 2^21 slots, 27 MB, for 1M keys held), plus one
//! entry per key list.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::key::DedupKey;

/// A key list's sled key: `l` + resolved-at (ms) + number + rejected flag,
/// big-endian, so lists sort by time (the prune order).
pub type ListKey = [u8; 18];

pub fn list_key(at_ms: u64, seq: u64, rejected: bool) -> ListKey {
    let mut k = [0u8; 18];
    k[0] = b'l';
    k[1..9].copy_from_slice(&at_ms.to_be_bytes());
    k[9..17].copy_from_slice(&seq.to_be_bytes());
    k[17] = rejected as u8;
    k
}

/// The number of a key list: its keys were resolved after batch records
/// numbered below it were written.
pub fn list_seq(k: &ListKey) -> u64 {
    u64::from_be_bytes(k[9..17].try_into().unwrap_or_default())
}

/// When a key list's keys were resolved (ms since the epoch).
pub fn list_at(k: &ListKey) -> u64 {
    u64::from_be_bytes(k[1..9].try_into().unwrap_or_default())
}

pub fn list_rejected(k: &ListKey) -> bool {
    k[17] == 1
}

/// Hashes a key prefix as itself: it is already uniformly distributed.
#[derive(Default)]
pub struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

type Prefix = [u8; 8];

fn prefix(key: &DedupKey) -> Prefix {
    key.0[..8].try_into().unwrap_or_default()
}

/// Slot number of a key list.
pub type Slot = u32;

#[derive(Default)]
pub struct Marks {
    index: HashMap<Prefix, Slot, BuildHasherDefault<PrefixHasher>>,
    overflow: HashMap<DedupKey, Slot>,
    lists: Vec<Option<ListKey>>,
    free: Vec<Slot>,
    slot_of: HashMap<ListKey, Slot>,
}

impl Marks {
    /// The key list that holds `key` if any does (to be confirmed there).
    pub fn candidate(&self, key: &DedupKey) -> Option<(Slot, ListKey)> {
        let slot = match self.overflow.get(key) {
            Some(&s) => s,
            None => *self.index.get(&prefix(key))?,
        };
        self.list(slot).map(|k| (slot, k))
    }

    pub fn list(&self, slot: Slot) -> Option<ListKey> {
        self.lists.get(slot as usize).copied().flatten()
    }

    pub fn slot(&self, list: &ListKey) -> Option<Slot> {
        self.slot_of.get(list).copied()
    }

    /// A slot for a new key list.
    pub fn add_list(&mut self, list: ListKey) -> Slot {
        let slot = match self.free.pop() {
            Some(s) => {
                self.lists[s as usize] = Some(list);
                s
            }
            None => {
                self.lists.push(Some(list));
                (self.lists.len() - 1) as Slot
            }
        };
        self.slot_of.insert(list, slot);
        slot
    }

    /// `key`, held by no list, is now in list `slot`.
    pub fn insert(&mut self, key: &DedupKey, slot: Slot) {
        match self.index.entry(prefix(key)) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(slot);
            }
            std::collections::hash_map::Entry::Occupied(e) if *e.get() == slot => {}
            std::collections::hash_map::Entry::Occupied(_) => {
                self.overflow.insert(*key, slot);
            }
        }
    }

    /// `key` left list `slot`, whose remaining keys are `rest` (sorted, 32
    /// bytes each): the prefix entry stays while another key of that list
    /// shares the prefix.
    pub fn remove(&mut self, key: &DedupKey, slot: Slot, rest: &[u8]) {
        if self.overflow.get(key) == Some(&slot) {
            self.overflow.remove(key);
            return;
        }
        let p = prefix(key);
        if self.index.get(&p) == Some(&slot) && !rest.chunks_exact(32).any(|k| k[..8] == p) {
            self.index.remove(&p);
        }
    }

    /// List `slot` and its keys (`keys`, 32 bytes each) are gone.
    pub fn drop_list(&mut self, slot: Slot, keys: &[u8]) {
        for k in keys.chunks_exact(32) {
            let key = DedupKey(k.try_into().unwrap_or_default());
            if self.overflow.get(&key) == Some(&slot) {
                self.overflow.remove(&key);
            } else if self.index.get(&prefix(&key)) == Some(&slot) {
                self.index.remove(&prefix(&key));
            }
        }
        if let Some(list) = self.lists.get_mut(slot as usize).and_then(Option::take) {
            self.slot_of.remove(&list);
            self.free.push(slot);
        }
    }

    /// Key lists (tests).
    #[cfg(test)]
    pub fn lists(&self) -> usize {
        self.slot_of.len()
    }

    /// Keys held in `overflow` (tests).
    #[cfg(test)]
    pub fn overflow_len(&self) -> usize {
        self.overflow.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys sharing their first 8 bytes, told apart by the last.
    fn twin(n: u8) -> DedupKey {
        let mut k = [7u8; 32];
        k[31] = n;
        DedupKey(k)
    }

    fn list_of(keys: &[DedupKey]) -> Vec<u8> {
        let mut v: Vec<[u8; 32]> = keys.iter().map(|k| k.0).collect();
        v.sort_unstable();
        v.concat()
    }

    #[test]
    fn keys_sharing_a_prefix_each_name_their_own_list() {
        let mut m = Marks::default();
        let a = m.add_list(list_key(1, 10, false));
        let b = m.add_list(list_key(2, 11, false));
        m.insert(&twin(1), a);
        m.insert(&twin(2), b);
        m.insert(&twin(3), a);
        assert_eq!(m.candidate(&twin(1)).map(|c| c.0), Some(a));
        assert_eq!(m.candidate(&twin(2)).map(|c| c.0), Some(b), "the second prefix holder is in overflow");
        assert_eq!(m.candidate(&twin(3)).map(|c| c.0), Some(a), "same list as the prefix holder: no overflow");
        assert_eq!(m.overflow_len(), 1);
        // twin(1) leaves list a; twin(3) still needs the prefix entry.
        m.remove(&twin(1), a, &list_of(&[twin(3)]));
        assert_eq!(m.candidate(&twin(3)).map(|c| c.0), Some(a));
        m.drop_list(a, &list_of(&[twin(3)]));
        assert_eq!(m.candidate(&twin(3)), None);
        assert_eq!(m.candidate(&twin(2)).map(|c| c.0), Some(b), "overflow survives another list's prune");
        m.drop_list(b, &list_of(&[twin(2)]));
        assert_eq!((m.candidate(&twin(2)), m.overflow_len(), m.lists()), (None, 0, 0));
        assert_eq!(m.add_list(list_key(3, 12, true)), b, "slots are reused");
    }

    #[test]
    fn list_keys_sort_by_time_and_carry_number_and_flag() {
        let (a, b) = (list_key(5, 99, true), list_key(6, 1, false));
        assert!(a < b);
        assert_eq!((list_at(&a), list_seq(&a), list_rejected(&a), list_rejected(&b)), (5, 99, true, false));
    }
}
