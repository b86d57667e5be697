#![doc = include_str!("../README.md")]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod crypto;
mod error;
mod ids;
mod keys;
mod packet;
mod surb;

pub use error::PacketError;
pub use ids::{Epoch, MailboxId, NodeId, ReplayTag, SurbId};
pub use keys::{HopKey, MixPublicKey, MixSecretKey};
pub use packet::{Action, Hop, Packet, Processed, build_packet};
pub use surb::{SURB_SIZE, Surb, SurbSecrets, build_surb};

/// Format version, the first byte of every packet and SURB.
pub const VERSION: u8 = 1;
/// Size of every packet on the wire, whatever it carries.
pub const PACKET_SIZE: usize = 2048;
/// Maximum number of hops of a route.
pub const MAX_HOPS: usize = 5;
/// Size of one hop's routing block inside the header.
pub const ROUTING_BLOCK_SIZE: usize = 88;
/// Size of the header MAC.
pub const HEADER_MAC_SIZE: usize = 16;
/// Size of the header: version, epoch, ephemeral key, MAC, routing blocks.
pub const HEADER_SIZE: usize = 1 + 4 + 32 + HEADER_MAC_SIZE + MAX_HOPS * ROUTING_BLOCK_SIZE;
/// Size of the payload on the wire.
pub const PAYLOAD_SIZE: usize = PACKET_SIZE - HEADER_SIZE;
/// Size of the payload's authentication tag (zero bytes under the wide-block
/// cipher).
pub const PAYLOAD_TAG_SIZE: usize = 16;
/// Bytes of message one packet carries.
pub const MESSAGE_SIZE: usize = PAYLOAD_SIZE - PAYLOAD_TAG_SIZE;
/// Size of a [`NodeId`].
pub const NODE_ID_SIZE: usize = 32;
/// Size of a [`MailboxId`].
pub const MAILBOX_ID_SIZE: usize = 32;
/// Size of a [`SurbId`].
pub const SURB_ID_SIZE: usize = 16;
/// Size of a [`ReplayTag`].
pub const REPLAY_TAG_SIZE: usize = 16;

const _: () = assert!(MESSAGE_SIZE >= 1536, "at least 1.5 KiB of payload");
