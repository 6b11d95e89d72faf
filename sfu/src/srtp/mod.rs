//! SRTP keys for the server's own egress (issue 21): the session keys of a
//! subscriber connection, so the forwarding path can encrypt copies itself
//! rather than through str0m's per-packet write path.
//!
//! str0m keeps ICE, DTLS and SRTCP; it derives its SRTP contexts from the
//! DTLS-SRTP keying material internally and hands out neither. The material
//! passes through its crypto provider's `DtlsInstance` though, which is ours
//! to wrap ([`capture`]); the session keys are then derived here the way
//! RFC 3711 section 4.3 (and RFC 7714 section 11 for AES-GCM) defines
//! ([`keys`]), with the provider's own AES.

pub mod capture;
pub mod egress;
pub mod keys;
pub mod protect;
