//! Configuration of a node's network driver.

use std::{fmt, time::Duration};

use libp2p::{Multiaddr, multiaddr::Protocol};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{addrs::AddressScope, error::NetError};

/// Upper bound on [`Limits::max_community_topics`] and
/// [`Limits::max_community_topics_per_peer`].
const MAX_COMMUNITY_TOPICS: usize = 1024;

/// The 32-byte Ed25519 secret key (seed) of the node's identity. Its public
/// key is the node's 32-byte name in the mixnet and, wrapped, its libp2p
/// [`PeerId`](libp2p::PeerId).
///
/// Zeroized on drop; `Debug` prints no key material.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct IdentitySecret([u8; 32]);

impl IdentitySecret {
    /// Wraps the 32 secret bytes. Every 32-byte string is a valid Ed25519
    /// secret key.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The secret bytes, for handing to libp2p.
    pub(crate) fn expose(&self) -> [u8; 32] {
        self.0
    }
}

impl fmt::Debug for IdentitySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentitySecret(<redacted>)")
    }
}

/// A token bucket: `frames_per_second` tokens are added per second, at most
/// `burst` are kept; each frame takes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained rate, in frames per second. Must be at least 1.
    pub frames_per_second: u32,
    /// Bucket size: how many frames may arrive back to back after a quiet
    /// period. Must be at least 1.
    pub burst: u32,
}

/// Every bound the driver enforces. All are per node unless they say
/// otherwise; all must be non-zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Maximum established connections in total (inbound and outbound).
    /// Default 512.
    pub max_connections: u32,
    /// Maximum established connections to one peer. Default 4: a
    /// simultaneous dial from both sides may briefly create two, a node
    /// learning its reachability opens one of its own to a peer that
    /// already dialled it, and that peer's dial-back test is one more.
    pub max_connections_per_peer: u32,
    /// Maximum connections being set up at once, each direction. Default 64.
    pub max_pending_connections: u32,
    /// Maximum streams of any protocol on one connection (yamux and QUIC).
    /// Default 256.
    pub max_streams_per_connection: u32,
    /// Maximum inbound streams still negotiating their protocol on one
    /// connection. Default 64.
    pub max_negotiating_inbound_streams: usize,
    /// Maximum concurrent inbound packet streams from one peer, over all its
    /// connections; further streams are reset at once and counted in
    /// [`NetMetrics::packet_streams_refused`](crate::NetMetrics::packet_streams_refused).
    /// Default 2.
    pub max_inbound_packet_streams_per_peer: usize,
    /// Rate limit on inbound frames from one peer, over all its streams and
    /// connections. Frames over the limit are dropped and counted.
    /// Default 1000 frames/s (2 MB/s), burst 1000.
    pub packet_rate: RateLimit,
    /// Rate limit on inbound frames from one source (an IPv4 address, an
    /// IPv6 /64), over all its peers and connections: a fresh peer id does
    /// not buy a fresh budget. Frames over it are dropped and counted
    /// ([`DroppedFrames::source_limited`](crate::DroppedFrames::source_limited)).
    /// Relayed connections count against their relay's limits instead.
    /// Default 4000 frames/s, burst 4000: room for a few nodes behind one
    /// NAT.
    pub source_packet_rate: RateLimit,
    /// Inbound connections from one source at once (an IPv4 address, an
    /// IPv6 /64); more are refused before the handshake and counted in
    /// [`NetMetrics::connections_refused_per_source`](crate::NetMetrics::connections_refused_per_source).
    /// Default 16.
    pub max_connections_per_source: u32,
    /// Whether the per-source limits apply to loopback addresses too. Off
    /// by default: every node of a network on one machine shares
    /// 127.0.0.1.
    pub limit_loopback: bool,
    /// How many over-limit frames a peer may send before its packet stream
    /// is reset. The count drains at `packet_rate.frames_per_second`, so a
    /// peer slightly over the limit only loses frames, while a peer sending
    /// at many times the limit is cut off within about a second.
    /// Default 2000.
    pub flood_tolerance: u32,
    /// Frames waiting to be written to one peer. When full, further frames
    /// to that peer are dropped and counted. Default 1024 (2 MiB).
    pub outbound_queue_frames: usize,
    /// Largest fetch request, in bytes (requests are length-prefixed; a
    /// peer announcing more is refused before anything is allocated).
    /// Default 64 KiB.
    pub max_request_size: usize,
    /// Largest fetch response, in bytes. Default 1 MiB.
    pub max_response_size: usize,
    /// Concurrent fetch streams (inbound plus outbound) on one connection.
    /// Default 16.
    pub max_concurrent_request_streams: usize,
    /// Outbound fetch requests waiting for a response, and inbound requests
    /// waiting for the application's reply. Default 256 each.
    pub max_pending_requests: usize,
    /// Largest gossip message payload, in bytes, on the descriptor topic
    /// and on community topics alike. Inbound messages with a larger payload
    /// are dropped and counted in
    /// [`NetMetrics::gossip_too_large`](crate::NetMetrics::gossip_too_large).
    /// Default 64 KiB.
    pub max_gossip_size: usize,
    /// Community topics (see
    /// [`ProtocolNames::community_topic_prefix`]) this node may be
    /// subscribed to at once; [`NetHandle::subscribe`](crate::NetHandle::subscribe)
    /// beyond it fails with [`NetError::TooManyTopics`]. Keep it at most
    /// `max_community_topics_per_peer` of the other nodes: a peer ignores
    /// every subscription of a node that announces more topics than it
    /// accepts. Default 256.
    pub max_community_topics: usize,
    /// Community topics remembered per remote peer. Subscriptions that
    /// would take a peer over it are ignored (the whole announcement they
    /// came in). Default 256, the same as `max_community_topics`, so that
    /// nodes with the default limits always accept each other.
    pub max_community_topics_per_peer: usize,
    /// Largest DHT record value, in bytes. Default 16 KiB.
    pub max_record_size: usize,
    /// DHT records this node stores for others and itself. Default 4096.
    pub max_records: usize,
    /// DHT queries (`get_record`, `put_record`) waiting for their result.
    /// Default 64.
    pub max_pending_queries: usize,
    /// Capacity of the command channel from [`NetHandle`](crate::NetHandle)
    /// to the driver. Default 1024.
    pub command_queue: usize,
    /// Capacity of the [`NetEvents`](crate::NetEvents) channel. When it is
    /// full, events are dropped and counted, never buffered further.
    /// Default 1024.
    pub event_queue: usize,
    /// What a relaying node ([`NetConfig::relay_server`]) gives others.
    pub relay: RelayLimits,
}

