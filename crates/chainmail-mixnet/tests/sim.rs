//! Deterministic multi-node simulation of the mixnet cores on the shared
//! harness (`chainmail-sim`): a virtual clock, a seeded network with
//! per-link latency, loss and reordering, an adversary that replays
//! packets on the links between nodes, 30 nodes and 10 clients. No
//! sleeping, no sockets: the same cores the node binary runs. Every frame
//! a client sends is checked to go to one of its own providers.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chainmail_mixnet::{
    Answer, Client, ClientConfig, ClientEvent, ClientKeys, DropReason, Errand, ErrandId, Params,
    Preset, ReplayStatus,
};
use chainmail_sim::{Delivery, Endpoint, Links, Mixnet, MixnetConfig, Network, Time, Wire};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const START: Time = Time(1_800_000_000_000 + 600_000);

struct SimConfig {
    seed: u64,
    loss: f64,
    replay_fraction: f64,
    messages_per_client: usize,
    preset: Preset,
    duration: Duration,
    /// Messages are sent at random times in this first part of the run.
    send_window: Duration,
    /// Epoch length (None: the preset's hour, so the run stays in one epoch).
    epoch: Option<Duration>,
    /// Overrides the preset's payload rate λP.
    payload_per_s: Option<f64>,
    /// Delay queue size per node (default 200,000).
    max_queued: Option<usize>,
    /// Replay tags a key is sized for, per node (default 200,000).
    replay_capacity: Option<u64>,
}

#[derive(Debug, Default, PartialEq)]
struct Outcome {
    sent: usize,
    received: usize,
    delivered: usize,
    failed: usize,
    duplicate_receipts: usize,
    frames: u64,
    frame_sizes_other_than_packet: u64,
    replays_injected: u64,
    replays_dropped: u64,
    dropped_other: BTreeMap<String, u64>,
    delay_mean_ms: f64,
    delay_sd_ms: f64,
    delay_samples: u64,
    client_loops_returned: u64,
    mix_loops_returned: u64,
    retransmissions: u64,
    client_packets: u64,
    latencies_ms: Vec<u64>,
    /// Each node's replay filters at the end.
    replay: Vec<ReplayStatus>,
}

/// The cores: a mixnet of nodes and the clients on it.
struct World {
    mixnet: Mixnet,
    clients: Vec<Client>,
    /// Message id → (sender, recipient, body).
    sent: HashMap<[u8; 16], (usize, usize, Vec<u8>)>,
    received: HashMap<[u8; 16], usize>,
    /// Answers: (client, errand id, answer).
    answers: Vec<(usize, ErrandId, Answer)>,
    errands_failed: Vec<(usize, ErrandId)>,
    out: Outcome,
}

impl chainmail_sim::World for World {
    type Addr = Endpoint;
    type Msg = Wire<()>;

    fn pump(&mut self, now: Time, net: &mut Network<Endpoint, Wire<()>>) {
        self.mixnet.pump_nodes(now, net);
        if self.mixnet.take_new_directories() {
            for d in self.mixnet.directories(now) {
                for c in &mut self.clients {
                    c.set_directory(d.clone());
                }
            }
        }
        for c in 0..self.clients.len() {
            let before = self.mixnet.frames;
            self.mixnet.pump_client(now, net, c, &mut self.clients[c]);
            self.out.client_packets += self.mixnet.frames - before;
            while let Some(event) = self.clients[c].poll_event() {
                match event {
                    ClientEvent::Received { id, body } => {
                        // Messages the run scheduled are checked; tests may send others.
                        if let Some((_, recipient, expected)) = self.sent.get(&id) {
                            assert_eq!(*recipient, c, "message reached the wrong client");
                            assert_eq!(&body, expected);
                        }
                        *self.received.entry(id).or_default() += 1;
                    }
                    ClientEvent::Delivered { after, .. } => {
                        self.out.delivered += 1;
                        self.out.latencies_ms.push(after.as_millis() as u64);
                    }
                    ClientEvent::Failed { .. } => self.out.failed += 1,
                    ClientEvent::LoopReturned { .. } => self.out.client_loops_returned += 1,
                    ClientEvent::Answered { id, answer } => self.answers.push((c, id, answer)),
                    ClientEvent::ErrandFailed { id } => self.errands_failed.push((c, id)),
                }
            }
        }
    }

