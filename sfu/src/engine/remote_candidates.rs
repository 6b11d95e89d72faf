//! Remote ICE candidates, filtered before str0m sees them.
//!
//! The engine runs full ICE, so it sends connectivity checks to every remote
//! candidate a client names: without limits a client points the server's
//! STUN requests at any address and port (a probe and a small amplifier).
//! Candidates for unspecified, multicast and broadcast addresses are dropped
//! always; those for loopback, private, CGNAT and link-local addresses only
//! when configured (self-hosted LAN deployments need them); and each
//! connection takes at most [`MAX_PER_CONNECTION`] distinct candidates in
//! its life. str0m paces the checks it sends to them.
//!
//! ICE-lite (the server sends no checks at all) was measured against this in
//! Chromium and not chosen: join to both connections up took 0.35-0.85 s
//! (median 0.55 s) with full ICE and 0.38-3.5 s (median 1.6 s) with lite,
//! over five runs of the `four-then-late` browser scenario each (sfu README).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

/// Distinct remote candidates one peer connection takes in its life: a few
/// per network (host, server-reflexive, relay, both families), times the
/// networks a phone moves through in a long call.
pub const MAX_PER_CONNECTION: usize = 128;

/// Why a candidate address is not used.
fn refused(ip: IpAddr, deny_private: bool) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let never = match ip {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    };
    if never {
        return Some("unspecified, multicast or broadcast address");
    }
    if deny_private && turn::peers::is_special(ip) {
        return Some("private or special-purpose address (deny_private_candidates)");
    }
    None
}

/// The address of a candidate line (`candidate:<foundation> <component>
/// <transport> <priority> <address> <port> typ ...`, with or without `a=`);
/// `None` when it names a host (mDNS) or does not parse, which str0m judges.
fn address_of(line: &str) -> Option<SocketAddr> {
    let line = line.strip_prefix("a=").unwrap_or(line);
    let mut fields = line.strip_prefix("candidate:")?.split_ascii_whitespace();
    let ip: IpAddr = fields.nth(4)?.parse().ok()?;
    let port: u16 = fields.next()?.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

/// The remote candidates one peer connection has taken.
#[derive(Debug, Default)]
pub struct Seen(HashSet<SocketAddr>);

impl Seen {
    /// Whether a trickled candidate may go to str0m: `Ok(false)` to drop it
    /// quietly (a refused address), `Err` when the connection has named too
    /// many (a typed error).
    pub fn admit(&mut self, candidate: &str, deny_private: bool) -> Result<bool, String> {
        let Some(addr) = address_of(candidate) else {
            return Ok(true);
        };
        if refused(addr.ip(), deny_private).is_some() {
            return Ok(false);
        }
        if !self.0.contains(&addr) && self.0.len() >= MAX_PER_CONNECTION {
            return Err(format!(
                "at most {MAX_PER_CONNECTION} remote candidates per connection"
            ));
        }
        self.0.insert(addr);
        Ok(true)
    }

    /// `sdp` without the candidate lines whose address is refused, or an
    /// error when it would take this connection past its limit. Checked
    /// whole before anything is remembered.
    pub fn filter_sdp(&mut self, sdp: &str, deny_private: bool) -> Result<String, String> {
        let mut kept = String::with_capacity(sdp.len());
        let mut new = HashSet::new();
        for line in sdp.split_inclusive('\n') {
            if line.starts_with("a=candidate:")
                && let Some(addr) = address_of(line.trim_end())
            {
                if refused(addr.ip(), deny_private).is_some() {
                    continue;
                }
                if !self.0.contains(&addr) {
                    new.insert(addr);
                }
            }
            kept.push_str(line);
        }
        if self.0.len() + new.len() > MAX_PER_CONNECTION {
            return Err(format!(
                "at most {MAX_PER_CONNECTION} remote candidates per connection"
            ));
        }
        self.0.extend(new);
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ip: &str, port: u16) -> String {
        format!("a=candidate:1 1 udp 2130706431 {ip} {port} typ host\r\n")
    }

    #[test]
    fn unspecified_multicast_and_broadcast_are_dropped() {
        let mut seen = Seen::default();
        for ip in [
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "ff02::1",
            "::ffff:0.0.0.0",
        ] {
            assert_eq!(seen.admit(&line(ip, 9), false), Ok(false), "{ip}");
        }
        assert_eq!(seen.admit(&line("203.0.113.7", 9), false), Ok(true));
        assert_eq!(
            seen.admit("candidate:1 1 udp 1 abc.local 9 typ host", false),
            Ok(true)
        );
    }

    #[test]
    fn private_addresses_are_kept_unless_configured() {
        let mut seen = Seen::default();
        assert_eq!(seen.admit(&line("192.168.1.5", 9), false), Ok(true));
        assert_eq!(seen.admit(&line("192.168.1.5", 9), true), Ok(false));
        assert_eq!(seen.admit(&line("127.0.0.1", 9), true), Ok(false));
    }

    #[test]
    fn a_connection_takes_a_bounded_number_of_distinct_candidates() {
        let mut seen = Seen::default();
        for port in 0..MAX_PER_CONNECTION as u16 {
            assert_eq!(seen.admit(&line("203.0.113.7", port), false), Ok(true));
        }
        // The same ones again (a re-offer) are fine; a new one is not.
        assert_eq!(seen.admit(&line("203.0.113.7", 0), false), Ok(true));
        assert!(seen.admit(&line("203.0.113.7", 60_000), false).is_err());
        let sdp = format!(
            "v=0\r\n{}{}",
            line("203.0.113.7", 1),
            line("203.0.113.8", 1)
        );
        assert!(seen.filter_sdp(&sdp, false).is_err());
    }

    #[test]
    fn refused_lines_are_cut_from_an_sdp() {
        let mut seen = Seen::default();
        let sdp = format!(
            "v=0\r\n{}{}a=ice-ufrag:abcd\r\n",
            line("0.0.0.0", 9),
            line("203.0.113.7", 5000)
        );
        let kept = seen.filter_sdp(&sdp, false).unwrap();
        assert_eq!(
            kept,
            format!("v=0\r\n{}a=ice-ufrag:abcd\r\n", line("203.0.113.7", 5000))
        );
    }
}
