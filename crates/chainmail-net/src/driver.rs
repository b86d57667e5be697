//! The driver: one tokio task owns the swarm; [`NetHandle`]s talk to it over
//! a bounded command channel, and it reports over a bounded event channel.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::{StreamExt, future::BoxFuture, stream::FuturesUnordered};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, autonat, dcutr, gossipsub, identify,
    identity::Keypair,
    kad,
    multiaddr::Protocol,
    noise,
    request_response::{self, OutboundRequestId, ResponseChannel},
    swarm::{
        SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
    tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};

use crate::{
    Frame,
    addrs::{AddressScope, announceable},
    behaviour::{MAX_ADDRS_PER_PEER, NodeBehaviour, NodeBehaviourEvent},
    config::{NetConfig, ProtocolNames},
    direct::{DirectLink, DirectPlan, LinkState, Links},
    error::NetError,
    keys::node_key_from_peer_id,
    limiter::now,
    metrics::{Counters, NetMetrics, dec, inc},
    packet,
    redial::{PeerReach, Redial},
    topics::{check_community_topic, is_community_topic},
};

/// Listen addresses remembered by the driver (a node has a handful).
const MAX_LISTEN_ADDRS: usize = 64;

/// Reachability test results remembered (the latest ones).
const MAX_PROBES: usize = 16;

/// How often the driver looks for peers to redial.
const REDIAL_TICK: Duration = Duration::from_secs(1);

/// Least time between two DHT bootstraps started because a bootstrap peer
/// came back.
const KAD_REBOOTSTRAP: Duration = Duration::from_secs(30);

/// The protocol of AutoNAT v2 dial requests: a peer that speaks it tests
/// addresses for others.
const AUTONAT_DIAL_REQUEST: &str = "/libp2p/autonat/2/dial-request";

/// Peers known to test addresses (remembered while connected).
const MAX_AUTONAT_SERVERS: usize = 64;

/// Least time between two connections opened only to have our addresses
/// tested.
const REACHABILITY_DIAL: Duration = Duration::from_secs(10);

/// Extra time a [`NetHandle`] waits beyond the protocol's own timeout before
/// giving up on the driver's answer.
const HANDLE_GRACE: Duration = Duration::from_secs(5);

/// An error and its sources, as one line (libp2p's transport errors say
/// little themselves: "address in use" is in the source).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    parts.retain(|p| !p.is_empty());
    parts.dedup();
    parts.join(": ")
}

/// Starts network drivers.
#[derive(Debug)]
#[non_exhaustive]
pub struct Net;

impl Net {
    /// Validates `config`, builds the libp2p swarm (TCP and QUIC, noise,
    /// yamux, all protocols of [`ProtocolNames`]), starts listening, dials
    /// the bootstrap peers and spawns the driver on the current tokio
    /// runtime.
    ///
    /// The driver runs until [`NetHandle::shutdown`] or until every
    /// [`NetHandle`] is dropped. Listen addresses with their real ports are
    /// reported as [`NetEvent::ListeningOn`] and by
    /// [`NetHandle::listen_addrs`].
    pub fn spawn(config: NetConfig) -> Result<(NetHandle, NetEvents), NetError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetError::NoRuntime)?;
        let names = config.protocol_names();
        // libp2p zeroizes the bytes it is given.
        let keypair = Keypair::ed25519_from_bytes(config.identity.expose()).map_err(|e| {
            NetError::InvalidConfig {
                field: "identity",
                reason: e.to_string(),
            }
        })?;
        let local_peer_id = keypair.public().to_peer_id();
        let local_node_key = node_key_from_peer_id(&local_peer_id)?;
        let counters = Arc::new(Counters::default());
        let behaviour = NodeBehaviour::new(&config, &names, &keypair, counters.clone())?;

        let max_streams = config.limits.max_streams_per_connection;
        let idle = config.timeouts.idle_connection;
        let negotiating = config.limits.max_negotiating_inbound_streams;
        // Entering the runtime: the QUIC transport needs it when built.
        let _guard = runtime.enter();
        let mut swarm = SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                move || {
                    let mut yamux = yamux::Config::default();
                    yamux.set_max_num_streams(max_streams as usize);
                    yamux
                },
            )
            .map_err(|e| NetError::Transport(e.to_string()))?
            .with_quic_config(move |mut quic| {
                quic.max_concurrent_stream_limit = max_streams;
                quic
            })
            .with_relay_client(noise::Config::new, move || {
                let mut yamux = yamux::Config::default();
                yamux.set_max_num_streams(max_streams as usize);
                yamux
            })
            .map_err(|e| NetError::Transport(e.to_string()))?
            .with_behaviour(|_, relay_client| {
                let mut behaviour = behaviour;
                behaviour.relay_client = Some(relay_client).into();
                behaviour
            })
            .map_err(|e| NetError::Transport(e.to_string()))?
            .with_swarm_config(|swarm| {
                swarm
                    .with_idle_connection_timeout(idle)
                    .with_max_negotiating_inbound_streams(negotiating)
            })
            .with_connection_timeout(config.timeouts.connection)
            .build();

        for addr in &config.listen_addrs {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Listen {
                    addr: addr.clone(),
                    reason: error_chain(&e),
                })?;
        }
        // Bootstrap peers are dialled by the redial schedule: at once, and
        // again with backoff while the node has too few peers.
        let started = now();
        let mut redial = Redial::default();
        for addr in &config.bootstrap {
            let mut base = addr.clone();
            let Some(Protocol::P2p(peer)) = base.pop() else {
                return Err(NetError::BootstrapWithoutPeerId(addr.clone()));
            };
            if config.dht {
                swarm.behaviour_mut().kad.add_address(&peer, base.clone());
            }
            swarm.add_peer_address(peer, base);
            redial.add_bootstrap(started, peer, addr.clone());
        }
        if config.dht && !config.bootstrap.is_empty() {
            // Cannot fail: the bootstrap peers were just added.
            let _ = swarm.behaviour_mut().kad.bootstrap();
        }

        let (command_tx, command_rx) = mpsc::channel(config.limits.command_queue);
        let (event_tx, event_rx) = mpsc::channel(config.limits.event_queue);
        let kad_protocol = StreamProtocol::try_from_owned(names.kad.clone()).map_err(|e| {
            NetError::InvalidConfig {
                field: "network_id",
                reason: e.to_string(),
            }
        })?;
        let topic = gossipsub::IdentTopic::new(names.descriptor_topic.clone());
        let handle = NetHandle {
            commands: command_tx,
            counters: counters.clone(),
            local_peer_id,
            local_node_key,
            max_request_size: config.limits.max_request_size,
            max_gossip_size: config.limits.max_gossip_size,
            max_record_size: config.limits.max_record_size,
            request_timeout: config.timeouts.request,
            query_timeout: config.timeouts.kad_query,
            community_prefix: names.community_topic_prefix.as_str().into(),
        };
        let driver = Driver {
            swarm,
            commands: command_rx,
            events: event_tx,
            counters,
            names,
            kad_protocol,
            dht: config.dht,
            topic,
            max_gossip_size: config.limits.max_gossip_size,
            max_community_topics: config.limits.max_community_topics,
            max_pending_requests: config.limits.max_pending_requests,
            max_pending_queries: config.limits.max_pending_queries,
            max_response_size: config.limits.max_response_size,
            request_timeout: config.timeouts.request,
            listen_addrs: Vec::new(),
            confirmed: HashSet::new(),
            scope: config.scope,
            min_peers: config.min_peers,
            redial,
            announced: Vec::new(),
            probes: VecDeque::new(),
            last_kad_bootstrap: started,
            autonat: config.autonat,
            autonat_servers: HashSet::new(),
            dialed: HashMap::new(),
            next_reachability_dial: started,
            links: Links::new(local_peer_id),
            redial_dials: HashMap::new(),
            pending_requests: HashMap::new(),
            pending_gets: HashMap::new(),
            pending_puts: HashMap::new(),
            replies: FuturesUnordered::new(),
        };
        runtime.spawn(driver.run(config.external_addrs.clone()));
        Ok((handle, NetEvents { receiver: event_rx }))
    }
}

