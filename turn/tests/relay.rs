//! The relay core with a fake clock and a scripted STUN client: REST
//! credentials, lifetime rules, peer rules, quotas, bandwidth, bad input.

use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;
use turn::credentials;
use turn::peers::PeerRules;
use turn::relay::{Command, Output, Relay, RelayConfig};
use turn_server_proto::types::attribute::{
    ChannelNumber, Data, Lifetime, RequestedTransport, XorPeerAddress,
};
use turn_server_proto::types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH, SEND};
use turn_server_proto::types::stun::attribute::{ErrorCode, Nonce, Realm, Username};
use turn_server_proto::types::stun::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageType, MessageWrite,
    MessageWriteExt, MessageWriteVec, Method, TransactionId,
};
use turn_server_proto::types::{Instant, TransportType};

const SECRET: &str = "relay-test-secret";
/// Unix seconds at the fake clock's zero.
const T0: u64 = 1_800_000_000;
const LISTEN: &str = "192.0.2.1:3478";
const SFU: &str = "192.0.2.1:7882";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn at(secs: u64) -> Instant {
    Instant::ZERO + Duration::from_secs(secs)
}

fn config() -> RelayConfig {
    RelayConfig {
        realm: "switchboard".into(),
        secrets: vec![SECRET.into()],
        peers: PeerRules::new(vec![addr(SFU)], vec![]),
        max_allocation_lifetime: Duration::from_secs(90 * 60),
        allocations_per_user: 2,
        max_allocations: 100,
        bandwidth_per_allocation: 0,
    }
}

fn relay(config: RelayConfig) -> Relay {
    let mut relay = Relay::new(config, T0, None);
    relay.add_listener(TransportType::Udp, addr(LISTEN));
    relay
}

/// A TURN client as far as the tests need one.
struct Client {
    from: SocketAddr,
    username: String,
    password: String,
    realm: String,
    nonce: String,
    relayed: Option<SocketAddr>,
}

impl Client {
    fn new(from: &str, user: &str, expires_at: u64) -> Client {
        let c = credentials::mint(SECRET, user, expires_at);
        Client {
            from: addr(from),
            username: c.username,
            password: c.password,
            realm: String::new(),
            nonce: String::new(),
            relayed: None,
        }
    }

    fn request(&self, method: Method, attrs: impl FnOnce(&mut MessageWriteVec)) -> Vec<u8> {
        let mut b = Message::builder_request(method, MessageWriteVec::new());
        attrs(&mut b);
        if !self.nonce.is_empty() {
            self.sign(&mut b);
        }
        b.finish()
    }

    /// USERNAME, REALM, NONCE and MESSAGE-INTEGRITY with this client's key.
    fn sign(&self, b: &mut MessageWriteVec) {
        b.add_attribute(&Username::new(&self.username).unwrap())
            .unwrap();
        b.add_attribute(&Realm::new(&self.realm).unwrap()).unwrap();
        b.add_attribute(&Nonce::new(&self.nonce).unwrap()).unwrap();
        let key = LongTermKeyCredentials::new(
            self.username.clone(),
            self.password.clone(),
            self.realm.clone(),
        );
        b.add_message_integrity(&key.into(), IntegrityAlgorithm::Sha1)
            .unwrap();
    }

    /// Sends `data`, runs the relay as the shell would (binding relay
    /// sockets at 203.0.113.1:<n>), returns what came back to this client.
    fn send(&self, relay: &mut Relay, data: &[u8], now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        relay.handle_client(0, self.from, data, now, &mut out);
        drive(relay, now, &mut out);
        out.into_iter()
            .filter_map(|o| match o {
                Output::ToClient { to, data, .. } if to == self.from => Some(data),
                _ => None,
            })
            .collect()
    }

