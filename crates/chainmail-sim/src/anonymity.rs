//! Sender anonymity against a global passive adversary, measured the
//! Loopix way on the real cores.
//!
//! The adversary sees every link: which client or node sent each packet,
//! to whom, and when. It cannot tell which packet leaving an honest node is
//! which packet that entered it; the packets of a mix it corrupted are an
//! open book (it holds the mix's keys). It gives every packet a
//! probability distribution over the clients that may have sent it:
//!
//! - a packet leaving a client is that client's for certain;
//! - an honest node pools what it holds. Every held packet is equally
//!   likely to leave next (per-hop delays are exponential, so memoryless),
//!   so a packet leaving is given the mean of the distributions in the
//!   pool, and the pool then holds one packet fewer of that mean;
//! - a corrupt node passes each packet's distribution on unchanged.
//!
//! A message's distribution as it reaches the recipient's provider gives
//! its sender's entropy H (bits), the effective anonymity set 2^H, and the
//! unlinkability ε = |ln(p(s0) / p(s1))| between its true sender s0 and a
//! client s1 drawn at random (unbounded when the adversary rules one of
//! them out).
//!
//! The adversary is told more than it could see, so the figures are lower
//! bounds: which packets a node sent of its own (mix loops, errand
//! answers) and which end at a node (loops coming home, mail arriving at
//! the last hop) are known to it.
//!
//! Where each packet really came from and where it ends is known to the
//! simulation by processing it with the node's own keys
//! ([`Mixnet::mix_key`]); the cores are not instrumented.

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use chainmail_mixnet::message::DISCARD_MAILBOX;
use chainmail_mixnet::service::SERVICE_MAILBOX;
use chainmail_mixnet::{Client, ClientConfig, ClientKeys, Params, Preset};
use chainmail_packet::{Action, MailboxId, MixSecretKey, Packet};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::{Delivery, Endpoint, Links, Mixnet, MixnetConfig, Network, Time, Wire};

/// A frame on the wire, by a hash of its bytes (every frame differs).
type WireId = u64;

fn wire_id(bytes: &[u8]) -> WireId {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Who really sent a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Client(usize),
    Node,
}

/// What the adversary believes about one packet's sender.
#[derive(Clone, Debug)]
enum Dist {
    /// Certainly this client (or, past the last client, not a client).
    Point(usize),
    /// Probabilities by client, the last entry for "not a client".
    Dense(Box<[f32]>),
}

/// An honest node's pool as the adversary sees it: the sum of the
/// distributions of the packets it holds, and how many it holds.
#[derive(Default)]
struct Pool {
    sum: Vec<f64>,
    mass: f64,
}

impl Pool {
    fn add(&mut self, d: &Dist, width: usize) {
        if self.sum.is_empty() {
            self.sum = vec![0.0; width];
        }
        match d {
            Dist::Point(c) => self.sum[*c] += 1.0,
            Dist::Dense(v) => {
                for (s, p) in self.sum.iter_mut().zip(v.iter()) {
                    *s += f64::from(*p);
                }
            }
        }
        self.mass += 1.0;
    }

    /// The distribution of a packet leaving: the pool's mean.
    fn depart(&mut self, noise: usize) -> Dist {
        if self.mass < 0.5 || self.sum.is_empty() {
            return Dist::Point(noise);
        }
        let mean: Box<[f32]> = self
            .sum
            .iter()
            .map(|s| (s.max(0.0) / self.mass) as f32)
            .collect();
        self.mass -= 1.0;
        if self.mass < 0.5 {
            self.sum.iter_mut().for_each(|s| *s = 0.0);
            self.mass = 0.0;
        } else {
            for (s, p) in self.sum.iter_mut().zip(mean.iter()) {
                *s -= f64::from(*p);
            }
        }
        Dist::Dense(mean)
    }
}

/// One adversary: a global passive observer that also holds the keys of
/// the nodes in `corrupt`.
struct Observer {
    corrupt: Vec<bool>,
    pools: Vec<Pool>,
    /// Frames on the links.
    in_flight: HashMap<WireId, Dist>,
    /// Packets held by corrupt nodes, by the frame they will leave as.
    held: HashMap<WireId, Dist>,
    /// Per measured message: (entropy in bits, ε or None when unbounded).
    measured: Vec<(f64, Option<f64>)>,
}

