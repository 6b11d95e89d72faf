//! The SFU engine with a fake clock and no sockets: str0m bots join rooms,
//! publish, subscribe, break and leave.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::sim::{Sim, engine_config, is_rtp};
use sfu::engine::{Command, DeviceLabel, EngineConfig, Event, JoinRequest};
use signaling::{
    ErrorCode, LayerChoice, LayerRequest, LeaveReason, ParticipantState, Permissions,
    ServerMessage, TrackKind, VideoQuality,
};
use str0m::media::MediaKind;

fn pid(name: &str) -> String {
    format!("p-{name}")
}

fn errors(sim: &Sim, bot: usize) -> Vec<ErrorCode> {
    sim.bots[bot]
        .messages
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Error { code, .. } => Some(*code),
            _ => None,
        })
        .collect()
}

fn room_of_three() -> Sim {
    Sim::publishing(engine_config(), "room-1", &["a", "b", "c"])
}

#[test]
fn three_participants_each_receive_the_others() {
    let mut sim = room_of_three();
    sim.run_for(Duration::from_secs(2));
    for (i, me) in ["a", "b", "c"].iter().enumerate() {
        for other in ["a", "b", "c"] {
            let got = sim.bots[i].received_from(&pid(other));
            if other == *me {
                assert_eq!(got, 0, "{me} must not receive its own media");
            } else {
                assert!(got > 100, "{me} got {got} packets from {other}");
            }
        }
        // Both kinds arrive, and each payload names its real sender.
        let bot = &sim.bots[i];
        for p in &bot.received {
            let sender = p.from.trim_start_matches("p-");
            assert!(String::from_utf8_lossy(&p.payload).contains(&format!("{sender}:")));
        }
        assert!(bot.received.iter().any(|p| p.kind == MediaKind::Video));
        assert!(bot.received.iter().any(|p| p.kind == MediaKind::Audio));
    }
    assert_eq!(sim.engine.track_count(), 6);
}

/// The same packets through the 1:1 fast path and through the general
/// fan-out yield the same stream at the subscriber.
#[test]
fn fast_path_and_fan_out_deliver_the_same_packets() {
    let run = |fast_path: bool| {
        let mut config = engine_config();
        config.fast_path = fast_path;
        let mut sim = Sim::publishing(config, "call", &["a", "b"]);
        sim.run_for(Duration::from_secs(1));
        // Order within each stream is the property; how audio and video
        // interleave on the wire is the pacer's business.
        let stream = |kind: MediaKind| -> Vec<_> {
            sim.bots[1]
                .received
                .iter()
                .filter(|p| p.kind == kind)
                .map(|p| (p.seq, p.timestamp, p.marker, p.payload_without_send_time()))
                .collect()
        };
        (stream(MediaKind::Audio), stream(MediaKind::Video))
    };
    let fast = run(true);
    let general = run(false);
    assert!(
        fast.0.len() > 40 && fast.1.len() > 40,
        "too few packets: {fast:?}"
    );
    assert_eq!(fast, general);
}

#[test]
fn token_without_publish_video_cannot_publish_video() {
    let mut sim = Sim::new(engine_config());
    let audio_only = Permissions {
        publish_audio: true,
        publish_video: false,
        subscribe: true,
        publish_data: false,
    };
    let a = sim.join_with("a", "room", audio_only);
    sim.bots[a].publish(); // offers audio and video
    // The bot expects an answer; take the offer straight to the engine instead.
    let offer = sim.bots[a].outbox.pop_front().unwrap();
    let signaling::ClientMessage::Publish { sdp } = offer else {
        panic!("expected a publish")
    };
    sim.command(a, Command::Publish { sdp });
    assert_eq!(errors(&sim, a), vec![ErrorCode::PermissionDenied]);
    assert_eq!(sim.engine.track_count(), 0);
    assert!(
        !sim.bots[a]
            .messages
            .iter()
            .any(|m| matches!(m, ServerMessage::PublishAnswer { .. }))
    );
}

#[test]
fn bad_input_gets_typed_errors_and_changes_nothing() {
    let mut sim = Sim::new(engine_config());
    let a = sim.join("a", "room");
    let before = (sim.engine.participant_count(), sim.engine.track_count());
    sim.command(
        a,
        Command::Publish {
            sdp: "v=0\r\nnot sdp".into(),
        },
    );
    sim.command(
        a,
        Command::SubscriberAnswer {
            sdp: "garbage".into(),
        },
    );
    sim.command(
        a,
        Command::Subscribe {
            track_ids: vec!["TR_nope".into()],
        },
    );
    sim.command(
        a,
        Command::Unpublish {
            track_id: "TR_nope".into(),
        },
    );
    sim.command(
        a,
        Command::Mute {
            track_id: "TR_nope".into(),
            muted: true,
        },
    );
    sim.command(
        a,
        Command::Trickle {
            target: signaling::PeerTarget::Publisher,
            candidate: "candidate:garbage".into(),
        },
    );
    // A command on a connection that never joined.
    let stranger = 7;
    sim.engine.handle_input(
        sfu::engine::Input::Command(Sim::conn(stranger), Command::Leave),
        sim.now,
    );
    sim.deliver();
    assert_eq!(
        errors(&sim, a),
        vec![
            ErrorCode::InvalidSdp,
            ErrorCode::InvalidSdp,
            ErrorCode::UnknownTrack,
            ErrorCode::UnknownTrack,
            ErrorCode::UnknownTrack,
            ErrorCode::InvalidCandidate,
        ]
    );
    assert_eq!(
        (sim.engine.participant_count(), sim.engine.track_count()),
        before
    );
    // Error texts say what was wrong, never where the server's memory is
    // (SDP parse errors once carried the parser's pointer offsets).
    for message in error_messages(&sim, a) {
        assert!(
            !has_memory_address(&message),
            "an error text leaks an address: {message}"
        );
    }
}

