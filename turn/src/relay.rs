//! The relay core, sans-IO: `turn-server-proto`'s servers (one per
//! listener) behind our policy. Inputs are datagrams / framed messages with
//! the time; outputs are transmits and socket commands for the shell. No
//! async runtime, no clock, no sockets (a tidy test checks).
//!
//! What the policy adds in front of the crate (see `turn/README.md`):
//! REST credentials (expiry checked at Allocate, the password recomputed
//! from the username with every configured secret), REQUESTED-TRANSPORT
//! UDP only, per-user and global allocation caps, peer rules at
//! CreatePermission / ChannelBind / Send (and again on every packet leaving
//! for a peer), a per-allocation bandwidth cap and a maximum allocation
//! lifetime.
//!
//! Poll order: after `handle_client` returned `stun_handled`, and on the
//! timer, call `poll` until it has no command, then send `poll_transmit`s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use turn_server_proto::api::{
    DelayedMessageOrChannelSend, SocketAllocateError, Transmit, TurnServerApi, TurnServerPollRet,
};
use turn_server_proto::server::TurnServer;
use turn_server_proto::types::attribute::{RequestedTransport, XorPeerAddress};
use turn_server_proto::types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH, SEND};
use turn_server_proto::types::prelude::DelayedTransmitBuild;
use turn_server_proto::types::stun::attribute::{
    Attribute, AttributeStaticType, ErrorCode, Nonce, Realm, Username,
};
use turn_server_proto::types::stun::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageIntegrityCredentials,
    MessageWrite, MessageWriteExt, MessageWriteVec,
};
use turn_server_proto::types::transmit::TransmitBuild;
use turn_server_proto::types::{AddressFamily, Instant, TransportType};

use crate::credentials::{self, UsernameError};
use crate::metrics::TurnMetrics;
use crate::peers::PeerRules;

/// UDP, as REQUESTED-TRANSPORT carries it.
const UDP_PROTOCOL: u8 = 17;
const PENDING_FOR: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub realm: String,
    /// REST API secrets: any of them verifies a password.
    pub secrets: Vec<String>,
    pub peers: PeerRules,
    /// An allocation ends this long after it was made, however often refreshed.
    pub max_allocation_lifetime: Duration,
    pub allocations_per_user: usize,
    pub max_allocations: usize,
    /// Bytes per second each allocation may relay (each direction); 0: no cap.
    pub bandwidth_per_allocation: u64,
}

/// Unauthenticated requests over UDP answered per source IP per second. A
/// 28-byte Allocate without credentials is answered with a ~116-byte 401
/// (about 4x): from a spoofed source that is a reflector, so the answers to
/// one source are capped; beyond the cap requests are dropped unanswered.
/// A real client needs one (the 401 that carries the nonce) per allocation.
pub const UNAUTHENTICATED_ANSWERS_PER_SECOND: u32 = 20;

/// Unauthenticated answers per source IP in the current one-second window.
#[derive(Debug, Default)]
struct UnauthenticatedAnswers {
    window_start: Option<Instant>,
    by_source: HashMap<std::net::IpAddr, u32>,
}

impl UnauthenticatedAnswers {
    /// One more answer to `source` now, if its budget allows.
    fn allow(&mut self, source: std::net::IpAddr, now: Instant) -> bool {
        let expired = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= Duration::from_secs(1));
        if expired {
            // The whole map goes with its window: no per-key sweep.
            self.by_source.clear();
            self.window_start = Some(now);
        }
        let sent = self.by_source.entry(source).or_default();
        *sent += 1;
        *sent <= UNAUTHENTICATED_ANSWERS_PER_SECOND
    }
}

/// Index of a listener (`add_listener` order).
pub type ListenerId = usize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// To a client, over the listener it came from (TCP: already framed).
    ToClient {
        listener: ListenerId,
        to: SocketAddr,
        data: Vec<u8>,
    },
    /// From an allocation's relay socket to a peer.
    ToPeer {
        relay: SocketAddr,
        to: SocketAddr,
        data: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Bind a UDP relay socket of `family` for this client; answer with
    /// [`Relay::relay_bound`].
    BindRelay {
        listener: ListenerId,
        client: SocketAddr,
        family: AddressFamily,
    },
    /// The allocation is gone: close its relay socket.
    CloseRelay { relay: SocketAddr },
    /// Close a TCP / TLS client connection.
    CloseClient {
        listener: ListenerId,
        client: SocketAddr,
    },
}

