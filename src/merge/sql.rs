//! Building the MERGE statement (pure: text in, text out).
//!
//! Guarantee (invariant 4 in docs/design.md): the statement
//!
//! 1. reads only log rows whose `_landfall_ingested` lies in the window;
//! 2. keeps one row per dedup key (`_landfall_key`), so duplicates that got
//!    past insertId dedup count once;
//! 3. keeps the latest change per primary key by `_landfall_order`;
//! 4. applies it only if it is newer than what the final table holds
//!    (`_landfall_order` is kept in the final table), so an older change
//!    never overwrites a newer one, whatever order merges see them in;
//! 5. deletes for `D`, updates or inserts for `U`;
//! 6. for a `keep_when_missing` column, writes the value of the latest change
//!    in the window that provides it (an insert or load, or an update that
//!    carried it; see `_landfall_missing`), provided that change is newer than
//!    the final row and the key's tombstone; otherwise it keeps the final
//!    table's value (or NULL for a new row).
//!
//! 7. leaves out truncate and drop-table markers (`_landfall_op` `T`, `X`)
//!    and every change whose ordering value is not newer than the table's
//!    newest truncate or drop recorded in the state table
//!    (`truncated_order`), so no change from before a truncate is applied,
//!    whenever it is merged.
//!
//! The DDL statements ([`ddl_record_statement`], [`truncate_statement`])
//! record the newest truncate/drop marker of a window in the state table
//! (monotonically: a value only grows) and delete the final rows not newer
//! than it. Both read the truncation point from the state table with a
//! subquery, at the moment they run, so no value read from BigQuery or a
//! message is ever written into SQL; both are idempotent.
//!
//! Every identifier is a [`Quoted`], i.e. validated and backtick-quoted.
//! Timestamps are formatted here from integers, never copied from input.
//! The only other string literals are the builder's own (`'U'`, `'D'`,
//! `'T'`, `'X'`) and the configured final table's validated name, the key of
//! its state row.

use crate::decode::ident::{IdentError, Quoted};
use crate::decode::value::format_timestamp_micros;
use crate::decode::{OP_DROP_TABLE, OP_TRUNCATE};
pub use crate::table::{create_final_table_statement, tombstone_table_name};
use crate::table::{COL_INGESTED, COL_KEY, COL_MISSING, COL_OP, COL_ORDER};

/// The inclusive range of `_landfall_ingested` (microseconds) a merge reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from_micros: Option<i64>,
    pub to_micros: i64,
}

/// What a MERGE folds into what.
#[derive(Debug, Clone)]
pub struct MergeTarget {
    pub log: Quoted,
    pub target: Quoted,
    pub primary_key: Vec<Quoted>,
    /// Every source column, primary key included.
    pub columns: Vec<Quoted>,
    /// The primary keys of deleted rows with the ordering value of their
    /// delete, so that an older change can never bring a deleted row back.
    pub tombstones: Quoted,
    /// `keep_when_missing`, in configured order: column `i` is bit `i` of
    /// the log's `_landfall_missing`. Each is also in `columns`.
    pub keep: Vec<Quoted>,
    /// Where the table's truncation point lives (set by
    /// [`MergeTarget::with_state`]; the service always sets it).
    pub state: Option<StateRow>,
    /// Applies a change whose ordering value equals the final row's too
    /// (the same change: ordering values name one change), to write
    /// columns a first MERGE over the window did not know yet (schema
    /// evolution). Off, only newer changes are applied.
    pub reapply_equal: bool,
}

/// The merge-state table and the key of a final table's row in it.
#[derive(Debug, Clone)]
pub struct StateRow {
    pub table: Quoted,
    /// The final table's name, validated (`ident::validate_table`): used as
    /// the string literal that selects its state row.
    pub final_table: String,
}

impl StateRow {
    /// `(SELECT MAX(<column>) FROM <state> WHERE final_table = '<name>')`.
    fn scalar(&self, column: &str) -> String {
        format!("(SELECT MAX({column}) FROM {} WHERE final_table = '{}')", self.table, self.final_table)
    }
}

impl MergeTarget {
    pub fn new(project: &str, dataset: &str, log: &str, target: &str, pk: &[String], columns: &[String]) -> Result<Self, IdentError> {
        Ok(MergeTarget {
            log: Quoted::table_path(project, dataset, log)?,
            target: Quoted::table_path(project, dataset, target)?,
            primary_key: pk.iter().map(|c| Quoted::column(c)).collect::<Result<_, _>>()?,
            columns: columns.iter().map(|c| Quoted::column(c)).collect::<Result<_, _>>()?,
            tombstones: Quoted::table_path(project, dataset, &tombstone_table_name(target))?,
            keep: Vec::new(),
            state: None,
            reapply_equal: false,
        })
    }

