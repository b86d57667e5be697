//! Test vectors of the canonical encoding: fixed inputs give exactly the
//! bytes below, the bytes decode and encode back to themselves, and the
//! layouts documented in the crate README rebuild them by hand.
//!
//! The only randomness (the genesis salt, the rendezvous nonce) comes from
//! [`FixedRng`], which repeats one byte; Ed25519 signatures are
//! deterministic. After a deliberate format change, print the new table
//! with `CHAINMAIL_PRINT_VECTORS=1 cargo test -p chainmail-chain --test
//! vectors -- --nocapture` and bump [`GENESIS_VERSION`] or the tag of what
//! changed.

use std::convert::Infallible;

use chainmail_chain::{
    Block, Body, Chain, EpochKey, GENESIS_VERSION, Genesis, Hash, Letter, MemberKeys, MemberSecret,
    PeerEntry, Policy, Record, Role, State, SyncRequest, SyncResponse, WRAP_LEN, Want, open_peers,
    rendezvous_key, seal_peers, sync_tag, topic_suffix,
};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha512_256};

/// A generator that yields one byte over and over (fixed inputs only).
struct FixedRng(u8);

impl rand_core::TryRng for FixedRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(u32::from_ne_bytes([self.0; 4]))
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(u64::from_ne_bytes([self.0; 8]))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        dst.fill(self.0);
        Ok(())
    }
}

impl rand_core::TryCryptoRng for FixedRng {}

/// Created at 2023-11-14T22:13:20Z.
const CREATED: u64 = 1_700_000_000_000;

/// Ed25519 seed 0xa1…, X25519 secret 0xa2….
fn ann() -> MemberSecret {
    let mut b = [0xa1; 64];
    b[32..].fill(0xa2);
    MemberSecret::from_bytes(&b)
}

/// Ed25519 seed 0xb1…, X25519 secret 0xb2….
fn bob() -> MemberSecret {
    let mut b = [0xb1; 64];
    b[32..].fill(0xb2);
    MemberSecret::from_bytes(&b)
}

/// Salt 0x5a…, creator "ann", community "garden", default policy
/// (post rank member, 256 members).
fn genesis() -> Genesis {
    Genesis::create(
        &mut FixedRng(0x5a),
        &ann(),
        "ann",
        "garden",
        Policy::default(),
        CREATED,
    )
    .unwrap()
}

/// One record of each kind, in tag order (1 to 8), anchored at the
/// genesis, dated one second after it. Bob leaves; Ann does the rest.
fn records(g: &Genesis) -> Vec<(&'static str, Record)> {
    let c = g.id();
    let bob_id = bob().id();
    let rec = |who: &MemberSecret, body| Record::sign(who, c, c, CREATED + 1_000, body);
    let message = rec(
        &ann(),
        Body::Message {
            key_id: c,
            nonce: [0x24; 24],
            sealed: b"sixteen-byte tag and text".to_vec(),
        },
    );
    let mut wraps = vec![(ann().id(), [0x01; WRAP_LEN]), (bob_id, [0x02; WRAP_LEN])];
    wraps.sort();
    vec![
        (
            "record_add",
            rec(
                &ann(),
                Body::Add {
                    member: bob().public(),
                    name: "bob".into(),
                },
            ),
        ),
        (
            "record_remove",
            rec(&ann(), Body::Remove { member: bob_id }),
        ),
        ("record_ban", rec(&ann(), Body::Ban { member: bob_id })),
        (
            "record_set_role",
            rec(
                &ann(),
                Body::SetRole {
                    member: bob_id,
                    role: Role::Moderator,
                },
            ),
        ),
        (
            "record_redact",
            rec(
                &ann(),
                Body::Redact {
                    record: message.id(),
                },
            ),
        ),
        ("record_message", message),
        (
            "record_rotate_key",
            rec(
                &ann(),
                Body::RotateKey {
                    epoch: 1,
                    ephemeral: [0xe0; 32],
                    wraps,
                },
            ),
        ),
        ("record_leave", rec(&bob(), Body::Leave)),
    ]
}

/// Block 1: Ann adds Bob and rotates the key for both.
fn block(g: &Genesis) -> Block {
    let all = records(g);
    let pick = |name| all.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    let records = vec![pick("record_add"), pick("record_rotate_key")];
    let mut state = State::genesis(g);
    for r in &records {
        state.check(r, None).unwrap();
        state.apply(r);
    }
    let mut b = Block {
        community: g.id(),
        height: 1,
        parent: g.id(),
        producer: ann().id(),
        timestamp: CREATED + 2_000,
        state_hash: state.hash(),
        records,
        signature: [0; 64],
    };
    b.sign(&ann());
    b
}

