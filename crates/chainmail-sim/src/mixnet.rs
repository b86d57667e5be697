//! A mixnet of real node cores for clients and agents to run on.

use std::collections::HashMap;
use std::sync::Arc;

use chainmail_mixnet::{
    Answer, Client, DescriptorSet, EpochDirectory, Errand, MemoryMailboxes, Node, NodeConfig,
    NodeEvent, Params, Roles, network_hash,
};
use chainmail_packet::{Epoch, MixSecretKey, NodeId};
use ed25519_dalek::SigningKey;
use rand::RngExt;
use rand::rngs::StdRng;

use crate::{Delivery, Network, Time};

/// Who is on a simulated mixnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// A node core (provider or mix), by index.
    Node(usize),
    /// A client (or the agent hosting one), by index.
    Client(usize),
}

/// What travels on a simulated mixnet; `X` is the world's own.
#[derive(Clone, Debug)]
pub enum Wire<X> {
    /// A packet frame between nodes, or from a client to its provider.
    Frame(Vec<u8>),
    /// A mailbox fetch from a client to one of its providers.
    Fetch {
        /// Matches the answer to the client.
        request: u64,
        /// The signed request.
        bytes: Vec<u8>,
    },
    /// A provider's answer to a fetch.
    FetchResponse {
        /// The provider.
        provider: NodeId,
        /// The encoded answer.
        bytes: Vec<u8>,
    },
    /// Something of the world's own.
    App(X),
}

/// The shape of a simulated mixnet.
#[derive(Clone, Debug)]
pub struct MixnetConfig {
    /// Network parameters (preset, epochs, layer width).
    pub params: Params,
    /// The network's name (its hash binds descriptors).
    pub name: String,
    /// Nodes with the provider role (they come first).
    pub providers: usize,
    /// Nodes with the mix role.
    pub mixes: usize,
    /// Replay filter size per key, per node.
    pub replay_capacity: u64,
    /// Delay queue size per node (a real node's default is 200,000).
    pub max_queued: usize,
}

/// Node cores, their directory and a DHT for errands.
pub struct Mixnet {
    /// Network parameters.
    pub params: Params,
    /// Every node's descriptor.
    pub descriptors: DescriptorSet,
    /// The nodes: providers first, then mixes.
    pub nodes: Vec<Node<MemoryMailboxes>>,
    /// Node index by id.
    pub node_index: HashMap<NodeId, usize>,
    /// The DHT exits carry errands out against.
    pub dht: HashMap<Vec<u8>, Vec<u8>>,
    /// Errands carried out: (exit node, errand).
    pub errands_done: Vec<(usize, Errand)>,
    /// Frames sent by nodes and clients.
    pub frames: u64,
    /// Frames of another size than a packet (there must be none).
    pub odd_frames: u64,
    pending_fetches: HashMap<u64, (usize, NodeId)>,
    next_request: u64,
    rotated: bool,
    new_directories: bool,
    /// Every node's mix keys, as its driver would store them: what an
    /// adversary that corrupts a node gets, and what tells a simulation
    /// where each packet really goes.
    keys: HashMap<(usize, Epoch), MixSecretKey>,
    /// Frames nodes sent since the last [`Mixnet::take_tapped`], when
    /// tapping is on: what an observer of every link sees leave each node.
    tapped: Option<Vec<(usize, Vec<u8>)>>,
}

impl Mixnet {
    /// Nodes with identities drawn from `rng`, their keys generated at
    /// `start`, and the directory of the current and next epoch.
    pub fn new(config: MixnetConfig, rng: &mut StdRng, start: Time) -> Self {
        let network = network_hash(&config.name);
        let mut nodes = Vec::new();
        for i in 0..config.providers + config.mixes {
            let mut node_config = NodeConfig::new(config.params.clone(), network);
            node_config.replay_capacity = config.replay_capacity;
            node_config.max_queued = config.max_queued;
            node_config.roles = Roles {
                mix: i >= config.providers,
                provider: i < config.providers,
            };
            let identity = SigningKey::from_bytes(&rng.random());
            let mut node = Node::new(node_config, identity, MemoryMailboxes::new(), rng.random());
            node.handle_timeout(start);
            nodes.push(node);
        }
        let node_index = nodes.iter().enumerate().map(|(i, n)| (n.id(), i)).collect();
        let mut mixnet = Mixnet {
            params: config.params,
            descriptors: DescriptorSet::new(network),
            nodes,
            node_index,
            dht: HashMap::new(),
            errands_done: Vec::new(),
            frames: 0,
            odd_frames: 0,
            pending_fetches: HashMap::new(),
            next_request: 0,
            rotated: false,
            new_directories: false,
            keys: HashMap::new(),
            tapped: None,
        };
        mixnet.republish(start);
        mixnet
    }

