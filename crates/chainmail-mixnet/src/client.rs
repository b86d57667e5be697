//! The client core: Loopix sending, acknowledgements through SURBs,
//! retransmission, and fetching from the client's own mailboxes.
//!
//! Three independent Poisson streams leave the client, and an observer of
//! its link sees only their sum, whatever the client is doing:
//! - λP, the payload stream: at each tick the next queued packet (a message
//!   or an acknowledgement) or, if none is queued, drop cover;
//! - λL, loop cover: through the mixes back into the client's own mailbox;
//! - λD, drop cover: to a random provider, which discards it.
//!
//! A tick of the drop stream also carries the next queued packet when there
//! is one: drop cover exists only to be indistinguishable from real
//! traffic, so this changes nothing an observer sees (the sum is still a
//! Poisson stream of λP + λL + λD) and shortens the wait for a tick. Loops
//! are never replaced: they are how a client notices packets going missing.
//!
//! Messages go before acknowledgements, so what the user waits for leaves
//! first; an acknowledgement that has waited [`ACK_MAX_WAIT`] goes first,
//! so acknowledgements are never starved into retransmissions. Delaying an
//! acknowledgement costs nothing in privacy (it loosens the timing link
//! between a message arriving and its acknowledgement leaving). Errands
//! (DHT work an exit does for the client, see [`crate::service`]) take two
//! lanes: lookups before messages, since a contact request waits for its
//! lookup; publications last, since nothing waits for them.
//!
//! Every message carries a SURB for its acknowledgement. The SURB starts at
//! the recipient's provider that the message went to and ends in one of the
//! sender's mailboxes, so the recipient learns nothing about the sender and
//! sends the acknowledgement in its own payload stream like any packet. A
//! message without acknowledgement is sent again, with backoff, alternating
//! between the recipient's providers, so one provider failing loses nothing.
//! The recipient drops duplicates but acknowledges each copy.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chainmail_packet::{
    Epoch, MESSAGE_SIZE, MailboxId, NodeId, Packet, SurbId, SurbSecrets, build_packet, build_surb,
};
use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};

use crate::message::{
    self, ClientAddress, DISCARD_MAILBOX, FetchRequest, FetchResponse, Inner, MAX_BODY,
    MailboxItem, MessageId, SealKey, mailbox_id,
};
use crate::node::poisson_gap;
use crate::service::{
    self, Answer, Assembled, Errand, ErrandId, MAX_ANSWER_SURBS, Reassembly, SERVICE_MAILBOX,
};
use crate::{DirNode, EpochDirectory, MixnetError, Params, Time};

/// Configuration of a client core.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Network parameters (rates, delays).
    pub params: Params,
    /// Most messages waiting to be sent.
    pub max_queue: usize,
    /// Time to wait for the first acknowledgement before sending again;
    /// doubled after every attempt.
    pub ack_timeout: Duration,
    /// Attempts before a message is reported failed.
    pub max_attempts: u32,
    /// How long a fetch may wait at the provider for mail.
    pub fetch_wait: Duration,
    /// Time to wait for an errand's answer before asking through another
    /// exit; grows with every attempt.
    pub errand_timeout: Duration,
    /// Attempts (each through another exit) before an errand fails.
    pub errand_attempts: u32,
    /// Most errands in flight.
    pub max_errands: usize,
}

impl ClientConfig {
    /// Defaults for `params`.
    pub fn new(params: Params) -> Self {
        ClientConfig {
            params,
            max_queue: 1000,
            ack_timeout: Duration::from_secs(10),
            max_attempts: 6,
            fetch_wait: Duration::from_secs(20),
            errand_timeout: Duration::from_secs(20),
            errand_attempts: 4,
            max_errands: 256,
        }
    }
}

/// A client's long-term secrets (persist them; they are its identity in
/// the mixnet).
pub struct ClientKeys {
    /// Key that messages to the client are sealed to.
    pub seal: SealKey,
    /// One owner key per mailbox, with the provider that holds it.
    pub mailboxes: Vec<(NodeId, SigningKey)>,
}

impl ClientKeys {
    /// Fresh keys for mailboxes at `providers`.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R, providers: &[NodeId]) -> Self {
        ClientKeys {
            seal: SealKey::generate(rng),
            mailboxes: providers
                .iter()
                .map(|p| {
                    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
                    rng.fill_bytes(&mut secret[..]);
                    (*p, SigningKey::from_bytes(&secret))
                })
                .collect(),
        }
    }

    /// The address others use to reach this client.
    pub fn address(&self) -> ClientAddress {
        ClientAddress {
            seal_key: self.seal.public(),
            mailboxes: self
                .mailboxes
                .iter()
                .map(|(p, k)| (*p, mailbox_id(&k.verifying_key().to_bytes())))
                .collect(),
        }
    }
}

