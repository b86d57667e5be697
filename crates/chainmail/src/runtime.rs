//! The node runtime: drives the mixnet cores (node and hosted client)
//! against libp2p (`chainmail-net`) and redb (`chainmail-store`).
//!
//! One task owns all state. Each turn it takes a batch of inputs (network
//! events, fetch results, API calls, timers), feeds them to the cores, then
//! stores what must be durable — replay tags, received messages — and only
//! then sends what the cores produced.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chainmail_mixnet::message::ClientAddress;
use chainmail_mixnet::{
    Answer, Client, ClientConfig, ClientEvent, ClientKeys, DescriptorSet, EpochDirectory, Errand,
    ErrandId, MailboxStore, MixnetError, Node, NodeConfig, NodeEvent, Params, Roles, Time,
    network_hash,
};
use chainmail_net::{
    Multiaddr, Net, NetConfig, NetEvent, NetHandle, PeerId, ReplyHandle, peer_id_from_node_key,
};
use chainmail_packet::{Epoch, MailboxId, MixSecretKey, NodeId, ReplayTag};
use chainmail_store::{AppendOutcome, Store};
use ed25519_dalek::SigningKey;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::network::NetworkFile;
use crate::tables::Table;

/// Software version carried in descriptors.
pub(crate) const VERSION: &str = concat!("chainmail ", env!("CARGO_PKG_VERSION"));

const REQ_FETCH: u8 = 0x01;
const REQ_DESCRIPTORS: u8 = 0x02;
/// A community sync request (`chainmail_chain::SyncRequest`) follows.
const REQ_COMMUNITY: u8 = 0x03;
const MAX_BATCH: usize = 512;

pub(crate) use crate::clock::now;

/// How a node is started.
#[derive(Clone, Debug)]
pub(crate) struct NodeOptions {
    /// The network file.
    pub(crate) network: NetworkFile,
    /// Where the node keeps its state.
    pub(crate) data_dir: PathBuf,
    /// TCP port on 127.0.0.1 (0: any).
    pub(crate) tcp_port: u16,
    /// QUIC port on 127.0.0.1 (0: any).
    pub(crate) quic_port: u16,
    /// Mix and/or provider; neither for a client-only node.
    pub(crate) roles: Roles,
    /// Whether the node hosts its user's client.
    pub(crate) client: bool,
    /// Providers the client should use (node ids); empty: choose.
    pub(crate) providers: Vec<NodeId>,
    /// Port of the local API on 127.0.0.1 (0: any).
    pub(crate) api_port: u16,
    /// How often the node republishes its descriptor.
    pub(crate) descriptor_refresh: Duration,
    /// Most packets per second accepted from one peer.
    pub(crate) peer_packet_rate: u32,
    /// How to unlock the account's vault.
    pub(crate) unlock: crate::account::Unlock,
}

/// Where the local API listens and its token; written to `api.json` in the
/// data directory (readable by the owner only).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ApiInfo {
    /// Port on 127.0.0.1.
    pub(crate) port: u16,
    /// Bearer token.
    pub(crate) token: String,
    /// The node's peer id.
    pub(crate) peer_id: String,
    /// The node's process id.
    pub(crate) pid: u32,
}

/// Requests from the local API to the runtime.
pub(crate) enum ApiCall {
    /// Status snapshot.
    Status(oneshot::Sender<Status>),
    /// Send a message.
    Send {
        to: String,
        text: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// Prometheus metrics text.
    Metrics(oneshot::Sender<String>),
    /// An account request from the CLI.
    Account {
        request: crate::account::AccountRequest,
        reply: oneshot::Sender<Result<serde_json::Value, String>>,
    },
}

/// What `GET /v1/status` returns.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Status {
    /// Peer id.
    pub(crate) peer_id: String,
    /// Node id (hex of the Ed25519 key).
    pub(crate) node_id: String,
    /// Roles.
    pub(crate) mix: bool,
    /// Roles.
    pub(crate) provider: bool,
    /// Connected peers.
    pub(crate) peers: usize,
    /// Every peer this node has been connected to since it started.
    pub(crate) peers_seen: Vec<String>,
    /// Descriptors known.
    pub(crate) descriptors: usize,
    /// Current epoch.
    pub(crate) epoch: u32,
    /// Mixes per layer in the current epoch's directory.
    pub(crate) layers: Vec<usize>,
    /// Providers in the current epoch's directory.
    pub(crate) providers: usize,
    /// Whether routes can be built.
    pub(crate) directory_complete: bool,
    /// The hosted client's address, once it has providers.
    pub(crate) address: Option<String>,
    /// Messages sent and not yet acknowledged.
    pub(crate) pending: usize,
    /// Number of events in the event log.
    pub(crate) events: u64,
    /// Packets the client has put on its link.
    pub(crate) client_packets_sent: u64,
}

