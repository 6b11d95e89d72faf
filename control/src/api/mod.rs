//! The call-control HTTP API under `/v1`: devices and calls. Every endpoint
//! authenticates (user token or API key); store and state-machine work runs
//! on blocking threads.

mod error;
mod events;
mod flags;
mod views;

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRef, FromRequestParts, Path, Query, State};
use axum::handler::Handler;
use axum::http::Method;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{MethodFilter, MethodRouter, on};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use error::ApiError;
use views::{CallView, CallWithToken, DeviceRequest};

use crate::auth::{Authenticator, Principal, valid_id};
use crate::call::{Call, CallType, CallerDisplay, ParticipantState, Role};
use crate::call_token::{CallGrant, CallTokens, GrantDevice};
use crate::rate_limit::{Limiter, Rate};
use crate::service::{CallService, NewCall};
use crate::store::{IdempotencyRecord, StoreError, TokenMove};

/// Idempotency records live this long: far longer than any client retries.
const IDEMPOTENCY_TTL_MS: u64 = 24 * 3600 * 1000;

#[derive(Clone)]
pub struct ControlState {
    pub auth: Arc<Authenticator>,
    pub service: Arc<CallService>,
    pub tokens: Arc<CallTokens>,
    pub limits: Arc<ApiLimits>,
    /// Delivers rings and events to devices' events sockets.
    pub events: Arc<crate::ringing::HubRinger>,
    /// Mints TURN credentials into join info; `None`: no relay configured.
    pub turn: Option<Arc<crate::turn_issuer::TurnIssuer>>,
    /// Draining: no new calls here (503 `draining`); stopping: the events
    /// sockets close (1001).
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// The nodes serving now (`GET /v1/nodes`).
    pub nodes: Arc<dyn crate::nodes::NodeRegistry>,
}

/// The API's rate limits (each over 429 with `Retry-After`).
pub struct ApiLimits {
    /// Any request, per authenticated caller (key and user).
    pub requests: Limiter,
    /// Calls created per user.
    pub creates: Limiter,
    /// Calls ringing one callee (a flood of calls at one person).
    pub rings: Limiter,
    /// Report requests per call and device.
    pub reports: Limiter,
    /// Once-per-call reports (first audio, ...) per call and device: a
    /// retried request does not count them twice.
    pub once_per_call: Limiter,
}

impl ApiLimits {
    pub fn new(requests: Rate, creates: Rate, rings: Rate) -> ApiLimits {
        ApiLimits {
            requests: Limiter::new(requests),
            creates: Limiter::new(creates),
            rings: Limiter::new(rings),
            reports: Limiter::new(REPORTS_PER_CALL_AND_DEVICE),
            once_per_call: Limiter::new(ONCE_PER_CALL),
        }
    }

    /// One request by the caller (`key_id`, acting for `user_id`; empty for
    /// an operator), or 429.
    fn check_request(&self, key_id: &str, user_id: &str) -> Result<(), ApiError> {
        self.requests
            .check(&format!("{key_id}/{user_id}"), std::time::Instant::now())
            .map_err(|wait| ApiError::rate_limited("requests", wait))
    }

    /// For a cluster: the call limits (creates per user, rings per callee)
    /// shared by every node; the request rate stays per node (a shield for
    /// the node itself, checked on every request without a round trip).
    pub fn shared(
        requests: Rate,
        creates: Rate,
        rings: Rate,
        buckets: Arc<dyn crate::rate_limit::SharedBuckets>,
    ) -> ApiLimits {
        ApiLimits {
            requests: Limiter::new(requests),
            creates: Limiter::shared(creates, "creates", buckets.clone()),
            rings: Limiter::shared(rings, "rings", buckets),
            // Telemetry: per node. A retry that reaches another node may
            // count a once-per-call report twice; no round trip is worth it.
            reports: Limiter::new(REPORTS_PER_CALL_AND_DEVICE),
            once_per_call: Limiter::new(ONCE_PER_CALL),
        }
    }
}

/// A device reports quality every few seconds and a handful of one-off
/// events per call: 30 requests a minute is far above either.
const REPORTS_PER_CALL_AND_DEVICE: Rate = Rate {
    count: 30,
    per: std::time::Duration::from_secs(60),
};
/// A once-per-call report seen again within this window is a retry.
const ONCE_PER_CALL: Rate = Rate {
    count: 1,
    per: std::time::Duration::from_secs(600),
};

