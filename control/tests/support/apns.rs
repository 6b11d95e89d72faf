//! A stand-in for APNs (`api.push.apple.com`) that checks what Apple checks
//! and answers what Apple answers: HTTP/2 over TLS only; `POST
//! /3/device/<hex token>`; the ES256 provider token verified against the
//! test key's public half (`kid`, `iss`, `iat` within the hour); topic,
//! push type, priority, expiration, collapse id and apns-id headers; JSON
//! errors `{"reason": ...}` (410 also with `timestamp`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use super::tls::{TlsServer, serve_h2};
use super::{Answer, Script};

pub const KEY_ID: &str = "ABC123DEFG";
pub const TEAM_ID: &str = "DEF123GHIJ";
pub const BUNDLE_ID: &str = "com.example.calls";

/// One push APNs accepted.
#[derive(Debug, Clone)]
pub struct ApnsPush {
    pub token: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
}

#[derive(Default)]
pub struct ApnsState {
    public_point: Vec<u8>,
    /// Every request that reached the handler.
    pub requests: AtomicUsize,
    pub accepted: Mutex<Vec<ApnsPush>>,
    /// Tokens APNs no longer knows: 410 Unregistered.
    pub unregistered: Mutex<HashSet<String>>,
    pub script: Script,
    /// Hold every request (a stalled APNs).
    pub stall: AtomicBool,
    /// Provider tokens seen (to check reuse).
    pub provider_tokens: Mutex<HashSet<String>>,
}

pub struct FakeApns {
    pub server: TlsServer,
    pub state: Arc<ApnsState>,
    /// The `.p8` the client signs with.
    pub key_pem: Vec<u8>,
}

impl FakeApns {
    pub async fn start() -> FakeApns {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let der = pair.to_pkcs8v1().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let key_pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        let state = Arc::new(ApnsState {
            public_point: pair.public_key().as_ref().to_vec(),
            ..ApnsState::default()
        });
        let app = axum::Router::new()
            .route("/3/device/{token}", post(handle))
            .fallback(|| async { error(404, "BadPath") })
            .with_state(state.clone());
        FakeApns {
            server: serve_h2(app).await,
            state,
            key_pem: key_pem.into_bytes(),
        }
    }

    pub fn accepted_for(&self, token: &str) -> Vec<ApnsPush> {
        let all = self.state.accepted.lock().unwrap();
        all.iter().filter(|p| p.token == token).cloned().collect()
    }

    pub fn script(&self, token: &str, answers: &[Answer]) {
        self.state.script.set(token, answers);
    }
}

fn error(status: u16, reason: &str) -> Response {
    let mut body = json!({ "reason": reason });
    if status == 410 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        body["timestamp"] = json!(now.as_millis() as u64);
    }
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What APNs checks, in roughly its order; `Err` is its answer.
fn check(
    state: &ApnsState,
    token: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), (u16, &'static str)> {
    if token.len() < 64 || token.len() > 200 || !token.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err((400, "BadDeviceToken"));
    }
    let Some(bearer) = header(headers, "authorization").and_then(|a| a.strip_prefix("bearer "))
    else {
        return Err((403, "MissingProviderToken"));
    };
    let jwt_header =
        jsonwebtoken::decode_header(bearer).map_err(|_| (403, "InvalidProviderToken"))?;
    if jwt_header.alg != Algorithm::ES256 || jwt_header.kid.as_deref() != Some(KEY_ID) {
        return Err((403, "InvalidProviderToken"));
    }
    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Value>(
        bearer,
        &DecodingKey::from_ec_der(&state.public_point),
        &validation,
    )
    .map_err(|_| (403, "InvalidProviderToken"))?
    .claims;
    if claims["iss"] != TEAM_ID {
        return Err((403, "InvalidProviderToken"));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let iat = claims["iat"]
        .as_u64()
        .ok_or((403, "InvalidProviderToken"))?;
    if iat > now + 60 {
        return Err((403, "InvalidProviderToken"));
    }
    if now - iat > 3600 {
        return Err((403, "ExpiredProviderToken"));
    }
    state
        .provider_tokens
        .lock()
        .unwrap()
        .insert(bearer.to_string());
    let push_type = header(headers, "apns-push-type").unwrap_or("");
    let Some(topic) = header(headers, "apns-topic") else {
        return Err((400, "MissingTopic"));
    };
    let voip_topic = format!("{BUNDLE_ID}.voip");
    match push_type {
        "voip" if topic == voip_topic => {}
        "alert" | "background" if topic == BUNDLE_ID => {}
        "voip" | "alert" | "background" => return Err((400, "DeviceTokenNotForTopic")),
        _ => return Err((400, "InvalidPushType")),
    }
    match (push_type, header(headers, "apns-priority")) {
        ("background", Some("5")) | ("voip" | "alert", Some("10" | "5")) => {}
        _ => return Err((400, "BadPriority")),
    }
    if header(headers, "apns-expiration").is_some_and(|e| e.parse::<u64>().is_err()) {
        return Err((400, "BadExpirationDate"));
    }
    if header(headers, "apns-collapse-id").is_some_and(|c| c.len() > 64) {
        return Err((400, "BadCollapseId"));
    }
    if header(headers, "apns-id").is_some_and(|id| uuid::Uuid::parse_str(id).is_err()) {
        return Err((400, "BadMessageId"));
    }
    if body.is_empty() {
        return Err((400, "PayloadEmpty"));
    }
    let limit = if push_type == "voip" { 5120 } else { 4096 };
    if body.len() > limit {
        return Err((413, "PayloadTooLarge"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(_)) => Ok(()),
        _ => Err((400, "BadPayload")),
    }
}

async fn handle(
    State(state): State<Arc<ApnsState>>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    // Held while stalled (up to a minute), then answered as usual: APNs
    // coming back.
    for _ in 0..1200 {
        if !state.stall.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Err((status, reason)) = check(&state, &token, &headers, &body) {
        return error(status, reason);
    }
    if state.unregistered.lock().unwrap().contains(&token) {
        return error(410, "Unregistered");
    }
    let scripted = state.script.next(&token);
    if let Some((status, reason, retry_after)) = scripted {
        let mut response = error(status, reason);
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", secs.to_string().parse().unwrap());
        }
        return response;
    }
    let apns_id = header(&headers, "apns-id")
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    state.accepted.lock().unwrap().push(ApnsPush {
        token,
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        body: serde_json::from_slice(&body).unwrap(),
    });
    (StatusCode::OK, [("apns-id", apns_id)]).into_response()
}