fn peers() -> Vec<PeerEntry> {
    vec![PeerEntry {
        peer: vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20],
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        published: CREATED + 3_000,
    }]
}

const PERIOD: u64 = 472_222;

fn epoch_key() -> EpochKey {
    EpochKey::from_bytes([0x42; 32])
}

/// Every vector: (name, hex of the actual bytes).
fn actual() -> Vec<(&'static str, String)> {
    let g = genesis();
    let c = g.id();
    let mut out = vec![
        ("genesis_canonical", hex::encode(g.canonical())),
        ("community_id", hex::encode(c)),
        ("genesis_encoded", hex::encode(g.encode())),
        ("genesis_state_hash", hex::encode(State::genesis(&g).hash())),
    ];
    for (name, r) in records(&g) {
        out.push((name, hex::encode(r.encode())));
        out.push((id_name(name), hex::encode(r.id())));
    }
    let b = block(&g);
    out.push(("block", hex::encode(b.encode())));
    out.push(("block_id", hex::encode(b.id())));
    let req = SyncRequest::new(&bob(), &c, CREATED + 4_000, Want::After(vec![b.id(), c]));
    out.push(("sync_request_after", hex::encode(req.encode())));
    let req = SyncRequest::new(&bob(), &c, CREATED + 4_000, Want::Blocks(vec![b.id()]));
    out.push(("sync_request_blocks", hex::encode(req.encode())));
    out.push((
        "sync_response_blocks",
        hex::encode(SyncResponse::Blocks(vec![vec![0xb0, 0xb1], vec![0xb2]]).encode()),
    ));
    out.push((
        "sync_response_not_member",
        hex::encode(SyncResponse::NotMember.encode()),
    ));
    out.push((
        "sync_response_unknown",
        hex::encode(SyncResponse::Unknown.encode()),
    ));
    out.push((
        "sync_response_stale",
        hex::encode(SyncResponse::Stale.encode()),
    ));
    out.push(("sync_tag", hex::encode(sync_tag(&c))));
    out.push((
        "letter_invite",
        hex::encode(
            Letter::Invite {
                genesis: g.encode(),
                peers: peers(),
                token: [0x70; 16],
            }
            .encode(),
        ),
    ));
    out.push((
        "letter_join",
        hex::encode(
            Letter::Join {
                community: c,
                token: [0x70; 16],
                member: bob().public(),
                name: "bob".into(),
            }
            .encode(),
        ),
    ));
    let secret = epoch_key().rendezvous_secret(&c);
    out.push(("rendezvous_secret", hex::encode(secret)));
    out.push((
        "rendezvous_key",
        hex::encode(rendezvous_key(&c, &secret, PERIOD)),
    ));
    out.push(("topic_suffix", topic_suffix(&secret)));
    out.push((
        "rendezvous_record",
        hex::encode(seal_peers(&mut FixedRng(0x4e), &secret, PERIOD, &peers())),
    ));
    out
}

fn id_name(record: &str) -> &'static str {
    match record {
        "record_add" => "record_add_id",
        "record_remove" => "record_remove_id",
        "record_ban" => "record_ban_id",
        "record_set_role" => "record_set_role_id",
        "record_message" => "record_message_id",
        "record_redact" => "record_redact_id",
        "record_rotate_key" => "record_rotate_key_id",
        "record_leave" => "record_leave_id",
        _ => unreachable!(),
    }
}

fn expected(name: &str) -> Vec<u8> {
    let hex = EXPECTED
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no vector {name}"))
        .1;
    hex::decode(hex).unwrap()
}

#[test]
fn fixed_inputs_give_exactly_the_checked_in_bytes() {
    let actual = actual();
    if std::env::var_os("CHAINMAIL_PRINT_VECTORS").is_some() {
        println!("const EXPECTED: &[(&str, &str)] = &[");
        for (name, hex) in &actual {
            println!("    (\"{name}\", \"{hex}\"),");
        }
        println!("];");
    }
    assert_eq!(actual.len(), EXPECTED.len());
    for ((name, hex), (want_name, want_hex)) in actual.iter().zip(EXPECTED) {
        assert_eq!(name, want_name);
        assert_eq!(hex, want_hex, "vector {name}");
    }
}