/// One route: its method and path, and the handler (made for that method,
/// so the two cannot disagree).
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    handler: MethodRouter<ControlState>,
}

fn route<H, T>(method: Method, path: &'static str, handler: H) -> Route
where
    H: Handler<T, ControlState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("a standard method");
    Route {
        method,
        path,
        handler: on(filter, handler),
    }
}

/// The SFU's signaling WebSocket, on the same HTTP port as this API.
pub const RTC_PATH: &str = "/v1/rtc";

/// Where the caller is, as the app (or its edge) knows it: the room of the
/// call goes near it (`crate::placement`).
pub const REGION_HEADER: &str = "x-switchboard-region";

/// Every route this API serves. The router is built from this list, and
/// `sfu/tests/contract.rs` checks it against `control/openapi.yaml`.
pub fn routes() -> Vec<Route> {
    vec![
        route(Method::POST, "/v1/devices", register_device),
        route(Method::GET, "/v1/devices", list_devices),
        route(Method::DELETE, "/v1/devices/{deviceId}", delete_device),
        route(Method::POST, "/v1/devices/{deviceId}/heartbeat", heartbeat),
        route(Method::POST, "/v1/calls", create_call),
        route(Method::GET, "/v1/calls", recent_calls),
        route(Method::GET, "/v1/calls/{callId}", get_call),
        route(Method::POST, "/v1/calls/{callId}/token", fresh_token),
        action_route(CallAction::Accept, "/v1/calls/{callId}/accept"),
        action_route(CallAction::Decline, "/v1/calls/{callId}/decline"),
        action_route(CallAction::Ack, "/v1/calls/{callId}/ack"),
        action_route(CallAction::Cancel, "/v1/calls/{callId}/cancel"),
        action_route(CallAction::End, "/v1/calls/{callId}/end"),
        route(Method::POST, "/v1/calls/{callId}/reports", call_reports),
        route(Method::GET, "/v1/events", events::events_socket),
        route(Method::GET, "/v1/nodes", list_nodes),
        route(Method::POST, "/v1/nodes/{nodeId}/drain", drain_node),
        route(Method::GET, "/v1/flags", flags::list_flags),
        route(Method::GET, "/v1/flags/changes", flags::flag_changes),
        route(Method::PUT, "/v1/flags/{name}", flags::put_flag),
    ]
}

pub fn router(state: ControlState) -> Router {
    // Routes sharing a path share one method router.
    let mut by_path: Vec<(&'static str, MethodRouter<ControlState>)> = Vec::new();
    for r in routes() {
        match by_path.iter_mut().find(|(path, _)| *path == r.path) {
            Some((_, methods)) => *methods = std::mem::take(methods).merge(r.handler),
            None => by_path.push((r.path, r.handler)),
        }
    }
    by_path
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| {
            router.route(path, methods)
        })
        .with_state(state)
}

pub(crate) use crate::unix_millis as now_ms;

/// The authenticated caller, as an extractor.
pub struct Caller(pub Principal);

impl<S> FromRequestParts<S> for Caller
where
    ControlState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Caller, ApiError> {
        let state = ControlState::from_ref(state);
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let principal = state
            .auth
            .authenticate(header("authorization"), header("x-switchboard-user"))?;
        state
            .limits
            .check_request(&principal.key_id, &principal.user_id)?;
        Ok(Caller(principal))
    }
}

/// Runs store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "blocking task failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })?
}

/// A request body: a JSON object, read into `T`. serde's derived structs
/// would also take an array (`["a", "b"]` for `{x: "a", y: "b"}`), which
/// the contract does not allow.
fn body<T: DeserializeOwned>(body: Result<Json<Value>, JsonRejection>) -> Result<T, ApiError> {
    let Json(value) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    from_object(value)
}

fn from_object<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// An operator: the app backend's API key, acting for nobody
/// (`X-Switchboard-User` is not needed). A user token is refused (403).
/// An operator's request: the API key alone. Holds the key's id (who
/// changed what, in audit records).
pub struct Operator(pub String);

impl<S> FromRequestParts<S> for Operator
where
    ControlState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Operator, ApiError> {
        let state = ControlState::from_ref(state);
        let authorization = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if authorization.is_some_and(|h| h.starts_with("Bearer ")) {
            // A valid user token or not: devices do not operate nodes.
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this route takes the app backend's API key, not a user token",
            ));
        }
        let key_id = state.auth.authenticate_api_key(authorization)?;
        state.limits.check_request(&key_id, "")?;
        Ok(Operator(key_id))
    }
}

