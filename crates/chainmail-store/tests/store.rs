//! The store's operations on real redb files: persistence across reopen,
//! sequence numbers, quotas, expiry, deletion, key-value blobs, mix keys and
//! replay tags, bounds.

mod common;

use chainmail_store::{
    AppendOutcome, MAX_APPEND_BATCH, MAX_ITEM_SIZE, MAX_KV_NAMESPACE_SIZE, MAX_KV_VALUE_SIZE,
    MAX_READ_ITEMS, MAX_REPLAY_TAGS_PER_CALL, MailboxItem, MailboxStats, Quota, QuotaExceeded,
    Store, StoreError,
};
use common::{UNLIMITED, contents, mailbox};
use tempfile::TempDir;

fn new_store() -> (TempDir, std::path::PathBuf, Store) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store = Store::open(&path).unwrap();
    (dir, path, store)
}

fn stored(outcomes: &[AppendOutcome]) -> Vec<u64> {
    outcomes
        .iter()
        .map(|o| match o {
            AppendOutcome::Stored { seq } => *seq,
            AppendOutcome::Rejected(why) => panic!("rejected: {why:?}"),
        })
        .collect()
}

fn seqs(items: &[MailboxItem]) -> Vec<u64> {
    items.iter().map(|i| i.seq).collect()
}

#[test]
fn a_new_store_is_empty() {
    let (_dir, _path, store) = new_store();
    assert!(store.node_identity().unwrap().is_none());
    assert!(store.mix_keys().unwrap().is_empty());
    assert!(store.replay_tags(0).unwrap().is_empty());
    assert!(store.mailbox_read(&mailbox(1), 0, 10).unwrap().is_empty());
    let stats = store.mailbox_stats().unwrap();
    assert!(stats.mailboxes.is_empty());
    assert_eq!((stats.total_items, stats.total_bytes), (0, 0));
    assert!(store.kv_list("client").unwrap().is_empty());
}

#[test]
fn everything_survives_reopening() {
    let (_dir, path, store) = new_store();
    store.set_node_identity(&[7; 32]).unwrap();
    store.put_mix_key(10, &[10; 32]).unwrap();
    store.put_mix_key(11, &[11; 32]).unwrap();
    store.insert_replay_tags(10, &[[1; 16], [2; 16]]).unwrap();
    store.insert_replay_tags(11, &[[3; 16]]).unwrap();
    let a = contents(1);
    let b = contents(2);
    let outcomes = store
        .mailbox_append(&[(mailbox(1), &a), (mailbox(2), &b)], 1_000, &UNLIMITED)
        .unwrap();
    assert_eq!(stored(&outcomes), [1, 1]);
    store.kv_put("client", b"state", b"blob").unwrap();
    drop(store);

    let store = Store::open(&path).unwrap();
    assert_eq!(*store.node_identity().unwrap().unwrap(), [7; 32]);
    let keys: Vec<(u32, [u8; 32])> = store
        .mix_keys()
        .unwrap()
        .into_iter()
        .map(|(e, k)| (e, *k))
        .collect();
    assert_eq!(keys, [(10, [10; 32]), (11, [11; 32])]);
    assert_eq!(store.replay_tags(10).unwrap(), [[1; 16], [2; 16]]);
    assert_eq!(store.replay_tags(11).unwrap(), [[3; 16]]);
    assert_eq!(
        store.mailbox_read(&mailbox(1), 0, 10).unwrap(),
        [MailboxItem {
            seq: 1,
            stored_at_ms: 1_000,
            bytes: a.clone()
        }]
    );
    assert_eq!(store.mailbox_read(&mailbox(2), 0, 10).unwrap()[0].bytes, b);
    assert_eq!(
        store.kv_get("client", b"state").unwrap().as_deref(),
        Some(&b"blob"[..])
    );
    let stats = store.mailbox_stats().unwrap();
    assert_eq!(stats.total_items, 2);
    assert_eq!(stats.total_bytes, (a.len() + b.len()) as u64);

    // Replacing the identity persists too.
    store.set_node_identity(&[8; 32]).unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(*store.node_identity().unwrap().unwrap(), [8; 32]);
}

