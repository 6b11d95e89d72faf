//! The real server over loopback: three str0m clients join one room through
//! the signaling WebSocket and the shared UDP port, and each receives the
//! others' RTP; bad input on both gets typed errors or drops.

mod common;

use std::time::{Duration, SystemTime};

use common::live::{flood_garbage, grant, http, run_bot, start_server, start_server_with, ws_url};
use control::call_token::{CallTokens, DEFAULT_TTL};
use signaling::client::SignalingClient;
use signaling::{ClientMessage, ErrorCode, ServerMessage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_receive_each_other_through_the_server() {
    let server = start_server().await;
    let url = ws_url(&server);
    let tokens = server.state.tokens.clone();
    let mut tasks = Vec::new();
    for name in ["a", "b", "c"] {
        let token = tokens.mint(&grant("live-room", name));
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            run_bot(name, &url, token, Duration::from_secs(4)).await
        }));
    }
    // Garbage hits the media port while the call runs.
    let flood = tokio::spawn(flood_garbage(server.udp_addr, 3_000));
    let mut bots = Vec::new();
    for t in tasks {
        bots.push(t.await.unwrap());
    }
    flood.await.unwrap();
    for bot in &bots {
        for other in ["a", "b", "c"] {
            let got = bot.received_from(&format!("p-{other}"));
            if other == bot.name {
                assert_eq!(got, 0);
            } else {
                assert!(got > 50, "{} received {got} packets from {other}", bot.name);
            }
        }
    }
    let metrics = reqwest_metrics(&server).await;
    let forwarded = metric(&metrics, "switchboard_rtp_forwarded_total");
    assert!(forwarded > 300.0, "forwarded {forwarded}\n{metrics}");
    // Per participant, not per connection.
    assert_eq!(metric(&metrics, "switchboard_ice_connected_total"), 3.0);
    assert!(metric(&metrics, "switchboard_join_to_first_forward_seconds_count") >= 3.0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signaling_bad_input_gets_typed_errors() {
    let server = start_server().await;
    let tokens = server.state.tokens.clone();
    let mut ws = SignalingClient::connect(&ws_url(&server)).await.unwrap();
    let mut expect = async |text: String, code: ErrorCode| expect_error(&mut ws, text, code).await;
    expect("not json".into(), ErrorCode::BadMessage).await;
    expect(r#"{"type":"dance"}"#.into(), ErrorCode::BadMessage).await;
    expect(
        r#"{"type":"ping","timestamp":1}"#.into(),
        ErrorCode::NotJoined,
    )
    .await;
    let huge = format!(r#"{{"type":"publish","sdp":"{}"}}"#, "x".repeat(300 * 1024));
    expect(huge, ErrorCode::MessageTooLarge).await;
    let join = |token: String, version: u32| {
        signaling::encode(&ClientMessage::Join {
            protocol_version: version,
            token,
            auto_subscribe: true,
            resume_participant_id: None,
        })
    };
    let old = SystemTime::now() - Duration::from_secs(3600);
    expect(
        join(tokens.mint_at(&grant("r", "a"), old), 1),
        ErrorCode::TokenExpired,
    )
    .await;
    let forged = CallTokens::new(
        b"some-other-secret-some-other-secret",
        "switchboard",
        DEFAULT_TTL,
    );
    expect(
        join(forged.mint(&grant("r", "a")), 1),
        ErrorCode::InvalidToken,
    )
    .await;
    expect(
        join(tokens.mint(&grant("r", "a")), 2),
        ErrorCode::UnsupportedVersion,
    )
    .await;
    // Four failed joins so far; a valid one succeeds.
    ws.send_raw(join(tokens.mint(&grant("r", "a")), 1))
        .await
        .unwrap();
    assert!(matches!(
        ws.recv().await.unwrap(),
        ServerMessage::Joined { .. }
    ));
    // The join-time subscriber offer.
    assert!(matches!(
        ws.recv().await.unwrap(),
        ServerMessage::SubscriberOffer { .. }
    ));
    let mut expect = async |text: String, code: ErrorCode| expect_error(&mut ws, text, code).await;
    expect(
        join(tokens.mint(&grant("r", "a")), 1),
        ErrorCode::AlreadyJoined,
    )
    .await;
    expect(
        r#"{"type":"publish","sdp":"v=0 nonsense"}"#.into(),
        ErrorCode::InvalidSdp,
    )
    .await;
    expect(
        r#"{"type":"trickle","target":"publisher","candidate":{"candidate":"candidate:x"}}"#.into(),
        ErrorCode::InvalidCandidate,
    )
    .await;
    // A track of another room is unknown here: a token scopes one call.
    expect(
        r#"{"type":"subscribe","trackIds":["TR_0_1"]}"#.into(),
        ErrorCode::UnknownTrack,
    )
    .await;
    ws.send(&ClientMessage::Ping { timestamp: 42 })
        .await
        .unwrap();
    assert_eq!(
        ws.recv().await.unwrap(),
        ServerMessage::Pong { timestamp: 42 }
    );
    ws.send(&ClientMessage::Leave).await.unwrap();
    assert!(matches!(
        ws.recv().await.unwrap(),
        ServerMessage::Left { .. }
    ));
    server.shutdown().await;
}

/// Sends `text` and asserts the reply is an error with `code`.
async fn expect_error(ws: &mut SignalingClient, text: String, code: ErrorCode) {
    ws.send_raw(text).await.unwrap();
    match ws.recv().await.unwrap() {
        ServerMessage::Error { code: got, .. } => assert_eq!(got, code),
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

async fn reqwest_metrics(server: &sfu::server::Running) -> String {
    http(server, "GET", "/metrics", "").await.1
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_token_endpoint_is_off_by_default_and_checks_its_input() {
    let server = start_server().await;
    let (status, _) = http(
        &server,
        "POST",
        "/dev/token",
        r#"{"room":"r","userId":"u"}"#,
    )
    .await;
    assert_eq!(
        status, 404,
        "the dev endpoint must be off unless configured"
    );
    server.shutdown().await;

    // Development mode runs on credentials of its own only.
    let refused = sfu::server::start(sfu::config::Config {
        dev_token_endpoint: true,
        call_token_secret: "a-real-secret-a-real-secret-a-real".into(),
        ..sfu::config::Config::default()
    })
    .await;
    assert!(matches!(refused, Err(sfu::server::StartError::Config(_))));
    let server = start_server_with(|c| {
        c.dev_token_endpoint = true;
        c.api_keys.clear();
        c.call_token_secret.clear();
    })
    .await;
    let (status, body) = http(
        &server,
        "POST",
        "/dev/token",
        r#"{"room":"r","userId":"u"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let grant = server
        .state
        .tokens
        .verify(v["token"].as_str().unwrap())
        .unwrap();
    assert_eq!((grant.call_id.as_str(), grant.user_id.as_str()), ("r", "u"));
    for bad in [
        r#"{"room":"","userId":"u"}"#,
        r#"not json"#,
        r#"{"room":"r"}"#,
        r#"{"room":"r","userId":"u","participantId":""}"#,
    ] {
        let (status, body) = http(&server, "POST", "/dev/token", bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["code"], "bad_request", "{body}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    server.shutdown().await;
}
