# Sourced by the bench scripts: the `switchboard` they measure, started the
# same way by each (one engine thread, no TURN, rooms of up to 1,000), with
# its PID in $server; on loopback, or on $BENCH_IP where `veth.sh` set one.
# `bots` runs the load tool where the bots live (the other end of the veth).
# `start_janus` starts Debian's Janus the same way (videoroom plugin and
# WebSocket transport only), with its PID in $janus.
#
#   start_switchboard <binary> <data dir> <log file>
#   start_janus <config dir> <log file>
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

# Janus gathers no candidates on loopback: it needs $BENCH_IP on a real
# interface (`veth.sh`). Every other plugin and transport stays unloaded.
# Janus runs its handles on JANUS_EVENT_LOOPS static event loops (default
# 1: on the one CPU it is pinned to, that measured 1.26x its own default, 0,
# a thread per handle; BENCHMARKS.md).
BENCH_JANUS_WS=ws://$BENCH_IP:8188

start_janus() {
  local dir=$1 log=$2 lib=/usr/lib/x86_64-linux-gnu/janus
  command -v janus >/dev/null || { echo "janus is not installed (apt-get install janus)" >&2; return 1; }
  mkdir -p "$dir/plugins" "$dir/transports" "$dir/none"
  ln -sf "$lib/plugins/libjanus_videoroom.so" "$dir/plugins/"
  ln -sf "$lib/transports/libjanus_websockets.so" "$dir/transports/"
  cat >"$dir/janus.jcfg" <<EOF
general: {
  configs_folder = "$dir"
  plugins_folder = "$dir/plugins"
  transports_folder = "$dir/transports"
  events_folder = "$dir/none"
  loggers_folder = "$dir/none"
  debug_level = 3
  interface = "$BENCH_IP"
  event_loops = ${JANUS_EVENT_LOOPS:-1}
}
media: { rtp_port_range = "20000-40000" }
nat: { ice_enforce_list = "$BENCH_IP" }
EOF
  printf 'general: {\n}\n' >"$dir/janus.plugin.videoroom.jcfg"
  printf 'general: {\n  ws = true\n  ws_port = 8188\n  ws_ip = "%s"\n}\n' "$BENCH_IP" \
    >"$dir/janus.transport.websockets.jcfg"
  janus -F "$dir" -C "$dir/janus.jcfg" >"$log" 2>&1 &
  janus=$!
  # Ready when its WebSocket port takes connections (10 s at most).
  local tries
  for tries in $(seq 100); do
    (exec 3<>"/dev/tcp/$BENCH_IP/8188") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "janus did not listen on $BENCH_IP:8188 (see $log)" >&2
  return 1
}