// ---- nodes ------------------------------------------------------------------

#[derive(Serialize)]
struct NodeList {
    nodes: Vec<crate::nodes::NodeRecord>,
}

async fn list_nodes(
    State(state): State<ControlState>,
    _: Operator,
) -> Result<Json<NodeList>, ApiError> {
    blocking(move || {
        Ok(Json(NodeList {
            nodes: state.nodes.nodes(now_ms())?,
        }))
    })
    .await
}

/// Asks a node to drain, as SIGTERM would: it takes no new calls, its live
/// calls go on until they end or its drain timeout, then it exits. The node
/// sees the request at its next heartbeat (within 2 s).
async fn drain_node(
    State(state): State<ControlState>,
    _: Operator,
    Path(node_id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    blocking(move || {
        if !state.nodes.ask_to_drain(&node_id, now_ms())? {
            return Err(ApiError::not_found());
        }
        tracing::info!(%node_id, "drain asked through the API");
        Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"nodeId": node_id, "drainAsked": true})),
        ))
    })
    .await
}

// ---- devices ----------------------------------------------------------------

async fn register_device(
    State(state): State<ControlState>,
    Caller(caller): Caller,
    req: Result<Json<Value>, JsonRejection>,
) -> Result<Json<views::RegisteredDevice>, ApiError> {
    let device = body::<DeviceRequest>(req)?.into_device(&caller.user_id, now_ms());
    device.validate()?;
    let moves = match caller.via {
        crate::auth::Via::ApiKey => TokenMove::Any,
        crate::auth::Via::UserToken => TokenMove::SameInstallOrUser,
    };
    blocking(move || {
        if let Err(e) = state.service.store.register_device(&device, moves) {
            if matches!(e, StoreError::PushTokenInUse) {
                tracing::warn!(user_id = %device.user_id, device_id = %device.device_id, platform = device.platform.as_str(), "device registration refused: its push token belongs to another user's device");
                if let Some(m) = &state.service.metrics {
                    m.push_token_conflicts.inc();
                }
            }
            return Err(e.into());
        }
        tracing::info!(user_id = %device.user_id, device_id = %device.device_id, platform = device.platform.as_str(), "device registered");
        // What the app may offer on this device (the events socket says
        // when it changes).
        let flags = state.service.flags.get(&*state.service.store)?;
        let flags = flags.for_device(&crate::flags::Subject::of(&device));
        Ok(Json(views::RegisteredDevice { device, flags }))
    })
    .await
}

async fn list_devices(
    State(state): State<ControlState>,
    Caller(caller): Caller,
) -> Result<Json<Vec<crate::device::Device>>, ApiError> {
    blocking(move || Ok(Json(state.service.store.devices_of(&caller.user_id)?))).await
}

async fn delete_device(
    State(state): State<ControlState>,
    Caller(caller): Caller,
    Path(device_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    blocking(move || {
        let found = state
            .service
            .store
            .delete_device(&caller.user_id, &device_id)?;
        device_found(found)
    })
    .await
}

async fn heartbeat(
    State(state): State<ControlState>,
    Caller(caller): Caller,
    Path(device_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    blocking(move || {
        let found = state
            .service
            .store
            .touch_device(&caller.user_id, &device_id, now_ms())?;
        device_found(found)
    })
    .await
}

/// 204 when the caller's device existed, else 404.
fn device_found(found: bool) -> Result<StatusCode, ApiError> {
    if found {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such device",
        ))
    }
}

// ---- calls --------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateCall {
    callee_user_ids: Vec<String>,
    #[serde(rename = "type")]
    call_type: CallTypeName,
    device_id: String,
    /// Shown on the callees' incoming-call screens (push payload).
    #[serde(default, deserialize_with = "present_string")]
    caller_display_name: Option<String>,
    /// An `https` URL of the caller's picture (push payload).
    #[serde(default, deserialize_with = "present_string")]
    caller_avatar_url: Option<String>,
    /// Members may send on the room's data channels (`sendData`).
    #[serde(default)]
    data_channels: bool,
}