/// Bounds on what a node relays for others. A relayed connection only has
/// to carry the hole-punching handshake of direct mode, so circuits are
/// short and small; reservations and circuits are also rate limited per
/// peer and per IP address (libp2p's defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// Peers that may hold a reservation at once. Default 128.
    pub max_reservations: usize,
    /// Reservations of one peer. Default 2.
    pub max_reservations_per_peer: usize,
    /// Circuits relayed at once. Default 32.
    pub max_circuits: usize,
    /// Circuits of one peer at once. Default 4.
    pub max_circuits_per_peer: usize,
    /// A circuit is closed after this long. Default 2 minutes.
    pub max_circuit_duration: Duration,
    /// A circuit is closed after this many bytes each way. Default 128 KiB.
    pub max_circuit_bytes: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 128,
            max_reservations_per_peer: 2,
            max_circuits: 32,
            max_circuits_per_peer: 4,
            max_circuit_duration: Duration::from_secs(120),
            max_circuit_bytes: 128 * 1024,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            max_connections_per_peer: 4,
            max_pending_connections: 64,
            max_streams_per_connection: 256,
            max_negotiating_inbound_streams: 64,
            max_inbound_packet_streams_per_peer: 2,
            packet_rate: RateLimit {
                frames_per_second: 1000,
                burst: 1000,
            },
            flood_tolerance: 2000,
            source_packet_rate: RateLimit {
                frames_per_second: 4000,
                burst: 4000,
            },
            max_connections_per_source: 16,
            limit_loopback: false,
            outbound_queue_frames: 1024,
            max_request_size: 64 * 1024,
            max_response_size: 1024 * 1024,
            max_concurrent_request_streams: 16,
            max_pending_requests: 256,
            max_gossip_size: 64 * 1024,
            max_community_topics: 256,
            max_community_topics_per_peer: 256,
            max_record_size: 16 * 1024,
            max_records: 4096,
            max_pending_queries: 64,
            command_queue: 1024,
            event_queue: 1024,
            relay: RelayLimits::default(),
        }
    }
}