/// A community topic message awaiting the application's verdict (see
/// [`NetHandle::validate`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMessageId {
    message: gossipsub::MessageId,
    from: PeerId,
}

/// The application's verdict on a community topic message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: relay it to the other subscribers.
    Accept,
    /// Not wrong, but not worth relaying (a duplicate, say).
    Ignore,
    /// Breaks a rule: do not relay it (and, were gossipsub's peer scoring
    /// enabled, count it against the peer that sent it).
    Reject,
}

impl Verdict {
    fn acceptance(self) -> gossipsub::MessageAcceptance {
        match self {
            Verdict::Accept => gossipsub::MessageAcceptance::Accept,
            Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
            Verdict::Reject => gossipsub::MessageAcceptance::Reject,
        }
    }
}

/// What the driver reports.
#[non_exhaustive]
pub enum NetEvent {
    /// A mix packet frame from `peer`, within its rate limit.
    PacketReceived {
        /// The neighbour that sent it (not its author: this is a mixnet).
        peer: PeerId,
        /// The frame.
        frame: Box<Frame>,
    },
    /// A message on the descriptor topic, signed by `source`.
    GossipReceived {
        /// The author, whose signature gossipsub checked.
        source: PeerId,
        /// The payload.
        bytes: Vec<u8>,
    },
    /// A message on a community topic this node is subscribed to (see
    /// [`NetHandle::subscribe`]), signed by `source`.
    TopicMessage {
        /// The topic, which starts with
        /// [`ProtocolNames::community_topic_prefix`].
        topic: String,
        /// The author, whose signature gossipsub checked.
        source: PeerId,
        /// The payload, at most
        /// [`Limits::max_gossip_size`](crate::Limits::max_gossip_size) bytes.
        bytes: Vec<u8>,
        /// Which message it is, for [`NetHandle::validate`]: it is relayed
        /// to other subscribers only once the application accepts it.
        id: TopicMessageId,
    },
    /// A request. Answer it with [`ReplyHandle::send`] within
    /// [`Timeouts::request`](crate::Timeouts::request); dropping the handle
    /// refuses the request.
    RequestReceived {
        /// Which protocol it came on.
        kind: RequestKind,
        /// The requesting peer.
        peer: PeerId,
        /// The request.
        bytes: Vec<u8>,
        /// Where the response goes.
        reply: ReplyHandle,
    },
    /// The first connection to a peer of this network is up and identify
    /// confirmed the network id.
    PeerConnected {
        /// The peer.
        peer: PeerId,
    },
    /// The last connection to a peer reported by
    /// [`PeerConnected`](NetEvent::PeerConnected) closed.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
    },
    /// The node listens on a new address.
    ListeningOn {
        /// The address, with its actual port.
        addr: Multiaddr,
    },
    /// Others can reach the node at `addr`: a peer dialled it back
    /// (AutoNAT), the operator named it, or, on a local network, the node
    /// listens on it. Only addresses the network's
    /// [`AddressScope`] allows are reported.
    AddressConfirmed {
        /// The address.
        addr: Multiaddr,
    },
    /// An address reported by [`AddressConfirmed`](NetEvent::AddressConfirmed)
    /// is no longer valid (its listener closed).
    AddressExpired {
        /// The address.
        addr: Multiaddr,
    },
    /// The direct-mode link with `peer` (see
    /// [`NetHandle::set_direct`]) changed.
    DirectLink {
        /// The peer.
        peer: PeerId,
        /// Where the link stands now.
        state: LinkState,
    },
}

impl fmt::Debug for NetEvent {
    /// Prints sizes, never contents.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PacketReceived { peer, .. } => f
                .debug_struct("PacketReceived")
                .field("peer", peer)
                .finish_non_exhaustive(),
            Self::GossipReceived { source, bytes } => f
                .debug_struct("GossipReceived")
                .field("source", source)
                .field("len", &bytes.len())
                .finish(),
            Self::TopicMessage {
                topic,
                source,
                bytes,
                ..
            } => f
                .debug_struct("TopicMessage")
                .field("topic_len", &topic.len())
                .field("source", source)
                .field("len", &bytes.len())
                .finish(),
            Self::RequestReceived {
                kind, peer, bytes, ..
            } => f
                .debug_struct("RequestReceived")
                .field("kind", kind)
                .field("peer", peer)
                .field("len", &bytes.len())
                .finish_non_exhaustive(),
            Self::PeerConnected { peer } => {
                f.debug_struct("PeerConnected").field("peer", peer).finish()
            }
            Self::PeerDisconnected { peer } => f
                .debug_struct("PeerDisconnected")
                .field("peer", peer)
                .finish(),
            Self::ListeningOn { addr } => {
                f.debug_struct("ListeningOn").field("addr", addr).finish()
            }
            Self::AddressConfirmed { addr } => f
                .debug_struct("AddressConfirmed")
                .field("addr", addr)
                .finish(),
            Self::AddressExpired { addr } => f
                .debug_struct("AddressExpired")
                .field("addr", addr)
                .finish(),
            Self::DirectLink { peer, state } => f
                .debug_struct("DirectLink")
                .field("peer", peer)
                .field("state", &state.as_str())
                .finish(),
        }
    }
}

/// Which request-response protocol a request travels on: one per purpose,
/// each with its own protocol name (see [`ProtocolNames`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// A mailbox fetch, to a provider.
    Fetch,
    /// The node descriptors a peer knows.
    Descriptors,
    /// A community sync request, to a member's node.
    CommunitySync,
    /// A message between two contacts in direct mode. Sent only over a
    /// direct connection ([`NetError::NotDirect`] otherwise), taken only
    /// from a peer of the [`DirectPlan`] over a direct connection.
    Direct,
}

/// The way back to the requester of one inbound request.
pub struct ReplyHandle {
    sender: oneshot::Sender<Vec<u8>>,
    max_response_size: usize,
}

