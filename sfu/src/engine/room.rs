//! Rooms and their published tracks.

use std::time::{Duration, Instant};

use signaling::{TrackKind, VideoQuality};
use str0m::media::Mid;
use str0m::media::Rid;

use super::ParticipantKey;
use super::simulcast::{LAYER_STALE, LiveLayers, MAX_LAYERS, MAX_TEMPORAL, RATE_WINDOW};
use super::speakers::ActiveSpeakers;

/// A published track, owned by one participant's publisher connection.
pub struct Track {
    pub key: u64,
    pub id: String,
    pub owner: ParticipantKey,
    /// The m-line on the owner's publisher connection.
    pub mid: Mid,
    pub kind: TrackKind,
    pub muted: bool,
    pub codec: Option<String>,
    /// Participants that receive it, in the order they subscribed.
    pub subscribers: Vec<ParticipantKey>,
    /// Its simulcast layers (one, without a RID, when it has none).
    pub layers: Layers,
    /// Per layer: keyframes are asked of each layer at most once per
    /// interval.
    pub last_keyframe_request: Vec<Option<Instant>>,
    /// The qualities its publisher was last told subscribers want
    /// (dynacast); `None` before the first word, which means all.
    pub told_qualities: Option<Vec<VideoQuality>>,
    /// When its latest packet reached the engine (gaps are measured from it).
    pub last_packet_at: Option<Instant>,
    /// A keyframe was wanted before the publisher's stream existed (a
    /// subscriber added between its publish and its first packet): asked
    /// for with the first packet.
    pub keyframe_pending: bool,
    /// 1:1 fast path: set when the room has exactly two members and the other
    /// one subscribes, so a packet goes straight to it without walking
    /// `subscribers`. Kept current by [`Room::refresh_routes`].
    pub direct: Option<ParticipantKey>,
    /// The 1:1 that relayed its receiver's REMB to this track's publisher
    /// ended: what is still owed to the publisher of "no limit" (see
    /// [`RembLift`]).
    pub remb_lift: Option<RembLift>,
}

/// How often a publisher whose 1:1 ended is told it has no receiver limit
/// any more, [`REMB_LIFT_INTERVAL`] apart: RTCP can be lost, and one lost
/// lift would leave the cap for the rest of the call.
pub const REMB_LIFTS: u8 = 3;
pub const REMB_LIFT_INTERVAL: Duration = Duration::from_secs(1);

/// Lifts of a relayed REMB cap still to send: libwebrtc keeps the latest
/// REMB as an upper bound on its send rate until another arrives
/// (`SendSideBandwidthEstimation::UpdateReceiverEstimate`), so a 1:1 that
/// became a group would otherwise leave the publisher at the estimate of
/// the one receiver it had, under every later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RembLift {
    pub due: Instant,
    pub left: u8,
}

/// A track's layers as the engine has seen them, lowest first.
#[derive(Debug, Default)]
pub struct Layers {
    pub rids: Vec<Option<Rid>>,
    /// When each layer's latest packet arrived, and its rates.
    pub last_seen: LiveLayers,
    /// Per layer: what its current rate window counted.
    window: [Window; MAX_LAYERS],
}

/// One layer's counts since its rate window started.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    started: Option<Instant>,
    /// Per temporal layer: payload bytes, and frames begun.
    bytes: [u64; MAX_TEMPORAL],
    frames: [u32; MAX_TEMPORAL],
    /// The highest temporal layer seen in the window.
    top_temporal: u8,
    /// The RTP timestamp of the latest frame (a new one begins a frame).
    last_timestamp: Option<u32>,
}

/// What one packet tells the rate measurement of its layer.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub bytes: usize,
    pub timestamp: u32,
    /// Its temporal layer (`None`: the stream has none).
    pub temporal: Option<u8>,
    /// The size its keyframe announces (VP8 keyframes' first packets).
    pub size: Option<(u16, u16)>,
}

