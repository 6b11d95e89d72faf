//! What a run measured, as a table for people and JSON for machines.

use serde::Serialize;

use std::time::Instant;

use crate::bot::{Bot, SIMULCAST_RIDS, TrackStats};
use crate::server_stats::ProcSample;
use str0m::media::MediaKind;

/// What one bot (an SFU bot or a baseline client) measured.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub joined: bool,
    pub created_at: Instant,
    pub tracks: Vec<TrackStats>,
    pub plis: u64,
    pub nacks: u64,
}

impl From<Bot> for Measurement {
    fn from(bot: Bot) -> Measurement {
        Measurement {
            joined: bot.participant_id.is_some(),
            created_at: bot.created_at,
            tracks: bot.tracks.into_values().collect(),
            plis: bot.keyframe_requests as u64,
            nacks: bot.nacks_received,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values` (sorted here).
    pub fn of(values: &mut [f64]) -> Percentiles {
        values.sort_by(f64::total_cmp);
        let at = |p: f64| {
            if values.is_empty() {
                return 0.0;
            }
            let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
            values[rank.clamp(1, values.len()) - 1]
        };
        Percentiles {
            p50: at(50.0),
            p95: at(95.0),
            p99: at(99.0),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerUse {
    pub cpu_seconds: f64,
    pub rss_mb: f64,
    /// CPU seconds per second of the run: cores the server kept busy.
    pub cores_busy: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub scenario: String,
    pub duration_seconds: f64,
    pub bots_planned: usize,
    pub bots_joined: usize,
    pub subscribed_video_tracks: usize,
    /// Simulcast: video packets received per layer (RID), lowest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub video_packets_by_layer: Vec<(String, u64)>,
    pub time_to_first_media_ms: Percentiles,
    pub packets_received: u64,
    pub packets_lost: u64,
    pub loss_percent: f64,
    pub latency_ms: Percentiles,
    pub jitter_ms: f64,
    pub plis_answered: u64,
    pub nacks_answered: u64,
    pub server: Option<ServerUse>,
    /// Subscribed video tracks per core the server kept busy.
    pub video_tracks_per_server_core: Option<f64>,
    /// Packets delivered to the bots per server CPU-second.
    pub packets_per_server_cpu_second: Option<f64>,
}

impl Report {
    /// Folds what every bot measured into one report. `server`: the
    /// server's `/proc` samples at the start and end of the measured window.
    pub fn from_measurements(
        scenario: &str,
        bots_planned: usize,
        bots: &[Measurement],
        duration_seconds: f64,
        server: Option<(ProcSample, ProcSample)>,
    ) -> Report {
        let mut ttfm = Vec::new();
        let mut latencies = Vec::new();
        let (mut received, mut lost, mut video_tracks) = (0, 0, 0);
        let (mut jitter_sum, mut jitter_n) = (0.0, 0u64);
        let (mut plis, mut nacks) = (0, 0);
        let mut by_layer: std::collections::HashMap<String, u64> = Default::default();
        for bot in bots {
            plis += bot.plis;
            nacks += bot.nacks;
            let first = bot.tracks.iter().map(|t| t.first_at).min();
            if let Some(first) = first {
                ttfm.push(
                    first
                        .saturating_duration_since(bot.created_at)
                        .as_secs_f64()
                        * 1e3,
                );
            }
            // One entry per layer received: a track is counted once.
            let mut video_from: Vec<&str> = Vec::new();
            for t in &bot.tracks {
                received += t.packets;
                lost += t.lost();
                if t.kind == MediaKind::Video && !video_from.contains(&t.from.as_str()) {
                    video_from.push(&t.from);
                    video_tracks += 1;
                }
                if let Some(layer) = &t.layer {
                    *by_layer.entry(layer.clone()).or_insert(0) += t.packets;
                }
                for pair in t.latency_us.windows(2) {
                    jitter_sum += f64::from(pair[0].abs_diff(pair[1])) / 1e3;
                    jitter_n += 1;
                }
                latencies.extend(t.latency_us.iter().map(|us| f64::from(*us) / 1e3));
            }
        }
        let server = server.map(|(start, end)| {
            let cpu = end.cpu.saturating_sub(start.cpu).as_secs_f64();
            ServerUse {
                cpu_seconds: cpu,
                rss_mb: end.rss_bytes as f64 / (1024.0 * 1024.0),
                cores_busy: cpu / duration_seconds.max(1e-9),
            }
        });
        let per_core = server
            .as_ref()
            .filter(|s| s.cores_busy > 0.0)
            .map(|s| video_tracks as f64 / s.cores_busy);
        let per_cpu_second = server
            .as_ref()
            .filter(|s| s.cpu_seconds > 0.0)
            .map(|s| received as f64 / s.cpu_seconds);
        Report {
            packets_per_server_cpu_second: per_cpu_second,
            scenario: scenario.to_string(),
            duration_seconds,
            bots_planned,
            bots_joined: bots.iter().filter(|b| b.joined).count(),
            subscribed_video_tracks: video_tracks,
            video_packets_by_layer: SIMULCAST_RIDS
                .iter()
                .filter_map(|rid| by_layer.get(*rid).map(|n| (rid.to_string(), *n)))
                .collect(),
            time_to_first_media_ms: Percentiles::of(&mut ttfm),
            packets_received: received,
            packets_lost: lost,
            loss_percent: if received + lost == 0 {
                0.0
            } else {
                100.0 * lost as f64 / (received + lost) as f64
            },
            latency_ms: Percentiles::of(&mut latencies),
            jitter_ms: if jitter_n == 0 {
                0.0
            } else {
                jitter_sum / jitter_n as f64
            },
            plis_answered: plis,
            nacks_answered: nacks,
            server,
            video_tracks_per_server_core: per_core,
        }
    }

    /// A plain table, one metric per line.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut row = |k: &str, v: String| out.push_str(&format!("{k:<32} {v}\n"));
        row("scenario", self.scenario.clone());
        row("duration", format!("{:.1} s", self.duration_seconds));
        row(
            "bots joined",
            format!("{} / {}", self.bots_joined, self.bots_planned),
        );
        row(
            "subscribed video tracks",
            self.subscribed_video_tracks.to_string(),
        );
        let t = &self.time_to_first_media_ms;
        row(
            "time to first media",
            format!(
                "p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms",
                t.p50, t.p95, t.p99
            ),
        );
        row("packets received", self.packets_received.to_string());
        if !self.video_packets_by_layer.is_empty() {
            let layers: Vec<String> = self
                .video_packets_by_layer
                .iter()
                .map(|(rid, n)| format!("{rid} {n}"))
                .collect();
            row("video packets by layer", layers.join(", "));
        }
        row(
            "loss",
            format!("{:.3} % ({} packets)", self.loss_percent, self.packets_lost),
        );
        let l = &self.latency_ms;
        row(
            "one-way latency",
            format!("p50 {:.2} ms, p99 {:.2} ms", l.p50, l.p99),
        );
        row("jitter", format!("{:.2} ms", self.jitter_ms));
        row(
            "PLIs / NACKs answered",
            format!("{} / {}", self.plis_answered, self.nacks_answered),
        );
        if let Some(s) = &self.server {
            row(
                "server CPU",
                format!(
                    "{:.2} s ({:.2} cores busy), RSS {:.0} MB",
                    s.cpu_seconds, s.cores_busy, s.rss_mb
                ),
            );
        }
        if let Some(per_core) = self.video_tracks_per_server_core {
            row("video tracks per server core", format!("{per_core:.0}"));
        }
        if let Some(rate) = self.packets_per_server_cpu_second {
            row("packets per server CPU-second", format!("{rate:.0}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.p50, p.p95, p.p99), (50.0, 95.0, 99.0));
        assert_eq!(Percentiles::of(&mut []).p99, 0.0);
    }
}
