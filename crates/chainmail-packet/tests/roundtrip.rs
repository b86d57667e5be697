//! Round trips, rejection of wrong keys and epochs, replay tags, SURBs.

mod common;

use chainmail_packet::{
    Action, Epoch, MESSAGE_SIZE, MixSecretKey, PACKET_SIZE, Packet, PacketError, build_packet,
    build_surb,
};
use common::{EPOCH, MAILBOX, TestNode, XofRng, nodes, route};

/// Processes `packet` along `nodes`, checking every forwarding decision, and
/// returns the final action.
fn walk(nodes: &[TestNode], packet: Packet) -> Action {
    walk_from(nodes, 0, packet)
}

/// As [`walk`], for a packet that arrives at hop `start` of the route.
fn walk_from(nodes: &[TestNode], start: usize, mut packet: Packet) -> Action {
    for (i, node) in nodes.iter().enumerate().skip(start) {
        assert_eq!(packet.as_bytes().len(), PACKET_SIZE);
        let processed = node
            .secret
            .process(packet)
            .expect("honest packet processes");
        match processed.action {
            Action::Forward {
                next,
                delay_ms,
                packet: p,
            } => {
                assert!(
                    i + 1 < nodes.len(),
                    "hop {i} forwarded past the end of the route"
                );
                assert_eq!(next, nodes[i + 1].id);
                assert_eq!(delay_ms, 10 * (i as u32 + 1));
                packet = p;
            }
            last => {
                assert_eq!(
                    i + 1,
                    nodes.len(),
                    "hop {i} delivered before the end of the route"
                );
                return last;
            }
        }
    }
    unreachable!("the last hop always delivers")
}

#[test]
fn round_trip_over_one_to_five_hops() {
    let net = nodes("round trip", 5);
    for hops in 1..=5 {
        let mut rng = XofRng::new(&format!("message {hops}"));
        let message = format!("hello over {hops} hops").into_bytes();
        let packet =
            build_packet(&mut rng, EPOCH, &route(&net[..hops]), MAILBOX, &message).unwrap();
        match walk(&net[..hops], packet) {
            Action::Deliver {
                mailbox,
                delay_ms,
                message: got,
            } => {
                assert_eq!(mailbox, MAILBOX);
                assert_eq!(delay_ms, 10 * hops as u32);
                assert_eq!(&got[..message.len()], &message[..]);
                assert!(got[message.len()..].iter().all(|b| *b == 0));
            }
            other => panic!("expected delivery, got {other:?}"),
        }
    }
}

#[test]
fn full_size_message_round_trips() {
    let net = nodes("full size", 5);
    let message: Vec<u8> = (0..MESSAGE_SIZE).map(|i| (i * 7) as u8).collect();
    let packet = build_packet(
        &mut XofRng::new("m"),
        EPOCH,
        &route(&net),
        MAILBOX,
        &message,
    )
    .unwrap();
    let Action::Deliver { message: got, .. } = walk(&net, packet) else {
        panic!("no delivery")
    };
    assert_eq!(&got[..], &message[..]);
}

#[test]
fn oversized_message_and_bad_routes_are_refused() {
    let net = nodes("bad input", 6);
    let too_long = vec![1u8; MESSAGE_SIZE + 1];
    let err = build_packet(
        &mut XofRng::new("x"),
        EPOCH,
        &route(&net[..3]),
        MAILBOX,
        &too_long,
    );
    assert_eq!(
        err.unwrap_err(),
        PacketError::MessageTooLong {
            actual: MESSAGE_SIZE + 1
        }
    );
    let err = build_packet(&mut XofRng::new("x"), EPOCH, &route(&net), MAILBOX, b"hi");
    assert_eq!(err.unwrap_err(), PacketError::RouteLength { actual: 6 });
    let err = build_packet(&mut XofRng::new("x"), EPOCH, &[], MAILBOX, b"hi");
    assert_eq!(err.unwrap_err(), PacketError::RouteLength { actual: 0 });
}

#[test]
fn packet_for_another_key_is_rejected() {
    let net = nodes("wrong key", 3);
    let packet = build_packet(&mut XofRng::new("k"), EPOCH, &route(&net), MAILBOX, b"x").unwrap();
    // Another node's key of the same epoch: the MAC cannot verify.
    assert_eq!(
        net[1].secret.process(packet.clone()).unwrap_err(),
        PacketError::HeaderMac
    );
    // A fresh key of the same epoch.
    let stranger = MixSecretKey::generate(&mut XofRng::new("stranger"), EPOCH);
    assert_eq!(
        stranger.process(packet).unwrap_err(),
        PacketError::HeaderMac
    );
}

#[test]
fn packet_for_another_epoch_is_rejected() {
    let net = nodes("wrong epoch", 3);
    let packet = build_packet(&mut XofRng::new("e"), EPOCH, &route(&net), MAILBOX, b"x").unwrap();
    assert_eq!(packet.epoch(), EPOCH);
    // The right node, but its key of the next epoch.
    let next = MixSecretKey::from_bytes(Epoch(EPOCH.0 + 1), *net[0].secret.to_bytes());
    assert_eq!(
        next.process(packet.clone()).unwrap_err(),
        PacketError::WrongEpoch {
            packet: EPOCH.0,
            key: EPOCH.0 + 1
        }
    );
    // Relabelling the packet to match the key's epoch breaks the header MAC:
    // the epoch is bound into the key derivation and the MAC.
    let mut bytes = *packet.as_bytes();
    bytes[1..5].copy_from_slice(&(EPOCH.0 + 1).to_be_bytes());
    let relabelled = Packet::from_bytes(&bytes).unwrap();
    assert_eq!(
        next.process(relabelled).unwrap_err(),
        PacketError::HeaderMac
    );
}

