//! The device's events connection (`/v1/events`): authenticate, turn the
//! server's messages into call-engine inputs, acknowledge rings, keep the
//! connection alive, and after any drop (a network change) reconnect with
//! exponential backoff. The server replays a ringing call on reconnect;
//! the call engine makes sure that never becomes a second incoming call.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::call_engine::{Input, Ring};
use crate::credentials::{UserToken, refresh_in};

/// Reconnect delays: doubling from `base` up to `max`, with jitter so a
/// server restart is not met by every device at once. Sans-IO: the caller
/// supplies the randomness.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay; `unit` in [0, 1) spreads it over 50-100 % of the step.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let step = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        step.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }

    /// After a connection that worked.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Keepalive: a ping this often keeps NATs and proxies from dropping the
/// socket, and notices a dead path.
const PING_EVERY: Duration = Duration::from_secs(20);

pub struct EventsConfig {
    /// `ws://host:port/v1/events`
    pub url: String,
    /// The user token: refreshed on the socket before it expires, and
    /// through the app when the server refuses it.
    pub token: Arc<UserToken>,
    pub device_id: String,
    /// Set to the server's clock minus the device's (ms) at each
    /// authentication: pushes are judged by the server's clock.
    pub clock_offset: Arc<Mutex<Option<i64>>>,
    /// For `wss://` (`crate::tls`).
    pub tls: Arc<rustls::ClientConfig>,
}

/// What the app can ask of a running connection.
#[derive(Debug)]
pub enum EventsCommand {
    /// Acknowledge a ring (the call UI is showing).
    Ack {
        call_id: String,
    },
    /// Drop the connection now, as a network change would.
    Reconnect,
    /// Connect now if not connected (a push woke the app): skips the
    /// backoff's wait.
    ConnectNow,
    Stop,
}

/// Runs the connection until `Stop`; inputs for the call engine go to `inputs`.
pub fn spawn(
    config: EventsConfig,
    inputs: mpsc::UnboundedSender<Input>,
) -> mpsc::UnboundedSender<EventsCommand> {
    let (commands, rx) = mpsc::unbounded_channel();
    spawn_with(config, inputs, rx);
    commands
}

/// [`spawn`] with a command channel made before (the client hands out its
/// sender before the device is registered and the connection may open).
pub fn spawn_with(
    config: EventsConfig,
    inputs: mpsc::UnboundedSender<Input>,
    mut rx: mpsc::UnboundedReceiver<EventsCommand>,
) {
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        loop {
            match session(&config, &inputs, &mut rx).await {
                Ended::Stop => return,
                Ended::Dropped { was_up } => {
                    if was_up {
                        backoff.reset();
                        let _ = inputs.send(Input::SignalingDisconnected);
                    }
                }
                Ended::Refused { token, was_up } => {
                    if was_up {
                        let _ = inputs.send(Input::SignalingDisconnected);
                    }
                    // Expired or revoked: with a fresh token from the app,
                    // at once; without one, after the backoff.
                    if config.token.refresh(&token).await.is_some() {
                        continue;
                    }
                }
            }
            let wait = tokio::time::sleep(backoff.next_delay(jitter()));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    command = rx.recv() => match command {
                        None | Some(EventsCommand::Stop) => return,
                        Some(EventsCommand::ConnectNow | EventsCommand::Reconnect) => break,
                        Some(EventsCommand::Ack { .. }) => {}
                    },
                }
            }
        }
    });
}

/// A value in [0, 1) for backoff jitter: the clock's sub-second digits
/// differ enough between devices to spread reconnects.
pub fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1000) / 1000.0
}

enum Ended {
    Stop,
    Dropped {
        was_up: bool,
    },
    /// The server refused `token` (unauthorized, or expired unrefreshed).
    Refused {
        token: String,
        was_up: bool,
    },
}

