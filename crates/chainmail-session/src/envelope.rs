//! What travels inside an Olm message ([`Envelope`]), and how a message too
//! large for one mixnet packet is cut into [`Fragment`]s and put back
//! together ([`Reassembler`]).
//!
//! Both formats are explicit, versioned binary layouts (all integers
//! little-endian) with strict decoding: a truncated input, trailing bytes,
//! an unknown version or kind, or a field over its limit is an error.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::time::Duration;

use chainmail_mixnet::Time;

use crate::SessionError;

/// Format version of [`Envelope`] encodings.
pub const ENVELOPE_VERSION: u8 = 1;
/// Largest envelope body.
pub const MAX_ENVELOPE_BODY: usize = 64 * 1024;
/// Longest client version string, in bytes.
pub const MAX_CLIENT_VERSION: usize = 32;
/// Fixed part of an encoded envelope: version, kind, id, seq, timestamp,
/// version-string length, body length.
const ENVELOPE_FIXED: usize = 1 + 1 + 16 + 8 + 8 + 1 + 4;
/// Largest encoded envelope.
pub const MAX_ENVELOPE_ENCODED: usize = ENVELOPE_FIXED + MAX_CLIENT_VERSION + MAX_ENVELOPE_BODY;

/// Format version of [`Fragment`] encodings.
pub const FRAGMENT_VERSION: u8 = 1;
/// Encoded fragment header: version, message id, index, count, data length.
pub const FRAGMENT_HEADER: usize = 1 + 16 + 2 + 2 + 2;
/// A message is cut into at most this many fragments.
pub const MAX_FRAGMENTS: usize = 128;
/// Largest encoded fragment (the data length is a `u16`).
pub const MAX_FRAGMENT_ENCODED: usize = FRAGMENT_HEADER + u16::MAX as usize;

/// What an envelope is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum Kind {
    /// A stranger asks to become a contact.
    ContactRequest = 1,
    /// A contact request is accepted.
    Accept = 2,
    /// A contact request is refused.
    Deny = 3,
    /// A text message.
    Text = 4,
    /// A delivery or read receipt.
    Receipt = 5,
    /// The sender's keys changed.
    KeyUpdate = 6,
    /// Opaque bytes for the community layer (invites, join requests),
    /// numbered, confirmed and sent again like a [`Kind::Text`].
    Community = 7,
}

impl Kind {
    /// The byte on the wire.
    pub fn to_byte(self) -> u8 {
        self as u8
    }
}

impl TryFrom<u8> for Kind {
    type Error = SessionError;

    fn try_from(b: u8) -> Result<Kind, SessionError> {
        Ok(match b {
            1 => Kind::ContactRequest,
            2 => Kind::Accept,
            3 => Kind::Deny,
            4 => Kind::Text,
            5 => Kind::Receipt,
            6 => Kind::KeyUpdate,
            7 => Kind::Community,
            _ => return Err(malformed("envelope", format!("unknown kind {b}"))),
        })
    }
}

fn malformed(what: &'static str, detail: impl Into<String>) -> SessionError {
    SessionError::Malformed {
        what,
        detail: detail.into(),
    }
}

/// Reads an encoding front to back; every read fails cleanly on truncation.
struct Reader<'a> {
    what: &'static str,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SessionError> {
        if self.rest.len() < n {
            return Err(malformed(self.what, "truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SessionError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, SessionError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, SessionError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, SessionError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, SessionError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn finish(self) -> Result<(), SessionError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(malformed(
                self.what,
                format!("{} trailing bytes", self.rest.len()),
            ))
        }
    }
}

/// The plaintext of an Olm message between two accounts.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    /// What it is.
    pub kind: Kind,
    /// Random id chosen by the sender (receipts refer to it).
    pub id: [u8; 16],
    /// The sender's sequence number in this conversation.
    pub seq: u64,
    /// When the sender made it, by the sender's clock.
    pub timestamp: Time,
    /// The sender's software version, at most [`MAX_CLIENT_VERSION`] bytes.
    pub client_version: String,
    /// Kind-specific content, at most [`MAX_ENVELOPE_BODY`] bytes.
    pub body: Vec<u8>,
}

impl fmt::Debug for Envelope {
    /// Prints the body's length only: it is message content.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("seq", &self.seq)
            .field("timestamp", &self.timestamp)
            .field("client_version", &self.client_version)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Envelope {
    /// Encodes: `version (1) ‖ kind (1) ‖ id (16) ‖ seq (u64) ‖
    /// timestamp (u64 ms) ‖ len (u8) ‖ client_version ‖ len (u32) ‖ body`.
    pub fn encode(&self) -> Result<Vec<u8>, SessionError> {
        let version = self.client_version.as_bytes();
        let version_len = u8::try_from(version.len())
            .ok()
            .filter(|n| usize::from(*n) <= MAX_CLIENT_VERSION)
            .ok_or(SessionError::TooLarge {
                what: "client version",
                actual: version.len(),
                max: MAX_CLIENT_VERSION,
            })?;
        let body_len = u32::try_from(self.body.len())
            .ok()
            .filter(|_| self.body.len() <= MAX_ENVELOPE_BODY)
            .ok_or(SessionError::TooLarge {
                what: "envelope body",
                actual: self.body.len(),
                max: MAX_ENVELOPE_BODY,
            })?;
        let mut out = Vec::with_capacity(ENVELOPE_FIXED + version.len() + self.body.len());
        out.push(ENVELOPE_VERSION);
        out.push(self.kind.to_byte());
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.timestamp.0.to_le_bytes());
        out.push(version_len);
        out.extend_from_slice(version);
        out.extend_from_slice(&body_len.to_le_bytes());
        out.extend_from_slice(&self.body);
        Ok(out)
    }

