//! The call-control HTTP API as the device uses it (`control/API.md`):
//! register the device, create / accept / decline / end calls, acknowledge
//! rings, fetch a fresh call token. Errors keep the server's `code`, which
//! the call engine maps to end reasons (`answered_elsewhere`, ...).

use std::sync::Arc;

use serde_json::{Value, json};

use crate::call_engine::CallReport;
use crate::client::ClientConfig;
use crate::credentials::UserToken;
use crate::ports::{DevicePushTokens, IceServer};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The server refused: its status and `{code, message}`.
    #[error("{status} {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unreachable: {0}")]
    Transport(String),
}

impl ApiError {
    pub fn code(&self) -> &str {
        match self {
            ApiError::Refused { code, .. } => code,
            ApiError::Transport(_) => "unreachable",
        }
    }
}

/// What the device needs to join a call's media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinInfo {
    pub call_id: String,
    pub call_token: String,
    pub rtc_path: String,
    /// The signaling socket of the node hosting the room (`ws(s)://`);
    /// `None`: `rtc_path` on the API's host.
    pub rtc_url: Option<String>,
    pub ice_servers: Vec<IceServer>,
    /// The other side is in the call already: a create that the server
    /// made the answer to a crossed call (not `ringing`).
    pub answered: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, uniffi::Enum)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Ios,
    Android,
    Web,
}

impl Platform {
    fn as_str(self) -> &'static str {
        match self {
            Platform::Ios => "ios",
            Platform::Android => "android",
            Platform::Web => "web",
        }
    }
}

#[derive(Clone)]
pub struct CallApi {
    http: reqwest::Client,
    /// `http(s)://host:port`
    base: String,
    /// The user token: on 401 the app is asked for a fresh one and the
    /// request is sent once more.
    token: Arc<UserToken>,
    device_id: String,
}

