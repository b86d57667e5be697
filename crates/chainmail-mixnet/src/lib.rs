#![doc = include_str!("../README.md")]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod client;
pub mod descriptor;
pub mod directory;
mod error;
mod keys;
pub mod mailbox;
pub mod message;
pub mod node;
mod params;
pub mod replay;
pub mod service;
mod time;

pub use client::{Client, ClientConfig, ClientEvent, ClientKeys, ClientStats};
pub use descriptor::{NodeDescriptor, Roles, network_hash};
pub use directory::{DescriptorSet, DirNode, EpochDirectory, Inserted, exponential_ms};
pub use error::MixnetError;
pub use keys::{KeyRing, Rotation};
pub use mailbox::{MailboxStore, MemoryMailboxes};
pub use node::{
    DropReason, MAX_PACKETS_PER_S, Node, NodeConfig, NodeEvent, NodeStats, ReplayStatus, Transmit,
    replay_capacity_for,
};
pub use params::{MAX_DELAY_FACTOR, Params, Preset, TrafficRates};
pub use replay::{Recorded, ReplayFilter};
pub use service::{Answer, Errand, ErrandId};
pub use time::Time;
