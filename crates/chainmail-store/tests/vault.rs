//! Vaults: encrypted client state. Creating, unlocking, changing the
//! secret, records across reopening, nothing in the clear in the file, and
//! tampered or swapped records refused without a panic.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use chainmail_store::{
    MAX_VAULT_KEY_SIZE, MAX_VAULT_VALUE_SIZE, Store, StoreError, Vault, VaultOp, VaultParams,
    VaultSecret, encode_key_file, generate_key_file,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use zeroize::Zeroizing;

/// The cheapest argon2id: tests run fast. A node uses the default.
const TINY: VaultParams = VaultParams {
    m_cost_kib: 8,
    t_cost: 1,
    p_cost: 1,
};

fn passphrase(s: &str) -> VaultSecret {
    VaultSecret::Passphrase(Zeroizing::new(s.to_owned()))
}

fn key_file(byte: u8) -> VaultSecret {
    VaultSecret::KeyFile(Zeroizing::new([byte; 32]))
}

fn open(path: &Path) -> Arc<Store> {
    Arc::new(Store::open(path).unwrap())
}

fn create(store: &Arc<Store>, name: &str, secret: VaultSecret) -> Vault {
    Vault::create_with(store.clone(), name, secret, TINY).unwrap()
}

/// Every row of the store's key-value table, read with redb directly (the
/// store closed): (namespace, key, value).
fn raw_kv(path: &Path) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    const KV: TableDefinition<'static, (&str, &[u8]), &[u8]> = TableDefinition::new("kv");
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(KV).unwrap();
    table
        .iter()
        .unwrap()
        .map(|entry| {
            let (key, value) = entry.unwrap();
            let (namespace, key) = key.value();
            (namespace.to_owned(), key.to_vec(), value.value().to_vec())
        })
        .collect()
}

/// The vault's record rows: (namespace, key, value), the header left out.
fn raw_records(path: &Path, vault: &str) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let prefix = format!("vault:{vault}/");
    raw_kv(path)
        .into_iter()
        .filter(|(namespace, _, _)| namespace.starts_with(&prefix))
        .collect()
}

/// A record's id and stored bytes.
type Row = (Vec<u8>, Vec<u8>);

fn is_corrupt_naming(result: &Result<impl std::fmt::Debug, StoreError>, table: &str) -> bool {
    match result {
        Err(e @ StoreError::Corrupt { .. }) => e.to_string().contains(&format!("{table:?}")),
        _ => false,
    }
}

#[test]
fn a_passphrase_vault_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s.redb"));
    assert!(!Vault::exists(&store, "client").unwrap());
    let vault = create(&store, "client", passphrase("correct horse"));
    assert!(Vault::exists(&store, "client").unwrap());
    assert_eq!(vault.name(), "client");
    vault.put("contacts", b"alice", b"alice's card").unwrap();
    vault.put("contacts", b"", b"empty key").unwrap();
    vault.put("sessions", b"alice", b"a pickle").unwrap();
    vault.put("sessions", b"bob", b"").unwrap();
    drop(vault);

    let vault = Vault::unlock(store.clone(), "client", passphrase("correct horse")).unwrap();
    assert_eq!(
        vault.get("contacts", b"alice").unwrap().unwrap().as_slice(),
        b"alice's card"
    );
    assert_eq!(
        vault.get("sessions", b"alice").unwrap().unwrap().as_slice(),
        b"a pickle"
    );
    assert_eq!(vault.get("sessions", b"bob").unwrap().unwrap().len(), 0);
    assert!(vault.get("contacts", b"bob").unwrap().is_none());
    assert!(vault.get("nothing", b"alice").unwrap().is_none());
    let contacts: Vec<(Vec<u8>, Vec<u8>)> = vault
        .list("contacts")
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.to_vec()))
        .collect();
    assert_eq!(
        contacts,
        vec![
            (b"".to_vec(), b"empty key".to_vec()),
            (b"alice".to_vec(), b"alice's card".to_vec()),
        ]
    );
    assert!(vault.list("nothing").unwrap().is_empty());

    // Replace and delete.
    vault.put("contacts", b"alice", b"new card").unwrap();
    assert_eq!(
        vault.get("contacts", b"alice").unwrap().unwrap().as_slice(),
        b"new card"
    );
    assert!(vault.delete("contacts", b"alice").unwrap());
    assert!(!vault.delete("contacts", b"alice").unwrap());
    assert!(vault.get("contacts", b"alice").unwrap().is_none());
    assert_eq!(vault.list("contacts").unwrap().len(), 1);
    assert_eq!(vault.list("sessions").unwrap().len(), 2);
}

