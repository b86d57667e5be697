//! One member's view of a community: the chain, its keys, the pool of
//! records waiting for a block, its own posts until they are in, block
//! production when it is an admin or the owner, and sync.

use std::collections::{HashMap, VecDeque};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_core::Rng;

use crate::chain::{Chain, Fit, Insertion};
use crate::crypto::{
    EpochKey, Hash, MemberKeys, MemberSecret, open_post, seal_post, unwrap_for, wrap_for,
};
use crate::state::State;
use crate::types::{Block, BlockId, Body, Genesis, MemberId, Record, RecordId, Role};
use crate::wire::{SyncRequest, SyncResponse, Want, sync_tag};
use crate::{ChainError, limits};

/// Timing of a member.
#[derive(Clone, Debug)]
pub struct Config {
    /// A producer that is not first in line for the next height waits this
    /// long per place before producing, so producers rarely race.
    pub stagger_ms: u64,
    /// Minimum time between two blocks of this producer.
    pub block_interval_ms: u64,
    /// Own records not yet in the best chain are published again this
    /// often (gossip is best effort).
    pub republish_ms: u64,
    /// Records held in the pool at most.
    pub max_pool: usize,
    /// An action of ours that the best chain no longer allows (its block
    /// lost to a branch where our rights differ) is held this long, tried
    /// again whenever the best chain changes (the branch may lose in
    /// turn), then dropped and counted.
    pub hold_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            stagger_ms: 1_000,
            block_interval_ms: 200,
            republish_ms: 20_000,
            max_pool: 2_048,
            hold_ms: 10 * 60_000,
        }
    }
}

/// What the driver must send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Gossip a record to the swarm.
    Record(Vec<u8>),
    /// Gossip a block to the swarm.
    Block(Vec<u8>),
    /// Ask a member node for these blocks (parents of held blocks).
    Fetch(Vec<BlockId>),
}

/// What became of a gossiped record that was not refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// Valid at the tip: in the pool for the next block.
    Pooled(RecordId),
    /// Already in a block of the best chain.
    Duplicate,
    /// Anchored to a block not held yet: held (bounded) until it arrives.
    Early,
    /// Anchored to another branch or too far back, or valid at its anchor
    /// but overtaken since (a post under a key that has rotated, an action
    /// whose rights changed): dropped.
    Stale,
}

/// What the user should hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// This member is in the chain now (joined).
    Admitted,
    /// This member was removed, banned or left.
    Expelled,
    /// A new community key (the rendezvous secret changed with it).
    KeyChanged,
    /// One of our posts cannot go in any more.
    PostFailed {
        /// Its text.
        text: String,
        /// Why.
        reason: &'static str,
    },
}

/// Counters of refused input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Blocks refused (bad signature, rights, state hash, …).
    pub blocks_refused: u64,
    /// Records refused.
    pub records_refused: u64,
    /// Gossiped records that arrived after a block of the best chain
    /// included them (dropped, not refused).
    pub records_duplicate: u64,
    /// Gossiped records that arrived before the block they are anchored
    /// to (held, bounded, and judged when it comes).
    pub records_early: u64,
    /// Gossiped records anchored to another branch or too far back, or
    /// overtaken since their anchor: dropped (issuers issue their posts
    /// again), not refused.
    pub records_stale: u64,
    /// Equivocations seen.
    pub equivocations: u64,
    /// Sync requests refused.
    pub sync_refused: u64,
    /// Blocks produced here.
    pub blocks_produced: u64,
    /// Turns at which producing failed (records stay in the pool).
    pub production_failed: u64,
    /// Our own actions (not posts) that could not count where they were
    /// made any more and were not valid when signed again on the tip (the
    /// rights they needed are gone, or their effect is already there).
    pub actions_dropped: u64,
    /// Our own posts that could not count where they were made any more
    /// and could not be made again ([`Event::PostFailed`]).
    pub posts_failed: u64,
}

/// One entry of the readable log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Height of the block that holds it.
    pub height: u64,
    /// The record id.
    pub record: RecordId,
    /// Who did it.
    pub issuer: MemberId,
    /// Their name (as of that block).
    pub issuer_name: String,
    /// When (the issuer's clock), ms since the Unix epoch.
    pub timestamp: u64,
    /// What.
    pub what: LogWhat,
}

/// What a log entry says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogWhat {
    /// A post; `None` if this member has no key for it (posted before it
    /// joined).
    Post(Option<String>),
    /// A post that was redacted.
    Redacted,
    /// A member joined.
    Added {
        /// Who.
        member: MemberId,
        /// As what name.
        name: String,
    },
    /// A member was removed.
    Removed(MemberId),
    /// A member was banned.
    Banned(MemberId),
    /// A member's role changed.
    Role(MemberId, Role),
    /// A post was redacted.
    Redact(RecordId),
    /// The key rotated.
    Rotated(u32),
    /// The issuer left.
    Left,
}

