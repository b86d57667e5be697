//! Retired mix keys are gone from the disk, not only from the tables: the
//! store's files are scanned byte by byte for them (issue 12, attack 10).
//! Without this, anyone who later reads the disk recovers old epochs' keys
//! from redb's free pages and unwraps the packets recorded then.

use chainmail_store::Store;

/// Distinct bytes that appear nowhere else (a hash of `seed` and `i`).
fn bytes<const N: usize>(seed: &str, i: u64) -> [u8; N] {
    let mut h = blake3::Hasher::new();
    h.update(seed.as_bytes());
    h.update(&i.to_le_bytes());
    let mut out = [0u8; N];
    h.finalize_xof().fill(&mut out);
    out
}

/// Whether `needle` occurs anywhere in the file at `path`.
fn file_holds(path: &std::path::Path, needle: &[u8]) -> bool {
    let bytes = std::fs::read(path).unwrap();
    bytes.windows(needle.len()).any(|w| w == needle)
}

fn files(path: &std::path::Path) -> [std::path::PathBuf; 2] {
    [path.to_path_buf(), Store::keys_path(path)]
}

#[test]
fn a_retired_mix_key_is_in_neither_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let keys: Vec<[u8; 32]> = (0..4).map(|i| bytes("key", i)).collect();
    {
        let store = Store::open(&path).unwrap();
        for (epoch, key) in (100u32..).zip(&keys) {
            store.put_mix_key(epoch, key).unwrap();
            // Traffic between rotations: replay tags and mail move redb's
            // pages around.
            let tags: Vec<[u8; 16]> = (0..2000)
                .map(|i| bytes("tag", u64::from(epoch) << 32 | i))
                .collect();
            store.insert_replay_tags(epoch, &tags).unwrap();
        }
        // The sanity check that the scan can find a key at all.
        assert!(files(&path).iter().any(|f| file_holds(f, &keys[0])));
        assert_eq!(store.delete_mix_keys_before(102).unwrap(), 2);
        assert!(store.replay_tags(101).unwrap().is_empty());
    }
    for retired in &keys[..2] {
        for f in files(&path) {
            assert!(!file_holds(&f, retired), "a retired key is still in {f:?}");
        }
    }
    // The live keys are still there, after a reopen.
    let store = Store::open(&path).unwrap();
    let live: Vec<(u32, [u8; 32])> = store
        .mix_keys()
        .unwrap()
        .into_iter()
        .map(|(e, k)| (e, *k))
        .collect();
    assert_eq!(live, vec![(102, keys[2]), (103, keys[3])]);
}

#[test]
fn keys_an_older_store_kept_in_its_tables_are_moved_out_and_the_file_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let keys: Vec<[u8; 32]> = (0..3).map(|i| bytes("old key", i)).collect();
    {
        // What an earlier version left: the keys in a `mix_keys` table.
        let store = Store::open(&path).unwrap();
        let tags: Vec<[u8; 16]> = (0..5000).map(|i| bytes("old tag", i)).collect();
        store.insert_replay_tags(7, &tags).unwrap();
        drop(store);
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let table: redb::TableDefinition<'_, u32, [u8; 32]> =
                redb::TableDefinition::new("mix_keys");
            let mut t = txn.open_table(table).unwrap();
            for (epoch, key) in (7u32..).zip(&keys) {
                t.insert(epoch, key).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    assert!(file_holds(&path, &keys[0]));
    let store = Store::open(&path).unwrap();
    let moved: Vec<[u8; 32]> = store
        .mix_keys()
        .unwrap()
        .into_iter()
        .map(|(_, k)| *k)
        .collect();
    assert_eq!(moved, keys);
    store.delete_mix_keys_before(9).unwrap();
    drop(store);
    for retired in &keys[..2] {
        for f in files(&path) {
            assert!(!file_holds(&f, retired), "a retired key is still in {f:?}");
        }
    }
}

#[test]
fn a_torn_slot_counts_as_empty_and_the_others_stay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    {
        let store = Store::open(&path).unwrap();
        store.put_mix_key(1, &[1; 32]).unwrap();
        store.put_mix_key(2, &[2; 32]).unwrap();
    }
    // A crash halfway through writing the first slot.
    let keys_file = Store::keys_path(&path);
    let mut bytes = std::fs::read(&keys_file).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&keys_file, &bytes).unwrap();
    let store = Store::open(&path).unwrap();
    let left: Vec<u32> = store
        .mix_keys()
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(left, vec![2]);
    // The slot is free again.
    store.put_mix_key(3, &[3; 32]).unwrap();
    assert_eq!(store.mix_keys().unwrap().len(), 2);
}