fn error_messages(sim: &Sim, bot: usize) -> Vec<String> {
    sim.bots[bot]
        .messages
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Error { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// `0x` and eight or more hex digits: a pointer, not a protocol value.
fn has_memory_address(text: &str) -> bool {
    text.match_indices("0x").any(|(at, _)| {
        text[at + 2..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .count()
            >= 8
    })
}

#[test]
fn garbage_datagrams_are_dropped_and_media_keeps_flowing() {
    let mut sim = Sim::publishing(engine_config(), "call", &["a", "b"]);
    sim.run_for(Duration::from_millis(500));
    let before = sim.bots[1].received_from(&pid("a"));
    let server = common::sim::SERVER.parse().unwrap();
    for n in 0..2_000u32 {
        let garbage: Vec<u8> = (0..(n % 300)).map(|i| (i * 7 + n) as u8).collect();
        let source =
            std::net::SocketAddr::from(([203, 0, 113, (n % 250) as u8], 4000 + (n % 1000) as u16));
        sim.engine.handle_input(
            sfu::engine::Input::Datagram {
                proto: str0m::net::Protocol::Udp,
                source,
                destination: server,
                contents: &garbage,
            },
            sim.now,
        );
    }
    // An unknown source is not the engine's to take through the known
    // path: nothing changes, the shell routes it.
    let dropped = sim.engine.stats().dropped_datagrams;
    let stranger = std::net::SocketAddr::from(([203, 0, 113, 9], 9));
    assert!(
        !sim.engine
            .handle_known_datagram(stranger, server, &[0x80, 0x60, 1, 2], sim.now)
    );
    assert_eq!(sim.engine.stats().dropped_datagrams, dropped);
    // Garbage from a participant's own address is refused by its Rtc, not fatal.
    let a_addr = sim.bots[0].publisher_addr;
    assert!(
        sim.engine
            .handle_known_datagram(a_addr, server, &[0x80, 0x60, 9], sim.now)
    );
    sim.engine.handle_input(
        sfu::engine::Input::Datagram {
            proto: str0m::net::Protocol::Udp,
            source: a_addr,
            destination: server,
            contents: &[0x80, 0x60, 1, 2, 3],
        },
        sim.now,
    );
    sim.deliver();
    sim.run_for(Duration::from_millis(500));
    assert!(sim.engine.stats().dropped_datagrams >= 1_900);
    assert!(sim.bots[1].received_from(&pid("a")) > before + 20);
}

#[test]
fn new_subscriber_gets_a_keyframe_request_sent_to_the_publisher() {
    let mut sim = Sim::new(engine_config());
    let a = sim.join_publishing("a", "room");
    sim.connect_all();
    sim.run_for(Duration::from_millis(500));
    let before = sim.bots[a].keyframe_requests;
    sim.join("b", "room");
    sim.connect_all();
    sim.run_for(Duration::from_millis(300));
    assert!(
        sim.bots[a].keyframe_requests > before,
        "no PLI reached the publisher"
    );
    assert!(sim.bots[1].received_from(&pid("a")) > 0);
}

#[test]
fn leave_is_immediate_and_the_room_forgets_everything() {
    let mut sim = room_of_three();
    sim.run_for(Duration::from_millis(300));
    sim.command(0, Command::Leave);
    let b = &sim.bots[1];
    assert!(b.messages.iter().any(|m| matches!(m,
        ServerMessage::ParticipantLeft { participant_id, reason: LeaveReason::Left } if participant_id == "p-a")));
    let unpublished = b
        .messages
        .iter()
        .filter(|m| matches!(m, ServerMessage::TrackUnpublished { participant_id, .. } if participant_id == "p-a"))
        .count();
    assert_eq!(unpublished, 2);
    assert!(sim.bots[0].messages.iter().any(|m| matches!(
        m,
        ServerMessage::Left {
            reason: LeaveReason::Left
        }
    )));
    assert_eq!(sim.engine.participant_count(), 2);
    assert_eq!(sim.engine.track_count(), 4);

    sim.command(1, Command::Leave);
    sim.command(2, Command::Leave);
    assert_eq!(sim.engine.room_count(), 0);
    assert_eq!(sim.engine.participant_count(), 0);
    // Every address and ufrag the shell was told about is taken back.
    let learned = |e: &Event| matches!(e, Event::AddressLearned(_) | Event::UfragLearned(_));
    let forgotten = |e: &Event| matches!(e, Event::AddressForgotten(_) | Event::UfragForgotten(_));
    let l = sim.events.iter().filter(|e| learned(e)).count();
    let f = sim.events.iter().filter(|e| forgotten(e)).count();
    assert!(l > 0);
    assert_eq!(l, f);
}

#[test]
fn broken_path_is_reconnecting_then_recovers_then_times_out() {
    let mut config = engine_config();
    config.reconnect_grace = Duration::from_secs(15);
    let mut sim = Sim::publishing(config, "call", &["a", "b"]);
    sim.run_for(Duration::from_millis(500));

    let state_of_b = |sim: &Sim| {
        sim.bots[0].messages.iter().rev().find_map(|m| match m {
            ServerMessage::ParticipantStateChanged {
                participant_id,
                state,
            } if participant_id == "p-b" => Some(*state),
            _ => None,
        })
    };
    // B's network breaks: after ICE notices, A sees B reconnecting.
    sim.cut.push(1);
    let mut waited = Duration::ZERO;
    while state_of_b(&sim) != Some(ParticipantState::Reconnecting) {
        sim.run_for(Duration::from_millis(250));
        waited += Duration::from_millis(250);
        assert!(
            waited < Duration::from_secs(40),
            "B never became reconnecting"
        );
    }
    // It comes back within the grace period (restarting ICE, as a client
    // does when its network changes) and continues.
    sim.cut.clear();
    sim.bots[1].restart_ice();
    sim.deliver();
    let got = sim.bots[0].received_from(&pid("b"));
    let mut waited = Duration::ZERO;
    while state_of_b(&sim) != Some(ParticipantState::Active) {
        sim.run_for(Duration::from_millis(250));
        waited += Duration::from_millis(250);
        assert!(waited < Duration::from_secs(10), "B never came back");
    }
    sim.run_for(Duration::from_secs(1));
    assert!(sim.bots[0].received_from(&pid("b")) > got);
    assert_eq!(sim.engine.participant_count(), 2);

    // Broken again, for good: removed once the grace period ends.
    sim.cut.push(1);
    let mut waited = Duration::ZERO;
    while sim.engine.participant_count() == 2 {
        sim.run_for(Duration::from_millis(500));
        waited += Duration::from_millis(500);
        assert!(waited < Duration::from_secs(90), "B was never removed");
    }
    assert!(sim.bots[0].messages.iter().any(|m| matches!(m,
        ServerMessage::ParticipantLeft { participant_id, reason: LeaveReason::Timeout } if participant_id == "p-b")));
}

#[test]
fn websocket_drop_keeps_the_place_and_resume_restores_it() {
    let mut sim = Sim::publishing(engine_config(), "call", &["a", "b"]);
    sim.command(1, Command::Detach);
    assert!(sim.bots[0].messages.iter().any(|m| matches!(
        m,
        ServerMessage::ParticipantStateChanged {
            state: ParticipantState::Reconnecting,
            ..
        }
    )));
    // Media keeps flowing: only the WebSocket went away.
    let got = sim.bots[1].received_from(&pid("a"));
    sim.run_for(Duration::from_millis(500));
    assert!(sim.bots[1].received_from(&pid("a")) > got);
    // Resume on the same connection slot (a new WebSocket in real life).
    sim.command(
        1,
        Command::Resume {
            room: "call".into(),
            user_id: "user-b".into(),
            participant_id: "p-b".into(),
        },
    );
    assert!(matches!(
        sim.bots[0].messages.last(),
        Some(ServerMessage::ParticipantStateChanged {
            state: ParticipantState::Active,
            ..
        })
    ));
    assert_eq!(sim.engine.participant_count(), 2);
}

#[test]
fn two_to_three_to_two_keeps_the_pair_stream_contiguous() {
    let mut sim = Sim::publishing(engine_config(), "room", &["a", "b"]);
    sim.run_for(Duration::from_millis(500));
    let c = sim.join_publishing("c", "room");
    sim.connect_all();
    sim.run_for(Duration::from_millis(500));
    sim.command(c, Command::Leave);
    sim.run_for(Duration::from_millis(500));

    let video_from_a: Vec<u64> = sim.bots[1]
        .received
        .iter()
        .filter(|p| p.from == "p-a" && p.kind == MediaKind::Video)
        .map(|p| p.seq)
        .collect();
    assert!(video_from_a.len() > 60);
    for pair in video_from_a.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "a gap or reset in a's video at b");
    }
}

/// A publisher whose packets stop reaching the server for 600 ms: the
/// engine reports that gap in each of its tracks (and only those); steady
/// media reports none.
#[test]
fn a_pause_in_a_publishers_packets_is_reported_as_a_gap_in_its_streams() {
    let mut sim = Sim::publishing(engine_config(), "room", &["a", "b"]);
    sim.run_for(Duration::from_secs(1));
    assert!(
        sim.engine.take_stream_gaps().is_empty(),
        "steady media has no gaps"
    );
    sim.cut.push(0);
    sim.run_for(Duration::from_millis(600));
    sim.cut.clear();
    sim.run_for(Duration::from_millis(300));
    let gaps = sim.engine.take_stream_gaps();
    assert_eq!(gaps.len(), 2, "a's audio and video: {gaps:?}");
    for gap in &gaps {
        assert_eq!(
            (gap.call_id.as_str(), gap.participant_id.as_str()),
            ("room", pid("a").as_str())
        );
        assert!(
            gap.gap >= Duration::from_millis(600) && gap.gap < Duration::from_millis(700),
            "{gap:?}"
        );
    }
    let kinds: Vec<_> = gaps.iter().map(|g| g.kind).collect();
    assert!(kinds.contains(&TrackKind::Audio) && kinds.contains(&TrackKind::Video));
}

/// 1:1: the subscriber connection's bandwidth estimate reaches the publisher
/// as REMB, so the sender adapts as if the call were direct. In a group the
/// fast path is off and no single receiver speaks for the sender (the
/// first two to join were a pair for a moment: their publishers are told
/// the cap is lifted).
#[test]
fn one_to_one_feeds_the_receivers_estimate_back_to_the_sender() {
    let mut sim = Sim::publishing(engine_config(), "call", &["a", "b"]);
    sim.run_for(Duration::from_secs(3));
    let remb = &sim.bots[0].remb;
    assert!(!remb.is_empty(), "a's publisher never got a REMB");
    assert!(remb.iter().all(|b| *b > 0));

    let mut group = room_of_three();
    group.run_for(Duration::from_secs(3));
    for bot in &group.bots {
        assert!(
            bot.remb.iter().all(|r| is_lift(*r)),
            "{} got a receiver's REMB in a group: {:?}",
            bot.name,
            bot.remb
        );
    }
}

/// A REMB of 0, which libwebrtc reads as "no limit", as str0m 0.25 reads
/// it: its parser takes a zero mantissa for 2^23 (the wire holds exponent
/// 0 and mantissa 0).
const REMB_NO_LIMIT_AS_STR0M_READS_IT: u64 = 1 << 23;

fn is_lift(remb: u64) -> bool {
    remb == 0 || remb == REMB_NO_LIMIT_AS_STR0M_READS_IT
}

/// A 1:1 that becomes a group: each publisher was capped by its one
/// receiver's REMB, which libwebrtc keeps as an upper bound until another
/// arrives, so it is told "no limit" (a REMB of 0) three times, a second
/// apart in case RTCP is lost, and nothing else while the room is a group.
/// Back to a pair, the receiver's estimates are relayed again.
#[test]
fn a_one_to_one_that_becomes_a_group_lifts_the_relayed_cap() {
    let mut sim = Sim::publishing(engine_config(), "call", &["a", "b"]);
    sim.run_for(Duration::from_secs(3));
    let before: Vec<usize> = sim.bots.iter().map(|b| b.remb.len()).collect();
    for (bot, count) in sim.bots.iter().zip(&before) {
        assert!(*count > 0, "{} got no relayed REMB in the 1:1", bot.name);
        assert!(
            !bot.remb.iter().any(|r| is_lift(*r)),
            "{}: {:?}",
            bot.name,
            bot.remb
        );
    }

    let c = sim.join_publishing("c", "call");
    sim.connect_all();
    sim.run_for(Duration::from_secs(6));
    for (bot, count) in sim.bots.iter().zip(&before) {
        // A relayed estimate may have been on its way when c joined.
        let since: Vec<u64> = bot.remb[*count..]
            .iter()
            .copied()
            .skip_while(|r| !is_lift(*r))
            .collect();
        assert_eq!(since.len(), 3, "{} after c joined: {since:?}", bot.name);
        assert!(since.iter().all(|r| is_lift(*r)), "{}: {since:?}", bot.name);
    }
    assert!(sim.bots[2].remb.is_empty(), "c never was in a pair");

    let lifted = sim.bots[0].remb.len();
    sim.command(c, Command::Leave);
    sim.run_for(Duration::from_secs(3));
    let again = &sim.bots[0].remb[lifted..];
    assert!(
        !again.is_empty() && !again.iter().any(|r| is_lift(*r)),
        "a pair again: b's estimates are relayed to a ({again:?})"
    );
}

/// Padding-only packets (bandwidth probes) each bot's subscriber connection
/// got, and whether its offers asked for transport-wide feedback.
fn probes_and_feedback(sim: &Sim) -> (Vec<u64>, Vec<bool>) {
    let probes = sim
        .bots
        .iter()
        .map(|bot| {
            let padded = sim.padded_rtp_to.get(&bot.subscriber_addr);
            padded.copied().unwrap_or(0)
        })
        .collect();
    let feedback = sim
        .bots
        .iter()
        .map(|bot| {
            bot.messages.iter().any(|m| {
                matches!(m, ServerMessage::SubscriberOffer { sdp, .. } if sdp.contains("transport-wide-cc"))
            })
        })
        .collect();
    (probes, feedback)
}

/// No subscriber connection runs a sender-side estimator: none is probed
/// with padding, none is asked for transport-wide feedback (the receiver
/// estimates and reports REMB instead), in a 1:1 call or a group.
#[test]
fn no_subscriber_path_is_probed_or_asked_for_transport_feedback() {
    let mut pair = Sim::publishing(engine_config(), "call", &["a", "b"]);
    pair.run_for(Duration::from_secs(3));
    assert_eq!(probes_and_feedback(&pair), (vec![0, 0], vec![false, false]));
    let mut sim = room_of_three();
    sim.run_for(Duration::from_secs(3));
    assert_eq!(
        probes_and_feedback(&sim),
        (vec![0, 0, 0], vec![false, false, false])
    );
    // Media still flows both ways.
    assert!(sim.bots[0].received_from(&pid("c")) > 100);
    assert!(sim.bots[2].received_from(&pid("a")) > 100);
}

mod arbitrary_input {
    use super::*;
    use proptest::prelude::*;

    fn datagram() -> impl Strategy<Value = Vec<u8>> {
        // A first byte in each class the demultiplexer sees (RFC 7983: STUN,
        // DTLS, RTP/RTCP) and the rest arbitrary, so garbage gets past the
        // first check and into the parsers.
        (
            prop::sample::select(vec![0x00u8, 0x01, 0x16, 0x17, 0x80, 0x90, 0xc8, 0xff]),
            prop::collection::vec(any::<u8>(), 0..1400),
        )
            .prop_map(|(first, rest)| std::iter::once(first).chain(rest).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        /// Arbitrary datagrams, from strangers and from a participant's own
        /// address, never panic the engine, and the call carries on.
        #[test]
        fn arbitrary_datagrams_never_break_a_call(
            datagrams in prop::collection::vec(datagram(), 1..150),
            from_member in any::<bool>(),
        ) {
            let mut sim = Sim::publishing(engine_config(), "call", &["a", "b"]);
            let server = common::sim::SERVER.parse().unwrap();
            let source = if from_member {
                sim.bots[0].publisher_addr
            } else {
                std::net::SocketAddr::from(([203, 0, 113, 9], 4444))
            };
            for d in &datagrams {
                sim.engine.handle_input(
                    sfu::engine::Input::Datagram { proto: str0m::net::Protocol::Udp, source, destination: server, contents: d },
                    sim.now,
                );
            }
            sim.deliver();
            let before = sim.bots[1].received_from("p-a");
            sim.run_for(Duration::from_millis(300));
            prop_assert!(sim.bots[1].received_from("p-a") > before);
            prop_assert_eq!(sim.engine.participant_count(), 2);
        }
    }
}

/// A subscriber whose connection takes only H.264 cannot get a VP8 track:
/// it is told once (`unsupported_codec`) and still gets the audio.
#[test]
fn a_track_without_a_common_codec_is_reported_once_not_dropped_silently() {
    let mut sim = Sim::new(engine_config());
    sim.join_publishing("a", "room-1");
    let b = sim.bots.len();
    let (publisher, subscriber) = (
        std::net::SocketAddr::from(([10, 0, 0, 20], 5000)),
        std::net::SocketAddr::from(([10, 0, 0, 20], 5001)),
    );
    let mut bot = loadtest::bot::Bot::new("b", publisher, subscriber, sim.now);
    let mut h264_only = str0m::Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_h264(true)
        .build(sim.now);
    h264_only.add_local_candidate(str0m::Candidate::host(subscriber, "udp").unwrap());
    bot.subscriber = h264_only;
    sim.bots.push(bot);
    sim.command(
        b,
        Command::Join(JoinRequest {
            room: "room-1".into(),
            user_id: "user-b".into(),
            participant_id: pid("b"),
            permissions: Permissions::ALL,
            auto_subscribe: true,
            device: DeviceLabel::unknown(),
        }),
    );
    sim.connect_all();
    sim.run_for(Duration::from_secs(2));

    let from_a: Vec<_> = sim.bots[b]
        .received
        .iter()
        .filter(|p| p.from == pid("a"))
        .collect();
    assert!(from_a.iter().any(|p| p.kind == MediaKind::Audio));
    assert!(!from_a.iter().any(|p| p.kind == MediaKind::Video));
    assert_eq!(errors(&sim, b), [ErrorCode::UnsupportedCodec]);
    let said = sim.bots[b].messages.iter().find_map(|m| match m {
        ServerMessage::Error { message, .. } => Some(message.clone()),
        _ => None,
    });
    assert!(said.unwrap().contains("VP8"));
}

/// A joined participant whose connections never come up (its datagrams go
/// nowhere) is removed at the media deadline, not kept forever; one that
/// connected stays.
#[test]
fn a_participant_without_media_is_removed_at_the_media_deadline() {
    let mut config = engine_config();
    config.media_deadline = Duration::from_secs(5);
    let mut sim = Sim::new(config);
    let ok = sim.join_publishing("ok", "room-1");
    let mute = sim.join("mute", "room-1");
    sim.cut.push(mute);
    sim.run_for(Duration::from_secs(4));
    assert_eq!(sim.engine.participant_count(), 2);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.engine.participant_count(), 1);
    assert!(
        sim.bots[mute].messages.contains(&ServerMessage::Left {
            reason: LeaveReason::Timeout
        }),
        "{:?}",
        sim.bots[mute].messages
    );
    assert!(sim.bots[ok].is_up());
    sim.run_for(Duration::from_secs(10));
    assert_eq!(sim.engine.participant_count(), 1);
}

#[test]
fn the_first_publish_answer_names_the_publishers_tracks_and_their_codecs() {
    // A publisher needs its own track ids (mute, unpublish) from its first
    // answer, before media flows; others learn the codec with the track.
    let sim = Sim::publishing(engine_config(), "call", &["a", "b"]);
    let published: Vec<(TrackKind, Option<String>)> = sim.bots[0]
        .messages
        .iter()
        .find_map(|m| match m {
            ServerMessage::PublishAnswer { tracks, .. } => {
                Some(tracks.iter().map(|t| (t.kind, t.codec.clone())).collect())
            }
            _ => None,
        })
        .expect("a publishAnswer");
    assert_eq!(
        published,
        [
            (TrackKind::Audio, Some("opus".to_string())),
            (TrackKind::Video, Some("VP8".to_string()))
        ]
    );
    // b learns a's tracks in `joined` or `trackPublished`, whichever came
    // after a's publish: with the codec either way.
    let announced: Vec<Option<String>> = sim.bots[1]
        .messages
        .iter()
        .flat_map(|m| match m {
            ServerMessage::TrackPublished { track } => vec![track.clone()],
            ServerMessage::Joined { participants, .. } => {
                participants.iter().flat_map(|p| p.tracks.clone()).collect()
            }
            _ => vec![],
        })
        .map(|track| track.codec)
        .collect();
    assert_eq!(announced, [Some("opus".into()), Some("VP8".into())]);
}

/// Subscriber offers a bot has received so far.
fn subscriber_offers(sim: &Sim, bot: usize) -> usize {
    sim.bots[bot]
        .messages
        .iter()
        .filter(|m| matches!(m, ServerMessage::SubscriberOffer { .. }))
        .count()
}

/// Changes made in one step reach each subscriber as one offer: a
/// publisher's audio and video (one publish) and a leaver's two tracks
/// each cost the others a single renegotiation, not one per track.
#[test]
fn one_step_of_changes_is_one_subscriber_offer() {
    let mut sim = Sim::publishing(engine_config(), "room", &["a", "b"]);
    sim.run_for(Duration::from_millis(200));
    let before = [subscriber_offers(&sim, 0), subscriber_offers(&sim, 1)];

    let c = sim.join_publishing("c", "room");
    sim.connect_all();
    sim.run_for(Duration::from_millis(200));
    for (i, before) in before.into_iter().enumerate() {
        assert_eq!(
            subscriber_offers(&sim, i) - before,
            1,
            "{} renegotiated more than once for c's audio and video",
            sim.bots[i].name
        );
        assert!(sim.bots[i].received_from("p-c") > 10);
    }

    let joined = [subscriber_offers(&sim, 0), subscriber_offers(&sim, 1)];
    sim.command(c, Command::Leave);
    sim.run_for(Duration::from_millis(200));
    for (i, joined) in joined.into_iter().enumerate() {
        assert_eq!(
            subscriber_offers(&sim, i) - joined,
            1,
            "{} renegotiated more than once for c's two tracks leaving",
            sim.bots[i].name
        );
    }
}

/// Receiver reports become stream quality: ours about each publisher's
/// streams (uplink), the subscribers' about what we forward (downlink).
/// One publisher's uplink drops every 5th datagram: its streams show about
/// 20 % loss, the other's none, and the fake network has no jitter to speak
/// of.
#[test]
fn receiver_reports_give_each_streams_loss_and_jitter() {
    use sfu::engine::Link;
    let mut config = engine_config();
    config.stats_interval = Duration::from_secs(1);
    let mut sim = Sim::publishing(config, "call", &["a", "b"]);
    sim.lossy.insert(0, 5);
    sim.events.clear();
    // Audio receiver reports go every 5 s (video every 1 s).
    sim.run_for(Duration::from_secs(12));
    let reports: Vec<(Link, TrackKind, f32, Duration)> = sim
        .events
        .iter()
        .filter_map(|e| match e {
            Event::StreamQuality {
                link,
                kind,
                loss,
                jitter,
            } => Some((*link, *kind, *loss, *jitter)),
            _ => None,
        })
        .collect();
    for link in [Link::Uplink, Link::Downlink] {
        for kind in [TrackKind::Audio, TrackKind::Video] {
            assert!(
                reports.iter().any(|r| r.0 == link && r.1 == kind),
                "no {link:?} {kind:?} report in {reports:?}"
            );
        }
    }
    // Settled reports (the first interval holds the connection's start).
    let uplink: Vec<f32> = reports
        .iter()
        .skip(reports.len() / 2)
        .filter(|r| r.0 == Link::Uplink)
        .map(|r| r.2)
        .collect();
    let lossy = uplink.iter().cloned().fold(0.0, f32::max);
    let clean = uplink.iter().cloned().fold(1.0, f32::min);
    assert!(
        (0.1..=0.35).contains(&lossy),
        "the lossy uplink: {uplink:?}"
    );
    assert!(clean < 0.02, "the clean uplink: {uplink:?}");
    // No network jitter here: what shows is the bots' own frame pacing.
    assert!(
        reports.iter().all(|r| r.3 < Duration::from_millis(250)),
        "{reports:?}"
    );
}

/// The track id of `publisher`'s video as `viewer` knows it.
fn video_track_of(sim: &Sim, viewer: usize, publisher: &str) -> String {
    sim.bots[viewer]
        .received
        .iter()
        .find(|p| p.from == pid(publisher) && p.kind == MediaKind::Video)
        .map(|p| p.track_id.clone())
        .expect("video received")
}

/// The publisher's `qualityUpdate`s for its video, in order.
fn quality_updates(sim: &Sim, publisher: usize) -> Vec<Vec<VideoQuality>> {
    sim.bots[publisher]
        .messages
        .iter()
        .filter_map(|m| match m {
            ServerMessage::QualityUpdate { qualities, .. } => Some(qualities.clone()),
            _ => None,
        })
        .collect()
}

fn quality(quality: VideoQuality) -> LayerRequest {
    LayerRequest {
        choice: LayerChoice::Quality(quality),
        max_fps: None,
    }
}

/// A simulcast publisher (three layers, each with its own sequence numbers
/// and VP8 picture IDs) and two viewers: each gets only the layer it asks
/// for, and a viewer that switches gets one stream whose sequence numbers
/// and picture IDs go on by one across the switch, which happens at a
/// keyframe of the new layer. Layers nobody asks for are turned off at the
/// publisher (dynacast).
#[test]
fn simulcast_viewers_get_their_layer_and_switch_seamlessly_at_a_keyframe() {
    let mut sim = Sim::new(engine_config());
    let publisher = sim.join("a", "room");
    sim.bots[publisher].simulcast = true;
    sim.bots[publisher].publish();
    sim.deliver();
    let low = sim.join("b", "room");
    let high = sim.join("c", "room");
    sim.connect_all();
    sim.run_for(Duration::from_millis(500));
    let track = video_track_of(&sim, low, "a");
    sim.command(
        low,
        Command::UpdateSubscription {
            track_id: track.clone(),
            request: Ok(quality(VideoQuality::Low)),
        },
    );
    sim.run_for(Duration::from_secs(2));
    let rids = |sim: &Sim, bot: usize, from: usize| -> Vec<Option<String>> {
        sim.bots[bot].received[from..]
            .iter()
            .filter(|p| p.kind == MediaKind::Video)
            .map(|p| p.simulcast_rid())
            .collect()
    };
    let high_rids = rids(&sim, high, 0);
    assert!(high_rids.len() > 50, "high viewer got {}", high_rids.len());
    assert!(
        high_rids.iter().all(|r| r.as_deref() == Some("f")),
        "{high_rids:?}"
    );
    // The low viewer started on f (the default) and moved to q.
    let low_rids = rids(&sim, low, 0);
    assert_eq!(low_rids.last().unwrap().as_deref(), Some("q"));
    assert!(
        quality_updates(&sim, publisher).contains(&vec![VideoQuality::Low, VideoQuality::High])
    );

    // Now up: the switch waits for f's keyframe, and the stream goes on.
    let from = sim.bots[low].received.len();
    sim.command(
        low,
        Command::UpdateSubscription {
            track_id: track,
            request: Ok(quality(VideoQuality::High)),
        },
    );
    sim.run_for(Duration::from_secs(2));
    let video: Vec<_> = sim.bots[low].received[from..]
        .iter()
        .filter(|p| p.kind == MediaKind::Video)
        .collect();
    let first_high = video
        .iter()
        .position(|p| p.simulcast_rid().as_deref() == Some("f"))
        .expect("switched to f");
    assert!(
        video[..first_high]
            .iter()
            .all(|p| p.simulcast_rid().as_deref() == Some("q"))
    );
    assert!(
        video[first_high..]
            .iter()
            .all(|p| p.simulcast_rid().as_deref() == Some("f"))
    );
    let switch = &video[first_high];
    assert_eq!(switch.payload[0] & 0x10, 0x10, "a frame's first packet");
    assert_eq!(switch.payload[6] & 0x01, 0, "a keyframe (VP8 P bit 0)");
    for pair in video.windows(2) {
        assert_eq!(
            pair[1].seq,
            pair[0].seq + 1,
            "a gap in the viewer's sequence numbers"
        );
        let picture_id = |payload: &[u8]| {
            str0m::rtp::Vp8Descriptor::parse(payload)
                .unwrap()
                .picture_id()
                .unwrap()
        };
        let step = picture_id(&pair[1].payload).wrapping_sub(picture_id(&pair[0].payload)) & 0x7fff;
        assert!(step <= 1, "picture IDs jumped by {step}");
        assert!(pair[1].timestamp.wrapping_sub(pair[0].timestamp) < 90_000);
    }
    // Nobody wants q now: it is turned off.
    assert_eq!(
        quality_updates(&sim, publisher).last().unwrap(),
        &vec![VideoQuality::High]
    );
    // One move down (f to q) and one up (q to f), both by the low viewer.
    let stats = sim.engine.stats();
    assert_eq!((stats.layer_switches_down, stats.layer_switches_up), (1, 1));
}

/// Temporal layers (the bots send libwebrtc's three-layer VP8 pattern): a
/// viewer that asks for at most 8 fps gets the base layer's frames only
/// (12.5 of the bots' 50 a second), numbered on by one as if the others
/// never existed; asking for every frame again brings the other layers
/// back at their sync frames, without a keyframe.
#[test]
fn a_viewer_asking_fewer_frames_gets_the_base_temporal_layer_numbered_on_by_one() {
    let (mut sim, _, viewer) = publisher_and_viewer(true);
    // Long enough for a measured frame rate per temporal layer.
    sim.run_for(Duration::from_millis(2_500));
    let track = video_track_of(&sim, viewer, "a");
    let requests_before = sim.engine.stats().keyframe_requests;
    let ask = |max_fps| {
        Ok(LayerRequest {
            choice: LayerChoice::Quality(VideoQuality::High),
            max_fps,
        })
    };
    let tid = |p: &native::bot::ReceivedPacket| p.payload[5] >> 6;
    let video_since = |sim: &Sim, from: usize| -> Vec<native::bot::ReceivedPacket> {
        sim.bots[viewer].received[from..]
            .iter()
            .filter(|p| p.kind == MediaKind::Video)
            .cloned()
            .collect()
    };
    let from = sim.bots[viewer].received.len();
    sim.command(
        viewer,
        Command::UpdateSubscription {
            track_id: track.clone(),
            request: ask(Some(8)),
        },
    );
    sim.run_for(Duration::from_millis(100));
    let settled = sim.bots[viewer].received.len();
    sim.run_for(Duration::from_secs(2));
    let slow = video_since(&sim, settled);
    assert!(!slow.is_empty());
    assert!(slow.iter().all(|p| tid(p) == 0), "only the base layer");
    let frames = slow.iter().filter(|p| p.payload[0] & 0x10 != 0).count();
    assert!((20..=30).contains(&frames), "{frames} frames in 2 s");
    // A malformed request is refused and changes nothing.
    let before_bad = sim.bots[viewer].received.len();
    sim.command(
        viewer,
        Command::UpdateSubscription {
            track_id: track.clone(),
            request: Err("give either `quality` or both `width` and `height`"),
        },
    );
    sim.run_for(Duration::from_millis(500));
    assert!(errors(&sim, viewer).contains(&ErrorCode::BadMessage));
    let after_bad = video_since(&sim, before_bad);
    assert!(!after_bad.is_empty() && after_bad.iter().all(|p| tid(p) == 0));

    sim.command(
        viewer,
        Command::UpdateSubscription {
            track_id: track,
            request: ask(None),
        },
    );
    sim.run_for(Duration::from_secs(2));
    let video = video_since(&sim, from);
    let tids: std::collections::BTreeSet<u8> = video.iter().map(tid).collect();
    assert_eq!(tids, [0, 1, 2].into(), "every layer back");
    // Each came back at a frame that refers to the base layer only (Y),
    // TID 1 first (TID 2 frames refer to it).
    let first_of = |t: u8| video.iter().position(|p| tid(p) == t).unwrap();
    for t in [1, 2] {
        assert_ne!(
            video[first_of(t)].payload[5] & 0x20,
            0,
            "TID {t} started at a sync frame"
        );
    }
    assert!(first_of(1) < first_of(2));
    let picture_id = |payload: &[u8]| {
        str0m::rtp::Vp8Descriptor::parse(payload)
            .unwrap()
            .picture_id()
            .unwrap()
    };
    for pair in video.windows(2) {
        assert_eq!(
            pair[1].seq,
            pair[0].seq + 1,
            "a gap in the sequence numbers"
        );
        let step = picture_id(&pair[1].payload).wrapping_sub(picture_id(&pair[0].payload)) & 0x7fff;
        assert!(step <= 1, "picture IDs jumped by {step}");
    }
    let stats = sim.engine.stats();
    assert!(stats.temporal_switches_down >= 1, "{stats:?}");
    assert!(
        stats.temporal_switches_up >= 2,
        "one layer at a time: {stats:?}"
    );
    assert_eq!(
        stats.keyframe_requests, requests_before,
        "no keyframe needed"
    );
}

/// A room of "a" publishing (`simulcast`: three layers) and "b" watching,
/// both connected: (the simulation, a's bot, b's bot).
fn publisher_and_viewer(simulcast: bool) -> (Sim, usize, usize) {
    publisher_and_viewer_in(engine_config(), simulcast)
}

fn publisher_and_viewer_in(config: EngineConfig, simulcast: bool) -> (Sim, usize, usize) {
    let mut sim = Sim::new(config);
    let publisher = sim.join("a", "room");
    sim.bots[publisher].simulcast = simulcast;
    sim.bots[publisher].publish();
    sim.deliver();
    let viewer = sim.join("b", "room");
    sim.connect_all();
    (sim, publisher, viewer)
}

/// abs-send-time is the server's send time, never the publisher's relayed
/// (receive-side estimates must measure the server-to-subscriber path): a
/// tick of media held 200 ms between the publisher and the server reaches
/// the viewer stamped when the server sent it.
#[test]
fn abs_send_time_is_stamped_at_the_servers_egress() {
    let (mut sim, publisher, viewer) = publisher_and_viewer(false);
    sim.run_for(Duration::from_secs(1));
    let from = sim.bots[viewer].received.len();
    let sent_at = sim.now;
    let held = Duration::from_millis(200);
    sim.send_media_late(publisher, held);
    let stamps: Vec<_> = sim.bots[viewer].received[from..]
        .iter()
        .map(|p| p.abs_send_time)
        .collect();
    assert!(!stamps.is_empty(), "the held tick was forwarded");
    for stamp in stamps {
        let stamp = stamp.expect("abs-send-time negotiated on the subscriber connection");
        let after_sent = stamp.saturating_duration_since(sent_at);
        // 6.18 fixed point: a few microseconds of rounding.
        assert!(
            after_sent + Duration::from_millis(1) >= held,
            "stamped {after_sent:?} after the publisher sent, not at the server's send"
        );
    }
}

/// The server keeps each subscriber connection's DTLS-SRTP keying material
/// (`sfu::srtp::capture`: the own egress will encrypt with it), and the
/// transmit keys derived from it (`sfu::srtp::keys`) decrypt, byte for
/// byte, the media str0m sent the viewer. If str0m stopped passing the
/// material through its crypto provider, or the layout or derivation were
/// wrong, this fails.
#[test]
fn the_servers_subscriber_keys_decrypt_what_it_sent_the_viewer() {
    // str0m's own write path: what it sealed is the reference.
    let mut config = engine_config();
    config.own_egress = false;
    let (mut sim, _, viewer) = publisher_and_viewer_in(config, false);
    sim.run_for(Duration::from_millis(500));
    let viewer_id = sim.bots[viewer].participant_id.clone().unwrap();
    let captured = sim
        .engine
        .subscriber_keying_material(&viewer_id)
        .expect("the subscriber connection's keys were captured");
    // Either DTLS role: the answerer picks it (the str0m bot answers
    // passive, so here the server is the DTLS client).
    let crypto = str0m::crypto::from_feature_flags();
    let keys = sfu::srtp::keys::connection_keys(
        crypto.srtp_provider,
        captured.profile,
        &captured.material,
        captured.dtls_client,
    )
    .unwrap()
    .transmit
    .rtp;
    let mut sealer = sfu::srtp::protect::RtpSealer::new(&crypto, captured.profile, &keys).unwrap();
    let from = sim.bots[viewer].received.len();
    sim.record_sent_to = Some((sim.bots[viewer].subscriber_addr, Vec::new()));
    sim.run_for(Duration::from_millis(200));
    let (_, sent) = sim.record_sent_to.take().unwrap();
    let received = &sim.bots[viewer].received[from..];
    assert!(received.len() > 10, "media flowed: {}", received.len());
    let mut decrypted = 0;
    for datagram in &sent {
        // RTP (not RTCP: payload types 64-95 with the marker bit are RTCP's
        // 192-223), version 2.
        if datagram.len() < 12 || datagram[0] >> 6 != 2 || (64..96).contains(&(datagram[1] & 0x7f))
        {
            continue;
        }
        let header_len = rtp_header_len(datagram);
        let seq = u16::from_be_bytes([datagram[2], datagram[3]]);
        let ssrc = &datagram[8..12];
        // RFC 7714 section 8.1: 00 00 || SSRC || ROC (0 here) || SEQ, XOR salt.
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(ssrc);
        iv[10..12].copy_from_slice(&seq.to_be_bytes());
        for (b, s) in iv.iter_mut().zip(&keys.salt) {
            *b ^= s;
        }
        let (aad, sealed) = datagram.split_at(header_len);
        let mut plain = vec![0u8; sealed.len()];
        let opened = match captured.profile {
            str0m::crypto::dtls::SrtpProfile::AEAD_AES_256_GCM => {
                let key: [u8; 32] = keys.cipher_key.clone().try_into().unwrap();
                let mut cipher = crypto
                    .srtp_provider
                    .aead_aes_256_gcm()
                    .create_cipher(key, false);
                cipher.decrypt(&iv, &[aad], sealed, &mut plain)
            }
            str0m::crypto::dtls::SrtpProfile::AEAD_AES_128_GCM => {
                let key: [u8; 16] = keys.cipher_key.clone().try_into().unwrap();
                let mut cipher = crypto
                    .srtp_provider
                    .aead_aes_128_gcm()
                    .create_cipher(key, false);
                cipher.decrypt(&iv, &[aad], sealed, &mut plain)
            }
            other => panic!("the server and the bot agreed on {other:?}, not AES-GCM"),
        };
        let len = opened.expect("the server's transmit keys open its packet");
        plain.truncate(len);
        // Sealed again with our own sealer: byte for byte what str0m sent.
        let mut resealed = Vec::new();
        sealer
            .seal(
                aad,
                u32::from_be_bytes(ssrc.try_into().unwrap()),
                u64::from(seq),
                &plain,
                &mut resealed,
            )
            .unwrap();
        assert_eq!(&resealed, datagram, "our sealer and str0m's agree");
        let seq = u64::from(seq);
        if let Some(p) = received.iter().find(|p| p.seq == seq && p.payload == plain) {
            decrypted += 1;
            assert!(!p.payload.is_empty());
        }
    }
    assert!(
        decrypted > 10,
        "{decrypted} of {} packets matched what the viewer got",
        sent.len()
    );
    // Both subscriber connections counted with their profile, none without.
    let counted = sim.engine.stats().srtp_keys;
    let none = sfu::engine::SRTP_KEY_LABELS.len() - 1;
    assert_eq!(counted[none], 0, "{counted:?}");
    assert_eq!(counted.iter().sum::<u64>(), 2, "{counted:?}");
}

/// Bytes of an RTP header with its CSRCs and extension (RFC 3550 5.3.1).
fn rtp_header_len(packet: &[u8]) -> usize {
    let csrcs = usize::from(packet[0] & 0x0f);
    let mut len = 12 + 4 * csrcs;
    if packet[0] & 0x10 != 0 {
        let words = usize::from(u16::from_be_bytes([packet[len + 2], packet[len + 3]]));
        len += 4 + 4 * words;
    }
    len
}

/// The data each bot got on the server's reliable channel, as relayed.
fn data_from(sim: &Sim, bot: usize) -> Vec<signaling::DataReceived> {
    sim.bots[bot]
        .data_received
        .iter()
        .filter(|(label, _)| label == signaling::DATA_CHANNEL_RELIABLE)
        .map(|(_, text)| serde_json::from_str(text).expect("the server writes DataReceived"))
        .collect()
}

/// Data channels: a member's messages reach the others in order with its
/// id attached; one without `publishData` is refused and relays nothing;
/// a member whose path is cut (it acknowledges nothing) is owed at most
/// 128 KiB (str0m's SCTP send buffer), its other copies dropped and
/// counted, while the rest of the room keeps getting every message.
#[test]
fn data_reaches_the_room_in_order_and_a_stalled_member_is_owed_a_bounded_buffer() {
    let mut sim = Sim::new(engine_config());
    let alice = sim.join("alice", "room-1");
    let bob = sim.join("bob", "room-1");
    let carol = sim.join("carol", "room-1");
    let no_data = Permissions {
        publish_data: false,
        ..Permissions::ALL
    };
    let dave = sim.join_with("dave", "room-1", no_data);
    sim.connect_all();
    // SCTP and the channels' open handshakes follow DTLS.
    for _ in 0..200 {
        let sent =
            sim.bots[alice].send_data(signaling::DATA_CHANNEL_RELIABLE, r#"{"payload":"hello"}"#);
        if sent.is_ok() {
            break;
        }
        sim.run_for(Duration::from_millis(10));
    }
    sim.bots[dave]
        .send_data(
            signaling::DATA_CHANNEL_RELIABLE,
            r#"{"payload":"from dave"}"#,
        )
        .expect("dave's channel is open too");
    sim.run_for(Duration::from_millis(500));
    for viewer in [bob, carol] {
        let got = data_from(&sim, viewer);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0].from.as_str(), got[0].payload.as_str()),
            ("p-alice", "hello")
        );
    }
    assert_eq!(errors(&sim, dave), vec![ErrorCode::PermissionDenied]);
    assert!(
        data_from(&sim, alice).is_empty(),
        "nothing came back to alice, nothing from dave"
    );

    // Carol's path is cut; alice sends 2 KiB messages at 40 a second (within
    // her rate) for 5 s: 400 KiB, more than carol may be owed.
    sim.cut.push(carol);
    let payload = "x".repeat(2000);
    let count = 200;
    for i in 0..count {
        let frame = serde_json::json!({ "payload": format!("{i:03}{payload}") }).to_string();
        sim.bots[alice]
            .send_data(signaling::DATA_CHANNEL_RELIABLE, &frame)
            .expect("alice's channel takes it");
        sim.run_for(Duration::from_millis(25));
    }
    sim.run_for(Duration::from_secs(1));
    let at_bob: Vec<String> = data_from(&sim, bob)[1..]
        .iter()
        .map(|m| m.payload[..3].to_string())
        .collect();
    let sent: Vec<String> = (0..count).map(|i| format!("{i:03}")).collect();
    assert_eq!(at_bob, sent, "bob got every message, in order");
    let stats = sim.engine.stats();
    let slow = stats.data_dropped[sfu::engine::DataDrop::ReceiverSlow as usize];
    // What carol could still be owed is bounded: at most 128 KiB of 2 KiB
    // copies were queued for her (64), the rest dropped.
    assert!(
        slow >= count - 66,
        "{slow} copies to carol dropped of {count}"
    );
    assert_eq!(stats.data_messages_in, 2 + count);
    assert_eq!(stats.data_refused, 1);
}

