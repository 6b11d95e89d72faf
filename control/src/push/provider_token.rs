//! The APNs provider token: an ES256 JWT (`kid` = key id, `iss` = team id,
//! `iat`) signed with the team's `.p8` key.
//!
//! Apple refuses tokens older than an hour (`ExpiredProviderToken`) and
//! throttles providers that mint new ones more often than every 20 minutes
//! (`TooManyProviderTokenUpdates`), so one token serves every request until
//! [`REFRESH_AFTER`]. Time is an input: tests drive it with a fake clock.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// A token is replaced once it is this old (seconds): past Apple's 20-minute
/// floor, well before its 60-minute expiry.
pub const REFRESH_AFTER: u64 = 40 * 60;
/// Apple's floor between two new tokens (seconds).
pub const MIN_REFRESH_INTERVAL: u64 = 20 * 60;

#[derive(Debug, thiserror::Error)]
pub enum ProviderTokenError {
    #[error("the APNs key is not a PKCS#8 P-256 private key (.p8): {0}")]
    BadKey(jsonwebtoken::errors::Error),
    #[error("signing the provider token: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

pub struct ProviderToken {
    key: EncodingKey,
    key_id: String,
    team_id: String,
    /// The token in use and when it was issued (Unix seconds).
    current: Option<(String, u64)>,
}

impl ProviderToken {
    /// `p8_pem`: the `.p8` file's contents (`-----BEGIN PRIVATE KEY-----`).
    pub fn new(p8_pem: &[u8], key_id: &str, team_id: &str) -> Result<Self, ProviderTokenError> {
        let key = EncodingKey::from_ec_pem(p8_pem).map_err(ProviderTokenError::BadKey)?;
        let mut token = ProviderToken {
            key,
            key_id: key_id.to_string(),
            team_id: team_id.to_string(),
            current: None,
        };
        // Sign once now: a key that cannot sign fails at start, not at the first call.
        token.mint(0)?;
        token.current = None;
        Ok(token)
    }

    /// The token to send at `now` (Unix seconds), minted only when none is
    /// in use or the one in use reached [`REFRESH_AFTER`].
    pub fn bearer(&mut self, now: u64) -> Result<&str, ProviderTokenError> {
        let fresh = self
            .current
            .as_ref()
            .is_some_and(|(_, iat)| now.saturating_sub(*iat) < REFRESH_AFTER);
        if !fresh {
            self.current = Some((self.mint(now)?, now));
        }
        Ok(self.current.as_ref().map(|(t, _)| t.as_str()).unwrap_or(""))
    }

    /// Apple answered `ExpiredProviderToken` to `rejected`. Returns whether a
    /// new token will be used: only if `rejected` is still the current one
    /// and at least [`MIN_REFRESH_INTERVAL`] old; a younger token refused as
    /// expired means the clock is wrong, and a new one would only be throttled.
    pub fn expired(&mut self, rejected: &str, now: u64) -> bool {
        match &self.current {
            Some((token, _)) if token != rejected => true, // already replaced
            Some((_, iat)) if now.saturating_sub(*iat) >= MIN_REFRESH_INTERVAL => {
                self.current = None;
                true
            }
            _ => false,
        }
    }

    /// When the token in use was issued, if any.
    pub fn issued_at(&self) -> Option<u64> {
        self.current.as_ref().map(|(_, iat)| *iat)
    }

    fn mint(&self, now: u64) -> Result<String, ProviderTokenError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = Claims {
            iss: &self.team_id,
            iat: now,
        };
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(ProviderTokenError::Sign)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use base64::Engine;

    /// A fresh `.p8` (PEM) and its public point.
    fn p8() -> (String, Vec<u8>) {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let der = pair.to_pkcs8v1().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        (pem, pair.public_key().as_ref().to_vec())
    }

    #[test]
    fn one_token_is_reused_until_forty_minutes_then_replaced() {
        let (pem, _) = p8();
        let mut t = ProviderToken::new(pem.as_bytes(), "KEY123", "TEAM456").unwrap();
        let t0 = 1_800_000_000;
        let first = t.bearer(t0).unwrap().to_string();
        for minute in [1, 10, 20, 39] {
            assert_eq!(
                t.bearer(t0 + minute * 60).unwrap(),
                first,
                "minute {minute}"
            );
        }
        let second = t.bearer(t0 + 40 * 60).unwrap().to_string();
        assert_ne!(second, first);
        assert_eq!(t.issued_at(), Some(t0 + 40 * 60));
        assert_eq!(t.bearer(t0 + 79 * 60).unwrap(), second);
    }

    #[test]
    fn expired_replaces_only_a_token_past_the_twenty_minute_floor() {
        let (pem, _) = p8();
        let mut t = ProviderToken::new(pem.as_bytes(), "KEY123", "TEAM456").unwrap();
        let t0 = 1_800_000_000;
        let first = t.bearer(t0).unwrap().to_string();
        // Ten minutes old and refused: a clock problem; keep it (no throttling).
        assert!(!t.expired(&first, t0 + 600));
        assert_eq!(t.bearer(t0 + 601).unwrap(), first);
        // Twenty-five minutes old: replace it.
        assert!(t.expired(&first, t0 + 1500));
        let second = t.bearer(t0 + 1500).unwrap().to_string();
        assert_ne!(second, first);
        // A late answer about the old token does not replace the new one.
        assert!(t.expired(&first, t0 + 1501));
        assert_eq!(t.bearer(t0 + 1502).unwrap(), second);
    }

    #[test]
    fn the_token_carries_kid_iss_iat_and_verifies_with_the_public_key() {
        let (pem, public_point) = p8();
        let mut t = ProviderToken::new(pem.as_bytes(), "KEY123", "TEAM456").unwrap();
        let token = t.bearer(1_800_000_000).unwrap().to_string();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some("KEY123"));
        let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
        v.validate_exp = false;
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_ec_der(&public_point),
            &v,
        )
        .unwrap();
        assert_eq!(data.claims["iss"], "TEAM456");
        assert_eq!(data.claims["iat"], 1_800_000_000u64);
    }

    #[test]
    fn a_key_that_is_not_p256_pkcs8_is_refused_at_construction() {
        assert!(ProviderToken::new(b"not a key", "K", "T").is_err());
    }
}