    /// Allocate with the 401 round trip. Returns the final response.
    fn allocate(&mut self, relay: &mut Relay, now: Instant) -> Response {
        let udp = |b: &mut MessageWriteVec| {
            b.add_attribute(&RequestedTransport::new(17)).unwrap();
        };
        let challenge = Response::parse(&self.send(relay, &self.request(ALLOCATE, udp), now)[0]);
        assert_eq!(challenge.error, Some(401));
        self.realm = challenge.realm.clone().unwrap();
        self.nonce = challenge.nonce.clone().unwrap();
        let answers = self.send(relay, &self.request(ALLOCATE, udp), now);
        let response = Response::parse(answers.last().expect("an Allocate answer"));
        if response.class == MessageClass::Success {
            self.relayed = Some(response.relayed.unwrap());
        }
        response
    }

    fn refresh(&self, relay: &mut Relay, lifetime: u32, now: Instant) -> Response {
        let req = self.request(REFRESH, |b| {
            b.add_attribute(&Lifetime::new(lifetime)).unwrap();
        });
        Response::parse(&self.send(relay, &req, now)[0])
    }

    fn with_peer(&self, method: Method, peer: SocketAddr, channel: Option<u16>) -> Vec<u8> {
        let mut b = Message::builder_request(method, MessageWriteVec::new());
        let transaction = b.transaction_id();
        b.add_attribute(&XorPeerAddress::new(peer, transaction))
            .unwrap();
        if let Some(c) = channel {
            b.add_attribute(&ChannelNumber::new(c)).unwrap();
        }
        self.sign(&mut b);
        b.finish()
    }

    fn permit(&self, relay: &mut Relay, peer: &str, now: Instant) -> Response {
        let req = self.with_peer(CREATE_PERMISSION, addr(peer), None);
        Response::parse(&self.send(relay, &req, now)[0])
    }

    fn bind_channel(&self, relay: &mut Relay, peer: &str, channel: u16, now: Instant) -> Response {
        let req = self.with_peer(CHANNEL_BIND, addr(peer), Some(channel));
        Response::parse(&self.send(relay, &req, now)[0])
    }
}

/// Polls the relay like the shell: binds requested relay sockets.
fn drive(relay: &mut Relay, now: Instant, out: &mut Vec<Output>) -> Vec<Command> {
    let mut seen = Vec::new();
    for round in 0..8u16 {
        let mut commands = Vec::new();
        relay.poll(now, &mut commands);
        relay.poll_transmit(now, out);
        if commands.is_empty() {
            break;
        }
        for c in &commands {
            if let Command::BindRelay {
                listener,
                client,
                family,
            } = c
            {
                let bound = SocketAddr::new(
                    "203.0.113.1".parse().unwrap(),
                    40_000 + round * 100 + client.port() % 100,
                );
                relay.relay_bound(*listener, *client, *family, Ok(bound), now);
            }
        }
        seen.extend(commands);
    }
    seen
}

#[derive(Debug)]
struct Response {
    class: MessageClass,
    error: Option<u16>,
    realm: Option<String>,
    nonce: Option<String>,
    relayed: Option<SocketAddr>,
    lifetime: Option<u32>,
}

impl Response {
    fn parse(data: &[u8]) -> Response {
        use turn_server_proto::types::attribute::XorRelayedAddress;
        let m = Message::from_bytes(data).expect("a STUN response");
        Response {
            class: m.class(),
            error: m.attribute::<ErrorCode>().ok().map(|e| e.code()),
            realm: m.attribute::<Realm>().ok().map(|r| r.realm().to_string()),
            nonce: m.attribute::<Nonce>().ok().map(|n| n.nonce().to_string()),
            relayed: m
                .attribute::<XorRelayedAddress>()
                .ok()
                .map(|a| a.addr(m.transaction_id())),
            lifetime: m.attribute::<Lifetime>().ok().map(|l| l.seconds()),
        }
    }
}

