//! Call setups per second on the embedded store: create (ring one device)
//! -> accept -> end, each a full read / state machine / compare-and-set write
//! through `CallService`, on a SQLite file in WAL mode. The baseline in the
//! same run: the same three state-machine steps with no store at all.
//!
//! Run: `cargo bench -p control`.

use std::sync::Arc;
use std::time::Duration;

use control::call::{Call, CallType, Callee, Timeouts};
use control::device::{Capabilities, Device, Platform, PushTokens};
use control::service::{CallService, LoggingRinger, NewCall};
use control::store::{SqliteStore, Store};
use criterion::{Criterion, criterion_group, criterion_main};

const T0: u64 = 1_764_000_000_000;

fn service(path: &std::path::Path) -> CallService {
    let _ = std::fs::remove_file(path);
    let store = SqliteStore::open(path).unwrap();
    store
        .upsert_device(&Device {
            device_id: "b1".into(),
            user_id: "bob".into(),
            platform: Platform::Web,
            push: PushTokens::default(),
            apns_environment: None,
            bundle_id: None,
            app_version: None,
            capabilities: Capabilities::default(),
            last_seen_at: T0,
        })
        .unwrap();
    CallService {
        store: Arc::new(store),
        // Logs nothing at bench time: no subscriber is installed.
        ringer: Arc::new(LoggingRinger),
        metrics: None,
        timeouts: Timeouts::default(),
        max_ringing_devices: 3,
        event_webhooks: Vec::new(),
    }
}

fn setups(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("switchboard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svc = service(&dir.join("control.db"));
    let mut n = 0u64;
    c.bench_function("call_setup_sqlite", |b| {
        b.iter(|| {
            n += 1;
            let id = format!("call-{n}");
            let callees = ["bob".to_string()];
            let new = NewCall {
                call_id: id.clone(),
                caller: "alice",
                device_id: "a1",
                callees: &callees,
                call_type: CallType::Audio,
                caller_display: Default::default(),
            };
            svc.create(new, T0 + n).unwrap();
            svc.accept(&id, "bob", "b1", T0 + n).unwrap();
            svc.update(&id, |c, fx| c.end("alice", T0 + n, fx)).unwrap();
        })
    });
    c.bench_function("call_setup_machine_only", |b| {
        b.iter(|| {
            let (mut call, _) = Call::create(
                "c".into(),
                CallType::Audio,
                ("alice".into(), "pa".into(), "a1".into()),
                vec![Callee {
                    user_id: "bob".into(),
                    participant_id: "pb".into(),
                    devices: vec!["b1".into()],
                    busy: false,
                }],
                Timeouts::default(),
                T0,
            );
            let mut fx = Vec::new();
            call.accept("bob", "b1", T0, &mut fx).unwrap();
            call.end("alice", T0, &mut fx).unwrap();
            call
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = setups
}
criterion_main!(benches);
