//! Chainmail in the network lab next to the same cast on loopback, in one
//! run: six public nodes started as the README says, users at home behind
//! NAT. The baseline is loopback (no namespaces, no NAT, no loss, addresses
//! announced without a reachability test); the ratio is lab / loopback.
//!
//! Run (as root, with nftables): `cargo bench -p chainmail --bench lab`
//! (add `-- --messages N`).
//!
//! Measured:
//! - network up: from the first node's start to all six in a complete
//!   directory;
//! - a new node: a fresh public node (new identity) until it sees a
//!   complete directory, and until it is in it;
//! - first contact: from a user's node start to the contact request shown
//!   to the other user (directory, providers, DHT lookup through the
//!   mixnet, proof of work, the request through the mixnet);
//! - message latency: send to shown, over N messages one second apart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[path = "../tests/netlab/mod.rs"]
mod netlab;

use netlab::*;

struct Run {
    network_up: Duration,
    new_node_sees: Duration,
    new_node_in: Duration,
    first_contact: Duration,
    latencies_ms: Vec<u64>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn run(mut lab: Lab, messages: usize) -> Run {
    let (home_a, home_b) = if lab.is_loopback() {
        ("local", "local")
    } else {
        ("hA", "hB")
    };
    let t = Instant::now();
    let network = start_public_network(&mut lab);
    let network_up = t.elapsed();
    eprintln!("  network up in {network_up:?}");

    let client = ["--roles", "none", "--client"];
    let bob_address = start_user(&mut lab, home_b, "bob", &network, &client);
    // Alice's node starts now; the clock runs until bob sees her request.
    let alice = lab.path("alice");
    let t = Instant::now();
    start_user(&mut lab, home_a, "alice", &network, &client);
    let bob = lab.path("bob");
    let d = |p: &Path| p.to_str().unwrap().to_string();
    lab.cli_ok(
        home_a,
        &[
            "contact",
            "add",
            &bob_address,
            "--name",
            "bob",
            "--data-dir",
            &d(&alice),
        ],
    );
    let first_contact = wait_for(
        &lab,
        "bob sees the request",
        Duration::from_secs(300),
        || {
            (contact_state(&lab, home_b, &bob, "alice").as_deref() == Some("request-received"))
                .then(|| t.elapsed())
        },
    );
    eprintln!("  first contact {first_contact:?}");
    lab.cli_ok(
        home_b,
        &["contact", "accept", "alice", "--data-dir", &d(&bob)],
    );
    wait_for(&lab, "the acceptance", Duration::from_secs(180), || {
        (contact_state(&lab, home_a, &alice, "bob").as_deref() == Some("accepted")).then_some(())
    });

    let mut sent_at = Vec::new();
    for k in 0..messages {
        sent_at.push(unix_ms());
        lab.cli_ok(
            home_a,
            &["send", "bob", &format!("m{k:03}"), "--data-dir", &d(&alice)],
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let shown = wait_for(&lab, "every message", Duration::from_secs(300), || {
        let entries = inbox(&lab, home_b, &bob, "message");
        (entries.len() >= messages).then_some(entries)
    });
    let mut latencies_ms: Vec<u64> = shown
        .iter()
        .filter_map(|e| {
            let k: usize = e["text"].as_str()?.strip_prefix('m')?.parse().ok()?;
            Some(e["at"].as_u64()?.saturating_sub(*sent_at.get(k)?))
        })
        .collect();
    latencies_ms.sort_unstable();
    // Last (a dead node stays in the directory until its descriptor
    // expires): a new node on pub6, a fresh identity in a fresh data
    // directory, in place of the old one.
    let old = lab.path("pub6");
    lab.kill(&old);
    let fresh = lab.path("pub6-new");
    let t = Instant::now();
    lab.node("pub6", &fresh, &network, &[]);
    let new_node_sees = wait_for(
        &lab,
        "the new node's directory",
        Duration::from_secs(180),
        || {
            let s = lab.status("pub6", &fresh)?;
            (s["directory_complete"] == true).then(|| t.elapsed())
        },
    );
    let new_node_in = wait_for(
        &lab,
        "the new node in the directory",
        Duration::from_secs(180),
        || {
            let s = lab.status("pub6", &fresh)?;
            (s["in_directory"] == true).then(|| t.elapsed())
        },
    );
    eprintln!("  new node: complete directory {new_node_sees:?}, in it {new_node_in:?}");

    Run {
        network_up,
        new_node_sees,
        new_node_in,
        first_contact,
        latencies_ms,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let messages: usize = args
        .iter()
        .position(|a| a == "--messages")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    eprintln!("loopback (baseline):");
    let base = run(Lab::loopback(), messages);
    eprintln!("lab (namespaces, NAT homes, 1 % loss):");
    let lab = run(Lab::up(), messages);

    let secs = |d: Duration| d.as_secs_f64();
    let rows: [(&str, f64, f64); 6] = [
        (
            "network up: first node to six in a complete directory (s)",
            secs(base.network_up),
            secs(lab.network_up),
        ),
        (
            "a new node sees a complete directory (s)",
            secs(base.new_node_sees),
            secs(lab.new_node_sees),
        ),
        (
            "a new node is in the directory (s)",
            secs(base.new_node_in),
            secs(lab.new_node_in),
        ),
        (
            "node start to first contact request shown (s)",
            secs(base.first_contact),
            secs(lab.first_contact),
        ),
        (
            "message latency p50 (ms)",
            percentile(&base.latencies_ms, 0.5) as f64,
            percentile(&lab.latencies_ms, 0.5) as f64,
        ),
        (
            "message latency p99 (ms)",
            percentile(&base.latencies_ms, 0.99) as f64,
            percentile(&lab.latencies_ms, 0.99) as f64,
        ),
    ];
    println!(
        "{:<58} {:>10} {:>10} {:>8}",
        "", "loopback", "lab", "lab/loop"
    );
    for (name, b, l) in rows {
        println!("{name:<58} {b:>10.2} {l:>10.2} {:>8.2}", l / b.max(1e-9));
    }
    println!(
        "messages: {} on loopback, {} in the lab",
        base.latencies_ms.len(),
        lab.latencies_ms.len()
    );
}