#[test]
fn the_vectors_decode_and_encode_back() {
    let g = Genesis::decode(&expected("genesis_encoded")).unwrap();
    assert_eq!(g, genesis());
    assert_eq!(g.encode(), expected("genesis_encoded"));
    assert_eq!(g.canonical(), expected("genesis_canonical"));
    assert_eq!(g.id().to_vec(), expected("community_id"));
    assert_eq!(g.version, GENESIS_VERSION);

    for (name, want) in records(&g) {
        let bytes = expected(name);
        let r = Record::decode(&bytes).unwrap();
        assert_eq!(r, want, "{name}");
        assert_eq!(r.encode(), bytes, "{name}");
        assert_eq!(r.id().to_vec(), expected(id_name(name)), "{name}");
    }

    let bytes = expected("block");
    let b = Block::decode(&bytes).unwrap();
    assert_eq!(b, block(&g));
    assert_eq!(b.encode(), bytes);
    assert_eq!(b.id().to_vec(), expected("block_id"));
    // The vector block is a valid block 1 of the vector community.
    let mut chain = Chain::new(g.clone());
    chain.insert(b.clone(), CREATED + 2_000).unwrap();
    assert_eq!(chain.tip(), b.id());

    for name in ["sync_request_after", "sync_request_blocks"] {
        let bytes = expected(name);
        let req = SyncRequest::decode(&bytes).unwrap();
        assert_eq!(req.encode(), bytes);
        assert_eq!(req.member, bob().id());
        assert_eq!(req.tag.to_vec(), expected("sync_tag"));
    }
    assert_eq!(
        SyncRequest::decode(&expected("sync_request_after"))
            .unwrap()
            .want,
        Want::After(vec![b.id(), g.id()])
    );
    for (name, want) in [
        (
            "sync_response_blocks",
            SyncResponse::Blocks(vec![vec![0xb0, 0xb1], vec![0xb2]]),
        ),
        ("sync_response_not_member", SyncResponse::NotMember),
        ("sync_response_unknown", SyncResponse::Unknown),
        ("sync_response_stale", SyncResponse::Stale),
    ] {
        let bytes = expected(name);
        assert_eq!(SyncResponse::decode(&bytes).unwrap(), want);
        assert_eq!(want.encode(), bytes);
    }

    for name in ["letter_invite", "letter_join"] {
        let bytes = expected(name);
        let letter = Letter::decode(&bytes).unwrap();
        assert_eq!(letter.encode(), bytes);
        match letter {
            Letter::Invite {
                genesis, peers: p, ..
            } => {
                assert_eq!(Genesis::decode(&genesis).unwrap(), g);
                assert_eq!(p, peers());
            }
            Letter::Join {
                community, member, ..
            } => {
                assert_eq!(community, g.id());
                assert_eq!(member, bob().public());
            }
        }
    }

    let secret: Hash = expected("rendezvous_secret").try_into().unwrap();
    assert_eq!(
        open_peers(&secret, PERIOD, &expected("rendezvous_record")).unwrap(),
        peers()
    );
}

// ---- By hand, from the layouts in the README ---------------------------------

fn sha512_256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha512_256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// `H(domain, parts)`: SHA-512/256 over the domain and each part, each
/// preceded by its length as a u32 big-endian.
fn domain_hash(domain: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&(domain.len() as u32).to_be_bytes());
    bytes.extend_from_slice(domain.as_bytes());
    for p in parts {
        bytes.extend_from_slice(&(p.len() as u32).to_be_bytes());
        bytes.extend_from_slice(p);
    }
    sha512_256(&[&bytes])
}

