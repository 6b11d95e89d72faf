//! Push payloads (control/PUSH.md) and what the platform must show for
//! each: pure and synchronous, so the PushKit / FCM callback can decide on
//! its own thread before it returns. iOS terminates an app that does not
//! report every VoIP push to CallKit before the callback returns, so every
//! payload gets a decision, a malformed one too.
//!
//! One parser takes both shapes the server sends: APNs' JSON (numbers as
//! numbers) and FCM's data map (every value a string).

use std::collections::HashMap;

use serde_json::Value;

use crate::call_engine::{Ring, UnixMillis};
use crate::ports::{EndedReason, IncomingCall};

/// How far the server's and the device's view of "now" may disagree (after
/// the measured clock offset) before a ring counts as stale: delivery
/// jitter and the offset's own error.
pub const STALE_TOLERANCE_MS: u64 = 3_000;

/// What the platform must do with a push, decided before its callback
/// returns.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum PushDecision {
    /// Report this incoming call (CallKit `reportNewIncomingCall`; Telecom
    /// `addCall`). A duplicate push of a call still ringing is reported
    /// again with the same UUID (CallKit answers `callUUIDAlreadyExists`,
    /// which counts as reported): do not end it.
    Report { call: IncomingCall },
    /// Report it, then end it at once with `reason` (stale, expired, over
    /// already, or malformed: Apple still requires the report).
    ReportAndEnd {
        call: IncomingCall,
        reason: EndedReason,
    },
    /// Nothing to show: a cancel (the core ends the call), or a push that
    /// is not about calls.
    NotACall { reason: String },
}

/// A push as the core reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    Ring(RingPush),
    Cancel { call_id: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingPush {
    pub ring: Ring,
    /// `switchboard push-test`: no call stands behind it; reported, then
    /// ended at once.
    pub test: bool,
    /// When the server made the push (its clock, Unix ms).
    pub sent_at: UnixMillis,
    pub avatar_url: Option<String>,
}

/// Why a payload is not a push the core can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// Not about calls (another feature's push, or a newer server's event).
    NotACall(String),
    /// Says it is a ring but lacks what a ring needs: still reported (then
    /// ended) on iOS. `call_id` when the payload had one.
    BadRing {
        call_id: Option<String>,
        missing: &'static str,
    },
}

/// Reads an APNs JSON payload.
pub fn parse_json(payload: &str) -> Result<Push, Unreadable> {
    match serde_json::from_str::<Value>(payload) {
        Ok(v) => parse(&v),
        Err(_) => Err(Unreadable::NotACall("not JSON".into())),
    }
}

/// Reads an FCM data map (`RemoteMessage.getData()`: every value a string).
pub fn parse_map(data: &HashMap<String, String>) -> Result<Push, Unreadable> {
    let v: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    parse(&Value::Object(v))
}

fn parse(v: &Value) -> Result<Push, Unreadable> {
    let text = |k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(str::to_string);
    // A number as JSON has it, or as FCM's strings carry it.
    let number = |k: &str| match &v[k] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    match v["event"].as_str() {
        Some("incoming_call") => {
            let call_id = text("callId");
            let bad = |missing| Unreadable::BadRing {
                call_id: call_id.clone(),
                missing,
            };
            let ring = Ring {
                call_id: call_id.clone().ok_or_else(|| bad("callId"))?,
                from_user_id: text("fromUserId").ok_or_else(|| bad("fromUserId"))?,
                video: v["type"] == "video",
                ring_epoch: number("ringEpoch").ok_or_else(|| bad("ringEpoch"))?,
                expires_at: number("expiresAt").ok_or_else(|| bad("expiresAt"))?,
                caller_display_name: text("callerDisplayName"),
            };
            Ok(Push::Ring(RingPush {
                // JSON's true, or FCM's "true".
                test: v["test"] == true || v["test"] == "true",
                sent_at: number("timestamp").unwrap_or(0),
                avatar_url: text("callerAvatarUrl"),
                ring,
            }))
        }
        Some("call_cancelled") => Ok(Push::Cancel {
            call_id: text("callId").ok_or_else(|| Unreadable::NotACall("callId".into()))?,
            reason: text("reason").unwrap_or_else(|| "call_ended".into()),
        }),
        Some(other) => Err(Unreadable::NotACall(format!("event {other}"))),
        None => Err(Unreadable::NotACall("no event".into())),
    }
}

