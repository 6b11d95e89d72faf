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

mod offer_policy;
mod participant;
mod peer;
mod rewrite;
mod room;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use signaling::{
    ErrorCode, LeaveReason, ParticipantInfo, ParticipantState, PeerTarget, Permissions,
    ServerMessage, TrackInfo, TrackKind, TrackMid,
};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::config::DtlsCert;
use str0m::format::PayloadParams;
use str0m::ice::StunMessage;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{DatagramRecv, Protocol, Receive, Transmit};
use str0m::rtp::{RtpPacket, RtpWrite};
use str0m::{Candidate, Event as RtcEvent, IceConnectionState, Input as RtcInput};
use str0m::{Output as RtcOutput, Rtc};

use participant::{DownState, DownTrack, Participant};
use peer::Peer;
use rewrite::resolve_pt;
use room::{Room, Track};

pub use offer_policy::{OfferedSend, offered_sends};

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
    /// How long a participant whose path or WebSocket broke keeps its place.
    pub reconnect_grace: Duration,
    /// At most one keyframe request per track this often: a room of many new
    /// subscribers must not make the publisher send keyframes back to back.
    pub keyframe_request_interval: Duration,
    pub max_participants_per_room: usize,
    pub max_tracks_per_participant: usize,
    /// The 1:1 fast path (on by default; off only to compare paths in tests).
    pub fast_path: bool,
    /// Starting estimate of the subscriber-side bandwidth estimator.
    pub initial_bitrate: Bitrate,
}

impl EngineConfig {
    pub fn new(host_candidates: Vec<SocketAddr>) -> EngineConfig {
        EngineConfig {
            shard: 0,
            host_candidates,
            reconnect_grace: Duration::from_secs(15),
            keyframe_request_interval: Duration::from_millis(500),
            max_participants_per_room: 100,
            max_tracks_per_participant: 8,
            fast_path: true,
            initial_bitrate: Bitrate::kbps(1_500),
        }
    }
}

pub enum Input<'a> {
    /// A UDP datagram that arrived on the media port.
    Datagram {
        source: SocketAddr,
        destination: SocketAddr,
        contents: &'a [u8],
    },
    /// A request from the signaling connection `ConnId`.
    Command(ConnId, Command),
    /// Time passed; nothing else happened.
    Timeout,
}

/// What a signaling session asks of the engine. The shell has checked the
/// call token; the engine checks everything about the room.
#[derive(Debug, Clone)]
pub enum Command {
    Join {
        room: String,
        user_id: String,
        participant_id: String,
        permissions: Permissions,
        auto_subscribe: bool,
    },
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
    RestartIce,
    Leave,
    /// The WebSocket closed without `leave`: the participant is reconnecting.
    Detach,
}

#[derive(Debug)]
pub enum Output {
    Transmit(Transmit),
    Event(Event),
    Timeout(Instant),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Send `message` on connection `conn`.
    Message { conn: ConnId, message: ServerMessage },
    /// The engine is done with `conn`: close it after its queued messages.
    ConnClosed { conn: ConnId },
    /// Datagrams from this address belong to this engine now.
    AddressLearned(SocketAddr),
    /// ... and no longer.
    AddressForgotten(SocketAddr),
    /// STUN naming this local ufrag belongs to this engine.
    UfragLearned(String),
    UfragForgotten(String),
    /// A subscriber got its first forwarded packet this long after joining.
    FirstForward(Duration),
    IceConnected,
    /// A participant was removed without its connections ever coming up.
    IceFailed,
}

/// Counters the shell exports as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub rtp_in: u64,
    pub rtp_forwarded: u64,
    pub rtp_forwarded_bytes: u64,
    pub keyframe_requests: u64,
    pub dropped_datagrams: u64,
}

pub struct Engine {
    config: EngineConfig,
    dtls_cert: DtlsCert,
    rooms: HashMap<String, Room>,
    participants: HashMap<ParticipantKey, Participant>,
    conns: HashMap<ConnId, ParticipantKey>,
    by_addr: HashMap<SocketAddr, (ParticipantKey, PeerTarget)>,
    by_ufrag: HashMap<String, (ParticipantKey, PeerTarget)>,
    outputs: VecDeque<Output>,
    /// Peers that took input and must be drained.
    dirty: Vec<(ParticipantKey, PeerTarget)>,
    /// Participants to remove at the end of this input.
    doomed: Vec<(ParticipantKey, LeaveReason)>,
    next_key: u64,
    next_track: u64,
    stats: EngineStats,
    /// The latest time any input carried.
    now: Instant,
}

impl Engine {
    /// `dtls_cert` is shared by every `Rtc` of this engine: generating one per
    /// peer connection would cost a key generation per join.
    pub fn new(config: EngineConfig, dtls_cert: DtlsCert, now: Instant) -> Engine {
        Engine {
            config,
            dtls_cert,
            rooms: HashMap::new(),
            participants: HashMap::new(),
            conns: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            outputs: VecDeque::new(),
            dirty: Vec::new(),
            doomed: Vec::new(),
            next_key: 1,
            next_track: 1,
            stats: EngineStats::default(),
            now,
        }
    }

