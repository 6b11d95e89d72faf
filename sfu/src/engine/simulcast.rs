//! Simulcast: which of a published track's layers each subscriber receives,
//! and the rewriting that makes a switch between layers invisible to its
//! decoder.
//!
//! A simulcast publisher sends up to three encodings of one camera on one
//! m-line, told apart by RID (RFC 8851), lowest first in the order its
//! `a=simulcast` line lists them (Chromium lists `sendEncodings` in order;
//! mediasoup and LiveKit read them the same way). Each layer is its own RTP
//! stream: its own SSRC, sequence numbers, timestamps and VP8 picture IDs.
//! A subscriber receives one layer at a time on one send stream, so at a
//! switch the new layer's numbers are rebased to continue where the old
//! layer's stopped, and the switch happens only at a keyframe of the new
//! layer: the decoder sees one stream, with no reset and no freeze.
//!
//! A track without simulcast is a track with one layer; every forwarded
//! stream goes through [`DownStream`], which is also what holds a new
//! subscriber's video until its first keyframe.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use signaling::{LayerChoice, LayerRequest, VideoQuality};
use str0m::rtp::{SeqNo, Vp8Descriptor, Vp8Patch};

use super::vp8::Temporal;

/// A layer that sent nothing for this long is not offered to subscribers:
/// the publisher turned it off (CPU or bandwidth adaptation, or dynacast),
/// and a subscriber waiting for it would wait with a frozen picture.
pub const LAYER_STALE: Duration = Duration::from_secs(1);

/// Layers per track: Chromium sends at most three (and RFC 8853 names no
/// more for one camera); packets of further RIDs are not forwarded.
pub const MAX_LAYERS: usize = 3;

/// Temporal layers per spatial layer: VP8 sends up to three (L1T3, what
/// Chromium's VP8 simulcast uses); frames of further TIDs are dropped.
pub const MAX_TEMPORAL: usize = 3;

/// What a subscriber receives of a track: one spatial layer, and of it the
/// temporal layers up to `temporal` (every frame when the stream has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Level {
    pub spatial: usize,
    pub temporal: u8,
}

impl Level {
    /// A spatial layer with all its frames.
    pub fn full(spatial: usize) -> Level {
        Level {
            spatial,
            temporal: MAX_TEMPORAL as u8 - 1,
        }
    }
}

/// When each of a track's layers last sent a packet, and at what rates: a
/// copy small enough to hand to every subscriber's [`DownStream`] while the
/// track is borrowed.
#[derive(Debug, Default, Clone, Copy)]
pub struct LiveLayers {
    pub count: usize,
    pub seen: [Option<Instant>; MAX_LAYERS],
    /// Per layer, its temporal layers (1 for a stream without them).
    pub temporal_layers: [u8; MAX_LAYERS],
    /// Per layer and temporal layer, bits per second over the last
    /// [`RATE_WINDOW`] (0 until measured).
    pub bitrate: [[u64; MAX_TEMPORAL]; MAX_LAYERS],
    /// Per layer and temporal layer, frames per second (0 until measured).
    pub frame_rate: [[u16; MAX_TEMPORAL]; MAX_LAYERS],
    /// Per layer, the size its latest keyframe announced (VP8 only).
    pub size: [Option<(u16, u16)>; MAX_LAYERS],
}

/// A layer's rates are measured over windows this long.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);

impl LiveLayers {
    /// The level a subscriber asking `request` should be on now, at most
    /// `cap` (what its downlink carries; `None`: no limit). Under a cap,
    /// no layer above it stands in for a silent one: the subscriber waits
    /// on the capped layer rather than overrun its downlink.
    pub fn target(&self, request: LayerRequest, cap: Option<Level>, now: Instant) -> Option<Level> {
        let limit = cap.map_or(self.count, |c| self.count.min(c.spatial + 1));
        let wanted = self.wanted_layer(request.choice).min(limit.checked_sub(1)?);
        let spatial = match pick_layer(wanted, &self.seen[..limit], now) {
            Some(spatial) => spatial,
            None if cap.is_some() => wanted,
            None => return None,
        };
        let mut temporal = self.temporal_for(spatial, request.max_fps);
        if let Some(cap) = cap.filter(|c| c.spatial == spatial) {
            temporal = temporal.min(cap.temporal);
        }
        Some(Level { spatial, temporal })
    }

    /// Whether layer `i` sent a packet within [`LAYER_STALE`].
    pub fn is_live(&self, i: usize, now: Instant) -> bool {
        i < self.count
            && self.seen[i].is_some_and(|t| now.saturating_duration_since(t) < LAYER_STALE)
    }

    /// The spatial layer a choice names: for a size, the smallest layer at
    /// least that large (both ways), else the largest. A layer whose size
    /// is not known yet (no keyframe seen, or not VP8) is taken as half
    /// the one above it (Chromium's `scaleResolutionDownBy` 4, 2, 1);
    /// knowing none, a size names the top layer.
    pub fn wanted_layer(&self, choice: LayerChoice) -> usize {
        let (width, height) = match choice {
            LayerChoice::Quality(quality) => return layer_for(quality, self.count),
            LayerChoice::Size { width, height } => (width, height),
        };
        let top = self.count.saturating_sub(1);
        let Some((known, (w, h))) = (0..self.count)
            .rev()
            .find_map(|l| self.size[l].map(|s| (l, s)))
        else {
            return top;
        };
        let size_of = |l: usize| -> (u32, u32) {
            match self.size[l] {
                Some((w, h)) => (u32::from(w), u32::from(h)),
                None if l < known => (u32::from(w) >> (known - l), u32::from(h) >> (known - l)),
                None => (u32::from(w) << (l - known), u32::from(h) << (l - known)),
            }
        };
        (0..self.count)
            .find(|l| {
                let (w, h) = size_of(*l);
                w >= width && h >= height
            })
            .unwrap_or(top)
    }

