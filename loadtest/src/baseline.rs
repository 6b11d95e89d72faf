//! The bare-UDP baseline: what this machine's kernel does with the same
//! packet pattern when no WebRTC is involved. A fan-out relay (plain
//! blocking sockets, one thread, no encryption, no RTP) forwards every
//! packet a room member sends to every other member, all copies of one
//! packet in one `sendmmsg` call; clients send the same
//! shapes as the SFU bots (one audio packet and `video_kbps` of video per
//! 20 ms, probes with sequence and send time) and measure them the same way
//! (`TrackStats`), so the SFU's capacity can be stated as a ratio.
//!
//! Wire format: `J<room u32>` joins (answered `A`); `D<kind u8><probe 16>
//! <padding>` is media, forwarded as is.

use std::collections::HashMap;
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use std::time::{Duration, Instant};

use str0m::media::MediaKind;

use crate::bot::{PROBE_LEN, TrackStats, epoch};
use crate::report::{Measurement, Report};
use crate::server_stats::{self, ProcSample};

const MAX_PACKET: usize = 1100;

/// Runs the relay on `socket` forever (the caller's thread).
pub fn serve_relay(socket: &UdpSocket) -> std::io::Result<()> {
    let mut rooms: HashMap<u32, Vec<SocketAddr>> = HashMap::new();
    let mut room_of: HashMap<SocketAddr, u32> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    let mut fan_out = FanOut::default();
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        match buf.first() {
            Some(b'J') if n >= 5 => {
                let room = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
                if room_of.insert(from, room).is_none() {
                    rooms.entry(room).or_default().push(from);
                }
                let _ = socket.send_to(b"A", from);
            }
            Some(b'D') => {
                let Some(members) = room_of.get(&from).and_then(|r| rooms.get(r)) else {
                    continue;
                };
                let others = members.iter().filter(|m| **m != from);
                fan_out.send(socket, &buf[..n], others);
            }
            _ => {}
        }
    }
}

/// One datagram to many addresses in one `sendmmsg` system call (the
/// batched send a tuned relay would use), its headers reused across calls.
#[derive(Default)]
struct FanOut {
    headers: Option<MultiHeaders<SockaddrStorage>>,
    capacity: usize,
    addrs: Vec<Option<SockaddrStorage>>,
}

impl FanOut {
    fn send<'a>(
        &mut self,
        socket: &UdpSocket,
        payload: &[u8],
        to: impl Iterator<Item = &'a SocketAddr>,
    ) {
        self.addrs.clear();
        self.addrs
            .extend(to.map(|a| Some(SockaddrStorage::from(*a))));
        let count = self.addrs.len();
        if count == 0 {
            return;
        }
        if self.capacity < count {
            self.capacity = count.next_power_of_two();
            self.headers = Some(MultiHeaders::preallocate(self.capacity, None));
        }
        let Some(headers) = self.headers.as_mut() else {
            return;
        };
        let slices = vec![[IoSlice::new(payload)]; count];
        let no_cmsgs: [ControlMessage; 0] = [];
        let fd = socket.as_raw_fd();
        let sent = sendmmsg(
            fd,
            headers,
            &slices,
            &self.addrs,
            no_cmsgs,
            MsgFlags::empty(),
        )
        .map_or(0, |results| results.count());
        // A blocking socket sends them all; should the kernel stop early,
        // the rest go one by one.
        for addr in self.addrs.iter().skip(sent).flatten() {
            if let Some(to) = addr.as_sockaddr_in().map(|a| SocketAddr::from(*a)) {
                let _ = socket.send_to(payload, to);
            } else if let Some(to) = addr.as_sockaddr_in6().map(|a| SocketAddr::from(*a)) {
                let _ = socket.send_to(payload, to);
            }
        }
    }
}

