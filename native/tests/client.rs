//! Two client cores against a real `switchboard` (in-process), each with
//! str0m media and fake platform ports recording every report: alice on an
//! iPhone calls bob on an Android phone; bob's fake CallKit reports the
//! incoming call exactly once; bob answers; each receives the other's RTP
//! through the SFU, also across a network change on bob's side (the media
//! signaling resumes); alice hangs up; bob's UI ends with `RemoteEnded`, alice's
//! with `LocalEnded`. Bob's audio-route port throws, and the call goes on.
//! Alice's app starts with an expired user token: the core asks her app
//! for a fresh one once and carries on. Each side is told the other's
//! tracks, and Bob's app sees his call reconnecting and reconnected.
//! Both cores reach the server only over TLS (`https://`, `wss://`) through a
//! terminator with a test CA's certificate; a core without that CA cannot.

mod support;

use std::sync::Arc;
use std::time::Duration;

use native::api::Platform;
use native::client::{Client, ClientConfig, ClientError, Ports};
use native::ports::{AudioEndpoint, AudioRouteKind, DevicePushTokens, EndedReason};
use native::str0m_media::Str0mMediaFactory;
use support::fake_phone::{FakeSystem, FixedTokens, Report};
use support::{token, wait_for};

fn client(
    runtime: &tokio::runtime::Runtime,
    (base, ca_pem): (&str, Option<&str>),
    user: &str,
    device: &str,
    platform: Platform,
    tokens: DevicePushTokens,
) -> (Arc<Client>, Arc<FakeSystem>) {
    let system = Arc::new(FakeSystem {
        // Bob's phone throws from its audio port: the call must go on.
        route_throws: user == "bob",
        fresh_token: Some(token(user)),
        ..Default::default()
    });
    let ports = Ports {
        ui: system.clone(),
        media: Str0mMediaFactory::with_runtime(
            "127.0.0.1".parse().unwrap(),
            runtime.handle().clone(),
        ),
        audio: system.clone(),
        push: Arc::new(FixedTokens(tokens)),
        credentials: system.clone(),
        events: system.clone(),
    };
    let config = ClientConfig {
        server_url: base.to_string(),
        // Alice's app was woken with yesterday's token.
        user_token: if user == "alice" {
            support::expired_token(user)
        } else {
            token(user)
        },
        device_id: device.to_string(),
        platform,
        video: true,
        bundle_id: (platform == Platform::Ios).then(|| "app.example.calls".into()),
        apns_environment: (platform == Platform::Ios).then(|| "sandbox".into()),
        trusted_ca_pem: ca_pem.map(str::to_string),
        system_call_ui: true,
        // Alice's calls carry data channels (and bob's do not, which his
        // calls to her never need: the caller's create decides).
        data_channels: user == "alice",
    };
    let client = Client::start(config, ports, runtime.handle()).unwrap();
    let _ = system.client.set(Arc::downgrade(&client));
    (client, system)
}

