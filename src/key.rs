//! The dedup key: a blake3 hash that names one change.
//!
//! Guarantee (docs/design.md, "Change identity"): the key is a pure function
//! of the change and, where the change cannot name itself, of where Kafka
//! holds it; never of when it was read. The same delivery read twice gets the
//! same key on any node and after any restart. The key is the WAL key, the
//! insertId (64 hex characters, within BigQuery's 128) and the
//! `_landfall_key` column the MERGE de-duplicates by.
//!
//! * **With DMS transaction details** (`transaction-id` and
//!   `transaction-record-id`): the source names the change. The key hashes
//!   table, operation, transaction id, record number, stream position,
//!   commit timestamp and the content, but not `metadata.timestamp` (when DMS
//!   built the message) nor the Kafka position: a redelivery, a duplicate
//!   publication and a re-publication after a DMS task restart all get the
//!   key of the original and are absorbed.
//! * **Without them** (the DMS default): identical content is not one change
//!   (a row updated B -> A -> B in one transaction shares its timestamp and
//!   content with itself), so the key adds the Kafka topic, partition and
//!   offset. A redelivery of the same offset is absorbed; a copy at another
//!   offset is a second change with the same content, which the ordering
//!   rules make harmless (docs/design.md proves when).

use std::fmt;

use serde_json::{Map, Value};

use crate::decode::{Change, Control};
use crate::source::message::Coords;

/// Whether a log row is the change itself or the delete of the old primary
/// key that an update changing the key implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Change = 0,
    /// Sorts after every change with the same timestamp or position, in any
    /// partition: the old key's earlier changes may sit in another partition
    /// (DMS partitions by the new key), and only the row's own order is known.
    OldKeyDelete = 1,
    /// A truncate or drop-table marker: sorts after every change with the
    /// same timestamp (any partition) or the same position, so a change DMS
    /// stamped with the truncate's own timestamp counts as before it.
    Control = 2,
}

/// Domain separation: changing the derivation means changing this string
/// and the WAL's layout version (a WAL keyed one way cannot de-duplicate
/// keys derived another way).
const CHANGE_CONTEXT: &str = "landfall 2026-11 dms change v2";
const DEAD_LETTER_CONTEXT: &str = "landfall 2026-11 dead letter v2";
/// Truncate and drop-table markers (their own domain: they never share a
/// key with a change, so adding them left the change derivation as it was).
const CONTROL_CONTEXT: &str = "landfall 2026-11 dms control v1";

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DedupKey(pub [u8; 32]);

impl DedupKey {
    /// The key of part `part` of a change read at `at`.
    pub fn of_change(c: &Change, at: &Coords, part: Part) -> DedupKey {
        let mut h = blake3::Hasher::new_derive_key(CHANGE_CONTEXT);
        field(&mut h, c.schema.as_bytes());
        field(&mut h, c.table.as_bytes());
        field(&mut h, c.operation.as_bytes());
        let source = SourcePosition {
            transaction_id: c.transaction_id.as_deref(),
            transaction_record_id: c.transaction_record_id.as_deref(),
            stream_position: c.stream_position.as_deref(),
            commit_timestamp: c.commit_timestamp.as_deref(),
        };
        source.hash(&mut h, c.has_transaction_details(), |h| field(h, c.timestamp.as_bytes()), at);
        let mut buf = Vec::with_capacity(256);
        canonical_object(&mut buf, &c.data);
        field(&mut h, &buf);
        match &c.before {
            Some(b) => {
                buf.clear();
                canonical_object(&mut buf, b);
                h.update(&[1]);
                field(&mut h, &buf);
            }
            None => {
                h.update(&[0]);
            }
        }
        h.update(&[part as u8]);
        DedupKey(*h.finalize().as_bytes())
    }

