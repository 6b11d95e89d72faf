//! Call control over real HTTP on the real server: who may do what, races
//! between devices, and idempotent retries.

mod common;

use base64::Engine as _;
use common::live::{
    API_KEY_ID, API_KEY_SECRET, http_with, run_bot, start_server, user_token, ws_url,
};
use serde_json::{Value, json};
use sfu::server::Running;

async fn api(
    server: &Running,
    method: &str,
    path: &str,
    auth: &str,
    extra: &[(&str, &str)],
    body: Value,
) -> (u16, Value) {
    let auth = format!("Bearer {auth}");
    let mut headers = vec![("Authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (status, body) = http_with(server, method, path, &headers, &text).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn register(server: &Running, user: &str, device: &str) {
    let (status, body) = api(
        server,
        "POST",
        "/v1/devices",
        &user_token(user),
        &[],
        json!({"deviceId": device, "platform": "web"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

async fn create(server: &Running, caller: &str, callee: &str, key: Option<&str>) -> (u16, Value) {
    let mut extra = Vec::new();
    if let Some(k) = key {
        extra.push(("Idempotency-Key", k));
    }
    api(
        server,
        "POST",
        "/v1/calls",
        &user_token(caller),
        &extra,
        json!({"calleeUserIds": [callee], "type": "video", "deviceId": format!("{caller}-d")}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_ringing_devices_race_fifty_accepts_and_exactly_one_wins() {
    let server = start_server().await;
    for d in ["b1", "b2", "b3"] {
        register(&server, "bob", d).await;
    }
    let (status, created) = create(&server, "alice", "bob", None).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["call"]["state"], "ringing");
    assert!(
        created["callToken"].is_string(),
        "the caller gets a call token"
    );
    // ...and TURN credentials for the embedded relay, which accepts them.
    let turn = server.turn.as_ref().unwrap();
    let ice = &created["iceServers"][0];
    let urls: Vec<&str> = ice["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [
            format!(
                "turn:127.0.0.1:{}?transport=udp",
                turn.udp_addr.unwrap().port()
            ),
            format!(
                "turn:127.0.0.1:{}?transport=tcp",
                turn.tcp_addr.unwrap().port()
            ),
        ]
    );
    let username = ice["username"].as_str().unwrap();
    let (expiry, user) =
        turn::credentials::check_username(username, control::unix_millis() / 1000).unwrap();
    assert_eq!(user, "alice");
    assert!(expiry <= control::unix_millis() / 1000 + 600);
    assert_eq!(ice["credential"].as_str().unwrap().len(), 28);
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();

    let server = std::sync::Arc::new(server);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let server = server.clone();
        let path = format!("/v1/calls/{call_id}/accept");
        let device = ["b1", "b2", "b3"][i % 3];
        tasks.push(tokio::spawn(async move {
            let (status, body) = api(
                &server,
                "POST",
                &path,
                &user_token("bob"),
                &[],
                json!({"deviceId": device}),
            )
            .await;
            (device, status, body)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let winners: std::collections::BTreeSet<&str> = results
        .iter()
        .filter(|(_, s, _)| *s == 200)
        .map(|(d, _, _)| *d)
        .collect();
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let winner = *winners.iter().next().unwrap();
    for (device, status, body) in &results {
        if *device == winner {
            assert_eq!(*status, 200, "{body}");
            assert!(body["callToken"].is_string());
        } else {
            assert_eq!(*status, 409, "{body}");
            assert_eq!(body["code"], "answered_elsewhere");
        }
    }
    let (_, call) = api(
        &server,
        "GET",
        &format!("/v1/calls/{call_id}"),
        &user_token("alice"),
        &[],
        Value::Null,
    )
    .await;
    assert_eq!(call["state"], "connecting");
    let bob = call["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["userId"] == "bob")
        .unwrap();
    assert_eq!(bob["deviceId"], winner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_creates_with_one_key_make_one_call() {
    let server = std::sync::Arc::new(start_server().await);
    register(&server, "bob", "b1").await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            create(&server, "alice", "bob", Some("retry-me")).await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 201, "{body}");
        assert!(
            body["callToken"].is_string(),
            "every retry gets a fresh token"
        );
        ids.insert(body["call"]["callId"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let (_, recent) = api(
        &server,
        "GET",
        "/v1/calls",
        &user_token("alice"),
        &[],
        Value::Null,
    )
    .await;
    assert_eq!(recent.as_array().unwrap().len(), 1);
    // The same key with another body is refused.
    let (status, body) = create(&server, "alice", "carol", Some("retry-me")).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "idempotency_key_reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_refuses_bad_credentials_and_strangers() {
    let server = start_server().await;
    register(&server, "bob", "b1").await;
    let (_, created) = create(&server, "alice", "bob", None).await;
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();
    let before = api(
        &server,
        "GET",
        &format!("/v1/calls/{call_id}"),
        &user_token("alice"),
        &[],
        Value::Null,
    )
    .await
    .1;

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key = control::auth::ApiKey {
        id: API_KEY_ID.into(),
        secret: API_KEY_SECRET.into(),
        revoked: false,
    };
    let expired =
        control::auth::mint_user_token(&key, "bob", std::time::Duration::from_secs(60), now - 3600);
    let unknown_key = control::auth::mint_user_token(
        &control::auth::ApiKey {
            id: "nope".into(),
            secret: API_KEY_SECRET.into(),
            revoked: false,
        },
        "bob",
        std::time::Duration::from_secs(60),
        now,
    );
    let call_token = created["callToken"].as_str().unwrap().to_string();
    let payload = user_token("bob").split('.').nth(1).unwrap().to_string();
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIiwia2lkIjoidGVzdC1rZXkifQ.{payload}.");

    let endpoints: Vec<(&str, String, Value)> = vec![
        ("GET", "/v1/devices".into(), Value::Null),
        (
            "POST",
            "/v1/devices".into(),
            json!({"deviceId": "x", "platform": "web"}),
        ),
        (
            "POST",
            "/v1/calls".into(),
            json!({"calleeUserIds": ["bob"], "type": "audio", "deviceId": "x"}),
        ),
        ("GET", "/v1/calls".into(), Value::Null),
        ("GET", format!("/v1/calls/{call_id}"), Value::Null),
        (
            "POST",
            format!("/v1/calls/{call_id}/accept"),
            json!({"deviceId": "b1"}),
        ),
        (
            "POST",
            format!("/v1/calls/{call_id}/decline"),
            json!({"deviceId": "b1"}),
        ),
        ("POST", format!("/v1/calls/{call_id}/cancel"), Value::Null),
        ("POST", format!("/v1/calls/{call_id}/end"), Value::Null),
        ("POST", format!("/v1/calls/{call_id}/token"), Value::Null),
        (
            "POST",
            format!("/v1/calls/{call_id}/ack"),
            json!({"deviceId": "b1"}),
        ),
        ("DELETE", "/v1/devices/b1".into(), Value::Null),
        ("POST", "/v1/devices/b1/heartbeat".into(), Value::Null),
    ];
    for (method, path, body) in &endpoints {
        for (label, token) in [
            ("no token", String::new()),
            ("expired", expired.clone()),
            ("unknown key", unknown_key.clone()),
            ("alg none", alg_none.clone()),
            ("call token", call_token.clone()),
        ] {
            let (status, reply) = api(&server, method, path, &token, &[], body.clone()).await;
            assert_eq!(status, 401, "{method} {path} with {label}: {reply}");
            assert!(reply["code"].is_string());
        }
    }
    // Unknown actions and bad queries get typed JSON errors too.
    let alice = user_token("alice");
    let (status, reply) = api(
        &server,
        "POST",
        &format!("/v1/calls/{call_id}/dance"),
        &alice,
        &[],
        Value::Null,
    )
    .await;
    assert_eq!(
        (status, reply["code"].as_str()),
        (404, Some("not_found")),
        "{reply}"
    );
    for limit in ["many", "0", "201"] {
        let path = format!("/v1/calls?limit={limit}");
        let (status, reply) = api(&server, "GET", &path, &alice, &[], Value::Null).await;
        assert_eq!(
            (status, reply["code"].as_str()),
            (400, Some("bad_request")),
            "{path}: {reply}"
        );
    }
    // A method a route does not take, and a socket asked without an upgrade.
    let (status, reply) = api(&server, "PUT", "/v1/calls", &alice, &[], Value::Null).await;
    assert_eq!(
        (status, reply["code"].as_str()),
        (405, Some("method_not_allowed")),
        "{reply}"
    );
    for socket in ["/v1/events", "/v1/rtc"] {
        let (status, reply) = api(&server, "GET", socket, &alice, &[], Value::Null).await;
        assert_eq!(
            (status, reply["code"].as_str()),
            (426, Some("upgrade_required")),
            "{socket}: {reply}"
        );
    }
    let (status, reply) = api(
        &server,
        "POST",
        &format!("/v1/calls/{call_id}/accept"),
        &user_token("bob"),
        &[],
        json!({"nope": 1}),
    )
    .await;
    assert_eq!(
        (status, reply["code"].as_str()),
        (400, Some("bad_request")),
        "{reply}"
    );
    // A user not in the call sees no call and can change nothing.
    for (method, path, body) in endpoints.iter().filter(|(_, p, _)| p.contains(&call_id)) {
        let (status, reply) = api(
            &server,
            method,
            path,
            &user_token("mallory"),
            &[],
            body.clone(),
        )
        .await;
        assert_eq!(status, 404, "{method} {path} as a stranger: {reply}");
    }
    let after = api(
        &server,
        "GET",
        &format!("/v1/calls/{call_id}"),
        &user_token("alice"),
        &[],
        Value::Null,
    )
    .await
    .1;
    assert_eq!(before, after, "refused requests changed the call");
    // The backend with its API key, acting for bob, may act.
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{API_KEY_ID}:{API_KEY_SECRET}"))
    );
    let (status, body) = http_with(
        &server,
        "POST",
        &format!("/v1/calls/{call_id}/decline"),
        &[
            ("Authorization", basic.as_str()),
            ("X-Switchboard-User", "bob"),
        ],
        &json!({"deviceId": "b1"}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// The call token says whether the call was created for more than two
/// people (the SFU then runs no bandwidth estimator for any member).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_for_more_than_two_is_a_group_in_its_token() {
    let server = start_server().await;
    for user in ["alice", "bob", "carol"] {
        register(&server, user, &format!("{user}-d")).await;
    }
    let group_of = |created: &Value| {
        let token = created["callToken"].as_str().expect("a call token");
        server.state.tokens.verify(token).expect("valid").group
    };
    let (status, one_to_one) = create(&server, "alice", "bob", None).await;
    assert_eq!(status, 201, "{one_to_one}");
    assert!(!group_of(&one_to_one));
    let (status, group) = api(
        &server,
        "POST",
        "/v1/calls",
        &user_token("carol"),
        &[],
        json!({"calleeUserIds": ["alice", "bob"], "type": "audio", "deviceId": "carol-d"}),
    )
    .await;
    assert_eq!(status, 201, "{group}");
    assert!(group_of(&group));
    server.shutdown().await;
}

/// Members may send data only in calls created with `dataChannels`: the
/// call says so and its tokens carry `publishData`; a non-boolean is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_channels_are_granted_only_in_calls_created_with_them() {
    let server = start_server().await;
    for user in ["alice", "bob", "carol"] {
        register(&server, user, &format!("{user}-d")).await;
    }
    let may_send_data = |created: &Value| {
        let token = created["callToken"].as_str().expect("a call token");
        let grant = server.state.tokens.verify(token).expect("valid");
        (
            created["call"]["dataChannels"].as_bool(),
            grant.permissions.publish_data,
        )
    };
    let (status, plain) = create(&server, "alice", "bob", None).await;
    assert_eq!(status, 201, "{plain}");
    assert_eq!(may_send_data(&plain), (Some(false), false));
    let with_data = |value: Value| json!({"calleeUserIds": ["alice"], "type": "audio", "deviceId": "carol-d", "dataChannels": value});
    let (status, refused) = api(
        &server,
        "POST",
        "/v1/calls",
        &user_token("carol"),
        &[],
        with_data(json!("yes")),
    )
    .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (400, Some("bad_request")),
        "{refused}"
    );
    let (status, data) = api(
        &server,
        "POST",
        "/v1/calls",
        &user_token("carol"),
        &[],
        with_data(json!(true)),
    )
    .await;
    assert_eq!(status, 201, "{data}");
    assert_eq!(may_send_data(&data), (Some(true), true));
    server.shutdown().await;
}

/// Create -> ring two devices -> one accepts (the other is rung off) -> both
/// join the SFU with their call tokens -> connected (from the SFU's signal) ->
/// both leave -> ended, completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_connects_through_the_sfu_and_completes_when_they_leave() {
    let server = start_server().await;
    register(&server, "bob", "b1").await;
    register(&server, "bob", "b2").await;
    let (_, created) = create(&server, "alice", "bob", None).await;
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();
    let (status, accepted) = api(
        &server,
        "POST",
        &format!("/v1/calls/{call_id}/accept"),
        &user_token("bob"),
        &[("Idempotency-Key", "accept-1")],
        json!({"deviceId": "b2"}),
    )
    .await;
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(accepted["call"]["state"], "connecting");
    let url = ws_url(&server);
    let alice_token = created["callToken"].as_str().unwrap().to_string();
    let bob_token = accepted["callToken"].as_str().unwrap().to_string();
    // While they talk, carol calls bob: busy.
    let busy = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            let path = format!("/v1/calls/{call_id}");
            let call = api(
                &server,
                "GET",
                &path,
                &user_token("alice"),
                &[],
                Value::Null,
            )
            .await
            .1;
            if call["state"] == "connected" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never connected: {call}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        create(&server, "carol", "bob", None).await.1
    };
    let talk = std::time::Duration::from_secs(4);
    let (a, b, busy) = tokio::join!(
        run_bot("alice", &url, alice_token, talk),
        run_bot("bob", &url, bob_token, talk),
        busy,
    );
    assert_eq!(busy["call"]["endReason"], "busy", "{busy}");
    let bob_pid = b.participant_id.clone().unwrap();
    assert!(
        a.received_from(&bob_pid) > 20,
        "alice got {} packets from bob",
        a.received_from(&bob_pid)
    );
    let mut call = Value::Null;
    for _ in 0..50 {
        call = api(
            &server,
            "GET",
            &format!("/v1/calls/{call_id}"),
            &user_token("alice"),
            &[],
            Value::Null,
        )
        .await
        .1;
        if call["state"] == "ended" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(call["state"], "ended", "{call}");
    assert_eq!(call["endReason"], "completed", "{call}");
    assert!(
        call["connectedAt"].is_u64(),
        "the SFU never reported the call connected: {call}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_timeout_ends_the_call_as_missed() {
    let server = common::live::start_server_with(|c| c.ring_timeout_seconds = 1).await;
    register(&server, "bob", "b1").await;
    let (_, created) = create(&server, "alice", "bob", None).await;
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();
    let mut call = Value::Null;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        call = api(
            &server,
            "GET",
            &format!("/v1/calls/{call_id}"),
            &user_token("bob"),
            &[],
            Value::Null,
        )
        .await
        .1;
        if call["state"] == "ended" {
            break;
        }
    }
    assert_eq!(call["endReason"], "timeout", "{call}");
    let bob = call["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["userId"] == "bob")
        .unwrap()
        .clone();
    assert_eq!(bob["state"], "missed");
    // Missed calls are in bob's history.
    let (_, recent) = api(
        &server,
        "GET",
        "/v1/calls",
        &user_token("bob"),
        &[],
        Value::Null,
    )
    .await;
    assert_eq!(recent[0]["callId"], call_id.as_str());
    // No devices: the call ends at once.
    let (status, none) = create(&server, "alice", "nobody", None).await;
    assert_eq!(status, 201);
    assert_eq!(none["call"]["endReason"], "no_devices", "{none}");
}

/// A calls B while B calls A: one call results, A's, answered by B's attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossed_calls_make_one_call() {
    let server = start_server().await;
    register(&server, "alice", "alice-d").await;
    register(&server, "bob", "b1").await;
    let (_, first) = create(&server, "alice", "bob", None).await;
    let (status, second) = create(&server, "bob", "alice", None).await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(
        second["call"]["callId"], first["call"]["callId"],
        "two calls were made"
    );
    assert_eq!(second["call"]["state"], "connecting");
    assert!(second["callToken"].is_string());
    let (_, recent) = api(
        &server,
        "GET",
        "/v1/calls",
        &user_token("bob"),
        &[],
        Value::Null,
    )
    .await;
    assert_eq!(recent.as_array().unwrap().len(), 1);
    // The ring acknowledgement ("call UI shown") on a ringing device.
    let shown_before = ui_shown_count(&server).await;
    let (_, third) = create(&server, "carol", "bob", None).await;
    let id = third["call"]["callId"].as_str().unwrap();
    let (status, body) = api(
        &server,
        "POST",
        &format!("/v1/calls/{id}/ack"),
        &user_token("bob"),
        &[],
        json!({"deviceId": "b1"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = api(
        &server,
        "POST",
        &format!("/v1/calls/{id}/ack"),
        &user_token("bob"),
        &[],
        json!({"deviceId": "zz"}),
    )
    .await;
    assert_eq!(status, 403);
    let shown = ui_shown_count(&server).await;
    assert_eq!(
        shown - shown_before,
        1.0,
        "the ack was not counted as call UI shown"
    );
}

async fn ui_shown_count(server: &Running) -> f64 {
    let (_, metrics) = common::live::http(server, "GET", "/metrics", "").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_call_ring_to_ui_shown_seconds_count "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limits_is_429_with_retry_after() {
    let server = common::live::start_server_with(|c| {
        c.call_creates_per_minute = 2;
        c.calls_to_one_user_per_minute = 3;
        c.api_requests_per_second = 1_000;
    })
    .await;
    register(&server, "bob", "b1").await;
    for _ in 0..2 {
        assert_eq!(create(&server, "alice", "bob", None).await.0, 201);
    }
    let auth = format!("Bearer {}", user_token("alice"));
    let body = json!({"calleeUserIds": ["bob"], "type": "audio", "deviceId": "a"}).to_string();
    let (status, raw) = common::live::request(
        server.http_addr,
        "POST",
        "/v1/calls",
        &[("Authorization", &auth)],
        &body,
    )
    .await;
    assert_eq!(status, 429, "{raw}");
    let (_, full) = common::live::raw_request(
        server.http_addr,
        "POST",
        "/v1/calls",
        &[("Authorization", &auth)],
        &body,
    )
    .await;
    assert!(
        full.to_ascii_lowercase().contains("retry-after: 30"),
        "{full}"
    );
    // Someone else may still call; bob's ring limit (3/min) then stops them.
    assert_eq!(create(&server, "carol", "bob", None).await.0, 201);
    let (status, body) = create(&server, "dave", "bob", None).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "rate_limited");
}

/// The value of one series in `/metrics` (`name{labels}` exactly as exported:
/// labels in alphabetical order).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_reports_feed_metrics_and_never_the_call() {
    let server = start_server().await;
    for (user, device) in [("ann", "ann-d"), ("ben", "ben-d"), ("zed", "zed-d")] {
        register(&server, user, device).await;
    }
    let (status, created) = create(&server, "ann", "ben", None).await;
    assert_eq!(status, 201, "{created}");
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();
    let path = format!("/v1/calls/{call_id}/reports");
    let ben = user_token("ben");
    let report = |token: String, device: &'static str, reports: Value| {
        let (server, path) = (&server, &path);
        async move {
            api(
                server,
                "POST",
                path,
                &token,
                &[],
                json!({"deviceId": device, "reports": reports}),
            )
            .await
        }
    };
    let call_path = format!("/v1/calls/{call_id}");
    let get_call = || api(&server, "GET", &call_path, &ben, &[], Value::Null);
    let (_, call_before) = get_call().await;
    let ttfa_count = "switchboard_call_time_to_first_audio_seconds_count{platform=\"web\"}";
    let ttfa_sum = "switchboard_call_time_to_first_audio_seconds_sum{platform=\"web\"}";
    let video_count = "switchboard_call_time_to_first_video_seconds_count{platform=\"web\"}";
    let other_code =
        "switchboard_call_ui_errors_total{code=\"other\",platform=\"web\",system=\"callkit\"}";
    let loss_count = "switchboard_client_packet_loss_ratio_count{platform=\"web\"}";
    assert_eq!(common::live::series(&server, ttfa_count).await, 0.0);

    let (status, body) = report(
        ben.clone(),
        "ben-d",
        json!([
            {"type": "first_audio", "afterAcceptMs": 840},
            {"type": "quality", "lossRatio": 0.02, "jitterMs": 14.0, "rttMs": 60.0},
            {"type": "callkit_error", "code": "something_new_in_ios_27"},
            {"type": "hologram_shown", "depth": 3}
        ]),
    )
    .await;
    assert_eq!(
        (status, &body),
        (202, &json!({"accepted": 3, "skipped": 1}))
    );
    assert_eq!(common::live::series(&server, ttfa_count).await, 1.0);
    assert!((common::live::series(&server, ttfa_sum).await - 0.84).abs() < 1e-9);
    assert_eq!(
        common::live::series(&server, other_code).await,
        1.0,
        "an unknown code counts as other"
    );
    assert_eq!(common::live::series(&server, loss_count).await, 1.0);

    // A retried first_audio is not a second call's TTFA.
    let (status, body) = report(
        ben.clone(),
        "ben-d",
        json!([{"type": "first_audio", "afterAcceptMs": 840}]),
    )
    .await;
    assert_eq!(
        (status, &body),
        (202, &json!({"accepted": 0, "skipped": 1}))
    );
    assert_eq!(common::live::series(&server, ttfa_count).await, 1.0);

    // One bad report refuses the request whole: nothing counted.
    let (status, body) = report(
        ben.clone(),
        "ben-d",
        json!([
            {"type": "first_video", "afterAcceptMs": 900},
            {"type": "quality", "lossRatio": 2.0, "jitterMs": 1.0}
        ]),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "bad_request");
    assert!(
        body["message"].as_str().unwrap().contains("report 1"),
        "{body}"
    );
    assert_eq!(common::live::series(&server, video_count).await, 0.0);
    let (status, _) = report(ben.clone(), "ben-d", json!([])).await;
    assert_eq!(status, 400);

    // Only the call's users, from their own devices.
    let first_video = json!([{"type": "first_video", "afterAcceptMs": 900}]);
    let (status, body) = report(user_token("zed"), "zed-d", first_video.clone()).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (status, body) = report(ben.clone(), "zed-d", first_video.clone()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("unknown_device"))
    );
    assert_eq!(common::live::series(&server, video_count).await, 0.0);

    // Reports are not call state: the call reads as it did.
    let (_, call_after) = get_call().await;
    assert_eq!(call_before, call_after);

    // 30 requests a minute per call and device (four were taken above).
    let mut refused = None;
    for _ in 0..40 {
        let quality = json!([{"type": "quality", "lossRatio": 0.0, "jitterMs": 3.0}]);
        let (status, body) = report(ben.clone(), "ben-d", quality).await;
        if status != 202 {
            refused = Some((status, body));
            break;
        }
    }
    let (status, body) = refused.expect("never rate limited");
    assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")));
    // Another device of the call has its own budget.
    let (status, _) = report(user_token("ann"), "ann-d", first_video).await;
    assert_eq!(status, 202);
    assert_eq!(common::live::series(&server, video_count).await, 1.0);
}
