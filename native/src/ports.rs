//! The ports: what the core needs from the platform, as traits a thin
//! adapter implements. On iOS: CallKit + PushKit (`SystemCallUi`,
//! `PushTokens`), AVAudioSession (`AudioRoutes`) and the platform's libwebrtc
//! (`MediaFactory` / `MediaSession`); on Android the same over Core-Telecom
//! and FCM; both ask the app for user tokens (`Credentials`) and tell its
//! UI what happens in a call (`CallEvents`); in bots, tests and the Python binding the
//! str0m media session (`str0m_media`). Each trait is exported with UniFFI
//! so Swift, Kotlin and Python can implement it.
//!
//! The inward half of each port (the system answered, ended, muted; the
//! audio session became active; the tokens changed; media connected) is a
//! method on `Client` or on `MediaEvents`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// What a port reports when the platform could not do what was asked
/// (a Swift or Kotlin exception arrives as this; the core logs it and goes
/// on: a failing port never stops the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum PortError {
    // `detail`, not `message`: Kotlin exceptions have a `message` of their
    // own, and a field of that name does not compile in the bindings.
    #[error("port: {detail}")]
    Failed { detail: String },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for PortError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> PortError {
        PortError::Failed { detail: e.reason }
    }
}

impl From<String> for PortError {
    fn from(detail: String) -> PortError {
        PortError::Failed { detail }
    }
}

/// Why a call ended, as the system call UI needs to know it. The mapping to
/// CallKit and Core-Telecom is [`callkit_ended_reason`] and
/// [`telecom_disconnect_cause`] (the table in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum EndedReason {
    /// The user hung up on this device.
    LocalEnded,
    /// The user declined the ringing call on this device.
    Declined,
    /// The other side hung up (or, calling out, declined or was busy).
    RemoteEnded,
    /// The caller gave up before this device answered.
    CallerCancelled,
    /// Nobody answered before the ring timed out.
    Unanswered,
    AnsweredElsewhere,
    DeclinedElsewhere,
    /// It could not connect (no media, refused, timed out connecting).
    Failed,
}

/// CallKit's `CXCallEndedReason` (raw values as in CallKit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum CallKitEndedReason {
    Failed = 1,
    RemoteEnded = 2,
    Unanswered = 3,
    AnsweredElsewhere = 4,
    DeclinedElsewhere = 5,
}

/// The causes Core-Telecom's `CallControlScope.disconnect` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum TelecomDisconnectCause {
    Local,
    Remote,
    Rejected,
    Missed,
}

/// How the iOS adapter reports an end to CallKit: `None` when the user ended
/// it on this device (the adapter fulfils the `CXEndCallAction` instead of
/// reporting).
#[uniffi::export]
pub fn callkit_ended_reason(reason: EndedReason) -> Option<CallKitEndedReason> {
    match reason {
        EndedReason::LocalEnded | EndedReason::Declined => None,
        EndedReason::RemoteEnded | EndedReason::CallerCancelled => {
            Some(CallKitEndedReason::RemoteEnded)
        }
        EndedReason::Unanswered => Some(CallKitEndedReason::Unanswered),
        EndedReason::AnsweredElsewhere => Some(CallKitEndedReason::AnsweredElsewhere),
        EndedReason::DeclinedElsewhere => Some(CallKitEndedReason::DeclinedElsewhere),
        EndedReason::Failed => Some(CallKitEndedReason::Failed),
    }
}

/// How the Android adapter disconnects a Core-Telecom call. A call the
/// caller gave up on is `Missed` (Android logs a missed call); one answered
/// on another device is `Remote` (not missed: the user took it).
#[uniffi::export]
pub fn telecom_disconnect_cause(reason: EndedReason) -> TelecomDisconnectCause {
    match reason {
        EndedReason::LocalEnded | EndedReason::Failed => TelecomDisconnectCause::Local,
        EndedReason::Declined | EndedReason::DeclinedElsewhere => TelecomDisconnectCause::Rejected,
        EndedReason::RemoteEnded | EndedReason::AnsweredElsewhere => TelecomDisconnectCause::Remote,
        EndedReason::CallerCancelled | EndedReason::Unanswered => TelecomDisconnectCause::Missed,
    }
}

