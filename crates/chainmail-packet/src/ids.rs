//! Small fixed-size identifiers carried in packets.

use std::fmt;

use crate::{MAILBOX_ID_SIZE, NODE_ID_SIZE, REPLAY_TAG_SIZE, SURB_ID_SIZE};

macro_rules! byte_id {
    ($(#[$doc:meta])* $name:ident, $size:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        pub struct $name(pub [u8; $size]);

        impl $name {
            /// The identifier's bytes.
            pub fn as_bytes(&self) -> &[u8; $size] {
                &self.0
            }
        }

        impl From<[u8; $size]> for $name {
            fn from(bytes: [u8; $size]) -> Self {
                Self(bytes)
            }
        }

        impl fmt::Debug for $name {
            // Identifiers are metadata: show enough to tell them apart in a
            // test failure, not enough to be a useful log of who is who.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:02x}{:02x}{:02x}{:02x}…)"),
                    self.0[0], self.0[1], self.0[2], self.0[3])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in &self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    };
}

byte_id!(
    /// A mix node, named by the 32-byte Ed25519 public key of its libp2p
    /// identity (from which its peer id follows).
    NodeId,
    NODE_ID_SIZE
);
byte_id!(
    /// A mailbox at a provider.
    MailboxId,
    MAILBOX_ID_SIZE
);
byte_id!(
    /// Identifies a SURB to its creator when the reply arrives. Random, so
    /// it tells the provider nothing but "this is a reply".
    SurbId,
    SURB_ID_SIZE
);
byte_id!(
    /// Per-hop replay tag: the same packet seen twice at the same node with
    /// the same key gives the same tag; nobody but that node can compute it.
    ReplayTag,
    REPLAY_TAG_SIZE
);

/// Identifier of a mix-key epoch. A packet names the epoch whose keys it was
/// made for; nodes keep the keys of the live epochs and reject the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Epoch(pub u32);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}
