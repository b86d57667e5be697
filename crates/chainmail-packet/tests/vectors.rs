//! Checked-in test vectors: fixed keys and randomness give exactly the bytes
//! in `tests/vectors/packet_v1.json`, and those bytes decode, re-encode and
//! process to exactly the recorded results.
//!
//! The randomness is the BLAKE3 XOF of `derive_key("chainmail-packet test
//! rng", seed)`; a packet consumes it as 32 bytes of ephemeral secret per
//! hop in route order, then the last hop's padding; a SURB takes 16 bytes of
//! id first and 32 bytes of reply key seed last.
//!
//! To regenerate after a deliberate format change (and bump `VERSION`):
//! `CHAINMAIL_WRITE_VECTORS=1 cargo test -p chainmail-packet --test vectors`

mod common;

use chainmail_packet::{
    Action, Epoch, Hop, MailboxId, MixSecretKey, NodeId, Packet, Surb, SurbId, SurbSecrets,
    build_packet, build_surb,
};
use common::{EPOCH, MAILBOX, XofRng, nodes};
use serde::{Deserialize, Serialize};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/packet_v1.json");

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct VectorFile {
    description: String,
    epoch: u32,
    mailbox: String,
    nodes: Vec<NodeVector>,
    packets: Vec<PacketVector>,
    surbs: Vec<SurbVector>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct NodeVector {
    id: String,
    secret: String,
    public: String,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct PacketVector {
    rng_seed: String,
    hops: usize,
    delays_ms: Vec<u32>,
    message: String,
    packet: String,
    steps: Vec<Step>,
    delivered: String,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct SurbVector {
    rng_seed: String,
    hops: usize,
    delays_ms: Vec<u32>,
    surb: String,
    secrets: String,
    reply_message: String,
    reply_packet: String,
    steps: Vec<Step>,
    surb_id: String,
    delivered_payload: String,
    opened: String,
}

/// One hop's result: its replay tag and, unless it is the last hop, the
/// packet it forwards.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Step {
    replay_tag: String,
    forwarded: Option<String>,
}

fn delays(hops: usize) -> Vec<u32> {
    (0..hops as u32).map(|i| 17 + 31 * i).collect()
}

/// Processes `packet` along `secrets`, recording each step; returns the
/// steps and the last action.
fn run(secrets: &[MixSecretKey], mut packet: Packet) -> (Vec<Step>, Action) {
    let mut steps = Vec::new();
    for (i, secret) in secrets.iter().enumerate() {
        let processed = secret.process(packet).expect("vector packets process");
        let replay_tag = hex::encode(processed.replay_tag.0);
        match processed.action {
            Action::Forward { packet: p, .. } => {
                steps.push(Step {
                    replay_tag,
                    forwarded: Some(hex::encode(p.as_bytes())),
                });
                packet = p;
            }
            last => {
                assert_eq!(i + 1, secrets.len());
                steps.push(Step {
                    replay_tag,
                    forwarded: None,
                });
                return (steps, last);
            }
        }
    }
    panic!("no final action")
}

fn generate() -> VectorFile {
    let net = nodes("chainmail-packet vectors v1", 5);
    let route = |hops: usize| -> Vec<Hop<'_>> {
        net[..hops]
            .iter()
            .zip(delays(hops))
            .map(|(n, d)| Hop {
                node: n.id,
                key: &n.hop_key,
                delay_ms: d,
            })
            .collect()
    };
    let secrets: Vec<MixSecretKey> = net
        .iter()
        .map(|n| MixSecretKey::from_bytes(EPOCH, *n.secret.to_bytes()))
        .collect();

    let packets = [1usize, 3, 5]
        .into_iter()
        .map(|hops| {
            let rng_seed = format!("vector packet {hops} hops");
            let message = format!("Chainmail test vector: {hops} hops").into_bytes();
            let packet = build_packet(
                &mut XofRng::new(&rng_seed),
                EPOCH,
                &route(hops),
                MAILBOX,
                &message,
            )
            .unwrap();
            let (steps, last) = run(&secrets[..hops], packet.clone());
            let Action::Deliver {
                message: delivered, ..
            } = last
            else {
                panic!("deliver")
            };
            PacketVector {
                rng_seed,
                hops,
                delays_ms: delays(hops),
                message: hex::encode(&message),
                packet: hex::encode(packet.as_bytes()),
                steps,
                delivered: hex::encode(&delivered[..]),
            }
        })
        .collect();

    let surbs = [2usize, 5]
        .into_iter()
        .map(|hops| {
            let rng_seed = format!("vector surb {hops} hops");
            let (surb, surb_secrets) =
                build_surb(&mut XofRng::new(&rng_seed), EPOCH, &route(hops), MAILBOX).unwrap();
            let reply_message = b"Chainmail test vector: reply".to_vec();
            let reply = surb.clone().into_reply(&reply_message).unwrap();
            let (steps, last) = run(&secrets[..hops], reply.clone());
            let Action::DeliverReply {
                surb_id, payload, ..
            } = last
            else {
                panic!("reply")
            };
            let opened = surb_secrets.open(surb_id, &payload).unwrap();
            SurbVector {
                rng_seed,
                hops,
                delays_ms: delays(hops),
                surb: hex::encode(surb.to_bytes()),
                secrets: hex::encode(&surb_secrets.to_bytes()[..]),
                reply_message: hex::encode(&reply_message),
                reply_packet: hex::encode(reply.as_bytes()),
                steps,
                surb_id: hex::encode(surb_id.0),
                delivered_payload: hex::encode(&payload[..]),
                opened: hex::encode(&opened[..]),
            }
        })
        .collect();

    VectorFile {
        description: "chainmail-packet format version 1; see tests/vectors.rs for how the randomness is consumed".into(),
        epoch: EPOCH.0,
        mailbox: hex::encode(MAILBOX.0),
        nodes: net
            .iter()
            .map(|n| NodeVector {
                id: hex::encode(n.id.0),
                secret: hex::encode(*n.secret.to_bytes()),
                public: hex::encode(n.secret.public().0),
            })
            .collect(),
        packets,
        surbs,
    }
}

fn unhex<const N: usize>(s: &str) -> [u8; N] {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn vectors_match_the_checked_in_file() {
    let generated = generate();
    if std::env::var_os("CHAINMAIL_WRITE_VECTORS").is_some() {
        let json = serde_json::to_string_pretty(&generated).unwrap();
        std::fs::write(PATH, json + "\n").unwrap();
    }
    let text = std::fs::read_to_string(PATH).expect("tests/vectors/packet_v1.json is checked in");
    let stored: VectorFile = serde_json::from_str(&text).unwrap();
    assert_eq!(
        stored, generated,
        "packet format output changed: see the module docs"
    );
}

/// Uses only the file (not the generator): the stored bytes decode,
/// re-encode identically and process to the stored results.
#[test]
fn stored_bytes_decode_encode_and_process() {
    let text = std::fs::read_to_string(PATH).expect("tests/vectors/packet_v1.json is checked in");
    let file: VectorFile = serde_json::from_str(&text).unwrap();
    let epoch = Epoch(file.epoch);
    let mailbox = MailboxId(unhex(&file.mailbox));
    let secrets: Vec<MixSecretKey> = file
        .nodes
        .iter()
        .map(|n| {
            let key = MixSecretKey::from_bytes(epoch, unhex(&n.secret));
            assert_eq!(hex::encode(key.public().0), n.public);
            key
        })
        .collect();
    let ids: Vec<NodeId> = file.nodes.iter().map(|n| NodeId(unhex(&n.id))).collect();

    for v in &file.packets {
        let bytes = hex::decode(&v.packet).unwrap();
        let packet = Packet::from_bytes(&bytes).unwrap();
        assert_eq!(&packet.as_bytes()[..], &bytes[..], "decode → encode");
        let (steps, last) = run(&secrets[..v.hops], packet);
        assert_eq!(steps, v.steps);
        let Action::Deliver {
            mailbox: m,
            message,
            delay_ms,
        } = last
        else {
            panic!("deliver")
        };
        assert_eq!((m, delay_ms), (mailbox, v.delays_ms[v.hops - 1]));
        assert_eq!(hex::encode(&message[..]), v.delivered);
        assert!(v.delivered.starts_with(&v.message));
    }
    for v in &file.surbs {
        let surb_bytes = hex::decode(&v.surb).unwrap();
        let surb = Surb::from_bytes(&surb_bytes).unwrap();
        assert_eq!(surb.to_bytes().to_vec(), surb_bytes, "SURB decode → encode");
        assert_eq!(surb.first_hop(), ids[0]);
        let secret_bytes = hex::decode(&v.secrets).unwrap();
        let surb_secrets = SurbSecrets::from_bytes(&secret_bytes).unwrap();
        assert_eq!(
            surb_secrets.to_bytes().to_vec(),
            secret_bytes,
            "secrets decode → encode"
        );
        let reply = surb
            .into_reply(&hex::decode(&v.reply_message).unwrap())
            .unwrap();
        assert_eq!(hex::encode(reply.as_bytes()), v.reply_packet);
        let (steps, last) = run(&secrets[..v.hops], reply);
        assert_eq!(steps, v.steps);
        let Action::DeliverReply {
            surb_id,
            payload,
            mailbox: m,
            ..
        } = last
        else {
            panic!("reply")
        };
        assert_eq!((surb_id, m), (SurbId(unhex(&v.surb_id)), mailbox));
        assert_eq!(hex::encode(&payload[..]), v.delivered_payload);
        assert_eq!(
            hex::encode(&surb_secrets.open(surb_id, &payload).unwrap()[..]),
            v.opened
        );
        assert!(v.opened.starts_with(&v.reply_message));
    }
}