/// A publisher and a viewer whose subscriber connection is on the own SRTP
/// egress (the default; said here so the tests below keep it).
fn own_egress_pair() -> (Sim, usize, usize) {
    let mut config = engine_config();
    config.own_egress = true;
    publisher_and_viewer_in(config, false)
}

/// The packets of one kind a bot received, in order.
fn of_kind(
    received: &[native::bot::ReceivedPacket],
    kind: MediaKind,
) -> Vec<&native::bot::ReceivedPacket> {
    received.iter().filter(|p| p.kind == kind).collect()
}

/// On the own egress, str0m writes none of the forwarded media: the server
/// seals every copy itself, and the viewer's str0m opens every one of them
/// (wrong keys, header or extensions and it would drop them), in order,
/// numbered on by one, with the publisher's payload.
#[test]
fn the_own_egress_carries_what_the_viewer_opens() {
    let (mut sim, _, viewer) = own_egress_pair();
    sim.run_for(Duration::from_secs(2));
    let stats = sim.engine.stats();
    assert!(
        stats.own_sent > 100,
        "copies sealed by the server: {stats:?}"
    );
    let received = &sim.bots[viewer].received;
    for kind in [MediaKind::Audio, MediaKind::Video] {
        let packets = of_kind(received, kind);
        assert!(packets.len() > 50, "{kind:?} arrived: {}", packets.len());
        for pair in packets.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq + 1, "{kind:?} numbered on by one");
        }
        assert!(
            packets
                .iter()
                .all(|p| p.from == "a" || p.payload.windows(2).any(|w| w == b"a:"))
        );
        assert!(
            packets.iter().all(|p| p.abs_send_time.is_some()),
            "abs-send-time written on every {kind:?} copy"
        );
    }
    // Every copy went through the own egress: nothing was dropped once the
    // connection was up.
    assert_eq!(stats.own_sent, stats.rtp_forwarded, "{stats:?}");
}

