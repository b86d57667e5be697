//! The agent's communities: each community the account belongs to (a
//! `chainmail-chain` core), its blocks and secrets in the agent's storage,
//! invites and join requests through the end-to-end sessions, and what the
//! driver must do on the community swarm (gossip, sync) or through the
//! mixnet (rendezvous).
//!
//! Tables: `communities` (one JSON record per community: genesis,
//! member secret, community keys, unsent posts, known peers, open invites),
//! `community-blocks` (community id ‖ block id → block), `invites`
//! (invitations received, by token).

use std::collections::{BTreeMap, HashMap, VecDeque};

use chainmail_chain::{
    Block, Community, Config, Event, Genesis, Hash, Letter, LogWhat, MemberId, MemberSecret,
    Output, PeerEntry, Policy, Received, Role, Saved, SyncRequest, SyncResponse, merge_peers,
};
use chainmail_session::{Address, Messenger};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::hex::{hex, unhex, unhex_array};
use crate::storage::{Batch, Storage, StorageError, Table};

/// Whether a gossiped message is relayed: valid input is accepted, input
/// that cannot count any more is ignored, refused input is rejected (and
/// its sender scored down by the swarm).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: relay it.
    Accept,
    /// Not wrong, but of no use: do not relay.
    Ignore,
    /// Invalid: do not relay, and count it against the sender.
    Reject,
}

/// First byte of a topic message: a record or a block follows.
const TOPIC_RECORD: u8 = 1;
/// First byte of a topic message carrying a block.
const TOPIC_BLOCK: u8 = 2;
/// How often a member asks a peer for blocks it may have missed.
const SYNC_EVERY_MS: u64 = 10_000;
/// … while waiting to be admitted.
const JOIN_SYNC_EVERY_MS: u64 = 2_000;
/// Failed posts kept to show, per community.
const MAX_FAILED_POSTS: usize = 32;
/// How often the rendezvous record is refreshed.
const RENDEZVOUS_EVERY_MS: u64 = 120_000;
/// Most blocks in one import request (the CLI sends a file in parts).
pub const MAX_IMPORT_BLOCKS: usize = 256;
/// Length of a rendezvous period.
const RENDEZVOUS_PERIOD_MS: u64 = 3_600_000;

/// What the communities need done: on the swarm, or a rendezvous
/// (which the agent carries through the mixnet).
#[derive(Debug)]
pub(crate) enum NetAction {
    Swarm(SwarmAction),
    /// Merge our entry into the rendezvous record and look the others up.
    Rendezvous(Rendezvous),
}

/// One period's rendezvous record of a community: read, then ours merged
/// in and published again.
#[derive(Debug)]
pub(crate) struct Rendezvous {
    /// The community.
    pub(crate) community: Hash,
    /// The record's DHT key.
    pub(crate) key: Hash,
    /// The secret the record is sealed with.
    pub(crate) secret: Hash,
    /// The rendezvous period.
    pub(crate) period: u64,
    /// Our own entry, merged in.
    pub(crate) me: Option<PeerEntry>,
}

/// Community swarm traffic: gossip on a community's topic and block sync
/// with other members' nodes. Unlike everything else the agent sends, it
/// goes straight to other members' nodes and so reveals this node (peer id
/// and addresses) to the community's members: a driver carries it out only
/// where the user accepted that (DESIGN.md §7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwarmAction {
    /// Join a community's topic.
    Subscribe(String),
    /// Leave a community's topic.
    Unsubscribe(String),
    /// Gossip `bytes` on `topic`.
    Publish {
        /// The topic.
        topic: String,
        /// A record or block, with its kind byte.
        bytes: Vec<u8>,
    },
    /// Ask `peer` for blocks with `request`; the answer goes to
    /// [`crate::Input::SyncAnswer`].
    Sync {
        /// Which community.
        community: Hash,
        /// The member's node to ask.
        peer: PeerEntry,
        /// The encoded sync request.
        request: Vec<u8>,
    },
}

#[derive(Serialize, Deserialize, Default)]
struct StoredPeer {
    peer: String,
    addrs: Vec<String>,
    published: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredCommunity {
    genesis: String,
    secret: String,
    keys: Vec<(String, String)>,
    pending: Vec<String>,
    peers: Vec<StoredPeer>,
    /// Invitations we sent: token → invitee address.
    invited: Vec<(String, String)>,
    /// Our name in the community (for the join request).
    name: String,
    /// Posts of ours that could not be made (text, why), newest last.
    #[serde(default)]
    failed: Vec<(String, String)>,
}

/// An invitation we received.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InviteView {
    /// The invitation's token (hex).
    pub token: String,
    /// The community's id (hex).
    pub community: String,
    /// The community's name.
    pub name: String,
    /// Who invited us (address).
    pub from: String,
    /// Their name in our contacts.
    pub from_name: String,
    /// When it arrived (ms since the Unix epoch).
    pub at: u64,
    /// The community's genesis (hex).
    pub genesis: String,
    /// Members' nodes to sync from: peer id (hex) and addresses.
    pub peers: Vec<(String, Vec<String>)>,
    /// Whether we asked to join.
    pub joined: bool,
}

