//! The webhook provider behind the real dispatcher, against a local
//! receiver that checks the signature the way PUSH.md tells app backends
//! to: real HTTP on loopback, no internet.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Router, body::Bytes, extract::State};
use control::push::dispatch::{DispatchConfig, Providers, PushDispatcher};
use control::push::webhook::{SIGNATURE_HEADER, WebhookClient, verify_signature};
use control::service::CallService;
use control::store::{SqliteStore, Store};
use serde_json::Value;
use support::{call_bob, cancel, register_bob, ringing_service, wait_for};

const SECRET: &str = "webhook-secret-webhook-secret-0123";

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
    // One atomic step: two requests at once (the two phones' rings) must
    // not both take the last failure and wrap the count to "fail forever".
    let fails = r
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
            0 => None,
            usize::MAX => Some(usize::MAX),
            n => Some(n - 1),
        })
        .is_ok();
    if fails {
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

/// A receiver, and a ringing service whose pushes all go to it.
async fn setup(r: Arc<Receiver>, ring_ms: u64) -> CallService {
    let app = Router::new().route("/push", post(receive)).with_state(r);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    register_bob(&*store);
    let providers = Providers {
        webhook: Some(WebhookClient::new(format!("http://{addr}/push"), SECRET.into()).unwrap()),
        ..Providers::default()
    };
    let config = DispatchConfig {
        initial_backoff: Duration::from_millis(50),
        ..DispatchConfig::default()
    };
    let dispatcher = Arc::new(PushDispatcher::spawn(
        providers,
        config,
        store.clone(),
        None,
    ));
    ringing_service(store, dispatcher, ring_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_arrive_signed_once_each_after_a_503() {
    let r = Arc::new(Receiver {
        fail_first: AtomicUsize::new(1),
        ..Receiver::default()
    });
    let service = setup(r.clone(), 30_000).await;
    let started = Instant::now();
    let call = call_bob(&service, None);
    // Creating the call never waits for the network.
    assert!(started.elapsed() < Duration::from_secs(1));
    wait_for("two rings", || r.delivered.lock().unwrap().len() == 2).await;
    cancel(&service, &call.call_id);
    wait_for("two cancels", || r.delivered.lock().unwrap().len() == 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered = r.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 4, "{delivered:?}");
    assert_eq!(
        r.attempts.load(Ordering::SeqCst),
        5,
        "one 503, then four deliveries"
    );
    assert_eq!(r.bad_signatures.load(Ordering::SeqCst), 0);
    let find = |device: &str, event: &str| {
        delivered
            .iter()
            .find(|b| b["deviceId"] == device && b["payload"]["event"] == event)
            .unwrap()
            .clone()
    };
    let ring = find("iphone", "incoming_call");
    assert_eq!(ring["tokenKind"], "apnsVoip");
    assert_eq!(ring["token"], support::IPHONE_VOIP);
    assert_eq!(ring["platform"], "ios");
    assert_eq!(ring["payload"]["fromUserId"], "alice");
    assert!(ring["payload"].get("sdp").is_none());
    let ios_cancel = find("iphone", "call_cancelled");
    assert_eq!(
        ios_cancel["tokenKind"], "apnsAlert",
        "never VoIP for a cancel"
    );
    let android_cancel = find("pixel", "call_cancelled");
    assert_eq!(android_cancel["tokenKind"], "fcm");
    assert_eq!(
        android_cancel["payload"],
        serde_json::json!({"event": "call_cancelled", "callId": call.call_id, "reason": "caller_cancelled"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_that_ends_before_the_retry_is_not_retried() {
    let r = Arc::new(Receiver {
        fail_first: AtomicUsize::new(usize::MAX),
        ..Receiver::default()
    });
    // Retry-After: 1 s, but the ring ends in 500 ms: one attempt per phone.
    let service = setup(r.clone(), 500).await;
    let _call = call_bob(&service, None);
    wait_for("the first attempts", || {
        r.attempts.load(Ordering::SeqCst) >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(r.attempts.load(Ordering::SeqCst), 2);
    assert!(r.delivered.lock().unwrap().is_empty());
}