impl Layers {
    /// The index of the layer a packet with `rid` belongs to, noting that it
    /// arrived. Layers are learnt as they first arrive, placed in the order
    /// the publisher's SDP lists (`listed`, read only for an unknown RID);
    /// `None` past [`MAX_LAYERS`].
    pub fn observe(
        &mut self,
        rid: Option<Rid>,
        listed: impl FnOnce() -> Vec<Rid>,
        sample: Sample,
        now: Instant,
    ) -> Option<usize> {
        let index = match self.rids.iter().position(|r| *r == rid) {
            Some(i) => i,
            // A packet without a RID on a track with RIDs names no layer.
            None if rid.is_none() && self.rids.iter().any(Option::is_some) => return None,
            None => {
                if let Some(rid) = rid {
                    // The SDP order decides, so a top layer arriving first
                    // does not become "low".
                    let listed = listed();
                    if self.rids.is_empty() && listed.contains(&rid) {
                        self.rids = listed.into_iter().take(MAX_LAYERS).map(Some).collect();
                    }
                }
                match self.rids.iter().position(|r| *r == rid) {
                    Some(i) => i,
                    None if self.rids.len() < MAX_LAYERS => {
                        self.rids.push(rid);
                        self.rids.len() - 1
                    }
                    None => return None,
                }
            }
        };
        self.last_seen.count = self.rids.len();
        if sample.size.is_some() {
            self.last_seen.size[index] = sample.size;
        }
        self.count(index, sample, now);
        self.last_seen.seen[index] = Some(now);
        Some(index)
    }

    /// Adds a packet to its layer's window; a full window becomes the
    /// layer's rates (half the new measure, half the last: one keyframe
    /// does not make a layer look twice its size) and its count of
    /// temporal layers.
    fn count(&mut self, index: usize, sample: Sample, now: Instant) {
        let window = &mut self.window[index];
        let live = &mut self.last_seen;
        // A layer that was off (dynacast) starts a new window: a measure
        // across the gap would make it look cheap.
        let resumed =
            live.seen[index].is_some_and(|seen| now.saturating_duration_since(seen) >= LAYER_STALE);
        if resumed {
            *window = Window::default();
        }
        let start = *window.started.get_or_insert(now);
        let temporal = sample.temporal.unwrap_or(0);
        let t = usize::from(temporal).min(MAX_TEMPORAL - 1);
        window.top_temporal = window.top_temporal.max(t as u8);
        live.temporal_layers[index] = live.temporal_layers[index].max(t as u8 + 1);
        window.bytes[t] += sample.bytes as u64;
        if window.last_timestamp != Some(sample.timestamp) {
            window.last_timestamp = Some(sample.timestamp);
            window.frames[t] += 1;
        }
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            let micros = elapsed.as_micros().max(1) as u64;
            let smooth = |old: u64, new: u64| if old == 0 { new } else { (old + new) / 2 };
            for t in 0..MAX_TEMPORAL {
                let bits = window.bytes[t] * 8 * 1_000_000 / micros;
                live.bitrate[index][t] = smooth(live.bitrate[index][t], bits);
                let fps = u64::from(window.frames[t]) * 1_000_000 / micros;
                let old = u64::from(live.frame_rate[index][t]);
                live.frame_rate[index][t] = smooth(old, fps).min(u64::from(u16::MAX)) as u16;
            }
            // A layer the publisher stopped sending counts no more.
            live.temporal_layers[index] = window.top_temporal + 1;
            *window = Window {
                started: Some(now),
                last_timestamp: window.last_timestamp,
                ..Window::default()
            };
        }
    }

    pub fn rid(&self, layer: usize) -> Option<Rid> {
        self.rids.get(layer).copied().flatten()
    }
}

pub struct Room {
    pub members: Vec<ParticipantKey>,
    pub tracks: super::FastMap<u64, Track>,
    pub speakers: ActiveSpeakers,
}

impl Room {
    pub fn new() -> Room {
        Room {
            members: Vec::new(),
            tracks: Default::default(),
            speakers: ActiveSpeakers::default(),
        }
    }

