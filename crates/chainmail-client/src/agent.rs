//! The agent: the user's messenger, mixnet client and communities as one
//! state machine.
//!
//! Driven like the other cores: give it what happened with
//! [`Agent::handle`] (or [`Agent::handle_timeout`] once
//! [`Agent::poll_timeout`] has passed, or a user's [`Agent::request`]),
//! then drain [`Agent::poll_output`] in order. A [`Output::Persist`] batch
//! must be durable before the outputs after it are carried out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chainmail_chain::{Hash, PeerEntry};
use chainmail_mixnet::message::{ClientAddress, SealKey};
use chainmail_mixnet::{
    Answer, Client, ClientConfig, ClientEvent, ClientKeys, EpochDirectory, Errand, ErrandId,
    Params, Time,
};
use chainmail_packet::{NodeId, Packet};
use chainmail_session::{
    Account, Action, Address, ContactRecord, ContactState, Fragment, MessageState, Messenger,
    MessengerConfig, MessengerEvent, MessengerState, Stamp,
};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::community::{
    CommunityRequest, Hub, InviteView, NetAction, Rendezvous, SwarmAction, Verdict,
};
use crate::direct::{Card, Direct, DirectPlan};
use crate::errands::{Errands, Purpose};
use crate::hex::hex;
use crate::requests::{
    AccountRequest, AdvisoryPublished, ContactChange, ContactView, DirectChange, HistoryEntry,
    IdentityExport, Queued, Response, SafetyNumberView, SentMessage, Whoami,
};
use crate::storage::{Batch, Storage, StorageError, Table};

/// How an agent behaves.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The network's parameters.
    pub params: Params,
    /// The messenger's settings (they name the network).
    pub messenger: MessengerConfig,
    /// The key advisories of unsafe versions are signed with, if the
    /// network has one.
    pub advisory_key: Option<VerifyingKey>,
    /// How often the advisory is looked up.
    pub advisory_every: Duration,
    /// Prefix of community topic names.
    pub topic_prefix: String,
    /// Providers to keep mailboxes at; empty: the hosting node if it is a
    /// provider, the rest at random from the directory.
    pub providers: Vec<NodeId>,
    /// The node the agent runs on, when it is a provider.
    pub home: Option<NodeId>,
    /// How long a mailbox fetch waits at the provider for mail.
    pub fetch_wait: Duration,
}

impl AgentConfig {
    /// Defaults for a network.
    pub fn new(params: Params, messenger: MessengerConfig, topic_prefix: String) -> Self {
        AgentConfig {
            params,
            messenger,
            advisory_key: None,
            advisory_every: Duration::from_secs(120),
            topic_prefix,
            providers: Vec::new(),
            home: None,
            fetch_wait: Duration::from_secs(20),
        }
    }
}

/// What happened, for the agent.
#[derive(Debug)]
pub enum Input {
    /// The directory of an epoch (the current one, then the next).
    Directory(Arc<EpochDirectory>),
    /// A provider answered a mailbox fetch.
    FetchAnswer {
        /// The provider.
        provider: NodeId,
        /// Its answer.
        bytes: Vec<u8>,
    },
    /// A mailbox fetch failed (no connection, no answer in time).
    FetchFailed {
        /// The provider.
        provider: NodeId,
    },
    /// A node became reachable or unreachable: routes avoid it meanwhile.
    Reachable {
        /// The node.
        node: NodeId,
        /// Whether it can be reached.
        reachable: bool,
    },
    /// A stamp asked for with [`Output::MintStamp`].
    Stamp {
        /// The job.
        job: u64,
        /// The stamp.
        stamp: Stamp,
    },
    /// How community members reach this node on the swarm: its peer id
    /// (bytes) and addresses. Published in rendezvous records and invites.
    SwarmIdentity {
        /// Peer id bytes.
        peer: Vec<u8>,
        /// Addresses.
        addrs: Vec<String>,
    },
    /// A member's answer to [`SwarmAction::Sync`].
    SyncAnswer {
        /// The community.
        community: Hash,
        /// The encoded answer.
        bytes: Vec<u8>,
    },
    /// How contacts reach this node in direct mode: its peer id and its
    /// relayed addresses through its providers. Sent to contacts only
    /// when the user turns direct mode on with them.
    DirectCard(Card),
    /// The host's direct link with `peer` changed (see
    /// [`Output::Direct`]).
    DirectLink {
        /// Peer id bytes.
        peer: Vec<u8>,
        /// connecting, relayed, direct or failed.
        state: String,
        /// The remote address (direct) or the error (failed).
        detail: String,
    },
    /// A message that came over a direct connection from `peer`.
    DirectReceived {
        /// Peer id bytes.
        peer: Vec<u8>,
        /// One encoded fragment, as through the mixnet.
        body: Vec<u8>,
    },
    /// The outcome of [`Output::DirectSend`] `id`: on failure the message
    /// goes through the mixnet instead.
    DirectSent {
        /// The send.
        id: u64,
        /// The peer took it.
        delivered: bool,
    },
}

/// What the agent needs done, in order.
#[derive(Debug)]
pub enum Output {
    /// Make this batch durable (with [`Storage::write`]) before carrying out
    /// any output after it.
    Persist(Batch),
    /// Send a packet to one of the agent's own providers.
    Transmit {
        /// The provider.
        provider: NodeId,
        /// The packet.
        packet: Packet,
    },
    /// Fetch mail from one of the agent's own providers; the answer goes
    /// to [`Input::FetchAnswer`], a failure to [`Input::FetchFailed`].
    Fetch {
        /// The provider.
        provider: NodeId,
        /// The signed request.
        request: Vec<u8>,
    },
    /// Mint a stamp (seconds of work: off the driving thread) and give it
    /// to [`Input::Stamp`].
    MintStamp {
        /// The job.
        job: u64,
        /// The challenge.
        challenge: [u8; 32],
        /// The day it is for.
        day: u32,
        /// Leading zero bits needed.
        difficulty: u8,
    },
    /// Community swarm traffic: it reveals this node to the community's
    /// members (see [`SwarmAction`]).
    Swarm(SwarmAction),
    /// Something to show the user (already in the history).
    Shown(HistoryEntry),
    /// Direct mode: what the host should link (replaces the last plan).
    Direct(DirectPlan),
    /// Send one fragment over the direct connection with `peer`; report
    /// with [`Input::DirectSent`].
    DirectSend {
        /// The send.
        id: u64,
        /// Peer id bytes.
        peer: Vec<u8>,
        /// One encoded fragment.
        body: Vec<u8>,
    },
}