struct Entry {
    core: Community,
    name: String,
    peers: Vec<PeerEntry>,
    invited: Vec<([u8; 16], Address)>,
    topic: Option<String>,
    next_sync: u64,
    next_rendezvous: u64,
    /// Blocks not yet written to the vault.
    unsaved: Vec<Block>,
    dirty: bool,
    /// Refused input (network, imports, join letters) by kind, for
    /// /metrics.
    refused: BTreeMap<&'static str, u64>,
    /// Posts of ours that could not be made (text, why), newest last,
    /// at most `MAX_FAILED_POSTS`: shown by `community list`.
    failed: Vec<(String, String)>,
}

impl Entry {
    /// A community as the hub keeps it, due for a sync and a rendezvous.
    fn new(core: Community, name: String, peers: Vec<PeerEntry>, now_ms: u64) -> Entry {
        Entry {
            core,
            name,
            peers,
            invited: Vec::new(),
            topic: None,
            next_sync: now_ms,
            next_rendezvous: now_ms,
            unsaved: Vec::new(),
            dirty: true,
            refused: BTreeMap::new(),
            failed: Vec::new(),
        }
    }

    /// A block from the swarm, a sync answer or an import: what it
    /// stored goes to the vault with the next write; a refusal is
    /// counted.
    fn take_block(
        &mut self,
        now_ms: u64,
        bytes: &[u8],
    ) -> Result<chainmail_chain::Insertion, chainmail_chain::ChainError> {
        let result = self.core.handle_block(now_ms, bytes);
        match &result {
            Ok(ins) => {
                for id in &ins.stored {
                    if let Some(block) = self.core.chain().block(id) {
                        self.unsaved.push(block.clone());
                    }
                }
            }
            Err(err) => self.refuse(err),
        }
        result
    }

    fn refuse(&mut self, err: &chainmail_chain::ChainError) {
        *self.refused.entry(err.kind()).or_default() += 1;
        // The rule broken, never content or ids.
        tracing::info!(kind = err.kind(), error = %err, "community input refused");
    }
}

/// All communities of the account.
pub(crate) struct Hub {
    communities: HashMap<Hash, Entry>,
    topic_prefix: String,
    actions: VecDeque<NetAction>,
    writes: Batch,
    rng: StdRng,
    /// Our own peer entry (peer id and listen addresses).
    pub(crate) me: Option<PeerEntry>,
    /// Community letters from contacts that were malformed or named a
    /// community we are not in.
    letters_refused: u64,
}

fn config() -> Config {
    Config::default()
}

fn peer_to_stored(p: &PeerEntry) -> StoredPeer {
    StoredPeer {
        peer: hex(&p.peer),
        addrs: p.addrs.clone(),
        published: p.published,
    }
}

fn peer_from_stored(p: &StoredPeer) -> Option<PeerEntry> {
    Some(PeerEntry {
        peer: unhex(&p.peer)?,
        addrs: p.addrs.clone(),
        published: p.published,
    })
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn role_name(r: Option<Role>) -> &'static str {
    r.map_or("gone", Role::as_str)
}

impl Hub {
    /// The communities stored in the account's vault.
    pub(crate) fn load(
        storage: &impl Storage,
        topic_prefix: String,
        now_ms: u64,
        seed: u64,
    ) -> Result<Hub, StorageError> {
        let damaged = |what: &str| StorageError(format!("a stored community's {what} is damaged"));
        let mut hub = Hub {
            communities: HashMap::new(),
            topic_prefix,
            actions: VecDeque::new(),
            writes: Batch::default(),
            rng: StdRng::seed_from_u64(seed),
            me: None,
            letters_refused: 0,
        };
        let mut blocks: HashMap<Hash, Vec<Block>> = HashMap::new();
        for (key, value) in storage.list(Table::CommunityBlocks)? {
            if key.len() == 64
                && let Ok(block) = Block::decode(&value)
            {
                let mut id = [0u8; 32];
                id.copy_from_slice(&key[..32]);
                blocks.entry(id).or_default().push(block);
            }
        }
        for (_, value) in storage.list(Table::Communities)? {
            let stored: StoredCommunity =
                serde_json::from_slice(&value).map_err(|_| damaged("record"))?;
            let genesis = Genesis::decode(&unhex(&stored.genesis).unwrap_or_default())
                .map_err(|_| damaged("genesis"))?;
            let secret = unhex_array::<64>(&stored.secret)
                .map(|b| MemberSecret::from_bytes(&b))
                .ok_or_else(|| damaged("key"))?;
            let saved = Saved {
                secret,
                keys: stored
                    .keys
                    .iter()
                    .filter_map(|(id, k)| Some((unhex_array(id)?, unhex_array(k)?)))
                    .collect(),
                pending: stored.pending.clone(),
            };
            let id = genesis.id();
            let core = Community::restore(
                config(),
                hub.rng.random(),
                genesis,
                saved,
                blocks.remove(&id).unwrap_or_default(),
                now_ms,
            );
            let peers = stored.peers.iter().filter_map(peer_from_stored).collect();
            let mut entry = Entry::new(core, stored.name, peers, now_ms);
            entry.invited = stored
                .invited
                .iter()
                .filter_map(|(t, a)| Some((unhex_array(t)?, a.parse().ok()?)))
                .collect();
            entry.failed = stored.failed;
            entry.dirty = false;
            hub.communities.insert(id, entry);
        }
        for id in hub.communities.keys().copied().collect::<Vec<_>>() {
            hub.after(id, now_ms);
        }
        Ok(hub)
    }