#[test]
fn a_key_file_vault_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s.redb"));
    let mut rng = StdRng::seed_from_u64(7);
    let key = generate_key_file(&mut rng);
    assert_ne!(*key, [0; 32]);
    assert_ne!(*key, *generate_key_file(&mut rng));

    // Written as text and read back; raw bytes work too.
    let text = encode_key_file(&key);
    assert_eq!(text.len(), 65);
    assert!(text.ends_with('\n'));
    let vault = create(
        &store,
        "client",
        VaultSecret::from_key_file_bytes(text.as_bytes()).unwrap(),
    );
    vault.put("t", b"k", b"v").unwrap();
    drop(vault);
    let vault = Vault::unlock(
        store.clone(),
        "client",
        VaultSecret::from_key_file_bytes(&key[..]).unwrap(),
    )
    .unwrap();
    assert_eq!(vault.get("t", b"k").unwrap().unwrap().as_slice(), b"v");
}

#[test]
fn the_wrong_secret_is_refused_with_its_own_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s.redb"));
    create(&store, "p", passphrase("right"))
        .put("t", b"k", b"v")
        .unwrap();
    create(&store, "f", key_file(1))
        .put("t", b"k", b"v")
        .unwrap();

    for (name, wrong) in [
        ("p", passphrase("wrong")),
        ("p", passphrase("right ")),
        ("p", passphrase("")),
        ("f", key_file(2)),
    ] {
        let result = Vault::unlock(store.clone(), name, wrong);
        let Err(e @ StoreError::WrongSecret { .. }) = &result else {
            panic!("{name}: {result:?}");
        };
        assert!(
            e.to_string().contains("wrong passphrase or key file"),
            "{e}"
        );
    }
    // A key file for a passphrase vault, and the other way round.
    let result = Vault::unlock(store.clone(), "p", key_file(1));
    assert!(
        matches!(
            result,
            Err(StoreError::WrongSecretKind {
                expected: "passphrase",
                given: "key file",
                ..
            })
        ),
        "{result:?}"
    );
    let result = Vault::unlock(store.clone(), "f", passphrase("right"));
    assert!(
        matches!(result, Err(StoreError::WrongSecretKind { .. })),
        "{result:?}"
    );
    // The right ones still work.
    for (name, right) in [("p", passphrase("right")), ("f", key_file(1))] {
        let vault = Vault::unlock(store.clone(), name, right).unwrap();
        assert_eq!(vault.get("t", b"k").unwrap().unwrap().as_slice(), b"v");
    }
}

#[test]
fn a_missing_vault_is_its_own_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s.redb"));
    create(&store, "one", key_file(1));
    let result = Vault::unlock(store.clone(), "two", key_file(1));
    assert!(
        matches!(&result, Err(StoreError::NoVault { vault, .. }) if vault == "two"),
        "{result:?}"
    );
    assert!(!Vault::exists(&store, "two").unwrap());
}

#[test]
fn creating_over_a_vault_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store = open(&path);
    let vault = create(&store, "client", passphrase("first"));
    vault.put("t", b"k", b"v").unwrap();
    drop(vault);

    for secret in [passphrase("first"), passphrase("second"), key_file(3)] {
        let result = Vault::create_with(store.clone(), "client", secret, TINY);
        assert!(
            matches!(result, Err(StoreError::VaultExists { .. })),
            "{result:?}"
        );
    }
    let vault = Vault::unlock(store.clone(), "client", passphrase("first")).unwrap();
    assert_eq!(vault.get("t", b"k").unwrap().unwrap().as_slice(), b"v");
    assert!(matches!(
        Vault::unlock(store.clone(), "client", passphrase("second")),
        Err(StoreError::WrongSecret { .. })
    ));
}