/// An incoming call as the system call UI shows it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct IncomingCall {
    /// CallKit's `UUID` / the Telecom call's id: the server's call id when
    /// it is a UUID (it is, from switchboard), lower-case.
    pub call_uuid: String,
    pub call_id: String,
    /// The caller's display name, else their user id.
    pub caller_name: String,
    /// The caller's user id (`CXHandle` / the Telecom address).
    pub handle: String,
    pub video: bool,
    pub avatar_url: Option<String>,
}

/// Outward half of CallKit / Telecom: what the core reports. Calls are
/// named by `call_uuid` (for an outgoing call, the UUID the app gave).
#[uniffi::export(with_foreign)]
pub trait SystemCallUi: Send + Sync {
    /// Show an incoming call that arrived over the events socket (CallKit
    /// `reportNewIncomingCall`; Telecom `addCall`). Pushes are reported by
    /// the platform itself from `Client::handle_push`'s decision; a call is
    /// never reported twice. The platform calls
    /// `Client::incoming_call_displayed` (or `incoming_call_failed`) after.
    fn report_incoming_call(&self, call: IncomingCall) -> Result<(), PortError>;
    /// An outgoing call the user started is ringing the callee.
    fn report_outgoing_call_started(
        &self,
        call_uuid: String,
        call_id: String,
    ) -> Result<(), PortError>;
    /// Media flows.
    fn report_call_connected(&self, call_uuid: String) -> Result<(), PortError>;
    /// The call is over (CallKit `reportCall(with:endedAt:reason:)` with
    /// [`callkit_ended_reason`]; Telecom `disconnect` with
    /// [`telecom_disconnect_cause`]).
    fn report_call_ended(&self, call_uuid: String, reason: EndedReason) -> Result<(), PortError>;
}

/// What kind of audio endpoint (CallKit / AVAudioSession port types;
/// Core-Telecom's `CallEndpointCompat` types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum AudioRouteKind {
    Earpiece,
    Speaker,
    WiredHeadset,
    Bluetooth,
    /// Car audio, a hearing aid, a streaming endpoint: kept as the user or
    /// the system chose it.
    Other,
}

impl AudioRouteKind {
    /// Worn or plugged in by the user: never overridden by a default.
    pub fn is_headset(self) -> bool {
        matches!(
            self,
            AudioRouteKind::WiredHeadset | AudioRouteKind::Bluetooth
        )
    }
}

/// One place call audio can play (`AVAudioSessionPortDescription`;
/// `CallEndpointCompat`).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct AudioEndpoint {
    /// The platform's id for it (a port UID; the endpoint's identifier).
    pub id: String,
    pub kind: AudioRouteKind,
    /// What the user sees ("AirPods Pro", "Speaker").
    pub name: String,
}

/// Where a call is, as the app's UI shows it (`Client::active_calls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ActiveCallState {
    /// Incoming, shown by the system, waiting for the user.
    Ringing,
    /// We called; the callee's devices ring (or the server is creating it).
    Outgoing,
    /// Answered or picked up: media is being set up.
    Connecting,
    Connected,
    /// Was connected; media is being restored.
    Reconnecting,
}

/// One call this device is in, for an app that starts (or its UI loads)
/// while a call rings or runs: a cold start from a push, a WebView reload.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ActiveCall {
    pub call_uuid: String,
    /// The server's id; `None` while an outgoing call is being created.
    pub call_id: Option<String>,
    /// The caller of an incoming call, the callee of an outgoing one.
    pub remote_user_id: String,
    pub outgoing: bool,
    pub video: bool,
    pub state: ActiveCallState,
    pub muted: bool,
    pub held: bool,
}

/// The endpoints the platform offers now, and the one in use.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct AudioRouteState {
    pub endpoints: Vec<AudioEndpoint>,
    pub current_id: Option<String>,
}

/// Where call audio plays. The platform reports its endpoints whenever
/// they change (`Client::audio_routes_changed`: AVAudioSession's route
/// change notification; Core-Telecom's `availableEndpoints` and
/// `currentCallEndpoint` flows); the core picks each call's default once
/// (a connected headset first, else the speaker for video and the earpiece
/// for voice) and carries out the user's choice (`Client::select_audio_route`).
#[uniffi::export(with_foreign)]
pub trait AudioRoutes: Send + Sync {
    /// Route call audio to this endpoint (iOS: `overrideOutputAudioPort` or
    /// `setPreferredInput`; Android: `requestEndpointChange`).
    fn select_route(&self, endpoint_id: String) -> Result<(), PortError>;
}

