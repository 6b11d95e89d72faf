//! Each error case `signaling/PROTOCOL.md` documents ("Limits and errors",
//! "Closing"), replayed against the real `switchboard` process by a plain
//! WebSocket client that knows only the document: the `error` code it
//! promises, and the close code when it promises the socket closes. Also
//! the drain on SIGTERM ("Shutting down"), as clients and operators see it.

mod common;

use std::time::Duration;

use common::live::{PROCESS_CALL_TOKEN_SECRET, ServerProcess, free_port, grant, scratch_dir};
use control::call_token::{CallTokens, DEFAULT_TTL};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the server did next, as a client sees it.
#[derive(Debug, PartialEq)]
enum Next {
    Error(String),
    /// `left`, with its reason.
    Left(String),
    Message(String),
    Closed(Option<u16>),
}

async fn connect(server: &ServerProcess) -> Socket {
    let url = format!("ws://{}/v1/rtc", server.http);
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    tokio_tungstenite::connect_async_with_config(url, Some(config), false)
        .await
        .unwrap()
        .0
}

/// The next protocol message or the close, skipping pings.
async fn next(ws: &mut Socket, within: Duration) -> Next {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the server said nothing in time");
        match frame {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                return match message["type"].as_str() {
                    Some("error") => Next::Error(message["code"].as_str().unwrap().to_string()),
                    Some("left") => Next::Left(message["reason"].as_str().unwrap().to_string()),
                    Some(other) => Next::Message(other.to_string()),
                    None => panic!("a message without a type: {text}"),
                };
            }
            Some(Ok(Message::Close(frame))) => {
                return Next::Closed(frame.map(|f| u16::from(f.code)));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Binary(_))) => panic!("the server sent a binary frame"),
            Some(Err(_)) | None => return Next::Closed(None),
        }
    }
}

/// [`next`], past the server's subscriber offers (a joined socket gets
/// them whenever the room changes, in any order with the answers here).
async fn next_past_offers(ws: &mut Socket) -> Next {
    loop {
        match next(ws, SOON).await {
            Next::Message(m) if m == "subscriberOffer" => continue,
            other => return other,
        }
    }
}

fn join_message(token: &str) -> String {
    json!({"type": "join", "protocolVersion": 1, "token": token}).to_string()
}

fn token(room: &str, name: &str) -> String {
    CallTokens::new(
        PROCESS_CALL_TOKEN_SECRET.as_bytes(),
        "switchboard",
        DEFAULT_TTL,
    )
    .mint(&grant(room, name))
}

