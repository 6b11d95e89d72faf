//! Ringing devices: the `Ringer` that delivers a call's effects to devices.
//!
//! A device with an open events WebSocket gets `call.ringing` there and must
//! acknowledge it within `ack_window` (default 1.5 s); a mobile device that
//! does not (suspended apps keep sockets that look open), or has no socket,
//! gets a push. Stop-rings go out as `call.cancelled` on the socket and, for
//! mobile devices, as a regular (never VoIP) push. Call events go to every
//! participant's connected devices.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use crate::call::{Call, CallEvent, CallType, CallerDisplay, Effect, RingState, StopReason};
use crate::device::Platform;
use crate::service::Ringer;
use crate::store::Store;

/// How long a device has to acknowledge a ring before it is pushed.
pub const DEFAULT_ACK_WINDOW: Duration = Duration::from_millis(1500);

/// What a device's events WebSocket carries (JSON, camelCase, `type` tag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum DeviceEvent {
    #[serde(rename = "call.ringing")]
    Ringing {
        call_id: String,
        from_user_id: String,
        #[serde(rename = "callType")]
        call_type: CallType,
        /// When the ring stops by itself (Unix ms): a late delivery is stale.
        expires_at: u64,
    },
    #[serde(rename = "call.cancelled")]
    Cancelled { call_id: String, reason: StopReason },
    /// A call this device's app is too old to take (`min_app_version`):
    /// what an app shows instead of ringing ("update to take calls").
    #[serde(rename = "call.unsupported")]
    Unsupported {
        call_id: String,
        from_user_id: String,
        #[serde(rename = "callType")]
        call_type: CallType,
    },
    #[serde(rename = "call.event")]
    Event { call_id: String, event: String },
}

/// A push the ringer wants sent (`crate::push` delivers it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushRequest {
    /// VoIP on iOS, high-priority data on Android.
    Ring {
        call_id: String,
        user_id: String,
        device_id: String,
        from_user_id: String,
        call_type: CallType,
        /// The ring attempt (when it was sent, Unix ms): one push per
        /// (call, device, epoch) however often delivery is retried.
        ring_epoch: u64,
        expires_at: u64,
        caller_display: CallerDisplay,
    },
    /// A regular push: never VoIP (iOS kills apps that get VoIP pushes they
    /// do not report to CallKit).
    Cancel {
        call_id: String,
        user_id: String,
        device_id: String,
        reason: StopReason,
    },
}

pub trait PushSender: Send + Sync {
    fn send(&self, push: PushRequest);

    /// Pushes queued or being delivered: a draining node waits for none.
    fn unsettled(&self) -> usize {
        0
    }
}

/// Logs pushes (call id, user, device; never a token): a deployment with no
/// push provider configured.
pub struct LoggingPushSender;

impl PushSender for LoggingPushSender {
    fn send(&self, push: PushRequest) {
        tracing::info!(?push, "push (logging sender: not delivered)");
    }
}

/// Where devices' events sockets are when there are several nodes: each
/// node records the sockets it holds, and an event for a socket held by
/// another node is relayed to that node (`store::RedisStore`: a hash per
/// user and pub/sub addressed to the node). Delivery is at most once; what
/// covers a lost relay is the same as for a socket that looks open but is
/// not: a ring unacknowledged within the ack window is pushed, a cancel is
/// also pushed to phones, and a socket that reconnects gets its rings
/// replayed.
pub trait SocketDirectory: Send + Sync {
    /// This node now holds the device's socket.
    fn socket_opened(&self, user_id: &str, device_id: &str);
    /// This node no longer does (unless another node took it meanwhile).
    fn socket_closed(&self, user_id: &str, device_id: &str);
    /// Relays `event` to the node holding `device_id`'s socket (every node
    /// holding one of the user's sockets, for `None`), unless that is this
    /// node. True if some node took it.
    fn relay(&self, user_id: &str, device_id: Option<&str>, event: &DeviceEvent) -> bool;
}

/// A device event on its way to the node that holds the device's socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayedEvent {
    pub user_id: String,
    /// `None`: every socket of the user on the receiving node.
    pub device_id: Option<String>,
    pub event: DeviceEvent,
    /// The sending node's wall clock (ms since the Unix epoch), for the
    /// receiving node's relay latency. Absent from older nodes' messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<u64>,
}

/// Devices with an open events socket.
#[derive(Default)]
pub struct DeviceHub {
    sockets: DashMap<(String, String), UnboundedSender<DeviceEvent>>,
}

impl DeviceHub {
    pub fn connect(&self, user_id: &str, device_id: &str, tx: UnboundedSender<DeviceEvent>) {
        self.sockets
            .insert((user_id.to_string(), device_id.to_string()), tx);
    }