/// The server's clock as this device best knows it: `offset_ms` is server
/// minus device, measured when the events socket authenticated (None when
/// it never has: then the device's clock is not trusted to judge age, and
/// the providers' own TTLs, set from the ring's expiry, stand in).
pub fn is_stale(ring: &Ring, device_now: UnixMillis, offset_ms: Option<i64>) -> bool {
    let Some(offset) = offset_ms else {
        return false;
    };
    let server_now = device_now.saturating_add_signed(offset);
    server_now > ring.expires_at.saturating_add(STALE_TOLERANCE_MS)
}

/// The UUID CallKit and Telecom know a call by: the server's call id when it
/// is a UUID, else one derived from it (the same every time).
pub fn call_uuid_for(call_id: &str) -> String {
    match uuid::Uuid::parse_str(call_id) {
        Ok(u) => u.hyphenated().to_string(),
        Err(_) => uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, call_id.as_bytes())
            .hyphenated()
            .to_string(),
    }
}

/// A UUID as the core keys calls by (CallKit hands out upper case).
pub fn normalize_uuid(uuid: &str) -> String {
    uuid::Uuid::parse_str(uuid).map_or_else(|_| uuid.to_string(), |u| u.hyphenated().to_string())
}

pub fn incoming_call(ring: &RingPush) -> IncomingCall {
    let r = &ring.ring;
    IncomingCall {
        call_uuid: call_uuid_for(&r.call_id),
        call_id: r.call_id.clone(),
        caller_name: r
            .caller_display_name
            .clone()
            .unwrap_or_else(|| r.from_user_id.clone()),
        handle: r.from_user_id.clone(),
        video: r.video,
        avatar_url: ring.avatar_url.clone(),
    }
}

/// What a payload that cannot be read must still show on iOS: a call that
/// ends at once (an unreported VoIP push gets the app terminated).
pub fn unreadable_decision(unreadable: Unreadable) -> PushDecision {
    match unreadable {
        Unreadable::NotACall(reason) => PushDecision::NotACall { reason },
        Unreadable::BadRing { call_id, missing } => {
            let call_id = call_id.unwrap_or_default();
            let call_uuid = if call_id.is_empty() {
                uuid::Uuid::new_v4().hyphenated().to_string()
            } else {
                call_uuid_for(&call_id)
            };
            tracing::warn!(call_id = %call_id, missing, "malformed ring push: reported and ended");
            PushDecision::ReportAndEnd {
                call: IncomingCall {
                    call_uuid,
                    call_id,
                    caller_name: "Unknown caller".into(),
                    handle: String::new(),
                    video: false,
                    avatar_url: None,
                },
                reason: EndedReason::Failed,
            }
        }
    }
}

/// A test push (`switchboard push-test`) is shown and ended at once: it
/// reached the phone, and the system call UI accepted it.
pub fn test_push_decision(call: IncomingCall) -> PushDecision {
    tracing::info!(call_id = %call.call_id, "test push received: reported and ended");
    PushDecision::ReportAndEnd {
        call,
        reason: EndedReason::RemoteEnded,
    }
}

/// The decision for a payload without a `Client` (no call state): a ring is
/// reported, or reported and ended when stale. `Client::handle_push` gives
/// the same answers and also knows duplicates and calls already over.
#[uniffi::export]
pub fn classify_push(
    payload: String,
    device_now_ms: u64,
    server_clock_offset_ms: Option<i64>,
) -> PushDecision {
    decide_without_state(parse_json(&payload), device_now_ms, server_clock_offset_ms)
}

