//! What an idle, authenticated device events socket costs the real server:
//! a thousand of them through `switchboard-loadtest idle` (BENCHMARKS.md has
//! the 100,000-socket run). With tungstenite's default 128 KiB read buffer
//! each cost ~135 KiB; now ~11 KiB.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const API_KEY: &str = "idle:idle-key-secret-idle-key-secret-0123";
/// Four times what was measured (debug build), far under the old cost.
const MAX_BYTES_PER_SOCKET: u64 = 48 * 1024;

/// The server process, killed when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn an_idle_events_socket_costs_the_server_little_memory() {
    let loadtest = Path::new(env!("CARGO_BIN_EXE_switchboard-loadtest"));
    let binary = loadtest.with_file_name("switchboard");
    assert!(binary.exists(), "{} is not built", binary.display());
    let data = std::env::temp_dir().join(format!("switchboard-idle-{}", std::process::id()));
    let http = format!("127.0.0.1:{}", free_port());
    let server = Server(
        Command::new(&binary)
            .env("SWITCHBOARD_HTTP_LISTEN", &http)
            .env(
                "SWITCHBOARD_RTC_UDP_BIND",
                format!("127.0.0.1:{}", free_port()),
            )
            .env("SWITCHBOARD_ANNOUNCE_IPS", "127.0.0.1")
            .env("SWITCHBOARD_TURN_ENABLED", "false")
            .env("SWITCHBOARD_API_KEY", API_KEY)
            .env("SWITCHBOARD_API_REQUESTS_PER_SECOND", "100000")
            .env("SWITCHBOARD_DATA_DIR", &data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("switchboard starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(&http).is_err() {
        assert!(Instant::now() < deadline, "switchboard did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = data.join("idle.json");
    let status = Command::new(loadtest)
        .args(["idle", "--sockets", "1000", "--sources", "2"])
        .args(["--url", &format!("http://{http}")])
        .args(["--server-pid", &server.0.id().to_string()])
        .arg("--json")
        .arg(&report)
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .status()
        .expect("the load test runs");
    assert!(status.success(), "not every socket opened");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let per_socket = report["server_bytes_per_socket"].as_u64().unwrap();
    println!("{report}");
    assert!(
        per_socket > 0 && per_socket < MAX_BYTES_PER_SOCKET,
        "an idle events socket costs the server {per_socket} bytes"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
}
