# landfall: the two front-door commands are `make demo` and `make test`.
# Both install what they need (the BigQuery emulator's virtual environment
# under target/) and start the local emulator for their duration.

SHELL := /bin/bash
CARGO ?= cargo
WITH_EMULATOR := scripts/with-emulator.sh

# Tests and drills run with the `drill` feature (the harness of src/harness/
# plus failpoints and the fault proxy); the demo and the benchmark with the
# `harness` feature; production builds (`make build`, `cargo build --release`)
# contain none of it.
FEATURES := --features drill
ROUNDS ?= 100

.PHONY: all build demo test unit drill bench emulator-setup clean-emulator

all: build

build:
	@command -v $(CARGO) >/dev/null || { echo "make: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }
	$(CARGO) build --release --bins

# The whole pipeline on local parts (mock Kafka + BigQuery emulator), verified.
demo:
	@command -v $(CARGO) >/dev/null || { echo "make: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }
	$(CARGO) build --features harness --bins
	$(WITH_EMULATOR) target/debug/landfall demo

# Unit, property and end-to-end tests, the drills and the fuzz smoke
# (tests/fuzz_smoke.rs: the fuzz checks over stored inputs and mutations, in
# this build), every target of `cargo test --all-targets`, two test binaries
# at a time (scripts/test-lanes.sh). Each end-to-end test binary starts a
# BigQuery emulator of its own (tests/support; the venv is installed once,
# here), unless LANDFALL_BQ_ENDPOINT names one to share.
test:
	@command -v $(CARGO) >/dev/null || { echo "make: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }
	$(CARGO) build $(FEATURES) --tests --bins
	scripts/bq-emulator.sh setup
	scripts/test-lanes.sh $(FEATURES)

# Tests that need nothing running.
unit:
	$(CARGO) test $(FEATURES) --lib

# The full crash-recovery drill (`make drill ROUNDS=100 SEED=...`).
drill:
	$(CARGO) build $(FEATURES) --bins
	$(WITH_EMULATOR) target/debug/landfall drill --rounds $(ROUNDS) $(if $(SEED),--seed $(SEED))

# The benchmark (docs/performance.md): release build, local broker and
# emulator; prints the report and writes target/bench/results.json.
# BENCH_ARGS passes options through, e.g. BENCH_ARGS=--quick.
bench:
	@command -v $(CARGO) >/dev/null || { echo "make: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }
	$(CARGO) build --release --features harness --bins
	@mkdir -p target/bench
	$(WITH_EMULATOR) target/release/landfall bench --out target/bench/results.json $(BENCH_ARGS)

emulator-setup:
	scripts/bq-emulator.sh setup

clean-emulator:
	rm -rf target/bq-emulator-venv target/bq-emulator-run.*

# Fuzzing (cargo-fuzz, libFuzzer; the checks are fuzz/checks.rs) on the stable toolchain: RUSTC_BOOTSTRAP=1
# lets cargo-fuzz use the unstable flags it needs, `-s none` skips the
# sanitizer (which needs a nightly std). Seeds are in fuzz/seeds/<target>/,
# the growing corpus in fuzz/corpus/<target>/ (not checked in), crashes in
# fuzz/artifacts/. FUZZ_SECONDS per target (default 300). cargo-fuzz itself
# is installed, pinned, under target/tools/ (nothing outside the clone).
FUZZ_TARGETS := dms_decode wal_record merge_sql
FUZZ_SECONDS ?= 300
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ := target/tools/bin/cargo-fuzz

.PHONY: fuzz fuzz-smoke fuzz-build
$(CARGO_FUZZ):
	$(CARGO) install --locked --root target/tools --version $(CARGO_FUZZ_VERSION) cargo-fuzz

fuzz-build: $(CARGO_FUZZ)
	RUSTC_BOOTSTRAP=1 $(CARGO_FUZZ) fuzz build -s none

fuzz: fuzz-build
	@mkdir -p target/fuzz-logs
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t; \
	  log=target/fuzz-logs/$$t.log; \
	  if RUSTC_BOOTSTRAP=1 $(CARGO_FUZZ) fuzz run -s none $$t fuzz/corpus/$$t fuzz/seeds/$$t -- \
	       -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -print_final_stats=1 >$$log 2>&1; then \
	    echo "fuzz: $$t ok, $(FUZZ_SECONDS) s, $$(grep -o 'number_of_executed_units: *[0-9]*' $$log | grep -o '[0-9]*$$') runs (log: $$log)"; \
	  else \
	    tail -n 40 $$log >&2; echo "fuzz: $$t FAILED; the input is in fuzz/artifacts/$$t/, the log in $$log" >&2; exit 1; \
	  fi; \
	done

fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=25
