//! Limits per source: an IPv4 address or an IPv6 /64.
//!
//! Peer ids cost nothing, so limits per peer alone let one machine open
//! hundreds of connections under fresh ids and get a fresh packet budget
//! with each. Inbound connections from one source are capped here, before
//! the handshake; the packet budget of a source is shared by all its peers
//! (see `packet`). Relayed connections are the relay's to limit, and
//! loopback is exempt unless asked (every node of a local network shares
//! 127.0.0.1).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

use crate::metrics::{Counters, inc};

/// The source a remote address counts against, if any.
pub(crate) fn source_of(addr: &Multiaddr, limit_loopback: bool) -> Option<IpAddr> {
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return None;
    }
    let ip = addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })?;
    if ip.is_loopback() && !limit_loopback {
        return None;
    }
    Some(match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    })
}

/// Too many connections from one source.
#[derive(Debug)]
pub(crate) struct TooManyFromSource {
    source: IpAddr,
    max: u32,
}

impl std::fmt::Display for TooManyFromSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} already has {} inbound connections, the most one source may have",
            self.source, self.max
        )
    }
}

impl std::error::Error for TooManyFromSource {}

/// Caps inbound connections per source.
pub(crate) struct Behaviour {
    max: u32,
    limit_loopback: bool,
    counters: Arc<Counters>,
    inbound: HashMap<IpAddr, HashSet<ConnectionId>>,
    sources: HashMap<ConnectionId, IpAddr>,
}

impl Behaviour {
    pub(crate) fn new(max: u32, limit_loopback: bool, counters: Arc<Counters>) -> Self {
        Behaviour {
            max,
            limit_loopback,
            counters,
            inbound: HashMap::new(),
            sources: HashMap::new(),
        }
    }

    fn check(&self, remote: &Multiaddr) -> Result<Option<IpAddr>, ConnectionDenied> {
        let Some(source) = source_of(remote, self.limit_loopback) else {
            return Ok(None);
        };
        let open = self.inbound.get(&source).map_or(0, HashSet::len);
        if open >= self.max as usize {
            inc(&self.counters.connections_refused_per_source);
            return Err(ConnectionDenied::new(TooManyFromSource {
                source,
                max: self.max,
            }));
        }
        Ok(Some(source))
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.check(remote).map(|_| ())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if let Some(source) = self.check(remote)? {
            self.inbound.entry(source).or_default().insert(connection);
            self.sources.insert(connection, source);
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        if let FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) = event
            && let Some(source) = self.sources.remove(&connection_id)
            && let Some(set) = self.inbound.get_mut(&source)
        {
            set.remove(&connection_id);
            if set.is_empty() {
                self.inbound.remove(&source);
            }
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_addresses_and_v6_prefixes_relays_and_loopback_excepted() {
        let a: Multiaddr = "/ip4/203.0.113.7/tcp/4001".parse().unwrap();
        assert_eq!(source_of(&a, false), Some("203.0.113.7".parse().unwrap()));
        let b: Multiaddr = "/ip6/2001:db8:1:2:aaaa::1/udp/4001/quic-v1"
            .parse()
            .unwrap();
        let c: Multiaddr = "/ip6/2001:db8:1:2:bbbb::9/tcp/4001".parse().unwrap();
        assert_eq!(source_of(&b, false), source_of(&c, false));
        assert_eq!(
            source_of(&b, false),
            Some("2001:db8:1:2::".parse().unwrap())
        );
        let relayed: Multiaddr = "/ip4/203.0.113.7/tcp/4001/p2p/12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq/p2p-circuit".parse().unwrap();
        assert_eq!(source_of(&relayed, true), None);
        let local: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        assert_eq!(source_of(&local, false), None);
        assert!(source_of(&local, true).is_some());
    }
}
