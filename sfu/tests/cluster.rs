//! Several `switchboard` nodes sharing one real Redis (Debian's
//! `redis-server`, started per test): the call API behaves as one service
//! whichever node a request reaches, and a Redis outage is a typed 503 that
//! changes nothing.

mod common;

#[path = "../../native/tests/support/fake_phone.rs"]
mod fake_phone;
#[path = "../../control/tests/support/mod.rs"]
mod push_support;
#[path = "../../control/tests/support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::Duration;

use common::live::{request, start_server_with_push, user_token};
use futures_util::{SinkExt, StreamExt};
use push_support::RecordingPush;
use redis_server::RedisServer;
use serde_json::{Value, json};
use sfu::server::Running;
use tokio_tungstenite::tungstenite::Message;

/// A node on `redis` (keys under `namespace`), pushing into a recorder.
async fn node(redis: &RedisServer, namespace: &str) -> Running {
    node_pushing(redis, namespace, Arc::new(RecordingPush::default())).await
}

async fn node_pushing(redis: &RedisServer, namespace: &str, push: Arc<RecordingPush>) -> Running {
    node_in_region(redis, namespace, push, "default").await
}

async fn node_in_region(
    redis: &RedisServer,
    namespace: &str,
    push: Arc<RecordingPush>,
    region: &str,
) -> Running {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let url = redis.url();
    let namespace = namespace.to_string();
    let region = region.to_string();
    // In one process every node has the host's name: name them apart.
    let id = format!(
        "node-{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    start_server_with_push(
        move |c| {
            c.redis_url = Some(url);
            c.redis_namespace = namespace;
            c.node_id = id;
            c.region = region;
        },
        push,
    )
    .await
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A device's events socket on `node`, authenticated.
async fn events(node: &Running, user: &str, device: &str) -> Ws {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/events", node.http_addr))
            .await
            .unwrap();
    let auth = json!({"type": "auth", "token": user_token(user), "deviceId": device});
    ws.send(Message::text(auth.to_string())).await.unwrap();
    assert_eq!(
        next_of(&mut ws, "authenticated").await["type"],
        "authenticated"
    );
    ws
}

/// The next event of `kind` within 5 s, skipping others.
async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} in 5 s"));
        if let Some(Ok(Message::Text(t))) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == kind {
                return v;
            }
        }
    }
}

async fn api(node: &Running, method: &str, path: &str, user: &str, body: Value) -> (u16, Value) {
    let auth = format!("Bearer {}", user_token(user));
    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (status, answer) = request(
        node.http_addr,
        method,
        path,
        &[("Authorization", &auth)],
        &text,
    )
    .await;
    (status, serde_json::from_str(&answer).unwrap_or(Value::Null))
}