/// What happened, for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A message arrived (each message once, however often it was sent).
    Received {
        /// Its id.
        id: MessageId,
        /// Its body.
        body: Vec<u8>,
    },
    /// A message sent by this client was acknowledged by its recipient.
    Delivered {
        /// Its id.
        id: MessageId,
        /// Time from `send` to the acknowledgement.
        after: Duration,
    },
    /// A message was not acknowledged after every attempt.
    Failed {
        /// Its id.
        id: MessageId,
    },
    /// A loop cover packet came back after this round trip.
    LoopReturned {
        /// Round-trip time.
        rtt: Duration,
    },
    /// An exit answered an errand.
    Answered {
        /// The errand.
        id: ErrandId,
        /// The answer.
        answer: Answer,
    },
    /// No exit answered an errand after every attempt.
    ErrandFailed {
        /// The errand.
        id: ErrandId,
    },
}

/// Counters.
#[derive(Clone, Debug, Default)]
pub struct ClientStats {
    /// Real packets sent (messages and retransmissions).
    pub real_sent: u64,
    /// Acknowledgements sent.
    pub acks_sent: u64,
    /// Drop cover sent (substituted in the payload stream or on its own).
    pub drop_sent: u64,
    /// Loop cover sent.
    pub loops_sent: u64,
    /// Acknowledgements dropped because too many were queued.
    pub acks_dropped: u64,
    /// Loops that came back.
    pub loops_returned: u64,
    /// Retransmissions.
    pub retransmissions: u64,
    /// Duplicate messages received (and acknowledged again).
    pub duplicates: u64,
    /// Mailbox items that could not be opened.
    pub undecryptable: u64,
    /// Ticks with no usable directory (nothing sent).
    pub no_route: u64,
    /// Errand packets sent (requests to an exit).
    pub errand_packets_sent: u64,
    /// Errands sent again through another exit.
    pub errands_retried: u64,
    /// Errands that failed after every attempt.
    pub errands_failed: u64,
    /// Messages whose acknowledgement SURB did not start at one of our own
    /// providers: not acknowledged, since sending it would tell the node
    /// the sender chose where we are.
    pub foreign_surbs: u64,
}

impl ClientStats {
    /// Every packet this client put on its link.
    pub fn packets_sent(&self) -> u64 {
        self.real_sent
            + self.acks_sent
            + self.drop_sent
            + self.loops_sent
            + self.errand_packets_sent
    }
}

enum Outgoing {
    Message(MessageId),
    Ack { first_hop: NodeId, packet: Packet },
    Errand { first_hop: NodeId, packet: Packet },
}

struct PendingErrand {
    errand: Errand,
    /// SURBs the answer needs.
    answer_surbs: usize,
    attempts: u32,
    retry_at: Option<Time>,
    surbs: Vec<SurbId>,
    exits_tried: Vec<NodeId>,
}

/// How long an acknowledgement may wait behind messages before it goes
/// first.
pub const ACK_MAX_WAIT: Duration = Duration::from_secs(2);

struct QueuedAck {
    first_hop: NodeId,
    packet: Packet,
    queued: Time,
}

struct Pending {
    to: ClientAddress,
    body: Vec<u8>,
    created: Time,
    attempts: u32,
    retry_at: Option<Time>,
    surbs: Vec<SurbId>,
    /// Whether the recipient acknowledges it (with a SURB) and it is sent
    /// again until it does.
    acknowledged: bool,
}

struct OwnMailbox {
    provider: NodeId,
    key: SigningKey,
    id: MailboxId,
    /// Highest sequence number handled (acknowledged in the next fetch).
    handled: u64,
    fetching: bool,
    retry_fetch_at: Option<Time>,
}

/// Remembers the last `cap` message ids seen.
struct Seen {
    order: VecDeque<MessageId>,
    set: HashSet<MessageId>,
    cap: usize,
}

