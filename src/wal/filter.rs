//! An in-memory membership filter of the keys the WAL holds marks for, so
//! that a new key (most keys) costs no sled lookup.
//!
//! A Bloom filter over the dedup keys' own bits: keys are blake3 hashes,
//! evenly spread, so the probes are taken from the key (double hashing on
//! two of its 64-bit words) and nothing is hashed again.
//!
//! Guarantee: **no false negatives**. A key with a mark in the WAL is always
//! "maybe held": keys are added before their marks are applied, the filter
//! is built from the marks on open, and a rebuild runs while commits wait
//! (the caller holds the commit lock) and replaces the old filter only when
//! complete. A false positive (a new key reported "maybe held") costs one
//! sled lookup, nothing else: the WAL answers from sled then.
//!
//! Size: [`BITS_PER_KEY`] bits per key for `max(2 x marks held, MIN_KEYS)`
//! keys, [`PROBES`] probes: a false-positive rate of about 0.8 % at that
//! many keys (1.25 MB per million keys). Pruned keys stay set (a Bloom filter
//! cannot remove); once more keys were added than it was sized for, the next
//! prune rebuilds it from the marks left ([`Filter::wants_rebuild`]).

use crate::key::DedupKey;

/// Bits per key the filter is sized for.
pub const BITS_PER_KEY: u64 = 10;
/// Probes per key (optimal for 10 bits per key: 10 ln 2 = 6.9).
pub const PROBES: u64 = 7;
/// The smallest capacity, in keys (1.25 MB).
pub const MIN_KEYS: u64 = 1_000_000;

#[derive(Debug)]
pub struct Filter {
    words: Vec<u64>,
    bits: u64,
    capacity: u64,
    added: u64,
}

impl Filter {
    /// A filter for `keys` keys (at least [`MIN_KEYS`]).
    pub fn with_capacity(keys: u64) -> Filter {
        let capacity = keys.max(MIN_KEYS);
        let bits = (capacity * BITS_PER_KEY).div_ceil(64) * 64;
        Filter { words: vec![0; (bits / 64) as usize], bits, capacity, added: 0 }
    }

    /// The bits `key` sets (no allocation).
    fn probes(bits: u64, key: &DedupKey) -> impl Iterator<Item = u64> {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&key.0[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        let (h1, h2) = (word(0), word(1) | 1);
        (0..PROBES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % bits)
    }

    /// A filter for exactly `keys` keys (tests of the rebuild).
    #[cfg(test)]
    pub fn exactly(keys: u64) -> Filter {
        let bits = (keys.max(1) * BITS_PER_KEY).div_ceil(64) * 64;
        Filter { words: vec![0; (bits / 64) as usize], bits, capacity: keys, added: 0 }
    }

    pub fn insert(&mut self, key: &DedupKey) {
        for bit in Self::probes(self.bits, key) {
            self.words[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        self.added += 1;
    }

    /// False: the WAL holds no mark for `key`. True: it may.
    pub fn may_contain(&self, key: &DedupKey) -> bool {
        Self::probes(self.bits, key).all(|bit| self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    /// More keys were added than it was sized for.
    pub fn wants_rebuild(&self) -> bool {
        self.added > self.capacity
    }

    /// Heap bytes it holds.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> DedupKey {
        DedupKey(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }

    #[test]
    fn no_key_added_is_ever_missed_and_few_others_are_claimed() {
        let mut f = Filter::with_capacity(MIN_KEYS);
        for i in 0..MIN_KEYS {
            f.insert(&key(i));
        }
        assert!((0..MIN_KEYS).all(|i| f.may_contain(&key(i))), "a false negative");
        let trials = 200_000;
        let false_positives = (MIN_KEYS..MIN_KEYS + trials).filter(|&i| f.may_contain(&key(i))).count();
        let rate = false_positives as f64 / trials as f64;
        // 10 bits and 7 probes per key: 0.82 % in theory.
        assert!(rate < 0.012, "false-positive rate {rate}");
        assert!(rate > 0.004, "false-positive rate {rate}: the filter is not the size it says");
        assert!(!f.wants_rebuild());
        f.insert(&key(u64::MAX));
        assert!(f.wants_rebuild());
        assert_eq!(f.bytes() as u64, MIN_KEYS * BITS_PER_KEY / 8);
    }
}
