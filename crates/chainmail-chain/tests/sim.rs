//! Deterministic multi-member simulations of the community core: members
//! gossip records and blocks through a seeded lossy, reordering network,
//! sync from each other, go offline and come back, with a virtual clock.

use std::collections::BTreeMap;

use chainmail_chain::{
    Community, Config, Event, LogWhat, MemberSecret, Output, Policy, Role, SyncRequest,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const T0: u64 = 1_800_000_000_000;

struct Sim {
    now: u64,
    rng: StdRng,
    members: Vec<Community>,
    online: Vec<bool>,
    /// (deliver at, to, output)
    queue: BTreeMap<(u64, u64), (usize, Output)>,
    seq: u64,
    loss: f64,
    /// Gossip takes 5 ms up to this long; beyond the producers' stagger
    /// (1 s), they often race and the chain forks.
    max_delay: u64,
    next_sync: Vec<u64>,
}

impl Sim {
    fn new(seed: u64, loss: f64) -> Sim {
        let owner = Community::create(
            Config::default(),
            [1; 32],
            "owner",
            "garden",
            Policy::default(),
            T0,
        )
        .unwrap();
        Sim {
            now: T0,
            rng: StdRng::seed_from_u64(seed),
            members: vec![owner],
            online: vec![true],
            queue: BTreeMap::new(),
            seq: 0,
            loss,
            max_delay: 400,
            next_sync: vec![T0 + 5_000],
        }
    }

    /// A new member, added by `by`.
    fn admit(&mut self, by: usize, name: &str) -> usize {
        let i = self.members.len();
        let mut seed = [0u8; 32];
        seed[0] = i as u8 + 10;
        let mut rng = StdRng::from_seed(seed);
        let secret = MemberSecret::generate(&mut rng);
        let keys = secret.public();
        let genesis = self.members[0].chain().genesis().clone();
        self.members
            .push(Community::join(Config::default(), seed, genesis, secret));
        self.online.push(true);
        self.next_sync.push(self.now + 5_000);
        self.members[by].add(self.now, keys, name).unwrap();
        self.run_until(
            |s| s.members[i].has_current_key() && s.members[i].is_member(),
            60_000,
        );
        i
    }

    fn route(&mut self, from: usize) {
        while let Some(out) = self.members[from].poll_output() {
            match out {
                Output::Record(_) | Output::Block(_) => {
                    for to in 0..self.members.len() {
                        if to == from || !self.online[to] || self.rng.random_bool(self.loss) {
                            continue;
                        }
                        let delay = self.rng.random_range(5..self.max_delay);
                        self.seq += 1;
                        self.queue
                            .insert((self.now + delay, self.seq), (to, out.clone()));
                    }
                }
                Output::Fetch(ids) => {
                    let req = self.members[from].fetch_request(self.now, ids);
                    self.sync_with_any(from, &req);
                }
            }
        }
    }

    /// One sync exchange of `from` with a random online member.
    fn sync_with_any(&mut self, from: usize, request: &[u8]) {
        let peers: Vec<usize> = (0..self.members.len())
            .filter(|p| *p != from && self.online[*p])
            .collect();
        if peers.is_empty() {
            return;
        }
        let peer = peers[self.rng.random_range(0..peers.len())];
        let req = SyncRequest::decode(request).unwrap();
        let resp = self.members[peer].answer_sync(self.now, &req, 1 << 20);
        let _ = self.members[from].handle_sync_response(self.now, &resp.encode());
    }

    fn sync(&mut self, who: usize) {
        for _ in 0..20 {
            let req = self.members[who].sync_request(self.now);
            let before = self.members[who].chain().len();
            self.sync_with_any(who, &req);
            if self.members[who].chain().len() == before {
                break;
            }
        }
    }

    fn step(&mut self) {
        for i in 0..self.members.len() {
            if self.online[i] {
                self.route(i);
            }
        }
        let next_msg = self.queue.keys().next().map(|k| k.0);
        let next_timer = (0..self.members.len())
            .filter(|i| self.online[*i])
            .filter_map(|i| self.members[i].poll_timeout())
            .min();
        let next = match (next_msg, next_timer) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(self.now + 1_000),
        };
        let next_sync = self.next_sync.iter().copied().min().unwrap_or(u64::MAX);
        let next = next.min(next_sync.max(self.now + 1));
        self.now = self.now.max(next);
        while let Some((&k, _)) = self.queue.iter().next() {
            if k.0 > self.now {
                break;
            }
            let (to, out) = self.queue.remove(&k).unwrap();
            if !self.online[to] {
                continue;
            }
            match out {
                Output::Record(b) => {
                    let _ = self.members[to].handle_record(self.now, &b);
                }
                Output::Block(b) => {
                    let _ = self.members[to].handle_block(self.now, &b);
                }
                Output::Fetch(_) => {}
            }
        }
        for i in 0..self.members.len() {
            if self.online[i] {
                self.members[i].handle_timeout(self.now);
            }
        }
        // Everyone syncs now and then (gossip is lossy), as nodes do.
        for who in 0..self.members.len() {
            if self.online[who] && self.now >= self.next_sync[who] {
                self.next_sync[who] = self.now + self.rng.random_range(4_000..6_000);
                self.sync(who);
            }
        }
    }

    fn run_until(&mut self, done: impl Fn(&Sim) -> bool, max_ms: u64) {
        let end = self.now + max_ms;
        while !done(self) {
            if self.now >= end {
                for (i, m) in self.members.iter().enumerate() {
                    eprintln!(
                        "{i}: h {} tip {} member {} key {} pool {} pending {} {:?}",
                        m.chain().height(),
                        chainmail_chain::short(&m.chain().tip()),
                        m.is_member(),
                        m.has_current_key(),
                        m.pool_len(),
                        m.pending(),
                        m.stats()
                    );
                }
                panic!("did not converge in {max_ms} ms");
            }
            self.step();
        }
    }

    fn settle(&mut self) {
        let end = self.now + 120_000;
        loop {
            self.step();
            let online: Vec<usize> = (0..self.members.len())
                .filter(|i| self.online[*i])
                .collect();
            let tip = self.members[online[0]].chain().tip();
            let quiet = online.iter().all(|i| {
                self.members[*i].chain().tip() == tip
                    && self.members[*i].pending() == 0
                    && self.members[*i].pool_len() == 0
            });
            if quiet && self.queue.is_empty() {
                return;
            }
            assert!(self.now < end, "the members did not converge");
        }
    }

    fn texts(&self, who: usize) -> Vec<Option<String>> {
        self.members[who]
            .log(0)
            .into_iter()
            .filter_map(|e| match e.what {
                LogWhat::Post(t) => Some(t),
                _ => None,
            })
            .collect()
    }
}