impl ReplyHandle {
    /// Sends the response. Fails if it is larger than
    /// [`Limits::max_response_size`](crate::Limits::max_response_size) (the
    /// request is then refused) or if the request has already timed out.
    pub fn send(self, response: Vec<u8>) -> Result<(), NetError> {
        if response.len() > self.max_response_size {
            return Err(NetError::ResponseTooLarge {
                size: response.len(),
                max: self.max_response_size,
            });
        }
        self.sender
            .send(response)
            .map_err(|_| NetError::ReplyClosed)
    }

    /// The largest response [`send`](Self::send) accepts.
    pub fn max_response_size(&self) -> usize {
        self.max_response_size
    }
}

impl fmt::Debug for ReplyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyHandle").finish_non_exhaustive()
    }
}

/// The driver's events, from a bounded channel. Read them promptly: when the
/// channel is full, new events are dropped and counted
/// ([`DroppedFrames::event_queue_full`](crate::DroppedFrames::event_queue_full),
/// [`NetMetrics::events_dropped`]). Ends when the driver stops.
#[derive(Debug)]
pub struct NetEvents {
    receiver: mpsc::Receiver<NetEvent>,
}

impl NetEvents {
    /// The next event; `None` once the driver has stopped.
    pub async fn recv(&mut self) -> Option<NetEvent> {
        self.receiver.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<NetEvent> {
        self.receiver.try_recv().ok()
    }

    /// Polls for the next event.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<NetEvent>> {
        self.receiver.poll_recv(cx)
    }
}

impl futures::Stream for NetEvents {
    type Item = NetEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<NetEvent>> {
        self.receiver.poll_recv(cx)
    }
}

type Reply<T> = oneshot::Sender<Result<T, NetError>>;

enum Command {
    SendPacket {
        peer: PeerId,
        frame: Box<Frame>,
    },
    Publish {
        bytes: Vec<u8>,
        reply: Reply<()>,
    },
    Subscribe {
        topic: String,
        reply: Reply<()>,
    },
    Unsubscribe {
        topic: String,
        reply: Reply<()>,
    },
    PublishTo {
        topic: String,
        bytes: Vec<u8>,
        reply: Reply<()>,
    },
    TopicPeers {
        topic: String,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Validate {
        id: TopicMessageId,
        verdict: Verdict,
    },
    PutRecord {
        key: Vec<u8>,
        value: Vec<u8>,
        reply: Reply<()>,
    },
    GetRecord {
        key: Vec<u8>,
        reply: Reply<Vec<u8>>,
    },
    Request {
        peer: PeerId,
        kind: RequestKind,
        bytes: Vec<u8>,
        reply: Reply<Vec<u8>>,
    },
    AddPeerAddress {
        peer: PeerId,
        addr: Multiaddr,
    },
    Dial {
        addr: Multiaddr,
        reply: Reply<()>,
    },
    DialPeer {
        peer: PeerId,
        reply: Reply<()>,
    },
    Bootstrap {
        reply: Reply<()>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Keep {
        peer: PeerId,
        keep: bool,
    },
    Reachability {
        reply: oneshot::Sender<Reachability>,
    },
    SetDirect {
        plan: DirectPlan,
    },
    DirectLinks {
        reply: oneshot::Sender<Vec<DirectLink>>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// A handle to a running driver. Cheap to clone; the driver stops when the
/// last clone is dropped or [`shutdown`](Self::shutdown) is called.
///
/// Methods that wait do so for room in the bounded command queue and, where
/// they return a result, for the driver's answer.
#[derive(Clone)]
pub struct NetHandle {
    commands: mpsc::Sender<Command>,
    counters: Arc<Counters>,
    local_peer_id: PeerId,
    local_node_key: [u8; 32],
    max_request_size: usize,
    max_gossip_size: usize,
    max_record_size: usize,
    request_timeout: Duration,
    query_timeout: Duration,
    community_prefix: Arc<str>,
}

impl fmt::Debug for NetHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetHandle")
            .field("local_peer_id", &self.local_peer_id)
            .finish_non_exhaustive()
    }
}

impl NetHandle {
    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// This node's 32-byte Ed25519 public key, its name in the mixnet.
    pub fn local_node_key(&self) -> [u8; 32] {
        self.local_node_key
    }

    /// A snapshot of the counters; does not involve the driver.
    pub fn metrics(&self) -> NetMetrics {
        self.counters.snapshot()
    }

    async fn send(&self, command: Command) -> Result<(), NetError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| NetError::Stopped)
    }

    async fn ask<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, NetError> {
        let (reply, answer) = oneshot::channel();
        self.send(command(reply)).await?;
        answer.await.map_err(|_| NetError::Stopped)?
    }