    fn deliver(&mut self, now: Time, delivery: Delivery<Endpoint, Wire<()>>) {
        let Some(d) = self.mixnet.deliver(now, delivery) else {
            return;
        };
        match (d.to, d.msg) {
            (Endpoint::Client(c), Wire::FetchResponse { provider, bytes }) => {
                self.clients[c].handle_fetch_response(now, provider, &bytes)
            }
            _ => unreachable!("no such route in the simulation"),
        }
    }

    fn next_timeout(&self) -> Option<Time> {
        let clients = self.clients.iter().filter_map(Client::poll_timeout).min();
        [self.mixnet.next_timeout(), clients]
            .into_iter()
            .flatten()
            .min()
    }

    fn fire(&mut self, now: Time) {
        self.mixnet.fire(now);
        for c in &mut self.clients {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
        }
    }
}

struct Sim {
    sim: chainmail_sim::Sim<World>,
    rng: StdRng,
    cfg: SimConfig,
}

impl std::ops::Deref for Sim {
    type Target = World;
    fn deref(&self) -> &World {
        &self.sim.world
    }
}

impl std::ops::DerefMut for Sim {
    fn deref_mut(&mut self) -> &mut World {
        &mut self.sim.world
    }
}

impl Sim {
    fn new(cfg: SimConfig, node_count: usize, provider_count: usize, client_count: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let mut params = Params::with_preset(cfg.preset);
        params.layer_width_cap = 8;
        if let Some(epoch) = cfg.epoch {
            params.epoch_length = epoch;
            params.key_grace = epoch / 6;
        }
        if let Some(rate) = cfg.payload_per_s {
            params.rates.payload_per_s = rate;
        }
        let mixnet = Mixnet::new(
            MixnetConfig {
                params: params.clone(),
                name: "sim".into(),
                providers: provider_count,
                mixes: node_count - provider_count,
                replay_capacity: cfg.replay_capacity.unwrap_or(200_000),
                max_queued: cfg.max_queued.unwrap_or(200_000),
            },
            &mut rng,
            START,
        );
        let [directory, upcoming] = mixnet.directories(START);
        assert!(directory.is_complete());
        assert_eq!(
            directory.layers.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![8, 8, 8]
        );
        assert_eq!(directory.providers.len(), provider_count);
        let mut clients = Vec::new();
        for c in 0..client_count {
            let providers = [
                mixnet.id(c % provider_count),
                mixnet.id((c + 1) % provider_count),
            ];
            let keys = ClientKeys::generate(&mut rng, &providers);
            let mut config = ClientConfig::new(params.clone());
            config.ack_timeout = Duration::from_secs(8);
            let mut client = Client::new(config, keys, rng.random());
            client.set_directory(directory.clone());
            client.set_directory(upcoming.clone());
            clients.push(client);
        }
        let world = World {
            mixnet,
            clients,
            sent: HashMap::new(),
            received: HashMap::new(),
            answers: Vec::new(),
            errands_failed: Vec::new(),
            out: Outcome::default(),
        };
        // Packets may be lost; the adversary records some packets between
        // nodes and replays them later on the same link.
        let links = Links {
            loss: cfg.loss,
            duplication: cfg.replay_fraction,
            duplicate_after_ms: 5000,
            ..Links::default()
        };
        let net = Network::new(rng.random(), links);
        Sim {
            sim: chainmail_sim::Sim::new(world, net, START),
            rng,
            cfg,
        }
    }

    fn now(&self) -> Time {
        self.sim.now()
    }