    /// The node id of node `i`.
    pub fn id(&self, i: usize) -> NodeId {
        self.nodes[i].id()
    }

    /// The directories of the epoch at `now` and the next one.
    pub fn directories(&self, now: Time) -> [Arc<EpochDirectory>; 2] {
        let epoch = self.params.epoch_at(now);
        [epoch, Epoch(epoch.0 + 1)]
            .map(|e| Arc::new(self.descriptors.epoch_directory(e, &self.params, now)))
    }

    /// Every node publishes its descriptor again; nodes take the new
    /// directories.
    fn republish(&mut self, now: Time) {
        for (i, node) in self.nodes.iter().enumerate() {
            if let Ok(bytes) = node.signed_descriptor(now, vec![address_of(i)], "sim") {
                let _ = self.descriptors.insert(&bytes, now);
            }
        }
        for d in self.directories(now) {
            for n in &mut self.nodes {
                n.set_directory(d.clone());
            }
        }
        self.rotated = false;
        self.new_directories = true;
    }

    /// Node `i`'s mix key for `epoch` (while the node holds it).
    pub fn mix_key(&self, i: usize, epoch: Epoch) -> Option<&MixSecretKey> {
        self.keys.get(&(i, epoch))
    }

    /// Records every frame nodes send from now on, for
    /// [`Mixnet::take_tapped`].
    pub fn tap(&mut self) {
        self.tapped.get_or_insert_with(Vec::new);
    }

