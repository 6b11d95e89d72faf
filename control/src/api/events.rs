//! `GET /v1/events`: a device's events WebSocket. The first message
//! authenticates (`{"type":"auth","token":"<user token>","deviceId":"..."}`,
//! so no token sits in a URL or an access log); then the server sends
//! `call.ringing`, `call.cancelled` and `call.event` messages, and the device
//! acknowledges rings with `{"type":"ack","callId":"..."}`.
//!
//! The socket lives as long as its user token: `{"type":"refresh","token":
//! "..."}` (the same user) extends it; at expiry unrefreshed the server
//! sends `error` `token_expired` and closes. When the node stops (after its
//! drain) the socket closes with 1001 (going away): reconnect.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;

use super::{ApiError, ControlState, now_ms};

const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Device messages are tiny; anything larger is refused by the socket.
const MAX_MESSAGE_BYTES: usize = 4096;

#[derive(Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
enum DeviceMessage {
    Auth { token: String, device_id: String },
    Ack { call_id: String },
    Refresh { token: String },
}

/// How long until `expires_at` (Unix seconds); a long way off for `None`
/// (API-key principals do not expire).
fn time_left(expires_at: Option<u64>) -> Duration {
    expires_at.map_or(Duration::from_secs(365 * 24 * 3600), |at| {
        Duration::from_millis((at * 1000).saturating_sub(now_ms()))
    })
}

pub async fn events_socket(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    State(state): State<ControlState>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return ApiError::upgrade_required(rejection).into_response(),
    };
    // A node holds one of these per device with the app in the background:
    // tungstenite's 128 KiB default read buffer made each idle socket cost
    // ~135 KiB (`switchboard-loadtest idle`, BENCHMARKS.md).
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .read_buffer_size(MAX_MESSAGE_BYTES)
        .write_buffer_size(0)
        .on_upgrade(move |socket| serve(socket, state))
}

fn error(code: &str, message: &str) -> Message {
    Message::text(
        serde_json::json!({"type": "error", "code": code, "message": message}).to_string(),
    )
}