/// A server `error` that means the user token is no good.
fn refuses_token(message: &Value) -> bool {
    message["type"] == "error"
        && matches!(
            message["code"].as_str(),
            Some("unauthorized" | "token_expired")
        )
}

/// When to refresh a token the server says expires at `expires_at` (Unix
/// seconds), judged by the server's clock (`server_now`, Unix ms).
fn refresh_deadline(message: &Value, server_now: u64) -> Option<tokio::time::Instant> {
    let expires_ms = message["expiresAt"].as_u64()?.saturating_mul(1000);
    let remaining = Duration::from_millis(expires_ms.saturating_sub(server_now));
    Some(tokio::time::Instant::now() + refresh_in(remaining))
}

async fn session(
    config: &EventsConfig,
    inputs: &mpsc::UnboundedSender<Input>,
    commands: &mut mpsc::UnboundedReceiver<EventsCommand>,
) -> Ended {
    let dropped = Ended::Dropped { was_up: false };
    let connector = Some(tokio_tungstenite::Connector::Rustls(config.tls.clone()));
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(&config.url, None, false, connector);
    let Ok((mut ws, _)) = connecting.await else {
        return dropped;
    };
    let mut answers = config.token.subscribe();
    let mut token = config.token.get();
    let auth = json!({"type": "auth", "token": token, "deviceId": config.device_id});
    if ws.send(Message::text(auth.to_string())).await.is_err() {
        return dropped;
    }
    let asked = Instant::now();
    // The answer to the auth; anything a newer server sends first that
    // this build does not know is skipped.
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let Ok(message) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if message["type"] == "authenticated" || message["type"] == "error" {
                        return Some(message);
                    }
                }
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    });
    let authenticated = match answer.await {
        Ok(Some(m)) if m["type"] == "authenticated" => m,
        Ok(Some(m)) if refuses_token(&m) => {
            return Ended::Refused {
                token,
                was_up: false,
            };
        }
        _ => return dropped,
    };
    let server_now = match authenticated["serverTime"].as_u64() {
        Some(server_time) => {
            // The server's clock at the middle of the round trip.
            let half_trip = asked.elapsed().as_millis() as u64 / 2;
            let offset = server_time as i64 - (crate::unix_millis() - half_trip) as i64;
            *config
                .clock_offset
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(offset);
            server_time
        }
        None => crate::unix_millis(),
    };
    let mut refresh_at = refresh_deadline(&authenticated, server_now);
    if let Some(flags) = flags_of(&authenticated) {
        let _ = inputs.send(Input::Flags(flags));
    }
    let _ = inputs.send(Input::SignalingConnected);
    let mut ping = tokio::time::interval(PING_EVERY);
    loop {
        let refresh_due = async {
            match refresh_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let Ok(message) = serde_json::from_str::<Value>(&text) else { continue };
                    if message["type"] == "refreshed" {
                        refresh_at = refresh_deadline(&message, crate::unix_millis());
                    } else if message["type"] == "error" && message["code"] == "token_expired" {
                        return Ended::Refused { token, was_up: true };
                    } else if let Some(input) = to_input(&message) {
                        let _ = inputs.send(input);
                    }
                }
                Some(Ok(_)) => {}
                _ => return Ended::Dropped { was_up: true },
            },
            _ = refresh_due => {
                refresh_at = None;
                config.token.ask();
            }
            // The app gave a new token (asked for, or on its own): the
            // socket lives on with it.
            Ok(()) = answers.changed() => {
                let fresh = config.token.get();
                if fresh != token {
                    token = fresh;
                    let refresh = json!({"type": "refresh", "token": token});
                    if ws.send(Message::text(refresh.to_string())).await.is_err() {
                        return Ended::Dropped { was_up: true };
                    }
                }
            }
            command = commands.recv() => match command {
                Some(EventsCommand::Ack { call_id }) => {
                    let ack = json!({"type": "ack", "callId": call_id});
                    let _ = ws.send(Message::text(ack.to_string())).await;
                }
                Some(EventsCommand::ConnectNow) => {}
                Some(EventsCommand::Reconnect) => {
                    let _ = ws.close(None).await;
                    return Ended::Dropped { was_up: true };
                }
                Some(EventsCommand::Stop) | None => {
                    let _ = ws.close(None).await;
                    return Ended::Stop;
                }
            },
            _ = ping.tick() => {
                if ws.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return Ended::Dropped { was_up: true };
                }
            }
        }
    }
}