/// Owner, an admin and three members.
fn five(seed: u64, loss: f64) -> Sim {
    let mut sim = Sim::new(seed, loss);
    let admin = sim.admit(0, "adele");
    let me = sim.members[admin].me();
    sim.members[0].set_role(sim.now, me, Role::Admin).unwrap();
    sim.run_until(
        |s| {
            s.members
                .iter()
                .all(|m| m.state().role(&me) == Some(Role::Admin))
        },
        60_000,
    );
    for name in ["bo", "cy", "di"] {
        sim.admit(1, name);
    }
    sim.settle();
    sim
}

#[test]
fn posts_converge_at_every_member() {
    for seed in 0..3 {
        let mut sim = five(seed, 0.1);
        for round in 0..6 {
            for i in 0..sim.members.len() {
                sim.members[i]
                    .post(sim.now, &format!("{i}:{round}"))
                    .unwrap();
                sim.step();
            }
        }
        sim.settle();
        let first = sim.texts(0);
        assert_eq!(first.len(), 30, "seed {seed}");
        assert!(first.iter().all(Option::is_some));
        for i in 1..sim.members.len() {
            assert_eq!(sim.texts(i), first, "member {i}, seed {seed}");
            assert_eq!(sim.members[i].state().hash(), sim.members[0].state().hash());
        }
        // Each member's posts appear in the order it made them.
        for i in 0..5 {
            let mine: Vec<String> = first
                .iter()
                .flatten()
                .filter(|t| t.starts_with(&format!("{i}:")))
                .cloned()
                .collect();
            let expect: Vec<String> = (0..6).map(|r| format!("{i}:{r}")).collect();
            let mut sorted = mine.clone();
            sorted.sort();
            assert_eq!(sorted, expect);
        }
        assert!(sim.members.iter().all(|m| m.stats().blocks_refused == 0));
    }
}