/// One entry of the client's event log (kept in the store).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct LoggedEvent {
    /// Position in the log, from 1.
    pub(crate) seq: u64,
    /// Milliseconds since the Unix epoch.
    pub(crate) at: u64,
    /// "received", "delivered" or "failed".
    pub(crate) kind: String,
    /// Message id (hex).
    pub(crate) id: String,
    /// Text of a received message.
    pub(crate) text: Option<String>,
    /// For "delivered": milliseconds from send to acknowledgement.
    pub(crate) after_ms: Option<u64>,
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

#[derive(Serialize, Deserialize)]
struct StoredClientKeys {
    seal: [u8; 32],
    mailboxes: Vec<(NodeId, [u8; 32])>,
}

enum Internal {
    Fetched {
        provider: NodeId,
        result: Result<Vec<u8>, String>,
    },
    Descriptors(Vec<Vec<u8>>),
    /// A stamp was minted.
    Stamp {
        job: u64,
        stamp: chainmail_session::Stamp,
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
}

/// Why the hosted client sent an errand: what to do with the answer.
enum Purpose {
    /// One period's descriptor of an account being looked up.
    Lookup {
        address: chainmail_session::Address,
        period: u64,
    },
    /// A publication (account descriptor, rendezvous record, advisory):
    /// nothing waits for it; it is published again on the next refresh.
    Publish,
    /// The network's advisory.
    Advisory,
    /// A community's rendezvous record: read, then ours merged in and
    /// published again.
    Rendezvous {
        community: chainmail_chain::Hash,
        key: chainmail_chain::Hash,
        secret: chainmail_chain::Hash,
        period: u64,
        me: Option<chainmail_chain::PeerEntry>,
    },
}

/// The hosted client's errands in flight (DHT lookups and publications
/// that other nodes carry out through the mixnet, so that no DHT node and
/// no record names this node).
#[derive(Default)]
struct Errands {
    purposes: HashMap<ErrandId, Purpose>,
    /// Lookups not answered yet, per account.
    lookups: HashMap<chainmail_session::Address, usize>,
}

/// Most errands of the hosted client in flight.
const MAX_ERRANDS: usize = 1024;

impl Errands {
    /// Hands `errand` to the client; false if it refused.
    fn start(&mut self, now: Time, client: &mut Client, errand: Errand, purpose: Purpose) -> bool {
        if self.purposes.len() >= MAX_ERRANDS {
            warn!("too many DHT errands in flight; one was not sent");
            return false;
        }
        match client.errand(now, errand) {
            Ok(id) => {
                if let Purpose::Lookup { address, .. } = &purpose {
                    *self.lookups.entry(*address).or_default() += 1;
                }
                self.purposes.insert(id, purpose);
                true
            }
            Err(e) => {
                warn!(error = %e, "the mixnet client refused a DHT errand");
                false
            }
        }
    }

