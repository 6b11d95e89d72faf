//! Feature flags: whether a feature is on for one user on one device.
//! Pure: a flag and who asks in, yes or no out.
//!
//! A flag is off, on, or rolled out to a percentage of users, and may be
//! narrowed by targeting (platforms, an app version range, regions) and
//! overridden per user (deny lists win over allow lists, which win over
//! everything else). A rollout puts each user in a bucket by a stable hash
//! of (flag, user id): a user stays in as the percentage grows, and two
//! flags at 50 % pick unrelated halves.
//!
//! The built-in flags ([`BUILT_IN`]) are on until an operator says
//! otherwise; a flag an operator defines is off until set.

use serde::{Deserialize, Serialize};

use crate::device::Platform;

/// The whole calling feature.
pub const CALLING: &str = "calling";
/// The system call UI for incoming calls (CallKit, Telecom).
pub const INCOMING_CALL_UI: &str = "incoming_call_ui";
pub const AUDIO_CALLS: &str = "audio_calls";
pub const VIDEO_CALLS: &str = "video_calls";

/// Flags the server itself reads, on unless set.
pub const BUILT_IN: [&str; 4] = [CALLING, INCOMING_CALL_UI, AUDIO_CALLS, VIDEO_CALLS];

/// Rollouts are in basis points: 0.01 % steps.
pub const ROLLOUT_SCALE: u32 = 10_000;

/// Operator-defined flags, at most (each is read on every registration).
pub const MAX_FLAGS: usize = 64;
/// Users on one allow or deny list, at most: lists are for staff and beta
/// testers; a cohort larger than this is a percentage.
pub const MAX_LISTED_USERS: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Flag {
    pub name: String,
    pub state: FlagState,
    /// With `rollout`: on for this many percent of users (0.01 % steps),
    /// chosen by a stable hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Only devices of these platforms; empty: every platform.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<Platform>,
    /// Only app versions in this range; absent: every version (and
    /// devices that registered none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_versions: Option<VersionRange>,
    /// Only devices in these regions; empty: every region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// On for these users whatever the rest says (staff, beta testers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_users: Vec<String>,
    /// Off for these users whatever the rest says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_users: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlagState {
    Off,
    On,
    /// On for `percent` % of users.
    Rollout,
}

/// App versions `min` (included) to `max` (excluded), each optional:
/// dotted numbers (`2.14.1`), compared part by part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRange {
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub min: Option<String>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max: Option<String>,
}

/// A count or version as JSON has it: a whole number, also when written
/// `7.0` (JSON does not tell integers apart), up to 2^53 - 1.
pub(crate) fn whole_number<'de, D>(d: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let n = serde_json::Number::deserialize(d)?;
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= 9_007_199_254_740_991.0)
                .map(|f| f as u64)
        })
        .filter(|n| *n <= 9_007_199_254_740_991)
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("expected a whole number from 0 to 2^53 - 1"))
}

/// An optional field is left out when absent: `null` is not a value (as
/// the contract says), so it is refused rather than read as absent.
pub(crate) fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Who a flag is evaluated for: a user on one device.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub user_id: &'a str,
    pub platform: Platform,
    pub app_version: Option<&'a str>,
    pub region: Option<&'a str>,
}

