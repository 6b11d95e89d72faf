//! The Lua scripts of `RedisStore`, one per atomic step, each starting with
//! the shared helpers (`PRELUDE`, `INDEX_CALL`). `P` in a script is the
//! key prefix (`ARGV[1]`); the key layout is in `super`'s docs.

use redis::Script;

/// The scripts, compiled once (redis-rs sends `EVALSHA` and loads a script
/// the server does not know yet).
pub(super) struct Scripts {
    pub(super) register_device: Script,
    pub(super) remove_push_token: Script,
    pub(super) delete_device: Script,
    pub(super) devices_of: Script,
    pub(super) touch_device: Script,
    pub(super) update_call: Script,
    pub(super) queue_events: Script,
    pub(super) due_events: Script,
    pub(super) event_delivered: Script,
    pub(super) event_retry: Script,
    pub(super) trim_events: Script,
    pub(super) calls_of: Script,
    pub(super) live_calls: Script,
    pub(super) live_calls_of: Script,
    pub(super) due_calls: Script,
    pub(super) put_idempotency: Script,
    pub(super) finish_idempotency: Script,
    pub(super) release_idempotency: Script,
    pub(super) expire_idempotency: Script,
    pub(super) put_flag: Script,
    pub(super) node_heartbeat: Script,
    pub(super) live_nodes: Script,
    pub(super) socket_opened: Script,
    pub(super) take_due_acks: Script,
    pub(super) rate_take: Script,
    pub(super) rate_give_back: Script,
    pub(super) socket_closed: Script,
    pub(super) relay: Script,
}

/// Helpers every script starts with. `P` is the key prefix (ARGV[1]).
pub(super) const PRELUDE: &str = r#"
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
pub(super) const INDEX_CALL: &str = r#"
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
pub(super) const INSERT_CALL: &str = r#"
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

/// ARGV: P, name, expected version, flag JSON, change JSON, changes kept.
/// 1: written; 0: the flag's version was not the expected one.
const PUT_FLAG: &str = r#"
local version = tonumber(redis.call('HGET', P .. 'flags:version', ARGV[2]) or '0')
if version ~= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', P .. 'flags', ARGV[2], ARGV[4])
redis.call('HSET', P .. 'flags:version', ARGV[2], version + 1)
redis.call('LPUSH', P .. 'flags:changes', ARGV[5])
redis.call('LTRIM', P .. 'flags:changes', 0, tonumber(ARGV[6]) - 1)
return 1
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
    pub(super) fn new() -> Scripts {
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
            put_flag: script(PUT_FLAG),
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
