//! The tables of a store and what their rows mean.

use redb::TableDefinition;

use crate::types::MailboxId;

/// Layout version of the tables below. Bump it, and migrate, when any of
/// them changes.
pub(crate) const LAYOUT_VERSION: u64 = 1;

/// Store-wide counters and the layout version.
pub(crate) const META: TableDefinition<'static, &str, u64> = TableDefinition::new("chainmail_meta");
pub(crate) const META_LAYOUT_VERSION: &str = "layout_version";
pub(crate) const META_TOTAL_ITEMS: &str = "mailbox_total_items";
pub(crate) const META_TOTAL_BYTES: &str = "mailbox_total_bytes";

/// The node's long-term secrets, by name.
pub(crate) const SECRETS: TableDefinition<'static, &str, [u8; 32]> =
    TableDefinition::new("node_secrets");
pub(crate) const SECRET_NODE_IDENTITY: &str = "node_identity";

/// Mix key secret by epoch.
pub(crate) const MIX_KEYS: TableDefinition<'static, u32, [u8; 32]> =
    TableDefinition::new("mix_keys");

/// Replay tags seen, by (epoch, tag).
pub(crate) const REPLAY_TAGS: TableDefinition<'static, (u32, [u8; 16]), ()> =
    TableDefinition::new("replay_tags");

/// Mailbox items: (mailbox, seq) → (stored at, bytes).
pub(crate) const ITEMS: TableDefinition<'static, (MailboxId, u64), (u64, &[u8])> =
    TableDefinition::new("mailbox_items");

/// Expiry index: (stored at, mailbox, seq) for every item.
pub(crate) const EXPIRY: TableDefinition<'static, (u64, MailboxId, u64), ()> =
    TableDefinition::new("mailbox_expiry");

/// Per-mailbox counters: mailbox → (items, bytes, next seq). A mailbox's row
/// stays when it empties, so that its sequence numbers are never reused.
pub(crate) const COUNTERS: TableDefinition<'static, MailboxId, (u64, u64, u64)> =
    TableDefinition::new("mailbox_counters");

/// Small blobs: (namespace, key) → value.
pub(crate) const KV: TableDefinition<'static, (&str, &[u8]), &[u8]> = TableDefinition::new("kv");

/// Items one expiry transaction deletes at most, so that a large backlog is
/// worked off in bounded transactions.
pub(crate) const EXPIRE_BATCH: usize = 4096;

/// The first bytes of every redb file.
pub(crate) const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];
