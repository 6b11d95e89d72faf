//! Two users calling each other at the same instant, from two threads, on
//! the SQLite store: each time exactly one call results (the crossing check
//! and the insert are serialized per pair of users).

mod support;

use std::sync::{Arc, Barrier};

use control::call::{CallType, CallerDisplay};
use control::device::{Platform, PushTokens};
use control::service::{CallService, LoggingRinger, NewCall};
use control::store::{SqliteStore, Store};

const ROUNDS: usize = 100;

fn create(service: &CallService, caller: &str, callee: &str) -> String {
    let callees = [callee.to_string()];
    let device_id = format!("{caller}-web");
    let new = NewCall {
        call_id: uuid::Uuid::new_v4().to_string(),
        caller,
        device_id: &device_id,
        callees: &callees,
        call_type: CallType::Audio,
        caller_display: CallerDisplay::default(),
        data_channels: false,
        caller_region: None,
    };
    service.create(new, support::now_ms()).unwrap().call_id
}

#[test]
fn crossed_creates_at_the_same_instant_make_one_call() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    for i in 0..ROUNDS {
        for user in [format!("a{i}"), format!("b{i}")] {
            let id = format!("{user}-web");
            let device = support::device(&user, &id, Platform::Web, PushTokens::default());
            store.upsert_device(&device).unwrap();
        }
    }
    let service = Arc::new(support::service_with(
        store.clone(),
        Arc::new(LoggingRinger),
        30_000,
    ));
    let start = Arc::new(Barrier::new(2));
    let side = |me: &'static str, other: &'static str| {
        let (service, start) = (service.clone(), start.clone());
        std::thread::spawn(move || {
            (0..ROUNDS)
                .map(|i| {
                    start.wait();
                    create(&service, &format!("{me}{i}"), &format!("{other}{i}"))
                })
                .collect::<Vec<_>>()
        })
    };
    let (a, b) = (side("a", "b"), side("b", "a"));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    for i in 0..ROUNDS {
        assert_eq!(a[i], b[i], "round {i}: two calls were made");
        let calls = store.calls_of(&format!("a{i}"), 10).unwrap();
        assert_eq!(calls.len(), 1, "round {i}");
    }
}