/// Asks the app for a fresh user token (its backend issues them; the core
/// never sees the app's own credentials). Called when the server answers
/// 401 and before the current token expires; the app answers, from any
/// thread, with `Client::set_user_token` or `Client::user_token_failed`.
#[uniffi::export(with_foreign)]
pub trait Credentials: Send + Sync {
    fn refresh_user_token(&self) -> Result<(), PortError>;
}

/// A remote participant's track as the app renders it: the subscriber
/// connection's transceiver `mid` carries it (libwebrtc's `onTrack` names
/// the same mid).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct RemoteTrack {
    pub track_id: String,
    pub participant_id: String,
    pub user_id: String,
    pub video: bool,
    pub mid: String,
    pub muted: bool,
}

/// One of a call's active speakers (`CallEvents::active_speakers_changed`):
/// level from 0 (silence) to 1.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ActiveSpeaker {
    pub participant_id: String,
    /// The participant's user, when the core knows it (not for this
    /// device's own participant).
    pub user_id: Option<String>,
    pub level: f32,
}

/// A member's message on the call's data channels
/// (`CallEvents::data_received`; signaling PROTOCOL.md "Data channels").
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DataMessage {
    /// The sender's participant id, as the server attached it.
    pub from: String,
    /// The sender's user, when the core knows it.
    pub user_id: Option<String>,
    pub payload: String,
    /// Arrived on the reliable channel (else the lossy one).
    pub reliable: bool,
}

/// What happens inside a call that the app's own UI shows (video tiles,
/// a "reconnecting" banner; the plugin's `remoteTrack` event).
#[uniffi::export(with_foreign)]
pub trait CallEvents: Send + Sync {
    fn remote_track_added(&self, call_uuid: String, track: RemoteTrack) -> Result<(), PortError>;
    fn remote_track_removed(&self, call_uuid: String, track_id: String) -> Result<(), PortError>;
    fn remote_track_muted(
        &self,
        call_uuid: String,
        track_id: String,
        muted: bool,
    ) -> Result<(), PortError>;
    /// The server stopped forwarding a remote video track because this
    /// device's downlink cannot carry it (`paused`), or started again:
    /// show a placeholder meanwhile, not the frozen frame.
    fn remote_track_paused(
        &self,
        call_uuid: String,
        track_id: String,
        paused: bool,
    ) -> Result<(), PortError>;
    /// A connected call lost its media path or signaling; the core is
    /// resuming it (the call is not over).
    fn call_reconnecting(&self, call_uuid: String) -> Result<(), PortError>;
    fn call_reconnected(&self, call_uuid: String) -> Result<(), PortError>;
    /// The server's feature flags for this device changed (the plugin's
    /// `flagsChanged`): the app hides what is off (no video button with
    /// `video_calls` off). First called when the server first tells them.
    fn flags_changed(&self, flags: HashMap<String, bool>) -> Result<(), PortError>;
    /// Who in the call is speaking, loudest first (empty: nobody); at
    /// most every 300 ms, when the order changes (the plugin's
    /// `activeSpeakers`).
    fn active_speakers_changed(
        &self,
        call_uuid: String,
        speakers: Vec<ActiveSpeaker>,
    ) -> Result<(), PortError>;
    /// Another member's message on the call's data channels (the plugin's
    /// `dataReceived`).
    fn data_received(&self, call_uuid: String, message: DataMessage) -> Result<(), PortError>;
}

/// The device's push tokens as the platform last gave them (PushKit's VoIP
/// token and the alert token on iOS; the FCM token on Android).
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct DevicePushTokens {
    pub apns_voip: Option<String>,
    pub apns_alert: Option<String>,
    pub fcm: Option<String>,
}

/// The core reads the tokens whenever it registers the device (at start,
/// and after `Client::push_tokens_changed`).
#[uniffi::export(with_foreign)]
pub trait PushTokens: Send + Sync {
    fn current(&self) -> Result<DevicePushTokens, PortError>;
}

/// One of a call's two peer connections (signaling protocol v1: the device
/// offers on the publisher, the server offers on the subscriber).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum PeerConnection {
    Publisher,
    Subscriber,
}