    pub fn host_candidates(&self) -> &[SocketAddr] {
        &self.config.host_candidates
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    pub fn track_count(&self) -> usize {
        self.rooms.values().map(|r| r.tracks.len()).sum()
    }

    pub fn handle_input(&mut self, input: Input, now: Instant) {
        self.now = self.now.max(now);
        match input {
            Input::Datagram {
                source,
                destination,
                contents,
            } => self.handle_datagram(source, destination, contents, now),
            Input::Command(conn, command) => self.handle_command(conn, command, now),
            Input::Timeout => self.handle_timeout(now),
        }
        self.settle(now);
    }

    pub fn poll_output(&mut self) -> Output {
        if let Some(o) = self.outputs.pop_front() {
            return o;
        }
        Output::Timeout(self.next_timeout())
    }

    fn next_timeout(&self) -> Instant {
        // A linear scan: fine for thousands of peers per engine; a timer
        // wheel is the next step if profiles say so.
        let mut earliest: Option<Instant> = None;
        for p in self.participants.values() {
            for t in [
                p.publisher.next_timeout,
                p.subscriber.next_timeout,
                p.grace_deadline,
            ]
            .into_iter()
            .flatten()
            {
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
            }
        }
        // With nothing to wait for, come back in a second anyway.
        earliest.unwrap_or(self.now + Duration::from_secs(1))
    }

    // ---- datagrams ------------------------------------------------------

    fn handle_datagram(
        &mut self,
        source: SocketAddr,
        destination: SocketAddr,
        bytes: &[u8],
        now: Instant,
    ) {
        let Ok(contents) = DatagramRecv::try_from(bytes) else {
            self.stats.dropped_datagrams += 1;
            return;
        };
        let input = RtcInput::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );
        let owner = match self.by_addr.get(&source) {
            Some(owner) => Some(*owner),
            None => self.owner_by_stun(bytes, &input, source),
        };
        let Some((key, target)) = owner else {
            self.stats.dropped_datagrams += 1;
            return;
        };
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let peer = p.peer_mut(target);
        if let Err(e) = peer.rtc.handle_input(input) {
            tracing::debug!(participant = %p.id, room = %p.room, error = %e, "input refused by rtc");
        }
        self.dirty.push((key, target));
    }

    /// A datagram from an unknown address: only STUN whose username names one
    /// of our ufrags may introduce it (ICE consent proves the address).
    fn owner_by_stun(
        &mut self,
        bytes: &[u8],
        input: &RtcInput,
        source: SocketAddr,
    ) -> Option<(ParticipantKey, PeerTarget)> {
        let stun = StunMessage::parse(bytes).ok()?;
        let (local_ufrag, _) = stun.split_username()?;
        let (key, target) = *self.by_ufrag.get(local_ufrag)?;
        let p = self.participants.get_mut(&key)?;
        let peer = p.peer_mut(target);
        if !peer.rtc.accepts(input) {
            return None;
        }
        peer.addresses.push(source);
        self.by_addr.insert(source, (key, target));
        self.outputs
            .push_back(Output::Event(Event::AddressLearned(source)));
        Some((key, target))
    }

    // ---- time -----------------------------------------------------------

    fn handle_timeout(&mut self, now: Instant) {
        for (key, p) in self.participants.iter_mut() {
            for target in [PeerTarget::Publisher, PeerTarget::Subscriber] {
                let peer = p.peer_mut(target);
                if peer.next_timeout.is_some_and(|t| t <= now) {
                    // A timeout is never refused; an error here means the
                    // Rtc is dead, which the drain notices.
                    let _ = peer.rtc.handle_input(RtcInput::Timeout(now));
                    self.dirty.push((*key, target));
                }
            }
            if p.grace_deadline.is_some_and(|d| d <= now) {
                self.doomed.push((*key, LeaveReason::Timeout));
            }
        }
    }

    /// Drains every touched peer (which may touch others, e.g. forwarding),
    /// then removes participants whose time is up.
    fn settle(&mut self, now: Instant) {
        // Bounded: each drain empties an Rtc; forwarding only writes to
        // subscriber peers, whose events never forward again.
        while let Some((key, target)) = self.dirty.pop() {
            self.drain(key, target, now);
        }
        while let Some((key, reason)) = self.doomed.pop() {
            self.remove_participant(key, reason, now);
            while let Some((key, target)) = self.dirty.pop() {
                self.drain(key, target, now);
            }
        }
    }

