//! The tokio shell: owns the listeners (UDP, TCP, TLS), the relay sockets
//! and the clock, and drives the sans-IO [`Relay`].
//!
//! Everything runs on one dedicated thread with a single-threaded runtime,
//! as coturn's relay threads do: with tasks spread over a multi-threaded
//! runtime, cross-thread wake-ups cost more CPU than relaying (measured:
//! 0.82x coturn's packets per CPU-second there, 1.3x on one thread; see
//! `README.md`). The lock around the relay is then uncontended.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use turn_server_proto::api::SocketAllocateError;
use turn_server_proto::types::{AddressFamily, Instant, TransportType};

use crate::framing::Framer;
use crate::metrics::TurnMetrics;
use crate::relay::{Command, Handled, ListenerId, Output, Relay, RelayConfig};

/// A TCP / TLS client must send its first message this soon...
const FIRST_MESSAGE_WITHIN: Duration = Duration::from_secs(10);
/// ...and then something at least this often (refreshes come every few
/// minutes; media far more often).
const IDLE_STREAM_LIMIT: Duration = Duration::from_secs(660);

/// Answers and relayed data queued for one TCP / TLS client. A client that
/// stops reading fills this and is disconnected: its queue must not grow the
/// server's memory (one 28-byte Allocate is answered with 116 bytes).
const STREAM_OUTBOX: usize = 256;
/// A write to a TCP / TLS client that makes no progress this long ends it.
const STREAM_WRITE_STALL: Duration = Duration::from_secs(10);
/// A TCP / TLS connection must hold an allocation this soon after it opened
/// (the 401 challenge and the authenticated retry take two round trips).
const ALLOCATE_WITHIN: Duration = Duration::from_secs(30);
/// TCP and TLS connections open at once, over all stream listeners; more
/// are closed at accept. Each costs a task, a 16 KiB read buffer and its
/// bounded outbox.
pub const MAX_STREAM_CLIENTS: usize = 4096;

/// Socket buffers for the listener and relay sockets: with the kernel
/// default a relay benchmark lost 9% of packets; with 4 MiB none.
const SOCKET_BUFFER: usize = 4 << 20;

#[derive(Debug, Clone)]
pub struct TurnServerConfig {
    pub udp_listen: Option<SocketAddr>,
    pub tcp_listen: Option<SocketAddr>,
    /// `turns:`: the address, and the PEM certificate chain and key.
    pub tls: Option<TlsListen>,
    /// Where relay sockets are bound (the address peers see).
    pub relay_ip: IpAddr,
    pub relay: RelayConfig,
}

#[derive(Debug, Clone)]
pub struct TlsListen {
    pub addr: SocketAddr,
    pub cert_chain_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum TurnStartError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS certificate or key: {0}")]
    Tls(String),
    #[error("relay thread: {0}")]
    Runtime(String),
}

