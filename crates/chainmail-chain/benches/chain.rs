//! Chain validation throughput next to raw Ed25519 verification of the same
//! signatures, and a sync of a 10,000-block chain from genesis, in one run
//! on one machine.
//!
//! Run: `cargo bench -p chainmail-chain --bench chain` (add `-- --quick`,
//! or set `CHAINMAIL_BENCH_QUICK=1`, for a short smoke run).
//!
//! Validation: blocks of 100 posts from 8 members, as a node receives
//! them: `Block::decode` (block and record signatures, bounds) and
//! `Chain::insert` (anchors, duplicates, rights, state hash, fork choice).
//! The baseline is ed25519-dalek alone: key decompression and
//! `verify_strict` of the same signatures over the same messages (101 per
//! block). Cases are timed in interleaved rounds; the median is reported.
//!
//! Sync: a fresh member (added in block 1) fetches the whole chain from a
//! member node through `sync_request` / `answer_sync` /
//! `handle_sync_response` rounds, each response at most 1 MiB (the default
//! `max_response_size` of chainmail-net).
//!
//! Sync over loopback: the same, between two real chainmail-net swarms on
//! 127.0.0.1 (TCP, noise, yamux, the request-response protocol), best of
//! two fresh members. Baseline, in the same run on the same connection:
//! the same requests and the very same response bytes moved without
//! anyone encoding, decoding or validating anything (the transfer alone).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use chainmail_chain::{
    Block, BlockId, Body, Chain, Community, Config, Genesis, MemberSecret, Policy, Record, Saved,
    SyncRequest, WRAP_LEN,
};
use ed25519_dalek::{Signature, VerifyingKey};
use rand::SeedableRng;
use rand::rngs::StdRng;

const T0: u64 = 1_700_000_000_000;
/// The receivers' clock: after every block of the longest chain here.
const NOW: u64 = T0 + 100_000_000;
/// Posts are 100 bytes of text: 116 bytes sealed.
const SEALED: usize = 116;

fn secret(n: u32) -> MemberSecret {
    let mut b = [0u8; 64];
    b[..4].copy_from_slice(&n.to_be_bytes());
    b[32..36].copy_from_slice(&n.to_be_bytes());
    MemberSecret::from_bytes(&b)
}

/// Builds a community's chain: the owner produces every block.
struct Forge {
    chain: Chain,
    owner: MemberSecret,
    posters: Vec<MemberSecret>,
    blocks: Vec<Block>,
    next_member: u32,
}

impl Forge {
    /// A community whose block 1 adds `posters` members and `extra`.
    fn new(posters: u32, extra: &[&MemberSecret]) -> Forge {
        let owner = secret(0);
        let genesis = Genesis::create(
            &mut StdRng::seed_from_u64(1),
            &owner,
            "owner",
            "bench",
            Policy::default(),
            T0,
        )
        .unwrap();
        let posters: Vec<MemberSecret> = (1..=posters).map(secret).collect();
        let mut f = Forge {
            chain: Chain::new(genesis),
            owner,
            posters,
            blocks: Vec::new(),
            next_member: 1_000,
        };
        let g = f.chain.id();
        let mut records: Vec<Record> = f
            .posters
            .iter()
            .chain(extra.iter().copied())
            .enumerate()
            .map(|(i, m)| {
                Record::sign(
                    &f.owner,
                    g,
                    g,
                    T0,
                    Body::Add {
                        member: m.public(),
                        name: format!("member{i}"),
                    },
                )
            })
            .collect();
        records.push(f.rotation(g, &records));
        f.push(records);
        f
    }

    fn id(&self) -> [u8; 32] {
        self.chain.id()
    }

    /// The key rotation for the roster after `records` on the tip.
    fn rotation(&self, anchor: BlockId, records: &[Record]) -> Record {
        let mut state = self.chain.state().clone();
        for r in records {
            state.apply(r);
        }
        Record::sign(
            &self.owner,
            self.id(),
            anchor,
            T0,
            Body::RotateKey {
                epoch: state.epoch + 1,
                ephemeral: [9; 32],
                wraps: state
                    .members()
                    .keys()
                    .map(|m| (*m, [0; WRAP_LEN]))
                    .collect(),
            },
        )
    }

