//! One str0m `Rtc` (one of a participant's two peer connections) and what the
//! engine remembers about it.

use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use signaling::PeerTarget;
use str0m::net::Protocol;
use str0m::{IceConnectionState, Rtc};

use crate::srtp::egress::{OwnEgress, Route};

pub struct Peer {
    pub target: PeerTarget,
    pub rtc: Rtc,
    /// Local ICE ufrags in use (two during an ICE restart); STUN from a new
    /// address is matched on them.
    pub ufrags: Vec<String>,
    /// The subscriber connection has had its first offer.
    pub was_offered: bool,
    /// Where str0m wants to be woken next; `None` while it needs no timer.
    pub next_timeout: Option<Instant>,
    /// The engine's timer entry for this peer, at or before `next_timeout`.
    /// A deadline that moves later keeps the entry (it fires early and is
    /// re-armed without touching the `Rtc`); only one that moves earlier
    /// adds an entry. str0m moves its deadline on nearly every drain, mostly
    /// later, so this saves a heap push per forwarded packet.
    pub armed: Option<Instant>,
    pub ice: IceConnectionState,
    /// Ever reached connected: a peer that never connected is not "reconnecting".
    pub was_connected: bool,
    /// Remote addresses this peer has received from (for the address map).
    pub addresses: Vec<(Protocol, SocketAddr)>,
    /// str0m panicked inside this `Rtc`: its state is unknown, so it is never
    /// touched again and its participant is removed.
    pub poisoned: bool,
    /// Remote candidates given to str0m (bounded; see `remote_candidates`).
    pub remote_candidates: super::remote_candidates::Seen,
    /// Subscriber connections: where their DTLS keying material lands.
    pub srtp_keys: Option<crate::srtp::capture::KeySlot>,
    /// Subscriber connections that send forwarded media themselves
    /// (`crate::srtp::egress`), chosen at creation; `None`: str0m writes.
    pub own: Option<OwnPath>,
    /// Where the datagram being handled came from (the own egress follows
    /// the client's authenticated RTCP).
    pub receiving_from: Option<Route>,
}

/// A subscriber connection's own egress.
#[derive(Default)]
pub struct OwnPath {
    /// Where str0m's own traffic (DTLS, RTCP) last went, or the client's
    /// last authenticated RTCP came from: the selected pair, which str0m
    /// does not expose.
    pub route: Option<Route>,
    /// Built once the DTLS handshake gave keys.
    pub egress: Option<Box<OwnEgress>>,
    /// The keys could not be used: nothing is forwarded on this connection
    /// (switching it to str0m's path would reuse SRTP indexes).
    pub unusable: bool,
}

/// str0m panicked inside a peer's `Rtc` (now or earlier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcPanicked;

impl Peer {
    pub fn new(target: PeerTarget, rtc: Rtc) -> Peer {
        Peer {
            target,
            rtc,
            ufrags: Vec::new(),
            was_offered: false,
            next_timeout: None,
            armed: None,
            ice: IceConnectionState::New,
            was_connected: false,
            addresses: Vec::new(),
            poisoned: false,
            remote_candidates: Default::default(),
            srtp_keys: None,
            own: None,
            receiving_from: None,
        }
    }

    /// Runs `f` on the `Rtc`, containing a panic inside str0m to this peer:
    /// one participant's bad input must not unwind through the engine and
    /// take every room of its shard with it. Release builds unwind
    /// (`panic = "unwind"` is the profile default), so this holds there too.
    pub fn guard<R>(&mut self, f: impl FnOnce(&mut Rtc) -> R) -> Result<R, RtcPanicked> {
        if self.poisoned {
            return Err(RtcPanicked);
        }
        // Unwind safety: after a panic the Rtc is marked and never used again.
        catch_unwind(AssertUnwindSafe(|| f(&mut self.rtc))).map_err(|_| {
            self.poisoned = true;
            RtcPanicked
        })
    }

    /// The path is broken now (it was up before).
    pub fn is_broken(&self) -> bool {
        self.was_connected && matches!(self.ice, IceConnectionState::Disconnected)
    }
}
