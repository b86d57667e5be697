//! The node core: a mix and a provider in one sans-IO state machine.
//!
//! Drive it as every core here is driven: feed inputs with `handle_*(now,
//! …)`, then drain [`Node::poll_transmit`], [`Node::poll_fetch_response`],
//! [`Node::drain_replay_tags`] and [`Node::poll_event`], and call
//! [`Node::handle_timeout`] when [`Node::poll_timeout`] says.
//!
//! Contract with the driver: the replay tags drained after handling packets
//! must be stored durably before any packet polled afterwards is sent, so
//! that a restarted node never re-opens a replay window for a live key.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chainmail_packet::{
    Action, Epoch, MailboxId, MixSecretKey, NodeId, Packet, PacketError, ReplayTag, build_packet,
};
use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};

use crate::mailbox::{Appended, MailboxStore, Quota};
use crate::message::{
    DISCARD_MAILBOX, FetchRequest, FetchResponse, MAX_FETCH_ITEMS, MAX_FETCH_WAIT_MS, MailboxItem,
    mix_loop_mailbox,
};
use crate::replay::Recorded;
use crate::service::{self, Answer, Assembled, Errand, ErrandId, Reassembly, SERVICE_MAILBOX};
use crate::{
    EpochDirectory, KeyRing, NodeDescriptor, Params, ReplayFilter, Roles, Rotation, Time,
    exponential_ms,
};

/// Configuration of a node core.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Network parameters.
    pub params: Params,
    /// Hash of the network id (see [`crate::network_hash`]).
    pub network: [u8; 32],
    /// Roles this node takes.
    pub roles: Roles,
    /// Replay tags one mix key is expected to see at most: the node's
    /// packet rate limit times the key's lifetime. The filter starts small,
    /// grows with the traffic, and refuses new tags past
    /// [`HEADROOM`](crate::replay::HEADROOM) times this
    /// ([`DropReason::ReplayFull`]).
    pub replay_capacity: u64,
    /// Most packets held in the delay queue at once.
    pub max_queued: usize,
    /// Most fetch requests waiting for mail at once.
    pub max_parked_fetches: usize,
    /// Most errands (DHT lookups and publications for clients) being
    /// assembled or carried out at once.
    pub max_errands: usize,
}

/// The packet rate a node is sized for by default.
pub const MAX_PACKETS_PER_S: u64 = 10_000;

/// Replay tags a key sees at `packets_per_s` over its whole life (its
/// epoch and the grace after it).
pub fn replay_capacity_for(params: &Params, packets_per_s: u64) -> u64 {
    let life = params.epoch_length + params.key_grace;
    packets_per_s.saturating_mul(life.as_secs().max(1))
}

impl NodeConfig {
    /// Defaults for a node that is both mix and provider.
    pub fn new(params: Params, network: [u8; 32]) -> Self {
        let replay_capacity = replay_capacity_for(&params, MAX_PACKETS_PER_S);
        NodeConfig {
            params,
            network,
            roles: Roles {
                mix: true,
                provider: true,
            },
            replay_capacity,
            max_queued: 200_000,
            max_parked_fetches: 10_000,
            max_errands: 256,
        }
    }
}

/// A packet to send to another node.
#[derive(Debug)]
pub struct Transmit {
    /// The next hop.
    pub to: NodeId,
    /// The packet.
    pub packet: Packet,
}

/// Something the driver should act on.
#[derive(Debug)]
pub enum NodeEvent {
    /// Keys were generated (store them) or retired (delete them and their
    /// replay tags); the node's descriptor changed: publish it again.
    KeysRotated(Rotation),
    /// A mix loop came back after this round trip.
    LoopReturned(Duration),
    /// A client asks this provider to carry out an errand (a DHT lookup or
    /// publication) for it; answer with [`Node::handle_errand_answer`] and
    /// the same `token`. The node knows nothing of who asked.
    Errand {
        /// Names the errand in the answer.
        token: u64,
        /// What to do.
        errand: Errand,
    },
}

