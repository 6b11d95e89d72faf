//! Call-control metrics, registered into the server's Prometheus registry.
//! Observed from a call's state before and after each successful write, so
//! every transition is counted exactly once, whichever request made it.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

use crate::call::machine::{Participant, Ring};
use crate::call::{Call, CallState, EndReason, RingState};

pub struct CallMetrics {
    pub created: IntCounterVec,
    pub ended: IntCounterVec,
    pub ring_to_answer: Histogram,
    pub ring_to_ui_shown: Histogram,
    pub duration: Histogram,
    /// Device registrations refused because another user's other device
    /// holds the push token (409 `push_token_in_use`).
    pub push_token_conflicts: IntCounter,
    /// What devices report (`POST /v1/calls/{id}/reports`).
    pub reports: crate::reports::ReportMetrics,
    /// The rollout stage's measures by cohort of one designated flag.
    pub rollout: RolloutMetrics,
}

/// How each callee's part in a call ended, for the rollout's answer rate
/// (answered / all) and connect success (connected / answered).
pub const ROLLOUT_OUTCOMES: [&str; 3] = ["connected", "answered_not_connected", "not_answered"];

/// The measures that decide whether a rollout stage goes on (answer rate,
/// connect success, time to first audio, push to call UI), split by
/// whether one designated flag (`rollout_metrics_flag`) is on for the
/// user on the device: its cohort, `on` or `off`. One flag at a time: a
/// label per flag would double the series for each.
pub struct RolloutMetrics {
    flag: Option<String>,
    /// `{flag, cohort, outcome}`: each callee, once, when the call ends.
    pub callee_outcomes: IntCounterVec,
    /// `{flag, cohort}`: device-reported first audio after accept.
    pub time_to_first_audio: HistogramVec,
    /// `{flag, cohort}`: a ring sent to the device acknowledging it.
    pub ring_to_ui_shown: HistogramVec,
}

impl RolloutMetrics {
    fn register(registry: &Registry) -> prometheus::Result<RolloutMetrics> {
        let callee_outcomes = IntCounterVec::new(
            Opts::new(
                "switchboard_rollout_callee_outcomes_total",
                "Each callee's part in an ended call (connected, answered_not_connected, not_answered), by the designated rollout flag's cohort",
            ),
            &["flag", "cohort", "outcome"],
        )?;
        registry.register(Box::new(callee_outcomes.clone()))?;
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets),
                &["flag", "cohort"],
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        Ok(RolloutMetrics {
            flag: None,
            callee_outcomes,
            time_to_first_audio: histogram(
                "switchboard_rollout_time_to_first_audio_seconds",
                "Device-reported time to first audio, by the designated rollout flag's cohort",
                vec![0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0],
            )?,
            ring_to_ui_shown: histogram(
                "switchboard_rollout_ring_to_ui_shown_seconds",
                "From a ring sent to the device showing its call UI, by the designated rollout flag's cohort",
                vec![0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0],
            )?,
        })
    }

    /// The flag whose cohorts are measured; None: nothing is.
    pub fn flag(&self) -> Option<&str> {
        self.flag.as_deref()
    }

    fn cohort(on: bool) -> &'static str {
        if on { "on" } else { "off" }
    }

    pub fn callee_outcome(&self, on: bool, outcome: &str) {
        if let Some(flag) = &self.flag {
            self.callee_outcomes
                .with_label_values(&[flag, Self::cohort(on), outcome])
                .inc();
        }
    }

    pub fn first_audio(&self, on: bool, seconds: f64) {
        if let Some(flag) = &self.flag {
            self.time_to_first_audio
                .with_label_values(&[flag, Self::cohort(on)])
                .observe(seconds);
        }
    }

    pub fn ui_shown(&self, on: bool, seconds: f64) {
        if let Some(flag) = &self.flag {
            self.ring_to_ui_shown
                .with_label_values(&[flag, Self::cohort(on)])
                .observe(seconds);
        }
    }
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> prometheus::Result<Histogram> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

