#!/usr/bin/env bash
# Relay throughput, side by side in one run: our relay (the `relay` example,
# no SFU) against coturn's turnserver, both on 127.0.0.1 with REST
# credentials and the same turnutils_uclient load, each server's CPU time
# read from /proc. Prints a Markdown table; rerun as is:
#
#   ./turn/bench/relay-vs-coturn.sh            # defaults below
#   CLIENTS=40 MSGS=2000 ./turn/bench/relay-vs-coturn.sh
#
# Needs Debian's coturn (turnserver, turnutils_uclient, turnutils_peer).
set -euo pipefail
cd "$(dirname "$0")/../.."

CLIENTS=${CLIENTS:-20}     # uclient sessions (one allocation each)
MSGS=${MSGS:-2000}         # messages per session
LEN=${LEN:-1000}           # bytes per message
INTERVAL=${INTERVAL:-2}    # ms between a session's messages
ROUNDS=${ROUNDS:-2}        # each server runs this often, alternating
SECRET=bench-secret-bench-secret-bench-secret
OURS_PORT=34780
COTURN_PORT=34790
PEER_PORT=34800

cargo build --release -q -p turn --example relay
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

turnutils_peer -L 127.0.0.1 -p $PEER_PORT >/dev/null 2>&1 &
pids+=($!)

TURN_LISTEN=127.0.0.1:$OURS_PORT TURN_SECRET=$SECRET TURN_ALLOW=127.0.0.1/32 \
  target/release/examples/relay >"$work/ours.log" 2>&1 &
ours=$!; pids+=($ours)
turnserver -n --listening-ip=127.0.0.1 --listening-port=$COTURN_PORT --relay-ip=127.0.0.1 \
  --use-auth-secret --static-auth-secret=$SECRET --realm=switchboard \
  --allow-loopback-peers --allowed-peer-ip=127.0.0.1 --no-tls --no-dtls --no-cli \
  --no-multicast-peers --log-file=stdout --no-stdout-log --simple-log \
  --min-port=50000 --max-port=59999 >"$work/coturn.log" 2>&1 &
coturn=$!; pids+=($coturn)
sleep 1

expiry=$(( $(date +%s) + 3600 ))
user="$expiry:bench"
pass=$(printf '%s' "$user" | openssl dgst -sha1 -hmac "$SECRET" -binary | base64)
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # name pid port
  local name=$1 pid=$2 port=$3 before after start end out
  before=$(cpu "$pid"); start=$(date +%s.%N)
  out=$(turnutils_uclient -u "$user" -w "$pass" -p "$port" -e 127.0.0.1 -r $PEER_PORT \
        -n "$MSGS" -l "$LEN" -m "$CLIENTS" -c -z "$INTERVAL" 127.0.0.1 2>&1)
  end=$(date +%s.%N); after=$(cpu "$pid")
  local sent recv lost
  sent=$(grep -o 'tot_send_msgs=[0-9]*' <<<"$out" | tail -1 | cut -d= -f2)
  recv=$(grep -o 'tot_recv_msgs=[0-9]*' <<<"$out" | tail -1 | cut -d= -f2)
  lost=$(grep -o 'Total lost packets [0-9]* ([0-9.]*%)' <<<"$out" | tail -1 | grep -o '([0-9.]*' | tr -d '(')
  awk -v n="$name" -v s="${sent:-0}" -v r="${recv:-0}" -v l="${lost:-100}" -v t0="$start" -v t1="$end" \
      -v c0="$before" -v c1="$after" -v hz="$ticks" -v len="$LEN" 'BEGIN {
    wall = t1 - t0; cpu = (c1 - c0) / hz; relayed = s + r;
    printf "| %s | %d | %.0f | %.1f | %s | %.2f | %.0f |\n", n, relayed, relayed / wall,
      relayed * len * 8 / wall / 1e6, l, cpu, (cpu > 0 ? relayed / cpu : 0) }'
}

echo "uclient: $CLIENTS sessions x $MSGS messages x $LEN bytes, every $INTERVAL ms (relayed = both directions)"
echo
echo "| server | packets relayed | packets/s | Mbit/s | loss % | server CPU s | packets per CPU-second |"
echo "|---|---|---|---|---|---|---|"
for _ in $(seq "$ROUNDS"); do
  run switchboard "$ours" $OURS_PORT
  run coturn "$coturn" $COTURN_PORT
done
