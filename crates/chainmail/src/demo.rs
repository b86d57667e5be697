//! `chainmail demo`: a whole local network and two users exchanging
//! messages through it, with cover traffic on. The first thing to run.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chainmail_mixnet::Preset;
use serde::Deserialize;

use crate::runtime::{LoggedEvent, Status, now};
use crate::testnet::{Testnet, TestnetOptions};

/// Options of the demo.
pub(crate) struct DemoOptions {
    pub(crate) nodes: usize,
    pub(crate) messages: usize,
    pub(crate) preset: Preset,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) timeout: Duration,
    /// Time between two messages (alternating between the users).
    pub(crate) interval: Duration,
    /// How long to measure the idle clients' upstream before sending.
    pub(crate) idle: Duration,
}

struct User {
    name: &'static str,
    data_dir: PathBuf,
    address: String,
    events_seen: u64,
    packets_at_start: u64,
}

struct Sent {
    from: usize,
    at_ms: u64,
    received_at_ms: Option<u64>,
    acked_after_ms: Option<u64>,
}

#[derive(Deserialize)]
struct SendReply {
    id: String,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) async fn run(opts: DemoOptions) -> Result<bool> {
    let temp;
    let dir: &Path = match &opts.dir {
        Some(d) => d,
        None => {
            temp = tempfile::tempdir().context("cannot create a temporary directory")?;
            temp.path()
        }
    };
    println!(
        "Chainmail demo: a local mixnet of {} nodes and two users, alice and bob, on 127.0.0.1",
        opts.nodes
    );
    println!("  preset {:?}: {:?}", opts.preset, opts.preset.rates());
    let mut net = Testnet::start(
        dir,
        &TestnetOptions {
            nodes: opts.nodes,
            preset: opts.preset,
            epoch_secs: 3600,
            mean_delay_ms: None,
        },
    )?;
    let status = net
        .wait_ready(opts.nodes, Duration::from_secs(120), |ready, total| {
            print!("\r  starting nodes: {ready}/{total} see the whole directory ");
            let _ = std::io::stdout().flush();
        })
        .await?;
    println!(
        "\n  directory: mix layers {:?}, {} providers",
        status.layers, status.providers
    );

    // Two users on different providers.
    let ids: Vec<_> = net.nodes.iter().map(|n| n.id).collect();
    let alice_dir = net.add_client("alice", &[ids[0], ids[1]])?;
    let bob_dir = net.add_client("bob", &[ids[2], ids[3]])?;
    let mut users = Vec::new();
    for (name, data_dir) in [("alice", alice_dir), ("bob", bob_dir)] {
        let status = wait_for_address(&data_dir, Duration::from_secs(60))
            .await
            .with_context(|| {
                format!(
                    "{name}'s client did not start; see {}",
                    data_dir.join("node.log").display()
                )
            })?;
        users.push(User {
            name,
            address: status.address.clone().unwrap_or_default(),
            data_dir,
            events_seen: status.events,
            packets_at_start: status.client_packets_sent,
        });
    }
    println!("  alice uses providers 0 and 1, bob uses providers 2 and 3");
    // Idle: nobody says anything, yet the clients send cover at a fixed rate.
    let idle_start = Instant::now();
    let mut idle_base = Vec::new();
    for user in &users {
        idle_base.push(client_packets(&user.data_dir).await);
    }
    while idle_start.elapsed() < opts.idle {
        print!(
            "\r  measuring idle upstream: {}s/{}s ",
            idle_start.elapsed().as_secs(),
            opts.idle.as_secs()
        );
        let _ = std::io::stdout().flush();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut idle_packets = 0;
    for (user, base) in users.iter_mut().zip(&idle_base) {
        let now_packets = client_packets(&user.data_dir).await;
        idle_packets += now_packets.saturating_sub(*base);
        user.packets_at_start = now_packets;
    }
    let idle_rate = idle_packets as f64 * chainmail_packet::PACKET_SIZE as f64
        / users.len() as f64
        / idle_start.elapsed().as_secs_f64().max(0.001);
    if !opts.idle.is_zero() {
        println!(
            "\r  idle upstream per client: {:.2} KB/s                 ",
            idle_rate / 1000.0
        );
    }
    println!(
        "  sending {} messages each way; every packet is 2048 bytes, real or cover",
        opts.messages
    );

    let started = Instant::now();
    let mut sent: HashMap<String, Sent> = HashMap::new();
    let total = opts.messages * 2;
    let mut next_send = Instant::now();
    let mut k = 0;
    loop {
        if k < total && Instant::now() >= next_send {
            let from = k % 2;
            let to = 1 - from;
            let text = format!(
                "message {} from {} to {}",
                k / 2 + 1,
                users[from].name,
                users[to].name
            );
            let body = serde_json::json!({ "to": users[to].address, "text": text });
            let reply: SendReply =
                crate::api_client::post(&users[from].data_dir, "/v1/send", &body).await?;
            sent.insert(
                reply.id,
                Sent {
                    from,
                    at_ms: now().0,
                    received_at_ms: None,
                    acked_after_ms: None,
                },
            );
            k += 1;
            next_send = Instant::now() + opts.interval;
        }
        for (u, user) in users.iter_mut().enumerate() {
            let path = format!("/v1/events?after={}", user.events_seen);
            let events: Vec<LoggedEvent> = crate::api_client::get(&user.data_dir, &path).await?;
            for e in events {
                user.events_seen = user.events_seen.max(e.seq);
                if let Some(s) = sent.get_mut(&e.id) {
                    match e.kind.as_str() {
                        "received" if s.from != u => s.received_at_ms = Some(e.at),
                        "delivered" if s.from == u => s.acked_after_ms = e.after_ms,
                        _ => {}
                    }
                }
            }
        }
        let received = sent.values().filter(|s| s.received_at_ms.is_some()).count();
        let acked = sent.values().filter(|s| s.acked_after_ms.is_some()).count();
        let cover = cover_rate(&users, started).await;
        print!(
            "\r  sent {}/{total}  received {received}/{total}  acknowledged {acked}/{total}  client upstream {:.2} KB/s   ",
            sent.len(),
            cover / 1000.0
        );
        let _ = std::io::stdout().flush();
        if received == total && acked == total {
            break;
        }
        if k == total && next_send.elapsed() > opts.timeout {
            println!();
            println!(
                "  timed out {}s after the last message; logs are in {}",
                opts.timeout.as_secs(),
                dir.display()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!();

    let mut latencies: Vec<u64> = sent
        .values()
        .filter_map(|s| s.received_at_ms.map(|r| r.saturating_sub(s.at_ms)))
        .collect();
    latencies.sort_unstable();
    let mut acks: Vec<u64> = sent.values().filter_map(|s| s.acked_after_ms).collect();
    acks.sort_unstable();
    let received = latencies.len();
    let cover = cover_rate(&users, started).await;
    println!("Summary");
    println!("  messages sent           {total}");
    println!("  delivered to recipient  {received}");
    println!("  acknowledged to sender  {}", acks.len());
    println!(
        "  latency send→receipt    p50 {} ms, p99 {} ms",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0)
    );
    println!(
        "  send→acknowledgement    p50 {} ms, p99 {} ms",
        percentile(&acks, 50.0),
        percentile(&acks, 99.0)
    );
    println!(
        "  upstream per client     {:.2} KB/s while talking, {:.2} KB/s idle (2048-byte packets, real and cover alike)",
        cover / 1000.0,
        idle_rate / 1000.0
    );
    let lost = total - received;
    net.stop();
    if lost > 0 || acks.len() < total {
        println!(
            "  FAILED: {lost} messages lost, {} not acknowledged",
            total - acks.len()
        );
        return Ok(false);
    }
    println!("  nothing lost");
    Ok(true)
}

async fn client_packets(data_dir: &Path) -> u64 {
    crate::api_client::get::<Status>(data_dir, "/v1/status")
        .await
        .map_or(0, |s| s.client_packets_sent)
}

async fn wait_for_address(data_dir: &Path, timeout: Duration) -> Result<Status> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(status) = crate::api_client::get::<Status>(data_dir, "/v1/status").await
            && status.address.is_some()
            && status.directory_complete
        {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!("no client address after {}s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Bytes per second the two clients put on their links (mean of the two).
async fn cover_rate(users: &[User], started: Instant) -> f64 {
    let mut total = 0.0;
    for user in users {
        if let Ok(s) = crate::api_client::get::<Status>(&user.data_dir, "/v1/status").await {
            let packets = s.client_packets_sent.saturating_sub(user.packets_at_start);
            total += packets as f64 * chainmail_packet::PACKET_SIZE as f64;
        }
    }
    total / users.len() as f64 / started.elapsed().as_secs_f64().max(1.0)
}
