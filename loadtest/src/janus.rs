//! Janus's videoroom as the server a [`Bot`](crate::bot::Bot) joins, so the
//! same bots measure Janus and switchboard. [`JanusSession`] (sans-IO)
//! translates the bot's protocol-v1 messages into Janus's JSON API and
//! Janus's answers and events back; [`JanusClient`] carries it over Janus's
//! WebSocket transport (subprotocol `janus-protocol`).
//!
//! One bot is one Janus session with two handles on `janus.plugin.videoroom`,
//! the same split as the bot's two connections:
//! - the publisher handle creates the room (a second `create` for the same
//!   room is refused with 427, which is fine), joins it as a publisher
//!   (every bot does: that is how Janus tells a participant of the
//!   publishers that come and go), and carries the bot's `publish` offer
//!   (Janus's answer becomes the bot's `publishAnswer`);
//! - the subscriber handle is one multistream subscription: `join` with the
//!   feeds known at the time, `update` with those announced later. Janus's
//!   offers become `subscriberOffer`s (each stream a track named
//!   `<feed>/<feed mid>`, announced first as `trackPublished`), and the
//!   bot's answer goes back with `start`. One negotiation at a time: feeds
//!   announced meanwhile wait for the next `update`.
//!
//! Candidates travel in the SDP (half trickle): after each of the bot's
//! descriptions the handle is told `trickle {completed: true}`. A keepalive
//! goes out every 25 s (Janus ends a session silent for 60 s).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use signaling::{
    ClientMessage, PeerTarget, Permissions, ServerMessage, TrackInfo, TrackKind, TrackMid,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const VIDEOROOM: &str = "janus.plugin.videoroom";
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(25);
/// Publishers a room admits (Janus's default is 3).
const MAX_PUBLISHERS: u32 = 1000;
/// Janus's "room already exists": another bot of the room created it first.
const ROOM_EXISTS: i64 = 427;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JanusError {
    #[error("janus refused {request}: {reason}")]
    Refused {
        request: &'static str,
        reason: String,
    },
    #[error("janus sent a message this driver cannot read: {0}")]
    Unreadable(String),
    #[error("janus ended the session ({0})")]
    Ended(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handle {
    Publisher,
    Subscriber,
}

/// What a transaction asked, to read its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    CreateSession,
    Attach(Handle),
    CreateRoom,
    JoinPublisher,
    Publish,
    /// `join` as subscriber or `update`: both answer with an offer.
    Subscribe,
    Start,
    /// Keepalives, trickles, destroy: nothing to read in the answer.
    Other,
}

impl Request {
    fn name(self) -> &'static str {
        match self {
            Request::CreateSession => "create",
            Request::Attach(_) => "attach",
            Request::CreateRoom => "create room",
            Request::JoinPublisher => "join",
            Request::Publish => "publish",
            Request::Subscribe => "subscribe",
            Request::Start => "start",
            Request::Other => "request",
        }
    }
}

/// The subscriber handle's negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subscription {
    /// Not joined as a subscriber yet.
    None,
    /// An offer was asked for or is being answered.
    Negotiating,
    /// Joined, nothing in flight: new feeds go out in an `update`.
    Idle,
}

/// One bot's Janus session, sans IO: feed it Janus's messages
/// ([`JanusSession::handle_janus`]) and the bot's
/// ([`JanusSession::handle_client`]); send what lands in `to_janus`, give
/// the bot what lands in `to_bot`.
pub struct JanusSession {
    room: u64,
    display: String,
    next_transaction: u64,
    pending: HashMap<String, Request>,
    session_id: Option<u64>,
    publisher_handle: Option<u64>,
    subscriber_handle: Option<u64>,
    /// Our id in the room once joined.
    publisher_id: Option<u64>,
    private_id: Option<u64>,
    /// Feeds announced and not yet asked for.
    waiting_feeds: Vec<u64>,
    subscribed_feeds: HashSet<u64>,
    subscription: Subscription,
    next_keepalive: Instant,
    /// Why the session cannot go on, once it cannot.
    pub failed: Option<JanusError>,
    pub to_janus: VecDeque<Value>,
    pub to_bot: VecDeque<ServerMessage>,
}

