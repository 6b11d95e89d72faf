//! Active speakers: who in a room is talking, loudest first, from the
//! audio level each publisher's client writes into its RTP (RFC 6464,
//! `ssrc-audio-level`). Nothing is decoded.
//!
//! Each participant's level is an exponential moving average of the
//! packets' linear amplitude (time constant [`SMOOTHING`]), decayed by the
//! time since its last packet, so someone who stops sending fades out.
//! A participant above [`SPEAKING`] is speaking. The room is looked at no
//! more than every [`EVALUATE_EVERY`], and a new ordering goes out no more
//! than every [`MIN_INTERVAL`] (the 300 ms), only when it changed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::ParticipantKey;

/// How fast a level follows the packets.
pub const SMOOTHING: Duration = Duration::from_millis(300);
/// Below this linear amplitude (-50 dBov) a participant is silent.
pub const SPEAKING: f32 = 0.003_16;
/// At most one look at the room this often (each costs a sort).
pub const EVALUATE_EVERY: Duration = Duration::from_millis(100);
/// At most one `speakersChanged` this often per room.
pub const MIN_INTERVAL: Duration = Duration::from_millis(300);
/// The loudest this many are named: a tile layout highlights a few.
pub const MAX_LISTED: usize = 8;

struct Level {
    participant_id: String,
    amplitude: f32,
    at: Instant,
}

/// One room's speakers.
#[derive(Default)]
pub struct ActiveSpeakers {
    levels: HashMap<ParticipantKey, Level>,
    last_evaluated: Option<Instant>,
    last_sent: Option<Instant>,
    /// The ordering last sent (participant ids, loudest first).
    sent: Vec<String>,
}

/// A `speakersChanged` to send: participant ids with their level (0-1).
pub type Speakers = Vec<(String, f32)>;

impl ActiveSpeakers {
    /// An audio packet from `key` with its RFC 6464 level: `dbov` is the
    /// attenuation below the loudest (0 loudest, 127 silence), as str0m
    /// reads it (negative). Returns the new ordering when it is time to
    /// send one.
    pub fn observe(
        &mut self,
        key: ParticipantKey,
        participant_id: &str,
        dbov: i8,
        now: Instant,
    ) -> Option<Speakers> {
        let amplitude = 10f32.powf(-f32::from(dbov.unsigned_abs()) / 20.0);
        // A first packet starts the average at its own level.
        let level = self.levels.entry(key).or_insert_with(|| Level {
            participant_id: participant_id.to_string(),
            amplitude,
            at: now,
        });
        let weight = smoothing_weight(now.saturating_duration_since(level.at));
        level.amplitude += (amplitude - level.amplitude) * weight;
        level.at = now;
        self.evaluate(now)
    }

    /// `key` left the room: gone from the ordering at the next look.
    pub fn remove(&mut self, key: ParticipantKey) {
        self.levels.remove(&key);
    }

    /// The ordering now, if a look is due and it changed since the last
    /// one sent (and that was long enough ago).
    pub fn evaluate(&mut self, now: Instant) -> Option<Speakers> {
        if self
            .last_evaluated
            .is_some_and(|at| now.saturating_duration_since(at) < EVALUATE_EVERY)
        {
            return None;
        }
        if self
            .last_sent
            .is_some_and(|at| now.saturating_duration_since(at) < MIN_INTERVAL)
        {
            return None;
        }
        self.last_evaluated = Some(now);
        let mut speaking: Vec<(String, f32)> = self
            .levels
            .values()
            .map(|l| {
                // Faded by the silence since its last packet.
                let idle = now.saturating_duration_since(l.at);
                let faded = l.amplitude * (1.0 - smoothing_weight(idle));
                (l.participant_id.clone(), faded)
            })
            .filter(|(_, level)| *level >= SPEAKING)
            .collect();
        speaking.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        speaking.truncate(MAX_LISTED);
        let order: Vec<&String> = speaking.iter().map(|(id, _)| id).collect();
        if order.iter().copied().eq(self.sent.iter()) {
            return None;
        }
        self.sent = speaking.iter().map(|(id, _)| id.clone()).collect();
        self.last_sent = Some(now);
        // Three decimals: a level is for display, and the quietest speaker
        // (-50 dBov, 0.003) still reads above 0.
        Some(
            speaking
                .into_iter()
                .map(|(id, level)| (id, (level * 1000.0).round() / 1000.0))
                .collect(),
        )
    }
}

