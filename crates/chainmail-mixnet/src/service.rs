//! Errands: DHT lookups and publications that a client has a provider
//! carry out for it, so that no DHT node and no record's publisher field
//! ever names the client's node.
//!
//! The client picks a provider at random (the *exit*, never one of its own
//! providers when another exists) and sends it the errand through the
//! mixnet like any packet: its provider, one mix per layer, the exit. The
//! packets are addressed to [`SERVICE_MAILBOX`], so the exit knows they are
//! for itself. The errand carries SURBs whose route starts at the exit and
//! ends in one of the client's mailboxes; the exit answers through them.
//!
//! What each party learns: the exit sees the DHT key and value (a blinded
//! key and a sealed record: nothing without the account's address) and
//! nothing about who asked; the client's provider sees a packet like any
//! other; DHT nodes see the exit. An exit can refuse or lie; records are
//! signed and sealed, so a lie is a lost answer, and the client asks again
//! through another exit.
//!
//! An errand or an answer longer than one packet is cut into fragments of
//! [`FRAGMENT_DATA`] bytes; every bound (fragments, SURBs, key and value
//! length, errands waiting at an exit) is checked before anything is kept.

use std::collections::HashMap;
use std::time::Duration;

use chainmail_packet::{MESSAGE_SIZE, MailboxId, SURB_SIZE, Surb};
use serde::{Deserialize, Serialize};

use crate::{MixnetError, Time};

/// Packets for the provider itself (an errand) are delivered to this
/// mailbox id, which no key can own.
pub const SERVICE_MAILBOX: MailboxId = MailboxId([0xff; 32]);

/// Identifier of an errand, chosen at random by the client.
pub type ErrandId = [u8; 16];

/// Longest DHT key an errand may name.
pub const MAX_KEY: usize = 64;
/// Longest value an errand may publish or an answer may carry.
pub const MAX_VALUE: usize = 12 * 1024;
/// Most SURBs one errand may carry for its answer.
pub const MAX_ANSWER_SURBS: usize = 9;
/// Most fragments of one errand or answer.
pub const MAX_FRAGMENTS: usize = 16;

const KIND_ERRAND: u8 = 0x10;
const KIND_ANSWER: u8 = 0x11;
const FRAGMENT_HEADER: usize = 1 + 16 + 1 + 1 + 2;
/// Bytes of an errand or answer one packet carries.
pub const FRAGMENT_DATA: usize = MESSAGE_SIZE - FRAGMENT_HEADER;

/// What the client asks the exit to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Errand {
    /// Look up the record stored under `key`.
    Get {
        /// The DHT key.
        key: Vec<u8>,
    },
    /// Store `value` under `key`.
    Put {
        /// The DHT key.
        key: Vec<u8>,
        /// The record.
        value: Vec<u8>,
    },
}

impl Errand {
    pub(crate) fn check(&self) -> Result<(), MixnetError> {
        let (key, value) = match self {
            Errand::Get { key } => (key, None),
            Errand::Put { key, value } => (key, Some(value)),
        };
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(MixnetError::Decoding("errand (key length)"));
        }
        if value.is_some_and(|v| v.len() > MAX_VALUE) {
            return Err(MixnetError::Decoding("errand (value length)"));
        }
        Ok(())
    }

    /// How many SURBs the answer needs at first: a lookup room for a
    /// typical record (the exit says if the record is larger, and the
    /// client asks again with room enough), a publication one.
    pub(crate) fn answer_surbs(&self) -> usize {
        match self {
            Errand::Get { .. } => 2,
            Errand::Put { .. } => 1,
        }
    }
}

/// The exit's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// The record found under the key.
    Found(Vec<u8>),
    /// No record under the key.
    NotFound,
    /// The record was stored.
    Stored,
    /// The record could not be stored (no DHT node took it).
    NotStored,
    /// The record is larger than the SURBs sent can carry: ask again with
    /// room for `size` bytes.
    TooLarge {
        /// Bytes of the encoded answer.
        size: u32,
    },
}

