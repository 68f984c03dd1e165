//! Conversion of DMS JSON values to the JSON `tabledata.insertAll` accepts for
//! a BigQuery column type.
//!
//! Guarantees (docs/design.md, "Values"):
//!
//! * **Lossless or rejected.** Numbers arrive as their exact decimal text
//!   (serde_json's `arbitrary_precision`): INT64, NUMERIC, BIGNUMERIC and
//!   STRING never pass through an f64. A value that does not fit its column
//!   is an error naming the limit (the message is dead-lettered), never
//!   rounded or coerced into something else.
//! * **Time** keeps microseconds, BigQuery's precision: fraction digits 7-9
//!   (SQL Server `datetime2(7)`, Oracle `TIMESTAMP(9)`) are truncated (toward
//!   the past), and values outside 0001-01-01 .. 9999-12-31 are rejected.
//! * **JSON** columns hold the document: a JSON string whose content is a
//!   JSON document (how DMS sends JSON columns) is stored as that document.
//! * **BYTES** are decoded in the column's configured encoding (hex with an
//!   optional `0x`, DMS's default, or base64) and sent as base64; a value in
//!   the wrong encoding is rejected, never reinterpreted.
//! * **FLOAT64** `NaN`, `Infinity` and `-Infinity` (as strings, or as the bare
//!   tokens some producers write, see [`NON_FINITE_MARK`]) are sent as the
//!   strings BigQuery accepts.

use std::borrow::Cow;

use serde_json::Value;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

use super::{BytesEncoding, ColumnType};
use crate::config::ColumnConfig;

pub use super::json::NON_FINITE_MARK;

/// NUMERIC: precision 38, scale 9.
const NUMERIC_INT_DIGITS: usize = 29;
const NUMERIC_FRAC_DIGITS: usize = 9;
/// BIGNUMERIC: scale 38, bounded by +-5.789...e38.
const BIGNUMERIC_FRAC_DIGITS: usize = 38;
const BIGNUMERIC_MAX_INT: &str = "578960446186580977117854925043439539266";
const BIGNUMERIC_MAX_FRAC: &str = "34992332820282019728792003956564819967";
const BIGNUMERIC_MIN_FRAC: &str = "34992332820282019728792003956564819968";

/// Converts `v` for the column `col`. `Null` stays `Null`.
pub fn convert(col: &ColumnConfig, v: &Value) -> Result<Value, String> {
    convert_as(col.ty, col.bytes_encoding(), v)
}

/// As [`convert`], borrowing `v` where the value is written as it came (a
/// STRING column's string: the common case, no copy per column).
pub fn convert_borrowed<'a>(col: &ColumnConfig, v: &'a Value) -> Result<Cow<'a, Value>, String> {
    match v {
        Value::String(s) if col.ty == ColumnType::String && !s.starts_with(NON_FINITE_MARK) => Ok(Cow::Borrowed(v)),
        _ => convert(col, v).map(Cow::Owned),
    }
}