    fn step_to(&mut self, until: Time) {
        self.sim.step_to(until);
    }

    fn run(self) -> Outcome {
        self.run_with(|_| {})
    }

    /// [`Sim::run`], calling `attack` before each scheduled message.
    fn run_with(mut self, mut attack: impl FnMut(&mut Sim)) -> Outcome {
        // Messages: each client sends to the next one, at random times in
        // the first minute.
        let clients = self.clients.len();
        let mut schedule: Vec<(Time, usize)> = (0..clients)
            .flat_map(|c| (0..self.cfg.messages_per_client).map(move |_| c))
            .map(|c| {
                (
                    START
                        + Duration::from_millis(
                            self.rng
                                .random_range(0..self.cfg.send_window.as_millis() as u64),
                        ),
                    c,
                )
            })
            .collect();
        schedule.sort();
        for (at, from) in schedule {
            self.step_to(at);
            attack(&mut self);
            let to = (from + 1) % clients;
            let address = self.clients[to].address();
            let body = format!("message {} from {from} to {to}", self.out.sent).into_bytes();
            let now = self.now();
            let id = self.clients[from].send(now, &address, &body).unwrap();
            self.sent.insert(id, (from, to, body));
            self.out.sent += 1;
        }
        // No replays in the last 10 s, so that every replay arrives before
        // the end.
        let end = START + self.cfg.duration;
        self.step_to(end - Duration::from_secs(10));
        self.sim.net.links_mut().duplication = 0.0;
        self.step_to(end);
        self.finish()
    }

    fn finish(mut self) -> Outcome {
        let mut out = std::mem::take(&mut self.sim.world.out);
        out.received = self.received.len();
        out.duplicate_receipts = self.received.values().filter(|n| **n > 1).count();
        out.frames = self.mixnet.frames;
        out.frame_sizes_other_than_packet = self.mixnet.odd_frames;
        out.replays_injected = self.sim.net.stats().duplicated;
        let (mut sum, mut sq, mut count) = (0.0, 0.0, 0u64);
        for n in &self.mixnet.nodes {
            let s = n.stats();
            sum += s.delay_sum_ms as f64;
            sq += s.delay_sum_sq_ms;
            count += s.delay_count;
            out.replays_dropped += s.dropped.get(&DropReason::Replay).copied().unwrap_or(0);
            for (reason, n) in &s.dropped {
                if *reason != DropReason::Replay {
                    *out.dropped_other.entry(format!("{reason:?}")).or_default() += n;
                }
            }
            out.mix_loops_returned += s.loops_returned;
        }
        let mean = sum / count as f64;
        out.delay_mean_ms = mean;
        out.delay_sd_ms = (sq / count as f64 - mean * mean).sqrt();
        out.delay_samples = count;
        out.retransmissions = self.clients.iter().map(|c| c.stats().retransmissions).sum();
        out.replay = self
            .mixnet
            .nodes
            .iter()
            .map(|n| n.replay_status())
            .collect();
        out
    }
}

fn standard_run(seed: u64) -> Outcome {
    let cfg = SimConfig {
        seed,
        loss: 0.01,
        replay_fraction: 0.02,
        messages_per_client: 10,
        preset: Preset::Standard,
        duration: Duration::from_secs(240),
        send_window: Duration::from_secs(60),
        epoch: None,
        payload_per_s: None,
        max_queued: None,
        replay_capacity: None,
    };
    Sim::new(cfg, 30, 6, 10).run()
}