#[test]
fn sequence_numbers_only_grow_across_deletes_expiry_and_reopening() {
    let (_dir, path, store) = new_store();
    let m = mailbox(1);
    let x = b"x".as_slice();
    let batch = [(m, x), (m, x), (m, x)];
    assert_eq!(
        stored(&store.mailbox_append(&batch, 0, &UNLIMITED).unwrap()),
        [1, 2, 3]
    );
    // Another mailbox has its own numbers.
    assert_eq!(
        stored(
            &store
                .mailbox_append(&[(mailbox(2), x)], 0, &UNLIMITED)
                .unwrap()
        ),
        [1]
    );
    assert_eq!(store.mailbox_delete_through(&m, 3).unwrap(), 3);
    assert_eq!(
        stored(&store.mailbox_append(&[(m, x)], 0, &UNLIMITED).unwrap()),
        [4]
    );
    drop(store);

    let store = Store::open(&path).unwrap();
    assert_eq!(
        stored(&store.mailbox_append(&[(m, x)], 5, &UNLIMITED).unwrap()),
        [5]
    );
    // Expire everything: the mailbox is empty, its numbers still move on.
    assert_eq!(store.mailbox_expire(100, 1).unwrap(), 3);
    assert!(store.mailbox_stats().unwrap().mailboxes.is_empty());
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(
        stored(&store.mailbox_append(&[(m, x)], 200, &UNLIMITED).unwrap()),
        [6]
    );
    assert_eq!(seqs(&store.mailbox_read(&m, 0, 10).unwrap()), [6]);
}

#[test]
fn quotas_hold_per_mailbox_and_leave_other_mailboxes_alone() {
    let (_dir, _path, store) = new_store();
    let quota = Quota {
        max_items: 3,
        max_bytes: 100,
        max_total_bytes: 1_000,
    };
    let (a, b) = (mailbox(1), mailbox(2));
    let ten = [0u8; 10];
    // Items: the fourth is rejected, in the same batch as the first three.
    let outcomes = store
        .mailbox_append(
            &[(a, &ten), (a, &ten), (a, &ten), (a, &ten), (b, &ten)],
            0,
            &quota,
        )
        .unwrap();
    assert_eq!(
        outcomes,
        [
            AppendOutcome::Stored { seq: 1 },
            AppendOutcome::Stored { seq: 2 },
            AppendOutcome::Stored { seq: 3 },
            AppendOutcome::Rejected(QuotaExceeded::Items { max_items: 3 }),
            AppendOutcome::Stored { seq: 1 },
        ]
    );
    // Bytes: b holds 10, so 90 more fit and 91 do not.
    let ninety = [0u8; 90];
    let ninety_one = [0u8; 91];
    let outcomes = store
        .mailbox_append(&[(b, &ninety_one), (b, &ninety), (b, &[])], 0, &quota)
        .unwrap();
    assert_eq!(
        outcomes,
        [
            AppendOutcome::Rejected(QuotaExceeded::Bytes {
                stored: 10,
                item: 91,
                max_bytes: 100
            }),
            // A rejected item used no sequence number.
            AppendOutcome::Stored { seq: 2 },
            AppendOutcome::Stored { seq: 3 },
        ]
    );
    // Deleting makes room again.
    assert_eq!(store.mailbox_delete_through(&a, 1).unwrap(), 1);
    assert_eq!(
        store.mailbox_append(&[(a, &ten)], 0, &quota).unwrap(),
        [AppendOutcome::Stored { seq: 4 }]
    );
    // The store-wide limit: 130 bytes stored.
    let tight = Quota {
        max_total_bytes: 135,
        ..quota
    };
    assert_eq!(
        store
            .mailbox_append(&[(mailbox(3), &ten), (mailbox(3), &[1; 5])], 0, &tight)
            .unwrap(),
        [
            AppendOutcome::Rejected(QuotaExceeded::TotalBytes {
                stored: 130,
                item: 10,
                max_total_bytes: 135
            }),
            AppendOutcome::Stored { seq: 1 },
        ]
    );
    let stats = store.mailbox_stats().unwrap();
    assert_eq!(
        stats.mailboxes,
        [
            MailboxStats {
                mailbox: a,
                items: 3,
                bytes: 30
            },
            MailboxStats {
                mailbox: b,
                items: 3,
                bytes: 100
            },
            MailboxStats {
                mailbox: mailbox(3),
                items: 1,
                bytes: 5
            },
        ]
    );
    assert_eq!((stats.total_items, stats.total_bytes), (7, 135));
}

