//! The media socket: one UDP port for every participant, read by one thread
//! that routes each datagram to the engine shard owning its source address
//! (or, for STUN from a new address, the shard owning the named ufrag).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Instant;

use socket2::{Domain, Protocol, Socket, Type};
use str0m::ice::StunMessage;

use super::RouteTable;
use super::shard::{ShardHandle, ShardInput};
use crate::metrics::Metrics;

/// Large kernel buffers: with the defaults a forwarding burst overflows them.
const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Larger than any datagram WebRTC sends (MTU-sized); a bigger one is garbage.
const MAX_DATAGRAM: usize = 2048;

pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

pub fn spawn_receiver(
    socket: Arc<UdpSocket>,
    routes: RouteTable,
    shards: Arc<Vec<ShardHandle>>,
    metrics: Arc<Metrics>,
) {
    std::thread::Builder::new()
        .name("udp-recv".into())
        .spawn(move || {
            // Wake up now and then to notice a shutdown.
            let _ = socket.set_read_timeout(Some(std::time::Duration::from_millis(250)));
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                let (n, source) = match socket.recv_from(&mut buf) {
                    Ok(r) => r,
                    Err(e) => {
                        // Timeouts, and ICMP errors on some systems: keep going.
                        if !matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) {
                            tracing::debug!(error = %e, "udp recv");
                        }
                        if shards.iter().all(|s| s.is_stopped()) {
                            return;
                        }
                        continue;
                    }
                };
                if shards.iter().all(|s| s.is_stopped()) {
                    return;
                }
                let at = Instant::now();
                metrics.udp_packets_in.inc();
                metrics.udp_bytes_in.inc_by(n as u64);
                let data = &buf[..n];
                let Some(shard) = route(&routes, source, data) else {
                    metrics.udp_dropped.with_label_values(&["unroutable"]).inc();
                    continue;
                };
                let input = ShardInput::Datagram {
                    source,
                    contents: data.to_vec(),
                    at,
                };
                if !shards[shard].offer_datagram(input) {
                    metrics
                        .udp_dropped
                        .with_label_values(&["engine_busy"])
                        .inc();
                }
            }
        })
        .expect("spawning the udp thread");
}

fn route(routes: &RouteTable, source: SocketAddr, data: &[u8]) -> Option<usize> {
    if let Some(shard) = routes.by_addr.get(&source) {
        return Some(*shard);
    }
    // Only STUN naming one of our ufrags may introduce a new address.
    let stun = StunMessage::parse(data).ok()?;
    let (local_ufrag, _) = stun.split_username()?;
    routes.by_ufrag.get(local_ufrag).map(|s| *s)
}
