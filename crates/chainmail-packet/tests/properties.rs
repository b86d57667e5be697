//! Property tests: round trips and sizes for any route, message and delays;
//! tagging resistance (a modified packet is never delivered as valid); no
//! input makes processing panic.

mod common;

use chainmail_packet::{
    Action, HEADER_SIZE, Hop, MESSAGE_SIZE, PACKET_SIZE, Packet, PacketError, Surb, SurbSecrets,
    build_packet, build_surb,
};
use common::{EPOCH, MAILBOX, TestNode, XofRng, nodes, route};
use proptest::prelude::*;

/// How a packet's journey ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Delivered at the last hop with this message.
    Delivered(Vec<u8>),
    /// Rejected at hop `hop` (or before reaching it, for undecodable bytes).
    Rejected { hop: usize, error: PacketError },
}

/// Runs raw packet bytes from hop `start` to the end of `net`.
fn journey(net: &[TestNode], start: usize, bytes: &[u8]) -> Outcome {
    let mut packet = match Packet::from_bytes(bytes) {
        Ok(p) => p,
        Err(error) => return Outcome::Rejected { hop: start, error },
    };
    for (i, node) in net.iter().enumerate().skip(start) {
        match node.secret.process(packet) {
            Err(error) => return Outcome::Rejected { hop: i, error },
            Ok(p) => match p.action {
                Action::Forward {
                    next,
                    packet: next_packet,
                    ..
                } => {
                    assert_eq!(next_packet.as_bytes().len(), PACKET_SIZE);
                    // A hop only ever forwards to the node the sender named.
                    assert_eq!(Some(next), net.get(i + 1).map(|n| n.id));
                    packet = next_packet;
                }
                Action::Deliver { message, .. } => return Outcome::Delivered(message.to_vec()),
                other => panic!("unexpected action {other:?}"),
            },
        }
    }
    panic!("the route ended without a decision")
}

fn padded(message: &[u8]) -> Vec<u8> {
    let mut m = message.to_vec();
    m.resize(MESSAGE_SIZE, 0);
    m
}

