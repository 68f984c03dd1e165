//! The WAL's on-disk record encoding: one format-version byte, then bincode 2.
//!
//! This is the only module that knows the encoding. Decoding never panics and
//! never allocates more than [`MAX_RECORD_BYTES`], whatever the bytes: a
//! damaged or foreign record is a [`FormatError`].

use serde::{Deserialize, Serialize};

/// Version of the record encoding. Bump it (and keep a decoder for the old
/// one) whenever a record type below changes shape.
pub const FORMAT_VERSION: u8 = 2;

/// No record is larger than this (a row is at most 10 MB in BigQuery).
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FormatError {
    #[error("empty record")]
    Empty,
    #[error("record format version {found} is not supported by this build (it reads version {FORMAT_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("record does not decode: {0}")]
    Malformed(String),
}

/// How a change was resolved, keyed by its dedup key (a pending change has
/// no record of its own: its row is in a [`PendingBatch`]).
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

impl Record {
    pub fn seq(&self) -> u64 {
        match self {
            Record::Landed { seq, .. } | Record::Rejected { seq, .. } => *seq,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingRecord {
    /// The BigQuery table the row goes to (a log table or the dead-letter table).
    pub table: String,
    /// The row as JSON, without `_landfall_ingested`.
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

/// A message that could not become a row, as recorded in the WAL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
    /// The message value, or its first bytes when it is larger than the limit.
    pub payload_prefix: Vec<u8>,
    pub payload_len: u64,
    /// blake3 of the whole value.
    pub payload_hash: [u8; 32],
    pub at_ms: u64,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_RECORD_BYTES>()
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    // Encoding plain structs of strings, integers and byte vectors into a Vec
    // only fails past the size limit, which callers bound beforehand.
    if let Err(e) = bincode::serde::encode_into_std_write(value, &mut out, config()) {
        tracing::error!(error = %e, "WAL record encoding failed");
    }
    out
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, FormatError> {
    let (&version, body) = bytes.split_first().ok_or(FormatError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion { found: version });
    }
    let (value, used) = bincode::serde::decode_from_slice(body, config()).map_err(|e| FormatError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(FormatError::Malformed(format!("{} trailing bytes", body.len() - used)));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let r = Record::Rejected { at_ms: 4, seq: 9 };
        assert_eq!(decode::<Record>(&encode(&r)).unwrap(), r);
        let b = PendingBatch { entries: vec![([3; 32], PendingRecord { table: "t".into(), row: b"{}".to_vec(), written_at_ms: 5 })] };
        assert_eq!(decode::<PendingBatch>(&encode(&b)).unwrap(), b);
        let d = DeadLetter {
            topic: "x".into(),
            partition: 1,
            offset: 2,
            reason: "r".into(),
            payload_prefix: vec![0, 1],
            payload_len: 2,
            payload_hash: [7; 32],
            at_ms: 3,
        };
        assert_eq!(decode::<DeadLetter>(&encode(&d)).unwrap(), d);
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
        let mut trailing = encode(&Record::Landed { at_ms: 1, seq: 2 });
        trailing.push(0);
        assert!(decode::<Record>(&trailing).is_err());
    }
}