    /// The fewest temporal layers of `spatial` that give `max_fps` (within
    /// a tenth: 7.5 fps is what "8" gets from a 30 fps L1T3 stream); all
    /// of them ([`Level::full`]: also those not seen yet) without a limit
    /// or before their rates are measured.
    pub fn temporal_for(&self, spatial: usize, max_fps: Option<u32>) -> u8 {
        let all = MAX_TEMPORAL as u8 - 1;
        let layers = self.temporal_layers[spatial].clamp(1, MAX_TEMPORAL as u8);
        let Some(fps) = max_fps else { return all };
        let rates = &self.frame_rate[spatial][..usize::from(layers)];
        if rates.iter().all(|r| *r == 0) {
            return all;
        }
        let mut cumulative = 0u32;
        for (t, rate) in rates.iter().enumerate() {
            cumulative += u32::from(*rate);
            if cumulative * 10 >= fps * 9 {
                return t as u8;
            }
        }
        all
    }

    /// What `level` costs, in bits per second (0 when not measured).
    pub fn cost(&self, level: Level) -> u64 {
        let spatial = &self.bitrate[level.spatial];
        spatial[..=usize::from(level.temporal).min(MAX_TEMPORAL - 1)]
            .iter()
            .sum()
    }
}

/// The layer index a quality names among `layers` (lowest first).
pub fn layer_for(quality: VideoQuality, layers: usize) -> usize {
    let top = layers.saturating_sub(1);
    match quality {
        VideoQuality::Low => 0,
        VideoQuality::Medium => top.div_ceil(2),
        VideoQuality::High => top,
    }
}

/// The layer to forward when `wanted` is asked for: it if it is live, else
/// the best live one below it, else the lowest live one above it. `None`
/// when no layer is live.
pub fn pick_layer(wanted: usize, last_seen: &[Option<Instant>], now: Instant) -> Option<usize> {
    let live =
        |i: &usize| last_seen[*i].is_some_and(|t| now.saturating_duration_since(t) < LAYER_STALE);
    let wanted = wanted.min(last_seen.len().checked_sub(1)?);
    (0..=wanted)
        .rev()
        .find(live)
        .or_else(|| (wanted + 1..last_seen.len()).find(live))
}

/// One packet of a published stream, as the switch needs to see it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// Its layer (0 without simulcast).
    pub layer: usize,
    pub seq: SeqNo,
    pub timestamp: u32,
    /// `Some(true)` for the first packet of a keyframe; `None` for codecs
    /// whose packets are all decodable on their own (audio).
    pub keyframe: Option<bool>,
    pub vp8: Option<&'a Vp8Descriptor>,
    /// Its temporal layer (VP8 with TIDs; `None` for every other stream).
    pub temporal: Option<Temporal>,
    /// The codec's RTP clock (90 kHz for video).
    pub clock_rate: u32,
}

/// The numbers a forwarded packet carries to the subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    pub seq: SeqNo,
    pub timestamp: u32,
    pub picture_id: Option<u16>,
    pub tl0_pic_idx: Option<u8>,
}

impl Rewritten {
    /// The VP8 descriptor patch that writes the rewritten picture ID and
    /// TL0PICIDX, `None` when they are unchanged (no switch yet) or absent.
    pub fn vp8_patch(&self, descriptor: &Vp8Descriptor) -> Option<Vp8Patch> {
        let pid_changed = self.picture_id.is_some() && self.picture_id != descriptor.picture_id();
        let tl0_changed =
            self.tl0_pic_idx.is_some() && self.tl0_pic_idx != descriptor.tl0_pic_idx();
        if !pid_changed && !tl0_changed {
            return None;
        }
        let mut patch = descriptor.patch();
        if let Some(pid) = self.picture_id.filter(|_| pid_changed) {
            // A 7-bit picture ID wraps at 128: only its low bits are written.
            let short = descriptor.picture_id().is_some_and(|p| p <= 0x7f) && pid > 0x7f;
            patch = patch.picture_id(if short { pid & 0x7f } else { pid });
        }
        if let Some(tl0) = self.tl0_pic_idx.filter(|_| tl0_changed) {
            patch = patch.tl0_pic_idx(tl0);
        }
        patch.build().ok()
    }
}

/// What was last sent to the subscriber: where a switch continues from.
#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u64,
    timestamp: u32,
    at: Instant,
    picture_id: Option<u16>,
    tl0_pic_idx: Option<u8>,
}

/// Packets dropped for their temporal layer, in a run of publisher
/// sequence numbers: a packet that arrives late, from before the run, is
/// numbered as if the run had not been dropped yet.
#[derive(Debug, Clone, Copy)]
struct DroppedRun {
    first: u64,
    last: u64,
    /// Frames (picture IDs) that started in it.
    pictures: u16,
}

