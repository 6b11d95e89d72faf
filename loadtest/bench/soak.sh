#!/usr/bin/env bash
# The soak: one `switchboard` under steady churn for a long time, sampled
# every minute. Each minute runs, at once, participants joining, publishing
# and leaving rooms (`churn`); 1:1 call lifecycles over the call API with
# declines, timeouts and accept races (`calls`), whose callees also have an
# iPhone or an Android phone rung and rung off by push through the APNs and
# FCM stand-ins, and whose call events go to a webhook receiver; and two
# TURN clients (coturn's `turnutils_uclient`) relaying through the embedded
# TURN server to an echo peer. Each sample reads the server's RSS and open
# descriptors (/proc) and its rooms, participants, signaling connections,
# TURN allocations, queued call events, event deliveries, pushes accepted
# by the providers and TURN allocations made (/metrics).
#
#   ./loadtest/bench/soak.sh [seconds]        # default 3600
#   SWITCHBOARD=target/debug/switchboard LOADTEST=target/debug/switchboard-loadtest \
#     PUSH_STANDINS=target/debug/examples/push_standins \
#     SAMPLE_SECONDS=20 ./loadtest/bench/soak.sh 120     # what CI runs
#
# Fails (exit 1) unless, after the load stops and the reconnect grace
# passes, every gauge is back to zero and the descriptors to where they
# started (+8), unless call events were delivered, pushes accepted and TURN
# allocations made with no push failed and no TURN client failing, and
# unless RSS after warm-up (the first third) grows by at most
# SOAK_RSS_GROWTH_PERCENT (default 25) or 16 MiB, whichever is more.
# Prints a Markdown table of the samples. Needs Debian's coturn clients.
set -euo pipefail
cd "$(dirname "$0")/../.."

total=${1:-3600}
every=${SAMPLE_SECONDS:-60}
growth=${SOAK_RSS_GROWTH_PERCENT:-25}
binary=${SWITCHBOARD:-target/release/switchboard}
loadtest=${LOADTEST:-target/release/switchboard-loadtest}
standins=${PUSH_STANDINS:-target/release/examples/push_standins}
if [ -z "${SWITCHBOARD:-}" ]; then
  cargo build --release -q -p sfu -p loadtest
  cargo build --release -q -p control --example push_standins
fi

http=127.0.0.1:${SOAK_HTTP_PORT:-27980}
# The app backend's call-event webhook endpoint: takes every event (each
# call's events go through the store's queue and the delivery task).
hooks_port=${SOAK_WEBHOOK_PORT:-27984}
secret=soak-secret-soak-secret-soak-secret-01
api_key=soak:soak-key-secret-soak-key-secret-0123
grace=2
turn_port=${SOAK_TURN_PORT:-27986}
peer_port=${SOAK_PEER_PORT:-27988}
turn_secret=soak-turn-secret-soak-turn-secret-01
turn_lifetime=20
data=$(mktemp -d)
mkdir "$data/push"
"$standins" "$data/push" >"$data/standins.log" 2>&1 &
push_standins=$!
turnutils_peer -L 127.0.0.1 -p "$peer_port" >/dev/null 2>&1 &
peer=$!
for _ in $(seq 1 100); do
  [ -e "$data/push/ready" ] && break
  sleep 0.1
done
[ -e "$data/push/ready" ] || { echo "the push stand-ins did not start:"; cat "$data/standins.log"; kill $push_standins $peer; exit 1; }
# The stand-ins' [apns] and [fcm], and TURN relaying to the loopback echo
# peer (loopback peers are denied unless allowed). uclient leaves half its
# allocations to expire: a 20 s lifetime cap reaps them within the run, so
# the soak also proves abandoned allocations are freed.
{
  cat "$data/push/push.toml"
  printf '[turn]\nallowed_peers = ["127.0.0.1/32"]\nmax_allocation_lifetime_seconds = %d\n' "$turn_lifetime"
} >"$data/config.toml"
python3 -c '
import http.server, sys
class Take(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Take).serve_forever()
' "$hooks_port" >"$data/webhooks.log" 2>&1 &
hooks=$!
SWITCHBOARD_EVENT_WEBHOOK_URL=http://127.0.0.1:$hooks_port/events \
SWITCHBOARD_EVENT_WEBHOOK_SECRETS=whsec_c29hay1ldmVudC13ZWJob29rLXNlY3JldC0xMjM0 \
SWITCHBOARD_HTTP_LISTEN=$http SWITCHBOARD_RTC_UDP_BIND=127.0.0.1:${SOAK_UDP_PORT:-27982} \
SWITCHBOARD_ANNOUNCE_IPS=127.0.0.1 SWITCHBOARD_TURN_UDP_LISTEN=127.0.0.1:$turn_port \
SWITCHBOARD_TURN_TCP_LISTEN=127.0.0.1:$turn_port SWITCHBOARD_TURN_SECRET=$turn_secret \
SWITCHBOARD_CALL_TOKEN_SECRET=$secret \
SWITCHBOARD_API_KEY=$api_key SWITCHBOARD_RECONNECT_GRACE_SECONDS=$grace \
SWITCHBOARD_RING_TIMEOUT_SECONDS=6 SWITCHBOARD_CALL_CREATES_PER_MINUTE=100000 \
SWITCHBOARD_CALLS_TO_ONE_USER_PER_MINUTE=100000 SWITCHBOARD_API_REQUESTS_PER_SECOND=100000 \
SWITCHBOARD_DATA_DIR="$data" RUST_LOG=warn "$binary" --config "$data/config.toml" >"$data/server.log" 2>&1 &
server=$!
trap 'kill $server $hooks $push_standins $peer 2>/dev/null || true; rm -rf "$data"' EXIT

