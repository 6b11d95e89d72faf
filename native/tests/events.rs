//! The events connection against a real `switchboard` (in-process): a call
//! rings the device, the call engine reports it once; after a dropped
//! connection (a network change) the client reconnects, the server replays
//! the ring, and the engine still shows one incoming call; the caller's
//! cancel then ends it with the matching reason. A socket whose user token
//! is about to expire asks the app for a fresh one and lives on with it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use native::call_engine::{CallEngine, EndedReason, Input, Output};
use native::events::{EventsCommand, EventsConfig, spawn};
use serde_json::{Value, json};
use tokio::sync::mpsc;

mod support;

use support::token;

async fn post(base: &str, user: &str, path: &str, body: Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(token(user))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null)
}

/// Feeds inputs from the connection into the engine until `want` appears
/// among the outputs (or 10 s pass); returns every output seen.
async fn until(
    engine: &mut CallEngine,
    inputs: &mut mpsc::UnboundedReceiver<Input>,
    want: impl Fn(&Output) -> bool,
) -> Vec<Output> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.iter().any(&want) {
        let input = tokio::time::timeout_at(deadline, inputs.recv())
            .await
            .expect("timed out")
            .expect("connection running");
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        engine.handle(input, Duration::ZERO, wall);
        while let Some(o) = engine.poll_output() {
            seen.push(o);
        }
    }
    seen
}

/// This test's token outlives it: the app is never asked.
struct NoCredentials;

/// The socket's first words once authenticated: the device's flags (all
/// on: nothing was set), then up.
async fn expect_connected(inputs: &mut mpsc::UnboundedReceiver<Input>) {
    match inputs.recv().await {
        Some(Input::Flags(flags)) => {
            assert_eq!(flags.get("calling"), Some(&true), "{flags:?}");
            assert_eq!(flags.get("video_calls"), Some(&true), "{flags:?}");
        }
        other => panic!("the flags first, not {other:?}"),
    }
    assert_eq!(inputs.recv().await, Some(Input::SignalingConnected));
}

/// An app that counts how often the core asked it for a token; the test
/// answers for it.
#[derive(Default)]
struct CountingApp {
    asked: std::sync::atomic::AtomicUsize,
}

impl native::ports::Credentials for CountingApp {
    fn refresh_user_token(&self) -> Result<(), native::ports::PortError> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_refreshes_its_token_before_it_expires_and_stays_up() {
    use std::sync::atomic::Ordering;
    let test_server = support::start_server("events-refresh").await;
    let device = json!({"deviceId": "tablet", "platform": "web", "push": {}, "capabilities": {"video": true}});
    post(&test_server.base, "carol", "/v1/devices", device).await;

    let app = Arc::new(CountingApp::default());
    let user_token = native::credentials::UserToken::new(
        support::token_for("carol", Duration::from_secs(4)),
        app.clone(),
    );
    let (tx, mut inputs) = mpsc::unbounded_channel();
    let commands = spawn(
        EventsConfig {
            url: format!("ws://{}/v1/events", test_server.server.http_addr),
            token: user_token.clone(),
            device_id: "tablet".into(),
            clock_offset: Arc::new(Mutex::new(None)),
            tls: native::tls::client_config(None).unwrap(),
        },
        tx,
    );
    expect_connected(&mut inputs).await;
    // Half-way through the token's 4 s the core asks the app.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.asked.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the app was never asked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    user_token.set(token("carol"));
    // Past the old token's expiry (the server closes an unrefreshed socket
    // then): the socket stays up, and the app was asked once.
    let quiet = tokio::time::timeout(Duration::from_secs(6), inputs.recv()).await;
    assert!(quiet.is_err(), "the socket dropped: {quiet:?}");
    assert_eq!(app.asked.load(Ordering::SeqCst), 1);
    let _ = commands.send(EventsCommand::Stop);
    test_server.stop().await;
}

impl native::ports::Credentials for NoCredentials {
    fn refresh_user_token(&self) -> Result<(), native::ports::PortError> {
        Err("no app backend here".to_string().into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_reaches_the_engine_once_across_a_reconnect_and_a_cancel_ends_it() {
    let test_server = support::start_server("events").await;
    let server = &test_server.server;
    let base = test_server.base.clone();
    let device = json!({"deviceId": "phone", "platform": "web", "push": {}, "capabilities": {"video": true}});
    post(&base, "bob", "/v1/devices", device).await;

    let (tx, mut inputs) = mpsc::unbounded_channel();
    let clock_offset = Arc::new(Mutex::new(None));
    let commands = spawn(
        EventsConfig {
            url: format!("ws://{}/v1/events", server.http_addr),
            token: native::credentials::UserToken::new(token("bob"), Arc::new(NoCredentials)),
            device_id: "phone".into(),
            clock_offset: clock_offset.clone(),
            tls: native::tls::client_config(None).unwrap(),
        },
        tx,
    );
    let mut engine = CallEngine::new();
    expect_connected(&mut inputs).await;
    // The server said its time: one clock here, so the offset is small.
    let offset = clock_offset.lock().unwrap().expect("serverTime measured");
    assert!(offset.abs() < 1_000, "{offset}");

    let created = post(
        &base,
        "alice",
        "/v1/calls",
        json!({"calleeUserIds": ["bob"], "type": "video", "deviceId": "a1"}),
    )
    .await;
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();
    let seen = until(&mut engine, &mut inputs, |o| {
        matches!(o, Output::ReportIncoming { .. })
    })
    .await;
    assert!(seen.iter().any(|o| matches!(o,
        Output::ReportIncoming { call } if call.call_id == call_id && call.handle == "alice" && call.video)));
    let _ = commands.send(EventsCommand::Ack {
        call_id: call_id.clone(),
    });

    // A network change: the connection drops and comes back; the server
    // replays the ring; the engine does not report a second call.
    let _ = commands.send(EventsCommand::Reconnect);
    let mut reconnected = Vec::new();
    loop {
        let input = tokio::time::timeout(Duration::from_secs(10), inputs.recv())
            .await
            .unwrap()
            .unwrap();
        let replayed_ring = matches!(&input, Input::Ring(r) if r.call_id == call_id);
        reconnected.push(input.clone());
        engine.handle(input, Duration::ZERO, control::unix_millis());
        if replayed_ring {
            break;
        }
    }
    assert_eq!(reconnected[0], Input::SignalingDisconnected);
    assert!(reconnected.contains(&Input::SignalingConnected));
    let mut after = Vec::new();
    while let Some(o) = engine.poll_output() {
        after.push(o);
    }
    assert!(
        !after
            .iter()
            .any(|o| matches!(o, Output::ReportIncoming { .. })),
        "{after:?}"
    );

    // The caller gives up: the ring ends with the matching reason.
    post(
        &base,
        "alice",
        &format!("/v1/calls/{call_id}/cancel"),
        json!({}),
    )
    .await;
    let seen = until(&mut engine, &mut inputs, |o| {
        matches!(o, Output::ReportEnded { .. })
    })
    .await;
    assert!(seen.contains(&Output::ReportEnded {
        call_uuid: call_id.clone(),
        call_id: Some(call_id),
        reason: EndedReason::CallerCancelled
    }));
    let _ = commands.send(EventsCommand::Stop);
    test_server.stop().await;
}