impl Seen {
    fn insert(&mut self, id: MessageId) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

/// A mixnet client.
pub struct Client {
    config: ClientConfig,
    rng: StdRng,
    keys: ClientKeys,
    mailboxes: Vec<OwnMailbox>,
    down: HashSet<NodeId>,
    directories: BTreeMap<Epoch, Arc<EpochDirectory>>,
    queue: VecDeque<MessageId>,
    acks: VecDeque<QueuedAck>,
    pending: HashMap<MessageId, Pending>,
    surbs: HashMap<SurbId, (SurbSecrets, MessageId)>,
    errands: HashMap<ErrandId, PendingErrand>,
    /// Errands waiting for their turn, per lane ([`LOOKUPS`], [`PUBLICATIONS`]).
    errand_queue: [VecDeque<ErrandId>; 2],
    /// Built errand packets, per lane.
    errand_packets: [VecDeque<(NodeId, Packet)>; 2],
    errand_surbs: HashMap<SurbId, (SurbSecrets, ErrandId)>,
    answers: Reassembly,
    seen: Seen,
    loops: HashMap<[u8; 16], Time>,
    started: bool,
    next_payload: Option<Time>,
    next_loop: Option<Time>,
    next_drop: Option<Time>,
    outbox: VecDeque<(NodeId, Packet)>,
    fetches: VecDeque<(NodeId, Vec<u8>)>,
    events: VecDeque<ClientEvent>,
    stats: ClientStats,
}

const MAX_SURBS: usize = 20_000;

/// The lane of lookups: before messages, since a contact request waits for
/// its lookup.
const LOOKUPS: usize = 0;
/// The lane of publications: after messages and acknowledgements, since
/// nothing waits for them (they are published again on every refresh).
const PUBLICATIONS: usize = 1;

fn lane(errand: &Errand) -> usize {
    match errand {
        Errand::Get { .. } => LOOKUPS,
        Errand::Put { .. } => PUBLICATIONS,
    }
}
const MAX_LOOPS: usize = 1000;

impl Client {
    /// A client with `keys`; `seed` seeds its randomness.
    pub fn new(config: ClientConfig, keys: ClientKeys, seed: [u8; 32]) -> Self {
        let mailboxes = keys
            .mailboxes
            .iter()
            .map(|(provider, key)| OwnMailbox {
                provider: *provider,
                key: key.clone(),
                id: mailbox_id(&key.verifying_key().to_bytes()),
                handled: 0,
                fetching: false,
                retry_fetch_at: None,
            })
            .collect();
        Client {
            answers: Reassembly::answers(config.max_errands),
            config,
            rng: StdRng::from_seed(seed),
            keys,
            mailboxes,
            down: HashSet::new(),
            directories: BTreeMap::new(),
            queue: VecDeque::new(),
            acks: VecDeque::new(),
            pending: HashMap::new(),
            surbs: HashMap::new(),
            errands: HashMap::new(),
            errand_queue: Default::default(),
            errand_packets: Default::default(),
            errand_surbs: HashMap::new(),
            seen: Seen {
                order: VecDeque::new(),
                set: HashSet::new(),
                cap: 100_000,
            },
            loops: HashMap::new(),
            started: false,
            next_payload: None,
            next_loop: None,
            next_drop: None,
            outbox: VecDeque::new(),
            fetches: VecDeque::new(),
            events: VecDeque::new(),
            stats: ClientStats::default(),
        }
    }

    /// This client's address.
    pub fn address(&self) -> ClientAddress {
        self.keys.address()
    }

    /// Counters.
    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// Messages sent and not yet acknowledged or failed.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Sets the directory of an epoch.
    pub fn set_directory(&mut self, directory: Arc<EpochDirectory>) {
        self.directories.insert(directory.epoch, directory);
        while self.directories.len() > 3 {
            self.directories.pop_first();
        }
    }

    /// Marks a node as unreachable (or reachable again). Packets then enter
    /// through the client's other providers, routes avoid the node where its
    /// layer has another mix, and messages go to the recipient's other
    /// providers first.
    pub fn set_node_down(&mut self, node: NodeId, down: bool) {
        if down {
            self.down.insert(node);
        } else {
            self.down.remove(&node);
        }
    }

    /// For each own mailbox, the provider and the highest sequence number
    /// handled: store them with the received messages, and give them back
    /// with [`Client::restore_cursor`] after a restart, so nothing is
    /// fetched twice.
    pub fn cursors(&self) -> Vec<(NodeId, u64)> {
        self.mailboxes
            .iter()
            .map(|m| (m.provider, m.handled))
            .collect()
    }

    /// Restores a mailbox cursor (see [`Client::cursors`]).
    pub fn restore_cursor(&mut self, provider: NodeId, handled: u64) {
        if let Some(m) = self.mailboxes.iter_mut().find(|m| m.provider == provider) {
            m.handled = m.handled.max(handled);
        }
    }

    /// Restores ids of messages already received, so that a copy sent again
    /// after a restart is recognised as a duplicate.
    pub fn restore_seen(&mut self, ids: impl IntoIterator<Item = MessageId>) {
        for id in ids {
            self.seen.insert(id);
        }
    }

    /// Queues a message for `to`. It leaves at the next tick of the payload
    /// stream; the result is its id, which later events refer to.
    pub fn send(
        &mut self,
        now: Time,
        to: &ClientAddress,
        body: &[u8],
    ) -> Result<MessageId, MixnetError> {
        self.send_with(now, to, body, true)
    }

    /// Queues a message that carries no SURB: it is sent once, never
    /// acknowledged, never reported delivered or failed (for messages
    /// whose loss the layer above repairs, such as end-to-end receipts).
    pub fn send_unacknowledged(
        &mut self,
        now: Time,
        to: &ClientAddress,
        body: &[u8],
    ) -> Result<MessageId, MixnetError> {
        self.send_with(now, to, body, false)
    }

    fn send_with(
        &mut self,
        now: Time,
        to: &ClientAddress,
        body: &[u8],
        acknowledged: bool,
    ) -> Result<MessageId, MixnetError> {
        to.validate()?;
        if body.len() > MAX_BODY {
            return Err(MixnetError::MessageTooLong {
                actual: body.len(),
                max: MAX_BODY,
            });
        }
        if self.queue.len() >= self.config.max_queue {
            return Err(MixnetError::QueueFull(self.queue.len()));
        }
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        self.pending.insert(
            id,
            Pending {
                to: to.clone(),
                body: body.to_vec(),
                created: now,
                attempts: 0,
                retry_at: None,
                surbs: vec![],
                acknowledged,
            },
        );
        self.queue.push_back(id);
        Ok(id)
    }