#[test]
fn concurrent_creates_make_exactly_one_vault() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s.redb"));
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4u8)
            .map(|i| {
                let store = store.clone();
                scope.spawn(move || {
                    Vault::create_with(store, "client", key_file(i), TINY).map(|_| i)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<u8> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .copied()
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in &results {
        assert!(
            matches!(r, Ok(_) | Err(StoreError::VaultExists { .. })),
            "{r:?}"
        );
    }
    Vault::unlock(store.clone(), "client", key_file(winners[0])).unwrap();
}

#[test]
fn changing_the_secret_keeps_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store = open(&path);
    let vault = create(&store, "client", passphrase("old"));
    for i in 0..20u32 {
        vault.put("t", &i.to_le_bytes(), &[i as u8; 40]).unwrap();
    }
    let records_before = raw_records(&path_of(&store), "client");

    vault.change_secret(passphrase("new")).unwrap();
    // Only the header changed: the records are the same bytes.
    assert_eq!(raw_records(&path_of(&store), "client"), records_before);
    assert!(matches!(
        Vault::unlock(store.clone(), "client", passphrase("old")),
        Err(StoreError::WrongSecret { .. })
    ));
    let unlocked = Vault::unlock(store.clone(), "client", passphrase("new")).unwrap();
    assert_eq!(unlocked.list("t").unwrap().len(), 20);
    // The vault that changed it goes on working.
    vault.put("t", b"more", b"x").unwrap();
    assert_eq!(
        unlocked.get("t", b"more").unwrap().unwrap().as_slice(),
        b"x"
    );

    // To a key file, with other parameters, and back.
    drop(vault);
    unlocked.change_secret(key_file(4)).unwrap();
    assert!(matches!(
        Vault::unlock(store.clone(), "client", passphrase("new")),
        Err(StoreError::WrongSecretKind { .. })
    ));
    let vault = Vault::unlock(store.clone(), "client", key_file(4)).unwrap();
    let params = VaultParams {
        m_cost_kib: 16,
        t_cost: 2,
        p_cost: 2,
    };
    vault
        .change_secret_with(passphrase("third"), params)
        .unwrap();
    drop((vault, unlocked, store));

    // Across reopening.
    let store = open(&path);
    assert!(matches!(
        Vault::unlock(store.clone(), "client", key_file(4)),
        Err(StoreError::WrongSecretKind { .. })
    ));
    let vault = Vault::unlock(store.clone(), "client", passphrase("third")).unwrap();
    let all = vault.list("t").unwrap();
    assert_eq!(all.len(), 21);
    for i in 0..20u32 {
        assert_eq!(
            vault
                .get("t", &i.to_le_bytes())
                .unwrap()
                .unwrap()
                .as_slice(),
            &[i as u8; 40]
        );
    }
}

/// The path of a store, for reading its file while it is open (redb reads
/// a file another handle has open only if that handle is closed, so this
/// copies the file first).
fn path_of(store: &Store) -> std::path::PathBuf {
    let copy = store.path().with_extension("copy");
    std::fs::copy(store.path(), &copy).unwrap();
    copy
}

#[test]
fn records_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let mut model = HashMap::new();
    {
        let store = open(&path);
        let vault = create(&store, "client", passphrase("pw"));
        for i in 0..50u32 {
            let value = vec![i as u8; (i as usize) * 7];
            vault.put("history", &i.to_be_bytes(), &value).unwrap();
            model.insert(i.to_be_bytes().to_vec(), value);
        }
        vault.delete("history", &7u32.to_be_bytes()).unwrap();
        model.remove(7u32.to_be_bytes().as_slice());
    }
    let store = open(&path);
    let vault = Vault::unlock(store, "client", passphrase("pw")).unwrap();
    let listed: HashMap<Vec<u8>, Vec<u8>> = vault
        .list("history")
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.to_vec()))
        .collect();
    assert_eq!(listed, model);
}

#[test]
fn the_file_holds_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let markers: [&[u8]; 4] = [
        b"MARKER-contact-name-Zanzibar",
        b"MARKER-message-text-Quixotic",
        b"MARKER-table-name-Xylophone",
        b"MARKER-passphrase-Juxtapose",
    ];
    {
        let store = open(&path);
        let vault = create(
            &store,
            "client",
            passphrase(std::str::from_utf8(markers[3]).unwrap()),
        );
        let table = std::str::from_utf8(markers[2]).unwrap();
        for i in 0..30u8 {
            let mut key = markers[0].to_vec();
            key.push(i);
            let mut value = markers[1].repeat(1 + usize::from(i) * 3);
            value.push(i);
            vault.put(table, &key, &value).unwrap();
        }
        vault.put("contacts", markers[0], markers[1]).unwrap();
        vault
            .batch(&[VaultOp::Put {
                table,
                key: b"batched MARKER-contact-name-Zanzibar",
                value: b"batched MARKER-message-text-Quixotic",
            }])
            .unwrap();
        vault.change_secret(key_file(5)).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 10_000);
    for marker in markers {
        // Also its first half, in case a value were split across pages.
        for needle in [marker, &marker[..marker.len() / 2]] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} is in the file",
                String::from_utf8_lossy(needle)
            );
        }
    }
    // And the records are all there, encrypted.
    let store = open(&path);
    let vault = Vault::unlock(store, "client", key_file(5)).unwrap();
    let table = std::str::from_utf8(markers[2]).unwrap();
    assert_eq!(vault.list(table).unwrap().len(), 31);
}

