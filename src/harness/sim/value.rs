//! Source-native values and the oracle's own canonical forms.
//!
//! A [`SourceValue`] is what the source database holds (exact decimal text,
//! raw bytes, a JSON document, an instant with nanoseconds as the source
//! writes it). Three things are derived from it here, by code that shares
//! nothing with landfall's decoder:
//!
//! * [`SourceValue::to_dms`]: how AWS DMS writes it into the message;
//! * [`SourceValue::expected`]: the canonical text of what BigQuery must hold;
//! * [`canon_bigquery`]: the same canonical text from BigQuery's query answer.
//!
//! The verification compares the last two as strings. Canonical forms:
//! integers in decimal; NUMERIC/BIGNUMERIC as exact decimals without
//! redundant zeros; FLOAT64 as Rust's shortest round-trip text (`-0.0` kept,
//! every NaN is `NaN`); BYTES as lowercase hex of the raw bytes; JSON
//! re-rendered with sorted keys and exact-decimal numbers; TIMESTAMP as
//! microseconds since the epoch (truncated, as landfall must); DATE as
//! `YYYY-MM-DD`; DATETIME and TIME with 9 fraction digits (the 7th-9th always
//! 0: truncated to microseconds).

use std::str::FromStr;

use base64::Engine;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{Number, Value};

use crate::decode::ColumnType;

/// A value as the source database holds it. NULL is the column's absence
/// from the row.
#[derive(Debug, Clone)]
pub enum SourceValue {
    Int(i64),
    /// Exact decimal text as the source writes it (`-12.50`, `0.000000001`).
    Decimal(String),
    Float(f64),
    Text(String),
    Bool(bool),
    Bytes(Vec<u8>),
    /// The document (numbers keep their text: `arbitrary_precision`).
    Json(Value),
    Timestamp(Timestamp),
    Date(i64),
    Datetime(Datetime),
    Time(TimeOfDay),
}

impl PartialEq for SourceValue {
    fn eq(&self, other: &SourceValue) -> bool {
        use SourceValue::*;
        match (self, other) {
            (Float(a), Float(b)) => a.to_bits() == b.to_bits(),
            (Int(a), Int(b)) => a == b,
            (Decimal(a), Decimal(b)) | (Text(a), Text(b)) => a == b,
            (Bool(a), Bool(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            (Json(a), Json(b)) => a == b,
            (Timestamp(a), Timestamp(b)) => a == b,
            (Date(a), Date(b)) => a == b,
            (Datetime(a), Datetime(b)) => a == b,
            (Time(a), Time(b)) => a == b,
            _ => false,
        }
    }
}

/// How the source writes a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsStyle {
    /// `YYYY-MM-DD HH:MM:SS[.f]`, UTC, no zone (DMS's usual form).
    Plain,
    /// `YYYY-MM-DDTHH:MM:SS[.f]Z`.
    IsoZ,
    /// `YYYY-MM-DDTHH:MM:SS[.f]+05:30`: local time at `offset_minutes`.
    IsoOffset,
}

/// An instant with nanoseconds, written with `digits` fraction digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    pub unix_nanos: i128,
    pub offset_minutes: i32,
    pub digits: u8,
    pub style: TsStyle,
}

/// A civil date and time without zone (days since 1970-01-01, nanoseconds of the day).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datetime {
    pub days: i64,
    pub nanos: u64,
    pub digits: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeOfDay {
    pub nanos: u64,
    pub digits: u8,
}

const NANOS_PER_DAY: u64 = 86_400_000_000_000;

// ---- calendar (Howard Hinnant's civil-days algorithms) ----

pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn ymd(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `HH:MM:SS` plus `digits` fraction digits (none when 0).
fn clock(nanos: u64, digits: u8) -> String {
    let secs = nanos / 1_000_000_000;
    let frac = nanos % 1_000_000_000;
    let mut s = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if digits > 0 {
        let f = format!("{frac:09}");
        s.push('.');
        s.push_str(&f[..digits as usize]);
    }
    s
}

/// `nanos` truncated to microseconds, as 9 fraction digits.
fn clock_canon(nanos: u64) -> String {
    clock(nanos / 1000 * 1000, 9)
}

impl Timestamp {
    /// The text the source (and DMS) writes.
    pub fn render(&self) -> String {
        let local = self.unix_nanos + i128::from(self.offset_minutes) * 60_000_000_000;
        let days = local.div_euclid(NANOS_PER_DAY as i128) as i64;
        let nanos = local.rem_euclid(NANOS_PER_DAY as i128) as u64;
        let (date, time) = (ymd(days), clock(nanos, self.digits));
        match self.style {
            TsStyle::Plain => format!("{date} {time}"),
            TsStyle::IsoZ => format!("{date}T{time}Z"),
            TsStyle::IsoOffset => {
                let sign = if self.offset_minutes < 0 { '-' } else { '+' };
                let o = self.offset_minutes.abs();
                format!("{date}T{time}{sign}{:02}:{:02}", o / 60, o % 60)
            }
        }
    }

    /// Microseconds since the epoch, digits past the 6th dropped.
    pub fn micros(&self) -> i64 {
        self.unix_nanos.div_euclid(1000) as i64
    }
}

impl SourceValue {
    /// The value in a DMS message (varying the spellings DMS uses).
    pub fn to_dms(&self, rng: &mut StdRng) -> Value {
        match self {
            SourceValue::Int(i) if rng.random_bool(0.1) => Value::String(i.to_string()),
            SourceValue::Int(i) => Value::from(*i),
            SourceValue::Decimal(d) if rng.random_bool(0.15) => Value::String(d.clone()),
            // Exact digits: with `arbitrary_precision` the number keeps its text.
            SourceValue::Decimal(d) => Value::Number(Number::from_str(d).expect("decimal text is a JSON number")),
            SourceValue::Float(f) if f.is_nan() => Value::String("NaN".into()),
            SourceValue::Float(f) if f.is_infinite() => Value::String(if *f > 0.0 { "Infinity" } else { "-Infinity" }.into()),
            SourceValue::Float(f) => Value::Number(Number::from_str(&format!("{f:?}")).expect("finite float")),
            SourceValue::Text(s) => Value::String(s.clone()),
            SourceValue::Bool(b) if rng.random_bool(0.2) => Value::from(u8::from(*b)),
            SourceValue::Bool(b) => Value::Bool(*b),
            SourceValue::Bytes(b) => {
                let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
                // `NoHexPrefix=false` (default) writes 0x; true drops it.
                Value::String(if rng.random_bool(0.7) { format!("0x{hex}") } else { hex })
            }
            SourceValue::Json(doc) => Value::String(render_json(doc, rng)),
            SourceValue::Timestamp(t) => Value::String(t.render()),
            SourceValue::Date(d) => Value::String(ymd(*d)),
            SourceValue::Datetime(dt) => {
                let sep = if rng.random_bool(0.8) { ' ' } else { 'T' };
                Value::String(format!("{}{sep}{}", ymd(dt.days), clock(dt.nanos, dt.digits)))
            }
            SourceValue::Time(t) => Value::String(clock(t.nanos, t.digits)),
        }
    }

    /// The canonical text of what BigQuery must hold.
    pub fn expected(&self) -> String {
        match self {
            SourceValue::Int(i) => i.to_string(),
            SourceValue::Decimal(d) => canon_decimal(d).unwrap_or_else(|| format!("<bad decimal {d}>")),
            SourceValue::Float(f) => canon_float(*f),
            SourceValue::Text(s) => s.clone(),
            SourceValue::Bool(b) => b.to_string(),
            SourceValue::Bytes(b) => hex_lower(b),
            SourceValue::Json(doc) => canon_json(doc),
            SourceValue::Timestamp(t) => t.micros().to_string(),
            SourceValue::Date(d) => ymd(*d),
            SourceValue::Datetime(dt) => format!("{}T{}", ymd(dt.days), clock_canon(dt.nanos)),
            SourceValue::Time(t) => clock_canon(t.nanos),
        }
    }
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn canon_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{f:?}")
    }
}