/// One `RTCIceServer`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, uniffi::Record)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub credential: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct MediaStats {
    /// Both peer connections are up.
    pub connected: bool,
    pub packets_sent: u64,
    pub packets_received: u64,
    /// Remote tracks media arrived on.
    pub remote_tracks: u32,
}

/// One of the camera's simulcast encodings, lowest first, as the server's
/// `qualityUpdate` names them (signaling/PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum VideoLayer {
    Low,
    Medium,
    High,
}

impl From<signaling::VideoQuality> for VideoLayer {
    fn from(quality: signaling::VideoQuality) -> VideoLayer {
        match quality {
            signaling::VideoQuality::Low => VideoLayer::Low,
            signaling::VideoQuality::Medium => VideoLayer::Medium,
            signaling::VideoQuality::High => VideoLayer::High,
        }
    }
}

impl From<VideoLayer> for signaling::VideoQuality {
    fn from(layer: VideoLayer) -> signaling::VideoQuality {
        match layer {
            VideoLayer::Low => signaling::VideoQuality::Low,
            VideoLayer::Medium => signaling::VideoQuality::Medium,
            VideoLayer::High => signaling::VideoQuality::High,
        }
    }
}

/// Makes a call's media session: on phones the platform's libwebrtc with
/// two `RTCPeerConnection`s and the microphone / camera tracks.
#[uniffi::export(with_foreign)]
pub trait MediaFactory: Send + Sync {
    fn create_session(
        &self,
        call_id: String,
        video: bool,
        ice_servers: Vec<IceServer>,
        events: Arc<MediaEvents>,
    ) -> Result<Arc<dyn MediaSession>, PortError>;
}

/// A call's media: the core drives the SDP exchange (it owns the signaling
/// connection), the session owns the peer connections and devices.
#[uniffi::export(with_foreign)]
pub trait MediaSession: Send + Sync {
    /// The publisher connection's offer (the first carries the local
    /// tracks; `ice_restart` after a network change).
    fn create_publisher_offer(&self, ice_restart: bool) -> Result<String, PortError>;
    fn apply_publisher_answer(&self, sdp: String) -> Result<(), PortError>;
    /// Applies the server's subscriber offer and returns the answer.
    fn answer_subscriber_offer(&self, sdp: String) -> Result<String, PortError>;
    fn add_remote_candidate(
        &self,
        connection: PeerConnection,
        candidate: String,
    ) -> Result<(), PortError>;
    fn set_muted(&self, muted: bool) -> Result<(), PortError>;
    /// On hold: no microphone and no playout (the call keeps its
    /// connections); off hold the core restores the user's mute state.
    fn set_held(&self, held: bool) -> Result<(), PortError>;
    fn set_camera_enabled(&self, enabled: bool) -> Result<(), PortError>;
    /// Dynacast: only these of the camera's encodings are received by
    /// anyone; the others are turned off (`RTCRtpEncodingParameters`
    /// `active`), and none pauses the camera's sending. The phone adapters
    /// publish video in three encodings (simulcast: a quarter, half and
    /// full size, as the web client does); a layer turned back on starts
    /// with a keyframe (libwebrtc sends one).
    fn set_video_layers(&self, layers: Vec<VideoLayer>) -> Result<(), PortError>;
    /// Writes `frame` (text) on the subscriber connection's data channel
    /// the server opened: `switchboard` when `reliable`, else
    /// `switchboard-lossy`. Fails when that channel is not open.
    fn send_data(&self, reliable: bool, frame: String) -> Result<(), PortError>;
    fn stats(&self) -> Result<MediaStats, PortError>;
    /// Closes both connections and releases the devices.
    // Not `close`: Kotlin objects are `AutoCloseable`, whose `close()` the
    // bindings already define.
    fn end_session(&self) -> Result<(), PortError>;
}

/// What a media session tells the core (the inward half of the media port):
/// connection state and trickled local candidates.
#[derive(Debug, uniffi::Object)]
pub struct MediaEvents {
    to_session: mpsc::UnboundedSender<MediaEvent>,
    inbound: std::sync::Mutex<InboundWatch>,
}

