//! The own SRTP egress of one subscriber connection (issue 21): forwarded
//! copies written and sealed here, not through str0m's per-packet write
//! path, queue and pacer. str0m keeps ICE, DTLS, SCTP, SDP and incoming
//! RTCP; the engine hands this the NACKs it reads, and the address
//! str0m's own traffic goes to.
//!
//! Per copy: the RTP header with the subscriber's sequence number, payload
//! type and SSRC (str0m's, as its SDP announced), the header extensions
//! the subscriber's m-line negotiated (mid, abs-send-time, audio level,
//! video orientation: RFC 8285 one-byte form), the payload sealed out of
//! place. Video copies stay in a ring (~1 s) whose bytes answer a NACK as
//! they were first sent: a (key, SSRC, index) is never sealed twice.
//!
//! Sender reports: each stream's (NTP, RTP) pair is the publisher's, moved
//! onto the subscriber's timestamps, so audio and video of one publisher
//! keep the relation the publisher's reports gave them (lip sync). Our
//! compound packets lead with an SSRC of their own (an empty receiver
//! report): str0m takes the SRTCP IV from a packet's first SSRC and keeps
//! its own index, so its packets and ours never share an IV; our index
//! also starts at 2^30, where str0m's (one per RTCP packet it sends, and
//! it sends none but a goodbye on these connections) never gets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use str0m::config::CryptoProvider;
use str0m::media::Mid;
use str0m::net::{Protocol, Transmit};
use str0m::rtp::rtcp::NackEntry;
use str0m::rtp::{Extension, ExtensionMap, VideoOrientation};

use super::capture::Captured;
use super::keys::connection_keys;
use super::protect::{RtpSealer, SealError};

/// How long a sent video packet can be asked for again.
const RETRANSMIT_WINDOW: Duration = Duration::from_secs(1);
/// Ring slots per video stream: a second of a 2.5 Mbit/s layer.
const RING_SLOTS: usize = 256;
/// A packet is sent again at most this often (a receiver's NACKs repeat;
/// a hostile one must not turn one packet into a flood).
const MAX_RESENDS: u8 = 2;
/// Sender reports per stream at most this often.
const SENDER_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Where our SRTCP index starts (str0m's starts at 0).
const SRTCP_INDEX_START: u32 = 1 << 30;
/// Seconds from the NTP epoch (1900) to the Unix epoch.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
/// Room left in a datagram for our RTCP: an MTU's worth, less SRTCP's
/// index and tag.
const RTCP_BUDGET: usize = 1_100;

/// Where a connection's packets go: the pair str0m sends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub proto: Protocol,
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// The header extensions one subscriber m-line negotiated, by id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtensionIds {
    mid: Option<u8>,
    abs_send_time: Option<u8>,
    audio_level: Option<u8>,
    video_orientation: Option<u8>,
}

impl ExtensionIds {
    /// The ids of a media's remote extension map; ids above 14 need the
    /// two-byte form, which this writer does not use: left out.
    pub fn of(map: &ExtensionMap) -> ExtensionIds {
        let id = |e: Extension| map.id_of(e).filter(|id| (1..=14).contains(id));
        ExtensionIds {
            mid: id(Extension::RtpMid),
            abs_send_time: id(Extension::AbsoluteSendTime),
            audio_level: id(Extension::AudioLevel),
            video_orientation: id(Extension::VideoOrientation),
        }
    }
}

/// A stream the egress sends: one subscribed track on one m-line.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub ssrc: u32,
    pub mid: Mid,
    pub extensions: ExtensionIds,
    pub clock_rate: u32,
    /// Kept for NACKs (video).
    pub nackable: bool,
    pub cname: String,
}

/// One forwarded copy.
pub struct RtpCopy<'a> {
    pub ssrc: u32,
    pub payload_type: u8,
    /// The subscriber's extended sequence number (never reused).
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    /// RFC 6464: voice activity and level (dBov, 0 to -127).
    pub audio_level: Option<(bool, i8)>,
    pub video_orientation: Option<VideoOrientation>,
    /// The payload as the subscriber gets it (any VP8 rewrite applied).
    pub payload: &'a [u8],
    /// The publisher's report, if it sent one: (NTP time, RTP timestamp in
    /// the publisher's numbering, the same packet's publisher timestamp).
    pub sync: Option<PublisherSync>,
}

