//! What an operator's monitoring reads, checked against the real thing:
//! the alert rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`, Debian's `prometheus` package), and a real
//! Prometheus scrapes a real `switchboard` (Redis-backed, pushing through
//! the FCM stand-in) during a scripted call: its query API returns the
//! call's metrics, it evaluates every rule without an error, it parses and
//! runs every dashboard panel's query, and every metric the rules and the
//! dashboards (`deploy/grafana/*.json`) name is in the server's `/metrics`.
//! Grafana itself is not run here (not installable): the dashboards'
//! structure is checked as far as this test reads it.

mod common;

#[path = "../../control/tests/support/mod.rs"]
mod push_support;
#[path = "../../control/tests/support/redis_server.rs"]
mod redis_server;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::live::{free_port, post_json, request, scratch_dir};
use redis_server::RedisServer;
use serde_json::{Value, json};

fn prometheus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .current_dir(prometheus_dir())
        .output()
        .expect("promtool runs (Debian's prometheus package; scripts/test installs it)")
}

#[test]
fn the_alert_rules_are_valid_and_their_unit_tests_pass() {
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts_test.yml"][..],
    ] {
        let out = promtool(args);
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every alert has a runbook, and every runbook an alert points at exists.
#[test]
fn every_alert_names_a_runbook_that_exists() {
    let rules = alert_rules();
    let alerts: Vec<&Value> = rules.iter().filter(|r| r.get("alert").is_some()).collect();
    assert!(alerts.len() >= 9, "{alerts:?}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for alert in alerts {
        let url = alert["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_else(|| panic!("no runbook_url: {alert}"));
        assert!(root.join(url).is_file(), "{url} of {}", alert["alert"]);
    }
}

/// Every dashboard of deploy/grafana: (file name, JSON).
fn dashboards() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana");
    let mut all: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let json = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), json)
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// (dashboard, panel title, query) of every panel of every dashboard,
/// after checking what Grafana needs of each: unique uids and panel ids,
/// a position, and the `datasource` variable the queries use.
fn dashboard_queries() -> Vec<(String, String, String)> {
    let mut uids = std::collections::HashSet::new();
    let mut queries = Vec::new();
    for (file, dashboard) in dashboards() {
        assert!(
            uids.insert(dashboard["uid"].as_str().unwrap().to_string()),
            "{file}"
        );
        let variables = &dashboard["templating"]["list"];
        assert_eq!(variables[0]["name"], "datasource", "{file}");
        assert_eq!(variables[0]["query"], "prometheus", "{file}");
        let mut ids = std::collections::HashSet::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap().to_string();
            assert!(ids.insert(panel["id"].as_u64().unwrap()), "{file}: {title}");
            assert!(
                panel["gridPos"]["w"].as_u64().unwrap() > 0,
                "{file}: {title}"
            );
            for target in panel["targets"].as_array().unwrap() {
                assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
                let expr = target["expr"].as_str().unwrap().to_string();
                queries.push((file.clone(), title.clone(), expr));
            }
        }
    }
    assert!(queries.len() >= 40, "{}", queries.len());
    queries
}

/// The queries `deploy/ROLLOUT.md` tells operators to run at each stage
/// (its `promql` blocks), as (file, heading, query).
fn rollout_checks() -> Vec<(String, String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/ROLLOUT.md");
    let text = std::fs::read_to_string(path).unwrap();
    let queries: Vec<(String, String, String)> = text
        .split("```promql\n")
        .skip(1)
        .enumerate()
        .map(|(i, block)| {
            let query = block.split("```").next().unwrap().trim().to_string();
            ("ROLLOUT.md".into(), format!("check {}", i + 1), query)
        })
        .collect();
    assert!(queries.len() >= 5, "{queries:?}");
    queries
}

