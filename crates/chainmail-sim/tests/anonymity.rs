//! The anonymity measurement on a small mixnet of real cores: a message's
//! sender is hidden among many clients when every mix is honest, and much
//! less so when the adversary holds every mix's keys (only the providers'
//! pools are left). The full figures per preset come from the
//! `anonymity` benchmark (BENCHMARKS.md).

use std::time::Duration;

use chainmail_mixnet::Preset;
use chainmail_sim::anonymity::{Experiment, run};

#[test]
fn senders_hide_among_many_clients_until_the_mixes_are_corrupt() {
    let clients = 400;
    let report = run(&Experiment {
        seed: 11,
        preset: Preset::Standard,
        clients,
        providers: 4,
        layers: 3,
        mixes_per_layer: 4,
        corrupt: vec![0.0, 0.25, 1.0],
        warmup: Duration::from_secs(2),
        messages: 200,
        window: Duration::from_secs(2),
        drain: Duration::from_secs(3),
    });
    let [honest, quarter, all] = &report.figures[..] else {
        panic!("one set of figures per adversary");
    };
    for f in &report.figures {
        println!("{f:?}");
    }
    assert_eq!(all.corrupt_mixes, 12);
    assert_eq!(quarter.corrupt_mixes, 3);
    // Nearly every message arrived and was measured, by every adversary.
    assert!(honest.messages >= 180, "{honest:?}");
    assert!(report.figures.iter().all(|f| f.messages == honest.messages));
    // Honest mixes: the sender is one of well over a hundred (the ideal is
    // log2 400 = 8.6 bits).
    assert!(honest.mean_bits > 6.5, "{honest:?}");
    assert!(honest.mean_bits < report.ideal_bits);
    // Corrupt mixes only take anonymity away.
    assert!(quarter.mean_bits <= honest.mean_bits + 1e-9, "{quarter:?}");
    // With every mix open, what is left is the first provider's pool: the
    // sender is narrowed to a few of that provider's clients.
    assert!(all.mean_bits < honest.mean_bits - 2.0, "{all:?}");
    assert!(all.median_eps > honest.median_eps || all.unbounded > honest.unbounded);
}
