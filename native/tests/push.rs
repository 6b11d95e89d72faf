//! The client core reads exactly what the server's push senders send: the
//! payloads come from `control`'s own APNs and FCM request builders (not
//! retyped here), so a change on either side fails this test.

use std::collections::HashMap;

use control::call::{CallType, CallerDisplay, StopReason};
use control::device::{ApnsEnvironment, Platform};
use control::push::payload::PushPayload;
use control::push::{Outgoing, TokenKind, apns, fcm};
use native::ports::EndedReason;
use native::push::{PushDecision, classify_push, classify_push_data};

const CALL: &str = "0b9f5c3e-1d2a-4c8b-9e7f-6a5b4c3d2e1f";
const NOW: u64 = 1_800_000_000_000;

fn ring(platform: Platform, kind: TokenKind) -> Outgoing {
    let payload = PushPayload::incoming_call(
        CALL,
        "alice",
        CallType::Video,
        1_799_999_990_000,
        NOW + 38_000,
        CallerDisplay {
            display_name: Some("Alice A.".into()),
            avatar_url: Some("https://example.com/a.png".into()),
        },
        NOW,
    );
    Outgoing {
        call_id: CALL.into(),
        user_id: "bob".into(),
        device_id: "phone".into(),
        platform,
        token_kind: kind,
        token: "token".into(),
        payload,
        expires_at: Some(NOW + 38_000),
        apns_environment: ApnsEnvironment::Production,
        bundle_id: Some("app.example.calls".into()),
    }
}

/// What `RemoteMessage.getData()` hands the Android app.
fn fcm_data(push: &Outgoing) -> HashMap<String, String> {
    let message = fcm::message(push, NOW);
    message["message"]["data"]
        .as_object()
        .expect("a data map")
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().expect("FCM data values are strings").into(),
            )
        })
        .collect()
}

fn reported(decision: PushDecision) -> native::ports::IncomingCall {
    match decision {
        PushDecision::Report { call } => call,
        other => panic!("not reported: {other:?}"),
    }
}

#[test]
fn an_fcm_ring_of_strings_and_an_apns_ring_read_alike() {
    let android = reported(classify_push_data(
        fcm_data(&ring(Platform::Android, TokenKind::Fcm)),
        NOW + 500,
        Some(0),
    ));
    let apns_body = apns::body(
        &ring(Platform::Ios, TokenKind::ApnsVoip),
        "app.example.calls",
        NOW / 1000,
    );
    let ios = reported(classify_push(apns_body.to_string(), NOW + 500, Some(0)));
    assert_eq!(android, ios);
    assert_eq!(android.call_uuid, CALL);
    assert_eq!(android.caller_name, "Alice A.");
    assert_eq!(android.handle, "alice");
    assert!(android.video);
    assert_eq!(
        android.avatar_url.as_deref(),
        Some("https://example.com/a.png")
    );
}

#[test]
fn a_late_fcm_ring_is_reported_and_ended() {
    let data = fcm_data(&ring(Platform::Android, TokenKind::Fcm));
    assert!(matches!(
        classify_push_data(data, NOW + 60_000, Some(0)),
        PushDecision::ReportAndEnd {
            reason: EndedReason::Unanswered,
            ..
        }
    ));
}

#[test]
fn cancels_from_either_sender_are_not_calls() {
    for (platform, kind) in [
        (Platform::Android, TokenKind::Fcm),
        (Platform::Ios, TokenKind::ApnsAlert),
    ] {
        let mut push = ring(platform, kind);
        push.payload = PushPayload::CallCancelled {
            call_id: CALL.into(),
            reason: StopReason::CallerCancelled,
        };
        push.expires_at = None;
        let decision = match kind {
            TokenKind::Fcm => classify_push_data(fcm_data(&push), NOW, None),
            _ => classify_push(
                apns::body(&push, "app.example.calls", NOW / 1000).to_string(),
                NOW,
                None,
            ),
        };
        assert!(
            matches!(decision, PushDecision::NotACall { .. }),
            "{kind:?}: {decision:?}"
        );
    }
}

/// `switchboard push-test`'s ring, as each provider carries it: reported
/// (iOS requires it of a VoIP push) and ended at once, by the stateless
/// decision and by a running engine alike; a ring without the flag rings.
#[test]
fn a_test_push_is_reported_and_ended_at_once() {
    use control::device::{Capabilities, Device, PushTokens};
    let device = |platform, push| Device {
        device_id: "phone".into(),
        user_id: "bob".into(),
        platform,
        push,
        apns_environment: Some(ApnsEnvironment::Sandbox),
        bundle_id: Some("app.example.calls".into()),
        app_version: None,
        capabilities: Capabilities {
            callkit: platform == Platform::Ios,
            ..Capabilities::default()
        },
        last_seen_at: NOW,
        region: None,
    };
    let iphone = device(
        Platform::Ios,
        PushTokens {
            apns_voip: Some("ab".repeat(32)),
            ..PushTokens::default()
        },
    );
    let pixel = device(
        Platform::Android,
        PushTokens {
            fcm: Some("f".repeat(64)),
            ..PushTokens::default()
        },
    );
    let to_iphone = control::push::dispatch::test_ring(&iphone, NOW).unwrap();
    assert_eq!(to_iphone.token_kind, TokenKind::ApnsVoip);
    let to_pixel = control::push::dispatch::test_ring(&pixel, NOW).unwrap();
    let apns_json = apns::body(&to_iphone, "app.example.calls", NOW / 1000).to_string();
    let decisions = [
        classify_push(apns_json.clone(), NOW + 500, Some(0)),
        classify_push_data(fcm_data(&to_pixel), NOW + 500, None),
        native::call_engine::CallEngine::new().on_push(
            native::push::parse_json(&apns_json),
            std::time::Duration::ZERO,
            NOW + 500,
            Some(0),
        ),
    ];
    for decision in decisions {
        match decision {
            PushDecision::ReportAndEnd { call, reason } => {
                assert_eq!(reason, EndedReason::RemoteEnded);
                assert_eq!(call.caller_name, "Switchboard push test");
            }
            other => panic!("a test push must be reported and ended: {other:?}"),
        }
    }
    let mut ring = to_pixel;
    if let PushPayload::IncomingCall { test, .. } = &mut ring.payload {
        *test = false;
    }
    reported(classify_push_data(fcm_data(&ring), NOW + 500, None));
}