    /// The frames nodes sent since the last call, in the order they left:
    /// (sending node, bytes).
    pub fn take_tapped(&mut self) -> Vec<(usize, Vec<u8>)> {
        self.tapped.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Whether the directories changed since the last call (give clients
    /// [`Mixnet::directories`] then).
    pub fn take_new_directories(&mut self) -> bool {
        std::mem::take(&mut self.new_directories)
    }

    /// Drains every node: frames to other nodes (over lossy links that may
    /// duplicate them), fetch answers to clients (reliably), errands
    /// carried out against the DHT at once, descriptors published again
    /// when keys rotated.
    pub fn pump_nodes<X: Clone>(&mut self, now: Time, net: &mut Network<Endpoint, Wire<X>>) {
        for i in 0..self.nodes.len() {
            // Replay tags would be made durable here by a real driver.
            self.nodes[i].drain_replay_tags();
            let mut errands = Vec::new();
            while let Some(event) = self.nodes[i].poll_event() {
                match event {
                    NodeEvent::KeysRotated(rotation) => {
                        self.rotated = true;
                        for (epoch, secret) in rotation.generated {
                            self.keys
                                .insert((i, epoch), MixSecretKey::from_bytes(epoch, *secret));
                        }
                        for epoch in rotation.retired {
                            self.keys.remove(&(i, epoch));
                        }
                    }
                    NodeEvent::Errand { token, errand } => errands.push((token, errand)),
                    NodeEvent::LoopReturned(_) => {}
                }
            }
            for (token, errand) in errands {
                let answer = match &errand {
                    Errand::Get { key } => match self.dht.get(key) {
                        Some(v) => Answer::Found(v.clone()),
                        None => Answer::NotFound,
                    },
                    Errand::Put { key, value } => {
                        self.dht.insert(key.clone(), value.clone());
                        Answer::Stored
                    }
                };
                self.errands_done.push((i, errand));
                self.nodes[i].handle_errand_answer(now, token, answer);
            }
            while let Some(t) = self.nodes[i].poll_transmit() {
                let Some(&to) = self.node_index.get(&t.to) else {
                    continue;
                };
                self.frames += 1;
                let bytes = t.packet.as_bytes().to_vec();
                if let Some(tapped) = &mut self.tapped {
                    tapped.push((i, bytes.clone()));
                }
                net.send(
                    now,
                    Endpoint::Node(i),
                    Endpoint::Node(to),
                    Wire::Frame(bytes),
                );
            }
            while let Some((request, bytes)) = self.nodes[i].poll_fetch_response() {
                if let Some((client, provider)) = self.pending_fetches.remove(&request) {
                    net.send_reliable(
                        now,
                        Endpoint::Node(i),
                        Endpoint::Client(client),
                        Wire::FetchResponse { provider, bytes },
                    );
                }
            }
        }
        if self.rotated {
            self.republish(now);
        }
    }

    /// Drains client `c`'s packets (lossy links, never duplicated: a
    /// client's link is its own connection) and fetches (reliable).
    ///
    /// # Panics
    ///
    /// If the client sends anything to a node that is not one of its own
    /// providers: a client speaks to its providers only.
    pub fn pump_client<X: Clone>(
        &mut self,
        now: Time,
        net: &mut Network<Endpoint, Wire<X>>,
        c: usize,
        client: &mut Client,
    ) {
        let mut own: Option<Vec<NodeId>> = None;
        let mut own_providers = |client: &Client| -> Vec<NodeId> {
            own.get_or_insert_with(|| client.address().mailboxes.iter().map(|(p, _)| *p).collect())
                .clone()
        };
        while let Some((first, packet)) = client.poll_transmit() {
            let own = own_providers(client);
            assert!(
                own.contains(&first),
                "client {c} sent a packet to a node that is not one of its providers"
            );
            self.client_transmit(now, net, c, first, packet.as_bytes());
        }
        while let Some((provider, bytes)) = client.poll_fetch() {
            assert!(
                own_providers(client).contains(&provider),
                "client {c} fetched elsewhere"
            );
            self.client_fetch(now, net, c, provider, bytes);
        }
    }

    /// Client `c` sends a packet to its provider `first` (a lossy link,
    /// never duplicated: a client's link is its own connection).
    pub fn client_transmit<X: Clone>(
        &mut self,
        now: Time,
        net: &mut Network<Endpoint, Wire<X>>,
        c: usize,
        first: NodeId,
        packet: &[u8],
    ) {
        let to = Endpoint::Node(self.node_index[&first]);
        self.frames += 1;
        net.send_lossy(now, Endpoint::Client(c), to, Wire::Frame(packet.to_vec()));
    }

    /// Client `c` fetches its mail from `provider` (reliably); the answer
    /// comes back as [`Wire::FetchResponse`].
    pub fn client_fetch<X: Clone>(
        &mut self,
        now: Time,
        net: &mut Network<Endpoint, Wire<X>>,
        c: usize,
        provider: NodeId,
        bytes: Vec<u8>,
    ) {
        let request = self.next_request;
        self.next_request += 1;
        self.pending_fetches.insert(request, (c, provider));
        let to = Endpoint::Node(self.node_index[&provider]);
        net.send_reliable(now, Endpoint::Client(c), to, Wire::Fetch { request, bytes });
    }

    /// Hands a delivery to its node; what is for a client (a fetch
    /// answer, the world's own messages) comes back.
    pub fn deliver<X>(
        &mut self,
        now: Time,
        delivery: Delivery<Endpoint, Wire<X>>,
    ) -> Option<Delivery<Endpoint, Wire<X>>> {
        match (delivery.to, &delivery.msg) {
            (Endpoint::Node(i), Wire::Frame(bytes)) => {
                if bytes.len() != chainmail_packet::PACKET_SIZE {
                    self.odd_frames += 1;
                }
                // Fair shares of the delay queue per neighbour, as a real
                // node's driver gives them.
                let from = match delivery.from {
                    Endpoint::Node(j) => [0, j as u8, (j >> 8) as u8, (j >> 16) as u8],
                    Endpoint::Client(j) => [1, j as u8, (j >> 8) as u8, (j >> 16) as u8],
                };
                self.nodes[i].handle_packet_from(now, &from, bytes);
                None
            }
            (Endpoint::Node(i), Wire::Fetch { request, bytes }) => {
                self.nodes[i].handle_fetch(now, *request, bytes);
                None
            }
            _ => Some(delivery),
        }
    }

    /// When a node next needs time.
    pub fn next_timeout(&self) -> Option<Time> {
        self.nodes.iter().filter_map(|n| n.poll_timeout()).min()
    }

    /// Gives time to the nodes that need it.
    pub fn fire(&mut self, now: Time) {
        for n in &mut self.nodes {
            if n.poll_timeout().is_some_and(|t| t <= now) {
                n.handle_timeout(now);
            }
        }
    }
}

/// The listen address a simulated node publishes.
fn address_of(node: usize) -> String {
    // Never dialed: the simulated network routes by index.
    format!("/dns4/sim-node-{node}/tcp/4001")
}