#[test]
fn thirty_nodes_ten_clients_deliver_everything_exactly_once() {
    let out = standard_run(7);
    eprintln!("{out:#?}");
    // Delivery: every message reached its recipient exactly once, and every
    // sender learned so through an acknowledgement.
    assert_eq!(out.sent, 100);
    assert_eq!(out.received, out.sent, "messages lost");
    assert_eq!(out.duplicate_receipts, 0);
    assert_eq!(out.delivered, out.sent, "acknowledgements missing");
    assert_eq!(out.failed, 0);
    // Loss was repaired by retransmission.
    assert!(
        out.retransmissions > 0,
        "1% loss should have cost some retransmissions"
    );
    // Every frame on every link had the packet size: real packets,
    // acknowledgements, loop and drop cover alike.
    assert!(out.frames > 10_000, "{}", out.frames);
    assert_eq!(out.frame_sizes_other_than_packet, 0);
    // Every replayed packet was dropped as a replay, and nothing else was
    // dropped for any reason.
    assert!(out.replays_injected > 100);
    assert_eq!(out.replays_dropped, out.replays_injected);
    assert!(out.dropped_other.is_empty(), "{:?}", out.dropped_other);
    // Per-hop delays follow the configured exponential distribution: mean
    // and standard deviation both equal to the configured mean (whole
    // milliseconds shift the mean down by 0.5 ms).
    let mean = Preset::Standard.rates().mean_delay_ms;
    assert!(out.delay_samples > 20_000);
    assert!(
        (out.delay_mean_ms - (mean - 0.5)).abs() < mean * 0.03,
        "mean {}",
        out.delay_mean_ms
    );
    assert!(
        (out.delay_sd_ms - mean).abs() < mean * 0.05,
        "sd {}",
        out.delay_sd_ms
    );
    // Cover traffic flowed: loops of clients and mixes came back.
    assert!(out.client_loops_returned > 100);
    assert!(out.mix_loops_returned > 1000);
}

#[test]
fn the_simulation_is_deterministic() {
    let a = standard_run(11);
    let b = standard_run(11);
    assert_eq!(a, b);
    let c = standard_run(12);
    assert_ne!(a.latencies_ms, c.latencies_ms);
}

/// The property cover traffic exists for: a client sends at the same rate
/// whether it is silent or busy. Client 0 is idle for 100 s, then sends a
/// message every 1.5 s for 100 s (and acknowledges client 9's messages).
#[test]
fn a_client_sends_at_the_same_rate_idle_and_busy() {
    let cfg = SimConfig {
        seed: 21,
        loss: 0.0,
        replay_fraction: 0.0,
        messages_per_client: 0,
        preset: Preset::Standard,
        duration: Duration::from_secs(0),
        send_window: Duration::from_secs(60),
        epoch: None,
        payload_per_s: None,
        max_queued: None,
        replay_capacity: None,
    };
    let mut sim = Sim::new(cfg, 30, 6, 10);
    let packets = |sim: &Sim| sim.clients[0].stats().packets_sent();
    sim.step_to(START + Duration::from_secs(20));
    let idle_start = packets(&sim);
    sim.step_to(START + Duration::from_secs(120));
    let idle = packets(&sim) - idle_start;
    let to_one = sim.clients[1].address();
    let to_zero = sim.clients[0].address();
    for k in 0..66u64 {
        let at = START + Duration::from_secs(120) + Duration::from_millis(1500 * k);
        sim.step_to(at);
        let now = sim.now();
        sim.clients[0].send(now, &to_one, b"busy").unwrap();
        sim.clients[9]
            .send(now, &to_zero, b"to the busy one")
            .unwrap();
    }
    sim.step_to(START + Duration::from_secs(220));
    let busy = packets(&sim) - idle - idle_start;
    let s = sim.clients[0].stats().clone();
    eprintln!("idle {idle} packets, busy {busy} packets in 100 s each; {s:?}");
    // 1.9 packets/s: about 190 in each window (Poisson, sd about 14).
    let expected = Preset::Standard.rates().client_packets_per_s() * 100.0;
    for (what, n) in [("idle", idle), ("busy", busy)] {
        assert!(
            (n as f64 - expected).abs() < 5.0 * expected.sqrt(),
            "{what}: {n} packets, expected about {expected}"
        );
    }
    assert!(
        s.real_sent >= 60 && s.acks_sent >= 60,
        "the busy window really carried messages and acks"
    );
}

