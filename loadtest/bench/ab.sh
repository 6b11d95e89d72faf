#!/usr/bin/env bash
# Two `switchboard` builds compared in one run: the same scenarios, the builds
# alternating, a fresh server for every run (leftover participants of the
# previous run would still cost CPU), server on CPU 0 and bots on CPU 1.
# On a shared, noisy machine a change of 10-30 % only shows this way.
#
#   cargo build --release -p sfu -p loadtest && cp target/release/switchboard /tmp/before
#   (change, rebuild)
#   ./loadtest/bench/ab.sh /tmp/before target/release/switchboard
#   ROUNDS=5 SECONDS_PER_RUN=8 ./loadtest/bench/ab.sh A B
#   ./loadtest/bench/veth.sh ./loadtest/bench/ab.sh A B   # over a veth pair
#
# Prints one line per run and, per scenario, B's video tracks per server core
# as a ratio to A's: every round's ratio and their median.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -eq 2 ] || { echo "usage: $0 <switchboard A> <switchboard B>" >&2; exit 2; }
builds=("$1" "$2")
ROUNDS=${ROUNDS:-3}
RUN=${SECONDS_PER_RUN:-8}
# name:rooms:publishers:subscribers[:simulcast] (the last: publishers send
# three layers and subscribers ask for one each by seat, as simulcast.sh)
read -r -a scenarios <<<"${SCENARIOS:-1x200:1:1:200 4-party-rooms:20:4:0 1to1-calls:100:2:0}"
out=target/loadtest/ab
mkdir -p "$out"
cargo build --release -q -p loadtest
. loadtest/bench/server.sh
data=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill $server 2>/dev/null; rm -rf "$data"' EXIT

tracks_per_core() {
  python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1])).get("videoTracksPerServerCore") or 0))' "$1"
}

for round in $(seq 1 "$ROUNDS"); do
  for s in "${scenarios[@]}"; do
    IFS=: read -r name rooms pubs subs layers <<<"$s"
    for side in 0 1; do
      rm -rf "$data/db"
      start_switchboard "${builds[$side]}" "$data/db" "$out/server-$side.log"
      json="$out/$name-$round-$side.json"
      bots room --url ws://$BENCH_HTTP/v1/rtc \
        --secret $BENCH_SECRET --rooms "$rooms" --publishers "$pubs" --subscribers "$subs" --video-kbps 500 \
        --ramp-up-seconds 3 --seconds "$RUN" --server-pid $server --max-loss-percent 100 ${layers:+--$layers} \
        --json "$json" >/dev/null || true
      kill $server && wait $server 2>/dev/null || true
      server=
      echo "round $round  $name  build $([ $side = 0 ] && echo A || echo B)  tracks per core $(tracks_per_core "$json")"
    done
  done
done

for s in "${scenarios[@]}"; do
  IFS=: read -r name _ <<<"$s"
  python3 - "$out" "$name" "$ROUNDS" <<'EOF'
import json, statistics, sys
out, name, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
per_core = lambda r, side: json.load(open(f"{out}/{name}-{r}-{side}.json")).get("videoTracksPerServerCore") or 0
ratios = [per_core(r, 1) / per_core(r, 0) for r in range(1, rounds + 1) if per_core(r, 0)]
if ratios:
    print(f"{name}: B / A = {statistics.median(ratios):.2f}x (rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
EOF
done