async fn serve(socket: WebSocket, state: ControlState) {
    let (mut sink, mut stream) = socket.split();
    // 1. Authenticate.
    let first = tokio::time::timeout(AUTH_TIMEOUT, stream.next()).await;
    let Ok(Some(Ok(Message::Text(text)))) = first else {
        return;
    };
    let Ok(DeviceMessage::Auth { token, device_id }) = serde_json::from_str(&text) else {
        let _ = sink
            .send(error("not_authenticated", "the first message must be auth"))
            .await;
        return;
    };
    let (user_id, mut expires_at) = match state.auth.verify_user_token(&token) {
        Ok(p) => (p.user_id, p.expires_at),
        Err(e) => {
            let _ = sink.send(error("unauthorized", &e.to_string())).await;
            return;
        }
    };
    let store = state.service.store.clone();
    let (user, device) = (user_id.clone(), device_id.clone());
    let registered = tokio::task::spawn_blocking(move || {
        store
            .devices_of(&user)
            .ok()
            .and_then(|ds| ds.into_iter().find(|d| d.device_id == device))
    })
    .await
    .ok()
    .flatten();
    let Some(registered) = registered else {
        let _ = sink
            .send(error("unknown_device", "register the device first"))
            .await;
        return;
    };
    let platform = registered.platform.as_str();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    state.events.hub.connect(&user_id, &device_id, tx.clone());
    {
        let (events, user, device) = (state.events.clone(), user_id.clone(), device_id.clone());
        let _ = tokio::task::spawn_blocking(move || events.socket_opened(&user, &device)).await;
    }
    tracing::info!(user_id = %user_id, device_id = %device_id, platform, "device events connected");
    // `serverTime` (Unix ms) lets a device judge a push's age by the
    // server's clock, not its own (phone clocks drift).
    // The device's flags come with `authenticated`, then in a `flags`
    // message whenever they change for it.
    let mut flag_sets = state.service.flags.subscribe();
    let current = {
        let service = state.service.clone();
        tokio::task::spawn_blocking(move || service.flags.get(&*service.store))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| flag_sets.borrow().clone())
    };
    flag_sets.mark_unchanged();
    let flags = flags_of(&registered, &current);
    let authenticated = serde_json::json!({"type": "authenticated", "expiresAt": expires_at, "serverTime": now_ms(), "flags": flags});
    let _ = sink.send(Message::text(authenticated.to_string())).await;
    let mut told = Some(flags);
    let expiry = tokio::time::sleep(time_left(expires_at));
    tokio::pin!(expiry);
    // A device that connects gets what it missed: rings, answers, ends.
    {
        let events = state.events.clone();
        let (user, device) = (user_id.clone(), device_id.clone());
        let now = now_ms();
        let _ =
            tokio::task::spawn_blocking(move || events.replay_missed_events(&user, &device, now))
                .await;
    }
    // 2. Relay.
    let lifecycle = state.lifecycle.clone();
    let stopping = lifecycle.stopping();
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            () = &mut stopping => {
                // The node is going away: the device reconnects (to another).
                let close = CloseFrame { code: close_code::AWAY, reason: "server shutting down".into() };
                let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(Some(close)))).await;
                break;
            }
            _ = &mut expiry => {
                tracing::info!(user_id = %user_id, device_id = %device_id, "device events: token expired unrefreshed");
                let _ = sink
                    .send(error("token_expired", "the user token expired; refresh it before it does"))
                    .await;
                break;
            }
            Ok(()) = flag_sets.changed() => {
                let current = flag_sets.borrow_and_update().clone();
                if !tell_flags(&mut sink, &registered, &current, &mut told).await {
                    break;
                }
            }
            event = rx.recv() => {
                let Some(event) = event else { break };
                let text = serde_json::to_string(&event).unwrap_or_default();
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<DeviceMessage>(&text) {
                    Ok(DeviceMessage::Ack { call_id }) => {
                        let service = state.service.clone();
                        let (user, device) = (user_id.clone(), device_id.clone());
                        let now = now_ms();
                        let _ = tokio::task::spawn_blocking(move || {
                            let _in_span = crate::call_span!("call.ack", &call_id, user_id = %user, device_id = %device, platform, transport = "events_socket").entered();
                            service.update(&call_id, |c, _| c.acknowledge_ring(&user, &device, now))
                        })
                        .await;
                    }
                    Ok(DeviceMessage::Refresh { token }) => {
                        let answer = match state.auth.verify_user_token(&token) {
                            Ok(p) if p.user_id == user_id => {
                                expires_at = p.expires_at;
                                expiry.as_mut().reset(tokio::time::Instant::now() + time_left(expires_at));
                                Message::text(serde_json::json!({"type": "refreshed", "expiresAt": expires_at}).to_string())
                            }
                            Ok(_) => error("unauthorized", "the token is for another user"),
                            Err(e) => error("unauthorized", &e.to_string()),
                        };
                        if sink.send(answer).await.is_err() {
                            break;
                        }
                    }
                    _ => {
                        if sink.send(error("bad_message", "expected ack or refresh")).await.is_err() {
                            break;
                        }
                    }
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    // A newer socket of the device on this node keeps the directory's entry.
    if state.events.hub.disconnect(&user_id, &device_id, &tx) {
        let (events, user, device) = (state.events.clone(), user_id.clone(), device_id.clone());
        let _ = tokio::task::spawn_blocking(move || events.socket_closed(&user, &device)).await;
    }
    tracing::info!(user_id = %user_id, device_id = %device_id, "device events disconnected");
}

/// Every flag as it is for `device`.
fn flags_of(
    device: &crate::device::Device,
    set: &crate::flags::FlagSet,
) -> std::collections::BTreeMap<String, bool> {
    set.for_device(&crate::flags::Subject::of(device))
}

/// Sends the device its flags (`{"type": "flags", "flags": {name: on}}`)
/// if they differ from what it was last told; false if the socket is gone.
async fn tell_flags<K>(
    sink: &mut K,
    device: &crate::device::Device,
    set: &crate::flags::FlagSet,
    told: &mut Option<std::collections::BTreeMap<String, bool>>,
) -> bool
where
    K: futures_util::Sink<Message> + Unpin,
{
    let flags = flags_of(device, set);
    if told.as_ref() == Some(&flags) {
        return true;
    }
    let message = serde_json::json!({"type": "flags", "flags": flags});
    let sent = sink.send(Message::text(message.to_string())).await.is_ok();
    *told = Some(flags);
    sent
}
