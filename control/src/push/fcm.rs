//! FCM HTTP v1: `POST {base}/v1/projects/{project}/messages:send` with an
//! OAuth access token from the service account (`gcp_auth` signs the
//! assertion, posts it to the key file's `token_uri` and caches the token).
//!
//! Messages are data-only (every value a string) so the app's
//! ConnectionService code, not the system tray, decides what to show. Rings
//! are `HIGH` priority with `ttl` = the time left to ring; cancels are
//! `NORMAL`: high-priority messages that show nothing get an app deprioritised.

use std::sync::Arc;

use gcp_auth::{CustomServiceAccount, TokenProvider};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Outcome, Outgoing, reason_label, retry_after};

pub const PRODUCTION_URL: &str = "https://fcm.googleapis.com";
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

#[derive(Debug, Clone)]
pub struct FcmConfig {
    /// The service-account key file's JSON.
    pub service_account_json: String,
    /// Defaults to the key file's `project_id`.
    pub project_id: Option<String>,
    pub base_url: String,
    pub extra_root_pem: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum FcmSetupError {
    #[error("service account key: {0}")]
    Key(#[from] gcp_auth::Error),
    #[error("no project id: set one or use a key file that has project_id")]
    NoProject,
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

pub struct FcmClient {
    http: reqwest::Client,
    url: String,
    auth: Arc<CustomServiceAccount>,
    /// `gcp_auth` does not re-check its cache after waiting for its write
    /// lock, so concurrent first pushes would each fetch a token; one at a
    /// time, all but the first find it cached.
    token_gate: tokio::sync::Mutex<()>,
}

/// FCM's error body (google.rpc.Status with FcmError details).
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorStatus,
}

#[derive(Deserialize)]
struct ErrorStatus {
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<ErrorDetail>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "errorCode")]
    error_code: Option<String>,
}

impl FcmClient {
    pub fn new(config: FcmConfig) -> Result<FcmClient, FcmSetupError> {
        let auth = CustomServiceAccount::from_json(&config.service_account_json)?;
        let project = config
            .project_id
            .clone()
            .or_else(|| auth.project_id().map(str::to_string))
            .ok_or(FcmSetupError::NoProject)?;
        Ok(FcmClient {
            http: super::http2_client(config.extra_root_pem.as_deref())?,
            url: format!(
                "{}/v1/projects/{project}/messages:send",
                config.base_url.trim_end_matches('/')
            ),
            auth: Arc::new(auth),
            token_gate: tokio::sync::Mutex::new(()),
        })
    }

    /// Fetches an OAuth access token for FCM (`switchboard doctor`: the
    /// service account is accepted by its token endpoint).
    pub async fn fetch_oauth_token(&self) -> Result<(), gcp_auth::Error> {
        let _one_at_a_time = self.token_gate.lock().await;
        self.auth.token(&[SCOPE]).await.map(drop)
    }

