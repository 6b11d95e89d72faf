//! The call engine: one device's calls as a sans-IO state machine. Inputs
//! are what happened (a push or ring arrived, the user or the system UI
//! acted, the API or the media answered, time passed); outputs are what the
//! platform layer must do through its ports: report to the system call UI
//! (CallKit / Telecom), call the API, drive the media session. Time is an
//! input, so every rule is tested with a fake clock.
//!
//! Calls are keyed by their UUID, the name CallKit and Telecom know them by:
//! an incoming call's is its server call id (a UUID), an outgoing call's the
//! one the app chose before the server answered. API requests and media
//! carry the server's call id.
//!
//! Rules it enforces:
//! - every push gets a decision at once (`on_push`), and a call is reported
//!   to the system UI once: a duplicate push of a call still ringing gets
//!   the same UUID again (never a second call), a late push of a call over
//!   here is reported and ended with the reason it ended;
//! - a stale or expired ring is still reported and then ended at once
//!   (Apple requires every VoIP push to reach CallKit);
//! - the server hears "call UI shown" (`ack`) only once the system
//!   confirmed it (`IncomingCallDisplayed`); a refusal by the system
//!   (`IncomingCallFailed`: Do Not Disturb, blocked) ends the call here
//!   without declining it, so the user's other devices keep ringing;
//! - an answer before the signaling connection is up is queued until it is;
//! - media starts only once the call is accepted *and* the audio session is
//!   active;
//! - hold is not mute: held, the microphone and playout stop; unheld, the
//!   user's own mute state comes back;
//! - a cancel for a ringing call ends the system UI with the matching reason.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

pub use crate::ports::{
    ActiveCall, ActiveCallState, AudioRouteKind, AudioRouteState, EndedReason, IncomingCall,
};
use crate::push::{self, Push, PushDecision, RingPush, Unreadable};
pub use crate::remote_tracks::TrackChange;

/// Unix milliseconds (pushes carry wall-clock deadlines).
pub type UnixMillis = u64;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// From accepted to media connected, at most.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// An outgoing call rings the callee first (the server ends it when its
/// ring times out, 40 s by default); this is only the local backstop.
pub const OUTGOING_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    pub call_id: String,
    pub from_user_id: String,
    pub video: bool,
    pub ring_epoch: u64,
    pub expires_at: UnixMillis,
    pub caller_display_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A ring over the events WebSocket (pushes go through `on_push`).
    Ring(Ring),
    /// `call.cancelled` (socket or push) with the server's reason.
    Cancelled {
        call_id: String,
        reason: String,
    },
    /// `call.accepted`: the callee answered an outgoing call.
    RemoteAccepted {
        call_id: String,
    },
    /// `call.ended` for a call in progress.
    RemoteEnded {
        call_id: String,
    },
    /// The user starts a call: from the app (`call_uuid` the app chose, so
    /// CallKit knows it before the server answers) or from the system
    /// (Recents, Siri, a car: `CXStartCallAction`'s UUID).
    StartCall {
        call_uuid: String,
        callee_user_id: String,
        video: bool,
    },
    /// The API refused to create the outgoing call.
    CreateFailed {
        call_uuid: String,
    },
    /// The API created the outgoing call. `answered`: the callee is in it
    /// already: a crossed call (they were calling us; the server made our
    /// call the answer to theirs).
    Created {
        call_uuid: String,
        call_id: String,
        call_token: String,
        answered: bool,
    },
    /// The API answered an accept: a call token, or refused (answered
    /// elsewhere, ended).
    Accepted {
        call_id: String,
        call_token: String,
    },
    AcceptRefused {
        call_id: String,
        reason: String,
    },
    /// The system showed the incoming call (CallKit's report completed
    /// without error; Telecom added it).
    IncomingCallDisplayed {
        call_uuid: String,
    },
    /// The system refused to show it (Do Not Disturb, a blocked caller,
    /// too many calls): it ends here only.
    IncomingCallFailed {
        call_uuid: String,
        reason: String,
    },
    /// The system call UI failed at something that does not end the call
    /// (Telecom refused to add it and a notification rings instead).
    SystemUiError {
        call_uuid: String,
        code: String,
    },
    /// The system UI's actions (CallKit / Telecom).
    SystemAnswer {
        call_uuid: String,
    },
    SystemEnd {
        call_uuid: String,
    },
    SystemMute {
        call_uuid: String,
        muted: bool,
    },
    /// On hold (another call took the audio session).
    SystemHold {
        call_uuid: String,
        held: bool,
    },
    /// CallKit `providerDidReset`: the system dropped every call.
    SystemReset,
    AudioSessionActivated,
    AudioSessionDeactivated,
    SignalingConnected,
    SignalingDisconnected,
    MediaConnected {
        call_id: String,
    },
    MediaFailed {
        call_id: String,
    },
    /// The platform could not make a media session (no microphone, ...).
    MediaUnavailable {
        call_id: String,
    },
    /// The first audio (`video` false) or video frame of the call was
    /// decoded on this device.
    FirstMedia {
        call_id: String,
        video: bool,
    },
    /// The platform's periodic view of inbound media (WebRTC stats).
    MediaQuality {
        call_id: String,
        quality: Quality,
    },
    /// A fresh call token to rejoin with (after a failure or a long drop).
    FreshToken {
        call_id: String,
        call_token: String,
    },
    /// The media path or the call's signaling broke; it is being resumed.
    MediaReconnecting {
        call_id: String,
    },
    /// The call's remote tracks changed (`remote_tracks`).
    RemoteTrack {
        call_id: String,
        change: TrackChange,
    },
    /// The platform's audio endpoints changed (or were first reported).
    AudioRoutesChanged(AudioRouteState),
    /// The user picked an audio endpoint.
    SelectAudioRoute {
        endpoint_id: String,
    },
    /// The server's feature flags for this device (registration, the
    /// events socket's `authenticated` and `flags` messages).
    Flags(Flags),
    /// The call's active speakers changed (`speakersChanged`).
    ActiveSpeakers {
        call_id: String,
        speakers: Vec<crate::ports::ActiveSpeaker>,
    },
    /// Another member's message on the call's data channels.
    Data {
        call_id: String,
        message: crate::ports::DataMessage,
    },
}