/// Why a packet was dropped; each is a counter in [`NodeStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Not a packet (size, version).
    Malformed,
    /// For an epoch whose key this node does not hold.
    UnknownKey,
    /// Failed authentication: not for this node, or modified.
    Auth,
    /// Seen before.
    Replay,
    /// The key's replay filter holds all it may (far more packets than the
    /// node's rate allows came under one key): the packet cannot be
    /// checked.
    ReplayFull,
    /// Delay queue full.
    QueueFull,
    /// The delay queue is under pressure and the packet's sender already
    /// holds its fair share of it.
    QueueShare,
    /// The sender asked for a per-hop delay beyond what the network's
    /// preset allows ([`TrafficRates::max_delay_ms`](crate::TrafficRates::max_delay_ms)).
    DelayTooLong,
    /// Mailbox over quota.
    Quota,
    /// Delivery to a mailbox at a node that is not a provider.
    NotProvider,
    /// The mailbox store failed.
    Store,
    /// A malformed errand, or one whose answer route does not start here.
    Errand,
    /// Too many errands in flight.
    ErrandsBusy,
}

impl DropReason {
    /// A short snake_case name (for metrics labels and logs).
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownKey => "unknown_key",
            DropReason::Auth => "auth",
            DropReason::Replay => "replay",
            DropReason::ReplayFull => "replay_full",
            DropReason::QueueFull => "queue_full",
            DropReason::QueueShare => "queue_share",
            DropReason::DelayTooLong => "delay_too_long",
            DropReason::Quota => "quota",
            DropReason::NotProvider => "not_provider",
            DropReason::Store => "store",
            DropReason::Errand => "errand",
            DropReason::ErrandsBusy => "errands_busy",
        }
    }
}

/// The replay filters of a node's live keys ([`Node::replay_status`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReplayStatus {
    /// Tags recorded.
    pub tags: u64,
    /// Memory the filters hold.
    pub bytes: u64,
    /// Estimated chance that a fresh packet is taken for a replay.
    pub false_positive_rate: f64,
    /// Whether a key saw more packets than the node is sized for.
    pub over_capacity: bool,
}

