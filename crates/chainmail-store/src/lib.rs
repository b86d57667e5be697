#![doc = include_str!("../README.md")]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod dry_run;
mod error;
mod mailbox;
mod open;
mod slots;
mod store;
mod tables;
mod types;
mod vault;

pub use error::StoreError;
pub use slots::{SLOT_SIZE as MIX_KEY_SLOT_SIZE, SLOTS as MIX_KEY_SLOTS};
pub use store::Store;
pub use types::{
    AppendOutcome, KvEntry, KvOp, MAILBOX_ID_SIZE, MailboxId, MailboxItem, MailboxStats, Quota,
    QuotaExceeded, Secret, StoreOptions, StoreStats,
};
pub use vault::{
    MAX_VAULT_BATCH, MAX_VAULT_KEY_SIZE, MAX_VAULT_NAME_SIZE, MAX_VAULT_TABLE_SIZE,
    MAX_VAULT_VALUE_SIZE, Vault, VaultEntry, VaultOp, VaultParams, VaultSecret, encode_key_file,
    generate_key_file,
};

/// Largest mailbox item, in bytes. A packet's message is smaller; the rest
/// is room for the layer above.
pub const MAX_ITEM_SIZE: usize = 4096;
/// Most items one [`Store::mailbox_append`] takes.
pub const MAX_APPEND_BATCH: usize = 1024;
/// Most items one [`Store::mailbox_read`] returns, whatever its `limit`.
pub const MAX_READ_ITEMS: usize = 1024;
/// Most replay tags one [`Store::insert_replay_tags`] takes.
pub const MAX_REPLAY_TAGS_PER_CALL: usize = 65_536;
/// Largest key-value namespace, in bytes (UTF-8).
pub const MAX_KV_NAMESPACE_SIZE: usize = 64;
/// Largest key-value key, in bytes.
pub const MAX_KV_KEY_SIZE: usize = 1024;
/// Largest key-value value, in bytes.
pub const MAX_KV_VALUE_SIZE: usize = 1 << 20;
/// Most ops one [`Store::kv_batch`] takes.
pub const MAX_KV_BATCH: usize = 4096;

const _: () = {
    const fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Store>();
    shareable::<StoreError>();
    shareable::<Vault>();
};
