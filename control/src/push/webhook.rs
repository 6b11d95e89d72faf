//! The webhook provider: for apps that already send APNs / FCM from their
//! own backend, every push becomes a signed POST to a configured URL.
//!
//! Signature: header `X-Switchboard-Signature: t=<unix seconds>,v1=<hex>`,
//! where `<hex>` is HMAC-SHA256(secret, "<t>.<body>"). Receivers check it
//! with [`verify_signature`] (or the few lines in `PUSH.md`), refusing bodies
//! older than the replay window.

use std::time::Duration;

use aws_lc_rs::{constant_time, hmac};
use serde::Serialize;

use super::payload::PushPayload;
use super::{Outcome, Outgoing, retry_after};
use crate::device::Platform;

pub const SIGNATURE_HEADER: &str = "x-switchboard-signature";
/// Bodies signed longer ago than this are refused (replays).
pub const REPLAY_WINDOW: Duration = Duration::from_secs(300);

/// What the app's backend receives.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WebhookBody<'a> {
    user_id: &'a str,
    device_id: &'a str,
    platform: Platform,
    /// Which of the device's tokens to use: `apnsVoip` for rings on iOS,
    /// `apnsAlert` for cancels on iOS, `fcm` on Android.
    token_kind: &'static str,
    token: &'a str,
    payload: &'a PushPayload,
}

pub fn sign(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("malformed signature header")]
    Malformed,
    #[error("signed outside the replay window")]
    Stale,
    #[error("signature does not match")]
    Mismatch,
}

/// Checks a webhook as a receiver must: the header's timestamp within the
/// replay window of `now_unix_seconds`, and the HMAC over exactly this body.
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now_unix_seconds: u64,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let (t, v1) = t.zip(v1).ok_or(SignatureError::Malformed)?;
    if now_unix_seconds.abs_diff(t) > REPLAY_WINDOW.as_secs() {
        return Err(SignatureError::Stale);
    }
    let expected = sign(secret, t, body);
    let expected_v1 = expected.rsplit("v1=").next().unwrap_or_default();
    constant_time::verify_slices_are_equal(expected_v1.as_bytes(), v1.as_bytes())
        .map_err(|_| SignatureError::Mismatch)
}

/// Posts pushes, signed, to the app's backend. One attempt per `send`; the
/// dispatcher retries.
pub struct WebhookClient {
    http: reqwest::Client,
    url: String,
    secret: String,
}

impl WebhookClient {
    pub fn new(url: String, secret: String) -> Result<WebhookClient, reqwest::Error> {
        // Not HTTP/2-only: app backends are often HTTP/1.1.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(WebhookClient { http, url, secret })
    }

    pub async fn send(&self, push: &Outgoing) -> Outcome {
        let body = WebhookBody {
            user_id: &push.user_id,
            device_id: &push.device_id,
            platform: push.platform,
            token_kind: push.token_kind.as_str(),
            token: &push.token,
            payload: &push.payload,
        };
        let Ok(body) = serde_json::to_vec(&body) else {
            return Outcome::Rejected {
                reason: "payload".into(),
            };
        };
        let timestamp = super::unix_millis() / 1000;
        let sent = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, sign(&self.secret, timestamp, &body))
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Outcome::Delivered,
            Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => Outcome::Retry {
                reason: format!("http_{}", r.status().as_u16()),
                retry_after: retry_after(r.headers()),
            },
            // 4xx: the receiver refused this push; retrying cannot help.
            Ok(r) => Outcome::Rejected {
                reason: format!("http_{}", r.status().as_u16()),
            },
            Err(e) => {
                tracing::info!(call_id = %push.call_id, user_id = %push.user_id, device_id = %push.device_id, platform = push.platform.as_str(), error = %e, "webhook request failed");
                Outcome::Retry {
                    reason: "transport".into(),
                    retry_after: None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_an_altered_or_old_body_does_not() {
        let body = br#"{"payload":{"event":"incoming_call"}}"#;
        let header = sign("s3cret", 1_000_000, body);
        assert_eq!(verify_signature("s3cret", &header, body, 1_000_010), Ok(()));
        assert_eq!(
            verify_signature(
                "s3cret",
                &header,
                br#"{"payload":{"event":"incoming_calL"}}"#,
                1_000_010
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature("other", &header, body, 1_000_010),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature("s3cret", &header, body, 1_000_000 + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_signature("s3cret", "v1=abc", body, 1_000_000),
            Err(SignatureError::Malformed)
        );
    }
}
