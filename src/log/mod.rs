//! The write-ahead log: a sled database on local disk.
//!
//! # What is durable when
//!
//! Every change is written here as [`Record::Pending`] *before* it is shipped,
//! and marked [`Record::Landed`] after BigQuery accepted it. Each
//! [`Wal::commit`] applies one atomic sled batch and then calls
//! `sled::Db::flush`, which returns only when the batch is on disk (sled 0.34
//! is durable only after flush). The flushes on the write path, per pipeline batch:
//!
//! 1. after the pending records of a batch are written (before insertAll);
//! 2. after their landed marks are written (before the Kafka offset commit);
//!    when BigQuery rejected rows, this batch also holds the rejection marks,
//!    the dead letters and their pending dead-letter-table rows, and
//! 3. (only then) after the dead-letter rows' landed marks are written.
//!
//! Outside the write path: one flush per prune and one when a WAL is created.
//!
//! A crash before (1) loses nothing: the offsets were not committed, Kafka
//! redelivers. A crash between (1) and (2) leaves pending records that the
//! next start re-ships with their original insertIds (the row bytes are in the
//! record). After (2) the key is remembered until `wal.retention` prunes it, so
//! a redelivered or re-published copy is recognised and not shipped again.
//!
//! # Layout (one sled tree, keys prefixed by kind)
//!
//! * `c` + dedup key -> [`Record`] (format-versioned, see [`record`])
//! * `p` + dedup key -> empty: index of pending records
//! * `l` + landed-at (ms, big-endian) + dedup key -> empty: prune index
//! * `d` + topic + 0x00 + partition + offset -> [`DeadLetter`]
//! * `r` + topic + 0x00 + partition + offset -> when that dead letter was re-driven
//! * `meta:format` -> the WAL layout version
//! * `meta:count:` + name -> a persistent counter (u64, big-endian)

pub mod record;

use std::path::Path;

pub use record::{DeadLetter, PendingRecord, Record};

use crate::key::DedupKey;

/// Version of the key layout above.
const LAYOUT_VERSION: u8 = 1;
const META_FORMAT: &[u8] = b"meta:format";

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL I/O error: {0}. Check the disk under wal.path (space, permissions); nothing was acknowledged past this point")]
    Io(#[from] sled::Error),
    #[error("WAL at {path} was written by an incompatible landfall (layout {found}, this build reads {LAYOUT_VERSION}); run the version that wrote it to drain it, or move the directory away to start empty")]
    Incompatible { path: String, found: u8 },
    #[error("WAL record under {key} is damaged ({source}); the WAL at wal.path needs repair: move it away and let Kafka redeliver from the last committed offset")]
    Corrupt { key: String, source: record::FormatError },
}

/// What the WAL knows about a dedup key.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyState {
    Absent,
    Pending,
    /// Landed, or rejected and dead-lettered: nothing more to ship.
    Resolved,
}

#[derive(Clone)]
pub struct Wal {
    db: sled::Db,
    tree: sled::Tree,
    /// Commits still to fail with an injected I/O error (drills and tests).
    #[cfg(feature = "drill")]
    injected_io_errors: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

fn ckey(prefix: u8, key: &DedupKey) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = prefix;
    k[1..].copy_from_slice(&key.0);
    k
}

fn landed_index_key(at_ms: u64, key: &DedupKey) -> [u8; 41] {
    let mut k = [0u8; 41];
    k[0] = b'l';
    k[1..9].copy_from_slice(&at_ms.to_be_bytes());
    k[9..].copy_from_slice(&key.0);
    k
}

fn dead_letter_key(topic: &str, partition: i32, offset: i64) -> Vec<u8> {
    position_key(b'd', topic, partition, offset)
}

fn position_key(prefix: u8, topic: &str, partition: i32, offset: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 14);
    k.push(prefix);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A set of WAL changes applied atomically by [`Wal::commit`].
#[derive(Default, Clone)]
pub struct WalBatch {
    batch: sled::Batch,
    len: usize,
    /// Whether it holds landed or rejected marks (for the failpoint between
    /// applying and flushing them).
    resolves: bool,
}

impl WalBatch {
    pub fn pending(&mut self, key: &DedupKey, rec: &PendingRecord) {
        self.batch.insert(&ckey(b'c', key)[..], record::encode(&Record::Pending(rec.clone())));
        self.batch.insert(&ckey(b'p', key)[..], &[][..]);
        self.len += 1;
    }

