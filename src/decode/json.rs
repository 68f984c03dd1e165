//! Strict JSON: exact numbers (their decimal text, never an f64), duplicate
//! object keys refused, and the bare non-finite tokens some producers write
//! turned into marked strings. Used for whole messages (`dms`) and for JSON
//! documents inside column values (`value`).

use serde_json::{Map, Value};

/// Bare `NaN`, `Infinity` and `-Infinity` tokens are not JSON; the decoder
/// turns them into strings that start with this mark (a NUL byte cannot
/// appear unescaped in a JSON string, so no real value starts with it).
pub const NON_FINITE_MARK: &str = "\u{0}landfall-non-finite:";

/// Parses JSON text exactly (numbers keep their decimal text) and rejects
/// duplicate object keys.
pub fn parse_strict(text: &str) -> Result<Value, String> {
    serde_json::from_str::<Strict>(text).map(|s| s.0).map_err(|e| e.to_string())
}

/// `text` with every bare `NaN`, `Infinity`, `-Infinity` token outside
/// strings replaced by a marked string; `None` if there is none.
pub fn rewrite_non_finite(text: &str) -> Option<String> {
    if !(text.contains("NaN") || text.contains("Infinity")) {
        return None;
    }
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 64);
    let (mut i, mut last, mut in_string) = (0, 0, false);
    'scan: while i < b.len() {
        let c = b[i];
        if in_string {
            match c {
                b'\\' => i += 2,
                b'"' => {
                    in_string = false;
                    i += 1
                }
                _ => i += 1,
            }
            continue;
        }
        if c == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        for token in ["-Infinity", "Infinity", "NaN"] {
            if b[i..].starts_with(token.as_bytes()) {
                out.push_str(&text[last..i]);
                out.push('"');
                out.push_str(&NON_FINITE_MARK.replace('\u{0}', "\\u0000"));
                out.push_str(token);
                out.push('"');
                i += token.len();
                last = i;
                continue 'scan;
            }
        }
        i += 1;
    }
    (last > 0).then(|| {
        out.push_str(&text[last..]);
        out
    })
}

/// The key serde_json (with `arbitrary_precision`) uses to hand a number's
/// text to a visitor.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// A JSON value that rejects duplicate object keys: `{"id":1,"id":2}` is
/// ambiguous (parsers disagree on which wins), so it is dead-lettered rather
/// than guessed.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let mut first = true;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let key = match key {
                Key::Number if first => {
                    let text: String = map.next_value()?;
                    let n: serde_json::Number = text.parse().map_err(serde::de::Error::custom)?;
                    return Ok(Value::Number(n));
                }
                Key::Number => NUMBER_TOKEN.to_owned(),
                Key::Name(k) => k,
            };
            first = false;
            let Strict(v) = map.next_value()?;
            match out.entry(key) {
                serde_json::map::Entry::Vacant(e) => {
                    e.insert(v);
                }
                serde_json::map::Entry::Occupied(e) => {
                    let shown: String = e.key().chars().take(40).flat_map(char::escape_debug).collect();
                    return Err(serde::de::Error::custom(format!("duplicate key \"{shown}\"")));
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// An object key, or serde_json's marker that a number's text follows.
enum Key {
    Number,
    Name(String),
}

struct KeySeed;

impl<'de> serde::de::DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, v: &str) -> Result<Key, E> {
        Ok(if v == NUMBER_TOKEN { Key::Number } else { Key::Name(v.to_owned()) })
    }
    fn visit_string<E>(self, v: String) -> Result<Key, E> {
        Ok(if v == NUMBER_TOKEN { Key::Number } else { Key::Name(v) })
    }
}
