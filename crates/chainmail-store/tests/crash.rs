//! Crash safety with a real process kill: a child process appends items and
//! prints every acknowledged one; the parent kills it with SIGKILL in the
//! middle of its work, reopens the store, and finds every acknowledged item
//! with its exact bytes, and every acknowledged deletion done.
//!
//! The child is this test binary itself, run with `--exact` on
//! [`child_appends_until_killed`] and an environment variable naming the
//! store; without the variable that test does nothing.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use chainmail_store::{AppendOutcome, MAX_READ_ITEMS, Store};
use common::{UNLIMITED, contents, mailbox};

const STORE_VAR: &str = "CHAINMAIL_STORE_CRASH_CHILD";
const ROUND_VAR: &str = "CHAINMAIL_STORE_CRASH_ROUND";
const CHILD_TEST: &str = "child_appends_until_killed";
const MAILBOXES: u8 = 3;
/// Mailbox whose items the child also deletes as it goes.
const DELETED_MAILBOX: u8 = 2;
/// Acknowledgements the parent waits for before it kills the child.
const ACKS_BEFORE_KILL: usize = 300;
const ROUNDS: u64 = 3;

/// The child: appends batches of 1 to 7 items to three mailboxes, forever,
/// and prints `ACK <mailbox> <seq> <item>` for every stored item once the
/// append has returned, and `DEL <mailbox> <through>` once a deletion has.
#[test]
fn child_appends_until_killed() {
    let Some(path) = std::env::var_os(STORE_VAR) else {
        return;
    };
    let round: u64 = std::env::var(ROUND_VAR).unwrap().parse().unwrap();
    let store = Store::open(Path::new(&path)).unwrap();
    let mut out = std::io::stdout().lock();
    let mut item = round * 1_000_000;
    let mut last_deleted_box_seq = 0;
    for batch_number in 0u64.. {
        let n = 1 + (batch_number % 7);
        let items: Vec<(u8, u64, Vec<u8>)> = (0..n)
            .map(|k| {
                let number = item + k;
                (
                    (number % u64::from(MAILBOXES)) as u8,
                    number,
                    contents(number),
                )
            })
            .collect();
        item += n;
        let batch: Vec<_> = items
            .iter()
            .map(|(m, _, c)| (mailbox(*m), c.as_slice()))
            .collect();
        let outcomes = store.mailbox_append(&batch, item, &UNLIMITED).unwrap();
        for ((m, number, _), outcome) in items.iter().zip(outcomes) {
            let AppendOutcome::Stored { seq } = outcome else {
                panic!("rejected under an unlimited quota");
            };
            writeln!(out, "ACK {m} {seq} {number}").unwrap();
            if *m == DELETED_MAILBOX {
                last_deleted_box_seq = seq;
            }
        }
        out.flush().unwrap();
        if batch_number % 10 == 9 && last_deleted_box_seq > 2 {
            let through = last_deleted_box_seq - 2;
            store
                .mailbox_delete_through(&mailbox(DELETED_MAILBOX), through)
                .unwrap();
            writeln!(out, "DEL {DELETED_MAILBOX} {through}").unwrap();
            out.flush().unwrap();
        }
    }
}

#[test]
fn killing_the_process_loses_no_acknowledged_item() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    // (mailbox, seq) → item number, for every acknowledged item.
    let mut acked: BTreeMap<(u8, u64), u64> = BTreeMap::new();
    let mut deleted_through = 0;
    let mut last_seq = [0u64; MAILBOXES as usize];

    for round in 1..=ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(STORE_VAR, &path)
            .env(ROUND_VAR, round.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut acks = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let fields: Vec<&str> = line.split(' ').collect();
            match fields[..] {
                ["ACK", m, seq, number] => {
                    let (m, seq): (u8, u64) = (m.parse().unwrap(), seq.parse().unwrap());
                    // Sequence numbers grow, also across kills and reopening.
                    assert!(seq > last_seq[m as usize], "round {round}: {line}");
                    last_seq[m as usize] = seq;
                    acked.insert((m, seq), number.parse().unwrap());
                    acks += 1;
                }
                ["DEL", _, through] => deleted_through = through.parse().unwrap(),
                _ => continue,
            }
            if acks == ACKS_BEFORE_KILL {
                break;
            }
        }
        assert_eq!(
            acks, ACKS_BEFORE_KILL,
            "round {round}: the child stopped early"
        );
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success(), "round {round}: the child was not killed");

        let store = Store::open(&path).unwrap();
        let mut total = (0, 0);
        for m in 0..MAILBOXES {
            let mut found = BTreeMap::new();
            let mut after = 0;
            loop {
                let items = store
                    .mailbox_read(&mailbox(m), after, MAX_READ_ITEMS)
                    .unwrap();
                let Some(last) = items.last() else { break };
                after = last.seq;
                for item in items {
                    total.0 += 1;
                    total.1 += item.bytes.len() as u64;
                    found.insert(item.seq, item.bytes);
                }
            }
            for (&(_, seq), &number) in acked.range((m, 0)..=(m, u64::MAX)) {
                if m == DELETED_MAILBOX && seq <= deleted_through {
                    assert!(
                        !found.contains_key(&seq),
                        "round {round}: {m}/{seq} undeleted"
                    );
                } else {
                    let bytes = found.get(&seq).unwrap_or_else(|| {
                        panic!("round {round}: acknowledged item {m}/{seq} is missing")
                    });
                    assert_eq!(*bytes, contents(number), "round {round}: {m}/{seq} differs");
                }
            }
        }
        let stats = store.mailbox_stats().unwrap();
        assert_eq!((stats.total_items, stats.total_bytes), total);
    }
}
