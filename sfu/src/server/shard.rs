//! One engine per thread. Each thread owns its `Engine` (and so every `Rtc`
//! of its rooms), reads the shared media socket itself, takes commands (and
//! datagrams that reached another shard first) from one channel, and sends
//! transmits straight to the socket.
//!
//! Each thread runs a single-threaded tokio runtime so that one wait covers
//! the socket, the channel and the engine's next timeout. Reading the socket
//! here, not on a router thread, saves a thread hand-off (a wake-up) per
//! datagram: the kernel's context switches were a third of the server's CPU
//! (`BENCHMARKS.md`).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use signaling::{ErrorCode, LeaveReason, ServerMessage};
use str0m::net::{Protocol, Transmit};
use tokio::io::Interest;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::{Sender, UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_util::bytes::Bytes;

use super::{RouteTable, udp};
use crate::config::Config;
use crate::engine::{
    Command, ConnId, DataDrop, Engine, EngineConfig, EngineStats, Event, Input, Member, Output,
};
use crate::metrics::Metrics;

/// Messages waiting for one signaling session. A client that stops reading
/// fills it and is disconnected (its participant detached, as if its socket
/// had closed): the engine must not queue for it forever.
pub const SESSION_OUTBOX: usize = 256;

/// Datagrams waiting for an engine beyond this are dropped: late media is
/// worthless and an unbounded queue would only grow under a flood.
const MAX_QUEUED_DATAGRAMS: usize = 8192;

/// What woke a shard's loop.
enum Woke {
    Input(ShardInput),
    /// The read batch holds datagrams.
    Datagrams,
    Timeout,
    Nothing,
}

/// Waits for datagrams and reads what is queued, up to a batch. Cancel
/// safe: it returns as soon as a read took any.
async fn read_batch(
    reader: &tokio::net::UdpSocket,
    batch: &mut udp::RecvBatch,
) -> std::io::Result<usize> {
    loop {
        reader.readable().await?;
        // A readiness the queue no longer backs (another shard's handle
        // took the datagrams) is cleared by `try_io`: wait again.
        match reader.try_io(Interest::READABLE, || batch.read(reader)) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            read => return read,
        }
    }
}

/// CPU time this thread has used, if the clock answers.
fn thread_cpu_time() -> Option<Duration> {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(Duration::from)
}

/// A step this long is a visible freeze for every stream on the shard:
/// logged, besides the histogram.
const STALLING_STEP: Duration = Duration::from_millis(250);

impl Woke {
    /// What woke the shard, for the slow-step histogram's label.
    fn label(&self) -> &'static str {
        match self {
            Woke::Input(ShardInput::Command { command, .. }) => command.name(),
            Woke::Input(ShardInput::Datagram { .. }) | Woke::Datagrams => "datagram",
            Woke::Input(_) => "control",
            Woke::Timeout => "timeout",
            Woke::Nothing => "nothing",
        }
    }
}

pub enum ShardInput {
    /// A datagram, or an ICE/TCP frame, another thread read for this shard.
    Datagram {
        proto: Protocol,
        source: SocketAddr,
        contents: Vec<u8>,
        at: Instant,
    },
    /// An ICE/TCP connection from `peer` now belongs to this shard: the
    /// engine's transmits to `peer` over TCP go into `outbox`.
    TcpOpened {
        peer: SocketAddr,
        outbox: Sender<Bytes>,
    },
    TcpClosed {
        peer: SocketAddr,
    },
    /// Registers where messages for `conn` go; sent before its first command.
    Attach {
        conn: ConnId,
        outbox: Sender<SessionOut>,
    },
    Command {
        conn: ConnId,
        command: Command,
    },
    /// The node drains: no new rooms (kept across an engine restart).
    Drain,
    /// The drain is over: every participant leaves with `server_shutdown`.
    ShutDown,
    Stop,
}

/// What a signaling session receives from its engine.
#[derive(Debug)]
pub enum SessionOut {
    Message(ServerMessage),
    /// The participant is gone: close the socket after what came before.
    Close,
    /// The outbox filled up: this client does not read. Close the socket
    /// with a typed error.
    SlowConsumer,
}

#[derive(Clone)]
pub struct ShardHandle {
    tx: UnboundedSender<ShardInput>,
    queued_datagrams: Arc<AtomicUsize>,
    pub health: Arc<ShardHealth>,
}

