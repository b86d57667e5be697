//! Gossiped records race the blocks they refer to. A record that arrives
//! before its anchor, after a block included it, or anchored to a branch
//! that lost is ordinary gossip, not a refusal: it is held, dropped as a
//! duplicate or dropped as stale, and counted apart from refusals, which
//! stay for records that break a rule.

use chainmail_chain::{Community, Config, MemberSecret, Output, Policy, Received, Role, limits};

const T0: u64 = 1_700_000_000_000;

fn secret(n: u8) -> MemberSecret {
    MemberSecret::from_bytes(&[n; 64])
}

/// Everything `c` wants to gossip: (records, blocks).
fn drain(c: &mut Community) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut records, mut blocks) = (Vec::new(), Vec::new());
    while let Some(out) = c.poll_output() {
        match out {
            Output::Record(b) => records.push(b),
            Output::Block(b) => blocks.push(b),
            Output::Fetch(_) => {}
        }
    }
    (records, blocks)
}

/// An owner and members with keys `secret(2..)`, all added in block 1,
/// which only the owner holds yet.
fn community(members: u8) -> (Community, Vec<Community>, Vec<u8>) {
    let mut owner = Community::create(
        Config::default(),
        [1; 32],
        "olive",
        "garden",
        Policy::default(),
        T0,
    )
    .unwrap();
    let genesis = owner.chain().genesis().clone();
    let mut others = Vec::new();
    for n in 0..members {
        let m = Community::join(
            Config::default(),
            [n + 2; 32],
            genesis.clone(),
            secret(n + 2),
        );
        owner.add(T0, m.my_keys(), &format!("m{n}")).unwrap();
        others.push(m);
    }
    owner.produce(T0).unwrap().unwrap();
    let (_, blocks) = drain(&mut owner);
    assert_eq!(blocks.len(), 1);
    (owner, others, blocks.into_iter().next().unwrap())
}

#[test]
fn a_record_that_outruns_its_anchor_is_held_then_judged() {
    let (_owner, mut m, b1) = community(2);
    // m0 has block 1 and posts, anchored to it; m1 gets the post first.
    m[0].handle_block(T0, &b1).unwrap();
    m[0].post(T0, "early").unwrap();
    let (posts, _) = drain(&mut m[0]);
    assert_eq!(m[1].handle_record(T0, &posts[0]), Ok(Received::Early));
    assert_eq!(m[1].pool_len(), 0);
    // Again: held once.
    assert_eq!(m[1].handle_record(T0, &posts[0]), Ok(Received::Early));
    m[1].handle_block(T0, &b1).unwrap();
    assert_eq!(m[1].pool_len(), 1, "judged when its anchor came");
    let s = m[1].stats();
    assert_eq!((s.records_early, s.records_refused), (2, 0));
}

#[test]
fn held_records_are_bounded_and_judged_when_their_anchor_comes() {
    let (mut owner, mut m, b1) = community(2);
    m[0].handle_block(T0, &b1).unwrap();
    let n = limits::MAX_EARLY_RECORDS + 10;
    for i in 0..n {
        m[0].post(T0 + i as u64, &format!("post {i}")).unwrap();
    }
    let (posts, _) = drain(&mut m[0]);
    assert_eq!(posts.len(), n);
    for p in &posts {
        assert_eq!(m[1].handle_record(T0, p), Ok(Received::Early));
    }
    // And an outsider's leave, anchored to block 1 too: invalid there.
    let outsider = chainmail_chain::Record::sign(
        &secret(9),
        owner.id(),
        chainmail_chain::Block::decode(&b1).unwrap().id(),
        T0,
        chainmail_chain::Body::Leave,
    );
    assert_eq!(
        m[1].handle_record(T0, &outsider.encode()),
        Ok(Received::Early)
    );
    // Before m1 hears of block 1, the owner removes m0 in block 2: the
    // held posts were valid where m0 made them, and are overtaken.
    owner.remove(T0, m[0].me()).unwrap();
    owner.produce(T0).unwrap().unwrap();
    let (_, blocks) = drain(&mut owner);
    m[1].handle_block(T0, &blocks[0]).unwrap();
    assert_eq!(m[1].stats().records_stale, 0, "block 1 is still missing");
    m[1].handle_block(T0, &b1).unwrap();
    assert_eq!(m[1].chain().height(), 2);
    assert_eq!(m[1].pool_len(), 0);
    let s = m[1].stats();
    // The oldest 11 beyond the bound were dropped unjudged.
    assert_eq!(
        (s.records_stale, s.records_refused),
        (limits::MAX_EARLY_RECORDS as u64 - 1, 1)
    );
}

