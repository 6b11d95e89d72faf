//! The cluster store: every node shares one Redis. Each write that must not
//! race is one Lua script (Redis runs a script atomically), so no node reads
//! a record over the network and writes it back: the call version's
//! compare-and-set, a push token's move, the event outbox. The one decision
//! too rich for a script, whether a new 1:1 call crosses one that rings its
//! caller ([`super::crosses`]), is made in Rust under `WATCH`: the insert
//! commits only if none of the records it read changed meanwhile.
//!
//! Key layout (`P` is `{namespace}:`; the braces make the namespace the
//! Redis Cluster hash tag, so every key of a deployment is in one slot and
//! the multi-key scripts stay legal there). Composite keys join ids with a
//! newline, which an id cannot contain (`auth::valid_id` refuses control
//! characters).
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P dev:<user>\n<device>` | hash | `json` (the device without tokens), `seen`, one field per push token kind |
//! | `P devs:<user>` | zset | the user's device ids by last seen |
//! | `P tok:<kind>:<token>` | string | `<user>\n<device>` holding the token |
//! | `P call:<id>` | hash | `json`, `state`, `version` |
//! | `P hist:<user>` | zset | the user's call ids by creation time (history) |
//! | `P live` / `P live:<user>` | set | calls not yet ended, all / per user (busy checks, recovery) |
//! | `P timers` | zset | calls by their next deadline (ring / connect timeout) |
//! | `P seq:<call>` | string | the call's last event sequence number |
//! | `P ev:<row>` | hash | a queued webhook event |
//! | `P ev:rows` / `ev:age` | zset | queued rows by row number / by age (bounds) |
//! | `P ev:chain:<endpoint>\n<call>` | list | one endpoint's queued rows of one call, in order |
//! | `P ev:due` | zset | each chain's head row by its next attempt time |
//! | `P idem:<user>\n<key>` | hash | an idempotency record, with a TTL |
//! | `P idem:exp` | zset | idempotency records by expiry (expire counts them) |
//! | `P node:<id>` | string | a node's registry record (JSON), with a TTL |
//! | `P nodes` | zset | node ids by when their heartbeat expires |
//! | `P drain:<id>` | string | when an operator asked the node to drain (Unix ms) |
//! | `P rl:<limiter>:<key>` | string | a shared rate-limit bucket (GCRA arrival time, Unix ms), with a TTL |
//! | `P push:<call>\n<device>\n<kind>\n<epoch>` | string | a push claimed by a node (de-duplication), with a TTL |
//! | `P acks` | zset | rings waiting for their acknowledgement (`<call>\n<user>\n<device>`) by deadline |
//! | `P socks:<user>` | hash | device id -> the node holding its events socket |
//! | `P relay:<node>` | channel | device events for the sockets that node holds |
//! | `P flags` / `P flags:version` | hash | flag name -> its JSON / its version (compare-and-set) |
//! | `P flags:changes` | list | flag changes (JSON), newest first, trimmed |

use std::time::Duration;

use redis::Value;

mod cluster;
mod scripts;
mod source;

pub use cluster::RedisSockets;
use scripts::{INDEX_CALL, INSERT_CALL, PRELUDE, Scripts};

use super::{
    FlagChange, IdempotencyRecord, Insertion, MAX_FLAG_CHANGES, NewEvent, QueuedEvent, Store,
    StoreError, TokenMove, Versioned,
};
use crate::call::{Call, CallState, UnixMillis};
use crate::device::{Device, PushTokens};
use crate::flags::Flag;

/// How long a request waits for a pooled connection (or a new one) before
/// answering `store_unavailable`, and how long one command may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections per node: API requests run on blocking threads, each holds
/// one connection for one store call.
const POOL_SIZE: u32 = 16;
/// Due timers handed out per pass of a node's timer loop.
const MAX_DUE_PER_PASS: usize = 500;
/// Crossing checks that lost their `WATCH` retry this often before the
/// insert gives up as contended (each retry re-reads what changed).
const MAX_WATCH_RETRIES: usize = 32;

pub struct RedisStore {
    pool: r2d2::Pool<source::Pooled>,
    /// For the relay listener's own (subscribed) connection.
    source: source::Source,
    /// `{namespace}:`, the start of every key.
    prefix: String,
    scripts: Scripts,
    metrics: Option<RedisMetrics>,
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`, or
    /// `redis+sentinel://sentinel:26379,.../primary-name/db` to follow the
    /// primary Sentinel names); every key starts with `{namespace}:` so
    /// deployments (or tests) can share one Redis. Fails if Redis does not
    /// answer now: a node must not start on a store it cannot reach.
    pub fn connect(url: &str, namespace: &str) -> Result<RedisStore, StoreError> {
        RedisStore::connect_trusting(url, namespace, None)
    }

    /// [`Self::connect`], trusting `roots` (PEM certificates) instead of the
    /// system's for a `rediss://` URL: a Redis with a private CA.
    pub fn connect_trusting(
        url: &str,
        namespace: &str,
        roots: Option<&[u8]>,
    ) -> Result<RedisStore, StoreError> {
        if namespace.is_empty() || namespace.contains(['{', '}']) {
            return Err(StoreError::Backend(
                "the Redis namespace must be non-empty, without braces".into(),
            ));
        }
        let source = source::Source::parse(url, roots).map_err(StoreError::Backend)?;
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(0))
            .connection_timeout(CONNECT_TIMEOUT)
            // No PING per checkout (it doubled every request's round trips):
            // a dropped connection fails its command as `Unavailable` and
            // the pool discards it.
            .test_on_check_out(false)
            .build_unchecked(source::Pooled::new(
                source.clone(),
                CONNECT_TIMEOUT,
                COMMAND_TIMEOUT,
            ));
        let store = RedisStore {
            pool,
            source,
            prefix: format!("{{{namespace}}}:"),
            scripts: Scripts::new(),
            metrics: None,
        };
        let _: String = redis::cmd("PING")
            .query(&mut *store.conn()?)
            .map_err(|e| store.fail(e))?;
        Ok(store)
    }

    /// Counts what this store does in `registry`'s metrics.
    pub fn with_metrics(mut self, metrics: RedisMetrics) -> RedisStore {
        self.metrics = Some(metrics);
        self
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<source::Pooled>, StoreError> {
        self.pool.get().map_err(|e| {
            self.count_error("unavailable");
            StoreError::Unavailable(e.to_string())
        })
    }

    /// Runs a script invocation on a pooled connection.
    fn run<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let answer = invocation
            .invoke(&mut *self.conn()?)
            .map_err(|e| self.fail(e));
        if let Some(m) = &self.metrics {
            m.latency.observe(started.elapsed().as_secs_f64());
        }
        answer
    }

    /// A failed command, classified and counted.
    fn fail(&self, e: redis::RedisError) -> StoreError {
        let error = classify(e);
        self.count_error(match error {
            StoreError::Unavailable(_) => "unavailable",
            _ => "backend",
        });
        error
    }

    fn count_error(&self, kind: &str) {
        if let Some(m) = &self.metrics {
            m.errors.with_label_values(&[kind]).inc();
        }
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        key.push_str(parts[0]);
        for (i, part) in parts[1..].iter().enumerate() {
            if i > 0 {
                key.push('\n');
            }
            key.push_str(part);
        }
        key
    }
}

