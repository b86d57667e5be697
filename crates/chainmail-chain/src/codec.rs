//! The canonical encoding: fixed-width big-endian integers, byte strings
//! with a 4-byte big-endian length, enums as one tag byte. There is exactly
//! one encoding of every value, so hashes and signatures over encodings are
//! well defined, and a decoder that refuses trailing bytes, unknown tags and
//! out-of-range lengths accepts nothing else.

use crate::ChainError;

/// Builds a canonical encoding.
#[derive(Default)]
pub(crate) struct Writer(pub(crate) Vec<u8>);

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn fixed(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// A byte string: length (u32) then the bytes. Callers bound lengths
    /// far below `u32::MAX`.
    pub(crate) fn var(&mut self, v: &[u8]) -> &mut Self {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(v);
        self
    }
    pub(crate) fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads a canonical encoding; every method fails on truncation.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }
    fn err(&self, reason: &'static str) -> ChainError {
        ChainError::Malformed {
            what: self.what,
            reason,
        }
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], ChainError> {
        if self.buf.len() < n {
            return Err(self.err("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, ChainError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, ChainError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, ChainError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, ChainError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], ChainError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    /// A byte string of at most `max` bytes.
    pub(crate) fn var(&mut self, max: usize) -> Result<&'a [u8], ChainError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(self.err("a length is over its limit"));
        }
        self.take(len)
    }
    /// A UTF-8 string of at most `max` bytes.
    pub(crate) fn string(&mut self, max: usize) -> Result<String, ChainError> {
        let bytes = self.var(max)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.err("a text is not UTF-8"))
    }
    /// A count of at most `max` items.
    pub(crate) fn count(&mut self, max: usize) -> Result<usize, ChainError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(self.err("too many items"));
        }
        Ok(n)
    }
    pub(crate) fn finish(self) -> Result<(), ChainError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err("trailing bytes"))
        }
    }
}
