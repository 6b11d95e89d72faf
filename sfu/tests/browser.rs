//! Headless Chromium (Debian's `chromium`, driven by playwright-core) against
//! the real `switchboard` binary: see `browser/run.mjs` for the scenarios.
//!
//! Needs `/usr/bin/chromium`, `node` and `browser/node_modules`; the README's
//! test command installs them. Each scenario runs inside `unshare -n` (a new
//! network namespace with only loopback) when that is allowed, so every ICE
//! candidate is 127.0.0.1.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Chromium pages are heavy on two cores: one scenario at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const SCENARIO_LIMIT: Duration = Duration::from_secs(180);

fn scenario(name: &str) {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists()
            && Path::new("/usr/bin/chromium").exists(),
        "browser tests need Debian's chromium and `npm ci` in {}: run ./scripts/test",
        dir.display()
    );
    let server = env!("CARGO_BIN_EXE_switchboard");
    let script = format!("exec node run.mjs '{server}' '{name}'");
    let isolated = Command::new("unshare")
        .args(["-n", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut command = if isolated {
        let mut c = Command::new("unshare");
        c.args(["-n", "sh", "-c", &format!("ip link set lo up && {script}")]);
        // Scenarios that change the network (ice-tcp drops UDP) may.
        c.env("SWITCHBOARD_TEST_NETNS", "1");
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    };
    let mut child = command.current_dir(&dir).spawn().expect("node starts");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for node") {
            break status;
        }
        if start.elapsed() > SCENARIO_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("browser scenario {name} ran past {SCENARIO_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "browser scenario {name} failed: {status}");
}

#[test]
fn two_pages_decode_each_others_colour_with_vp8() {
    scenario("two-pages-vp8");
}

#[test]
fn two_pages_decode_each_others_colour_with_h264() {
    scenario("two-pages-h264");
}

#[test]
fn four_pages_see_each_other_and_a_late_joiner_gets_first_frames() {
    scenario("four-then-late");
}

#[test]
fn a_leaver_is_removed_at_once_and_a_crashed_page_after_the_grace_period() {
    scenario("leave-and-kill");
}

#[test]
fn two_to_three_to_two_pages_do_not_freeze_the_pair() {
    scenario("two-three-two");
}

#[test]
fn a_call_keeps_decoding_while_garbage_floods_the_media_port() {
    scenario("garbage-flood");
}

#[test]
fn relay_only_pages_decode_through_turn_over_udp() {
    scenario("relay-udp");
}

#[test]
fn relay_only_pages_decode_through_turn_over_tcp() {
    scenario("relay-tcp");
}

#[test]
fn relay_only_pages_decode_through_turn_over_tls() {
    scenario("relay-tls");
}

#[test]
fn an_untrusted_turn_certificate_relays_nothing() {
    scenario("relay-tls-untrusted");
}

#[test]
fn demo_page_call_answered_with_video_both_ways_then_hung_up() {
    scenario("demo-call");
}

#[test]
fn demo_page_call_between_events_sockets_on_two_nodes() {
    scenario("demo-cluster");
}

#[test]
fn demo_page_call_declined() {
    scenario("demo-decline");
}

#[test]
fn active_speakers_follow_who_talks() {
    scenario("active-speakers");
}

#[test]
fn simulcast_viewers_get_their_layers_and_switch_at_a_keyframe() {
    scenario("simulcast-layers");
}

#[test]
fn with_udp_blocked_and_no_turn_pages_connect_over_ice_tcp() {
    scenario("ice-tcp");
}

#[test]
fn data_channel_messages_reach_the_room_in_order_and_bad_ones_nobody() {
    scenario("data-channels");
}

#[test]
fn the_own_egress_keeps_sync_answers_nacks_and_follows_an_ice_restart() {
    scenario("own-egress");
}

#[test]
fn one_to_one_adapts_to_a_shaped_downlink_through_the_receivers_remb() {
    scenario("remb-downlink");
}

#[test]
fn a_shaped_downlink_gets_the_low_layer_and_climbs_back_when_freed() {
    scenario("constrained-downlink");
}

#[test]
fn demo_page_follows_its_flags_live() {
    scenario("demo-flags");
}

#[test]
fn demo_page_call_not_answered_times_out() {
    scenario("demo-timeout");
}
