//! `switchboard doctor` and `switchboard push-test`, run as an operator
//! runs them (the real binary, a TOML config), against the APNs and FCM
//! stand-ins (control's `tests/support`: they verify provider tokens and
//! OAuth assertions as Apple and Google do), a real `redis-server` and this
//! host's sockets. A good config passes every item; each broken item fails
//! alone, with a message that names it, and the exit code says so.

mod common;

#[path = "../../control/tests/support/mod.rs"]
mod push_support;
#[path = "../../control/tests/support/redis_server.rs"]
mod redis_server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::live::{free_port, scratch_dir};
use control::device::{Platform, PushTokens};
use control::store::Store;
use push_support::{apns, fcm};

/// The settings one run writes as TOML: `key = value` lines, then tables.
#[derive(Clone)]
struct Settings {
    top: BTreeMap<&'static str, String>,
    tables: BTreeMap<&'static str, BTreeMap<&'static str, String>>,
}

impl Settings {
    fn set(&mut self, key: &'static str, value: impl Into<String>) -> &mut Self {
        self.top.insert(key, value.into());
        self
    }

    fn set_in(
        &mut self,
        table: &'static str,
        key: &'static str,
        value: impl Into<String>,
    ) -> &mut Self {
        self.tables
            .entry(table)
            .or_default()
            .insert(key, value.into());
        self
    }

    fn toml(&self) -> String {
        let mut text = String::new();
        for (k, v) in &self.top {
            text += &format!("{k} = {v}\n");
        }
        for (table, entries) in &self.tables {
            text += &format!("\n[{table}]\n");
            for (k, v) in entries {
                text += &format!("{k} = {v}\n");
            }
        }
        text
    }
}

fn quoted(s: impl AsRef<str>) -> String {
    format!("{:?}", s.as_ref())
}

fn path_value(p: &Path) -> String {
    quoted(p.to_string_lossy())
}

/// Stand-ins and files a good config names; alive for the whole test.
struct World {
    apns: apns::FakeApns,
    fcm: fcm::FakeFcm,
    dir: PathBuf,
    good: Settings,
}

impl World {
    async fn start() -> World {
        let apns = apns::FakeApns::start().await;
        let fcm = fcm::FakeFcm::start().await;
        let dir = scratch_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("apns.p8"), &apns.key_pem).unwrap();
        std::fs::write(dir.join("service-account.json"), &fcm.service_account_json).unwrap();
        // Both stand-ins' certificates: one file of roots.
        let mut roots = apns.server.ca_pem.clone();
        roots.extend_from_slice(&fcm.server.ca_pem);
        std::fs::write(dir.join("roots.pem"), roots).unwrap();
        let mut good = Settings {
            top: BTreeMap::new(),
            tables: BTreeMap::new(),
        };
        good.set("http_listen", quoted(format!("127.0.0.1:{}", free_port())))
            .set("rtc_udp_bind", quoted(format!("127.0.0.1:{}", free_port())))
            .set("announce_ips", "[\"127.0.0.1\"]")
            .set(
                "call_token_secret",
                quoted("doctor-test-secret-doctor-test-secret-1"),
            )
            .set("data_dir", path_value(&dir.join("data")))
            .set("push_extra_root_cert", path_value(&dir.join("roots.pem")))
            .set_in("apns", "key_file", path_value(&dir.join("apns.p8")))
            .set_in("apns", "key_id", quoted(apns::KEY_ID))
            .set_in("apns", "team_id", quoted(apns::TEAM_ID))
            .set_in("apns", "bundle_id", quoted(apns::BUNDLE_ID))
            .set_in("apns", "sandbox_url", quoted(&apns.server.url))
            .set_in("apns", "production_url", quoted(&apns.server.url))
            .set_in(
                "fcm",
                "service_account_file",
                path_value(&dir.join("service-account.json")),
            )
            .set_in("fcm", "url", quoted(&fcm.server.url))
            .set_in(
                "turn",
                "udp_listen",
                quoted(format!("127.0.0.1:{}", free_port())),
            )
            .set_in(
                "turn",
                "tcp_listen",
                quoted(format!("127.0.0.1:{}", free_port())),
            )
            .set_in(
                "turn",
                "secrets",
                "[\"doctor-turn-secret-doctor-turn-secret-1\"]",
            );
        World {
            apns,
            fcm,
            dir,
            good,
        }
    }

    /// Runs `switchboard <args> --config <settings>`: success and stdout.
    async fn run(&self, settings: &Settings, args: &[&str]) -> (bool, String) {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = self.dir.join(format!("config-{n}.toml"));
        std::fs::write(&file, settings.toml()).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command.args(args).arg("--config").arg(&file);
        // Only the file speaks: no SWITCHBOARD_* from whoever runs the tests.
        for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("SWITCHBOARD_")) {
            command.env_remove(name);
        }
        let what = format!("switchboard-{}-{n}", args[0]);
        tokio::task::spawn_blocking(move || {
            common::process::run_bounded(command, &what, Duration::from_secs(60))
        })
        .await
        .unwrap()
    }

    /// `doctor`'s verdict per item (an item may repeat: `announced ip`).
    async fn doctor(&self, settings: &Settings) -> (bool, Vec<(String, String, String)>, String) {
        let (ok, out) = self.run(settings, &["doctor"]).await;
        let items = out
            .lines()
            .filter_map(|line| {
                let (verdict, rest) = line.split_once("  ")?;
                if !["PASS", "WARN", "FAIL", "SKIP"].contains(&verdict) {
                    return None;
                }
                let item = rest.get(..12)?.trim().to_string();
                let detail = rest.get(12..).unwrap_or_default().trim().to_string();
                Some((verdict.to_string(), item, detail))
            })
            .collect();
        (ok, items, out)
    }
}