/// Mix keys rotate every 60 s (10 s grace) while messages flow across
/// three epoch boundaries: nodes publish their new keys, everyone moves to
/// the next epoch's directory, packets in flight at a boundary are still
/// processed with the previous key, and nothing is lost.
#[test]
fn traffic_flows_across_key_rotations() {
    let cfg = SimConfig {
        seed: 5,
        loss: 0.0,
        replay_fraction: 0.0,
        messages_per_client: 10,
        preset: Preset::Standard,
        duration: Duration::from_secs(240),
        send_window: Duration::from_secs(180),
        epoch: Some(Duration::from_secs(60)),
        payload_per_s: None,
        max_queued: None,
        replay_capacity: None,
    };
    let out = Sim::new(cfg, 30, 6, 10).run();
    eprintln!("{out:#?}");
    assert_eq!(out.received, out.sent);
    assert_eq!(out.delivered, out.sent);
    assert_eq!(out.duplicate_receipts, 0);
    assert!(out.dropped_other.is_empty(), "{:?}", out.dropped_other);
    assert!(out.client_loops_returned > 100 && out.mix_loops_returned > 1000);
}

/// Drop cover exists only to look like real traffic, so a tick of the drop
/// stream carries a queued packet when there is one. With the payload
/// stream switched off, messages and acknowledgements still flow, at the
/// drop stream's rate, and the client sends no more than its cover rates.
#[test]
fn queued_packets_ride_the_drop_stream() {
    let cfg = SimConfig {
        seed: 3,
        loss: 0.0,
        replay_fraction: 0.0,
        messages_per_client: 3,
        preset: Preset::Standard,
        duration: Duration::from_secs(400),
        send_window: Duration::from_secs(30),
        epoch: None,
        payload_per_s: Some(0.0),
        max_queued: None,
        replay_capacity: None,
    };
    let out = Sim::new(cfg, 30, 6, 10).run();
    eprintln!("{out:#?}");
    assert_eq!(out.sent, 30);
    assert_eq!(out.received, out.sent);
    assert_eq!(out.delivered, out.sent);
    assert_eq!(out.duplicate_receipts, 0);
    // Ten clients at λL + λD each for 400 s: the real packets took cover
    // slots and added none.
    let rates = Preset::Standard.rates();
    let expected = (rates.loop_per_s + rates.drop_per_s) * 400.0 * 10.0;
    let sent = out.client_packets as f64;
    assert!(
        (sent - expected).abs() < 5.0 * expected.sqrt(),
        "{sent} packets, expected about {expected}"
    );
}

