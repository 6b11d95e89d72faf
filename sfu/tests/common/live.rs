//! Runs a `Bot` against a real server: its two UDP sockets on 127.0.0.1 and
//! the signaling WebSocket, for a bounded time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sfu::config::Config;
use sfu::server::Running;
use tokio::net::UdpSocket;

use loadtest::bot::Bot;

pub async fn start_server() -> Running {
    start_server_with(|_| {}).await
}

pub async fn start_server_with(adjust: impl FnOnce(&mut Config)) -> Running {
    start_server_with_push(adjust, Arc::new(control::ringing::LoggingPushSender)).await
}

pub async fn start_server_with_push(
    adjust: impl FnOnce(&mut Config),
    push: Arc<dyn control::ringing::PushSender>,
) -> Running {
    sfu::server::start_with_push(test_config(adjust), Some(push))
        .await
        .expect("server starts")
}

/// Pushes Android devices through an FCM stand-in (control's
/// `tests/support/fcm.rs`) at `url`: its service account and the CA of its
/// certificate are written to a scratch directory and named in `config`.
pub fn push_through_fcm_stand_in(
    config: &mut Config,
    url: &str,
    service_account_json: &str,
    ca_pem: &[u8],
) {
    let files = scratch_dir();
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("service-account.json"), service_account_json).unwrap();
    std::fs::write(files.join("test-ca.pem"), ca_pem).unwrap();
    config.fcm = Some(sfu::config::FcmSettings {
        service_account_file: files.join("service-account.json"),
        project_id: None,
        url: url.to_string(),
    });
    config.push_extra_root_cert = Some(files.join("test-ca.pem"));
}

/// The server with the push providers its config names (as in production).
pub async fn start_server_with_configured_push(adjust: impl FnOnce(&mut Config)) -> Running {
    sfu::server::start_with_push(test_config(adjust), None)
        .await
        .expect("server starts")
}

fn test_config(adjust: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config {
        http_listen: "127.0.0.1:0".parse().unwrap(),
        rtc_udp_bind: "127.0.0.1:0".parse().unwrap(),
        announce_ips: vec!["127.0.0.1".parse().unwrap()],
        engine_threads: 2,
        call_token_secret: "live-test-secret-live-test-secret".into(),
        data_dir: scratch_dir(),
        // The race tests send bursts of 50; the rate-limit test lowers these.
        api_requests_per_second: 1_000,
        call_creates_per_minute: 1_000,
        calls_to_one_user_per_minute: 1_000,
        // Parallel tests: ephemeral TURN ports.
        turn: sfu::config::TurnSettings {
            udp_listen: Some("127.0.0.1:0".parse().unwrap()),
            tcp_listen: Some("127.0.0.1:0".parse().unwrap()),
            // Shared by the nodes of a test's cluster, as a deployment's must.
            secrets: vec!["live-turn-secret-live-turn-secret-live".into()],
            ..Default::default()
        },
        api_keys: vec![control::auth::ApiKey {
            id: API_KEY_ID.into(),
            secret: API_KEY_SECRET.into(),
            revoked: false,
        }],
        ..Config::default()
    };
    adjust(&mut config);
    config
}

pub const API_KEY_ID: &str = "test-key";
pub const API_KEY_SECRET: &str = "test-key-secret-test-key-secret-test";

/// `Authorization` for the API key alone (operator routes).
pub fn operator_auth() -> String {
    use base64::Engine as _;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{API_KEY_ID}:{API_KEY_SECRET}"));
    format!("Basic {basic}")
}

/// A fresh directory under the system temp dir for one server's store.
pub fn scratch_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "switchboard-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A call grant for participant `p-<name>` (user `user-<name>`) in `room`,
/// with every permission.
pub fn grant(room: &str, name: &str) -> control::call_token::CallGrant {
    control::call_token::CallGrant {
        call_id: room.into(),
        user_id: format!("user-{name}"),
        participant_id: format!("p-{name}"),
        permissions: signaling::Permissions::ALL,
        group: false,
        node: None,
        device: None,
    }
}