    /// Signs a block of `records` on the tip and stores it.
    fn push(&mut self, records: Vec<Record>) -> &Block {
        let parent = self.chain.tip();
        let mut state = self.chain.state().clone();
        for r in &records {
            state.apply(r);
        }
        let height = self.chain.height() + 1;
        let mut block = Block {
            community: self.id(),
            height,
            parent,
            producer: self.owner.id(),
            timestamp: T0 + height * 1_000,
            state_hash: state.hash(),
            records,
            signature: [0; 64],
        };
        block.sign(&self.owner);
        self.chain.insert(block.clone(), NOW).unwrap();
        self.blocks.push(block);
        self.blocks.last().unwrap()
    }

    /// A block of `n` posts, the posters taking turns.
    fn posts(&mut self, n: usize) {
        let tip = self.chain.tip();
        let key_id = self.chain.state().key_id;
        let height = self.chain.height() + 1;
        let records = (0..n)
            .map(|i| {
                let mut nonce = [0u8; 24];
                nonce[..8].copy_from_slice(&height.to_be_bytes());
                nonce[8..16].copy_from_slice(&(i as u64).to_be_bytes());
                Record::sign(
                    &self.posters[i % self.posters.len()],
                    self.id(),
                    tip,
                    T0 + height * 1_000,
                    Body::Message {
                        key_id,
                        nonce,
                        sealed: vec![i as u8; SEALED],
                    },
                )
            })
            .collect();
        self.push(records);
    }

