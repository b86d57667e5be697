//! Safety numbers: 60 digits two people compare out of band (in person,
//! on a call) to check that nobody sits between them.
//!
//! Each party contributes 30 digits derived from its identity address and
//! its Olm Curve25519 identity key; the two halves are put in a fixed order,
//! so both sides compute the same number. If either side's address or key
//! is not what the other side believes, the numbers differ.

use std::fmt;
use std::str::FromStr;

use crate::{Address, SessionError};

const CONTEXT: &str = "chainmail safety number v1";
/// Digits in a safety number.
pub const SAFETY_DIGITS: usize = 60;
const GROUPS: usize = 12;
const GROUP_DIGITS: usize = 5;
const GROUPS_PER_PARTY: usize = GROUPS / 2;
const GROUPS_PER_LINE: usize = 4;
const GROUP_MODULUS: u64 = 100_000;

/// A safety number: twelve groups of five decimal digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SafetyNumber([u32; GROUPS]);

/// One party's six groups: chunks of five bytes of
/// `BLAKE3-derive_key("chainmail safety number v1", address ‖ curve_key)`,
/// each read as a big-endian integer modulo 100000.
fn half(address: &Address, curve_key: &[u8; 32]) -> [u32; GROUPS_PER_PARTY] {
    let mut h = blake3::Hasher::new_derive_key(CONTEXT);
    h.update(address.as_bytes()).update(curve_key);
    let digest = h.finalize();
    let mut out = [0u32; GROUPS_PER_PARTY];
    for (group, chunk) in out.iter_mut().zip(digest.as_bytes().chunks_exact(5)) {
        let value = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        // Below 100000, so it fits.
        *group = (value % GROUP_MODULUS) as u32;
    }
    out
}

/// The safety number of the conversation between two parties, each given
/// as (identity address, Olm Curve25519 identity key). The argument order
/// does not matter: the half of the party with the smaller address bytes
/// comes first (if the addresses are equal, the smaller Curve25519 key).
pub fn safety_number(a: (&Address, &[u8; 32]), b: (&Address, &[u8; 32])) -> SafetyNumber {
    let (first, second) = if (a.0.as_bytes(), a.1) <= (b.0.as_bytes(), b.1) {
        (a, b)
    } else {
        (b, a)
    };
    let mut groups = [0u32; GROUPS];
    groups[..GROUPS_PER_PARTY].copy_from_slice(&half(first.0, first.1));
    groups[GROUPS_PER_PARTY..].copy_from_slice(&half(second.0, second.1));
    SafetyNumber(groups)
}

impl SafetyNumber {
    /// The twelve groups, each below 100000.
    pub fn groups(&self) -> [u32; GROUPS] {
        self.0
    }