# One metric's value (summed over its label sets, but those containing the
# optional second argument), by a bare HTTP request.
metric() {
  local body
  exec 3<>"/dev/tcp/${http%:*}/${http#*:}"
  printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
  body=$(cat <&3)
  exec 3<&-
  awk -v name="$1" -v skip="${2:-}" '($1 == name || index($1, name "{") == 1) && (skip == "" || index($1, skip) == 0) { s += $2 } END { print s + 0 }' <<<"$body"
}

for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/${http%:*}/${http#*:}") 2>/dev/null && break
  sleep 0.1
done

sample() {
  local rss fds
  rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$server/status")
  fds=$(ls "/proc/$server/fd" | wc -l)
  printf '| %s | %d | %d | %d | %d | %d | %d | %d | %d | %d | %d |\n' "$1" "$((rss / 1024))" "$fds" \
    "$(metric switchboard_rooms)" "$(metric switchboard_participants)" \
    "$(metric switchboard_signaling_connections)" "$(metric switchboard_turn_allocations_active)" \
    "$(metric switchboard_event_webhook_queued)" "$(metric switchboard_event_webhook_attempts_total)" \
    "$(metric switchboard_push_delivered_total)" "$(metric switchboard_turn_allocations_created_total)"
}

# A TURN REST credential (RFC draft-uberti-behave-turn-rest): the
# username is "expiry:user", the password base64(HMAC-SHA1(secret, username)).
turn_username() { echo "$(( $(date +%s) + 600 )):soak"; }
turn_password() {
  python3 -c 'import base64, hashlib, hmac, sys
print(base64.b64encode(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha1).digest()).decode())' "$turn_secret" "$1"
}

# Two TURN clients over UDP, 100 messages each to the echo peer and back.
# uclient leaves some allocations to expire; a later uclient whose new
# source port happens to be one of theirs is refused 441 (the 5-tuple
# belongs to another username, RFC 5766 6.2): one retry, counted.
turn_clients() {
  local username attempt
  for attempt in 1 2; do
    username=$(turn_username)
    if timeout 60 turnutils_uclient -u "$username" -w "$(turn_password "$username")" -p "$turn_port" \
      -e 127.0.0.1 -r "$peer_port" -n 100 -l 120 -m 2 -c -z 20 127.0.0.1 >"$data/turn-$1.log" 2>&1; then
      return 0
    fi
    grep -q "error 441" "$data/turn-$1.log" || return 1
    echo "round $1: a TURN client's source port was a live abandoned allocation's (441); retried" >>"$data/turn-retries.log"
  done
  return 1
}

