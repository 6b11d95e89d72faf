//! What only a cluster needs, on the same Redis: the node registry, the
//! directory of device sockets with the relay between nodes, shared
//! rate-limit buckets, push claims and ring acknowledgement deadlines.

use std::time::Duration;

use super::{CONNECT_TIMEOUT, MAX_DUE_PER_PASS, RedisStore, decode, encode};
use crate::call::UnixMillis;
use crate::store::StoreError;

impl crate::nodes::NodeRegistry for RedisStore {
    fn heartbeat(
        &self,
        node: &crate::nodes::NodeRecord,
        now: UnixMillis,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let _: i64 = self.run(
            self.scripts
                .node_heartbeat
                .arg(&self.prefix)
                .arg(&node.node_id)
                .arg(encode(node))
                .arg(now + ttl_ms)
                .arg(ttl_ms),
        )?;
        Ok(())
    }

    fn nodes(&self, now: UnixMillis) -> Result<Vec<crate::nodes::NodeRecord>, StoreError> {
        let records: Vec<String> = self.run(self.scripts.live_nodes.arg(&self.prefix).arg(now))?;
        records.iter().map(|r| decode(r)).collect()
    }

    fn ask_to_drain(&self, node_id: &str, now: UnixMillis) -> Result<bool, StoreError> {
        if !self.nodes(now)?.iter().any(|n| n.node_id == node_id) {
            return Ok(false);
        }
        // Kept a day: a node drains within its drain timeout and leaves.
        redis::cmd("SET")
            .arg(self.key(&["drain:", node_id]))
            .arg(now)
            .arg("EX")
            .arg(24 * 3600)
            .exec(&mut *self.conn()?)
            .map_err(|e| self.fail(e))?;
        Ok(true)
    }

    fn drain_asked(&self, node_id: &str) -> Result<Option<UnixMillis>, StoreError> {
        redis::cmd("GET")
            .arg(self.key(&["drain:", node_id]))
            .query(&mut *self.conn()?)
            .map_err(|e| self.fail(e))
    }

    fn leave(&self, node_id: &str) -> Result<(), StoreError> {
        redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(self.key(&["node:", node_id]))
            .cmd("ZREM")
            .arg(self.key(&["nodes"]))
            .arg(node_id)
            .cmd("DEL")
            .arg(self.key(&["drain:", node_id]))
            .exec(&mut *self.conn()?)
            .map_err(|e| self.fail(e))
    }
}

/// This node's part of the cluster's socket directory
/// ([`crate::ringing::SocketDirectory`]): sockets recorded under
/// `socks:<user>`, events published to `relay:<node>`. Failures are logged
/// and count as not delivered (the ring then falls back to push).
pub struct RedisSockets {
    pub store: std::sync::Arc<RedisStore>,
    pub node_id: String,
}

impl RedisSockets {
    /// Runs `script` (socket opened / closed) for this node's socket of the device.
    fn record(
        &self,
        script: &redis::Script,
        user_id: &str,
        device_id: &str,
    ) -> Result<i64, StoreError> {
        let mut conn = self.store.conn()?;
        script
            .arg(&self.store.prefix)
            .arg(user_id)
            .arg(device_id)
            .arg(&self.node_id)
            .invoke(&mut *conn)
            .map_err(|e| self.store.fail(e))
    }
}

impl crate::ringing::SocketDirectory for RedisSockets {
    fn socket_opened(&self, user_id: &str, device_id: &str) {
        if let Err(e) = self.record(&self.store.scripts.socket_opened, user_id, device_id) {
            tracing::warn!(%user_id, %device_id, error = %e, "socket not recorded: rings from other nodes will push");
        }
    }

    fn socket_closed(&self, user_id: &str, device_id: &str) {
        if let Err(e) = self.record(&self.store.scripts.socket_closed, user_id, device_id) {
            tracing::warn!(%user_id, %device_id, error = %e, "socket close not recorded");
        }
    }

    fn relay(
        &self,
        user_id: &str,
        device_id: Option<&str>,
        event: &crate::ringing::DeviceEvent,
    ) -> bool {
        let message = encode(&crate::ringing::RelayedEvent {
            user_id: user_id.to_string(),
            device_id: device_id.map(str::to_string),
            event: event.clone(),
            sent_at_ms: Some(crate::unix_millis()),
        });
        let took: Result<i64, _> = self.store.conn().and_then(|mut conn| {
            self.store
                .scripts
                .relay
                .arg(&self.store.prefix)
                .arg(user_id)
                .arg(device_id.unwrap_or_default())
                .arg(&self.node_id)
                .arg(message)
                .invoke(&mut *conn)
                .map_err(|e| self.store.fail(e))
        });
        let outcome = match &took {
            Ok(n) if *n > 0 => "delivered",
            Ok(_) => "no_node",
            Err(_) => "failed",
        };
        if let Some(m) = &self.store.metrics {
            m.relayed.with_label_values(&[outcome]).inc();
        }
        match took {
            Ok(n) => n > 0,
            Err(e) => {
                tracing::warn!(%user_id, error = %e, "device event not relayed");
                false
            }
        }
    }
}