impl CallMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<CallMetrics> {
        let created = IntCounterVec::new(
            Opts::new("switchboard_calls_created_total", "Calls created, by type"),
            &["type"],
        )?;
        registry.register(Box::new(created.clone()))?;
        let ended = IntCounterVec::new(
            Opts::new(
                "switchboard_calls_ended_total",
                "Calls ended, by end reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(ended.clone()))?;
        // Every label value at 0 from the start: an alert's rate() then
        // reads 0 rather than nothing before the first such call.
        for call_type in ["audio", "video"] {
            created.with_label_values(&[call_type]);
        }
        for reason in EndReason::ALL {
            ended.with_label_values(&[reason.as_str()]);
        }
        let push_token_conflicts = IntCounter::new(
            "switchboard_push_token_conflicts_total",
            "Device registrations refused: the push token belongs to another user's other device",
        )?;
        registry.register(Box::new(push_token_conflicts.clone()))?;
        let seconds = vec![0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0];
        Ok(CallMetrics {
            reports: crate::reports::ReportMetrics::register(registry)?,
            rollout: RolloutMetrics::register(registry)?,
            push_token_conflicts,
            created,
            ended,
            ring_to_answer: histogram(
                registry,
                "switchboard_call_ring_to_answer_seconds",
                "From ringing to the first accept",
                seconds.clone(),
            )?,
            ring_to_ui_shown: histogram(
                registry,
                "switchboard_call_ring_to_ui_shown_seconds",
                "From a ring sent to the device acknowledging it (call UI shown)",
                vec![0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0],
            )?,
            duration: histogram(
                registry,
                "switchboard_call_duration_seconds",
                "From connected to ended",
                vec![10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0],
            )?,
        })
    }

    /// Measures rollout cohorts of `flag` (a valid flag name), every
    /// series at 0 from the start so a stage's rates read 0, not nothing.
    pub fn with_rollout_flag(mut self, flag: Option<String>) -> CallMetrics {
        if let Some(flag) = &flag {
            for cohort in ["on", "off"] {
                for outcome in ROLLOUT_OUTCOMES {
                    self.rollout
                        .callee_outcomes
                        .with_label_values(&[flag, cohort, outcome]);
                }
                self.rollout
                    .time_to_first_audio
                    .with_label_values(&[flag, cohort]);
                self.rollout
                    .ring_to_ui_shown
                    .with_label_values(&[flag, cohort]);
            }
        }
        self.rollout.flag = flag;
        self
    }

    /// Counts what changed between two versions of one call.
    pub fn observe(&self, before: Option<&Call>, after: &Call) {
        let secs = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1000.0;
        if before.is_none() {
            self.created
                .with_label_values(&[&format!("{:?}", after.call_type).to_lowercase()])
                .inc();
        }
        let was = |f: &dyn Fn(&Call) -> bool| before.is_some_and(f);
        if after.state == CallState::Ended && !was(&|c| c.state == CallState::Ended) {
            if let Some(reason) = after.end_reason {
                self.ended.with_label_values(&[reason.as_str()]).inc();
            }
            if let (Some(c), Some(e)) = (after.connected_at, after.ended_at) {
                self.duration.observe(secs(c, e));
            }
        }
        if let Some(a) = after.answered_at
            && !was(&|c| c.answered_at.is_some())
        {
            self.ring_to_answer.observe(secs(after.created_at, a));
        }
        for (_, ring, shown_at) in rings_shown(before, after) {
            self.ring_to_ui_shown.observe(secs(ring.sent_at, shown_at));
        }
    }
}

/// The rings whose device showed its call UI between `before` and
/// `after` (acknowledged, and acted on: not a bare `Sent`), with their
/// participant and when it showed.
pub fn rings_shown<'a>(
    before: Option<&'a Call>,
    after: &'a Call,
) -> impl Iterator<Item = (&'a Participant, &'a Ring, u64)> {
    after
        .participants
        .iter()
        .enumerate()
        .flat_map(move |(i, p)| {
            p.rings.iter().enumerate().filter_map(move |(j, ring)| {
                let acked_before = before
                    .and_then(|b| b.participants.get(i))
                    .and_then(|bp| bp.rings.get(j))
                    .is_some_and(|r| r.acknowledged_at.is_some());
                let at = ring.acknowledged_at?;
                (!acked_before && ring.state != RingState::Sent).then_some((p, ring, at))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The labels are the wire names, and every reason starts at 0.
    #[test]
    fn every_end_reason_is_exported_under_its_wire_name_from_the_start() {
        let registry = Registry::new();
        let _metrics = CallMetrics::register(&registry).unwrap();
        let ended = registry
            .gather()
            .into_iter()
            .find(|f| f.name() == "switchboard_calls_ended_total")
            .expect("exported before any call ended");
        let labels: Vec<String> = ended
            .get_metric()
            .iter()
            .map(|m| m.get_label()[0].value().to_string())
            .collect();
        for reason in EndReason::ALL {
            let wire = serde_json::to_value(reason).unwrap();
            assert_eq!(wire, reason.as_str());
            assert!(labels.contains(&reason.as_str().to_string()), "{labels:?}");
        }
        assert_eq!(labels.len(), EndReason::ALL.len());
    }
}