/// An optional field that, when present, is a string: `null` is refused
/// (400), as the contract has it, not taken for absent.
fn present_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum CallTypeName {
    Audio,
    Video,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeviceBody {
    device_id: String,
}

/// How long a reservation binds its key while its request runs: the key of a
/// request that died (a crash, a killed process) is free again after this.
const RESERVATION_TTL_MS: u64 = 30_000;
/// The status of a reservation whose request has not finished.
const IN_PROGRESS: u16 = 0;

/// Checks an `Idempotency-Key` and reserves it for this request. Returns the
/// record now stored for the key: ours (`body == reservation`), or the
/// first request's.
fn reserve_key(
    state: &ControlState,
    headers: &HeaderMap,
    user_id: &str,
    request: &str,
    reservation: &str,
) -> Result<Option<IdempotencyRecord>, ApiError> {
    let Some(key) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = key.to_str().ok().filter(|k| valid_id(k)).ok_or_else(|| {
        ApiError::bad_request("Idempotency-Key must be 1-128 printable characters")
    })?;
    let now = now_ms();
    let record = IdempotencyRecord {
        user_id: user_id.to_string(),
        key: key.to_string(),
        request_hash: fingerprint(request),
        status: IN_PROGRESS,
        body: reservation.to_string(),
        expires_at: now + RESERVATION_TTL_MS,
    };
    let stored = state.service.store.put_idempotency(&record, now)?;
    if stored.request_hash != record.request_hash {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request",
        ));
    }
    Ok(Some(stored))
}

/// Settles this request's reservation by its outcome (`API.md`, "Retries"):
/// 2xx, 409 and 422 are kept for the key's 24 hours (a retry gets the same
/// call, or the same refusal); 400, 429 and 5xx release the key, so a
/// retry after fixing the request or waiting runs afresh.
fn settle_key(
    state: &ControlState,
    reserved: Option<&IdempotencyRecord>,
    reservation: &str,
    status: StatusCode,
) {
    let Some(record) = reserved.filter(|r| r.body == reservation) else {
        return; // no key, or the first request's
    };
    let keep = status.is_success()
        || status == StatusCode::CONFLICT
        || status == StatusCode::UNPROCESSABLE_ENTITY;
    let store = &state.service.store;
    let settled = if keep {
        store.finish_idempotency(&IdempotencyRecord {
            status: status.as_u16(),
            expires_at: now_ms() + IDEMPOTENCY_TTL_MS,
            ..record.clone()
        })
    } else {
        store.release_idempotency(&record.user_id, &record.key, &record.body)
    };
    if let Err(e) = settled {
        // The reservation then lapses by itself after RESERVATION_TTL_MS.
        tracing::warn!(user_id = %record.user_id, error = %e, "idempotency key not settled");
    }
}

/// The answer to a retry whose key holds a settled refusal.
fn replayed_refusal(record: &IdempotencyRecord) -> Option<ApiError> {
    let status = StatusCode::from_u16(record.status).ok()?;
    (status == StatusCode::CONFLICT || status == StatusCode::UNPROCESSABLE_ENTITY).then(|| {
        ApiError::new(
            status,
            "idempotent_replay",
            "a request with this Idempotency-Key was refused with this status",
        )
    })
}