/// SURBs the answer of `size` encoded bytes needs.
pub(crate) fn surbs_for(size: usize) -> usize {
    size.div_ceil(FRAGMENT_DATA).max(1)
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    surbs: Vec<Vec<u8>>,
    errand: Errand,
}

/// Encodes an errand with its answer SURBs into packet messages.
pub(crate) fn encode_errand(
    id: &ErrandId,
    errand: &Errand,
    surbs: &[Surb],
) -> Result<Vec<[u8; MESSAGE_SIZE]>, MixnetError> {
    errand.check()?;
    if surbs.is_empty() || surbs.len() > MAX_ANSWER_SURBS {
        return Err(MixnetError::Encoding("errand (SURB count)"));
    }
    let envelope = Envelope {
        surbs: surbs.iter().map(|s| s.to_bytes().to_vec()).collect(),
        errand: errand.clone(),
    };
    let bytes = postcard::to_stdvec(&envelope).map_err(|_| MixnetError::Encoding("errand"))?;
    fragments(KIND_ERRAND, id, &bytes)
}

/// Encodes an answer into SURB reply messages, one per fragment.
pub(crate) fn encode_answer(
    id: &ErrandId,
    answer: &Answer,
) -> Result<Vec<[u8; MESSAGE_SIZE]>, MixnetError> {
    let bytes = postcard::to_stdvec(answer).map_err(|_| MixnetError::Encoding("answer"))?;
    fragments(KIND_ANSWER, id, &bytes)
}

/// Encoded size of an answer.
pub(crate) fn answer_size(answer: &Answer) -> usize {
    postcard::to_stdvec(answer).map_or(usize::MAX, |b| b.len())
}

fn fragments(
    kind: u8,
    id: &ErrandId,
    bytes: &[u8],
) -> Result<Vec<[u8; MESSAGE_SIZE]>, MixnetError> {
    let count = bytes.len().div_ceil(FRAGMENT_DATA).max(1);
    if count > MAX_FRAGMENTS {
        return Err(MixnetError::Encoding("errand (too many fragments)"));
    }
    let mut out = Vec::with_capacity(count);
    for index in 0..count {
        let start = index * FRAGMENT_DATA;
        let chunk = &bytes[start.min(bytes.len())..(start + FRAGMENT_DATA).min(bytes.len())];
        let mut m = [0u8; MESSAGE_SIZE];
        m[0] = kind;
        m[1..17].copy_from_slice(id);
        m[17] = index as u8;
        m[18] = count as u8;
        m[19..21].copy_from_slice(&(chunk.len() as u16).to_be_bytes());
        m[FRAGMENT_HEADER..FRAGMENT_HEADER + chunk.len()].copy_from_slice(chunk);
        out.push(m);
    }
    Ok(out)
}

struct Fragment<'a> {
    id: ErrandId,
    index: usize,
    count: usize,
    data: &'a [u8],
}

fn decode_fragment(kind: u8, m: &[u8]) -> Result<Fragment<'_>, MixnetError> {
    if m.len() < FRAGMENT_HEADER || m[0] != kind {
        return Err(MixnetError::Decoding("errand fragment (kind)"));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&m[1..17]);
    let index = usize::from(m[17]);
    let count = usize::from(m[18]);
    let len = usize::from(u16::from_be_bytes([m[19], m[20]]));
    if count == 0 || count > MAX_FRAGMENTS || index >= count || len > FRAGMENT_DATA {
        return Err(MixnetError::Decoding("errand fragment (header)"));
    }
    let data = m
        .get(FRAGMENT_HEADER..FRAGMENT_HEADER + len)
        .ok_or(MixnetError::Decoding("errand fragment (length)"))?;
    Ok(Fragment {
        id,
        index,
        count,
        data,
    })
}

struct Partial {
    parts: Vec<Option<Vec<u8>>>,
    started: Time,
}

/// Puts fragments back together; bounded in the number of errands in
/// flight and in how long an incomplete one is kept.
pub(crate) struct Reassembly {
    kind: u8,
    partial: HashMap<ErrandId, Partial>,
    max: usize,
    keep: Duration,
}