/// A shard's liveness, as `/healthz` reads it: its thread is running and its
/// loop came round recently (it wakes at least once a second, idle or not).
pub struct ShardHealth {
    running: AtomicBool,
    epoch: Instant,
    /// Milliseconds after `epoch` of the loop's latest round.
    last_round_ms: AtomicU64,
    /// Rooms and participants on the shard after its latest step (a
    /// draining node waits for both to reach zero).
    rooms: AtomicUsize,
    participants: AtomicUsize,
}

impl ShardHealth {
    fn new() -> ShardHealth {
        ShardHealth {
            running: AtomicBool::new(true),
            epoch: Instant::now(),
            last_round_ms: AtomicU64::new(0),
            rooms: AtomicUsize::new(0),
            participants: AtomicUsize::new(0),
        }
    }

    pub fn rooms(&self) -> usize {
        self.rooms.load(Ordering::Relaxed)
    }

    pub fn participants(&self) -> usize {
        self.participants.load(Ordering::Relaxed)
    }

    fn beat(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.last_round_ms.store(ms, Ordering::Relaxed);
    }

    /// Running, and its loop went round within `max_silence` of `now`.
    pub fn is_live(&self, now: Instant, max_silence: Duration) -> bool {
        let last = self.epoch + Duration::from_millis(self.last_round_ms.load(Ordering::Relaxed));
        self.running.load(Ordering::Relaxed) && now.saturating_duration_since(last) <= max_silence
    }
}

/// Marks the shard dead when its thread ends, by return or by unwinding.
struct Stopped(Arc<ShardHealth>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Relaxed);
    }
}

impl ShardHandle {
    /// Queues a datagram unless the engine is too far behind.
    pub fn offer_datagram(&self, input: ShardInput) -> bool {
        if self.queued_datagrams.load(Ordering::Relaxed) >= MAX_QUEUED_DATAGRAMS {
            return false;
        }
        self.queued_datagrams.fetch_add(1, Ordering::Relaxed);
        self.tx.send(input).is_ok()
    }

    /// Sent before the connection's first frame (one channel keeps the order).
    pub fn tcp_opened(&self, peer: SocketAddr, outbox: Sender<Bytes>) {
        let _ = self.tx.send(ShardInput::TcpOpened { peer, outbox });
    }

    pub fn tcp_closed(&self, peer: SocketAddr) {
        let _ = self.tx.send(ShardInput::TcpClosed { peer });
    }

    pub fn attach(&self, conn: ConnId, outbox: Sender<SessionOut>) {
        let _ = self.tx.send(ShardInput::Attach { conn, outbox });
    }

    pub fn command(&self, conn: ConnId, command: Command) {
        let _ = self.tx.send(ShardInput::Command { conn, command });
    }

    pub fn drain(&self) {
        let _ = self.tx.send(ShardInput::Drain);
    }

    pub fn shut_down(&self) {
        let _ = self.tx.send(ShardInput::ShutDown);
    }

    pub fn stop(&self) {
        let _ = self.tx.send(ShardInput::Stop);
    }
}