/// A Redis error as the store reports it: an unreachable (or no longer
/// primary) Redis is `Unavailable` (the API answers 503 and the client
/// retries); anything else is a backend fault.
fn classify(e: redis::RedisError) -> StoreError {
    // READONLY: the connection reached a replica (a primary demoted by a
    // failover); the pool drops that connection, and a retry finds the
    // primary Sentinel names now.
    if e.is_io_error()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.code() == Some("READONLY")
    {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

/// What the store counts (`switchboard_redis_errors_total{kind}`,
/// `switchboard_device_events_relayed_total{outcome}`).
pub struct RedisMetrics {
    errors: prometheus::IntCounterVec,
    relayed: prometheus::IntCounterVec,
    latency: prometheus::Histogram,
    relay_latency: prometheus::Histogram,
}

impl RedisMetrics {
    pub fn register(registry: &prometheus::Registry) -> Result<RedisMetrics, prometheus::Error> {
        let errors = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "switchboard_redis_errors_total",
                "Redis commands that failed: unavailable (down, timed out) or backend (a script or decode fault)",
            ),
            &["kind"],
        )?;
        let relayed = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "switchboard_device_events_relayed_total",
                "Device events for a socket on another node: delivered (a node took it), no_node (no live node holds one), failed (Redis error)",
            ),
            &["outcome"],
        )?;
        let latency = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "switchboard_redis_command_seconds",
                "Round trip of each store script run on Redis (a call write, a read, a claim), connection checkout included",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
            ]),
        )?;
        let relay_latency = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "switchboard_device_event_relay_seconds",
                "Device events received from another node: the sender's wall clock at publish to this node's at receipt (the nodes' clock offset included: keep them on NTP)",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        )?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(relayed.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(relay_latency.clone()))?;
        // At 0 from the start: an alert's rate() reads 0, not nothing.
        for kind in ["unavailable", "backend"] {
            errors.with_label_values(&[kind]);
        }
        for outcome in ["delivered", "no_node", "failed"] {
            relayed.with_label_values(&[outcome]);
        }
        Ok(RedisMetrics {
            errors,
            relayed,
            latency,
            relay_latency,
        })
    }
}

