//! The embedded TURN relay (RFC 8656): UDP, TCP and TLS listeners in front
//! of `turn-server-proto`, with our policy (REST credentials, no open
//! relay, quotas). See `README.md`.
//!
//! - `credentials`: the REST API username / password convention.
//! - `peers`: which peers may be reached.
//! - `relay`: the sans-IO core (the crate's servers behind the policy).
//! - `framing`: stream (TCP / TLS) message framing, sans-IO.
//! - `server`: the tokio shell owning every socket.

pub mod credentials;
pub mod framing;
pub mod metrics;
pub mod peers;
pub mod relay;
pub mod server;