    /// Decodes [`Envelope::encode`] output, strictly.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, SessionError> {
        if bytes.len() > MAX_ENVELOPE_ENCODED {
            return Err(SessionError::TooLarge {
                what: "envelope",
                actual: bytes.len(),
                max: MAX_ENVELOPE_ENCODED,
            });
        }
        let mut r = Reader {
            what: "envelope",
            rest: bytes,
        };
        let version = r.u8()?;
        if version != ENVELOPE_VERSION {
            return Err(malformed(
                "envelope",
                format!(
                    "unsupported version {version} (this client reads version {ENVELOPE_VERSION})"
                ),
            ));
        }
        let kind = Kind::try_from(r.u8()?)?;
        let id = r.array()?;
        let seq = r.u64()?;
        let timestamp = Time(r.u64()?);
        let version_len = usize::from(r.u8()?);
        if version_len > MAX_CLIENT_VERSION {
            return Err(SessionError::TooLarge {
                what: "client version",
                actual: version_len,
                max: MAX_CLIENT_VERSION,
            });
        }
        let client_version = std::str::from_utf8(r.take(version_len)?)
            .map_err(|_| malformed("envelope", "client version is not UTF-8"))?
            .to_owned();
        let body_len = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
        if body_len > MAX_ENVELOPE_BODY {
            return Err(SessionError::TooLarge {
                what: "envelope body",
                actual: body_len,
                max: MAX_ENVELOPE_BODY,
            });
        }
        let body = r.take(body_len)?.to_vec();
        r.finish()?;
        Ok(Envelope {
            kind,
            id,
            seq,
            timestamp,
            client_version,
            body,
        })
    }
}

/// One piece of a message cut to fit mixnet packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// Id of the message this is a piece of (random, chosen by the sender).
    pub message: [u8; 16],
    /// Which piece, from 0.
    pub index: u16,
    /// How many pieces the message has (1 to [`MAX_FRAGMENTS`]).
    pub count: u16,
    /// The piece.
    pub data: Vec<u8>,
}

impl Fragment {
    /// Checks the fields' consistency: `count` in 1..=[`MAX_FRAGMENTS`],
    /// `index < count`, data fits the length field and is empty only for a
    /// message of one fragment.
    pub fn validate(&self) -> Result<(), SessionError> {
        if self.count == 0 || usize::from(self.count) > MAX_FRAGMENTS {
            return Err(malformed(
                "fragment",
                format!("count {} (must be 1 to {MAX_FRAGMENTS})", self.count),
            ));
        }
        if self.index >= self.count {
            return Err(malformed(
                "fragment",
                format!("index {} of {}", self.index, self.count),
            ));
        }
        if self.data.len() > usize::from(u16::MAX) {
            return Err(SessionError::TooLarge {
                what: "fragment data",
                actual: self.data.len(),
                max: usize::from(u16::MAX),
            });
        }
        if self.data.is_empty() && self.count > 1 {
            return Err(malformed("fragment", "empty piece of a larger message"));
        }
        Ok(())
    }

    /// Size of the encoding.
    pub fn encoded_len(&self) -> usize {
        FRAGMENT_HEADER + self.data.len()
    }

    /// Encodes: `version (1) ‖ message (16) ‖ index (u16) ‖ count (u16) ‖
    /// len (u16) ‖ data`.
    pub fn encode(&self) -> Result<Vec<u8>, SessionError> {
        self.validate()?;
        let len = u16::try_from(self.data.len()).map_err(|_| SessionError::TooLarge {
            what: "fragment data",
            actual: self.data.len(),
            max: usize::from(u16::MAX),
        })?;
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(FRAGMENT_VERSION);
        out.extend_from_slice(&self.message);
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&self.data);
        Ok(out)
    }

    /// Decodes [`Fragment::encode`] output, strictly.
    pub fn decode(bytes: &[u8]) -> Result<Fragment, SessionError> {
        let mut r = Reader {
            what: "fragment",
            rest: bytes,
        };
        let version = r.u8()?;
        if version != FRAGMENT_VERSION {
            return Err(malformed(
                "fragment",
                format!(
                    "unsupported version {version} (this client reads version {FRAGMENT_VERSION})"
                ),
            ));
        }
        let message = r.array()?;
        let index = r.u16()?;
        let count = r.u16()?;
        let len = usize::from(r.u16()?);
        let data = r.take(len)?.to_vec();
        r.finish()?;
        let fragment = Fragment {
            message,
            index,
            count,
            data,
        };
        fragment.validate()?;
        Ok(fragment)
    }
}

/// Cuts `bytes` into fragments whose encodings are at most
/// `max_fragment_bytes` long (all but the last exactly that long, up to
/// [`MAX_FRAGMENT_ENCODED`]). An empty message is one empty fragment.
///
/// Fails if `max_fragment_bytes` leaves no room for data, or if the message
/// would need more than [`MAX_FRAGMENTS`] fragments.
pub fn fragment(
    message: [u8; 16],
    bytes: &[u8],
    max_fragment_bytes: usize,
) -> Result<Vec<Fragment>, SessionError> {
    if max_fragment_bytes <= FRAGMENT_HEADER {
        return Err(SessionError::TooSmall {
            what: "maximum fragment size",
            actual: max_fragment_bytes,
            min: FRAGMENT_HEADER + 1,
        });
    }
    let chunk = (max_fragment_bytes - FRAGMENT_HEADER).min(usize::from(u16::MAX));
    let count = bytes.len().div_ceil(chunk).max(1);
    if count > MAX_FRAGMENTS {
        return Err(SessionError::TooLarge {
            what: "message to fragment",
            actual: bytes.len(),
            max: MAX_FRAGMENTS * chunk,
        });
    }
    let count16 = u16::try_from(count).map_err(|_| SessionError::TooLarge {
        what: "message to fragment",
        actual: bytes.len(),
        max: MAX_FRAGMENTS * chunk,
    })?;
    if bytes.is_empty() {
        return Ok(vec![Fragment {
            message,
            index: 0,
            count: 1,
            data: Vec::new(),
        }]);
    }
    Ok(bytes
        .chunks(chunk)
        .zip(0u16..)
        .map(|(data, index)| Fragment {
            message,
            index,
            count: count16,
            data: data.to_vec(),
        })
        .collect())
}

