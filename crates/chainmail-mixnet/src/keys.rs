//! A node's mix keys across epochs: generated ahead, retired after a grace
//! period.

use std::collections::BTreeMap;

use chainmail_packet::{Epoch, MixPublicKey, MixSecretKey};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::{Params, Time};

/// The mix keys a node holds, by epoch.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: BTreeMap<Epoch, MixSecretKey>,
}

/// What [`KeyRing::rotate`] changed: new keys to persist, old ones to delete.
#[derive(Debug, Default)]
pub struct Rotation {
    /// Keys generated, with their secret bytes for storage.
    pub generated: Vec<(Epoch, Zeroizing<[u8; 32]>)>,
    /// Epochs whose keys were retired (their replay state can go too).
    pub retired: Vec<Epoch>,
}

impl KeyRing {
    /// An empty ring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key loaded from storage.
    pub fn insert(&mut self, key: MixSecretKey) {
        self.keys.insert(key.epoch(), key);
    }

    /// Makes sure the keys of the current and the next epoch exist, and
    /// retires keys whose epoch ended more than the grace period ago.
    pub fn rotate<R: CryptoRng + ?Sized>(
        &mut self,
        now: Time,
        params: &Params,
        rng: &mut R,
    ) -> Rotation {
        let current = params.epoch_at(now);
        let mut rotation = Rotation::default();
        for epoch in [current, Epoch(current.0.saturating_add(1))] {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.keys.entry(epoch) {
                let key = MixSecretKey::generate(rng, epoch);
                rotation.generated.push((epoch, key.to_bytes()));
                slot.insert(key);
            }
        }
        let live = |epoch: Epoch| {
            let end = params.epoch_start(Epoch(epoch.0.saturating_add(1)));
            now < end + params.key_grace
        };
        rotation.retired = self.keys.keys().copied().filter(|e| !live(*e)).collect();
        for epoch in &rotation.retired {
            self.keys.remove(epoch);
        }
        rotation
    }

    /// The key of `epoch`, if live.
    pub fn get(&self, epoch: Epoch) -> Option<&MixSecretKey> {
        self.keys.get(&epoch)
    }

    /// The public keys to publish: every live key (at most three: the
    /// previous one during its grace period, the current and the next).
    pub fn published(&self) -> Vec<(Epoch, MixPublicKey)> {
        let all: Vec<_> = self
            .keys
            .values()
            .map(|k| (k.epoch(), k.public()))
            .collect();
        all[all.len().saturating_sub(crate::descriptor::MAX_MIX_KEYS)..].to_vec()
    }

    /// Live epochs, ascending.
    pub fn epochs(&self) -> Vec<Epoch> {
        self.keys.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::time::Duration;

    #[test]
    fn keys_rotate_with_overlap() {
        let params = Params {
            epoch_length: Duration::from_secs(60),
            key_grace: Duration::from_secs(10),
            ..Params::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut ring = KeyRing::new();
        let r = ring.rotate(Time(60_000 * 5 + 1), &params, &mut rng);
        assert_eq!(
            r.generated.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
            vec![Epoch(5), Epoch(6)]
        );
        assert!(r.retired.is_empty());
        // Into epoch 6, inside the grace period: 5 still live, 7 generated.
        let r = ring.rotate(Time(60_000 * 6 + 5_000), &params, &mut rng);
        assert_eq!(
            r.generated.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
            vec![Epoch(7)]
        );
        assert!(ring.get(Epoch(5)).is_some());
        assert_eq!(ring.published().len(), 3);
        // After the grace period: 5 retired.
        let r = ring.rotate(Time(60_000 * 6 + 10_000), &params, &mut rng);
        assert_eq!(r.retired, vec![Epoch(5)]);
        assert!(ring.get(Epoch(5)).is_none());
        assert_eq!(ring.epochs(), vec![Epoch(6), Epoch(7)]);
    }
}
