//! Sender anonymity per preset against a global passive adversary, with
//! 0 %, 10 % and 20 % of the mixes corrupt: the Loopix measurement on the
//! real cores (see `chainmail_sim::anonymity`).
//!
//! The baseline is perfect anonymity: every one of the N clients equally
//! likely, log2 N bits. Each row prints the measured mean entropy and its
//! ratio to that baseline.
//!
//! `cargo bench -p chainmail-sim --bench anonymity` runs 10^3 and 10^4
//! clients for every preset (about half an hour on two cores);
//! `-- --clients 1000` or `-- --preset standard` runs a part.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use chainmail_mixnet::Preset;
use chainmail_sim::anonymity::{Experiment, run};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let sizes: Vec<usize> = match value("--clients") {
        Some(n) => vec![n.parse().expect("--clients takes a number")],
        None => vec![1_000, 10_000],
    };
    let presets: Vec<Preset> = match value("--preset").as_deref() {
        Some("low-bandwidth") => vec![Preset::LowBandwidth],
        Some("standard") => vec![Preset::Standard],
        Some("strong") => vec![Preset::Strong],
        Some(other) => panic!("no preset {other:?}: low-bandwidth, standard or strong"),
        None => Preset::ALL.to_vec(),
    };
    println!(
        "| preset | clients | corrupt mixes | messages | mean H (bits) | 2^H | 5th pct H | baseline log2 N | H / baseline | median ε | 95th pct ε | ε unbounded | wall time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &clients in &sizes {
        for &preset in &presets {
            let rates = preset.rates();
            // A message waits for a payload slot (exponential, mean 1/λP);
            // four of those let nearly all of them leave and arrive.
            let drain = Duration::from_secs_f64(4.0 / rates.payload_per_s + 1.0);
            let experiment = Experiment {
                seed: 7,
                preset,
                clients,
                providers: 10,
                layers: 3,
                mixes_per_layer: 8,
                corrupt: vec![0.0, 0.1, 0.2],
                warmup: Duration::from_secs(3),
                messages: 1_000,
                window: Duration::from_secs(3),
                drain,
            };
            let started = Instant::now();
            let report = run(&experiment);
            let wall = started.elapsed();
            for f in &report.figures {
                println!(
                    "| {preset:?} | {clients} | {} of 24 | {} | {:.2} | {:.0} | {:.2} | {:.2} | {:.3} | {:.3} | {:.3} | {:.1} % | {:.0} s |",
                    f.corrupt_mixes,
                    f.messages,
                    f.mean_bits,
                    f.anonymity_set(),
                    f.p5_bits,
                    report.ideal_bits,
                    f.mean_bits / report.ideal_bits,
                    f.median_eps,
                    f.p95_eps,
                    f.unbounded * 100.0,
                    wall.as_secs_f64(),
                );
            }
        }
    }
}
