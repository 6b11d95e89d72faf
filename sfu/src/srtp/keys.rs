//! DTLS-SRTP keying material to SRTP session keys.
//!
//! RFC 5764 section 4.2: the exported material is `client key || server key
//! || client salt || server salt`; each side protects what it sends with
//! its own half (the DTLS client's, "left", is what the client sends).
//! RFC 3711 section 4.3: each session key is the AES counter-mode keystream
//! of the master key over `IV = (master salt XOR label at byte 7) || 16-bit
//! block counter`, the salt in the first 14 bytes; the AES-GCM profiles'
//! 12-byte salts take the first 12 (RFC 7714 section 11, as libsrtp and
//! str0m lay them out).

use str0m::crypto::SrtpProvider;
use str0m::crypto::dtls::SrtpProfile;

/// RFC 3711 section 4.3.1 labels.
const LABEL_RTP_ENCRYPTION: u8 = 0x00;
const LABEL_RTP_AUTH: u8 = 0x01;
const LABEL_RTP_SALT: u8 = 0x02;
const LABEL_RTCP_ENCRYPTION: u8 = 0x03;
const LABEL_RTCP_AUTH: u8 = 0x04;
const LABEL_RTCP_SALT: u8 = 0x05;

/// HMAC-SHA1 authentication keys are 160 bits (RFC 3711 section 4.2.1).
pub const AUTH_KEY_LEN: usize = 20;

/// A profile's master key and salt lengths.
fn lengths(profile: SrtpProfile) -> Option<(usize, usize)> {
    match profile {
        SrtpProfile::AES128_CM_SHA1_80 => Some((16, 14)),
        SrtpProfile::AEAD_AES_128_GCM => Some((16, 12)),
        SrtpProfile::AEAD_AES_256_GCM => Some((32, 12)),
        _ => None,
    }
}

/// The keys of one direction's RTP or RTCP.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// 16 or 32 bytes (the profile's cipher).
    pub cipher_key: Vec<u8>,
    /// 14 bytes for AES-CM, 12 for AES-GCM.
    pub salt: Vec<u8>,
    /// AES-CM's HMAC-SHA1 key; AES-GCM authenticates with the cipher.
    pub auth_key: Option<[u8; AUTH_KEY_LEN]>,
}

impl std::fmt::Debug for SessionKeys {
    // Keys never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field(
                "cipher_key",
                &format_args!("{} bytes", self.cipher_key.len()),
            )
            .finish_non_exhaustive()
    }
}

/// What one side sends with, or receives with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectionKeys {
    pub profile: SrtpProfile,
    pub rtp: SessionKeys,
    pub rtcp: SessionKeys,
}

/// A connection's keys both ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionKeys {
    pub transmit: DirectionKeys,
    pub receive: DirectionKeys,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("SRTP profile {0:?} is not one this server derives keys for")]
    UnknownProfile(SrtpProfile),
    #[error("keying material is {got} bytes; {profile:?} needs {want}")]
    MaterialLength {
        profile: SrtpProfile,
        got: usize,
        want: usize,
    },
}

/// Both directions' keys of a connection whose DTLS role is `dtls_client`
/// (str0m's `is_active`).
pub fn connection_keys(
    aes: &dyn SrtpProvider,
    profile: SrtpProfile,
    material: &[u8],
    dtls_client: bool,
) -> Result<ConnectionKeys, KeyError> {
    Ok(ConnectionKeys {
        transmit: direction_keys(aes, profile, material, dtls_client)?,
        receive: direction_keys(aes, profile, material, !dtls_client)?,
    })
}

