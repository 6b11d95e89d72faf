//! Sealing an RTP packet with a connection's transmit keys: what the own
//! egress will do per forwarded copy instead of str0m's write path. The
//! header goes out in the clear (and is authenticated), the payload is
//! encrypted out of place, then the tag: RFC 3711 section 3.1 (AES-CM
//! with an HMAC-SHA1-80 tag over header, ciphertext and ROC) and RFC 7714
//! section 8 (AES-GCM, the header as associated data). The IVs and tags
//! are str0m-proto's profile helpers; the ciphers its provider's.

use str0m::config::CryptoProvider;
use str0m::crypto::dtls::SrtpProfile;
use str0m::crypto::{
    AeadAes128Gcm, AeadAes128GcmCipher, AeadAes256Gcm, AeadAes256GcmCipher, Aes128CmSha1_80,
    Aes128CmSha1_80Cipher, CryptoError, Sha1HmacProvider,
};

use super::keys::SessionKeys;

enum Cipher {
    CmSha1 {
        cipher: Box<dyn Aes128CmSha1_80Cipher>,
        salt: [u8; Aes128CmSha1_80::SALT_LEN],
        auth_key: [u8; Aes128CmSha1_80::HMAC_KEY_LEN],
        hmac: &'static dyn Sha1HmacProvider,
    },
    Gcm128 {
        cipher: Box<dyn AeadAes128GcmCipher>,
        salt: [u8; AeadAes128Gcm::SALT_LEN],
    },
    Gcm256 {
        cipher: Box<dyn AeadAes256GcmCipher>,
        salt: [u8; AeadAes256Gcm::SALT_LEN],
    },
}

/// Seals the RTP packets of one direction of one connection.
pub struct RtpSealer {
    cipher: Cipher,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("keys do not fit SRTP profile {0:?}")]
    Keys(SrtpProfile),
    #[error("the cipher refused: {0}")]
    Cipher(String),
}

impl From<CryptoError> for SealError {
    fn from(e: CryptoError) -> SealError {
        SealError::Cipher(e.to_string())
    }
}

impl RtpSealer {
    /// A sealer for `profile` with a direction's RTP session keys.
    pub fn new(
        crypto: &CryptoProvider,
        profile: SrtpProfile,
        keys: &SessionKeys,
    ) -> Result<RtpSealer, SealError> {
        let bad = || SealError::Keys(profile);
        let srtp = crypto.srtp_provider;
        let cipher = match profile {
            SrtpProfile::AES128_CM_SHA1_80 => Cipher::CmSha1 {
                cipher: srtp.aes_128_cm_sha1_80().create_cipher(
                    keys.cipher_key.as_slice().try_into().map_err(|_| bad())?,
                    true,
                ),
                salt: keys.salt.as_slice().try_into().map_err(|_| bad())?,
                auth_key: keys.auth_key.ok_or_else(bad)?,
                hmac: crypto.sha1_hmac_provider,
            },
            SrtpProfile::AEAD_AES_128_GCM => Cipher::Gcm128 {
                cipher: srtp.aead_aes_128_gcm().create_cipher(
                    keys.cipher_key.as_slice().try_into().map_err(|_| bad())?,
                    true,
                ),
                salt: keys.salt.as_slice().try_into().map_err(|_| bad())?,
            },
            SrtpProfile::AEAD_AES_256_GCM => Cipher::Gcm256 {
                cipher: srtp.aead_aes_256_gcm().create_cipher(
                    keys.cipher_key.as_slice().try_into().map_err(|_| bad())?,
                    true,
                ),
                salt: keys.salt.as_slice().try_into().map_err(|_| bad())?,
            },
            _ => return Err(bad()),
        };
        Ok(RtpSealer { cipher })
    }

    /// Bytes a sealed packet has beyond its header and payload.
    pub fn overhead(&self) -> usize {
        match self.cipher {
            Cipher::CmSha1 { .. } => Aes128CmSha1_80::HMAC_TAG_LEN,
            Cipher::Gcm128 { .. } => AeadAes128Gcm::TAG_LEN,
            Cipher::Gcm256 { .. } => AeadAes256Gcm::TAG_LEN,
        }
    }

    /// Writes `header || sealed payload || tag` into `out` (cleared first).
    /// `index` is the packet's SRTP index: rollover counter << 16 |
    /// sequence number, the sequence number being the header's. A (key,
    /// SSRC, index) must never seal two different packets.
    pub fn seal(
        &mut self,
        header: &[u8],
        ssrc: u32,
        index: u64,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        out.clear();
        out.extend_from_slice(header);
        let sealed_at = out.len();
        out.resize(sealed_at + payload.len() + self.overhead(), 0);
        let roc = (index >> 16) as u32;
        let seq = index as u16;
        match &mut self.cipher {
            Cipher::CmSha1 {
                cipher,
                salt,
                auth_key,
                hmac,
            } => {
                let iv = Aes128CmSha1_80::rtp_iv(*salt, ssrc, index);
                let tag_at = sealed_at + payload.len();
                cipher.encrypt(&iv, payload, &mut out[sealed_at..tag_at])?;
                let sha1_hmac = |key: &[u8], data: &[&[u8]]| hmac.sha1_hmac(key, data);
                Aes128CmSha1_80::rtp_hmac(sha1_hmac, auth_key, out, index, tag_at);
            }
            Cipher::Gcm128 { cipher, salt } => {
                let iv = AeadAes128Gcm::rtp_iv(*salt, ssrc, roc, seq);
                let (aad, sealed) = out.split_at_mut(sealed_at);
                cipher.encrypt(&iv, aad, payload, sealed)?;
            }
            Cipher::Gcm256 { cipher, salt } => {
                let iv = AeadAes256Gcm::rtp_iv(*salt, ssrc, roc, seq);
                let (aad, sealed) = out.split_at_mut(sealed_at);
                cipher.encrypt(&iv, aad, payload, sealed)?;
            }
        }
        Ok(())
    }
}