/// Where a copy sits on the publisher's clock.
#[derive(Debug, Clone, Copy)]
pub struct PublisherSync {
    pub report_ntp: SystemTime,
    pub report_rtp: u32,
    pub packet_rtp: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error(transparent)]
    Keys(#[from] super::keys::KeyError),
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// Counters the engine adds to its stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EgressCounters {
    pub rtp_sent: u64,
    pub resent: u64,
    pub resend_refused: u64,
    pub sender_reports: u64,
    /// Copies not sent: an unknown stream, or an index sealed before.
    pub dropped: u64,
}

pub struct OwnEgress {
    rtp: RtpSealer,
    rtcp: RtpSealer,
    streams: HashMap<u32, Stream>,
    /// Each stream's SSRC by its m-line: what a copy is found by.
    by_mid: HashMap<Mid, u32>,
    /// SSRCs of streams that ended: never taken again (their indexes were
    /// used with these keys).
    retired: Vec<u32>,
    /// Leads our compound RTCP packets (never one of str0m's SSRCs).
    rtcp_ssrc: u32,
    srtcp_index: u32,
    next_reports_at: Option<Instant>,
    header: Vec<u8>,
    counters: EgressCounters,
}

struct Stream {
    spec: StreamSpec,
    /// The first packet's extended sequence number with its low 16 bits
    /// cleared: the SRTP index is the distance from it, so the receiver's
    /// rollover counter (0 at its first packet) agrees with ours.
    index_base: Option<u64>,
    sealed: SealedWindow,
    ring: Vec<Slot>,
    packets: u32,
    octets: u32,
    /// The latest copy's place on the publisher's clock, with our
    /// timestamp for it and when it was sent.
    sync: Option<(SystemTime, u32, Instant)>,
    /// When a receiver report last counted for this stream's quality.
    quality_at: Option<Instant>,
}

#[derive(Default)]
struct Slot {
    index: Option<u64>,
    sent_at: Option<Instant>,
    resends: u8,
    bytes: Vec<u8>,
}

/// The SRTP indexes a stream has sealed, the latest 1024: an index is
/// sealed once; one older than the window is refused (a replay database's
/// rule, on the sending side).
#[derive(Default)]
struct SealedWindow {
    highest: Option<u64>,
    bits: [u64; 16],
}

impl SealedWindow {
    const SPAN: u64 = 1024;

    /// Marks `index` sealed; false when it was, or is too old to know.
    fn mark(&mut self, index: u64) -> bool {
        let highest = match self.highest {
            None => {
                self.highest = Some(index);
                self.set(index);
                return true;
            }
            Some(h) => h,
        };
        if index > highest {
            let advance = index - highest;
            if advance >= Self::SPAN {
                self.bits = [0; 16];
            } else {
                for i in highest + 1..index {
                    self.clear(i);
                }
            }
            self.highest = Some(index);
            self.set(index);
            return true;
        }
        if highest - index >= Self::SPAN || self.get(index) {
            return false;
        }
        self.set(index);
        true
    }

    fn slot(index: u64) -> (usize, u64) {
        let bit = index % Self::SPAN;
        ((bit / 64) as usize, 1 << (bit % 64))
    }
    fn set(&mut self, index: u64) {
        let (word, mask) = Self::slot(index);
        self.bits[word] |= mask;
    }
    fn clear(&mut self, index: u64) {
        let (word, mask) = Self::slot(index);
        self.bits[word] &= !mask;
    }
    fn get(&self, index: u64) -> bool {
        let (word, mask) = Self::slot(index);
        self.bits[word] & mask != 0
    }
}

impl OwnEgress {
    /// An egress sealing with the transmit keys of `captured`; our RTCP
    /// leads with `rtcp_ssrc`, which must be none of str0m's SSRCs on this
    /// connection.
    pub fn new(
        crypto: &CryptoProvider,
        captured: &Captured,
        rtcp_ssrc: u32,
    ) -> Result<OwnEgress, EgressError> {
        let keys = connection_keys(
            crypto.srtp_provider,
            captured.profile,
            &captured.material,
            captured.dtls_client,
        )?;
        let transmit = keys.transmit;
        Ok(OwnEgress {
            rtp: RtpSealer::new(crypto, transmit.profile, &transmit.rtp)?,
            rtcp: RtpSealer::new(crypto, transmit.profile, &transmit.rtcp)?,
            streams: HashMap::new(),
            by_mid: HashMap::new(),
            retired: Vec::new(),
            rtcp_ssrc,
            srtcp_index: SRTCP_INDEX_START,
            next_reports_at: None,
            header: Vec::with_capacity(64),
            counters: EgressCounters::default(),
        })
    }

