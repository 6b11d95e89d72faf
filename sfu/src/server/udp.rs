//! The media socket: one UDP port for every participant. Every engine thread
//! reads it (`shard.rs`) and routes each datagram to the shard owning its
//! source address (or, for STUN from a new address, the shard owning the
//! named ufrag); most land on their owner directly.

use std::net::{SocketAddr, UdpSocket};

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