/// Errands (DHT lookups and publications) travel through the mixnet to an
/// exit provider that is not one of the client's own, which answers
/// through the SURBs they carry; clients speak only to their providers
/// throughout (asserted on every frame). Records larger than the first
/// answer SURBs hold come back after the exit asks for room; lost packets
/// are repaired by asking again through another exit.
#[test]
fn errands_are_carried_out_by_exits_and_answered_through_surbs() {
    let cfg = SimConfig {
        seed: 31,
        loss: 0.02,
        replay_fraction: 0.0,
        messages_per_client: 0,
        preset: Preset::Standard,
        duration: Duration::from_secs(0),
        send_window: Duration::from_secs(60),
        epoch: None,
        payload_per_s: None,
        max_queued: None,
        replay_capacity: None,
    };
    let mut sim = Sim::new(cfg, 30, 6, 10);
    sim.step_to(START + Duration::from_secs(5));
    let record = |c: usize| -> Vec<u8> {
        // Records of 0.5 to 5 KB (an account descriptor is 1 to 2 KB):
        // the larger ones need more answer SURBs than a lookup carries at
        // first.
        (0..(500 * (c + 1))).map(|i| (i * 7 + c) as u8).collect()
    };
    let key = |c: usize| -> Vec<u8> { vec![c as u8 + 1; 32] };
    let mut puts = HashMap::new();
    for c in 0..10 {
        let now = sim.now();
        let id = sim.clients[c]
            .errand(
                now,
                Errand::Put {
                    key: key(c),
                    value: record(c),
                },
            )
            .unwrap();
        puts.insert(id, c);
    }
    sim.step_to(START + Duration::from_secs(220));
    let stored: Vec<_> = sim
        .answers
        .iter()
        .filter(|(_, id, a)| puts.contains_key(id) && *a == Answer::Stored)
        .collect();
    assert_eq!(stored.len(), 10, "{:?}", sim.errands_failed);
    // Each client looks up the next one's record, and a key nobody stored.
    let mut gets = HashMap::new();
    for c in 0..10 {
        let now = sim.now();
        let next = (c + 1) % 10;
        let id = sim.clients[c]
            .errand(now, Errand::Get { key: key(next) })
            .unwrap();
        gets.insert(id, Some(next));
        let id = sim.clients[c]
            .errand(
                now,
                Errand::Get {
                    key: vec![0xee; 32],
                },
            )
            .unwrap();
        gets.insert(id, None);
    }
    sim.step_to(START + Duration::from_secs(450));
    assert!(sim.errands_failed.is_empty(), "{:?}", sim.errands_failed);
    for (id, whose) in &gets {
        let (_, _, answer) = sim
            .answers
            .iter()
            .find(|(_, a, _)| a == id)
            .expect("every lookup answered");
        match whose {
            Some(n) => assert_eq!(*answer, Answer::Found(record(*n))),
            None => assert_eq!(*answer, Answer::NotFound),
        }
    }
    // Errands spread over the exits.
    let exits: std::collections::HashSet<usize> = sim
        .mixnet
        .errands_done
        .iter()
        .map(|(exit, _)| *exit)
        .collect();
    assert!(exits.len() >= 3, "{exits:?}");
    let too_large = sim
        .clients
        .iter()
        .map(|c| c.stats().errands_retried)
        .sum::<u64>();
    eprintln!(
        "{} errands carried out by {} exits, {} asked again",
        sim.mixnet.errands_done.len(),
        exits.len(),
        too_large
    );
    let dropped: u64 = sim
        .mixnet
        .nodes
        .iter()
        .flat_map(|n| n.stats().dropped.iter())
        .filter(|(r, _)| matches!(r, DropReason::Errand | DropReason::ErrandsBusy))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(dropped, 0, "no honest errand refused");
}

