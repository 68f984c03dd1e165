//! The fuzz smoke of `make test`: each fuzz target's check (`fuzz/checks.rs`,
//! the very code libFuzzer runs in `make fuzz`) over every stored input of
//! the target (`fuzz/seeds/`, the local corpus `fuzz/corpus/`, crash inputs in
//! `fuzz/artifacts/`), then over random mutations of them, in the tests' own
//! build (no second, instrumented build of every dependency).
//!
//! This is a smoke run, not a fuzzing campaign: the mutations are not guided
//! by coverage. `make fuzz` runs libFuzzer. The mutations are seeded: a
//! failure prints the seed (`LANDFALL_FUZZ_SEED` replays it) and writes the
//! failing input to `fuzz/artifacts/<target>/smoke-<hash>`, where `make fuzz`
//! and this test pick it up. `LANDFALL_FUZZ_RUNS` scales the mutation count.

#[path = "../fuzz/checks.rs"]
#[allow(dead_code)]
mod checks;
#[path = "../src/merge/sql_check.rs"]
#[allow(dead_code)]
mod sql_check;

use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every stored input of `target`.
fn stored_inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["seeds", "corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else { continue };
        for e in entries.flatten() {
            if e.path().is_file() {
                out.push((e.path().display().to_string(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Bytes that matter to the parsers: JSON structure, escapes, digits, and
/// the edges of integer and UTF-8 ranges.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"null",
    b"true",
    b"false",
    b"-0",
    b"1e999",
    b"0.1",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"123456789012345678901234567890.123456789",
    b"\"0x00ff\"",
    b"\xff",
    b"\xc3",
    b"\xe2\x80\xae",
    b"`",
    b"'",
    b";",
    b"--",
    b"/*",
    b"\"metadata\"",
    b"\"data\"",
    b"\"operation\"",
    b"\"record-type\"",
    b"\"control\"",
    b"\"before-image\"",
    b"\"stream-position\"",
    b"\"timestamp\"",
    b"\"2026-11-27T03:00:00.123456789Z\"",
];

/// One random mutation of an input of the pool: 1 to 8 edits (bit flips,
/// token inserts, deletions, duplications, splices with another input).
fn mutate(rng: &mut StdRng, pool: &[Vec<u8>]) -> Vec<u8> {
    let mut v = pool[rng.random_range(0..pool.len())].clone();
    for _ in 0..rng.random_range(1..=8) {
        let at = if v.is_empty() { 0 } else { rng.random_range(0..=v.len()) };
        match rng.random_range(0..7) {
            0 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let t = TOKENS[rng.random_range(0..TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
            2 if !v.is_empty() => {
                let end = (at + rng.random_range(1..=16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            3 if !v.is_empty() => {
                let start = rng.random_range(0..v.len());
                let end = (start + rng.random_range(1..=64)).min(v.len());
                let piece = v[start..end].to_vec();
                v.splice(at..at, piece);
            }
            4 => {
                let other = &pool[rng.random_range(0..pool.len())];
                let from = if other.is_empty() { 0 } else { rng.random_range(0..other.len()) };
                v.truncate(at);
                v.extend_from_slice(&other[from..]);
            }
            5 => v.insert(at, rng.random()),
            _ => v.truncate(at),
        }
    }
    v
}

/// Runs `check` over every stored input of `target`, then `runs` mutations.
fn smoke(target: &str, runs: usize, check: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let stored = stored_inputs(target);
    assert!(stored.iter().any(|(p, _)| p.contains("/seeds/")), "no seeds for {target} under fuzz/seeds/{target}");
    let seed = std::env::var("LANDFALL_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    let scale: f64 = std::env::var("LANDFALL_FUZZ_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let runs = (runs as f64 * scale) as usize;
    let fail = |input: &[u8], what: &str| -> ! {
        let dir = fuzz_dir().join("artifacts").join(target);
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("smoke-{}", &blake3::hash(input).to_hex()[..16]));
        let _ = std::fs::write(&path, input);
        panic!(
            "fuzz smoke of {target} failed on {what} (seed {seed}; replay with LANDFALL_FUZZ_SEED={seed}); input written to {}",
            path.display()
        )
    };
    for (path, input) in &stored {
        if std::panic::catch_unwind(|| check(input)).is_err() {
            fail(input, path);
        }
    }
    let pool: Vec<Vec<u8>> = stored.into_iter().map(|(_, v)| v).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..runs {
        let input = mutate(&mut rng, &pool);
        if std::panic::catch_unwind(|| check(&input)).is_err() {
            fail(&input, &format!("mutation {i}"));
        }
    }
    eprintln!("fuzz smoke {target}: {} stored inputs and {runs} mutations passed (seed {seed})", pool.len());
}

#[test]
fn dms_decode_never_panics_on_stored_and_mutated_inputs() {
    smoke("dms_decode", 300_000, checks::dms_decode);
}

#[test]
fn wal_record_decodes_or_refuses_and_round_trips_on_stored_and_mutated_inputs() {
    smoke("wal_record", 300_000, checks::wal_record);
}

#[test]
fn merge_sql_refuses_names_or_builds_statements_that_parse_on_stored_and_mutated_inputs() {
    // As libFuzzer does for a typed target: the bytes become the input through `arbitrary`.
    smoke("merge_sql", 30_000, |data| {
        if let Ok(input) = checks::MergeSqlInput::arbitrary_take_rest(Unstructured::new(data)) {
            checks::merge_sql(input);
        }
    });
}
