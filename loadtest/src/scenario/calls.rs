//! `calls`: N concurrent 1:1 call lifecycles over the real API: the callee's
//! devices listen on the events WebSocket, the caller creates the call, the
//! ring arrives, the callee answers (media flows through the SFU for a
//! while, then the caller hangs up), declines, lets it time out, or answers
//! from two devices at once (exactly one may win). Every call must end with
//! the reason its role expects; anything else is an unexpected outcome.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::api::{Api, Events, events, next_json};
use crate::bot::MediaShape;
use crate::report::Percentiles;
use crate::runner::{BotPlan, Server, run_bot};

#[derive(Debug, Clone)]
pub struct CallsPlan {
    /// `http://host:port`
    pub base_url: String,
    pub api_key_id: String,
    pub api_key_secret: String,
    pub calls: usize,
    /// Shares (0..1) of calls declined, left to time out, and raced by two
    /// devices; the rest are answered.
    pub decline_share: f64,
    pub timeout_share: f64,
    pub race_share: f64,
    /// Media time of an answered call.
    pub media: Duration,
    /// The server's ring timeout (a timed-out call is checked after it).
    pub ring_timeout: Duration,
    pub local_ip: IpAddr,
    /// Each callee also has a phone (iPhones and Android phones in turn)
    /// with push tokens and no socket: the server rings and rings it off
    /// by push (point it at the push stand-ins).
    pub phones: bool,
    pub run_tag: String,
    /// Test hook: expect the wrong reason for the first call, so a run has
    /// an unexpected outcome and the tool must fail.
    pub inject_unexpected: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Answer,
    Decline,
    Timeout,
    Race,
}

