//! Downlink allocation: with `downlink_estimation`, each subscriber
//! connection runs str0m's transport-wide congestion control (estimator,
//! pacer, probes), and the estimate decides how high a layer of each video
//! track the subscriber gets, below what it asked for.
//!
//! Audio comes first: every audio track is budgeted before any video. Then
//! each video track gets its lowest layer while the budget lasts (a track
//! that does not fit is paused and the subscriber told `streamStateChanged`
//! `paused`, rather than left frozen), then tracks move up a step at a
//! time towards what their subscriber asked for. A track's steps are a
//! ladder of levels ([`Ladder`]): each spatial layer with one, two, then
//! all three temporal layers, so that going down a track first loses
//! frames of the picture it has (no keyframe, the size stays) and only
//! then moves to a smaller picture, while going up a bigger picture is
//! taken at its full frame rate. Moving up needs [`UP_HEADROOM`] over the
//! step's cost, so an estimate at the edge does not flap between two.
//!
//! The estimate only grows past what is sent when the sender probes: str0m
//! is told the rate the current layers need (`minimum`, kept up with
//! padding) and the rate of every asked-for layer (`desired`, probed for).
//! A layer switch itself waits for the layer's keyframe (`simulcast.rs`).

use signaling::{LayerRequest, StreamState, TrackKind};

use super::simulcast::{Level, LiveLayers, MAX_LAYERS, MAX_TEMPORAL};
use super::*;

/// Of the estimate, this much is spent: the rest absorbs its error, RTCP
/// and retransmissions.
const USABLE_SHARE: u64 = 90;
/// Budgeted per audio track before any video (Opus with FEC, and headers).
const AUDIO_BITRATE: u64 = 48_000;
/// A layer not measured yet (just started, or turned off by dynacast) is
/// budgeted at Chromium's rates for its place among three.
const NOMINAL_BITRATE: [u64; MAX_LAYERS] = [150_000, 500_000, 1_500_000];
/// Moving up a layer needs this much more (percent) than its cost.
const UP_HEADROOM: u64 = 115;
/// After a subscriber's video was lowered, nothing of it moves up (or
/// resumes) for this long: an estimate swinging around a layer's cost
/// must not switch layers, each switch a keyframe, every second.
const UP_COOLDOWN: Duration = Duration::from_secs(4);
/// The estimate str0m starts from, before feedback arrives.
pub const INITIAL_ESTIMATE: Bitrate = Bitrate::kbps(1_000);

/// Levels per track: every temporal layer of every spatial layer.
const MAX_RUNGS: usize = MAX_LAYERS * MAX_TEMPORAL;

/// One video track as the allocation sees it: a ladder of levels,
/// cheapest first ([`Ladder`]), and where on it the track is and wants to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// The highest rung wanted: the quality (and frame rate) asked for,
    /// among the layers the track has.
    pub wanted: usize,
    /// What each rung up to `wanted` costs, in bits per second.
    pub costs: [u64; MAX_RUNGS],
    /// Where a move up from each rung lands: the next one, except into a
    /// spatial layer the track is not on, where it is that layer's top. A
    /// bigger picture is taken at its full frame rate; fewer frames are
    /// the first step down of the picture being sent, not a way up.
    pub up: [usize; MAX_RUNGS],
    /// The rung it was allocated last time (`None`: paused, or new).
    pub current: Option<usize>,
    /// It may not get more than `current` now (a cool-down after lowering).
    pub hold: bool,
}

/// Per demand, the highest rung `budget` carries (`None`: paused).
pub fn allocate(budget: u64, demands: &[Demand]) -> Vec<Option<usize>> {
    let mut levels: Vec<Option<usize>> = vec![None; demands.len()];
    let mut used = 0u64;
    // Everyone's lowest layer first, in subscription order.
    for (level, d) in levels.iter_mut().zip(demands) {
        let cost = d.costs[0];
        if d.hold && d.current.is_none() {
            continue;
        }
        if used + cost <= budget {
            *level = Some(0);
            used += cost;
        }
    }
    // Then one move up at a time, round robin, while it fits.
    loop {
        let mut moved = false;
        for (level, d) in levels.iter_mut().zip(demands) {
            let Some(at) = *level else { continue };
            if at >= d.wanted {
                continue;
            }
            let next = d.up[at].clamp(at + 1, d.wanted);
            if d.hold && d.current.is_none_or(|c| next > c) {
                continue;
            }
            let extra = d.costs[next].saturating_sub(d.costs[at]);
            let holding = d.current.is_some_and(|c| c >= next);
            let needed = if holding {
                extra
            } else {
                extra * UP_HEADROOM / 100
            };
            if used + needed <= budget {
                *level = Some(next);
                used += extra;
                moved = true;
            }
        }
        if !moved {
            return levels;
        }
    }
}

