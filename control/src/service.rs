//! Call operations over the store: read a call, run the state machine, write
//! it back by compare-and-set (retrying on a lost race) with the webhook
//! events the change makes, and hand the effects to the ringer.
//! Synchronous; the state machine's clock is the caller's `now` (only the
//! events' `occurredAt` of an `update` reads the wall clock); the HTTP
//! layer runs these on blocking threads.

use std::sync::Arc;

use crate::call::{
    Accepted, Call, CallError, CallType, Callee, CallerDisplay, Effect, Timeouts, UnixMillis,
};
use crate::device::Device;
use crate::flags::{FlagSet, Reach, Subject};
use crate::store::{Insertion, Store, StoreError};

/// How many devices of each callee ring (most recently seen first).
pub const DEFAULT_MAX_RINGING_DEVICES: usize = 3;

/// Lost compare-and-set races a request retries before giving up (each retry
/// re-reads the call, so this only runs out under pathological contention).
const MAX_CAS_RETRIES: usize = 16;

/// Where ring, stop-ring and call events go (WebSocket and push senders).
pub trait Ringer: Send + Sync {
    fn deliver(&self, call: &Call, effects: &[Effect]);
}

/// A ringer that only logs (until the device WebSocket and push senders exist).
pub struct LoggingRinger;

impl Ringer for LoggingRinger {
    fn deliver(&self, call: &Call, effects: &[Effect]) {
        for effect in effects {
            match effect {
                Effect::Ring { user_id, device_id } => {
                    tracing::info!(call_id = %call.call_id, %user_id, %device_id, "ring")
                }
                Effect::StopRing {
                    user_id,
                    device_id,
                    reason,
                } => {
                    tracing::info!(call_id = %call.call_id, %user_id, %device_id, ?reason, "stop ring")
                }
                Effect::Unsupported { user_id, device_id } => {
                    tracing::info!(call_id = %call.call_id, %user_id, %device_id, "app too old to ring")
                }
                Effect::Event(event) => {
                    tracing::info!(call_id = %call.call_id, ?event, "call event")
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Call(CallError),
    #[error("no such call")]
    NotFound,
    #[error("the call is too contended; retry")]
    Contended,
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<CallError> for ServiceError {
    fn from(e: CallError) -> ServiceError {
        ServiceError::Call(e)
    }
}

pub struct CallService {
    pub store: Arc<dyn Store>,
    pub ringer: Arc<dyn Ringer>,
    pub metrics: Option<Arc<crate::metrics::CallMetrics>>,
    pub timeouts: Timeouts,
    pub max_ringing_devices: usize,
    /// The app backend's call-event webhook endpoints: each stored change of
    /// a call queues its events for them in the same write (`webhooks`).
    pub event_webhooks: Vec<crate::webhooks::Endpoint>,
    /// Places new calls' rooms on nodes; `None`: rooms are not placed
    /// (call control on its own, in tests).
    pub placer: Option<Arc<crate::placement::Placer>>,
    /// The feature flags as this node last read them.
    pub flags: FlagCache,
    /// Devices on an older app are told `call.unsupported` instead of
    /// rung (a dotted version, `flags::valid_version`).
    pub min_app_version: Option<String>,
    /// What a video call does when the flags keep video from a device
    /// that could take the call as audio.
    pub video_fallback: VideoFallback,
}

/// What a video call does when `video_calls` is off for one of the
/// callees' devices but audio calls are on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VideoFallback {
    /// The whole call becomes an audio call (the caller sees `callType`
    /// `audio` in the answer), so every device can take it.
    #[default]
    Audio,
    /// Devices without video are not rung; a call none is left to ring
    /// ends `unsupported`.
    Refuse,
}

/// How old the flags a node acts on may be: a change reaches every node
/// within this (and at once on the node that made it).
pub const FLAG_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// The feature flags as this node last read them from the store, read
/// again when older than [`FLAG_REFRESH`]. Each new set is also published
/// to the events sockets ([`FlagCache::subscribe`]), which tell their
/// devices what changed for them.
pub struct FlagCache {
    read: std::sync::Mutex<Option<(std::time::Instant, Arc<FlagSet>)>>,
    published: tokio::sync::watch::Sender<Arc<FlagSet>>,
}

impl Default for FlagCache {
    fn default() -> FlagCache {
        FlagCache {
            read: std::sync::Mutex::default(),
            published: tokio::sync::watch::Sender::new(Arc::default()),
        }
    }
}

impl FlagCache {
    /// The flags as they change (a set differing from the one before).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<FlagSet>> {
        self.published.subscribe()
    }

    pub fn get(&self, store: &dyn Store) -> Result<Arc<FlagSet>, ServiceError> {
        let now = std::time::Instant::now();
        if let Some((at, set)) = &*self.read.lock().unwrap_or_else(|e| e.into_inner())
            && now.duration_since(*at) < FLAG_REFRESH
        {
            return Ok(set.clone());
        }
        self.refresh(store)
    }

    /// Reads the flags now, whatever the age of the last read, and
    /// publishes them if they changed.
    pub fn refresh(&self, store: &dyn Store) -> Result<Arc<FlagSet>, ServiceError> {
        let now = std::time::Instant::now();
        let set = Arc::new(FlagSet {
            flags: store.flags()?.into_iter().map(|f| f.value).collect(),
        });
        *self.read.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, set.clone()));
        self.published.send_if_modified(|published| {
            let changed = **published != *set;
            if changed {
                *published = set.clone();
            }
            changed
        });
        Ok(set)
    }
}

/// The most people one call rings.
pub const MAX_CALLEES: usize = 16;

/// Who a call may ring: 1-[`MAX_CALLEES`] distinct users, not the caller.
/// Checked before anything is charged or stored.
pub fn check_callees(caller: &str, callees: &[String]) -> Result<(), ServiceError> {
    if callees.is_empty() || callees.len() > MAX_CALLEES {
        return Err(ServiceError::Invalid("1-16 callees"));
    }
    if callees.iter().any(|c| c == caller) {
        return Err(ServiceError::Invalid("you cannot call yourself"));
    }
    let distinct: std::collections::HashSet<&String> = callees.iter().collect();
    if distinct.len() != callees.len() {
        return Err(ServiceError::Invalid("a callee is named twice"));
    }
    Ok(())
}

/// A call to create: from `caller` on `device_id` to `callees`.
pub struct NewCall<'a> {
    pub call_id: String,
    pub caller: &'a str,
    pub device_id: &'a str,
    pub callees: &'a [String],
    pub call_type: CallType,
    pub caller_display: CallerDisplay,
    /// Members may send on the room's data channels (`publishData`).
    pub data_channels: bool,
    /// Where the caller is (`X-Switchboard-Region`); else their device's
    /// registered hint.
    pub caller_region: Option<&'a str>,
}