    /// The key of the marker row of a control record read at `at`, by the
    /// same rule as a change: with transaction details the source names it
    /// (transaction id, record id, position, commit timestamp); without them,
    /// `metadata.timestamp` plus the Kafka topic, partition and offset.
    pub fn of_control(c: &Control, at: &Coords) -> DedupKey {
        let mut h = blake3::Hasher::new_derive_key(CONTROL_CONTEXT);
        opt_field(&mut h, c.schema.as_deref());
        opt_field(&mut h, c.table.as_deref());
        field(&mut h, c.operation.as_bytes());
        let source = SourcePosition {
            transaction_id: c.transaction_id.as_deref(),
            transaction_record_id: c.transaction_record_id.as_deref(),
            stream_position: c.stream_position.as_deref(),
            commit_timestamp: c.commit_timestamp.as_deref(),
        };
        source.hash(&mut h, c.has_transaction_details(), |h| opt_field(h, c.timestamp.as_deref()), at);
        DedupKey(*h.finalize().as_bytes())
    }

    /// The key (id) of a dead letter. Its message's Kafka coordinates alone
    /// do not name it: a re-created topic reuses offsets, and one message can
    /// give two refused rows (a primary-key change). So it also covers the
    /// message's timestamp and value hash, when known, and the refused row's
    /// key. A redelivery of the same message gets the same key; a new message
    /// at a reused offset, another.
    pub fn of_dead_letter(at: &Coords, timestamp_ms: Option<i64>, value_hash: Option<&[u8; 32]>, row: Option<&DedupKey>) -> DedupKey {
        let mut h = blake3::Hasher::new_derive_key(DEAD_LETTER_CONTEXT);
        field(&mut h, at.topic.as_bytes());
        h.update(&at.partition.to_be_bytes());
        h.update(&at.offset.to_be_bytes());
        match timestamp_ms {
            Some(t) => h.update(&[1]).update(&t.to_be_bytes()),
            None => h.update(&[0]),
        };
        match value_hash {
            Some(v) => h.update(&[1]).update(v),
            None => h.update(&[0]),
        };
        match row {
            Some(k) => h.update(&[1]).update(&k.0),
            None => h.update(&[0]),
        };
        DedupKey(*h.finalize().as_bytes())
    }

    pub fn to_hex(&self) -> String {
        self.hex().iter().map(|&b| b as char).collect()
    }

    /// The key's 64 lowercase hex digits, without an allocation.
    pub fn hex(&self) -> [u8; 64] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        out
    }

    pub fn from_hex(s: &str) -> Option<DedupKey> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(DedupKey(out))
    }
}

impl fmt::Debug for DedupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DedupKey({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for DedupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// What DMS says of where a change (or control record) stands in the source.
struct SourcePosition<'a> {
    transaction_id: Option<&'a str>,
    transaction_record_id: Option<&'a str>,
    stream_position: Option<&'a str>,
    commit_timestamp: Option<&'a str>,
}

impl SourcePosition<'_> {
    /// The identity rule shared by changes and control records: with
    /// transaction details the source names the record; without them,
    /// `timestamp` (written by the caller: a change always has one, a
    /// control record may not) plus the Kafka coordinates.
    fn hash(&self, h: &mut blake3::Hasher, transaction_details: bool, timestamp: impl FnOnce(&mut blake3::Hasher), at: &Coords) {
        if transaction_details {
            h.update(b"T");
            opt_field(h, self.transaction_id);
            opt_field(h, self.transaction_record_id);
            opt_field(h, self.stream_position);
            opt_field(h, self.commit_timestamp);
        } else {
            h.update(b"K");
            timestamp(h);
            opt_field(h, self.commit_timestamp);
            opt_field(h, self.stream_position);
            opt_field(h, self.transaction_id);
            opt_field(h, self.transaction_record_id);
            field(h, at.topic.as_bytes());
            h.update(&at.partition.to_be_bytes());
            h.update(&at.offset.to_be_bytes());
        }
    }
}

fn field(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn opt_field(h: &mut blake3::Hasher, v: Option<&str>) {
    match v {
        Some(s) => {
            h.update(&[1]);
            field(h, s.as_bytes());
        }
        None => {
            h.update(&[0]);
        }
    }
}

/// Canonical JSON: object keys sorted by their bytes, no whitespace, numbers
/// and strings as serde_json writes them.
fn canonical(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Object(m) => canonical_object(buf, m),
        Value::Array(items) => {
            buf.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                canonical(buf, item);
            }
            buf.push(b']');
        }
        scalar => {
            // Serializing a scalar Value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *buf, scalar);
        }
    }
}

