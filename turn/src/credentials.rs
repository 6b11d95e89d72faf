//! TURN REST API credentials, the convention coturn uses (so an operator can
//! swap coturn in): username `<expiry unix seconds>:<userId>`, password
//! `base64(HMAC-SHA1(secret, username))`. The control plane mints them with
//! the call token; the relay recomputes the password from the username, so
//! no credential is stored anywhere.
//!
//! Several secrets may be valid at once (rotation): the first mints, all verify.

use aws_lc_rs::hmac;
use base64::Engine;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// The password for `username` under `secret`.
pub fn password(secret: &str, username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let tag = hmac::sign(&key, username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// A credential for `user_id`, valid until `expires_at` (Unix seconds).
pub fn mint(secret: &str, user_id: &str, expires_at: u64) -> Credential {
    let username = format!("{expires_at}:{user_id}");
    Credential {
        password: password(secret, &username),
        username,
        expires_at,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    #[error("not <expiry>:<user>")]
    Malformed,
    #[error("expired")]
    Expired,
}

/// The expiry and user of a REST username, if it has not expired at `now`
/// (Unix seconds).
pub fn check_username(username: &str, now: u64) -> Result<(u64, &str), UsernameError> {
    let (expiry, user) = username.split_once(':').ok_or(UsernameError::Malformed)?;
    let expiry: u64 = expiry.parse().map_err(|_| UsernameError::Malformed)?;
    if user.is_empty() {
        return Err(UsernameError::Malformed);
    }
    if expiry <= now {
        return Err(UsernameError::Expired);
    }
    Ok((expiry, user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_rest_api_convention() {
        // The TURN REST API draft's construction, computed independently:
        // printf '1700000000:alice' | openssl dgst -sha1 -hmac s3cret -binary | base64
        let c = mint("s3cret", "alice", 1_700_000_000);
        assert_eq!(c.username, "1700000000:alice");
        assert_eq!(c.password, "TtElzSjT0GdnTQ9xdcRNxx96yQs=");
        assert_ne!(c.password, password("other", "1700000000:alice"));
    }

    #[test]
    fn usernames_are_checked_for_shape_and_expiry() {
        assert_eq!(
            check_username("1700000600:bob", 1_700_000_000),
            Ok((1_700_000_600, "bob"))
        );
        assert_eq!(
            check_username("1700000600:bob", 1_700_000_600),
            Err(UsernameError::Expired)
        );
        assert_eq!(check_username("bob", 0), Err(UsernameError::Malformed));
        assert_eq!(check_username("x:bob", 0), Err(UsernameError::Malformed));
        assert_eq!(
            check_username("1700000600:", 0),
            Err(UsernameError::Malformed)
        );
        // A user id with colons keeps them (only the first splits).
        assert_eq!(
            check_username("1700000600:a:b", 0),
            Ok((1_700_000_600, "a:b"))
        );
    }
}