#[test]
fn a_tampered_record_is_corrupt_and_the_others_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let store = open(&path);
        let vault = create(&store, "client", passphrase("pw"));
        vault.put("contacts", b"alice", b"alice's card").unwrap();
        vault.put("contacts", b"bob", b"bob's card").unwrap();
        vault.put("sessions", b"alice", b"pickle").unwrap();
    }
    let records = raw_records(&path, "client");
    assert_eq!(records.len(), 3);
    let contacts_namespace = {
        // The namespace with two records is the contacts table.
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (ns, _, _) in &records {
            *counts.entry(ns).or_default() += 1;
        }
        counts
            .into_iter()
            .find(|&(_, c)| c == 2)
            .unwrap()
            .0
            .to_owned()
    };
    let (_, id, sealed) = records
        .iter()
        .find(|(ns, _, _)| *ns == contacts_namespace)
        .unwrap()
        .clone();

    // Flip one bit at each of several places: nonce, key length, key,
    // value, tag. Also truncate and empty the record.
    let mut damaged: Vec<Vec<u8>> = [0, 24, 26, sealed.len() / 2, sealed.len() - 1]
        .into_iter()
        .map(|i| {
            let mut d = sealed.clone();
            d[i] ^= 0x04;
            d
        })
        .collect();
    damaged.push(sealed[..sealed.len() - 1].to_vec());
    damaged.push(sealed[..30].to_vec());
    damaged.push(Vec::new());

    let store = open(&path);
    let vault = Vault::unlock(store.clone(), "client", passphrase("pw")).unwrap();
    for bad in damaged {
        store.kv_put(&contacts_namespace, &id, &bad).unwrap();
        let results = [
            vault.get("contacts", b"alice"),
            vault.get("contacts", b"bob"),
        ];
        let corrupt = results
            .iter()
            .filter(|r| is_corrupt_naming(r, "contacts"))
            .count();
        let fine = results.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
        assert_eq!((corrupt, fine), (1, 1), "{results:?}");
        let listed = vault.list("contacts");
        assert!(is_corrupt_naming(&listed, "contacts"), "{listed:?}");
        // Another table is not affected.
        assert_eq!(
            vault.get("sessions", b"alice").unwrap().unwrap().as_slice(),
            b"pickle"
        );
    }
    // Put back, it reads again.
    store.kv_put(&contacts_namespace, &id, &sealed).unwrap();
    assert_eq!(vault.list("contacts").unwrap().len(), 2);
    // A record can be overwritten or deleted even when it is damaged.
    store.kv_put(&contacts_namespace, &id, b"garbage").unwrap();
    vault.put("contacts", b"alice", b"fresh").unwrap();
    vault.put("contacts", b"bob", b"fresh").unwrap();
    assert_eq!(vault.list("contacts").unwrap().len(), 2);
}