/// The running relay, on its own thread. Dropping it stops it.
pub struct RunningTurn {
    pub udp_addr: Option<SocketAddr>,
    pub tcp_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl RunningTurn {
    pub fn allocations(&self) -> usize {
        self.shared.lock().allocations()
    }

    /// Stops every listener and relay socket (the thread ends with them).
    pub fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for RunningTurn {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

type StreamWriters = HashMap<(ListenerId, SocketAddr), mpsc::Sender<Vec<u8>>>;
/// Each relay socket, with the task reading it.
type RelaySockets = HashMap<SocketAddr, (Arc<UdpSocket>, JoinHandle<()>)>;

struct Shared {
    relay: Mutex<Relay>,
    started: std::time::Instant,
    relay_ip: IpAddr,
    udp: Option<(ListenerId, Arc<UdpSocket>)>,
    relays: Mutex<RelaySockets>,
    streams: Mutex<StreamWriters>,
    /// Permits for open TCP / TLS connections ([`MAX_STREAM_CLIENTS`]).
    stream_permits: Arc<tokio::sync::Semaphore>,
    metrics: Option<Arc<TurnMetrics>>,
}

impl Shared {
    fn now(&self) -> Instant {
        Instant::ZERO + self.started.elapsed()
    }

    fn count_drop(&self, reason: &str) {
        if let Some(m) = &self.metrics {
            m.dropped.with_label_values(&[reason]).inc();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Relay> {
        // The relay's state stays consistent across a panic in a send path
        // (no panics happen inside it with the lock held).
        self.relay.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// The TLS listener's acceptor: its certificate chain and key load and
/// match (also `switchboard doctor`'s check).
pub fn tls_acceptor(tls: &TlsListen) -> Result<tokio_rustls::TlsAcceptor, TurnStartError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(&tls.cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TurnStartError::Tls(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem)
        .map_err(|e| TurnStartError::Tls(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TurnStartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TurnStartError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Binds the listeners and starts relaying on a thread of its own.
pub async fn start(
    config: TurnServerConfig,
    metrics: Option<Arc<TurnMetrics>>,
) -> Result<RunningTurn, TurnStartError> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("turn-relay".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(TurnStartError::Runtime(e.to_string())));
                    return;
                }
            };
            runtime.block_on(async move {
                match bind_and_serve(config, metrics).await {
                    Ok((running, tasks)) => {
                        let shared = running.shared.clone();
                        if ready_tx.send(Ok(running)).is_err() {
                            return;
                        }
                        let _ = stop_rx.await; // stop asked, or the handle dropped
                        for task in tasks {
                            task.abort();
                        }
                        let relays = std::mem::take(
                            &mut *shared.relays.lock().unwrap_or_else(|e| e.into_inner()),
                        );
                        for (_, (_, reader)) in relays {
                            reader.abort();
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        });
    if let Err(e) = spawned {
        return Err(TurnStartError::Runtime(e.to_string()));
    }
    let mut running = ready_rx
        .await
        .map_err(|_| TurnStartError::Runtime("the relay thread ended".into()))??;
    running.stop = Some(stop_tx);
    Ok(running)
}

async fn bind_and_serve(
    config: TurnServerConfig,
    metrics: Option<Arc<TurnMetrics>>,
) -> Result<(RunningTurn, Vec<JoinHandle<()>>), TurnStartError> {
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut relay = Relay::new(config.relay.clone(), unix_now, metrics.clone());
    let bind_err = |addr| move |source| TurnStartError::Bind { addr, source };

    let udp = match config.udp_listen {
        Some(addr) => {
            let socket = udp_socket(addr).map_err(bind_err(addr))?;
            let local = socket.local_addr().map_err(bind_err(addr))?;
            Some((
                relay.add_listener(TransportType::Udp, local),
                Arc::new(socket),
            ))
        }
        None => None,
    };
    let tcp = match config.tcp_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await.map_err(bind_err(addr))?;
            let local = listener.local_addr().map_err(bind_err(addr))?;
            Some((relay.add_listener(TransportType::Tcp, local), listener))
        }
        None => None,
    };
    let tls = match &config.tls {
        Some(tls) => {
            let acceptor = tls_acceptor(tls)?;
            let listener = TcpListener::bind(tls.addr)
                .await
                .map_err(bind_err(tls.addr))?;
            let local = listener.local_addr().map_err(bind_err(tls.addr))?;
            Some((
                relay.add_listener(TransportType::Tcp, local),
                listener,
                acceptor,
            ))
        }
        None => None,
    };
    let shared = Arc::new(Shared {
        relay: Mutex::new(relay),
        started: std::time::Instant::now(),
        relay_ip: config.relay_ip,
        udp: udp.clone(),
        relays: Mutex::new(HashMap::new()),
        streams: Mutex::new(HashMap::new()),
        stream_permits: Arc::new(tokio::sync::Semaphore::new(MAX_STREAM_CLIENTS)),
        metrics,
    });
    let running = RunningTurn {
        udp_addr: udp.as_ref().and_then(|(_, s)| s.local_addr().ok()),
        tcp_addr: tcp.as_ref().and_then(|(_, l)| l.local_addr().ok()),
        tls_addr: tls.as_ref().and_then(|(_, l, _)| l.local_addr().ok()),
        shared: shared.clone(),
        stop: None,
    };
    let mut tasks = Vec::new();
    if let Some((id, socket)) = udp {
        tasks.push(tokio::spawn(udp_listener(shared.clone(), id, socket)));
    }
    if let Some((id, listener)) = tcp {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let Some(permit) = stream_permit(&shared) else {
                    continue; // dropped: closed at once
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    serve_stream(shared, id, peer, stream).await;
                    drop(permit);
                });
            }
        }));
    }
    if let Some((id, listener, acceptor)) = tls {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let Some(permit) = stream_permit(&shared) else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (shared, acceptor) = (shared.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    // A handshake that stalls must not hold a task forever.
                    let accepted =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await;
                    if let Ok(Ok(tls)) = accepted {
                        serve_stream(shared, id, peer, tls).await;
                    }
                });
            }
        }));
    }
    tasks.push(tokio::spawn(timers(shared.clone())));
    Ok((running, tasks))
}