    /// Work to do on the swarm or through the mixnet.
    /// Whether the account belongs to any community (its node then takes
    /// other members' connections, relayed through their providers).
    pub(crate) fn in_any(&self) -> bool {
        !self.communities.is_empty()
    }

    pub(crate) fn poll_action(&mut self) -> Option<NetAction> {
        self.actions.pop_front()
    }

    /// Writes for the next batch.
    pub(crate) fn take_writes(&mut self) -> Batch {
        for (id, e) in &mut self.communities {
            for b in e.unsaved.drain(..) {
                let mut key = id.to_vec();
                key.extend_from_slice(&b.id());
                self.writes.put(Table::CommunityBlocks, key, b.encode());
            }
            if e.dirty {
                e.dirty = false;
                let saved = e.core.save();
                let stored = StoredCommunity {
                    genesis: hex(&e.core.chain().genesis().encode()),
                    secret: hex(&saved.secret.to_bytes()[..]),
                    keys: saved.keys.iter().map(|(id, k)| (hex(id), hex(k))).collect(),
                    pending: saved.pending,
                    peers: e.peers.iter().map(peer_to_stored).collect(),
                    invited: e
                        .invited
                        .iter()
                        .map(|(t, a)| (hex(t), a.to_string()))
                        .collect(),
                    name: e.name.clone(),
                    failed: e.failed.clone(),
                };
                if let Ok(json) = serde_json::to_vec(&stored) {
                    self.writes.put(Table::Communities, id.to_vec(), json);
                }
            }
        }
        std::mem::take(&mut self.writes)
    }

    /// When a community needs the runtime next.
    pub(crate) fn poll_timeout(&self) -> Option<u64> {
        self.communities
            .values()
            .flat_map(|e| [e.core.poll_timeout(), Some(e.next_sync)])
            .flatten()
            .min()
    }

    /// Timers: block production, republication, sync, rendezvous.
    pub(crate) fn handle_timeout(&mut self, now_ms: u64) {
        let ids: Vec<Hash> = self.communities.keys().copied().collect();
        for id in ids {
            let Some(e) = self.communities.get_mut(&id) else {
                continue;
            };
            if e.core.poll_timeout().is_some_and(|t| t <= now_ms) {
                e.core.handle_timeout(now_ms);
            }
            if now_ms >= e.next_sync {
                let admitted = e.core.is_member() && e.core.has_current_key();
                e.next_sync = now_ms
                    + if admitted {
                        SYNC_EVERY_MS
                    } else {
                        JOIN_SYNC_EVERY_MS
                    };
                if !e.peers.is_empty() && (e.core.is_member() || e.core.chain().height() == 0) {
                    let peer = e.peers[self.rng.random_range(0..e.peers.len())].clone();
                    self.actions.push_back(NetAction::Swarm(SwarmAction::Sync {
                        community: id,
                        peer,
                        request: e.core.sync_request(now_ms),
                    }));
                }
            }
            if now_ms >= e.next_rendezvous {
                e.next_rendezvous = now_ms + RENDEZVOUS_EVERY_MS;
                if let Some(secret) = e.core.rendezvous_secret() {
                    let period = now_ms / RENDEZVOUS_PERIOD_MS;
                    for p in [period, period + 1] {
                        self.actions.push_back(NetAction::Rendezvous(Rendezvous {
                            community: id,
                            key: chainmail_chain::rendezvous_key(&id, &secret, p),
                            secret,
                            period: p,
                            me: self.me.clone(),
                        }));
                    }
                }
            }
            self.after(id, now_ms);
        }
    }

