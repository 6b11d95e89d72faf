//! The call-control plane: call tokens (`call_token`), API keys and user
//! access tokens (`auth`), the pure call state machine (`call`), devices
//! (`device`), the store (`store`), the call service and its HTTP API
//! (`service`, `api`), ringing devices (`ringing`) and pushing them
//! (`push`), TURN credentials for join info (`turn_issuer`), the node's serving /
//! draining / stopping phase (`lifecycle`), the node registry (`nodes`) and
//! room placement on it (`placement`), what devices report about
//! their calls (`reports`), one trace per call (`call_trace`), rate
//! limits and metrics. `README.md` says what it owns.

pub mod api;
pub mod auth;
pub mod call;
pub mod call_token;
pub mod call_trace;
pub mod device;
pub mod flags;
pub mod lifecycle;
pub mod metrics;
pub mod nodes;
pub mod placement;
pub mod push;
pub mod rate_limit;
pub mod reports;
pub mod ringing;
pub mod service;
pub mod store;
pub mod turn_issuer;
pub mod webhooks;

/// The wall clock in Unix milliseconds: what the shells pass to the pure
/// call machine (which never reads a clock).
pub fn unix_millis() -> call::UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
