//! Rooms and their published tracks.

use std::collections::HashMap;
use std::time::Instant;

use signaling::{TrackKind, VideoQuality};
use str0m::media::Mid;
use str0m::media::Rid;

use super::ParticipantKey;
use super::simulcast::{LAYER_STALE, LiveLayers, MAX_LAYERS, RATE_WINDOW};
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
}

/// A track's layers as the engine has seen them, lowest first.
#[derive(Debug, Default)]
pub struct Layers {
    pub rids: Vec<Option<Rid>>,
    /// When each layer's latest packet arrived, and its bitrate.
    pub last_seen: LiveLayers,
    /// Per layer: payload bytes since the current rate window started.
    window: [(u64, Option<Instant>); MAX_LAYERS],
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
        bytes: usize,
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
        self.count_bytes(index, bytes, now);
        self.last_seen.seen[index] = Some(now);
        Some(index)
    }

    /// Adds a packet's bytes to its layer's window; a full window becomes
    /// the layer's bitrate (half the new measure, half the last: one
    /// keyframe does not make a layer look twice its size).
    fn count_bytes(&mut self, index: usize, bytes: usize, now: Instant) {
        let (counted, started) = &mut self.window[index];
        // A layer that was off (dynacast) starts a new window: a measure
        // across the gap would make it look cheap.
        let resumed = self.last_seen.seen[index]
            .is_some_and(|seen| now.saturating_duration_since(seen) >= LAYER_STALE);
        if resumed {
            (*counted, *started) = (0, None);
        }
        let start = *started.get_or_insert(now);
        *counted += bytes as u64;
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            let measured = *counted * 8 * 1_000_000 / elapsed.as_micros().max(1) as u64;
            let rate = &mut self.last_seen.bitrate[index];
            *rate = if *rate == 0 {
                measured
            } else {
                (*rate + measured) / 2
            };
            *counted = 0;
            *started = Some(now);
        }
    }

    pub fn rid(&self, layer: usize) -> Option<Rid> {
        self.rids.get(layer).copied().flatten()
    }
}

pub struct Room {
    pub members: Vec<ParticipantKey>,
    pub tracks: HashMap<u64, Track>,
    pub speakers: ActiveSpeakers,
}

impl Room {
    pub fn new() -> Room {
        Room {
            members: Vec::new(),
            tracks: HashMap::new(),
            speakers: ActiveSpeakers::default(),
        }
    }

    /// Recomputes every track's fast-path target after members or
    /// subscriptions changed (the engine's `subscriptions_changed` also
    /// tells publishers what is wanted of their video). Switching path never touches a subscriber's
    /// stream state, so 2 -> 3 -> 2 members does not freeze the pair.
    pub fn refresh_routes(&mut self, fast_path: bool) {
        let pair = fast_path && self.members.len() == 2;
        let members = self.members.clone();
        for track in self.tracks.values_mut() {
            track.direct = if pair {
                members
                    .iter()
                    .copied()
                    .find(|m| *m != track.owner && track.subscribers.contains(m))
            } else {
                None
            };
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
    use super::*;

    #[test]
    fn layers_follow_the_sdp_order_whatever_arrives_first() {
        let now = crate::engine::tests::start();
        let (q, h, f) = (Rid::from("q"), Rid::from("h"), Rid::from("f"));
        let listed = || vec![q, h, f];
        let mut layers = Layers::default();
        assert_eq!(layers.observe(Some(f), listed, 100, now), Some(2));
        assert_eq!(layers.observe(Some(q), listed, 100, now), Some(0));
        assert_eq!(layers.last_seen.count, 3);
        // No RID on a simulcast track, or a fourth RID: no layer.
        assert_eq!(layers.observe(None, listed, 100, now), None);
        assert_eq!(layers.observe(Some(Rid::from("x")), listed, 100, now), None);
        assert_eq!(layers.rid(1), Some(h));
    }

    #[test]
    fn a_track_without_simulcast_is_one_layer() {
        let now = crate::engine::tests::start();
        let mut layers = Layers::default();
        assert_eq!(layers.observe(None, Vec::new, 100, now), Some(0));
        assert_eq!(layers.observe(None, Vec::new, 100, now), Some(0));
        assert_eq!(layers.last_seen.count, 1);
        assert_eq!(layers.rid(0), None);
    }
}
