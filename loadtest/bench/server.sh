# Sourced by the bench scripts: the `switchboard` they measure, started the
# same way by each (one engine thread, no TURN, loopback only, rooms of up
# to 1,000), with its PID in $server.
#
#   start_switchboard <binary> <data dir> <log file>
BENCH_SECRET=capacity-secret-capacity-secret-0123
BENCH_HTTP=127.0.0.1:27880

start_switchboard() {
  local binary=$1 data=$2 log=$3
  mkdir -p "$data"
  # Rooms of 200+ need more than the default 100 participants.
  printf 'max_participants_per_room = 1000\n' >"$data/bench.toml"
  SWITCHBOARD_HTTP_LISTEN=$BENCH_HTTP SWITCHBOARD_RTC_UDP_BIND=127.0.0.1:27882 \
  SWITCHBOARD_ANNOUNCE_IPS=127.0.0.1 SWITCHBOARD_ENGINE_THREADS=1 SWITCHBOARD_TURN_ENABLED=false \
  SWITCHBOARD_CALL_TOKEN_SECRET=$BENCH_SECRET SWITCHBOARD_DATA_DIR="$data" RUST_LOG=warn \
    "$binary" --config "$data/bench.toml" >"$log" 2>&1 &
  server=$!
  sleep 1
}