/// Converts `v` for a column of type `ty` (BYTES in `encoding`).
pub fn convert_as(ty: ColumnType, encoding: BytesEncoding, v: &Value) -> Result<Value, String> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    if let Some(word) = v.as_str().and_then(|s| s.strip_prefix(NON_FINITE_MARK)) {
        // A bare NaN/Infinity token: a float for FLOAT64, its text for STRING.
        return match ty {
            ColumnType::Float64 | ColumnType::String => Ok(Value::String(word.into())),
            _ => Err(format!("{word} is not a valid {} value", ty.sql_name())),
        };
    }
    match ty {
        ColumnType::String => match v {
            Value::String(_) => Ok(v.clone()),
            Value::Number(n) => Ok(Value::String(n.to_string())),
            Value::Bool(b) => Ok(Value::String(b.to_string())),
            _ => Err("expected a string, got a JSON object or array".into()),
        },
        ColumnType::Int64 => int64(v),
        ColumnType::Float64 => match v {
            Value::Number(n) => match n.as_f64() {
                Some(f) if f.is_finite() => Ok(Value::from(f)),
                _ => Err(format!("{} is outside FLOAT64's range", short(&n.to_string()))),
            },
            Value::String(s) => match (non_finite(s), s.trim().parse::<f64>()) {
                (Some(special), _) => Ok(Value::String(special.into())),
                (None, Ok(f)) if f.is_finite() => Ok(Value::from(f)),
                _ => Err(format!("{} is not a FLOAT64 number", short(s))),
            },
            _ => Err("expected a number".into()),
        },
        ColumnType::Numeric => numeric(v),
        ColumnType::Bignumeric => bignumeric(v),
        ColumnType::Bool => match v {
            Value::Bool(_) => Ok(v.clone()),
            Value::Number(n) if n.as_i64() == Some(0) => Ok(Value::Bool(false)),
            Value::Number(n) if n.as_i64() == Some(1) => Ok(Value::Bool(true)),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "t" | "1" => Ok(Value::Bool(true)),
                "false" | "f" | "0" => Ok(Value::Bool(false)),
                _ => Err(format!("{} is not a boolean", short(s))),
            },
            _ => Err("expected a boolean".into()),
        },
        ColumnType::Timestamp => {
            let s = expect_str(v, "a timestamp string")?;
            let t = parse_time_value(s, Zone::Allowed).ok_or_else(|| format!("{} is not a TIMESTAMP", short(s)))?;
            let utc = t.utc().ok_or_else(|| format!("{} is outside TIMESTAMP's range (0001-01-01 .. 9999-12-31 UTC)", short(s)))?;
            let mut text = civil(utc, 'T');
            text.push('Z');
            Ok(Value::String(text))
        }
        ColumnType::Date => {
            let s = expect_str(v, "a date string")?;
            let d = parse_date(s.trim()).ok_or_else(|| format!("{} is not a DATE (YYYY-MM-DD, 0001-01-01 .. 9999-12-31)", short(s)))?;
            Ok(Value::String(ymd(d)))
        }
        ColumnType::Datetime => {
            let s = expect_str(v, "a datetime string")?;
            let t = parse_time_value(s, Zone::Forbidden)
                .ok_or_else(|| format!("{} is not a DATETIME (YYYY-MM-DD HH:MM:SS[.fffffffff], no time zone)", short(s)))?;
            Ok(Value::String(civil(t.local, ' ')))
        }
        ColumnType::Time => {
            let s = expect_str(v, "a time string")?;
            let t = parse_clock(s.trim()).ok_or_else(|| format!("{} is not a TIME (HH:MM:SS[.fffffffff])", short(s)))?;
            Ok(Value::String(hms(t)))
        }
        ColumnType::Json => json_document(v),
        ColumnType::Bytes => {
            let s = expect_str(v, "a string of bytes")?;
            let raw = match encoding {
                BytesEncoding::Hex => decode_hex(s).ok_or_else(|| {
                    format!("{} is not hexadecimal bytes (bytes_encoding = \"hex\": optional 0x, then pairs of hex digits)", short(s))
                })?,
                BytesEncoding::Base64 => {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|_| format!("{} is not base64 (bytes_encoding = \"base64\")", short(s)))?
                }
            };
            use base64::Engine;
            Ok(Value::String(base64::engine::general_purpose::STANDARD.encode(raw)))
        }
    }
}

/// The spelling BigQuery accepts if `s` names a non-finite float.
fn non_finite(s: &str) -> Option<&'static str> {
    match s.trim() {
        "NaN" | "nan" | "NAN" => Some("NaN"),
        "Infinity" | "+Infinity" | "inf" | "+inf" | "Inf" | "INF" => Some("Infinity"),
        "-Infinity" | "-inf" | "-Inf" | "-INF" => Some("-Infinity"),
        _ => None,
    }
}

fn expect_str<'a>(v: &'a Value, what: &str) -> Result<&'a str, String> {
    match v {
        Value::String(s) => Ok(s),
        _ => Err(format!("expected {what}")),
    }
}

