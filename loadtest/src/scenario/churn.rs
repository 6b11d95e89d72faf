//! `churn`: participants join rooms at a steady rate, publish for a while
//! and leave, so joins, ICE, DTLS and removals run all the time.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::call_token::{CallGrant, CallTokens};
use signaling::Permissions;

use crate::bot::MediaShape;
use crate::progress::Progress;
use crate::report::{Measurement, Report};
use crate::runner::{BotPlan, Server, run_bot};
use crate::server_stats;

#[derive(Debug, Clone)]
pub struct ChurnPlan {
    pub url: String,
    pub token_secret: String,
    pub token_issuer: String,
    pub rooms: usize,
    pub joins_per_second: f64,
    /// How long each participant stays.
    pub stay: Duration,
    /// How long joins keep coming.
    pub duration: Duration,
    pub video_kbps: u32,
    pub local_ip: IpAddr,
    pub server_pid: Option<u32>,
    pub run_tag: String,
    pub progress: Option<Arc<Progress>>,
}

pub async fn run(plan: &ChurnPlan) -> Report {
    let tokens = CallTokens::new(
        plan.token_secret.as_bytes(),
        plan.token_issuer.clone(),
        control::call_token::DEFAULT_TTL,
    );
    let interval = Duration::from_secs_f64(1.0 / plan.joins_per_second.max(0.01));
    let start = Instant::now();
    let before = plan.server_pid.and_then(|p| server_stats::sample(p).ok());
    let mut tasks = Vec::new();
    let mut tick = tokio::time::interval(interval);
    let mut i = 0usize;
    while start.elapsed() < plan.duration {
        tick.tick().await;
        let name = format!("churn-{}-{i}", plan.run_tag);
        let token = tokens.mint(&CallGrant {
            call_id: format!("loadtest-{}-churn-{}", plan.run_tag, i % plan.rooms.max(1)),
            user_id: name.clone(),
            participant_id: name.clone(),
            permissions: Permissions::ALL,
            group: false,
            node: None,
            device: None,
        });
        let bot = BotPlan {
            name,
            server: Server::Switchboard {
                url: plan.url.clone(),
                token,
            },
            local_ip: plan.local_ip,
            publish: true,
            media: MediaShape {
                video_bytes_per_tick: (plan.video_kbps as usize * 1000 / 8) / 50,
                keyframe_every_ticks: 100,
            },
            until: Instant::now() + plan.stay,
            record: false,
            drop_every: None,
            progress: plan.progress.clone(),
            simulcast: false,
            quality: None,
        };
        tasks.push(tokio::spawn(run_bot(bot)));
        i += 1;
    }
    let mut bots = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(Ok(bot)) = task.await {
            bots.push(Measurement::from(bot));
        }
    }
    let after = plan.server_pid.and_then(|p| server_stats::sample(p).ok());
    let scenario = format!(
        "churn: {:.1} joins/s into {} rooms, each staying {:.0} s",
        plan.joins_per_second,
        plan.rooms,
        plan.stay.as_secs_f64()
    );
    let elapsed = start.elapsed().as_secs_f64();
    Report::from_measurements(&scenario, i, &bots, elapsed, before.zip(after))
}