#[test]
fn replay_gives_the_same_tag_at_the_same_hop() {
    let net = nodes("replay", 5);
    let packet = build_packet(&mut XofRng::new("r"), EPOCH, &route(&net), MAILBOX, b"x").unwrap();
    let first = net[0].secret.process(packet.clone()).unwrap();
    let again = net[0].secret.process(packet).unwrap();
    assert_eq!(first.replay_tag, again.replay_tag);

    // At the next hop, the replayed copy also carries the same tag.
    let (Action::Forward { packet: p1, .. }, Action::Forward { packet: p2, .. }) =
        (first.action, again.action)
    else {
        panic!("first hop forwards")
    };
    assert_eq!(p1, p2);
    let t1 = net[1].secret.process(p1).unwrap().replay_tag;
    let t2 = net[1].secret.process(p2).unwrap().replay_tag;
    assert_eq!(t1, t2);

    // A different packet with the same content has a different tag.
    let other = build_packet(&mut XofRng::new("r2"), EPOCH, &route(&net), MAILBOX, b"x").unwrap();
    let tag = net[0].secret.process(other).unwrap().replay_tag;
    assert_ne!(tag, first.replay_tag);
}

#[test]
fn surb_reply_round_trip() {
    let net = nodes("surb", 5);
    for hops in 1..=5 {
        let mut rng = XofRng::new(&format!("surb {hops}"));
        let (surb, secrets) = build_surb(&mut rng, EPOCH, &route(&net[..hops]), MAILBOX).unwrap();
        assert_eq!(surb.first_hop(), net[0].id);
        assert_eq!(surb.epoch(), EPOCH);
        // The SURB travels to the replier inside a message.
        let carried = chainmail_packet::Surb::from_bytes(&surb.to_bytes()).unwrap();
        let reply = carried.into_reply(b"got it, thanks").unwrap();
        match walk(&net[..hops], reply) {
            Action::DeliverReply {
                mailbox,
                surb_id,
                payload,
                ..
            } => {
                assert_eq!(mailbox, MAILBOX);
                assert_eq!(surb_id, secrets.id());
                // The creator's secrets survive storage.
                let stored =
                    chainmail_packet::SurbSecrets::from_bytes(&secrets.to_bytes()).unwrap();
                let message = stored.open(surb_id, &payload).unwrap();
                assert_eq!(&message[..14], b"got it, thanks");
                assert!(message[14..].iter().all(|b| *b == 0));
            }
            other => panic!("expected a reply delivery, got {other:?}"),
        }
    }
}

#[test]
fn tampered_surb_reply_is_rejected_by_its_creator() {
    let net = nodes("surb tamper", 5);
    let (surb, secrets) = build_surb(&mut XofRng::new("s"), EPOCH, &route(&net), MAILBOX).unwrap();
    let reply = surb.into_reply(b"reply").unwrap();
    // The second hop flips a payload bit before passing the packet on.
    let Action::Forward { packet, .. } = net[0].secret.process(reply).unwrap().action else {
        panic!("forward")
    };
    let mut bytes = *packet.as_bytes();
    bytes[PACKET_SIZE - 100] ^= 0x20;
    let Action::DeliverReply {
        surb_id, payload, ..
    } = walk_from(&net, 1, Packet::from_bytes(&bytes).unwrap())
    else {
        panic!("the provider cannot check a reply; it stores it")
    };
    assert_eq!(
        secrets.open(surb_id, &payload).unwrap_err(),
        PacketError::PayloadTampered
    );
}

#[test]
fn reply_opened_with_another_surbs_secrets_is_refused() {
    let net = nodes("surb mismatch", 3);
    let mut rng = XofRng::new("two surbs");
    let (surb_a, _) = build_surb(&mut rng, EPOCH, &route(&net), MAILBOX).unwrap();
    let (_, secrets_b) = build_surb(&mut rng, EPOCH, &route(&net), MAILBOX).unwrap();
    let Action::DeliverReply {
        surb_id, payload, ..
    } = walk(&net, surb_a.into_reply(b"r").unwrap())
    else {
        panic!("reply")
    };
    assert!(matches!(
        secrets_b.open(surb_id, &payload),
        Err(PacketError::SurbMismatch { .. })
    ));
}

#[test]
fn malformed_inputs_are_typed_errors() {
    assert!(matches!(
        Packet::from_bytes(&[1u8; 100]),
        Err(PacketError::WrongSize { .. })
    ));
    assert!(matches!(
        Packet::from_bytes(&[1u8; 2049]),
        Err(PacketError::WrongSize { .. })
    ));
    assert_eq!(
        Packet::from_bytes(&[9u8; PACKET_SIZE]),
        Err(PacketError::UnsupportedVersion(9))
    );
    assert!(chainmail_packet::Surb::from_bytes(&[1u8; 10]).is_err());
    assert!(chainmail_packet::SurbSecrets::from_bytes(&[]).is_err());
    assert!(chainmail_packet::SurbSecrets::from_bytes(&[1u8; 40]).is_err());
    // A packet whose ephemeral key is not on the curve.
    let net = nodes("malformed", 1);
    let mut bytes = [0u8; PACKET_SIZE];
    bytes[0] = 1;
    bytes[1..5].copy_from_slice(&EPOCH.0.to_be_bytes());
    bytes[5] = 2; // u = 2 is not the u-coordinate of a curve point
    let packet = Packet::from_bytes(&bytes).unwrap();
    assert_eq!(
        net[0].secret.process(packet).unwrap_err(),
        PacketError::InvalidEphemeralKey
    );
}