/// Feature flags by name, as the server decided them for this device.
pub type Flags = std::collections::HashMap<String, bool>;

/// Inbound media since the last quality report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    pub loss_ratio: f64,
    pub jitter_ms: f64,
    pub rtt_ms: Option<f64>,
}

/// What this device tells the server about a call, for operations only
/// (the server never takes call state from it). Durations are measured on
/// the engine's monotonic clock: phone wall clocks drift.
#[derive(Debug, Clone, PartialEq)]
pub enum CallReport {
    /// Time to first audio: from accept (the user's tap here, or the
    /// callee answering our call) to the first decoded audio frame.
    FirstAudio {
        after_accept_ms: u64,
    },
    FirstVideo {
        after_accept_ms: u64,
    },
    /// The user answered on the system UI this long after it appeared.
    AnsweredOnDevice {
        after_ui_shown_ms: u64,
    },
    /// The system call UI (CallKit / Telecom) refused the call.
    SystemUiError {
        code: String,
    },
    MediaFailed {
        reason: &'static str,
    },
    Quality(Quality),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    // SystemCallUi, outward.
    ReportIncoming {
        call: IncomingCall,
    },
    ReportOutgoingStarted {
        call_uuid: String,
        call_id: String,
    },
    ReportConnected {
        call_uuid: String,
    },
    ReportEnded {
        call_uuid: String,
        /// The server's id, when the call got one.
        call_id: Option<String>,
        reason: EndedReason,
    },
    // CallEvents.
    ReportReconnecting {
        call_uuid: String,
    },
    ReportReconnected {
        call_uuid: String,
    },
    ReportRemoteTrack {
        call_uuid: String,
        change: TrackChange,
    },
    /// The device's flags changed (`CallEvents::flags_changed`).
    FlagsChanged {
        flags: Flags,
    },
    ReportActiveSpeakers {
        call_uuid: String,
        speakers: Vec<crate::ports::ActiveSpeaker>,
    },
    ReportData {
        call_uuid: String,
        message: crate::ports::DataMessage,
    },
    // The call API.
    CreateCall {
        call_uuid: String,
        callee_user_id: String,
        video: bool,
    },
    Ack {
        call_id: String,
    },
    Accept {
        call_id: String,
    },
    Decline {
        call_id: String,
    },
    End {
        call_id: String,
    },
    RequestFreshToken {
        call_id: String,
    },
    /// Telemetry for the server (`POST /v1/calls/{id}/reports`).
    Report {
        call_id: String,
        report: CallReport,
    },
    // MediaSession.
    JoinMedia {
        call_id: String,
        call_token: String,
        video: bool,
    },
    RestartIce {
        call_id: String,
    },
    SetMuted {
        call_id: String,
        muted: bool,
    },
    SetHeld {
        call_id: String,
        held: bool,
    },
    LeaveMedia {
        call_id: String,
    },
    // AudioRoutes.
    SelectAudioRoute {
        endpoint_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Outgoing: the API has not named the call yet.
    Creating,
    /// Reported to the system UI, waiting for the user.
    Ringing,
    /// The user answered; the accept goes out once signaling is up.
    Answering {
        sent: bool,
    },
    /// Accepted (or created): joining media; `token` once known.
    Connecting {
        token: Option<String>,
        joined: bool,
        deadline: Duration,
    },
    Connected,
}

#[derive(Debug, Clone)]
struct Call {
    /// The server's id; `None` while an outgoing call is being created.
    call_id: Option<String>,
    /// The caller (incoming) or the callee (outgoing).
    remote_user_id: String,
    outgoing: bool,
    phase: Phase,
    ring_epoch: Option<u64>,
    video: bool,
    /// The system confirmed it shows this incoming call (and the server
    /// was told).
    displayed: bool,
    /// Outgoing, and the callee has not answered: the call connects when
    /// they do, even if media to the SFU is up before.
    awaiting_answer: bool,
    media_up: bool,
    /// Connected once: a later loss of media is a reconnection, not a
    /// first connection.
    was_connected: bool,
    /// Told the app it is reconnecting.
    reconnecting: bool,
    /// Its default audio route was chosen (once per call, when it joined
    /// media and the platform's endpoints were known), or the user chose.
    audio_routed: bool,
    /// The user's mute, kept across hold.
    muted: bool,
    held: bool,
    /// When the system showed the incoming call UI.
    ui_shown_at: Option<Duration>,
    /// When the call was accepted: the user's tap (incoming), the callee's
    /// answer (outgoing). Time to first media counts from here.
    accepted_at: Option<Duration>,
    first_audio: FirstMedia,
    first_video: FirstMedia,
}

/// When one kind of media first played, and whether that was reported.
#[derive(Debug, Clone, Copy, Default)]
struct FirstMedia {
    at: Option<Duration>,
    reported: bool,
}

impl Call {
    fn incoming(ring: &Ring) -> Call {
        let mut call = Call::new(Some(ring.call_id.clone()), Phase::Ringing, ring.video);
        call.remote_user_id = ring.from_user_id.clone();
        call.ring_epoch = Some(ring.ring_epoch);
        call
    }