    /// An errand ended, answered (`Some`) or not (`None`). Returns an
    /// advisory found in the DHT, for the caller to check and apply.
    fn finish(
        &mut self,
        now: Time,
        client: &mut Client,
        account: Option<&mut crate::account::AccountDriver>,
        id: ErrandId,
        answer: Option<Answer>,
    ) -> Option<Vec<u8>> {
        let purpose = self.purposes.remove(&id)?;
        let found = match answer {
            Some(Answer::Found(value)) => Some(value),
            _ => None,
        };
        match purpose {
            Purpose::Publish => {}
            Purpose::Advisory => return found,
            Purpose::Lookup { address, period } => {
                let account = account?;
                if let Some(value) = found {
                    account
                        .messenger
                        .handle_descriptor(now, address, period, &value);
                }
                let left = self.lookups.entry(address).or_default();
                *left = left.saturating_sub(1);
                if *left == 0 {
                    self.lookups.remove(&address);
                    account.messenger.handle_lookup_done(now, address);
                }
            }
            Purpose::Rendezvous {
                community,
                key,
                secret,
                period,
                me,
            } => {
                let mut peers = found
                    .and_then(|v| chainmail_chain::open_peers(&secret, period, &v).ok())
                    .unwrap_or_default();
                let known = peers.clone();
                if let Some(me) = me {
                    chainmail_chain::merge_peers(&mut peers, me);
                    let value =
                        chainmail_chain::seal_peers(&mut rand::rng(), &secret, period, &peers);
                    let put = Errand::Put {
                        key: key.to_vec(),
                        value,
                    };
                    self.start(now, client, put, Purpose::Publish);
                }
                if !known.is_empty()
                    && let Some(account) = account
                {
                    account.communities.learn_peers(community, known);
                }
            }
        }
        None
    }
}

struct Runtime {
    opts: NodeOptions,
    params: Params,
    store: Arc<Store>,
    net: NetHandle,
    id: NodeId,
    node: Option<Node<RedbMailboxes>>,
    client: Option<Client>,
    account: Option<crate::account::AccountDriver>,
    descriptors: DescriptorSet,
    directory_epoch: Option<Epoch>,
    current_directory: Option<Arc<EpochDirectory>>,
    known_addresses: HashMap<NodeId, Vec<String>>,
    listen_addrs: Vec<Multiaddr>,
    peers: usize,
    /// Every peer this node was ever connected to (bounded), so that tests
    /// and users can check who learned this node's IP address.
    peers_seen: std::collections::BTreeSet<String>,
    replies: HashMap<u64, ReplyHandle>,
    next_request: u64,
    internal_tx: mpsc::Sender<Internal>,
    errands: Errands,
    next_publish: Time,
    next_advisory_fetch: Time,
    event_seq: u64,
    stored_cursors: Vec<(NodeId, u64)>,
}

/// Runs a node until `shutdown` resolves.
pub(crate) async fn run_node(
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
    config.listen_addrs = vec![
        format!("/ip4/127.0.0.1/tcp/{}", opts.tcp_port).parse()?,
        format!("/ip4/127.0.0.1/udp/{}/quic-v1", opts.quic_port).parse()?,
    ];
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
    // A client-only node takes no part in the DHT: its providers carry its
    // lookups and publications out (errands through the mixnet), so it
    // never connects to a DHT node it did not choose.
    config.dht = config.kad_server;
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
    let api = crate::api::serve(
        opts.api_port,
        api_tx,
        crate::api::EventSource(store.clone()),
    )
    .await?;
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

    let event_seq = store.kv_list(Table::Events.as_str())?.len() as u64;
    let mut rt = Runtime {
        params: params.clone(),
        descriptors: DescriptorSet::new(network_hash(&opts.network.network.id)),
        opts,
        store,
        net,
        id,
        node,
        client: None,
        account: None,
        directory_epoch: None,
        current_directory: None,
        known_addresses: HashMap::new(),
        listen_addrs: Vec::new(),
        peers: 0,
        peers_seen: Default::default(),
        replies: HashMap::new(),
        next_request: 0,
        internal_tx,
        errands: Errands::default(),
        next_publish: Time(0),
        next_advisory_fetch: Time(0),
        event_seq,
        stored_cursors: Vec::new(),
    };
    if rt.opts.client {
        rt.account = crate::account::AccountDriver::open(
            rt.store.clone(),
            &rt.opts.network,
            &rt.opts.data_dir,
            &rt.opts.unlock,
        )
        .context("opening the account (chainmail init creates one)")?;
        if let Some(a) = &rt.account {
            info!(account = %a.messenger.address().short(), "account unlocked");
        }
        if let Some(bytes) = rt.store.kv_get(Table::Advisory.as_str(), b"current")? {
            let _ = rt.apply_advisory(&bytes);
        }
    }
    rt.load_client()?;

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

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut f = options
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

impl Runtime {
    fn next_wake(&self, now: Time) -> Time {
        let node = self.node.as_ref().and_then(|n| n.poll_timeout());
        let client = self.client.as_ref().and_then(|c| c.poll_timeout());
        let account = self
            .account
            .as_ref()
            .and_then(|a| a.messenger.poll_timeout());
        let communities = self
            .account
            .as_ref()
            .and_then(|a| a.communities.poll_timeout())
            .map(Time);
        [
            node,
            client,
            account,
            communities,
            Some(self.next_publish),
            Some(now + Duration::from_secs(1)),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now)
    }

    fn load_client(&mut self) -> Result<()> {
        if !self.opts.client {
            return Ok(());
        }
        let Some(bytes) = self.store.kv_get(Table::Client.as_str(), b"keys")? else {
            return Ok(());
        };
        let stored: StoredClientKeys =
            postcard::from_bytes(&bytes).context("stored client keys are damaged")?;
        let keys = ClientKeys {
            seal: chainmail_mixnet::message::SealKey::from_bytes(stored.seal),
            mailboxes: stored
                .mailboxes
                .iter()
                .map(|(p, k)| (*p, SigningKey::from_bytes(k)))
                .collect(),
        };
        self.start_client(keys);
        Ok(())
    }

    fn start_client(&mut self, keys: ClientKeys) {
        let mut config = ClientConfig::new(self.params.clone());
        config.fetch_wait = Duration::from_secs(20);
        let mut client = Client::new(config, keys, rand::rng().random());
        if let Some(d) = &self.current_directory {
            client.set_directory(d.clone());
        }
        // Pick up where a previous run stopped: what was fetched, what was seen.
        if let Ok(Some(bytes)) = self.store.kv_get(Table::Client.as_str(), b"cursors")
            && let Ok(cursors) = postcard::from_bytes::<Vec<(NodeId, u64)>>(&bytes)
        {
            for (provider, handled) in cursors {
                client.restore_cursor(provider, handled);
            }
        }
        if let Ok(log) = crate::api::read_events_all(&self.store) {
            client.restore_seen(
                log.iter()
                    .filter(|e| e.kind == "received")
                    .filter_map(|e| unhex_array::<16>(&e.id)),
            );
        }
        info!(address = %client.address().to_text(), "client ready");
        if let Some(account) = &mut self.account {
            account.messenger.set_mixnet_address(client.address());
        }
        self.client = Some(client);
    }

    /// Creates the client's keys once the directory lists providers.
    fn ensure_client(&mut self, directory: &EpochDirectory) -> Result<()> {
        if !self.opts.client || self.client.is_some() || directory.providers.len() < 2 {
            return Ok(());
        }
        let mut providers: Vec<NodeId> = self.opts.providers.clone();
        if providers.is_empty() {
            let mut candidates: Vec<NodeId> = directory.providers.iter().map(|p| p.id).collect();
            // Prefer this node when it is a provider; pick the rest at random.
            if let Some(i) = candidates.iter().position(|p| *p == self.id) {
                providers.push(candidates.remove(i));
            }
            let mut rng = rand::rng();
            while providers.len() < 2 && !candidates.is_empty() {
                providers.push(candidates.remove(rng.random_range(0..candidates.len())));
            }
        }
        let keys = ClientKeys::generate(&mut rand::rng(), &providers);
        let stored = StoredClientKeys {
            seal: *keys.seal.to_bytes(),
            mailboxes: keys
                .mailboxes
                .iter()
                .map(|(p, k)| (*p, k.to_bytes()))
                .collect(),
        };
        self.store.kv_put(
            Table::Client.as_str(),
            b"keys",
            &postcard::to_stdvec(&stored)?,
        )?;
        self.start_client(keys);
        Ok(())
    }

    async fn on_net(&mut self, now: Time, event: NetEvent) {
        match event {
            NetEvent::PacketReceived { frame, .. } => {
                if let Some(node) = &mut self.node {
                    node.handle_packet(now, &frame[..]);
                }
            }
            NetEvent::GossipReceived { bytes, .. } => self.learn_descriptor(now, &bytes),
            NetEvent::TopicMessage {
                topic,
                source,
                bytes,
                id,
            } => {
                let verdict = match &mut self.account {
                    Some(a) => a
                        .communities
                        .handle_topic(now.0, &topic, source.to_bytes(), &bytes),
                    None => chainmail_net::Verdict::Ignore,
                };
                // Relayed only if valid here too.
                let _ = self.net.validate(id, verdict).await;
            }
            NetEvent::RequestReceived { bytes, reply, .. } => self.on_request(now, bytes, reply),
            NetEvent::PeerConnected { peer } => {
                self.peers += 1;
                if self.peers_seen.len() < 10_000 {
                    self.peers_seen.insert(peer.to_string());
                }
                self.sync_descriptors(peer);
                if let (Some(client), Ok(key)) = (
                    &mut self.client,
                    chainmail_net::node_key_from_peer_id(&peer),
                ) {
                    client.set_node_down(NodeId(key), false);
                }
            }
            NetEvent::PeerDisconnected { peer } => {
                self.peers = self.peers.saturating_sub(1);
                if let Ok(key) = chainmail_net::node_key_from_peer_id(&peer) {
                    if let Some(client) = &mut self.client {
                        client.set_node_down(NodeId(key), true);
                    }
                    // Try to get the connection back; routes avoid the node meanwhile.
                    let net = self.net.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        let _ = net.dial_peer(peer).await;
                    });
                }
            }
            NetEvent::ListeningOn { addr } => {
                self.listen_addrs.push(addr);
                self.next_publish = now;
            }
            _ => {}
        }
    }

