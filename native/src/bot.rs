//! A sans-IO str0m client speaking protocol v1: a publisher and a subscriber
//! `Rtc`, synthetic media whose every payload carries a probe (sequence and
//! send time), per-track receive statistics (loss, one-way latency, time to
//! first packet) and, for tests, a record of every packet received and from
//! whom. Driven by the SFU's fake-clock harness (`sfu/tests/common/sim.rs`)
//! and by the real-socket runner (`runner.rs`).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use signaling::{
    ClientMessage, IceCandidate, PeerTarget, ServerMessage, TrackInfo, TrackKind, VideoQuality,
};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedPacket {
    pub track_id: String,
    pub from: String,
    pub kind: MediaKind,
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: Vec<u8>,
    /// Its abs-send-time header extension (when negotiated): when the
    /// last hop sent it.
    pub abs_send_time: Option<Instant>,
    /// The latest sender report of its stream: (NTP time, RTP timestamp).
    pub sender_report: Option<(std::time::SystemTime, u32)>,
}

/// The simulcast layer in a bot's tag (`name:v<rid>:n`, after the probe):
/// `q`, `h` or `f`; `None` without simulcast or for audio.
fn simulcast_tag(tag: &[u8]) -> Option<&str> {
    let at = tag.windows(2).position(|w| w == b":v")? + 2;
    let rest = &tag[at..];
    let len = rest.iter().position(|b| *b == b':')?;
    std::str::from_utf8(&rest[..len])
        .ok()
        .filter(|r| !r.is_empty())
}

impl ReceivedPacket {
    /// The simulcast layer a bot sent this packet in (`q`, `h` or `f`;
    /// `None` without simulcast).
    pub fn simulcast_rid(&self) -> Option<String> {
        let skip = vp8_descriptor_len(&self.payload) + 1 + PROBE_LEN;
        simulcast_tag(self.payload.get(skip..)?).map(str::to_string)
    }

    /// The payload with the probe's send time zeroed: what two runs of the
    /// same scenario started at different times have in common.
    pub fn payload_without_send_time(&self) -> Vec<u8> {
        let mut p = self.payload.clone();
        let at = match self.kind {
            MediaKind::Video => vp8_descriptor_len(&p) + 1,
            _ => 0,
        } + 8;
        if let Some(time) = p.get_mut(at..at + 8) {
            time.fill(0);
        }
        p
    }
}

/// What one subscribed track delivered.
#[derive(Debug, Clone)]
pub struct TrackStats {
    pub from: String,
    pub kind: MediaKind,
    /// The simulcast layer (RID) these packets came in: each layer has
    /// probes of its own, so a subscriber that changed layer has one entry
    /// per layer it received.
    pub layer: Option<String>,
    pub packets: u64,
    /// Probe sequences seen: lowest and highest (loss = span - packets).
    pub first_probe: u64,
    pub last_probe: u64,
    pub first_at: Instant,
    /// One-way latency of every packet, microseconds.
    pub latency_us: Vec<u32>,
}

impl TrackStats {
    pub fn new(from: &str, kind: MediaKind, now: Instant) -> TrackStats {
        TrackStats {
            from: from.to_string(),
            kind,
            layer: None,
            packets: 0,
            first_probe: u64::MAX,
            last_probe: 0,
            first_at: now,
            latency_us: Vec::new(),
        }
    }

    /// Counts one packet from its probe (sequence and send time, 16 bytes).
    pub fn note_probe(&mut self, probe: &[u8], now: Instant) {
        let (Some(seq), Some(sent)) = (probe.get(..8), probe.get(8..16)) else {
            return;
        };
        let seq = u64::from_be_bytes(seq.try_into().unwrap_or_default());
        let sent_us = u64::from_be_bytes(sent.try_into().unwrap_or_default());
        let now_us = now.saturating_duration_since(epoch()).as_micros() as u64;
        self.packets += 1;
        self.first_probe = self.first_probe.min(seq);
        self.last_probe = self.last_probe.max(seq);
        let latency = u32::try_from(now_us.saturating_sub(sent_us)).unwrap_or(u32::MAX);
        self.latency_us.push(latency);
    }