impl JanusSession {
    /// Starts by asking for a session; `room` is created if missing.
    pub fn new(room: u64, display: &str, now: Instant) -> JanusSession {
        let mut session = JanusSession {
            room,
            display: display.to_string(),
            next_transaction: 0,
            pending: HashMap::new(),
            session_id: None,
            publisher_handle: None,
            subscriber_handle: None,
            publisher_id: None,
            private_id: None,
            waiting_feeds: Vec::new(),
            subscribed_feeds: HashSet::new(),
            subscription: Subscription::None,
            next_keepalive: now + KEEPALIVE_EVERY,
            failed: None,
            to_janus: VecDeque::new(),
            to_bot: VecDeque::new(),
        };
        session.request(Request::CreateSession, json!({"janus": "create"}));
        session
    }

    /// Our participant id in the room, once joined.
    pub fn publisher_id(&self) -> Option<u64> {
        self.publisher_id
    }

    /// When [`JanusSession::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Instant {
        self.next_keepalive
    }

    /// Sends the keepalive when it is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_keepalive {
            return;
        }
        self.next_keepalive = now + KEEPALIVE_EVERY;
        if self.session_id.is_some() {
            self.request(Request::Other, json!({"janus": "keepalive"}));
        }
    }

    /// Queues `body` (a Janus API request) with a new transaction and the
    /// session's id.
    fn request(&mut self, kind: Request, mut body: Value) {
        self.next_transaction += 1;
        let transaction = format!("t{}", self.next_transaction);
        body["transaction"] = json!(transaction);
        if let Some(id) = self.session_id {
            body["session_id"] = json!(id);
        }
        self.pending.insert(transaction, kind);
        self.to_janus.push_back(body);
    }

    /// A videoroom request on one handle, with a description if given.
    fn plugin_message(
        &mut self,
        kind: Request,
        handle: Handle,
        body: Value,
        jsep: Option<(&str, &str)>,
    ) {
        let Some(handle_id) = self.handle_id(handle) else {
            return;
        };
        let mut message = json!({"janus": "message", "handle_id": handle_id, "body": body});
        if let Some((kind, sdp)) = jsep {
            message["jsep"] = json!({"type": kind, "sdp": sdp});
        }
        self.request(kind, message);
    }

    fn handle_id(&self, handle: Handle) -> Option<u64> {
        match handle {
            Handle::Publisher => self.publisher_handle,
            Handle::Subscriber => self.subscriber_handle,
        }
    }

    /// Half trickle: the description carried every candidate.
    fn candidates_complete(&mut self, handle: Handle) {
        if let Some(handle_id) = self.handle_id(handle) {
            self.request(
                Request::Other,
                json!({"janus": "trickle", "handle_id": handle_id, "candidate": {"completed": true}}),
            );
        }
    }

    fn fail(&mut self, error: JanusError) {
        if self.failed.is_none() {
            self.failed = Some(error);
        }
    }

    /// One message from the bot.
    pub fn handle_client(&mut self, message: &ClientMessage) {
        match message {
            ClientMessage::Publish { sdp } => {
                let body = json!({"request": "publish", "audio": true, "video": true});
                self.plugin_message(
                    Request::Publish,
                    Handle::Publisher,
                    body,
                    Some(("offer", sdp)),
                );
                self.candidates_complete(Handle::Publisher);
            }
            ClientMessage::SubscriberAnswer { sdp } => {
                self.plugin_message(
                    Request::Start,
                    Handle::Subscriber,
                    json!({"request": "start"}),
                    Some(("answer", sdp)),
                );
                self.candidates_complete(Handle::Subscriber);
                self.subscription = Subscription::Idle;
                self.subscribe_waiting();
            }
            ClientMessage::Trickle { target, candidate } => {
                let handle = match target {
                    PeerTarget::Publisher => Handle::Publisher,
                    PeerTarget::Subscriber => Handle::Subscriber,
                };
                if let Some(handle_id) = self.handle_id(handle) {
                    self.request(
                        Request::Other,
                        json!({"janus": "trickle", "handle_id": handle_id, "candidate": {
                            "candidate": candidate.candidate,
                            "sdpMid": candidate.sdp_mid,
                            "sdpMLineIndex": candidate.sdp_m_line_index,
                        }}),
                    );
                }
            }
            ClientMessage::Leave if self.session_id.is_some() => {
                self.request(Request::Other, json!({"janus": "destroy"}));
            }
            // Layer choice, mutes, data: nothing the bench asks of Janus.
            _ => {}
        }
    }

    /// One message from Janus.
    pub fn handle_janus(&mut self, message: &Value) {
        let kind = message["janus"].as_str().unwrap_or_default();
        let request = message["transaction"].as_str().and_then(|t| match kind {
            // An `ack` says a request was queued; its event comes later.
            "ack" => None,
            _ => self.pending.remove(t),
        });
        match kind {
            "success" => self.on_success(request, message),
            "error" => {
                let reason = message["error"]["reason"]
                    .as_str()
                    .unwrap_or("no reason")
                    .to_string();
                self.fail(JanusError::Refused {
                    request: request.map_or("request", Request::name),
                    reason,
                });
            }
            "event" => self.on_event(request, message),
            "timeout" => self.fail(JanusError::Ended("session timed out".into())),
            "hangup" => {
                let reason = message["reason"].as_str().unwrap_or("hangup").to_string();
                self.fail(JanusError::Ended(reason));
            }
            // ack, keepalive answers, webrtcup, media, slowlink, trickle
            // (our candidates came in the SDP; Janus's in its own).
            _ => {}
        }
    }

    fn on_success(&mut self, request: Option<Request>, message: &Value) {
        match request {
            Some(Request::CreateSession) => {
                let Some(id) = message["data"]["id"].as_u64() else {
                    return self.fail(JanusError::Unreadable("create without an id".into()));
                };
                self.session_id = Some(id);
                for handle in [Handle::Publisher, Handle::Subscriber] {
                    self.request(
                        Request::Attach(handle),
                        json!({"janus": "attach", "plugin": VIDEOROOM}),
                    );
                }
            }
            Some(Request::Attach(handle)) => {
                let Some(id) = message["data"]["id"].as_u64() else {
                    return self.fail(JanusError::Unreadable("attach without an id".into()));
                };
                match handle {
                    Handle::Publisher => self.publisher_handle = Some(id),
                    Handle::Subscriber => self.subscriber_handle = Some(id),
                }
                if self.publisher_handle.is_some() && self.subscriber_handle.is_some() {
                    self.create_room();
                }
            }
            Some(Request::CreateRoom) => {
                let data = &message["plugindata"]["data"];
                match data["error_code"].as_i64() {
                    None | Some(ROOM_EXISTS) => self.plugin_message(
                        Request::JoinPublisher,
                        Handle::Publisher,
                        json!({"request": "join", "ptype": "publisher", "room": self.room,
                               "display": self.display}),
                        None,
                    ),
                    Some(_) => self.fail(refused(Request::CreateRoom, data)),
                }
            }
            _ => {}
        }
    }

    fn create_room(&mut self) {
        self.plugin_message(
            Request::CreateRoom,
            Handle::Publisher,
            json!({"request": "create", "room": self.room, "publishers": MAX_PUBLISHERS,
                   "audiocodec": "opus", "videocodec": "vp8", "bitrate": 0,
                   "notify_joining": false, "permanent": false}),
            None,
        );
    }

    fn on_event(&mut self, request: Option<Request>, message: &Value) {
        let data = &message["plugindata"]["data"];
        let sender = message["sender"].as_u64();
        let handle = if sender.is_some() && sender == self.subscriber_handle {
            Handle::Subscriber
        } else {
            Handle::Publisher
        };
        if data.get("error_code").is_some() {
            match (handle, request) {
                // A feed that left before our update reached Janus: the
                // negotiation is over, the others still wait their turn.
                (Handle::Subscriber, Some(Request::Subscribe)) => {
                    self.subscription = match self.subscription {
                        Subscription::None => Subscription::None,
                        _ => Subscription::Idle,
                    };
                    self.subscribe_waiting();
                }
                (_, Some(request)) => self.fail(refused(request, data)),
                (_, None) => {}
            }
            return;
        }
        let jsep = &message["jsep"];
        match (handle, data["videoroom"].as_str().unwrap_or_default()) {
            (Handle::Publisher, "joined") => {
                self.publisher_id = data["id"].as_u64();
                self.private_id = data["private_id"].as_u64();
                let Some(id) = self.publisher_id else {
                    return self.fail(JanusError::Unreadable("joined without an id".into()));
                };
                self.to_bot.push_back(ServerMessage::Joined {
                    protocol_version: signaling::PROTOCOL_VERSION,
                    room_id: self.room.to_string(),
                    participant_id: id.to_string(),
                    user_id: self.display.clone(),
                    permissions: Permissions::ALL,
                    participants: Vec::new(),
                    reconnect_grace_seconds: 0,
                });
                self.note_publishers(&data["publishers"]);
            }
            (Handle::Publisher, "event") => {
                if let Some(sdp) = jsep["sdp"].as_str().filter(|_| jsep["type"] == "answer") {
                    self.to_bot.push_back(ServerMessage::PublishAnswer {
                        sdp: sdp.to_string(),
                        tracks: Vec::new(),
                    });
                }
                self.note_publishers(&data["publishers"]);
            }
            (Handle::Subscriber, "attached" | "updated") => match jsep["sdp"].as_str() {
                Some(sdp) if jsep["type"] == "offer" => {
                    self.subscription = Subscription::Negotiating;
                    self.offer_to_bot(sdp, &data["streams"]);
                }
                // An update that changed nothing.
                _ => {
                    self.subscription = Subscription::Idle;
                    self.subscribe_waiting();
                }
            },
            // `started`, `unpublished`, `leaving`, talking events: Janus
            // updates the subscription itself when a feed goes.
            _ => {}
        }
    }

    /// Feeds in a `publishers` list wait for the subscriber handle.
    fn note_publishers(&mut self, publishers: &Value) {
        let Some(publishers) = publishers.as_array() else {
            return;
        };
        for feed in publishers.iter().filter_map(|p| p["id"].as_u64()) {
            let known = self.subscribed_feeds.contains(&feed) || self.waiting_feeds.contains(&feed);
            if Some(feed) != self.publisher_id && !known {
                self.waiting_feeds.push(feed);
            }
        }
        self.subscribe_waiting();
    }

    /// Asks for the waiting feeds: `join` the first time, then `update`;
    /// only when no negotiation is in flight.
    fn subscribe_waiting(&mut self) {
        if self.waiting_feeds.is_empty() || self.subscription == Subscription::Negotiating {
            return;
        }
        let feeds: Vec<u64> = std::mem::take(&mut self.waiting_feeds);
        let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
        self.subscribed_feeds.extend(feeds);
        let body = match self.subscription {
            Subscription::None => json!({"request": "join", "ptype": "subscriber",
                "room": self.room, "private_id": self.private_id, "streams": streams}),
            _ => json!({"request": "update", "subscribe": streams}),
        };
        self.subscription = Subscription::Negotiating;
        self.plugin_message(Request::Subscribe, Handle::Subscriber, body, None);
    }

    /// Janus's offer for the subscriber handle, its streams as tracks.
    fn offer_to_bot(&mut self, sdp: &str, streams: &Value) {
        let mut tracks = Vec::new();
        for stream in streams.as_array().into_iter().flatten() {
            let kind = match stream["type"].as_str() {
                Some("audio") => TrackKind::Audio,
                Some("video") => TrackKind::Video,
                _ => continue,
            };
            let (Some(mid), Some(feed)) = (stream["mid"].as_str(), stream["feed_id"].as_u64())
            else {
                continue;
            };
            let feed_mid = stream["feed_mid"].as_str().unwrap_or(mid);
            let track_id = format!("{feed}/{feed_mid}");
            self.to_bot.push_back(ServerMessage::TrackPublished {
                track: TrackInfo {
                    track_id: track_id.clone(),
                    participant_id: feed.to_string(),
                    kind,
                    muted: false,
                    codec: stream["codec"].as_str().map(str::to_string),
                },
            });
            tracks.push(TrackMid {
                mid: mid.to_string(),
                track_id,
            });
        }
        self.to_bot.push_back(ServerMessage::SubscriberOffer {
            sdp: sdp.to_string(),
            tracks,
        });
    }
}