#[test]
fn an_allocation_outlives_its_credentials_for_an_hour_and_stops_at_the_maximum_lifetime() {
    let mut relay = relay(config());
    // Credentials valid for 10 minutes.
    let mut alice = Client::new("198.51.100.7:5000", "alice", T0 + 600);
    let r = alice.allocate(&mut relay, at(0));
    assert_eq!(r.class, MessageClass::Success, "{r:?}");
    assert!(r.lifetime.is_some());
    // A one-hour call: the browser refreshes every 5 minutes with the same
    // (by now expired) username.
    for minute in (5..=60).step_by(5) {
        let r = alice.refresh(&mut relay, 600, at(minute * 60));
        assert_eq!(r.class, MessageClass::Success, "minute {minute}: {r:?}");
        assert_eq!(relay.allocations(), 1);
    }
    // A new Allocate with the expired username is refused.
    let mut late = Client::new("198.51.100.7:5001", "alice", T0 + 600);
    late.realm = alice.realm.clone();
    late.nonce = alice.nonce.clone();
    let answers = late.send(
        &mut relay,
        &late.request(ALLOCATE, |b| {
            b.add_attribute(&RequestedTransport::new(17)).unwrap();
        }),
        at(61 * 60),
    );
    assert_eq!(Response::parse(&answers[0]).error, Some(401));
    // At the maximum lifetime (90 min) the allocation ends: the relay
    // socket closes and a refresh is answered 437.
    let mut out = Vec::new();
    let commands = drive(&mut relay, at(90 * 60), &mut out);
    assert!(
        commands.contains(&Command::CloseRelay {
            relay: alice.relayed.unwrap()
        }),
        "{commands:?}"
    );
    assert_eq!(relay.allocations(), 0);
    let r = alice.refresh(&mut relay, 600, at(90 * 60 + 1));
    assert_ne!(r.class, MessageClass::Success, "{r:?}");
}

#[test]
fn credentials_are_checked_at_allocate() {
    let mut relay = relay(config());
    let mut expired = Client::new("198.51.100.7:5000", "alice", T0 - 1);
    assert_eq!(expired.allocate(&mut relay, at(0)).error, Some(401));
    let mut wrong = Client::new("198.51.100.7:5001", "alice", T0 + 600);
    wrong.password = "not-it".into();
    assert_eq!(wrong.allocate(&mut relay, at(0)).error, Some(401));
    // A rotated-out secret no longer verifies; the new one does.
    let mut rotated = config();
    rotated.secrets = vec!["next-secret".into(), SECRET.into()];
    let mut relay = self::relay(rotated);
    let mut ok = Client::new("198.51.100.7:5002", "alice", T0 + 600);
    assert_eq!(ok.allocate(&mut relay, at(0)).class, MessageClass::Success);
    assert_eq!(relay.allocations(), 1);
}