    async fn ask_within<T>(
        &self,
        what: &'static str,
        timeout: Duration,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, NetError> {
        tokio::time::timeout(timeout + HANDLE_GRACE, self.ask(command))
            .await
            .map_err(|_| NetError::Timeout { what })?
    }

    /// Queues a frame for `peer` on its packet stream, waiting for room in
    /// the command queue. Delivery is best effort: if the peer is not
    /// connected or its outbound queue is full, the frame is dropped and
    /// counted in [`NetMetrics::frames_dropped`].
    pub async fn send_packet(&self, peer: PeerId, frame: Box<Frame>) -> Result<(), NetError> {
        self.send(Command::SendPacket { peer, frame }).await
    }

    /// Like [`send_packet`](Self::send_packet), but fails with
    /// [`NetError::CommandQueueFull`] instead of waiting.
    pub fn try_send_packet(&self, peer: PeerId, frame: Box<Frame>) -> Result<(), NetError> {
        self.commands
            .try_send(Command::SendPacket { peer, frame })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => NetError::CommandQueueFull,
                mpsc::error::TrySendError::Closed(_) => NetError::Stopped,
            })
    }

    /// Publishes `bytes` on the descriptor topic (signed with the node's
    /// identity). Fails if no connected peer is subscribed yet.
    pub async fn publish(&self, bytes: Vec<u8>) -> Result<(), NetError> {
        if bytes.len() > self.max_gossip_size {
            return Err(NetError::GossipTooLarge {
                size: bytes.len(),
                max: self.max_gossip_size,
            });
        }
        self.ask(|reply| Command::Publish { bytes, reply }).await
    }

    /// Subscribes to the community topic `topic`: from now on its messages
    /// arrive as [`NetEvent::TopicMessage`], and peers learn that this node
    /// is subscribed (which they can see: a subscription is not private).
    ///
    /// `topic` must be
    /// [`ProtocolNames::community_topic_prefix`] followed by a non-empty
    /// name, at most [`MAX_TOPIC_LEN`](crate::MAX_TOPIC_LEN) bytes in all
    /// ([`NetError::InvalidTopic`] otherwise). Subscribing to a topic the
    /// node is already subscribed to does nothing; subscribing to more than
    /// [`Limits::max_community_topics`](crate::Limits::max_community_topics)
    /// fails with [`NetError::TooManyTopics`].
    pub async fn subscribe(&self, topic: String) -> Result<(), NetError> {
        check_community_topic(&self.community_prefix, &topic)?;
        self.ask(|reply| Command::Subscribe { topic, reply }).await
    }

    /// The verdict on a community topic message
    /// ([`NetEvent::TopicMessage`]): community messages are relayed only
    /// once accepted, so that nodes never pass on what they refused.
    /// Messages left without a verdict are dropped from gossipsub's cache
    /// after a few heartbeats, unrelayed.
    pub async fn validate(&self, id: TopicMessageId, verdict: Verdict) -> Result<(), NetError> {
        self.send(Command::Validate { id, verdict }).await
    }

    /// Unsubscribes from the community topic `topic` and tells the peers.
    /// Once this returns, no new [`NetEvent::TopicMessage`] for it is
    /// produced (those already in the event queue stay there). Does nothing
    /// if the node is not subscribed. `topic` is checked as by
    /// [`subscribe`](Self::subscribe).
    pub async fn unsubscribe(&self, topic: String) -> Result<(), NetError> {
        check_community_topic(&self.community_prefix, &topic)?;
        self.ask(|reply| Command::Unsubscribe { topic, reply })
            .await
    }

    /// Publishes `bytes` on the community topic `topic` (signed with the
    /// node's identity), to every connected peer known to be subscribed to
    /// it. The node need not be subscribed itself.
    ///
    /// `topic` is checked as by [`subscribe`](Self::subscribe); `bytes` may
    /// have at most [`Limits::max_gossip_size`](crate::Limits::max_gossip_size)
    /// bytes. Fails with [`NetError::PublishFailed`] if no connected peer is
    /// subscribed to the topic (yet): not fatal, retry later or once
    /// [`topic_peers`](Self::topic_peers) is not empty.
    pub async fn publish_to(&self, topic: String, bytes: Vec<u8>) -> Result<(), NetError> {
        check_community_topic(&self.community_prefix, &topic)?;
        if bytes.len() > self.max_gossip_size {
            return Err(NetError::GossipTooLarge {
                size: bytes.len(),
                max: self.max_gossip_size,
            });
        }
        self.ask(|reply| Command::PublishTo {
            topic,
            bytes,
            reply,
        })
        .await
    }

    /// Connected peers known to be subscribed to the community topic
    /// `topic` (from their own announcements), whether or not this node is
    /// subscribed. `topic` is checked as by [`subscribe`](Self::subscribe).
    pub async fn topic_peers(&self, topic: String) -> Result<Vec<PeerId>, NetError> {
        check_community_topic(&self.community_prefix, &topic)?;
        let (reply, answer) = oneshot::channel();
        self.send(Command::TopicPeers { topic, reply }).await?;
        answer.await.map_err(|_| NetError::Stopped)
    }

    /// Stores `value` under `key` locally and at the peers closest to the
    /// key; succeeds once at least one other peer has stored it.
    /// `key` and `value` together may have at most
    /// [`Limits::max_record_size`](crate::Limits::max_record_size) bytes.
    pub async fn put_record(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), NetError> {
        let size = key.len() + value.len();
        if size > self.max_record_size {
            return Err(NetError::RecordTooLarge {
                size,
                max: self.max_record_size,
            });
        }
        self.ask_within("put_record", self.query_timeout, |reply| {
            Command::PutRecord { key, value, reply }
        })
        .await
    }

    /// The value of the first record found under `key` (the local store
    /// first, then the DHT). Records are not authenticated here: the layer
    /// above must check what it gets.
    pub async fn get_record(&self, key: Vec<u8>) -> Result<Vec<u8>, NetError> {
        self.ask_within("get_record", self.query_timeout, |reply| {
            Command::GetRecord { key, reply }
        })
        .await
    }

    /// Sends a request of `kind` to `peer` (dialing it if needed and its
    /// address is known) and waits for the response.
    pub async fn request(
        &self,
        peer: PeerId,
        kind: RequestKind,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>, NetError> {
        if bytes.len() > self.max_request_size {
            return Err(NetError::RequestTooLarge {
                size: bytes.len(),
                max: self.max_request_size,
            });
        }
        self.ask_within("request", self.request_timeout, |reply| Command::Request {
            peer,
            kind,
            bytes,
            reply,
        })
        .await
    }

    /// Tells the node an address of `peer` (for the DHT and for dialing).
    pub async fn add_peer_address(&self, peer: PeerId, addr: Multiaddr) -> Result<(), NetError> {
        self.send(Command::AddPeerAddress { peer, addr }).await
    }

    /// Dials `addr` (which should end in `/p2p/<peer id>`). Returns once the
    /// dial has started; [`NetEvent::PeerConnected`] follows on success.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.ask(|reply| Command::Dial { addr, reply }).await
    }

    /// Dials `peer` at the addresses the node knows for it.
    pub async fn dial_peer(&self, peer: PeerId) -> Result<(), NetError> {
        self.ask(|reply| Command::DialPeer { peer, reply }).await
    }

    /// Starts a DHT bootstrap (also done at start and periodically).
    pub async fn bootstrap(&self) -> Result<(), NetError> {
        self.ask(|reply| Command::Bootstrap { reply }).await
    }

    /// The addresses the node listens on, with their actual ports.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::ListenAddrs { reply }).await?;
        answer.await.map_err(|_| NetError::Stopped)
    }

    /// Peers of this network with at least one connection.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, NetError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::ConnectedPeers { reply }).await?;
        answer.await.map_err(|_| NetError::Stopped)
    }

    /// Keeps a connection to `peer` (a client's provider): whenever it is
    /// lost or a dial fails, the node dials again, with backoff. `false`
    /// stops that.
    pub async fn keep_connected(&self, peer: PeerId, keep: bool) -> Result<(), NetError> {
        self.send(Command::Keep { peer, keep }).await
    }

    /// What the node knows about its reachability and its wanted peers.
    pub async fn reachability(&self) -> Result<Reachability, NetError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Reachability { reply }).await?;
        answer.await.map_err(|_| NetError::Stopped)
    }

    /// Direct mode: hold reservations at `plan.relays` and keep direct
    /// connections with `plan.peers` (hole punching through a relay),
    /// replacing the previous plan. Links with peers no longer in the plan
    /// are closed. Changes are reported as [`NetEvent::DirectLink`];
    /// messages travel with [`RequestKind::Direct`].
    pub async fn set_direct(&self, plan: DirectPlan) -> Result<(), NetError> {
        self.send(Command::SetDirect { plan }).await
    }

    /// Every direct-mode link and where it stands.
    pub async fn direct_links(&self) -> Result<Vec<DirectLink>, NetError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::DirectLinks { reply }).await?;
        answer.await.map_err(|_| NetError::Stopped)
    }

    /// Stops the driver, closing every connection, and waits until it has
    /// stopped. Pending operations fail with [`NetError::Stopped`].
    /// Does nothing if it has already stopped.
    pub async fn shutdown(&self) {
        let (done, stopped) = oneshot::channel();
        if self.send(Command::Shutdown { done }).await.is_ok() {
            let _ = stopped.await;
        }
    }
}

