//! Mix keys: the node's secret key for an epoch, and the sender's view of a
//! hop's public key.

use std::fmt;
use std::sync::Arc;

use curve25519_dalek::EdwardsPoint;
use curve25519_dalek::edwards::EdwardsBasepointTable;
use curve25519_dalek::traits::BasepointTable;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::crypto;
use crate::{Epoch, PacketError};

/// An X25519 mix public key, as published in a node descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MixPublicKey(pub [u8; 32]);

impl fmt::Debug for MixPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MixPublicKey({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// A node's X25519 mix secret key for one epoch.
pub struct MixSecretKey {
    epoch: Epoch,
    secret: Zeroizing<[u8; 32]>,
    public: MixPublicKey,
}

impl MixSecretKey {
    /// Generates a fresh key for `epoch`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R, epoch: Epoch) -> Self {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut secret[..]);
        Self::from_bytes(epoch, *secret)
    }

    /// Loads a key from its 32 secret bytes (as stored by the node).
    pub fn from_bytes(epoch: Epoch, secret: [u8; 32]) -> Self {
        let secret = Zeroizing::new(secret);
        let public = MixPublicKey(crypto::x25519_base(&secret));
        MixSecretKey {
            epoch,
            secret,
            public,
        }
    }

    /// The secret bytes, for storage. Handle with care.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.secret.clone()
    }

    /// The epoch this key is for.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The public key to publish.
    pub fn public(&self) -> MixPublicKey {
        self.public
    }

    pub(crate) fn secret(&self) -> &[u8; 32] {
        &self.secret
    }
}

impl fmt::Debug for MixSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MixSecretKey")
            .field("epoch", &self.epoch)
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// A hop's public key, decoded and ready for the sender's X25519.
///
/// [`HopKey::new`] is cheap. [`HopKey::precomputed`] also builds a table of
/// multiples of the key (about 1 ms and 30 KiB), after which every packet
/// through this hop costs about a third of the plain variable-base
/// multiplication. A client that sends many packets in an epoch keeps
/// precomputed keys of the mixes it uses; the table is shared by clones.
#[derive(Clone)]
pub struct HopKey {
    public: MixPublicKey,
    point: EdwardsPoint,
    table: Option<Arc<EdwardsBasepointTable>>,
}

impl HopKey {
    /// Decodes `public`; fails for bytes that are not a curve point.
    pub fn new(public: MixPublicKey) -> Result<Self, PacketError> {
        let point = crypto::decode_point(&public.0).ok_or(PacketError::InvalidPublicKey)?;
        if point.is_small_order() {
            return Err(PacketError::InvalidPublicKey);
        }
        Ok(HopKey {
            public,
            point,
            table: None,
        })
    }

    /// Decodes `public` and precomputes a multiplication table for it.
    pub fn precomputed(public: MixPublicKey) -> Result<Self, PacketError> {
        let mut key = Self::new(public)?;
        key.table = Some(Arc::new(EdwardsBasepointTable::create(&key.point)));
        Ok(key)
    }

    /// The public key.
    pub fn public(&self) -> MixPublicKey {
        self.public
    }

    /// X25519(ephemeral, self). `None` only for a non-contributory result,
    /// which a valid key and a clamped scalar cannot produce.
    pub(crate) fn agree(&self, ephemeral: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        match &self.table {
            Some(table) => crypto::x25519_table(ephemeral, table),
            None => crypto::x25519(ephemeral, &self.point),
        }
    }
}

impl fmt::Debug for HopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HopKey")
            .field("public", &self.public)
            .field("precomputed", &self.table.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_no_secret() {
        let key = MixSecretKey::from_bytes(Epoch(3), [0xab; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains("abab"), "{shown}");
        assert!(!shown.contains("171, 171"), "{shown}");
    }

    #[test]
    fn invalid_public_keys_are_rejected() {
        assert_eq!(
            HopKey::new(MixPublicKey([0; 32])).unwrap_err(),
            PacketError::InvalidPublicKey
        );
        // u = 2 lies on the twist, not on the curve.
        let mut twist = [0u8; 32];
        twist[0] = 2;
        assert_eq!(
            HopKey::new(MixPublicKey(twist)).unwrap_err(),
            PacketError::InvalidPublicKey
        );
    }
}