    fn on_request(&mut self, now: Time, bytes: Vec<u8>, reply: ReplyHandle) {
        match bytes.split_first() {
            Some((&REQ_FETCH, body)) => match &mut self.node {
                Some(node) => {
                    let request = self.next_request;
                    self.next_request += 1;
                    self.replies.insert(request, reply);
                    node.handle_fetch(now, request, body);
                }
                None => drop(reply),
            },
            Some((&REQ_COMMUNITY, body)) => match &mut self.account {
                Some(a) => {
                    let max = reply.max_response_size();
                    let response = a.communities.answer_sync(now.0, body, max - 64);
                    let _ = reply.send(response);
                }
                None => drop(reply),
            },
            Some((&REQ_DESCRIPTORS, _)) => {
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
            _ => drop(reply),
        }
    }

    fn sync_descriptors(&self, peer: PeerId) {
        let net = self.net.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            if let Ok(bytes) = net.request(peer, vec![REQ_DESCRIPTORS]).await
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
                if let Some(client) = &mut self.client {
                    match result {
                        Ok(bytes) => client.handle_fetch_response(now, provider, &bytes),
                        Err(e) => {
                            debug!(error = %e, "fetch failed");
                            client.handle_fetch_failed(now, provider);
                        }
                    }
                }
            }
            Internal::Descriptors(all) => {
                for bytes in all.iter().take(10_000) {
                    self.learn_descriptor(now, bytes);
                }
            }
            Internal::Stamp { job, stamp } => {
                if let Some(a) = &mut self.account {
                    a.messenger.handle_stamp(job, stamp);
                }
            }
            Internal::ErrandDone { token, answer } => {
                if let Some(node) = &mut self.node {
                    node.handle_errand_answer(now, token, answer);
                }
            }
            Internal::CommunitySync { community, bytes } => {
                if let Some(a) = &mut self.account {
                    a.communities.handle_sync_response(now.0, community, &bytes);
                }
            }
        }
    }

    fn on_api(&mut self, now: Time, call: ApiCall) {
        match call {
            ApiCall::Status(reply) => {
                let _ = reply.send(self.status(now));
            }
            ApiCall::Send { to, text, reply } => {
                let result = match (&mut self.client, ClientAddress::from_text(&to)) {
                    (None, _) => Err(
                        "this node has no client yet (no directory, or started without --client)"
                            .into(),
                    ),
                    (_, Err(e)) => Err(e.to_string()),
                    (Some(client), Ok(address)) => client
                        .send(now, &address, text.as_bytes())
                        .map(|id| hex(&id))
                        .map_err(|e| e.to_string()),
                };
                let _ = reply.send(result);
            }
            ApiCall::Metrics(reply) => {
                let _ = reply.send(self.metrics());
            }
            ApiCall::Account {
                request: crate::account::AccountRequest::AdvisoryPublish { advisory },
                reply,
            } => {
                let result = unhex(&advisory)
                    .ok_or_else(|| "the advisory must be hex".to_string())
                    .and_then(|bytes| {
                        self.client.as_ref().ok_or_else(|| {
                            "this node has no mixnet client yet (no directory, or started \
                             without --client): the advisory travels through the mixnet"
                                .to_string()
                        })?;
                        let key = chainmail_session::advisory_dht_key(&network_hash(
                            &self.opts.network.network.id,
                        ));
                        let sequence = self.apply_advisory(&bytes)?;
                        let put = Errand::Put {
                            key: key.to_vec(),
                            value: bytes,
                        };
                        let client = self.client.as_mut().ok_or("no mixnet client")?;
                        if !self.errands.start(now, client, put, Purpose::Publish) {
                            return Err("the advisory could not be queued; try again".into());
                        }
                        Ok(serde_json::json!({ "sequence": sequence }))
                    });
                let _ = reply.send(result);
            }
            ApiCall::Account { request, reply } => {
                let result = match &mut self.account {
                    Some(a) => a.handle(now, request),
                    None => Err(if self.opts.client {
                        "this node has no account: stop it, run `chainmail init`, start it again"
                            .into()
                    } else {
                        "this node runs without --client, so it has no account".into()
                    }),
                };
                let _ = reply.send(result);
            }
        }
    }

    /// Checks an advisory against the network's advisory key, gives it to
    /// the account and keeps it if it is the newest seen. Its sequence.
    fn apply_advisory(&mut self, bytes: &[u8]) -> Result<u64, String> {
        let key = self
            .opts
            .network
            .advisory_key()
            .ok_or_else(|| "this network's file names no advisory key".to_string())?;
        let network = network_hash(&self.opts.network.network.id);
        let advisory = chainmail_session::Advisory::decode_verified(bytes, &key, &network)
            .map_err(|e| e.to_string())?;
        let sequence = advisory.body.sequence;
        let stored = self
            .store
            .kv_get(Table::Advisory.as_str(), b"current")
            .ok()
            .flatten()
            .and_then(|b| chainmail_session::Advisory::decode_verified(&b, &key, &network).ok())
            .map(|a| a.body.sequence);
        if stored.is_none_or(|s| s < sequence) {
            self.store
                .kv_put(Table::Advisory.as_str(), b"current", bytes)
                .map_err(|e| e.to_string())?;
        }
        if let Some(a) = &mut self.account {
            a.messenger.set_advisory(advisory);
        }
        Ok(sequence)
    }

    fn status(&self, now: Time) -> Status {
        let d = self.current_directory.as_ref();
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
            address: self.client.as_ref().map(|c| c.address().to_text()),
            pending: self.client.as_ref().map_or(0, Client::pending),
            events: self.event_seq,
            client_packets_sent: self.client.as_ref().map_or(0, |c| c.stats().packets_sent()),
        }
    }

    fn metrics(&self) -> String {
        let mut text = self.core_metrics();
        if let Some(a) = &self.account {
            let families = [
                (
                    "chainmail_community_refused_total",
                    "Community records, blocks, sync answers, imports and join letters refused, by kind.",
                    a.communities.refused(),
                ),
                (
                    "chainmail_community_records_out_of_date_total",
                    "Gossiped records that raced their blocks (already included, anchor not here yet, anchored to another branch or overtaken since): not refusals.",
                    a.communities.out_of_date(),
                ),
                (
                    "chainmail_community_own_records_dropped_total",
                    "Our own posts and actions whose block or anchor lost and that could not be made again on the new tip (their rights are gone), by kind.",
                    a.communities.own_dropped(),
                ),
            ];
            for (name, help, by_kind) in families {
                let samples: Vec<(String, u64)> = by_kind
                    .into_iter()
                    .map(|(kind, n)| (format!("{{kind=\"{kind}\"}}"), n))
                    .collect();
                crate::api::counter(&mut text, name, help, &samples);
            }
        }
        text
    }

    fn core_metrics(&self) -> String {
        crate::api::render_metrics(
            self.node.as_ref().map(|n| (n.stats(), n.queue_len())),
            self.client.as_ref().map(Client::stats),
            &self.net.metrics(),
            self.store.mailbox_stats().ok(),
            self.account.as_ref().map(|a| a.messenger.stats()),
        )
    }

    /// Time passes: timers of the cores, directory, descriptor publication;
    /// then store what must be durable, then send.
    async fn tick(&mut self, now: Time) -> Result<()> {
        self.refresh_directory(now)?;
        if let Some(node) = &mut self.node
            && node.poll_timeout().is_some_and(|t| t <= now)
        {
            node.handle_timeout(now);
        }
        if let Some(client) = &mut self.client
            && client.poll_timeout().is_some_and(|t| t <= now)
        {
            client.handle_timeout(now);
        }
        if let Some(account) = &mut self.account
            && account.messenger.poll_timeout().is_some_and(|t| t <= now)
        {
            account.messenger.handle_timeout(now);
        }
        if let Some(account) = &mut self.account {
            let me = chainmail_chain::PeerEntry {
                peer: self.net.local_peer_id().to_bytes(),
                addrs: self
                    .listen_addrs
                    .iter()
                    .take(chainmail_chain::MAX_ADDRS)
                    .map(|a| a.to_string())
                    .collect(),
                published: now.0,
            };
            account.communities.me = Some(me);
            if account
                .communities
                .poll_timeout()
                .is_some_and(|t| t <= now.0)
            {
                account.communities.handle_timeout(now.0);
            }
        }
        if self.account.is_some()
            && self.opts.network.advisory_key().is_some()
            && now >= self.next_advisory_fetch
            && let Some(client) = &mut self.client
        {
            // Every few descriptor refreshes: an advisory is news for
            // minutes, not seconds.
            self.next_advisory_fetch =
                now + (self.opts.descriptor_refresh * 4).max(Duration::from_secs(20));
            let key =
                chainmail_session::advisory_dht_key(&network_hash(&self.opts.network.network.id));
            let get = Errand::Get { key: key.to_vec() };
            self.errands.start(now, client, get, Purpose::Advisory);
        }
        if now >= self.next_publish {
            self.next_publish = now + self.opts.descriptor_refresh;
            self.publish_descriptor(now).await;
        }
        self.flush(now)
    }

    fn refresh_directory(&mut self, now: Time) -> Result<()> {
        let epoch = self.params.epoch_at(now);
        if self.directory_epoch == Some(epoch) {
            return Ok(());
        }
        self.directory_epoch = Some(epoch);
        self.descriptors.prune(now);
        let next = Epoch(epoch.0 + 1);
        let current = Arc::new(self.descriptors.epoch_directory(epoch, &self.params, now));
        let upcoming = Arc::new(self.descriptors.epoch_directory(next, &self.params, now));
        self.ensure_client(&current)?;
        self.connect_to_directory();
        for d in [&current, &upcoming] {
            if let Some(node) = &mut self.node {
                node.set_directory(d.clone());
            }
            if let Some(client) = &mut self.client {
                client.set_directory(d.clone());
            }
        }
        self.current_directory = Some(current);
        Ok(())
    }

    /// Connects to the nodes packets go to. A mix or provider keeps a
    /// connection to every node of the directory (the packet protocol
    /// never dials); a client-only node only to its own providers, so that
    /// no other node ever sees its address.
    fn connect_to_directory(&mut self) {
        let only: Option<std::collections::HashSet<NodeId>> =
            if self.opts.roles.mix || self.opts.roles.provider {
                None
            } else {
                Some(match &self.client {
                    Some(client) => client.address().mailboxes.iter().map(|(p, _)| *p).collect(),
                    None => self.opts.providers.iter().copied().collect(),
                })
            };
        for (descriptor, _) in self.descriptors.signed() {
            if only
                .as_ref()
                .is_some_and(|only| !only.contains(&descriptor.node))
            {
                continue;
            }
            if descriptor.node != self.id
                && self.known_addresses.get(&descriptor.node) != Some(&descriptor.addresses)
            {
                self.known_addresses
                    .insert(descriptor.node, descriptor.addresses.clone());
                if let Ok(peer) = peer_id_from_node_key(&descriptor.node.0) {
                    let addrs: Vec<Multiaddr> = descriptor
                        .addresses
                        .iter()
                        .filter_map(|a| a.parse::<Multiaddr>().ok())
                        .collect();
                    let net = self.net.clone();
                    tokio::spawn(async move {
                        for addr in addrs {
                            let _ = net.add_peer_address(peer, addr).await;
                        }
                        let _ = net.dial_peer(peer).await;
                    });
                }
            }
        }
    }

    async fn publish_descriptor(&mut self, now: Time) {
        let Some(node) = &self.node else { return };
        if self.listen_addrs.is_empty() {
            return;
        }
        let addresses: Vec<String> = self
            .listen_addrs
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
                tokio::spawn(async move { net.put_record(key, bytes).await });
            }
            Err(e) => warn!(error = %e, "cannot sign descriptor"),
        }
    }

    /// Stores replay tags, rotated keys and received messages, then sends.
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
                        carry_out_errand(&self.net, &self.internal_tx, token, errand)
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
        let mut advisories = Vec::new();
        if let Some(client) = &mut self.client {
            while let Some(event) = client.poll_event() {
                let ended = match &event {
                    ClientEvent::Answered { id, answer } => Some((*id, Some(answer.clone()))),
                    ClientEvent::ErrandFailed { id } => Some((*id, None)),
                    _ => None,
                };
                if let Some((id, answer)) = ended {
                    let account = self.account.as_mut();
                    if let Some(found) = self.errands.finish(now, client, account, id, answer) {
                        advisories.push(found);
                    }
                    continue;
                }
                // Session traffic goes to the account; the rest (raw sends)
                // to the event log.
                if let Some(account) = &mut self.account {
                    match &event {
                        ClientEvent::Received { body, .. }
                            if chainmail_session::Fragment::decode(body).is_ok() =>
                        {
                            account.messenger.handle_received(now, body);
                            continue;
                        }
                        ClientEvent::Delivered { id, .. } => {
                            account.messenger.handle_mixnet_delivered(id)
                        }
                        ClientEvent::Failed { id } => account.messenger.handle_mixnet_failed(id),
                        _ => {}
                    }
                }
                if let Some(logged) = log_entry(now, &event, self.event_seq + 1) {
                    self.event_seq += 1;
                    let json = serde_json::to_vec(&logged)?;
                    self.store.kv_put(
                        Table::Events.as_str(),
                        &self.event_seq.to_be_bytes(),
                        &json,
                    )?;
                }
            }
            if let Some(account) = &mut self.account {
                // Stored before anything it caused leaves (a published
                // descriptor names one-time keys that must survive a crash).
                // What the actions change (mixnet ids) is written with the
                // next batch; a restart hands undelivered fragments out again.
                account.persist(now).context("storing the account")?;
                while let Some(action) = account.messenger.poll_action() {
                    run_account_action(
                        now,
                        &self.internal_tx,
                        client,
                        account,
                        &mut self.errands,
                        action,
                    );
                }
                while let Some(action) = account.communities.poll_action() {
                    run_community_action(
                        now,
                        &self.net,
                        &self.internal_tx,
                        client,
                        &mut self.errands,
                        action,
                    );
                }
            }
            // With the messages stored, the cursors move: the next fetch
            // deletes those items at the provider.
            let cursors = client.cursors();
            if cursors != self.stored_cursors {
                self.store.kv_put(
                    Table::Client.as_str(),
                    b"cursors",
                    &postcard::to_stdvec(&cursors)?,
                )?;
                self.stored_cursors = cursors;
            }
            while let Some((first_hop, packet)) = client.poll_transmit() {
                if first_hop == self.id {
                    local_packets.push(packet);
                } else {
                    send_frame(&self.net, &first_hop, packet.as_bytes());
                }
            }
            while let Some((provider, bytes)) = client.poll_fetch() {
                if provider == self.id {
                    if let Some(node) = &mut self.node {
                        let request = self.next_request | (1 << 63);
                        self.next_request += 1;
                        node.handle_fetch(now, request, &bytes);
                    }
                } else {
                    let net = self.net.clone();
                    let tx = self.internal_tx.clone();
                    tokio::spawn(async move {
                        let result = match peer_id_from_node_key(&provider.0) {
                            Ok(peer) => {
                                let mut request = vec![REQ_FETCH];
                                request.extend_from_slice(&bytes);
                                net.request(peer, request).await.map_err(|e| e.to_string())
                            }
                            Err(e) => Err(e.to_string()),
                        };
                        let _ = tx.send(Internal::Fetched { provider, result }).await;
                    });
                }
            }
        }
        for bytes in advisories {
            if let Err(e) = self.apply_advisory(&bytes) {
                debug!(error = %e, "advisory in the DHT refused");
            }
        }
        // The node's answers to the hosted client's fetches, and packets the
        // client entered through this node itself.
        for (_, bytes) in local_fetches {
            if let Some(client) = &mut self.client {
                client.handle_fetch_response(now, self.id, &bytes);
            }
        }
        if !local_packets.is_empty() {
            if let Some(node) = &mut self.node {
                for packet in local_packets {
                    node.handle_packet(now, packet.as_bytes());
                }
            }
            // What they produced goes out in the same turn.
            return self.flush(now);
        }
        Ok(())
    }
}

