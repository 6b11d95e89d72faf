//! `/v1/flags`: feature flags, for operators (the API key alone; a user
//! token is refused). Every change is compare-and-set on the flag's
//! version and recorded with the API key that made it
//! (`GET /v1/flags/changes`).

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ApiError, ControlState, Operator, blocking, body, now_ms};
use crate::device::Platform;
use crate::flags::{
    BUILT_IN, Flag, FlagState, MAX_FLAGS, VersionRange, present, valid_name, whole_number,
};
use crate::store::FlagChange;

/// A flag as operators see it: its settings, its version (0: never set,
/// so at its default) and whether the server itself reads it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FlagView {
    #[serde(flatten)]
    flag: Flag,
    version: u64,
    built_in: bool,
}

impl FlagView {
    fn of(flag: Flag, version: u64) -> FlagView {
        let built_in = BUILT_IN.contains(&flag.name.as_str());
        FlagView {
            flag,
            version,
            built_in,
        }
    }
}

#[derive(Serialize)]
pub(super) struct FlagList {
    flags: Vec<FlagView>,
}

/// Every flag: those set, then the built-in ones never set, at their
/// defaults.
pub(super) async fn list_flags(
    State(state): State<ControlState>,
    _: Operator,
) -> Result<Json<FlagList>, ApiError> {
    blocking(move || {
        let set = state.service.store.flags()?;
        let mut flags: Vec<FlagView> = set
            .iter()
            .map(|f| FlagView::of(f.value.clone(), f.version))
            .collect();
        for name in BUILT_IN {
            if !set.iter().any(|f| f.value.name == name) {
                flags.push(FlagView::of(Flag::unset(name), 0));
            }
        }
        flags.sort_by(|a, b| a.flag.name.cmp(&b.flag.name));
        Ok(Json(FlagList { flags }))
    })
    .await
}

/// A flag's new settings (`PUT /v1/flags/{name}`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FlagUpdate {
    state: FlagState,
    #[serde(default, deserialize_with = "present")]
    percent: Option<f64>,
    #[serde(default)]
    platforms: Vec<Platform>,
    #[serde(default, deserialize_with = "present")]
    app_versions: Option<VersionRange>,
    #[serde(default)]
    regions: Vec<String>,
    #[serde(default)]
    allow_users: Vec<String>,
    #[serde(default)]
    deny_users: Vec<String>,
    /// The version this change was decided on: 409 if the flag changed
    /// since. Absent: whatever it is now.
    #[serde(default, deserialize_with = "whole_number")]
    expected_version: Option<u64>,
}

pub(super) async fn put_flag(
    State(state): State<ControlState>,
    Operator(key_id): Operator,
    Path(name): Path<String>,
    req: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    if !valid_name(&name) {
        return Err(ApiError::bad_request(
            "a flag's name is 1-64 characters of [a-z0-9_]",
        ));
    }
    let update: FlagUpdate = body(req)?;
    if update.percent.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
        return Err(ApiError::bad_request("percent is 0-100"));
    }
    let flag = Flag {
        name: name.clone(),
        state: update.state,
        // A percent means something only to a rollout.
        percent: update
            .percent
            .filter(|_| update.state == FlagState::Rollout),
        platforms: update.platforms,
        app_versions: update.app_versions,
        regions: update.regions,
        allow_users: update.allow_users,
        deny_users: update.deny_users,
    };
    flag.validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    blocking(move || {
        let store = &state.service.store;
        let set = store.flags()?;
        let current = set.iter().find(|f| f.value.name == name);
        let version = current.map_or(0, |f| f.version);
        if update.expected_version.is_some_and(|v| v != version) {
            return Err(changed_meanwhile(version));
        }
        let defined = set.iter().filter(|f| !BUILT_IN.contains(&f.value.name.as_str()));
        if current.is_none() && !BUILT_IN.contains(&name.as_str()) && defined.count() >= MAX_FLAGS
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "too_many_flags",
                format!("at most {MAX_FLAGS} flags of your own; reuse or retire one"),
            ));
        }
        let change = FlagChange {
            at: now_ms(),
            by: key_id,
            name: name.clone(),
            old: current.map(|f| f.value.clone()),
            new: flag.clone(),
        };
        if !store.put_flag(&change, version)? {
            return Err(changed_meanwhile(version + 1));
        }
        // At once here (new calls, and this node's events sockets); other
        // nodes within `service::FLAG_REFRESH`.
        let _ = state.service.flags.refresh(&**store);
        // Devices ringing that the new flags would not ring stop now.
        if let Err(e) = state.service.withdraw_forbidden_rings(now_ms()) {
            tracing::warn!(flag = %name, error = %e, "could not stop rings the flag change forbids");
        }
        tracing::info!(flag = %name, by = %change.by, old = ?change.old.as_ref().map(|f| f.state), new = ?flag.state, percent = ?flag.percent, "flag changed");
        Ok(Json(serde_json::to_value(FlagView::of(flag, version + 1)).unwrap_or_default()))
    })
    .await
}

fn changed_meanwhile(version: u64) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "version_mismatch",
        format!("the flag changed meanwhile (now version {version}); read it again"),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChangesQuery {
    #[serde(default = "default_changes")]
    limit: usize,
}

fn default_changes() -> usize {
    50
}

#[derive(Serialize)]
pub(super) struct ChangeList {
    changes: Vec<FlagChange>,
}

/// The newest flag changes, newest first: who, when, before and after.
pub(super) async fn flag_changes(
    State(state): State<ControlState>,
    _: Operator,
    query: Result<Query<ChangesQuery>, QueryRejection>,
) -> Result<Json<ChangeList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if !(1..=500).contains(&query.limit) {
        return Err(ApiError::bad_request("limit must be 1-500"));
    }
    blocking(move || {
        Ok(Json(ChangeList {
            changes: state.service.store.flag_changes(query.limit)?,
        }))
    })
    .await
}