/// Checks that the counters agree with what reading every mailbox finds.
fn assert_stats_match_reads(store: &Store, mailboxes: &[[u8; 32]]) {
    let stats = store.mailbox_stats().unwrap();
    let mut total = (0, 0);
    let mut expected = Vec::new();
    for m in mailboxes {
        let items = store.mailbox_read(m, 0, MAX_READ_ITEMS).unwrap();
        let bytes: u64 = items.iter().map(|i| i.bytes.len() as u64).sum();
        if !items.is_empty() {
            expected.push(MailboxStats {
                mailbox: *m,
                items: items.len() as u64,
                bytes,
            });
        }
        total.0 += items.len() as u64;
        total.1 += bytes;
    }
    assert_eq!(stats.mailboxes, expected);
    assert_eq!((stats.total_items, stats.total_bytes), total);
}

#[test]
fn expiry_deletes_exactly_the_old_items_and_keeps_the_counters_right() {
    let (_dir, path, store) = new_store();
    let (a, b) = (mailbox(1), mailbox(2));
    for (t, m) in [(0, a), (10, b), (10, a), (20, a), (30, b)] {
        let c = contents(t);
        store.mailbox_append(&[(m, &c)], t, &UNLIMITED).unwrap();
    }
    // Nothing is older than the ttl yet (and no underflow when ttl > now).
    assert_eq!(store.mailbox_expire(5, 10).unwrap(), 0);
    // stored_at + ttl <= now: the items of time 0 and 10 go.
    assert_eq!(store.mailbox_expire(20, 10).unwrap(), 3);
    assert_eq!(seqs(&store.mailbox_read(&a, 0, 10).unwrap()), [3]);
    assert_eq!(seqs(&store.mailbox_read(&b, 0, 10).unwrap()), [2]);
    assert_stats_match_reads(&store, &[a, b]);
    // Running it again finds nothing more.
    assert_eq!(store.mailbox_expire(20, 10).unwrap(), 0);
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_stats_match_reads(&store, &[a, b]);
    // Items deleted by the owner are not expired twice.
    assert_eq!(store.mailbox_delete_through(&a, 3).unwrap(), 1);
    assert_eq!(store.mailbox_expire(1_000, 10).unwrap(), 1);
    assert_stats_match_reads(&store, &[a, b]);
    assert_eq!(store.mailbox_stats().unwrap().total_items, 0);
}

#[test]
fn expiry_works_off_a_backlog_larger_than_one_transaction() {
    let (_dir, _path, store) = new_store();
    let m = mailbox(9);
    let item = [1u8; 8];
    let batch: Vec<_> = (0..MAX_APPEND_BATCH)
        .map(|_| (m, item.as_slice()))
        .collect();
    for t in 0..5 {
        store.mailbox_append(&batch, t, &UNLIMITED).unwrap();
    }
    store
        .mailbox_append(&[(m, &item)], 100, &UNLIMITED)
        .unwrap();
    assert_eq!(store.mailbox_expire(10, 5).unwrap(), 5 * MAX_APPEND_BATCH);
    assert_eq!(
        seqs(&store.mailbox_read(&m, 0, 10).unwrap()),
        [5 * MAX_APPEND_BATCH as u64 + 1]
    );
    assert_stats_match_reads(&store, &[m]);
}

#[test]
fn delete_through_deletes_up_to_and_including() {
    let (_dir, _path, store) = new_store();
    let (a, b) = (mailbox(1), mailbox(2));
    let items: Vec<Vec<u8>> = (0..6).map(contents).collect();
    let batch: Vec<_> = items.iter().map(|c| (a, c.as_slice())).collect();
    store.mailbox_append(&batch, 0, &UNLIMITED).unwrap();
    store
        .mailbox_append(&[(b, &items[0])], 0, &UNLIMITED)
        .unwrap();

    assert_eq!(store.mailbox_delete_through(&a, 0).unwrap(), 0);
    assert_eq!(store.mailbox_delete_through(&a, 2).unwrap(), 2);
    assert_eq!(store.mailbox_delete_through(&a, 2).unwrap(), 0);
    let left = store.mailbox_read(&a, 0, 10).unwrap();
    assert_eq!(seqs(&left), [3, 4, 5, 6]);
    assert_eq!(left[0].bytes, items[2]);
    // The other mailbox is untouched.
    assert_eq!(seqs(&store.mailbox_read(&b, 0, 10).unwrap()), [1]);
    assert_eq!(store.mailbox_delete_through(&a, u64::MAX).unwrap(), 4);
    assert_stats_match_reads(&store, &[a, b]);
}

