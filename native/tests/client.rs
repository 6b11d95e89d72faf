//! Two client cores against a real `switchboard` (in-process), each with
//! str0m media and fake platform ports recording every report: alice on an
//! iPhone calls bob on an Android phone; bob's fake CallKit reports the
//! incoming call exactly once; bob answers; each receives the other's RTP
//! through the SFU, also across a network change on bob's side (the media
//! signaling resumes); alice hangs up; bob's UI ends with `Completed`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use native::api::Platform;
use native::client::{Client, ClientConfig, Ports};
use native::ports::{
    AudioRoute, AudioRouteKind, DevicePushTokens, EndedReason, PushTokens, SystemCallUi,
};
use native::str0m_media::Str0mMediaFactory;
use support::{token, wait_for};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Report {
    Incoming { call_id: String, caller: String },
    OutgoingStarted(String),
    Connected(String),
    Ended(String, EndedReason),
    Route(AudioRouteKind),
}

/// A fake CallKit / Telecom and audio session recording what the core
/// reports, in order.
#[derive(Default)]
struct FakeSystem {
    reports: Mutex<Vec<Report>>,
}

impl FakeSystem {
    fn record(&self, report: Report) {
        self.reports.lock().unwrap().push(report);
    }

    fn reports(&self) -> Vec<Report> {
        self.reports.lock().unwrap().clone()
    }

    fn has(&self, report: &Report) -> bool {
        self.reports().contains(report)
    }
}

impl SystemCallUi for FakeSystem {
    fn report_incoming_call(&self, call_id: String, caller: String, _video: bool) {
        self.record(Report::Incoming { call_id, caller });
    }
    fn report_outgoing_call_started(&self, call_id: String) {
        self.record(Report::OutgoingStarted(call_id));
    }
    fn report_call_connected(&self, call_id: String) {
        self.record(Report::Connected(call_id));
    }
    fn report_call_ended(&self, call_id: String, reason: EndedReason) {
        self.record(Report::Ended(call_id, reason));
    }
}

impl AudioRoute for FakeSystem {
    fn set_route(&self, route: AudioRouteKind) {
        self.record(Report::Route(route));
    }
}

struct FixedTokens(DevicePushTokens);

impl PushTokens for FixedTokens {
    fn current(&self) -> DevicePushTokens {
        self.0.clone()
    }
}

fn client(
    runtime: &tokio::runtime::Runtime,
    base: &str,
    user: &str,
    device: &str,
    platform: Platform,
    tokens: DevicePushTokens,
) -> (Arc<Client>, Arc<FakeSystem>) {
    let system = Arc::new(FakeSystem::default());
    let ports = Ports {
        ui: system.clone(),
        media: Str0mMediaFactory::with_runtime(
            "127.0.0.1".parse().unwrap(),
            runtime.handle().clone(),
        ),
        audio: system.clone(),
        push: Arc::new(FixedTokens(tokens)),
    };
    let config = ClientConfig {
        server_url: base.to_string(),
        user_token: token(user),
        device_id: device.to_string(),
        platform,
        video: true,
        bundle_id: (platform == Platform::Ios).then(|| "app.example.calls".into()),
        apns_environment: (platform == Platform::Ios).then(|| "sandbox".into()),
    };
    (Client::start(config, ports, runtime.handle()), system)
}

/// Packets and remote tracks the call's media received so far.
fn received(client: &Client, call_id: &str) -> (u64, u32) {
    client
        .media_stats(call_id.to_string())
        .map_or((0, 0), |s| (s.packets_received, s.remote_tracks))
}

#[test]
fn an_ios_caller_and_an_android_callee_talk_through_the_sfu_and_hang_up() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let runtime = support::runtime();
    let server = runtime.block_on(support::start_server("client"));
    let limit = Duration::from_secs(15);

    let (alice, alice_ios) = client(
        &runtime,
        &server.base,
        "alice",
        "a-iphone",
        Platform::Ios,
        DevicePushTokens {
            apns_voip: Some("aa".repeat(32)),
            apns_alert: Some("bb".repeat(32)),
            fcm: None,
        },
    );
    let (bob, bob_android) = client(
        &runtime,
        &server.base,
        "bob",
        "b-pixel",
        Platform::Android,
        DevicePushTokens {
            fcm: Some("fcm-token-of-bobs-pixel:APA91bHun4MxP5egoKMwt2KZFBaFUH".into()),
            ..Default::default()
        },
    );
    // Bob's core registered his phone through its PushTokens port.
    wait_for("bob's device registration", limit, || {
        let devices = runtime.block_on(async {
            reqwest::Client::new()
                .get(format!("{}/v1/devices", server.base))
                .bearer_auth(token("bob"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()
        })?;
        devices
            .contains("fcm-token-of-bobs-pixel:APA91bHun4MxP5egoKMwt2KZFBaFUH")
            .then_some(())
    });

    let call_id = runtime
        .block_on(alice.start_call_async("bob".into(), true))
        .expect("the call is created");
    assert!(alice_ios.has(&Report::OutgoingStarted(call_id.clone())));
    // CallKit activates the caller's audio session after the start action.
    alice.audio_session_activated();

    let incoming = Report::Incoming {
        call_id: call_id.clone(),
        caller: "alice".into(),
    };
    wait_for("bob's incoming call", limit, || {
        bob_android.has(&incoming).then_some(())
    });
    bob.answer(call_id.clone());
    bob.audio_session_activated();

    let connected = Report::Connected(call_id.clone());
    wait_for("both connected", limit, || {
        (alice_ios.has(&connected) && bob_android.has(&connected)).then_some(())
    });
    // Each hears and sees the other: audio and video tracks through the SFU.
    for (name, client) in [("alice", &alice), ("bob", &bob)] {
        wait_for(&format!("{name} receiving both tracks"), limit, || {
            let (packets, tracks) = received(client, &call_id);
            (packets >= 100 && tracks == 2).then_some(())
        });
    }

    // Bob's network changes: his connections drop and resume; media
    // keeps arriving on both sides, and no second incoming call appears.
    let before = (received(&alice, &call_id).0, received(&bob, &call_id).0);
    bob.network_changed();
    wait_for("media after bob's network change", limit, || {
        let now = (received(&alice, &call_id).0, received(&bob, &call_id).0);
        (now.0 >= before.0 + 150 && now.1 >= before.1 + 150).then_some(())
    });

    alice.end(call_id.clone());
    wait_for("bob's call to end", limit, || {
        bob_android
            .has(&Report::Ended(call_id.clone(), EndedReason::Completed))
            .then_some(())
    });
    assert!(alice_ios.has(&Report::Ended(call_id.clone(), EndedReason::Completed)));

    let bob_reports = bob_android.reports();
    let incoming_reports = bob_reports.iter().filter(|r| **r == incoming).count();
    assert_eq!(incoming_reports, 1, "{bob_reports:?}");
    // A video call plays on the speaker, chosen once per call.
    for system in [&alice_ios, &bob_android] {
        let routes: Vec<_> = system
            .reports()
            .into_iter()
            .filter(|r| matches!(r, Report::Route(_)))
            .collect();
        assert_eq!(routes, [Report::Route(AudioRouteKind::Speaker)]);
    }
    // Bob's order: ring, connected, ended.
    let order: Vec<_> = bob_reports
        .iter()
        .filter(|r| !matches!(r, Report::Route(_)))
        .cloned()
        .collect();
    assert_eq!(
        order,
        [
            incoming,
            connected,
            Report::Ended(call_id, EndedReason::Completed)
        ]
    );

    alice.shutdown();
    bob.shutdown();
    runtime.block_on(server.stop());
}