    /// Reads and records the table's truncation point in `state_table`
    /// (the merge-state table), in the row of `final_table` (this target's
    /// table name).
    pub fn with_state(mut self, project: &str, dataset: &str, state_table: &str, final_table: &str) -> Result<Self, IdentError> {
        crate::decode::ident::validate_table(final_table)?;
        let table = Quoted::table_path(project, dataset, state_table)?;
        self.state = Some(StateRow { table, final_table: final_table.to_owned() });
        Ok(self)
    }

    /// Sets the table's `keep_when_missing` columns (in configured order; at
    /// most [`MAX_KEEP_WHEN_MISSING`](crate::table::MAX_KEEP_WHEN_MISSING),
    /// each a column and not a key, as config validation ensures).
    pub fn keep_when_missing(mut self, keep: &[String]) -> Result<Self, IdentError> {
        self.keep = keep.iter().map(|c| Quoted::column(c)).collect::<Result<_, _>>()?;
        assert!(
            self.keep.len() <= crate::table::MAX_KEEP_WHEN_MISSING
                && self.keep.iter().all(|k| self.columns.contains(k) && !self.primary_key.contains(k)),
            "keep_when_missing is validated with the config"
        );
        Ok(self)
    }
}

pub fn timestamp_literal(micros: i64) -> String {
    format!("TIMESTAMP '{}'", format_timestamp_micros(micros))
}

fn window_filter(w: &Window) -> String {
    let ingested = Quoted::internal(COL_INGESTED);
    let mut f = format!("{ingested} <= {}", timestamp_literal(w.to_micros));
    if let Some(from) = w.from_micros {
        f = format!("{ingested} >= {} AND {f}", timestamp_literal(from));
    }
    f
}

/// The MERGE of `t.log` into `t.target` over `window`. Changes no newer
/// than a tombstone of their key are left out (run [`tombstone_statement`]
/// for the same window first).
pub fn merge_statement(t: &MergeTarget, window: &Window) -> String {
    let (key, op, order, ingested) =
        (Quoted::internal(COL_KEY), Quoted::internal(COL_OP), Quoted::internal(COL_ORDER), Quoted::internal(COL_INGESTED));
    let keep = |c: &Quoted| t.keep.iter().position(|k| k == c);
    let cols = t.columns.iter().map(Quoted::as_str).collect::<Vec<_>>().join(", ");
    // The latest-change query carries each keep column as its provider's
    // value (`_landfall_kv<i>`) and ordering value (`_landfall_ko<i>`).
    let inner_cols = t.columns.iter().filter(|c| keep(c).is_none()).map(Quoted::as_str).collect::<Vec<_>>().join(", ");
    let pk = t.primary_key.iter().map(Quoted::as_str).collect::<Vec<_>>().join(", ");
    let on = t.primary_key.iter().map(|c| format!("T.{c} = S.{c}")).collect::<Vec<_>>().join(" AND ");
    let tomb_on = t.primary_key.iter().map(|c| format!("TB.{c} = L.{c}")).collect::<Vec<_>>().join(" AND ");
    let set = t
        .columns
        .iter()
        .map(|c| match keep(c) {
            // No provider, or none newer than the final row: keep its value.
            Some(i) => format!("{c} = IF(S._landfall_ko{i} IS NULL OR S._landfall_ko{i} <= T.{order}, T.{c}, S.{c})"),
            None => format!("{c} = S.{c}"),
        })
        .chain([&order, &key].map(|c| format!("{c} = S.{c}")))
        .collect::<Vec<_>>()
        .join(", ");
    let insert_cols = format!("{cols}, {order}, {key}");
    let insert_vals = t.columns.iter().chain([&order, &key]).map(|c| format!("S.{c}")).collect::<Vec<_>>().join(", ");
    let cmp = if t.reapply_equal { ">=" } else { ">" };
    let newer = format!("(T.{order} IS NULL OR S.{order} {cmp} T.{order})");
    let missing = Quoted::internal(COL_MISSING);
    let mut providers = String::new();
    let (mut except, mut outer) = (Vec::new(), String::new());
    for (i, c) in t.keep.iter().enumerate() {
        // A change provides `c` if it is an upsert whose bit `i` is clear
        // (inserts and loads never set bits). The window puts providers
        // first, newest first, so FIRST_VALUE is the latest provider's value
        // (possibly NULL), or NULL when no change provides `c`.
        let provides = format!("{op} = 'U' AND (IFNULL({missing}, 0) & {bit}) = 0", bit = 1i64 << i);
        let w = format!(
            "OVER (PARTITION BY {pk} ORDER BY IF({provides}, 1, 0) DESC, {order} DESC, {key} DESC ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)"
        );
        providers.push_str(&format!(
            ",\n\x20       FIRST_VALUE(IF({provides}, {c}, NULL)) {w} AS _landfall_kv{i},\n\
             \x20       FIRST_VALUE(IF({provides}, {order}, NULL)) {w} AS _landfall_ko{i}"
        ));
        except.push(format!("_landfall_kv{i}, _landfall_ko{i}"));
        // A provider no newer than the key's tombstone lived before the
        // delete: the tombstone provides NULL instead.
        let live = format!("TB.{order} IS NULL OR L._landfall_ko{i} > TB.{order}");
        outer.push_str(&format!(
            ", IF({live}, L._landfall_kv{i}, NULL) AS {c}, IF({live}, L._landfall_ko{i}, TB.{order}) AS _landfall_ko{i}"
        ));
    }
    let select_l = if t.keep.is_empty() { "L.*".to_owned() } else { format!("L.* EXCEPT({}){outer}", except.join(", ")) };
    format!(
        "MERGE {target} AS T\n\
         USING (\n\
         \x20 SELECT {select_l} FROM (\n\
         \x20   SELECT * EXCEPT(_landfall_rn) FROM (\n\
         \x20     SELECT {inner_cols}, {op}, {order}, {key}{providers},\n\
         \x20       ROW_NUMBER() OVER (PARTITION BY {pk} ORDER BY {order} DESC, {key} DESC) AS _landfall_rn\n\
         \x20     FROM (\n\
         \x20       SELECT * FROM {log}\n\
         \x20       WHERE {filter}\n\
         \x20       QUALIFY ROW_NUMBER() OVER (PARTITION BY {key} ORDER BY {ingested}) = 1\n\
         \x20     ) WHERE {changes}\n\
         \x20   ) WHERE _landfall_rn = 1\n\
         \x20 ) AS L\n\
         \x20 LEFT JOIN {tombstones} AS TB ON {tomb_on}\n\
         \x20 WHERE L.{op} = 'D' OR TB.{order} IS NULL OR L.{order} > TB.{order}\n\
         ) AS S\n\
         ON {on}\n\
         WHEN MATCHED AND {newer} AND S.{op} = 'D' THEN DELETE\n\
         WHEN MATCHED AND {newer} AND S.{op} = 'U' THEN UPDATE SET {set}\n\
         WHEN NOT MATCHED AND S.{op} = 'U' THEN INSERT ({insert_cols}) VALUES ({insert_vals})",
        target = t.target,
        log = t.log,
        tombstones = t.tombstones,
        filter = window_filter(window),
        changes = changes_after_truncation(t),
    )
}

