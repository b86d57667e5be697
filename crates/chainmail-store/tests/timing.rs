//! Rough timings of the operations a node runs most, on this machine's disk.
//! Not a benchmark and not run by default:
//!
//! ```text
//! cargo test --release -p chainmail-store --test timing -- --ignored --nocapture
//! ```
//!
//! Set `CHAINMAIL_STORE_TIMING_DIR` to measure on another file system than
//! the temporary directory's.

#![allow(clippy::disallowed_methods)] // measuring needs the clock

mod common;

use std::time::{Duration, Instant};

use chainmail_store::{Store, StoreOptions};
use common::{UNLIMITED, mailbox};

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    eprintln!(
        "{name:<40} n={:<4} mean {:>9.3?}  p50 {:>9.3?}  p99 {:>9.3?}",
        samples.len(),
        mean,
        pick(0.5),
        pick(0.99)
    );
}

fn time(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

#[test]
#[ignore = "timing, run by hand"]
fn timings() {
    let dir = match std::env::var_os("CHAINMAIL_STORE_TIMING_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let path = dir.path().join("timing.redb");
    let store = Store::open(&path).unwrap();
    let packet = vec![0xA5u8; 2048];

    let one: Vec<Duration> = (0..300)
        .map(|i| {
            let batch = [(mailbox((i % 50) as u8), packet.as_slice())];
            time(|| drop(store.mailbox_append(&batch, i, &UNLIMITED).unwrap()))
        })
        .collect();
    summary("mailbox_append, 1 item of 2 KiB", one);

    for n in [10usize, 100, 1000] {
        let batch: Vec<_> = (0..n)
            .map(|i| (mailbox((i % 50) as u8), packet.as_slice()))
            .collect();
        let samples: Vec<Duration> = (0..(3000 / n).clamp(10, 100))
            .map(|i| time(|| drop(store.mailbox_append(&batch, i as u64, &UNLIMITED).unwrap())))
            .collect();
        summary(&format!("mailbox_append, {n} items of 2 KiB"), samples);
    }

    let reads: Vec<Duration> = (0..100)
        .map(|i| time(|| drop(store.mailbox_read(&mailbox(i % 50), 0, 100).unwrap())))
        .collect();
    summary("mailbox_read, 100 items", reads);

    let deletes: Vec<Duration> = (0..50u8)
        .map(|m| {
            time(|| {
                store.mailbox_delete_through(&mailbox(m), 40).unwrap();
            })
        })
        .collect();
    summary("mailbox_delete_through, ~40 items", deletes);

    let tags: Vec<[u8; 16]> = (0..1000u32)
        .map(|i| {
            let mut t = [0; 16];
            t[..4].copy_from_slice(&i.to_be_bytes());
            t
        })
        .collect();
    let inserts: Vec<Duration> = (0..20)
        .map(|e| time(|| store.insert_replay_tags(e, &tags).unwrap()))
        .collect();
    summary("insert_replay_tags, 1000 tags", inserts);

    // A store of about 100 MiB: how long opening takes.
    let batch: Vec<_> = (0..1000usize)
        .map(|i| (mailbox((i % 200) as u8), packet.as_slice()))
        .collect();
    for i in 0..50 {
        store.mailbox_append(&batch, 1000 + i, &UNLIMITED).unwrap();
    }
    let expire = time(|| {
        store.mailbox_expire(1010, 0).unwrap();
    });
    summary("mailbox_expire, ~11,000 items", vec![expire]);
    drop(store);
    let size = std::fs::metadata(&path).unwrap().len();
    for verify_on_open in [true, false] {
        let options = StoreOptions {
            verify_on_open,
            ..StoreOptions::default()
        };
        let samples: Vec<Duration> = (0..3)
            .map(|_| time(|| drop(Store::open_with(&path, options).unwrap())))
            .collect();
        summary(
            &format!("open {} MiB, verify_on_open={verify_on_open}", size >> 20),
            samples,
        );
    }
}
