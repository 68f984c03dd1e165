//! Source log positions (`metadata.stream-position`) as byte-comparable text.
//!
//! Guarantee: for one [`OrderBy`] format, `a < b` as source positions exactly
//! when `normalize(a) < normalize(b)` as bytes. Every component is parsed as
//! a number in its own radix and written at a fixed width, so hexadecimal
//! positions order correctly (`000001A0` after `00000199`, which a decimal
//! "natural" sort gets wrong). A position that does not have the configured
//! shape is an error, never guessed at: the change is dead-lettered.

use super::OrderBy;

/// The byte-comparable form of `pos` in `format`.
pub fn normalize(format: OrderBy, pos: &str) -> Result<String, String> {
    let pos = pos.trim();
    let bad = |shape: &str| format!("`{}` is not a {} position ({shape})", shown(pos), format.name());
    match format {
        OrderBy::Timestamp => Err("ordering by timestamp compares no positions".into()),
        OrderBy::MysqlBinlog => {
            // `<basename>.<sequence>:<offset>[:<anything>]`: the binlog file's
            // sequence number, then the byte offset in the file.
            let shape = "<binlog file>.<sequence>:<offset>";
            let (file, rest) = pos.split_once(':').ok_or_else(|| bad(shape))?;
            let offset = rest.split(':').next().unwrap_or_default();
            let (_, sequence) = file.rsplit_once('.').ok_or_else(|| bad(shape))?;
            let sequence = decimal(sequence, 20).ok_or_else(|| bad(shape))?;
            let offset = decimal(offset, 20).ok_or_else(|| bad(shape))?;
            Ok(format!("{sequence:020}:{offset:020}"))
        }
        OrderBy::PostgresqlLsn => {
            let shape = "XXXXXXXX/XXXXXXXX, hexadecimal";
            let (hi, lo) = pos.split_once('/').ok_or_else(|| bad(shape))?;
            let hi = hex(hi, 8).ok_or_else(|| bad(shape))?;
            let lo = hex(lo, 8).ok_or_else(|| bad(shape))?;
            Ok(format!("{hi:08x}{lo:08x}"))
        }
        OrderBy::SqlserverLsn => {
            // `0000002A:00000E10:0003` (VLF sequence : log block : slot), or
            // the same 20 hex digits written together (optionally `0x`).
            let shape = "XXXXXXXX:XXXXXXXX:XXXX, hexadecimal";
            let parts: Vec<&str> = pos.split(':').collect();
            let (a, b, c) = match parts.as_slice() {
                [a, b, c] => (hex(a, 8), hex(b, 8), hex(c, 4)),
                [whole] => {
                    let w = whole.strip_prefix("0x").or_else(|| whole.strip_prefix("0X")).unwrap_or(whole);
                    if w.len() != 20 || !w.is_ascii() {
                        return Err(bad(shape));
                    }
                    (hex(&w[..8], 8), hex(&w[8..16], 8), hex(&w[16..], 4))
                }
                _ => return Err(bad(shape)),
            };
            match (a, b, c) {
                (Some(a), Some(b), Some(c)) => Ok(format!("{a:08x}{b:08x}{c:04x}")),
                _ => Err(bad(shape)),
            }
        }
        OrderBy::OracleScn => {
            let scn = decimal(pos, 38).ok_or_else(|| bad("a decimal SCN"))?;
            Ok(format!("{scn:039}"))
        }
    }
}

fn decimal(s: &str, max_digits: usize) -> Option<u128> {
    (!s.is_empty() && s.len() <= max_digits && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

fn hex(s: &str, max_digits: usize) -> Option<u64> {
    (!s.is_empty() && s.len() <= max_digits && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| u64::from_str_radix(s, 16).ok()).flatten()
}

fn shown(s: &str) -> String {
    s.chars().take(60).flat_map(char::escape_debug).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lt(f: OrderBy, a: &str, b: &str) -> bool {
        normalize(f, a).unwrap() < normalize(f, b).unwrap()
    }

    #[test]
    fn each_format_orders_by_value() {
        assert!(lt(OrderBy::PostgresqlLsn, "0/00000199", "0/000001A0"));
        assert!(lt(OrderBy::PostgresqlLsn, "0/FFFFFFFF", "1/0"));
        assert!(lt(OrderBy::PostgresqlLsn, "16/B374D848", "16/B374D849"));
        assert!(lt(OrderBy::SqlserverLsn, "00000020:00000199:0001", "00000020:000001a0:0001"));
        assert!(lt(OrderBy::SqlserverLsn, "0x00000020000001990001", "00000020:00000199:0002"));
        assert!(lt(OrderBy::MysqlBinlog, "mysql-bin-changelog.000009:900", "mysql-bin-changelog.000010:15"));
        assert!(lt(OrderBy::MysqlBinlog, "mysql-bin-changelog.000010:15:0", "mysql-bin-changelog.000010:150"));
        assert!(lt(OrderBy::OracleScn, "999", "1000"));
        assert_eq!(normalize(OrderBy::PostgresqlLsn, "0/1a0"), normalize(OrderBy::PostgresqlLsn, "00000000/000001A0"));
    }

    #[test]
    fn wrong_shapes_are_rejected() {
        for (f, p) in [
            (OrderBy::PostgresqlLsn, "12345"),
            (OrderBy::PostgresqlLsn, "0/G"),
            (OrderBy::PostgresqlLsn, "0/123456789"),
            (OrderBy::SqlserverLsn, "1:2"),
            (OrderBy::SqlserverLsn, "00000020:00000199:00001"),
            (OrderBy::MysqlBinlog, "0/1A0"),
            (OrderBy::MysqlBinlog, "binlog:12"),
            (OrderBy::OracleScn, "1A0"),
            (OrderBy::OracleScn, ""),
        ] {
            assert!(normalize(f, p).is_err(), "{f:?} accepted {p:?}");
        }
    }

    proptest! {
        #[test]
        fn normalized_order_is_numeric_order(a: u64, b: u64, c: u32, d: u32, e: u16, g: u16) {
            let pg = |x: u64| format!("{:X}/{:08X}", x >> 32, x & 0xFFFF_FFFF);
            prop_assert_eq!(lt(OrderBy::PostgresqlLsn, &pg(a), &pg(b)), a < b);
            let ss = |x: u32, y: u32, z: u16| format!("{x:08X}:{y:08X}:{z:04X}");
            prop_assert_eq!(lt(OrderBy::SqlserverLsn, &ss(c, d, e), &ss(d, c, g)), (c, d, e) < (d, c, g));
            prop_assert_eq!(lt(OrderBy::OracleScn, &a.to_string(), &b.to_string()), a < b);
            let my = |x: u32, y: u64| format!("mysql-bin-changelog.{x:06}:{y}");
            prop_assert_eq!(lt(OrderBy::MysqlBinlog, &my(c, a), &my(d, b)), (c, a) < (d, b));
        }
    }
}
