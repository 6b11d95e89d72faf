//! The standard push payloads (mission section 6.1): a wake and ring
//! trigger, never signaling: no SDP, no ICE, no tokens.

use serde::Serialize;

use crate::call::{CallType, CallerDisplay, StopReason, UnixMillis};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all_fields = "camelCase")]
pub enum PushPayload {
    /// Ring this device (VoIP on iOS, high-priority data on Android).
    #[serde(rename = "incoming_call")]
    IncomingCall {
        call_id: String,
        from_user_id: String,
        #[serde(rename = "type")]
        call_type: CallType,
        /// When the push was made (Unix ms).
        timestamp: UnixMillis,
        /// Seconds the ring has left: the app ignores the push after that.
        ttl_seconds: u64,
        /// Identifies this ring attempt: the same call and epoch twice is a
        /// duplicate delivery, not a second call.
        ring_epoch: u64,
        /// When the ring stops (Unix ms).
        expires_at: UnixMillis,
        /// As the caller's app gave them; absent otherwise.
        #[serde(skip_serializing_if = "Option::is_none")]
        caller_display_name: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        caller_avatar_url: Option<String>,
        /// All media goes through the SFU; kept for clients of the mission's model.
        mode_hint: &'static str,
        /// `switchboard push-test`: no call stands behind it. The client
        /// core reports it to CallKit / Telecom (iOS requires that of
        /// every VoIP push) and ends it at once.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        test: bool,
    },
    /// Stop ringing (a regular push: never VoIP).
    #[serde(rename = "call_cancelled")]
    CallCancelled { call_id: String, reason: StopReason },
}

impl PushPayload {
    pub fn incoming_call(
        call_id: &str,
        from_user_id: &str,
        call_type: CallType,
        ring_epoch: u64,
        expires_at: UnixMillis,
        caller: CallerDisplay,
        now: UnixMillis,
    ) -> PushPayload {
        PushPayload::IncomingCall {
            call_id: call_id.to_string(),
            from_user_id: from_user_id.to_string(),
            call_type,
            timestamp: now,
            ttl_seconds: expires_at.saturating_sub(now) / 1000,
            ring_epoch,
            expires_at,
            caller_display_name: caller.display_name,
            caller_avatar_url: caller.avatar_url,
            mode_hint: "sfu",
            test: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incoming_call_has_the_documented_shape() {
        let p = PushPayload::incoming_call(
            "c1",
            "alice",
            CallType::Video,
            7,
            1_000_040_000,
            CallerDisplay::default(),
            1_000_002_000,
        );
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({
                "event": "incoming_call", "callId": "c1", "fromUserId": "alice", "type": "video",
                "timestamp": 1_000_002_000u64, "ttlSeconds": 38, "ringEpoch": 7,
                "expiresAt": 1_000_040_000u64, "modeHint": "sfu"
            })
        );
        let named = PushPayload::incoming_call(
            "c1",
            "alice",
            CallType::Audio,
            7,
            1_000_040_000,
            CallerDisplay {
                display_name: Some("Alice A.".into()),
                avatar_url: Some("https://example.com/a.png".into()),
            },
            1_000_002_000,
        );
        let named = serde_json::to_value(&named).unwrap();
        assert_eq!(named["callerDisplayName"], "Alice A.");
        assert_eq!(named["callerAvatarUrl"], "https://example.com/a.png");
        let c = PushPayload::CallCancelled {
            call_id: "c1".into(),
            reason: StopReason::AnsweredElsewhere,
        };
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({"event": "call_cancelled", "callId": "c1", "reason": "answered_elsewhere"})
        );
    }
}