/// Follows every packet of a simulated mixnet and measures, for several
/// adversaries at once, how well each message's sender is hidden.
pub struct Tracker {
    clients: usize,
    /// Who really sent each frame on the wire.
    origin: HashMap<WireId, Origin>,
    /// Who really sent each packet a node holds, by the frame it will
    /// leave as.
    held: HashMap<WireId, Origin>,
    owners: HashMap<MailboxId, usize>,
    observers: Vec<Observer>,
    measuring: bool,
    rng: StdRng,
}

impl Tracker {
    /// A tracker for `clients` clients whose mailboxes are `owners`, on
    /// `nodes` nodes, with one observer per set of corrupt nodes.
    pub fn new(
        clients: usize,
        owners: HashMap<MailboxId, usize>,
        nodes: usize,
        corrupt: &[Vec<usize>],
        seed: u64,
    ) -> Self {
        let observers = corrupt
            .iter()
            .map(|set| {
                let mut flags = vec![false; nodes];
                for &n in set {
                    flags[n] = true;
                }
                Observer {
                    corrupt: flags,
                    pools: (0..nodes).map(|_| Pool::default()).collect(),
                    in_flight: HashMap::new(),
                    held: HashMap::new(),
                    measured: Vec::new(),
                }
            })
            .collect();
        Tracker {
            clients,
            origin: HashMap::new(),
            held: HashMap::new(),
            owners,
            observers,
            measuring: false,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Measures the messages that reach their last hop from now on (after
    /// a warm-up, so that pools hold what they hold in steady state).
    pub fn start_measuring(&mut self) {
        self.measuring = true;
    }

    /// The index standing for "not a client".
    fn noise(&self) -> usize {
        self.clients
    }

    /// Client `c` sent the frame `bytes` to its provider.
    pub fn client_sent(&mut self, c: usize, bytes: &[u8]) {
        let id = wire_id(bytes);
        self.origin.insert(id, Origin::Client(c));
        for o in &mut self.observers {
            o.in_flight.insert(id, Dist::Point(c));
        }
    }

    /// Node `node` sent the frame `bytes` to another node.
    pub fn node_sent(&mut self, node: usize, bytes: &[u8]) {
        let id = wire_id(bytes);
        let noise = self.noise();
        match self.held.remove(&id) {
            Some(origin) => {
                self.origin.insert(id, origin);
                for o in &mut self.observers {
                    let d = if o.corrupt[node] {
                        o.held.remove(&id).unwrap_or(Dist::Point(noise))
                    } else {
                        o.pools[node].depart(noise)
                    };
                    o.in_flight.insert(id, d);
                }
            }
            None => {
                // The node's own packet (a mix loop, an errand's answer).
                self.origin.insert(id, Origin::Node);
                for o in &mut self.observers {
                    o.in_flight.insert(id, Dist::Point(noise));
                }
            }
        }
    }

    /// The frame `bytes` reached node `node`, whose key for the frame's
    /// epoch is `key`.
    pub fn arrived(&mut self, node: usize, bytes: &[u8], key: Option<&MixSecretKey>) {
        let id = wire_id(bytes);
        let origin = self.origin.remove(&id).unwrap_or(Origin::Node);
        let dists: Vec<Option<Dist>> = self
            .observers
            .iter_mut()
            .map(|o| o.in_flight.remove(&id))
            .collect();
        let (Some(key), Ok(packet)) = (key, Packet::from_bytes(bytes)) else {
            return;
        };
        let Ok(processed) = key.process(packet) else {
            return;
        };
        let width = self.clients + 1;
        match processed.action {
            Action::Forward { packet, .. } => {
                let out = wire_id(packet.as_bytes());
                self.held.insert(out, origin);
                for (o, d) in self.observers.iter_mut().zip(dists) {
                    let d = d.unwrap_or(Dist::Point(width - 1));
                    if o.corrupt[node] {
                        o.held.insert(out, d);
                    } else {
                        o.pools[node].add(&d, width);
                    }
                }
            }
            Action::Deliver { mailbox, .. } => {
                let Origin::Client(sender) = origin else {
                    return;
                };
                // Mail to another client: a message. Loops (to the
                // sender's own mailbox), drop cover and errands are not.
                let real = mailbox != DISCARD_MAILBOX
                    && mailbox != SERVICE_MAILBOX
                    && self.owners.get(&mailbox).is_some_and(|r| *r != sender);
                if !real || !self.measuring {
                    return;
                }
                let challenger = loop {
                    let c = self.rng.random_range(0..self.clients);
                    if c != sender || self.clients == 1 {
                        break c;
                    }
                };
                for (o, d) in self.observers.iter_mut().zip(dists) {
                    if let Some(d) = d {
                        o.measured
                            .push(measure(&d, sender, challenger, self.clients));
                    }
                }
            }
            _ => {}
        }
    }

    /// The figures of each observer, in the order of the corrupt sets.
    pub fn figures(&self) -> Vec<Figures> {
        self.observers
            .iter()
            .map(|o| {
                let corrupt = o.corrupt.iter().filter(|c| **c).count();
                Figures::from_measured(corrupt, &o.measured)
            })
            .collect()
    }
}

/// Entropy (bits) of the distribution over clients, and ε between
/// `sender` and `challenger`.
fn measure(d: &Dist, sender: usize, challenger: usize, clients: usize) -> (f64, Option<f64>) {
    let p = |c: usize| -> f64 {
        match d {
            Dist::Point(x) => f64::from(u8::from(*x == c)),
            Dist::Dense(v) => f64::from(v[c]),
        }
    };
    let (bits, total) = match d {
        Dist::Point(_) => (0.0, 1.0),
        Dist::Dense(v) => {
            let total: f64 = v[..clients].iter().map(|x| f64::from(*x)).sum();
            if total <= 0.0 {
                return (0.0, None);
            }
            let bits = v[..clients]
                .iter()
                .map(|x| f64::from(*x) / total)
                .filter(|q| *q > 0.0)
                .map(|q| -q * q.log2())
                .sum();
            (bits, total)
        }
    };
    let (p0, p1) = (p(sender) / total, p(challenger) / total);
    let eps = (p0 > 0.0 && p1 > 0.0).then(|| (p0 / p1).ln().abs());
    (bits, eps)
}

/// What one adversary learns, over every measured message.
#[derive(Clone, Debug, PartialEq)]
pub struct Figures {
    /// Mixes whose keys it holds.
    pub corrupt_mixes: usize,
    /// Messages measured.
    pub messages: usize,
    /// Mean entropy of a message's sender, bits.
    pub mean_bits: f64,
    /// The entropy that 5 % of messages fall below, bits.
    pub p5_bits: f64,
    /// Median ε over the messages where it is bounded.
    pub median_eps: f64,
    /// 95th percentile of ε over the messages where it is bounded.
    pub p95_eps: f64,
    /// Share of messages where one of the two senders was ruled out (ε
    /// unbounded): a route through corrupt mixes only, for instance.
    pub unbounded: f64,
}

impl Figures {
    fn from_measured(corrupt_mixes: usize, measured: &[(f64, Option<f64>)]) -> Self {
        let mut bits: Vec<f64> = measured.iter().map(|m| m.0).collect();
        bits.sort_by(f64::total_cmp);
        let mut eps: Vec<f64> = measured.iter().filter_map(|m| m.1).collect();
        eps.sort_by(f64::total_cmp);
        let at = |v: &[f64], q: f64| -> f64 {
            if v.is_empty() {
                return f64::NAN;
            }
            v[((v.len() - 1) as f64 * q).round() as usize]
        };
        let n = measured.len();
        Figures {
            corrupt_mixes,
            messages: n,
            mean_bits: bits.iter().sum::<f64>() / n.max(1) as f64,
            p5_bits: at(&bits, 0.05),
            median_eps: at(&eps, 0.5),
            p95_eps: at(&eps, 0.95),
            unbounded: (n - eps.len()) as f64 / n.max(1) as f64,
        }
    }

    /// The effective anonymity set: 2^(mean entropy).
    pub fn anonymity_set(&self) -> f64 {
        self.mean_bits.exp2()
    }
}

/// One measurement: a mixnet of real node cores, clients sending at the
/// preset's rates, and messages between random clients once the pools are
/// warm.
#[derive(Clone, Debug)]
pub struct Experiment {
    /// Seeds everything.
    pub seed: u64,
    /// Rates and delays.
    pub preset: Preset,
    /// Clients.
    pub clients: usize,
    /// Providers (each client has two).
    pub providers: usize,
    /// Mix layers.
    pub layers: usize,
    /// Mixes per layer.
    pub mixes_per_layer: usize,
    /// Fractions of the mixes the adversaries corrupt, one adversary each
    /// (all watch the same run).
    pub corrupt: Vec<f64>,
    /// Cover traffic only, before anything is measured.
    pub warmup: Duration,
    /// Messages measured, sent at random times in `window`.
    pub messages: usize,
    /// When messages are sent, after the warm-up.
    pub window: Duration,
    /// How long the run goes on after the window, for the last messages
    /// to arrive.
    pub drain: Duration,
}

/// What an [`Experiment`] measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// One entry per corrupt fraction.
    pub figures: Vec<Figures>,
    /// The most a message can have: log2 of the number of clients.
    pub ideal_bits: f64,
    /// Frames sent by clients and nodes.
    pub frames: u64,
    /// Virtual time simulated.
    pub simulated: Duration,
}

const START: Time = Time(1_800_000_000_000 + 600_000);

struct World {
    mixnet: Mixnet,
    clients: Vec<Client>,
    /// Client timeouts (some stale: checked when they come up).
    timeouts: BinaryHeap<Reverse<(Time, usize)>>,
    /// Clients with something to hand out.
    due: Vec<usize>,
    tracker: Tracker,
}

impl crate::World for World {
    type Addr = Endpoint;
    type Msg = Wire<()>;

    fn pump(&mut self, now: Time, net: &mut Network<Endpoint, Wire<()>>) {
        self.mixnet.pump_nodes(now, net);
        for (node, bytes) in self.mixnet.take_tapped() {
            self.tracker.node_sent(node, &bytes);
        }
        if self.mixnet.take_new_directories() {
            for d in self.mixnet.directories(now) {
                for c in &mut self.clients {
                    c.set_directory(d.clone());
                }
            }
        }
        let mut due = std::mem::take(&mut self.due);
        due.sort_unstable();
        due.dedup();
        for c in due {
            let client = &mut self.clients[c];
            while let Some((first, packet)) = client.poll_transmit() {
                self.tracker.client_sent(c, packet.as_bytes());
                self.mixnet
                    .client_transmit(now, net, c, first, packet.as_bytes());
            }
            while let Some((provider, bytes)) = client.poll_fetch() {
                self.mixnet.client_fetch(now, net, c, provider, bytes);
            }
            while client.poll_event().is_some() {}
            if let Some(t) = client.poll_timeout() {
                self.timeouts.push(Reverse((t, c)));
            }
        }
    }

    fn deliver(&mut self, now: Time, delivery: Delivery<Endpoint, Wire<()>>) {
        if let (Endpoint::Node(i), Wire::Frame(bytes)) = (delivery.to, &delivery.msg) {
            let key = Packet::from_bytes(bytes)
                .ok()
                .and_then(|p| self.mixnet.mix_key(i, p.epoch()));
            self.tracker.arrived(i, bytes, key);
        }
        if let Some(d) = self.mixnet.deliver(now, delivery)
            && let (Endpoint::Client(c), Wire::FetchResponse { provider, bytes }) = (d.to, d.msg)
        {
            self.clients[c].handle_fetch_response(now, provider, &bytes);
            self.due.push(c);
        }
    }

    fn next_timeout(&self) -> Option<Time> {
        let client = self.timeouts.peek().map(|Reverse((t, _))| *t);
        [self.mixnet.next_timeout(), client]
            .into_iter()
            .flatten()
            .min()
    }

    fn fire(&mut self, now: Time) {
        self.mixnet.fire(now);
        while let Some(Reverse((t, c))) = self.timeouts.peek().copied() {
            if t > now {
                break;
            }
            self.timeouts.pop();
            if self.clients[c].poll_timeout().is_some_and(|t| t <= now) {
                self.clients[c].handle_timeout(now);
            }
            self.due.push(c);
        }
    }
}

/// Runs an experiment.
///
/// # Panics
///
/// If the mixnet cannot be built as asked (no provider, no mix).
pub fn run(e: &Experiment) -> Report {
    let mut rng = StdRng::seed_from_u64(e.seed);
    let mut params = Params::with_preset(e.preset);
    params.layers = e.layers;
    params.layer_width_cap = e.mixes_per_layer;
    let mixes = e.layers * e.mixes_per_layer;
    let mut mixnet = Mixnet::new(
        MixnetConfig {
            params: params.clone(),
            name: "anonymity".into(),
            providers: e.providers,
            mixes,
            replay_capacity: 4_000_000,
            max_queued: 200_000,
        },
        &mut rng,
        START,
    );
    mixnet.tap();
    let [directory, upcoming] = mixnet.directories(START);
    assert!(directory.is_complete(), "the directory has an empty layer");
    let mut clients = Vec::with_capacity(e.clients);
    let mut owners = HashMap::new();
    for c in 0..e.clients {
        let providers = [mixnet.id(c % e.providers), mixnet.id((c + 1) % e.providers)];
        let keys = ClientKeys::generate(&mut rng, &providers);
        let mut client = Client::new(ClientConfig::new(params.clone()), keys, rng.random());
        client.set_directory(directory.clone());
        client.set_directory(upcoming.clone());
        for (_, mailbox) in client.address().mailboxes {
            owners.insert(mailbox, c);
        }
        clients.push(client);
    }
    let mut mix_nodes: Vec<usize> = (e.providers..e.providers + mixes).collect();
    mix_nodes.shuffle(&mut rng);
    let corrupt: Vec<Vec<usize>> = e
        .corrupt
        .iter()
        .map(|f| mix_nodes[..((mixes as f64 * f).round() as usize).min(mixes)].to_vec())
        .collect();
    let tracker = Tracker::new(
        e.clients,
        owners,
        e.providers + mixes,
        &corrupt,
        rng.random(),
    );
    let world = World {
        mixnet,
        clients,
        timeouts: BinaryHeap::new(),
        due: (0..e.clients).collect(),
        tracker,
    };
    let net = Network::new(rng.random(), Links::default());
    let mut sim = crate::Sim::new(world, net, START);

    sim.step_to(START + e.warmup);
    sim.world.tracker.start_measuring();
    let window = e.window.as_millis().max(1) as u64;
    let mut schedule: Vec<(u64, usize, usize)> = (0..e.messages)
        .map(|_| {
            let from = rng.random_range(0..e.clients);
            let to = (from + rng.random_range(1..e.clients.max(2))) % e.clients;
            (rng.random_range(0..window), from, to)
        })
        .collect();
    schedule.sort_unstable();
    let begin = START + e.warmup;
    for (at, from, to) in schedule {
        sim.step_to(begin + Duration::from_millis(at));
        let now = sim.now();
        let address = sim.world.clients[to].address();
        // A full queue only means the sender is busy: the message is
        // skipped, the measurement goes on.
        if sim.world.clients[from]
            .send(now, &address, b"measured")
            .is_ok()
        {
            sim.world.due.push(from);
        }
    }
    let end = begin + e.window + e.drain;
    sim.step_to(end);
    Report {
        figures: sim.world.tracker.figures(),
        ideal_bits: (e.clients as f64).log2(),
        frames: sim.world.mixnet.frames,
        simulated: Duration::from_millis(end.0 - START.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_gives_the_mean_and_keeps_the_rest() {
        let mut pool = Pool::default();
        pool.add(&Dist::Point(0), 4);
        pool.add(&Dist::Point(1), 4);
        pool.add(&Dist::Dense(vec![0.0, 0.0, 1.0, 0.0].into()), 4);
        let Dist::Dense(out) = pool.depart(3) else {
            panic!("a pool gives a mixture");
        };
        for c in 0..3 {
            assert!((out[c] - 1.0 / 3.0).abs() < 1e-6);
        }
        assert!((pool.mass - 2.0).abs() < 1e-9);
        let total: f64 = pool.sum.iter().sum();
        assert!((total - 2.0).abs() < 1e-6);
        pool.depart(3);
        pool.depart(3);
        assert!(matches!(pool.depart(3), Dist::Point(3)));
    }

    #[test]
    fn entropy_and_epsilon_of_simple_distributions() {
        let uniform = Dist::Dense(vec![0.25, 0.25, 0.25, 0.25, 0.0].into());
        let (bits, eps) = measure(&uniform, 0, 1, 4);
        assert!((bits - 2.0).abs() < 1e-9);
        assert_eq!(eps, Some(0.0));
        let (bits, eps) = measure(&Dist::Point(2), 2, 1, 4);
        assert_eq!(bits, 0.0);
        assert_eq!(eps, None);
        let skewed = Dist::Dense(vec![0.5, 0.25, 0.25, 0.0, 0.0].into());
        let (bits, eps) = measure(&skewed, 0, 1, 4);
        assert!((bits - 1.5).abs() < 1e-9);
        assert!((eps.unwrap() - 2f64.ln()).abs() < 1e-9);
    }
}