fn decode<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn encode<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("store records serialize")
}

fn state_name(state: CallState) -> &'static str {
    match state {
        CallState::Created => "created",
        CallState::Ringing => "ringing",
        CallState::Connecting => "connecting",
        CallState::Connected => "connected",
        CallState::Ended => "ended",
    }
}

/// Reading script replies: `nil` is `None`, bulk strings are text.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn rows(value: Value) -> Result<Vec<Vec<Value>>, StoreError> {
    let Value::Array(items) = value else {
        return Err(StoreError::Corrupt("expected an array reply".into()));
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::Array(fields) => Ok(fields),
            _ => Err(StoreError::Corrupt("expected an array of arrays".into())),
        })
        .collect()
}

fn number<T: std::str::FromStr>(value: &Value, what: &str) -> Result<T, StoreError> {
    text(value)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("{what} is not a number")))
}

/// The index fields of `call` (see `INDEX_CALL`).
fn index_args(call: &Call) -> Vec<String> {
    let mut args = vec![
        call.created_at.to_string(),
        if call.state == CallState::Ended {
            "1"
        } else {
            "0"
        }
        .to_string(),
        call.next_deadline()
            .map(|d| d.to_string())
            .unwrap_or_default(),
        call.participants.len().to_string(),
    ];
    args.extend(call.participants.iter().map(|p| p.user_id.clone()));
    args
}

/// The events' fields (see `queue_events` in the prelude).
fn event_args(events: &[NewEvent]) -> Vec<String> {
    let mut args = vec![events.len().to_string()];
    for e in events {
        args.extend([
            e.event_id.clone(),
            e.endpoint.clone(),
            e.call_id.clone().unwrap_or_default(),
            e.kind.clone(),
            e.occurred_at.to_string(),
            e.data.clone(),
        ]);
    }
    args
}

fn idempotency_record(
    user_id: &str,
    key: &str,
    fields: &[Value],
) -> Result<IdempotencyRecord, StoreError> {
    if fields.len() != 4 {
        return Err(StoreError::Corrupt(
            "idempotency record fields missing".into(),
        ));
    }
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(text)
            .ok_or_else(|| StoreError::Corrupt("idempotency record field missing".into()))
    };
    Ok(IdempotencyRecord {
        user_id: user_id.to_string(),
        key: key.to_string(),
        request_hash: field(0)?,
        status: number(&fields[1], "status")?,
        body: field(2)?,
        expires_at: number(&fields[3], "expires")?,
    })
}

impl RedisStore {
    /// One insert attempt of a 1:1 call under `WATCH`: `None` when a record
    /// the crossing check read changed before the insert committed.
    fn try_insert_one_to_one(
        &self,
        conn: &mut source::Conn,
        call: &Call,
        insert: &redis::Cmd,
    ) -> Result<Option<Insertion>, StoreError> {
        let live = self.key(&["live:", &call.initiator_user_id]);
        redis::cmd("WATCH")
            .arg(&live)
            .exec(conn)
            .map_err(|e| self.fail(e))?;
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&live)
            .query(conn)
            .map_err(|e| self.fail(e))?;
        if !ids.is_empty() {
            let keys: Vec<String> = ids.iter().map(|id| self.key(&["call:", id])).collect();
            // Watched before they are read: a change after the read aborts the insert.
            redis::cmd("WATCH")
                .arg(&keys)
                .exec(conn)
                .map_err(|e| self.fail(e))?;
            let mut read = redis::pipe();
            for key in &keys {
                read.cmd("HGET").arg(key).arg("json");
            }
            let jsons: Vec<Option<String>> = read.query(conn).map_err(|e| self.fail(e))?;
            for json in jsons.iter().flatten() {
                let existing: Call = decode(json)?;
                if super::crosses(call, &existing) {
                    redis::cmd("UNWATCH").exec(conn).map_err(|e| self.fail(e))?;
                    return Ok(Some(Insertion::Crossed {
                        call_id: existing.call_id,
                    }));
                }
            }
        }
        let committed: Option<(i64,)> = redis::pipe()
            .atomic()
            .add_command(insert.clone())
            .query(conn)
            .map_err(|e| self.fail(e))?;
        Ok(committed.map(|_| Insertion::Inserted))
    }
}

