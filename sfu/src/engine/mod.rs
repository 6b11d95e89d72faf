//! The SFU engine: a sans-IO core that owns the str0m `Rtc`s of its rooms.
//!
//! Inputs are datagrams, commands from signaling sessions and timeouts, each
//! with the `Instant` it happened at; outputs are transmits, events for the
//! shell and the next timeout. The engine never reads a clock, never touches
//! a socket and takes no locks: one engine runs on one thread and owns every
//! `Rtc` in its rooms (rooms are sharded across engines by the shell).
//!
//! Poll order, after every [`Engine::handle_input`]: call
//! [`Engine::poll_output`] until it returns [`Output::Timeout`].
//!
//! Each participant has two peer connections (LiveKit's design): on the
//! *publisher* connection only the client offers, on the *subscriber*
//! connection only the server offers, so offers never cross (no glare).

mod commands;
mod data;
mod downlink;
mod dynacast;
mod egress;
mod forward;
mod ice_credentials;
mod keyframe;
mod negotiate;
mod offer_policy;
mod participant;
mod peer;
mod remote_candidates;
mod rewrite;
mod room;
mod simulcast;
mod speakers;
#[cfg(test)]
mod tests;
mod timers;
mod token_bucket;
mod vp8;

use std::collections::{HashMap, VecDeque};

/// A map on the forwarding path: see [`Engine`]'s `rooms`.
pub(crate) type FastMap<K, V> = foldhash::HashMap<K, V>;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use signaling::{
    ClientMessage, ErrorCode, LayerRequest, LeaveReason, ParticipantInfo, ParticipantState,
    PeerTarget, Permissions, ServerMessage, SpeakerInfo, TrackInfo, TrackKind, TrackMid,
    VideoQuality,
};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::config::DtlsCert;
use str0m::format::PayloadParams;
use str0m::ice::StunMessage;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Rid};
use str0m::net::{DatagramRecv, Protocol, Receive, TcpType, Transmit};
use str0m::rtp::{Extension, ExtensionMap, RtpPacket, RtpWrite};
use str0m::{Candidate, Event as RtcEvent, IceConnectionState, Input as RtcInput};
use str0m::{Output as RtcOutput, Rtc};

use participant::{DownState, DownTrack, Participant};
use peer::{OwnPath, Peer, RtcPanicked};

use crate::srtp::capture::{Captured, KeySlot};
use crate::srtp::egress::Route;
use egress::is_stun;
use rewrite::resolve_pt;
use room::{Layers, Room, Track};
use simulcast::DownStream;

pub use data::DataDrop;
pub use offer_policy::{OfferedSend, offered_sends};
use timers::TimerKind;
pub use token_bucket::TokenBucket;

/// A pause between two packets of a published track that counts as a gap
/// in its stream: video runs at 15-30 frames a second and audio at 50
/// packets, so a quarter second without any is a visible freeze.
pub const STREAM_GAP: Duration = Duration::from_millis(250);
/// A pause in one published track's packets, as the engine received them.
#[derive(Debug, Clone)]
pub struct StreamGap {
    pub call_id: String,
    pub participant_id: String,
    pub track_id: String,
    pub kind: TrackKind,
    pub gap: Duration,
}

/// Gaps held for the shell between its reads (it reads every 100 ms; more
/// than this many would be a storm, and the rest are not worth the memory).
const MAX_HELD_GAPS: usize = 1024;

/// The timer entry of `kind` a participant has armed, as it stands now.
fn current_deadline(
    participants: &FastMap<ParticipantKey, Participant>,
    key: ParticipantKey,
    kind: TimerKind,
) -> Option<Instant> {
    let p = participants.get(&key)?;
    match kind {
        TimerKind::Publisher => p.publisher.armed,
        TimerKind::Subscriber => p.subscriber.armed,
        TimerKind::Grace => p.grace_deadline,
        TimerKind::MediaDeadline => p.media_deadline,
    }
}

/// `exts` without the transport-wide sequence number (TWCC).
fn without_transport_feedback(exts: ExtensionMap) -> ExtensionMap {
    let mut kept = ExtensionMap::empty();
    for (id, ext) in exts.iter() {
        if *ext != Extension::TransportSequenceNumber {
            kept.set(id, ext.clone());
        }
    }
    kept
}

/// Where a received RTP packet belongs, read from its `Rtc` while that was
/// at hand: its m-line, its simulcast layer and its codec.
struct RtpOrigin {
    mid: Option<Mid>,
    rid: Option<Rid>,
    params: Option<PayloadParams>,
}

/// A signaling connection, numbered by the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A participant inside one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantKey(u64);

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This engine's index; it prefixes every local ICE ufrag so the shell can
    /// route STUN from a new address to the right engine without a lookup.
    pub shard: u8,
    /// Host candidates announced to clients (the public IPs of a server behind
    /// 1:1 NAT). Datagrams are received on the one UDP port these name.
    pub host_candidates: Vec<SocketAddr>,
    /// Passive TCP host candidates (ICE over TCP, RFC 6544), for clients
    /// whose UDP is blocked; empty when the node has no ICE/TCP port. Their
    /// type preference is below UDP's, so a client with both uses UDP.
    pub tcp_candidates: Vec<SocketAddr>,
    /// How long a participant whose path or WebSocket broke keeps its place.
    pub reconnect_grace: Duration,
    /// At most one keyframe request per track this often: a room of many new
    /// subscribers must not make the publisher send keyframes back to back.
    pub keyframe_request_interval: Duration,
    pub max_participants_per_room: usize,
    pub max_tracks_per_participant: usize,
    /// Drop remote candidates for loopback, private, CGNAT and link-local
    /// addresses (unspecified, multicast and broadcast are always dropped).
    /// Off by default: self-hosted LAN deployments connect over them.
    pub deny_private_candidates: bool,
    /// A participant none of whose connections came up by this long after
    /// joining is removed (`left` `timeout`).
    pub media_deadline: Duration,
    /// The 1:1 fast path (on by default; off only to compare paths in tests).
    pub fast_path: bool,
    /// Subscriber connections estimate their downlink (str0m's TWCC
    /// estimator, pacer and probes) and each video track gets the layer
    /// that fits (`downlink.rs`). Off: no estimator on them; the browser's
    /// REMB is relayed on the 1:1 path and layers follow requests alone.
    pub downlink_estimation: bool,
    /// Subscriber connections send forwarded media through the server's
    /// own SRTP egress (`crate::srtp::egress`) instead of str0m's write
    /// path; str0m keeps ICE, DTLS, SCTP and incoming RTCP. Chosen per
    /// connection when it is made. Not with `downlink_estimation` (whose
    /// pacer and probes are str0m's). On by default.
    pub own_egress: bool,
    /// How often each stream's RTCP receiver report figures (loss, jitter)
    /// become [`Event::StreamQuality`].
    pub stats_interval: Duration,
}

