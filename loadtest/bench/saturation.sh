#!/usr/bin/env bash
# 1:1 calls towards saturation: the same `room` scenario at rising call
# counts, a fresh server each (pinned to CPU 0, the bots to CPU 1), one
# line per count: tracks, loss, latency, server CPU, tracks per core.
# Tracks per core at low load is extrapolated from partial CPU; this shows
# where it holds and what gives out first (here: the bots' core).
#
#   ./loadtest/bench/saturation.sh              # 200 300 400 calls
#   CALLS="100 200" SECONDS_PER_RUN=20 ./loadtest/bench/saturation.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${SECONDS_PER_RUN:-10}
read -r -a counts <<<"${CALLS:-200 300 400}"
out=target/loadtest/saturation
mkdir -p "$out"
cargo build --release -q -p sfu -p loadtest
. loadtest/bench/server.sh
data=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill $server 2>/dev/null; rm -rf "$data"' EXIT
for calls in "${counts[@]}"; do
  rm -rf "$data/db"
  start_switchboard target/release/switchboard "$data/db" "$out/server.log"
  target/release/switchboard-loadtest --cpu 1 --server-cpu 0 room --url ws://$BENCH_HTTP/v1/rtc \
    --secret $BENCH_SECRET --rooms "$calls" --publishers 2 --subscribers 0 --video-kbps 500 \
    --ramp-up-seconds 5 --seconds "$RUN" --server-pid $server --max-loss-percent 100 \
    --json "$out/$calls.json" >/dev/null || true
  kill $server && wait $server 2>/dev/null || true
  server=
  python3 - "$out/$calls.json" "$calls" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r.get("server") or {}
print(f"{sys.argv[2]} calls: {r['subscribedVideoTracks']} tracks, loss {r['lossPercent']:.3f} %, "
      f"p50/p99 {r['latencyMs']['p50']:.0f}/{r['latencyMs']['p99']:.0f} ms, server CPU {s.get('cpuSeconds')} s, "
      f"{round(r.get('videoTracksPerServerCore') or 0)} tracks per core")
PY
done