/// The condition on a key-deduplicated log row for the MERGE to consider
/// it: a change (not a marker), newer than the table's truncation point.
/// After key dedup, so the first-ingested copy of a change decides.
fn changes_after_truncation(t: &MergeTarget) -> String {
    let (op, order) = (Quoted::internal(COL_OP), Quoted::internal(COL_ORDER));
    let changes = format!("{op} IN ('U', 'D')");
    match &t.state {
        None => changes,
        Some(state) => {
            let truncated = state.scalar("truncated_order");
            format!("{changes} AND ({truncated} IS NULL OR {order} > {truncated})")
        }
    }
}

/// Records the newest truncate and drop-table markers of `window` in the
/// table's state row: `truncated_order` (the newest of either) and
/// `dropped_order` (the newest drop), each only ever raised. `None` without
/// a state table. Run before [`truncate_statement`] and the MERGE.
pub fn ddl_record_statement(t: &MergeTarget, window: &Window) -> Option<String> {
    let state = t.state.as_ref()?;
    let (op, order) = (Quoted::internal(COL_OP), Quoted::internal(COL_ORDER));
    let raise = |c: &str| format!("{c} = IF(S.{c} IS NULL OR (T.{c} IS NOT NULL AND T.{c} >= S.{c}), T.{c}, S.{c})");
    Some(format!(
        "MERGE {state_table} AS T\n\
         USING (\n\
         \x20 SELECT '{name}' AS final_table,\n\
         \x20   MAX({order}) AS truncated_order,\n\
         \x20   MAX(IF({op} = '{drop}', {order}, NULL)) AS dropped_order\n\
         \x20 FROM {log}\n\
         \x20 WHERE {filter} AND {op} IN ('{truncate}', '{drop}')\n\
         ) AS S\n\
         ON T.final_table = S.final_table\n\
         WHEN MATCHED AND S.truncated_order IS NOT NULL THEN UPDATE SET {truncated}, {dropped}\n\
         WHEN NOT MATCHED AND S.truncated_order IS NOT NULL THEN INSERT (final_table, truncated_order, dropped_order) \
         VALUES (S.final_table, S.truncated_order, S.dropped_order)",
        state_table = state.table,
        name = state.final_table,
        log = t.log,
        filter = window_filter(window),
        truncate = OP_TRUNCATE,
        drop = OP_DROP_TABLE,
        truncated = raise("truncated_order"),
        dropped = raise("dropped_order"),
    ))
}