    /// Forgets the socket, unless a newer one replaced it; false then.
    pub fn disconnect(
        &self,
        user_id: &str,
        device_id: &str,
        tx: &UnboundedSender<DeviceEvent>,
    ) -> bool {
        self.sockets
            .remove_if(&(user_id.to_string(), device_id.to_string()), |_, v| {
                v.same_channel(tx)
            })
            .is_some()
    }

    /// Delivers an event another node relayed here.
    pub fn deliver_relayed(&self, relayed: RelayedEvent) {
        match relayed.device_id {
            Some(device) => {
                self.send(&relayed.user_id, &device, relayed.event);
            }
            None => {
                for device in self.devices_of(&relayed.user_id) {
                    self.send(&relayed.user_id, &device, relayed.event.clone());
                }
            }
        }
    }

    fn send(&self, user_id: &str, device_id: &str, event: DeviceEvent) -> bool {
        // Clone the sender out: never hold a DashMap ref while sending.
        let tx = self
            .sockets
            .get(&(user_id.to_string(), device_id.to_string()))
            .map(|r| r.value().clone());
        tx.is_some_and(|tx| tx.send(event).is_ok())
    }

    fn devices_of(&self, user_id: &str) -> Vec<String> {
        self.sockets
            .iter()
            .filter(|e| e.key().0 == user_id)
            .map(|e| e.key().1.clone())
            .collect()
    }
}

pub struct HubRinger {
    pub hub: Arc<DeviceHub>,
    pub store: Arc<dyn Store>,
    pub push: Arc<dyn PushSender>,
    pub ack_window: Duration,
    /// Rings waiting for their acknowledgement deadline (checked by `check_acks`).
    pending: Arc<dyn AckDeadlines>,
    /// Told `call.ringing` for each ring sent, with how (`crate::webhooks`).
    event_webhooks: Vec<crate::webhooks::Endpoint>,
    /// Sockets on other nodes (a cluster); `None` on a single node.
    sockets: Option<Arc<dyn SocketDirectory>>,
}

/// A ring sent over a socket, waiting for its acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRing {
    pub call_id: String,
    pub user_id: String,
    pub device_id: String,
}

/// Where rings wait for their acknowledgement deadline. In a cluster they
/// wait in Redis (`store::RedisStore`): any node takes a due one, exactly
/// one node gets it, and a ring outlives the node that sent it.
pub trait AckDeadlines: Send + Sync {
    fn add(&self, ring: PendingRing, deadline_ms: u64);
    /// The rings whose deadline came at `now_ms`, each handed out once.
    fn take_due(&self, now_ms: u64) -> Vec<PendingRing>;
}

/// This node's own memory (one node).
#[derive(Default)]
pub struct LocalAckDeadlines(Mutex<Vec<(PendingRing, u64)>>);

impl AckDeadlines for LocalAckDeadlines {
    fn add(&self, ring: PendingRing, deadline_ms: u64) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((ring, deadline_ms));
    }

    fn take_due(&self, now_ms: u64) -> Vec<PendingRing> {
        let mut pending = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (due, keep): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(_, d)| *d <= now_ms);
        *pending = keep;
        due.into_iter().map(|(ring, _)| ring).collect()
    }
}

/// `at` on the wall clock (Unix ms): deadlines are shared between nodes,
/// which share no `Instant`.
fn wall_ms(at: std::time::Instant) -> u64 {
    let (now, wall) = (std::time::Instant::now(), crate::unix_millis());
    if at >= now {
        wall + (at - now).as_millis() as u64
    } else {
        wall.saturating_sub((now - at).as_millis() as u64)
    }
}

impl HubRinger {
    pub fn new(hub: Arc<DeviceHub>, store: Arc<dyn Store>, push: Arc<dyn PushSender>) -> HubRinger {
        HubRinger {
            hub,
            store,
            push,
            ack_window: DEFAULT_ACK_WINDOW,
            pending: Arc::new(LocalAckDeadlines::default()),
            event_webhooks: Vec::new(),
            sockets: None,
        }
    }

    pub fn with_ack_deadlines(mut self, pending: Arc<dyn AckDeadlines>) -> HubRinger {
        self.pending = pending;
        self
    }

    pub fn with_socket_directory(mut self, sockets: Arc<dyn SocketDirectory>) -> HubRinger {
        self.sockets = Some(sockets);
        self
    }

    /// A device's events socket opened on this node (blocking: a cluster
    /// records it in Redis).
    pub fn socket_opened(&self, user_id: &str, device_id: &str) {
        if let Some(sockets) = &self.sockets {
            sockets.socket_opened(user_id, device_id);
        }
    }

