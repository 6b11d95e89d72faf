//! The HTTP accept loop: hyper directly (axum's `serve` sets no header read
//! timeout and no connection caps), so a slowloris or a flood of idle
//! connections cannot take every descriptor and starve `/healthz` and the API.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// A client must send a request's headers within this (HTTP/1).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Descriptors kept free for everything else the process opens (media and
/// TURN sockets, the store, TLS to APNs and FCM) when sizing the HTTP cap.
const RESERVED_DESCRIPTORS: u64 = 256;

/// How many connections may be open at once (one client IP may hold at
/// most half of them, so one attacker cannot take them all).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub total: usize,
    pub per_ip: usize,
}

impl ConnectionLimits {
    /// The configured caps, lowered so the HTTP listener can never use up
    /// the descriptor limit (it keeps a reserve for everything else).
    pub fn within_descriptors(total: usize, per_ip: usize, soft_limit: u64) -> ConnectionLimits {
        let fit = soft_limit.saturating_sub(RESERVED_DESCRIPTORS).max(16) as usize;
        let total = total.min(fit);
        ConnectionLimits {
            total,
            per_ip: per_ip.min(total / 2).max(1),
        }
    }
}

/// Raises the soft descriptor limit to the hard one and returns it: each
/// WebSocket, TURN connection and relay socket holds a descriptor, and the
/// common soft default (1,024) is far below what a node serves.
pub fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// Counts open connections per client IP; a slot is given back on drop.
/// (The ICE/TCP listener counts its connections the same way.)
#[derive(Default)]
pub(super) struct PerIp(Mutex<HashMap<IpAddr, usize>>);

pub(super) struct IpSlot {
    ips: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    pub(super) fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            ips: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.ips.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown` says stop, then lets open
/// connections finish for up to 5 s.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let total = Arc::new(tokio::sync::Semaphore::new(limits.total));
    let per_ip = Arc::new(PerIp::default());
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "http accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { shutdown.wait_for(|stop| *stop).await.map(|_| ()) } => break,
        };
        let Ok(permit) = total.clone().try_acquire_owned() else {
            metrics.http_refused.with_label_values(&["total"]).inc();
            continue; // dropped: closed at once
        };
        let Some(slot) = per_ip.take(peer.ip(), limits.per_ip) else {
            metrics.http_refused.with_label_values(&["per_ip"]).inc();
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(client = %peer, error = %e, "http connection");
            }
            drop((permit, slot));
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_descriptor_limit() {
        let l = ConnectionLimits::within_descriptors(50_000, 1_000, 1024);
        assert_eq!((l.total, l.per_ip), (768, 384));
        let l = ConnectionLimits::within_descriptors(50_000, 1_000, 1 << 20);
        assert_eq!((l.total, l.per_ip), (50_000, 1_000));
    }

    #[test]
    fn per_ip_slots_are_given_back() {
        let ips = Arc::new(PerIp::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = ips.take(ip, 2).unwrap();
        let _b = ips.take(ip, 2).unwrap();
        assert!(ips.take(ip, 2).is_none());
        drop(a);
        assert!(ips.take(ip, 2).is_some());
    }
}
