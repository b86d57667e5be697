//! The block tree of one community: validation of blocks against their
//! parent's state, fork choice, equivocation evidence, orphans.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet, VecDeque};

use crate::crypto::Hash;
use crate::state::State;
use crate::types::{Block, BlockId, Body, Genesis, MemberId, Record, RecordId, Role};
use crate::{ChainError, limits};

struct Node {
    height: u64,
    parent: Option<BlockId>,
    timestamp: u64,
    block: Option<Block>,
    state: State,
    /// Fork-choice key among siblings: higher producer rank at the parent
    /// first, then lower id.
    key: (Reverse<Role>, BlockId),
    children: Vec<BlockId>,
    records: HashSet<RecordId>,
}

/// Two blocks signed by one producer at one height.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Equivocation {
    /// The producer.
    pub producer: MemberId,
    /// The height.
    pub height: u64,
    /// The two blocks, encoded (each carries the producer's signature).
    pub blocks: [Vec<u8>; 2],
}

/// How the best chain changed with an insertion.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TipChange {
    /// Blocks that left the best chain (their records go back to the pool).
    pub removed: Vec<BlockId>,
    /// Blocks that joined it, lowest first.
    pub added: Vec<BlockId>,
}

impl TipChange {
    /// Whether the tip moved.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty()
    }
}

/// What [`Chain::insert`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Insertion {
    /// Blocks now stored (the block and any orphans it connected), in the
    /// order they were stored.
    pub stored: Vec<BlockId>,
    /// The parent is unknown: the block waits; ask peers for this id.
    pub missing_parent: Option<BlockId>,
    /// Change of the best chain.
    pub tip: TipChange,
    /// Equivocations found.
    pub equivocations: usize,
}

/// How a gossiped record fits the chain at a tip, before its rights are
/// judged. Records race the blocks they refer to: these outcomes are the
/// ordinary result of gossip, not evidence of anything wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fit {
    /// Judge it against the tip's state.
    Judge,
    /// Already included in a block of the tip's branch.
    Duplicate,
    /// Anchored to a block not held yet: it can be judged once it arrives.
    Early,
    /// Anchored to a block of another branch or too far below the tip: no
    /// block on this tip can include it (its issuer issues it again).
    Stale,
}