/// Dropped runs remembered for late packets; a packet from before the
/// oldest is dropped too (it is far too late to be played).
const MAX_DROPPED_RUNS: usize = 64;

/// One published track as sent to one subscriber: the layer it is on, and
/// the offsets that map that layer's numbers into the subscriber's stream.
#[derive(Debug, Clone)]
pub struct DownStream {
    /// What the subscriber asked for.
    pub request: LayerRequest,
    /// The layer being forwarded; `None` until the first keyframe.
    current: Option<usize>,
    /// The highest temporal layer being forwarded; a higher one starts at
    /// its next layer sync frame (or a keyframe).
    temporal: u8,
    /// The frame (RTP timestamp) packets currently belong to, and whether
    /// it is forwarded: a frame is forwarded whole or not at all.
    frame: Option<(u32, bool)>,
    /// The newest publisher sequence number seen of the current layer.
    newest: u64,
    /// Runs dropped for their temporal layer, oldest first.
    dropped: VecDeque<DroppedRun>,
    /// The publisher sequence number the current layer was switched at:
    /// anything older is from before the subscriber saw this layer.
    switched_at: u64,
    seq_offset: u64,
    timestamp_offset: u32,
    picture_id_offset: u16,
    tl0_offset: u8,
    last: Option<Sent>,
}

/// The first packet a subscriber receives has this sequence number: small
/// with rollover counter 0 (a non-zero ROC needs out-of-band signalling,
/// RFC 3711 3.3.1), whatever the publisher's stream has reached.
const FIRST_SEQ: u64 = 1;
const PICTURE_ID_MASK: u16 = 0x7fff;

impl Default for DownStream {
    fn default() -> Self {
        DownStream::new(LayerRequest::HIGHEST)
    }
}

impl DownStream {
    pub fn new(request: LayerRequest) -> DownStream {
        DownStream {
            request,
            current: None,
            temporal: 0,
            frame: None,
            newest: 0,
            dropped: VecDeque::new(),
            switched_at: 0,
            seq_offset: 0,
            timestamp_offset: 0,
            picture_id_offset: 0,
            tl0_offset: 0,
            last: None,
        }
    }

    /// The layer being forwarded.
    pub fn current(&self) -> Option<usize> {
        self.current
    }

    /// The highest temporal layer being forwarded.
    pub fn temporal(&self) -> u8 {
        self.temporal
    }

    /// Stops forwarding (the downlink cannot carry it); resuming waits for
    /// a keyframe and continues the numbers where they stopped, as a
    /// switch does.
    pub fn pause(&mut self) {
        self.current = None;
    }

    /// Forwards `pkt` (with the numbers to send it with) or drops it.
    /// `target` is the level this subscriber should be on now
    /// ([`LiveLayers::target`]); a spatial switch waits for the layer's
    /// keyframe, and until then the current layer keeps flowing. Temporal
    /// layers are dropped from the next frame on, and added back from the
    /// next frame that can start them (a sync frame).
    pub fn on_packet(&mut self, pkt: Incoming, target: Level, now: Instant) -> Option<Rewritten> {
        let seq = *pkt.seq;
        if self.current != Some(pkt.layer) {
            let switch = pkt.layer == target.spatial && pkt.keyframe != Some(false);
            if !switch {
                return None;
            }
            self.switch_to(pkt, now);
        } else if seq < self.switched_at {
            return None;
        }
        // How far this packet's numbers are behind the stream's offsets:
        // the drops after it (a late packet) were not before it.
        let (mut seq_behind, mut pictures_behind) = (0u64, 0u16);
        if let Some(temporal) = pkt.temporal {
            if seq > self.newest {
                let previous = std::mem::replace(&mut self.newest, seq);
                if !self.admit(pkt, temporal, target.temporal, previous) {
                    return None;
                }
            } else {
                if temporal.id > self.temporal
                    || self
                        .dropped
                        .iter()
                        .any(|r| (r.first..=r.last).contains(&seq))
                {
                    return None;
                }
                for run in self.dropped.iter().rev().take_while(|r| r.first > seq) {
                    seq_behind += run.last - run.first + 1;
                    pictures_behind = pictures_behind.wrapping_add(run.pictures);
                }
            }
        }
        let picture_id = pkt.vp8.and_then(|d| d.picture_id()).map(|p| {
            p.wrapping_add(self.picture_id_offset)
                .wrapping_add(pictures_behind)
                & PICTURE_ID_MASK
        });
        let tl0_pic_idx = pkt
            .vp8
            .and_then(|d| d.tl0_pic_idx())
            .map(|t| t.wrapping_add(self.tl0_offset));
        let out = Rewritten {
            seq: seq
                .wrapping_add(self.seq_offset)
                .wrapping_add(seq_behind)
                .into(),
            timestamp: pkt.timestamp.wrapping_add(self.timestamp_offset),
            picture_id,
            tl0_pic_idx,
        };
        if self.last.is_none_or(|l| *out.seq > l.seq) {
            self.last = Some(Sent {
                seq: *out.seq,
                timestamp: out.timestamp,
                at: now,
                picture_id,
                tl0_pic_idx,
            });
        }
        Some(out)
    }