/// The keys of what the DTLS client sends (`client_half`) or the server.
fn direction_keys(
    aes: &dyn SrtpProvider,
    profile: SrtpProfile,
    material: &[u8],
    client_half: bool,
) -> Result<DirectionKeys, KeyError> {
    let (key_len, salt_len) = lengths(profile).ok_or(KeyError::UnknownProfile(profile))?;
    let want = 2 * (key_len + salt_len);
    if material.len() != want {
        return Err(KeyError::MaterialLength {
            profile,
            got: material.len(),
            want,
        });
    }
    let (key_at, salt_at) = if client_half {
        (0, 2 * key_len)
    } else {
        (key_len, 2 * key_len + salt_len)
    };
    let master_key = &material[key_at..key_at + key_len];
    let master_salt = &material[salt_at..salt_at + salt_len];
    let authenticated = profile == SrtpProfile::AES128_CM_SHA1_80;
    let session = |encryption: u8, auth: u8, salt: u8| {
        let mut keys = SessionKeys {
            cipher_key: vec![0; key_len],
            salt: vec![0; salt_len],
            auth_key: None,
        };
        derive(
            aes,
            master_key,
            master_salt,
            encryption,
            &mut keys.cipher_key,
        );
        derive(aes, master_key, master_salt, salt, &mut keys.salt);
        if authenticated {
            let mut auth_key = [0; AUTH_KEY_LEN];
            derive(aes, master_key, master_salt, auth, &mut auth_key);
            keys.auth_key = Some(auth_key);
        }
        keys
    };
    Ok(DirectionKeys {
        profile,
        rtp: session(LABEL_RTP_ENCRYPTION, LABEL_RTP_AUTH, LABEL_RTP_SALT),
        rtcp: session(LABEL_RTCP_ENCRYPTION, LABEL_RTCP_AUTH, LABEL_RTCP_SALT),
    })
}

/// RFC 3711 section 4.3.3, the AES-CM PRF with a key derivation rate of 0.
fn derive(
    aes: &dyn SrtpProvider,
    master_key: &[u8],
    master_salt: &[u8],
    label: u8,
    out: &mut [u8],
) {
    let mut block = [0u8; 16];
    block[..master_salt.len()].copy_from_slice(master_salt);
    block[7] ^= label;
    // The provider's ECB round may write a block beyond the first.
    let mut keystream = [0u8; 32];
    for (counter, chunk) in out.chunks_mut(16).enumerate() {
        block[14..].copy_from_slice(&(counter as u16).to_be_bytes());
        match master_key.len() {
            16 => aes.srtp_aes_128_ecb_round(master_key, &block, &mut keystream),
            _ => aes.srtp_aes_256_ecb_round(master_key, &block, &mut keystream),
        }
        chunk.copy_from_slice(&keystream[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aes() -> &'static dyn SrtpProvider {
        let provider: &'static str0m::crypto::CryptoProvider =
            Box::leak(Box::new(str0m::crypto::from_feature_flags()));
        provider.srtp_provider
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 3711 appendix B.3: AES-128 key derivation.
    #[test]
    fn aes_128_key_derivation_matches_rfc_3711() {
        let (key, salt) = (
            hex("E1F97A0D3E018BE0D64FA32C06DE4139"),
            hex("0EC675AD498AFEEBB6960B3AABE6"),
        );
        let mut cipher_key = [0; 16];
        derive(aes(), &key, &salt, LABEL_RTP_ENCRYPTION, &mut cipher_key);
        assert_eq!(cipher_key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut session_salt = [0; 14];
        derive(aes(), &key, &salt, LABEL_RTP_SALT, &mut session_salt);
        assert_eq!(session_salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut auth_key = [0; 20];
        derive(aes(), &key, &salt, LABEL_RTP_AUTH, &mut auth_key);
        assert_eq!(
            auth_key.to_vec(),
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
    }

    /// RFC 6188 section 7.4: AES-256 key derivation.
    #[test]
    fn aes_256_key_derivation_matches_rfc_6188() {
        let (key, salt) = (
            hex("f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b6"),
            hex("3b04803de51ee7c96423ab5b78d2"),
        );
        let mut cipher_key = [0; 32];
        derive(aes(), &key, &salt, LABEL_RTP_ENCRYPTION, &mut cipher_key);
        assert_eq!(
            cipher_key.to_vec(),
            hex("5ba1064e30ec51613cad926c5a28ef731ec7fb397f70a960653caf06554cd8c4")
        );
        let mut session_salt = [0; 14];
        derive(aes(), &key, &salt, LABEL_RTP_SALT, &mut session_salt);
        assert_eq!(session_salt.to_vec(), hex("fa31791685ca444a9e07c6c64e93"));
        let mut auth_key = [0; 20];
        derive(aes(), &key, &salt, LABEL_RTP_AUTH, &mut auth_key);
        assert_eq!(
            auth_key.to_vec(),
            hex("fd9c32d39ed5fbb5a9dc96b30818454d1313dc05")
        );
    }
}
