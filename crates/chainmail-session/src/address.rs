//! Account addresses: an account's Ed25519 identity key, and the text form
//! people share with each other (`cm1…`).
//!
//! The text form is `cm1` followed by lowercase RFC 4648 base32 (alphabet
//! `a-z2-7`, no padding) of `key (32 bytes) ‖ checksum (4 bytes)`, where the
//! checksum is the first four bytes of
//! `BLAKE3-derive_key("chainmail address checksum v1", key)`. It is shown in
//! groups of four characters separated by `-`. Parsing ignores case, `-`
//! and whitespace, so an address survives being read aloud, retyped or
//! wrapped across lines; a typo is an error, never someone else's address.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

/// The text every address starts with.
pub const ADDRESS_PREFIX: &str = "cm1";
/// Number of base32 characters after the prefix.
pub const ADDRESS_CHARS: usize = 58;
/// The display form groups the characters after the prefix by this many.
const GROUP: usize = 4;
const CHECKSUM_CONTEXT: &str = "chainmail address checksum v1";
const CHECKSUM_LEN: usize = 4;
const PAYLOAD_LEN: usize = 32 + CHECKSUM_LEN;
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// An account's address: its Ed25519 identity public key.
///
/// Constructing one from bytes does not check that the bytes are a valid
/// key; [`Address::verifying_key`] does, and parsing the text form does.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Address([u8; 32]);

/// Why a text is not an address. Every message says what the person who
/// typed or pasted it can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// Nothing but spaces, dashes and line breaks.
    #[error("the address is empty: paste or type a Chainmail address (it starts with \"cm1\")")]
    Empty,
    /// The text does not start with `cm1`.
    #[error("this is not a Chainmail address: addresses start with \"cm1\"")]
    Prefix,
    /// A character that never appears in an address.
    #[error(
        "the character {found:?} at position {position} cannot be in an address \
         (addresses use only the letters a-z and the digits 2-7)"
    )]
    Character {
        /// Where, counted in characters of the text as given, from 1.
        position: usize,
        /// The character.
        found: char,
    },
    /// Too few or too many characters.
    #[error(
        "the address has {found} characters after \"cm1\" but must have {expected}: \
         check that it was copied completely and nothing was added"
    )]
    Length {
        /// Characters after the prefix, not counting dashes and whitespace.
        found: usize,
        /// How many an address has.
        expected: usize,
    },
    /// Well-formed, but the checksum does not match: a typo.
    #[error("mistyped: the checksum does not match; check the address or copy it again")]
    Checksum,
    /// The checksum matches, but the key is not a usable Ed25519 public key.
    #[error("this address does not contain a valid account key: ask for the address again")]
    NotAKey,
}

fn checksum(key: &[u8; 32]) -> [u8; CHECKSUM_LEN] {
    let full = blake3::derive_key(CHECKSUM_CONTEXT, key);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&full[..CHECKSUM_LEN]);
    out
}

/// Lowercase base32 of `bytes`, no padding; unused low bits of the last
/// character are zero.
fn base32_encode(bytes: &[u8], out: &mut String) {
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
}

/// The 5-bit value of a base32 character (either case).
fn base32_value(c: char) -> Option<u8> {
    match c.to_ascii_lowercase() {
        c @ 'a'..='z' => Some(c as u8 - b'a'),
        c @ '2'..='7' => Some(c as u8 - b'2' + 26),
        _ => None,
    }
}

/// Characters a person may put anywhere in an address for readability.
fn is_separator(c: char) -> bool {
    c == '-' || c.is_whitespace()
}

impl Address {
    /// The address of an identity key.
    pub fn from_key(key: &VerifyingKey) -> Self {
        Address(key.to_bytes())
    }

