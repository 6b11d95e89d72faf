use serde::{Deserialize, Serialize};

/// Which of a participant's two peer connections a message is about.
///
/// Glare is impossible by design: on the `publisher` connection only the
/// client offers; on the `subscriber` connection only the server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerTarget {
    Publisher,
    Subscriber,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    Audio,
    Video,
}

/// Which of a simulcast track's layers a subscriber wants: `low`, `medium`
/// or `high` (lowest, middle and highest of the layers the publisher sends;
/// a track without simulcast has one, which every quality names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoQuality {
    Low,
    Medium,
    High,
}

/// Which layer of a video track a subscriber wants: a quality, or the
/// smallest layer at least as large as where it is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerChoice {
    Quality(VideoQuality),
    /// Pixels, as rendered (device pixels on phones).
    Size {
        width: u32,
        height: u32,
    },
}

/// A subscriber's wish for one video track (`updateSubscription`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerRequest {
    pub choice: LayerChoice,
    /// At most this many frames per second; `None`: all the publisher sends.
    pub max_fps: Option<u32>,
}

impl LayerRequest {
    /// What a subscriber gets before it asks: the highest layer, every frame.
    pub const HIGHEST: LayerRequest = LayerRequest {
        choice: LayerChoice::Quality(VideoQuality::High),
        max_fps: None,
    };
}

/// `updateSubscription` sizes and frame rates are taken in these bounds.
pub const MAX_SUBSCRIPTION_PIXELS: u32 = 16_384;
pub const MAX_SUBSCRIPTION_FPS: u32 = 240;

/// What a call token allows its holder to do in the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Permissions {
    pub publish_audio: bool,
    pub publish_video: bool,
    pub subscribe: bool,
    /// May send on the room's data channels. Absent in tokens minted
    /// before data channels existed: not allowed.
    #[serde(default)]
    pub publish_data: bool,
}

impl Permissions {
    pub const ALL: Permissions = Permissions {
        publish_audio: true,
        publish_video: true,
        subscribe: true,
        publish_data: true,
    };

    pub fn may_publish(&self, kind: TrackKind) -> bool {
        match kind {
            TrackKind::Audio => self.publish_audio,
            TrackKind::Video => self.publish_video,
        }
    }
}

/// Whether a subscribed video track is forwarded (`streamStateChanged`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamState {
    Active,
    /// Your downlink cannot carry even its lowest layer now: nothing is
    /// sent until it can (audio keeps flowing). Show a placeholder, not
    /// the frozen last frame.
    Paused,
    /// A state a newer server knows and this build does not.
    #[serde(other)]
    Unknown,
}

/// The label of the subscriber connection's reliable, ordered data channel
/// (the server opens it with the connection's first offer).
pub const DATA_CHANNEL_RELIABLE: &str = "switchboard";
/// The label of its lossy channel: unordered, never retransmitted (for
/// state that the next message replaces: cursors, positions).
pub const DATA_CHANNEL_LOSSY: &str = "switchboard-lossy";
/// The largest payload one data message may carry, in UTF-8 bytes.
pub const MAX_DATA_PAYLOAD_BYTES: usize = 16 * 1024;
/// The most participants one data message may name in `to`.
pub const MAX_DATA_RECIPIENTS: usize = 64;

/// What a client writes, as one text message, on either data channel:
/// `payload` to the whole room, or only to the participants in `to`. The
/// server attaches the sender; a `from` here is refused, not trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataSend {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<String>>,
    pub payload: String,
}

impl DataSend {
    /// What the server refuses of a well-formed message (beyond the
    /// token's `publishData` and the rate), with the code it refuses with:
    /// clients check the same before they send.
    pub fn check(&self) -> Result<(), (ErrorCode, &'static str)> {
        if self.payload.len() > MAX_DATA_PAYLOAD_BYTES {
            return Err((
                ErrorCode::MessageTooLarge,
                "data message payload exceeds 16384 bytes",
            ));
        }
        if self
            .to
            .as_ref()
            .is_some_and(|to| to.is_empty() || to.len() > MAX_DATA_RECIPIENTS)
        {
            return Err((
                ErrorCode::BadMessage,
                "`to` names 1 to 64 participants (leave it out for the whole room)",
            ));
        }
        Ok(())
    }
}

