#!/usr/bin/env bash
# Runs the fuzz targets under libFuzzer, each for a bounded time, then
# minimizes its corpus (what is committed is replayed by `cargo test -p
# fuzz` on stable). A crash is copied into the corpus as `crash-*` so the
# suite fails until it is fixed.
#
#   fuzz/run.sh [seconds per target] [target...]
#
# Needs the nightly toolchain (sanitizer coverage) and cargo-fuzz
# (`cargo install cargo-fuzz`); neither is in CI: a fresh machine cannot
# fetch a nightly toolchain.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(signaling_codec engine_commands engine_datagram turn_relay turn_framing push_payload call_api)
failed=0
for target in "${targets[@]}"; do
  corpus="corpus/$target"
  artifacts="libfuzzer/artifacts/$target"
  mkdir -p "$corpus" "$artifacts"
  before=$(ls "$corpus" | wc -l)
  started=$(date +%s)
  if ! cargo +nightly fuzz run --fuzz-dir libfuzzer "$target" "$corpus" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
      -artifact_prefix="$artifacts/" -print_final_stats=1 2>"libfuzzer/$target.log"; then
    failed=1
    for crash in "$artifacts"/crash-* "$artifacts"/timeout-* "$artifacts"/oom-*; do
      [ -e "$crash" ] && cp "$crash" "$corpus/"
    done
    echo "$target: FOUND A CRASH (see libfuzzer/$target.log; copied into $corpus)"
  fi
  # Keep only inputs that add coverage.
  cargo +nightly fuzz cmin --fuzz-dir libfuzzer "$target" "$corpus" >/dev/null 2>&1 || true
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "libfuzzer/$target.log" | grep -o '[0-9]*$' || echo "?")
  echo "$target: $(( $(date +%s) - started )) s, $runs executions, corpus $before -> $(ls "$corpus" | wc -l) inputs"
done
exit "$failed"
