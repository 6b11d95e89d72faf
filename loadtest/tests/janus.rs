//! The Janus driver against Debian's real Janus (videoroom plugin, WebSocket
//! transport), started by the bench's own `start_janus` helper: one room of
//! three publishers and a subscriber, joining one after another, so the
//! subscriptions grow by `update` as publishers arrive. Janus gathers no
//! candidates on loopback, so the run goes through the bench's `veth.sh`:
//! Janus and the bots each in a network namespace of their own, on the two
//! ends of a veth pair. (With both ends in one namespace no media arrived:
//! not investigated, the bench never runs that way.)

use std::process::Command;

#[test]
fn bots_publish_and_subscribe_through_a_real_janus_videoroom() {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let dir = std::env::temp_dir().join(format!("janus-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.json");
    let script = r#"
set -eu
. loadtest/bench/server.sh
start_janus "$DIR/janus" "$DIR/janus.log"
trap 'kill $janus' EXIT
nsenter -t "$BOTS_NETNS_PID" -n "$LOADTEST" janus --url "$BENCH_JANUS_WS" --local-ip "$BOTS_IP" \
  --rooms 1 --publishers 3 --subscribers 1 --ramp-up-seconds 1 --seconds 3 \
  --server-pid "$janus" --json "$DIR/report.json"
"#;
    // Bounded: Janus and the bots end with the namespace's shell.
    let output = Command::new("timeout")
        .args(["120", "loadtest/bench/veth.sh", "bash", "-c", script])
        .current_dir(repo)
        .env("DIR", &dir)
        .env("LOADTEST", env!("CARGO_BIN_EXE_switchboard-loadtest"))
        .output()
        .expect("timeout and unshare (util-linux) run");
    let janus_log = std::fs::read_to_string(dir.join("janus.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "the run failed (janus from Debian's `janus`; ./scripts/test installs it)\n{}\n{}\njanus:\n{janus_log}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(report["botsJoined"], 4, "{report}");
    // Each publisher receives the two others' video, the subscriber all three.
    assert_eq!(report["subscribedVideoTracks"], 9, "{report}");
    // ~3 s of audio (50 packets/s) and video (2 packets per 20 ms) on 15 tracks.
    assert!(
        report["packetsReceived"].as_u64().unwrap() > 1_000,
        "{report}"
    );
    assert!(report["lossPercent"].as_f64().unwrap() < 1.0, "{report}");
    // Janus's own CPU time, read from /proc as for switchboard.
    assert!(
        report["server"]["cpuSeconds"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}