#[derive(Debug)]
struct Allocation {
    listener: ListenerId,
    client: SocketAddr,
    user: String,
    created_at: Instant,
    to_peer: Bucket,
    to_client: Bucket,
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    ToPeer,
    ToClient,
}

/// Bytes per second, with a one-second burst.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(now: Instant, rate: u64) -> Bucket {
        Bucket {
            tokens: rate as f64,
            last: now,
        }
    }

    fn take(&mut self, bytes: usize, rate: u64, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate as f64).min(rate as f64);
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    servers: Vec<TurnServer>,
    /// Unix seconds at `Instant::ZERO` (credential expiry is wall-clock).
    unix_at_zero: u64,
    /// Usernames added to the servers, with their password (to sign our
    /// own answers). The crate cannot forget users; this map can.
    users: HashMap<String, (String, u64)>,
    /// Allocate requests passed to the crate: (listener, client) -> user,
    /// when. Dropped when the socket is bound, or after `PENDING_FOR` (the
    /// crate refused it, e.g. a stale nonce).
    pending: HashMap<(ListenerId, SocketAddr), (String, Instant)>,
    allocations: HashMap<SocketAddr, Allocation>,
    by_client: HashMap<(ListenerId, SocketAddr), SocketAddr>,
    unauthenticated: UnauthenticatedAnswers,
    metrics: Option<Arc<TurnMetrics>>,
}

/// What `handle_client` did with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Relayed data (ChannelData or Send): no need to poll.
    Data,
    /// A STUN request went to the crate (or was answered): poll next.
    Stun,
    Dropped,
}

impl Relay {
    pub fn new(config: RelayConfig, unix_at_zero: u64, metrics: Option<Arc<TurnMetrics>>) -> Relay {
        Relay {
            config,
            servers: Vec::new(),
            unix_at_zero,
            users: HashMap::new(),
            pending: HashMap::new(),
            allocations: HashMap::new(),
            by_client: HashMap::new(),
            unauthenticated: UnauthenticatedAnswers::default(),
            metrics,
        }
    }

    pub fn add_listener(&mut self, transport: TransportType, addr: SocketAddr) -> ListenerId {
        let mut server = TurnServer::new(transport, addr, self.config.realm.clone());
        for (username, (password, _)) in &self.users {
            server.add_user(username.clone(), password.clone());
        }
        self.servers.push(server);
        self.servers.len() - 1
    }

    pub fn allocations(&self) -> usize {
        self.allocations.len()
    }

    /// The client of `listener` at `client` holds an allocation.
    pub fn has_allocation(&self, listener: ListenerId, client: SocketAddr) -> bool {
        self.by_client.contains_key(&(listener, client))
    }

    fn unix_now(&self, now: Instant) -> u64 {
        self.unix_at_zero + now.saturating_duration_since(Instant::ZERO).as_secs()
    }

    fn count(&self, f: impl FnOnce(&TurnMetrics)) {
        if let Some(m) = &self.metrics {
            f(m);
        }
    }

