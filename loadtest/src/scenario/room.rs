//! `room`: R rooms, each with P publishers (audio + video) and S
//! subscribers, joined over the real protocol with real call tokens (or
//! through a Janus videoroom, the same bots), ramped up, measured for a
//! duration, then stopped hard.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use control::call_token::{CallGrant, CallTokens};
use signaling::{Permissions, VideoQuality};

const QUALITIES: [VideoQuality; 3] = [VideoQuality::Low, VideoQuality::Medium, VideoQuality::High];

use crate::bot::MediaShape;
use crate::report::{Measurement, Report};
use crate::runner::{BotPlan, Server, run_bot};
use crate::server_stats;

/// The server the rooms are on.
#[derive(Debug, Clone)]
pub enum RoomServer {
    Switchboard {
        /// `ws://host:port/v1/rtc`
        url: String,
        /// The server's call-token secret and issuer (tokens are real).
        token_secret: String,
        token_issuer: String,
    },
    /// Janus's videoroom at its WebSocket API (`ws://host:8188`).
    Janus { url: String },
}

#[derive(Debug, Clone)]
pub struct RoomPlan {
    pub server: RoomServer,
    pub rooms: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub video_kbps: u32,
    /// Joins are spread over this long.
    pub ramp_up: Duration,
    /// Measured after the ramp-up.
    pub duration: Duration,
    pub local_ip: IpAddr,
    /// The server process, for its CPU time and memory.
    pub server_pid: Option<u32>,
    /// Publishers drop every n-th datagram they send (induced loss).
    pub drop_every: Option<u64>,
    /// Distinguishes this run's rooms from earlier runs' on the same server.
    pub run_tag: String,
    /// Live counters (the CLI shows them).
    pub progress: Option<std::sync::Arc<crate::progress::Progress>>,
    /// Publishers send three simulcast layers and subscribers ask for
    /// `low`, `medium` and `high` in turn (seat by seat), so every layer is
    /// forwarded and the report counts each.
    pub simulcast: bool,
}

impl RoomPlan {
    /// Video tracks the bots should receive media on: in every room, each
    /// publisher's from every other member (a track counts once, whatever
    /// its layers).
    pub fn video_tracks_planned(&self) -> usize {
        self.rooms * self.publishers * (self.publishers.saturating_sub(1) + self.subscribers)
    }

    /// A run delivered: every bot joined, media arrived on every planned
    /// video track (a run where everyone joined and nothing was lost can
    /// still have carried nothing), and loss stayed at most
    /// `max_loss_percent`.
    pub fn delivered(&self, report: &Report, max_loss_percent: f64) -> bool {
        report.bots_joined == report.bots_planned
            && report.subscribed_video_tracks >= self.video_tracks_planned()
            && report.loss_percent <= max_loss_percent
    }
}

/// Runs the plan and reports what the bots measured.
pub async fn run(plan: &RoomPlan) -> Report {
    let media = MediaShape {
        // kbit/s -> bytes per 20 ms tick.
        video_bytes_per_tick: (plan.video_kbps as usize * 1000 / 8) / 50,
        keyframe_every_ticks: 100,
    };
    let per_room = plan.publishers + plan.subscribers;
    let total = plan.rooms * per_room;
    let start = Instant::now();
    let until = start + plan.ramp_up + plan.duration;
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let (room, seat) = (i / per_room, i % per_room);
        let publish = seat < plan.publishers;
        let name = format!("r{room}-{}{seat}", if publish { "pub" } else { "sub" });
        let server = bot_server(plan, room, &name, publish, per_room > 2);
        let bot_plan = BotPlan {
            name,
            server,
            local_ip: plan.local_ip,
            publish,
            media,
            until,
            record: false,
            drop_every: plan.drop_every.filter(|_| publish),
            progress: plan.progress.clone(),
            simulcast: plan.simulcast && publish,
            quality: plan.simulcast.then(|| QUALITIES[seat % QUALITIES.len()]),
        };
        let delay = plan.ramp_up.mul_f64(i as f64 / total.max(1) as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            run_bot(bot_plan).await
        }));
    }
    // Server use is measured over the steady window, after the ramp-up.
    tokio::time::sleep_until((start + plan.ramp_up).into()).await;
    let before = plan
        .server_pid
        .and_then(|pid| server_stats::sample(pid).ok());
    let measured_from = Instant::now();
    tokio::time::sleep_until(until.into()).await;
    let after = plan
        .server_pid
        .and_then(|pid| server_stats::sample(pid).ok());
    let measured = measured_from.elapsed().as_secs_f64();
    let mut bots = Vec::with_capacity(total);
    for task in tasks {
        if let Ok(Ok(bot)) = task.await {
            bots.push(Measurement::from(bot));
        }
    }
    let scenario = format!(
        "room: {} x ({} publishers + {} subscribers), video {} kbit/s{}",
        plan.rooms,
        plan.publishers,
        plan.subscribers,
        plan.video_kbps,
        if plan.simulcast {
            " in 3 simulcast layers"
        } else {
            ""
        }
    );
    Report::from_measurements(&scenario, total, &bots, measured, before.zip(after))
}

