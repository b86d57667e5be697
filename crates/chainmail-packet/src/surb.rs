//! Single-use reply blocks.
//!
//! The creator builds a header for a route that ends in its own mailbox and
//! gives it away as a [`Surb`] together with a fresh reply key; it keeps the
//! [`SurbSecrets`]. The holder of the SURB puts a message under the reply key
//! and sends the packet to the SURB's first hop, without learning anything
//! about the rest of the route. Each hop removes one payload layer, as for
//! any packet; the creator adds them back, removes the reply key's layer and
//! checks the zero tag. A SURB used twice produces the same replay tag at its
//! first hop, so the network drops the second use.

use std::fmt;

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::crypto::LionessKey;
use crate::packet::{self, Final, OFF_EPOCH, build_header};
use crate::{
    Epoch, HEADER_SIZE, Hop, MESSAGE_SIZE, MailboxId, NODE_ID_SIZE, NodeId, PAYLOAD_SIZE, Packet,
    PacketError, SURB_ID_SIZE, SurbId, VERSION,
};

/// Size of an encoded [`Surb`]: version, first hop, header, reply key seed.
pub const SURB_SIZE: usize = 1 + NODE_ID_SIZE + HEADER_SIZE + 32;

/// A reply block, to be handed to the party that should reply.
#[derive(Clone)]
pub struct Surb {
    first_hop: NodeId,
    header: [u8; HEADER_SIZE],
    reply_seed: Zeroizing<[u8; 32]>,
}

/// What the creator of a SURB keeps in order to open the reply.
pub struct SurbSecrets {
    id: SurbId,
    hop_keys: Vec<LionessKey>,
    reply_seed: Zeroizing<[u8; 32]>,
}

/// Builds a SURB whose reply travels along `route` into `mailbox`.
pub fn build_surb<R: CryptoRng + ?Sized>(
    rng: &mut R,
    epoch: Epoch,
    route: &[Hop<'_>],
    mailbox: MailboxId,
) -> Result<(Surb, SurbSecrets), PacketError> {
    let first_hop = route
        .first()
        .map(|hop| hop.node)
        .ok_or(PacketError::RouteLength { actual: 0 })?;
    let mut id = [0u8; SURB_ID_SIZE];
    rng.fill_bytes(&mut id);
    let id = SurbId(id);
    let built = build_header(rng, epoch, route, Final::Reply(mailbox, id))?;
    let mut reply_seed = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut reply_seed[..]);
    let surb = Surb {
        first_hop,
        header: built.header,
        reply_seed: reply_seed.clone(),
    };
    let secrets = SurbSecrets {
        id,
        hop_keys: built.payload_keys,
        reply_seed,
    };
    Ok((surb, secrets))
}

impl Surb {
    /// The node to send the reply packet to.
    pub fn first_hop(&self) -> NodeId {
        self.first_hop
    }

