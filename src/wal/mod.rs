//! The write-ahead log: a sled database on local disk.
//!
//! # What is durable when
//!
//! Every change is written here as pending (its row in a [`PendingBatch`])
//! *before* it is shipped, and marked landed (its key in a key list) after
//! BigQuery accepted it. Each [`Wal::flush`] applies one atomic sled batch and then calls
//! `sled::Db::flush`, which returns only when the batch is on disk (sled 0.34
//! is durable only after flush). The flushes on the write path, per pipeline batch:
//!
//! 1. after the pending records of a batch are written (before insertAll);
//! 2. after their landed marks are written (before the Kafka offset commit);
//!    when BigQuery rejected rows, this batch also holds the rejection marks,
//!    the dead letters and their pending dead-letter-table rows, and
//! 3. (only then) after the dead-letter rows' landed marks are written.
//!
//! Outside the write path: two flushes per prune, one when a WAL is created,
//! and one on open when batch records without pending rows are removed.
//!
//! A crash before (1) loses nothing: the offsets were not committed, Kafka
//! redelivers. A crash between (1) and (2) leaves pending records that the
//! next start re-ships with their original insertIds (the row bytes are in the
//! record). After (2) the key is remembered until `wal.retention` prunes it, so
//! a redelivered or re-published copy is recognised and not shipped again.
//!
//! The directory and its files are private to their owner (0700/0600,
//! [`private`]): they hold row data.
//!
//! # Layout (one sled tree, keys prefixed by kind)
//!
//! * `l` + resolved-at (ms, big-endian) + number + rejected (1 byte) -> a
//!   key list ([`record::encode_key_list`]): the dedup keys one commit
//!   resolved at that time, landed (0) or rejected and dead-lettered (1).
//!   A key is in at most one list: resolved again, it leaves the older one
//!   in the same commit. Which list holds each key is kept in memory
//!   ([`marks`], rebuilt on open), so a new key costs no sled read and sled
//!   holds one record per commit, not one per key. Lists are pruned whole,
//!   in time order.
//! * `b` + batch number (big-endian) -> [`PendingBatch`]: the rows pended by
//!   one commit; removed in the commit that resolves the last of them. A row
//!   in it is pending unless its key is in a list numbered above the batch.
//!   Which batch holds each pending key is kept in memory, rebuilt on open.
//! * `d` + topic + 0x00 + partition + offset + dead-letter id -> [`DeadLetter`]
//!   (dead letters of format 2, keyed without the id, are rewritten on open)
//! * `r` + the same suffix -> when that dead letter was re-driven
//! * `meta:format` -> the WAL layout version
//! * `meta:count:` + name -> a persistent counter (u64, big-endian)
//! * `meta:setting:` + name -> a setting the tables depend on (each table's
//!   `order_by`), pinned on first use

pub mod marks;
pub mod private;
pub mod record;

use std::path::Path;

pub use record::{DeadLetter, KafkaMessage, PendingBatch, PendingBatchRef, PendingRecord, Record, RefusedRow, Stage};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::key::DedupKey;
use marks::{list_at, list_key, list_rejected, list_seq, ListKey, Marks, Slot};

/// Version of the key layout above, and of the dedup keys in it: 3 since
/// keys name a change by its transaction details or Kafka position
/// (`src/key.rs`); a WAL keyed another way cannot de-duplicate these. 4
/// since marks are key lists (layout 3 kept one `c` + key record per
/// resolved key; such a WAL is moved to layout 4 on open).
const LAYOUT_VERSION: u8 = 4;
const META_FORMAT: &[u8] = b"meta:format";

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL I/O error: {0}. Check the disk under wal.path (space, permissions); nothing was acknowledged past this point")]
    Io(#[from] sled::Error),
    #[error("WAL at {path} was written by an incompatible landfall (layout {found}, this build reads {LAYOUT_VERSION}); run the version that wrote it to drain it, or move the directory away to start empty")]
    Incompatible { path: String, found: u8 },
    #[error("WAL record under {key} is damaged ({source}); the WAL at wal.path needs repair: move it away and let Kafka redeliver from the last committed offset")]
    Corrupt { key: String, source: record::FormatError },
    #[error(
        "a WAL record ({what}) cannot be encoded: {source}. Nothing of this commit was written and nothing was acknowledged. \
         Rows larger than bigquery.max_request_bytes are dead-lettered before they reach the WAL, so this is a bug: report it \
         with this message; a restart re-reads the messages from the last committed offset"
    )]
    Encode { what: String, source: record::EncodeError },
    #[error(
        "the WAL at wal.path and the tables were written with {setting} = {stored}, and this start asks for {configured}: \
         keys or ordering values of one kind cannot be compared with the other. Restore the setting, or start afresh for this \
         table (new log and final tables, and an empty WAL)"
    )]
    SettingChanged { setting: String, stored: String, configured: String },
}

/// Where a key is, with the list that resolved it.
enum Resolution {
    Pending,
    Absent,
    In(ListKey),
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
    /// Batch records with pending rows: which batch each pending key's row
    /// is in, and how many of a batch's rows are still pending (rebuilt from
    /// the `b` records on open).
    open: Arc<Mutex<OpenBatches>>,
    /// Which key list holds each resolved key (rebuilt from the `l` records
    /// on open). Locked after `open` when both are taken.
    marks: Arc<Mutex<Marks>>,
    /// The landed (or rejected) keys held to absorb redeliveries, counted on
    /// open and kept current by commits and prunes.
    resolved_held: Arc<std::sync::atomic::AtomicU64>,
    /// Commits still to fail with an injected I/O error (drills and tests).
    #[cfg(feature = "drill")]
    injected_io_errors: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

fn as_list_key(k: &[u8]) -> Result<ListKey, WalError> {
    k.try_into().map_err(|_| WalError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        source: record::FormatError::Malformed("a key list's key is not 18 bytes".into()),
    })
}

/// A key list as an operator reads it in an error.
fn list_name(list: &ListKey) -> String {
    format!("key list {} (resolved at {} ms{})", list_seq(list), list_at(list), if list_rejected(list) { ", rejected" } else { "" })
}

#[derive(Default)]
struct OpenBatches {
    key_batch: HashMap<DedupKey, u64>,
    remaining: HashMap<u64, usize>,
    /// When each open batch record's oldest pending row was written (ms):
    /// the age of the oldest pending change, for the metrics.
    written_at: HashMap<u64, u64>,
}