pub fn spawn_all(
    config: &Config,
    announced: &[SocketAddr],
    tcp_announced: &[SocketAddr],
    socket: Arc<UdpSocket>,
    routes: RouteTable,
    metrics: Arc<Metrics>,
    media_signals: UnboundedSender<MediaSignal>,
) -> Result<Vec<ShardHandle>, String> {
    static CRYPTO: std::sync::Once = std::sync::Once::new();
    CRYPTO.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
    let cert = str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .ok_or("cannot generate a DTLS certificate")?;

    let threads = config.engine_threads();
    let mut handles = Vec::with_capacity(threads);
    let mut receivers = Vec::with_capacity(threads);
    for _ in 0..threads {
        let (tx, rx) = unbounded_channel();
        handles.push(ShardHandle {
            tx,
            queued_datagrams: Arc::default(),
            health: Arc::new(ShardHealth::new()),
        });
        receivers.push(rx);
    }
    let peers = Arc::new(handles.clone());
    for (index, rx) in receivers.into_iter().enumerate() {
        let mut engine_config = EngineConfig::new(announced.to_vec());
        engine_config.tcp_candidates = tcp_announced.to_vec();
        engine_config.shard = index as u8;
        engine_config.reconnect_grace = config.reconnect_grace();
        engine_config.keyframe_request_interval =
            Duration::from_millis(config.keyframe_request_interval_ms);
        engine_config.max_participants_per_room = config.max_participants_per_room;
        engine_config.max_tracks_per_participant = config.max_tracks_per_participant;
        engine_config.deny_private_candidates = config.deny_private_candidates;
        engine_config.downlink_estimation = config.downlink_estimation;
        engine_config.own_egress = config.own_egress;
        // Each shard waits on its own handle to the one socket (readiness is
        // per runtime); the sends go through the shared one.
        let reader = socket.try_clone().map_err(|e| e.to_string())?;
        let (health, queued_datagrams) = (
            handles[index].health.clone(),
            handles[index].queued_datagrams.clone(),
        );
        let (socket, peers, routes) = (socket.clone(), peers.clone(), routes.clone());
        let (metrics, media_signals, cert) = (metrics.clone(), media_signals.clone(), cert.clone());
        // Built on its thread: the socket batches' headers hold raw pointers.
        let run = move || {
            let mut shard = Shard {
                index,
                engine: Engine::new(engine_config.clone(), cert.clone(), Instant::now()),
                engine_config,
                cert,
                orphans: Vec::new(),
                health,
                sessions: HashMap::new(),
                slow: Vec::new(),
                socket,
                peers,
                routes,
                metrics,
                queued_datagrams,
                last_stats: EngineStats::default(),
                last_export: Instant::now(),
                media_signals,
                draining: false,
                tcp_streams: HashMap::new(),
                outgoing: udp::SendBatch::default(),
            };
            shard.run(rx, reader)
        };
        std::thread::Builder::new()
            .name(format!("engine-{index}"))
            .spawn(run)
            .map_err(|e| e.to_string())?;
    }
    Ok(handles)
}

struct Shard {
    index: usize,
    engine: Engine,
    /// What a restarted engine is built from.
    engine_config: EngineConfig,
    cert: str0m::config::DtlsCert,
    /// Participants of an engine that panicked, with the time by which they
    /// must have rejoined; call control hears of those who did not.
    orphans: Vec<(Instant, Member)>,
    health: Arc<ShardHealth>,
    sessions: HashMap<ConnId, Sender<SessionOut>>,
    /// Sessions whose outbox filled during this flush: detached after it.
    slow: Vec<ConnId>,
    socket: Arc<UdpSocket>,
    /// Every shard's handle (its own included), to pass on datagrams.
    peers: Arc<Vec<ShardHandle>>,
    routes: RouteTable,
    metrics: Arc<Metrics>,
    queued_datagrams: Arc<AtomicUsize>,
    last_stats: EngineStats,
    last_export: Instant,
    media_signals: UnboundedSender<MediaSignal>,
    /// The node drains; a restarted engine is told again.
    draining: bool,
    /// ICE/TCP connections routed here, by the client's address.
    tcp_streams: HashMap<SocketAddr, Sender<Bytes>>,
    /// UDP transmits of the flush under way.
    outgoing: udp::SendBatch,
}

/// A track kind as a metric label.
fn kind_label(kind: signaling::TrackKind) -> &'static str {
    match kind {
        signaling::TrackKind::Audio => "audio",
        signaling::TrackKind::Video => "video",
    }
}

/// What call control hears from the media plane.
#[derive(Debug, Clone)]
pub enum MediaSignal {
    Connected(Member),
    Left(Member),
}

