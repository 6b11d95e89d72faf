//! The embedded store: one SQLite file in WAL mode. A call is stored whole
//! (its JSON) with its state and version; participants are also indexed by
//! user for "my calls" and busy checks.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    FlagChange, IdempotencyRecord, Insertion, MAX_FLAG_CHANGES, NewEvent, QueuedEvent, Store,
    StoreError, TokenMove, Versioned,
};
use crate::call::{Call, CallState, UnixMillis};
use crate::device::Device;
use crate::flags::Flag;

pub struct SqliteStore {
    // rusqlite connections are not Sync; calls are short and never held
    // across an await (the API runs them on blocking threads).
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    last_seen_at INTEGER NOT NULL,
    apns_voip TEXT,
    apns_alert TEXT,
    fcm TEXT,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
CREATE INDEX IF NOT EXISTS devices_apns_voip ON devices(apns_voip);
CREATE INDEX IF NOT EXISTS devices_apns_alert ON devices(apns_alert);
CREATE INDEX IF NOT EXISTS devices_fcm ON devices(fcm);
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_state ON calls(state);
CREATE TABLE IF NOT EXISTS call_users (
    call_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (call_id, user_id)
);
CREATE INDEX IF NOT EXISTS call_users_user ON call_users(user_id, created_at);
CREATE TABLE IF NOT EXISTS event_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    call_id TEXT,
    sequence INTEGER NOT NULL,
    kind TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    data TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS event_outbox_order ON event_outbox(endpoint, call_id, id);
CREATE INDEX IF NOT EXISTS event_outbox_due ON event_outbox(next_attempt_at);
CREATE TABLE IF NOT EXISTS event_sequence (
    call_id TEXT PRIMARY KEY,
    last INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS flags (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS flag_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    user_id TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, key)
);
";

/// The call's row and its users' index rows, inside the caller's transaction.
fn insert_call_in(tx: &rusqlite::Transaction<'_>, call: &Call) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO calls (call_id, state, version, created_at, json) VALUES (?1, ?2, 1, ?3, ?4)",
        params![
            call.call_id,
            state_name(call.state),
            call.created_at as i64,
            encode(call)
        ],
    )
    .map_err(backend)?;
    for p in &call.participants {
        tx.execute(
            "INSERT OR IGNORE INTO call_users (call_id, user_id, created_at) VALUES (?1, ?2, ?3)",
            params![call.call_id, p.user_id, call.created_at as i64],
        )
        .map_err(backend)?;
    }
    Ok(())
}