    pub async fn send(&self, push: &Outgoing) -> Outcome {
        let token = {
            let _one_at_a_time = self.token_gate.lock().await;
            self.auth.token(&[SCOPE]).await
        };
        let token = match token {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(call_id = %push.call_id, user_id = %push.user_id, device_id = %push.device_id, platform = "android", error = ?e, "FCM OAuth token");
                return Outcome::Retry {
                    reason: "oauth".into(),
                    retry_after: None,
                };
            }
        };
        let sent = self
            .http
            .post(&self.url)
            .bearer_auth(token.as_str())
            .header("content-type", "application/json")
            .body(message(push, super::unix_millis()).to_string())
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(call_id = %push.call_id, user_id = %push.user_id, device_id = %push.device_id, platform = "android", error = %e, "FCM request failed");
                return Outcome::Retry {
                    reason: "transport".into(),
                    retry_after: None,
                };
            }
        };
        let status = response.status().as_u16();
        if response.status().is_success() {
            tracing::info!(call_id = %push.call_id, user_id = %push.user_id, device_id = %push.device_id, platform = "android", "FCM accepted");
            return Outcome::Delivered;
        }
        let wait = retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        let code = serde_json::from_slice::<ErrorBody>(&body)
            .ok()
            .map(|b| {
                b.error
                    .details
                    .into_iter()
                    .find_map(|d| d.error_code)
                    .unwrap_or(b.error.status)
            })
            .unwrap_or_default();
        let reason = if code.is_empty() {
            format!("http_{status}")
        } else {
            reason_label(&code)
        };
        tracing::warn!(call_id = %push.call_id, user_id = %push.user_id, device_id = %push.device_id, platform = "android", status, reason = %reason, "FCM refused");
        match (status, code.as_str()) {
            (_, "UNREGISTERED") => Outcome::TokenGone { reason },
            (429 | 500..=599, _) | (_, "QUOTA_EXCEEDED" | "UNAVAILABLE" | "INTERNAL") => {
                Outcome::Retry {
                    reason,
                    retry_after: wait,
                }
            }
            _ => Outcome::Rejected { reason },
        }
    }
}

/// The v1 message: data-only, every value a string. Public so the client
/// core's tests parse exactly what this sender sends.
pub fn message(push: &Outgoing, now: u64) -> Value {
    let data: Map<String, Value> = match serde_json::to_value(&push.payload) {
        Ok(Value::Object(fields)) => fields
            .into_iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, Value::String(s))
            })
            .collect(),
        _ => Map::new(),
    };
    let (priority, ttl_seconds) = match push.expires_at {
        Some(expires_at) if push.is_ring() => ("HIGH", expires_at.saturating_sub(now) / 1000),
        _ => ("NORMAL", 60),
    };
    json!({
        "message": {
            "token": push.token,
            "data": data,
            "android": {
                "priority": priority,
                "ttl": format!("{ttl_seconds}s"),
                "collapse_key": push.call_id,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::{CallType, CallerDisplay, StopReason};
    use crate::device::{ApnsEnvironment, Platform};
    use crate::push::TokenKind;
    use crate::push::payload::PushPayload;

    fn outgoing(payload: PushPayload, expires_at: Option<u64>) -> Outgoing {
        Outgoing {
            call_id: "c1".into(),
            user_id: "bob".into(),
            device_id: "pixel".into(),
            platform: Platform::Android,
            token_kind: TokenKind::Fcm,
            token: "fcm-token:1".into(),
            payload,
            expires_at,
            apns_environment: ApnsEnvironment::Production,
            bundle_id: None,
        }
    }

    #[test]
    fn a_ring_is_high_priority_data_only_with_string_values_and_the_time_left_as_ttl() {
        let now = 1_800_000_002_000;
        let ring = PushPayload::incoming_call(
            "c1",
            "alice",
            CallType::Video,
            5,
            1_800_000_040_000,
            CallerDisplay::default(),
            now,
        );
        let m = message(&outgoing(ring, Some(1_800_000_040_000)), now);
        assert_eq!(m["message"]["android"]["priority"], "HIGH");
        assert_eq!(m["message"]["android"]["ttl"], "38s");
        assert!(m["message"].get("notification").is_none());
        let data = m["message"]["data"].as_object().unwrap();
        assert!(data.values().all(Value::is_string));
        assert_eq!(data["ringEpoch"], "5");
        assert_eq!(data["event"], "incoming_call");
    }

    #[test]
    fn a_cancel_is_normal_priority() {
        let cancel = PushPayload::CallCancelled {
            call_id: "c1".into(),
            reason: StopReason::AnsweredElsewhere,
        };
        let m = message(&outgoing(cancel, None), 0);
        assert_eq!(m["message"]["android"]["priority"], "NORMAL");
        assert_eq!(m["message"]["data"]["reason"], "answered_elsewhere");
    }
}
