//! Where call control keeps its state: devices, calls (each with a version
//! for compare-and-set), and idempotency records. `SqliteStore` is the
//! embedded default; `RedisStore` is the store every node of a cluster shares.
//!
//! Calls are written only through [`Store::update_call`], which succeeds only
//! if nobody else wrote the call since it was read: two racing accepts cannot
//! both win, whatever process they run in.

mod redis;
mod sqlite;

pub use redis::{RedisMetrics, RedisSockets, RedisStore};
pub use sqlite::SqliteStore;

use crate::call::{Call, CallState, UnixMillis};
use crate::device::Device;
use crate::flags::Flag;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Backend(String),
    /// The store cannot be reached now (Redis down or not answering): the
    /// request changed nothing and may be retried.
    #[error("storage unreachable: {0}")]
    Unavailable(String),
    #[error("stored record does not decode: {0}")]
    Corrupt(String),
    /// A push token of the device is held by another user's other device,
    /// and this registration may not move it.
    #[error("the push token is registered to another user's device")]
    PushTokenInUse,
}

/// Whose devices a registration may take a push token from. A push token
/// belongs to an app install (`deviceId`): a user registering another user's
/// token from a different device would make the victim's phone ring for the
/// attacker's calls (and stop ringing for their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMove {
    /// The app backend (API key) says so: from any device.
    Any,
    /// A device itself (user token): from the same `deviceId` of any user
    /// (account switching on one phone) or the same user's other devices.
    SameInstallOrUser,
}

/// What [`Store::insert_call_unless_crossed`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Insertion {
    Inserted,
    /// Not stored: this call, from the callee to the caller, still rings.
    Crossed {
        call_id: String,
    },
}

/// Whether `existing` is the call `new` crosses: a 1:1 call from `new`'s
/// callee to its caller that still rings the caller. Every store decides
/// with this, inside its atomic step.
pub fn crosses(new: &Call, existing: &Call) -> bool {
    use crate::call::ParticipantState;
    let caller = new.initiator_user_id.as_str();
    let Some(callee) = one_callee(new) else {
        return false;
    };
    existing.call_id != new.call_id
        && existing.state == CallState::Ringing
        && existing.initiator_user_id == callee
        && existing.participants.len() == 2
        && existing
            .participant(caller)
            .is_some_and(|p| p.state == ParticipantState::Ringing)
}

/// The callee of a 1:1 call; `None` for a group.
pub fn one_callee(call: &Call) -> Option<&str> {
    match call.participants.as_slice() {
        [a, b] => Some(if a.user_id == call.initiator_user_id {
            &b.user_id
        } else {
            &a.user_id
        }),
        _ => None,
    }
}

/// A call as read, with the version a write must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub version: u64,
}

/// The outcome of a request made with an `Idempotency-Key`, kept so a retry
/// gets the same answer. Holds no tokens: a retry gets fresh ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub user_id: String,
    pub key: String,
    /// Hash of the request (method, path, body): the same key with another
    /// request is refused (422).
    pub request_hash: String,
    pub status: u16,
    /// The response body, without tokens.
    pub body: String,
    pub expires_at: UnixMillis,
}

/// One audited change of a feature flag: who (the API key's id), when, the
/// flag before (`None`: never set, so its default) and after.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlagChange {
    pub at: UnixMillis,
    pub by: String,
    pub name: String,
    pub old: Option<Flag>,
    pub new: Flag,
}

/// Flag changes kept, newest first; older ones are dropped.
pub const MAX_FLAG_CHANGES: usize = 10_000;

/// An event for the app backend's webhook endpoint, to be queued with the
/// change it reports (`crate::webhooks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// One id per event, the same for every endpoint (receivers de-duplicate by it).
    pub event_id: String,
    /// Which configured endpoint (its URL) this row is for.
    pub endpoint: String,
    /// The call it is about; events of one call are numbered and delivered
    /// in order per endpoint.
    pub call_id: Option<String>,
    pub kind: String,
    pub occurred_at: UnixMillis,
    /// The event's `data` object, as JSON text.
    pub data: String,
}

/// A queued event, as the delivery worker reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    /// The queue row.
    pub row: i64,
    pub event: NewEvent,
    /// 1, 2, 3... per call (0 without a call).
    pub sequence: u64,
    pub attempts: u32,
}

pub trait Store: Send + Sync {
    /// Registers or updates a device. Any push token it carries is taken off
    /// other devices first (logout/login on one phone).
    fn upsert_device(&self, device: &Device) -> Result<(), StoreError> {
        self.register_device(device, TokenMove::Any)
    }
    /// Registers or updates a device, its push tokens moving off other
    /// devices as `moves` allows; otherwise nothing changes and the answer is
    /// [`StoreError::PushTokenInUse`]. One atomic step (no read-then-write).
    fn register_device(&self, device: &Device, moves: TokenMove) -> Result<(), StoreError>;
    fn delete_device(&self, user_id: &str, device_id: &str) -> Result<bool, StoreError>;
    /// Forgets a push token the provider said is dead (APNs 410, FCM
    /// UNREGISTERED), on whichever device holds it. False if none did (the
    /// device re-registered with a new token meanwhile).
    fn remove_push_token(&self, token: &str) -> Result<bool, StoreError>;
    /// A user's devices, most recently seen first.
    fn devices_of(&self, user_id: &str) -> Result<Vec<Device>, StoreError>;
    fn touch_device(
        &self,
        user_id: &str,
        device_id: &str,
        now: UnixMillis,
    ) -> Result<bool, StoreError>;

