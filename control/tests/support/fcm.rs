//! A stand-in for FCM HTTP v1 and Google's OAuth token endpoint, checking
//! what they check and answering with their error schema.
//!
//! - `POST /token` (OAuth 2 JWT bearer grant): the assertion is an RS256 JWT
//!   from the service account, verified against the test key's public half,
//!   with `iss` = client email, `aud` = this token URI and the FCM scope.
//!   Plain HTTP: `gcp_auth` trusts only the system's roots, and a test must
//!   not change the process's trust store.
//! - `POST /v1/projects/{project}/messages:send` over TLS, HTTP/2 only: a
//!   token this endpoint issued, the right project, a message with a token,
//!   data values all strings, a valid android priority and ttl, no unknown
//!   fields. Errors are `google.rpc.Status` with an `FcmError` detail.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::KeyPair;
use axum::Form;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};

use super::tls::{TlsServer, serve_h2};
use super::{Answer, Script};

pub const PROJECT: &str = "switchboard-test";
const CLIENT_EMAIL: &str = "push@switchboard-test.iam.gserviceaccount.com";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

#[derive(Default)]
pub struct FcmState {
    public_der: Vec<u8>,
    token_uri: Mutex<String>,
    issued: Mutex<HashSet<String>>,
    pub token_requests: AtomicUsize,
    pub requests: AtomicUsize,
    /// Accepted messages (the `message` object).
    pub accepted: Mutex<Vec<Value>>,
    /// Registration tokens FCM no longer knows: 404 UNREGISTERED.
    pub unregistered: Mutex<HashSet<String>>,
    pub script: Script,
}

pub struct FakeFcm {
    pub server: TlsServer,
    pub state: Arc<FcmState>,
    /// A service-account key file (JSON) pointing at this token endpoint.
    pub service_account_json: String,
}

impl FakeFcm {
    pub async fn start() -> FakeFcm {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
        let private_pem =
            format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        let state = Arc::new(FcmState {
            public_der: pair.public_key().as_ref().to_vec(),
            ..FcmState::default()
        });
        // OAuth over plain HTTP on loopback (see the module docs).
        let oauth = axum::Router::new()
            .route("/token", post(token))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let token_uri = format!("http://{}/token", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, oauth).await.unwrap() });
        *state.token_uri.lock().unwrap() = token_uri.clone();
        let fcm = axum::Router::new()
            .route("/v1/projects/{project}/messages:send", post(send))
            .with_state(state.clone());
        let service_account_json = json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "test-key-1",
            "private_key": private_pem,
            "client_email": CLIENT_EMAIL,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        })
        .to_string();
        FakeFcm {
            server: serve_h2(fcm).await,
            state,
            service_account_json,
        }
    }

    pub fn accepted_for(&self, token: &str) -> Vec<Value> {
        let all = self.state.accepted.lock().unwrap();
        all.iter()
            .filter(|m| m["token"] == token)
            .cloned()
            .collect()
    }

    pub fn script(&self, token: &str, answers: &[Answer]) {
        self.state.script.set(token, answers);
    }
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: String,
    assertion: String,
}

async fn token(State(state): State<Arc<FcmState>>, Form(req): Form<TokenRequest>) -> Response {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let refuse = |description: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": description})),
        )
            .into_response()
    };
    if req.grant_type != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
        return refuse("unsupported grant_type");
    }
    let token_uri = state.token_uri.lock().unwrap().clone();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[token_uri]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    // gcp_auth pads its base64url segments; Google accepts that, so do we.
    let assertion: Vec<&str> = req
        .assertion
        .split('.')
        .map(|part| part.trim_end_matches('='))
        .collect();
    let claims = match jsonwebtoken::decode::<Value>(
        &assertion.join("."),
        &DecodingKey::from_rsa_der(&state.public_der),
        &validation,
    ) {
        Ok(data) => data.claims,
        Err(e) => {
            eprintln!("fake OAuth: assertion refused: {e}");
            return refuse("Invalid JWT Signature.");
        }
    };
    let scopes = claims["scope"].as_str().unwrap_or("");
    if !scopes.split(' ').any(|s| s == SCOPE) {
        return refuse("scope");
    }
    let (iat, exp) = (claims["iat"].as_u64(), claims["exp"].as_u64());
    if !matches!((iat, exp), (Some(i), Some(e)) if e > i && e - i <= 3600) {
        return refuse("Invalid JWT: Token must be a short-lived token (60 minutes)");
    }
    let access = format!("ya29.test-{}", uuid::Uuid::new_v4().simple());
    state.issued.lock().unwrap().insert(access.clone());
    axum::Json(json!({"access_token": access, "expires_in": 3599, "token_type": "Bearer"}))
        .into_response()
}