/// What a fragment did.
pub(crate) enum Assembled {
    /// Every fragment is here: the whole.
    Complete(ErrandId, Vec<u8>),
    /// Kept; more to come.
    Incomplete,
    /// Too many errands in flight: dropped.
    Full,
}

impl Reassembly {
    fn new(kind: u8, max: usize, keep: Duration) -> Self {
        Reassembly {
            kind,
            partial: HashMap::new(),
            max,
            keep,
        }
    }

    /// For errands arriving at an exit.
    pub(crate) fn errands(max: usize) -> Self {
        Self::new(KIND_ERRAND, max, Duration::from_secs(120))
    }

    /// For answers arriving at a client.
    pub(crate) fn answers(max: usize) -> Self {
        Self::new(KIND_ANSWER, max, Duration::from_secs(300))
    }

    pub(crate) fn add(&mut self, now: Time, message: &[u8]) -> Result<Assembled, MixnetError> {
        let f = decode_fragment(self.kind, message)?;
        if f.count == 1 {
            return Ok(Assembled::Complete(f.id, f.data.to_vec()));
        }
        if !self.partial.contains_key(&f.id) {
            self.expire(now);
            if self.partial.len() >= self.max {
                return Ok(Assembled::Full);
            }
        }
        let p = self.partial.entry(f.id).or_insert_with(|| Partial {
            parts: vec![None; f.count],
            started: now,
        });
        if p.parts.len() != f.count {
            return Err(MixnetError::Decoding("errand fragment (count changed)"));
        }
        p.parts[f.index] = Some(f.data.to_vec());
        if p.parts.iter().any(Option::is_none) {
            return Ok(Assembled::Incomplete);
        }
        let whole = self
            .partial
            .remove(&f.id)
            .map(|p| p.parts.into_iter().flatten().flatten().collect())
            .unwrap_or_default();
        Ok(Assembled::Complete(f.id, whole))
    }

    /// Forgets errands whose fragments stopped coming.
    pub(crate) fn expire(&mut self, now: Time) {
        let keep = self.keep;
        self.partial
            .retain(|_, p| now.saturating_since(p.started) < keep);
    }

    /// Forgets one errand.
    pub(crate) fn forget(&mut self, id: &ErrandId) {
        self.partial.remove(id);
    }
}

