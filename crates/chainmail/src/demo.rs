//! `chainmail demo`: a whole local network and two users exchanging
//! messages through it, with cover traffic on. The first thing to run.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chainmail_client::{AccountRequest, ContactChange, ContactView, HistoryEntry, Queued};
use chainmail_mixnet::Preset;

use crate::api_client::account;
use crate::runtime::{Status, now};
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
    node: usize,
    data_dir: PathBuf,
    address: String,
    packets_at_start: u64,
}

struct Sent {
    from: usize,
    /// Order of sending.
    order: usize,
    at_ms: u64,
    received_at_ms: Option<u64>,
    delivered_at_ms: Option<u64>,
    /// Position in the recipient's inbox.
    position: u64,
    /// Sent while the recipient was offline.
    offline: bool,
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

    // Two users on different providers, each with an account.
    let network = crate::network::NetworkFile::load(&net.network_file)?;
    let ids: Vec<_> = net.nodes.iter().map(|n| n.id).collect();
    let mut users = Vec::new();
    for (name, providers) in [("alice", [ids[0], ids[1]]), ("bob", [ids[2], ids[3]])] {
        let data_dir = dir.join(name);
        let (address, _) = crate::account::init(
            &data_dir,
            &network,
            name,
            &crate::account::Unlock::default(),
            None,
        )?;
        let data_dir = net.add_client(name, &providers)?;
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
            node: net.nodes.len() - 1,
            address: address.to_string(),
            data_dir,
            packets_at_start: status.client_packets_sent,
        });
    }
    println!("  alice uses providers 0 and 1, bob uses providers 2 and 3");
    println!("  alice is {}", users[0].address);
    println!("  bob   is {}", users[1].address);
    // Idle: nobody says anything, yet the clients send cover at a fixed rate.
    let idle_start = crate::clock::instant();
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

    // The contact request: alice looks bob up (a blinded key in the DHT),
    // sends a request with proof of work; bob accepts.
    let started = crate::clock::instant();
    let request = AccountRequest::ContactAdd {
        address: users[1].address.to_string(),
        name: "bob".into(),
        message: Some("hi bob, it's alice".into()),
    };
    let _: ContactChange = account(&users[0].data_dir, &request).await?;
    println!(
        "  alice asks bob to talk (descriptor lookup in the DHT, proof-of-work stamp, through the mixnet)"
    );
    let alice_name = wait_until(opts.timeout, "bob to get alice's request", || async {
        let requests: Vec<ContactView> =
            account(&users[1].data_dir, &AccountRequest::ContactRequests)
                .await
                .ok()?;
        requests.first().map(|c| c.name.clone())
    })
    .await?;
    let request_after = started.elapsed();
    let request = AccountRequest::ContactAccept {
        name: alice_name.clone(),
    };
    let _: ContactChange = account(&users[1].data_dir, &request).await?;
    wait_until(opts.timeout, "alice to see the acceptance", || async {
        let contacts: Vec<ContactView> = account(&users[0].data_dir, &AccountRequest::ContactList)
            .await
            .ok()?;
        (contacts.first()?.state == "accepted").then_some(())
    })
    .await?;
    println!(
        "  bob got the request after {:.1}s and accepted; alice saw it {:.1}s after asking",
        request_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let names = ["bob".to_string(), alice_name];

    // The conversation, taking turns.
    println!(
        "  they talk: {} messages each way; every packet is 2048 bytes, real or cover",
        opts.messages
    );
    let talk_start = crate::clock::instant();
    let mut sent: HashMap<String, Sent> = HashMap::new();
    let total = opts.messages * 2;
    let mut k = 0;
    let mut next_send = crate::clock::instant();
    let mut seen = [0u64, 0u64];
    while k < total || !all_done(&sent) {
        if k < total && crate::clock::instant() >= next_send {
            let from = k % 2;
            let text = format!("message {} from {}", k / 2 + 1, users[from].name);
            send(&users, &names, from, &text, false, &mut sent).await?;
            k += 1;
            next_send = crate::clock::instant() + opts.interval;
        }
        poll(&users, &mut seen, &mut sent).await?;
        progress(&sent, total, &users, talk_start).await;
        if k == total && next_send.elapsed() > opts.timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!();
    let cover = cover_rate(&users, talk_start).await;

    // Bob goes offline; alice's messages wait in his mailboxes.
    let offline = opts.messages.clamp(1, 3);
    println!("  bob goes offline; alice writes {offline} more (they wait in bob's mailboxes)");
    net.stop_node(users[1].node);
    for i in 0..offline {
        let text = format!("while you were away {}", i + 1);
        send(&users, &names, 0, &text, true, &mut sent).await?;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    poll(&users[..1], &mut seen, &mut sent).await?;
    let waiting = sent.values().filter(|s| s.received_at_ms.is_none()).count();
    println!("  {waiting} messages wait for bob; bob comes back online");
    net.spawn(users[1].node)?;
    wait_for_address(&users[1].data_dir, Duration::from_secs(60)).await?;
    let back = crate::clock::instant();
    while !all_done(&sent) && back.elapsed() < opts.timeout {
        poll(&users, &mut seen, &mut sent).await?;
        progress(&sent, sent.len(), &users, talk_start).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!();

    let online: Vec<&Sent> = sent.values().filter(|s| !s.offline).collect();
    let mut latencies: Vec<u64> = online
        .iter()
        .filter_map(|s| s.received_at_ms.map(|r| r.saturating_sub(s.at_ms)))
        .collect();
    latencies.sort_unstable();
    let mut acks: Vec<u64> = online
        .iter()
        .filter_map(|s| s.delivered_at_ms.map(|r| r.saturating_sub(s.at_ms)))
        .collect();
    acks.sort_unstable();
    let all = sent.len();
    let received = sent.values().filter(|s| s.received_at_ms.is_some()).count();
    let delivered = sent
        .values()
        .filter(|s| s.delivered_at_ms.is_some())
        .count();
    let in_order = users.iter().enumerate().all(|(u, _)| {
        let mut mine: Vec<&Sent> = sent.values().filter(|s| s.from != u).collect();
        mine.sort_by_key(|s| s.order);
        mine.windows(2).all(|w| w[0].position < w[1].position)
    });
    println!("Summary");
    println!("  contact request         accepted, end to end encrypted (Olm)");
    println!("  messages sent           {all} ({offline} while bob was offline)");
    println!(
        "  shown to the recipient  {received}{}",
        if in_order {
            ", in order"
        } else {
            ", OUT OF ORDER"
        }
    );
    println!("  delivered (acknowledged) {delivered}");
    println!(
        "  latency send→shown      p50 {} ms, p99 {} ms (both online)",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0)
    );
    println!(
        "  send→delivered          p50 {} ms, p99 {} ms",
        percentile(&acks, 50.0),
        percentile(&acks, 99.0)
    );
    println!(
        "  upstream per client     {:.2} KB/s while talking, {} (2048-byte packets, real and cover alike)",
        cover / 1000.0,
        if opts.idle.is_zero() {
            "idle not measured".to_string()
        } else {
            format!("{:.2} KB/s idle", idle_rate / 1000.0)
        }
    );
    net.stop();
    if received < all || delivered < all || !in_order {
        println!(
            "  FAILED: {} messages not shown, {} not delivered{}; logs are in {}",
            all - received,
            all - delivered,
            if in_order { "" } else { ", order broken" },
            dir.display()
        );
        return Ok(false);
    }
    println!("  nothing lost");
    Ok(true)
}

async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = crate::clock::instant() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if crate::clock::instant() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn all_done(sent: &HashMap<String, Sent>) -> bool {
    sent.values()
        .all(|s| s.received_at_ms.is_some() && s.delivered_at_ms.is_some())
}

async fn send(
    users: &[User],
    names: &[String; 2],
    from: usize,
    text: &str,
    offline: bool,
    sent: &mut HashMap<String, Sent>,
) -> Result<()> {
    let request = AccountRequest::Send {
        to: names[from].clone(),
        text: text.to_owned(),
    };
    let queued: Queued = account(&users[from].data_dir, &request).await?;
    let id = queued.id;
    let order = sent.len();
    sent.insert(
        id,
        Sent {
            from,
            order,
            at_ms: now().0,
            received_at_ms: None,
            delivered_at_ms: None,
            position: 0,
            offline,
        },
    );
    Ok(())
}

/// Reads both inboxes: messages shown, messages delivered.
async fn poll(users: &[User], seen: &mut [u64; 2], sent: &mut HashMap<String, Sent>) -> Result<()> {
    for (u, user) in users.iter().enumerate() {
        let request = AccountRequest::Inbox { after: seen[u] };
        let Ok(entries) = account::<Vec<HistoryEntry>>(&user.data_dir, &request).await else {
            continue;
        };
        for e in entries {
            seen[u] = seen[u].max(e.seq);
            let Some(id) = &e.id else { continue };
            if let Some(s) = sent.get_mut(id) {
                match e.kind.as_str() {
                    "message" if s.from != u => {
                        s.received_at_ms = Some(e.at);
                        s.position = e.seq;
                    }
                    "state" if s.from == u && e.state.as_deref() == Some("delivered") => {
                        s.delivered_at_ms = Some(e.at)
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

async fn progress(sent: &HashMap<String, Sent>, total: usize, users: &[User], since: Instant) {
    let received = sent.values().filter(|s| s.received_at_ms.is_some()).count();
    let delivered = sent
        .values()
        .filter(|s| s.delivered_at_ms.is_some())
        .count();
    let cover = cover_rate(users, since).await;
    print!(
        "\r  sent {}/{total}  shown {received}  delivered {delivered}  client upstream {:.2} KB/s   ",
        sent.len(),
        cover / 1000.0
    );
    let _ = std::io::stdout().flush();
}

async fn client_packets(data_dir: &Path) -> u64 {
    crate::api_client::get::<Status>(data_dir, "/v1/status")
        .await
        .map_or(0, |s| s.client_packets_sent)
}

async fn wait_for_address(data_dir: &Path, timeout: Duration) -> Result<Status> {
    let deadline = crate::clock::instant() + timeout;
    loop {
        if let Ok(status) = crate::api_client::get::<Status>(data_dir, "/v1/status").await
            && status.address.is_some()
            && status.directory_complete
        {
            return Ok(status);
        }
        if crate::clock::instant() > deadline {
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
