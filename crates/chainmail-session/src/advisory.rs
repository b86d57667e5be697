//! Client advisories: a list of client versions known to be unsafe, signed
//! by the key a network file names, carried by the network (a DHT record
//! every node looks up), shown to users whose contacts run one of them.
//!
//! Encoding (postcard): `AdvisoryBody { network: [u8; 32], sequence: u64,
//! issued: Time, unsafe_versions: Vec<String> }`, then the 64-byte Ed25519
//! signature of the advisory key over `"chainmail advisory v1" ‖ body`.
//! A newer advisory (higher sequence) replaces an older one.

use chainmail_mixnet::Time;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::SessionError;

const CONTEXT: &[u8] = b"chainmail advisory v1";
/// Most versions an advisory lists.
pub const MAX_UNSAFE_VERSIONS: usize = 256;
/// Longest version string.
pub const MAX_VERSION_LEN: usize = 32;
/// Longest encoded advisory.
pub const MAX_ADVISORY_BYTES: usize = 16 * 1024;

/// What an advisory says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvisoryBody {
    /// The network it is for.
    pub network: [u8; 32],
    /// Higher replaces lower.
    pub sequence: u64,
    /// When it was signed.
    pub issued: Time,
    /// Client versions (as clients report them) that are unsafe.
    pub unsafe_versions: Vec<String>,
}

/// A signed advisory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advisory {
    /// What it says.
    pub body: AdvisoryBody,
    signature: [u8; 64],
}

/// Where advisories of `network` are stored in the DHT.
pub fn advisory_dht_key(network: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("chainmail advisory locator v1");
    h.update(network);
    *h.finalize().as_bytes()
}

impl AdvisoryBody {
    fn check(&self) -> Result<(), SessionError> {
        if self.unsafe_versions.len() > MAX_UNSAFE_VERSIONS {
            return Err(SessionError::TooLarge {
                what: "advisory version list",
                actual: self.unsafe_versions.len(),
                max: MAX_UNSAFE_VERSIONS,
            });
        }
        if let Some(v) = self
            .unsafe_versions
            .iter()
            .find(|v| v.is_empty() || v.len() > MAX_VERSION_LEN)
        {
            return Err(SessionError::Malformed {
                what: "advisory",
                detail: format!("version {v:?} is empty or longer than {MAX_VERSION_LEN} bytes"),
            });
        }
        Ok(())
    }

    /// Signs the advisory with the network's advisory key.
    pub fn sign(self, key: &SigningKey) -> Result<Advisory, SessionError> {
        self.check()?;
        let signature = key.sign(&signed(&self)?).to_bytes();
        Ok(Advisory {
            body: self,
            signature,
        })
    }
}

fn signed(body: &AdvisoryBody) -> Result<Vec<u8>, SessionError> {
    let bytes = postcard::to_stdvec(body).map_err(|e| SessionError::Malformed {
        what: "advisory",
        detail: e.to_string(),
    })?;
    let mut out = CONTEXT.to_vec();
    out.extend_from_slice(&bytes);
    Ok(out)
}

impl Advisory {
    /// Its bytes.
    pub fn encode(&self) -> Result<Vec<u8>, SessionError> {
        let mut out = postcard::to_stdvec(&self.body).map_err(|e| SessionError::Malformed {
            what: "advisory",
            detail: e.to_string(),
        })?;
        out.extend_from_slice(&self.signature);
        Ok(out)
    }

    /// Decodes an advisory and checks it is signed by `key` for `network`.
    pub fn decode_verified(
        bytes: &[u8],
        key: &VerifyingKey,
        network: &[u8; 32],
    ) -> Result<Advisory, SessionError> {
        if bytes.len() > MAX_ADVISORY_BYTES {
            return Err(SessionError::TooLarge {
                what: "advisory",
                actual: bytes.len(),
                max: MAX_ADVISORY_BYTES,
            });
        }
        let malformed = |detail: String| SessionError::Malformed {
            what: "advisory",
            detail,
        };
        let (body, rest): (AdvisoryBody, _) =
            postcard::take_from_bytes(bytes).map_err(|e| malformed(e.to_string()))?;
        let signature: [u8; 64] = rest
            .try_into()
            .map_err(|_| malformed("signature must be the last 64 bytes".into()))?;
        body.check()?;
        if &body.network != network {
            return Err(SessionError::Invalid("advisory of another network"));
        }
        key.verify(&signed(&body)?, &Signature::from_bytes(&signature))
            .map_err(|_| SessionError::Auth("advisory signature"))?;
        Ok(Advisory { body, signature })
    }

    /// Whether `version` is listed as unsafe.
    pub fn lists(&self, version: &str) -> bool {
        self.body.unsafe_versions.iter().any(|v| v == version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advisory(key: &SigningKey) -> Advisory {
        AdvisoryBody {
            network: [1; 32],
            sequence: 3,
            issued: Time(1_800_000_000_000),
            unsafe_versions: vec!["chainmail 0.0.9".into(), "chainmail 0.1.0-rc1".into()],
        }
        .sign(key)
        .unwrap()
    }

    #[test]
    fn round_trip_and_lookup() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let a = advisory(&key);
        let bytes = a.encode().unwrap();
        let back = Advisory::decode_verified(&bytes, &key.verifying_key(), &[1; 32]).unwrap();
        assert_eq!(back, a);
        assert!(back.lists("chainmail 0.0.9"));
        assert!(!back.lists("chainmail 0.1.0"));
    }

    #[test]
    fn every_flipped_byte_and_every_wrong_key_or_network_is_rejected() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let bytes = advisory(&key).encode().unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(Advisory::decode_verified(&b, &key.verifying_key(), &[1; 32]).is_err());
        }
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(Advisory::decode_verified(&bytes, &other.verifying_key(), &[1; 32]).is_err());
        assert!(Advisory::decode_verified(&bytes, &key.verifying_key(), &[2; 32]).is_err());
    }

    #[test]
    fn oversized_lists_are_refused() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let body = AdvisoryBody {
            network: [1; 32],
            sequence: 1,
            issued: Time(0),
            unsafe_versions: vec!["x".into(); MAX_UNSAFE_VERSIONS + 1],
        };
        assert!(body.sign(&key).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let key = SigningKey::from_bytes(&[7; 32]);
            let _ = Advisory::decode_verified(&bytes, &key.verifying_key(), &[1; 32]);
        }
    }
}