/// FNV-1a, 64 bit: stable across versions and restarts (records outlive both).
fn fingerprint(request: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in request.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

async fn create_call(
    State(state): State<ControlState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    req: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<CallWithToken>), ApiError> {
    if !state.lifecycle.is_serving() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this node is shutting down and takes no new calls; retry on another",
        ));
    }
    let raw: Value = body(req)?;
    let req: CreateCall = from_object(raw.clone())?;
    let caller_region = match headers.get(REGION_HEADER) {
        None => None,
        Some(value) => match value.to_str() {
            Ok(region) if crate::placement::valid_region(region) => Some(region.to_string()),
            _ => {
                return Err(ApiError::bad_request(
                    "X-Switchboard-Region must be 1-32 characters of [a-z0-9-]",
                ));
            }
        },
    };
    if !valid_id(&req.device_id) || !req.callee_user_ids.iter().all(|u| valid_id(u)) {
        return Err(ApiError::bad_request(
            "ids must be 1-128 printable characters",
        ));
    }
    if let Some(name) = &req.caller_display_name
        && (name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request(
            "callerDisplayName must be 1-64 printable characters",
        ));
    }
    if let Some(url) = &req.caller_avatar_url
        && (!url.starts_with("https://")
            || url.len() > 512
            || !url.bytes().all(|b| b.is_ascii_graphic()))
    {
        // URLs are ASCII (RFC 3986: anything else is percent-encoded).
        return Err(ApiError::bad_request(
            "callerAvatarUrl must be an https URL of at most 512 ASCII characters",
        ));
    }
    let started = std::time::SystemTime::now();
    // The whole body is valid before any limit is charged: a refused request
    // must not spend anyone's budget (nor cost work per listed callee).
    crate::service::check_callees(&caller.user_id, &req.callee_user_ids)?;
    // Rate limits: calls this user creates, and calls ringing each callee;
    // charged for calls actually created (given back otherwise), so nobody
    // can use up the calls to someone else without calling them.
    // In a cluster the two call limits are shared in Redis: charged,
    // and given back, off the async threads.
    blocking(move || {
        let charged = Charged::take(&state.limits, &caller.user_id, &req.callee_user_ids)?;
        let root = TracedCreate {
            started,
            device_id: req.device_id.clone(),
            call_type: match req.call_type {
                CallTypeName::Audio => "audio",
                CallTypeName::Video => "video",
            },
            callees: req.callee_user_ids.len(),
        };
        let call_id = uuid::Uuid::new_v4().to_string();
        let request = format!("POST /v1/calls {raw}");
        let created = reserve_key(&state, &headers, &caller.user_id, &request, &call_id)
            .and_then(|reserved| {
                let outcome = create_or_replay(
                    &state,
                    &reserved,
                    &call_id,
                    (&caller.user_id, caller_region.as_deref()),
                    req,
                );
                let status = outcome
                    .as_ref()
                    .map_or_else(|e| e.status, |_| StatusCode::CREATED);
                settle_key(&state, reserved.as_ref(), &call_id, status);
                outcome
            })
            .and_then(|call| {
                Ok((
                    call.call_id == call_id,
                    with_token(&state, &call, &caller.user_id)?,
                ))
            });
        match created {
            Ok((true, body)) => {
                trace_created(&state, &call_id, &caller.user_id, root);
                Ok((StatusCode::CREATED, Json(body)))
            }
            // A crossed call or an idempotent replay answers with a call
            // that this request did not create: not charged.
            Ok((false, body)) => {
                charged.refund(&state.limits);
                Ok((StatusCode::CREATED, Json(body)))
            }
            Err(e) => {
                charged.refund(&state.limits);
                Err(e)
            }
        }
    })
    .await
}

/// The root span of a call this request created (`call_trace`).
fn trace_created(state: &ControlState, call_id: &str, caller: &str, root: TracedCreate) {
    if !crate::call_trace::enabled() {
        return;
    }
    use opentelemetry::KeyValue;
    let platform = state.service.platform_of(caller, &root.device_id);
    let mut attributes = vec![
        KeyValue::new("user_id", caller.to_string()),
        KeyValue::new("device_id", root.device_id),
        KeyValue::new("call_type", root.call_type),
        KeyValue::new("callees", root.callees as i64),
    ];
    attributes.extend(platform.map(|p| KeyValue::new("platform", p.as_str())));
    crate::call_trace::record_root(call_id, root.started, attributes);
}

/// What a create's root span says, taken before the request is consumed.
struct TracedCreate {
    started: std::time::SystemTime,
    device_id: String,
    call_type: &'static str,
    callees: usize,
}

/// The call this create answers with: the one it creates, or the one the
/// first request with its key created.
fn create_or_replay(
    state: &ControlState,
    reserved: &Option<IdempotencyRecord>,
    call_id: &str,
    (caller, caller_region): (&str, Option<&str>),
    req: CreateCall,
) -> Result<Call, ApiError> {
    Ok(match reserved {
        Some(r) if r.body != call_id => {
            if let Some(refusal) = replayed_refusal(r) {
                return Err(refusal);
            }
            // Another request with this key created (or is creating) the call.
            wait_for_call(state, &r.body)?
        }
        _ => {
            let call_type = match req.call_type {
                CallTypeName::Audio => CallType::Audio,
                CallTypeName::Video => CallType::Video,
            };
            let new = NewCall {
                call_id: call_id.to_string(),
                caller,
                device_id: &req.device_id,
                callees: &req.callee_user_ids,
                call_type,
                caller_display: CallerDisplay {
                    display_name: req.caller_display_name,
                    avatar_url: req.caller_avatar_url,
                },
                data_channels: req.data_channels,
                caller_region,
            };
            let call = state.service.create(new, now_ms())?;
            let platform = state
                .service
                .platform_of(caller, &req.device_id)
                .map_or("unknown", |p| p.as_str());
            tracing::info!(call_id = %call.call_id, user_id = %caller, device_id = %req.device_id, platform, state = ?call.state, "call created");
            call
        }
    })
}

