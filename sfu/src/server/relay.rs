//! Starts the embedded TURN relay next to the SFU: relay sockets on the
//! announced IP, the SFU's media addresses as the peers clients may reach,
//! and the issuer that puts matching credentials and URLs in join info.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use control::turn_issuer::TurnIssuer;
use turn::peers::PeerRules;
use turn::relay::RelayConfig;
use turn::server::{RunningTurn, TlsListen, TurnServerConfig};

use super::StartError;
use crate::config::Config;

/// `None` when the relay is disabled.
pub async fn start_turn(
    config: &Config,
    announced: &[SocketAddr],
    registry: &prometheus::Registry,
) -> Result<Option<(RunningTurn, TurnIssuer)>, StartError> {
    let t = &config.turn;
    if !t.enabled {
        return Ok(None);
    }
    let relay_ip = announced
        .first()
        .map(SocketAddr::ip)
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let secrets = if t.secrets.is_empty() {
        vec![format!("{:032x}", rand::random::<u128>())]
    } else {
        t.secrets.clone()
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| StartError::Turn(format!("{}: {e}", path.display())))
    };
    let tls = match (&t.tls_cert_file, &t.tls_key_file) {
        (Some(cert), Some(key)) => Some(TlsListen {
            addr: t.tls_listen,
            cert_chain_pem: read(cert)?,
            key_pem: read(key)?,
        }),
        _ => None,
    };
    let server_config = TurnServerConfig {
        udp_listen: t.udp_listen,
        tcp_listen: t.tcp_listen,
        tls,
        relay_ip,
        relay: RelayConfig {
            realm: t.realm.clone(),
            secrets: secrets.clone(),
            peers: PeerRules::new(announced.to_vec(), t.allowed_peers.clone()),
            max_allocation_lifetime: Duration::from_secs(t.max_allocation_lifetime_seconds),
            allocations_per_user: t.allocations_per_user,
            max_allocations: t.max_allocations,
            bandwidth_per_allocation: t.bandwidth_per_allocation_kbps * 125,
        },
    };
    let metrics = turn::metrics::TurnMetrics::register(registry)
        .map_err(|e| StartError::Turn(e.to_string()))?;
    let running = turn::server::start(server_config, Some(Arc::new(metrics)))
        .await
        .map_err(|e| StartError::Turn(e.to_string()))?;
    let host = if t.public_host.is_empty() {
        match relay_ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        }
    } else {
        t.public_host.clone()
    };
    let mut urls = Vec::new();
    if let Some(a) = running.udp_addr {
        urls.push(format!("turn:{host}:{}?transport=udp", a.port()));
    }
    if let Some(a) = running.tcp_addr {
        urls.push(format!("turn:{host}:{}?transport=tcp", a.port()));
    }
    if let Some(a) = running.tls_addr {
        urls.push(format!("turns:{host}:{}?transport=tcp", a.port()));
    }
    tracing::info!(?urls, relay_ip = %relay_ip, "TURN relay listening");
    let issuer = TurnIssuer {
        secret: secrets[0].clone(),
        ttl: Duration::from_secs(t.credential_ttl_seconds),
        urls,
    };
    Ok(Some((running, issuer)))
}
