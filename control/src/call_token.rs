//! Call tokens: short-lived JWTs (HS256, a configured secret) that authorize
//! one participant to join one call's SFU room with stated permissions.
//!
//! A call token is not a user token: it names one call, and nothing else in
//! the system accepts it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use signaling::Permissions;

/// The audience every call token carries: the media plane.
pub const AUDIENCE: &str = "switchboard:call";

/// Default lifetime: long enough to join after a slow answer, short enough that
/// a leaked token is useless soon (the design asks for 60-120 s).
pub const DEFAULT_TTL: Duration = Duration::from_secs(120);

/// Tokens are checked with a small leeway for clock skew between nodes.
const LEEWAY_SECONDS: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaMode {
    /// Every call goes through the SFU; the hint exists for client compatibility.
    Sfu,
}

/// What a token grants: who, in which call, allowed to do what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallGrant {
    pub call_id: String,
    pub user_id: String,
    pub participant_id: String,
    pub permissions: Permissions,
    /// The call was created for more than two people. Its room never needs
    /// the 1:1 fast path's bandwidth feedback, so the SFU spares every
    /// member's subscriber connection the estimator.
    pub group: bool,
    /// The node hosting the call's room (`crate::placement`): any other
    /// node refuses the join with `wrong_node`. `None`: any node.
    pub node: Option<String>,
    /// The device that joins with it, for the SFU's logs (never trusted
    /// for anything else). `None`: not known (development tokens).
    pub device: Option<GrantDevice>,
}

/// Which device a call token was minted for, as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantDevice {
    pub device_id: String,
    /// `ios`, `android`, `web`; `unknown` for a device not registered.
    pub platform: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    iat: u64,
    nbf: u64,
    exp: u64,
    call_id: String,
    participant_id: String,
    permissions: Permissions,
    media_mode: MediaMode,
    /// Absent in tokens minted before it existed: not a group.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    group: bool,
    /// Absent in tokens of unplaced calls: any node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    /// Absent in tokens minted before they existed, and in development ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("call token expired")]
    Expired,
    #[error("call token not valid: {0}")]
    Invalid(&'static str),
}

/// Mints and verifies call tokens with one HS256 secret.
#[derive(Clone)]
pub struct CallTokens {
    issuer: String,
    ttl: Duration,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for CallTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("CallTokens")
            .field("issuer", &self.issuer)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl CallTokens {
    pub fn new(secret: &[u8], issuer: impl Into<String>, ttl: Duration) -> CallTokens {
        CallTokens {
            issuer: issuer.into(),
            ttl,
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    pub fn mint(&self, grant: &CallGrant) -> String {
        self.mint_at(grant, SystemTime::now())
    }

    /// Mints as if the clock read `now` (tests make expired tokens this way).
    pub fn mint_at(&self, grant: &CallGrant, now: SystemTime) -> String {
        let iat = unix_seconds(now);
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: AUDIENCE.to_string(),
            sub: grant.user_id.clone(),
            iat,
            nbf: iat,
            exp: iat + self.ttl.as_secs(),
            call_id: grant.call_id.clone(),
            participant_id: grant.participant_id.clone(),
            permissions: grant.permissions,
            media_mode: MediaMode::Sfu,
            group: grant.group,
            node: grant.node.clone(),
            device_id: grant.device.as_ref().map(|d| d.device_id.clone()),
            platform: grant.device.as_ref().map(|d| d.platform.clone()),
        };
        // HS256 signing of a serializable struct cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing does not fail")
    }

    /// Checks algorithm (HS256 only), signature, issuer, audience, expiry and
    /// not-before, and returns the grant.
    pub fn verify(&self, token: &str) -> Result<CallGrant, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::Invalid("bad signature"),
                ErrorKind::InvalidAlgorithm => TokenError::Invalid("algorithm not allowed"),
                ErrorKind::InvalidIssuer => TokenError::Invalid("wrong issuer"),
                ErrorKind::InvalidAudience => TokenError::Invalid("not a call token"),
                ErrorKind::ImmatureSignature => TokenError::Invalid("not valid yet"),
                ErrorKind::MissingRequiredClaim(_) => TokenError::Invalid("missing claim"),
                _ => TokenError::Invalid("malformed"),
            },
        )?;
        let claims = data.claims;
        let now = unix_seconds(SystemTime::now());
        // Minted here with `ttl`: a token that claims to live longer, or to
        // have been issued in the future, was not.
        if claims.exp.saturating_sub(now) > self.ttl.as_secs() + LEEWAY_SECONDS {
            return Err(TokenError::Invalid("lifetime too long"));
        }
        if claims.iat > now + LEEWAY_SECONDS {
            return Err(TokenError::Invalid("issued in the future"));
        }
        if claims.call_id.is_empty() || claims.sub.is_empty() || claims.participant_id.is_empty() {
            return Err(TokenError::Invalid("empty call, user or participant"));
        }
        Ok(CallGrant {
            call_id: claims.call_id,
            user_id: claims.sub,
            participant_id: claims.participant_id,
            permissions: claims.permissions,
            group: claims.group,
            node: claims.node,
            device: claims.device_id.map(|device_id| GrantDevice {
                device_id,
                platform: claims.platform.unwrap_or_else(|| "unknown".into()),
            }),
        })
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> CallTokens {
        CallTokens::new(
            b"test-secret-of-32-bytes-at-least",
            "switchboard",
            DEFAULT_TTL,
        )
    }