    /// Whether the newest packet of the current layer, of temporal layer
    /// `temporal`, is forwarded: decided at each frame's first packet for
    /// the whole frame. A dropped packet takes its sequence number (and a
    /// dropped frame its picture ID) out of the subscriber's stream, so
    /// the numbers stay continuous. Packets missing between two dropped
    /// ones (`previous` was the newest before this) are dropped with them.
    fn admit(&mut self, pkt: Incoming, temporal: Temporal, target: u8, previous: u64) -> bool {
        let previous_dropped = self.frame.is_some_and(|(_, forwarded)| !forwarded);
        let new_frame = self.frame.is_none_or(|(t, _)| t != pkt.timestamp);
        if new_frame {
            if pkt.keyframe == Some(true) {
                // A keyframe refers to nothing: every layer starts here.
                self.temporal = target;
            } else if target < self.temporal {
                self.temporal = target;
            } else if temporal.sync && temporal.id == self.temporal + 1 && temporal.id <= target {
                // Refers to the base layer only: this layer starts here
                // (one layer at a time: a higher one refers to this one).
                self.temporal = temporal.id;
            }
            self.frame = Some((pkt.timestamp, temporal.id <= self.temporal));
        }
        let forwarded = self.frame.is_some_and(|(_, f)| f);
        if forwarded {
            return true;
        }
        let seq = *pkt.seq;
        let picture = u16::from(new_frame && pkt.vp8.is_some_and(|d| d.picture_id().is_some()));
        // Not yet arrived (lost, or late) between two dropped packets:
        // dropped with them, so they leave no hole in the numbers.
        let first = if previous_dropped && self.dropped.back().is_some_and(|r| r.last == previous) {
            previous + 1
        } else {
            seq
        };
        self.seq_offset = self.seq_offset.wrapping_sub(seq - first + 1);
        self.picture_id_offset = self.picture_id_offset.wrapping_sub(picture) & PICTURE_ID_MASK;
        match self.dropped.back_mut() {
            Some(run) if run.last + 1 == first => {
                run.last = seq;
                run.pictures = run.pictures.wrapping_add(picture);
            }
            _ => {
                self.dropped.push_back(DroppedRun {
                    first,
                    last: seq,
                    pictures: picture,
                });
                if self.dropped.len() > MAX_DROPPED_RUNS
                    && let Some(oldest) = self.dropped.pop_front()
                {
                    self.switched_at = oldest.last + 1;
                }
            }
        }
        false
    }

