//! Push delivery end to end: the call service rings, the dispatcher pushes
//! through the real APNs and FCM clients, and local stand-ins check what
//! Apple and Google check (TLS, HTTP/2 only, provider / OAuth tokens,
//! headers, payload schema) and answer with their real errors.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use control::call::{CallType, CallerDisplay};
use control::device::{ApnsEnvironment, Platform};
use control::push::dispatch::DispatchConfig;
use control::push::payload::PushPayload;
use control::push::{Outcome, Outgoing, TokenKind};
use control::ringing::{PushRequest, PushSender};
use futures_util::future::join_all;
use serde_json::json;
use support::{IPHONE_ALERT, IPHONE_VOIP, PIXEL_FCM, harness, now_ms, wait_for};

fn quick_retries() -> DispatchConfig {
    DispatchConfig {
        initial_backoff: Duration::from_millis(50),
        ..DispatchConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_pushes_each_phone_once_with_the_standard_payload_and_the_cancel_is_never_voip() {
    let h = harness(30_000, quick_retries()).await;
    let call = h.call_bob(Some("Alice A."));
    let deadline = call.ring_deadline.unwrap();
    wait_for("the VoIP push and the FCM message", || {
        h.apns.accepted_for(IPHONE_VOIP).len() == 1 && h.fcm.accepted_for(PIXEL_FCM).len() == 1
    })
    .await;

    // iOS: a VoIP push to the PushKit token, with every header APNs wants.
    let voip = &h.apns.accepted_for(IPHONE_VOIP)[0];
    let header = |name: &str| voip.headers.get(name).map(String::as_str);
    assert_eq!(header("apns-push-type"), Some("voip"));
    assert_eq!(header("apns-topic"), Some("com.example.calls.voip"));
    assert_eq!(header("apns-priority"), Some("10"));
    assert_eq!(
        header("apns-expiration"),
        Some(&*(deadline / 1000).to_string())
    );
    assert_eq!(header("apns-collapse-id"), Some(call.call_id.as_str()));
    assert!(uuid::Uuid::parse_str(header("apns-id").unwrap()).is_ok());
    let ring_epoch = voip.body["ringEpoch"].as_u64().unwrap();
    let timestamp = voip.body["timestamp"].as_u64().unwrap();
    assert_eq!(
        voip.body,
        json!({
            "event": "incoming_call", "callId": call.call_id, "fromUserId": "alice",
            "type": "video", "timestamp": timestamp, "ttlSeconds": (deadline - timestamp) / 1000,
            "ringEpoch": ring_epoch, "expiresAt": deadline, "callerDisplayName": "Alice A.",
            "modeHint": "sfu"
        })
    );
    assert!(ring_epoch >= call.created_at && ring_epoch <= timestamp);

    // Android: data-only, high priority, every value a string, ttl = time left.
    let fcm = &h.fcm.accepted_for(PIXEL_FCM)[0];
    assert_eq!(fcm["android"]["priority"], "HIGH");
    let ttl = fcm["android"]["ttl"].as_str().unwrap();
    let ttl: u64 = ttl.strip_suffix('s').unwrap().parse().unwrap();
    assert!((25..=30).contains(&ttl), "ttl {ttl}");
    assert!(fcm.get("notification").is_none());
    assert_eq!(fcm["data"]["event"], "incoming_call");
    assert_eq!(fcm["data"]["callId"], call.call_id.as_str());
    assert_eq!(fcm["data"]["type"], "video");
    assert_eq!(fcm["data"]["ringEpoch"], ring_epoch.to_string());
    assert_eq!(fcm["data"]["expiresAt"], deadline.to_string());

    // The same ring asked for again (a retried effect) is not a second push.
    h.dispatcher.send(PushRequest::Ring {
        call_id: call.call_id.clone(),
        user_id: "bob".into(),
        device_id: "iphone".into(),
        from_user_id: "alice".into(),
        call_type: CallType::Video,
        ring_epoch,
        expires_at: deadline,
        caller_display: CallerDisplay::default(),
    });

    // The caller hangs up: a regular push to the alert token, a normal FCM message.
    h.cancel(&call.call_id);
    wait_for("the cancels", || {
        h.apns.accepted_for(IPHONE_ALERT).len() == 1 && h.fcm.accepted_for(PIXEL_FCM).len() == 2
    })
    .await;
    let cancel = &h.apns.accepted_for(IPHONE_ALERT)[0];
    assert_eq!(cancel.headers["apns-push-type"], "background");
    assert_eq!(cancel.headers["apns-topic"], "com.example.calls");
    assert_eq!(cancel.headers["apns-priority"], "5");
    assert_eq!(cancel.body["event"], "call_cancelled");
    assert_eq!(cancel.body["reason"], "caller_cancelled");
    assert_eq!(cancel.body["aps"], json!({"content-available": 1}));
    let fcm_cancel = &h.fcm.accepted_for(PIXEL_FCM)[1];
    assert_eq!(fcm_cancel["android"]["priority"], "NORMAL");
    assert_eq!(fcm_cancel["data"]["reason"], "caller_cancelled");

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.apns.accepted_for(IPHONE_VOIP).len(),
        1,
        "one VoIP push per ring"
    );
    let voip_pushes = h
        .apns
        .state
        .accepted
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.headers["apns-push-type"] == "voip")
        .count();
    assert_eq!(voip_pushes, 1, "cancels are never VoIP");
    // The web device is never pushed; nothing else was sent.
    assert_eq!(h.apns.state.requests.load(Ordering::SeqCst), 2);
    assert_eq!(h.fcm.state.requests.load(Ordering::SeqCst), 2);
    // One OAuth token served both FCM messages; one provider token both APNs pushes.
    assert_eq!(h.fcm.state.token_requests.load(Ordering::SeqCst), 1);
    assert_eq!(h.apns.state.provider_tokens.lock().unwrap().len(), 1);
    assert_eq!(
        h.counter(
            "switchboard_push_delivered_total",
            &[("provider", "apns"), ("kind", "ring")]
        ),
        1
    );
    assert_eq!(
        h.counter(
            "switchboard_push_delivered_total",
            &[("provider", "fcm"), ("kind", "cancel")]
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iphone_without_callkit_is_rung_by_a_visible_alert_never_voip() {
    let h = harness(30_000, quick_retries()).await;
    // Sold in mainland China (CallKit is not allowed there): the app
    // registers `callkit: false`; it still holds a PushKit token.
    let (china_voip, china_alert) = ("d4".repeat(32), "e5".repeat(32));
    let mut device = support::device(
        "bob",
        "iphone-cn",
        Platform::Ios,
        control::device::PushTokens {
            apns_voip: Some(china_voip.clone()),
            apns_alert: Some(china_alert.clone()),
            fcm: None,
        },
    );
    device.capabilities.callkit = false;
    h.store.upsert_device(&device).unwrap();

    let call = h.call_bob(Some("Alice A."));
    wait_for(
        "the alert ring and the VoIP ring of the other iPhone",
        || {
            h.apns.accepted_for(&china_alert).len() == 1
                && h.apns.accepted_for(IPHONE_VOIP).len() == 1
        },
    )
    .await;
    let ring = &h.apns.accepted_for(&china_alert)[0];
    assert_eq!(ring.headers["apns-push-type"], "alert");
    assert_eq!(ring.headers["apns-topic"], "com.example.calls");
    assert_eq!(ring.headers["apns-priority"], "10");
    assert_eq!(
        ring.headers["apns-expiration"],
        (call.ring_deadline.unwrap() / 1000).to_string()
    );
    assert_eq!(ring.body["event"], "incoming_call");
    assert_eq!(ring.body["callId"], call.call_id.as_str());
    assert_eq!(ring.body["aps"]["alert"]["title"], "Alice A.");
    assert_eq!(ring.body["aps"]["category"], "INCOMING_CALL");
    // Its PushKit token is never used.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.apns.accepted_for(&china_voip).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_tokens_are_removed_and_not_pushed_again_while_bad_ones_stay() {
    let backend = control::webhooks::Endpoint {
        url: "http://127.0.0.1:9/events".into(),
        secrets: vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
    };
    let config = DispatchConfig {
        event_webhooks: vec![backend.clone()],
        ..quick_retries()
    };
    let h = harness(30_000, config).await;
    let ipad_voip = "c3".repeat(32);
    h.store
        .upsert_device(&support::device(
            "bob",
            "ipad",
            Platform::Ios,
            control::device::PushTokens {
                apns_voip: Some(ipad_voip.clone()),
                ..Default::default()
            },
        ))
        .unwrap();
    h.apns
        .state
        .unregistered
        .lock()
        .unwrap()
        .insert(IPHONE_VOIP.into());
    h.fcm
        .state
        .unregistered
        .lock()
        .unwrap()
        .insert(PIXEL_FCM.into());
    h.apns.script(&ipad_voip, &[(400, "BadDeviceToken", None)]);

    let first = h.call_bob(None);
    let tokens = |device: &str| {
        let devices = h.store.devices_of("bob").unwrap();
        devices
            .into_iter()
            .find(|d| d.device_id == device)
            .unwrap()
            .push
    };
    wait_for("the dead tokens to be removed", || {
        tokens("iphone").apns_voip.is_none() && tokens("pixel").fcm.is_none()
    })
    .await;
    wait_for("the BadDeviceToken answer", || {
        h.counter(
            "switchboard_push_failed_total",
            &[("reason", "BadDeviceToken")],
        ) == 1
    })
    .await;
    // Removed: only the dead tokens. The alert token and the iPad's stay.
    assert_eq!(tokens("iphone").apns_alert.as_deref(), Some(IPHONE_ALERT));
    assert_eq!(
        tokens("ipad").apns_voip.as_deref(),
        Some(ipad_voip.as_str())
    );
    // Counted after the store removed the token and queued its event: wait
    // for the count (asserting it at once raced the second removal).
    wait_for("both removals counted", || {
        h.counter("switchboard_push_tokens_removed_total", &[]) == 2
    })
    .await;
    // The app backend is told, once per removed token, so it can forget it too.
    let told = h.store.due_events(now_ms() + 3_600_000, 100).unwrap();
    let mut removed: Vec<(String, String)> = told
        .iter()
        .map(|q| {
            assert_eq!(q.event.kind, "device.token_removed");
            assert_eq!(q.event.endpoint, backend.url);
            let data: serde_json::Value = serde_json::from_str(&q.event.data).unwrap();
            assert_eq!(data["userId"], "bob");
            (
                data["deviceId"].as_str().unwrap().into(),
                data["tokenKind"].as_str().unwrap().into(),
            )
        })
        .collect();
    removed.sort();
    assert_eq!(
        removed,
        [
            ("iphone".into(), "apnsVoip".into()),
            ("pixel".into(), "fcm".into())
        ]
    );
    assert_eq!(
        h.counter(
            "switchboard_push_failed_total",
            &[("reason", "Unregistered")]
        ),
        1
    );
    assert_eq!(
        h.counter(
            "switchboard_push_failed_total",
            &[("reason", "UNREGISTERED")]
        ),
        1
    );
    h.cancel(&first.call_id);
    wait_for("the iPhone's cancel", || {
        h.apns.accepted_for(IPHONE_ALERT).len() == 1
    })
    .await;

    let apns_before = h.apns.state.requests.load(Ordering::SeqCst);
    let fcm_before = h.fcm.state.requests.load(Ordering::SeqCst);
    let second = h.call_bob(None);
    wait_for("the iPad's ring", || {
        h.apns.accepted_for(&ipad_voip).len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Only the iPad was pushed: nothing to the removed VoIP or FCM tokens.
    assert_eq!(
        h.apns.state.requests.load(Ordering::SeqCst),
        apns_before + 1
    );
    assert_eq!(h.fcm.state.requests.load(Ordering::SeqCst), fcm_before);
    h.cancel(&second.call_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_and_delivered_once() {
    let h = harness(30_000, quick_retries()).await;
    h.apns
        .script(IPHONE_VOIP, &[(503, "ServiceUnavailable", None)]);
    h.fcm.script(
        PIXEL_FCM,
        &[(503, "UNAVAILABLE", None), (429, "QUOTA_EXCEEDED", Some(0))],
    );
    let call = h.call_bob(None);
    wait_for("both delivered after retries", || {
        h.apns.accepted_for(IPHONE_VOIP).len() == 1 && h.fcm.accepted_for(PIXEL_FCM).len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.apns.accepted_for(IPHONE_VOIP).len(), 1);
    assert_eq!(
        h.apns.state.requests.load(Ordering::SeqCst),
        2,
        "one 503, one 200"
    );
    assert_eq!(
        h.fcm.state.requests.load(Ordering::SeqCst),
        3,
        "503, 429, 200"
    );
    assert_eq!(
        h.counter("switchboard_push_retried_total", &[("provider", "apns")]),
        1
    );
    assert_eq!(
        h.counter("switchboard_push_retried_total", &[("provider", "fcm")]),
        2
    );
    h.cancel(&call.call_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_that_ends_before_the_retry_is_not_retried() {
    // Rings last 2 s; APNs says come back in 5 s.
    let h = harness(2_000, quick_retries()).await;
    h.apns
        .script(IPHONE_VOIP, &[(429, "TooManyRequests", Some(5))]);
    h.fcm.script(PIXEL_FCM, &[(503, "UNAVAILABLE", Some(5))]);
    let _call = h.call_bob(None);
    wait_for("the first attempts", || {
        h.apns.state.requests.load(Ordering::SeqCst) == 1
            && h.fcm.state.requests.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(h.apns.state.requests.load(Ordering::SeqCst), 1);
    assert_eq!(h.fcm.state.requests.load(Ordering::SeqCst), 1);
    assert_eq!(
        h.counter("switchboard_push_failed_total", &[("reason", "ring_over")]),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_pushes_share_one_tls_connection() {
    let apns = support::apns::FakeApns::start().await;
    let client = support::apns_client(&apns);
    let expires_at = now_ms() + 30_000;
    let pushes: Vec<Outgoing> = (0..500)
        .map(|i| Outgoing {
            call_id: format!("call-{i}"),
            user_id: format!("user-{i}"),
            device_id: "phone".into(),
            platform: Platform::Ios,
            token_kind: TokenKind::ApnsVoip,
            token: format!("{i:064x}"),
            payload: PushPayload::incoming_call(
                &format!("call-{i}"),
                "alice",
                CallType::Audio,
                1,
                expires_at,
                CallerDisplay::default(),
                now_ms(),
            ),
            expires_at: Some(expires_at),
            apns_environment: ApnsEnvironment::Production,
            bundle_id: None,
        })
        .collect();
    let started = Instant::now();
    let outcomes = join_all(pushes.iter().map(|p| client.send(p))).await;
    let elapsed = started.elapsed();
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Delivered),
        "{:?}",
        outcomes.iter().find(|o| **o != Outcome::Delivered)
    );
    assert_eq!(apns.state.accepted.lock().unwrap().len(), 500);
    assert_eq!(
        apns.server.connections(),
        1,
        "one HTTP/2 connection for every push"
    );
    assert_eq!(
        apns.state.provider_tokens.lock().unwrap().len(),
        1,
        "one provider token, not one per request"
    );
    println!("500 pushes over one connection in {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_push_service_does_not_hold_up_ringing() {
    let h = harness(30_000, quick_retries()).await;
    h.apns.state.stall.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let _call = h.call_bob(None);
    let create_took = started.elapsed();
    // The stall holds the push, not the call: created at once, and FCM
    // (another provider) still gets its message.
    wait_for("the FCM ring", || h.fcm.accepted_for(PIXEL_FCM).len() == 1).await;
    wait_for("the stalled APNs request", || {
        h.apns.state.requests.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        create_took < Duration::from_secs(2),
        "create took {create_took:?}"
    );
    assert!(h.apns.accepted_for(IPHONE_VOIP).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rings_beyond_a_devices_rate_limit_are_dropped_but_cancels_still_go() {
    let h = harness(
        30_000,
        DispatchConfig {
            per_device: control::rate_limit::Rate::per_minute(2),
            ..quick_retries()
        },
    )
    .await;
    for i in 0..3 {
        let call = h.call_bob(None);
        if i < 2 {
            wait_for("the ring", || {
                h.apns.accepted_for(IPHONE_VOIP).len() == i + 1
            })
            .await;
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        h.cancel(&call.call_id);
        wait_for("the cancel", || {
            h.apns.accepted_for(IPHONE_ALERT).len() == i + 1
        })
        .await;
    }
    wait_for("the Pixel's two rings and three cancels", || {
        h.fcm.accepted_for(PIXEL_FCM).len() == 2 + 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.apns.accepted_for(IPHONE_VOIP).len(), 2);
    assert_eq!(h.fcm.accepted_for(PIXEL_FCM).len(), 2 + 3);
    assert_eq!(
        h.counter(
            "switchboard_push_failed_total",
            &[("reason", "rate_limited")]
        ),
        2,
        "the third ring of each phone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_provider_token_called_expired_is_a_clock_fault_not_a_refresh_loop() {
    let h = harness(30_000, quick_retries()).await;
    h.apns
        .script(IPHONE_VOIP, &[(403, "ExpiredProviderToken", None)]);
    let _call = h.call_bob(None);
    wait_for("the refusal to be counted", || {
        h.counter(
            "switchboard_push_failed_total",
            &[("reason", "ExpiredProviderToken")],
        ) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A token minted seconds ago is not replaced (Apple would throttle it:
    // TooManyProviderTokenUpdates) and the push is not retried.
    assert_eq!(h.apns.state.requests.load(Ordering::SeqCst), 1);
    assert_eq!(h.apns.state.provider_tokens.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_provider_bounds_the_queue_expires_rings_and_recovers() {
    let (in_flight, queued) = (4, 6);
    let h = harness(
        2_000,
        DispatchConfig {
            max_in_flight: in_flight,
            max_queued: queued,
            per_device: control::rate_limit::Rate::per_minute(1_000),
            ..quick_retries()
        },
    )
    .await;
    h.apns.state.stall.store(true, Ordering::SeqCst);
    // 30 calls ring the iPhone (APNs, stalled) and the Pixel (FCM): 60 pushes.
    for _ in 0..30 {
        h.call_bob(None);
    }
    wait_for("the in-flight slots held by APNs", || {
        h.apns.state.requests.load(Ordering::SeqCst) == in_flight
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Bounded: the held deliveries, the queue, and the one the loop holds.
    let unsettled = h.dispatcher.unsettled();
    assert!(
        unsettled <= in_flight + queued + 1,
        "{unsettled} pushes held"
    );
    assert_eq!(
        h.apns.state.requests.load(Ordering::SeqCst),
        in_flight,
        "no request beyond the in-flight limit"
    );
    let dropped = h.counter("switchboard_push_failed_total", &[("reason", "queue_full")]);
    assert!(
        dropped >= 60 - (in_flight + queued + 1) as u64 - 10,
        "dropped {dropped}"
    );
    // The rings end (2 s) while APNs is away; then it comes back.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    h.apns.state.stall.store(false, Ordering::SeqCst);
    wait_for("every push settled", || h.dispatcher.unsettled() == 0).await;
    // What waited past its ring was not sent: only the held four reached APNs.
    assert_eq!(h.apns.state.requests.load(Ordering::SeqCst), in_flight);
    assert!(h.counter("switchboard_push_failed_total", &[("reason", "ring_over")]) > 0);
    // Delivery resumes.
    let before = h.apns.accepted_for(IPHONE_VOIP).len();
    h.call_bob(None);
    wait_for("a new ring through APNs", || {
        h.apns.accepted_for(IPHONE_VOIP).len() == before + 1
    })
    .await;
}