async fn udp_listener(shared: Arc<Shared>, listener: ListenerId, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::new();
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue; // ICMP errors surface here on some systems
        };
        let now = shared.now();
        let handled = shared
            .lock()
            .handle_client(listener, from, &buf[..n], now, &mut out);
        send(&shared, &mut out).await;
        if handled == Handled::Stun {
            drive(&shared).await;
        }
    }
}

async fn relay_reader(shared: Arc<Shared>, relay: SocketAddr, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::new();
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let now = shared.now();
        shared
            .lock()
            .handle_peer(relay, from, &buf[..n], now, &mut out);
        send(&shared, &mut out).await;
    }
}

/// A permit for one more TCP / TLS connection, or `None` (counted) when
/// [`MAX_STREAM_CLIENTS`] are open.
fn stream_permit(shared: &Shared) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let permit = shared.stream_permits.clone().try_acquire_owned().ok();
    if permit.is_none() {
        shared.count_drop("stream_clients_full");
    }
    permit
}

/// One TCP or TLS client connection: frames in, framed writes out.
async fn serve_stream<S>(shared: Arc<Shared>, listener: ListenerId, peer: SocketAddr, stream: S)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let opened = std::time::Instant::now();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(STREAM_OUTBOX);
    // The outbox is gone (overflowed, see `send`) once no strong sender is left.
    let outbox = tx.downgrade();
    shared
        .streams
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((listener, peer), tx);
    let write_task = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            match tokio::time::timeout(STREAM_WRITE_STALL, writer.write_all(&bytes)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        let _ = writer.shutdown().await;
    });
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 16_384];
    let mut out = Vec::new();
    let mut idle_limit = FIRST_MESSAGE_WITHIN;
    let mut allocated = false;
    'read: loop {
        // A connection that says nothing (or stops refreshing) is closed:
        // idle sockets must not pile up. Until it holds an allocation it
        // gets ALLOCATE_WITHIN in all, however chatty.
        allocated = allocated || shared.lock().has_allocation(listener, peer);
        if !allocated && opened.elapsed() >= ALLOCATE_WITHIN {
            shared.count_drop("stream_unauthenticated");
            break;
        }
        let limit = if allocated {
            idle_limit
        } else {
            idle_limit.min(ALLOCATE_WITHIN.saturating_sub(opened.elapsed()))
        };
        let n = match tokio::time::timeout(limit, reader.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Err(_) => {
                if !allocated {
                    shared.count_drop("stream_unauthenticated");
                }
                break;
            }
            Ok(Ok(n)) => n,
        };
        idle_limit = IDLE_STREAM_LIMIT;
        if outbox.upgrade().is_none() {
            tracing::debug!(client = %peer, "TURN stream: client does not read; hanging up");
            break;
        }
        framer.push(&buf[..n]);
        loop {
            match framer.next_message() {
                Ok(Some(message)) => {
                    let now = shared.now();
                    let handled = shared
                        .lock()
                        .handle_client(listener, peer, &message, now, &mut out);
                    send(&shared, &mut out).await;
                    if handled == Handled::Stun {
                        drive(&shared).await;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(client = %peer, error = %e, "TURN stream: hanging up");
                    break 'read;
                }
            }
        }
    }
    let now = shared.now();
    shared.lock().client_closed(listener, peer, now);
    shared
        .streams
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&(listener, peer));
    write_task.abort();
    drive(&shared).await;
}