/// Counters, for metrics.
#[derive(Clone, Debug, Default)]
pub struct NodeStats {
    /// Packets received.
    pub packets_in: u64,
    /// Packets sent on (forwarded, and own loop cover).
    pub packets_out: u64,
    /// Packets stored into mailboxes.
    pub delivered: u64,
    /// Drop cover discarded at this provider.
    pub drop_cover_discarded: u64,
    /// Mix loops sent.
    pub loops_sent: u64,
    /// Mix loops that came back.
    pub loops_returned: u64,
    /// Dropped packets by reason.
    pub dropped: BTreeMap<DropReason, u64>,
    /// Fetches answered.
    pub fetches_served: u64,
    /// Fetches refused.
    pub fetches_refused: u64,
    /// Errands handed to the driver.
    pub errands: u64,
    /// Errands answered (packets sent back through the client's SURBs).
    pub errands_answered: u64,
    /// Per-hop delays applied, sum in ms and count (mean = sum / count).
    pub delay_sum_ms: u64,
    /// Number of delays applied.
    pub delay_count: u64,
    /// Sum of squared delays, ms² (for the variance).
    pub delay_sum_sq_ms: f64,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Queued {
    at: Time,
    seq: u64,
}

/// Where a packet came from, as far as the delay queue's fair shares go:
/// a keyed hash of the neighbour's peer id (0 for packets made here).
type Source = u64;

/// Packets made by this node (SURB replies of errands).
const LOCAL: Source = 0;

/// Below this fill (a fraction of `max_queued`) any neighbour may queue
/// packets; above, each of the `n` neighbours holding packets may hold at
/// most `max_queued / (n + 1)`, so that there is always room for one more.
const SHARE_FROM: f64 = 0.5;

struct PendingErrand {
    id: ErrandId,
    surbs: Vec<chainmail_packet::Surb>,
    received: Time,
}

/// How long the driver has to answer an errand.
const ERRAND_DEADLINE: Duration = Duration::from_secs(90);

struct Parked {
    request: u64,
    mailbox: MailboxId,
    after: u64,
    deadline: Time,
}

/// A mix and provider node.
pub struct Node<S: MailboxStore> {
    config: NodeConfig,
    identity: SigningKey,
    id: NodeId,
    rng: StdRng,
    keys: KeyRing,
    replay: BTreeMap<Epoch, ReplayFilter>,
    new_tags: Vec<(Epoch, ReplayTag)>,
    queue: BinaryHeap<Reverse<Queued>>,
    queued: HashMap<u64, (Transmit, Source)>,
    /// Packets queued per source (only sources with some).
    per_source: HashMap<Source, usize>,
    /// Key of the source hash.
    source_key: [u8; 32],
    next_seq: u64,
    store: S,
    directories: BTreeMap<Epoch, Arc<EpochDirectory>>,
    next_loop: Option<Time>,
    loops: HashMap<[u8; 16], Time>,
    parked: Vec<Parked>,
    outbox: VecDeque<Transmit>,
    responses: VecDeque<(u64, Vec<u8>)>,
    events: VecDeque<NodeEvent>,
    next_maintenance: Time,
    errand_parts: Reassembly,
    errands: HashMap<u64, PendingErrand>,
    next_errand: u64,
    stats: NodeStats,
}

const MAX_LOOPS_TRACKED: usize = 10_000;
const MAINTENANCE_EVERY: Duration = Duration::from_secs(1);

impl<S: MailboxStore> Node<S> {
    /// A node with identity `identity`, storing mail in `store`. `seed`
    /// seeds its randomness (from the OS in a real node, fixed in a
    /// simulation). Call [`Node::restore_key`] and
    /// [`Node::restore_replay_tags`] for persisted state, then
    /// [`Node::handle_timeout`] once to generate missing keys.
    pub fn new(config: NodeConfig, identity: SigningKey, store: S, seed: [u8; 32]) -> Self {
        let id = NodeId(identity.verifying_key().to_bytes());
        let max_errands = config.max_errands;
        let mut rng = StdRng::from_seed(seed);
        let mut source_key = [0u8; 32];
        rng.fill_bytes(&mut source_key);
        Node {
            config,
            identity,
            id,
            rng,
            per_source: HashMap::new(),
            source_key,
            keys: KeyRing::new(),
            replay: BTreeMap::new(),
            new_tags: Vec::new(),
            queue: BinaryHeap::new(),
            queued: HashMap::new(),
            next_seq: 0,
            store,
            directories: BTreeMap::new(),
            next_loop: None,
            loops: HashMap::new(),
            parked: Vec::new(),
            outbox: VecDeque::new(),
            responses: VecDeque::new(),
            events: VecDeque::new(),
            next_maintenance: Time(0),
            errand_parts: Reassembly::errands(max_errands),
            errands: HashMap::new(),
            next_errand: 0,
            stats: NodeStats::default(),
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Counters.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// Packets waiting in the delay queue.
    pub fn queue_len(&self) -> usize {
        self.queued.len()
    }

    /// The mailbox store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The mailbox store, mutably.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Adds a persisted mix key.
    pub fn restore_key(&mut self, key: MixSecretKey) {
        self.keys.insert(key);
    }

    /// The replay filters of the live keys: tags recorded, memory held, and
    /// the estimated chance that an honest packet is taken for a replay
    /// (the worst over the live keys).
    pub fn replay_status(&self) -> ReplayStatus {
        ReplayStatus {
            tags: self.replay.values().map(ReplayFilter::len).sum(),
            bytes: self.replay.values().map(ReplayFilter::memory_bytes).sum(),
            false_positive_rate: self
                .replay
                .values()
                .map(ReplayFilter::false_positive_rate)
                .fold(0.0, f64::max),
            over_capacity: self.replay.values().any(ReplayFilter::is_over_capacity),
        }
    }

    /// Adds persisted replay tags of a live key.
    pub fn restore_replay_tags(&mut self, epoch: Epoch, tags: impl IntoIterator<Item = ReplayTag>) {
        let capacity = self.config.replay_capacity;
        let filter = self
            .replay
            .entry(epoch)
            .or_insert_with(|| ReplayFilter::with_capacity(capacity));
        for tag in tags {
            filter.insert(&tag);
        }
    }

    /// Sets the directory of an epoch (used for loop cover routes).
    pub fn set_directory(&mut self, directory: Arc<EpochDirectory>) {
        self.directories.insert(directory.epoch, directory);
        while self.directories.len() > 3 {
            self.directories.pop_first();
        }
    }

    /// The node's descriptor with its live mix keys, signed.
    pub fn signed_descriptor(
        &self,
        now: Time,
        addresses: Vec<String>,
        version: &str,
    ) -> Result<Vec<u8>, crate::MixnetError> {
        NodeDescriptor {
            network: self.config.network,
            node: self.id,
            addresses,
            roles: self.config.roles,
            mix_keys: self.keys.published(),
            version: version.into(),
            issued_at: now,
            expires_at: now + self.config.params.descriptor_lifetime,
        }
        .sign(&self.identity)
    }

    /// Handles a packet received from another node or from a client,
    /// without naming the neighbour it came from (all such packets share
    /// one part of the delay queue). A driver that knows the neighbour
    /// uses [`Node::handle_packet_from`].
    pub fn handle_packet(&mut self, now: Time, bytes: &[u8]) {
        self.handle_from(now, LOCAL, bytes);
    }

    /// Handles a packet from the neighbour `from` (its peer id, or any
    /// stable name of the link): when the delay queue fills up, each
    /// neighbour may hold only an equal share of it, so one flooding
    /// neighbour cannot starve the others.
    pub fn handle_packet_from(&mut self, now: Time, from: &[u8], bytes: &[u8]) {
        let source = self.source_of(from);
        self.handle_from(now, source, bytes);
    }

    fn source_of(&self, from: &[u8]) -> Source {
        let hash = blake3::keyed_hash(&self.source_key, from);
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&hash.as_bytes()[..8]);
        // Never the local source.
        u64::from_le_bytes(bytes).max(1)
    }

    fn handle_from(&mut self, now: Time, source: Source, bytes: &[u8]) {
        self.stats.packets_in += 1;
        let packet = match Packet::from_bytes(bytes) {
            Ok(p) => p,
            Err(_) => return self.drop(DropReason::Malformed),
        };
        let epoch = packet.epoch();
        let Some(key) = self.keys.get(epoch) else {
            return self.drop(DropReason::UnknownKey);
        };
        let processed = match key.process(packet) {
            Ok(p) => p,
            Err(PacketError::InvalidCommand(_) | PacketError::InvalidEphemeralKey) => {
                return self.drop(DropReason::Malformed);
            }
            Err(_) => return self.drop(DropReason::Auth),
        };
        let capacity = self.config.replay_capacity;
        let filter = self
            .replay
            .entry(epoch)
            .or_insert_with(|| ReplayFilter::with_capacity(capacity));
        match filter.insert(&processed.replay_tag) {
            Recorded::Fresh => {}
            Recorded::Seen => return self.drop(DropReason::Replay),
            Recorded::Full => return self.drop(DropReason::ReplayFull),
        }
        self.new_tags.push((epoch, processed.replay_tag));
        match processed.action {
            Action::Forward {
                next,
                delay_ms,
                packet,
            } => {
                if delay_ms > self.config.params.rates.max_delay_ms() {
                    return self.drop(DropReason::DelayTooLong);
                }
                self.stats.delay_sum_ms += u64::from(delay_ms);
                self.stats.delay_count += 1;
                self.stats.delay_sum_sq_ms += f64::from(delay_ms).powi(2);
                self.enqueue(
                    now + Duration::from_millis(u64::from(delay_ms)),
                    Transmit { to: next, packet },
                    source,
                );
            }
            Action::Deliver {
                mailbox, message, ..
            } => {
                if mailbox == DISCARD_MAILBOX {
                    self.stats.drop_cover_discarded += 1;
                } else if mailbox == SERVICE_MAILBOX {
                    self.errand_fragment(now, &message[..]);
                } else if mailbox == mix_loop_mailbox(&self.id) {
                    self.loop_returned(now, &message[..16]);
                } else {
                    self.deliver(now, mailbox, MailboxItem::Message(message));
                }
            }
            Action::DeliverReply {
                mailbox,
                surb_id,
                payload,
                ..
            } => {
                self.deliver(now, mailbox, MailboxItem::Reply { surb_id, payload });
            }
            _ => self.drop(DropReason::Malformed),
        }
    }

    fn errand_fragment(&mut self, now: Time, message: &[u8]) {
        if !self.config.roles.provider {
            return self.drop(DropReason::NotProvider);
        }
        let (id, bytes) = match self.errand_parts.add(now, message) {
            Ok(Assembled::Complete(id, bytes)) => (id, bytes),
            Ok(Assembled::Incomplete) => return,
            Ok(Assembled::Full) => return self.drop(DropReason::ErrandsBusy),
            Err(_) => return self.drop(DropReason::Errand),
        };
        let Ok((errand, surbs)) = service::decode_errand(&bytes) else {
            return self.drop(DropReason::Errand);
        };
        // The answer leaves from here: a SURB that starts anywhere else
        // would make this node send packets where a stranger chose.
        if surbs.iter().any(|s| s.first_hop() != self.id) {
            return self.drop(DropReason::Errand);
        }
        self.expire_errands(now);
        if self.errands.len() >= self.config.max_errands {
            return self.drop(DropReason::ErrandsBusy);
        }
        let token = self.next_errand;
        self.next_errand += 1;
        self.errands.insert(
            token,
            PendingErrand {
                id,
                surbs,
                received: now,
            },
        );
        self.stats.errands += 1;
        self.events.push_back(NodeEvent::Errand { token, errand });
    }

    fn expire_errands(&mut self, now: Time) {
        self.errands
            .retain(|_, e| now.saturating_since(e.received) < ERRAND_DEADLINE);
        self.errand_parts.expire(now);
    }

    /// Answers the errand `token` (from [`NodeEvent::Errand`]): the answer
    /// goes back through the client's SURBs, on its way through the mixes
    /// like any packet. An answer too large for the SURBs becomes
    /// [`Answer::TooLarge`], and the client asks again with room enough.
    /// Unknown or expired tokens are ignored.
    pub fn handle_errand_answer(&mut self, now: Time, token: u64, answer: Answer) {
        let Some(pending) = self.errands.remove(&token) else {
            return;
        };
        let size = service::answer_size(&answer);
        let answer = if service::surbs_for(size) > pending.surbs.len() {
            Answer::TooLarge {
                size: u32::try_from(size).unwrap_or(u32::MAX),
            }
        } else {
            answer
        };
        let Ok(messages) = service::encode_answer(&pending.id, &answer) else {
            return;
        };
        self.stats.errands_answered += 1;
        for (surb, message) in pending.surbs.into_iter().zip(messages) {
            if let Ok(packet) = surb.into_reply(&message[..]) {
                // The SURB's first hop is this node: process it as if it
                // had arrived, which sends it on after its delay.
                self.handle_packet(now, packet.as_bytes());
            }
        }
    }

    fn drop(&mut self, reason: DropReason) {
        *self.stats.dropped.entry(reason).or_default() += 1;
    }

    fn enqueue(&mut self, at: Time, transmit: Transmit, source: Source) {
        let max = self.config.max_queued;
        if self.queued.len() >= max {
            return self.drop(DropReason::QueueFull);
        }
        let held = self.per_source.get(&source).copied().unwrap_or(0);
        if self.queued.len() as f64 >= max as f64 * SHARE_FROM {
            // Under pressure: an equal share each among the sources that
            // hold packets (this one included), with room for a newcomer.
            let sources = self.per_source.len() + usize::from(held == 0);
            if held >= max / (sources + 1) {
                return self.drop(DropReason::QueueShare);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse(Queued { at, seq }));
        self.queued.insert(seq, (transmit, source));
        *self.per_source.entry(source).or_default() += 1;
    }

    /// Packets queued for each source, largest first (for tests and
    /// reports).
    pub fn queue_shares(&self) -> Vec<usize> {
        let mut all: Vec<usize> = self.per_source.values().copied().collect();
        all.sort_unstable_by(|a, b| b.cmp(a));
        all
    }

    fn loop_returned(&mut self, now: Time, nonce: &[u8]) {
        let mut id = [0u8; 16];
        id.copy_from_slice(nonce);
        if let Some(sent) = self.loops.remove(&id) {
            self.stats.loops_returned += 1;
            self.events
                .push_back(NodeEvent::LoopReturned(now.saturating_since(sent)));
        }
    }

    fn deliver(&mut self, now: Time, mailbox: MailboxId, item: MailboxItem) {
        if !self.config.roles.provider {
            return self.drop(DropReason::NotProvider);
        }
        let quota = Quota {
            max_items: self.config.params.mailbox_max_items,
            max_bytes: self.config.params.mailbox_max_bytes,
        };
        match self.store.append(&mailbox, &item.encode(), now, quota) {
            Ok(Appended::Stored(_)) => {
                self.stats.delivered += 1;
                self.wake_parked(now, &mailbox);
            }
            Ok(Appended::OverQuota) => self.drop(DropReason::Quota),
            Err(_) => self.drop(DropReason::Store),
        }
    }

    /// Handles a signed fetch request from a mailbox owner; the answer comes
    /// out of [`Node::poll_fetch_response`] with the same `request` number,
    /// at once or, if the mailbox is empty and the owner asked to wait, when
    /// mail arrives or the wait ends.
    pub fn handle_fetch(&mut self, now: Time, request: u64, bytes: &[u8]) {
        let verified = if self.config.roles.provider {
            FetchRequest::verify(bytes, &self.id, now)
        } else {
            Err(crate::MixnetError::FetchRefused(
                "this node is not a provider",
            ))
        };
        let (fetch, mailbox) = match verified {
            Ok(v) => v,
            Err(e) => return self.refuse(request, e.to_string()),
        };
        if let Err(e) = self.store.delete_through(&mailbox, fetch.ack_through) {
            return self.refuse(request, e.to_string());
        }
        match self
            .store
            .read(&mailbox, fetch.ack_through, MAX_FETCH_ITEMS)
        {
            Ok(items) if items.is_empty() && fetch.wait_ms > 0 => {
                let waiting_here = self.parked.iter().filter(|p| p.mailbox == mailbox).count();
                if self.parked.len() >= self.config.max_parked_fetches || waiting_here >= 4 {
                    return self.refuse(request, "too many waiting fetches".into());
                }
                let wait = Duration::from_millis(u64::from(fetch.wait_ms.min(MAX_FETCH_WAIT_MS)));
                self.parked.push(Parked {
                    request,
                    mailbox,
                    after: fetch.ack_through,
                    deadline: now + wait,
                });
            }
            Ok(items) => self.respond(
                request,
                FetchResponse {
                    items,
                    refused: None,
                },
            ),
            Err(e) => self.refuse(request, e.to_string()),
        }
    }

    fn refuse(&mut self, request: u64, why: String) {
        self.stats.fetches_refused += 1;
        self.responses.push_back((
            request,
            FetchResponse {
                items: vec![],
                refused: Some(why),
            }
            .encode(),
        ));
    }

    fn respond(&mut self, request: u64, response: FetchResponse) {
        self.stats.fetches_served += 1;
        self.responses.push_back((request, response.encode()));
    }

    fn wake_parked(&mut self, _now: Time, mailbox: &MailboxId) {
        let (wake, keep): (Vec<Parked>, Vec<Parked>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| p.mailbox == *mailbox);
        self.parked = keep;
        for p in wake {
            match self.store.read(&p.mailbox, p.after, MAX_FETCH_ITEMS) {
                Ok(items) => self.respond(
                    p.request,
                    FetchResponse {
                        items,
                        refused: None,
                    },
                ),
                Err(e) => self.refuse(p.request, e.to_string()),
            }
        }
    }

    /// Advances time: releases delayed packets, answers fetches whose wait
    /// ended, sends loop cover, rotates keys, expires old mail.
    pub fn handle_timeout(&mut self, now: Time) {
        while let Some(Reverse(head)) = self.queue.peek() {
            if head.at > now {
                break;
            }
            let seq = head.seq;
            self.queue.pop();
            if let Some((t, source)) = self.queued.remove(&seq) {
                if let Some(n) = self.per_source.get_mut(&source) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_source.remove(&source);
                    }
                }
                self.stats.packets_out += 1;
                self.outbox.push_back(t);
            }
        }
        let (expired, waiting): (Vec<Parked>, Vec<Parked>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| p.deadline <= now);
        self.parked = waiting;
        for p in expired {
            self.respond(p.request, FetchResponse::default());
        }
        if now >= self.next_maintenance {
            self.next_maintenance = now + MAINTENANCE_EVERY;
            self.maintain(now);
        }
        self.mix_loops(now);
    }

