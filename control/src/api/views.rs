//! Request and response bodies of the HTTP API (camelCase JSON).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::call::{Call, CallState, CallType, EndReason, ParticipantState, Role, UnixMillis};
use crate::device::{ApnsEnvironment, Capabilities, Device, Platform, PushTokens};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceRequest {
    device_id: String,
    platform: Platform,
    #[serde(default, deserialize_with = "object")]
    push: PushTokens,
    apns_environment: Option<ApnsEnvironment>,
    bundle_id: Option<String>,
    app_version: Option<String>,
    #[serde(default, deserialize_with = "object")]
    capabilities: Capabilities,
    region: Option<String>,
}

/// A nested JSON object only (see `super::body`: derived structs would also
/// read an array).
fn object<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<T, D::Error> {
    let map = serde_json::Map::deserialize(d)?;
    T::deserialize(serde_json::Value::Object(map)).map_err(serde::de::Error::custom)
}

impl DeviceRequest {
    pub fn into_device(self, user_id: &str, now: UnixMillis) -> Device {
        Device {
            device_id: self.device_id,
            user_id: user_id.to_string(),
            platform: self.platform,
            push: self.push,
            apns_environment: self.apns_environment,
            bundle_id: self.bundle_id,
            app_version: self.app_version,
            capabilities: self.capabilities,
            last_seen_at: now,
            region: self.region,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantView {
    participant_id: String,
    user_id: String,
    role: Role,
    state: ParticipantState,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallView {
    call_id: String,
    #[serde(rename = "type")]
    call_type: CallType,
    /// Kept for clients of the mission's model; media always goes through the SFU.
    mode: &'static str,
    state: CallState,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_reason: Option<EndReason>,
    initiator_user_id: String,
    participants: Vec<ParticipantView>,
    created_at: UnixMillis,
    #[serde(skip_serializing_if = "Option::is_none")]
    answered_at: Option<UnixMillis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connected_at: Option<UnixMillis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_at: Option<UnixMillis>,
    data_channels: bool,
}

impl CallView {
    pub fn of(call: &Call) -> CallView {
        CallView {
            call_id: call.call_id.clone(),
            call_type: call.call_type,
            mode: "sfu",
            state: call.state,
            end_reason: call.end_reason,
            initiator_user_id: call.initiator_user_id.clone(),
            participants: call
                .participants
                .iter()
                .map(|p| ParticipantView {
                    participant_id: p.participant_id.clone(),
                    user_id: p.user_id.clone(),
                    role: p.role,
                    state: p.state,
                    device_id: p.device_id.clone(),
                })
                .collect(),
            created_at: call.created_at,
            answered_at: call.answered_at,
            connected_at: call.connected_at,
            ended_at: call.ended_at,
            data_channels: call.data_channels,
        }
    }
}

/// A call, and for a participant in its room, a call token and where to join.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallWithToken {
    pub call: CallView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_token: Option<String>,
    /// The signaling WebSocket path on this server.
    pub rtc_path: &'static str,
    /// The signaling WebSocket of the node hosting the call's room
    /// (`ws://` or `wss://`); absent when the room is not placed (any
    /// node: `rtcPath` on the one asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtc_url: Option<String>,
    /// TURN servers with short-lived credentials, for the peer connections.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ice_servers: Vec<crate::turn_issuer::IceServer>,
}

/// A device as registered, with its feature flags (`POST /v1/devices`).
#[derive(Serialize)]
pub struct RegisteredDevice {
    #[serde(flatten)]
    pub device: crate::device::Device,
    /// Every flag, built-in and set, as it is for this device.
    pub flags: std::collections::BTreeMap<String, bool>,
}