fn refused(request: Request, data: &Value) -> JanusError {
    JanusError::Refused {
        request: request.name(),
        reason: format!(
            "{} {}",
            data["error_code"],
            data["error"].as_str().unwrap_or_default()
        ),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JanusClientError {
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error(transparent)]
    Janus(#[from] JanusError),
    #[error("janus closed the connection")]
    Closed,
}

/// A [`JanusSession`] on Janus's WebSocket transport.
pub struct JanusClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub session: JanusSession,
}

impl JanusClient {
    /// Connects to `ws://host:8188` and starts a session for `room`.
    pub async fn connect(
        url: &str,
        room: u64,
        display: &str,
    ) -> Result<JanusClient, JanusClientError> {
        let mut request = url.into_client_request()?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static("janus-protocol"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(JanusClient {
            ws,
            session: JanusSession::new(room, display, Instant::now()),
        })
    }

    /// Sends what the session queued (keepalive included when due).
    /// Not cancel-safe: call it outside `select!`.
    pub async fn flush(&mut self) -> Result<(), JanusClientError> {
        self.session.handle_timeout(Instant::now());
        while let Some(message) = self.session.to_janus.pop_front() {
            self.ws.send(Message::text(message.to_string())).await?;
        }
        match &self.session.failed {
            Some(e) => Err(e.clone().into()),
            None => Ok(()),
        }
    }

    /// The next message for the bot, if reading one from Janus produced
    /// one (cancel-safe: only reads).
    pub async fn recv(&mut self) -> Result<Option<ServerMessage>, JanusClientError> {
        if let Some(message) = self.session.to_bot.pop_front() {
            return Ok(Some(message));
        }
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text)
                        .map_err(|e| JanusError::Unreadable(e.to_string()))?;
                    self.session.handle_janus(&value);
                    return Ok(self.session.to_bot.pop_front());
                }
                Some(Ok(Message::Close(_))) | None => return Err(JanusClientError::Closed),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Runs the session until the room is joined; returns the `joined`.
    pub async fn join(&mut self) -> Result<ServerMessage, JanusClientError> {
        loop {
            self.flush().await?;
            if let Some(joined @ ServerMessage::Joined { .. }) = self.recv().await? {
                return Ok(joined);
            }
        }
    }

    pub async fn send(&mut self, message: &ClientMessage) -> Result<(), JanusClientError> {
        self.session.handle_client(message);
        self.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: u64 = 7;
    const PUBLISHER_HANDLE: u64 = 11;
    const SUBSCRIBER_HANDLE: u64 = 12;

    fn sent(session: &mut JanusSession) -> Vec<Value> {
        session.to_janus.drain(..).collect()
    }

    fn to_bot(session: &mut JanusSession) -> Vec<ServerMessage> {
        session.to_bot.drain(..).collect()
    }

    /// Janus's synchronous answer to `request`.
    fn success(request: &Value, extra: Value) -> Value {
        let mut answer = json!({"janus": "success", "transaction": request["transaction"]});
        for (k, v) in extra.as_object().unwrap() {
            answer[k] = v.clone();
        }
        answer
    }

    /// A videoroom event on a handle, answering `request` if given.
    fn event(sender: u64, request: Option<&Value>, data: Value, jsep: Option<Value>) -> Value {
        let mut event = json!({"janus": "event", "session_id": SESSION, "sender": sender,
            "plugindata": {"plugin": VIDEOROOM, "data": data}});
        if let Some(request) = request {
            event["transaction"] = request["transaction"].clone();
        }
        if let Some(jsep) = jsep {
            event["jsep"] = jsep;
        }
        event
    }

    /// A session through `joined`, where feed 200 already publishes; returns
    /// it with the subscriber `join` it sent.
    fn joined() -> (JanusSession, Value) {
        let mut s = JanusSession::new(42, "r0-pub0", Instant::now());
        let create = sent(&mut s).remove(0);
        assert_eq!(create["janus"], "create");
        s.handle_janus(&success(&create, json!({"data": {"id": SESSION}})));
        let attaches = sent(&mut s);
        assert_eq!(attaches.len(), 2);
        for (attach, id) in attaches.iter().zip([PUBLISHER_HANDLE, SUBSCRIBER_HANDLE]) {
            assert_eq!(attach["plugin"], VIDEOROOM);
            assert_eq!(attach["session_id"], SESSION);
            s.handle_janus(&success(attach, json!({"data": {"id": id}})));
        }
        let create_room = sent(&mut s).remove(0);
        assert_eq!(create_room["handle_id"], PUBLISHER_HANDLE);
        assert_eq!(create_room["body"]["request"], "create");
        assert_eq!(create_room["body"]["room"], 42);
        // Another bot of the room created it first.
        let exists = json!({"plugindata": {"plugin": VIDEOROOM, "data": {
            "videoroom": "event", "error_code": ROOM_EXISTS, "error": "Room 42 already exists"}}});
        s.handle_janus(&success(&create_room, exists));
        let join = sent(&mut s).remove(0);
        assert_eq!(join["body"]["ptype"], "publisher");
        assert!(to_bot(&mut s).is_empty());
        let joined = json!({"videoroom": "joined", "room": 42, "id": 100, "private_id": 5,
            "publishers": [{"id": 200, "display": "r0-pub1"}]});
        s.handle_janus(&json!({"janus": "ack", "transaction": join["transaction"]}));
        s.handle_janus(&event(PUBLISHER_HANDLE, Some(&join), joined, None));
        match to_bot(&mut s).as_slice() {
            [ServerMessage::Joined { participant_id, .. }] => assert_eq!(participant_id, "100"),
            other => panic!("{other:?}"),
        }
        let subscribe = sent(&mut s).remove(0);
        assert_eq!(subscribe["handle_id"], SUBSCRIBER_HANDLE);
        assert_eq!(subscribe["body"]["ptype"], "subscriber");
        assert_eq!(subscribe["body"]["private_id"], 5);
        assert_eq!(subscribe["body"]["streams"], json!([{"feed": 200}]));
        assert!(s.failed.is_none());
        (s, subscribe)
    }

    fn offer(streams: Value) -> (Value, Option<Value>) {
        (
            json!({"videoroom": "attached", "room": 42, "streams": streams}),
            Some(json!({"type": "offer", "sdp": "v=0 janus offer"})),
        )
    }

    #[test]
    fn joins_creating_the_room_and_subscribes_to_the_publishers_already_there() {
        let (mut s, subscribe) = joined();
        let (data, jsep) = offer(json!([
            {"mindex": 0, "mid": "0", "type": "audio", "feed_id": 200, "feed_mid": "a"},
            {"mindex": 1, "mid": "1", "type": "video", "feed_id": 200, "feed_mid": "v",
             "codec": "vp8"},
        ]));
        s.handle_janus(&event(SUBSCRIBER_HANDLE, Some(&subscribe), data, jsep));
        let messages = to_bot(&mut s);
        let [
            ServerMessage::TrackPublished { track: audio },
            ServerMessage::TrackPublished { track: video },
            ServerMessage::SubscriberOffer { sdp, tracks },
        ] = messages.as_slice()
        else {
            panic!("{messages:?}");
        };
        assert_eq!(
            (audio.kind, audio.track_id.as_str()),
            (TrackKind::Audio, "200/a")
        );
        assert_eq!(
            (video.kind, video.participant_id.as_str()),
            (TrackKind::Video, "200")
        );
        assert_eq!(sdp, "v=0 janus offer");
        assert_eq!(tracks[1].mid, "1");
        assert_eq!(tracks[1].track_id, "200/v");
        // The bot's answer goes back with `start`, then the end of candidates.
        s.handle_client(&ClientMessage::SubscriberAnswer {
            sdp: "v=0 bot answer".into(),
        });
        let out = sent(&mut s);
        assert_eq!(out[0]["body"]["request"], "start");
        assert_eq!(
            out[0]["jsep"],
            json!({"type": "answer", "sdp": "v=0 bot answer"})
        );
        assert_eq!(out[1]["janus"], "trickle");
        assert_eq!(out[1]["handle_id"], SUBSCRIBER_HANDLE);
        assert_eq!(out[1]["candidate"], json!({"completed": true}));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn feeds_announced_during_a_negotiation_wait_for_the_answer_then_update() {
        let (mut s, subscribe) = joined();
        let publishers = |ids: &[u64]| {
            let list: Vec<Value> = ids.iter().map(|id| json!({"id": id})).collect();
            json!({"videoroom": "event", "room": 42, "publishers": list})
        };
        s.handle_janus(&event(PUBLISHER_HANDLE, None, publishers(&[300]), None));
        assert!(sent(&mut s).is_empty(), "one negotiation at a time");
        let (data, jsep) = offer(json!([]));
        s.handle_janus(&event(SUBSCRIBER_HANDLE, Some(&subscribe), data, jsep));
        s.handle_client(&ClientMessage::SubscriberAnswer { sdp: "a".into() });
        let out = sent(&mut s);
        let update = out.last().unwrap();
        assert_eq!(
            update["body"],
            json!({"request": "update", "subscribe": [{"feed": 300}]})
        );
        // Announced again (and our own id): nothing new to ask for.
        s.handle_janus(&event(
            PUBLISHER_HANDLE,
            None,
            publishers(&[300, 200, 100]),
            None,
        ));
        assert!(sent(&mut s).is_empty());
        // The feed left before the update arrived: Janus refuses it, and
        // the session goes on with the next feed.
        let gone = json!({"videoroom": "event", "error_code": 428, "error": "No such feed (300)"});
        s.handle_janus(&event(SUBSCRIBER_HANDLE, Some(update), gone, None));
        assert!(s.failed.is_none());
        s.handle_janus(&event(PUBLISHER_HANDLE, None, publishers(&[400]), None));
        let next = sent(&mut s).remove(0);
        assert_eq!(next["body"]["subscribe"], json!([{"feed": 400}]));
    }

    #[test]
    fn the_publish_offer_gets_janus_answer() {
        let (mut s, _) = joined();
        s.handle_client(&ClientMessage::Publish {
            sdp: "v=0 bot offer".into(),
        });
        let out = sent(&mut s);
        let publish = &out[0];
        assert_eq!(publish["handle_id"], PUBLISHER_HANDLE);
        assert_eq!(publish["body"]["request"], "publish");
        assert_eq!(publish["jsep"]["type"], "offer");
        assert_eq!(out[1]["candidate"]["completed"], true);
        let configured = json!({"videoroom": "event", "room": 42, "configured": "ok"});
        let answer = json!({"type": "answer", "sdp": "v=0 janus answer"});
        s.handle_janus(&event(
            PUBLISHER_HANDLE,
            Some(publish),
            configured,
            Some(answer),
        ));
        match to_bot(&mut s).as_slice() {
            [ServerMessage::PublishAnswer { sdp, .. }] => assert_eq!(sdp, "v=0 janus answer"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refused_join_or_an_ended_session_fails_the_bot() {
        let mut s = JanusSession::new(42, "bot", Instant::now());
        let create = sent(&mut s).remove(0);
        let refused = json!({"janus": "error", "transaction": create["transaction"],
            "error": {"code": 403, "reason": "Unauthorized request"}});
        s.handle_janus(&refused);
        assert_eq!(
            s.failed,
            Some(JanusError::Refused {
                request: "create",
                reason: "Unauthorized request".into()
            })
        );

        let (mut s, _) = joined();
        s.handle_janus(&json!({"janus": "timeout", "session_id": SESSION}));
        assert!(matches!(s.failed, Some(JanusError::Ended(_))));
    }

    #[test]
    fn keepalives_go_out_every_25_seconds_once_there_is_a_session() {
        let start = Instant::now();
        let mut s = JanusSession::new(42, "bot", start);
        let create = sent(&mut s).remove(0);
        s.handle_timeout(start + KEEPALIVE_EVERY);
        assert!(sent(&mut s).is_empty(), "no session yet");
        s.handle_janus(&success(&create, json!({"data": {"id": SESSION}})));
        sent(&mut s);
        s.handle_timeout(start + KEEPALIVE_EVERY + Duration::from_secs(1));
        assert!(sent(&mut s).is_empty(), "not due");
        assert_eq!(s.poll_timeout(), start + 2 * KEEPALIVE_EVERY);
        s.handle_timeout(start + 2 * KEEPALIVE_EVERY);
        let keepalive = sent(&mut s).remove(0);
        assert_eq!(keepalive["janus"], "keepalive");
        assert_eq!(keepalive["session_id"], SESSION);
    }
}