impl CallApi {
    pub fn new(
        base: &str,
        token: Arc<UserToken>,
        device_id: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> CallApi {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .build()
            .unwrap_or_default();
        CallApi {
            http,
            base: base.trim_end_matches('/').to_string(),
            token,
            device_id: device_id.to_string(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn register_device(
        &self,
        config: &ClientConfig,
        tokens: &DevicePushTokens,
    ) -> Result<Option<crate::call_engine::Flags>, ApiError> {
        let body = device_registration(&self.device_id, config, tokens);
        let answer = self.post("/v1/devices", body).await?;
        // The device's feature flags (a server before them sends none).
        Ok(crate::events::flags_of(&answer))
    }

    /// `call_uuid` is the request's idempotency key: a retry after a lost
    /// answer gets the same call, never a second one.
    pub async fn create_call(
        &self,
        callee: &str,
        video: bool,
        data_channels: bool,
        call_uuid: &str,
    ) -> Result<JoinInfo, ApiError> {
        let body = json!({
            "calleeUserIds": [callee],
            "type": if video { "video" } else { "audio" },
            "deviceId": self.device_id,
            "dataChannels": data_channels,
        });
        join_info(self.post_with("/v1/calls", body, Some(call_uuid)).await?)
    }

    pub async fn accept(&self, call_id: &str) -> Result<JoinInfo, ApiError> {
        let body = json!({"deviceId": self.device_id});
        join_info(
            self.post(&format!("/v1/calls/{call_id}/accept"), body)
                .await?,
        )
    }

    pub async fn decline(&self, call_id: &str) -> Result<(), ApiError> {
        let body = json!({"deviceId": self.device_id});
        self.post(&format!("/v1/calls/{call_id}/decline"), body)
            .await
            .map(drop)
    }

    pub async fn end(&self, call_id: &str) -> Result<(), ApiError> {
        self.post(&format!("/v1/calls/{call_id}/end"), json!({}))
            .await
            .map(drop)
    }

    pub async fn ack(&self, call_id: &str) -> Result<(), ApiError> {
        let body = json!({"deviceId": self.device_id});
        self.post(&format!("/v1/calls/{call_id}/ack"), body)
            .await
            .map(drop)
    }

    /// Telemetry about a call (`POST /v1/calls/{id}/reports`). The system
    /// UI's error is CallKit's on iOS and Telecom's elsewhere.
    pub async fn report(
        &self,
        call_id: &str,
        report: &CallReport,
        platform: Platform,
    ) -> Result<(), ApiError> {
        let body = json!({"deviceId": self.device_id, "reports": [report_json(report, platform)]});
        self.post(&format!("/v1/calls/{call_id}/reports"), body)
            .await
            .map(drop)
    }

    pub async fn fresh_token(&self, call_id: &str) -> Result<JoinInfo, ApiError> {
        join_info(
            self.post(&format!("/v1/calls/{call_id}/token"), json!({}))
                .await?,
        )
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, ApiError> {
        self.post_with(path, body, None).await
    }

    async fn post_with(
        &self,
        path: &str,
        body: Value,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ApiError> {
        let token = self.token.get();
        let first = self.send(path, &body, idempotency_key, &token).await;
        if !matches!(first, Err(ApiError::Refused { status: 401, .. })) {
            return first;
        }
        // Expired (a cold start with an old token) or revoked: once more
        // with what the app gives now. The idempotency key makes the retry
        // of a create safe.
        match self.token.refresh(&token).await {
            Some(fresh) => self.send(path, &body, idempotency_key, &fresh).await,
            None => first,
        }
    }

    async fn send(
        &self,
        path: &str,
        body: &Value,
        idempotency_key: Option<&str>,
        token: &str,
    ) -> Result<Value, ApiError> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json");
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        let response = request
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| ApiError::Transport(e.to_string()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| ApiError::Transport(e.to_string()))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let field = |k: &str| value[k].as_str().unwrap_or_default().to_string();
        Err(ApiError::Refused {
            status: status.as_u16(),
            code: field("code"),
            message: field("message"),
        })
    }
}

fn join_info(v: Value) -> Result<JoinInfo, ApiError> {
    let call = &v["call"];
    let Some(call_token) = v["callToken"].as_str() else {
        // No token: the call is over already (e.g. the callee has no device).
        return Err(ApiError::Refused {
            status: 200,
            code: call["endReason"]
                .as_str()
                .unwrap_or("call_ended")
                .to_string(),
            message: format!("the call is {}", call["state"].as_str().unwrap_or("over")),
        });
    };
    let call_id = call["callId"]
        .as_str()
        .ok_or_else(|| ApiError::Transport("the server's answer names no call".into()))?;
    Ok(JoinInfo {
        call_id: call_id.to_string(),
        call_token: call_token.to_string(),
        rtc_path: v["rtcPath"].as_str().unwrap_or("/v1/rtc").to_string(),
        rtc_url: v["rtcUrl"]
            .as_str()
            .filter(|u| u.starts_with("ws://") || u.starts_with("wss://"))
            .map(str::to_string),
        ice_servers: serde_json::from_value(v["iceServers"].clone()).unwrap_or_default(),
        answered: call["state"] != "ringing",
    })
}

/// `POST /v1/devices`' body (control/API.md): the push tokens the platform
/// has, and whether the server may ring by VoIP push into CallKit
/// (`callkit`) or into Telecom (`telecom`).
fn device_registration(device_id: &str, config: &ClientConfig, tokens: &DevicePushTokens) -> Value {
    let platform = config.platform;
    let mut push = serde_json::Map::new();
    for (key, token) in [
        ("apnsVoip", &tokens.apns_voip),
        ("apnsAlert", &tokens.apns_alert),
        ("fcm", &tokens.fcm),
    ] {
        if let Some(token) = token {
            push.insert(key.into(), Value::String(token.clone()));
        }
    }
    let mut body = json!({
        "deviceId": device_id,
        "platform": platform.as_str(),
        "push": push,
        "capabilities": {
            "video": config.video,
            "callkit": platform == Platform::Ios && config.system_call_ui,
            "telecom": platform == Platform::Android && config.system_call_ui,
        },
    });
    for (key, value) in [
        ("bundleId", &config.bundle_id),
        ("apnsEnvironment", &config.apns_environment),
    ] {
        if let Some(value) = value {
            body[key] = Value::String(value.clone());
        }
    }
    body
}

/// A report on the wire (`control/API.md` "Call reports").
fn report_json(report: &CallReport, platform: Platform) -> Value {
    match report {
        CallReport::FirstAudio { after_accept_ms } => {
            json!({"type": "first_audio", "afterAcceptMs": after_accept_ms})
        }
        CallReport::FirstVideo { after_accept_ms } => {
            json!({"type": "first_video", "afterAcceptMs": after_accept_ms})
        }
        CallReport::AnsweredOnDevice { after_ui_shown_ms } => {
            json!({"type": "answered_on_device", "afterUiShownMs": after_ui_shown_ms})
        }
        CallReport::SystemUiError { code } => {
            let kind = match platform {
                Platform::Ios => "callkit_error",
                Platform::Android | Platform::Web => "telecom_error",
            };
            json!({"type": kind, "code": report_code(code)})
        }
        CallReport::MediaFailed { reason } => json!({"type": "media_failed", "reason": reason}),
        CallReport::Quality(q) => {
            let mut body = json!({
                "type": "quality",
                "lossRatio": q.loss_ratio.clamp(0.0, 1.0),
                "jitterMs": q.jitter_ms.clamp(0.0, 60_000.0),
            });
            if let Some(rtt) = q.rtt_ms {
                body["rttMs"] = json!(rtt.clamp(0.0, 60_000.0));
            }
            body
        }
    }
}

/// The server takes codes of `[a-z0-9_]{1,64}` and refuses the request
/// otherwise: an adapter's odd code is sent as `unknown` rather than lost.
fn report_code(code: &str) -> &str {
    let valid = (1..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid { code } else { "unknown" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(platform: Platform, system_call_ui: bool) -> ClientConfig {
        ClientConfig {
            server_url: "https://calls.example.com".into(),
            user_token: "t".into(),
            device_id: "d1".into(),
            platform,
            video: true,
            bundle_id: Some("app.example".into()),
            apns_environment: Some("production".into()),
            trusted_ca_pem: None,
            system_call_ui,
            data_channels: false,
        }
    }

    #[test]
    fn a_device_without_the_system_call_ui_is_registered_so_the_server_never_rings_it_by_voip() {
        let tokens = DevicePushTokens {
            apns_voip: Some("voip".into()),
            apns_alert: Some("alert".into()),
            fcm: None,
        };
        let capabilities = |platform, system_call_ui| {
            device_registration("d1", &config(platform, system_call_ui), &tokens)["capabilities"]
                .clone()
        };
        assert_eq!(
            capabilities(Platform::Ios, true),
            json!({"video": true, "callkit": true, "telecom": false})
        );
        assert_eq!(
            capabilities(Platform::Ios, false),
            json!({"video": true, "callkit": false, "telecom": false})
        );
        assert_eq!(
            capabilities(Platform::Android, true),
            json!({"video": true, "callkit": false, "telecom": true})
        );
        let body = device_registration("d1", &config(Platform::Ios, false), &tokens);
        assert_eq!(
            body["push"],
            json!({"apnsVoip": "voip", "apnsAlert": "alert"})
        );
        assert_eq!(body["bundleId"], "app.example");
    }

    #[test]
    fn a_config_saved_before_system_call_ui_existed_reads_back_with_it_on() {
        let saved = r#"{"serverUrl":"https://x","userToken":"t","deviceId":"d","platform":"ios",
            "video":true,"bundleId":null,"apnsEnvironment":null,"trustedCaPem":null}"#;
        let config: ClientConfig = serde_json::from_str(saved).unwrap();
        assert!(config.system_call_ui);
    }
}
