//! A restart inside a ring's acknowledgement window: the window lived in
//! memory, so the recovered ringer gives every still-unacknowledged ring a
//! fresh one and pushes the phones that do not acknowledge it; a ring
//! acknowledged before the restart is left alone.

mod support;

use support::RecordingPush;

use std::sync::Arc;
use std::time::{Duration, Instant};

use control::call::Call;
use control::ringing::{DeviceHub, HubRinger};
use control::store::{SqliteStore, Store};

#[test]
fn unacknowledged_rings_are_pushed_after_a_restart() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    support::register_bob(&*store);
    // Before the restart every one of bob's devices has its socket open, so
    // the rings go over the sockets and wait for acknowledgements.
    let hub = Arc::new(DeviceHub::default());
    let mut sockets = Vec::new();
    for device in ["iphone", "pixel", "laptop"] {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        hub.connect("bob", device, tx);
        sockets.push(rx);
    }
    let before = Arc::new(RecordingPush::default());
    // The app backend hears of every ring, and how it went out.
    let backend = vec![control::webhooks::Endpoint {
        url: "http://127.0.0.1:9/events".into(),
        secrets: vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
    }];
    let ringer = Arc::new(
        HubRinger::new(hub, store.clone(), before.clone()).with_event_webhooks(backend.clone()),
    );
    let first = support::service_with(store.clone(), ringer, 30_000);
    let acked: Call = support::call_bob(&first, None);
    let unacked: Call = support::call_bob(&first, None);
    first
        .update(&acked.call_id, |c, _| {
            c.acknowledge_ring("bob", "iphone", support::now_ms())
        })
        .unwrap();
    first
        .update(&acked.call_id, |c, _| {
            c.acknowledge_ring("bob", "pixel", support::now_ms())
        })
        .unwrap();
    assert_eq!(
        before.rings_sent(),
        [],
        "sockets were up: nothing pushed yet"
    );

    // The process dies inside the window; a new one starts on the store
    // with no sockets and an empty window list.
    let after = Arc::new(RecordingPush::default());
    let recovered = Arc::new(
        HubRinger::new(Arc::new(DeviceHub::default()), store.clone(), after.clone())
            .with_event_webhooks(backend),
    );
    // iphone, pixel, laptop of `unacked`; laptop of `acked`.
    assert_eq!(recovered.requeue_unacknowledged(), 4);
    recovered.check_acks(Instant::now());
    assert_eq!(
        after.rings_sent(),
        [],
        "each ring gets a fresh window first"
    );
    recovered.check_acks(Instant::now() + Duration::from_secs(2));
    let mut expected = vec![
        (unacked.call_id.clone(), "iphone".to_string()),
        (unacked.call_id.clone(), "pixel".to_string()),
    ];
    expected.sort();
    // Web devices are never pushed; acknowledged rings are not pushed again.
    assert_eq!(after.rings_sent(), expected);

    // `call.ringing` for the unacknowledged call: each device by socket,
    // then the phones again by push, in that order.
    let mut all = Vec::new();
    for _ in 0..10 {
        let due = store
            .due_events(support::now_ms() + 3_600_000, 100)
            .unwrap();
        let mine: Vec<_> = due
            .iter()
            .filter(|q| q.event.call_id.as_deref() == Some(&unacked.call_id))
            .collect();
        // A call's next event waits for the one before: one due at a time.
        assert!(mine.len() <= 1);
        let Some(head) = mine.first() else {
            break;
        };
        assert_eq!(head.event.kind, "call.ringing");
        let data: serde_json::Value = serde_json::from_str(&head.event.data).unwrap();
        all.push((
            head.sequence,
            format!(
                "{} {}",
                data["deviceId"].as_str().unwrap(),
                data["via"].as_str().unwrap()
            ),
        ));
        store.event_delivered(head.row).unwrap();
    }
    let order: Vec<&str> = all.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(
        order[..3].iter().filter(|d| d.ends_with("socket")).count(),
        3,
        "{order:?}"
    );
    let mut pushed: Vec<&str> = order[3..].to_vec();
    pushed.sort();
    assert_eq!(pushed, ["iphone push", "pixel push"]);
    let sequence: Vec<u64> = all.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        sequence,
        [1, 2, 3, 4, 5],
        "no call.created here: the support service has no endpoints"
    );
}