pub(crate) fn short(s: &str) -> String {
    let mut out: String = s.chars().take(40).flat_map(char::escape_debug).collect();
    if s.chars().count() > 40 {
        out.push('…');
    }
    format!("\"{out}\"")
}

// ---------------------------------------------------------------- numbers

/// An exact decimal: sign, integer digits without leading zeros (empty for
/// zero), fraction digits without trailing zeros.
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    int: String,
    frac: String,
}

impl Decimal {
    fn text(&self) -> String {
        let mut s = String::with_capacity(self.int.len() + self.frac.len() + 3);
        if self.negative && !(self.int.is_empty() && self.frac.is_empty()) {
            s.push('-');
        }
        s.push_str(if self.int.is_empty() { "0" } else { &self.int });
        if !self.frac.is_empty() {
            s.push('.');
            s.push_str(&self.frac);
        }
        s
    }
}

/// Parses decimal text (`-12.50`, `1.5e3`, `+7`) exactly.
fn parse_decimal(text: &str) -> Option<Decimal> {
    let t = text.trim();
    let (negative, unsigned) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exp) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int.is_empty() && frac.is_empty()) || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits = format!("{int}{frac}");
    let mut point = int.len() as i64;
    if let Some(e) = exp {
        let e: i64 = e.parse().ok()?;
        if e.abs() > 200 {
            return None;
        }
        point += e;
    }
    if point < 0 {
        digits = "0".repeat((-point) as usize) + &digits;
        point = 0;
    }
    while (digits.len() as i64) < point {
        digits.push('0');
    }
    let (i, f) = digits.split_at(point as usize);
    Some(Decimal { negative, int: i.trim_start_matches('0').to_owned(), frac: f.trim_end_matches('0').to_owned() })
}

fn number_text(v: &Value, what: &str) -> Result<String, String> {
    match v {
        Value::Number(n) => Ok(n.to_string()),
        Value::String(s) => Ok(s.clone()),
        _ => Err(format!("expected {what}")),
    }
}

fn int64(v: &Value) -> Result<Value, String> {
    match v {
        Value::Bool(b) => return Ok(Value::from(*b as i64)),
        // The common case: an integer that fits, no decimal text to build.
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Ok(Value::from(i));
            }
        }
        _ => {}
    }
    let text = number_text(v, "an integer")?;
    let d = parse_decimal(&text).filter(|d| d.frac.is_empty()).ok_or_else(|| format!("{} is not an integer", short(&text)))?;
    let magnitude = if d.int.is_empty() { "0" } else { &d.int };
    let signed = if d.negative { format!("-{magnitude}") } else { magnitude.to_owned() };
    signed.parse::<i64>().map(Value::from).map_err(|_| format!("{} is outside INT64's range", short(&text)))
}

fn numeric(v: &Value) -> Result<Value, String> {
    let text = number_text(v, "a decimal number")?;
    let d = parse_decimal(&text).ok_or_else(|| format!("{} is not a decimal number", short(&text)))?;
    if d.int.len() > NUMERIC_INT_DIGITS || d.frac.len() > NUMERIC_FRAC_DIGITS {
        return Err(format!(
            "{} does not fit NUMERIC (precision 38, scale 9: at most {NUMERIC_INT_DIGITS} integer and {NUMERIC_FRAC_DIGITS} fraction digits); \
             map the column to BIGNUMERIC or STRING",
            short(&text)
        ));
    }
    Ok(Value::String(d.text()))
}

fn bignumeric(v: &Value) -> Result<Value, String> {
    let text = number_text(v, "a decimal number")?;
    let d = parse_decimal(&text).ok_or_else(|| format!("{} is not a decimal number", short(&text)))?;
    let too_big = || {
        format!(
            "{} does not fit BIGNUMERIC (at most 38 fraction digits, magnitude at most {BIGNUMERIC_MAX_INT}.{BIGNUMERIC_MAX_FRAC}); map the column to STRING",
            short(&text)
        )
    };
    if d.frac.len() > BIGNUMERIC_FRAC_DIGITS || d.int.len() > BIGNUMERIC_MAX_INT.len() {
        return Err(too_big());
    }
    if d.int.len() == BIGNUMERIC_MAX_INT.len() {
        let bound = if d.negative { BIGNUMERIC_MIN_FRAC } else { BIGNUMERIC_MAX_FRAC };
        let frac = format!("{:0<38}", d.frac);
        if (d.int.as_str(), frac.as_str()) > (BIGNUMERIC_MAX_INT, bound) {
            return Err(too_big());
        }
    }
    Ok(Value::String(d.text()))
}

