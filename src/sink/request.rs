//! Building insertAll requests: rows are split into requests within the row
//! and byte limits ([`plan_requests`]), and each request body is serialized
//! straight from the rows into a gzip stream ([`gzip_body`]): no row is
//! copied, `_landfall_ingested` is added on the way, and the insertId of each
//! row is its dedup key.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::table::{LogRow, COL_INGESTED};

/// Per-row overhead of the request envelope, for size estimates.
const ROW_OVERHEAD: usize = 100;

/// JSON gathered before each call into the gzip encoder.
const GZIP_INPUT_BUFFER: usize = 64 * 1024;

/// A gzipped insertAll request body and the length of its plain JSON.
pub struct Body {
    pub gzipped: Vec<u8>,
    pub plain_len: usize,
}

/// Serializes the insertAll request for `rows[indices]` straight into a gzip
/// stream: no row is copied, `_landfall_ingested` is added on the way, and
/// the insertId of each row is its dedup key.
pub fn gzip_body(rows: &[LogRow], indices: &[usize], ingested: &str, level: u32) -> std::io::Result<Body> {
    // serde_json writes in pieces of a few bytes, and each write reaching the
    // encoder is one deflate call that first zeroes the output buffer's spare
    // capacity (32 KiB): unbuffered, that zeroing was 42 % of the bridge's CPU
    // on the HTTP path (docs/performance.md). The buffer makes it one call per
    // 64 KiB of JSON.
    let gzip = GzEncoder::new(Vec::new(), Compression::new(level));
    let mut out = Counting { inner: std::io::BufWriter::with_capacity(GZIP_INPUT_BUFFER, gzip), written: 0 };
    serde_json::to_writer(&mut out, &Request { rows, indices, ingested })?;
    let gzip = out.inner.into_inner().map_err(std::io::IntoInnerError::into_error)?;
    Ok(Body { plain_len: out.written, gzipped: gzip.finish()? })
}

/// `{"skipInvalidRows":false,"ignoreUnknownValues":false,"rows":[{"insertId":..,"json":{..}}]}`
struct Request<'a> {
    rows: &'a [LogRow],
    indices: &'a [usize],
    ingested: &'a str,
}

impl Serialize for Request<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("skipInvalidRows", &false)?;
        m.serialize_entry("ignoreUnknownValues", &false)?;
        m.serialize_entry("rows", &Rows(self))?;
        m.end()
    }
}

struct Rows<'a, 'b>(&'b Request<'a>);

impl Serialize for Rows<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut seq = s.serialize_seq(Some(r.indices.len()))?;
        for &i in r.indices {
            seq.serialize_element(&Row { row: &r.rows[i], ingested: r.ingested })?;
        }
        seq.end()
    }
}

struct Row<'a> {
    row: &'a LogRow,
    ingested: &'a str,
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("insertId", &self.row.key.to_hex())?;
        m.serialize_entry("json", &Json(self))?;
        m.end()
    }
}

struct Json<'a, 'b>(&'b Row<'a>);

impl Serialize for Json<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let json = &self.0.row.json;
        let mut m = s.serialize_map(Some(json.len() + 1))?;
        for (k, v) in json.iter().filter(|(k, _)| k.as_str() != COL_INGESTED) {
            m.serialize_entry(k, v)?;
        }
        m.serialize_entry(COL_INGESTED, self.0.ingested)?;
        m.end()
    }
}

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    written: usize,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The bytes a row takes in an insertAll request (its JSON plus the
/// envelope estimate), counted without building the JSON. A row that does not
/// serialize counts as too large for any request.
pub fn row_request_bytes(json: &Map<String, Value>) -> usize {
    let mut counter = Counting { inner: std::io::sink(), written: 0 };
    match serde_json::to_writer(&mut counter, json) {
        Ok(()) => counter.written + ROW_OVERHEAD,
        Err(_) => usize::MAX / 2,
    }
}

/// Splits rows into requests within the row and byte limits. Rows that are
/// too large on their own are returned separately.
pub fn plan_requests(rows: &[LogRow], max_rows: usize, max_bytes: usize) -> (Vec<Vec<usize>>, Vec<(usize, usize)>) {
    let mut requests = Vec::new();
    let mut oversized = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for (i, row) in rows.iter().enumerate() {
        let size = row_request_bytes(&row.json);
        if size > max_bytes {
            oversized.push((i, size));
            continue;
        }
        if !current.is_empty() && (current.len() >= max_rows || bytes + size > max_bytes) {
            requests.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(i);
        bytes += size;
    }
    if !current.is_empty() {
        requests.push(current);
    }
    (requests, oversized)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::DedupKey;

    fn row(n: usize) -> LogRow {
        let mut json = Map::new();
        json.insert("v".into(), Value::String("x".repeat(n)));
        LogRow { key: DedupKey([n as u8; 32]), json }
    }

    #[test]
    fn a_body_larger_than_the_gzip_buffer_gunzips_to_every_row_in_order() {
        use std::io::Read;
        // 300 rows of ~1 KB: the plain JSON is several times GZIP_INPUT_BUFFER.
        let rows: Vec<LogRow> = (0..300).map(|n| row(1000 + n)).collect();
        let indices: Vec<usize> = (0..300).rev().step_by(2).collect();
        let body = gzip_body(&rows, &indices, "2026-12-07 10:00:00.000000", 6).unwrap();
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&body.gzipped[..]).read_to_end(&mut plain).unwrap();
        assert!(plain.len() > 2 * GZIP_INPUT_BUFFER, "{}", plain.len());
        assert_eq!(body.plain_len, plain.len());
        let v: Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(v["skipInvalidRows"], Value::Bool(false));
        let sent = v["rows"].as_array().unwrap();
        assert_eq!(sent.len(), indices.len());
        for (r, &i) in sent.iter().zip(&indices) {
            let hex: String = [(1000 + i) as u8; 32].iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(r["insertId"], Value::String(hex));
            assert_eq!(r["json"]["v"].as_str().map(str::len), Some(1000 + i));
            assert_eq!(r["json"][COL_INGESTED], "2026-12-07 10:00:00.000000");
        }
    }

    #[test]
    fn requests_respect_row_and_byte_limits() {
        let rows: Vec<LogRow> = (0..10).map(|_| row(100)).collect();
        let (reqs, big) = plan_requests(&rows, 4, 1_000_000);
        assert_eq!(reqs.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert!(big.is_empty());
        let (reqs, _) = plan_requests(&rows, 500, 700);
        assert!(reqs.iter().all(|r| r.len() <= 3), "{reqs:?}");
        assert_eq!(reqs.iter().map(Vec::len).sum::<usize>(), 10);
        let mut rows = rows;
        rows.push(row(5000));
        let (_, big) = plan_requests(&rows, 500, 1000);
        assert_eq!(big.len(), 1);
        assert_eq!(big[0].0, 10);
    }
}
