//! Conversion of DMS JSON values to the JSON `tabledata.insertAll` accepts for
//! a BigQuery column type. A value that does not fit its column is an error
//! (the message is dead-lettered), never silently coerced into something else.

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::ColumnType;

/// Converts `v` for a column of type `ty`. `Null` stays `Null`.
pub fn convert(ty: ColumnType, v: &Value) -> Result<Value, String> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    match ty {
        ColumnType::String => match v {
            Value::String(_) => Ok(v.clone()),
            Value::Number(n) => Ok(Value::String(n.to_string())),
            Value::Bool(b) => Ok(Value::String(b.to_string())),
            _ => Err("expected a string, got a JSON object or array".into()),
        },
        ColumnType::Int64 => match v {
            Value::Number(n) if n.is_i64() => Ok(v.clone()),
            Value::Number(_) => Err(format!("{v} is not a 64-bit integer")),
            Value::String(s) => s.trim().parse::<i64>().map(Value::from).map_err(|_| format!("{} is not a 64-bit integer", short(s))),
            Value::Bool(b) => Ok(Value::from(*b as i64)),
            _ => Err("expected an integer".into()),
        },
        ColumnType::Float64 => match v {
            Value::Number(n) => n.as_f64().map(Value::from).ok_or_else(|| format!("{v} is not a number")),
            Value::String(s) => match s.trim() {
                "NaN" | "nan" => Ok(Value::String("NaN".into())),
                "Infinity" | "inf" | "+Infinity" => Ok(Value::String("Infinity".into())),
                "-Infinity" | "-inf" => Ok(Value::String("-Infinity".into())),
                t => t.parse::<f64>().map(Value::from).map_err(|_| format!("{} is not a number", short(s))),
            },
            _ => Err("expected a number".into()),
        },
        ColumnType::Numeric => decimal(v, 29, 9),
        ColumnType::Bignumeric => decimal(v, 38, 38),
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
        ColumnType::Timestamp => match v {
            Value::String(s) => {
                let micros = parse_timestamp_micros(s)?;
                Ok(Value::String(format_timestamp_micros(micros)))
            }
            _ => Err("expected a timestamp string".into()),
        },
        ColumnType::Date => match v {
            Value::String(s) => time::Date::parse(s.trim(), format_description!("[year]-[month]-[day]"))
                .map(|_| Value::String(s.trim().to_owned()))
                .map_err(|_| format!("{} is not a DATE (YYYY-MM-DD)", short(s))),
            _ => Err("expected a date string".into()),
        },
        ColumnType::Datetime => match v {
            Value::String(s) => parse_naive(s)
                .map(|dt| Value::String(format!("{} {}", dt.date(), dt.time())))
                .ok_or_else(|| format!("{} is not a DATETIME", short(s))),
            _ => Err("expected a datetime string".into()),
        },
        ColumnType::Time => match v {
            Value::String(s) => time::Time::parse(s.trim(), format_description!("[hour]:[minute]:[second][optional [.[subsecond]]]"))
                .map(|_| Value::String(s.trim().to_owned()))
                .map_err(|_| format!("{} is not a TIME (HH:MM:SS[.ffffff])", short(s))),
            _ => Err("expected a time string".into()),
        },
        // insertAll takes a JSON column as a string holding JSON.
        ColumnType::Json => Ok(Value::String(v.to_string())),
        ColumnType::Bytes => match v {
            Value::String(s) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .map(|_| Value::String(s.trim().to_owned()))
                    .map_err(|_| "BYTES must be base64".to_string())
            }
            _ => Err("expected a base64 string".into()),
        },
    }
}

fn short(s: &str) -> String {
    let mut out: String = s.chars().take(40).flat_map(char::escape_debug).collect();
    if s.chars().count() > 40 {
        out.push('…');
    }
    format!("\"{out}\"")
}