impl Store for RedisStore {
    fn register_device(&self, device: &Device, moves: TokenMove) -> Result<(), StoreError> {
        let mut stored = device.clone();
        stored.push = PushTokens::default();
        let token = |t: &Option<String>| t.clone().unwrap_or_default();
        let outcome: String = self.run(
            self.scripts
                .register_device
                .arg(&self.prefix)
                .arg(&device.user_id)
                .arg(&device.device_id)
                .arg(match moves {
                    TokenMove::Any => "any",
                    TokenMove::SameInstallOrUser => "same",
                })
                .arg(device.last_seen_at)
                .arg(encode(&stored))
                .arg(token(&device.push.apns_voip))
                .arg(token(&device.push.apns_alert))
                .arg(token(&device.push.fcm)),
        )?;
        match outcome.as_str() {
            "ok" => Ok(()),
            _ => Err(StoreError::PushTokenInUse),
        }
    }

    fn delete_device(&self, user_id: &str, device_id: &str) -> Result<bool, StoreError> {
        let n: i64 = self.run(
            self.scripts
                .delete_device
                .arg(&self.prefix)
                .arg(user_id)
                .arg(device_id),
        )?;
        Ok(n == 1)
    }

    fn remove_push_token(&self, token: &str) -> Result<bool, StoreError> {
        let n: i64 = self.run(self.scripts.remove_push_token.arg(&self.prefix).arg(token))?;
        Ok(n > 0)
    }

    fn devices_of(&self, user_id: &str) -> Result<Vec<Device>, StoreError> {
        let reply: Value = self.run(self.scripts.devices_of.arg(&self.prefix).arg(user_id))?;
        let mut devices = Vec::new();
        for fields in rows(reply)? {
            let json = fields
                .get(1)
                .and_then(text)
                .ok_or_else(|| StoreError::Corrupt("device without json".into()))?;
            let mut device: Device = decode(&json)?;
            device.last_seen_at = number(&fields[2], "seen")?;
            let token = |i: usize| fields.get(i).and_then(text);
            device.push = PushTokens {
                apns_voip: token(3),
                apns_alert: token(4),
                fcm: token(5),
            };
            devices.push(device);
        }
        devices.sort_by(|a, b| {
            b.last_seen_at
                .cmp(&a.last_seen_at)
                .then_with(|| a.device_id.cmp(&b.device_id))
        });
        Ok(devices)
    }

    fn touch_device(
        &self,
        user_id: &str,
        device_id: &str,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let n: i64 = self.run(
            self.scripts
                .touch_device
                .arg(&self.prefix)
                .arg(user_id)
                .arg(device_id)
                .arg(now),
        )?;
        Ok(n == 1)
    }

    fn insert_call(&self, call: &Call) -> Result<(), StoreError> {
        let mut insert = redis::cmd("EVAL");
        insert
            .arg(format!("{PRELUDE}{INDEX_CALL}{INSERT_CALL}"))
            .arg(0)
            .arg(&self.prefix)
            .arg(&call.call_id)
            .arg(state_name(call.state))
            .arg(encode(call))
            .arg(index_args(call))
            .arg(event_args(&[]));
        insert.exec(&mut *self.conn()?).map_err(|e| self.fail(e))
    }

    fn insert_call_with_events(
        &self,
        call: &Call,
        events: &[NewEvent],
    ) -> Result<Insertion, StoreError> {
        // EVAL, not EVALSHA: inside MULTI a missing script would only show at EXEC.
        let mut insert = redis::cmd("EVAL");
        insert
            .arg(format!("{PRELUDE}{INDEX_CALL}{INSERT_CALL}"))
            .arg(0)
            .arg(&self.prefix)
            .arg(&call.call_id)
            .arg(state_name(call.state))
            .arg(encode(call))
            .arg(index_args(call))
            .arg(event_args(events));
        let mut conn = self.conn()?;
        if super::one_callee(call).is_none() {
            insert.exec(&mut *conn).map_err(|e| self.fail(e))?;
            return Ok(Insertion::Inserted);
        }
        for _ in 0..MAX_WATCH_RETRIES {
            if let Some(done) = self.try_insert_one_to_one(&mut conn, call, &insert)? {
                return Ok(done);
            }
        }
        Err(StoreError::Backend(
            "the crossing check lost its WATCH too often".into(),
        ))
    }

