//! Engine tests that need its insides: here, reaching a real panic inside
//! str0m past the checks that keep clients from reaching it.

use super::*;

const SERVER: &str = "192.0.2.10:7882";

/// A starting point for the engine's fake-clock unit tests (the core
/// itself never reads the clock; `tidy.rs` lets only this file).
pub(super) fn start() -> Instant {
    Instant::now()
}

fn engine(now: Instant) -> Engine {
    str0m::crypto::from_feature_flags().install_process_default();
    let cert = str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .expect("a DTLS certificate");
    Engine::new(EngineConfig::new(vec![SERVER.parse().unwrap()]), cert, now)
}

fn join(engine: &mut Engine, conn: u64, room: &str, now: Instant) -> ParticipantKey {
    let request = JoinRequest {
        room: room.into(),
        user_id: format!("user-{conn}"),
        participant_id: format!("p-{conn}"),
        permissions: Permissions::ALL,
        auto_subscribe: true,
        device: DeviceLabel::unknown(),
    };
    engine.handle_input(Input::Command(ConnId(conn), Command::Join(request)), now);
    engine.conns[&ConnId(conn)]
}

/// A client's audio offer with one host candidate, as str0m writes it.
fn client_offer(now: Instant) -> String {
    let mut rtc = Rtc::builder().build(now);
    let candidate = Candidate::host("10.0.0.1:5000".parse().unwrap(), "udp").unwrap();
    rtc.add_local_candidate(candidate);
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, _pending) = api.apply().expect("an offer");
    offer.to_sdp_string()
}

fn drain(engine: &mut Engine) -> Vec<Event> {
    let mut events = Vec::new();
    for _ in 0..10_000 {
        match engine.poll_output() {
            Output::Event(e) => events.push(e),
            Output::Transmit(_) => {}
            Output::Timeout(_) => break,
        }
    }
    events
}

/// str0m's ICE agent panics writing a connectivity check whose USERNAME
/// (`remote:local`) exceeds 128 bytes. `publish` refuses such an offer
/// (`ice_credentials`); set straight into the `Rtc` here, the panic happens
/// for real and must cost only its participant.
#[test]
fn a_panic_inside_str0m_removes_only_that_participant() {
    let mut now = Instant::now();
    let mut engine = engine(now);
    let victim = join(&mut engine, 1, "room-a", now);
    let bystander = join(&mut engine, 2, "room-b", now);
    drain(&mut engine);

    let offer = client_offer(now);
    let ufrag = offer
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("the offer has a ufrag");
    // In the ufrag line and the candidate's `ufrag` extension alike.
    let long = offer.replace(ufrag, &"u".repeat(200));
    let long = SdpOffer::from_sdp_string(&long).expect("str0m parses it");
    let p = engine.participants.get_mut(&victim).unwrap();
    p.publisher
        .guard(|rtc| rtc.sdp_api().accept_offer(long))
        .expect("no panic yet")
        .expect("str0m accepts the offer");
    engine.dirty.push((victim, PeerTarget::Publisher));

    let mut events = Vec::new();
    for _ in 0..250 {
        now += Duration::from_millis(20);
        engine.handle_input(Input::Timeout, now);
        events.extend(drain(&mut engine));
        if !engine.participants.contains_key(&victim) {
            break;
        }
    }
    assert!(
        !engine.participants.contains_key(&victim),
        "the victim is removed"
    );
    assert_eq!(engine.stats().participants_failed, 1);
    let to_victim: Vec<&ServerMessage> = events
        .iter()
        .filter_map(|e| match e {
            Event::Message { conn, message } if *conn == ConnId(1) => Some(message),
            _ => None,
        })
        .collect();
    assert!(
        to_victim.iter().any(|m| matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::Internal,
                ..
            }
        )),
        "{to_victim:?}"
    );
    assert!(to_victim.contains(&&ServerMessage::Left {
        reason: LeaveReason::Failed
    }));
    assert!(events.contains(&Event::ConnClosed { conn: ConnId(1) }));

    // The engine carries on: the bystander is untouched and new joins work.
    assert!(engine.participants.contains_key(&bystander));
    assert_eq!(engine.rooms.len(), 1);
    join(&mut engine, 3, "room-a", now);
    assert_eq!(engine.participant_count(), 2);
}