/// Cumulative inbound totals from the platform's WebRTC stats of the
/// subscriber connection: its `inbound-rtp` entries summed (jitter: the
/// largest), and the nominated candidate pair's round-trip time.
#[derive(Debug, Clone, Copy, Default, PartialEq, uniffi::Record)]
pub struct InboundStats {
    /// Audio `totalSamplesReceived`: above 0 once audio has decoded.
    pub audio_samples_received: u64,
    /// Video `framesDecoded`.
    pub video_frames_decoded: u64,
    /// Whether any video is subscribed (a video `inbound-rtp` exists).
    pub video_inbound: bool,
    pub packets_lost: i64,
    pub packets_received: u64,
    pub jitter_ms: f64,
    pub rtt_ms: Option<f64>,
}

/// Stats are read this often while the first audio and video are awaited...
pub const FIRST_MEDIA_POLL: Duration = Duration::from_millis(250);
/// ...for at most this long after the session starts...
pub const FIRST_MEDIA_WATCH: Duration = Duration::from_secs(30);
/// ...and then this often, for quality reports.
pub const QUALITY_EVERY: Duration = Duration::from_secs(10);

/// What [`MediaEvents::inbound_stats`] remembers between reads.
#[derive(Debug)]
struct InboundWatch {
    started: Instant,
    first_audio: bool,
    first_video: bool,
    /// Totals at the last quality report.
    lost: i64,
    received: u64,
}

impl InboundWatch {
    /// The first-media and quality events one read of the totals gives,
    /// and how long until the next read.
    fn read(&mut self, stats: &InboundStats, now: Instant) -> (Vec<MediaEvent>, Duration) {
        let mut events = Vec::new();
        if stats.audio_samples_received > 0 && !self.first_audio {
            self.first_audio = true;
            events.push(MediaEvent::FirstMedia { video: false });
        }
        if stats.video_frames_decoded > 0 && !self.first_video {
            self.first_video = true;
            events.push(MediaEvent::FirstMedia { video: true });
        }
        let awaiting = !self.first_audio || (stats.video_inbound && !self.first_video);
        if awaiting && now.duration_since(self.started) < FIRST_MEDIA_WATCH {
            return (events, FIRST_MEDIA_POLL);
        }
        let lost = stats.packets_lost.saturating_sub(self.lost).max(0) as f64;
        let received = stats.packets_received.saturating_sub(self.received) as f64;
        self.lost = stats.packets_lost;
        self.received = stats.packets_received;
        if lost + received > 0.0 {
            events.push(MediaEvent::Quality(crate::call_engine::Quality {
                loss_ratio: lost / (lost + received),
                jitter_ms: stats.jitter_ms,
                rtt_ms: stats.rtt_ms,
            }));
        }
        (events, QUALITY_EVERY)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    Connected,
    /// The first remote audio (`video` false) or video frame was decoded.
    FirstMedia {
        video: bool,
    },
    Quality(crate::call_engine::Quality),
    /// Lost for now (ICE `disconnected`): it may come back by itself.
    Disconnected,
    Failed,
    LocalCandidate {
        connection: PeerConnection,
        candidate: String,
    },
    /// A text message on one of the server's data channels.
    Data {
        reliable: bool,
        frame: String,
    },
}

impl MediaEvents {
    pub fn new(to_session: mpsc::UnboundedSender<MediaEvent>) -> Arc<MediaEvents> {
        Arc::new(MediaEvents {
            to_session,
            inbound: std::sync::Mutex::new(InboundWatch {
                started: Instant::now(),
                first_audio: false,
                first_video: false,
                lost: 0,
                received: 0,
            }),
        })
    }
}

#[uniffi::export]
impl MediaEvents {
    /// Both peer connections are connected (ICE + DTLS).
    pub fn connected(&self) {
        let _ = self.to_session.send(MediaEvent::Connected);
    }

    /// A connection lost its path for now (ICE `disconnected`): the app
    /// shows the call reconnecting; `connected` follows when it is back.
    pub fn disconnected(&self) {
        let _ = self.to_session.send(MediaEvent::Disconnected);
    }

    /// A connection failed for good (ICE `failed`).
    pub fn failed(&self) {
        let _ = self.to_session.send(MediaEvent::Failed);
    }