    /// An address from the 32 bytes of a key (not checked here; see
    /// [`Address::verifying_key`]).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Address(bytes)
    }

    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The identity key, if the bytes are a valid Ed25519 public key that is
    /// not of small order.
    pub fn verifying_key(&self) -> Result<VerifyingKey, AddressError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| AddressError::NotAKey)?;
        if key.is_weak() {
            return Err(AddressError::NotAKey);
        }
        Ok(key)
    }

    /// The base32 characters after the prefix, without grouping.
    fn body(&self) -> String {
        let mut payload = [0u8; PAYLOAD_LEN];
        payload[..32].copy_from_slice(&self.0);
        payload[32..].copy_from_slice(&checksum(&self.0));
        let mut s = String::with_capacity(ADDRESS_CHARS);
        base32_encode(&payload, &mut s);
        s
    }

    /// The first eight characters after the prefix: enough to tell
    /// addresses apart in logs and lists, not enough to use one.
    pub fn short(&self) -> String {
        self.body().chars().take(8).collect()
    }
}

impl fmt::Display for Address {
    /// `cm1` and the base32 characters in groups of four joined by `-`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(ADDRESS_PREFIX)?;
        let body = self.body();
        for (i, chunk) in body.as_bytes().chunks(GROUP).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            for &b in chunk {
                write!(f, "{}", char::from(b))?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({self})")
    }
}

impl FromStr for Address {
    type Err = AddressError;

    /// Parses the text form: any case, with any `-` and whitespace.
    fn from_str(s: &str) -> Result<Self, AddressError> {
        let mut significant = s
            .chars()
            .enumerate()
            .filter(|(_, c)| !is_separator(*c))
            .map(|(i, c)| (i + 1, c));

        let mut prefix_seen = 0;
        for expected in ADDRESS_PREFIX.chars() {
            match significant.next() {
                Some((_, c)) if c.to_ascii_lowercase() == expected => prefix_seen += 1,
                Some(_) => return Err(AddressError::Prefix),
                None if prefix_seen == 0 => return Err(AddressError::Empty),
                None => return Err(AddressError::Prefix),
            }
        }

        let mut values = [0u8; ADDRESS_CHARS];
        let mut found = 0usize;
        for (position, c) in significant {
            let v = base32_value(c).ok_or(AddressError::Character { position, found: c })?;
            if let Some(slot) = values.get_mut(found) {
                *slot = v;
            }
            found += 1;
        }
        if found != ADDRESS_CHARS {
            return Err(AddressError::Length {
                found,
                expected: ADDRESS_CHARS,
            });
        }

        let mut payload = [0u8; PAYLOAD_LEN];
        let mut acc: u32 = 0;
        let mut bits = 0u32;
        let mut n = 0;
        for v in values {
            acc = (acc << 5) | u32::from(v);
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                if let Some(slot) = payload.get_mut(n) {
                    *slot = (acc >> bits) as u8;
                }
                n += 1;
                acc &= (1 << bits) - 1;
            }
        }
        // The two unused bits of the last character must be zero, or two
        // texts would name the same address and a typo there would pass.
        if acc != 0 || n != PAYLOAD_LEN {
            return Err(AddressError::Checksum);
        }