    /// Queues an errand: a DHT lookup or publication that a provider picked
    /// at random carries out for this client, reached through the mixnet
    /// and answering through SURBs (see [`crate::service`]). Its packets
    /// leave in the payload stream like messages; the answer comes out of
    /// [`Client::poll_event`] as [`ClientEvent::Answered`], or
    /// [`ClientEvent::ErrandFailed`] when no exit answered.
    pub fn errand(&mut self, _now: Time, errand: Errand) -> Result<ErrandId, MixnetError> {
        if self.errands.len() >= self.config.max_errands {
            return Err(MixnetError::QueueFull(self.errands.len()));
        }
        // Refused now rather than when it is its turn to leave.
        errand.check()?;
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        let answer_surbs = errand.answer_surbs();
        let lane = lane(&errand);
        self.errands.insert(
            id,
            PendingErrand {
                errand,
                answer_surbs,
                attempts: 0,
                retry_at: None,
                surbs: Vec::new(),
                exits_tried: Vec::new(),
            },
        );
        self.errand_queue[lane].push_back(id);
        Ok(id)
    }

    /// Errands not answered yet.
    pub fn errands_pending(&self) -> usize {
        self.errands.len()
    }

    /// Builds every packet of an errand (all to one exit) and queues them.
    fn build_errand(&mut self, now: Time, id: ErrandId) -> Result<(), MixnetError> {
        let Some(p) = self.errands.get(&id) else {
            return Ok(());
        };
        let errand = p.errand.clone();
        let answer_surbs = p.answer_surbs;
        let tried = p.exits_tried.clone();
        let directory = self
            .directory(now)
            .ok_or_else(|| MixnetError::NoRoute("no directory for this epoch".into()))?;
        // The exit: a provider that is not ours (ours know our address),
        // not known down, not tried yet for this errand; failing that, the
        // least bad.
        let own: HashSet<NodeId> = self.mailboxes.iter().map(|m| m.provider).collect();
        let preferences: [&dyn Fn(&DirNode) -> bool; 3] = [
            &|n| !own.contains(&n.id) && !self.down.contains(&n.id) && !tried.contains(&n.id),
            &|n| !own.contains(&n.id) && !self.down.contains(&n.id),
            &|n| !self.down.contains(&n.id),
        ];
        let candidates = preferences
            .iter()
            .map(|keep| {
                directory
                    .providers
                    .iter()
                    .filter(|n| keep(n))
                    .collect::<Vec<_>>()
            })
            .find(|c| !c.is_empty())
            .ok_or_else(|| MixnetError::NoRoute("no provider to carry out an errand".into()))?;
        let exit = candidates[self.rng.random_range(0..candidates.len())];
        let reply_provider = self
            .own_provider(&directory)
            .ok_or_else(|| MixnetError::NoRoute("no live provider".into()))?;
        let reply_mailbox = self
            .mailboxes
            .iter()
            .find(|m| m.provider == reply_provider.id)
            .map(|m| m.id)
            .ok_or_else(|| MixnetError::NoRoute("own mailbox missing".into()))?;
        let mean = self.config.params.rates.mean_delay_ms;
        let mut surbs = Vec::with_capacity(answer_surbs);
        let mut secrets = Vec::with_capacity(answer_surbs);
        for _ in 0..answer_surbs {
            let route =
                directory.route_avoiding(&mut self.rng, exit, reply_provider, mean, &self.down)?;
            let (surb, secret) = build_surb(&mut self.rng, directory.epoch, &route, reply_mailbox)?;
            surbs.push(surb);
            secrets.push(secret);
        }
        let messages = service::encode_errand(&id, &errand, &surbs)?;
        let mut packets = Vec::with_capacity(messages.len());
        for message in &messages {
            let entry = self
                .own_provider(&directory)
                .ok_or_else(|| MixnetError::NoRoute("no live provider".into()))?;
            let route = directory.route_avoiding(&mut self.rng, entry, exit, mean, &self.down)?;
            let packet = build_packet(
                &mut self.rng,
                directory.epoch,
                &route,
                SERVICE_MAILBOX,
                &message[..],
            )?;
            packets.push((route[0].node, packet));
        }
        let exit = exit.id;
        let ids: Vec<SurbId> = secrets.iter().map(SurbSecrets::id).collect();
        for secret in secrets {
            self.errand_surbs.insert(secret.id(), (secret, id));
        }
        self.errand_packets[lane(&errand)].extend(packets);
        if let Some(p) = self.errands.get_mut(&id) {
            if p.attempts > 0 {
                self.stats.errands_retried += 1;
            }
            p.attempts += 1;
            p.surbs.extend(ids);
            p.exits_tried.push(exit);
            p.retry_at = Some(now + self.config.errand_timeout * p.attempts);
        }
        Ok(())
    }