/// Stream quality every 5 s: what an operator's dashboards resolve, at a
/// few observations per stream per scrape.
pub const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// str0m's sender-report interval on own-egress connections: 50 years.
/// str0m counts it from its start of time (up to an hour before the
/// process's first connection), so a shorter one would come due on a
/// long-running server.
const NO_STR0M_REPORTS: Duration = Duration::from_secs(50 * 365 * 24 * 3600);

impl EngineConfig {
    pub fn new(host_candidates: Vec<SocketAddr>) -> EngineConfig {
        EngineConfig {
            shard: 0,
            host_candidates,
            tcp_candidates: Vec::new(),
            reconnect_grace: Duration::from_secs(15),
            keyframe_request_interval: Duration::from_millis(500),
            max_participants_per_room: 100,
            max_tracks_per_participant: 8,
            media_deadline: Duration::from_secs(30),
            deny_private_candidates: false,
            fast_path: true,
            downlink_estimation: false,
            own_egress: true,
            stats_interval: STATS_INTERVAL,
        }
    }
}

pub enum Input<'a> {
    /// A UDP datagram that arrived on the media port.
    /// A datagram, or one RFC 4571 frame of an ICE/TCP connection
    /// (`proto` says which).
    Datagram {
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &'a [u8],
    },
    /// A request from the signaling connection `ConnId`.
    Command(ConnId, Command),
    /// Time passed; nothing else happened.
    Timeout,
    /// The node drains: joins that would open a new room are refused
    /// (`draining`); rooms already here keep taking joins and resumes.
    Drain,
    /// The drain is over: every participant leaves with `server_shutdown`.
    ShutDown,
}

/// What a signaling session asks of the engine. The shell has checked the
/// call token; the engine checks everything about the room.
#[derive(Debug, Clone)]
pub enum Command {
    Join(JoinRequest),
    /// Attach a new WebSocket to a participant that is still in the room.
    Resume {
        room: String,
        user_id: String,
        participant_id: String,
    },
    Publish {
        sdp: String,
    },
    Unpublish {
        track_id: String,
    },
    SubscriberAnswer {
        sdp: String,
    },
    Trickle {
        target: PeerTarget,
        candidate: String,
    },
    Subscribe {
        track_ids: Vec<String>,
    },
    Unsubscribe {
        track_ids: Vec<String>,
    },
    Mute {
        track_id: String,
        muted: bool,
    },
    UpdateSubscription {
        track_id: String,
        /// Refused (`bad_message`) with the reason when malformed.
        request: Result<LayerRequest, &'static str>,
    },
    RestartIce,
    Leave,
    /// The WebSocket closed without `leave`: the participant is reconnecting.
    Detach,
}

impl Command {
    /// The command's name, for metric labels (a bounded set).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Join(_) => "join",
            Command::Resume { .. } => "resume",
            Command::Publish { .. } => "publish",
            Command::Unpublish { .. } => "unpublish",
            Command::SubscriberAnswer { .. } => "subscriber_answer",
            Command::Trickle { .. } => "trickle",
            Command::Subscribe { .. } => "subscribe",
            Command::Unsubscribe { .. } => "unsubscribe",
            Command::Mute { .. } => "mute",
            Command::UpdateSubscription { .. } => "update_subscription",
            Command::RestartIce => "restart_ice",
            Command::Leave => "leave",
            Command::Detach => "detach",
        }
    }
}

/// Which way a stream goes, seen from the SFU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// A publisher's stream to us.
    Uplink,
    /// A stream we forward to a subscriber.
    Downlink,
}

impl Link {
    pub fn as_str(self) -> &'static str {
        match self {
            Link::Uplink => "uplink",
            Link::Downlink => "downlink",
        }
    }
}

/// Who joins which room, as the call token grants it.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub room: String,
    pub user_id: String,
    pub participant_id: String,
    pub permissions: Permissions,
    pub auto_subscribe: bool,
    pub device: DeviceLabel,
}

/// The device a participant joined from, as its call token names it: for
/// log lines and call control, never trusted for anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLabel {
    pub device_id: String,
    /// `ios`, `android`, `web`, or `unknown`.
    pub platform: String,
}

impl DeviceLabel {
    /// A token that names no device (development tokens).
    pub fn unknown() -> DeviceLabel {
        DeviceLabel {
            device_id: "unknown".into(),
            platform: "unknown".into(),
        }
    }
}

/// A participant as call control knows it: the call, the user, the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub call_id: String,
    pub user_id: String,
    pub device: DeviceLabel,
}

impl Command {
    /// The engine command for a client message in a joined session; `None`
    /// for the messages the session itself answers (`join`, `ping`).
    pub fn from_client(message: ClientMessage) -> Option<Command> {
        Some(match message {
            ClientMessage::Join { .. } | ClientMessage::Ping { .. } => return None,
            ClientMessage::Publish { sdp } => Command::Publish { sdp },
            ClientMessage::Unpublish { track_id } => Command::Unpublish { track_id },
            ClientMessage::SubscriberAnswer { sdp } => Command::SubscriberAnswer { sdp },
            ClientMessage::Trickle { target, candidate } => Command::Trickle {
                target,
                candidate: candidate.candidate,
            },
            ClientMessage::Subscribe { track_ids } => Command::Subscribe { track_ids },
            ClientMessage::Unsubscribe { track_ids } => Command::Unsubscribe { track_ids },
            ClientMessage::Mute { track_id, muted } => Command::Mute { track_id, muted },
            ClientMessage::UpdateSubscription { ref track_id, .. } => Command::UpdateSubscription {
                track_id: track_id.clone(),
                request: message.layer_request()?,
            },
            ClientMessage::RestartIce => Command::RestartIce,
            ClientMessage::Leave => Command::Leave,
        })
    }
}

