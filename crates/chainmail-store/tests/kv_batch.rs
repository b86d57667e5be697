//! `Store::kv_batch`: several key-value writes in one transaction, all or
//! nothing, also when the process is killed in the middle (SIGKILL of a
//! child process, which also writes vault batches).
//!
//! The child is this test binary itself, run with `--exact` on
//! [`child_batches_until_killed`] and an environment variable naming the
//! store; without the variable that test does nothing.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use chainmail_store::{
    KvOp, MAX_KV_BATCH, MAX_KV_KEY_SIZE, Store, StoreError, Vault, VaultOp, VaultParams,
    VaultSecret,
};
use zeroize::Zeroizing;

fn put<'a>(namespace: &'a str, key: &'a [u8], value: &'a [u8]) -> KvOp<'a> {
    KvOp::Put {
        namespace,
        key,
        value,
    }
}

fn delete<'a>(namespace: &'a str, key: &'a [u8]) -> KvOp<'a> {
    KvOp::Delete { namespace, key }
}

#[test]
fn a_batch_applies_every_op_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("batch.redb");
    let store = Store::open(&path).unwrap();
    store.kv_put("a", b"gone", b"x").unwrap();
    store
        .kv_batch(&[
            put("a", b"k1", b"v1"),
            put("b", b"k2", b"v2"),
            put("a", b"k3", b"first"),
            delete("a", b"gone"),
            put("a", b"k3", b"second"),
            put("a", b"k4", b"v4"),
            delete("a", b"k4"),
            delete("a", b"never-there"),
        ])
        .unwrap();
    let expected_a: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"k1".to_vec(), b"v1".to_vec()),
        (b"k3".to_vec(), b"second".to_vec()),
    ];
    assert_eq!(store.kv_list("a").unwrap(), expected_a);
    assert_eq!(store.kv_get("b", b"k2").unwrap().unwrap(), b"v2");

    // Durable: there after reopening.
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.kv_list("a").unwrap(), expected_a);
    assert_eq!(store.kv_get("b", b"k2").unwrap().unwrap(), b"v2");

    store.kv_batch(&[]).unwrap();
}

#[test]
fn an_invalid_op_in_the_middle_leaves_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("batch.redb")).unwrap();
    store.kv_put("ns", b"old", b"old value").unwrap();
    let too_long = vec![0u8; MAX_KV_KEY_SIZE + 1];

    // The invalid op comes after puts and a delete that redb has already
    // applied inside the transaction: the transaction is discarded.
    for bad in [
        put("ns", &too_long, b"v"),
        delete("", b"k"),
        put("", b"k", b"v"),
    ] {
        let result = store.kv_batch(&[
            put("ns", b"new", b"new value"),
            delete("ns", b"old"),
            put("other", b"x", b"y"),
            bad,
            put("ns", b"after", b"after value"),
        ]);
        assert!(
            matches!(result, Err(StoreError::InvalidKv { .. })),
            "{result:?}"
        );
        assert_eq!(
            store.kv_list("ns").unwrap(),
            vec![(b"old".to_vec(), b"old value".to_vec())]
        );
        assert!(store.kv_list("other").unwrap().is_empty());
    }
}

#[test]
fn a_batch_has_a_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("batch.redb")).unwrap();
    let ops = vec![put("ns", b"k", b"v"); MAX_KV_BATCH + 1];
    assert!(matches!(
        store.kv_batch(&ops),
        Err(StoreError::BatchTooLarge { .. })
    ));
    assert!(store.kv_list("ns").unwrap().is_empty());
    store.kv_batch(&ops[..MAX_KV_BATCH]).unwrap();
    assert_eq!(store.kv_list("ns").unwrap().len(), 1);
}

#[test]
fn debug_of_an_op_shows_no_key_or_value() {
    let op = put("ns", b"secret-key-marker", b"secret-value-marker");
    let shown = format!("{op:?} {:?}", delete("ns", b"secret-key-marker"));
    assert!(!shown.contains("marker"), "{shown}");
    let op = VaultOp::Put {
        table: "t",
        key: b"secret-key-marker",
        value: b"secret-value-marker",
    };
    let shown = format!("{op:?}");
    assert!(!shown.contains("marker"), "{shown}");
}

// ---- Crash ---------------------------------------------------------------