    fn errand_retries(&mut self, now: Time) {
        let due: Vec<ErrandId> = self
            .errands
            .iter()
            .filter(|(_, e)| e.retry_at.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(e) = self.errands.get_mut(&id) else {
                continue;
            };
            e.retry_at = None;
            if e.attempts >= self.config.errand_attempts {
                self.end_errand(&id);
                self.stats.errands_failed += 1;
                self.events.push_back(ClientEvent::ErrandFailed { id });
            } else {
                let lane = lane(&e.errand);
                self.errand_queue[lane].push_back(id);
            }
        }
    }

    fn end_errand(&mut self, id: &ErrandId) {
        if let Some(e) = self.errands.remove(id) {
            for s in e.surbs {
                self.errand_surbs.remove(&s);
            }
        }
        self.answers.forget(id);
    }

    fn handle_errand_reply(
        &mut self,
        now: Time,
        secrets: &SurbSecrets,
        id: ErrandId,
        surb_id: SurbId,
        payload: &[u8; chainmail_packet::PAYLOAD_SIZE],
    ) {
        let Ok(reply) = secrets.open(surb_id, payload) else {
            self.stats.undecryptable += 1;
            return;
        };
        let (answered, bytes) = match self.answers.add(now, &reply[..]) {
            Ok(Assembled::Complete(answered, bytes)) => (answered, bytes),
            Ok(_) => return,
            Err(_) => {
                self.stats.undecryptable += 1;
                return;
            }
        };
        if answered != id {
            self.stats.undecryptable += 1;
            return;
        }
        let Ok(answer) = service::decode_answer(&bytes) else {
            self.stats.undecryptable += 1;
            return;
        };
        if let Answer::TooLarge { size } = answer {
            let needed = service::surbs_for(size as usize);
            if let Some(e) = self.errands.get_mut(&id)
                && needed > e.answer_surbs
                && needed <= MAX_ANSWER_SURBS
            {
                // Ask again, with room for the whole answer.
                e.answer_surbs = needed;
                e.retry_at = None;
                e.attempts = e.attempts.saturating_sub(1);
                let lane = lane(&e.errand);
                self.errand_queue[lane].push_back(id);
                return;
            }
        }
        if self.errands.contains_key(&id) {
            self.end_errand(&id);
            self.events.push_back(ClientEvent::Answered { id, answer });
        }
    }

    /// Advances time: the three Poisson streams, retransmissions, fetches.
    pub fn handle_timeout(&mut self, now: Time) {
        let rates = self.config.params.rates;
        self.started = true;
        if Self::due(
            &mut self.rng,
            &mut self.next_payload,
            now,
            rates.payload_per_s,
        ) {
            self.payload_tick(now);
        }
        if Self::due(&mut self.rng, &mut self.next_loop, now, rates.loop_per_s) {
            self.loop_tick(now);
        }
        if Self::due(&mut self.rng, &mut self.next_drop, now, rates.drop_per_s) {
            self.payload_tick(now);
        }
        self.retransmit(now);
        self.errand_retries(now);
        self.schedule_fetches(now);
    }

    /// Whether a stream's tick is due; schedules the next one.
    fn due(rng: &mut StdRng, next: &mut Option<Time>, now: Time, rate: f64) -> bool {
        if rate <= 0.0 {
            return false;
        }
        let at = *next.get_or_insert_with(|| now + poisson_gap(rng, rate));
        if now < at {
            return false;
        }
        // The next tick follows the planned one, not the moment this one was
        // handled: a driver that is busy (and so late) does not slow the
        // stream down, which would tell an observer that it is busy. Only
        // after a long stall (a suspended machine) are missed ticks dropped
        // rather than sent in a burst.
        let base = if now.saturating_since(at) > Duration::from_secs(5) {
            now
        } else {
            at
        };
        *next = Some(base + poisson_gap(rng, rate));
        true
    }

    fn directory(&self, now: Time) -> Option<Arc<EpochDirectory>> {
        self.directories
            .get(&self.config.params.epoch_at(now))
            .cloned()
    }

