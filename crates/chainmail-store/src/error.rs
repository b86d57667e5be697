//! Errors of the store.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong when opening or using a store. None of these
/// is a panic; an open that fails leaves the file as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file exists and is not empty, but is not a redb database.
    #[error(
        "{} is not a Chainmail store (not a redb database); it was left untouched: \
         pass the path of a store, or a path where none exists yet",
        path.display()
    )]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },
    /// The file is a redb database, but of another program.
    #[error(
        "{} is a redb database without Chainmail's tables, probably another program's; \
         it was left untouched: pass the path of a Chainmail store, or a new path",
        path.display()
    )]
    ForeignDatabase {
        /// The file.
        path: PathBuf,
    },
    /// The file is damaged: truncated, overwritten, or checksums that do not
    /// match; or a vault record or header fails authentication (tampered
    /// with, or moved from another key, table or vault).
    #[error(
        "store {} is corrupt ({detail}); Chainmail changes nothing it cannot read: \
         restore the store from a backup, or move it away to start with an empty one",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What redb found wrong.
        detail: String,
    },
    /// Another process, or another [`Store`](crate::Store) in this one, has
    /// the file open.
    #[error(
        "store {} is already open (by another process, or another Store in this one); \
         stop the other user first, or give this one its own path",
        path.display()
    )]
    AlreadyOpen {
        /// The file.
        path: PathBuf,
    },
    /// The store was written by another version of Chainmail with a layout
    /// this build does not read.
    #[error(
        "store {} has layout version {found}, this build reads version {supported}: \
         run a Chainmail that supports it, or use another path",
        path.display()
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Layout version recorded in the file.
        found: u64,
        /// Layout version this build reads and writes.
        supported: u64,
    },
    /// Reading or writing the file failed.
    #[error(
        "I/O error on store {}: {source} (check free disk space, permissions and the disk)",
        path.display()
    )]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// Any other error of the database engine.
    #[error("database error on store {}: {source}", path.display())]
    Database {
        /// The file.
        path: PathBuf,
        /// What redb said.
        #[source]
        source: redb::Error,
    },
    /// A mailbox item is larger than [`MAX_ITEM_SIZE`](crate::MAX_ITEM_SIZE).
    /// Nothing of the batch was stored.
    #[error(
        "item {index} of the batch is {size} bytes, mailbox items are at most {max} bytes; \
         nothing of the batch was stored",
        max = crate::MAX_ITEM_SIZE
    )]
    ItemTooLarge {
        /// Position of the item in the batch.
        index: usize,
        /// Its size.
        size: usize,
    },
    /// A call was given more entries than it takes at once. Nothing was
    /// stored.
    #[error("{count} {what} in one call, at most {max} are taken at once: split the batch")]
    BatchTooLarge {
        /// What was batched.
        what: &'static str,
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A key-value namespace, key or value is empty where it must not be, or
    /// too large.
    #[error(
        "key-value {what} of {size} bytes is out of bounds: at most {max} bytes, \
         and a namespace must not be empty"
    )]
    InvalidKv {
        /// Which part: "namespace", "key" or "value".
        what: &'static str,
        /// Its size.
        size: usize,
        /// The largest size allowed.
        max: usize,
    },
    /// A mailbox has used all 2^64 - 1 sequence numbers.
    #[error("mailbox has used every sequence number; it cannot take more items")]
    SequenceExhausted,
    /// A vault table name, record key or value is empty where it must not
    /// be, or too large. Nothing was stored.
    #[error(
        "vault {what} of {size} bytes is out of bounds: at most {max} bytes, \
         and a table name must not be empty; nothing was stored"
    )]
    InvalidVaultRecord {
        /// Which part: "table name", "key" or "value".
        what: &'static str,
        /// Its size.
        size: usize,
        /// The largest size allowed.
        max: usize,
    },
    /// A vault name that is not 1 to
    /// [`MAX_VAULT_NAME_SIZE`](crate::MAX_VAULT_NAME_SIZE) ASCII letters,
    /// digits, `-` or `_`.
    #[error(
        "{name:?} is not a valid vault name: use 1 to {max} ASCII letters, digits, '-' or '_'",
        max = crate::MAX_VAULT_NAME_SIZE
    )]
    InvalidVaultName {
        /// The name given.
        name: String,
    },
    /// [`Vault::create`](crate::Vault::create) found a vault of that name:
    /// it was left as it was.
    #[error(
        "vault {vault:?} already exists in store {}; it was left untouched: \
         unlock it, or create the new vault under another name",
        path.display()
    )]
    VaultExists {
        /// The store.
        path: PathBuf,
        /// The vault's name.
        vault: String,
    },
    /// There is no vault of that name in the store.
    #[error(
        "store {} holds no vault {vault:?}: create it first, or check the store path and vault name",
        path.display()
    )]
    NoVault {
        /// The store.
        path: PathBuf,
        /// The vault's name.
        vault: String,
    },
    /// The passphrase or key file does not unlock the vault. Nothing was
    /// changed.
    #[error(
        "wrong passphrase or key file for vault {vault:?}: nothing was unlocked; \
         give the secret the vault was created with, or last changed to"
    )]
    WrongSecret {
        /// The vault's name.
        vault: String,
    },
    /// The vault is unlocked with a passphrase and was given a key file, or
    /// the other way round. Nothing was changed.
    #[error(
        "vault {vault:?} is unlocked with a {expected}, but was given a {given}: \
         give its {expected}"
    )]
    WrongSecretKind {
        /// The vault's name.
        vault: String,
        /// What unlocks it: "passphrase" or "key file".
        expected: &'static str,
        /// What was given.
        given: &'static str,
    },
    /// A vault was created, or its secret changed, with an empty passphrase.
    #[error("the vault passphrase is empty: choose a passphrase, or use a key file")]
    EmptyPassphrase,
    /// Bytes given as a key file are not one.
    #[error(
        "a key file of {len} bytes is not a vault key file ({reason}): a key file holds \
         exactly 32 bytes, or 64 hexadecimal digits and an optional newline; \
         check that the right file was given"
    )]
    InvalidKeyFile {
        /// Length of what was given.
        len: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Key derivation parameters out of the bounds of
    /// [`VaultParams`](crate::VaultParams).
    #[error("vault key derivation parameters out of bounds: {detail}")]
    InvalidVaultParams {
        /// Which parameter, and its bounds.
        detail: String,
    },
    /// Deriving the vault's key from the passphrase failed (argon2), for
    /// instance for lack of memory.
    #[error(
        "deriving the vault key from the passphrase failed ({detail}); \
         free memory, or recreate the vault with a smaller m_cost"
    )]
    KeyDerivation {
        /// What argon2 said.
        detail: String,
    },
    /// The operating system gave no random bytes.
    #[error("the operating system's random number generator failed: {detail}")]
    Randomness {
        /// What the operating system said.
        detail: String,
    },
    /// The vault was written by another version of Chainmail, with a format
    /// this build does not read.
    #[error(
        "vault {vault:?} has format version {found}, this build reads version {supported}: \
         run a Chainmail that supports it"
    )]
    UnsupportedVaultVersion {
        /// The vault's name.
        vault: String,
        /// Format version recorded in the vault's header.
        found: u8,
        /// Format version this build reads and writes.
        supported: u8,
    },
}

impl StoreError {
    /// Sorts an error of redb into the variant that says what to do about it.
    pub(crate) fn from_redb(path: &Path, error: redb::Error) -> Self {
        let path = path.to_path_buf();
        match error {
            redb::Error::Corrupted(detail) => Self::Corrupt { path, detail },
            redb::Error::Io(source) => Self::Io { path, source },
            redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
                Self::AlreadyOpen { path }
            }
            source => Self::Database { path, source },
        }
    }
}