    pub fn landed(&mut self, key: &DedupKey, at_ms: u64) {
        self.resolve(key, Record::Landed { at_ms }, at_ms);
    }

    pub fn rejected(&mut self, key: &DedupKey, at_ms: u64) {
        self.resolve(key, Record::Rejected { at_ms }, at_ms);
    }

    fn resolve(&mut self, key: &DedupKey, rec: Record, at_ms: u64) {
        self.resolves = true;
        self.batch.insert(&ckey(b'c', key)[..], record::encode(&rec));
        self.batch.remove(&ckey(b'p', key)[..]);
        self.batch.insert(&landed_index_key(at_ms, key)[..], &[][..]);
        self.len += 1;
    }

    pub fn dead_letter(&mut self, d: &DeadLetter) {
        self.batch.insert(dead_letter_key(&d.topic, d.partition, d.offset), record::encode(d));
        self.len += 1;
    }

    /// Marks a dead letter as re-driven successfully (`landfall dlq replay`).
    pub fn dead_letter_replayed(&mut self, d: &DeadLetter, at_ms: u64) {
        self.batch.insert(position_key(b'r', &d.topic, d.partition, d.offset), &at_ms.to_be_bytes()[..]);
        self.len += 1;
    }

    /// Sets a persistent counter (see [`Wal::counter`]).
    pub fn set_counter(&mut self, name: &str, value: u64) {
        self.batch.insert(counter_key(name), &value.to_be_bytes()[..]);
        self.len += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn counter_key(name: &str) -> Vec<u8> {
    [b"meta:count:", name.as_bytes()].concat()
}

impl Wal {
    /// Opens (or creates) the WAL at `path`, checking its layout version.
    pub fn open(path: &Path) -> Result<Wal, WalError> {
        let db = sled::Config::new().path(path).open()?;
        let tree = db.open_tree("landfall")?;
        match tree.get(META_FORMAT)? {
            None => {
                tree.insert(META_FORMAT, &[LAYOUT_VERSION][..])?;
                db.flush()?;
            }
            Some(v) if v.as_ref() == [LAYOUT_VERSION] => {}
            Some(v) => return Err(WalError::Incompatible { path: path.display().to_string(), found: v.first().copied().unwrap_or(0) }),
        }
        Ok(Wal {
            db,
            tree,
            #[cfg(feature = "drill")]
            injected_io_errors: Default::default(),
        })
    }

    /// Makes the next `n` commits fail as a full disk would (drills and tests).
    #[cfg(feature = "drill")]
    pub fn inject_io_errors(&self, n: u32) {
        self.injected_io_errors.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// A persistent counter, advanced in the same durable batches as the
    /// work it counts (so it survives kill -9 exactly).
    pub fn counter(&self, name: &str) -> Result<u64, WalError> {
        Ok(self.tree.get(counter_key(name))?.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map(u64::from_be_bytes).unwrap_or(0))
    }

    pub fn state(&self, key: &DedupKey) -> Result<KeyState, WalError> {
        match self.tree.get(ckey(b'c', key))? {
            None => Ok(KeyState::Absent),
            Some(bytes) => match record::decode::<Record>(&bytes) {
                Ok(Record::Pending(_)) => Ok(KeyState::Pending),
                Ok(_) => Ok(KeyState::Resolved),
                Err(source) => Err(WalError::Corrupt { key: key.to_hex(), source }),
            },
        }
    }

    /// Applies `batch` atomically and returns once it is durable on disk.
    pub fn commit(&self, batch: WalBatch) -> Result<(), WalError> {
        if batch.is_empty() {
            return Ok(());
        }
        #[cfg(feature = "drill")]
        {
            use std::sync::atomic::Ordering::SeqCst;
            if self.injected_io_errors.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok() {
                return Err(WalError::Io(sled::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "injected: no space left on device",
                ))));
            }
        }
        let resolves = batch.resolves;
        self.tree.apply_batch(batch.batch)?;
        if resolves {
            crate::failpoint::hit(crate::failpoint::AFTER_LANDED_APPLY);
        }
        self.db.flush()?;
        Ok(())
    }

    /// Every pending record (to re-ship on start), in key order.
    pub fn pending(&self) -> impl Iterator<Item = Result<(DedupKey, PendingRecord), WalError>> + '_ {
        self.tree.scan_prefix([b'p']).map(move |item| {
            let (k, _) = item?;
            let mut key = [0u8; 32];
            key.copy_from_slice(&k[1..33.min(k.len())]);
            let key = DedupKey(key);
            let bytes = self.tree.get(ckey(b'c', &key))?;
            let corrupt = |source| WalError::Corrupt { key: key.to_hex(), source };
            match bytes.map(|b| record::decode::<Record>(&b)) {
                Some(Ok(Record::Pending(p))) => Ok((key, p)),
                Some(Ok(_)) | None => Err(corrupt(record::FormatError::Malformed("pending index points at a resolved record".into()))),
                Some(Err(e)) => Err(corrupt(e)),
            }
        })
    }