/// What the server writes on a member's data channel (the channel the
/// sender used): the payload and who sent it, as the server knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataReceived {
    pub from: String,
    pub payload: String,
}

/// A trickled ICE candidate, in the browser's `RTCIceCandidateInit` shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackInfo {
    pub track_id: String,
    pub participant_id: String,
    pub kind: TrackKind,
    pub muted: bool,
    /// The codec the publisher negotiated, e.g. `"VP8"`, `"H264"`, `"opus"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantInfo {
    pub participant_id: String,
    pub user_id: String,
    pub state: ParticipantState,
    pub tracks: Vec<TrackInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParticipantState {
    /// Joined; media flows when its peer connections are up.
    Active,
    /// Its network path or WebSocket broke; it keeps its place for the grace period.
    Reconnecting,
    /// A state a newer server knows and this build does not.
    #[serde(other)]
    Unknown,
}

/// Which subscriber-side m-line carries which room track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackMid {
    pub mid: String,
    pub track_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The participant sent `leave`.
    Left,
    /// The participant's path stayed broken past the grace period.
    Timeout,
    /// The same participant joined again on another WebSocket.
    Replaced,
    /// The server is shutting down.
    ServerShutdown,
    /// The server lost this participant's media state (an internal fault,
    /// contained to it): join again with a fresh call token.
    Failed,
    /// A reason a newer server knows and this build does not.
    #[serde(other)]
    Unknown,
}

/// Every error a client can be sent, as a stable machine-readable code.
/// A new code goes into [`ErrorCode::ALL`] too (the server's metric
/// exports each at 0 from the start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not valid JSON or not a known message.
    BadMessage,
    /// The frame exceeded the configured size limit.
    MessageTooLarge,
    /// The first message was not `join`, or `join` came twice.
    NotJoined,
    AlreadyJoined,
    /// The client speaks a protocol version this server does not.
    UnsupportedVersion,
    /// The call token is missing, malformed, badly signed or for another audience.
    InvalidToken,
    TokenExpired,
    /// The token does not allow this action (e.g. publishing video without publishVideo).
    PermissionDenied,
    /// The SDP could not be parsed or was refused by the media engine.
    InvalidSdp,
    InvalidCandidate,
    UnknownTrack,
    /// Not an answer to a request: a track has no codec in common with this
    /// subscriber connection, so it is not forwarded to it.
    UnsupportedCodec,
    /// The room or participant limit was reached.
    Capacity,
    /// Too many messages in too short a time.
    RateLimited,
    /// The server is draining (shutting down) and opens no new rooms: get a
    /// call token for another node.
    Draining,
    /// The connection did not read what the server sent fast enough; the
    /// server closes it (the participant may resume on a new one).
    SlowConsumer,
    /// The call's room is on another node: join at `rtcUrl` with the same
    /// token, or, without `rtcUrl` (that node is gone), get a fresh call
    /// token, which places the room on a live node.
    WrongNode,
    Internal,
    /// A code a newer server knows and this build does not.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code this build sends (not `Unknown`, which only a client
    /// reads): the bounded values of the server's error metric.
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::BadMessage,
        ErrorCode::MessageTooLarge,
        ErrorCode::NotJoined,
        ErrorCode::AlreadyJoined,
        ErrorCode::UnsupportedVersion,
        ErrorCode::InvalidToken,
        ErrorCode::TokenExpired,
        ErrorCode::PermissionDenied,
        ErrorCode::InvalidSdp,
        ErrorCode::InvalidCandidate,
        ErrorCode::UnknownTrack,
        ErrorCode::UnsupportedCodec,
        ErrorCode::Capacity,
        ErrorCode::RateLimited,
        ErrorCode::Draining,
        ErrorCode::SlowConsumer,
        ErrorCode::WrongNode,
        ErrorCode::Internal,
    ];

    /// The wire name (`invalid_token`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::InvalidSdp => "invalid_sdp",
            ErrorCode::InvalidCandidate => "invalid_candidate",
            ErrorCode::UnknownTrack => "unknown_track",
            ErrorCode::UnsupportedCodec => "unsupported_codec",
            ErrorCode::Capacity => "capacity",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Draining => "draining",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::WrongNode => "wrong_node",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

