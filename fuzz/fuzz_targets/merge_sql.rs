//! Arbitrary identifiers and window values into the MERGE builder: either the
//! names are refused, or every name appears in the SQL only backtick-quoted,
//! the statement has balanced quotes and one statement (no `;`).
#![no_main]

use landfall::merge::sql::{merge_statement, tombstone_statement, MergeTarget, Window};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (String, String, Vec<String>, i64, i64)| {
    let (log, target, columns, from, to) = input;
    if columns.is_empty() {
        return;
    }
    let pk = vec![columns[0].clone()];
    let Ok(t) = MergeTarget::new("landfall-local", "cdc", &log, &target, &pk, &columns) else { return };
    let window = Window { from_micros: Some(from), to_micros: to };
    // The tombstone statement names only the key; the MERGE every column.
    for (sql, names) in [(merge_statement(&t, &window), &columns), (tombstone_statement(&t, &window), &pk)] {
        assert!(!sql.contains(';'), "{sql}");
        assert_eq!(sql.matches('`').count() % 2, 0, "{sql}");
        assert_eq!(sql.matches('\'').count() % 2, 0, "{sql}");
        for c in names {
            assert!(sql.contains(&format!("`{c}`")), "{c} not quoted in {sql}");
        }
    }
});
