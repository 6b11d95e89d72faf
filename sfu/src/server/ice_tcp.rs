//! ICE over TCP (RFC 6544): one listening port, announced as a passive
//! candidate, for clients whose UDP is blocked, so they connect without a
//! TURN server. Each connection carries what UDP would (STUN, DTLS, SRTP),
//! one packet per RFC 4571 frame (a 16-bit length, then the packet).
//!
//! A connection belongs to the shard named by the ufrag in its first STUN
//! message, as a new UDP address does; its frames go to that shard's engine,
//! and the shard writes the engine's transmits for the connection's address
//! back through it ([`ShardHandle::tcp_opened`]). The same bounds as the TURN
//! server's streams hold: connections in all and per IP, a deadline for the
//! first STUN message, an idle limit, and a bounded outbox whose overflow is
//! dropped (late media is worthless, as on UDP).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use str0m::net::Protocol;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::bytes::Bytes;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use super::listener::PerIp;
use super::shard::{ShardHandle, ShardInput};
use super::{RouteTable, udp};
use crate::metrics::Metrics;

/// Connections open at once, and from one client IP (a NAT holds many
/// clients; one attacker must not hold them all).
pub const MAX_CONNECTIONS: usize = 4096;
pub const MAX_CONNECTIONS_PER_IP: usize = 256;
/// A connection must send STUN naming one of our ufrags within this.
const FIRST_FRAME_WITHIN: Duration = Duration::from_secs(10);
/// ICE consent checks (at least every 5 s, RFC 7675) keep a live
/// connection talking: this long without a frame ends it.
const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// Frames waiting to be written to one connection; more are dropped.
pub const OUTBOX: usize = 256;
/// A client that does not read for this long is disconnected.
const WRITE_STALL: Duration = Duration::from_secs(10);

/// RFC 4571 framing, no frame larger than a UDP datagram we would accept.
fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(2)
        .max_frame_length(udp::MAX_DATAGRAM)
        .new_codec()
}

/// Accepts ICE/TCP connections until the process ends.
pub async fn serve(
    listener: TcpListener,
    routes: RouteTable,
    shards: Arc<Vec<ShardHandle>>,
    metrics: Arc<Metrics>,
) {
    let total = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_ip = Arc::new(PerIp::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "ice/tcp accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = total.clone().try_acquire_owned() else {
            metrics.ice_tcp_refused.with_label_values(&["total"]).inc();
            continue;
        };
        let Some(slot) = per_ip.take(peer.ip(), MAX_CONNECTIONS_PER_IP) else {
            metrics.ice_tcp_refused.with_label_values(&["per_ip"]).inc();
            continue;
        };
        let (routes, shards, metrics) = (routes.clone(), shards.clone(), metrics.clone());
        tokio::spawn(async move {
            metrics.ice_tcp_connections.inc();
            connection(stream, peer, &routes, &shards, &metrics).await;
            metrics.ice_tcp_connections.dec();
            drop((permit, slot));
        });
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    routes: &RouteTable,
    shards: &[ShardHandle],
    metrics: &Metrics,
) {
    // Media: each frame goes out as soon as it is written.
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, codec());
    let first = match tokio::time::timeout(FIRST_FRAME_WITHIN, frames.next()).await {
        Ok(Some(Ok(frame))) => frame,
        _ => {
            metrics
                .ice_tcp_refused
                .with_label_values(&["no_stun"])
                .inc();
            return;
        }
    };
    let Some(shard) = udp::route_by_stun(routes, &first).and_then(|i| shards.get(i)) else {
        metrics
            .ice_tcp_refused
            .with_label_values(&["no_stun"])
            .inc();
        return;
    };
    let (outbox, mut to_write) = mpsc::channel::<Bytes>(OUTBOX);
    shard.tcp_opened(peer, outbox);
    let writer = tokio::spawn(async move {
        let mut sink = FramedWrite::new(write, codec());
        while let Some(frame) = to_write.recv().await {
            match tokio::time::timeout(WRITE_STALL, sink.send(frame)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
    });
    let mut frame = first;
    loop {
        let input = ShardInput::Datagram {
            proto: Protocol::Tcp,
            source: peer,
            contents: frame.to_vec(),
            at: Instant::now(),
        };
        if !shard.offer_datagram(input) {
            metrics
                .udp_dropped
                .with_label_values(&["engine_busy"])
                .inc();
        }
        frame = match tokio::time::timeout(IDLE_LIMIT, frames.next()).await {
            Ok(Some(Ok(frame))) => frame,
            // Closed, garbage (a frame over the limit) or idle.
            _ => break,
        };
    }
    shard.tcp_closed(peer);
    writer.abort();
}