/// With gossip slower than the producers' stagger, owner and admin often
/// produce at the same height and one of their blocks loses: every post
/// still lands once, whether its block lost or its anchor did.
#[test]
fn posts_survive_blocks_that_lose_the_fork_choice() {
    let mut forks = 0;
    for seed in 0..4 {
        let mut sim = five(seed, 0.05);
        sim.max_delay = 3_000;
        for round in 0..6 {
            for i in 0..sim.members.len() {
                sim.members[i]
                    .post(sim.now, &format!("{i}:{round}"))
                    .unwrap();
                for _ in 0..3 {
                    sim.step();
                }
            }
        }
        sim.settle();
        let first = sim.texts(0);
        let mut sorted: Vec<String> = first.iter().flatten().cloned().collect();
        sorted.sort();
        let mut expect: Vec<String> = (0..5)
            .flat_map(|i| (0..6).map(move |r| format!("{i}:{r}")))
            .collect();
        expect.sort();
        assert_eq!(sorted, expect, "seed {seed}: each post once");
        for i in 1..sim.members.len() {
            assert_eq!(sim.texts(i), first, "member {i}, seed {seed}");
        }
        forks += sim.members[0].chain().len() as u64 - 1 - sim.members[0].chain().height();
    }
    assert!(
        forks > 0,
        "no block lost the fork choice: the test shows nothing"
    );
}