/// A stranger sends a message whose acknowledgement SURB starts at a node
/// of its choosing (here a mix it runs). The recipient shows the message
/// but never sends anything to that node: acknowledgements leave only
/// through SURBs that start at one of the recipient's own providers.
#[test]
fn a_surb_that_starts_at_a_strangers_node_is_never_used() {
    use chainmail_mixnet::message::{self, Inner};
    let cfg = SimConfig {
        seed: 41,
        loss: 0.0,
        replay_fraction: 0.0,
        messages_per_client: 0,
        preset: Preset::Standard,
        duration: Duration::from_secs(0),
        send_window: Duration::from_secs(60),
        epoch: None,
        payload_per_s: None,
        max_queued: None,
        replay_capacity: None,
    };
    let mut sim = Sim::new(cfg, 30, 6, 10);
    sim.step_to(START + Duration::from_secs(5));
    let stranger = 20; // a mix
    let stranger_id = sim.mixnet.nodes[stranger].id();
    let victim = sim.clients[3].address();
    let epoch = sim.mixnet.params.epoch_at(sim.now());
    let directory = sim
        .mixnet
        .descriptors
        .epoch_directory(epoch, &sim.mixnet.params, sim.now());
    let first = directory.node(&stranger_id).unwrap();
    let last = directory.provider(&sim.mixnet.nodes[0].id()).unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let surb_route = directory.route(&mut rng, first, last, 10.0).unwrap();
    let (surb, _) = chainmail_packet::build_surb(
        &mut rng,
        epoch,
        &surb_route,
        chainmail_packet::MailboxId([7; 32]),
    )
    .unwrap();
    let inner = Inner::Data {
        id: [0x55; 16],
        surb: Some(Box::new(surb)),
        body: b"hello from a stranger".to_vec(),
    }
    .encode()
    .unwrap();
    let sealed = message::seal(&mut rng, &victim.seal_key, &inner);
    let (provider, mailbox) = victim.mailboxes[0];
    let entry = directory.provider(&sim.mixnet.nodes[5].id()).unwrap();
    let to = directory.provider(&provider).unwrap();
    let route = directory.route(&mut rng, entry, to, 10.0).unwrap();
    let packet =
        chainmail_packet::build_packet(&mut rng, epoch, &route, mailbox, &sealed[..]).unwrap();
    let first_hop = sim.mixnet.node_index[&route[0].node];
    let now = sim.now();
    sim.mixnet.nodes[first_hop].handle_packet(now, packet.as_bytes());
    let before = sim.mixnet.nodes[stranger].stats().packets_in;
    sim.step_to(START + Duration::from_secs(60));
    assert_eq!(
        sim.received.get(&[0x55; 16]),
        Some(&1),
        "the message is shown"
    );
    assert_eq!(sim.clients[3].stats().foreign_surbs, 1);
    // The stranger's mix got only what mixes get (cover and other
    // traffic), never a packet of the victim's: every client frame was
    // checked to go to the sender's own providers.
    assert!(sim.mixnet.nodes[stranger].stats().packets_in >= before);
}

/// Attack 1 of issue 12: a neighbour of a provider sends packets that ask
/// it to hold them for weeks, and floods it with packets held as long as
/// allowed, while ten clients exchange messages. The weeks-long ones are
/// refused outright; the flood gets at most an equal share of a (small)
/// delay queue; every honest message arrives.
/// The time, the epoch and its directory, for an attacker that builds its
/// own packets.
fn current_directory(
    sim: &Sim,
) -> (
    Time,
    chainmail_packet::Epoch,
    chainmail_mixnet::EpochDirectory,
) {
    let now = sim.now();
    let epoch = sim.mixnet.params.epoch_at(now);
    let directory = sim
        .mixnet
        .descriptors
        .epoch_directory(epoch, &sim.mixnet.params, now);
    (now, epoch, directory)
}

#[test]
fn a_neighbour_that_floods_the_delay_queue_gets_its_share_and_no_more() {
    let cfg = SimConfig {
        seed: 47,
        loss: 0.0,
        replay_fraction: 0.0,
        messages_per_client: 10,
        preset: Preset::Strong,
        duration: Duration::from_secs(240),
        send_window: Duration::from_secs(60),
        epoch: None,
        payload_per_s: None,
        max_queued: Some(300),
        replay_capacity: None,
    };
    let sim = Sim::new(cfg, 30, 6, 10);
    let max_delay = sim.mixnet.params.rates.max_delay_ms();
    let mut rng = StdRng::seed_from_u64(99);
    let mut held_for_weeks = 0u64;
    let mut flood = 0u64;
    let outcome = sim.run_with(|sim| {
        let (now, epoch, directory) = current_directory(sim);
        let entry = directory.provider(&sim.mixnet.nodes[0].id()).unwrap();
        let exit = directory.provider(&sim.mixnet.nodes[1].id()).unwrap();
        let mut packet = |first_delay: u32| {
            let mut route = directory.route(&mut rng, entry, exit, 10.0).unwrap();
            for hop in route.iter_mut().rev().skip(1) {
                hop.delay_ms = max_delay;
            }
            route[0].delay_ms = first_delay;
            chainmail_packet::build_packet(
                &mut rng,
                epoch,
                &route,
                chainmail_packet::MailboxId([7; 32]),
                b"held",
            )
            .unwrap()
        };
        // 49 days at the first hop.
        let p = packet(u32::MAX);
        sim.mixnet.nodes[0].handle_packet_from(now, b"attacker", p.as_bytes());
        held_for_weeks += 1;
        // The most it may ask, many at once: more than the whole queue.
        for _ in 0..200 {
            let p = packet(max_delay);
            sim.mixnet.nodes[0].handle_packet_from(now, b"attacker", p.as_bytes());
            flood += 1;
        }
        let shares = sim.mixnet.nodes[0].queue_shares();
        assert!(shares[0] <= 150, "{shares:?}");
    });
    eprintln!(
        "flood: {flood} packets, {:?} refused for their share, {held_for_weeks} asking for weeks; honest: {} of {} delivered",
        outcome.dropped_other.get("QueueShare"),
        outcome.received,
        outcome.sent
    );
    assert_eq!(outcome.sent, 100);
    assert_eq!(
        outcome.received, outcome.sent,
        "every honest message arrived"
    );
    assert_eq!(outcome.failed, 0);
    assert_eq!(
        outcome.dropped_other.get("DelayTooLong").copied(),
        Some(held_for_weeks)
    );
    let shared = outcome
        .dropped_other
        .get("QueueShare")
        .copied()
        .unwrap_or(0);
    assert!(
        shared > flood / 2,
        "{shared} of {flood} refused: {outcome:?}"
    );
    assert_eq!(outcome.dropped_other.get("QueueFull"), None, "{outcome:?}");
}

