//! The relay against coturn's own test client: `turnutils_uclient` (Debian
//! `coturn`) allocates with credentials minted by `turn::credentials`
//! (passed as `-u`/`-w`), relays to `turnutils_peer` (an echo peer) and
//! reports loss. Everything on 127.0.0.1; the loopback peer needs the
//! allow-list, and without it the permission is refused.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::process::Command;
use turn::credentials;
use turn::metrics::TurnMetrics;
use turn::peers::PeerRules;
use turn::relay::RelayConfig;
use turn::server::{RunningTurn, TurnServerConfig, start};

const SECRET: &str = "turn-test-secret-turn-test-secret";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn relay(allowed: &[&str], registry: &prometheus::Registry) -> RunningTurn {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "turn=info,turn_server_proto=warn".into()),
        )
        .with_test_writer()
        .try_init();
    // The default layout: UDP and TCP on one port (3478 in production), so
    // answers must leave by the transport their request came in on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let config = TurnServerConfig {
        udp_listen: Some(listen),
        tcp_listen: Some(listen),
        tls: None,
        relay_ip: "127.0.0.1".parse().unwrap(),
        relay: RelayConfig {
            realm: "switchboard".into(),
            secrets: vec!["an-old-secret".into(), SECRET.into()],
            peers: PeerRules::new(vec![], allowed.iter().map(|n| n.parse().unwrap()).collect()),
            max_allocation_lifetime: Duration::from_secs(3 * 3600),
            allocations_per_user: 10,
            max_allocations: 1000,
            bandwidth_per_allocation: 0,
        },
    };
    let metrics = Arc::new(TurnMetrics::register(registry).unwrap());
    let turn = start(config, Some(metrics)).await.unwrap();
    assert_eq!(turn.udp_addr, turn.tcp_addr);
    turn
}

fn metrics_text(registry: &prometheus::Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap()
}

/// `turnutils_peer` on a free UDP port of 127.0.0.1.
fn echo_peer() -> (tokio::process::Child, u16) {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("turnutils_peer (Debian coturn; ./scripts/test installs it)");
    (child, port)
}

struct Report {
    sent: u64,
    lost: u64,
    output: String,
}

async fn uclient(
    server: SocketAddr,
    peer_port: u16,
    username: &str,
    password: &str,
    extra: &[&str],
) -> Report {
    let mut args = vec![
        "-u".to_string(),
        username.into(),
        "-w".into(),
        password.into(),
        "-p".into(),
        server.port().to_string(),
        "-e".into(),
        "127.0.0.1".into(),
        "-r".into(),
        peer_port.to_string(),
        "-n".into(),
        "200".into(),
        "-l".into(),
        "120".into(),
        "-m".into(),
        "2".into(),
        "-c".into(),
        "-z".into(),
        "5".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(server.ip().to_string());
    let run = Command::new("turnutils_uclient")
        .args(&args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("uclient finishes within a minute")
        .expect("turnutils_uclient runs");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let number_after = |label: &str| {
        output.lines().rev().find_map(|l| {
            let rest = &l[l.find(label)? + label.len()..];
            rest.split_whitespace()
                .next()?
                .trim_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
    };
    Report {
        sent: number_after("tot_send_msgs=").unwrap_or(0),
        lost: number_after("Total lost packets").unwrap_or(u64::MAX),
        output,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturns_client_relays_over_udp_and_tcp_without_loss() {
    let registry = prometheus::Registry::new();
    let turn = relay(&["127.0.0.1/32"], &registry).await;
    let (_peer, peer_port) = echo_peer();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cred = credentials::mint(SECRET, "alice", unix_now() + 600);
    for (name, server, extra) in [
        ("udp", turn.udp_addr.unwrap(), vec![]),
        ("udp-send", turn.udp_addr.unwrap(), vec!["-s"]),
        ("tcp", turn.tcp_addr.unwrap(), vec!["-t"]),
    ] {
        let report = uclient(server, peer_port, &cred.username, &cred.password, &extra).await;
        println!("[{name}] sent {} lost {}", report.sent, report.lost);
        assert_eq!(report.sent, 400, "{name}: {}", report.output);
        assert_eq!(report.lost, 0, "{name}: {}", report.output);
    }
    // 3 runs x 2 clients x 200 messages, each way, 120 bytes each.
    let text = metrics_text(&registry);
    for direction in ["to_peer", "to_client"] {
        let packets =
            format!("switchboard_turn_relayed_packets_total{{direction=\"{direction}\"}} 1200");
        let bytes =
            format!("switchboard_turn_relayed_bytes_total{{direction=\"{direction}\"}} 144000");
        assert!(text.contains(&packets) && text.contains(&bytes), "{text}");
    }
    turn.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_or_wrong_credentials_get_401_and_an_unlisted_peer_gets_403() {
    let registry = prometheus::Registry::new();
    let (_peer, peer_port) = echo_peer();
    let turn = relay(&["127.0.0.1/32"], &registry).await;
    let server = turn.udp_addr.unwrap();
    let expired = credentials::mint(SECRET, "alice", unix_now() - 1);
    let fresh = credentials::mint(SECRET, "alice", unix_now() + 600);
    for (username, password) in [
        (&expired.username, expired.password.as_str()),
        (&fresh.username, "not-the-password"),
    ] {
        let report = uclient(server, peer_port, username, password, &["-v"]).await;
        assert_eq!(report.sent, 0, "{}", report.output);
        assert!(
            report.output.contains("Cannot complete Allocation"),
            "{}",
            report.output
        );
    }
    // uclient does not print the code; our counters move only when we answer 401.
    let text = metrics_text(&registry);
    for reason in ["expired", "bad_password"] {
        // Every reason is exported from the start: the count must move.
        let prefix = format!("switchboard_turn_allocation_failures_total{{reason=\"{reason}\"}} ");
        let refused = text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse::<u64>().ok());
        assert!(refused.is_some_and(|n| n >= 1), "{text}");
    }
    assert!(
        text.contains("switchboard_turn_allocations_created_total 0"),
        "{text}"
    );
    turn.shutdown();

    // The same loopback peer without an allow-list entry: refused.
    let registry = prometheus::Registry::new();
    let turn = relay(&[], &registry).await;
    let report = uclient(
        turn.udp_addr.unwrap(),
        peer_port,
        &fresh.username,
        &fresh.password,
        &["-v"],
    )
    .await;
    assert!(
        report.output.contains("error 403 (Forbidden)"),
        "{}",
        report.output
    );
    let text = metrics_text(&registry);
    assert!(
        !text.contains("switchboard_turn_permission_denied_total 0"),
        "{text}"
    );
    assert!(
        text.contains("switchboard_turn_relayed_packets_total{direction=\"to_peer\"} 0\n"),
        "{text}"
    );
    turn.shutdown();
}