/// An exact decimal (`-012.3400`, `1E+2`, `5e-3`) in canonical form: no
/// leading integer zeros, no trailing fraction zeros, no exponent, `0` unsigned.
pub fn canon_decimal(s: &str) -> Option<String> {
    let s = s.trim();
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], body[i + 1..].parse::<i64>().ok()?),
        None => (body, 0),
    };
    if !(-100_000..=100_000).contains(&exp) {
        return None;
    }
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    // value = digits * 10^scale
    let digits: String = format!("{int}{frac}");
    let scale = exp - frac.len() as i64;
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some("0".into());
    }
    let trimmed = digits.trim_end_matches('0');
    let scale = scale + (digits.len() - trimmed.len()) as i64;
    let digits = trimmed;
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if scale >= 0 {
        out.push_str(digits);
        out.extend(std::iter::repeat_n('0', scale as usize));
    } else {
        let point = digits.len() as i64 + scale;
        if point > 0 {
            out.push_str(&digits[..point as usize]);
            out.push('.');
            out.push_str(&digits[point as usize..]);
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-point) as usize));
            out.push_str(digits);
        }
    }
    Some(out)
}

/// A JSON document in canonical form: object keys sorted, numbers as exact
/// decimals (so `1E+2`, `100` and `100.0` agree), no whitespace.
pub fn canon_json(v: &Value) -> String {
    match v {
        Value::Null | Value::Bool(_) | Value::String(_) => serde_json::to_string(v).expect("json"),
        Value::Number(n) => canon_decimal(&n.to_string()).unwrap_or_else(|| n.to_string()),
        Value::Array(a) => format!("[{}]", a.iter().map(canon_json).collect::<Vec<_>>().join(",")),
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let parts: Vec<String> =
                keys.iter().map(|k| format!("{}:{}", serde_json::to_string(k).expect("json"), canon_json(&o[k.as_str()]))).collect();
            format!("{{{}}}", parts.join(","))
        }
    }
}

/// Document text as a source (or DMS) might write it: any key order, any whitespace.
pub fn render_json(v: &Value, rng: &mut StdRng) -> String {
    let spaced = rng.random_bool(0.5);
    let mut out = String::new();
    render_into(v, rng, spaced, &mut out);
    out
}

fn render_into(v: &Value, rng: &mut StdRng, spaced: bool, out: &mut String) {
    let (colon, comma) = if spaced { (": ", ", ") } else { (":", ",") };
    match v {
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(comma);
                }
                render_into(x, rng, spaced, out);
            }
            out.push(']');
        }
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            // Odd key orders: reversed or rotated.
            if rng.random_bool(0.5) {
                keys.reverse();
            }
            if !keys.is_empty() {
                let r = rng.random_range(0..keys.len());
                keys.rotate_left(r);
            }
            out.push('{');
            if spaced && rng.random_bool(0.3) {
                out.push_str("\n  ");
            }
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(comma);
                }
                out.push_str(&serde_json::to_string(k).expect("json"));
                out.push_str(colon);
                render_into(&o[k.as_str()], rng, spaced, out);
            }
            out.push('}');
        }
        other => out.push_str(&serde_json::to_string(other).expect("json")),
    }
}