/// Rate-limit tokens taken for one call create, to give back if no call
/// was created.
struct Charged {
    caller: String,
    callees: Vec<String>,
}

impl Charged {
    fn take(limits: &ApiLimits, caller: &str, callees: &[String]) -> Result<Charged, ApiError> {
        let now = std::time::Instant::now();
        limits
            .creates
            .check(caller, now)
            .map_err(|wait| ApiError::rate_limited("calls created", wait))?;
        let keys: Vec<&str> = callees.iter().map(String::as_str).collect();
        if let Err(wait) = limits.rings.check_all(&keys, now) {
            limits.creates.refund(caller, now);
            return Err(ApiError::rate_limited("calls to this user", wait));
        }
        Ok(Charged {
            caller: caller.to_string(),
            callees: callees.to_vec(),
        })
    }

    fn refund(self, limits: &ApiLimits) {
        let now = std::time::Instant::now();
        limits.creates.refund(&self.caller, now);
        for callee in &self.callees {
            limits.rings.refund(callee, now);
        }
    }
}

/// The call a concurrent request with the same key is creating.
fn wait_for_call(state: &ControlState, call_id: &str) -> Result<Call, ApiError> {
    for _ in 0..100 {
        if let Some(c) = state.service.store.get_call(call_id)? {
            return Ok(c.value);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "in_progress",
        "a request with this Idempotency-Key is still in progress",
    ))
}

/// The call as `user` may see it, with a fresh call token when the user is
/// (or may become) in the call's room.
fn with_token(state: &ControlState, call: &Call, user: &str) -> Result<CallWithToken, ApiError> {
    let p = call.participant(user).ok_or_else(ApiError::not_found)?;
    let in_room = matches!(p.state, ParticipantState::Accepted)
        || (p.role == Role::Host && call.state != crate::call::CallState::Ended);
    let call_token = in_room.then(|| {
        state.tokens.mint(&CallGrant {
            call_id: call.call_id.clone(),
            user_id: user.to_string(),
            participant_id: p.participant_id.clone(),
            permissions: signaling::Permissions {
                publish_audio: true,
                publish_video: call.call_type == CallType::Video,
                subscribe: true,
                publish_data: call.data_channels,
            },
            group: call.participants.len() > 2,
            node: call.placement.as_ref().map(|p| p.node_id.clone()),
            // For the SFU's log lines: which device and platform joins.
            device: p.device_id.as_ref().map(|device_id| GrantDevice {
                device_id: device_id.clone(),
                platform: state
                    .service
                    .platform_of(user, device_id)
                    .map_or("unknown", |p| p.as_str())
                    .to_string(),
            }),
        })
    });
    // The placed node as the registry last listed it: its signaling URL
    // and its TURN relay. Unknown (not placed, or gone): this node's.
    let host = call.placement.as_ref().and_then(|placed| {
        let placer = state.service.placer.as_ref()?;
        placer.nodes.get(&placed.node_id)
    });
    let ice_servers = match (&call_token, &state.turn, &host) {
        (Some(_), Some(turn), Some(host)) => turn.ice_servers_at(&host.turn_urls, user, now_ms()),
        (Some(_), Some(turn), None) => turn.ice_servers(user, now_ms()),
        _ => Vec::new(),
    };
    Ok(CallWithToken {
        call: CallView::of(call),
        rtc_url: call_token
            .as_ref()
            .and(host.as_ref())
            .map(|h| rtc_url(&h.public_url)),
        call_token,
        rtc_path: RTC_PATH,
        ice_servers,
    })
}

/// The signaling WebSocket URL of a node reached at `public_url`.
pub fn rtc_url(public_url: &str) -> String {
    let base = public_url.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    format!("{ws}{RTC_PATH}")
}

/// The call, if `user` is in it; otherwise it does not exist for them (404).
fn call_of(state: &ControlState, call_id: &str, user: &str) -> Result<Call, ApiError> {
    let call = state
        .service
        .store
        .get_call(call_id)?
        .ok_or_else(ApiError::not_found)?
        .value;
    call.participant(user).ok_or_else(ApiError::not_found)?;
    Ok(call)
}

async fn get_call(
    State(state): State<ControlState>,
    Caller(caller): Caller,
    Path(call_id): Path<String>,
) -> Result<Json<CallView>, ApiError> {
    blocking(move || {
        let call = call_of(&state, &call_id, &caller.user_id)?;
        Ok(Json(CallView::of(&call)))
    })
    .await
}