/// A user access token as the app backend would mint it.
pub fn user_token(user: &str) -> String {
    let key = control::auth::ApiKey {
        id: API_KEY_ID.into(),
        secret: API_KEY_SECRET.into(),
        revoked: false,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    control::auth::mint_user_token(&key, user, Duration::from_secs(600), now)
}

pub fn ws_url(server: &Running) -> String {
    format!("ws://{}/v1/rtc", server.http_addr)
}

pub fn api_key() -> control::auth::ApiKey {
    control::auth::ApiKey {
        id: API_KEY_ID.into(),
        secret: API_KEY_SECRET.into(),
        revoked: false,
    }
}

/// Joins with `token`, publishes, and runs for `duration`; returns the bot
/// with everything it received.
pub async fn run_bot(name: &str, url: &str, token: String, duration: Duration) -> Bot {
    loadtest::runner::run_bot(loadtest::runner::BotPlan {
        name: name.into(),
        server: loadtest::runner::Server::Switchboard {
            url: url.into(),
            token,
        },
        local_ip: "127.0.0.1".parse().unwrap(),
        publish: true,
        media: Default::default(),
        until: Instant::now() + duration,
        record: true,
        drop_every: None,
        progress: None,
        simulcast: false,
        quality: None,
    })
    .await
    .expect("the bot runs")
}

/// The real `switchboard` binary as a child process, killed on drop.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub http: SocketAddr,
}

impl Drop for ServerProcess {
    /// Never leave a server running, whatever the test did.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const PROCESS_CALL_TOKEN_SECRET: &str = "process-test-secret-process-test-secret";

/// A port nothing listens on now (TCP or UDP), never handed out twice in
/// this process, and below the kernel's ephemeral range: a port taken from
/// that range could be handed by the kernel to any socket bound to port 0
/// (another test's server, its TURN relays) between our release and our
/// server's bind, and the test would then talk to someone else's server.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000u16.min(ephemeral_start / 2);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = rand::random_range(low..ephemeral_start);
        if given.contains(&port) {
            continue;
        }
        let free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free {
            given.push(port);
            return port;
        }
    }
    panic!("no fresh port in 1000 tries");
}

/// Starts `switchboard` on loopback (API key, call-token secret
/// [`PROCESS_CALL_TOKEN_SECRET`], ephemeral TURN ports), plus `env`; waits
/// until it listens.
pub async fn spawn_switchboard(
    data_dir: &std::path::Path,
    http_port: u16,
    udp_port: u16,
    env: &[(&str, &str)],
) -> ServerProcess {
    spawn_switchboard_under(&[], data_dir, http_port, udp_port, env).await
}

/// [`spawn_switchboard`], started through `wrapper` (e.g. `prlimit
/// --nofile=1024:1024 --`), which must exec the server in its own process.
pub async fn spawn_switchboard_under(
    wrapper: &[&str],
    data_dir: &std::path::Path,
    http_port: u16,
    udp_port: u16,
    env: &[(&str, &str)],
) -> ServerProcess {
    spawn_switchboard_with(
        Spawn {
            wrapper,
            ..Spawn::default()
        },
        data_dir,
        (http_port, udp_port),
        env,
    )
    .await
}

/// How [`spawn_switchboard_with`] starts the server, beyond its ports.
#[derive(Default)]
pub struct Spawn<'a> {
    /// A command that execs the server in its own process.
    pub wrapper: &'a [&'a str],
    /// Arguments after the binary (`--config path`).
    pub args: &'a [&'a str],
    /// Where its stdout (the log) goes; none: discarded.
    pub stdout: Option<std::fs::File>,
}