    fn maintain(&mut self, now: Time) {
        let rotation = self.keys.rotate(now, &self.config.params, &mut self.rng);
        for epoch in &rotation.retired {
            self.replay.remove(epoch);
        }
        if !rotation.generated.is_empty() || !rotation.retired.is_empty() {
            self.events.push_back(NodeEvent::KeysRotated(rotation));
        }
        if self.config.roles.provider {
            // Failures are retried at the next maintenance.
            let _ = self.store.expire(now, self.config.params.mailbox_ttl);
        }
        let horizon = now - Duration::from_secs(600);
        self.loops.retain(|_, sent| *sent > horizon);
        self.expire_errands(now);
    }

    fn mix_loops(&mut self, now: Time) {
        let rate = self.config.params.rates.mix_loop_per_s;
        if !self.config.roles.mix || rate <= 0.0 {
            return;
        }
        let next = *self
            .next_loop
            .get_or_insert_with(|| now + poisson_gap(&mut self.rng, rate));
        if now < next {
            return;
        }
        // From the planned tick, not from `now`: a busy node keeps its rate.
        let base = if now.saturating_since(next) > Duration::from_secs(5) {
            now
        } else {
            next
        };
        self.next_loop = Some(base + poisson_gap(&mut self.rng, rate));
        let epoch = self.config.params.epoch_at(now);
        let Some(directory) = self.directories.get(&epoch).cloned() else {
            return;
        };
        if self.loops.len() >= MAX_LOOPS_TRACKED {
            return;
        }
        let Some(me) = directory.node(&self.id) else {
            return;
        };
        let Ok(mixes) = directory.random_mixes(&mut self.rng) else {
            return;
        };
        let mean = self.config.params.rates.mean_delay_ms;
        let mut route: Vec<chainmail_packet::Hop<'_>> = mixes
            .iter()
            .map(|m| chainmail_packet::Hop {
                node: m.id,
                key: &m.key,
                delay_ms: exponential_ms(&mut self.rng, mean),
            })
            .collect();
        route.push(chainmail_packet::Hop {
            node: me.id,
            key: &me.key,
            delay_ms: 0,
        });
        let mut nonce = [0u8; 16];
        self.rng.fill_bytes(&mut nonce);
        let first = route[0].node;
        let Ok(packet) = build_packet(
            &mut self.rng,
            epoch,
            &route,
            mix_loop_mailbox(&self.id),
            &nonce,
        ) else {
            return;
        };
        self.loops.insert(nonce, now);
        self.stats.loops_sent += 1;
        self.stats.packets_out += 1;
        self.outbox.push_back(Transmit { to: first, packet });
    }

    /// When to call [`Node::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Time> {
        let queue = self.queue.peek().map(|Reverse(q)| q.at);
        let parked = self.parked.iter().map(|p| p.deadline).min();
        [queue, parked, self.next_loop, Some(self.next_maintenance)]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next packet to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    /// The next fetch response: (request number, encoded response).
    pub fn poll_fetch_response(&mut self) -> Option<(u64, Vec<u8>)> {
        self.responses.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// Replay tags accepted since the last call: store them durably before
    /// sending anything polled after this call.
    pub fn drain_replay_tags(&mut self) -> Vec<(Epoch, ReplayTag)> {
        std::mem::take(&mut self.new_tags)
    }
}

/// Time to the next event of a Poisson process with `rate` per second.
pub(crate) fn poisson_gap<R: Rng + ?Sized>(rng: &mut R, rate: f64) -> Duration {
    let u: f64 = rng.random();
    Duration::from_secs_f64((-(1.0 - u).ln() / rate).min(3600.0))
}