#[test]
fn records_swapped_between_keys_tables_or_vaults_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let store = open(&path);
        let vault = create(&store, "client", passphrase("pw"));
        vault.put("contacts", b"alice", b"alice's card").unwrap();
        vault.put("contacts", b"bob", b"bob's card").unwrap();
        vault.put("other", b"alice", b"other alice").unwrap();
        // A second vault with the same passphrase: different keys.
        let second = create(&store, "second", passphrase("pw"));
        second.put("contacts", b"alice", b"second alice").unwrap();
    }
    let records = raw_records(&path, "client");
    let mut by_namespace: HashMap<String, Vec<Row>> = HashMap::new();
    for (ns, id, sealed) in records {
        by_namespace.entry(ns).or_default().push((id, sealed));
    }
    let contacts_ns = by_namespace
        .iter()
        .find(|(_, r)| r.len() == 2)
        .unwrap()
        .0
        .clone();
    let other_ns = by_namespace
        .iter()
        .find(|(_, r)| r.len() == 1)
        .unwrap()
        .0
        .clone();
    let contacts = by_namespace[&contacts_ns].clone();
    let other = by_namespace[&other_ns][0].clone();
    let second = raw_records(&path, "second").remove(0);

    let store = open(&path);
    let vault = Vault::unlock(store.clone(), "client", passphrase("pw")).unwrap();

    // Swap alice's and bob's ciphertexts.
    store
        .kv_batch(&[
            chainmail_store::KvOp::Put {
                namespace: &contacts_ns,
                key: &contacts[0].0,
                value: &contacts[1].1,
            },
            chainmail_store::KvOp::Put {
                namespace: &contacts_ns,
                key: &contacts[1].0,
                value: &contacts[0].1,
            },
        ])
        .unwrap();
    assert!(is_corrupt_naming(
        &vault.get("contacts", b"alice"),
        "contacts"
    ));
    assert!(is_corrupt_naming(
        &vault.get("contacts", b"bob"),
        "contacts"
    ));
    assert!(is_corrupt_naming(&vault.list("contacts"), "contacts"));
    // Swap back: fine again.
    for (id, sealed) in &contacts {
        store.kv_put(&contacts_ns, id, sealed).unwrap();
    }
    assert_eq!(vault.list("contacts").unwrap().len(), 2);

    // "other"/alice's ciphertext over contacts/alice's, whichever id that
    // is, and the second vault's alice over the other one.
    store
        .kv_put(&contacts_ns, &contacts[0].0, &other.1)
        .unwrap();
    store
        .kv_put(&contacts_ns, &contacts[1].0, &second.2)
        .unwrap();
    assert!(is_corrupt_naming(
        &vault.get("contacts", b"alice"),
        "contacts"
    ));
    assert!(is_corrupt_naming(
        &vault.get("contacts", b"bob"),
        "contacts"
    ));
    assert_eq!(
        vault.get("other", b"alice").unwrap().unwrap().as_slice(),
        b"other alice"
    );

    // A record moved to another id in its own namespace (a copy of one
    // record under an unused id) is refused by `list`.
    for (id, sealed) in &contacts {
        store.kv_put(&contacts_ns, id, sealed).unwrap();
    }
    store
        .kv_put(&contacts_ns, &[0xAB; 32], &contacts[0].1)
        .unwrap();
    assert!(is_corrupt_naming(&vault.list("contacts"), "contacts"));
}

#[test]
fn a_damaged_header_is_an_error_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store = open(&path);
    create(&store, "client", passphrase("pw"))
        .put("t", b"k", b"v")
        .unwrap();
    let header = store.kv_get("vault:client", b"header").unwrap().unwrap();
    assert_eq!(header.len(), 178);

    let mut outcomes = HashMap::new();
    for i in 0..header.len() {
        for bit in [0x01, 0x80] {
            let mut bad = header.clone();
            bad[i] ^= bit;
            store.kv_put("vault:client", b"header", &bad).unwrap();
            let result = Vault::unlock(store.clone(), "client", passphrase("pw"));
            let outcome = match result {
                Err(StoreError::WrongSecret { .. }) => "wrong secret",
                Err(StoreError::WrongSecretKind { .. }) => "wrong kind",
                Err(StoreError::Corrupt { .. }) => "corrupt",
                Err(StoreError::UnsupportedVaultVersion { found, .. }) => {
                    assert_eq!(i, 4);
                    assert_eq!(found, 1 ^ bit);
                    "version"
                }
                other => panic!("byte {i} bit {bit}: {other:?}"),
            };
            *outcomes.entry(outcome).or_insert(0) += 1;
        }
    }
    assert!(
        outcomes["corrupt"] > 0 && outcomes["wrong secret"] > 0,
        "{outcomes:?}"
    );
    for len in [0, 1, 4, 5, 49, 50, 177, 179] {
        let mut bad = header.clone();
        bad.resize(len, 0);
        store.kv_put("vault:client", b"header", &bad).unwrap();
        let result = Vault::unlock(store.clone(), "client", passphrase("pw"));
        assert!(
            matches!(result, Err(StoreError::Corrupt { .. })),
            "{len}: {result:?}"
        );
    }
    // Parameters out of bounds (a huge m_cost) are refused before argon2
    // runs.
    let mut bad = header.clone();
    bad[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
    store.kv_put("vault:client", b"header", &bad).unwrap();
    let result = Vault::unlock(store.clone(), "client", passphrase("pw"));
    assert!(
        matches!(result, Err(StoreError::Corrupt { .. })),
        "{result:?}"
    );

    store.kv_put("vault:client", b"header", &header).unwrap();
    let vault = Vault::unlock(store.clone(), "client", passphrase("pw")).unwrap();
    assert_eq!(vault.get("t", b"k").unwrap().unwrap().as_slice(), b"v");
}