/// The canonical text of a value in BigQuery's query answer (`cell` text;
/// TIMESTAMP columns are selected as `UNIX_MICROS(col)`).
pub fn canon_bigquery(ty: ColumnType, s: &str) -> Result<String, String> {
    let bad = || format!("unexpected {} text from BigQuery: {s:?}", ty.sql_name());
    match ty {
        ColumnType::Int64 | ColumnType::Timestamp => s.trim().parse::<i64>().map(|i| i.to_string()).map_err(|_| bad()),
        ColumnType::Numeric | ColumnType::Bignumeric => canon_decimal(s).ok_or_else(bad),
        ColumnType::Float64 => match s.trim() {
            "NaN" | "nan" => Ok("NaN".into()),
            "Infinity" | "inf" | "+inf" => Ok("Infinity".into()),
            "-Infinity" | "-inf" => Ok("-Infinity".into()),
            t => t.parse::<f64>().map(canon_float).map_err(|_| bad()),
        },
        ColumnType::String => Ok(s.to_owned()),
        ColumnType::Bool => match s.to_ascii_lowercase().as_str() {
            "true" => Ok("true".into()),
            "false" => Ok("false".into()),
            _ => Err(bad()),
        },
        ColumnType::Bytes => base64::engine::general_purpose::STANDARD.decode(s).map(|b| hex_lower(&b)).map_err(|_| bad()),
        ColumnType::Json => serde_json::from_str::<Value>(s).map(|v| canon_json(&v)).map_err(|_| bad()),
        ColumnType::Date => parse_date(s).map(ymd).ok_or_else(bad),
        ColumnType::Datetime => {
            let (d, t) = s.split_once(['T', ' ']).ok_or_else(bad)?;
            let days = parse_date(d).ok_or_else(bad)?;
            let nanos = parse_clock(t).ok_or_else(bad)?;
            Ok(format!("{}T{}", ymd(days), clock(nanos, 9)))
        }
        ColumnType::Time => parse_clock(s).map(|n| clock(n, 9)).ok_or_else(bad),
    }
}

fn parse_date(s: &str) -> Option<i64> {
    let mut it = s.trim().splitn(3, '-');
    let (y, m, d) = (it.next()?, it.next()?, it.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, u32, u32) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let days = days_from_civil(y, m, d);
    (civil_from_days(days) == (y, m, d)).then_some(days)
}

/// `HH:MM:SS[.f{1,9}]` to nanoseconds of the day.
fn parse_clock(s: &str) -> Option<u64> {
    let (hms, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
    let mut it = hms.splitn(3, ':');
    let (h, m, sec): (u64, u64, u64) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?);
    if h > 23 || m > 59 || sec > 59 || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let f: u64 = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().ok()? };
    Some(((h * 60 + m) * 60 + sec) * 1_000_000_000 + f)
}

// ---- generators of source values ----

fn digits(rng: &mut StdRng, n: usize) -> String {
    (0..n).map(|_| char::from(b'0' + rng.random_range(0..10u8))).collect()
}

/// A decimal with up to `int_max` integer and `frac_max` fraction digits,
/// written at a source scale (trailing zeros kept).
pub fn gen_decimal(rng: &mut StdRng, int_max: usize, frac_max: usize) -> String {
    let max = format!("{}.{}", "9".repeat(int_max), "9".repeat(frac_max));
    let tiny = format!("-0.{}1", "0".repeat(frac_max - 1));
    match rng.random_range(0..20) {
        0 => return max,
        1 => return format!("-{max}"),
        2 => return tiny,
        3 => return "0".into(),
        _ => {}
    }
    let int_len = rng.random_range(0..=int_max);
    let mut int = digits(rng, int_len).trim_start_matches('0').to_owned();
    if int.is_empty() {
        int.push('0');
    }
    let scale = rng.random_range(0..=frac_max);
    let frac = digits(rng, scale);
    let sign = if rng.random_bool(0.3) { "-" } else { "" };
    if scale == 0 {
        if int == "0" {
            int
        } else {
            format!("{sign}{int}")
        }
    } else {
        format!("{sign}{int}.{frac}")
    }
}

pub fn gen_float(rng: &mut StdRng) -> f64 {
    match rng.random_range(0..30) {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => f64::NEG_INFINITY,
        3 => -0.0,
        4 => f64::MAX,
        5 => f64::MIN_POSITIVE,
        6 => 5e-324,
        7..=15 => rng.random_range(-1_000_000i64..1_000_000) as f64 / 64.0,
        _ => loop {
            // Any finite double: full precision must survive.
            let f = f64::from_bits(rng.random::<u64>());
            if f.is_finite() {
                break f;
            }
        },
    }
}