fn verdict_of<'a>(items: &'a [(String, String, String)], item: &str) -> (&'a str, &'a str) {
    items
        .iter()
        .find(|(_, i, _)| i == item)
        .map(|(v, _, d)| (v.as_str(), d.as_str()))
        .unwrap_or_else(|| panic!("no {item} in {items:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_a_good_config_and_fails_each_broken_item_alone() {
    let world = World::start().await;
    let (ok, items, out) = world.doctor(&world.good).await;
    assert!(ok, "a good config passes:\n{out}");
    for item in [
        "config",
        "secrets",
        "apns",
        "fcm",
        "turn udp",
        "turn tcp",
        "media udp",
        "http",
        "store",
    ] {
        assert_eq!(verdict_of(&items, item).0, "PASS", "{item}:\n{out}");
    }
    // Loopback works here, but nobody else could reach it.
    assert_eq!(verdict_of(&items, "announced ip").0, "WARN", "{out}");
    assert!(!items.iter().any(|(v, _, _)| v == "FAIL"), "{out}");
    assert!(
        world
            .fcm
            .state
            .token_requests
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "the OAuth token was really fetched"
    );

    // A key the stand-in does not know, for the FCM service account.
    let foreign_account = world.fcm.service_account_json.replace("@", "-impostor@");
    std::fs::write(world.dir.join("foreign-account.json"), foreign_account).unwrap();
    std::fs::write(
        world.dir.join("not-a-key.p8"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let held_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let held_udp_addr = quoted(held_udp.local_addr().unwrap().to_string());
    let dead_redis = format!("redis://127.0.0.1:{}/0", free_port());

    type Break = Box<dyn Fn(&mut Settings)>;
    let cases: Vec<(&str, &str, Break)> = vec![
        (
            "secrets",
            "call_token_secret",
            Box::new(|s: &mut Settings| {
                s.set("call_token_secret", quoted("short"));
            }),
        ),
        (
            "config",
            "log_format",
            Box::new(|s: &mut Settings| {
                s.set("log_format", quoted("xml"));
            }),
        ),
        (
            "apns",
            "not a PKCS#8 P-256",
            Box::new({
                let key = world.dir.join("not-a-key.p8");
                move |s: &mut Settings| {
                    s.set_in("apns", "key_file", path_value(&key));
                }
            }),
        ),
        (
            "apns",
            "10-character",
            Box::new(|s: &mut Settings| {
                s.set_in("apns", "key_id", quoted("ABC"));
            }),
        ),
        (
            "fcm",
            "no OAuth token",
            Box::new({
                let account = world.dir.join("foreign-account.json");
                move |s: &mut Settings| {
                    s.set_in("fcm", "service_account_file", path_value(&account));
                }
            }),
        ),
        (
            "turn udp",
            "in use",
            Box::new({
                let addr = held_udp_addr.clone();
                move |s: &mut Settings| {
                    s.set_in("turn", "udp_listen", addr.clone());
                }
            }),
        ),
        (
            "media udp",
            "in use",
            Box::new({
                let addr = held_udp_addr.clone();
                move |s: &mut Settings| {
                    s.set("rtc_udp_bind", addr.clone());
                }
            }),
        ),
        (
            "announced ip",
            "not an address of this host",
            Box::new(|s: &mut Settings| {
                // TEST-NET-3: never an address of this host.
                s.set("announce_ips", "[\"203.0.113.7\"]");
            }),
        ),
        (
            "redis",
            "127.0.0.1",
            Box::new({
                let url = dead_redis.clone();
                move |s: &mut Settings| {
                    s.set("redis_url", quoted(&url));
                }
            }),
        ),
    ];
    for (item, says, break_it) in &cases {
        let mut settings = world.good.clone();
        break_it(&mut settings);
        let (ok, items, out) = world.doctor(&settings).await;
        assert!(!ok, "{item} broken must exit non-zero:\n{out}");
        let (verdict, detail) = verdict_of(&items, item);
        assert_eq!(verdict, "FAIL", "{item}:\n{out}");
        assert!(detail.contains(says), "{item} says why ({says}):\n{out}");
        let failed: Vec<&str> = items
            .iter()
            .filter(|(v, _, _)| v == "FAIL")
            .map(|(_, i, _)| i.as_str())
            .collect();
        assert_eq!(failed, [*item], "only {item} fails:\n{out}");
    }

    // A config that does not parse: the one item, failed.
    let mut unparsable = world.good.clone();
    unparsable.set("no_such_setting", "1");
    let (ok, items, out) = world.doctor(&unparsable).await;
    assert!(!ok);
    assert_eq!(items.len(), 1, "{out}");
    assert_eq!(verdict_of(&items, "config").0, "FAIL");
    assert!(out.contains("no_such_setting"), "{out}");

    // Behind 1:1 NAT, as documented: a public address that is not ours.
    let mut nat = world.good.clone();
    nat.set("announce_ips", "[\"203.0.113.7\"]")
        .set("announce_behind_nat", "true");
    let (ok, items, out) = world.doctor(&nat).await;
    assert!(ok, "{out}");
    assert_eq!(verdict_of(&items, "announced ip").0, "PASS", "{out}");

    // A cluster's Redis that answers.
    let redis = redis_server::RedisServer::start();
    let mut cluster = world.good.clone();
    cluster.set("redis_url", quoted(redis.url()));
    let (ok, items, out) = world.doctor(&cluster).await;
    assert!(ok, "{out}");
    assert_eq!(verdict_of(&items, "redis").0, "PASS", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_test_sends_a_flagged_test_ring_and_prints_the_providers_answer() {
    let world = World::start().await;
    let data = world.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    {
        let store = control::store::SqliteStore::open(&data.join("control.db")).unwrap();
        push_support::register_bob(&store);
        store
            .upsert_device(&push_support::device(
                "carol",
                "old-iphone",
                Platform::Ios,
                PushTokens {
                    apns_voip: Some("c3".repeat(32)),
                    ..PushTokens::default()
                },
            ))
            .unwrap();
    }
    world
        .apns
        .state
        .unregistered
        .lock()
        .unwrap()
        .insert("c3".repeat(32));

    let push_test = |user: &'static str, device: &'static str| {
        let world = &world;
        async move {
            world
                .run(
                    &world.good,
                    &["push-test", "--user", user, "--device", device],
                )
                .await
        }
    };
    // The iPhone: its VoIP token, as a ring goes, flagged test.
    let (ok, out) = push_test("bob", "iphone").await;
    assert!(ok, "{out}");
    assert!(
        out.contains("apns (apnsVoip token, sandbox environment) accepted"),
        "{out}"
    );
    let pushed = world.apns.accepted_for(push_support::IPHONE_VOIP);
    assert_eq!(pushed.len(), 1, "{out}");
    assert_eq!(pushed[0].headers["apns-push-type"], "voip");
    assert_eq!(pushed[0].body["event"], "incoming_call");
    assert_eq!(pushed[0].body["test"], true);
    assert_eq!(pushed[0].body["callerDisplayName"], "Switchboard push test");
    assert!(
        out.contains(pushed[0].body["callId"].as_str().unwrap()),
        "{out}"
    );
    // What the phone's core makes of it: shown, then ended at once.
    let decision =
        native::push::classify_push(pushed[0].body.to_string(), push_support::now_ms(), Some(0));
    assert!(
        matches!(decision, native::push::PushDecision::ReportAndEnd { .. }),
        "{decision:?}"
    );

    // The Pixel: FCM, data values as strings.
    let (ok, out) = push_test("bob", "pixel").await;
    assert!(ok, "{out}");
    assert!(out.contains("fcm (fcm token) accepted"), "{out}");
    let sent = world.fcm.accepted_for(push_support::PIXEL_FCM);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["data"]["test"], "true", "{}", sent[0]);

    // A dead token: reported, and left in the registry.
    let (ok, out) = push_test("carol", "old-iphone").await;
    assert!(!ok, "{out}");
    assert!(out.contains("the token is dead (Unregistered)"), "{out}");
    let store = control::store::SqliteStore::open(&data.join("control.db")).unwrap();
    let carol = store.devices_of("carol").unwrap();
    assert_eq!(
        carol[0].push.apns_voip.as_deref(),
        Some("c3".repeat(32).as_str())
    );

    // Nothing to push to, and nobody by that name.
    let (ok, out) = push_test("bob", "laptop").await;
    assert!(!ok && out.contains("web device"), "{out}");
    let (ok, out) = push_test("bob", "tablet").await;
    assert!(!ok && out.contains("no registered device tablet"), "{out}");
    assert_eq!(world.apns.accepted_for(push_support::IPHONE_VOIP).len(), 1);
}