const SOON: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_error_gets_its_code_and_every_documented_close_its_close_code() {
    let server =
        common::live::spawn_switchboard(&scratch_dir(), free_port(), free_port(), &[]).await;
    let limit = signaling::DEFAULT_MAX_MESSAGE_BYTES;

    // "A connection must join within 10 s": `error` not_joined, then 1008.
    // It runs meanwhile (the other cases take less than its 10 s).
    let silent = {
        let mut ws = connect(&server).await;
        tokio::spawn(async move {
            let said = next(&mut ws, Duration::from_secs(20)).await;
            let closed = next(&mut ws, SOON).await;
            (said, closed)
        })
    };

    // Binary frames are not the protocol: `bad_message`, and the socket stays.
    let mut ws = connect(&server).await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(next(&mut ws, SOON).await, Next::Error("bad_message".into()));
    // A frame over the limit: `message_too_large`, and the socket stays.
    ws.send(Message::text("x".repeat(limit + 1))).await.unwrap();
    assert_eq!(
        next(&mut ws, SOON).await,
        Next::Error("message_too_large".into())
    );
    // Not JSON: bad_message. Not join first: not_joined. Old version:
    // unsupported_version. A forged token: invalid_token.
    ws.send(Message::text("{not json")).await.unwrap();
    assert_eq!(next(&mut ws, SOON).await, Next::Error("bad_message".into()));
    ws.send(Message::text(json!({"type": "leave"}).to_string()))
        .await
        .unwrap();
    assert_eq!(next(&mut ws, SOON).await, Next::Error("not_joined".into()));
    ws.send(Message::text(
        json!({"type": "join", "protocolVersion": 99, "token": "x"}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(
        next(&mut ws, SOON).await,
        Next::Error("unsupported_version".into())
    );
    // "five failed joins (bad token or version) close it": four more, then 1008.
    for _ in 0..4 {
        ws.send(Message::text(join_message("forged")))
            .await
            .unwrap();
        assert_eq!(
            next(&mut ws, SOON).await,
            Next::Error("invalid_token".into())
        );
    }
    assert_eq!(next(&mut ws, SOON).await, Next::Closed(Some(1008)));

    // "one over four times the limit closes the socket (close code 1009)".
    // The server closes as soon as it reads the frame's length, with most
    // of the frame unread, so its kernel answers the rest with a reset: a
    // client still writing (a busy machine) sees that instead of the close
    // frame. Either way the socket ends; a close frame, when one arrives,
    // says 1009.
    let mut ws = connect(&server).await;
    let sent = ws.send(Message::text("x".repeat(4 * limit + 1))).await;
    let ended = match sent {
        Ok(()) => next(&mut ws, SOON).await,
        Err(_) => Next::Closed(None),
    };
    assert!(
        matches!(ended, Next::Closed(Some(1009) | None)),
        "{ended:?}"
    );

    // A call token for a room placed on another node: `wrong_node` (with
    // no `rtcUrl`: no node of that name heartbeats), and the socket stays.
    let mut ws = connect(&server).await;
    let elsewhere = CallTokens::new(
        PROCESS_CALL_TOKEN_SECRET.as_bytes(),
        "switchboard",
        DEFAULT_TTL,
    )
    .mint(&control::call_token::CallGrant {
        node: Some("another-node".into()),
        ..grant("room-w", "wanda")
    });
    ws.send(Message::text(join_message(&elsewhere)))
        .await
        .unwrap();
    assert_eq!(next(&mut ws, SOON).await, Next::Error("wrong_node".into()));
    ws.send(Message::text(join_message(&token("room-w", "wanda"))))
        .await
        .unwrap();
    assert_eq!(next(&mut ws, SOON).await, Next::Message("joined".into()));

    // Joined: a second join is already_joined; `leave` is answered `left`,
    // then the socket closes normally (1000).
    let mut ws = connect(&server).await;
    ws.send(Message::text(join_message(&token("room-e", "erin"))))
        .await
        .unwrap();
    assert_eq!(next(&mut ws, SOON).await, Next::Message("joined".into()));
    ws.send(Message::text(join_message(&token("room-e", "erin"))))
        .await
        .unwrap();
    assert_eq!(
        next_past_offers(&mut ws).await,
        Next::Error("already_joined".into())
    );
    ws.send(Message::binary(vec![0u8])).await.unwrap();
    assert_eq!(
        next_past_offers(&mut ws).await,
        Next::Error("bad_message".into())
    );
    ws.send(Message::text(json!({"type": "leave"}).to_string()))
        .await
        .unwrap();
    assert_eq!(next_past_offers(&mut ws).await, Next::Left("left".into()));
    assert_eq!(
        next_past_offers(&mut ws).await,
        Next::Closed(Some(u16::from(CloseCode::Normal)))
    );

    let (said, closed) = silent.await.unwrap();
    assert_eq!(said, Next::Error("not_joined".into()));
    assert_eq!(closed, Next::Closed(Some(1008)));

    // Every error sent is counted by code (the session's own and the
    // engine's alike), and the codes nobody provoked read 0.
    let (_, metrics) = common::live::request(server.http, "GET", "/metrics", &[], "").await;
    let sent = |code: &str| -> f64 {
        let series = format!("switchboard_signaling_errors_total{{code=\"{code}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.parse().ok())
            .unwrap_or_else(|| panic!("{code} is not exported"))
    };
    let expected = [
        ("bad_message", 3.0),
        ("message_too_large", 1.0),
        ("not_joined", 2.0),
        ("unsupported_version", 1.0),
        ("invalid_token", 4.0),
        ("wrong_node", 1.0),
        ("already_joined", 1.0),
        ("capacity", 0.0),
    ];
    for (code, count) in expected {
        assert_eq!(sent(code), count, "{code}");
    }
}

/// Sends `signal` (`TERM`, `INT`) to the server process.
fn signal(server: &ServerProcess, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// The server's exit code, waiting up to `within`.
async fn exit_code(server: &mut ServerProcess, within: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status.code();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server did not exit within {within:?}");
}

async fn joined(server: &ServerProcess, room: &str, name: &str) -> Socket {
    let mut ws = connect(server).await;
    ws.send(Message::text(join_message(&token(room, name))))
        .await
        .unwrap();
    assert_eq!(next(&mut ws, SOON).await, Next::Message("joined".into()));
    ws
}

async fn get(server: &ServerProcess, path: &str) -> (u16, Value) {
    let (status, body) = common::live::request(server.http, "GET", path, &[], "").await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_keeps_live_rooms_then_says_server_shutdown_closes_1001_and_exits_0() {
    let env = [("SWITCHBOARD_DRAIN_TIMEOUT_SECONDS", "4")];
    let mut server =
        common::live::spawn_switchboard(&scratch_dir(), free_port(), free_port(), &env).await;
    assert_eq!(get(&server, "/readyz").await.0, 200);
    let mut anna = joined(&server, "room-live", "anna").await;
    // The device events socket of a registered user, authenticated.
    let user = common::live::user_token("dora");
    let auth = format!("Bearer {user}");
    let (status, body) = common::live::request(
        server.http,
        "POST",
        "/v1/devices",
        &[("Authorization", &auth)],
        &json!({"deviceId": "dora-web", "platform": "web"}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (mut events, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/events", server.http))
            .await
            .unwrap();
    events
        .send(Message::text(
            json!({"type": "auth", "token": user, "deviceId": "dora-web"}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(
        next(&mut events, SOON).await,
        Next::Message("authenticated".into())
    );

    signal(&server, "TERM");
    // Draining: not ready, no new calls, no new rooms...
    let deadline = std::time::Instant::now() + SOON;
    let (status, body) = loop {
        let (status, body) = get(&server, "/readyz").await;
        if status != 200 || std::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((status, body["code"].as_str()), (503, Some("draining")));
    let (status, body) = common::live::request(
        server.http,
        "POST",
        "/v1/calls",
        &[("Authorization", &auth)],
        &json!({"calleeUserIds": ["erin"], "type": "audio", "deviceId": "dora-web"}).to_string(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        "draining"
    );
    let mut late = connect(&server).await;
    late.send(Message::text(join_message(&token("room-new", "carl"))))
        .await
        .unwrap();
    assert_eq!(next(&mut late, SOON).await, Next::Error("draining".into()));
    // ...but the room already here takes a new member, and its members
    // are served as before.
    let mut ben = joined(&server, "room-live", "ben").await;
    anna.send(Message::text(
        json!({"type": "ping", "timestamp": 7}).to_string(),
    ))
    .await
    .unwrap();
    // The session answers the ping itself, while ben's arrival comes from
    // the engine: the two may arrive in either order.
    let mut heard = Vec::new();
    for _ in 0..20 {
        if heard.contains(&Next::Message("pong".into()))
            && heard.contains(&Next::Message("participantJoined".into()))
        {
            break;
        }
        heard.push(next_past_offers(&mut anna).await);
    }
    assert!(
        heard.contains(&Next::Message("participantJoined".into())),
        "{heard:?}"
    );

    // The deadline (4 s) passes with the room still live: everyone is told.
    for ws in [&mut anna, &mut ben] {
        let told = loop {
            match next(ws, Duration::from_secs(15)).await {
                Next::Message(_) => continue,
                other => break other,
            }
        };
        assert_eq!(told, Next::Left("server_shutdown".into()));
        assert_eq!(next_past_offers(ws).await, Next::Closed(Some(1001)));
    }
    assert_eq!(next(&mut late, SOON).await, Next::Closed(Some(1001)));
    assert_eq!(next(&mut events, SOON).await, Next::Closed(Some(1001)));
    assert_eq!(
        exit_code(&mut server, Duration::from_secs(20)).await,
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_ends_as_soon_as_the_last_room_empties() {
    // The deadline is far off: the drain must end because the room did.
    let env = [("SWITCHBOARD_DRAIN_TIMEOUT_SECONDS", "600")];
    let mut server =
        common::live::spawn_switchboard(&scratch_dir(), free_port(), free_port(), &env).await;
    let mut ws = joined(&server, "room-short", "anna").await;
    signal(&server, "TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "a live room keeps the node up"
    );
    ws.send(Message::text(json!({"type": "leave"}).to_string()))
        .await
        .unwrap();
    assert_eq!(next_past_offers(&mut ws).await, Next::Left("left".into()));
    assert_eq!(
        exit_code(&mut server, Duration::from_secs(15)).await,
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let env = [("SWITCHBOARD_DRAIN_TIMEOUT_SECONDS", "600")];
    let mut server =
        common::live::spawn_switchboard(&scratch_dir(), free_port(), free_port(), &env).await;
    let _ws = joined(&server, "room-stuck", "anna").await;
    signal(&server, "TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.child.try_wait().unwrap().is_none(), "still draining");
    signal(&server, "INT");
    assert_eq!(
        exit_code(&mut server, Duration::from_secs(5)).await,
        Some(130)
    );
}
