//! Call setups per second: create (ring one device) -> accept -> end, each
//! a full read / state machine / compare-and-set write through
//! `CallService`, on the embedded store (a SQLite file in WAL mode) and on
//! the cluster store (a real `redis-server` on loopback, AOF `everysec` as
//! deployed). The baseline in the same run: the same three state-machine
//! steps with no store at all.
//!
//! Run: `cargo bench -p control` (needs Debian's `redis-server`).

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::Duration;

use control::call::{Call, CallType, Callee, Timeouts};
use control::device::{Capabilities, Device, Platform, PushTokens};
use control::service::{CallService, LoggingRinger, NewCall};
use control::store::{RedisStore, SqliteStore, Store};
use criterion::{Criterion, criterion_group, criterion_main};

const T0: u64 = 1_764_000_000_000;

fn service(store: Arc<dyn Store>) -> CallService {
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
            region: None,
        })
        .unwrap();
    CallService {
        store,
        // Logs nothing at bench time: no subscriber is installed.
        ringer: Arc::new(LoggingRinger),
        metrics: None,
        timeouts: Timeouts::default(),
        max_ringing_devices: 3,
        event_webhooks: Vec::new(),
        placer: None,
        flags: Default::default(),
        min_app_version: None,
        video_fallback: Default::default(),
    }
}

fn setups(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("switchboard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("control.db");
    let _ = std::fs::remove_file(&path);
    let sqlite = service(Arc::new(SqliteStore::open(&path).unwrap()));
    let redis_server = redis_server::RedisServer::start_durable();
    let redis = service(Arc::new(
        RedisStore::connect(&redis_server.url(), "bench").unwrap(),
    ));
    let mut n = 0u64;
    for (name, svc) in [("call_setup_sqlite", &sqlite), ("call_setup_redis", &redis)] {
        c.bench_function(name, |b| {
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
                    data_channels: false,
                    caller_region: None,
                };
                svc.create(new, T0 + n).unwrap();
                svc.accept(&id, "bob", "b1", T0 + n).unwrap();
                svc.update(&id, |c, fx| c.end("alice", T0 + n, fx)).unwrap();
            })
        });
    }
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
                    unsupported: false,
                    outdated: Vec::new(),
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
    // Throughput per core of this process: concurrent setups for a few
    // seconds, divided by the CPU time the process spent (the store's own
    // process, redis-server, is not counted: it is the shared service).
    for (name, svc) in [("sqlite", &sqlite), ("redis", &redis)] {
        let (count, wall, cpu) = concurrent_setups(svc, 8, Duration::from_secs(5));
        println!(
            "call_setup_concurrent_{name}: {count} setups in {wall:.2?} with 8 threads: {:.0}/s, {:.0} per CPU-second of switchboard code",
            count as f64 / wall.as_secs_f64(),
            count as f64 / cpu.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// This process's CPU time so far (user + system, /proc/self/stat).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which may hold spaces) start at field 3.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // CLK_TCK is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

fn concurrent_setups(
    svc: &CallService,
    threads: usize,
    run: Duration,
) -> (u64, Duration, Duration) {
    let done = std::sync::atomic::AtomicU64::new(0);
    let cpu_before = process_cpu();
    let began = std::time::Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let done = &done;
            scope.spawn(move || {
                let caller = format!("caller{t}");
                let callees = ["bob".to_string()];
                let mut i = 0u64;
                while began.elapsed() < run {
                    i += 1;
                    let id = format!("concurrent-{t}-{i}");
                    let new = NewCall {
                        call_id: id.clone(),
                        caller: &caller,
                        device_id: "a1",
                        callees: &callees,
                        call_type: CallType::Audio,
                        caller_display: Default::default(),
                        data_channels: false,
                        caller_region: None,
                    };
                    let now = T0 + i;
                    svc.create(new, now).unwrap();
                    svc.accept(&id, "bob", "b1", now).unwrap();
                    svc.update(&id, |c, fx| c.end(&caller, now, fx)).unwrap();
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    (
        done.into_inner(),
        began.elapsed(),
        process_cpu() - cpu_before,
    )
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = setups
}
criterion_main!(benches);
