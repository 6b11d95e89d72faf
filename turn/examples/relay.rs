//! The relay alone, for benchmarks against coturn (`turn/bench/`): no SFU,
//! no call control, so its CPU time is the relay's.
//!
//!   TURN_LISTEN=127.0.0.1:3478 TURN_SECRET=... TURN_ALLOW=127.0.0.1/32 \
//!     cargo run --release -p turn --example relay

use std::time::Duration;

use turn::peers::PeerRules;
use turn::relay::RelayConfig;
use turn::server::{TurnServerConfig, start};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

// The relay runs on a thread of its own; this runtime only waits for ctrl-c.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let listen = env("TURN_LISTEN", "127.0.0.1:3478")
        .parse()
        .expect("TURN_LISTEN: ip:port");
    let allowed = env("TURN_ALLOW", "127.0.0.1/32")
        .split(',')
        .map(|n| n.trim().parse().expect("TURN_ALLOW: CIDRs"))
        .collect();
    let config = TurnServerConfig {
        udp_listen: Some(listen),
        tcp_listen: Some(listen),
        tls: None,
        relay_ip: listen.ip(),
        relay: RelayConfig {
            realm: "switchboard".into(),
            secrets: vec![env("TURN_SECRET", "bench-secret")],
            peers: PeerRules::new(vec![], allowed),
            max_allocation_lifetime: Duration::from_secs(4 * 3600),
            allocations_per_user: 1000,
            max_allocations: 10_000,
            bandwidth_per_allocation: 0,
        },
    };
    let running = start(config, None).await.expect("relay starts");
    println!("relay listening on {listen} (udp, tcp)");
    let _ = tokio::signal::ctrl_c().await;
    running.shutdown();
}
