//! The media socket: one UDP port for every participant. Every engine thread
//! reads it (`shard.rs`) and routes each datagram to the shard owning its
//! source address (or, for STUN from a new address, the shard owning the
//! named ufrag); most land on their owner directly.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use socket2::{Domain, Protocol, Socket, Type};
use str0m::ice::StunMessage;

use super::RouteTable;

/// Large kernel buffers: with the defaults a forwarding burst overflows them.
const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Larger than any datagram WebRTC sends (MTU-sized); a bigger one is garbage.
pub const MAX_DATAGRAM: usize = 2048;

pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The shard owning `source`: known addresses by the route table, new ones
/// only by a STUN message naming one of our ufrags.
pub fn route(routes: &RouteTable, source: SocketAddr, data: &[u8]) -> Option<usize> {
    if let Some(shard) = routes.by_addr.get(&source) {
        return Some(*shard);
    }
    // Only STUN naming one of our ufrags may introduce a new address.
    route_by_stun(routes, data)
}

/// The shard owning the local ufrag a STUN message names.
pub fn route_by_stun(routes: &RouteTable, data: &[u8]) -> Option<usize> {
    let stun = StunMessage::parse(data).ok()?;
    let (local_ufrag, _) = stun.split_username()?;
    routes.by_ufrag.get(local_ufrag).map(|s| *s)
}

/// Datagrams taken from the kernel, or handed to it, per system call.
/// Enough to drain a forwarding burst in a few calls; the buffers stay
/// small enough (64 KiB) to live in cache.
pub const BATCH: usize = 32;

/// One `recvmmsg` worth of datagrams, in buffers allocated once.
pub struct RecvBatch {
    buffers: Box<[u8]>,
    headers: MultiHeaders<SockaddrStorage>,
    /// Length and source of each datagram the last read took.
    received: Vec<Received>,
}

#[derive(Clone, Copy)]
enum Received {
    Datagram(usize, SocketAddr),
    /// Longer than [`MAX_DATAGRAM`] (cut short), or from no IP address.
    Unusable,
}

impl Default for RecvBatch {
    fn default() -> RecvBatch {
        RecvBatch {
            buffers: vec![0; BATCH * MAX_DATAGRAM].into_boxed_slice(),
            headers: MultiHeaders::preallocate(BATCH, None),
            received: Vec::with_capacity(BATCH),
        }
    }
}

impl RecvBatch {
    /// Reads what is queued on `socket` (non-blocking), up to [`BATCH`]
    /// datagrams; `WouldBlock` when there is none.
    pub fn read(&mut self, socket: &impl AsRawFd) -> std::io::Result<usize> {
        self.received.clear();
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
            .buffers
            .chunks_exact_mut(MAX_DATAGRAM)
            .map(|b| [IoSliceMut::new(b)])
            .collect();
        let results = recvmmsg(
            socket.as_raw_fd(),
            &mut self.headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )?;
        for msg in results {
            let source = msg.address.as_ref().and_then(socket_addr);
            self.received.push(match source {
                Some(source) if !msg.flags.contains(MsgFlags::MSG_TRUNC) => {
                    Received::Datagram(msg.bytes, source)
                }
                _ => Received::Unusable,
            });
        }
        Ok(self.received.len())
    }

    /// The datagrams of the last read, in arrival order; `None` for one
    /// that cannot be used.
    pub fn datagrams(&self) -> impl Iterator<Item = Option<(SocketAddr, &[u8])>> {
        self.received
            .iter()
            .zip(self.buffers.chunks_exact(MAX_DATAGRAM))
            .map(|(received, buffer)| match *received {
                Received::Datagram(len, source) => Some((source, &buffer[..len])),
                Received::Unusable => None,
            })
    }
}

fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddrV4::from(*v4).into());
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddrV6::from(*v6).into())
}

/// Datagrams queued for one `sendmmsg`. The buffers are handed back after
/// sending ([`SendBatch::send`]'s `sent`), so steady forwarding allocates none.
pub struct SendBatch {
    queued: Vec<(SocketAddr, Vec<u8>)>,
    headers: MultiHeaders<SockaddrStorage>,
    addresses: Vec<Option<SockaddrStorage>>,
}

/// What one [`SendBatch::send`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub datagrams: u64,
    pub bytes: u64,
    /// Refused by the kernel (a full send buffer, an unreachable address).
    pub failed: u64,
}

impl Default for SendBatch {
    fn default() -> SendBatch {
        SendBatch {
            queued: Vec::with_capacity(BATCH),
            headers: MultiHeaders::preallocate(BATCH, None),
            addresses: Vec::with_capacity(BATCH),
        }
    }
}

impl SendBatch {
    pub fn push(&mut self, destination: SocketAddr, contents: Vec<u8>) {
        self.queued.push((destination, contents));
    }

