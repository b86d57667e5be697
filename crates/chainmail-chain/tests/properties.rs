//! Property tests of the chain: convergence under any delivery order,
//! replay equals incremental application, tampering is always caught,
//! records never count in another community, mutual removals and
//! equivocations resolve the same everywhere.
//!
//! Blocks are forged with [`Block::sign`] from records built here, so a
//! case can shape any tree of valid blocks; key wraps are placeholders
//! (the chain checks who a rotation wraps for, not what the wraps hold).
//! The replay property runs real [`Community`] members instead.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use chainmail_chain::{
    Block, BlockId, Body, Chain, ChainError, Community, Config, Genesis, Hash, MemberId,
    MemberSecret, Output, Policy, Record, Role, State, SyncRequest, WRAP_LEN, Want,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

const T0: u64 = 1_700_000_000_000;
/// The receivers' clock.
const NOW: u64 = T0 + 86_400_000;

const OWNER: u8 = 1;
const ADMIN_A: u8 = 2;
const ADMIN_B: u8 = 3;
/// Members added in block 1.
const MEMBERS: [u8; 4] = [4, 5, 6, 7];

fn secret(n: u8) -> MemberSecret {
    MemberSecret::from_bytes(&[n; 64])
}

fn id(n: u8) -> MemberId {
    secret(n).id()
}

/// Builds valid blocks on any parent and keeps every block made, in the
/// order made, in a chain of its own.
struct Builder {
    chain: Chain,
    blocks: Vec<Block>,
    counter: u64,
}

impl Builder {
    /// A community of the owner, admins A and B and four members, all set
    /// up in block 1. `salt` picks the genesis salt.
    fn new(salt: u64) -> Builder {
        let mut rng = StdRng::seed_from_u64(salt);
        let genesis = Genesis::create(
            &mut rng,
            &secret(OWNER),
            "olive",
            "garden",
            Policy::default(),
            T0,
        )
        .unwrap();
        let mut b = Builder {
            chain: Chain::new(genesis),
            blocks: Vec::new(),
            counter: 0,
        };
        let g = b.chain.id();
        let mut records = Vec::new();
        for n in [ADMIN_A, ADMIN_B].into_iter().chain(MEMBERS) {
            records.push(b.record(
                OWNER,
                g,
                Body::Add {
                    member: secret(n).public(),
                    name: format!("m{n}"),
                },
            ));
        }
        for n in [ADMIN_A, ADMIN_B] {
            records.push(b.record(
                OWNER,
                g,
                Body::SetRole {
                    member: id(n),
                    role: Role::Admin,
                },
            ));
        }
        b.block(g, OWNER, records);
        b
    }

    fn genesis(&self) -> Genesis {
        self.chain.genesis().clone()
    }

    fn state(&self, at: &BlockId) -> &State {
        self.chain.state_at(at).unwrap()
    }

    fn record(&self, issuer: u8, anchor: BlockId, body: Body) -> Record {
        Record::sign(&secret(issuer), self.chain.id(), anchor, T0 + 10, body)
    }

    /// A fresh post of `issuer` for a block on `parent`.
    fn post(&mut self, issuer: u8, parent: BlockId) -> Record {
        self.counter += 1;
        let body = Body::Message {
            key_id: self.state(&parent).key_id,
            nonce: [0; 24],
            sealed: self.counter.to_be_bytes().to_vec(),
        };
        self.record(issuer, parent, body)
    }

    /// A block of `records` (and the key rotation a roster change needs)
    /// by `producer` on `parent`, not stored.
    fn forge(&mut self, parent: BlockId, producer: u8, mut records: Vec<Record>) -> Block {
        let mut state = self.state(&parent).clone();
        for r in &records {
            state.apply(r);
        }
        if records.iter().any(|r| r.body.changes_roster()) {
            let rotate = self.record(
                producer,
                parent,
                Body::RotateKey {
                    epoch: state.epoch + 1,
                    ephemeral: [9; 32],
                    wraps: state
                        .members()
                        .keys()
                        .map(|m| (*m, [0; WRAP_LEN]))
                        .collect(),
                },
            );
            state.apply(&rotate);
            records.push(rotate);
        }
        let (height, parent_ts) = match self.chain.block(&parent) {
            Some(b) => (b.height + 1, b.timestamp),
            None => (1, T0),
        };
        // Distinct timestamps keep otherwise equal blocks apart.
        self.counter += 1;
        let mut block = Block {
            community: self.chain.id(),
            height,
            parent,
            producer: id(producer),
            timestamp: parent_ts + self.counter,
            state_hash: state.hash(),
            records,
            signature: [0; 64],
        };
        block.sign(&secret(producer));
        block
    }