    fn new(call_id: Option<String>, phase: Phase, video: bool) -> Call {
        Call {
            call_id,
            remote_user_id: String::new(),
            outgoing: false,
            phase,
            ring_epoch: None,
            video,
            displayed: false,
            awaiting_answer: false,
            media_up: false,
            was_connected: false,
            reconnecting: false,
            audio_routed: false,
            muted: false,
            held: false,
            ui_shown_at: None,
            accepted_at: None,
            first_audio: FirstMedia::default(),
            first_video: FirstMedia::default(),
        }
    }

    fn media_joined(&self) -> bool {
        matches!(
            self.phase,
            Phase::Connecting { joined: true, .. } | Phase::Connected
        )
    }
}

/// One device's calls.
#[derive(Debug, Default)]
pub struct CallEngine {
    /// By call UUID.
    calls: BTreeMap<String, Call>,
    /// Calls that ended here (server call id, why), so late rings for them
    /// are not new calls.
    ended: VecDeque<(String, EndedReason)>,
    /// `call.accepted` for call ids not known yet, heard while one of our
    /// calls was being created: the events socket can outrun the create
    /// response (a retried create, a slow link), and the answer must not
    /// be lost.
    accepted_before_created: VecDeque<String>,
    signaling_up: bool,
    audio_active: bool,
    audio_routes: AudioRouteState,
    /// The server's flags for this device; empty until it first says.
    flags: Flags,
    outputs: VecDeque<Output>,
}

const REMEMBER_ENDED: usize = 64;
/// Outgoing calls being created at once are few; more than this many early
/// answers is not a race but noise.
const REMEMBER_EARLY_ACCEPTS: usize = 8;

impl CallEngine {
    pub fn new() -> CallEngine {
        CallEngine::default()
    }

    /// The device's feature flags as the server last said.
    pub fn flags(&self) -> Flags {
        self.flags.clone()
    }

    /// Whether a built-in flag is on: until the server says otherwise
    /// (an older server says nothing), it is.
    fn feature_on(&self, name: &str) -> bool {
        self.flags.get(name).copied().unwrap_or(true)
    }

    /// Decides what the platform shows for a push, before its callback
    /// returns, and records that it did: the engine never reports that call
    /// again. `device_now` is the device's clock (Unix ms) and `offset_ms`
    /// the server's minus it, when known.
    pub fn on_push(
        &mut self,
        push: Result<Push, Unreadable>,
        now: Duration,
        device_now: UnixMillis,
        offset_ms: Option<i64>,
    ) -> PushDecision {
        match push {
            Ok(Push::Ring(ring)) => self.on_ring_push(ring, device_now, offset_ms),
            Ok(Push::Cancel { call_id, reason }) => {
                self.handle(
                    Input::Cancelled {
                        call_id,
                        reason: reason.clone(),
                    },
                    now,
                    device_now,
                );
                PushDecision::NotACall {
                    reason: format!("cancel: {reason}"),
                }
            }
            Err(e) => push::unreadable_decision(e),
        }
    }

    fn on_ring_push(
        &mut self,
        ring: RingPush,
        device_now: UnixMillis,
        offset_ms: Option<i64>,
    ) -> PushDecision {
        let call = push::incoming_call(&ring);
        if ring.test {
            // No call stands behind it: nothing to remember or acknowledge.
            return push::test_push_decision(call);
        }
        if let Some(reason) = self.ended_reason(&ring.ring.call_id) {
            return PushDecision::ReportAndEnd { call, reason };
        }
        if let Some(uuid) = self.call_uuid_of(&ring.ring.call_id) {
            // Still ringing, answering or in the call: the same UUID again
            // (for a crossed call, our outgoing call's); the system knows it
            // already. A re-ring of a call on screen is acknowledged at once.
            let known = &self.calls[&uuid];
            if known.displayed && known.ring_epoch != Some(ring.ring.ring_epoch) {
                self.outputs.push_back(Output::Ack {
                    call_id: ring.ring.call_id.clone(),
                });
            }
            return PushDecision::Report {
                call: IncomingCall {
                    call_uuid: uuid,
                    ..call
                },
            };
        }
        if push::is_stale(&ring.ring, device_now, offset_ms) {
            self.remember_ended(&ring.ring.call_id, EndedReason::Unanswered);
            return PushDecision::ReportAndEnd {
                call,
                reason: EndedReason::Unanswered,
            };
        }
        self.calls
            .insert(call.call_uuid.clone(), Call::incoming(&ring.ring));
        PushDecision::Report { call }
    }

