//! Opening a file safely: never writing to a file that cannot be opened.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;

use redb::{Builder, Database, ReadableDatabase, TableHandle};

use crate::dry_run::DryRunBackend;
use crate::error::StoreError;
use crate::store::{Failure, Result};
use crate::tables::{LAYOUT_VERSION, META, META_LAYOUT_VERSION, REDB_MAGIC};
use crate::types::StoreOptions;

/// Runs `f`, turning a panic inside redb into [`StoreError::Corrupt`]: redb
/// documents that a file damaged outside it may make it panic.
pub(crate) fn without_panic<T>(
    path: &Path,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: "the database engine failed while reading it".to_owned(),
        })
    })
}

/// Whether a file starts like a redb database.
pub(crate) fn check_magic(path: &Path) -> Result<(), StoreError> {
    let io_error = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut magic = [0; REDB_MAGIC.len()];
    let mut file = fs::File::open(path).map_err(io_error)?;
    match file.read_exact(&mut magic) {
        Ok(()) if magic == REDB_MAGIC => Ok(()),
        Ok(()) => Err(StoreError::NotADatabase {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(StoreError::NotADatabase {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(io_error(e)),
    }
}

/// Creates an empty file only its owner may read and write: the store holds
/// secret keys. Leaves an existing file alone.
pub(crate) fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Opens the file as redb would, with every write kept in memory, and checks
/// it holds a store this build reads. Nothing reaches the file.
pub(crate) fn dry_run(path: &Path, options: &StoreOptions) -> Result<(), StoreError> {
    let io_error = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_error)?;
    let backend = DryRunBackend::new(file).map_err(io_error)?;
    without_panic(path, || {
        let mut builder = Builder::new();
        builder
            .set_cache_size(options.cache_size)
            .set_check_integrity_on_open(options.verify_on_open);
        let db = builder
            .create_with_backend(backend)
            .map_err(|e| Failure::from(e).at(path))?;
        check_layout(&db, path).map_err(|e| e.at(path))
    })
}

/// Checks that a database is a store of the layout this build reads, or is
/// empty.
fn check_layout(db: &Database, path: &Path) -> Result<()> {
    let txn = db.begin_read()?;
    let mut tables = txn.list_tables()?.peekable();
    if tables.peek().is_none() {
        // Created, but never initialised: ours, and empty.
        return Ok(());
    }
    if !tables.any(|t| t.name() == META.name()) {
        return Err(Failure::Store(StoreError::ForeignDatabase {
            path: path.to_path_buf(),
        }));
    }
    let meta = txn.open_table(META)?;
    let found = meta.get(META_LAYOUT_VERSION)?.map(|v| v.value());
    check_version(found, path)
}

/// Checks the layout version a store records.
pub(crate) fn check_version(found: Option<u64>, path: &Path) -> Result<()> {
    match found {
        Some(LAYOUT_VERSION) => Ok(()),
        Some(found) => Err(Failure::Store(StoreError::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
            supported: LAYOUT_VERSION,
        })),
        None => Err(Failure::Redb(redb::Error::Corrupted(
            "the layout version is missing".to_owned(),
        ))),
    }
}
