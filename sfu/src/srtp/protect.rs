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

/// Seals the RTP (or, built with the RTCP keys, the RTCP) packets of one
/// direction of one connection.
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

    /// Writes the SRTCP packet of the compound RTCP packet `compound` into
    /// `out` (cleared first): its first 8 bytes in the clear, the rest
    /// encrypted, `E | index` and the tag (RFC 3711 section 3.4; RFC 7714
    /// section 9, where `E | index` follows the tag). The IV takes the
    /// SSRC of the compound's first packet. A (key, that SSRC, `index`)
    /// must never seal two different packets; `index` is 31 bits.
    pub fn seal_rtcp(
        &mut self,
        compound: &[u8],
        index: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        if compound.len() < 8 {
            return Err(SealError::Cipher(
                "an RTCP packet has 8 bytes at least".into(),
            ));
        }
        let ssrc = u32::from_be_bytes([compound[4], compound[5], compound[6], compound[7]]);
        let e_and_index = (0x8000_0000 | (index & 0x7fff_ffff)).to_be_bytes();
        out.clear();
        out.extend_from_slice(&compound[..8]);
        let body = &compound[8..];
        match &mut self.cipher {
            Cipher::CmSha1 {
                cipher,
                salt,
                auth_key,
                hmac,
            } => {
                let iv = Aes128CmSha1_80::rtp_iv(*salt, ssrc, u64::from(index & 0x7fff_ffff));
                out.resize(8 + body.len(), 0);
                cipher.encrypt(&iv, body, &mut out[8..])?;
                out.extend_from_slice(&e_and_index);
                let tag_at = out.len();
                out.resize(tag_at + Aes128CmSha1_80::HMAC_TAG_LEN, 0);
                let sha1_hmac = |key: &[u8], data: &[&[u8]]| hmac.sha1_hmac(key, data);
                Aes128CmSha1_80::rtcp_hmac(sha1_hmac, auth_key, out, tag_at);
            }
            Cipher::Gcm128 { cipher, salt } => {
                let iv = AeadAes128Gcm::rtcp_iv(*salt, ssrc, index & 0x7fff_ffff);
                let aad = rtcp_aad(compound, e_and_index);
                out.resize(8 + body.len() + AeadAes128Gcm::TAG_LEN, 0);
                cipher.encrypt(&iv, &aad, body, &mut out[8..])?;
                out.extend_from_slice(&e_and_index);
            }
            Cipher::Gcm256 { cipher, salt } => {
                let iv = AeadAes256Gcm::rtcp_iv(*salt, ssrc, index & 0x7fff_ffff);
                let aad = rtcp_aad(compound, e_and_index);
                out.resize(8 + body.len() + AeadAes256Gcm::TAG_LEN, 0);
                cipher.encrypt(&iv, &aad, body, &mut out[8..])?;
                out.extend_from_slice(&e_and_index);
            }
        }
        Ok(())
    }
}

/// RFC 7714 section 9.1: the clear header and `E | index` are the
/// associated data.
fn rtcp_aad(compound: &[u8], e_and_index: [u8; 4]) -> [u8; 12] {
    let mut aad = [0; 12];
    aad[..8].copy_from_slice(&compound[..8]);
    aad[8..].copy_from_slice(&e_and_index);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7714 section 17 (AEAD_AES_128_GCM): the session key and salt of
    /// its examples, and its SRTCP packet (a sender report, index 0x5d4).
    const KEY: [u8; 16] = [
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
        0x0f,
    ];
    const SALT: [u8; 12] = [
        0x51, 0x75, 0x69, 0x64, 0x20, 0x70, 0x72, 0x6f, 0x20, 0x71, 0x75, 0x6f,
    ];
    const PLAIN_RTCP: &[u8] = &[
        0x81, 0xc8, 0x00, 0x0d, 0x4d, 0x61, 0x72, 0x73, 0x4e, 0x54, 0x50, 0x31, 0x4e, 0x54, 0x50,
        0x32, 0x52, 0x54, 0x50, 0x20, 0x00, 0x00, 0x04, 0x2a, 0x00, 0x00, 0xe9, 0x30, 0x4c, 0x75,
        0x6e, 0x61, 0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef, 0xde,
        0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef,
    ];
    const SEALED_RTCP: &[u8] = &[
        0x81, 0xc8, 0x00, 0x0d, 0x4d, 0x61, 0x72, 0x73, 0x63, 0xe9, 0x48, 0x85, 0xdc, 0xda, 0xb6,
        0x7c, 0xa7, 0x27, 0xd7, 0x66, 0x2f, 0x6b, 0x7e, 0x99, 0x7f, 0xf5, 0xc0, 0xf7, 0x6c, 0x06,
        0xf3, 0x2d, 0xc6, 0x76, 0xa5, 0xf1, 0x73, 0x0d, 0x6f, 0xda, 0x4c, 0xe0, 0x9b, 0x46, 0x86,
        0x30, 0x3d, 0xed, 0x0b, 0xb9, 0x27, 0x5b, 0xc8, 0x4a, 0xa4, 0x58, 0x96, 0xcf, 0x4d, 0x2f,
        0xc5, 0xab, 0xf8, 0x72, 0x45, 0xd9, 0xea, 0xde, 0x80, 0x00, 0x05, 0xd4,
    ];

    #[test]
    fn seals_rtcp_as_rfc_7714_does() {
        let crypto = str0m::crypto::from_feature_flags();
        let keys = SessionKeys {
            cipher_key: KEY.to_vec(),
            salt: SALT.to_vec(),
            auth_key: None,
        };
        let mut sealer = RtpSealer::new(&crypto, SrtpProfile::AEAD_AES_128_GCM, &keys).unwrap();
        let mut out = Vec::new();
        sealer.seal_rtcp(PLAIN_RTCP, 0x5d4, &mut out).unwrap();
        assert_eq!(out, SEALED_RTCP);
        assert!(sealer.seal_rtcp(&PLAIN_RTCP[..7], 1, &mut out).is_err());
    }
}