#[derive(Deserialize)]
struct RecentQuery {
    limit: Option<usize>,
}

async fn recent_calls(
    State(state): State<ControlState>,
    Caller(caller): Caller,
    query: Result<Query<RecentQuery>, QueryRejection>,
) -> Result<Json<Vec<CallView>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1-200"));
    }
    blocking(move || {
        let calls = state.service.store.calls_of(&caller.user_id, limit)?;
        Ok(Json(calls.iter().map(CallView::of).collect()))
    })
    .await
}

/// What a device or caller does to a call (`POST /v1/calls/{id}/<action>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallAction {
    Accept,
    Decline,
    /// The ring arrived and the call UI shows ("call UI shown").
    Ack,
    Cancel,
    End,
}

impl CallAction {
    fn needs_device(self) -> bool {
        matches!(
            self,
            CallAction::Accept | CallAction::Decline | CallAction::Ack
        )
    }

    /// Its span in the call's trace (`End` is `call.hangup`: `call.end`
    /// is the call ending, whoever or whatever ends it).
    fn span(self, call_id: &str, user: &str, device: &str, platform: &str) -> tracing::Span {
        use crate::call_span;
        match self {
            CallAction::Accept => {
                call_span!("call.accept", call_id, user_id = %user, device_id = %device, platform)
            }
            CallAction::Decline => {
                call_span!("call.decline", call_id, user_id = %user, device_id = %device, platform)
            }
            CallAction::Ack => {
                call_span!("call.ack", call_id, user_id = %user, device_id = %device, platform, transport = "http")
            }
            CallAction::Cancel => call_span!("call.cancel", call_id, user_id = %user),
            CallAction::End => call_span!("call.hangup", call_id, user_id = %user),
        }
    }
}

/// `POST /v1/calls/{callId}/<action>`: one route per action, one handler.
fn action_route(action: CallAction, path: &'static str) -> Route {
    route(
        Method::POST,
        path,
        move |state: State<ControlState>,
              caller: Caller,
              headers: HeaderMap,
              Path(call_id): Path<String>,
              raw: axum::body::Bytes| {
            call_action(action, state, caller, headers, call_id, raw)
        },
    )
}

/// Accept, decline, ack, cancel, end: one read -> machine -> CAS write each.
async fn call_action(
    action: CallAction,
    State(state): State<ControlState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    call_id: String,
    raw: axum::body::Bytes,
) -> Result<Json<CallWithToken>, ApiError> {
    let device = if action.needs_device() {
        let value: Value = serde_json::from_slice(&raw)
            .map_err(|e| ApiError::bad_request(format!("expected {{\"deviceId\"}}: {e}")))?;
        let body: DeviceBody = from_object(value)?;
        if !valid_id(&body.device_id) {
            return Err(ApiError::bad_request(
                "deviceId must be 1-128 printable characters",
            ));
        }
        body.device_id
    } else {
        String::new()
    };
    blocking(move || {
        let request = format!("POST /v1/calls/{call_id}/{action:?} {device}");
        // Actions are idempotent in the state machine itself: the key only
        // binds the request (another request with it gets 422).
        let reservation = uuid::Uuid::new_v4().to_string();
        let reserved = reserve_key(&state, &headers, &caller.user_id, &request, &reservation)?;
        let now = now_ms();
        let user = caller.user_id.as_str();
        let platform = (!device.is_empty())
            .then(|| state.service.platform_of(user, &device))
            .flatten()
            .map_or("unknown", |p| p.as_str());
        let _in_span = action.span(&call_id, user, &device, platform).entered();
        let updated = state.service.update(&call_id, |c, fx| match action {
            CallAction::Accept => c.accept(user, &device, now, fx).map(|_| ()),
            CallAction::Decline => c.decline(user, &device, now, fx),
            CallAction::Ack => c.acknowledge_ring(user, &device, now),
            CallAction::Cancel => c.cancel(user, now, fx),
            CallAction::End => c.end(user, now, fx),
        });
        let answer = updated
            .and_then(|(call, ())| match action {
                // The room's node may have died while the call rang.
                CallAction::Accept => state.service.with_live_room(call),
                _ => Ok(call),
            })
            .map_err(ApiError::from)
            .and_then(|call| Ok((with_token(&state, &call, user)?, call)));
        let status = answer.as_ref().map_or_else(|e| e.status, |_| StatusCode::OK);
        settle_key(&state, reserved.as_ref(), &reservation, status);
        let (view, call) = answer?;
        // A hang-up or cancel names no device: the one holding the call.
        let (device, platform) = match call.participant(user).and_then(|p| p.device_id.clone()) {
            Some(held) if device.is_empty() => {
                let platform = state.service.platform_of(user, &held);
                (held, platform.map_or("unknown", |p| p.as_str()))
            }
            _ => (device, platform),
        };
        tracing::info!(call_id = %call_id, user_id = %user, device_id = %device, platform, ?action, state = ?call.state, "call action");
        Ok(Json(view))
    })
    .await
}