    /// The subscriber connection's inbound totals (WebRTC `getStats`).
    /// The core tells the server the first decoded audio and video and,
    /// every 10 s, the loss, jitter and round-trip time since the last
    /// report. Returns the milliseconds until the platform should read
    /// its stats again: 250 while the first media is awaited, then 10,000.
    pub fn inbound_stats(&self, stats: InboundStats) -> u32 {
        let Ok(mut watch) = self.inbound.lock() else {
            return QUALITY_EVERY.as_millis() as u32;
        };
        let (events, next) = watch.read(&stats, Instant::now());
        for event in events {
            let _ = self.to_session.send(event);
        }
        next.as_millis() as u32
    }

    /// The first remote audio frame was decoded (time to first audio).
    /// Once per call is enough; later calls are ignored.
    pub fn first_audio(&self) {
        let _ = self
            .to_session
            .send(MediaEvent::FirstMedia { video: false });
    }

    /// The first remote video frame was decoded.
    pub fn first_video(&self) {
        let _ = self.to_session.send(MediaEvent::FirstMedia { video: true });
    }

    /// Inbound media since the last call, from the platform's WebRTC stats
    /// (every 10 s in a call): packets lost / expected, jitter and the
    /// round-trip time (`None` when the stats have none yet).
    pub fn quality(&self, loss_ratio: f64, jitter_ms: f64, rtt_ms: Option<f64>) {
        let _ = self
            .to_session
            .send(MediaEvent::Quality(crate::call_engine::Quality {
                loss_ratio,
                jitter_ms,
                rtt_ms,
            }));
    }

    /// A text message arrived on a data channel of the subscriber
    /// connection: `label` `switchboard` or `switchboard-lossy` (others
    /// are ignored). The core reads it and tells `CallEvents::data_received`.
    pub fn data_received(&self, label: String, frame: String) {
        let reliable = match label.as_str() {
            signaling::DATA_CHANNEL_RELIABLE => true,
            signaling::DATA_CHANNEL_LOSSY => false,
            _ => return,
        };
        let _ = self.to_session.send(MediaEvent::Data { reliable, frame });
    }

    /// A local ICE candidate to trickle (`candidate:...` line).
    pub fn local_candidate(&self, connection: PeerConnection, candidate: String) {
        let _ = self.to_session.send(MediaEvent::LocalCandidate {
            connection,
            candidate,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(started: Instant) -> InboundWatch {
        InboundWatch {
            started,
            first_audio: false,
            first_video: false,
            lost: 0,
            received: 0,
        }
    }

    #[test]
    fn totals_become_first_media_once_then_quality_since_the_last_report() {
        let t0 = Instant::now();
        let mut w = watch(t0);
        let mut stats = InboundStats {
            video_inbound: true,
            ..Default::default()
        };
        assert_eq!(w.read(&stats, t0), (vec![], FIRST_MEDIA_POLL));
        stats.audio_samples_received = 960;
        stats.packets_received = 50;
        let (events, next) = w.read(&stats, t0 + Duration::from_millis(250));
        assert_eq!(events, [MediaEvent::FirstMedia { video: false }]);
        assert_eq!(next, FIRST_MEDIA_POLL, "video is still awaited");
        stats.video_frames_decoded = 3;
        stats.packets_received = 100;
        let (events, next) = w.read(&stats, t0 + Duration::from_millis(500));
        assert_eq!(events[0], MediaEvent::FirstMedia { video: true });
        assert_eq!(next, QUALITY_EVERY);
        // 10 s later: 20 lost of 400 more.
        stats.packets_received = 480;
        stats.packets_lost = 20;
        stats.jitter_ms = 12.0;
        stats.rtt_ms = Some(45.0);
        let (events, _) = w.read(&stats, t0 + Duration::from_secs(11));
        let MediaEvent::Quality(q) = events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(events.len(), 1, "first media only once");
        assert!((q.loss_ratio - 20.0 / 400.0).abs() < 1e-9, "{q:?}");
        assert_eq!((q.jitter_ms, q.rtt_ms), (12.0, Some(45.0)));
    }

    #[test]
    fn video_that_never_decodes_stops_the_fast_reads_after_the_watch() {
        let t0 = Instant::now();
        let mut w = watch(t0);
        let stats = InboundStats {
            audio_samples_received: 1,
            video_inbound: true,
            ..Default::default()
        };
        assert_eq!(w.read(&stats, t0).1, FIRST_MEDIA_POLL);
        assert_eq!(w.read(&stats, t0 + FIRST_MEDIA_WATCH).1, QUALITY_EVERY);
    }
}