/// Queues `events` inside the caller's transaction, numbering each event
/// (not each endpoint's row) in its call's sequence.
fn queue_events_in(tx: &rusqlite::Transaction<'_>, events: &[NewEvent]) -> Result<(), StoreError> {
    let mut numbered: Vec<(&str, i64)> = Vec::new();
    for event in events {
        let sequence = match (
            &event.call_id,
            numbered.iter().find(|(id, _)| *id == event.event_id),
        ) {
            (_, Some((_, n))) => *n,
            (None, None) => 0,
            (Some(call_id), None) => {
                let n: i64 = tx
                    .query_row(
                        "INSERT INTO event_sequence (call_id, last) VALUES (?1, 1)
                         ON CONFLICT(call_id) DO UPDATE SET last = last + 1 RETURNING last",
                        params![call_id],
                        |r| r.get(0),
                    )
                    .map_err(backend)?;
                n
            }
        };
        numbered.push((&event.event_id, sequence));
        tx.execute(
            "INSERT INTO event_outbox (event_id, endpoint, call_id, sequence, kind, occurred_at, data, next_attempt_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6)",
            params![
                event.event_id,
                event.endpoint,
                event.call_id,
                sequence,
                event.kind,
                event.occurred_at as i64,
                event.data
            ],
        )
        .map_err(backend)?;
    }
    Ok(())
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
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

fn decode<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn encode<T: serde::Serialize>(value: &T) -> String {
    // Plain data structs of strings, numbers and enums always serialize.
    serde_json::to_string(value).expect("store records serialize")
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`.
    /// Opens (or creates) the store at `path`, readable by this user only:
    /// it holds push tokens. SQLite gives its `-wal` and `-shm` files the
    /// database file's mode.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        // A file made by an older version (0644) is tightened too.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        drop(file);
        let conn = Connection::open(path).map_err(backend)?;
        Self::init(conn)
    }

    /// A private in-memory database (tests, benchmarks).
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        Self::init(Connection::open_in_memory().map_err(backend)?)
    }

    fn init(conn: Connection) -> Result<SqliteStore, StoreError> {
        // WAL: readers do not block the writer; NORMAL sync is durable
        // across a process crash (kill -9), which is what recovery needs.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite itself consistent
        // (statements are atomic), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Token columns and their key in the device JSON.
const TOKEN_COLUMNS: [(&str, &str); 3] = [
    ("apns_voip", "apnsVoip"),
    ("apns_alert", "apnsAlert"),
    ("fcm", "fcm"),
];

fn token_of<'a>(push: &'a crate::device::PushTokens, column: &str) -> Option<&'a str> {
    match column {
        "apns_voip" => push.apns_voip.as_deref(),
        "apns_alert" => push.apns_alert.as_deref(),
        _ => push.fcm.as_deref(),
    }
}

impl Store for SqliteStore {
    fn register_device(&self, device: &Device, moves: TokenMove) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        for (column, json_key) in TOKEN_COLUMNS {
            let Some(token) = token_of(&device.push, column) else {
                continue;
            };
            if moves == TokenMove::SameInstallOrUser {
                let sql = format!(
                    "SELECT EXISTS (SELECT 1 FROM devices
                     WHERE {column} = ?1 AND user_id != ?2 AND device_id != ?3)"
                );
                let taken: bool = tx
                    .query_row(
                        &sql,
                        params![token, device.user_id, device.device_id],
                        |r| r.get(0),
                    )
                    .map_err(backend)?;
                if taken {
                    // Dropping the transaction rolls back: nothing changed.
                    return Err(StoreError::PushTokenInUse);
                }
            }
            // The token moved to this device: no other device keeps it.
            let sql = format!(
                "UPDATE devices SET {column} = NULL, json = json_remove(json, '$.push.{json_key}')
                 WHERE {column} = ?1 AND NOT (user_id = ?2 AND device_id = ?3)"
            );
            tx.execute(&sql, params![token, device.user_id, device.device_id])
                .map_err(backend)?;
        }
        tx.execute(
            "INSERT INTO devices (user_id, device_id, last_seen_at, apns_voip, apns_alert, fcm, json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (user_id, device_id) DO UPDATE SET
               last_seen_at = excluded.last_seen_at, apns_voip = excluded.apns_voip,
               apns_alert = excluded.apns_alert, fcm = excluded.fcm, json = excluded.json",
            params![
                device.user_id,
                device.device_id,
                device.last_seen_at as i64,
                device.push.apns_voip,
                device.push.apns_alert,
                device.push.fcm,
                encode(device)
            ],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn remove_push_token(&self, token: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let mut removed = 0;
        for (column, json_key) in TOKEN_COLUMNS {
            let sql = format!(
                "UPDATE devices SET {column} = NULL, json = json_remove(json, '$.push.{json_key}')
                 WHERE {column} = ?1"
            );
            removed += tx.execute(&sql, params![token]).map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        Ok(removed > 0)
    }

    fn delete_device(&self, user_id: &str, device_id: &str) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute(
                "DELETE FROM devices WHERE user_id = ?1 AND device_id = ?2",
                params![user_id, device_id],
            )
            .map_err(backend)?;
        Ok(n == 1)
    }

    fn devices_of(&self, user_id: &str) -> Result<Vec<Device>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT json, last_seen_at FROM devices WHERE user_id = ?1
                 ORDER BY last_seen_at DESC, device_id",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![user_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let (json, seen) = row.map_err(backend)?;
            let mut device: Device = decode(&json)?;
            device.last_seen_at = seen as u64;
            out.push(device);
        }
        Ok(out)
    }

    fn touch_device(
        &self,
        user_id: &str,
        device_id: &str,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute(
                "UPDATE devices SET last_seen_at = ?3 WHERE user_id = ?1 AND device_id = ?2",
                params![user_id, device_id, now as i64],
            )
            .map_err(backend)?;
        Ok(n == 1)
    }

    fn insert_call(&self, call: &Call) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        insert_call_in(&tx, call)?;
        tx.commit().map_err(backend)
    }

    fn insert_call_with_events(
        &self,
        call: &Call,
        events: &[NewEvent],
    ) -> Result<Insertion, StoreError> {
        let mut conn = self.conn();
        // IMMEDIATE takes the write lock before the read: another process on
        // the same file cannot slip its insert between our check and ours.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        if super::one_callee(call).is_some() {
            let mut stmt = tx
                .prepare(
                    "SELECT c.json FROM call_users u JOIN calls c ON c.call_id = u.call_id
                     WHERE u.user_id = ?1 AND c.state = 'ringing'",
                )
                .map_err(backend)?;
            let ringing = stmt
                .query_map(params![call.initiator_user_id], |r| r.get::<_, String>(0))
                .map_err(backend)?;
            for json in ringing {
                let existing: Call = decode(&json.map_err(backend)?)?;
                if super::crosses(call, &existing) {
                    return Ok(Insertion::Crossed {
                        call_id: existing.call_id,
                    });
                }
            }
        }
        insert_call_in(&tx, call)?;
        queue_events_in(&tx, events)?;
        tx.commit().map_err(backend)?;
        Ok(Insertion::Inserted)
    }

    fn get_call(&self, call_id: &str) -> Result<Option<Versioned<Call>>, StoreError> {
        let row: Option<(String, i64)> = self
            .conn()
            .query_row(
                "SELECT json, version FROM calls WHERE call_id = ?1",
                params![call_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)?;
        row.map(|(json, version)| {
            Ok(Versioned {
                value: decode(&json)?,
                version: version as u64,
            })
        })
        .transpose()
    }

    fn update_call_with_events(
        &self,
        call: &Call,
        expected: u64,
        events: &[NewEvent],
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        // Compare-and-set: the row count says whether our version was current.
        let n = tx
            .execute(
                "UPDATE calls SET json = ?1, state = ?2, version = version + 1
                 WHERE call_id = ?3 AND version = ?4",
                params![
                    encode(call),
                    state_name(call.state),
                    call.call_id,
                    expected as i64
                ],
            )
            .map_err(backend)?;
        if n != 1 {
            return Ok(false);
        }
        queue_events_in(&tx, events)?;
        tx.commit().map_err(backend)?;
        Ok(true)
    }

    fn queue_events(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        queue_events_in(&tx, events)?;
        tx.commit().map_err(backend)
    }

    fn due_events(&self, now: UnixMillis, limit: usize) -> Result<Vec<QueuedEvent>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, event_id, endpoint, call_id, sequence, kind, occurred_at, data, attempts
                 FROM event_outbox o
                 WHERE next_attempt_at <= ?1
                   AND id = (SELECT MIN(id) FROM event_outbox f
                             WHERE f.endpoint = o.endpoint AND f.call_id IS o.call_id
                               AND (o.call_id IS NOT NULL OR f.id = o.id))
                 ORDER BY id LIMIT ?2",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![now as i64, limit as i64], |r| {
                Ok(QueuedEvent {
                    row: r.get(0)?,
                    event: NewEvent {
                        event_id: r.get(1)?,
                        endpoint: r.get(2)?,
                        call_id: r.get(3)?,
                        kind: r.get(5)?,
                        occurred_at: r.get::<_, i64>(6)? as u64,
                        data: r.get(7)?,
                    },
                    sequence: r.get::<_, i64>(4)? as u64,
                    attempts: r.get::<_, i64>(8)? as u32,
                })
            })
            .map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    fn event_delivered(&self, row: i64) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM event_outbox WHERE id = ?1", params![row])
            .map_err(backend)?;
        Ok(())
    }

    fn event_retry(
        &self,
        row: i64,
        attempts: u32,
        next_attempt_at: UnixMillis,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE event_outbox SET attempts = ?2, next_attempt_at = ?3 WHERE id = ?1",
                params![row, attempts, next_attempt_at as i64],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn trim_events(
        &self,
        older_than: UnixMillis,
        max_queued: usize,
    ) -> Result<(usize, usize), StoreError> {
        let conn = self.conn();
        let aged = conn
            .execute(
                "DELETE FROM event_outbox WHERE occurred_at < ?1",
                params![older_than as i64],
            )
            .map_err(backend)?;
        let over = conn
            .execute(
                "DELETE FROM event_outbox WHERE id IN
                 (SELECT id FROM event_outbox ORDER BY id DESC LIMIT -1 OFFSET ?1)",
                params![max_queued as i64],
            )
            .map_err(backend)?;
        Ok((aged, over))
    }

    fn queued_events(&self) -> Result<usize, StoreError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM event_outbox", [], |r| r.get(0))
            .map_err(backend)?;
        Ok(n as usize)
    }

    fn calls_of(&self, user_id: &str, limit: usize) -> Result<Vec<Call>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT c.json FROM call_users u JOIN calls c ON c.call_id = u.call_id
                 WHERE u.user_id = ?1 ORDER BY u.created_at DESC, c.call_id LIMIT ?2",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![user_id, limit as i64], |r| r.get::<_, String>(0))
            .map_err(backend)?;
        rows.map(|r| decode(&r.map_err(backend)?)).collect()
    }

    fn live_calls(&self) -> Result<Vec<Versioned<Call>>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT json, version FROM calls WHERE state != 'ended'")
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let (json, version) = row.map_err(backend)?;
            out.push(Versioned {
                value: decode(&json)?,
                version: version as u64,
            });
        }
        Ok(out)
    }

    fn live_calls_of(&self, user_id: &str) -> Result<Vec<Call>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                // From the live calls (the state index), not the user's whole
                // history: a user with 10,000 past calls made this 10x slower.
                "SELECT c.json FROM calls c
                 WHERE c.state IN ('created', 'ringing', 'connecting', 'connected')
                   AND EXISTS (SELECT 1 FROM call_users u
                               WHERE u.call_id = c.call_id AND u.user_id = ?1)",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![user_id], |r| r.get::<_, String>(0))
            .map_err(backend)?;
        rows.map(|r| decode(&r.map_err(backend)?)).collect()
    }

    fn put_idempotency(
        &self,
        record: &IdempotencyRecord,
        now: UnixMillis,
    ) -> Result<IdempotencyRecord, StoreError> {
        let conn = self.conn();
        // An expired record for the key no longer binds it.
        conn.execute(
            "DELETE FROM idempotency WHERE user_id = ?1 AND key = ?2 AND expires_at <= ?3",
            params![record.user_id, record.key, now as i64],
        )
        .map_err(backend)?;
        conn.execute(
            "INSERT OR IGNORE INTO idempotency (user_id, key, request_hash, status, body, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                record.user_id,
                record.key,
                record.request_hash,
                record.status,
                record.body,
                record.expires_at as i64
            ],
        )
        .map_err(backend)?;
        conn.query_row(
            "SELECT request_hash, status, body, expires_at FROM idempotency WHERE user_id = ?1 AND key = ?2",
            params![record.user_id, record.key],
            |r| {
                Ok(IdempotencyRecord {
                    user_id: record.user_id.clone(),
                    key: record.key.clone(),
                    request_hash: r.get(0)?,
                    status: r.get(1)?,
                    body: r.get(2)?,
                    expires_at: r.get::<_, i64>(3)? as u64,
                })
            },
        )
        .map_err(backend)
    }

    fn finish_idempotency(&self, record: &IdempotencyRecord) -> Result<bool, StoreError> {
        let changed = self
            .conn()
            .execute(
                "UPDATE idempotency SET status = ?1, expires_at = ?2
                 WHERE user_id = ?3 AND key = ?4 AND body = ?5",
                params![
                    record.status,
                    record.expires_at as i64,
                    record.user_id,
                    record.key,
                    record.body
                ],
            )
            .map_err(backend)?;
        Ok(changed > 0)
    }

    fn release_idempotency(
        &self,
        user_id: &str,
        key: &str,
        body: &str,
    ) -> Result<bool, StoreError> {
        let changed = self
            .conn()
            .execute(
                "DELETE FROM idempotency WHERE user_id = ?1 AND key = ?2 AND body = ?3",
                params![user_id, key, body],
            )
            .map_err(backend)?;
        Ok(changed > 0)
    }

    fn get_idempotency(
        &self,
        user_id: &str,
        key: &str,
        now: UnixMillis,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.conn()
            .query_row(
                "SELECT request_hash, status, body, expires_at FROM idempotency
                 WHERE user_id = ?1 AND key = ?2 AND expires_at > ?3",
                params![user_id, key, now as i64],
                |r| {
                    Ok(IdempotencyRecord {
                        user_id: user_id.to_string(),
                        key: key.to_string(),
                        request_hash: r.get(0)?,
                        status: r.get(1)?,
                        body: r.get(2)?,
                        expires_at: r.get::<_, i64>(3)? as u64,
                    })
                },
            )
            .optional()
            .map_err(backend)
    }

    fn expire_idempotency(&self, now: UnixMillis) -> Result<usize, StoreError> {
        self.conn()
            .execute(
                "DELETE FROM idempotency WHERE expires_at <= ?1",
                params![now as i64],
            )
            .map_err(backend)
    }

    fn flags(&self) -> Result<Vec<Versioned<Flag>>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT json, version FROM flags ORDER BY name")
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(backend)?;
        rows.map(|row| {
            let (json, version) = row.map_err(backend)?;
            Ok(Versioned {
                value: decode(&json)?,
                version: version as u64,
            })
        })
        .collect()
    }

    fn put_flag(&self, change: &FlagChange, expected: u64) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let version: i64 = tx
            .query_row(
                "SELECT version FROM flags WHERE name = ?1",
                params![change.name],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?
            .unwrap_or(0);
        if version as u64 != expected {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO flags (name, version, json) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET version = excluded.version, json = excluded.json",
            params![change.name, version + 1, encode(&change.new)],
        )
        .map_err(backend)?;
        tx.execute(
            "INSERT INTO flag_changes (json) VALUES (?1)",
            params![encode(change)],
        )
        .map_err(backend)?;
        tx.execute(
            "DELETE FROM flag_changes WHERE id <= (SELECT MAX(id) FROM flag_changes) - ?1",
            params![MAX_FLAG_CHANGES as i64],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(true)
    }

    fn flag_changes(&self, limit: usize) -> Result<Vec<FlagChange>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT json FROM flag_changes ORDER BY id DESC LIMIT ?1")
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![limit as i64], |r| r.get::<_, String>(0))
            .map_err(backend)?;
        rows.map(|json| decode(&json.map_err(backend)?)).collect()
    }
}