    /// A block adding a member, with the key rotation it needs.
    fn admit(&mut self) {
        let tip = self.chain.tip();
        self.next_member += 1;
        let add = Record::sign(
            &self.owner,
            self.id(),
            tip,
            T0,
            Body::Add {
                member: secret(self.next_member).public(),
                name: format!("member{}", self.next_member),
            },
        );
        let rotation = self.rotation(tip, std::slice::from_ref(&add));
        self.push(vec![add, rotation]);
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn validation(quick: bool) {
    let (blocks, rounds) = if quick { (8, 3) } else { (40, 9) };
    let per_block = 100;
    let mut forge = Forge::new(8, &[]);
    for _ in 0..blocks {
        forge.posts(per_block);
    }
    let genesis = forge.chain.genesis().clone();
    let first = forge.blocks[0].clone();
    let encoded: Vec<Vec<u8>> = forge.blocks[1..].iter().map(Block::encode).collect();
    let decoded: Vec<Block> = forge.blocks[1..].to_vec();
    let records = blocks * per_block;
    // The signatures a receiver checks: (key, message, signature).
    let mut signed: Vec<([u8; 32], Vec<u8>, [u8; 64])> = Vec::new();
    for b in &decoded {
        let mut m = b"chainmail block\0".to_vec();
        m.extend_from_slice(&b.id());
        signed.push((b.producer, m, b.signature));
        for r in &b.records {
            let mut m = b"chainmail record\0".to_vec();
            m.extend_from_slice(&r.id());
            signed.push((r.issuer, m, r.signature));
        }
    }
    let fresh = || {
        let mut chain = Chain::new(genesis.clone());
        chain.insert(first.clone(), NOW).unwrap();
        chain
    };
    let mut full = Vec::new();
    let mut decode_only = Vec::new();
    let mut insert_only = Vec::new();
    let mut baseline = Vec::new();
    for _ in 0..rounds {
        let mut chain = fresh();
        let start = Instant::now();
        for bytes in &encoded {
            let block = Block::decode(bytes).unwrap();
            chain.insert(block, NOW).unwrap();
        }
        full.push(start.elapsed().as_secs_f64());
        assert_eq!(chain.height(), blocks as u64 + 1);

        let start = Instant::now();
        for bytes in &encoded {
            black_box(Block::decode(bytes).unwrap());
        }
        decode_only.push(start.elapsed().as_secs_f64());

        let mut chain = fresh();
        let copies = decoded.clone();
        let start = Instant::now();
        for block in copies {
            chain.insert(block, NOW).unwrap();
        }
        insert_only.push(start.elapsed().as_secs_f64());

        let start = Instant::now();
        for (key, message, signature) in &signed {
            let key = VerifyingKey::from_bytes(key).unwrap();
            key.verify_strict(message, &Signature::from_bytes(signature))
                .unwrap();
        }
        baseline.push(start.elapsed().as_secs_f64());
    }
    let (full, decode_only, insert_only, baseline) = (
        median(&mut full),
        median(&mut decode_only),
        median(&mut insert_only),
        median(&mut baseline),
    );
    println!(
        "validation: {blocks} blocks of {per_block} posts ({} signatures), median of {rounds} rounds",
        signed.len()
    );
    let line = |name: &str, t: f64| {
        println!(
            "  {name:<52} {:>8.1} ms  {:>9.0} records/s",
            t * 1e3,
            records as f64 / t
        );
    };
    line("decode + insert (what a node does)", full);
    line("  decode alone (signatures, bounds)", decode_only);
    line("  insert alone (rights, anchors, state hash)", insert_only);
    line("baseline: ed25519-dalek verify_strict, same sigs", baseline);
    println!(
        "  ratio baseline / decode + insert: {:.2} (1.00 = signature-bound)",
        baseline / full
    );
}

fn sync(quick: bool) {
    let length: u64 = if quick { 1_000 } else { 10_000 };
    let posts = 4;
    let joiner = secret(999);
    let build = Instant::now();
    let mut forge = Forge::new(8, &[&joiner]);
    while forge.chain.height() < length {
        if forge.chain.height() % 1_000 == 999 {
            forge.admit();
        } else {
            forge.posts(posts);
        }
    }
    let chain_bytes: usize = forge.blocks.iter().map(|b| b.encode().len()).sum();
    let records: usize = forge.blocks.iter().map(|b| b.records.len()).sum();
    let genesis = forge.chain.genesis().clone();
    let saved = Saved {
        secret: MemberSecret::from_bytes(&forge.owner.to_bytes()),
        keys: Vec::new(),
        pending: Vec::new(),
    };
    let mut responder = Community::restore(
        Config::default(),
        [1; 32],
        genesis.clone(),
        saved,
        forge.blocks.iter().cloned(),
        NOW,
    );
    assert_eq!(responder.chain().height(), length);
    let built = build.elapsed();

    let mut member = Community::join(Config::default(), [2; 32], genesis, joiner);
    let max_response = (1 << 20) - 64;
    let (mut rounds, mut sent, mut received, mut refused) = (0, 0, 0, 0);
    let start = Instant::now();
    loop {
        let request = member.sync_request(NOW);
        let decoded = SyncRequest::decode(&request).unwrap();
        let response = responder.answer_sync(NOW, &decoded, max_response).encode();
        assert!(response.len() <= 1 << 20);
        let progress = member.handle_sync_response(NOW, &response).unwrap();
        rounds += 1;
        sent += request.len();
        received += response.len();
        refused += progress.refused;
        if progress.received == 0 {
            break;
        }
    }
    let took = start.elapsed().as_secs_f64();
    assert_eq!(member.chain().tip(), responder.chain().tip());
    assert_eq!(refused, 0);
    assert!(member.is_member());
    println!(
        "sync from genesis: {length} blocks of {posts} posts (a member added every 1,000), \
         {:.1} MB of blocks (chain built in {:.1} s)",
        chain_bytes as f64 / 1e6,
        built.as_secs_f64()
    );
    println!("  rounds (requests)        {rounds:>10}");
    println!(
        "  bytes sent / received    {sent:>10} / {received} ({:.2}% over the blocks)",
        (received + sent - chain_bytes) as f64 / chain_bytes as f64 * 100.0
    );
    println!("  time                     {took:>10.2} s");
    println!("  blocks/s                 {:>10.0}", length as f64 / took);
    println!("  records/s                {:>10.0}", records as f64 / took);
    sync_over_loopback(responder, length);
}

/// What a responder answered, to move again as the baseline.
type Recorded = std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// First byte of a baseline request: "send recorded response n again".
const RAW: u8 = 0xff;

async fn start_node(seed: u8) -> (chainmail_net::NetHandle, chainmail_net::NetEvents, String) {
    use chainmail_net::{Net, NetConfig, NetEvent};
    let mut config = NetConfig::new("chainmail-bench-sync", [seed; 32]);
    config.listen_addrs = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    let (handle, mut events) = Net::spawn(config).unwrap();
    loop {
        if let Some(NetEvent::ListeningOn { addr }) = events.recv().await {
            let addr = format!("{addr}/p2p/{}", handle.local_peer_id());
            return (handle, events, addr);
        }
    }
}

fn sync_over_loopback(mut responder: Community, length: u64) {
    use chainmail_net::NetEvent;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let (server, mut server_events, server_addr) = start_node(1).await;
        let (client, mut client_events, _) = start_node(2).await;
        let genesis = responder.chain().genesis().clone();
        let tip = responder.chain().tip();
        let recorded: Recorded = Default::default();
        let record = recorded.clone();
        let serving = tokio::spawn(async move {
            while let Some(event) = server_events.recv().await {
                let NetEvent::RequestReceived { bytes, reply, .. } = event else {
                    continue;
                };
                let response = if bytes.first() == Some(&RAW) {
                    let n = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
                    record.lock().unwrap()[n].clone()
                } else {
                    let request = SyncRequest::decode(&bytes).unwrap();
                    let max = reply.max_response_size() - 64;
                    let response = responder.answer_sync(NOW, &request, max).encode();
                    let mut r = record.lock().unwrap();
                    if r.len() < 10_000 {
                        r.push(response.clone());
                    }
                    response
                };
                reply.send(response).unwrap();
            }
        });
        client.dial(server_addr.parse().unwrap()).await.unwrap();
        let server_peer = server.local_peer_id();
        loop {
            if let Some(NetEvent::PeerConnected { peer }) = client_events.recv().await
                && peer == server_peer
            {
                break;
            }
        }
        tokio::spawn(async move { while client_events.recv().await.is_some() {} });

        let mut best_sync = f64::MAX;
        let (mut rounds, mut sent, mut received) = (0usize, 0usize, 0usize);
        let mut request_sizes = Vec::new();
        for _ in 0..2 {
            recorded.lock().unwrap().clear();
            request_sizes.clear();
            let mut member =
                Community::join(Config::default(), [3; 32], genesis.clone(), secret(999));
            (rounds, sent, received) = (0, 0, 0);
            let start = Instant::now();
            loop {
                let request = member.sync_request(NOW);
                request_sizes.push(request.len());
                sent += request.len();
                let response = client
                    .request(
                        server_peer,
                        chainmail_net::RequestKind::CommunitySync,
                        request,
                    )
                    .await
                    .unwrap();
                received += response.len();
                rounds += 1;
                let progress = member.handle_sync_response(NOW, &response).unwrap();
                assert_eq!(progress.refused, 0);
                if progress.received == 0 {
                    break;
                }
            }
            best_sync = best_sync.min(start.elapsed().as_secs_f64());
            assert_eq!(member.chain().tip(), tip);
        }
        let mut best_raw = f64::MAX;
        for _ in 0..2 {
            let start = Instant::now();
            for (n, size) in request_sizes.iter().enumerate() {
                let mut request = vec![0u8; (*size).max(5)];
                request[0] = RAW;
                request[1..5].copy_from_slice(&(n as u32).to_be_bytes());
                black_box(
                    client
                        .request(
                            server_peer,
                            chainmail_net::RequestKind::CommunitySync,
                            request,
                        )
                        .await
                        .unwrap(),
                );
            }
            best_raw = best_raw.min(start.elapsed().as_secs_f64());
        }
        serving.abort();
        println!(
            "sync over loopback (two chainmail-net swarms, TCP + noise + yamux), best of 2: \
             {length} blocks"
        );
        println!("  rounds (requests)        {rounds:>10}");
        println!("  bytes sent / received    {sent:>10} / {received}");
        println!("  time                     {best_sync:>10.3} s");
        println!("  baseline: the same bytes moved alone {best_raw:>6.3} s");
        println!(
            "  ratio baseline / sync    {:>10.2} (1.00 = bound by the transfer)",
            best_raw / best_sync
        );
    });
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var_os("CHAINMAIL_BENCH_QUICK").is_some();
    let start = Instant::now();
    validation(quick);
    sync(quick);
    let total: Duration = start.elapsed();
    println!("total {:.1} s", total.as_secs_f64());
}