    /// After anything happened to a community: outputs to the network,
    /// events, topic changes, what to store.
    fn after(&mut self, id: Hash, now_ms: u64) {
        let Some(e) = self.communities.get_mut(&id) else {
            return;
        };
        let topic = e
            .core
            .rendezvous_secret()
            .filter(|_| e.core.is_member())
            .map(|s| format!("{}{}", self.topic_prefix, chainmail_chain::topic_suffix(&s)));
        if topic != e.topic {
            // A new key means a new topic. Members that missed the block
            // that rotated it (it is gossiped on the new topic) get it by
            // their next sync, at most SYNC_EVERY_MS later.
            if let Some(old) = e.topic.take() {
                self.actions
                    .push_back(NetAction::Swarm(SwarmAction::Unsubscribe(old)));
            }
            if let Some(new) = &topic {
                self.actions
                    .push_back(NetAction::Swarm(SwarmAction::Subscribe(new.clone())));
                e.next_rendezvous = now_ms;
            }
            e.topic = topic;
        }
        while let Some(out) = e.core.poll_output() {
            match out {
                Output::Record(bytes) => {
                    e.dirty = true;
                    if let Some(topic) = &e.topic {
                        let mut msg = vec![TOPIC_RECORD];
                        msg.extend_from_slice(&bytes);
                        self.actions
                            .push_back(NetAction::Swarm(SwarmAction::Publish {
                                topic: topic.clone(),
                                bytes: msg,
                            }));
                    }
                }
                Output::Block(bytes) => {
                    if let Ok(b) = Block::decode(&bytes) {
                        e.unsaved.push(b);
                    }
                    e.dirty = true;
                    if let Some(topic) = &e.topic {
                        let mut msg = vec![TOPIC_BLOCK];
                        msg.extend_from_slice(&bytes);
                        self.actions
                            .push_back(NetAction::Swarm(SwarmAction::Publish {
                                topic: topic.clone(),
                                bytes: msg,
                            }));
                    }
                }
                Output::Fetch(ids) => {
                    if !e.peers.is_empty() {
                        let peer = e.peers[self.rng.random_range(0..e.peers.len())].clone();
                        self.actions.push_back(NetAction::Swarm(SwarmAction::Sync {
                            community: id,
                            peer,
                            request: e.core.fetch_request(now_ms, ids),
                        }));
                    }
                }
            }
        }
        while let Some(event) = e.core.poll_event() {
            e.dirty = true;
            match event {
                Event::Admitted | Event::KeyChanged => e.next_sync = now_ms,
                Event::PostFailed { text, reason } => {
                    // The reason only: never the text.
                    tracing::warn!(reason, "a community post could not be made again");
                    if e.failed.len() >= MAX_FAILED_POSTS {
                        e.failed.remove(0);
                    }
                    e.failed.push((text, reason.to_owned()));
                }
                Event::Expelled => {}
            }
        }
    }

    /// A message on a community topic, from `source` (peer id bytes), and
    /// whether to relay it: valid input is accepted, input that raced its
    /// blocks is accepted while it may still count (its anchor is not here
    /// yet) and ignored once it cannot (a duplicate, or stale), refused
    /// input is rejected.
    pub(crate) fn handle_topic(
        &mut self,
        now_ms: u64,
        topic: &str,
        source: Vec<u8>,
        bytes: &[u8],
    ) -> Verdict {
        let Some((id, e)) = self
            .communities
            .iter_mut()
            .find(|(_, e)| e.topic.as_deref() == Some(topic))
        else {
            return Verdict::Ignore;
        };
        let id = *id;
        let verdict = match bytes.split_first() {
            Some((&TOPIC_RECORD, rest)) => match e.core.handle_record(now_ms, rest) {
                Ok(Received::Pooled(_) | Received::Early) => Verdict::Accept,
                Ok(Received::Duplicate | Received::Stale) => Verdict::Ignore,
                Err(err) => {
                    e.refuse(&err);
                    Verdict::Reject
                }
            },
            // take_block counts a refusal.
            Some((&TOPIC_BLOCK, rest)) => match e.take_block(now_ms, rest) {
                Ok(ins) if !ins.stored.is_empty() || ins.missing_parent.is_some() => {
                    Verdict::Accept
                }
                Ok(_) => Verdict::Ignore,
                Err(_) => Verdict::Reject,
            },
            _ => {
                e.refuse(&chainmail_chain::ChainError::Malformed {
                    what: "topic message",
                    reason: "unknown kind",
                });
                Verdict::Reject
            }
        };
        // Whoever relays valid community traffic is a member node.
        if verdict != Verdict::Reject && !e.peers.iter().any(|p| p.peer == source) {
            merge_peers(
                &mut e.peers,
                PeerEntry {
                    peer: source,
                    addrs: Vec::new(),
                    published: now_ms,
                },
            );
            e.dirty = true;
        }
        self.after(id, now_ms);
        verdict
    }

    /// A sync request from a peer: the response bytes.
    pub(crate) fn answer_sync(&mut self, now_ms: u64, bytes: &[u8], max: usize) -> Vec<u8> {
        let Ok(request) = SyncRequest::decode(bytes) else {
            return SyncResponse::Unknown.encode();
        };
        match self
            .communities
            .values_mut()
            .find(|e| e.core.sync_tag() == request.tag)
        {
            Some(e) => e.core.answer_sync(now_ms, &request, max).encode(),
            None => SyncResponse::Unknown.encode(),
        }
    }

