//! What the account costs to store per message, as the number of contacts
//! grows: the whole messenger state (what was written on every batch
//! before per-contact records) against the core plus the records of the
//! contacts a message touched (what the agent writes now), in one run.
//!
//! Run: `cargo bench -p chainmail-session --bench persistence` (add
//! `-- --quick` for fewer contacts).
//!
//! Alice has N contacts, each with an established Olm session (one
//! message each way). Then she and one contact exchange a text; each
//! batch that changes her state is serialized both ways (JSON, as the
//! agent stores it), and the bytes and time are summed over the exchange.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chainmail_mixnet::Time;
use chainmail_mixnet::message::ClientAddress;
use chainmail_packet::{MailboxId, NodeId};
use chainmail_session::{Account, Action, Messenger, MessengerConfig};
use rand::RngExt;

const NOW: Time = Time(1_800_000_000_000);

struct Net {
    now: Time,
    users: Vec<Messenger>,
    by_seal: HashMap<[u8; 32], usize>,
    dht: HashMap<[u8; 32], Vec<u8>>,
}

impl Net {
    fn add(&mut self, rng: &mut impl rand::CryptoRng, name: &str) -> usize {
        let mut config = MessengerConfig::new([9; 32]);
        config.stamp_difficulty = 0;
        let mut m = Messenger::new(config, Account::generate(rng), name, rng.random());
        let seal: [u8; 32] = rng.random();
        m.set_mixnet_address(ClientAddress {
            seal_key: seal,
            mailboxes: vec![
                (NodeId(rng.random()), MailboxId(rng.random())),
                (NodeId(rng.random()), MailboxId(rng.random())),
            ],
        });
        self.users.push(m);
        self.by_seal.insert(seal, self.users.len() - 1);
        self.users.len() - 1
    }

    /// Carries out the actions of `who` until none is left; after each
    /// round, `persist` sees alice (user 0).
    fn pump(&mut self, who: &[usize], mut persist: impl FnMut(&mut Messenger)) {
        let now = self.now;
        loop {
            let mut any = false;
            for &u in who {
                self.users[u].handle_timeout(now);
                while let Some(action) = self.users[u].poll_action() {
                    any = true;
                    match action {
                        Action::Publish { key, value, .. } => {
                            self.dht.insert(key, value);
                        }
                        Action::Lookup { address, keys } => {
                            for (p, k) in keys {
                                if let Some(v) = self.dht.get(&k).cloned() {
                                    self.users[u].handle_descriptor(now, address, p, &v);
                                }
                            }
                            self.users[u].handle_lookup_done(now, address);
                        }
                        Action::MintStamp { .. } => unreachable!("difficulty 0"),
                        Action::Transmit {
                            tag,
                            to,
                            body,
                            acknowledged,
                        } => {
                            let id = [tag.index as u8; 16];
                            if acknowledged {
                                self.users[u].handle_transmitted(tag, id);
                            }
                            let v = self.by_seal[&to.seal_key];
                            self.users[v].handle_received(now, &body);
                            if acknowledged {
                                self.users[u].handle_mixnet_delivered(&id);
                            }
                        }
                    }
                }
                while self.users[u].poll_event().is_some() {}
            }
            persist(&mut self.users[0]);
            if !any {
                return;
            }
        }
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: &[usize] = if quick { &[10, 100] } else { &[10, 100, 300] };
    let mut rng = rand::rng();
    println!(
        "contacts | whole state per exchange | core + touched records | ratio (bytes) | ratio (time)"
    );
    for &n in sizes {
        let mut net = Net {
            now: NOW,
            users: Vec::new(),
            by_seal: HashMap::new(),
            dht: HashMap::new(),
        };
        let alice = net.add(&mut rng, "alice");
        let everyone: Vec<usize> = (0..=n).collect();
        for k in 0..n {
            let c = net.add(&mut rng, &format!("c{k}"));
            net.pump(&[alice, c], |_| {});
            let address = net.users[c].address();
            net.users[alice]
                .add_contact(net.now, address, &format!("c{k}"), None)
                .unwrap();
            net.pump(&[alice, c], |_| {});
            let a = net.users[alice].address();
            net.users[c].accept(net.now, &a).unwrap();
            net.pump(&[alice, c], |_| {});
            net.users[alice]
                .send_text(net.now, &address, "hello")
                .unwrap();
            net.users[c].send_text(net.now, &a, "hi").unwrap();
            net.pump(&[alice, c], |_| {});
            // Receipts go after a moment; then nothing is in flight.
            net.now = net.now + Duration::from_secs(5);
            net.pump(&[alice, c], |_| {});
        }
        net.pump(&everyone, |m| {
            m.take_dirty();
            m.take_touched();
        });
        // One exchange with one contact, stored both ways after every
        // round that changed alice's state.
        let (mut whole_bytes, mut part_bytes) = (0usize, 0usize);
        let (mut whole_time, mut part_time) = (Duration::ZERO, Duration::ZERO);
        let bob = 1;
        let b = net.users[bob].address();
        let a = net.users[alice].address();
        net.users[alice]
            .send_text(net.now, &b, "how are you?")
            .unwrap();
        net.users[bob].send_text(net.now, &a, "fine").unwrap();
        let mut store = |m: &mut Messenger| {
            if !m.take_dirty() {
                m.take_touched();
                return;
            }
            let start = Instant::now();
            whole_bytes += serde_json::to_vec(&m.state()).unwrap().len();
            whole_time += start.elapsed();
            let start = Instant::now();
            part_bytes += serde_json::to_vec(&m.core_state()).unwrap().len();
            for address in m.take_touched() {
                let record = m.contact_record(&address).unwrap();
                part_bytes += serde_json::to_vec(&record).unwrap().len();
            }
            part_time += start.elapsed();
        };
        net.pump(&[alice, bob], &mut store);
        // The receipts, a moment later.
        net.now = net.now + Duration::from_secs(5);
        net.pump(&[alice, bob], &mut store);
        println!(
            "{n:>8} | {:>9} B, {:>8.2} ms | {:>9} B, {:>6.2} ms | {:>6.3} | {:>6.3}",
            whole_bytes,
            whole_time.as_secs_f64() * 1e3,
            part_bytes,
            part_time.as_secs_f64() * 1e3,
            part_bytes as f64 / whole_bytes as f64,
            part_time.as_secs_f64() / whole_time.as_secs_f64(),
        );
    }
}
