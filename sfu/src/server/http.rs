//! HTTP endpoints: the signaling WebSocket, metrics, health, and the
//! development-only endpoints (call and user tokens, the demo page).

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{State, rejection::JsonRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use control::api::ApiError;
use control::call_token::CallGrant;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use signaling::Permissions;
use tower_http::services::ServeDir;

use super::AppState;
use super::session::{self, Frame, Outgoing};

pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route(control::api::RTC_PATH, get(rtc_socket))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if state.config.metrics_listen.is_none() {
        router = router.route("/metrics", get(metrics));
    }
    if state.config.dev_token_endpoint {
        router = router
            .route("/dev/token", post(dev_token))
            .route("/dev/user-token", post(dev_user_token));
        if let Some(dir) = demo_dir(&state.config) {
            tracing::warn!(dir = %dir.display(), "development mode: the demo page is at /demo/");
            // The page and its compiled script (`npm run build`).
            router = router
                .nest_service("/demo/esm", ServeDir::new(dir.join("dist/esm")))
                .nest_service("/demo", ServeDir::new(dir.join("demo")));
        }
    }
    router.with_state(state)
}

/// Unknown paths and methods get the typed error body too.
pub async fn no_such_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take this method",
    )
}

/// The operations listener (`metrics_listen`): metrics and health only.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Bytes a signaling socket reads at a time (most messages are smaller;
/// an SDP takes a few reads).
const SOCKET_READ_BUFFER: usize = 16 * 1024;

async fn rtc_socket(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    State(state): State<AppState>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return ApiError::upgrade_required(rejection).into_response(),
    };
    // Frames up to 4x our limit reach the session, which answers
    // `message_too_large` and carries on; beyond that the socket closes (1009).
    let hard_limit = state.config.max_message_bytes * 4;
    // Reads grow the buffer as a frame needs; tungstenite's 128 KiB default
    // would be held by every idle socket.
    ws.max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .read_buffer_size(SOCKET_READ_BUFFER)
        .write_buffer_size(0)
        .on_upgrade(move |socket| serve_socket(socket, state))
}

async fn serve_socket(socket: WebSocket, state: AppState) {
    let (sink, stream) = socket.split();
    let stream = stream.map(|m| match m {
        Ok(Message::Text(t)) => Ok(Frame::Text(t.to_string())),
        Ok(Message::Binary(_)) => Ok(Frame::Binary),
        Ok(Message::Close(_)) => Ok(Frame::Close),
        Ok(Message::Ping(_) | Message::Pong(_)) => Ok(Frame::Control),
        Err(e) if is_too_large(&e) => Ok(Frame::TooLarge),
        Err(e) => Err(e),
    });
    let sink = sink.with(|out: Outgoing| async move {
        Ok::<_, axum::Error>(match out {
            Outgoing::Text(text) => Message::text(text),
            Outgoing::Ping => Message::Ping(Default::default()),
            Outgoing::Close(reason) => Message::Close(Some(CloseFrame {
                code: reason.code(),
                reason: reason.text().into(),
            })),
        })
    });
    session::run(Box::pin(stream), Box::pin(sink), state).await;
}

/// The WebSocket library refused a frame or message over its size limit
/// (axum wraps tungstenite's error; one tungstenite version serves both,
/// and `tests/abuse.rs` fails if this stops matching).
fn is_too_large(error: &axum::Error) -> bool {
    use tungstenite::Error as WsError;
    std::error::Error::source(error)
        .and_then(|e| e.downcast_ref::<WsError>())
        .is_some_and(|e| matches!(e, WsError::Capacity(_)))
}

/// A shard whose loop has not come round for this long is stuck: it wakes
/// at least once a second when idle.
const SHARD_MAX_SILENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// The engine shards that are not live (thread ended, or loop stuck).
fn dead_shards(state: &AppState) -> Vec<usize> {
    let now = std::time::Instant::now();
    (0..state.shards.len())
        .filter(|i| !state.shards[*i].health.is_live(now, SHARD_MAX_SILENCE))
        .collect()
}

/// Liveness: every engine shard is running. A dead one means calls placed
/// on it fail: restart the process.
async fn healthz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    let dead = dead_shards(&state);
    if dead.is_empty() {
        return Ok("ok");
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shard_down",
        format!("engine shards not running: {dead:?}"),
    ))
}

/// Readiness for new calls: live and not draining (a load balancer stops
/// sending new work; the calls already here continue).
async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if !state.lifecycle.is_serving() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this node is shutting down",
        ));
    }
    healthz(State(state)).await.map(|_| "ready")
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DevTokenRequest {
    room: String,
    user_id: String,
    participant_id: Option<String>,
    permissions: Option<Permissions>,
    /// As control sets it for calls created for more than two people.
    #[serde(default)]
    group: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DevTokenResponse {
    token: String,
    participant_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ice_servers: Vec<control::turn_issuer::IceServer>,
}

/// Development only (off unless configured): mints a call token for any room.
async fn dev_token(
    State(state): State<AppState>,
    body: Result<Json<DevTokenRequest>, JsonRejection>,
) -> Result<Json<DevTokenResponse>, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let valid = |s: &str| !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control);
    if !valid(&req.room) || !valid(&req.user_id) {
        return Err(ApiError::bad_request(
            "room and userId must be 1-128 printable characters",
        ));
    }
    let participant_id = match req.participant_id {
        Some(p) if valid(&p) => p,
        Some(_) => {
            return Err(ApiError::bad_request(
                "participantId must be 1-128 printable characters",
            ));
        }
        None => format!("PA_{:016x}", rand::random::<u64>()),
    };
    let grant = CallGrant {
        call_id: req.room,
        user_id: req.user_id,
        participant_id: participant_id.clone(),
        permissions: req.permissions.unwrap_or(Permissions::ALL),
        group: req.group,
        node: None,
        device: None,
    };
    let ice_servers = state.turn.as_ref().map_or_else(Vec::new, |t| {
        t.ice_servers(&grant.user_id, control::unix_millis())
    });
    Ok(Json(DevTokenResponse {
        token: state.tokens.mint(&grant),
        participant_id,
        ice_servers,
    }))
}

/// The Capacitor package directory whose demo to serve, if there is one.
fn demo_dir(config: &crate::config::Config) -> Option<std::path::PathBuf> {
    let dir = config
        .dev_demo_dir
        .clone()
        .unwrap_or_else(|| "native/capacitor".into());
    dir.join("demo/index.html").is_file().then_some(dir)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DevUserTokenRequest {
    user_id: String,
}

/// Development only: a user token for anyone, as the app's backend would
/// issue it (signed with the first API key).
async fn dev_user_token(
    State(state): State<AppState>,
    body: Result<Json<DevUserTokenRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let valid = !req.user_id.is_empty()
        && req.user_id.len() <= 128
        && !req.user_id.chars().any(char::is_control);
    if !valid {
        return Err(ApiError::bad_request(
            "userId must be 1-128 printable characters",
        ));
    }
    let Some(key) = state.config.api_keys.iter().find(|k| !k.revoked) else {
        return Err(ApiError::bad_request("no API key is configured"));
    };
    let now = control::unix_millis() / 1000;
    let ttl = std::time::Duration::from_secs(3600);
    let token = control::auth::mint_user_token(key, &req.user_id, ttl, now);
    Ok(Json(serde_json::json!({ "token": token })))
}