    pub fn is_full(&self) -> bool {
        self.queued.len() >= BATCH
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Sends everything queued, in as few system calls as the kernel
    /// allows; a datagram it refuses is dropped, as late media is worthless
    /// (a full send buffer must not stall every other stream). Each buffer
    /// goes to `sent` afterwards, for reuse.
    pub fn send(&mut self, socket: &impl AsRawFd, mut sent: impl FnMut(Vec<u8>)) -> Sent {
        let mut outcome = Sent::default();
        let mut next = 0;
        // Each round sends at least one datagram or drops one: bounded.
        while next < self.queued.len() {
            let pending = &self.queued[next..];
            self.addresses.clear();
            self.addresses.extend(
                pending
                    .iter()
                    .map(|(to, _)| Some(SockaddrStorage::from(*to))),
            );
            let slices: Vec<[IoSlice<'_>; 1]> = pending
                .iter()
                .map(|(_, contents)| [IoSlice::new(contents)])
                .collect();
            let result = sendmmsg(
                socket.as_raw_fd(),
                &mut self.headers,
                &slices,
                &self.addresses,
                [],
                MsgFlags::MSG_DONTWAIT,
            )
            .map(|results| results.count());
            match result {
                Ok(count) if count > 0 => {
                    outcome.datagrams += count as u64;
                    outcome.bytes += pending[..count]
                        .iter()
                        .map(|(_, c)| c.len() as u64)
                        .sum::<u64>();
                    next += count;
                }
                Ok(_) => {
                    outcome.failed += 1;
                    next += 1;
                }
                Err(e) => {
                    tracing::debug!(destination = %pending[0].0, error = %e, "udp send");
                    outcome.failed += 1;
                    next += 1;
                }
            }
        }
        for (_, contents) in self.queued.drain(..) {
            sent(contents);
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn loopback() -> UdpSocket {
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        socket.set_nonblocking(true).unwrap();
        socket
    }

    /// Reads until `count` datagrams (or unusable ones) arrived; bounded.
    fn read_all(socket: &UdpSocket, count: usize) -> Vec<Option<(SocketAddr, Vec<u8>)>> {
        let mut batch = RecvBatch::default();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < count && Instant::now() < deadline {
            match batch.read(socket) {
                Ok(n) => {
                    assert!(n <= BATCH);
                    got.extend(batch.datagrams().map(|d| d.map(|(s, b)| (s, b.to_vec()))));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("recvmmsg: {e}"),
            }
        }
        got
    }

    #[test]
    fn a_batch_sends_and_reads_datagrams_in_order_and_hands_buffers_back() {
        let (server, client) = (loopback(), loopback());
        let to = client.local_addr().unwrap();
        let mut outgoing = SendBatch::default();
        let datagrams: Vec<Vec<u8>> = (0..BATCH + 8).map(|i| vec![i as u8; 20 + i * 30]).collect();
        let mut returned = Vec::new();
        let mut sent = Sent::default();
        for d in &datagrams {
            outgoing.push(to, d.clone());
            if outgoing.is_full() {
                let s = outgoing.send(&server, |b| returned.push(b));
                sent.datagrams += s.datagrams;
                sent.bytes += s.bytes;
            }
        }
        let s = outgoing.send(&server, |b| returned.push(b));
        assert!(outgoing.is_empty());
        sent.datagrams += s.datagrams;
        sent.bytes += s.bytes;
        let total: usize = datagrams.iter().map(Vec::len).sum();
        assert_eq!(
            (sent.datagrams, sent.bytes),
            (datagrams.len() as u64, total as u64)
        );
        assert_eq!(returned, datagrams, "every buffer back, for reuse");

        let got = read_all(&client, datagrams.len());
        let from = server.local_addr().unwrap();
        let expected: Vec<_> = datagrams.into_iter().map(|d| Some((from, d))).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_datagram_the_kernel_refuses_is_dropped_and_the_rest_go() {
        let (server, client) = (loopback(), loopback());
        let to = client.local_addr().unwrap();
        let mut outgoing = SendBatch::default();
        outgoing.push(to, b"first".to_vec());
        // An IPv6 destination from an IPv4 socket: refused by the kernel.
        outgoing.push("[::1]:9".parse().unwrap(), b"refused".to_vec());
        outgoing.push(to, b"third".to_vec());
        let mut returned = 0;
        let sent = outgoing.send(&server, |_| returned += 1);
        assert_eq!((sent.datagrams, sent.failed, returned), (2, 1, 3));
        let got: Vec<_> = read_all(&client, 2)
            .into_iter()
            .map(|d| d.unwrap().1)
            .collect();
        assert_eq!(got, [b"first".to_vec(), b"third".to_vec()]);
    }

    #[test]
    fn a_datagram_longer_than_any_webrtc_sends_is_unusable() {
        let (server, client) = (loopback(), loopback());
        let to = client.local_addr().unwrap();
        server.send_to(&[7; MAX_DATAGRAM + 1], to).unwrap();
        server.send_to(&[8; MAX_DATAGRAM], to).unwrap();
        let got = read_all(&client, 2);
        assert_eq!(got.len(), 2);
        assert!(got[0].is_none(), "cut short, so not passed on");
        assert_eq!(got[1].as_ref().unwrap().1, vec![8; MAX_DATAGRAM]);
    }
}