    /// Forges a block, stores it (it must be valid) and keeps it.
    fn block(&mut self, parent: BlockId, producer: u8, records: Vec<Record>) -> Block {
        let block = self.forge(parent, producer, records);
        self.chain.insert(block.clone(), NOW).unwrap();
        self.blocks.push(block.clone());
        block
    }

    /// Owner blocks with a post each on the tip, `n` of them.
    fn extend(&mut self, n: usize) -> BlockId {
        for _ in 0..n {
            let tip = self.chain.tip();
            let p = self.post(MEMBERS[0], tip);
            self.block(tip, OWNER, vec![p]);
        }
        self.chain.tip()
    }
}

/// A fresh chain fed `blocks` in the order `order` (indices past the end
/// are skipped); every insertion must succeed.
fn deliver(genesis: &Genesis, blocks: &[Block], order: &[usize]) -> Chain {
    let mut chain = Chain::new(genesis.clone());
    for &i in order {
        if let Some(b) = blocks.get(i) {
            chain.insert(b.clone(), NOW).unwrap();
        }
    }
    chain
}

/// The same through a member's view, as gossiped bytes.
fn deliver_bytes(genesis: &Genesis, blocks: &[Block], order: &[usize]) -> Community {
    let mut c = Community::join(
        Config::default(),
        [3; 32],
        genesis.clone(),
        secret(MEMBERS[1]),
    );
    for &i in order {
        if let Some(b) = blocks.get(i) {
            c.handle_block(NOW, &b.encode()).unwrap();
        }
    }
    c
}

/// (producer, height) of every equivocation kept.
fn equivocators(chain: &Chain) -> BTreeSet<(MemberId, u64)> {
    chain
        .evidence()
        .iter()
        .map(|e| (e.producer, e.height))
        .collect()
}

/// The best chain's records.
fn main_records(chain: &Chain) -> Vec<Record> {
    chain
        .main()
        .iter()
        .filter_map(|b| chain.block(b))
        .flat_map(|b| b.records.iter().cloned())
        .collect()
}

/// The fork choice, written out: from the genesis, step to the child
/// whose producer had the highest rank at the parent, then the lowest id.
fn greedy(chain: &Chain, blocks: &[Block]) -> Vec<BlockId> {
    let mut main = vec![chain.id()];
    loop {
        let last = main[main.len() - 1];
        let at_parent = chain.state_at(&last).unwrap();
        let best = blocks
            .iter()
            .filter(|b| b.parent == last)
            .min_by_key(|b| (std::cmp::Reverse(at_parent.role(&b.producer)), b.id()));
        match best {
            Some(b) => main.push(b.id()),
            None => return main,
        }
    }
}

const MAX_BLOCKS: usize = 24;

fn permutation() -> impl Strategy<Value = Vec<usize>> {
    Just((0..MAX_BLOCKS).collect::<Vec<usize>>()).prop_shuffle()
}

