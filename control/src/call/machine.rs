//! One call's state machine: the only place a call or participant changes
//! state. Pure: inputs carry the wall-clock time (`UnixMillis`, since calls
//! outlive a process and deadlines are persisted), outputs are effects for
//! the shell (ring or stop ringing a device, tell the participants) and the
//! next deadline. Nothing here touches a store, a socket or a clock. The
//! types derive serde because the store persists a call as it is here.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, as given by the caller.
pub type UnixMillis = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallType {
    Audio,
    Video,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    Created,
    Ringing,
    /// Someone accepted; waiting for media to connect.
    Connecting,
    Connected,
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantState {
    Invited,
    Ringing,
    Accepted,
    Declined,
    Busy,
    Left,
    Missed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Host,
    Member,
}

/// Why a call ended. Every ended call has exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Completed,
    Declined,
    Busy,
    Timeout,
    CallerCancelled,
    AnsweredElsewhere,
    DeclinedElsewhere,
    NoDevices,
    Failed,
    /// Calling is off (feature flags) for every callee on every device.
    Unsupported,
}

impl EndReason {
    pub const ALL: [EndReason; 10] = [
        EndReason::Completed,
        EndReason::Declined,
        EndReason::Busy,
        EndReason::Timeout,
        EndReason::CallerCancelled,
        EndReason::AnsweredElsewhere,
        EndReason::DeclinedElsewhere,
        EndReason::NoDevices,
        EndReason::Failed,
        EndReason::Unsupported,
    ];

    /// The wire name (`"caller_cancelled"`), also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Completed => "completed",
            EndReason::Declined => "declined",
            EndReason::Busy => "busy",
            EndReason::Timeout => "timeout",
            EndReason::CallerCancelled => "caller_cancelled",
            EndReason::AnsweredElsewhere => "answered_elsewhere",
            EndReason::DeclinedElsewhere => "declined_elsewhere",
            EndReason::NoDevices => "no_devices",
            EndReason::Unsupported => "unsupported",
            EndReason::Failed => "failed",
        }
    }
}

/// Why a device stops ringing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    AnsweredElsewhere,
    DeclinedElsewhere,
    CallerCancelled,
    /// Nobody answered in time: a missed call.
    Missed,
    /// The call ended for another reason (e.g. the other callee's decline).
    CallEnded,
    /// The feature flags turned calling (or the call UI) off for this
    /// device while it rang.
    Unsupported,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RingState {
    /// Sent (over the WebSocket or a push), not yet acknowledged.
    Sent,
    /// The device acknowledged: its call UI is showing.
    Acknowledged,
    /// This device accepted the call (it holds it now).
    Answered,
    /// This device declined the call.
    Declined,
    /// Told to stop ringing, with the reason.
    Stopped(StopReason),
}

impl RingState {
    /// No longer ringing, for whatever reason.
    pub fn is_done(self) -> bool {
        matches!(
            self,
            RingState::Answered | RingState::Declined | RingState::Stopped(_)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ring {
    pub device_id: String,
    pub state: RingState,
    pub sent_at: UnixMillis,
    pub acknowledged_at: Option<UnixMillis>,
}

impl Ring {
    fn sent(device_id: &str, now: UnixMillis) -> Ring {
        Ring {
            device_id: device_id.to_string(),
            state: RingState::Sent,
            sent_at: now,
            acknowledged_at: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    pub participant_id: String,
    pub user_id: String,
    pub role: Role,
    pub state: ParticipantState,
    /// The device that holds the call (the caller's, or the one that accepted).
    pub device_id: Option<String>,
    /// The participant is in the SFU room (possibly reconnecting).
    pub in_media: bool,
    pub rings: Vec<Ring>,
}

/// Timers the server owns, with the reasons for their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// How long callees ring: long enough to find the phone, short enough not
    /// to ring on after the caller gave up (mission 7.3: 30-45 s).
    pub ring_ms: u64,
    /// From accept to connected media (mission 7.3: 20 s).
    pub connect_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            ring_ms: 40_000,
            connect_ms: 20_000,
        }
    }
}

/// A callee as the caller of [`Call::create`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callee {
    pub user_id: String,
    pub participant_id: String,
    /// The devices to ring (already bounded and ordered by the ringing policy).
    pub devices: Vec<String>,
    /// Already in a connected call.
    pub busy: bool,
    /// Calling is off (feature flags) on every device the callee has; none
    /// is in `devices`.
    pub unsupported: bool,
    /// Devices whose app is older than `min_app_version`: told
    /// `call.unsupported` instead of rung.
    pub outdated: Vec<String>,
}

/// What happened, for the participants' devices (`call.*` events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    Ringing { user_id: String },
    Accepted { user_id: String, device_id: String },
    Declined { user_id: String },
    Busy { user_id: String },
    Missed { user_id: String },
    Connected,
    ParticipantLeft { user_id: String },
    Ended { reason: EndReason },
}