    pub fn socket_closed(&self, user_id: &str, device_id: &str) {
        if let Some(sockets) = &self.sockets {
            sockets.socket_closed(user_id, device_id);
        }
    }

    /// To the device's socket, on this node or, relayed, on another.
    fn send(&self, user_id: &str, device_id: &str, event: DeviceEvent) -> bool {
        if self.hub.send(user_id, device_id, event.clone()) {
            return true;
        }
        self.sockets
            .as_ref()
            .is_some_and(|s| s.relay(user_id, Some(device_id), &event))
    }

    pub fn with_event_webhooks(mut self, endpoints: Vec<crate::webhooks::Endpoint>) -> HubRinger {
        self.event_webhooks = endpoints;
        self
    }

    /// Queues `call.ringing` for a ring just sent `via` the socket or a push.
    /// After the call's write (the ring is sent then), so it is numbered
    /// after the change that started the ring.
    fn report_ring(&self, call: &Call, user_id: &str, device_id: &str, via: &str) {
        if self.event_webhooks.is_empty() {
            return;
        }
        let event = crate::webhooks::CallEvent {
            kind: "call.ringing",
            data: serde_json::json!({"userId": user_id, "deviceId": device_id, "via": via}),
        };
        let rows = crate::webhooks::for_endpoints(
            &self.event_webhooks,
            Some(&call.call_id),
            vec![event],
            crate::unix_millis(),
        );
        if let Err(e) = self.store.queue_events(&rows) {
            tracing::warn!(call_id = %call.call_id, %user_id, %device_id, error = %e, "call.ringing event not queued");
        }
    }

    fn is_mobile(&self, user_id: &str, device_id: &str) -> bool {
        self.store
            .devices_of(user_id)
            .ok()
            .and_then(|ds| ds.into_iter().find(|d| d.device_id == device_id))
            .is_some_and(|d| matches!(d.platform, Platform::Ios | Platform::Android))
    }

    fn ring_push(&self, call: &Call, user_id: &str, device_id: &str) {
        if self.is_mobile(user_id, device_id) {
            let ring_epoch = call
                .participant(user_id)
                .and_then(|p| p.rings.iter().find(|r| r.device_id == device_id))
                .map_or(call.created_at, |r| r.sent_at);
            self.push.send(PushRequest::Ring {
                call_id: call.call_id.clone(),
                user_id: user_id.to_string(),
                device_id: device_id.to_string(),
                from_user_id: call.initiator_user_id.clone(),
                call_type: call.call_type,
                ring_epoch,
                expires_at: call.ring_deadline.unwrap_or(call.created_at),
                caller_display: call.caller_display.clone(),
            });
            self.report_ring(call, user_id, device_id, "push");
        }
    }

    /// Pushes rings whose acknowledgement window passed without an ack.
    /// The shell calls this on a short timer.
    pub fn check_acks(&self, now: std::time::Instant) {
        let due = self.pending.take_due(wall_ms(now));
        for p in due {
            let Ok(Some(call)) = self.store.get_call(&p.call_id) else {
                continue;
            };
            let call = call.value;
            let still_unacked = call.participant(&p.user_id).is_some_and(|part| {
                part.rings
                    .iter()
                    .any(|r| r.device_id == p.device_id && r.state == RingState::Sent)
            });
            if still_unacked {
                tracing::info!(call_id = %call.call_id, user_id = %p.user_id, device_id = %p.device_id, "ring not acknowledged: pushing");
                self.ring_push(&call, &p.user_id, &p.device_id);
            }
        }
    }

    /// After a restart: the acknowledgement windows lived in memory, so
    /// every ring still unacknowledged in the store gets a fresh window now
    /// (a device that reconnects gets the ring replayed and may ack it; a
    /// suspended phone is pushed when the window passes). A phone already
    /// pushed before the restart may be pushed again: the ring epoch makes
    /// that a duplicate, not a second call. Returns how many were queued.
    pub fn requeue_unacknowledged(&self) -> usize {
        let Ok(live) = self.store.live_calls() else {
            return 0;
        };
        let deadline = crate::unix_millis() + self.ack_window.as_millis() as u64;
        let mut queued = 0;
        for call in live.iter().map(|v| &v.value) {
            if call.state != crate::call::CallState::Ringing {
                continue;
            }
            for p in &call.participants {
                for ring in p.rings.iter().filter(|r| r.state == RingState::Sent) {
                    self.pending.add(
                        PendingRing {
                            call_id: call.call_id.clone(),
                            user_id: p.user_id.clone(),
                            device_id: ring.device_id.clone(),
                        },
                        deadline,
                    );
                    queued += 1;
                }
            }
        }
        queued
    }

