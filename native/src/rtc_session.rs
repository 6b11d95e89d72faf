//! A call's media signaling connection (`/v1/rtc`, protocol v1): join with
//! the call token, run the SDP exchange through the `MediaSession` port,
//! trickle candidates, keep the socket alive, and after a drop (a network
//! change) reconnect with backoff and resume the same participant
//! (`resumeParticipantId`) with an ICE restart, within the server's grace
//! period. Past it, or when the server refuses, the call engine hears
//! `MediaFailed` and rejoins with a fresh token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use signaling::client::SignalingClient;
use signaling::{ClientMessage, IceCandidate, PeerTarget, ServerMessage};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::call_engine::Input;
use crate::events::{Backoff, jitter};
use crate::ports::{MediaEvent, MediaSession, PeerConnection, VideoLayer};
use crate::remote_tracks::RemoteTracks;

/// Keepalive on the signaling socket.
const PING_EVERY: Duration = Duration::from_secs(10);
/// Until the server says otherwise in `joined`.
const DEFAULT_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcCommand {
    /// New ICE credentials on both connections (the network changed).
    RestartIce,
    /// Drop the socket now and resume, as a network change would.
    Reconnect,
    /// Leave the room and close the media session.
    Leave,
    /// A remote video is shown this large (device pixels): the server
    /// sends the smallest layer that covers it (`updateSubscription`).
    ShowVideo {
        track_id: String,
        width: u32,
        height: u32,
    },
}

pub struct RtcSession {
    pub call_id: String,
    /// `ws://host:port/v1/rtc`
    pub url: String,
    pub call_token: String,
    pub media: Arc<dyn MediaSession>,
    pub media_events: mpsc::UnboundedReceiver<MediaEvent>,
    /// Set from `joined`: the call token allows sending data.
    pub may_send_data: Arc<std::sync::atomic::AtomicBool>,
    pub engine: mpsc::UnboundedSender<Input>,
    /// For `wss://` (`crate::tls`).
    pub tls: Arc<rustls::ClientConfig>,
    /// Asks the API where the call's room is now (its `rtcUrl`); `None`:
    /// the API did not answer. Used while the node stays unreachable.
    pub locate_room: Option<LocateRoom>,
}

/// Where a call's room is now, from the API (`POST /v1/calls/{id}/token`).
pub type LocateRoom =
    Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, Option<String>> + Send + Sync>;

/// While the room's node cannot be reached, the API is asked this often
/// whether the room moved (a dead node's rooms move to a live node once
/// the registry forgets it, within about 10 s). A network that is down
/// reaches neither, and the session keeps resuming for its grace period.
const LOCATE_EVERY: Duration = Duration::from_secs(3);

/// Runs the session; the handle finishes once it released its media
/// session (the client's shutdown waits for that).
pub fn spawn(
    session: RtcSession,
) -> (
    mpsc::UnboundedSender<RtcCommand>,
    tokio::task::JoinHandle<()>,
) {
    let (commands, rx) = mpsc::unbounded_channel();
    let running = Running {
        session,
        tracks: RemoteTracks::default(),
        media_up: false,
        shown_videos: HashMap::new(),
    };
    (commands, tokio::spawn(running.run(rx)))
}

struct Running {
    session: RtcSession,
    /// The room's remote tracks as the app was told them.
    tracks: RemoteTracks,
    /// The media session last said it is connected.
    media_up: bool,
    /// The size each remote video is shown at (`RtcCommand::ShowVideo`):
    /// said again after every join, which a fresh one needs.
    shown_videos: HashMap<String, (u32, u32)>,
}

/// The `updateSubscription` for a remote video shown this large.
fn show_video(track_id: String, (width, height): (u32, u32)) -> ClientMessage {
    ClientMessage::UpdateSubscription {
        track_id,
        quality: None,
        width: Some(width.clamp(1, signaling::MAX_SUBSCRIPTION_PIXELS)),
        height: Some(height.clamp(1, signaling::MAX_SUBSCRIPTION_PIXELS)),
        fps: None,
    }
}

/// Why one socket's session ended.
enum SocketEnded {
    Left,
    /// `joined`: the socket had joined, so the grace period starts again.
    Dropped {
        joined: bool,
    },
    Failed(String),
    /// `wrong_node`: the room is on the node at this URL.
    Moved(String),
}

/// Redirects a session follows (`wrong_node`) before it gives up: two
/// nodes pointing at each other must not keep it busy.
const MAX_MOVES: usize = 3;

/// The SDP exchange's state on the publisher connection: one offer out at
/// a time, so an ICE restart asked for meanwhile waits for the answer.
#[derive(Default)]
struct Publisher {
    offer_pending: bool,
    restart_queued: bool,
}