#[test]
fn a_batch_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store = open(&path);
    let vault = create(&store, "client", passphrase("pw"));
    vault.put("sessions", b"alice", b"old pickle").unwrap();
    vault.put("inbox", b"1", b"first").unwrap();

    // A message decrypted: the session's new state and the message, at
    // once.
    vault
        .batch(&[
            VaultOp::Put {
                table: "sessions",
                key: b"alice",
                value: b"new pickle",
            },
            VaultOp::Put {
                table: "history",
                key: b"alice/1",
                value: b"hello",
            },
            VaultOp::Delete {
                table: "inbox",
                key: b"1",
            },
        ])
        .unwrap();
    assert_eq!(
        vault.get("sessions", b"alice").unwrap().unwrap().as_slice(),
        b"new pickle"
    );
    assert_eq!(
        vault
            .get("history", b"alice/1")
            .unwrap()
            .unwrap()
            .as_slice(),
        b"hello"
    );
    assert!(vault.get("inbox", b"1").unwrap().is_none());

    // One op out of bounds: nothing of the batch is written.
    let too_long = vec![0; MAX_VAULT_KEY_SIZE + 1];
    for bad in [
        VaultOp::Put {
            table: "t",
            key: &too_long,
            value: b"",
        },
        VaultOp::Delete {
            table: "",
            key: b"k",
        },
    ] {
        let result = vault.batch(&[
            VaultOp::Put {
                table: "sessions",
                key: b"alice",
                value: b"newer pickle",
            },
            VaultOp::Delete {
                table: "history",
                key: b"alice/1",
            },
            bad,
        ]);
        assert!(
            matches!(result, Err(StoreError::InvalidVaultRecord { .. })),
            "{result:?}"
        );
        assert_eq!(
            vault.get("sessions", b"alice").unwrap().unwrap().as_slice(),
            b"new pickle"
        );
        assert!(vault.get("history", b"alice/1").unwrap().is_some());
    }
    vault.batch(&[]).unwrap();
}

#[test]
fn bounds_and_bad_inputs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s.redb"));
    let too_long = "x".repeat(25);
    for name in ["", "has space", "a/b", "vault:x", "é", too_long.as_str()] {
        let result = Vault::create_with(store.clone(), name, key_file(1), TINY);
        assert!(
            matches!(result, Err(StoreError::InvalidVaultName { .. })),
            "{name:?}: {result:?}"
        );
        assert!(matches!(
            Vault::exists(&store, name),
            Err(StoreError::InvalidVaultName { .. })
        ));
    }
    let longest = "A-z_09".repeat(4);
    create(&store, &longest, key_file(1));

    assert!(matches!(
        Vault::create_with(store.clone(), "c", passphrase(""), TINY),
        Err(StoreError::EmptyPassphrase)
    ));
    for params in [
        VaultParams {
            m_cost_kib: 7,
            ..TINY
        },
        VaultParams { t_cost: 0, ..TINY },
        VaultParams { p_cost: 0, ..TINY },
        VaultParams { p_cost: 2, ..TINY },
        VaultParams { t_cost: 65, ..TINY },
        VaultParams {
            m_cost_kib: u32::MAX,
            ..TINY
        },
    ] {
        let result = Vault::create_with(store.clone(), "c", passphrase("pw"), params);
        assert!(
            matches!(result, Err(StoreError::InvalidVaultParams { .. })),
            "{params:?}: {result:?}"
        );
    }
    assert!(!Vault::exists(&store, "c").unwrap());

    let vault = create(&store, "c", passphrase("pw"));
    assert!(matches!(
        vault.change_secret(passphrase("")),
        Err(StoreError::EmptyPassphrase)
    ));
    let big = vec![7u8; MAX_VAULT_VALUE_SIZE];
    let long_key = vec![1u8; MAX_VAULT_KEY_SIZE];
    vault.put(&"t".repeat(255), &long_key, &big).unwrap();
    assert_eq!(
        *vault.get(&"t".repeat(255), &long_key).unwrap().unwrap(),
        big
    );
    let too_big = vec![7u8; MAX_VAULT_VALUE_SIZE + 1];
    let too_long = vec![1u8; MAX_VAULT_KEY_SIZE + 1];
    for result in [
        vault.put("t", b"k", &too_big),
        vault.put("t", &too_long, b"v"),
        vault.put("", b"k", b"v"),
        vault.put(&"t".repeat(256), b"k", b"v"),
    ] {
        assert!(
            matches!(result, Err(StoreError::InvalidVaultRecord { .. })),
            "{result:?}"
        );
    }
    assert!(matches!(
        vault.get("t", &too_long),
        Err(StoreError::InvalidVaultRecord { .. })
    ));
    assert!(matches!(
        vault.list(""),
        Err(StoreError::InvalidVaultRecord { .. })
    ));
    let ops = vec![
        VaultOp::Delete {
            table: "t",
            key: b"k"
        };
        chainmail_store::MAX_VAULT_BATCH + 1
    ];
    assert!(matches!(
        vault.batch(&ops),
        Err(StoreError::BatchTooLarge { .. })
    ));
}

