//! Signed node descriptors: what a node tells the network about itself.

use chainmail_packet::{Epoch, HopKey, MixPublicKey, NodeId};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::{MixnetError, Time};

/// Largest encoded signed descriptor accepted from the network.
pub const MAX_DESCRIPTOR_SIZE: usize = 4096;
/// At most this many addresses per descriptor.
pub const MAX_ADDRESSES: usize = 8;
/// At most this many bytes per address.
pub const MAX_ADDRESS_LEN: usize = 256;
/// At most this many mix keys (current, next, and one more for overlap).
pub const MAX_MIX_KEYS: usize = 3;
/// At most this many bytes of software version.
pub const MAX_VERSION_LEN: usize = 64;
/// A descriptor may be issued at most this far in the future (clock skew).
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;
/// A descriptor may be valid for at most this long.
pub const MAX_LIFETIME_MS: u64 = 24 * 3600 * 1000;

const SIGNING_CONTEXT: &[u8] = b"chainmail node descriptor v1\0";

/// What a node does for the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    /// Mixes packets in one of the layers.
    pub mix: bool,
    /// Is a provider: entry for its clients, keeper of mailboxes.
    pub provider: bool,
}

/// A node's descriptor (the signed part).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDescriptor {
    /// Hash of the network id: a descriptor is valid in one network only.
    pub network: [u8; 32],
    /// The node: its Ed25519 identity key, from which its peer id follows.
    pub node: NodeId,
    /// Multiaddresses the node listens on, as text.
    pub addresses: Vec<String>,
    /// Roles.
    pub roles: Roles,
    /// Mix public keys by epoch (the current and the next at least).
    pub mix_keys: Vec<(Epoch, MixPublicKey)>,
    /// Software version, e.g. "chainmail 0.1.0".
    pub version: String,
    /// When it was issued.
    pub issued_at: Time,
    /// When it stops being valid.
    pub expires_at: Time,
}

/// The hash under which a network's descriptors are valid: binds every
/// signature to one network, so descriptors cannot be replayed across them.
pub fn network_hash(network_id: &str) -> [u8; 32] {
    *blake3::Hasher::new_derive_key("chainmail network id v1")
        .update(network_id.as_bytes())
        .finalize()
        .as_bytes()
}

#[derive(Serialize, Deserialize)]
struct Wire {
    body: Vec<u8>,
    signature: Vec<u8>,
}

impl NodeDescriptor {
    /// Signs and encodes the descriptor with the node's identity key.
    pub fn sign(&self, key: &SigningKey) -> Result<Vec<u8>, MixnetError> {
        if key.verifying_key().to_bytes() != self.node.0 {
            return Err(MixnetError::InvalidDescriptor(
                "signing key is not the descriptor's node key",
            ));
        }
        let body = postcard::to_stdvec(self).map_err(|_| MixnetError::Encoding("descriptor"))?;
        let signature = key.sign(&signed_message(&body)).to_bytes().to_vec();
        let bytes = postcard::to_stdvec(&Wire { body, signature })
            .map_err(|_| MixnetError::Encoding("descriptor"))?;
        if bytes.len() > MAX_DESCRIPTOR_SIZE {
            return Err(MixnetError::InvalidDescriptor("descriptor too large"));
        }
        Ok(bytes)
    }

    /// Decodes and checks a signed descriptor received from anyone: size,
    /// canonical encoding, signature by the node's key, network, validity
    /// period, bounds, and that every mix key is a usable curve point.
    pub fn verify(bytes: &[u8], network: &[u8; 32], now: Time) -> Result<Self, MixnetError> {
        if bytes.len() > MAX_DESCRIPTOR_SIZE {
            return Err(MixnetError::InvalidDescriptor("descriptor too large"));
        }
        let wire: Wire =
            postcard::from_bytes(bytes).map_err(|_| MixnetError::Decoding("descriptor"))?;
        let descriptor: NodeDescriptor = postcard::from_bytes(&wire.body)
            .map_err(|_| MixnetError::Decoding("descriptor body"))?;
        // One encoding per descriptor: what was signed re-encodes exactly.
        if postcard::to_stdvec(&descriptor).ok().as_deref() != Some(&wire.body[..]) {
            return Err(MixnetError::InvalidDescriptor("non-canonical encoding"));
        }
        let signature = Signature::from_slice(&wire.signature)
            .map_err(|_| MixnetError::InvalidDescriptor("malformed signature"))?;
        let key = VerifyingKey::from_bytes(&descriptor.node.0)
            .map_err(|_| MixnetError::InvalidDescriptor("node key is not an Ed25519 key"))?;
        key.verify_strict(&signed_message(&wire.body), &signature)
            .map_err(|_| MixnetError::InvalidDescriptor("bad signature"))?;
        descriptor.check(network, now)?;
        Ok(descriptor)
    }

