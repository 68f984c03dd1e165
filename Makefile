# landfall: the two front-door commands are `make demo` and `make test`.
# Both install what they need (the BigQuery emulator's virtual environment
# under target/) and start the local emulator for their duration.

CARGO ?= cargo
WITH_EMULATOR := scripts/with-emulator.sh

# Tests and drills run with the `drill` feature (failpoints, fault proxy,
# out-of-process mock Kafka); production builds (`cargo build --release`) do not.
FEATURES := --features drill
ROUNDS ?= 100

.PHONY: all build demo test unit drill emulator-setup clean-emulator

all: build

build:
	@command -v $(CARGO) >/dev/null || { echo "make: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }
	$(CARGO) build --bins

# The whole pipeline on local parts (mock Kafka + BigQuery emulator), verified.
demo: build
	$(WITH_EMULATOR) target/debug/landfall demo

# Unit, property and end-to-end tests (the latter against the emulator).
test:
	@command -v $(CARGO) >/dev/null || { echo "make: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }
	$(CARGO) build $(FEATURES) --tests --bins
	$(WITH_EMULATOR) $(CARGO) test $(FEATURES) --all-targets

# Tests that need nothing running.
unit:
	$(CARGO) test $(FEATURES) --lib

# The full crash-recovery drill (`make drill ROUNDS=100 SEED=...`).
drill:
	$(CARGO) build $(FEATURES) --bins
	$(WITH_EMULATOR) target/debug/landfall drill --rounds $(ROUNDS) $(if $(SEED),--seed $(SEED))

emulator-setup:
	scripts/bq-emulator.sh setup

clean-emulator:
	rm -rf target/bq-emulator-venv target/bq-emulator-run.*

# Fuzzing (cargo-fuzz, libFuzzer) on the stable toolchain: RUSTC_BOOTSTRAP=1
# lets cargo-fuzz use the unstable flags it needs, `-s none` skips the
# sanitizer (which needs a nightly std). Seeds are in fuzz/seeds/<target>/,
# the growing corpus in fuzz/corpus/<target>/ (not checked in), crashes in
# fuzz/artifacts/. FUZZ_SECONDS per target (default 300).
FUZZ_TARGETS := dms_decode wal_record merge_sql
FUZZ_SECONDS ?= 300

.PHONY: fuzz fuzz-smoke fuzz-tool
fuzz-tool:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked

fuzz: fuzz-tool
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t; \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -s none $$t fuzz/corpus/$$t fuzz/seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 || exit 1; \
	done

fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=25
