//! One signaling WebSocket: the `join` handshake (version, call token), then
//! client messages become engine commands and engine messages go out.
//!
//! Generic over the socket's `Stream`/`Sink` (axum's testing-websockets
//! pattern), so the session logic does not depend on axum's WebSocket type.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use signaling::{ClientMessage, ErrorCode, LeaveReason, ServerMessage, decode_client, encode};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::AppState;
use super::shard::{SessionOut, ShardHandle};
use crate::engine::{Command, ConnId, DeviceLabel, JoinRequest, TokenBucket};
use control::call_token::TokenError;

/// A write to the client that takes longer than this (it does not read)
/// ends the session; the participant may resume on a new connection.
const SEND_STALL: Duration = Duration::from_secs(10);

/// A connection must join this soon after it opens.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed `join`s (bad token or version) tolerated on one connection before
/// it is closed; other bad frames are bounded by the rate limit and timeout.
const MAX_JOIN_ATTEMPTS: u32 = 5;

/// A joined socket is pinged this often (WebSocket ping; browsers and
/// WebSocket libraries answer by themselves)...
const PING_EVERY: Duration = Duration::from_secs(20);
/// ...and closed when nothing at all (a pong included) came in for this
/// long: a peer that vanished without a FIN must not hold a socket forever.
const IDLE_LIMIT: Duration = Duration::from_secs(60);

/// What the session sends, whatever the WebSocket library.
pub enum Outgoing {
    Text(String),
    Ping,
    Close(CloseReason),
}

/// Why the server closes a signaling socket: the close codes PROTOCOL.md
/// ("Closing") promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// After `left`: the participant left, was replaced or failed.
    Left,
    /// No `join` in time, too many failed joins, a client that does not
    /// read, or one silent past the idle limit (an `error` says which
    /// first, when the client can still read it).
    Policy(&'static str),
    /// A frame over four times the message limit.
    TooLarge,
    /// The node is shutting down (after `left` `server_shutdown`, or
    /// before any join): connect to another.
    GoingAway,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Left => 1000,
            CloseReason::Policy(_) => 1008,
            CloseReason::TooLarge => 1009,
            CloseReason::GoingAway => 1001,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Left => "left",
            CloseReason::Policy(why) => why,
            CloseReason::TooLarge => "message too large",
            CloseReason::GoingAway => "server shutting down",
        }
    }
}

/// A frame as the session sees it, whatever the WebSocket library.
pub enum Frame {
    Text(String),
    /// Not part of the protocol: answered with `bad_message`.
    Binary,
    /// Ping and pong (the library answers pings itself).
    Control,
    Close,
    /// Over the library's hard limit (four times ours): closed with 1009.
    TooLarge,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

pub async fn run<S, K, E>(mut stream: S, mut sink: K, state: AppState)
where
    S: Stream<Item = Result<Frame, E>> + Unpin,
    K: Sink<Outgoing> + Unpin,
{
    let conn = ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed));
    state.metrics.signaling_connections.inc();
    let metrics = state.metrics.clone();
    let _gauge = scopeguard(move || metrics.signaling_connections.dec());
    let mut limiter = RateLimiter::new(state.config.signaling_rate_per_second);

    let joined = tokio::select! {
        joined = tokio::time::timeout(
            JOIN_TIMEOUT,
            handshake(&mut stream, &mut sink, &state, &mut limiter),
        ) => joined,
        () = state.lifecycle.stopping() => return close(&mut sink, CloseReason::GoingAway).await,
    };
    let join = match joined {
        Ok(Ok(join)) => join,
        Ok(Err(HandshakeEnd::Gone)) => return,
        Ok(Err(HandshakeEnd::Close(reason))) => return close(&mut sink, reason).await,
        Err(_) => {
            let e = ServerMessage::error(ErrorCode::NotJoined, "no join within 10 s");
            let _ = send(&mut sink, &e, &state).await;
            return close(&mut sink, CloseReason::Policy("no join in time")).await;
        }
    };
    let span = tracing::info_span!("session", call_id = %join.room, user_id = %join.user_id, participant = %join.participant_id);
    // In the call's trace: from the token's check to the engine's answer.
    let joining = Some(
        control::call_span!("media.join", &join.room, user_id = %join.user_id, participant_id = %join.participant_id, outcome = tracing::field::Empty),
    );
    serve_joined(conn, join, joining, stream, sink, state, limiter)
        .instrument(span)
        .await;
}

