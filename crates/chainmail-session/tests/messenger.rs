//! Messenger cores talking through a simulated network: a DHT, stamps
//! minted in place, and a wire that loses, duplicates and reorders
//! fragments (lost ones are sent again later, as the mixnet client does).
//! Deterministic by seed; no sockets, no clock.

use std::collections::HashMap;
use std::time::Duration;

use chainmail_mixnet::Time;
use chainmail_mixnet::message::ClientAddress;
use chainmail_packet::{MailboxId, NodeId};
use chainmail_session::messenger::MAX_COMMUNITY;
use chainmail_session::{
    Account, Action, Address, ContactRecord, ContactState, MessageState, Messenger,
    MessengerConfig, MessengerEvent, MessengerState, SessionError, Stamp,
};
use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const START: Time = Time(1_800_000_000_000);
const NETWORK: [u8; 32] = [42; 32];

struct User {
    messenger: Messenger,
    seal: [u8; 32],
    events: Vec<MessengerEvent>,
}

struct InFlight {
    at: Time,
    to: usize,
    from: usize,
    body: Vec<u8>,
    mixnet_id: [u8; 16],
    /// Lost once and waiting in the sender's mixnet client to be sent again.
    retry: bool,
    /// Sent with a SURB: acknowledged, and sent again when lost.
    acknowledged: bool,
}

struct World {
    now: Time,
    rng: StdRng,
    users: Vec<User>,
    dht: HashMap<[u8; 32], Vec<u8>>,
    wire: Vec<InFlight>,
    loss: f64,
    duplicate: f64,
    delivered_fragments: u64,
    lost_fragments: u64,
    /// Users whose node is off: what is sent to them waits in their
    /// mailboxes.
    offline: Vec<bool>,
    /// What each user stored, written the way a driver does: the core
    /// whenever the state changed, and the record of each contact the
    /// messenger says changed. A restart starts from this, so a change the
    /// messenger forgot to report is lost and shows up in the tests.
    stored: Vec<Stored>,
}

#[derive(Default)]
struct Stored {
    core: Option<serde_json::Value>,
    contacts: std::collections::BTreeMap<Address, serde_json::Value>,
}

fn config(difficulty: u8) -> MessengerConfig {
    let mut c = MessengerConfig::new(NETWORK);
    c.stamp_difficulty = difficulty;
    c.reorder_timeout = Duration::from_secs(600);
    c
}

/// Something a user was shown from a contact.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Shown {
    Text(String),
    Community(Vec<u8>),
}

impl World {
    fn new(seed: u64, loss: f64, duplicate: f64) -> Self {
        World {
            now: START,
            rng: StdRng::seed_from_u64(seed),
            users: Vec::new(),
            dht: HashMap::new(),
            wire: Vec::new(),
            loss,
            duplicate,
            delivered_fragments: 0,
            lost_fragments: 0,
            offline: Vec::new(),
            stored: Vec::new(),
        }
    }

    fn add_user(&mut self, name: &str, difficulty: u8) -> usize {
        let account = Account::generate(&mut self.rng);
        self.add_user_with(name, account, config(difficulty))
    }

    fn add_user_with(&mut self, name: &str, account: Account, config: MessengerConfig) -> usize {
        let mut messenger = Messenger::new(config, account, name, self.rng.random());
        let seal: [u8; 32] = self.rng.random();
        messenger.set_mixnet_address(ClientAddress {
            seal_key: seal,
            mailboxes: vec![
                (NodeId(self.rng.random()), MailboxId(self.rng.random())),
                (NodeId(self.rng.random()), MailboxId(self.rng.random())),
            ],
        });
        self.users.push(User {
            messenger,
            seal,
            events: Vec::new(),
        });
        self.offline.push(false);
        self.stored.push(Stored::default());
        self.persist(self.users.len() - 1);
        self.users.len() - 1
    }

    fn address(&self, u: usize) -> Address {
        self.users[u].messenger.address()
    }

    fn user_by_seal(&self, seal: &[u8; 32]) -> Option<usize> {
        self.users.iter().position(|u| &u.seal == seal)
    }

    /// Carries out every action of every user, repeatedly, until none is
    /// left.
    fn drain(&mut self) {
        loop {
            let mut any = false;
            for u in 0..self.users.len() {
                self.users[u].messenger.handle_timeout(self.now);
                while let Some(action) = self.users[u].messenger.poll_action() {
                    any = true;
                    self.act(u, action);
                }
                while let Some(e) = self.users[u].messenger.poll_event() {
                    self.users[u].events.push(e);
                }
                self.persist(u);
            }
            if !any {
                return;
            }
        }
    }