/// What the shell must do after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Ring {
        user_id: String,
        device_id: String,
    },
    StopRing {
        user_id: String,
        device_id: String,
        reason: StopReason,
    },
    /// The device's app is too old to take the call: it is told so
    /// (`call.unsupported`) instead of rung.
    Unsupported {
        user_id: String,
        device_id: String,
    },
    /// Tell every participant's devices.
    Event(CallEvent),
}

/// A request the machine refuses; nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// The user is not in this call (403).
    NotParticipant,
    /// Only the caller may cancel, only callees may accept or decline (403).
    WrongRole,
    /// The call already ended (409).
    Ended,
    /// Another device of this user answered first (409 answered_elsewhere).
    AnsweredElsewhere,
    /// The user already declined (409).
    AlreadyDeclined,
    /// Too late to cancel: someone answered; end the call instead (409).
    AlreadyAnswered,
    /// The device was not rung for this call (403).
    UnknownDevice,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            CallError::NotParticipant => "not a participant of this call",
            CallError::WrongRole => "not allowed for your role in this call",
            CallError::Ended => "the call has ended",
            CallError::AnsweredElsewhere => "answered on another device",
            CallError::AlreadyDeclined => "already declined",
            CallError::AlreadyAnswered => "already answered: end the call instead",
            CallError::UnknownDevice => "this device was not rung for the call",
        };
        f.write_str(s)
    }
}

/// What an accepted `accept` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// This request won.
    Now,
    /// The same device had already accepted: a retry, nothing changed.
    Already,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    pub call_id: String,
    pub call_type: CallType,
    pub state: CallState,
    pub initiator_user_id: String,
    pub participants: Vec<Participant>,
    pub created_at: UnixMillis,
    pub answered_at: Option<UnixMillis>,
    pub connected_at: Option<UnixMillis>,
    pub ended_at: Option<UnixMillis>,
    pub end_reason: Option<EndReason>,
    pub ring_deadline: Option<UnixMillis>,
    pub connect_deadline: Option<UnixMillis>,
    pub timeouts: Timeouts,
    /// How callees' phones show the caller (push payload only).
    #[serde(default)]
    pub caller_display: CallerDisplay,
    /// Its members' call tokens allow sending on the room's data channels.
    /// Absent in calls stored before data channels: not allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub data_channels: bool,
    /// The node hosting the call's room (`crate::placement`); absent in
    /// calls stored before placement and on nodes without a registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<crate::placement::Placement>,
}

/// The caller as the callee's incoming-call UI shows it, as the caller's
/// app gave it. Optional: the app falls back to its own contacts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallerDisplay {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
}

impl Call {
    /// Moves the room to `to` if it is still where `from` put it (a racing
    /// request may have moved it already: then it stays where that one
    /// put it). An ended call's room stays where it was.
    pub fn move_room(
        &mut self,
        from: &crate::placement::Placement,
        to: crate::placement::Placement,
    ) {
        if self.state != CallState::Ended && self.placement.as_ref() == Some(from) {
            self.placement = Some(to);
        }
    }

