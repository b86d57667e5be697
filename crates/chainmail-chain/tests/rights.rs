//! The rights rules, rule by rule: for each rule the allowed case and every
//! refused case, with the exact reason. The rows match the rights table in
//! the crate README.
//!
//! Record rules are judged by [`State::check`] against the state at the
//! tip; block rules by [`Chain::insert`] (blocks are forged here with
//! [`Block::sign`], so that each rule can be broken alone).

use chainmail_chain::{
    Block, BlockId, Body, Chain, ChainError, Community, Config, Genesis, Hash, Insertion,
    MemberKeys, MemberSecret, Output, Policy, Record, Role, State, WRAP_LEN, limits,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

const T0: u64 = 1_700_000_000_000;
/// The receiver's clock in every insertion.
const NOW: u64 = T0 + 3_600_000;

fn secret(n: u8) -> MemberSecret {
    MemberSecret::from_bytes(&[n; 64])
}

/// The reason of a refusal (record rule or block rule).
#[track_caller]
fn reason<T: std::fmt::Debug>(result: Result<T, ChainError>) -> &'static str {
    match result {
        Err(ChainError::Refused { reason, .. } | ChainError::BadBlock { reason }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A community with one member of each rank (two of admin, moderator and
/// member), all added by the owner in block 1. The keys are `secret(n)`:
/// 1 owner, 2 and 3 admins, 4 and 5 moderators, 6 and 7 members, 8 an
/// outsider (the tests write `secret(n)` where a field would be borrowed).
struct World {
    chain: Chain,
    owner: MemberSecret,
    admin: MemberSecret,
    admin2: MemberSecret,
    moderator: MemberSecret,
    moderator2: MemberSecret,
    member: MemberSecret,
    member2: MemberSecret,
    /// Never a member.
    outsider: MemberSecret,
    /// Makes every post distinct.
    nonce: u8,
}

impl World {
    fn new() -> World {
        World::with_policy(Policy::default())
    }

    fn with_policy(policy: Policy) -> World {
        let owner = secret(1);
        let mut rng = StdRng::seed_from_u64(7);
        let genesis = Genesis::create(&mut rng, &owner, "olive", "garden", policy, T0).unwrap();
        let mut w = World {
            chain: Chain::new(genesis),
            owner,
            admin: secret(2),
            admin2: secret(3),
            moderator: secret(4),
            moderator2: secret(5),
            member: secret(6),
            member2: secret(7),
            outsider: secret(8),
            nonce: 0,
        };
        let mut records = Vec::new();
        let people = [
            (&w.admin, "ada", Role::Admin),
            (&w.admin2, "abe", Role::Admin),
            (&w.moderator, "mia", Role::Moderator),
            (&w.moderator2, "max", Role::Moderator),
            (&w.member, "uma", Role::Member),
            (&w.member2, "ugo", Role::Member),
        ];
        for (who, name, _) in people {
            records.push(w.record(
                &w.owner,
                Body::Add {
                    member: who.public(),
                    name: name.into(),
                },
            ));
        }
        for (who, _, role) in people {
            if role != Role::Member {
                records.push(w.record(
                    &w.owner,
                    Body::SetRole {
                        member: who.id(),
                        role,
                    },
                ));
            }
        }
        w.push(&secret(1), records);
        w
    }

    fn id(&self) -> Hash {
        self.chain.id()
    }

    fn tip(&self) -> BlockId {
        self.chain.tip()
    }

    fn state(&self) -> &State {
        self.chain.state()
    }

    /// A record anchored at the tip.
    fn record(&self, issuer: &MemberSecret, body: Body) -> Record {
        self.record_at(issuer, self.tip(), body)
    }

    fn record_at(&self, issuer: &MemberSecret, anchor: BlockId, body: Body) -> Record {
        Record::sign(issuer, self.id(), anchor, T0 + 10, body)
    }

    /// A post under the key at `parent`.
    fn post_at(&mut self, issuer: &MemberSecret, parent: BlockId) -> Record {
        self.nonce += 1;
        let body = Body::Message {
            key_id: self.chain.state_at(&parent).unwrap().key_id,
            nonce: [self.nonce; 24],
            sealed: vec![self.nonce; 40],
        };
        self.record_at(issuer, parent, body)
    }

    fn post(&mut self, issuer: &MemberSecret) -> Record {
        let tip = self.tip();
        self.post_at(issuer, tip)
    }

    /// Judges a record of `issuer` at the tip.
    fn check(&self, issuer: &MemberSecret, body: Body) -> Result<(), ChainError> {
        self.state().check(&self.record(issuer, body), None)
    }

    /// A key rotation by `producer` for the roster of `state`.
    fn rotation(&self, producer: &MemberSecret, anchor: BlockId, state: &State) -> Record {
        self.record_at(producer, anchor, rotate_body(state, state.epoch + 1))
    }

    /// A block on `parent` with exactly `records`, committing to the state
    /// they lead to, dated one ms after its parent.
    fn forge(&self, parent: BlockId, producer: &MemberSecret, records: Vec<Record>) -> Block {
        let mut state = self.chain.state_at(&parent).unwrap().clone();
        for r in &records {
            state.apply(r);
        }
        let (height, timestamp) = match self.chain.block(&parent) {
            Some(b) => (b.height + 1, b.timestamp + 1),
            None => (1, self.chain.genesis().created + 1),
        };
        let mut block = Block {
            community: self.id(),
            height,
            parent,
            producer: producer.id(),
            timestamp,
            state_hash: state.hash(),
            records,
            signature: [0; 64],
        };
        block.sign(producer);
        block
    }

    /// Like [`World::forge`], with the key rotation by the producer that
    /// a roster change needs appended.
    fn block(&self, parent: BlockId, producer: &MemberSecret, mut records: Vec<Record>) -> Block {
        if records.iter().any(|r| r.body.changes_roster()) {
            let mut state = self.chain.state_at(&parent).unwrap().clone();
            for r in &records {
                state.apply(r);
            }
            records.push(self.rotation(producer, parent, &state));
        }
        self.forge(parent, producer, records)
    }

    fn insert(&mut self, block: Block) -> Result<Insertion, ChainError> {
        self.chain.insert(block, NOW)
    }

    /// Builds a block on the tip, inserts it, and checks it became the tip.
    fn push(&mut self, producer: &MemberSecret, records: Vec<Record>) -> BlockId {
        let block = self.block(self.tip(), producer, records);
        let id = block.id();
        self.insert(block).unwrap();
        assert_eq!(self.tip(), id);
        id
    }
}

fn rotate_body(state: &State, epoch: u32) -> Body {
    Body::RotateKey {
        epoch,
        ephemeral: [9; 32],
        wraps: state
            .members()
            .keys()
            .map(|id| (*id, [0; WRAP_LEN]))
            .collect(),
    }
}

fn keys(n: u8) -> MemberKeys {
    secret(n).public()
}

fn add(n: u8) -> Body {
    Body::Add {
        member: keys(n),
        name: format!("new{n}"),
    }
}

// ---- Ranks -------------------------------------------------------------

#[test]
fn ranks_are_owner_admin_moderator_member() {
    assert!(Role::Owner > Role::Admin);
    assert!(Role::Admin > Role::Moderator);
    assert!(Role::Moderator > Role::Member);
    let w = World::new();
    let s = w.state();
    assert_eq!(s.role(&w.owner.id()), Some(Role::Owner));
    assert_eq!(s.role(&w.admin.id()), Some(Role::Admin));
    assert_eq!(s.role(&w.moderator.id()), Some(Role::Moderator));
    assert_eq!(s.role(&w.member.id()), Some(Role::Member));
    assert_eq!(s.role(&w.outsider.id()), None);
    // Producers: the owner first, then the admins by id.
    let mut admins = vec![w.admin.id(), w.admin2.id()];
    admins.sort();
    let mut expected = vec![w.owner.id()];
    expected.extend(admins);
    assert_eq!(s.producers(), expected);
}

// ---- Non-members ---------------------------------------------------------

#[test]
fn non_members_can_do_nothing() {
    let mut w = World::new();
    // A removed member and a banned member are non-members too.
    let removed = secret(6);
    let banned = secret(7);
    w.push(
        &secret(1),
        vec![
            w.record(
                &w.owner,
                Body::Remove {
                    member: removed.id(),
                },
            ),
            w.record(
                &w.owner,
                Body::Ban {
                    member: banned.id(),
                },
            ),
        ],
    );
    // A moderator's post, as a redaction target.
    let post = w.post(&secret(4));
    let s = w.state().clone();
    let bodies = [
        add(20),
        Body::Remove {
            member: w.member2.id(),
        },
        Body::Ban {
            member: keys(21).sign,
        },
        Body::SetRole {
            member: w.moderator.id(),
            role: Role::Member,
        },
        Body::Message {
            key_id: s.key_id,
            nonce: [0; 24],
            sealed: vec![1; 20],
        },
        Body::Redact { record: post.id() },
        rotate_body(&s, s.epoch + 1),
        Body::Leave,
    ];
    for who in [&w.outsider, &removed, &banned] {
        for body in &bodies {
            let r = w.record(who, body.clone());
            // Even with the post's author named, a redaction is refused.
            assert_eq!(
                reason(s.check(&r, Some(who.id()))),
                "the issuer is not a member",
                "{}",
                body.kind()
            );
        }
    }
    // The same records from a member of enough rank are fine.
    w.state().check(&w.record(&w.owner, add(20)), None).unwrap();
}

// ---- Add -----------------------------------------------------------------

#[test]
fn add_is_for_moderators_and_above_and_needs_room() {
    let w = World::new();
    for who in [&w.moderator, &w.admin, &w.owner] {
        w.check(who, add(20)).unwrap();
    }
    assert_eq!(
        reason(w.check(&w.member, add(20))),
        "only moderators and above add members"
    );
    assert_eq!(
        reason(w.check(
            &w.moderator,
            Body::Add {
                member: w.member.public(),
                name: "again".into()
            }
        )),
        "already a member"
    );
}

#[test]
fn add_respects_max_members() {
    let owner = secret(1);
    let mut rng = StdRng::seed_from_u64(8);
    let policy = Policy {
        max_members: 3,
        ..Policy::default()
    };
    let genesis = Genesis::create(&mut rng, &owner, "olive", "small", policy, T0).unwrap();
    let mut state = State::genesis(&genesis);
    let rec = |body| Record::sign(&owner, genesis.id(), genesis.id(), T0, body);
    for n in [20, 21] {
        let r = rec(add(n));
        state.check(&r, None).unwrap();
        state.apply(&r);
    }
    assert_eq!(state.members().len(), 3);
    assert_eq!(
        reason(state.check(&rec(add(22)), None)),
        "the community is full"
    );
    // Room again after someone leaves.
    state.apply(&Record::sign(
        &secret(20),
        genesis.id(),
        genesis.id(),
        T0,
        Body::Leave,
    ));
    state.check(&rec(add(22)), None).unwrap();
}

#[test]
fn banned_keys_cannot_be_added_back() {
    let mut w = World::new();
    let (banned, removed) = (w.member.id(), w.member2.id());
    w.push(
        &secret(1),
        vec![
            w.record(&w.moderator, Body::Ban { member: banned }),
            w.record(&w.moderator, Body::Remove { member: removed }),
        ],
    );
    assert!(w.state().is_banned(&banned));
    assert!(!w.state().is_banned(&removed));
    let back = |m: &MemberSecret| Body::Add {
        member: m.public(),
        name: "back".into(),
    };
    for who in [&w.moderator, &w.admin, &w.owner] {
        assert_eq!(reason(w.check(who, back(&w.member))), "banned");
        // Removed (not banned) members may be added back.
        w.check(who, back(&w.member2)).unwrap();
    }
}

// ---- Remove ----------------------------------------------------------------

#[test]
fn remove_is_for_moderators_and_above_on_lower_ranks() {
    let w = World::new();
    let rm = |m: &MemberSecret| Body::Remove { member: m.id() };
    // Allowed: each rank removes every lower rank.
    w.check(&w.moderator, rm(&w.member)).unwrap();
    w.check(&w.admin, rm(&w.member)).unwrap();
    w.check(&w.admin, rm(&w.moderator)).unwrap();
    w.check(&w.owner, rm(&w.moderator)).unwrap();
    w.check(&w.owner, rm(&w.admin)).unwrap();
    // Refused.
    assert_eq!(
        reason(w.check(&w.member, rm(&w.member2))),
        "only moderators and above remove"
    );
    for (who, whom) in [
        (&w.moderator, &w.moderator2),
        (&w.moderator, &w.admin),
        (&w.admin, &w.admin2),
        (&w.admin, &w.owner),
        (&w.moderator, &w.moderator),
    ] {
        assert_eq!(reason(w.check(who, rm(whom))), "only members of lower rank");
    }
    assert_eq!(reason(w.check(&w.owner, rm(&w.outsider))), "not a member");
}

// ---- Ban -------------------------------------------------------------------

#[test]
fn ban_is_for_moderators_and_above_on_lower_ranks() {
    let mut w = World::new();
    let ban = |m: &MemberSecret| Body::Ban { member: m.id() };
    w.check(&w.moderator, ban(&w.member)).unwrap();
    w.check(&w.admin, ban(&w.moderator)).unwrap();
    w.check(&w.owner, ban(&w.admin)).unwrap();
    // A key that is not a member can be banned ahead.
    w.check(&w.moderator, ban(&w.outsider)).unwrap();
    assert_eq!(
        reason(w.check(&w.member, ban(&w.member2))),
        "only moderators and above ban"
    );
    for (who, whom) in [
        (&w.moderator, &w.moderator2),
        (&w.moderator, &w.admin),
        (&w.admin, &w.admin2),
        (&w.admin, &w.owner),
    ] {
        assert_eq!(
            reason(w.check(who, ban(whom))),
            "only members of lower rank"
        );
    }
    assert_eq!(
        reason(w.check(&w.admin, ban(&w.admin))),
        "cannot ban yourself"
    );
    let banned = w.outsider.id();
    w.push(
        &secret(1),
        vec![w.record(&w.owner, Body::Ban { member: banned })],
    );
    assert_eq!(
        reason(w.check(&w.owner, Body::Ban { member: banned })),
        "already banned"
    );
}

// ---- Set role --------------------------------------------------------------

#[test]
fn roles_change_only_below_your_own_rank() {
    let w = World::new();
    let set = |m: &MemberSecret, role| Body::SetRole {
        member: m.id(),
        role,
    };
    // Allowed: issuer above both the target's rank and the new role.
    w.check(&w.owner, set(&w.member, Role::Admin)).unwrap();
    w.check(&w.owner, set(&w.admin, Role::Member)).unwrap();
    w.check(&w.admin, set(&w.member, Role::Moderator)).unwrap();
    w.check(&w.admin, set(&w.moderator, Role::Member)).unwrap();
    // Refused: the target is not below the issuer.
    for (who, whom, role) in [
        (&w.admin, &w.admin2, Role::Moderator),
        (&w.admin, &w.owner, Role::Member),
        (&w.moderator, &w.moderator2, Role::Member),
        (&w.member, &w.member2, Role::Member),
    ] {
        assert_eq!(
            reason(w.check(who, set(whom, role))),
            "roles change only below your own rank"
        );
    }
    // Refused: the new role is not below the issuer.
    assert_eq!(
        reason(w.check(&w.admin, set(&w.member, Role::Admin))),
        "roles change only below your own rank"
    );
    assert_eq!(
        reason(w.check(&w.moderator, set(&w.member, Role::Moderator))),
        "roles change only below your own rank"
    );
    // Refused: nobody makes an owner, not even the owner.
    assert_eq!(
        reason(w.check(&w.owner, set(&w.admin, Role::Owner))),
        "there is one owner"
    );
    // Refused: no change, or not a member.
    assert_eq!(
        reason(w.check(&w.owner, set(&w.admin, Role::Admin))),
        "already has that role"
    );
    assert_eq!(
        reason(w.check(&w.owner, set(&w.outsider, Role::Member))),
        "not a member"
    );
}

// ---- The owner -------------------------------------------------------------

#[test]
fn the_owner_cannot_be_removed_banned_demoted_or_leave() {
    let w = World::new();
    let o = w.owner.id();
    for who in [&w.admin, &w.moderator] {
        assert_eq!(
            reason(w.check(who, Body::Remove { member: o })),
            "only members of lower rank"
        );
        assert_eq!(
            reason(w.check(who, Body::Ban { member: o })),
            "only members of lower rank"
        );
    }
    assert_eq!(
        reason(w.check(
            &w.admin,
            Body::SetRole {
                member: o,
                role: Role::Member
            }
        )),
        "roles change only below your own rank"
    );
    assert_eq!(
        reason(w.check(&w.owner, Body::Leave)),
        "the owner cannot leave"
    );
    // Through the member API too.
    let mut c = Community::create(
        Config::default(),
        [1; 32],
        "olive",
        "garden",
        Policy::default(),
        T0,
    )
    .unwrap();
    let me = c.me();
    assert_eq!(reason(c.leave(T0)), "the owner cannot leave");
    assert_eq!(reason(c.remove(T0, me)), "only members of lower rank");
}

// ---- Leave -----------------------------------------------------------------

#[test]
fn everyone_but_the_owner_may_leave() {
    let w = World::new();
    for who in [&w.admin, &w.moderator, &w.member] {
        w.check(who, Body::Leave).unwrap();
    }
    assert_eq!(
        reason(w.check(&w.owner, Body::Leave)),
        "the owner cannot leave"
    );
}

// ---- Redact ----------------------------------------------------------------

#[test]
fn anyone_redacts_own_posts_moderators_those_of_lower_ranks() {
    let w = World::new();
    let s = w.state();
    let redact = |who: &MemberSecret, author: &MemberSecret| {
        let r = w.record(who, Body::Redact { record: [5; 32] });
        s.check(&r, Some(author.id()))
    };
    // Own posts, at every rank.
    for who in [&w.member, &w.moderator, &w.admin, &w.owner] {
        redact(who, who).unwrap();
    }
    // Lower ranks' posts, as a moderator or above.
    redact(&w.moderator, &w.member).unwrap();
    redact(&w.admin, &w.moderator).unwrap();
    redact(&w.owner, &w.admin).unwrap();
    // Posts of former members count as of no rank.
    redact(&w.moderator, &w.outsider).unwrap();
    let rule = "only your own posts, or as a moderator those of lower ranks";
    for (who, author) in [
        (&w.member, &w.member2),
        (&w.member, &w.moderator),
        (&w.moderator, &w.moderator2),
        (&w.moderator, &w.admin),
        (&w.admin, &w.admin2),
        (&w.admin, &w.owner),
    ] {
        assert_eq!(reason(redact(who, author)), rule);
    }
    // No post before it.
    assert_eq!(
        reason(s.check(&w.record(&w.owner, Body::Redact { record: [5; 32] }), None)),
        "no such post before it"
    );
}

#[test]
fn redactions_need_the_post_before_them_and_only_once() {
    let mut w = World::new();
    let base = w.tip();
    let post = w.post(&secret(6));
    let not_a_post = w.record(
        &w.owner,
        Body::SetRole {
            member: w.member2.id(),
            role: Role::Moderator,
        },
    );
    let in_chain = w.push(&secret(1), vec![post.clone(), not_a_post.clone()]);
    // A post on another branch is not "before it".
    let other = w.post_at(&secret(7), base);
    let side = w.block(base, &secret(2), vec![other.clone()]);
    w.insert(side).unwrap();
    assert_eq!(w.tip(), in_chain);
    let redact = |w: &World, who: &MemberSecret, target: Hash| {
        w.record(who, Body::Redact { record: target })
    };
    for target in [other.id(), not_a_post.id(), [3; 32]] {
        let b = w.block(w.tip(), &secret(1), vec![redact(&w, &w.owner, target)]);
        assert_eq!(reason(w.insert(b)), "no such post before it");
    }
    // The post's author redacts it; nobody can again.
    w.push(&secret(1), vec![redact(&w, &w.member, post.id())]);
    assert!(w.state().is_redacted(&post.id()));
    let b = w.block(w.tip(), &secret(1), vec![redact(&w, &w.owner, post.id())]);
    assert_eq!(reason(w.insert(b)), "already redacted");
    // A post and its redaction in one block.
    let p2 = w.post(&secret(6));
    let r2 = redact(&w, &w.moderator, p2.id());
    w.push(&secret(1), vec![p2.clone(), r2]);
    assert!(w.state().is_redacted(&p2.id()));
}

// ---- Messages --------------------------------------------------------------

fn message(key_id: Hash) -> Body {
    Body::Message {
        key_id,
        nonce: [1; 24],
        sealed: vec![2; 30],
    }
}

#[test]
fn the_policy_sets_who_may_post() {
    let w = World::new();
    let k = w.state().key_id;
    for who in [&w.member, &w.moderator, &w.admin, &w.owner] {
        w.check(who, message(k)).unwrap();
    }
    let w = World::with_policy(Policy {
        post_rank: Role::Moderator,
        ..Policy::default()
    });
    let k = w.state().key_id;
    for who in [&w.moderator, &w.admin, &w.owner] {
        w.check(who, message(k)).unwrap();
    }
    assert_eq!(
        reason(w.check(&w.member, message(k))),
        "the policy does not let this rank post"
    );
    let w = World::with_policy(Policy {
        post_rank: Role::Owner,
        ..Policy::default()
    });
    let k = w.state().key_id;
    w.check(&w.owner, message(k)).unwrap();
    assert_eq!(
        reason(w.check(&w.admin, message(k))),
        "the policy does not let this rank post"
    );
}

#[test]
fn posts_use_the_current_key() {
    let mut w = World::new();
    let genesis_key = w.chain.id();
    let first = w.state().key_id;
    assert_ne!(first, genesis_key, "block 1 rotated the key");
    w.check(&w.member, message(first)).unwrap();
    assert_eq!(
        reason(w.check(&w.member, message(genesis_key))),
        "encrypted under an old community key"
    );
    // After a rotation the previous key is old too.
    let s = w.state().clone();
    w.push(&secret(2), vec![w.rotation(&w.admin, w.tip(), &s)]);
    let now = w.state().key_id;
    assert_ne!(now, first);
    w.check(&w.member, message(now)).unwrap();
    assert_eq!(
        reason(w.check(&w.member, message(first))),
        "encrypted under an old community key"
    );
}

// ---- Key rotation ----------------------------------------------------------

#[test]
fn only_admins_rotate_to_the_next_epoch_for_exactly_the_roster() {
    let w = World::new();
    let s = w.state().clone();
    let next = s.epoch + 1;
    w.check(&w.admin, rotate_body(&s, next)).unwrap();
    w.check(&w.owner, rotate_body(&s, next)).unwrap();
    for who in [&w.moderator, &w.member] {
        assert_eq!(
            reason(w.check(who, rotate_body(&s, next))),
            "only admins and the owner rotate keys"
        );
    }
    for epoch in [s.epoch, s.epoch + 2, 0] {
        assert_eq!(
            reason(w.check(&w.admin, rotate_body(&s, epoch))),
            "not the next epoch"
        );
    }
    let roster: Vec<[u8; 32]> = s.members().keys().copied().collect();
    let with = |ids: Vec<[u8; 32]>| Body::RotateKey {
        epoch: next,
        ephemeral: [9; 32],
        wraps: ids.into_iter().map(|id| (id, [0; WRAP_LEN])).collect(),
    };
    let mut missing = roster.clone();
    missing.pop();
    let mut extra = roster.clone();
    extra.push(w.outsider.id());
    extra.sort();
    let mut reversed = roster.clone();
    reversed.reverse();
    let mut swapped = roster.clone();
    swapped[0] = w.outsider.id();
    swapped.sort();
    let mut twice = roster.clone();
    twice[1] = twice[0];
    for wraps in [missing, extra, reversed, swapped, twice, vec![]] {
        assert_eq!(
            reason(w.check(&w.admin, with(wraps))),
            "must wrap the key for exactly the members, in id order"
        );
    }
    w.check(&w.admin, with(roster)).unwrap();
}

// ---- Blocks: producers -----------------------------------------------------

#[test]
fn only_admins_and_the_owner_produce() {
    let mut w = World::new();
    let tip = w.tip();
    for who in [secret(4), secret(6), secret(8)] {
        let p = w.post(&secret(6));
        let b = w.forge(tip, &who, vec![p]);
        assert_eq!(
            reason(w.insert(b)),
            "the producer is not an admin or the owner at the parent"
        );
    }
    for who in [secret(1), secret(2), secret(3)] {
        let p = w.post_at(&secret(6), tip);
        let b = w.forge(tip, &who, vec![p]);
        w.insert(b).unwrap();
    }
    // An empty block is a valid block.
    let b = w.forge(w.tip(), &secret(2), vec![]);
    w.insert(b).unwrap();
}

#[test]
fn a_producer_is_judged_by_the_state_at_the_parent() {
    let mut w = World::new();
    // The admin produces block 2; the owner demotes it in block 3.
    let p = w.post(&secret(6));
    let b2 = w.push(&secret(2), vec![p]);
    let demote = w.record(
        &w.owner,
        Body::SetRole {
            member: w.admin.id(),
            role: Role::Moderator,
        },
    );
    let b3 = w.push(&secret(1), vec![demote]);
    // On block 3 the former admin cannot produce …
    let p = w.post(&secret(6));
    let b = w.forge(b3, &secret(2), vec![p]);
    assert_eq!(
        reason(w.insert(b)),
        "the producer is not an admin or the owner at the parent"
    );
    // … but its block 2 still counts, and on block 2 (where it was an
    // admin) it still produces: a valid sibling of block 3, which loses
    // the fork choice to the owner's block.
    assert!(w.chain.is_main(&b2));
    let p = w.post_at(&secret(6), b2);
    let sibling = w.forge(b2, &secret(2), vec![p]);
    let sid = sibling.id();
    w.insert(sibling).unwrap();
    assert!(w.chain.contains(&sid));
    assert!(!w.chain.is_main(&sid));
    assert_eq!(w.tip(), b3);
    // A member promoted in block 4 produces on block 4, not before.
    let promote = w.record(
        &w.owner,
        Body::SetRole {
            member: w.member.id(),
            role: Role::Admin,
        },
    );
    let b4 = w.push(&secret(1), vec![promote]);
    let p = w.post_at(&secret(7), b3);
    assert_eq!(
        reason(w.insert(w.forge(b3, &secret(6), vec![p]))),
        "the producer is not an admin or the owner at the parent"
    );
    let p = w.post_at(&secret(7), b4);
    w.insert(w.forge(b4, &secret(6), vec![p])).unwrap();
}

// ---- Blocks: records judged at inclusion -------------------------------------

#[test]
fn records_are_judged_again_against_the_parent_state() {
    let mut w = World::new();
    let b1 = w.tip();
    // The member signs a post at block 1; the owner removes the member in
    // block 2; an admin then tries to include the post on block 2.
    let late = w.post(&secret(6));
    let remove = w.record(
        &w.owner,
        Body::Remove {
            member: w.member.id(),
        },
    );
    let b2 = w.push(&secret(1), vec![remove]);
    let b = w.block(b2, &secret(2), vec![late.clone()]);
    assert_eq!(reason(w.insert(b)), "the issuer is not a member");
    // On block 1 (before the removal) the same record is fine.
    let b = w.block(b1, &secret(2), vec![late]);
    w.insert(b).unwrap();
    // A moderator's add, included after the moderator was demoted.
    let add_rec = w.record(&w.moderator, add(30));
    let demote = w.record(
        &w.owner,
        Body::SetRole {
            member: w.moderator.id(),
            role: Role::Member,
        },
    );
    w.push(&secret(1), vec![demote]);
    let b = w.block(w.tip(), &secret(2), vec![add_rec]);
    assert_eq!(reason(w.insert(b)), "only moderators and above add members");
    // Records are judged in order within a block: after a removal, the
    // removed member's next record fails.
    let remove = w.record(
        &w.owner,
        Body::Remove {
            member: w.member2.id(),
        },
    );
    let leave = w.record(&w.member2, Body::Leave);
    let b = w.block(w.tip(), &secret(1), vec![remove, leave]);
    assert_eq!(reason(w.insert(b)), "the issuer is not a member");
}

// ---- Blocks: roster changes rotate the key -----------------------------------

#[test]
fn a_roster_change_needs_a_key_rotation_by_the_producer() {
    let mut w = World::new();
    let tip = w.tip();
    let rule = "a roster change without a key rotation by the producer";
    let before = w.state().clone();
    for body in [
        add(30),
        Body::Remove {
            member: w.member.id(),
        },
        Body::Ban {
            member: w.moderator2.id(),
        },
        Body::Leave,
    ] {
        let issuer = if matches!(body, Body::Leave) {
            &w.member2
        } else {
            &w.owner
        };
        let change = w.record_at(issuer, tip, body);
        let mut after = before.clone();
        after.apply(&change);
        // No rotation.
        let b = w.forge(tip, &secret(2), vec![change.clone()]);
        assert_eq!(reason(w.insert(b)), rule);
        // A rotation by another admin.
        let b = w.forge(
            tip,
            &secret(2),
            vec![change.clone(), w.rotation(&w.admin2, tip, &after)],
        );
        assert_eq!(reason(w.insert(b)), rule);
        // A rotation, but not last.
        let b = w.forge(
            tip,
            &secret(2),
            vec![
                change.clone(),
                w.rotation(&w.admin, tip, &after),
                w.record_at(
                    &w.owner,
                    tip,
                    Body::SetRole {
                        member: w.moderator.id(),
                        role: Role::Member,
                    },
                ),
            ],
        );
        assert_eq!(reason(w.insert(b)), rule);
        // A rotation before the change wraps for the old roster: refused
        // either as the wrong roster or as a missing rotation.
        let b = w.forge(
            tip,
            &secret(2),
            vec![w.rotation(&w.admin, tip, &before), change.clone()],
        );
        assert!(w.insert(b).is_err());
        // A rotation for the roster before the change, placed last.
        let b = w.forge(
            tip,
            &secret(2),
            vec![change.clone(), w.rotation(&w.admin, tip, &before)],
        );
        assert_eq!(
            reason(w.insert(b)),
            "must wrap the key for exactly the members, in id order"
        );
        // Allowed: the producer's rotation, last, for the new roster.
        let b = w.forge(
            tip,
            &secret(2),
            vec![change.clone(), w.rotation(&w.admin, tip, &after)],
        );
        let id = b.id();
        w.insert(b).unwrap();
        assert_eq!(w.chain.state_at(&id).unwrap().epoch, before.epoch + 1);
    }
    // A role change alone needs no rotation.
    let b = w.forge(
        tip,
        &secret(2),
        vec![w.record_at(
            &w.owner,
            tip,
            Body::SetRole {
                member: w.member.id(),
                role: Role::Moderator,
            },
        )],
    );
    w.insert(b).unwrap();
}

#[test]
fn no_post_after_a_roster_change_in_the_same_block() {
    let mut w = World::new();
    let tip = w.tip();
    let change = w.record(&w.owner, add(30));
    let mut after = w.state().clone();
    after.apply(&change);
    let rotation = w.rotation(&w.admin, tip, &after);
    // Before the change: fine.
    let p = w.post(&secret(6));
    let b = w.forge(tip, &secret(2), vec![p, change.clone(), rotation.clone()]);
    w.insert(b).unwrap();
    // After the change (even under the new key, after the rotation).
    let p = w.post(&secret(6));
    let b = w.forge(tip, &secret(2), vec![change.clone(), p, rotation.clone()]);
    assert_eq!(
        reason(w.insert(b)),
        "a post after a roster change in the same block"
    );
    after.apply(&rotation);
    let p = w.record(&w.member, message(after.key_id));
    let b = w.forge(tip, &secret(2), vec![change, rotation, p]);
    assert_eq!(
        reason(w.insert(b)),
        "a post after a roster change in the same block"
    );
}

// ---- Blocks: state hash, times, heights ----------------------------------------

#[test]
fn the_state_hash_must_match() {
    let mut w = World::new();
    let tip = w.tip();
    let p = w.post(&secret(6));
    let change = w.record(&w.owner, add(30));
    // Zeros, and the state before the change the block makes.
    for wrong in [[0; 32], w.state().hash()] {
        let mut b = w.block(tip, &secret(2), vec![p.clone(), change.clone()]);
        assert_ne!(b.state_hash, wrong);
        b.state_hash = wrong;
        b.sign(&secret(2));
        assert_eq!(reason(w.insert(b)), "the state hash does not match");
    }
    w.insert(w.block(tip, &secret(2), vec![p, change])).unwrap();
}

#[test]
fn timestamps_are_bounded() {
    let mut w = World::new();
    let tip = w.tip();
    let parent_ts = w.chain.block(&tip).unwrap().timestamp;
    let at = |w: &World, ts: u64, records: Vec<Record>| {
        let mut b = w.forge(tip, &secret(2), records);
        b.timestamp = ts;
        b.sign(&secret(2));
        b
    };
    // Future blocks: at most the skew ahead of the receiver's clock.
    let b = at(&w, NOW + limits::MAX_SKEW_MS + 1, vec![]);
    assert_eq!(reason(w.insert(b)), "timestamp in the future");
    // Not before the parent.
    let b = at(&w, parent_ts - 1, vec![]);
    assert_eq!(reason(w.insert(b)), "timestamp before the parent's");
    // A record dated after its block by more than the skew.
    let r = Record::sign(
        &w.member,
        w.id(),
        tip,
        parent_ts + limits::MAX_SKEW_MS + 1,
        message(w.state().key_id),
    );
    let b = at(&w, parent_ts, vec![r]);
    assert_eq!(reason(w.insert(b)), "a record is dated after its block");
    // Held as an orphan, a future block is refused as well.
    let mut orphan = at(&w, NOW + limits::MAX_SKEW_MS + 1, vec![]);
    orphan.parent = [4; 32];
    orphan.sign(&secret(2));
    assert_eq!(reason(w.insert(orphan)), "timestamp in the future");
    // Allowed: the same as the parent, and the skew exactly.
    let r = Record::sign(
        &w.member,
        w.id(),
        tip,
        parent_ts + limits::MAX_SKEW_MS,
        message(w.state().key_id),
    );
    w.insert(at(&w, parent_ts, vec![r])).unwrap();
    w.insert(at(&w, NOW + limits::MAX_SKEW_MS, vec![])).unwrap();
}

#[test]
fn heights_follow_parents() {
    let mut w = World::new();
    let tip = w.tip();
    for height in [0, 1, 3, u64::MAX] {
        let mut b = w.forge(tip, &secret(2), vec![]);
        b.height = height;
        b.sign(&secret(2));
        assert_eq!(reason(w.insert(b)), "height is not the parent's plus one");
    }
    // An unknown parent: the block waits as an orphan, its parent named.
    let mut b = w.forge(tip, &secret(2), vec![]);
    b.parent = [4; 32];
    b.sign(&secret(2));
    let ins = w.insert(b).unwrap();
    assert_eq!(ins.missing_parent, Some([4; 32]));
    assert_eq!(w.chain.orphans(), 1);
}

// ---- Blocks: anchors ---------------------------------------------------------

#[test]
fn records_are_valid_only_within_the_anchor_window() {
    let mut w = World::new();
    let b1 = w.tip();
    let mut main = vec![b1];
    for _ in 0..limits::ANCHOR_WINDOW {
        let b = w.forge(w.tip(), &secret(1), vec![]);
        main.push(b.id());
        w.insert(b).unwrap();
    }
    // A side branch at height 2 (the owner's block there wins).
    let side = {
        let p = w.post_at(&secret(6), b1);
        let b = w.forge(b1, &secret(3), vec![p]);
        let id = b.id();
        w.insert(b).unwrap();
        id
    };
    let tip = w.tip();
    let tip_height = w.chain.height();
    let k = w.state().key_id;
    let at = |w: &World, anchor: BlockId| w.record_at(&w.member, anchor, message(k));
    // The anchor is the tip: the new block is one above it.
    let ok = at(&w, tip);
    // The oldest anchor allowed: ANCHOR_WINDOW - 1 below the parent.
    let oldest = main[main.len() - limits::ANCHOR_WINDOW as usize];
    assert_eq!(
        tip_height - w.chain.block(&oldest).unwrap().height,
        limits::ANCHOR_WINDOW - 1
    );
    let too_old = main[main.len() - 1 - limits::ANCHOR_WINDOW as usize];
    for anchor in [too_old, w.id()] {
        let b = w.forge(tip, &secret(1), vec![at(&w, anchor)]);
        assert_eq!(reason(w.insert(b)), "anchored too far back or ahead");
    }
    let b = w.forge(tip, &secret(1), vec![at(&w, [6; 32])]);
    assert_eq!(reason(w.insert(b)), "anchored to an unknown block");
    let b = w.forge(tip, &secret(1), vec![at(&w, side)]);
    assert_eq!(reason(w.insert(b)), "anchored to a block on another branch");
    // Ahead: anchored at a block that is not below the parent.
    let parent = main[main.len() - 2];
    let b = w.forge(parent, &secret(2), vec![at(&w, tip)]);
    assert_eq!(reason(w.insert(b)), "anchored too far back or ahead");
    let b = w.forge(tip, &secret(1), vec![ok, at(&w, oldest)]);
    w.insert(b).unwrap();
}

// ---- Blocks: each record once ------------------------------------------------

#[test]
fn a_record_is_included_once() {
    let mut w = World::new();
    let b1 = w.tip();
    let p = w.post(&secret(6));
    let b = w.forge(b1, &secret(1), vec![p.clone(), p.clone()]);
    assert_eq!(reason(w.insert(b)), "twice in one block");
    let b2 = w.push(&secret(1), vec![p.clone()]);
    let b = w.forge(b2, &secret(1), vec![p.clone()]);
    assert_eq!(reason(w.insert(b)), "already in the chain");
    let mid = w.push(&secret(1), vec![]);
    let b = w.forge(mid, &secret(2), vec![p.clone()]);
    assert_eq!(reason(w.insert(b)), "already in the chain");
    // On a branch without it, it may go in.
    let b = w.forge(b1, &secret(2), vec![p]);
    w.insert(b).unwrap();
}

// ---- Blocks: one community ---------------------------------------------------

#[test]
fn records_and_blocks_of_another_community_are_refused() {
    let mut w = World::new();
    // Another community with the same owner key (and same names).
    let mut rng = StdRng::seed_from_u64(99);
    let other_genesis = Genesis::create(
        &mut rng,
        &secret(1),
        "olive",
        "garden",
        Policy::default(),
        T0,
    )
    .unwrap();
    assert_ne!(other_genesis.id(), w.id());
    let tip = w.tip();
    let k = w.state().key_id;
    // The record names the other community but an anchor of this one.
    let foreign = Record::sign(&w.owner, other_genesis.id(), tip, T0, message(k));
    let b = w.forge(tip, &secret(1), vec![foreign]);
    assert_eq!(reason(w.insert(b)), "belongs to another community");
    let mut b = w.forge(tip, &secret(1), vec![]);
    b.community = other_genesis.id();
    b.sign(&secret(1));
    assert_eq!(reason(w.insert(b)), "belongs to another community");
}

// ---- Blocks: limits ------------------------------------------------------------

#[test]
fn produced_blocks_stay_within_the_limits_whatever_waits() {
    // Many additions at once: the key rotation that ends the block grows
    // with each, and the block must still fit.
    let mut owner = Community::create(
        Config::default(),
        [1; 32],
        "olive",
        "garden",
        Policy {
            max_members: limits::MAX_MEMBERS,
            ..Policy::default()
        },
        T0,
    )
    .unwrap();
    let mut other = Community::join(
        Config::default(),
        [2; 32],
        owner.chain().genesis().clone(),
        secret(200),
    );
    for n in 0..300u32 {
        let mut b = [0u8; 64];
        b[..4].copy_from_slice(&n.to_be_bytes());
        b[32..36].copy_from_slice(&n.to_be_bytes());
        let who = MemberSecret::from_bytes(&b);
        owner.add(T0, who.public(), &format!("member {n}")).unwrap();
    }
    while owner.pool_len() > 0 {
        owner.produce(T0).unwrap().unwrap();
    }
    let mut blocks = 0;
    while let Some(out) = owner.poll_output() {
        if let Output::Block(bytes) = out {
            assert!(
                bytes.len() <= limits::MAX_BLOCK_BYTES,
                "{} bytes",
                bytes.len()
            );
            other.handle_block(T0, &bytes).unwrap();
            blocks += 1;
        }
    }
    assert!(blocks > 1);
    assert_eq!(other.chain().tip(), owner.chain().tip());
    assert_eq!(owner.state().members().len(), 301);
}

/// Delivers every output of every member to the others until none is left.
fn gossip(all: &mut [Community]) {
    loop {
        let mut any = false;
        for i in 0..all.len() {
            while let Some(out) = all[i].poll_output() {
                any = true;
                for j in (0..all.len()).filter(|j| *j != i) {
                    match &out {
                        Output::Record(b) => {
                            let _ = all[j].handle_record(T0, b);
                        }
                        Output::Block(b) => {
                            all[j].handle_block(T0, b).unwrap();
                        }
                        Output::Fetch(_) => {}
                    }
                }
            }
        }
        if !any {
            return;
        }
    }
}

#[test]
fn a_producer_leaves_its_own_leave_and_demotion_to_others() {
    // The block that carries a producer's leave (or removal, or demotion
    // next to a roster change) must end with a key rotation the producer
    // can no longer sign: it leaves such records to other producers and
    // goes on producing the rest.
    let owner = Community::create(
        Config::default(),
        [1; 32],
        "olive",
        "garden",
        Policy::default(),
        T0,
    )
    .unwrap();
    let genesis = owner.chain().genesis().clone();
    let admin = Community::join(Config::default(), [2; 32], genesis.clone(), secret(2));
    let member = Community::join(Config::default(), [3; 32], genesis, secret(3));
    let mut all = [owner, admin, member];
    let (a, m) = (all[1].my_keys(), all[2].my_keys());
    all[0].add(T0, a, "ada").unwrap();
    all[0].add(T0, m, "uma").unwrap();
    all[0].produce(T0).unwrap().unwrap();
    gossip(&mut all);
    all[0].set_role(T0, a.sign, Role::Admin).unwrap();
    all[0].produce(T0).unwrap().unwrap();
    gossip(&mut all);
    assert_eq!(all[1].state().role(&a.sign), Some(Role::Admin));

    // The admin leaves and posts; the member posts.
    all[1].leave(T0).unwrap();
    all[1].post(T0, "bye").unwrap();
    all[2].post(T0, "hi").unwrap();
    gossip(&mut all);
    let produced = all[1].produce(T0).unwrap().unwrap();
    let block = all[1].chain().block(&produced).unwrap();
    assert_eq!(block.records.len(), 2, "both posts, not the leave");
    assert!(
        block
            .records
            .iter()
            .all(|r| matches!(r.body, Body::Message { .. }))
    );
    gossip(&mut all);
    // The owner carries the leave.
    all[0].produce(T0).unwrap().unwrap();
    gossip(&mut all);
    assert_eq!(all[2].state().role(&a.sign), None);
    assert_eq!(all[1].chain().tip(), all[0].chain().tip());
}

#[test]
fn a_producer_leaves_its_own_demotion_to_others() {
    let owner = Community::create(
        Config::default(),
        [1; 32],
        "olive",
        "garden",
        Policy::default(),
        T0,
    )
    .unwrap();
    let genesis = owner.chain().genesis().clone();
    let admin = Community::join(Config::default(), [2; 32], genesis, secret(2));
    let mut all = [owner, admin];
    let a = all[1].my_keys();
    all[0].add(T0, a, "ada").unwrap();
    all[0].produce(T0).unwrap().unwrap();
    gossip(&mut all);
    all[0].set_role(T0, a.sign, Role::Admin).unwrap();
    all[0].produce(T0).unwrap().unwrap();
    gossip(&mut all);
    // The owner demotes the admin and adds a member; the admin's turn
    // comes first.
    all[0].set_role(T0, a.sign, Role::Moderator).unwrap();
    all[0].add(T0, secret(9).public(), "ivy").unwrap();
    for out in std::iter::from_fn(|| all[0].poll_output()).collect::<Vec<_>>() {
        if let Output::Record(b) = out {
            all[1].handle_record(T0, &b).unwrap();
        }
    }
    let produced = all[1].produce(T0).unwrap().unwrap();
    let kinds: Vec<&str> = all[1]
        .chain()
        .block(&produced)
        .unwrap()
        .records
        .iter()
        .map(|r| r.body.kind())
        .collect();
    assert_eq!(kinds, ["add", "rotate_key"]);
    gossip(&mut all);
    all[0].produce(T0).unwrap().unwrap();
    gossip(&mut all);
    assert_eq!(all[1].state().role(&a.sign), Some(Role::Moderator));
    assert_eq!(all[1].chain().tip(), all[0].chain().tip());
}
