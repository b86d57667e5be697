//! A seeded network: per-link latency, jitter, loss and duplication.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::Time;

/// How links behave.
#[derive(Clone, Debug)]
pub struct Links {
    /// Base latency of a link, drawn once per link from this range (ms).
    pub latency_ms: std::ops::Range<u64>,
    /// Extra delay per message, drawn from `0..jitter_ms`: messages on a
    /// link overtake each other.
    pub jitter_ms: u64,
    /// Probability that a message sent with [`Network::send`] is lost.
    pub loss: f64,
    /// Probability that a message is delivered a second time.
    pub duplication: f64,
    /// The copy arrives up to this much later than the original (ms).
    pub duplicate_after_ms: u64,
}

impl Default for Links {
    /// 2–30 ms per link, 10 ms of jitter, nothing lost or duplicated.
    fn default() -> Self {
        Links {
            latency_ms: 2..30,
            jitter_ms: 10,
            loss: 0.0,
            duplication: 0.0,
            duplicate_after_ms: 5000,
        }
    }
}

/// A message arriving.
#[derive(Debug)]
pub struct Delivery<A, M> {
    /// Its sender.
    pub from: A,
    /// Its recipient.
    pub to: A,
    /// The message.
    pub msg: M,
}

/// What the network did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Messages handed to the network.
    pub sent: u64,
    /// Lost on the way.
    pub lost: u64,
    /// Delivered a second time.
    pub duplicated: u64,
    /// Delivered (copies included).
    pub delivered: u64,
}

/// A seeded network between endpoints of type `A` carrying `M`.
pub struct Network<A, M> {
    links: Links,
    rng: StdRng,
    base: HashMap<(A, A), u64>,
    queue: BinaryHeap<Reverse<(Time, u64)>>,
    in_flight: HashMap<u64, Delivery<A, M>>,
    seq: u64,
    stats: NetStats,
}

impl<A: Copy + Eq + Hash, M> Network<A, M> {
    /// A network whose randomness comes from `seed`.
    pub fn new(seed: u64, links: Links) -> Self {
        Network {
            links,
            rng: StdRng::seed_from_u64(seed),
            base: HashMap::new(),
            queue: BinaryHeap::new(),
            in_flight: HashMap::new(),
            seq: 0,
            stats: NetStats::default(),
        }
    }

    /// The link behaviour, to change it during a run (for example to stop
    /// duplicating before the end, so every copy arrives).
    pub fn links_mut(&mut self) -> &mut Links {
        &mut self.links
    }

    /// The network's randomness, for a world that wants more draws from
    /// the same seed.
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// Delay of one message on the link `from → to`: the link's base
    /// latency plus jitter.
    pub fn latency(&mut self, from: A, to: A) -> Duration {
        let range = self.links.latency_ms.clone();
        let rng = &mut self.rng;
        let base = *self
            .base
            .entry((from, to))
            .or_insert_with(|| rng.random_range(range));
        let jitter = if self.links.jitter_ms > 0 {
            self.rng.random_range(0..self.links.jitter_ms)
        } else {
            0
        };
        Duration::from_millis(base + jitter)
    }

    /// Sends over an unreliable link: the message may be lost, and may
    /// arrive twice.
    pub fn send(&mut self, now: Time, from: A, to: A, msg: M)
    where
        M: Clone,
    {
        self.stats.sent += 1;
        if self.links.loss > 0.0 && self.rng.random_bool(self.links.loss) {
            self.stats.lost += 1;
            return;
        }
        if self.links.duplication > 0.0 && self.rng.random_bool(self.links.duplication) {
            self.stats.duplicated += 1;
            let later = self.latency(from, to)
                + Duration::from_millis(self.rng.random_range(0..=self.links.duplicate_after_ms));
            self.schedule(now + later, from, to, msg.clone());
        }
        let delay = self.latency(from, to);
        self.schedule(now + delay, from, to, msg);
    }

    /// Sends over a lossy link that never duplicates.
    pub fn send_lossy(&mut self, now: Time, from: A, to: A, msg: M) {
        self.stats.sent += 1;
        if self.links.loss > 0.0 && self.rng.random_bool(self.links.loss) {
            self.stats.lost += 1;
            return;
        }
        let delay = self.latency(from, to);
        self.schedule(now + delay, from, to, msg);
    }

    /// Sends over a connection's stream: delayed like any message, never
    /// lost or duplicated.
    pub fn send_reliable(&mut self, now: Time, from: A, to: A, msg: M) {
        self.stats.sent += 1;
        let delay = self.latency(from, to);
        self.schedule(now + delay, from, to, msg);
    }

    /// Delivers `msg` at exactly `at` (an injection: a replay, a message
    /// handed to a core a second time).
    pub fn send_at(&mut self, at: Time, from: A, to: A, msg: M) {
        self.stats.sent += 1;
        self.schedule(at, from, to, msg);
    }

    fn schedule(&mut self, at: Time, from: A, to: A, msg: M) {
        let seq = self.seq;
        self.seq += 1;
        self.queue.push(Reverse((at, seq)));
        self.in_flight.insert(seq, Delivery { from, to, msg });
    }

    /// When the next message arrives.
    pub fn next_at(&self) -> Option<Time> {
        self.queue.peek().map(|Reverse((at, _))| *at)
    }

    /// The next message due by `now`, in order of arrival (ties in order
    /// of sending).
    pub fn pop_due(&mut self, now: Time) -> Option<Delivery<A, M>> {
        let Reverse((at, seq)) = *self.queue.peek()?;
        if at > now {
            return None;
        }
        self.queue.pop();
        let delivery = self.in_flight.remove(&seq)?;
        self.stats.delivered += 1;
        Some(delivery)
    }

    /// Drops every message on its way (a partition: what was sent is lost).
    pub fn clear(&mut self) {
        self.stats.lost += self.in_flight.len() as u64;
        self.queue.clear();
        self.in_flight.clear();
    }

    /// Messages on their way.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// What the network did so far.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_in_time_order_and_loses_and_duplicates_as_told() {
        let mut net: Network<u8, u32> = Network::new(
            1,
            Links {
                loss: 0.1,
                duplication: 0.1,
                ..Links::default()
            },
        );
        for i in 0..10_000u32 {
            net.send(Time(0), 0, 1 + (i % 3) as u8, i);
        }
        let mut last = Time(0);
        let mut n = 0u64;
        while let Some(next) = net.next_at() {
            let d = net.pop_due(next).unwrap();
            assert!(next >= last);
            assert!(d.to >= 1 && d.to <= 3);
            last = next;
            n += 1;
        }
        let s = net.stats().clone();
        assert_eq!(n, s.delivered);
        assert_eq!(s.delivered, 10_000 - s.lost + s.duplicated);
        assert!((800..1200).contains(&s.lost), "{s:?}");
        assert!((700..1100).contains(&s.duplicated), "{s:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let run = |seed| {
            let mut net: Network<u8, u32> = Network::new(seed, Links::default());
            for i in 0..100 {
                net.send(Time(0), 0, (i % 5) as u8, i);
            }
            let mut order = Vec::new();
            while let Some(at) = net.next_at() {
                order.push((at, net.pop_due(at).unwrap().msg));
            }
            order
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}