const TEXT_PIECES: &[&str] = &[
    "plain",
    "O'Brien",
    "say \"hi\"",
    "back\\slash",
    "tab\there",
    "new\nline",
    "emoji 😀🎉",
    "日本語",
    "é e\u{301}",
    "<tag>&amp;",
    "{\"not\":\"json\"}",
    "  spaces  ",
    "Ω≈ç√",
    "zero-width\u{200b}",
    "ä",
    "%s %d",
    "--",
    "'; DROP TABLE x; --",
    "\u{7f}",
    "\r\n",
];

/// A non-empty string: DMS leaves empty values out (`IncludeNullAndEmpty`
/// false), so the source never holds `''` here (it would land as NULL).
pub fn gen_text(rng: &mut StdRng) -> String {
    let n = rng.random_range(1..=3);
    (0..n).map(|_| TEXT_PIECES[rng.random_range(0..TEXT_PIECES.len())]).collect::<Vec<_>>().join(" ")
}

/// 1-16 raw bytes (never empty, as for strings).
pub fn gen_bytes(rng: &mut StdRng) -> Vec<u8> {
    let n = rng.random_range(1..=16);
    (0..n).map(|_| rng.random()).collect()
}

/// A small JSON document. Numbers are integers below 2^53 or short binary
/// fractions, sometimes written unusually (`2.50`, `1E+2`): BigQuery (and the
/// emulator) store JSON numbers as int64/double, so a longer decimal would
/// not survive in BigQuery itself.
pub fn gen_json(rng: &mut StdRng, depth: u32) -> Value {
    let num = |rng: &mut StdRng| -> Value {
        let text = match rng.random_range(0..6) {
            0 => "2.50".to_owned(),
            1 => "1E+2".to_owned(),
            2 => format!("{}", rng.random_range(-1_000_000i64..1_000_000)),
            3 => format!("{}.125", rng.random_range(-1000..1000)),
            4 => "-0.5".to_owned(),
            _ => format!("{}", rng.random_range(0..100)),
        };
        Value::Number(Number::from_str(&text).expect("number"))
    };
    let leaf = |rng: &mut StdRng| -> Value {
        match rng.random_range(0..5) {
            0 => num(rng),
            1 => Value::Bool(rng.random()),
            2 => Value::Null,
            _ => Value::String(TEXT_PIECES[rng.random_range(0..TEXT_PIECES.len())].to_owned()),
        }
    };
    if depth == 0 {
        return leaf(rng);
    }
    match rng.random_range(0..6) {
        0 => Value::Array((0..rng.random_range(0..4)).map(|_| gen_json(rng, depth - 1)).collect()),
        1 if depth == 2 => num(rng),
        _ => {
            let mut m = serde_json::Map::new();
            for i in 0..rng.random_range(0..4) {
                let k = ["a", "b", "Z", "key with space", "ünï", "n"][(i + rng.random_range(0..6)) % 6];
                m.insert(k.to_owned(), gen_json(rng, depth - 1));
            }
            Value::Object(m)
        }
    }
}

/// Days of 0001-01-01 and 9999-12-31.
pub fn min_day() -> i64 {
    days_from_civil(1, 1, 1)
}
pub fn max_day() -> i64 {
    days_from_civil(9999, 12, 31)
}

fn gen_digits(rng: &mut StdRng) -> u8 {
    [0, 3, 6, 6, 7, 9][rng.random_range(0..6)]
}

/// Nanoseconds of the day at a precision of `digits`.
fn gen_clock(rng: &mut StdRng, digits: u8) -> u64 {
    let unit = 10u64.pow(9 - u32::from(digits));
    rng.random_range(0..NANOS_PER_DAY) / unit * unit
}

