//! TURN credentials in a call's join info: whoever gets a call token gets
//! short-lived TURN credentials for the embedded relay (the REST API
//! convention of `turn::credentials`), as WebRTC `RTCIceServer` entries.

use std::time::Duration;

use serde::Serialize;

use crate::call::UnixMillis;

pub struct TurnIssuer {
    /// The secret that mints (the relay verifies with every configured one).
    pub secret: String,
    pub ttl: Duration,
    /// `turn:host:3478?transport=udp`, `...?transport=tcp`, `turns:host:5349?transport=tcp`.
    pub urls: Vec<String>,
}

/// One `RTCIceServer`, as `new RTCPeerConnection({iceServers})` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

impl TurnIssuer {
    /// This node's relay.
    pub fn ice_servers(&self, user_id: &str, now: UnixMillis) -> Vec<IceServer> {
        self.ice_servers_at(&self.urls, user_id, now)
    }

    /// The relay at `urls`: another node's, next to the room it hosts.
    /// The nodes of a cluster share the TURN secret, so credentials minted
    /// here work there.
    pub fn ice_servers_at(
        &self,
        urls: &[String],
        user_id: &str,
        now: UnixMillis,
    ) -> Vec<IceServer> {
        if urls.is_empty() {
            return Vec::new();
        }
        let expires_at = now / 1000 + self.ttl.as_secs();
        let c = turn::credentials::mint(&self.secret, user_id, expires_at);
        vec![IceServer {
            urls: urls.to_vec(),
            username: c.username,
            credential: c.password,
        }]
    }
}