#[test]
fn a_flood_past_the_replay_filters_sizing_drops_no_honest_packet_as_a_replay() {
    // Filters sized for 2,000 tags a key. A neighbour of a provider pushes
    // 6,000 valid packets through it while ten clients talk: a fixed Bloom
    // filter of that size would then take about one honest packet in eight
    // for a replay. The growing filter keeps its rate.
    let cfg = SimConfig {
        seed: 53,
        loss: 0.0,
        replay_fraction: 0.0,
        messages_per_client: 10,
        preset: Preset::Standard,
        duration: Duration::from_secs(120),
        send_window: Duration::from_secs(60),
        epoch: None,
        payload_per_s: None,
        max_queued: None,
        replay_capacity: Some(2_000),
    };
    let sim = Sim::new(cfg, 30, 6, 10);
    let mut rng = StdRng::seed_from_u64(101);
    let mut flood = 0u64;
    let outcome = sim.run_with(|sim| {
        let (now, epoch, directory) = current_directory(sim);
        let entry = directory.provider(&sim.mixnet.nodes[0].id()).unwrap();
        let exit = directory.provider(&sim.mixnet.nodes[1].id()).unwrap();
        for _ in 0..60 {
            let route = directory.route(&mut rng, entry, exit, 5.0).unwrap();
            let p = chainmail_packet::build_packet(
                &mut rng,
                epoch,
                &route,
                chainmail_mixnet::message::DISCARD_MAILBOX,
                b"flood",
            )
            .unwrap();
            sim.mixnet.nodes[0].handle_packet_from(now, b"attacker", p.as_bytes());
            flood += 1;
        }
    });
    let entry = outcome.replay[0];
    eprintln!(
        "flood: {flood} packets; entry provider's filter: {} tags, {} bytes, estimated false-positive rate {:e}; honest: {} of {} delivered",
        entry.tags, entry.bytes, entry.false_positive_rate, outcome.received, outcome.sent
    );
    assert!(entry.tags > flood && entry.over_capacity, "{entry:?}");
    assert!(entry.false_positive_rate < 1e-6, "{entry:?}");
    assert_eq!(outcome.sent, 100);
    assert_eq!(
        outcome.received, outcome.sent,
        "every honest message arrived"
    );
    assert_eq!(outcome.failed, 0);
    assert_eq!(outcome.replays_dropped, 0, "no packet taken for a replay");
    assert_eq!(outcome.dropped_other.get("ReplayFull"), None, "{outcome:?}");
}
