//! Replay detection: a growing Bloom filter of replay tags per live mix
//! key.
//!
//! Replay tags are outputs of the per-hop key derivation, so nobody but the
//! node can choose or predict them: they are already uniformly random, and
//! the filter indexes them directly (double hashing over the tag's halves).
//!
//! A false positive drops an honest packet, and a Bloom filter filled past
//! what it was sized for makes them common (a filter sized for 4 million
//! tags takes 36 million in an hour at 10,000 packets/s, and then drops
//! nearly every honest packet as a "replay"). So the filter is a scalable
//! Bloom filter (Almeida et al., 2007): it starts with a small slice, and
//! when a slice holds what it was sized for, a slice twice as large with
//! half the false-positive rate is added. The rate over all slices stays
//! below [`FALSE_POSITIVE_BOUND`] however many tags come, and memory
//! follows the traffic a key actually sees (about 5 bytes per tag).
//!
//! The filter is sized for the most a key can see (the node's packet rate
//! limit times the key's lifetime). It grows to [`HEADROOM`] times that
//! and then refuses new tags ([`Recorded::Full`]): the node drops the
//! packet rather than let the filter grow without bound or accept a packet
//! it cannot check.

use chainmail_packet::ReplayTag;

/// The false-positive rate the whole filter stays under.
pub const FALSE_POSITIVE_BOUND: f64 = 1e-6;
/// Tags the first slice holds (about 150 KiB).
pub const FIRST_SLICE: u64 = 32_768;
/// How far past its sizing the filter grows before refusing tags.
pub const HEADROOM: u64 = 4;

/// What [`ReplayFilter::insert`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// A new tag, now recorded.
    Fresh,
    /// (Probably) seen before: the packet is a replay.
    Seen,
    /// The filter holds all it may: the packet cannot be checked.
    Full,
}

/// One fixed-size Bloom filter.
#[derive(Clone)]
struct Slice {
    bits: Vec<u64>,
    /// Bits set, kept as they are set (the fill gives the rate).
    set: u64,
    hashes: u32,
    len: u64,
    capacity: u64,
}

/// Where `tag` goes in a slice of `words` words with `hashes` hash
/// functions: (word, mask) pairs, by double hashing over the tag's halves.
fn positions(words: usize, hashes: u32, tag: &ReplayTag) -> impl Iterator<Item = (usize, u64)> {
    let m = (words * 64) as u64;
    let h1 = u64::from_le_bytes(tag.0[..8].try_into().unwrap_or([0; 8]));
    let h2 = u64::from_le_bytes(tag.0[8..].try_into().unwrap_or([0; 8])) | 1;
    (0..u64::from(hashes)).map(move |i| {
        let bit = h1.wrapping_add(i.wrapping_mul(h2)) % m;
        ((bit / 64) as usize, 1u64 << (bit % 64))
    })
}

impl Slice {
    /// A slice for `capacity` tags at false-positive rate `p`.
    fn new(capacity: u64, p: f64) -> Self {
        let ln2 = std::f64::consts::LN_2;
        // m = -n ln p / (ln 2)^2; k = -log2 p.
        let bits = (capacity as f64 * -p.ln() / (ln2 * ln2)).ceil() as u64;
        Slice {
            bits: vec![0; bits.div_ceil(64).max(1) as usize],
            set: 0,
            hashes: (-p.log2()).ceil().max(1.0) as u32,
            len: 0,
            capacity,
        }
    }

    fn contains(&self, tag: &ReplayTag) -> bool {
        positions(self.bits.len(), self.hashes, tag).all(|(word, mask)| self.bits[word] & mask != 0)
    }

    fn insert(&mut self, tag: &ReplayTag) {
        for (word, mask) in positions(self.bits.len(), self.hashes, tag) {
            if self.bits[word] & mask == 0 {
                self.bits[word] |= mask;
                self.set += 1;
            }
        }
        self.len += 1;
    }

    /// The chance that a fresh tag looks recorded: (bits set / bits)^k.
    fn false_positive_rate(&self) -> f64 {
        let fill = self.set as f64 / (self.bits.len() * 64) as f64;
        fill.powi(self.hashes as i32)
    }
}

/// A growing Bloom filter of replay tags.
#[derive(Clone)]
pub struct ReplayFilter {
    slices: Vec<Slice>,
    len: u64,
    capacity: u64,
}

impl ReplayFilter {
    /// A filter sized for `capacity` tags (the most its key should see);
    /// it holds up to [`HEADROOM`] times that.
    pub fn with_capacity(capacity: u64) -> Self {
        let capacity = capacity.max(1024);
        let mut filter = ReplayFilter {
            slices: Vec::new(),
            len: 0,
            capacity,
        };
        filter.grow();
        filter
    }

