//! Replay detection: a Bloom filter of replay tags per live mix key.
//!
//! Replay tags are outputs of the per-hop key derivation, so nobody but the
//! node can choose or predict them: they are already uniformly random, and
//! the filter indexes them directly (double hashing over the tag's halves).
//! A false positive drops an honest packet; at the configured capacity the
//! rate is 10⁻⁶, and it grows slowly beyond it (counted in the metrics).

use chainmail_packet::ReplayTag;

/// A fixed-size Bloom filter of replay tags.
#[derive(Clone)]
pub struct ReplayFilter {
    bits: Vec<u64>,
    hashes: u32,
    len: u64,
    capacity: u64,
}

impl ReplayFilter {
    /// A filter for `capacity` tags at a false-positive rate of about 10⁻⁶
    /// (about 3.6 bytes per tag of capacity).
    pub fn with_capacity(capacity: u64) -> Self {
        let capacity = capacity.max(1024);
        // m = -n ln p / (ln 2)^2 with p = 1e-6; k = (m / n) ln 2.
        let bits = (capacity as f64 * 28.76).ceil() as u64;
        let words = bits.div_ceil(64) as usize;
        ReplayFilter {
            bits: vec![0; words],
            hashes: 20,
            len: 0,
            capacity,
        }
    }

    /// Records `tag`. Returns `false` if it was (probably) seen before: the
    /// packet is a replay and must be dropped.
    pub fn insert(&mut self, tag: &ReplayTag) -> bool {
        let m = (self.bits.len() * 64) as u64;
        let h1 = u64::from_le_bytes(tag.0[..8].try_into().unwrap_or([0; 8]));
        let h2 = u64::from_le_bytes(tag.0[8..].try_into().unwrap_or([0; 8])) | 1;
        let mut fresh = false;
        for i in 0..u64::from(self.hashes) {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) % m;
            let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
            if self.bits[word] & mask == 0 {
                fresh = true;
                self.bits[word] |= mask;
            }
        }
        if fresh {
            self.len += 1;
        }
        fresh
    }

    /// Tags recorded.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether more tags were recorded than the filter was sized for.
    pub fn is_over_capacity(&self) -> bool {
        self.len > self.capacity
    }
}

impl std::fmt::Debug for ReplayFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayFilter")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn replays_are_caught_and_fresh_tags_pass() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut filter = ReplayFilter::with_capacity(20_000);
        let tags: Vec<ReplayTag> = (0..20_000)
            .map(|_| {
                let mut t = [0u8; 16];
                rng.fill_bytes(&mut t);
                ReplayTag(t)
            })
            .collect();
        let false_positives = tags.iter().filter(|t| !filter.insert(t)).count();
        assert!(false_positives <= 1, "{false_positives}");
        assert!(
            tags.iter().all(|t| !filter.insert(t)),
            "every replay is caught"
        );
        assert!(!filter.is_over_capacity());
    }
}
