//! Deterministic multi-member simulations of the community core on the
//! shared harness (`chainmail-sim`): members gossip records and blocks
//! through a seeded lossy, reordering network, sync from each other, go
//! offline and come back, with a virtual clock.

use std::time::Duration;

use chainmail_chain::{
    Community, Config, Event, LogWhat, MemberSecret, Output, Policy, Role, SyncRequest,
};
use chainmail_sim::{Delivery, Links, Network, Time};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const T0: u64 = 1_800_000_000_000;

/// The members, who is online, and when each syncs next.
struct World {
    /// The virtual time in ms (the community core's time).
    now: u64,
    members: Vec<Community>,
    online: Vec<bool>,
    next_sync: Vec<u64>,
    rng: StdRng,
}

impl World {
    /// One sync exchange of `from` with a random online member.
    fn sync_with_any(&mut self, now: u64, from: usize, request: &[u8]) {
        let peers: Vec<usize> = (0..self.members.len())
            .filter(|p| *p != from && self.online[*p])
            .collect();
        if peers.is_empty() {
            return;
        }
        let peer = peers[self.rng.random_range(0..peers.len())];
        let req = SyncRequest::decode(request).unwrap();
        let resp = self.members[peer].answer_sync(now, &req, 1 << 20);
        let _ = self.members[from].handle_sync_response(now, &resp.encode());
    }

    /// Syncs `who` until it learns nothing more.
    fn sync(&mut self, now: u64, who: usize) {
        for _ in 0..20 {
            let req = self.members[who].sync_request(now);
            let before = self.members[who].chain().len();
            self.sync_with_any(now, who, &req);
            if self.members[who].chain().len() == before {
                break;
            }
        }
    }
}

impl chainmail_sim::World for World {
    type Addr = usize;
    type Msg = Output;

    fn pump(&mut self, now: Time, net: &mut Network<usize, Output>) {
        self.now = now.0;
        for from in 0..self.members.len() {
            if !self.online[from] {
                continue;
            }
            while let Some(out) = self.members[from].poll_output() {
                match out {
                    Output::Record(_) | Output::Block(_) => {
                        for to in 0..self.members.len() {
                            if to != from && self.online[to] {
                                net.send(now, from, to, out.clone());
                            }
                        }
                    }
                    Output::Fetch(ids) => {
                        let req = self.members[from].fetch_request(now.0, ids);
                        self.sync_with_any(now.0, from, &req);
                    }
                }
            }
        }
    }

    fn deliver(&mut self, now: Time, d: Delivery<usize, Output>) {
        if !self.online[d.to] {
            return;
        }
        match d.msg {
            Output::Record(b) => {
                let _ = self.members[d.to].handle_record(now.0, &b);
            }
            Output::Block(b) => {
                let _ = self.members[d.to].handle_block(now.0, &b);
            }
            Output::Fetch(_) => {}
        }
    }

    fn next_timeout(&self) -> Option<Time> {
        (0..self.members.len())
            .filter(|i| self.online[*i])
            .flat_map(|i| [self.members[i].poll_timeout(), Some(self.next_sync[i])])
            .flatten()
            .min()
            .map(Time)
    }

    fn fire(&mut self, now: Time) {
        self.now = now.0;
        for i in 0..self.members.len() {
            if self.online[i] && self.members[i].poll_timeout().is_some_and(|t| t <= now.0) {
                self.members[i].handle_timeout(now.0);
            }
        }
        // Everyone syncs now and then (gossip is lossy), as nodes do.
        for who in 0..self.members.len() {
            if self.online[who] && now.0 >= self.next_sync[who] {
                self.next_sync[who] = now.0 + self.rng.random_range(4_000..6_000);
                self.sync(now.0, who);
            }
        }
    }
}

type Sim = chainmail_sim::Sim<World>;

