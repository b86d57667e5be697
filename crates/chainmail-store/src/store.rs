//! The store: the file, its transactions, and the small tables (identity,
//! mix keys, replay tags, key-value blobs). Mailboxes are in `mailbox.rs`.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use redb::{Builder, Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction};
use zeroize::Zeroizing;

use crate::error::StoreError;
use crate::open::{check_magic, check_version, create_private, dry_run, without_panic};
use crate::slots::KeySlots;
use crate::tables::{
    COUNTERS, EXPIRY, ITEMS, KV, LAYOUT_VERSION, META, META_LAYOUT_VERSION, MIX_KEYS, REPLAY_TAGS,
    SECRET_NODE_IDENTITY, SECRETS,
};
use crate::types::{KvEntry, KvOp, Secret, StoreOptions};
use crate::{
    MAX_KV_BATCH, MAX_KV_KEY_SIZE, MAX_KV_NAMESPACE_SIZE, MAX_KV_VALUE_SIZE,
    MAX_REPLAY_TAGS_PER_CALL,
};

/// A node's or client's persistent state in one redb file. See the crate
/// documentation for what is stored and what is guaranteed.
///
/// Every method is one transaction (`mailbox_expire` a few, for a large
/// backlog); every method that writes returns only once its transactions
/// are on disk (fsync'ed). A `Store` may be shared
/// between threads; writes are serialised, reads run beside them on a
/// snapshot.
pub struct Store {
    db: Database,
    path: PathBuf,
    /// Mix keys, outside the copy-on-write file (see `slots.rs`).
    keys: KeySlots,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// An error inside an operation: redb's, or one of ours. Turned into a
/// [`StoreError`] naming the file at the end of each public method.
pub(crate) enum Failure {
    Redb(redb::Error),
    Store(StoreError),
}

macro_rules! failure_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Failure {
            fn from(e: $t) -> Self {
                Failure::Redb(e.into())
            }
        }
    )*};
}
failure_from_redb!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError
);

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

impl Failure {
    pub(crate) fn at(self, path: &Path) -> StoreError {
        match self {
            Failure::Redb(e) => StoreError::from_redb(path, e),
            Failure::Store(e) => e,
        }
    }
}

pub(crate) type Result<T, E = Failure> = std::result::Result<T, E>;