    pub fn rtcp_ssrc(&self) -> u32 {
        self.rtcp_ssrc
    }

    pub fn counters(&self) -> EgressCounters {
        self.counters
    }

    /// Declares a stream; false for the SSRC of one that ended.
    pub fn add_stream(&mut self, spec: StreamSpec) -> bool {
        if self.retired.contains(&spec.ssrc) {
            return false;
        }
        self.by_mid.insert(spec.mid, spec.ssrc);
        match self.streams.get_mut(&spec.ssrc) {
            Some(stream) => stream.spec = spec,
            None => {
                let ring = if spec.nackable {
                    (0..RING_SLOTS).map(|_| Slot::default()).collect()
                } else {
                    Vec::new()
                };
                self.streams.insert(
                    spec.ssrc,
                    Stream {
                        spec,
                        index_base: None,
                        sealed: SealedWindow::default(),
                        ring,
                        packets: 0,
                        octets: 0,
                        sync: None,
                        quality_at: None,
                    },
                );
            }
        }
        true
    }

    pub fn has_stream(&self, ssrc: u32) -> bool {
        self.streams.contains_key(&ssrc)
    }

    /// The SSRC of the stream on m-line `mid`, once declared.
    pub fn ssrc_of(&self, mid: Mid) -> Option<u32> {
        self.by_mid.get(&mid).copied()
    }

    /// Whether a receiver report about `ssrc` should count now (at most
    /// once per `interval` per stream), and if so whether it is video.
    pub fn quality_due(&mut self, ssrc: u32, now: Instant, interval: Duration) -> Option<bool> {
        let stream = self.streams.get_mut(&ssrc)?;
        if stream
            .quality_at
            .is_some_and(|at| now.saturating_duration_since(at) < interval)
        {
            return None;
        }
        stream.quality_at = Some(now);
        Some(stream.spec.nackable)
    }

    /// Ends the stream of m-line `mid` (its SSRC is not taken again).
    pub fn retire_mid(&mut self, mid: Mid) {
        if let Some(ssrc) = self.by_mid.remove(&mid) {
            self.streams.remove(&ssrc);
            self.retired.push(ssrc);
        }
    }

    /// Seals one copy and returns its datagram to `route`; `None` when the
    /// stream is unknown or its index was sealed before.
    /// `buffer` (empty or not) becomes the datagram: the shell hands sent
    /// ones back, so steady forwarding allocates nothing here.
    pub fn send(
        &mut self,
        route: Route,
        copy: &RtpCopy<'_>,
        now: Instant,
        mut buffer: Vec<u8>,
    ) -> Option<Transmit> {
        let Some(stream) = self.streams.get_mut(&copy.ssrc) else {
            self.counters.dropped += 1;
            return None;
        };
        let base = *stream.index_base.get_or_insert(copy.seq & !0xffff);
        let Some(index) = copy.seq.checked_sub(base) else {
            self.counters.dropped += 1;
            return None;
        };
        if !stream.sealed.mark(index) {
            // Sealing it again with other bytes would reuse a nonce.
            debug_assert!(false, "SRTP index {index} sealed twice");
            self.counters.dropped += 1;
            return None;
        }
        write_header(&mut self.header, copy, &stream.spec, now);
        if let Err(e) = self
            .rtp
            .seal(&self.header, copy.ssrc, index, copy.payload, &mut buffer)
        {
            tracing::warn!(error = %e, "own egress: sealing refused");
            self.counters.dropped += 1;
            return None;
        }
        stream.packets = stream.packets.wrapping_add(1);
        stream.octets = stream.octets.wrapping_add(copy.payload.len() as u32);
        if let Some(sync) = copy.sync {
            let rate = f64::from(stream.spec.clock_rate.max(1));
            let ahead = copy.packet_rtp_ahead(sync);
            let ntp = offset_time(sync.report_ntp, ahead as f64 / rate);
            stream.sync = Some((ntp, copy.timestamp, now));
        }
        if stream.spec.nackable {
            let slot = &mut stream.ring[(index % RING_SLOTS as u64) as usize];
            slot.index = Some(index);
            slot.sent_at = Some(now);
            slot.resends = 0;
            slot.bytes.clear();
            slot.bytes.extend_from_slice(&buffer);
        }
        self.counters.rtp_sent += 1;
        Some(Transmit {
            proto: route.proto,
            source: route.source,
            destination: route.destination,
            contents: buffer.into(),
        })
    }