/// Bounds of a [`Reassembler`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Most partial messages held at once (at least 1 is used); also how
    /// many recently completed messages are remembered to ignore late
    /// duplicates.
    pub max_messages: usize,
    /// Most bytes of fragment data held at once, over all partial messages;
    /// a message larger than this is refused.
    pub max_bytes: usize,
    /// A partial message older than this (since its first fragment) is
    /// dropped.
    pub timeout: Duration,
}

impl Default for ReassemblyLimits {
    /// 64 messages, 1 MiB, 10 minutes.
    fn default() -> Self {
        ReassemblyLimits {
            max_messages: 64,
            max_bytes: 1024 * 1024,
            timeout: Duration::from_secs(600),
        }
    }
}

/// What a [`Reassembler`] has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Messages put back together and returned.
    pub completed: u64,
    /// Fragments already held, or of a message already completed, ignored.
    pub duplicates: u64,
    /// Partial messages dropped because they timed out.
    pub expired: u64,
    /// Fragments refused with an error (invalid, inconsistent, too large).
    pub rejected: u64,
    /// Partial messages dropped to make room for newer ones.
    pub evicted: u64,
}

struct Partial {
    first_seen: Time,
    order: u64,
    count: u16,
    received: u16,
    bytes: usize,
    pieces: Vec<Option<Vec<u8>>>,
}

/// Puts fragmented messages back together, per sender, within fixed
/// bounds: at most [`ReassemblyLimits::max_messages`] partial messages and
/// [`ReassemblyLimits::max_bytes`] bytes, none older than
/// [`ReassemblyLimits::timeout`]. When a bound is reached, the partial
/// messages that went longest without a new fragment are evicted.
///
/// Fragments arrive before anything says who sent them, so a stranger can
/// send first fragments of messages it never finishes. Evicting by last
/// progress rather than by age means such a flood must fill every slot
/// between two fragments of an honest message (a fraction of a second on
/// the payload stream), not merely over its whole assembly, before it
/// costs anything; evictions are counted.
///
/// `K` identifies the sender, so fragments of two senders never mix even
/// if their message ids collide.
pub struct Reassembler<K> {
    limits: ReassemblyLimits,
    partial: HashMap<(K, [u8; 16]), Partial>,
    /// The partial messages by when they last received a fragment: the
    /// first went longest without one.
    order: BTreeMap<u64, (K, [u8; 16])>,
    next_order: u64,
    bytes: usize,
    completed: VecDeque<(Time, (K, [u8; 16]))>,
    completed_set: HashSet<(K, [u8; 16])>,
    stats: ReassemblyStats,
}