    fn act(&mut self, u: usize, action: Action) {
        let m = &mut self.users[u].messenger;
        match action {
            Action::Publish { key, value, .. } => {
                self.dht.insert(key, value);
            }
            Action::Lookup { address, keys } => {
                for (period, key) in keys {
                    if let Some(v) = self.dht.get(&key) {
                        m.handle_descriptor(self.now, address, period, v);
                    }
                }
                m.handle_lookup_done(self.now, address);
            }
            Action::MintStamp {
                job,
                challenge,
                day,
                difficulty,
            } => {
                let stamp = Stamp::mint(&challenge, day, difficulty, |_| true).unwrap();
                m.handle_stamp(job, stamp);
            }
            Action::Transmit {
                tag,
                to,
                body,
                acknowledged,
            } => {
                let mixnet_id: [u8; 16] = self.rng.random();
                if acknowledged {
                    m.handle_transmitted(tag, mixnet_id);
                }
                let Some(to) = self.user_by_seal(&to.seal_key) else {
                    return;
                };
                let delay = self.rng.random_range(50..3000);
                self.wire.push(InFlight {
                    at: self.now + Duration::from_millis(delay),
                    to,
                    from: u,
                    body,
                    mixnet_id,
                    retry: false,
                    acknowledged,
                });
            }
        }
    }

