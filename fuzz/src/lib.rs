//! Fuzz targets as plain functions of `&[u8]`: whatever the bytes, none may
//! panic, hang or break an invariant it checks. `fuzz/libfuzzer` wraps each
//! in cargo-fuzz's `fuzz_target!` (nightly, run by `fuzz/run.sh`); the
//! committed corpora and every crash found (`fuzz/corpus/<target>/`) are
//! replayed through the same functions by `tests/corpora.rs` on stable, in
//! the suite.
//!
//! Each target is fed what a client controls on one of our inputs:
//! signaling frames, signaling commands (SDP and candidates) into the engine,
//! datagrams on the media port, TURN messages and TCP streams, push payloads
//! on a phone, and JSON bodies of the call API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sfu::engine::{
    Command, ConnId, DeviceLabel, Engine, EngineConfig, Event, Input, JoinRequest, Output,
};
use signaling::{ClientMessage, Permissions};

/// A target: whatever the bytes, it returns (or panics on a defect).
pub type Target = fn(&[u8]);

/// Every target, by the name its corpus folder and libFuzzer binary have.
pub const TARGETS: &[(&str, Target)] = &[
    ("signaling_codec", signaling_codec),
    ("engine_commands", engine_commands),
    ("engine_datagram", engine_datagram),
    ("turn_relay", turn_relay),
    ("turn_framing", turn_framing),
    ("push_payload", push_payload),
    ("call_api", call_api),
];

/// Signaling frames, both directions: a message that decodes encodes to
/// text that decodes to the same message (a server message of a type this
/// build does not know is read as `Unknown` and never sent).
pub fn signaling_codec(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let limit = signaling::DEFAULT_MAX_MESSAGE_BYTES;
    if let Ok(message) = signaling::decode_client(&text, limit) {
        let again = signaling::decode_client(&signaling::encode(&message), usize::MAX);
        assert_eq!(again.ok(), Some(message), "client message round trip");
    }
    // `Unknown` stands for types a newer server sends; nobody encodes it.
    if let Ok(message) = signaling::decode_server(&text, limit)
        && message != signaling::ServerMessage::Unknown
    {
        let again = signaling::decode_server(&signaling::encode(&message), usize::MAX);
        assert_eq!(again.ok(), Some(message), "server message round trip");
    }
}

const SERVER: &str = "192.0.2.10:7882";
const MEMBER: u64 = 1;

/// An engine with one publishing-capable member (connection 1) and a second
/// member, drained: the state a client's commands and datagrams land in.
fn engine_with_members(now: Instant) -> (Engine, Vec<String>) {
    static CERT: OnceLock<str0m::config::DtlsCert> = OnceLock::new();
    let cert = CERT
        .get_or_init(|| {
            str0m::crypto::from_feature_flags().install_process_default();
            str0m::crypto::from_feature_flags()
                .dtls_provider
                .generate_certificate()
                .expect("a DTLS certificate")
        })
        .clone();
    let config = EngineConfig::new(vec![SERVER.parse().expect("an address")]);
    let mut engine = Engine::new(config, cert, now);
    for conn in [MEMBER, 2] {
        let join = JoinRequest {
            room: "room".into(),
            user_id: format!("user-{conn}"),
            participant_id: format!("p-{conn}"),
            permissions: Permissions::ALL,
            auto_subscribe: true,
            device: DeviceLabel::unknown(),
        };
        engine.handle_input(Input::Command(ConnId(conn), Command::Join(join)), now);
    }
    let mut ufrags = Vec::new();
    drain(&mut engine, &mut ufrags);
    (engine, ufrags)
}

/// Polls the engine empty (bounded: it must come to rest).
fn drain(engine: &mut Engine, ufrags: &mut Vec<String>) {
    for _ in 0..100_000 {
        match engine.poll_output() {
            Output::Timeout(_) => return,
            Output::Event(Event::UfragLearned(u)) => ufrags.push(u),
            _ => {}
        }
    }
    panic!("the engine never came to rest");
}