    fn drain(&mut self, key: ParticipantKey, target: PeerTarget, now: Instant) {
        let mut events = Vec::new();
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
                if !peer.rtc.is_alive() {
                    peer.next_timeout = None;
                    self.doomed.push((key, LeaveReason::Timeout));
                    break;
                }
                match peer.rtc.poll_output() {
                    Ok(RtcOutput::Timeout(t)) => {
                        peer.next_timeout = Some(t);
                        break;
                    }
                    Ok(RtcOutput::Transmit(t)) => self.outputs.push_back(Output::Transmit(t)),
                    Ok(RtcOutput::Event(e)) => {
                        let extra = match &e {
                            RtcEvent::RtpPacket(pkt) => {
                                let mut api = peer.rtc.direct_api();
                                let mid = api.stream_rx(&pkt.header.ssrc).map(|s| s.mid());
                                let params = peer
                                    .rtc
                                    .codec_config()
                                    .find(|c| c.pt() == pkt.header.payload_type)
                                    .cloned();
                                Some((mid, params))
                            }
                            _ => None,
                        };
                        events.push((e, extra));
                    }
                    Err(e) => {
                        tracing::info!(participant = %p.id, room = %p.room, error = %e, "peer connection failed");
                        peer.rtc.disconnect();
                    }
                }
            }
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
        extra: Option<(Option<Mid>, Option<PayloadParams>)>,
        now: Instant,
    ) {
        match event {
            RtcEvent::IceConnectionStateChange(state) => self.on_ice_state(key, target, state, now),
            RtcEvent::MediaAdded(added) if target == PeerTarget::Publisher => {
                if added.direction != Direction::SendOnly && added.direction != Direction::Inactive
                {
                    self.add_track(key, added.mid, added.kind);
                }
            }
            RtcEvent::MediaChanged(changed) if target == PeerTarget::Publisher => {
                if matches!(changed.direction, Direction::SendOnly | Direction::Inactive) {
                    let track = self.published_track(key, changed.mid);
                    if let Some(track_key) = track {
                        self.remove_track(key, track_key);
                    }
                }
            }
            RtcEvent::RtpPacket(pkt) if target == PeerTarget::Publisher => {
                self.stats.rtp_in += 1;
                if let Some((Some(mid), params)) = extra {
                    self.forward(key, mid, params, &pkt, now);
                }
            }
            RtcEvent::Connected if target == PeerTarget::Subscriber => {
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
                    self.request_keyframe(key, track_key, KeyframeRequestKind::Pli, now);
                }
            }
            RtcEvent::KeyframeRequest(req) if target == PeerTarget::Subscriber => {
                let track = self
                    .participants
                    .get(&key)
                    .and_then(|p| p.down_by_mid(req.mid))
                    .map(|d| d.track_key);
                if let Some(track_key) = track {
                    self.request_keyframe(key, track_key, req.kind, now);
                }
            }
            RtcEvent::EgressBitrateEstimate(BweKind::Twcc { estimate, .. })
                if target == PeerTarget::Subscriber =>
            {
                self.feed_back_estimate(key, estimate);
            }
            _ => {}
        }
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
        let peer = p.peer_mut(target);
        peer.ice = state;
        if matches!(
            state,
            IceConnectionState::Connected | IceConnectionState::Completed
        ) && !peer.was_connected
        {
            peer.was_connected = true;
            self.outputs.push_back(Output::Event(Event::IceConnected));
        }
        tracing::debug!(participant = %p.id, room = %p.room, ?target, ?state, "ice state");
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
            ParticipantState::Active => None,
        };
        tracing::info!(participant = %p.id, room = %p.room, ?state, "participant presence");
        let message = ServerMessage::ParticipantStateChanged {
            participant_id: p.id.clone(),
            state,
        };
        let room = p.room.clone();
        self.broadcast(&room, Some(key), message);
    }

    // ---- forwarding -----------------------------------------------------

    fn forward(
        &mut self,
        publisher: ParticipantKey,
        mid: Mid,
        params: Option<PayloadParams>,
        pkt: &RtpPacket,
        now: Instant,
    ) {
        let Some(track_key) = self.published_track(publisher, mid) else {
            return;
        };
        let Some(p) = self.participants.get(&publisher) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&p.room) else {
            return;
        };
        let Some(track) = room.tracks.get_mut(&track_key) else {
            return;
        };
        if track.codec.is_none() {
            track.codec = params.map(|c| c.spec().codec.to_string());
        }
        let Some(params) = params else { return };
        let kind = track.kind;
        if let Some(direct) = track.direct {
            self.write_down(direct, track_key, kind, params, pkt, now);
            return;
        }
        // Take the list out so subscribers can be borrowed mutably; put back after.
        let subscribers = std::mem::take(&mut track.subscribers);
        for sub in &subscribers {
            self.write_down(*sub, track_key, kind, params, pkt, now);
        }
        if let Some(track) = self
            .participants
            .get(&publisher)
            .and_then(|p| self.rooms.get_mut(&p.room))
            .and_then(|r| r.tracks.get_mut(&track_key))
        {
            track.subscribers = subscribers;
        }
    }

    fn write_down(
        &mut self,
        subscriber: ParticipantKey,
        track_key: u64,
        kind: TrackKind,
        params: PayloadParams,
        pkt: &RtpPacket,
        now: Instant,
    ) {
        let Some(sub) = self.participants.get_mut(&subscriber) else {
            return;
        };
        let Some((down, mid)) = sub.down.iter_mut().find_map(|d| match d.state {
            DownState::Open(mid) if d.track_key == track_key => Some((d, mid)),
            _ => None,
        }) else {
            return;
        };
        let rtc = &mut sub.subscriber.rtc;
        let pt = down.pts.map(pkt.header.payload_type, || {
            let accepted = rtc.media(mid)?.remote_pts().to_vec();
            resolve_pt(rtc.codec_config(), &accepted, params)
        });
        let Some(pt) = pt else {
            return;
        };
        let Some(seq) = down.seq.rewrite(pkt.seq_no) else {
            return;
        };
        let mut ext = pkt.header.ext_vals.clone();
        // These name the publisher's m-line and transport; str0m writes the subscriber's.
        ext.mid = None;
        ext.rid = None;
        ext.rid_repair = None;
        ext.transport_cc = None;
        let mut api = rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            return;
        };
        tx.write_rtp(
            RtpWrite::new(
                pt,
                seq,
                pkt.header.timestamp,
                pkt.timestamp,
                pkt.payload.clone(),
            )
            .marker(pkt.header.marker)
            .ext_vals(ext)
            .nackable(kind == TrackKind::Video),
        );
        self.stats.rtp_forwarded += 1;
        self.stats.rtp_forwarded_bytes += pkt.payload.len() as u64;
        if !sub.first_forward_recorded {
            sub.first_forward_recorded = true;
            let elapsed = now.saturating_duration_since(sub.joined_at);
            self.outputs
                .push_back(Output::Event(Event::FirstForward(elapsed)));
        }
        self.dirty.push((subscriber, PeerTarget::Subscriber));
    }

    fn published_track(&self, publisher: ParticipantKey, mid: Mid) -> Option<u64> {
        let p = self.participants.get(&publisher)?;
        let room = self.rooms.get(&p.room)?;
        room.tracks
            .values()
            .find(|t| t.owner == publisher && t.mid == mid)
            .map(|t| t.key)
    }

    /// Asks the publisher of a track for a keyframe, at most once per interval.
    fn request_keyframe(
        &mut self,
        requester: ParticipantKey,
        track_key: u64,
        kind: KeyframeRequestKind,
        now: Instant,
    ) {
        let Some(room_id) = self.participants.get(&requester).map(|p| p.room.clone()) else {
            return;
        };
        let Some(track) = self
            .rooms
            .get_mut(&room_id)
            .and_then(|r| r.tracks.get_mut(&track_key))
        else {
            return;
        };
        if track.kind != TrackKind::Video {
            return;
        }
        if track
            .last_keyframe_request
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.keyframe_request_interval)
        {
            tracing::debug!(track = %track.id, "keyframe request suppressed (rate limit)");
            return;
        }
        track.last_keyframe_request = Some(now);
        tracing::debug!(track = %track.id, ?kind, "keyframe request to publisher");
        let (owner, mid) = (track.owner, track.mid);
        let Some(publisher) = self.participants.get_mut(&owner) else {
            return;
        };
        if let Some(rx) = publisher.publisher.rtc.direct_api().stream_rx_by_mid(mid, None) {
            rx.request_keyframe(kind);
            self.stats.keyframe_requests += 1;
            self.dirty.push((owner, PeerTarget::Publisher));
        }
    }

    /// 1:1 fast path: what the subscriber's connection can take is what the
    /// publisher should send, as if the call were direct (REMB to the sender).
    fn feed_back_estimate(&mut self, subscriber: ParticipantKey, estimate: Bitrate) {
        let Some(room_id) = self.participants.get(&subscriber).map(|p| p.room.clone()) else {
            return;
        };
        let Some(room) = self.rooms.get(&room_id) else {
            return;
        };
        if !self.config.fast_path {
            return;
        }
        let Some(other) = room.peer_of(subscriber) else {
            return;
        };
        let mids: Vec<Mid> = room
            .tracks
            .values()
            .filter(|t| t.owner == other && t.kind == TrackKind::Video && t.direct == Some(subscriber))
            .map(|t| t.mid)
            .collect();
        let Some(publisher) = self.participants.get_mut(&other) else {
            return;
        };
        for mid in mids {
            if let Some(rx) = publisher.publisher.rtc.direct_api().stream_rx_by_mid(mid, None) {
                rx.request_remb(estimate);
            }
        }
        self.dirty.push((other, PeerTarget::Publisher));
    }

    // ---- commands -------------------------------------------------------

    fn handle_command(&mut self, conn: ConnId, command: Command, now: Instant) {
        let key = self.conns.get(&conn).copied();
        match (command, key) {
            (
                Command::Join {
                    room,
                    user_id,
                    participant_id,
                    permissions,
                    auto_subscribe,
                },
                None,
            ) => self.join(
                conn,
                room,
                user_id,
                participant_id,
                permissions,
                auto_subscribe,
                now,
            ),
            (
                Command::Resume {
                    room,
                    user_id,
                    participant_id,
                },
                None,
            ) => self.resume(conn, &room, &user_id, &participant_id, now),
            (Command::Join { .. } | Command::Resume { .. }, Some(_)) => {
                self.error(conn, ErrorCode::AlreadyJoined, "this connection already joined")
            }
            (Command::Detach, None) => {}
            (_, None) => self.error(conn, ErrorCode::NotJoined, "join first"),
            (Command::Publish { sdp }, Some(key)) => self.publish(conn, key, &sdp, now),
            (Command::Unpublish { track_id }, Some(key)) => self.unpublish(conn, key, &track_id),
            (Command::SubscriberAnswer { sdp }, Some(key)) => {
                self.subscriber_answer(conn, key, &sdp, now)
            }
            (Command::Trickle { target, candidate }, Some(key)) => {
                self.trickle(conn, key, target, &candidate)
            }
            (Command::Subscribe { track_ids }, Some(key)) => self.subscribe(conn, key, &track_ids),
            (Command::Unsubscribe { track_ids }, Some(key)) => {
                self.unsubscribe(conn, key, &track_ids)
            }
            (Command::Mute { track_id, muted }, Some(key)) => {
                self.mute(conn, key, &track_id, muted)
            }
            (Command::RestartIce, Some(key)) => {
                if let Some(p) = self.participants.get_mut(&key) {
                    p.ice_restart = true;
                }
                self.negotiate_subscriber(key);
            }
            (Command::Leave, Some(key)) => self.remove_participant(key, LeaveReason::Left, now),
            (Command::Detach, Some(key)) => {
                self.conns.remove(&conn);
                if let Some(p) = self.participants.get_mut(&key) {
                    if p.conn == Some(conn) {
                        p.conn = None;
                    }
                }
                self.update_presence(key, now);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        conn: ConnId,
        room_id: String,
        user_id: String,
        participant_id: String,
        permissions: Permissions,
        auto_subscribe: bool,
        now: Instant,
    ) {
        // The same participant joining again replaces its old session.
        let existing = self.find_participant(&room_id, &participant_id);
        let members = self.rooms.get(&room_id).map_or(0, |r| r.members.len());
        if existing.is_none() && members >= self.config.max_participants_per_room {
            self.error(conn, ErrorCode::Capacity, "the room is full");
            return;
        }
        if let Some(old) = existing {
            self.remove_participant(old, LeaveReason::Replaced, now);
        }

        let key = ParticipantKey(self.next_key);
        self.next_key += 1;
        let publisher = self.new_peer(key, PeerTarget::Publisher, now);
        let subscriber = self.new_peer(key, PeerTarget::Subscriber, now);
        let participant = Participant {
            key,
            id: participant_id.clone(),
            user_id: user_id.clone(),
            room: room_id.clone(),
            permissions,
            auto_subscribe,
            conn: Some(conn),
            publisher,
            subscriber,
            down: Vec::new(),
            pending_offer: None,
            pending_offer_message: None,
            ice_restart: false,
            state: ParticipantState::Active,
            grace_deadline: None,
            joined_at: now,
            first_forward_recorded: false,
        };
        let info = participant_info(&participant, &[]);
        self.participants.insert(key, participant);
        self.conns.insert(conn, key);
        let room = self
            .rooms
            .entry(room_id.clone())
            .or_insert_with(Room::new);
        let others: Vec<ParticipantInfo> = room
            .members
            .iter()
            .filter_map(|m| self.participants.get(m))
            .map(|p| participant_info(p, &room_tracks_of(room, p)))
            .collect();
        room.members.push(key);
        tracing::info!(participant = %participant_id, user = %user_id, room = %room_id, "joined");

        self.send(
            conn,
            ServerMessage::Joined {
                protocol_version: signaling::PROTOCOL_VERSION,
                room_id: room_id.clone(),
                participant_id,
                user_id,
                permissions,
                participants: others,
                reconnect_grace_seconds: self.config.reconnect_grace.as_secs() as u32,
            },
        );
        self.broadcast(
            &room_id,
            Some(key),
            ServerMessage::ParticipantJoined { participant: info },
        );
        if auto_subscribe && permissions.subscribe {
            let existing: Vec<u64> = self
                .rooms
                .get(&room_id)
                .map(|r| r.tracks.keys().copied().collect())
                .unwrap_or_default();
            for track_key in existing {
                self.add_subscription(key, track_key);
            }
        }
        if let Some(room) = self.rooms.get_mut(&room_id) {
            room.refresh_routes(self.config.fast_path);
        }
        // Always offer at join: the subscriber connection comes up now (with
        // a data channel if there is nothing to receive yet), so tracks
        // published later start flowing without waiting for ICE and DTLS.
        self.negotiate_subscriber(key);
    }

    fn resume(&mut self, conn: ConnId, room_id: &str, user_id: &str, participant_id: &str, now: Instant) {
        let Some(key) = self.find_participant(room_id, participant_id) else {
            self.error(conn, ErrorCode::NotJoined, "no such participant to resume");
            return;
        };
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if p.user_id != user_id {
            self.error(conn, ErrorCode::PermissionDenied, "participant belongs to another user");
            return;
        }
        let old = p.conn.replace(conn);
        let permissions = p.permissions;
        let resend = p.pending_offer_message.clone();
        self.conns.insert(conn, key);
        if let Some(old) = old.filter(|o| *o != conn) {
            self.conns.remove(&old);
            self.send(old, ServerMessage::Left { reason: LeaveReason::Replaced });
            self.outputs.push_back(Output::Event(Event::ConnClosed { conn: old }));
        }
        let room = &self.rooms[room_id];
        let others: Vec<ParticipantInfo> = room
            .members
            .iter()
            .filter(|m| **m != key)
            .filter_map(|m| self.participants.get(m))
            .map(|p| participant_info(p, &room_tracks_of(room, p)))
            .collect();
        self.send(
            conn,
            ServerMessage::Joined {
                protocol_version: signaling::PROTOCOL_VERSION,
                room_id: room_id.to_string(),
                participant_id: participant_id.to_string(),
                user_id: user_id.to_string(),
                permissions,
                participants: others,
                reconnect_grace_seconds: self.config.reconnect_grace.as_secs() as u32,
            },
        );
        // An offer sent to the old socket may never have been seen.
        if let Some(offer) = resend {
            self.send(conn, offer);
        }
        tracing::info!(participant = %participant_id, room = %room_id, "resumed");
        self.update_presence(key, now);
    }

    fn publish(&mut self, conn: ConnId, key: ParticipantKey, sdp: &str, now: Instant) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let sends = offered_sends(sdp);
        if let Some(refused) = sends.iter().find(|s| !p.permissions.may_publish(s.kind)) {
            let message = format!("the call token does not allow publishing {:?}", refused.kind);
            self.error(conn, ErrorCode::PermissionDenied, message);
            return;
        }
        if sends.len() > self.config.max_tracks_per_participant {
            let message = format!(
                "at most {} published tracks",
                self.config.max_tracks_per_participant
            );
            self.error(conn, ErrorCode::Capacity, message);
            return;
        }
        let offer = match SdpOffer::from_sdp_string(sdp) {
            Ok(offer) => offer,
            Err(e) => {
                self.error(conn, ErrorCode::InvalidSdp, format!("offer does not parse: {e}"));
                return;
            }
        };
        let answer = match p.publisher.rtc.sdp_api().accept_offer(offer) {
            Ok(answer) => answer,
            Err(e) => {
                self.error(conn, ErrorCode::InvalidSdp, format!("offer refused: {e}"));
                return;
            }
        };
        self.dirty.push((key, PeerTarget::Publisher));
        // An offer that restarts ICE gives our side new credentials too.
        self.refresh_ufrag(key, PeerTarget::Publisher);
        // Drain now: MediaAdded creates the tracks the answer lists.
        self.settle(now);
        let tracks = self.tracks_of(key);
        self.send(
            conn,
            ServerMessage::PublishAnswer {
                sdp: answer.to_sdp_string(),
                tracks,
            },
        );
    }

    fn unpublish(&mut self, conn: ConnId, key: ParticipantKey, track_id: &str) {
        match self.owned_track(key, track_id) {
            Some(track_key) => self.remove_track(key, track_key),
            None => self.error(conn, ErrorCode::UnknownTrack, format!("you publish no track {track_id}")),
        }
    }

    fn subscriber_answer(&mut self, conn: ConnId, key: ParticipantKey, sdp: &str, now: Instant) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if p.pending_offer.is_none() {
            self.error(conn, ErrorCode::InvalidSdp, "no subscriber offer is awaiting an answer");
            return;
        }
        let answer = match SdpAnswer::from_sdp_string(sdp) {
            Ok(a) => a,
            Err(e) => {
                self.error(conn, ErrorCode::InvalidSdp, format!("answer does not parse: {e}"));
                return;
            }
        };
        let Some(pending) = p.pending_offer.take() else {
            return;
        };
        p.pending_offer_message = None;
        let result = p.subscriber.rtc.sdp_api().accept_answer(pending, answer);
        let mut opened = Vec::new();
        match result {
            Ok(()) => {
                for d in &mut p.down {
                    match d.state {
                        DownState::Negotiating(mid) => {
                            d.state = DownState::Open(mid);
                            opened.push(d.track_key);
                        }
                        _ => {}
                    }
                }
                // Stopped m-lines are done; str0m may recycle them later.
                p.down.retain(|d| !matches!(d.state, DownState::Stopping(_)));
            }
            Err(e) => {
                // The offer is gone; what it carried goes into the next one.
                for d in &mut p.down {
                    d.state = match d.state {
                        DownState::Negotiating(_) => DownState::ToOpen,
                        DownState::Stopping(m) => DownState::ToStop(m),
                        s => s,
                    };
                }
                self.error(conn, ErrorCode::InvalidSdp, format!("answer refused: {e}"));
            }
        }
        self.dirty.push((key, PeerTarget::Subscriber));
        // New subscribers need a keyframe to start decoding. Before the
        // connection is up a keyframe would be wasted: that waits for
        // `Connected` instead.
        let connected = self
            .participants
            .get(&key)
            .is_some_and(|p| p.subscriber.rtc.is_connected());
        if connected {
            for track_key in opened {
                self.request_keyframe(key, track_key, KeyframeRequestKind::Pli, now);
            }
        }
        self.negotiate_subscriber(key);
    }

    fn trickle(&mut self, conn: ConnId, key: ParticipantKey, target: PeerTarget, candidate: &str) {
        let candidate = candidate.trim();
        if candidate.is_empty() {
            return; // end-of-candidates
        }
        let parsed = match Candidate::from_sdp_string(candidate) {
            Ok(c) => c,
            Err(e) => {
                self.error(conn, ErrorCode::InvalidCandidate, format!("{e}"));
                return;
            }
        };
        if let Some(p) = self.participants.get_mut(&key) {
            p.peer_mut(target).rtc.add_remote_candidate(parsed);
            self.dirty.push((key, target));
        }
    }

    fn subscribe(&mut self, conn: ConnId, key: ParticipantKey, track_ids: &[String]) {
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        if !p.permissions.subscribe {
            self.error(conn, ErrorCode::PermissionDenied, "the call token does not allow subscribing");
            return;
        }
        let Some(keys) = self.room_tracks_by_id(key, track_ids, conn) else {
            return;
        };
        for track_key in keys {
            self.add_subscription(key, track_key);
        }
        self.refresh_routes(key);
        self.negotiate_subscriber(key);
    }

    fn unsubscribe(&mut self, conn: ConnId, key: ParticipantKey, track_ids: &[String]) {
        let Some(keys) = self.room_tracks_by_id(key, track_ids, conn) else {
            return;
        };
        for track_key in keys {
            self.drop_subscription(key, track_key);
        }
        self.refresh_routes(key);
        self.negotiate_subscriber(key);
    }

    fn mute(&mut self, conn: ConnId, key: ParticipantKey, track_id: &str, muted: bool) {
        let Some(track_key) = self.owned_track(key, track_id) else {
            self.error(conn, ErrorCode::UnknownTrack, format!("you publish no track {track_id}"));
            return;
        };
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        let (room_id, participant_id) = (p.room.clone(), p.id.clone());
        if let Some(track) = self
            .rooms
            .get_mut(&room_id)
            .and_then(|r| r.tracks.get_mut(&track_key))
        {
            track.muted = muted;
        }
        self.broadcast(
            &room_id,
            Some(key),
            ServerMessage::TrackMuted {
                track_id: track_id.to_string(),
                participant_id,
                muted,
            },
        );
    }

    // ---- tracks and subscriptions ----------------------------------------

    fn add_track(&mut self, owner: ParticipantKey, mid: Mid, kind: MediaKind) {
        if self.published_track(owner, mid).is_some() {
            return;
        }
        let Some(p) = self.participants.get(&owner) else {
            return;
        };
        let kind = match kind {
            MediaKind::Audio => TrackKind::Audio,
            MediaKind::Video => TrackKind::Video,
        };
        let track_key = self.next_track;
        self.next_track += 1;
        let track = Track {
            key: track_key,
            id: format!("TR_{}_{track_key}", self.config.shard),
            owner,
            mid,
            kind,
            muted: false,
            codec: None,
            subscribers: Vec::new(),
            last_keyframe_request: None,
            direct: None,
        };
        let info = track_info(&track, &p.id);
        let room_id = p.room.clone();
        tracing::info!(participant = %p.id, room = %room_id, track = %track.id, ?kind, "track published");
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        room.tracks.insert(track_key, track);
        let auto: Vec<ParticipantKey> = room
            .members
            .iter()
            .copied()
            .filter(|m| *m != owner)
            .filter(|m| {
                self.participants
                    .get(m)
                    .is_some_and(|p| p.auto_subscribe && p.permissions.subscribe)
            })
            .collect();
        self.broadcast(&room_id, Some(owner), ServerMessage::TrackPublished { track: info });
        for sub in &auto {
            self.add_subscription(*sub, track_key);
        }
        if let Some(room) = self.rooms.get_mut(&room_id) {
            room.refresh_routes(self.config.fast_path);
        }
        for sub in auto {
            self.negotiate_subscriber(sub);
        }
    }

    fn remove_track(&mut self, owner: ParticipantKey, track_key: u64) {
        let Some(p) = self.participants.get(&owner) else {
            return;
        };
        let (room_id, participant_id) = (p.room.clone(), p.id.clone());
        let Some(track) = self
            .rooms
            .get_mut(&room_id)
            .and_then(|r| r.tracks.remove(&track_key))
        else {
            return;
        };
        tracing::info!(participant = %participant_id, room = %room_id, track = %track.id, "track unpublished");
        for sub in &track.subscribers {
            self.drop_subscription(*sub, track_key);
            self.negotiate_subscriber(*sub);
        }
        self.broadcast(
            &room_id,
            Some(owner),
            ServerMessage::TrackUnpublished {
                track_id: track.id,
                participant_id,
            },
        );
    }

    fn add_subscription(&mut self, subscriber: ParticipantKey, track_key: u64) {
        let Some(p) = self.participants.get_mut(&subscriber) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&p.room) else {
            return;
        };
        let Some(track) = room.tracks.get_mut(&track_key) else {
            return;
        };
        if track.owner == subscriber || track.subscribers.contains(&subscriber) {
            return;
        }
        track.subscribers.push(subscriber);
        let publisher_id = self
            .participants
            .get(&track.owner)
            .map(|o| o.id.clone())
            .unwrap_or_default();
        let Some(p) = self.participants.get_mut(&subscriber) else {
            return;
        };
        p.down.push(DownTrack {
            track_key,
            track_id: track.id.clone(),
            publisher_id,
            kind: track.kind,
            state: DownState::ToOpen,
            seq: Default::default(),
            pts: Default::default(),
        });
    }

    fn drop_subscription(&mut self, subscriber: ParticipantKey, track_key: u64) {
        let Some(p) = self.participants.get_mut(&subscriber) else {
            return;
        };
        if let Some(track) = self
            .rooms
            .get_mut(&p.room)
            .and_then(|r| r.tracks.get_mut(&track_key))
        {
            track.subscribers.retain(|s| *s != subscriber);
        }
        if let Some(down) = p.down_by_track(track_key) {
            down.state = match down.state {
                DownState::ToOpen => {
                    p.down.retain(|d| d.track_key != track_key);
                    return;
                }
                DownState::Negotiating(m) | DownState::Open(m) => DownState::ToStop(m),
                s => s,
            };
        }
    }

    /// Sends the next subscriber offer if something changed and no offer is
    /// outstanding (one offer at a time; changes made meanwhile wait for it).
    fn negotiate_subscriber(&mut self, key: ParticipantKey) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if p.pending_offer.is_some() {
            return;
        }
        let first = !p.subscriber.was_offered;
        let mut api = p.subscriber.rtc.sdp_api();
        if first {
            api.add_channel("switchboard".to_string());
        }
        for d in &mut p.down {
            match d.state {
                DownState::ToOpen => {
                    let kind = match d.kind {
                        TrackKind::Audio => MediaKind::Audio,
                        TrackKind::Video => MediaKind::Video,
                    };
                    let mid = api.add_media(
                        kind,
                        Direction::SendOnly,
                        Some(d.publisher_id.clone()),
                        Some(d.track_id.clone()),
                        None,
                    );
                    d.state = DownState::Negotiating(mid);
                }
                DownState::ToStop(mid) => {
                    api.stop_media(mid);
                    d.state = DownState::Stopping(mid);
                }
                _ => {}
            }
        }
        let restart = std::mem::take(&mut p.ice_restart);
        if restart {
            api.ice_restart(true);
        }
        let Some((offer, pending)) = api.apply() else {
            return;
        };
        p.subscriber.was_offered = true;
        let tracks = p
            .down
            .iter()
            .filter_map(|d| match d.state {
                DownState::Negotiating(mid) | DownState::Open(mid) => Some(TrackMid {
                    mid: mid.to_string(),
                    track_id: d.track_id.clone(),
                }),
                _ => None,
            })
            .collect();
        let message = ServerMessage::SubscriberOffer {
            sdp: offer.to_sdp_string(),
            tracks,
        };
        p.pending_offer = Some(pending);
        p.pending_offer_message = Some(message.clone());
        if let Some(conn) = p.conn {
            self.send(conn, message);
        }
        self.dirty.push((key, PeerTarget::Subscriber));
        if restart {
            self.refresh_ufrag(key, PeerTarget::Subscriber);
        }
    }

    // ---- participants -----------------------------------------------------

    fn new_peer(&mut self, key: ParticipantKey, target: PeerTarget, now: Instant) -> Peer {
        let mut builder = Rtc::builder()
            .set_rtp_mode(true)
            .set_dtls_cert(self.dtls_cert.clone())
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_h264(true);
        if target == PeerTarget::Subscriber {
            builder = builder.enable_bwe(Some(self.config.initial_bitrate));
        }
        let mut rtc = builder.build(now);
        for addr in &self.config.host_candidates {
            match Candidate::host(*addr, "udp") {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => tracing::warn!(%addr, error = %e, "host candidate refused"),
            }
        }
        let mut peer = Peer::new(target, rtc);
        self.track_ufrag(key, &mut peer);
        peer
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
            self.outputs.push_back(Output::Event(Event::UfragForgotten(old)));
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
            peer.rtc.disconnect();
            for addr in peer.addresses.drain(..) {
                self.by_addr.remove(&addr);
                self.outputs
                    .push_back(Output::Event(Event::AddressForgotten(addr)));
            }
            for ufrag in peer.ufrags.drain(..) {
                self.by_ufrag.remove(&ufrag);
                self.outputs.push_back(Output::Event(Event::UfragForgotten(ufrag)));
            }
        }
        if never_connected && reason == LeaveReason::Timeout {
            self.outputs.push_back(Output::Event(Event::IceFailed));
        }
        if let Some(room) = self.rooms.get_mut(&room_id) {
            room.members.retain(|m| *m != key);
            room.refresh_routes(self.config.fast_path);
            if room.members.is_empty() {
                self.rooms.remove(&room_id);
            }
        }
        tracing::info!(participant = %participant_id, room = %room_id, ?reason, "left");
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
            self.negotiate_subscriber(m);
        }
    }

    // ---- lookups and messages -------------------------------------------

    fn find_participant(&self, room_id: &str, participant_id: &str) -> Option<ParticipantKey> {
        let room = self.rooms.get(room_id)?;
        room.members
            .iter()
            .copied()
            .find(|m| self.participants.get(m).is_some_and(|p| p.id == participant_id))
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
                    self.error(conn, ErrorCode::UnknownTrack, format!("no track {id} to subscribe to"));
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

    fn refresh_routes(&mut self, key: ParticipantKey) {
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        if let Some(room) = self.rooms.get_mut(&p.room) {
            room.refresh_routes(self.config.fast_path);
        }
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