#[test]
fn key_files_are_read_strictly() {
    let key: Vec<u8> = (0..32).collect();
    let hex_lower = hex::encode(&key);
    let hex_upper = hex_lower.to_uppercase();
    let accepted: Vec<Vec<u8>> = vec![
        key.clone(),
        hex_lower.clone().into_bytes(),
        format!("{hex_lower}\n").into_bytes(),
        format!("{hex_lower}\r\n").into_bytes(),
        hex_upper.clone().into_bytes(),
        encode_key_file(&key.clone().try_into().unwrap())
            .as_bytes()
            .to_vec(),
    ];
    for bytes in accepted {
        let Ok(VaultSecret::KeyFile(parsed)) = VaultSecret::from_key_file_bytes(&bytes) else {
            panic!("{:?} refused", String::from_utf8_lossy(&bytes));
        };
        assert_eq!(parsed.as_slice(), key.as_slice());
    }
    let refused: Vec<Vec<u8>> = vec![
        Vec::new(),
        key[..31].to_vec(),
        [key.as_slice(), b"\n"].concat(),
        key.repeat(2)[..33].to_vec(),
        hex_lower.as_bytes()[..63].to_vec(),
        format!("{hex_lower}\n\n").into_bytes(),
        format!("{hex_lower} ").into_bytes(),
        format!(" {hex_lower}").into_bytes(),
        format!("0x{}", &hex_lower[2..]).into_bytes(),
        format!("{}g", &hex_lower[..63]).into_bytes(),
        format!("{}\n", &hex_lower[..63]).into_bytes(),
        [hex_lower.as_bytes(), hex_lower.as_bytes()].concat(),
    ];
    for bytes in refused {
        let result = VaultSecret::from_key_file_bytes(&bytes);
        let Err(e @ StoreError::InvalidKeyFile { .. }) = &result else {
            panic!("{:?} accepted", String::from_utf8_lossy(&bytes));
        };
        let message = e.to_string();
        assert!(message.contains("32 bytes") && message.contains("64 hexadecimal"));
        assert!(!message.contains(&hex_lower[..8]), "{message}");
    }
}

#[test]
fn debug_never_shows_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s.redb"));
    let secret = passphrase("hunter2-MARKER");
    assert_eq!(format!("{secret:?}"), "VaultSecret::Passphrase(..)");
    let secret = key_file(0xAB);
    let shown = format!("{secret:?}");
    assert!(!shown.contains("171") && !shown.contains("ab"), "{shown}");
    let vault = create(&store, "client", secret);
    let shown = format!("{vault:?}");
    assert!(
        shown.contains("client") && !shown.contains("root") && !shown.contains("cipher"),
        "{shown}"
    );
    let shown = format!(
        "{:?}",
        Vault::unlock(store.clone(), "client", passphrase("x"))
    );
    assert!(!shown.contains("171"), "{shown}");
}

#[test]
fn a_vault_is_shared_between_threads() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s.redb"));
    let vault = Arc::new(create(&store, "client", key_file(1)));
    std::thread::scope(|scope| {
        for t in 0..4u8 {
            let vault = vault.clone();
            scope.spawn(move || {
                for i in 0..25u8 {
                    vault.put("t", &[t, i], &[t ^ i; 10]).unwrap();
                    assert_eq!(*vault.get("t", &[t, i]).unwrap().unwrap(), [t ^ i; 10]);
                }
            });
        }
    });
    assert_eq!(vault.list("t").unwrap().len(), 100);
}

#[test]
fn the_default_parameters_work() {
    // One real-cost unlock, so the defaults are known to run (about a
    // second in a debug build).
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s.redb"));
    Vault::create(store.clone(), "client", passphrase("pw")).unwrap();
    let vault = Vault::unlock(store.clone(), "client", passphrase("pw")).unwrap();
    vault.put("t", b"k", b"v").unwrap();
    let header = store.kv_get("vault:client", b"header").unwrap().unwrap();
    assert_eq!(&header[6..10], &(64u32 * 1024).to_le_bytes());
    assert_eq!(&header[10..14], &3u32.to_le_bytes());
    assert_eq!(&header[14..18], &1u32.to_le_bytes());
}

