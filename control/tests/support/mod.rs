//! What the push tests share: the stand-ins for APNs and FCM, a call
//! service wired to the real push dispatcher, and devices to ring.

#![allow(dead_code)] // each test file uses a different part

pub mod apns;
pub mod fcm;
pub mod tls;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use control::call::{Call, CallType, CallerDisplay, Timeouts};
use control::device::{ApnsEnvironment, Capabilities, Device, Platform, PushTokens};
use control::push::apns::{ApnsClient, ApnsConfig};
use control::push::dispatch::{DispatchConfig, Providers, PushDispatcher};
use control::push::fcm::{FcmClient, FcmConfig};
use control::push::metrics::PushMetrics;
use control::ringing::HubRinger;
use control::service::{CallService, NewCall};
use control::store::{SqliteStore, Store};

pub const IPHONE_VOIP: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
pub const IPHONE_ALERT: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
pub const PIXEL_FCM: &str = "fcm-pixel:APA91bHun4MxP5egoKMwt2KZFBaFUH";

/// A scripted answer of a stand-in: (HTTP status, reason or error code,
/// `Retry-After` seconds).
pub type Answer = (u16, &'static str, Option<u64>);

/// Answers a stand-in gives a token, in order, before accepting it again.
#[derive(Default)]
pub struct Script(Mutex<HashMap<String, VecDeque<Answer>>>);

impl Script {
    pub fn set(&self, token: &str, answers: &[Answer]) {
        let answers = answers.iter().copied().collect();
        self.0.lock().unwrap().insert(token.to_string(), answers);
    }

    pub fn next(&self, token: &str) -> Option<Answer> {
        self.0
            .lock()
            .unwrap()
            .get_mut(token)
            .and_then(VecDeque::pop_front)
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn device(user: &str, id: &str, platform: Platform, push: PushTokens) -> Device {
    Device {
        device_id: id.into(),
        user_id: user.into(),
        platform,
        push,
        apns_environment: (platform == Platform::Ios).then_some(ApnsEnvironment::Sandbox),
        bundle_id: (platform == Platform::Ios).then(|| apns::BUNDLE_ID.to_string()),
        app_version: None,
        // As our client core and plugin register phones.
        capabilities: Capabilities {
            video: true,
            callkit: platform == Platform::Ios,
            telecom: platform == Platform::Android,
        },
        last_seen_at: now_ms(),
        region: None,
    }
}

/// Bob's phones: an iPhone (VoIP + alert tokens), a Pixel (FCM) and a
/// browser (no push).
pub fn register_bob(store: &dyn Store) {
    store
        .upsert_device(&device(
            "bob",
            "iphone",
            Platform::Ios,
            PushTokens {
                apns_voip: Some(IPHONE_VOIP.into()),
                apns_alert: Some(IPHONE_ALERT.into()),
                fcm: None,
            },
        ))
        .unwrap();
    store
        .upsert_device(&device(
            "bob",
            "pixel",
            Platform::Android,
            PushTokens {
                fcm: Some(PIXEL_FCM.into()),
                ..PushTokens::default()
            },
        ))
        .unwrap();
    store
        .upsert_device(&device(
            "bob",
            "laptop",
            Platform::Web,
            PushTokens::default(),
        ))
        .unwrap();
}

pub struct Harness {
    pub apns: apns::FakeApns,
    pub fcm: fcm::FakeFcm,
    pub store: Arc<dyn Store>,
    pub service: CallService,
    pub dispatcher: Arc<PushDispatcher>,
    pub metrics: Arc<PushMetrics>,
    pub registry: prometheus::Registry,
}

pub fn apns_client(apns: &apns::FakeApns) -> ApnsClient {
    ApnsClient::new(ApnsConfig {
        key_pem: apns.key_pem.clone(),
        key_id: apns::KEY_ID.into(),
        team_id: apns::TEAM_ID.into(),
        default_bundle_id: apns::BUNDLE_ID.into(),
        production_url: apns.server.url.clone(),
        sandbox_url: apns.server.url.clone(),
        extra_root_pem: Some(apns.server.ca_pem.clone()),
    })
    .unwrap()
}

/// A call service whose ringer has no device sockets, so every mobile
/// device it rings is pushed at once through `dispatcher`.
pub fn ringing_service(
    store: Arc<dyn Store>,
    dispatcher: Arc<PushDispatcher>,
    ring_ms: u64,
) -> CallService {
    let ringer = Arc::new(HubRinger::new(Arc::default(), store.clone(), dispatcher));
    service_with(store, ringer, ring_ms)
}

/// A call service on `store` delivering through `ringer`.
pub fn service_with(
    store: Arc<dyn Store>,
    ringer: Arc<dyn control::service::Ringer>,
    ring_ms: u64,
) -> CallService {
    CallService {
        store,
        ringer,
        metrics: None,
        timeouts: Timeouts {
            ring_ms,
            connect_ms: 20_000,
        },
        max_ringing_devices: 5,
        event_webhooks: Vec::new(),
        placer: None,
        flags: Default::default(),
        min_app_version: None,
        video_fallback: Default::default(),
    }
}

pub fn call_bob(service: &CallService, display_name: Option<&str>) -> Call {
    let callees = ["bob".to_string()];
    let new = NewCall {
        call_id: uuid::Uuid::new_v4().to_string(),
        caller: "alice",
        device_id: "alice-phone",
        callees: &callees,
        call_type: CallType::Video,
        caller_display: CallerDisplay {
            display_name: display_name.map(str::to_string),
            avatar_url: None,
        },
        data_channels: false,
        caller_region: None,
    };
    service.create(new, now_ms()).unwrap()
}

pub fn cancel(service: &CallService, call_id: &str) {
    service
        .update(call_id, |c, fx| c.cancel("alice", now_ms(), fx))
        .unwrap();
}

/// The APNs and FCM stand-ins, the real clients and dispatcher, and a
/// ringing call service in front.
pub async fn harness(ring_ms: u64, config: DispatchConfig) -> Harness {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("control=debug")
        .with_test_writer()
        .try_init();
    let apns = apns::FakeApns::start().await;
    let fcm = fcm::FakeFcm::start().await;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    register_bob(&*store);
    let providers = Providers {
        apns: Some(apns_client(&apns)),
        fcm: Some(
            FcmClient::new(FcmConfig {
                service_account_json: fcm.service_account_json.clone(),
                project_id: None,
                base_url: fcm.server.url.clone(),
                extra_root_pem: Some(fcm.server.ca_pem.clone()),
            })
            .unwrap(),
        ),
        webhook: None,
    };
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(PushMetrics::register(&registry).unwrap());
    let dispatcher = Arc::new(PushDispatcher::spawn(
        providers,
        config,
        store.clone(),
        Some(metrics.clone()),
    ));
    let service = ringing_service(store.clone(), dispatcher.clone(), ring_ms);
    Harness {
        apns,
        fcm,
        store,
        service,
        dispatcher,
        metrics,
        registry,
    }
}

impl Harness {
    pub fn call_bob(&self, display_name: Option<&str>) -> Call {
        call_bob(&self.service, display_name)
    }

    pub fn cancel(&self, call_id: &str) {
        cancel(&self.service, call_id)
    }

    /// A counter's value for one label set (0 if never touched).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }
}

/// A push sender that records every request (tests of who gets pushed).
#[derive(Default)]
pub struct RecordingPush(std::sync::Mutex<Vec<control::ringing::PushRequest>>);

impl control::ringing::PushSender for RecordingPush {
    fn send(&self, push: control::ringing::PushRequest) {
        self.0.lock().unwrap().push(push);
    }
}

impl RecordingPush {
    /// (call id, device id) of every ring push, sorted.
    pub fn rings_sent(&self) -> Vec<(String, String)> {
        use control::ringing::PushRequest;
        let mut rung: Vec<_> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|p| match p {
                PushRequest::Ring {
                    call_id, device_id, ..
                } => Some((call_id.clone(), device_id.clone())),
                _ => None,
            })
            .collect();
        rung.sort();
        rung
    }

    pub fn rings(&self, device: &str) -> usize {
        self.rings_sent()
            .iter()
            .filter(|(_, d)| d == device)
            .count()
    }

    pub fn cancels(&self, device: &str) -> Vec<control::call::StopReason> {
        use control::ringing::PushRequest;
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|p| match p {
                PushRequest::Cancel {
                    device_id, reason, ..
                } if device_id == device => Some(*reason),
                _ => None,
            })
            .collect()
    }
}
