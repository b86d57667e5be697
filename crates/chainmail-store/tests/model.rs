//! Property test: any sequence of appends, reads, deletions, expiry and
//! reopening gives the same results as a plain in-memory model, and the
//! counters always agree with the items.

mod common;

use std::collections::BTreeMap;

use chainmail_store::{AppendOutcome, MailboxItem, MailboxStats, Quota, QuotaExceeded, Store};
use common::mailbox;
use proptest::prelude::*;

const MAILBOXES: u8 = 3;
const QUOTA: Quota = Quota {
    max_items: 4,
    max_bytes: 150,
    max_total_bytes: 300,
};

#[derive(Debug, Clone)]
enum Op {
    /// Items as (mailbox, length), stored at `now`.
    Append {
        items: Vec<(u8, usize)>,
        now: u64,
    },
    Read {
        mailbox: u8,
        after: u64,
        limit: usize,
    },
    DeleteThrough {
        mailbox: u8,
        through: u64,
    },
    Expire {
        now: u64,
        ttl: u64,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop::collection::vec((0..MAILBOXES, 0..80usize), 0..6), 0..100u64)
            .prop_map(|(items, now)| Op::Append { items, now }),
        2 => (0..MAILBOXES, 0..14u64, 0..6usize)
            .prop_map(|(mailbox, after, limit)| Op::Read { mailbox, after, limit }),
        2 => (0..MAILBOXES, 0..14u64)
            .prop_map(|(mailbox, through)| Op::DeleteThrough { mailbox, through }),
        1 => (0..120u64, 0..60u64).prop_map(|(now, ttl)| Op::Expire { now, ttl }),
        1 => Just(Op::Reopen),
    ]
}

/// What the store should hold.
#[derive(Default)]
struct Model {
    /// (mailbox, seq) → (stored at, bytes).
    items: BTreeMap<(u8, u64), (u64, Vec<u8>)>,
    next_seq: [u64; MAILBOXES as usize],
}

impl Model {
    fn mailbox(&self, m: u8) -> impl Iterator<Item = (&(u8, u64), &(u64, Vec<u8>))> {
        self.items.range((m, 0)..=(m, u64::MAX))
    }

    fn usage(&self, m: u8) -> (u64, u64) {
        self.mailbox(m).fold((0, 0), |(n, b), (_, (_, bytes))| {
            (n + 1, b + bytes.len() as u64)
        })
    }

    fn total_bytes(&self) -> u64 {
        self.items.values().map(|(_, b)| b.len() as u64).sum()
    }

    fn append(&mut self, m: u8, now: u64, bytes: Vec<u8>) -> AppendOutcome {
        let (items, used) = self.usage(m);
        let size = bytes.len() as u64;
        let total = self.total_bytes();
        if items >= QUOTA.max_items {
            return AppendOutcome::Rejected(QuotaExceeded::Items {
                max_items: QUOTA.max_items,
            });
        }
        if used + size > QUOTA.max_bytes {
            return AppendOutcome::Rejected(QuotaExceeded::Bytes {
                stored: used,
                item: size,
                max_bytes: QUOTA.max_bytes,
            });
        }
        if total + size > QUOTA.max_total_bytes {
            return AppendOutcome::Rejected(QuotaExceeded::TotalBytes {
                stored: total,
                item: size,
                max_total_bytes: QUOTA.max_total_bytes,
            });
        }
        let next = &mut self.next_seq[m as usize];
        *next += 1;
        self.items.insert((m, *next), (now, bytes));
        AppendOutcome::Stored { seq: *next }
    }
}

fn check_stats(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    let stats = store.mailbox_stats().unwrap();
    let expected: Vec<MailboxStats> = (0..MAILBOXES)
        .filter_map(|m| {
            let (items, bytes) = model.usage(m);
            (items > 0).then_some(MailboxStats {
                mailbox: mailbox(m),
                items,
                bytes,
            })
        })
        .collect();
    prop_assert_eq!(stats.mailboxes, expected);
    prop_assert_eq!(stats.total_items, model.items.len() as u64);
    prop_assert_eq!(stats.total_bytes, model.total_bytes());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_store_behaves_like_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.redb");
        let mut store = Store::open(&path).unwrap();
        let mut model = Model::default();
        let mut counter = 0u8;

        for op in ops {
            match op {
                Op::Append { items, now } => {
                    let contents: Vec<(u8, Vec<u8>)> = items
                        .iter()
                        .map(|&(m, len)| {
                            counter = counter.wrapping_add(1);
                            (m, vec![counter; len])
                        })
                        .collect();
                    let batch: Vec<_> = contents
                        .iter()
                        .map(|(m, c)| (mailbox(*m), c.as_slice()))
                        .collect();
                    let got = store.mailbox_append(&batch, now, &QUOTA).unwrap();
                    let expected: Vec<AppendOutcome> = contents
                        .into_iter()
                        .map(|(m, c)| model.append(m, now, c))
                        .collect();
                    prop_assert_eq!(got, expected);
                }
                Op::Read { mailbox: m, after, limit } => {
                    let got = store.mailbox_read(&mailbox(m), after, limit).unwrap();
                    let expected: Vec<MailboxItem> = model
                        .mailbox(m)
                        .filter(|((_, seq), _)| *seq > after)
                        .take(limit)
                        .map(|((_, seq), (at, bytes))| MailboxItem {
                            seq: *seq,
                            stored_at_ms: *at,
                            bytes: bytes.clone(),
                        })
                        .collect();
                    prop_assert_eq!(got, expected);
                }
                Op::DeleteThrough { mailbox: m, through } => {
                    let got = store.mailbox_delete_through(&mailbox(m), through).unwrap();
                    let before = model.items.len();
                    model.items.retain(|(im, seq), _| *im != m || *seq > through);
                    prop_assert_eq!(got, before - model.items.len());
                }
                Op::Expire { now, ttl } => {
                    let got = store.mailbox_expire(now, ttl).unwrap();
                    let before = model.items.len();
                    model.items.retain(|_, (at, _)| *at + ttl > now);
                    prop_assert_eq!(got, before - model.items.len());
                }
                Op::Reopen => {
                    drop(store);
                    store = Store::open(&path).unwrap();
                }
            }
            check_stats(&store, &model)?;
        }
        // In the end every item is there, in order, with its bytes.
        for m in 0..MAILBOXES {
            let got = store.mailbox_read(&mailbox(m), 0, 100).unwrap();
            let expected: Vec<(u64, Vec<u8>)> =
                model.mailbox(m).map(|((_, s), (_, b))| (*s, b.clone())).collect();
            let got: Vec<(u64, Vec<u8>)> = got.into_iter().map(|i| (i.seq, i.bytes)).collect();
            prop_assert_eq!(got, expected);
        }
    }
}