pub fn gen_timestamp(rng: &mut StdRng) -> Timestamp {
    let digits = gen_digits(rng);
    let unit = 10i128.pow(9 - u32::from(digits));
    let day = NANOS_PER_DAY as i128;
    let edge = rng.random_range(0..10) == 0;
    let unix_nanos = if edge {
        match rng.random_range(0..4) {
            0 => i128::from(min_day()) * day,
            1 => (i128::from(max_day()) + 1) * day - 1,
            2 => -1,
            _ => -unit,
        }
    } else if rng.random_bool(0.2) {
        i128::from(rng.random_range(min_day() + 1..max_day())) * day + i128::from(rng.random_range(0..NANOS_PER_DAY))
    } else {
        // 2020 .. 2030
        rng.random_range(1_577_836_800_000_000_000i128..1_893_456_000_000_000_000)
    };
    let unix_nanos = unix_nanos.div_euclid(unit) * unit;
    let style = if edge {
        [TsStyle::Plain, TsStyle::IsoZ][rng.random_range(0..2)]
    } else {
        [TsStyle::Plain, TsStyle::Plain, TsStyle::IsoZ, TsStyle::IsoOffset][rng.random_range(0..4)]
    };
    let offset_minutes = if style == TsStyle::IsoOffset { [330, -480, 60, -210, 345, 0, -60][rng.random_range(0..7)] } else { 0 };
    Timestamp { unix_nanos, offset_minutes, digits, style }
}

pub fn gen_date(rng: &mut StdRng) -> i64 {
    match rng.random_range(0..10) {
        0 => min_day(),
        1 => max_day(),
        2..=4 => rng.random_range(min_day()..=max_day()),
        _ => rng.random_range(18_000..22_000),
    }
}

pub fn gen_datetime(rng: &mut StdRng) -> Datetime {
    let digits = gen_digits(rng);
    let nanos = gen_clock(rng, digits);
    Datetime { days: gen_date(rng), nanos, digits }
}