fn endpoint(id: &str, kind: AudioRouteKind) -> AudioEndpoint {
    AudioEndpoint {
        id: id.into(),
        kind,
        name: id.into(),
    }
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

    // Everything the cores open goes over TLS (https://, wss://) through a
    // terminator whose certificate only a test CA vouches for.
    let (https, ca_pem) = runtime.block_on(support::tls_front(server.server.http_addr));
    let (alice, alice_ios) = client(
        &runtime,
        (&https, Some(&ca_pem)),
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
        (&https, Some(&ca_pem)),
        "bob",
        "b-pixel",
        Platform::Android,
        DevicePushTokens {
            fcm: Some("fcm-token-of-bobs-pixel:APA91bHun4MxP5egoKMwt2KZFBaFUH".into()),
            ..Default::default()
        },
    );
    // Alice wears AirPods; Bob's phone has its earpiece and speaker.
    alice.audio_routes_changed(
        vec![
            endpoint("receiver", AudioRouteKind::Earpiece),
            endpoint("speaker", AudioRouteKind::Speaker),
            endpoint("airpods", AudioRouteKind::Bluetooth),
        ],
        Some("airpods".into()),
    );
    bob.audio_routes_changed(
        vec![
            endpoint("earpiece", AudioRouteKind::Earpiece),
            endpoint("speaker", AudioRouteKind::Speaker),
        ],
        Some("earpiece".into()),
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

    // Alice's app reported the call to CallKit under its own UUID first.
    let alice_uuid = "5E1F2A3B-4C5D-4E6F-8A9B-0C1D2E3F4A5B";
    let call_id = runtime
        .block_on(alice.start_call_async("bob".into(), true, Some(alice_uuid.into())))
        .expect("the call is created");
    let alice_uuid = alice_uuid.to_lowercase();
    assert!(alice_ios.has(&Report::OutgoingStarted(alice_uuid.clone())));
    assert_eq!(alice.call_id(alice_uuid.clone()), Some(call_id.clone()));
    // CallKit activates the caller's audio session after the start action.
    alice.audio_session_activated();

    let incoming = Report::Incoming {
        call_id: call_id.clone(),
        caller: "alice".into(),
    };
    wait_for("bob's incoming call", limit, || {
        bob_android.has(&incoming).then_some(())
    });
    // Telecom added the call: now the server hears it is on screen.
    bob.incoming_call_displayed(call_id.clone());
    let answered_at = std::time::Instant::now();
    bob.answer(call_id.clone());
    bob.audio_session_activated();

    let connected = Report::Connected(call_id.clone());
    support::wait_for_explained(
        "both connected",
        limit,
        || {
            (alice_ios.has(&Report::Connected(alice_uuid.clone())) && bob_android.has(&connected))
                .then_some(())
        },
        || {
            format!(
                "alice (iOS caller) {:?} {:?}; bob (Android callee) {:?} {:?}",
                alice.active_calls(),
                alice_ios.reports(),
                bob.active_calls(),
                bob_android.reports()
            )
        },
    );
    // Each hears and sees the other: audio and video tracks through the SFU.
    for (name, client, uuid) in [("alice", &alice, &alice_uuid), ("bob", &bob, &call_id)] {
        wait_for(&format!("{name} receiving both tracks"), limit, || {
            let (packets, tracks) = received(client, uuid);
            (packets >= 100 && tracks == 2).then_some(())
        });
    }

    // Both cores reported their time to first audio and video: the
    // callee's counts from its tap, so it lies between the tap and now.
    let metrics = || {
        runtime.block_on(async {
            reqwest::get(format!("{}/metrics", server.base))
                .await
                .ok()?
                .text()
                .await
                .ok()
        })
    };
    let series = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    let first_media = |kind: &str, platform: &str, part: &str| {
        format!("switchboard_call_time_to_first_{kind}_seconds_{part}{{platform=\"{platform}\"}}")
    };
    let text = wait_for("both cores' first-media reports", limit, || {
        let text = metrics()?;
        let reported = ["ios", "android"].iter().all(|platform| {
            ["audio", "video"]
                .iter()
                .all(|kind| series(&text, &first_media(kind, platform, "count")) == Some(1.0))
        });
        reported.then_some(text)
    });
    let bobs_ttfa = series(&text, &first_media("audio", "android", "sum")).unwrap();
    let since_tap = answered_at.elapsed().as_secs_f64();
    assert!(
        bobs_ttfa > 0.0 && bobs_ttfa <= since_tap,
        "bob's TTFA {bobs_ttfa} s, {since_tap} s since his tap"
    );
    let answered = "switchboard_call_ui_shown_to_answer_seconds_count{platform=\"android\"}";
    assert_eq!(series(&text, answered), Some(1.0), "answered on device");

    // Each app was told the other's two tracks.
    for (system, other) in [(&alice_ios, "bob"), (&bob_android, "alice")] {
        for video in [false, true] {
            assert!(
                system.has(&Report::TrackAdded(other.into(), video)),
                "{:?}",
                system.reports()
            );
        }
    }
    // Alice's app created the call with data channels: each core's message
    // reaches the other's app with its sender (the lossy channel too, on
    // loopback); what the server would refuse is refused in the core, with
    // the server's code.
    wait_for("alice's data channel", limit, || {
        alice
            .send_data(alice_uuid.clone(), "hello bob".into(), true, None)
            .ok()
    });
    wait_for("bob's data channel", limit, || {
        bob.send_data(call_id.clone(), "hello alice".into(), false, None)
            .ok()
    });
    wait_for("each app's message at the other", limit, || {
        let to_bob = Report::Data(Some("alice".into()), "hello bob".into(), true);
        let to_alice = Report::Data(Some("bob".into()), "hello alice".into(), false);
        (bob_android.has(&to_bob) && alice_ios.has(&to_alice)).then_some(())
    });
    let too_large = alice.send_data(alice_uuid.clone(), "x".repeat(16 * 1024 + 1), true, None);
    assert!(
        matches!(&too_large, Err(ClientError::Refused { code, .. }) if code == "message_too_large"),
        "{too_large:?}"
    );

    // Alice's expired token: her app was asked for a fresh one, once.
    let asked = |system: &FakeSystem| {
        system
            .reports()
            .iter()
            .filter(|r| **r == Report::TokenAsked)
            .count()
    };
    assert_eq!((asked(&alice_ios), asked(&bob_android)), (1, 0));

    // Bob's network changes: his connections drop and resume; media
    // keeps arriving on both sides, and no second incoming call appears.
    let before = (received(&alice, &alice_uuid).0, received(&bob, &call_id).0);
    bob.network_changed();
    wait_for("media after bob's network change", limit, || {
        let now = (received(&alice, &alice_uuid).0, received(&bob, &call_id).0);
        (now.0 >= before.0 + 150 && now.1 >= before.1 + 150).then_some(())
    });
    // His app showed the call reconnecting, then reconnected.
    wait_for("bob's call reconnected", limit, || {
        bob_android
            .has(&Report::Reconnected(call_id.clone()))
            .then_some(())
    });
    assert!(bob_android.has(&Report::Reconnecting(call_id.clone())));

    alice.end(alice_uuid.clone());
    wait_for("bob's call to end", limit, || {
        bob_android
            .has(&Report::Ended(call_id.clone(), EndedReason::RemoteEnded))
            .then_some(())
    });
    assert!(alice_ios.has(&Report::Ended(alice_uuid.clone(), EndedReason::LocalEnded)));

    let bob_reports = bob_android.reports();
    let incoming_reports = bob_reports.iter().filter(|r| **r == incoming).count();
    assert_eq!(incoming_reports, 1, "{bob_reports:?}");
    // A video call plays on the speaker, chosen once per call (though
    // Bob's port threw); Alice's AirPods were left alone.
    let routes = |system: &FakeSystem| -> Vec<Report> {
        system
            .reports()
            .into_iter()
            .filter(|r| matches!(r, Report::Route(_)))
            .collect()
    };
    assert_eq!(routes(&bob_android), [Report::Route("speaker".into())]);
    assert_eq!(routes(&alice_ios), []);
    // Bob's order: ring, connected, ended.
    let order: Vec<_> = bob_reports
        .iter()
        .filter(|r| r.is_call_ui())
        .cloned()
        .collect();
    assert_eq!(
        order,
        [
            incoming,
            connected,
            Report::Ended(call_id, EndedReason::RemoteEnded)
        ]
    );

    alice.shutdown();
    bob.shutdown();
    runtime.block_on(server.stop());
}

#[test]
fn a_core_refuses_a_server_whose_certificate_no_trusted_ca_signed() {
    let runtime = support::runtime();
    let server = runtime.block_on(support::start_server("client-untrusted"));
    let (https, _their_ca) = runtime.block_on(support::tls_front(server.server.http_addr));
    // The core trusts another CA (and the system's roots): not this one.
    let (_, other_ca) = runtime.block_on(support::tls_front(server.server.http_addr));
    let (carol, _ui) = client(
        &runtime,
        (&https, Some(&other_ca)),
        "carol",
        "c-phone",
        Platform::Android,
        DevicePushTokens {
            fcm: Some("fcm-token-of-carols-phone".into()),
            ..Default::default()
        },
    );
    let created = runtime.block_on(carol.start_call_async("dave".into(), false, None));
    assert!(
        matches!(&created, Err(native::client::ClientError::Unreachable { detail }) if detail.contains("error sending request")),
        "{created:?}"
    );
    // Nor did its registration reach the server.
    let devices = runtime.block_on(async {
        reqwest::Client::new()
            .get(format!("{}/v1/devices", server.base))
            .bearer_auth(token("carol"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert_eq!(devices, "[]");
    // A bad PEM is a configuration error, not a panic.
    let config = ClientConfig {
        server_url: https,
        user_token: token("carol"),
        device_id: "c-phone".into(),
        platform: Platform::Android,
        video: false,
        bundle_id: None,
        apns_environment: None,
        trusted_ca_pem: Some("not a certificate".into()),
        system_call_ui: true,
        data_channels: false,
    };
    let system = Arc::new(FakeSystem::default());
    let ports = Ports {
        ui: system.clone(),
        media: Str0mMediaFactory::with_runtime(
            "127.0.0.1".parse().unwrap(),
            runtime.handle().clone(),
        ),
        audio: system.clone(),
        push: Arc::new(FixedTokens(DevicePushTokens::default())),
        credentials: system.clone(),
        events: system,
    };
    assert!(matches!(
        Client::start(config, ports, runtime.handle()),
        Err(native::client::ClientError::Config { .. })
    ));
    carol.shutdown();
    runtime.block_on(server.stop());
}

/// The app learns the device's flags when the core registers, and again
/// when an operator changes one (over the events socket).
#[test]
fn the_app_is_told_its_flags_at_registration_and_on_change() {
    let runtime = support::runtime();
    let server = runtime.block_on(support::start_server("client-flags"));
    let (bob, bob_phone) = client(
        &runtime,
        (&server.base, None),
        "bob",
        "bob-pixel",
        Platform::Android,
        DevicePushTokens::default(),
    );
    let told = |video: bool| {
        Report::Flags(vec![
            ("audio_calls".into(), true),
            ("calling".into(), true),
            ("incoming_call_ui".into(), true),
            ("video_calls".into(), video),
        ])
    };
    wait_for("the flags at registration", Duration::from_secs(10), || {
        bob_phone.has(&told(true)).then_some(())
    });
    assert_eq!(bob.flags().get("video_calls"), Some(&true));

    let flags_url = format!("{}/v1/flags/video_calls", server.base);
    let changed = runtime.block_on(async {
        reqwest::Client::new()
            .put(&flags_url)
            .basic_auth(support::operator_key().0, Some(support::operator_key().1))
            .header("Content-Type", "application/json")
            .body(r#"{"state": "off"}"#)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(changed, 200);
    wait_for(
        "the change, over the socket",
        Duration::from_secs(5),
        || bob_phone.has(&told(false)).then_some(()),
    );
    assert_eq!(bob.flags().get("video_calls"), Some(&false));
    bob.shutdown();
    runtime.block_on(server.stop());
}

#[test]
fn messages_from_a_newer_server_are_skipped_and_the_call_goes_on() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let runtime = support::runtime();
    let server = runtime.block_on(support::start_server("client-newer"));
    // Every device socket also carries messages this build never heard of.
    let (base, made_up) = runtime.block_on(support::newer_server_front(server.server.http_addr));
    two_phones_talk_and_hang_up(&runtime, &base, &server.base);
    // Plenty was made up, and none of it dropped a socket or a call.
    assert!(made_up.load(std::sync::atomic::Ordering::Relaxed) >= 10);
    runtime.block_on(server.stop());
}

/// The node a client asks places the call's room elsewhere: each core's
/// join there is answered `wrong_node`, it follows the URL, and the call
/// connects with media both ways, no reconnect reported.
#[test]
fn a_core_sent_to_the_wrong_node_follows_it_to_the_room() {
    let runtime = support::runtime();
    let server = runtime.block_on(support::start_server("client-moved"));
    let (base, redirected) = runtime.block_on(support::wrong_node_front(server.server.http_addr));
    two_phones_talk_and_hang_up(&runtime, &base, &server.base);
    assert_eq!(redirected.load(std::sync::atomic::Ordering::Relaxed), 2);
    runtime.block_on(server.stop());
}

/// Erin's Android phone calls Frank's through `base`; he answers; media
/// flows both ways with no reconnect reported; he hangs up.
fn two_phones_talk_and_hang_up(runtime: &tokio::runtime::Runtime, base: &str, server_base: &str) {
    let limit = Duration::from_secs(15);
    let phone = |user, device| {
        client(
            runtime,
            (base, None),
            user,
            device,
            Platform::Android,
            DevicePushTokens {
                fcm: Some(format!("fcm-token-of-{device}-{}", "x".repeat(32))),
                ..Default::default()
            },
        )
    };
    let (erin, erin_ui) = phone("erin", "e-phone");
    let (frank, frank_ui) = phone("frank", "f-phone");
    wait_for("frank's device registration", limit, || {
        let devices = runtime.block_on(async {
            reqwest::Client::new()
                .get(format!("{server_base}/v1/devices"))
                .bearer_auth(token("frank"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()
        })?;
        devices.contains("f-phone").then_some(())
    });
    let call_id = runtime
        .block_on(erin.start_call_async("frank".into(), true, None))
        .expect("the call is created");
    erin.audio_session_activated();
    wait_for("frank's incoming call", limit, || {
        frank_ui
            .reports()
            .iter()
            .any(|r| matches!(r, Report::Incoming { .. }))
            .then_some(())
    });
    frank.incoming_call_displayed(call_id.clone());
    frank.answer(call_id.clone());
    frank.audio_session_activated();
    wait_for("frank connected", limit, || {
        frank_ui
            .has(&Report::Connected(call_id.clone()))
            .then_some(())
    });
    wait_for("media both ways", limit, || {
        let (to_frank, tracks) = received(&frank, &call_id);
        (to_frank >= 100 && tracks == 2).then_some(())
    });
    let erin_uuid = erin_ui
        .reports()
        .iter()
        .find_map(|r| match r {
            Report::OutgoingStarted(uuid) => Some(uuid.clone()),
            _ => None,
        })
        .unwrap();
    // Erin's side too: Frank's camera may have started paused (dynacast:
    // nobody received it for a moment after he published).
    wait_for("media to erin", limit, || {
        (received(&erin, &erin_uuid).0 >= 50).then_some(())
    });
    for system in [&erin_ui, &frank_ui] {
        assert!(
            !system
                .reports()
                .iter()
                .any(|r| matches!(r, Report::Reconnecting(_) | Report::Ended(..))),
            "{:?}",
            system.reports()
        );
    }
    frank.end(call_id.clone());
    wait_for("erin's call to end", limit, || {
        erin_ui
            .has(&Report::Ended(erin_uuid.clone(), EndedReason::RemoteEnded))
            .then_some(())
    });
    erin.shutdown();
    frank.shutdown();
}
