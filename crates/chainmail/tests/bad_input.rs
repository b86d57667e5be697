//! A `chainmail node` process on 127.0.0.1 facing bad input from a peer:
//! garbage frames, a packet for an epoch it has no key for, a replayed
//! packet, a flood. Each is counted by reason and dropped, a well-behaved
//! peer is still served, and after a SIGKILL and restart the node still
//! refuses the replay (its replay state is durable).

#![allow(clippy::disallowed_methods)]

use std::process::Command;
use std::time::{Duration, Instant};

use chainmail_mixnet::Params;
use chainmail_net::{Multiaddr, Net, NetConfig, NetEvent, NetEvents, NetHandle, PeerId};
use chainmail_packet::{Epoch, Hop, HopKey, MailboxId, MixSecretKey, NodeId, Packet, build_packet};
use rand::RngExt;

mod support;

use support::MixNode as Node;

fn start(network: &std::path::Path, data: &std::path::Path, port: u16) -> Node {
    Node::start(network, data, port, 200)
}

fn metric(node: &Node, line_prefix: &str) -> u64 {
    node.metrics()
        .lines()
        .find_map(|l| {
            l.strip_prefix(line_prefix)
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn wait_metric(node: &Node, line_prefix: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(node, line_prefix) < at_least {
        assert!(
            Instant::now() < deadline,
            "{line_prefix} stayed below {at_least}: {}",
            metric(node, line_prefix)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn peer(network_id: &str, port: u16, node: PeerId) -> (NetHandle, NetEvents, NodeId) {
    let secret: [u8; 32] = rand::rng().random();
    let (net, events) = Net::spawn(NetConfig::new(network_id.to_string(), secret)).unwrap();
    let me = NodeId(net.local_node_key());
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{node}")
        .parse()
        .unwrap();
    net.dial(addr).await.unwrap();
    (net, events, me)
}

/// The node's current mix key, from its descriptor.
async fn node_key(net: &NetHandle, node: PeerId, network_id: &str) -> (NodeId, HopKey, Epoch) {
    let d = support::node_descriptor(net, node, network_id).await;
    let epoch = Params::default().epoch_at(support::now());
    (
        d.node,
        HopKey::new(d.mix_key(epoch).unwrap()).unwrap(),
        epoch,
    )
}

async fn expect_packets(events: &mut NetEvents, count: usize) {
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got < count {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(NetEvent::PacketReceived { .. })) => got += 1,
            Ok(Some(_)) => {}
            _ => panic!("the node forwarded {got} of {count} packets"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_counted_and_dropped_and_replays_stay_refused_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let network_id = format!("chainmail-badinput-{:08x}", rand::rng().random::<u32>());
    let network = dir.path().join("network.toml");
    std::fs::write(
        &network,
        format!("[network]\nid = \"{network_id}\"\nname = \"bad input\"\nlocal = true\n"),
    )
    .unwrap();
    let data = dir.path().join("node");
    let port = support::free_port();
    let node = start(&network, &data, port);

    let (bad, _bad_events, bad_id) = peer(&network_id, port, node.peer).await;
    let (good, mut good_events, good_id) = peer(&network_id, port, node.peer).await;
    let (node_id, key, epoch) = node_key(&good, node.peer, &network_id).await;
    let other_key = MixSecretKey::generate(&mut rand::rng(), epoch);
    let other = HopKey::new(other_key.public()).unwrap();
    let packet_to = |to: NodeId, epoch: Epoch| -> Packet {
        let route = [
            Hop {
                node: node_id,
                key: &key,
                delay_ms: 0,
            },
            Hop {
                node: to,
                key: &other,
                delay_ms: 0,
            },
        ];
        build_packet(&mut rand::rng(), epoch, &route, MailboxId([1; 32]), b"x").unwrap()
    };

    // Garbage: random frames, and a frame that is not a packet at all.
    for _ in 0..5 {
        let mut frame = Box::new([0u8; chainmail_net::PACKET_SIZE]);
        rand::rng().fill(&mut frame[..]);
        // A packet's version and the current epoch, so it reaches the X25519
        // and the MAC, which must refuse it.
        frame[0] = 1;
        frame[1..5].copy_from_slice(&epoch.0.to_be_bytes());
        bad.send_packet(node.peer, frame).await.unwrap();
    }
    bad.send_packet(node.peer, Box::new([0xff; chainmail_net::PACKET_SIZE]))
        .await
        .unwrap();
    // A valid packet for an epoch the node has no key for: relabelled, so
    // the node cannot know its key.
    let mut foreign = *packet_to(bad_id, epoch).as_bytes();
    foreign[1..5].copy_from_slice(&(epoch.0 + 100).to_be_bytes());
    bad.send_packet(node.peer, Box::new(foreign)).await.unwrap();
    // A valid packet, twice.
    let replayed = packet_to(bad_id, epoch);
    bad.send_packet(node.peer, Box::new(*replayed.as_bytes()))
        .await
        .unwrap();
    bad.send_packet(node.peer, Box::new(*replayed.as_bytes()))
        .await
        .unwrap();
    wait_metric(
        &node,
        "chainmail_packets_dropped_total{reason=\"replay\"} ",
        1,
    )
    .await;
    wait_metric(
        &node,
        "chainmail_packets_dropped_total{reason=\"unknown_key\"} ",
        1,
    )
    .await;
    let malformed = metric(
        &node,
        "chainmail_packets_dropped_total{reason=\"malformed\"} ",
    );
    let auth = metric(&node, "chainmail_packets_dropped_total{reason=\"auth\"} ");
    assert!(
        malformed + auth >= 6,
        "garbage counted: malformed {malformed}, auth {auth}"
    );

    // A flood far above the node's per-peer limit (200/s): counted and cut off.
    for _ in 0..3000 {
        let _ = bad.try_send_packet(node.peer, Box::new([1u8; chainmail_net::PACKET_SIZE]));
    }
    wait_metric(
        &node,
        "chainmail_net_frames_dropped_total{reason=\"rate_limited\"} ",
        100,
    )
    .await;

    // Meanwhile the well-behaved peer is served.
    for _ in 0..20 {
        good.send_packet(node.peer, Box::new(*packet_to(good_id, epoch).as_bytes()))
            .await
            .unwrap();
    }
    expect_packets(&mut good_events, 20).await;

    // SIGKILL and restart: the replay is still refused.
    drop(node);
    let node = start(&network, &data, port);
    let (again, _e, _) = peer(&network_id, port, node.peer).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    again
        .send_packet(node.peer, Box::new(*replayed.as_bytes()))
        .await
        .unwrap();
    wait_metric(
        &node,
        "chainmail_packets_dropped_total{reason=\"replay\"} ",
        1,
    )
    .await;
}

/// `curl` against the node's local API with extra headers: (HTTP status,
/// body).
fn api_get(node: &Node, path: &str, headers: &[String]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{}{path}", node.api_port))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

#[test]
fn the_local_api_serves_only_its_owner_never_a_web_page() {
    let dir = tempfile::tempdir().unwrap();
    let network = dir.path().join("network.toml");
    std::fs::write(
        &network,
        "[network]\nid = \"chainmail-api-check\"\nname = \"api\"\nlocal = true\n",
    )
    .unwrap();
    let port = support::free_port();
    let node = start(&network, &dir.path().join("node"), port);
    let auth = format!("Authorization: Bearer {}", node.token);
    let wrong = format!("Authorization: Bearer {}", "0".repeat(64));

    // Without the token, /metrics says nothing (its counters tell when the
    // user sends and which mailboxes are busy), and neither does the rest.
    for path in ["/metrics", "/v1/status", "/v1/directory"] {
        let (code, body) = api_get(&node, path, &[]);
        assert_eq!(code, 401, "{path}: {body}");
        assert!(!body.contains("chainmail_"), "{path}: {body}");
        assert_eq!(api_get(&node, path, std::slice::from_ref(&wrong)).0, 401);
    }
    // A page that re-bound its own name to 127.0.0.1 sends its own Host;
    // a page that calls 127.0.0.1 directly sends its Origin. Both are
    // refused even with the right token.
    let rebound = api_get(
        &node,
        "/metrics",
        &[auth.clone(), "Host: evil.example".into()],
    );
    assert_eq!(rebound.0, 403, "{}", rebound.1);
    let page = api_get(
        &node,
        "/v1/status",
        &[auth.clone(), "Origin: http://evil.example".into()],
    );
    assert_eq!(page.0, 403, "{}", page.1);
    // The owner gets everything, and the refusals are counted by reason.
    let (code, text) = api_get(&node, "/metrics", std::slice::from_ref(&auth));
    assert_eq!(code, 200);
    let count = |reason: &str| -> u64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "chainmail_api_refused_total{{reason=\"{reason}\"}} "
                ))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {reason} counter in {text}"))
    };
    assert_eq!(count("token"), 6);
    assert_eq!(count("host"), 1);
    assert_eq!(count("origin"), 1);
    // A loopback name without a port is still this API; another port is
    // not.
    let (code, status) = api_get(
        &node,
        "/v1/status",
        &[auth.clone(), "Host: localhost".into()],
    );
    assert_eq!(code, 200, "{status}");
    let (code, status) = api_get(&node, "/v1/status", &[auth, "Host: localhost:1".into()]);
    assert_eq!(code, 403, "another port is not this API: {status}");
}
