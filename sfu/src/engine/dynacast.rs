//! Dynacast: a video layer nobody receives is not worth encoding or
//! sending. After every change to who receives what, each video track's
//! publisher is told the qualities its subscribers want (`qualityUpdate`,
//! only when that changed), and its client turns the other encodings off
//! (`RTCRtpSender.setParameters`, `encodings[i].active`): an empty list
//! pauses the track. A re-enabled encoding starts with a keyframe, so a
//! subscriber that asks for a layer that was off gets it within one.
//! Meanwhile [`super::simulcast::pick_layer`] forwards the nearest layer
//! that is on.

use signaling::LayerChoice;

use super::simulcast::{Level, LiveLayers, layer_for};
use super::*;

/// The quality a subscription is served at: what was asked for, lowered to
/// what its downlink carries (`downlink.rs`); a paused one waits on the
/// lowest layer, which must stay on for it to resume.
fn received_quality(down: &DownTrack, layers: &LiveLayers) -> VideoQuality {
    served_quality(down.stream.request.choice, down.cap, down.paused, layers)
}

fn served_quality(
    choice: LayerChoice,
    cap: Option<Level>,
    paused: bool,
    layers: &LiveLayers,
) -> VideoQuality {
    if paused {
        return VideoQuality::Low;
    }
    let highest_within = |layer: usize| {
        [VideoQuality::High, VideoQuality::Medium, VideoQuality::Low]
            .into_iter()
            .find(|q| layer_for(*q, layers.count) <= layer)
            .unwrap_or(VideoQuality::Low)
    };
    // A quality as asked (the layers may not be known yet); a size as the
    // quality of the layer it needs (all of them while none is known).
    let wanted = match choice {
        LayerChoice::Quality(quality) => quality,
        LayerChoice::Size { .. } => highest_within(layers.wanted_layer(choice)),
    };
    let Some(cap) = cap else {
        return wanted;
    };
    highest_within(cap.spatial).min(wanted)
}

impl Engine {
    /// Members or subscriptions of a room changed: the 1:1 fast path is
    /// recomputed, publishers are told what is wanted of their video, and
    /// those whose pair ended that it no longer caps them.
    pub(super) fn subscriptions_changed(&mut self, room_id: &str) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        room.refresh_routes(self.config.fast_path, self.now);
        for track in room.tracks.values_mut() {
            if track.kind != TrackKind::Video {
                continue;
            }
            let mut wanted: Vec<VideoQuality> = track
                .subscribers
                .iter()
                .filter_map(|s| self.participants.get(s))
                // The live one: a stopping m-line of an earlier
                // subscription to the same track may come first.
                .filter_map(|s| {
                    s.down.iter().find(|d| {
                        d.track_key == track.key
                            && matches!(
                                d.state,
                                DownState::ToOpen | DownState::Negotiating(_) | DownState::Open(_)
                            )
                    })
                })
                .map(|d| received_quality(d, &track.layers.last_seen))
                .collect();
            wanted.sort();
            wanted.dedup();
            if track.told_qualities.as_ref() == Some(&wanted) {
                continue;
            }
            // Not recorded as told while the publisher has no socket: its
            // resume says it again.
            let Some(conn) = self.participants.get(&track.owner).and_then(|p| p.conn) else {
                continue;
            };
            tracing::debug!(call_id = %room_id, track = %track.id, ?wanted, "dynacast: qualities wanted");
            let paused = |q: &Option<Vec<VideoQuality>>| q.as_ref().is_some_and(Vec::is_empty);
            if paused(&track.told_qualities) != wanted.is_empty() {
                // Paused or resumed: that pause is no gap in its stream.
                track.last_packet_at = None;
            }
            track.told_qualities = Some(wanted.clone());
            let message = ServerMessage::QualityUpdate {
                track_id: track.id.clone(),
                mid: track.mid.to_string(),
                qualities: wanted,
            };
            self.outputs
                .push_back(Output::Event(Event::Message { conn, message }));
        }
        // Tracks that just left the fast path owe their publishers a lift.
        self.lift_remb_caps(room_id, self.now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOW: LayerChoice = LayerChoice::Quality(VideoQuality::Low);

    #[test]
    fn a_quality_is_wanted_as_asked_before_any_layer_arrived() {
        let none_yet = LiveLayers::default();
        assert_eq!(
            served_quality(LOW, None, false, &none_yet),
            VideoQuality::Low
        );
        let size = LayerChoice::Size {
            width: 320,
            height: 180,
        };
        assert_eq!(
            served_quality(size, None, false, &none_yet),
            VideoQuality::High,
            "a size names no layer yet: all stay on"
        );
    }

    #[test]
    fn a_size_wants_the_layer_that_covers_it_and_a_cap_lowers_it() {
        let layers = LiveLayers {
            count: 3,
            size: [Some((240, 135)), Some((480, 270)), Some((960, 540))],
            ..LiveLayers::default()
        };
        let size = LayerChoice::Size {
            width: 400,
            height: 200,
        };
        assert_eq!(
            served_quality(size, None, false, &layers),
            VideoQuality::Medium
        );
        let high = LayerChoice::Quality(VideoQuality::High);
        let capped = Some(Level::full(0));
        assert_eq!(
            served_quality(high, capped, false, &layers),
            VideoQuality::Low
        );
        assert_eq!(
            served_quality(high, None, true, &layers),
            VideoQuality::Low,
            "paused"
        );
    }
}
