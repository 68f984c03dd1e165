//! The WAL's on-disk record encoding: one format-version byte, then bincode 2.
//!
//! This is the only module that knows the encoding. Decoding never panics and
//! never allocates more than twice [`MAX_RECORD_BYTES`], whatever the bytes: a
//! damaged or foreign record is a [`FormatError`]. Encoding either returns the
//! whole record or an [`EncodeError`]: a record that does not encode, or whose
//! body is larger than [`MAX_RECORD_BYTES`] (which [`decode`] would refuse),
//! is never handed to the WAL, truncated or otherwise.

use serde::{Deserialize, Serialize};

/// Version of the record encoding. Bump it (and keep a decoder for the old
/// one) whenever a record type below changes shape. Version 3 changed only
/// [`DeadLetter`]; version 4 added the [key list](encode_key_list); the other
/// records read the same in versions 2 to 4.
pub const FORMAT_VERSION: u8 = 4;

/// No record body is larger than this (a row is at most 10 MB in BigQuery):
/// [`encode`] refuses to write a larger one.
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// The decoder's allocation limit. bincode counts a decoded integer at its
/// full width (8 bytes for a `u64` stored as a 1-byte varint), so a body of
/// `n` bytes counts more than `n`: at most 1.6 `n` for the records here (a
/// pending row's 32-byte key and three integers count 21 bytes more than the
/// 35 they take at least). Twice [`MAX_RECORD_BYTES`] reads back every record
/// [`encode`] writes.
const DECODE_LIMIT: usize = 2 * MAX_RECORD_BYTES;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FormatError {
    #[error("empty record")]
    Empty,
    #[error("record format version {found} is not supported by this build (it reads version {FORMAT_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("record does not decode: {0}")]
    Malformed(String),
}

/// How a change was resolved, keyed by its dedup key, in WAL layout 3 (read
/// only to move such a WAL to layout 4, where marks are [key lists](encode_key_list)).
///
/// `seq` orders the mark against batch records (both are numbered by the
/// same monotonic counter): a row in a batch record numbered above the mark
/// was pended again after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// BigQuery accepted it. The key stays for deduplication until
    /// retention prunes it.
    Landed { at_ms: u64, seq: u64 },
    /// BigQuery rejected it permanently; it was dead-lettered instead.
    Rejected { at_ms: u64, seq: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingRecord {
    /// The BigQuery table the row goes to (a log table or the dead-letter table).
    pub table: String,
    /// The row as JSON, without `_landfall_ingested`.
    #[serde(with = "bytes")]
    pub row: Vec<u8>,
    pub written_at_ms: u64,
}

/// The rows of pending records written by one commit: one record per
/// commit (or per few MB of rows) instead of one per row, so a change costs
/// the WAL one small write when it is pended and one when it lands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingBatch {
    pub entries: Vec<([u8; 32], PendingRecord)>,
}

/// A [`PendingBatch`] borrowed from rows the caller keeps (the WAL keeps a
/// batch for a retry after an I/O error): it encodes to the same bytes.
#[derive(Debug, Serialize)]
pub struct PendingBatchRef<'a> {
    pub entries: &'a [(&'a [u8; 32], &'a PendingRecord)],
}

/// Something that could not become a landed row, as recorded in the WAL:
/// the Kafka message it came from (whatever stage refused it), the stage,
/// the reason, and for a row BigQuery refused, that row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Names this dead letter (`key::DedupKey::of_dead_letter`): its Kafka
    /// coordinates, the message's timestamp and value hash, and the refused
    /// row's key. It is the WAL key's suffix and the dead-letter table's
    /// `_landfall_key`.
    pub id: [u8; 32],
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub stage: Stage,
    pub reason: String,
    /// The message as read from Kafka. `None` only for a row BigQuery
    /// refused when it was re-shipped after a restart and its message could
    /// not be read from Kafka again (then only `row` is kept).
    pub message: Option<KafkaMessage>,
    /// For [`Stage::BigQuery`]: the row that was refused.
    pub row: Option<RefusedRow>,
    pub at_ms: u64,
}

