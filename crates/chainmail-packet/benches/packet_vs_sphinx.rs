//! Chainmail's packet format next to `sphinx-packet` 0.8, in one run on one
//! machine: packet creation over 5 hops (provider, 3 mixes, provider) and
//! per-hop processing, with the same payload size and message. Prints the
//! per-operation times, the ratios against sphinx-packet and the targets.
//!
//! Run: `cargo bench -p chainmail-packet --bench packet_vs_sphinx`
//! (add `-- --quick` for a shorter, noisier run).
//!
//! Method: every case is timed in batches; the batches of all cases are
//! interleaved round by round so that drift in machine load hits every case
//! alike, and the median batch of each case is reported.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use chainmail_packet::{
    Epoch, Hop, HopKey, MESSAGE_SIZE, MailboxId, MixSecretKey, NodeId, PAYLOAD_SIZE, Packet,
    build_packet,
};
use sphinx_packet::SphinxPacket;
use sphinx_packet::constants::{
    DESTINATION_ADDRESS_LENGTH, IDENTIFIER_LENGTH, NODE_ADDRESS_LENGTH,
};
use sphinx_packet::header::delays;
use sphinx_packet::packet::builder::SphinxPacketBuilder;
use sphinx_packet::route::{Destination, DestinationAddressBytes, Node, NodeAddressBytes};
use x25519_dalek::{PublicKey, StaticSecret};

const HOPS: usize = 5;
const EPOCH: Epoch = Epoch(1);

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
    let message = vec![0x5au8; 1000];
    assert!(message.len() <= MESSAGE_SIZE);

    // Chainmail: five nodes, their keys as a sender sees them, cold and warm.
    let mut rng = rand::rng();
    let secrets: Vec<MixSecretKey> = (0..HOPS)
        .map(|_| MixSecretKey::generate(&mut rng, EPOCH))
        .collect();
    let cold: Vec<HopKey> = secrets
        .iter()
        .map(|s| HopKey::new(s.public()).unwrap())
        .collect();
    let warm: Vec<HopKey> = secrets
        .iter()
        .map(|s| HopKey::precomputed(s.public()).unwrap())
        .collect();
    let route = |keys: &'static [HopKey]| -> Vec<Hop<'static>> {
        keys.iter()
            .enumerate()
            .map(|(i, key)| Hop {
                node: NodeId([i as u8; 32]),
                key,
                delay_ms: 50,
            })
            .collect()
    };
    let cold_route = route(Vec::leak(cold));
    let warm_route = route(Vec::leak(warm));
    let mailbox = MailboxId([7; 32]);
    let ours = build_packet(&mut rng, EPOCH, &cold_route, mailbox, &message).unwrap();
    let first_secret = secrets.into_iter().next().unwrap();

    // sphinx-packet: the same five hops and payload size.
    let sphinx_secrets: Vec<StaticSecret> = (0..HOPS).map(|_| StaticSecret::random()).collect();
    let sphinx_route: Vec<Node> = sphinx_secrets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Node::new(
                NodeAddressBytes::from_bytes([i as u8; NODE_ADDRESS_LENGTH]),
                PublicKey::from(s),
            )
        })
        .collect();
    let destination = Destination::new(
        DestinationAddressBytes::from_bytes([3u8; DESTINATION_ADDRESS_LENGTH]),
        [4u8; IDENTIFIER_LENGTH],
    );
    let sphinx_delays = delays::generate_from_average_duration(HOPS, Duration::from_millis(50));
    let builder = SphinxPacketBuilder::new().with_payload_size(PAYLOAD_SIZE);
    let sphinx = builder
        .build_packet(&message, &sphinx_route, &destination, &sphinx_delays)
        .unwrap();
    let sphinx_bytes = sphinx.to_bytes();
    let sphinx_first = sphinx_secrets.into_iter().next().unwrap();

    // Both sides process a copy of the same received bytes, as a node does.
    let ours_bytes = ours.as_bytes().to_vec();
    let mut cases = vec![
        Case {
            name: "process/chainmail",
            run: Box::new(move || {
                let packet = Packet::from_bytes(black_box(&ours_bytes)).unwrap();
                black_box(first_secret.process(packet).unwrap());
            }),
            samples: vec![],
        },
        Case {
            name: "process/sphinx-packet",
            run: Box::new(move || {
                let packet = SphinxPacket::from_bytes(black_box(&sphinx_bytes)).unwrap();
                black_box(packet.process(&sphinx_first).unwrap());
            }),
            samples: vec![],
        },
        Case {
            name: "create/chainmail (cold keys)",
            run: {
                let message = message.clone();
                let mut rng = rand::rng();
                Box::new(move || {
                    let p = build_packet(&mut rng, EPOCH, &cold_route, mailbox, &message);
                    black_box(p.unwrap());
                })
            },
            samples: vec![],
        },
        Case {
            name: "create/chainmail (precomputed keys)",
            run: {
                let message = message.clone();
                let mut rng = rand::rng();
                Box::new(move || {
                    let p = build_packet(&mut rng, EPOCH, &warm_route, mailbox, &message);
                    black_box(p.unwrap());
                })
            },
            samples: vec![],
        },
        Case {
            name: "create/sphinx-packet",
            run: Box::new(move || {
                let p = builder.build_packet(&message, &sphinx_route, &destination, &sphinx_delays);
                black_box(p.unwrap());
            }),
            samples: vec![],
        },
    ];

    // Calibrate a batch size per case, then interleave the rounds.
    let mut batch = Vec::new();
    for case in &mut cases {
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < batch_time / 4 {
            (case.run)();
            n += 1;
        }
        batch.push(
            ((n * 4) as f64 * batch_time.as_secs_f64() / start.elapsed().as_secs_f64()) as u32 / 4
                + 1,
        );
    }
    for round in 0..rounds {
        for (case, &n) in cases.iter_mut().zip(&batch) {
            let start = Instant::now();
            for _ in 0..n {
                (case.run)();
            }
            case.samples
                .push(start.elapsed().as_secs_f64() * 1e6 / f64::from(n));
        }
        eprint!("\rround {}/{rounds}", round + 1);
    }
    eprintln!();

    let median = |name: &str| -> f64 {
        let case = cases.iter().find(|c| c.name == name).unwrap();
        let mut s = case.samples.clone();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    println!("| operation | median µs/op | min µs/op | max µs/op |");
    println!("|---|---:|---:|---:|");
    for case in &cases {
        let min = case.samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = case.samples.iter().copied().fold(0.0, f64::max);
        println!(
            "| {} | {:.1} | {:.1} | {:.1} |",
            case.name,
            median(case.name),
            min,
            max
        );
    }
    let process = median("process/chainmail") / median("process/sphinx-packet");
    let cold = median("create/chainmail (cold keys)") / median("create/sphinx-packet");
    let warm = median("create/chainmail (precomputed keys)") / median("create/sphinx-packet");
    println!();
    println!(
        "payload {PAYLOAD_SIZE} bytes, message {} bytes, {HOPS} hops, {rounds} rounds",
        1000
    );
    println!("ratio process  chainmail / sphinx-packet = {process:.3}  (target <= 0.5)");
    println!(
        "ratio create   chainmail / sphinx-packet = {cold:.3} cold keys, {warm:.3} precomputed keys  (target <= 0.5)"
    );
    println!(
        "processing throughput: chainmail {:.0} packets/s per core, sphinx-packet {:.0} packets/s per core",
        1e6 / median("process/chainmail"),
        1e6 / median("process/sphinx-packet")
    );
}