    fn get_call(&self, call_id: &str) -> Result<Option<Versioned<Call>>, StoreError> {
        let (json, version): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.key(&["call:", call_id]))
            .arg("json")
            .arg("version")
            .query(&mut *self.conn()?)
            .map_err(|e| self.fail(e))?;
        match (json, version) {
            (Some(json), Some(version)) => Ok(Some(Versioned {
                value: decode(&json)?,
                version,
            })),
            _ => Ok(None),
        }
    }

    fn update_call_with_events(
        &self,
        call: &Call,
        expected: u64,
        events: &[NewEvent],
    ) -> Result<bool, StoreError> {
        let n: i64 = self.run(
            self.scripts
                .update_call
                .arg(&self.prefix)
                .arg(&call.call_id)
                .arg(expected)
                .arg(state_name(call.state))
                .arg(encode(call))
                .arg(index_args(call))
                .arg(event_args(events)),
        )?;
        Ok(n == 1)
    }

    fn queue_events(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        let _: i64 = self.run(
            self.scripts
                .queue_events
                .arg(&self.prefix)
                .arg(event_args(events)),
        )?;
        Ok(())
    }

    fn due_events(&self, now: UnixMillis, limit: usize) -> Result<Vec<QueuedEvent>, StoreError> {
        let reply: Value = self.run(
            self.scripts
                .due_events
                .arg(&self.prefix)
                .arg(now)
                .arg(limit),
        )?;
        let mut due = Vec::new();
        for f in rows(reply)? {
            if f.len() != 9 {
                return Err(StoreError::Corrupt("queued event fields missing".into()));
            }
            let field = |i: usize| text(&f[i]).unwrap_or_default();
            let call_id = field(3);
            due.push(QueuedEvent {
                row: number(&f[0], "row")?,
                event: NewEvent {
                    event_id: field(1),
                    endpoint: field(2),
                    call_id: (!call_id.is_empty()).then_some(call_id),
                    kind: field(5),
                    occurred_at: number(&f[6], "occurredAt")?,
                    data: field(7),
                },
                sequence: number(&f[4], "sequence")?,
                attempts: number(&f[8], "attempts")?,
            });
        }
        due.sort_by_key(|q| q.row);
        Ok(due)
    }

    fn event_delivered(&self, row: i64) -> Result<(), StoreError> {
        let _: i64 = self.run(self.scripts.event_delivered.arg(&self.prefix).arg(row))?;
        Ok(())
    }

    fn event_retry(
        &self,
        row: i64,
        attempts: u32,
        next_attempt_at: UnixMillis,
    ) -> Result<(), StoreError> {
        let _: i64 = self.run(
            self.scripts
                .event_retry
                .arg(&self.prefix)
                .arg(row)
                .arg(attempts)
                .arg(next_attempt_at),
        )?;
        Ok(())
    }

    fn trim_events(
        &self,
        older_than: UnixMillis,
        max_queued: usize,
    ) -> Result<(usize, usize), StoreError> {
        self.run(
            self.scripts
                .trim_events
                .arg(&self.prefix)
                .arg(older_than)
                .arg(max_queued),
        )
    }

    fn queued_events(&self) -> Result<usize, StoreError> {
        redis::cmd("ZCARD")
            .arg(self.key(&["ev:rows"]))
            .query(&mut *self.conn()?)
            .map_err(|e| self.fail(e))
    }

    fn calls_of(&self, user_id: &str, limit: usize) -> Result<Vec<Call>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let jsons: Vec<String> = self.run(
            self.scripts
                .calls_of
                .arg(&self.prefix)
                .arg(user_id)
                .arg(limit),
        )?;
        let mut calls = jsons
            .iter()
            .map(|json| decode::<Call>(json))
            .collect::<Result<Vec<_>, _>>()?;
        // The order SQLite answers in: newest first, then by id.
        calls.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| a.call_id.cmp(&b.call_id))
        });
        Ok(calls)
    }

    fn live_calls(&self) -> Result<Vec<Versioned<Call>>, StoreError> {
        let pairs: Vec<(String, u64)> = self.run(&self.scripts.live_calls.arg(&self.prefix))?;
        pairs
            .into_iter()
            .map(|(json, version)| {
                Ok(Versioned {
                    value: decode(&json)?,
                    version,
                })
            })
            .collect()
    }

    fn live_calls_of(&self, user_id: &str) -> Result<Vec<Call>, StoreError> {
        let jsons: Vec<String> =
            self.run(self.scripts.live_calls_of.arg(&self.prefix).arg(user_id))?;
        jsons.iter().map(|json| decode(json)).collect()
    }

    fn due_calls(&self, now: UnixMillis) -> Result<Vec<String>, StoreError> {
        // A bounded batch per pass: the timer loop runs again in 250 ms.
        self.run(
            self.scripts
                .due_calls
                .arg(&self.prefix)
                .arg(now)
                .arg(MAX_DUE_PER_PASS),
        )
    }

    fn put_idempotency(
        &self,
        record: &IdempotencyRecord,
        now: UnixMillis,
    ) -> Result<IdempotencyRecord, StoreError> {
        let fields: Vec<Value> = self.run(
            self.scripts
                .put_idempotency
                .arg(&self.prefix)
                .arg(&record.user_id)
                .arg(&record.key)
                .arg(&record.request_hash)
                .arg(record.status)
                .arg(&record.body)
                .arg(record.expires_at)
                .arg(now),
        )?;
        idempotency_record(&record.user_id, &record.key, &fields)
    }

    fn get_idempotency(
        &self,
        user_id: &str,
        key: &str,
        now: UnixMillis,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let fields: Vec<Value> = redis::cmd("HMGET")
            .arg(self.key(&["idem:", user_id, key]))
            .arg(&["hash", "status", "body", "expires"][..])
            .query(&mut *self.conn()?)
            .map_err(|e| self.fail(e))?;
        if fields.first().and_then(text).is_none() {
            return Ok(None);
        }
        let record = idempotency_record(user_id, key, &fields)?;
        Ok((record.expires_at > now).then_some(record))
    }

    fn finish_idempotency(&self, record: &IdempotencyRecord) -> Result<bool, StoreError> {
        let n: i64 = self.run(
            self.scripts
                .finish_idempotency
                .arg(&self.prefix)
                .arg(&record.user_id)
                .arg(&record.key)
                .arg(&record.body)
                .arg(record.status)
                .arg(record.expires_at),
        )?;
        Ok(n == 1)
    }

    fn release_idempotency(
        &self,
        user_id: &str,
        key: &str,
        body: &str,
    ) -> Result<bool, StoreError> {
        let n: i64 = self.run(
            self.scripts
                .release_idempotency
                .arg(&self.prefix)
                .arg(user_id)
                .arg(key)
                .arg(body),
        )?;
        Ok(n == 1)
    }

    fn expire_idempotency(&self, now: UnixMillis) -> Result<usize, StoreError> {
        self.run(self.scripts.expire_idempotency.arg(&self.prefix).arg(now))
    }

    fn flags(&self) -> Result<Vec<Versioned<Flag>>, StoreError> {
        let mut conn = self.conn()?;
        let (flags, versions): (
            std::collections::BTreeMap<String, String>,
            std::collections::HashMap<String, u64>,
        ) = redis::pipe()
            .atomic()
            .cmd("HGETALL")
            .arg(self.key(&["flags"]))
            .cmd("HGETALL")
            .arg(self.key(&["flags:version"]))
            .query(&mut *conn)
            .map_err(|e| self.fail(e))?;
        flags
            .into_iter()
            .map(|(name, json)| {
                Ok(Versioned {
                    value: decode(&json)?,
                    version: versions.get(&name).copied().unwrap_or(0),
                })
            })
            .collect()
    }

    fn put_flag(&self, change: &FlagChange, expected: u64) -> Result<bool, StoreError> {
        let n: i64 = self.run(
            self.scripts
                .put_flag
                .arg(&self.prefix)
                .arg(&change.name)
                .arg(expected)
                .arg(encode(&change.new))
                .arg(encode(change))
                .arg(MAX_FLAG_CHANGES),
        )?;
        Ok(n == 1)
    }

    fn flag_changes(&self, limit: usize) -> Result<Vec<FlagChange>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let changes: Vec<String> = redis::cmd("LRANGE")
            .arg(self.key(&["flags:changes"]))
            .arg(0)
            .arg(limit - 1)
            .query(&mut *self.conn()?)
            .map_err(|e| self.fail(e))?;
        changes.iter().map(|json| decode(json)).collect()
    }
}