impl CallService {
    pub fn create(&self, new: NewCall<'_>, now: UnixMillis) -> Result<Call, ServiceError> {
        let NewCall {
            call_id,
            caller,
            device_id,
            callees,
            call_type,
            caller_display,
            data_channels,
            caller_region,
        } = new;
        check_callees(caller, callees)?;
        let mut list = Vec::with_capacity(callees.len());
        // The caller's region first: it breaks ties (`placement::choose`).
        // Gathered only where there is a choice of region (each hint can
        // cost a store read).
        let mut regions = Vec::new();
        let regions_matter = self.placer.as_ref().is_some_and(|p| p.regions_matter());
        if regions_matter {
            regions.extend(match caller_region {
                Some(region) => Some(region.to_string()),
                None => self
                    .store
                    .devices_of(caller)?
                    .into_iter()
                    .find(|d| d.device_id == device_id)
                    .and_then(|d| d.region),
            });
        }
        let flags = self.flags.get(&*self.store)?;
        let mut reached = Vec::with_capacity(callees.len());
        for user in callees {
            let devices = self.store.devices_of(user)?;
            if regions_matter {
                // Their most recently seen device with a hint speaks for them.
                regions.extend(devices.iter().find_map(|d| d.region.clone()));
            }
            reached.push((user, devices));
        }
        let reach = |device: &Device, video: bool| {
            flags.reach(&Subject::of(device), video, self.min_app_version.as_deref())
        };
        // A device the flags keep from video but not from audio: offered
        // as audio (the whole call), or left out, as configured.
        let call_type = if call_type == CallType::Video
            && self.video_fallback == VideoFallback::Audio
            && reached
                .iter()
                .flat_map(|(_, devices)| devices)
                .any(|d| reach(d, true) == Reach::Off && reach(d, false) == Reach::Ring)
        {
            CallType::Audio
        } else {
            call_type
        };
        let video = call_type == CallType::Video;
        for (user, devices) in reached {
            let registered = !devices.is_empty();
            let mut ring = Vec::new();
            let mut outdated = Vec::new();
            for device in devices {
                match reach(&device, video) {
                    Reach::Ring if ring.len() < self.max_ringing_devices => {
                        ring.push(device.device_id)
                    }
                    Reach::Outdated => outdated.push(device.device_id),
                    Reach::Ring | Reach::Off => {}
                }
            }
            list.push(Callee {
                user_id: user.clone(),
                participant_id: participant_id(&call_id, user),
                unsupported: registered && ring.is_empty(),
                devices: ring,
                outdated,
                busy: self.in_connected_call(user)?,
            });
        }
        let (mut call, effects) = Call::create(
            call_id.clone(),
            call_type,
            (
                caller.to_string(),
                participant_id(&call_id, caller),
                device_id.to_string(),
            ),
            list,
            self.timeouts,
            now,
        );
        call.caller_display = caller_display;
        call.data_channels = data_channels;
        if let Some(placer) = &self.placer
            && call.state != crate::call::CallState::Ended
        {
            let regions: Vec<&str> = regions.iter().map(String::as_str).collect();
            call.placement = placer.place(&regions);
        }
        // Crossed calls: the callee is already ringing the caller. One call
        // results: the first one, answered by this attempt. The store checks
        // and inserts in one atomic step (two crossed creates at the same
        // instant, on any nodes, cannot both miss each other).
        let events = self.events(None, &call, now);
        if let Insertion::Crossed { call_id: crossed } =
            self.store.insert_call_with_events(&call, &events)?
        {
            let (call, _) = self.update(&crossed, |c, fx| {
                c.accept_crossed(caller, device_id, now, fx)
            })?;
            return Ok(call);
        }
        if let Some(m) = &self.metrics {
            m.observe(None, &call);
            self.observe_rollout(m, None, &call);
        }
        trace_transition(None, &call);
        self.ringer.deliver(&call, &effects);
        Ok(call)
    }

