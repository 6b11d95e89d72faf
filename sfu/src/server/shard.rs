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
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use signaling::ServerMessage;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::{RouteTable, udp};
use crate::config::Config;
use crate::engine::{Command, ConnId, Engine, EngineConfig, EngineStats, Event, Input, Output};
use crate::metrics::Metrics;

/// Datagrams waiting for an engine beyond this are dropped: late media is
/// worthless and an unbounded queue would only grow under a flood.
const MAX_QUEUED_DATAGRAMS: usize = 8192;

pub enum ShardInput {
    Datagram {
        source: SocketAddr,
        contents: Vec<u8>,
        at: Instant,
    },
    /// Registers where messages for `conn` go; sent before its first command.
    Attach {
        conn: ConnId,
        outbox: UnboundedSender<SessionOut>,
    },
    Command {
        conn: ConnId,
        command: Command,
    },
    Stop,
}

/// What a signaling session receives from its engine.
#[derive(Debug)]
pub enum SessionOut {
    Message(ServerMessage),
    /// The participant is gone: close the socket after what came before.
    Close,
}

#[derive(Clone)]
pub struct ShardHandle {
    tx: UnboundedSender<ShardInput>,
    queued_datagrams: Arc<AtomicUsize>,
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

    pub fn attach(&self, conn: ConnId, outbox: UnboundedSender<SessionOut>) {
        let _ = self.tx.send(ShardInput::Attach { conn, outbox });
    }

    pub fn command(&self, conn: ConnId, command: Command) {
        let _ = self.tx.send(ShardInput::Command { conn, command });
    }

    pub fn stop(&self) {
        let _ = self.tx.send(ShardInput::Stop);
    }
}

pub fn spawn_all(
    config: &Config,
    announced: &[SocketAddr],
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
        });
        receivers.push(rx);
    }
    let peers = Arc::new(handles.clone());
    for (index, rx) in receivers.into_iter().enumerate() {
        let mut engine_config = EngineConfig::new(announced.to_vec());
        engine_config.shard = index as u8;
        engine_config.reconnect_grace = config.reconnect_grace();
        engine_config.keyframe_request_interval =
            Duration::from_millis(config.keyframe_request_interval_ms);
        engine_config.max_participants_per_room = config.max_participants_per_room;
        engine_config.max_tracks_per_participant = config.max_tracks_per_participant;
        // Each shard waits on its own handle to the one socket (readiness is
        // per runtime); the sends go through the shared one.
        let reader = socket.try_clone().map_err(|e| e.to_string())?;
        let mut shard = Shard {
            index,
            engine: Engine::new(engine_config, cert.clone(), Instant::now()),
            sessions: HashMap::new(),
            socket: socket.clone(),
            peers: peers.clone(),
            routes: routes.clone(),
            metrics: metrics.clone(),
            queued_datagrams: handles[index].queued_datagrams.clone(),
            last_stats: EngineStats::default(),
            last_export: Instant::now(),
            media_signals: media_signals.clone(),
        };
        std::thread::Builder::new()
            .name(format!("engine-{index}"))
            .spawn(move || shard.run(rx, reader))
            .map_err(|e| e.to_string())?;
    }
    Ok(handles)
}

struct Shard {
    index: usize,
    engine: Engine,
    sessions: HashMap<ConnId, UnboundedSender<SessionOut>>,
    socket: Arc<UdpSocket>,
    /// Every shard's handle (its own included), to pass on datagrams.
    peers: Arc<Vec<ShardHandle>>,
    routes: RouteTable,
    metrics: Arc<Metrics>,
    queued_datagrams: Arc<AtomicUsize>,
    last_stats: EngineStats,
    last_export: Instant,
    media_signals: UnboundedSender<MediaSignal>,
}

/// What call control hears from the media plane.
#[derive(Debug)]
pub enum MediaSignal {
    Connected { call_id: String, user_id: String },
    Left { call_id: String, user_id: String },
}