    fn insert_call(&self, call: &Call) -> Result<(), StoreError>;
    /// Stores a new 1:1 call unless its callee is already ringing its caller
    /// (the two called each other), checked and written as one atomic step:
    /// two crossed creates at the same instant make one call, on whichever
    /// nodes they run. Calls of more than two people are simply stored.
    fn insert_call_unless_crossed(&self, call: &Call) -> Result<Insertion, StoreError> {
        self.insert_call_with_events(call, &[])
    }
    /// [`Store::insert_call_unless_crossed`], queueing `events` in the same
    /// atomic step when the call is inserted (a crash loses both or neither).
    fn insert_call_with_events(
        &self,
        call: &Call,
        events: &[NewEvent],
    ) -> Result<Insertion, StoreError>;
    fn get_call(&self, call_id: &str) -> Result<Option<Versioned<Call>>, StoreError>;
    /// Writes `call` if its stored version is still `expected`; false if
    /// someone else wrote it first (re-read and retry).
    fn update_call(&self, call: &Call, expected: u64) -> Result<bool, StoreError> {
        self.update_call_with_events(call, expected, &[])
    }
    /// [`Store::update_call`], queueing `events` in the same atomic step
    /// when the write wins.
    fn update_call_with_events(
        &self,
        call: &Call,
        expected: u64,
        events: &[NewEvent],
    ) -> Result<bool, StoreError>;

    /// Queues events that come with no call write (a device's token removed).
    fn queue_events(&self, events: &[NewEvent]) -> Result<(), StoreError>;
    /// Queued events whose next attempt is due, oldest first, at most one
    /// per (endpoint, call): a call's next event waits for the one before.
    fn due_events(&self, now: UnixMillis, limit: usize) -> Result<Vec<QueuedEvent>, StoreError>;
    /// The endpoint took it: forget the row.
    fn event_delivered(&self, row: i64) -> Result<(), StoreError>;
    /// Try again at `next_attempt_at`.
    fn event_retry(
        &self,
        row: i64,
        attempts: u32,
        next_attempt_at: UnixMillis,
    ) -> Result<(), StoreError>;
    /// Drops rows older than `older_than`, then the oldest beyond
    /// `max_queued`; returns how many (aged, over the bound).
    fn trim_events(
        &self,
        older_than: UnixMillis,
        max_queued: usize,
    ) -> Result<(usize, usize), StoreError>;
    fn queued_events(&self) -> Result<usize, StoreError>;
    /// A user's calls, newest first, missed ones included.
    fn calls_of(&self, user_id: &str, limit: usize) -> Result<Vec<Call>, StoreError>;
    /// Calls not yet ended (recovery after a restart).
    fn live_calls(&self) -> Result<Vec<Versioned<Call>>, StoreError>;
    /// The user's calls not yet ended, from an index of live calls per user
    /// (busy checks read this, not the history).
    fn live_calls_of(&self, user_id: &str) -> Result<Vec<Call>, StoreError>;
    /// Ids of calls whose next deadline (`Call::next_deadline`: ring or
    /// connect timeout) has come at `now`. The timer loop of every node
    /// reads this; the compare-and-set of the transition makes each timeout
    /// happen once, whichever node fires it first. By default the live calls
    /// are scanned (one node, a few hundred calls); a cluster store keeps an
    /// index by deadline.
    fn due_calls(&self, now: UnixMillis) -> Result<Vec<String>, StoreError> {
        Ok(self
            .live_calls()?
            .into_iter()
            .filter(|c| c.value.next_deadline().is_some_and(|d| d <= now))
            .map(|c| c.value.call_id)
            .collect())
    }

    /// Stores the record unless a live one exists for (user, key); returns
    /// the one that is stored now (the first writer's, when two race).
    fn put_idempotency(
        &self,
        record: &IdempotencyRecord,
        now: UnixMillis,
    ) -> Result<IdempotencyRecord, StoreError>;
    fn get_idempotency(
        &self,
        user_id: &str,
        key: &str,
        now: UnixMillis,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
    /// Settles the reservation `record` names (same user, key and body):
    /// its final status and expiry. False if it is no longer ours.
    fn finish_idempotency(&self, record: &IdempotencyRecord) -> Result<bool, StoreError>;
    /// Forgets the reservation (user, key, body) so a retry runs afresh
    /// (the request failed in a way a retry may fix: 400, 429, 5xx).
    fn release_idempotency(&self, user_id: &str, key: &str, body: &str)
    -> Result<bool, StoreError>;
    /// Drops expired idempotency records; returns how many.
    fn expire_idempotency(&self, now: UnixMillis) -> Result<usize, StoreError>;

    /// The flags operators set, by name, each with its version (a flag
    /// never set is at its default, version 0).
    fn flags(&self) -> Result<Vec<Versioned<Flag>>, StoreError>;
    /// Sets `change.new` if the flag's version is still `expected` (0: never
    /// set), by compare-and-set: of two operators changing one flag at
    /// once, one wins and the other is told. Records the change in the same
    /// atomic step and keeps the newest [`MAX_FLAG_CHANGES`] changes.
    /// False: it changed meanwhile.
    fn put_flag(&self, change: &FlagChange, expected: u64) -> Result<bool, StoreError>;
    /// The newest `limit` flag changes, newest first.
    fn flag_changes(&self, limit: usize) -> Result<Vec<FlagChange>, StoreError>;
}
