//! Who is calling the API.
//!
//! The app's backend holds API keys (id + secret, several at once, each
//! revocable). It mints short user access tokens for its users (JWT, HS256
//! with the key's secret, `kid` = key id, `sub` = user id) that devices send as
//! `Authorization: Bearer`. The backend itself authenticates with the key
//! (`Authorization: Basic base64(keyId:secret)`) and names the user it acts
//! for in `X-Switchboard-User`.
//!
//! A user token is not a call token: the audiences differ, so neither is
//! accepted in place of the other.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

/// The audience of user access tokens.
pub const USER_AUDIENCE: &str = "switchboard:user";

/// Longest lifetime (exp - iat) a user token may claim: they are meant to be
/// short, and a leaked long-lived one would be a standing credential.
pub const DEFAULT_MAX_USER_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

const LEEWAY_SECONDS: u64 = 5;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub id: String,
    pub secret: String,
    /// A revoked key authenticates nothing, neither itself nor its tokens.
    #[serde(default)]
    pub revoked: bool,
}

/// The caller of a request, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub key_id: String,
    pub via: Via,
    /// When the user token stops being valid (Unix seconds); `None` for
    /// the API key, which does not expire.
    pub expires_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A device with a user access token.
    UserToken,
    /// The app's backend with the API key, acting for `user_id`.
    ApiKey,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("unknown or revoked key")]
    UnknownKey,
    #[error("invalid credentials: {0}")]
    Invalid(&'static str),
}

#[derive(Debug, Serialize, Deserialize)]
struct UserClaims {
    sub: String,
    aud: String,
    exp: u64,
    iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
}

/// The configured API keys.
#[derive(Clone)]
pub struct Authenticator {
    keys: HashMap<String, ApiKey>,
    max_user_token_ttl: Duration,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only; never a secret.
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("Authenticator").field("keys", &ids).finish()
    }
}

impl Authenticator {
    pub fn new(keys: Vec<ApiKey>, max_user_token_ttl: Duration) -> Authenticator {
        Authenticator {
            keys: keys.into_iter().map(|k| (k.id.clone(), k)).collect(),
            max_user_token_ttl,
        }
    }

    fn live_key(&self, id: &str) -> Result<&ApiKey, AuthError> {
        self.keys
            .get(id)
            .filter(|k| !k.revoked)
            .ok_or(AuthError::UnknownKey)
    }

    /// Authenticates an `Authorization` header value (and, for API-key
    /// requests, the `X-Switchboard-User` header naming the acting user).
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        acting_user: Option<&str>,
    ) -> Result<Principal, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        if let Some(token) = header.strip_prefix("Bearer ") {
            return self.verify_user_token(token.trim());
        }
        if let Some(basic) = header.strip_prefix("Basic ") {
            let key_id = self.verify_api_key(basic.trim())?;
            let user_id = acting_user
                .filter(|u| valid_id(u))
                .ok_or(AuthError::Invalid(
                    "an API-key request names its user in X-Switchboard-User",
                ))?;
            return Ok(Principal {
                user_id: user_id.to_string(),
                key_id,
                via: Via::ApiKey,
                expires_at: None,
            });
        }
        Err(AuthError::Invalid("unsupported authorization scheme"))
    }

    /// An operator request: an API key (HTTP Basic) and nothing else; its
    /// key id.
    pub fn authenticate_api_key(&self, authorization: Option<&str>) -> Result<String, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let basic = header
            .strip_prefix("Basic ")
            .ok_or(AuthError::Invalid("unsupported authorization scheme"))?;
        self.verify_api_key(basic.trim())
    }

    pub fn verify_user_token(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("malformed token"))?;
        if header.alg != Algorithm::HS256 {
            return Err(AuthError::Invalid("algorithm not allowed"));
        }
        let kid = header
            .kid
            .ok_or(AuthError::Invalid("token names no key (kid)"))?;
        let key = self.live_key(&kid)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[USER_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        validation.leeway = LEEWAY_SECONDS;
        let data = jsonwebtoken::decode::<UserClaims>(
            token,
            &DecodingKey::from_secret(key.secret.as_bytes()),
            &validation,
        )
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::InvalidSignature => AuthError::Invalid("bad signature"),
            ErrorKind::InvalidAudience => AuthError::Invalid("not a user token"),
            ErrorKind::MissingRequiredClaim(_) => AuthError::Invalid("missing claim"),
            _ => AuthError::Invalid("malformed token"),
        })?;
        let claims = data.claims;
        check_lifetime(&claims, unix_now(), self.max_user_token_ttl)?;
        if !valid_id(&claims.sub) {
            return Err(AuthError::Invalid("bad subject"));
        }
        Ok(Principal {
            user_id: claims.sub,
            key_id: kid,
            via: Via::UserToken,
            expires_at: Some(claims.exp),
        })
    }

    /// `base64(keyId:secret)`; returns the key id.
    fn verify_api_key(&self, basic: &str) -> Result<String, AuthError> {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic)
            .map_err(|_| AuthError::Invalid("malformed basic credentials"))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| AuthError::Invalid("malformed basic credentials"))?;
        let (id, secret) = text
            .split_once(':')
            .ok_or(AuthError::Invalid("malformed basic credentials"))?;
        let key = self.live_key(id)?;
        if !constant_time_eq(key.secret.as_bytes(), secret.as_bytes()) {
            return Err(AuthError::Invalid("wrong secret"));
        }
        Ok(id.to_string())
    }
}