#[test]
fn a_record_seen_again_after_its_block_is_a_duplicate() {
    let (mut owner, mut m, b1) = community(1);
    m[0].handle_block(T0, &b1).unwrap();
    m[0].post(T0, "twice").unwrap();
    let (posts, _) = drain(&mut m[0]);
    assert!(matches!(
        owner.handle_record(T0, &posts[0]),
        Ok(Received::Pooled(_))
    ));
    owner.produce(T0).unwrap().unwrap();
    // Published again by its issuer, who has not seen block 2 yet.
    assert_eq!(owner.handle_record(T0, &posts[0]), Ok(Received::Duplicate));
    assert_eq!(owner.pool_len(), 0);
    let s = owner.stats();
    assert_eq!((s.records_duplicate, s.records_refused), (1, 0));
}

#[test]
fn a_record_anchored_to_a_branch_that_lost_is_stale() {
    let (mut owner, mut m) = with_admin();
    // Owner and admin each produce a block at height 3.
    m[0].post(T0, "admin's").unwrap();
    m[0].produce(T0).unwrap().unwrap();
    let (_, admins) = drain(&mut m[0]);
    owner.post(T0, "owner's").unwrap();
    owner.produce(T0).unwrap().unwrap();
    let (_, owners) = drain(&mut owner);
    // m1 holds only the admin's block, and posts on it.
    m[1].handle_block(T0, &admins[0]).unwrap();
    m[1].post(T0, "on the admin's branch").unwrap();
    let (posts, _) = drain(&mut m[1]);
    // The owner's block wins (higher rank): at the owner, the post is
    // anchored to the losing branch.
    owner.handle_block(T0, &admins[0]).unwrap();
    assert_eq!(owner.chain().height(), 3);
    assert!(owner.chain().is_main(&owner.chain().tip()));
    assert_eq!(owner.handle_record(T0, &posts[0]), Ok(Received::Stale));
    assert_eq!(owner.pool_len(), 0);
    // m1 learns the owner's block, and its post is made again on it.
    m[1].handle_block(T0, &owners[0]).unwrap();
    let (again, _) = drain(&mut m[1]);
    assert_eq!(again.len(), 1, "the stale post is issued again");
    assert!(matches!(
        owner.handle_record(T0, &again[0]),
        Ok(Received::Pooled(_))
    ));
    let s = owner.stats();
    assert_eq!((s.records_stale, s.records_refused), (1, 0));
}

#[test]
fn a_post_under_a_key_that_rotated_meanwhile_is_stale() {
    let (mut owner, mut m, b1) = community(2);
    m[0].handle_block(T0, &b1).unwrap();
    // m0 posts under the key of block 1; before the post reaches the
    // owner, the owner removes m1 (a rotation).
    m[0].post(T0, "just before").unwrap();
    let (posts, _) = drain(&mut m[0]);
    owner.remove(T0, m[1].me()).unwrap();
    owner.produce(T0).unwrap().unwrap();
    let (_, b2) = drain(&mut owner);
    assert_eq!(owner.handle_record(T0, &posts[0]), Ok(Received::Stale));
    assert_eq!(owner.stats().records_refused, 0);
    // m0 learns block 2 and posts the text again under the new key.
    m[0].handle_block(T0, &b2[0]).unwrap();
    let (again, _) = drain(&mut m[0]);
    assert_eq!(again.len(), 1);
    assert!(matches!(
        owner.handle_record(T0, &again[0]),
        Ok(Received::Pooled(_))
    ));
}

#[test]
fn a_record_that_breaks_a_rule_is_still_refused() {
    let (mut owner, _m, _b1) = community(1);
    let mut outsider = Community::join(
        Config::default(),
        [9; 32],
        owner.chain().genesis().clone(),
        secret(9),
    );
    // An outsider's leave, anchored at the genesis (held by everyone).
    assert!(outsider.leave(T0).is_err(), "refused at the issuer too");
    let record = chainmail_chain::Record::sign(
        &secret(9),
        owner.id(),
        owner.chain().id(),
        T0,
        chainmail_chain::Body::Leave,
    );
    assert!(owner.handle_record(T0, &record.encode()).is_err());
    assert_eq!(owner.stats().records_refused, 1);
}