fn var(v: &[u8]) -> Vec<u8> {
    let mut out = (v.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(v);
    out
}

fn verify(key: &[u8; 32], domain: &str, digest: &[u8; 32], signature: &[u8]) {
    let key = VerifyingKey::from_bytes(key).unwrap();
    let mut message = domain.as_bytes().to_vec();
    message.extend_from_slice(digest);
    key.verify_strict(&message, &Signature::from_slice(signature).unwrap())
        .unwrap();
}

#[test]
fn the_genesis_layout_rebuilds_the_vector() {
    let keys: MemberKeys = ann().public();
    let mut canonical = Vec::new();
    canonical.extend_from_slice(b"CMG\x01");
    canonical.extend_from_slice(&1u16.to_be_bytes());
    canonical.extend_from_slice(&[0x5a; 32]);
    canonical.extend_from_slice(&keys.sign);
    canonical.extend_from_slice(&keys.kem);
    canonical.extend_from_slice(&var(b"ann"));
    canonical.extend_from_slice(&var(b"garden"));
    canonical.push(0); // post rank: member
    canonical.extend_from_slice(&256u32.to_be_bytes());
    canonical.extend_from_slice(&CREATED.to_be_bytes());
    assert_eq!(canonical, expected("genesis_canonical"));
    // The community id is the plain SHA-512/256 of those bytes.
    let id = sha512_256(&[&canonical]);
    assert_eq!(id.to_vec(), expected("community_id"));
    // The encoding appends Ed25519("chainmail genesis\0" ‖ id).
    let encoded = expected("genesis_encoded");
    assert_eq!(&encoded[..canonical.len()], &canonical[..]);
    verify(
        &keys.sign,
        "chainmail genesis\0",
        &id,
        &encoded[canonical.len()..],
    );
}

#[test]
fn the_record_layout_rebuilds_the_vectors() {
    let c: [u8; 32] = expected("community_id").try_into().unwrap();
    let ann = ann().id();
    let bob = bob().id();
    let head = |issuer: &[u8; 32], tag: u8| {
        let mut v = Vec::new();
        v.extend_from_slice(&c);
        v.extend_from_slice(issuer);
        v.extend_from_slice(&c); // anchor: the genesis
        v.extend_from_slice(&(CREATED + 1_000).to_be_bytes());
        v.push(tag);
        v
    };
    let message_id = expected("record_message_id");
    let mut cases: Vec<(&str, &[u8; 32], Vec<u8>)> = Vec::new();
    let mut add = head(&ann, 1);
    add.extend_from_slice(&bob);
    add.extend_from_slice(&crate::bob().public().kem);
    add.extend_from_slice(&var(b"bob"));
    cases.push(("record_add", &ann, add));
    let mut remove = head(&ann, 2);
    remove.extend_from_slice(&bob);
    cases.push(("record_remove", &ann, remove));
    let mut ban = head(&ann, 3);
    ban.extend_from_slice(&bob);
    cases.push(("record_ban", &ann, ban));
    let mut set_role = head(&ann, 4);
    set_role.extend_from_slice(&bob);
    set_role.push(1); // moderator
    cases.push(("record_set_role", &ann, set_role));
    let mut message = head(&ann, 5);
    message.extend_from_slice(&c); // key id: the genesis key
    message.extend_from_slice(&[0x24; 24]);
    message.extend_from_slice(&var(b"sixteen-byte tag and text"));
    cases.push(("record_message", &ann, message));
    let mut redact = head(&ann, 6);
    redact.extend_from_slice(&message_id);
    cases.push(("record_redact", &ann, redact));
    let mut rotate = head(&ann, 7);
    rotate.extend_from_slice(&1u32.to_be_bytes());
    rotate.extend_from_slice(&[0xe0; 32]);
    rotate.extend_from_slice(&2u32.to_be_bytes());
    let mut wraps = [(ann, 0x01u8), (bob, 0x02u8)];
    wraps.sort();
    for (id, fill) in wraps {
        rotate.extend_from_slice(&id);
        rotate.extend_from_slice(&[fill; WRAP_LEN]);
    }
    cases.push(("record_rotate_key", &ann, rotate));
    cases.push(("record_leave", &bob, head(&bob, 8)));
    for (name, issuer, unsigned) in cases {
        let bytes = expected(name);
        assert_eq!(&bytes[..unsigned.len()], &unsigned[..], "{name}");
        assert_eq!(bytes.len(), unsigned.len() + 64, "{name}");
        let id = domain_hash("chainmail record", &[&unsigned]);
        assert_eq!(id.to_vec(), expected(id_name(name)), "{name}");
        verify(issuer, "chainmail record\0", &id, &bytes[unsigned.len()..]);
    }
}

#[test]
fn the_block_layout_rebuilds_the_vector() {
    let c = expected("community_id");
    let bytes = expected("block");
    let mut unsigned = Vec::new();
    unsigned.extend_from_slice(&c);
    unsigned.extend_from_slice(&1u64.to_be_bytes());
    unsigned.extend_from_slice(&c); // parent: the genesis
    unsigned.extend_from_slice(&ann().id());
    unsigned.extend_from_slice(&(CREATED + 2_000).to_be_bytes());
    let state_hash = &bytes[unsigned.len()..unsigned.len() + 32];
    unsigned.extend_from_slice(state_hash);
    unsigned.extend_from_slice(&2u32.to_be_bytes());
    for name in ["record_add", "record_rotate_key"] {
        unsigned.extend_from_slice(&var(&expected(name)));
    }
    assert_eq!(&bytes[..unsigned.len()], &unsigned[..]);
    assert_eq!(bytes.len(), unsigned.len() + 64);
    let id = domain_hash("chainmail block", &[&unsigned]);
    assert_eq!(id.to_vec(), expected("block_id"));
    verify(
        &ann().id(),
        "chainmail block\0",
        &id,
        &bytes[unsigned.len()..],
    );

    // The state hash: epoch, key id, then the roster and the bans in id
    // order.
    let mut state = Vec::new();
    state.extend_from_slice(&1u32.to_be_bytes());
    state.extend_from_slice(&expected("record_rotate_key_id"));
    state.extend_from_slice(&2u32.to_be_bytes());
    let mut roster = [(ann(), "ann", 3u8), (bob(), "bob", 0u8)];
    roster.sort_by_key(|(s, _, _)| s.id());
    for (who, name, role) in roster {
        state.extend_from_slice(&who.id());
        state.extend_from_slice(&who.public().kem);
        state.push(role);
        state.extend_from_slice(&var(name.as_bytes()));
    }
    state.extend_from_slice(&0u32.to_be_bytes());
    assert_eq!(domain_hash("chainmail state", &[&state]), state_hash);
}

#[test]
fn the_sync_letter_and_rendezvous_layouts_rebuild_the_vectors() {
    let c: [u8; 32] = expected("community_id").try_into().unwrap();
    let block_id = expected("block_id");
    // Sync tag and request.
    let tag = domain_hash("chainmail sync", &[&c]);
    assert_eq!(tag.to_vec(), expected("sync_tag"));
    let mut unsigned = tag.to_vec();
    unsigned.extend_from_slice(&bob().id());
    unsigned.extend_from_slice(&(CREATED + 4_000).to_be_bytes());
    unsigned.push(1); // after a locator
    unsigned.extend_from_slice(&2u32.to_be_bytes());
    unsigned.extend_from_slice(&block_id);
    unsigned.extend_from_slice(&c);
    let bytes = expected("sync_request_after");
    assert_eq!(&bytes[..unsigned.len()], &unsigned[..]);
    let digest = domain_hash("chainmail sync request", &[&unsigned]);
    verify(
        &bob().id(),
        "chainmail sync\0",
        &digest,
        &bytes[unsigned.len()..],
    );
    // Sync responses.
    let mut blocks = vec![0u8];
    blocks.extend_from_slice(&2u32.to_be_bytes());
    blocks.extend_from_slice(&var(&[0xb0, 0xb1]));
    blocks.extend_from_slice(&var(&[0xb2]));
    assert_eq!(blocks, expected("sync_response_blocks"));
    assert_eq!(expected("sync_response_not_member"), [1]);
    assert_eq!(expected("sync_response_unknown"), [2]);
    assert_eq!(expected("sync_response_stale"), [3]);

    // Peer entries, as in invites and rendezvous records.
    let p = &peers()[0];
    let mut entries = 1u32.to_be_bytes().to_vec();
    entries.extend_from_slice(&var(&p.peer));
    entries.extend_from_slice(&p.published.to_be_bytes());
    entries.extend_from_slice(&1u32.to_be_bytes());
    entries.extend_from_slice(&var(p.addrs[0].as_bytes()));
    let mut invite = vec![1u8];
    invite.extend_from_slice(&var(&expected("genesis_encoded")));
    invite.extend_from_slice(&[0x70; 16]);
    invite.extend_from_slice(&entries);
    assert_eq!(invite, expected("letter_invite"));
    let mut join = vec![2u8];
    join.extend_from_slice(&c);
    join.extend_from_slice(&[0x70; 16]);
    join.extend_from_slice(&bob().id());
    join.extend_from_slice(&bob().public().kem);
    join.extend_from_slice(&var(b"bob"));
    assert_eq!(join, expected("letter_join"));

    // Rendezvous derivations.
    let secret = domain_hash("chainmail rendezvous secret", &[&c, &[0x42; 32]]);
    assert_eq!(secret.to_vec(), expected("rendezvous_secret"));
    let key = sha512_256(&[b"rv", &c, &secret, &PERIOD.to_be_bytes()]);
    assert_eq!(key.to_vec(), expected("rendezvous_key"));
    let topic = hex::encode(&domain_hash("chainmail topic", &[&secret])[..16]);
    assert_eq!(topic, topic_suffix(&secret));
    let record = expected("rendezvous_record");
    assert_eq!(&record[..24], &[0x4e; 24]);
    // nonce ‖ XChaCha20-Poly1305(key, nonce, entries, aad = period).
    assert_eq!(record.len(), 24 + entries.len() + 16);
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    let seal_key = domain_hash(
        "chainmail rendezvous seal",
        &[&secret, &PERIOD.to_be_bytes()],
    );
    let plain = chacha20poly1305::XChaCha20Poly1305::new((&seal_key).into())
        .decrypt(
            &chacha20poly1305::XNonce::from(<[u8; 24]>::try_from(&record[..24]).unwrap()),
            Payload {
                msg: &record[24..],
                aad: &PERIOD.to_be_bytes(),
            },
        )
        .unwrap();
    assert_eq!(plain, entries);
}

/// The checked-in vectors: (name, hex). Generated once from the inputs
/// above; see the module documentation.
const EXPECTED: &[(&str, &str)] = &[
    (
        "genesis_canonical",
        "434d470100015a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5abc7cbcb5636375fa1d82434d466724d92377f53b980695dd49d26d0ce12205a53c5c6ce2dd99e10d2c3de05d773aa15e3e6d971ed4e41389c93b4bbdda17721200000003616e6e0000000667617264656e00000001000000018bcfe56800",
    ),
    (
        "community_id",
        "02bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf62",
    ),
    (
        "genesis_encoded",
        "434d470100015a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5abc7cbcb5636375fa1d82434d466724d92377f53b980695dd49d26d0ce12205a53c5c6ce2dd99e10d2c3de05d773aa15e3e6d971ed4e41389c93b4bbdda17721200000003616e6e0000000667617264656e00000001000000018bcfe56800ff0491cbd1dda2263ef7f75e20af75cd3bd7b9e1de5f70dd5e964968b7256afbc33b83f9a1f00a439c8052711a862056c6896588f375b930610c3ddc62535904",
    ),
    (
        "genesis_state_hash",
        "83d8f62ef1d0354537c8dae031781a1c264bc7e4574036c916394d59dae7d2f3",
    ),
    (
        "record_add",
        "02bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf62bc7cbcb5636375fa1d82434d466724d92377f53b980695dd49d26d0ce12205a502bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf620000018bcfe56be8014721b5b632272e65a68dda7ac25b4185f8b01916db185c14287db92e2b770faedb48257e1237976a74ad8cfedca00213408fe89ac6251f1b930245f242b5c31a00000003626f62b3a24ef2bdc234adcfebf0a8740195ab9ee6b9b8ef5dcf6d4bdd83213fe8e38e9cfdd7331a08b8f426143df241186cb21df779a23ff8530773d13281be3ce607",
    ),
    (
        "record_add_id",
        "5a8dcfeb986f313180cdf0b9d17a7ce906a6235847e6769b61b41b7cd00a7e5f",
    ),
    (
        "record_remove",
        "02bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf62bc7cbcb5636375fa1d82434d466724d92377f53b980695dd49d26d0ce12205a502bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf620000018bcfe56be8024721b5b632272e65a68dda7ac25b4185f8b01916db185c14287db92e2b770fae6acaa6f208c7641712e90f19b1f7f806bd56875bc8d7a26da255ca676e12f3645015071778f4481bc723eeb0c3b3abef725ae58f74716b0b04a37a7001026505",
    ),
    (
        "record_remove_id",
        "9bdfd774ac7e21ac04c4eccbca0b02a42ac5c4e2d23c2a4860568d3c1c94e8c5",
    ),
    (
        "record_ban",
        "02bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf62bc7cbcb5636375fa1d82434d466724d92377f53b980695dd49d26d0ce12205a502bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf620000018bcfe56be8034721b5b632272e65a68dda7ac25b4185f8b01916db185c14287db92e2b770fae481076c20311c46bc12d3435bca9de31a7776d8f22154582ecb89772b2490c9b26ebdfa2f7c3b48648ddd735c612e3f2b73dad1d70738e2e4fd8e27fc601c404",
    ),
    (
        "record_ban_id",
        "9ad4914a9cfc75a7e14a46a880540913a699cb686a9c88c459623b2c89f5848a",
    ),
    (
        "record_set_role",
        "02bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf62bc7cbcb5636375fa1d82434d466724d92377f53b980695dd49d26d0ce12205a502bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf620000018bcfe56be8044721b5b632272e65a68dda7ac25b4185f8b01916db185c14287db92e2b770fae01bcb805464553fd71c37717364cc1157b9167ae7f91fdb2c644b31e114dea108cbde0f4554b0a2007038b3fac5daa0836a4e6a5c0c489258da5df5e3800ac550f",
    ),
    (
        "record_set_role_id",
        "b6a36d8a4b2e204d9478d2f9e5111a464c3480d34d7d6357d82566c7983bbc78",
    ),
    (
        "record_redact",
        "02bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf62bc7cbcb5636375fa1d82434d466724d92377f53b980695dd49d26d0ce12205a502bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf620000018bcfe56be80639921ffadd5320efe3f77a62641791190824c9c65fe3b4760ff47dbcfb97f34199b8fa8b0aebd4b898ee15a3e18e6dc7492f689f205b5ccd864e67959eed51bcd048e37dc23094178730073ed089981ecd1988f1715c7ecabad1ec2e354a020e",
    ),
    (
        "record_redact_id",
        "b6cdf36b95e052855add9975bc312588cce2eaeb681e8c72232d561cd9886009",
    ),
    (
        "record_message",
        "02bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf62bc7cbcb5636375fa1d82434d466724d92377f53b980695dd49d26d0ce12205a502bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf620000018bcfe56be80502bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf62242424242424242424242424242424242424242424242424000000197369787465656e2d627974652074616720616e642074657874fa0986a2b81a28a639e296435e67b8fa0dc91f98a8342732f3a5ac6c50bb2fa62fa87587619dfa0bf70e6b92ed485eae964b09530c77d2393609bf696cb97f03",
    ),
    (
        "record_message_id",
        "39921ffadd5320efe3f77a62641791190824c9c65fe3b4760ff47dbcfb97f341",
    ),
    (
        "record_rotate_key",
        "02bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf62bc7cbcb5636375fa1d82434d466724d92377f53b980695dd49d26d0ce12205a502bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf620000018bcfe56be80700000001e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0000000024721b5b632272e65a68dda7ac25b4185f8b01916db185c14287db92e2b770fae020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202bc7cbcb5636375fa1d82434d466724d92377f53b980695dd49d26d0ce12205a5010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101d3eeefcbdb7c2efa01b1616c6d3a4f7248f8b8152c2f03e87142b9b9d39de2a3f636a3b054c5b8292321b7540e35da3fd78060e7b01f1faaa3c1fa2aeaa80702",
    ),
    (
        "record_rotate_key_id",
        "c837500ce8bdbf63f7080ebe9f2aa9bd1123a008e20830c2b8bd3beedd6959d0",
    ),
    (
        "record_leave",
        "02bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf624721b5b632272e65a68dda7ac25b4185f8b01916db185c14287db92e2b770fae02bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf620000018bcfe56be808661987f8bf17b4c9d4325e12df7b49b00aecde311ea87d05849679d8da634a5187446365e2d391b39952f718c0656864d2940f47cca3049e74c6ec7e39cb6203",
    ),
    (
        "record_leave_id",
        "ab132cdea3a2341ec245eb900439d3ad59b0381c219745300c43c85b4f5b348d",
    ),
    (
        "block",
        "02bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf62000000000000000102bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf62bc7cbcb5636375fa1d82434d466724d92377f53b980695dd49d26d0ce12205a50000018bcfe56fd0333ceacc00d4b0f5ed6164b54cdcec6095554d686eb2ebc9b20c523d8e55264c00000002000000f002bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf62bc7cbcb5636375fa1d82434d466724d92377f53b980695dd49d26d0ce12205a502bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf620000018bcfe56be8014721b5b632272e65a68dda7ac25b4185f8b01916db185c14287db92e2b770faedb48257e1237976a74ad8cfedca00213408fe89ac6251f1b930245f242b5c31a00000003626f62b3a24ef2bdc234adcfebf0a8740195ab9ee6b9b8ef5dcf6d4bdd83213fe8e38e9cfdd7331a08b8f426143df241186cb21df779a23ff8530773d13281be3ce6070000017102bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf62bc7cbcb5636375fa1d82434d466724d92377f53b980695dd49d26d0ce12205a502bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf620000018bcfe56be80700000001e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0000000024721b5b632272e65a68dda7ac25b4185f8b01916db185c14287db92e2b770fae020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202bc7cbcb5636375fa1d82434d466724d92377f53b980695dd49d26d0ce12205a5010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101d3eeefcbdb7c2efa01b1616c6d3a4f7248f8b8152c2f03e87142b9b9d39de2a3f636a3b054c5b8292321b7540e35da3fd78060e7b01f1faaa3c1fa2aeaa80702d941610ad2600ed720989f42b3c9128aadbc1cafefb6fb480873d62a79a0555ed22778caff8470bc3ec1a7da299d9676e55a6e8fc933be938b57e171ae69350c",
    ),
    (
        "block_id",
        "02e6a8690a587bc613cdffe011b400b5fc9cfe4840874c01e9c2d7bbdf524543",
    ),
    (
        "sync_request_after",
        "49fa06b9486d28fbe50556b1e7de0ba64d0a50a9b2299d86449ea1be9a87cb374721b5b632272e65a68dda7ac25b4185f8b01916db185c14287db92e2b770fae0000018bcfe577a0010000000202e6a8690a587bc613cdffe011b400b5fc9cfe4840874c01e9c2d7bbdf52454302bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf6233bce5f0e521898acf6c216d7efed2d5a3b54efa77a1c066aa7bb95fedb3414976a311b35c8a994711510eafba38d7c6ec28f9aa90914d0186a29696fa33d00a",
    ),
    (
        "sync_request_blocks",
        "49fa06b9486d28fbe50556b1e7de0ba64d0a50a9b2299d86449ea1be9a87cb374721b5b632272e65a68dda7ac25b4185f8b01916db185c14287db92e2b770fae0000018bcfe577a0020000000102e6a8690a587bc613cdffe011b400b5fc9cfe4840874c01e9c2d7bbdf52454335a349d12f2210e46382ffbb997ed3e1f622f57a61fb6f944de8bd0e423b9e0725d1ccf37469d075fb342daeb72df10df74a132920ad64f07fdbf0025d9c380d",
    ),
    ("sync_response_blocks", "000000000200000002b0b100000001b2"),
    ("sync_response_not_member", "01"),
    ("sync_response_unknown", "02"),
    ("sync_response_stale", "03"),
    (
        "sync_tag",
        "49fa06b9486d28fbe50556b1e7de0ba64d0a50a9b2299d86449ea1be9a87cb37",
    ),
    (
        "letter_invite",
        "01000000c4434d470100015a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5abc7cbcb5636375fa1d82434d466724d92377f53b980695dd49d26d0ce12205a53c5c6ce2dd99e10d2c3de05d773aa15e3e6d971ed4e41389c93b4bbdda17721200000003616e6e0000000667617264656e00000001000000018bcfe56800ff0491cbd1dda2263ef7f75e20af75cd3bd7b9e1de5f70dd5e964968b7256afbc33b83f9a1f00a439c8052711a862056c6896588f375b930610c3ddc625359047070707070707070707070707070707000000001000000060024080112200000018bcfe573b800000001000000172f6970342f3132372e302e302e312f7463702f34303031",
    ),
    (
        "letter_join",
        "0202bfa82a3755c9c8ef71c051914d6e9a649d37754572a19e5da43fa60f2caf62707070707070707070707070707070704721b5b632272e65a68dda7ac25b4185f8b01916db185c14287db92e2b770faedb48257e1237976a74ad8cfedca00213408fe89ac6251f1b930245f242b5c31a00000003626f62",
    ),
    (
        "rendezvous_secret",
        "57bd9e50668229a5b7f37e128792395c2ffe1554feb52a1a45bde98d04c5a606",
    ),
    (
        "rendezvous_key",
        "3ba67e6f87b4171411642f78e7a31e1131ab1082c037a469b9e9da6598312668",
    ),
    ("topic_suffix", "6fd755af5e3f1c3fd64d291a41034053"),
    (
        "rendezvous_record",
        "4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4ef8a24a15bbea9a132633bbee0a20e8246c6c0c77ecca2ffe046a69f360686b9c464705bb8acb8272446f1cdb326ebe68276a238f8b6e1ac75f15c844bc5f87c30d954ef480",
    ),
];
