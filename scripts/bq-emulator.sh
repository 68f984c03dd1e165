#!/usr/bin/env bash
# Local BigQuery emulator (PyPI package `local-bigquery`) for tests and the demo.
#
#   scripts/bq-emulator.sh setup                     # venv + DuckDB extensions (idempotent)
#   scripts/bq-emulator.sh start DATA_DIR PORT_FILE  # start on free ports; PORT_FILE gets the v2 base URL
#   scripts/bq-emulator.sh stop DATA_DIR             # stop the emulator started with DATA_DIR
#
# Env: LANDFALL_EMULATOR_VENV (default <repo>/target/bq-emulator-venv),
#      LANDFALL_PYTHON (a Python 3.13-3.15 to build the venv with; searched for otherwise).
# local-bigquery 0.4.0 declares Requires-Python >=3.13,<3.16 (not 3.12, whatever older notes say).
# The emulator is started through scripts/bq_emulator_launcher.py, which lets it accept
# gzip'd insertAll bodies sent as application/octet-stream (as gcp-bigquery-client does).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SCRIPT_DIR")"
REQS="$SCRIPT_DIR/requirements-local-bigquery.txt"
VENV="${LANDFALL_EMULATOR_VENV:-$REPO_DIR/target/bq-emulator-venv}"
STAMP="$VENV/.landfall-setup-stamp"
PROJECT="landfall-local"
DUCKDB_VERSION="v1.5.5"
DUCKDB_EXTENSIONS=(ducklake spatial icu)

die() { echo "bq-emulator: error: $*" >&2; exit 1; }
log() { echo "bq-emulator: $*" >&2; }

# Print the path of a Python 3.13-3.15, or fail naming every place that was searched.
find_python() {
    local candidates=() searched=() c
    [[ -n "${LANDFALL_PYTHON:-}" ]] && candidates+=("$LANDFALL_PYTHON")
    for c in python3.15 python3.14 python3.13 python3; do
        command -v "$c" >/dev/null 2>&1 && candidates+=("$(command -v "$c")")
    done
    local pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
    for c in "$pyenv_root"/versions/3.1[3-5]*/bin/python3 /root/.pyenv/versions/3.1[3-5]*/bin/python3; do
        [[ -x "$c" ]] && candidates+=("$c")
    done
    for c in "${candidates[@]}"; do
        searched+=("$c")
        # pyenv shims exist for versions that are not active: running them is the only real check.
        if "$c" -c 'import sys; sys.exit(0 if (3, 13) <= sys.version_info[:2] < (3, 16) else 1)' >/dev/null 2>&1; then
            echo "$c"; return 0
        fi
    done
    die "no Python 3.13-3.15 found (local-bigquery needs >=3.13,<3.16). Searched: \$LANDFALL_PYTHON," \
        "python3.15/python3.14/python3.13/python3 on PATH, $pyenv_root/versions/3.1[3-5]*/bin/python3 (tried: ${searched[*]:-none}). Install one (e.g. pyenv install 3.13) or set LANDFALL_PYTHON."
}

requirements_hash() { sha256sum "$REQS" | cut -d' ' -f1; }

# Copy the DuckDB extension wheels' binaries where DuckDB looks (else it tries to download them).
install_extensions() {
    local dest="$HOME/.duckdb/extensions/$DUCKDB_VERSION/linux_amd64" name src
    mkdir -p "$dest"
    for name in "${DUCKDB_EXTENSIONS[@]}"; do
        src="$(ls "$VENV"/lib/python3*/site-packages/duckdb_extension_"$name"/extensions/"$DUCKDB_VERSION"/"$name".duckdb_extension 2>/dev/null | head -n1 || true)"
        [[ -n "$src" ]] || die "DuckDB extension '$name' not found in $VENV (expected package duckdb_extension_$name==${DUCKDB_VERSION#v}); rerun after removing $STAMP"
        # Never overwrite in place: a running emulator has the file mapped and would crash.
        # Skip identical files; otherwise copy beside it and rename over (new inode).
        if ! cmp -s "$src" "$dest/$name.duckdb_extension"; then
            cp "$src" "$dest/.$name.duckdb_extension.$$"
            mv -f "$dest/.$name.duckdb_extension.$$" "$dest/$name.duckdb_extension"
        fi
    done
}

