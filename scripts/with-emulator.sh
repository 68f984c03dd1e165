#!/usr/bin/env bash
# Run a command against a throw-away local BigQuery emulator.
#
#   scripts/with-emulator.sh CMD [ARGS...]
#
# Sets up the emulator venv (scripts/bq-emulator.sh setup), starts an emulator on free ports
# with a fresh data dir under <repo>/target/, exports
#   LANDFALL_BQ_ENDPOINT=http://127.0.0.1:PORT/bigquery/v2   LANDFALL_BQ_PROJECT=landfall-local
# runs CMD, then always stops the emulator and deletes the data dir. Exits with CMD's status.
# Works from any cwd (CMD runs in the caller's cwd).
set -euo pipefail

[[ $# -ge 1 ]] || { echo "usage: $0 CMD [ARGS...]" >&2; exit 2; }

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SCRIPT_DIR")"
EMU="$SCRIPT_DIR/bq-emulator.sh"

"$EMU" setup

mkdir -p "$REPO_DIR/target"
RUN_DIR="$(mktemp -d "$REPO_DIR/target/bq-emulator-run.XXXXXX")"
cleanup() {
    "$EMU" stop "$RUN_DIR/emu" || true
    rm -rf "$RUN_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

"$EMU" start "$RUN_DIR/emu" "$RUN_DIR/endpoint"
export LANDFALL_BQ_ENDPOINT="$(cat "$RUN_DIR/endpoint")"
export LANDFALL_BQ_PROJECT=landfall-local

# CMD runs as a child we wait for, so that a signal to this script is handled at once:
# it is passed on to CMD (as TERM: background children ignore INT), then cleanup runs.
"$@" <&0 &
child=$!
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 130' INT
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 143' TERM HUP
status=0
wait "$child" || status=$?
exit "$status"