/// Mints a user access token with `key`, as an app backend does (Rust
/// backends and tests use this; others use any JWT library: HS256, `kid` =
/// key id, `sub`, `aud` = "switchboard:user", `iat`, `exp`).
pub fn mint_user_token(
    key: &ApiKey,
    user_id: &str,
    ttl: Duration,
    now_unix_seconds: u64,
) -> String {
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = Some(key.id.clone());
    let claims = UserClaims {
        sub: user_id.to_string(),
        aud: USER_AUDIENCE.to_string(),
        iat: now_unix_seconds,
        exp: now_unix_seconds + ttl.as_secs(),
        nbf: None,
    };
    // HS256 over a plain struct cannot fail.
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key.secret.as_bytes()),
    )
    .expect("HS256 signing does not fail")
}

/// User ids, device ids and the like: 1-128 characters, none a control
/// character (Unicode `Cc`). Counted in characters, as JSON Schema's
/// `maxLength` counts them (`control/openapi.yaml`, `Id`).
pub fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= 128 && !s.chars().any(char::is_control)
}

/// Compares secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A user token's times against `now` (Unix seconds), beyond what the JWT
/// library checks (`exp`): it lives at most `max_ttl` from now (however its
/// `iat` is set: a token "issued" ten years ahead must not live ten years),
/// was not issued in the future, and is not used before its `nbf`; each
/// with [`LEEWAY_SECONDS`] for clock skew.
fn check_lifetime(claims: &UserClaims, now: u64, max_ttl: Duration) -> Result<(), AuthError> {
    if claims.exp.saturating_sub(claims.iat) > max_ttl.as_secs()
        || claims.exp.saturating_sub(now) > max_ttl.as_secs() + LEEWAY_SECONDS
    {
        return Err(AuthError::Invalid("token lifetime too long"));
    }
    if claims.iat > now + LEEWAY_SECONDS {
        return Err(AuthError::Invalid("token issued in the future"));
    }
    if claims.nbf.is_some_and(|nbf| nbf > now + LEEWAY_SECONDS) {
        return Err(AuthError::Invalid("token not valid yet"));
    }
    Ok(())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use std::time::{SystemTime, UNIX_EPOCH};

    const SECRET: &str = "key-one-secret-key-one-secret-key-one";

    fn auth() -> Authenticator {
        Authenticator::new(
            vec![
                ApiKey {
                    id: "k1".into(),
                    secret: SECRET.into(),
                    revoked: false,
                },
                ApiKey {
                    id: "old".into(),
                    secret: "old-secret-old-secret-old-secret".into(),
                    revoked: true,
                },
            ],
            DEFAULT_MAX_USER_TOKEN_TTL,
        )
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(kid: Option<&str>, secret: &str, aud: &str, iat: u64, exp: u64) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(String::from);
        let claims = UserClaims {
            sub: "alice".into(),
            aud: aud.into(),
            iat,
            exp,
            nbf: None,
        };
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn bearer(t: &str) -> String {
        format!("Bearer {t}")
    }

    fn basic(id: &str, secret: &str) -> String {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        )
    }

    #[test]
    fn a_user_token_names_its_user() {
        let t = token(Some("k1"), SECRET, USER_AUDIENCE, now(), now() + 600);
        let p = auth().authenticate(Some(&bearer(&t)), None).unwrap();
        assert_eq!(
            (p.user_id.as_str(), p.key_id.as_str(), p.via),
            ("alice", "k1", Via::UserToken)
        );
    }

    #[test]
    fn bad_user_tokens_are_refused() {
        let a = auth();
        let n = now();
        let cases = [
            (
                token(Some("k1"), SECRET, USER_AUDIENCE, n - 7200, n - 3600),
                AuthError::Expired,
            ),
            (
                token(Some("nope"), SECRET, USER_AUDIENCE, n, n + 600),
                AuthError::UnknownKey,
            ),
            (
                token(
                    Some("old"),
                    "old-secret-old-secret-old-secret",
                    USER_AUDIENCE,
                    n,
                    n + 600,
                ),
                AuthError::UnknownKey,
            ),
            (
                token(None, SECRET, USER_AUDIENCE, n, n + 600),
                AuthError::Invalid("token names no key (kid)"),
            ),
            (
                token(
                    Some("k1"),
                    "wrong-secret-wrong-secret-wrong",
                    USER_AUDIENCE,
                    n,
                    n + 600,
                ),
                AuthError::Invalid("bad signature"),
            ),
            // A call token's audience: a call token is not a user token.
            (
                token(Some("k1"), SECRET, crate::call_token::AUDIENCE, n, n + 600),
                AuthError::Invalid("not a user token"),
            ),
            (
                token(Some("k1"), SECRET, USER_AUDIENCE, n, n + 30 * 86_400),
                AuthError::Invalid("token lifetime too long"),
            ),
        ];
        for (t, want) in cases {
            assert_eq!(a.authenticate(Some(&bearer(&t)), None), Err(want));
        }
        // alg none, whatever it claims.
        let payload = token(Some("k1"), SECRET, USER_AUDIENCE, n, n + 600);
        let payload = payload.split('.').nth(1).unwrap();
        let forged = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIiwia2lkIjoiazEifQ.{payload}.");
        assert!(matches!(
            a.authenticate(Some(&bearer(&forged)), None),
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(a.authenticate(None, None), Err(AuthError::Missing));
        assert!(a.authenticate(Some("Digest x"), None).is_err());
    }

    #[test]
    fn a_real_call_token_is_not_a_user_token() {
        let tokens = crate::call_token::CallTokens::new(
            SECRET.as_bytes(),
            "switchboard",
            crate::call_token::DEFAULT_TTL,
        );
        let call_token = tokens.mint(&crate::call_token::CallGrant {
            call_id: "c".into(),
            user_id: "alice".into(),
            participant_id: "p".into(),
            permissions: signaling::Permissions::ALL,
            group: false,
            node: None,
            device: None,
        });
        assert!(
            auth()
                .authenticate(Some(&bearer(&call_token)), None)
                .is_err()
        );
    }

    #[test]
    fn the_backend_authenticates_with_its_key_for_a_named_user() {
        let a = auth();
        let p = a
            .authenticate(Some(&basic("k1", SECRET)), Some("bob"))
            .unwrap();
        assert_eq!((p.user_id.as_str(), p.via), ("bob", Via::ApiKey));
        assert_eq!(
            a.authenticate(Some(&basic("k1", "nope")), Some("bob")),
            Err(AuthError::Invalid("wrong secret"))
        );
        assert_eq!(
            a.authenticate(
                Some(&basic("old", "old-secret-old-secret-old-secret")),
                Some("bob")
            ),
            Err(AuthError::UnknownKey)
        );
        assert!(a.authenticate(Some(&basic("k1", SECRET)), None).is_err());
        assert!(a.authenticate(Some("Basic !!!"), Some("bob")).is_err());
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        assert!(!format!("{:?}", auth()).contains(SECRET));
    }

    #[test]
    fn lifetimes_are_checked_against_now_not_only_against_iat() {
        let key = ApiKey {
            id: "k1".into(),
            secret: "s".repeat(32),
            revoked: false,
        };
        let t = Duration::from_secs(3600);
        let now = now();
        let future_iat = now + 10 * 365 * 24 * 3600;
        let claims = |iat, exp, nbf| UserClaims {
            sub: "alice".into(),
            aud: USER_AUDIENCE.into(),
            iat,
            exp,
            nbf,
        };
        // Issued "ten years ahead", living an hour from then: refused.
        let far = claims(future_iat, future_iat + 3600, None);
        assert!(check_lifetime(&far, now, t).is_err());
        // A long exp with an iat placed to make exp - iat look short.
        let sneaky = claims(now + 3 * 3600, now + 4 * 3600, None);
        assert!(check_lifetime(&sneaky, now, t).is_err());
        let not_yet = claims(now, now + 600, Some(now + 600));
        assert!(check_lifetime(&not_yet, now, t).is_err());
        let fine = claims(now, now + 600, Some(now));
        assert!(check_lifetime(&fine, now, t).is_ok());
        // The minted token passes the whole check.
        let auth = Authenticator::new(vec![key.clone()], t);
        let token = mint_user_token(&key, "alice", Duration::from_secs(600), now);
        assert_eq!(
            auth.verify_user_token(&token).unwrap().expires_at,
            Some(now + 600)
        );
    }
}
