#!/usr/bin/env bash
# Runs every cargo-fuzz target in tests/fuzz for a bounded time each and
# fails on any crash, panic, hang or leak of the harness.
#   bash tests/fuzz.sh                 # every target, 60 s each
#   CHATD_FUZZ_SECS=600 bash tests/fuzz.sh ring
# On the stable toolchain: no sanitizer (`-s none`); the targets check their
# properties with assertions, and Rust's bounds checks catch out-of-bounds
# reads. The seed corpus is tests/fuzz/corpus/TARGET (kept small, in git);
# what a run finds goes to target/fuzz/corpus/TARGET, a crash's input to
# target/fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${CHATD_FUZZ_SECS:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked
fuzz=(cargo fuzz run -s none --fuzz-dir tests/fuzz --target-dir target/fuzz)

targets=("$@")
if ((${#targets[@]} == 0)); then targets=($(cargo fuzz list --fuzz-dir tests/fuzz)); fi
cargo fuzz build -s none --fuzz-dir tests/fuzz --target-dir target/fuzz
for t in "${targets[@]}"; do
  mkdir -p "target/fuzz/corpus/$t" "target/fuzz/artifacts/$t"
  log="target/fuzz/$t.log"
  if "${fuzz[@]}" "$t" "target/fuzz/corpus/$t" "tests/fuzz/corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -print_final_stats=1 \
      -artifact_prefix="target/fuzz/artifacts/$t/" >"$log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 || true)
    echo "fuzz $t: ok, ${runs:-?} runs in ${secs} s, $cov"
  else
    tail -n 40 "$log" >&2
    echo "fuzz $t: FAILED; reproduce with: ${fuzz[*]} $t target/fuzz/artifacts/$t/<crash file>" >&2
    exit 1
  fi
done
