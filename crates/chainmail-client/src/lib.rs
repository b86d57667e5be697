//! Chainmail's agent: the user's side, sans-IO.
//!
//! One state machine holds the messenger (`chainmail-session`), the mixnet
//! client (`chainmail-mixnet`) and the communities (`chainmail-chain`). Its
//! only network peers are its own providers: packets, acknowledgements and
//! mailbox fetches leave through them, and DHT lookups and publications
//! travel through the mixnet as errands that a provider carries out and
//! answers through SURBs. Community swarm traffic, which does reveal the
//! node to members, is a separate, labelled output
//! ([`Output::Swarm`]).
//!
//! The agent does no I/O and reads no clock: a driver (the node, a browser
//! page, a simulation) gives it inputs and the time, stores the batches it
//! asks for, and carries out its outputs in order. See [`Agent`].

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agent;
mod community;
mod direct;
mod errands;
pub mod hex;
mod requests;
mod storage;

pub use agent::{Agent, AgentConfig, AgentError, AgentStats, Input, Output, new_account};
pub use community::{CommunityRequest, InviteView, MAX_IMPORT_BLOCKS, SwarmAction, Verdict};
pub use direct::{Card, DirectPlan, DirectView, LETTER_TAG, MAX_CARD_ADDRS};
pub use requests::{
    AccountRequest, AdvisoryPublished, ContactChange, ContactView, DirectChange, HistoryEntry,
    IdentityExport, Queued, Response, SafetyNumberView, SentMessage, Whoami,
};
pub use storage::{Batch, MemoryStorage, Record, Storage, StorageError, Table};