    /// Whether the designated rollout flag is on for `device` (None: no
    /// flag is designated, or the flags cannot be read).
    pub fn rollout_cohort(&self, device: &Device) -> Option<bool> {
        let flag = self.metrics.as_ref()?.rollout.flag()?;
        let flags = self.flags.get(&*self.store).ok()?;
        Some(flags.is_on(flag, &Subject::of(device)))
    }

    fn rollout_cohort_of(&self, user: &str, device_id: &str) -> Option<bool> {
        self.metrics.as_ref()?.rollout.flag()?;
        let devices = self.store.devices_of(user).ok()?;
        let device = devices.iter().find(|d| d.device_id == device_id)?;
        self.rollout_cohort(device)
    }

    /// The rollout measures of one change of a call: each callee's
    /// outcome when it ends, each ring's time to the call UI. Costs store
    /// reads only with a rollout flag designated.
    fn observe_rollout(
        &self,
        metrics: &crate::metrics::CallMetrics,
        before: Option<&Call>,
        after: &Call,
    ) {
        use crate::call::{CallState, Role};
        if metrics.rollout.flag().is_none() {
            return;
        }
        for (p, ring, shown_at) in crate::metrics::rings_shown(before, after) {
            if let Some(on) = self.rollout_cohort_of(&p.user_id, &ring.device_id) {
                let seconds = shown_at.saturating_sub(ring.sent_at) as f64 / 1000.0;
                metrics.rollout.ui_shown(on, seconds);
            }
        }
        let ended_now =
            after.state == CallState::Ended && before.is_none_or(|b| b.state != CallState::Ended);
        if !ended_now {
            return;
        }
        for p in &after.participants {
            if p.role != Role::Member {
                continue;
            }
            // The device that answered, else the first one rung (a callee
            // never rung, busy or without devices, is not counted).
            let Some(device) = p
                .device_id
                .as_deref()
                .or(p.rings.first().map(|r| r.device_id.as_str()))
            else {
                continue;
            };
            let outcome = match (p.device_id.is_some(), after.connected_at.is_some()) {
                (true, true) => "connected",
                (true, false) => "answered_not_connected",
                (false, _) => "not_answered",
            };
            if let Some(on) = self.rollout_cohort_of(&p.user_id, device) {
                metrics.rollout.callee_outcome(on, outcome);
            }
        }
    }

    /// The webhook rows for one change of a call (none without endpoints).
    fn events(
        &self,
        before: Option<&Call>,
        after: &Call,
        now: UnixMillis,
    ) -> Vec<crate::store::NewEvent> {
        if self.event_webhooks.is_empty() {
            return Vec::new();
        }
        let events = crate::webhooks::events_between(before, after);
        crate::webhooks::for_endpoints(&self.event_webhooks, Some(&after.call_id), events, now)
    }

    /// The platform `user` registered `device_id` with; None for a device
    /// not (or no longer) registered, such as a browser without push.
    pub fn platform_of(&self, user: &str, device_id: &str) -> Option<crate::device::Platform> {
        let devices = self.store.devices_of(user).ok()?;
        devices
            .into_iter()
            .find(|d| d.device_id == device_id)
            .map(|d| d.platform)
    }

