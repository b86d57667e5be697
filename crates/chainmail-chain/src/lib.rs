#![doc = include_str!("../README.md")]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod chain;
mod codec;
mod community;
mod crypto;
mod error;
mod state;
mod types;
mod wire;

pub use chain::{Chain, Equivocation, Insertion, TipChange};
pub use community::{
    Community, Config, Event, LogEntry, LogWhat, Output, Received, Saved, Stats, SyncProgress,
};
pub use crypto::{EpochKey, Hash, MemberKeys, MemberSecret, WRAP_LEN, sha512_256};
pub use error::ChainError;
pub use state::{MemberInfo, State};
pub use types::{
    Block, BlockId, Body, GENESIS_VERSION, Genesis, MemberId, Policy, Record, RecordId, Role,
};
pub use wire::{
    Letter, MAX_ADDR_LEN, MAX_ADDRS, MAX_PEERS, MAX_WANT, PeerEntry, SyncRequest, SyncResponse,
    Want, merge_peers, open_peers, rendezvous_key, seal_peers, sync_tag, topic_suffix,
};

/// Bounds every node enforces.
pub mod limits {
    /// Longest member or community name, bytes.
    pub const MAX_NAME: usize = 64;
    /// Most members of one community (a key rotation wraps the key for
    /// each, 80 bytes apiece, and must fit in a block).
    pub const MAX_MEMBERS: u32 = 512;
    /// Longest post, bytes of text.
    pub const MAX_POST_BYTES: usize = 8 * 1024;
    /// Largest encoded record.
    pub const MAX_RECORD_BYTES: usize = 48 * 1024;
    /// Most records in one block.
    pub const MAX_RECORDS_PER_BLOCK: usize = 256;
    /// Largest encoded block (fits one gossip message).
    pub const MAX_BLOCK_BYTES: usize = 60 * 1024;
    /// A record is valid only within this many heights after its anchor.
    pub const ANCHOR_WINDOW: u64 = 256;
    /// Most tolerated clock skew: blocks and records dated later than
    /// this after the receiver's clock (records: after their block) are
    /// refused.
    pub const MAX_SKEW_MS: u64 = 120_000;
    /// Blocks held while their parent is missing.
    pub const MAX_ORPHANS: usize = 1_024;
    /// Equivocations kept as evidence.
    pub const MAX_EVIDENCE: usize = 64;
    /// Gossiped records held while the block they are anchored to has
    /// not arrived yet.
    pub const MAX_EARLY_RECORDS: usize = 256;
    /// Our own actions held because the best chain does not allow them
    /// now (see `Config::hold_ms`).
    pub const MAX_HELD_ACTIONS: usize = 64;
    /// Most blocks in one sync response.
    pub const MAX_SYNC_BLOCKS: usize = 2_000;
    /// Sync requests older or newer than this are refused.
    pub const MAX_SYNC_AGE_MS: u64 = 600_000;
}

/// First eight hex digits of an id, for logs and debug output.
pub fn short(id: &[u8; 32]) -> String {
    id[..4].iter().map(|b| format!("{b:02x}")).collect()
}