// ---------------------------------------------------------------- JSON

fn json_document(v: &Value) -> Result<Value, String> {
    match v {
        Value::String(s) => {
            let doc = super::json::parse_strict(s).map_err(|e| format!("{} is not a JSON document ({e})", short(s)))?;
            Ok(Value::String(doc.to_string()))
        }
        other => Ok(Value::String(other.to_string())),
    }
}

// ---------------------------------------------------------------- BYTES

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s).as_bytes();
    if digits.len() % 2 != 0 {
        return None;
    }
    fn nibble(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    digits.chunks_exact(2).map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?)).collect()
}

// ---------------------------------------------------------------- time

#[derive(Clone, Copy, PartialEq, Eq)]
enum Zone {
    Allowed,
    Forbidden,
}

/// A date and time as written (fraction truncated to microseconds), with
/// its UTC offset when one was written.
struct Written {
    local: PrimitiveDateTime,
    offset: Option<UtcOffset>,
}

impl Written {
    /// The instant in UTC, if it lies in BigQuery's range.
    fn utc(&self) -> Option<PrimitiveDateTime> {
        let offset = self.offset.unwrap_or(UtcOffset::UTC);
        let instant = self.local.checked_sub(time::Duration::seconds(offset.whole_seconds() as i64))?;
        (1..=9999).contains(&instant.year()).then_some(instant)
    }
}

fn parse_date(s: &str) -> Option<Date> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year: i32 = digits(&s[0..4])?;
    let month: u8 = digits(&s[5..7])?;
    let day: u8 = digits(&s[8..10])?;
    if year < 1 {
        return None;
    }
    Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()
}

fn digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `HH:MM:SS[.f{1,9}]`, the fraction truncated to microseconds.
fn parse_clock(s: &str) -> Option<Time> {
    let (hms, frac) = match s.split_once('.') {
        Some((a, f)) => (a, Some(f)),
        None => (s, None),
    };
    let b = hms.as_bytes();
    if b.len() != 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (h, m, sec): (u8, u8, u8) = (digits(&hms[0..2])?, digits(&hms[3..5])?, digits(&hms[6..8])?);
    let micros = match frac {
        None => 0,
        Some(f) if (1..=9).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()) => {
            let six: String = f.chars().chain(std::iter::repeat('0')).take(6).collect();
            six.parse::<u32>().ok()?
        }
        Some(_) => return None,
    };
    Time::from_hms_micro(h, m, sec, micros).ok()
}

/// `YYYY-MM-DD[ T]HH:MM:SS[.f{1,9}][Z|±HH[:MM]]`.
fn parse_time_value(s: &str, zone: Zone) -> Option<Written> {
    let s = s.trim();
    if s.len() < 19 || !s.is_char_boundary(10) || !s.is_char_boundary(11) {
        return None;
    }
    let date = parse_date(&s[..10])?;
    if !matches!(s.as_bytes()[10], b' ' | b'T' | b't') {
        return None;
    }
    let rest = &s[11..];
    let zone_at = rest.find(['Z', 'z', '+', '-']).unwrap_or(rest.len());
    let (clock, tz) = rest.split_at(zone_at);
    let time = parse_clock(clock)?;
    let offset = match tz {
        "" => None,
        "Z" | "z" => Some(UtcOffset::UTC),
        _ => {
            let sign: i8 = if tz.starts_with('-') { -1 } else { 1 };
            let body = &tz[1..];
            let (h, m) = match body.len() {
                2 => (digits::<i8>(body)?, 0),
                4 => (digits::<i8>(&body[..2])?, digits::<i8>(&body[2..])?),
                5 if body.as_bytes()[2] == b':' => (digits::<i8>(&body[..2])?, digits::<i8>(&body[3..])?),
                _ => return None,
            };
            Some(UtcOffset::from_hms(sign * h, sign * m, 0).ok()?)
        }
    };
    if offset.is_some() && zone == Zone::Forbidden {
        return None;
    }
    Some(Written { local: PrimitiveDateTime::new(date, time), offset })
}