/// Which step refused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// Decoding, routing or converting the message (no row was built).
    Decode,
    /// BigQuery refused the row (insertAll answered `invalid`, or refused the
    /// row alone).
    BigQuery,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::BigQuery => "bigquery",
        }
    }
}

/// A Kafka message, as kept in a dead letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KafkaMessage {
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The message timestamp (Unix ms), if it had one.
    pub timestamp_ms: Option<i64>,
    /// `false` for a Kafka tombstone (no value).
    pub has_value: bool,
    /// The value, or its first bytes when it is larger than the limit.
    #[serde(with = "bytes")]
    pub value_prefix: Vec<u8>,
    pub value_len: u64,
    /// blake3 of the whole value.
    pub value_hash: [u8; 32],
}

impl KafkaMessage {
    /// Whether the whole value is kept (so the letter can be re-driven).
    pub fn is_whole(&self) -> bool {
        self.value_len as usize == self.value_prefix.len()
    }
}

/// A row BigQuery refused: where it was going, its dedup key, its JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedRow {
    pub table: String,
    pub key: [u8; 32],
    #[serde(with = "bytes")]
    pub json: Vec<u8>,
}

/// A dead letter as format version 2 wrote it (read when a WAL written by an
/// earlier landfall is opened; `wal::Wal::open` rewrites them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterV2 {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
    #[serde(with = "bytes")]
    pub payload_prefix: Vec<u8>,
    pub payload_len: u64,
    pub payload_hash: [u8; 32],
    pub at_ms: u64,
}

/// A dead letter record of either version.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyDeadLetter {
    Current(DeadLetter),
    V2(DeadLetterV2),
}

/// Decodes a dead-letter record of the current or the previous format.
pub fn decode_dead_letter(bytes: &[u8]) -> Result<AnyDeadLetter, FormatError> {
    match bytes.first() {
        Some(&2) => decode_body(&bytes[1..]).map(AnyDeadLetter::V2),
        _ => decode::<DeadLetter>(bytes).map(AnyDeadLetter::Current),
    }
}

/// Byte strings written as one block instead of one `u8` at a time.
///
/// bincode writes a sequence of `u8` and a byte string the same way (a
/// varint length, then the bytes), so this changes no record's bytes (and
/// no format version): it only stops serde from handing bincode a byte at a
/// time, which was ~5 % of the bridge's CPU (docs/performance.md). The
/// decoder accepts either form.
mod bytes {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Bytes)
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a byte string")
        }
        fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // No pre-allocation from a length the input claims.
            let mut out = Vec::new();
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

/// Why a value could not become a WAL record. Nothing is written for it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    #[error("the record would be more than {MAX_RECORD_BYTES} bytes (the most a WAL record may hold)")]
    TooLarge,
    #[error("the record does not encode: {0}")]
    Failed(String),
}