    /// On connect, what the device missed while it had no socket: the
    /// ring of every call ringing it; `call.accepted` for the user's own
    /// outgoing calls answered meanwhile (a caller whose socket was down at
    /// the answer would otherwise wait for it until its timeout); and
    /// `call.ended` for calls that rang it or that it made, ended within the
    /// last ring period (its app may still show them). Clients treat a
    /// repeated event as a no-op.
    pub fn replay_missed_events(
        &self,
        user_id: &str,
        device_id: &str,
        now: crate::call::UnixMillis,
    ) {
        let Ok(calls) = self.store.calls_of(user_id, 20) else {
            return;
        };
        for call in calls {
            let ring = call
                .participant(user_id)
                .and_then(|p| p.rings.iter().find(|r| r.device_id == device_id));
            let made_it = call.initiator_user_id == user_id;
            if ring.is_none() && !made_it {
                continue;
            }
            let ended = call.state == crate::call::CallState::Ended;
            if !ended
                && ring
                    .is_some_and(|r| matches!(r.state, RingState::Sent | RingState::Acknowledged))
            {
                self.hub.send(user_id, device_id, ringing_event(&call));
            }
            let answered = matches!(
                call.state,
                crate::call::CallState::Connecting | crate::call::CallState::Connected
            );
            if made_it && answered {
                self.hub.send(
                    user_id,
                    device_id,
                    DeviceEvent::Event {
                        call_id: call.call_id.clone(),
                        event: "call.accepted".into(),
                    },
                );
            }
            let recently = call
                .ended_at
                .is_some_and(|at| now.saturating_sub(at) <= call.timeouts.ring_ms);
            if ended && recently {
                self.hub.send(
                    user_id,
                    device_id,
                    DeviceEvent::Event {
                        call_id: call.call_id.clone(),
                        event: "call.ended".into(),
                    },
                );
            }
        }
    }
}

fn ringing_event(call: &Call) -> DeviceEvent {
    DeviceEvent::Ringing {
        call_id: call.call_id.clone(),
        from_user_id: call.initiator_user_id.clone(),
        call_type: call.call_type,
        expires_at: call.ring_deadline.unwrap_or(call.created_at),
    }
}

fn event_name(event: &CallEvent) -> String {
    let name = match event {
        CallEvent::Ringing { .. } => "call.ringing",
        CallEvent::Accepted { .. } => "call.accepted",
        CallEvent::Declined { .. } => "call.declined",
        CallEvent::Busy { .. } => "call.busy",
        CallEvent::Missed { .. } => "call.timeout",
        CallEvent::Connected => "call.connected",
        CallEvent::ParticipantLeft { .. } => "call.participant_left",
        CallEvent::Ended { .. } => "call.ended",
    };
    name.to_string()
}

impl Ringer for HubRinger {
    fn deliver(&self, call: &Call, effects: &[Effect]) {
        for effect in effects {
            match effect {
                Effect::Ring { user_id, device_id } => {
                    if self.send(user_id, device_id, ringing_event(call)) {
                        self.report_ring(call, user_id, device_id, "socket");
                        self.pending.add(
                            PendingRing {
                                call_id: call.call_id.clone(),
                                user_id: user_id.clone(),
                                device_id: device_id.clone(),
                            },
                            crate::unix_millis() + self.ack_window.as_millis() as u64,
                        );
                    } else {
                        self.ring_push(call, user_id, device_id);
                    }
                }
                Effect::StopRing {
                    user_id,
                    device_id,
                    reason,
                } => {
                    let cancel = DeviceEvent::Cancelled {
                        call_id: call.call_id.clone(),
                        reason: *reason,
                    };
                    self.send(user_id, device_id, cancel);
                    if self.is_mobile(user_id, device_id) {
                        self.push.send(PushRequest::Cancel {
                            call_id: call.call_id.clone(),
                            user_id: user_id.clone(),
                            device_id: device_id.clone(),
                            reason: *reason,
                        });
                    }
                }
                // Over the socket only: no push (an old app would take a
                // VoIP push for a ring; see API.md).
                Effect::Unsupported { user_id, device_id } => {
                    let unsupported = DeviceEvent::Unsupported {
                        call_id: call.call_id.clone(),
                        from_user_id: call.initiator_user_id.clone(),
                        call_type: call.call_type,
                    };
                    self.send(user_id, device_id, unsupported);
                }
                Effect::Event(event) => {
                    let event = DeviceEvent::Event {
                        call_id: call.call_id.clone(),
                        event: event_name(event),
                    };
                    for p in &call.participants {
                        for device in self.hub.devices_of(&p.user_id) {
                            self.hub.send(&p.user_id, &device, event.clone());
                        }
                        if let Some(sockets) = &self.sockets {
                            sockets.relay(&p.user_id, None, &event);
                        }
                    }
                }
            }
        }
    }
}