/// Of a layer's bitrate, the share its temporal layers up to each carry
/// when not measured yet: libwebrtc's VP8 allocation for one, two and
/// three temporal layers (percent, cumulative).
const TEMPORAL_SHARE: [[u64; MAX_TEMPORAL]; MAX_TEMPORAL] =
    [[100, 100, 100], [60, 100, 100], [40, 60, 100]];

/// A track's levels up to the one wanted, cheapest first: each spatial
/// layer one temporal layer at a time, so lowering first drops frames of
/// the picture being sent (no keyframe needed, the size stays) and only
/// then moves to a smaller picture.
#[derive(Debug, Clone, Copy)]
struct Ladder {
    levels: [Level; MAX_RUNGS],
    costs: [u64; MAX_RUNGS],
    len: usize,
}

impl Ladder {
    fn new(layers: &LiveLayers, request: LayerRequest) -> Ladder {
        let mut ladder = Ladder {
            levels: [Level::full(0); MAX_RUNGS],
            costs: [0; MAX_RUNGS],
            len: 0,
        };
        let count = layers.count.min(MAX_LAYERS);
        let wanted = layers
            .wanted_layer(request.choice)
            .min(count.saturating_sub(1));
        for spatial in 0..=wanted {
            let temporal_layers = layers.temporal_layers[spatial].clamp(1, MAX_TEMPORAL as u8);
            let asked = layers.temporal_for(spatial, request.max_fps);
            let top = asked.min(temporal_layers - 1);
            let measured = layers.cost(Level::full(spatial)) > 0;
            for temporal in 0..=top {
                let level = Level { spatial, temporal };
                let mut cost = if measured {
                    layers.cost(level)
                } else {
                    let share =
                        TEMPORAL_SHARE[usize::from(temporal_layers) - 1][usize::from(temporal)];
                    unmeasured_cost(layers, spatial) * share / 100
                };
                if ladder.len > 0 {
                    // Never cheaper than the rung below.
                    cost = cost.max(ladder.costs[ladder.len - 1]);
                }
                // The top of what was asked is asked as such: temporal
                // layers the publisher adds later are not held back.
                ladder.levels[ladder.len] = if temporal == top {
                    Level {
                        temporal: asked,
                        ..level
                    }
                } else {
                    level
                };
                ladder.costs[ladder.len] = cost;
                ladder.len += 1;
            }
        }
        ladder
    }

    /// The highest rung at or below `level` (`None` below the first).
    fn rung_of(&self, level: Level) -> Option<usize> {
        self.levels[..self.len].iter().rposition(|l| *l <= level)
    }

    /// [`Demand::up`] for a track on spatial layer `on` (`None`: on none).
    fn up_moves(&self, on: Option<usize>) -> [usize; MAX_RUNGS] {
        let mut up = [0; MAX_RUNGS];
        for (i, slot) in up.iter_mut().enumerate().take(self.len) {
            *slot = i + 1;
            let Some(next) = self.levels.get(i + 1).filter(|_| i + 1 < self.len) else {
                continue;
            };
            if next.spatial != self.levels[i].spatial && Some(next.spatial) != on {
                let top = self.levels[..self.len]
                    .iter()
                    .rposition(|l| l.spatial == next.spatial);
                *slot = top.unwrap_or(i + 1);
            }
        }
        up
    }
}