/// After `join`: engine messages out, client messages in, until either ends.
async fn serve_joined<S, K, E>(
    conn: ConnId,
    Joined {
        room,
        command: join,
        ..
    }: Joined,
    // `media.join`, ended by the engine's first answer.
    mut joining: Option<tracing::Span>,
    mut stream: S,
    mut sink: K,
    state: AppState,
    mut limiter: RateLimiter,
) where
    S: Stream<Item = Result<Frame, E>> + Unpin,
    K: Sink<Outgoing> + Unpin,
{
    let shard = shard_for(&state.shards, &room);
    let (outbox, mut inbox) = mpsc::channel(super::shard::SESSION_OUTBOX);
    shard.attach(conn, outbox);
    shard.command(conn, join);

    let mut left = false;
    // Set when the server ends the session on purpose: the close frame says why.
    let mut closing = None;
    // `left` `server_shutdown` went out: the close says "going away".
    let mut shut_down = false;
    let stopping = state.lifecycle.stopping();
    tokio::pin!(stopping);
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ping.tick() => {
                if last_heard.elapsed() >= IDLE_LIMIT {
                    tracing::info!("signaling socket silent; closing it");
                    closing = Some(CloseReason::Policy("idle"));
                    break;
                }
                let pinged = tokio::time::timeout(SEND_STALL, sink.send(Outgoing::Ping)).await;
                if !matches!(pinged, Ok(Ok(()))) {
                    break;
                }
            }
            () = &mut stopping => {
                // The engines said `left` to every participant before the
                // node stops: whatever is still queued goes out first.
                while let Ok(SessionOut::Message(message)) = inbox.try_recv() {
                    if !send(&mut sink, &message, &state).await {
                        break;
                    }
                }
                closing = Some(CloseReason::GoingAway);
                break;
            }
            out = inbox.recv() => match out {
                Some(SessionOut::Message(message)) => {
                    if let Some(span) = joining.take() {
                        let joined = matches!(message, ServerMessage::Joined { .. });
                        span.record("outcome", if joined { "joined" } else { "refused" });
                    }
                    shut_down |= matches!(message, ServerMessage::Left { reason: LeaveReason::ServerShutdown });
                    if !send(&mut sink, &message, &state).await {
                        break;
                    }
                }
                Some(SessionOut::SlowConsumer) => {
                    // The engine has detached us already; say why, if the
                    // client ever reads again.
                    let e = ServerMessage::error(ErrorCode::SlowConsumer, "messages were not read in time; resume on a new connection");
                    count_error(&e, &state);
                    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Outgoing::Text(encode(&e)))).await;
                    left = true;
                    closing = Some(CloseReason::Policy("slow consumer"));
                    break;
                }
                Some(SessionOut::Close) | None => {
                    left = true;
                    // A stopping node drops every session's outbox: that is
                    // the node going away too, even for a session that never
                    // became a participant (a join refused while draining),
                    // whichever of the two this select saw first.
                    let node_stopping = state.lifecycle.phase() == control::lifecycle::Phase::Stopping;
                    closing = Some(if shut_down || node_stopping { CloseReason::GoingAway } else { CloseReason::Left });
                    break;
                }
            },
            frame = stream.next() => match frame {
                Some(Ok(Frame::Text(text))) => {
                    last_heard = Instant::now();
                    if !limiter.allow(Instant::now()) {
                        let e = ServerMessage::error(ErrorCode::RateLimited, "too many messages; slow down");
                        if !send(&mut sink, &e, &state).await { break; }
                        continue;
                    }
                    match to_command(&text, state.config.max_message_bytes) {
                        Ok(Action::Command(command)) => shard.command(conn, command),
                        Ok(Action::Reply(message)) | Err(message) => {
                            if !send(&mut sink, &message, &state).await { break; }
                        }
                    }
                }
                Some(Ok(Frame::Binary)) => {
                    last_heard = Instant::now();
                    if limiter.allow(Instant::now()) && !send(&mut sink, &binary_refused(), &state).await {
                        break;
                    }
                }
                Some(Ok(Frame::Control)) => last_heard = Instant::now(),
                Some(Ok(Frame::TooLarge)) => {
                    closing = Some(CloseReason::TooLarge);
                    break;
                }
                Some(Ok(Frame::Close)) | Some(Err(_)) | None => break,
            },
        }
    }
    if !left {
        // Gone without `leave`: the participant keeps its place for the
        // grace period and may resume on a new connection.
        shard.command(conn, Command::Detach);
    }
    match closing {
        Some(reason) => close(&mut sink, reason).await,
        // A client that does not read would hold the close frame (and this
        // task) forever.
        None => drop(tokio::time::timeout(Duration::from_secs(1), sink.close()).await),
    }
}

