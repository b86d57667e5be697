//! Messages through one session of the messenger core, next to the raw Olm
//! encrypt + decrypt they are built on, in one run on one machine.
//!
//! Run: `cargo bench -p chainmail-session --bench session` (add
//! `-- --quick` for a shorter, noisier run).
//!
//! A "message" is the whole core path both ways: `send_text` (envelope,
//! Olm encryption, frame, fragments), the recipient's `handle_received`
//! (reassembly, Olm decryption, ordering, event) and the sender's
//! acknowledgement handling. The baseline is vodozemac alone: encrypt and
//! decrypt of the same text on an established session. Cases are timed in
//! interleaved batches; the median batch of each is reported.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use chainmail_mixnet::Time;
use chainmail_mixnet::message::ClientAddress;
use chainmail_packet::{MailboxId, NodeId};
use chainmail_session::{Account, Action, Address, Messenger, MessengerConfig, MessengerEvent};
use rand::RngExt;
use vodozemac::olm;

const NOW: Time = Time(1_800_000_000_000);

fn messenger(rng: &mut impl rand::CryptoRng, name: &str) -> Messenger {
    let mut config = MessengerConfig::new([9; 32]);
    config.stamp_difficulty = 0;
    let mut m = Messenger::new(config, Account::generate(rng), name, rng.random());
    m.set_mixnet_address(ClientAddress {
        seal_key: [name.len() as u8; 32],
        mailboxes: vec![
            (NodeId(rng.random()), MailboxId(rng.random())),
            (NodeId(rng.random()), MailboxId(rng.random())),
        ],
    });
    m
}

/// Carries out both messengers' actions until none is left; returns how
/// many texts arrived.
fn pump(
    pair: &mut [Messenger; 2],
    dht: &mut HashMap<[u8; 32], Vec<u8>>,
    seals: &[[u8; 32]; 2],
) -> usize {
    let mut texts = 0;
    loop {
        let mut any = false;
        for u in 0..2 {
            pair[u].handle_timeout(NOW);
            while let Some(action) = pair[u].poll_action() {
                any = true;
                match action {
                    Action::Publish { key, value, .. } => {
                        dht.insert(key, value);
                    }
                    Action::Lookup { address, keys } => {
                        for (p, k) in keys {
                            if let Some(v) = dht.get(&k) {
                                pair[u].handle_descriptor(NOW, address, p, v);
                            }
                        }
                        pair[u].handle_lookup_done(NOW, address);
                    }
                    Action::MintStamp { .. } => unreachable!("difficulty 0"),
                    Action::Transmit {
                        tag,
                        to,
                        body,
                        acknowledged,
                    } => {
                        let mixnet_id = [tag.index as u8; 16];
                        if acknowledged {
                            pair[u].handle_transmitted(tag, mixnet_id);
                        }
                        let v = seals.iter().position(|s| *s == to.seal_key).unwrap();
                        pair[v].handle_received(NOW, &body);
                        if acknowledged {
                            pair[u].handle_mixnet_delivered(&mixnet_id);
                        }
                    }
                }
            }
            while let Some(e) = pair[u].poll_event() {
                if matches!(e, MessengerEvent::Message { .. }) {
                    texts += 1;
                }
            }
        }
        if !any {
            return texts;
        }
    }
}

