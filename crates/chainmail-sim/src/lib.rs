#![doc = include_str!("../README.md")]

pub mod anonymity;
mod mixnet;
mod network;

pub use chainmail_mixnet::Time;
pub use mixnet::{Endpoint, Mixnet, MixnetConfig, Wire};
pub use network::{Delivery, Links, NetStats, Network};

/// What a simulation runs: its cores and how they are wired to the network.
pub trait World {
    /// Who sends and receives on the network.
    type Addr: Copy + Eq + std::hash::Hash;
    /// What travels on it.
    type Msg;

    /// Drains every core's outputs (into `net`, or to other cores
    /// directly) until none has anything more to say.
    fn pump(&mut self, now: Time, net: &mut Network<Self::Addr, Self::Msg>);

    /// Hands a message that arrived to its core.
    fn deliver(&mut self, now: Time, delivery: Delivery<Self::Addr, Self::Msg>);

    /// When a core next needs time.
    fn next_timeout(&self) -> Option<Time>;

    /// Gives time to every core whose timeout is due.
    fn fire(&mut self, now: Time);
}

/// A world on a network, with the virtual clock.
pub struct Sim<W: World> {
    /// The cores.
    pub world: W,
    /// The network between them.
    pub net: Network<W::Addr, W::Msg>,
    now: Time,
}

impl<W: World> Sim<W> {
    /// A simulation starting at `start`.
    pub fn new(world: W, net: Network<W::Addr, W::Msg>, start: Time) -> Self {
        Sim {
            world,
            net,
            now: start,
        }
    }

    /// The virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Runs every event up to `until`, then sets the clock to `until`.
    pub fn step_to(&mut self, until: Time) {
        loop {
            self.world.pump(self.now, &mut self.net);
            let next = [self.net.next_at(), self.world.next_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next else { break };
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            while let Some(delivery) = self.net.pop_due(self.now) {
                self.world.deliver(self.now, delivery);
            }
            self.world.fire(self.now);
        }
        self.now = self.now.max(until);
    }

    /// Runs the events of the next moment anything happens (a delivery, a
    /// timeout), or moves the clock on by `max_wait` if nothing does
    /// sooner.
    pub fn step(&mut self, max_wait: std::time::Duration) {
        self.world.pump(self.now, &mut self.net);
        let next = [self.net.next_at(), self.world.next_timeout()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.now + max_wait)
            .min(self.now + max_wait);
        self.now = self.now.max(next);
        while let Some(delivery) = self.net.pop_due(self.now) {
            self.world.deliver(self.now, delivery);
        }
        self.world.fire(self.now);
    }

    /// Runs `step` at a time until `done` holds or the clock passes
    /// `limit`; whether `done` held.
    pub fn run_until(
        &mut self,
        limit: Time,
        step: std::time::Duration,
        done: impl Fn(&Self) -> bool,
    ) -> bool {
        while !done(self) {
            if self.now >= limit {
                return false;
            }
            let next = self.now + step;
            self.step_to(next);
        }
        true
    }
}
