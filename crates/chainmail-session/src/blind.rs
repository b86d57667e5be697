//! Blinded storage of account descriptors in the DHT.
//!
//! An account's descriptor is stored under a key derived from the network,
//! the address and a time period, and encrypted with a key derived the same
//! way. Someone who knows the address finds and opens the descriptor; a DHT
//! node holding it learns neither whose it is nor, from one period to the
//! next, that two records belong to the same account, and nobody can list
//! the accounts that exist.
//!
//! This hides descriptors from those who do not know the address, not from
//! those who do: anyone who knows an address can compute its locator and
//! key, and so can watch for it.

use std::time::Duration;

use chacha20poly1305::aead::Aead;
use chacha20poly1305::aead::Payload;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use chainmail_mixnet::Time;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::{Address, SessionError};

const LOCATOR_CONTEXT: &str = "chainmail descriptor locator v1";
const KEY_CONTEXT: &str = "chainmail descriptor key v1";
/// Length of the random nonce at the start of a sealed descriptor.
pub const DESCRIPTOR_NONCE_LEN: usize = 24;
/// Length of the authentication tag at the end of a sealed descriptor.
pub const DESCRIPTOR_TAG_LEN: usize = 16;

/// The period containing `now`, for periods of length `period`:
/// `floor(now_ms / period_ms)`. A period shorter than a millisecond counts
/// as one millisecond.
pub fn period_at(now: Time, period: Duration) -> u64 {
    let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
    now.0 / ms
}