const STORE_VAR: &str = "CHAINMAIL_STORE_BATCH_CHILD";
const CHILD_TEST: &str = "child_batches_until_killed";
/// Keys each batch writes; every batch gives all of them the same value.
const KEYS: u32 = 16;
const ACKS_BEFORE_KILL: u64 = 150;
const ROUNDS: u32 = 3;
const VAULT: &str = "crash";

fn key_file() -> VaultSecret {
    VaultSecret::KeyFile(Zeroizing::new([9; 32]))
}

fn tiny() -> VaultParams {
    VaultParams {
        m_cost_kib: 8,
        t_cost: 1,
        p_cost: 1,
    }
}

/// The value every key holds, if all hold the same one.
fn consistent(values: &[Option<Vec<u8>>]) -> Option<u64> {
    let first = values[0].clone();
    for v in values {
        assert_eq!(*v, first, "a batch was torn: {values:?}");
    }
    first.map(|v| u64::from_le_bytes(v.try_into().unwrap()))
}

/// The child: writes batch after batch, each giving all `KEYS` keys (and
/// all records of a vault table) the batch's number, and deleting one key of
/// the previous batch and writing it again; prints `ACK <n>` once the
/// batches of number `n` have returned.
#[test]
fn child_batches_until_killed() {
    let Some(path) = std::env::var_os(STORE_VAR) else {
        return;
    };
    let store = Arc::new(Store::open(Path::new(&path)).unwrap());
    let vault = Vault::unlock(store.clone(), VAULT, key_file()).unwrap();
    let mut out = std::io::stdout().lock();
    let start = store
        .kv_get("crash", &0u32.to_le_bytes())
        .unwrap()
        .map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()));
    for n in start + 1.. {
        let value = n.to_le_bytes();
        let keys: Vec<[u8; 4]> = (0..KEYS).map(u32::to_le_bytes).collect();
        let mut ops = vec![delete("crash", &keys[3])];
        ops.extend(keys.iter().map(|k| put("crash", k, &value)));
        store.kv_batch(&ops).unwrap();
        let mut vault_ops = vec![VaultOp::Delete {
            table: "t",
            key: &keys[5],
        }];
        vault_ops.extend(keys.iter().map(|k| VaultOp::Put {
            table: "t",
            key: k,
            value: &value,
        }));
        vault.batch(&vault_ops).unwrap();
        writeln!(out, "ACK {n}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn killing_the_process_never_tears_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    {
        let store = Arc::new(Store::open(&path).unwrap());
        Vault::create_with(store, VAULT, key_file(), tiny()).unwrap();
    }
    let mut last_acked = 0;
    for round in 1..=ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(STORE_VAR, &path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut acks = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("ACK ") {
                let n: u64 = n.parse().unwrap();
                assert!(n > last_acked, "round {round}: {line}");
                last_acked = n;
                acks += 1;
                if acks == ACKS_BEFORE_KILL {
                    break;
                }
            }
        }
        assert_eq!(
            acks, ACKS_BEFORE_KILL,
            "round {round}: the child stopped early"
        );
        child.kill().unwrap(); // SIGKILL, while it writes the next batch
        assert!(!child.wait().unwrap().success());

        let store = Arc::new(Store::open(&path).unwrap());
        let values: Vec<_> = (0..KEYS)
            .map(|k| store.kv_get("crash", &k.to_le_bytes()).unwrap())
            .collect();
        let kv_n = consistent(&values).unwrap();
        let vault = Vault::unlock(store.clone(), VAULT, key_file()).unwrap();
        let values: Vec<_> = (0..KEYS)
            .map(|k| {
                vault
                    .get("t", &k.to_le_bytes())
                    .unwrap()
                    .map(|v| v.to_vec())
            })
            .collect();
        let vault_n = consistent(&values).unwrap();
        assert_eq!(vault.list("t").unwrap().len(), KEYS as usize);
        // Every acknowledged batch is there; at most the one in flight
        // beyond it.
        assert!(
            (last_acked..=last_acked + 1).contains(&kv_n),
            "round {round}: kv at {kv_n}, acked {last_acked}"
        );
        assert!(
            (last_acked..=kv_n).contains(&vault_n) && kv_n - vault_n <= 1,
            "round {round}: vault at {vault_n}, kv at {kv_n}, acked {last_acked}"
        );
        last_acked = kv_n.max(last_acked);
    }
}
