//! Which addresses a node may tell others about.
//!
//! On a public network a node announces only addresses that anyone can
//! route to. Loopback, private (RFC 1918, unique local), link-local,
//! shared (carrier-grade NAT) and unspecified addresses name a host only
//! inside one machine or one home network: announced, they would send
//! strangers' dials into the void, or into somebody else's home network.
//!
//! The benchmarking range 198.18.0.0/15 (RFC 2544) counts as routable: it
//! belongs to no one's home network, and the network lab uses it for its
//! "internet".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libp2p::{Multiaddr, multiaddr::Protocol};

/// Which addresses a node announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressScope {
    /// Only addresses anyone on the internet can route to, and only once
    /// another node confirmed that it could reach them (AutoNAT), or the
    /// operator named them (`external_addrs`).
    Public,
    /// A network inside one machine or one LAN (a testnet): listen
    /// addresses are announced as they are, loopback and private included.
    Local,
}

/// The IP address a multiaddress starts with, if it starts with one.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

/// Whether anyone on the internet can route to `ip`.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(ip),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        // 0.0.0.0/8: "this network".
        || a == 0
        // 100.64.0.0/10: shared address space (carrier-grade NAT).
        || (a == 100 && (64..128).contains(&b))
        // 192.0.0.0/24: protocol assignments.
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        // 240.0.0.0/4: reserved.
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // fc00::/7: unique local.
        || (first & 0xfe00) == 0xfc00
        // fe80::/10: link-local.
        || (first & 0xffc0) == 0xfe80
        // 2001:db8::/32: documentation.
        || (first == 0x2001 && ip.segments()[1] == 0x0db8))
}

/// Whether a node on a network of `scope` may announce `addr`: it starts
/// with an IP address (DNS names and relayed addresses are not announced
/// here), and on a public network that address is publicly routable.
pub fn announceable(scope: AddressScope, addr: &Multiaddr) -> bool {
    let Some(ip) = ip_of(addr) else {
        return false;
    };
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return false;
    }
    match scope {
        AddressScope::Public => is_public_ip(ip),
        AddressScope::Local => !ip.is_unspecified(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Multiaddr {
        text.parse().unwrap()
    }

    #[test]
    fn only_routable_addresses_are_public() {
        for private in [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/10.1.2.3/tcp/1",
            "/ip4/172.16.0.1/tcp/1",
            "/ip4/192.168.77.2/udp/1/quic-v1",
            "/ip4/169.254.1.1/tcp/1",
            "/ip4/100.64.0.1/tcp/1",
            "/ip4/0.0.0.0/tcp/1",
            "/ip4/0.1.2.3/tcp/1",
            "/ip4/255.255.255.255/tcp/1",
            "/ip4/240.0.0.1/tcp/1",
            "/ip4/192.0.2.1/tcp/1",
            "/ip6/::1/tcp/1",
            "/ip6/::/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
            "/ip6/2001:db8::1/tcp/1",
            "/ip6/::ffff:192.168.1.1/tcp/1",
        ] {
            assert!(
                !announceable(AddressScope::Public, &addr(private)),
                "{private}"
            );
        }
        for public in [
            "/ip4/198.18.0.5/tcp/4001",
            "/ip4/198.19.1.1/udp/4001/quic-v1",
            "/ip4/8.8.8.8/tcp/1",
            "/ip4/100.128.0.1/tcp/1",
            "/ip4/172.32.0.1/tcp/1",
            "/ip6/2a01:4f8::1/tcp/1",
            "/ip6/::ffff:198.18.0.1/tcp/1",
        ] {
            assert!(
                announceable(AddressScope::Public, &addr(public)),
                "{public}"
            );
        }
    }

    #[test]
    fn a_local_network_announces_loopback_but_never_unspecified() {
        assert!(announceable(
            AddressScope::Local,
            &addr("/ip4/127.0.0.1/tcp/1")
        ));
        assert!(announceable(
            AddressScope::Local,
            &addr("/ip4/192.168.1.2/tcp/1")
        ));
        assert!(!announceable(
            AddressScope::Local,
            &addr("/ip4/0.0.0.0/tcp/1")
        ));
        assert!(!announceable(AddressScope::Local, &addr("/ip6/::/tcp/1")));
    }

    #[test]
    fn names_and_relayed_addresses_are_not_announced() {
        assert!(!announceable(
            AddressScope::Public,
            &addr("/dns4/example.org/tcp/1")
        ));
        let relayed = "/ip4/198.18.0.5/tcp/4001/p2p/12D3KooWJWEKvSFbben74C7H4YtKjhPMTDxd7gP6zxWSUTeR4Cy9/p2p-circuit";
        assert!(!announceable(AddressScope::Public, &addr(relayed)));
    }
}
