//! `kill -9` and restart on the same data directory: devices and history
//! survive; ringing and connecting calls keep their timers; a connected call
//! whose participants do not come back ends `failed`; nothing rings forever.

mod common;

use std::time::{Duration, Instant};

use common::live::{
    ServerProcess as Server, free_port, request, run_bot, scratch_dir, spawn_switchboard,
    user_token,
};
use serde_json::{Value, json};

async fn spawn(data_dir: &std::path::Path, http_port: u16, udp_port: u16) -> Server {
    let env = [
        ("SWITCHBOARD_RING_TIMEOUT_SECONDS", "6"),
        ("SWITCHBOARD_CONNECT_TIMEOUT_SECONDS", "4"),
        ("SWITCHBOARD_RECONNECT_GRACE_SECONDS", "2"),
    ];
    spawn_switchboard(data_dir, http_port, udp_port, &env).await
}

async fn api(s: &Server, method: &str, path: &str, user: &str, body: Value) -> (u16, Value) {
    let auth = format!("Bearer {}", user_token(user));
    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (status, body) = request(s.http, method, path, &[("Authorization", &auth)], &text).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn register(s: &Server, user: &str, device: &str) {
    let (status, body) = api(
        s,
        "POST",
        "/v1/devices",
        user,
        json!({"deviceId": device, "platform": "web"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

async fn call(s: &Server, caller: &str, callee: &str) -> Value {
    let (status, body) = api(
        s,
        "POST",
        "/v1/calls",
        caller,
        json!({"calleeUserIds": [callee], "type": "audio", "deviceId": format!("{caller}-d")}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn state(s: &Server, id: &str, user: &str) -> Value {
    api(s, "GET", &format!("/v1/calls/{id}"), user, Value::Null)
        .await
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_and_restart_recovers_every_call() {
    let dir = scratch_dir();
    let (http_port, udp_port) = (free_port(), free_port());
    let mut server = spawn(&dir, http_port, udp_port).await;
    for (user, device) in [("bob", "b1"), ("carol", "c1"), ("erin", "e1")] {
        register(&server, user, device).await;
    }
    // Ringing: nobody answers.
    let ringing = call(&server, "alice", "bob").await;
    let ringing = ringing["call"]["callId"].as_str().unwrap().to_string();
    // Connecting: answered, no media.
    let connecting = call(&server, "alice", "carol").await;
    let connecting = connecting["call"]["callId"].as_str().unwrap().to_string();
    let (status, _) = api(
        &server,
        "POST",
        &format!("/v1/calls/{connecting}/accept"),
        "carol",
        json!({"deviceId": "c1"}),
    )
    .await;
    assert_eq!(status, 200);
    // Connected: both in the SFU (str0m bots), then the server dies under them.
    let created = call(&server, "dave", "erin").await;
    let connected = created["call"]["callId"].as_str().unwrap().to_string();
    let (_, accepted) = api(
        &server,
        "POST",
        &format!("/v1/calls/{connected}/accept"),
        "erin",
        json!({"deviceId": "e1"}),
    )
    .await;
    let url = format!("ws://{}/v1/rtc", server.http);
    let bot = |name: &'static str, token: &Value| {
        let (url, token) = (url.clone(), token.as_str().unwrap().to_string());
        tokio::spawn(async move { run_bot(name, &url, token, Duration::from_secs(4)).await })
    };
    let dave = bot("dave", &created["callToken"]);
    let erin = bot("erin", &accepted["callToken"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while state(&server, &connected, "dave").await["state"] != "connected" {
        assert!(Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state(&server, &ringing, "alice").await["state"], "ringing");
    assert_eq!(
        state(&server, &connecting, "alice").await["state"],
        "connecting"
    );

    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    let _ = tokio::join!(dave, erin);

    let server = spawn(&dir, http_port, udp_port).await;
    let (_, devices) = api(&server, "GET", "/v1/devices", "bob", Value::Null).await;
    assert_eq!(devices[0]["deviceId"], "b1", "devices lost: {devices}");
    let (_, history) = api(&server, "GET", "/v1/calls", "alice", Value::Null).await;
    assert_eq!(
        history.as_array().unwrap().len(),
        2,
        "history lost: {history}"
    );

    // Every call ends by its own rule, none rings on.
    let want = [
        (&ringing, "alice", "timeout"),
        (&connecting, "alice", "failed"),
        (&connected, "dave", "failed"),
    ];
    let deadline = Instant::now() + Duration::from_secs(15);
    for (id, user, reason) in want {
        loop {
            let call = state(&server, id, user).await;
            if call["state"] == "ended" {
                assert_eq!(call["endReason"], reason, "{call}");
                break;
            }
            assert!(Instant::now() < deadline, "{id} still {call}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
