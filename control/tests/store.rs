//! The stores, each against the real thing: SQLite (in memory and on disk)
//! and Redis (Debian's `redis-server`, started per test). Every rule is
//! checked on every store; two handles on one store stand for two nodes.

#[path = "support/redis_server.rs"]
mod redis_server;

use control::call::*;
use control::device::{ApnsEnvironment, Capabilities, Device, Platform, PushTokens};
use std::sync::{Arc, Barrier};

use control::store::{IdempotencyRecord, NewEvent, RedisStore, SqliteStore, Store};
use redis_server::RedisServer;

const T0: UnixMillis = 1_764_000_000_000;

fn ios(device: &str, user: &str, voip: &str, seen: u64) -> Device {
    Device {
        device_id: device.into(),
        user_id: user.into(),
        platform: Platform::Ios,
        push: PushTokens {
            apns_voip: Some(voip.into()),
            apns_alert: None,
            fcm: None,
        },
        apns_environment: Some(ApnsEnvironment::Sandbox),
        bundle_id: Some("com.example.app".into()),
        app_version: None,
        capabilities: Capabilities::default(),
        last_seen_at: seen,
        region: None,
    }
}

fn call(id: &str, caller: &str, callee: &str, at: UnixMillis) -> Call {
    Call::create(
        id.into(),
        CallType::Audio,
        (caller.into(), format!("p-{caller}"), format!("{caller}-d")),
        vec![Callee {
            user_id: callee.into(),
            participant_id: format!("p-{callee}"),
            devices: vec![format!("{callee}-d")],
            busy: false,
            unsupported: false,
            outdated: Vec::new(),
        }],
        Timeouts::default(),
        at,
    )
    .0
}

#[test]
fn devices_list_most_recent_first_and_can_be_removed() {
    let stores = conformance_stores("devices_list_most_recent_first_and_can_be_removed");
    for (name, one, _) in &stores.each {
        eprintln!("store: {name}");
        devices_list_most_recent_first_and_can_be_removed_on(&**one);
    }
}