/// Carries out an errand for a client: the DHT operation it asks for,
/// published and looked up under this node's name; the answer goes back
/// through the client's SURBs.
fn carry_out_errand(net: &NetHandle, tx: &mpsc::Sender<Internal>, token: u64, errand: Errand) {
    let net = net.clone();
    let tx = tx.clone();
    // Bounded: the node core holds at most `max_errands` unanswered.
    tokio::spawn(async move {
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
    });
}

/// Carries out one action of the messenger core.
fn run_account_action(
    now: Time,
    internal: &mpsc::Sender<Internal>,
    client: &mut Client,
    account: &mut crate::account::AccountDriver,
    errands: &mut Errands,
    action: chainmail_session::Action,
) {
    use chainmail_session::Action;
    match action {
        Action::Transmit {
            tag,
            to,
            body,
            acknowledged: true,
        } => match client.send(now, &to, &body) {
            Ok(id) => account.messenger.handle_transmitted(tag, id),
            Err(e) => {
                warn!(error = %e, "the mixnet client refused a message");
                account.messenger.handle_transmit_failed(tag);
            }
        },
        Action::Transmit {
            to,
            body,
            acknowledged: false,
            ..
        } => {
            if let Err(e) = client.send_unacknowledged(now, &to, &body) {
                debug!(error = %e, "the mixnet client refused a receipt");
            }
        }
        // Publications and lookups travel through the mixnet to a provider
        // that carries them out: no DHT node learns this node.
        Action::Publish { key, value, .. } => {
            let put = Errand::Put {
                key: key.to_vec(),
                value,
            };
            errands.start(now, client, put, Purpose::Publish);
        }
        Action::Lookup { address, keys } => {
            let mut started = 0;
            for (period, key) in keys {
                let get = Errand::Get { key: key.to_vec() };
                if errands.start(now, client, get, Purpose::Lookup { address, period }) {
                    started += 1;
                }
            }
            if started == 0 {
                account.messenger.handle_lookup_done(now, address);
            }
        }
        Action::MintStamp {
            job,
            challenge,
            day,
            difficulty,
        } => {
            let tx = internal.clone();
            tokio::spawn(async move {
                let minted = tokio::task::spawn_blocking(move || {
                    chainmail_session::Stamp::mint(&challenge, day, difficulty, |_| true)
                })
                .await;
                if let Ok(Some(stamp)) = minted {
                    let _ = tx.send(Internal::Stamp { job, stamp }).await;
                }
            });
        }
    }
}

