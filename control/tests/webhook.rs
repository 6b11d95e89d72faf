//! The webhook sender against a local receiver that checks the signature the
//! way PUSH.md tells app backends to: real HTTP on loopback, no internet.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Router, body::Bytes, extract::State};
use control::call::{CallType, StopReason};
use control::device::{ApnsEnvironment, Capabilities, Device, Platform, PushTokens};
use control::push::webhook::{SIGNATURE_HEADER, WebhookConfig, WebhookSender, verify_signature};
use control::ringing::{PushRequest, PushSender};
use control::store::{SqliteStore, Store};
use serde_json::Value;

const SECRET: &str = "webhook-secret";

#[derive(Default)]
struct Receiver {
    /// Requests to answer 503 before answering 200 (all of them if usize::MAX).
    fail_first: AtomicUsize,
    attempts: AtomicUsize,
    delivered: Mutex<Vec<Value>>,
    bad_signatures: AtomicUsize,
}

async fn receive(
    State(r): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap) {
    r.attempts.fetch_add(1, Ordering::SeqCst);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if verify_signature(SECRET, header, &body, now).is_err() {
        r.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::UNAUTHORIZED, HeaderMap::new());
    }
    let left = r.fail_first.load(Ordering::SeqCst);
    if left > 0 {
        if left != usize::MAX {
            r.fail_first.fetch_sub(1, Ordering::SeqCst);
        }
        let mut h = HeaderMap::new();
        h.insert("retry-after", "1".parse().unwrap());
        return (StatusCode::SERVICE_UNAVAILABLE, h);
    }
    r.delivered
        .lock()
        .unwrap()
        .push(serde_json::from_slice(&body).unwrap());
    (StatusCode::OK, HeaderMap::new())
}

async fn receiver(r: Arc<Receiver>) -> String {
    let app = Router::new().route("/push", post(receive)).with_state(r);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/push")
}

fn store() -> Arc<dyn Store> {
    let s = SqliteStore::in_memory().unwrap();
    let hex = "ab".repeat(32);
    s.upsert_device(&Device {
        device_id: "phone".into(),
        user_id: "bob".into(),
        platform: Platform::Ios,
        push: PushTokens {
            apns_voip: Some(hex.clone()),
            apns_alert: Some("cd".repeat(32)),
            fcm: None,
        },
        apns_environment: Some(ApnsEnvironment::Sandbox),
        bundle_id: Some("com.example.app".into()),
        app_version: None,
        capabilities: Capabilities::default(),
        last_seen_at: 0,
    })
    .unwrap();
    s.upsert_device(&Device {
        device_id: "pixel".into(),
        user_id: "bob".into(),
        platform: Platform::Android,
        push: PushTokens {
            fcm: Some("fcm-token-fcm-token-fcm-token-fcm-token".into()),
            ..PushTokens::default()
        },
        apns_environment: None,
        bundle_id: None,
        app_version: None,
        capabilities: Capabilities::default(),
        last_seen_at: 0,
    })
    .unwrap();
    Arc::new(s)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn ring(device: &str, epoch: u64, expires_in_ms: u64) -> PushRequest {
    PushRequest::Ring {
        call_id: "call-1".into(),
        user_id: "bob".into(),
        device_id: device.into(),
        from_user_id: "alice".into(),
        call_type: CallType::Video,
        ring_epoch: epoch,
        expires_at: now_ms() + expires_in_ms,
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(8);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_arrive_signed_once_each_after_a_503() {
    let r = Arc::new(Receiver {
        fail_first: AtomicUsize::new(1),
        ..Receiver::default()
    });
    let url = receiver(r.clone()).await;
    let sender = WebhookSender::spawn(
        WebhookConfig {
            url,
            secret: SECRET.into(),
            max_attempts: 5,
            initial_backoff: Duration::from_millis(50),
        },
        store(),
    );
    let started = Instant::now();
    sender.send(ring("phone", 1, 30_000));
    sender.send(ring("phone", 1, 30_000)); // the same ring again: not a second push
    sender.send(PushRequest::Cancel {
        call_id: "call-1".into(),
        user_id: "bob".into(),
        device_id: "pixel".into(),
        reason: StopReason::AnsweredElsewhere,
    });
    // send() only queues: it never waits for the network.
    assert!(started.elapsed() < Duration::from_millis(50));
    wait_for("two deliveries", || r.delivered.lock().unwrap().len() == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered = r.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    assert_eq!(
        r.attempts.load(Ordering::SeqCst),
        3,
        "one 503, then two deliveries"
    );
    assert_eq!(r.bad_signatures.load(Ordering::SeqCst), 0);
    let ring = delivered.iter().find(|b| b["deviceId"] == "phone").unwrap();
    assert_eq!(ring["tokenKind"], "apnsVoip");
    assert_eq!(ring["platform"], "ios");
    assert_eq!(ring["payload"]["event"], "incoming_call");
    assert_eq!(ring["payload"]["ringEpoch"], 1);
    assert_eq!(ring["payload"]["fromUserId"], "alice");
    assert!(ring["payload"].get("sdp").is_none());
    let cancel = delivered.iter().find(|b| b["deviceId"] == "pixel").unwrap();
    assert_eq!(cancel["tokenKind"], "fcm");
    assert_eq!(
        cancel["payload"],
        serde_json::json!({"event": "call_cancelled", "callId": "call-1", "reason": "answered_elsewhere"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_ring_is_not_retried() {
    let r = Arc::new(Receiver {
        fail_first: AtomicUsize::new(usize::MAX),
        ..Receiver::default()
    });
    let url = receiver(r.clone()).await;
    let sender = WebhookSender::spawn(
        WebhookConfig {
            url,
            secret: SECRET.into(),
            max_attempts: 50,
            initial_backoff: Duration::from_millis(50),
        },
        store(),
    );
    // Retry-After: 1 s, but the ring ends in 500 ms: one attempt only.
    sender.send(ring("phone", 2, 500));
    wait_for("the first attempt", || {
        r.attempts.load(Ordering::SeqCst) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(r.attempts.load(Ordering::SeqCst), 1);
    assert!(r.delivered.lock().unwrap().is_empty());
}