    fn in_connected_call(&self, user: &str) -> Result<bool, ServiceError> {
        use crate::call::{CallState, ParticipantState};
        Ok(self.store.live_calls_of(user)?.iter().any(|c| {
            c.state == CallState::Connected
                && c.participant(user)
                    .is_some_and(|p| p.state == ParticipantState::Accepted)
        }))
    }

    /// Reads the call, applies `f`, writes by compare-and-set; on a lost race
    /// re-reads and applies again. Effects go out only for the write that won.
    pub fn update<T>(
        &self,
        call_id: &str,
        mut f: impl FnMut(&mut Call, &mut Vec<Effect>) -> Result<T, CallError>,
    ) -> Result<(Call, T), ServiceError> {
        for _ in 0..MAX_CAS_RETRIES {
            let read = self
                .store
                .get_call(call_id)?
                .ok_or(ServiceError::NotFound)?;
            let mut call = read.value.clone();
            let mut effects = Vec::new();
            let out = f(&mut call, &mut effects)?;
            if call == read.value {
                // Nothing changed (a retry, or a no-op): no write, no effects.
                return Ok((call, out));
            }
            let events = self.events(Some(&read.value), &call, crate::unix_millis());
            if self
                .store
                .update_call_with_events(&call, read.version, &events)?
            {
                if let Some(m) = &self.metrics {
                    m.observe(Some(&read.value), &call);
                    self.observe_rollout(m, Some(&read.value), &call);
                }
                trace_transition(Some(&read.value), &call);
                self.ringer.deliver(&call, &effects);
                return Ok((call, out));
            }
        }
        Err(ServiceError::Contended)
    }

    /// The call with its room on a live node: a room whose node is gone
    /// (stopped heartbeating) moves, by compare-and-set, so participants
    /// asking at once all get the node the first of them chose.
    pub fn with_live_room(&self, call: Call) -> Result<Call, ServiceError> {
        let (Some(placer), Some(placed)) = (&self.placer, &call.placement) else {
            return Ok(call);
        };
        if call.state == crate::call::CallState::Ended || placer.is_alive(placed) {
            return Ok(call);
        }
        let Some(to) = placer.move_from(placed) else {
            // No active node at all: the join info still names the old
            // one; its joins fail until a node is back.
            return Ok(call);
        };
        let from = placed.clone();
        let grace = self.timeouts.connect_ms;
        let now = crate::unix_millis();
        let (call, ()) = self.update(&call.call_id, |c, _| {
            if c.placement.as_ref() == Some(&from) {
                // Nobody is in the new room yet: as after a restart, two
                // must be back within the connect timeout or it fails.
                c.media_restarted(now, grace);
            }
            c.move_room(&from, to.clone());
            Ok(())
        })?;
        if call.placement.as_ref() == Some(&to) {
            tracing::info!(call_id = %call.call_id, from = %from.node_id, to = %to.node_id, epoch = to.epoch, "room moved off a node that is gone");
        }
        Ok(call)
    }

    /// Calls whose room is on a node that `gone` says is gone lost their
    /// media with it: as after a restart, two participants must be back in
    /// a room (wherever a fresh token moves it) within the connect timeout,
    /// as after an answer, or the call's timer ends it `failed`, from any
    /// node. Marked once: a call nobody is in media for is left alone.
    /// Returns how many it marked.
    pub fn reap_rooms_of_gone_nodes(
        &self,
        now: UnixMillis,
        mut gone: impl FnMut(&str) -> bool,
    ) -> Result<usize, ServiceError> {
        let grace_ms = self.timeouts.connect_ms;
        let mut marked = 0;
        for call in self.store.live_calls()? {
            let call = call.value;
            let Some(placed) = call.placement.clone() else {
                continue;
            };
            if !call.participants.iter().any(|p| p.in_media) || !gone(&placed.node_id) {
                continue;
            }
            let (after, ()) = self.update(&call.call_id, |c, _| {
                if c.placement.as_ref() == Some(&placed) {
                    c.media_restarted(now, grace_ms);
                }
                Ok(())
            })?;
            if after.participants.iter().all(|p| !p.in_media) {
                tracing::warn!(call_id = %call.call_id, node_id = %placed.node_id, grace_ms, "the call's room was on a node that is gone: it ends unless its people rejoin");
                marked += 1;
            }
        }
        Ok(marked)
    }

    pub fn accept(
        &self,
        call_id: &str,
        user: &str,
        device: &str,
        now: UnixMillis,
    ) -> Result<(Call, Accepted), ServiceError> {
        self.update(call_id, |c, fx| c.accept(user, device, now, fx))
    }