    /// Rebases every number so `pkt` continues the stream the subscriber has.
    fn switch_to(&mut self, pkt: Incoming, now: Instant) {
        let seq = *pkt.seq;
        self.current = Some(pkt.layer);
        self.switched_at = seq;
        self.newest = seq.saturating_sub(1);
        self.frame = None;
        self.dropped.clear();
        let Some(last) = self.last else {
            // The first layer: its timestamps and picture IDs go out as they
            // are; only the sequence numbers start small.
            self.seq_offset = FIRST_SEQ.wrapping_sub(seq);
            return;
        };
        self.seq_offset = (last.seq + 1).wrapping_sub(seq);
        // The layers' clocks have unrelated origins: the new one continues
        // from the last timestamp sent, advanced by the wall-clock time since
        // (at least one tick, so the frame is not taken for the previous one).
        let elapsed = now.saturating_duration_since(last.at);
        let ticks = (elapsed.as_micros() * u128::from(pkt.clock_rate) / 1_000_000).max(1);
        let next_timestamp = last.timestamp.wrapping_add(ticks as u32);
        self.timestamp_offset = next_timestamp.wrapping_sub(pkt.timestamp);
        if let (Some(last_pid), Some(pid)) = (last.picture_id, pkt.vp8.and_then(|d| d.picture_id()))
        {
            let next = last_pid.wrapping_add(1) & PICTURE_ID_MASK;
            self.picture_id_offset = next.wrapping_sub(pid) & PICTURE_ID_MASK;
        }
        if let (Some(last_tl0), Some(tl0)) =
            (last.tl0_pic_idx, pkt.vp8.and_then(|d| d.tl0_pic_idx()))
        {
            self.tl0_offset = last_tl0.wrapping_add(1).wrapping_sub(tl0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIDEO_CLOCK: u32 = 90_000;

    /// A VP8 payload: extended descriptor with a 15-bit picture ID, a
    /// TL0PICIDX and a TID byte, then one byte of VP8 header (P=0 for a
    /// keyframe).
    fn vp8(picture_id: u16, tl0: u8, keyframe_start: bool) -> Vec<u8> {
        vp8_temporal(picture_id, tl0, keyframe_start, 0, false)
    }

    fn vp8_temporal(
        picture_id: u16,
        tl0: u8,
        keyframe_start: bool,
        tid: u8,
        sync: bool,
    ) -> Vec<u8> {
        let first = if keyframe_start { 0x90 } else { 0x80 };
        let header = if keyframe_start { 0x00 } else { 0x01 };
        vec![
            first,
            0xe0,
            0x80 | (picture_id >> 8) as u8,
            picture_id as u8,
            tl0,
            (tid << 6) | if sync { 0x20 } else { 0 },
            header,
        ]
    }

    struct Layer {
        index: usize,
        seq: u64,
        timestamp: u32,
        picture_id: u16,
        tl0: u8,
    }

    impl Layer {
        fn new(index: usize, seq: u64, timestamp: u32, picture_id: u16, tl0: u8) -> Layer {
            Layer {
                index,
                seq,
                timestamp,
                picture_id,
                tl0,
            }
        }

        /// The next frame of this layer, one packet long, 30 fps.
        fn frame(&mut self, keyframe: bool) -> (Vec<u8>, u64, u32) {
            self.seq += 1;
            self.timestamp = self.timestamp.wrapping_add(VIDEO_CLOCK / 30);
            self.picture_id = (self.picture_id + 1) & PICTURE_ID_MASK;
            self.tl0 = self.tl0.wrapping_add(1);
            (
                vp8(self.picture_id, self.tl0, keyframe),
                self.seq,
                self.timestamp,
            )
        }

        /// The next frame, of temporal layer `tid`, two packets long.
        fn frame_of(
            &mut self,
            tid: u8,
            sync: bool,
            keyframe: bool,
        ) -> (Vec<Vec<u8>>, Vec<u64>, u32) {
            self.timestamp = self.timestamp.wrapping_add(VIDEO_CLOCK / 30);
            self.picture_id = (self.picture_id + 1) & PICTURE_ID_MASK;
            if tid == 0 {
                self.tl0 = self.tl0.wrapping_add(1);
            }
            let first = vp8_temporal(self.picture_id, self.tl0, keyframe, tid, sync);
            let mut second = vp8_temporal(self.picture_id, self.tl0, false, tid, sync);
            second[0] &= !0x10;
            self.seq += 2;
            (
                vec![first, second],
                vec![self.seq - 1, self.seq],
                self.timestamp,
            )
        }
    }

    fn incoming<'a>(
        layer: &Layer,
        payload: &[u8],
        descriptor: &'a Vp8Descriptor,
        seq: u64,
        timestamp: u32,
    ) -> Incoming<'a> {
        Incoming {
            layer: layer.index,
            seq: seq.into(),
            timestamp,
            keyframe: Some(descriptor.starts_keyframe(payload)),
            vp8: Some(descriptor),
            temporal: super::super::vp8::temporal(payload),
            clock_rate: VIDEO_CLOCK,
        }
    }

    fn send(
        down: &mut DownStream,
        layer: &mut Layer,
        keyframe: bool,
        target: usize,
        now: Instant,
    ) -> Option<Rewritten> {
        let (payload, seq, timestamp) = layer.frame(keyframe);
        let descriptor = Vp8Descriptor::parse(&payload).unwrap();
        let pkt = incoming(layer, &payload, &descriptor, seq, timestamp);
        down.on_packet(pkt, Level::full(target), now)
    }

    /// Sends a two-packet frame of temporal layer `tid` with the target
    /// `temporal`; what came out of each packet.
    fn send_temporal(
        down: &mut DownStream,
        layer: &mut Layer,
        (tid, sync): (u8, bool),
        temporal: u8,
        now: Instant,
    ) -> Vec<Option<Rewritten>> {
        let keyframe = down.current().is_none();
        let (payloads, seqs, timestamp) = layer.frame_of(tid, sync, keyframe);
        let target = Level {
            spatial: layer.index,
            temporal,
        };
        payloads
            .iter()
            .zip(seqs)
            .map(|(payload, seq)| {
                let descriptor = Vp8Descriptor::parse(payload).unwrap();
                let pkt = incoming(layer, payload, &descriptor, seq, timestamp);
                down.on_packet(pkt, target, now)
            })
            .collect()
    }

    /// L1T3 as Chromium sends it: TIDs 0, 2, 1, 2 over and over.
    const L1T3: [u8; 4] = [0, 2, 1, 2];

    #[test]
    fn dropping_temporal_layers_keeps_every_number_continuous() {
        let now = crate::engine::tests::start();
        let mut down = DownStream::default();
        let mut layer = Layer::new(0, 40_000, 0, 1_000, 3);
        let mut out = Vec::new();
        // Two cycles with all three layers, then two with TID 2 dropped,
        // then two with only the base.
        for (cycle, temporal) in [(0, 2), (1, 2), (2, 1), (3, 1), (4, 0), (5, 0)] {
            for (i, tid) in L1T3.into_iter().enumerate() {
                let sync = cycle == 0 && i < 3;
                let sent = send_temporal(&mut down, &mut layer, (tid, sync), temporal, now);
                // A frame is forwarded whole or not at all.
                assert_eq!(
                    sent[0].is_some(),
                    sent[1].is_some(),
                    "cycle {cycle} tid {tid}"
                );
                if tid <= temporal {
                    out.extend(sent.into_iter().flatten());
                } else {
                    assert_eq!(sent, [None, None], "cycle {cycle}: tid {tid} dropped");
                }
            }
        }
        assert_eq!(out.len(), 2 * (8 + 4 + 2));
        assert_eq!(down.temporal(), 0);
        for pair in out.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert_eq!(*b.seq, *a.seq + 1, "sequence numbers continue");
            let (pa, pb) = (a.picture_id.unwrap(), b.picture_id.unwrap());
            // Two packets per frame: the picture ID stays or steps by one.
            assert!(
                pb == pa || pb == pa + 1,
                "picture IDs continue: {pa} then {pb}"
            );
        }
        let pictures = out.last().unwrap().picture_id.unwrap() - out[0].picture_id.unwrap();
        assert_eq!(pictures, 13, "14 frames forwarded, 14 picture IDs");
        // TL0PICIDX counts the base frames, all of which were sent.
        let tl0: Vec<u8> = out.iter().filter_map(|o| o.tl0_pic_idx).collect();
        assert_eq!(tl0.first(), Some(&4));
        assert_eq!(tl0.last(), Some(&9));
    }

