//! The node runtime: drives the mixnet cores (node and hosted client)
//! against libp2p (`chainmail-net`) and redb (`chainmail-store`).
//!
//! One task owns all state. Each turn it takes a batch of inputs (network
//! events, fetch results, API calls, timers), feeds them to the cores, then
//! stores what must be durable — replay tags, received messages — and only
//! then sends what the cores produced.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chainmail_client::hex::hex;
use chainmail_client::{Agent, AgentConfig, Input, Output, Storage, SwarmAction};
use chainmail_mixnet::{
    Answer, DescriptorSet, EpochDirectory, Errand, MailboxStore, MixnetError, Node, NodeConfig,
    NodeEvent, Params, Roles, Time, network_hash,
};
use chainmail_net::{
    Multiaddr, Net, NetConfig, NetEvent, NetHandle, PeerId, ReplyHandle, RequestKind,
    peer_id_from_node_key,
};
use chainmail_packet::{Epoch, MailboxId, MixSecretKey, NodeId, ReplayTag};
use chainmail_store::{AppendOutcome, Store};
use ed25519_dalek::SigningKey;
use rand::RngExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::account::VaultStorage;
use crate::network::NetworkFile;
use crate::tasks::Tasks;

pub use crate::VERSION;
pub use crate::api::{ApiCall, ApiInfo, Status};
pub use crate::files::write_private;

const MAX_BATCH: usize = 512;

pub use crate::clock::now;

/// How a node is started.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// The network file.
    pub network: NetworkFile,
    /// Where the node keeps its state.
    pub data_dir: PathBuf,
    /// Addresses to listen on (TCP and QUIC multiaddresses; port 0: any).
    pub listen: Vec<Multiaddr>,
    /// Addresses the operator knows others reach this node at: announced
    /// without a reachability test.
    pub external_addrs: Vec<Multiaddr>,
    /// Mix and/or provider; neither for a client-only node.
    pub roles: Roles,
    /// Whether the node hosts its user's agent (the account's messenger,
    /// mixnet client and communities).
    pub client: bool,
    /// Providers the client should use (node ids); empty: choose.
    pub providers: Vec<NodeId>,
    /// Port of the local API on 127.0.0.1 (0: any).
    pub api_port: u16,
    /// How often the node republishes its descriptor.
    pub descriptor_refresh: Duration,
    /// Most packets per second accepted from one peer.
    pub peer_packet_rate: u32,
    /// How to unlock the account's vault.
    pub unlock: crate::account::Unlock,
}

/// Mailboxes on redb, for the node core.
struct RedbMailboxes {
    store: Arc<Store>,
    total_bytes: u64,
}

impl MailboxStore for RedbMailboxes {
    fn append(
        &mut self,
        mailbox: &MailboxId,
        item: &[u8],
        now: Time,
        quota: chainmail_mixnet::mailbox::Quota,
    ) -> Result<chainmail_mixnet::mailbox::Appended, MixnetError> {
        let quota = chainmail_store::Quota {
            max_items: quota.max_items,
            max_bytes: quota.max_bytes,
            max_total_bytes: self.total_bytes,
        };
        let out = self
            .store
            .mailbox_append(&[(mailbox.0, item)], now.0, &quota)
            .map_err(store_err)?;
        Ok(match out.first() {
            Some(AppendOutcome::Stored { seq }) => {
                chainmail_mixnet::mailbox::Appended::Stored(*seq)
            }
            _ => chainmail_mixnet::mailbox::Appended::OverQuota,
        })
    }

