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
    let ringer = Arc::new(HubRinger::new(hub, store.clone(), before.clone()));
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
    let recovered = Arc::new(HubRinger::new(
        Arc::new(DeviceHub::default()),
        store.clone(),
        after.clone(),
    ));
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
}