    /// Creates a call and rings the callees' devices. A call nobody can be
    /// rung for ends at once (`busy`, `unsupported` or `no_devices`).
    pub fn create(
        call_id: String,
        call_type: CallType,
        caller: (String, String, String),
        callees: Vec<Callee>,
        timeouts: Timeouts,
        now: UnixMillis,
    ) -> (Call, Vec<Effect>) {
        let (caller_user, caller_participant, caller_device) = caller;
        let mut participants = vec![Participant {
            participant_id: caller_participant,
            user_id: caller_user.clone(),
            role: Role::Host,
            state: ParticipantState::Accepted,
            device_id: Some(caller_device),
            in_media: false,
            rings: Vec::new(),
        }];
        let mut effects = Vec::new();
        let unsupported = callees.iter().any(|c| c.unsupported && !c.busy);
        for callee in callees {
            let state = if callee.busy {
                ParticipantState::Busy
            } else if callee.devices.is_empty() {
                ParticipantState::Missed
            } else {
                ParticipantState::Ringing
            };
            let rings = if state == ParticipantState::Ringing {
                callee.devices.iter().map(|d| Ring::sent(d, now)).collect()
            } else {
                Vec::new()
            };
            if !callee.busy {
                effects.extend(callee.outdated.iter().map(|device| Effect::Unsupported {
                    user_id: callee.user_id.clone(),
                    device_id: device.clone(),
                }));
            }
            for ring in &rings {
                effects.push(Effect::Ring {
                    user_id: callee.user_id.clone(),
                    device_id: ring.device_id.clone(),
                });
            }
            match state {
                ParticipantState::Busy => effects.push(Effect::Event(CallEvent::Busy {
                    user_id: callee.user_id.clone(),
                })),
                ParticipantState::Ringing => effects.push(Effect::Event(CallEvent::Ringing {
                    user_id: callee.user_id.clone(),
                })),
                _ => {}
            }
            participants.push(Participant {
                participant_id: callee.participant_id,
                user_id: callee.user_id,
                role: Role::Member,
                state,
                device_id: None,
                in_media: false,
                rings,
            });
        }
        let mut call = Call {
            call_id,
            call_type,
            state: CallState::Created,
            initiator_user_id: caller_user,
            participants,
            created_at: now,
            answered_at: None,
            connected_at: None,
            ended_at: None,
            end_reason: None,
            ring_deadline: None,
            connect_deadline: None,
            timeouts,
            caller_display: CallerDisplay::default(),
            data_channels: false,
            placement: None,
        };
        let callees = || call.participants.iter().filter(|p| p.role == Role::Member);
        if callees().any(|p| p.state == ParticipantState::Ringing) {
            call.state = CallState::Ringing;
            call.ring_deadline = Some(now + timeouts.ring_ms);
        } else {
            let reason = if callees().any(|p| p.state == ParticipantState::Busy) {
                EndReason::Busy
            } else if unsupported {
                EndReason::Unsupported
            } else {
                EndReason::NoDevices
            };
            call.finish(reason, now, &mut effects);
        }
        (call, effects)
    }

    /// The earliest time [`Call::handle_timeout`] has something to do.
    pub fn next_deadline(&self) -> Option<UnixMillis> {
        match self.state {
            CallState::Ringing => self.ring_deadline,
            CallState::Connected => self.connect_deadline,
            CallState::Connecting => {
                // Callees still ringing in a group call time out too.
                match (self.connect_deadline, self.ring_deadline) {
                    (Some(c), Some(r)) if self.anyone_ringing() => Some(c.min(r)),
                    (c, _) => c,
                }
            }
            _ => None,
        }
    }

    pub fn participant(&self, user_id: &str) -> Option<&Participant> {
        self.participants.iter().find(|p| p.user_id == user_id)
    }

    fn index_of(&self, user_id: &str) -> Result<usize, CallError> {
        self.participants
            .iter()
            .position(|p| p.user_id == user_id)
            .ok_or(CallError::NotParticipant)
    }

    fn anyone_ringing(&self) -> bool {
        self.participants
            .iter()
            .any(|p| p.state == ParticipantState::Ringing)
    }

    /// The device acknowledged the ring: its call UI is showing.
    pub fn acknowledge_ring(
        &mut self,
        user_id: &str,
        device_id: &str,
        now: UnixMillis,
    ) -> Result<(), CallError> {
        let i = self.index_of(user_id)?;
        let ring = self.participants[i]
            .rings
            .iter_mut()
            .find(|r| r.device_id == device_id)
            .ok_or(CallError::UnknownDevice)?;
        if ring.state == RingState::Sent {
            ring.state = RingState::Acknowledged;
            ring.acknowledged_at = Some(now);
        }
        Ok(())
    }

