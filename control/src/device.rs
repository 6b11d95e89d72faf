//! Devices as the registry holds them, and what makes a registration valid.
//! Push tokens are bounded in length and charset: they end up in HTTP headers
//! and URLs of APNs and FCM requests.

use serde::{Deserialize, Serialize};

use crate::auth::valid_id;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Ios,
    Android,
    Web,
}

impl Platform {
    /// As in the API, logs, traces and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Ios => "ios",
            Platform::Android => "android",
            Platform::Web => "web",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApnsEnvironment {
    Sandbox,
    Production,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    pub video: bool,
    #[serde(default)]
    pub callkit: bool,
    #[serde(default)]
    pub telecom: bool,
}

/// Push tokens by kind. iOS keeps VoIP (PushKit, rings CallKit) apart from
/// the alert token (cancels and missed calls: never VoIP for those).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PushTokens {
    #[serde(
        default,
        deserialize_with = "token",
        skip_serializing_if = "Option::is_none"
    )]
    pub apns_voip: Option<String>,
    #[serde(
        default,
        deserialize_with = "token",
        skip_serializing_if = "Option::is_none"
    )]
    pub apns_alert: Option<String>,
    #[serde(
        default,
        deserialize_with = "token",
        skip_serializing_if = "Option::is_none"
    )]
    pub fcm: Option<String>,
}

/// A token is a string when present: `null` is not a way to say "none"
/// (leave the field out), as the contract says.
fn token<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

impl PushTokens {
    pub fn all(&self) -> impl Iterator<Item = &str> {
        [&self.apns_voip, &self.apns_alert, &self.fcm]
            .into_iter()
            .flatten()
            .map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub device_id: String,
    pub user_id: String,
    pub platform: Platform,
    pub push: PushTokens,
    pub apns_environment: Option<ApnsEnvironment>,
    pub bundle_id: Option<String>,
    pub app_version: Option<String>,
    pub capabilities: Capabilities,
    pub last_seen_at: u64,
    /// The region the app says the device is in (`eu-west`): rooms of its
    /// calls are placed near it (`crate::placement`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid device: {0}")]
pub struct InvalidDevice(pub &'static str);

/// APNs device tokens are hex; today 64 characters, documented as variable.
const APNS_TOKEN_MAX: usize = 200;
/// FCM registration tokens are ~150-250 characters of URL-safe base64 and ':'.
const FCM_TOKEN_MAX: usize = 4096;

impl Device {
    pub fn validate(&self) -> Result<(), InvalidDevice> {
        if !valid_id(&self.device_id) {
            return Err(InvalidDevice("deviceId must be 1-128 printable characters"));
        }
        for token in [&self.push.apns_voip, &self.push.apns_alert]
            .into_iter()
            .flatten()
        {
            if token.len() < 32
                || token.len() > APNS_TOKEN_MAX
                || !token.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(InvalidDevice("APNs tokens are 32-200 hex characters"));
            }
        }
        if let Some(fcm) = &self.push.fcm
            && (fcm.len() < 32
                || fcm.len() > FCM_TOKEN_MAX
                || !fcm
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':')))
        {
            return Err(InvalidDevice(
                "FCM tokens are 32-4096 characters of [A-Za-z0-9_:-]",
            ));
        }
        let has_apns = self.push.apns_voip.is_some() || self.push.apns_alert.is_some();
        match self.platform {
            Platform::Ios if self.push.fcm.is_some() => {
                return Err(InvalidDevice("an iOS device has APNs tokens, not FCM"));
            }
            Platform::Android if has_apns => {
                return Err(InvalidDevice(
                    "an Android device has an FCM token, not APNs",
                ));
            }
            Platform::Web if has_apns || self.push.fcm.is_some() => {
                return Err(InvalidDevice("a web device has no push tokens"));
            }
            _ => {}
        }
        if self
            .region
            .as_deref()
            .is_some_and(|r| !crate::placement::valid_region(r))
        {
            return Err(InvalidDevice("region must be 1-32 characters of [a-z0-9-]"));
        }
        if has_apns && (self.apns_environment.is_none() || self.bundle_id.is_none()) {
            return Err(InvalidDevice(
                "APNs tokens need apnsEnvironment and bundleId",
            ));
        }
        if let Some(bundle) = &self.bundle_id
            && (bundle.is_empty()
                || bundle.len() > 155
                || !bundle
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')))
        {
            return Err(InvalidDevice("bundleId is a reverse-DNS name"));
        }
        if let Some(v) = &self.app_version
            && !valid_id(v)
        {
            return Err(InvalidDevice(
                "appVersion must be 1-128 printable characters",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn ios(device: &str, user: &str, voip: &str) -> Device {
        Device {
            device_id: device.into(),
            user_id: user.into(),
            platform: Platform::Ios,
            push: PushTokens {
                apns_voip: Some(voip.into()),
                apns_alert: None,
                fcm: None,
            },
            apns_environment: Some(ApnsEnvironment::Production),
            bundle_id: Some("com.example.app".into()),
            app_version: Some("1.2.3".into()),
            capabilities: Capabilities {
                video: true,
                callkit: true,
                telecom: false,
            },
            last_seen_at: 0,
            region: None,
        }
    }

    #[test]
    fn a_well_formed_ios_device_is_valid() {
        ios("d1", "u1", &"ab".repeat(32)).validate().unwrap();
    }

    #[test]
    fn bad_registrations_are_refused() {
        let hex = "ab".repeat(32);
        let mut cases = Vec::new();
        let mut d = ios("d1", "u1", "not-hex-not-hex-not-hex-not-hex-not-hex");
        cases.push(d.clone());
        d = ios("d1", "u1", &"a".repeat(201));
        cases.push(d.clone());
        d = ios("", "u1", &hex);
        cases.push(d.clone());
        d = ios("d1", "u1", &hex);
        d.bundle_id = None;
        cases.push(d.clone());
        d = ios("d1", "u1", &hex);
        d.push.fcm = Some("x".repeat(100));
        cases.push(d.clone());
        d = ios("d1", "u1", &hex);
        d.platform = Platform::Android;
        cases.push(d.clone());
        d = ios("d1", "u1", &hex);
        d.bundle_id = Some("com.example/app".into());
        cases.push(d.clone());
        let mut android = ios("d2", "u1", &hex);
        android.platform = Platform::Android;
        android.push = PushTokens {
            fcm: Some("has spaces and is long enough to pass the length".into()),
            ..PushTokens::default()
        };
        cases.push(android);
        for d in cases {
            assert!(d.validate().is_err(), "{d:?} passed");
        }
    }
}
