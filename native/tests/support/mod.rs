//! What the native tests share: an in-process `switchboard` with a known
//! API key, user tokens minted with it, and bounded waits.

#![allow(dead_code)] // each test binary uses its own part

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const KEY_ID: &str = "native-test-key";
const KEY_SECRET: &str = "native-test-key-secret-native-test";

fn key() -> control::auth::ApiKey {
    control::auth::ApiKey {
        id: KEY_ID.into(),
        secret: KEY_SECRET.into(),
        revoked: false,
    }
}

/// A user token as the app's backend would issue it.
pub fn token(user: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    control::auth::mint_user_token(&key(), user, Duration::from_secs(600), now)
}

pub struct TestServer {
    pub server: sfu::server::Running,
    pub base: String,
    dir: std::path::PathBuf,
}

/// A switchboard on loopback with its own data directory (`name` keeps
/// test binaries apart).
pub async fn start_server(name: &str) -> TestServer {
    let dir = std::env::temp_dir().join(format!("native-{name}-{}", std::process::id()));
    let config = sfu::config::Config {
        http_listen: "127.0.0.1:0".parse().unwrap(),
        rtc_udp_bind: "127.0.0.1:0".parse().unwrap(),
        announce_ips: vec!["127.0.0.1".parse().unwrap()],
        engine_threads: 1,
        data_dir: dir.clone(),
        api_keys: vec![key()],
        turn: sfu::config::TurnSettings {
            enabled: false,
            ..Default::default()
        },
        ..Default::default()
    };
    let server = sfu::server::start(config).await.unwrap();
    let base = format!("http://{}", server.http_addr);
    TestServer { server, base, dir }
}

impl TestServer {
    pub async fn stop(self) {
        self.server.shutdown().await;
        let _ = std::fs::remove_dir_all(self.dir);
    }
}

/// The runtime a test's server and clients run on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Polls `check` every 20 ms until it returns something or `limit` passes.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