    /// First accept wins. The same device accepting again is a retry.
    pub fn accept(
        &mut self,
        user_id: &str,
        device_id: &str,
        now: UnixMillis,
        effects: &mut Vec<Effect>,
    ) -> Result<Accepted, CallError> {
        let i = self.index_of(user_id)?;
        let p = &self.participants[i];
        if p.role != Role::Member {
            return Err(CallError::WrongRole);
        }
        match p.state {
            ParticipantState::Accepted if p.device_id.as_deref() == Some(device_id) => {
                return Ok(Accepted::Already);
            }
            ParticipantState::Accepted => return Err(CallError::AnsweredElsewhere),
            ParticipantState::Declined => return Err(CallError::AlreadyDeclined),
            _ => {}
        }
        if self.state == CallState::Ended {
            return Err(CallError::Ended);
        }
        if p.state != ParticipantState::Ringing {
            // Missed, busy or left: too late to pick up.
            return Err(CallError::Ended);
        }
        if !p.rings.iter().any(|r| r.device_id == device_id) {
            return Err(CallError::UnknownDevice);
        }
        let p = &mut self.participants[i];
        p.state = ParticipantState::Accepted;
        p.device_id = Some(device_id.to_string());
        let user = p.user_id.clone();
        mark_ring(p, device_id, RingState::Answered, now);
        stop_rings(p, StopReason::AnsweredElsewhere, effects);
        effects.push(Effect::Event(CallEvent::Accepted {
            user_id: user,
            device_id: device_id.to_string(),
        }));
        if self.state == CallState::Ringing {
            self.state = CallState::Connecting;
            self.answered_at = Some(now);
            self.connect_deadline = Some(now + self.timeouts.connect_ms);
        }
        Ok(Accepted::Now)
    }

    /// A calls B while B calls A: B's own call attempt answers A's call, on
    /// the device B is calling from (which may not have been rung).
    pub fn accept_crossed(
        &mut self,
        user_id: &str,
        device_id: &str,
        now: UnixMillis,
        effects: &mut Vec<Effect>,
    ) -> Result<Accepted, CallError> {
        let i = self.index_of(user_id)?;
        let p = &mut self.participants[i];
        if p.state == ParticipantState::Ringing && !p.rings.iter().any(|r| r.device_id == device_id)
        {
            p.rings.push(Ring::sent(device_id, now));
        }
        self.accept(user_id, device_id, now, effects)
    }

    pub fn decline(
        &mut self,
        user_id: &str,
        device_id: &str,
        now: UnixMillis,
        effects: &mut Vec<Effect>,
    ) -> Result<(), CallError> {
        let i = self.index_of(user_id)?;
        let p = &self.participants[i];
        if p.role != Role::Member {
            return Err(CallError::WrongRole);
        }
        match p.state {
            ParticipantState::Declined => return Ok(()),
            ParticipantState::Accepted => return Err(CallError::AlreadyAnswered),
            _ => {}
        }
        if self.state == CallState::Ended || p.state != ParticipantState::Ringing {
            return Err(CallError::Ended);
        }
        if !p.rings.iter().any(|r| r.device_id == device_id) {
            return Err(CallError::UnknownDevice);
        }
        let p = &mut self.participants[i];
        p.state = ParticipantState::Declined;
        let user = p.user_id.clone();
        mark_ring(p, device_id, RingState::Declined, now);
        stop_rings(p, StopReason::DeclinedElsewhere, effects);
        effects.push(Effect::Event(CallEvent::Declined { user_id: user }));
        self.end_if_nobody_left(EndReason::Declined, now, effects);
        Ok(())
    }

    /// The caller gives up before anyone answered.
    pub fn cancel(
        &mut self,
        user_id: &str,
        now: UnixMillis,
        effects: &mut Vec<Effect>,
    ) -> Result<(), CallError> {
        let i = self.index_of(user_id)?;
        if self.participants[i].role != Role::Host {
            return Err(CallError::WrongRole);
        }
        match self.state {
            CallState::Ended if self.end_reason == Some(EndReason::CallerCancelled) => Ok(()),
            CallState::Ended => Err(CallError::Ended),
            CallState::Created | CallState::Ringing => {
                self.finish(EndReason::CallerCancelled, now, effects);
                Ok(())
            }
            CallState::Connecting | CallState::Connected => Err(CallError::AlreadyAnswered),
        }
    }