    /// The answer to our sync request.
    pub(crate) fn handle_sync_response(&mut self, now_ms: u64, id: Hash, bytes: &[u8]) {
        let Some(e) = self.communities.get_mut(&id) else {
            return;
        };
        let mut more = false;
        match SyncResponse::decode(bytes) {
            Ok(SyncResponse::Blocks(blocks)) => {
                for b in &blocks {
                    if let Ok(ins) = e.take_block(now_ms, b) {
                        more |= !ins.stored.is_empty();
                    }
                }
                e.dirty |= more;
            }
            Ok(_) => {}
            Err(err) => e.refuse(&err),
        }
        if more {
            // Ask again at once: the chain may be longer than one answer.
            e.next_sync = now_ms;
        }
        self.after(id, now_ms);
    }

    /// Peers found in the rendezvous record.
    pub(crate) fn learn_peers(&mut self, id: Hash, peers: Vec<PeerEntry>) {
        let me = self.me.as_ref().map(|m| m.peer.clone());
        if let Some(e) = self.communities.get_mut(&id) {
            for p in peers {
                if Some(&p.peer) != me.as_ref() {
                    merge_peers(&mut e.peers, p);
                }
            }
            e.dirty = true;
        }
    }

    /// Refused community input by kind, summed over the communities.
    pub(crate) fn refused(&self) -> BTreeMap<&'static str, u64> {
        let mut all = BTreeMap::new();
        if self.letters_refused > 0 {
            all.insert("letter", self.letters_refused);
        }
        for e in self.communities.values() {
            for (kind, n) in &e.refused {
                *all.entry(*kind).or_default() += n;
            }
        }
        all
    }

    /// A core statistic summed over the communities.
    fn stat(&self, f: impl Fn(&chainmail_chain::Stats) -> u64) -> u64 {
        self.communities.values().map(|e| f(e.core.stats())).sum()
    }

    /// Gossiped records that raced their blocks (duplicate, early, stale),
    /// summed over the communities: ordinary gossip, not refusals.
    pub(crate) fn out_of_date(&self) -> BTreeMap<&'static str, u64> {
        BTreeMap::from([
            ("duplicate", self.stat(|s| s.records_duplicate)),
            ("early", self.stat(|s| s.records_early)),
            ("stale", self.stat(|s| s.records_stale)),
        ])
    }

    /// Our own posts and actions that could not count any more and could
    /// not be made again, for /metrics.
    pub(crate) fn own_dropped(&self) -> BTreeMap<&'static str, u64> {
        BTreeMap::from([
            ("post", self.stat(|s| s.posts_failed)),
            ("action", self.stat(|s| s.actions_dropped)),
        ])
    }

    /// Letters from contacts: invitations (stored; their token and the
    /// community's name are returned, for the inbox) and join requests.
    pub(crate) fn handle_letter(
        &mut self,
        now_ms: u64,
        writes: &mut Batch,
        from: Address,
        from_name: String,
        body: &[u8],
    ) -> Option<(String, String)> {
        match Letter::decode(body) {
            Ok(Letter::Invite {
                genesis,
                peers,
                token,
            }) => {
                let Ok(g) = Genesis::decode(&genesis) else {
                    self.letters_refused += 1;
                    return None;
                };
                let view = InviteView {
                    token: hex(&token),
                    community: hex(&g.id()),
                    name: g.name.clone(),
                    from: from.to_string(),
                    from_name,
                    at: now_ms,
                    genesis: hex(&genesis),
                    peers: peers
                        .iter()
                        .map(|p| (hex(&p.peer), p.addrs.clone()))
                        .collect(),
                    joined: false,
                };
                let json = serde_json::to_vec(&view).ok()?;
                writes.put(Table::Invites, token.to_vec(), json);
                Some((view.token, view.name))
            }
            Ok(Letter::Join {
                community,
                token,
                member,
                name,
            }) => {
                let Some(e) = self.communities.get_mut(&community) else {
                    self.letters_refused += 1;
                    return None;
                };
                let Some(i) = e
                    .invited
                    .iter()
                    .position(|(t, a)| *t == token && *a == from)
                else {
                    *e.refused.entry("unknown_invitation").or_default() += 1;
                    return None;
                };
                e.invited.remove(i);
                e.dirty = true;
                if let Err(err) = e.core.add(now_ms, member, &name) {
                    tracing::debug!(error = %err, "join request refused");
                }
                self.after(community, now_ms);
                None
            }
            Err(_) => {
                self.letters_refused += 1;
                None
            }
        }
    }

    fn find(&self, name_or_id: &str) -> Result<Hash, String> {
        let q = name_or_id.to_lowercase();
        let found: Vec<Hash> = self
            .communities
            .iter()
            .filter(|(id, e)| hex(&id[..]).starts_with(&q) || e.core.name() == name_or_id)
            .map(|(id, _)| *id)
            .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(format!(
                "no community {name_or_id:?} (`chainmail community list`)"
            )),
            _ => Err(format!(
                "{name_or_id:?} names more than one community: give more of its id"
            )),
        }
    }

    fn member(&self, id: &Hash, name_or_id: &str) -> Result<MemberId, String> {
        let e = &self.communities[id];
        let q = name_or_id.to_lowercase();
        let found: Vec<MemberId> = e
            .core
            .state()
            .members()
            .iter()
            .filter(|(m, info)| info.name == name_or_id || hex(&m[..]).starts_with(&q))
            .map(|(m, _)| *m)
            .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] if q.len() == 64 => unhex_array(&q).ok_or_else(|| "bad member id".into()),
            [] => Err(format!(
                "no member {name_or_id:?} (`chainmail community members`)"
            )),
            _ => Err(format!(
                "{name_or_id:?} names more than one member: give their id"
            )),
        }
    }

    fn record_id(&self, id: &Hash, prefix: &str) -> Result<Hash, String> {
        let q = prefix.to_lowercase();
        let found: Vec<Hash> = self.communities[id]
            .core
            .log(0)
            .into_iter()
            .map(|e| e.record)
            .filter(|r| hex(&r[..]).starts_with(&q))
            .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(format!("no record {prefix:?} (`chainmail community log`)")),
            _ => Err(format!("{prefix:?} names more than one record")),
        }
    }

    fn summary(&self, id: &Hash) -> Value {
        let e = &self.communities[id];
        let state = e.core.state();
        json!({
            "id": hex(&id[..]),
            "name": e.core.name(),
            "me": hex(&e.core.me()),
            "my_name": e.name,
            "role": role_name(state.role(&e.core.me())),
            "admitted": e.core.is_member() && e.core.has_current_key(),
            "members": state.members().len(),
            "height": e.core.chain().height(),
            "epoch": state.epoch,
            "pending": e.core.pending(),
            "failed": e
                .failed
                .iter()
                .map(|(text, reason)| json!({ "text": text, "reason": reason }))
                .collect::<Vec<_>>(),
            "peers": e.peers.len(),
        })
    }

    /// A CLI request.
    pub(crate) fn handle(
        &mut self,
        now_ms: u64,
        messenger: &mut Messenger,
        invites: &[InviteView],
        writes: &mut Batch,
        request: CommunityRequest,
    ) -> Result<Value, String> {
        match request {
            CommunityRequest::Create { name, me } => {
                let my_name = me.unwrap_or_else(|| messenger.name().to_owned());
                let core = Community::create(
                    config(),
                    self.rng.random(),
                    &my_name,
                    &name,
                    Policy::default(),
                    now_ms,
                )
                .map_err(err)?;
                let id = core.id();
                self.communities
                    .insert(id, Entry::new(core, my_name, Vec::new(), now_ms));
                self.after(id, now_ms);
                Ok(self.summary(&id))
            }
            CommunityRequest::List => {
                let mut all: Vec<Value> =
                    self.communities.keys().map(|id| self.summary(id)).collect();
                all.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
                Ok(json!(all))
            }
            CommunityRequest::Invite { community, contact } => {
                let id = self.find(&community)?;
                let to = messenger
                    .find_contact(&contact)
                    .map(|c| c.address)
                    .ok_or_else(|| format!("no contact named {contact:?}"))?;
                let e = self.communities.get_mut(&id).ok_or("no such community")?;
                if e.core.state().role(&e.core.me()) < Some(Role::Moderator) {
                    return Err(
                        "only moderators and above can add members; ask one to invite".into(),
                    );
                }
                let token = e.core.random();
                let mut peers = e.peers.clone();
                if let Some(me) = &self.me {
                    merge_peers(&mut peers, me.clone());
                }
                let letter = Letter::Invite {
                    genesis: e.core.chain().genesis().encode(),
                    peers,
                    token,
                };
                messenger
                    .send_community(chainmail_mixnet::Time(now_ms), &to, letter.encode())
                    .map_err(err)?;
                e.invited.push((token, to));
                e.dirty = true;
                Ok(json!({ "community": hex(&id[..]), "invited": contact, "token": hex(&token) }))
            }
            CommunityRequest::Invites => Ok(json!(invites)),
            CommunityRequest::Join { invite, me } => {
                let q = invite.to_lowercase();
                let found: Vec<&InviteView> = invites
                    .iter()
                    .filter(|i| {
                        i.token.starts_with(&q) || i.community.starts_with(&q) || i.name == invite
                    })
                    .collect();
                let inv = match found.as_slice() {
                    [one] => *one,
                    [] => {
                        return Err(format!(
                            "no invitation {invite:?} (`chainmail community invites`)"
                        ));
                    }
                    _ => {
                        return Err(format!(
                            "{invite:?} names more than one invitation: give its token"
                        ));
                    }
                };
                let genesis =
                    Genesis::decode(&unhex(&inv.genesis).unwrap_or_default()).map_err(err)?;
                let id = genesis.id();
                if self.communities.contains_key(&id) {
                    return Err("you are already in this community (or joining it)".into());
                }
                let from: Address = inv.from.parse().map_err(err)?;
                let token = unhex_array::<16>(&inv.token).ok_or("bad token")?;
                let secret = MemberSecret::generate(&mut self.rng);
                let my_name = me.unwrap_or_else(|| messenger.name().to_owned());
                let letter = Letter::Join {
                    community: id,
                    token,
                    member: secret.public(),
                    name: my_name.clone(),
                };
                messenger
                    .send_community(chainmail_mixnet::Time(now_ms), &from, letter.encode())
                    .map_err(err)?;
                let core = Community::join(config(), self.rng.random(), genesis, secret);
                let peers = inv
                    .peers
                    .iter()
                    .filter_map(|(p, addrs)| {
                        Some(PeerEntry {
                            peer: unhex(p)?,
                            addrs: addrs.clone(),
                            published: inv.at,
                        })
                    })
                    .collect();
                self.communities
                    .insert(id, Entry::new(core, my_name, peers, now_ms));
                let mut joined = inv.clone();
                joined.joined = true;
                if let Ok(json) = serde_json::to_vec(&joined) {
                    writes.put(Table::Invites, token.to_vec(), json);
                }
                self.after(id, now_ms);
                Ok(self.summary(&id))
            }
            CommunityRequest::Post { community, text } => {
                let id = self.find(&community)?;
                let e = self.communities.get_mut(&id).ok_or("no such community")?;
                let record = e.core.post(now_ms, &text).map_err(err)?;
                self.after(id, now_ms);
                Ok(json!({ "record": hex(&record), "state": "pending" }))
            }
            CommunityRequest::Log { community, after } => {
                let id = self.find(&community)?;
                let e = &self.communities[&id];
                let out: Vec<Value> = e
                    .core
                    .log(after.saturating_add(1))
                    .into_iter()
                    .map(|l| {
                        let (kind, text, target) = match l.what {
                            LogWhat::Post(Some(t)) => ("post", Some(t), None),
                            LogWhat::Post(None) => ("post-unreadable", None, None),
                            LogWhat::Redacted => ("post-redacted", None, None),
                            LogWhat::Added { member, name } => ("added", Some(name), Some(member)),
                            LogWhat::Removed(m) => ("removed", None, Some(m)),
                            LogWhat::Banned(m) => ("banned", None, Some(m)),
                            LogWhat::Role(m, r) => ("role", Some(r.as_str().to_owned()), Some(m)),
                            LogWhat::Redact(r) => ("redact", None, Some(r)),
                            LogWhat::Rotated(n) => ("key-rotated", Some(n.to_string()), None),
                            LogWhat::Left => ("left", None, None),
                        };
                        let target_name = target
                            .and_then(|t| e.core.state().members().get(&t).map(|m| m.name.clone()));
                        json!({
                            "height": l.height,
                            "record": hex(&l.record),
                            "author": hex(&l.issuer),
                            "author_name": l.issuer_name,
                            "at": l.timestamp,
                            "kind": kind,
                            "text": text,
                            "target": target.map(|t| hex(&t)),
                            "target_name": target_name,
                        })
                    })
                    .collect();
                Ok(json!({ "height": e.core.chain().height(), "entries": out }))
            }
            CommunityRequest::Members { community } => {
                let id = self.find(&community)?;
                let e = &self.communities[&id];
                let mut out: Vec<Value> = e
                    .core
                    .state()
                    .members()
                    .iter()
                    .map(|(m, info)| {
                        json!({
                            "id": hex(m),
                            "name": info.name,
                            "role": info.role.as_str(),
                            "me": *m == e.core.me(),
                        })
                    })
                    .collect();
                out.sort_by(|a, b| {
                    b["role"]
                        .as_str()
                        .map(rank)
                        .cmp(&a["role"].as_str().map(rank))
                        .then(a["name"].as_str().cmp(&b["name"].as_str()))
                });
                Ok(json!(out))
            }
            CommunityRequest::Export { community } => {
                let id = self.find(&community)?;
                let e = &self.communities[&id];
                let blocks: Vec<String> = e
                    .core
                    .chain()
                    .blocks_in_order()
                    .into_iter()
                    .map(|b| hex(&b.encode()))
                    .collect();
                Ok(json!({
                    "community": hex(&id[..]),
                    "name": e.core.name(),
                    "height": e.core.chain().height(),
                    "blocks": blocks,
                }))
            }
            CommunityRequest::Import { community, blocks } => {
                let id = self.find(&community)?;
                let e = self.communities.get_mut(&id).ok_or("no such community")?;
                if blocks.len() > MAX_IMPORT_BLOCKS {
                    return Err(format!(
                        "at most {MAX_IMPORT_BLOCKS} blocks per request, not {}",
                        blocks.len()
                    ));
                }
                let (mut stored, mut known, mut waiting) = (0usize, 0usize, 0usize);
                let mut refused = Vec::new();
                for (i, b) in blocks.iter().enumerate() {
                    let result = match unhex(b) {
                        Some(bytes) => e.take_block(now_ms, &bytes),
                        None => {
                            let err = chainmail_chain::ChainError::Malformed {
                                what: "block",
                                reason: "not hex",
                            };
                            e.refuse(&err);
                            Err(err)
                        }
                    };
                    match result {
                        Ok(ins) => {
                            if ins.stored.is_empty() && ins.missing_parent.is_none() {
                                known += 1;
                            }
                            if ins.missing_parent.is_some() {
                                waiting += 1;
                            }
                            stored += ins.stored.len();
                        }
                        Err(err) => {
                            refused.push(json!({ "index": i, "error": err.to_string() }));
                        }
                    }
                }
                e.dirty |= stored > 0;
                let height = e.core.chain().height();
                self.after(id, now_ms);
                Ok(json!({
                    "stored": stored,
                    "known": known,
                    "waiting_for_parent": waiting,
                    "refused": refused,
                    "height": height,
                }))
            }
            CommunityRequest::Act {
                community,
                action,
                target,
            } => {
                let id = self.find(&community)?;
                let record = match action.as_str() {
                    "redact" => {
                        let r = self.record_id(&id, &target)?;
                        let e = self.communities.get_mut(&id).ok_or("no such community")?;
                        e.core.redact(now_ms, r)
                    }
                    "promote" | "demote" => {
                        let m = self.member(&id, &target)?;
                        let e = self.communities.get_mut(&id).ok_or("no such community")?;
                        let current = e.core.state().role(&m).ok_or("not a member")?;
                        let role = if action == "promote" {
                            current
                                .up()
                                .ok_or("cannot be promoted further (there is one owner)")?
                        } else {
                            current.down().ok_or("cannot be demoted further")?
                        };
                        e.core.set_role(now_ms, m, role)
                    }
                    "remove" | "ban" => {
                        let m = self.member(&id, &target)?;
                        let e = self.communities.get_mut(&id).ok_or("no such community")?;
                        if action == "remove" {
                            e.core.remove(now_ms, m)
                        } else {
                            e.core.ban(now_ms, m)
                        }
                    }
                    "leave" => {
                        let e = self.communities.get_mut(&id).ok_or("no such community")?;
                        e.core.leave(now_ms)
                    }
                    other => return Err(format!("unknown action {other:?}")),
                }
                .map_err(err)?;
                self.after(id, now_ms);
                Ok(json!({ "record": hex(&record), "state": "pending" }))
            }
        }
    }
}

