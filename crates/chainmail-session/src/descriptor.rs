//! Account descriptors: what a sender needs to start a session with an
//! account, signed by the account's identity key.
//!
//! A descriptor names the account's Olm identity key, a pool of one-time
//! keys and a fallback key (all covered by the one signature), the
//! account's mixnet address (its providers and mailbox ids, at least two),
//! the client version, and a validity window. It is published in the DHT
//! under a key blinded with the address and the period (see
//! [`crate::blind`]), encrypted so that only someone who knows the address
//! can read it.

use chainmail_mixnet::Time;
use chainmail_mixnet::message::ClientAddress;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};
use serde::{Deserialize, Serialize};

use crate::{Address, SessionError};

/// Encoding version of descriptors.
pub const DESCRIPTOR_VERSION: u8 = 1;
/// At most this many one-time keys in a descriptor.
pub const MAX_ONE_TIME_KEYS: usize = 64;
/// A descriptor's encoding is at most this long.
pub const MAX_DESCRIPTOR_BYTES: usize = 8 * 1024;
/// Longest client version string.
pub const MAX_VERSION_LEN: usize = 32;
/// A descriptor may claim to be issued at most this far in the future
/// (clock skew).
pub const MAX_CLOCK_SKEW_MS: u64 = 10 * 60 * 1000;

const SIGNING_CONTEXT: &[u8] = b"chainmail account descriptor v1";
const BINDING_CONTEXT: &[u8] = b"chainmail olm key binding v1";

/// The signed part of a descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorBody {
    /// [`DESCRIPTOR_VERSION`].
    pub version: u8,
    /// Hash of the network this account lives in.
    pub network: [u8; 32],
    /// The account (its Ed25519 identity key).
    pub address: Address,
    /// The account's Olm (Curve25519) identity key.
    pub curve_key: [u8; 32],
    /// One-time keys: a sender uses one for the first message of a session.
    pub one_time_keys: Vec<[u8; 32]>,
    /// Used when no one-time key is left.
    pub fallback_key: [u8; 32],
    /// Where to send packets for the account.
    pub mixnet: ClientAddress,
    /// The account's client software version.
    pub client_version: String,
    /// When it was made.
    pub issued: Time,
    /// After this it is not used.
    pub expires: Time,
}

/// A signed account descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDescriptor {
    /// What is signed.
    pub body: DescriptorBody,
    /// Ed25519 signature of the identity key over the body.
    #[serde(with = "sig_bytes")]
    pub signature: [u8; 64],
}

mod sig_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let v: &[u8] = Deserialize::deserialize(d)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("signature must be 64 bytes"))
    }
}

fn signed_bytes(context: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(context.len() + body.len());
    out.extend_from_slice(context);
    out.extend_from_slice(body);
    out
}

impl DescriptorBody {
    /// Signs the body with the account's identity key.
    pub fn sign(self, identity: &SigningKey) -> Result<AccountDescriptor, SessionError> {
        let bytes = postcard::to_stdvec(&self).map_err(|e| SessionError::Malformed {
            what: "descriptor",
            detail: e.to_string(),
        })?;
        let signature = identity
            .sign(&signed_bytes(SIGNING_CONTEXT, &bytes))
            .to_bytes();
        Ok(AccountDescriptor {
            body: self,
            signature,
        })
    }
}

impl AccountDescriptor {
    /// The descriptor's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, SessionError> {
        let bytes = postcard::to_stdvec(self).map_err(|e| SessionError::Malformed {
            what: "descriptor",
            detail: e.to_string(),
        })?;
        if bytes.len() > MAX_DESCRIPTOR_BYTES {
            return Err(SessionError::TooLarge {
                what: "descriptor",
                actual: bytes.len(),
                max: MAX_DESCRIPTOR_BYTES,
            });
        }
        Ok(bytes)
    }

    /// Decodes and checks a descriptor: its encoding, its signature, that
    /// it belongs to `network` and to `expected` (the address the user
    /// asked for), and that it is valid at `now`.
    pub fn decode_verified(
        bytes: &[u8],
        network: &[u8; 32],
        expected: &Address,
        now: Time,
    ) -> Result<Self, SessionError> {
        if bytes.len() > MAX_DESCRIPTOR_BYTES {
            return Err(SessionError::TooLarge {
                what: "descriptor",
                actual: bytes.len(),
                max: MAX_DESCRIPTOR_BYTES,
            });
        }
        let malformed = |detail: String| SessionError::Malformed {
            what: "descriptor",
            detail,
        };
        let (d, rest): (AccountDescriptor, _) =
            postcard::take_from_bytes(bytes).map_err(|e| malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(malformed("trailing bytes".into()));
        }
        let b = &d.body;
        if b.version != DESCRIPTOR_VERSION {
            return Err(malformed(format!("unknown version {}", b.version)));
        }
        if &b.network != network {
            return Err(SessionError::Invalid("descriptor of another network"));
        }
        if &b.address != expected {
            return Err(SessionError::Invalid(
                "descriptor of another account than the one asked for",
            ));
        }
        let key = b
            .address
            .verifying_key()
            .map_err(|_| SessionError::Invalid("descriptor address is not a key"))?;
        let body = postcard::to_stdvec(b).map_err(|e| malformed(e.to_string()))?;
        key.verify(
            &signed_bytes(SIGNING_CONTEXT, &body),
            &Signature::from_bytes(&d.signature),
        )
        .map_err(|_| SessionError::Auth("descriptor signature"))?;
        if b.one_time_keys.len() > MAX_ONE_TIME_KEYS {
            return Err(malformed("too many one-time keys".into()));
        }
        if b.client_version.len() > MAX_VERSION_LEN {
            return Err(malformed("client version too long".into()));
        }
        b.mixnet
            .validate()
            .map_err(|e| malformed(format!("mixnet address: {e}")))?;
        if b.mixnet.mailboxes.len() < 2 {
            return Err(malformed("fewer than two mailboxes".into()));
        }
        if b.expires <= b.issued {
            return Err(malformed("expires before it is issued".into()));
        }
        if now >= b.expires {
            return Err(SessionError::Invalid("descriptor expired"));
        }
        if b.issued.0 > now.0.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(SessionError::Invalid("descriptor issued in the future"));
        }
        Ok(d)
    }
}