fn devices_list_most_recent_first_and_can_be_removed_on(s: &dyn Store) {
    s.upsert_device(&ios("old", "u", &"a1".repeat(32), T0))
        .unwrap();
    s.upsert_device(&ios("new", "u", &"b2".repeat(32), T0 + 10))
        .unwrap();
    s.upsert_device(&ios("other", "v", &"c3".repeat(32), T0 + 20))
        .unwrap();
    let ids = |s: &dyn Store| {
        s.devices_of("u")
            .unwrap()
            .into_iter()
            .map(|d| d.device_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(s), vec!["new", "old"]);
    assert!(s.touch_device("u", "old", T0 + 99).unwrap());
    assert_eq!(ids(s), vec!["old", "new"]);
    assert!(s.delete_device("u", "old").unwrap());
    assert!(!s.delete_device("u", "old").unwrap());
    assert!(
        !s.delete_device("v", "new").unwrap(),
        "one user cannot delete another's device"
    );
    assert_eq!(ids(s), vec!["new"]);
}

#[test]
fn a_push_token_moves_to_the_user_who_registers_it_last() {
    let stores = conformance_stores("a_push_token_moves_to_the_user_who_registers_it_last");
    for (name, one, _) in &stores.each {
        eprintln!("store: {name}");
        a_push_token_moves_to_the_user_who_registers_it_last_on(&**one);
    }
}

fn a_push_token_moves_to_the_user_who_registers_it_last_on(s: &dyn Store) {
    let token = "ab".repeat(32);
    s.upsert_device(&ios("phone", "alice", &token, T0)).unwrap();
    // Alice logs out, Bob logs in on the same phone: same VoIP token.
    s.upsert_device(&ios("phone", "bob", &token, T0 + 1))
        .unwrap();
    let alice = s.devices_of("alice").unwrap();
    assert_eq!(alice.len(), 1);
    assert_eq!(
        alice[0].push.apns_voip, None,
        "alice's device must not keep bob's token"
    );
    assert_eq!(
        s.devices_of("bob").unwrap()[0].push.apns_voip.as_deref(),
        Some(token.as_str())
    );
    // Re-registering the same device keeps its own token.
    s.upsert_device(&ios("phone", "bob", &token, T0 + 2))
        .unwrap();
    assert_eq!(
        s.devices_of("bob").unwrap()[0].push.apns_voip.as_deref(),
        Some(token.as_str())
    );
}

#[test]
fn a_dead_push_token_is_removed_wherever_it_is_and_nothing_else_is() {
    let stores =
        conformance_stores("a_dead_push_token_is_removed_wherever_it_is_and_nothing_else_is");
    for (name, one, _) in &stores.each {
        eprintln!("store: {name}");
        a_dead_push_token_is_removed_wherever_it_is_and_nothing_else_is_on(&**one);
    }
}

fn a_dead_push_token_is_removed_wherever_it_is_and_nothing_else_is_on(s: &dyn Store) {
    let (voip, alert) = ("ab".repeat(32), "cd".repeat(32));
    let mut phone = ios("phone", "bob", &voip, T0);
    phone.push.apns_alert = Some(alert.clone());
    s.upsert_device(&phone).unwrap();
    s.upsert_device(&ios("tablet", "bob", &"ef".repeat(32), T0))
        .unwrap();
    assert!(s.remove_push_token(&voip).unwrap());
    assert!(!s.remove_push_token(&voip).unwrap(), "already gone");
    let devices = s.devices_of("bob").unwrap();
    let phone = devices.iter().find(|d| d.device_id == "phone").unwrap();
    assert_eq!(phone.push.apns_voip, None);
    assert_eq!(phone.push.apns_alert.as_deref(), Some(alert.as_str()));
    let tablet = devices.iter().find(|d| d.device_id == "tablet").unwrap();
    assert_eq!(
        tablet.push.apns_voip.as_deref(),
        Some("ef".repeat(32).as_str())
    );
    // The device re-registers with a new token: a late 410 for the old one
    // changes nothing.
    s.upsert_device(&ios("phone", "bob", &"01".repeat(32), T0 + 1))
        .unwrap();
    assert!(!s.remove_push_token(&voip).unwrap());
    let phone = s.devices_of("bob").unwrap();
    assert!(
        phone
            .iter()
            .any(|d| d.push.apns_voip == Some("01".repeat(32)))
    );
}

#[test]
fn call_updates_are_compare_and_set() {
    let stores = conformance_stores("call_updates_are_compare_and_set");
    for (name, one, _) in &stores.each {
        eprintln!("store: {name}");
        call_updates_are_compare_and_set_on(&**one);
    }
}

fn call_updates_are_compare_and_set_on(s: &dyn Store) {
    s.insert_call(&call("c1", "alice", "bob", T0)).unwrap();
    let read = s.get_call("c1").unwrap().unwrap();
    assert_eq!(read.version, 1);
    // Two writers read version 1; both try to accept on different devices.
    let mut first = read.value.clone();
    let mut second = read.value.clone();
    let mut fx = Vec::new();
    first.accept("bob", "bob-d", T0 + 1, &mut fx).unwrap();
    second.decline("bob", "bob-d", T0 + 1, &mut fx).unwrap();
    assert!(s.update_call(&first, read.version).unwrap());
    assert!(
        !s.update_call(&second, read.version).unwrap(),
        "the stale writer must lose"
    );
    let now = s.get_call("c1").unwrap().unwrap();
    assert_eq!(now.version, 2);
    assert_eq!(now.value.state, CallState::Connecting);
    assert!(s.get_call("nope").unwrap().is_none());
}

#[test]
fn recent_calls_and_live_calls() {
    let stores = conformance_stores("recent_calls_and_live_calls");
    for (name, one, _) in &stores.each {
        eprintln!("store: {name}");
        recent_calls_and_live_calls_on(&**one);
    }
}

fn recent_calls_and_live_calls_on(s: &dyn Store) {
    s.insert_call(&call("c1", "alice", "bob", T0)).unwrap();
    s.insert_call(&call("c2", "carol", "bob", T0 + 5)).unwrap();
    let mut ended = call("c3", "bob", "dave", T0 + 9);
    ended.cancel("bob", T0 + 10, &mut Vec::new()).unwrap();
    s.insert_call(&ended).unwrap();
    let ids: Vec<String> = s
        .calls_of("bob", 10)
        .unwrap()
        .into_iter()
        .map(|c| c.call_id)
        .collect();
    assert_eq!(ids, vec!["c3", "c2", "c1"]);
    assert_eq!(s.calls_of("bob", 1).unwrap().len(), 1);
    let mut live: Vec<String> = s
        .live_calls()
        .unwrap()
        .into_iter()
        .map(|c| c.value.call_id)
        .collect();
    live.sort();
    assert_eq!(live, vec!["c1", "c2"]);
    let live_of = |user: &str| {
        let mut ids: Vec<String> = s
            .live_calls_of(user)
            .unwrap()
            .into_iter()
            .map(|c| c.call_id)
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(live_of("bob"), ["c1", "c2"]);
    assert_eq!(live_of("carol"), ["c2"]);
    assert!(live_of("dave").is_empty(), "c3 ended");
    // A call that ends leaves the index.
    let read = s.get_call("c1").unwrap().unwrap();
    let mut over = read.value.clone();
    over.cancel("alice", T0 + 11, &mut Vec::new()).unwrap();
    assert!(s.update_call(&over, read.version).unwrap());
    assert_eq!(live_of("bob"), ["c2"]);
    assert!(live_of("alice").is_empty());
}

#[test]
fn idempotency_keeps_the_first_outcome_until_it_expires() {
    let stores = conformance_stores("idempotency_keeps_the_first_outcome_until_it_expires");
    for (name, one, _) in &stores.each {
        eprintln!("store: {name}");
        idempotency_keeps_the_first_outcome_until_it_expires_on(&**one);
    }
}

fn idempotency_keeps_the_first_outcome_until_it_expires_on(s: &dyn Store) {
    let record = |hash: &str, body: &str, expires_at| IdempotencyRecord {
        user_id: "alice".into(),
        key: "k".into(),
        request_hash: hash.into(),
        status: 201,
        body: body.into(),
        expires_at,
    };
    let first = s
        .put_idempotency(&record("h1", "first", T0 + 1000), T0)
        .unwrap();
    assert_eq!(first.body, "first");
    let second = s
        .put_idempotency(&record("h2", "second", T0 + 1000), T0 + 1)
        .unwrap();
    assert_eq!(
        (second.request_hash.as_str(), second.body.as_str()),
        ("h1", "first")
    );
    assert!(s.get_idempotency("alice", "k", T0 + 2).unwrap().is_some());
    assert!(
        s.get_idempotency("bob", "k", T0 + 2).unwrap().is_none(),
        "keys are per user"
    );
    assert!(
        s.get_idempotency("alice", "k", T0 + 1000)
            .unwrap()
            .is_none(),
        "expired"
    );
    let later = s
        .put_idempotency(&record("h3", "later", T0 + 5000), T0 + 2000)
        .unwrap();
    assert_eq!(later.body, "later");
    assert_eq!(s.expire_idempotency(T0 + 6000).unwrap(), 1);
}

#[test]
fn everything_survives_reopening_the_file() {
    let dir = std::env::temp_dir().join(format!("switchboard-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("control.db");
    let _ = std::fs::remove_file(&path);
    {
        let s = SqliteStore::open(&path).unwrap();
        s.upsert_device(&ios("phone", "alice", &"ab".repeat(32), T0))
            .unwrap();
        s.insert_call(&call("c1", "alice", "bob", T0)).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.devices_of("alice").unwrap().len(), 1);
    let c = s.get_call("c1").unwrap().unwrap();
    assert_eq!(c.value, call("c1", "alice", "bob", T0));
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One store as two nodes see it: `name`, and a handle for each node.
type NodesOfOneStore = (&'static str, Arc<dyn Store>, Arc<dyn Store>);

/// The stores every check runs against, each as two handles on one store as
/// two nodes would hold them (for SQLite on a file, two connections; for
/// Redis, two connection pools), with the Redis server they need.
struct Stores {
    each: Vec<NodesOfOneStore>,
    _redis: RedisServer,
}

fn conformance_stores(tag: &str) -> Stores {
    let redis = RedisServer::start();
    let redis_node =
        || -> Arc<dyn Store> { Arc::new(RedisStore::connect(&redis.url(), tag).unwrap()) };
    let mut each = sqlite_stores(tag);
    each.push(("redis, two pools", redis_node(), redis_node()));
    Stores {
        each,
        _redis: redis,
    }
}

fn sqlite_stores(tag: &str) -> Vec<NodesOfOneStore> {
    let memory: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let dir = std::env::temp_dir().join(format!(
        "switchboard-conformance-{}-{tag}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("control.db");
    vec![
        ("sqlite in memory", memory.clone(), memory),
        (
            "sqlite file, two connections",
            Arc::new(SqliteStore::open(&path).unwrap()),
            Arc::new(SqliteStore::open(&path).unwrap()),
        ),
    ]
}

fn group_call(id: &str, caller: &str, callees: &[&str], at: UnixMillis) -> Call {
    let callees = callees
        .iter()
        .map(|c| Callee {
            user_id: (*c).into(),
            participant_id: format!("p-{c}"),
            devices: vec![format!("{c}-d")],
            busy: false,
            unsupported: false,
            outdated: Vec::new(),
        })
        .collect();
    Call::create(
        id.into(),
        CallType::Audio,
        (caller.into(), format!("p-{caller}"), format!("{caller}-d")),
        callees,
        Timeouts::default(),
        at,
    )
    .0
}

#[test]
fn conformance_crossing_is_one_atomic_step() {
    use control::store::Insertion::{Crossed, Inserted};
    for (name, one, _) in &conformance_stores("rules").each {
        let s = &**one;
        assert_eq!(
            s.insert_call_unless_crossed(&call("ab", "alice", "bob", T0))
                .unwrap(),
            Inserted,
            "{name}"
        );
        // Bob calls Alice while Alice's call rings him: crossed, not stored.
        assert_eq!(
            s.insert_call_unless_crossed(&call("ba", "bob", "alice", T0 + 1))
                .unwrap(),
            Crossed {
                call_id: "ab".into()
            },
            "{name}"
        );
        assert!(
            s.get_call("ba").unwrap().is_none(),
            "{name}: a crossed call is not stored"
        );
        // The same direction again is not a crossing; neither is a group.
        assert_eq!(
            s.insert_call_unless_crossed(&call("ab2", "alice", "bob", T0 + 2))
                .unwrap(),
            Inserted,
            "{name}"
        );
        assert_eq!(
            s.insert_call_unless_crossed(&group_call("g", "bob", &["alice", "carol"], T0 + 3))
                .unwrap(),
            Inserted,
            "{name}"
        );
        // Once Alice's calls stop ringing, Bob's call is a call of its own.
        for id in ["ab", "ab2"] {
            let read = s.get_call(id).unwrap().unwrap();
            let mut over = read.value.clone();
            over.cancel("alice", T0 + 4, &mut Vec::new()).unwrap();
            assert!(s.update_call(&over, read.version).unwrap());
        }
        assert_eq!(
            s.insert_call_unless_crossed(&call("ba2", "bob", "alice", T0 + 5))
                .unwrap(),
            Inserted,
            "{name}"
        );
    }
}

#[test]
fn conformance_crossed_creates_at_the_same_instant_make_one_call() {
    use control::store::Insertion::{Crossed, Inserted};
    for (name, node_a, node_b) in &conformance_stores("race").each {
        for round in 0..100 {
            let (x, y) = (format!("x{round}"), format!("y{round}"));
            let start = Arc::new(Barrier::new(2));
            let racer = |store: Arc<dyn Store>, from: String, to: String| {
                let start = start.clone();
                std::thread::spawn(move || {
                    let c = call(&format!("{from}-{to}"), &from, &to, T0);
                    start.wait();
                    store.insert_call_unless_crossed(&c).unwrap()
                })
            };
            let a = racer(node_a.clone(), x.clone(), y.clone());
            let b = racer(node_b.clone(), y.clone(), x.clone());
            let outcomes = [a.join().unwrap(), b.join().unwrap()];
            let inserted = outcomes.iter().filter(|o| **o == Inserted).count();
            assert_eq!(inserted, 1, "{name}, round {round}: {outcomes:?}");
            let crossed_into = outcomes.iter().find_map(|o| match o {
                Crossed { call_id } => Some(call_id.clone()),
                Inserted => None,
            });
            let stored = node_a.calls_of(&x, 10).unwrap();
            assert_eq!(
                stored.len(),
                1,
                "{name}, round {round}: one call between them"
            );
            assert_eq!(
                crossed_into,
                Some(stored[0].call_id.clone()),
                "{name}, round {round}"
            );
        }
    }
}

fn event(id: &str, call_id: Option<&str>, endpoint: &str, at: UnixMillis) -> NewEvent {
    NewEvent {
        event_id: id.into(),
        endpoint: endpoint.into(),
        call_id: call_id.map(str::to_string),
        kind: "call.test".into(),
        occurred_at: at,
        data: "{}".into(),
    }
}

/// The event outbox, through two handles of one store: events are queued
/// only with the write that wins, numbered per call across handles (one
/// number per event, shared by its endpoints), handed out one per (endpoint,
/// call) in order, retried later, and trimmed by age and size.
#[test]
fn conformance_the_event_outbox_numbers_orders_and_bounds() {
    for (name, a, b) in &conformance_stores("outbox").each {
        let c = call("outbox-call", "alice", "bob", 1_000);
        let id = c.call_id.clone();
        a.insert_call_with_events(
            &c,
            &[
                event("e1", Some(&id), "x", 1_000),
                event("e1", Some(&id), "y", 1_000),
            ],
        )
        .unwrap();
        let v = b.get_call(&id).unwrap().unwrap();
        let mut next = v.value.clone();
        next.answered_at = Some(2_000);
        // The stale writer loses, and so do its events.
        assert!(
            b.update_call_with_events(&next, v.version, &[event("e2", Some(&id), "x", 2_000)])
                .unwrap(),
            "{name}"
        );
        assert!(
            !a.update_call_with_events(&next, v.version, &[event("lost", Some(&id), "x", 2_000)])
                .unwrap(),
            "{name}"
        );
        a.queue_events(&[
            event("e3", Some(&id), "x", 3_000),
            event("d1", None, "x", 3_000),
        ])
        .unwrap();
        assert_eq!(a.queued_events().unwrap(), 5, "{name}");

        // Per (endpoint, call): only the head is due; events without a call are always due.
        let due = |s: &Arc<dyn Store>| {
            let mut d: Vec<(String, String, u64)> = s
                .due_events(10_000, 100)
                .unwrap()
                .into_iter()
                .map(|q| (q.event.endpoint, q.event.event_id, q.sequence))
                .collect();
            d.sort();
            d
        };
        assert_eq!(
            due(b),
            [
                ("x".into(), "d1".into(), 0),
                ("x".into(), "e1".into(), 1),
                ("y".into(), "e1".into(), 1)
            ],
            "{name}"
        );
        let head = a
            .due_events(10_000, 100)
            .unwrap()
            .into_iter()
            .find(|q| q.event.event_id == "e1" && q.event.endpoint == "x")
            .unwrap();
        // Retried later: nothing of that call at x is due until then.
        b.event_retry(head.row, 1, 20_000).unwrap();
        assert!(
            due(a)
                .iter()
                .all(|(e, id, _)| !(e == "x" && id.starts_with('e'))),
            "{name}"
        );
        b.event_delivered(head.row).unwrap();
        assert!(due(a).contains(&("x".into(), "e2".into(), 2)), "{name}");
        let e2 = a
            .due_events(10_000, 100)
            .unwrap()
            .into_iter()
            .find(|q| q.event.event_id == "e2")
            .unwrap();
        a.event_delivered(e2.row).unwrap();
        assert!(due(b).contains(&("x".into(), "e3".into(), 3)), "{name}");

        // Bounds: by age, then the oldest beyond the size.
        assert_eq!(
            b.trim_events(1_500, 100).unwrap(),
            (1, 0),
            "{name}: y's e1 is older than 1.5 s"
        );
        assert_eq!(a.trim_events(0, 1).unwrap(), (0, 1), "{name}");
        assert_eq!(a.queued_events().unwrap(), 1, "{name}");
    }
}

/// Redis with the append-only file (`appendfsync everysec`, the documented
/// policy), killed with `kill -9`: while it is down every call answers
/// `Unavailable` promptly (the API's 503 `store_unavailable`) and nothing is
/// half-written; after a restart what was written more than the fsync
/// interval before is there, and the same handle works again.
#[test]
fn redis_keeps_what_it_acknowledged_across_kill_9() {
    use control::store::StoreError;
    let mut redis = RedisServer::start_durable();
    let s = RedisStore::connect(&redis.url(), "durable").unwrap();
    s.upsert_device(&ios("phone", "alice", &"ab".repeat(32), T0))
        .unwrap();
    s.insert_call_unless_crossed(&call("c1", "alice", "bob", T0))
        .unwrap();
    let read = s.get_call("c1").unwrap().unwrap();
    let mut answered = read.value.clone();
    answered
        .accept("bob", "bob-d", T0 + 1, &mut Vec::new())
        .unwrap();
    assert!(s.update_call(&answered, read.version).unwrap());
    // Past the fsync interval (1 s), with room for a busy machine.
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    redis.kill9();

    let began = std::time::Instant::now();
    match s.get_call("c1") {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(matches!(
        s.insert_call_unless_crossed(&call("c2", "carol", "dave", T0)),
        Err(StoreError::Unavailable(_))
    ));
    assert!(
        began.elapsed() < std::time::Duration::from_secs(10),
        "a down Redis must fail requests, not hang them: {:?}",
        began.elapsed()
    );

    redis.restart();
    // The pool drops connections that broke; a few calls may still meet one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let stored = loop {
        match s.get_call("c1") {
            Ok(call) => break call.unwrap(),
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("after restart: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("Redis did not come back: {e}"),
        }
    };
    assert_eq!(stored.value, answered);
    assert_eq!(stored.version, 2);
    assert_eq!(s.devices_of("alice").unwrap().len(), 1);
    assert!(
        s.get_call("c2").unwrap().is_none(),
        "the insert refused while Redis was down did not happen"
    );
    let live: Vec<String> = s
        .live_calls()
        .unwrap()
        .into_iter()
        .map(|c| c.value.call_id)
        .collect();
    assert_eq!(live, ["c1"]);
}

/// The timer index: a ringing call is due at its ring deadline, not
/// before; once answered it is due at its connect deadline; once ended,
/// never. Two handles see the same index (any node fires any timer).
#[test]
fn conformance_calls_are_due_at_their_next_deadline() {
    for (name, a, b) in &conformance_stores("timers").each {
        let c = call("timed", "alice", "bob", T0);
        let ring_deadline = c.ring_deadline.unwrap();
        a.insert_call_unless_crossed(&c).unwrap();
        assert!(b.due_calls(ring_deadline - 1).unwrap().is_empty(), "{name}");
        assert_eq!(b.due_calls(ring_deadline).unwrap(), ["timed"], "{name}");
        let read = b.get_call("timed").unwrap().unwrap();
        let mut answered = read.value.clone();
        answered
            .accept("bob", "bob-d", T0 + 1, &mut Vec::new())
            .unwrap();
        let connect_deadline = answered.next_deadline().unwrap();
        assert!(b.update_call(&answered, read.version).unwrap());
        assert!(
            a.due_calls(connect_deadline - 1).unwrap().is_empty(),
            "{name}: no longer due at the ring deadline"
        );
        assert_eq!(a.due_calls(connect_deadline).unwrap(), ["timed"], "{name}");
        let read = a.get_call("timed").unwrap().unwrap();
        let mut over = read.value.clone();
        over.handle_timeout(connect_deadline, &mut Vec::new());
        assert_eq!(over.state, CallState::Ended, "{name}");
        assert!(a.update_call(&over, read.version).unwrap());
        assert!(b.due_calls(u64::MAX / 2).unwrap().is_empty(), "{name}");
    }
}

/// The call limits of a cluster live in Redis: every node takes from the
/// same buckets, by the same rule as a node's own (a burst of `count`,
/// refilled evenly; all keys or none), and a refund gives one back.
#[test]
fn shared_rate_limits_follow_the_local_rule_across_nodes() {
    use control::rate_limit::{Limiter, Rate};
    use std::time::{Duration, Instant};
    let redis = RedisServer::start();
    let node = || {
        Limiter::shared(
            Rate::per_minute(3),
            "creates",
            Arc::new(RedisStore::connect(&redis.url(), "limits").unwrap()),
        )
    };
    let (one, two) = (node(), node());
    let now = Instant::now();
    one.check("alice", now).unwrap();
    two.check("alice", now).unwrap();
    one.check("alice", now).unwrap();
    let wait = two.check("alice", now).unwrap_err();
    assert!(
        wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
        "one token every 20 s: {wait:?}"
    );
    // All or none: bob is not charged when alice has nothing left.
    assert!(one.check_all(&["bob", "alice"], now).is_err());
    for _ in 0..3 {
        two.check("bob", now).unwrap();
    }
    assert!(one.check("bob", now).is_err());
    one.refund("bob", now);
    two.check("bob", now).unwrap();
    assert!(two.check("bob", now).is_err());
}

/// Push de-duplication shared by the nodes: the first claim of a push
/// wins on every node, a different push (another ring epoch) is its own.
#[test]
fn a_push_is_claimed_once_across_nodes() {
    use control::push::dispatch::PushClaims;
    let redis = RedisServer::start();
    let one = RedisStore::connect(&redis.url(), "claims").unwrap();
    let two = RedisStore::connect(&redis.url(), "claims").unwrap();
    let ttl = std::time::Duration::from_secs(3600);
    assert!(one.claim("c1\nb-ios\nring\n5", ttl).unwrap());
    assert!(!two.claim("c1\nb-ios\nring\n5", ttl).unwrap());
    assert!(!one.claim("c1\nb-ios\nring\n5", ttl).unwrap());
    assert!(two.claim("c1\nb-ios\nring\n6", ttl).unwrap());
    // A claim lapses with its TTL.
    assert!(
        one.claim("short", std::time::Duration::from_millis(50))
            .unwrap()
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(two.claim("short", ttl).unwrap());
}

/// Rings waiting for their acknowledgement, in Redis: due at their
/// deadline, not before, and handed to exactly one of the nodes asking.
#[test]
fn a_due_ring_is_handed_to_one_node() {
    use control::ringing::{AckDeadlines, PendingRing};
    let redis = RedisServer::start();
    let one = RedisStore::connect(&redis.url(), "acks").unwrap();
    let two = RedisStore::connect(&redis.url(), "acks").unwrap();
    let ring = |device: &str| PendingRing {
        call_id: "c1".into(),
        user_id: "bob".into(),
        device_id: device.into(),
    };
    one.add(ring("b-ios"), T0 + 1_500);
    two.add(ring("b-android"), T0 + 3_000);
    assert!(two.take_due(T0 + 1_499).is_empty());
    assert_eq!(two.take_due(T0 + 1_500), [ring("b-ios")]);
    assert!(one.take_due(T0 + 1_500).is_empty(), "handed out once");
    assert_eq!(one.take_due(T0 + 5_000), [ring("b-android")]);
    assert!(two.take_due(T0 + 5_000).is_empty());
}

/// Through Redis Sentinel (`redis+sentinel://`), the store follows a
/// failover: the primary is killed with `kill -9`; while Sentinel decides,
/// calls fail `Unavailable` promptly (503 `store_unavailable` at the API);
/// then the store works on the promoted replica (each new connection asks
/// Sentinel where the primary is) with what was replicated before, and a
/// write to a replica is `Unavailable` too, never a backend fault.
#[test]
fn through_sentinel_the_store_follows_a_failover() {
    use control::store::StoreError;
    use redis_server::{Sentinel, has_role, primary_offset, replica_offset};
    use std::time::{Duration, Instant};
    let mut primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let sentinel = Sentinel::start(&primary, "calls");
    // A failover needs a replica in sync that Sentinel knows of.
    let sentinel_client =
        redis::Client::open(format!("redis://127.0.0.1:{}/", sentinel.port)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let replicas: Result<Vec<std::collections::HashMap<String, String>>, _> =
            redis::cmd("SENTINEL")
                .arg("REPLICAS")
                .arg("calls")
                .query(&mut sentinel_client.get_connection().unwrap());
        let known = replicas.is_ok_and(|r| {
            r.iter()
                .any(|r| r.get("flags").is_some_and(|f| f == "slave"))
        });
        if known && replica_offset(replica.port).is_some_and(|o| o > 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sentinel never saw the replica"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let url = format!("redis+sentinel://127.0.0.1:{}/calls", sentinel.port);
    let s = RedisStore::connect(&url, "failover").unwrap();
    s.upsert_device(&ios("phone", "alice", &"cd".repeat(32), T0))
        .unwrap();
    s.insert_call_unless_crossed(&call("c1", "alice", "bob", T0))
        .unwrap();
    let read = s.get_call("c1").unwrap().unwrap();
    let mut answered = read.value.clone();
    answered
        .accept("bob", "bob-d", T0 + 1, &mut Vec::new())
        .unwrap();
    assert!(s.update_call(&answered, read.version).unwrap());
    // Replication is asynchronous: kill only once the replica has it all.
    let deadline = Instant::now() + Duration::from_secs(10);
    while replica_offset(replica.port) < primary_offset(primary.port) {
        assert!(Instant::now() < deadline, "the replica never caught up");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A write sent to the replica itself: unavailable, not a fault.
    let on_replica = RedisStore::connect(&replica.url(), "failover").unwrap();
    match on_replica.insert_call_unless_crossed(&call("c9", "erin", "frank", T0)) {
        Err(StoreError::Unavailable(e)) => assert!(e.contains("read only"), "{e}"),
        other => panic!("a write to a replica answered {other:?}"),
    }

    primary.kill9();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(30);
    let stored = loop {
        let asked = Instant::now();
        match s.get_call("c1") {
            Ok(call) => break call.unwrap(),
            Err(StoreError::Unavailable(e)) => {
                assert!(
                    asked.elapsed() < Duration::from_secs(10),
                    "a failing call must not hang: {:?}",
                    asked.elapsed()
                );
                assert!(Instant::now() < deadline, "no failover in 30 s: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("during the failover: {e}"),
        }
    };
    eprintln!(
        "the store answered again {:?} after the kill",
        killed.elapsed()
    );
    assert!(has_role(replica.port, "master"), "the replica was promoted");
    assert_eq!(stored.value, answered);
    assert_eq!(s.devices_of("alice").unwrap().len(), 1);
    // Writes go to the new primary.
    let mut ended = stored.value.clone();
    ended.end("alice", T0 + 2, &mut Vec::new()).unwrap();
    assert!(s.update_call(&ended, stored.version).unwrap());
    assert!(s.live_calls().unwrap().is_empty());
}

/// `rediss://`: the store speaks TLS to a Redis with a private CA it is
/// told to trust, and refuses one it is not (the system's roots do not
/// hold the test CA) or a plain connection to the TLS port.
#[test]
fn over_tls_the_store_trusts_the_ca_it_is_given_and_no_other() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("switchboard-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("redis.crt"), dir.join("redis.key"));
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    let (_redis, tls_port) = RedisServer::start_tls(&cert, &key);

    let url = format!("rediss://127.0.0.1:{tls_port}/");
    let trusted = RedisStore::connect_trusting(&url, "tls", Some(ca.pem().as_bytes())).unwrap();
    trusted
        .upsert_device(&ios("phone", "alice", &"ef".repeat(32), T0))
        .unwrap();
    assert_eq!(trusted.devices_of("alice").unwrap().len(), 1);

    match RedisStore::connect(&url, "tls") {
        Err(e) => assert!(e.to_string().contains("UnknownIssuer"), "{e}"),
        Ok(_) => panic!("a certificate from an unknown CA was accepted"),
    }
    assert!(
        RedisStore::connect(&format!("redis://127.0.0.1:{tls_port}/"), "tls").is_err(),
        "plain TCP to the TLS port worked"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Feature flags: a flag is set by compare-and-set on its version (two
/// operators changing it from one version: the second is told), each
/// change is recorded with who made it, and both handles (two nodes) see
/// the same flags and history, newest first.
#[test]
fn conformance_flags_are_compare_and_set_and_every_change_is_recorded() {
    use control::flags::{Flag, FlagState};
    use control::store::FlagChange;
    for (name, a, b) in &conformance_stores("flags").each {
        assert!(a.flags().unwrap().is_empty(), "{name}");
        let rollout = |percent| Flag {
            state: FlagState::Rollout,
            percent: Some(percent),
            ..Flag::unset("video_calls")
        };
        let change = |by: &str, old: Option<Flag>, new: Flag, at| FlagChange {
            at,
            by: by.into(),
            name: new.name.clone(),
            old,
            new,
        };
        let first = change("ops-key", None, rollout(1.0), T0);
        assert!(a.put_flag(&first, 0).unwrap(), "{name}");
        // Another operator, still looking at version 0: refused.
        let stale = change("other-key", None, Flag::unset("video_calls"), T0 + 1);
        assert!(!b.put_flag(&stale, 0).unwrap(), "{name}");
        let flags = b.flags().unwrap();
        assert_eq!(flags.len(), 1, "{name}");
        assert_eq!(
            (&flags[0].value, flags[0].version),
            (&rollout(1.0), 1),
            "{name}"
        );
        let second = change("ops-key", Some(rollout(1.0)), rollout(10.0), T0 + 2);
        assert!(b.put_flag(&second, 1).unwrap(), "{name}");
        let other = change("ops-key", None, Flag::unset("new_ringtone"), T0 + 3);
        assert!(a.put_flag(&other, 0).unwrap(), "{name}");
        let names: Vec<String> = a
            .flags()
            .unwrap()
            .into_iter()
            .map(|f| f.value.name)
            .collect();
        assert_eq!(names, ["new_ringtone", "video_calls"], "{name}");
        let newest_first = [other.clone(), second, first];
        assert_eq!(a.flag_changes(10).unwrap(), newest_first, "{name}");
        assert_eq!(b.flag_changes(1).unwrap(), [other], "{name}");
        assert!(a.flag_changes(0).unwrap().is_empty(), "{name}");
    }
}