fn send_frame(net: &NetHandle, to: &NodeId, bytes: &[u8; chainmail_packet::PACKET_SIZE]) {
    let Ok(peer) = peer_id_from_node_key(&to.0) else {
        return;
    };
    if let Err(e) = net.try_send_packet(peer, Box::new(*bytes)) {
        debug!(error = %e, "packet not sent");
    }
}

fn log_entry(now: Time, event: &ClientEvent, seq: u64) -> Option<LoggedEvent> {
    let (kind, id, text, after_ms) = match event {
        ClientEvent::Received { id, body } => (
            "received",
            id,
            Some(String::from_utf8_lossy(body).into_owned()),
            None,
        ),
        ClientEvent::Delivered { id, after } => {
            ("delivered", id, None, Some(after.as_millis() as u64))
        }
        ClientEvent::Failed { id } => ("failed", id, None, None),
        ClientEvent::LoopReturned { .. }
        | ClientEvent::Answered { .. }
        | ClientEvent::ErrandFailed { .. } => return None,
    };
    Some(LoggedEvent {
        seq,
        at: now.0,
        kind: kind.into(),
        id: hex(id),
        text,
        after_ms,
    })
}

/// Bytes from hex (either case); `None` if it is not hex.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

/// Exactly `N` bytes from hex.
pub(crate) fn unhex_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    unhex(text)?.try_into().ok()
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Carries out what the communities need from the network.
fn run_community_action(
    now: Time,
    net: &NetHandle,
    tx: &mpsc::Sender<Internal>,
    client: &mut Client,
    errands: &mut Errands,
    action: crate::community::NetAction,
) {
    use crate::community::NetAction;
    let net = net.clone();
    let tx = tx.clone();
    match action {
        NetAction::Subscribe(topic) => {
            tokio::spawn(async move {
                if let Err(e) = net.subscribe(topic).await {
                    warn!(error = %e, "cannot join a community topic");
                }
            });
        }
        NetAction::Unsubscribe(topic) => {
            tokio::spawn(async move {
                let _ = net.unsubscribe(topic).await;
            });
        }
        NetAction::Publish { topic, bytes } => {
            // No subscribed peer yet is fine: sync repairs what gossip misses.
            tokio::spawn(async move {
                let _ = net.publish_to(topic, bytes).await;
            });
        }
        NetAction::Sync {
            community,
            peers,
            request,
        } => {
            let pick = rand::rng().random_range(0..peers.len().max(1));
            let Some(entry) = peers.get(pick).cloned() else {
                return;
            };
            tokio::spawn(async move {
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
                let mut bytes = vec![REQ_COMMUNITY];
                bytes.extend_from_slice(&request);
                if let Ok(response) = net.request(peer, bytes).await {
                    let _ = tx
                        .send(Internal::CommunitySync {
                            community,
                            bytes: response,
                        })
                        .await;
                }
            });
        }
        NetAction::Rendezvous {
            community,
            key,
            secret,
            period,
            me,
        } => {
            // Read through the mixnet; ours is merged in and published
            // again when the answer comes (`Errands::finish`).
            let get = Errand::Get { key: key.to_vec() };
            let purpose = Purpose::Rendezvous {
                community,
                key,
                secret,
                period,
                me,
            };
            errands.start(now, client, get, purpose);
        }
    }
}