impl Shard {
    fn run(&mut self, rx: UnboundedReceiver<ShardInput>, reader: UdpSocket) {
        let _stopped = Stopped(self.health.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let served = runtime.map_err(|e| e.to_string()).and_then(|rt| {
            rt.block_on(async {
                reader.set_nonblocking(true).map_err(|e| e.to_string())?;
                let reader = tokio::net::UdpSocket::from_std(reader).map_err(|e| e.to_string())?;
                self.serve(rx, reader).await;
                Ok::<(), String>(())
            })
        });
        if let Err(e) = served {
            tracing::error!(shard = self.index, error = %e, "engine thread could not start");
        }
        tracing::info!(shard = self.index, "engine stopped");
    }

    async fn serve(
        &mut self,
        mut rx: UnboundedReceiver<ShardInput>,
        reader: tokio::net::UdpSocket,
    ) {
        let mut deadline = Instant::now();
        let mut batch = udp::RecvBatch::default();
        loop {
            let woke = tokio::select! {
                input = rx.recv() => match input {
                    None | Some(ShardInput::Stop) => break,
                    Some(input) => Woke::Input(input),
                },
                // Everything queued, up to a batch, in one system call; the
                // engine takes it all before one flush sends its output.
                read = read_batch(&reader, &mut batch) => match read {
                    Ok(_) => Woke::Datagrams,
                    // ICMP errors surface here on some systems: keep going.
                    Err(e) => {
                        tracing::debug!(error = %e, "udp recv");
                        Woke::Nothing
                    }
                },
                _ = tokio::time::sleep_until(deadline.into()) => Woke::Timeout,
            };
            let woke_by = woke.label();
            let step_started = Instant::now();
            // The CPU this thread spends on a step, apart from the wall
            // time a busy machine adds: read for every step but datagrams
            // (the per-packet hot path; a clock read is a system call).
            let cpu_started = (woke_by != "datagram").then(thread_cpu_time).flatten();
            // Panics inside a participant's Rtc are contained by the engine;
            // anything else that panics here takes only this engine's state,
            // which is rebuilt empty (its participants rejoin).
            let stepped = catch_unwind(AssertUnwindSafe(|| {
                match woke {
                    Woke::Input(input) => self.handle(input),
                    Woke::Datagrams => {
                        for datagram in batch.datagrams() {
                            match datagram {
                                Some((source, data)) => self.datagram(source, data),
                                None => self
                                    .metrics
                                    .udp_dropped
                                    .with_label_values(&["unusable"])
                                    .inc(),
                            }
                        }
                    }
                    Woke::Timeout => self.engine.handle_input(Input::Timeout, Instant::now()),
                    Woke::Nothing => {}
                }
                self.flush()
            }));
            let now = Instant::now();
            let took = now - step_started;
            if took >= crate::metrics::SLOW_ENGINE_STEP {
                self.metrics
                    .engine_slow_steps
                    .with_label_values(&[woke_by])
                    .observe(took.as_secs_f64());
                let cpu = cpu_started
                    .zip(thread_cpu_time())
                    .map(|(start, end)| end.saturating_sub(start));
                if let Some(cpu) = cpu.filter(|c| *c >= crate::metrics::SLOW_ENGINE_STEP) {
                    self.metrics
                        .engine_slow_step_cpu
                        .with_label_values(&[woke_by])
                        .observe(cpu.as_secs_f64());
                }
                if took >= STALLING_STEP {
                    tracing::warn!(
                        shard = self.index,
                        woke_by,
                        took_ms = took.as_millis() as u64,
                        cpu_ms = cpu.map(|c| c.as_millis() as u64),
                        "engine step stalled forwarding on this shard"
                    );
                }
            }
            deadline = match stepped {
                Ok(deadline) => deadline,
                Err(_) => self.restart_engine(now),
            };
            if let Some(first) = self.orphans.first().map(|o| o.0) {
                if first <= now {
                    self.release_orphans(now);
                }
                deadline = deadline.min(self.orphans.first().map_or(deadline, |o| o.0));
            }
            self.health.beat(now);
        }
    }

    /// The engine panicked outside any one participant: every participant on
    /// this shard is told to rejoin (`error` internal, `left` failed), its
    /// routes are forgotten and a fresh engine takes over. Call control hears
    /// of those who do not rejoin within the reconnect grace.
    fn restart_engine(&mut self, now: Instant) -> Instant {
        self.metrics
            .engine_panics
            .with_label_values(&["shard"])
            .inc();
        let members = catch_unwind(AssertUnwindSafe(|| self.engine.members())).unwrap_or_default();
        tracing::error!(
            shard = self.index,
            participants = members.len(),
            "engine panicked; restarting it empty"
        );
        let rejoin_by = now + self.engine_config.reconnect_grace;
        self.orphans
            .extend(members.into_iter().map(|member| (rejoin_by, member)));
        self.orphans.sort_by_key(|o| o.0);
        self.slow.clear();
        for (_, outbox) in self.sessions.drain() {
            let _ = outbox.try_send(SessionOut::Message(ServerMessage::error(
                ErrorCode::Internal,
                "the media server restarted; join again",
            )));
            let _ = outbox.try_send(SessionOut::Message(ServerMessage::Left {
                reason: LeaveReason::Failed,
            }));
            // Full or not, dropping the sender ends the session.
            let _ = outbox.try_send(SessionOut::Close);
        }
        self.routes.by_addr.retain(|_, shard| *shard != self.index);
        self.routes.by_ufrag.retain(|_, shard| *shard != self.index);
        self.engine = Engine::new(self.engine_config.clone(), self.cert.clone(), now);
        if self.draining {
            self.engine.handle_input(Input::Drain, now);
        }
        self.last_stats = EngineStats::default();
        now
    }

    /// Orphans whose rejoin deadline passed and who are not back: their
    /// media left, as a grace timeout would have said.
    fn release_orphans(&mut self, now: Instant) {
        let due = self.orphans.partition_point(|o| o.0 <= now);
        for (_, member) in self.orphans.drain(..due) {
            if !self.engine.has_member(&member.call_id, &member.user_id) {
                let _ = self.media_signals.send(MediaSignal::Left(member));
            }
        }
    }

    /// A datagram this thread read: into its own engine, or on to the
    /// shard that owns its source.
    fn datagram(&mut self, source: SocketAddr, data: &[u8]) {
        let at = Instant::now();
        self.metrics.udp_packets_in.inc();
        self.metrics.udp_bytes_in.inc_by(data.len() as u64);
        let destination = self.destination_for(Protocol::Udp, source);
        if self
            .engine
            .handle_known_datagram(source, destination, data, at)
        {
            return;
        }
        match udp::route(&self.routes, source, data) {
            Some(shard) if shard == self.index => {
                self.engine.handle_input(
                    Input::Datagram {
                        proto: Protocol::Udp,
                        source,
                        destination,
                        contents: data,
                    },
                    at,
                );
            }
            Some(shard) => {
                let input = ShardInput::Datagram {
                    proto: Protocol::Udp,
                    source,
                    contents: data.to_vec(),
                    at,
                };
                if !self.peers[shard].offer_datagram(input) {
                    self.metrics
                        .udp_dropped
                        .with_label_values(&["engine_busy"])
                        .inc();
                }
            }
            None => {
                self.metrics
                    .udp_dropped
                    .with_label_values(&["unroutable"])
                    .inc();
            }
        }
    }

    fn handle(&mut self, input: ShardInput) {
        match input {
            ShardInput::Datagram {
                proto,
                source,
                contents,
                at,
            } => {
                self.queued_datagrams.fetch_sub(1, Ordering::Relaxed);
                let destination = self.destination_for(proto, source);
                self.engine.handle_input(
                    Input::Datagram {
                        proto,
                        source,
                        destination,
                        contents: &contents,
                    },
                    at,
                );
            }
            ShardInput::TcpOpened { peer, outbox } => {
                self.tcp_streams.insert(peer, outbox);
            }
            ShardInput::TcpClosed { peer } => {
                self.tcp_streams.remove(&peer);
            }
            ShardInput::Attach { conn, outbox } => {
                self.sessions.insert(conn, outbox);
            }
            ShardInput::Command { conn, command } => {
                let detach = matches!(command, Command::Detach);
                self.engine
                    .handle_input(Input::Command(conn, command), Instant::now());
                if detach {
                    self.sessions.remove(&conn);
                }
            }
            ShardInput::Drain => {
                self.draining = true;
                self.engine.handle_input(Input::Drain, Instant::now());
            }
            ShardInput::ShutDown => self.engine.handle_input(Input::ShutDown, Instant::now()),
            ShardInput::Stop => {}
        }
    }

    /// The announced address a datagram was sent to. The socket is bound to
    /// one port; with several announced IPs, the one of the sender's family.
    fn destination_for(&self, proto: Protocol, source: SocketAddr) -> SocketAddr {
        let announced = match proto {
            Protocol::Tcp => &self.engine_config.tcp_candidates,
            _ => &self.engine_config.host_candidates,
        };
        announced
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == source.is_ipv4())
            .or_else(|| announced.first().copied())
            .unwrap_or(source)
    }