fn canonical_object(buf: &mut Vec<u8>, m: &Map<String, Value>) {
    let mut entries: Vec<(&String, &Value)> = m.iter().collect();
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    buf.push(b'{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        let _ = serde_json::to_writer(&mut *buf, k);
        buf.push(b':');
        canonical(buf, v);
    }
    buf.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{dms, Decoded};

    fn change(text: &str) -> Change {
        match dms::decode(text.as_bytes(), "before-image").unwrap() {
            Decoded::Row(c) => c,
            other => panic!("{other:?}"),
        }
    }

    const A: &str = r#"{"data":{"id":1,"name":"a","tags":{"y":1,"x":2}},"metadata":{"timestamp":"2026-11-27T03:28:32.000001Z","record-type":"data","operation":"update","schema-name":"s","table-name":"t"}}"#;
    const TX: &str = r#"{"data":{"id":1,"name":"a"},"metadata":{"timestamp":"2026-11-27T03:28:32.000001Z","record-type":"data","operation":"update","schema-name":"s","table-name":"t","transaction-id":"77","transaction-record-id":3,"stream-position":"0/1A0","commit-timestamp":"2026-11-27T03:28:31Z"}}"#;

    fn at(partition: i32, offset: i64) -> Coords {
        Coords { topic: "dms".into(), partition, offset }
    }

    #[test]
    fn same_delivery_same_key_regardless_of_formatting_and_key_order() {
        let reordered = r#"{ "metadata": {"table-name":"t","schema-name":"s","operation":"update","record-type":"data","timestamp":"2026-11-27T03:28:32.000001Z"},
            "data": {"tags":{"x":2,"y":1}, "name":"a", "id":1} }"#;
        assert_eq!(
            DedupKey::of_change(&change(A), &at(0, 5), Part::Change),
            DedupKey::of_change(&change(reordered), &at(0, 5), Part::Change)
        );
    }

    #[test]
    fn without_transaction_details_the_kafka_position_is_part_of_the_identity() {
        let base = DedupKey::of_change(&change(A), &at(0, 5), Part::Change);
        assert_ne!(DedupKey::of_change(&change(A), &at(0, 6), Part::Change), base, "a genuine repeat at another offset");
        assert_ne!(DedupKey::of_change(&change(A), &at(1, 5), Part::Change), base);
        for variant in [
            A.replace("\"a\"", "\"b\""),
            A.replace(".000001Z", ".000002Z"),
            A.replace("\"update\"", "\"insert\""),
            A.replace("\"s\"", "\"s2\""),
            A.replace("\"t\"", "\"t2\""),
            A.replace("\"x\":2", "\"x\":3"),
        ] {
            assert_ne!(DedupKey::of_change(&change(&variant), &at(0, 5), Part::Change), base, "{variant}");
        }
        assert_ne!(DedupKey::of_change(&change(A), &at(0, 5), Part::OldKeyDelete), base);
    }

    #[test]
    fn with_transaction_details_the_source_position_is_the_identity() {
        let base = DedupKey::of_change(&change(TX), &at(0, 5), Part::Change);
        // A copy at another offset, or rebuilt by DMS later (new metadata.timestamp), is the same change.
        assert_eq!(DedupKey::of_change(&change(TX), &at(3, 900), Part::Change), base);
        assert_eq!(DedupKey::of_change(&change(&TX.replace(".000001Z", ".999999Z")), &at(0, 6), Part::Change), base);
        for variant in [
            TX.replace("\"transaction-record-id\":3", "\"transaction-record-id\":4"),
            TX.replace("\"77\"", "\"78\""),
            TX.replace("0/1A0", "0/1A1"),
            TX.replace("\"a\"", "\"b\""),
        ] {
            assert_ne!(DedupKey::of_change(&change(&variant), &at(0, 5), Part::Change), base, "{variant}");
        }
    }

    #[test]
    fn hex_round_trip_and_insert_id_length() {
        let k = DedupKey::of_change(&change(A), &at(0, 1), Part::Change);
        let hex = k.to_hex();
        assert_eq!(hex.len(), 64);
        assert!(hex.len() <= 128, "BigQuery insertId limit");
        assert_eq!(DedupKey::from_hex(&hex), Some(k));
        assert_eq!(DedupKey::from_hex("zz"), None);
        assert_eq!(DedupKey::from_hex(&"é".repeat(32)), None);
    }

    fn control(text: &str) -> Control {
        match dms::decode(text.as_bytes(), "before-image").unwrap() {
            Decoded::Control(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn control_keys_follow_the_change_identity_rule() {
        const TRUNCATE: &str = r#"{"metadata":{"timestamp":"2026-11-27T03:28:32Z","record-type":"control","operation":"truncate-table","schema-name":"s","table-name":"t"}}"#;
        let base = DedupKey::of_control(&control(TRUNCATE), &at(0, 5));
        assert_eq!(DedupKey::of_control(&control(TRUNCATE), &at(0, 5)), base, "a redelivery");
        assert_ne!(DedupKey::of_control(&control(TRUNCATE), &at(0, 6)), base, "a second truncate at another offset");
        for variant in
            [TRUNCATE.replace("truncate-table", "drop-table"), TRUNCATE.replace("\"t\"", "\"t2\""), TRUNCATE.replace(":32Z", ":33Z")]
        {
            assert_ne!(DedupKey::of_control(&control(&variant), &at(0, 5)), base, "{variant}");
        }
        // With transaction details the source names it: a copy anywhere has its key.
        let tx = TRUNCATE
            .replace(r#""table-name":"t""#, r#""table-name":"t","transaction-id":"9","transaction-record-id":1,"stream-position":"0/1A0""#);
        let named = DedupKey::of_control(&control(&tx), &at(0, 5));
        assert_eq!(DedupKey::of_control(&control(&tx.replace(":32Z", ":59Z")), &at(3, 77)), named);
        assert_ne!(DedupKey::of_control(&control(&tx.replace("0/1A0", "0/1A1")), &at(0, 5)), named);
        // Never the key of a change.
        let change = change(&A.replace(r#""data":{"id":1,"name":"a","tags":{"y":1,"x":2}},"#, r#""data":{},"#));
        assert_ne!(DedupKey::of_change(&change, &at(0, 5), Part::Change), base);
    }

    #[test]
    fn dead_letter_keys_differ_by_position_message_and_row() {
        let a = Coords { topic: "t".into(), partition: 0, offset: 1 };
        let b = Coords { topic: "t".into(), partition: 0, offset: 2 };
        let (v1, v2) = ([1; 32], [2; 32]);
        let k = |at: &Coords, ts, v, row| DedupKey::of_dead_letter(at, ts, v, row);
        assert_ne!(k(&a, Some(5), Some(&v1), None), k(&b, Some(5), Some(&v1), None));
        assert_eq!(k(&a, Some(5), Some(&v1), None), k(&a.clone(), Some(5), Some(&v1), None), "a redelivery: the same letter");
        // A re-created topic reuses offset 1: another value, or the same
        // value produced at another time, is another letter.
        assert_ne!(k(&a, Some(5), Some(&v1), None), k(&a, Some(5), Some(&v2), None));
        assert_ne!(k(&a, Some(5), Some(&v1), None), k(&a, Some(6), Some(&v1), None));
        assert_ne!(k(&a, None, Some(&v1), None), k(&a, Some(0), Some(&v1), None));
        // The two refused rows of one primary-key change are two letters.
        let (r1, r2) = (DedupKey([3; 32]), DedupKey([4; 32]));
        assert_ne!(k(&a, Some(5), Some(&v1), Some(&r1)), k(&a, Some(5), Some(&v1), Some(&r2)));
        assert_ne!(k(&a, Some(5), Some(&v1), Some(&r1)), k(&a, Some(5), Some(&v1), None));
    }
}
