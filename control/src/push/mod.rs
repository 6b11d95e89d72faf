//! Push delivery: rings and cancels to devices that are not listening on an
//! events socket.
//!
//! - `payload`: the standard JSON every provider carries (never SDP or ICE).
//! - `dispatch`: the one delivery loop. It dedupes, resolves the device's
//!   token, rate-limits per device, retries transient failures while the ring
//!   lives, prunes dead tokens and counts everything.
//! - Providers, each turning one [`Outgoing`] into one [`Outcome`]:
//!   `apns` (HTTP/2, ES256 provider token from `provider_token`), `fcm`
//!   (HTTP v1, OAuth via `gcp_auth`) and `webhook` (a signed POST to the
//!   app's own backend).

pub mod apns;
pub mod dispatch;
pub mod fcm;
pub mod metrics;
pub mod payload;
pub mod provider_token;
pub mod webhook;

use std::time::Duration;

use crate::call::UnixMillis;
use crate::device::{ApnsEnvironment, Platform};
use payload::PushPayload;

/// Which of a device's registered tokens a push goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// PushKit: rings CallKit. Only for rings.
    ApnsVoip,
    /// Regular APNs: cancels and missed-call notices (never VoIP).
    ApnsAlert,
    Fcm,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::ApnsVoip => "apnsVoip",
            TokenKind::ApnsAlert => "apnsAlert",
            TokenKind::Fcm => "fcm",
        }
    }
}

/// One push, resolved to one device token: what a provider sends.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub call_id: String,
    pub user_id: String,
    pub device_id: String,
    pub platform: Platform,
    pub token_kind: TokenKind,
    pub token: String,
    pub payload: PushPayload,
    /// For rings: when the ring ends (Unix ms). Nothing is delivered or
    /// retried after it.
    pub expires_at: Option<UnixMillis>,
    /// iOS: which APNs environment issued the token.
    pub apns_environment: ApnsEnvironment,
    /// iOS: the app's bundle id, when the device registered one.
    pub bundle_id: Option<String>,
}

impl Outgoing {
    pub fn is_ring(&self) -> bool {
        matches!(self.payload, PushPayload::IncomingCall { .. })
    }
}

/// What a provider made of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Transient (429, 5xx, a transport error): worth another attempt,
    /// after `retry_after` when the provider said so.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The token is dead (APNs 410, FCM `UNREGISTERED`): forget it.
    TokenGone {
        reason: String,
    },
    /// Final: a configuration or payload fault (bad token format, wrong
    /// topic, bad credentials). Counted and logged; the registry is untouched.
    Rejected {
        reason: String,
    },
}

/// A `Retry-After` header in seconds (the form APNs, FCM and most webhooks use).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Provider error strings become metric labels: keep them short and tame.
fn reason_label(reason: &str) -> String {
    let ok = !reason.is_empty()
        && reason.len() <= 40
        && reason
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        reason.to_string()
    } else {
        "other".into()
    }
}

/// The HTTP/2 client every provider uses: rustls, HTTP/2 only (one
/// multiplexed connection per host), and optionally one more trusted root
/// (a test server, or an egress proxy's CA).
pub fn http2_client(extra_root_pem: Option<&[u8]>) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .http2_prior_knowledge()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .http2_keep_alive_interval(Duration::from_secs(60))
        .http2_keep_alive_while_idle(true)
        .pool_idle_timeout(None);
    if let Some(pem) = extra_root_pem {
        builder = builder.tls_certs_merge([reqwest::Certificate::from_pem(pem)?]);
    }
    builder.build()
}

use crate::unix_millis;

/// A number in [0, 1) for retry jitter; quality does not matter here.
fn jitter_unit() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1000) / 1000.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn provider_reasons_become_tame_labels() {
        assert_eq!(super::reason_label("BadDeviceToken"), "BadDeviceToken");
        assert_eq!(super::reason_label("QUOTA_EXCEEDED"), "QUOTA_EXCEEDED");
        assert_eq!(super::reason_label("<html>"), "other");
        assert_eq!(super::reason_label(""), "other");
    }
}
