//! APNs over HTTP/2 with token (`.p8`) authentication.
//!
//! One client, so one multiplexed connection per environment (production,
//! sandbox) carries every push. Rings are VoIP pushes to the PushKit token
//! (`apns-push-type: voip`, topic `<bundleId>.voip`, priority 10, expiring
//! with the ring). Cancels go to the regular token and are never VoIP: iOS
//! terminates apps that get a VoIP push they do not report to CallKit. A
//! missed call is a visible alert; other cancels are background pushes.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::payload::PushPayload;
use super::provider_token::{ProviderToken, ProviderTokenError};
use super::{Outcome, Outgoing, TokenKind, reason_label, retry_after};
use crate::call::{CallType, StopReason};
use crate::device::ApnsEnvironment;

pub const PRODUCTION_URL: &str = "https://api.push.apple.com";
pub const SANDBOX_URL: &str = "https://api.sandbox.push.apple.com";
/// APNs refuses longer collapse ids.
const MAX_COLLAPSE_ID: usize = 64;

#[derive(Debug, Clone)]
pub struct ApnsConfig {
    /// The `.p8` key's contents.
    pub key_pem: Vec<u8>,
    pub key_id: String,
    pub team_id: String,
    /// The app's bundle id, for devices that registered none.
    pub default_bundle_id: String,
    pub production_url: String,
    pub sandbox_url: String,
    /// One more trusted root (a test server's, or an egress proxy's).
    pub extra_root_pem: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApnsSetupError {
    #[error(transparent)]
    Key(#[from] ProviderTokenError),
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

pub struct ApnsClient {
    http: reqwest::Client,
    config: ApnsConfig,
    token: Mutex<ProviderToken>,
}

/// APNs' error body: `{"reason": "...", "timestamp": ms}` (timestamp on 410).
#[derive(Deserialize)]
struct ErrorBody {
    reason: String,
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ApnsClient {
    pub fn new(config: ApnsConfig) -> Result<ApnsClient, ApnsSetupError> {
        let token = ProviderToken::new(&config.key_pem, &config.key_id, &config.team_id)?;
        Ok(ApnsClient {
            http: super::http2_client(config.extra_root_pem.as_deref())?,
            config,
            token: Mutex::new(token),
        })
    }

    fn bearer(&self) -> Result<String, ProviderTokenError> {
        let mut token = self.token.lock().unwrap_or_else(|e| e.into_inner());
        token.bearer(unix_seconds()).map(str::to_string)
    }

    /// One attempt. Logs carry the `apns-id` (ours: Apple does not dedupe
    /// on it, the dispatcher does), never the token.
    pub async fn send(&self, push: &Outgoing) -> Outcome {
        let bearer = match self.bearer() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "APNs provider token");
                return Outcome::Rejected {
                    reason: "provider_token".into(),
                };
            }
        };
        let base = match push.apns_environment {
            ApnsEnvironment::Production => &self.config.production_url,
            ApnsEnvironment::Sandbox => &self.config.sandbox_url,
        };
        let bundle = push
            .bundle_id
            .as_deref()
            .unwrap_or(&self.config.default_bundle_id);
        let apns_id = uuid::Uuid::new_v4().to_string();
        let request = ApnsRequest::for_push(push, bundle, unix_seconds());
        let body = match serde_json::to_vec(&request.body) {
            Ok(b) => b,
            Err(_) => {
                return Outcome::Rejected {
                    reason: "payload".into(),
                };
            }
        };
        let mut collapse_id = push.call_id.clone();
        collapse_id.truncate(MAX_COLLAPSE_ID);
        let sent = self
            .http
            .post(format!("{base}/3/device/{}", push.token))
            .header("authorization", format!("bearer {bearer}"))
            .header("apns-push-type", request.push_type)
            .header("apns-topic", request.topic)
            .header("apns-priority", request.priority)
            .header("apns-expiration", request.expiration.to_string())
            .header("apns-collapse-id", collapse_id)
            .header("apns-id", &apns_id)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(call_id = %push.call_id, user_id = %push.user_id, device_id = %push.device_id, platform = "ios", apns_id = %apns_id, error = %e, "APNs request failed");
                return Outcome::Retry {
                    reason: "transport".into(),
                    retry_after: None,
                };
            }
        };
        let status = response.status().as_u16();
        if status == 200 {
            tracing::info!(call_id = %push.call_id, user_id = %push.user_id, device_id = %push.device_id, platform = "ios", apns_id = %apns_id, push_type = request.push_type, "APNs accepted");
            return Outcome::Delivered;
        }
        let wait = retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        let reason = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.reason)
            .unwrap_or_else(|_| format!("http_{status}"));
        tracing::warn!(call_id = %push.call_id, user_id = %push.user_id, device_id = %push.device_id, platform = "ios", apns_id = %apns_id, status, reason = %reason_label(&reason), "APNs refused");
        self.classify(status, &reason, &bearer, wait)
    }

    fn classify(&self, status: u16, reason: &str, bearer: &str, wait: Option<Duration>) -> Outcome {
        let reason_owned = reason_label(reason);
        match (status, reason) {
            (410, _) => Outcome::TokenGone {
                reason: reason_owned,
            },
            (403, "ExpiredProviderToken") => {
                let mut token = self.token.lock().unwrap_or_else(|e| e.into_inner());
                if token.expired(bearer, unix_seconds()) {
                    Outcome::Retry {
                        reason: reason_owned,
                        retry_after: Some(Duration::ZERO),
                    }
                } else {
                    tracing::error!("APNs calls a fresh provider token expired: check the clock");
                    Outcome::Rejected {
                        reason: reason_owned,
                    }
                }
            }
            (429, _) | (500..=599, _) => Outcome::Retry {
                reason: reason_owned,
                retry_after: wait,
            },
            _ => Outcome::Rejected {
                reason: reason_owned,
            },
        }
    }
}