    /// `now`: time since the engine started (timers); `wall`: Unix ms
    /// (ring deadlines).
    pub fn handle(&mut self, input: Input, now: Duration, wall: UnixMillis) {
        match input {
            Input::Ring(ring) => self.on_socket_ring(ring, wall),
            Input::Cancelled { call_id, reason } => {
                let reason = match reason.as_str() {
                    "answered_elsewhere" => EndedReason::AnsweredElsewhere,
                    "declined_elsewhere" => EndedReason::DeclinedElsewhere,
                    "missed" => EndedReason::Unanswered,
                    "caller_cancelled" => EndedReason::CallerCancelled,
                    _ => EndedReason::RemoteEnded,
                };
                if let Some(uuid) = self.call_uuid_of(&call_id) {
                    self.end(&uuid, reason);
                } else {
                    // A cancel that overtook its ring: the ring must not
                    // start a call afterwards.
                    self.remember_ended(&call_id, reason);
                }
            }
            Input::RemoteEnded { call_id } => {
                let Some(uuid) = self.call_uuid_of(&call_id) else {
                    return;
                };
                let ringing_here = self.calls[&uuid].phase == Phase::Ringing;
                let reason = if ringing_here {
                    EndedReason::CallerCancelled
                } else {
                    EndedReason::RemoteEnded
                };
                self.end(&uuid, reason);
            }
            Input::StartCall {
                call_uuid,
                callee_user_id,
                video,
            } => {
                let call_uuid = push::normalize_uuid(&call_uuid);
                if self.calls.contains_key(&call_uuid) {
                    return; // the same start twice
                }
                // Video off for this device: the call goes out as audio
                // (the app hides its video button; a system start, from
                // Recents or a car, may still ask).
                let video = video && self.feature_on("video_calls");
                let mut call = Call::new(None, Phase::Creating, video);
                call.awaiting_answer = true;
                call.outgoing = true;
                call.remote_user_id = callee_user_id.clone();
                self.calls.insert(call_uuid.clone(), call);
                self.outputs.push_back(Output::CreateCall {
                    call_uuid,
                    callee_user_id,
                    video,
                });
            }
            Input::Created {
                call_uuid,
                call_id,
                call_token,
                answered,
            } => {
                if self.calls.get(&call_uuid).map(|c| &c.phase) != Some(&Phase::Creating) {
                    return; // ended while it was being created
                }
                if let Some(ringing) = self.call_uuid_of(&call_id)
                    && ringing != call_uuid
                {
                    // Crossed: the call ringing here is the one our call
                    // answered. The user's outgoing call carries it on; the
                    // ringing entry leaves the system UI (taken here).
                    self.end(&ringing, EndedReason::AnsweredElsewhere);
                    self.forget_ended(&call_id);
                }
                let accepted_already = match self
                    .accepted_before_created
                    .iter()
                    .position(|id| *id == call_id)
                {
                    Some(at) => self.accepted_before_created.remove(at).is_some(),
                    None => false,
                };
                let call = self.calls.get_mut(&call_uuid).expect("checked above");
                call.awaiting_answer = !(answered || accepted_already);
                if !call.awaiting_answer {
                    call.accepted_at = Some(now);
                }
                call.call_id = Some(call_id.clone());
                call.phase = Phase::Connecting {
                    token: Some(call_token),
                    joined: false,
                    deadline: now + OUTGOING_TIMEOUT,
                };
                self.outputs.push_back(Output::ReportOutgoingStarted {
                    call_uuid: call_uuid.clone(),
                    call_id,
                });
                self.maybe_join(&call_uuid);
            }
            Input::CreateFailed { call_uuid } => self.end(&call_uuid, EndedReason::Failed),
            Input::IncomingCallDisplayed { call_uuid } => {
                let call_uuid = push::normalize_uuid(&call_uuid);
                if let Some(call) = self.calls.get_mut(&call_uuid)
                    && !call.displayed
                    && call.ring_epoch.is_some()
                {
                    call.displayed = true;
                    call.ui_shown_at = Some(now);
                    if let Some(call_id) = call.call_id.clone() {
                        self.outputs.push_back(Output::Ack { call_id });
                    }
                }
            }
            Input::IncomingCallFailed { call_uuid, reason } => {
                let call_uuid = push::normalize_uuid(&call_uuid);
                if let Some(call) = self.calls.remove(&call_uuid) {
                    tracing::info!(call_id = ?call.call_id, %reason, "the system refused the incoming call");
                    // Not declined: the user's other devices keep ringing.
                    if let Some(call_id) = call.call_id {
                        self.outputs.push_back(Output::Report {
                            call_id: call_id.clone(),
                            report: CallReport::SystemUiError { code: reason },
                        });
                        self.remember_ended(&call_id, EndedReason::Failed);
                    }
                }
            }
            Input::SystemAnswer { call_uuid } => {
                let call_uuid = push::normalize_uuid(&call_uuid);
                let Some(call) = self.calls.get_mut(&call_uuid) else {
                    return;
                };
                if call.phase != Phase::Ringing {
                    return; // a second tap, or not ringing any more
                }
                call.phase = Phase::Answering { sent: false };
                call.accepted_at = Some(now);
                if let (Some(shown), Some(call_id)) = (call.ui_shown_at, call.call_id.clone()) {
                    self.outputs.push_back(Output::Report {
                        call_id,
                        report: CallReport::AnsweredOnDevice {
                            after_ui_shown_ms: millis(now.saturating_sub(shown)),
                        },
                    });
                }
                self.flush_answers();
            }
            Input::Accepted {
                call_id,
                call_token,
            } => {
                let Some(uuid) = self.call_uuid_of(&call_id) else {
                    return;
                };
                let call = self.calls.get_mut(&uuid).expect("uuid_of found it");
                if matches!(call.phase, Phase::Answering { .. }) {
                    call.phase = Phase::Connecting {
                        token: Some(call_token),
                        joined: false,
                        deadline: now + CONNECT_TIMEOUT,
                    };
                    self.maybe_join(&uuid);
                }
            }
            Input::AcceptRefused { call_id, reason } => {
                let reason = if reason == "answered_elsewhere" {
                    EndedReason::AnsweredElsewhere
                } else {
                    EndedReason::Failed
                };
                if let Some(uuid) = self.call_uuid_of(&call_id) {
                    self.end(&uuid, reason);
                }
            }
            Input::SystemEnd { call_uuid } => {
                let call_uuid = push::normalize_uuid(&call_uuid);
                let Some(call) = self.calls.get(&call_uuid) else {
                    return;
                };
                let call_id = call.call_id.clone();
                let reason = if call.phase == Phase::Ringing {
                    EndedReason::Declined
                } else {
                    EndedReason::LocalEnded
                };
                if let Some(call_id) = call_id {
                    self.outputs.push_back(if reason == EndedReason::Declined {
                        Output::Decline { call_id }
                    } else {
                        Output::End { call_id }
                    });
                }
                self.end(&call_uuid, reason);
            }
            Input::SystemMute { call_uuid, muted } => {
                let call_uuid = push::normalize_uuid(&call_uuid);
                if let Some(call) = self.calls.get_mut(&call_uuid) {
                    call.muted = muted;
                    if !call.held
                        && let Some(call_id) = call.call_id.clone()
                    {
                        self.outputs.push_back(Output::SetMuted { call_id, muted });
                    }
                }
            }
            Input::SystemHold { call_uuid, held } => {
                let call_uuid = push::normalize_uuid(&call_uuid);
                if let Some(call) = self.calls.get_mut(&call_uuid)
                    && call.held != held
                {
                    call.held = held;
                    if let Some(call_id) = call.call_id.clone() {
                        // Held: no microphone, no playout. Unheld: the
                        // user's own mute state again.
                        self.outputs.push_back(Output::SetHeld {
                            call_id: call_id.clone(),
                            held,
                        });
                        self.outputs.push_back(Output::SetMuted {
                            call_id,
                            muted: held || call.muted,
                        });
                    }
                }
            }
            Input::SystemReset => {
                // The system dropped every call: calls in progress end on
                // the server too; ringing ones only here (the user's other
                // devices keep ringing). The system needs no reports.
                let calls = std::mem::take(&mut self.calls);
                for (_, call) in calls {
                    let Some(call_id) = call.call_id.clone() else {
                        continue;
                    };
                    if call.media_joined() {
                        self.outputs.push_back(Output::LeaveMedia {
                            call_id: call_id.clone(),
                        });
                    }
                    if call.phase != Phase::Ringing {
                        self.outputs.push_back(Output::End {
                            call_id: call_id.clone(),
                        });
                    }
                    self.remember_ended(&call_id, EndedReason::Failed);
                }
            }
            Input::AudioSessionActivated => {
                self.audio_active = true;
                let ids: Vec<String> = self.calls.keys().cloned().collect();
                for id in ids {
                    self.maybe_join(&id);
                }
            }
            Input::AudioSessionDeactivated => self.audio_active = false,
            Input::SignalingConnected => {
                let was_down = !self.signaling_up;
                self.signaling_up = true;
                self.flush_answers();
                if was_down {
                    // Back after a drop: calls in progress get new paths.
                    let live: Vec<String> = self
                        .calls
                        .values()
                        .filter(|c| c.media_joined())
                        .filter_map(|c| c.call_id.clone())
                        .collect();
                    for call_id in live {
                        self.outputs.push_back(Output::RestartIce { call_id });
                    }
                }
            }
            Input::SignalingDisconnected => self.signaling_up = false,
            Input::MediaConnected { call_id } => {
                if let Some(uuid) = self.call_uuid_of(&call_id) {
                    let call = self.calls.get_mut(&uuid).expect("found");
                    call.media_up = true;
                    if call.phase == Phase::Connected && std::mem::take(&mut call.reconnecting) {
                        self.outputs
                            .push_back(Output::ReportReconnected { call_uuid: uuid });
                    } else {
                        self.maybe_connected(&uuid);
                    }
                }
            }
            Input::RemoteAccepted { call_id } => {
                if let Some(uuid) = self.call_uuid_of(&call_id) {
                    let call = self.calls.get_mut(&uuid).expect("found");
                    call.awaiting_answer = false;
                    call.accepted_at.get_or_insert(now);
                    self.report_first_media(&uuid);
                    self.maybe_connected(&uuid);
                } else if self.calls.values().any(|c| c.phase == Phase::Creating)
                    && !self.accepted_before_created.contains(&call_id)
                {
                    self.accepted_before_created.push_back(call_id);
                    if self.accepted_before_created.len() > REMEMBER_EARLY_ACCEPTS {
                        self.accepted_before_created.pop_front();
                    }
                }
            }
            Input::MediaFailed { call_id } => {
                if let Some(uuid) = self.call_uuid_of(&call_id) {
                    let call = self.calls.get_mut(&uuid).expect("found");
                    // Rejoin with a fresh token, within the connect timeout
                    // (counted from the first failure: repeated failures
                    // do not extend it).
                    let deadline = match call.phase {
                        Phase::Connecting { deadline, .. } => deadline,
                        _ => now + CONNECT_TIMEOUT,
                    };
                    call.phase = Phase::Connecting {
                        token: None,
                        joined: false,
                        deadline,
                    };
                    call.media_up = false;
                    self.outputs
                        .push_back(Output::RequestFreshToken { call_id });
                    self.report_reconnecting(&uuid);
                }
            }
            Input::MediaReconnecting { call_id } => {
                if let Some(uuid) = self.call_uuid_of(&call_id) {
                    self.calls.get_mut(&uuid).expect("found").media_up = false;
                    self.report_reconnecting(&uuid);
                }
            }
            Input::RemoteTrack { call_id, change } => {
                // Only for calls still here: nothing after the end report.
                if let Some(call_uuid) = self.call_uuid_of(&call_id) {
                    self.outputs
                        .push_back(Output::ReportRemoteTrack { call_uuid, change });
                }
            }
            Input::ActiveSpeakers { call_id, speakers } => {
                if let Some(call_uuid) = self.call_uuid_of(&call_id) {
                    self.outputs.push_back(Output::ReportActiveSpeakers {
                        call_uuid,
                        speakers,
                    });
                }
            }
            Input::Data { call_id, message } => {
                if let Some(call_uuid) = self.call_uuid_of(&call_id) {
                    self.outputs
                        .push_back(Output::ReportData { call_uuid, message });
                }
            }
            Input::Flags(flags) => {
                if flags != self.flags {
                    self.flags = flags.clone();
                    self.outputs.push_back(Output::FlagsChanged { flags });
                }
            }
            Input::AudioRoutesChanged(routes) => {
                self.audio_routes = routes;
                let uuids: Vec<String> = self.calls.keys().cloned().collect();
                for uuid in uuids {
                    self.route_by_default(&uuid);
                }
            }
            Input::SelectAudioRoute { endpoint_id } => {
                if self
                    .audio_routes
                    .endpoints
                    .iter()
                    .any(|e| e.id == endpoint_id)
                {
                    // The user's choice stands for every call from now on.
                    for call in self.calls.values_mut() {
                        call.audio_routed = true;
                    }
                    self.outputs
                        .push_back(Output::SelectAudioRoute { endpoint_id });
                }
            }
            Input::MediaUnavailable { call_id } => {
                if let Some(uuid) = self.call_uuid_of(&call_id) {
                    self.outputs.push_back(Output::Report {
                        call_id: call_id.clone(),
                        report: CallReport::MediaFailed {
                            reason: "media_unavailable",
                        },
                    });
                    self.outputs.push_back(Output::End { call_id });
                    self.end(&uuid, EndedReason::Failed);
                }
            }
            Input::SystemUiError { call_uuid, code } => {
                let call_uuid = push::normalize_uuid(&call_uuid);
                if let Some(call_id) = self.calls.get(&call_uuid).and_then(|c| c.call_id.clone()) {
                    self.outputs.push_back(Output::Report {
                        call_id,
                        report: CallReport::SystemUiError { code },
                    });
                }
            }
            Input::FirstMedia { call_id, video } => {
                if let Some(uuid) = self.call_uuid_of(&call_id) {
                    let call = self.calls.get_mut(&uuid).expect("found");
                    let first = if video {
                        &mut call.first_video
                    } else {
                        &mut call.first_audio
                    };
                    first.at.get_or_insert(now);
                    self.report_first_media(&uuid);
                }
            }
            Input::MediaQuality { call_id, quality } => {
                if self.call_uuid_of(&call_id).is_some() {
                    self.outputs.push_back(Output::Report {
                        call_id,
                        report: CallReport::Quality(quality),
                    });
                }
            }
            Input::FreshToken {
                call_id,
                call_token,
            } => {
                let Some(uuid) = self.call_uuid_of(&call_id) else {
                    return;
                };
                if let Some(Call {
                    phase: Phase::Connecting { token, .. },
                    ..
                }) = self.calls.get_mut(&uuid)
                {
                    *token = Some(call_token);
                    self.maybe_join(&uuid);
                }
            }
        }
    }

