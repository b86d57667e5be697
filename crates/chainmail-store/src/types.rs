//! The values the store takes and returns.

use std::fmt;

use zeroize::Zeroizing;

/// Size of a mailbox id.
pub const MAILBOX_ID_SIZE: usize = 32;

/// A mailbox id: 32 opaque bytes chosen by the mailbox owner.
pub type MailboxId = [u8; MAILBOX_ID_SIZE];

/// A 32-byte secret key as the store returns it: wiped from memory when
/// dropped. Turn it into the key type that uses it right away; its `Debug`
/// (that of [`Zeroizing`]) would show the bytes.
pub type Secret = Zeroizing<[u8; 32]>;

/// A key and its value, as [`Store::kv_list`](crate::Store::kv_list)
/// returns them.
pub type KvEntry = (Vec<u8>, Vec<u8>);

/// One write of [`Store::kv_batch`](crate::Store::kv_batch).
///
/// `Debug` shows namespaces and sizes, never keys or values.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum KvOp<'a> {
    /// Store `value` under `key` in `namespace`, replacing what was there.
    Put {
        /// The namespace, 1 to [`MAX_KV_NAMESPACE_SIZE`](crate::MAX_KV_NAMESPACE_SIZE) bytes.
        namespace: &'a str,
        /// The key, at most [`MAX_KV_KEY_SIZE`](crate::MAX_KV_KEY_SIZE) bytes.
        key: &'a [u8],
        /// The value, at most [`MAX_KV_VALUE_SIZE`](crate::MAX_KV_VALUE_SIZE) bytes.
        value: &'a [u8],
    },
    /// Delete `key` from `namespace`, if it is there.
    Delete {
        /// The namespace.
        namespace: &'a str,
        /// The key.
        key: &'a [u8],
    },
}

impl fmt::Debug for KvOp<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvOp::Put {
                namespace,
                key,
                value,
            } => f
                .debug_struct("Put")
                .field("namespace", namespace)
                .field("key_len", &key.len())
                .field("value_len", &value.len())
                .finish(),
            KvOp::Delete { namespace, key } => f
                .debug_struct("Delete")
                .field("namespace", namespace)
                .field("key_len", &key.len())
                .finish(),
        }
    }
}

/// Limits a provider puts on what it stores.
///
/// `max_items` and `max_bytes` apply to each mailbox on its own;
/// `max_total_bytes` to all mailboxes of the store together, so that mail for
/// many mailboxes cannot fill the disk. Bytes are the items' own bytes (the
/// database's overhead per item, about 100 bytes, is not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Most items one mailbox holds.
    pub max_items: u64,
    /// Most bytes of items one mailbox holds.
    pub max_bytes: u64,
    /// Most bytes of items all mailboxes of the store hold together.
    pub max_total_bytes: u64,
}

/// What happened to one item of [`Store::mailbox_append`](crate::Store::mailbox_append).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The item is stored, durably, under this sequence number.
    Stored {
        /// The item's sequence number in its mailbox.
        seq: u64,
    },
    /// The item was not stored: storing it would break the quota.
    Rejected(QuotaExceeded),
}

/// Which limit of a [`Quota`] an item would have broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuotaExceeded {
    /// The mailbox already holds `max_items` items.
    Items {
        /// The limit.
        max_items: u64,
    },
    /// The item does not fit in the bytes the mailbox has left.
    Bytes {
        /// Bytes the mailbox holds.
        stored: u64,
        /// Size of the item.
        item: u64,
        /// The limit.
        max_bytes: u64,
    },
    /// The item does not fit in the bytes the whole store has left.
    TotalBytes {
        /// Bytes all mailboxes hold.
        stored: u64,
        /// Size of the item.
        item: u64,
        /// The limit.
        max_total_bytes: u64,
    },
}

/// One stored mailbox item, as [`Store::mailbox_read`](crate::Store::mailbox_read)
/// returns it.
///
/// `Debug` shows the sequence number, time and length, never the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct MailboxItem {
    /// Sequence number in the mailbox, from 1, strictly increasing.
    pub seq: u64,
    /// When the item was stored (the `now_ms` given to `mailbox_append`).
    pub stored_at_ms: u64,
    /// The item as it was appended.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for MailboxItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailboxItem")
            .field("seq", &self.seq)
            .field("stored_at_ms", &self.stored_at_ms)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// What one mailbox holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxStats {
    /// The mailbox.
    pub mailbox: MailboxId,
    /// Number of items it holds.
    pub items: u64,
    /// Bytes of those items.
    pub bytes: u64,
}

/// What the store's mailboxes hold: each non-empty mailbox, and the totals.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Every mailbox that holds at least one item, by ascending id.
    pub mailboxes: Vec<MailboxStats>,
    /// Items of all mailboxes.
    pub total_items: u64,
    /// Bytes of all mailboxes' items.
    pub total_bytes: u64,
}

/// How to open a store. `StoreOptions::default()` is right for a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Memory redb may use to cache pages of the file, in bytes.
    /// Default 64 MiB.
    pub cache_size: usize,
    /// Check every page's checksum before opening (default `true`). This
    /// reads the whole file once per open; it is what lets a file damaged
    /// outside redb fail with [`StoreError::Corrupt`](crate::StoreError::Corrupt)
    /// rather than a panic later. Turn it off only for very large stores on
    /// trusted disks.
    pub verify_on_open: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_size: 64 << 20,
            verify_on_open: true,
        }
    }
}