#[test]
fn a_removed_member_cannot_read_later_posts_but_everyone_else_can() {
    let mut sim = five(7, 0.05);
    sim.members[2].post(sim.now, "before").unwrap();
    sim.settle();
    let di = 4;
    let di_id = sim.members[di].me();
    // The leaver keeps a copy of everything it is sent.
    let mut spy = Community::restore(
        Config::default(),
        [9; 32],
        sim.members[0].chain().genesis().clone(),
        sim.members[di].save(),
        sim.members[di]
            .chain()
            .blocks_in_order()
            .into_iter()
            .cloned(),
        sim.now,
    );
    sim.members[1].remove(sim.now, di_id).unwrap();
    sim.run_until(|s| s.members[0].state().role(&di_id).is_none(), 60_000);
    let mut expelled = false;
    while let Some(e) = sim.members[di].poll_event() {
        expelled |= e == Event::Expelled;
    }
    sim.settle();
    assert!(expelled || !sim.members[di].is_member());
    sim.members[2].post(sim.now, "after").unwrap();
    sim.settle();
    // Every block reaches the spy, as if someone leaked them all.
    for b in sim.members[0].chain().blocks_in_order() {
        let _ = spy.handle_block(sim.now, &b.encode());
    }
    assert_eq!(spy.chain().tip(), sim.members[0].chain().tip());
    let seen = sim.texts(0);
    assert!(seen.contains(&Some("before".into())) && seen.contains(&Some("after".into())));
    for i in 0..4 {
        assert_eq!(sim.texts(i), seen);
    }
    let spied: Vec<Option<String>> = spy
        .log(0)
        .into_iter()
        .filter_map(|e| match e.what {
            LogWhat::Post(t) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(spied.first(), Some(&Some("before".into())));
    assert_eq!(
        spied.last(),
        Some(&None),
        "a removed member read a later post"
    );
    // And it can neither sync nor post any more.
    let req = SyncRequest::decode(&sim.members[di].sync_request(sim.now)).unwrap();
    assert_eq!(
        sim.members[0].answer_sync(sim.now, &req, 1 << 20),
        chainmail_chain::SyncResponse::NotMember
    );
    assert!(sim.members[0].stats().sync_refused >= 1);
}

#[test]
fn a_member_offline_during_twenty_posts_catches_up() {
    let mut sim = five(3, 0.0);
    sim.online[3] = false;
    for n in 0..20 {
        let who = [0, 1, 2, 4][n % 4];
        sim.members[who]
            .post(sim.now, &format!("post {n}"))
            .unwrap();
        sim.step();
    }
    let end = sim.now + 60_000;
    while sim.now < end {
        sim.step();
    }
    assert!(sim.members[3].chain().height() < sim.members[0].chain().height());
    sim.online[3] = true;
    sim.sync(3);
    assert_eq!(sim.members[3].chain().tip(), sim.members[0].chain().tip());
    assert_eq!(sim.texts(3), sim.texts(0));
    assert_eq!(sim.texts(3).len(), 20);
}

#[test]
fn concurrent_admin_actions_converge() {
    let mut sim = five(11, 0.0);
    let bo = sim.members[2].me();
    let cy = sim.members[3].me();
    sim.members[0].set_role(sim.now, bo, Role::Admin).unwrap();
    sim.settle();
    let adele = sim.members[1].me();
    // Two admins cannot remove each other (only lower ranks): refused at
    // the issuer already, and by every member if forged into the pool.
    assert!(sim.members[1].remove(sim.now, bo).is_err());
    assert!(sim.members[2].remove(sim.now, adele).is_err());
    // Partitioned: the owner removes bo while bo bans cy and adele
    // renames nobody but promotes cy; each produces on the same parent.
    sim.online = vec![true, false, false, false, false];
    sim.members[0].remove(sim.now, bo).unwrap();
    sim.members[0].produce(sim.now).unwrap();
    sim.queue.clear();
    sim.online = vec![false, false, true, false, false];
    sim.members[2].ban(sim.now, cy).unwrap();
    sim.members[2].produce(sim.now).unwrap();
    sim.queue.clear();
    sim.online = vec![false, true, false, false, false];
    sim.members[1]
        .set_role(sim.now, cy, Role::Moderator)
        .unwrap();
    sim.members[1].produce(sim.now).unwrap();
    sim.queue.clear();
    // Drop what was queued for publishing meanwhile: the partition healed
    // only through sync, in every order.
    for m in &mut sim.members {
        while m.poll_output().is_some() {}
    }
    sim.online = vec![true; 5];
    for i in [4, 3, 2, 1, 0, 2, 4] {
        sim.sync(i);
    }
    // bo, removed, can no longer sync from members (checked elsewhere).
    sim.online[2] = false;
    sim.settle();
    let tip = sim.members[0].chain().tip();
    assert!(
        [0, 1, 3, 4]
            .iter()
            .all(|i| sim.members[*i].chain().tip() == tip)
    );
    let state = sim.members[0].state();
    // The owner's block wins its height: bo is out, so bo's ban (whose
    // block lost) is refused when judged again; adele's promotion of cy
    // goes in on top.
    assert_eq!(state.role(&bo), None);
    assert_eq!(state.role(&cy), Some(Role::Moderator));
    assert!(!state.is_banned(&cy));
    assert!(
        [0, 1, 3, 4]
            .iter()
            .all(|i| sim.members[*i].state().hash() == state.hash())
    );
}

#[test]
fn simulations_are_deterministic() {
    let run = || {
        let mut sim = five(5, 0.2);
        for i in 0..5 {
            sim.members[i].post(sim.now, "x").unwrap();
        }
        sim.settle();
        (sim.now, sim.members[0].chain().tip())
    };
    assert_eq!(run(), run());
}
