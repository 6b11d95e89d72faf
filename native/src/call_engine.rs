//! The call engine: one device's calls as a sans-IO state machine. Inputs
//! are what happened (a push or ring arrived, the user or the system UI
//! acted, the API or the media answered, time passed); outputs are what the
//! platform layer must do through its ports: report to the system call UI
//! (CallKit / Telecom), call the API, drive the media session. Time is an
//! input, so every rule is tested with a fake clock.
//!
//! Rules it enforces:
//! - a ring for a known call (same call id and ring epoch; or any epoch of a
//!   call already reported) never reports a second incoming call;
//! - a stale or expired ring is still reported and then ended at once
//!   (Apple requires every VoIP push to reach CallKit);
//! - an answer before the signaling connection is up is queued until it is;
//! - media starts only once the call is accepted *and* the audio session is
//!   active;
//! - a cancel for a ringing call ends the system UI with the matching reason.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

pub use crate::ports::{AudioRouteKind, EndedReason};

/// Unix milliseconds (pushes carry wall-clock deadlines).
pub type UnixMillis = u64;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A ring, from a VoIP / FCM push or the events WebSocket.
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
    /// The user starts a call (the app's own UI).
    StartCall {
        callee_user_id: String,
        video: bool,
    },
    /// The API refused to create the outgoing call.
    CreateFailed,
    /// The API created the outgoing call.
    Created {
        call_id: String,
        call_token: String,
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
    /// The system UI's actions (CallKit / Telecom).
    SystemAnswer {
        call_id: String,
    },
    SystemEnd {
        call_id: String,
    },
    SystemMute {
        call_id: String,
        muted: bool,
    },
    /// On hold (another call took the audio session): the microphone stops.
    SystemHold {
        call_id: String,
        held: bool,
    },
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
    /// A fresh call token to rejoin with (after a failure or a long drop).
    FreshToken {
        call_id: String,
        call_token: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    // SystemCallUi, outward.
    ReportIncoming {
        call_id: String,
        from: String,
        video: bool,
    },
    ReportOutgoingStarted {
        call_id: String,
    },
    ReportConnected {
        call_id: String,
    },
    ReportEnded {
        call_id: String,
        reason: EndedReason,
    },
    // The call API.
    CreateCall {
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
    // MediaSession.
    JoinMedia {
        call_id: String,
        call_token: String,
    },
    RestartIce {
        call_id: String,
    },
    SetMuted {
        call_id: String,
        muted: bool,
    },
    LeaveMedia {
        call_id: String,
    },
    // AudioRoute.
    RouteAudio {
        route: AudioRouteKind,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
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
    phase: Phase,
    ring_epoch: Option<u64>,
    video: bool,
    /// Outgoing, and the callee has not answered: the call connects when
    /// they do, even if media to the SFU is up before.
    awaiting_answer: bool,
    media_up: bool,
    /// The audio route was chosen (on the first join; a rejoin keeps the
    /// user's choice).
    audio_routed: bool,
}

/// One device's calls.
#[derive(Debug, Default)]
pub struct CallEngine {
    calls: BTreeMap<String, Call>,
    /// Calls that ended here, so late rings for them are not new calls.
    ended: VecDeque<String>,
    signaling_up: bool,
    audio_active: bool,
    outputs: VecDeque<Output>,
    /// A StartCall before the API named the call.
    pending_outgoing: Option<(String, bool)>,
}

const REMEMBER_ENDED: usize = 64;

impl CallEngine {
    pub fn new() -> CallEngine {
        CallEngine::default()
    }

    /// `now`: time since the engine started (timers); `wall`: Unix ms
    /// (ring deadlines).
    pub fn handle(&mut self, input: Input, now: Duration, wall: UnixMillis) {
        match input {
            Input::Ring(ring) => self.on_ring(ring, wall),
            Input::Cancelled { call_id, reason } => {
                let reason = match reason.as_str() {
                    "answered_elsewhere" => EndedReason::AnsweredElsewhere,
                    "declined_elsewhere" => EndedReason::DeclinedElsewhere,
                    "missed" => EndedReason::Missed,
                    "caller_cancelled" => EndedReason::RemoteEnded,
                    _ => EndedReason::RemoteEnded,
                };
                self.end(&call_id, reason);
            }
            Input::RemoteEnded { call_id } => {
                // After talking, a hang-up on either side completes the
                // call; before, the other side ended it.
                let talked = self
                    .calls
                    .get(&call_id)
                    .is_some_and(|c| c.phase == Phase::Connected);
                let reason = if talked {
                    EndedReason::Completed
                } else {
                    EndedReason::RemoteEnded
                };
                self.end(&call_id, reason);
            }
            Input::StartCall {
                callee_user_id,
                video,
            } => {
                self.pending_outgoing = Some((callee_user_id.clone(), video));
                self.outputs.push_back(Output::CreateCall {
                    callee_user_id,
                    video,
                });
            }
            Input::Created {
                call_id,
                call_token,
            } => {
                let Some((_, video)) = self.pending_outgoing.take() else {
                    return;
                };
                self.outputs.push_back(Output::ReportOutgoingStarted {
                    call_id: call_id.clone(),
                });
                self.calls.insert(
                    call_id.clone(),
                    Call {
                        phase: Phase::Connecting {
                            token: Some(call_token),
                            joined: false,
                            deadline: now + OUTGOING_TIMEOUT,
                        },
                        ring_epoch: None,
                        video,
                        awaiting_answer: true,
                        media_up: false,
                        audio_routed: false,
                    },
                );
                self.maybe_join(&call_id);
            }
            Input::SystemAnswer { call_id } => {
                let Some(call) = self.calls.get_mut(&call_id) else {
                    return;
                };
                if call.phase != Phase::Ringing {
                    return; // a second tap, or not ringing any more
                }
                call.phase = Phase::Answering { sent: false };
                self.flush_answers();
            }
            Input::Accepted {
                call_id,
                call_token,
            } => {
                let Some(call) = self.calls.get_mut(&call_id) else {
                    return;
                };
                if matches!(call.phase, Phase::Answering { .. }) {
                    call.phase = Phase::Connecting {
                        token: Some(call_token),
                        joined: false,
                        deadline: now + CONNECT_TIMEOUT,
                    };
                    self.maybe_join(&call_id);
                }
            }
            Input::AcceptRefused { call_id, reason } => {
                let reason = if reason == "answered_elsewhere" {
                    EndedReason::AnsweredElsewhere
                } else {
                    EndedReason::Failed
                };
                self.end(&call_id, reason);
            }
            Input::SystemEnd { call_id } => {
                let Some(call) = self.calls.get(&call_id) else {
                    return;
                };
                let reason = if call.phase == Phase::Ringing {
                    self.outputs.push_back(Output::Decline {
                        call_id: call_id.clone(),
                    });
                    EndedReason::Declined
                } else {
                    self.outputs.push_back(Output::End {
                        call_id: call_id.clone(),
                    });
                    EndedReason::Completed
                };
                self.end(&call_id, reason);
            }
            Input::CreateFailed => self.pending_outgoing = None,
            Input::SystemMute { call_id, muted }
            | Input::SystemHold {
                call_id,
                held: muted,
            } => {
                if self.calls.contains_key(&call_id) {
                    self.outputs.push_back(Output::SetMuted { call_id, muted });
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
                        .iter()
                        .filter(|(_, c)| {
                            matches!(
                                c.phase,
                                Phase::Connected | Phase::Connecting { joined: true, .. }
                            )
                        })
                        .map(|(id, _)| id.clone())
                        .collect();
                    for call_id in live {
                        self.outputs.push_back(Output::RestartIce { call_id });
                    }
                }
            }
            Input::SignalingDisconnected => self.signaling_up = false,
            Input::MediaConnected { call_id } => {
                if let Some(call) = self.calls.get_mut(&call_id) {
                    call.media_up = true;
                    self.maybe_connected(&call_id);
                }
            }
            Input::RemoteAccepted { call_id } => {
                if let Some(call) = self.calls.get_mut(&call_id) {
                    call.awaiting_answer = false;
                    self.maybe_connected(&call_id);
                }
            }
            Input::MediaFailed { call_id } => {
                if let Some(call) = self.calls.get_mut(&call_id) {
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
                }
            }
            Input::MediaUnavailable { call_id } => {
                if self.calls.contains_key(&call_id) {
                    self.outputs.push_back(Output::End {
                        call_id: call_id.clone(),
                    });
                    self.end(&call_id, EndedReason::Failed);
                }
            }
            Input::FreshToken {
                call_id,
                call_token,
            } => {
                if let Some(Call {
                    phase: Phase::Connecting { token, .. },
                    ..
                }) = self.calls.get_mut(&call_id)
                {
                    *token = Some(call_token);
                    self.maybe_join(&call_id);
                }
            }
        }
    }

    /// Connect deadlines: a call not connected in time ends `Failed`.
    pub fn handle_timeout(&mut self, now: Duration) {
        let late: Vec<String> = self
            .calls
            .iter()
            .filter(
                |(_, c)| matches!(c.phase, Phase::Connecting { deadline, .. } if deadline <= now),
            )
            .map(|(id, _)| id.clone())
            .collect();
        for call_id in late {
            self.outputs.push_back(Output::End {
                call_id: call_id.clone(),
            });
            self.end(&call_id, EndedReason::Failed);
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

    fn on_ring(&mut self, ring: Ring, wall: UnixMillis) {
        if self.ended.contains(&ring.call_id) {
            return; // a late delivery of a call already over here
        }
        if let Some(call) = self.calls.get(&ring.call_id) {
            // Known call: the same ring twice, or a re-ring (new epoch) of a
            // call already on screen. Never a second incoming call.
            if call.ring_epoch != Some(ring.ring_epoch) {
                self.outputs.push_back(Output::Ack {
                    call_id: ring.call_id,
                });
            }
            return;
        }
        self.outputs.push_back(Output::ReportIncoming {
            call_id: ring.call_id.clone(),
            from: ring
                .caller_display_name
                .clone()
                .unwrap_or_else(|| ring.from_user_id.clone()),
            video: ring.video,
        });
        self.calls.insert(
            ring.call_id.clone(),
            Call {
                phase: Phase::Ringing,
                ring_epoch: Some(ring.ring_epoch),
                video: ring.video,
                awaiting_answer: false,
                media_up: false,
                audio_routed: false,
            },
        );
        if ring.expires_at <= wall {
            // Stale: reported (Apple requires it), then ended at once.
            self.end(&ring.call_id, EndedReason::Missed);
            return;
        }
        self.outputs.push_back(Output::Ack {
            call_id: ring.call_id,
        });
    }

    /// Connected: media is up and, for an outgoing call, the callee answered.
    fn maybe_connected(&mut self, call_id: &str) {
        if let Some(call) = self.calls.get_mut(call_id)
            && matches!(call.phase, Phase::Connecting { .. })
            && call.media_up
            && !call.awaiting_answer
        {
            call.phase = Phase::Connected;
            self.outputs.push_back(Output::ReportConnected {
                call_id: call_id.to_string(),
            });
        }
    }

    /// Sends queued answers once signaling is up.
    fn flush_answers(&mut self) {
        if !self.signaling_up {
            return;
        }
        for (call_id, call) in self.calls.iter_mut() {
            if call.phase == (Phase::Answering { sent: false }) {
                call.phase = Phase::Answering { sent: true };
                self.outputs.push_back(Output::Accept {
                    call_id: call_id.clone(),
                });
            }
        }
    }

    /// Joins media once the token is known and the audio session is active.
    fn maybe_join(&mut self, call_id: &str) {
        if !self.audio_active {
            return;
        }
        if let Some(Call {
            phase:
                Phase::Connecting {
                    token: Some(token),
                    joined,
                    ..
                },
            video,
            audio_routed,
            ..
        }) = self.calls.get_mut(call_id)
            && !*joined
        {
            *joined = true;
            if !std::mem::replace(audio_routed, true) {
                // Phone apps play video calls on the speaker, voice at the ear.
                let route = if *video {
                    AudioRouteKind::Speaker
                } else {
                    AudioRouteKind::Earpiece
                };
                self.outputs.push_back(Output::RouteAudio { route });
            }
            self.outputs.push_back(Output::JoinMedia {
                call_id: call_id.to_string(),
                call_token: token.clone(),
            });
        }
    }

    /// Ends a call: media left, the system UI told (unless it ended it).
    fn end(&mut self, call_id: &str, reason: EndedReason) {
        let Some(call) = self.calls.remove(call_id) else {
            return;
        };
        if matches!(
            call.phase,
            Phase::Connecting { joined: true, .. } | Phase::Connected
        ) {
            self.outputs.push_back(Output::LeaveMedia {
                call_id: call_id.to_string(),
            });
        }
        self.outputs.push_back(Output::ReportEnded {
            call_id: call_id.to_string(),
            reason,
        });
        self.ended.push_back(call_id.to_string());
        if self.ended.len() > REMEMBER_ENDED {
            self.ended.pop_front();
        }
    }
}