fn new_sim(seed: u64, loss: f64) -> Sim {
    let owner = Community::create(
        Config::default(),
        [1; 32],
        "owner",
        "garden",
        Policy::default(),
        T0,
    )
    .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let world = World {
        now: T0,
        members: vec![owner],
        online: vec![true],
        next_sync: vec![T0 + 5_000],
        rng: StdRng::seed_from_u64(rng.random()),
    };
    // Gossip takes 5 ms up to 400 ms, per message.
    let net = Network::new(
        rng.random(),
        Links {
            latency_ms: 5..6,
            jitter_ms: 395,
            loss,
            ..Links::default()
        },
    );
    Sim::new(world, net, Time(T0))
}

/// What the tests do with a community simulation.
trait Members {
    /// Gossip takes 5 ms up to this long; beyond the producers' stagger
    /// (1 s), they often race and the chain forks.
    fn set_max_delay(&mut self, ms: u64);
    /// Drops everything on its way (a partition).
    fn drop_in_flight(&mut self);
    /// A new member, added by `by`.
    fn admit(&mut self, by: usize, name: &str) -> usize;
    /// The next moment anything happens (at most a second on).
    fn tick(&mut self);
    /// Syncs `who` until it learns nothing more.
    fn sync(&mut self, who: usize);
    /// Ticks until `done`; dumps every member's state and fails after
    /// `max_ms`.
    fn converge(&mut self, done: impl Fn(&Sim) -> bool, max_ms: u64);
    /// Ticks until every online member has the same tip and nothing waits.
    fn settle(&mut self);
    /// Member `who`'s posts, in log order.
    fn texts(&self, who: usize) -> Vec<Option<String>>;
}

impl Members for Sim {
    fn set_max_delay(&mut self, ms: u64) {
        self.net.links_mut().jitter_ms = ms - 5;
    }

    fn drop_in_flight(&mut self) {
        self.net.clear();
    }

    fn admit(&mut self, by: usize, name: &str) -> usize {
        let w = &mut self.world;
        let i = w.members.len();
        let mut seed = [0u8; 32];
        seed[0] = i as u8 + 10;
        let mut rng = StdRng::from_seed(seed);
        let secret = MemberSecret::generate(&mut rng);
        let keys = secret.public();
        let genesis = w.members[0].chain().genesis().clone();
        w.members
            .push(Community::join(Config::default(), seed, genesis, secret));
        w.online.push(true);
        w.next_sync.push(w.now + 5_000);
        w.members[by].add(w.now, keys, name).unwrap();
        self.converge(
            |s| s.world.members[i].has_current_key() && s.world.members[i].is_member(),
            60_000,
        );
        i
    }

    fn tick(&mut self) {
        self.step(Duration::from_secs(1));
    }

    fn sync(&mut self, who: usize) {
        let now = self.world.now;
        self.world.sync(now, who);
    }