async fn register(node: &Running, user: &str, device: &str) {
    let (status, body) = api(
        node,
        "POST",
        "/v1/devices",
        user,
        json!({"deviceId": device, "platform": "web"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

async fn create(node: &Running, caller: &str, callee: &str) -> (u16, Value) {
    api(
        node,
        "POST",
        "/v1/calls",
        caller,
        json!({"calleeUserIds": [callee], "type": "audio", "deviceId": format!("{caller}-d")}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_one_redis_are_one_call_service() {
    let redis = RedisServer::start();
    let nodes = std::sync::Arc::new([
        node(&redis, "one-service").await,
        node(&redis, "one-service").await,
        node(&redis, "one-service").await,
    ]);
    // Bob's phones registered through different nodes; the call made on a third.
    for (i, device) in ["b1", "b2", "b3"].iter().enumerate() {
        register(&nodes[i], "bob", device).await;
    }
    register(&nodes[0], "alice", "alice-d").await;
    let (status, created) = create(&nodes[0], "alice", "bob").await;
    assert_eq!(status, 201, "{created}");
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();
    // 50 accepts from the 3 devices, spread over the 3 nodes: one winner.
    // The losers hear `answered_elsewhere`, not `unknown_device`: every
    // device rang, whichever node it registered through.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let nodes = nodes.clone();
        let path = format!("/v1/calls/{call_id}/accept");
        let device = ["b1", "b2", "b3"][i % 3];
        tasks.push(tokio::spawn(async move {
            let (status, body) = api(
                &nodes[(i / 3) % 3],
                "POST",
                &path,
                "bob",
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
    for (device, status, body) in &results {
        if !winners.contains(device) {
            assert_eq!(*status, 409, "{body}");
            assert_eq!(body["code"], "answered_elsewhere", "{body}");
        }
    }
    for node in nodes.iter() {
        let (_, call) = api(
            node,
            "GET",
            &format!("/v1/calls/{call_id}"),
            "alice",
            Value::Null,
        )
        .await;
        assert_eq!(call["state"], "connecting", "every node reads one call");
    }

    // Crossed creates through two nodes at the same instant: one call.
    for round in 0..10 {
        let (carol, dave) = (format!("carol{round}"), format!("dave{round}"));
        register(&nodes[0], &carol, &format!("{carol}-d")).await;
        register(&nodes[1], &dave, &format!("{dave}-d")).await;
        let (a, b) = tokio::join!(
            create(&nodes[0], &carol, &dave),
            create(&nodes[1], &dave, &carol)
        );
        assert_eq!((a.0, b.0), (201, 201), "{a:?} {b:?}");
        assert_eq!(
            a.1["call"]["callId"], b.1["call"]["callId"],
            "round {round}: two calls were made"
        );
        let (_, history) = api(&nodes[2], "GET", "/v1/calls", &carol, Value::Null).await;
        assert_eq!(history.as_array().unwrap().len(), 1, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_503_store_unavailable_and_writes_nothing() {
    let mut redis = RedisServer::start_durable();
    let node = node(&redis, "outage").await;
    register(&node, "alice", "alice-d").await;
    register(&node, "bob", "bob-d").await;
    let (status, _) = create(&node, "alice", "bob").await;
    assert_eq!(status, 201);
    // Past the fsync interval before the crash.
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    redis.kill9();

    let began = std::time::Instant::now();
    let (status, body) = create(&node, "alice", "carol").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "store_unavailable", "{body}");
    let (status, body) = api(&node, "GET", "/v1/calls", "alice", Value::Null).await;
    assert_eq!((status, &body["code"]), (503, &json!("store_unavailable")));
    let (status, body) = api(
        &node,
        "POST",
        "/v1/devices",
        "carol",
        json!({"deviceId": "carol-d", "platform": "web"}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        began.elapsed() < std::time::Duration::from_secs(15),
        "requests must fail, not hang, while Redis is down: {:?}",
        began.elapsed()
    );
    let (_, metrics) = request(node.http_addr, "GET", "/metrics", &[], "").await;
    let unavailable = metrics
        .lines()
        .find(|l| l.starts_with("switchboard_redis_errors_total{kind=\"unavailable\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(unavailable >= 3.0, "the outage is counted: {unavailable}");

    redis.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let history = loop {
        let (status, body) = api(&node, "GET", "/v1/calls", "alice", Value::Null).await;
        if status == 200 {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery after Redis restarted: {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let calls = history.as_array().unwrap();
    assert_eq!(
        calls.len(),
        1,
        "the refused create wrote nothing: {history}"
    );
    assert_eq!(calls[0]["participants"][1]["userId"], "bob");
    let (status, body) = create(&node, "alice", "carol").await;
    assert_eq!(status, 201, "{body}");
}

/// `GET /v1/nodes` with the API key alone.
async fn list_nodes(addr: std::net::SocketAddr) -> (u16, Value) {
    let auth = common::live::operator_auth();
    let (status, body) = request(addr, "GET", "/v1/nodes", &[("Authorization", &auth)], "").await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A `switchboard` process on `redis` (keys under `namespace`), named `id`,
/// with `env` besides.
async fn process_node(
    redis: &RedisServer,
    namespace: &str,
    id: &str,
    env: &[(&str, &str)],
) -> common::live::ServerProcess {
    use common::live::{free_port, scratch_dir, spawn_switchboard};
    let url = redis.url();
    let mut all = vec![
        ("SWITCHBOARD_REDIS_URL", url.as_str()),
        ("SWITCHBOARD_REDIS_NAMESPACE", namespace),
        ("SWITCHBOARD_NODE_ID", id),
    ];
    all.extend_from_slice(env);
    spawn_switchboard(&scratch_dir(), free_port(), free_port(), &all).await
}

fn node_ids(list: &Value) -> Vec<String> {
    list["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n["nodeId"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Two node processes in two regions heartbeat into the registry; each
/// lists both; one killed with `kill -9` drops out within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_registry_lists_live_nodes_and_forgets_a_dead_one() {
    let redis = RedisServer::start();
    let eu = process_node(
        &redis,
        "registry",
        "eu-1",
        &[("SWITCHBOARD_REGION", "eu-west")],
    )
    .await;
    let mut us = process_node(
        &redis,
        "registry",
        "us-1",
        &[("SWITCHBOARD_REGION", "us-east")],
    )
    .await;

    // The first heartbeat goes out at start; allow a busy machine a few beats.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let list = loop {
        let (status, list) = list_nodes(eu.http).await;
        assert_eq!(status, 200, "{list}");
        if node_ids(&list) == ["eu-1", "us-1"] {
            break list;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both nodes never listed: {list}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let us_record = &list["nodes"][1];
    assert_eq!(us_record["region"], "us-east");
    assert_eq!(us_record["state"], "active");
    assert_eq!(
        us_record["publicUrl"],
        format!("http://127.0.0.1:{}", us.http.port())
    );
    assert_eq!(us_record["mediaAddresses"].as_array().unwrap().len(), 1);
    assert_eq!(us_record["load"]["rooms"], 0);
    // The same list from the other node; devices may not read it.
    let (_, from_us) = list_nodes(us.http).await;
    assert_eq!(node_ids(&from_us), ["eu-1", "us-1"]);
    // Each node reports the registry's size (after its next beat).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, metrics) = request(eu.http, "GET", "/metrics", &[], "").await;
        if metrics.lines().any(|l| l == "switchboard_nodes 2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "switchboard_nodes never 2"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (status, body) = api_at(us.http, "GET", "/v1/nodes", "alice").await;
    assert_eq!(
        (status, &body["code"]),
        (403, &json!("forbidden")),
        "{body}"
    );

    let _ = us.child.kill();
    let _ = us.child.wait();
    let killed = std::time::Instant::now();
    loop {
        let (_, list) = list_nodes(eu.http).await;
        if node_ids(&list) == ["eu-1"] {
            break;
        }
        assert!(
            killed.elapsed() < std::time::Duration::from_secs(10),
            "a dead node is still listed after {:?}: {list}",
            killed.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    eprintln!(
        "the killed node left the registry after {:?}",
        killed.elapsed()
    );
}

async fn api_at(addr: std::net::SocketAddr, method: &str, path: &str, user: &str) -> (u16, Value) {
    let auth = format!("Bearer {}", user_token(user));
    let (status, body) = request(addr, method, path, &[("Authorization", &auth)], "").await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A call made through node 1 rings a device whose events socket is on
/// node 2 (relayed through Redis), the ack works from node 1, and the
/// cancel reaches the socket too; an iPhone whose socket is on node 2 but
/// does not ack is pushed after the ack window, by the node that rang it.
/// Prints the cross-node ring latency (create sent -> ring frame on node
/// 2's socket) over 100 calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_reaches_a_socket_on_another_node() {
    let redis = RedisServer::start();
    let push = Arc::new(RecordingPush::default());
    let one = node_pushing(&redis, "relay", push.clone()).await;
    let two = node_pushing(&redis, "relay", push.clone()).await;
    register(&two, "bob", "b-web").await;
    let hex = "ab".repeat(32);
    let (status, body) = api(
        &two,
        "POST",
        "/v1/devices",
        "bob",
        json!({"deviceId": "b-ios", "platform": "ios", "push": {"apnsVoip": hex, "apnsAlert": hex},
               "apnsEnvironment": "sandbox", "bundleId": "com.example.app"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut web = events(&two, "bob", "b-web").await;
    let mut ios = events(&two, "bob", "b-ios").await;

    let (status, created) = create(&one, "alice", "bob").await;
    assert_eq!(status, 201, "{created}");
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();
    assert_eq!(next_of(&mut web, "call.ringing").await["callId"], call_id);
    assert_eq!(next_of(&mut ios, "call.ringing").await["callId"], call_id);
    // The web device acks through node 1; the iPhone (a suspended app with a
    // socket that looks open) never does: after the ack window it is pushed.
    let (status, body) = api(
        &one,
        "POST",
        &format!("/v1/calls/{call_id}/ack"),
        "bob",
        json!({"deviceId": "b-web"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while push.rings("b-ios") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the unacked iPhone was never pushed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(push.rings("b-web"), 0, "the acked web device is not pushed");
    let (status, _) = api(
        &one,
        "POST",
        &format!("/v1/calls/{call_id}/cancel"),
        "alice",
        Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(next_of(&mut web, "call.cancelled").await["callId"], call_id);
    drop(ios);

    // Cross-node ring latency: create on node 1 -> ring frame on node 2.
    let mut latencies = Vec::new();
    for _ in 0..100 {
        let sent = std::time::Instant::now();
        let (status, created) = create(&one, "alice", "bob").await;
        assert_eq!(status, 201, "{created}");
        let id = created["call"]["callId"].as_str().unwrap().to_string();
        let ring = next_of(&mut web, "call.ringing").await;
        latencies.push(sent.elapsed());
        assert_eq!(ring["callId"], id);
        let (status, _) = api(
            &one,
            "POST",
            &format!("/v1/calls/{id}/cancel"),
            "alice",
            Value::Null,
        )
        .await;
        assert_eq!(status, 200);
        next_of(&mut web, "call.cancelled").await;
    }
    latencies.sort();
    eprintln!(
        "cross-node ring, create request sent -> ring frame on the other node's socket: p50 {:?}, p99 {:?} (100 calls, debug build)",
        latencies[49], latencies[98]
    );
    // Node 2 timed each event it received: at least a ring and a cancel
    // per call.
    let (_, metrics) = request(two.http_addr, "GET", "/metrics", &[], "").await;
    let relayed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_device_event_relay_seconds_count "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(relayed.is_some_and(|n| n >= 202), "{relayed:?}");
}

/// The node that created a ringing call dies (`kill -9`): the ring still
/// times out, fired by the other node from the timer index in Redis, and
/// the call ends `timeout` with the callee `missed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_times_out_after_the_node_that_made_it_died() {
    use common::live::post_json;
    let redis = RedisServer::start();
    let short_rings = [("SWITCHBOARD_RING_TIMEOUT_SECONDS", "2")];
    let mut maker = process_node(&redis, "timers", "maker", &short_rings).await;
    let survivor = process_node(&redis, "timers", "survivor", &short_rings).await;
    let (status, body) = post_json(
        maker.http,
        "/v1/devices",
        "bob",
        json!({"deviceId": "b1", "platform": "web"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, created) = post_json(
        maker.http,
        "/v1/calls",
        "alice",
        json!({"calleeUserIds": ["bob"], "type": "audio", "deviceId": "a1"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();
    let _ = maker.child.kill();
    let _ = maker.child.wait();

    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let call = loop {
        let (status, call) = api_at(
            survivor.http,
            "GET",
            &format!("/v1/calls/{call_id}"),
            "alice",
        )
        .await;
        assert_eq!(status, 200, "{call}");
        if call["state"] == "ended" {
            break call;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ring never timed out: {call}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(call["endReason"], "timeout", "{call}");
    let bob = call["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["userId"] == "bob")
        .unwrap();
    assert_eq!(bob["state"], "missed", "{call}");
}

/// The call limits hold across nodes: calls to one person count wherever
/// they are made (2 a minute here), and the third gets 429 with
/// `Retry-After` on either node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_limits_count_calls_made_through_any_node() {
    let redis = RedisServer::start();
    let limited = |id: &'static str| {
        let url = redis.url();
        start_server_with_push(
            move |c| {
                c.redis_url = Some(url);
                c.redis_namespace = "limits".into();
                c.node_id = id.into();
                c.calls_to_one_user_per_minute = 2;
            },
            Arc::new(RecordingPush::default()),
        )
    };
    let (one, two) = (limited("limit-1").await, limited("limit-2").await);
    register(&one, "bob", "b1").await;
    for (node, caller) in [(&one, "carol"), (&two, "dave")] {
        let (status, body) = create(node, caller, "bob").await;
        assert_eq!(status, 201, "{body}");
    }
    for node in [&one, &two] {
        let auth = format!("Bearer {}", user_token("erin"));
        let body = json!({"calleeUserIds": ["bob"], "type": "audio", "deviceId": "e1"});
        let (status, response) = common::live::raw_request(
            node.http_addr,
            "POST",
            "/v1/calls",
            &[("Authorization", &auth)],
            &body.to_string(),
        )
        .await;
        assert_eq!(status, 429, "{response}");
        assert!(response.contains("rate_limited"), "{response}");
        assert!(
            response.to_ascii_lowercase().contains("retry-after:"),
            "{response}"
        );
    }
}
/// The per-device ring-push limit holds across nodes: a phone's rings
/// count wherever the call was made (2 a minute here), so the third ring,
/// made through the other node, is not pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ring_push_limit_counts_pushes_sent_by_any_node() {
    let redis = RedisServer::start();
    let fcm = push_support::fcm::FakeFcm::start().await;
    let pushing = |id: &'static str| {
        let (url, fcm) = (redis.url(), &fcm);
        common::live::start_server_with_configured_push(move |c| {
            c.redis_url = Some(url);
            c.redis_namespace = "push-limits".into();
            c.node_id = id.into();
            c.push_per_device_per_minute = 2;
            common::live::push_through_fcm_stand_in(
                c,
                &fcm.server.url,
                &fcm.service_account_json,
                &fcm.server.ca_pem,
            );
        })
    };
    let (one, two) = (pushing("push-1").await, pushing("push-2").await);
    let (status, body) = api(
        &one,
        "POST",
        "/v1/devices",
        "bob",
        json!({"deviceId": "pixel", "platform": "android", "push": {"fcm": push_support::PIXEL_FCM}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Each call is cancelled before the next, so bob is never busy.
    for (round, (node, caller)) in [(&one, "carol"), (&two, "dave"), (&two, "erin")]
        .into_iter()
        .enumerate()
    {
        let (status, created) = create(node, caller, "bob").await;
        assert_eq!(status, 201, "{created}");
        let call_id = created["call"]["callId"].as_str().unwrap().to_string();
        if round < 2 {
            push_support::wait_for("the ring push", || {
                fcm.accepted_for(push_support::PIXEL_FCM)
                    .iter()
                    .any(|m| m["data"]["callId"] == call_id.as_str())
            })
            .await;
        } else {
            // The dropped ring is counted by the node that would have sent it.
            let dropped = r#"switchboard_push_failed_total{platform="unknown",provider="none",reason="rate_limited"} 1"#;
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let metrics = common::live::http(node, "GET", "/metrics", "").await.1;
                if metrics.lines().any(|l| l == dropped) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "no dropped ring counted: {metrics}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let (status, body) = api(
            node,
            "POST",
            &format!("/v1/calls/{call_id}/cancel"),
            caller,
            json!({"deviceId": format!("{caller}-d")}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    // Two rings and their two cancels reached the phone; the third ring never did.
    let rings = fcm
        .accepted_for(push_support::PIXEL_FCM)
        .iter()
        .filter(|m| m["data"]["event"] == "incoming_call")
        .count();
    assert_eq!(rings, 2, "{:?}", fcm.accepted_for(push_support::PIXEL_FCM));
}

/// A node is drained through the API while it hosts a call: the registry
/// lists it `draining`, a new call of its region is placed on the other
/// node, the live call goes on to its end, and then the node exits 0 and
/// leaves the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_drained_through_the_api_exits_0() {
    use common::live::post_json;
    let redis = RedisServer::start();
    let mut leaving =
        process_node(&redis, "drain", "leaving", &[("SWITCHBOARD_REGION", "eu")]).await;
    let staying = process_node(&redis, "drain", "staying", &[("SWITCHBOARD_REGION", "us")]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while node_ids(&list_nodes(staying.http).await.1) != ["leaving", "staying"] {
        assert!(
            std::time::Instant::now() < deadline,
            "both nodes never listed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // One more beat: both nodes' copies list both.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for (user, device) in [("bob", "b1"), ("dave", "d1")] {
        let (status, body) = post_json(
            staying.http,
            "/v1/devices",
            user,
            json!({"deviceId": device, "platform": "web"}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    // Calls made from Europe, through the US node.
    let create_from_eu = |caller: &'static str, callee: &'static str| {
        let auth = format!("Bearer {}", user_token(caller));
        let body = json!({"calleeUserIds": [callee], "type": "video", "deviceId": "x"}).to_string();
        async move {
            let headers = [
                ("Authorization", auth.as_str()),
                ("X-Switchboard-Region", "eu"),
            ];
            let (status, text) = request(staying.http, "POST", "/v1/calls", &headers, &body).await;
            assert_eq!(status, 201, "{text}");
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };
    let created = create_from_eu("alice", "bob").await;
    let leaving_url = format!("ws://{}/v1/rtc", leaving.http);
    assert_eq!(created["rtcUrl"], leaving_url, "{created}");
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();
    let (status, accepted) = post_json(
        staying.http,
        &format!("/v1/calls/{call_id}/accept"),
        "bob",
        json!({"deviceId": "b1"}),
    )
    .await;
    assert_eq!(status, 200, "{accepted}");
    let bots = spawn_bots(&leaving_url, &created, &accepted, Duration::from_secs(9));

    let drain = |node: &'static str| {
        let auth = common::live::operator_auth();
        async move {
            request(
                staying.http,
                "POST",
                &format!("/v1/nodes/{node}/drain"),
                &[("Authorization", &auth)],
                "",
            )
            .await
        }
    };
    let (status, body) = drain("nobody").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = api_at(staying.http, "POST", "/v1/nodes/leaving/drain", "alice").await;
    assert_eq!(
        (status, &body["code"]),
        (403, &json!("forbidden")),
        "{body}"
    );
    let (status, body) = drain("leaving").await;
    assert_eq!(status, 202, "{body}");
    let asked = std::time::Instant::now();
    loop {
        let (_, list) = list_nodes(staying.http).await;
        let state = list["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["nodeId"] == "leaving"))
            .map(|n| n["state"].clone());
        if state == Some(json!("draining")) {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(8),
            "never listed draining: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once the US node's copy of the registry has it draining, Europe's
    // new rooms go to the US node.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let elsewhere = create_from_eu("carol", "dave").await;
    assert_eq!(
        elsewhere["rtcUrl"],
        format!("ws://{}/v1/rtc", staying.http),
        "{elsewhere}"
    );

    let (a, b) = bots.await.unwrap();
    let from_bob = a.received_from(b.participant_id.as_deref().unwrap());
    assert!(
        from_bob > 400,
        "the call went on while its node drained: {from_bob} packets"
    );
    let exit = loop {
        if let Some(status) = leaving.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "the drained node did not exit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "drained node exit: {exit}");
    let (_, call) = api_at(
        staying.http,
        "GET",
        &format!("/v1/calls/{call_id}"),
        "alice",
    )
    .await;
    assert_eq!(call["endReason"], "completed", "{call}");
    // It leaves the registry on its way out (or, were that cut short, by
    // its heartbeat's expiry).
    let exited = std::time::Instant::now();
    while node_ids(&list_nodes(staying.http).await.1) != ["staying"] {
        assert!(
            exited.elapsed() < Duration::from_secs(10),
            "the drained node is still listed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Until every node's copy of the registry (refreshed at its heartbeat)
/// lists all of them: placement reads that copy.
async fn wait_for_registry(nodes: &[&Running]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while nodes
        .iter()
        .any(|n| n.state.nodes.all().len() < nodes.len())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the nodes never all listed each other"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The signaling URL a node's join info names.
fn rtc_url_of(node: &Running) -> String {
    format!("ws://{}/v1/rtc", node.http_addr)
}

/// Sends a join with `token` to `url`; the server's first answer.
async fn first_answer_to_join(url: &str, token: &str) -> signaling::ServerMessage {
    let mut ws = signaling::client::SignalingClient::connect(url)
        .await
        .unwrap();
    ws.send(&signaling::ClientMessage::Join {
        protocol_version: signaling::PROTOCOL_VERSION,
        token: token.to_string(),
        auto_subscribe: true,
        resume_participant_id: None,
    })
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), ws.recv())
        .await
        .expect("an answer to the join")
        .unwrap()
}

/// Each bot received more than a handful of the other's packets.
fn assert_heard_each_other(a: &loadtest::bot::Bot, b: &loadtest::bot::Bot) {
    let from_b = a.received_from(b.participant_id.as_deref().unwrap());
    let from_a = b.received_from(a.participant_id.as_deref().unwrap());
    assert!(from_b > 20 && from_a > 20, "{from_b} and {from_a} packets");
}

/// Two node processes on `redis` whose copies of the registry list both.
/// A node's environment variables.
type Env<'a> = &'a [(&'a str, &'a str)];

async fn two_listed_nodes(
    redis: &RedisServer,
    namespace: &str,
    (env_a, env_b): (Env<'_>, Env<'_>),
) -> (common::live::ServerProcess, common::live::ServerProcess) {
    let first = process_node(redis, namespace, "node-a", env_a).await;
    let second = process_node(redis, namespace, "node-b", env_b).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while node_ids(&list_nodes(first.http).await.1).len() < 2 {
        assert!(std::time::Instant::now() < deadline, "never both listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // One more beat, so both nodes' copies list both.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    (first, second)
}

/// Alice's video call to Bob, made and answered through `node`: the
/// create's and the accept's answers.
async fn answered_video_call(node: std::net::SocketAddr) -> (Value, Value) {
    use common::live::post_json;
    let device = json!({"deviceId": "b1", "platform": "web"});
    let (status, body) = post_json(node, "/v1/devices", "bob", device).await;
    assert_eq!(status, 200, "{body}");
    let call = json!({"calleeUserIds": ["bob"], "type": "video", "deviceId": "a1"});
    let (status, created) = post_json(node, "/v1/calls", "alice", call).await;
    assert_eq!(status, 201, "{created}");
    let call_id = created["call"]["callId"].as_str().unwrap();
    let accept = format!("/v1/calls/{call_id}/accept");
    let (status, accepted) = post_json(node, &accept, "bob", json!({"deviceId": "b1"})).await;
    assert_eq!(status, 200, "{accepted}");
    (created, accepted)
}

/// Alice's and Bob's bots in the room at `url` with the tokens of the
/// create's and the accept's answers, for `talk` (or until their
/// signaling drops).
fn spawn_bots(
    url: &str,
    created: &Value,
    accepted: &Value,
    talk: Duration,
) -> tokio::task::JoinHandle<(loadtest::bot::Bot, loadtest::bot::Bot)> {
    let (url, alice, bob) = (
        url.to_string(),
        created["callToken"].as_str().unwrap().to_string(),
        accepted["callToken"].as_str().unwrap().to_string(),
    );
    tokio::spawn(async move {
        tokio::join!(
            common::live::run_bot("alice", &url, alice, talk),
            common::live::run_bot("bob", &url, bob, talk),
        )
    })
}

/// A call made through a node in Europe by a caller who says she is in the
/// US, to a callee whose phone hints the US, is placed on the least loaded
/// US node: create and accept name that node (`rtcUrl`), a join with the
/// call token on the European node gets `wrong_node` with that URL, bots
/// sent there follow it, and both talk through the placed node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_placed_in_its_region_and_a_join_elsewhere_is_sent_there() {
    let redis = RedisServer::start();
    let push = Arc::new(RecordingPush::default());
    let eu = node_in_region(&redis, "place", push.clone(), "eu").await;
    let us_a = node_in_region(&redis, "place", push.clone(), "us").await;
    let us_b = node_in_region(&redis, "place", push, "us").await;
    wait_for_registry(&[&eu, &us_a, &us_b]).await;
    let (status, body) = api(
        &eu,
        "POST",
        "/v1/devices",
        "bob",
        json!({"deviceId": "bob-d", "platform": "web", "region": "us"}),
    )
    .await;
    assert_eq!((status, &body["region"]), (200, &json!("us")), "{body}");
    let (status, body) = api(
        &eu,
        "POST",
        "/v1/devices",
        "bob",
        json!({"deviceId": "bob-x", "platform": "web", "region": "US East"}),
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("invalid_device")),
        "{body}"
    );

    let auth = format!("Bearer {}", user_token("alice"));
    let body = json!({"calleeUserIds": ["bob"], "type": "video", "deviceId": "alice-d"});
    let create_saying = |region: &'static str| {
        let (auth, body) = (auth.clone(), body.to_string());
        let addr = eu.http_addr;
        async move {
            let headers = [
                ("Authorization", auth.as_str()),
                ("X-Switchboard-Region", region),
            ];
            let (status, text) = request(addr, "POST", "/v1/calls", &headers, &body).await;
            (
                status,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        }
    };
    let (status, refused) = create_saying("Mars!").await;
    assert_eq!(
        (status, &refused["code"]),
        (400, &json!("bad_request")),
        "{refused}"
    );
    let (status, created) = create_saying("us").await;
    assert_eq!(status, 201, "{created}");
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();
    // Both US nodes are idle: the lower node id breaks the tie.
    let host = [&us_a, &us_b]
        .into_iter()
        .min_by_key(|n| n.state.node_id.to_string())
        .unwrap();
    assert_eq!(created["rtcUrl"], rtc_url_of(host), "{created}");
    let (status, accepted) = api(
        &eu,
        "POST",
        &format!("/v1/calls/{call_id}/accept"),
        "bob",
        json!({"deviceId": "bob-d"}),
    )
    .await;
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(accepted["rtcUrl"], created["rtcUrl"], "{accepted}");

    let alice_token = created["callToken"].as_str().unwrap().to_string();
    let bob_token = accepted["callToken"].as_str().unwrap().to_string();
    match first_answer_to_join(&rtc_url_of(&eu), &alice_token).await {
        signaling::ServerMessage::Error {
            code: signaling::ErrorCode::WrongNode,
            rtc_url,
            ..
        } => assert_eq!(rtc_url, Some(rtc_url_of(host))),
        other => panic!("expected wrong_node, got {other:?}"),
    }

    // Alice's bot is sent to the European node and follows the redirect.
    let talk = Duration::from_secs(3);
    let (elsewhere, there) = (rtc_url_of(&eu), rtc_url_of(host));
    let (a, b) = tokio::join!(
        common::live::run_bot("alice", &elsewhere, alice_token, talk),
        common::live::run_bot("bob", &there, bob_token, talk),
    );
    assert_heard_each_other(&a, &b);
    let (_, call) = api(
        &eu,
        "GET",
        &format!("/v1/calls/{call_id}"),
        "alice",
        Value::Null,
    )
    .await;
    assert!(call["connectedAt"].is_u64(), "{call}");
    // Placement decisions are counted by region.
    let (_, metrics) = request(eu.http_addr, "GET", "/metrics", &[], "").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"switchboard_placements_total{choice="participants",region="us"} 1"#),
        "{metrics}"
    );
    // So are the store's round trips to Redis.
    let redis_commands: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_redis_command_seconds_count "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(redis_commands > 5, "{metrics}");
    for n in [eu, us_a, us_b] {
        n.shutdown().await;
    }
}

/// The node hosting a connected call's room is killed (`kill -9`): both
/// participants ask another node for a fresh call token at once, the room
/// moves by compare-and-set to the one live node (both get the same
/// `rtcUrl`, epoch 2), they talk there, and the call ends `completed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_whose_node_died_moves_once_and_the_call_goes_on() {
    use common::live::post_json;
    let redis = RedisServer::start();
    let (mut first, mut second) = two_listed_nodes(&redis, "failover", (&[], &[])).await;
    let (created, accepted) = answered_video_call(first.http).await;
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();
    let placed_url = created["rtcUrl"].as_str().unwrap().to_string();
    let (dead, live) = if placed_url == format!("ws://{}/v1/rtc", first.http) {
        (&mut first, &second)
    } else {
        assert_eq!(placed_url, format!("ws://{}/v1/rtc", second.http));
        (&mut second, &first)
    };
    // They talk; 2 s in, their node dies under them (the bots stop when
    // their signaling drops, without leaving: nobody tells the call).
    let bots = spawn_bots(&placed_url, &created, &accepted, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = dead.child.kill();
    let _ = dead.child.wait();
    let killed = std::time::Instant::now();
    let (a, b) = tokio::time::timeout(Duration::from_secs(10), bots)
        .await
        .expect("the bots notice their node died")
        .unwrap();
    assert!(a.received_from(b.participant_id.as_deref().unwrap()) > 10);
    let live_url = format!("ws://{}/v1/rtc", live.http);
    let token_path = format!("/v1/calls/{call_id}/token");
    // Until the live node sees the dead one gone (its heartbeat expires
    // within 6 s, then the next beat), tokens still name the dead node.
    let (alice_join, bob_join) = loop {
        let (a, b) = tokio::join!(
            post_json(live.http, &token_path, "alice", json!({})),
            post_json(live.http, &token_path, "bob", json!({})),
        );
        assert_eq!((a.0, b.0), (200, 200), "{} {}", a.1, b.1);
        if a.1["rtcUrl"] == live_url || b.1["rtcUrl"] == live_url {
            break (a.1, b.1);
        }
        assert!(
            killed.elapsed() < Duration::from_secs(12),
            "the room never moved: {}",
            a.1
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(alice_join["rtcUrl"], live_url, "{alice_join}");
    assert_eq!(bob_join["rtcUrl"], live_url, "{bob_join}");
    eprintln!(
        "the room moved {:?} after its node was killed",
        killed.elapsed()
    );
    let talk = Duration::from_secs(3);
    let (a, b) = tokio::join!(
        common::live::run_bot(
            "alice",
            &live_url,
            alice_join["callToken"].as_str().unwrap().into(),
            talk
        ),
        common::live::run_bot(
            "bob",
            &live_url,
            bob_join["callToken"].as_str().unwrap().into(),
            talk
        ),
    );
    assert_heard_each_other(&a, &b);
    let (status, ended) = post_json(
        live.http,
        &format!("/v1/calls/{call_id}/end"),
        "alice",
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{ended}");
    assert_eq!(ended["call"]["state"], "ended", "{ended}");
    assert_eq!(ended["call"]["endReason"], "completed", "{ended}");
}

/// Two phones (the client core with str0m media, fake CallKit / Telecom)
/// reach the API and their event sockets on node B; their call's room is
/// on node A (its region is the fallback). A dies (`kill -9`) while they
/// talk: each core keeps trying A, asks B where the room is, rejoins there
/// once the room moved, reports reconnecting then reconnected, media flows
/// again, and the hang-up ends the call `completed`.
#[test]
fn phones_follow_their_room_to_a_live_node_when_its_node_dies() {
    use fake_phone::{FakeSystem, FixedTokens, Report};
    use native::api::Platform;
    use native::client::{Client, ClientConfig, Ports};
    use native::ports::{DevicePushTokens, EndedReason};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let redis = RedisServer::start();
    // A grace of a minute: resuming at the dead node until it expires
    // would take far longer than this test waits.
    let in_region = |region| {
        [
            ("SWITCHBOARD_REGION", region),
            ("SWITCHBOARD_PLACEMENT_FALLBACK_REGION", "eu"),
            ("SWITCHBOARD_RECONNECT_GRACE_SECONDS", "60"),
        ]
    };
    let (eu, us) = (in_region("eu"), in_region("us"));
    let (mut room_node, api_node) =
        runtime.block_on(two_listed_nodes(&redis, "phones", (&eu, &us)));
    let base = format!("http://{}", api_node.http);
    let phone = |user: &str, device: &str| {
        let system = Arc::new(FakeSystem {
            fresh_token: Some(common::live::user_token(user)),
            ..Default::default()
        });
        let ports = Ports {
            ui: system.clone(),
            media: native::str0m_media::Str0mMediaFactory::with_runtime(
                "127.0.0.1".parse().unwrap(),
                runtime.handle().clone(),
            ),
            audio: system.clone(),
            push: Arc::new(FixedTokens(DevicePushTokens {
                fcm: Some(format!("fcm-token-of-{device}-{}", "x".repeat(32))),
                ..Default::default()
            })),
            credentials: system.clone(),
            events: system.clone(),
        };
        let config = ClientConfig {
            server_url: base.clone(),
            user_token: common::live::user_token(user),
            device_id: device.to_string(),
            platform: Platform::Android,
            video: true,
            bundle_id: None,
            apns_environment: None,
            trusted_ca_pem: None,
            system_call_ui: true,
            data_channels: false,
        };
        let client = Client::start(config, ports, runtime.handle()).unwrap();
        let _ = system.client.set(Arc::downgrade(&client));
        (client, system)
    };
    fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + limit;
        while !check() {
            assert!(
                std::time::Instant::now() < deadline,
                "no {what} in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let received = |client: &Client, uuid: &str| {
        client
            .media_stats(uuid.to_string())
            .map_or(0, |s| s.packets_received)
    };
    let (alice, alice_ui) = phone("alice", "a-phone");
    let (bob, bob_ui) = phone("bob", "b-phone");
    let limit = Duration::from_secs(15);
    wait_for("bob's registration", limit, || {
        let devices = runtime.block_on(api_at(api_node.http, "GET", "/v1/devices", "bob"));
        devices.1.to_string().contains("b-phone")
    });
    let call_id = runtime
        .block_on(alice.start_call_async("bob".into(), true, None))
        .expect("the call is created");
    alice.audio_session_activated();
    wait_for("bob's incoming call", limit, || {
        bob_ui
            .reports()
            .iter()
            .any(|r| matches!(r, Report::Incoming { .. }))
    });
    bob.incoming_call_displayed(call_id.clone());
    bob.answer(call_id.clone());
    bob.audio_session_activated();
    let alice_uuid = alice_ui
        .reports()
        .iter()
        .find_map(|r| match r {
            Report::OutgoingStarted(uuid) => Some(uuid.clone()),
            _ => None,
        })
        .expect("alice's outgoing call is reported");
    wait_for("media both ways on node A", limit, || {
        received(&bob, &call_id) >= 100 && received(&alice, &alice_uuid) >= 100
    });
    let _ = room_node.child.kill();
    let _ = room_node.child.wait();
    let killed = std::time::Instant::now();
    // The registry forgets A within 10 s; each core asks every 3 s after
    // 3 s unreachable; the rejoin and ICE take a few more (9 s in all
    // here), far less than the grace a resume at A would wait out.
    wait_for(
        "both phones reconnected on node B",
        Duration::from_secs(40),
        || {
            [(&alice_ui, &alice_uuid), (&bob_ui, &call_id)]
                .iter()
                .all(|(ui, uuid)| ui.has(&Report::Reconnected((*uuid).clone())))
        },
    );
    eprintln!("both reconnected {:?} after node A died", killed.elapsed());
    let (from_alice, from_bob) = (received(&bob, &call_id), received(&alice, &alice_uuid));
    wait_for("media both ways on node B", limit, || {
        received(&bob, &call_id) >= from_alice + 100
            && received(&alice, &alice_uuid) >= from_bob + 100
    });
    for ui in [&alice_ui, &bob_ui] {
        assert!(
            !ui.reports().iter().any(|r| matches!(r, Report::Ended(..))),
            "{:?}",
            ui.reports()
        );
        assert!(
            ui.reports()
                .iter()
                .any(|r| matches!(r, Report::Reconnecting(_)))
        );
    }
    bob.end(call_id.clone());
    wait_for("alice's call to end", limit, || {
        alice_ui.has(&Report::Ended(alice_uuid.clone(), EndedReason::RemoteEnded))
    });
    let (status, call) = runtime.block_on(api_at(
        api_node.http,
        "GET",
        &format!("/v1/calls/{call_id}"),
        "alice",
    ));
    assert_eq!(status, 200, "{call}");
    assert_eq!(call["endReason"], "completed", "{call}");
    alice.shutdown();
    bob.shutdown();
}

/// Redis dies (`kill -9`) during a connected call: the media keeps flowing;
/// both participants hang up while it is down (their `left` signals cannot
/// be stored and wait, counted); when Redis is back the signals are
/// replayed and the call ends `completed` rather than staying `connected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_signals_made_while_redis_is_down_are_replayed_after_it_returns() {
    let mut redis = RedisServer::start_durable();
    let node = node(&redis, "signals").await;
    register(&node, "bob", "bob-d").await;
    // Video: the bots publish both kinds.
    let (status, created) = api(
        &node,
        "POST",
        "/v1/calls",
        "alice",
        json!({"calleeUserIds": ["bob"], "type": "video", "deviceId": "alice-d"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();
    let (status, accepted) = api(
        &node,
        "POST",
        &format!("/v1/calls/{call_id}/accept"),
        "bob",
        json!({"deviceId": "bob-d"}),
    )
    .await;
    assert_eq!(status, 200, "{accepted}");
    let url = created["rtcUrl"].as_str().unwrap().to_string();
    let bots = spawn_bots(&url, &created, &accepted, Duration::from_secs(10));
    // Connected (stored), then past the fsync interval, then the crash.
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    loop {
        let (_, call) = api(
            &node,
            "GET",
            &format!("/v1/calls/{call_id}"),
            "alice",
            Value::Null,
        )
        .await;
        if call["state"] == "connected" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never connected: {call}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.kill9();
    let killed = std::time::Instant::now();
    let (a, b) = bots.await.unwrap();
    let media_after_kill = killed.elapsed();
    let from_bob = a.received_from(b.participant_id.as_deref().unwrap());
    let from_alice = b.received_from(a.participant_id.as_deref().unwrap());
    eprintln!(
        "packets over 10 s, Redis down for the last {media_after_kill:?}: alice got {from_bob}, bob got {from_alice}"
    );
    // The bots send ~100 packets/s each; media that stopped with Redis
    // would give at most the first ~4 s.
    assert!(
        from_bob > 600 && from_alice > 600,
        "{from_bob} {from_alice}"
    );
    let waiting = |metrics: &str| -> i64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("switchboard_media_signals_waiting "))
            .and_then(|n| n.parse().ok())
            .unwrap_or(-1)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = request(node.http_addr, "GET", "/metrics", &[], "").await;
        if waiting(&metrics) == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the two left signals never waited: {}",
            waiting(&metrics)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let call = loop {
        let (status, call) = api(
            &node,
            "GET",
            &format!("/v1/calls/{call_id}"),
            "alice",
            Value::Null,
        )
        .await;
        if status == 200 && call["state"] == "ended" {
            break call;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the call never ended after Redis returned: {status} {call}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(call["endReason"], "completed", "{call}");
    let (_, metrics) = request(node.http_addr, "GET", "/metrics", &[], "").await;
    assert_eq!(waiting(&metrics), 0);
    // Nobody is left busy: bob can be called again.
    let (status, again) = create(&node, "carol", "bob").await;
    assert_eq!(
        (status, &again["call"]["state"]),
        (201, &json!("ringing")),
        "{again}"
    );
    node.shutdown().await;
}

/// The node hosting a connected call's room is killed and nobody rejoins
/// (both apps died with it): another node notices the room's node left the
/// registry, the call gets the connect timeout to be rejoined, then ends
/// `failed`, and neither user stays busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_node_died_and_nobody_rejoined_is_reaped() {
    use common::live::post_json;
    let redis = RedisServer::start();
    let short = [("SWITCHBOARD_CONNECT_TIMEOUT_SECONDS", "3")];
    let (mut first, mut second) = two_listed_nodes(&redis, "reaper", (&short, &short)).await;
    let (created, accepted) = answered_video_call(first.http).await;
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();
    let url = created["rtcUrl"].as_str().unwrap().to_string();
    let (dead, live) = if url == format!("ws://{}/v1/rtc", first.http) {
        (&mut first, &second)
    } else {
        (&mut second, &first)
    };
    let bots = spawn_bots(&url, &created, &accepted, Duration::from_secs(30));
    let path = format!("/v1/calls/{call_id}");
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while api_at(live.http, "GET", &path, "alice").await.1["state"] != "connected" {
        assert!(std::time::Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = dead.child.kill();
    let _ = dead.child.wait();
    let killed = std::time::Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(10), bots).await;
    let call = loop {
        let (status, call) = api_at(live.http, "GET", &path, "alice").await;
        assert_eq!(status, 200, "{call}");
        if call["state"] == "ended" {
            break call;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(40),
            "the call outlived its node: {call}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "the call ended {:?} after its node was killed",
        killed.elapsed()
    );
    assert_eq!(call["endReason"], "failed", "{call}");
    let (status, again) = post_json(
        live.http,
        "/v1/calls",
        "carol",
        json!({"calleeUserIds": ["bob"], "type": "audio", "deviceId": "c1"}),
    )
    .await;
    assert_eq!(
        (status, &again["call"]["state"]),
        (201, &json!("ringing")),
        "{again}"
    );
}

/// A flag changed through one node reaches a device's events socket on
/// another node within 5 s (each node reads the flags every 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_change_reaches_sockets_on_every_node_within_5_s() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, "flags").await, node(&redis, "flags").await);
    register(&a, "bob", "bob-web").await;
    let mut ws = events(&b, "bob", "bob-web").await;
    let (status, body) = request(
        a.http_addr,
        "PUT",
        "/v1/flags/calling",
        &[("Authorization", &common::live::operator_auth())],
        &json!({"state": "off"}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let told = next_of(&mut ws, "flags").await;
    assert_eq!(told["flags"]["calling"], false, "{told}");
}
