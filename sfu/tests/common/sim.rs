//! A fake-clock, fake-network harness: one `Engine` and several `Bot`s,
//! datagrams delivered in memory by address, time advanced in ticks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sfu::engine::{
    Command, ConnId, DeviceLabel, Engine, EngineConfig, Event, Input, JoinRequest, Output,
};
use signaling::{ClientMessage, Permissions};

use loadtest::bot::{Bot, TICK};

pub const SERVER: &str = "192.0.2.10:7882";

pub struct Sim {
    pub engine: Engine,
    pub bots: Vec<Bot>,
    pub now: Instant,
    pub start: Instant,
    pub events: Vec<Event>,
    /// Bots whose datagrams are dropped (a broken path).
    pub cut: Vec<usize>,
    /// Bots whose every Nth datagram to the server is dropped (a lossy
    /// uplink), and how many each sent.
    pub lossy: HashMap<usize, u64>,
    sent: HashMap<usize, u64>,
    /// RTP packets with padding the engine sent (bandwidth probes: the
    /// forwarded media has none), by destination.
    pub padded_rtp_to: HashMap<SocketAddr, u64>,
    /// Every datagram the engine sent to this address, as sent (set it to
    /// record).
    pub record_sent_to: Option<(SocketAddr, Vec<Vec<u8>>)>,
    /// Addresses every Nth RTP datagram to which is dropped (a lossy
    /// downlink), and how many RTP datagrams went to each.
    pub lossy_to: HashMap<SocketAddr, (u64, u64)>,
    last_media: Instant,
}

pub fn engine_config() -> EngineConfig {
    EngineConfig::new(vec![SERVER.parse().unwrap()])
}

impl Sim {
    pub fn new(config: EngineConfig) -> Sim {
        str0m::crypto::from_feature_flags().install_process_default();
        let cert = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .unwrap();
        let now = Instant::now();
        Sim {
            engine: Engine::new(config, cert, now),
            bots: Vec::new(),
            now,
            start: now,
            events: Vec::new(),
            cut: Vec::new(),
            lossy: HashMap::new(),
            sent: HashMap::new(),
            padded_rtp_to: HashMap::new(),
            record_sent_to: None,
            lossy_to: HashMap::new(),
            last_media: now,
        }
    }

    fn server(&self) -> SocketAddr {
        SERVER.parse().unwrap()
    }

    pub fn conn(i: usize) -> ConnId {
        ConnId(i as u64 + 1)
    }

    /// Adds a bot and joins it to `room` with full permissions.
    pub fn join(&mut self, name: &str, room: &str) -> usize {
        self.join_with(name, room, Permissions::ALL)
    }

    pub fn join_with(&mut self, name: &str, room: &str, permissions: Permissions) -> usize {
        let i = self.bots.len();
        let base = 10 + i as u8;
        let bot = Bot::new(
            name,
            SocketAddr::from(([10, 0, 0, base], 5000)),
            SocketAddr::from(([10, 0, 0, base], 5001)),
            self.now,
        );
        self.bots.push(bot);
        self.command(
            i,
            Command::Join(JoinRequest {
                room: room.to_string(),
                user_id: format!("user-{name}"),
                participant_id: format!("p-{name}"),
                permissions,
                auto_subscribe: true,
                device: DeviceLabel::unknown(),
            }),
        );
        i
    }

    /// A room where each named bot joins and publishes audio and video, all
    /// connected.
    pub fn publishing(config: EngineConfig, room: &str, names: &[&str]) -> Sim {
        let mut sim = Sim::new(config);
        for name in names {
            sim.join_publishing(name, room);
        }
        sim.connect_all();
        sim
    }

    /// Joins a bot to `room` and has it publish audio and video.
    pub fn join_publishing(&mut self, name: &str, room: &str) -> usize {
        let i = self.join(name, room);
        self.bots[i].publish();
        self.deliver();
        i
    }

    pub fn command(&mut self, i: usize, command: Command) {
        self.engine
            .handle_input(Input::Command(Sim::conn(i), command), self.now);
        self.deliver();
    }