/// The `flags` object of a server message (`authenticated`, `flags`, the
/// registration answer): names to booleans, anything else left out.
pub fn flags_of(m: &Value) -> Option<crate::call_engine::Flags> {
    let flags = m["flags"].as_object()?;
    Some(
        flags
            .iter()
            .filter_map(|(name, on)| Some((name.clone(), on.as_bool()?)))
            .collect(),
    )
}

/// A server message as a call-engine input; unknown messages and fields
/// are ignored (newer servers may send more).
pub fn to_input(m: &Value) -> Option<Input> {
    if m["type"] == "flags" {
        return flags_of(m).map(Input::Flags);
    }
    let call_id = m["callId"].as_str()?.to_string();
    match m["type"].as_str()? {
        "call.ringing" => {
            let expires_at = m["expiresAt"].as_u64()?;
            Some(Input::Ring(Ring {
                call_id,
                from_user_id: m["fromUserId"].as_str()?.to_string(),
                video: m["callType"] == "video",
                // The socket's ring names no epoch; the engine knows the call.
                ring_epoch: 0,
                expires_at,
                caller_display_name: None,
            }))
        }
        "call.cancelled" => Some(Input::Cancelled {
            call_id,
            reason: m["reason"].as_str()?.to_string(),
        }),
        "call.event" if m["event"] == "call.ended" => Some(Input::RemoteEnded { call_id }),
        "call.event" if m["event"] == "call.accepted" => Some(Input::RemoteAccepted { call_id }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        let full: Vec<u128> = (0..10).map(|_| b.next_delay(1.0).as_millis()).collect();
        assert_eq!(
            full,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(125));
    }

    #[test]
    fn server_messages_become_inputs_and_unknown_ones_are_ignored() {
        let ring = json!({"type": "call.ringing", "callId": "c1", "fromUserId": "alice",
                          "callType": "video", "expiresAt": 5, "somethingNew": true});
        assert!(matches!(to_input(&ring), Some(Input::Ring(r)) if r.call_id == "c1" && r.video));
        let cancel =
            json!({"type": "call.cancelled", "callId": "c1", "reason": "answered_elsewhere"});
        assert!(
            matches!(to_input(&cancel), Some(Input::Cancelled { reason, .. }) if reason == "answered_elsewhere")
        );
        let ended = json!({"type": "call.event", "callId": "c1", "event": "call.ended"});
        assert_eq!(
            to_input(&ended),
            Some(Input::RemoteEnded {
                call_id: "c1".into()
            })
        );
        assert_eq!(
            to_input(&json!({"type": "call.event", "callId": "c1", "event": "call.accepted"})),
            Some(Input::RemoteAccepted {
                call_id: "c1".into()
            })
        );
        assert_eq!(
            to_input(&json!({"type": "call.event", "callId": "c1", "event": "call.busy"})),
            None
        );
        assert_eq!(
            to_input(&json!({"type": "something.else", "callId": "c1"})),
            None
        );
        assert_eq!(
            to_input(&json!({"type": "call.unsupported", "callId": "c1", "fromUserId": "a"})),
            None
        );
        let flags =
            json!({"type": "flags", "flags": {"calling": true, "video_calls": false, "odd": 3}});
        assert_eq!(
            to_input(&flags),
            Some(Input::Flags(
                [("calling".into(), true), ("video_calls".into(), false)].into()
            ))
        );
    }
}