    /// The datagrams a NACK for `ssrc` asks again, byte for byte as sent.
    pub fn resend(
        &mut self,
        route: Route,
        ssrc: u32,
        entries: impl IntoIterator<Item = NackEntry>,
        now: Instant,
        out: &mut Vec<Transmit>,
    ) {
        let Some(stream) = self.streams.get_mut(&ssrc) else {
            return;
        };
        let (Some(base), Some(highest)) = (stream.index_base, stream.sealed.highest) else {
            return;
        };
        if !stream.spec.nackable {
            return;
        }
        for entry in entries {
            let lost = std::iter::once(entry.pid).chain(
                (0..16)
                    .filter(|bit| entry.blp & (1 << bit) != 0)
                    .map(|bit| entry.pid.wrapping_add(bit + 1)),
            );
            for seq16 in lost {
                // The index nearest the highest sent with these low bits.
                let extended = base + highest;
                let candidate = (extended & !0xffff) | u64::from(seq16);
                let index = if candidate > extended {
                    candidate.checked_sub(1 << 16)
                } else {
                    Some(candidate)
                };
                let Some(index) = index.and_then(|i| i.checked_sub(base)) else {
                    continue;
                };
                let slot = &mut stream.ring[(index % RING_SLOTS as u64) as usize];
                let fresh = slot
                    .sent_at
                    .is_some_and(|t| now.saturating_duration_since(t) <= RETRANSMIT_WINDOW);
                if slot.index != Some(index) || !fresh {
                    continue;
                }
                if slot.resends >= MAX_RESENDS {
                    self.counters.resend_refused += 1;
                    continue;
                }
                slot.resends += 1;
                self.counters.resent += 1;
                out.push(Transmit {
                    proto: route.proto,
                    source: route.source,
                    destination: route.destination,
                    contents: slot.bytes.clone().into(),
                });
            }
        }
    }

    /// Sender reports and descriptions of every stream that has a place
    /// on its publisher's clock, once a [`SENDER_REPORT_INTERVAL`]; each
    /// datagram one compound packet.
    pub fn poll_reports(&mut self, route: Route, now: Instant, out: &mut Vec<Transmit>) {
        if self.next_reports_at.is_some_and(|at| now < at) {
            return;
        }
        self.next_reports_at = Some(now + SENDER_REPORT_INTERVAL);
        let mut compound = Vec::with_capacity(RTCP_BUDGET + 64);
        let mut ssrcs: Vec<u32> = self.streams.keys().copied().collect();
        ssrcs.sort_unstable();
        let mut pending = 0;
        for ssrc in ssrcs {
            let stream = &self.streams[&ssrc];
            let Some((ntp, rtp, at)) = stream.sync else {
                continue;
            };
            if compound.is_empty() {
                write_empty_receiver_report(&mut compound, self.rtcp_ssrc);
            }
            let elapsed = now.saturating_duration_since(at);
            let report_ntp = offset_time(ntp, elapsed.as_secs_f64());
            let ticks = (elapsed.as_secs_f64() * f64::from(stream.spec.clock_rate)) as u32;
            write_sender_report(
                &mut compound,
                ssrc,
                report_ntp,
                rtp.wrapping_add(ticks),
                stream.packets,
                stream.octets,
            );
            write_cname(&mut compound, ssrc, &stream.spec.cname);
            pending += 1;
            if compound.len() >= RTCP_BUDGET {
                self.flush_rtcp(&mut compound, route, out);
                self.counters.sender_reports += pending;
                pending = 0;
            }
        }
        if !compound.is_empty() {
            self.flush_rtcp(&mut compound, route, out);
            self.counters.sender_reports += pending;
        }
    }