/// Deletes every final-table row whose ordering value is not newer than the
/// table's truncation point (nothing when there is none). `None` without a
/// state table.
pub fn truncate_statement(t: &MergeTarget) -> Option<String> {
    let state = t.state.as_ref()?;
    let order = Quoted::internal(COL_ORDER);
    Some(format!("DELETE FROM {target} WHERE {order} <= {truncated}", target = t.target, truncated = state.scalar("truncated_order")))
}

/// The table's newest drop and the drop the operator last resumed from
/// (`dropped_order`, `resumed_order`): its merge is paused while the first
/// is newer. `final_table` is a validated table name.
pub fn read_drop_statement(state: &Quoted, final_table: &str) -> Result<String, IdentError> {
    crate::decode::ident::validate_table(final_table)?;
    Ok(format!("SELECT MAX(dropped_order), MAX(resumed_order) FROM {state} WHERE final_table = '{final_table}'"))
}

/// Resumes a table paused by a drop: `resumed_order` becomes its newest
/// recorded drop (the operator's `landfall ddl resume`).
pub fn resume_statement(state: &Quoted, final_table: &str) -> Result<String, IdentError> {
    crate::decode::ident::validate_table(final_table)?;
    Ok(format!("UPDATE {state} SET resumed_order = dropped_order WHERE final_table = '{final_table}' AND dropped_order IS NOT NULL"))
}

/// Records the newest delete per primary key in `window` as a tombstone.
pub fn tombstone_statement(t: &MergeTarget, window: &Window) -> String {
    let (op, order) = (Quoted::internal(COL_OP), Quoted::internal(COL_ORDER));
    let pk = t.primary_key.iter().map(Quoted::as_str).collect::<Vec<_>>().join(", ");
    let on = t.primary_key.iter().map(|c| format!("T.{c} = S.{c}")).collect::<Vec<_>>().join(" AND ");
    let vals = t.primary_key.iter().map(|c| format!("S.{c}")).collect::<Vec<_>>().join(", ");
    format!(
        "MERGE {tombstones} AS T\n\
         USING (\n\
         \x20 SELECT {pk}, {order} FROM (\n\
         \x20   SELECT {pk}, {order}, ROW_NUMBER() OVER (PARTITION BY {pk} ORDER BY {order} DESC) AS _landfall_rn\n\
         \x20   FROM {log}\n\
         \x20   WHERE {filter} AND {op} = 'D'\n\
         \x20 ) WHERE _landfall_rn = 1\n\
         ) AS S\n\
         ON {on}\n\
         WHEN MATCHED AND S.{order} > T.{order} THEN UPDATE SET {order} = S.{order}\n\
         WHEN NOT MATCHED THEN INSERT ({pk}, {order}) VALUES ({vals}, S.{order})",
        tombstones = t.tombstones,
        log = t.log,
        filter = window_filter(window),
    )
}

/// The newest `_landfall_ingested` at or after `from` (the merge's upper bound).
pub fn max_ingested_statement(log: &Quoted, from_micros: Option<i64>) -> String {
    let ingested = Quoted::internal(COL_INGESTED);
    let filter = match from_micros {
        Some(f) => format!("WHERE {ingested} >= {}", timestamp_literal(f)),
        None => String::new(),
    };
    format!("SELECT UNIX_MICROS(MAX({ingested})) FROM {log} {filter}")
}

/// `final_table` is a validated table name; it is used as a string literal.
pub fn read_watermark_statement(state: &Quoted, final_table: &str) -> Result<String, IdentError> {
    crate::decode::ident::validate_table(final_table)?;
    Ok(format!("SELECT UNIX_MICROS(watermark) FROM {state} WHERE final_table = '{final_table}'"))
}