impl RedisStore {
    /// Delivers the device events other nodes relay to `node_id` into
    /// `hub`, on a thread of its own (a subscribed connection blocks), until
    /// `stop` is set. Reconnects after a Redis outage; what was published
    /// meanwhile is lost (pub/sub is at most once; see `SocketDirectory`).
    pub fn spawn_relay_listener(
        &self,
        node_id: &str,
        hub: std::sync::Arc<crate::ringing::DeviceHub>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        let source = self.source.clone();
        let relay_latency = self.metrics.as_ref().map(|m| m.relay_latency.clone());
        let channel = format!("{}relay:{node_id}", self.prefix);
        let node_id = node_id.to_string();
        std::thread::Builder::new()
            .name("redis-relay".into())
            .spawn(move || {
                use std::sync::atomic::Ordering;
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = listen(&source, &channel, &hub, &stop, &relay_latency) {
                        tracing::warn!(%node_id, error = %e, "relay listener: reconnecting in 1 s");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            })
            .expect("a thread starts")
    }
}

/// One subscribed connection's life: until an error or `stop`.
fn listen(
    source: &super::source::Source,
    channel: &str,
    hub: &crate::ringing::DeviceHub,
    stop: &std::sync::atomic::AtomicBool,
    relay_latency: &Option<prometheus::Histogram>,
) -> redis::RedisResult<()> {
    let mut conn = source.connect(CONNECT_TIMEOUT, CONNECT_TIMEOUT)?;
    let mut pubsub = conn.as_pubsub();
    pubsub.subscribe(channel)?;
    // Wakes up each second to see `stop`.
    pubsub.set_read_timeout(Some(Duration::from_secs(1)))?;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let message = match pubsub.get_message() {
            Ok(message) => message,
            Err(e) if e.is_timeout() => continue,
            Err(e) => return Err(e),
        };
        let payload: String = message.get_payload()?;
        match serde_json::from_str::<crate::ringing::RelayedEvent>(&payload) {
            Ok(relayed) => {
                if let (Some(histogram), Some(sent)) = (relay_latency, relayed.sent_at_ms) {
                    // A receiver whose clock runs behind the sender's sees 0.
                    histogram.observe(crate::unix_millis().saturating_sub(sent) as f64 / 1000.0);
                }
                hub.deliver_relayed(relayed)
            }
            Err(e) => tracing::warn!(error = %e, "relayed device event does not decode"),
        }
    }
    Ok(())
}

impl crate::rate_limit::SharedBuckets for RedisStore {
    fn take(
        &self,
        name: &str,
        keys: &[&str],
        rate: crate::rate_limit::Rate,
        now_ms: u64,
    ) -> Result<Result<(), Duration>, StoreError> {
        let interval = rate.per.as_millis() as u64 / u64::from(rate.count.max(1));
        let tolerance = (rate.per.as_millis() as u64).saturating_sub(interval);
        let wait_ms: u64 = self.run(
            self.scripts
                .rate_take
                .arg(&self.prefix)
                .arg(name)
                .arg(now_ms)
                .arg(interval)
                .arg(tolerance)
                .arg(keys),
        )?;
        Ok(match wait_ms {
            0 => Ok(()),
            ms => Err(Duration::from_millis(ms)),
        })
    }

    fn give_back(
        &self,
        name: &str,
        key: &str,
        rate: crate::rate_limit::Rate,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let interval = rate.per.as_millis() as u64 / u64::from(rate.count.max(1));
        let _: i64 = self.run(
            self.scripts
                .rate_give_back
                .arg(&self.prefix)
                .arg(name)
                .arg(now_ms)
                .arg(interval)
                .arg(key),
        )?;
        Ok(())
    }
}

impl crate::push::dispatch::PushClaims for RedisStore {
    fn claim(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let set: Option<String> = redis::cmd("SET")
            .arg(self.key(&["push:", key]))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query(&mut *self.conn()?)
            .map_err(|e| self.fail(e))?;
        Ok(set.is_some())
    }
}

impl crate::ringing::AckDeadlines for RedisStore {
    fn add(&self, ring: crate::ringing::PendingRing, deadline_ms: u64) {
        let member = format!("{}\n{}\n{}", ring.call_id, ring.user_id, ring.device_id);
        let added: Result<i64, _> = self.conn().and_then(|mut conn| {
            redis::cmd("ZADD")
                .arg(self.key(&["acks"]))
                .arg(deadline_ms)
                .arg(member)
                .query(&mut *conn)
                .map_err(|e| self.fail(e))
        });
        if let Err(e) = added {
            tracing::warn!(call_id = %ring.call_id, user_id = %ring.user_id, device_id = %ring.device_id, error = %e, "ack deadline not stored: no push fallback for this ring");
        }
    }

    fn take_due(&self, now_ms: u64) -> Vec<crate::ringing::PendingRing> {
        let due: Result<Vec<String>, _> = self.conn().and_then(|mut conn| {
            self.scripts
                .take_due_acks
                .arg(&self.prefix)
                .arg(now_ms)
                .arg(MAX_DUE_PER_PASS)
                .invoke(&mut *conn)
                .map_err(|e| self.fail(e))
        });
        match due {
            Ok(due) => due
                .iter()
                .filter_map(|member| {
                    let mut parts = member.splitn(3, '\n');
                    Some(crate::ringing::PendingRing {
                        call_id: parts.next()?.to_string(),
                        user_id: parts.next()?.to_string(),
                        device_id: parts.next()?.to_string(),
                    })
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "ack deadlines unavailable");
                Vec::new()
            }
        }
    }
}
