//! Mix keys in a small file of fixed slots, overwritten in place.
//!
//! redb writes copy-on-write: a deleted value stays in a free page until the
//! page is reused, so a retired mix key could be read from the store's file
//! long after its epoch, and the per-epoch forward secrecy of the mixnet
//! would be lost to anyone who later reads the disk. Mix keys therefore live
//! next to the store, in `<store file>.keys`: [`SLOTS`] slots of
//! [`SLOT_SIZE`] bytes, each `magic, epoch, secret, checksum`. Storing a key
//! writes one free slot in place; retiring it writes zeros over its slot;
//! each returns after `fsync`. A slot torn by a crash fails its checksum and
//! counts as empty (the node then makes a new key for that epoch and
//! publishes it).
//!
//! On a file system that overwrites in place (ext4, xfs) the zeros replace
//! the key on the disk. Copy-on-write file systems (btrfs, zfs) and SSD
//! wear levelling may keep the old block below the file; only full-disk
//! encryption covers that.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use zeroize::Zeroizing;

use crate::error::StoreError;
use crate::types::Secret;

/// Slots in the file: a node holds two or three live keys.
pub const SLOTS: usize = 16;
/// Bytes per slot.
pub const SLOT_SIZE: usize = 64;

const MAGIC: [u8; 4] = *b"CMK1";
const CHECKSUM_CONTEXT: &str = "chainmail mix key slot v1";

/// The mix key file.
pub(crate) struct KeySlots {
    file: Mutex<File>,
    path: PathBuf,
}

fn checksum(epoch: u32, secret: &[u8; 32]) -> [u8; 16] {
    let mut h = blake3::Hasher::new_derive_key(CHECKSUM_CONTEXT);
    h.update(&MAGIC);
    h.update(&epoch.to_le_bytes());
    h.update(secret);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

impl KeySlots {
    /// Opens (or creates, readable by the owner only) the key file at
    /// `path`.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let io_error = |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path).map_err(io_error)?;
        let size = (SLOTS * SLOT_SIZE) as u64;
        let len = file.metadata().map_err(io_error)?.len();
        if len != size {
            if len > size {
                return Err(io_error(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a mix key file is {size} bytes, this one is {len}"),
                )));
            }
            file.set_len(size).map_err(io_error)?;
            file.sync_all().map_err(io_error)?;
        }
        Ok(KeySlots {
            file: Mutex::new(file),
            path: path.to_path_buf(),
        })
    }

    fn io(&self, source: io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, File> {
        // A panic while holding the lock leaves the file as it was: every
        // write is one slot.
        self.file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every slot: `Some((epoch, secret))` where one holds a valid key.
    fn read_all(&self, file: &File) -> Result<Vec<Option<(u32, Secret)>>, StoreError> {
        let mut bytes = Zeroizing::new(vec![0u8; SLOTS * SLOT_SIZE]);
        read_exact_at(file, &mut bytes, 0).map_err(|e| self.io(e))?;
        Ok(bytes
            .chunks_exact(SLOT_SIZE)
            .map(|slot| {
                if slot[..4] != MAGIC {
                    return None;
                }
                let epoch = u32::from_le_bytes([slot[4], slot[5], slot[6], slot[7]]);
                let mut secret = Zeroizing::new([0u8; 32]);
                secret.copy_from_slice(&slot[8..40]);
                (slot[40..56] == checksum(epoch, &secret)).then_some((epoch, secret))
            })
            .collect())
    }

    fn write_slot(
        &self,
        file: &File,
        index: usize,
        bytes: &[u8; SLOT_SIZE],
    ) -> Result<(), StoreError> {
        write_all_at(file, bytes, (index * SLOT_SIZE) as u64).map_err(|e| self.io(e))?;
        file.sync_data().map_err(|e| self.io(e))
    }

    /// The stored keys, by ascending epoch.
    pub(crate) fn keys(&self) -> Result<Vec<(u32, Secret)>, StoreError> {
        let file = self.lock();
        let mut keys: Vec<(u32, Secret)> = self.read_all(&file)?.into_iter().flatten().collect();
        keys.sort_by_key(|(epoch, _)| *epoch);
        Ok(keys)
    }

    /// Stores (or replaces) the key of `epoch`.
    pub(crate) fn put(&self, epoch: u32, secret: &[u8; 32]) -> Result<(), StoreError> {
        let file = self.lock();
        let slots = self.read_all(&file)?;
        let index = slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|(e, _)| *e == epoch))
            .or_else(|| slots.iter().position(Option::is_none))
            .ok_or_else(|| {
                self.io(io::Error::other(format!(
                    "all {SLOTS} mix key slots hold live keys"
                )))
            })?;
        let mut bytes = Zeroizing::new([0u8; SLOT_SIZE]);
        bytes[..4].copy_from_slice(&MAGIC);
        bytes[4..8].copy_from_slice(&epoch.to_le_bytes());
        bytes[8..40].copy_from_slice(secret);
        bytes[40..56].copy_from_slice(&checksum(epoch, secret));
        self.write_slot(&file, index, &bytes)
    }

    /// Overwrites the keys of every epoch before `epoch` with zeros;
    /// returns how many there were.
    pub(crate) fn erase_before(&self, epoch: u32) -> Result<usize, StoreError> {
        let file = self.lock();
        let slots = self.read_all(&file)?;
        let mut erased = 0;
        for (index, slot) in slots.iter().enumerate() {
            if slot.as_ref().is_some_and(|(e, _)| *e < epoch) {
                self.write_slot(&file, index, &[0u8; SLOT_SIZE])?;
                erased += 1;
            }
        }
        Ok(erased)
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(unix)]
fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

#[cfg(not(unix))]
fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(buf)
}
