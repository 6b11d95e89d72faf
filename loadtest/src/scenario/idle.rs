//! `idle`: many devices' events sockets, authenticated and then silent, as a
//! node holds them for every app in the background: what each costs the
//! server in memory. Devices are registered through the API first (one user
//! each); sockets come from several loopback source addresses, as one gives
//! ~28k ephemeral ports per destination.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;

use super::api::{Api, Events, events_from};
use crate::server_stats;

#[derive(Debug, Clone)]
pub struct IdlePlan {
    /// `http://host:port`
    pub base_url: String,
    pub api_key_id: String,
    pub api_key_secret: String,
    pub sockets: usize,
    /// Local addresses the sockets come from, in turn.
    pub sources: Vec<IpAddr>,
    /// How long the sockets stay open after the last one authenticated.
    pub hold: Duration,
    /// Registrations and connects under way at once.
    pub concurrency: usize,
    pub server_pid: Option<u32>,
    pub run_tag: String,
}

#[derive(Debug, Serialize)]
pub struct IdleReport {
    pub sockets_planned: usize,
    pub sockets_open: usize,
    pub seconds_to_open: f64,
    pub server_rss_before_bytes: u64,
    pub server_rss_open_bytes: u64,
    /// (RSS with the sockets open - RSS before) / sockets open.
    pub server_bytes_per_socket: u64,
}

impl IdleReport {
    pub fn table(&self) -> String {
        format!(
            "{:<32} {} / {}\n{:<32} {:.1}\n{:<32} {} MiB -> {} MiB\n{:<32} {}\n",
            "sockets open",
            self.sockets_open,
            self.sockets_planned,
            "seconds to open",
            self.seconds_to_open,
            "server RSS",
            self.server_rss_before_bytes >> 20,
            self.server_rss_open_bytes >> 20,
            "server bytes per socket",
            self.server_bytes_per_socket,
        )
    }
}

pub async fn run(plan: &IdlePlan) -> IdleReport {
    let api = Arc::new(Api::new(
        &plan.base_url,
        &plan.api_key_id,
        &plan.api_key_secret,
    ));
    let rss = || {
        plan.server_pid
            .and_then(|p| server_stats::sample(p).ok())
            .map_or(0, |s| s.rss_bytes)
    };
    let user = |i: usize| format!("idle-{}-{i}", plan.run_tag);
    let gate = Arc::new(Semaphore::new(plan.concurrency.max(1)));

    // Devices first, so the sockets' memory is measured alone.
    let mut registering = tokio::task::JoinSet::new();
    for i in 0..plan.sockets {
        let (api, gate, user) = (api.clone(), gate.clone(), user(i));
        registering.spawn(async move {
            let _slot = gate.acquire_owned().await;
            let body = json!({"deviceId": "phone", "platform": "web"});
            api.post(&user, "/v1/devices", body).await.0 == 200
        });
    }
    while registering.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss();

    let started = Instant::now();
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..plan.sockets {
        let (api, gate, user) = (api.clone(), gate.clone(), user(i));
        let source = plan.sources[i % plan.sources.len().max(1)];
        opening.spawn(async move {
            let _slot = gate.acquire_owned().await;
            events_from(&api, &user, "phone", source).await
        });
    }
    let mut open: Vec<Events> = Vec::with_capacity(plan.sockets);
    while let Some(done) = opening.join_next().await {
        if let Ok(Some(ws)) = done {
            open.push(ws);
        }
    }
    let seconds_to_open = started.elapsed().as_secs_f64();
    // Let allocations settle before reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_sockets = rss();
    tokio::time::sleep(plan.hold).await;
    let report = IdleReport {
        sockets_planned: plan.sockets,
        sockets_open: open.len(),
        seconds_to_open,
        server_rss_before_bytes: before,
        server_rss_open_bytes: with_sockets,
        server_bytes_per_socket: with_sockets.saturating_sub(before) / open.len().max(1) as u64,
    };
    drop(open);
    report
}
