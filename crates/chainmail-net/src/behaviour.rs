//! The node's composed network behaviour and how it is built from a
//! [`NetConfig`].

use std::sync::Arc;

use libp2p::{
    StreamProtocol, autonat, connection_limits, dcutr, gossipsub, identify,
    identity::Keypair,
    kad, ping, relay, request_response,
    swarm::{NetworkBehaviour, behaviour::toggle::Toggle},
};

use crate::{
    addrs::AddressScope,
    config::{NetConfig, ProtocolNames},
    error::NetError,
    metrics::Counters,
    packet,
    protocol::FetchCodec,
    topics::{self, SubscriptionFilter},
};

/// Gossipsub limited to the descriptor topic and community topics:
/// subscriptions of remote peers to any other topic are ignored, and at most
/// [`Limits::max_community_topics_per_peer`](crate::Limits::max_community_topics_per_peer)
/// community topics are remembered per peer, so its per-peer state stays
/// bounded.
pub(crate) type Gossipsub = gossipsub::Behaviour<gossipsub::IdentityTransform, SubscriptionFilter>;

/// Room for gossipsub's framing (signature, key, topic, sequence number)
/// on top of the payload.
const GOSSIP_OVERHEAD: usize = 1024;

/// Room for a Kademlia message's other fields (key, closer peers with their
/// addresses) on top of one record value.
const KAD_OVERHEAD: usize = 16 * 1024;

/// All protocols of a node. Connection limits come first, so a connection
/// over the limits is refused before any other behaviour sets up state.
#[derive(NetworkBehaviour)]
pub(crate) struct NodeBehaviour {
    pub(crate) limits: connection_limits::Behaviour,
    /// Inbound connections per source (IP address, IPv6 /64).
    pub(crate) sources: crate::sources::Behaviour,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) gossipsub: Gossipsub,
    pub(crate) fetch: request_response::Behaviour<FetchCodec>,
    pub(crate) descriptors: request_response::Behaviour<FetchCodec>,
    pub(crate) community_sync: request_response::Behaviour<FetchCodec>,
    /// Messages between contacts in direct mode.
    pub(crate) direct: request_response::Behaviour<FetchCodec>,
    pub(crate) packet: packet::Behaviour,
    /// Asks peers to dial our candidate addresses back (AutoNAT v2).
    pub(crate) autonat_client: Toggle<autonat::v2::client::Behaviour>,
    /// Dials peers' candidate addresses back for them.
    pub(crate) autonat_server: Toggle<autonat::v2::server::Behaviour>,
    /// Relays the hole-punching handshake of others' direct mode.
    pub(crate) relay_server: Toggle<relay::Behaviour>,
    /// Holds reservations at relays and dials through them (set when the
    /// swarm is built: it comes with its transport).
    pub(crate) relay_client: Toggle<relay::client::Behaviour>,
    /// Upgrades a relayed connection to a direct one (hole punching).
    pub(crate) dcutr: dcutr::Behaviour,
}

fn stream_protocol(name: &str) -> Result<StreamProtocol, NetError> {
    StreamProtocol::try_from_owned(name.to_owned()).map_err(|e| NetError::InvalidConfig {
        field: "network_id",
        reason: format!("gives an invalid protocol name {name:?}: {e}"),
    })
}

