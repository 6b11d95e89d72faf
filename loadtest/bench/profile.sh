#!/usr/bin/env bash
# Where the server's CPU goes in one scenario: the release `switchboard` as
# capacity.sh runs it (one engine thread pinned to CPU 0, the bots on CPU 1),
# sampled by `perf record` over the measured window; prints the share of
# samples per binary (the kernel's socket and device work against ours) and
# the top functions by their own time.
#
#   ./loadtest/bench/veth.sh ./loadtest/bench/profile.sh "1:1-calls 100 2 0"
#   ./loadtest/bench/veth.sh ./loadtest/bench/profile.sh "1x200 1 1 200"
#
# (The scenario reads as in capacity.sh: name, rooms, publishers,
# subscribers.) Keeps target/loadtest/<name>.perf for `perf report`.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -eq 1 ] || { echo "usage: $0 \"<name> <rooms> <publishers> <subscribers>\"" >&2; exit 2; }
read -r name rooms pubs subs <<<"$1"
RUN=${SECONDS_PER_RUN:-10}
TOP=${TOP:-30}
out=target/loadtest
mkdir -p "$out"

cargo build --release -q -p sfu -p loadtest
. loadtest/bench/server.sh
data=$(mktemp -d)
start_switchboard target/release/switchboard "$data" "$out/server.log"
trap 'kill $server 2>/dev/null || true; rm -rf "$data"' EXIT

bots room --url ws://$BENCH_HTTP/v1/rtc --secret $BENCH_SECRET --rooms "$rooms" --publishers "$pubs" \
   --subscribers "$subs" --video-kbps 500 --ramp-up-seconds 3 --seconds "$RUN" \
   --server-pid $server --max-loss-percent 100 --json "$out/$name-profiled.json" >/dev/null &
bots_pid=$!
# After the ramp-up, for most of the measured window.
sleep 4
perf record -q -F 999 -p $server -o "$out/$name.perf" -- sleep $((RUN - 2)) 2>/dev/null
wait $bots_pid || true

echo "## $name: samples per binary"
perf report -i "$out/$name.perf" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]'
echo "## $name: top $TOP functions (own time)"
perf report -i "$out/$name.perf" --no-children --sort dso,symbol --stdio 2>/dev/null \
  | grep -E '^ +[0-9]' | head -n "$TOP"