/// Time limits. All must be non-zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Setting up a connection (transport, noise handshake, multiplexer).
    /// Default 10 s.
    pub connection: Duration,
    /// A connection with no open stream and nothing to do is closed after
    /// this long. Default 60 s.
    pub idle_connection: Duration,
    /// Negotiating the protocol of a new packet stream. Default 10 s.
    pub stream_negotiation: Duration,
    /// A fetch request, from sending it to receiving the whole response;
    /// also how long an inbound request may wait for the application's
    /// reply. Default 10 s.
    pub request: Duration,
    /// A DHT query (`get_record`, `put_record`, bootstrap). Default 30 s.
    pub kad_query: Duration,
    /// Interval between pings on a connection. Default 15 s.
    pub ping_interval: Duration,
    /// A ping not answered within this is a failure. Default 20 s.
    pub ping_timeout: Duration,
    /// Gossipsub heartbeat: how often the mesh is repaired and gossip about
    /// recent messages is sent. The first one comes after one interval.
    /// Default 1 s.
    pub gossip_heartbeat: Duration,
    /// How often an untested candidate address is given to a peer to dial
    /// back ([`NetConfig::autonat`]). Default 5 s.
    pub reachability_probe: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connection: Duration::from_secs(10),
            idle_connection: Duration::from_secs(60),
            stream_negotiation: Duration::from_secs(10),
            request: Duration::from_secs(10),
            kad_query: Duration::from_secs(30),
            ping_interval: Duration::from_secs(15),
            ping_timeout: Duration::from_secs(20),
            gossip_heartbeat: Duration::from_secs(1),
            reachability_probe: Duration::from_secs(5),
        }
    }
}

/// Configuration of one node's network driver. Build it with
/// [`NetConfig::new`], adjust fields, hand it to
/// [`Net::spawn`](crate::Net::spawn), which validates it.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Name of the network, e.g. `chainmail-test-1a2b`. It is part of every
    /// protocol name (see [`ProtocolNames`]), so nodes of different networks
    /// never speak to each other. 1 to 64 characters from `A-Z a-z 0-9 - _ .`.
    pub network_id: String,
    /// The node's Ed25519 identity.
    pub identity: IdentitySecret,
    /// Addresses to listen on: TCP (`/ip4/…/tcp/…`) and QUIC
    /// (`/ip4/…/udp/…/quic-v1`); port 0 picks a free port. Default: both on
    /// 127.0.0.1, port 0. Empty: the node only dials out.
    pub listen_addrs: Vec<Multiaddr>,
    /// Peers dialed at start and used to bootstrap the DHT. Each address
    /// must end in `/p2p/<peer id>`. Default: none.
    pub bootstrap: Vec<Multiaddr>,
    /// Bounds on connections, streams, queues and message sizes.
    pub limits: Limits,
    /// Whether this node answers DHT queries (Kademlia server mode). Nodes
    /// reachable by others (mixes, providers) should; clients behind NAT
    /// should not. On an [`AddressScope::Public`] network the node becomes
    /// a server only once it has a confirmed address. Default true.
    pub kad_server: bool,
    /// Whether this node takes part in the DHT at all. A client-only node
    /// whose lookups and publications travel through the mixnet (errands,
    /// carried out by a provider) turns it off: it then never bootstraps,
    /// keeps its routing table empty and so never dials a DHT node it did
    /// not choose; `get_record` and `put_record` fail with
    /// [`NetError::DhtDisabled`](crate::NetError::DhtDisabled). Default true.
    pub dht: bool,
    /// Time limits.
    pub timeouts: Timeouts,
    /// Which addresses the node announces (in identify, to the DHT, as
    /// [`NetEvent::AddressConfirmed`](crate::NetEvent::AddressConfirmed)).
    /// Default [`AddressScope::Local`], matching the loopback listeners of
    /// [`NetConfig::new`].
    pub scope: AddressScope,
    /// Addresses the operator knows others can reach this node at (a
    /// public host's address, a port forwarded by a router): announced
    /// without a reachability test. On a public network each must be
    /// publicly routable. Default: none.
    pub external_addrs: Vec<Multiaddr>,
    /// Whether the node learns which of its addresses others can reach,
    /// and helps others learn theirs (AutoNAT v2: a peer dials the
    /// candidate address back from a fresh port). Nodes that want to be
    /// mixes or providers turn it on; on a [`AddressScope::Public`] network
    /// their only other announced addresses are `external_addrs`.
    /// Default false.
    pub autonat: bool,
    /// While the node has fewer peers of this network than this, it keeps
    /// redialling its bootstrap peers (with backoff). Default 4; a client
    /// that needs only its providers sets 1.
    pub min_peers: usize,
    /// Whether the node relays connections for others (circuit relay v2)
    /// so that two contacts behind NAT can set up direct mode: the relayed
    /// connection carries only the hole-punching handshake, within the
    /// limits of [`Limits::relay`]. Reachable mixes and providers turn it
    /// on. Default false.
    pub relay_server: bool,
}