    /// Sends everything the engine produced; returns its next deadline.
    /// Sessions that could not take their messages are detached, which the
    /// engine answers with more output: flushed in the same call.
    fn flush(&mut self) -> Instant {
        let mut deadline = self.flush_once();
        for _ in 0..4 {
            if self.slow.is_empty() {
                break;
            }
            for conn in std::mem::take(&mut self.slow) {
                self.engine
                    .handle_input(Input::Command(conn, Command::Detach), Instant::now());
            }
            deadline = self.flush_once();
        }
        deadline
    }

    fn flush_once(&mut self) -> Instant {
        let deadline = loop {
            match self.engine.poll_output() {
                Output::Timeout(t) => break t,
                Output::Transmit(t) if t.proto == Protocol::Tcp => self.send_tcp(t),
                Output::Transmit(t) => {
                    self.outgoing.push(t.destination, t.contents.into());
                    if self.outgoing.is_full() {
                        self.send_outgoing();
                    }
                }
                Output::Event(event) => self.on_event(event),
            }
        };
        self.send_outgoing();
        self.health
            .rooms
            .store(self.engine.room_count(), Ordering::Relaxed);
        self.health
            .participants
            .store(self.engine.participant_count(), Ordering::Relaxed);
        self.export_stats();
        deadline
    }