/// [`spawn_switchboard`] as `how` says.
pub async fn spawn_switchboard_with(
    how: Spawn<'_>,
    data_dir: &std::path::Path,
    (http_port, udp_port): (u16, u16),
    env: &[(&str, &str)],
) -> ServerProcess {
    let Spawn {
        wrapper,
        args,
        stdout,
    } = how;
    let binary = env!("CARGO_BIN_EXE_switchboard");
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = std::process::Command::new(program);
            c.args(args).arg(binary);
            c
        }
        None => std::process::Command::new(binary),
    };
    command.args(args);
    command
        .env("SWITCHBOARD_HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
        .env("SWITCHBOARD_RTC_UDP_BIND", format!("127.0.0.1:{udp_port}"))
        .env("SWITCHBOARD_ANNOUNCE_IPS", "127.0.0.1")
        .env("SWITCHBOARD_TURN_UDP_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_TURN_TCP_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_DATA_DIR", data_dir)
        .env(
            "SWITCHBOARD_API_KEY",
            format!("{API_KEY_ID}:{API_KEY_SECRET}"),
        )
        .env("SWITCHBOARD_CALL_TOKEN_SECRET", PROCESS_CALL_TOKEN_SECRET)
        // Nodes of one test's cluster share it, as a deployment's must.
        .env(
            "SWITCHBOARD_TURN_SECRET",
            "process-turn-secret-process-turn-secret",
        )
        .env("RUST_LOG", "warn")
        .stdout(stdout.map_or_else(std::process::Stdio::null, Into::into));
    for (k, v) in env {
        command.env(k, v);
    }
    let mut server = ServerProcess {
        child: command.spawn().expect("switchboard starts"),
        http: format!("127.0.0.1:{http_port}").parse().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        // Our own child must be the one listening: a server that could not
        // bind exits, and another process may hold the port.
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("switchboard exited at start ({status}); see its stderr above");
        }
        if tokio::net::TcpStream::connect(server.http).await.is_ok() {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("switchboard did not listen on {}", server.http);
}

/// Sends `count` datagrams of garbage to `target` from a fresh socket.
pub async fn flood_garbage(target: SocketAddr, count: usize) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for n in 0..count {
        let len = (n * 37) % 1200 + 1;
        let garbage: Vec<u8> = (0..len).map(|i| (i * 31 + n) as u8).collect();
        let _ = socket.send_to(&garbage, target).await;
        if n % 200 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// A bare HTTP/1.0 request (keeps test dependencies down); returns status and body.
pub async fn http(server: &Running, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(server, method, path, &[], body).await
}

/// One series' value in the server's `/metrics` (its name with labels,
/// as exported: labels sorted); panics when it is not exported.
pub async fn series(server: &Running, series: &str) -> f64 {
    let (_, metrics) = http(server, "GET", "/metrics", "").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{series} is not exported"))
}

/// POST `body` as JSON with `user`'s access token: status and JSON answer.
pub async fn post_as(
    server: &Running,
    path: &str,
    user: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    post_json(server.http_addr, path, user, body).await
}

/// [`post_as`] to a server at `addr` (a process as well as an in-process one).
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    user: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {}", user_token(user));
    let (status, text) = request(
        addr,
        "POST",
        path,
        &[("Authorization", &auth)],
        &body.to_string(),
    )
    .await;
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (status, json)
}

pub async fn http_with(
    server: &Running,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    request(server.http_addr, method, path, headers, body).await
}

/// One HTTP/1.0 request to `addr`: status and body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let (status, response) = raw_request(addr, method, path, headers, body).await;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// One HTTP/1.0 request to `addr`: status and the whole response.
pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .filter(|(_, v)| !v.is_empty() && *v != "Bearer ")
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: x\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// A 1:1 video call as the apps make it, answered and talked on: alice
/// (web device `alice-web`) calls bob (Android `bob-phone`, FCM token
/// `bob_fcm`); once `pushed()` says bob's phone got its push, it acks
/// (call UI shown) and accepts, and both talk through str0m bots for 2 s
/// (media checked). The call is left connected.
pub struct AnsweredCall {
    pub call_id: String,
    /// `POST /v1/calls`'s answer (alice's call token).
    pub created: serde_json::Value,
    /// The accept's answer (bob's call token).
    pub accepted: serde_json::Value,
}

pub async fn answered_video_call(
    node: SocketAddr,
    bob_fcm: &str,
    pushed: impl Fn() -> bool,
) -> AnsweredCall {
    use serde_json::json;
    for (user, device) in [
        ("alice", json!({"deviceId": "alice-web", "platform": "web"})),
        (
            "bob",
            json!({"deviceId": "bob-phone", "platform": "android", "push": {"fcm": bob_fcm}}),
        ),
    ] {
        let (status, body) = post_json(node, "/v1/devices", user, device).await;
        assert_eq!(status, 200, "{body}");
    }
    let call = json!({"calleeUserIds": ["bob"], "type": "video", "deviceId": "alice-web"});
    let (status, created) = post_json(node, "/v1/calls", "alice", call).await;
    assert_eq!(status, 201, "{created}");
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pushed() {
        assert!(Instant::now() < deadline, "bob's phone was never pushed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bob_phone = json!({"deviceId": "bob-phone"});
    let ack = format!("/v1/calls/{call_id}/ack");
    let (status, body) = post_json(node, &ack, "bob", bob_phone.clone()).await;
    assert_eq!(status, 200, "{body}");
    let accept = format!("/v1/calls/{call_id}/accept");
    let (status, accepted) = post_json(node, &accept, "bob", bob_phone).await;
    assert_eq!(status, 200, "{accepted}");
    // A cluster names the room's node; one node is its own.
    let url = created["rtcUrl"]
        .as_str()
        .map_or_else(|| format!("ws://{node}/v1/rtc"), str::to_string);
    let talk = Duration::from_secs(2);
    let token = |answer: &serde_json::Value| answer["callToken"].as_str().unwrap().to_string();
    let (a, b) = tokio::join!(
        run_bot("alice", &url, token(&created), talk),
        run_bot("bob", &url, token(&accepted), talk),
    );
    assert!(a.received_from(b.participant_id.as_deref().unwrap()) > 20);
    AnsweredCall {
        call_id,
        created,
        accepted,
    }
}