    #[test]
    fn a_temporal_layer_starts_again_only_at_its_sync_frame() {
        let now = crate::engine::tests::start();
        let mut down = DownStream::default();
        let mut layer = Layer::new(0, 1, 0, 0, 0);
        // The keyframe starts the stream on the base layer only.
        assert!(send_temporal(&mut down, &mut layer, (0, false), 0, now)[0].is_some());
        // Asked for everything again: frames that refer to layers the
        // subscriber does not have are not a place to start.
        let not_sync = send_temporal(&mut down, &mut layer, (1, false), 2, now);
        assert_eq!(not_sync, [None, None]);
        let top_sync = send_temporal(&mut down, &mut layer, (2, true), 2, now);
        assert_eq!(
            top_sync,
            [None, None],
            "layer 2 refers to layer 1, not started"
        );
        assert_eq!(down.temporal(), 0);
        let sync = send_temporal(&mut down, &mut layer, (1, true), 2, now);
        assert!(sync[0].is_some() && sync[1].is_some());
        assert_eq!(down.temporal(), 1);
        assert_eq!(
            send_temporal(&mut down, &mut layer, (2, false), 2, now),
            [None, None]
        );
        assert!(send_temporal(&mut down, &mut layer, (2, true), 2, now)[0].is_some());
        assert_eq!(down.temporal(), 2);
        assert!(send_temporal(&mut down, &mut layer, (2, false), 2, now)[0].is_some());
    }

    #[test]
    fn a_late_packet_is_numbered_as_before_the_drops_after_it() {
        let now = crate::engine::tests::start();
        let mut down = DownStream::default();
        let mut layer = Layer::new(0, 100, 0, 50, 0);
        let key = Level::full(0);
        let base = Level {
            spatial: 0,
            temporal: 0,
        };
        let packet =
            |layer: &Layer, payload: &[u8], seq, timestamp, down: &mut DownStream, target| {
                let descriptor = Vp8Descriptor::parse(payload).unwrap();
                down.on_packet(
                    incoming(layer, payload, &descriptor, seq, timestamp),
                    target,
                    now,
                )
            };
        let (a, a_seq, a_ts) = layer.frame_of(0, false, true);
        let first = packet(&layer, &a[0], a_seq[0], a_ts, &mut down, key).unwrap();
        // a's second packet is late; a TID 2 frame is dropped meanwhile.
        let (b, b_seq, b_ts) = layer.frame_of(2, false, false);
        for (payload, seq) in b.iter().zip(&b_seq) {
            assert_eq!(packet(&layer, payload, *seq, b_ts, &mut down, base), None);
        }
        let (c, c_seq, c_ts) = layer.frame_of(0, false, false);
        let c0 = packet(&layer, &c[0], c_seq[0], c_ts, &mut down, base).unwrap();
        assert_eq!(*c0.seq, *first.seq + 2, "one slot left for the late packet");
        assert_eq!(c0.picture_id, Some(first.picture_id.unwrap() + 1));
        let late = packet(&layer, &a[1], a_seq[1], a_ts, &mut down, base).unwrap();
        assert_eq!(*late.seq, *first.seq + 1);
        assert_eq!(late.picture_id, first.picture_id);
        // A retransmission of the dropped frame stays dropped.
        assert_eq!(packet(&layer, &b[1], b_seq[1], b_ts, &mut down, base), None);
        let c1 = packet(&layer, &c[1], c_seq[1], c_ts, &mut down, base).unwrap();
        assert_eq!(*c1.seq, *c0.seq + 1);
    }

    #[test]
    fn a_packet_lost_inside_a_dropped_frame_leaves_no_hole() {
        let now = crate::engine::tests::start();
        let mut down = DownStream::default();
        let mut layer = Layer::new(0, 1, 0, 0, 0);
        let base = Level {
            spatial: 0,
            temporal: 0,
        };
        let sent = send_temporal(&mut down, &mut layer, (0, false), 0, now);
        let last = sent[1].unwrap();
        // A three-packet TID 2 frame whose middle packet never arrives.
        let (mut b, mut b_seq, b_ts) = layer.frame_of(2, false, false);
        let mut third = b[1].clone();
        third[0] &= !0x10;
        b.push(third);
        layer.seq += 1;
        b_seq.push(layer.seq);
        for i in [0, 2] {
            let descriptor = Vp8Descriptor::parse(&b[i]).unwrap();
            let pkt = incoming(&layer, &b[i], &descriptor, b_seq[i], b_ts);
            assert_eq!(down.on_packet(pkt, base, now), None);
        }
        let next = send_temporal(&mut down, &mut layer, (0, false), 0, now);
        assert_eq!(*next[0].unwrap().seq, *last.seq + 1);
        // When it does arrive, it is dropped with its frame.
        let descriptor = Vp8Descriptor::parse(&b[1]).unwrap();
        let pkt = incoming(&layer, &b[1], &descriptor, b_seq[1], b_ts);
        assert_eq!(down.on_packet(pkt, base, now), None);
    }

