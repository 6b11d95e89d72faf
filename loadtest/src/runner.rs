//! Runs a [`Bot`] on real sockets: two UDP sockets on the given local IP
//! and the signaling WebSocket (switchboard's, or Janus's through
//! [`crate::janus`]), for a bounded time.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use signaling::client::SignalingClient;
use signaling::{ClientMessage, ServerMessage, VideoQuality};
use tokio::net::UdpSocket;

use crate::bot::{Bot, MediaShape};
use crate::janus::{JanusClient, JanusClientError};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("signaling: {0}")]
    Signaling(String),
    #[error("janus: {0}")]
    Janus(#[from] JanusClientError),
}

/// The server a bot joins.
#[derive(Debug, Clone)]
pub enum Server {
    /// Switchboard: `ws://host:port/v1/rtc` and a call token.
    Switchboard { url: String, token: String },
    /// A Janus videoroom: Janus's WebSocket API (`ws://host:8188`) and the
    /// room's number (created by the first bot that gets there).
    Janus { url: String, room: u64 },
}

#[derive(Debug, Clone)]
pub struct BotPlan {
    pub name: String,
    pub server: Server,
    pub local_ip: IpAddr,
    pub publish: bool,
    pub media: MediaShape,
    /// Run until then (a hard stop).
    pub until: Instant,
    /// Keep every received packet (tests); off for load.
    pub record: bool,
    /// Drop every n-th datagram the publisher sends (induced loss: the
    /// server then asks for retransmissions).
    pub drop_every: Option<u64>,
    /// Live counters for the progress line.
    pub progress: Option<std::sync::Arc<crate::progress::Progress>>,
    /// Publish video in three simulcast layers.
    pub simulcast: bool,
    /// The layer asked of every received video track (`None`: the server's default).
    pub quality: Option<VideoQuality>,
}

/// Redirects a join follows before it gives up.
const MAX_MOVES: usize = 3;

/// Connects and joins at `url`, following `wrong_node` to the node that
/// hosts the room; returns the socket and the server's answer to the join.
async fn join(url: &str, token: &str) -> Result<(SignalingClient, ServerMessage), RunError> {
    let signaling = |e: signaling::client::ClientError| RunError::Signaling(e.to_string());
    let mut url = url.to_string();
    for _ in 0..=MAX_MOVES {
        let mut ws = SignalingClient::connect(&url).await.map_err(signaling)?;
        ws.send(&ClientMessage::Join {
            protocol_version: signaling::PROTOCOL_VERSION,
            token: token.to_string(),
            auto_subscribe: true,
            resume_participant_id: None,
        })
        .await
        .map_err(signaling)?;
        let answer = tokio::time::timeout(Duration::from_secs(10), ws.recv())
            .await
            .map_err(|_| RunError::Signaling("no answer to join".into()))?
            .map_err(signaling)?;
        match answer {
            ServerMessage::Error {
                code: signaling::ErrorCode::WrongNode,
                rtc_url: Some(there),
                ..
            } => url = there,
            answer => return Ok((ws, answer)),
        }
    }
    Err(RunError::Signaling("sent from node to node".into()))
}

/// A bot's signaling connection, to either server.
/// (Boxed: each holds a WebSocket stream, over a kilobyte.)
enum Signaling {
    Switchboard(Box<SignalingClient>),
    Janus(Box<JanusClient>),
}

impl Signaling {
    /// Joins `server`; returns the connection and the answer to the join.
    async fn join(server: &Server, name: &str) -> Result<(Signaling, ServerMessage), RunError> {
        match server {
            Server::Switchboard { url, token } => {
                let (ws, answer) = join(url, token).await?;
                Ok((Signaling::Switchboard(Box::new(ws)), answer))
            }
            Server::Janus { url, room } => {
                let mut janus = JanusClient::connect(url, *room, name).await?;
                let joined = tokio::time::timeout(Duration::from_secs(10), janus.join())
                    .await
                    .map_err(|_| RunError::Signaling("janus: no answer to join".into()))??;
                Ok((Signaling::Janus(Box::new(janus)), joined))
            }
        }
    }

    async fn send(&mut self, message: &ClientMessage) -> Result<(), RunError> {
        match self {
            Signaling::Switchboard(ws) => ws
                .send(message)
                .await
                .map_err(|e| RunError::Signaling(e.to_string())),
            Signaling::Janus(janus) => Ok(janus.send(message).await?),
        }
    }

