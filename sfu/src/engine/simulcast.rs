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

use std::time::{Duration, Instant};

use signaling::VideoQuality;
use str0m::rtp::{SeqNo, Vp8Descriptor, Vp8Patch};

/// A layer that sent nothing for this long is not offered to subscribers:
/// the publisher turned it off (CPU or bandwidth adaptation, or dynacast),
/// and a subscriber waiting for it would wait with a frozen picture.
pub const LAYER_STALE: Duration = Duration::from_secs(1);

/// Layers per track: Chromium sends at most three (and RFC 8853 names no
/// more for one camera); packets of further RIDs are not forwarded.
pub const MAX_LAYERS: usize = 3;

/// When each of a track's layers last sent a packet, and at what rate: a
/// copy small enough to hand to every subscriber's [`DownStream`] while the
/// track is borrowed.
#[derive(Debug, Default, Clone, Copy)]
pub struct LiveLayers {
    pub count: usize,
    pub seen: [Option<Instant>; MAX_LAYERS],
    /// Bits per second over the last [`RATE_WINDOW`] (0 until measured).
    pub bitrate: [u64; MAX_LAYERS],
}

/// A layer's bitrate is measured over windows this long.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);

impl LiveLayers {
    /// The layer a subscriber wanting `quality` should be on now, at most
    /// `cap` (what its downlink carries; `None`: no limit).
    pub fn target(&self, quality: VideoQuality, cap: Option<usize>, now: Instant) -> Option<usize> {
        let seen = &self.seen[..self.count];
        let wanted = layer_for(quality, seen.len());
        pick_layer(cap.map_or(wanted, |c| c.min(wanted)), seen, now)
    }

    /// Whether layer `i` sent a packet within [`LAYER_STALE`].
    pub fn is_live(&self, i: usize, now: Instant) -> bool {
        i < self.count
            && self.seen[i].is_some_and(|t| now.saturating_duration_since(t) < LAYER_STALE)
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

/// One published track as sent to one subscriber: the layer it is on, and
/// the offsets that map that layer's numbers into the subscriber's stream.
#[derive(Debug, Clone)]
pub struct DownStream {
    /// The quality the subscriber asked for.
    pub wanted: VideoQuality,
    /// The layer being forwarded; `None` until the first keyframe.
    current: Option<usize>,
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
        DownStream::new(VideoQuality::High)
    }
}

impl DownStream {
    pub fn new(wanted: VideoQuality) -> DownStream {
        DownStream {
            wanted,
            current: None,
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

    /// Stops forwarding (the downlink cannot carry it); resuming waits for
    /// a keyframe and continues the numbers where they stopped, as a
    /// switch does.
    pub fn pause(&mut self) {
        self.current = None;
    }

    /// Forwards `pkt` (with the numbers to send it with) or drops it.
    /// `target` is the layer this subscriber should be on now
    /// ([`pick_layer`]); the switch to it waits for its keyframe, and until
    /// then the current layer keeps flowing.
    pub fn on_packet(&mut self, pkt: Incoming, target: usize, now: Instant) -> Option<Rewritten> {
        let seq = *pkt.seq;
        if self.current != Some(pkt.layer) {
            let switch = pkt.layer == target && pkt.keyframe != Some(false);
            if !switch {
                return None;
            }
            self.switch_to(pkt, now);
        } else if seq < self.switched_at {
            return None;
        }
        let picture_id = pkt
            .vp8
            .and_then(|d| d.picture_id())
            .map(|p| p.wrapping_add(self.picture_id_offset) & PICTURE_ID_MASK);
        let tl0_pic_idx = pkt
            .vp8
            .and_then(|d| d.tl0_pic_idx())
            .map(|t| t.wrapping_add(self.tl0_offset));
        let out = Rewritten {
            seq: seq.wrapping_add(self.seq_offset).into(),
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

    /// Rebases every number so `pkt` continues the stream the subscriber has.
    fn switch_to(&mut self, pkt: Incoming, now: Instant) {
        let seq = *pkt.seq;
        self.current = Some(pkt.layer);
        self.switched_at = seq;
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
        let first = if keyframe_start { 0x90 } else { 0x80 };
        let header = if keyframe_start { 0x00 } else { 0x01 };
        vec![
            first,
            0xe0,
            0x80 | (picture_id >> 8) as u8,
            picture_id as u8,
            tl0,
            0x00,
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
        let keyframe = Some(descriptor.starts_keyframe(&payload));
        down.on_packet(
            Incoming {
                layer: layer.index,
                seq: seq.into(),
                timestamp,
                keyframe,
                vp8: Some(&descriptor),
                clock_rate: VIDEO_CLOCK,
            },
            target,
            now,
        )
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
            clock_rate: 48_000,
        };
        // Audio: no keyframe to wait for.
        assert_eq!(*down.on_packet(incoming(500, None), 0, now).unwrap().seq, 1);
        assert_eq!(*down.on_packet(incoming(505, None), 0, now).unwrap().seq, 6);
        assert_eq!(down.on_packet(incoming(499, None), 0, now), None);
    }

    #[test]
    fn switching_layers_at_a_keyframe_keeps_every_number_continuous() {
        let start = crate::engine::tests::start();
        let mut down = DownStream::new(VideoQuality::Low);
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
