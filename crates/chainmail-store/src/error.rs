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
    /// match.
    #[error(
        "store {} is corrupt ({detail}); Chainmail does not modify a store it cannot open: \
         restore it from a backup, or move it away to start with an empty store",
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