impl Role {
    fn expected(self) -> &'static str {
        match self {
            Role::Answer | Role::Race => "completed",
            Role::Decline => "declined",
            Role::Timeout => "timeout",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallsReport {
    pub calls: usize,
    /// End reasons as the server recorded them.
    pub outcomes: BTreeMap<String, usize>,
    /// "callId: expected X, got Y" for every call that ended otherwise.
    pub unexpected: Vec<String>,
    /// Create -> the callee's accept answered.
    pub setup_ms: Percentiles,
    /// Create -> the ring arrived on the callee's events socket.
    pub ring_ms: Percentiles,
    /// Races where exactly one device won (the other got 409).
    pub races_clean: usize,
    pub races: usize,
    pub media_packets: u64,
}

impl CallsReport {
    /// Every call ended as its role expects (the tool's exit status).
    pub fn passed(&self) -> bool {
        self.unexpected.is_empty() && self.outcomes.values().sum::<usize>() == self.calls
    }

    pub fn table(&self) -> String {
        let mut out = format!("{:<32} {}\n", "calls", self.calls);
        for (reason, n) in &self.outcomes {
            out.push_str(&format!("{:<32} {n}\n", format!("ended {reason}")));
        }
        let s = &self.setup_ms;
        out.push_str(&format!(
            "{:<32} p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms\n",
            "call setup (create -> accepted)", s.p50, s.p95, s.p99
        ));
        let r = &self.ring_ms;
        out.push_str(&format!(
            "{:<32} p50 {:.0} ms, p99 {:.0} ms\n",
            "ring delivered", r.p50, r.p99
        ));
        out.push_str(&format!(
            "{:<32} {} / {}\n",
            "clean accept races", self.races_clean, self.races
        ));
        out.push_str(&format!(
            "{:<32} {}\n",
            "media packets received", self.media_packets
        ));
        out.push_str(&format!(
            "{:<32} {}\n",
            "unexpected outcomes",
            self.unexpected.len()
        ));
        for u in &self.unexpected {
            out.push_str(&format!("  {u}\n"));
        }
        out
    }
}

/// Waits for `call.ringing` of `call_id`.
async fn ringing(ws: &mut Events, call_id: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_json(ws, left).await {
            Some(m) if m["type"] == "call.ringing" && m["callId"] == call_id => return true,
            Some(_) => continue,
            None => return false,
        }
    }
    false
}

struct CallResult {
    call_id: String,
    role: Role,
    end_reason: String,
    setup_ms: Option<f64>,
    ring_ms: Option<f64>,
    race_clean: Option<bool>,
    media_packets: u64,
}

/// Call `i`'s callee phone: an iPhone (VoIP and alert tokens, CallKit) or
/// an Android phone (FCM, Telecom), with tokens no other run or call uses.
fn phone(plan: &CallsPlan, i: usize) -> serde_json::Value {
    if i.is_multiple_of(2) {
        let token = |kind: u8| format!("{kind:02x}{:0>54}{i:08x}", plan.run_tag);
        json!({"deviceId": "p1", "platform": "ios",
               "push": {"apnsVoip": token(0xa1), "apnsAlert": token(0xb2)},
               "apnsEnvironment": "sandbox", "bundleId": "com.example.calls",
               "capabilities": {"callkit": true}})
    } else {
        let token = format!("fcm-lt-{}-{i}:APA91bHun4MxP5egoKMwt2KZFBaFUH", plan.run_tag);
        json!({"deviceId": "p1", "platform": "android", "push": {"fcm": token},
               "capabilities": {"telecom": true}})
    }
}

async fn one_call(api: &Api, plan: &CallsPlan, i: usize, role: Role) -> CallResult {
    let caller = format!("lt-{}-a{i}", plan.run_tag);
    let callee = format!("lt-{}-b{i}", plan.run_tag);
    let devices: &[&str] = if role == Role::Race {
        &["d1", "d2"]
    } else {
        &["d1"]
    };
    let mut sockets = Vec::new();
    for d in devices {
        let device =
            json!({"deviceId": d, "platform": "web", "push": {}, "capabilities": {"video": true}});
        api.post(&callee, "/v1/devices", device).await;
        if let Some(ws) = events(api, &callee, d).await {
            sockets.push(ws);
        }
    }
    if plan.phones {
        api.post(&callee, "/v1/devices", phone(plan, i)).await;
    }
    let mut result = CallResult {
        call_id: String::new(),
        role,
        end_reason: "not_created".into(),
        setup_ms: None,
        ring_ms: None,
        race_clean: None,
        media_packets: 0,
    };
    let created_at = Instant::now();
    let body = json!({"calleeUserIds": [callee], "type": "video", "deviceId": "c1"});
    let (status, created) = api.post(&caller, "/v1/calls", body).await;
    if status != 201 {
        result.end_reason = format!("create_failed_{status}");
        return result;
    }
    let call_id = created["call"]["callId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    result.call_id = call_id.clone();
    let caller_token = created["callToken"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // Every device must have its socket up and get the ring.
    let mut rang = sockets.len() == devices.len();
    for ws in &mut sockets {
        rang &= ringing(ws, &call_id, Duration::from_secs(10)).await;
    }
    if rang {
        result.ring_ms = Some(created_at.elapsed().as_secs_f64() * 1e3);
    }
    let path = |action: &str| format!("/v1/calls/{call_id}/{action}");
    let callee_token = match role {
        Role::Decline => {
            api.post(&callee, &path("decline"), json!({"deviceId": "d1"}))
                .await;
            None
        }
        Role::Timeout => {
            tokio::time::sleep(plan.ring_timeout + Duration::from_millis(1500)).await;
            None
        }
        Role::Answer => {
            let (status, accepted) = api
                .post(&callee, &path("accept"), json!({"deviceId": "d1"}))
                .await;
            result.setup_ms = Some(created_at.elapsed().as_secs_f64() * 1e3);
            (status == 200).then(|| {
                accepted["callToken"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
        }
        Role::Race => {
            let accept = path("accept");
            let (a, b) = tokio::join!(
                api.post(&callee, &accept, json!({"deviceId": "d1"})),
                api.post(&callee, &accept, json!({"deviceId": "d2"})),
            );
            result.setup_ms = Some(created_at.elapsed().as_secs_f64() * 1e3);
            let mut statuses = [a.0, b.0];
            statuses.sort_unstable();
            result.race_clean = Some(statuses == [200, 409]);
            [a, b]
                .into_iter()
                .find(|(s, _)| *s == 200)
                .map(|(_, v)| v["callToken"].as_str().unwrap_or_default().to_string())
        }
    };
    if let Some(callee_token) = callee_token {
        // The node the room was placed on; a bot sent elsewhere follows
        // `wrong_node` (`runner::join`).
        let ws_url = created["rtcUrl"].as_str().map_or_else(
            || format!("{}/v1/rtc", plan.base_url.replacen("http", "ws", 1)),
            str::to_string,
        );
        let until = Instant::now() + plan.media;
        let bot = |name: &str, token: String| BotPlan {
            name: name.to_string(),
            server: Server::Switchboard {
                url: ws_url.clone(),
                token,
            },
            local_ip: plan.local_ip,
            publish: true,
            media: MediaShape {
                video_bytes_per_tick: 1000,
                keyframe_every_ticks: 50,
            },
            until,
            record: false,
            drop_every: None,
            progress: None,
            simulcast: false,
            quality: None,
        };
        let (a, b) = tokio::join!(
            run_bot(bot(&caller, caller_token)),
            run_bot(bot(&callee, callee_token))
        );
        for bot in [a, b].into_iter().flatten() {
            result.media_packets += bot.tracks.values().map(|t| t.packets).sum::<u64>();
        }
        api.post(&caller, &path("end"), json!({})).await;
    }
    // The call's end as the server recorded it.
    for _ in 0..50 {
        let (_, call) = api
            .send(
                &caller,
                reqwest::Method::GET,
                &format!("/v1/calls/{call_id}"),
                None,
            )
            .await;
        if call["state"] == "ended" {
            result.end_reason = call["endReason"].as_str().unwrap_or("none").to_string();
            break;
        }
        result.end_reason = format!("still_{}", call["state"].as_str().unwrap_or("unknown"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    result
}

fn role_of(plan: &CallsPlan, i: usize) -> Role {
    // Spread roles evenly over the run by their shares.
    let x = (i as f64 + 0.5) / plan.calls.max(1) as f64;
    if x < plan.decline_share {
        Role::Decline
    } else if x < plan.decline_share + plan.timeout_share {
        Role::Timeout
    } else if x < plan.decline_share + plan.timeout_share + plan.race_share {
        Role::Race
    } else {
        Role::Answer
    }
}

pub async fn run(plan: &CallsPlan) -> CallsReport {
    let api = std::sync::Arc::new(Api::new(
        &plan.base_url,
        &plan.api_key_id,
        &plan.api_key_secret,
    ));
    let mut tasks = Vec::new();
    for i in 0..plan.calls {
        let (api, plan) = (api.clone(), plan.clone());
        tasks.push(tokio::spawn(async move {
            let role = role_of(&plan, i);
            one_call(&api, &plan, i, role).await
        }));
    }
    let mut report = CallsReport {
        calls: plan.calls,
        ..CallsReport::default()
    };
    let (mut setups, mut rings) = (Vec::new(), Vec::new());
    for (i, task) in tasks.into_iter().enumerate() {
        let Ok(r) = task.await else { continue };
        *report.outcomes.entry(r.end_reason.clone()).or_default() += 1;
        let mut expected = r.role.expected();
        if plan.inject_unexpected && i == 0 {
            expected = "declined_by_injection";
        }
        if r.end_reason != expected {
            report.unexpected.push(format!(
                "{} ({:?}): expected {expected}, got {}",
                r.call_id, r.role, r.end_reason
            ));
        }
        if let Some(clean) = r.race_clean {
            report.races += 1;
            report.races_clean += usize::from(clean);
            if !clean {
                report.unexpected.push(format!(
                    "{}: both devices or neither won the accept race",
                    r.call_id
                ));
            }
        }
        setups.extend(r.setup_ms);
        rings.extend(r.ring_ms);
        report.media_packets += r.media_packets;
    }
    report.setup_ms = Percentiles::of(&mut setups);
    report.ring_ms = Percentiles::of(&mut rings);
    report
}