/// A fresh call token for a participant who must rejoin the room.
async fn fresh_token(
    State(state): State<ControlState>,
    Caller(caller): Caller,
    Path(call_id): Path<String>,
) -> Result<Json<CallWithToken>, ApiError> {
    blocking(move || {
        let call = call_of(&state, &call_id, &caller.user_id)?;
        // A rejoin after the room's node died: the first participant to
        // ask moves the room, the others find it moved.
        let call = state.service.with_live_room(call)?;
        let view = with_token(&state, &call, &caller.user_id)?;
        if view.call_token.is_none() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_in_call",
                "only a participant in the call gets a call token",
            ));
        }
        Ok(Json(view))
    })
    .await
}

// ---- reports ----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReportsBody {
    device_id: String,
    reports: Vec<Value>,
}

/// `POST /v1/calls/{callId}/reports`: what a device measured about a call it
/// is in (`crate::reports`). Metrics and a log line; never call state.
async fn call_reports(
    State(state): State<ControlState>,
    Caller(caller): Caller,
    Path(call_id): Path<String>,
    req: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    use crate::reports::{MAX_REPORTS_PER_REQUEST, parse};
    let req: ReportsBody = body(req)?;
    if !valid_id(&req.device_id) {
        return Err(ApiError::bad_request(
            "deviceId must be 1-128 printable characters",
        ));
    }
    if req.reports.is_empty() || req.reports.len() > MAX_REPORTS_PER_REQUEST {
        return Err(ApiError::bad_request(format!(
            "reports holds 1-{MAX_REPORTS_PER_REQUEST} reports"
        )));
    }
    let reports = req
        .reports
        .iter()
        .enumerate()
        .map(|(i, r)| parse(i, r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let user = caller.user_id;
    let device_id = req.device_id;
    let key = format!("{call_id}/{user}/{device_id}");
    state
        .limits
        .reports
        .check(&key, std::time::Instant::now())
        .map_err(|wait| ApiError::rate_limited("reports for this call", wait))?;
    blocking(move || {
        call_of(&state, &call_id, &user)?;
        let device = state
            .service
            .store
            .devices_of(&user)?
            .into_iter()
            .find(|d| d.device_id == device_id)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "unknown_device",
                    "the deviceId is not one of the user's devices",
                )
            })?;
        let platform = device.platform;
        // The device's reports join the call's trace.
        let span = crate::call_span!("call.report", &call_id, user_id = %user, device_id = %device_id, platform = platform.as_str(), accepted = tracing::field::Empty, skipped = tracing::field::Empty);
        let _in_span = span.enter();
        let metrics = state.service.metrics.as_ref().map(|m| &m.reports);
        let (mut accepted, mut skipped) = (0, 0);
        for report in reports {
            let Some(report) = report else {
                skipped += 1;
                metrics.inspect(|m| m.skipped(platform, "unknown"));
                continue;
            };
            let kind = report.type_name();
            if report.once_per_call()
                && state
                    .limits
                    .once_per_call
                    .check(&format!("{key}/{kind}"), std::time::Instant::now())
                    .is_err()
            {
                skipped += 1;
                metrics.inspect(|m| m.skipped(platform, "duplicate"));
                continue;
            }
            accepted += 1;
            metrics.inspect(|m| m.observe(platform, &report));
            if let crate::reports::Report::FirstAudio { after_accept_ms } = report
                && let Some(m) = &state.service.metrics
                && let Some(on) = state.service.rollout_cohort(&device)
            {
                m.rollout.first_audio(on, after_accept_ms as f64 / 1000.0);
            }
            tracing::info!(call_id = %call_id, user_id = %user, device_id = %device_id, platform = platform.as_str(), report = kind, detail = ?report, "device report");
        }
        span.record("accepted", accepted).record("skipped", skipped);
        Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"accepted": accepted, "skipped": skipped})),
        ))
    })
    .await
}
