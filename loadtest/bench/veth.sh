#!/usr/bin/env bash
# Runs a bench script (ab.sh, capacity.sh) with the server and the bots on
# the two ends of a veth pair, each end in a network namespace of its own
# (made here, gone with this script). Over loopback the kernel charges the
# receiver's work to the sender and hides what batching saves; over a veth
# pair each side's datagrams cross a real device queue. Needs root (or a
# user namespace that may make network namespaces).
#
#   ./loadtest/bench/veth.sh ./loadtest/bench/ab.sh /tmp/before target/release/switchboard
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 <bench script> [args...]" >&2; exit 2; }
if [ -z "${BENCH_VETH_INSIDE:-}" ]; then
  # The server's namespace: this script again, inside it.
  exec unshare -n env BENCH_VETH_INSIDE=1 "$0" "$@"
fi
ip link set lo up
# The bots' namespace, held open by a sleeper (bounded: a day at most).
unshare -n sleep 86400 &
bots_ns=$!
trap 'kill $bots_ns 2>/dev/null || true' EXIT
sleep 0.2
ip link add sb-server type veth peer name sb-bots
ip link set sb-bots netns "$bots_ns"
ip addr add 10.77.0.1/24 dev sb-server
ip link set sb-server up
nsenter -t "$bots_ns" -n sh -c 'ip link set lo up && ip addr add 10.77.0.2/24 dev sb-bots && ip link set sb-bots up'
# SERVER_NETNS_PID: where capacity.sh starts the baseline relay.
export BENCH_IP=10.77.0.1 BOTS_IP=10.77.0.2 BOTS_NETNS_PID=$bots_ns SERVER_NETNS_PID=$$
"$@"