    /// Adds a slice: twice the last one's size at half its rate, so the
    /// rates of all slices sum to at most the bound.
    fn grow(&mut self) {
        let (size, p) = match self.slices.last() {
            None => (FIRST_SLICE.min(self.capacity), FALSE_POSITIVE_BOUND / 2.0),
            Some(last) => {
                let rate = FALSE_POSITIVE_BOUND / 2f64.powi(self.slices.len() as i32 + 1);
                (last.capacity.saturating_mul(2), rate)
            }
        };
        self.slices.push(Slice::new(size, p));
    }

    /// Records `tag`, unless it was (probably) seen before or the filter
    /// is full.
    pub fn insert(&mut self, tag: &ReplayTag) -> Recorded {
        if self.slices.iter().any(|s| s.contains(tag)) {
            return Recorded::Seen;
        }
        if self.len >= self.capacity.saturating_mul(HEADROOM) {
            return Recorded::Full;
        }
        if self.slices.last().is_none_or(|s| s.len >= s.capacity) {
            self.grow();
        }
        if let Some(slice) = self.slices.last_mut() {
            slice.insert(tag);
        }
        self.len += 1;
        Recorded::Fresh
    }

    /// Tags recorded.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether more tags were recorded than the filter was sized for (the
    /// key saw more than the node's rate limit allows).
    pub fn is_over_capacity(&self) -> bool {
        self.len > self.capacity
    }

    /// Memory held, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.slices.iter().map(|s| s.bits.len() as u64 * 8).sum()
    }

    /// The chance that a fresh tag is taken for a replay now, estimated
    /// from how full each slice is.
    pub fn false_positive_rate(&self) -> f64 {
        1.0 - self
            .slices
            .iter()
            .map(|s| 1.0 - s.false_positive_rate())
            .product::<f64>()
    }
}

impl std::fmt::Debug for ReplayFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayFilter")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("slices", &self.slices.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn tags(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<ReplayTag> {
        (0..n)
            .map(|_| {
                let mut t = [0u8; 16];
                rng.fill_bytes(&mut t);
                ReplayTag(t)
            })
            .collect()
    }

    #[test]
    fn replays_are_caught_and_fresh_tags_pass() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut filter = ReplayFilter::with_capacity(20_000);
        let tags = tags(&mut rng, 20_000);
        let false_positives = tags
            .iter()
            .filter(|t| filter.insert(t) != Recorded::Fresh)
            .count();
        assert!(false_positives <= 1, "{false_positives}");
        assert!(
            tags.iter().all(|t| filter.insert(t) == Recorded::Seen),
            "every replay is caught"
        );
        assert!(!filter.is_over_capacity());
    }

    #[test]
    fn past_its_first_slice_the_filter_grows_and_keeps_its_rate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let mut filter = ReplayFilter::with_capacity(100_000);
        let small = filter.memory_bytes();
        // Four times the sizing: what the old fixed filter turned into a
        // "replay" for most honest packets.
        let recorded = tags(&mut rng, 400_000);
        let refused = recorded
            .iter()
            .filter(|t| filter.insert(t) != Recorded::Fresh)
            .count();
        assert!(refused <= 2, "{refused} of 400,000 fresh tags refused");
        assert_eq!(filter.len(), 400_000 - refused as u64);
        assert!(filter.is_over_capacity());
        assert!(filter.memory_bytes() > 10 * small);
        // Measured: a million tags never seen.
        let fresh = tags(&mut rng, 1_000_000);
        let mut probe = filter.clone();
        let false_positives = fresh
            .iter()
            .filter(|t| probe.insert(t) == Recorded::Seen)
            .count();
        eprintln!(
            "{} tags in {} bytes; {false_positives} false positives in a million fresh tags; estimated rate {:e}",
            filter.len(),
            filter.memory_bytes(),
            filter.false_positive_rate()
        );
        assert!(false_positives <= 3, "{false_positives} in a million");
        let estimate = filter.false_positive_rate();
        assert!(estimate < FALSE_POSITIVE_BOUND, "{estimate}");
        // About 5 bytes per tag.
        let per_tag = filter.memory_bytes() as f64 / filter.len() as f64;
        assert!(per_tag < 8.0, "{per_tag} bytes per tag");
    }

    #[test]
    fn a_full_filter_refuses_new_tags_and_still_catches_replays() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut filter = ReplayFilter::with_capacity(1024);
        let recorded = tags(&mut rng, 4096);
        for t in &recorded {
            filter.insert(t);
        }
        assert_eq!(filter.insert(&tags(&mut rng, 1)[0]), Recorded::Full);
        assert_eq!(filter.insert(&recorded[17]), Recorded::Seen);
    }
}