    /// A datagram (UDP) or one whole message (TCP / TLS, unpadded) from a client.
    pub fn handle_client(
        &mut self,
        listener: ListenerId,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Handled {
        let Some(server) = self.servers.get(listener) else {
            return Handled::Dropped;
        };
        let (transport, listen_addr) = (server.transport(), server.listen_address());
        let is_stun = data.first().is_some_and(|b| b >> 6 == 0);
        if is_stun && let Some(answer) = self.policy(listener, from, data, now) {
            if let Some(data) = answer {
                out.push(Output::ToClient {
                    listener,
                    to: from,
                    data,
                });
            }
            return Handled::Stun;
        }
        let transmit = Transmit::new(data, transport, from, listen_addr);
        if let Some(t) = self.servers[listener].recv(transmit, now) {
            self.route(t, now, out);
        }
        if is_stun {
            Handled::Stun
        } else {
            Handled::Data
        }
    }

    /// A datagram from a peer, arriving on the relay socket `relay`.
    pub fn handle_peer(
        &mut self,
        relay: SocketAddr,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let Some(listener) = self.admit(relay, Direction::ToClient, data.len(), now) else {
            return;
        };
        let transmit = Transmit::new(data, TransportType::Udp, from, relay);
        if let Some(t) = self.servers[listener].recv(transmit, now) {
            self.count_relayed(Direction::ToClient, data.len());
            self.route(t, now, out);
        }
    }

    /// Whether `len` bytes may pass through `relay`'s allocation now: it is
    /// alive and under its bandwidth cap. Returns its listener.
    fn admit(
        &mut self,
        relay: SocketAddr,
        direction: Direction,
        len: usize,
        now: Instant,
    ) -> Option<ListenerId> {
        let rate = self.config.bandwidth_per_allocation;
        let max_life = self.config.max_allocation_lifetime;
        let alloc = self.allocations.get_mut(&relay)?;
        if now.saturating_duration_since(alloc.created_at) >= max_life {
            return None;
        }
        let bucket = match direction {
            Direction::ToPeer => &mut alloc.to_peer,
            Direction::ToClient => &mut alloc.to_client,
        };
        if !bucket.take(len, rate, now) {
            self.count(|m| m.dropped.with_label_values(&["bandwidth"]).inc());
            return None;
        }
        Some(alloc.listener)
    }

    fn count_relayed(&self, direction: Direction, len: usize) {
        let label = match direction {
            Direction::ToPeer => "to_peer",
            Direction::ToClient => "to_client",
        };
        self.count(|m| {
            m.relayed_packets.with_label_values(&[label]).inc();
            m.relayed_bytes
                .with_label_values(&[label])
                .inc_by(len as u64);
        });
    }

    /// Sends one built transmit where it goes: a client (by listen address)
    /// or a peer (from a relay address), with the peer rules and the
    /// bandwidth cap applied on the way out.
    fn route<T: AsRef<[u8]> + std::fmt::Debug>(
        &mut self,
        t: TransmitBuild<DelayedMessageOrChannelSend<T>>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let (from, to) = (t.from, t.to);
        if let Some(listener) = self.listener_of(t.transport, from) {
            let tcp = self.servers[listener].transport() == TransportType::Tcp;
            let mut data = t.data.build();
            if tcp && data.first().is_some_and(|b| b >> 6 == 1) {
                // ChannelData on a stream is padded to 4 bytes (RFC 8656 12.5).
                data.resize(data.len().next_multiple_of(4), 0);
            }
            out.push(Output::ToClient { listener, to, data });
            return;
        }
        // Leaving through a relay socket: only to allowed peers, within the cap.
        if !self.config.peers.allows(to) {
            self.count(|m| m.permission_denied.inc());
            return;
        }
        let len = t.data.len();
        if self.admit(from, Direction::ToPeer, len, now).is_none() {
            return;
        }
        self.count_relayed(Direction::ToPeer, len);
        out.push(Output::ToPeer {
            relay: from,
            to,
            data: t.data.build(),
        });
    }

    /// The listener a transmit leaves from. By transport and address: UDP
    /// and TCP share one port by default (3478), and an answer to a TCP
    /// client must not leave as a UDP datagram.
    fn listener_of(&self, transport: TransportType, addr: SocketAddr) -> Option<ListenerId> {
        self.servers
            .iter()
            .position(|s| s.transport() == transport && s.listen_address() == addr)
    }

    /// `None` (answer it) if `from` may get another unauthenticated answer
    /// now; `Some(None)` (drop it, counted) if not. Stream clients passed
    /// a TCP handshake and cannot spoof: always answered.
    fn budget_unauthenticated(
        &mut self,
        listener: ListenerId,
        from: SocketAddr,
        now: Instant,
    ) -> Option<Option<Vec<u8>>> {
        let udp = self.servers[listener].transport() == TransportType::Udp;
        if !udp || self.unauthenticated.allow(from.ip(), now) {
            return None;
        }
        if let Some(m) = &self.metrics {
            m.dropped
                .with_label_values(&["unauthenticated_over_budget"])
                .inc();
        }
        Some(None)
    }

    /// Our checks on a STUN message from a client. `Some(answer)`: it is
    /// handled here (answered, or dropped if `None`); `None`: pass it to the crate.
    fn policy(
        &mut self,
        listener: ListenerId,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> Option<Option<Vec<u8>>> {
        let msg = Message::from_bytes(data).ok()?;
        let method = msg.method();
        if msg.class() == MessageClass::Indication {
            if method == SEND {
                let peer = msg.attribute::<XorPeerAddress>().ok()?;
                if !self.config.peers.allows(peer.addr(msg.transaction_id())) {
                    self.count(|m| m.permission_denied.inc());
                    return Some(None);
                }
            }
            return None;
        }
        if msg.class() != MessageClass::Request {
            return None;
        }
        // Unauthenticated requests get the crate's 401 with a fresh nonce,
        // within the source's budget (UDP sources can be spoofed).
        let Ok(username) = msg.attribute::<Username>() else {
            return self.budget_unauthenticated(listener, from, now);
        };
        let username = username.username().to_string();
        if method == ALLOCATE {
            return self.admit_allocate(listener, from, &msg, &username, now);
        }
        let credentials = match self.users.get(&username) {
            Some((password, _)) => self.key(&username, password),
            None => {
                // Never admitted: only an Allocate introduces a username.
                self.count(|m| m.auth_failures.inc());
                if self.budget_unauthenticated(listener, from, now).is_some() {
                    return Some(None);
                }
                return Some(Some(unauthorized(&msg)));
            }
        };
        // A request that fails integrity goes to the crate, which says 401.
        msg.validate_integrity(&credentials).ok()?;
        match method {
            m if m == REFRESH => {
                let expired = self
                    .by_client
                    .get(&(listener, from))
                    .and_then(|relay| self.allocations.get(relay))
                    .is_some_and(|a| {
                        now.saturating_duration_since(a.created_at)
                            >= self.config.max_allocation_lifetime
                    });
                expired.then(|| Some(error(&msg, 437, "Allocation Mismatch", &credentials)))
            }
            m if m == CREATE_PERMISSION || m == CHANNEL_BIND => {
                let denied = msg
                    .iter_attributes()
                    .filter(|(_, raw)| raw.get_type() == XorPeerAddress::TYPE)
                    .filter_map(|(_, raw)| XorPeerAddress::try_from(&raw).ok())
                    .any(|peer| !self.config.peers.allows(peer.addr(msg.transaction_id())));
                if denied {
                    self.count(|m| m.permission_denied.inc());
                    Some(Some(error(&msg, 403, "Forbidden", &credentials)))
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    fn key(&self, username: &str, password: &str) -> MessageIntegrityCredentials {
        LongTermKeyCredentials::new(
            username.to_string(),
            password.to_string(),
            self.config.realm.clone(),
        )
        .into()
    }

    fn admit_allocate(
        &mut self,
        listener: ListenerId,
        from: SocketAddr,
        msg: &Message<'_>,
        username: &str,
        now: Instant,
    ) -> Option<Option<Vec<u8>>> {
        let refuse = |relay: &Relay, reason: &str| {
            relay.count(|m| m.allocation_failures.with_label_values(&[reason]).inc());
        };
        let user = match credentials::check_username(username, self.unix_now(now)) {
            Ok((_, user)) => user.to_string(),
            Err(e) => {
                self.count(|m| m.auth_failures.inc());
                refuse(
                    self,
                    if e == UsernameError::Expired {
                        "expired"
                    } else {
                        "bad_username"
                    },
                );
                return Some(Some(unauthorized(msg)));
            }
        };
        let Some((password, credentials)) = self.config.secrets.iter().find_map(|secret| {
            let password = credentials::password(secret, username);
            let key = self.key(username, &password);
            msg.validate_integrity(&key)
                .is_ok()
                .then_some((password, key))
        }) else {
            self.count(|m| m.auth_failures.inc());
            refuse(self, "bad_password");
            return Some(Some(unauthorized(msg)));
        };
        if self.by_client.contains_key(&(listener, from)) {
            return None; // a retransmission or a mismatch: the crate answers
        }
        let transport = msg.attribute::<RequestedTransport>().map(|t| t.protocol());
        if transport != Ok(UDP_PROTOCOL) {
            refuse(self, "transport");
            let reason = "Unsupported Transport Protocol";
            return Some(Some(error(msg, 442, reason, &credentials)));
        }
        let of_user = self.allocations.values().filter(|a| a.user == user).count()
            + self.pending.values().filter(|(u, _)| *u == user).count();
        if of_user >= self.config.allocations_per_user {
            refuse(self, "user_quota");
            return Some(Some(error(
                msg,
                486,
                "Allocation Quota Reached",
                &credentials,
            )));
        }
        if self.allocations.len() + self.pending.len() >= self.config.max_allocations {
            refuse(self, "capacity");
            return Some(Some(error(msg, 508, "Insufficient Capacity", &credentials)));
        }
        if !self.users.contains_key(username) {
            for server in &mut self.servers {
                server.add_user(username.to_string(), password.clone());
            }
            let expiry = credentials::check_username(username, 0).map_or(0, |(e, _)| e);
            self.users.insert(username.to_string(), (password, expiry));
        }
        self.pending.insert((listener, from), (user, now));
        None
    }

    /// Runs every server's timers and collects what the shell must do.
    /// Returns when to call again.
    pub fn poll(&mut self, now: Instant, commands: &mut Vec<Command>) -> Instant {
        let mut next = now + Duration::from_secs(1);
        for listener in 0..self.servers.len() {
            loop {
                match self.servers[listener].poll(now) {
                    TurnServerPollRet::WaitUntil(at) => {
                        next = next.min(at);
                        break;
                    }
                    TurnServerPollRet::AllocateSocket {
                        client_addr,
                        family,
                        ..
                    } => commands.push(Command::BindRelay {
                        listener,
                        client: client_addr,
                        family,
                    }),
                    TurnServerPollRet::SocketClose {
                        transport: TransportType::Udp,
                        listen_addr,
                    } => {
                        if let Some(a) = self.allocations.remove(&listen_addr) {
                            tracing::info!(user_id = %a.user, relay = %listen_addr, "TURN allocation ended");
                            self.by_client.remove(&(a.listener, a.client));
                            self.count(|m| m.allocations_active.dec());
                            commands.push(Command::CloseRelay { relay: listen_addr });
                        }
                    }
                    // This listener's server asked: the connection is its own.
                    TurnServerPollRet::TcpClose { remote_addr, .. } => {
                        commands.push(Command::CloseClient {
                            listener,
                            client: remote_addr,
                        });
                    }
                    // TCP allocations are refused by policy; nothing else to do.
                    TurnServerPollRet::TcpConnect { .. }
                    | TurnServerPollRet::SocketClose { .. } => {}
                }
            }
        }
        // Allocations past the maximum lifetime end here, whatever the crate
        // thinks of them (their relay socket closes; data stops both ways).
        let max_life = self.config.max_allocation_lifetime;
        let over: Vec<SocketAddr> = self
            .allocations
            .iter()
            .filter(|(_, a)| now.saturating_duration_since(a.created_at) >= max_life)
            .map(|(relay, _)| *relay)
            .collect();
        for relay in over {
            if let Some(a) = self.allocations.remove(&relay) {
                tracing::info!(user_id = %a.user, relay = %relay, "TURN allocation reached its maximum lifetime");
                self.by_client.remove(&(a.listener, a.client));
                self.count(|m| m.allocations_active.dec());
                commands.push(Command::CloseRelay { relay });
            }
        }
        self.pending
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < PENDING_FOR);
        // Usernames whose credentials expired longer ago than any allocation
        // can live are forgotten here (the crate keeps them; see README).
        let unix_now = self.unix_now(now);
        let keep_for = max_life.as_secs();
        self.users
            .retain(|_, (_, expiry)| expiry.saturating_add(keep_for) > unix_now);
        next
    }

    /// The shell bound (or failed to bind) the relay socket of a `BindRelay`.
    pub fn relay_bound(
        &mut self,
        listener: ListenerId,
        client: SocketAddr,
        family: AddressFamily,
        result: Result<SocketAddr, SocketAllocateError>,
        now: Instant,
    ) {
        let Some(server) = self.servers.get_mut(listener) else {
            return;
        };
        let (transport, listen_addr) = (server.transport(), server.listen_address());
        server.allocated_socket(
            transport,
            listen_addr,
            client,
            TransportType::Udp,
            family,
            result,
            now,
        );
        let user = self
            .pending
            .remove(&(listener, client))
            .map(|(user, _)| user);
        match (result, user) {
            (Ok(relay), Some(user)) => {
                tracing::info!(user_id = %user, client = %client, relay = %relay, "TURN allocation");
                let rate = self.config.bandwidth_per_allocation;
                self.allocations.insert(
                    relay,
                    Allocation {
                        listener,
                        client,
                        user,
                        created_at: now,
                        to_peer: Bucket::new(now, rate),
                        to_client: Bucket::new(now, rate),
                    },
                );
                self.by_client.insert((listener, client), relay);
                self.count(|m| {
                    m.allocations_created.inc();
                    m.allocations_active.inc();
                });
            }
            (Err(_), _) => {
                self.count(|m| m.allocation_failures.with_label_values(&["socket"]).inc())
            }
            (Ok(_), None) => {}
        }
    }

    /// Messages the crate queued (responses after socket allocation).
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<Output>) {
        for listener in 0..self.servers.len() {
            while let Some(t) = self.servers[listener].poll_transmit(now) {
                let tcp = self.servers[listener].transport() == TransportType::Tcp;
                let mut data = t.data;
                if tcp && data.first().is_some_and(|b| b >> 6 == 1) {
                    data.resize(data.len().next_multiple_of(4), 0);
                }
                out.push(Output::ToClient {
                    listener,
                    to: t.to,
                    data,
                });
            }
        }
    }

    /// A TCP / TLS client connection closed.
    pub fn client_closed(&mut self, listener: ListenerId, client: SocketAddr, now: Instant) {
        if let Some(server) = self.servers.get_mut(listener) {
            let listen_addr = server.listen_address();
            let _ = server.recv(
                Transmit::new(&[][..], TransportType::Tcp, client, listen_addr),
                now,
            );
        }
        self.pending.remove(&(listener, client));
    }
}

/// 401 to a request we refuse to authenticate, echoing its REALM and NONCE
/// so a client can tell which challenge failed.
fn unauthorized(msg: &Message<'_>) -> Vec<u8> {
    let mut b = Message::builder_error(msg, MessageWriteVec::new());
    if let Ok(code) = ErrorCode::builder(401).reason("Unauthorized").build() {
        let _ = b.add_attribute(&code);
    }
    if let Ok(realm) = msg.attribute::<Realm>() {
        let _ = b.add_attribute(&realm);
    }
    if let Ok(nonce) = msg.attribute::<Nonce>() {
        let _ = b.add_attribute(&nonce);
    }
    let _ = b.add_fingerprint();
    b.finish()
}

/// An error response signed with the client's key.
fn error(
    msg: &Message<'_>,
    code: u16,
    reason: &str,
    credentials: &MessageIntegrityCredentials,
) -> Vec<u8> {
    let mut b = Message::builder_error(msg, MessageWriteVec::new());
    if let Ok(code) = ErrorCode::builder(code).reason(reason).build() {
        let _ = b.add_attribute(&code);
    }
    let _ = b.add_message_integrity(credentials, IntegrityAlgorithm::Sha1);
    let _ = b.add_fingerprint();
    b.finish()
}
