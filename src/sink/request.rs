//! Building insertAll requests: rows are split into requests within the row
//! and byte limits ([`plan_requests`]), and each request body is written
//! from the rows' JSON text into a gzip stream ([`gzip_body`]): no row is
//! encoded again, `_landfall_ingested` is added on the way, and the insertId
//! of each row is its dedup key.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;

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

/// Writes the insertAll request for `rows[indices]` straight into a gzip
/// stream: each row's JSON text is copied in as it was encoded when the row
/// was built, `_landfall_ingested` is added before its closing brace, and
/// the insertId of each row is its dedup key.
pub fn gzip_body(rows: &[LogRow], indices: &[usize], ingested: &str, level: u32) -> std::io::Result<Body> {
    // Each write reaching the encoder is one deflate call that first zeroes
    // the output buffer's spare capacity (32 KiB): with writes of a few bytes,
    // that zeroing was 42 % of the bridge's CPU on the HTTP path
    // (docs/performance.md). The buffer makes it one call per 64 KiB of JSON.
    let gzip = GzEncoder::new(Vec::new(), Compression::new(level));
    let mut out = Counting { inner: std::io::BufWriter::with_capacity(GZIP_INPUT_BUFFER, gzip), written: 0 };
    write_request(&mut out, rows, indices, ingested)?;
    let gzip = out.inner.into_inner().map_err(std::io::IntoInnerError::into_error)?;
    Ok(Body { plain_len: out.written, gzipped: gzip.finish()? })
}

/// `{"skipInvalidRows":false,"ignoreUnknownValues":false,"rows":[{"insertId":..,"json":{..}}]}`
fn write_request(out: &mut impl Write, rows: &[LogRow], indices: &[usize], ingested: &str) -> std::io::Result<()> {
    // `"_landfall_ingested":"<ingested>"}}`, the same for every row.
    let mut tail = Vec::with_capacity(64);
    serde_json::to_writer(&mut tail, COL_INGESTED)?;
    tail.push(b':');
    serde_json::to_writer(&mut tail, ingested)?;
    tail.extend_from_slice(b"}}");
    out.write_all(br#"{"skipInvalidRows":false,"ignoreUnknownValues":false,"rows":["#)?;
    for (n, &i) in indices.iter().enumerate() {
        let row = &rows[i];
        if n > 0 {
            out.write_all(b",")?;
        }
        out.write_all(br#"{"insertId":""#)?;
        out.write_all(row.key.to_hex().as_bytes())?;
        out.write_all(br#"","json":"#)?;
        // The text is a whole object, `{}` or `{..}`: its closing brace is
        // replaced by the ingested column's entry (and the brace).
        let text = row.text();
        let open = &text[..text.len().saturating_sub(1)];
        out.write_all(open)?;
        if open.len() > 1 {
            out.write_all(b",")?;
        }
        out.write_all(&tail)?;
    }
    out.write_all(b"]}")
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

/// The bytes a row takes in an insertAll request: its JSON text plus the
/// envelope estimate.
pub fn row_request_bytes(row: &LogRow) -> usize {
    row.text().len() + ROW_OVERHEAD
}

/// Splits rows into requests within the row and byte limits. Rows that are
/// too large on their own are returned separately.
pub fn plan_requests(rows: &[LogRow], max_rows: usize, max_bytes: usize) -> (Vec<Vec<usize>>, Vec<(usize, usize)>) {
    let mut requests = Vec::new();
    let mut oversized = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for (i, row) in rows.iter().enumerate() {
        let size = row_request_bytes(row);
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
    use serde_json::{Map, Value};

    fn row(n: usize) -> LogRow {
        let mut json = Map::new();
        json.insert("v".into(), Value::String("x".repeat(n)));
        LogRow::new(DedupKey([n as u8; 32]), &json)
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
    fn each_row_is_its_columns_and_the_ingested_column_even_without_columns() {
        use std::io::Read;
        let mut full = Map::new();
        full.insert("id".into(), Value::from(7));
        full.insert("name".into(), Value::String("a \"quoted\" \u{7} name".into()));
        full.insert("nested".into(), serde_json::json!({"a": [1, null, "}"]}));
        // A row kept with an ingested column of an earlier attempt has it replaced.
        full.insert(COL_INGESTED.into(), Value::String("1999-01-01 00:00:00".into()));
        let rows = vec![LogRow::new(DedupKey([1; 32]), &full), LogRow::new(DedupKey([2; 32]), &Map::new())];
        let body = gzip_body(&rows, &[1, 0], "2026-12-07 10:00:00.000000", 2).unwrap();
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&body.gzipped[..]).read_to_end(&mut plain).unwrap();
        let got: Value = serde_json::from_slice(&plain).unwrap();
        let expected = serde_json::json!({
            "skipInvalidRows": false,
            "ignoreUnknownValues": false,
            "rows": [
                {"insertId": "02".repeat(32), "json": {"_landfall_ingested": "2026-12-07 10:00:00.000000"}},
                {"insertId": "01".repeat(32), "json": {
                    "id": 7, "name": "a \"quoted\" \u{7} name", "nested": {"a": [1, null, "}"]},
                    "_landfall_ingested": "2026-12-07 10:00:00.000000"}},
            ]
        });
        assert_eq!(got, expected);
        // No key twice in a row object (a parser keeping the first would take the stale stamp).
        assert_eq!(String::from_utf8(plain).unwrap().matches(COL_INGESTED).count(), 2);
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