/// Appends `n` in exactly `width` digits (zero-padded; `n < 10^width`).
fn push_digits(out: &mut String, mut n: u32, width: usize) {
    let mut digits = [b'0'; 10];
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend(digits[..width].iter().map(|&d| d as char));
}

/// `YYYY-MM-DD` (by hand, not `format!`: every timestamp of every row is
/// formatted, and the formatting machinery was a tenth of decoding).
fn push_ymd(out: &mut String, d: Date) {
    match u32::try_from(d.year()) {
        Ok(y) if y <= 9999 => push_digits(out, y, 4),
        _ => {
            use std::fmt::Write;
            let _ = write!(out, "{:04}", d.year());
        }
    }
    out.push('-');
    push_digits(out, u32::from(u8::from(d.month())), 2);
    out.push('-');
    push_digits(out, u32::from(d.day()), 2);
}

/// `HH:MM:SS.ffffff`.
fn push_hms(out: &mut String, t: Time) {
    push_digits(out, u32::from(t.hour()), 2);
    out.push(':');
    push_digits(out, u32::from(t.minute()), 2);
    out.push(':');
    push_digits(out, u32::from(t.second()), 2);
    out.push('.');
    push_digits(out, t.microsecond(), 6);
}

fn ymd(d: Date) -> String {
    let mut out = String::with_capacity(10);
    push_ymd(&mut out, d);
    out
}

fn hms(t: Time) -> String {
    let mut out = String::with_capacity(15);
    push_hms(&mut out, t);
    out
}

/// `YYYY-MM-DD<sep>HH:MM:SS.ffffff`.
fn civil(dt: PrimitiveDateTime, sep: char) -> String {
    let mut out = String::with_capacity(27);
    push_ymd(&mut out, dt.date());
    out.push(sep);
    push_hms(&mut out, dt.time());
    out
}

/// Parses a timestamp (RFC 3339, or `YYYY-MM-DD HH:MM:SS[.f]` taken as UTC)
/// into microseconds since the epoch (`metadata.timestamp`).
pub fn parse_timestamp_micros(s: &str) -> Result<i64, String> {
    let t = parse_time_value(s, Zone::Allowed).ok_or_else(|| format!("{} is not an RFC 3339 timestamp", short(s)))?;
    let utc = t.utc().ok_or_else(|| format!("{} is out of range", short(s)))?;
    i64::try_from(utc.assume_utc().unix_timestamp_nanos() / 1000).map_err(|_| "timestamp out of range".into())
}