/// Every rule of alerts.yml, as JSON.
fn alert_rules() -> Vec<Value> {
    let text = std::fs::read_to_string(prometheus_dir().join("alerts.yml")).unwrap();
    let file: Value = serde_yaml_ng::from_str(&text).unwrap();
    file["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

/// The metric names an expression reads (`switchboard_*` outside quoted
/// label values; recording rules' names have colons and are not exported).
fn metrics_read_by(expr: &str) -> Vec<String> {
    let unquoted: String = expr.split('"').step_by(2).collect::<Vec<_>>().join(" ");
    let mut names = Vec::new();
    let mut rest = unquoted.as_str();
    while let Some(at) = rest.find("switchboard_") {
        let preceded_by_name = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        if !preceded_by_name && !name.contains(':') {
            names.push(name.to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// A Prometheus server (Debian's binary) started for one test, ended by
/// PID when dropped.
struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `target` every second as job `switchboard` and evaluates
    /// alerts.yml every second.
    async fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = scratch_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let rules = prometheus_dir().join("alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: switchboard\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (Debian's prometheus package)");
        let prometheus = Prometheus { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok()
                && request(addr, "GET", "/-/ready", &[], "").await.0 == 200
            {
                return prometheus;
            }
            assert!(Instant::now() < deadline, "prometheus never ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = request(self.addr, "GET", path, &[], "").await;
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The value of an instant query's only sample, if it has one.
    async fn value_of(&self, query: &str) -> Option<f64> {
        use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
        let path = format!(
            "/api/v1/query?query={}",
            utf8_percent_encode(query, NON_ALPHANUMERIC)
        );
        let answer = self.get(&path).await;
        let result = answer["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{query}: {answer}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Polls `query` until its value is `expected` (30 s at most).
    async fn wait_for_value(&self, query: &str, expected: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.value_of(query).await;
            if value == Some(expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{query} is {value:?}, not {expected}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Alice calls Bob's Android phone (its ring pushed through the FCM
/// stand-in, retried once, and acknowledged), he answers, their bots talk for 2 s and
/// she hangs up; then she calls Carol, whose phone's token FCM no longer
/// knows (the push fails), and cancels. Prometheus, scraping all along,
/// has the calls, and every rule evaluates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_call_and_every_metric_of_the_rules_and_dashboards_is_exported() {
    let redis = RedisServer::start();
    let fcm = push_support::fcm::FakeFcm::start().await;
    let redis_url = redis.url();
    let server = common::live::start_server_with_configured_push(|c| {
        c.redis_url = Some(redis_url);
        c.redis_namespace = "operations".into();
        c.rollout_metrics_flag = Some("calling".into());
        common::live::push_through_fcm_stand_in(
            c,
            &fcm.server.url,
            &fcm.service_account_json,
            &fcm.server.ca_pem,
        );
    })
    .await;
    let node = server.http_addr;
    let prometheus = Prometheus::start(node).await;
    prometheus
        .wait_for_value(r#"up{job="switchboard"}"#, 1.0)
        .await;

    let carol_token = "fcm-carol:APA91bGoneGoneGoneGoneGoneGone";
    fcm.script(carol_token, &[(404, "UNREGISTERED", None)]);
    // Bob's first push meets an FCM hiccup and is retried.
    fcm.script(push_support::PIXEL_FCM, &[(500, "INTERNAL", None)]);
    let carol_phone =
        json!({"deviceId": "carol-phone", "platform": "android", "push": {"fcm": carol_token}});
    let (status, body) = post_json(node, "/v1/devices", "carol", carol_phone).await;
    assert_eq!(status, 200, "{body}");

    let call_id = common::live::answered_video_call(node, push_support::PIXEL_FCM, || {
        !fcm.accepted_for(push_support::PIXEL_FCM).is_empty()
    })
    .await
    .call_id;
    let end = format!("/v1/calls/{call_id}/end");
    let (status, body) = post_json(node, &end, "alice", json!({})).await;
    assert_eq!(status, 200, "{body}");

    let call = json!({"calleeUserIds": ["carol"], "type": "audio", "deviceId": "a1"});
    let (status, created) = post_json(node, "/v1/calls", "alice", call).await;
    assert_eq!(status, 201, "{created}");
    let cancel = format!(
        "/v1/calls/{}/cancel",
        created["call"]["callId"].as_str().unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let failed_line = r#"switchboard_push_failed_total{platform="android",provider="fcm",reason="UNREGISTERED"} 1"#;
    loop {
        let (_, metrics) = request(node, "GET", "/metrics", &[], "").await;
        if metrics.lines().any(|l| l == failed_line) {
            break;
        }
        assert!(Instant::now() < deadline, "no failed push:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = post_json(node, &cancel, "alice", json!({})).await;
    assert_eq!(status, 200, "{body}");

    // Prometheus has the calls as they happened.
    prometheus
        .wait_for_value(r#"switchboard_calls_ended_total{reason="completed"}"#, 1.0)
        .await;
    prometheus
        .wait_for_value(
            r#"switchboard_calls_ended_total{reason="caller_cancelled"}"#,
            1.0,
        )
        .await;
    prometheus
        .wait_for_value("sum(switchboard_calls_created_total)", 2.0)
        .await;
    prometheus
        .wait_for_value("switchboard_call_ring_to_ui_shown_seconds_count", 1.0)
        .await;
    prometheus
        .wait_for_value("switchboard_ice_connected_total", 2.0)
        .await;
    // Bob is in the `calling` cohort (on for everyone until set).
    prometheus
        .wait_for_value(
            r#"switchboard_rollout_callee_outcomes_total{flag="calling",cohort="on",outcome="connected"}"#,
            1.0,
        )
        .await;
    prometheus
        .wait_for_value(
            r#"sum(switchboard_push_delivered_total{provider="fcm",kind="ring"})"#,
            1.0,
        )
        .await;

    // Every rule evaluated, none with an error (a typo in a metric name
    // would evaluate fine: the export check below catches those).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rules = prometheus.get("/api/v1/rules").await;
        let all: Vec<&Value> = rules["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert_eq!(all.len(), alert_rules().len(), "{rules}");
        for rule in &all {
            assert_ne!(rule["health"], "err", "{rule}");
        }
        if all.iter().all(|r| r["health"] == "ok") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rules never all evaluated: {rules}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every metric a rule or a panel reads is exported, under that name,
    // and Prometheus runs every panel's query.
    let (_, metrics) = request(node, "GET", "/metrics", &[], "").await;
    let exported: std::collections::HashSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mut read = 0;
    for rule in alert_rules() {
        for name in metrics_read_by(rule["expr"].as_str().unwrap()) {
            assert!(
                exported.contains(name.as_str()),
                "{name} (read by {}) is not exported",
                rule.get("alert").unwrap_or(&rule["record"])
            );
            read += 1;
        }
    }
    assert!(read >= 15, "{read}");
    for (file, title, expr) in dashboard_queries().into_iter().chain(rollout_checks()) {
        for name in metrics_read_by(&expr) {
            assert!(
                exported.contains(name.as_str()),
                "{name} (read by {file}: {title}) is not exported"
            );
        }
        use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
        let path = format!(
            "/api/v1/query?query={}",
            utf8_percent_encode(&expr, NON_ALPHANUMERIC)
        );
        let (status, body) = request(prometheus.addr, "GET", &path, &[], "").await;
        assert_eq!(status, 200, "{file}: {title}: {expr}: {body}");
    }
    // Not the API's metrics: Prometheus' own view of the target.
    assert_eq!(
        prometheus
            .value_of(r#"count(up{job="switchboard"} == 1)"#)
            .await,
        Some(1.0)
    );
    server.shutdown().await;
}

#[test]
fn metric_names_are_read_from_expressions() {
    assert_eq!(
        metrics_read_by(
            "sum(rate(switchboard_a_total{x=\"switchboard_no\"}[5m])) / switchboard:b:ratio + switchboard_c_bucket"
        ),
        ["switchboard_a_total", "switchboard_c_bucket"]
    );
}