#[test]
fn only_the_sfu_is_a_peer_by_default() {
    let mut relay = relay(config());
    let mut alice = Client::new("198.51.100.7:5000", "alice", T0 + 600);
    alice.allocate(&mut relay, at(0));
    assert_eq!(
        alice.permit(&mut relay, SFU, at(1)).class,
        MessageClass::Success
    );
    for peer in [
        "8.8.8.8:53",
        "127.0.0.1:7882",
        "10.0.0.1:7882",
        "[::ffff:127.0.0.1]:7882",
        "192.0.2.1:22",
    ] {
        let r = alice.permit(&mut relay, peer, at(1));
        assert_eq!(r.error, Some(403), "{peer}: {r:?}");
        let r = alice.bind_channel(&mut relay, peer, 0x4001, at(1));
        assert_eq!(r.error, Some(403), "{peer}: {r:?}");
    }
    // A Send indication to a denied peer goes nowhere; to the SFU it goes.
    let send = |peer: &str| {
        let mut b = Message::builder(
            MessageType::from_class_method(MessageClass::Indication, SEND),
            TransactionId::generate(),
            MessageWriteVec::new(),
        );
        let t = b.transaction_id();
        b.add_attribute(&XorPeerAddress::new(addr(peer), t))
            .unwrap();
        b.add_attribute(&Data::new(b"media")).unwrap();
        b.finish()
    };
    let mut out = Vec::new();
    relay.handle_client(0, alice.from, &send("127.0.0.1:7882"), at(2), &mut out);
    assert!(out.is_empty(), "{out:?}");
    relay.handle_client(0, alice.from, &send(SFU), at(2), &mut out);
    assert_eq!(
        out,
        vec![Output::ToPeer {
            relay: alice.relayed.unwrap(),
            to: addr(SFU),
            data: b"media".to_vec()
        }]
    );
    // Channel data on a channel never bound is dropped.
    out.clear();
    relay.handle_client(
        0,
        alice.from,
        &[0x40, 0x09, 0x00, 0x02, 1, 2, 0, 0],
        at(3),
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn allocations_are_capped_per_user_and_in_total() {
    let mut relay = relay(config());
    for port in [5000, 5001] {
        let mut c = Client::new(&format!("198.51.100.7:{port}"), "alice", T0 + 600);
        assert_eq!(c.allocate(&mut relay, at(0)).class, MessageClass::Success);
    }
    let mut third = Client::new("198.51.100.7:5002", "alice", T0 + 600);
    assert_eq!(third.allocate(&mut relay, at(0)).error, Some(486));
    let mut bob = Client::new("198.51.100.8:5000", "bob", T0 + 600);
    assert_eq!(bob.allocate(&mut relay, at(0)).class, MessageClass::Success);

    let mut small = config();
    small.max_allocations = 1;
    let mut relay = self::relay(small);
    let mut a = Client::new("198.51.100.7:5000", "alice", T0 + 600);
    assert_eq!(a.allocate(&mut relay, at(0)).class, MessageClass::Success);
    let mut b = Client::new("198.51.100.8:5000", "bob", T0 + 600);
    assert_eq!(b.allocate(&mut relay, at(0)).error, Some(508));
}

#[test]
fn thousands_of_allocates_from_one_user_get_the_quota_and_no_more() {
    let mut relay = relay(config());
    let mut granted = 0;
    let mut refused = 0;
    for port in 0..3_000u16 {
        let mut c = Client::new(
            &format!("198.51.100.9:{}", 10_000 + port),
            "mallory",
            T0 + 600,
        );
        // As fast as one source may be challenged (the unauthenticated
        // budget, tested below).
        let second = u64::from(port) / u64::from(turn::relay::UNAUTHENTICATED_ANSWERS_PER_SECOND);
        match c.allocate(&mut relay, at(second)).error {
            None => granted += 1,
            Some(486) => refused += 1,
            Some(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!((granted, refused), (2, 2_998));
    assert_eq!(relay.allocations(), 2);
}

#[test]
fn a_tcp_allocation_is_refused() {
    let mut relay = relay(config());
    let mut c = Client::new("198.51.100.7:5000", "alice", T0 + 600);
    let tcp = |b: &mut MessageWriteVec| {
        b.add_attribute(&RequestedTransport::new(6)).unwrap();
    };
    let challenge = Response::parse(&c.send(&mut relay, &c.request(ALLOCATE, tcp), at(0))[0]);
    c.realm = challenge.realm.unwrap();
    c.nonce = challenge.nonce.unwrap();
    let r = Response::parse(&c.send(&mut relay, &c.request(ALLOCATE, tcp), at(0))[0]);
    assert_eq!(r.error, Some(442));
    assert_eq!(relay.allocations(), 0);
}

#[test]
fn traffic_over_the_bandwidth_cap_is_dropped() {
    let mut limited = config();
    limited.bandwidth_per_allocation = 10_000; // bytes per second
    let mut relay = relay(limited);
    let mut alice = Client::new("198.51.100.7:5000", "alice", T0 + 600);
    alice.allocate(&mut relay, at(0));
    assert_eq!(
        alice.bind_channel(&mut relay, SFU, 0x4001, at(1)).class,
        MessageClass::Success
    );
    let mut frame = vec![0x40, 0x01, 0x03, 0xE8];
    frame.extend_from_slice(&[7u8; 1000]);
    let mut out = Vec::new();
    // 50 KB offered in one second: about the 10 KB burst passes.
    for i in 0..50u64 {
        let now = Instant::ZERO + Duration::from_secs(2) + Duration::from_millis(i * 20);
        relay.handle_client(0, alice.from, &frame, now, &mut out);
    }
    let passed = out
        .iter()
        .filter(|o| matches!(o, Output::ToPeer { .. }))
        .count();
    assert!((10..=21).contains(&passed), "{passed} of 50 passed");
}

#[test]
fn malformed_stun_is_answered_or_dropped_without_changing_anything() {
    let mut relay = relay(config());
    let mut alice = Client::new("198.51.100.7:5000", "alice", T0 + 600);
    alice.allocate(&mut relay, at(0));
    let good = alice.with_peer(CREATE_PERMISSION, addr(SFU), None);
    // Truncated, oversized length, and a flipped bit under MESSAGE-INTEGRITY.
    let mut tampered = good.clone();
    tampered[30] ^= 1;
    let mut oversized = good.clone();
    oversized[2] = 0xFF;
    for bad in [&good[..good.len() - 7], &oversized[..], &tampered[..]] {
        let answers = alice.send(&mut relay, bad, at(1));
        for a in &answers {
            let r = Response::parse(a);
            assert_ne!(r.class, MessageClass::Success, "{r:?}");
        }
    }
    // An unknown comprehension-required attribute: 420.
    let mut b = Message::builder_request(CREATE_PERMISSION, MessageWriteVec::new());
    let t = b.transaction_id();
    b.add_attribute(&XorPeerAddress::new(addr(SFU), t)).unwrap();
    let unknown =
        turn_server_proto::types::stun::attribute::RawAttribute::new(0x7FF0.into(), &[0, 0, 0, 0]);
    b.add_attribute(&unknown).unwrap();
    alice.sign(&mut b);
    let r = Response::parse(&alice.send(&mut relay, &b.finish(), at(1))[0]);
    assert_eq!(r.error, Some(420), "{r:?}");
    assert_eq!(relay.allocations(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Arbitrary bytes from clients and peers never panic the relay, and a
    /// relay with no allocation sends nothing to any peer.
    #[test]
    fn arbitrary_bytes_never_panic_or_reach_a_peer(
        packets in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..200)), 1..20)
    ) {
        let mut relay = relay(config());
        let mut out = Vec::new();
        for (i, (from_peer, bytes)) in packets.iter().enumerate() {
            let now = at(i as u64);
            if *from_peer {
                relay.handle_peer(addr("203.0.113.1:40000"), addr("8.8.8.8:53"), bytes, now, &mut out);
            } else {
                relay.handle_client(0, addr("198.51.100.7:5000"), bytes, now, &mut out);
            }
            drive(&mut relay, now, &mut out);
        }
        let to_peer = out.iter().filter(|o| matches!(o, Output::ToPeer { .. })).count();
        prop_assert_eq!(to_peer, 0);
    }
}

/// A 28-byte Allocate without credentials is answered with a ~116-byte 401.
/// From a spoofed UDP source that makes the relay a reflector, so one source
/// gets at most `UNAUTHENTICATED_ANSWERS_PER_SECOND` answers a second; other
/// sources and later seconds are unaffected.
#[test]
fn unauthenticated_answers_are_budgeted_per_source() {
    use turn::relay::UNAUTHENTICATED_ANSWERS_PER_SECOND as BUDGET;
    let mut relay = relay(config());
    let victim = Client::new("198.51.100.7:4000", "nobody", T0 + 600);
    let allocate = victim.request(ALLOCATE, |b| {
        b.add_attribute(&RequestedTransport::new(17)).unwrap();
    });
    assert!(allocate.len() <= 32);
    let answered: Vec<usize> = (0..200)
        .map(|_| victim.send(&mut relay, &allocate, at(0)).len())
        .collect();
    let sent: usize = answered.iter().sum();
    assert_eq!(sent, BUDGET as usize);
    let size = victim.send(&mut relay, &allocate, at(1));
    assert_eq!(size.len(), 1, "a new second, a new budget");
    assert!(
        size[0].len() <= 4 * allocate.len() + 16,
        "{} bytes",
        size[0].len()
    );
    let other = Client::new("198.51.100.8:4000", "nobody", T0 + 600);
    assert_eq!(other.send(&mut relay, &allocate, at(1)).len(), 1);
    // A real client still allocates.
    let mut alice = Client::new("198.51.100.9:4000", "alice", T0 + 600);
    assert_eq!(
        alice.allocate(&mut relay, at(1)).class,
        MessageClass::Success
    );
}