        let mut key = [0u8; 32];
        key.copy_from_slice(&payload[..32]);
        if checksum(&key)[..] != payload[32..] {
            return Err(AddressError::Checksum);
        }
        let address = Address(key);
        address.verifying_key()?;
        Ok(address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn random_addresses(n: usize, seed: u64) -> Vec<Address> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| Address::from_key(&SigningKey::generate(&mut rng).verifying_key()))
            .collect()
    }

    fn body_of(a: &Address) -> Vec<char> {
        a.body().chars().collect()
    }

    fn parse_body(body: &[char]) -> Result<Address, AddressError> {
        let s: String = body.iter().collect();
        format!("{ADDRESS_PREFIX}{s}").parse()
    }

    #[test]
    fn test_vector() {
        // The Ed25519 key of the RFC 8032 test 1 secret key.
        let key = SigningKey::from_bytes(&[
            0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec,
            0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03,
            0x1c, 0xae, 0x7f, 0x60,
        ]);
        let a = Address::from_key(&key.verifying_key());
        assert_eq!(a.as_bytes()[..4], [0xd7, 0x5a, 0x98, 0x01]);
        let text = a.to_string();
        assert_eq!(
            text,
            "cm125nj-qamc-wefl-pvkl-73j4-szah-hiho-c4xt-3ktc-gjnp-aing-r5yh-kenh-j3ei-ca"
        );
        assert_eq!(a.short(), "25njqamc");
        assert_eq!(text.parse::<Address>().unwrap(), a);
    }

    #[test]
    fn text_form_round_trips_and_is_grouped() {
        for a in random_addresses(50, 1) {
            let text = a.to_string();
            assert!(text.starts_with("cm1"));
            assert_eq!(
                text.len(),
                3 + ADDRESS_CHARS + ADDRESS_CHARS.div_ceil(GROUP) - 1
            );
            let groups: Vec<&str> = text[3..].split('-').collect();
            assert_eq!(groups.len(), 15);
            assert!(groups[..14].iter().all(|g| g.len() == 4));
            assert_eq!(groups[14].len(), 2);
            assert!(
                text[3..]
                    .chars()
                    .all(|c| c == '-' || c.is_ascii_lowercase() || ('2'..='7').contains(&c))
            );
            assert_eq!(text.parse::<Address>().unwrap(), a);
            assert_eq!(a.verifying_key().unwrap().to_bytes(), *a.as_bytes());
            assert_eq!(Address::from_bytes(*a.as_bytes()), a);
            assert_eq!(a.short(), a.body()[..8]);
            assert_eq!(format!("{a:?}"), format!("Address({text})"));
        }
    }

    #[test]
    fn case_and_whitespace_are_tolerated() {
        for a in random_addresses(10, 2) {
            let text = a.to_string();
            let body = a.body();
            let variants = [
                text.to_uppercase(),
                format!("  {text}\n"),
                format!("cm1{body}"),
                format!("CM1-{}", body.to_uppercase()),
                format!("cm1 {}\n{}", &body[..29], &body[29..]),
                format!("c m 1\t{}\r\n{}", &body[..3], &body[3..]),
                text.replace('-', " "),
                text.replace('-', "\n"),
                text.replace('-', "--"),
            ];
            for v in variants {
                assert_eq!(v.parse::<Address>(), Ok(a), "{v:?}");
            }
        }
    }

    #[test]
    fn every_single_substitution_is_rejected() {
        let alphabet: Vec<char> = ALPHABET.iter().map(|b| char::from(*b)).collect();
        for a in random_addresses(8, 3) {
            let body = body_of(&a);
            for i in 0..body.len() {
                for &c in alphabet.iter().chain(&['0', '1', '8', '9', 'é', '_']) {
                    if c == body[i] {
                        continue;
                    }
                    let mut typo = body.clone();
                    typo[i] = c;
                    match parse_body(&typo) {
                        Err(AddressError::Checksum) => assert!(alphabet.contains(&c)),
                        Err(AddressError::Character { position, found }) => {
                            assert_eq!((position, found), (3 + i + 1, c));
                        }
                        other => panic!("substitution {i} → {c:?} gave {other:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn every_adjacent_transposition_is_rejected() {
        for a in random_addresses(32, 4) {
            let body = body_of(&a);
            for i in 0..body.len() - 1 {
                if body[i] == body[i + 1] {
                    continue;
                }
                let mut swapped = body.clone();
                swapped.swap(i, i + 1);
                assert_eq!(parse_body(&swapped), Err(AddressError::Checksum), "at {i}");
            }
        }
    }

    #[test]
    fn nonzero_padding_bits_are_rejected() {
        let a = random_addresses(1, 5)[0];
        let mut body = body_of(&a);
        let last = base32_value(body[ADDRESS_CHARS - 1]).unwrap();
        assert_eq!(last & 0b11, 0);
        for pad in 1..4u8 {
            body[ADDRESS_CHARS - 1] = char::from(ALPHABET[usize::from(last | pad)]);
            assert_eq!(parse_body(&body), Err(AddressError::Checksum));
        }
    }

    #[test]
    fn each_error_is_produced_with_a_clear_message() {
        let a = random_addresses(1, 6)[0];
        let text = a.to_string();

        for empty in ["", "   ", "\n-\t- "] {
            assert_eq!(empty.parse::<Address>(), Err(AddressError::Empty));
        }
        assert!(AddressError::Empty.to_string().contains("empty"));

        for wrong in ["cmx1abcd", "hello", "c", "cm", "cm2aaaa", &text[1..]] {
            assert_eq!(
                wrong.parse::<Address>(),
                Err(AddressError::Prefix),
                "{wrong:?}"
            );
        }
        assert!(AddressError::Prefix.to_string().contains("\"cm1\""));

        // Position counts the characters as typed, dashes and spaces included.
        let mut typo = text.clone();
        typo.replace_range(5..6, "0");
        let err = typo.parse::<Address>().unwrap_err();
        assert_eq!(
            err,
            AddressError::Character {
                position: 6,
                found: '0'
            }
        );
        assert!(err.to_string().contains("'0' at position 6"), "{err}");
        let err = format!(" {text}ü").parse::<Address>().unwrap_err();
        assert_eq!(
            err,
            AddressError::Character {
                position: text.chars().count() + 2,
                found: 'ü'
            }
        );

        let err = text[..text.len() - 1].parse::<Address>().unwrap_err();
        assert_eq!(
            err,
            AddressError::Length {
                found: 57,
                expected: 58
            }
        );
        assert!(err.to_string().contains("57 characters"), "{err}");
        assert_eq!(
            format!("{text}a").parse::<Address>(),
            Err(AddressError::Length {
                found: 59,
                expected: 58
            })
        );
        assert_eq!(
            "cm1".parse::<Address>(),
            Err(AddressError::Length {
                found: 0,
                expected: 58
            })
        );

        let mut body = body_of(&a);
        body[10] = if body[10] == 'a' { 'b' } else { 'a' };
        let err = parse_body(&body).unwrap_err();
        assert_eq!(err, AddressError::Checksum);
        assert!(err.to_string().starts_with("mistyped"));

        // A key of small order, with a correct checksum.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = Address::from_bytes(identity);
        assert_eq!(weak.verifying_key(), Err(AddressError::NotAKey));
        assert_eq!(
            weak.to_string().parse::<Address>(),
            Err(AddressError::NotAKey)
        );
        // Bytes that are not a point at all (y = 2 has no x on the curve).
        let mut not_point = [0u8; 32];
        not_point[0] = 2;
        let bad = Address::from_bytes(not_point);
        assert_eq!(bad.verifying_key(), Err(AddressError::NotAKey));
        assert_eq!(
            bad.to_string().parse::<Address>(),
            Err(AddressError::NotAKey)
        );
        assert!(
            AddressError::NotAKey
                .to_string()
                .contains("valid account key")
        );
    }

    #[test]
    fn serde_is_the_32_key_bytes() {
        let a = random_addresses(1, 7)[0];
        let bytes = postcard::to_stdvec(&a).unwrap();
        assert_eq!(bytes, a.as_bytes());
        assert_eq!(postcard::from_bytes::<Address>(&bytes).unwrap(), a);
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC{0,100}") {
            let _ = s.parse::<Address>();
        }

        #[test]
        fn parsing_near_addresses_never_panics(
            cut in 0usize..75,
            extra in "[a-z2-7 \\-]{0,8}",
        ) {
            let text = random_addresses(1, 8)[0].to_string();
            let mut s = text[..cut].to_string();
            s.push_str(&extra);
            if let Ok(a) = s.parse::<Address>() {
                prop_assert_eq!(a.to_string().parse::<Address>(), Ok(a));
            }
        }

        #[test]
        fn any_key_bytes_round_trip_or_are_not_a_key(bytes in any::<[u8; 32]>()) {
            let a = Address::from_bytes(bytes);
            match a.to_string().parse::<Address>() {
                Ok(b) => prop_assert_eq!(a, b),
                Err(e) => {
                    prop_assert_eq!(e, AddressError::NotAKey);
                    prop_assert!(a.verifying_key().is_err());
                }
            }
        }
    }
}