    fn grant() -> CallGrant {
        CallGrant {
            call_id: "call-1".into(),
            user_id: "alice".into(),
            participant_id: "p-alice".into(),
            permissions: Permissions {
                publish_audio: true,
                publish_video: false,
                subscribe: true,
                publish_data: false,
            },
            group: false,
            node: None,
            device: None,
        }
    }

    #[test]
    fn a_token_living_longer_than_this_server_mints_is_refused() {
        let ten_years = Duration::from_secs(10 * 365 * 24 * 3600);
        let long = CallTokens::new(
            b"test-secret-of-32-bytes-at-least",
            "switchboard",
            ten_years,
        );
        let token = long.mint(&grant());
        assert_eq!(
            tokens().verify(&token),
            Err(TokenError::Invalid("lifetime too long"))
        );
        let ahead = tokens().mint_at(&grant(), SystemTime::now() + Duration::from_secs(3600));
        assert!(tokens().verify(&ahead).is_err());
    }

    #[test]
    fn minted_token_verifies_to_the_same_grant() {
        let t = tokens();
        assert_eq!(t.verify(&t.mint(&grant())).unwrap(), grant());
        let group = CallGrant {
            group: true,
            node: Some("eu-1".into()),
            ..grant()
        };
        assert_eq!(t.verify(&t.mint(&group)).unwrap(), group);
    }

    #[test]
    fn expired_token_is_refused() {
        let t = tokens();
        let old = SystemTime::now() - Duration::from_secs(600);
        assert_eq!(
            t.verify(&t.mint_at(&grant(), old)),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn token_from_the_future_is_refused() {
        let t = tokens();
        let later = SystemTime::now() + Duration::from_secs(600);
        assert_eq!(
            t.verify(&t.mint_at(&grant(), later)),
            Err(TokenError::Invalid("not valid yet"))
        );
    }

    #[test]
    fn other_secret_is_refused() {
        let other = CallTokens::new(
            b"another-secret-another-secret!!!",
            "switchboard",
            DEFAULT_TTL,
        );
        assert_eq!(
            tokens().verify(&other.mint(&grant())),
            Err(TokenError::Invalid("bad signature"))
        );
    }

    #[test]
    fn other_issuer_is_refused() {
        let secret = b"test-secret-of-32-bytes-at-least";
        let other = CallTokens::new(secret, "someone-else", DEFAULT_TTL);
        assert_eq!(
            tokens().verify(&other.mint(&grant())),
            Err(TokenError::Invalid("wrong issuer"))
        );
    }

    #[test]
    fn unsigned_token_is_refused() {
        // alg "none" must never pass, whatever the claims say.
        let t = tokens();
        let signed = t.mint(&grant());
        let payload = signed.split('.').nth(1).unwrap();
        let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
        let forged = format!("{none_header}.{payload}.");
        assert!(matches!(t.verify(&forged), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(
            tokens().verify("not-a-jwt"),
            Err(TokenError::Invalid("malformed"))
        );
    }
}
