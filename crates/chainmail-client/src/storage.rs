//! Where the agent keeps what must survive a restart, behind a trait: the
//! node stores it in the account's encrypted vault (redb), the browser in
//! its own store, tests and simulations in memory.
//!
//! The agent reads through [`Storage`] and writes by handing the driver a
//! [`Batch`] ([`crate::Output::Persist`]), which the driver makes durable,
//! all or nothing, before it takes the next output: nothing the batch
//! caused (a published descriptor naming a new fallback key, an acknowledgement,
//! a fetch cursor that deletes mail at the provider) leaves before it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A table of the agent's storage: one enum, so that a mistyped name is a
/// compile error and every table is listed in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// The mixnet client's keys (`keys`) and fetch cursors (`cursors`).
    Client,
    /// The newest valid advisory of unsafe versions (`current`).
    Advisory,
    /// The messenger's state without contacts and sessions: `core`
    /// (`state`: the whole state, as versions before per-contact records
    /// kept it; moved into `core` and `contacts` when found).
    Messenger,
    /// One record per contact (the contact and its Olm sessions): its
    /// address.
    Contacts,
    /// What the user was shown, in order: big-endian position from 1.
    History,
    /// The messages the user sent, with their states: hex id.
    Sent,
    /// Community invitations received: token.
    Invites,
    /// The communities joined: community id.
    Communities,
    /// The blocks of those communities: community id ‖ block id.
    CommunityBlocks,
    /// Direct-mode consent, per contact: their address.
    Direct,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 10] = [
        Table::Client,
        Table::Advisory,
        Table::Messenger,
        Table::Contacts,
        Table::History,
        Table::Sent,
        Table::Invites,
        Table::Communities,
        Table::CommunityBlocks,
        Table::Direct,
    ];

    /// The name stored on disk.
    pub const fn as_str(self) -> &'static str {
        match self {
            Table::Client => "client",
            Table::Advisory => "advisory",
            Table::Messenger => "messenger",
            Table::Contacts => "contacts",
            Table::History => "history",
            Table::Sent => "sent",
            Table::Invites => "invites",
            Table::Communities => "communities",
            Table::CommunityBlocks => "community-blocks",
            Table::Direct => "direct",
        }
    }
}

/// Writes to make durable together, in order.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// (table, key, value) to store, replacing what was there.
    pub puts: Vec<(Table, Vec<u8>, Vec<u8>)>,
    /// (table, key) to delete, after the puts.
    pub deletes: Vec<(Table, Vec<u8>)>,
}

impl std::fmt::Debug for Batch {
    // Tables and sizes only: values hold secrets and messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field(
                "puts",
                &self
                    .puts
                    .iter()
                    .map(|(t, k, v)| (t, k.len(), v.len()))
                    .collect::<Vec<_>>(),
            )
            .field("deletes", &self.deletes.len())
            .finish()
    }
}

impl Batch {
    /// Adds a write.
    pub fn put(&mut self, table: Table, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        self.puts.push((table, key.into(), value));
    }

    /// Deletes a key.
    pub fn delete(&mut self, table: Table, key: impl Into<Vec<u8>>) {
        self.deletes.push((table, key.into()));
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }

    /// The value this batch writes under `key` in `table`, if it writes
    /// one (the last write wins).
    pub fn get(&self, table: Table, key: &[u8]) -> Option<&Vec<u8>> {
        self.puts
            .iter()
            .rev()
            .find(|(t, k, _)| *t == table && k == key)
            .map(|(_, _, v)| v)
    }

    /// The value written under `key` in `table`, to change in place.
    pub fn get_mut(&mut self, table: Table, key: &[u8]) -> Option<&mut Vec<u8>> {
        self.puts
            .iter_mut()
            .rev()
            .find(|(t, k, _)| *t == table && k == key)
            .map(|(_, _, v)| v)
    }
}

/// A key and its value.
pub type Record = (Vec<u8>, Vec<u8>);

/// Why storage failed; the agent passes it on to whoever asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("storage: {0}")]
pub struct StorageError(pub String);

/// The agent's storage. The agent only reads through it; its writes come
/// out as [`crate::Output::Persist`] batches that the driver hands to
/// [`Storage::write`] (on its own handle: the same store, shared) before it
/// takes the next output. A browser's storage, whose writes are
/// asynchronous, reads from memory and awaits each batch there.
pub trait Storage {
    /// The value under `key` in `table`.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Every key and value of `table`, by ascending key. Used when the
    /// agent starts (communities, their blocks) and for small tables.
    fn list(&self, table: Table) -> Result<Vec<Record>, StorageError>;

    /// Makes `batch` durable, all or nothing.
    fn write(&self, batch: &Batch) -> Result<(), StorageError>;
}

type Tables = BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>;

/// Storage in memory, for tests, simulations and a browser session that
/// keeps nothing. Clones share the same tables.
#[derive(Clone, Debug, Default)]
pub struct MemoryStorage {
    tables: Arc<Mutex<Tables>>,
}

impl MemoryStorage {
    /// Empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        // Nothing that holds the lock can panic half-way through a batch
        // (inserting into a map only fails on allocation), so a poisoned
        // lock still holds whole batches.
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Storage for MemoryStorage {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.tables().get(&table).and_then(|t| t.get(key)).cloned())
    }

    fn list(&self, table: Table) -> Result<Vec<Record>, StorageError> {
        Ok(self
            .tables()
            .get(&table)
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    fn write(&self, batch: &Batch) -> Result<(), StorageError> {
        let mut tables = self.tables();
        for (table, key, value) in &batch.puts {
            tables
                .entry(*table)
                .or_default()
                .insert(key.clone(), value.clone());
        }
        for (table, key) in &batch.deletes {
            if let Some(t) = tables.get_mut(table) {
                t.remove(key);
            }
        }
        Ok(())
    }
}
