#![doc = include_str!("../README.md")]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod addrs;
mod behaviour;
mod config;
mod direct;
mod driver;
mod error;
mod keys;
mod limiter;
mod metrics;
mod packet;
mod protocol;
mod redial;
mod sources;
mod topics;

pub use addrs::AddressScope;
pub use config::{
    IdentitySecret, Limits, NetConfig, ProtocolNames, RateLimit, RelayLimits, Timeouts,
};
pub use direct::{DirectLink, DirectPlan, LinkState, MAX_DIRECT_PEERS, MAX_RELAYS};
pub use driver::{
    Net, NetEvent, NetEvents, NetHandle, Probe, Reachability, ReplyHandle, RequestKind,
    TopicMessageId, Verdict,
};
pub use error::NetError;
pub use keys::{node_key_from_peer_id, peer_id_from_node_key};
pub use libp2p::{Multiaddr, PeerId, multiaddr};
pub use metrics::{DroppedFrames, NetMetrics};
pub use redial::PeerReach;
pub use topics::MAX_TOPIC_LEN;

/// Size of every mix packet frame on the packet stream protocol, in bytes.
///
/// The same value as `chainmail_packet::PACKET_SIZE`; this crate does not
/// depend on the packet format, it only moves frames of this size.
pub const PACKET_SIZE: usize = 2048;

/// One mix packet as it travels on the wire: exactly [`PACKET_SIZE`] bytes.
pub type Frame = [u8; PACKET_SIZE];