/// A tree of blocks shaped by `steps`: each step picks a parent among the
/// blocks so far, a producer (owner or admin there), and what goes in.
fn grow(salt: u64, steps: &[(u8, u8, u8)]) -> Builder {
    let mut b = Builder::new(salt);
    for &(parent_pick, producer_pick, what) in steps {
        // Half the time near the newest blocks (deep chains), else anywhere
        // (wide trees).
        let n = b.blocks.len();
        let parent = if parent_pick < 128 {
            b.blocks[n - 1 - parent_pick as usize % n.min(3)].id()
        } else {
            b.blocks[parent_pick as usize % n].id()
        };
        let state = b.state(&parent).clone();
        let producers = state.producers();
        let producer = [OWNER, ADMIN_A, ADMIN_B]
            .into_iter()
            .filter(|n| producers.contains(&id(*n)))
            .nth(producer_pick as usize % producers.len())
            .unwrap();
        // Members (of the lowest two ranks) at the parent, by number.
        let plain: Vec<u8> = (4..=60)
            .filter(|n| state.role(&id(*n)).is_some_and(|r| r < Role::Admin))
            .collect();
        let pick = |k: u8| plain.get(k as usize % plain.len().max(1)).copied();
        let mut records = Vec::new();
        match what {
            0 => {}
            1 => {
                for k in 0..=(producer_pick % 3) {
                    if let Some(m) = pick(parent_pick.wrapping_add(k)) {
                        records.push(b.post(m, parent));
                    }
                }
            }
            2 => {
                let fresh = 20 + (b.counter % 40) as u8;
                if state.role(&id(fresh)).is_none() && !state.is_banned(&id(fresh)) {
                    records.push(b.record(
                        OWNER,
                        parent,
                        Body::Add {
                            member: secret(fresh).public(),
                            name: format!("m{fresh}"),
                        },
                    ));
                }
            }
            3 => {
                if let Some(m) = pick(producer_pick) {
                    records.push(b.record(OWNER, parent, Body::Remove { member: id(m) }));
                }
            }
            4 => {
                if let Some(m) = pick(producer_pick) {
                    let role = if state.role(&id(m)) == Some(Role::Member) {
                        Role::Moderator
                    } else {
                        Role::Member
                    };
                    records.push(b.record(
                        OWNER,
                        parent,
                        Body::SetRole {
                            member: id(m),
                            role,
                        },
                    ));
                }
            }
            5 => {
                // The owner demotes admin B, or makes it an admin again.
                let role = if state.role(&id(ADMIN_B)) == Some(Role::Admin) {
                    Role::Moderator
                } else {
                    Role::Admin
                };
                records.push(b.record(
                    OWNER,
                    parent,
                    Body::SetRole {
                        member: id(ADMIN_B),
                        role,
                    },
                ));
            }
            6 => {
                if let Some(m) = pick(producer_pick) {
                    records.push(b.record(ADMIN_A, parent, Body::Ban { member: id(m) }));
                }
            }
            _ => {
                if let Some(m) = pick(producer_pick) {
                    records.push(b.post(m, parent));
                    records.push(b.record(m, parent, Body::Leave));
                }
            }
        }
        b.block(parent, producer, records);
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// (a) Any delivery order of the same blocks (forks from several
    /// producers, orphans before their parents) gives the same tip, best
    /// chain, state and evidence; the best chain is the greedy walk of
    /// the fork choice rule.
    #[test]
    fn any_delivery_order_gives_the_same_best_chain(
        salt in any::<u64>(),
        steps in prop::collection::vec((any::<u8>(), any::<u8>(), 0u8..8), 1..MAX_BLOCKS - 1),
        orders in prop::collection::vec(permutation(), 3),
    ) {
        let b = grow(salt, &steps);
        let genesis = b.genesis();
        let reference = &b.chain;
        prop_assert_eq!(reference.main(), &greedy(reference, &b.blocks)[..]);
        for order in &orders {
            let chain = deliver(&genesis, &b.blocks, order);
            prop_assert_eq!(chain.len(), reference.len());
            prop_assert_eq!(chain.orphans(), 0);
            prop_assert_eq!(chain.tip(), reference.tip());
            prop_assert_eq!(chain.main(), reference.main());
            prop_assert_eq!(chain.state().hash(), reference.state().hash());
            prop_assert_eq!(chain.state(), reference.state());
            prop_assert_eq!(equivocators(&chain), equivocators(reference));
        }
        let member = deliver_bytes(&genesis, &b.blocks, &orders[0]);
        prop_assert_eq!(member.chain().main(), reference.main());
        prop_assert_eq!(member.state().hash(), reference.state().hash());
    }
}

// ---- (b) Replay equals incremental ---------------------------------------------

/// A few real members gossiping everything to everyone at once.
struct Net {
    nodes: Vec<Community>,
    seeds: Vec<[u8; 32]>,
    blocks: Vec<Vec<u8>>,
    now: u64,
    posts: Vec<[u8; 32]>,
}

impl Net {
    fn new(n: usize) -> Net {
        let owner = Community::create(
            Config::default(),
            [100; 32],
            "olive",
            "garden",
            Policy::default(),
            T0,
        )
        .unwrap();
        let genesis = owner.chain().genesis().clone();
        let mut nodes = vec![owner];
        let mut seeds = vec![[100; 32]];
        for i in 1..n {
            let seed = [100 + i as u8; 32];
            nodes.push(Community::join(
                Config::default(),
                seed,
                genesis.clone(),
                secret(10 + i as u8),
            ));
            seeds.push(seed);
        }
        Net {
            nodes,
            seeds,
            blocks: Vec::new(),
            now: T0 + 1_000,
            posts: Vec::new(),
        }
    }

    /// Delivers every output to every other node until none is left.
    fn pump(&mut self) {
        loop {
            let mut any = false;
            for i in 0..self.nodes.len() {
                while let Some(out) = self.nodes[i].poll_output() {
                    any = true;
                    for j in (0..self.nodes.len()).filter(|j| *j != i) {
                        match &out {
                            Output::Record(bytes) => {
                                let _ = self.nodes[j].handle_record(self.now, bytes);
                            }
                            Output::Block(bytes) => {
                                self.nodes[j].handle_block(self.now, bytes).unwrap();
                            }
                            Output::Fetch(_) => {}
                        }
                    }
                    if let Output::Block(bytes) = out {
                        self.blocks.push(bytes);
                    }
                }
                while self.nodes[i].poll_event().is_some() {}
            }
            if !any {
                return;
            }
        }
    }

    fn post(&mut self, i: usize) {
        let text = format!("post {} by {i}", self.now);
        if let Ok(id) = self.nodes[i].post(self.now, &text) {
            self.posts.push(id);
        }
    }

    /// One step: a member acts (most actions are refused for most
    /// members, which is part of the test), then half the time produces
    /// if it may; then everything is delivered.
    fn act(&mut self, actor: usize, what: u8, arg: u8) {
        let n = self.nodes.len();
        let now = self.now;
        let actor = actor % n;
        let target = arg as usize % n;
        let (keys, target_id) = (self.nodes[target].my_keys(), self.nodes[target].me());
        let c = &mut self.nodes[actor];
        match what {
            0..=2 => self.post(actor),
            3 => {
                let _ = c.add(now, keys, &format!("n{target}"));
            }
            4 => {
                let _ = c.remove(now, target_id);
            }
            5 => {
                let role = [Role::Member, Role::Moderator, Role::Admin][arg as usize % 3];
                let _ = c.set_role(now, target_id, role);
            }
            6 => {
                let _ = c.rotate(now);
            }
            7 => {
                let _ = c.leave(now);
            }
            8 => {
                if let Some(p) = self.posts.get(arg as usize % self.posts.len().max(1)) {
                    let _ = c.redact(now, *p);
                }
            }
            9 => {
                let _ = c.ban(now, target_id);
            }
            _ => {
                // The owner and node 1 (an admin, unless that changed)
                // post and produce at once on the same tip: a fork.
                self.post(0);
                self.post(1);
                let _ = self.nodes[0].produce(now);
                let _ = self.nodes[1].produce(now);
            }
        }
        if arg.is_multiple_of(2) {
            let _ = self.nodes[actor].produce(now);
        }
        self.pump();
        self.now += 1_000;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// (b) Rebuilding a member's view from genesis — `Community::restore`
    /// with the blocks in any order, or a fresh chain fed them — gives
    /// exactly the view built block by block as they arrived.
    #[test]
    fn replay_from_genesis_equals_incremental_application(
        actions in prop::collection::vec((0usize..5, 0u8..11, any::<u8>()), 4..32),
        order in permutation(),
    ) {
        let mut net = Net::new(5);
        // Start with an admin, a moderator and a member; node 4 waits.
        let now = net.now;
        for i in 1..4 {
            let keys = net.nodes[i].my_keys();
            net.nodes[0].add(now, keys, &format!("n{i}")).unwrap();
        }
        net.nodes[0].produce(now).unwrap();
        net.pump();
        for (i, role) in [(1, Role::Admin), (2, Role::Moderator)] {
            let member = net.nodes[i].me();
            net.nodes[0].set_role(now + 1, member, role).unwrap();
        }
        net.nodes[0].produce(now + 1).unwrap();
        net.pump();
        for (actor, what, arg) in actions {
            net.act(actor, what, arg);
        }
        // Whatever still waits goes in.
        for i in 0..net.nodes.len() {
            let _ = net.nodes[i].produce(net.now);
            net.pump();
        }
        let genesis = net.nodes[0].chain().genesis().clone();
        let blocks: Vec<Block> = net
            .blocks
            .iter()
            .map(|b| Block::decode(b).unwrap())
            .collect();
        let mut by_height = blocks.clone();
        by_height.sort_by_key(|b| b.height);
        let fresh = deliver(&genesis, &by_height, &(0..by_height.len()).collect::<Vec<_>>());
        let mut shuffled: Vec<Block> = order.iter().filter_map(|i| blocks.get(*i).cloned()).collect();
        shuffled.extend(blocks.iter().skip(MAX_BLOCKS).cloned());
        for (i, node) in net.nodes.iter().enumerate() {
            // Everyone got every block: one view.
            prop_assert_eq!(node.chain().main(), net.nodes[0].chain().main());
            prop_assert_eq!(node.chain().main(), fresh.main());
            prop_assert_eq!(node.state(), fresh.state());
            let restored = Community::restore(
                Config::default(),
                net.seeds[i],
                genesis.clone(),
                node.save(),
                shuffled.clone(),
                net.now,
            );
            prop_assert_eq!(restored.chain().main(), node.chain().main());
            prop_assert_eq!(restored.chain().len(), node.chain().len());
            prop_assert_eq!(restored.state().hash(), node.state().hash());
            prop_assert_eq!(restored.log(0), node.log(0));
            prop_assert_eq!(restored.is_member(), node.is_member());
            prop_assert_eq!(restored.has_current_key(), node.has_current_key());
            prop_assert_eq!(restored.rendezvous_secret(), node.rendezvous_secret());
            prop_assert_eq!(equivocators(restored.chain()), equivocators(node.chain()));
        }
    }
}

// ---- (c) Tampering ---------------------------------------------------------------

/// Encodings to tamper with: a genesis, records of several kinds, a block
/// holding them, a sync request; and the chain the block extends.
struct Sample {
    genesis: Vec<u8>,
    records: Vec<Vec<u8>>,
    block: Vec<u8>,
    request: Vec<u8>,
}

fn sample() -> &'static Sample {
    static SAMPLE: OnceLock<Sample> = OnceLock::new();
    SAMPLE.get_or_init(|| {
        let (b, block) = sample_chain();
        let request = SyncRequest::new(
            &secret(MEMBERS[0]),
            &b.chain.id(),
            T0,
            Want::After(vec![b.chain.tip(), b.chain.id()]),
        );
        Sample {
            genesis: b.genesis().encode(),
            records: block.records.iter().map(Record::encode).collect(),
            block: block.encode(),
            request: request.encode(),
        }
    })
}

/// A chain and a valid next block for it (not inserted) with a post, a
/// role change, an addition and the key rotation.
fn sample_chain() -> (Builder, Block) {
    let mut b = Builder::new(5);
    let tip = b.extend(1);
    let post = b.post(MEMBERS[0], tip);
    let records = vec![
        post,
        b.record(
            OWNER,
            tip,
            Body::SetRole {
                member: id(MEMBERS[1]),
                role: Role::Moderator,
            },
        ),
        b.record(
            ADMIN_A,
            tip,
            Body::Add {
                member: secret(30).public(),
                name: "new".into(),
            },
        ),
    ];
    let block = b.forge(tip, ADMIN_A, records);
    (b, block)
}

/// Checks one tampered encoding of kind `what` (0 genesis, 1 record,
/// 2 block, 3 sync request) is refused.
fn refused_when_tampered(what: usize, original: &[u8], tampered: &[u8]) -> Result<(), String> {
    assert_ne!(original, tampered);
    let accepted = match what {
        0 => Genesis::decode(tampered).is_ok(),
        1 => match Record::decode(tampered) {
            Err(_) => false,
            // Decoded: then a chain must refuse it.
            Ok(r) => {
                let (mut b, _) = sample_chain();
                let tip = b.chain.tip();
                let block = b.forge(tip, OWNER, vec![r]);
                b.chain.insert(block, NOW).is_ok()
            }
        },
        2 => match Block::decode(tampered) {
            Err(_) => false,
            Ok(block) => sample_chain().0.chain.insert(block, NOW).is_ok(),
        },
        _ => SyncRequest::decode(tampered).is_ok(),
    };
    if accepted {
        Err(format!("kind {what}: a tampered encoding was accepted"))
    } else {
        Ok(())
    }
}

#[test]
fn the_samples_are_valid() {
    let s = sample();
    let g = Genesis::decode(&s.genesis).unwrap();
    for r in &s.records {
        Record::decode(r).unwrap();
    }
    let block = Block::decode(&s.block).unwrap();
    let (mut b, _) = sample_chain();
    assert_eq!(b.genesis(), g);
    b.chain.insert(block, NOW).unwrap();
    SyncRequest::decode(&s.request).unwrap();
}

#[test]
fn every_byte_of_a_block_is_covered() {
    let s = sample();
    for mask in [0x01, 0x80] {
        for i in 0..s.block.len() {
            let mut t = s.block.clone();
            t[i] ^= mask;
            refused_when_tampered(2, &s.block, &t).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (c) Changing any single byte of an encoded genesis, record, block
    /// or sync request is refused: a decode error, a bad signature, or a
    /// refusal at insertion; never a different valid object.
    #[test]
    fn tampering_with_any_byte_is_refused(
        what in 0usize..4,
        which in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let s = sample();
        let original = match what {
            0 => &s.genesis,
            1 => which.get(&s.records),
            2 => &s.block,
            _ => &s.request,
        };
        let mut tampered = original.clone();
        tampered[at.index(original.len())] ^= mask;
        prop_assert!(refused_when_tampered(what, original, &tampered).is_ok());
    }
}

// ---- (d) Records stay in their community ---------------------------------------

/// A record of kind `kind` made for `b`'s community, anchored at `anchor`.
fn record_of_kind(b: &mut Builder, kind: u8, anchor: BlockId) -> Record {
    let tip = b.chain.tip();
    let state = b.state(&tip).clone();
    let body = match kind {
        0 => Body::Add {
            member: secret(50).public(),
            name: "fifty".into(),
        },
        1 => Body::Remove {
            member: id(MEMBERS[1]),
        },
        2 => Body::Ban {
            member: id(MEMBERS[2]),
        },
        3 => Body::SetRole {
            member: id(MEMBERS[0]),
            role: Role::Moderator,
        },
        4 => Body::Message {
            key_id: state.key_id,
            nonce: [4; 24],
            sealed: vec![4; 40],
        },
        5 => {
            // The latest post in this community's best chain.
            let post = main_records(&b.chain)
                .into_iter()
                .rev()
                .find(|r| matches!(r.body, Body::Message { .. }))
                .unwrap();
            Body::Redact { record: post.id() }
        }
        6 => Body::Leave,
        _ => Body::RotateKey {
            epoch: state.epoch + 1,
            ephemeral: [9; 32],
            wraps: state
                .members()
                .keys()
                .map(|m| (*m, [0; WRAP_LEN]))
                .collect(),
        },
    };
    let issuer = match kind {
        4 | 6 => MEMBERS[3],
        7 => ADMIN_A,
        _ => OWNER,
    };
    let _ = tip;
    Record::sign(&secret(issuer), b.chain.id(), anchor, T0 + 10, body)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// (d) A record made for one community is refused in another, even
    /// when the same keys hold the same ranks there and its anchor is a
    /// block of the other community; the same action made for the other
    /// community is accepted there.
    #[test]
    fn a_record_replayed_into_another_community_is_refused(
        kind in 0u8..8,
        anchor_pick in 0u8..3,
        depth in 1usize..3,
    ) {
        let mut one = Builder::new(1);
        let mut two = Builder::new(2);
        one.extend(depth);
        two.extend(depth);
        prop_assert_ne!(one.chain.id(), two.chain.id());
        let (tip1, tip2) = (one.chain.tip(), two.chain.tip());
        let anchor = match anchor_pick {
            0 => tip1,
            1 => tip2,
            _ => two.chain.id(),
        };
        let foreign = record_of_kind(&mut one, kind, anchor);
        // At home (anchored at home) it is valid.
        if anchor == tip1 {
            let block = one.forge(tip1, OWNER, vec![foreign.clone()]);
            prop_assert!(one.chain.insert(block, NOW).is_ok());
        }
        // In the other community: refused inside a block …
        let block = two.forge(tip2, OWNER, vec![foreign.clone()]);
        let refusal = two.chain.insert(block, NOW);
        prop_assert!(
            matches!(refusal, Err(ChainError::Refused { reason: "belongs to another community", .. })),
            "{:?}", refusal
        );
        // … and as gossip.
        let mut member = Community::join(Config::default(), [4; 32], two.genesis(), secret(MEMBERS[0]));
        for b in &two.blocks {
            member.handle_block(NOW, &b.encode()).unwrap();
        }
        prop_assert!(member.handle_record(NOW, &foreign.encode()).is_err());
        // Relabelled for the other community, its signature fails.
        let mut relabelled = foreign.clone();
        relabelled.community = two.chain.id();
        prop_assert_eq!(Record::decode(&relabelled.encode()), Err(ChainError::BadSignature));
        // The same action made for the other community goes in there.
        let own = record_of_kind(&mut two, kind, tip2);
        let block = two.forge(tip2, OWNER, vec![own]);
        prop_assert!(two.chain.insert(block, NOW).is_ok());
    }
}

// ---- (e) Mutual removal --------------------------------------------------------

#[test]
fn admins_cannot_remove_each_other_themselves() {
    // Ranks are a strict order: no two members can act on each other, so a
    // mutual removal needs removal orders from above (the owner's).
    let mut b = Builder::new(3);
    let tip = b.chain.tip();
    for (by, whom) in [(ADMIN_A, ADMIN_B), (ADMIN_B, ADMIN_A)] {
        let r = b.record(by, tip, Body::Remove { member: id(whom) });
        let block = b.forge(tip, by, vec![r]);
        assert!(matches!(
            b.chain.insert(block, NOW),
            Err(ChainError::Refused {
                reason: "only members of lower rank",
                ..
            })
        ));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// (e) Two admins each put the removal of the other (ordered by the
    /// owner) in a block of their own on the same parent, and each builds
    /// on its own block. Whatever the order blocks arrive in, every node
    /// picks the same branch (both producers are admins: the lower block
    /// id wins), exactly one of the two admins remains, and none of the
    /// loser's records from its blocks is in the best chain.
    #[test]
    fn concurrent_mutual_removal_resolves_the_same_everywhere(
        salt in any::<u64>(),
        depth in 0usize..3,
        posts in (0usize..3, 0usize..3),
        orders in prop::collection::vec(permutation(), 2),
    ) {
        let mut b = Builder::new(salt);
        let parent = b.extend(depth);
        let branch = |b: &mut Builder, me: u8, other: u8, n: usize| {
            let mut records = vec![b.post(me, parent)];
            for m in &MEMBERS[..n] {
                records.push(b.post(*m, parent));
            }
            records.push(b.record(OWNER, parent, Body::Remove { member: id(other) }));
            let first = b.block(parent, me, records);
            let p = b.post(me, first.id());
            let second = b.block(first.id(), me, vec![p]);
            [first, second]
        };
        let [xa, xa2] = branch(&mut b, ADMIN_A, ADMIN_B, posts.0);
        let [xb, xb2] = branch(&mut b, ADMIN_B, ADMIN_A, posts.1);
        let (winner, loser, losing) = if xa.id() < xb.id() {
            (ADMIN_A, ADMIN_B, [xb.clone(), xb2.clone()])
        } else {
            (ADMIN_B, ADMIN_A, [xa.clone(), xa2.clone()])
        };
        let genesis = b.genesis();
        let check = |chain: &Chain| -> Result<(), TestCaseError> {
            prop_assert_eq!(chain.main(), b.chain.main());
            let roster = chain.state().members();
            prop_assert!(roster.contains_key(&id(winner)));
            prop_assert!(!roster.contains_key(&id(loser)));
            for block in &losing {
                prop_assert!(!chain.is_main(&block.id()));
                prop_assert!(chain.contains(&block.id()));
            }
            let in_main: BTreeSet<Hash> = main_records(chain).iter().map(Record::id).collect();
            for r in losing.iter().flat_map(|b| &b.records) {
                if r.issuer == id(loser) {
                    prop_assert!(!in_main.contains(&r.id()));
                }
            }
            // The removal of the winner is not in the best chain either.
            let removal = Body::Remove { member: id(winner) };
            prop_assert!(!main_records(chain).iter().any(|r| r.body == removal));
            Ok(())
        };
        check(&b.chain)?;
        for order in &orders {
            check(&deliver(&genesis, &b.blocks, order))?;
        }
        check(deliver_bytes(&genesis, &b.blocks, &orders[0]).chain())?;
    }
}

// ---- (f) Equivocation ------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// (f) Two blocks by one producer at one height (on one parent, or on
    /// two parents of that height) are kept as evidence by every node that
    /// has both, whatever the order they come in, orphans included; a node
    /// that has only one keeps none.
    #[test]
    fn equivocation_is_kept_as_evidence_wherever_both_blocks_arrive(
        salt in any::<u64>(),
        depth in 0usize..3,
        same_parent in any::<bool>(),
        orders in prop::collection::vec(permutation(), 2),
    ) {
        let mut b = Builder::new(salt);
        let base = b.extend(depth);
        let (p1, p2) = if same_parent {
            (base, base)
        } else {
            let q1 = b.post(MEMBERS[0], base);
            let q2 = b.post(MEMBERS[1], base);
            (b.block(base, OWNER, vec![q1]).id(), b.block(base, ADMIN_B, vec![q2]).id())
        };
        let r1 = b.post(MEMBERS[2], p1);
        let e1 = b.block(p1, ADMIN_A, vec![r1]);
        let r2 = b.post(MEMBERS[3], p2);
        let e2 = b.block(p2, ADMIN_A, vec![r2]);
        prop_assert_eq!(e1.height, e2.height);
        // Children of both, by different producers.
        let c1 = b.post(MEMBERS[0], e1.id());
        b.block(e1.id(), OWNER, vec![c1]);
        let c2 = b.post(MEMBERS[1], e2.id());
        let e2_child = b.block(e2.id(), ADMIN_B, vec![c2]);
        let genesis = b.genesis();
        let pair: BTreeSet<Vec<u8>> = [e1.encode(), e2.encode()].into();
        let check = |chain: &Chain| -> Result<(), TestCaseError> {
            prop_assert_eq!(chain.evidence().len(), 1);
            let ev = &chain.evidence()[0];
            prop_assert_eq!(ev.producer, id(ADMIN_A));
            prop_assert_eq!(ev.height, e1.height);
            prop_assert_eq!(ev.blocks.iter().cloned().collect::<BTreeSet<_>>(), pair.clone());
            for bytes in &ev.blocks {
                let blk = Block::decode(bytes).unwrap();
                prop_assert_eq!(blk.producer, id(ADMIN_A));
            }
            // Both stay stored; the fork choice goes on as usual.
            prop_assert!(chain.contains(&e1.id()) && chain.contains(&e2.id()));
            prop_assert_eq!(chain.main(), b.chain.main());
            Ok(())
        };
        check(&b.chain)?;
        for order in &orders {
            check(&deliver(&genesis, &b.blocks, order))?;
        }
        let member = deliver_bytes(&genesis, &b.blocks, &orders[0]);
        prop_assert_eq!(member.stats().equivocations, 1);
        check(member.chain())?;
        // Without the second block (its child waits as an orphan): none.
        let without: Vec<Block> = b
            .blocks
            .iter()
            .filter(|x| x.id() != e2.id())
            .cloned()
            .collect();
        let chain = deliver(&genesis, &without, &orders[1]);
        prop_assert!(chain.evidence().is_empty());
        prop_assert_eq!(chain.orphans(), 1);
        prop_assert!(!chain.contains(&e2_child.id()));
    }
}