/// Sends the close frame for `reason` and closes; bounded, as a client that
/// does not read would hold it forever.
async fn close<K: Sink<Outgoing> + Unpin>(sink: &mut K, reason: CloseReason) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = sink.send(Outgoing::Close(reason)).await;
        let _ = sink.close().await;
    })
    .await;
}

fn binary_refused() -> ServerMessage {
    ServerMessage::error(
        ErrorCode::BadMessage,
        "binary frames are not part of the protocol; send JSON text frames",
    )
}

/// Sends one message; `false` if the socket is gone or the write stalled
/// past [`SEND_STALL`] (a client that does not read is cut off, counted).
/// `switchboard_signaling_errors_total`: every error sent to a client,
/// the engine's and the session's own, is counted here.
fn count_error(message: &ServerMessage, state: &AppState) {
    if let ServerMessage::Error { code, .. } = message {
        state
            .metrics
            .signaling_errors
            .with_label_values(&[code.as_str()])
            .inc();
    }
}

async fn send<K: Sink<Outgoing> + Unpin>(
    sink: &mut K,
    message: &ServerMessage,
    state: &AppState,
) -> bool {
    count_error(message, state);
    match tokio::time::timeout(SEND_STALL, sink.send(Outgoing::Text(encode(message)))).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            state.metrics.signaling_slow_consumers.inc();
            tracing::warn!("signaling write stalled; disconnecting");
            false
        }
    }
}

struct Joined {
    room: String,
    user_id: String,
    participant_id: String,
    command: Command,
}

/// How a handshake ended without a join.
enum HandshakeEnd {
    /// The client closed or the socket failed: nothing to say.
    Gone,
    Close(CloseReason),
}

/// Reads frames until a valid `join`; answers each bad one with a typed error.
async fn handshake<S, K, E>(
    stream: &mut S,
    sink: &mut K,
    state: &AppState,
    limiter: &mut RateLimiter,
) -> Result<Joined, HandshakeEnd>
where
    S: Stream<Item = Result<Frame, E>> + Unpin,
    K: Sink<Outgoing> + Unpin,
{
    let mut attempts = 0;
    while attempts < MAX_JOIN_ATTEMPTS {
        let text = match stream.next().await {
            Some(Ok(Frame::Text(text))) => text,
            Some(Ok(Frame::Control)) => continue,
            Some(Ok(Frame::Binary)) => {
                if limiter.allow(Instant::now()) && !send(sink, &binary_refused(), state).await {
                    return Err(HandshakeEnd::Gone);
                }
                continue;
            }
            Some(Ok(Frame::TooLarge)) => return Err(HandshakeEnd::Close(CloseReason::TooLarge)),
            Some(Ok(Frame::Close)) | Some(Err(_)) | None => return Err(HandshakeEnd::Gone),
        };
        if !limiter.allow(Instant::now()) {
            continue;
        }
        match check_join(&text, state) {
            Ok(joined) => return Ok(joined),
            Err(message) => {
                if matches!(
                    &message,
                    ServerMessage::Error {
                        code: ErrorCode::InvalidToken
                            | ErrorCode::TokenExpired
                            | ErrorCode::UnsupportedVersion
                            | ErrorCode::PermissionDenied,
                        ..
                    }
                ) {
                    attempts += 1;
                }
                if !send(sink, &message, state).await {
                    return Err(HandshakeEnd::Gone);
                }
            }
        }
    }
    Err(HandshakeEnd::Close(CloseReason::Policy(
        "too many failed joins",
    )))
}

