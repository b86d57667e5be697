//! Proof-of-work stamps on contact requests from strangers.
//!
//! A stranger's first message costs its sender work that the recipient
//! checks in one hash: a [`Stamp`] is a nonce such that
//! `BLAKE3(challenge ‖ nonce_le)` starts with a number of zero bits the
//! recipient chose. The challenge ([`stamp_challenge`]) binds the stamp to
//! the network, both accounts, the day and the request itself, so a stamp
//! is worth one request to one recipient for about a day, and cannot be
//! reused.

use chainmail_mixnet::Time;
use serde::{Deserialize, Serialize};

use crate::Address;

/// The largest difficulty [`Stamp::mint`] accepts: 2³² hashes on average
/// is already hours of work on a phone.
pub const MAX_DIFFICULTY: u8 = 32;
/// [`Stamp::mint`] reports progress every this many attempts.
pub const PROGRESS_INTERVAL: u64 = 65_536;
const CHALLENGE_CONTEXT: &str = "chainmail stamp v1";
const MS_PER_DAY: u64 = 24 * 60 * 60 * 1000;

/// The challenge a stamp for this contact request must solve:
/// `BLAKE3-derive_key("chainmail stamp v1", …)` over each field preceded by
/// its length as a `u64` little-endian: `network`, `recipient`, `sender`,
/// `day` (`u32` little-endian) and `BLAKE3(payload)`.
pub fn stamp_challenge(
    network: &[u8; 32],
    recipient: &Address,
    sender: &Address,
    day: u32,
    payload: &[u8],
) -> [u8; 32] {
    let payload_hash = blake3::hash(payload);
    let fields: [&[u8]; 5] = [
        network,
        recipient.as_bytes(),
        sender.as_bytes(),
        &day.to_le_bytes(),
        payload_hash.as_bytes(),
    ];
    let mut h = blake3::Hasher::new_derive_key(CHALLENGE_CONTEXT);
    for field in fields {
        h.update(&(field.len() as u64).to_le_bytes());
        h.update(field);
    }
    *h.finalize().as_bytes()
}

/// Whole days since the Unix epoch (UTC) at `now`.
pub fn day_of(now: Time) -> u32 {
    u32::try_from(now.0 / MS_PER_DAY).unwrap_or(u32::MAX)
}

/// Whether a stamp made on `stamp_day` may be accepted on `today`:
/// yesterday, today and tomorrow are (clocks and time zones differ, and a
/// request may spend hours in the mixnet); anything else is not.
pub fn stamp_fresh(stamp_day: u32, today: u32) -> bool {
    stamp_day.abs_diff(today) <= 1
}

/// Number of leading zero bits of `hash`, from the first byte's most
/// significant bit.
pub fn leading_zero_bits(hash: &[u8]) -> u32 {
    let mut n = 0;
    for &b in hash {
        n += b.leading_zeros();
        if b != 0 {
            break;
        }
    }
    n
}

/// A proof of work: the day its challenge was made for, and the nonce
/// that solves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The day ([`day_of`]) the challenge was computed with.
    pub day: u32,
    /// The solution.
    pub nonce: u64,
}

fn work_hash(input: &mut [u8; 40], nonce: u64) -> [u8; 32] {
    input[32..].copy_from_slice(&nonce.to_le_bytes());
    *blake3::hash(input).as_bytes()
}

impl Stamp {
    /// Searches for a nonce such that `BLAKE3(challenge ‖ nonce_le)` has at
    /// least `difficulty_bits` leading zero bits, trying nonces from zero
    /// upwards (about 2^`difficulty_bits` attempts on average).
    ///
    /// `progress` is called after every [`PROGRESS_INTERVAL`] attempts with
    /// the number of attempts so far; returning `false` cancels the search.
    /// Returns `None` if cancelled, or if `difficulty_bits` is above
    /// [`MAX_DIFFICULTY`].
    pub fn mint(
        challenge: &[u8; 32],
        day: u32,
        difficulty_bits: u8,
        mut progress: impl FnMut(u64) -> bool,
    ) -> Option<Stamp> {
        if difficulty_bits > MAX_DIFFICULTY {
            return None;
        }
        let needed = u32::from(difficulty_bits);
        let mut input = [0u8; 40];
        input[..32].copy_from_slice(challenge);
        let mut nonce = 0u64;
        loop {
            if leading_zero_bits(&work_hash(&mut input, nonce)) >= needed {
                return Some(Stamp { day, nonce });
            }
            let attempts = nonce.checked_add(1)?;
            if attempts.is_multiple_of(PROGRESS_INTERVAL) && !progress(attempts) {
                return None;
            }
            nonce = attempts;
        }
    }