cmd_setup() {
    [[ -f "$REQS" ]] || die "requirements file missing: $REQS"
    local want; want="$(requirements_hash)"
    mkdir -p "$(dirname "$VENV")"
    # Serialise concurrent setups (e.g. two test runs starting at once).
    if command -v flock >/dev/null 2>&1; then exec 9>"$VENV.lock"; flock 9; fi
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/python" ]]; then
        log "venv up to date: $VENV"
    else
        local py; py="$(find_python)"
        log "creating venv $VENV with $py ($("$py" --version 2>&1))"
        # A stale or half-finished venv is rebuilt from scratch, but never delete a non-venv dir.
        if [[ -e "$VENV" && ! -f "$VENV/pyvenv.cfg" && -n "$(ls -A "$VENV" 2>/dev/null)" ]]; then
            die "$VENV exists and is not a Python venv; refusing to delete it (check LANDFALL_EMULATOR_VENV)"
        fi
        rm -rf "$VENV"
        "$py" -m venv "$VENV" || die "'$py -m venv' failed (is the venv module installed?)"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$REQS" \
            || die "pip install -r $REQS failed (PyPI reachable?)"
        echo "$want" > "$STAMP"   # written last: an interrupted install has no stamp
    fi
    install_extensions
    [[ -f "$SCRIPT_DIR/bq_emulator_launcher.py" ]] || die "missing $SCRIPT_DIR/bq_emulator_launcher.py"
}

free_port() {
    "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

cmd_start() {
    [[ $# -eq 2 ]] || die "usage: $0 start DATA_DIR PORT_FILE"
    local data_dir="$1" port_file="$2"
    [[ -x "$VENV/bin/python" && -f "$STAMP" ]] || die "emulator venv not set up at $VENV: run '$0 setup' first"
    mkdir -p "$data_dir"
    data_dir="$(cd "$data_dir" && pwd)"
    [[ -z "$(ls -A "$data_dir")" ]] || die "data dir $data_dir is not empty (use a fresh one per run)"
    local port grpc_port
    port="$(free_port)"; grpc_port="$(free_port)"
    while [[ "$grpc_port" == "$port" ]]; do grpc_port="$(free_port)"; done
    local url_base="http://127.0.0.1:$port"
    "$VENV/bin/python" "$SCRIPT_DIR/bq_emulator_launcher.py" \
        --host 127.0.0.1 --port "$port" --grpc-port "$grpc_port" \
        --project "$PROJECT" --data-dir "$data_dir/data" \
        >"$data_dir/emulator.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" > "$data_dir/emulator.pid"
    local deadline=$((SECONDS + 60))
    until curl -fsS -o /dev/null "$url_base/bigquery/v2/projects/$PROJECT/datasets" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 40 "$data_dir/emulator.log" >&2 || true
            die "emulator (pid $pid) exited during start-up; log: $data_dir/emulator.log"
        fi
        if (( SECONDS >= deadline )); then
            tail -n 40 "$data_dir/emulator.log" >&2 || true
            kill "$pid" 2>/dev/null || true
            die "emulator not ready on port $port after 60 s; log: $data_dir/emulator.log"
        fi
        sleep 0.2
    done
    echo "$url_base/bigquery/v2" > "$port_file"
    log "ready: $url_base/bigquery/v2 (grpc 127.0.0.1:$grpc_port, pid $pid, project $PROJECT)"
}

cmd_stop() {
    [[ $# -eq 1 ]] || die "usage: $0 stop DATA_DIR"
    local pidfile="$1/emulator.pid" pid i
    [[ -f "$pidfile" ]] || { log "no pid file at $pidfile; nothing to stop"; return 0; }
    pid="$(cat "$pidfile")"
    # A stale pid file must not kill an unrelated process that got the same pid.
    if grep -qs bq_emulator_launcher "/proc/$pid/cmdline" && kill "$pid" 2>/dev/null; then
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$pidfile"
}

case "${1:-}" in
    setup) shift; cmd_setup "$@" ;;
    start) shift; cmd_start "$@" ;;
    stop)  shift; cmd_stop "$@" ;;
    *) echo "usage: $0 {setup | start DATA_DIR PORT_FILE | stop DATA_DIR}" >&2; exit 2 ;;
esac