    /// The number in three lines of four groups, the way it is shown for
    /// reading aloud.
    pub fn lines(&self) -> [String; 3] {
        let line = |i: usize| {
            self.0[i * GROUPS_PER_LINE..(i + 1) * GROUPS_PER_LINE]
                .iter()
                .map(|g| format!("{g:05}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        [line(0), line(1), line(2)]
    }

    /// Reads a safety number typed by a person: the 60 digits, with any
    /// whitespace anywhere (so the other side's number can be typed in and
    /// compared with `==`).
    pub fn parse(text: &str) -> Result<SafetyNumber, SessionError> {
        let mut groups = [0u32; GROUPS];
        let mut digits = 0usize;
        for (i, c) in text.chars().enumerate() {
            if c.is_whitespace() {
                continue;
            }
            let d = c.to_digit(10).ok_or_else(|| SessionError::Malformed {
                what: "safety number",
                detail: format!(
                    "{c:?} at position {} is not a digit; a safety number is 60 digits",
                    i + 1
                ),
            })?;
            if let Some(g) = groups.get_mut(digits / GROUP_DIGITS) {
                *g = *g * 10 + d;
            }
            digits += 1;
        }
        if digits != SAFETY_DIGITS {
            return Err(SessionError::Malformed {
                what: "safety number",
                detail: format!(
                    "it has {digits} digits but must have {SAFETY_DIGITS}; check that it was typed completely"
                ),
            });
        }
        Ok(SafetyNumber(groups))
    }
}

impl FromStr for SafetyNumber {
    type Err = SessionError;

    fn from_str(s: &str) -> Result<Self, SessionError> {
        SafetyNumber::parse(s)
    }
}

impl fmt::Display for SafetyNumber {
    /// One line: twelve groups of five digits separated by spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{g:05}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyNumber({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parties() -> ((Address, [u8; 32]), (Address, [u8; 32])) {
        (
            (Address::from_bytes([1; 32]), [2; 32]),
            (Address::from_bytes([3; 32]), [4; 32]),
        )
    }

    #[test]
    fn test_vector() {
        let ((a, ka), (b, kb)) = parties();
        let n = safety_number((&a, &ka), (&b, &kb));
        assert_eq!(
            n.to_string(),
            "31874 18856 58202 15924 34136 61826 38752 97889 38248 43419 60890 34594"
        );
    }

    #[test]
    fn both_sides_compute_the_same_number() {
        let ((a, ka), (b, kb)) = parties();
        let ab = safety_number((&a, &ka), (&b, &kb));
        let ba = safety_number((&b, &kb), (&a, &ka));
        assert_eq!(ab, ba);
        assert_eq!(ab.groups()[..6], half(&a, &ka));
        assert_eq!(ab.groups()[6..], half(&b, &kb));
    }

    #[test]
    fn equal_addresses_are_ordered_by_key() {
        let a = Address::from_bytes([5; 32]);
        let n1 = safety_number((&a, &[1; 32]), (&a, &[2; 32]));
        let n2 = safety_number((&a, &[2; 32]), (&a, &[1; 32]));
        assert_eq!(n1, n2);
        assert_eq!(n1.groups()[..6], half(&a, &[1; 32]));
    }

    #[test]
    fn changes_if_any_key_changes() {
        let ((a, ka), (b, kb)) = parties();
        let n = safety_number((&a, &ka), (&b, &kb));
        let other = Address::from_bytes([9; 32]);
        assert_ne!(n, safety_number((&other, &ka), (&b, &kb)));
        assert_ne!(n, safety_number((&a, &[9; 32]), (&b, &kb)));
        assert_ne!(n, safety_number((&a, &ka), (&other, &kb)));
        assert_ne!(n, safety_number((&a, &ka), (&b, &[9; 32])));
        // Swapping which key belongs to whom changes it too.
        assert_ne!(n, safety_number((&a, &kb), (&b, &ka)));
    }

    #[test]
    fn display_and_lines() {
        let n = SafetyNumber([1, 22, 333, 4444, 55555, 99999, 0, 10, 100, 1000, 10000, 7]);
        assert_eq!(
            n.to_string(),
            "00001 00022 00333 04444 55555 99999 00000 00010 00100 01000 10000 00007"
        );
        assert_eq!(
            n.lines(),
            [
                "00001 00022 00333 04444".to_string(),
                "55555 99999 00000 00010".to_string(),
                "00100 01000 10000 00007".to_string(),
            ]
        );
        assert_eq!(format!("{n:?}"), format!("SafetyNumber({n})"));
    }

    #[test]
    fn parse_accepts_any_whitespace() {
        let ((a, ka), (b, kb)) = parties();
        let n = safety_number((&a, &ka), (&b, &kb));
        let text = n.to_string();
        assert_eq!(SafetyNumber::parse(&text).unwrap(), n);
        assert_eq!(SafetyNumber::parse(&n.lines().join("\n")).unwrap(), n);
        assert_eq!(text.replace(' ', "").parse::<SafetyNumber>().unwrap(), n);
        let spaced: String = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .flat_map(|c| [c, ' ', '\t'])
            .collect();
        assert_eq!(SafetyNumber::parse(&format!("\n {spaced}\r\n")).unwrap(), n);
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let err = SafetyNumber::parse("12345 6789x").unwrap_err();
        assert!(err.to_string().contains("'x' at position 11"), "{err}");
        let err = SafetyNumber::parse(&"1".repeat(59)).unwrap_err();
        assert!(err.to_string().contains("59 digits"), "{err}");
        assert!(SafetyNumber::parse(&"1".repeat(61)).is_err());
        assert!(SafetyNumber::parse("").is_err());
        assert!(SafetyNumber::parse(&"١".repeat(60)).is_err());
        assert!(SafetyNumber::parse(&"-1".repeat(30)).is_err());
    }

    proptest! {
        #[test]
        fn symmetric_and_round_trips(
            a in any::<[u8; 32]>(), ka in any::<[u8; 32]>(),
            b in any::<[u8; 32]>(), kb in any::<[u8; 32]>(),
        ) {
            let (a, b) = (Address::from_bytes(a), Address::from_bytes(b));
            let n = safety_number((&a, &ka), (&b, &kb));
            prop_assert_eq!(n, safety_number((&b, &kb), (&a, &ka)));
            prop_assert!(n.groups().iter().all(|g| *g < 100_000));
            prop_assert_eq!(n.to_string().len(), 12 * 5 + 11);
            prop_assert_eq!(SafetyNumber::parse(&n.to_string()).unwrap(), n);
            prop_assert_eq!(SafetyNumber::parse(&n.lines().join("\n")).unwrap(), n);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,100}") {
            let _ = SafetyNumber::parse(&s);
        }
    }
}