struct Case {
    name: &'static str,
    run: Box<dyn FnMut()>,
    samples: Vec<f64>,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, batch_time) = if quick {
        (7, Duration::from_millis(40))
    } else {
        (25, Duration::from_millis(150))
    };
    let mut rng = rand::rng();
    let mut pair = [messenger(&mut rng, "alice"), messenger(&mut rng, "bob")];
    let seals = [[5u8; 32], [3u8; 32]];
    let mut dht = HashMap::new();
    pump(&mut pair, &mut dht, &seals);
    let (a, b): (Address, Address) = (pair[0].address(), pair[1].address());
    pair[0].add_contact(NOW, b, "bob", None).unwrap();
    pump(&mut pair, &mut dht, &seals);
    pair[1].accept(NOW, &a).unwrap();
    pump(&mut pair, &mut dht, &seals);
    let short = "x".repeat(100);
    let long = "y".repeat(3000);
    // Warm the session up in both directions.
    pair[0].send_text(NOW, &b, &short).unwrap();
    pair[1].send_text(NOW, &a, &short).unwrap();
    assert_eq!(pump(&mut pair, &mut dht, &seals), 2);

    // The baseline: an established vodozemac session, both ways.
    let alice_olm = olm::Account::new();
    let mut bob_olm = olm::Account::new();
    bob_olm.generate_one_time_keys(1);
    let otk = *bob_olm.one_time_keys().values().next().unwrap();
    let mut out = alice_olm
        .create_outbound_session(
            olm::SessionConfig::version_1(),
            bob_olm.curve25519_key(),
            otk,
        )
        .unwrap();
    let olm::OlmMessage::PreKey(first) = out.encrypt(b"hello").unwrap() else {
        unreachable!()
    };
    let mut inbound = bob_olm
        .create_inbound_session(
            olm::SessionConfig::version_1(),
            alice_olm.curve25519_key(),
            &first,
        )
        .unwrap()
        .session;
    let reply = inbound.encrypt(b"hi").unwrap();
    out.decrypt(&reply).unwrap();

    let pair = std::rc::Rc::new(std::cell::RefCell::new((pair, dht)));
    let p1 = pair.clone();
    let s1 = short.clone();
    let p2 = pair.clone();
    let l2 = long.clone();
    let s3 = short.clone();
    let mut cases = vec![
        Case {
            name: "messenger, 100-byte text (1 packet)",
            run: Box::new(move || {
                let (pair, dht) = &mut *p1.borrow_mut();
                pair[0].send_text(NOW, &b, &s1).unwrap();
                assert_eq!(pump(pair, dht, &seals), 1);
            }),
            samples: vec![],
        },
        Case {
            name: "messenger, 3000-byte text (4 packets)",
            run: Box::new(move || {
                let (pair, dht) = &mut *p2.borrow_mut();
                pair[0].send_text(NOW, &b, &l2).unwrap();
                assert_eq!(pump(pair, dht, &seals), 1);
            }),
            samples: vec![],
        },
        Case {
            name: "baseline: vodozemac encrypt+decrypt, 100 bytes",
            run: Box::new(move || {
                let m = out.encrypt(s3.as_bytes()).unwrap();
                black_box(inbound.decrypt(&m).unwrap());
            }),
            samples: vec![],
        },
    ];
    for _ in 0..rounds {
        for case in &mut cases {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < batch_time {
                (case.run)();
                n += 1;
            }
            case.samples.push(start.elapsed().as_secs_f64() / n as f64);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let times: Vec<f64> = cases.iter_mut().map(|c| median(&mut c.samples)).collect();
    println!("one session, core only ({} rounds)", rounds);
    for (case, t) in cases.iter().zip(&times) {
        println!(
            "  {:<48} {:>8.1} µs  {:>9.0} messages/s",
            case.name,
            t * 1e6,
            1.0 / t
        );
    }
    println!(
        "  ratio messenger / vodozemac baseline (100 bytes): {:.2}",
        times[0] / times[2]
    );

    // Proof-of-work stamps: attempts per second, so the expected time to
    // mint at a difficulty of d bits is 2^d / rate.
    let challenge = [7u8; 32];
    let start = Instant::now();
    let mut attempts = 0u64;
    // Difficulty 32 is never reached in the time allowed: count attempts
    // through the progress callback and cancel after the budget.
    let budget = if quick { 0.5 } else { 3.0 };
    let _ = chainmail_session::Stamp::mint(&challenge, 1, 32, |n| {
        attempts = n;
        start.elapsed().as_secs_f64() < budget
    });
    let rate = attempts as f64 / start.elapsed().as_secs_f64();
    println!("stamps: {rate:.0} attempts/s on one core; expected time to mint:");
    for bits in [12u32, 16, 18, 20, 22] {
        println!("  {bits} bits: {:.3} s", 2f64.powi(bits as i32) / rate);
    }
}