    /// The queued datagrams, in one `sendmmsg` where the kernel takes them
    /// all; their buffers go back to the engine for its next copies.
    fn send_outgoing(&mut self) {
        if self.outgoing.is_empty() {
            return;
        }
        let engine = &mut self.engine;
        let sent = self
            .outgoing
            .send(&*self.socket, |buffer| engine.recycle_buffer(buffer));
        self.metrics.udp_packets_out.inc_by(sent.datagrams);
        self.metrics.udp_bytes_out.inc_by(sent.bytes);
        if sent.failed > 0 {
            self.metrics
                .udp_dropped
                .with_label_values(&["send_failed"])
                .inc_by(sent.failed);
        }
    }

    /// A transmit for an ICE/TCP connection: into its outbox, or dropped
    /// when that is full (the client does not keep up) or gone.
    fn send_tcp(&mut self, t: Transmit) {
        let Some(outbox) = self.tcp_streams.get(&t.destination) else {
            return;
        };
        match outbox.try_send(Bytes::from(Vec::from(t.contents))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics
                    .udp_dropped
                    .with_label_values(&["tcp_outbox_full"])
                    .inc();
            }
            Err(TrySendError::Closed(_)) => {
                self.tcp_streams.remove(&t.destination);
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Message { conn, message } => {
                // Errors are counted where every one is sent
                // (`session::send`), the session's own as well.
                self.deliver(conn, message);
            }
            Event::ConnClosed { conn } => {
                if let Some(outbox) = self.sessions.remove(&conn) {
                    // If it is full, dropping the sender ends the session.
                    let _ = outbox.try_send(SessionOut::Close);
                }
            }
            Event::AddressLearned(addr) => {
                self.routes.by_addr.insert(addr, self.index);
            }
            Event::AddressForgotten(addr) => {
                self.routes
                    .by_addr
                    .remove_if(&addr, |_, s| *s == self.index);
            }
            Event::UfragLearned(ufrag) => {
                self.routes.by_ufrag.insert(ufrag, self.index);
            }
            Event::UfragForgotten(ufrag) => {
                self.routes
                    .by_ufrag
                    .remove_if(&ufrag, |_, s| *s == self.index);
            }
            Event::FirstForward(elapsed) => {
                self.metrics
                    .join_to_first_forward
                    .observe(elapsed.as_secs_f64());
            }
            Event::IceConnected => self.metrics.ice_connected.inc(),
            Event::ParticipantConnected(member) => {
                let _ = self.media_signals.send(MediaSignal::Connected(member));
            }
            Event::ParticipantRemoved(member) => {
                let _ = self.media_signals.send(MediaSignal::Left(member));
            }
            Event::IceFailed => self.metrics.ice_failed.inc(),
            Event::StreamQuality {
                link,
                kind,
                loss,
                jitter,
            } => {
                let labels = [link.as_str(), kind_label(kind)];
                self.metrics
                    .stream_loss
                    .with_label_values(&labels)
                    .observe(f64::from(loss));
                self.metrics
                    .stream_jitter
                    .with_label_values(&labels)
                    .observe(jitter.as_secs_f64());
            }
        }
    }

    /// Queues `message` for `conn`'s session, keeping the last slot of a
    /// full outbox for the notice that it is being cut off.
    fn deliver(&mut self, conn: ConnId, message: ServerMessage) {
        let Some(outbox) = self.sessions.get(&conn) else {
            return;
        };
        if outbox.capacity() > 1 {
            let _ = outbox.try_send(SessionOut::Message(message));
            return;
        }
        let _ = outbox.try_send(SessionOut::SlowConsumer);
        self.sessions.remove(&conn);
        self.slow.push(conn);
        self.metrics.signaling_slow_consumers.inc();
        tracing::warn!(
            conn = conn.0,
            "signaling client does not read its messages; disconnecting it"
        );
    }