#[test]
fn reads_start_after_the_given_seq_and_are_capped() {
    let (_dir, _path, store) = new_store();
    let m = mailbox(1);
    let batch: Vec<_> = (0..MAX_APPEND_BATCH).map(|_| (m, &b"i"[..])).collect();
    store.mailbox_append(&batch, 0, &UNLIMITED).unwrap();
    store.mailbox_append(&batch[..10], 0, &UNLIMITED).unwrap();
    assert_eq!(seqs(&store.mailbox_read(&m, 0, 3).unwrap()), [1, 2, 3]);
    assert_eq!(seqs(&store.mailbox_read(&m, 2, 2).unwrap()), [3, 4]);
    assert!(store.mailbox_read(&m, 5, 0).unwrap().is_empty());
    assert!(store.mailbox_read(&m, u64::MAX, 10).unwrap().is_empty());
    assert!(store.mailbox_read(&m, 2_000, 10).unwrap().is_empty());
    let all = store.mailbox_read(&m, 0, usize::MAX).unwrap();
    assert_eq!(all.len(), MAX_READ_ITEMS);
    assert_eq!(
        seqs(&store.mailbox_read(&m, 1030, 100).unwrap()),
        [1031, 1032, 1033, 1034]
    );
}

#[test]
fn oversized_items_and_batches_are_refused_whole() {
    let (_dir, _path, store) = new_store();
    let m = mailbox(1);
    let ok = vec![0u8; MAX_ITEM_SIZE];
    let big = vec![0u8; MAX_ITEM_SIZE + 1];
    match store.mailbox_append(&[(m, &ok), (m, &big)], 0, &UNLIMITED) {
        Err(StoreError::ItemTooLarge { index: 1, size }) => assert_eq!(size, MAX_ITEM_SIZE + 1),
        other => panic!("expected ItemTooLarge, got {other:?}"),
    }
    assert!(store.mailbox_read(&m, 0, 10).unwrap().is_empty());
    let batch: Vec<_> = (0..=MAX_APPEND_BATCH).map(|_| (m, &b""[..])).collect();
    assert!(matches!(
        store.mailbox_append(&batch, 0, &UNLIMITED),
        Err(StoreError::BatchTooLarge { .. })
    ));
    assert!(store.mailbox_append(&[], 0, &UNLIMITED).unwrap().is_empty());
    // The largest item is stored and read back whole.
    assert_eq!(
        stored(&store.mailbox_append(&[(m, &ok)], 0, &UNLIMITED).unwrap()),
        [1]
    );
    assert_eq!(store.mailbox_read(&m, 0, 1).unwrap()[0].bytes, ok);
    let tags = vec![[0u8; 16]; MAX_REPLAY_TAGS_PER_CALL + 1];
    assert!(matches!(
        store.insert_replay_tags(1, &tags),
        Err(StoreError::BatchTooLarge { .. })
    ));
    // The messages say what to do.
    let err = store
        .mailbox_append(&[(m, &big)], 0, &UNLIMITED)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 4096"), "{err}");
}