/// Messages a client sends. The first one on a connection must be `join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ClientMessage {
    Join {
        protocol_version: u32,
        token: String,
        /// Subscribe to every track in the room as it is published (default true).
        #[serde(default = "default_true")]
        auto_subscribe: bool,
        /// Resume an existing participant (after a WebSocket drop) instead of joining anew.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_participant_id: Option<String>,
    },
    /// An SDP offer on the publisher connection: adds, changes or removes published tracks.
    Publish {
        sdp: String,
    },
    /// Stop forwarding a published track now; the client renegotiates its publisher connection after.
    Unpublish {
        track_id: String,
    },
    /// The answer to the server's `subscriberOffer`.
    SubscriberAnswer {
        sdp: String,
    },
    Trickle {
        target: PeerTarget,
        candidate: IceCandidate,
    },
    Subscribe {
        track_ids: Vec<String>,
    },
    Unsubscribe {
        track_ids: Vec<String>,
    },
    Mute {
        track_id: String,
        muted: bool,
    },
    /// Which layer of a subscribed video track to receive (simulcast):
    /// by `quality`, or by the size it is shown at (`width` and `height`);
    /// `fps` caps the frame rate (temporal layers). The server switches at
    /// the layer's next keyframe, which it asks for. [`Self::layer_request`]
    /// reads it.
    UpdateSubscription {
        track_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quality: Option<VideoQuality>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        width: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        height: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fps: Option<u32>,
    },
    /// The client's network changed: the server sends a subscriber offer with new ICE credentials.
    RestartIce,
    Leave,
    Ping {
        timestamp: u64,
    },
}

impl ClientMessage {
    /// An `updateSubscription`'s request: exactly one of `quality` or
    /// `width` and `height`, sizes 1 to 16384 and `fps` 1 to 240; `None`
    /// for other messages.
    pub fn layer_request(&self) -> Option<Result<LayerRequest, &'static str>> {
        let ClientMessage::UpdateSubscription {
            quality,
            width,
            height,
            fps,
            ..
        } = *self
        else {
            return None;
        };
        let in_bounds = |v: u32, max: u32| (1..=max).contains(&v);
        let choice = match (quality, width, height) {
            (Some(quality), None, None) => Ok(LayerChoice::Quality(quality)),
            (None, Some(width), Some(height))
                if in_bounds(width, MAX_SUBSCRIPTION_PIXELS)
                    && in_bounds(height, MAX_SUBSCRIPTION_PIXELS) =>
            {
                Ok(LayerChoice::Size { width, height })
            }
            (None, Some(_), Some(_)) => Err("`width` and `height` are 1 to 16384 pixels"),
            _ => Err("give either `quality` or both `width` and `height`"),
        };
        let max_fps = match fps {
            Some(fps) if !in_bounds(fps, MAX_SUBSCRIPTION_FPS) => {
                return Some(Err("`fps` is 1 to 240"));
            }
            fps => fps,
        };
        Some(choice.map(|choice| LayerRequest { choice, max_fps }))
    }
}

fn default_true() -> bool {
    true
}

/// One of a room's active speakers: `level` from 0 (silence) to 1 (the
/// loudest a client can report), smoothed by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpeakerInfo {
    pub participant_id: String,
    pub level: f32,
}

