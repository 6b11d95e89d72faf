//! Call-event webhooks to the app backend (`control/WEBHOOKS.md`): what
//! happened to a call, derived from each stored change of it and queued in
//! the same store transaction as the change (an outbox: a crash loses both
//! or neither), then delivered at least once, in per-call order, signed as
//! the Standard Webhooks specification says (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature`).
//!
//! This module is sans-IO: [`events_between`] reads two versions of a call,
//! [`sign`] makes the signature header. The tokio worker is [`delivery`].

pub mod delivery;

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::call::{Call, CallState, ParticipantState, Role, UnixMillis};
use crate::store::NewEvent;

/// One configured receiver: its URL and secrets (`whsec_<base64>`, the
/// Standard Webhooks form). Every secret signs each delivery, so a receiver
/// rotating to a new one accepts either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    pub secrets: Vec<String>,
}

/// Why a secret is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event webhook secrets are `whsec_` and the base64 of 24-64 random bytes")]
pub struct BadSecret;

/// The key bytes of a `whsec_<base64>` secret.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, BadSecret> {
    let encoded = secret.strip_prefix("whsec_").ok_or(BadSecret)?;
    let key = STANDARD.decode(encoded).map_err(|_| BadSecret)?;
    if (24..=64).contains(&key.len()) {
        Ok(key)
    } else {
        Err(BadSecret)
    }
}

/// The `webhook-signature` header: `v1,<base64 HMAC-SHA256>` of
/// `<id>.<timestamp>.<body>` per secret, space-separated.
pub fn sign(secrets: &[String], id: &str, timestamp: u64, body: &[u8]) -> String {
    secrets
        .iter()
        .filter_map(|s| secret_key(s).ok())
        .map(|key| {
            let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
            let mut ctx = hmac::Context::with_key(&key);
            ctx.update(id.as_bytes());
            ctx.update(b".");
            ctx.update(timestamp.to_string().as_bytes());
            ctx.update(b".");
            ctx.update(body);
            format!("v1,{}", STANDARD.encode(ctx.sign().as_ref()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The body a receiver gets (`CallEvent` in `openapi.yaml`).
pub fn body(queued: &crate::store::QueuedEvent) -> Vec<u8> {
    let data: Value = serde_json::from_str(&queued.event.data).unwrap_or(Value::Null);
    let mut body = json!({
        "id": queued.event.event_id,
        "type": queued.event.kind,
        "occurredAt": queued.event.occurred_at,
        "data": data,
    });
    if let Some(call_id) = &queued.event.call_id {
        body["callId"] = json!(call_id);
        body["sequence"] = json!(queued.sequence);
    }
    body.to_string().into_bytes()
}

/// An event before it is addressed to endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct CallEvent {
    pub kind: &'static str,
    pub data: Value,
}

/// What happened between two stored versions of a call (`before` is `None`
/// for a new call), in the order a receiver should see it.
pub fn events_between(before: Option<&Call>, after: &Call) -> Vec<CallEvent> {
    let mut events = Vec::new();
    if before.is_none() {
        events.push(CallEvent {
            kind: "call.created",
            data: json!({
                "initiatorUserId": after.initiator_user_id,
                "type": after.call_type,
                "calleeUserIds": after.participants.iter()
                    .filter(|p| p.role != Role::Host)
                    .map(|p| &p.user_id)
                    .collect::<Vec<_>>(),
            }),
        });
    }
    // `call.ringing` is not here: the ringer reports each ring as it sends
    // it, with how (socket or push), which only it knows.
    for p in &after.participants {
        let old = before.and_then(|b| b.participant(&p.user_id));
        let was = old.map(|o| o.state);
        if was != Some(p.state) && p.role != Role::Host {
            let kind = match p.state {
                ParticipantState::Accepted => Some("call.answered"),
                ParticipantState::Declined => Some("call.declined"),
                // A chat app turns this into "Missed call from ...".
                ParticipantState::Missed => Some("call.missed"),
                _ => None,
            };
            if let Some(kind) = kind {
                events.push(CallEvent {
                    kind,
                    data: json!({
                        "userId": p.user_id,
                        "deviceId": p.device_id,
                        "fromUserId": after.initiator_user_id,
                        "type": after.call_type,
                    }),
                });
            }
        }
        let in_media_before = old.is_some_and(|o| o.in_media);
        if p.in_media != in_media_before {
            events.push(CallEvent {
                kind: if p.in_media {
                    "participant.joined"
                } else {
                    "participant.left"
                },
                data: json!({"userId": p.user_id, "participantId": p.participant_id}),
            });
        }
    }
    let ended_before = before.is_some_and(|b| b.state == CallState::Ended);
    if after.state == CallState::Ended && !ended_before {
        let duration = match (after.connected_at, after.ended_at) {
            (Some(from), Some(to)) => to.saturating_sub(from),
            _ => 0,
        };
        events.push(CallEvent {
            kind: "call.ended",
            data: json!({
                "reason": after.end_reason,
                "durationMs": duration,
                "participants": after.participants.iter().map(|p| json!({
                    "userId": p.user_id,
                    "state": p.state,
                })).collect::<Vec<_>>(),
            }),
        });
    }
    events
}

/// Addresses events to every endpoint: one queue row each, one event id.
pub fn for_endpoints(
    endpoints: &[Endpoint],
    call_id: Option<&str>,
    events: Vec<CallEvent>,
    now: UnixMillis,
) -> Vec<NewEvent> {
    if endpoints.is_empty() {
        return Vec::new();
    }
    let mut rows = Vec::with_capacity(events.len() * endpoints.len());
    for event in events {
        let event_id = format!("evt_{}", uuid::Uuid::new_v4().simple());
        let data = event.data.to_string();
        for endpoint in endpoints {
            rows.push(NewEvent {
                event_id: event_id.clone(),
                endpoint: endpoint.url.clone(),
                call_id: call_id.map(str::to_string),
                kind: event.kind.to_string(),
                occurred_at: now,
                data: data.clone(),
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_example_signature() {
        // From the Standard Webhooks specification's test vectors.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string();
        let body = br#"{"test": 2432232314}"#;
        let header = sign(&[secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_are_whsec_base64_of_24_to_64_bytes() {
        assert!(secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert_eq!(
            secret_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(BadSecret)
        );
        assert_eq!(secret_key("whsec_c2hvcnQ="), Err(BadSecret));
        assert_eq!(secret_key("whsec_!!!"), Err(BadSecret));
    }
}