    /// The epoch the SURB was made for: it is usable only while the mix keys
    /// of that epoch are live.
    pub fn epoch(&self) -> Epoch {
        let b = &self.header[OFF_EPOCH..OFF_EPOCH + 4];
        Epoch(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Uses the SURB: returns the reply packet carrying `message` (at most
    /// [`MESSAGE_SIZE`] bytes), to be sent to [`Surb::first_hop`].
    pub fn into_reply(self, message: &[u8]) -> Result<Packet, PacketError> {
        let mut payload = packet::plaintext_payload(message)?;
        LionessKey::expand_seed(&self.reply_seed).encrypt(&mut payload[..]);
        Ok(packet::packet_from_header(&self.header, &payload))
    }

    /// Encodes the SURB for carrying inside a message.
    pub fn to_bytes(&self) -> [u8; SURB_SIZE] {
        let mut out = [0u8; SURB_SIZE];
        out[0] = VERSION;
        out[1..33].copy_from_slice(&self.first_hop.0);
        out[33..33 + HEADER_SIZE].copy_from_slice(&self.header);
        out[33 + HEADER_SIZE..].copy_from_slice(&self.reply_seed[..]);
        out
    }

    /// Decodes a SURB received from a peer. Its header is opaque and is
    /// authenticated by the hops when the reply travels.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PacketError> {
        if bytes.len() != SURB_SIZE {
            return Err(PacketError::WrongSize {
                what: "a SURB",
                expected: SURB_SIZE,
                actual: bytes.len(),
            });
        }
        if bytes[0] != VERSION || bytes[33] != VERSION {
            let v = if bytes[0] != VERSION {
                bytes[0]
            } else {
                bytes[33]
            };
            return Err(PacketError::UnsupportedVersion(v));
        }
        let mut first_hop = [0u8; NODE_ID_SIZE];
        first_hop.copy_from_slice(&bytes[1..33]);
        let mut header = [0u8; HEADER_SIZE];
        header.copy_from_slice(&bytes[33..33 + HEADER_SIZE]);
        let mut reply_seed = Zeroizing::new([0u8; 32]);
        reply_seed.copy_from_slice(&bytes[33 + HEADER_SIZE..]);
        Ok(Surb {
            first_hop: NodeId(first_hop),
            header,
            reply_seed,
        })
    }
}

impl fmt::Debug for Surb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Surb")
            .field("first_hop", &self.first_hop)
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

impl SurbSecrets {
    /// The SURB's id, under which the reply arrives in the mailbox.
    pub fn id(&self) -> SurbId {
        self.id
    }

    /// Opens a reply that arrived through this SURB: restores the layers the
    /// hops removed, removes the reply key's layer and authenticates the
    /// result. A reply modified anywhere on its way fails here.
    pub fn open(
        &self,
        surb_id: SurbId,
        payload: &[u8; PAYLOAD_SIZE],
    ) -> Result<Box<[u8; MESSAGE_SIZE]>, PacketError> {
        if surb_id != self.id {
            return Err(PacketError::SurbMismatch {
                reply: surb_id.to_string(),
                ours: self.id.to_string(),
            });
        }
        let mut buf = Zeroizing::new(*payload);
        for key in self.hop_keys.iter().rev() {
            key.encrypt(&mut buf[..]);
        }
        LionessKey::expand_seed(&self.reply_seed).decrypt(&mut buf[..]);
        packet::open_payload(&buf)
    }

    /// Encodes the secrets for the creator's own storage (they are keys:
    /// store them encrypted).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(
            2 + SURB_ID_SIZE + self.hop_keys.len() * LionessKey::SIZE + 32,
        ));
        out.push(VERSION);
        out.extend_from_slice(&self.id.0);
        // The route length is at most MAX_HOPS, so it fits a byte.
        out.push(self.hop_keys.len() as u8);
        for key in &self.hop_keys {
            out.extend_from_slice(&key.to_bytes()[..]);
        }
        out.extend_from_slice(&self.reply_seed[..]);
        out
    }

    /// Decodes secrets written by [`SurbSecrets::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PacketError> {
        let fixed = 2 + SURB_ID_SIZE + 32;
        let hops = bytes.get(1 + SURB_ID_SIZE).copied().unwrap_or(0) as usize;
        let expected = fixed + hops * LionessKey::SIZE;
        if bytes.len() != expected || bytes.len() < fixed {
            return Err(PacketError::WrongSize {
                what: "SURB secrets",
                expected,
                actual: bytes.len(),
            });
        }
        if bytes[0] != VERSION {
            return Err(PacketError::UnsupportedVersion(bytes[0]));
        }
        if hops == 0 || hops > crate::MAX_HOPS {
            return Err(PacketError::RouteLength { actual: hops });
        }
        let mut id = [0u8; SURB_ID_SIZE];
        id.copy_from_slice(&bytes[1..1 + SURB_ID_SIZE]);
        let keys_start = 2 + SURB_ID_SIZE;
        let keys_end = keys_start + hops * LionessKey::SIZE;
        let hop_keys = bytes[keys_start..keys_end]
            .chunks_exact(LionessKey::SIZE)
            .map(LionessKey::from_bytes)
            .collect();
        let mut reply_seed = Zeroizing::new([0u8; 32]);
        reply_seed.copy_from_slice(&bytes[keys_end..]);
        Ok(SurbSecrets {
            id: SurbId(id),
            hop_keys,
            reply_seed,
        })
    }
}

impl fmt::Debug for SurbSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SurbSecrets")
            .field("id", &self.id)
            .field("hops", &self.hop_keys.len())
            .finish_non_exhaustive()
    }
}