#[derive(Debug)]
pub enum Output {
    Transmit(Transmit),
    Event(Event),
    Timeout(Instant),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Send `message` on connection `conn`.
    Message {
        conn: ConnId,
        message: ServerMessage,
    },
    /// The engine is done with `conn`: close it after its queued messages.
    ConnClosed {
        conn: ConnId,
    },
    /// UDP datagrams from this address belong to this engine now (an
    /// ICE/TCP connection is routed by its first STUN message alone).
    AddressLearned(SocketAddr),
    /// ... and no longer.
    AddressForgotten(SocketAddr),
    /// STUN naming this local ufrag belongs to this engine.
    UfragLearned(String),
    UfragForgotten(String),
    /// A subscriber got its first forwarded packet this long after joining.
    FirstForward(Duration),
    /// A participant's first connection came up (once per participant).
    IceConnected,
    /// A participant's media first connected (call control's "connected").
    ParticipantConnected(Member),
    /// A participant left the room for good (left, or its grace ran out).
    ParticipantRemoved(Member),
    /// A participant was removed without its connections ever coming up.
    IceFailed,
    /// One stream's loss and jitter, from the last RTCP receiver report
    /// about it: ours about a publisher's stream (`Uplink`), or a
    /// subscriber's about what we forward (`Downlink`).
    StreamQuality {
        link: Link,
        kind: TrackKind,
        /// The fraction of packets lost since the report before it (0-1).
        loss: f32,
        jitter: Duration,
    },
}

/// Counters the shell exports as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub rtp_in: u64,
    pub rtp_forwarded: u64,
    pub rtp_forwarded_bytes: u64,
    pub keyframe_requests: u64,
    pub dropped_datagrams: u64,
    /// Participants removed because str0m panicked inside one of their `Rtc`s.
    pub participants_failed: u64,
    /// Receivers' REMB estimates passed on to a 1:1 peer's publisher.
    pub remb_relayed: u64,
    /// Subscribers moved to a higher / lower simulcast layer (at a keyframe).
    pub layer_switches_up: u64,
    pub layer_switches_down: u64,
    /// Subscribers that started or stopped receiving a temporal layer.
    pub temporal_switches_up: u64,
    pub temporal_switches_down: u64,
    /// Messages members wrote on the room's data channels.
    pub data_messages_in: u64,
    /// Of those, refused (rate, permission, size, shape).
    pub data_refused: u64,
    /// Copies written to recipients' channels.
    pub data_messages_out: u64,
    /// Copies not written, by [`DataDrop`] (its `as usize`).
    pub data_dropped: [u64; DataDrop::ALL.len()],
    /// Subscriber connections up, by the SRTP keys captured of them
    /// ([`SRTP_KEY_LABELS`]: a profile, or none).
    pub srtp_keys: [u64; SRTP_KEY_LABELS.len()],
    /// Own egress: RTP copies sealed and sent.
    pub own_sent: u64,
    /// Own egress: copies not sent (no keys or route yet, a refused stream).
    pub own_dropped: u64,
    /// Own egress: packets sent again for a NACK.
    pub own_resent: u64,
    /// Own egress: sender-report datagrams.
    pub own_sender_reports: u64,
}

/// `switchboard_srtp_keys_captured_total` labels, [`EngineStats::srtp_keys`]
/// order: the SRTP profiles, then `none` (the DTLS wrapper saw no keys: the
/// own egress could not run on that connection).
pub const SRTP_KEY_LABELS: [&str; 4] = [
    "aes128_cm_sha1_80",
    "aead_aes_128_gcm",
    "aead_aes_256_gcm",
    "none",
];

/// Where a subscriber connection's captured keys count in
/// [`EngineStats::srtp_keys`].
/// A received datagram: protocol, source, our address it reached, bytes.
type Datagram<'a> = (Protocol, SocketAddr, SocketAddr, &'a [u8]);

/// str0m's input for a datagram; `None` for bytes that are no datagram it
/// takes (empty, or longer than it allows).
fn receive_input(
    (proto, source, destination, bytes): Datagram<'_>,
    now: Instant,
) -> Option<RtcInput<'_>> {
    let contents = DatagramRecv::try_from(bytes).ok()?;
    Some(RtcInput::Receive(
        now,
        Receive {
            proto,
            source,
            destination,
            contents,
        },
    ))
}

fn srtp_key_label(captured: Option<&Captured>) -> usize {
    use str0m::crypto::dtls::SrtpProfile;
    match captured.map(|c| c.profile) {
        Some(SrtpProfile::AES128_CM_SHA1_80) => 0,
        Some(SrtpProfile::AEAD_AES_128_GCM) => 1,
        Some(SrtpProfile::AEAD_AES_256_GCM) => 2,
        _ => 3,
    }
}

/// Buffers kept for reuse hold at least this (any datagram the egress
/// writes, an MTU-sized packet and its SRTP tag) ...
const RECYCLED_CAPACITY: usize = 1_500;
/// ... and at most this many are kept: the copies one step of a 1,000-
/// member room writes, about 6 MB.
const MAX_SPARE_BUFFERS: usize = 4_096;

pub struct Engine {
    config: EngineConfig,
    dtls_cert: DtlsCert,
    /// The crypto of subscriber connections: str0m's, with their DTLS
    /// keying material kept for the own SRTP egress (`crate::srtp`).
    subscriber_crypto: std::sync::Arc<str0m::config::CryptoProvider>,
    // foldhash on the maps every forwarded packet reads (std's SipHash
    // showed in profiles); its seed is random per map, so keys a client
    // influences (addresses) cannot be aimed at one bucket.
    rooms: FastMap<String, Room>,
    participants: FastMap<ParticipantKey, Participant>,
    timers: timers::Timers<Instant>,
    conns: HashMap<ConnId, ParticipantKey>,
    /// Remote transport addresses by protocol (a client's UDP port and an
    /// ICE/TCP connection's port may be the same number).
    by_addr: FastMap<(Protocol, SocketAddr), (ParticipantKey, PeerTarget)>,
    by_ufrag: HashMap<String, (ParticipantKey, PeerTarget)>,
    outputs: VecDeque<Output>,
    /// Sent datagrams' buffers, for the own egress's next copies
    /// ([`Engine::recycle_buffer`]).
    spare_buffers: Vec<Vec<u8>>,
    /// Peers that took input and must be drained.
    dirty: Vec<(ParticipantKey, PeerTarget)>,
    /// Participants to remove at the end of this input.
    doomed: Vec<(ParticipantKey, LeaveReason)>,
    /// Subscribers whose tracks changed in this input: each gets one offer
    /// when the input is settled, however many changes it made (a publish
    /// of audio and video, a leaver's tracks).
    offers_due: Vec<ParticipantKey>,
    next_key: u64,
    next_track: u64,
    stats: EngineStats,
    /// Gaps of at least [`STREAM_GAP`] between two packets of an unmuted
    /// published track, as the engine received them, until the shell takes
    /// them ([`Engine::take_stream_gaps`]; at most [`MAX_HELD_GAPS`] held).
    stream_gaps: Vec<StreamGap>,
    /// The latest time any input carried.
    now: Instant,
    /// Set by [`Input::Drain`]: no new rooms.
    draining: bool,
}

