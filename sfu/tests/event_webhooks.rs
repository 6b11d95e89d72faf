//! Call-event webhooks from the real `switchboard` process to a receiver in
//! this test: every delivery signed (Standard Webhooks, checked here), a
//! call's events in sequence order, a 503 answered by redelivering the same
//! event, a missed call, and events queued when the process is killed with
//! `kill -9` delivered after the restart. The SDK's verifier receives them
//! too (`sfu/tests/server_sdk.rs`). Media joins and leaves are reported as
//! str0m bots connect to the SFU and leave.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::live::{
    ServerProcess, free_port, post_json, request, scratch_dir, spawn_switchboard, user_token,
};
use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OLD_SECRET: &str = "whsec_c2VjcmV0LWJlaW5nLXJvdGF0ZWQtb3V0LW5vdw==";

#[derive(Default)]
struct Receiver {
    /// Every delivery: (webhook-id, body).
    deliveries: Mutex<Vec<(String, Value)>>,
    /// Answer 503 this many more times before taking deliveries.
    refuse: Mutex<u32>,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let id = header("webhook-id").to_string();
    let timestamp: u64 = header("webhook-timestamp").parse().unwrap_or(0);
    // Signed with both configured secrets (a rotation in progress); each
    // receiver checks the one it knows.
    let signatures: Vec<&str> = header("webhook-signature").split(' ').collect();
    for secret in [SECRET, OLD_SECRET] {
        let want = control::webhooks::sign(&[secret.to_string()], &id, timestamp, &body);
        assert!(
            signatures.contains(&want.as_str()),
            "no valid signature for {secret}: {signatures:?}"
        );
    }
    let age = control::unix_millis() / 1000 - timestamp;
    assert!(age < 60, "stale timestamp");
    let body: Value = serde_json::from_slice(&body).expect("a JSON body");
    assert_eq!(
        body["id"].as_str(),
        Some(id.as_str()),
        "webhook-id is the event id"
    );
    let mut refuse = r.refuse.lock().unwrap();
    r.deliveries.lock().unwrap().push((id, body));
    if *refuse > 0 {
        *refuse -= 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    StatusCode::OK
}

async fn start_receiver(port: u16, receiver: Arc<Receiver>) -> tokio::task::JoinHandle<()> {
    let app = axum::Router::new()
        .route("/events", axum::routing::post(receive))
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

async fn spawn(
    data_dir: &std::path::Path,
    http: u16,
    receiver_port: u16,
    ring_seconds: &str,
) -> ServerProcess {
    let url = format!("http://127.0.0.1:{receiver_port}/events");
    spawn_switchboard(
        data_dir,
        http,
        free_port(),
        &[
            ("SWITCHBOARD_EVENT_WEBHOOK_URL", &url),
            (
                "SWITCHBOARD_EVENT_WEBHOOK_SECRETS",
                &format!("{SECRET},{OLD_SECRET}"),
            ),
            ("SWITCHBOARD_RING_TIMEOUT_SECONDS", ring_seconds),
        ],
    )
    .await
}

async fn register(server: SocketAddr, user: &str, device: &str) {
    register_as(server, user, json!({"deviceId": device, "platform": "web"})).await;
}

/// An Android phone: with no events socket open, it is rung by push.
async fn register_phone(server: SocketAddr, user: &str, device: &str) {
    let fcm = format!("{device}-fcm-token-{}", "f".repeat(40));
    register_as(
        server,
        user,
        json!({"deviceId": device, "platform": "android", "push": {"fcm": fcm}}),
    )
    .await;
}

async fn register_as(server: SocketAddr, user: &str, device: Value) {
    let (status, body) = post_json(server, "/v1/devices", user, device).await;
    assert_eq!(status, 200, "{body}");
}

async fn create(server: SocketAddr, from: &str, to: &str) -> String {
    let (status, body) = post_json(
        server,
        "/v1/calls",
        from,
        json!({"calleeUserIds": [to], "type": "audio", "deviceId": format!("{from}-web")}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["call"]["callId"].as_str().unwrap().to_string()
}

/// The call's events as delivered (each id once, first delivery), waiting
/// until `until` holds (bounded).
async fn events_of(r: &Receiver, call_id: &str, until: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut seen = Vec::new();
        let mut events = Vec::new();
        for (id, body) in r.deliveries.lock().unwrap().iter() {
            if body["callId"] == call_id && !seen.contains(id) {
                seen.push(id.clone());
                events.push(body.clone());
            }
        }
        if until(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "timed out; events so far: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn has(kind: &'static str) -> impl Fn(&[Value]) -> bool {
    move |events| events.iter().any(|e| e["type"] == kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_yields_its_events_in_order_and_a_refused_one_is_redelivered() {
    let receiver = Arc::new(Receiver::default());
    let receiver_port = free_port();
    let _receiving = start_receiver(receiver_port, receiver.clone()).await;
    let server = spawn(&scratch_dir(), free_port(), receiver_port, "40").await;
    register(server.http, "alice", "alice-web").await;
    register_phone(server.http, "bob", "bob-phone").await;

    // The receiver refuses the first delivery twice.
    *receiver.refuse.lock().unwrap() = 2;
    let call_id = create(server.http, "alice", "bob").await;
    let (status, body) = post_json(
        server.http,
        &format!("/v1/calls/{call_id}/accept"),
        "bob",
        json!({"deviceId": "bob-phone"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post_json(
        server.http,
        &format!("/v1/calls/{call_id}/end"),
        "alice",
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let events = events_of(&receiver, &call_id, has("call.ended")).await;
    assert_eq!(
        kinds(&events),
        [
            "call.created",
            "call.ringing",
            "call.answered",
            "call.ended"
        ],
        "{events:#?}"
    );
    let sequence: Vec<u64> = events
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequence, [1, 2, 3, 4]);
    assert_eq!(events[0]["data"]["initiatorUserId"], "alice");
    assert_eq!(
        events[1]["data"],
        json!({"userId": "bob", "deviceId": "bob-phone", "via": "push"})
    );
    assert_eq!(events[2]["data"]["deviceId"], "bob-phone");
    assert_eq!(events[3]["data"]["reason"], "completed");

    // The first event came three times (503, 503, 200) under one id; no
    // other event was delivered twice, and nothing more arrives.
    let first = events[0]["id"].as_str().unwrap().to_string();
    let count = |id: &str| {
        receiver
            .deliveries
            .lock()
            .unwrap()
            .iter()
            .filter(|(d, _)| d == id)
            .count()
    };
    assert_eq!(count(&first), 3);
    for e in &events[1..] {
        assert_eq!(count(e["id"].as_str().unwrap()), 1);
    }
    let delivered = receiver.deliveries.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        receiver.deliveries.lock().unwrap().len(),
        delivered,
        "delivered again after a 200"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_call_and_events_queued_across_kill_dash_nine() {
    let receiver = Arc::new(Receiver::default());
    let receiver_port = free_port();
    let data_dir = scratch_dir();
    let http = free_port();
    // No receiver yet: every delivery fails and stays queued.
    let mut server = spawn(&data_dir, http, receiver_port, "1").await;
    register(server.http, "carol", "carol-web").await;
    register_phone(server.http, "dave", "dave-phone").await;
    let call_id = create(server.http, "carol", "dave").await;
    // Dave does not answer: after the 1 s ring the call is missed.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let auth = format!("Bearer {}", user_token("carol"));
        let (_, text) = request(
            server.http,
            "GET",
            &format!("/v1/calls/{call_id}"),
            &[("Authorization", &auth)],
            "",
        )
        .await;
        if text.contains("\"ended\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the call never timed out: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.child.kill().unwrap(); // SIGKILL: nothing flushed on the way out
    server.child.wait().unwrap();

    let _receiving = start_receiver(receiver_port, receiver.clone()).await;
    let _server = spawn(&data_dir, http, receiver_port, "1").await;
    let events = events_of(&receiver, &call_id, has("call.ended")).await;
    assert_eq!(
        kinds(&events),
        ["call.created", "call.ringing", "call.missed", "call.ended"],
        "{events:#?}"
    );
    assert_eq!(events[2]["data"]["userId"], "dave");
    assert_eq!(events[2]["data"]["fromUserId"], "carol");
    assert_eq!(events[3]["data"]["reason"], "timeout");
    let sequence: Vec<u64> = events
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequence, [1, 2, 3, 4]);
}

/// Media: both sides join the SFU with their call tokens, talk, and leave;
/// the backend hears each join and leave, then the end with its duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_joining_and_leaving_the_media_are_reported() {
    let receiver = Arc::new(Receiver::default());
    let receiver_port = free_port();
    let _receiving = start_receiver(receiver_port, receiver.clone()).await;
    let server = spawn(&scratch_dir(), free_port(), receiver_port, "40").await;
    register(server.http, "erin", "erin-web").await;
    register_phone(server.http, "frank", "frank-phone").await;
    let (status, created) = post_json(
        server.http,
        "/v1/calls",
        "erin",
        json!({"calleeUserIds": ["frank"], "type": "video", "deviceId": "erin-web"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();
    let (status, accepted) = post_json(
        server.http,
        &format!("/v1/calls/{call_id}/accept"),
        "frank",
        json!({"deviceId": "frank-phone"}),
    )
    .await;
    assert_eq!(status, 200, "{accepted}");
    let url = format!("ws://{}/v1/rtc", server.http);
    let talk = Duration::from_secs(3);
    let token = |v: &Value| v["callToken"].as_str().unwrap().to_string();
    tokio::join!(
        common::live::run_bot("erin", &url, token(&created), talk),
        common::live::run_bot("frank", &url, token(&accepted), talk),
    );

    let events = events_of(&receiver, &call_id, has("call.ended")).await;
    let kinds = kinds(&events);
    assert_eq!(
        kinds[..3],
        ["call.created", "call.ringing", "call.answered"],
        "{kinds:?}"
    );
    let joined = |user: &str| {
        events
            .iter()
            .position(|e| e["type"] == "participant.joined" && e["data"]["userId"] == user)
    };
    let left = |user: &str| {
        events
            .iter()
            .position(|e| e["type"] == "participant.left" && e["data"]["userId"] == user)
    };
    for user in ["erin", "frank"] {
        let (Some(j), Some(l)) = (joined(user), left(user)) else {
            panic!("{user} joined or left unreported: {kinds:?}");
        };
        assert!(j < l, "{kinds:?}");
    }
    let ended = events.last().unwrap();
    assert_eq!(ended["type"], "call.ended");
    assert_eq!(ended["data"]["reason"], "completed");
    assert!(
        ended["data"]["durationMs"].as_u64().unwrap() > 1000,
        "{ended}"
    );
    let sequence: Vec<u64> = events
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequence, (1..=events.len() as u64).collect::<Vec<_>>());
}