    #[test]
    fn a_lower_target_mid_frame_waits_for_the_next_frame() {
        let now = crate::engine::tests::start();
        let mut down = DownStream::default();
        let mut layer = Layer::new(0, 1, 0, 0, 0);
        send_temporal(&mut down, &mut layer, (0, false), 2, now);
        let (payloads, seqs, timestamp) = layer.frame_of(2, false, false);
        let mut target = Level::full(0);
        let mut sent = Vec::new();
        for (payload, seq) in payloads.iter().zip(seqs) {
            let descriptor = Vp8Descriptor::parse(payload).unwrap();
            let pkt = incoming(&layer, payload, &descriptor, seq, timestamp);
            sent.push(down.on_packet(pkt, target, now));
            target.temporal = 0;
        }
        assert!(sent.iter().all(Option::is_some), "the frame is not cut");
        assert_eq!(
            send_temporal(&mut down, &mut layer, (2, false), 0, now),
            [None, None]
        );
    }

    #[test]
    fn qualities_name_layers_lowest_first() {
        assert_eq!(layer_for(VideoQuality::Low, 3), 0);
        assert_eq!(layer_for(VideoQuality::Medium, 3), 1);
        assert_eq!(layer_for(VideoQuality::High, 3), 2);
        assert_eq!(layer_for(VideoQuality::Medium, 2), 1);
        assert_eq!(layer_for(VideoQuality::Low, 1), 0);
        assert_eq!(layer_for(VideoQuality::High, 1), 0);
    }

    #[test]
    fn a_size_names_the_smallest_layer_that_covers_it() {
        let now = crate::engine::tests::start();
        let mut layers = LiveLayers {
            count: 3,
            seen: [Some(now); MAX_LAYERS],
            size: [Some((320, 180)), Some((640, 360)), Some((1280, 720))],
            ..LiveLayers::default()
        };
        let size = |width, height| LayerChoice::Size { width, height };
        assert_eq!(layers.wanted_layer(size(300, 170)), 0);
        assert_eq!(layers.wanted_layer(size(320, 181)), 1, "both ways");
        assert_eq!(layers.wanted_layer(size(640, 360)), 1);
        assert_eq!(
            layers.wanted_layer(size(1920, 1080)),
            2,
            "none covers: the top"
        );
        // Only the top's keyframe seen yet: the others are taken as halves.
        layers.size = [None, None, Some((1280, 720))];
        assert_eq!(layers.wanted_layer(size(600, 300)), 1);
        assert_eq!(layers.wanted_layer(size(200, 100)), 0);
        // Nothing known (H.264): the top.
        layers.size = [None; MAX_LAYERS];
        assert_eq!(layers.wanted_layer(size(200, 100)), 2);
    }

    #[test]
    fn a_frame_rate_names_the_fewest_temporal_layers_that_give_it() {
        let now = crate::engine::tests::start();
        let mut layers = LiveLayers {
            count: 1,
            seen: [Some(now); MAX_LAYERS],
            temporal_layers: [3, 0, 0],
            ..LiveLayers::default()
        };
        let asking = |max_fps| LayerRequest {
            choice: LayerChoice::Quality(VideoQuality::High),
            max_fps,
        };
        let temporal =
            |layers: &LiveLayers, fps| layers.target(asking(fps), None, now).unwrap().temporal;
        // Not measured yet: everything.
        assert_eq!(temporal(&layers, Some(5)), 2);
        layers.frame_rate[0] = [8, 7, 15];
        assert_eq!(temporal(&layers, Some(5)), 0);
        assert_eq!(temporal(&layers, Some(8)), 0);
        assert_eq!(temporal(&layers, Some(15)), 1);
        assert_eq!(temporal(&layers, Some(30)), 2);
        assert_eq!(temporal(&layers, None), 2);
        // The downlink's cap lowers it further, on the layer it names.
        let cap = Level {
            spatial: 0,
            temporal: 0,
        };
        assert_eq!(
            layers
                .target(asking(None), Some(cap), now)
                .unwrap()
                .temporal,
            0
        );
    }

    #[test]
    fn under_a_cap_no_higher_layer_stands_in_for_a_silent_one() {
        let now = crate::engine::tests::start();
        let stale = now - LAYER_STALE;
        let layers = LiveLayers {
            count: 3,
            seen: [Some(stale), Some(stale), Some(now)],
            ..LiveLayers::default()
        };
        let high = LayerRequest::HIGHEST;
        let low_cap = Some(Level::full(0));
        // Without a cap the live top layer stands in; with one, the
        // subscriber waits on its layer.
        assert_eq!(layers.target(high, None, now).unwrap().spatial, 2);
        assert_eq!(layers.target(high, low_cap, now).unwrap().spatial, 0);
        let medium_cap = Some(Level::full(1));
        assert_eq!(layers.target(high, medium_cap, now).unwrap().spatial, 1);
    }

    #[test]
    fn a_silent_layer_is_replaced_by_the_nearest_live_one() {
        let now = crate::engine::tests::start();
        let stale = now - LAYER_STALE;
        let live = Some(now);
        assert_eq!(pick_layer(2, &[live, live, live], now), Some(2));
        assert_eq!(pick_layer(2, &[live, live, Some(stale)], now), Some(1));
        assert_eq!(pick_layer(2, &[live, None, None], now), Some(0));
        // Nothing at or below: the lowest above.
        assert_eq!(pick_layer(0, &[None, live, live], now), Some(1));
        assert_eq!(pick_layer(1, &[None, None], now), None);
        assert_eq!(pick_layer(5, &[live], now), Some(0));
        assert_eq!(pick_layer(0, &[], now), None);
    }