    /// Whether this stamp solves `challenge` with at least
    /// `difficulty_bits` leading zero bits. Difficulty 0 always passes.
    ///
    /// The caller computes `challenge` with [`Stamp::day`] and checks that
    /// day with [`stamp_fresh`].
    pub fn verify(&self, challenge: &[u8; 32], difficulty_bits: u8) -> bool {
        let mut input = [0u8; 40];
        input[..32].copy_from_slice(challenge);
        leading_zero_bits(&work_hash(&mut input, self.nonce)) >= u32::from(difficulty_bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn challenge(seed: u8) -> [u8; 32] {
        stamp_challenge(
            &[seed; 32],
            &Address::from_bytes([1; 32]),
            &Address::from_bytes([2; 32]),
            20_000,
            b"hello",
        )
    }

    #[test]
    fn challenge_test_vector() {
        assert_eq!(
            hex(&challenge(0)),
            "5edd3438bd6c8c0818f38c0d1aa27148f8c37b148aa18d90590602bff241ac8c"
        );
    }

    #[test]
    fn challenge_depends_on_every_input() {
        let network = [7; 32];
        let a = Address::from_bytes([1; 32]);
        let b = Address::from_bytes([2; 32]);
        let base = stamp_challenge(&network, &a, &b, 5, b"req");
        assert_ne!(base, stamp_challenge(&[8; 32], &a, &b, 5, b"req"));
        assert_ne!(base, stamp_challenge(&network, &b, &a, 5, b"req"));
        assert_ne!(base, stamp_challenge(&network, &a, &a, 5, b"req"));
        assert_ne!(base, stamp_challenge(&network, &a, &b, 6, b"req"));
        assert_ne!(base, stamp_challenge(&network, &a, &b, 5, b"reqx"));
        assert_ne!(base, stamp_challenge(&network, &a, &b, 5, b""));
        assert_eq!(base, stamp_challenge(&network, &a, &b, 5, b"req"));
    }

    #[test]
    fn minted_stamps_verify() {
        for difficulty in [0u8, 1, 4, 8, 12, 16] {
            let c = challenge(difficulty);
            let stamp = Stamp::mint(&c, 42, difficulty, |_| true).unwrap();
            assert_eq!(stamp.day, 42);
            assert!(stamp.verify(&c, difficulty));
            for easier in 0..difficulty {
                assert!(stamp.verify(&c, easier));
            }
        }
    }

    #[test]
    fn difficulty_zero_always_passes() {
        assert_eq!(
            Stamp::mint(&[9; 32], 1, 0, |_| true),
            Some(Stamp { day: 1, nonce: 0 })
        );
        for nonce in [0, 1, 12345, u64::MAX] {
            assert!(Stamp { day: 0, nonce }.verify(&[3; 32], 0));
        }
    }

    #[test]
    fn stamps_fail_against_another_challenge_or_a_harder_difficulty() {
        let mut wrong_challenge_passes = 0;
        for seed in 0..8u8 {
            let c = challenge(seed);
            let stamp = Stamp::mint(&c, 0, 16, |_| true).unwrap();
            assert!(stamp.verify(&c, 16));
            // Each of these passes with probability 2^-16.
            for other in 100..116u8 {
                if stamp.verify(&challenge(other), 16) {
                    wrong_challenge_passes += 1;
                }
            }
            // Only an all-zero hash would pass the largest difficulty.
            assert!(!stamp.verify(&c, 255));
        }
        assert_eq!(wrong_challenge_passes, 0);
        let c = challenge(1);
        let stamp = Stamp::mint(&c, 0, 8, |_| true).unwrap();
        let zeros = {
            let mut input = [0u8; 40];
            input[..32].copy_from_slice(&c);
            leading_zero_bits(&work_hash(&mut input, stamp.nonce))
        };
        assert!(stamp.verify(&c, u8::try_from(zeros).unwrap()));
        assert!(!stamp.verify(&c, u8::try_from(zeros + 1).unwrap()));
    }

    #[test]
    fn minting_can_be_cancelled_and_reports_progress() {
        let mut calls = Vec::new();
        let result = Stamp::mint(&challenge(3), 0, MAX_DIFFICULTY, |n| {
            calls.push(n);
            calls.len() < 3
        });
        assert_eq!(result, None);
        assert_eq!(
            calls,
            vec![
                PROGRESS_INTERVAL,
                2 * PROGRESS_INTERVAL,
                3 * PROGRESS_INTERVAL
            ]
        );
    }

    #[test]
    fn difficulty_above_the_maximum_is_refused() {
        let mut called = false;
        assert_eq!(
            Stamp::mint(&challenge(4), 0, MAX_DIFFICULTY + 1, |_| {
                called = true;
                true
            }),
            None
        );
        assert!(!called);
    }

    #[test]
    fn leading_zero_bits_edge_cases() {
        assert_eq!(leading_zero_bits(&[0; 32]), 256);
        assert_eq!(leading_zero_bits(&[]), 0);
        assert_eq!(leading_zero_bits(&[0xff; 32]), 0);
        assert_eq!(leading_zero_bits(&[0x80, 0, 0]), 0);
        assert_eq!(leading_zero_bits(&[0x7f]), 1);
        assert_eq!(leading_zero_bits(&[0x01, 0xff]), 7);
        assert_eq!(leading_zero_bits(&[0x00, 0x80]), 8);
        assert_eq!(leading_zero_bits(&[0x00, 0x40, 0x00]), 9);
        assert_eq!(leading_zero_bits(&[0x00, 0x00, 0x00, 0x01]), 31);
        assert_eq!(leading_zero_bits(&[0x00, 0x00, 0x00, 0x00, 0xff]), 32);
        let mut last = [0u8; 32];
        last[31] = 1;
        assert_eq!(leading_zero_bits(&last), 255);
    }

    #[test]
    fn days_and_freshness() {
        assert_eq!(day_of(Time(0)), 0);
        assert_eq!(day_of(Time(MS_PER_DAY - 1)), 0);
        assert_eq!(day_of(Time(MS_PER_DAY)), 1);
        // 2024-01-01T00:00:00Z.
        assert_eq!(day_of(Time(1_704_067_200_000)), 19_723);
        assert_eq!(
            day_of(Time(u64::MAX)),
            u32::try_from(u64::MAX / MS_PER_DAY).unwrap_or(u32::MAX)
        );
        assert!(stamp_fresh(100, 100));
        assert!(stamp_fresh(99, 100));
        assert!(stamp_fresh(101, 100));
        assert!(!stamp_fresh(98, 100));
        assert!(!stamp_fresh(102, 100));
        assert!(stamp_fresh(0, 0) && stamp_fresh(1, 0) && !stamp_fresh(2, 0));
        assert!(stamp_fresh(u32::MAX, u32::MAX - 1) && !stamp_fresh(0, u32::MAX));
    }

    proptest! {
        #[test]
        fn mint_finds_the_smallest_solving_nonce(
            c in any::<[u8; 32]>(),
            difficulty in 0u8..=10,
        ) {
            let stamp = Stamp::mint(&c, 0, difficulty, |_| true).unwrap();
            prop_assert!(stamp.verify(&c, difficulty));
            for nonce in 0..stamp.nonce {
                let s = Stamp { day: 0, nonce };
                prop_assert!(!s.verify(&c, difficulty));
            }
        }

        #[test]
        fn serde_round_trip(day in any::<u32>(), nonce in any::<u64>()) {
            let s = Stamp { day, nonce };
            let bytes = postcard::to_stdvec(&s).unwrap();
            prop_assert_eq!(postcard::from_bytes::<Stamp>(&bytes).unwrap(), s);
        }
    }
}