fn rank(role: &str) -> u8 {
    match role {
        "owner" => 3,
        "admin" => 2,
        "moderator" => 1,
        _ => 0,
    }
}

/// Community requests of the CLI and API (`POST /v1/account`, op
/// `community`). Communities, members, invitations and records are named by
/// name or by a prefix of their hex id.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum CommunityRequest {
    /// Start a community of which we are the owner.
    Create {
        /// Its name.
        name: String,
        /// Our name in it (default: our account's name).
        me: Option<String>,
    },
    /// Our communities.
    List,
    /// Invite a contact (moderators and above).
    Invite {
        /// Which community.
        community: String,
        /// The contact's name.
        contact: String,
    },
    /// Invitations received.
    Invites,
    /// Ask to join through an invitation.
    Join {
        /// The invitation's token, the community's id or name.
        invite: String,
        /// Our name in it (default: our account's name).
        me: Option<String>,
    },
    /// Post a text.
    Post {
        /// Which community.
        community: String,
        /// The text.
        text: String,
    },
    /// The community's log after a height.
    Log {
        /// Which community.
        community: String,
        /// Entries above this height.
        after: u64,
    },
    /// Its members and their roles.
    Members {
        /// Which community.
        community: String,
    },
    /// The stored blocks, parents first, hex-encoded.
    Export {
        /// Which community.
        community: String,
    },
    /// Blocks (hex) to verify and add, as if they came from the swarm.
    Import {
        /// Which community.
        community: String,
        /// At most [`MAX_IMPORT_BLOCKS`] blocks.
        blocks: Vec<String>,
    },
    /// promote, demote, remove, ban, redact, leave.
    Act {
        /// Which community.
        community: String,
        /// What to do.
        action: String,
        /// A member, or a record for `redact` (ignored for `leave`).
        target: String,
    },
}