#[test]
fn key_value_round_trips_by_namespace() {
    let (_dir, path, store) = new_store();
    store.kv_put("a", b"k1", b"v1").unwrap();
    store.kv_put("a", b"k2", b"v2").unwrap();
    store.kv_put("a", b"", b"empty key").unwrap();
    store.kv_put("ab", b"k1", b"other namespace").unwrap();
    store.kv_put("b", b"k1", b"").unwrap();
    assert_eq!(store.kv_get("a", b"k1").unwrap().unwrap(), b"v1");
    assert_eq!(store.kv_get("b", b"k1").unwrap().unwrap(), b"");
    assert_eq!(store.kv_get("a", b"k3").unwrap(), None);
    store.kv_put("a", b"k1", b"replaced").unwrap();
    assert_eq!(
        store.kv_list("a").unwrap(),
        [
            (b"".to_vec(), b"empty key".to_vec()),
            (b"k1".to_vec(), b"replaced".to_vec()),
            (b"k2".to_vec(), b"v2".to_vec()),
        ]
    );
    assert_eq!(
        store.kv_list("ab").unwrap(),
        [(b"k1".to_vec(), b"other namespace".to_vec())]
    );
    assert!(store.kv_list("c").unwrap().is_empty());
    assert!(store.kv_delete("a", b"k2").unwrap());
    assert!(!store.kv_delete("a", b"k2").unwrap());
    drop(store);

    let store = Store::open(&path).unwrap();
    assert_eq!(store.kv_list("a").unwrap().len(), 2);
    assert_eq!(store.kv_get("a", b"k1").unwrap().unwrap(), b"replaced");
    let big = vec![1u8; MAX_KV_VALUE_SIZE];
    store.kv_put("big", b"k", &big).unwrap();
    assert_eq!(store.kv_get("big", b"k").unwrap().unwrap(), big);

    for bad in [
        store.kv_put("", b"k", b"v"),
        store.kv_put(&"n".repeat(MAX_KV_NAMESPACE_SIZE + 1), b"k", b"v"),
        store.kv_put("a", &[0; 1025], b"v"),
        store.kv_put("a", b"k", &vec![0; MAX_KV_VALUE_SIZE + 1]),
    ] {
        assert!(matches!(bad, Err(StoreError::InvalidKv { .. })), "{bad:?}");
    }
}

#[test]
fn deleting_old_mix_keys_takes_their_replay_tags_with_them() {
    let (_dir, path, store) = new_store();
    for epoch in 1..=5u32 {
        store.put_mix_key(epoch, &[epoch as u8; 32]).unwrap();
        let tags: Vec<[u8; 16]> = (0..=255u8).map(|i| [i; 16]).collect();
        store.insert_replay_tags(epoch, &tags).unwrap();
    }
    // A tag recorded twice is kept once.
    store.insert_replay_tags(3, &[[0; 16], [0; 16]]).unwrap();
    assert_eq!(store.replay_tags(3).unwrap().len(), 256);

    assert_eq!(store.delete_mix_keys_before(3).unwrap(), 2);
    let epochs: Vec<u32> = store.mix_keys().unwrap().iter().map(|(e, _)| *e).collect();
    assert_eq!(epochs, [3, 4, 5]);
    assert!(store.replay_tags(1).unwrap().is_empty());
    assert!(store.replay_tags(2).unwrap().is_empty());
    for epoch in 3..=5 {
        assert_eq!(store.replay_tags(epoch).unwrap().len(), 256);
    }
    assert_eq!(store.delete_mix_keys_before(3).unwrap(), 0);
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.mix_keys().unwrap().len(), 3);
    assert!(store.replay_tags(2).unwrap().is_empty());
    assert_eq!(store.replay_tags(5).unwrap()[255], [255; 16]);
    // Epochs at the ends of the range.
    store.put_mix_key(u32::MAX, &[1; 32]).unwrap();
    store.insert_replay_tags(u32::MAX, &[[0xFF; 16]]).unwrap();
    assert_eq!(store.delete_mix_keys_before(u32::MAX).unwrap(), 3);
    assert_eq!(store.replay_tags(u32::MAX).unwrap(), [[0xFF; 16]]);
}

#[test]
fn a_store_open_elsewhere_is_refused() {
    let (_dir, path, store) = new_store();
    match Store::open(&path) {
        Err(StoreError::AlreadyOpen { .. }) => {}
        other => panic!("expected AlreadyOpen, got {other:?}"),
    }
    drop(store);
    Store::open(&path).unwrap();
}

#[test]
fn debug_output_shows_no_secrets_or_contents() {
    let (_dir, _path, store) = new_store();
    let item = MailboxItem {
        seq: 1,
        stored_at_ms: 2,
        bytes: b"secret text".to_vec(),
    };
    let shown = format!("{item:?}");
    assert!(!shown.contains("115"), "{shown}"); // no bytes of "secret text"
    assert!(shown.contains("len: 11"), "{shown}");
    assert!(format!("{store:?}").contains("store.redb"));
}

#[cfg(unix)]
#[test]
fn a_new_store_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, path, _store) = new_store();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
}