    /// Recomputes every track's fast-path target after members or
    /// subscriptions changed (the engine's `subscriptions_changed` also
    /// tells publishers what is wanted of their video). Switching path never touches a subscriber's
    /// stream state, so 2 -> 3 -> 2 members does not freeze the pair.
    /// A video track that leaves the fast path owes its publisher REMB
    /// lifts from `now` on; one that (re)joins it owes none: its new
    /// receiver's estimates are relayed instead.
    pub fn refresh_routes(&mut self, fast_path: bool, now: Instant) {
        let pair = fast_path && self.members.len() == 2;
        let members = self.members.clone();
        for track in self.tracks.values_mut() {
            let was = track.direct;
            track.direct = if pair {
                members
                    .iter()
                    .copied()
                    .find(|m| *m != track.owner && track.subscribers.contains(m))
            } else {
                None
            };
            if track.direct.is_some() {
                track.remb_lift = None;
            } else if was.is_some() && track.kind == TrackKind::Video {
                track.remb_lift = Some(RembLift {
                    due: now,
                    left: REMB_LIFTS,
                });
            }
        }
    }

    /// The other member when the room is a 1:1 call.
    pub fn peer_of(&self, member: ParticipantKey) -> Option<ParticipantKey> {
        if self.members.len() != 2 {
            return None;
        }
        self.members.iter().copied().find(|m| *m != member)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn plain() -> Sample {
        Sample {
            bytes: 100,
            timestamp: 0,
            temporal: None,
            size: None,
        }
    }

    #[test]
    fn temporal_layers_are_measured_each_on_its_own() {
        let start = crate::engine::tests::start();
        let mut layers = Layers::default();
        // L1T3 at 30 fps for two seconds: TIDs 0, 2, 1, 2; two 500-byte
        // packets per base frame, one of 250 otherwise.
        for frame in 0..60u32 {
            let tid = [0, 2, 1, 2][frame as usize % 4];
            let at = start + Duration::from_micros(u64::from(frame) * 33_333);
            let packets = if tid == 0 { 2 } else { 1 };
            for _ in 0..packets {
                let sample = Sample {
                    bytes: if tid == 0 { 500 } else { 250 },
                    timestamp: frame * 3_000,
                    temporal: Some(tid),
                    size: (frame == 0).then_some((320, 180)),
                };
                layers.observe(None, Vec::new, sample, at);
            }
        }
        let live = layers.last_seen;
        assert_eq!(live.temporal_layers[0], 3);
        assert_eq!(live.size[0], Some((320, 180)));
        // 7.5 base frames a second (the window's count, within one frame).
        let fps = live.frame_rate[0];
        assert!(
            (7..=8).contains(&fps[0]) && (7..=8).contains(&fps[1]),
            "{fps:?}"
        );
        assert!((14..=16).contains(&fps[2]), "{fps:?}");
        // Base: 7.5 x 1000 bytes = 60 kbit/s; TID 1: 15; TID 2: 30.
        let rate = live.bitrate[0];
        assert!(rate[0].abs_diff(60_000) < 9_000, "{rate:?}");
        assert!(rate[1].abs_diff(15_000) < 3_000, "{rate:?}");
        assert!(rate[2].abs_diff(30_000) < 5_000, "{rate:?}");
    }

    #[test]
    fn layers_follow_the_sdp_order_whatever_arrives_first() {
        let now = crate::engine::tests::start();
        let (q, h, f) = (Rid::from("q"), Rid::from("h"), Rid::from("f"));
        let listed = || vec![q, h, f];
        let mut layers = Layers::default();
        assert_eq!(layers.observe(Some(f), listed, plain(), now), Some(2));
        assert_eq!(layers.observe(Some(q), listed, plain(), now), Some(0));
        assert_eq!(layers.last_seen.count, 3);
        // No RID on a simulcast track, or a fourth RID: no layer.
        assert_eq!(layers.observe(None, listed, plain(), now), None);
        assert_eq!(
            layers.observe(Some(Rid::from("x")), listed, plain(), now),
            None
        );
        assert_eq!(layers.rid(1), Some(h));
    }

    #[test]
    fn a_track_without_simulcast_is_one_layer() {
        let now = crate::engine::tests::start();
        let mut layers = Layers::default();
        assert_eq!(layers.observe(None, Vec::new, plain(), now), Some(0));
        assert_eq!(layers.observe(None, Vec::new, plain(), now), Some(0));
        assert_eq!(layers.last_seen.count, 1);
        assert_eq!(layers.rid(0), None);
    }
}