/// A fragment sent over a direct connection, kept until the peer took it
/// (to send it through the mixnet if not).
#[derive(Debug)]
struct DirectPending {
    tag: chainmail_session::FragmentTag,
    to: ClientAddress,
    body: Vec<u8>,
    acknowledged: bool,
}

/// Fragments waiting for a direct peer's answer; beyond this, messages go
/// through the mixnet.
const MAX_DIRECT_PENDING: usize = 1024;

/// Why the agent could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Storage holds no account.
    #[error("there is no account here")]
    NoAccount,
    /// Something stored cannot be read back.
    #[error("{0} is damaged")]
    Damaged(&'static str),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The stored account was refused by the messenger.
    #[error("the account: {0}")]
    Session(#[from] chainmail_session::SessionError),
}

/// What the agent counted.
#[derive(Clone, Debug, Default)]
pub struct AgentStats {
    /// Mixnet messages that were not session traffic (dropped).
    pub unreadable: u64,
    /// Storage reads that failed while recording an event.
    pub storage_errors: u64,
    /// Advisories found in the DHT that did not verify.
    pub advisories_refused: u64,
    /// Direct-mode letters that were malformed, and messages from a peer
    /// this user has no direct link with.
    pub direct_refused: u64,
    /// Messages that came over a direct connection.
    pub direct_in: u64,
    /// Fragments sent over a direct connection (and taken).
    pub direct_out: u64,
    /// Fragments a direct send failed for, sent through the mixnet.
    pub direct_fallbacks: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredClientKeys {
    seal: [u8; 32],
    mailboxes: Vec<(NodeId, [u8; 32])>,
}

/// The state of a new account, to store before the agent first opens it.
pub fn new_account(
    config: &MessengerConfig,
    account: Account,
    name: &str,
    seed: [u8; 32],
) -> Batch {
    let messenger = Messenger::new(config.clone(), account, name, seed);
    let mut batch = Batch::default();
    batch.put(Table::Messenger, b"core".to_vec(), core_bytes(&messenger));
    batch
}

// A state of plain fields and byte strings always serializes.
fn core_bytes(messenger: &Messenger) -> Vec<u8> {
    serde_json::to_vec(&messenger.core_state()).unwrap_or_default()
}

/// The user's side: messenger, mixnet client, communities.
pub struct Agent<S> {
    config: AgentConfig,
    storage: S,
    rng: StdRng,
    client: Option<Client>,
    messenger: Messenger,
    hub: Hub,
    errands: Errands,
    directories: Vec<Arc<EpochDirectory>>,
    swarm_identity: Option<(Vec<u8>, Vec<String>)>,
    history_seq: u64,
    batch: Batch,
    shown: Vec<HistoryEntry>,
    letters: Vec<(Address, Vec<u8>)>,
    direct: Direct,
    direct_pending: HashMap<u64, DirectPending>,
    next_direct_id: u64,
    outputs: VecDeque<Output>,
    next_advisory_fetch: Time,
    stored_cursors: Vec<(NodeId, u64)>,
    stats: AgentStats,
}

impl<S: Storage> Agent<S> {
    /// Opens the account in `storage`.
    pub fn open(config: AgentConfig, storage: S, now: Time, seed: u64) -> Result<Self, AgentError> {
        let mut rng = StdRng::seed_from_u64(seed);
        let damaged = |_| AgentError::Damaged("the account's state");
        let mut batch = Batch::default();
        let state = match storage.get(Table::Messenger, b"core")? {
            Some(core) => {
                let core: MessengerState = serde_json::from_slice(&core).map_err(damaged)?;
                let records = storage
                    .list(Table::Contacts)?
                    .iter()
                    .map(|(_, v)| serde_json::from_slice::<ContactRecord>(v))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| AgentError::Damaged("a contact's record"))?;
                MessengerState::from_parts(core, records)
            }
            None => {
                // The whole state in one record, as kept before: it moves
                // into the core and one record per contact (written with
                // the first batch), and the old record goes, with the old
                // ratchet states in it.
                let bytes = storage
                    .get(Table::Messenger, b"state")?
                    .ok_or(AgentError::NoAccount)?;
                batch.delete(Table::Messenger, b"state".to_vec());
                serde_json::from_slice(&bytes).map_err(damaged)?
            }
        };
        let mut messenger = Messenger::from_state(config.messenger.clone(), state, rng.random())?;
        if batch.is_empty() {
            // Every record is stored already.
            messenger.take_touched();
        } else {
            let core = core_bytes(&messenger);
            batch.put(Table::Messenger, b"core".to_vec(), core);
        }
        let history_seq = last_position(&storage)?;
        let hub = Hub::load(&storage, config.topic_prefix.clone(), now.0, rng.random())?;
        let direct = Direct::load(&storage)?;
        let mut agent = Agent {
            config,
            storage,
            rng,
            client: None,
            messenger,
            hub,
            errands: Errands::default(),
            directories: Vec::new(),
            swarm_identity: None,
            history_seq,
            batch,
            shown: Vec::new(),
            letters: Vec::new(),
            direct,
            direct_pending: HashMap::new(),
            next_direct_id: 0,
            outputs: VecDeque::new(),
            next_advisory_fetch: now,
            stored_cursors: Vec::new(),
            stats: AgentStats::default(),
        };
        if let Some(bytes) = agent.storage.get(Table::Client, b"keys")? {
            let stored: StoredClientKeys = postcard::from_bytes(&bytes)
                .map_err(|_| AgentError::Damaged("the mixnet client's keys"))?;
            agent.start_client(ClientKeys {
                seal: SealKey::from_bytes(stored.seal),
                mailboxes: stored
                    .mailboxes
                    .iter()
                    .map(|(p, k)| (*p, SigningKey::from_bytes(k)))
                    .collect(),
            })?;
        }
        if let Some(bytes) = agent.storage.get(Table::Advisory, b"current")?
            && let Err(e) = agent.apply_advisory(&bytes)
        {
            tracing::debug!(error = %e, "the stored advisory no longer verifies");
        }
        Ok(agent)
    }

    /// The account's address.
    pub fn account_address(&self) -> Address {
        self.messenger.address()
    }

    /// The mixnet address, once the agent has providers.
    pub fn address(&self) -> Option<ClientAddress> {
        self.client.as_ref().map(Client::address)
    }

    /// The providers holding the agent's mailboxes: the only nodes it
    /// talks to.
    pub fn providers(&self) -> Vec<NodeId> {
        match &self.client {
            Some(c) => c.address().mailboxes.iter().map(|(p, _)| *p).collect(),
            None => self.config.providers.clone(),
        }
    }

    /// The mixnet client, once it runs (for status and metrics).
    pub fn client(&self) -> Option<&Client> {
        self.client.as_ref()
    }

    /// The messenger (for status and metrics).
    pub fn messenger(&self) -> &Messenger {
        &self.messenger
    }

    /// Direct mode with every contact for whom it is not off: name and
    /// where it stands.
    pub fn direct_summary(&self) -> Vec<(String, crate::DirectView)> {
        self.messenger
            .contacts()
            .map(|c| (c.name.clone(), self.direct.view(&c.address, &c.name)))
            .filter(|(_, v)| v.state != "off")
            .collect()
    }

    /// What the agent counted.
    pub fn stats(&self) -> &AgentStats {
        &self.stats
    }

    /// Errands in flight.
    pub fn errands_in_flight(&self) -> usize {
        self.errands.len()
    }

    /// Errands not sent (refused by the client, or too many in flight).
    pub fn errands_refused(&self) -> u64 {
        self.errands.refused
    }

    /// Community input refused, by kind.
    pub fn community_refused(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.hub.refused()
    }

    /// Gossiped community records that raced their blocks, by kind.
    pub fn community_out_of_date(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.hub.out_of_date()
    }

    /// Our own community posts and actions dropped, by kind.
    pub fn community_own_dropped(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.hub.own_dropped()
    }

    /// When the agent next needs [`Agent::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Time> {
        let advisory = (self.config.advisory_key.is_some() && self.client.is_some())
            .then_some(self.next_advisory_fetch);
        [
            self.client.as_ref().and_then(Client::poll_timeout),
            self.messenger.poll_timeout(),
            self.hub.poll_timeout().map(Time),
            advisory,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Something happened.
    pub fn handle(&mut self, now: Time, input: Input) {
        match input {
            Input::Directory(directory) => {
                if self.client.is_none() {
                    self.ensure_client(&directory);
                }
                if let Some(client) = &mut self.client {
                    client.set_directory(directory.clone());
                }
                self.directories.retain(|d| d.epoch != directory.epoch);
                self.directories.push(directory);
                self.directories.sort_by_key(|d| d.epoch);
                if self.directories.len() > 2 {
                    self.directories.remove(0);
                }
            }
            Input::FetchAnswer { provider, bytes } => {
                if let Some(client) = &mut self.client {
                    client.handle_fetch_response(now, provider, &bytes);
                }
            }
            Input::FetchFailed { provider } => {
                if let Some(client) = &mut self.client {
                    client.handle_fetch_failed(now, provider);
                }
            }
            Input::Reachable { node, reachable } => {
                if let Some(client) = &mut self.client {
                    client.set_node_down(node, !reachable);
                }
            }
            Input::Stamp { job, stamp } => self.messenger.handle_stamp(job, stamp),
            Input::SwarmIdentity { peer, addrs } => {
                let addrs = addrs
                    .into_iter()
                    .filter(|a| a.len() <= chainmail_chain::MAX_ADDR_LEN)
                    .take(chainmail_chain::MAX_ADDRS)
                    .collect();
                self.swarm_identity = Some((peer, addrs));
                self.hub.me = self.me(now);
            }
            Input::SyncAnswer { community, bytes } => {
                self.hub.handle_sync_response(now.0, community, &bytes);
            }
            Input::DirectCard(card) => self.set_direct_card(now, card),
            Input::DirectLink {
                peer,
                state,
                detail,
            } => self.direct_link(now, peer, state, detail),
            Input::DirectReceived { peer, body } => {
                if self.direct.contact_of(&peer).is_some() && Fragment::decode(&body).is_ok() {
                    self.stats.direct_in += 1;
                    self.messenger.handle_received(now, &body);
                } else {
                    self.stats.direct_refused += 1;
                }
            }
            Input::DirectSent { id, delivered } => self.direct_sent(now, id, delivered),
        }
        self.flush(now);
    }

    /// Time passes: retransmissions, cover traffic, fetches, lookups,
    /// descriptor and rendezvous refreshes, block production.
    pub fn handle_timeout(&mut self, now: Time) {
        if let Some(client) = &mut self.client
            && client.poll_timeout().is_some_and(|t| t <= now)
        {
            client.handle_timeout(now);
        }
        if self.messenger.poll_timeout().is_some_and(|t| t <= now) {
            self.messenger.handle_timeout(now);
        }
        self.hub.me = self.me(now);
        if self.hub.poll_timeout().is_some_and(|t| t <= now.0) {
            self.hub.handle_timeout(now.0);
        }
        if self.config.advisory_key.is_some()
            && now >= self.next_advisory_fetch
            && let Some(client) = &mut self.client
        {
            self.next_advisory_fetch = now + self.config.advisory_every;
            let key = chainmail_session::advisory_dht_key(&self.config.messenger.network);
            let get = Errand::Get { key: key.to_vec() };
            self.errands.start(now, client, get, Purpose::Advisory);
        }
        self.flush(now);
    }

    /// A message on a community topic, from `source` (peer id bytes), and
    /// whether the swarm should relay it.
    pub fn handle_topic(
        &mut self,
        now: Time,
        topic: &str,
        source: Vec<u8>,
        bytes: &[u8],
    ) -> Verdict {
        let verdict = self.hub.handle_topic(now.0, topic, source, bytes);
        self.flush(now);
        verdict
    }

    /// A member's sync request: the answer, at most `max` bytes.
    pub fn answer_sync(&mut self, now: Time, request: &[u8], max: usize) -> Vec<u8> {
        let answer = self.hub.answer_sync(now.0, request, max);
        self.flush(now);
        answer
    }

    fn me(&self, now: Time) -> Option<PeerEntry> {
        self.swarm_identity.as_ref().map(|(peer, addrs)| PeerEntry {
            peer: peer.clone(),
            addrs: addrs.clone(),
            published: now.0,
        })
    }

    fn start_client(&mut self, keys: ClientKeys) -> Result<(), AgentError> {
        let mut config = ClientConfig::new(self.config.params.clone());
        config.fetch_wait = self.config.fetch_wait;
        let mut client = Client::new(config, keys, self.rng.random());
        for d in &self.directories {
            client.set_directory(d.clone());
        }
        // Pick up where a previous run stopped.
        if let Some(bytes) = self.storage.get(Table::Client, b"cursors")? {
            let cursors: Vec<(NodeId, u64)> = postcard::from_bytes(&bytes)
                .map_err(|_| AgentError::Damaged("the mailbox cursors"))?;
            for (provider, handled) in &cursors {
                client.restore_cursor(*provider, *handled);
            }
            self.stored_cursors = cursors;
        }
        tracing::info!(address = %client.address().to_text(), "mixnet client ready");
        self.messenger.set_mixnet_address(client.address());
        self.client = Some(client);
        Ok(())
    }

    /// Creates the client's keys once a directory lists two providers.
    fn ensure_client(&mut self, directory: &EpochDirectory) {
        if directory.providers.len() < 2 {
            return;
        }
        let mut providers = self.config.providers.clone();
        if providers.is_empty() {
            let mut candidates: Vec<NodeId> = directory.providers.iter().map(|p| p.id).collect();
            // The hosting node first when it is a provider; the rest at random.
            if let Some(i) = candidates.iter().position(|p| Some(*p) == self.config.home) {
                providers.push(candidates.remove(i));
            }
            while providers.len() < 2 && !candidates.is_empty() {
                let i = self.rng.random_range(0..candidates.len());
                providers.push(candidates.remove(i));
            }
        }
        let keys = ClientKeys::generate(&mut self.rng, &providers);
        let stored = StoredClientKeys {
            seal: *keys.seal.to_bytes(),
            mailboxes: keys
                .mailboxes
                .iter()
                .map(|(p, k)| (*p, k.to_bytes()))
                .collect(),
        };
        // Durable before anything naming the mailboxes leaves: the batch
        // goes out first.
        if let Ok(bytes) = postcard::to_stdvec(&stored) {
            self.batch.put(Table::Client, b"keys".to_vec(), bytes);
        }
        if let Err(e) = self.start_client(keys) {
            tracing::warn!(error = %e, "the mixnet client did not start");
        }
    }

    /// Checks an advisory against the network's key, gives it to the
    /// messenger and keeps it if it is the newest seen. Its sequence.
    fn apply_advisory(&mut self, bytes: &[u8]) -> Result<u64, String> {
        let key = self
            .config
            .advisory_key
            .ok_or_else(|| "this network names no advisory key".to_string())?;
        let network = self.config.messenger.network;
        let advisory = chainmail_session::Advisory::decode_verified(bytes, &key, &network)
            .map_err(|e| e.to_string())?;
        let sequence = advisory.body.sequence;
        let stored = match self.batch.get(Table::Advisory, b"current") {
            Some(b) => Some(b.clone()),
            None => self.storage.get(Table::Advisory, b"current").ok().flatten(),
        }
        .and_then(|b| chainmail_session::Advisory::decode_verified(&b, &key, &network).ok())
        .map(|a| a.body.sequence);
        if stored.is_none_or(|s| s < sequence) {
            self.batch
                .put(Table::Advisory, b"current".to_vec(), bytes.to_vec());
        }
        self.messenger.set_advisory(advisory);
        Ok(sequence)
    }

    /// An errand ended, answered (`Some`) or not.
    fn errand_done(&mut self, now: Time, id: ErrandId, answer: Option<Answer>) {
        let Some((purpose, last)) = self.errands.finish(id) else {
            return;
        };
        let found = match answer {
            Some(Answer::Found(value)) => Some(value),
            _ => None,
        };
        match purpose {
            Purpose::Publish => {}
            Purpose::Advisory => {
                if let Some(bytes) = found
                    && let Err(e) = self.apply_advisory(&bytes)
                {
                    self.stats.advisories_refused += 1;
                    tracing::debug!(error = %e, "advisory in the DHT refused");
                }
            }
            Purpose::Lookup { address, period } => {
                if let Some(value) = found {
                    self.messenger
                        .handle_descriptor(now, address, period, &value);
                }
                if last {
                    self.messenger.handle_lookup_done(now, address);
                }
            }
            Purpose::Rendezvous(Rendezvous {
                community,
                key,
                secret,
                period,
                me,
            }) => {
                let mut peers = found
                    .and_then(|v| chainmail_chain::open_peers(&secret, period, &v).ok())
                    .unwrap_or_default();
                let known = peers.clone();
                if let Some(me) = me
                    && let Some(client) = &mut self.client
                {
                    chainmail_chain::merge_peers(&mut peers, me);
                    let value = chainmail_chain::seal_peers(&mut self.rng, &secret, period, &peers);
                    let put = Errand::Put {
                        key: key.to_vec(),
                        value,
                    };
                    self.errands.start(now, client, put, Purpose::Publish);
                }
                if !known.is_empty() {
                    self.hub.learn_peers(community, known);
                }
            }
        }
    }

    /// After every input: what the cores produced, stored first, then sent.
    fn flush(&mut self, now: Time) {
        // What the mixnet delivered.
        let mut ended = Vec::new();
        if let Some(client) = &mut self.client {
            while let Some(event) = client.poll_event() {
                match event {
                    ClientEvent::Answered { id, answer } => ended.push((id, Some(answer))),
                    ClientEvent::ErrandFailed { id } => ended.push((id, None)),
                    ClientEvent::Received { body, .. } => {
                        if Fragment::decode(&body).is_ok() {
                            self.messenger.handle_received(now, &body);
                        } else {
                            self.stats.unreadable += 1;
                        }
                    }
                    ClientEvent::Delivered { id, .. } => {
                        self.messenger.handle_mixnet_delivered(&id)
                    }
                    ClientEvent::Failed { id } => self.messenger.handle_mixnet_failed(&id),
                    ClientEvent::LoopReturned { .. } => {}
                }
            }
        }
        for (id, answer) in ended {
            self.errand_done(now, id, answer);
        }

        // Stored before anything it caused leaves (a published descriptor
        // names a fallback key that must survive a crash; with the messages
        // stored, the cursors move and the next fetch deletes them at the
        // provider). What the actions below change (mixnet ids) is written
        // with the next batch; a restart hands undelivered fragments out
        // again.
        while let Some(event) = self.messenger.poll_event() {
            self.record(now, event);
        }
        for (from, body) in std::mem::take(&mut self.letters) {
            if let Some(result) = self.direct.handle_letter(&mut self.batch, from, &body) {
                self.direct_letter(now, from, result);
                continue;
            }
            let name = self.name_of(&from);
            let invited = self
                .hub
                .handle_letter(now.0, &mut self.batch, from, name.clone(), &body);
            if let Some((token, community)) = invited {
                self.history(HistoryEntry {
                    seq: 0,
                    at: now.0,
                    kind: "community-invite".into(),
                    contact: from.to_string(),
                    name,
                    id: Some(token),
                    text: Some(community),
                    state: None,
                    position: None,
                });
            }
        }
        let writes = self.hub.take_writes();
        self.batch.puts.extend(writes.puts);
        // The core when anything changed, and only the records of the
        // contacts that changed.
        if self.messenger.take_dirty() {
            let core = core_bytes(&self.messenger);
            self.batch.put(Table::Messenger, b"core".to_vec(), core);
        }
        for address in self.messenger.take_touched() {
            if let Some(record) = self.messenger.contact_record(&address)
                && let Ok(bytes) = serde_json::to_vec(&record)
            {
                self.batch
                    .put(Table::Contacts, address.to_string().into_bytes(), bytes);
            }
        }
        if let Some(client) = &self.client {
            let cursors = client.cursors();
            if cursors != self.stored_cursors {
                if let Ok(bytes) = postcard::to_stdvec(&cursors) {
                    self.batch.put(Table::Client, b"cursors".to_vec(), bytes);
                }
                self.stored_cursors = cursors;
            }
        }
        if !self.batch.is_empty() {
            self.outputs
                .push_back(Output::Persist(std::mem::take(&mut self.batch)));
        }
        for entry in self.shown.drain(..) {
            self.outputs.push_back(Output::Shown(entry));
        }
        if let Some(plan) = self.direct.take_plan(self.hub.in_any()) {
            self.outputs.push_back(Output::Direct(plan));
        }

        // What the messenger and the communities need from the network.
        let Some(client) = &mut self.client else {
            return;
        };
        while let Some(action) = self.messenger.poll_action() {
            // Over the direct connection with the contact, if one is up.
            let action = match action {
                Action::Transmit {
                    tag,
                    to,
                    body,
                    acknowledged,
                } if self.direct.any_direct() && self.direct_pending.len() < MAX_DIRECT_PENDING => {
                    let contact = self
                        .messenger
                        .contacts()
                        .find(|c| c.mixnet.as_ref() == Some(&to))
                        .map(|c| c.address);
                    match contact.and_then(|c| self.direct.direct_peer(&c)) {
                        Some(peer) => {
                            let id = self.next_direct_id;
                            self.next_direct_id += 1;
                            self.outputs.push_back(Output::DirectSend {
                                id,
                                peer,
                                body: body.clone(),
                            });
                            let pending = DirectPending {
                                tag,
                                to,
                                body,
                                acknowledged,
                            };
                            self.direct_pending.insert(id, pending);
                            continue;
                        }
                        None => Action::Transmit {
                            tag,
                            to,
                            body,
                            acknowledged,
                        },
                    }
                }
                other => other,
            };
            match action {
                Action::Transmit {
                    tag,
                    to,
                    body,
                    acknowledged: true,
                } => match client.send(now, &to, &body) {
                    Ok(id) => self.messenger.handle_transmitted(tag, id),
                    Err(e) => {
                        tracing::warn!(error = %e, "the mixnet client refused a message");
                        self.messenger.handle_transmit_failed(tag);
                    }
                },
                Action::Transmit {
                    to,
                    body,
                    acknowledged: false,
                    ..
                } => {
                    if let Err(e) = client.send_unacknowledged(now, &to, &body) {
                        tracing::debug!(error = %e, "the mixnet client refused a receipt");
                    }
                }
                // Publications and lookups travel through the mixnet to a
                // provider that carries them out: no DHT node learns this
                // node.
                Action::Publish { key, value, .. } => {
                    let put = Errand::Put {
                        key: key.to_vec(),
                        value,
                    };
                    self.errands.start(now, client, put, Purpose::Publish);
                }
                Action::Lookup { address, keys } => {
                    let mut started = 0;
                    for (period, key) in keys {
                        let get = Errand::Get { key: key.to_vec() };
                        let purpose = Purpose::Lookup { address, period };
                        if self.errands.start(now, client, get, purpose) {
                            started += 1;
                        }
                    }
                    if started == 0 {
                        self.messenger.handle_lookup_done(now, address);
                    }
                }
                Action::MintStamp {
                    job,
                    challenge,
                    day,
                    difficulty,
                } => self.outputs.push_back(Output::MintStamp {
                    job,
                    challenge,
                    day,
                    difficulty,
                }),
            }
        }
        while let Some(action) = self.hub.poll_action() {
            match action {
                NetAction::Swarm(action) => self.outputs.push_back(Output::Swarm(action)),
                NetAction::Rendezvous(rendezvous) => {
                    // Read through the mixnet; ours is merged in and
                    // published again when the answer comes.
                    let get = Errand::Get {
                        key: rendezvous.key.to_vec(),
                    };
                    let purpose = Purpose::Rendezvous(rendezvous);
                    self.errands.start(now, client, get, purpose);
                }
            }
        }
        while let Some((provider, packet)) = client.poll_transmit() {
            self.outputs
                .push_back(Output::Transmit { provider, packet });
        }
        while let Some((provider, request)) = client.poll_fetch() {
            self.outputs.push_back(Output::Fetch { provider, request });
        }
    }

    /// `contact direct NAME on|off`.
    fn contact_direct(&mut self, now: Time, name: &str, on: bool) -> Result<Response, String> {
        let address = self.contact_address(name)?;
        let contact = self.messenger.contact(&address).ok_or("no such contact")?;
        if contact.state != ContactState::Accepted {
            return Err(format!(
                "direct mode needs an accepted contact; {} is {}",
                contact.name,
                contact.state.as_str()
            ));
        }
        let name = contact.name.clone();
        let letter = self.direct.set_mine(&mut self.batch, address, on)?;
        self.messenger
            .send_community(now, &address, letter.encode())
            .map_err(|e| e.to_string())?;
        let direct = self.direct.view(&address, &name);
        let text = if on {
            format!(
                "you agreed to direct mode with {name}: once {name} agrees too, each of you can                  see the other's network address"
            )
        } else {
            format!("you turned direct mode with {name} off: messages go through the mixnet")
        };
        self.direct_history(now, address, text);
        Ok(Response::Direct(DirectChange { name, direct }))
    }

    /// A direct-mode letter from a contact.
    fn direct_letter(&mut self, now: Time, from: Address, result: Result<bool, ()>) {
        let Ok(on) = result else {
            self.stats.direct_refused += 1;
            return;
        };
        let name = self.name_of(&from);
        let view = self.direct.view(&from, &name);
        let text = match (on, view.state.as_str()) {
            (true, "offered") => view.detail,
            (true, _) => format!(
                "{name} agreed to direct mode too: connecting; each of you can see the other's                  network address"
            ),
            (false, _) => format!("{name} turned direct mode off: messages go through the mixnet"),
        };
        self.direct_history(now, from, text);
    }

    fn direct_history(&mut self, now: Time, contact: Address, text: String) {
        let name = self.name_of(&contact);
        self.history(HistoryEntry {
            seq: 0,
            at: now.0,
            kind: "direct".into(),
            contact: contact.to_string(),
            name,
            id: None,
            text: Some(text),
            state: None,
            position: None,
        });
    }

    /// This node's card changed: contacts it was offered to get the new one.
    fn set_direct_card(&mut self, now: Time, card: Card) {
        let mut card = card;
        card.addrs.truncate(crate::direct::MAX_CARD_ADDRS);
        if self.direct.card.as_ref() == Some(&card) {
            return;
        }
        self.direct.card = Some(card);
        for contact in self.direct.mine() {
            if let Ok(letter) = self.direct.set_mine(&mut self.batch, contact, true)
                && let Err(e) = self
                    .messenger
                    .send_community(now, &contact, letter.encode())
            {
                tracing::debug!(error = %e, "cannot send the new direct-mode card");
            }
        }
    }

    /// The host's report on a direct link.
    fn direct_link(&mut self, now: Time, peer: Vec<u8>, state: String, detail: String) {
        let Some(contact) = self.direct.contact_of(&peer) else {
            return;
        };
        if !self.direct.set_link(peer, state.clone(), detail) {
            return;
        }
        // Shown when it matters to the user: the connection is up, or it
        // failed and the mixnet carries the messages.
        if matches!(state.as_str(), "direct" | "failed") {
            let name = self.name_of(&contact);
            let text = self.direct.view(&contact, &name).detail;
            self.direct_history(now, contact, text);
        }
    }

    /// The outcome of a direct send.
    fn direct_sent(&mut self, now: Time, id: u64, delivered: bool) {
        let Some(p) = self.direct_pending.remove(&id) else {
            return;
        };
        if delivered {
            self.stats.direct_out += 1;
            if p.acknowledged {
                // The peer's node took it, as a mixnet acknowledgement
                // would say.
                let mixnet_id: [u8; 16] = self.rng.random();
                self.messenger.handle_transmitted(p.tag, mixnet_id);
                self.messenger.handle_mixnet_delivered(&mixnet_id);
            }
            return;
        }
        self.stats.direct_fallbacks += 1;
        let Some(client) = &mut self.client else {
            self.messenger.handle_transmit_failed(p.tag);
            return;
        };
        if p.acknowledged {
            match client.send(now, &p.to, &p.body) {
                Ok(mixnet_id) => self.messenger.handle_transmitted(p.tag, mixnet_id),
                Err(e) => {
                    tracing::warn!(error = %e, "the mixnet client refused a message");
                    self.messenger.handle_transmit_failed(p.tag);
                }
            }
        } else if let Err(e) = client.send_unacknowledged(now, &p.to, &p.body) {
            tracing::debug!(error = %e, "the mixnet client refused a receipt");
        }
    }

    fn name_of(&self, address: &Address) -> String {
        self.messenger
            .contact(address)
            .map(|c| c.name.clone())
            .unwrap_or_else(|| address.short())
    }

    fn history(&mut self, mut entry: HistoryEntry) {
        self.history_seq += 1;
        entry.seq = self.history_seq;
        if let Ok(bytes) = serde_json::to_vec(&entry) {
            self.batch.put(
                Table::History,
                self.history_seq.to_be_bytes().to_vec(),
                bytes,
            );
        }
        self.shown.push(entry);
    }

    fn record(&mut self, now: Time, event: MessengerEvent) {
        let entry = |kind: &str, contact: &Address, name: String| HistoryEntry {
            seq: 0,
            at: now.0,
            kind: kind.into(),
            contact: contact.to_string(),
            name,
            id: None,
            text: None,
            state: None,
            position: None,
        };
        match event {
            MessengerEvent::ContactRequest { from, name, text } => {
                let mut e = entry("request", &from, name);
                e.text = text;
                self.history(e)
            }
            MessengerEvent::ContactAccepted { contact } => {
                let e = entry("accepted", &contact, self.name_of(&contact));
                self.history(e)
            }
            MessengerEvent::ContactDenied { contact } => {
                let e = entry("denied", &contact, self.name_of(&contact));
                self.history(e)
            }
            MessengerEvent::KeyChanged { contact } => {
                let e = entry("key-changed", &contact, self.name_of(&contact));
                self.history(e)
            }
            MessengerEvent::UnsafeVersion { contact, version } => {
                let mut e = entry("unsafe-version", &contact, self.name_of(&contact));
                e.text = Some(version);
                self.history(e)
            }
            MessengerEvent::LookupFailed { contact } => {
                let e = entry("lookup-failed", &contact, self.name_of(&contact));
                self.history(e)
            }
            MessengerEvent::Message {
                from,
                id,
                seq,
                text,
                ..
            } => {
                let mut e = entry("message", &from, self.name_of(&from));
                e.id = Some(hex(&id));
                e.text = Some(text);
                e.position = Some(seq);
                self.history(e)
            }
            MessengerEvent::Community { from, body, .. } => self.letters.push((from, body)),
            MessengerEvent::MessageState { id, to, state } => {
                let key = hex(&id);
                self.set_sent_state(now, &key, state);
                if matches!(state, MessageState::Delivered | MessageState::Failed) {
                    let mut e = entry("state", &to, self.name_of(&to));
                    e.id = Some(key);
                    e.state = Some(state.as_str().into());
                    self.history(e);
                }
            }
        }
    }

    /// Updates the stored record of a sent message (in this batch, or in
    /// storage).
    fn set_sent_state(&mut self, now: Time, key: &str, state: MessageState) {
        let update = |bytes: &[u8]| -> Option<Vec<u8>> {
            let mut sent: SentMessage = serde_json::from_slice(bytes).ok()?;
            sent.state = state.as_str().into();
            sent.changed = now.0;
            serde_json::to_vec(&sent).ok()
        };
        if let Some(bytes) = self.batch.get_mut(Table::Sent, key.as_bytes()) {
            if let Some(updated) = update(bytes) {
                *bytes = updated;
            }
            return;
        }
        match self.storage.get(Table::Sent, key.as_bytes()) {
            Ok(Some(bytes)) => {
                if let Some(updated) = update(&bytes) {
                    self.batch
                        .put(Table::Sent, key.as_bytes().to_vec(), updated);
                }
            }
            Ok(None) => {}
            Err(e) => {
                self.stats.storage_errors += 1;
                tracing::warn!(error = %e, "a sent message's state was not updated");
            }
        }
    }

    fn contact_address(&self, name: &str) -> Result<Address, String> {
        self.messenger
            .find_contact(name)
            .map(|c| c.address)
            .ok_or_else(|| format!("no contact named {name:?} (`chainmail contact list`)"))
    }

    fn view(m: &Messenger, direct: &Direct, c: &chainmail_session::Contact) -> ContactView {
        ContactView {
            direct: direct.view(&c.address, &c.name),
            unsafe_version: m.runs_unsafe_version(c),
            name: c.name.clone(),
            address: c.address.to_string(),
            state: c.state.as_str().into(),
            verified: c.verified,
            key_changed: c.key_changed,
            client_version: c.client_version.clone(),
            request_text: c.request_text.clone(),
        }
    }

    /// A user's request (CLI, API, a page); what it changed goes out with
    /// the outputs that follow.
    pub fn request(&mut self, now: Time, request: AccountRequest) -> Result<Response, String> {
        let result = self.answer(now, request);
        self.flush(now);
        result
    }

    fn answer(&mut self, now: Time, request: AccountRequest) -> Result<Response, String> {
        let m = &mut self.messenger;
        match request {
            AccountRequest::Community { community } => {
                self.community(now, community).map(Response::Community)
            }
            AccountRequest::AdvisoryPublish { advisory } => {
                let bytes = crate::hex::unhex(&advisory)
                    .ok_or_else(|| "the advisory must be hex".to_string())?;
                if self.client.is_none() {
                    return Err(
                        "the mixnet client has no providers yet (no directory): the \
                                advisory travels through the mixnet"
                            .into(),
                    );
                }
                let sequence = self.apply_advisory(&bytes)?;
                let key = chainmail_session::advisory_dht_key(&self.config.messenger.network);
                let put = Errand::Put {
                    key: key.to_vec(),
                    value: bytes,
                };
                let client = self.client.as_mut().ok_or("no mixnet client")?;
                if !self.errands.start(now, client, put, Purpose::Publish) {
                    return Err("the advisory could not be queued; try again".into());
                }
                Ok(Response::AdvisoryPublished(AdvisoryPublished { sequence }))
            }
            AccountRequest::Whoami => Ok(Response::Whoami(Whoami {
                address: m.address().to_string(),
                name: m.name().to_owned(),
                olm_identity_key: hex(&m.curve_key()),
            })),
            AccountRequest::ExportIdentity => Ok(Response::IdentityExport(IdentityExport {
                identity_seed: hex(&m.account().identity_seed()[..]),
            })),
            AccountRequest::ContactAdd {
                address,
                name,
                message,
            } => {
                let address: Address = address.parse().map_err(|e| format!("{e}"))?;
                m.add_contact(now, address, &name, message.as_deref())
                    .map_err(|e| e.to_string())?;
                Ok(Response::Contact(ContactChange {
                    name,
                    address: Some(address.to_string()),
                    state: "looking-up".into(),
                }))
            }
            AccountRequest::ContactList => Ok(Response::Contacts(
                m.contacts()
                    .map(|c| Self::view(m, &self.direct, c))
                    .collect(),
            )),
            AccountRequest::ContactRequests => Ok(Response::Contacts(
                m.contacts()
                    .filter(|c| c.state == ContactState::RequestReceived)
                    .map(|c| Self::view(m, &self.direct, c))
                    .collect(),
            )),
            AccountRequest::ContactDirect { name, on } => self.contact_direct(now, &name, on),
            AccountRequest::ContactAccept { name } => {
                self.answer_contact(name, |m, a| m.accept(now, a).map(|()| "accepted"))
            }
            AccountRequest::ContactDeny { name } => {
                self.answer_contact(name, |m, a| m.deny(now, a).map(|()| "denied"))
            }
            AccountRequest::ContactIgnore { name } => {
                self.answer_contact(name, |m, a| m.ignore(a).map(|()| "ignored"))
            }
            AccountRequest::Send { to, text } => {
                let a = self.contact_address(&to)?;
                let id = self
                    .messenger
                    .send_text(now, &a, &text)
                    .map_err(|e| e.to_string())?;
                let sent = SentMessage {
                    id: hex(&id),
                    to: a.to_string(),
                    name: self.name_of(&a),
                    text,
                    state: self
                        .messenger
                        .message_state(&id)
                        .unwrap_or(MessageState::Sent)
                        .as_str()
                        .into(),
                    at: now.0,
                    changed: now.0,
                };
                let bytes = serde_json::to_vec(&sent).map_err(|e| e.to_string())?;
                self.batch
                    .put(Table::Sent, sent.id.clone().into_bytes(), bytes);
                Ok(Response::Queued(Queued {
                    id: sent.id,
                    state: sent.state,
                }))
            }
            AccountRequest::Inbox { after } => {
                // Only the entries asked for are read: positions are
                // consecutive from 1.
                let mut out = Vec::new();
                for seq in after.saturating_add(1)..=self.history_seq {
                    let bytes = match self.batch.get(Table::History, &seq.to_be_bytes()) {
                        Some(b) => Some(b.clone()),
                        None => self
                            .storage
                            .get(Table::History, &seq.to_be_bytes())
                            .map_err(|e| e.to_string())?,
                    };
                    if let Some(entry) =
                        bytes.and_then(|b| serde_json::from_slice::<HistoryEntry>(&b).ok())
                    {
                        out.push(entry);
                    }
                }
                Ok(Response::History(out))
            }
            AccountRequest::Sent => {
                let mut out: Vec<SentMessage> = self
                    .storage
                    .list(Table::Sent)
                    .map_err(|e| e.to_string())?
                    .iter()
                    .filter_map(|(_, v)| serde_json::from_slice(v).ok())
                    .collect();
                out.sort_by_key(|s| s.at);
                Ok(Response::Sent(out))
            }
            AccountRequest::Verify { name, mark } => {
                let a = self.contact_address(&name)?;
                let number = self.messenger.safety_number(&a).ok_or_else(|| {
                    "their keys are not known yet: wait for their answer".to_string()
                })?;
                if mark {
                    self.messenger
                        .set_verified(&a, true)
                        .map_err(|e| e.to_string())?;
                }
                let c = self
                    .messenger
                    .contact(&a)
                    .ok_or_else(|| "no such contact".to_string())?;
                Ok(Response::SafetyNumber(SafetyNumberView {
                    name: c.name.clone(),
                    safety_number: number.to_string(),
                    lines: number.lines().to_vec(),
                    verified: c.verified,
                    key_changed: c.key_changed,
                }))
            }
        }
    }

    /// Does `what` to the contact named `name`; its new state.
    fn answer_contact(
        &mut self,
        name: String,
        what: impl FnOnce(
            &mut Messenger,
            &Address,
        ) -> Result<&'static str, chainmail_session::SessionError>,
    ) -> Result<Response, String> {
        let address = self.contact_address(&name)?;
        let state = what(&mut self.messenger, &address).map_err(|e| e.to_string())?;
        Ok(Response::Contact(ContactChange {
            name,
            address: None,
            state: state.into(),
        }))
    }

    fn community(&mut self, now: Time, request: CommunityRequest) -> Result<Value, String> {
        let invites: Vec<InviteView> = self
            .storage
            .list(Table::Invites)
            .map_err(|e| e.to_string())?
            .iter()
            .filter_map(|(_, v)| serde_json::from_slice(v).ok())
            .collect();
        self.hub.handle(
            now.0,
            &mut self.messenger,
            &invites,
            &mut self.batch,
            request,
        )
    }
}

/// The last position of the history: positions are consecutive from 1, so
/// a search finds it in O(log n) reads.
fn last_position(storage: &impl Storage) -> Result<u64, StorageError> {
    let has = |n: u64| -> Result<bool, StorageError> {
        Ok(storage.get(Table::History, &n.to_be_bytes())?.is_some())
    };
    if !has(1)? {
        return Ok(0);
    }
    let mut high = 2u64;
    while has(high)? {
        high = high.saturating_mul(2);
    }
    // `low` is there, `high` is not.
    let mut low = high / 2;
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if has(mid)? {
            low = mid;
        } else {
            high = mid;
        }
    }
    Ok(low)
}