    /// After a restart: the media plane is empty, so every live call is told
    /// (connected ones get `grace_ms` to come back), then overdue timers
    /// fire. Ringing and connecting calls keep their persisted deadlines.
    pub fn recover(&self, now: UnixMillis, grace_ms: u64) -> Result<usize, ServiceError> {
        let live = self.store.live_calls()?;
        for call in &live {
            self.update(&call.value.call_id, |c, _| {
                c.media_restarted(now, grace_ms);
                Ok(())
            })?;
        }
        self.fire_timers(now)?;
        Ok(live.len())
    }

    /// After a flag change: every device still ringing that the flags
    /// (or `min_app_version`) would not ring now stops, with the reason
    /// `unsupported` (`Call::withdraw_rings`). Connected calls go on.
    /// Returns how many calls changed. Run by the node that made the
    /// change, with the flags just read.
    pub fn withdraw_forbidden_rings(&self, now: UnixMillis) -> Result<usize, ServiceError> {
        let flags = self.flags.get(&*self.store)?;
        let mut changed = 0;
        for call in self.store.live_calls()? {
            let call = call.value;
            if call.state != crate::call::CallState::Ringing {
                continue;
            }
            let video = call.call_type == CallType::Video;
            let mut withdrawn: Vec<(String, Vec<String>)> = Vec::new();
            for p in &call.participants {
                let ringing: Vec<&str> = p
                    .rings
                    .iter()
                    .filter(|r| !r.state.is_done())
                    .map(|r| r.device_id.as_str())
                    .collect();
                if ringing.is_empty() {
                    continue;
                }
                let devices = self.store.devices_of(&p.user_id)?;
                let forbidden: Vec<String> = devices
                    .iter()
                    .filter(|d| ringing.contains(&d.device_id.as_str()))
                    .filter(|d| {
                        let reach =
                            flags.reach(&Subject::of(d), video, self.min_app_version.as_deref());
                        reach != Reach::Ring
                    })
                    .map(|d| d.device_id.clone())
                    .collect();
                if !forbidden.is_empty() {
                    withdrawn.push((p.user_id.clone(), forbidden));
                }
            }
            if withdrawn.is_empty() {
                continue;
            }
            let withdrawing = self.update(&call.call_id, |c, fx| {
                for (user, devices) in &withdrawn {
                    c.withdraw_rings(user, devices, now, fx);
                }
                Ok(())
            });
            // One call that cannot be written now (contended, say) keeps
            // ringing to its timeout; the others still stop.
            match withdrawing {
                Ok(_) => changed += 1,
                Err(e) => {
                    tracing::warn!(call_id = %call.call_id, error = %e, "could not stop the rings a flag change forbids")
                }
            }
        }
        Ok(changed)
    }

    /// Fires due timers of every live call; returns how many calls changed.
    pub fn fire_timers(&self, now: UnixMillis) -> Result<usize, ServiceError> {
        let mut changed = 0;
        for call_id in self.store.due_calls(now)? {
            // Re-read by `update`: another node may have fired it already
            // (then nothing changes and nothing is written).
            let mut fired = false;
            self.update(&call_id, |c, fx| {
                let before = c.state;
                c.handle_timeout(now, fx);
                fired = c.state != before || !fx.is_empty();
                Ok(())
            })?;
            changed += usize::from(fired);
        }
        Ok(changed)
    }
}

/// A fresh participant id; it is stored with the call, so a rejoin reads it.
/// The moments a call connects and ends, as spans in its trace (on the
/// node whose write made them, once: effects follow only the write that
/// won).
fn trace_transition(before: Option<&Call>, after: &Call) {
    use crate::call::CallState;
    let was = before.map(|c| c.state);
    if after.state == CallState::Connected && was != Some(CallState::Connected) {
        let after_create_ms = after
            .connected_at
            .map(|at| at.saturating_sub(after.created_at));
        drop(crate::call_span!(
            "call.connected",
            &after.call_id,
            after_create_ms
        ));
    }
    if after.state == CallState::Ended && was != Some(CallState::Ended) {
        let reason = after.end_reason.map_or("unknown", |r| r.as_str());
        let connected_ms = after
            .connected_at
            .zip(after.ended_at)
            .map(|(from, to)| to.saturating_sub(from));
        drop(crate::call_span!(
            "call.end",
            &after.call_id,
            reason,
            connected_ms
        ));
    }
}

fn participant_id(_call_id: &str, _user_id: &str) -> String {
    format!("PA_{}", uuid::Uuid::new_v4().simple())
}