/// A `Vec` that refuses to grow past `cap` bytes, so an oversized record
/// fails as soon as it passes the limit instead of after it was built whole.
struct Capped {
    out: Vec<u8>,
    cap: usize,
    over: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.cap {
            self.over = true;
            return Err(std::io::Error::other("WAL record limit reached"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// The record of `value`: the format version, then its bincode body of at
/// most [`MAX_RECORD_BYTES`] (bincode checks that limit only when decoding,
/// so it is enforced here while writing).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut w = Capped { out: vec![FORMAT_VERSION], cap: 1 + MAX_RECORD_BYTES, over: false };
    match bincode::serde::encode_into_std_write(value, &mut w, config()) {
        Ok(_) => Ok(w.out),
        Err(_) if w.over => Err(EncodeError::TooLarge),
        Err(e) => Err(EncodeError::Failed(e.to_string())),
    }
}

/// The record of a set of dedup keys (the keys one commit resolved): the
/// format version, then the keys, 32 bytes each, sorted and without
/// repeats (so that [`key_list_holds`] can search it). `keys` is sorted here.
pub fn encode_key_list(keys: &mut Vec<[u8; 32]>) -> Result<Vec<u8>, EncodeError> {
    keys.sort_unstable();
    keys.dedup();
    if keys.len() * 32 > MAX_RECORD_BYTES {
        return Err(EncodeError::TooLarge);
    }
    let mut out = Vec::with_capacity(1 + keys.len() * 32);
    out.push(FORMAT_VERSION);
    for k in keys.iter() {
        out.extend_from_slice(k);
    }
    Ok(out)
}

/// The keys of a key-list record (32 bytes each), checked: its version, its
/// length, and that the keys are sorted without repeats.
pub fn decode_key_list(bytes: &[u8]) -> Result<&[u8], FormatError> {
    let (&version, body) = bytes.split_first().ok_or(FormatError::Empty)?;
    if !(4..=FORMAT_VERSION).contains(&version) {
        return Err(FormatError::UnsupportedVersion { found: version });
    }
    if body.len() % 32 != 0 {
        return Err(FormatError::Malformed(format!("a key list of {} bytes is not a whole number of 32-byte keys", body.len())));
    }
    if body.chunks_exact(32).zip(body.chunks_exact(32).skip(1)).any(|(a, b)| a >= b) {
        return Err(FormatError::Malformed("the keys of a key list are not sorted".into()));
    }
    Ok(body)
}

/// Whether the keys of a decoded key list ([`decode_key_list`]) hold `key`.
pub fn key_list_holds(keys: &[u8], key: &[u8; 32]) -> bool {
    let n = keys.len() / 32;
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match keys[mid * 32..mid * 32 + 32].cmp(&key[..]) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

/// A record type, and the oldest format version that encodes it the way
/// this build does.
pub trait Versioned: for<'de> Deserialize<'de> {
    const SINCE: u8;
}

impl Versioned for Record {
    const SINCE: u8 = 2;
}
impl Versioned for PendingBatch {
    const SINCE: u8 = 2;
}
impl Versioned for DeadLetter {
    const SINCE: u8 = 3;
}

/// Decodes a record written in any format version that encodes `T` as this
/// build does (older dead letters: [`decode_dead_letter`]).
pub fn decode<T: Versioned>(bytes: &[u8]) -> Result<T, FormatError> {
    let (&version, body) = bytes.split_first().ok_or(FormatError::Empty)?;
    if !(T::SINCE..=FORMAT_VERSION).contains(&version) {
        return Err(FormatError::UnsupportedVersion { found: version });
    }
    decode_body(body)
}

fn decode_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FormatError> {
    let (value, used) = bincode::serde::decode_from_slice(body, config()).map_err(|e| FormatError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(FormatError::Malformed(format!("{} trailing bytes", body.len() - used)));
    }
    Ok(value)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let r = Record::Rejected { at_ms: 4, seq: 9 };
        assert_eq!(decode::<Record>(&encode(&r).unwrap()).unwrap(), r);
        let b = PendingBatch { entries: vec![([3; 32], PendingRecord { table: "t".into(), row: b"{}".to_vec(), written_at_ms: 5 })] };
        assert_eq!(decode::<PendingBatch>(&encode(&b).unwrap()).unwrap(), b);
        let d = sample_letter();
        assert_eq!(decode::<DeadLetter>(&encode(&d).unwrap()).unwrap(), d);
        assert_eq!(decode_dead_letter(&encode(&d).unwrap()).unwrap(), AnyDeadLetter::Current(d));
    }

    #[test]
    fn key_lists_round_trip_sorted_and_refuse_damage() {
        let mut keys = vec![[9; 32], [1; 32], [5; 32], [1; 32]];
        let bytes = encode_key_list(&mut keys).unwrap();
        assert_eq!(keys, vec![[1; 32], [5; 32], [9; 32]], "sorted, repeats dropped");
        let body = decode_key_list(&bytes).unwrap();
        for k in [[1; 32], [5; 32], [9; 32]] {
            assert!(key_list_holds(body, &k));
        }
        for k in [[0; 32], [2; 32], [7; 32], [10; 32]] {
            assert!(!key_list_holds(body, &k));
        }
        assert!(matches!(decode_key_list(&bytes[..40]), Err(FormatError::Malformed(_))), "a cut key");
        let mut unsorted = vec![FORMAT_VERSION];
        unsorted.extend_from_slice(&[5; 32]);
        unsorted.extend_from_slice(&[1; 32]);
        assert!(matches!(decode_key_list(&unsorted), Err(FormatError::Malformed(_))));
        assert!(matches!(decode_key_list(&[3]), Err(FormatError::UnsupportedVersion { found: 3 })));
        assert_eq!(decode_key_list(&[]), Err(FormatError::Empty));
    }

    pub(crate) fn sample_letter() -> DeadLetter {
        DeadLetter {
            id: [1; 32],
            topic: "x".into(),
            partition: 1,
            offset: 2,
            stage: Stage::BigQuery,
            reason: "r".into(),
            message: Some(KafkaMessage {
                key: Some(b"k".to_vec()),
                headers: vec![("h".into(), Some(b"v".to_vec())), ("n".into(), None)],
                timestamp_ms: Some(17),
                has_value: true,
                value_prefix: vec![0, 1],
                value_len: 2,
                value_hash: [7; 32],
            }),
            row: Some(RefusedRow { table: "t_log".into(), key: [9; 32], json: b"{}".to_vec() }),
            at_ms: 3,
        }
    }

    #[test]
    fn dead_letters_of_format_2_still_read_and_are_not_mistaken_for_current_ones() {
        let old = DeadLetterV2 {
            topic: "x".into(),
            partition: 1,
            offset: 2,
            reason: "r".into(),
            payload_prefix: vec![0, 1],
            payload_len: 2,
            payload_hash: [7; 32],
            at_ms: 3,
        };
        let mut bytes = vec![2];
        bincode::serde::encode_into_std_write(&old, &mut bytes, config()).unwrap();
        assert_eq!(decode_dead_letter(&bytes).unwrap(), AnyDeadLetter::V2(old));
        assert_eq!(decode::<DeadLetter>(&bytes), Err(FormatError::UnsupportedVersion { found: 2 }));
        // Records whose shape did not change read in both versions.
        let mut landed = encode(&Record::Landed { at_ms: 1, seq: 2 }).unwrap();
        landed[0] = 2;
        assert_eq!(decode::<Record>(&landed).unwrap(), Record::Landed { at_ms: 1, seq: 2 });
    }

    #[test]
    fn byte_strings_encode_exactly_as_the_byte_sequences_earlier_builds_wrote() {
        // The shapes as format 3 was first written: `Vec<u8>` as a sequence
        // of `u8`. Same bytes both ways, and each reads the other's.
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct OldPendingRecord {
            table: String,
            row: Vec<u8>,
            written_at_ms: u64,
        }
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct OldPendingBatch {
            entries: Vec<([u8; 32], OldPendingRecord)>,
        }
        let row: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let new = PendingBatch {
            entries: vec![
                ([4; 32], PendingRecord { table: "t_log".into(), row: row.clone(), written_at_ms: 9 }),
                ([5; 32], PendingRecord { table: String::new(), row: Vec::new(), written_at_ms: 0 }),
            ],
        };
        let old = OldPendingBatch {
            entries: vec![
                ([4; 32], OldPendingRecord { table: "t_log".into(), row, written_at_ms: 9 }),
                ([5; 32], OldPendingRecord { table: String::new(), row: Vec::new(), written_at_ms: 0 }),
            ],
        };
        let mut old_bytes = vec![FORMAT_VERSION];
        bincode::serde::encode_into_std_write(&old, &mut old_bytes, config()).unwrap();
        let new_bytes = encode(&new).unwrap();
        assert_eq!(new_bytes, old_bytes);
        assert_eq!(decode::<PendingBatch>(&old_bytes).unwrap(), new);
        assert_eq!(decode_body::<OldPendingBatch>(&new_bytes[1..]).unwrap(), old);
        let borrowed: Vec<(&[u8; 32], &PendingRecord)> = new.entries.iter().map(|(k, r)| (k, r)).collect();
        assert_eq!(encode(&PendingBatchRef { entries: &borrowed }).unwrap(), new_bytes);
        // The same for a dead letter's byte fields.
        let d = sample_letter();
        let bytes = encode(&d).unwrap();
        assert_eq!(decode::<DeadLetter>(&bytes).unwrap(), d);
        // The byte block is the varint length then the raw bytes.
        let one = encode(&RefusedRow { table: String::new(), key: [0; 32], json: vec![7, 8, 9] }).unwrap();
        assert_eq!(&one[one.len() - 4..], &[3, 7, 8, 9]);
    }

    #[test]
    fn foreign_bytes_are_errors() {
        assert_eq!(decode::<Record>(&[]), Err(FormatError::Empty));
        assert_eq!(decode::<Record>(&[9, 0]), Err(FormatError::UnsupportedVersion { found: 9 }));
        assert!(matches!(decode::<Record>(&[FORMAT_VERSION, 0xff, 0xff]), Err(FormatError::Malformed(_))));
        // A length prefix claiming 2^60 bytes must not allocate.
        let mut huge = vec![FORMAT_VERSION];
        huge.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        assert!(decode::<PendingBatch>(&huge).is_err());
        let mut huge_row = vec![FORMAT_VERSION, 1, 0];
        huge_row.extend_from_slice(&[3; 32]);
        huge_row.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        assert!(decode::<PendingBatch>(&huge_row).is_err());
        let mut trailing = encode(&Record::Landed { at_ms: 1, seq: 2 }).unwrap();
        trailing.push(0);
        assert!(decode::<Record>(&trailing).is_err());
    }

    #[test]
    fn a_record_past_the_limit_is_an_error_and_one_under_it_round_trips() {
        // Today's code returned the bytes anyway (or a truncated prefix on a
        // serializer error), and the WAL wrote a record it could not read back.
        let rec = |n: usize| PendingRecord { table: "t".into(), row: vec![b'x'; n], written_at_ms: 1 };
        let over = PendingBatch { entries: vec![([1; 32], rec(MAX_RECORD_BYTES))] };
        assert_eq!(encode(&over), Err(EncodeError::TooLarge));
        let under = PendingBatch { entries: vec![([1; 32], rec(MAX_RECORD_BYTES - 64))] };
        assert_eq!(decode::<PendingBatch>(&encode(&under).unwrap()).unwrap(), under);
        // Many small rows count more when decoded than they take: a record
        // just under the limit still reads back.
        let empty = PendingRecord { table: String::new(), row: Vec::new(), written_at_ms: 1 };
        let many = PendingBatch { entries: vec![([1; 32], empty); MAX_RECORD_BYTES / 35 - 1] };
        let bytes = encode(&many).unwrap();
        assert!(bytes.len() > MAX_RECORD_BYTES - 64, "{}", bytes.len());
        assert_eq!(decode::<PendingBatch>(&bytes).unwrap().entries.len(), many.entries.len());
    }

    #[test]
    fn a_value_that_does_not_serialize_is_an_error_not_a_prefix() {
        // A sequence of unknown length is one bincode cannot write: the
        // error must reach the caller, not a record holding the bytes so far.
        struct Unsized;
        impl Serialize for Unsized {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                let seq = s.serialize_seq(None)?;
                seq.end()
            }
        }
        assert!(matches!(encode(&(7u64, Unsized)), Err(EncodeError::Failed(_))), "{:?}", encode(&(7u64, Unsized)));
    }
}
