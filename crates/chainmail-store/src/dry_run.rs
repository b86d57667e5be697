//! A storage backend that reads a file and never writes it.
//!
//! Opening a redb file for writing may write to it before it finds out the
//! file is beyond repair (crash recovery rewrites the header first). The
//! store therefore opens every existing file twice: first through this
//! backend, which keeps every write in memory and throws it away, so that a
//! file redb cannot open is left exactly as it was; then, only if that
//! worked, for real.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// Granularity of the in-memory copy of written bytes.
const CHUNK: u64 = 4096;

/// Most bytes the dry run keeps in memory. An open writes little (headers,
/// the allocator state), so reaching this means something is wrong.
const MAX_OVERLAY_BYTES: usize = 256 << 20;

/// Reads through to the file; keeps writes and length changes in memory.
/// Locks are taken on the real file, as a writable open would.
#[derive(Debug)]
pub(crate) struct DryRunBackend {
    file: FileBackend,
    overlay: Mutex<Overlay>,
}

#[derive(Debug)]
struct Overlay {
    /// Length of the storage as the database sees it.
    len: u64,
    /// Bytes at or past this offset come from `chunks` or are zero, never
    /// from the file (the database shrank the storage below it at some
    /// point, which zeroes what comes back when it grows again).
    file_visible: u64,
    /// Written chunks, by index. Bytes of a chunk at or past `len` are zero.
    chunks: BTreeMap<u64, Box<[u8]>>,
}

impl DryRunBackend {
    /// Wraps `file`, which must be opened for reading and writing (so that
    /// the write locks can be taken), although it is never written.
    pub(crate) fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file: FileBackend::new(file).map_err(io::Error::other)?,
            overlay: Mutex::new(Overlay {
                len,
                file_visible: len,
                chunks: BTreeMap::new(),
            }),
        })
    }

    fn overlay(&self) -> io::Result<MutexGuard<'_, Overlay>> {
        self.overlay
            .lock()
            .map_err(|_| io::Error::other("dry-run overlay lock poisoned"))
    }
}

impl Overlay {
    /// Reads `out.len()` bytes at `offset` as the database would see them.
    fn read(&self, file: &FileBackend, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let end = offset
            .checked_add(out.len() as u64)
            .filter(|end| *end <= self.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        if out.is_empty() {
            return Ok(());
        }
        // From the file, what it may still show; zero past that.
        let from_file = self.file_visible.clamp(offset, end) - offset;
        let from_file = usize::try_from(from_file).map_err(io::Error::other)?;
        let (head, tail) = out.split_at_mut(from_file);
        if !head.is_empty() {
            file.read(offset, head)?;
        }
        tail.fill(0);
        // Then what was written over it.
        let first = offset / CHUNK;
        let last = (end - 1) / CHUNK;
        for (&index, chunk) in self.chunks.range(first..=last) {
            let chunk_start = index * CHUNK;
            let lo = chunk_start.max(offset);
            let hi = (chunk_start + CHUNK).min(end);
            let src = &chunk[to_usize(lo - chunk_start)?..to_usize(hi - chunk_start)?];
            out[to_usize(lo - offset)?..to_usize(hi - offset)?].copy_from_slice(src);
        }
        Ok(())
    }

    fn write(&mut self, file: &FileBackend, offset: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| io::Error::other("write past the largest offset"))?;
        if end > self.len {
            self.len = end;
        }
        for index in offset / CHUNK..=(end - 1) / CHUNK {
            let chunk_start = index * CHUNK;
            if !self.chunks.contains_key(&index) {
                if self.chunks.len() >= MAX_OVERLAY_BYTES / CHUNK as usize {
                    return Err(io::Error::other(
                        "opening the store wrote more than the dry run keeps in memory",
                    ));
                }
                let mut chunk = vec![0; CHUNK as usize].into_boxed_slice();
                let readable = self.len.saturating_sub(chunk_start).min(CHUNK);
                self.read(file, chunk_start, &mut chunk[..to_usize(readable)?])?;
                self.chunks.insert(index, chunk);
            }
            let lo = chunk_start.max(offset);
            let hi = (chunk_start + CHUNK).min(end);
            let chunk = self
                .chunks
                .get_mut(&index)
                .ok_or_else(|| io::Error::other("dry-run chunk vanished"))?;
            chunk[to_usize(lo - chunk_start)?..to_usize(hi - chunk_start)?]
                .copy_from_slice(&data[to_usize(lo - offset)?..to_usize(hi - offset)?]);
        }
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        if len < self.len {
            // Forget what lies past the new end, so that it reads as zero
            // if the storage grows again.
            let keep = len.div_ceil(CHUNK);
            drop(self.chunks.split_off(&keep));
            if !len.is_multiple_of(CHUNK)
                && let Some(chunk) = self.chunks.get_mut(&(len / CHUNK))
            {
                chunk[to_usize(len % CHUNK)?..].fill(0);
            }
            self.file_visible = self.file_visible.min(len);
        }
        self.len = len;
        Ok(())
    }
}

fn to_usize(n: u64) -> io::Result<usize> {
    usize::try_from(n).map_err(io::Error::other)
}

impl StorageBackend for DryRunBackend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.overlay()?.len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.overlay()?.read(&self.file, offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.overlay()?.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.overlay()?.write(&self.file, offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn backend(contents: &[u8]) -> (tempfile::NamedTempFile, DryRunBackend) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(contents).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(tmp.path())
            .unwrap();
        (tmp, DryRunBackend::new(file).unwrap())
    }

    fn read(b: &DryRunBackend, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0xEE; len];
        b.read(offset, &mut out).unwrap();
        out
    }

    #[test]
    fn reads_through_writes_over_and_leaves_the_file_alone() {
        let original: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let (tmp, b) = backend(&original);
        assert_eq!(read(&b, 100, 50), original[100..150]);

        b.write(4090, &[1; 20]).unwrap();
        let mut expected = original.clone();
        expected[4090..4110].fill(1);
        assert_eq!(read(&b, 4000, 200), expected[4000..4200]);
        assert_eq!(read(&b, 0, 10_000), expected);

        // Grow by writing past the end: the gap reads as zero.
        b.write(12_000, &[2; 10]).unwrap();
        assert_eq!(b.len().unwrap(), 12_010);
        expected.resize(12_000, 0);
        expected.extend_from_slice(&[2; 10]);
        assert_eq!(read(&b, 0, 12_010), expected);
        assert!(b.read(12_000, &mut [0; 11]).is_err());

        // Shrink, then grow: what was cut off comes back as zero.
        b.set_len(5000).unwrap();
        assert!(b.read(4999, &mut [0; 2]).is_err());
        b.set_len(13_000).unwrap();
        expected.truncate(5000);
        expected.resize(13_000, 0);
        assert_eq!(read(&b, 0, 13_000), expected);

        b.sync_data().unwrap();
        drop(b);
        assert_eq!(std::fs::read(tmp.path()).unwrap(), original);
    }
}
