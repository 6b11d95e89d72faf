//! The node registry: which `switchboard` nodes serve now, where, and how
//! loaded. Each node heartbeats its record with a time to live; a node that
//! stops heartbeating (crashed, partitioned) drops out when its record
//! expires, with no one having to notice. `GET /v1/nodes` lists them for
//! operators; room placement (next) reads the same list.
//!
//! A cluster keeps the registry in Redis (`store::RedisStore`); one node
//! with the embedded store has a registry of one ([`LocalNodes`]).

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::call::UnixMillis;
use crate::store::StoreError;

/// How often a node heartbeats, and how long a heartbeat counts: a node
/// that stops is gone from the list within [`HEARTBEAT_TTL_MS`] (under the
/// 10 s operators are promised), after missing two beats.
pub const HEARTBEAT_INTERVAL_MS: u64 = 2_000;
pub const HEARTBEAT_TTL_MS: u64 = 6_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Takes new rooms.
    Active,
    /// Shutting down: its live calls finish, no new rooms go there.
    Draining,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeLoad {
    pub rooms: u64,
    pub participants: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub node_id: String,
    pub region: String,
    /// Where clients reach this node's API and signaling (`/v1/rtc`).
    pub public_url: String,
    /// The media (ICE) addresses it announces, `ip:port`.
    pub media_addresses: Vec<String>,
    /// Its co-located TURN relay's URLs (empty without one).
    pub turn_urls: Vec<String>,
    pub state: NodeState,
    pub load: NodeLoad,
    pub started_at: UnixMillis,
    pub heartbeat_at: UnixMillis,
}

pub trait NodeRegistry: Send + Sync {
    /// Records `node` as alive until `now + ttl_ms`.
    fn heartbeat(&self, node: &NodeRecord, now: UnixMillis, ttl_ms: u64) -> Result<(), StoreError>;
    /// The nodes whose last heartbeat has not expired at `now`, by id.
    fn nodes(&self, now: UnixMillis) -> Result<Vec<NodeRecord>, StoreError>;
    /// A node stopping cleanly leaves at once rather than by expiry.
    fn leave(&self, node_id: &str) -> Result<(), StoreError>;
    /// Asks `node_id` to drain; false if no such node is alive at `now`.
    /// The node sees it at its next heartbeat.
    fn ask_to_drain(&self, node_id: &str, now: UnixMillis) -> Result<bool, StoreError>;
    /// When someone last asked `node_id` to drain (a node started after
    /// that ignores it: the drain it asked for is done).
    fn drain_asked(&self, node_id: &str) -> Result<Option<UnixMillis>, StoreError>;
}

/// The registry of a single node on the embedded store: itself.
#[derive(Default)]
pub struct LocalNodes {
    me: Mutex<Option<(NodeRecord, UnixMillis)>>,
    drain_asked: Mutex<Option<UnixMillis>>,
}

impl NodeRegistry for LocalNodes {
    fn heartbeat(&self, node: &NodeRecord, now: UnixMillis, ttl_ms: u64) -> Result<(), StoreError> {
        *self.me.lock().unwrap_or_else(|e| e.into_inner()) = Some((node.clone(), now + ttl_ms));
        Ok(())
    }

    fn nodes(&self, now: UnixMillis) -> Result<Vec<NodeRecord>, StoreError> {
        let me = self.me.lock().unwrap_or_else(|e| e.into_inner());
        Ok(me
            .iter()
            .filter(|(_, expires)| *expires > now)
            .map(|(node, _)| node.clone())
            .collect())
    }

    fn leave(&self, _node_id: &str) -> Result<(), StoreError> {
        *self.me.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    fn ask_to_drain(&self, node_id: &str, now: UnixMillis) -> Result<bool, StoreError> {
        let known = self.nodes(now)?.iter().any(|n| n.node_id == node_id);
        if known {
            *self.drain_asked.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
        }
        Ok(known)
    }

    fn drain_asked(&self, _node_id: &str) -> Result<Option<UnixMillis>, StoreError> {
        Ok(*self.drain_asked.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
