//! One error type for the HTTP API: every refusal is a status and a JSON
//! `{code, message}`; internal details go to the log only.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::auth::AuthError;
use crate::call::CallError;
use crate::device::InvalidDevice;
use crate::service::ServiceError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For 429: when to try again.
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn rate_limited(what: &str, wait: std::time::Duration) -> ApiError {
        ApiError {
            retry_after: Some(wait),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many {what}; retry later"),
            )
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A WebSocket endpoint asked without a valid upgrade.
    pub fn upgrade_required(rejection: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            format!("this endpoint is a WebSocket: {rejection}"),
        )
    }

    pub fn not_found() -> ApiError {
        // Calls the caller is not in look the same as calls that do not exist.
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such call")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "message": self.message });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up: never "0", which invites a hot loop.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(v) = axum::http::HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert("retry-after", v);
            }
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        let code = match e {
            AuthError::Expired => "token_expired",
            _ => "unauthorized",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
    }
}

impl From<InvalidDevice> for ApiError {
    fn from(e: InvalidDevice) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_device", e.0)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        if matches!(e, StoreError::PushTokenInUse) {
            return ApiError::new(
                StatusCode::CONFLICT,
                "push_token_in_use",
                "this push token is registered to another user's device; register it from that device, or through the app backend's API key",
            );
        }
        if let StoreError::Unavailable(reason) = &e {
            tracing::warn!(%reason, "store unavailable");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the call store cannot be reached; nothing changed, retry shortly",
            );
        }
        tracing::error!(error = %e, "store failure");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        let message = e.to_string();
        let (status, code) = match e {
            ServiceError::Call(c) => match c {
                CallError::NotParticipant => return ApiError::not_found(),
                CallError::WrongRole => (StatusCode::FORBIDDEN, "forbidden"),
                CallError::UnknownDevice => (StatusCode::FORBIDDEN, "unknown_device"),
                CallError::Ended => (StatusCode::CONFLICT, "call_ended"),
                CallError::AnsweredElsewhere => (StatusCode::CONFLICT, "answered_elsewhere"),
                CallError::AlreadyDeclined => (StatusCode::CONFLICT, "already_declined"),
                CallError::AlreadyAnswered => (StatusCode::CONFLICT, "already_answered"),
            },
            ServiceError::NotFound => return ApiError::not_found(),
            ServiceError::Contended => (StatusCode::SERVICE_UNAVAILABLE, "contended"),
            ServiceError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ServiceError::Store(s) => return s.into(),
        };
        ApiError::new(status, code, message)
    }
}
