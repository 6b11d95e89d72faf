//! Which peers the relay may reach: never an open relay.
//!
//! By default only this deployment's SFU media addresses. Other peers need
//! an allow-list entry, and even then loopback, private (RFC 1918, unique
//! local), CGNAT (100.64/10), link-local, multicast, unspecified, reserved
//! and broadcast addresses, in IPv4 or IPv4-mapped / -compatible IPv6 form,
//! are denied unless an entry lies wholly inside such a range (an operator
//! listing `127.0.0.1/32` means it; `0.0.0.0/0` does not reach loopback).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

#[derive(Debug, Clone, Default)]
pub struct PeerRules {
    /// The SFU's media addresses: always reachable.
    sfu: Vec<SocketAddr>,
    allowed: Vec<IpNet>,
}

impl PeerRules {
    pub fn new(sfu: Vec<SocketAddr>, allowed: Vec<IpNet>) -> PeerRules {
        let sfu = sfu.into_iter().map(canonical_addr).collect();
        let allowed = allowed.into_iter().map(canonical_net).collect();
        PeerRules { sfu, allowed }
    }

    /// May a client relay to `peer`? Checked at CreatePermission,
    /// ChannelBind and Send.
    pub fn allows(&self, peer: SocketAddr) -> bool {
        let peer = canonical_addr(peer);
        if self.sfu.contains(&peer) {
            return true;
        }
        let ip = peer.ip();
        self.allowed
            .iter()
            .any(|net| net.contains(&ip) && (!is_special(ip) || is_special_net(net)))
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            // IPv4-compatible (::a.b.c.d, deprecated) reaches the same host.
            None if v6.segments()[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() => {
                let o = v6.octets();
                IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
            }
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn canonical_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(a.ip()), a.port())
}

const SPECIAL_V4: [(Ipv4Addr, u8); 11] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),      // "this network", unspecified
    (Ipv4Addr::new(10, 0, 0, 0), 8),     // RFC 1918
    (Ipv4Addr::new(100, 64, 0, 0), 10),  // CGNAT
    (Ipv4Addr::new(127, 0, 0, 0), 8),    // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16), // link-local
    (Ipv4Addr::new(172, 16, 0, 0), 12),  // RFC 1918
    (Ipv4Addr::new(192, 0, 0, 0), 24),   // IETF protocol assignments
    (Ipv4Addr::new(192, 168, 0, 0), 16), // RFC 1918
    (Ipv4Addr::new(198, 18, 0, 0), 15),  // benchmarking
    (Ipv4Addr::new(224, 0, 0, 0), 4),    // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),    // reserved, broadcast
];

const SPECIAL_V6: [(Ipv6Addr, u8); 6] = [
    (Ipv6Addr::UNSPECIFIED, 128),
    (Ipv6Addr::LOCALHOST, 128),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7), // unique local
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link-local
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8), // multicast
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48), // local-use NAT64
];

fn special_nets() -> impl Iterator<Item = IpNet> {
    let v4 = SPECIAL_V4
        .iter()
        .filter_map(|(a, len)| Ipv4Net::new(*a, *len).ok().map(IpNet::V4));
    let v6 = SPECIAL_V6
        .iter()
        .filter_map(|(a, len)| Ipv6Net::new(*a, *len).ok().map(IpNet::V6));
    v4.chain(v6)
}

/// Loopback, private, CGNAT, link-local, multicast, unspecified, reserved.
pub fn is_special(ip: IpAddr) -> bool {
    let ip = canonical_ip(ip);
    special_nets().any(|net| net.contains(&ip))
}

/// An IPv4-mapped IPv6 network as the IPv4 network it is.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) => match v6.network().to_ipv4_mapped() {
            Some(v4) if v6.prefix_len() >= 96 => {
                Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4)
            }
            _ => net,
        },
        v4 => v4,
    }
}

/// An allow-list entry lying wholly inside one special range.
fn is_special_net(net: &IpNet) -> bool {
    special_nets().any(|special| special.contains(net))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn by_default_only_the_sfu_is_reachable() {
        let rules = PeerRules::new(vec![addr("10.0.0.5:7882")], vec![]);
        assert!(rules.allows(addr("10.0.0.5:7882")));
        assert!(
            rules.allows(addr("[::ffff:10.0.0.5]:7882")),
            "mapped form of the SFU"
        );
        assert!(
            !rules.allows(addr("10.0.0.5:22")),
            "another port of the SFU host"
        );
        assert!(!rules.allows(addr("8.8.8.8:53")));
        assert!(!rules.allows(addr("127.0.0.1:7882")));
    }

    #[test]
    fn an_allow_all_list_still_denies_every_special_range_in_every_form() {
        let rules = PeerRules::new(vec![], nets(&["0.0.0.0/0", "::/0"]));
        assert!(rules.allows(addr("8.8.8.8:53")));
        assert!(rules.allows(addr("[2001:4860::8888]:53")));
        for denied in [
            "127.0.0.1:1",
            "10.1.2.3:1",
            "172.16.0.1:1",
            "192.168.1.1:1",
            "100.64.0.1:1",
            "169.254.169.254:80",
            "224.0.0.1:1",
            "0.0.0.0:1",
            "255.255.255.255:1",
            "[::1]:1",
            "[::]:1",
            "[fe80::1]:1",
            "[fd00::1]:1",
            "[ff02::1]:1",
            "[::ffff:127.0.0.1]:1",
            "[::ffff:10.0.0.1]:1",
            "[::ffff:169.254.169.254]:80",
            "[::127.0.0.1]:1",
        ] {
            assert!(!rules.allows(addr(denied)), "{denied} must be denied");
        }
    }

    #[test]
    fn a_special_range_listed_explicitly_is_allowed() {
        let rules = PeerRules::new(vec![], nets(&["0.0.0.0/0", "127.0.0.1/32", "10.9.0.0/16"]));
        assert!(rules.allows(addr("127.0.0.1:5000")));
        assert!(rules.allows(addr("[::ffff:127.0.0.1]:5000")));
        assert!(rules.allows(addr("10.9.1.1:5000")));
        assert!(!rules.allows(addr("127.0.0.2:5000")));
        assert!(!rules.allows(addr("10.8.1.1:5000")));
        let mapped = PeerRules::new(vec![], nets(&["::ffff:127.0.0.1/128"]));
        assert!(mapped.allows(addr("127.0.0.1:5000")));
    }
}