fn check_kv(namespace: &str, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<(), StoreError> {
    let check = |what, size: usize, max| {
        if size == 0 && what == "namespace" || size > max {
            Err(StoreError::InvalidKv { what, size, max })
        } else {
            Ok(())
        }
    };
    check("namespace", namespace.len(), MAX_KV_NAMESPACE_SIZE)?;
    if let Some(key) = key {
        check("key", key.len(), MAX_KV_KEY_SIZE)?;
    }
    if let Some(value) = value {
        check("value", value.len(), MAX_KV_VALUE_SIZE)?;
    }
    Ok(())
}

impl Store {
    /// Opens the store at `path`, or creates it if there is no file or an
    /// empty one. Equivalent to [`Store::open_with`] with default options.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Opens the store at `path`, or creates it if there is no file or an
    /// empty one.
    ///
    /// An existing file is first opened without writing to it (see the crate
    /// documentation), so that a file that is not a store, is damaged, or was
    /// written by another version gives an error and stays exactly as it
    /// was. A store left by a crash is recovered (redb's repair), which reads
    /// the whole file.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let existing = match fs::metadata(path) {
            Ok(meta) => meta.len() > 0,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        if existing {
            check_magic(path)?;
            dry_run(path, &options)?;
        } else {
            create_private(path)?;
        }
        let db = without_panic(path, || {
            let mut builder = Builder::new();
            builder.set_cache_size(options.cache_size);
            builder.create(path).map_err(|e| Failure::from(e).at(path))
        })?;
        let keys = KeySlots::open(&Self::keys_path(path))?;
        let mut store = Store {
            db,
            path: path.to_path_buf(),
            keys,
        };
        store.initialise()?;
        store.move_mix_keys_out()?;
        Ok(store)
    }

    /// Where the mix keys of the store at `path` are kept.
    pub fn keys_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".keys");
        PathBuf::from(name)
    }

    /// Moves mix keys a store of an earlier version kept in its
    /// `mix_keys` table to the key file, then compacts the file so that
    /// the pages that held them are dropped or reused.
    fn move_mix_keys_out(&mut self) -> Result<(), StoreError> {
        let old: Vec<(u32, Secret)> = self.read(|txn| {
            let table = txn.open_table(MIX_KEYS)?;
            let mut keys = Vec::new();
            for entry in table.iter()? {
                let (epoch, secret) = entry?;
                keys.push((epoch.value(), Zeroizing::new(secret.value())));
            }
            Ok(keys)
        })?;
        if old.is_empty() {
            return Ok(());
        }
        for (epoch, secret) in &old {
            self.keys.put(*epoch, secret)?;
        }
        self.write(|txn| {
            txn.open_table(MIX_KEYS)?.retain(|_, _| false)?;
            Ok(())
        })?;
        let path = self.path.clone();
        self.db
            .compact()
            .map_err(|e| Failure::from(redb::Error::from(e)).at(&path))?;
        Ok(())
    }

    /// The file the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the tables and records the layout version, if not done yet.
    fn initialise(&self) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut meta = txn.open_table(META)?;
            let found = meta.get(META_LAYOUT_VERSION)?.map(|v| v.value());
            if found.is_none() {
                meta.insert(META_LAYOUT_VERSION, LAYOUT_VERSION)?;
            } else {
                check_version(found, &self.path)?;
            }
            txn.open_table(SECRETS)?;
            txn.open_table(MIX_KEYS)?;
            txn.open_table(REPLAY_TAGS)?;
            txn.open_table(ITEMS)?;
            txn.open_table(EXPIRY)?;
            txn.open_table(COUNTERS)?;
            txn.open_table(KV)?;
            Ok(())
        })
    }

    /// Runs `f` in a write transaction and commits it durably (fsync) if `f`
    /// succeeds; aborts it otherwise.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T>,
    ) -> Result<T, StoreError> {
        let run = || {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            let value = f(&txn)?;
            txn.commit()?;
            Ok(value)
        };
        run().map_err(|e: Failure| e.at(&self.path))
    }

    /// Runs `f` on a snapshot of the last committed state.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T>,
    ) -> Result<T, StoreError> {
        let run = || {
            let txn = self.db.begin_read()?;
            f(&txn)
        };
        run().map_err(|e: Failure| e.at(&self.path))
    }

    // ---- Node identity -------------------------------------------------

    /// The 32-byte Ed25519 secret of the node's libp2p identity, if one was
    /// set.
    pub fn node_identity(&self) -> Result<Option<Secret>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(SECRETS)?;
            let secret = table.get(SECRET_NODE_IDENTITY)?;
            Ok(secret.map(|s| Zeroizing::new(s.value())))
        })
    }

    /// Sets (or replaces) the node's identity secret.
    pub fn set_node_identity(&self, secret: &[u8; 32]) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(SECRETS)?
                .insert(SECRET_NODE_IDENTITY, secret)?;
            Ok(())
        })
    }

    // ---- Mix keys and replay tags --------------------------------------

    /// Stores (or replaces) the X25519 mix key secret of `epoch`, in the
    /// key file ([`Store::keys_path`]), durably.
    pub fn put_mix_key(&self, epoch: u32, secret: &[u8; 32]) -> Result<(), StoreError> {
        self.keys.put(epoch, secret)
    }

    /// Every stored mix key, by ascending epoch.
    pub fn mix_keys(&self) -> Result<Vec<(u32, Secret)>, StoreError> {
        self.keys.keys()
    }

    /// Erases the mix keys of every epoch before `epoch` (zeros written
    /// over them in the key file, then fsync), and deletes the replay tags
    /// of those epochs. Returns how many keys were erased.
    pub fn delete_mix_keys_before(&self, epoch: u32) -> Result<usize, StoreError> {
        let erased = self.keys.erase_before(epoch)?;
        self.write(|txn| {
            txn.open_table(REPLAY_TAGS)?
                .retain_in(..(epoch, [0u8; 16]), |_, _| false)?;
            Ok(())
        })?;
        Ok(erased)
    }

    /// Records replay tags of `epoch`, all in one transaction: when this
    /// returns, they are on disk. Tags already recorded are ignored.
    pub fn insert_replay_tags(&self, epoch: u32, tags: &[[u8; 16]]) -> Result<(), StoreError> {
        if tags.len() > MAX_REPLAY_TAGS_PER_CALL {
            return Err(StoreError::BatchTooLarge {
                what: "replay tags",
                count: tags.len(),
                max: MAX_REPLAY_TAGS_PER_CALL,
            });
        }
        if tags.is_empty() {
            return Ok(());
        }
        self.write(|txn| {
            let mut table = txn.open_table(REPLAY_TAGS)?;
            for tag in tags {
                table.insert((epoch, *tag), ())?;
            }
            Ok(())
        })
    }

    /// Every replay tag recorded for `epoch`, in ascending byte order.
    pub fn replay_tags(&self, epoch: u32) -> Result<Vec<[u8; 16]>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(REPLAY_TAGS)?;
            let mut tags = Vec::new();
            for entry in table.range((epoch, [0u8; 16])..=(epoch, [0xFF; 16]))? {
                let (key, _) = entry?;
                tags.push(key.value().1);
            }
            Ok(tags)
        })
    }

    // ---- Key-value blobs -----------------------------------------------

    /// Stores `value` under `key` in `namespace`, replacing what was there.
    /// The namespace is 1 to [`MAX_KV_NAMESPACE_SIZE`] bytes, the key at most
    /// [`MAX_KV_KEY_SIZE`], the value at most [`MAX_KV_VALUE_SIZE`].
    pub fn kv_put(&self, namespace: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        check_kv(namespace, Some(key), Some(value))?;
        self.write(|txn| {
            txn.open_table(KV)?.insert((namespace, key), value)?;
            Ok(())
        })
    }

    /// The value under `key` in `namespace`, if any.
    pub fn kv_get(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        check_kv(namespace, Some(key), None)?;
        self.read(|txn| {
            let table = txn.open_table(KV)?;
            let value = table.get((namespace, key))?;
            Ok(value.map(|v| v.value().to_vec()))
        })
    }

    /// Deletes `key` from `namespace`. Returns whether it was there.
    pub fn kv_delete(&self, namespace: &str, key: &[u8]) -> Result<bool, StoreError> {
        check_kv(namespace, Some(key), None)?;
        self.write(|txn| Ok(txn.open_table(KV)?.remove((namespace, key))?.is_some()))
    }

    /// Applies `ops` in order, all in one transaction: when this returns `Ok`
    /// all of them are on disk; when it returns an error, or the process dies
    /// before it returns, none of them is. A later op on the same key wins.
    ///
    /// At most [`MAX_KV_BATCH`] ops; each namespace, key and value within the
    /// bounds of [`Store::kv_put`]. An op out of bounds fails the whole batch
    /// ([`StoreError::InvalidKv`]) and nothing of it is stored.
    pub fn kv_batch(&self, ops: &[KvOp<'_>]) -> Result<(), StoreError> {
        if ops.len() > MAX_KV_BATCH {
            return Err(StoreError::BatchTooLarge {
                what: "key-value ops",
                count: ops.len(),
                max: MAX_KV_BATCH,
            });
        }
        if ops.is_empty() {
            return Ok(());
        }
        self.write(|txn| {
            let mut table = txn.open_table(KV)?;
            // Each op is checked as it comes, inside the transaction: an op
            // out of bounds aborts the transaction with the earlier ops in
            // it, which redb then discards.
            for op in ops {
                match *op {
                    KvOp::Put {
                        namespace,
                        key,
                        value,
                    } => {
                        check_kv(namespace, Some(key), Some(value))?;
                        table.insert((namespace, key), value)?;
                    }
                    KvOp::Delete { namespace, key } => {
                        check_kv(namespace, Some(key), None)?;
                        table.remove((namespace, key))?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Reads the value under `key` in `namespace` and, in the same
    /// transaction, stores what `f` returns in its place (`None`: leaves it
    /// as it is). Nothing is written if `f` fails.
    pub(crate) fn kv_update(
        &self,
        namespace: &str,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>, StoreError>,
    ) -> Result<(), StoreError> {
        check_kv(namespace, Some(key), None)?;
        self.write(|txn| {
            let mut table = txn.open_table(KV)?;
            let new = {
                let old = table.get((namespace, key))?;
                f(old.as_ref().map(|v| v.value()))?
            };
            if let Some(new) = new {
                check_kv(namespace, None, Some(&new))?;
                table.insert((namespace, key), new.as_slice())?;
            }
            Ok(())
        })
    }

    /// Every key and value of `namespace`, by ascending key.
    pub fn kv_list(&self, namespace: &str) -> Result<Vec<KvEntry>, StoreError> {
        check_kv(namespace, None, None)?;
        self.read(|txn| {
            let table = txn.open_table(KV)?;
            let empty: &[u8] = &[];
            let mut out = Vec::new();
            for entry in table.range((namespace, empty)..)? {
                let (key, value) = entry?;
                let (ns, key) = key.value();
                if ns != namespace {
                    break;
                }
                out.push((key.to_vec(), value.value().to_vec()));
            }
            Ok(out)
        })
    }
}