/// Commands from a joined member's socket. The first byte picks the shape:
/// a whole JSON frame, or the rest as the SDP of `publish` / the candidate
/// of a `trickle` (the path of the ICE-ufrag panic).
pub fn engine_commands(data: &[u8]) {
    let Some((&shape, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest).into_owned();
    let message = match shape % 3 {
        0 => match signaling::decode_client(&text, signaling::DEFAULT_MAX_MESSAGE_BYTES) {
            Ok(m) => m,
            Err(_) => return,
        },
        1 => ClientMessage::Publish { sdp: text },
        _ => match serde_json::from_str(&text) {
            Ok(candidate) => ClientMessage::Trickle {
                target: signaling::PeerTarget::Publisher,
                candidate,
            },
            Err(_) => return,
        },
    };
    let Some(command) = Command::from_client(message) else {
        return;
    };
    let now = Instant::now();
    let (mut engine, mut ufrags) = engine_with_members(now);
    engine.handle_input(Input::Command(ConnId(MEMBER), command), now);
    drain(&mut engine, &mut ufrags);
    engine.handle_input(Input::Timeout, now + Duration::from_secs(1));
    drain(&mut engine, &mut ufrags);
    assert!(engine.participant_count() <= 2);
}

/// Datagrams on the media port from one source. `@@@@` in the bytes is
/// replaced by a ufrag the engine knows, so STUN can reach a connection.
pub fn engine_datagram(data: &[u8]) {
    let now = Instant::now();
    let (mut engine, mut ufrags) = engine_with_members(now);
    let mut bytes = data.to_vec();
    if let Some(ufrag) = ufrags.first()
        && let Some(at) = bytes.windows(4).position(|w| w == b"@@@@")
    {
        bytes.splice(at..at + 4, ufrag.bytes());
    }
    let source: SocketAddr = "203.0.113.9:4444".parse().expect("an address");
    let destination = SERVER.parse().expect("an address");
    for chunk in bytes.split(|b| *b == 0xFE).take(64) {
        engine.handle_input(
            Input::Datagram {
                proto: str0m::net::Protocol::Udp,
                source,
                destination,
                contents: chunk,
            },
            now,
        );
        drain(&mut engine, &mut ufrags);
    }
    assert_eq!(engine.participant_count(), 2, "datagrams removed a member");
}

/// TURN messages from clients on UDP and TCP listeners and datagrams from
/// peers, unauthenticated (credentials are HMACs a fuzzer cannot forge).
pub fn turn_relay(data: &[u8]) {
    use turn::peers::PeerRules;
    use turn::relay::{Relay, RelayConfig};
    use turn_server_proto::types::{Instant as TurnInstant, TransportType};

    let sfu: SocketAddr = SERVER.parse().expect("an address");
    let mut relay = Relay::new(
        RelayConfig {
            realm: "switchboard".into(),
            secrets: vec!["fuzz-secret-fuzz-secret-fuzz-secret".into()],
            peers: PeerRules::new(vec![sfu], vec![]),
            max_allocation_lifetime: Duration::from_secs(3600),
            allocations_per_user: 10,
            max_allocations: 100,
            bandwidth_per_allocation: 0,
        },
        1_800_000_000,
        None,
    );
    let listen: SocketAddr = "192.0.2.1:3478".parse().expect("an address");
    let udp = relay.add_listener(TransportType::Udp, listen);
    let tcp = relay.add_listener(TransportType::Tcp, listen);
    let client: SocketAddr = "198.51.100.7:50000".parse().expect("an address");
    let mut out = Vec::new();
    let mut commands = Vec::new();
    for (i, chunk) in data.split(|b| *b == 0xFE).take(64).enumerate() {
        let now = TurnInstant::ZERO + Duration::from_millis(i as u64 * 10);
        match i % 3 {
            0 => drop(relay.handle_client(udp, client, chunk, now, &mut out)),
            1 => drop(relay.handle_client(tcp, client, chunk, now, &mut out)),
            _ => relay.handle_peer(listen, sfu, chunk, now, &mut out),
        }
        relay.poll(now, &mut commands);
        relay.poll_transmit(now, &mut out);
        out.clear();
        commands.clear();
    }
    assert_eq!(relay.allocations(), 0, "an allocation without credentials");
}

/// A TURN-over-TCP byte stream, in arbitrary pieces: every message framed
/// out is no longer than what went in, and a stream of garbage ends in
/// `NotTurn`, not a loop.
pub fn turn_framing(data: &[u8]) {
    let mut framer = turn::framing::Framer::default();
    let mut taken = 0;
    for piece in data.chunks(7) {
        framer.push(piece);
        for _ in 0..data.len() + 1 {
            match framer.next_message() {
                Ok(Some(message)) => {
                    taken += message.len();
                    assert!(taken <= data.len(), "framed more than was pushed");
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
}

/// A push payload as a phone gets it: APNs JSON, and an FCM data map
/// (`key=value` lines). Either reads or says it cannot.
pub fn push_payload(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = native::push::parse_json(&text);
    let map: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let _ = native::push::parse_map(&map);
}

/// JSON bodies of the call API, sent by an authenticated user: never a 5xx,
/// and every refusal is `{code, message}`. The first byte picks the route.
pub fn call_api(data: &[u8]) {
    use tower::ServiceExt;
    let Some((&route, body)) = data.split_first() else {
        return;
    };
    let (method, path) = match route % 5 {
        0 => ("POST", "/v1/calls"),
        1 => ("POST", "/v1/devices"),
        2 => (
            "POST",
            "/v1/calls/00000000-0000-0000-0000-000000000000/accept",
        ),
        3 => (
            "POST",
            "/v1/calls/00000000-0000-0000-0000-000000000000/decline",
        ),
        _ => ("POST", "/v1/calls/00000000-0000-0000-0000-000000000000/end"),
    };
    let api = CallApi::get();
    let request = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", api.user_token))
        .body(axum::body::Body::from(body.to_vec()))
        .expect("a request");
    let response = api
        .runtime
        .block_on(api.router.clone().oneshot(request))
        .expect("routers are infallible");
    let status = response.status();
    assert!(!status.is_server_error(), "{method} {path}: {status}");
    if !status.is_success() {
        let bytes = api
            .runtime
            .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
            .expect("a body");
        let json: serde_json::Value = serde_json::from_slice(&bytes).expect("a JSON error");
        assert!(
            json["code"].is_string() && json["message"].is_string(),
            "{json}"
        );
    }
}

/// The call API on an in-memory store, built once per process.
struct CallApi {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    user_token: String,
}

impl CallApi {
    fn get() -> &'static CallApi {
        static API: OnceLock<CallApi> = OnceLock::new();
        API.get_or_init(CallApi::new)
    }

    fn new() -> CallApi {
        use control::auth::{ApiKey, Authenticator, DEFAULT_MAX_USER_TOKEN_TTL, mint_user_token};
        use control::rate_limit::Rate;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let key = ApiKey {
            id: "fuzz".into(),
            secret: "fuzz-key-secret-fuzz-key-secret-fuzz".into(),
            revoked: false,
        };
        let store: Arc<dyn control::store::Store> =
            Arc::new(control::store::SqliteStore::in_memory().expect("a store"));
        let events = Arc::new(control::ringing::HubRinger::new(
            Arc::default(),
            store.clone(),
            Arc::new(control::ringing::LoggingPushSender),
        ));
        let service = control::service::CallService {
            store,
            ringer: events.clone(),
            metrics: None,
            timeouts: control::call::Timeouts {
                ring_ms: 30_000,
                connect_ms: 20_000,
            },
            max_ringing_devices: 3,
            event_webhooks: Vec::new(),
            placer: None,
            flags: Default::default(),
            min_app_version: None,
            video_fallback: Default::default(),
        };
        let unlimited = Rate::per_second(1_000_000);
        let state = control::api::ControlState {
            auth: Arc::new(Authenticator::new(
                vec![key.clone()],
                DEFAULT_MAX_USER_TOKEN_TTL,
            )),
            service: Arc::new(service),
            tokens: Arc::new(control::call_token::CallTokens::new(
                b"fuzz-call-token-secret-fuzz-call-token",
                "switchboard",
                control::call_token::DEFAULT_TTL,
            )),
            limits: Arc::new(control::api::ApiLimits::new(
                unlimited, unlimited, unlimited,
            )),
            events,
            turn: None,
            lifecycle: Arc::default(),
            nodes: Arc::new(control::nodes::LocalNodes::default()),
        };
        let router = runtime.block_on(async { control::api::router(state) });
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let user_token = mint_user_token(&key, "fuzzer", Duration::from_secs(86_400), now);
        CallApi {
            runtime,
            router,
            user_token,
        }
    }
}