/// Our sender reports put audio and video on the publisher's clock: the
/// audio and video the publisher sent in one tick map, through the
/// reports the viewer got from the server, to the same NTP time (lip
/// sync), and that time moves with the ticks.
#[test]
fn the_own_egress_reports_keep_audio_and_video_in_sync() {
    let (mut sim, _, viewer) = own_egress_pair();
    // str0m's publisher reports audio every 5 s.
    sim.run_for(Duration::from_secs(7));
    assert!(
        sim.engine.stats().own_sender_reports > 3,
        "{:?}",
        sim.engine.stats()
    );
    let received = &sim.bots[viewer].received;
    let ntp_of = |p: &native::bot::ReceivedPacket, rate: f64| {
        let (ntp, rtp) = p.sender_report?;
        let ahead = f64::from(p.timestamp.wrapping_sub(rtp) as i32) / rate;
        Some(if ahead >= 0.0 {
            ntp + Duration::from_secs_f64(ahead)
        } else {
            ntp - Duration::from_secs_f64(-ahead)
        })
    };
    let tick = |p: &native::bot::ReceivedPacket| {
        let text = String::from_utf8_lossy(&p.payload).to_string();
        let at = text.find("a:")?;
        text[at..]
            .split(':')
            .nth(2)?
            .trim_end_matches('\0')
            .parse::<u64>()
            .ok()
    };
    let audio: HashMap<u64, std::time::SystemTime> = of_kind(received, MediaKind::Audio)
        .into_iter()
        .filter_map(|p| Some((tick(p)?, ntp_of(p, 48_000.0)?)))
        .collect();
    let mut compared = 0;
    let mut first: Option<(u64, std::time::SystemTime)> = None;
    for p in of_kind(received, MediaKind::Video) {
        let (Some(n), Some(video_ntp)) = (tick(p), ntp_of(p, 90_000.0)) else {
            continue;
        };
        let Some(audio_ntp) = audio.get(&n) else {
            continue;
        };
        let skew = match video_ntp.duration_since(*audio_ntp) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        assert!(
            skew < Duration::from_millis(5),
            "tick {n}: audio and video {skew:?} apart"
        );
        let (n0, ntp0) = *first.get_or_insert((n, video_ntp));
        if n > n0 {
            let moved = video_ntp.duration_since(ntp0).unwrap_or_default();
            let ticks = Duration::from_millis(20 * (n - n0));
            assert!(
                moved + Duration::from_millis(5) >= ticks
                    && moved <= ticks + Duration::from_millis(5),
                "{} ticks after the first, the clock moved {moved:?}",
                n - n0
            );
        }
        compared += 1;
    }
    assert!(compared > 50, "ticks with both reports: {compared}");
}