impl Engine {
    /// `dtls_cert` is shared by every `Rtc` of this engine: generating one per
    /// peer connection would cost a key generation per join.
    pub fn new(config: EngineConfig, dtls_cert: DtlsCert, now: Instant) -> Engine {
        Engine {
            config,
            dtls_cert,
            subscriber_crypto: std::sync::Arc::new(crate::srtp::capture::provider(
                str0m::crypto::from_feature_flags(),
            )),
            rooms: FastMap::default(),
            participants: FastMap::default(),
            timers: timers::Timers::default(),
            conns: HashMap::new(),
            by_addr: FastMap::default(),
            by_ufrag: HashMap::new(),
            outputs: VecDeque::new(),
            spare_buffers: Vec::new(),
            dirty: Vec::new(),
            doomed: Vec::new(),
            offers_due: Vec::new(),
            next_key: 1,
            next_track: 1,
            stats: EngineStats::default(),
            stream_gaps: Vec::new(),
            now,
            draining: false,
        }
    }

    pub fn host_candidates(&self) -> &[SocketAddr] {
        &self.config.host_candidates
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// The published streams' gaps since the last call: a gap here means no
    /// packet of that track reached the engine (the publisher or its
    /// network paused, or this shard was not reading), and subscribers saw
    /// the same gap. Together with how long each step took (the shell
    /// measures that), it tells the server's share of a freeze.
    pub fn take_stream_gaps(&mut self) -> Vec<StreamGap> {
        std::mem::take(&mut self.stream_gaps)
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    /// Every participant, as call control knows it.
    pub fn members(&self) -> Vec<Member> {
        self.participants
            .values()
            .map(Participant::member)
            .collect()
    }

    pub fn has_member(&self, call_id: &str, user_id: &str) -> bool {
        self.participants
            .values()
            .any(|p| p.room == call_id && p.user_id == user_id)
    }

    pub fn track_count(&self) -> usize {
        self.rooms.values().map(|r| r.tracks.len()).sum()
    }

    pub fn handle_input(&mut self, input: Input, now: Instant) {
        self.now = self.now.max(now);
        match input {
            Input::Datagram {
                proto,
                source,
                destination,
                contents,
            } => self.handle_datagram(proto, source, destination, contents, now),
            Input::Command(conn, command) => self.handle_command(conn, command, now),
            Input::Timeout => self.handle_timeout(now),
            Input::Drain => self.draining = true,
            Input::ShutDown => {
                let everyone: Vec<ParticipantKey> = self.participants.keys().copied().collect();
                for key in everyone {
                    self.remove_participant(key, LeaveReason::ServerShutdown, now);
                }
            }
        }
        self.settle(now);
    }

    /// A transmit's buffer the shell has sent: kept for a later copy if it
    /// holds any datagram without growing. Enough are kept for the copies of
    /// one busy step; the rest are freed.
    pub fn recycle_buffer(&mut self, mut buffer: Vec<u8>) {
        if buffer.capacity() >= RECYCLED_CAPACITY && self.spare_buffers.len() < MAX_SPARE_BUFFERS {
            buffer.clear();
            self.spare_buffers.push(buffer);
        }
    }

    pub fn poll_output(&mut self) -> Output {
        if let Some(o) = self.outputs.pop_front() {
            return o;
        }
        Output::Timeout(self.next_timeout())
    }

    fn next_timeout(&mut self) -> Instant {
        let participants = &self.participants;
        let next = self
            .timers
            .next(|at, key, kind| current_deadline(participants, key, kind) == Some(at));
        // With nothing to wait for, come back in a second anyway.
        next.unwrap_or(self.now + Duration::from_secs(1))
    }

    /// A UDP datagram from an address a connection of this engine has
    /// proven (by ICE) is handled, `true`: the shell's one lookup per
    /// datagram, as most reach their owner directly. From any other
    /// address nothing changes, `false`: the shell routes it, and STUN
    /// naming one of this engine's ufrags comes back through
    /// [`Engine::handle_input`].
    pub fn handle_known_datagram(
        &mut self,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
        now: Instant,
    ) -> bool {
        let Some(&owner) = self.by_addr.get(&(Protocol::Udp, source)) else {
            return false;
        };
        self.now = self.now.max(now);
        let datagram = (Protocol::Udp, source, destination, contents);
        if let Some(input) = receive_input(datagram, now) {
            self.receive(owner, input, datagram);
        } else {
            self.stats.dropped_datagrams += 1;
        }
        self.settle(now);
        true
    }

    fn handle_datagram(
        &mut self,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        bytes: &[u8],
        now: Instant,
    ) {
        let datagram = (proto, source, destination, bytes);
        let Some(input) = receive_input(datagram, now) else {
            self.stats.dropped_datagrams += 1;
            return;
        };
        let owner = match self.by_addr.get(&(proto, source)) {
            Some(owner) => Some(*owner),
            None => self.owner_by_stun(bytes, &input, proto, source),
        };
        let Some(owner) = owner else {
            self.stats.dropped_datagrams += 1;
            return;
        };
        self.receive(owner, input, datagram);
    }

    /// A datagram into its owner's `Rtc`.
    fn receive(
        &mut self,
        (key, target): (ParticipantKey, PeerTarget),
        input: RtcInput<'_>,
        (proto, source, destination, _): Datagram<'_>,
    ) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let peer = p.peer_mut(target);
        if peer.own.is_some() {
            peer.receiving_from = Some(Route {
                proto,
                source: destination,
                destination: source,
            });
        }
        match p.peer_mut(target).guard(|rtc| rtc.handle_input(input)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(participant = %p.id, user_id = %p.user_id, device_id = %p.device.device_id, platform = %p.device.platform, call_id = %p.room, error = %e, "input refused by rtc")
            }
            Err(RtcPanicked) => self.fail_participant(key),
        }
        self.dirty.push((key, target));
    }