/// The owner, an admin (m0) and a member (m1), all holding blocks 1 and 2
/// (m0 made an admin in block 2).
fn with_admin() -> (Community, Vec<Community>) {
    let (mut owner, mut m, b1) = community(2);
    owner.set_role(T0, m[0].me(), Role::Admin).unwrap();
    owner.produce(T0).unwrap().unwrap();
    let (_, b2) = drain(&mut owner);
    for c in m.iter_mut() {
        c.handle_block(T0, &b1).unwrap();
        c.handle_block(T0, &b2[0]).unwrap();
    }
    (owner, m)
}

/// The posts of the best chain that `c` can read.
fn texts(c: &Community) -> Vec<String> {
    c.log(0)
        .into_iter()
        .filter_map(|l| match l.what {
            chainmail_chain::LogWhat::Post(t) => t,
            _ => None,
        })
        .collect()
}

/// `producer` takes `records` (each valid at its tip) into a block, and
/// `member` takes that block: nothing of its own is pending any more.
fn confirm(producer: &mut Community, member: &mut Community, records: &[Vec<u8>]) {
    for r in records {
        assert!(matches!(
            producer.handle_record(T0, r),
            Ok(Received::Pooled(_))
        ));
    }
    producer.produce(T0 + 1_000).unwrap().unwrap();
    let (_, blocks) = drain(producer);
    member.handle_block(T0, &blocks[0]).unwrap();
    assert_eq!(member.pending(), 0);
}

#[test]
fn a_post_whose_block_left_the_best_chain_is_posted_again() {
    let (mut owner, mut m) = with_admin();
    // The admin makes block 3 on its own; m1 posts on it, and the admin
    // includes the post in block 4.
    m[0].post(T0, "admin's").unwrap();
    m[0].produce(T0).unwrap().unwrap();
    let (_, a3) = drain(&mut m[0]);
    m[1].handle_block(T0, &a3[0]).unwrap();
    m[1].post(T0, "on the admin's branch").unwrap();
    let (posts, _) = drain(&mut m[1]);
    assert!(matches!(
        m[0].handle_record(T0, &posts[0]),
        Ok(Received::Pooled(_))
    ));
    m[0].produce(T0 + 1_000).unwrap().unwrap();
    let (_, a4) = drain(&mut m[0]);
    m[1].handle_block(T0, &a4[0]).unwrap();
    assert_eq!(m[1].pending(), 0, "confirmed by block 4");
    // The owner's block 3 wins over the admin's (higher rank), and with
    // it the admin's blocks 3 and 4 leave m1's best chain: the post is
    // anchored to a block that lost, so it is made again on the winner.
    owner.post(T0, "owner's").unwrap();
    owner.produce(T0).unwrap().unwrap();
    let (_, o3) = drain(&mut owner);
    m[1].handle_block(T0, &o3[0]).unwrap();
    assert_eq!(m[1].chain().height(), 3);
    assert_eq!(m[1].pending(), 1, "not confirmed any more");
    let (again, _) = drain(&mut m[1]);
    assert_eq!(again.len(), 1, "the post is issued again");
    confirm(&mut owner, &mut m[1], &again);
    assert_eq!(
        texts(&m[1]),
        ["owner's", "on the admin's branch"],
        "once, on the best chain"
    );
}

#[test]
fn a_record_whose_block_lost_but_still_counts_is_published_again_unchanged() {
    let (mut owner, mut m) = with_admin();
    // m1 posts on block 2; the admin includes it in block 3, which loses
    // to the owner's block 3. Its anchor (block 2) is still on the best
    // chain, so the same record is published again, not a copy.
    m[1].post(T0, "anchored below the fork").unwrap();
    let (posts, _) = drain(&mut m[1]);
    m[0].handle_record(T0, &posts[0]).unwrap();
    m[0].produce(T0).unwrap().unwrap();
    let (_, a3) = drain(&mut m[0]);
    m[1].handle_block(T0, &a3[0]).unwrap();
    assert_eq!(m[1].pending(), 0);
    owner.post(T0, "owner's").unwrap();
    owner.produce(T0).unwrap().unwrap();
    let (_, o3) = drain(&mut owner);
    m[1].handle_block(T0, &o3[0]).unwrap();
    assert_eq!(m[1].pending(), 1);
    let (again, _) = drain(&mut m[1]);
    assert_eq!(again, posts, "the same record");
    confirm(&mut owner, &mut m[1], &again);
    assert_eq!(texts(&m[1]), ["owner's", "anchored below the fork"]);
}