    /// Connect deadlines: a call not connected in time ends `Failed`.
    pub fn handle_timeout(&mut self, now: Duration) {
        let late: Vec<(String, Option<String>, bool)> = self
            .calls
            .iter()
            .filter(
                |(_, c)| matches!(c.phase, Phase::Connecting { deadline, .. } if deadline <= now),
            )
            .map(|(uuid, c)| (uuid.clone(), c.call_id.clone(), c.awaiting_answer))
            .collect();
        for (uuid, call_id, awaiting_answer) in late {
            if let Some(call_id) = call_id {
                // An outgoing call nobody answered is not a media failure.
                if !awaiting_answer {
                    self.outputs.push_back(Output::Report {
                        call_id: call_id.clone(),
                        report: CallReport::MediaFailed {
                            reason: "connect_timeout",
                        },
                    });
                }
                self.outputs.push_back(Output::End { call_id });
            }
            self.end(&uuid, EndedReason::Failed);
        }
    }

    /// Reports the first audio and video once each, when both the accept
    /// and the media are known (for a caller, media may play before the
    /// answer's event arrives: then it counts as at once).
    fn report_first_media(&mut self, call_uuid: &str) {
        let Some(call) = self.calls.get_mut(call_uuid) else {
            return;
        };
        let (Some(accepted), Some(call_id)) = (call.accepted_at, call.call_id.clone()) else {
            return;
        };
        for (first, video) in [
            (&mut call.first_audio, false),
            (&mut call.first_video, true),
        ] {
            let Some(at) = first.at.filter(|_| !first.reported) else {
                continue;
            };
            first.reported = true;
            let after_accept_ms = millis(at.saturating_sub(accepted));
            let report = if video {
                CallReport::FirstVideo { after_accept_ms }
            } else {
                CallReport::FirstAudio { after_accept_ms }
            };
            self.outputs.push_back(Output::Report {
                call_id: call_id.clone(),
                report,
            });
        }
    }

