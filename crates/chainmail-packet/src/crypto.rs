//! Symmetric primitives and the X25519 operation, kept in one place so that
//! the construction in `packet.rs` reads as a protocol, not as plumbing.
//!
//! - KDF and MAC: BLAKE3 (derive-key mode, keyed mode).
//! - Header stream: ChaCha20 (RFC 8439), key used for exactly one packet hop.
//! - Payload: LIONESS (Anderson–Biham) over ChaCha20 and keyed BLAKE3, a
//!   wide-block cipher: changing any bit of the block changes all of it.
//! - X25519 (RFC 7748), computed on the Edwards form so that the node side
//!   uses curve25519-dalek's vectorised backend; the result is bit-for-bit the
//!   X25519 function (tested against `x25519-dalek`).

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use curve25519_dalek::EdwardsPoint;
use curve25519_dalek::edwards::EdwardsBasepointTable;
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::traits::BasepointTable;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{Epoch, HEADER_MAC_SIZE, REPLAY_TAG_SIZE, VERSION};

/// Domain separation for per-hop key derivation.
const HOP_KDF_CONTEXT: &str = "chainmail-packet v1 2026-11 hop keys";
/// Domain separation for the SURB reply key expansion.
const SURB_KDF_CONTEXT: &str = "chainmail-packet v1 2026-11 surb reply key";

/// Keys of one hop of one packet, derived from the X25519 shared secret.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct HopKeys {
    /// ChaCha20 key for the header's routing information.
    pub(crate) header_stream: [u8; 32],
    /// Keyed-BLAKE3 key for the header MAC.
    pub(crate) header_mac: [u8; 32],
    /// LIONESS key for this hop's payload layer.
    pub(crate) payload: LionessKey,
    /// Replay tag of this hop.
    pub(crate) replay_tag: [u8; REPLAY_TAG_SIZE],
}

impl HopKeys {
    /// Derives the hop keys from the shared secret, bound to the protocol
    /// version, the epoch, the ephemeral key as sent and the hop's public key
    /// (as DHKEM does), so that changing any of them changes every key.
    pub(crate) fn derive(
        shared: &[u8; 32],
        epoch: Epoch,
        alpha: &[u8; 32],
        node_public: &[u8; 32],
    ) -> Self {
        let mut kdf = blake3::Hasher::new_derive_key(HOP_KDF_CONTEXT);
        kdf.update(&[VERSION]);
        kdf.update(&epoch.0.to_be_bytes());
        kdf.update(alpha);
        kdf.update(node_public);
        kdf.update(shared);
        let mut out = Zeroizing::new([0u8; 32 + 32 + LionessKey::SIZE + REPLAY_TAG_SIZE]);
        kdf.finalize_xof().fill(&mut out[..]);
        let mut keys = HopKeys {
            header_stream: [0; 32],
            header_mac: [0; 32],
            payload: LionessKey([[0; 32]; 4]),
            replay_tag: [0; REPLAY_TAG_SIZE],
        };
        let (a, rest) = out.split_at(32);
        let (b, rest) = rest.split_at(32);
        let (c, d) = rest.split_at(LionessKey::SIZE);
        keys.header_stream.copy_from_slice(a);
        keys.header_mac.copy_from_slice(b);
        keys.payload = LionessKey::from_bytes(c);
        keys.replay_tag.copy_from_slice(d);
        keys
    }
}

/// The header MAC: keyed BLAKE3 over the header's associated data and the
/// encrypted routing information, truncated to [`HEADER_MAC_SIZE`] bytes.
pub(crate) fn header_mac(key: &[u8; 32], epoch: Epoch, beta: &[u8]) -> [u8; HEADER_MAC_SIZE] {
    let mut mac = blake3::Hasher::new_keyed(key);
    mac.update(&[VERSION]);
    mac.update(&epoch.0.to_be_bytes());
    mac.update(beta);
    let mut out = [0u8; HEADER_MAC_SIZE];
    mac.finalize_xof().fill(&mut out);
    out
}

/// XORs the ChaCha20 keystream of `key` (nonce zero: every key is used for
/// one hop of one packet only) into `data`.
pub(crate) fn xor_stream(key: &[u8; 32], data: &mut [u8]) {
    let mut cipher = ChaCha20::new(key.into(), &[0u8; 12].into());
    cipher.apply_keystream(data);
}

/// A LIONESS key: four independent 256-bit subkeys.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct LionessKey([[u8; 32]; 4]);

impl LionessKey {
    pub(crate) const SIZE: usize = 128;