impl OpenBatches {
    /// One row of batch record `n` is no longer pending there; the record
    /// goes (in the same commit) with its last one.
    /// Returns whether the record goes.
    fn release(&mut self, n: u64, writes: &mut sled::Batch) -> bool {
        if let Some(left) = self.remaining.get_mut(&n) {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.remaining.remove(&n);
                self.written_at.remove(&n);
                writes.remove(&numbered_key(b'b', n)[..]);
                return true;
            }
        }
        false
    }
}

fn numbered_key(prefix: u8, n: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

/// Rows per batch record at most this large (a single larger row gets a
/// record of its own; records stay under [`record::MAX_RECORD_BYTES`]).
const BATCH_RECORD_BYTES: usize = 4 * 1024 * 1024;

/// `prefix` + topic + 0 + partition + offset + id: one entry per dead
/// letter, in Kafka order, two letters of one message side by side.
fn dead_letter_key(prefix: u8, d: &DeadLetter) -> Vec<u8> {
    let mut k = position_key(prefix, &d.topic, d.partition, d.offset);
    k.extend_from_slice(&d.id);
    k
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

fn batch_number(k: &[u8]) -> Result<u64, WalError> {
    k.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).ok_or_else(|| WalError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        source: record::FormatError::Malformed("batch record key is not 9 bytes".into()),
    })
}