/// Where the bot `name` in room number `room` joins: with a call token
/// minted for it, or in the Janus room this run numbers `room`.
fn bot_server(plan: &RoomPlan, room: usize, name: &str, publish: bool, group: bool) -> Server {
    match &plan.server {
        RoomServer::Switchboard {
            url,
            token_secret,
            token_issuer,
        } => {
            let tokens = CallTokens::new(
                token_secret.as_bytes(),
                token_issuer.clone(),
                control::call_token::DEFAULT_TTL,
            );
            let token = tokens.mint(&CallGrant {
                call_id: format!("loadtest-{}-room-{room}", plan.run_tag),
                user_id: name.to_string(),
                participant_id: name.to_string(),
                permissions: if publish {
                    Permissions::ALL
                } else {
                    Permissions {
                        publish_audio: false,
                        publish_video: false,
                        subscribe: true,
                        publish_data: false,
                    }
                },
                // As control mints it for a call created for more than two.
                group,
                node: None,
                device: None,
            });
            Server::Switchboard {
                url: url.clone(),
                token,
            }
        }
        RoomServer::Janus { url } => {
            // Janus numbers rooms: one per (run, room), below 2^53 so
            // every JSON reader keeps it exact.
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (&plan.run_tag, room).hash(&mut hasher);
            Server::Janus {
                url: url.clone(),
                room: hasher.finish() >> 11,
            }
        }
    }
}

/// The capacity search: raises subscribers per room (x1.5 each step) until
/// a step does not deliver ([`RoomPlan::delivered`] with 0.5 % loss) or
/// latency p99 exceeds 50 ms, or `max_subscribers`.
/// Returns every step's report; the last passing one is the capacity.
pub async fn search(plan: &RoomPlan, max_subscribers: usize) -> Vec<(Report, bool)> {
    let mut steps = Vec::new();
    let mut subscribers = plan.subscribers.max(1);
    for step in 0..32 {
        let mut p = plan.clone();
        p.subscribers = subscribers;
        p.run_tag = format!("{}-search{step}", plan.run_tag);
        let report = run(&p).await;
        let pass = p.delivered(&report, 0.5) && report.latency_ms.p99 <= 50.0;
        steps.push((report, pass));
        if !pass || subscribers >= max_subscribers {
            break;
        }
        subscribers = (subscribers * 3 / 2)
            .max(subscribers + 1)
            .min(max_subscribers);
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rooms: usize, publishers: usize, subscribers: usize) -> RoomPlan {
        RoomPlan {
            server: RoomServer::Janus {
                url: "ws://127.0.0.1:8188".into(),
            },
            rooms,
            publishers,
            subscribers,
            video_kbps: 500,
            ramp_up: Duration::ZERO,
            duration: Duration::from_secs(1),
            local_ip: IpAddr::from([127, 0, 0, 1]),
            server_pid: None,
            drop_every: None,
            run_tag: "t".into(),
            progress: None,
            simulcast: false,
        }
    }

    #[test]
    fn planned_video_tracks_are_every_publisher_at_every_other_member() {
        assert_eq!(plan(100, 2, 0).video_tracks_planned(), 200);
        assert_eq!(plan(20, 4, 0).video_tracks_planned(), 240);
        assert_eq!(plan(1, 1, 200).video_tracks_planned(), 200);
        assert_eq!(plan(3, 0, 5).video_tracks_planned(), 0);
    }

    /// Everyone joined and nothing was lost, but media reached only some
    /// tracks (or none): not delivered.
    #[test]
    fn a_run_short_of_its_tracks_did_not_deliver() {
        let plan = plan(1, 3, 1);
        let mut report = Report {
            bots_planned: 4,
            bots_joined: 4,
            subscribed_video_tracks: 9,
            ..Report::default()
        };
        assert!(plan.delivered(&report, 0.0));
        report.subscribed_video_tracks = 8;
        assert!(!plan.delivered(&report, 0.0));
        report.subscribed_video_tracks = 0;
        assert!(!plan.delivered(&report, 100.0));
        report.subscribed_video_tracks = 9;
        report.loss_percent = 1.5;
        assert!(!plan.delivered(&report, 1.0));
        report.bots_joined = 3;
        assert!(!plan.delivered(&report, 100.0));
    }
}