    /// One of the client's live providers, as listed in `directory`.
    fn own_provider<'a>(&mut self, directory: &'a EpochDirectory) -> Option<&'a DirNode> {
        let live: Vec<&DirNode> = self
            .mailboxes
            .iter()
            .filter(|m| !self.down.contains(&m.provider))
            .filter_map(|m| directory.provider(&m.provider))
            .collect();
        (!live.is_empty()).then(|| live[self.rng.random_range(0..live.len())])
    }

    /// The next real packet to send, if any: a message, or an
    /// acknowledgement when no message waits or the acknowledgement has
    /// waited [`ACK_MAX_WAIT`]. Queued messages acknowledged meanwhile are
    /// skipped.
    fn next_outgoing(&mut self, now: Time) -> Option<Outgoing> {
        while let Some(id) = self.queue.front() {
            if self.pending.contains_key(id) {
                break;
            }
            self.queue.pop_front();
        }
        let ack_overdue = self
            .acks
            .front()
            .is_some_and(|a| now.saturating_since(a.queued) >= ACK_MAX_WAIT);
        let ack = |a: QueuedAck| Outgoing::Ack {
            first_hop: a.first_hop,
            packet: a.packet,
        };
        if ack_overdue && let Some(a) = self.acks.pop_front() {
            return Some(ack(a));
        }
        if let Some(packet) = self.next_errand_packet(now, LOOKUPS) {
            return Some(packet);
        }
        if let Some(id) = self.queue.pop_front() {
            return Some(Outgoing::Message(id));
        }
        if let Some(a) = self.acks.pop_front() {
            return Some(ack(a));
        }
        self.next_errand_packet(now, PUBLICATIONS)
    }

    /// The next packet of the errands in `lane`, building the next errand
    /// when the last one's packets are gone.
    fn next_errand_packet(&mut self, now: Time, lane: usize) -> Option<Outgoing> {
        if self.errand_packets[lane].is_empty()
            && let Some(id) = self.errand_queue[lane].pop_front()
            && let Err(e) = self.build_errand(now, id)
        {
            // No route now: try again at a later tick.
            if !matches!(e, MixnetError::NoRoute(_)) {
                self.end_errand(&id);
                self.stats.errands_failed += 1;
                self.events.push_back(ClientEvent::ErrandFailed { id });
            } else {
                self.errand_queue[lane].push_front(id);
            }
        }
        self.errand_packets[lane]
            .pop_front()
            .map(|(first_hop, packet)| Outgoing::Errand { first_hop, packet })
    }

    /// One tick of the payload or drop stream sends exactly one packet: the
    /// next queued one, or drop cover.
    fn payload_tick(&mut self, now: Time) {
        match self.next_outgoing(now) {
            None => self.send_drop(now),
            Some(Outgoing::Ack { first_hop, packet }) => {
                self.stats.acks_sent += 1;
                self.outbox.push_back((first_hop, packet));
            }
            Some(Outgoing::Errand { first_hop, packet }) => {
                self.stats.errand_packets_sent += 1;
                self.outbox.push_back((first_hop, packet));
            }
            Some(Outgoing::Message(id)) => {
                if self.send_message(now, id).is_err() {
                    // No route now: put it back and send cover instead, so
                    // the stream keeps its rate.
                    self.stats.no_route += 1;
                    self.queue.push_front(id);
                    self.send_drop(now);
                }
            }
        }
    }

    fn send_message(&mut self, now: Time, id: MessageId) -> Result<(), MixnetError> {
        let Some(pending) = self.pending.get(&id) else {
            return Ok(());
        };
        let directory = self
            .directory(now)
            .ok_or_else(|| MixnetError::NoRoute("no directory for this epoch".into()))?;
        let epoch = directory.epoch;
        let mean = self.config.params.rates.mean_delay_ms;
        // Alternate between the recipient's mailboxes, attempt by attempt,
        // skipping providers known to be down while others are up.
        let boxes = &pending.to.mailboxes;
        let live: Vec<&(NodeId, MailboxId)> = boxes
            .iter()
            .filter(|(p, _)| !self.down.contains(p))
            .collect();
        let (their_provider_id, their_mailbox) = if live.is_empty() {
            boxes[pending.attempts as usize % boxes.len()]
        } else {
            *live[pending.attempts as usize % live.len()]
        };
        let their_provider = directory.provider(&their_provider_id).ok_or_else(|| {
            MixnetError::NoRoute("recipient's provider is not in the directory".into())
        })?;
        let seal_to = pending.to.seal_key;
        let body = pending.body.clone();
        let acknowledged = pending.acknowledged;
        // The acknowledgement comes back into one of our mailboxes, through
        // a SURB; a message sent unacknowledged carries none.
        let surb = if acknowledged {
            let reply_provider = self
                .own_provider(&directory)
                .ok_or_else(|| MixnetError::NoRoute("no live provider".into()))?;
            let reply_mailbox = self
                .mailboxes
                .iter()
                .find(|m| m.provider == reply_provider.id)
                .map(|m| m.id)
                .ok_or_else(|| MixnetError::NoRoute("own mailbox missing".into()))?;
            let surb_route = directory.route_avoiding(
                &mut self.rng,
                their_provider,
                reply_provider,
                mean,
                &self.down,
            )?;
            if self.surbs.len() >= MAX_SURBS {
                return Err(MixnetError::NoRoute(
                    "too many acknowledgements outstanding".into(),
                ));
            }
            Some(build_surb(
                &mut self.rng,
                epoch,
                &surb_route,
                reply_mailbox,
            )?)
        } else {
            None
        };
        let (surb, secrets) = match surb {
            Some((surb, secrets)) => (Some(Box::new(surb)), Some(secrets)),
            None => (None, None),
        };
        let inner = Inner::Data { id, surb, body }.encode()?;
        let sealed = message::seal(&mut self.rng, &seal_to, &inner);
        let entry = self
            .own_provider(&directory)
            .ok_or_else(|| MixnetError::NoRoute("no live provider".into()))?;
        let route =
            directory.route_avoiding(&mut self.rng, entry, their_provider, mean, &self.down)?;
        let packet = build_packet(&mut self.rng, epoch, &route, their_mailbox, &sealed[..])?;
        match secrets {
            None => {
                // Sent once; nothing comes back, nothing to wait for.
                self.pending.remove(&id);
            }
            Some(secrets) => {
                let surb_id = secrets.id();
                self.surbs.insert(surb_id, (secrets, id));
                if let Some(p) = self.pending.get_mut(&id) {
                    if p.attempts > 0 {
                        self.stats.retransmissions += 1;
                    }
                    p.attempts += 1;
                    p.surbs.push(surb_id);
                    let backoff =
                        self.config.ack_timeout * 2u32.saturating_pow(p.attempts - 1).min(64);
                    p.retry_at = Some(now + backoff);
                }
            }
        }
        self.stats.real_sent += 1;
        self.outbox.push_back((route[0].node, packet));
        Ok(())
    }

    fn send_drop(&mut self, now: Time) {
        let Some(directory) = self.directory(now) else {
            self.stats.no_route += 1;
            return;
        };
        let Some(entry) = self.own_provider(&directory) else {
            self.stats.no_route += 1;
            return;
        };
        let Some(target) = directory.random_provider(&mut self.rng) else {
            return;
        };
        let mean = self.config.params.rates.mean_delay_ms;
        let Ok(route) = directory.route_avoiding(&mut self.rng, entry, target, mean, &self.down)
        else {
            self.stats.no_route += 1;
            return;
        };
        let mut noise = vec![0u8; MESSAGE_SIZE];
        self.rng.fill_bytes(&mut noise);
        if let Ok(packet) = build_packet(
            &mut self.rng,
            directory.epoch,
            &route,
            DISCARD_MAILBOX,
            &noise,
        ) {
            self.stats.drop_sent += 1;
            self.outbox.push_back((route[0].node, packet));
        }
    }

    fn loop_tick(&mut self, now: Time) {
        let Some(directory) = self.directory(now) else {
            self.stats.no_route += 1;
            return;
        };
        let (Some(entry), Some(exit)) =
            (self.own_provider(&directory), self.own_provider(&directory))
        else {
            self.stats.no_route += 1;
            return;
        };
        let Some(mailbox) = self
            .mailboxes
            .iter()
            .find(|m| m.provider == exit.id)
            .map(|m| m.id)
        else {
            return;
        };
        let mean = self.config.params.rates.mean_delay_ms;
        let Ok(route) = directory.route_avoiding(&mut self.rng, entry, exit, mean, &self.down)
        else {
            self.stats.no_route += 1;
            return;
        };
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        let Ok(inner) = (Inner::Loop { id }).encode() else {
            return;
        };
        let sealed = message::seal(&mut self.rng, &self.keys.seal.public(), &inner);
        if let Ok(packet) =
            build_packet(&mut self.rng, directory.epoch, &route, mailbox, &sealed[..])
        {
            if self.loops.len() < MAX_LOOPS {
                self.loops.insert(id, now);
            }
            self.stats.loops_sent += 1;
            self.outbox.push_back((route[0].node, packet));
        }
    }

    fn retransmit(&mut self, now: Time) {
        let due: Vec<MessageId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.retry_at.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(p) = self.pending.get_mut(&id) else {
                continue;
            };
            p.retry_at = None;
            if p.attempts >= self.config.max_attempts {
                if let Some(p) = self.pending.remove(&id) {
                    for s in p.surbs {
                        self.surbs.remove(&s);
                    }
                }
                self.events.push_back(ClientEvent::Failed { id });
            } else {
                self.queue.push_back(id);
            }
        }
    }

    fn schedule_fetches(&mut self, now: Time) {
        let wait_ms = u32::try_from(self.config.fetch_wait.as_millis()).unwrap_or(u32::MAX);
        for m in &mut self.mailboxes {
            if m.fetching || m.retry_fetch_at.is_some_and(|t| t > now) {
                continue;
            }
            let mut nonce = [0u8; 16];
            self.rng.fill_bytes(&mut nonce);
            let request = FetchRequest {
                owner: m.key.verifying_key().to_bytes(),
                provider: m.provider,
                ack_through: m.handled,
                issued_at: now,
                nonce,
                wait_ms,
            };
            m.fetching = true;
            m.retry_fetch_at = None;
            self.fetches.push_back((m.provider, request.sign(&m.key)));
        }
    }

    /// Handles the provider's answer to a fetch. Events for the received
    /// items come out of [`Client::poll_event`]; the items are deleted at
    /// the provider with the next fetch, so the application must store what
    /// it needs before polling the next fetch.
    pub fn handle_fetch_response(&mut self, now: Time, provider: NodeId, bytes: &[u8]) {
        let Some(index) = self.mailboxes.iter().position(|m| m.provider == provider) else {
            return;
        };
        self.mailboxes[index].fetching = false;
        let response = match FetchResponse::decode(bytes) {
            Ok(r) if r.refused.is_none() => r,
            _ => return self.fetch_failed_at(index, now),
        };
        for (seq, item) in response.items {
            if seq <= self.mailboxes[index].handled {
                continue;
            }
            self.mailboxes[index].handled = seq;
            match MailboxItem::decode(&item) {
                Ok(MailboxItem::Message(sealed)) => self.handle_message(now, &sealed),
                Ok(MailboxItem::Reply { surb_id, payload }) => {
                    self.handle_reply(now, surb_id, &payload)
                }
                Err(_) => self.stats.undecryptable += 1,
            }
        }
    }

    /// The fetch to `provider` failed (no connection, timeout): try again
    /// a little later.
    pub fn handle_fetch_failed(&mut self, now: Time, provider: NodeId) {
        if let Some(index) = self.mailboxes.iter().position(|m| m.provider == provider) {
            self.fetch_failed_at(index, now);
        }
    }

    fn fetch_failed_at(&mut self, index: usize, now: Time) {
        let m = &mut self.mailboxes[index];
        m.fetching = false;
        m.retry_fetch_at = Some(now + Duration::from_secs(2));
    }

    fn handle_message(&mut self, now: Time, sealed: &[u8; MESSAGE_SIZE]) {
        let inner = match message::open(&self.keys.seal, sealed).and_then(|p| Inner::decode(&p)) {
            Ok(inner) => inner,
            Err(_) => {
                self.stats.undecryptable += 1;
                return;
            }
        };
        match inner {
            Inner::Data { id, surb, body } => {
                if self.seen.insert(id) {
                    self.events.push_back(ClientEvent::Received { id, body });
                } else {
                    self.stats.duplicates += 1;
                }
                if let Some(surb) = surb {
                    let first_hop = surb.first_hop();
                    // An honest sender's SURB starts at the provider the
                    // message came through, one of ours. Sending anywhere
                    // else would connect us to a node the sender chose.
                    if !self.mailboxes.iter().any(|m| m.provider == first_hop) {
                        self.stats.foreign_surbs += 1;
                        return;
                    }
                    if let Ok(packet) = surb.into_reply(&message::encode_ack(&id)) {
                        // Bounded: under a flood the oldest acknowledgement
                        // goes, and its sender sends again.
                        if self.acks.len() >= self.config.max_queue {
                            self.acks.pop_front();
                            self.stats.acks_dropped += 1;
                        }
                        self.acks.push_back(QueuedAck {
                            first_hop,
                            packet,
                            queued: now,
                        });
                    }
                }
            }
            Inner::Loop { id } => {
                if let Some(sent) = self.loops.remove(&id) {
                    self.stats.loops_returned += 1;
                    self.events.push_back(ClientEvent::LoopReturned {
                        rtt: now.saturating_since(sent),
                    });
                }
            }
        }
    }

    fn handle_reply(
        &mut self,
        now: Time,
        surb_id: SurbId,
        payload: &[u8; chainmail_packet::PAYLOAD_SIZE],
    ) {
        if let Some((secrets, errand)) = self.errand_surbs.remove(&surb_id) {
            return self.handle_errand_reply(now, &secrets, errand, surb_id, payload);
        }
        let Some((secrets, _)) = self.surbs.remove(&surb_id) else {
            return;
        };
        let Ok(reply) = secrets.open(surb_id, payload) else {
            self.stats.undecryptable += 1;
            return;
        };
        let Ok(id) = message::decode_ack(&reply) else {
            self.stats.undecryptable += 1;
            return;
        };
        if let Some(p) = self.pending.remove(&id) {
            for s in p.surbs {
                self.surbs.remove(&s);
            }
            self.events.push_back(ClientEvent::Delivered {
                id,
                after: now.saturating_since(p.created),
            });
        }
    }

    /// When to call [`Client::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Time> {
        let retry = self
            .pending
            .values()
            .filter_map(|p| p.retry_at)
            .chain(self.errands.values().filter_map(|e| e.retry_at))
            .min();
        let fetch = self.mailboxes.iter().filter_map(|m| m.retry_fetch_at).min();
        let fetch_now = self
            .mailboxes
            .iter()
            .any(|m| !m.fetching && m.retry_fetch_at.is_none());
        let soonest = [
            self.next_payload,
            self.next_loop,
            self.next_drop,
            retry,
            fetch,
        ]
        .into_iter()
        .flatten()
        .min();
        if fetch_now || !self.started {
            // Not started yet, or a fetch to send: come back at once.
            return Some(Time(0));
        }
        soonest
    }

    /// The next packet to send: (first hop, packet). The first hop is always
    /// one of this client's providers: messages, cover and errands enter
    /// the mixnet there, and acknowledgements leave through SURBs that
    /// start there (others are refused).
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Packet)> {
        self.outbox.pop_front()
    }

    /// The next fetch request: (provider, signed request bytes).
    pub fn poll_fetch(&mut self) -> Option<(NodeId, Vec<u8>)> {
        self.fetches.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }
}
