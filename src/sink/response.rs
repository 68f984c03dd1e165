//! Reading insertAll answers: [`interpret`] turns a response's
//! `insertErrors` into what became of each row of the request (landed,
//! rejected with a reason, or to be sent again). Pure: no I/O, never panics.

use gcp_bigquery_client::model::table_data_insert_all_response_insert_errors::TableDataInsertAllResponseInsertErrors;

/// Row-level reasons worth re-sending the row for.
fn is_retryable_reason(reason: &str) -> bool {
    matches!(reason, "stopped" | "timeout" | "backendError" | "internalError" | "rateLimitExceeded" | "")
}

/// What one insertAll response says about the rows of its request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// One answer per row of the request, in request order.
    Rows(Vec<RowAnswer>),
    /// An error entry cannot be tied to a row (no `index`, or one out of
    /// range): which rows it is about is unknown, so no row of the response
    /// may be counted as landed.
    Untrusted(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum RowAnswer {
    Landed,
    /// Permanently refused, with `insertAll {reason} at `location`: {message}`.
    Rejected(String),
    /// Re-send the row; `stopped` when every reason was "stopped" (the row
    /// is fine, another row of the request was not).
    Retry {
        stopped: bool,
    },
}

/// Interprets the `insertErrors` of an insertAll response to a request of
/// `rows` rows. Pure: no I/O, never panics. A row without an error entry
/// landed; a row with any permanent reason is rejected; other rows are
/// retried. Several entries for one index are merged.
pub fn interpret(errors: &[TableDataInsertAllResponseInsertErrors], rows: usize) -> Answer {
    // (reason, " at `location`: message") per error, per row.
    let mut per_row: Vec<Option<Vec<(String, String)>>> = vec![None; rows];
    for (n, e) in errors.iter().enumerate() {
        let Some(i) = e.index else {
            return Answer::Untrusted(format!("insertErrors entry {n} has no index ({} rows sent)", rows));
        };
        let Some(slot) = usize::try_from(i).ok().and_then(|i| per_row.get_mut(i)) else {
            return Answer::Untrusted(format!("insertErrors entry {n} has index {i}, outside the {rows} rows sent"));
        };
        let reasons = slot.get_or_insert_with(Vec::new);
        for p in e.errors.iter().flatten() {
            let at = p.location.as_deref().filter(|l| !l.is_empty()).map(|l| format!(" at `{l}`")).unwrap_or_default();
            reasons.push((p.reason.clone().unwrap_or_default(), format!("{at}: {}", p.message.as_deref().unwrap_or_default())));
        }
    }
    Answer::Rows(
        per_row
            .into_iter()
            .map(|r| match r {
                None => RowAnswer::Landed,
                // An entry without errors says the row failed, not why: re-send it.
                Some(reasons) if reasons.is_empty() => RowAnswer::Retry { stopped: false },
                Some(reasons) => match reasons.iter().find(|(r, _)| !is_retryable_reason(r)) {
                    Some((reason, message)) => RowAnswer::Rejected(format!("insertAll {reason}{message}")),
                    None => RowAnswer::Retry { stopped: reasons.iter().all(|(r, _)| r == "stopped") },
                },
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: Option<i32>, reasons: &[&str]) -> TableDataInsertAllResponseInsertErrors {
        use gcp_bigquery_client::model::error_proto::ErrorProto;
        let errors = reasons
            .iter()
            .map(|r| ErrorProto { reason: Some(r.to_string()), message: Some(format!("m-{r}")), ..Default::default() })
            .collect();
        TableDataInsertAllResponseInsertErrors { index, errors: Some(errors) }
    }

    #[test]
    fn rows_without_an_error_entry_landed_and_reasons_decide_the_rest() {
        let errs = [entry(Some(1), &["invalid"]), entry(Some(0), &["stopped"]), entry(Some(3), &["backendError"])];
        let Answer::Rows(a) = interpret(&errs, 4) else { panic!("untrusted") };
        assert_eq!(a[0], RowAnswer::Retry { stopped: true });
        assert_eq!(a[1], RowAnswer::Rejected("insertAll invalid: m-invalid".into()));
        assert_eq!(a[2], RowAnswer::Landed);
        assert_eq!(a[3], RowAnswer::Retry { stopped: false });
        assert_eq!(interpret(&[], 2), Answer::Rows(vec![RowAnswer::Landed, RowAnswer::Landed]));
    }

    #[test]
    fn an_error_entry_that_names_no_row_makes_the_whole_response_untrusted() {
        // Today's code skipped these entries and counted every row as landed.
        for errs in [
            vec![entry(None, &["invalid"])],
            vec![entry(Some(0), &["stopped"]), entry(Some(2), &["invalid"])],
            vec![entry(Some(-1), &["stopped"])],
            vec![entry(Some(i32::MAX), &["backendError"])],
        ] {
            assert!(matches!(interpret(&errs, 2), Answer::Untrusted(_)), "{errs:?}");
        }
        let Answer::Untrusted(why) = interpret(&[entry(Some(5), &["x"])], 2) else { panic!() };
        assert!(why.contains("index 5") && why.contains("2 rows"), "{why}");
    }

    #[test]
    fn duplicate_entries_for_one_row_are_merged() {
        let errs = [entry(Some(0), &["stopped"]), entry(Some(0), &["invalid"]), entry(Some(1), &["stopped"]), entry(Some(1), &["timeout"])];
        let Answer::Rows(a) = interpret(&errs, 2) else { panic!("untrusted") };
        assert!(matches!(a[0], RowAnswer::Rejected(_)));
        assert_eq!(a[1], RowAnswer::Retry { stopped: false });
        // An entry without errors: failed, reason unknown, re-sent.
        let bare = TableDataInsertAllResponseInsertErrors { index: Some(0), errors: None };
        assert_eq!(interpret(&[bare], 1), Answer::Rows(vec![RowAnswer::Retry { stopped: false }]));
    }
}
