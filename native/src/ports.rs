//! The ports: what the core needs from the platform, as traits a thin
//! adapter implements. On iOS: CallKit + PushKit (`SystemCallUi`,
//! `PushTokens`), AVAudioSession (`AudioRoute`) and the platform's libwebrtc
//! (`MediaFactory` / `MediaSession`); on Android the same over Telecom's
//! ConnectionService and FCM; in bots, tests and the Python binding the
//! str0m media session (`str0m_media`). Each trait is exported with UniFFI
//! so Swift, Kotlin and Python can implement it.
//!
//! The inward half of each port (the system answered, ended, muted; the
//! audio session became active; the tokens changed; media connected) is a
//! method on `Client` or on `MediaEvents`.

use std::sync::Arc;

use tokio::sync::mpsc;

/// Why a call ended, as the system call UI shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum EndedReason {
    /// Hung up here, or the remote side hung up after talking.
    Completed,
    /// The other side ended the call before it connected (the caller
    /// cancelled a ringing call).
    RemoteEnded,
    AnsweredElsewhere,
    DeclinedElsewhere,
    Declined,
    Missed,
    Failed,
}

/// Outward half of CallKit / Telecom: what the core reports.
#[uniffi::export(with_foreign)]
pub trait SystemCallUi: Send + Sync {
    /// Show an incoming call (CallKit `reportNewIncomingCall`; Telecom
    /// `addNewIncomingCall`). Called exactly once per call.
    fn report_incoming_call(&self, call_id: String, caller: String, video: bool);
    /// An outgoing call the user started is ringing the callee.
    fn report_outgoing_call_started(&self, call_id: String);
    /// Media flows.
    fn report_call_connected(&self, call_id: String);
    /// The call is over (CallKit `reportCall(with:endedAt:reason:)`).
    fn report_call_ended(&self, call_id: String, reason: EndedReason);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum AudioRouteKind {
    Earpiece,
    Speaker,
}

/// Where call audio plays. The core picks the speaker for video calls and
/// the earpiece for voice (as phone apps do); the user may change it.
#[uniffi::export(with_foreign)]
pub trait AudioRoute: Send + Sync {
    fn set_route(&self, route: AudioRouteKind);
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
    fn current(&self) -> DevicePushTokens;
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

#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum MediaError {
    #[error("media: {message}")]
    Failed { message: String },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for MediaError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> MediaError {
        MediaError::Failed { message: e.reason }
    }
}

impl From<String> for MediaError {
    fn from(message: String) -> MediaError {
        MediaError::Failed { message }
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
    ) -> Result<Arc<dyn MediaSession>, MediaError>;
}

/// A call's media: the core drives the SDP exchange (it owns the signaling
/// connection), the session owns the peer connections and devices.
#[uniffi::export(with_foreign)]
pub trait MediaSession: Send + Sync {
    /// The publisher connection's offer (the first carries the local
    /// tracks; `ice_restart` after a network change).
    fn create_publisher_offer(&self, ice_restart: bool) -> Result<String, MediaError>;
    fn apply_publisher_answer(&self, sdp: String) -> Result<(), MediaError>;
    /// Applies the server's subscriber offer and returns the answer.
    fn answer_subscriber_offer(&self, sdp: String) -> Result<String, MediaError>;
    fn add_remote_candidate(
        &self,
        connection: PeerConnection,
        candidate: String,
    ) -> Result<(), MediaError>;
    fn set_muted(&self, muted: bool);
    fn set_camera_enabled(&self, enabled: bool);
    fn stats(&self) -> MediaStats;
    /// Closes both connections and releases the devices.
    fn close(&self);
}

/// What a media session tells the core (the inward half of the media port):
/// connection state and trickled local candidates.
#[derive(Debug, uniffi::Object)]
pub struct MediaEvents {
    to_session: mpsc::UnboundedSender<MediaEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    Connected,
    Failed,
    LocalCandidate {
        connection: PeerConnection,
        candidate: String,
    },
}

impl MediaEvents {
    pub fn new(to_session: mpsc::UnboundedSender<MediaEvent>) -> Arc<MediaEvents> {
        Arc::new(MediaEvents { to_session })
    }
}

#[uniffi::export]
impl MediaEvents {
    /// Both peer connections are connected (ICE + DTLS).
    pub fn connected(&self) {
        let _ = self.to_session.send(MediaEvent::Connected);
    }

    /// A connection failed for good (ICE `failed`).
    pub fn failed(&self) {
        let _ = self.to_session.send(MediaEvent::Failed);
    }

    /// A local ICE candidate to trickle (`candidate:...` line).
    pub fn local_candidate(&self, connection: PeerConnection, candidate: String) {
        let _ = self.to_session.send(MediaEvent::LocalCandidate {
            connection,
            candidate,
        });
    }
}