fn check_join(text: &str, state: &AppState) -> Result<Joined, ServerMessage> {
    let message = decode_client(text, state.config.max_message_bytes)
        .map_err(|e| ServerMessage::error(e.code(), e.to_string()))?;
    let ClientMessage::Join {
        protocol_version,
        token,
        auto_subscribe,
        resume_participant_id,
    } = message
    else {
        return Err(ServerMessage::error(
            ErrorCode::NotJoined,
            "the first message must be join",
        ));
    };
    if protocol_version != signaling::PROTOCOL_VERSION {
        return Err(ServerMessage::error(
            ErrorCode::UnsupportedVersion,
            format!(
                "this server speaks protocol version {}",
                signaling::PROTOCOL_VERSION
            ),
        ));
    }
    let grant = state.tokens.verify(&token).map_err(|e| match e {
        TokenError::Expired => ServerMessage::error(ErrorCode::TokenExpired, e.to_string()),
        TokenError::Invalid(_) => ServerMessage::error(ErrorCode::InvalidToken, e.to_string()),
    })?;
    if let Some(host) = grant.node.as_deref().filter(|n| *n != &*state.node_id) {
        let device = grant.device.as_ref();
        tracing::info!(
            call_id = %grant.call_id,
            user_id = %grant.user_id,
            device_id = device.map_or("unknown", |d| &d.device_id),
            platform = device.map_or("unknown", |d| &d.platform),
            room_node = %host,
            "join sent on: the call's room is on another node"
        );
        return Err(wrong_node(state, host));
    }
    let command = match resume_participant_id {
        Some(id) if id != grant.participant_id => {
            return Err(ServerMessage::error(
                ErrorCode::PermissionDenied,
                "the token is for another participant",
            ));
        }
        Some(_) => Command::Resume {
            room: grant.call_id.clone(),
            user_id: grant.user_id.clone(),
            participant_id: grant.participant_id.clone(),
        },
        None => Command::Join(JoinRequest {
            room: grant.call_id.clone(),
            user_id: grant.user_id.clone(),
            participant_id: grant.participant_id.clone(),
            permissions: grant.permissions,
            auto_subscribe,
            device: grant
                .device
                .map_or_else(DeviceLabel::unknown, |d| DeviceLabel {
                    device_id: d.device_id,
                    platform: d.platform,
                }),
        }),
    };
    Ok(Joined {
        room: grant.call_id,
        user_id: grant.user_id,
        participant_id: grant.participant_id,
        command,
    })
}

/// The answer to a join whose call token places the room on `host`: where
/// that node's signaling is, as the registry last listed it; no URL if it is
/// gone (a fresh call token moves the room to a live node).
fn wrong_node(state: &AppState, host: &str) -> ServerMessage {
    match state.nodes.get(host) {
        Some(node) => ServerMessage::Error {
            code: ErrorCode::WrongNode,
            message: format!("the call's room is on node {host}: join there"),
            rtc_url: Some(control::api::rtc_url(&node.public_url)),
        },
        None => ServerMessage::error(
            ErrorCode::WrongNode,
            format!("the call's room was on node {host}, which is gone: get a fresh call token"),
        ),
    }
}

enum Action {
    Command(Command),
    /// Answered by the session itself (ping, a second join).
    Reply(ServerMessage),
}

fn to_command(text: &str, limit: usize) -> Result<Action, ServerMessage> {
    let message =
        decode_client(text, limit).map_err(|e| ServerMessage::error(e.code(), e.to_string()))?;
    match message {
        ClientMessage::Join { .. } => Ok(Action::Reply(ServerMessage::error(
            ErrorCode::AlreadyJoined,
            "this connection already joined",
        ))),
        ClientMessage::Ping { timestamp } => Ok(Action::Reply(ServerMessage::Pong { timestamp })),
        // Every other message maps to a command; the fallback cannot happen.
        other => Ok(Command::from_client(other).map_or_else(
            || {
                Action::Reply(ServerMessage::error(
                    ErrorCode::Internal,
                    "unhandled message",
                ))
            },
            Action::Command,
        )),
    }
}

/// Rooms live on one shard each, chosen by a hash of the room id.
pub fn shard_for<'a>(shards: &'a [ShardHandle], room: &str) -> &'a ShardHandle {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    room.hash(&mut h);
    &shards[(h.finish() % shards.len() as u64) as usize]
}

/// Signaling messages per socket: `rate` per second, bursts of twice that.
struct RateLimiter(TokenBucket);

impl RateLimiter {
    fn new(rate: u32) -> RateLimiter {
        let rate = f64::from(rate);
        RateLimiter(TokenBucket::new(rate, rate * 2.0, Instant::now()))
    }

    fn allow(&mut self, now: Instant) -> bool {
        self.0.take(1.0, now)
    }
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