impl NetConfig {
    /// A configuration with the given network id and identity, listening on
    /// TCP and QUIC on 127.0.0.1 (ephemeral ports), no bootstrap peers, DHT
    /// server mode and the default [`Limits`] and [`Timeouts`].
    pub fn new(network_id: impl Into<String>, identity_secret: [u8; 32]) -> Self {
        let tcp = Multiaddr::empty()
            .with(Protocol::Ip4([127, 0, 0, 1].into()))
            .with(Protocol::Tcp(0));
        let quic = Multiaddr::empty()
            .with(Protocol::Ip4([127, 0, 0, 1].into()))
            .with(Protocol::Udp(0))
            .with(Protocol::QuicV1);
        Self {
            network_id: network_id.into(),
            identity: IdentitySecret::from_bytes(identity_secret),
            listen_addrs: vec![tcp, quic],
            bootstrap: Vec::new(),
            limits: Limits::default(),
            kad_server: true,
            dht: true,
            timeouts: Timeouts::default(),
            scope: AddressScope::Local,
            external_addrs: Vec::new(),
            autonat: false,
            min_peers: 4,
            relay_server: false,
        }
    }

    /// The protocol names of this configuration's network.
    pub fn protocol_names(&self) -> ProtocolNames {
        ProtocolNames::new(&self.network_id)
    }

