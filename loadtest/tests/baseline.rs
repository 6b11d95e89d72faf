//! The bare-UDP baseline relay (its `sendmmsg` fan-out) on loopback: every
//! subscriber gets every publisher's packets.

use std::time::Duration;

use loadtest::baseline::{BaselinePlan, bind_relay, run, serve_relay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_fans_every_packet_out_to_every_other_member() {
    let socket = bind_relay("127.0.0.1:0".parse().unwrap()).unwrap();
    let relay = socket.local_addr().unwrap();
    // The relay runs until the process ends (a test thread of its own).
    std::thread::spawn(move || serve_relay(&socket));
    let report = run(&BaselinePlan {
        relay,
        relay_pid: None,
        rooms: 2,
        publishers: 1,
        subscribers: 5,
        video_kbps: 300,
        duration: Duration::from_secs(2),
        local_ip: "127.0.0.1".parse().unwrap(),
    })
    .await;
    assert_eq!(report.bots_joined, 12);
    // 2 rooms x 1 publisher x 5 subscribers.
    assert_eq!(report.subscribed_video_tracks, 10);
    // Audio + video from ~2 s of 50 ticks/s to 10 subscribers.
    assert!(
        report.packets_received > 1500,
        "{}",
        report.packets_received
    );
    assert!(report.loss_percent < 1.0, "{}", report.loss_percent);
}