/// Headers and body of one APNs request, decided by what is sent.
/// The JSON body APNs delivers to the app for `push` (public so the client
/// core's tests parse exactly what this sender sends).
pub fn body(push: &Outgoing, bundle: &str, now: u64) -> serde_json::Value {
    ApnsRequest::for_push(push, bundle, now).body
}

struct ApnsRequest {
    push_type: &'static str,
    topic: String,
    priority: &'static str,
    /// Unix seconds; 0: deliver now or never.
    expiration: u64,
    body: serde_json::Value,
}

impl ApnsRequest {
    fn for_push(push: &Outgoing, bundle: &str, now: u64) -> ApnsRequest {
        let mut body = serde_json::to_value(&push.payload).unwrap_or_default();
        match (&push.payload, push.token_kind) {
            // A device without CallKit: the ring is a notification the
            // user taps (the app then answers through its own UI).
            (
                PushPayload::IncomingCall {
                    expires_at,
                    from_user_id,
                    caller_display_name,
                    call_type,
                    ..
                },
                TokenKind::ApnsAlert,
            ) => {
                let caller = caller_display_name.as_deref().unwrap_or(from_user_id);
                let kind = match call_type {
                    CallType::Video => "Video call",
                    CallType::Audio => "Call",
                };
                body["aps"] = serde_json::json!({
                    "alert": {"title": caller, "body": format!("{kind}: incoming")},
                    "sound": "default",
                    "thread-id": "calls",
                    "category": "INCOMING_CALL",
                    "interruption-level": "time-sensitive",
                });
                ApnsRequest {
                    push_type: "alert",
                    topic: bundle.to_string(),
                    priority: "10",
                    expiration: expires_at / 1000,
                    body,
                }
            }
            (PushPayload::IncomingCall { expires_at, .. }, _) => ApnsRequest {
                push_type: "voip",
                topic: format!("{bundle}.voip"),
                priority: "10",
                expiration: expires_at / 1000,
                body,
            },
            (
                PushPayload::CallCancelled {
                    reason: StopReason::Missed,
                    ..
                },
                _,
            ) => {
                body["aps"] = serde_json::json!({
                    "alert": {"title": "Missed call"},
                    "thread-id": "calls",
                });
                ApnsRequest {
                    push_type: "alert",
                    topic: bundle.to_string(),
                    priority: "10",
                    // Worth showing for a day.
                    expiration: now + 24 * 3600,
                    body,
                }
            }
            (PushPayload::CallCancelled { .. }, kind) => {
                debug_assert_eq!(kind, TokenKind::ApnsAlert);
                body["aps"] = serde_json::json!({"content-available": 1});
                ApnsRequest {
                    push_type: "background",
                    topic: bundle.to_string(),
                    // Apple requires priority 5 for background pushes.
                    priority: "5",
                    expiration: now + 60,
                    body,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::{CallType, CallerDisplay};
    use crate::device::Platform;

    fn outgoing(payload: PushPayload, kind: TokenKind) -> Outgoing {
        Outgoing {
            call_id: "c1".into(),
            user_id: "bob".into(),
            device_id: "phone".into(),
            platform: Platform::Ios,
            token_kind: kind,
            token: "ab".repeat(32),
            payload,
            expires_at: None,
            apns_environment: ApnsEnvironment::Production,
            bundle_id: None,
        }
    }

    #[test]
    fn rings_are_voip_and_cancels_never_are() {
        let ring = PushPayload::incoming_call(
            "c1",
            "alice",
            CallType::Audio,
            1,
            1_800_000_040_000,
            CallerDisplay::default(),
            1_800_000_000_000,
        );
        let r = ApnsRequest::for_push(
            &outgoing(ring, TokenKind::ApnsVoip),
            "com.example.app",
            1_800_000_000,
        );
        assert_eq!(
            (r.push_type, r.topic.as_str(), r.priority, r.expiration),
            ("voip", "com.example.app.voip", "10", 1_800_000_040)
        );
        assert!(r.body.get("aps").is_none());

        for (reason, push_type, priority) in [
            (StopReason::AnsweredElsewhere, "background", "5"),
            (StopReason::CallerCancelled, "background", "5"),
            (StopReason::Missed, "alert", "10"),
        ] {
            let cancel = PushPayload::CallCancelled {
                call_id: "c1".into(),
                reason,
            };
            let r = ApnsRequest::for_push(
                &outgoing(cancel, TokenKind::ApnsAlert),
                "com.example.app",
                1_800_000_000,
            );
            assert_eq!(
                (r.push_type, r.topic.as_str(), r.priority),
                (push_type, "com.example.app", priority),
                "{reason:?}"
            );
            assert!(r.body.get("aps").is_some());
        }
    }
}