// ---- Property test -------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Put { table: u8, key: u8, value: Vec<u8> },
    Delete { table: u8, key: u8 },
    Get { table: u8, key: u8 },
    List { table: u8 },
    Batch(Vec<(u8, u8, Option<Vec<u8>>)>),
    Reopen,
}

const TABLES: [&str; 3] = ["contacts", "sessions", "history"];

fn op() -> impl Strategy<Value = Op> {
    let table = 0..TABLES.len() as u8;
    let key = 0..6u8;
    let value = prop::collection::vec(any::<u8>(), 0..40);
    prop_oneof![
        4 => (table.clone(), key.clone(), value.clone())
            .prop_map(|(table, key, value)| Op::Put { table, key, value }),
        2 => (table.clone(), key.clone()).prop_map(|(table, key)| Op::Delete { table, key }),
        3 => (table.clone(), key.clone()).prop_map(|(table, key)| Op::Get { table, key }),
        1 => table.clone().prop_map(|table| Op::List { table }),
        1 => prop::collection::vec(
            (table, key, prop::option::of(value)),
            0..5,
        ).prop_map(Op::Batch),
        1 => Just(Op::Reopen),
    ]
}

fn record_key(key: u8) -> Vec<u8> {
    format!("key {key}").into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_vault_behaves_like_a_map(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.redb");
        let secret = || key_file(3);
        let mut store = open(&path);
        let mut vault = Some(create(&store, "client", secret()));
        let mut model: HashMap<(u8, Vec<u8>), Vec<u8>> = HashMap::new();
        for op in ops {
            if let Op::Reopen = op {
                drop(vault.take());
                drop(store);
                store = open(&path);
                vault = Some(Vault::unlock(store.clone(), "client", secret()).unwrap());
                continue;
            }
            let v = vault.as_ref().unwrap();
            match op {
                Op::Put { table, key, value } => {
                    v.put(TABLES[usize::from(table)], &record_key(key), &value).unwrap();
                    model.insert((table, record_key(key)), value);
                }
                Op::Delete { table, key } => {
                    let was = v.delete(TABLES[usize::from(table)], &record_key(key)).unwrap();
                    prop_assert_eq!(was, model.remove(&(table, record_key(key))).is_some());
                }
                Op::Get { table, key } => {
                    let got = v.get(TABLES[usize::from(table)], &record_key(key)).unwrap();
                    prop_assert_eq!(
                        got.map(|g| g.to_vec()),
                        model.get(&(table, record_key(key))).cloned()
                    );
                }
                Op::List { table } => {
                    let got: Vec<(Vec<u8>, Vec<u8>)> = v
                        .list(TABLES[usize::from(table)])
                        .unwrap()
                        .into_iter()
                        .map(|(k, v)| (k, v.to_vec()))
                        .collect();
                    let mut expected: Vec<(Vec<u8>, Vec<u8>)> = model
                        .iter()
                        .filter(|((t, _), _)| *t == table)
                        .map(|((_, k), v)| (k.clone(), v.clone()))
                        .collect();
                    expected.sort();
                    prop_assert_eq!(got, expected);
                }
                Op::Batch(items) => {
                    let keys: Vec<Vec<u8>> =
                        items.iter().map(|(_, k, _)| record_key(*k)).collect();
                    let ops: Vec<VaultOp<'_>> = items
                        .iter()
                        .zip(&keys)
                        .map(|((table, _, value), key)| {
                            let table = TABLES[usize::from(*table)];
                            match value {
                                Some(value) => VaultOp::Put { table, key, value },
                                None => VaultOp::Delete { table, key },
                            }
                        })
                        .collect();
                    v.batch(&ops).unwrap();
                    for ((table, _, value), key) in items.into_iter().zip(keys) {
                        match value {
                            Some(value) => model.insert((table, key), value),
                            None => model.remove(&(table, key)),
                        };
                    }
                }
                Op::Reopen => unreachable!(),
            }
        }
        // Finally, everything, after reopening.
        drop(vault);
        drop(store);
        let store = open(&path);
        let vault = Vault::unlock(store, "client", secret()).unwrap();
        for (t, table) in TABLES.iter().enumerate() {
            let got: HashMap<Vec<u8>, Vec<u8>> = vault
                .list(table)
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k, v.to_vec()))
                .collect();
            let expected: HashMap<Vec<u8>, Vec<u8>> = model
                .iter()
                .filter(|((tt, _), _)| usize::from(*tt) == t)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect();
            prop_assert_eq!(got, expected);
        }
    }
}