/// Messages the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ServerMessage {
    Joined {
        protocol_version: u32,
        room_id: String,
        participant_id: String,
        user_id: String,
        permissions: Permissions,
        /// Everyone else already in the room, with their tracks.
        participants: Vec<ParticipantInfo>,
        /// Seconds a broken participant keeps its place.
        reconnect_grace_seconds: u32,
    },
    /// The answer to the client's `publish` offer, with the tracks it created.
    PublishAnswer {
        sdp: String,
        tracks: Vec<TrackInfo>,
    },
    /// An offer on the subscriber connection; `tracks` maps its m-lines to room tracks.
    SubscriberOffer {
        sdp: String,
        tracks: Vec<TrackMid>,
    },
    Trickle {
        target: PeerTarget,
        candidate: IceCandidate,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant_id: String,
        reason: LeaveReason,
    },
    ParticipantStateChanged {
        participant_id: String,
        state: ParticipantState,
    },
    TrackPublished {
        track: TrackInfo,
    },
    TrackUnpublished {
        track_id: String,
        participant_id: String,
    },
    TrackMuted {
        track_id: String,
        participant_id: String,
        muted: bool,
    },
    /// Dynacast: the qualities of one of your video tracks that subscribers
    /// want (empty: nobody receives it). Encode only those layers.
    QualityUpdate {
        track_id: String,
        /// The track's m-line on your publisher connection.
        mid: String,
        qualities: Vec<VideoQuality>,
    },
    /// Who in the room is speaking, loudest first (empty: nobody), from
    /// the audio levels clients put in their RTP; sent when the order
    /// changes, at most every 300 ms.
    SpeakersChanged {
        speakers: Vec<SpeakerInfo>,
    },
    /// A subscribed video track paused or resumed because of your
    /// downlink (servers with downlink estimation): see [`StreamState`].
    StreamStateChanged {
        track_id: String,
        state: StreamState,
    },
    /// This connection's participant was removed from the room; the socket closes after.
    Left {
        reason: LeaveReason,
    },
    Pong {
        timestamp: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
        /// With `wrong_node`: the signaling WebSocket of the node that hosts
        /// the call's room, to join there with the same token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rtc_url: Option<String>,
    },
    /// A message type a newer server sends and this build does not know:
    /// clients ignore it (apps in the stores must survive new messages).
    /// The server never sends this variant itself.
    #[serde(other, skip_serializing)]
    Unknown,
}

impl ServerMessage {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> ServerMessage {
        ServerMessage::Error {
            code,
            message: message.into(),
            rtc_url: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_subscription_names_a_quality_or_a_size_within_bounds() {
        let request = |json: &str| {
            let message: ClientMessage = serde_json::from_str(json).unwrap();
            message.layer_request().unwrap()
        };
        let base = r#"{"type":"updateSubscription","trackId":"TR_1""#;
        assert_eq!(
            request(&format!(r#"{base},"quality":"low"}}"#)),
            Ok(LayerRequest {
                choice: LayerChoice::Quality(VideoQuality::Low),
                max_fps: None
            })
        );
        assert_eq!(
            request(&format!(r#"{base},"width":640,"height":360,"fps":15}}"#)),
            Ok(LayerRequest {
                choice: LayerChoice::Size {
                    width: 640,
                    height: 360
                },
                max_fps: Some(15)
            })
        );
        for bad in [
            r#"}"#,
            r#","quality":"low","width":640,"height":360}"#,
            r#","width":640}"#,
            r#","width":0,"height":360}"#,
            r#","width":16385,"height":360}"#,
            r#","quality":"high","fps":0}"#,
            r#","quality":"high","fps":241}"#,
        ] {
            assert!(request(&format!("{base}{bad}")).is_err(), "{bad}");
        }
    }

    /// `as_str` is the serde name of each code, and `ALL` names each once.
    #[test]
    fn every_error_code_is_listed_once_under_its_wire_name() {
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        assert!(!ErrorCode::ALL.contains(&ErrorCode::Unknown));
    }
}