/// A signature of the identity key binding an Olm identity key to the
/// account, carried in the first message of every session so the receiver
/// knows the session's key belongs to the address it claims.
pub fn sign_binding(identity: &SigningKey, network: &[u8; 32], curve_key: &[u8; 32]) -> [u8; 64] {
    identity.sign(&binding_bytes(network, curve_key)).to_bytes()
}

/// Checks a [`sign_binding`] signature.
pub fn verify_binding(
    address: &Address,
    network: &[u8; 32],
    curve_key: &[u8; 32],
    signature: &[u8; 64],
) -> Result<(), SessionError> {
    let key = address
        .verifying_key()
        .map_err(|_| SessionError::Invalid("sender address is not a key"))?;
    key.verify(
        &binding_bytes(network, curve_key),
        &Signature::from_bytes(signature),
    )
    .map_err(|_| SessionError::Auth("key binding"))
}

fn binding_bytes(network: &[u8; 32], curve_key: &[u8; 32]) -> Vec<u8> {
    let mut out = BINDING_CONTEXT.to_vec();
    out.extend_from_slice(network);
    out.extend_from_slice(curve_key);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainmail_packet::{MailboxId, NodeId};
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    const NOW: Time = Time(1_800_000_000_000);

    fn body(rng: &mut StdRng, identity: &SigningKey) -> DescriptorBody {
        DescriptorBody {
            version: DESCRIPTOR_VERSION,
            network: [7; 32],
            address: Address::from_key(&identity.verifying_key()),
            curve_key: rng.random(),
            one_time_keys: (0..20).map(|_| rng.random()).collect(),
            fallback_key: rng.random(),
            mixnet: ClientAddress {
                seal_key: rng.random(),
                mailboxes: vec![
                    (NodeId(rng.random()), MailboxId(rng.random())),
                    (NodeId(rng.random()), MailboxId(rng.random())),
                ],
            },
            client_version: "0.1.0".into(),
            issued: NOW,
            expires: Time(NOW.0 + 3_600_000),
        }
    }

    fn setup() -> (StdRng, SigningKey, AccountDescriptor) {
        let mut rng = StdRng::seed_from_u64(1);
        let identity = SigningKey::from_bytes(&rng.random());
        let d = body(&mut rng, &identity).sign(&identity).unwrap();
        (rng, identity, d)
    }

    #[test]
    fn round_trip() {
        let (_, identity, d) = setup();
        let address = Address::from_key(&identity.verifying_key());
        let bytes = d.encode().unwrap();
        let back = AccountDescriptor::decode_verified(&bytes, &[7; 32], &address, NOW).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn every_flipped_byte_is_rejected() {
        let (_, identity, d) = setup();
        let address = Address::from_key(&identity.verifying_key());
        let bytes = d.encode().unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(
                AccountDescriptor::decode_verified(&b, &[7; 32], &address, NOW).is_err(),
                "flip at {i} accepted"
            );
        }
    }

    #[test]
    fn wrong_network_address_or_time_is_rejected() {
        let (mut rng, identity, d) = setup();
        let address = Address::from_key(&identity.verifying_key());
        let bytes = d.encode().unwrap();
        let other = Address::from_key(&SigningKey::from_bytes(&rng.random()).verifying_key());
        assert!(AccountDescriptor::decode_verified(&bytes, &[8; 32], &address, NOW).is_err());
        assert!(AccountDescriptor::decode_verified(&bytes, &[7; 32], &other, NOW).is_err());
        let expired = Time(NOW.0 + 3_600_000);
        assert!(AccountDescriptor::decode_verified(&bytes, &[7; 32], &address, expired).is_err());
        let early = Time(NOW.0 - MAX_CLOCK_SKEW_MS - 1);
        assert!(AccountDescriptor::decode_verified(&bytes, &[7; 32], &address, early).is_err());
    }

    #[test]
    fn a_descriptor_signed_by_someone_else_is_rejected() {
        let (mut rng, identity, _) = setup();
        let mallory = SigningKey::from_bytes(&rng.random());
        // Mallory's descriptor claiming the victim's address.
        let forged = body(&mut rng, &identity).sign(&mallory).unwrap();
        let address = Address::from_key(&identity.verifying_key());
        let err =
            AccountDescriptor::decode_verified(&forged.encode().unwrap(), &[7; 32], &address, NOW)
                .unwrap_err();
        assert!(matches!(err, SessionError::Auth(_)), "{err}");
    }

    #[test]
    fn bindings_verify_only_for_their_key_and_network() {
        let (mut rng, identity, _) = setup();
        let address = Address::from_key(&identity.verifying_key());
        let curve: [u8; 32] = rng.random();
        let sig = sign_binding(&identity, &[7; 32], &curve);
        verify_binding(&address, &[7; 32], &curve, &sig).unwrap();
        assert!(verify_binding(&address, &[8; 32], &curve, &sig).is_err());
        assert!(verify_binding(&address, &[7; 32], &rng.random(), &sig).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2000)) {
            let _ = AccountDescriptor::decode_verified(&bytes, &[7; 32], &Address::from_bytes([9; 32]), NOW);
        }
    }
}