/// A lossy path to the viewer: its NACKs come back as raw RTCP and the
/// server sends the very datagrams again from its ring; the viewer ends
/// with every video packet. Across the run, no SRTP or SRTCP nonce was
/// used for two different packets.
#[test]
fn the_own_egress_answers_nacks_and_never_reuses_a_nonce() {
    let (mut sim, _, viewer) = own_egress_pair();
    sim.run_for(Duration::from_millis(500));
    let to = sim.bots[viewer].subscriber_addr;
    sim.lossy_to.insert(to, (7, 0));
    sim.record_sent_to = Some((to, Vec::new()));
    let from = sim.bots[viewer].received.len();
    sim.run_for(Duration::from_secs(3));
    sim.lossy_to.clear();
    sim.run_for(Duration::from_millis(500));
    let stats = sim.engine.stats();
    assert!(
        stats.own_resent > 10,
        "NACKed packets sent again: {stats:?}"
    );
    let mut seqs: Vec<u64> = of_kind(&sim.bots[viewer].received[from..], MediaKind::Video)
        .iter()
        .map(|p| p.seq)
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    let (lo, hi) = (seqs[0], seqs[seqs.len() - 1]);
    assert_eq!(
        seqs.len() as u64,
        hi - lo + 1,
        "every video packet from {lo} to {hi} arrived"
    );

    let (_, sent) = sim.record_sent_to.take().unwrap();
    // (RTP?, SSRC, index) -> the datagram sealed under it.
    let mut nonces: HashMap<(bool, u32, u32), &[u8]> = HashMap::new();
    let (mut rtp_count, mut rtcp_count) = (0, 0);
    for datagram in &sent {
        if datagram.len() < 12 || datagram[0] >> 6 != 2 {
            continue;
        }
        let rtp = is_rtp(datagram);
        let ssrc_at = if rtp { 8 } else { 4 };
        let ssrc = u32::from_be_bytes(datagram[ssrc_at..ssrc_at + 4].try_into().unwrap());
        let index = if rtp {
            // Within 3 s no sequence number wraps: (SSRC, seq) is the nonce.
            rtp_count += 1;
            u32::from(u16::from_be_bytes([datagram[2], datagram[3]]))
        } else {
            // SRTCP: E | index ends an AES-GCM packet (the profile here).
            rtcp_count += 1;
            let tail = &datagram[datagram.len() - 4..];
            u32::from_be_bytes(tail.try_into().unwrap()) & 0x7fff_ffff
        };
        if let Some(before) = nonces.insert((rtp, ssrc, index), datagram) {
            assert_eq!(
                before,
                &datagram[..],
                "({ssrc}, {index}) sealed two packets (RTP: {rtp})"
            );
        }
    }
    assert!(
        rtp_count > 100 && rtcp_count > 1,
        "{rtp_count} RTP, {rtcp_count} RTCP"
    );
}

/// The server's ICE restart on a subscriber connection: its new ufrag
/// becomes routable once the client's answer is in (str0m takes the new
/// credentials with the answer). Without that, STUN from the client's
/// new candidates (Chromium gathers new ports on a restart) named a ufrag
/// nobody knew and was dropped, and the restart never completed.
#[test]
fn a_subscriber_ice_restarts_new_ufrag_is_routable_after_the_answer() {
    let mut sim = Sim::publishing(engine_config(), "call", &["a", "b"]);
    sim.events.clear();
    sim.bots[1].restart_ice();
    sim.deliver();
    let offer_ufrag = sim.bots[1]
        .messages
        .iter()
        .rev()
        .find_map(|m| match m {
            ServerMessage::SubscriberOffer { sdp, .. } => sdp
                .lines()
                .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
                .map(str::to_string),
            _ => None,
        })
        .expect("a restart offer");
    assert!(
        sim.events
            .iter()
            .any(|e| matches!(e, Event::UfragLearned(u) if *u == offer_ufrag)),
        "the restart offer's ufrag {offer_ufrag} was never made routable: {:?}",
        sim.events
    );
}