impl<K> fmt::Debug for Reassembler<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reassembler")
            .field("limits", &self.limits)
            .field("partial", &self.partial.len())
            .field("bytes", &self.bytes)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone> Reassembler<K> {
    /// An empty reassembler with these bounds.
    pub fn new(limits: ReassemblyLimits) -> Self {
        Reassembler {
            limits: ReassemblyLimits {
                max_messages: limits.max_messages.max(1),
                ..limits
            },
            partial: HashMap::new(),
            order: BTreeMap::new(),
            next_order: 0,
            bytes: 0,
            completed: VecDeque::new(),
            completed_set: HashSet::new(),
            stats: ReassemblyStats::default(),
        }
    }

    /// Takes in a fragment from `from`. Returns the whole message when this
    /// fragment completes it, `None` while fragments are missing or if this
    /// one is a duplicate.
    ///
    /// Fails, dropping that partial message, if the fragment is invalid,
    /// disagrees with earlier fragments about the count, or would make the
    /// message larger than [`ReassemblyLimits::max_bytes`].
    pub fn insert(
        &mut self,
        now: Time,
        from: K,
        fragment: Fragment,
    ) -> Result<Option<Vec<u8>>, SessionError> {
        if let Err(e) = fragment.validate() {
            self.stats.rejected += 1;
            return Err(e);
        }
        self.expire(now);
        let key = (from, fragment.message);
        if self.completed_set.contains(&key) {
            self.stats.duplicates += 1;
            return Ok(None);
        }
        let len = fragment.data.len();

        if let Some(p) = self.partial.get_mut(&key) {
            if p.count != fragment.count {
                let detail = format!(
                    "count {} disagrees with {} in earlier fragments of the message",
                    fragment.count, p.count
                );
                self.remove(&key);
                self.stats.rejected += 1;
                return Err(malformed("fragment", detail));
            }
            let Some(slot) = p.pieces.get_mut(usize::from(fragment.index)) else {
                // validate() and the equal count make this unreachable.
                self.stats.rejected += 1;
                return Err(malformed("fragment", "index out of range"));
            };
            if slot.is_some() {
                self.stats.duplicates += 1;
                return Ok(None);
            }
            let total = p.bytes + len;
            if total > self.limits.max_bytes {
                self.remove(&key);
                self.stats.rejected += 1;
                return Err(SessionError::TooLarge {
                    what: "reassembled message",
                    actual: total,
                    max: self.limits.max_bytes,
                });
            }
            *slot = Some(fragment.data);
            p.received += 1;
            p.bytes = total;
            self.bytes += len;
            if p.received == p.count {
                return Ok(self.complete(now, key));
            }
            // Progress: to the back of the eviction order.
            self.order.remove(&p.order);
            p.order = self.next_order;
            self.next_order += 1;
            self.order.insert(p.order, key.clone());
            self.make_room(0, Some(&key));
            return Ok(None);
        }

        if len > self.limits.max_bytes {
            self.stats.rejected += 1;
            return Err(SessionError::TooLarge {
                what: "reassembled message",
                actual: len,
                max: self.limits.max_bytes,
            });
        }
        if fragment.count == 1 {
            self.remember_completed(now, key);
            self.stats.completed += 1;
            return Ok(Some(fragment.data));
        }
        while self.partial.len() >= self.limits.max_messages {
            if !self.evict_oldest(None) {
                break;
            }
        }
        self.make_room(len, None);
        let mut pieces = vec![None; usize::from(fragment.count)];
        if let Some(slot) = pieces.get_mut(usize::from(fragment.index)) {
            *slot = Some(fragment.data);
        }
        let order = self.next_order;
        self.next_order += 1;
        self.order.insert(order, key.clone());
        self.partial.insert(
            key,
            Partial {
                first_seen: now,
                order,
                count: fragment.count,
                received: 1,
                bytes: len,
                pieces,
            },
        );
        self.bytes += len;
        Ok(None)
    }

    /// Drops partial messages whose first fragment arrived more than
    /// [`ReassemblyLimits::timeout`] before `now`, and forgets completed
    /// messages as old. Returns how many partial messages were dropped.
    pub fn expire(&mut self, now: Time) -> usize {
        let timeout = self.limits.timeout;
        let old: Vec<(K, [u8; 16])> = self
            .partial
            .iter()
            .filter(|(_, p)| now.saturating_since(p.first_seen) > timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &old {
            self.remove(key);
        }
        self.stats.expired += old.len() as u64;
        while let Some((at, _)) = self.completed.front() {
            if now.saturating_since(*at) <= timeout {
                break;
            }
            if let Some((_, key)) = self.completed.pop_front() {
                self.completed_set.remove(&key);
            }
        }
        old.len()
    }

    /// When the oldest partial message will time out, if there is one: call
    /// [`Reassembler::expire`] then.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.partial
            .values()
            .map(|p| p.first_seen + self.limits.timeout + Duration::from_millis(1))
            .min()
    }

    /// Counters of what happened so far.
    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// Partial messages held.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Bytes of fragment data held.
    pub fn buffered_bytes(&self) -> usize {
        self.bytes
    }

    /// The limits in force.
    pub fn limits(&self) -> ReassemblyLimits {
        self.limits
    }

    fn remove(&mut self, key: &(K, [u8; 16])) -> Option<Partial> {
        let p = self.partial.remove(key)?;
        self.order.remove(&p.order);
        self.bytes -= p.bytes;
        Some(p)
    }

    /// Evicts the partial message other than `keep` that went longest
    /// without a fragment; false if there is none.
    fn evict_oldest(&mut self, keep: Option<&(K, [u8; 16])>) -> bool {
        let victim = self.order.values().find(|k| Some(*k) != keep).cloned();
        match victim {
            Some(key) => {
                self.remove(&key);
                self.stats.evicted += 1;
                true
            }
            None => false,
        }
    }

    /// Evicts old partial messages (never `keep`) until `extra` more bytes
    /// fit within the byte limit.
    fn make_room(&mut self, extra: usize, keep: Option<&(K, [u8; 16])>) {
        while self.bytes + extra > self.limits.max_bytes {
            if !self.evict_oldest(keep) {
                break;
            }
        }
    }

    fn complete(&mut self, now: Time, key: (K, [u8; 16])) -> Option<Vec<u8>> {
        let p = self.remove(&key)?;
        let mut out = Vec::with_capacity(p.bytes);
        for piece in p.pieces.into_iter().flatten() {
            out.extend_from_slice(&piece);
        }
        self.remember_completed(now, key);
        self.stats.completed += 1;
        Some(out)
    }

    fn remember_completed(&mut self, now: Time, key: (K, [u8; 16])) {
        if self.completed_set.insert(key.clone()) {
            self.completed.push_back((now, key));
        }
        while self.completed.len() > self.limits.max_messages {
            if let Some((_, old)) = self.completed.pop_front() {
                self.completed_set.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn sample() -> Envelope {
        Envelope {
            kind: Kind::Text,
            id: [0xab; 16],
            seq: 7,
            timestamp: Time(1_700_000_000_123),
            client_version: "chainmail/0.1.0".into(),
            body: b"hello".to_vec(),
        }
    }

    fn limits(max_messages: usize, max_bytes: usize, secs: u64) -> ReassemblyLimits {
        ReassemblyLimits {
            max_messages,
            max_bytes,
            timeout: Duration::from_secs(secs),
        }
    }

    fn is_malformed(r: &Result<impl fmt::Debug, SessionError>) -> bool {
        matches!(r, Err(SessionError::Malformed { .. }))
    }

    fn is_too_large(r: &Result<impl fmt::Debug, SessionError>) -> bool {
        matches!(r, Err(SessionError::TooLarge { .. }))
    }

    #[test]
    fn envelope_test_vector() {
        let bytes = sample().encode().unwrap();
        assert_eq!(
            hex(&bytes),
            concat!(
                "01",                               // version
                "04",                               // kind: text
                "abababababababababababababababab", // id
                "0700000000000000",                 // seq
                "7b68e5cf8b010000",                 // timestamp
                "0f",                               // version length
                "636861696e6d61696c2f302e312e30",   // "chainmail/0.1.0"
                "05000000",                         // body length
                "68656c6c6f",                       // "hello"
            )
        );
        assert_eq!(Envelope::decode(&bytes).unwrap(), sample());
    }

    #[test]
    fn community_envelope_test_vector() {
        // The body is opaque bytes, not text: it need not be UTF-8.
        let e = Envelope {
            kind: Kind::Community,
            body: vec![0x00, 0xff, 0xfe, 0x80],
            ..sample()
        };
        let bytes = e.encode().unwrap();
        assert_eq!(
            hex(&bytes),
            concat!(
                "01",                               // version
                "07",                               // kind: community
                "abababababababababababababababab", // id
                "0700000000000000",                 // seq
                "7b68e5cf8b010000",                 // timestamp
                "0f",                               // version length
                "636861696e6d61696c2f302e312e30",   // "chainmail/0.1.0"
                "04000000",                         // body length
                "00fffe80",                         // body
            )
        );
        assert_eq!(Envelope::decode(&bytes).unwrap(), e);
    }

    #[test]
    fn every_kind_round_trips_and_unknown_kinds_fail() {
        for kind in [
            Kind::ContactRequest,
            Kind::Accept,
            Kind::Deny,
            Kind::Text,
            Kind::Receipt,
            Kind::KeyUpdate,
            Kind::Community,
        ] {
            assert_eq!(Kind::try_from(kind.to_byte()).unwrap(), kind);
            let e = Envelope { kind, ..sample() };
            assert_eq!(Envelope::decode(&e.encode().unwrap()).unwrap(), e);
        }
        for b in [0u8, 8, 0x80, 0xff] {
            assert!(is_malformed(&Kind::try_from(b)));
            let mut bytes = sample().encode().unwrap();
            bytes[1] = b;
            assert!(is_malformed(&Envelope::decode(&bytes)));
        }
    }

    #[test]
    fn envelope_limits() {
        let max = Envelope {
            client_version: "v".repeat(MAX_CLIENT_VERSION),
            body: vec![1; MAX_ENVELOPE_BODY],
            ..sample()
        };
        let bytes = max.encode().unwrap();
        assert_eq!(bytes.len(), MAX_ENVELOPE_ENCODED);
        assert_eq!(Envelope::decode(&bytes).unwrap(), max);

        let long_version = Envelope {
            client_version: "v".repeat(MAX_CLIENT_VERSION + 1),
            ..sample()
        };
        assert!(is_too_large(&long_version.encode()));
        let long_body = Envelope {
            body: vec![1; MAX_ENVELOPE_BODY + 1],
            ..sample()
        };
        assert!(is_too_large(&long_body.encode()));

        // A length field over its limit is refused before reading on.
        let mut bytes = sample().encode().unwrap();
        bytes[34] = (MAX_CLIENT_VERSION + 1) as u8;
        assert!(is_too_large(&Envelope::decode(&bytes)));
        let mut bytes = Envelope {
            client_version: String::new(),
            ..sample()
        }
        .encode()
        .unwrap();
        bytes[35..39].copy_from_slice(&(MAX_ENVELOPE_BODY as u32 + 1).to_le_bytes());
        assert!(is_too_large(&Envelope::decode(&bytes)));
        bytes[35..39].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(is_too_large(&Envelope::decode(&bytes)));
        assert!(is_too_large(&Envelope::decode(&vec![
            0;
            MAX_ENVELOPE_ENCODED
                + 1
        ])));
    }

    #[test]
    fn envelope_decoding_is_strict() {
        let bytes = sample().encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(is_malformed(&Envelope::decode(&bytes[..cut])), "cut {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        let err = Envelope::decode(&trailing).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
        let mut version = bytes.clone();
        version[0] = 2;
        let err = Envelope::decode(&version).unwrap_err();
        assert!(err.to_string().contains("unsupported version 2"), "{err}");
        let mut not_utf8 = bytes.clone();
        not_utf8[35] = 0xff;
        assert!(is_malformed(&Envelope::decode(&not_utf8)));
    }

    #[test]
    fn envelope_debug_hides_the_body() {
        let e = Envelope {
            body: b"secret words".to_vec(),
            ..sample()
        };
        let debug = format!("{e:?}");
        assert!(!debug.contains("secret") && !debug.contains("115, 101"));
        assert!(debug.contains("body_len: 12"), "{debug}");
    }

    #[test]
    fn fragment_test_vector() {
        let f = Fragment {
            message: [0x11; 16],
            index: 2,
            count: 3,
            data: b"abc".to_vec(),
        };
        let bytes = f.encode().unwrap();
        assert_eq!(
            hex(&bytes),
            "0111111111111111111111111111111111020003000300616263"
        );
        assert_eq!(bytes.len(), f.encoded_len());
        assert_eq!(Fragment::decode(&bytes).unwrap(), f);
    }

    #[test]
    fn fragment_decoding_is_strict() {
        let f = Fragment {
            message: [0x22; 16],
            index: 0,
            count: 2,
            data: vec![5; 10],
        };
        let bytes = f.encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(is_malformed(&Fragment::decode(&bytes[..cut])), "cut {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(1);
        assert!(is_malformed(&Fragment::decode(&trailing)));
        let mut version = bytes.clone();
        version[0] = 0;
        assert!(is_malformed(&Fragment::decode(&version)));
        let invalid = [
            (0u16, 0u16, 1usize),
            (2, 2, 1),
            (5, 3, 1),
            (0, MAX_FRAGMENTS as u16 + 1, 1),
            (0, u16::MAX, 1),
            (0, 2, 0),
        ];
        for (index, count, len) in invalid {
            let mut bytes = bytes.clone();
            bytes[17..19].copy_from_slice(&index.to_le_bytes());
            bytes[19..21].copy_from_slice(&count.to_le_bytes());
            bytes[21..23].copy_from_slice(&(len as u16).to_le_bytes());
            bytes.truncate(FRAGMENT_HEADER + len);
            assert!(is_malformed(&Fragment::decode(&bytes)), "{index}/{count}");
            let g = Fragment {
                index,
                count,
                data: vec![1; len],
                ..f.clone()
            };
            assert!(is_malformed(&g.encode()));
        }
        // The one valid empty fragment: a whole empty message.
        let empty = Fragment {
            index: 0,
            count: 1,
            data: vec![],
            ..f.clone()
        };
        assert_eq!(Fragment::decode(&empty.encode().unwrap()).unwrap(), empty);
        let huge = Fragment {
            index: 0,
            count: 1,
            data: vec![0; usize::from(u16::MAX) + 1],
            ..f
        };
        assert!(is_too_large(&huge.encode()));
    }

    #[test]
    fn fragments_fit_exactly() {
        let bytes: Vec<u8> = (0..2000u32).map(|i| i as u8).collect();
        let frags = fragment([1; 16], &bytes, 900).unwrap();
        assert_eq!(frags.len(), 3);
        assert_eq!(frags[0].encode().unwrap().len(), 900);
        assert_eq!(frags[1].encode().unwrap().len(), 900);
        assert_eq!(frags[2].encoded_len(), FRAGMENT_HEADER + 2000 - 2 * 877);
        assert!(frags.iter().all(|f| f.count == 3 && f.message == [1; 16]));
        assert_eq!(frags.iter().map(|f| f.index).collect::<Vec<_>>(), [0, 1, 2]);
        let joined: Vec<u8> = frags.iter().flat_map(|f| f.data.clone()).collect();
        assert_eq!(joined, bytes);

        // Exactly one fragment's worth, and one byte more.
        assert_eq!(fragment([0; 16], &bytes[..877], 900).unwrap().len(), 1);
        assert_eq!(fragment([0; 16], &bytes[..878], 900).unwrap().len(), 2);
        // Empty message.
        let empty = fragment([0; 16], &[], 900).unwrap();
        assert_eq!(empty.len(), 1);
        assert!(empty[0].data.is_empty() && empty[0].count == 1);
        // A huge maximum is capped by the u16 length field.
        let big = vec![0; 70_000];
        let frags = fragment([0; 16], &big, usize::MAX).unwrap();
        assert_eq!(frags.len(), 2);
        assert_eq!(frags[0].encoded_len(), MAX_FRAGMENT_ENCODED);
    }

    #[test]
    fn fragment_refuses_bad_sizes() {
        for max in [0, 1, FRAGMENT_HEADER] {
            let r = fragment([0; 16], b"x", max);
            assert!(matches!(r, Err(SessionError::TooSmall { .. })), "{max}");
        }
        assert_eq!(
            fragment([0; 16], b"x", FRAGMENT_HEADER + 1).unwrap().len(),
            1
        );
        let max = FRAGMENT_HEADER + 10;
        assert_eq!(
            fragment([0; 16], &[0; 1280], max).unwrap().len(),
            MAX_FRAGMENTS
        );
        let r = fragment([0; 16], &[0; 1281], max);
        assert!(is_too_large(&r));
        let err = r.unwrap_err();
        assert!(
            err.to_string().contains("1281 bytes (at most 1280)"),
            "{err}"
        );
    }

    fn reassemble_all<K: Eq + Hash + Clone>(
        r: &mut Reassembler<K>,
        now: Time,
        from: K,
        frags: Vec<Fragment>,
    ) -> Vec<Vec<u8>> {
        frags
            .into_iter()
            .filter_map(|f| r.insert(now, from.clone(), f).unwrap())
            .collect()
    }

    #[test]
    fn reassembles_in_any_order_and_ignores_duplicates() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let frags = fragment([3; 16], &bytes, 123).unwrap();
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let mut shuffled: Vec<Fragment> = frags.iter().rev().cloned().collect();
        shuffled.insert(3, frags[1].clone());
        shuffled.push(frags[0].clone());
        let out = reassemble_all(&mut r, Time(0), "alice", shuffled);
        assert_eq!(out, vec![bytes]);
        assert_eq!(r.pending(), 0);
        assert_eq!(r.buffered_bytes(), 0);
        let s = r.stats();
        assert_eq!((s.completed, s.duplicates), (1, 2));
    }

    #[test]
    fn single_fragment_messages_complete_at_once() {
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let f = fragment([4; 16], b"short", 900).unwrap().remove(0);
        assert_eq!(
            r.insert(Time(0), 1u8, f.clone()).unwrap(),
            Some(b"short".to_vec())
        );
        // Delivered again (a retransmission): ignored.
        assert_eq!(r.insert(Time(1), 1u8, f.clone()).unwrap(), None);
        // But from someone else, it is their message.
        assert_eq!(r.insert(Time(1), 2u8, f).unwrap(), Some(b"short".to_vec()));
        let empty = fragment([5; 16], &[], 900).unwrap().remove(0);
        assert_eq!(r.insert(Time(2), 1u8, empty).unwrap(), Some(vec![]));
        let s = r.stats();
        assert_eq!((s.completed, s.duplicates, r.pending()), (3, 1, 0));
    }

    #[test]
    fn senders_never_mix() {
        let a = vec![0xaa; 300];
        let b = vec![0xbb; 300];
        let fa = fragment([9; 16], &a, 100).unwrap();
        let fb = fragment([9; 16], &b, 100).unwrap();
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let mut out = Vec::new();
        for (x, y) in fa.into_iter().zip(fb) {
            out.extend(r.insert(Time(0), "a", x).unwrap().map(|m| ("a", m)));
            out.extend(r.insert(Time(0), "b", y).unwrap().map(|m| ("b", m)));
        }
        assert_eq!(out, vec![("a", a), ("b", b)]);
    }

    #[test]
    fn inconsistent_count_drops_the_partial_message() {
        let frags = fragment([6; 16], &[1; 300], 100).unwrap();
        let mut r = Reassembler::new(ReassemblyLimits::default());
        assert_eq!(r.insert(Time(0), 0, frags[0].clone()).unwrap(), None);
        assert_eq!(r.pending(), 1);
        let liar = Fragment {
            count: 5,
            ..frags[1].clone()
        };
        let err = r.insert(Time(0), 0, liar).unwrap_err();
        assert!(
            err.to_string().contains("count 5 disagrees with 4"),
            "{err}"
        );
        assert_eq!(
            (r.pending(), r.buffered_bytes(), r.stats().rejected),
            (0, 0, 1)
        );
        // Invalid fragments are refused and counted too.
        let invalid = Fragment {
            index: 9,
            ..frags[1].clone()
        };
        assert!(is_malformed(&r.insert(Time(0), 0, invalid)));
        assert_eq!(r.stats().rejected, 2);
        // The message can still arrive afterwards.
        assert_eq!(
            reassemble_all(&mut r, Time(0), 0, frags),
            vec![vec![1; 300]]
        );
    }

    #[test]
    fn oversize_messages_are_refused() {
        let mut r = Reassembler::new(limits(8, 250, 60));
        let frags = fragment([7; 16], &[2; 300], 123).unwrap();
        assert_eq!(frags.len(), 3);
        assert_eq!(r.insert(Time(0), 0, frags[0].clone()).unwrap(), None);
        assert_eq!(r.insert(Time(0), 0, frags[1].clone()).unwrap(), None);
        let err = r.insert(Time(0), 0, frags[2].clone()).unwrap_err();
        assert!(matches!(
            err,
            SessionError::TooLarge {
                actual: 300,
                max: 250,
                ..
            }
        ));
        assert_eq!((r.pending(), r.buffered_bytes()), (0, 0));
        // A single fragment larger than the limit.
        let big = fragment([8; 16], &[0; 251], 1000).unwrap().remove(0);
        assert!(is_too_large(&r.insert(Time(0), 0, big)));
        assert_eq!(r.stats().rejected, 2);
    }

    #[test]
    fn oldest_partial_message_is_evicted_when_full() {
        let mut r = Reassembler::new(limits(2, 10_000, 60));
        let m: Vec<Vec<Fragment>> = (0..3u8)
            .map(|i| fragment([i; 16], &[i; 200], 123).unwrap())
            .collect();
        for (t, frags) in m.iter().enumerate() {
            assert_eq!(r.insert(Time(t as u64), 0, frags[0].clone()).unwrap(), None);
        }
        assert_eq!((r.pending(), r.stats().evicted), (2, 1));
        // Message 0 was evicted; its rest starts a new partial message,
        // evicting message 1.
        assert_eq!(r.insert(Time(5), 0, m[0][1].clone()).unwrap(), None);
        assert_eq!(r.stats().evicted, 2);
        assert_eq!(
            r.insert(Time(5), 0, m[2][1].clone()).unwrap(),
            Some(vec![2; 200])
        );
    }

    #[test]
    fn a_flood_of_first_fragments_must_outpace_each_honest_fragment_to_evict_it() {
        // 256 slots. Between two fragments of an honest 5-fragment message,
        // a stranger starts 200 messages it never finishes: 800 in all,
        // three times the slots. Evicting by age would drop the honest
        // message; evicting by last progress drops the flood.
        let mut r = Reassembler::new(limits(256, 1 << 30, 600));
        let honest = fragment([0xaa; 16], &[7; 500], 123).unwrap();
        assert_eq!(honest.len(), 5);
        let mut flood = 0u32;
        let mut out = None;
        for (t, f) in honest.iter().enumerate() {
            out = r.insert(Time(t as u64 * 600), 1, f.clone()).unwrap();
            if out.is_some() {
                break;
            }
            for _ in 0..200 {
                flood += 1;
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&flood.to_le_bytes());
                let first = fragment(id, &[0; 400], 123).unwrap().remove(0);
                r.insert(Time(t as u64 * 600 + 1), 0, first).unwrap();
            }
        }
        assert_eq!(out, Some(vec![7; 500]), "the honest message was evicted");
        assert_eq!(r.stats().evicted, u64::from(flood) + 1 - 256);
    }

    #[test]
    fn byte_limit_evicts_older_messages() {
        let mut r = Reassembler::new(limits(100, 300, 60));
        let a = fragment([1; 16], &[1; 300], 123).unwrap(); // 100 bytes each
        let b = fragment([2; 16], &[2; 300], 123).unwrap();
        r.insert(Time(0), 0, a[0].clone()).unwrap();
        r.insert(Time(0), 0, a[1].clone()).unwrap();
        r.insert(Time(1), 0, b[0].clone()).unwrap();
        assert_eq!(r.buffered_bytes(), 300);
        // b's second piece needs room: a (older) goes.
        r.insert(Time(2), 0, b[1].clone()).unwrap();
        assert_eq!(
            (r.pending(), r.buffered_bytes(), r.stats().evicted),
            (1, 200, 1)
        );
        assert_eq!(
            r.insert(Time(3), 0, b[2].clone()).unwrap(),
            Some(vec![2; 300])
        );
    }

    #[test]
    fn partial_messages_expire() {
        let mut r = Reassembler::new(limits(8, 10_000, 10));
        let frags = fragment([1; 16], &[1; 300], 123).unwrap();
        assert_eq!(r.poll_timeout(), None);
        r.insert(Time(1_000), 0, frags[0].clone()).unwrap();
        assert_eq!(r.poll_timeout(), Some(Time(11_001)));
        assert_eq!(r.expire(Time(11_000)), 0);
        assert_eq!(r.expire(Time(11_001)), 1);
        assert_eq!(
            (r.pending(), r.buffered_bytes(), r.stats().expired),
            (0, 0, 1)
        );
        assert_eq!(r.poll_timeout(), None);
        // Insertion expires stale partial messages first.
        r.insert(Time(20_000), 0, frags[0].clone()).unwrap();
        r.insert(Time(40_000), 0, frags[1].clone()).unwrap();
        assert_eq!(r.stats().expired, 2);
        assert_eq!(r.pending(), 1);
    }

    #[test]
    fn completed_memory_is_bounded_and_expires() {
        let mut r = Reassembler::new(limits(2, 10_000, 10));
        let f = |i: u8| fragment([i; 16], &[i], 100).unwrap().remove(0);
        for i in 0..3 {
            assert!(r.insert(Time(0), 0, f(i)).unwrap().is_some());
        }
        assert_eq!(r.completed.len(), 2);
        // Message 0 is forgotten (bounded memory), 1 and 2 are remembered.
        assert!(r.insert(Time(0), 0, f(0)).unwrap().is_some());
        assert!(r.insert(Time(0), 0, f(2)).unwrap().is_none());
        // After the timeout, they are forgotten too.
        r.expire(Time(10_001));
        assert!(r.completed.is_empty() && r.completed_set.is_empty());
    }

    #[test]
    fn zero_max_messages_still_works() {
        let mut r = Reassembler::new(limits(0, 10_000, 10));
        assert_eq!(r.limits().max_messages, 1);
        let frags = fragment([1; 16], &[1; 300], 123).unwrap();
        assert_eq!(
            reassemble_all(&mut r, Time(0), 0, frags),
            vec![vec![1; 300]]
        );
    }

    fn delivery() -> impl Strategy<Value = (Vec<u8>, usize, Vec<usize>)> {
        (
            proptest::collection::vec(any::<u8>(), 0..3000),
            (FRAGMENT_HEADER + 24)..1200,
        )
            .prop_flat_map(|(bytes, max)| {
                let n = bytes.len().div_ceil(max - FRAGMENT_HEADER).max(1);
                let order = (0..n).collect::<Vec<_>>();
                let dups = proptest::collection::vec(0..n, 0..n + 2);
                (Just(bytes), Just(max), Just(order).prop_shuffle(), dups).prop_map(
                    |(b, m, mut order, dups)| {
                        for (i, d) in dups.into_iter().enumerate() {
                            let at = (i * 7919) % (order.len() + 1);
                            order.insert(at, d);
                        }
                        (b, m, order)
                    },
                )
            })
    }

    proptest! {
        #[test]
        fn any_fragmentation_and_delivery_reassembles_exactly_once(
            (bytes, max, order) in delivery(),
            id in any::<[u8; 16]>(),
        ) {
            let frags = fragment(id, &bytes, max).unwrap();
            prop_assert!(frags.iter().all(|f| f.encoded_len() <= max));
            let mut r = Reassembler::new(ReassemblyLimits::default());
            let mut out = Vec::new();
            for i in order {
                let wire = frags[i].encode().unwrap();
                let f = Fragment::decode(&wire).unwrap();
                if let Some(m) = r.insert(Time(0), (), f).unwrap() {
                    out.push(m);
                }
            }
            prop_assert_eq!(out, vec![bytes]);
            prop_assert_eq!(r.pending(), 0);
            prop_assert_eq!(r.buffered_bytes(), 0);
        }

        #[test]
        fn bounds_hold_under_any_input(
            inputs in proptest::collection::vec(
                (0u8..4, 0u8..6, 0u16..6, 1u16..6, 0usize..200, 0u64..30_000),
                0..200,
            ),
            max_messages in 1usize..5,
            max_bytes in 1usize..800,
        ) {
            let mut r = Reassembler::new(limits(max_messages, max_bytes, 10));
            let mut now = 0;
            for (from, id, index, count, len, dt) in inputs {
                now += dt;
                let f = Fragment { message: [id; 16], index, count, data: vec![id; len] };
                let _ = r.insert(Time(now), from, f);
                prop_assert!(r.pending() <= max_messages);
                prop_assert!(r.buffered_bytes() <= max_bytes);
                prop_assert!(r.completed.len() <= max_messages);
                prop_assert_eq!(r.completed.len(), r.completed_set.len());
                prop_assert_eq!(r.order.len(), r.pending());
                let held: usize = r.partial.values().map(|p| p.bytes).sum();
                prop_assert_eq!(held, r.buffered_bytes());
            }
        }

        #[test]
        fn envelope_round_trips(
            kind in 1u8..=7,
            id in any::<[u8; 16]>(),
            seq in any::<u64>(),
            ts in any::<u64>(),
            client_version in "\\PC{0,8}",
            body in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            let e = Envelope {
                kind: Kind::try_from(kind).unwrap(),
                id, seq, timestamp: Time(ts), client_version, body,
            };
            let bytes = e.encode().unwrap();
            prop_assert_eq!(Envelope::decode(&bytes).unwrap(), e);
        }

        #[test]
        fn envelope_decode_never_panics_and_round_trips(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            if let Ok(e) = Envelope::decode(&bytes) {
                prop_assert_eq!(e.encode().unwrap(), bytes);
            }
        }

        #[test]
        fn envelope_decode_of_mutated_encodings(
            body in proptest::collection::vec(any::<u8>(), 0..100),
            at in any::<prop::sample::Index>(),
            value in any::<u8>(),
        ) {
            let mut bytes = Envelope { body, ..sample() }.encode().unwrap();
            let i = at.index(bytes.len());
            bytes[i] = value;
            if let Ok(e) = Envelope::decode(&bytes) {
                prop_assert_eq!(e.encode().unwrap(), bytes);
            }
        }

        #[test]
        fn fragment_decode_never_panics_and_round_trips(
            bytes in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            if let Ok(f) = Fragment::decode(&bytes) {
                prop_assert_eq!(f.encode().unwrap(), bytes);
            }
        }

        #[test]
        fn fragment_decode_of_mutated_encodings(
            len in 0usize..50,
            at in any::<prop::sample::Index>(),
            value in any::<u8>(),
        ) {
            let f = Fragment { message: [1; 16], index: 0, count: 1, data: vec![7; len] };
            let mut bytes = f.encode().unwrap();
            let i = at.index(bytes.len());
            bytes[i] = value;
            if let Ok(g) = Fragment::decode(&bytes) {
                prop_assert_eq!(g.encode().unwrap(), bytes);
            }
        }
    }
}
