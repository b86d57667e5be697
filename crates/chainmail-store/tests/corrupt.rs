//! Files that are not stores, or damaged ones: opening them gives an error,
//! never a panic, and leaves the file exactly as it was.

mod common;

use std::path::{Path, PathBuf};

use chainmail_store::{MailboxItem, Store, StoreError};
use common::{UNLIMITED, contents, mailbox};
use redb::{ReadableDatabase, TableDefinition};

/// A small xorshift generator: deterministic damage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const ITEMS: u64 = 300;

/// Fills a store with items in three mailboxes and a few other things.
fn fill(store: &Store) {
    for i in 0..ITEMS {
        let c = contents(i);
        store
            .mailbox_append(&[(mailbox((i % 3) as u8), &c)], i, &UNLIMITED)
            .unwrap();
    }
    store.set_node_identity(&[5; 32]).unwrap();
    store.kv_put("ns", b"key", b"value").unwrap();
}

/// Everything `fill` stored, read back.
fn dump(store: &Store) -> Vec<Vec<MailboxItem>> {
    (0..3)
        .map(|m| store.mailbox_read(&mailbox(m), 0, 1000).unwrap())
        .collect()
}

/// A cleanly closed store with data, as bytes.
fn closed_store_bytes(dir: &Path) -> (Vec<u8>, Vec<Vec<MailboxItem>>) {
    let path = dir.join("original.redb");
    let store = Store::open(&path).unwrap();
    fill(&store);
    let contents = dump(&store);
    drop(store);
    (std::fs::read(&path).unwrap(), contents)
}

/// Writes `bytes` to a fresh file, opens it, and checks that a failed open
/// left the file alone. Returns the result of the open.
fn open_copy(dir: &Path, name: &str, bytes: &[u8]) -> (PathBuf, Result<Store, StoreError>) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let result = Store::open(&path);
    if result.is_err() {
        assert!(
            std::fs::read(&path).unwrap() == bytes,
            "{name}: a failed open modified the file"
        );
    }
    (path, result)
}

#[test]
fn random_bytes_are_not_a_store_and_stay_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(42);
    let random: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
    for (name, bytes) in [
        ("random", random.as_slice()),
        ("short", b"red".as_slice()),
        ("text", b"redb is a key-value store\n".as_slice()),
    ] {
        match open_copy(dir.path(), name, bytes).1 {
            Err(StoreError::NotADatabase { path }) => assert!(path.ends_with(name)),
            other => panic!("{name}: expected NotADatabase, got {other:?}"),
        }
    }
    let err = open_copy(dir.path(), "random", &random).1.unwrap_err();
    assert!(err.to_string().contains("left untouched"), "{err}");
}

#[test]
fn an_empty_file_becomes_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = open_copy(dir.path(), "empty", &[]);
    fill(&store.unwrap());
}

#[test]
fn a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Io { .. })
    ));
}

#[test]
fn truncated_copies_of_a_closed_store_are_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, expected) = closed_store_bytes(dir.path());
    let len = bytes.len();
    let mut cuts = vec![9, 100, 512, 4096, 4097, 8192, len / 2, len - 4096, len - 1];
    cuts.extend((1..len / 65_536).map(|i| i * 65_536));
    for cut in cuts {
        let (_, result) = open_copy(dir.path(), "cut", &bytes[..cut]);
        assert!(result.is_err(), "truncated at {cut} of {len}: opened");
    }
    // The whole copy opens with everything in it.
    let (_, result) = open_copy(dir.path(), "whole", &bytes);
    assert_eq!(dump(&result.unwrap()), expected);
}

#[test]
fn a_copy_taken_while_open_recovers_and_truncated_ones_lose_nothing_silently() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.redb");
    let store = Store::open(&path).unwrap();
    fill(&store);
    let expected = dump(&store);
    // The copy looks like a store whose process was killed.
    let bytes = std::fs::read(&path).unwrap();
    drop(store);

    let (_, result) = open_copy(dir.path(), "crashed", &bytes);
    assert_eq!(dump(&result.unwrap()), expected);

    let len = bytes.len();
    let mut cuts = vec![9, 4096, len / 2, len - 4096, len - 1];
    cuts.extend((1..len / 65_536).map(|i| i * 65_536));
    for cut in cuts {
        let (_, result) = open_copy(dir.path(), "cut", &bytes[..cut]);
        // Recovery may accept a file cut in its unused tail; then nothing of
        // the data may be missing.
        if let Ok(store) = result {
            assert_eq!(dump(&store), expected, "truncated at {cut} of {len}");
        }
    }
}

#[test]
fn damaged_bytes_never_panic_and_refused_files_stay_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, expected) = closed_store_bytes(dir.path());
    let mut rng = Rng(7);
    let (mut refused, mut intact) = (0, 0);
    for trial in 0..200 {
        let mut damaged = bytes.clone();
        // Most trials hit the first pages (header and roots), where damage
        // matters most; the rest anywhere.
        let span = if trial % 2 == 0 {
            16 * 1024
        } else {
            bytes.len()
        };
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(span as u64) as usize;
            damaged[at] ^= 1 << rng.below(8);
        }
        let (_, result) = open_copy(dir.path(), "damaged", &damaged);
        match result {
            Err(_) => refused += 1,
            Ok(store) => {
                // Damage redb cannot see (unused bytes) must not show.
                assert_eq!(dump(&store), expected, "trial {trial}");
                intact += 1;
            }
        }
    }
    eprintln!("damaged copies: {refused} refused, {intact} opened intact");
    assert!(refused > 0);
}

#[test]
fn another_programs_database_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let table: TableDefinition<'static, &str, &str> = TableDefinition::new("settings");
        txn.open_table(table).unwrap().insert("a", "b").unwrap();
        txn.commit().unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    assert!(matches!(
        Store::open(&path),
        Err(StoreError::ForeignDatabase { .. })
    ));
    assert!(std::fs::read(&path).unwrap() == before);
    // Still a working database for its owner.
    let db = redb::Database::open(&path).unwrap();
    drop(db.begin_read().unwrap());
}

#[test]
fn a_store_of_a_newer_layout_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.redb");
    drop(Store::open(&path).unwrap());
    {
        // The layout version lives in this table (an internal name).
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let meta: TableDefinition<'static, &str, u64> = TableDefinition::new("chainmail_meta");
        txn.open_table(meta)
            .unwrap()
            .insert("layout_version", 2)
            .unwrap();
        txn.commit().unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    match Store::open(&path) {
        Err(e @ StoreError::UnsupportedVersion { found: 2, .. }) => {
            assert!(e.to_string().contains("layout version 2"), "{e}");
        }
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    assert!(std::fs::read(&path).unwrap() == before);
}