/// What a layer not measured yet (just started, or turned off by dynacast)
/// costs: Chromium's rate for its place among three, but no more than a
/// measured layer above it (a flat picture is cheap at any size).
fn unmeasured_cost(layers: &LiveLayers, spatial: usize) -> u64 {
    let count = layers.count.min(MAX_LAYERS);
    let nominal = NOMINAL_BITRATE[spatial + MAX_LAYERS - count];
    (spatial + 1..count)
        .map(|above| layers.cost(Level::full(above)))
        .find(|b| *b > 0)
        .map_or(nominal, |above| above.min(nominal))
}

impl Engine {
    /// A subscriber connection's new estimate (TWCC, with
    /// `downlink_estimation`): its video is allocated anew, and in a 1:1
    /// call the estimate goes on to the publisher as REMB, as the
    /// browser's own would without the estimator.
    pub(super) fn on_downlink_estimate(
        &mut self,
        key: ParticipantKey,
        estimate: Bitrate,
        now: Instant,
    ) {
        if let Some(p) = self.participants.get_mut(&key) {
            p.downlink = Some(estimate);
        }
        self.allocate_downlink(key, now);
        self.feed_back_estimate(key, estimate);
    }

    /// Decides each of a subscriber's video tracks' layer cap from its
    /// estimate, tells it which tracks paused or resumed, and tells str0m
    /// what to keep sending and what to probe for. Nothing without an
    /// estimate (`downlink_estimation` off, or none yet).
    pub(super) fn allocate_downlink(&mut self, key: ParticipantKey, now: Instant) {
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        let Some(estimate) = p.downlink else {
            return;
        };
        let Some(room) = self.rooms.get(&p.room) else {
            return;
        };
        let cooling = p
            .downlink_lowered_at
            .is_some_and(|at| now.saturating_duration_since(at) < UP_COOLDOWN);
        let mut audio = 0u64;
        // (index into p.down, demand, its ladder)
        let mut video = Vec::new();
        for (i, d) in p.down.iter().enumerate() {
            if matches!(d.state, DownState::ToStop(_) | DownState::Stopping(_)) {
                continue;
            }
            let Some(track) = room.tracks.get(&d.track_key) else {
                continue;
            };
            match d.kind {
                TrackKind::Audio => audio += AUDIO_BITRATE,
                TrackKind::Video => {
                    let layers = track.layers.last_seen;
                    // Not sending (muted, paused by dynacast, not started):
                    // nothing to budget.
                    if track.muted || !(0..layers.count).any(|l| layers.is_live(l, now)) {
                        continue;
                    }
                    let ladder = Ladder::new(&layers, d.stream.request);
                    if ladder.len == 0 {
                        continue;
                    }
                    let on = d.cap.filter(|_| !d.paused);
                    let demand = Demand {
                        wanted: ladder.len - 1,
                        costs: ladder.costs,
                        up: ladder.up_moves(on.map(|c| c.spatial)),
                        current: on.and_then(|c| ladder.rung_of(c)),
                        hold: cooling && (d.paused || d.cap.is_some()),
                    };
                    video.push((i, demand, ladder));
                }
            }
        }
        let budget = (estimate.as_u64() * USABLE_SHARE / 100).saturating_sub(audio);
        let demands: Vec<Demand> = video.iter().map(|(_, d, _)| *d).collect();
        let levels = allocate(budget, &demands);
        let sent: u64 = levels
            .iter()
            .zip(&demands)
            .filter_map(|(l, d)| l.map(|l| d.costs[l]))
            .sum();
        let wanted: u64 = demands.iter().map(|d| d.costs[d.wanted]).sum();
        // The smallest step up a track is waiting for: padding keeps the
        // rate there, so the estimate can show whether it fits (not while
        // cooling down: nothing could move up on what it shows).
        let next_step = levels
            .iter()
            .zip(&demands)
            .filter_map(|(l, d)| match l {
                Some(l) if *l < d.wanted => {
                    let next = d.up[*l].clamp(l + 1, d.wanted);
                    Some(d.costs[next].saturating_sub(d.costs[*l]))
                }
                None => Some(d.costs[0]),
                _ => None,
            })
            .min()
            .filter(|_| !cooling)
            .unwrap_or(0);

        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let mut told = Vec::new();
        let mut recapped = false;
        for ((i, demand, ladder), rung) in video.iter().zip(levels) {
            let down = &mut p.down[*i];
            let paused = rung.is_none();
            let level = rung.map(|r| ladder.levels[r]);
            recapped |= down.cap != level;
            let lowered = match (demand.current, rung) {
                (Some(was), Some(is)) => is < was,
                (Some(_), None) => true,
                _ => false,
            };
            if lowered {
                p.downlink_lowered_at = Some(now);
            }
            down.cap = level;
            if paused != down.paused {
                down.paused = paused;
                if paused {
                    down.stream.pause();
                }
                let state = if paused {
                    StreamState::Paused
                } else {
                    StreamState::Active
                };
                told.push((down.track_id.clone(), down.track_key, state));
            }
        }
        let minimum = Bitrate::bps(audio + sent + next_step);
        let desired = Bitrate::bps(audio + wanted);
        let _ = p
            .subscriber
            .guard(|rtc| rtc.bwe().set_bitrate(minimum, desired));
        self.dirty.push((key, PeerTarget::Subscriber));
        let conn = p.conn;
        let room_id = p.room.clone();
        for (track_id, _, state) in &told {
            tracing::debug!(participant = %p.id, user_id = %p.user_id, call_id = %p.room, track = %track_id, ?state, estimate = estimate.as_u64(), "video stream state changed for the downlink");
        }
        for (track_id, track_key, state) in told {
            if let Some(conn) = conn {
                self.send(conn, ServerMessage::StreamStateChanged { track_id, state });
            }
            if state == StreamState::Active {
                let layer = self.subscriber_layer(key, track_key, now);
                self.request_keyframe(key, track_key, layer, KeyframeRequestKind::Pli, now);
            }
        }
        if recapped {
            // Publishers encode only the layers someone receives (dynacast).
            self.subscriptions_changed(&room_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three layers without temporal layers: one rung each.
    const LAYERS: [u64; MAX_RUNGS] = [150_000, 500_000, 1_200_000, 0, 0, 0, 0, 0, 0];

    fn asking(wanted: usize, current: Option<usize>) -> Demand {
        Demand {
            wanted,
            costs: LAYERS,
            up: std::array::from_fn(|i| i + 1),
            current,
            hold: false,
        }
    }

    fn l1t3_simulcast(measured: bool) -> LiveLayers {
        let now = crate::engine::tests::start();
        let mut layers = LiveLayers {
            count: 3,
            seen: [Some(now); MAX_LAYERS],
            temporal_layers: [3; MAX_LAYERS],
            ..LiveLayers::default()
        };
        if measured {
            // Per temporal layer: 40 / 20 / 40 % of 100, 400, 1200 kbit/s.
            for (l, total) in [100_000u64, 400_000, 1_200_000].into_iter().enumerate() {
                layers.bitrate[l] = [total * 4 / 10, total * 2 / 10, total * 4 / 10];
                layers.frame_rate[l] = [8, 7, 15];
            }
        }
        layers
    }

    #[test]
    fn the_ladder_drops_frames_before_it_drops_size() {
        let request = LayerRequest::HIGHEST;
        let ladder = Ladder::new(&l1t3_simulcast(true), request);
        assert_eq!(ladder.len, 9);
        let (levels, costs) = (&ladder.levels, &ladder.costs);
        // From the top down: the high layer at 2, then 1, then 0 temporal
        // layers, and only then the medium layer.
        assert_eq!(levels[8], Level::full(2));
        assert_eq!(
            levels[7],
            Level {
                spatial: 2,
                temporal: 1
            }
        );
        assert_eq!(
            levels[6],
            Level {
                spatial: 2,
                temporal: 0
            }
        );
        assert_eq!(levels[5], Level::full(1));
        assert_eq!(costs[8], 1_200_000);
        assert_eq!(costs[7], 720_000);
        // The high layer's base (480) costs more than all of medium (400).
        assert_eq!(costs[6], 480_000);
        assert_eq!(costs[5], 400_000);
        assert!(costs[..9].is_sorted());
        // On the high layer, 700 kbit/s keeps its 7.5 fps base, 730 its
        // 15 fps, rather than the medium layer's 30.
        let on_high = Demand {
            wanted: 8,
            costs: ladder.costs,
            up: ladder.up_moves(Some(2)),
            current: Some(8),
            hold: false,
        };
        assert_eq!(allocate(700_000, &[on_high]), vec![Some(6)]);
        assert_eq!(allocate(730_000, &[on_high]), vec![Some(7)]);
        assert_eq!(
            allocate(470_000, &[on_high]),
            vec![Some(5)],
            "then down a size"
        );
        assert_eq!(
            ladder.rung_of(Level {
                spatial: 2,
                temporal: 1
            }),
            Some(7)
        );
        // Coming from the low layer, a bigger picture is taken whole or
        // not at all: 300 kbit/s keeps the low layer at 30 fps, though the
        // medium layer's base would fit.
        let on_low = Demand {
            up: ladder.up_moves(Some(0)),
            current: Some(2),
            ..on_high
        };
        assert_eq!(allocate(300_000, &[on_low]), vec![Some(2)]);
        assert_eq!(allocate(1_000_000, &[on_low]), vec![Some(5)]);
        assert_eq!(allocate(1_500_000, &[on_low]), vec![Some(8)]);
    }

    #[test]
    fn unmeasured_temporal_layers_cost_libwebrtcs_shares_and_fps_limits_the_ladder() {
        let ladder = Ladder::new(&l1t3_simulcast(false), LayerRequest::HIGHEST);
        assert_eq!(ladder.len, 9);
        assert_eq!(ladder.costs[6], 600_000, "40 % of the nominal 1.5 Mbit/s");
        assert_eq!(ladder.costs[8], 1_500_000);
        // At most 8 fps: the base layer of each (7.5 fps measured).
        let slow = LayerRequest {
            max_fps: Some(8),
            ..LayerRequest::HIGHEST
        };
        let ladder = Ladder::new(&l1t3_simulcast(true), slow);
        assert_eq!(ladder.len, 3);
        assert_eq!(
            ladder.levels[2],
            Level {
                spatial: 2,
                temporal: 0
            }
        );
        assert_eq!(ladder.costs[2], 480_000);
    }

    #[test]
    fn each_track_gets_its_lowest_layer_before_any_gets_more() {
        let two_high = [asking(2, None), asking(2, None)];
        assert_eq!(allocate(300_000, &two_high), vec![Some(0), Some(0)]);
        // 150 + 150, then 500 - 150 = 350 (402.5 with headroom) for one more.
        assert_eq!(allocate(702_000, &two_high), vec![Some(0), Some(0)]);
        assert_eq!(allocate(703_000, &two_high), vec![Some(1), Some(0)]);
        assert_eq!(allocate(10_000_000, &two_high), vec![Some(2), Some(2)]);
    }

    #[test]
    fn what_does_not_fit_is_paused_and_nobody_gets_more_than_asked() {
        assert_eq!(allocate(100_000, &[asking(2, Some(0))]), vec![None]);
        assert_eq!(
            allocate(200_000, &[asking(2, None), asking(0, None)]),
            vec![Some(0), None]
        );
        assert_eq!(allocate(10_000_000, &[asking(1, None)]), vec![Some(1)]);
    }

    #[test]
    fn moving_up_needs_headroom_and_staying_does_not() {
        // The medium layer costs 500 kbit/s in all: 550 holds it but does
        // not reach it from below (150 + 350 * 1.15 = 552.5).
        assert_eq!(allocate(550_000, &[asking(2, Some(1))]), vec![Some(1)]);
        assert_eq!(allocate(550_000, &[asking(2, Some(0))]), vec![Some(0)]);
        assert_eq!(allocate(553_000, &[asking(2, Some(0))]), vec![Some(1)]);
    }

    #[test]
    fn while_cooling_down_nothing_moves_up_or_resumes_but_may_go_down() {
        let held = |current| Demand {
            hold: true,
            ..asking(2, current)
        };
        assert_eq!(allocate(10_000_000, &[held(Some(0))]), vec![Some(0)]);
        assert_eq!(allocate(10_000_000, &[held(None)]), vec![None]);
        assert_eq!(allocate(200_000, &[held(Some(1))]), vec![Some(0)]);
    }
}