/// Decodes a reassembled errand: the errand and its answer SURBs.
pub(crate) fn decode_errand(bytes: &[u8]) -> Result<(Errand, Vec<Surb>), MixnetError> {
    let envelope: Envelope =
        postcard::from_bytes(bytes).map_err(|_| MixnetError::Decoding("errand"))?;
    envelope.errand.check()?;
    if envelope.surbs.is_empty() || envelope.surbs.len() > MAX_ANSWER_SURBS {
        return Err(MixnetError::Decoding("errand (SURB count)"));
    }
    let surbs = envelope
        .surbs
        .iter()
        .map(|s| {
            if s.len() != SURB_SIZE {
                return Err(MixnetError::Decoding("errand (SURB)"));
            }
            Surb::from_bytes(s).map_err(MixnetError::from)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((envelope.errand, surbs))
}

/// Decodes a reassembled answer.
pub(crate) fn decode_answer(bytes: &[u8]) -> Result<Answer, MixnetError> {
    let answer: Answer =
        postcard::from_bytes(bytes).map_err(|_| MixnetError::Decoding("errand answer"))?;
    if let Answer::Found(v) = &answer
        && v.len() > MAX_VALUE
    {
        return Err(MixnetError::Decoding("errand answer (value length)"));
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainmail_packet::{Epoch, Hop, HopKey, MixSecretKey, NodeId, build_surb};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn surb(rng: &mut StdRng) -> Surb {
        let key = MixSecretKey::generate(rng, Epoch(1));
        let public = HopKey::new(key.public()).unwrap();
        let route = [Hop {
            node: NodeId([1; 32]),
            key: &public,
            delay_ms: 0,
        }];
        build_surb(rng, Epoch(1), &route, MailboxId([2; 32]))
            .unwrap()
            .0
    }

    #[test]
    fn errands_round_trip_in_any_fragment_order() {
        let mut rng = StdRng::seed_from_u64(1);
        let surbs: Vec<Surb> = (0..3).map(|_| surb(&mut rng)).collect();
        let errand = Errand::Put {
            key: vec![7; 32],
            value: (0..5000).map(|i| i as u8).collect(),
        };
        let parts = encode_errand(&[9; 16], &errand, &surbs).unwrap();
        assert!(parts.len() > 3);
        let mut r = Reassembly::errands(4);
        let mut done = None;
        for p in parts.iter().rev() {
            match r.add(Time(0), &p[..]).unwrap() {
                Assembled::Complete(id, bytes) => done = Some((id, bytes)),
                Assembled::Incomplete => {}
                Assembled::Full => panic!("full"),
            }
        }
        let (id, bytes) = done.unwrap();
        assert_eq!(id, [9; 16]);
        let (back, back_surbs) = decode_errand(&bytes).unwrap();
        assert_eq!(back, errand);
        assert_eq!(back_surbs.len(), 3);
        assert_eq!(back_surbs[0].to_bytes(), surbs[0].to_bytes());
    }

    #[test]
    fn answers_round_trip_and_report_their_size() {
        let answer = Answer::Found(vec![3; 4000]);
        let parts = encode_answer(&[1; 16], &answer).unwrap();
        assert_eq!(parts.len(), surbs_for(answer_size(&answer)));
        let mut r = Reassembly::answers(4);
        let mut whole = None;
        for p in &parts {
            if let Assembled::Complete(_, b) = r.add(Time(0), &p[..]).unwrap() {
                whole = Some(b);
            }
        }
        assert_eq!(decode_answer(&whole.unwrap()).unwrap(), answer);
    }

    #[test]
    fn bounds_are_checked() {
        let mut rng = StdRng::seed_from_u64(2);
        let s = surb(&mut rng);
        let long_key = Errand::Get { key: vec![0; 65] };
        assert!(encode_errand(&[0; 16], &long_key, std::slice::from_ref(&s)).is_err());
        let big = Errand::Put {
            key: vec![0; 32],
            value: vec![0; MAX_VALUE + 1],
        };
        assert!(encode_errand(&[0; 16], &big, std::slice::from_ref(&s)).is_err());
        let get = Errand::Get { key: vec![0; 32] };
        assert!(encode_errand(&[0; 16], &get, &[]).is_err());
        // A fragment that lies about its header, or the wrong kind.
        let mut m = encode_answer(&[0; 16], &Answer::NotFound).unwrap()[0];
        assert!(Reassembly::errands(4).add(Time(0), &m[..]).is_err());
        m[18] = 0;
        assert!(Reassembly::answers(4).add(Time(0), &m[..]).is_err());
        m[18] = 2;
        m[17] = 2;
        assert!(Reassembly::answers(4).add(Time(0), &m[..]).is_err());
    }

    #[test]
    fn reassembly_is_bounded_and_forgets() {
        let big = Answer::Found(vec![1; 3000]);
        let mut r = Reassembly::answers(2);
        for i in 0..2u8 {
            let parts = encode_answer(&[i; 16], &big).unwrap();
            assert!(matches!(
                r.add(Time(0), &parts[0][..]).unwrap(),
                Assembled::Incomplete
            ));
        }
        let parts = encode_answer(&[5; 16], &big).unwrap();
        assert!(matches!(
            r.add(Time(0), &parts[0][..]).unwrap(),
            Assembled::Full
        ));
        // Later, the stale ones are gone and there is room again.
        assert!(matches!(
            r.add(Time(400_000), &parts[0][..]).unwrap(),
            Assembled::Incomplete
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut r = Reassembly::errands(8);
        for _ in 0..2000 {
            let mut m = [0u8; MESSAGE_SIZE];
            rand::Rng::fill_bytes(&mut rng, &mut m);
            m[0] = KIND_ERRAND;
            m[18] = (m[18] % 3) + 1;
            m[17] %= m[18];
            if let Ok(Assembled::Complete(_, bytes)) = r.add(Time(0), &m) {
                let _ = decode_errand(&bytes);
            }
            let _ = decode_answer(&m);
        }
    }
}
