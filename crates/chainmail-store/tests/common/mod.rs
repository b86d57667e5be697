//! Shared test support: mailbox ids, item contents, quotas.

#![allow(dead_code, unreachable_pub)]

use chainmail_store::{MailboxId, Quota};

/// Mailbox id number `n`.
pub fn mailbox(n: u8) -> MailboxId {
    [n; 32]
}

/// A quota that never rejects anything.
pub const UNLIMITED: Quota = Quota {
    max_items: u64::MAX,
    max_bytes: u64::MAX,
    max_total_bytes: u64::MAX,
};

/// Deterministic contents of item number `i`, between 1 and 600 bytes, so
/// that a test can check the exact bytes it gets back.
pub fn contents(i: u64) -> Vec<u8> {
    let len = 1 + (i.wrapping_mul(2_654_435_761) % 600) as usize;
    let mut out = Vec::with_capacity(len);
    let mut x = i ^ 0x9E37_79B9_7F4A_7C15;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