    /// A participant hangs up. The caller ending a ringing call cancels it; a
    /// ringing callee ending it declines.
    pub fn end(
        &mut self,
        user_id: &str,
        now: UnixMillis,
        effects: &mut Vec<Effect>,
    ) -> Result<(), CallError> {
        let i = self.index_of(user_id)?;
        if self.state == CallState::Ended {
            return Ok(()); // ending an ended call is a retry
        }
        let p = &self.participants[i];
        match (p.role, p.state, self.state) {
            (Role::Host, _, CallState::Ringing | CallState::Created) => {
                self.finish(EndReason::CallerCancelled, now, effects);
                Ok(())
            }
            (Role::Member, ParticipantState::Ringing, _) => {
                let device = p
                    .rings
                    .first()
                    .map(|r| r.device_id.clone())
                    .unwrap_or_default();
                self.decline(user_id, &device, now, effects)
            }
            (_, ParticipantState::Accepted, _) => {
                self.leave(i, EndReason::Completed, now, effects);
                Ok(())
            }
            // Declined, missed, busy or already left: nothing to end.
            _ => Ok(()),
        }
    }

    /// The feature flags changed: `device_ids` of ringing callee `user_id`
    /// may ring no more. Each stops with `unsupported`; a callee left with
    /// no device ringing is out of the call (missed, without a missed-call
    /// event: nobody was offered it), and a call nobody is left to ring
    /// ends `unsupported`. Answered and connected calls are not touched.
    pub fn withdraw_rings(
        &mut self,
        user_id: &str,
        device_ids: &[String],
        now: UnixMillis,
        effects: &mut Vec<Effect>,
    ) {
        let Ok(i) = self.index_of(user_id) else {
            return;
        };
        let p = &mut self.participants[i];
        if self.state != CallState::Ringing || p.state != ParticipantState::Ringing {
            return;
        }
        for ring in &mut p.rings {
            if ring.state.is_done() || !device_ids.contains(&ring.device_id) {
                continue;
            }
            ring.state = RingState::Stopped(StopReason::Unsupported);
            effects.push(Effect::StopRing {
                user_id: p.user_id.clone(),
                device_id: ring.device_id.clone(),
                reason: StopReason::Unsupported,
            });
        }
        if p.rings.iter().all(|r| r.state.is_done()) {
            p.state = ParticipantState::Missed;
            self.end_if_nobody_left(EndReason::Unsupported, now, effects);
        }
    }

    /// The SFU says this participant's media connected.
    pub fn media_connected(&mut self, user_id: &str, now: UnixMillis, effects: &mut Vec<Effect>) {
        let Ok(i) = self.index_of(user_id) else {
            return;
        };
        if self.participants[i].state != ParticipantState::Accepted {
            return;
        }
        self.participants[i].in_media = true;
        let in_media = self.in_media_count();
        if self.state == CallState::Connected && in_media >= 2 {
            // Back after a restart: no more deadline.
            self.connect_deadline = None;
        }
        if self.state == CallState::Connecting && in_media >= 2 {
            self.state = CallState::Connected;
            self.connected_at = Some(now);
            self.connect_deadline = None;
            effects.push(Effect::Event(CallEvent::Connected));
        }
    }

    /// The media plane restarted (the server process did): nobody is in a
    /// room any more. A connected call stays connected if at least two of its
    /// participants are back in the room within `grace_ms`, else it fails.
    pub fn media_restarted(&mut self, now: UnixMillis, grace_ms: u64) {
        if self.state == CallState::Ended {
            return;
        }
        for p in &mut self.participants {
            p.in_media = false;
        }
        if self.state == CallState::Connected {
            self.connect_deadline = Some(now + grace_ms);
        }
    }

    fn in_media_count(&self) -> usize {
        self.participants
            .iter()
            .filter(|p| p.state == ParticipantState::Accepted && p.in_media)
            .count()
    }

    /// The SFU removed this participant (left, or its grace period ran out).
    /// A participant merely reconnecting is not reported here: the call goes on.
    pub fn media_left(&mut self, user_id: &str, now: UnixMillis, effects: &mut Vec<Effect>) {
        let Ok(i) = self.index_of(user_id) else {
            return;
        };
        if self.state == CallState::Ended
            || self.participants[i].state != ParticipantState::Accepted
        {
            return;
        }
        if !self.participants[i].in_media {
            return;
        }
        // Media lost before the call ever connected is a failure.
        let reason = if self.state == CallState::Connected {
            EndReason::Completed
        } else {
            EndReason::Failed
        };
        self.leave(i, reason, now, effects);
    }