    pub fn pending_count(&self) -> usize {
        self.tree.scan_prefix([b'p']).count()
    }

    /// Removes resolved records resolved before `before_ms`, returning how many.
    pub fn prune(&self, before_ms: u64) -> Result<usize, WalError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        let end = landed_index_key(before_ms, &DedupKey([0; 32]));
        for item in self.tree.range(&[b'l'][..]..&end[..]) {
            let (k, _) = item?;
            if k.len() != 41 {
                continue;
            }
            let mut key = [0u8; 32];
            key.copy_from_slice(&k[9..]);
            let key = DedupKey(key);
            let mut at = [0u8; 8];
            at.copy_from_slice(&k[1..9]);
            let at = u64::from_be_bytes(at);
            // Drop the record only if this index entry is its current mark:
            // not if it was pended again, nor resolved again later (then a
            // newer index entry decides).
            if let Some(bytes) = self.tree.get(ckey(b'c', &key))? {
                match record::decode::<Record>(&bytes) {
                    Ok(Record::Landed { at_ms } | Record::Rejected { at_ms }) if at_ms == at => {
                        batch.remove(&ckey(b'c', &key)[..]);
                    }
                    _ => {}
                }
            }
            batch.remove(k);
            n += 1;
            if n % 10_000 == 0 {
                self.tree.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        Ok(n)
    }

    /// When a dead letter was re-driven successfully, if it was.
    pub fn replayed_at(&self, d: &DeadLetter) -> Result<Option<u64>, WalError> {
        Ok(self
            .tree
            .get(position_key(b'r', &d.topic, d.partition, d.offset))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes))
    }