    /// Checks every field; [`Net::spawn`](crate::Net::spawn) calls this.
    pub fn validate(&self) -> Result<(), NetError> {
        validate_network_id(&self.network_id)?;
        for addr in &self.bootstrap {
            if !matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
                return Err(NetError::BootstrapWithoutPeerId(addr.clone()));
            }
        }
        for addr in &self.external_addrs {
            if !crate::addrs::announceable(self.scope, addr) {
                return Err(NetError::InvalidConfig {
                    field: "external_addrs",
                    reason: match self.scope {
                        AddressScope::Public => format!(
                            "{addr} is not a publicly routable IP address (loopback, private and link-local addresses cannot be reached from other networks)"
                        ),
                        AddressScope::Local => format!("{addr} is not an IP address to announce"),
                    },
                });
            }
        }
        let l = &self.limits;
        let nonzero: [(&'static str, u64); 25] = [
            ("limits.max_connections", l.max_connections.into()),
            (
                "limits.max_connections_per_peer",
                l.max_connections_per_peer.into(),
            ),
            (
                "limits.max_pending_connections",
                l.max_pending_connections.into(),
            ),
            (
                "limits.max_streams_per_connection",
                l.max_streams_per_connection.into(),
            ),
            (
                "limits.max_negotiating_inbound_streams",
                l.max_negotiating_inbound_streams as u64,
            ),
            (
                "limits.max_inbound_packet_streams_per_peer",
                l.max_inbound_packet_streams_per_peer as u64,
            ),
            (
                "limits.packet_rate.frames_per_second",
                l.packet_rate.frames_per_second.into(),
            ),
            ("limits.packet_rate.burst", l.packet_rate.burst.into()),
            ("limits.flood_tolerance", l.flood_tolerance.into()),
            (
                "limits.source_packet_rate.frames_per_second",
                l.source_packet_rate.frames_per_second.into(),
            ),
            (
                "limits.source_packet_rate.burst",
                l.source_packet_rate.burst.into(),
            ),
            (
                "limits.max_connections_per_source",
                l.max_connections_per_source.into(),
            ),
            (
                "limits.outbound_queue_frames",
                l.outbound_queue_frames as u64,
            ),
            ("limits.max_request_size", l.max_request_size as u64),
            ("limits.max_response_size", l.max_response_size as u64),
            (
                "limits.max_concurrent_request_streams",
                l.max_concurrent_request_streams as u64,
            ),
            ("limits.max_pending_requests", l.max_pending_requests as u64),
            ("limits.max_gossip_size", l.max_gossip_size as u64),
            ("limits.max_community_topics", l.max_community_topics as u64),
            (
                "limits.max_community_topics_per_peer",
                l.max_community_topics_per_peer as u64,
            ),
            ("limits.max_record_size", l.max_record_size as u64),
            ("limits.max_records", l.max_records as u64),
            ("limits.max_pending_queries", l.max_pending_queries as u64),
            ("limits.command_queue", l.command_queue as u64),
            ("limits.event_queue", l.event_queue as u64),
        ];
        for (field, value) in nonzero {
            if value == 0 {
                return Err(NetError::InvalidConfig {
                    field,
                    reason: "must be at least 1".into(),
                });
            }
        }
        // Sizes go on the wire as u32 length prefixes and into allocations:
        // keep them well below anything dangerous.
        let capped: [(&'static str, usize, usize); 4] = [
            ("limits.max_request_size", l.max_request_size, 16 << 20),
            ("limits.max_response_size", l.max_response_size, 64 << 20),
            ("limits.max_gossip_size", l.max_gossip_size, 4 << 20),
            ("limits.max_record_size", l.max_record_size, 1 << 20),
        ];
        for (field, value, cap) in capped {
            if value > cap {
                return Err(NetError::InvalidConfig {
                    field,
                    reason: format!("is {value} bytes, at most {cap} is allowed"),
                });
            }
        }
        // Topic counts size gossipsub's per-peer state and its largest
        // subscription announcement.
        let topics: [(&'static str, usize); 2] = [
            ("limits.max_community_topics", l.max_community_topics),
            (
                "limits.max_community_topics_per_peer",
                l.max_community_topics_per_peer,
            ),
        ];
        for (field, value) in topics {
            if value > MAX_COMMUNITY_TOPICS {
                return Err(NetError::InvalidConfig {
                    field,
                    reason: format!("is {value}, at most {MAX_COMMUNITY_TOPICS} is allowed"),
                });
            }
        }
        let t = &self.timeouts;
        let timeouts = [
            ("timeouts.connection", t.connection),
            ("timeouts.idle_connection", t.idle_connection),
            ("timeouts.stream_negotiation", t.stream_negotiation),
            ("timeouts.request", t.request),
            ("timeouts.kad_query", t.kad_query),
            ("timeouts.ping_interval", t.ping_interval),
            ("timeouts.ping_timeout", t.ping_timeout),
            ("timeouts.gossip_heartbeat", t.gossip_heartbeat),
            ("timeouts.reachability_probe", t.reachability_probe),
        ];
        for (field, value) in timeouts {
            if value.is_zero() {
                return Err(NetError::InvalidConfig {
                    field,
                    reason: "must be longer than zero".into(),
                });
            }
        }
        Ok(())
    }
}

fn validate_network_id(id: &str) -> Result<(), NetError> {
    let reason = if id.is_empty() {
        Some("it is empty")
    } else if id.len() > 64 {
        Some("it is longer than 64 characters")
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        Some("it contains a character that is not allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetError::InvalidNetworkId {
            id: id.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The names under which a network's protocols are negotiated. Every name
/// contains the network id, so two networks share no protocol but the
/// generic libp2p ones (identify, ping), and identify's protocol version
/// tells them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolNames {
    /// Kademlia: `/chainmail/<id>/kad/1.0.0`.
    pub kad: String,
    /// Mix packet stream: `/chainmail/<id>/packet/1.0.0`.
    pub packet: String,
    /// Mailbox fetch (request-response): `/chainmail/<id>/fetch/1.0.0`.
    pub fetch: String,
    /// Node descriptors a peer knows (request-response):
    /// `/chainmail/<id>/descriptors/1.0.0`.
    pub descriptors: String,
    /// Community block sync between members (request-response):
    /// `/chainmail/<id>/community-sync/1.0.0`.
    pub community_sync: String,
    /// Messages between two contacts' nodes in direct mode
    /// (request-response): `/chainmail/<id>/direct/1.0.0`.
    pub direct: String,
    /// Identify protocol version: `/chainmail/<id>/1.0.0`.
    pub identify_version: String,
    /// Gossipsub stream protocol: `/chainmail/<id>/meshsub/1.1.0`.
    pub gossipsub: String,
    /// Gossipsub topic of node descriptors: `chainmail/<id>/descriptors/1`.
    pub descriptor_topic: String,
    /// Prefix of every community topic: `chainmail/<id>/community/`. A
    /// community topic is this prefix followed by a non-empty name, at most
    /// [`MAX_TOPIC_LEN`](crate::MAX_TOPIC_LEN) bytes in all.
    pub community_topic_prefix: String,
}

impl ProtocolNames {
    /// The names for network `network_id` (not validated here).
    pub fn new(network_id: &str) -> Self {
        Self {
            kad: format!("/chainmail/{network_id}/kad/1.0.0"),
            packet: format!("/chainmail/{network_id}/packet/1.0.0"),
            fetch: format!("/chainmail/{network_id}/fetch/1.0.0"),
            descriptors: format!("/chainmail/{network_id}/descriptors/1.0.0"),
            community_sync: format!("/chainmail/{network_id}/community-sync/1.0.0"),
            direct: format!("/chainmail/{network_id}/direct/1.0.0"),
            identify_version: format!("/chainmail/{network_id}/1.0.0"),
            gossipsub: format!("/chainmail/{network_id}/meshsub/1.1.0"),
            descriptor_topic: format!("chainmail/{network_id}/descriptors/1"),
            community_topic_prefix: format!("chainmail/{network_id}/community/"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_loopback() {
        let config = NetConfig::new("chainmail-test-1a2b", [7; 32]);
        config.validate().unwrap();
        for addr in &config.listen_addrs {
            assert!(addr.to_string().starts_with("/ip4/127.0.0.1/"), "{addr}");
        }
    }

    #[test]
    fn protocol_names_contain_the_network_id() {
        let names = ProtocolNames::new("net-1");
        assert_eq!(names.kad, "/chainmail/net-1/kad/1.0.0");
        assert_eq!(names.packet, "/chainmail/net-1/packet/1.0.0");
        assert_eq!(names.fetch, "/chainmail/net-1/fetch/1.0.0");
        assert_eq!(names.descriptors, "/chainmail/net-1/descriptors/1.0.0");
        assert_eq!(
            names.community_sync,
            "/chainmail/net-1/community-sync/1.0.0"
        );
        assert_eq!(names.identify_version, "/chainmail/net-1/1.0.0");
        assert_eq!(names.descriptor_topic, "chainmail/net-1/descriptors/1");
        assert_eq!(names.community_topic_prefix, "chainmail/net-1/community/");
    }

    #[test]
    fn bad_network_ids_are_refused() {
        for id in ["", "a/b", "a b", "ü", &"x".repeat(65)] {
            let config = NetConfig::new(id, [1; 32]);
            assert!(
                matches!(config.validate(), Err(NetError::InvalidNetworkId { .. })),
                "{id:?}"
            );
        }
    }

    #[test]
    fn bootstrap_needs_a_peer_id() {
        let mut config = NetConfig::new("n", [1; 32]);
        config.bootstrap = vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()];
        assert!(matches!(
            config.validate(),
            Err(NetError::BootstrapWithoutPeerId(_))
        ));
    }

    #[test]
    fn zero_limits_are_refused() {
        let mut config = NetConfig::new("n", [1; 32]);
        config.limits.outbound_queue_frames = 0;
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("outbound_queue_frames"), "{err}");
        let mut config = NetConfig::new("n", [1; 32]);
        config.timeouts.request = Duration::ZERO;
        assert!(config.validate().is_err());
        let mut config = NetConfig::new("n", [1; 32]);
        config.limits.max_community_topics_per_peer = 0;
        let err = config.validate().unwrap_err();
        assert!(
            err.to_string().contains("max_community_topics_per_peer"),
            "{err}"
        );
    }

    #[test]
    fn topic_counts_are_capped() {
        let mut config = NetConfig::new("n", [1; 32]);
        config.limits.max_community_topics = MAX_COMMUNITY_TOPICS;
        config.validate().unwrap();
        config.limits.max_community_topics = MAX_COMMUNITY_TOPICS + 1;
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("max_community_topics"), "{err}");
    }

    #[test]
    fn secret_debug_is_redacted() {
        let config = NetConfig::new("n", [0xab; 32]);
        let text = format!("{config:?}");
        assert!(!text.contains("171"), "{text}");
        assert!(text.contains("redacted"));
    }
}
