#!/usr/bin/env bash
# Runs each cargo fuzz target in fuzz/ for a bounded time, one after the other, and prints a
# summary. Not part of `npm test`: it needs the nightly toolchain and cargo-fuzz
# (`rustup toolchain install nightly && cargo install cargo-fuzz`).
#
#   scripts/fuzz.sh [seconds-per-target] [target...]    (default: 600 seconds, every target)
#
# Targets (fuzz/fuzz_targets/):
#   values         arbitrary bytes into berth_proto::values (check_args/check_params/check_value)
#   json_ingress   the HTTP ingress: bodies through parse_body, results through cbor_to_json
#   attach_frames  Attach frames through the server's handling of container messages
#
# Exits non-zero if a target crashed (a panic, a stack overflow, out of memory, a hang over
# 10 s); the input that did it is in fuzz/artifacts/<target>/ (replay it with
# `cargo +nightly fuzz run -s none -a <target> <file>` in fuzz/). New inputs the fuzzer finds
# go to fuzz/corpus/<target>/ (ignored by git, except the seed-* files), so later runs start
# from them. Logs: fuzz/logs/<target>.log.
#
# -s none: the targets are safe Rust, so AddressSanitizer would only slow them; libFuzzer still
# catches panics, stack overflows and excess memory. -a keeps debug assertions and overflow
# checks on.
set -uo pipefail

cd "$(dirname "$0")/../fuzz"
secs="${1:-600}"
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(values json_ingress attach_frames)

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "scripts/fuzz.sh: needs cargo-fuzz on the nightly toolchain:" >&2
  echo "  rustup toolchain install nightly && cargo install cargo-fuzz" >&2
  exit 2
fi

mkdir -p logs
cargo +nightly fuzz build -s none -a 2>&1 | tail -1
failed=0
summary=()
for t in "${targets[@]}"; do
  echo "== $t: ${secs}s"
  log="logs/$t.log"
  cargo +nightly fuzz run -s none -a "$t" "corpus/$t" -- \
    -max_total_time="$secs" -max_len=65536 -timeout=10 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  runs=$(grep -oE '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 | awk '{print $2 " execs in " $5 " s"}')
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -1)
  if [ $rc -eq 0 ]; then
    line="ok     $t: ${runs:-?} ($cov)"
  else
    failed=1
    artifact=$(grep -oE 'artifacts/[^ ]+/(crash|oom|timeout|leak|slow-unit)-[0-9a-f]+' "$log" | head -1)
    line="CRASH  $t: ${artifact:-see fuzz/$log} ($cov)"
    grep -m1 -A3 -E 'panicked|ERROR: libFuzzer' "$log" | sed 's/^/       /'
  fi
  echo "$line"
  summary+=("$line")
done
echo
echo "== fuzz summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
exit $failed