impl Shard {
    fn run(&mut self, rx: UnboundedReceiver<ShardInput>, reader: UdpSocket) {
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
        let mut buf = vec![0u8; udp::MAX_DATAGRAM];
        loop {
            tokio::select! {
                input = rx.recv() => match input {
                    None | Some(ShardInput::Stop) => break,
                    Some(input) => self.handle(input),
                },
                received = reader.recv_from(&mut buf) => match received {
                    Ok((n, source)) => self.datagram(source, &buf[..n]),
                    // ICMP errors surface here on some systems: keep going.
                    Err(e) => tracing::debug!(error = %e, "udp recv"),
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    self.engine.handle_input(Input::Timeout, Instant::now());
                }
            }
            deadline = self.flush();
        }
    }

    /// A datagram this thread read: into its own engine, or on to the
    /// shard that owns its source.
    fn datagram(&mut self, source: SocketAddr, data: &[u8]) {
        let at = Instant::now();
        self.metrics.udp_packets_in.inc();
        self.metrics.udp_bytes_in.inc_by(data.len() as u64);
        match udp::route(&self.routes, source, data) {
            Some(shard) if shard == self.index => {
                let destination = self.destination_for(source);
                self.engine.handle_input(
                    Input::Datagram {
                        source,
                        destination,
                        contents: data,
                    },
                    at,
                );
            }
            Some(shard) => {
                let input = ShardInput::Datagram {
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
                source,
                contents,
                at,
            } => {
                self.queued_datagrams.fetch_sub(1, Ordering::Relaxed);
                let destination = self.destination_for(source);
                self.engine.handle_input(
                    Input::Datagram {
                        source,
                        destination,
                        contents: &contents,
                    },
                    at,
                );
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
            ShardInput::Stop => {}
        }
    }

    /// The announced address a datagram was sent to. The socket is bound to
    /// one port; with several announced IPs, the one of the sender's family.
    fn destination_for(&self, source: SocketAddr) -> SocketAddr {
        let announced = self.engine.host_candidates();
        announced
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == source.is_ipv4())
            .or_else(|| announced.first().copied())
            .unwrap_or(source)
    }

    /// Sends everything the engine produced; returns its next deadline.
    fn flush(&mut self) -> Instant {
        let deadline = loop {
            match self.engine.poll_output() {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => match self.socket.send_to(&t.contents, t.destination) {
                    Ok(n) => {
                        self.metrics.udp_packets_out.inc();
                        self.metrics.udp_bytes_out.inc_by(n as u64);
                    }
                    Err(e) => tracing::debug!(destination = %t.destination, error = %e, "udp send"),
                },
                Output::Event(event) => self.on_event(event),
            }
        };
        self.export_stats();
        deadline
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Message { conn, message } => {
                if let ServerMessage::Error { code, .. } = &message {
                    let code = signaling::encode(code);
                    self.metrics
                        .signaling_errors
                        .with_label_values(&[code.trim_matches('"')])
                        .inc();
                }
                if let Some(outbox) = self.sessions.get(&conn) {
                    let _ = outbox.send(SessionOut::Message(message));
                }
            }
            Event::ConnClosed { conn } => {
                if let Some(outbox) = self.sessions.remove(&conn) {
                    let _ = outbox.send(SessionOut::Close);
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
            Event::ParticipantConnected { call_id, user_id } => {
                let _ = self
                    .media_signals
                    .send(MediaSignal::Connected { call_id, user_id });
            }
            Event::ParticipantRemoved { call_id, user_id } => {
                let _ = self
                    .media_signals
                    .send(MediaSignal::Left { call_id, user_id });
            }
            Event::IceFailed => self.metrics.ice_failed.inc(),
        }
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
        m.udp_dropped
            .with_label_values(&["engine"])
            .inc_by(stats.dropped_datagrams - last.dropped_datagrams);
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