impl NodeBehaviour {
    pub(crate) fn new(
        config: &NetConfig,
        names: &ProtocolNames,
        keypair: &Keypair,
        counters: Arc<Counters>,
    ) -> Result<Self, NetError> {
        let limits = &config.limits;
        let timeouts = &config.timeouts;
        let local_peer_id = keypair.public().to_peer_id();

        let connection_limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(limits.max_connections))
                .with_max_established_per_peer(Some(limits.max_connections_per_peer))
                .with_max_pending_incoming(Some(limits.max_pending_connections))
                .with_max_pending_outgoing(Some(limits.max_pending_connections)),
        );

        // Identify: its protocol version carries the network id; the driver
        // disconnects peers whose version differs. No address cache: peer
        // addresses come from Kademlia, and only for peers of this network.
        // On a public network identify tells peers only the addresses
        // others confirmed (never a home's LAN addresses or loopback).
        let identify = identify::Behaviour::new(
            identify::Config::new(names.identify_version.clone(), keypair.public())
                .with_agent_version(format!("chainmail-net/{}", env!("CARGO_PKG_VERSION")))
                .with_cache_size(0)
                .with_hide_listen_addrs(config.scope == AddressScope::Public),
        );

        let ping = ping::Behaviour::new(
            ping::Config::new()
                .with_interval(timeouts.ping_interval)
                .with_timeout(timeouts.ping_timeout),
        );

        let mut kad_config = kad::Config::new(stream_protocol(&names.kad)?);
        kad_config
            .set_query_timeout(timeouts.kad_query)
            .set_max_packet_size(limits.max_record_size + KAD_OVERHEAD);
        if !config.dht {
            // Nothing enters the routing table, so no bootstrap (periodic
            // or on a new peer) ever dials anyone.
            kad_config
                .set_kbucket_inserts(kad::BucketInserts::Manual)
                .set_periodic_bootstrap_interval(None);
        }
        let store = kad::store::MemoryStore::with_config(
            local_peer_id,
            kad::store::MemoryStoreConfig {
                max_records: limits.max_records,
                max_value_bytes: limits.max_record_size,
                ..Default::default()
            },
        );
        let mut kad = kad::Behaviour::with_config(local_peer_id, store, kad_config);
        // On a public network a would-be server answers DHT queries only
        // once others can reach it: Kademlia's automatic mode switches to
        // server when the swarm has a confirmed external address.
        kad.set_mode(match (config.kad_server, config.scope) {
            (false, _) => Some(kad::Mode::Client),
            (true, AddressScope::Local) => Some(kad::Mode::Server),
            (true, AddressScope::Public) => None,
        });

        let topic = gossipsub::IdentTopic::new(names.descriptor_topic.clone());
        let gossip_config = gossipsub::ConfigBuilder::default()
            .protocol_id(names.gossipsub.clone(), gossipsub::Version::V1_1)
            .validation_mode(gossipsub::ValidationMode::Strict)
            // Relay a message only once the application has judged it
            // (`NetHandle::validate`): a community's nodes never pass on a
            // block or record they refused.
            .validate_messages()
            .heartbeat_interval(timeouts.gossip_heartbeat)
            .heartbeat_initial_delay(timeouts.gossip_heartbeat)
            // Room for the largest message, and for the announcement of
            // all topics of a node (sent in one RPC): ours, or a peer's
            // within the per-peer cap.
            .max_transmit_size(
                (limits.max_gossip_size + GOSSIP_OVERHEAD).max(
                    topics::max_subscriptions_rpc_size(
                        limits
                            .max_community_topics
                            .max(limits.max_community_topics_per_peer),
                    ) + GOSSIP_OVERHEAD,
                ),
            )
            .build()
            .map_err(|e| NetError::InvalidConfig {
                field: "limits.max_gossip_size",
                reason: format!("gossipsub refused the configuration: {e}"),
            })?;
        let mut gossipsub = Gossipsub::new_with_subscription_filter(
            gossipsub::MessageAuthenticity::Signed(keypair.clone()),
            gossip_config,
            topics::subscription_filter(names, limits.max_community_topics_per_peer),
        )
        .map_err(|e| NetError::InvalidConfig {
            field: "limits",
            reason: format!("gossipsub refused the configuration: {e}"),
        })?;
        gossipsub
            .subscribe(&topic)
            .map_err(|e| NetError::InvalidConfig {
                field: "network_id",
                reason: format!("cannot subscribe to the descriptor topic: {e}"),
            })?;

        // One request-response protocol per purpose, each with its own
        // name: a peer can speak (and be refused) one without the others.
        let request_response = |name: &str| -> Result<_, NetError> {
            Ok(request_response::Behaviour::with_codec(
                FetchCodec {
                    max_request: limits.max_request_size,
                    max_response: limits.max_response_size,
                },
                [(
                    stream_protocol(name)?,
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default()
                    .with_request_timeout(timeouts.request)
                    .with_max_concurrent_streams(limits.max_concurrent_request_streams),
            ))
        };
        let fetch = request_response(&names.fetch)?;
        let descriptors = request_response(&names.descriptors)?;
        let community_sync = request_response(&names.community_sync)?;
        let direct = request_response(&names.direct)?;

        let packet = packet::Behaviour::new(
            packet::Config {
                protocol: stream_protocol(&names.packet)?,
                rate: limits.packet_rate,
                flood_tolerance: limits.flood_tolerance,
                max_inbound_streams: limits.max_inbound_packet_streams_per_peer,
                outbound_queue: limits.outbound_queue_frames,
                negotiation_timeout: timeouts.stream_negotiation,
                source_rate: limits.source_packet_rate,
                limit_loopback: limits.limit_loopback,
            },
            counters.clone(),
        );
        let sources = crate::sources::Behaviour::new(
            limits.max_connections_per_source,
            limits.limit_loopback,
            counters,
        );

        // Reachability tests: a candidate address (what a peer saw us
        // connect from, from identify) is tried every few seconds until one
        // peer dialled it back.
        let (autonat_client, autonat_server) = if config.autonat {
            (
                Some(autonat::v2::client::Behaviour::new(
                    rand::make_rng::<rand::rngs::StdRng>(),
                    autonat::v2::client::Config::default()
                        .with_probe_interval(timeouts.reachability_probe),
                )),
                Some(autonat::v2::server::Behaviour::default()),
            )
        } else {
            (None, None)
        };

        let relay_server = config.relay_server.then(|| {
            let r = &limits.relay;
            relay::Behaviour::new(
                local_peer_id,
                relay::Config {
                    max_reservations: r.max_reservations,
                    max_reservations_per_peer: r.max_reservations_per_peer,
                    max_circuits: r.max_circuits,
                    max_circuits_per_peer: r.max_circuits_per_peer,
                    max_circuit_duration: r.max_circuit_duration,
                    max_circuit_bytes: r.max_circuit_bytes,
                    ..relay::Config::default()
                },
            )
        });

        Ok(Self {
            limits: connection_limits,
            sources,
            identify,
            ping,
            kad,
            gossipsub,
            fetch,
            descriptors,
            community_sync,
            packet,
            autonat_client: autonat_client.into(),
            autonat_server: autonat_server.into(),
            relay_server: relay_server.into(),
            relay_client: None.into(),
            dcutr: dcutr::Behaviour::new(local_peer_id),
            direct,
        })
    }
}

/// At most this many addresses of one peer, learnt from identify, go into
/// the routing table.
pub(crate) const MAX_ADDRS_PER_PEER: usize = 8;