/// A decimal with at most `int_digits` before and `frac_digits` after the point,
/// sent as a string so that no precision is lost.
fn decimal(v: &Value, int_digits: usize, frac_digits: usize) -> Result<Value, String> {
    let s = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => return Err("expected a decimal".into()),
    };
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(&s);
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits_ok = !int.is_empty() && int.bytes().all(|b| b.is_ascii_digit()) && frac.bytes().all(|b| b.is_ascii_digit());
    if !digits_ok {
        return Err(format!("{} is not a decimal number", short(&s)));
    }
    if int.trim_start_matches('0').len() > int_digits || frac.trim_end_matches('0').len() > frac_digits {
        return Err(format!("{} does not fit ({int_digits} integer and {frac_digits} fraction digits)", short(&s)));
    }
    Ok(Value::String(s))
}

fn parse_naive(s: &str) -> Option<PrimitiveDateTime> {
    let s = s.trim();
    let space = format_description!("[year]-[month]-[day] [hour]:[minute]:[second][optional [.[subsecond]]]");
    let tee = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]");
    PrimitiveDateTime::parse(s, space).or_else(|_| PrimitiveDateTime::parse(s, tee)).ok()
}

/// Parses RFC 3339, or `YYYY-MM-DD HH:MM:SS[.ffffff]` taken as UTC, into
/// microseconds since the epoch.
pub fn parse_timestamp_micros(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let dt = OffsetDateTime::parse(t, &Rfc3339)
        .ok()
        .or_else(|| parse_naive(t).map(|p| p.assume_utc()))
        .ok_or_else(|| format!("{} is not an RFC 3339 timestamp", short(s)))?;
    i64::try_from(dt.unix_timestamp_nanos() / 1000).map_err(|_| "timestamp out of range".into())
}

/// RFC 3339 with microseconds, UTC (`2026-11-27T03:28:32.123456Z`).
pub fn format_timestamp_micros(micros: i64) -> String {
    let dt = OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let f = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    dt.format(f).unwrap_or_else(|_| "1970-01-01T00:00:00.000000Z".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conversions() {
        use ColumnType::*;
        let ok = [
            (Int64, json!(5), json!(5)),
            (Int64, json!("-7"), json!(-7)),
            (Float64, json!("1.5"), json!(1.5)),
            (Float64, json!("NaN"), json!("NaN")),
            (String, json!(12), json!("12")),
            (Bool, json!(1), json!(true)),
            (Bool, json!("false"), json!(false)),
            (Numeric, json!("12345.678900000"), json!("12345.678900000")),
            (Numeric, json!(3.25), json!("3.25")),
            (Timestamp, json!("2026-11-27 03:28:32.5"), json!("2026-11-27T03:28:32.500000Z")),
            (Timestamp, json!("2026-11-27T04:28:32+01:00"), json!("2026-11-27T03:28:32.000000Z")),
            (Date, json!("2026-02-28"), json!("2026-02-28")),
            (Json, json!({"a": [1]}), json!("{\"a\":[1]}")),
            (Bytes, json!("aGVsbG8="), json!("aGVsbG8=")),
            (Int64, Value::Null, Value::Null),
        ];
        for (ty, input, want) in ok {
            assert_eq!(convert(ty, &input).unwrap(), want, "{ty:?} {input}");
        }
        let bad = [
            (Int64, json!(1.5)),
            (Int64, json!("12x")),
            (Int64, json!("99999999999999999999")),
            (Float64, json!("abc")),
            (Bool, json!("yes please")),
            (Numeric, json!("1e5")),
            (Numeric, json!("1.0000000001")),
            (Timestamp, json!(1700000000)),
            (Date, json!("2026-02-30")),
            (String, json!({"a": 1})),
            (Bytes, json!("not base64!")),
        ];
        for (ty, input) in bad {
            assert!(convert(ty, &input).is_err(), "{ty:?} {input} accepted");
        }
    }

    #[test]
    fn timestamp_round_trip() {
        let m = parse_timestamp_micros("2026-11-27T03:28:32.123456Z").unwrap();
        assert_eq!(format_timestamp_micros(m), "2026-11-27T03:28:32.123456Z");
    }
}