    /// Moves every queued message and datagram until nothing moves.
    pub fn deliver(&mut self) {
        let server = self.server();
        for _ in 0..10_000 {
            let mut moved = false;
            loop {
                match self.engine.poll_output() {
                    Output::Timeout(_) => break,
                    Output::Transmit(t) => {
                        moved = true;
                        let dest = t.destination;
                        if is_padded_rtp(&t.contents) {
                            *self.padded_rtp_to.entry(dest).or_default() += 1;
                        }
                        if let Some((to, sent)) = &mut self.record_sent_to
                            && *to == dest
                        {
                            sent.push(t.contents.to_vec());
                        }
                        if let Some((every, count)) = self.lossy_to.get_mut(&dest)
                            && is_rtp(&t.contents)
                        {
                            *count += 1;
                            if count.is_multiple_of(*every) {
                                continue;
                            }
                        }
                        if let Some(i) = self.bot_at(dest)
                            && !self.cut.contains(&i)
                        {
                            let now = self.now;
                            self.bots[i].handle_datagram(server, dest, &t.contents, now);
                        }
                    }
                    Output::Event(Event::Message { conn, message }) => {
                        moved = true;
                        let i = (conn.0 - 1) as usize;
                        if let Some(bot) = self.bots.get_mut(i) {
                            bot.handle_message(message);
                        }
                    }
                    Output::Event(e) => self.events.push(e),
                }
            }
            for i in 0..self.bots.len() {
                self.bots[i].poll();
                while let Some(message) = self.bots[i].outbox.pop_front() {
                    moved = true;
                    let command = to_command(message);
                    self.engine
                        .handle_input(Input::Command(Sim::conn(i), command), self.now);
                }
                while let Some(t) = self.bots[i].transmits.pop_front() {
                    moved = true;
                    if self.cut.contains(&i) {
                        continue;
                    }
                    let sent = self.sent.entry(i).or_default();
                    *sent += 1;
                    if self
                        .lossy
                        .get(&i)
                        .is_some_and(|every| sent.is_multiple_of(*every))
                    {
                        continue;
                    }
                    self.arrive_at_server(&t);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the simulation did not settle");
    }

    /// One tick of `bot`'s media whose datagrams reach the server `delay`
    /// after the bot sent them (fake time moves on meanwhile, nothing else
    /// is sent); then everything is delivered.
    pub fn send_media_late(&mut self, bot: usize, delay: Duration) {
        let now = self.now;
        self.bots[bot].send_media(now);
        // str0m sends what was written at its next timeout.
        self.bots[bot].handle_timeout(now);
        self.bots[bot].poll();
        let held: Vec<_> = self.bots[bot].transmits.drain(..).collect();
        self.now += delay;
        for t in &held {
            self.arrive_at_server(t);
        }
        // What the engine's pacers hold goes out at its next timeout.
        self.engine.handle_input(Input::Timeout, self.now);
        self.deliver();
    }

    /// A bot's datagram arrives at the server now.
    fn arrive_at_server(&mut self, t: &str0m::net::Transmit) {
        let server = self.server();
        // As the shard does: the engine's own lookup first, then the route
        // (here: one engine, so straight to it).
        if self
            .engine
            .handle_known_datagram(t.source, server, &t.contents, self.now)
        {
            return;
        }
        self.engine.handle_input(
            Input::Datagram {
                proto: str0m::net::Protocol::Udp,
                source: t.source,
                destination: server,
                contents: &t.contents,
            },
            self.now,
        );
    }

    /// Hands one engine transmit to the bot it is addressed to.
    pub fn deliver_to_bot(&mut self, t: &str0m::net::Transmit) {
        let server = self.server();
        if let Some(i) = self.bot_at(t.destination)
            && !self.cut.contains(&i)
        {
            let now = self.now;
            self.bots[i].handle_datagram(server, t.destination, &t.contents, now);
        }
    }

    fn bot_at(&self, addr: SocketAddr) -> Option<usize> {
        self.bots
            .iter()
            .position(|b| b.publisher_addr == addr || b.subscriber_addr == addr)
    }

    /// Advances fake time by `duration` in ticks; publishing bots send a
    /// packet pair every 20 ms.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.now += TICK;
            let now = self.now;
            self.engine.handle_input(Input::Timeout, now);
            for bot in &mut self.bots {
                bot.handle_timeout(now);
            }
            if now.duration_since(self.last_media) >= Duration::from_millis(20) {
                self.last_media = now;
                for bot in &mut self.bots {
                    bot.send_media(now);
                }
            }
            self.deliver();
        }
    }

    /// Runs until every bot's two connections are up (bounded).
    pub fn connect_all(&mut self) {
        for _ in 0..400 {
            if self.bots.iter().all(|b| b.is_up()) {
                return;
            }
            self.run_for(TICK);
        }
        panic!("bots did not connect");
    }
}

pub fn to_command(message: ClientMessage) -> Command {
    Command::from_client(message).expect("bots send join and ping only over a real socket")
}

/// An RTP packet (RFC 7983: first byte 128-191; RTCP's packet types are
/// 192-223 in the second byte) with its padding bit set.
/// RTP, not RTCP (RFC 5761: RTCP's packet types 192-223 read as a
/// marker bit and payload types 64-95).
pub fn is_rtp(datagram: &[u8]) -> bool {
    match datagram {
        [first, second, ..] => (128..192).contains(first) && !(192..224).contains(second),
        _ => false,
    }
}

fn is_padded_rtp(datagram: &[u8]) -> bool {
    match datagram {
        [first, second, ..] => {
            (128..192).contains(first) && !(192..224).contains(second) && first & 0x20 != 0
        }
        _ => false,
    }
}
