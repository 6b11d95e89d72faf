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
//! | `P rl:<limiter>:<key>` | string | a shared rate-limit bucket (GCRA arrival time, Unix ms), with a TTL |
//! | `P push:<call>\n<device>\n<kind>\n<epoch>` | string | a push claimed by a node (de-duplication), with a TTL |
//! | `P acks` | zset | rings waiting for their acknowledgement (`<call>\n<user>\n<device>`) by deadline |
//! | `P socks:<user>` | hash | device id -> the node holding its events socket |
//! | `P relay:<node>` | channel | device events for the sockets that node holds |

use std::time::Duration;

use redis::{Script, Value};

use super::{
    IdempotencyRecord, Insertion, NewEvent, QueuedEvent, Store, StoreError, TokenMove, Versioned,
};
use crate::call::{Call, CallState, UnixMillis};
use crate::device::{Device, PushTokens};

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
    pool: r2d2::Pool<redis::Client>,
    /// For the relay listener's own (subscribed) connection.
    client: redis::Client,
    /// `{namespace}:`, the start of every key.
    prefix: String,
    scripts: Scripts,
}

/// Sets each new connection's command timeouts: a Redis that stops answering
/// must fail a request, not hang it.
#[derive(Debug)]
struct Timeouts;

impl r2d2::CustomizeConnection<redis::Connection, redis::RedisError> for Timeouts {
    fn on_acquire(&self, conn: &mut redis::Connection) -> Result<(), redis::RedisError> {
        conn.set_read_timeout(Some(COMMAND_TIMEOUT))?;
        conn.set_write_timeout(Some(COMMAND_TIMEOUT))
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`); every key starts with
    /// `{namespace}:` so deployments (or tests) can share one Redis. Fails if
    /// Redis does not answer now: a node must not start on a store it cannot
    /// reach.
    pub fn connect(url: &str, namespace: &str) -> Result<RedisStore, StoreError> {
        if namespace.is_empty() || namespace.contains(['{', '}']) {
            return Err(StoreError::Backend(
                "the Redis namespace must be non-empty, without braces".into(),
            ));
        }
        use redis::IntoConnectionInfo;
        let info = url
            .into_connection_info()
            .map_err(|e| StoreError::Backend(e.to_string()))?
            // Without TCP_NODELAY a request written in two segments can wait
            // for the delayed ACK: a call setup (create, accept, end) took
            // 2.8 ms with Nagle's algorithm on, 1.9 ms with it off.
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(|e| StoreError::Backend(e.to_string()))?;
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(0))
            .connection_timeout(CONNECT_TIMEOUT)
            // No PING per checkout (it doubled every request's round trips):
            // a dropped connection fails its command as `Unavailable` and
            // the pool discards it.
            .test_on_check_out(false)
            .connection_customizer(Box::new(Timeouts))
            .build_unchecked(client.clone());
        let store = RedisStore {
            pool,
            client,
            prefix: format!("{{{namespace}}}:"),
            scripts: Scripts::new(),
        };
        let _: String = redis::cmd("PING")
            .query(&mut *store.conn()?)
            .map_err(fail)?;
        Ok(store)
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<redis::Client>, StoreError> {
        self.pool
            .get()
            .map_err(|e| StoreError::Unavailable(e.to_string()))
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

/// A Redis error as the store reports it: an unreachable Redis is
/// `Unavailable` (the API answers 503 and the client retries); anything
/// else is a backend fault.
fn fail(e: redis::RedisError) -> StoreError {
    if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
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

/// The scripts, compiled once (redis-rs sends `EVALSHA` and loads a script
/// the server does not know yet).
struct Scripts {
    register_device: Script,
    remove_push_token: Script,
    delete_device: Script,
    devices_of: Script,
    touch_device: Script,
    update_call: Script,
    queue_events: Script,
    due_events: Script,
    event_delivered: Script,
    event_retry: Script,
    trim_events: Script,
    calls_of: Script,
    live_calls: Script,
    live_calls_of: Script,
    due_calls: Script,
    put_idempotency: Script,
    finish_idempotency: Script,
    release_idempotency: Script,
    expire_idempotency: Script,
    node_heartbeat: Script,
    live_nodes: Script,
    socket_opened: Script,
    take_due_acks: Script,
    rate_take: Script,
    rate_give_back: Script,
    socket_closed: Script,
    relay: Script,
}

/// Helpers every script starts with. `P` is the key prefix (ARGV[1]).
const PRELUDE: &str = r#"
local P = ARGV[1]
local KINDS = {'apnsVoip', 'apnsAlert', 'fcm'}
local function holder_parts(h)
  local i = string.find(h, '\n', 1, true)
  return string.sub(h, 1, i - 1), string.sub(h, i + 1)
end
-- Queues events from ARGV[at]: a count, then six fields each. One sequence
-- number per event id (shared by its endpoints' rows), 0 without a call.
local function queue_events(at)
  local n = tonumber(ARGV[at])
  local numbered = {}
  for i = 0, n - 1 do
    local b = at + 1 + i * 6
    local eid, ep, cid, kind, when, data = ARGV[b], ARGV[b+1], ARGV[b+2], ARGV[b+3], ARGV[b+4], ARGV[b+5]
    local seq = numbered[eid]
    if not seq then
      if cid == '' then seq = 0 else seq = redis.call('INCR', P .. 'seq:' .. cid) end
      numbered[eid] = seq
    end
    local row = redis.call('INCR', P .. 'ev:next')
    local chain
    if cid == '' then chain = P .. 'ev:chain:' .. row else chain = P .. 'ev:chain:' .. ep .. '\n' .. cid end
    redis.call('HSET', P .. 'ev:' .. row, 'eventId', eid, 'endpoint', ep, 'callId', cid,
      'sequence', seq, 'kind', kind, 'occurredAt', when, 'data', data, 'attempts', 0,
      'next', when, 'chain', chain)
    redis.call('ZADD', P .. 'ev:rows', row, row)
    redis.call('ZADD', P .. 'ev:age', when, row)
    redis.call('RPUSH', chain, row)
    if redis.call('LLEN', chain) == 1 then redis.call('ZADD', P .. 'ev:due', when, row) end
  end
end
-- Forgets a queued row; the next row of its chain becomes due.
local function drop_event(row)
  local key = P .. 'ev:' .. row
  local chain = redis.call('HGET', key, 'chain')
  if not chain then return 0 end
  redis.call('DEL', key)
  redis.call('ZREM', P .. 'ev:rows', row)
  redis.call('ZREM', P .. 'ev:age', row)
  redis.call('ZREM', P .. 'ev:due', row)
  redis.call('LREM', chain, 1, row)
  local head = redis.call('LINDEX', chain, 0)
  if head then
    redis.call('ZADD', P .. 'ev:due', redis.call('HGET', P .. 'ev:' .. head, 'next'), head)
  end
  return 1
end
"#;

/// ARGV: P, user, device, mode (any|same), seen, json, then one token per kind ('' for none).
const REGISTER_DEVICE: &str = r#"
local user, dev, mode, seen, json = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local me = user .. '\n' .. dev
-- Refusals first: a refused registration changes nothing.
if mode == 'same' then
  for i, kind in ipairs(KINDS) do
    local token = ARGV[6 + i]
    if token ~= '' then
      local holder = redis.call('GET', P .. 'tok:' .. kind .. ':' .. token)
      if holder and holder ~= me then
        local hu, hd = holder_parts(holder)
        if hu ~= user and hd ~= dev then return 'in_use' end
      end
    end
  end
end
local key = P .. 'dev:' .. me
for i, kind in ipairs(KINDS) do
  local token = ARGV[6 + i]
  local old = redis.call('HGET', key, kind)
  if old and old ~= token then
    local old_key = P .. 'tok:' .. kind .. ':' .. old
    if redis.call('GET', old_key) == me then redis.call('DEL', old_key) end
  end
  if token ~= '' then
    local token_key = P .. 'tok:' .. kind .. ':' .. token
    local holder = redis.call('GET', token_key)
    if holder and holder ~= me then redis.call('HDEL', P .. 'dev:' .. holder, kind) end
    redis.call('SET', token_key, me)
    redis.call('HSET', key, kind, token)
  else
    redis.call('HDEL', key, kind)
  end
end
redis.call('HSET', key, 'json', json, 'seen', seen)
redis.call('ZADD', P .. 'devs:' .. user, seen, dev)
return 'ok'
"#;

/// ARGV: P, token.
const REMOVE_PUSH_TOKEN: &str = r#"
local removed = 0
for _, kind in ipairs(KINDS) do
  local token_key = P .. 'tok:' .. kind .. ':' .. ARGV[2]
  local holder = redis.call('GET', token_key)
  if holder then
    removed = removed + redis.call('HDEL', P .. 'dev:' .. holder, kind)
    redis.call('DEL', token_key)
  end
end
return removed
"#;

/// ARGV: P, user, device.
const DELETE_DEVICE: &str = r#"
local me = ARGV[2] .. '\n' .. ARGV[3]
local key = P .. 'dev:' .. me
if redis.call('EXISTS', key) == 0 then return 0 end
for _, kind in ipairs(KINDS) do
  local token = redis.call('HGET', key, kind)
  if token then
    local token_key = P .. 'tok:' .. kind .. ':' .. token
    if redis.call('GET', token_key) == me then redis.call('DEL', token_key) end
  end
end
redis.call('DEL', key)
redis.call('ZREM', P .. 'devs:' .. ARGV[2], ARGV[3])
return 1
"#;

/// ARGV: P, user. Each device: id, json, seen, then its tokens by kind.
const DEVICES_OF: &str = r#"
local out = {}
for _, dev in ipairs(redis.call('ZRANGE', P .. 'devs:' .. ARGV[2], 0, -1)) do
  local f = redis.call('HMGET', P .. 'dev:' .. ARGV[2] .. '\n' .. dev, 'json', 'seen', 'apnsVoip', 'apnsAlert', 'fcm')
  if f[1] then table.insert(out, {dev, f[1], f[2], f[3], f[4], f[5]}) end
end
return out
"#;

/// ARGV: P, user, device, now.
const TOUCH_DEVICE: &str = r#"
local key = P .. 'dev:' .. ARGV[2] .. '\n' .. ARGV[3]
if redis.call('EXISTS', key) == 0 then return 0 end
redis.call('HSET', key, 'seen', ARGV[4])
redis.call('ZADD', P .. 'devs:' .. ARGV[2], ARGV[4], ARGV[3])
return 1
"#;

/// Writes the call's indexes. ARGV from `at`: created_at, ended (0|1), next
/// deadline ('' for none), a count, then the participants' user ids.
const INDEX_CALL: &str = r#"
local function index_call(cid, at)
  local created, ended, deadline, n = ARGV[at], ARGV[at + 1], ARGV[at + 2], tonumber(ARGV[at + 3])
  if ended == '1' then redis.call('SREM', P .. 'live', cid) else redis.call('SADD', P .. 'live', cid) end
  if deadline == '' then redis.call('ZREM', P .. 'timers', cid)
  else redis.call('ZADD', P .. 'timers', deadline, cid) end
  at = at + 1
  for i = 1, n do
    local user = ARGV[at + 2 + i]
    redis.call('ZADD', P .. 'hist:' .. user, 'NX', created, cid)
    if ended == '1' then redis.call('SREM', P .. 'live:' .. user, cid)
    else redis.call('SADD', P .. 'live:' .. user, cid) end
  end
  return at + 3 + n
end
"#;

/// ARGV: P, call id, state, json, then the index fields, then the events.
const INSERT_CALL: &str = r#"
local key = P .. 'call:' .. ARGV[2]
if redis.call('EXISTS', key) == 1 then return redis.error_reply('call ' .. ARGV[2] .. ' exists') end
redis.call('HSET', key, 'state', ARGV[3], 'json', ARGV[4], 'version', 1)
queue_events(index_call(ARGV[2], 5))
return 1
"#;

/// ARGV: P, call id, expected version, state, json, the index fields, the events.
const UPDATE_CALL: &str = r#"
local key = P .. 'call:' .. ARGV[2]
local version = redis.call('HGET', key, 'version')
if not version or version ~= ARGV[3] then return 0 end
redis.call('HSET', key, 'state', ARGV[4], 'json', ARGV[5], 'version', tonumber(version) + 1)
queue_events(index_call(ARGV[2], 6))
return 1
"#;

/// ARGV: P, events.
const QUEUE_EVENTS: &str = "queue_events(2) return 1";

/// ARGV: P, now, limit. Each row: its number, then its fields.
const DUE_EVENTS: &str = r#"
local out = {}
for _, row in ipairs(redis.call('ZRANGEBYSCORE', P .. 'ev:due', '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])) do
  local f = redis.call('HMGET', P .. 'ev:' .. row, 'eventId', 'endpoint', 'callId', 'sequence', 'kind', 'occurredAt', 'data', 'attempts')
  if f[1] then table.insert(out, {row, f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]}) end
end
return out
"#;

/// ARGV: P, row.
const EVENT_DELIVERED: &str = "return drop_event(ARGV[2])";

/// ARGV: P, row, attempts, next attempt.
const EVENT_RETRY: &str = r#"
local key = P .. 'ev:' .. ARGV[2]
if redis.call('EXISTS', key) == 0 then return 0 end
redis.call('HSET', key, 'attempts', ARGV[3], 'next', ARGV[4])
if redis.call('ZSCORE', P .. 'ev:due', ARGV[2]) then redis.call('ZADD', P .. 'ev:due', ARGV[4], ARGV[2]) end
return 1
"#;

/// ARGV: P, older than, max queued. Returns {aged, over the bound}.
const TRIM_EVENTS: &str = r#"
local aged = 0
for _, row in ipairs(redis.call('ZRANGEBYSCORE', P .. 'ev:age', '-inf', '(' .. ARGV[2])) do
  aged = aged + drop_event(row)
end
local over = 0
local excess = redis.call('ZCARD', P .. 'ev:rows') - tonumber(ARGV[3])
if excess > 0 then
  for _, row in ipairs(redis.call('ZRANGE', P .. 'ev:rows', 0, excess - 1)) do
    over = over + drop_event(row)
  end
end
return {aged, over}
"#;

/// ARGV: P, user, limit. Each: json.
const CALLS_OF: &str = r#"
local out = {}
for _, cid in ipairs(redis.call('ZREVRANGE', P .. 'hist:' .. ARGV[2], 0, tonumber(ARGV[3]) - 1)) do
  local json = redis.call('HGET', P .. 'call:' .. cid, 'json')
  if json then table.insert(out, json) end
end
return out
"#;

/// ARGV: P, now, limit.
const DUE_CALLS: &str =
    "return redis.call('ZRANGEBYSCORE', P .. 'timers', '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])";

/// ARGV: P, user. Each: json.
const LIVE_CALLS_OF: &str = r#"
local out = {}
for _, cid in ipairs(redis.call('SMEMBERS', P .. 'live:' .. ARGV[2])) do
  local json = redis.call('HGET', P .. 'call:' .. cid, 'json')
  if json then table.insert(out, json) end
end
return out
"#;

/// ARGV: P. Each: {json, version}.
const LIVE_CALLS: &str = r#"
local out = {}
for _, cid in ipairs(redis.call('SMEMBERS', P .. 'live')) do
  local f = redis.call('HMGET', P .. 'call:' .. cid, 'json', 'version')
  if f[1] then table.insert(out, f) end
end
return out
"#;

/// ARGV: P, user, key, hash, status, body, expires, now. Returns the stored
/// record's {hash, status, body, expires}. Expiry is decided by `expires`
/// against the caller's clock; the TTL (the record's own lifetime plus a
/// minute) only collects the garbage, so it never decides early and a
/// clock in tests that is not the wall clock still works. `idem:exp` lets
/// `expire` count what it drops.
const PUT_IDEMPOTENCY: &str = r#"
local GRACE_MS = 60000
local id = ARGV[2] .. '\n' .. ARGV[3]
local key = P .. 'idem:' .. id
local now = tonumber(ARGV[8])
local f = redis.call('HMGET', key, 'hash', 'status', 'body', 'expires')
if f[4] and tonumber(f[4]) > now then return f end
local expires = tonumber(ARGV[7])
redis.call('HSET', key, 'hash', ARGV[4], 'status', ARGV[5], 'body', ARGV[6], 'expires', ARGV[7])
redis.call('ZADD', P .. 'idem:exp', expires, id)
redis.call('PEXPIRE', key, math.max(expires - now, 0) + GRACE_MS)
return {ARGV[4], ARGV[5], ARGV[6], ARGV[7]}
"#;

/// ARGV: P, user, key, body, status, expires. The TTL moves by as much as
/// the expiry does.
const FINISH_IDEMPOTENCY: &str = r#"
local id = ARGV[2] .. '\n' .. ARGV[3]
local key = P .. 'idem:' .. id
if redis.call('HGET', key, 'body') ~= ARGV[4] then return 0 end
local old = tonumber(redis.call('HGET', key, 'expires'))
local ttl = redis.call('PTTL', key)
redis.call('HSET', key, 'status', ARGV[5], 'expires', ARGV[6])
redis.call('ZADD', P .. 'idem:exp', ARGV[6], id)
if ttl > 0 then redis.call('PEXPIRE', key, math.max(ttl + tonumber(ARGV[6]) - old, 1)) end
return 1
"#;

/// ARGV: P, user, key, body.
const RELEASE_IDEMPOTENCY: &str = r#"
local id = ARGV[2] .. '\n' .. ARGV[3]
local key = P .. 'idem:' .. id
if redis.call('HGET', key, 'body') ~= ARGV[4] then return 0 end
redis.call('DEL', key)
redis.call('ZREM', P .. 'idem:exp', id)
return 1
"#;

/// ARGV: P, node id, record, expires at, ttl.
const NODE_HEARTBEAT: &str = r#"
redis.call('SET', P .. 'node:' .. ARGV[2], ARGV[3], 'PX', ARGV[5])
redis.call('ZADD', P .. 'nodes', ARGV[4], ARGV[2])
return 1
"#;

/// ARGV: P, now. The records of nodes alive at `now`; the expired leave.
const LIVE_NODES: &str = r#"
redis.call('ZREMRANGEBYSCORE', P .. 'nodes', '-inf', ARGV[2])
local out = {}
for _, id in ipairs(redis.call('ZRANGE', P .. 'nodes', 0, -1)) do
  local record = redis.call('GET', P .. 'node:' .. id)
  if record then table.insert(out, record) end
end
return out
"#;

/// GCRA over several keys, all or none. ARGV: P, limiter, now, interval
/// (ms per token), tolerance (ms: the burst beyond one), then the keys.
/// Returns 0 when taken, else the ms to wait.
const RATE_TAKE: &str = r#"
local now, interval, tolerance = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local wait = 0
local arrivals = {}
for i = 6, #ARGV do
  local key = P .. 'rl:' .. ARGV[2] .. ':' .. ARGV[i]
  local tat = math.max(tonumber(redis.call('GET', key) or now), now)
  arrivals[key] = tat
  wait = math.max(wait, tat - now - tolerance)
end
if wait > 0 then return math.max(math.ceil(wait), 1) end
for key, tat in pairs(arrivals) do
  redis.call('SET', key, tat + interval, 'PX', math.ceil(tat + interval - now) + 1000)
end
return 0
"#;

/// ARGV: P, limiter, now, interval, key.
const RATE_GIVE_BACK: &str = r#"
local key = P .. 'rl:' .. ARGV[2] .. ':' .. ARGV[5]
local tat = tonumber(redis.call('GET', key) or '0')
local now, interval = tonumber(ARGV[3]), tonumber(ARGV[4])
if tat - interval > now then
  redis.call('SET', key, tat - interval, 'PX', math.ceil(tat - interval - now) + 1000)
else
  redis.call('DEL', key)
end
return 1
"#;

/// ARGV: P, now, limit. Takes the due rings out (each handed to one node).
const TAKE_DUE_ACKS: &str = r#"
local due = redis.call('ZRANGEBYSCORE', P .. 'acks', '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
for _, ring in ipairs(due) do redis.call('ZREM', P .. 'acks', ring) end
return due
"#;

/// ARGV: P, user, device, node.
const SOCKET_OPENED: &str = "return redis.call('HSET', P .. 'socks:' .. ARGV[2], ARGV[3], ARGV[4])";

/// ARGV: P, user, device, node.
const SOCKET_CLOSED: &str = r#"
if redis.call('HGET', P .. 'socks:' .. ARGV[2], ARGV[3]) ~= ARGV[4] then return 0 end
return redis.call('HDEL', P .. 'socks:' .. ARGV[2], ARGV[3])
"#;

/// ARGV: P, user, device ('' for every device), this node, message.
/// Publishes once to each other node holding a matching socket; returns how
/// many subscribers took it (0: the node is gone or holds none).
const RELAY: &str = r#"
local nodes = {}
if ARGV[3] ~= '' then
  local node = redis.call('HGET', P .. 'socks:' .. ARGV[2], ARGV[3])
  if node then nodes[node] = true end
else
  local all = redis.call('HGETALL', P .. 'socks:' .. ARGV[2])
  for i = 2, #all, 2 do nodes[all[i]] = true end
end
local took = 0
for node, _ in pairs(nodes) do
  if node ~= ARGV[4] then took = took + redis.call('PUBLISH', P .. 'relay:' .. node, ARGV[5]) end
end
return took
"#;

/// ARGV: P, now.
const EXPIRE_IDEMPOTENCY: &str = r#"
local n = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'idem:exp', '-inf', ARGV[2])) do
  redis.call('DEL', P .. 'idem:' .. id)
  n = n + redis.call('ZREM', P .. 'idem:exp', id)
end
return n
"#;

impl Scripts {
    fn new() -> Scripts {
        let script = |body: &str| Script::new(&format!("{PRELUDE}{INDEX_CALL}{body}"));
        Scripts {
            register_device: script(REGISTER_DEVICE),
            remove_push_token: script(REMOVE_PUSH_TOKEN),
            delete_device: script(DELETE_DEVICE),
            devices_of: script(DEVICES_OF),
            touch_device: script(TOUCH_DEVICE),
            update_call: script(UPDATE_CALL),
            queue_events: script(QUEUE_EVENTS),
            due_events: script(DUE_EVENTS),
            event_delivered: script(EVENT_DELIVERED),
            event_retry: script(EVENT_RETRY),
            trim_events: script(TRIM_EVENTS),
            calls_of: script(CALLS_OF),
            live_calls: script(LIVE_CALLS),
            live_calls_of: script(LIVE_CALLS_OF),
            due_calls: script(DUE_CALLS),
            put_idempotency: script(PUT_IDEMPOTENCY),
            finish_idempotency: script(FINISH_IDEMPOTENCY),
            release_idempotency: script(RELEASE_IDEMPOTENCY),
            expire_idempotency: script(EXPIRE_IDEMPOTENCY),
            node_heartbeat: script(NODE_HEARTBEAT),
            live_nodes: script(LIVE_NODES),
            socket_opened: script(SOCKET_OPENED),
            take_due_acks: script(TAKE_DUE_ACKS),
            rate_take: script(RATE_TAKE),
            rate_give_back: script(RATE_GIVE_BACK),
            socket_closed: script(SOCKET_CLOSED),
            relay: script(RELAY),
        }
    }
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
        conn: &mut redis::Connection,
        call: &Call,
        insert: &redis::Cmd,
    ) -> Result<Option<Insertion>, StoreError> {
        let live = self.key(&["live:", &call.initiator_user_id]);
        redis::cmd("WATCH").arg(&live).exec(conn).map_err(fail)?;
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&live)
            .query(conn)
            .map_err(fail)?;
        if !ids.is_empty() {
            let keys: Vec<String> = ids.iter().map(|id| self.key(&["call:", id])).collect();
            // Watched before they are read: a change after the read aborts the insert.
            redis::cmd("WATCH").arg(&keys).exec(conn).map_err(fail)?;
            let mut read = redis::pipe();
            for key in &keys {
                read.cmd("HGET").arg(key).arg("json");
            }
            let jsons: Vec<Option<String>> = read.query(conn).map_err(fail)?;
            for json in jsons.iter().flatten() {
                let existing: Call = decode(json)?;
                if super::crosses(call, &existing) {
                    redis::cmd("UNWATCH").exec(conn).map_err(fail)?;
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
            .map_err(fail)?;
        Ok(committed.map(|_| Insertion::Inserted))
    }
}

impl Store for RedisStore {
    fn register_device(&self, device: &Device, moves: TokenMove) -> Result<(), StoreError> {
        let mut stored = device.clone();
        stored.push = PushTokens::default();
        let token = |t: &Option<String>| t.clone().unwrap_or_default();
        let outcome: String = self
            .scripts
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
            .arg(token(&device.push.fcm))
            .invoke(&mut *self.conn()?)
            .map_err(fail)?;
        match outcome.as_str() {
            "ok" => Ok(()),
            _ => Err(StoreError::PushTokenInUse),
        }
    }

    fn delete_device(&self, user_id: &str, device_id: &str) -> Result<bool, StoreError> {
        let n: i64 = self
            .scripts
            .delete_device
            .arg(&self.prefix)
            .arg(user_id)
            .arg(device_id)
            .invoke(&mut *self.conn()?)
            .map_err(fail)?;
        Ok(n == 1)
    }

    fn remove_push_token(&self, token: &str) -> Result<bool, StoreError> {
        let n: i64 = self
            .scripts
            .remove_push_token
            .arg(&self.prefix)
            .arg(token)
            .invoke(&mut *self.conn()?)
            .map_err(fail)?;
        Ok(n > 0)
    }

    fn devices_of(&self, user_id: &str) -> Result<Vec<Device>, StoreError> {
        let reply: Value = self
            .scripts
            .devices_of
            .arg(&self.prefix)
            .arg(user_id)
            .invoke(&mut *self.conn()?)
            .map_err(fail)?;
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
        let n: i64 = self
            .scripts
            .touch_device
            .arg(&self.prefix)
            .arg(user_id)
            .arg(device_id)
            .arg(now)
            .invoke(&mut *self.conn()?)
            .map_err(fail)?;
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
        insert.exec(&mut *self.conn()?).map_err(fail)
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
            insert.exec(&mut *conn).map_err(fail)?;
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
            .map_err(fail)?;
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
        let n: i64 = self
            .scripts
            .update_call
            .arg(&self.prefix)
            .arg(&call.call_id)
            .arg(expected)
            .arg(state_name(call.state))
            .arg(encode(call))
            .arg(index_args(call))
            .arg(event_args(events))
            .invoke(&mut *self.conn()?)
            .map_err(fail)?;
        Ok(n == 1)
    }

    fn queue_events(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        let _: i64 = self
            .scripts
            .queue_events
            .arg(&self.prefix)
            .arg(event_args(events))
            .invoke(&mut *self.conn()?)
            .map_err(fail)?;
        Ok(())
    }

    fn due_events(&self, now: UnixMillis, limit: usize) -> Result<Vec<QueuedEvent>, StoreError> {
        let reply: Value = self
            .scripts
            .due_events
            .arg(&self.prefix)
            .arg(now)
            .arg(limit)
            .invoke(&mut *self.conn()?)
            .map_err(fail)?;
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
        let _: i64 = self
            .scripts
            .event_delivered
            .arg(&self.prefix)
            .arg(row)
            .invoke(&mut *self.conn()?)
            .map_err(fail)?;
        Ok(())
    }

    fn event_retry(
        &self,
        row: i64,
        attempts: u32,
        next_attempt_at: UnixMillis,
    ) -> Result<(), StoreError> {
        let _: i64 = self
            .scripts
            .event_retry
            .arg(&self.prefix)
            .arg(row)
            .arg(attempts)
            .arg(next_attempt_at)
            .invoke(&mut *self.conn()?)
            .map_err(fail)?;
        Ok(())
    }

    fn trim_events(
        &self,
        older_than: UnixMillis,
        max_queued: usize,
    ) -> Result<(usize, usize), StoreError> {
        self.scripts
            .trim_events
            .arg(&self.prefix)
            .arg(older_than)
            .arg(max_queued)
            .invoke(&mut *self.conn()?)
            .map_err(fail)
    }

    fn queued_events(&self) -> Result<usize, StoreError> {
        redis::cmd("ZCARD")
            .arg(self.key(&["ev:rows"]))
            .query(&mut *self.conn()?)
            .map_err(fail)
    }

    fn calls_of(&self, user_id: &str, limit: usize) -> Result<Vec<Call>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let jsons: Vec<String> = self
            .scripts
            .calls_of
            .arg(&self.prefix)
            .arg(user_id)
            .arg(limit)
            .invoke(&mut *self.conn()?)
            .map_err(fail)?;
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
        let pairs: Vec<(String, u64)> = self
            .scripts
            .live_calls
            .arg(&self.prefix)
            .invoke(&mut *self.conn()?)
            .map_err(fail)?;
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
        let jsons: Vec<String> = self
            .scripts
            .live_calls_of
            .arg(&self.prefix)
            .arg(user_id)
            .invoke(&mut *self.conn()?)
            .map_err(fail)?;
        jsons.iter().map(|json| decode(json)).collect()
    }

    fn due_calls(&self, now: UnixMillis) -> Result<Vec<String>, StoreError> {
        // A bounded batch per pass: the timer loop runs again in 250 ms.
        self.scripts
            .due_calls
            .arg(&self.prefix)
            .arg(now)
            .arg(MAX_DUE_PER_PASS)
            .invoke(&mut *self.conn()?)
            .map_err(fail)
    }

    fn put_idempotency(
        &self,
        record: &IdempotencyRecord,
        now: UnixMillis,
    ) -> Result<IdempotencyRecord, StoreError> {
        let fields: Vec<Value> = self
            .scripts
            .put_idempotency
            .arg(&self.prefix)
            .arg(&record.user_id)
            .arg(&record.key)
            .arg(&record.request_hash)
            .arg(record.status)
            .arg(&record.body)
            .arg(record.expires_at)
            .arg(now)
            .invoke(&mut *self.conn()?)
            .map_err(fail)?;
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
            .map_err(fail)?;
        if fields.first().and_then(text).is_none() {
            return Ok(None);
        }
        let record = idempotency_record(user_id, key, &fields)?;
        Ok((record.expires_at > now).then_some(record))
    }

    fn finish_idempotency(&self, record: &IdempotencyRecord) -> Result<bool, StoreError> {
        let n: i64 = self
            .scripts
            .finish_idempotency
            .arg(&self.prefix)
            .arg(&record.user_id)
            .arg(&record.key)
            .arg(&record.body)
            .arg(record.status)
            .arg(record.expires_at)
            .invoke(&mut *self.conn()?)
            .map_err(fail)?;
        Ok(n == 1)
    }

    fn release_idempotency(
        &self,
        user_id: &str,
        key: &str,
        body: &str,
    ) -> Result<bool, StoreError> {
        let n: i64 = self
            .scripts
            .release_idempotency
            .arg(&self.prefix)
            .arg(user_id)
            .arg(key)
            .arg(body)
            .invoke(&mut *self.conn()?)
            .map_err(fail)?;
        Ok(n == 1)
    }

    fn expire_idempotency(&self, now: UnixMillis) -> Result<usize, StoreError> {
        self.scripts
            .expire_idempotency
            .arg(&self.prefix)
            .arg(now)
            .invoke(&mut *self.conn()?)
            .map_err(fail)
    }
}

impl crate::nodes::NodeRegistry for RedisStore {
    fn heartbeat(
        &self,
        node: &crate::nodes::NodeRecord,
        now: UnixMillis,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let _: i64 = self
            .scripts
            .node_heartbeat
            .arg(&self.prefix)
            .arg(&node.node_id)
            .arg(encode(node))
            .arg(now + ttl_ms)
            .arg(ttl_ms)
            .invoke(&mut *self.conn()?)
            .map_err(fail)?;
        Ok(())
    }

    fn nodes(&self, now: UnixMillis) -> Result<Vec<crate::nodes::NodeRecord>, StoreError> {
        let records: Vec<String> = self
            .scripts
            .live_nodes
            .arg(&self.prefix)
            .arg(now)
            .invoke(&mut *self.conn()?)
            .map_err(fail)?;
        records.iter().map(|r| decode(r)).collect()
    }

    fn leave(&self, node_id: &str) -> Result<(), StoreError> {
        redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(self.key(&["node:", node_id]))
            .cmd("ZREM")
            .arg(self.key(&["nodes"]))
            .arg(node_id)
            .exec(&mut *self.conn()?)
            .map_err(fail)
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

impl crate::ringing::SocketDirectory for RedisSockets {
    fn socket_opened(&self, user_id: &str, device_id: &str) {
        let done: Result<i64, _> = self.store.conn().and_then(|mut conn| {
            self.store
                .scripts
                .socket_opened
                .arg(&self.store.prefix)
                .arg(user_id)
                .arg(device_id)
                .arg(&self.node_id)
                .invoke(&mut *conn)
                .map_err(fail)
        });
        if let Err(e) = done {
            tracing::warn!(%user_id, %device_id, error = %e, "socket not recorded: rings from other nodes will push");
        }
    }

    fn socket_closed(&self, user_id: &str, device_id: &str) {
        let done: Result<i64, _> = self.store.conn().and_then(|mut conn| {
            self.store
                .scripts
                .socket_closed
                .arg(&self.store.prefix)
                .arg(user_id)
                .arg(device_id)
                .arg(&self.node_id)
                .invoke(&mut *conn)
                .map_err(fail)
        });
        if let Err(e) = done {
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
                .map_err(fail)
        });
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
        let client = self.client.clone();
        let channel = format!("{}relay:{node_id}", self.prefix);
        let node_id = node_id.to_string();
        std::thread::Builder::new()
            .name("redis-relay".into())
            .spawn(move || {
                use std::sync::atomic::Ordering;
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = listen(&client, &channel, &hub, &stop) {
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
    client: &redis::Client,
    channel: &str,
    hub: &crate::ringing::DeviceHub,
    stop: &std::sync::atomic::AtomicBool,
) -> redis::RedisResult<()> {
    let mut conn = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
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
            Ok(relayed) => hub.deliver_relayed(relayed),
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
        let wait_ms: u64 = self
            .scripts
            .rate_take
            .arg(&self.prefix)
            .arg(name)
            .arg(now_ms)
            .arg(interval)
            .arg(tolerance)
            .arg(keys)
            .invoke(&mut *self.conn()?)
            .map_err(fail)?;
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
        let _: i64 = self
            .scripts
            .rate_give_back
            .arg(&self.prefix)
            .arg(name)
            .arg(now_ms)
            .arg(interval)
            .arg(key)
            .invoke(&mut *self.conn()?)
            .map_err(fail)?;
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
            .map_err(fail)?;
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
                .map_err(fail)
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
                .map_err(fail)
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