    /// Runs the wire for `d`, 100 ms at a time.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now = self.now + Duration::from_millis(100);
            let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.wire)
                .into_iter()
                .partition(|f| f.at <= self.now);
            self.wire = rest;
            for f in due {
                if self.offline[f.to] {
                    // Waits in the mailbox; nobody fetches, nobody
                    // acknowledges.
                    self.wire.push(InFlight {
                        at: self.now + Duration::from_secs(1),
                        ..f
                    });
                    continue;
                }
                if self.rng.random_bool(self.loss) {
                    // Lost: the sender's mixnet client sends it again after
                    // its acknowledgement timeout (unacknowledged ones are
                    // gone).
                    self.lost_fragments += 1;
                    if !f.acknowledged {
                        continue;
                    }
                    self.wire.push(InFlight {
                        at: self.now + Duration::from_secs(10),
                        retry: true,
                        ..f
                    });
                    continue;
                }
                self.delivered_fragments += 1;
                self.users[f.to]
                    .messenger
                    .handle_received(self.now, &f.body);
                if self.rng.random_bool(self.duplicate) {
                    self.users[f.to]
                        .messenger
                        .handle_received(self.now, &f.body);
                }
                if f.acknowledged {
                    self.users[f.from]
                        .messenger
                        .handle_mixnet_delivered(&f.mixnet_id);
                }
            }
            self.drain();
        }
    }

    /// Runs until nothing is on the wire and every message sent has
    /// reached an end state (delivered or failed).
    fn run_until_quiet(&mut self) {
        self.drain();
        for _ in 0..1800 {
            if self.wire.is_empty() && self.open_messages() == 0 {
                return;
            }
            self.run(Duration::from_secs(1));
        }
        panic!("the wire never went quiet");
    }

    fn open_messages(&self) -> usize {
        (0..self.users.len())
            .map(|u| {
                self.states(u)
                    .values()
                    .filter(|s| !matches!(s, MessageState::Delivered | MessageState::Failed))
                    .count()
            })
            .sum()
    }

    fn texts(&self, u: usize, from: usize) -> Vec<String> {
        let from = self.address(from);
        self.users[u]
            .events
            .iter()
            .filter_map(|e| match e {
                MessengerEvent::Message { from: f, text, .. } if *f == from => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    /// What `u` was shown from `from`, texts and community payloads, in
    /// the order shown.
    fn conversation(&self, u: usize, from: usize) -> Vec<Shown> {
        let from = self.address(from);
        self.users[u]
            .events
            .iter()
            .filter_map(|e| match e {
                MessengerEvent::Message { from: f, text, .. } if *f == from => {
                    Some(Shown::Text(text.clone()))
                }
                MessengerEvent::Community { from: f, body, .. } if *f == from => {
                    Some(Shown::Community(body.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// The (id, position) of everything `u` was shown from `from`.
    fn shown_ids(&self, u: usize, from: usize) -> Vec<([u8; 16], u64)> {
        let from = self.address(from);
        self.users[u]
            .events
            .iter()
            .filter_map(|e| match e {
                MessengerEvent::Message {
                    from: f, id, seq, ..
                }
                | MessengerEvent::Community {
                    from: f, id, seq, ..
                } if *f == from => Some((*id, *seq)),
                _ => None,
            })
            .collect()
    }

    fn states(&self, u: usize) -> HashMap<[u8; 16], MessageState> {
        let mut out = HashMap::new();
        for e in &self.users[u].events {
            if let MessengerEvent::MessageState { id, state, .. } = e {
                out.insert(*id, *state);
            }
        }
        out
    }

    /// Restarts user `u` from its stored state. What its mixnet client
    /// held (lost packets waiting to be sent again) is gone with it.
    /// Stores what changed of user `u`'s state, as a driver does.
    fn persist(&mut self, u: usize) {
        let m = &mut self.users[u].messenger;
        if m.take_dirty() {
            self.stored[u].core = Some(serde_json::to_value(m.core_state()).unwrap());
        }
        for address in m.take_touched() {
            let record = m.contact_record(&address).unwrap();
            self.stored[u]
                .contacts
                .insert(address, serde_json::to_value(record).unwrap());
        }
    }

    fn restart(&mut self, u: usize, difficulty: u8) {
        self.restart_with(u, difficulty, |_| {});
    }

    /// [`World::restart`], with the stored state (as JSON) changed by
    /// `edit` first.
    fn restart_with(
        &mut self,
        u: usize,
        difficulty: u8,
        edit: impl FnOnce(&mut serde_json::Value),
    ) {
        self.wire.retain(|f| !(f.from == u && f.retry));
        self.persist(u);
        let stored = &self.stored[u];
        let core: MessengerState =
            serde_json::from_value(stored.core.clone().expect("a stored core")).unwrap();
        let records: Vec<ContactRecord> = stored
            .contacts
            .values()
            .map(|v| serde_json::from_value(v.clone()).unwrap())
            .collect();
        let whole = MessengerState::from_parts(core, records);
        let mut json = serde_json::to_value(whole).unwrap();
        edit(&mut json);
        let state: MessengerState = serde_json::from_value(json).unwrap();
        let mixnet_seal = self.users[u].seal;
        let mut m = Messenger::from_state(config(difficulty), state, self.rng.random()).unwrap();
        // The driver sets the mixnet address again at start.
        m.set_mixnet_address(ClientAddress {
            seal_key: mixnet_seal,
            mailboxes: vec![
                (NodeId([1; 32]), MailboxId([1; 32])),
                (NodeId([2; 32]), MailboxId([2; 32])),
            ],
        });
        self.users[u].messenger = m;
    }

    /// Alice (0) asks bob (1); bob accepts.
    fn connect(&mut self, a: usize, b: usize, text: Option<&str>) {
        self.drain();
        let bob = self.address(b);
        let name = format!("user{b}");
        self.users[a]
            .messenger
            .add_contact(self.now, bob, &name, text)
            .unwrap();
        self.run_until_quiet();
        let alice = self.address(a);
        assert!(
            self.users[b].events.iter().any(|e| matches!(
                e,
                MessengerEvent::ContactRequest { from, .. } if *from == alice
            )),
            "the request arrived"
        );
        self.users[b].messenger.accept(self.now, &alice).unwrap();
        self.run_until_quiet();
        assert_eq!(
            self.users[a].messenger.contact(&bob).unwrap().state,
            ContactState::Accepted
        );
    }
}

#[test]
fn request_accept_and_a_conversation_through_loss_duplication_and_reordering() {
    let mut w = World::new(1, 0.1, 0.05);
    let (alice, bob) = (w.add_user("alice", 8), w.add_user("bob", 8));
    w.connect(alice, bob, Some("hi, it's alice from the conference"));
    let request_text = w.users[bob]
        .messenger
        .contact(&w.address(alice))
        .unwrap()
        .request_text
        .clone();
    assert_eq!(
        request_text.as_deref(),
        Some("hi, it's alice from the conference")
    );
    let long: String = (0..2500)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let (a_addr, b_addr) = (w.address(alice), w.address(bob));
    let mut expect_bob = Vec::new();
    let mut expect_alice = Vec::new();
    for k in 0..50 {
        let t = if k == 25 {
            long.clone()
        } else {
            format!("a{k}")
        };
        w.users[alice]
            .messenger
            .send_text(w.now, &b_addr, &t)
            .unwrap();
        expect_bob.push(t);
        let t = format!("b{k}");
        w.users[bob]
            .messenger
            .send_text(w.now, &a_addr, &t)
            .unwrap();
        expect_alice.push(t);
        w.drain();
        w.run(Duration::from_millis(700));
    }
    w.run_until_quiet();
    eprintln!(
        "alice {:?}\nbob {:?}",
        w.users[alice].messenger.stats(),
        w.users[bob].messenger.stats()
    );
    assert!(w.lost_fragments > 10, "the wire lost fragments");
    assert_eq!(w.texts(bob, alice), expect_bob, "exactly once, in order");
    assert_eq!(w.texts(alice, bob), expect_alice, "exactly once, in order");
    for u in [alice, bob] {
        let states = w.states(u);
        assert!(states.len() >= 50);
        assert!(
            states.values().all(|s| *s == MessageState::Delivered),
            "{states:?}"
        );
        // Copies and losses were repaired without anything being refused.
        let stats = w.users[u].messenger.stats();
        assert_eq!(
            (
                stats.malformed,
                stats.rejected_binding,
                stats.hidden,
                stats.gaps_skipped
            ),
            (0, 0, 0, 0),
            "{stats:?}"
        );
    }
    // The two sides compute the same safety number.
    let a = w.users[alice].messenger.safety_number(&b_addr).unwrap();
    let b = w.users[bob].messenger.safety_number(&a_addr).unwrap();
    assert_eq!(a, b);
}

#[test]
fn a_denied_request_tells_the_sender_and_nothing_gets_through() {
    let mut w = World::new(2, 0.0, 0.0);
    let (alice, bob) = (w.add_user("alice", 8), w.add_user("bob", 8));
    w.drain();
    let (a_addr, b_addr) = (w.address(alice), w.address(bob));
    w.users[alice]
        .messenger
        .add_contact(w.now, b_addr, "bob", Some("buy my stuff"))
        .unwrap();
    w.run_until_quiet();
    w.users[bob].messenger.deny(w.now, &a_addr).unwrap();
    w.run_until_quiet();
    assert!(
        w.users[alice]
            .events
            .contains(&MessengerEvent::ContactDenied { contact: b_addr })
    );
    assert_eq!(
        w.users[alice].messenger.contact(&b_addr).unwrap().state,
        ContactState::DeniedByThem
    );
    let err = w.users[alice]
        .messenger
        .send_text(w.now, &b_addr, "please")
        .unwrap_err();
    assert!(err.to_string().contains("not accepted"), "{err}");
}

#[test]
fn an_ignored_request_tells_nobody() {
    let mut w = World::new(3, 0.0, 0.0);
    let (alice, bob) = (w.add_user("alice", 8), w.add_user("bob", 8));
    w.drain();
    let (a_addr, b_addr) = (w.address(alice), w.address(bob));
    w.users[alice]
        .messenger
        .add_contact(w.now, b_addr, "bob", None)
        .unwrap();
    w.run_until_quiet();
    w.users[bob].messenger.ignore(&a_addr).unwrap();
    w.run_until_quiet();
    assert_eq!(
        w.users[alice].messenger.contact(&b_addr).unwrap().state,
        ContactState::RequestSent
    );
    assert!(!w.users[alice].events.iter().any(|e| matches!(
        e,
        MessengerEvent::ContactDenied { .. } | MessengerEvent::ContactAccepted { .. }
    )));
}

#[test]
fn twenty_strangers_who_read_the_same_descriptor_are_all_heard() {
    // Every stranger looks bob up before any request reaches him, so all of
    // them start from the same descriptor: no first message may depend on
    // a key that another one used up.
    let mut w = World::new(14, 0.0, 0.0);
    let bob = w.add_user("bob", 4);
    let strangers: Vec<usize> = (0..20)
        .map(|i| w.add_user(&format!("stranger{i}"), 4))
        .collect();
    w.drain();
    let b_addr = w.address(bob);
    for &s in &strangers {
        w.users[s]
            .messenger
            .add_contact(w.now, b_addr, "bob", Some("hello"))
            .unwrap();
    }
    w.run_until_quiet();
    let requests = w.users[bob]
        .events
        .iter()
        .filter(|e| matches!(e, MessengerEvent::ContactRequest { .. }))
        .count();
    assert_eq!(requests, strangers.len());
    assert_eq!(w.users[bob].messenger.stats().undecryptable, 0);
    for &s in &strangers {
        let addr = w.address(s);
        w.users[bob].messenger.accept(w.now, &addr).unwrap();
    }
    w.run_until_quiet();
    for &s in &strangers {
        assert_eq!(
            w.users[s].messenger.contact(&b_addr).unwrap().state,
            ContactState::Accepted
        );
    }
}

#[test]
fn long_messages_get_through_a_flood_of_fragments_that_never_finish() {
    // A stranger who knows bob's mixnet address sends him first fragments
    // of messages it never completes, 150 a second, while alice sends long
    // texts. Fragments arrive before anything says who sent them, so they
    // share one reassembler; the flood may take every slot, but not
    // between two fragments of alice's messages.
    let mut w = World::new(21, 0.0, 0.0);
    let (alice, bob) = (w.add_user("alice", 8), w.add_user("bob", 8));
    w.connect(alice, bob, None);
    let b_addr = w.address(bob);
    let mut flood = 0u32;
    let mut sent = Vec::new();
    for k in 0..6u8 {
        let text: String = std::iter::repeat_n(char::from(b'a' + k), 12_000).collect();
        w.users[alice]
            .messenger
            .send_text(w.now, &b_addr, &text)
            .unwrap();
        sent.push(text);
        for _ in 0..50 {
            for _ in 0..15 {
                flood += 1;
                let mut id = [0xee; 16];
                id[..4].copy_from_slice(&flood.to_le_bytes());
                let first = chainmail_session::fragment(id, &[0; 6000], 1500)
                    .unwrap()
                    .remove(0);
                w.users[bob]
                    .messenger
                    .handle_received(w.now, &first.encode().unwrap());
            }
            w.drain();
            w.run(Duration::from_millis(100));
        }
    }
    // Within the flood, without waiting for a resend (45 s).
    let got = w.texts(bob, alice);
    assert!(
        got == sent,
        "{} of {} long texts arrived during the flood",
        got.len(),
        sent.len()
    );
    assert_eq!(flood, 4500);
    let stats = w.users[bob].messenger.stats();
    assert!(
        stats.malformed == 0 && stats.undecryptable == 0,
        "{stats:?}"
    );
    // The flood's partial messages were evicted, and counted.
    eprintln!(
        "flood: {flood} unfinished messages, {} evicted; {} of {} long texts shown during it",
        stats.partial_messages_evicted,
        got.len(),
        sent.len()
    );
    assert!(stats.partial_messages_evicted >= 4500 - 256, "{stats:?}");
}

#[test]
fn requests_under_one_name_get_distinct_names_from_their_addresses() {
    let mut w = World::new(15, 0.0, 0.0);
    let bob = w.add_user("bob", 4);
    let namesakes: Vec<usize> = (0..12).map(|_| w.add_user("alice", 4)).collect();
    w.drain();
    let b_addr = w.address(bob);
    for &s in &namesakes {
        w.users[s]
            .messenger
            .add_contact(w.now, b_addr, "bob", None)
            .unwrap();
    }
    w.run_until_quiet();
    let mut names: Vec<String> = w.users[bob]
        .messenger
        .contacts()
        .map(|c| c.name.clone())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), namesakes.len(), "{names:?}");
    assert!(names.contains(&"alice".to_string()));
    for &s in &namesakes {
        let c = w.users[bob].messenger.contact(&w.address(s)).unwrap();
        assert!(
            c.name == "alice" || c.name == format!("alice-{}", w.address(s).short()),
            "{}",
            c.name
        );
    }
}

#[test]
fn a_strangers_request_without_enough_work_is_rejected() {
    let mut w = World::new(4, 0.0, 0.0);
    // Mallory's client mints no stamps; bob asks for 12 bits.
    let mallory = w.add_user("mallory", 0);
    let bob = w.add_user("bob", 12);
    w.drain();
    let b_addr = w.address(bob);
    w.users[mallory]
        .messenger
        .add_contact(w.now, b_addr, "bob", Some("spam"))
        .unwrap();
    w.run_until_quiet();
    assert_eq!(w.users[bob].messenger.stats().rejected_stamp, 1);
    assert!(
        !w.users[bob]
            .events
            .iter()
            .any(|e| matches!(e, MessengerEvent::ContactRequest { .. }))
    );
    assert!(w.users[bob].messenger.contacts().next().is_none());
}

#[test]
fn a_contact_on_a_new_device_is_a_loud_key_change() {
    let mut w = World::new(5, 0.0, 0.0);
    let (alice, bob) = (w.add_user("alice", 8), w.add_user("bob", 8));
    w.connect(alice, bob, None);
    let (a_addr, b_addr) = (w.address(alice), w.address(bob));
    w.users[alice]
        .messenger
        .set_verified(&b_addr, true)
        .unwrap();
    let before = w.users[alice].messenger.safety_number(&b_addr).unwrap();
    // Bob moves his identity to a new device: same address, new Olm keys,
    // no sessions. He asks alice again.
    let seed = w.users[bob].messenger.account().identity_seed();
    let new_bob = w.add_user_with(
        "bob",
        Account::new(SigningKey::from_bytes(&seed)),
        config(8),
    );
    assert_eq!(w.address(new_bob), b_addr);
    w.users[bob].seal = [0; 32]; // the old device is gone
    w.drain();
    w.users[new_bob]
        .messenger
        .add_contact(w.now, a_addr, "alice", None)
        .unwrap();
    w.run_until_quiet();
    assert!(
        w.users[alice]
            .events
            .contains(&MessengerEvent::KeyChanged { contact: b_addr })
    );
    let c = w.users[alice].messenger.contact(&b_addr).unwrap();
    assert!(c.key_changed && !c.verified, "verification is withdrawn");
    assert_ne!(
        w.users[alice].messenger.safety_number(&b_addr).unwrap(),
        before
    );
    // Known contact: the new device is accepted and the talk goes on.
    assert_eq!(
        w.users[new_bob].messenger.contact(&a_addr).unwrap().state,
        ContactState::Accepted
    );
    w.users[new_bob]
        .messenger
        .send_text(w.now, &a_addr, "new phone")
        .unwrap();
    w.users[alice]
        .messenger
        .send_text(w.now, &b_addr, "welcome back")
        .unwrap();
    w.run_until_quiet();
    assert_eq!(w.texts(alice, new_bob), ["new phone"]);
    assert_eq!(w.texts(new_bob, alice), ["welcome back"]);
}

#[test]
fn sessions_and_contacts_survive_a_restart_mid_conversation() {
    let mut w = World::new(6, 0.05, 0.0);
    let (alice, bob) = (w.add_user("alice", 8), w.add_user("bob", 8));
    w.connect(alice, bob, None);
    let (a_addr, b_addr) = (w.address(alice), w.address(bob));
    for k in 0..5 {
        w.users[alice]
            .messenger
            .send_text(w.now, &b_addr, &format!("x{k}"))
            .unwrap();
    }
    w.run(Duration::from_millis(500));
    // Both restart with fragments in flight.
    w.restart(alice, 8);
    w.restart(bob, 8);
    for k in 5..10 {
        w.users[alice]
            .messenger
            .send_text(w.now, &b_addr, &format!("x{k}"))
            .unwrap();
        w.users[bob]
            .messenger
            .send_text(w.now, &a_addr, &format!("y{k}"))
            .unwrap();
    }
    w.run_until_quiet();
    let expected: Vec<String> = (0..10).map(|k| format!("x{k}")).collect();
    assert_eq!(w.texts(bob, alice), expected);
    let expected: Vec<String> = (5..10).map(|k| format!("y{k}")).collect();
    assert_eq!(w.texts(alice, bob), expected);
}

#[test]
fn two_people_adding_each_other_at_once_end_up_talking() {
    let mut w = World::new(7, 0.0, 0.0);
    let (alice, bob) = (w.add_user("alice", 8), w.add_user("bob", 8));
    w.drain();
    let (a_addr, b_addr) = (w.address(alice), w.address(bob));
    w.users[alice]
        .messenger
        .add_contact(w.now, b_addr, "bob", None)
        .unwrap();
    w.users[bob]
        .messenger
        .add_contact(w.now, a_addr, "alice", None)
        .unwrap();
    w.run_until_quiet();
    for (u, other) in [(alice, b_addr), (bob, a_addr)] {
        assert_eq!(
            w.users[u].messenger.contact(&other).unwrap().state,
            ContactState::Accepted
        );
    }
    w.users[alice]
        .messenger
        .send_text(w.now, &b_addr, "hello")
        .unwrap();
    w.users[bob]
        .messenger
        .send_text(w.now, &a_addr, "hi")
        .unwrap();
    w.run_until_quiet();
    assert_eq!(w.texts(bob, alice), ["hello"]);
    assert_eq!(w.texts(alice, bob), ["hi"]);
}

#[test]
fn the_api_refuses_what_makes_no_sense() {
    let mut w = World::new(8, 0.0, 0.0);
    let (alice, bob) = (w.add_user("alice", 8), w.add_user("bob", 8));
    w.drain();
    let (a_addr, b_addr) = (w.address(alice), w.address(bob));
    let m = &mut w.users[alice].messenger;
    assert!(m.add_contact(START, a_addr, "me", None).is_err(), "self");
    assert!(m.send_text(START, &b_addr, "x").is_err(), "not a contact");
    m.add_contact(START, b_addr, "bob", None).unwrap();
    assert!(m.add_contact(START, b_addr, "bob2", None).is_err(), "twice");
    assert!(
        m.send_text(START, &b_addr, "x").is_err(),
        "not accepted yet"
    );
    assert!(m.accept(START, &b_addr).is_err(), "no request from bob");
    assert!(m.set_verified(&b_addr, true).is_err(), "keys unknown");
    let _ = bob;
}

/// The sender restarts before its mixnet client sent anything: the
/// messages are not lost, the restarted messenger hands them out again.
#[test]
fn messages_queued_in_the_mixnet_client_survive_a_restart() {
    let mut w = World::new(9, 0.0, 0.0);
    let (alice, bob) = (w.add_user("alice", 8), w.add_user("bob", 8));
    w.connect(alice, bob, None);
    let b_addr = w.address(bob);
    let mut ids = Vec::new();
    for k in 0..5 {
        ids.push(
            w.users[alice]
                .messenger
                .send_text(w.now, &b_addr, &format!("m{k}"))
                .unwrap(),
        );
    }
    // The Transmit actions were never carried out: the node died first.
    while w.users[alice].messenger.poll_action().is_some() {}
    w.restart(alice, 8);
    w.run_until_quiet();
    let expected: Vec<String> = (0..5).map(|k| format!("m{k}")).collect();
    assert_eq!(w.texts(bob, alice), expected);
    for id in ids {
        assert_eq!(w.states(alice).get(&id), Some(&MessageState::Delivered));
    }
}

#[test]
fn an_advisory_warns_about_contacts_on_unsafe_versions() {
    use chainmail_session::AdvisoryBody;
    let mut w = World::new(10, 0.0, 0.0);
    let alice = w.add_user("alice", 8);
    let mut old = config(8);
    old.client_version = "chainmail 0.0.9".into();
    let bob = {
        let account = Account::generate(&mut w.rng);
        w.add_user_with("bob", account, old)
    };
    w.connect(alice, bob, None);
    let b_addr = w.address(bob);
    let key = SigningKey::from_bytes(&[3; 32]);
    let advisory = |sequence, versions: &[&str]| {
        AdvisoryBody {
            network: NETWORK,
            sequence,
            issued: START,
            unsafe_versions: versions.iter().map(|v| v.to_string()).collect(),
        }
        .sign(&key)
        .unwrap()
    };
    let warnings = |w: &World| {
        w.users[alice]
            .events
            .iter()
            .filter(|e| matches!(e, MessengerEvent::UnsafeVersion { .. }))
            .count()
    };
    w.users[alice]
        .messenger
        .set_advisory(advisory(1, &["chainmail 0.0.8"]));
    w.drain();
    assert_eq!(warnings(&w), 0, "bob's version is not listed");
    w.users[alice]
        .messenger
        .set_advisory(advisory(2, &["chainmail 0.0.8", "chainmail 0.0.9"]));
    w.drain();
    assert_eq!(warnings(&w), 1);
    assert!(
        w.users[alice]
            .events
            .contains(&MessengerEvent::UnsafeVersion {
                contact: b_addr,
                version: "chainmail 0.0.9".into()
            })
    );
    let c = w.users[alice].messenger.contact(&b_addr).unwrap().clone();
    assert!(w.users[alice].messenger.runs_unsafe_version(&c));
    // An older advisory does not replace a newer one; the warning is not
    // repeated.
    w.users[alice].messenger.set_advisory(advisory(1, &[]));
    w.users[alice]
        .messenger
        .set_advisory(advisory(2, &["chainmail 0.0.9"]));
    w.drain();
    assert_eq!(warnings(&w), 1);
}

/// Bob is offline for three hours. Alice's mixnet client gives up on her
/// messages after its retransmissions (about ten minutes); her messages are
/// not failed for that: they wait in bob's mailboxes, are sent again
/// (encrypted anew) an hour later, and when bob comes back he shows each
/// once, in order, and his receipts make them delivered.
#[test]
fn a_recipient_offline_for_hours_gets_everything_and_the_sender_learns_it() {
    let mut w = World::new(11, 0.0, 0.0);
    let (alice, bob) = (w.add_user("alice", 8), w.add_user("bob", 8));
    w.connect(alice, bob, None);
    let b_addr = w.address(bob);
    w.offline[bob] = true;
    let mut ids = Vec::new();
    for k in 0..5 {
        ids.push(
            w.users[alice]
                .messenger
                .send_text(w.now, &b_addr, &format!("while away {k}"))
                .unwrap(),
        );
    }
    w.run(Duration::from_secs(15 * 60));
    // The mixnet client gives up on every fragment not acknowledged.
    let pending: Vec<[u8; 16]> = w
        .wire
        .iter()
        .filter(|f| f.from == alice && f.acknowledged)
        .map(|f| f.mixnet_id)
        .collect();
    assert!(!pending.is_empty());
    for id in &pending {
        w.users[alice].messenger.handle_mixnet_failed(id);
    }
    w.run(Duration::from_secs(3 * 3600));
    let states = w.states(alice);
    for id in &ids {
        assert_ne!(
            states.get(id),
            Some(&MessageState::Failed),
            "not failed while bob is away"
        );
        assert_ne!(states.get(id), Some(&MessageState::Delivered));
    }
    assert!(
        w.users[alice].messenger.stats().resent >= 5,
        "sent again after an hour"
    );
    // Bob comes back.
    w.offline[bob] = false;
    w.run_until_quiet();
    let expected: Vec<String> = (0..5).map(|k| format!("while away {k}")).collect();
    assert_eq!(w.texts(bob, alice), expected, "each once, in order");
    let states = w.states(alice);
    for id in &ids {
        assert_eq!(states.get(id), Some(&MessageState::Delivered));
    }
}

/// Community payloads share the conversation with texts: through a wire
/// that loses, duplicates and reorders fragments, each is shown once, in
/// the order sent among the texts, with the id the sender got, and each is
/// confirmed.
#[test]
fn community_payloads_arrive_in_order_exactly_once_among_texts() {
    let mut w = World::new(12, 0.1, 0.05);
    let (alice, bob) = (w.add_user("alice", 8), w.add_user("bob", 8));
    w.connect(alice, bob, None);
    let (a_addr, b_addr) = (w.address(alice), w.address(bob));
    // Not text: every byte value, an empty payload, and the largest one
    // (many fragments).
    let payload = |k: usize| -> Vec<u8> {
        match k {
            6 => Vec::new(),
            15 => (0..MAX_COMMUNITY).map(|i| (i * 7 + k) as u8).collect(),
            _ => (0..=255u8).map(|b| b ^ k as u8).collect(),
        }
    };
    let (mut expect_bob, mut expect_alice) = (Vec::new(), Vec::new());
    let (mut ids_alice, mut ids_bob) = (Vec::new(), Vec::new());
    for k in 0..50 {
        let id = if k % 3 == 0 {
            let t = format!("a{k}");
            expect_bob.push(Shown::Text(t.clone()));
            w.users[alice].messenger.send_text(w.now, &b_addr, &t)
        } else {
            expect_bob.push(Shown::Community(payload(k)));
            w.users[alice]
                .messenger
                .send_community(w.now, &b_addr, payload(k))
        };
        ids_alice.push(id.unwrap());
        let id = if k % 2 == 0 {
            expect_alice.push(Shown::Community(payload(k + 100)));
            w.users[bob]
                .messenger
                .send_community(w.now, &a_addr, payload(k + 100))
        } else {
            let t = format!("b{k}");
            expect_alice.push(Shown::Text(t.clone()));
            w.users[bob].messenger.send_text(w.now, &a_addr, &t)
        };
        ids_bob.push(id.unwrap());
        w.drain();
        w.run(Duration::from_millis(700));
    }
    w.run_until_quiet();
    assert!(w.lost_fragments > 10, "the wire lost fragments");
    assert_eq!(
        w.conversation(bob, alice),
        expect_bob,
        "exactly once, in order"
    );
    assert_eq!(
        w.conversation(alice, bob),
        expect_alice,
        "exactly once, in order"
    );
    for (u, from, ids) in [(bob, alice, &ids_alice), (alice, bob, &ids_bob)] {
        let shown = w.shown_ids(u, from);
        let shown_ids: Vec<[u8; 16]> = shown.iter().map(|(id, _)| *id).collect();
        assert_eq!(&shown_ids, ids, "the ids the sender got");
        // One numbering for texts and community payloads, without gaps.
        assert!(shown.windows(2).all(|p| p[1].1 == p[0].1 + 1), "{shown:?}");
    }
    for (u, ids) in [(alice, &ids_alice), (bob, &ids_bob)] {
        let states = w.states(u);
        for id in ids {
            assert_eq!(states.get(id), Some(&MessageState::Delivered));
        }
        let stats = w.users[u].messenger.stats();
        assert_eq!(
            (
                stats.malformed,
                stats.rejected_binding,
                stats.hidden,
                stats.gaps_skipped
            ),
            (0, 0, 0, 0),
            "{stats:?}"
        );
    }
}

#[test]
fn community_payloads_go_only_to_accepted_contacts_and_not_too_large() {
    let mut w = World::new(13, 0.0, 0.0);
    let (alice, bob, carol) = (
        w.add_user("alice", 8),
        w.add_user("bob", 8),
        w.add_user("carol", 8),
    );
    w.drain();
    let (a_addr, b_addr, c_addr) = (w.address(alice), w.address(bob), w.address(carol));
    let refusal = |w: &mut World, u: usize, to: &Address| {
        let err = w.users[u]
            .messenger
            .send_community(w.now, to, vec![1, 2, 3])
            .unwrap_err();
        assert!(matches!(err, SessionError::Invalid(_)), "{err:?}");
        err.to_string()
    };
    assert!(refusal(&mut w, alice, &b_addr).contains("no such contact"));
    w.users[alice]
        .messenger
        .add_contact(w.now, b_addr, "bob", None)
        .unwrap();
    assert!(refusal(&mut w, alice, &b_addr).contains("not accepted your request yet"));
    w.run_until_quiet();
    assert!(refusal(&mut w, bob, &a_addr).contains("accept their request first"));
    w.users[bob].messenger.deny(w.now, &a_addr).unwrap();
    w.run_until_quiet();
    assert!(refusal(&mut w, alice, &b_addr).contains("not accepted"));
    assert!(refusal(&mut w, bob, &a_addr).contains("not accepted"));

    // Accepted: the largest payload goes, one byte more does not.
    w.connect(alice, carol, None);
    let err = w.users[alice]
        .messenger
        .send_community(w.now, &c_addr, vec![0; MAX_COMMUNITY + 1])
        .unwrap_err();
    assert!(
        matches!(
            err,
            SessionError::TooLarge { what: "community payload", actual, max: MAX_COMMUNITY }
                if actual == MAX_COMMUNITY + 1
        ),
        "{err:?}"
    );
    w.users[alice]
        .messenger
        .send_community(w.now, &c_addr, vec![9; MAX_COMMUNITY])
        .unwrap();
    w.run_until_quiet();
    assert_eq!(
        w.conversation(carol, alice),
        [Shown::Community(vec![9; MAX_COMMUNITY])]
    );
    // Nothing refused went anywhere.
    assert!(w.conversation(bob, alice).is_empty());
    assert!(w.conversation(alice, bob).is_empty());
}

/// A receiver that does not (or no longer) count the sender as an accepted
/// contact shows neither texts nor community payloads from them, counts
/// both `hidden`, and confirms both alike: not at all if it denied them (so
/// the sender's copies fail), otherwise yes.
#[test]
fn community_payloads_from_someone_not_accepted_are_hidden_like_texts() {
    for (seed, state, end) in [
        (14, "Ignored", MessageState::Delivered),
        (15, "Denied", MessageState::Failed),
        (16, "RequestReceived", MessageState::Delivered),
    ] {
        let mut w = World::new(seed, 0.0, 0.0);
        let (alice, bob) = (w.add_user("alice", 8), w.add_user("bob", 8));
        w.connect(alice, bob, None);
        let b_addr = w.address(bob);
        // Bob's side no longer accepts alice; hers still does.
        w.restart_with(bob, 8, |json| {
            assert_eq!(json["contacts"].as_array().map(Vec::len), Some(1));
            json["contacts"][0]["state"] = state.into();
        });
        let before = w.users[bob].messenger.stats().hidden;
        let text = w.users[alice]
            .messenger
            .send_text(w.now, &b_addr, "psst")
            .unwrap();
        let payload = w.users[alice]
            .messenger
            .send_community(w.now, &b_addr, vec![7; 300])
            .unwrap();
        w.run_until_quiet();
        assert!(w.conversation(bob, alice).is_empty(), "{state}");
        assert_eq!(w.users[bob].messenger.stats().hidden - before, 2, "{state}");
        let states = w.states(alice);
        assert_eq!(states.get(&text), Some(&end), "{state}");
        assert_eq!(states.get(&payload), Some(&end), "{state}");
    }
}