impl<'a> Subject<'a> {
    /// The device's owner on it.
    pub fn of(device: &'a crate::device::Device) -> Subject<'a> {
        Subject {
            user_id: &device.user_id,
            platform: device.platform,
            app_version: device.app_version.as_deref(),
            region: device.region.as_deref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid flag: {0}")]
pub struct InvalidFlag(pub &'static str);

impl Flag {
    /// The flag as it is before anyone sets it: built-in flags on, the
    /// rest off.
    pub fn unset(name: &str) -> Flag {
        Flag {
            name: name.to_string(),
            state: if BUILT_IN.contains(&name) {
                FlagState::On
            } else {
                FlagState::Off
            },
            percent: None,
            platforms: Vec::new(),
            app_versions: None,
            regions: Vec::new(),
            allow_users: Vec::new(),
            deny_users: Vec::new(),
        }
    }

    pub fn validate(&self) -> Result<(), InvalidFlag> {
        if !valid_name(&self.name) {
            return Err(InvalidFlag("name is 1-64 characters of [a-z0-9_]"));
        }
        match (self.state, self.percent) {
            (FlagState::Rollout, Some(p)) if (0.0..=100.0).contains(&p) => {}
            (FlagState::Rollout, _) => {
                return Err(InvalidFlag("a rollout has a percent, 0-100"));
            }
            (_, Some(_)) => return Err(InvalidFlag("only a rollout has a percent")),
            (_, None) => {}
        }
        if let Some(range) = &self.app_versions {
            let parts = [&range.min, &range.max];
            if parts.iter().all(|p| p.is_none())
                || parts
                    .iter()
                    .flat_map(|p| p.as_deref())
                    .any(|v| version(v).is_none())
            {
                return Err(InvalidFlag(
                    "appVersions has min and/or max, dotted numbers such as 2.14.1",
                ));
            }
        }
        if !self
            .regions
            .iter()
            .all(|r| crate::placement::valid_region(r))
        {
            return Err(InvalidFlag("regions are 1-32 characters of [a-z0-9-]"));
        }
        for list in [&self.allow_users, &self.deny_users] {
            if list.len() > MAX_LISTED_USERS {
                return Err(InvalidFlag("at most 1000 users on a list"));
            }
            if !list.iter().all(|u| crate::auth::valid_id(u)) {
                return Err(InvalidFlag("user ids are 1-128 printable characters"));
            }
        }
        Ok(())
    }

    /// Whether the flag is on for `who`.
    pub fn is_on(&self, who: &Subject<'_>) -> bool {
        if self.deny_users.iter().any(|u| u == who.user_id) {
            return false;
        }
        if self.allow_users.iter().any(|u| u == who.user_id) {
            return true;
        }
        if self.state == FlagState::Off || !self.targets(who) {
            return false;
        }
        match self.state {
            FlagState::Off => false,
            FlagState::On => true,
            FlagState::Rollout => {
                let percent = self.percent.unwrap_or(0.0);
                rollout_bucket(&self.name, who.user_id) < basis_points(percent)
            }
        }
    }

    fn targets(&self, who: &Subject<'_>) -> bool {
        let platform = self.platforms.is_empty() || self.platforms.contains(&who.platform);
        let region = self.regions.is_empty()
            || who
                .region
                .is_some_and(|r| self.regions.iter().any(|t| t == r));
        let version = match &self.app_versions {
            None => true,
            Some(range) => who.app_version.and_then(version).is_some_and(|v| {
                range
                    .min
                    .as_deref()
                    .and_then(version)
                    .is_none_or(|min| v >= min)
                    && range
                        .max
                        .as_deref()
                        .and_then(version)
                        .is_none_or(|max| v < max)
            }),
        };
        platform && region && version
    }
}

/// Every flag as set, and the unset ones at their defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlagSet {
    pub flags: Vec<Flag>,
}

impl FlagSet {
    /// Whether flag `name` is on for `who` (a flag never set: its default).
    pub fn is_on(&self, name: &str, who: &Subject<'_>) -> bool {
        match self.flags.iter().find(|f| f.name == name) {
            Some(flag) => flag.is_on(who),
            None => Flag::unset(name).is_on(who),
        }
    }

    /// Every flag, built-in and set, as it is for `who`: what a device is
    /// told (at registration and over its events socket).
    pub fn for_device(&self, who: &Subject<'_>) -> std::collections::BTreeMap<String, bool> {
        let names = BUILT_IN
            .iter()
            .copied()
            .chain(self.flags.iter().map(|f| f.name.as_str()));
        names
            .map(|name| (name.to_string(), self.is_on(name, who)))
            .collect()
    }

    /// Whether a device may ring: calling is on for it and so is its
    /// system call UI.
    pub fn may_ring(&self, who: &Subject<'_>) -> bool {
        self.is_on(CALLING, who) && self.is_on(INCOMING_CALL_UI, who)
    }

    /// What a call (`video` or audio) does with one of the callee's
    /// devices. The device's `capabilities.video` is not judged: clients
    /// already in the stores registered without it, and would lose video.
    pub fn reach(&self, who: &Subject<'_>, video: bool, min_app_version: Option<&str>) -> Reach {
        if is_outdated(who.app_version, min_app_version) {
            return Reach::Outdated;
        }
        let kind = if video { VIDEO_CALLS } else { AUDIO_CALLS };
        if self.may_ring(who) && self.is_on(kind, who) {
            Reach::Ring
        } else {
            Reach::Off
        }
    }
}

/// What a new call does with one device of a callee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    Ring,
    /// Its app is older than `min_app_version`: told `call.unsupported`
    /// instead of rung.
    Outdated,
    /// The flags keep this call from it.
    Off,
}

/// Whether `app_version` is below `min`. A device that registered no
/// version (or an unreadable one) is not judged: it is rung.
pub fn is_outdated(app_version: Option<&str>, min: Option<&str>) -> bool {
    match (app_version.and_then(version), min.and_then(version)) {
        (Some(v), Some(min)) => v < min,
        _ => false,
    }
}

/// A dotted version the flags can compare (`2.14.1`).
pub fn valid_version(text: &str) -> bool {
    version(text).is_some()
}

/// A flag name: what clients and metric labels carry.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn basis_points(percent: f64) -> u32 {
    (percent * f64::from(ROLLOUT_SCALE) / 100.0).round() as u32
}

/// The user's bucket for this flag, 0..[`ROLLOUT_SCALE`]: the first 8
/// bytes of SHA-256(flag name, NUL, user id). The flag's name is in the
/// hash, so each flag orders users its own way.
pub fn rollout_bucket(flag: &str, user_id: &str) -> u32 {
    let mut input = Vec::with_capacity(flag.len() + 1 + user_id.len());
    input.extend_from_slice(flag.as_bytes());
    input.push(0);
    input.extend_from_slice(user_id.as_bytes());
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    (u64::from_be_bytes(first) % u64::from(ROLLOUT_SCALE)) as u32
}

/// A dotted version's numbers (`2.14.1` -> [2, 14, 1]; trailing zeros
/// dropped, so 2.14 == 2.14.0); None for anything else.
fn version(text: &str) -> Option<Vec<u64>> {
    let mut parts: Vec<u64> = text
        .split('.')
        .map(|p| {
            (!p.is_empty() && p.len() <= 9)
                .then(|| p.parse().ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    while parts.last() == Some(&0) {
        parts.pop();
    }
    (text.len() <= 32).then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: &str) -> Subject<'_> {
        Subject {
            user_id: user,
            platform: Platform::Ios,
            app_version: Some("2.14.1"),
            region: Some("eu-west"),
        }
    }

    fn rollout(name: &str, percent: f64) -> Flag {
        Flag {
            state: FlagState::Rollout,
            percent: Some(percent),
            ..Flag::unset(name)
        }
    }

    fn users() -> Vec<String> {
        (0..10_000).map(|i| format!("user-{i}")).collect()
    }

    #[test]
    fn ten_percent_is_ten_percent_and_growing_keeps_everyone_in() {
        let users = users();
        let at = |percent| {
            let flag = rollout("video_calls", percent);
            users
                .iter()
                .filter(|u| flag.is_on(&who(u)))
                .cloned()
                .collect::<std::collections::HashSet<String>>()
        };
        let (ten, fifty) = (at(10.0), at(50.0));
        assert!((900..=1100).contains(&ten.len()), "{}", ten.len());
        assert!((4_900..=5_100).contains(&fifty.len()), "{}", fifty.len());
        assert!(ten.is_subset(&fifty), "a user in at 10 % is in at 50 %");
        assert_eq!(at(0.0).len(), 0);
        assert_eq!(at(100.0).len(), users.len());
    }

    #[test]
    fn two_flags_at_half_pick_unrelated_halves() {
        let users = users();
        let (a, b) = (rollout("calling", 50.0), rollout("video_calls", 50.0));
        let both = users
            .iter()
            .filter(|u| a.is_on(&who(u)) && b.is_on(&who(u)))
            .count();
        // Independent halves overlap on a quarter (± 2 %: 10,000 draws).
        assert!((2_300..=2_700).contains(&both), "{both}");
    }

    #[test]
    fn lists_win_over_state_and_targeting() {
        let mut flag = Flag {
            state: FlagState::Off,
            allow_users: vec!["staff".into(), "both".into()],
            deny_users: vec!["both".into()],
            platforms: vec![Platform::Android],
            ..Flag::unset("calling")
        };
        assert!(
            flag.is_on(&who("staff")),
            "allowed on iOS though off for iOS"
        );
        assert!(!flag.is_on(&who("both")), "deny wins");
        assert!(!flag.is_on(&who("anyone")));
        flag.state = FlagState::On;
        assert!(!flag.is_on(&who("anyone")), "iOS is not targeted");
    }

    #[test]
    fn targeting_narrows_by_platform_version_and_region() {
        let flag = Flag {
            platforms: vec![Platform::Ios],
            app_versions: Some(VersionRange {
                min: Some("2.14".into()),
                max: Some("3".into()),
            }),
            regions: vec!["eu-west".into()],
            ..Flag::unset("video_calls")
        };
        let on = |platform, app_version, region| {
            flag.is_on(&Subject {
                user_id: "u",
                platform,
                app_version,
                region,
            })
        };
        assert!(on(Platform::Ios, Some("2.14.0"), Some("eu-west")));
        assert!(on(Platform::Ios, Some("2.99.7"), Some("eu-west")));
        assert!(!on(Platform::Ios, Some("2.13.9"), Some("eu-west")));
        assert!(!on(Platform::Ios, Some("3.0"), Some("eu-west")));
        assert!(
            !on(Platform::Ios, None, Some("eu-west")),
            "no version: not in a range"
        );
        assert!(!on(Platform::Ios, Some("beta"), Some("eu-west")));
        assert!(!on(Platform::Android, Some("2.14.0"), Some("eu-west")));
        assert!(!on(Platform::Ios, Some("2.14.0"), Some("us-east")));
        assert!(!on(Platform::Ios, Some("2.14.0"), None));
    }

    #[test]
    fn a_call_reaches_a_device_by_its_kind_and_app_version() {
        let mut set = FlagSet::default();
        let phone = who("ann");
        assert_eq!(set.reach(&phone, true, None), Reach::Ring);
        assert_eq!(set.reach(&phone, true, Some("2.14.1")), Reach::Ring);
        assert_eq!(set.reach(&phone, true, Some("2.14.2")), Reach::Outdated);
        assert_eq!(set.reach(&phone, false, Some("3")), Reach::Outdated);
        let unversioned = Subject {
            app_version: None,
            ..phone
        };
        assert_eq!(set.reach(&unversioned, true, Some("3")), Reach::Ring);
        set.flags.push(Flag {
            state: FlagState::Off,
            ..Flag::unset(VIDEO_CALLS)
        });
        assert_eq!(set.reach(&phone, true, None), Reach::Off);
        assert_eq!(set.reach(&phone, false, None), Reach::Ring);
        set.flags.push(Flag {
            state: FlagState::Off,
            ..Flag::unset(INCOMING_CALL_UI)
        });
        assert_eq!(set.reach(&phone, false, None), Reach::Off);
        assert!(valid_version("2.14") && !valid_version("2.x") && !valid_version(""));
    }

    #[test]
    fn built_in_flags_start_on_and_others_off() {
        for name in BUILT_IN {
            assert!(Flag::unset(name).is_on(&who("u")), "{name}");
        }
        assert!(!Flag::unset("new_ringtone").is_on(&who("u")));
    }

    #[test]
    fn bad_flags_are_refused() {
        let bad = [
            Flag::unset("Video-Calls"),
            rollout("calling", 100.5),
            Flag {
                app_versions: Some(VersionRange {
                    min: None,
                    max: None,
                }),
                ..Flag::unset("calling")
            },
            Flag {
                app_versions: Some(VersionRange {
                    min: Some("2.x".into()),
                    max: None,
                }),
                ..Flag::unset("calling")
            },
            Flag {
                regions: vec!["EU West".into()],
                ..Flag::unset("calling")
            },
        ];
        for flag in bad {
            assert!(flag.validate().is_err(), "{flag:?}");
        }
        rollout("calling", 12.5).validate().unwrap();
    }

    #[test]
    fn the_wire_form_is_flat() {
        let flag: Flag = serde_json::from_value(serde_json::json!({
            "name": "video_calls", "state": "rollout", "percent": 10.0,
            "platforms": ["ios"], "appVersions": {"min": "2.14.0"}
        }))
        .unwrap();
        assert_eq!((flag.state, flag.percent), (FlagState::Rollout, Some(10.0)));
        assert_eq!(flag.platforms, [Platform::Ios]);
        let back = serde_json::to_value(&flag).unwrap();
        assert_eq!(back["state"], "rollout");
        assert_eq!(back["percent"], 10.0);
        for bad in [
            serde_json::json!({"name": "x", "state": "maybe"}),
            serde_json::json!({"name": "x", "state": "on", "colour": "red"}),
        ] {
            assert!(serde_json::from_value::<Flag>(bad).is_err());
        }
        let no_percent = Flag {
            percent: None,
            ..rollout("calling", 1.0)
        };
        assert!(no_percent.validate().is_err());
    }
}