    /// Builds a key from exactly [`LionessKey::SIZE`] bytes.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Self {
        let mut k = [[0u8; 32]; 4];
        for (sub, chunk) in k.iter_mut().zip(bytes.chunks_exact(32)) {
            sub.copy_from_slice(chunk);
        }
        LionessKey(k)
    }

    /// Expands a 32-byte seed into a LIONESS key (used for SURB reply keys,
    /// which travel inside the SURB and so must be short).
    pub(crate) fn expand_seed(seed: &[u8; 32]) -> Self {
        let mut kdf = blake3::Hasher::new_derive_key(SURB_KDF_CONTEXT);
        kdf.update(seed);
        let mut out = Zeroizing::new([0u8; Self::SIZE]);
        kdf.finalize_xof().fill(&mut out[..]);
        Self::from_bytes(&out[..])
    }

    pub(crate) fn to_bytes(&self) -> Zeroizing<[u8; Self::SIZE]> {
        let mut out = Zeroizing::new([0u8; Self::SIZE]);
        for (chunk, sub) in out.chunks_exact_mut(32).zip(self.0.iter()) {
            chunk.copy_from_slice(sub);
        }
        out
    }

    /// LIONESS encryption of `block` in place. `block` must be longer than
    /// 32 bytes (the packet payload always is).
    pub(crate) fn encrypt(&self, block: &mut [u8]) {
        let (left, right) = block.split_at_mut(32);
        self.stream_round(&self.0[0], left, right);
        Self::hash_round(&self.0[1], left, right);
        self.stream_round(&self.0[2], left, right);
        Self::hash_round(&self.0[3], left, right);
    }

    /// LIONESS decryption of `block` in place (the inverse of `encrypt`).
    pub(crate) fn decrypt(&self, block: &mut [u8]) {
        let (left, right) = block.split_at_mut(32);
        Self::hash_round(&self.0[3], left, right);
        self.stream_round(&self.0[2], left, right);
        Self::hash_round(&self.0[1], left, right);
        self.stream_round(&self.0[0], left, right);
    }

    /// R ^= ChaCha20(L ^ K).
    fn stream_round(&self, subkey: &[u8; 32], left: &[u8], right: &mut [u8]) {
        let mut key = Zeroizing::new([0u8; 32]);
        for ((k, l), s) in key.iter_mut().zip(left).zip(subkey) {
            *k = l ^ s;
        }
        xor_stream(&key, right);
    }

    /// L ^= BLAKE3_K(R).
    fn hash_round(subkey: &[u8; 32], left: &mut [u8], right: &[u8]) {
        let h = blake3::keyed_hash(subkey, right);
        for (l, h) in left.iter_mut().zip(h.as_bytes()) {
            *l ^= h;
        }
    }
}

/// Clamped-scalar multiplication of the X25519 base point: the public key of
/// secret `scalar`, exactly as X25519 computes it.
pub(crate) fn x25519_base(scalar: &[u8; 32]) -> [u8; 32] {
    EdwardsPoint::mul_base_clamped(*scalar)
        .to_montgomery()
        .to_bytes()
}

/// Decodes an X25519 public key into its Edwards form. Returns `None` for
/// points that are not on the curve (those on the twist), which no honest
/// party sends.
pub(crate) fn decode_point(u: &[u8; 32]) -> Option<EdwardsPoint> {
    MontgomeryPoint(*u).to_edwards(0)
}

/// X25519(scalar, point): since the scalar is clamped (a multiple of the
/// cofactor) the sign lost in the Montgomery form does not change the result.
/// Returns `None` when the result is the identity (a low-order input).
pub(crate) fn x25519(scalar: &[u8; 32], point: &EdwardsPoint) -> Option<Zeroizing<[u8; 32]>> {
    non_identity(point.mul_clamped(*scalar))
}

/// X25519(scalar, point) with a precomputed table of `point`: about three
/// times faster than [`x25519`], at the cost of building the table once.
pub(crate) fn x25519_table(
    scalar: &[u8; 32],
    table: &EdwardsBasepointTable,
) -> Option<Zeroizing<[u8; 32]>> {
    non_identity(table.mul_base_clamped(*scalar))
}

fn non_identity(p: EdwardsPoint) -> Option<Zeroizing<[u8; 32]>> {
    let out = Zeroizing::new(p.to_montgomery().to_bytes());
    // The all-zero output is the non-contributory case of RFC 7748 §6.1.
    let nonzero = out.iter().fold(0u8, |acc, b| acc | b);
    (nonzero != 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn x25519_matches_rfc7748(sk in any::<[u8; 32]>(), other in any::<[u8; 32]>()) {
            let u = x25519_base(&other);
            let point = decode_point(&u).expect("a public key is on the curve");
            let ours = x25519(&sk, &point).expect("contributory");
            prop_assert_eq!(*ours, x25519_dalek::x25519(sk, u));
            let table = EdwardsBasepointTable::create(&point);
            let tabled = x25519_table(&sk, &table).expect("contributory");
            prop_assert_eq!(*tabled, x25519_dalek::x25519(sk, u));
        }

        #[test]
        fn lioness_round_trips(key in any::<[u8; 32]>(), mut block in proptest::collection::vec(any::<u8>(), 33..2000)) {
            let key = LionessKey::expand_seed(&key);
            let original = block.clone();
            key.encrypt(&mut block);
            prop_assert_ne!(&block, &original);
            key.decrypt(&mut block);
            prop_assert_eq!(block, original);
        }

        #[test]
        fn lioness_flip_changes_whole_block(key in any::<[u8; 32]>(), bit in 0usize..(1555 * 8)) {
            let key = LionessKey::expand_seed(&key);
            let mut a = vec![0u8; 1555];
            key.encrypt(&mut a);
            a[bit / 8] ^= 1 << (bit % 8);
            key.decrypt(&mut a);
            // A flipped ciphertext bit turns the plaintext into garbage: far
            // more than the 16-byte zero tag changes.
            let zeros = a.iter().filter(|b| **b == 0).count();
            prop_assert!(zeros < 100, "{zeros} zero bytes survived");
        }
    }

    #[test]
    fn low_order_points_are_rejected() {
        // u = 0 is the point of order 2 (or 4) on the Montgomery curve.
        let point = decode_point(&[0u8; 32]).expect("u = 0 is on the curve");
        assert!(x25519(&[0x42; 32], &point).is_none());
    }
}