#[test]
fn every_single_bit_flip_before_the_first_hop_is_detected() {
    let net = nodes("exhaustive flips", 5);
    let message = b"flip me if you can";
    let packet = build_packet(
        &mut XofRng::new("flip"),
        EPOCH,
        &route(&net),
        MAILBOX,
        message,
    )
    .unwrap();
    let original = *packet.as_bytes();
    assert_eq!(
        journey(&net, 0, &original),
        Outcome::Delivered(padded(message))
    );
    for bit in 0..PACKET_SIZE * 8 {
        let mut bytes = original;
        bytes[bit / 8] ^= 1 << (bit % 8);
        match journey(&net, 0, &bytes) {
            Outcome::Delivered(_) => panic!("bit {bit} flipped and the packet was delivered"),
            Outcome::Rejected { hop, error } => {
                if bit / 8 < HEADER_SIZE {
                    // Any header change is caught by the first hop.
                    assert_eq!(hop, 0, "header bit {bit} passed hop 0 ({error})");
                } else {
                    // A payload change is caught by the last hop.
                    assert_eq!(
                        (hop, error),
                        (4, PacketError::PayloadTampered),
                        "payload bit {bit}"
                    );
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_route_message_and_delays_round_trip(
        seed in any::<u64>(),
        hops in 1usize..=5,
        message in proptest::collection::vec(any::<u8>(), 0..=MESSAGE_SIZE),
        delays in proptest::collection::vec(any::<u32>(), 5),
    ) {
        let net = nodes(&format!("net {seed}"), hops);
        let route: Vec<Hop<'_>> = net
            .iter()
            .zip(&delays)
            .map(|(n, d)| Hop { node: n.id, key: &n.hop_key, delay_ms: *d })
            .collect();
        let mut rng = XofRng::new(&format!("packet {seed}"));
        let mut packet = build_packet(&mut rng, EPOCH, &route, MAILBOX, &message).unwrap();
        for (i, node) in net.iter().enumerate() {
            prop_assert_eq!(packet.as_bytes().len(), PACKET_SIZE);
            prop_assert_eq!(packet.epoch(), EPOCH);
            // Decode → encode gives the same bytes at every hop.
            prop_assert_eq!(Packet::from_bytes(packet.as_bytes()).unwrap(), packet.clone());
            match node.secret.process(packet).unwrap().action {
                Action::Forward { next, delay_ms, packet: p } => {
                    prop_assert_eq!(next, net[i + 1].id);
                    prop_assert_eq!(delay_ms, delays[i]);
                    packet = p;
                }
                Action::Deliver { mailbox, delay_ms, message: got } => {
                    prop_assert_eq!(i, hops - 1);
                    prop_assert_eq!(mailbox, MAILBOX);
                    prop_assert_eq!(delay_ms, delays[i]);
                    prop_assert_eq!(got.to_vec(), padded(&message));
                    return Ok(());
                }
                other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
            }
        }
        prop_assert!(false, "never delivered");
    }

    /// A malicious hop modifies the packet it passes on: whatever bits it
    /// flips, some later hop or the final check rejects it.
    #[test]
    fn a_flip_by_any_hop_is_detected_downstream(
        seed in any::<u64>(),
        hops in 2usize..=5,
        at in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((0usize..PACKET_SIZE, 1u8..=255), 1..4),
    ) {
        let net = nodes(&format!("tag {seed}"), hops);
        let mut rng = XofRng::new(&format!("tag packet {seed}"));
        let mut packet = build_packet(&mut rng, EPOCH, &route(&net), MAILBOX, b"secret").unwrap();
        // Honest processing up to the tampering hop's successor.
        let tamper_before = 1 + at.index(hops - 1);
        for node in &net[..tamper_before] {
            let Action::Forward { packet: p, .. } = node.secret.process(packet).unwrap().action
            else { panic!("forward") };
            packet = p;
        }
        let mut bytes = *packet.as_bytes();
        for (pos, mask) in flips {
            bytes[pos] ^= mask;
        }
        let outcome = journey(&net, tamper_before, &bytes);
        prop_assert!(matches!(outcome, Outcome::Rejected { .. }), "delivered: {:?}", outcome);
    }

    #[test]
    fn random_bytes_never_process(seed in any::<u64>(), body in proptest::collection::vec(any::<u8>(), PACKET_SIZE - 5)) {
        let net = nodes(&format!("random {seed}"), 1);
        let mut bytes = vec![chainmail_packet::VERSION];
        bytes.extend_from_slice(&EPOCH.0.to_be_bytes());
        bytes.extend_from_slice(&body);
        let packet = Packet::from_bytes(&bytes).unwrap();
        prop_assert!(net[0].secret.process(packet).is_err());
    }

    #[test]
    fn any_bytes_decode_to_a_packet_or_a_typed_error(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        match Packet::from_bytes(&bytes) {
            Ok(p) => prop_assert_eq!(&p.as_bytes()[..], &bytes[..]),
            Err(PacketError::WrongSize { actual, .. }) => prop_assert_eq!(actual, bytes.len()),
            Err(PacketError::UnsupportedVersion(v)) => prop_assert_eq!(v, bytes[0]),
            Err(other) => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    #[test]
    fn surbs_and_their_secrets_round_trip(seed in any::<u64>(), hops in 1usize..=5, reply in proptest::collection::vec(any::<u8>(), 0..=MESSAGE_SIZE)) {
        let net = nodes(&format!("surb {seed}"), hops);
        let mut rng = XofRng::new(&format!("surb {seed}"));
        let (surb, secrets) = build_surb(&mut rng, EPOCH, &route(&net), MAILBOX).unwrap();
        let encoded = surb.to_bytes();
        prop_assert_eq!(Surb::from_bytes(&encoded).unwrap().to_bytes(), encoded);
        let stored = secrets.to_bytes();
        let restored = SurbSecrets::from_bytes(&stored).unwrap();
        prop_assert_eq!(&restored.to_bytes()[..], &stored[..]);

        let mut packet = Surb::from_bytes(&encoded).unwrap().into_reply(&reply).unwrap();
        for node in &net {
            match node.secret.process(packet).unwrap().action {
                Action::Forward { packet: p, .. } => packet = p,
                Action::DeliverReply { surb_id, payload, mailbox, .. } => {
                    prop_assert_eq!(mailbox, MAILBOX);
                    let message = restored.open(surb_id, &payload).unwrap();
                    prop_assert_eq!(message.to_vec(), padded(&reply));
                    return Ok(());
                }
                other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
            }
        }
        prop_assert!(false, "reply never delivered");
    }
}