    fn converge(&mut self, done: impl Fn(&Sim) -> bool, max_ms: u64) {
        let end = self.world.now + max_ms;
        while !done(self) {
            if self.world.now >= end {
                for (i, m) in self.world.members.iter().enumerate() {
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
            self.tick();
        }
    }

    fn settle(&mut self) {
        let end = self.world.now + 120_000;
        loop {
            self.tick();
            // Online members that are still members in the owner's eyes: a
            // removed member that missed its removal block cannot sync any
            // more (members refuse it), so it never catches up.
            let w = &self.world;
            let owner = w.members[0].state();
            let online: Vec<usize> = (0..w.members.len())
                .filter(|i| w.online[*i] && owner.role(&w.members[*i].me()).is_some())
                .collect();
            let tip = w.members[online[0]].chain().tip();
            let quiet = online.iter().all(|i| {
                let m = &w.members[*i];
                m.chain().tip() == tip && m.pending() == 0 && m.pool_len() == 0
            });
            if quiet && self.net.in_flight() == 0 {
                return;
            }
            if self.world.now >= end {
                for (i, m) in self.world.members.iter().enumerate() {
                    eprintln!(
                        "{i}: online {} h {} tip {} pool {} pending {} in flight {}",
                        self.world.online[i],
                        m.chain().height(),
                        chainmail_chain::short(&m.chain().tip()),
                        m.pool_len(),
                        m.pending(),
                        self.net.in_flight()
                    );
                }
                panic!("the members did not converge");
            }
        }
    }

    fn texts(&self, who: usize) -> Vec<Option<String>> {
        self.world.members[who]
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
    let mut sim = new_sim(seed, loss);
    let admin = sim.admit(0, "adele");
    let me = sim.world.members[admin].me();
    sim.world.members[0]
        .set_role(sim.world.now, me, Role::Admin)
        .unwrap();
    sim.converge(
        |s| {
            s.world
                .members
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
            for i in 0..sim.world.members.len() {
                sim.world.members[i]
                    .post(sim.world.now, &format!("{i}:{round}"))
                    .unwrap();
                sim.tick();
            }
        }
        sim.settle();
        let first = sim.texts(0);
        assert_eq!(first.len(), 30, "seed {seed}");
        assert!(first.iter().all(Option::is_some));
        for i in 1..sim.world.members.len() {
            assert_eq!(sim.texts(i), first, "member {i}, seed {seed}");
            assert_eq!(
                sim.world.members[i].state().hash(),
                sim.world.members[0].state().hash()
            );
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
        assert!(
            sim.world
                .members
                .iter()
                .all(|m| m.stats().blocks_refused == 0)
        );
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
        sim.set_max_delay(3_000);
        for round in 0..6 {
            for i in 0..sim.world.members.len() {
                sim.world.members[i]
                    .post(sim.world.now, &format!("{i}:{round}"))
                    .unwrap();
                for _ in 0..3 {
                    sim.tick();
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
        for i in 1..sim.world.members.len() {
            assert_eq!(sim.texts(i), first, "member {i}, seed {seed}");
        }
        forks +=
            sim.world.members[0].chain().len() as u64 - 1 - sim.world.members[0].chain().height();
    }
    assert!(
        forks > 0,
        "no block lost the fork choice: the test shows nothing"
    );
}

#[test]
fn a_removed_member_cannot_read_later_posts_but_everyone_else_can() {
    let mut sim = five(7, 0.05);
    sim.world.members[2].post(sim.world.now, "before").unwrap();
    sim.settle();
    let di = 4;
    let di_id = sim.world.members[di].me();
    // The leaver keeps a copy of everything it is sent.
    let mut spy = Community::restore(
        Config::default(),
        [9; 32],
        sim.world.members[0].chain().genesis().clone(),
        sim.world.members[di].save(),
        sim.world.members[di]
            .chain()
            .blocks_in_order()
            .into_iter()
            .cloned(),
        sim.world.now,
    );
    sim.world.members[1].remove(sim.world.now, di_id).unwrap();
    sim.converge(
        |s| s.world.members[0].state().role(&di_id).is_none(),
        60_000,
    );
    let mut expelled = false;
    while let Some(e) = sim.world.members[di].poll_event() {
        expelled |= e == Event::Expelled;
    }
    sim.settle();
    assert!(expelled || !sim.world.members[di].is_member());
    sim.world.members[2].post(sim.world.now, "after").unwrap();
    sim.settle();
    // Every block reaches the spy, as if someone leaked them all.
    for b in sim.world.members[0].chain().blocks_in_order() {
        let _ = spy.handle_block(sim.world.now, &b.encode());
    }
    assert_eq!(spy.chain().tip(), sim.world.members[0].chain().tip());
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
    let req = SyncRequest::decode(&sim.world.members[di].sync_request(sim.world.now)).unwrap();
    assert_eq!(
        sim.world.members[0].answer_sync(sim.world.now, &req, 1 << 20),
        chainmail_chain::SyncResponse::NotMember
    );
    assert!(sim.world.members[0].stats().sync_refused >= 1);
}

#[test]
fn a_member_offline_during_twenty_posts_catches_up() {
    let mut sim = five(3, 0.0);
    sim.world.online[3] = false;
    for n in 0..20 {
        let who = [0, 1, 2, 4][n % 4];
        sim.world.members[who]
            .post(sim.world.now, &format!("post {n}"))
            .unwrap();
        sim.tick();
    }
    let end = sim.world.now + 60_000;
    while sim.world.now < end {
        sim.tick();
    }
    assert!(sim.world.members[3].chain().height() < sim.world.members[0].chain().height());
    sim.world.online[3] = true;
    sim.sync(3);
    assert_eq!(
        sim.world.members[3].chain().tip(),
        sim.world.members[0].chain().tip()
    );
    assert_eq!(sim.texts(3), sim.texts(0));
    assert_eq!(sim.texts(3).len(), 20);
}

#[test]
fn concurrent_admin_actions_converge() {
    let mut sim = five(11, 0.0);
    let bo = sim.world.members[2].me();
    let cy = sim.world.members[3].me();
    sim.world.members[0]
        .set_role(sim.world.now, bo, Role::Admin)
        .unwrap();
    sim.settle();
    let adele = sim.world.members[1].me();
    // Two admins cannot remove each other (only lower ranks): refused at
    // the issuer already, and by every member if forged into the pool.
    assert!(sim.world.members[1].remove(sim.world.now, bo).is_err());
    assert!(sim.world.members[2].remove(sim.world.now, adele).is_err());
    // Partitioned: the owner removes bo while bo bans cy and adele
    // renames nobody but promotes cy; each produces on the same parent.
    sim.world.online = vec![true, false, false, false, false];
    sim.world.members[0].remove(sim.world.now, bo).unwrap();
    sim.world.members[0].produce(sim.world.now).unwrap();
    sim.drop_in_flight();
    sim.world.online = vec![false, false, true, false, false];
    sim.world.members[2].ban(sim.world.now, cy).unwrap();
    sim.world.members[2].produce(sim.world.now).unwrap();
    sim.drop_in_flight();
    sim.world.online = vec![false, true, false, false, false];
    sim.world.members[1]
        .set_role(sim.world.now, cy, Role::Moderator)
        .unwrap();
    sim.world.members[1].produce(sim.world.now).unwrap();
    sim.drop_in_flight();
    // Drop what was queued for publishing meanwhile: the partition healed
    // only through sync, in every order.
    for m in &mut sim.world.members {
        while m.poll_output().is_some() {}
    }
    sim.world.online = vec![true; 5];
    for i in [4, 3, 2, 1, 0, 2, 4] {
        sim.sync(i);
    }
    // bo, removed, can no longer sync from members (checked elsewhere).
    sim.world.online[2] = false;
    sim.settle();
    let tip = sim.world.members[0].chain().tip();
    assert!(
        [0, 1, 3, 4]
            .iter()
            .all(|i| sim.world.members[*i].chain().tip() == tip)
    );
    let state = sim.world.members[0].state();
    // The owner's block wins its height: bo is out, so bo's ban (whose
    // block lost) is refused when judged again; adele's promotion of cy
    // goes in on top.
    assert_eq!(state.role(&bo), None);
    assert_eq!(state.role(&cy), Some(Role::Moderator));
    assert!(!state.is_banned(&cy));
    assert!(
        [0, 1, 3, 4]
            .iter()
            .all(|i| sim.world.members[*i].state().hash() == state.hash())
    );
}

#[test]
fn simulations_are_deterministic() {
    let run = || {
        let mut sim = five(5, 0.2);
        for i in 0..5 {
            sim.world.members[i].post(sim.world.now, "x").unwrap();
        }
        sim.settle();
        (sim.world.now, sim.world.members[0].chain().tip())
    };
    assert_eq!(run(), run());
}