/// The relay's timers: expiries, lifetimes, queued answers.
async fn timers(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        drive(&shared).await;
    }
}

/// Polls the relay until it has nothing to do: binds and closes sockets,
/// then sends what it queued.
async fn drive(shared: &Arc<Shared>) {
    let mut out = Vec::new();
    // Each round's commands can queue more; bounded so a bug cannot spin.
    for _ in 0..16 {
        let mut commands = Vec::new();
        let now = shared.now();
        {
            let mut relay = shared.lock();
            relay.poll(now, &mut commands);
            relay.poll_transmit(now, &mut out);
        }
        send(shared, &mut out).await;
        if commands.is_empty() {
            return;
        }
        for command in commands {
            execute(shared, command);
        }
    }
}

fn execute(shared: &Arc<Shared>, command: Command) {
    match command {
        Command::BindRelay {
            listener,
            client,
            family,
        } => {
            let ip = shared.relay_ip;
            let result = match (family, ip) {
                (AddressFamily::IPV4, IpAddr::V4(_)) | (AddressFamily::IPV6, IpAddr::V6(_)) => {
                    udp_socket(SocketAddr::new(ip, 0))
                        .and_then(|s| Ok((s.local_addr()?, Arc::new(s))))
                        .map_err(|e| {
                            tracing::warn!(error = %e, "TURN relay socket");
                            SocketAllocateError::InsufficientCapacity
                        })
                }
                _ => Err(SocketAllocateError::AddressFamilyNotSupported),
            };
            let bound = result.as_ref().map(|(addr, _)| *addr).map_err(|e| *e);
            if let Ok((addr, socket)) = result {
                let reader = tokio::spawn(relay_reader(shared.clone(), addr, socket.clone()));
                shared
                    .relays
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(addr, (socket, reader));
            }
            let now = shared.now();
            shared
                .lock()
                .relay_bound(listener, client, family, bound, now);
        }
        Command::CloseRelay { relay } => {
            let removed = shared
                .relays
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&relay);
            if let Some((_, reader)) = removed {
                reader.abort();
            }
        }
        Command::CloseClient { listener, client } => {
            shared
                .streams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(listener, client));
        }
    }
}

async fn send(shared: &Shared, out: &mut Vec<Output>) {
    for output in out.drain(..) {
        match output {
            Output::ToClient { listener, to, data } => match &shared.udp {
                Some((id, socket)) if *id == listener => {
                    let _ = socket.send_to(&data, to).await;
                }
                _ => {
                    let writer = shared
                        .streams
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&(listener, to))
                        .cloned();
                    if let Some(writer) = writer
                        && writer.try_send(data).is_err()
                    {
                        // Full: the client does not read. Dropping the
                        // outbox's sender hangs the connection up.
                        shared
                            .streams
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&(listener, to));
                        shared.count_drop("stream_client_not_reading");
                    }
                }
            },
            Output::ToPeer { relay, to, data } => {
                let socket = shared
                    .relays
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&relay)
                    .map(|(s, _)| s.clone());
                if let Some(socket) = socket {
                    let _ = socket.send_to(&data, to).await;
                }
            }
        }
    }
}