/// A community's block tree.
pub struct Chain {
    genesis: Genesis,
    id: Hash,
    nodes: HashMap<BlockId, Node>,
    /// The best chain: `main[h]` is the block at height `h`.
    main: Vec<BlockId>,
    orphans: HashMap<BlockId, Block>,
    orphan_order: VecDeque<BlockId>,
    produced: HashMap<(u64, MemberId), BlockId>,
    evidence: Vec<Equivocation>,
    /// Where each record is included: block, issuer, whether a post.
    index: HashMap<RecordId, Vec<(BlockId, MemberId, bool)>>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("community", &crate::short(&self.id))
            .field("height", &self.height())
            .field("blocks", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl Chain {
    /// A chain holding only `genesis`.
    pub fn new(genesis: Genesis) -> Chain {
        let id = genesis.id();
        let state = State::genesis(&genesis);
        let mut nodes = HashMap::new();
        nodes.insert(
            id,
            Node {
                height: 0,
                parent: None,
                timestamp: genesis.created,
                block: None,
                state,
                key: (Reverse(Role::Owner), id),
                children: Vec::new(),
                records: HashSet::new(),
            },
        );
        Chain {
            genesis,
            id,
            nodes,
            main: vec![id],
            orphans: HashMap::new(),
            orphan_order: VecDeque::new(),
            produced: HashMap::new(),
            evidence: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// The community id.
    pub fn id(&self) -> Hash {
        self.id
    }

    /// The genesis block.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// The best chain's tip.
    pub fn tip(&self) -> BlockId {
        self.main[self.main.len() - 1]
    }

    /// The tip's height.
    pub fn height(&self) -> u64 {
        self.main.len() as u64 - 1
    }

    /// The state at the tip.
    pub fn state(&self) -> &State {
        &self.nodes[&self.tip()].state
    }

    /// The state after block `id`, if stored.
    pub fn state_at(&self, id: &BlockId) -> Option<&State> {
        self.nodes.get(id).map(|n| &n.state)
    }

    /// A stored block (`None` for the genesis and unknown ids).
    pub fn block(&self, id: &BlockId) -> Option<&Block> {
        self.nodes.get(id).and_then(|n| n.block.as_ref())
    }

    /// Whether a block is stored (the genesis included).
    pub fn contains(&self, id: &BlockId) -> bool {
        self.nodes.contains_key(id)
    }

    /// Blocks stored, the genesis included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never empty: the genesis is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The best chain, genesis first.
    pub fn main(&self) -> &[BlockId] {
        &self.main
    }

    /// Whether `id` is on the best chain.
    pub fn is_main(&self, id: &BlockId) -> bool {
        self.nodes
            .get(id)
            .is_some_and(|n| self.main.get(n.height as usize) == Some(id))
    }

    /// Equivocation evidence kept so far.
    pub fn evidence(&self) -> &[Equivocation] {
        &self.evidence
    }

    /// Blocks waiting for their parent.
    pub fn orphans(&self) -> usize {
        self.orphans.len()
    }

    /// Every stored block except the genesis, parents before children.
    pub fn blocks_in_order(&self) -> Vec<&Block> {
        let mut out: Vec<&Block> = self
            .nodes
            .values()
            .filter_map(|n| n.block.as_ref())
            .collect();
        out.sort_by_key(|b| b.height);
        out
    }

    /// Whether `ancestor` is `id` or one of its ancestors.
    pub fn is_ancestor(&self, ancestor: &BlockId, id: &BlockId) -> bool {
        let Some(target) = self.nodes.get(ancestor) else {
            return false;
        };
        let mut cur = *id;
        loop {
            let Some(node) = self.nodes.get(&cur) else {
                return false;
            };
            if node.height == target.height {
                return cur == *ancestor;
            }
            if node.height < target.height {
                return false;
            }
            match node.parent {
                Some(p) => cur = p,
                None => return false,
            }
        }
    }

    /// How a gossiped record fits the branch of `tip` (see [`Fit`]). Only
    /// [`Fit::Judge`] records can be included in a block on `tip`.
    pub(crate) fn fit(&self, tip: &BlockId, record: &Record) -> Fit {
        if record.community != self.id {
            // Judging refuses it.
            return Fit::Judge;
        }
        let Some(anchor) = self.nodes.get(&record.anchor) else {
            return Fit::Early;
        };
        let included = self.index.get(&record.id()).is_some_and(|places| {
            places
                .iter()
                .any(|(block, _, _)| self.is_ancestor(block, tip))
        });
        if included {
            return Fit::Duplicate;
        }
        let tip_height = self.nodes.get(tip).map_or(0, |n| n.height);
        if !self.is_ancestor(&record.anchor, tip)
            || tip_height - anchor.height >= limits::ANCHOR_WINDOW
        {
            return Fit::Stale;
        }
        Fit::Judge
    }

    /// Judges a record as if it were the next in a block on `parent` whose
    /// records so far are `earlier`, against `state` (the parent's state
    /// with `earlier` applied). Checks community, anchor, duplicates and
    /// rights; not the timestamp.
    pub(crate) fn judge_record(
        &self,
        parent: &BlockId,
        state: &State,
        earlier: &[Record],
        record: &Record,
    ) -> Result<(), ChainError> {
        if record.community != self.id {
            return Err(ChainError::Refused {
                what: record.body.kind(),
                reason: "belongs to another community",
            });
        }
        let rid = record.id();
        // Same id means same signed fields (the encoding is injective):
        // compare those instead of hashing every earlier record again,
        // which made judging a block quadratic in its records.
        if earlier.iter().any(|r| {
            r.issuer == record.issuer
                && r.timestamp == record.timestamp
                && r.anchor == record.anchor
                && r.community == record.community
                && r.body == record.body
        }) {
            return Err(ChainError::Refused {
                what: record.body.kind(),
                reason: "twice in one block",
            });
        }
        let anchor_height =
            self.nodes
                .get(&record.anchor)
                .map(|n| n.height)
                .ok_or(ChainError::Refused {
                    what: record.body.kind(),
                    reason: "anchored to an unknown block",
                })?;
        let parent_height = self.nodes.get(parent).map_or(0, |n| n.height);
        if anchor_height > parent_height || parent_height - anchor_height >= limits::ANCHOR_WINDOW {
            return Err(ChainError::Refused {
                what: record.body.kind(),
                reason: "anchored too far back or ahead",
            });
        }
        let mut cur = *parent;
        loop {
            let node = &self.nodes[&cur];
            if node.height == anchor_height {
                if cur != record.anchor {
                    return Err(ChainError::Refused {
                        what: record.body.kind(),
                        reason: "anchored to a block on another branch",
                    });
                }
                break;
            }
            if node.records.contains(&rid) {
                return Err(ChainError::Refused {
                    what: record.body.kind(),
                    reason: "already in the chain",
                });
            }
            match node.parent {
                Some(p) => cur = p,
                None => break,
            }
        }
        let target = match &record.body {
            Body::Redact { record: target } => earlier
                .iter()
                .find(|r| r.id() == *target && matches!(r.body, Body::Message { .. }))
                .map(|r| r.issuer)
                .or_else(|| {
                    self.index.get(target).and_then(|places| {
                        places
                            .iter()
                            .find(|(block, _, post)| *post && self.is_ancestor(block, parent))
                            .map(|(_, issuer, _)| *issuer)
                    })
                }),
            _ => None,
        };
        state.check(record, target)
    }

    /// Judges `block` against its parent's state and returns the state
    /// after it.
    fn judge(&self, block: &Block, now_ms: u64) -> Result<State, ChainError> {
        let bad = |reason| ChainError::BadBlock { reason };
        if block.community != self.id {
            return Err(bad("belongs to another community"));
        }
        let parent = self.nodes.get(&block.parent).ok_or(bad("unknown parent"))?;
        if block.height != parent.height + 1 {
            return Err(bad("height is not the parent's plus one"));
        }
        if parent.state.role(&block.producer) < Some(Role::Admin) {
            return Err(bad(
                "the producer is not an admin or the owner at the parent",
            ));
        }
        if block.timestamp < parent.timestamp {
            return Err(bad("timestamp before the parent's"));
        }
        if block.timestamp > now_ms.saturating_add(limits::MAX_SKEW_MS) {
            return Err(bad("timestamp in the future"));
        }
        let mut state = parent.state.clone();
        let mut roster_changed = false;
        for (i, record) in block.records.iter().enumerate() {
            if record.timestamp > block.timestamp.saturating_add(limits::MAX_SKEW_MS) {
                return Err(bad("a record is dated after its block"));
            }
            if roster_changed && matches!(record.body, Body::Message { .. }) {
                return Err(bad("a post after a roster change in the same block"));
            }
            self.judge_record(&block.parent, &state, &block.records[..i], record)?;
            roster_changed |= record.body.changes_roster();
            state.apply(record);
        }
        if roster_changed {
            match block.records.last() {
                Some(r)
                    if matches!(r.body, Body::RotateKey { .. }) && r.issuer == block.producer => {}
                _ => {
                    return Err(bad(
                        "a roster change without a key rotation by the producer",
                    ));
                }
            }
        }
        if state.hash() != block.state_hash {
            return Err(bad("the state hash does not match"));
        }
        Ok(state)
    }

    /// Adds a block (and any orphans waiting for it). Blocks that break a
    /// rule are refused with the rule; a block whose parent is unknown is
    /// held (bounded) and its parent named in the result.
    pub fn insert(&mut self, block: Block, now_ms: u64) -> Result<Insertion, ChainError> {
        let mut out = Insertion::default();
        let id = block.id();
        if self.nodes.contains_key(&id) || self.orphans.contains_key(&id) {
            return Ok(out);
        }
        if block.community != self.id {
            return Err(ChainError::BadBlock {
                reason: "belongs to another community",
            });
        }
        if !self.nodes.contains_key(&block.parent) {
            if block.timestamp > now_ms.saturating_add(limits::MAX_SKEW_MS) {
                return Err(ChainError::BadBlock {
                    reason: "timestamp in the future",
                });
            }
            out.missing_parent = Some(block.parent);
            self.hold_orphan(id, block);
            return Ok(out);
        }
        let mut queue = vec![block];
        let mut first = true;
        while let Some(block) = queue.pop() {
            let id = block.id();
            match self.judge(&block, now_ms) {
                Ok(state) => {
                    self.store(id, block, state, &mut out);
                    let waiting: Vec<BlockId> = self
                        .orphans
                        .values()
                        .filter(|b| b.parent == id)
                        .map(Block::id)
                        .collect();
                    for o in waiting {
                        if let Some(b) = self.orphans.remove(&o) {
                            self.orphan_order.retain(|x| *x != o);
                            queue.push(b);
                        }
                    }
                }
                Err(e) if first => return Err(e),
                Err(_) => {}
            }
            first = false;
        }
        Ok(out)
    }

    fn hold_orphan(&mut self, id: BlockId, block: Block) {
        if self.orphans.len() >= limits::MAX_ORPHANS
            && let Some(old) = self.orphan_order.pop_front()
        {
            self.orphans.remove(&old);
        }
        self.orphans.insert(id, block);
        self.orphan_order.push_back(id);
    }

    fn store(&mut self, id: BlockId, block: Block, state: State, out: &mut Insertion) {
        let parent = block.parent;
        let (parent_height, rank) = {
            let p = &self.nodes[&parent];
            (
                p.height,
                p.state.role(&block.producer).unwrap_or(Role::Member),
            )
        };
        if let Some(other) = self.produced.get(&(block.height, block.producer)) {
            if let Some(other_block) = self.block(other)
                && self.evidence.len() < limits::MAX_EVIDENCE
            {
                self.evidence.push(Equivocation {
                    producer: block.producer,
                    height: block.height,
                    blocks: [other_block.encode(), block.encode()],
                });
            }
            out.equivocations += 1;
        } else {
            self.produced.insert((block.height, block.producer), id);
        }
        for r in &block.records {
            self.index.entry(r.id()).or_default().push((
                id,
                r.issuer,
                matches!(r.body, Body::Message { .. }),
            ));
        }
        let node = Node {
            height: parent_height + 1,
            parent: Some(parent),
            timestamp: block.timestamp,
            records: block.records.iter().map(Record::id).collect(),
            block: Some(block),
            state,
            key: (Reverse(rank), id),
            children: Vec::new(),
        };
        self.nodes.insert(id, node);
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children.push(id);
        }
        out.stored.push(id);
        self.choose(id, parent, parent_height, &mut out.tip);
    }

    /// Fork choice, incrementally: starting from the genesis, the best
    /// chain always steps to the best child (highest producer rank at the
    /// parent, then lowest id). Only a new block whose parent is on the
    /// best chain can change it.
    fn choose(&mut self, id: BlockId, parent: BlockId, parent_height: u64, tip: &mut TipChange) {
        if self.main.get(parent_height as usize) != Some(&parent) {
            return;
        }
        let h = parent_height as usize + 1;
        if let Some(current) = self.main.get(h) {
            if self.nodes[&id].key >= self.nodes[current].key {
                return;
            }
            let removed = self.main.split_off(h);
            tip.added.retain(|a| !removed.contains(a));
            tip.removed.extend(removed);
        }
        self.main.push(id);
        tip.added.push(id);
        loop {
            let last = self.main[self.main.len() - 1];
            let best = self.nodes[&last]
                .children
                .iter()
                .min_by_key(|c| &self.nodes[*c].key)
                .copied();
            match best {
                Some(b) => {
                    self.main.push(b);
                    tip.added.push(b);
                }
                None => break,
            }
        }
        tip.removed.retain(|r| !self.main.contains(r));
    }

    /// Block ids at exponentially spaced heights of the best chain, tip
    /// first, genesis last: a peer finds where its chain meets ours.
    pub fn locator(&self) -> Vec<BlockId> {
        let mut out = Vec::new();
        let mut h = self.height();
        let mut step = 1;
        loop {
            out.push(self.main[h as usize]);
            if h == 0 {
                break;
            }
            if out.len() >= 10 {
                step *= 2;
            }
            h = h.saturating_sub(step);
        }
        out
    }

    /// Encoded best-chain blocks after the highest locator entry on our
    /// best chain, at most `max_blocks` of them and `max_bytes` in all.
    pub fn blocks_after(
        &self,
        locator: &[BlockId],
        max_blocks: usize,
        max_bytes: usize,
    ) -> Vec<Vec<u8>> {
        let start = locator
            .iter()
            .find_map(|id| self.is_main(id).then(|| self.nodes[id].height))
            .unwrap_or(0);
        let mut out = Vec::new();
        let mut size = 0;
        for id in self.main.iter().skip(start as usize + 1).take(max_blocks) {
            let Some(block) = self.block(id) else {
                continue;
            };
            let bytes = block.encode();
            size += bytes.len() + 8;
            if size > max_bytes && !out.is_empty() {
                break;
            }
            out.push(bytes);
        }
        out
    }

    /// Encoded stored blocks by id (for a peer missing a parent).
    pub fn blocks_by_id(&self, ids: &[BlockId], max_bytes: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut size = 0;
        for id in ids {
            if let Some(block) = self.block(id) {
                let bytes = block.encode();
                size += bytes.len() + 8;
                if size > max_bytes {
                    break;
                }
                out.push(bytes);
            }
        }
        out
    }
}
