#!/usr/bin/env bash
# The numbers in BENCHMARKS.md, rerunnable: a release `switchboard` pinned to
# CPU 0 (one engine thread), the bots pinned to CPU 1 (the tool's --cpu and
# --server-cpu), each scenario through the SFU, then (over veth, where Janus
# can run) through Debian's Janus videoroom on the same CPU, then through the
# bare-UDP baseline (its relay on the server's CPU) with the same pattern.
# Every run has a server of its own, started for it.
#
#   ./loadtest/bench/capacity.sh                 # all scenarios
#   SECONDS_PER_RUN=20 ./loadtest/bench/capacity.sh
#   ./loadtest/bench/veth.sh ./loadtest/bench/capacity.sh   # over a veth pair
#
# (The name "1:1-calls 100 2 0" reads: 100 rooms, 2 publishers, 0 subscribers.)
#
# Writes target/loadtest/<scenario>-{sfu,janus,baseline}.json and prints a
# Markdown table. JANUS=0 leaves Janus out.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUN=${SECONDS_PER_RUN:-10}
KBPS=${VIDEO_KBPS:-500}
SERVER_CPU=${SERVER_CPU:-0}
BOTS_CPU=${BOTS_CPU:-1}
out=target/loadtest
mkdir -p "$out"

cargo build --release -q -p sfu -p loadtest
. loadtest/bench/server.sh
data=$(mktemp -d)
server= janus=
trap 'kill $server $janus 2>/dev/null || true; rm -rf "$data"' EXIT
kinds="sfu baseline"
# Janus needs a real interface (veth.sh) and Debian's package.
if [ "${JANUS:-1}" = 1 ] && [ "$BENCH_IP" != 127.0.0.1 ] && command -v janus >/dev/null; then
  kinds="sfu janus baseline"
fi

# name rooms publishers subscribers (SCENARIOS="a;b" picks others)
scenarios=(
  "1:1-calls 25 2 0"
  "1:1-calls 100 2 0"
  "4-party-rooms 6 4 0"
  "4-party-rooms 20 4 0"
  "1x200 1 1 200"
)
if [ -n "${SCENARIOS:-}" ]; then IFS=';' read -r -a scenarios <<<"$SCENARIOS"; fi

echo "| scenario | run | video tracks | loss % | latency p50 / p99 ms | server CPU s | video tracks per server core | packets per server CPU-second |"
echo "|---|---|---|---|---|---|---|---|"
for s in "${scenarios[@]}"; do
  read -r name rooms pubs subs <<<"$s"
  rm -f "$out/$name"-*.json
  shape=(--rooms "$rooms" --publishers "$pubs" --subscribers "$subs" --video-kbps "$KBPS")
  start_switchboard target/release/switchboard "$data/sfu" "$out/server.log"
  bots room --url ws://$BENCH_HTTP/v1/rtc --secret $BENCH_SECRET "${shape[@]}" --ramp-up-seconds 3 \
     --seconds "$RUN" --server-pid $server --max-loss-percent 100 --json "$out/$name-sfu.json" >/dev/null || true
  kill $server; wait $server 2>/dev/null || true; server=
  rm -rf "$data/sfu"
  if [[ $kinds == *janus* ]]; then
    start_janus "$data/janus" "$out/janus.log"
    bots janus --url $BENCH_JANUS_WS "${shape[@]}" --ramp-up-seconds 3 --seconds "$RUN" \
       --server-pid $janus --max-loss-percent 100 --json "$out/$name-janus.json" >/dev/null || true
    kill $janus; wait $janus 2>/dev/null || true; janus=
  fi
  # Over veth (`veth.sh`) the relay stands where the server does: its
  # address and its network namespace.
  bots baseline "${shape[@]}" --seconds "$RUN" ${SERVER_NETNS_PID:+--relay-ip $BENCH_IP --relay-netns-pid $SERVER_NETNS_PID} \
     --json "$out/$name-baseline.json" >/dev/null || true
  for kind in $kinds; do
    python3 - "$out/$name-$kind.json" "$name" "$kind" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
s = r.get("server") or {}
f = lambda v, d=0: ("%." + str(d) + "f") % v if v is not None else "-"
print(f"| {sys.argv[2]} | {sys.argv[3]} | {r['subscribedVideoTracks']} | {r['lossPercent']:.3f} | "
      f"{r['latencyMs']['p50']:.2f} / {r['latencyMs']['p99']:.2f} | {f(s.get('cpuSeconds'), 2)} | "
      f"{f(r.get('videoTracksPerServerCore'))} | {f(r.get('packetsPerServerCpuSecond'))} |")
EOF
  done
done