pub fn gen_time(rng: &mut StdRng) -> TimeOfDay {
    let digits = gen_digits(rng);
    let nanos = if rng.random_range(0..10) == 0 { NANOS_PER_DAY - 1 } else { gen_clock(rng, digits) };
    let unit = 10u64.pow(9 - u32::from(digits));
    TimeOfDay { nanos: nanos / unit * unit, digits }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use serde_json::json;

    #[test]
    fn decimals_canonicalise_exactly() {
        assert_eq!(canon_decimal("83764483.396630768").unwrap(), "83764483.396630768");
        assert_eq!(canon_decimal("0012.5000").unwrap(), "12.5");
        assert_eq!(canon_decimal("-0.000").unwrap(), "0");
        assert_eq!(canon_decimal("-0").unwrap(), "0");
        assert_eq!(canon_decimal("1E+2").unwrap(), "100");
        assert_eq!(canon_decimal("1.5e-3").unwrap(), "0.0015");
        assert_eq!(canon_decimal("99999999999999999999999999999.999999999").unwrap(), "99999999999999999999999999999.999999999");
        assert_eq!(canon_decimal("-.5").unwrap(), "-0.5");
        assert!(canon_decimal("1.2.3").is_none() && canon_decimal("abc").is_none() && canon_decimal("").is_none());
    }

    #[test]
    fn timestamps_truncate_past_the_sixth_digit_and_convert_to_utc() {
        // 2026-11-27 03:00:00.123456789 UTC
        let base = 1_795_748_400_123_456_789i128;
        let t = Timestamp { unix_nanos: base, offset_minutes: 0, digits: 9, style: TsStyle::Plain };
        assert_eq!(t.render(), "2026-11-27 03:00:00.123456789");
        assert_eq!(t.expected_micros_text(), "1795748400123456");
        let t = Timestamp { unix_nanos: base - 789, offset_minutes: 330, digits: 7, style: TsStyle::IsoOffset };
        assert_eq!(t.render(), "2026-11-27T08:30:00.1234560+05:30");
        let t = Timestamp { unix_nanos: -1, offset_minutes: 0, digits: 9, style: TsStyle::IsoZ };
        assert_eq!(t.render(), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(t.micros(), -1, "floor, not toward zero");
        let first =
            Timestamp { unix_nanos: i128::from(min_day()) * NANOS_PER_DAY as i128, offset_minutes: 0, digits: 0, style: TsStyle::Plain };
        assert_eq!(first.render(), "0001-01-01 00:00:00");
        assert_eq!(first.micros(), -62_135_596_800_000_000);
        assert_eq!(canon_bigquery(ColumnType::Timestamp, "-62135596800000000").unwrap(), first.expected_micros_text());
    }

    impl Timestamp {
        fn expected_micros_text(&self) -> String {
            SourceValue::Timestamp(*self).expected()
        }
    }

    #[test]
    fn bytes_compare_as_raw_bytes_via_base64() {
        let v = SourceValue::Bytes(vec![0, 1, 2, 0xff]);
        assert_eq!(canon_bigquery(ColumnType::Bytes, "AAEC/w==").unwrap(), v.expected());
        let mut rng = StdRng::seed_from_u64(1);
        let dms = (0..20).map(|_| v.to_dms(&mut rng).as_str().unwrap().to_owned()).collect::<std::collections::BTreeSet<_>>();
        assert!(dms.contains("0x000102FF") && dms.contains("000102FF"), "{dms:?}");
    }

    #[test]
    fn civil_dates_and_clocks() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(ymd(min_day()), "0001-01-01");
        assert_eq!(ymd(max_day()), "9999-12-31");
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        let dt = SourceValue::Datetime(Datetime { days: days_from_civil(2026, 11, 27), nanos: 10_800_123_456_789, digits: 9 });
        assert_eq!(dt.expected(), "2026-11-27T03:00:00.123456000");
        assert_eq!(canon_bigquery(ColumnType::Datetime, "2026-11-27T03:00:00.123456").unwrap(), dt.expected());
        assert_eq!(canon_bigquery(ColumnType::Time, "03:00:00.100000").unwrap(), "03:00:00.100000000");
        assert_eq!(
            canon_bigquery(ColumnType::Time, "00:00:00").unwrap(),
            SourceValue::Time(TimeOfDay { nanos: 999, digits: 9 }).expected()
        );
        assert_eq!(canon_bigquery(ColumnType::Date, "0001-01-01").unwrap(), SourceValue::Date(min_day()).expected());
    }

    #[test]
    fn floats_and_json_compare_semantically() {
        assert_eq!(canon_bigquery(ColumnType::Float64, "NaN").unwrap(), SourceValue::Float(f64::NAN).expected());
        assert_eq!(canon_bigquery(ColumnType::Float64, "-Infinity").unwrap(), SourceValue::Float(f64::NEG_INFINITY).expected());
        assert_eq!(canon_bigquery(ColumnType::Float64, "-0.0").unwrap(), SourceValue::Float(-0.0).expected());
        assert_ne!(canon_bigquery(ColumnType::Float64, "0.0").unwrap(), SourceValue::Float(-0.0).expected());
        assert_eq!(canon_bigquery(ColumnType::Float64, "1.7976931348623157e+308").unwrap(), SourceValue::Float(f64::MAX).expected());
        let doc: Value = serde_json::from_str(r#"{"b": [1, 2.50], "a": {"z": 1E+2, "y": null}}"#).unwrap();
        assert_eq!(
            canon_bigquery(ColumnType::Json, r#"{"a":{"y":null,"z":100.0},"b":[1,2.5]}"#).unwrap(),
            SourceValue::Json(doc.clone()).expected()
        );
        let mut rng = StdRng::seed_from_u64(3);
        let written = SourceValue::Json(doc.clone()).to_dms(&mut rng);
        let reparsed: Value = serde_json::from_str(written.as_str().unwrap()).unwrap();
        assert_eq!(canon_json(&reparsed), canon_json(&doc));
        assert_ne!(canon_json(&json!({"a": 1})), canon_json(&json!({"a": 1, "b": null})));
    }

    #[test]
    fn decimals_are_written_with_every_digit() {
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..50 {
            let v = SourceValue::Decimal("83764483.396630768".into());
            let text = serde_json::to_string(&v.to_dms(&mut rng)).unwrap();
            assert!(text == "83764483.396630768" || text == "\"83764483.396630768\"", "{text}");
        }
    }
}
