//! The load-test bots at a tiny scale against the real `switchboard`
//! process: every bot joins, media flows with under 1% loss, the server's
//! CPU time is read from /proc, and with induced loss the publishers answer
//! the server's NACKs (retransmissions) and PLIs (keyframes).

mod common;

use std::time::Duration;

use common::live::{
    API_KEY_ID, API_KEY_SECRET, PROCESS_CALL_TOKEN_SECRET, free_port, scratch_dir,
    spawn_switchboard,
};
use loadtest::report::Report;
use loadtest::scenario::calls::{self, CallsPlan};
use loadtest::scenario::room::{RoomPlan, RoomServer, run};

async fn room(drop_every: Option<u64>) -> Report {
    room_with(drop_every, false).await
}

async fn room_with(drop_every: Option<u64>, simulcast: bool) -> Report {
    let dir = scratch_dir();
    let (http_port, udp_port) = (free_port(), free_port());
    let server = spawn_switchboard(&dir, http_port, udp_port, &[]).await;
    let plan = RoomPlan {
        server: RoomServer::Switchboard {
            url: format!("ws://{}/v1/rtc", server.http),
            token_secret: PROCESS_CALL_TOKEN_SECRET.into(),
            token_issuer: "switchboard".into(),
        },
        rooms: 2,
        publishers: 2,
        subscribers: 2,
        video_kbps: 300,
        ramp_up: Duration::from_millis(500),
        duration: Duration::from_secs(4),
        local_ip: "127.0.0.1".parse().unwrap(),
        server_pid: Some(server.child.id()),
        drop_every,
        run_tag: "ci".into(),
        progress: None,
        simulcast,
    };
    let report = run(&plan).await;
    println!("{}", report.table());
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bot_joins_and_media_flows_with_under_one_percent_loss() {
    let r = room(None).await;
    assert_eq!(r.bots_joined, 8, "{r:?}");
    // Per room: 2 publishers see 1 video each, 2 subscribers see 2.
    assert_eq!(r.subscribed_video_tracks, 12, "{r:?}");
    assert!(r.packets_received > 1_000, "{r:?}");
    assert!(r.loss_percent < 1.0, "{r:?}");
    assert!(r.time_to_first_media_ms.p99 > 0.0, "{r:?}");
    let server = r.server.as_ref().expect("the server's /proc was read");
    assert!(
        server.cpu_seconds > 0.0 && server.rss_mb > 1.0,
        "{server:?}"
    );
    assert!(r.video_tracks_per_server_core.is_some());
}

/// Simulcast publishers and subscribers asking for each layer in turn (by
/// seat: publishers low and medium, subscribers high and low): every layer
/// is forwarded, and a subscriber that moved off the default layer still
/// counts as one track.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_rooms_forward_every_layer_asked_for() {
    let r = room_with(None, true).await;
    assert_eq!(r.bots_joined, 8, "{r:?}");
    assert_eq!(r.subscribed_video_tracks, 12, "{r:?}");
    let layers: Vec<&str> = r
        .video_packets_by_layer
        .iter()
        .map(|(rid, _)| rid.as_str())
        .collect();
    assert_eq!(layers, ["q", "h", "f"], "{r:?}");
    assert!(
        r.video_packets_by_layer.iter().all(|(_, n)| *n > 50),
        "{r:?}"
    );
    assert!(r.loss_percent < 1.0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn induced_loss_is_repaired_by_answered_nacks_and_plis() {
    // Every 15th datagram a publisher sends is dropped on the way out.
    let r = room(Some(15)).await;
    assert_eq!(r.bots_joined, 8, "{r:?}");
    assert!(r.nacks_answered > 0, "{r:?}");
    assert!(r.plis_answered > 0, "{r:?}");
    assert!(
        r.loss_percent < 5.0,
        "retransmissions repair most of it: {r:?}"
    );
}

async fn calls_run(inject_unexpected: bool) -> calls::CallsReport {
    let dir = scratch_dir();
    let (http_port, udp_port) = (free_port(), free_port());
    let env = [("SWITCHBOARD_RING_TIMEOUT_SECONDS", "2")];
    let server = spawn_switchboard(&dir, http_port, udp_port, &env).await;
    let plan = CallsPlan {
        base_url: format!("http://{}", server.http),
        api_key_id: API_KEY_ID.into(),
        api_key_secret: API_KEY_SECRET.into(),
        calls: 8,
        decline_share: 0.25,
        timeout_share: 0.125,
        race_share: 0.25,
        media: Duration::from_secs(2),
        ring_timeout: Duration::from_secs(2),
        local_ip: "127.0.0.1".parse().unwrap(),
        phones: false,
        run_tag: "ci".into(),
        inject_unexpected,
    };
    let report = calls::run(&plan).await;
    println!("{}", report.table());
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_ends_with_the_reason_its_role_expects() {
    let r = calls_run(false).await;
    assert!(r.passed(), "{r:?}");
    // 2 declined, 1 timed out, 2 raced + 3 answered completed.
    assert_eq!(r.outcomes.get("declined"), Some(&2), "{r:?}");
    assert_eq!(r.outcomes.get("timeout"), Some(&1), "{r:?}");
    assert_eq!(r.outcomes.get("completed"), Some(&5), "{r:?}");
    assert_eq!((r.races, r.races_clean), (2, 2), "{r:?}");
    assert!(r.media_packets > 100, "answered calls carried media: {r:?}");
    assert!(r.setup_ms.p50 > 0.0 && r.ring_ms.p50 > 0.0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unexpected_outcome_fails_the_run() {
    let r = calls_run(true).await;
    assert!(!r.passed(), "{r:?}");
    assert_eq!(r.unexpected.len(), 1, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_churning_in_and_out_all_join_and_get_media() {
    let dir = scratch_dir();
    let (http_port, udp_port) = (free_port(), free_port());
    let server = spawn_switchboard(&dir, http_port, udp_port, &[]).await;
    let plan = loadtest::scenario::churn::ChurnPlan {
        url: format!("ws://{}/v1/rtc", server.http),
        token_secret: PROCESS_CALL_TOKEN_SECRET.into(),
        token_issuer: "switchboard".into(),
        rooms: 2,
        joins_per_second: 3.0,
        stay: Duration::from_secs(2),
        duration: Duration::from_secs(3),
        video_kbps: 300,
        local_ip: "127.0.0.1".parse().unwrap(),
        server_pid: Some(server.child.id()),
        run_tag: "ci".into(),
        progress: None,
    };
    let r = loadtest::scenario::churn::run(&plan).await;
    println!("{}", r.table());
    assert!(r.bots_planned >= 8, "{r:?}");
    assert_eq!(r.bots_joined, r.bots_planned, "{r:?}");
    assert!(
        r.subscribed_video_tracks > 0 && r.packets_received > 100,
        "{r:?}"
    );
}