/// Binds a relay socket with 4 MiB buffers (as the SFU's).
pub fn bind_relay(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

#[derive(Debug, Clone)]
pub struct BaselinePlan {
    pub relay: SocketAddr,
    /// The relay process, for its CPU time.
    pub relay_pid: Option<u32>,
    pub rooms: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub video_kbps: u32,
    pub duration: Duration,
    pub local_ip: IpAddr,
}

struct Client {
    socket: tokio::net::UdpSocket,
    created_at: Instant,
    joined: bool,
    /// By (sender id, kind).
    tracks: HashMap<(u32, u8), TrackStats>,
}

/// One client: joins `room`; if `publish`, sends as `sender`.
async fn run_client(
    plan: BaselinePlan,
    room: u32,
    sender: u32,
    publish: bool,
    until: Instant,
) -> Measurement {
    let socket = match tokio::net::UdpSocket::bind((plan.local_ip, 0)).await {
        Ok(s) => s,
        Err(_) => {
            return Measurement {
                joined: false,
                created_at: Instant::now(),
                tracks: Vec::new(),
                plis: 0,
                nacks: 0,
            };
        }
    };
    let mut c = Client {
        socket,
        created_at: Instant::now(),
        joined: false,
        tracks: HashMap::new(),
    };
    let mut join = vec![b'J'];
    join.extend_from_slice(&room.to_be_bytes());
    let video_bytes = (plan.video_kbps as usize * 1000 / 8 / 50).max(PROBE_LEN + 2);
    let video_packets = video_bytes.div_ceil(MAX_PACKET);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut buf = vec![0u8; 2048];
    let (mut audio_seq, mut video_seq) = (0u64, 0u64);
    while Instant::now() < until {
        tokio::select! {
            _ = tick.tick() => {
                if !c.joined {
                    let _ = c.socket.send_to(&join, plan.relay).await;
                    continue;
                }
                if !publish {
                    continue;
                }
                let sent_us = Instant::now().saturating_duration_since(epoch()).as_micros() as u64;
                audio_seq += 1;
                let audio = packet(0, sender, audio_seq, sent_us, 80);
                let _ = c.socket.send_to(&audio, plan.relay).await;
                for _ in 0..video_packets {
                    video_seq += 1;
                    let video = packet(1, sender, video_seq, sent_us, video_bytes / video_packets);
                    let _ = c.socket.send_to(&video, plan.relay).await;
                }
            }
            r = c.socket.recv_from(&mut buf) => {
                let Ok((n, _)) = r else { continue };
                let now = Instant::now();
                match buf[..n].first() {
                    Some(b'A') => c.joined = true,
                    Some(b'D') if n >= 2 + PROBE_LEN + 4 => {
                        let kind = buf[1];
                        let at = 2 + PROBE_LEN;
                        let from = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
                        let media = if kind == 1 { MediaKind::Video } else { MediaKind::Audio };
                        let stats = c.tracks.entry((from, kind)).or_insert_with(|| {
                            TrackStats::new(&from.to_string(), media, now)
                        });
                        stats.note_probe(&buf[2..at], now);
                    }
                    _ => {}
                }
            }
        }
    }
    Measurement {
        joined: c.joined,
        created_at: c.created_at,
        tracks: c.tracks.into_values().collect(),
        plis: 0,
        nacks: 0,
    }
}

/// `D<kind><probe><sender u32>` padded to `len`.
fn packet(kind: u8, sender: u32, seq: u64, sent_us: u64, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len.max(2 + PROBE_LEN + 4));
    p.push(b'D');
    p.push(kind);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&sent_us.to_be_bytes());
    p.extend_from_slice(&sender.to_be_bytes());
    p.resize(p.len().max(len), 0);
    p
}

/// Runs the same room pattern through the bare relay and reports it.
pub async fn run(plan: &BaselinePlan) -> Report {
    let per_room = plan.publishers + plan.subscribers;
    let total = plan.rooms * per_room;
    let start = Instant::now();
    let until = start + plan.duration;
    let mut tasks = Vec::new();
    for i in 0..total {
        let (room, seat) = (i / per_room, i % per_room);
        let publish = seat < plan.publishers;
        tasks.push(tokio::spawn(run_client(
            plan.clone(),
            room as u32,
            i as u32,
            publish,
            until,
        )));
    }
    let sample = |pid: Option<u32>| pid.and_then(|p| server_stats::sample(p).ok());
    let before: Option<ProcSample> = sample(plan.relay_pid);
    tokio::time::sleep_until(until.into()).await;
    let after = sample(plan.relay_pid);
    let measured = start.elapsed().as_secs_f64();
    let mut bots = Vec::new();
    for t in tasks {
        if let Ok(m) = t.await {
            bots.push(m);
        }
    }
    let scenario = format!(
        "baseline (bare UDP fan-out): {} x ({} publishers + {} subscribers), video {} kbit/s",
        plan.rooms, plan.publishers, plan.subscribers, plan.video_kbps
    );
    Report::from_measurements(&scenario, total, &bots, measured, before.zip(after))
}