fn derive(context: &str, network: &[u8; 32], address: &Address, period: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(context);
    h.update(network)
        .update(address.as_bytes())
        .update(&period.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Where the descriptor of `address` is stored in `period`:
/// `BLAKE3-derive_key("chainmail descriptor locator v1", network ‖ address ‖
/// period_le64)`.
pub fn descriptor_dht_key(network: &[u8; 32], address: &Address, period: u64) -> [u8; 32] {
    derive(LOCATOR_CONTEXT, network, address, period)
}

fn cipher(network: &[u8; 32], address: &Address, period: u64) -> XChaCha20Poly1305 {
    let key = Zeroizing::new(derive(KEY_CONTEXT, network, address, period));
    XChaCha20Poly1305::new((&*key).into())
}

/// Encrypts a descriptor for storage under
/// [`descriptor_dht_key`]`(network, address, period)`: `nonce (24 random
/// bytes) ‖ XChaCha20-Poly1305 ciphertext ‖ tag (16)`, with key
/// `BLAKE3-derive_key("chainmail descriptor key v1", network ‖ address ‖
/// period_le64)` and the DHT key as associated data.
///
/// The cipher refuses only plaintexts beyond its limit of 256 GiB; for
/// those the result is empty, which never opens.
pub fn seal_descriptor<R: CryptoRng + ?Sized>(
    rng: &mut R,
    network: &[u8; 32],
    address: &Address,
    period: u64,
    plaintext: &[u8],
) -> Vec<u8> {
    let mut nonce = [0u8; DESCRIPTOR_NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let aad = descriptor_dht_key(network, address, period);
    let Ok(sealed) = cipher(network, address, period).encrypt(
        &XNonce::from(nonce),
        Payload {
            msg: plaintext,
            aad: &aad,
        },
    ) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(DESCRIPTOR_NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Decrypts what [`seal_descriptor`] made for this network, address and
/// period. Fails with [`SessionError::Auth`] if the bytes were modified or
/// were sealed for another network, address or period.
pub fn open_descriptor(
    network: &[u8; 32],
    address: &Address,
    period: u64,
    bytes: &[u8],
) -> Result<Vec<u8>, SessionError> {
    if bytes.len() < DESCRIPTOR_NONCE_LEN + DESCRIPTOR_TAG_LEN {
        return Err(SessionError::Malformed {
            what: "sealed descriptor",
            detail: format!(
                "{} bytes, shorter than a nonce and a tag ({})",
                bytes.len(),
                DESCRIPTOR_NONCE_LEN + DESCRIPTOR_TAG_LEN
            ),
        });
    }
    let (nonce, sealed) = bytes.split_at(DESCRIPTOR_NONCE_LEN);
    let mut n = [0u8; DESCRIPTOR_NONCE_LEN];
    n.copy_from_slice(nonce);
    let aad = descriptor_dht_key(network, address, period);
    cipher(network, address, period)
        .decrypt(
            &XNonce::from(n),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        .map_err(|_| SessionError::Auth("sealed descriptor"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    const NET: [u8; 32] = [0x4e; 32];

    fn alice() -> Address {
        Address::from_bytes([0xa1; 32])
    }

    #[test]
    fn locator_test_vector() {
        assert_eq!(
            hex(&descriptor_dht_key(&NET, &alice(), 7)),
            "e3f857b13c6eaf6a2634480b21bae7433272760940fc6094fad53711f15cf2b1"
        );
    }

    #[test]
    fn periods() {
        let day = Duration::from_secs(86_400);
        assert_eq!(period_at(Time(0), day), 0);
        assert_eq!(period_at(Time(86_399_999), day), 0);
        assert_eq!(period_at(Time(86_400_000), day), 1);
        assert_eq!(period_at(Time(1_704_067_200_000), day), 19_723);
        assert_eq!(period_at(Time(12_345), Duration::ZERO), 12_345);
        assert_eq!(period_at(Time(12_345), Duration::from_nanos(10)), 12_345);
        assert_eq!(period_at(Time(u64::MAX), Duration::MAX), 1);
        assert_eq!(period_at(Time(u64::MAX - 1), Duration::MAX), 0);
    }

    #[test]
    fn seal_then_open_round_trips() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for len in [0usize, 1, 100, 5000] {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let sealed = seal_descriptor(&mut rng, &NET, &alice(), 3, &plain);
            assert_eq!(
                sealed.len(),
                DESCRIPTOR_NONCE_LEN + len + DESCRIPTOR_TAG_LEN
            );
            assert_eq!(open_descriptor(&NET, &alice(), 3, &sealed).unwrap(), plain);
        }
    }

    #[test]
    fn sealing_twice_gives_different_bytes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let a = seal_descriptor(&mut rng, &NET, &alice(), 3, b"d");
        let b = seal_descriptor(&mut rng, &NET, &alice(), 3, b"d");
        assert_ne!(a, b);
    }

    #[test]
    fn wrong_address_period_or_network_fails() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let sealed = seal_descriptor(&mut rng, &NET, &alice(), 3, b"descriptor");
        let bob = Address::from_bytes([0xb0; 32]);
        for r in [
            open_descriptor(&NET, &bob, 3, &sealed),
            open_descriptor(&NET, &alice(), 2, &sealed),
            open_descriptor(&NET, &alice(), 4, &sealed),
            open_descriptor(&[0; 32], &alice(), 3, &sealed),
        ] {
            assert!(matches!(r, Err(SessionError::Auth(_))), "{r:?}");
        }
    }

    #[test]
    fn short_inputs_fail_cleanly() {
        for len in 0..DESCRIPTOR_NONCE_LEN + DESCRIPTOR_TAG_LEN {
            assert!(matches!(
                open_descriptor(&NET, &alice(), 3, &vec![0; len]),
                Err(SessionError::Malformed { .. })
            ));
        }
        assert!(matches!(
            open_descriptor(&NET, &alice(), 3, &[0; 40]),
            Err(SessionError::Auth(_))
        ));
    }

    #[test]
    fn every_bit_flip_fails() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let sealed = seal_descriptor(&mut rng, &NET, &alice(), 9, b"a small descriptor");
        for i in 0..sealed.len() * 8 {
            let mut t = sealed.clone();
            t[i / 8] ^= 1 << (i % 8);
            assert!(
                matches!(
                    open_descriptor(&NET, &alice(), 9, &t),
                    Err(SessionError::Auth(_))
                ),
                "bit {i}"
            );
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(open_descriptor(&NET, &alice(), 9, &longer).is_err());
        assert!(open_descriptor(&NET, &alice(), 9, &sealed[..sealed.len() - 1]).is_err());
    }

    #[test]
    fn locators_and_keys_differ_per_period_address_and_network() {
        let base = descriptor_dht_key(&NET, &alice(), 10);
        assert_ne!(base, descriptor_dht_key(&NET, &alice(), 11));
        assert_ne!(
            base,
            descriptor_dht_key(&NET, &Address::from_bytes([0; 32]), 10)
        );
        assert_ne!(base, descriptor_dht_key(&[0; 32], &alice(), 10));
        // The encryption key is not the locator, and also changes per period.
        let key = derive(KEY_CONTEXT, &NET, &alice(), 10);
        assert_ne!(key, base);
        assert_ne!(key, derive(KEY_CONTEXT, &NET, &alice(), 11));
        // The locator does not contain the address in the clear.
        assert!(!base.windows(4).any(|w| w == [0xa1; 4]));
    }

    proptest! {
        #[test]
        fn round_trip_and_wrong_period(
            plain in proptest::collection::vec(any::<u8>(), 0..500),
            period in any::<u64>(),
            seed in any::<u64>(),
        ) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let sealed = seal_descriptor(&mut rng, &NET, &alice(), period, &plain);
            prop_assert_eq!(open_descriptor(&NET, &alice(), period, &sealed).unwrap(), plain);
            prop_assert!(open_descriptor(&NET, &alice(), period.wrapping_add(1), &sealed).is_err());
        }

        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert!(open_descriptor(&NET, &alice(), 0, &bytes).is_err());
        }
    }
}