/// What must be kept to restore a [`Community`] (besides its blocks):
/// secret, keep it encrypted.
pub struct Saved {
    /// The member's secret keys.
    pub secret: MemberSecret,
    /// Community keys known, by the id of the record that made them.
    pub keys: Vec<(Hash, [u8; 32])>,
    /// Our posts not yet in the best chain.
    pub pending: Vec<String>,
}

/// A member's view of one community.
pub struct Community {
    chain: Chain,
    me: MemberSecret,
    keys: HashMap<Hash, EpochKey>,
    config: Config,
    rng: StdRng,
    pool: Vec<Record>,
    /// Gossiped records whose anchor has not arrived yet, oldest first.
    early: VecDeque<(RecordId, Record)>,
    /// Our own records not yet in the best chain, with a post's text.
    own: HashMap<RecordId, (Record, Option<String>)>,
    /// Our actions that the best chain does not allow now, with when they
    /// were first held (see [`Config::hold_ms`]), oldest first.
    held: Vec<(Body, u64)>,
    produce_at: Option<u64>,
    last_produced: u64,
    republish_at: u64,
    outputs: VecDeque<Output>,
    events: VecDeque<Event>,
    stats: Stats,
    was_member: bool,
    key_seen: Hash,
}

impl std::fmt::Debug for Community {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Community")
            .field("chain", &self.chain)
            .field("me", &crate::short(&self.me.id()))
            .finish_non_exhaustive()
    }
}

impl Community {
    /// Starts a new community; this member is its owner.
    pub fn create(
        config: Config,
        seed: [u8; 32],
        creator_name: &str,
        name: &str,
        policy: crate::Policy,
        now_ms: u64,
    ) -> Result<Community, ChainError> {
        let mut rng = StdRng::from_seed(seed);
        let me = MemberSecret::generate(&mut rng);
        let genesis = Genesis::create(&mut rng, &me, creator_name, name, policy, now_ms)?;
        let key = EpochKey::generate(&mut rng);
        let mut c = Community::with(config, rng, genesis, me);
        let id = c.chain.id();
        c.keys.insert(id, key);
        c.was_member = true;
        Ok(c)
    }

    /// A member-to-be (or returning member) of the community of `genesis`.
    pub fn join(config: Config, seed: [u8; 32], genesis: Genesis, me: MemberSecret) -> Community {
        Community::with(config, StdRng::from_seed(seed), genesis, me)
    }

    fn with(config: Config, rng: StdRng, genesis: Genesis, me: MemberSecret) -> Community {
        let chain = Chain::new(genesis);
        let key_seen = chain.state().key_id;
        Community {
            chain,
            me,
            keys: HashMap::new(),
            config,
            rng,
            pool: Vec::new(),
            early: VecDeque::new(),
            own: HashMap::new(),
            held: Vec::new(),
            produce_at: None,
            last_produced: 0,
            republish_at: 0,
            outputs: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            was_member: false,
            key_seen,
        }
    }

    /// Rebuilds a member's view from what [`Community::save`] returned and
    /// the stored blocks (any order).
    pub fn restore(
        config: Config,
        seed: [u8; 32],
        genesis: Genesis,
        saved: Saved,
        blocks: impl IntoIterator<Item = Block>,
        now_ms: u64,
    ) -> Community {
        let mut c = Community::join(config, seed, genesis, saved.secret);
        for (id, k) in saved.keys {
            c.keys.insert(id, EpochKey::from_bytes(k));
        }
        let mut blocks: Vec<Block> = blocks.into_iter().collect();
        blocks.sort_by_key(|b| b.height);
        for b in blocks {
            let _ = c.insert_block(b, now_ms);
        }
        c.was_member = c.is_member();
        c.key_seen = c.chain.state().key_id;
        c.events.clear();
        c.outputs.clear();
        for text in saved.pending {
            let _ = c.post(now_ms, &text);
        }
        c
    }

    /// What to keep (with the blocks) to restore this view.
    pub fn save(&self) -> Saved {
        let mut pending: Vec<(u64, String)> = self
            .own
            .values()
            .filter_map(|(r, text)| text.clone().map(|t| (r.timestamp, t)))
            .collect();
        pending.sort();
        Saved {
            secret: MemberSecret::from_bytes(&self.me.to_bytes()),
            keys: self
                .keys
                .iter()
                .map(|(id, k)| (*id, *k.to_bytes()))
                .collect(),
            pending: pending.into_iter().map(|(_, t)| t).collect(),
        }
    }

    /// The chain.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The community id.
    pub fn id(&self) -> Hash {
        self.chain.id()
    }