echo "| at | RSS MiB | fds | rooms | participants | signaling sockets | TURN allocations | events queued | event webhook attempts | pushes accepted | TURN allocations made |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
samples=()
start_fds=$(ls "/proc/$server/fd" | wc -l)
row=$(sample "start"); echo "$row"; samples+=("$row")
started=$(date +%s)
round=0
while [ $(( $(date +%s) - started )) -lt "$total" ]; do
  round=$((round + 1))
  left=$(( total - ($(date +%s) - started) ))
  window=$(( left < every ? left : every ))
  # Joins stop a few seconds before the window ends, so the next sample
  # reads the rooms of one window, not of two.
  SWITCHBOARD_CALL_TOKEN_SECRET=$secret "$loadtest" churn --url "ws://$http/v1/rtc" \
    --rooms 4 --joins-per-second 2 --stay-seconds 5 --seconds "$(( window > 8 ? window - 6 : 2 ))" \
    --video-kbps 300 >"$data/churn-$round.log" 2>&1 &
  churn=$!
  SWITCHBOARD_API_KEY=$api_key "$loadtest" calls --url "http://$http" --calls 6 --phones \
    --media-seconds 2 --ring-timeout-seconds 6 >"$data/calls-$round.log" 2>&1 &
  calls=$!
  turn_clients "$round" &
  turn=$!
  sleep "$window"
  wait "$churn" || { echo "churn failed in round $round:"; tail -5 "$data/churn-$round.log"; exit 1; }
  wait "$calls" || { echo "calls failed in round $round:"; tail -5 "$data/calls-$round.log"; exit 1; }
  wait "$turn" || { echo "the TURN clients failed in round $round:"; tail -5 "$data/turn-$round.log"; exit 1; }
  row=$(sample "$(( $(date +%s) - started ))s"); echo "$row"; samples+=("$row")
done
# Everyone has left; broken participants go after the reconnect grace and
# abandoned TURN allocations at their lifetime cap: wait for both, then
# for the gauges to read zero (at most 30 s more).
sleep $((grace > turn_lifetime ? grace + 3 : turn_lifetime + 3))
for _ in $(seq 1 30); do
  [ "$(metric switchboard_rooms)$(metric switchboard_participants)$(metric switchboard_signaling_connections)$(metric switchboard_turn_allocations_active)$(metric switchboard_event_webhook_queued)" = 00000 ] && break
  sleep 1
done
row=$(sample "end"); echo "$row"; samples+=("$row")

# Column n of a table row (2: at, 3: RSS, 4: fds, 5-9: the gauges, 10-12: counters).
col() { awk -F'|' -v c="$2" '{ gsub(/ /, "", $c); print $c }' <<<"$1"; }
end_rss=$(col "$row" 3) end_fds=$(col "$row" 4)
rooms=$(col "$row" 5) participants=$(col "$row" 6)
sockets=$(col "$row" 7) allocations=$(col "$row" 8)
queued=$(col "$row" 9) deliveries=$(col "$row" 10)
pushes=$(col "$row" 11) allocations_made=$(col "$row" 12)
# A ring whose call ended before its push went out is not sent
# (`ring_over`: a callee who declined on the web at once): by design.
push_failures=$(metric switchboard_push_failed_total 'reason="ring_over"')
rings_over=$(( $(metric switchboard_push_failed_total) - push_failures ))
fail=0
if [ "$deliveries" -eq 0 ]; then
  echo "FAIL: no call event was delivered"
  fail=1
fi
if [ "$pushes" -eq 0 ] || [ "$push_failures" -ne 0 ]; then
  echo "FAIL: $pushes pushes accepted, $push_failures failed (stand-ins: $(tr '\n' ' ' <"$data/push/accepted"); rings over before their push: $rings_over)"
  fail=1
fi
if [ "$allocations_made" -eq 0 ]; then
  echo "FAIL: no TURN allocation was made"
  fail=1
fi
for gauge in rooms participants sockets allocations queued; do
  if [ "${!gauge}" -ne 0 ]; then
    echo "FAIL: $gauge is ${!gauge} at the end, not 0"
    fail=1
  fi
done
if [ "$end_fds" -gt $((start_fds + 8)) ]; then
  echo "FAIL: $end_fds descriptors at the end, $start_fds at the start"
  fail=1
fi
# RSS: the sample after the first third of the run is the warm baseline.
warm_index=$(( (${#samples[@]} - 1) / 3 ))
[ "$warm_index" -ge 1 ] || warm_index=1
warm_rss=$(col "${samples[$warm_index]}" 3)
limit=$(( warm_rss * (100 + growth) / 100 ))
[ "$limit" -ge $((warm_rss + 16)) ] || limit=$((warm_rss + 16))
peak=0
for s in "${samples[@]:$warm_index}"; do
  r=$(col "$s" 3)
  [ "$r" -le "$peak" ] || peak=$r
done
if [ "$peak" -gt "$limit" ]; then
  echo "FAIL: RSS grew to $peak MiB after warm-up (warm $warm_rss MiB, limit $limit MiB)"
  fail=1
fi
[ ! -s "$data/turn-retries.log" ] || cat "$data/turn-retries.log"
echo "soak: $round rounds in $(( $(date +%s) - started )) s; RSS warm $warm_rss MiB, peak after warm-up $peak MiB, end $end_rss MiB; descriptors $start_fds -> $end_fds; $pushes pushes accepted ($rings_over rings over before their push), $allocations_made TURN allocations"
exit "$fail"
