#!/usr/bin/env bash
# Simulcast against one stream per publisher, one build, in one run: the same
# rooms with and without `--simulcast` (publishers' top layer at the given
# rate, the others at a quarter and a sixteenth of it, as their pixels;
# subscribers ask for low, medium and high in turn),
# alternating, a fresh server for every run, server on CPU 0 and bots on
# CPU 1. The SFU then does per-subscriber layer selection and rewriting
# (sequence numbers, timestamps, VP8 picture IDs) on every packet.
#
#   ./loadtest/bench/simulcast.sh [switchboard]     (default target/release/switchboard)
#   ROUNDS=5 SECONDS_PER_RUN=8 ./loadtest/bench/simulcast.sh
#   COMPARE=estimation ./loadtest/bench/simulcast.sh
#
# Prints one line per run and, per round, the second mode's video tracks
# per server core as a ratio to the first's, and their median.
# COMPARE=layers (default): one stream per publisher, then simulcast.
# COMPARE=estimation: simulcast, then simulcast with the server estimating
# each subscriber's downlink (`downlink_estimation`: TWCC feedback, pacer,
# probes, and per-subscriber layer allocation).
set -euo pipefail
cd "$(dirname "$0")/../.."
binary=${1:-target/release/switchboard}
ROUNDS=${ROUNDS:-3}
RUN=${SECONDS_PER_RUN:-8}
# rooms:publishers:subscribers
SHAPE=${SHAPE:-10:4:4}
IFS=: read -r rooms pubs subs <<<"$SHAPE"
out=target/loadtest/simulcast
mkdir -p "$out"
cargo build --release -q -p loadtest
. loadtest/bench/server.sh
data=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill $server 2>/dev/null; rm -rf "$data"' EXIT

field() {
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r.get(sys.argv[2]) or 0)' "$1" "$2"
}

case ${COMPARE:-layers} in
  layers) modes=(single simulcast) ;;
  estimation) modes=(simulcast estimation) ;;
  *) echo "COMPARE is layers or estimation" >&2; exit 2 ;;
esac
ratios=()
for round in $(seq 1 "$ROUNDS"); do
  per_core=()
  for mode in "${modes[@]}"; do
    rm -rf "$data/db"
    if [ "$mode" = estimation ]; then
      export SWITCHBOARD_DOWNLINK_ESTIMATION=true
    else
      unset SWITCHBOARD_DOWNLINK_ESTIMATION
    fi
    start_switchboard "$binary" "$data/db" "$out/server-$mode.log"
    json="$out/$mode-$round.json"
    flag=()
    [ "$mode" != single ] && flag=(--simulcast)
    target/release/switchboard-loadtest --cpu 1 --server-cpu 0 room --url ws://$BENCH_HTTP/v1/rtc \
      --secret $BENCH_SECRET --rooms "$rooms" --publishers "$pubs" --subscribers "$subs" --video-kbps 500 \
      --ramp-up-seconds 3 --seconds "$RUN" --server-pid $server --max-loss-percent 100 \
      "${flag[@]}" --json "$json" >/dev/null || true
    kill $server && wait $server 2>/dev/null || true
    server=
    tracks=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1])).get("videoTracksPerServerCore") or 0))' "$json")
    per_core+=("$tracks")
    echo "round $round  $mode  tracks per core $tracks  loss $(field "$json" lossPercent) %  layers $(field "$json" videoPacketsByLayer)"
  done
  ratio=$(python3 -c "print(round(${per_core[1]} / max(${per_core[0]}, 1), 2))")
  ratios+=("$ratio")
  echo "round $round  ${modes[1]} / ${modes[0]}: $ratio"
done
echo "median ${modes[1]} / ${modes[0]}: $(printf '%s\n' "${ratios[@]}" | sort -n | sed -n "$(( (${#ratios[@]} + 1) / 2 ))p")"
