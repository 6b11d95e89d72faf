//! The webhook sender: for apps that already send APNs / FCM from their own
//! backend, every push becomes a signed POST to a configured URL.
//!
//! Signature: header `X-Switchboard-Signature: t=<unix seconds>,v1=<hex>`,
//! where `<hex>` is HMAC-SHA256(secret, "<t>.<body>"). Receivers check it
//! with [`verify_signature`] (or the few lines in `PUSH.md`), refusing bodies
//! older than the replay window.
//!
//! Delivery: queued (the API never waits), one delivery per (call, device,
//! kind, ring epoch), retried on 429 / 5xx / transport errors with
//! exponential backoff and jitter, honouring `Retry-After`, and for rings only
//! while the ring is alive.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{constant_time, hmac};
use serde::Serialize;
use tokio::sync::mpsc;

use super::payload::PushPayload;
use crate::device::Platform;
use crate::ringing::{PushRequest, PushSender};
use crate::store::Store;

pub const SIGNATURE_HEADER: &str = "x-switchboard-signature";
/// Bodies signed longer ago than this are refused (replays).
pub const REPLAY_WINDOW: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: String,
    /// Attempts per push, the first included.
    pub max_attempts: u32,
    /// The first retry waits this long; each later one twice as long.
    pub initial_backoff: Duration,
}

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
    payload: PushPayload,
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

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Sends pushes as signed webhooks. `send` only queues.
pub struct WebhookSender {
    queue: mpsc::UnboundedSender<PushRequest>,
}

impl WebhookSender {
    /// Starts the delivery task on the current tokio runtime.
    pub fn spawn(config: WebhookConfig, store: Arc<dyn Store>) -> WebhookSender {
        let (queue, mut rx) = mpsc::unbounded_channel::<PushRequest>();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client with the default TLS setup");
        let config = Arc::new(config);
        tokio::spawn(async move {
            // (call, device, kind, epoch) -> when first queued; pruned after a day.
            let mut seen: HashMap<(String, String, &'static str, u64), u64> = HashMap::new();
            while let Some(push) = rx.recv().await {
                let now = unix_millis();
                seen.retain(|_, at| now.saturating_sub(*at) < 24 * 3600 * 1000);
                let key = match &push {
                    PushRequest::Ring {
                        call_id,
                        device_id,
                        ring_epoch,
                        ..
                    } => (call_id.clone(), device_id.clone(), "ring", *ring_epoch),
                    PushRequest::Cancel {
                        call_id, device_id, ..
                    } => (call_id.clone(), device_id.clone(), "cancel", 0),
                };
                if seen.insert(key, now).is_some() {
                    continue; // already delivered or on its way
                }
                let (client, config, store) = (client.clone(), config.clone(), store.clone());
                // Concurrent: one slow push never holds up the others.
                tokio::spawn(async move { deliver(&client, &config, &*store, push).await });
            }
        });
        WebhookSender { queue }
    }
}

impl PushSender for WebhookSender {
    fn send(&self, push: PushRequest) {
        let _ = self.queue.send(push);
    }
}

async fn deliver(
    client: &reqwest::Client,
    config: &WebhookConfig,
    store: &dyn Store,
    push: PushRequest,
) {
    let (user_id, device_id) = match &push {
        PushRequest::Ring {
            user_id, device_id, ..
        }
        | PushRequest::Cancel {
            user_id, device_id, ..
        } => (user_id.clone(), device_id.clone()),
    };
    let Ok(devices) = store.devices_of(&user_id) else {
        return;
    };
    let Some(device) = devices.into_iter().find(|d| d.device_id == device_id) else {
        return;
    };
    let now = unix_millis();
    let (payload, kind, token, expires_at) = match push {
        PushRequest::Ring {
            call_id,
            from_user_id,
            call_type,
            ring_epoch,
            expires_at,
            ..
        } => {
            let payload = PushPayload::incoming_call(
                &call_id,
                &from_user_id,
                call_type,
                ring_epoch,
                expires_at,
                now,
            );
            let (kind, token) = match device.platform {
                Platform::Ios => ("apnsVoip", device.push.apns_voip.clone()),
                _ => ("fcm", device.push.fcm.clone()),
            };
            (payload, kind, token, Some(expires_at))
        }
        PushRequest::Cancel {
            call_id, reason, ..
        } => {
            let payload = PushPayload::CallCancelled { call_id, reason };
            // Never VoIP for a cancel: iOS kills apps that get VoIP pushes
            // they do not report to CallKit.
            let (kind, token) = match device.platform {
                Platform::Ios => ("apnsAlert", device.push.apns_alert.clone()),
                _ => ("fcm", device.push.fcm.clone()),
            };
            (payload, kind, token, None)
        }
    };
    let Some(token) = token else {
        tracing::info!(user_id = %user_id, device_id = %device_id, platform = ?device.platform, "no push token of the needed kind");
        return;
    };
    let body = WebhookBody {
        user_id: &user_id,
        device_id: &device_id,
        platform: device.platform,
        token_kind: kind,
        token: &token,
        payload,
    };
    let body = serde_json::to_vec(&body).expect("webhook bodies serialize");
    let mut backoff = config.initial_backoff;
    for attempt in 1..=config.max_attempts {
        let timestamp = unix_millis() / 1000;
        let result = client
            .post(&config.url)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, sign(&config.secret, timestamp, &body))
            .body(body.clone())
            .send()
            .await;
        let retry_after = match result {
            Ok(r) if r.status().is_success() => {
                tracing::info!(user_id = %user_id, device_id = %device_id, platform = ?device.platform, attempt, "webhook push delivered");
                return;
            }
            Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs),
            Ok(r) => {
                // 4xx: the receiver refused this push; retrying cannot help.
                tracing::warn!(user_id = %user_id, device_id = %device_id, status = r.status().as_u16(), "webhook push refused");
                return;
            }
            Err(e) => {
                tracing::info!(user_id = %user_id, device_id = %device_id, error = %e, "webhook push failed");
                None
            }
        };
        let jitter = 0.8 + 0.4 * rand_unit();
        let wait = retry_after.unwrap_or(backoff.mul_f64(jitter));
        backoff *= 2;
        if let Some(expires_at) = expires_at
            && unix_millis() + wait.as_millis() as u64 >= expires_at
        {
            tracing::info!(user_id = %user_id, device_id = %device_id, "ring expired: not retrying");
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

/// A number in [0, 1) for jitter; quality does not matter here.
fn rand_unit() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1000) / 1000.0
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
