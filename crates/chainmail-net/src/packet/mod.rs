//! The mix packet stream protocol: behaviour (this file) and connection
//! handler (`handler.rs`); the frame format is in `protocol.rs`.
//!
//! The behaviour keeps, per connected peer, the shared inbound limiter and
//! the bounded outbound queue of each connection. It never dials: frames
//! for a peer without a connection are dropped and counted.

mod handler;

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use libp2p::{
    Multiaddr, PeerId, StreamProtocol,
    core::{Endpoint, transport::PortUse},
    swarm::{
        ConnectionClosed, ConnectionDenied, ConnectionId, DialFailure, FromSwarm, ListenFailure,
        NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
    },
};
use tokio::sync::mpsc;

use self::handler::{Handler, HandlerEvent};
use crate::{
    Frame,
    config::RateLimit,
    limiter::{PeerInbound, SharedInbound, SourceBucket, now},
    metrics::{Counters, inc},
};

/// Frames waiting in the behaviour to be handed to the swarm. The swarm
/// polls the behaviour after every handler event, so this stays tiny; the
/// cap only guards against surprises.
const MAX_PENDING_EVENTS: usize = 256;

/// Settings of the packet protocol.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) protocol: StreamProtocol,
    pub(crate) rate: RateLimit,
    pub(crate) flood_tolerance: u32,
    pub(crate) max_inbound_streams: usize,
    pub(crate) outbound_queue: usize,
    pub(crate) negotiation_timeout: Duration,
    /// Frames per second from one source over all its peers.
    pub(crate) source_rate: RateLimit,
    /// Whether loopback addresses count as sources.
    pub(crate) limit_loopback: bool,
}

/// Events of the packet behaviour.
#[derive(Debug)]
pub(crate) enum Event {
    /// A frame from `peer`, within its rate limit.
    Frame { peer: PeerId, frame: Box<Frame> },
}

struct Connection {
    id: ConnectionId,
    queue: mpsc::Sender<Box<Frame>>,
}

struct Peer {
    inbound: SharedInbound,
    /// Oldest first; frames go to the oldest connection still open.
    connections: Vec<Connection>,
}

/// The packet stream protocol's network behaviour.
pub(crate) struct Behaviour {
    config: Config,
    counters: Arc<Counters>,
    peers: HashMap<PeerId, Peer>,
    /// The packet budget of each source, shared by its peers (dropped
    /// when no peer holds it).
    sources: HashMap<IpAddr, std::sync::Weak<SourceBucket>>,
    events: VecDeque<Event>,
}

impl Behaviour {
    pub(crate) fn new(config: Config, counters: Arc<Counters>) -> Self {
        Self {
            config,
            counters,
            peers: HashMap::new(),
            sources: HashMap::new(),
            events: VecDeque::new(),
        }
    }

    /// The budget of the source `remote` counts against, if any.
    fn source_bucket(&mut self, remote: &Multiaddr) -> Option<Arc<SourceBucket>> {
        let source = crate::sources::source_of(remote, self.config.limit_loopback)?;
        if let Some(bucket) = self.sources.get(&source).and_then(std::sync::Weak::upgrade) {
            return Some(bucket);
        }
        self.sources.retain(|_, b| b.strong_count() > 0);
        let bucket = Arc::new(SourceBucket::new(self.config.source_rate, now()));
        self.sources.insert(source, Arc::downgrade(&bucket));
        Some(bucket)
    }

    /// Queues `frame` for `peer`. Never blocks: when the peer has no
    /// connection or its queue is full, the frame is dropped and counted.
    pub(crate) fn send(&mut self, peer: &PeerId, frame: Box<Frame>) {
        let Some(state) = self.peers.get(peer) else {
            inc(&self.counters.dropped_no_connection);
            return;
        };
        let mut frame = frame;
        for connection in &state.connections {
            match connection.queue.try_send(frame) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    inc(&self.counters.dropped_queue_full);
                    return;
                }
                // That connection's handler is gone; try the next one.
                Err(mpsc::error::TrySendError::Closed(back)) => frame = back,
            }
        }
        inc(&self.counters.dropped_no_connection);
    }

    fn new_handler(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        remote: &Multiaddr,
    ) -> Handler {
        let (sender, receiver) = mpsc::channel(self.config.outbound_queue);
        let source = if self.peers.contains_key(&peer) {
            None
        } else {
            self.source_bucket(remote)
        };
        let config = &self.config;
        let state = self.peers.entry(peer).or_insert_with(|| Peer {
            inbound: SharedInbound::new(
                PeerInbound::new(
                    config.rate,
                    config.flood_tolerance,
                    config.max_inbound_streams,
                    now(),
                ),
                source,
            ),
            connections: Vec::new(),
        });
        state.connections.push(Connection {
            id: connection,
            queue: sender,
        });
        Handler::new(
            self.config.protocol.clone(),
            self.config.negotiation_timeout,
            self.counters.clone(),
            state.inbound.clone(),
            receiver,
        )
    }

    fn remove_connection(&mut self, peer: Option<PeerId>, connection: ConnectionId) {
        let peers: Vec<PeerId> = match peer {
            Some(peer) => vec![peer],
            None => self.peers.keys().copied().collect(),
        };
        for peer in peers {
            if let Some(state) = self.peers.get_mut(&peer) {
                state.connections.retain(|c| c.id != connection);
                if state.connections.is_empty() {
                    self.peers.remove(&peer);
                }
            }
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.new_handler(peer, connection, remote))
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.new_handler(peer, connection, addr))
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                ..
            }) => self.remove_connection(Some(peer_id), connection_id),
            // A handler was made but another behaviour refused the
            // connection afterwards.
            FromSwarm::DialFailure(DialFailure {
                peer_id,
                connection_id,
                ..
            }) => self.remove_connection(peer_id, connection_id),
            FromSwarm::ListenFailure(ListenFailure {
                peer_id,
                connection_id,
                ..
            }) => self.remove_connection(peer_id, connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            HandlerEvent::Frame(frame) => {
                if self.events.len() >= MAX_PENDING_EVENTS {
                    inc(&self.counters.dropped_event_queue_full);
                    return;
                }
                self.events.push_back(Event::Frame { peer, frame });
            }
        }
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        match self.events.pop_front() {
            Some(event) => Poll::Ready(ToSwarm::GenerateEvent(event)),
            None => Poll::Pending,
        }
    }
}