    /// Participant `i` hangs up or drops; the call ends (with `reason`) when
    /// all but one have left and nobody else is still being rung.
    fn leave(&mut self, i: usize, reason: EndReason, now: UnixMillis, effects: &mut Vec<Effect>) {
        let p = &mut self.participants[i];
        p.state = ParticipantState::Left;
        p.in_media = false;
        let user = p.user_id.clone();
        effects.push(Effect::Event(CallEvent::ParticipantLeft { user_id: user }));
        let remaining = self
            .participants
            .iter()
            .filter(|p| p.state == ParticipantState::Accepted)
            .count();
        let waiting_for_someone = remaining == 1 && self.anyone_ringing();
        if remaining <= 1 && !waiting_for_someone {
            self.finish(reason, now, effects);
        }
    }

    /// Fires the ring and connect timers whose time has come.
    pub fn handle_timeout(&mut self, now: UnixMillis, effects: &mut Vec<Effect>) {
        if self.state == CallState::Ended {
            return;
        }
        if self.ring_deadline.is_some_and(|d| d <= now) && self.anyone_ringing() {
            for p in &mut self.participants {
                if p.state == ParticipantState::Ringing {
                    p.state = ParticipantState::Missed;
                    let user = p.user_id.clone();
                    stop_rings(p, StopReason::Missed, effects);
                    effects.push(Effect::Event(CallEvent::Missed { user_id: user }));
                }
            }
            if self.state == CallState::Ringing {
                self.finish(EndReason::Timeout, now, effects);
                return;
            }
        }
        if self.connect_deadline.is_some_and(|d| d <= now) {
            match self.state {
                CallState::Connecting => self.finish(EndReason::Failed, now, effects),
                // After a restart: did they come back?
                CallState::Connected if self.in_media_count() < 2 => {
                    self.finish(EndReason::Failed, now, effects)
                }
                CallState::Connected => self.connect_deadline = None,
                _ => {}
            }
        }
    }

    /// Ends the call if no callee is ringing or in it any more.
    fn end_if_nobody_left(
        &mut self,
        reason: EndReason,
        now: UnixMillis,
        effects: &mut Vec<Effect>,
    ) {
        let callee_alive = self.participants.iter().any(|p| {
            p.role == Role::Member
                && matches!(
                    p.state,
                    ParticipantState::Ringing | ParticipantState::Accepted
                )
        });
        if !callee_alive {
            self.finish(reason, now, effects);
        }
    }

    /// Ends the call: every ring stops, everyone still ringing missed it.
    fn finish(&mut self, reason: EndReason, now: UnixMillis, effects: &mut Vec<Effect>) {
        if self.state == CallState::Ended {
            return;
        }
        let stop = match reason {
            EndReason::CallerCancelled => StopReason::CallerCancelled,
            EndReason::Timeout => StopReason::Missed,
            _ => StopReason::CallEnded,
        };
        for p in &mut self.participants {
            stop_rings(p, stop, effects);
            p.state = match p.state {
                ParticipantState::Ringing | ParticipantState::Invited => ParticipantState::Missed,
                ParticipantState::Accepted => ParticipantState::Left,
                s => s,
            };
            p.in_media = false;
        }
        self.state = CallState::Ended;
        self.end_reason = Some(reason);
        self.ended_at = Some(now);
        self.ring_deadline = None;
        self.connect_deadline = None;
        effects.push(Effect::Event(CallEvent::Ended { reason }));
    }
}

/// Records what one device did with its ring.
fn mark_ring(p: &mut Participant, device_id: &str, state: RingState, now: UnixMillis) {
    if let Some(ring) = p.rings.iter_mut().find(|r| r.device_id == device_id) {
        ring.state = state;
        ring.acknowledged_at.get_or_insert(now);
    }
}

/// Stops every ring of `p` still live, telling each device why.
fn stop_rings(p: &mut Participant, reason: StopReason, effects: &mut Vec<Effect>) {
    for ring in &mut p.rings {
        if ring.state.is_done() {
            continue;
        }
        ring.state = RingState::Stopped(reason);
        effects.push(Effect::StopRing {
            user_id: p.user_id.clone(),
            device_id: ring.device_id.clone(),
            reason,
        });
    }
}