    /// Every dead letter recorded, in (topic, partition, offset) order.
    pub fn dead_letters(&self) -> impl Iterator<Item = Result<DeadLetter, WalError>> + '_ {
        self.tree.scan_prefix([b'd']).map(|item| {
            let (k, v) = item?;
            record::decode::<DeadLetter>(&v).map_err(|source| WalError::Corrupt { key: String::from_utf8_lossy(&k).into_owned(), source })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> DedupKey {
        DedupKey([n; 32])
    }

    fn rec(row: &str) -> PendingRecord {
        PendingRecord { table: "t".into(), row: row.as_bytes().to_vec(), written_at_ms: 1 }
    }

    #[test]
    fn pending_landed_survive_reopen_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(dir.path()).unwrap();
            let mut b = WalBatch::default();
            b.pending(&key(1), &rec("{\"a\":1}"));
            b.pending(&key(2), &rec("{\"a\":2}"));
            wal.commit(b).unwrap();
            let mut b = WalBatch::default();
            b.landed(&key(1), 1000);
            wal.commit(b).unwrap();
        }
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.state(&key(1)).unwrap(), KeyState::Resolved);
        assert_eq!(wal.state(&key(2)).unwrap(), KeyState::Pending);
        assert_eq!(wal.state(&key(3)).unwrap(), KeyState::Absent);
        let pending: Vec<_> = wal.pending().collect::<Result<_, _>>().unwrap();
        assert_eq!(pending, vec![(key(2), rec("{\"a\":2}"))]);
        assert_eq!(wal.prune(999).unwrap(), 0);
        assert_eq!(wal.prune(1001).unwrap(), 1);
        assert_eq!(wal.state(&key(1)).unwrap(), KeyState::Absent);
        assert_eq!(wal.state(&key(2)).unwrap(), KeyState::Pending, "prune never drops pending records");
    }

    #[test]
    fn incompatible_layout_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(dir.path()).unwrap();
            wal.tree.insert(META_FORMAT, &[99u8][..]).unwrap();
            wal.db.flush().unwrap();
        }
        let err = Wal::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("incompatible") && err.contains("99"), "{err}");
    }

    #[test]
    fn damaged_record_is_reported_not_panicked() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path()).unwrap();
        wal.tree.insert(ckey(b'c', &key(4)), &[1u8, 0xff, 0xff][..]).unwrap();
        let err = wal.state(&key(4)).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
    }

    #[test]
    fn dead_letters_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path()).unwrap();
        let mut b = WalBatch::default();
        for offset in [5, 3] {
            b.dead_letter(&DeadLetter {
                topic: "dms".into(),
                partition: 0,
                offset,
                reason: "bad".into(),
                payload_prefix: vec![1],
                payload_len: 1,
                payload_hash: [0; 32],
                at_ms: 1,
            });
        }
        wal.commit(b).unwrap();
        let offsets: Vec<i64> = wal.dead_letters().map(|d| d.unwrap().offset).collect();
        assert_eq!(offsets, vec![3, 5]);
    }

    mod model {
        //! The WAL against a `BTreeMap` model, with reboots (drop and reopen)
        //! at any step: every committed batch must survive a reboot exactly.
        use std::collections::BTreeMap;

        use proptest::prelude::*;

        use super::super::*;

        #[derive(Debug, Clone)]
        enum Op {
            Pending(u8, u8),
            Landed(u8, u16),
            Rejected(u8, u16),
            Prune(u16),
            Reboot,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0u8..8, any::<u8>()).prop_map(|(k, v)| Op::Pending(k, v)),
                (0u8..8, 0u16..100).prop_map(|(k, t)| Op::Landed(k, t)),
                (0u8..8, 0u16..100).prop_map(|(k, t)| Op::Rejected(k, t)),
                (0u16..120).prop_map(Op::Prune),
                Just(Op::Reboot),
            ]
        }

        #[derive(Debug, Clone, PartialEq)]
        enum M {
            Pending(Vec<u8>),
            Resolved(u64),
        }

        proptest! {
            #[test]
            fn wal_matches_a_btreemap_model_across_reboots(ops in proptest::collection::vec(op(), 1..60)) {
                let dir = tempfile::tempdir().unwrap();
                let mut wal = Some(Wal::open(dir.path()).unwrap());
                let mut model: BTreeMap<u8, M> = BTreeMap::new();
                let key = |k: u8| DedupKey([k; 32]);
                for op in ops {
                    let w = wal.as_ref().unwrap();
                    match op {
                        Op::Pending(k, v) => {
                            let mut b = WalBatch::default();
                            b.pending(&key(k), &PendingRecord { table: "t".into(), row: vec![v], written_at_ms: 0 });
                            w.commit(b).unwrap();
                            model.insert(k, M::Pending(vec![v]));
                        }
                        Op::Landed(k, t) | Op::Rejected(k, t) => {
                            let mut b = WalBatch::default();
                            if matches!(op, Op::Landed(..)) { b.landed(&key(k), t as u64) } else { b.rejected(&key(k), t as u64) }
                            w.commit(b).unwrap();
                            model.insert(k, M::Resolved(t as u64));
                        }
                        Op::Prune(before) => {
                            w.prune(before as u64).unwrap();
                            // Resolved before `before` go; pending stay. (A key
                            // resolved twice keeps its newest mark; an older prune
                            // index entry must not drop it.)
                            model.retain(|_, m| !matches!(m, M::Resolved(at) if *at < before as u64));
                        }
                        Op::Reboot => {
                            drop(wal.take());
                            // sled's background flusher may hold the file lock a moment longer.
                            let mut reopened = Wal::open(dir.path());
                            for _ in 0..100 {
                                if reopened.is_ok() {
                                    break;
                                }
                                std::thread::sleep(std::time::Duration::from_millis(10));
                                reopened = Wal::open(dir.path());
                            }
                            wal = Some(reopened.unwrap());
                        }
                    }
                    let w = wal.as_ref().unwrap();
                    for k in 0u8..8 {
                        let want = match model.get(&k) {
                            None => KeyState::Absent,
                            Some(M::Pending(_)) => KeyState::Pending,
                            Some(M::Resolved(_)) => KeyState::Resolved,
                        };
                        prop_assert_eq!(w.state(&key(k)).unwrap(), want, "key {}", k);
                    }
                    let pending: BTreeMap<u8, Vec<u8>> = w.pending().map(|r| r.unwrap()).map(|(k, p)| (k.0[0], p.row)).collect();
                    let want: BTreeMap<u8, Vec<u8>> = model.iter().filter_map(|(k, m)| match m { M::Pending(v) => Some((*k, v.clone())), _ => None }).collect();
                    prop_assert_eq!(pending, want);
                }
            }
        }
    }
}