#[test]
fn an_action_whose_block_lost_is_signed_again_on_the_winner() {
    let (mut owner, mut m) = with_admin();
    // The admin (m0) posts in its own block 3 and removes m1 in block 4;
    // both lose to the owner's block 3, and both are made again there.
    m[0].post(T0, "admin's").unwrap();
    m[0].produce(T0).unwrap().unwrap();
    let m1 = m[1].me();
    m[0].remove(T0, m1).unwrap();
    m[0].produce(T0 + 1_000).unwrap().unwrap();
    let _ = drain(&mut m[0]);
    assert_eq!(m[0].state().members().len(), 2);
    owner.post(T0, "owner's").unwrap();
    owner.produce(T0).unwrap().unwrap();
    let (_, o3) = drain(&mut owner);
    m[0].handle_block(T0, &o3[0]).unwrap();
    assert_eq!(m[0].chain().height(), 3);
    assert_eq!(m[0].state().members().len(), 3, "the removal left too");
    let (again, _) = drain(&mut m[0]);
    assert_eq!(again.len(), 2, "the post and the removal are issued again");
    confirm(&mut owner, &mut m[0], &again);
    assert_eq!(owner.state().members().len(), 2);
    assert_eq!(texts(&owner), ["owner's", "admin's"]);
    assert_eq!(m[0].stats().actions_dropped, 0);
}

#[test]
fn a_post_that_cannot_be_made_again_fails_and_says_why() {
    let (mut owner, mut m) = with_admin();
    // m1 posts; before any block holds the post, the owner removes m1.
    m[1].post(T0, "too late").unwrap();
    let _ = drain(&mut m[1]);
    let m1 = m[1].me();
    owner.remove(T0, m1).unwrap();
    owner.produce(T0).unwrap().unwrap();
    let (_, b3) = drain(&mut owner);
    m[1].handle_block(T0, &b3[0]).unwrap();
    assert!(!m[1].is_member());
    let mut failed = Vec::new();
    while let Some(e) = m[1].poll_event() {
        if let chainmail_chain::Event::PostFailed { text, reason } = e {
            failed.push((text, reason));
        }
    }
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "too late");
    assert!(failed[0].1.contains("not a member"), "{failed:?}");
    assert_eq!(m[1].stats().posts_failed, 1);
    assert_eq!(m[1].pending(), 0);
}

#[test]
fn an_action_whose_rights_are_gone_is_held_then_dropped_and_counted() {
    let (mut owner, mut m) = with_admin();
    // The admin issues a removal; before it is in a block, the owner
    // makes the admin a plain member again.
    let m1 = m[1].me();
    m[0].remove(T0, m1).unwrap();
    let _ = drain(&mut m[0]);
    let m0 = m[0].me();
    owner.set_role(T0, m0, Role::Member).unwrap();
    owner.produce(T0).unwrap().unwrap();
    let (_, b3) = drain(&mut owner);
    m[0].handle_block(T0, &b3[0]).unwrap();
    assert_eq!(m[0].state().role(&m0), Some(Role::Member));
    // Held, not dropped: the branch that took the rights away may still
    // lose. Nothing is issued while it is not allowed.
    assert_eq!(m[0].stats().actions_dropped, 0);
    assert_eq!(m[0].pending(), 1);
    let (again, _) = drain(&mut m[0]);
    assert!(again.is_empty(), "nothing is issued while not allowed");
    // Still not allowed once the hold ends: dropped and counted.
    let hold = chainmail_chain::Config::default().hold_ms;
    assert!(m[0].poll_timeout().is_some_and(|t| t <= T0 + hold));
    m[0].handle_timeout(T0 + hold);
    assert_eq!(m[0].stats().actions_dropped, 1);
    assert_eq!(m[0].pending(), 0);
    let (again, _) = drain(&mut m[0]);
    assert!(again.is_empty(), "nothing is issued again");
}