impl Running {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<RtcCommand>) {
        let mut participant_id: Option<String> = None;
        let mut grace = DEFAULT_GRACE;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut resume_by: Option<Instant> = None;
        let mut moves = 0;
        let mut unreachable_since: Option<Instant> = None;
        let mut located_at: Option<Instant> = None;
        loop {
            let ended = match SignalingClient::connect_with_tls(
                &self.session.url,
                self.session.tls.clone(),
            )
            .await
            {
                Ok(ws) => {
                    self.socket(ws, &mut participant_id, &mut grace, &mut commands)
                        .await
                }
                Err(_) => SocketEnded::Dropped { joined: false },
            };
            match ended {
                SocketEnded::Left => break,
                // Refused, removed, or the media failed: not resumable.
                SocketEnded::Failed(why) => return self.fail(&why),
                SocketEnded::Moved(url) => {
                    moves += 1;
                    if moves > MAX_MOVES {
                        return self.fail("sent from node to node: giving up");
                    }
                    tracing::info!(call_id = %self.session.call_id, "the call's room is on another node; joining there");
                    self.session.url = url;
                    continue;
                }
                SocketEnded::Dropped { joined } => {
                    if joined {
                        resume_by = None;
                        unreachable_since = None;
                        backoff.reset();
                        self.reconnecting();
                    } else if self
                        .room_moved(&mut unreachable_since, &mut located_at)
                        .await
                    {
                        // A fresh join there, with that node's ICE servers.
                        return self.fail("the call's room moved to another node");
                    }
                }
            }
            let deadline = *resume_by.get_or_insert_with(|| Instant::now() + grace);
            if Instant::now() >= deadline {
                return self.fail("could not resume within the grace period");
            }
            tracing::info!(call_id = %self.session.call_id, "media signaling dropped; resuming");
            let delay = backoff.next_delay(jitter());
            tokio::select! {
                _ = tokio::time::sleep(delay.min(deadline - Instant::now())) => {}
                command = commands.recv() => match command {
                    None | Some(RtcCommand::Leave) => break,
                    Some(RtcCommand::ShowVideo { track_id, width, height }) => {
                        self.shown_videos.insert(track_id, (width, height));
                    }
                    Some(RtcCommand::RestartIce | RtcCommand::Reconnect) => {}
                },
            }
        }
        if let Err(e) = self.session.media.end_session() {
            tracing::warn!(call_id = %self.session.call_id, error = %e, "media close failed");
        }
    }

    /// One socket: join (or resume), then serve it until it drops.
    async fn socket(
        &mut self,
        mut ws: SignalingClient,
        participant_id: &mut Option<String>,
        grace: &mut Duration,
        commands: &mut mpsc::UnboundedReceiver<RtcCommand>,
    ) -> SocketEnded {
        let resuming = participant_id.is_some();
        let join = ClientMessage::Join {
            protocol_version: signaling::PROTOCOL_VERSION,
            token: self.session.call_token.clone(),
            auto_subscribe: true,
            resume_participant_id: participant_id.clone(),
        };
        if ws.send(&join).await.is_err() {
            return SocketEnded::Dropped { joined: false };
        }
        // The answer to the join; anything a newer server sends first that
        // this build cannot read or does not know is skipped.
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.recv().await {
                    Ok(m @ (ServerMessage::Joined { .. } | ServerMessage::Error { .. })) => {
                        return Some(m);
                    }
                    Ok(_) | Err(signaling::client::ClientError::Decode(_)) => {}
                    Err(_) => return None,
                }
            }
        });
        match answer.await {
            Ok(Some(
                joined @ ServerMessage::Joined {
                    reconnect_grace_seconds,
                    ..
                },
            )) => {
                *grace = Duration::from_secs(reconnect_grace_seconds.into());
                if let ServerMessage::Joined {
                    participant_id: id,
                    permissions,
                    ..
                } = &joined
                {
                    *participant_id = Some(id.clone());
                    self.session.may_send_data.store(
                        permissions.publish_data,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                self.track_changes(&joined);
            }
            Ok(Some(ServerMessage::Error {
                code: signaling::ErrorCode::WrongNode,
                rtc_url: Some(url),
                ..
            })) if url.starts_with("ws://") || url.starts_with("wss://") => {
                return SocketEnded::Moved(url);
            }
            // A `wrong_node` without a URL (the node is gone) fails here
            // too: the call engine rejoins with a fresh token, which moves
            // the room to a live node.
            Ok(Some(ServerMessage::Error { code, message, .. })) => {
                return SocketEnded::Failed(format!("join refused: {code:?}: {message}"));
            }
            _ => return SocketEnded::Dropped { joined: false },
        }
        tracing::info!(call_id = %self.session.call_id, resumed = resuming, "joined the call's room");
        if resuming && self.media_up {
            // Signaling is back and media never dropped: reconnected.
            let call_id = self.session.call_id.clone();
            let _ = self.session.engine.send(Input::MediaConnected { call_id });
        }
        let mut publisher = Publisher::default();
        let offer = self.session.media.create_publisher_offer(resuming);
        if let Err(e) = self.send_offer(&mut ws, &mut publisher, offer).await {
            return e;
        }
        if resuming && let Err(e) = send(&mut ws, &ClientMessage::RestartIce).await {
            return e;
        }
        for (track_id, size) in self.shown_videos.clone() {
            if let Err(e) = send(&mut ws, &show_video(track_id, size)).await {
                return e;
            }
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut unreadable_logged = false;
        loop {
            let result = tokio::select! {
                message = ws.recv() => match message {
                    Ok(message) => self.on_message(&mut ws, &mut publisher, message).await,
                    // A message this build cannot read (a newer server's):
                    // skipped, not a dropped socket.
                    Err(signaling::client::ClientError::Decode(e)) => {
                        if !std::mem::replace(&mut unreadable_logged, true) {
                            tracing::warn!(call_id = %self.session.call_id, error = %e, "skipping server messages this version cannot read");
                        }
                        Ok(())
                    }
                    Err(_) => Err(SocketEnded::Dropped { joined: true }),
                },
                Some(event) = self.session.media_events.recv() => self.on_media_event(&mut ws, event).await,
                command = commands.recv() => match command {
                    Some(RtcCommand::RestartIce) => self.restart_ice(&mut ws, &mut publisher).await,
                    Some(RtcCommand::Reconnect) => Err(SocketEnded::Dropped { joined: true }),
                    Some(RtcCommand::ShowVideo { track_id, width, height }) => {
                        self.shown_videos.insert(track_id.clone(), (width, height));
                        send(&mut ws, &show_video(track_id, (width, height))).await
                    }
                    Some(RtcCommand::Leave) | None => {
                        let _ = ws.send(&ClientMessage::Leave).await;
                        Err(SocketEnded::Left)
                    }
                },
                _ = ping.tick() => {
                    let timestamp = crate::unix_millis();
                    ws.send(&ClientMessage::Ping { timestamp }).await.map_err(|_| SocketEnded::Dropped { joined: true })
                }
            };
            if let Err(ended) = result {
                return ended;
            }
        }
    }

    async fn on_message(
        &mut self,
        ws: &mut SignalingClient,
        publisher: &mut Publisher,
        message: ServerMessage,
    ) -> Result<(), SocketEnded> {
        self.track_changes(&message);
        match message {
            ServerMessage::PublishAnswer { sdp, .. } => {
                self.session
                    .media
                    .apply_publisher_answer(sdp)
                    .map_err(|e| SocketEnded::Failed(e.to_string()))?;
                publisher.offer_pending = false;
                if std::mem::take(&mut publisher.restart_queued) {
                    self.restart_ice(ws, publisher).await?;
                }
            }
            ServerMessage::SubscriberOffer { sdp, .. } => {
                let sdp = self
                    .session
                    .media
                    .answer_subscriber_offer(sdp)
                    .map_err(|e| SocketEnded::Failed(e.to_string()))?;
                send(ws, &ClientMessage::SubscriberAnswer { sdp }).await?;
            }
            ServerMessage::Trickle { target, candidate } => {
                let connection = match target {
                    PeerTarget::Publisher => PeerConnection::Publisher,
                    PeerTarget::Subscriber => PeerConnection::Subscriber,
                };
                if let Err(e) = self
                    .session
                    .media
                    .add_remote_candidate(connection, candidate.candidate)
                {
                    tracing::warn!(call_id = %self.session.call_id, error = %e, "remote candidate refused");
                }
            }
            ServerMessage::QualityUpdate { qualities, .. } => {
                // The device publishes one video track: the update is its.
                let layers = qualities.into_iter().map(VideoLayer::from).collect();
                if let Err(e) = self.session.media.set_video_layers(layers) {
                    tracing::warn!(call_id = %self.session.call_id, error = %e, "video layers not applied");
                }
            }
            ServerMessage::Left { reason } => {
                return Err(SocketEnded::Failed(format!("removed: {reason:?}")));
            }
            ServerMessage::Error { code, message, .. } => {
                tracing::warn!(call_id = %self.session.call_id, ?code, %message, "signaling error");
            }
            _ => {}
        }
        Ok(())
    }

    async fn on_media_event(
        &mut self,
        ws: &mut SignalingClient,
        event: MediaEvent,
    ) -> Result<(), SocketEnded> {
        let call_id = self.session.call_id.clone();
        match event {
            MediaEvent::Connected => {
                self.media_up = true;
                let _ = self.session.engine.send(Input::MediaConnected { call_id });
            }
            MediaEvent::FirstMedia { video } => {
                let _ = self
                    .session
                    .engine
                    .send(Input::FirstMedia { call_id, video });
            }
            MediaEvent::Quality(quality) => {
                let _ = self
                    .session
                    .engine
                    .send(Input::MediaQuality { call_id, quality });
            }
            MediaEvent::Disconnected => self.reconnecting(),
            MediaEvent::Failed => {
                return Err(SocketEnded::Failed("media connection failed".into()));
            }
            MediaEvent::LocalCandidate {
                connection,
                candidate,
            } => {
                let target = match connection {
                    PeerConnection::Publisher => PeerTarget::Publisher,
                    PeerConnection::Subscriber => PeerTarget::Subscriber,
                };
                let candidate = IceCandidate {
                    candidate,
                    sdp_mid: None,
                    sdp_m_line_index: Some(0),
                    username_fragment: None,
                };
                send(ws, &ClientMessage::Trickle { target, candidate }).await?;
            }
            MediaEvent::Data { reliable, frame } => {
                // Only the server writes on its channels; anything else
                // there is not a message for the app.
                let Ok(received) = serde_json::from_str::<signaling::DataReceived>(&frame) else {
                    return Ok(());
                };
                let message = crate::ports::DataMessage {
                    user_id: self.tracks.user_of(&received.from),
                    from: received.from,
                    payload: received.payload,
                    reliable,
                };
                let _ = self.session.engine.send(Input::Data { call_id, message });
            }
        }
        Ok(())
    }

    async fn restart_ice(
        &mut self,
        ws: &mut SignalingClient,
        publisher: &mut Publisher,
    ) -> Result<(), SocketEnded> {
        if publisher.offer_pending {
            publisher.restart_queued = true;
            return Ok(());
        }
        let offer = self.session.media.create_publisher_offer(true);
        self.send_offer(ws, publisher, offer).await?;
        send(ws, &ClientMessage::RestartIce).await
    }

    async fn send_offer(
        &mut self,
        ws: &mut SignalingClient,
        publisher: &mut Publisher,
        offer: Result<String, crate::ports::PortError>,
    ) -> Result<(), SocketEnded> {
        let sdp = offer.map_err(|e| SocketEnded::Failed(e.to_string()))?;
        publisher.offer_pending = true;
        send(ws, &ClientMessage::Publish { sdp }).await
    }

    /// The app hears about remote tracks as the room changes.
    fn track_changes(&mut self, message: &ServerMessage) {
        if let ServerMessage::SpeakersChanged { speakers } = message {
            let speakers = speakers
                .iter()
                .map(|s| crate::ports::ActiveSpeaker {
                    participant_id: s.participant_id.clone(),
                    user_id: self.tracks.user_of(&s.participant_id),
                    level: s.level,
                })
                .collect();
            let _ = self.session.engine.send(Input::ActiveSpeakers {
                call_id: self.session.call_id.clone(),
                speakers,
            });
            return;
        }
        for change in self.tracks.on_message(message) {
            if let crate::remote_tracks::TrackChange::Removed { track_id } = &change {
                self.shown_videos.remove(track_id);
            }
            let _ = self.session.engine.send(Input::RemoteTrack {
                call_id: self.session.call_id.clone(),
                change,
            });
        }
    }

    /// Media or its signaling dropped; the session is resuming it.
    fn reconnecting(&mut self) {
        self.media_up = false;
        let _ = self.session.engine.send(Input::MediaReconnecting {
            call_id: self.session.call_id.clone(),
        });
    }

    /// After a failed attempt to reach the room's node: whether the API,
    /// asked at most every [`LOCATE_EVERY`] once the node has been
    /// unreachable that long, puts the room on another node now.
    async fn room_moved(
        &self,
        unreachable_since: &mut Option<Instant>,
        located_at: &mut Option<Instant>,
    ) -> bool {
        let Some(locate) = &self.session.locate_room else {
            return false;
        };
        let now = Instant::now();
        let since = *unreachable_since.get_or_insert(now);
        let due = located_at.is_none_or(|at| now - at >= LOCATE_EVERY);
        if now - since < LOCATE_EVERY || !due {
            return false;
        }
        *located_at = Some(now);
        let url = tokio::time::timeout(Duration::from_secs(5), locate())
            .await
            .ok()
            .flatten();
        url.is_some_and(|url| url != self.session.url)
    }

    fn fail(self, why: &str) {
        tracing::warn!(call_id = %self.session.call_id, reason = why, "media failed");
        if let Err(e) = self.session.media.end_session() {
            tracing::warn!(call_id = %self.session.call_id, error = %e, "media close failed");
        }
        let _ = self.session.engine.send(Input::MediaFailed {
            call_id: self.session.call_id,
        });
    }
}

async fn send(ws: &mut SignalingClient, message: &ClientMessage) -> Result<(), SocketEnded> {
    ws.send(message)
        .await
        .map_err(|_| SocketEnded::Dropped { joined: true })
}