/// RFC 3339 with microseconds, UTC (`2026-11-27T03:28:32.123456Z`).
pub fn format_timestamp_micros(micros: i64) -> String {
    let dt = OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut out = civil(PrimitiveDateTime::new(dt.date(), dt.time()), 'T');
    out.push('Z');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn num(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    fn conv(ty: ColumnType, v: &Value) -> Result<Value, String> {
        convert_as(ty, BytesEncoding::Hex, v)
    }

    /// The hand-written digits against the formatting machinery, over
    /// 0001-01-01 .. 9999-12-31 (years, days and microseconds of all widths).
    #[test]
    fn civil_spells_as_format_does() {
        let first = Date::from_calendar_date(1, Month::January, 1).unwrap().midnight().assume_utc().unix_timestamp();
        let last = Date::from_calendar_date(9999, Month::December, 31).unwrap().midnight().assume_utc().unix_timestamp() + 86_399;
        let mut secs = first;
        let mut micro = 0u32;
        while secs <= last {
            let dt = OffsetDateTime::from_unix_timestamp(secs).unwrap().replace_microsecond(micro).unwrap();
            let (d, t) = (dt.date(), dt.time());
            let want = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}",
                d.year(),
                u8::from(d.month()),
                d.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.microsecond()
            );
            assert_eq!(civil(PrimitiveDateTime::new(d, t), 'T'), want);
            assert_eq!(format_timestamp_micros(secs * 1_000_000 + i64::from(micro)), format!("{want}Z"));
            secs += 3_600 * 24 * 37 + 3_661 * 7 + 13;
            micro = (micro * 7 + 123_457) % 1_000_000;
        }
        assert_eq!(
            civil(PrimitiveDateTime::new(Date::from_calendar_date(1, Month::January, 1).unwrap(), Time::MIDNIGHT), ' '),
            "0001-01-01 00:00:00.000000"
        );
    }

    #[test]
    fn conversions() {
        use ColumnType::*;
        let ok = [
            (Int64, json!(5), json!(5)),
            (Int64, json!("-7"), json!(-7)),
            (Int64, num("9223372036854775807"), num("9223372036854775807")),
            (Int64, num("-9223372036854775808"), num("-9223372036854775808")),
            (Int64, json!("12.000"), json!(12)),
            (Float64, json!("1.5"), json!(1.5)),
            (Float64, json!("NaN"), json!("NaN")),
            (Float64, json!("-Infinity"), json!("-Infinity")),
            (Float64, json!(format!("{NON_FINITE_MARK}Infinity")), json!("Infinity")),
            (String, json!(format!("{NON_FINITE_MARK}NaN")), json!("NaN")),
            (String, json!("inf"), json!("inf")),
            (String, json!(12), json!("12")),
            (String, num("83764483.396630768"), json!("83764483.396630768")),
            (Bool, json!(1), json!(true)),
            (Bool, json!("false"), json!(false)),
            (Numeric, json!("12345.678900000"), json!("12345.6789")),
            (Numeric, num("83764483.396630768"), json!("83764483.396630768")),
            (Numeric, num("1503914576078116.450117082"), json!("1503914576078116.450117082")),
            (Numeric, num("12345678901234567890123456789.123456789"), json!("12345678901234567890123456789.123456789")),
            (Numeric, num("-0.000000001"), json!("-0.000000001")),
            (Numeric, num("1.5e3"), json!("1500")),
            (Numeric, json!("-0.0"), json!("0")),
            (
                Bignumeric,
                num("578960446186580977117854925043439539266.34992332820282019728792003956564819967"),
                json!("578960446186580977117854925043439539266.34992332820282019728792003956564819967"),
            ),
            (
                Bignumeric,
                json!("-578960446186580977117854925043439539266.34992332820282019728792003956564819968"),
                json!("-578960446186580977117854925043439539266.34992332820282019728792003956564819968"),
            ),
            (Timestamp, json!("2026-11-27 03:28:32.5"), json!("2026-11-27T03:28:32.500000Z")),
            (Timestamp, json!("2026-11-27T04:28:32+01:00"), json!("2026-11-27T03:28:32.000000Z")),
            (Timestamp, json!("2026-11-27 03:28:32.1234567"), json!("2026-11-27T03:28:32.123456Z")),
            (Timestamp, json!("2026-11-27T03:28:32.999999999-0230"), json!("2026-11-27T05:58:32.999999Z")),
            (Timestamp, json!("0001-01-01 00:00:00"), json!("0001-01-01T00:00:00.000000Z")),
            (Timestamp, json!("9999-12-31T23:59:59.9999999Z"), json!("9999-12-31T23:59:59.999999Z")),
            (Date, json!("2026-02-28"), json!("2026-02-28")),
            (Date, json!("0001-01-01"), json!("0001-01-01")),
            (Datetime, json!("2026-11-27 03:28:32.123456789"), json!("2026-11-27 03:28:32.123456")),
            (Datetime, json!("2026-11-27T03:28:32"), json!("2026-11-27 03:28:32.000000")),
            (Time, json!("23:59:59.9999999"), json!("23:59:59.999999")),
            (Time, json!("00:00:00"), json!("00:00:00.000000")),
            (Json, json!({"a": [1]}), json!("{\"a\":[1]}")),
            (Json, json!("{\"a\": [1, 2.50]}"), json!("{\"a\":[1,2.50]}")),
            (Json, json!("\"text\""), json!("\"text\"")),
            (Bytes, json!("0x68656C6C6F"), json!("aGVsbG8=")),
            (Bytes, json!("68656c6c6f"), json!("aGVsbG8=")),
            (Bytes, json!("0x"), json!("")),
            (Int64, Value::Null, Value::Null),
        ];
        for (ty, input, want) in ok {
            assert_eq!(conv(ty, &input), Ok(want), "{ty:?} {input}");
        }
        assert_eq!(convert_as(Bytes, BytesEncoding::Base64, &json!("aGVsbG8=")), Ok(json!("aGVsbG8=")));
        let bad = [
            (Int64, json!(1.5)),
            (Int64, json!("12x")),
            (Int64, json!("99999999999999999999")),
            (Int64, num("9223372036854775808")),
            (Float64, json!("abc")),
            (Float64, num("1e400")),
            (Bool, json!("yes please")),
            (Numeric, json!("1e")),
            (Numeric, json!("1.0000000001")),
            (Numeric, num("123456789012345678901234567890")),
            (Numeric, json!("NaN")),
            (Numeric, json!(format!("{NON_FINITE_MARK}NaN"))),
            (Bignumeric, json!("578960446186580977117854925043439539266.34992332820282019728792003956564819968")),
            (Bignumeric, json!("0.123456789012345678901234567890123456789")),
            (Timestamp, json!(1700000000)),
            (Timestamp, json!("0001-01-01T00:00:00+01:00")),
            (Timestamp, json!("9999-12-31T23:00:00-01:00")),
            (Timestamp, json!("2026-11-27 03:28:32.1234567891")),
            (Date, json!("2026-02-30")),
            (Date, json!("0000-01-01")),
            (Date, json!("0000-00-00")),
            (Datetime, json!("2026-11-27T03:28:32Z")),
            (Time, json!("24:00:00")),
            (String, json!({"a": 1})),
            (Json, json!("not json")),
            (Json, json!("{\"a\":1,\"a\":2}")),
            (Bytes, json!("not hex!")),
            (Bytes, json!("0x123")),
            (Bytes, json!("aGVsbG8=")),
        ];
        for (ty, input) in bad {
            assert!(conv(ty, &input).is_err(), "{ty:?} {input} accepted: {:?}", conv(ty, &input));
        }
        // Hex whose length is not a multiple of 4 is not base64. (Hex digits in
        // groups of 4 are valid base64 too: no decoder can tell those apart,
        // which is why the encoding is configured, not guessed.)
        assert!(convert_as(Bytes, BytesEncoding::Base64, &json!("0x68656C6C6F21")).is_err(), "hex is not reinterpreted as base64");
    }

    #[test]
    fn rejections_name_the_limit() {
        assert!(conv(ColumnType::Numeric, &num("1e16")).is_ok(), "1e16 fits NUMERIC");
        let e = conv(ColumnType::Numeric, &num("1.0000000001")).unwrap_err();
        assert!(e.contains("NUMERIC") && e.contains("scale 9"), "{e}");
        let e = conv(ColumnType::Int64, &num("9223372036854775808")).unwrap_err();
        assert!(e.contains("INT64"), "{e}");
    }

    #[test]
    fn timestamp_round_trip() {
        let m = parse_timestamp_micros("2026-11-27T03:28:32.123456Z").unwrap();
        assert_eq!(format_timestamp_micros(m), "2026-11-27T03:28:32.123456Z");
        assert_eq!(parse_timestamp_micros("1969-12-31T23:59:59.999999Z"), Ok(-1));
    }
}
