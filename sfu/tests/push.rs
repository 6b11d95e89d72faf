//! The `switchboard` server configured for APNs and FCM as an operator would
//! (`[apns]`, `[fcm]`, an extra root for the stand-ins), driven over its
//! real HTTP API: devices register, a call rings them by push, a stalled
//! APNs does not slow the API, and `/metrics` counts what happened.

mod common;
#[path = "../../control/tests/support/mod.rs"]
mod push_support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::live::{http, post_as, scratch_dir, start_server_with_configured_push};
use push_support::{IPHONE_VOIP, PIXEL_FCM, apns, fcm, wait_for};
use serde_json::json;
use sfu::config::{ApnsSettings, FcmSettings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_server_rings_phones_by_push_and_a_stalled_apns_does_not_slow_the_api() {
    let apns = apns::FakeApns::start().await;
    let fcm = fcm::FakeFcm::start().await;
    let files = scratch_dir();
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("AuthKey.p8"), &apns.key_pem).unwrap();
    std::fs::write(
        files.join("service-account.json"),
        &fcm.service_account_json,
    )
    .unwrap();
    std::fs::write(files.join("test-ca.pem"), &apns.server.ca_pem).unwrap();
    let (apns_url, fcm_url) = (apns.server.url.clone(), fcm.server.url.clone());
    let server = start_server_with_configured_push(|c| {
        c.apns = Some(ApnsSettings {
            key_file: files.join("AuthKey.p8"),
            key_id: apns::KEY_ID.into(),
            team_id: apns::TEAM_ID.into(),
            bundle_id: apns::BUNDLE_ID.into(),
            production_url: apns_url.clone(),
            sandbox_url: apns_url,
        });
        c.fcm = Some(FcmSettings {
            service_account_file: files.join("service-account.json"),
            project_id: None,
            url: fcm_url,
        });
        c.push_extra_root_cert = Some(files.join("test-ca.pem"));
    })
    .await;

    let iphone = json!({"deviceId": "iphone", "platform": "ios",
        "push": {"apnsVoip": IPHONE_VOIP}, "apnsEnvironment": "sandbox", "bundleId": apns::BUNDLE_ID,
        "capabilities": {"callkit": true}});
    let pixel = json!({"deviceId": "pixel", "platform": "android",
        "push": {"fcm": PIXEL_FCM}, "capabilities": {"telecom": true}});
    for device in [iphone, pixel] {
        let (status, body) = post_as(&server, "/v1/devices", "bob", device).await;
        assert_eq!(status, 200, "{body}");
    }

    // APNs hangs: the call is still created at once, and Android still rings.
    apns.state.stall.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let (status, call) = post_as(
        &server,
        "/v1/calls",
        "alice",
        json!({"calleeUserIds": ["bob"], "type": "audio", "deviceId": "alice-phone",
               "callerDisplayName": "Alice"}),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, 201, "{call}");
    assert!(took < Duration::from_secs(2), "create took {took:?}");
    wait_for("the FCM ring", || fcm.accepted_for(PIXEL_FCM).len() == 1).await;
    let message = &fcm.accepted_for(PIXEL_FCM)[0];
    assert_eq!(message["data"]["callId"], call["call"]["callId"]);
    assert_eq!(message["data"]["callerDisplayName"], "Alice");
    assert_eq!(message["android"]["priority"], "HIGH");
    wait_for("the stalled APNs request", || {
        apns.state.requests.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(apns.accepted_for(IPHONE_VOIP).is_empty());

    // The provider's answer is counted just after the stand-in records it.
    let counted =
        r#"switchboard_push_delivered_total{kind="ring",platform="android",provider="fcm"} 1"#;
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = http(&server, "GET", "/metrics", "").await.1;
        if metrics.lines().any(|l| l == counted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metrics.lines().any(|l| l == counted), "{metrics}");
    assert!(metrics.contains("switchboard_push_latency_seconds_bucket"));
    server.shutdown().await;
}