    fn flush_rtcp(&mut self, compound: &mut Vec<u8>, route: Route, out: &mut Vec<Transmit>) {
        let index = self.srtcp_index;
        self.srtcp_index = (self.srtcp_index + 1) & 0x7fff_ffff;
        if self.srtcp_index == 0 {
            // 2^31 packets: keys that old are renegotiated long before.
            self.srtcp_index = SRTCP_INDEX_START;
        }
        let mut sealed = Vec::with_capacity(compound.len() + 32);
        match self.rtcp.seal_rtcp(compound, index, &mut sealed) {
            Ok(()) => out.push(Transmit {
                proto: route.proto,
                source: route.source,
                destination: route.destination,
                contents: sealed.into(),
            }),
            Err(e) => tracing::warn!(error = %e, "own egress: sealing RTCP refused"),
        }
        compound.clear();
    }
}

impl RtpCopy<'_> {
    /// How far this packet is past the publisher's report, in ticks.
    fn packet_rtp_ahead(&self, sync: PublisherSync) -> i64 {
        i64::from(sync.packet_rtp.wrapping_sub(sync.report_rtp) as i32)
    }
}

fn offset_time(t: SystemTime, seconds: f64) -> SystemTime {
    if seconds >= 0.0 {
        t + Duration::from_secs_f64(seconds)
    } else {
        t.checked_sub(Duration::from_secs_f64(-seconds))
            .unwrap_or(t)
    }
}

