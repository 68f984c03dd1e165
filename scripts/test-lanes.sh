#!/usr/bin/env bash
# Runs every test target of the crate (the library's unit tests, the binary's,
# and each tests/*.rs) in LANES lanes at once (default 2): each lane runs its
# targets one after another with `cargo test ARGS --test NAME` (or --lib,
# --bins). Most end-to-end tests wait on the BigQuery emulator, which each
# test binary starts for itself, so two binaries at once keep both cores busy
# where one leaves a core idle.
#
#   scripts/test-lanes.sh --features drill
#
# Targets go to lanes longest first, by the durations of the previous run
# (target/test-lanes/times) or, on a clean clone, by the ones below (seconds,
# measured on the 2-core machine; they only balance the lanes). Each target's
# output is in target/test-lanes/NAME.log; a failing target's is printed.
# Exits non-zero if any target failed. Env: LANDFALL_TEST_LANES.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
LANES="${LANDFALL_TEST_LANES:-2}"
OUT=target/test-lanes
mkdir -p "$OUT"
TIMES="$OUT/times"

declare -A WEIGHT=(
    [lib]=7 [bins]=1 [bench_smoke]=95 [drill]=90 [end_to_end]=90 [shutdown]=58 [dead_letters]=55
    [bq_faults]=46 [insert_responses]=39 [kafka_faults]=38 [ddl]=37 [replay]=33 [merge_model]=29
    [revoke_busy_runtime]=27 [merge]=24 [recovery]=23 [wal_faults]=23 [keep_when_missing]=20
    [tables_import]=22 [schema_evolution]=40 [kafka_auth]=15 [check]=25 [malformed_corpus]=18 [observe]=17 [fuzz_smoke]=12 [merge_window]=10 [memory_bounds]=9 [identity_model]=1
)
if [[ -f "$TIMES" ]]; then
    while read -r name secs; do [[ -n "$name" && -n "$secs" ]] && WEIGHT[$name]=$secs; done < "$TIMES"
fi

targets=(lib bins)
for f in tests/*.rs; do targets+=("$(basename "$f" .rs)"); done

# Longest first, each to the lane with the least work so far.
mapfile -t sorted < <(for t in "${targets[@]}"; do echo "${WEIGHT[$t]:-30} $t"; done | sort -rn | awk '{print $2}')
declare -a load lane_targets
for ((i = 0; i < LANES; i++)); do load[i]=0; lane_targets[i]=""; done
for t in "${sorted[@]}"; do
    best=0
    for ((i = 1; i < LANES; i++)); do (( load[i] < load[best] )) && best=$i; done
    load[best]=$(( load[best] + ${WEIGHT[$t]:-30} ))
    lane_targets[best]+="$t "
done

select_args() {
    case "$1" in
        lib) echo "--lib" ;;
        bins) echo "--bins" ;;
        *) echo "--test $1" ;;
    esac
}

run_lane() {
    local lane=$1 t status start secs
    shift
    for t in "$@"; do
        start=$SECONDS
        status=0
        # shellcheck disable=SC2046
        cargo test "${CARGO_ARGS[@]}" $(select_args "$t") >"$OUT/$t.log" 2>&1 || status=$?
        secs=$(( SECONDS - start ))
        echo "$t $secs" >> "$OUT/times.new.$lane"
        if (( status == 0 )); then
            echo "test-lanes: lane $lane: $t ok, ${secs} s ($(grep -h '^test result' "$OUT/$t.log" | awk '{p+=$4} END {print p+0}') passed)"
        else
            echo "test-lanes: lane $lane: $t FAILED after ${secs} s; its output:"
            sed 's/^/    /' "$OUT/$t.log"
            echo "FAILED $t" >> "$OUT/failed.$lane"
        fi
    done
}

CARGO_ARGS=("$@")
rm -f "$OUT"/failed.* "$OUT"/times.new.*
pids=()
for ((i = 0; i < LANES; i++)); do
    # shellcheck disable=SC2086
    run_lane "$i" ${lane_targets[i]} &
    pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null; exit 130' INT TERM
for p in "${pids[@]}"; do wait "$p" || true; done

cat "$OUT"/times.new.* > "$TIMES" 2>/dev/null || true
if compgen -G "$OUT/failed.*" >/dev/null; then
    echo "test-lanes: failed: $(cat "$OUT"/failed.* | awk '{print $2}' | tr '\n' ' ')(logs in $OUT/)"
    exit 1
fi
echo "test-lanes: every target passed (${#targets[@]} targets, $LANES lanes)"
