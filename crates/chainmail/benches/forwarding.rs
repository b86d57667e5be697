//! Mix forwarding throughput of a real `chainmail node` process on
//! loopback, zero delay, next to the raw packet processing rate of one core
//! measured in the same run.
//!
//! Run: `cargo bench -p chainmail --bench forwarding` (add `-- --packets N`).
//!
//! The bench starts a node (role mix) and joins its network as a libp2p
//! peer itself. It learns the node's mix key from the node's descriptor,
//! builds N fresh packets whose route is node → bench with zero delay, sends
//! them through the node and counts what comes back. Per-core throughput is
//! the packets forwarded divided by the CPU seconds the node process used
//! (all its threads: libp2p, noise, yamux, packet processing, and the
//! durable store of replay tags).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use chainmail_net::{Multiaddr, Net, NetConfig, NetEvent};
use chainmail_packet::{Hop, HopKey, MailboxId, MixSecretKey, NodeId, Packet, build_packet};
use rand::RngExt;
use support::now;

#[path = "../tests/support/mod.rs"]
mod support;

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name in parentheses; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let packets: usize = args
        .iter()
        .position(|a| a == "--packets")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(40_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(packets));
}

async fn run(packets: usize) {
    let dir = tempfile::tempdir().unwrap();
    let network_id = format!("chainmail-bench-{:08x}", rand::rng().random::<u32>());
    std::fs::write(
        dir.path().join("network.toml"),
        format!("[network]\nid = \"{network_id}\"\nname = \"forwarding bench\"\nlocal = true\n"),
    )
    .unwrap();
    let port = support::free_port();
    let node_dir = dir.path().join("node");
    let node =
        support::MixNode::start(&dir.path().join("network.toml"), &node_dir, port, 1_000_000);
    let (pid, node_peer) = (node.pid, node.peer);

    // The bench as a peer of the node's network.
    let secret: [u8; 32] = rand::rng().random();
    let mut config = NetConfig::new(network_id.clone(), secret);
    // The bench receives everything the node forwards: no rate limit here.
    config.limits.packet_rate = chainmail_net::RateLimit {
        frames_per_second: 1_000_000,
        burst: 1_000_000,
    };
    config.limits.flood_tolerance = 2_000_000;
    config.limits.event_queue = 8192;
    let (net, mut events) = Net::spawn(config).unwrap();
    let me = NodeId(net.local_node_key());
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{node_peer}")
        .parse()
        .unwrap();
    net.dial(addr).await.unwrap();

    // The node's mix key, from its descriptor.
    let descriptor = support::node_descriptor(&net, node_peer, &network_id).await;
    let params = chainmail_mixnet::Params::default();
    let epoch = params.epoch_at(now());
    let node_key =
        HopKey::precomputed(descriptor.mix_key(epoch).expect("key for this epoch")).unwrap();
    let my_key = MixSecretKey::generate(&mut rand::rng(), epoch);
    let my_hop_key = HopKey::precomputed(my_key.public()).unwrap();
    let node_id = descriptor.node;

    // Fresh packets (replays would be dropped), built on both cores.
    eprintln!("building {packets} packets...");
    let built: Vec<Packet> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (node_key, my_hop_key) = (node_key.clone(), my_hop_key.clone());
                s.spawn(move || {
                    let route = [
                        Hop {
                            node: node_id,
                            key: &node_key,
                            delay_ms: 0,
                        },
                        Hop {
                            node: me,
                            key: &my_hop_key,
                            delay_ms: 0,
                        },
                    ];
                    let mut rng = rand::rng();
                    (0..packets / 2)
                        .map(|_| {
                            build_packet(&mut rng, epoch, &route, MailboxId([1; 32]), b"bench")
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let total = built.len();

    // Baseline, same run: one core processing packets without any I/O (the
    // node's key is not ours, so the same work on an equal packet for a key
    // of our own).
    let route = [
        Hop {
            node: me,
            key: &my_hop_key,
            delay_ms: 0,
        },
        Hop {
            node: me,
            key: &my_hop_key,
            delay_ms: 0,
        },
    ];
    let own = build_packet(
        &mut rand::rng(),
        epoch,
        &route,
        MailboxId([1; 32]),
        b"bench",
    )
    .unwrap();
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_secs(2) {
        let p = Packet::from_bytes(own.as_bytes()).unwrap();
        std::hint::black_box(my_key.process(p).unwrap());
        n += 1;
    }
    let baseline = f64::from(n) / start.elapsed().as_secs_f64();

    // Send through the node, at most `window` packets outstanding.
    let window = 512;
    let cpu0 = cpu_seconds(pid);
    let start = Instant::now();
    let (mut sent, mut received, mut lost) = (0usize, 0usize, 0usize);
    let mut iter = built.into_iter();
    let deadline = Instant::now() + Duration::from_secs(180);
    while received + lost < total && Instant::now() < deadline {
        while sent < total && sent - received - lost < window {
            let p = iter.next().expect("fewer packets sent than built");
            net.send_packet(node_peer, Box::new(*p.as_bytes()))
                .await
                .unwrap();
            sent += 1;
        }
        match tokio::time::timeout(Duration::from_secs(2), events.recv()).await {
            Ok(Some(NetEvent::PacketReceived { .. })) => received += 1,
            Ok(Some(_)) => {}
            Ok(None) => break,
            // Nothing for 2 s: what is outstanding is lost.
            Err(_) => lost = sent - received,
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let metrics = node.metrics();
    drop(node);

    let per_core = received as f64 / cpu;
    println!("packets sent {sent}, forwarded back {received} of {total}, lost {lost}");
    for line in metrics
        .lines()
        .filter(|l| l.contains("dropped_total{") && !l.ends_with(" 0"))
    {
        println!("  node: {line}");
    }
    println!("  bench side: {:?}", net.metrics().frames_dropped);
    println!(
        "wall clock: {wall:.2} s, {:.0} packets/s",
        received as f64 / wall
    );
    println!("node CPU: {cpu:.2} s over all its threads");
    println!("forwarding per core: {per_core:.0} packets/s  (target >= 10000)");
    println!("baseline, process() alone on one core, same run: {baseline:.0} packets/s");
    println!(
        "ratio forwarding per core / process() alone = {:.3}",
        per_core / baseline
    );
}