/// FCM's error: `google.rpc.Status` with an `FcmError` detail.
fn fcm_error(status: u16, code: &str, message: &str) -> Response {
    let rpc_status = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    let body = json!({"error": {
        "code": status, "message": message, "status": rpc_status,
        "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]
    }});
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn check_message(message: &Value) -> Result<(), &'static str> {
    const FIELDS: [&str; 10] = [
        "name",
        "data",
        "notification",
        "android",
        "webpush",
        "apns",
        "fcm_options",
        "token",
        "topic",
        "condition",
    ];
    let Some(fields) = message.as_object() else {
        return Err("message must be an object");
    };
    if fields.keys().any(|k| !FIELDS.contains(&k.as_str())) {
        return Err("Invalid JSON payload received. Unknown name in message");
    }
    let targets = ["token", "topic", "condition"]
        .iter()
        .filter(|t| fields.contains_key(**t))
        .count();
    if targets != 1 {
        return Err("exactly one of token, topic, condition");
    }
    if let Some(data) = fields.get("data") {
        let Some(data) = data.as_object() else {
            return Err("data must be a map");
        };
        if !data.values().all(Value::is_string) {
            return Err("Invalid value at 'message.data': values must be strings");
        }
        let reserved = |k: &str| {
            matches!(k, "from" | "notification" | "message_type")
                || k.starts_with("google")
                || k.starts_with("gcm")
        };
        if data.keys().any(|k| reserved(k)) {
            return Err("Invalid data key: reserved word");
        }
    }
    if let Some(android) = fields.get("android") {
        if let Some(p) = android.get("priority")
            && !matches!(p.as_str(), Some("NORMAL" | "HIGH"))
        {
            return Err("Invalid value at 'message.android.priority'");
        }
        if let Some(ttl) = android.get("ttl") {
            let valid = ttl
                .as_str()
                .and_then(|t| t.strip_suffix('s'))
                .is_some_and(|n| {
                    let (secs, frac) = n.split_once('.').unwrap_or((n, "0"));
                    !secs.is_empty()
                        && secs.chars().all(|c| c.is_ascii_digit())
                        && (1..=9).contains(&frac.len())
                        && frac.chars().all(|c| c.is_ascii_digit())
                });
            if !valid {
                return Err(
                    "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration)",
                );
            }
        }
    }
    Ok(())
}

async fn send(
    State(state): State<Arc<FcmState>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.strip_prefix("Bearer "));
    if !bearer.is_some_and(|b| state.issued.lock().unwrap().contains(b)) {
        return fcm_error(
            401,
            "THIRD_PARTY_AUTH_ERROR",
            "Request had invalid authentication credentials.",
        );
    }
    if project != PROJECT {
        return fcm_error(403, "SENDER_ID_MISMATCH", "SenderId mismatch");
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return fcm_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.");
    };
    let message = &request["message"];
    if let Err(why) = check_message(message) {
        return fcm_error(400, "INVALID_ARGUMENT", why);
    }
    let Some(token) = message["token"].as_str() else {
        return fcm_error(400, "INVALID_ARGUMENT", "token");
    };
    if state.unregistered.lock().unwrap().contains(token) {
        return fcm_error(404, "UNREGISTERED", "Requested entity was not found.");
    }
    let scripted = state.script.next(token);
    if let Some((status, code, retry_after)) = scripted {
        let mut response = fcm_error(status, code, "scripted");
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", secs.to_string().parse().unwrap());
        }
        return response;
    }
    state.accepted.lock().unwrap().push(message.clone());
    let id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    axum::Json(json!({"name": format!("projects/{PROJECT}/messages/0:{id}")})).into_response()
}
