# Sourced by the bench scripts: the `switchboard` they measure, started the
# same way by each (one engine thread, no TURN, rooms of up to 1,000), with
# its PID in $server; on loopback, or on $BENCH_IP where `veth.sh` set one.
# `bots` runs the load tool where the bots live (the other end of the veth).
#
#   start_switchboard <binary> <data dir> <log file>
#   bots room --url ws://$BENCH_HTTP/v1/rtc ...
BENCH_SECRET=capacity-secret-capacity-secret-0123
BENCH_IP=${BENCH_IP:-127.0.0.1}
BENCH_HTTP=$BENCH_IP:27880

bots() {
  local command=$1
  shift
  ${BOTS_NETNS_PID:+nsenter -t $BOTS_NETNS_PID -n} target/release/switchboard-loadtest \
    --cpu "${BOTS_CPU:-1}" --server-cpu "${SERVER_CPU:-0}" "$command" --local-ip "${BOTS_IP:-127.0.0.1}" "$@"
}

start_switchboard() {
  local binary=$1 data=$2 log=$3
  mkdir -p "$data"
  # Rooms of 200+ need more than the default 100 participants.
  printf 'max_participants_per_room = 1000\n' >"$data/bench.toml"
  SWITCHBOARD_HTTP_LISTEN=$BENCH_HTTP SWITCHBOARD_RTC_UDP_BIND=$BENCH_IP:27882 \
  SWITCHBOARD_ANNOUNCE_IPS=$BENCH_IP SWITCHBOARD_ENGINE_THREADS=1 SWITCHBOARD_TURN_ENABLED=false \
  SWITCHBOARD_CALL_TOKEN_SECRET=$BENCH_SECRET SWITCHBOARD_DATA_DIR="$data" RUST_LOG=warn \
    "$binary" --config "$data/bench.toml" >"$log" 2>&1 &
  server=$!
  sleep 1
}
