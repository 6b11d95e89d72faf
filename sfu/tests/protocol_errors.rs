//! Each error case `signaling/PROTOCOL.md` documents ("Limits and errors",
//! "Closing"), replayed against the real `switchboard` process by a plain
//! WebSocket client that knows only the document: the `error` code it
//! promises, and the close code when it promises the socket closes.

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
    let mut ws = connect(&server).await;
    ws.send(Message::text("x".repeat(4 * limit + 1)))
        .await
        .unwrap();
    assert_eq!(next(&mut ws, SOON).await, Next::Closed(Some(1009)));

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
    assert_eq!(
        next_past_offers(&mut ws).await,
        Next::Message("left".into())
    );
    assert_eq!(
        next_past_offers(&mut ws).await,
        Next::Closed(Some(u16::from(CloseCode::Normal)))
    );

    let (said, closed) = silent.await.unwrap();
    assert_eq!(said, Next::Error("not_joined".into()));
    assert_eq!(closed, Next::Closed(Some(1008)));
}