    /// The community's name.
    pub fn name(&self) -> &str {
        &self.chain.genesis().name
    }

    /// This member's id.
    pub fn me(&self) -> MemberId {
        self.me.id()
    }

    /// This member's public keys.
    pub fn my_keys(&self) -> MemberKeys {
        self.me.public()
    }

    /// Whether this member is in the tip's roster.
    pub fn is_member(&self) -> bool {
        self.chain.state().role(&self.me.id()).is_some()
    }

    /// The state at the tip.
    pub fn state(&self) -> &State {
        self.chain.state()
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Records waiting for a block.
    pub fn pool_len(&self) -> usize {
        self.pool.len()
    }

    /// Our records not yet in the best chain (actions held because the
    /// best chain does not allow them now included).
    pub fn pending(&self) -> usize {
        self.own.len() + self.held.len()
    }

    /// The current rendezvous secret, if this member has the current key.
    pub fn rendezvous_secret(&self) -> Option<Hash> {
        let state = self.chain.state();
        self.keys
            .get(&state.key_id)
            .map(|k| k.rendezvous_secret(&self.chain.id()))
    }

    /// Whether this member holds the current community key.
    pub fn has_current_key(&self) -> bool {
        self.keys.contains_key(&self.chain.state().key_id)
    }

    /// The next output to send.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next event to show.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Community::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Option<u64> {
        let republish = (!self.own.is_empty()).then_some(self.republish_at);
        let give_up = self
            .held
            .first()
            .map(|(_, since)| since.saturating_add(self.config.hold_ms));
        [self.produce_at, republish, give_up]
            .into_iter()
            .flatten()
            .min()
    }