/// [`classify_push`] for an FCM data map.
#[uniffi::export]
pub fn classify_push_data(
    data: HashMap<String, String>,
    device_now_ms: u64,
    server_clock_offset_ms: Option<i64>,
) -> PushDecision {
    decide_without_state(parse_map(&data), device_now_ms, server_clock_offset_ms)
}

fn decide_without_state(
    push: Result<Push, Unreadable>,
    device_now: UnixMillis,
    offset: Option<i64>,
) -> PushDecision {
    match push {
        Ok(Push::Ring(ring)) => {
            let call = incoming_call(&ring);
            if ring.test {
                test_push_decision(call)
            } else if is_stale(&ring.ring, device_now, offset) {
                PushDecision::ReportAndEnd {
                    call,
                    reason: EndedReason::Unanswered,
                }
            } else {
                PushDecision::Report { call }
            }
        }
        Ok(Push::Cancel { .. }) => PushDecision::NotACall {
            reason: "a cancel".into(),
        },
        Err(e) => unreadable_decision(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(expires_at: u64) -> Ring {
        Ring {
            call_id: "c".into(),
            from_user_id: "alice".into(),
            video: false,
            ring_epoch: 1,
            expires_at,
            caller_display_name: None,
        }
    }

    #[test]
    fn age_is_judged_by_the_servers_clock() {
        let r = ring(100_000);
        // The phone's clock runs an hour fast; the server says it is 90 s.
        let hour = 3_600_000;
        assert!(!is_stale(&r, 90_000 + hour, Some(-(hour as i64))));
        assert!(is_stale(&r, 104_000 + hour, Some(-(hour as i64))));
        // Within the tolerance: rings.
        assert!(!is_stale(&r, 102_000, Some(0)));
        // No offset known: the device's clock is not trusted.
        assert!(!is_stale(&r, 10 * hour, None));
    }

    #[test]
    fn call_uuids_are_the_servers_ids_in_lower_case() {
        let id = "0B9F5C3E-1D2A-4C8B-9E7F-6A5B4C3D2E1F";
        assert_eq!(call_uuid_for(id), id.to_lowercase());
        assert_eq!(normalize_uuid(id), id.to_lowercase());
        let derived = call_uuid_for("not-a-uuid");
        assert_eq!(derived, call_uuid_for("not-a-uuid"));
        assert!(uuid::Uuid::parse_str(&derived).is_ok());
    }

    #[test]
    fn strings_and_numbers_read_alike() {
        let json = r#"{"event":"incoming_call","callId":"c","fromUserId":"a","type":"video",
            "ringEpoch":5,"expiresAt":9,"timestamp":3}"#;
        let map: HashMap<String, String> = [
            ("event", "incoming_call"),
            ("callId", "c"),
            ("fromUserId", "a"),
            ("type", "video"),
            ("ringEpoch", "5"),
            ("expiresAt", "9"),
            ("timestamp", "3"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(parse_json(json), parse_map(&map));
        assert!(
            matches!(parse_map(&map), Ok(Push::Ring(r)) if r.ring.ring_epoch == 5 && r.sent_at == 3)
        );
    }

    #[test]
    fn every_payload_gets_a_decision() {
        let malformed = r#"{"event":"incoming_call","callId":"c"}"#;
        assert!(matches!(
            classify_push(malformed.into(), 0, None),
            PushDecision::ReportAndEnd { reason: EndedReason::Failed, call } if call.call_id == "c"
        ));
        for not_a_call in [
            "garbage",
            r#"{"aps":{"alert":"hi"}}"#,
            r#"{"event":"chat_message"}"#,
            r#"{"event":"call_cancelled","callId":"c","reason":"missed"}"#,
        ] {
            assert!(
                matches!(
                    classify_push(not_a_call.into(), 0, None),
                    PushDecision::NotACall { .. }
                ),
                "{not_a_call}"
            );
        }
    }
}