    fn check(&self, network: &[u8; 32], now: Time) -> Result<(), MixnetError> {
        let bad = |why| Err(MixnetError::InvalidDescriptor(why));
        if &self.network != network {
            return bad("descriptor of another network");
        }
        if self.issued_at.0 > now.0.saturating_add(MAX_CLOCK_SKEW_MS) {
            return bad("issued in the future");
        }
        if self.expires_at <= now {
            return bad("expired");
        }
        if self.expires_at.0 <= self.issued_at.0
            || self.expires_at.0 - self.issued_at.0 > MAX_LIFETIME_MS
        {
            return bad("validity period out of bounds");
        }
        if self.addresses.len() > MAX_ADDRESSES
            || self
                .addresses
                .iter()
                .any(|a| a.is_empty() || a.len() > MAX_ADDRESS_LEN)
        {
            return bad("too many or oversized addresses");
        }
        if self.version.len() > MAX_VERSION_LEN {
            return bad("version string too long");
        }
        if self.mix_keys.is_empty() || self.mix_keys.len() > MAX_MIX_KEYS {
            return bad("must carry 1 to 3 mix keys");
        }
        for (i, (epoch, key)) in self.mix_keys.iter().enumerate() {
            if self.mix_keys[..i].iter().any(|(e, _)| e == epoch) {
                return bad("two mix keys for one epoch");
            }
            if HopKey::new(*key).is_err() {
                return bad("mix key is not a valid X25519 key");
            }
        }
        if !self.roles.mix && !self.roles.provider {
            return bad("node has no role");
        }
        Ok(())
    }

    /// The mix key for `epoch`, if the node published one.
    pub fn mix_key(&self, epoch: Epoch) -> Option<MixPublicKey> {
        self.mix_keys
            .iter()
            .find(|(e, _)| *e == epoch)
            .map(|(_, k)| *k)
    }
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(body);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainmail_packet::MixSecretKey;
    use rand::SeedableRng;

    pub(crate) fn sample(key: &SigningKey, now: Time) -> NodeDescriptor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        NodeDescriptor {
            network: network_hash("test"),
            node: NodeId(key.verifying_key().to_bytes()),
            addresses: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            roles: Roles {
                mix: true,
                provider: true,
            },
            mix_keys: vec![
                (
                    Epoch(1),
                    MixSecretKey::generate(&mut rng, Epoch(1)).public(),
                ),
                (
                    Epoch(2),
                    MixSecretKey::generate(&mut rng, Epoch(2)).public(),
                ),
            ],
            version: "chainmail 0.1.0".into(),
            issued_at: now,
            expires_at: Time(now.0 + 3_600_000),
        }
    }

    #[test]
    fn signed_descriptor_round_trips() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let now = Time(1_000_000);
        let d = sample(&key, now);
        let bytes = d.sign(&key).unwrap();
        assert_eq!(
            NodeDescriptor::verify(&bytes, &network_hash("test"), now).unwrap(),
            d
        );
    }

    #[test]
    fn tampered_foreign_expired_and_future_descriptors_are_rejected() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let now = Time(1_000_000_000);
        let net = network_hash("test");
        let bytes = sample(&key, now).sign(&key).unwrap();
        for i in 0..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 1;
            assert!(NodeDescriptor::verify(&t, &net, now).is_err(), "byte {i}");
        }
        assert!(NodeDescriptor::verify(&bytes, &network_hash("other"), now).is_err());
        assert!(NodeDescriptor::verify(&bytes, &net, Time(now.0 + 3_600_000)).is_err());
        let mut future = sample(&key, now);
        future.issued_at = Time(now.0 + MAX_CLOCK_SKEW_MS + 1);
        future.expires_at = Time(future.issued_at.0 + 1000);
        assert!(NodeDescriptor::verify(&future.sign(&key).unwrap(), &net, now).is_err());
        // Signed by someone else.
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(sample(&key, now).sign(&other).is_err());
    }
}