    /// Sends what the connection itself queued (Janus's requests and
    /// keepalives). Not cancel-safe: outside `select!`.
    async fn flush(&mut self) -> Result<(), RunError> {
        match self {
            Signaling::Switchboard(_) => Ok(()),
            Signaling::Janus(janus) => Ok(janus.flush().await?),
        }
    }

    /// The next message for the bot, if what arrived made one
    /// (cancel-safe: only reads).
    async fn recv(&mut self) -> Result<Option<ServerMessage>, RunError> {
        match self {
            Signaling::Switchboard(ws) => ws
                .recv()
                .await
                .map(Some)
                .map_err(|e| RunError::Signaling(e.to_string())),
            Signaling::Janus(janus) => Ok(janus.recv().await?),
        }
    }
}

/// Joins, publishes if asked, and runs until `plan.until`; returns the bot
/// with what it measured.
pub async fn run_bot(plan: BotPlan) -> Result<Bot, RunError> {
    let pub_socket = UdpSocket::bind((plan.local_ip, 0)).await?;
    let sub_socket = UdpSocket::bind((plan.local_ip, 0)).await?;
    let mut bot = Bot::new(
        &plan.name,
        pub_socket.local_addr()?,
        sub_socket.local_addr()?,
        Instant::now(),
    );
    bot.record = plan.record;
    bot.media = plan.media;
    bot.simulcast = plan.simulcast;
    bot.quality = plan.quality;
    let (mut ws, answer) = Signaling::join(&plan.server, &plan.name).await?;
    bot.handle_message(answer);
    if plan.publish {
        bot.publish();
    }

    let end = plan.until;
    let mut media = tokio::time::interval(Duration::from_millis(20));
    let mut pub_buf = vec![0u8; 2048];
    let mut sub_buf = vec![0u8; 2048];
    let mut wake = Instant::now();
    let mut published = 0u64;
    let mut up = false;
    let mut reported = (0u64, 0u64);
    let mut report_tick = tokio::time::interval(Duration::from_millis(500));
    while Instant::now() < end {
        while let Some(m) = bot.outbox.pop_front() {
            ws.send(&m).await?;
        }
        ws.flush().await?;
        while let Some(t) = bot.transmits.pop_front() {
            let socket = if t.source == bot.publisher_addr {
                published += 1;
                if plan.drop_every.is_some_and(|n| published.is_multiple_of(n)) {
                    continue;
                }
                &pub_socket
            } else {
                &sub_socket
            };
            let _ = socket.send_to(&t.contents, t.destination).await;
        }
        let sleep_until = wake.min(end).max(Instant::now() + Duration::from_millis(1));
        tokio::select! {
            m = ws.recv() => match m {
                Ok(Some(m)) => bot.handle_message(m),
                Ok(None) => {}
                Err(_) => break,
            },
            r = pub_socket.recv_from(&mut pub_buf) => if let Ok((n, src)) = r {
                let dest = bot.publisher_addr;
                bot.handle_datagram(src, dest, &pub_buf[..n], Instant::now());
            },
            r = sub_socket.recv_from(&mut sub_buf) => if let Ok((n, src)) = r {
                let dest = bot.subscriber_addr;
                bot.handle_datagram(src, dest, &sub_buf[..n], Instant::now());
            },
            _ = media.tick() => bot.send_media(Instant::now()),
            _ = report_tick.tick() => if let Some(p) = &plan.progress {
                use crate::progress::Progress;
                if !up && bot.is_up() {
                    up = true;
                    Progress::add(&p.bots_up, 1);
                }
                let packets: u64 = bot.tracks.values().map(|t| t.packets).sum();
                let lost: u64 = bot.tracks.values().map(|t| t.lost()).sum();
                Progress::add(&p.packets, packets.saturating_sub(reported.0));
                Progress::add(&p.lost, lost.saturating_sub(reported.1));
                reported = (packets.max(reported.0), lost.max(reported.1));
            },
            _ = tokio::time::sleep_until(sleep_until.into()) => bot.handle_timeout(Instant::now()),
        }
        wake = bot.poll();
    }
    let _ = ws.send(&ClientMessage::Leave).await;
    if let (Some(p), true) = (&plan.progress, up) {
        p.bots_up.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(bot)
}
