//! Ringing over real WebSockets: devices with an events socket get the ring
//! and acknowledge it; unacknowledged or unconnected mobile devices are
//! pushed; when one device answers the others are rung off (socket and a
//! regular push), and a device connecting mid-ring gets the ring.

mod common;
#[path = "../../control/tests/support/mod.rs"]
mod push_support;

use std::sync::Arc;
use std::time::Duration;

use common::live::{post_as, start_server_with_push, user_token};
use control::call::StopReason;
use futures_util::{SinkExt, StreamExt};
use push_support::RecordingPush;
use serde_json::{Value, json};
use sfu::server::Running;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn events(server: &Running, user: &str, device: &str) -> Ws {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/events", server.http_addr))
            .await
            .unwrap();
    let auth = json!({"type": "auth", "token": user_token(user), "deviceId": device});
    ws.send(Message::text(auth.to_string())).await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "authenticated");
    ws
}

async fn next(ws: &mut Ws) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("an event in time");
        if let Some(Ok(Message::Text(t))) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// The next event of `kind`, skipping call.event notices.
async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    for _ in 0..20 {
        let v = next(ws).await;
        if v["type"] == kind {
            return v;
        }
    }
    panic!("no {kind}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_ring_ack_fall_back_to_push_and_are_rung_off() {
    let push = Arc::new(RecordingPush::default());
    let server = start_server_with_push(|_| {}, push.clone()).await;
    let hex = "ab".repeat(32);
    for device in [
        json!({"deviceId": "b-web", "platform": "web"}),
        json!({"deviceId": "b-ios", "platform": "ios", "push": {"apnsVoip": hex, "apnsAlert": hex},
               "apnsEnvironment": "sandbox", "bundleId": "com.example.app"}),
        json!({"deviceId": "b-android", "platform": "android",
               "push": {"fcm": "fcm-token-fcm-token-fcm-token-fcm-token-1234"}}),
    ] {
        let (status, body) = post_as(&server, "/v1/devices", "bob", device).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut web = events(&server, "bob", "b-web").await;
    let mut ios = events(&server, "bob", "b-ios").await;

    let (_, created) = post_as(
        &server,
        "/v1/calls",
        "alice",
        json!({"calleeUserIds": ["bob"], "type": "video", "deviceId": "a1"}),
    )
    .await;
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();
    for ws in [&mut web, &mut ios] {
        let ring = next_of(ws, "call.ringing").await;
        assert_eq!(ring["callId"], call_id.as_str());
        assert_eq!(ring["fromUserId"], "alice");
    }
    // The Android device has no socket: pushed at once.
    assert_eq!(push.rings("b-android"), 1);
    // The web device acknowledges; the iOS app's socket looks open but it never does.
    web.send(Message::text(
        json!({"type": "ack", "callId": call_id}).to_string(),
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(
        push.rings("b-ios"),
        1,
        "an unacknowledged ring falls back to push"
    );
    assert_eq!(push.rings("b-web"), 0, "web devices are never pushed");

    // Bob answers on the web: the phone and the tablet are rung off.
    let (status, body) = post_as(
        &server,
        &format!("/v1/calls/{call_id}/accept"),
        "bob",
        json!({"deviceId": "b-web"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let cancel = next_of(&mut ios, "call.cancelled").await;
    assert_eq!(cancel["reason"], "answered_elsewhere");
    assert_eq!(push.cancels("b-ios"), vec![StopReason::AnsweredElsewhere]);
    assert_eq!(
        push.cancels("b-android"),
        vec![StopReason::AnsweredElsewhere]
    );
    assert!(push.cancels("b-web").is_empty());

    // A device that connects while a call rings for it gets the ring.
    let (_, second) = post_as(
        &server,
        "/v1/calls",
        "carol",
        json!({"calleeUserIds": ["bob"], "type": "audio", "deviceId": "c1"}),
    )
    .await;
    let mut android = events(&server, "bob", "b-android").await;
    let ring = next_of(&mut android, "call.ringing").await;
    assert_eq!(ring["callId"], second["call"]["callId"]);

    // An unregistered device cannot listen.
    let (mut stranger, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/events", server.http_addr))
            .await
            .unwrap();
    let auth = json!({"type": "auth", "token": user_token("bob"), "deviceId": "nope"});
    stranger
        .send(Message::text(auth.to_string()))
        .await
        .unwrap();
    assert_eq!(next(&mut stranger).await["code"], "unknown_device");
}

/// Registers each (user, device) as a web device.
async fn register_web_devices(server: &Running, devices: &[(&str, &str)]) {
    for (user, device) in devices {
        let (status, body) = post_as(
            server,
            "/v1/devices",
            user,
            json!({"deviceId": device, "platform": "web"}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
}

/// The next `call.event` on `ws`: (call id, event name).
async fn next_call_event(ws: &mut Ws) -> (String, String) {
    let e = next_of(ws, "call.event").await;
    let field = |name: &str| e[name].as_str().unwrap_or_default().to_string();
    (field("callId"), field("event"))
}

async fn call_id_of(created: &Value) -> String {
    created["call"]["callId"].as_str().unwrap().to_string()
}

/// The unhappy paths over real sockets: decline, caller cancel, and a device
/// that connects after its call ended (busy is in `calls.rs`, which has media).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decline_cancel_and_late_connect() {
    let server = start_server_with_push(|_| {}, Arc::new(RecordingPush::default())).await;
    register_web_devices(&server, &[("alice", "a1"), ("bob", "b1"), ("bob", "b2")]).await;
    let mut a1 = events(&server, "alice", "a1").await;
    let mut b1 = events(&server, "bob", "b1").await;
    let mut b2 = events(&server, "bob", "b2").await;
    let call = |caller: &'static str, callee: &'static str| {
        let body =
            json!({"calleeUserIds": [callee], "type": "audio", "deviceId": format!("{caller}1")});
        let server = &server;
        async move { post_as(server, "/v1/calls", caller, body).await.1 }
    };

    // Decline on b1: b2 is rung off, the caller hears declined and ended.
    let id = call_id_of(&call("alice", "bob").await).await;
    next_of(&mut b1, "call.ringing").await;
    next_of(&mut b2, "call.ringing").await;
    let (status, _) = post_as(
        &server,
        &format!("/v1/calls/{id}/decline"),
        "bob",
        json!({"deviceId": "b1"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        next_of(&mut b2, "call.cancelled").await["reason"],
        "declined_elsewhere"
    );
    let mut caller_events = Vec::new();
    while caller_events.last().map(String::as_str) != Some("call.ended") {
        let e = next_of(&mut a1, "call.event").await;
        caller_events.push(e["event"].as_str().unwrap().to_string());
    }
    assert_eq!(
        caller_events,
        vec!["call.ringing", "call.declined", "call.ended"]
    );

    // The caller cancels: every ringing device is told why.
    let id = call_id_of(&call("alice", "bob").await).await;
    next_of(&mut b1, "call.ringing").await;
    next_of(&mut b2, "call.ringing").await;
    let (status, _) = post_as(
        &server,
        &format!("/v1/calls/{id}/cancel"),
        "alice",
        Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        next_of(&mut b1, "call.cancelled").await["reason"],
        "caller_cancelled"
    );
    assert_eq!(
        next_of(&mut b2, "call.cancelled").await["reason"],
        "caller_cancelled"
    );

    // A device that connects after its call ended hears that it ended.
    let mut late = events(&server, "bob", "b2").await;
    let ended = next_of(&mut late, "call.event").await;
    assert_eq!(ended["event"], "call.ended");
}

/// A caller whose socket was down when the callee answered (a token
/// refresh, a network change) hears the answer when it connects; after the
/// call ended, a reconnecting caller hears that it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_connecting_after_the_answer_hears_it() {
    let server = start_server_with_push(|_| {}, Arc::new(RecordingPush::default())).await;
    register_web_devices(&server, &[("alice", "a1"), ("bob", "b1")]).await;
    let mut b1 = events(&server, "bob", "b1").await;
    let (_, created) = post_as(
        &server,
        "/v1/calls",
        "alice",
        json!({"calleeUserIds": ["bob"], "type": "audio", "deviceId": "a1"}),
    )
    .await;
    let id = call_id_of(&created).await;
    next_of(&mut b1, "call.ringing").await;
    let (status, body) = post_as(
        &server,
        &format!("/v1/calls/{id}/accept"),
        "bob",
        json!({"deviceId": "b1"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let mut a1 = events(&server, "alice", "a1").await;
    assert_eq!(
        next_call_event(&mut a1).await,
        (id.clone(), "call.accepted".into())
    );
    drop(a1);

    let (status, _) = post_as(
        &server,
        &format!("/v1/calls/{id}/end"),
        "bob",
        json!({"deviceId": "b1"}),
    )
    .await;
    assert_eq!(status, 200);
    let mut a1 = events(&server, "alice", "a1").await;
    assert_eq!(
        next_call_event(&mut a1).await,
        (id, "call.ended".into()),
        "an ended call is not replayed as answered"
    );
}