    fn read(
        &mut self,
        mailbox: &MailboxId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, MixnetError> {
        let items = self
            .store
            .mailbox_read(&mailbox.0, after, limit)
            .map_err(store_err)?;
        Ok(items.into_iter().map(|i| (i.seq, i.bytes)).collect())
    }

    fn delete_through(&mut self, mailbox: &MailboxId, through: u64) -> Result<(), MixnetError> {
        self.store
            .mailbox_delete_through(&mailbox.0, through)
            .map(|_| ())
            .map_err(store_err)
    }

    fn expire(&mut self, now: Time, ttl: Duration) -> Result<usize, MixnetError> {
        self.store
            .mailbox_expire(now.0, ttl.as_millis() as u64)
            .map_err(store_err)
    }
}

fn store_err(e: chainmail_store::StoreError) -> MixnetError {
    MixnetError::Store(e.to_string())
}

enum Internal {
    Fetched {
        provider: NodeId,
        result: Result<Vec<u8>, String>,
    },
    Descriptors(Vec<Vec<u8>>),
    /// A stamp was minted (or minting it failed).
    Stamp {
        job: u64,
        stamp: Option<chainmail_session::Stamp>,
    },
    /// A peer's answer to a community sync request.
    CommunitySync {
        community: chainmail_chain::Hash,
        bytes: Vec<u8>,
    },
    /// The DHT's answer to an errand this node carries out for a client.
    ErrandDone {
        token: u64,
        answer: Answer,
    },
    /// The network driver's report on reachability and wanted peers.
    Reachability(chainmail_net::Reachability),
    /// A direct-mode send ended.
    DirectSent {
        id: u64,
        delivered: bool,
    },
}

struct Runtime {
    opts: NodeOptions,
    params: Params,
    store: Arc<Store>,
    net: NetHandle,
    id: NodeId,
    node: Option<Node<RedbMailboxes>>,
    /// The hosted agent and its storage (a handle on the same vault), when
    /// the node hosts an account.
    agent: Option<(Agent<VaultStorage>, VaultStorage)>,
    descriptors: DescriptorSet,
    directory_epoch: Option<Epoch>,
    current_directory: Option<Arc<EpochDirectory>>,
    known_addresses: HashMap<NodeId, Vec<String>>,
    /// Nodes the network driver keeps connections to (and redials).
    kept: std::collections::HashSet<NodeId>,
    listen_addrs: Vec<Multiaddr>,
    /// Addresses others can reach this node at, within the network's
    /// scope: what its descriptor carries.
    announced: Vec<Multiaddr>,
    /// The driver's latest report on reachability and wanted peers.
    reach: chainmail_net::Reachability,
    /// Direct mode between the hosted agent and its contacts.
    direct: crate::direct::DirectHost,
    next_reach_poll: Time,
    peers: usize,
    /// Every peer this node was ever connected to (bounded), so that tests
    /// and users can check who learned this node's IP address.
    peers_seen: std::collections::BTreeSet<String>,
    replies: HashMap<u64, ReplyHandle>,
    next_request: u64,
    internal_tx: mpsc::Sender<Internal>,
    next_publish: Time,
    /// Background work (dials, requests, DHT operations), bounded.
    tasks: Tasks,
    /// Stamps to mint, waiting for a minting thread.
    stamps: VecDeque<StampJob>,
    /// Stamps being minted now (at most `MAX_MINTING`).
    minting: usize,
}

/// A stamp the agent asked for.
struct StampJob {
    job: u64,
    challenge: [u8; 32],
    day: u32,
    difficulty: u8,
}

/// Most background tasks at once.
const MAX_TASKS: usize = 4096;
/// Most stamps minted at once (each takes a core for seconds).
const MAX_MINTING: usize = 2;

/// Runs a node until `shutdown` resolves.
pub async fn run_node(
    opts: NodeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let params = opts
        .network
        .params()
        .map_err(|e| anyhow::anyhow!("network file: {e}"))?;
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create data directory {}", opts.data_dir.display()))?;
    let store = Arc::new(
        Store::open(&opts.data_dir.join("node.redb")).context("opening the node's database")?,
    );
    let identity = match store.node_identity()? {
        Some(secret) => SigningKey::from_bytes(&secret),
        None => {
            let secret: [u8; 32] = rand::rng().random();
            store.set_node_identity(&secret)?;
            SigningKey::from_bytes(&secret)
        }
    };
    let id = NodeId(identity.verifying_key().to_bytes());

    let mut config = NetConfig::new(opts.network.network.id.clone(), identity.to_bytes());
    config.listen_addrs = opts.listen.clone();
    config.scope = opts.network.network.scope();
    config.external_addrs = opts.external_addrs.clone();
    config.bootstrap = opts
        .network
        .network
        .bootstrap
        .iter()
        .map(|a| a.parse::<Multiaddr>())
        .collect::<Result<Vec<_>, _>>()
        .context("bootstrap address in the network file")?
        .into_iter()
        // Do not dial ourselves.
        .filter(|a| {
            !a.to_string().ends_with(
                &peer_id_from_node_key(&id.0)
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    config.kad_server = opts.roles.mix || opts.roles.provider;
    // A would-be mix or provider learns which of its addresses others can
    // reach (and helps others learn theirs); a client-only node announces
    // nothing and wants only its providers once it has the directory.
    config.autonat = config.kad_server;
    config.min_peers = if config.kad_server { 4 } else { 1 };
    // A client-only node takes no part in the DHT: its providers carry its
    // lookups and publications out (errands through the mixnet), so it
    // never connects to a DHT node it did not choose.
    config.dht = config.kad_server;
    // Mixes and providers relay the hole-punching handshake of their
    // clients' direct mode (only once others can reach them).
    config.relay_server = config.kad_server;
    config.timeouts.request = Duration::from_secs(40);
    config.limits.packet_rate = chainmail_net::RateLimit {
        frames_per_second: opts.peer_packet_rate,
        burst: opts.peer_packet_rate,
    };
    config.limits.flood_tolerance = opts.peer_packet_rate.saturating_mul(2);
    let (net, mut events) = Net::spawn(config).context("starting the network")?;

    let node = if opts.roles.mix || opts.roles.provider {
        let mut node_config =
            NodeConfig::new(params.clone(), network_hash(&opts.network.network.id));
        node_config.roles = opts.roles;
        let mailboxes = RedbMailboxes {
            store: store.clone(),
            total_bytes: 8 * 1024 * 1024 * 1024,
        };
        let mut node = Node::new(
            node_config,
            identity.clone(),
            mailboxes,
            rand::rng().random(),
        );
        for (epoch, secret) in store.mix_keys()? {
            node.restore_key(MixSecretKey::from_bytes(Epoch(epoch), *secret));
            let tags = store.replay_tags(epoch)?;
            node.restore_replay_tags(Epoch(epoch), tags.into_iter().map(ReplayTag));
        }
        Some(node)
    } else {
        None
    };

    let (internal_tx, mut internal_rx) = mpsc::channel(1024);
    let (api_tx, mut api_rx) = mpsc::channel(64);
    let api = crate::api::serve(opts.api_port, api_tx).await?;
    let info = ApiInfo {
        port: api.port,
        token: api.token.clone(),
        peer_id: net.local_peer_id().to_string(),
        pid: std::process::id(),
    };
    write_private(
        &opts.data_dir.join("api.json"),
        &serde_json::to_vec_pretty(&info)?,
    )?;
    info!(peer = %net.local_peer_id(), api = api.port, "node started");

    let mut rt = Runtime {
        params: params.clone(),
        descriptors: DescriptorSet::new(network_hash(&opts.network.network.id)),
        opts,
        store,
        net,
        id,
        node,
        agent: None,
        directory_epoch: None,
        current_directory: None,
        known_addresses: HashMap::new(),
        kept: Default::default(),
        listen_addrs: Vec::new(),
        announced: Vec::new(),
        reach: Default::default(),
        direct: Default::default(),
        next_reach_poll: Time(0),
        peers: 0,
        peers_seen: Default::default(),
        replies: HashMap::new(),
        next_request: 0,
        internal_tx,
        next_publish: Time(0),
        tasks: Tasks::new(MAX_TASKS),
        stamps: VecDeque::new(),
        minting: 0,
    };
    if rt.opts.client {
        rt.open_agent(now())?;
    }

    tokio::pin!(shutdown);
    loop {
        let now = now();
        let wake = rt.next_wake(now);
        let sleep = tokio::time::sleep(Duration::from_millis(
            wake.0.saturating_sub(now.0).min(1000),
        ));
        tokio::select! {
            () = &mut shutdown => break,
            event = events.recv() => {
                let Some(event) = event else { bail!("the network driver stopped") };
                rt.on_net(now, event).await;
                // Take what else is waiting, so replay tags are stored once per batch.
                for _ in 0..MAX_BATCH {
                    match events.try_recv() {
                        Some(event) => rt.on_net(now, event).await,
                        None => break,
                    }
                }
            }
            Some(internal) = internal_rx.recv() => rt.on_internal(now, internal),
            Some(call) = api_rx.recv() => rt.on_api(now, call),
            () = sleep => {}
        }
        let now = crate::runtime::now();
        rt.tick(now).await?;
    }
    info!("node stopping");
    rt.net.shutdown().await;
    Ok(())
}

impl Runtime {
    fn next_wake(&self, now: Time) -> Time {
        let node = self.node.as_ref().and_then(|n| n.poll_timeout());
        let agent = self.agent.as_ref().and_then(|(a, _)| a.poll_timeout());
        [
            node,
            agent,
            Some(self.next_publish),
            Some(now + Duration::from_secs(1)),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now)
    }

    /// Unlocks the account and starts its agent.
    fn open_agent(&mut self, now: Time) -> Result<()> {
        let Some(vault) =
            crate::account::open_vault(self.store.clone(), &self.opts.data_dir, &self.opts.unlock)?
        else {
            warn!("this node has no account yet: stop it, run `chainmail init`, start it again");
            return Ok(());
        };
        let network = &self.opts.network;
        let mut config = AgentConfig::new(
            self.params.clone(),
            crate::account::messenger_config(network),
            chainmail_net::ProtocolNames::new(&network.network.id).community_topic_prefix,
        );
        config.advisory_key = network.advisory_key();
        // Every few descriptor refreshes: an advisory is news for minutes,
        // not seconds.
        config.advisory_every = (self.opts.descriptor_refresh * 4).max(Duration::from_secs(20));
        config.providers = self.opts.providers.clone();
        config.home = self.opts.roles.provider.then_some(self.id);
        config.fetch_wait = Duration::from_secs(20);
        let agent = Agent::open(config, vault.clone(), now, rand::rng().random())
            .context("opening the account")?;
        info!(account = %agent.account_address().short(), "account unlocked");
        self.agent = Some((agent, vault));
        Ok(())
    }

    /// Gives the agent an input, if there is one.
    fn give_agent(&mut self, now: Time, input: Input) {
        if let Some((agent, _)) = &mut self.agent {
            agent.handle(now, input);
        }
    }

    async fn on_net(&mut self, now: Time, event: NetEvent) {
        match event {
            NetEvent::PacketReceived { peer, frame } => {
                if let Some(node) = &mut self.node {
                    node.handle_packet_from(now, &peer.to_bytes(), &frame[..]);
                }
            }
            NetEvent::GossipReceived { bytes, .. } => self.learn_descriptor(now, &bytes),
            NetEvent::TopicMessage {
                topic,
                source,
                bytes,
                id,
            } => {
                let verdict = match &mut self.agent {
                    Some((a, _)) => a.handle_topic(now, &topic, source.to_bytes(), &bytes),
                    None => chainmail_client::Verdict::Ignore,
                };
                let verdict = match verdict {
                    chainmail_client::Verdict::Accept => chainmail_net::Verdict::Accept,
                    chainmail_client::Verdict::Ignore => chainmail_net::Verdict::Ignore,
                    chainmail_client::Verdict::Reject => chainmail_net::Verdict::Reject,
                };
                // Relayed only if valid here too.
                let _ = self.net.validate(id, verdict).await;
            }
            NetEvent::RequestReceived {
                kind: RequestKind::Direct,
                peer,
                bytes,
                reply,
            } => {
                // The driver took it only from a peer of the direct plan,
                // over a direct connection; the agent checks the rest.
                self.give_agent(
                    now,
                    Input::DirectReceived {
                        peer: peer.to_bytes(),
                        body: bytes,
                    },
                );
                let _ = reply.send(Vec::new());
            }
            NetEvent::RequestReceived {
                kind, bytes, reply, ..
            } => self.on_request(now, kind, bytes, reply),
            NetEvent::DirectLink { peer, state } => {
                let (words, detail) = crate::direct::link_words(&state);
                info!(%peer, state = %words, %detail, "direct link");
                self.direct.links.insert(peer, state);
                self.give_agent(
                    now,
                    Input::DirectLink {
                        peer: peer.to_bytes(),
                        state: words,
                        detail,
                    },
                );
            }
            NetEvent::PeerConnected { peer } => {
                self.peers += 1;
                if self.peers_seen.len() < 10_000 {
                    self.peers_seen.insert(peer.to_string());
                }
                self.sync_descriptors(peer);
                if let Ok(key) = chainmail_net::node_key_from_peer_id(&peer) {
                    let node = NodeId(key);
                    self.give_agent(
                        now,
                        Input::Reachable {
                            node,
                            reachable: true,
                        },
                    );
                }
            }
            NetEvent::PeerDisconnected { peer } => {
                self.peers = self.peers.saturating_sub(1);
                if let Ok(key) = chainmail_net::node_key_from_peer_id(&peer) {
                    let node = NodeId(key);
                    self.give_agent(
                        now,
                        Input::Reachable {
                            node,
                            reachable: false,
                        },
                    );
                    // Routes avoid the node meanwhile; the driver redials
                    // it if it is one the node keeps.
                }
            }
            NetEvent::ListeningOn { addr } => {
                let relayed = addr
                    .iter()
                    .any(|p| p == chainmail_net::multiaddr::Protocol::P2pCircuit);
                if !relayed {
                    self.listen_addrs.push(addr);
                }
                self.next_publish = now;
                // On a local network community members reach each other at
                // their listen addresses; on a public one through their
                // providers (see `update_direct_card`).
                if self.opts.network.network.scope() == chainmail_net::AddressScope::Local {
                    let identity = Input::SwarmIdentity {
                        peer: self.net.local_peer_id().to_bytes(),
                        addrs: self.listen_addrs.iter().map(|a| a.to_string()).collect(),
                    };
                    self.give_agent(now, identity);
                }
            }
            NetEvent::AddressConfirmed { addr } if !self.announced.contains(&addr) => {
                info!(%addr, "others can reach this node at");
                self.announced.push(addr);
                self.next_publish = now;
                self.update_direct_card(now);
            }
            NetEvent::AddressExpired { addr } => {
                self.announced.retain(|a| *a != addr);
                self.next_publish = now;
                self.update_direct_card(now);
            }
            _ => {}
        }
    }

    fn on_request(&mut self, now: Time, kind: RequestKind, body: Vec<u8>, reply: ReplyHandle) {
        match kind {
            RequestKind::Fetch => match &mut self.node {
                Some(node) => {
                    let request = self.next_request;
                    self.next_request += 1;
                    self.replies.insert(request, reply);
                    node.handle_fetch(now, request, &body);
                }
                None => drop(reply),
            },
            RequestKind::CommunitySync => match &mut self.agent {
                Some((a, _)) => {
                    let max = reply.max_response_size();
                    let response = a.answer_sync(now, &body, max - 64);
                    let _ = reply.send(response);
                }
                None => drop(reply),
            },
            // Taken in `on_net`.
            RequestKind::Direct => drop(reply),
            RequestKind::Descriptors => {
                let max = reply.max_response_size();
                let mut all = Vec::new();
                let mut size = 16;
                for (_, bytes) in self.descriptors.signed() {
                    size += bytes.len() + 4;
                    if size > max {
                        break;
                    }
                    all.push(bytes.as_ref().clone());
                }
                let _ = reply.send(postcard::to_stdvec(&all).unwrap_or_default());
            }
        }
    }

    fn sync_descriptors(&mut self, peer: PeerId) {
        let net = self.net.clone();
        let tx = self.internal_tx.clone();
        self.tasks.spawn("descriptors", async move {
            if let Ok(bytes) = net
                .request(peer, RequestKind::Descriptors, Vec::new())
                .await
                && let Ok(all) = postcard::from_bytes::<Vec<Vec<u8>>>(&bytes)
            {
                let _ = tx.send(Internal::Descriptors(all)).await;
            }
        });
    }

    fn learn_descriptor(&mut self, now: Time, bytes: &[u8]) {
        match self.descriptors.insert(bytes, now) {
            Ok(chainmail_mixnet::Inserted::Stale) => {}
            Ok(_) => self.directory_epoch = None,
            Err(e) => debug!(error = %e, "descriptor refused"),
        }
    }

    fn on_internal(&mut self, now: Time, internal: Internal) {
        match internal {
            Internal::Fetched { provider, result } => {
                let input = match result {
                    Ok(bytes) => Input::FetchAnswer { provider, bytes },
                    Err(e) => {
                        debug!(error = %e, "fetch failed");
                        Input::FetchFailed { provider }
                    }
                };
                self.give_agent(now, input);
            }
            Internal::Descriptors(all) => {
                for bytes in all.iter().take(10_000) {
                    self.learn_descriptor(now, bytes);
                }
            }
            Internal::Stamp { job, stamp } => {
                self.minting = self.minting.saturating_sub(1);
                match stamp {
                    Some(stamp) => self.give_agent(now, Input::Stamp { job, stamp }),
                    None => warn!(job, "a stamp could not be minted"),
                }
                self.mint_stamps();
            }
            Internal::ErrandDone { token, answer } => {
                if let Some(node) = &mut self.node {
                    node.handle_errand_answer(now, token, answer);
                }
            }
            Internal::CommunitySync { community, bytes } => {
                self.give_agent(now, Input::SyncAnswer { community, bytes })
            }
            Internal::Reachability(reach) => self.reach = reach,
            Internal::DirectSent { id, delivered } => {
                self.give_agent(now, Input::DirectSent { id, delivered })
            }
        }
    }

    fn on_api(&mut self, now: Time, call: ApiCall) {
        match call {
            ApiCall::Status(reply) => {
                let _ = reply.send(self.status(now));
            }
            ApiCall::Metrics(reply) => {
                let _ = reply.send(self.metrics());
            }
            ApiCall::Directory(reply) => {
                let entries = self
                    .descriptors
                    .signed()
                    .map(|(d, _)| crate::api::DirectoryEntry {
                        node_id: hex(&d.node.0),
                        mix: d.roles.mix,
                        provider: d.roles.provider,
                        addresses: d.addresses.clone(),
                        version: d.version.clone(),
                    })
                    .collect();
                let _ = reply.send(entries);
            }
            ApiCall::Account { request, reply } => {
                let result = match &mut self.agent {
                    Some((agent, _)) => agent.request(now, request),
                    None => Err(if self.opts.client {
                        "this node has no account: stop it, run `chainmail init`, start it again"
                            .into()
                    } else {
                        "this node runs without --client, so it has no account".into()
                    }),
                };
                // What the request changed is stored before the answer.
                if let Err(e) = self.flush(now) {
                    warn!(error = %e, "storing what a request changed failed");
                    let _ = reply.send(Err(format!("storing it failed: {e:#}")));
                    return;
                }
                let _ = reply.send(result);
            }
        }
    }

    fn status(&self, now: Time) -> Status {
        let d = self.current_directory.as_ref();
        let client = self.agent.as_ref().and_then(|(a, _)| a.client());
        Status {
            peer_id: self.net.local_peer_id().to_string(),
            node_id: hex(&self.id.0),
            mix: self.opts.roles.mix,
            provider: self.opts.roles.provider,
            peers: self.peers,
            peers_seen: self.peers_seen.iter().cloned().collect(),
            descriptors: self.descriptors.len(),
            epoch: self.params.epoch_at(now).0,
            layers: d
                .map(|d| d.layers.iter().map(Vec::len).collect())
                .unwrap_or_default(),
            providers: d.map_or(0, |d| d.providers.len()),
            directory_complete: d.is_some_and(|d| d.is_complete()),
            address: client.map(|c| c.address().to_text()),
            pending: client.map_or(0, |c| c.pending()),
            client_packets_sent: client.map_or(0, |c| c.stats().packets_sent()),
            listen_addrs: self.listen_addrs.iter().map(|a| a.to_string()).collect(),
            announced_addrs: self.announced.iter().map(|a| a.to_string()).collect(),
            in_directory: d.is_some_and(|d| {
                d.providers.iter().any(|p| p.id == self.id)
                    || d.layers.iter().flatten().any(|m| m.id == self.id)
            }),
            reachability: self.reachability_line(),
            anonymity: self.params.rates.anonymity_line(),
            direct: self
                .agent
                .as_ref()
                .map(|(a, _)| {
                    a.direct_summary()
                        .into_iter()
                        .map(|(contact, v)| crate::api::DirectStatus {
                            contact,
                            state: v.state,
                            detail: v.detail,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            bootstrap: self
                .reach
                .peers
                .iter()
                .filter_map(|p| {
                    Some(crate::api::BootstrapStatus {
                        addr: p.bootstrap.as_ref()?.to_string(),
                        connected: p.connected,
                        failures: p.failures,
                        last_error: p.last_error.clone(),
                        retry_in_secs: p.retry_in.map(|d| d.as_secs()),
                    })
                })
                .collect(),
        }
    }

    /// One line on whether others can reach this node, and what follows.
    fn reachability_line(&self) -> String {
        if !(self.opts.roles.mix || self.opts.roles.provider) {
            return "client only: announces no address and connects out to its providers".into();
        }
        if !self.announced.is_empty() {
            let addrs: Vec<String> = self.announced.iter().map(|a| a.to_string()).collect();
            return format!("reachable at {}", addrs.join(", "));
        }
        let scope = match self.opts.network.network.scope() {
            chainmail_net::AddressScope::Public => "publicly routable ",
            chainmail_net::AddressScope::Local => "",
        };
        let tests: Vec<String> = self
            .reach
            .probes
            .iter()
            .rev()
            .take(3)
            .map(|p| match &p.error {
                None => format!("{} answered but is not {scope}", p.addr),
                Some(e) => format!("{} failed: {e}", p.addr),
            })
            .collect();
        let why = if tests.is_empty() {
            if self.peers == 0 {
                "no peer to test it yet".to_string()
            } else {
                "waiting for a peer to dial it back".to_string()
            }
        } else {
            tests.join("; ")
        };
        format!(
            "not reachable: no {scope}address of this node was confirmed by another node ({why}); \
             it works as a client and stays out of the mix and provider directory \
             (behind NAT: forward a port and pass --external-address, or run with --roles none)"
        )
    }

    fn metrics(&self) -> String {
        let agent = self.agent.as_ref().map(|(a, _)| a);
        let mut text = crate::api::render_metrics(
            self.node
                .as_ref()
                .map(|n| (n.stats(), n.queue_len(), n.replay_status())),
            agent.and_then(|a| a.client()).map(|c| c.stats()),
            &self.net.metrics(),
            self.store.mailbox_stats().ok(),
            agent.map(|a| a.messenger().stats()),
        );
        {
            use std::fmt::Write as _;
            let _ = writeln!(
                text,
                "# HELP chainmail_tasks_running Background tasks running (dials, requests, DHT operations, swarm traffic).\n# TYPE chainmail_tasks_running gauge\nchainmail_tasks_running {}",
                self.tasks.running()
            );
            let refused: Vec<(String, u64)> = self
                .tasks
                .refused()
                .iter()
                .map(|(kind, n)| (format!("{{kind=\"{kind}\"}}"), *n))
                .collect();
            crate::api::counter(
                &mut text,
                "chainmail_tasks_refused_total",
                "Background tasks not started because too many were running, by kind.",
                &refused,
            );
            let net = self.net.metrics();
            let mut direct = vec![
                ("{event=\"received\"}".to_string(), net.direct_in),
                ("{event=\"sent\"}".to_string(), net.direct_out),
                ("{event=\"refused\"}".to_string(), net.direct_refused),
                (
                    "{event=\"hole_punch_ok\"}".to_string(),
                    net.hole_punches_succeeded,
                ),
                (
                    "{event=\"hole_punch_failed\"}".to_string(),
                    net.hole_punches_failed,
                ),
            ];
            if let Some(a) = agent {
                let s = a.stats();
                direct.push(("{event=\"fallback\"}".to_string(), s.direct_fallbacks));
                direct.push(("{event=\"agent_refused\"}".to_string(), s.direct_refused));
            }
            crate::api::counter(
                &mut text,
                "chainmail_direct_total",
                "Direct mode: messages received and sent over direct connections, traffic refused (from peers without a direct link, or through a relay), hole punching outcomes, and fragments sent through the mixnet after a direct send failed.",
                &direct,
            );
        }
        if let Some(a) = agent {
            let families = [
                (
                    "chainmail_community_refused_total",
                    "Community records, blocks, sync answers, imports and join letters refused, by kind.",
                    a.community_refused(),
                ),
                (
                    "chainmail_community_records_out_of_date_total",
                    "Gossiped records that raced their blocks (already included, anchor not here yet, anchored to another branch or overtaken since): not refusals.",
                    a.community_out_of_date(),
                ),
                (
                    "chainmail_community_own_records_dropped_total",
                    "Our own posts and actions whose block or anchor lost and that could not be made again on the new tip (their rights are gone), by kind.",
                    a.community_own_dropped(),
                ),
            ];
            for (name, help, by_kind) in families {
                let samples: Vec<(String, u64)> = by_kind
                    .into_iter()
                    .map(|(kind, n)| (format!("{{kind=\"{kind}\"}}"), n))
                    .collect();
                crate::api::counter(&mut text, name, help, &samples);
            }
            let stats = a.stats();
            crate::api::counter(
                &mut text,
                "chainmail_agent_dropped_total",
                "What the agent could not use, by reason: mixnet messages that were not session traffic, DHT advisories that did not verify, errands not sent, storage reads that failed.",
                &[
                    ("{reason=\"unreadable\"}".into(), stats.unreadable),
                    ("{reason=\"advisory\"}".into(), stats.advisories_refused),
                    ("{reason=\"errand\"}".into(), a.errands_refused()),
                    ("{reason=\"storage\"}".into(), stats.storage_errors),
                ],
            );
        }
        text
    }

    /// Time passes: timers of the cores, directory, descriptor publication;
    /// then store what must be durable, then send.
    async fn tick(&mut self, now: Time) -> Result<()> {
        self.refresh_directory(now);
        if let Some(node) = &mut self.node
            && node.poll_timeout().is_some_and(|t| t <= now)
        {
            node.handle_timeout(now);
        }
        if let Some((agent, _)) = &mut self.agent
            && agent.poll_timeout().is_some_and(|t| t <= now)
        {
            agent.handle_timeout(now);
        }
        if now >= self.next_publish {
            self.next_publish = now + self.opts.descriptor_refresh;
            self.publish_descriptor(now).await;
        }
        if now >= self.next_reach_poll {
            self.next_reach_poll = now + Duration::from_secs(2);
            let net = self.net.clone();
            let tx = self.internal_tx.clone();
            self.tasks.spawn("reachability", async move {
                if let Ok(reach) = net.reachability().await {
                    let _ = tx.send(Internal::Reachability(reach)).await;
                }
            });
        }
        self.flush(now)
    }

    fn refresh_directory(&mut self, now: Time) {
        let epoch = self.params.epoch_at(now);
        if self.directory_epoch == Some(epoch) {
            return;
        }
        self.directory_epoch = Some(epoch);
        self.descriptors.prune(now);
        let next = Epoch(epoch.0 + 1);
        let current = Arc::new(self.descriptors.epoch_directory(epoch, &self.params, now));
        let upcoming = Arc::new(self.descriptors.epoch_directory(next, &self.params, now));
        for d in [&current, &upcoming] {
            if let Some(node) = &mut self.node {
                node.set_directory(d.clone());
            }
            self.give_agent(now, Input::Directory(d.clone()));
        }
        self.connect_to_directory();
        self.current_directory = Some(current);
        self.update_direct_card(now);
    }

    /// Tells the agent where contacts can reach this node in direct mode
    /// (through its providers), and the driver where to hold reservations.
    fn update_direct_card(&mut self, now: Time) {
        let Some((agent, _)) = &self.agent else {
            return;
        };
        let providers: Vec<(NodeId, Vec<String>)> = agent
            .providers()
            .into_iter()
            .filter_map(|p| Some((p, self.known_addresses.get(&p)?.clone())))
            .collect();
        let scope = self.opts.network.network.scope();
        let me = self.net.local_peer_id();
        // Its own confirmed addresses (a public node's; a client behind a
        // router has none), then relayed ones through its providers.
        if let Some(card) = self
            .direct
            .update_card(me, scope, &providers, &self.announced)
        {
            if scope == chainmail_net::AddressScope::Public {
                // Community members reach this node the same way.
                let identity = Input::SwarmIdentity {
                    peer: card.peer.clone(),
                    addrs: card.addrs.clone(),
                };
                self.give_agent(now, identity);
            }
            self.give_agent(now, Input::DirectCard(card));
            self.push_direct_plan();
        }
    }

    fn push_direct_plan(&mut self) {
        push_direct_plan(&mut self.tasks, &self.net, &self.direct, &self.opts);
    }

    /// Connects to the nodes packets go to. A mix or provider keeps a
    /// connection to every node of the directory (the packet protocol
    /// never dials); a client-only node only to its agent's providers, so
    /// that no other node ever sees its address.
    fn connect_to_directory(&mut self) {
        let only: Option<std::collections::HashSet<NodeId>> =
            if self.opts.roles.mix || self.opts.roles.provider {
                None
            } else {
                Some(match &self.agent {
                    Some((agent, _)) => agent.providers().into_iter().collect(),
                    None => self.opts.providers.iter().copied().collect(),
                })
            };
        let scope = self.opts.network.network.scope();
        let mut wanted = std::collections::HashSet::new();
        for (descriptor, _) in self.descriptors.signed() {
            if descriptor.node == self.id
                || only
                    .as_ref()
                    .is_some_and(|only| !only.contains(&descriptor.node))
            {
                continue;
            }
            let Ok(peer) = peer_id_from_node_key(&descriptor.node.0) else {
                continue;
            };
            wanted.insert(descriptor.node);
            let changed = self.known_addresses.get(&descriptor.node) != Some(&descriptor.addresses);
            let new = !self.kept.contains(&descriptor.node);
            if !changed && !new {
                continue;
            }
            self.known_addresses
                .insert(descriptor.node, descriptor.addresses.clone());
            let addrs: Vec<Multiaddr> = if changed {
                // Never dial what a public network's nodes may not announce:
                // a descriptor naming private addresses would otherwise
                // send this node's dials into its own LAN.
                descriptor
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<Multiaddr>().ok())
                    .filter(|a| chainmail_net::addrs::announceable(scope, a))
                    .collect()
            } else {
                Vec::new()
            };
            self.kept.insert(descriptor.node);
            let net = self.net.clone();
            // The driver keeps the connection: it dials now, and again
            // with backoff whenever it is lost.
            self.tasks.spawn("dial", async move {
                for addr in addrs {
                    let _ = net.add_peer_address(peer, addr).await;
                }
                let _ = net.keep_connected(peer, true).await;
            });
        }
        let gone: Vec<NodeId> = self
            .kept
            .iter()
            .filter(|n| !wanted.contains(n))
            .copied()
            .collect();
        for node in gone {
            self.kept.remove(&node);
            if let Ok(peer) = peer_id_from_node_key(&node.0) {
                let net = self.net.clone();
                self.tasks.spawn("dial", async move {
                    let _ = net.keep_connected(peer, false).await;
                });
            }
        }
    }

    async fn publish_descriptor(&mut self, now: Time) {
        let Some(node) = &self.node else { return };
        // Only addresses others can reach (see `reachability`): a node
        // nobody can reach works as a client and stays out of the
        // directory.
        if self.announced.is_empty() {
            return;
        }
        let addresses: Vec<String> = self
            .announced
            .iter()
            .take(8)
            .map(|a| a.to_string())
            .collect();
        match node.signed_descriptor(now, addresses, VERSION) {
            Ok(bytes) => {
                self.learn_descriptor(now, &bytes);
                if let Err(e) = self.net.publish(bytes.clone()).await {
                    debug!(error = %e, "descriptor not gossiped (no peers yet)");
                    self.next_publish = now + Duration::from_secs(2);
                }
                let net = self.net.clone();
                let key = self.id.0.to_vec();
                self.tasks.spawn("publish", async move {
                    let _ = net.put_record(key, bytes).await;
                });
            }
            Err(e) => warn!(error = %e, "cannot sign descriptor"),
        }
    }

    /// Starts minting waiting stamps, at most `MAX_MINTING` at once, each
    /// on a blocking thread (seconds of work).
    fn mint_stamps(&mut self) {
        while self.minting < MAX_MINTING
            && let Some(StampJob {
                job,
                challenge,
                day,
                difficulty,
            }) = self.stamps.pop_front()
        {
            self.minting += 1;
            let tx = self.internal_tx.clone();
            tokio::task::spawn_blocking(move || {
                let stamp = chainmail_session::Stamp::mint(&challenge, day, difficulty, |_| true);
                let _ = tx.blocking_send(Internal::Stamp { job, stamp });
            });
        }
    }

    /// Stores replay tags, rotated keys and what the agent asks to keep,
    /// then sends.
    fn flush(&mut self, now: Time) -> Result<()> {
        let mut local_packets = Vec::new();
        let mut local_fetches = Vec::new();
        if let Some(node) = &mut self.node {
            let tags = node.drain_replay_tags();
            let mut by_epoch: HashMap<u32, Vec<[u8; 16]>> = HashMap::new();
            for (epoch, tag) in tags {
                by_epoch.entry(epoch.0).or_default().push(tag.0);
            }
            for (epoch, tags) in by_epoch {
                for chunk in tags.chunks(chainmail_store::MAX_REPLAY_TAGS_PER_CALL) {
                    self.store
                        .insert_replay_tags(epoch, chunk)
                        .context("storing replay tags")?;
                }
            }
            while let Some(event) = node.poll_event() {
                match event {
                    NodeEvent::KeysRotated(rotation) => {
                        for (epoch, secret) in &rotation.generated {
                            self.store.put_mix_key(epoch.0, secret)?;
                        }
                        if let Some(max_retired) = rotation.retired.iter().map(|e| e.0).max() {
                            self.store.delete_mix_keys_before(max_retired + 1)?;
                        }
                        self.next_publish = now;
                    }
                    NodeEvent::LoopReturned(_) => {}
                    NodeEvent::Errand { token, errand } => {
                        let put = matches!(errand, Errand::Put { .. });
                        let tx = &self.internal_tx;
                        if !carry_out_errand(&mut self.tasks, &self.net, tx, token, errand) {
                            let answer = if put {
                                Answer::NotStored
                            } else {
                                Answer::NotFound
                            };
                            node.handle_errand_answer(now, token, answer);
                        }
                    }
                }
            }
            while let Some(t) = node.poll_transmit() {
                if t.to == self.id {
                    local_packets.push(t.packet);
                } else {
                    send_frame(&self.net, &t.to, t.packet.as_bytes());
                }
            }
            while let Some((request, bytes)) = node.poll_fetch_response() {
                match self.replies.remove(&request) {
                    Some(reply) => {
                        let _ = reply.send(bytes);
                    }
                    None => local_fetches.push((request, bytes)),
                }
            }
        }
        if let Some((agent, storage)) = &mut self.agent {
            while let Some(output) = agent.poll_output() {
                match output {
                    // Durable before any output after it is carried out.
                    Output::Persist(batch) => {
                        storage.write(&batch).context("storing the account")?
                    }
                    Output::Transmit { provider, packet } => {
                        if provider == self.id {
                            local_packets.push(packet);
                        } else {
                            send_frame(&self.net, &provider, packet.as_bytes());
                        }
                    }
                    Output::Fetch { provider, request } => {
                        if provider == self.id {
                            if let Some(node) = &mut self.node {
                                let id = self.next_request | (1 << 63);
                                self.next_request += 1;
                                node.handle_fetch(now, id, &request);
                            }
                        } else if !fetch(
                            &mut self.tasks,
                            &self.net,
                            &self.internal_tx,
                            provider,
                            request,
                        ) {
                            agent.handle(now, Input::FetchFailed { provider });
                        }
                    }
                    Output::MintStamp {
                        job,
                        challenge,
                        day,
                        difficulty,
                    } => self.stamps.push_back(StampJob {
                        job,
                        challenge,
                        day,
                        difficulty,
                    }),
                    Output::Swarm(action) => {
                        run_swarm_action(&mut self.tasks, &self.net, &self.internal_tx, action)
                    }
                    Output::Shown(entry) => debug!(kind = %entry.kind, "shown"),
                    Output::Direct(plan) => {
                        self.direct.set_plan(plan);
                        push_direct_plan(&mut self.tasks, &self.net, &self.direct, &self.opts);
                    }
                    Output::DirectSend { id, peer, body } => {
                        let net = self.net.clone();
                        let tx = self.internal_tx.clone();
                        let started = self.tasks.spawn("direct", async move {
                            let delivered = match PeerId::from_bytes(&peer) {
                                Ok(peer) => {
                                    net.request(peer, RequestKind::Direct, body).await.is_ok()
                                }
                                Err(_) => false,
                            };
                            let _ = tx.send(Internal::DirectSent { id, delivered }).await;
                        });
                        if !started {
                            agent.handle(
                                now,
                                Input::DirectSent {
                                    id,
                                    delivered: false,
                                },
                            );
                        }
                    }
                }
            }
        }
        self.mint_stamps();
        // The node's answers to the hosted agent's fetches, and packets the
        // agent entered through this node itself.
        let again = !local_packets.is_empty();
        for (_, bytes) in local_fetches {
            let provider = self.id;
            self.give_agent(now, Input::FetchAnswer { provider, bytes });
        }
        if let Some(node) = &mut self.node {
            for packet in local_packets {
                node.handle_packet(now, packet.as_bytes());
            }
        }
        if again {
            // What they produced goes out in the same turn.
            return self.flush(now);
        }
        Ok(())
    }
}

/// Hands the driver what direct mode should do now.
fn push_direct_plan(
    tasks: &mut Tasks,
    net: &NetHandle,
    direct: &crate::direct::DirectHost,
    opts: &NodeOptions,
) {
    let plan = direct.net_plan(opts.network.network.scope());
    let net = net.clone();
    tasks.spawn("direct", async move {
        let _ = net.set_direct(plan).await;
    });
}

/// Fetches mail from a provider for the hosted agent; false if there was
/// no room for the task.
fn fetch(
    tasks: &mut Tasks,
    net: &NetHandle,
    tx: &mpsc::Sender<Internal>,
    provider: NodeId,
    bytes: Vec<u8>,
) -> bool {
    let net = net.clone();
    let tx = tx.clone();
    tasks.spawn("fetch", async move {
        let result = match peer_id_from_node_key(&provider.0) {
            Ok(peer) => net
                .request(peer, RequestKind::Fetch, bytes)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let _ = tx.send(Internal::Fetched { provider, result }).await;
    })
}

/// Carries out an errand for a client: the DHT operation it asks for,
/// published and looked up under this node's name; the answer goes back
/// through the client's SURBs. False if there was no room for the task.
fn carry_out_errand(
    tasks: &mut Tasks,
    net: &NetHandle,
    tx: &mpsc::Sender<Internal>,
    token: u64,
    errand: Errand,
) -> bool {
    let net = net.clone();
    let tx = tx.clone();
    tasks.spawn("errand", async move {
        let answer = match errand {
            Errand::Get { key } => match net.get_record(key).await {
                Ok(value) => Answer::Found(value),
                Err(_) => Answer::NotFound,
            },
            Errand::Put { key, value } => match net.put_record(key, value).await {
                Ok(()) => Answer::Stored,
                Err(e) => {
                    debug!(error = %e, "an errand's record was not stored");
                    Answer::NotStored
                }
            },
        };
        let _ = tx.send(Internal::ErrandDone { token, answer }).await;
    })
}

fn send_frame(net: &NetHandle, to: &NodeId, bytes: &[u8; chainmail_packet::PACKET_SIZE]) {
    let Ok(peer) = peer_id_from_node_key(&to.0) else {
        return;
    };
    if let Err(e) = net.try_send_packet(peer, Box::new(*bytes)) {
        debug!(error = %e, "packet not sent");
    }
}

/// Carries out the agent's community swarm traffic (which reveals this
/// node to the community's members).
fn run_swarm_action(
    tasks: &mut Tasks,
    net: &NetHandle,
    tx: &mpsc::Sender<Internal>,
    action: SwarmAction,
) {
    let net = net.clone();
    let tx = tx.clone();
    match action {
        SwarmAction::Subscribe(topic) => {
            tasks.spawn("swarm", async move {
                if let Err(e) = net.subscribe(topic).await {
                    warn!(error = %e, "cannot join a community topic");
                }
            });
        }
        SwarmAction::Unsubscribe(topic) => {
            tasks.spawn("swarm", async move {
                let _ = net.unsubscribe(topic).await;
            });
        }
        SwarmAction::Publish { topic, bytes } => {
            // No subscribed peer yet is fine: sync repairs what gossip misses.
            tasks.spawn("swarm", async move {
                let _ = net.publish_to(topic, bytes).await;
            });
        }
        SwarmAction::Sync {
            community,
            peer: entry,
            request,
        } => {
            tasks.spawn("swarm", async move {
                let Ok(peer) = PeerId::from_bytes(&entry.peer) else {
                    return;
                };
                for addr in entry
                    .addrs
                    .iter()
                    .filter_map(|a| a.parse::<Multiaddr>().ok())
                {
                    let _ = net.add_peer_address(peer, addr).await;
                }
                if let Ok(response) = net.request(peer, RequestKind::CommunitySync, request).await {
                    let _ = tx
                        .send(Internal::CommunitySync {
                            community,
                            bytes: response,
                        })
                        .await;
                }
            });
        }
    }
}
