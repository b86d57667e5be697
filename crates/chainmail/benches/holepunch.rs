//! Direct mode in the network lab: how often, and how fast, two users get a
//! direct connection, per pair of home routers. Homes A and B keep one port
//! mapping per socket (endpoint-independent, nftables masquerade); home C
//! maps every destination to a new random port (symmetric,
//! `random,fully-random`). The baseline is the same two users on loopback
//! (no NAT: the nodes dial each other's address at once); the ratio is the
//! lab's time to a direct connection over loopback's.
//!
//! Each trial: both users turn direct mode on; the time is from the second
//! `on` to the first node reporting `direct` (success) or `failed` (hole
//! punching gave up; messages then go through the mixnet). Then both turn
//! it off and the next trial starts.
//!
//! Run (as root, with nftables): `cargo bench -p chainmail --bench holepunch`
//! (add `-- --trials N`, default 5).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::path::Path;
use std::time::{Duration, Instant};

#[path = "../tests/netlab/mod.rs"]
mod netlab;

use netlab::*;

/// One pair's trials: (succeeded, time to the outcome).
type Trials = Vec<(bool, Duration)>;

fn set(lab: &Lab, host: &str, data: &Path, contact: &str, on: bool) {
    let state = if on { "on" } else { "off" };
    let d = data.to_str().unwrap();
    lab.cli_ok(
        host,
        &["contact", "direct", contact, state, "--data-dir", d],
    );
}

/// Trials between two users already contacts of each other.
fn trials(lab: &Lab, a: (&str, &str), b: (&str, &str), n: usize) -> Trials {
    let (a_data, b_data) = (lab.path(a.1), lab.path(b.1));
    let mut out = Vec::new();
    for _ in 0..n {
        set(lab, a.0, &a_data, b.1, true);
        wait_for(lab, "the offer", Duration::from_secs(120), || {
            (direct_state(lab, b.0, &b_data, a.1)?.0 == "offered").then_some(())
        });
        let t = Instant::now();
        set(lab, b.0, &b_data, a.1, true);
        let ok = wait_for(
            lab,
            "an outcome",
            Duration::from_secs(180),
            || match direct_state(lab, a.0, &a_data, b.1)?.0.as_str() {
                "direct" => Some(true),
                "failed" => Some(false),
                _ => None,
            },
        );
        out.push((ok, t.elapsed()));
        set(lab, a.0, &a_data, b.1, false);
        set(lab, b.0, &b_data, a.1, false);
        wait_for(lab, "both off", Duration::from_secs(120), || {
            let a_off = direct_state(lab, a.0, &a_data, b.1).is_none();
            let b_off = direct_state(lab, b.0, &b_data, a.1).is_none();
            (a_off && b_off).then_some(())
        });
    }
    out
}

fn summary(name: &str, t: &Trials, baseline: Option<Duration>) -> String {
    let ok: Vec<Duration> = t.iter().filter(|(s, _)| *s).map(|(_, d)| *d).collect();
    let failed: Vec<Duration> = t.iter().filter(|(s, _)| !*s).map(|(_, d)| *d).collect();
    let mean = |v: &[Duration]| -> Option<Duration> {
        (!v.is_empty()).then(|| v.iter().sum::<Duration>() / v.len() as u32)
    };
    let fmt = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    let ratio = match (mean(&ok), baseline) {
        (Some(m), Some(b)) => format!("{:.1}x loopback", m.as_secs_f64() / b.as_secs_f64()),
        _ => "-".into(),
    };
    format!(
        "{name:<28} {:>3}/{:<3} {:>6.0} %   direct after {:>8} ({ratio})   gave up after {:>8}",
        ok.len(),
        t.len(),
        100.0 * ok.len() as f64 / t.len().max(1) as f64,
        fmt(mean(&ok)),
        fmt(mean(&failed)),
    )
}

fn main() {
    let mut n = 5;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--trials") {
        n = args[i + 1].parse().expect("--trials N");
    }
    let client = ["--roles", "none", "--client"];

    // Baseline: loopback.
    let base = {
        let mut lab = Lab::loopback();
        let network = start_public_network(&mut lab);
        start_user(&mut lab, "hA", "alice", &network, &client);
        let bob = start_user(&mut lab, "hB", "bob", &network, &client);
        befriend(&lab, ("hA", "alice"), ("hB", "bob"), &bob);
        trials(&lab, ("hA", "alice"), ("hB", "bob"), n)
    };
    let base_mean = {
        let ok: Vec<Duration> = base.iter().filter(|(s, _)| *s).map(|(_, d)| *d).collect();
        (!ok.is_empty()).then(|| ok.iter().sum::<Duration>() / ok.len() as u32)
    };

    let mut lab = Lab::up();
    let [_, _, carol] = three_homes(&mut lab);
    befriend(&lab, ("hB", "bob"), ("hC", "carol"), &carol);
    let ab = trials(&lab, ("hA", "alice"), ("hB", "bob"), n);
    let ac = trials(&lab, ("hA", "alice"), ("hC", "carol"), n);
    let bc = trials(&lab, ("hB", "bob"), ("hC", "carol"), n);

    println!(
        "direct mode, {n} trials per pair: success, mean time to a direct connection, mean time until hole punching gave up"
    );
    println!(
        "{}",
        summary("loopback (baseline, no NAT)", &base, base_mean)
    );
    println!("{}", summary("home A <-> home B (EIM/EIM)", &ab, base_mean));
    println!("{}", summary("home A <-> home C (EIM/sym)", &ac, base_mean));
    println!("{}", summary("home B <-> home C (EIM/sym)", &bc, base_mean));
}
