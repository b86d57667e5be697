//! Fuzzes packet decoding and processing.
//!
//! Mode 1 (every input): the input is a packet from the network. Decoding
//! must round-trip byte for byte, and processing it with a fixed node key must
//! return (never panic); a forwarded packet is exactly `PACKET_SIZE` bytes.
//!
//! Mode 2 (first byte even): a valid packet over a fixed three-hop route is
//! built deterministically, the rest of the input is XORed into it starting
//! at offset `(data[0] >> 1) * 16` (wrapping around, at most `PACKET_SIZE`
//! bytes), and the result is processed along the route. An unchanged packet
//! must deliver the original message; a changed one must be rejected with an
//! error at some hop (or by `Packet::from_bytes`, for a changed version byte).

#![no_main]

use std::sync::OnceLock;

use chainmail_packet::{
    Action, Epoch, Hop, HopKey, MESSAGE_SIZE, MailboxId, MixSecretKey, NodeId, PACKET_SIZE, Packet,
    build_packet,
};
use libfuzzer_sys::fuzz_target;

/// Epoch of every key here.
const EPOCH: Epoch = Epoch(7);
/// Secret key of the node that processes mode-1 inputs (also the first hop of
/// the mode-2 route).
const NODE_SECRET: [u8; 32] = [0x11; 32];
/// Secret keys of the mode-2 route.
const ROUTE_SECRETS: [[u8; 32]; 3] = [NODE_SECRET, [0x22; 32], [0x33; 32]];
const MAILBOX: MailboxId = MailboxId([0x4d; 32]);
const MESSAGE: &[u8] = b"chainmail fuzz: the message that must arrive intact";

/// The crate's test support: its deterministic `XofRng`.
#[path = "../../crates/chainmail-packet/tests/common/mod.rs"]
mod common;
use common::XofRng;

struct RouteNode {
    id: NodeId,
    secret: MixSecretKey,
}

/// The fixed route and the valid packet built over it, made once.
struct Fixture {
    node: MixSecretKey,
    route: Vec<RouteNode>,
    packet: Packet,
}

fn delay_of(hop: usize) -> u32 {
    100 * (hop as u32 + 1)
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let route: Vec<RouteNode> = ROUTE_SECRETS
            .iter()
            .enumerate()
            .map(|(i, secret)| RouteNode {
                id: NodeId([0xa0 + i as u8; 32]),
                secret: MixSecretKey::from_bytes(EPOCH, *secret),
            })
            .collect();
        // Both sender-side code paths: plain and precomputed hop keys.
        let hop_keys: Vec<HopKey> = route
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let key = if i % 2 == 0 {
                    HopKey::new(n.secret.public())
                } else {
                    HopKey::precomputed(n.secret.public())
                };
                key.expect("a generated public key is valid")
            })
            .collect();
        let hops: Vec<Hop<'_>> = route
            .iter()
            .zip(&hop_keys)
            .enumerate()
            .map(|(i, (n, key))| Hop {
                node: n.id,
                key,
                delay_ms: delay_of(i),
            })
            .collect();
        let packet = build_packet(
            &mut XofRng::new("process_packet"),
            EPOCH,
            &hops,
            MAILBOX,
            MESSAGE,
        )
        .expect("the fixed packet builds");
        Fixture {
            node: MixSecretKey::from_bytes(EPOCH, NODE_SECRET),
            route,
            packet,
        }
    })
}

/// Mode 1: arbitrary bytes as a packet from the network.
fn arbitrary_packet(fx: &Fixture, data: &[u8]) {
    let Ok(packet) = Packet::from_bytes(data) else {
        return;
    };
    assert_eq!(
        &packet.as_bytes()[..],
        data,
        "decode/encode round trip changed the bytes"
    );
    let _ = packet.epoch();
    // Errors are fine; panics are not.
    if let Ok(processed) = fx.node.process(packet)
        && let Action::Forward { packet, .. } = processed.action
    {
        assert_eq!(packet.as_bytes().len(), PACKET_SIZE);
        assert_eq!(packet.epoch(), EPOCH, "forwarding changed the epoch");
    }
}

/// Mode 2: a valid packet with the fuzz input XORed into it.
fn modified_packet(fx: &Fixture, data: &[u8]) {
    let offset = usize::from(data[0] >> 1) * 16;
    let original = fx.packet.as_bytes();
    let mut bytes = *original;
    for (j, x) in data[1..].iter().take(PACKET_SIZE).enumerate() {
        bytes[(offset + j) % PACKET_SIZE] ^= x;
    }
    let changed = bytes != *original;

    let mut packet = match Packet::from_bytes(&bytes) {
        Ok(packet) => packet,
        Err(e) => {
            assert!(changed, "the unmodified packet does not decode: {e}");
            // Only the version byte can make a full-size packet undecodable.
            assert_ne!(bytes[0], original[0], "decoding failed: {e}");
            return;
        }
    };
    assert_eq!(&packet.as_bytes()[..], &bytes[..]);

    let last = fx.route.len() - 1;
    for (i, node) in fx.route.iter().enumerate() {
        let processed = match node.secret.process(packet) {
            Ok(processed) => processed,
            Err(e) => {
                // The modification was detected.
                assert!(changed, "honest packet rejected at hop {i}: {e}");
                return;
            }
        };
        match processed.action {
            Action::Forward {
                next,
                delay_ms,
                packet: p,
            } if i < last => {
                // Reaching a later hop means this hop's header was intact,
                // so its routing command is the authentic one.
                assert_eq!(next, fx.route[i + 1].id, "hop {i} forwarded elsewhere");
                assert_eq!(delay_ms, delay_of(i));
                assert_eq!(p.as_bytes().len(), PACKET_SIZE);
                packet = p;
            }
            Action::Deliver {
                mailbox,
                delay_ms,
                message,
            } if i == last => {
                assert!(
                    !changed,
                    "modified packet delivered at hop {i} (message intact: {})",
                    message[..MESSAGE.len()] == *MESSAGE
                );
                assert_eq!(mailbox, MAILBOX);
                assert_eq!(delay_ms, delay_of(i));
                assert_eq!(message.len(), MESSAGE_SIZE);
                assert_eq!(&message[..MESSAGE.len()], MESSAGE);
                assert!(message[MESSAGE.len()..].iter().all(|b| *b == 0));
                return;
            }
            other => panic!(
                "hop {i} of {} returned {other:?} (changed: {changed})",
                last + 1
            ),
        }
    }
    unreachable!("the last hop returns from the loop");
}

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    arbitrary_packet(fx, data);
    if data.first().is_some_and(|b| b % 2 == 0) {
        modified_packet(fx, data);
    }
});