/// RFC 3550 header, RFC 8285 one-byte extensions.
fn write_header(buf: &mut Vec<u8>, copy: &RtpCopy<'_>, spec: &StreamSpec, now: Instant) {
    buf.clear();
    buf.extend_from_slice(&[
        0x80,
        copy.payload_type & 0x7f | if copy.marker { 0x80 } else { 0 },
    ]);
    buf.extend_from_slice(&(copy.seq as u16).to_be_bytes());
    buf.extend_from_slice(&copy.timestamp.to_be_bytes());
    buf.extend_from_slice(&copy.ssrc.to_be_bytes());
    let ids = spec.extensions;
    let start = buf.len();
    buf.extend_from_slice(&[0xbe, 0xde, 0, 0]);
    let mut element = |id: Option<u8>, value: &[u8]| {
        if let Some(id) = id
            && (1..=16).contains(&value.len())
        {
            buf.push(id << 4 | (value.len() as u8 - 1));
            buf.extend_from_slice(value);
        }
    };
    element(ids.mid, spec.mid.as_bytes());
    element(ids.abs_send_time, &abs_send_time(now));
    if let Some((voice, level)) = copy.audio_level {
        element(
            ids.audio_level,
            &[u8::from(voice) << 7 | (level.unsigned_abs() & 0x7f)],
        );
    }
    if let Some(orientation) = copy.video_orientation {
        element(ids.video_orientation, &[orientation as u8]);
    }
    let extensions = buf.len() - start - 4;
    if extensions == 0 {
        buf.truncate(start);
        return;
    }
    buf.resize(buf.len().next_multiple_of(4), 0);
    buf[0] |= 0x10;
    let words = ((buf.len() - start - 4) / 4) as u16;
    buf[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
}

/// abs-send-time: 6.18 fixed-point seconds of wall-clock time, 24 bits
/// (it wraps every 64 s). Receivers only take differences, but str0m reads
/// it as Unix time modulo 64 s, so it is written the way str0m writes it:
/// `now` on the wall clock by one (monotonic, wall) pair taken once.
fn abs_send_time(now: Instant) -> [u8; 3] {
    use std::sync::LazyLock;
    static WALL: LazyLock<(Instant, SystemTime)> =
        LazyLock::new(|| (Instant::now(), SystemTime::now()));
    let (mono, wall) = *WALL;
    let at = match now.checked_duration_since(mono) {
        Some(ahead) => wall + ahead,
        None => wall - mono.duration_since(now),
    };
    let unix = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let micros = (unix.as_micros() % 64_000_000) as u64;
    let fixed = (micros << 18) / 1_000_000;
    let bytes = (fixed as u32 & 0x00ff_ffff).to_be_bytes();
    [bytes[1], bytes[2], bytes[3]]
}

fn ntp(t: SystemTime) -> u64 {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs() + NTP_UNIX_OFFSET;
    let fraction = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    seconds << 32 | fraction
}

fn write_empty_receiver_report(buf: &mut Vec<u8>, ssrc: u32) {
    buf.extend_from_slice(&[0x80, 201, 0, 1]);
    buf.extend_from_slice(&ssrc.to_be_bytes());
}

fn write_sender_report(
    buf: &mut Vec<u8>,
    ssrc: u32,
    at: SystemTime,
    rtp: u32,
    packets: u32,
    octets: u32,
) {
    buf.extend_from_slice(&[0x80, 200, 0, 6]);
    buf.extend_from_slice(&ssrc.to_be_bytes());
    buf.extend_from_slice(&ntp(at).to_be_bytes());
    buf.extend_from_slice(&rtp.to_be_bytes());
    buf.extend_from_slice(&packets.to_be_bytes());
    buf.extend_from_slice(&octets.to_be_bytes());
}

/// SDES with one chunk: the stream's CNAME (RFC 3550 section 6.5).
fn write_cname(buf: &mut Vec<u8>, ssrc: u32, cname: &str) {
    let cname = &cname.as_bytes()[..cname.len().min(255)];
    let start = buf.len();
    buf.extend_from_slice(&[0x81, 202, 0, 0]);
    buf.extend_from_slice(&ssrc.to_be_bytes());
    buf.push(1);
    buf.push(cname.len() as u8);
    buf.extend_from_slice(cname);
    // The item list ends with a zero byte, then pads to 32 bits.
    buf.push(0);
    buf.resize(buf.len().next_multiple_of(4), 0);
    let words = ((buf.len() - start) / 4 - 1) as u16;
    buf[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_is_sealed_once_and_one_too_old_is_refused() {
        let mut window = SealedWindow::default();
        assert!(window.mark(5));
        assert!(!window.mark(5), "again");
        assert!(window.mark(3), "late, never sealed");
        assert!(!window.mark(3));
        assert!(window.mark(2000));
        assert!(!window.mark(5), "older than the window: unknown, refused");
        assert!(window.mark(1500), "inside the window, skipped over");
        assert!(window.mark(2000 + 1024 + 7), "a jump past the window");
        assert!(!window.mark(2000));
    }

    #[test]
    fn sdes_and_sender_reports_are_whole_words() {
        let mut buf = Vec::new();
        write_empty_receiver_report(&mut buf, 7);
        write_sender_report(&mut buf, 9, SystemTime::UNIX_EPOCH, 1234, 3, 300);
        write_cname(&mut buf, 9, "abcde");
        // RR 8 + SR 28 + SDES (8 + 2 + 5 + 1 = 16).
        assert_eq!(buf.len(), 8 + 28 + 16);
        let mut at = 0;
        let mut types = Vec::new();
        while at < buf.len() {
            types.push(buf[at + 1]);
            at += 4 * (usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]])) + 1);
        }
        assert_eq!(at, buf.len(), "lengths add up to the compound");
        assert_eq!(types, [201, 200, 202]);
        // NTP seconds of the Unix epoch.
        assert_eq!(&buf[16..20], &(NTP_UNIX_OFFSET as u32).to_be_bytes());
    }

    fn egress() -> OwnEgress {
        let crypto = str0m::crypto::from_feature_flags();
        let captured = Captured {
            material: (0..56).collect(),
            profile: str0m::crypto::dtls::SrtpProfile::AEAD_AES_128_GCM,
            dtls_client: true,
        };
        OwnEgress::new(&crypto, &captured, 99).unwrap()
    }

    #[test]
    fn a_nack_gets_the_same_bytes_twice_at_most_within_a_second() {
        let mut egress = egress();
        let route = Route {
            proto: Protocol::Udp,
            source: "127.0.0.1:1".parse().unwrap(),
            destination: "127.0.0.1:2".parse().unwrap(),
        };
        assert!(egress.add_stream(StreamSpec {
            ssrc: 5,
            mid: Mid::from("1"),
            extensions: ExtensionIds::default(),
            clock_rate: 90_000,
            nackable: true,
            cname: "c".into(),
        }));
        let now = Instant::now();
        let mut sent = Vec::new();
        for seq in 70_000..70_010u64 {
            let copy = RtpCopy {
                ssrc: 5,
                payload_type: 96,
                seq,
                timestamp: 0,
                marker: false,
                audio_level: None,
                video_orientation: None,
                payload: &[1, 2, 3],
                sync: None,
            };
            sent.push(egress.send(route, &copy, now, vec![0xee; 40]).unwrap());
        }
        // The reused buffers' old bytes are gone: a 12-byte header, the
        // sealed payload and its 16-byte tag.
        assert!(sent.iter().all(|t| t.contents.len() == 12 + 3 + 16));
        // An index is sealed once: refused (and, in debug builds, a panic).
        let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            egress
                .send(
                    route,
                    &RtpCopy {
                        seq: 70_003,
                        ..copy_at(5)
                    },
                    now,
                    Vec::new(),
                )
                .is_none()
        }));
        assert!(again.unwrap_or(cfg!(debug_assertions)));
        // 70_002 and, by the bitmask, 70_004.
        let nack = || {
            [NackEntry {
                pid: 70_002u64 as u16,
                blp: 0b10,
            }]
        };
        let mut out = Vec::new();
        egress.resend(route, 5, nack(), now, &mut out);
        let bytes: Vec<Vec<u8>> = out.drain(..).map(|t| t.contents.into()).collect();
        let first: Vec<Vec<u8>> = [2, 4].iter().map(|i| sent[*i].contents.to_vec()).collect();
        assert_eq!(bytes, first, "byte for byte as first sent");
        egress.resend(route, 5, nack(), now, &mut out);
        assert_eq!(out.len(), 2);
        out.clear();
        egress.resend(route, 5, nack(), now, &mut out);
        assert!(out.is_empty(), "a third time is refused");
        assert_eq!(egress.counters().resend_refused, 2);
        let mut late = Vec::new();
        let nack = [NackEntry {
            pid: 70_005u64 as u16,
            blp: 0,
        }];
        egress.resend(
            route,
            5,
            nack,
            now + Duration::from_millis(1_100),
            &mut late,
        );
        assert!(late.is_empty(), "older than the window");
        // An ended stream's SSRC is not taken again.
        egress.retire_mid(Mid::from("1"));
        assert!(!egress.has_stream(5));
        assert!(!egress.add_stream(StreamSpec {
            ssrc: 5,
            mid: Mid::from("2"),
            extensions: ExtensionIds::default(),
            clock_rate: 90_000,
            nackable: true,
            cname: "c".into(),
        }));
    }

    fn copy_at(ssrc: u32) -> RtpCopy<'static> {
        RtpCopy {
            ssrc,
            payload_type: 96,
            seq: 0,
            timestamp: 0,
            marker: false,
            audio_level: None,
            video_orientation: None,
            payload: &[9],
            sync: None,
        }
    }

    #[test]
    fn the_header_carries_the_negotiated_extensions_one_byte_form() {
        let spec = StreamSpec {
            ssrc: 0x0102_0304,
            mid: Mid::from("3"),
            extensions: ExtensionIds {
                mid: Some(4),
                abs_send_time: Some(2),
                audio_level: Some(1),
                video_orientation: None,
            },
            clock_rate: 48_000,
            nackable: false,
            cname: "c".into(),
        };
        let copy = RtpCopy {
            ssrc: spec.ssrc,
            payload_type: 111,
            seq: 0x1_0005,
            timestamp: 960,
            marker: true,
            audio_level: Some((true, -30)),
            video_orientation: Some(VideoOrientation::Deg90),
            payload: &[],
            sync: None,
        };
        let mut header = Vec::new();
        write_header(&mut header, &copy, &spec, Instant::now());
        assert_eq!(&header[..4], &[0x90, 0x80 | 111, 0x00, 0x05]);
        assert_eq!(&header[8..12], &[1, 2, 3, 4]);
        assert_eq!(&header[12..14], &[0xbe, 0xde]);
        // mid (2 bytes), abs-send-time (4), audio level (2): 8 bytes, 2 words;
        // no orientation (not negotiated).
        assert_eq!(&header[14..16], &[0, 2]);
        assert_eq!(&header[16..18], &[0x40, b'3']);
        assert_eq!(header[18], 0x22);
        assert_eq!(&header[22..24], &[0x10, 0x80 | 30]);
        assert_eq!(header.len(), 24);
    }
}