    /// A datagram from an unknown address: only STUN whose username names one
    /// of our ufrags may introduce it (ICE consent proves the address).
    fn owner_by_stun(
        &mut self,
        bytes: &[u8],
        input: &RtcInput,
        proto: Protocol,
        source: SocketAddr,
    ) -> Option<(ParticipantKey, PeerTarget)> {
        let stun = StunMessage::parse(bytes).ok()?;
        let (local_ufrag, remote_ufrag) = stun.split_username()?;
        let max_remote = ice_credentials::max_remote_ufrag(local_ufrag.len());
        ice_credentials::check_ufrag(remote_ufrag, max_remote).ok()?;
        let (key, target) = *self.by_ufrag.get(local_ufrag)?;
        let p = self.participants.get_mut(&key)?;
        let peer = p.peer_mut(target);
        match peer.guard(|rtc| rtc.accepts(input)) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(RtcPanicked) => {
                self.fail_participant(key);
                return None;
            }
        }
        peer.addresses.push((proto, source));
        self.by_addr.insert((proto, source), (key, target));
        if proto == Protocol::Udp {
            self.outputs
                .push_back(Output::Event(Event::AddressLearned(source)));
        }
        Some((key, target))
    }

    fn handle_timeout(&mut self, now: Instant) {
        let participants = &self.participants;
        let due = self.timers.due(now, |at, key, kind| {
            current_deadline(participants, key, kind) == Some(at)
        });
        for (key, kind) in due {
            let Some(p) = self.participants.get_mut(&key) else {
                continue;
            };
            let target = match kind {
                TimerKind::Publisher => PeerTarget::Publisher,
                TimerKind::Subscriber => PeerTarget::Subscriber,
                TimerKind::Grace | TimerKind::MediaDeadline => {
                    self.doomed.push((key, LeaveReason::Timeout));
                    continue;
                }
            };
            let peer = p.peer_mut(target);
            // Its heap entry is gone.
            peer.armed = None;
            match peer.next_timeout {
                Some(deadline) if deadline > now => {
                    // Armed for an earlier deadline that has since moved on.
                    peer.armed = Some(deadline);
                    self.timers.schedule(deadline, key, kind);
                }
                Some(_) => {
                    // Forget the deadline so the drain schedules whatever
                    // comes next, even the same instant.
                    peer.next_timeout = None;
                    // A timeout is never refused; an error here means the
                    // Rtc is dead, which the drain notices.
                    if peer
                        .guard(|rtc| rtc.handle_input(RtcInput::Timeout(now)))
                        .is_err()
                    {
                        self.fail_participant(key);
                    }
                    self.dirty.push((key, target));
                }
                None => {}
            }
        }
    }

    /// Drains every touched peer (which may touch others, e.g. forwarding),
    /// then removes participants whose time is up.
    /// Removals and drains can change subscriptions, so offers go out last.
    fn settle(&mut self, now: Instant) {
        // Bounded: each drain empties an Rtc; forwarding and data relay
        // only write to subscriber peers, and writing raises no event that
        // forwards or relays again; a removal
        // dooms no one else; an offer only dirties its own connection.
        loop {
            while let Some((key, target)) = self.dirty.pop() {
                self.drain(key, target, now);
            }
            if let Some((key, reason)) = self.doomed.pop() {
                self.remove_participant(key, reason, now);
                continue;
            }
            if self.offers_due.is_empty() {
                break;
            }
            for key in std::mem::take(&mut self.offers_due) {
                self.negotiate_subscriber(key);
            }
        }
        // Three deadlines per participant are current; far more entries
        // means stale ones pile up behind a far deadline.
        if self.timers.len() > 8 * self.participants.len() + 64 {
            let participants = &self.participants;
            self.timers
                .compact(|at, key, kind| current_deadline(participants, key, kind) == Some(at));
        }
    }

    fn drain(&mut self, key: ParticipantKey, target: PeerTarget, now: Instant) {
        let mut events = Vec::new();
        let mut panicked = false;
        {
            let Some(p) = self.participants.get_mut(&key) else {
                return;
            };
            // Field borrows, not peer_mut(): the log lines below read p.id.
            let peer = match target {
                PeerTarget::Publisher => &mut p.publisher,
                PeerTarget::Subscriber => &mut p.subscriber,
            };
            loop {
                let polled = peer.guard(|rtc| rtc.is_alive().then(|| rtc.poll_output()));
                let output = match polled {
                    Ok(Some(output)) => output,
                    Ok(None) => {
                        peer.next_timeout = None;
                        self.doomed.push((key, LeaveReason::Timeout));
                        break;
                    }
                    Err(RtcPanicked) => {
                        peer.next_timeout = None;
                        panicked = true;
                        break;
                    }
                };
                match output {
                    Ok(RtcOutput::Timeout(t)) => {
                        peer.next_timeout = Some(t);
                        if peer.armed.is_none_or(|armed| t < armed) {
                            peer.armed = Some(t);
                            let kind = match target {
                                PeerTarget::Publisher => TimerKind::Publisher,
                                PeerTarget::Subscriber => TimerKind::Subscriber,
                            };
                            self.timers.schedule(t, key, kind);
                        }
                        break;
                    }
                    Ok(RtcOutput::Transmit(t)) => {
                        if let Some(own) = &mut peer.own
                            && !is_stun(&t.contents)
                        {
                            // DTLS or RTCP: str0m sends those on the selected pair.
                            own.route = Some(Route {
                                proto: t.proto,
                                source: t.source,
                                destination: t.destination,
                            });
                        }
                        self.outputs.push_back(Output::Transmit(t))
                    }
                    Ok(RtcOutput::Event(e)) => {
                        let extra = match &e {
                            RtcEvent::RtpPacket(pkt) => {
                                let mut api = peer.rtc.direct_api();
                                let (mid, rid) = api
                                    .stream_rx(&pkt.header.ssrc)
                                    .map_or((None, None), |s| (Some(s.mid()), s.rid()));
                                let params = peer
                                    .rtc
                                    .codec_config()
                                    .find(|c| c.pt() == pkt.header.payload_type)
                                    .cloned();
                                Some(RtpOrigin { mid, rid, params })
                            }
                            _ => None,
                        };
                        events.push((e, extra));
                    }
                    Err(e) => {
                        tracing::info!(participant = %p.id, user_id = %p.user_id, device_id = %p.device.device_id, platform = %p.device.platform, call_id = %p.room, error = %e, "peer connection failed");
                        let _ = peer.guard(|rtc| rtc.disconnect());
                    }
                }
            }
        }
        if panicked {
            self.fail_participant(key);
            return;
        }
        for (event, extra) in events {
            self.handle_rtc_event(key, target, event, extra, now);
        }
    }

    fn handle_rtc_event(
        &mut self,
        key: ParticipantKey,
        target: PeerTarget,
        event: RtcEvent,
        extra: Option<RtpOrigin>,
        now: Instant,
    ) {
        match event {
            RtcEvent::IceConnectionStateChange(state) => self.on_ice_state(key, target, state, now),
            // A media the client sends to us (our side receives).
            RtcEvent::MediaAdded(added)
                if target == PeerTarget::Publisher
                    && !matches!(added.direction, Direction::SendOnly | Direction::Inactive) =>
            {
                self.add_track(key, added.mid, added.kind, None);
            }
            RtcEvent::MediaChanged(changed) if target == PeerTarget::Publisher => {
                if matches!(changed.direction, Direction::SendOnly | Direction::Inactive) {
                    let track = self.published_track(key, changed.mid);
                    if let Some(track_key) = track {
                        self.remove_track(key, track_key);
                    }
                }
            }
            RtcEvent::RawPacket(raw) if target == PeerTarget::Subscriber => {
                self.own_egress_rtcp(key, *raw, now)
            }
            RtcEvent::RtpPacket(pkt) if target == PeerTarget::Publisher => {
                self.stats.rtp_in += 1;
                if let Some(RtpOrigin {
                    mid: Some(mid),
                    rid,
                    params,
                }) = extra
                {
                    self.forward(key, mid, rid, params, &pkt, now);
                }
            }
            RtcEvent::Connected if target == PeerTarget::Subscriber => {
                let captured = self
                    .participants
                    .get(&key)
                    .and_then(|p| p.subscriber.srtp_keys.as_ref()?.get());
                self.stats.srtp_keys[srtp_key_label(captured.as_ref())] += 1;
                self.start_own_egress(key);
                let open_video: Vec<u64> = self
                    .participants
                    .get(&key)
                    .map(|p| {
                        p.down
                            .iter()
                            .filter(|d| d.kind == TrackKind::Video)
                            .filter(|d| matches!(d.state, DownState::Open(_)))
                            .map(|d| d.track_key)
                            .collect()
                    })
                    .unwrap_or_default();
                for track_key in open_video {
                    let layer = self.subscriber_layer(key, track_key, now);
                    self.request_keyframe(key, track_key, layer, KeyframeRequestKind::Pli, now);
                }
            }
            RtcEvent::KeyframeRequest(req) if target == PeerTarget::Subscriber => {
                let track = self
                    .participants
                    .get(&key)
                    .and_then(|p| p.down_by_mid(req.mid))
                    .map(|d| d.track_key);
                if let Some(track_key) = track {
                    let layer = self.subscriber_layer(key, track_key, now);
                    self.request_keyframe(key, track_key, layer, req.kind, now);
                }
            }
            RtcEvent::ChannelData(data) if target == PeerTarget::Subscriber => {
                self.on_channel_data(key, data, now);
            }
            RtcEvent::EgressBitrateEstimate(BweKind::Twcc { estimate, .. })
                if target == PeerTarget::Subscriber =>
            {
                self.on_downlink_estimate(key, estimate, now);
            }
            RtcEvent::EgressBitrateEstimate(BweKind::Remb { estimate, .. })
                if target == PeerTarget::Subscriber =>
            {
                self.feed_back_estimate(key, estimate);
            }
            RtcEvent::MediaIngressStats(stats) if target == PeerTarget::Publisher => {
                let kind = self.published_track(key, stats.mid).and_then(|track_key| {
                    let room = self.rooms.get(&self.participants.get(&key)?.room)?;
                    Some(room.tracks.get(&track_key)?.kind)
                });
                if let (Some(kind), Some(loss)) = (kind, stats.loss) {
                    self.stream_quality(Link::Uplink, kind, loss, stats.jitter);
                }
            }
            RtcEvent::MediaEgressStats(stats) if target == PeerTarget::Subscriber => {
                let kind = self
                    .participants
                    .get(&key)
                    .and_then(|p| p.down_by_mid(stats.mid))
                    .map(|d| d.kind);
                if let (Some(kind), Some(loss), Some(remote)) = (kind, stats.loss, stats.remote) {
                    self.stream_quality(Link::Downlink, kind, loss, remote.jitter);
                }
            }
            _ => {}
        }
    }

    /// One stream's receiver-report figures as an event; jitter comes in
    /// RTP timestamp units of the stream's clock (Opus 48 kHz, video 90 kHz).
    pub(super) fn stream_quality(
        &mut self,
        link: Link,
        kind: TrackKind,
        loss: f32,
        jitter_units: u32,
    ) {
        let clock_rate = match kind {
            TrackKind::Audio => 48_000.0,
            _ => 90_000.0,
        };
        self.outputs.push_back(Output::Event(Event::StreamQuality {
            link,
            kind,
            loss: loss.clamp(0.0, 1.0),
            jitter: Duration::from_secs_f64(f64::from(jitter_units) / clock_rate),
        }));
    }

    fn on_ice_state(
        &mut self,
        key: ParticipantKey,
        target: PeerTarget,
        state: IceConnectionState,
        now: Instant,
    ) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let first_for_participant = !p.publisher.was_connected && !p.subscriber.was_connected;
        let peer = p.peer_mut(target);
        peer.ice = state;
        if matches!(
            state,
            IceConnectionState::Connected | IceConnectionState::Completed
        ) && !peer.was_connected
        {
            peer.was_connected = true;
            if first_for_participant {
                // Per participant, as `IceFailed` is: their ratio is the
                // share of participants whose media never came up.
                self.outputs.push_back(Output::Event(Event::IceConnected));
                p.media_deadline = None;
                self.outputs
                    .push_back(Output::Event(Event::ParticipantConnected(p.member())));
            }
        }
        tracing::debug!(participant = %p.id, user_id = %p.user_id, device_id = %p.device.device_id, platform = %p.device.platform, call_id = %p.room, ?target, ?state, "ice state");
        self.update_presence(key, now);
    }

    /// Moves a participant between active and reconnecting as its connections
    /// and WebSocket come and go, and tells the room.
    fn update_presence(&mut self, key: ParticipantKey, now: Instant) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let state = if p.is_reconnecting() {
            ParticipantState::Reconnecting
        } else {
            ParticipantState::Active
        };
        if state == p.state {
            return;
        }
        p.state = state;
        p.grace_deadline = match state {
            ParticipantState::Reconnecting => Some(now + self.config.reconnect_grace),
            ParticipantState::Active | ParticipantState::Unknown => None,
        };
        if let Some(deadline) = p.grace_deadline {
            self.timers.schedule(deadline, key, TimerKind::Grace);
        }
        tracing::info!(participant = %p.id, user_id = %p.user_id, device_id = %p.device.device_id, platform = %p.device.platform, call_id = %p.room, ?state, "participant presence");
        let message = ServerMessage::ParticipantStateChanged {
            participant_id: p.id.clone(),
            state,
        };
        let room = p.room.clone();
        self.broadcast(&room, Some(key), message);
    }

    fn new_peer(&mut self, key: ParticipantKey, target: PeerTarget, now: Instant) -> Peer {
        let mut builder = Rtc::builder()
            .set_rtp_mode(true)
            .set_stats_interval(Some(self.config.stats_interval))
            .set_dtls_cert(self.dtls_cert.clone())
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_h264(true);
        if target == PeerTarget::Subscriber && self.config.downlink_estimation {
            // The server estimates each subscriber's downlink itself
            // (transport-wide feedback from the client) and probes it.
            builder = builder.enable_bwe(Some(downlink::INITIAL_ESTIMATE));
        } else if target == PeerTarget::Subscriber {
            // No sender-side estimator (nor its pacer) on the connections we
            // send on: the receiver estimates instead. Without the
            // transport-wide feedback extension, Chromium estimates from
            // abs-send-time and reports REMB (`goog-remb`, which str0m offers
            // for video), which the 1:1 fast path relays to the sender. A
            // pacer throttled to an estimate nobody else reads starved these
            // connections when the machine was busy (BENCHMARKS.md).
            builder =
                builder.set_extension_map(without_transport_feedback(ExtensionMap::standard()));
        }
        let own_egress = target == PeerTarget::Subscriber
            && self.config.own_egress
            && !self.config.downlink_estimation;
        if own_egress {
            // NACKs reach us as raw RTCP; str0m's sender reports would
            // describe streams it never sent, so they are ours (never
            // str0m's: an interval longer than any connection lives).
            builder = builder
                .enable_raw_packets(true)
                .set_rtcp_report_interval_audio(NO_STR0M_REPORTS)
                .set_rtcp_report_interval_video(NO_STR0M_REPORTS);
        }
        let keys = (target == PeerTarget::Subscriber).then(KeySlot::default);
        let mut rtc = match &keys {
            Some(slot) => {
                let builder = builder.set_crypto_provider(self.subscriber_crypto.clone());
                crate::srtp::capture::bind(slot, || builder.build(now))
            }
            None => builder.build(now),
        };
        for addr in &self.config.host_candidates {
            match Candidate::host(*addr, "udp") {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => tracing::warn!(%addr, error = %e, "host candidate refused"),
            }
        }
        for addr in &self.config.tcp_candidates {
            let passive = Candidate::builder()
                .tcp()
                .host(*addr)
                .tcptype(TcpType::Passive)
                .build();
            match passive {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => tracing::warn!(%addr, error = %e, "TCP host candidate refused"),
            }
        }
        let mut peer = Peer::new(target, rtc);
        peer.srtp_keys = keys;
        peer.own = own_egress.then(OwnPath::default);
        self.track_ufrag(key, &mut peer);
        peer
    }

    /// The SRTP keying material of a participant's subscriber connection,
    /// once its DTLS handshake completed (what the own egress will encrypt
    /// with; `crate::srtp::keys` derives the session keys).
    pub fn subscriber_keying_material(&self, participant_id: &str) -> Option<Captured> {
        let p = self
            .participants
            .values()
            .find(|p| p.id == participant_id)?;
        p.subscriber.srtp_keys.as_ref()?.get()
    }

    /// Registers the peer's current local ufrag if it is new (at creation and
    /// after ICE restarts, where str0m picks fresh credentials): STUN from a
    /// new address is matched on it, here and in the shell's router.
    fn track_ufrag(&mut self, key: ParticipantKey, peer: &mut Peer) {
        let ufrag = peer.rtc.direct_api().local_ice_credentials().ufrag;
        if peer.ufrags.contains(&ufrag) {
            return;
        }
        self.by_ufrag.insert(ufrag.clone(), (key, peer.target));
        self.outputs
            .push_back(Output::Event(Event::UfragLearned(ufrag.clone())));
        peer.ufrags.push(ufrag);
        // A client restarting ICE in a loop must not grow this forever; the
        // two newest cover a restart in progress.
        while peer.ufrags.len() > 2 {
            let old = peer.ufrags.remove(0);
            self.by_ufrag.remove(&old);
            self.outputs
                .push_back(Output::Event(Event::UfragForgotten(old)));
        }
    }

    fn refresh_ufrag(&mut self, key: ParticipantKey, target: PeerTarget) {
        let Some(mut p) = self.participants.remove(&key) else {
            return;
        };
        self.track_ufrag(key, p.peer_mut(target));
        self.participants.insert(key, p);
    }

    fn remove_participant(&mut self, key: ParticipantKey, reason: LeaveReason, _now: Instant) {
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        let (room_id, participant_id, conn) = (p.room.clone(), p.id.clone(), p.conn);
        let member = p.member();
        let never_connected = !p.publisher.was_connected && !p.subscriber.was_connected;
        let subscribed: Vec<u64> = p.down.iter().map(|d| d.track_key).collect();
        let owned: Vec<u64> = self
            .rooms
            .get(&room_id)
            .map(|r| {
                r.tracks
                    .values()
                    .filter(|t| t.owner == key)
                    .map(|t| t.key)
                    .collect()
            })
            .unwrap_or_default();
        for track_key in owned {
            self.remove_track(key, track_key);
        }
        for track_key in subscribed {
            if let Some(t) = self
                .rooms
                .get_mut(&room_id)
                .and_then(|r| r.tracks.get_mut(&track_key))
            {
                t.subscribers.retain(|s| *s != key);
            }
        }
        let Some(mut p) = self.participants.remove(&key) else {
            return;
        };
        for peer in [&mut p.publisher, &mut p.subscriber] {
            // A poisoned Rtc is not touched again.
            let _ = peer.guard(|rtc| rtc.disconnect());
            for (proto, addr) in peer.addresses.drain(..) {
                self.by_addr.remove(&(proto, addr));
                if proto == Protocol::Udp {
                    self.outputs
                        .push_back(Output::Event(Event::AddressForgotten(addr)));
                }
            }
            for ufrag in peer.ufrags.drain(..) {
                self.by_ufrag.remove(&ufrag);
                self.outputs
                    .push_back(Output::Event(Event::UfragForgotten(ufrag)));
            }
        }
        if never_connected && reason == LeaveReason::Timeout {
            self.outputs.push_back(Output::Event(Event::IceFailed));
        }
        if reason != LeaveReason::Replaced {
            self.outputs
                .push_back(Output::Event(Event::ParticipantRemoved(member.clone())));
        }
        if let Some(room) = self.rooms.get_mut(&room_id) {
            room.members.retain(|m| *m != key);
            // Out of the speakers at the next look (their next packet).
            room.speakers.remove(key);
            if room.members.is_empty() {
                self.rooms.remove(&room_id);
            }
        }
        self.subscriptions_changed(&room_id);
        tracing::info!(participant = %participant_id, user_id = %member.user_id, device_id = %member.device.device_id, platform = %member.device.platform, call_id = %room_id, ?reason, "left");
        self.broadcast(
            &room_id,
            None,
            ServerMessage::ParticipantLeft {
                participant_id,
                reason,
            },
        );
        if let Some(conn) = conn {
            self.conns.remove(&conn);
            if reason == LeaveReason::Failed {
                self.error(
                    conn,
                    ErrorCode::Internal,
                    "the media server lost this participant's connection state; join again",
                );
            }
            self.send(conn, ServerMessage::Left { reason });
            self.outputs
                .push_back(Output::Event(Event::ConnClosed { conn }));
        }
        // Those who received its tracks renegotiate.
        let members: Vec<ParticipantKey> = self
            .rooms
            .get(&room_id)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        for m in members {
            self.offer_due(m);
        }
    }

    /// str0m panicked inside one of `key`'s `Rtc`s: that participant (and no
    /// one else) is removed at the end of this input, with a typed error.
    fn fail_participant(&mut self, key: ParticipantKey) {
        if self.doomed.contains(&(key, LeaveReason::Failed)) {
            return;
        }
        self.stats.participants_failed += 1;
        self.doomed.push((key, LeaveReason::Failed));
        if let Some(p) = self.participants.get(&key) {
            tracing::error!(participant = %p.id, user_id = %p.user_id, device_id = %p.device.device_id, platform = %p.device.platform, call_id = %p.room, "str0m panicked in this participant's peer connection; removing it");
        }
    }

    /// A client's SDP for `key`'s `target` connection as str0m may see it:
    /// ICE credentials checked (`ice_credentials`), candidates filtered and
    /// counted (`remote_candidates`). `None` once `conn` is told why not.
    fn screen_remote_sdp(
        &mut self,
        conn: ConnId,
        key: ParticipantKey,
        target: PeerTarget,
        sdp: &str,
    ) -> Option<String> {
        let max_ufrag = self.max_remote_ufrag(key, target);
        let deny_private = self.config.deny_private_candidates;
        let screened = ice_credentials::check_sdp(sdp, max_ufrag).and_then(|()| {
            let p = self
                .participants
                .get_mut(&key)
                .ok_or("no such participant")?;
            let seen = &mut p.peer_mut(target).remote_candidates;
            seen.filter_sdp(sdp, deny_private)
        });
        match screened {
            Ok(sdp) => Some(sdp),
            Err(e) => {
                self.error(conn, ErrorCode::InvalidSdp, e);
                None
            }
        }
    }

    /// The longest remote ICE ufrag `key`'s `target` connection can take.
    fn max_remote_ufrag(&mut self, key: ParticipantKey, target: PeerTarget) -> usize {
        let local = self.participants.get_mut(&key).map_or(0, |p| {
            let rtc = &mut p.peer_mut(target).rtc;
            rtc.direct_api().local_ice_credentials().ufrag.len()
        });
        ice_credentials::max_remote_ufrag(local)
    }

    fn find_participant(&self, room_id: &str, participant_id: &str) -> Option<ParticipantKey> {
        let room = self.rooms.get(room_id)?;
        room.members.iter().copied().find(|m| {
            self.participants
                .get(m)
                .is_some_and(|p| p.id == participant_id)
        })
    }

    fn owned_track(&self, key: ParticipantKey, track_id: &str) -> Option<u64> {
        let p = self.participants.get(&key)?;
        let room = self.rooms.get(&p.room)?;
        room.tracks
            .values()
            .find(|t| t.owner == key && t.id == track_id)
            .map(|t| t.key)
    }

    /// Resolves every id or none: an unknown id is an error and changes nothing.
    fn room_tracks_by_id(
        &mut self,
        key: ParticipantKey,
        track_ids: &[String],
        conn: ConnId,
    ) -> Option<Vec<u64>> {
        let p = self.participants.get(&key)?;
        let room = self.rooms.get(&p.room)?;
        let mut keys = Vec::with_capacity(track_ids.len());
        for id in track_ids {
            match room.tracks.values().find(|t| &t.id == id && t.owner != key) {
                Some(t) => keys.push(t.key),
                None => {
                    self.error(
                        conn,
                        ErrorCode::UnknownTrack,
                        format!("no track {id} to subscribe to"),
                    );
                    return None;
                }
            }
        }
        Some(keys)
    }

    fn tracks_of(&self, key: ParticipantKey) -> Vec<TrackInfo> {
        let Some(p) = self.participants.get(&key) else {
            return Vec::new();
        };
        let Some(room) = self.rooms.get(&p.room) else {
            return Vec::new();
        };
        room_tracks_of(room, p)
    }

    fn subscriptions_changed_for(&mut self, key: ParticipantKey) {
        let Some(room_id) = self.participants.get(&key).map(|p| p.room.clone()) else {
            return;
        };
        self.subscriptions_changed(&room_id);
    }

    fn broadcast(&mut self, room_id: &str, except: Option<ParticipantKey>, message: ServerMessage) {
        let Some(room) = self.rooms.get(room_id) else {
            return;
        };
        for m in &room.members {
            if Some(*m) == except {
                continue;
            }
            if let Some(conn) = self.participants.get(m).and_then(|p| p.conn) {
                self.outputs.push_back(Output::Event(Event::Message {
                    conn,
                    message: message.clone(),
                }));
            }
        }
    }

    fn send(&mut self, conn: ConnId, message: ServerMessage) {
        self.outputs
            .push_back(Output::Event(Event::Message { conn, message }));
    }

    fn error(&mut self, conn: ConnId, code: ErrorCode, message: impl Into<String>) {
        self.send(conn, ServerMessage::error(code, message));
    }
}

fn track_info(track: &Track, participant_id: &str) -> TrackInfo {
    TrackInfo {
        track_id: track.id.clone(),
        participant_id: participant_id.to_string(),
        kind: track.kind,
        muted: track.muted,
        codec: track.codec.clone(),
    }
}

fn room_tracks_of(room: &Room, p: &Participant) -> Vec<TrackInfo> {
    let mut tracks: Vec<&Track> = room.tracks.values().filter(|t| t.owner == p.key).collect();
    tracks.sort_by_key(|t| t.key);
    tracks.into_iter().map(|t| track_info(t, &p.id)).collect()
}

fn participant_info(p: &Participant, tracks: &[TrackInfo]) -> ParticipantInfo {
    ParticipantInfo {
        participant_id: p.id.clone(),
        user_id: p.user_id.clone(),
        state: p.state,
        tracks: tracks.to_vec(),
    }
}