/// Whether others can reach the node, and how its wanted peers are doing
/// (see [`NetHandle::reachability`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reachability {
    /// Addresses the node announces: confirmed and allowed by its
    /// [`AddressScope`].
    pub announced: Vec<Multiaddr>,
    /// The latest reachability tests of candidate addresses, newest last.
    pub probes: Vec<Probe>,
    /// Bootstrap peers and kept peers.
    pub peers: Vec<PeerReach>,
}

/// One reachability test: a peer tried to dial one of our candidate
/// addresses back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The candidate address.
    pub addr: Multiaddr,
    /// The peer that dialled it.
    pub server: PeerId,
    /// `None` if the dial-back arrived; otherwise why it did not.
    pub error: Option<String>,
}

/// The reply to an inbound request, once the application gave it (or not).
type PendingReply = BoxFuture<'static, (ResponseChannel<Vec<u8>>, Option<Vec<u8>>)>;

struct Driver {
    swarm: Swarm<NodeBehaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    counters: Arc<Counters>,
    names: ProtocolNames,
    kad_protocol: StreamProtocol,
    /// Whether this node takes part in the DHT ([`NetConfig::dht`]).
    dht: bool,
    /// The descriptor topic.
    topic: gossipsub::IdentTopic,
    max_gossip_size: usize,
    max_community_topics: usize,
    max_pending_requests: usize,
    max_pending_queries: usize,
    max_response_size: usize,
    request_timeout: Duration,
    listen_addrs: Vec<Multiaddr>,
    /// Peers with a connection whose identify showed this network.
    confirmed: HashSet<PeerId>,
    scope: AddressScope,
    min_peers: usize,
    redial: Redial,
    /// Confirmed addresses within the scope, as reported to the application.
    announced: Vec<Multiaddr>,
    probes: VecDeque<Probe>,
    last_kad_bootstrap: Instant,
    /// Whether the node tests its addresses ([`NetConfig::autonat`]).
    autonat: bool,
    /// Connected peers that test addresses for others.
    autonat_servers: HashSet<PeerId>,
    /// Connections this node dialled, per peer.
    dialed: HashMap<PeerId, usize>,
    next_reachability_dial: Instant,
    /// Direct-mode links with contacts' nodes.
    links: Links,
    /// Dials the redial schedule made, still under way: only their
    /// failures lengthen its backoff (Kademlia and others dial the same
    /// peers on their own).
    redial_dials: HashMap<libp2p::swarm::ConnectionId, PeerId>,
    pending_requests: HashMap<(RequestKind, OutboundRequestId), Reply<Vec<u8>>>,
    pending_gets: HashMap<kad::QueryId, Reply<Vec<u8>>>,
    pending_puts: HashMap<kad::QueryId, Reply<()>>,
    replies: FuturesUnordered<PendingReply>,
}