    /// When `handle_timeout` wants to run next.
    pub fn next_timeout(&self) -> Option<Duration> {
        self.calls
            .values()
            .filter_map(|c| match c.phase {
                Phase::Connecting { deadline, .. } => Some(deadline),
                _ => None,
            })
            .min()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The server's id of the call the system knows as `call_uuid`.
    pub fn call_id_of(&self, call_uuid: &str) -> Option<String> {
        self.calls
            .get(&push::normalize_uuid(call_uuid))
            .and_then(|c| c.call_id.clone())
    }

    /// The UUID of the call the server knows as `call_id`.
    pub fn call_uuid_of(&self, call_id: &str) -> Option<String> {
        let derived = push::call_uuid_for(call_id);
        if self.calls.contains_key(&derived) {
            return Some(derived);
        }
        self.calls
            .iter()
            .find(|(_, c)| c.call_id.as_deref() == Some(call_id))
            .map(|(uuid, _)| uuid.clone())
    }

    fn ended_reason(&self, call_id: &str) -> Option<EndedReason> {
        self.ended
            .iter()
            .find(|(id, _)| id == call_id)
            .map(|(_, r)| *r)
    }

    fn on_socket_ring(&mut self, ring: Ring, wall: UnixMillis) {
        if self.ended_reason(&ring.call_id).is_some() {
            return; // a late delivery of a call already over here
        }
        if !self.feature_on("calling") || !self.feature_on("incoming_call_ui") {
            // The server rings no such device; a ring that crossed the
            // change is not shown (pushes must be: Apple requires it).
            return;
        }
        if let Some(uuid) = self.call_uuid_of(&ring.call_id) {
            // Known call (a push reported it, or the socket replayed it):
            // never a second incoming call. Re-acknowledged if on screen.
            if self.calls[&uuid].displayed {
                self.outputs.push_back(Output::Ack {
                    call_id: ring.call_id,
                });
            }
            return;
        }
        let call = push::incoming_call(&RingPush {
            ring: ring.clone(),
            test: false,
            sent_at: 0,
            avatar_url: None,
        });
        let uuid = call.call_uuid.clone();
        self.outputs.push_back(Output::ReportIncoming { call });
        self.calls.insert(uuid.clone(), Call::incoming(&ring));
        // The socket's deadline is the server's own clock, sent just now.
        if ring.expires_at <= wall {
            self.end(&uuid, EndedReason::Unanswered);
        }
    }

    /// Connected: media is up and, for an outgoing call, the callee
    /// answered. After a rejoin, that is a reconnection.
    fn maybe_connected(&mut self, call_uuid: &str) {
        if let Some(call) = self.calls.get_mut(call_uuid)
            && matches!(call.phase, Phase::Connecting { .. })
            && call.media_up
            && !call.awaiting_answer
        {
            call.phase = Phase::Connected;
            let call_uuid = call_uuid.to_string();
            if !std::mem::replace(&mut call.was_connected, true) {
                self.outputs
                    .push_back(Output::ReportConnected { call_uuid });
            } else if std::mem::take(&mut call.reconnecting) {
                self.outputs
                    .push_back(Output::ReportReconnected { call_uuid });
            }
        }
    }

    /// A call that was connected lost its media: the app shows it is
    /// reconnecting (once, until it is back).
    fn report_reconnecting(&mut self, call_uuid: &str) {
        if let Some(call) = self.calls.get_mut(call_uuid)
            && call.was_connected
            && !std::mem::replace(&mut call.reconnecting, true)
        {
            self.outputs.push_back(Output::ReportReconnecting {
                call_uuid: call_uuid.to_string(),
            });
        }
    }

    /// Sends queued answers once signaling is up.
    fn flush_answers(&mut self) {
        if !self.signaling_up {
            return;
        }
        for call in self.calls.values_mut() {
            if call.phase == (Phase::Answering { sent: false })
                && let Some(call_id) = call.call_id.clone()
            {
                call.phase = Phase::Answering { sent: true };
                self.outputs.push_back(Output::Accept { call_id });
            }
        }
    }

    /// Joins media once the token is known and the audio session is active.
    fn maybe_join(&mut self, call_uuid: &str) {
        if !self.audio_active {
            return;
        }
        if let Some(Call {
            call_id: Some(call_id),
            phase:
                Phase::Connecting {
                    token: Some(token),
                    joined,
                    ..
                },
            video,
            ..
        }) = self.calls.get_mut(call_uuid)
            && !*joined
        {
            *joined = true;
            self.outputs.push_back(Output::JoinMedia {
                call_id: call_id.clone(),
                call_token: token.clone(),
                video: *video,
            });
            self.route_by_default(call_uuid);
        }
    }

    /// A call's default audio route, once, when it has joined media and
    /// the platform has said what endpoints there are.
    fn route_by_default(&mut self, call_uuid: &str) {
        if self.audio_routes.endpoints.is_empty() {
            return; // chosen when the platform reports them
        }
        let Some(call) = self.calls.get_mut(call_uuid) else {
            return;
        };
        if call.audio_routed || !call.media_joined() {
            return;
        }
        call.audio_routed = true;
        if let Some(endpoint_id) = default_route(&self.audio_routes, call.video) {
            self.outputs
                .push_back(Output::SelectAudioRoute { endpoint_id });
        }
    }

    /// Every call this device is in, by UUID (a snapshot for a UI that
    /// starts late).
    pub fn active_calls(&self) -> Vec<ActiveCall> {
        self.calls
            .iter()
            .map(|(uuid, call)| ActiveCall {
                call_uuid: uuid.clone(),
                call_id: call.call_id.clone(),
                remote_user_id: call.remote_user_id.clone(),
                outgoing: call.outgoing,
                video: call.video,
                state: match call.phase {
                    Phase::Ringing => ActiveCallState::Ringing,
                    Phase::Creating => ActiveCallState::Outgoing,
                    Phase::Connecting { .. } if call.reconnecting => ActiveCallState::Reconnecting,
                    Phase::Connected if call.reconnecting => ActiveCallState::Reconnecting,
                    Phase::Connecting { .. } | Phase::Answering { .. }
                        if call.outgoing && call.awaiting_answer =>
                    {
                        ActiveCallState::Outgoing
                    }
                    Phase::Answering { .. } | Phase::Connecting { .. } => {
                        ActiveCallState::Connecting
                    }
                    Phase::Connected => ActiveCallState::Connected,
                },
                muted: call.muted,
                held: call.held,
            })
            .collect()
    }

    /// The platform's audio endpoints as last reported.
    pub fn audio_routes(&self) -> &AudioRouteState {
        &self.audio_routes
    }

    /// Ends a call: media left, the system UI told (unless it ended it).
    fn end(&mut self, call_uuid: &str, reason: EndedReason) {
        let Some(call) = self.calls.remove(call_uuid) else {
            return;
        };
        if let Some(call_id) = &call.call_id {
            if call.media_joined() {
                self.outputs.push_back(Output::LeaveMedia {
                    call_id: call_id.clone(),
                });
            }
            self.remember_ended(call_id, reason);
        }
        self.outputs.push_back(Output::ReportEnded {
            call_uuid: call_uuid.to_string(),
            call_id: call.call_id,
            reason,
        });
    }

    fn forget_ended(&mut self, call_id: &str) {
        self.ended.retain(|(id, _)| id != call_id);
    }

    fn remember_ended(&mut self, call_id: &str, reason: EndedReason) {
        self.ended.push_back((call_id.to_string(), reason));
        if self.ended.len() > REMEMBER_ENDED {
            self.ended.pop_front();
        }
    }
}

/// Where a call's audio goes unless the user says otherwise (the order
/// LiveKit's and Twilio's Android `AudioSwitch` use): a wired, then a
/// Bluetooth headset, never overridden; else the speaker for video and the
/// earpiece for voice. `None`: leave the current route (a headset or car
/// audio in use, or the default is current already).
pub fn default_route(routes: &AudioRouteState, video: bool) -> Option<String> {
    let current = routes
        .current_id
        .as_ref()
        .and_then(|id| routes.endpoints.iter().find(|e| &e.id == id));
    if current.is_some_and(|e| e.kind.is_headset() || e.kind == AudioRouteKind::Other) {
        return None;
    }
    let first = |kind| routes.endpoints.iter().find(|e| e.kind == kind);
    let preferred = if video {
        AudioRouteKind::Speaker
    } else {
        AudioRouteKind::Earpiece
    };
    first(AudioRouteKind::WiredHeadset)
        .or_else(|| first(AudioRouteKind::Bluetooth))
        .or_else(|| first(preferred))
        .filter(|e| Some(&e.id) != routes.current_id.as_ref())
        .map(|e| e.id.clone())
}