/// Opens the sled database. sled releases its file lock from a background
/// thread after the last handle is dropped, so a handle of this process
/// that was just closed (a `dlq replay` after the service stopped, a test
/// reopening) may still hold it for a moment: the lock is tried again for up
/// to two seconds. Another process holding it gets the error after that.
fn open_db(path: &Path, cache_bytes: u64) -> Result<sled::Db, WalError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match sled::Config::new().path(path).cache_capacity(cache_bytes).open() {
            Err(e) if lock_held(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

/// Whether sled refused to open because another handle holds the WAL's
/// file lock (it reports that as kind Other: "could not acquire lock on ...").
fn lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

impl WalError {
    /// The WAL is open in another process (a running service).
    pub fn is_locked(&self) -> bool {
        matches!(self, WalError::Io(e) if lock_held(e))
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A set of WAL changes applied atomically by [`Wal::flush`].
#[derive(Default, Clone)]
pub struct WalBatch {
    batch: sled::Batch,
    len: usize,
    pending: Vec<(DedupKey, PendingRecord)>,
    /// Resolved keys: (key, rejected, at_ms), in order.
    resolved: Vec<(DedupKey, bool, u64)>,
    counters: Vec<(Vec<u8>, u64)>,
    /// Dead letters, encoded by [`Wal::flush`] (where an encoding error
    /// can fail the commit before anything is written).
    dead_letters: Vec<DeadLetter>,
}

impl WalBatch {
    pub fn pending(&mut self, key: &DedupKey, rec: PendingRecord) {
        self.pending.push((*key, rec));
        self.len += 1;
    }

    pub fn landed(&mut self, key: &DedupKey, at_ms: u64) {
        self.resolved.push((*key, false, at_ms));
        self.len += 1;
    }

    pub fn rejected(&mut self, key: &DedupKey, at_ms: u64) {
        self.resolved.push((*key, true, at_ms));
        self.len += 1;
    }

    pub fn dead_letter(&mut self, d: &DeadLetter) {
        self.dead_letters.push(d.clone());
        self.len += 1;
    }

    /// Marks a dead letter as re-driven successfully (`landfall dlq replay`).
    pub fn dead_letter_replayed(&mut self, d: &DeadLetter, at_ms: u64) {
        self.batch.insert(dead_letter_key(b'r', d), &at_ms.to_be_bytes()[..]);
        self.len += 1;
    }

    /// Adds `delta` to a persistent counter (see [`Wal::counter`]) when the
    /// batch is committed (commits may land in any order; additions commute).
    pub fn add_to_counter(&mut self, name: &str, delta: u64) {
        self.counters.push((counter_key(name), delta));
        self.len += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

pub use crate::config::DEFAULT_WAL_CACHE_BYTES as DEFAULT_CACHE_BYTES;

fn counter_key(name: &str) -> Vec<u8> {
    [b"meta:count:", name.as_bytes()].concat()
}

impl Wal {
    /// Opens (or creates) the WAL at `path`, checking its layout version,
    /// with the default page cache ([`DEFAULT_CACHE_BYTES`]).
    pub fn open(path: &Path) -> Result<Wal, WalError> {
        Self::open_with(path, DEFAULT_CACHE_BYTES)
    }

    /// As [`Wal::open`], with a page cache of at most `cache_bytes` (sled's
    /// own default is 1 GiB, which a bridge working through a large backlog
    /// would fill).
    pub fn open_with(path: &Path, cache_bytes: u64) -> Result<Wal, WalError> {
        private::create_dir(path).map_err(|e| WalError::Io(sled::Error::Io(e)))?;
        let db = open_db(path, cache_bytes)?;
        private::secure(path);
        let tree = db.open_tree("landfall")?;
        let layout = match tree.get(META_FORMAT)? {
            None => {
                tree.insert(META_FORMAT, &[LAYOUT_VERSION][..])?;
                db.flush()?;
                LAYOUT_VERSION
            }
            Some(v) if v.as_ref() == [LAYOUT_VERSION] || v.as_ref() == [3] => v[0],
            Some(v) => return Err(WalError::Incompatible { path: path.display().to_string(), found: v.first().copied().unwrap_or(0) }),
        };
        let wal = Wal {
            db,
            tree,
            open: Default::default(),
            marks: Default::default(),
            resolved_held: Default::default(),
            #[cfg(feature = "drill")]
            injected_io_errors: Default::default(),
        };
        if layout == 3 {
            let keys = wal.move_from_layout_3()?;
            tracing::info!(keys, "moved the WAL's landed marks to layout {LAYOUT_VERSION} (key lists)");
        }
        wal.rebuild_marks()?;
        wal.rebuild_open_batches()?;
        wal.upgrade_dead_letters()?;
        Ok(wal)
    }

    /// Reads which list holds each resolved key from the `l` records.
    fn rebuild_marks(&self) -> Result<(), WalError> {
        let mut marks = Marks::default();
        let mut n = 0u64;
        for item in self.tree.scan_prefix([b'l']) {
            let (k, v) = item?;
            let list = as_list_key(&k)?;
            let keys = record::decode_key_list(&v).map_err(|source| WalError::Corrupt { key: list_name(&list), source })?;
            let slot = marks.add_list(list);
            for key in keys.chunks_exact(32) {
                marks.insert(&DedupKey(key.try_into().unwrap_or_default()), slot);
            }
            n += (keys.len() / 32) as u64;
        }
        *self.marks.lock().unwrap_or_else(|e| e.into_inner()) = marks;
        self.resolved_held.store(n, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Layout 3 kept a `c` + key record per resolved key and an `l` prune
    /// index beside them: their marks become key lists, in one atomic batch,
    /// flushed. Returns how many keys were moved.
    fn move_from_layout_3(&self) -> Result<usize, WalError> {
        let mut lists: std::collections::BTreeMap<ListKey, Vec<[u8; 32]>> = Default::default();
        let mut writes = sled::Batch::default();
        let mut n = 0;
        for item in self.tree.scan_prefix([b'c']) {
            let (k, v) = item?;
            let key: [u8; 32] = k.get(1..).and_then(|b| b.try_into().ok()).ok_or_else(|| WalError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                source: record::FormatError::Malformed("a layout-3 mark key is not 33 bytes".into()),
            })?;
            let rec: Record = record::decode(&v).map_err(|source| WalError::Corrupt { key: DedupKey(key).to_hex(), source })?;
            let list = match rec {
                Record::Landed { at_ms, seq } => list_key(at_ms, seq, false),
                Record::Rejected { at_ms, seq } => list_key(at_ms, seq, true),
            };
            lists.entry(list).or_default().push(key);
            writes.remove(k);
            n += 1;
        }
        for item in self.tree.scan_prefix([b'l']) {
            writes.remove(item?.0);
        }
        for (list, mut keys) in lists {
            let bytes = record::encode_key_list(&mut keys).map_err(|source| WalError::Encode { what: list_name(&list), source })?;
            writes.insert(&list[..], bytes);
        }
        writes.insert(META_FORMAT, &[LAYOUT_VERSION][..]);
        self.tree.apply_batch(writes)?;
        self.db.flush()?;
        Ok(n)
    }

    /// The list that holds `key`, if one does: the one the index names,
    /// confirmed in its record.
    fn held(&self, marks: &Marks, key: &DedupKey) -> Result<Option<ListKey>, WalError> {
        let Some((_, list)) = marks.candidate(key) else { return Ok(None) };
        let Some(bytes) = self.tree.get(list)? else { return Ok(None) };
        let keys = record::decode_key_list(&bytes).map_err(|source| WalError::Corrupt { key: list_name(&list), source })?;
        Ok(record::key_list_holds(keys, &key.0).then_some(list))
    }

    /// Landed (or rejected) keys the WAL holds to absorb redeliveries until
    /// `wal.retention` prunes them (see the field's docs).
    pub fn resolved_count(&self) -> u64 {
        self.resolved_held.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Finds, per batch record, the rows still pending in it (no mark
    /// numbered above the batch, no newer batch holding the same key), and
    /// removes batch records left with none.
    fn rebuild_open_batches(&self) -> Result<(), WalError> {
        let mut held_open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        let mut open = OpenBatches::default();
        let mut writes = sled::Batch::default();
        let mut empty = Vec::new();
        let mut released = false;
        for item in self.tree.scan_prefix([b'b']) {
            let (k, v) = item?;
            let n = batch_number(&k)?;
            let batch: PendingBatch = record::decode(&v).map_err(|source| WalError::Corrupt { key: format!("batch {n}"), source })?;
            let mut live = 0;
            for (key, rec) in batch.entries {
                let key = DedupKey(key);
                if self.held(&marks, &key)?.is_some_and(|list| list_seq(&list) > n) {
                    continue;
                }
                live += 1;
                *open.remaining.entry(n).or_default() += 1;
                let at = open.written_at.entry(n).or_insert(rec.written_at_ms);
                *at = (*at).min(rec.written_at_ms);
                if let Some(old) = open.key_batch.insert(key, n) {
                    released |= open.release(old, &mut writes);
                }
            }
            if live == 0 {
                empty.push(n);
            }
        }
        for n in &empty {
            writes.remove(&numbered_key(b'b', *n)[..]);
        }
        if released || !empty.is_empty() {
            self.tree.apply_batch(writes)?;
            self.db.flush()?;
        }
        *held_open = open;
        Ok(())
    }

    /// Pins `value` for the setting `name`: recorded on first use (durably),
    /// an error if the WAL recorded another value.
    pub fn pin_setting(&self, name: &str, value: &str) -> Result<(), WalError> {
        let key = [b"meta:setting:", name.as_bytes()].concat();
        let stored = self.tree.get(&key)?.map(|v| String::from_utf8_lossy(&v).into_owned());
        match stored {
            Some(stored) if stored != value => {
                Err(WalError::SettingChanged { setting: name.to_owned(), stored, configured: value.to_owned() })
            }
            Some(_) => Ok(()),
            None => {
                self.tree.insert(key, value.as_bytes())?;
                self.db.flush()?;
                Ok(())
            }
        }
    }

    /// Makes the next `n` commits fail as a full disk would (drills and tests).
    #[cfg(feature = "drill")]
    pub fn inject_io_errors(&self, n: u32) {
        self.injected_io_errors.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// A persistent counter, advanced in the same durable batches as the
    /// work it counts. (With batches in flight, another batch's commit may
    /// acknowledge a message whose count is not durable yet, so a kill -9
    /// can leave it a few short; it is a statistic, not a guarantee.)
    pub fn counter(&self, name: &str) -> Result<u64, WalError> {
        Ok(self.tree.get(counter_key(name))?.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map(u64::from_be_bytes).unwrap_or(0))
    }

    pub fn state(&self, key: &DedupKey) -> Result<KeyState, WalError> {
        Ok(match self.resolution(key)? {
            Resolution::Pending => KeyState::Pending,
            Resolution::Absent => KeyState::Absent,
            Resolution::In(_) => KeyState::Resolved,
        })
    }

    /// Where `key` is. The locks are held while its list is read: a commit
    /// moving the key to another list cannot come between.
    fn resolution(&self, key: &DedupKey) -> Result<Resolution, WalError> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.key_batch.contains_key(key) {
            return Ok(Resolution::Pending);
        }
        let marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        Ok(self.held(&marks, key)?.map_or(Resolution::Absent, Resolution::In))
    }

    /// Whether BigQuery accepted `key` (and it is not pending again): a
    /// rejected key is not, so `dlq replay` can re-drive it.
    pub fn is_landed(&self, key: &DedupKey) -> Result<bool, WalError> {
        Ok(matches!(self.resolution(key)?, Resolution::In(list) if !list_rejected(&list)))
    }

    /// Applies `batch` atomically and returns once it is durable on disk.
    pub fn flush(&self, batch: &WalBatch) -> Result<(), WalError> {
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
        let WalBatch { batch: writes, pending, resolved, counters, dead_letters, .. } = batch;
        // The caller keeps the batch for a retry after an I/O error; only
        // sled's own batch (a few small entries) is copied.
        let mut writes = writes.clone();
        let resolves = !resolved.is_empty();
        // Held for the whole commit: commits are serialized by sled anyway,
        // and counters are read and written under it.
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        // Building the writes updates the in-memory views of open batches
        // and marks as it goes; if it fails (a record that does not encode,
        // an I/O error while reading), nothing was written: read the views
        // back from disk.
        let held = match self.build_writes(&mut open, &mut marks, &mut writes, pending, resolved, counters, dead_letters) {
            Ok(held) => held,
            Err(e) => {
                drop((open, marks));
                self.rebuild_marks()?;
                self.rebuild_open_batches()?;
                return Err(e);
            }
        };
        if let Err(e) = self.tree.apply_batch(writes) {
            // The in-memory views ran ahead of the disk: read them back.
            drop((open, marks));
            self.rebuild_marks()?;
            self.rebuild_open_batches()?;
            return Err(e.into());
        }
        drop((open, marks));
        let (added, left) = held;
        self.resolved_held.fetch_add(added, std::sync::atomic::Ordering::Relaxed);
        self.resolved_held.fetch_sub(left, std::sync::atomic::Ordering::Relaxed);
        if resolves {
            crate::failpoint::hit(crate::failpoint::AFTER_LANDED_APPLY);
        }
        self.db.flush()?;
        Ok(())
    }

    /// The writes of one commit, into `writes`; `open` and `marks` follow
    /// them. Returns how many keys joined a list and how many left one.
    #[allow(clippy::too_many_arguments)]
    fn build_writes(
        &self,
        open: &mut OpenBatches,
        marks: &mut Marks,
        writes: &mut sled::Batch,
        pending: &[(DedupKey, PendingRecord)],
        resolved: &[(DedupKey, bool, u64)],
        counters: &[(Vec<u8>, u64)],
        dead_letters: &[DeadLetter],
    ) -> Result<(u64, u64), WalError> {
        let encode = |what: &dyn Fn() -> String, bytes: Result<Vec<u8>, record::EncodeError>| {
            bytes.map_err(|source| WalError::Encode { what: what(), source })
        };
        for d in dead_letters {
            let bytes = encode(&|| format!("dead letter {}/{}@{}", d.topic, d.partition, d.offset), record::encode(d))?;
            writes.insert(dead_letter_key(b'd', d), bytes);
        }
        for (key, delta) in counters {
            let now = self.tree.get(key)?.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map(u64::from_be_bytes).unwrap_or(0);
            writes.insert(&key[..], &(now + delta).to_be_bytes()[..]);
        }
        // Resolutions first (numbered below this commit's batch records): a
        // key both resolved and pended in one batch ends pending.
        let held = self.resolve(open, marks, writes, resolved)?;
        let mut chunk: Vec<(&[u8; 32], &PendingRecord)> = Vec::new();
        let mut chunk_bytes = 0;
        let mut rest = pending.iter().peekable();
        while let Some((key, rec)) = rest.next() {
            chunk_bytes += rec.row.len();
            chunk.push((&key.0, rec));
            let full = rest.peek().is_some_and(|(_, next)| chunk_bytes + next.row.len() > BATCH_RECORD_BYTES);
            if full || rest.peek().is_none() {
                let n = self.db.generate_id()?;
                if let Some(at) = chunk.iter().map(|(_, rec)| rec.written_at_ms).min() {
                    open.written_at.insert(n, at);
                }
                for (k, _) in &chunk {
                    let k = DedupKey(**k);
                    *open.remaining.entry(n).or_default() += 1;
                    // Pended again: its row now lives in the newer batch record.
                    if let Some(old) = open.key_batch.insert(k, n) {
                        open.release(old, writes);
                    }
                }
                let rows = chunk.len();
                let bytes = encode(&|| format!("batch {n} of {rows} pending rows"), record::encode(&PendingBatchRef { entries: &chunk }))?;
                chunk.clear();
                writes.insert(&numbered_key(b'b', n)[..], bytes);
                chunk_bytes = 0;
            }
        }
        Ok(held)
    }

    /// The key lists of one commit's resolutions: one per (time, landed or
    /// rejected); a key already in a list leaves it (the list is rewritten,
    /// or removed when it empties). Returns how many keys joined a list and
    /// how many left one.
    fn resolve(
        &self,
        open: &mut OpenBatches,
        marks: &mut Marks,
        writes: &mut sled::Batch,
        resolved: &[(DedupKey, bool, u64)],
    ) -> Result<(u64, u64), WalError> {
        let mut lists: std::collections::BTreeMap<(u64, bool), Vec<[u8; 32]>> = Default::default();
        // The last resolution of a key in the commit is its mark.
        let mut seen = std::collections::HashSet::new();
        for &(ref key, rejected, at_ms) in resolved.iter().rev() {
            if seen.insert(*key) {
                lists.entry((at_ms, rejected)).or_default().push(key.0);
            }
            if let Some(n) = open.key_batch.remove(key) {
                open.release(n, writes);
            }
        }
        // Keys resolved before: out of their older lists.
        // (list, its keys, whether one left it: a prefix match alone changes nothing)
        let mut edited: HashMap<Slot, (ListKey, Vec<[u8; 32]>, bool)> = HashMap::new();
        let mut left = 0u64;
        for key in lists.values().flatten() {
            let key = DedupKey(*key);
            let Some((slot, list)) = marks.candidate(&key) else { continue };
            let (_, keys, changed) = match edited.entry(slot) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let keys = match self.tree.get(list)? {
                        None => Vec::new(),
                        Some(bytes) => record::decode_key_list(&bytes)
                            .map_err(|source| WalError::Corrupt { key: list_name(&list), source })?
                            .chunks_exact(32)
                            .map(|k| k.try_into().unwrap_or_default())
                            .collect(),
                    };
                    e.insert((list, keys, false))
                }
            };
            if let Ok(at) = keys.binary_search(&key.0) {
                keys.remove(at);
                *changed = true;
                marks.remove(&key, slot, keys.as_flattened());
                left += 1;
            }
        }
        for (slot, (list, mut keys, _)) in edited.into_iter().filter(|(_, (_, _, changed))| *changed) {
            if keys.is_empty() {
                writes.remove(&list[..]);
                marks.drop_list(slot, &[]);
            } else {
                let bytes = record::encode_key_list(&mut keys).map_err(|source| WalError::Encode { what: list_name(&list), source })?;
                writes.insert(&list[..], bytes);
            }
        }
        let mut added = 0u64;
        for ((at_ms, rejected), mut keys) in lists {
            let list = list_key(at_ms, self.db.generate_id()?, rejected);
            let bytes = record::encode_key_list(&mut keys).map_err(|source| WalError::Encode { what: list_name(&list), source })?;
            let slot = marks.add_list(list);
            for key in &keys {
                marks.insert(&DedupKey(*key), slot);
            }
            added += keys.len() as u64;
            writes.insert(&list[..], bytes);
        }
        Ok((added, left))
    }

    /// Every pending record (to re-ship on start), in the order written.
    pub fn pending(&self) -> impl Iterator<Item = Result<(DedupKey, PendingRecord), WalError>> + '_ {
        self.tree.scan_prefix([b'b']).flat_map(move |item| {
            let batch = item.map_err(WalError::from).and_then(|(k, v)| {
                let n = batch_number(&k)?;
                let batch: PendingBatch = record::decode(&v).map_err(|source| WalError::Corrupt { key: format!("batch {n}"), source })?;
                Ok((n, batch))
            });
            let rows: Vec<Result<(DedupKey, PendingRecord), WalError>> = match batch {
                Err(e) => vec![Err(e)],
                Ok((n, batch)) => {
                    let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
                    batch
                        .entries
                        .into_iter()
                        .map(|(key, rec)| (DedupKey(key), rec))
                        .filter(|(key, _)| open.key_batch.get(key) == Some(&n))
                        .map(Ok)
                        .collect()
                }
            };
            rows
        })
    }

    pub fn pending_count(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).key_batch.len()
    }

    /// When the oldest row still pending was written (ms since the epoch);
    /// none when nothing is pending.
    pub fn oldest_pending_ms(&self) -> Option<u64> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.remaining.keys().filter_map(|n| open.written_at.get(n)).min().copied()
    }

    /// The WAL's size on disk, in bytes.
    pub fn size_on_disk(&self) -> Result<u64, WalError> {
        Ok(self.db.size_on_disk()?)
    }

    /// Removes the keys resolved before `before_ms`, returning how many.
    pub fn prune(&self, before_ms: u64) -> Result<usize, WalError> {
        let mut batch = sled::Batch::default();
        let (mut n, mut entries) = (0, 0u64);
        let end = list_key(before_ms, 0, false);
        // A batch record lists resolved rows until its last one resolves, and
        // their marks are what says they are no longer pending there: rewrite
        // partly resolved records to their pending rows before dropping marks.
        // (Batch records are few: each goes with its last pending row.)
        {
            let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let mut rewrite = sled::Batch::default();
            for item in self.tree.scan_prefix([b'b']) {
                let (k, v) = item?;
                let n = batch_number(&k)?;
                let mut b: PendingBatch = record::decode(&v).map_err(|source| WalError::Corrupt { key: format!("batch {n}"), source })?;
                let before = b.entries.len();
                b.entries.retain(|(key, _)| open.key_batch.get(&DedupKey(*key)) == Some(&n));
                if b.entries.len() != before {
                    let bytes =
                        record::encode(&b).map_err(|source| WalError::Encode { what: format!("batch {n}, rewritten by prune"), source })?;
                    rewrite.insert(k, bytes);
                }
            }
            self.tree.apply_batch(rewrite)?;
            self.db.flush()?;
        }
        // The lists past retention go whole; their keys leave the index.
        // (`open` first, as everywhere both are taken.)
        let _open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        for item in self.tree.range(&[b'l'][..]..&end[..]) {
            let (k, v) = item?;
            let list = as_list_key(&k)?;
            let keys = record::decode_key_list(&v).map_err(|source| WalError::Corrupt { key: list_name(&list), source })?;
            if let Some(slot) = marks.slot(&list) {
                marks.drop_list(slot, keys);
            }
            batch.remove(k);
            n += keys.len() / 32;
            self.resolved_held.fetch_sub((keys.len() / 32) as u64, std::sync::atomic::Ordering::Relaxed);
            entries += 1;
            if entries % 1_000 == 0 {
                self.tree.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        Ok(n)
    }

    /// When a dead letter was re-driven successfully, if it was.
    pub fn replayed_at(&self, d: &DeadLetter) -> Result<Option<u64>, WalError> {
        Ok(self.tree.get(dead_letter_key(b'r', d))?.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map(u64::from_be_bytes))
    }

    /// The dead letter stored under `d`'s position and id, as recorded now
    /// (a letter recorded again under the same id carries the newer reason).
    pub fn dead_letter(&self, d: &DeadLetter) -> Result<Option<DeadLetter>, WalError> {
        let key = dead_letter_key(b'd', d);
        match self.tree.get(&key)? {
            None => Ok(None),
            Some(v) => record::decode::<DeadLetter>(&v)
                .map(Some)
                .map_err(|source| WalError::Corrupt { key: String::from_utf8_lossy(&key).into_owned(), source }),
        }
    }

    /// Every dead letter recorded, in (topic, partition, offset) order.
    pub fn dead_letters(&self) -> impl Iterator<Item = Result<DeadLetter, WalError>> + '_ {
        self.tree.scan_prefix([b'd']).map(|item| {
            let (k, v) = item?;
            record::decode::<DeadLetter>(&v).map_err(|source| WalError::Corrupt { key: String::from_utf8_lossy(&k).into_owned(), source })
        })
    }

    /// Rewrites dead letters of record format 2 (keyed by Kafka position
    /// alone) in the current format, under their ids, with their replay
    /// marks; one atomic batch, flushed. Returns how many were rewritten.
    fn upgrade_dead_letters(&self) -> Result<usize, WalError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.tree.scan_prefix([b'd']) {
            let (k, v) = item?;
            if v.first() != Some(&2) {
                // Current format: nothing to rewrite (and nothing to decode on every open).
                continue;
            }
            let old = match record::decode_dead_letter(&v) {
                Ok(record::AnyDeadLetter::V2(old)) => old,
                Ok(record::AnyDeadLetter::Current(_)) => continue,
                Err(source) => return Err(WalError::Corrupt { key: String::from_utf8_lossy(&k).into_owned(), source }),
            };
            let d = upgrade_dead_letter(old);
            let replay_mark = position_key(b'r', &d.topic, d.partition, d.offset);
            if let Some(at) = self.tree.get(&replay_mark)? {
                batch.remove(replay_mark);
                batch.insert(dead_letter_key(b'r', &d), at);
            }
            let bytes = record::encode(&d)
                .map_err(|source| WalError::Encode { what: format!("dead letter {}", String::from_utf8_lossy(&k)), source })?;
            batch.remove(k);
            batch.insert(dead_letter_key(b'd', &d), bytes);
            n += 1;
        }
        if n > 0 {
            self.tree.apply_batch(batch)?;
            self.db.flush()?;
            tracing::info!(dead_letters = n, "rewrote dead letters recorded by an earlier landfall in the current format");
        }
        Ok(n)
    }
}

/// A format-2 dead letter in the current shape. A row BigQuery refused was
/// kept as its log-row JSON, without its message or table: it keeps the row
/// (with an empty table, so `dlq replay` says it must be re-driven from
/// Kafka); any other kept the message value.
fn upgrade_dead_letter(old: record::DeadLetterV2) -> DeadLetter {
    let at = crate::source::message::Coords { topic: old.topic.clone(), partition: old.partition, offset: old.offset };
    let refused = old.reason.starts_with("BigQuery rejected the row");
    let (message, row, stage) = if refused {
        let key = serde_json::from_slice::<serde_json::Value>(&old.payload_prefix)
            .ok()
            .and_then(|v| v.get(crate::table::COL_KEY).and_then(|k| k.as_str()).and_then(DedupKey::from_hex))
            .unwrap_or(DedupKey([0; 32]));
        (None, Some(RefusedRow { table: String::new(), key: key.0, json: old.payload_prefix }), Stage::BigQuery)
    } else {
        let message = KafkaMessage {
            key: None,
            headers: Vec::new(),
            timestamp_ms: None,
            has_value: !(old.payload_len == 0 && old.reason.contains("tombstone")),
            value_prefix: old.payload_prefix,
            value_len: old.payload_len,
            value_hash: old.payload_hash,
        };
        (Some(message), None, Stage::Decode)
    };
    let id = DedupKey::of_dead_letter(&at, None, Some(&old.payload_hash), row.as_ref().map(|r| DedupKey(r.key)).as_ref());
    DeadLetter {
        id: id.0,
        topic: old.topic,
        partition: old.partition,
        offset: old.offset,
        stage,
        reason: old.reason,
        message,
        row,
        at_ms: old.at_ms,
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
    fn pinned_settings_survive_reopen_and_refuse_a_change() {
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(dir.path()).unwrap();
            wal.pin_setting("order_by:t", "timestamp").unwrap();
            wal.pin_setting("order_by:t", "timestamp").unwrap();
        }
        let wal = Wal::open(dir.path()).unwrap();
        wal.pin_setting("order_by:t", "timestamp").unwrap();
        let err = wal.pin_setting("order_by:t", "postgresql-lsn").unwrap_err();
        assert!(matches!(&err, WalError::SettingChanged { stored, .. } if stored == "timestamp"), "{err}");
        assert!(err.to_string().contains("Restore the setting"), "{err}");
        wal.pin_setting("order_by:u", "postgresql-lsn").unwrap();
    }

    #[test]
    fn a_wal_of_the_previous_key_derivation_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Wal::open(dir.path()).unwrap());
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("landfall").unwrap().insert(META_FORMAT, &[2u8][..]).unwrap();
            db.flush().unwrap();
        }
        let err = Wal::open(dir.path()).err().expect("layout 2 refused");
        assert!(matches!(err, WalError::Incompatible { found: 2, .. }), "{err}");
    }

    #[test]
    fn pending_landed_survive_reopen_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(dir.path()).unwrap();
            let mut b = WalBatch::default();
            b.pending(&key(1), rec("{\"a\":1}"));
            b.pending(&key(2), rec("{\"a\":2}"));
            wal.flush(&b).unwrap();
            assert_eq!(wal.resolved_count(), 0, "pending keys are not resolved ones");
            let mut b = WalBatch::default();
            b.landed(&key(1), 1000);
            wal.flush(&b).unwrap();
            assert_eq!(wal.resolved_count(), 1);
        }
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.resolved_count(), 1, "counted again on open");
        assert_eq!(wal.state(&key(1)).unwrap(), KeyState::Resolved);
        assert_eq!(wal.state(&key(2)).unwrap(), KeyState::Pending);
        assert_eq!(wal.state(&key(3)).unwrap(), KeyState::Absent);
        let pending: Vec<_> = wal.pending().collect::<Result<_, _>>().unwrap();
        assert_eq!(pending, vec![(key(2), rec("{\"a\":2}"))]);
        assert_eq!(wal.prune(999).unwrap(), 0);
        assert_eq!(wal.resolved_count(), 1);
        assert_eq!(wal.prune(1001).unwrap(), 1);
        assert_eq!(wal.resolved_count(), 0, "pruned keys are no longer held");
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
        {
            let wal = Wal::open(dir.path()).unwrap();
            wal.tree.insert(list_key(5, 6, false), &[record::FORMAT_VERSION, 0xff, 0xff][..]).unwrap();
            wal.db.flush().unwrap();
        }
        let err = Wal::open(dir.path()).err().expect("a damaged key list is refused").to_string();
        assert!(err.contains("damaged") && err.contains("key list 6"), "{err}");
    }

    #[test]
    fn a_key_resolved_again_leaves_its_older_list() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path()).unwrap();
        let mut b = WalBatch::default();
        b.rejected(&key(1), 10);
        b.landed(&key(2), 10);
        wal.flush(&b).unwrap();
        assert!(!wal.is_landed(&key(1)).unwrap(), "rejected is not landed");
        // Re-driven (dlq replay): pended again, then landed later.
        let mut b = WalBatch::default();
        b.pending(&key(1), rec("{}"));
        wal.flush(&b).unwrap();
        assert_eq!(wal.state(&key(1)).unwrap(), KeyState::Pending);
        let mut b = WalBatch::default();
        b.landed(&key(1), 20);
        wal.flush(&b).unwrap();
        assert!(wal.is_landed(&key(1)).unwrap());
        assert_eq!(wal.resolved_count(), 2, "each key is counted once");
        // Pruning the older time keeps key 1 (its mark is the newer one).
        assert_eq!(wal.prune(15).unwrap(), 1);
        assert_eq!((wal.state(&key(1)).unwrap(), wal.state(&key(2)).unwrap()), (KeyState::Resolved, KeyState::Absent));
        drop(wal);
        let wal = Wal::open(dir.path()).unwrap();
        assert!(wal.is_landed(&key(1)).unwrap(), "and after a reopen");
        assert_eq!(wal.state(&key(2)).unwrap(), KeyState::Absent);
        assert_eq!(wal.tree.scan_prefix([b'l']).count(), 1, "the emptied list went with its last key");
    }

    #[test]
    fn a_layout_3_wal_is_moved_to_key_lists_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let tree = db.open_tree("landfall").unwrap();
            tree.insert(META_FORMAT, &[3u8][..]).unwrap();
            let mark = |k: u8, rec: Record| {
                let mut c = vec![b'c'];
                c.extend_from_slice(&key(k).0);
                tree.insert(c, record::encode(&rec).unwrap()).unwrap();
            };
            mark(1, Record::Landed { at_ms: 100, seq: 5 });
            mark(2, Record::Rejected { at_ms: 100, seq: 5 });
            mark(3, Record::Landed { at_ms: 200, seq: 9 });
            // Key 3 was pended again (batch 12, above its mark); key 4 pended once.
            let batch = PendingBatch { entries: vec![(key(3).0, rec("{\"a\":3}")), (key(4).0, rec("{\"a\":4}"))] };
            tree.insert(numbered_key(b'b', 12), record::encode(&batch).unwrap()).unwrap();
            // The layout-3 prune index.
            let mut l = vec![b'l'];
            l.extend_from_slice(&100u64.to_be_bytes());
            l.extend_from_slice(&6u64.to_be_bytes());
            tree.insert(l, [key(1).0, key(2).0].concat()).unwrap();
            db.flush().unwrap();
        }
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.tree.get(META_FORMAT).unwrap().unwrap().as_ref(), [LAYOUT_VERSION]);
        assert!(wal.tree.scan_prefix([b'c']).next().is_none(), "no per-key marks left");
        assert_eq!(wal.tree.scan_prefix([b'l']).count(), 3, "lists (100, 5, landed), (100, 5, rejected), (200, 9, landed)");
        assert!(wal.is_landed(&key(1)).unwrap());
        assert_eq!(wal.state(&key(2)).unwrap(), KeyState::Resolved);
        assert!(!wal.is_landed(&key(2)).unwrap());
        assert_eq!((wal.state(&key(3)).unwrap(), wal.state(&key(4)).unwrap()), (KeyState::Pending, KeyState::Pending));
        assert_eq!(wal.resolved_count(), 3);
        assert_eq!(wal.prune(150).unwrap(), 2);
        assert_eq!(wal.state(&key(1)).unwrap(), KeyState::Absent);
        drop(wal);
        assert_eq!(Wal::open(dir.path()).unwrap().resolved_count(), 1, "moved once; a second open changes nothing");
    }

    #[test]
    fn a_record_that_cannot_be_encoded_fails_the_commit_and_writes_nothing() {
        // Today's code wrote the oversized batch record; the WAL then refused
        // to open ("damaged") and every later start failed.
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(dir.path()).unwrap();
            let mut b = WalBatch::default();
            b.pending(&key(1), rec("{}"));
            let huge = PendingRecord { table: "t".into(), row: vec![b'x'; record::MAX_RECORD_BYTES], written_at_ms: 1 };
            b.pending(&key(2), huge);
            b.add_to_counter("c", 1);
            let err = wal.flush(&b).unwrap_err();
            assert!(matches!(&err, WalError::Encode { source: record::EncodeError::TooLarge, .. }), "{err}");
            assert!(err.to_string().contains("Nothing of this commit was written"), "{err}");
            // Nothing of the batch, not even its small row or its counter.
            assert_eq!(wal.state(&key(1)).unwrap(), KeyState::Absent);
            assert_eq!(wal.pending_count(), 0);
            assert_eq!(wal.counter("c").unwrap(), 0);
            // The WAL carries on.
            let mut b = WalBatch::default();
            b.pending(&key(3), rec("{}"));
            wal.flush(&b).unwrap();
        }
        let wal = Wal::open(dir.path()).unwrap();
        let pending: Vec<DedupKey> = wal.pending().map(|r| r.unwrap().0).collect();
        assert_eq!(pending, vec![key(3)]);
    }

    #[test]
    fn dead_letters_are_listed_and_two_of_one_message_are_both_kept() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path()).unwrap();
        let mut b = WalBatch::default();
        for (offset, id) in [(5, 1), (3, 2), (3, 3)] {
            b.dead_letter(&DeadLetter { offset, id: [id; 32], ..record::tests::sample_letter() });
        }
        wal.flush(&b).unwrap();
        let got: Vec<(i64, u8)> = wal.dead_letters().map(|d| d.unwrap()).map(|d| (d.offset, d.id[0])).collect();
        // Before, letters were keyed by position alone: the second of offset 3 replaced the first.
        assert_eq!(got, vec![(3, 2), (3, 3), (5, 1)]);
        let mut b = WalBatch::default();
        b.dead_letter_replayed(&DeadLetter { offset: 3, id: [3; 32], ..record::tests::sample_letter() }, 9);
        wal.flush(&b).unwrap();
        let marks: Vec<Option<u64>> = wal.dead_letters().map(|d| wal.replayed_at(&d.unwrap()).unwrap()).collect();
        assert_eq!(marks, vec![None, Some(9), None]);
    }

    #[test]
    fn dead_letters_of_an_earlier_landfall_are_rewritten_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path()).unwrap();
        let old = |offset: i64, reason: &str, payload: &[u8]| {
            let v2 = record::DeadLetterV2 {
                topic: "dms".into(),
                partition: 1,
                offset,
                reason: reason.into(),
                payload_prefix: payload.to_vec(),
                payload_len: payload.len() as u64,
                payload_hash: *blake3::hash(payload).as_bytes(),
                at_ms: 4,
            };
            let mut bytes = vec![2];
            bytes.extend(bincode::serde::encode_to_vec(&v2, bincode::config::standard()).unwrap());
            wal.tree.insert(position_key(b'd', "dms", 1, offset), bytes).unwrap();
        };
        old(7, "not valid JSON: x", b"{oops");
        let row = format!(r#"{{"_landfall_key":"{}","id":1}}"#, key(5).to_hex());
        old(8, "BigQuery rejected the row: insertAll invalid", row.as_bytes());
        wal.tree.insert(position_key(b'r', "dms", 1, 7), &3u64.to_be_bytes()[..]).unwrap();
        drop(wal);
        let wal = Wal::open(dir.path()).unwrap();
        let letters: Vec<DeadLetter> = wal.dead_letters().map(Result::unwrap).collect();
        assert_eq!(letters.len(), 2);
        let (a, b) = (&letters[0], &letters[1]);
        assert_eq!((a.offset, a.stage, a.message.as_ref().unwrap().value_prefix.as_slice()), (7, Stage::Decode, &b"{oops"[..]));
        assert_eq!(wal.replayed_at(a).unwrap(), Some(3), "the replay mark moves with it");
        assert_eq!((b.offset, b.stage, b.message.is_none()), (8, Stage::BigQuery, true));
        assert_eq!(b.row.as_ref().unwrap().key, key(5).0);
        assert_eq!(wal.replayed_at(b).unwrap(), None);
        assert!(wal.tree.get(position_key(b'd', "dms", 1, 7)).unwrap().is_none(), "the old entry is gone");
        drop(wal);
        assert_eq!(Wal::open(dir.path()).unwrap().dead_letters().count(), 2, "and a second open changes nothing");
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
            PendingMany(Vec<(u8, u8)>),
            LandedMany(Vec<u8>, u16),
            Landed(u8, u16),
            Rejected(u8, u16),
            Prune(u16),
            Reboot,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0u8..8, any::<u8>()).prop_map(|(k, v)| Op::Pending(k, v)),
                proptest::collection::vec((0u8..8, any::<u8>()), 1..5).prop_map(Op::PendingMany),
                (proptest::collection::vec(0u8..8, 1..5), 0u16..100).prop_map(|(ks, t)| Op::LandedMany(ks, t)),
                (0u8..8, 0u16..100).prop_map(|(k, t)| Op::Landed(k, t)),
                (0u8..8, 0u16..100).prop_map(|(k, t)| Op::Rejected(k, t)),
                (0u16..120).prop_map(Op::Prune),
                Just(Op::Reboot),
            ]
        }

        #[derive(Debug, Clone, PartialEq)]
        enum M {
            Pending(Vec<u8>),
            /// At, and whether rejected.
            Resolved(u64, bool),
        }

        proptest! {
            #[test]
            fn wal_matches_a_btreemap_model_across_reboots(ops in proptest::collection::vec(op(), 1..60)) {
                let dir = tempfile::tempdir().unwrap();
                let mut wal = Some(Wal::open(dir.path()).unwrap());
                let mut model: BTreeMap<u8, M> = BTreeMap::new();
                // Keys 0, 2, 4, 6 share their first 8 bytes, as do 1, 3, 5, 7:
                // the index's prefix entries and overflow are both exercised.
                let key = |k: u8| {
                    let mut b = [k % 2; 32];
                    b[31] = k;
                    DedupKey(b)
                };
                for op in ops {
                    let w = wal.as_ref().unwrap();
                    match op {
                        Op::Pending(k, v) => {
                            let mut b = WalBatch::default();
                            b.pending(&key(k), PendingRecord { table: "t".into(), row: vec![v], written_at_ms: 0 });
                            w.flush(&b).unwrap();
                            model.insert(k, M::Pending(vec![v]));
                        }
                        Op::PendingMany(ref kvs) => {
                            let mut b = WalBatch::default();
                            let mut seen = std::collections::BTreeSet::new();
                            for &(k, v) in kvs.iter().filter(|(k, _)| seen.insert(*k)) {
                                b.pending(&key(k), PendingRecord { table: "t".into(), row: vec![v], written_at_ms: 0 });
                                model.insert(k, M::Pending(vec![v]));
                            }
                            w.flush(&b).unwrap();
                        }
                        Op::LandedMany(ref ks, t) => {
                            let mut b = WalBatch::default();
                            for &k in ks {
                                b.landed(&key(k), t as u64);
                                model.insert(k, M::Resolved(t as u64, false));
                            }
                            w.flush(&b).unwrap();
                        }
                        Op::Landed(k, t) | Op::Rejected(k, t) => {
                            let mut b = WalBatch::default();
                            if matches!(op, Op::Landed(..)) { b.landed(&key(k), t as u64) } else { b.rejected(&key(k), t as u64) }
                            w.flush(&b).unwrap();
                            model.insert(k, M::Resolved(t as u64, matches!(op, Op::Rejected(..))));
                        }
                        Op::Prune(before) => {
                            w.prune(before as u64).unwrap();
                            // Resolved before `before` go; pending stay. (A key
                            // resolved twice keeps its newest mark; an older prune
                            // index entry must not drop it.)
                            model.retain(|_, m| !matches!(m, M::Resolved(at, _) if *at < before as u64));
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
                            Some(M::Resolved(..)) => KeyState::Resolved,
                        };
                        prop_assert_eq!(w.state(&key(k)).unwrap(), want, "key {}", k);
                        prop_assert_eq!(w.is_landed(&key(k)).unwrap(), matches!(model.get(&k), Some(M::Resolved(_, false))), "landed {}", k);
                    }
                    let resolved = model.values().filter(|m| matches!(m, M::Resolved(..))).count() as u64;
                    // Pending again keeps the older mark until it resolves.
                    prop_assert!(w.resolved_count() >= resolved, "resolved {} < {}", w.resolved_count(), resolved);
                    let pending: BTreeMap<u8, Vec<u8>> = w.pending().map(|r| r.unwrap()).map(|(k, p)| (k.0[31], p.row)).collect();
                    let want: BTreeMap<u8, Vec<u8>> = model.iter().filter_map(|(k, m)| match m { M::Pending(v) => Some((*k, v.clone())), _ => None }).collect();
                    prop_assert_eq!(&pending, &want);
                    prop_assert_eq!(w.pending_count(), want.len());
                    // Batch records go with their last pending row: none outlives them.
                    prop_assert!(w.tree.scan_prefix([b'b']).count() <= want.len());
                }
            }
        }
    }
}