impl Driver {
    async fn run(mut self, external_addrs: Vec<Multiaddr>) {
        // The operator's addresses: confirmed without a test.
        for addr in external_addrs {
            self.swarm.add_external_address(addr.clone());
            self.on_address_confirmed(addr);
        }
        let mut stopped = None;
        let mut tick = tokio::time::interval(REDIAL_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.redial();
                    self.direct_tick();
                }
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { done }) => {
                        stopped = Some(done);
                        break;
                    }
                    Some(command) => self.on_command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some((channel, response)) = self.replies.next(), if !self.replies.is_empty() => {
                    if let Some(response) = response {
                        // Fails only if the request has timed out meanwhile.
                        let _ = self.swarm.behaviour_mut().fetch.send_response(channel, response);
                    }
                }
            }
        }
        tracing::debug!("network driver stopping");
        // Dropping the swarm closes every connection and listener; dropping
        // the pending replies fails the waiting callers with `Stopped`.
        drop(self);
        if let Some(done) = stopped {
            let _ = done.send(());
        }
    }

    /// Hands an event to the application, or drops and counts it.
    /// Queues an event for the application; `false` if the queue was full
    /// (the event is dropped and counted).
    fn emit(&self, event: NetEvent) -> bool {
        let Err(error) = self.events.try_send(event) else {
            return true;
        };
        let event = match error {
            mpsc::error::TrySendError::Full(event) | mpsc::error::TrySendError::Closed(event) => {
                event
            }
        };
        match event {
            NetEvent::PacketReceived { .. } => inc(&self.counters.dropped_event_queue_full),
            _ => inc(&self.counters.events_dropped),
        }
        false
    }

    fn pending_queries(&self) -> usize {
        self.pending_gets.len() + self.pending_puts.len()
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::SendPacket { peer, frame } => {
                self.swarm.behaviour_mut().packet.send(&peer, frame);
            }
            Command::Publish { bytes, reply } => {
                let topic = self.topic.clone();
                let result = match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
                    Ok(_) => {
                        inc(&self.counters.gossip_out);
                        Ok(())
                    }
                    Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                        Err(NetError::PublishFailed(
                            "no connected peer is subscribed to the descriptor topic yet; retry once peers are connected".into(),
                        ))
                    }
                    Err(error) => Err(NetError::PublishFailed(error.to_string())),
                };
                let _ = reply.send(result);
            }
            Command::Subscribe { topic, reply } => {
                let _ = reply.send(self.subscribe(topic));
            }
            Command::Unsubscribe { topic, reply } => {
                let topic = gossipsub::IdentTopic::new(topic);
                // `false`: was not subscribed; nothing to do.
                let _ = self.swarm.behaviour_mut().gossipsub.unsubscribe(&topic);
                let _ = reply.send(Ok(()));
            }
            Command::PublishTo {
                topic,
                bytes,
                reply,
            } => {
                let topic = gossipsub::IdentTopic::new(topic);
                let result = match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
                    Ok(_) => {
                        inc(&self.counters.community_out);
                        Ok(())
                    }
                    Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                        Err(NetError::PublishFailed(
                            "no connected peer is subscribed to this community topic yet; retry once peers have joined".into(),
                        ))
                    }
                    Err(error) => Err(NetError::PublishFailed(error.to_string())),
                };
                let _ = reply.send(result);
            }
            Command::Validate { id, verdict } => self.report(id, verdict),
            Command::TopicPeers { topic, reply } => {
                let topic = gossipsub::TopicHash::from_raw(topic);
                let peers = self
                    .swarm
                    .behaviour()
                    .gossipsub
                    .all_peers()
                    .filter(|(_, topics)| topics.contains(&&topic))
                    .map(|(peer, _)| *peer)
                    .collect();
                let _ = reply.send(peers);
            }
            Command::PutRecord { reply, .. } if !self.dht => {
                let _ = reply.send(Err(NetError::DhtDisabled));
            }
            Command::GetRecord { reply, .. } if !self.dht => {
                let _ = reply.send(Err(NetError::DhtDisabled));
            }
            Command::Bootstrap { reply } if !self.dht => {
                let _ = reply.send(Err(NetError::DhtDisabled));
            }
            Command::PutRecord { key, value, reply } => {
                if self.pending_queries() >= self.max_pending_queries {
                    let _ = reply.send(Err(NetError::TooManyPending {
                        what: "DHT queries",
                        max: self.max_pending_queries,
                    }));
                    return;
                }
                let record = kad::Record::new(key, value);
                match self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .put_record(record, kad::Quorum::One)
                {
                    Ok(id) => {
                        self.pending_puts.insert(id, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(NetError::PutRecordFailed(format!(
                            "the local store refused it: {error}"
                        ))));
                    }
                }
            }
            Command::GetRecord { key, reply } => {
                if self.pending_queries() >= self.max_pending_queries {
                    let _ = reply.send(Err(NetError::TooManyPending {
                        what: "DHT queries",
                        max: self.max_pending_queries,
                    }));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_record(kad::RecordKey::new(&key));
                self.pending_gets.insert(id, reply);
            }
            Command::Request {
                peer,
                kind: RequestKind::Direct,
                reply,
                ..
            } if !self.links.is_direct(&peer) => {
                let _ = reply.send(Err(NetError::NotDirect(peer)));
            }
            Command::Request {
                peer,
                kind,
                bytes,
                reply,
            } => {
                if self.pending_requests.len() >= self.max_pending_requests {
                    let _ = reply.send(Err(NetError::TooManyPending {
                        what: "requests",
                        max: self.max_pending_requests,
                    }));
                    return;
                }
                let behaviour = self.swarm.behaviour_mut();
                let id = match kind {
                    RequestKind::Fetch => behaviour.fetch.send_request(&peer, bytes),
                    RequestKind::Descriptors => behaviour.descriptors.send_request(&peer, bytes),
                    RequestKind::CommunitySync => {
                        behaviour.community_sync.send_request(&peer, bytes)
                    }
                    RequestKind::Direct => {
                        inc(&self.counters.direct_out);
                        behaviour.direct.send_request(&peer, bytes)
                    }
                };
                inc(&self.counters.requests_out);
                self.pending_requests.insert((kind, id), reply);
            }
            Command::AddPeerAddress { peer, addr } => {
                if self.dht {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                }
                self.swarm.add_peer_address(peer, addr);
            }
            Command::Dial { addr, reply } => {
                let result = self
                    .swarm
                    .dial(addr)
                    .map_err(|e| NetError::DialFailed(e.to_string()));
                let _ = reply.send(result);
            }
            Command::DialPeer { peer, reply } => {
                let result = self
                    .swarm
                    .dial(peer)
                    .map_err(|e| NetError::DialFailed(e.to_string()));
                let _ = reply.send(result);
            }
            Command::Bootstrap { reply } => {
                let result = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .bootstrap()
                    .map(|_| ())
                    .map_err(|_| {
                        NetError::DialFailed(
                            "no known peers to bootstrap from; configure bootstrap peers or call add_peer_address"
                                .into(),
                        )
                    });
                let _ = reply.send(result);
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.listen_addrs.clone());
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.confirmed.iter().copied().collect());
            }
            Command::Keep { peer, keep } => {
                self.redial.keep(now(), peer, keep);
                if keep && self.confirmed.contains(&peer) {
                    self.redial.connected(&peer);
                }
                // A new kept peer is dialled at once.
                self.redial();
            }
            Command::Reachability { reply } => {
                let _ = reply.send(Reachability {
                    announced: self.announced.clone(),
                    probes: self.probes.iter().cloned().collect(),
                    peers: self.redial.report(now()),
                });
            }
            Command::SetDirect { plan } => {
                let ignored = self.links.set_plan(now(), plan);
                if ignored > 0 {
                    tracing::warn!(ignored, "direct mode plan over its limits");
                }
                self.direct_tick();
            }
            Command::DirectLinks { reply } => {
                let _ = reply.send(self.links.report());
            }
            Command::Shutdown { .. } => {} // handled in `run`
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<NodeBehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::NewListenAddr { address, .. } => {
                if self.listen_addrs.len() < MAX_LISTEN_ADDRS
                    && !self.listen_addrs.contains(&address)
                {
                    self.listen_addrs.push(address.clone());
                }
                tracing::info!(%address, "listening");
                self.emit(NetEvent::ListeningOn {
                    addr: address.clone(),
                });
                // On a local network a listen address is as reachable as it
                // gets: confirmed at once.
                if self.scope == AddressScope::Local && announceable(self.scope, &address) {
                    self.swarm.add_external_address(address.clone());
                    self.on_address_confirmed(address);
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| *a != address);
                if self.scope == AddressScope::Local {
                    self.swarm.remove_external_address(&address);
                    self.on_address_expired(address);
                }
            }
            SwarmEvent::ExternalAddrConfirmed { address } => self.on_address_confirmed(address),
            SwarmEvent::ExternalAddrExpired { address } => self.on_address_expired(address),
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "listener error");
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } if self.links.on_listener_closed(now(), listener_id) => {
                let reason = match &reason {
                    Ok(()) => "closed".to_owned(),
                    Err(e) => error_chain(e),
                };
                tracing::info!(%reason, "relay reservation ended; trying again later");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                inc(&self.counters.connections);
                inc(&self.counters.connections_total);
                self.redial_dials.remove(&connection_id);
                if endpoint.is_dialer() {
                    *self.dialed.entry(peer_id).or_default() += 1;
                }
                let remote = endpoint.get_remote_address();
                if !self
                    .links
                    .on_established(peer_id, connection_id, remote, endpoint.is_relayed())
                {
                    // Through a relay, from a node this one has no direct
                    // link with: relays carry only direct mode's handshake.
                    inc(&self.counters.direct_refused);
                    self.swarm.close_connection(connection_id);
                } else if !endpoint.is_relayed() && self.links.wants(&peer_id) {
                    // Direct now: the relayed connection goes at once.
                    for relayed in self.links.relayed(&peer_id) {
                        self.swarm.close_connection(relayed);
                    }
                }
                self.report_links();
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                endpoint,
                connection_id,
                ..
            } => {
                dec(&self.counters.connections);
                self.links.on_closed(now(), &peer_id, connection_id);
                self.report_links();
                if endpoint.is_dialer()
                    && let Some(n) = self.dialed.get_mut(&peer_id)
                {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.dialed.remove(&peer_id);
                    }
                }
                if num_established == 0 {
                    self.autonat_servers.remove(&peer_id);
                }
                if num_established == 0 {
                    self.redial.disconnected(now(), &peer_id);
                    if self.confirmed.remove(&peer_id) {
                        tracing::debug!(peer = %peer_id, "peer disconnected");
                        self.emit(NetEvent::PeerDisconnected { peer: peer_id });
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                error,
                connection_id,
            } => {
                tracing::debug!(%error, "outgoing connection failed");
                let scheduled = self.redial_dials.remove(&connection_id).is_some();
                if let Some(peer) = peer_id
                    && !self.swarm.is_connected(&peer)
                {
                    let mut text = error.to_string();
                    text.truncate(300);
                    if self.links.wants(&peer) {
                        self.links.on_dial_failed(now(), &peer, text.clone());
                        self.report_links();
                    }
                    if scheduled {
                        self.redial.failed(now(), &peer, text, false);
                    }
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(%error, "incoming connection failed");
            }
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: NodeBehaviourEvent) {
        match event {
            NodeBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.on_identify(peer_id, info)
            }
            NodeBehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => self.on_gossip(
                TopicMessageId {
                    message: message_id,
                    from: propagation_source,
                },
                message,
            ),
            NodeBehaviourEvent::Fetch(event) => self.on_request(RequestKind::Fetch, event),
            NodeBehaviourEvent::Descriptors(event) => {
                self.on_request(RequestKind::Descriptors, event)
            }
            NodeBehaviourEvent::CommunitySync(event) => {
                self.on_request(RequestKind::CommunitySync, event)
            }
            NodeBehaviourEvent::Direct(event) => self.on_request(RequestKind::Direct, event),
            NodeBehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => {
                let result = match result {
                    Ok(_) => {
                        inc(&self.counters.hole_punches_succeeded);
                        Ok(())
                    }
                    Err(e) => {
                        inc(&self.counters.hole_punches_failed);
                        Err(error_chain(&e))
                    }
                };
                tracing::info!(peer = %remote_peer_id, ?result, "hole punching");
                for connection in self.links.on_hole_punch(now(), &remote_peer_id, result) {
                    self.swarm.close_connection(connection);
                }
                self.report_links();
            }
            NodeBehaviourEvent::RelayClient(event) => {
                tracing::debug!(?event, "relay client");
            }
            NodeBehaviourEvent::Kad(kad::Event::OutboundQueryProgressed { id, result, .. }) => {
                self.on_query(id, result)
            }
            NodeBehaviourEvent::Packet(packet::Event::Frame { peer, frame }) => {
                self.emit(NetEvent::PacketReceived { peer, frame });
            }
            NodeBehaviourEvent::AutonatClient(autonat::v2::client::Event {
                tested_addr,
                server,
                result,
                ..
            }) => {
                let error = result.err().map(|e| e.to_string());
                tracing::debug!(addr = %tested_addr, %server, ?error, "reachability test");
                if self.probes.len() >= MAX_PROBES {
                    self.probes.pop_front();
                }
                self.probes.push_back(Probe {
                    addr: tested_addr,
                    server,
                    error,
                });
            }
            _ => {}
        }
    }

    /// Others can reach the node at `address` (the swarm knows it as an
    /// external address): announced if the scope allows it.
    fn on_address_confirmed(&mut self, address: Multiaddr) {
        if !announceable(self.scope, &address) {
            // Reachable, but only from inside this machine or LAN: never
            // told to the network (identify would otherwise).
            tracing::debug!(%address, "reachable address not announced: not public");
            self.swarm.remove_external_address(&address);
        } else if !self.announced.contains(&address) && self.announced.len() < MAX_LISTEN_ADDRS {
            tracing::info!(%address, "reachable at");
            self.announced.push(address.clone());
            self.emit(NetEvent::AddressConfirmed { addr: address });
        }
    }

    fn on_address_expired(&mut self, address: Multiaddr) {
        if self.announced.contains(&address) {
            self.announced.retain(|a| *a != address);
            self.emit(NetEvent::AddressExpired { addr: address });
        }
    }

    /// Dials the wanted peers that are due: kept peers, and bootstrap peers
    /// while the node has too few peers.
    fn redial(&mut self) {
        let now = now();
        self.seek_reachability_test(now);
        for (peer, addr) in self.redial.due(now, self.confirmed.len(), self.min_peers) {
            if self.swarm.is_connected(&peer) {
                // Connected, identify still under way.
                continue;
            }
            let opts = DialOpts::peer_id(peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .addresses(addr.into_iter().collect())
                .extend_addresses_through_behaviour()
                .build();
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    self.redial_dials.insert(id, peer);
                }
                Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {
                    self.redial.not_dialled(now, &peer);
                }
                Err(error) => {
                    let mut text = error.to_string();
                    text.truncate(300);
                    self.redial.failed(now, &peer, text, false);
                }
            }
        }
    }

    /// A node waiting to learn whether others can reach it asks peers over
    /// connections it dialled itself (AutoNAT's request goes out on those
    /// only). The first node of a network has only connections others
    /// dialled: it opens one of its own to a peer that tests addresses.
    fn seek_reachability_test(&mut self, now: Instant) {
        if !self.autonat
            || self.scope != AddressScope::Public
            || !self.announced.is_empty()
            || now < self.next_reachability_dial
            || self
                .autonat_servers
                .iter()
                .any(|p| self.dialed.contains_key(p))
        {
            return;
        }
        let Some(peer) = self.autonat_servers.iter().next().copied() else {
            return;
        };
        self.next_reachability_dial = now + REACHABILITY_DIAL;
        tracing::debug!(%peer, "dialling a peer to have our addresses tested");
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::Always)
            .build();
        let _ = self.swarm.dial(opts);
    }

    /// Carries out what direct mode needs now: reservations, dials through
    /// relays, closing relayed connections a direct one replaced, keeping
    /// direct connections open.
    fn direct_tick(&mut self) {
        let now = now();
        let todo = self.links.take_todo(now);
        for listener in todo.unreserve {
            self.swarm.remove_listener(listener);
        }
        for addr in todo.reserve {
            let listener = match self.swarm.listen_on(addr.clone()) {
                Ok(id) => Some(id),
                Err(e) => {
                    tracing::info!(%addr, error = %error_chain(&e), "cannot reserve at relay");
                    None
                }
            };
            self.links.on_reserving(now, &addr, listener);
        }
        for (peer, addrs) in todo.dial {
            tracing::debug!(%peer, "dialling a direct-mode peer through its relay");
            let opts = DialOpts::peer_id(peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .addresses(addrs)
                .build();
            if let Err(error) = self.swarm.dial(opts) {
                let mut text = error_chain(&error);
                text.truncate(300);
                self.links.on_dial_failed(now, &peer, text);
            }
        }
        for connection in todo.close {
            self.swarm.close_connection(connection);
        }
        for peer in todo.keepalive {
            let _ = self
                .swarm
                .behaviour_mut()
                .direct
                .send_request(&peer, Vec::new());
        }
        for peer in todo.disconnect {
            // Direct mode with them ended; a node that is also a peer for
            // other reasons (a provider) is redialled by its own schedule.
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        self.report_links();
    }

    /// Reports links whose state changed.
    fn report_links(&mut self) {
        for (peer, state) in self.links.changes() {
            tracing::info!(%peer, state = state.as_str(), "direct link");
            self.emit(NetEvent::DirectLink { peer, state });
        }
    }

    /// Subscribes to a community topic, within the local cap.
    fn subscribe(&mut self, topic: String) -> Result<(), NetError> {
        let topic = gossipsub::IdentTopic::new(topic);
        let hash = topic.hash();
        let descriptor = self.topic.hash();
        let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
        if gossipsub.topics().any(|t| *t == hash) {
            return Ok(());
        }
        let community = gossipsub.topics().filter(|t| **t != descriptor).count();
        if community >= self.max_community_topics {
            return Err(NetError::TooManyTopics {
                max: self.max_community_topics,
            });
        }
        // The handle checked the topic; the filter checks it again.
        gossipsub
            .subscribe(&topic)
            .map(|_| ())
            .map_err(|_| NetError::InvalidTopic {
                reason: "the subscription filter refused it",
                prefix: self.names.community_topic_prefix.clone(),
                max_len: crate::MAX_TOPIC_LEN,
            })
    }

    /// A gossip message on a topic this node is subscribed to: the
    /// descriptor topic or a community topic.
    fn on_gossip(&mut self, id: TopicMessageId, message: gossipsub::Message) {
        let descriptor = message.topic == self.topic.hash();
        let community =
            !descriptor && is_community_topic(&self.names.community_topic_prefix, &message.topic);
        // Strict validation: every message is signed by its source.
        let source = match message.source {
            Some(source) if descriptor || community => source,
            _ => return self.report(id, Verdict::Reject),
        };
        // Gossipsub's own limit leaves room for framing and for long
        // subscription announcements; payloads are held to the exact limit.
        if message.data.len() > self.max_gossip_size {
            inc(&self.counters.gossip_too_large);
            return self.report(id, Verdict::Reject);
        }
        if descriptor {
            // Descriptors are relayed as they come (each node checks them).
            self.report(id, Verdict::Accept);
            inc(&self.counters.gossip_in);
            self.emit(NetEvent::GossipReceived {
                source,
                bytes: message.data,
            });
        } else {
            inc(&self.counters.community_in);
            let event = NetEvent::TopicMessage {
                topic: message.topic.into_string(),
                source,
                bytes: message.data,
                id: id.clone(),
            };
            if !self.emit(event) {
                // Nobody will judge it: do not relay it either.
                self.report(id, Verdict::Ignore);
            }
        }
    }

    fn report(&mut self, id: TopicMessageId, verdict: Verdict) {
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id.message, &id.from, verdict.acceptance());
    }

    fn on_identify(&mut self, peer: PeerId, info: identify::Info) {
        if info.protocol_version != self.names.identify_version {
            inc(&self.counters.foreign_peers_rejected);
            tracing::debug!(
                %peer,
                version = %info.protocol_version,
                "peer belongs to another network, disconnecting"
            );
            self.swarm.behaviour_mut().kad.remove_peer(&peer);
            let _ = self.swarm.disconnect_peer_id(peer);
            let reason = format!(
                "belongs to another network: it speaks {:?}, this network is {:?}",
                info.protocol_version, self.names.identify_version
            );
            self.redial.failed(now(), &peer, reason, true);
            return;
        }
        if self.dht && info.protocols.contains(&self.kad_protocol) {
            // Only addresses others may dial: on a public network, never a
            // peer's loopback or private addresses.
            let scope = self.scope;
            for addr in info
                .listen_addrs
                .into_iter()
                .filter(|a| announceable(scope, a))
                .take(MAX_ADDRS_PER_PEER)
            {
                self.swarm.behaviour_mut().kad.add_address(&peer, addr);
            }
        }
        if info
            .protocols
            .iter()
            .any(|p| p.as_ref() == AUTONAT_DIAL_REQUEST)
            && self.autonat_servers.len() < MAX_AUTONAT_SERVERS
        {
            self.autonat_servers.insert(peer);
        }
        if self.swarm.is_connected(&peer) && self.confirmed.insert(peer) {
            tracing::debug!(%peer, "peer connected");
            self.redial.connected(&peer);
            if self.dht
                && self.redial.is_bootstrap(&peer)
                && now().saturating_duration_since(self.last_kad_bootstrap) >= KAD_REBOOTSTRAP
            {
                // Back after an outage: fill the routing table again.
                self.last_kad_bootstrap = now();
                let _ = self.swarm.behaviour_mut().kad.bootstrap();
            }
            self.emit(NetEvent::PeerConnected { peer });
        }
    }

    fn on_request(&mut self, kind: RequestKind, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        match event {
            request_response::Event::Message {
                peer,
                connection_id,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
            } => {
                if kind == RequestKind::Direct {
                    if !self.links.accepts(&peer, connection_id) {
                        // Dropping the channel refuses the request.
                        inc(&self.counters.direct_refused);
                        return;
                    }
                    if request.is_empty() {
                        // Keeps the connection open; nothing to hand on.
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .direct
                            .send_response(channel, Vec::new());
                        return;
                    }
                    inc(&self.counters.direct_in);
                }
                inc(&self.counters.requests_in);
                if self.replies.len() >= self.max_pending_requests {
                    // Dropping the channel refuses the request.
                    inc(&self.counters.events_dropped);
                    return;
                }
                let (sender, answer) = oneshot::channel();
                let timeout = self.request_timeout;
                self.replies.push(Box::pin(async move {
                    let response = tokio::time::timeout(timeout, answer)
                        .await
                        .ok()
                        .and_then(Result::ok);
                    (channel, response)
                }));
                self.emit(NetEvent::RequestReceived {
                    kind,
                    peer,
                    bytes: request,
                    reply: ReplyHandle {
                        sender,
                        max_response_size: self.max_response_size,
                    },
                });
            }
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.pending_requests.remove(&(kind, request_id)) {
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                inc(&self.counters.requests_failed);
                if let Some(reply) = self.pending_requests.remove(&(kind, request_id)) {
                    let _ = reply.send(Err(NetError::RequestFailed(error.to_string())));
                }
            }
            request_response::Event::InboundFailure { error, .. } => {
                tracing::debug!(%error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_query(&mut self, id: kad::QueryId, result: kad::QueryResult) {
        match result {
            kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(found))) => {
                if let Some(reply) = self.pending_gets.remove(&id) {
                    let _ = reply.send(Ok(found.record.value));
                    if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        query.finish();
                    }
                }
            }
            kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FinishedWithNoAdditionalRecord {
                ..
            })) => {
                if let Some(reply) = self.pending_gets.remove(&id) {
                    let _ = reply.send(Err(NetError::RecordNotFound));
                }
            }
            kad::QueryResult::GetRecord(Err(error)) => {
                if let Some(reply) = self.pending_gets.remove(&id) {
                    let _ = reply.send(Err(match error {
                        kad::GetRecordError::Timeout { .. } => {
                            NetError::Timeout { what: "get_record" }
                        }
                        _ => NetError::RecordNotFound,
                    }));
                }
            }
            kad::QueryResult::PutRecord(result) => {
                if let Some(reply) = self.pending_puts.remove(&id) {
                    let _ = reply.send(
                        result
                            .map(|_| ())
                            .map_err(|e| NetError::PutRecordFailed(e.to_string())),
                    );
                }
            }
            kad::QueryResult::Bootstrap(result) => {
                tracing::debug!(ok = result.is_ok(), "DHT bootstrap step");
            }
            _ => {}
        }
    }
}