pub fn write_watermark_statement(state: &Quoted, final_table: &str, micros: i64) -> Result<String, IdentError> {
    crate::decode::ident::validate_table(final_table)?;
    let ts = timestamp_literal(micros);
    Ok(format!(
        "MERGE {state} AS T USING (SELECT '{final_table}' AS final_table) AS S ON T.final_table = S.final_table\n\
         WHEN MATCHED THEN UPDATE SET watermark = {ts}, updated_at = CURRENT_TIMESTAMP()\n\
         WHEN NOT MATCHED THEN INSERT (final_table, watermark, updated_at) VALUES (S.final_table, {ts}, CURRENT_TIMESTAMP())"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> MergeTarget {
        MergeTarget::new(
            "landfall-local",
            "cdc",
            "orders_log",
            "orders",
            &["tenant".into(), "id".into()],
            &["tenant".into(), "id".into(), "amount".into()],
        )
        .unwrap()
    }

    #[test]
    fn a_reapplying_merge_also_applies_the_change_the_final_row_holds() {
        let w = Window { from_micros: None, to_micros: 2_000_000 };
        let first = merge_statement(&target(), &w);
        let again = merge_statement(&MergeTarget { reapply_equal: true, ..target() }, &w);
        assert!(first.contains("S.`_landfall_order` > T.`_landfall_order`") && !first.contains(">= T."), "{first}");
        assert!(again.contains("(T.`_landfall_order` IS NULL OR S.`_landfall_order` >= T.`_landfall_order`)"), "{again}");
        assert_eq!(first.replace(">= T.", "> T."), again.replace(">= T.", "> T."), "only the comparison differs");
    }

    #[test]
    fn merge_has_every_clause() {
        let sql = merge_statement(&target(), &Window { from_micros: Some(1_000_000), to_micros: 2_000_000 });
        for needle in [
            "MERGE `landfall-local.cdc.orders` AS T",
            "FROM `landfall-local.cdc.orders_log`",
            "`_landfall_ingested` >= TIMESTAMP '1970-01-01T00:00:01.000000Z' AND `_landfall_ingested` <= TIMESTAMP '1970-01-01T00:00:02.000000Z'",
            "QUALIFY ROW_NUMBER() OVER (PARTITION BY `_landfall_key` ORDER BY `_landfall_ingested`) = 1",
            "PARTITION BY `tenant`, `id` ORDER BY `_landfall_order` DESC",
            "ON T.`tenant` = S.`tenant` AND T.`id` = S.`id`",
            "S.`_landfall_order` > T.`_landfall_order`",
            "THEN DELETE",
            "UPDATE SET `tenant` = S.`tenant`, `id` = S.`id`, `amount` = S.`amount`, `_landfall_order` = S.`_landfall_order`",
            "WHEN NOT MATCHED AND S.`_landfall_op` = 'U' THEN INSERT (`tenant`, `id`, `amount`, `_landfall_order`, `_landfall_key`)",
        ] {
            assert!(sql.contains(needle), "missing {needle:?} in\n{sql}");
        }
        assert!(
            sql.contains("LEFT JOIN `landfall-local.cdc.orders__tombstones` AS TB ON TB.`tenant` = L.`tenant` AND TB.`id` = L.`id`"),
            "{sql}"
        );
        assert!(
            sql.contains("WHERE L.`_landfall_op` = 'D' OR TB.`_landfall_order` IS NULL OR L.`_landfall_order` > TB.`_landfall_order`"),
            "{sql}"
        );
        let full = merge_statement(&target(), &Window { from_micros: None, to_micros: 5 });
        assert!(!full.contains(">="), "{full}");
    }

    #[test]
    fn merge_without_keep_columns_is_unchanged() {
        let sql = merge_statement(&target(), &Window { from_micros: None, to_micros: 5 });
        assert!(sql.contains("  SELECT L.* FROM (\n"), "{sql}");
        assert!(sql.contains("SELECT `tenant`, `id`, `amount`, `_landfall_op`, `_landfall_order`, `_landfall_key`,\n"), "{sql}");
        for absent in ["_landfall_missing", "FIRST_VALUE", "IF("] {
            assert!(!sql.contains(absent), "{absent} in\n{sql}");
        }
    }

    #[test]
    fn merge_keeps_the_latest_provided_value_of_keep_columns() {
        let t = MergeTarget::new(
            "landfall-local",
            "cdc",
            "orders_log",
            "orders",
            &["id".into()],
            &["id".into(), "amount".into(), "note".into(), "doc".into()],
        )
        .unwrap()
        .keep_when_missing(&["doc".into(), "note".into()])
        .unwrap();
        let sql = merge_statement(&t, &Window { from_micros: None, to_micros: 5 });
        let provides = |bit: u32| format!("`_landfall_op` = 'U' AND (IFNULL(`_landfall_missing`, 0) & {bit}) = 0");
        let w = |bit| {
            format!(
                "OVER (PARTITION BY `id` ORDER BY IF({}, 1, 0) DESC, `_landfall_order` DESC, `_landfall_key` DESC ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)",
                provides(bit)
            )
        };
        for needle in [
            // The latest change per key, keep columns replaced by their provider's value and order.
            "SELECT `id`, `amount`, `_landfall_op`, `_landfall_order`, `_landfall_key`,".to_owned(),
            format!("FIRST_VALUE(IF({}, `doc`, NULL)) {} AS _landfall_kv0", provides(1), w(1)),
            format!("FIRST_VALUE(IF({}, `_landfall_order`, NULL)) {} AS _landfall_ko0", provides(1), w(1)),
            format!("FIRST_VALUE(IF({}, `note`, NULL)) {} AS _landfall_kv1", provides(2), w(2)),
            format!("FIRST_VALUE(IF({}, `_landfall_order`, NULL)) {} AS _landfall_ko1", provides(2), w(2)),
            // A provider older than the tombstone is replaced by the tombstone (NULL).
            "SELECT L.* EXCEPT(_landfall_kv0, _landfall_ko0, _landfall_kv1, _landfall_ko1), \
             IF(TB.`_landfall_order` IS NULL OR L._landfall_ko0 > TB.`_landfall_order`, L._landfall_kv0, NULL) AS `doc`, \
             IF(TB.`_landfall_order` IS NULL OR L._landfall_ko0 > TB.`_landfall_order`, L._landfall_ko0, TB.`_landfall_order`) AS _landfall_ko0, \
             IF(TB.`_landfall_order` IS NULL OR L._landfall_ko1 > TB.`_landfall_order`, L._landfall_kv1, NULL) AS `note`"
                .to_owned(),
            // An update keeps the final value unless the provider is newer; an insert takes the provider's.
            "UPDATE SET `id` = S.`id`, `amount` = S.`amount`, \
             `note` = IF(S._landfall_ko1 IS NULL OR S._landfall_ko1 <= T.`_landfall_order`, T.`note`, S.`note`), \
             `doc` = IF(S._landfall_ko0 IS NULL OR S._landfall_ko0 <= T.`_landfall_order`, T.`doc`, S.`doc`), `_landfall_order` = S.`_landfall_order`"
                .to_owned(),
            "INSERT (`id`, `amount`, `note`, `doc`, `_landfall_order`, `_landfall_key`) VALUES (S.`id`, S.`amount`, S.`note`, S.`doc`,".to_owned(),
        ] {
            assert!(sql.contains(&needle), "missing {needle:?} in\n{sql}");
        }
    }

    fn with_state() -> MergeTarget {
        target().with_state("landfall-local", "cdc", "landfall_state", "orders").unwrap()
    }

    #[test]
    fn merge_leaves_out_markers_and_changes_not_newer_than_the_truncation_point() {
        let truncated = "(SELECT MAX(truncated_order) FROM `landfall-local.cdc.landfall_state` WHERE final_table = 'orders')";
        let sql = merge_statement(&with_state(), &Window { from_micros: None, to_micros: 5 });
        let after_dedup = format!(
            "QUALIFY ROW_NUMBER() OVER (PARTITION BY `_landfall_key` ORDER BY `_landfall_ingested`) = 1\n      ) \
             WHERE `_landfall_op` IN ('U', 'D') AND ({truncated} IS NULL OR `_landfall_order` > {truncated})\n"
        );
        assert!(sql.contains(&after_dedup), "missing {after_dedup:?} in\n{sql}");
        // Without a state table (pure builder use), markers are still left out.
        let plain = merge_statement(&target(), &Window { from_micros: None, to_micros: 5 });
        assert!(plain.contains("= 1\n      ) WHERE `_landfall_op` IN ('U', 'D')\n"), "{plain}");
        assert!(!plain.contains("truncated_order"), "{plain}");
    }

    #[test]
    fn truncates_and_drops_are_recorded_monotonically_and_delete_older_rows() {
        let t = with_state();
        let record = ddl_record_statement(&t, &Window { from_micros: Some(1), to_micros: 2 }).unwrap();
        for needle in [
            "MERGE `landfall-local.cdc.landfall_state` AS T",
            "SELECT 'orders' AS final_table,",
            "MAX(`_landfall_order`) AS truncated_order,",
            "MAX(IF(`_landfall_op` = 'X', `_landfall_order`, NULL)) AS dropped_order",
            "FROM `landfall-local.cdc.orders_log`",
            "AND `_landfall_op` IN ('T', 'X')",
            // A recorded value only grows: an older marker (a late merge, a replay) never lowers it.
            "WHEN MATCHED AND S.truncated_order IS NOT NULL THEN UPDATE SET \
             truncated_order = IF(S.truncated_order IS NULL OR (T.truncated_order IS NOT NULL AND T.truncated_order >= S.truncated_order), T.truncated_order, S.truncated_order), \
             dropped_order = IF(S.dropped_order IS NULL OR (T.dropped_order IS NOT NULL AND T.dropped_order >= S.dropped_order), T.dropped_order, S.dropped_order)",
            "WHEN NOT MATCHED AND S.truncated_order IS NOT NULL THEN INSERT (final_table, truncated_order, dropped_order)",
        ] {
            assert!(record.contains(needle), "missing {needle:?} in\n{record}");
        }
        assert_eq!(
            truncate_statement(&t).unwrap(),
            "DELETE FROM `landfall-local.cdc.orders` WHERE `_landfall_order` <= \
             (SELECT MAX(truncated_order) FROM `landfall-local.cdc.landfall_state` WHERE final_table = 'orders')"
        );
        assert!(ddl_record_statement(&target(), &Window { from_micros: None, to_micros: 1 }).is_none());
        assert!(truncate_statement(&target()).is_none());
        let state = Quoted::table_path("landfall-local", "cdc", "landfall_state").unwrap();
        assert!(read_drop_statement(&state, "orders").unwrap().contains("MAX(dropped_order), MAX(resumed_order)"));
        assert!(resume_statement(&state, "orders").unwrap().contains("SET resumed_order = dropped_order WHERE final_table = 'orders'"));
        assert!(resume_statement(&state, "o' OR '1'='1").is_err());
        assert!(target().with_state("landfall-local", "cdc", "landfall_state", "o'rders").is_err());
    }

    #[test]
    fn tombstones_keep_the_newest_delete_per_key() {
        let sql = tombstone_statement(&target(), &Window { from_micros: Some(1), to_micros: 2 });
        for needle in [
            "MERGE `landfall-local.cdc.orders__tombstones` AS T",
            "FROM `landfall-local.cdc.orders_log`",
            "AND `_landfall_op` = 'D'",
            "PARTITION BY `tenant`, `id` ORDER BY `_landfall_order` DESC",
            "WHEN MATCHED AND S.`_landfall_order` > T.`_landfall_order` THEN UPDATE SET `_landfall_order` = S.`_landfall_order`",
            "WHEN NOT MATCHED THEN INSERT (`tenant`, `id`, `_landfall_order`) VALUES (S.`tenant`, S.`id`, S.`_landfall_order`)",
        ] {
            assert!(sql.contains(needle), "missing {needle:?} in\n{sql}");
        }
    }

    #[test]
    fn identifiers_from_outside_cannot_be_injected() {
        for bad in ["x` WHERE 1=1; --", "a b", "x'", "_landfall_key"] {
            assert!(MergeTarget::new("landfall-local", "cdc", "l", "f", &[bad.into()], &[bad.into()]).is_err(), "{bad}");
            assert!(MergeTarget::new("landfall-local", "cdc", bad, "f", &["id".into()], &["id".into()]).is_err() || bad == "_landfall_key");
        }
        let state = Quoted::table_path("landfall-local", "cdc", "state").unwrap();
        assert!(read_watermark_statement(&state, "t' OR '1'='1").is_err());
        assert!(write_watermark_statement(&state, "t'", 1).is_err());
    }

    #[test]
    fn create_final_table_is_keyed_and_clustered() {
        let t = target();
        let cols = vec![(t.columns[0].clone(), "STRING"), (t.columns[1].clone(), "INT64"), (t.columns[2].clone(), "NUMERIC")];
        let sql = create_final_table_statement(&t.target, &cols, &t.primary_key);
        assert!(sql.contains("PRIMARY KEY (`tenant`, `id`) NOT ENFORCED"), "{sql}");
        assert!(sql.contains("CLUSTER BY `tenant`, `id`"), "{sql}");
        assert!(sql.contains("`_landfall_order` STRING"), "{sql}");
    }

    mod parsed {
        use super::super::*;
        use crate::merge::sql_check::{check_delete, check_merge, check_merge_with};
        use proptest::prelude::*;

        /// Valid column names, including ones that are SQL keywords or the
        /// builder's own aliases, so that only quoting keeps them apart.
        fn column() -> impl Strategy<Value = String> {
            prop_oneof![
                "[A-Za-z_][A-Za-z0-9_]{0,12}",
                prop::sample::select(vec!["SELECT", "T", "S", "L", "TB", "DELETE", "ORDER", "from", "Merge", "_", "Quality", "NULL"])
                    .prop_map(String::from),
            ]
            .prop_filter("valid column", |c| crate::decode::ident::validate_column(c).is_ok())
        }

        /// The names a statement is built from: columns, then table paths.
        fn names(columns: &[String], tables: &[&str]) -> Vec<String> {
            columns.iter().cloned().chain(tables.iter().map(|t| format!("landfall-local.cdc.{t}"))).collect()
        }

        proptest! {
            #[test]
            fn merge_and_tombstone_statements_parse_as_one_merge(
                log in "[A-Za-z0-9_-]{1,20}",
                target in "[A-Za-z0-9_-]{1,20}",
                columns in prop::collection::btree_set(column(), 1..8),
                pk_len in 1usize..4,
                keep_picks in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
                from in proptest::option::of(any::<i64>()),
                to in any::<i64>(),
            ) {
                let columns: Vec<String> = columns.into_iter().collect();
                let pk: Vec<String> = columns.iter().take(pk_len).cloned().collect();
                // keep_when_missing: distinct non-key columns, in any order.
                let non_key: Vec<&String> = columns.iter().skip(pk_len).collect();
                let mut keep: Vec<String> = Vec::new();
                if !non_key.is_empty() {
                    for p in &keep_picks {
                        let c = non_key[p.index(non_key.len())];
                        if !keep.contains(c) {
                            keep.push(c.clone());
                        }
                    }
                }
                let t = MergeTarget::new("landfall-local", "cdc", &log, &target, &pk, &columns).unwrap().keep_when_missing(&keep).unwrap();
                let window = Window { from_micros: from, to_micros: to };
                let tombstones = tombstone_table_name(&target);
                let merge = merge_statement(&t, &window);
                prop_assert_eq!(check_merge(&merge, &names(&columns, &[&log, &target, &tombstones])), Ok(()), "{}", merge);
                let tomb = tombstone_statement(&t, &window);
                prop_assert_eq!(check_merge(&tomb, &names(&pk, &[&log, &tombstones])), Ok(()), "{}", tomb);
                // With the state table: the truncation point in the MERGE, and the DDL statements.
                let state = "landfall_state";
                if crate::decode::ident::validate_table(&target).is_ok() {
                    let t = t.with_state("landfall-local", "cdc", state, &target).unwrap();
                    let merge = merge_statement(&t, &window);
                    let literal = [target.as_str()];
                    let all = names(&columns, &[&log, &target, &tombstones, state]);
                    prop_assert_eq!(check_merge_with(&merge, &all, &literal), Ok(()), "{}", merge);
                    if !["D", "U", "T", "X"].contains(&target.as_str()) {
                        prop_assert!(check_merge(&merge, &all).is_err(), "the state row's key is an allowed literal, nothing else");
                    }
                    let record = ddl_record_statement(&t, &window).unwrap();
                    prop_assert_eq!(check_merge_with(&record, &names(&[], &[&log, state]), &literal), Ok(()), "{}", record);
                    let truncate = truncate_statement(&t).unwrap();
                    prop_assert_eq!(check_delete(&truncate, &names(&[], &[&target, state]), &literal), Ok(()), "{}", truncate);
                }
            }
        }

        #[test]
        fn the_checker_rejects_what_it_should() {
            let names = vec!["id".to_string()];
            assert!(
                check_merge("MERGE `id` AS T USING (SELECT 1) AS S ON TRUE WHEN MATCHED THEN DELETE", &names).is_err(),
                "TRUE is not vocabulary"
            );
            assert!(check_merge("MERGE `id` AS T USING (SELECT `id`) AS S ON T.id = S.`id` WHEN MATCHED THEN DELETE", &names).is_err());
            assert!(check_merge("MERGE `id` AS T USING (SELECT `x`) AS S ON T.`id` = S.`id` WHEN MATCHED THEN DELETE", &names).is_err());
            assert!(check_merge(
                "MERGE `id` AS T USING (SELECT `id`) AS S ON T.`id` = S.`id` WHEN MATCHED THEN DELETE; DELETE FROM `id` WHERE `id` = 'D'",
                &names
            )
            .is_err());
            assert!(check_merge("SELECT `id` FROM `id`", &names).is_err());
            assert!(check_merge("MERGE `id` AS T USING (SELECT `id`) AS S ON T.`id` = 'x' WHEN MATCHED THEN DELETE", &names).is_err());
            assert_eq!(
                check_merge(
                    "MERGE `id` AS T USING (SELECT `id`) AS S ON T.`id` = S.`id` WHEN MATCHED AND S.`_landfall_op` = 'D' THEN DELETE",
                    &names
                ),
                Ok(())
            );
            // The numbered aliases are a fixed prefix and digits, nothing else.
            for bad in ["_landfall_kv", "_landfall_kvx", "_landfall_kv1x", "_landfall_kv123", "_landfall_k1", "landfall_kv1"] {
                let sql = format!("MERGE `id` AS T USING (SELECT `id`, 1 AS {bad}) AS S ON T.`id` = S.`id` WHEN MATCHED THEN DELETE");
                assert!(check_merge(&sql, &names).is_err(), "{bad}");
            }
            assert_eq!(
                check_merge(
                    "MERGE `id` AS T USING (SELECT `id`, 1 AS _landfall_ko12) AS S ON T.`id` = S.`id` WHEN MATCHED THEN DELETE",
                    &names
                ),
                Ok(())
            );
        }
    }
}