    /// Produces a block when it is this producer's turn; publishes our
    /// pending records again when due.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.retry_held(now_ms);
        if self.produce_at.is_some_and(|t| now_ms >= t) {
            self.produce_at = None;
            if self.produce(now_ms).is_err() {
                // The records stay in the pool for the next turn.
                self.stats.production_failed += 1;
            }
            self.schedule(now_ms, true);
        }
        if !self.own.is_empty() && now_ms >= self.republish_at {
            self.republish_at = now_ms + self.config.republish_ms;
            let mut own: Vec<&Record> = self.own.values().map(|(r, _)| r).collect();
            own.sort_by_key(|r| r.timestamp);
            for r in own {
                self.outputs.push_back(Output::Record(r.encode()));
            }
        }
    }

    fn issue(
        &mut self,
        now_ms: u64,
        body: Body,
        text: Option<String>,
    ) -> Result<RecordId, ChainError> {
        let tip = self.chain.tip();
        let record = Record::sign(&self.me, self.chain.id(), tip, now_ms, body);
        self.chain
            .judge_record(&tip, self.chain.state(), &[], &record)?;
        let id = record.id();
        self.outputs.push_back(Output::Record(record.encode()));
        self.own.insert(id, (record.clone(), text));
        if self.own.len() == 1 {
            self.republish_at = now_ms + self.config.republish_ms;
        }
        self.add_to_pool(record);
        self.schedule(now_ms, false);
        Ok(id)
    }

    /// Posts a text, encrypted under the current community key.
    pub fn post(&mut self, now_ms: u64, text: &str) -> Result<RecordId, ChainError> {
        if text.len() > limits::MAX_POST_BYTES {
            return Err(ChainError::TooLarge {
                what: "post",
                size: text.len(),
                max: limits::MAX_POST_BYTES,
            });
        }
        if !self.is_member() {
            return Err(ChainError::Refused {
                what: "message",
                reason: "not a member of this community (any more)",
            });
        }
        let key_id = self.chain.state().key_id;
        let key = self.keys.get(&key_id).cloned().ok_or(ChainError::Refused {
            what: "message",
            reason: "this member does not have the current community key yet",
        })?;
        let (nonce, sealed) = seal_post(
            &mut self.rng,
            &key,
            &self.chain.id(),
            &self.me.id(),
            &key_id,
            text.as_bytes(),
        );
        self.issue(
            now_ms,
            Body::Message {
                key_id,
                nonce,
                sealed,
            },
            Some(text.to_owned()),
        )
    }

    /// Adds a member (moderators and above).
    pub fn add(
        &mut self,
        now_ms: u64,
        member: MemberKeys,
        name: &str,
    ) -> Result<RecordId, ChainError> {
        self.issue(
            now_ms,
            Body::Add {
                member,
                name: name.to_owned(),
            },
            None,
        )
    }

    /// Removes a member of lower rank.
    pub fn remove(&mut self, now_ms: u64, member: MemberId) -> Result<RecordId, ChainError> {
        self.issue(now_ms, Body::Remove { member }, None)
    }

    /// Bans a member (or key) of lower rank.
    pub fn ban(&mut self, now_ms: u64, member: MemberId) -> Result<RecordId, ChainError> {
        self.issue(now_ms, Body::Ban { member }, None)
    }

    /// Gives a member of lower rank another role below ours.
    pub fn set_role(
        &mut self,
        now_ms: u64,
        member: MemberId,
        role: Role,
    ) -> Result<RecordId, ChainError> {
        self.issue(now_ms, Body::SetRole { member, role }, None)
    }

    /// Redacts a post (ours, or of a lower rank as a moderator).
    pub fn redact(&mut self, now_ms: u64, record: RecordId) -> Result<RecordId, ChainError> {
        self.issue(now_ms, Body::Redact { record }, None)
    }

    /// Leaves the community.
    pub fn leave(&mut self, now_ms: u64) -> Result<RecordId, ChainError> {
        self.issue(now_ms, Body::Leave, None)
    }

    /// A gossiped record. Refused records are counted; records that race
    /// the blocks they refer to are not refused (see [`Received`]).
    pub fn handle_record(&mut self, now_ms: u64, bytes: &[u8]) -> Result<Received, ChainError> {
        let result = Record::decode(bytes).and_then(|r| self.accept_record(now_ms, r));
        self.count(&result);
        result
    }

    fn count(&mut self, result: &Result<Received, ChainError>) {
        match result {
            Err(_) => self.stats.records_refused += 1,
            Ok(Received::Duplicate) => self.stats.records_duplicate += 1,
            Ok(Received::Early) => self.stats.records_early += 1,
            Ok(Received::Stale) => self.stats.records_stale += 1,
            Ok(Received::Pooled(_)) => {}
        }
    }

    fn accept_record(&mut self, now_ms: u64, record: Record) -> Result<Received, ChainError> {
        if record.timestamp > now_ms.saturating_add(limits::MAX_SKEW_MS) {
            return Err(ChainError::Refused {
                what: record.body.kind(),
                reason: "dated in the future",
            });
        }
        if matches!(record.body, Body::RotateKey { .. }) {
            return Err(ChainError::Refused {
                what: "rotate_key",
                reason: "key rotations travel only inside blocks",
            });
        }
        let id = record.id();
        if self.pool.iter().any(|r| r.id() == id) {
            return Ok(Received::Pooled(id));
        }
        let tip = self.chain.tip();
        match self.chain.fit(&tip, &record) {
            Fit::Judge => {}
            Fit::Duplicate => return Ok(Received::Duplicate),
            Fit::Stale => return Ok(Received::Stale),
            Fit::Early => {
                if !self.early.iter().any(|(held, _)| *held == id) {
                    if self.early.len() >= limits::MAX_EARLY_RECORDS {
                        self.early.pop_front();
                    }
                    self.early.push_back((id, record));
                }
                return Ok(Received::Early);
            }
        }
        if let Err(err) = self
            .chain
            .judge_record(&tip, self.chain.state(), &[], &record)
        {
            // Valid where its issuer made it (at its anchor) but overtaken
            // since, by a key rotation or a change of rights it had not
            // seen yet: a race, not an offence. An honest node never
            // issues a record that is invalid at its own anchor.
            let valid_at_anchor = self.chain.state_at(&record.anchor).is_some_and(|state| {
                self.chain
                    .judge_record(&record.anchor, state, &[], &record)
                    .is_ok()
            });
            return if valid_at_anchor {
                Ok(Received::Stale)
            } else {
                Err(err)
            };
        }
        self.add_to_pool(record);
        self.schedule(now_ms, false);
        Ok(Received::Pooled(id))
    }

    /// Judges the held records whose anchors have arrived; a refused one
    /// counts as refused now.
    fn release_early(&mut self, now_ms: u64) {
        let (arrived, waiting): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.early)
            .into_iter()
            .partition(|(_, r)| self.chain.contains(&r.anchor));
        self.early = waiting;
        for (_, r) in arrived {
            // Their anchors are here: never `Early` again.
            let result = self.accept_record(now_ms, r);
            self.count(&result);
        }
    }

    fn add_to_pool(&mut self, record: Record) {
        if self.pool.len() >= self.config.max_pool {
            // Others' records go first; they will be published again.
            if let Some(i) = self.pool.iter().position(|r| r.issuer != self.me.id()) {
                self.pool.remove(i);
            } else {
                return;
            }
        }
        self.pool.push(record);
    }

    /// A gossiped or synced block. Refused blocks are counted.
    pub fn handle_block(&mut self, now_ms: u64, bytes: &[u8]) -> Result<Insertion, ChainError> {
        let result = Block::decode(bytes).and_then(|b| self.insert_block(b, now_ms));
        if result.is_err() {
            self.stats.blocks_refused += 1;
        }
        result
    }

    fn insert_block(&mut self, block: Block, now_ms: u64) -> Result<Insertion, ChainError> {
        let insertion = self.chain.insert(block, now_ms)?;
        self.stats.equivocations += insertion.equivocations as u64;
        for id in &insertion.stored {
            self.learn_keys(id);
        }
        if !insertion.stored.is_empty() && !self.early.is_empty() {
            self.release_early(now_ms);
        }
        if let Some(missing) = insertion.missing_parent {
            self.outputs.push_back(Output::Fetch(vec![missing]));
        }
        if !insertion.tip.is_empty() {
            // Records of blocks that left the best chain go back to the
            // pool; everything in the pool is judged again.
            let removed: Vec<Record> = insertion
                .tip
                .removed
                .iter()
                .filter_map(|id| self.chain.block(id))
                .flat_map(|b| b.records.iter().cloned())
                .filter(|r| !matches!(r.body, Body::RotateKey { .. }))
                .collect();
            let me = self.me.id();
            let mut restored = Vec::new();
            for r in removed {
                let id = r.id();
                // Ours: no longer confirmed. It goes back to the records
                // we publish until a block of the best chain holds it (or
                // is made again below if it cannot count any more).
                if r.issuer == me && !self.own.contains_key(&id) {
                    let text = self.own_text(&r);
                    self.own.insert(id, (r.clone(), text));
                    restored.push(id);
                }
                if !self.pool.iter().any(|p| p.id() == id) {
                    self.add_to_pool(r);
                }
            }
            self.revalidate(now_ms);
            // Those still valid here are published again at once: the
            // producers of the winning branch may never have had them.
            for id in restored {
                if let Some((r, _)) = self.own.get(&id) {
                    self.outputs.push_back(Output::Record(r.encode()));
                }
            }
            if !self.own.is_empty() && self.republish_at <= now_ms {
                self.republish_at = now_ms + self.config.republish_ms;
            }
            self.schedule(now_ms, true);
        }
        Ok(insertion)
    }

    /// The text of a post of ours (read with the key it was sealed
    /// under); `None` for other records.
    fn own_text(&self, record: &Record) -> Option<String> {
        let Body::Message {
            key_id,
            nonce,
            sealed,
        } = &record.body
        else {
            return None;
        };
        let key = self.keys.get(key_id)?;
        open_post(key, &self.chain.id(), &record.issuer, key_id, nonce, sealed)
            .and_then(|p| String::from_utf8(p).ok())
    }

    fn learn_keys(&mut self, block: &BlockId) {
        let Some(b) = self.chain.block(block) else {
            return;
        };
        let me = self.me.id();
        let community = self.chain.id();
        let mut found = Vec::new();
        for r in &b.records {
            if let Body::RotateKey {
                epoch,
                ephemeral,
                wraps,
            } = &r.body
                && let Ok(i) = wraps.binary_search_by(|(m, _)| m.cmp(&me))
                && let Some(key) = unwrap_for(&self.me, &community, *epoch, ephemeral, &wraps[i].1)
            {
                found.push((r.id(), key));
            }
        }
        self.keys.extend(found);
    }

    /// Tries our held actions again on the current tip; those held longer
    /// than [`Config::hold_ms`] and still not allowed are dropped and
    /// counted.
    fn retry_held(&mut self, now_ms: u64) {
        for (body, since) in std::mem::take(&mut self.held) {
            if self.issue(now_ms, body.clone(), None).is_ok() {
                continue;
            }
            if now_ms >= since.saturating_add(self.config.hold_ms) {
                self.stats.actions_dropped += 1;
            } else {
                self.held.push((body, since));
            }
        }
    }

    fn revalidate(&mut self, now_ms: u64) {
        self.retry_held(now_ms);
        let tip = self.chain.tip();
        let pool = std::mem::take(&mut self.pool);
        for r in pool {
            if self
                .chain
                .judge_record(&tip, self.chain.state(), &[], &r)
                .is_ok()
            {
                self.pool.push(r);
            }
        }
        // Our own records: in the best chain (done), still valid (wait),
        // or stale; a stale post is encrypted again under the current key,
        // any other stale record is signed again on the tip, where it is
        // judged afresh (an action whose rights are gone is dropped).
        let own: Vec<(RecordId, Record, Option<String>)> =
            self.own.drain().map(|(id, (r, t))| (id, r, t)).collect();
        let mut again = Vec::new();
        for (id, record, text) in own {
            let in_main = self.in_best_chain(&id, &record);
            if in_main {
                continue;
            }
            match self
                .chain
                .judge_record(&tip, self.chain.state(), &[], &record)
            {
                Ok(()) => {
                    self.own.insert(id, (record, text));
                }
                Err(e) => again.push((record, text, e)),
            }
        }
        again.sort_by_key(|(r, _, _)| r.timestamp);
        for (record, text, e) in again {
            match (text, record.body) {
                (Some(text), _) => {
                    if let Err(e2) = self.post(now_ms, &text) {
                        let reason = match e2 {
                            ChainError::Refused { reason, .. } => reason,
                            _ => match e {
                                ChainError::Refused { reason, .. } => reason,
                                _ => "refused",
                            },
                        };
                        self.stats.posts_failed += 1;
                        self.events.push_back(Event::PostFailed { text, reason });
                    }
                }
                // A post we cannot read any more is not made again.
                (None, Body::Message { .. } | Body::RotateKey { .. }) => {}
                (None, body) => {
                    if self.issue(now_ms, body.clone(), None).is_err()
                        && !self.held.iter().any(|(b, _)| *b == body)
                    {
                        // Not allowed on this branch; the branch may lose.
                        if self.held.len() >= limits::MAX_HELD_ACTIONS {
                            self.held.remove(0);
                            self.stats.actions_dropped += 1;
                        }
                        self.held.push((body, now_ms));
                    }
                }
            }
        }
        let member = self.is_member();
        if member && !self.was_member {
            self.events.push_back(Event::Admitted);
        } else if !member && self.was_member {
            self.events.push_back(Event::Expelled);
        }
        self.was_member = member;
        let key_id = self.chain.state().key_id;
        if key_id != self.key_seen {
            self.key_seen = key_id;
            self.events.push_back(Event::KeyChanged);
        }
    }

    /// Whether a record is in the best chain (searched from its anchor up).
    fn in_best_chain(&self, id: &RecordId, record: &Record) -> bool {
        if !self.chain.is_main(&record.anchor) {
            return false;
        }
        let main = self.chain.main();
        let start = main
            .iter()
            .position(|b| *b == record.anchor)
            .unwrap_or(main.len());
        main[start + 1..]
            .iter()
            .take(limits::ANCHOR_WINDOW as usize)
            .filter_map(|b| self.chain.block(b))
            .any(|b| b.records.iter().any(|r| r.id() == *id))
    }

    /// When this producer should produce: the first in line for the next
    /// height at once, the others one stagger later per place.
    fn schedule(&mut self, now_ms: u64, reset: bool) {
        if reset {
            self.produce_at = None;
        }
        if self.pool.is_empty() || self.produce_at.is_some() {
            return;
        }
        let producers = self.chain.state().producers();
        let Some(mine) = producers.iter().position(|p| *p == self.me.id()) else {
            return;
        };
        let n = producers.len();
        let leader = ((self.chain.height() + 1) % n as u64) as usize;
        let place = (mine + n - leader) % n;
        let at = now_ms + place as u64 * self.config.stagger_ms;
        self.produce_at = Some(at.max(self.last_produced + self.config.block_interval_ms));
    }

    /// Builds, signs, stores and publishes a block of the pool's valid
    /// records (posts first, then other changes, then roster changes and
    /// the key rotation they require).
    pub fn produce(&mut self, now_ms: u64) -> Result<Option<BlockId>, ChainError> {
        let state = self.chain.state();
        if state.role(&self.me.id()) < Some(Role::Admin) {
            return Ok(None);
        }
        let parent = self.chain.tip();
        let mut state = state.clone();
        // Room for the key rotation that may end the block: a wrap (80
        // bytes with its member id) per member of the roster as it will
        // be, and 512 for the rest. It grows with every addition, so it is
        // counted per record, not once for the roster before the block.
        let rotation_room = |members: usize| members * 80 + 512;
        let mut candidates: Vec<&Record> = self.pool.iter().collect();
        candidates.sort_by_key(|r| match r.body {
            Body::Message { .. } => 0,
            ref b if b.changes_roster() => 2,
            _ => 1,
        });
        let mut chosen: Vec<Record> = Vec::new();
        let mut size = 256;
        let mut roster_changed = false;
        let me = self.me.id();
        for r in candidates {
            if chosen.len() + 1 >= limits::MAX_RECORDS_PER_BLOCK {
                break;
            }
            let len = r.encode().len() + 4;
            let members = state.members().len() + usize::from(matches!(r.body, Body::Add { .. }));
            if size + len + rotation_room(members) > limits::MAX_BLOCK_BYTES {
                continue;
            }
            if r.timestamp > now_ms.saturating_add(limits::MAX_SKEW_MS) {
                continue;
            }
            // A record that ends our right to produce (our leave, removal,
            // ban or demotion) would leave the key rotation a roster change
            // needs without a valid signer, and fail every turn: other
            // producers include it.
            let ends_our_rights = match &r.body {
                Body::Leave => r.issuer == me,
                Body::Remove { member } | Body::Ban { member } => *member == me,
                Body::SetRole { member, role } => *member == me && *role < Role::Admin,
                _ => false,
            };
            if ends_our_rights {
                continue;
            }
            if self
                .chain
                .judge_record(&parent, &state, &chosen, r)
                .is_err()
            {
                continue;
            }
            if r.body.changes_roster() && state.members().len() + 1 > limits::MAX_MEMBERS as usize {
                continue;
            }
            size += len;
            roster_changed |= r.body.changes_roster();
            state.apply(r);
            chosen.push(r.clone());
        }
        if chosen.is_empty() {
            return Ok(None);
        }
        let community = self.chain.id();
        if roster_changed {
            let key = EpochKey::generate(&mut self.rng);
            let epoch = state.epoch + 1;
            let ids: Vec<MemberId> = state.members().keys().copied().collect();
            let kems: Vec<[u8; 32]> = state.members().values().map(|m| m.keys.kem).collect();
            let (ephemeral, sealed) = wrap_for(&mut self.rng, &community, epoch, &key, &kems);
            let rotate = Record::sign(
                &self.me,
                community,
                parent,
                now_ms,
                Body::RotateKey {
                    epoch,
                    ephemeral,
                    wraps: ids.into_iter().zip(sealed).collect(),
                },
            );
            self.chain.judge_record(&parent, &state, &chosen, &rotate)?;
            state.apply(&rotate);
            self.keys.insert(rotate.id(), key);
            chosen.push(rotate);
        }
        let parent_ts = self
            .chain
            .block(&parent)
            .map_or(self.chain.genesis().created, |b| b.timestamp);
        let mut block = Block {
            community,
            height: self.chain.height() + 1,
            parent,
            producer: self.me.id(),
            timestamp: now_ms.max(parent_ts),
            state_hash: state.hash(),
            records: chosen,
            signature: [0; 64],
        };
        block.sign(&self.me);
        let id = block.id();
        let bytes = block.encode();
        self.insert_block(block, now_ms)?;
        self.stats.blocks_produced += 1;
        self.last_produced = now_ms;
        self.outputs.push_back(Output::Block(bytes));
        Ok(Some(id))
    }

    /// Rotates the community key now (admins and the owner): a block with
    /// only a rotation.
    pub fn rotate(&mut self, now_ms: u64) -> Result<BlockId, ChainError> {
        let state = self.chain.state().clone();
        if state.role(&self.me.id()) < Some(Role::Admin) {
            return Err(ChainError::Refused {
                what: "rotate_key",
                reason: "only admins and the owner rotate keys",
            });
        }
        let community = self.chain.id();
        let parent = self.chain.tip();
        let key = EpochKey::generate(&mut self.rng);
        let epoch = state.epoch + 1;
        let ids: Vec<MemberId> = state.members().keys().copied().collect();
        let kems: Vec<[u8; 32]> = state.members().values().map(|m| m.keys.kem).collect();
        let (ephemeral, sealed) = wrap_for(&mut self.rng, &community, epoch, &key, &kems);
        let rotate = Record::sign(
            &self.me,
            community,
            parent,
            now_ms,
            Body::RotateKey {
                epoch,
                ephemeral,
                wraps: ids.into_iter().zip(sealed).collect(),
            },
        );
        let mut after = state.clone();
        self.chain.judge_record(&parent, &state, &[], &rotate)?;
        after.apply(&rotate);
        self.keys.insert(rotate.id(), key);
        let parent_ts = self
            .chain
            .block(&parent)
            .map_or(self.chain.genesis().created, |b| b.timestamp);
        let mut block = Block {
            community,
            height: self.chain.height() + 1,
            parent,
            producer: self.me.id(),
            timestamp: now_ms.max(parent_ts),
            state_hash: after.hash(),
            records: vec![rotate],
            signature: [0; 64],
        };
        block.sign(&self.me);
        let id = block.id();
        let bytes = block.encode();
        self.insert_block(block, now_ms)?;
        self.outputs.push_back(Output::Block(bytes));
        Ok(id)
    }

    /// A signed request for what we miss after our best chain.
    pub fn sync_request(&self, now_ms: u64) -> Vec<u8> {
        SyncRequest::new(
            &self.me,
            &self.chain.id(),
            now_ms,
            Want::After(self.chain.locator()),
        )
        .encode()
    }

    /// A signed request for particular blocks.
    pub fn fetch_request(&self, now_ms: u64, ids: Vec<BlockId>) -> Vec<u8> {
        SyncRequest::new(&self.me, &self.chain.id(), now_ms, Want::Blocks(ids)).encode()
    }

    /// The sync tag requests for this community carry.
    pub fn sync_tag(&self) -> Hash {
        sync_tag(&self.chain.id())
    }

    /// Answers a decoded sync request (whose tag is this community's):
    /// members of our tip's roster get up to `max_bytes` of blocks.
    pub fn answer_sync(
        &mut self,
        now_ms: u64,
        request: &SyncRequest,
        max_bytes: usize,
    ) -> SyncResponse {
        if request.tag != self.sync_tag() {
            return SyncResponse::Unknown;
        }
        if request.timestamp.abs_diff(now_ms) > limits::MAX_SYNC_AGE_MS {
            self.stats.sync_refused += 1;
            return SyncResponse::Stale;
        }
        if self.chain.state().role(&request.member).is_none() {
            self.stats.sync_refused += 1;
            return SyncResponse::NotMember;
        }
        let blocks = match &request.want {
            Want::After(locator) => {
                self.chain
                    .blocks_after(locator, limits::MAX_SYNC_BLOCKS, max_bytes)
            }
            Want::Blocks(ids) => self.chain.blocks_by_id(ids, max_bytes),
        };
        SyncResponse::Blocks(blocks)
    }

    /// Takes a sync response: returns how many blocks were new, or why it
    /// was refused. Refused blocks are counted.
    pub fn handle_sync_response(
        &mut self,
        now_ms: u64,
        bytes: &[u8],
    ) -> Result<SyncProgress, ChainError> {
        match SyncResponse::decode(bytes)? {
            SyncResponse::Blocks(blocks) => {
                let mut progress = SyncProgress {
                    received: blocks.len(),
                    ..SyncProgress::default()
                };
                for b in blocks {
                    match self.handle_block(now_ms, &b) {
                        Ok(ins) => progress.stored += ins.stored.len(),
                        Err(_) => progress.refused += 1,
                    }
                }
                Ok(progress)
            }
            SyncResponse::NotMember => Err(ChainError::Refused {
                what: "sync",
                reason: "the peer does not count us as a member (yet)",
            }),
            SyncResponse::Unknown => Err(ChainError::Refused {
                what: "sync",
                reason: "the peer does not know this community",
            }),
            SyncResponse::Stale => Err(ChainError::Refused {
                what: "sync",
                reason: "our clocks disagree by more than ten minutes",
            }),
        }
    }

    /// The best chain's readable log, oldest first: posts decrypted where
    /// this member has the key, redacted posts hidden.
    pub fn log(&self, since_height: u64) -> Vec<LogEntry> {
        let mut out = Vec::new();
        let community = self.chain.id();
        let tip_state = self.chain.state();
        let main = self.chain.main();
        for (h, id) in main.iter().enumerate().skip(since_height.max(1) as usize) {
            let Some(block) = self.chain.block(id) else {
                continue;
            };
            let Some(before) = self.chain.state_at(&block.parent) else {
                continue;
            };
            for r in &block.records {
                let issuer_name = before
                    .members()
                    .get(&r.issuer)
                    .map_or_else(|| crate::short(&r.issuer), |m| m.name.clone());
                let what = match &r.body {
                    Body::Message {
                        key_id,
                        nonce,
                        sealed,
                    } => {
                        if tip_state.is_redacted(&r.id()) {
                            LogWhat::Redacted
                        } else {
                            LogWhat::Post(self.keys.get(key_id).and_then(|k| {
                                open_post(k, &community, &r.issuer, key_id, nonce, sealed)
                                    .and_then(|p| String::from_utf8(p).ok())
                            }))
                        }
                    }
                    Body::Add { member, name } => LogWhat::Added {
                        member: member.sign,
                        name: name.clone(),
                    },
                    Body::Remove { member } => LogWhat::Removed(*member),
                    Body::Ban { member } => LogWhat::Banned(*member),
                    Body::SetRole { member, role } => LogWhat::Role(*member, *role),
                    Body::Redact { record } => LogWhat::Redact(*record),
                    Body::RotateKey { epoch, .. } => LogWhat::Rotated(*epoch),
                    Body::Leave => LogWhat::Left,
                };
                out.push(LogEntry {
                    height: h as u64,
                    record: r.id(),
                    issuer: r.issuer,
                    issuer_name,
                    timestamp: r.timestamp,
                    what,
                });
            }
        }
        out
    }

    /// A fresh random seed from this member's generator (for callers that
    /// need one, e.g. tokens).
    pub fn random(&mut self) -> [u8; 16] {
        let mut t = [0u8; 16];
        self.rng.fill_bytes(&mut t);
        t
    }
}

/// What a sync response brought.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncProgress {
    /// Blocks in the response.
    pub received: usize,
    /// Blocks newly stored (with orphans they connected).
    pub stored: usize,
    /// Blocks refused.
    pub refused: usize,
}