    #[test]
    fn the_first_layer_waits_for_a_keyframe_and_starts_at_one() {
        let start = crate::engine::tests::start();
        let mut down = DownStream::default();
        let mut low = Layer::new(0, 70_000, 1_000, 500, 9);
        assert_eq!(send(&mut down, &mut low, false, 0, start), None);
        let first = send(&mut down, &mut low, true, 0, start).unwrap();
        assert_eq!(*first.seq, 1);
        // Timestamps and picture IDs go out as the publisher sent them.
        assert_eq!(first.timestamp, low.timestamp);
        assert_eq!(first.picture_id, Some(low.picture_id));
        assert_eq!(first.tl0_pic_idx, Some(low.tl0));
        let next = send(&mut down, &mut low, false, 0, start).unwrap();
        assert_eq!(*next.seq, 2);
    }

    #[test]
    fn gaps_stay_gaps_and_older_packets_are_dropped() {
        let now = crate::engine::tests::start();
        let mut down = DownStream::default();
        let incoming = |seq: u64, keyframe| Incoming {
            layer: 0,
            seq: seq.into(),
            timestamp: 0,
            keyframe,
            vp8: None,
            temporal: None,
            clock_rate: 48_000,
        };
        let audio = Level::full(0);
        // Audio: no keyframe to wait for.
        assert_eq!(
            *down.on_packet(incoming(500, None), audio, now).unwrap().seq,
            1
        );
        assert_eq!(
            *down.on_packet(incoming(505, None), audio, now).unwrap().seq,
            6
        );
        assert_eq!(down.on_packet(incoming(499, None), audio, now), None);
    }

    #[test]
    fn switching_layers_at_a_keyframe_keeps_every_number_continuous() {
        let start = crate::engine::tests::start();
        let mut down = DownStream::new(LayerRequest {
            choice: LayerChoice::Quality(VideoQuality::Low),
            max_fps: None,
        });
        let mut low = Layer::new(0, 10_000, 50_000, 100, 7);
        let mut high = Layer::new(2, 60_000, 3_000_000, 20_000, 200);
        send(&mut down, &mut low, true, 0, start).unwrap();
        let mut last = None;
        for i in 1..10 {
            let t = start + Duration::from_millis(33 * i);
            last = send(&mut down, &mut low, false, 0, t);
            // The high layer is not forwarded while low is the target.
            assert_eq!(send(&mut down, &mut high, i == 5, 0, t), None);
        }
        let last = last.unwrap();

        // Now the target is high: its interframes are not a place to switch,
        // and low keeps flowing meanwhile.
        let t = start + Duration::from_millis(330);
        assert_eq!(send(&mut down, &mut high, false, 2, t), None);
        let still_low = send(&mut down, &mut low, false, 2, t).unwrap();
        assert_eq!(*still_low.seq, *last.seq + 1);
        assert_eq!(down.current(), Some(0));

        let t = start + Duration::from_millis(363);
        let switched = send(&mut down, &mut high, true, 2, t).unwrap();
        assert_eq!(down.current(), Some(2));
        assert_eq!(*switched.seq, *still_low.seq + 1);
        // 33 ms at 90 kHz after the last low packet.
        assert_eq!(switched.timestamp, still_low.timestamp.wrapping_add(2_970));
        assert_eq!(switched.picture_id, Some(still_low.picture_id.unwrap() + 1));
        assert_eq!(
            switched.tl0_pic_idx,
            Some(still_low.tl0_pic_idx.unwrap() + 1)
        );

        // The old layer is dropped now, the new one continues by one.
        assert_eq!(send(&mut down, &mut low, false, 2, t), None);
        let next = send(
            &mut down,
            &mut high,
            false,
            2,
            t + Duration::from_millis(33),
        )
        .unwrap();
        assert_eq!(*next.seq, *switched.seq + 1);
        assert_eq!(next.timestamp, switched.timestamp + VIDEO_CLOCK / 30);
        assert_eq!(next.picture_id, Some(switched.picture_id.unwrap() + 1));
    }

    #[test]
    fn picture_ids_wrap_at_fifteen_bits_across_a_switch() {
        let start = crate::engine::tests::start();
        let mut down = DownStream::default();
        let mut low = Layer::new(0, 1, 0, PICTURE_ID_MASK - 1, 255);
        let mut high = Layer::new(1, 1, 0, 3, 0);
        send(&mut down, &mut low, true, 0, start).unwrap();
        let at_max = send(&mut down, &mut high, true, 1, start).unwrap();
        assert_eq!(at_max.picture_id, Some(0), "0x7fff + 1 wraps to 0");
        assert_eq!(at_max.tl0_pic_idx, Some(1), "255 + 1 wraps to 0, then +1");
    }

    #[test]
    fn the_patch_rewrites_the_descriptor_bytes() {
        let payload = vp8(300, 4, true);
        let descriptor = Vp8Descriptor::parse(&payload).unwrap();
        let same = Rewritten {
            seq: 1.into(),
            timestamp: 0,
            picture_id: Some(300),
            tl0_pic_idx: Some(4),
        };
        assert!(same.vp8_patch(&descriptor).is_none(), "nothing to rewrite");
        let moved = Rewritten {
            picture_id: Some(301),
            tl0_pic_idx: Some(5),
            ..same
        };
        assert!(moved.vp8_patch(&descriptor).is_some());
    }
}