/// How much of the way to a new value an average moves after `elapsed`.
fn smoothing_weight(elapsed: Duration) -> f32 {
    1.0 - (-elapsed.as_secs_f32() / SMOOTHING.as_secs_f32()).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TONE: i8 = -20;
    const SILENCE: i8 = -127;

    /// 20 ms audio packets from each of `who` for `for_ms`, from `start`;
    /// every ordering sent, with when.
    fn talk(
        speakers: &mut ActiveSpeakers,
        start: Instant,
        for_ms: u64,
        who: &[(u64, &str, i8)],
    ) -> Vec<(u64, Vec<String>)> {
        let mut sent = Vec::new();
        for ms in (0..for_ms).step_by(20) {
            for (key, id, dbov) in who {
                let at = start + Duration::from_millis(ms);
                if let Some(order) = speakers.observe(ParticipantKey(*key), id, *dbov, at) {
                    sent.push((ms, order.into_iter().map(|(id, _)| id).collect()));
                }
            }
        }
        sent
    }

    #[test]
    fn the_one_speaking_is_listed_within_a_few_hundred_ms_and_silence_is_not() {
        let mut speakers = ActiveSpeakers::default();
        let t0 = crate::engine::tests::start();
        let sent = talk(
            &mut speakers,
            t0,
            2_000,
            &[
                (1, "PA_ann", TONE),
                (2, "PA_ben", SILENCE),
                (3, "PA_cat", SILENCE),
            ],
        );
        assert_eq!(sent.len(), 1, "{sent:?}");
        let (at, order) = &sent[0];
        assert!(*at <= 300, "listed after {at} ms");
        assert_eq!(order, &["PA_ann"]);
    }

    #[test]
    fn switching_speakers_switches_the_order_at_most_every_300_ms() {
        let mut speakers = ActiveSpeakers::default();
        let t0 = crate::engine::tests::start();
        talk(
            &mut speakers,
            t0,
            1_000,
            &[(1, "PA_ann", TONE), (2, "PA_ben", SILENCE)],
        );
        let sent = talk(
            &mut speakers,
            t0 + Duration::from_millis(1_000),
            2_000,
            &[(1, "PA_ann", SILENCE), (2, "PA_ben", TONE)],
        );
        let orders: Vec<&Vec<String>> = sent.iter().map(|(_, o)| o).collect();
        assert_eq!(orders.last().unwrap().as_slice(), ["PA_ben"], "{sent:?}");
        // Both, ben louder, on the way: never two sends within 300 ms.
        for pair in sent.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= 300, "{sent:?}");
        }
        let (switched, _) = sent
            .iter()
            .find(|(_, o)| o.first().map(String::as_str) == Some("PA_ben"))
            .unwrap();
        assert!(*switched <= 1_000, "ben first after {switched} ms");
    }

    #[test]
    fn louder_first_and_a_leaver_or_a_quiet_sender_drops_out() {
        let mut speakers = ActiveSpeakers::default();
        let t0 = crate::engine::tests::start();
        let sent = talk(
            &mut speakers,
            t0,
            1_000,
            &[(1, "PA_ann", -30), (2, "PA_ben", -10)],
        );
        assert_eq!(sent.last().unwrap().1, ["PA_ben", "PA_ann"]);
        speakers.remove(ParticipantKey(2));
        // Ann stops sending altogether: she fades out of the list.
        let later = t0 + Duration::from_millis(1_400);
        assert_eq!(
            speakers.evaluate(later).map(|o| o.len()),
            Some(1),
            "ben gone, ann still fading"
        );
        let much_later = t0 + Duration::from_secs(5);
        assert_eq!(speakers.evaluate(much_later), Some(Vec::new()));
        assert_eq!(speakers.evaluate(much_later + MIN_INTERVAL), None);
    }

    #[test]
    fn levels_are_between_0_and_1_with_three_decimals() {
        let mut speakers = ActiveSpeakers::default();
        let t0 = crate::engine::tests::start();
        let mut last = None;
        for ms in (0..2_000).step_by(20) {
            let at = t0 + Duration::from_millis(ms);
            last = speakers
                .observe(ParticipantKey(1), "PA_ann", 0, at)
                .or(last);
        }
        let level = last.unwrap()[0].1;
        assert!((0.0..=1.0).contains(&level) && level > 0.5, "{level}");
        assert_eq!((level * 1000.0).round() / 1000.0, level);
        // The quietest speaker is listed above 0.
        let mut quiet = ActiveSpeakers::default();
        let order = quiet.observe(ParticipantKey(2), "PA_ben", -49, t0).unwrap();
        assert!(order[0].1 > 0.0, "{order:?}");
    }
}