    /// Copies engine counters into the metrics, at most every 100 ms (not per packet).
    fn export_stats(&mut self) {
        let now = Instant::now();
        if now.saturating_duration_since(self.last_export) < Duration::from_millis(100) {
            return;
        }
        self.last_export = now;
        let stats = self.engine.stats();
        let last = std::mem::replace(&mut self.last_stats, stats);
        let m = &self.metrics;
        m.rtp_forwarded
            .inc_by(stats.rtp_forwarded - last.rtp_forwarded);
        m.keyframe_requests
            .inc_by(stats.keyframe_requests - last.keyframe_requests);
        m.remb_relayed
            .inc_by(stats.remb_relayed - last.remb_relayed);
        m.layer_switches
            .with_label_values(&["up"])
            .inc_by(stats.layer_switches_up - last.layer_switches_up);
        m.layer_switches
            .with_label_values(&["down"])
            .inc_by(stats.layer_switches_down - last.layer_switches_down);
        for (kind, now, before) in [
            ("rtp", stats.own_sent, last.own_sent),
            ("resent", stats.own_resent, last.own_resent),
            (
                "sender_report",
                stats.own_sender_reports,
                last.own_sender_reports,
            ),
            ("dropped", stats.own_dropped, last.own_dropped),
        ] {
            m.own_egress.with_label_values(&[kind]).inc_by(now - before);
        }
        for (i, profile) in crate::engine::SRTP_KEY_LABELS.iter().enumerate() {
            m.srtp_keys
                .with_label_values(&[profile])
                .inc_by(stats.srtp_keys[i] - last.srtp_keys[i]);
        }
        m.temporal_switches
            .with_label_values(&["up"])
            .inc_by(stats.temporal_switches_up - last.temporal_switches_up);
        m.temporal_switches
            .with_label_values(&["down"])
            .inc_by(stats.temporal_switches_down - last.temporal_switches_down);
        m.data_messages
            .with_label_values(&["in"])
            .inc_by(stats.data_messages_in - last.data_messages_in);
        m.data_messages
            .with_label_values(&["refused"])
            .inc_by(stats.data_refused - last.data_refused);
        m.data_messages
            .with_label_values(&["out"])
            .inc_by(stats.data_messages_out - last.data_messages_out);
        for drop in DataDrop::ALL {
            let i = drop as usize;
            m.data_dropped
                .with_label_values(&[drop.label()])
                .inc_by(stats.data_dropped[i] - last.data_dropped[i]);
        }
        m.engine_panics
            .with_label_values(&["participant"])
            .inc_by(stats.participants_failed - last.participants_failed);
        m.udp_dropped
            .with_label_values(&["engine"])
            .inc_by(stats.dropped_datagrams - last.dropped_datagrams);
        for gap in self.engine.take_stream_gaps() {
            let kind = kind_label(gap.kind);
            let gap_ms = gap.gap.as_millis() as u64;
            // What an operator asks about a frozen picture: whose stream
            // paused, for how long. Debug: a publisher on a poor network
            // pauses often, and the histogram is the signal to watch.
            tracing::debug!(call_id = %gap.call_id, participant = %gap.participant_id, track = %gap.track_id, kind, gap_ms, "stream paused");
            m.stream_gaps
                .with_label_values(&[kind])
                .observe(gap.gap.as_secs_f64());
        }
        let shard = self.index.to_string();
        m.rooms
            .with_label_values(&[&shard])
            .set(self.engine.room_count() as i64);
        m.participants
            .with_label_values(&[&shard])
            .set(self.engine.participant_count() as i64);
        m.tracks
            .with_label_values(&[&shard])
            .set(self.engine.track_count() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_is_live_while_running_and_going_round() {
        let health = Arc::new(ShardHealth::new());
        let start = health.epoch;
        let max = Duration::from_secs(10);
        health.beat(start + Duration::from_secs(3));
        assert!(health.is_live(start + Duration::from_secs(12), max));
        // A loop stuck for more than the limit.
        assert!(!health.is_live(start + Duration::from_secs(14), max));
        health.beat(start + Duration::from_secs(14));
        assert!(health.is_live(start + Duration::from_secs(14), max));
        // The thread ends (returns or unwinds): dead however recent the beat.
        drop(Stopped(health.clone()));
        assert!(!health.is_live(start + Duration::from_secs(14), max));
    }
}