    pub fn expected(&self) -> u64 {
        (self.last_probe + 1).saturating_sub(self.first_probe)
    }

    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.packets)
    }
}

/// How much media a publisher sends per 20 ms tick.
#[derive(Debug, Clone, Copy)]
pub struct MediaShape {
    /// Video payload bytes per tick (at least the probe), split into packets
    /// of at most 1,100 bytes: 3,125 is 1.25 Mbit/s.
    pub video_bytes_per_tick: usize,
    /// A keyframe every this many ticks (and whenever asked by a PLI).
    pub keyframe_every_ticks: u64,
}

impl Default for MediaShape {
    fn default() -> Self {
        MediaShape {
            video_bytes_per_tick: 0,
            keyframe_every_ticks: 50,
        }
    }
}

/// Bytes of the probe (sequence, send time) at the start of every payload.
pub const PROBE_LEN: usize = 16;
const MAX_VIDEO_PACKET: usize = 1100;

/// The reference every probe's send time counts from (one per process, so
/// bots in one process measure one-way latency without clock sync).
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Data messages a bot holds until they are taken (a test or the media
/// port reads them as they come; this bounds one that does not).
pub const MAX_HELD_DATA: usize = 4096;

pub struct Bot {
    pub name: String,
    /// When the bot was made (its join): time to first media counts from here.
    pub created_at: Instant,
    pub publisher: Rtc,
    pub subscriber: Rtc,
    pub publisher_addr: SocketAddr,
    pub subscriber_addr: SocketAddr,
    pending_publish: Option<SdpPendingOffer>,
    audio_mid: Option<Mid>,
    video_mid: Option<Mid>,
    pub outbox: VecDeque<ClientMessage>,
    pub transmits: VecDeque<Transmit>,
    pub participant_id: Option<String>,
    track_owner: HashMap<String, String>,
    mid_track: HashMap<Mid, String>,
    /// Every packet received (tests); off for load, where `tracks` suffices.
    pub record: bool,
    pub received: Vec<ReceivedPacket>,
    pub tracks: HashMap<String, TrackStats>,
    pub media: MediaShape,
    /// NACKs and PLIs the server sent our publisher (str0m answers NACKs
    /// with retransmissions; we answer PLIs with a keyframe).
    pub nacks_received: u64,
    pub messages: Vec<ServerMessage>,
    pub keyframe_requests: usize,
    /// The next video packet starts a keyframe (at start and after a PLI).
    keyframe_due: bool,
    /// REMB estimates the server sent our publisher connection (bits/s).
    pub remb: Vec<u64>,
    /// The subscriber connection's data channels the server opened, by label.
    data_channels: HashMap<String, str0m::channel::ChannelId>,
    /// Text messages that arrived on them, (label, text), oldest first;
    /// at most [`MAX_HELD_DATA`] wait for whoever takes them.
    pub data_received: VecDeque<(String, String)>,
    /// Video bytes received per subscriber mid at the last stats report,
    /// for the receive-side REMB this bot sends as Chromium would.
    received_video_bytes: HashMap<Mid, (u64, Instant)>,
    pub publisher_ice: IceConnectionState,
    pub subscriber_ice: IceConnectionState,
    sent: u64,
    video_seq: u64,
    /// Trickle our host candidate instead of only listing it in the SDP.
    pub trickle: bool,
    /// Muted microphone / camera off: that kind is not sent.
    pub audio_muted: bool,
    pub video_off: bool,
    /// The first publisher offer carries a video track (an audio call's
    /// token allows audio only).
    pub publish_video: bool,
    /// Video goes out in three simulcast layers (RIDs `q`, `h`, `f`, lowest
    /// first, a quarter, half and all of the video bytes), each with VP8
    /// picture IDs and TL0PICIDX of its own, as Chromium sends them. Set
    /// before [`Bot::publish`].
    pub simulcast: bool,
    /// Asked of every video track this bot receives (`updateSubscription`
    /// as soon as it learns of the track); `None` takes the server's
    /// default.
    pub quality: Option<VideoQuality>,
    /// Video the server said nobody receives (`qualityUpdate` with no
    /// qualities) is not sent, as a browser pauses it.
    video_paused: bool,
    layers: [SentLayer; 3],
}

/// One simulcast layer as this bot sends it.
#[derive(Debug, Clone, Copy)]
struct SentLayer {
    rid: &'static str,
    seq: u64,
    picture_id: u16,
    tl0_pic_idx: u8,
    /// Frames since the last keyframe: the place in the temporal pattern.
    since_keyframe: u64,
    keyframe_due: bool,
    /// Off when no subscriber wants it (dynacast); back on with a keyframe.
    active: bool,
}

impl SentLayer {
    const fn new(rid: &'static str) -> SentLayer {
        SentLayer {
            rid,
            seq: 0,
            picture_id: 0,
            tl0_pic_idx: 0,
            since_keyframe: 0,
            keyframe_due: true,
            active: true,
        }
    }
}

/// libwebrtc's VP8 pattern for three temporal layers, from a keyframe on:
/// per frame, its TID and whether it is a layer sync frame (refers to the
/// base layer only: a TID 2 and then a TID 1 one every eight frames).
pub const L1T3_PATTERN: [(u8, bool); 8] = [
    (0, false),
    (2, true),
    (1, true),
    (2, false),
    (0, false),
    (2, false),
    (1, false),
    (2, false),
];

/// The simulcast layers' RIDs, lowest first.
pub const SIMULCAST_RIDS: [&str; 3] = ["q", "h", "f"];

/// Bytes of a VP8 payload descriptor (RFC 7741 4.2) at the start of `payload`.
fn vp8_descriptor_len(payload: &[u8]) -> usize {
    let Some(&first) = payload.first() else {
        return 0;
    };
    if first & 0x80 == 0 {
        return 1;
    }
    let Some(&ext) = payload.get(1) else {
        return 1;
    };
    let picture_id = match ext & 0x80 {
        0 => 0,
        _ if payload.get(2).is_some_and(|b| b & 0x80 != 0) => 2,
        _ => 1,
    };
    2 + picture_id + usize::from(ext & 0x40 != 0) + usize::from(ext & 0x30 != 0)
}

fn rtc(addr: SocketAddr, now: Instant) -> Rtc {
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .set_stats_interval(Some(Duration::from_secs(1)))
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .enable_h264(true)
        .build(now);
    rtc.add_local_candidate(Candidate::host(addr, "udp").expect("host candidate"));
    rtc
}

impl Bot {
    pub fn new(
        name: &str,
        publisher_addr: SocketAddr,
        subscriber_addr: SocketAddr,
        now: Instant,
    ) -> Bot {
        let _ = epoch();
        Bot {
            name: name.to_string(),
            created_at: now,
            publisher: rtc(publisher_addr, now),
            subscriber: rtc(subscriber_addr, now),
            publisher_addr,
            subscriber_addr,
            pending_publish: None,
            audio_mid: None,
            video_mid: None,
            outbox: VecDeque::new(),
            transmits: VecDeque::new(),
            participant_id: None,
            track_owner: HashMap::new(),
            mid_track: HashMap::new(),
            record: true,
            received: Vec::new(),
            tracks: HashMap::new(),
            media: MediaShape::default(),
            nacks_received: 0,
            messages: Vec::new(),
            keyframe_requests: 0,
            keyframe_due: true,
            remb: Vec::new(),
            data_channels: HashMap::new(),
            data_received: VecDeque::new(),
            received_video_bytes: HashMap::new(),
            publisher_ice: IceConnectionState::New,
            subscriber_ice: IceConnectionState::New,
            sent: 0,
            video_seq: 0,
            trickle: false,
            audio_muted: false,
            video_off: false,
            publish_video: true,
            simulcast: false,
            quality: None,
            video_paused: false,
            layers: SIMULCAST_RIDS.map(SentLayer::new),
        }
    }

    /// Offers to publish one audio and (with `publish_video`) one video track.
    pub fn publish(&mut self) {
        let sdp = self
            .publisher_offer(false)
            .expect("an offer with two m-lines");
        self.outbox.push_back(ClientMessage::Publish { sdp });
    }

    /// The publisher connection's offer: the first adds one audio and one
    /// video track; `ice_restart` asks for new ICE credentials.
    pub fn publisher_offer(&mut self, ice_restart: bool) -> Result<String, String> {
        let mut api = self.publisher.sdp_api();
        if self.audio_mid.is_none() {
            self.audio_mid =
                Some(api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
            if self.publish_video {
                let simulcast = self.simulcast.then(|| Simulcast {
                    send: SIMULCAST_RIDS.map(SimulcastLayer::new).to_vec(),
                    recv: Vec::new(),
                });
                self.video_mid = Some(api.add_media(
                    MediaKind::Video,
                    Direction::SendOnly,
                    None,
                    None,
                    simulcast,
                ));
            }
        }
        if ice_restart {
            // New credentials, same host candidates.
            api.ice_restart(true);
        }
        let (offer, pending) = api.apply().ok_or("nothing to offer")?;
        self.pending_publish = Some(pending);
        Ok(offer.to_sdp_string())
    }

    /// The server's answer to the last publisher offer.
    pub fn accept_publisher_answer(&mut self, sdp: &str) -> Result<(), String> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| e.to_string())?;
        let pending = self
            .pending_publish
            .take()
            .ok_or("no publisher offer is pending")?;
        self.publisher
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| e.to_string())
    }

    /// Answers the server's subscriber offer.
    pub fn answer_subscriber_offer(&mut self, sdp: &str) -> Result<String, String> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| e.to_string())?;
        let answer = self
            .subscriber
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| e.to_string())?;
        Ok(answer.to_sdp_string())
    }

    pub fn handle_message(&mut self, message: ServerMessage) {
        match &message {
            ServerMessage::Joined {
                participant_id,
                participants,
                ..
            } => {
                self.participant_id = Some(participant_id.clone());
                for p in participants {
                    self.learn_tracks(&p.tracks);
                }
            }
            ServerMessage::ParticipantJoined { participant } => {
                self.learn_tracks(&participant.tracks)
            }
            ServerMessage::TrackPublished { track } => {
                self.learn_tracks(std::slice::from_ref(track))
            }
            ServerMessage::PublishAnswer { sdp, .. } => {
                self.accept_publisher_answer(sdp)
                    .expect("server answer accepted");
                if self.trickle {
                    self.trickle_host(PeerTarget::Publisher);
                }
            }
            ServerMessage::QualityUpdate { mid, qualities, .. }
                if self.video_mid.is_some_and(|m| *m == **mid) =>
            {
                self.apply_wanted_qualities(qualities);
            }
            ServerMessage::SubscriberOffer { sdp, tracks } => {
                for t in tracks {
                    self.mid_track
                        .insert(Mid::from(t.mid.as_str()), t.track_id.clone());
                }
                let answer = self
                    .answer_subscriber_offer(sdp)
                    .expect("server offer accepted");
                self.outbox
                    .push_back(ClientMessage::SubscriberAnswer { sdp: answer });
                if self.trickle {
                    self.trickle_host(PeerTarget::Subscriber);
                }
            }
            _ => {}
        }
        self.messages.push(message);
    }

    /// Dynacast, as a browser applies it: only the layers subscribers want
    /// are sent (none: the video pauses); a layer turned back on starts
    /// with a keyframe.
    pub fn apply_wanted_qualities(&mut self, qualities: &[VideoQuality]) {
        self.video_paused = qualities.is_empty();
        let count = if self.simulcast { self.layers.len() } else { 1 };
        let top = count - 1;
        let wanted: Vec<usize> = qualities
            .iter()
            .map(|q| match q {
                VideoQuality::Low => 0,
                VideoQuality::Medium => top.div_ceil(2),
                VideoQuality::High => top,
            })
            .collect();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let active = wanted.contains(&i);
            if active && !layer.active {
                layer.keyframe_due = true;
            }
            layer.active = active;
        }
        if !self.video_paused {
            self.keyframe_due = true;
        }
    }

    fn trickle_host(&mut self, target: PeerTarget) {
        let addr = match target {
            PeerTarget::Publisher => self.publisher_addr,
            PeerTarget::Subscriber => self.subscriber_addr,
        };
        let c = Candidate::host(addr, "udp").expect("host candidate");
        self.outbox.push_back(ClientMessage::Trickle {
            target,
            candidate: IceCandidate {
                candidate: c.to_sdp_string(),
                sdp_mid: None,
                sdp_m_line_index: Some(0),
                username_fragment: None,
            },
        });
    }

    fn learn_tracks(&mut self, tracks: &[TrackInfo]) {
        for t in tracks {
            self.track_owner
                .insert(t.track_id.clone(), t.participant_id.clone());
            if let (Some(quality), TrackKind::Video) = (self.quality, t.kind) {
                self.outbox.push_back(ClientMessage::UpdateSubscription {
                    track_id: t.track_id.clone(),
                    quality: Some(quality),
                    width: None,
                    height: None,
                    fps: None,
                });
            }
        }
    }

    /// Feeds one datagram to the connection it is addressed to and drains
    /// that connection.
    pub fn handle_datagram(
        &mut self,
        source: SocketAddr,
        destination: SocketAddr,
        bytes: &[u8],
        now: Instant,
    ) {
        let rtc = if destination == self.publisher_addr {
            &mut self.publisher
        } else if destination == self.subscriber_addr {
            &mut self.subscriber
        } else {
            return;
        };
        let Ok(contents) = bytes.try_into() else {
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );
        if rtc.accepts(&input) {
            rtc.handle_input(input).expect("bot rtc input");
            // str0m holds one received packet until the next poll (RTP
            // mode): drain now, or a second datagram would overwrite it.
            let publisher = destination == self.publisher_addr;
            self.poll_one(publisher);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.publisher
            .handle_input(Input::Timeout(now))
            .expect("timeout");
        self.subscriber
            .handle_input(Input::Timeout(now))
            .expect("timeout");
    }

    /// Drains both connections; returns the earliest time either wants.
    /// Writes `text` on the subscriber connection's data channel `label`.
    pub fn send_data(&mut self, label: &str, text: &str) -> Result<(), String> {
        let id = *self
            .data_channels
            .get(label)
            .ok_or_else(|| format!("no data channel {label}"))?;
        let mut channel = self
            .subscriber
            .channel(id)
            .ok_or_else(|| format!("data channel {label} is not open"))?;
        match channel.write(false, text.as_bytes()) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("data channel {label} is full")),
            Err(e) => Err(format!("data channel {label}: {e}")),
        }
    }

    pub fn poll(&mut self) -> Instant {
        let a = self.poll_one(true);
        let b = self.poll_one(false);
        a.min(b)
    }

    fn poll_one(&mut self, publisher: bool) -> Instant {
        loop {
            let rtc = if publisher {
                &mut self.publisher
            } else {
                &mut self.subscriber
            };
            match rtc.poll_output().expect("bot poll") {
                Output::Timeout(t) => return t,
                Output::Transmit(t) => self.transmits.push_back(t),
                Output::Event(e) => self.on_event(publisher, e),
            }
        }
    }

    fn on_event(&mut self, publisher: bool, event: Event) {
        match event {
            Event::IceConnectionStateChange(s) if publisher => self.publisher_ice = s,
            Event::IceConnectionStateChange(s) => self.subscriber_ice = s,
            Event::KeyframeRequest(req) if publisher => {
                self.keyframe_requests += 1;
                self.keyframe_due = true;
                for layer in &mut self.layers {
                    if req.rid.is_none_or(|rid| *rid == *layer.rid) {
                        layer.keyframe_due = true;
                    }
                }
            }
            Event::EgressBitrateEstimate(str0m::bwe::BweKind::Remb { estimate, .. })
                if publisher =>
            {
                self.remb.push(estimate.as_u64())
            }
            Event::MediaEgressStats(stats) if publisher && Some(stats.mid) == self.video_mid => {
                self.nacks_received = stats.nacks;
            }
            Event::MediaIngressStats(stats) if !publisher => self.report_receive_estimate(&stats),
            Event::ChannelOpen(id, label) if !publisher => {
                self.data_channels.insert(label, id);
            }
            Event::ChannelData(data) if !publisher && !data.binary => {
                let label = self
                    .data_channels
                    .iter()
                    .find(|(_, id)| **id == data.id)
                    .map(|(label, _)| label.clone());
                if let (Some(label), Ok(text)) = (label, String::from_utf8(data.data))
                    && self.data_received.len() < MAX_HELD_DATA
                {
                    self.data_received.push_back((label, text));
                }
            }
            Event::RtpPacket(pkt) if !publisher => {
                let mid = self
                    .subscriber
                    .direct_api()
                    .stream_rx(&pkt.header.ssrc)
                    .map(|s| s.mid());
                // Without the server's mid -> track map (a media port is
                // not told it), the mid names the track.
                let track_id = mid
                    .map(|m| {
                        self.mid_track
                            .get(&m)
                            .cloned()
                            .unwrap_or_else(|| format!("mid:{m}"))
                    })
                    .unwrap_or_default();
                let from = self.track_owner.get(&track_id).cloned().unwrap_or_default();
                let kind = mid
                    .and_then(|m| self.subscriber.media(m))
                    .map(|m| m.kind())
                    .unwrap_or(MediaKind::Audio);
                self.note_probe(&track_id, &from, kind, &pkt.payload, pkt.timestamp);
                if !self.record {
                    return;
                }
                self.received.push(ReceivedPacket {
                    track_id,
                    from,
                    kind,
                    seq: *pkt.seq_no,
                    timestamp: pkt.header.timestamp,
                    marker: pkt.header.marker,
                    payload: pkt.payload.to_vec(),
                    abs_send_time: pkt.header.ext_vals.abs_send_time,
                    sender_report: pkt
                        .last_sender_info
                        .map(|info| (info.ntp_time, info.rtp_time.numer() as u32)),
                });
            }
            _ => {}
        }
    }

    /// Updates the track's statistics from the probe in `payload`.
    /// A receiver's REMB, as Chromium sends one when the sender asked for
    /// no transport-wide feedback: here simply 1.5 times the rate the video
    /// arrived at over the last stats interval (a real receive-side
    /// estimator also watches delay; the SFU only relays the figure).
    fn report_receive_estimate(&mut self, stats: &str0m::stats::MediaIngressStats) {
        let kind = self.subscriber.media(stats.mid).map(|m| m.kind());
        if kind != Some(MediaKind::Video) {
            return;
        }
        let previous = self
            .received_video_bytes
            .insert(stats.mid, (stats.bytes, stats.timestamp));
        let Some((bytes, at)) = previous else {
            return;
        };
        let seconds = stats.timestamp.saturating_duration_since(at).as_secs_f64();
        if seconds <= 0.0 || stats.bytes <= bytes {
            return;
        }
        let rate = (stats.bytes - bytes) as f64 * 8.0 / seconds;
        if let Some(rx) = self
            .subscriber
            .direct_api()
            .stream_rx_by_mid(stats.mid, None)
        {
            rx.request_remb(str0m::bwe::Bitrate::bps((rate * 1.5) as u64));
        }
    }

    fn note_probe(
        &mut self,
        track_id: &str,
        from: &str,
        kind: MediaKind,
        payload: &[u8],
        now: Instant,
    ) {
        // Video: the VP8 descriptor and the first byte of the VP8 header.
        let skip = match kind {
            MediaKind::Video => vp8_descriptor_len(payload) + 1,
            _ => 0,
        };
        let Some(probe) = payload.get(skip..skip + PROBE_LEN) else {
            return;
        };
        let layer = payload.get(skip + PROBE_LEN..).and_then(simulcast_tag);
        let key = match &layer {
            Some(rid) => format!("{track_id}/{rid}"),
            None => track_id.to_string(),
        };
        let stats = self.tracks.entry(key).or_insert_with(|| {
            let mut stats = TrackStats::new(from, kind, now);
            stats.layer = layer.map(str::to_string);
            stats
        });
        stats.note_probe(probe, now);
    }

    /// Both connections this bot uses are up (the publisher only once it publishes).
    pub fn is_up(&self) -> bool {
        self.subscriber.is_connected()
            && (self.audio_mid.is_none() || self.publisher.is_connected())
    }

    /// What a client does after its network changed: new ICE credentials on
    /// the publisher connection (a new offer) and a subscriber restart.
    pub fn restart_ice(&mut self) {
        let sdp = self.publisher_offer(true).expect("an ice restart offer");
        self.outbox.push_back(ClientMessage::Publish { sdp });
        self.outbox.push_back(ClientMessage::RestartIce);
    }

    /// Media ticks sent so far.
    pub fn ticks_sent(&self) -> u64 {
        self.sent
    }

    pub fn publishing(&self) -> bool {
        self.publisher.is_connected() && self.audio_mid.is_some()
    }

    /// Writes one tick of media (call every 20 ms): an audio packet, and
    /// video packets carrying `media.video_bytes_per_tick` (at least one).
    pub fn send_media(&mut self, now: Instant) {
        if !self.publishing() {
            return;
        }
        self.sent += 1;
        let n = self.sent;
        let sent_us = now.saturating_duration_since(epoch()).as_micros() as u64;
        let keyframe = std::mem::take(&mut self.keyframe_due)
            || (n - 1).is_multiple_of(self.media.keyframe_every_ticks.max(1));
        let video_bytes = self.media.video_bytes_per_tick.max(PROBE_LEN + 2);
        let video_packets = video_bytes.div_ceil(MAX_VIDEO_PACKET);
        // (kind, packets, bytes per packet, RTP clock rate per tick)
        // With simulcast the loop below sends the audio only.
        if self.simulcast && !self.video_off && !self.video_paused {
            self.send_simulcast_video(now, n, video_bytes);
        }
        let video_single = !self.simulcast && !self.video_paused;
        for (kind, packets, len, clock) in [
            (MediaKind::Audio, 1, 0, 960),
            (
                MediaKind::Video,
                video_packets,
                video_bytes / video_packets,
                1800,
            ),
        ] {
            let (mid, codec, off) = match kind {
                MediaKind::Audio => (self.audio_mid, Codec::Opus, self.audio_muted),
                MediaKind::Video => (self.video_mid, Codec::Vp8, self.video_off || !video_single),
            };
            if off {
                continue;
            }
            let Some(mid) = mid else { continue };
            let Some(pt) = self
                .publisher
                .codec_config()
                .find(|p| p.spec().codec == codec)
                .map(|p| p.pt())
            else {
                continue;
            };
            for i in 0..packets {
                let seq = if kind == MediaKind::Video {
                    self.video_seq += 1;
                    self.video_seq
                } else {
                    n
                };
                let mut payload = Vec::with_capacity(len.max(64));
                if kind == MediaKind::Video {
                    // A VP8 payload descriptor (S=1 on a frame's first
                    // packet, PID=0) and the VP8 header's P bit: 0 starts a
                    // keyframe, 1 is an interframe.
                    let start = if i == 0 { 0x10 } else { 0x00 };
                    payload.extend_from_slice(&[start, u8::from(!keyframe)]);
                }
                payload.extend_from_slice(&seq.to_be_bytes());
                payload.extend_from_slice(&sent_us.to_be_bytes());
                let tag = if kind == MediaKind::Video { "v" } else { "a" };
                payload.extend_from_slice(format!("{}:{tag}:{n}", self.name).as_bytes());
                payload.resize(payload.len().max(len), 0);
                let mut api = self.publisher.direct_api();
                let Some(tx) = api.stream_tx_by_mid(mid, None) else {
                    continue;
                };
                let last = i + 1 == packets;
                tx.write_rtp(
                    RtpWrite::new(pt, seq.into(), (n * clock) as u32, now, payload)
                        .marker(kind == MediaKind::Video && last)
                        .nackable(kind == MediaKind::Video),
                );
            }
        }
    }

    /// One tick of video in each active simulcast layer: layer `i` of three
    /// carries a quarter of the bytes of layer `i + 1`, in packets of at
    /// most 1,100 bytes, each with a full VP8 descriptor (15-bit picture
    /// ID, TL0PICIDX, TID and Y) that counts in that layer alone. Frames
    /// follow Chromium's three temporal layers ([`L1T3_PATTERN`]).
    fn send_simulcast_video(&mut self, now: Instant, n: u64, video_bytes: usize) {
        let Some(mid) = self.video_mid else { return };
        let Some(pt) = self
            .publisher
            .codec_config()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt())
        else {
            return;
        };
        let sent_us = now.saturating_duration_since(epoch()).as_micros() as u64;
        let periodic = (n - 1).is_multiple_of(self.media.keyframe_every_ticks.max(1));
        let top = self.layers.len() - 1;
        for i in 0..self.layers.len() {
            let layer = &mut self.layers[i];
            if !layer.active {
                continue;
            }
            let keyframe = std::mem::take(&mut layer.keyframe_due) || periodic;
            if keyframe {
                layer.since_keyframe = 0;
            }
            let (tid, sync) = L1T3_PATTERN[(layer.since_keyframe % 8) as usize];
            layer.since_keyframe += 1;
            layer.picture_id = (layer.picture_id + 1) & 0x7fff;
            if tid == 0 {
                layer.tl0_pic_idx = layer.tl0_pic_idx.wrapping_add(1);
            }
            let bytes = (video_bytes >> (2 * (top - i))).max(PROBE_LEN + 8);
            let packets = bytes.div_ceil(MAX_VIDEO_PACKET);
            let rid = Rid::from(layer.rid);
            for p in 0..packets {
                let layer = &mut self.layers[i];
                layer.seq += 1;
                let start = if p == 0 { 0x10 } else { 0x00 };
                let mut payload = vec![
                    0x80 | start,
                    0xe0, // I, L, T
                    0x80 | (layer.picture_id >> 8) as u8,
                    layer.picture_id as u8,
                    layer.tl0_pic_idx,
                    (tid << 6) | (u8::from(sync) << 5),
                    u8::from(!keyframe),
                ];
                payload.extend_from_slice(&layer.seq.to_be_bytes());
                payload.extend_from_slice(&sent_us.to_be_bytes());
                payload.extend_from_slice(format!("{}:v{}:{n}", self.name, layer.rid).as_bytes());
                payload.resize(payload.len().max(bytes / packets), 0);
                let seq = layer.seq;
                let mut api = self.publisher.direct_api();
                let Some(tx) = api.stream_tx_by_mid(mid, Some(rid)) else {
                    continue;
                };
                tx.write_rtp(
                    RtpWrite::new(pt, seq.into(), (n * 1800) as u32, now, payload)
                        .marker(p + 1 == packets)
                        .nackable(true),
                );
            }
        }
    }

    /// Writes one video packet with a payload of `len` bytes and returns the
    /// encrypted datagrams it produced (benchmarks feed them to the engine).
    pub fn video_datagrams(&mut self, now: Instant, len: usize) -> Vec<Transmit> {
        self.video_seq += 1;
        let n = self.video_seq;
        let mid = self.video_mid.expect("published");
        let pt = self
            .publisher
            .codec_config()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt())
            .expect("vp8 negotiated");
        // An interframe (VP8 descriptor S=1 PID=0, P=1); the subscriber was
        // started by the keyframes `send_media` sent while the call came up.
        let mut payload = vec![0u8; len];
        payload[0] = 0x10;
        payload[1] = 0x01;
        payload[2..10].copy_from_slice(&n.to_be_bytes());
        let mut api = self.publisher.direct_api();
        let tx = api.stream_tx_by_mid(mid, None).expect("video stream");
        tx.write_rtp(RtpWrite::new(pt, n.into(), (n * 3000) as u32, now, payload).marker(true));
        self.publisher
            .handle_input(Input::Timeout(now))
            .expect("timeout");
        let _ = self.poll_one(true);
        self.transmits.drain(..).collect()
    }

    /// Packets received from the participant whose bot is `name`.
    pub fn received_from(&self, participant_id: &str) -> usize {
        self.received
            .iter()
            .filter(|p| p.from == participant_id)
            .count()
    }
}

/// Fake clock tick used by the harness.
pub const TICK: Duration = Duration::from_millis(5);
