//! Building and processing packets.

use std::fmt;

use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::crypto::{self, HopKeys, LionessKey};
use crate::{
    Epoch, HEADER_MAC_SIZE, HEADER_SIZE, HopKey, MAILBOX_ID_SIZE, MAX_HOPS, MESSAGE_SIZE,
    MailboxId, MixSecretKey, NODE_ID_SIZE, NodeId, PACKET_SIZE, PAYLOAD_SIZE, PAYLOAD_TAG_SIZE,
    PacketError, ROUTING_BLOCK_SIZE, ReplayTag, SURB_ID_SIZE, SurbId, VERSION,
};

// Byte offsets in a packet; the table in the crate README is the reference.
pub(crate) const OFF_EPOCH: usize = 1;
pub(crate) const OFF_ALPHA: usize = 5;
pub(crate) const OFF_GAMMA: usize = OFF_ALPHA + 32;
pub(crate) const OFF_BETA: usize = OFF_GAMMA + HEADER_MAC_SIZE;
/// Size of the encrypted routing information: one block per possible hop.
pub(crate) const BETA_SIZE: usize = MAX_HOPS * ROUTING_BLOCK_SIZE;
/// Length of one hop's header keystream: the routing information plus the
/// block that shifts in at the end.
const STREAM_SIZE: usize = BETA_SIZE + ROUTING_BLOCK_SIZE;

const _: () = assert!(OFF_BETA + BETA_SIZE == HEADER_SIZE);
const _: () = assert!(HEADER_SIZE + PAYLOAD_SIZE == PACKET_SIZE);

// Routing command types.
const CMD_RELAY: u8 = 0x01;
const CMD_DELIVER: u8 = 0x02;
const CMD_DELIVER_REPLY: u8 = 0x03;

// Routing block layout.
const RB_ADDR: usize = 1;
const RB_DELAY: usize = RB_ADDR + 32;
const RB_ALPHA: usize = RB_DELAY + 4;
const RB_GAMMA: usize = RB_ALPHA + 32;
const RB_END: usize = RB_GAMMA + HEADER_MAC_SIZE;
const _: () = assert!(RB_END <= ROUTING_BLOCK_SIZE);
const _: () = assert!(NODE_ID_SIZE == 32 && MAILBOX_ID_SIZE == 32);

/// One hop of a route, as the sender sees it.
#[derive(Clone, Debug)]
pub struct Hop<'a> {
    /// The node.
    pub node: NodeId,
    /// Its mix public key for the packet's epoch.
    pub key: &'a HopKey,
    /// How long this hop holds the packet before passing it on, in
    /// milliseconds (drawn by the sender; Loopix uses an exponential
    /// distribution).
    pub delay_ms: u32,
}

/// A packet as it travels between nodes: always [`PACKET_SIZE`] bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Packet(Box<[u8; PACKET_SIZE]>);

impl Packet {
    /// Decodes a packet received from the network. Only the size and the
    /// version are checked here; everything else is authenticated by
    /// [`MixSecretKey::process`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PacketError> {
        let array: [u8; PACKET_SIZE] = bytes.try_into().map_err(|_| PacketError::WrongSize {
            what: "a packet",
            expected: PACKET_SIZE,
            actual: bytes.len(),
        })?;
        if array[0] != VERSION {
            return Err(PacketError::UnsupportedVersion(array[0]));
        }
        Ok(Packet(Box::new(array)))
    }

    /// The packet's bytes, to put on the wire.
    pub fn as_bytes(&self) -> &[u8; PACKET_SIZE] {
        &self.0
    }

    /// The epoch whose mix key this packet is for: tells the node which of
    /// its live keys to process it with.
    pub fn epoch(&self) -> Epoch {
        Epoch(read_u32(&self.0[OFF_EPOCH..]))
    }

    fn from_parts(header: &[u8; HEADER_SIZE], payload: &[u8; PAYLOAD_SIZE]) -> Self {
        let mut bytes = Box::new([0u8; PACKET_SIZE]);
        bytes[..HEADER_SIZE].copy_from_slice(header);
        bytes[HEADER_SIZE..].copy_from_slice(payload);
        Packet(bytes)
    }
}

impl fmt::Debug for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packet")
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

/// What a node does with a packet it processed successfully.
#[derive(Debug)]
pub struct Processed {
    /// Replay tag of this packet at this node and key: the caller drops the
    /// packet if it has seen the tag before.
    pub replay_tag: ReplayTag,
    /// What to do with it.
    pub action: Action,
}

/// The routing decision of one hop.
#[derive(Debug)]
#[non_exhaustive]
pub enum Action {
    /// Hold the packet for `delay_ms`, then send it to `next`.
    Forward {
        /// Next hop.
        next: NodeId,
        /// Delay chosen by the sender, in milliseconds.
        delay_ms: u32,
        /// The packet for the next hop.
        packet: Packet,
    },
    /// This node is the last hop: store the message in a mailbox. The
    /// payload was authenticated.
    Deliver {
        /// Mailbox to store into.
        mailbox: MailboxId,
        /// Delay chosen by the sender, in milliseconds.
        delay_ms: u32,
        /// The message, zero-padded to [`MESSAGE_SIZE`].
        message: Box<[u8; MESSAGE_SIZE]>,
    },
    /// This node is the last hop of a reply sent with a SURB: store the
    /// still-encrypted payload with the SURB id in the mailbox; only the
    /// SURB's creator can open (and authenticate) it.
    DeliverReply {
        /// Mailbox to store into.
        mailbox: MailboxId,
        /// Delay chosen by the SURB creator, in milliseconds.
        delay_ms: u32,
        /// Which SURB the reply came through.
        surb_id: SurbId,
        /// The encrypted payload, for [`SurbSecrets::open`](crate::SurbSecrets::open).
        payload: Box<[u8; PAYLOAD_SIZE]>,
    },
}

/// What the last hop of a header does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Final {
    Deliver(MailboxId),
    Reply(MailboxId, SurbId),
}

/// One hop's routing command, as encoded in its routing block.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Relay {
        next: NodeId,
        delay_ms: u32,
        alpha: [u8; 32],
        gamma: [u8; HEADER_MAC_SIZE],
    },
    Deliver {
        mailbox: MailboxId,
        delay_ms: u32,
    },
    DeliverReply {
        mailbox: MailboxId,
        delay_ms: u32,
        surb_id: SurbId,
    },
}

impl Command {
    fn encode(&self) -> [u8; ROUTING_BLOCK_SIZE] {
        let mut b = [0u8; ROUTING_BLOCK_SIZE];
        match self {
            Command::Relay {
                next,
                delay_ms,
                alpha,
                gamma,
            } => {
                b[0] = CMD_RELAY;
                b[RB_ADDR..RB_DELAY].copy_from_slice(&next.0);
                b[RB_DELAY..RB_ALPHA].copy_from_slice(&delay_ms.to_be_bytes());
                b[RB_ALPHA..RB_GAMMA].copy_from_slice(alpha);
                b[RB_GAMMA..RB_END].copy_from_slice(gamma);
            }
            Command::Deliver { mailbox, delay_ms } => {
                b[0] = CMD_DELIVER;
                b[RB_ADDR..RB_DELAY].copy_from_slice(&mailbox.0);
                b[RB_DELAY..RB_ALPHA].copy_from_slice(&delay_ms.to_be_bytes());
            }
            Command::DeliverReply {
                mailbox,
                delay_ms,
                surb_id,
            } => {
                b[0] = CMD_DELIVER_REPLY;
                b[RB_ADDR..RB_DELAY].copy_from_slice(&mailbox.0);
                b[RB_DELAY..RB_ALPHA].copy_from_slice(&delay_ms.to_be_bytes());
                b[RB_ALPHA..RB_ALPHA + SURB_ID_SIZE].copy_from_slice(&surb_id.0);
            }
        }
        b
    }

    /// Decodes a routing block. Unused bytes must be zero, so that every
    /// command has exactly one encoding.
    fn decode(b: &[u8]) -> Result<Self, PacketError> {
        let kind = b[0];
        let addr = read_32(&b[RB_ADDR..]);
        let delay_ms = read_u32(&b[RB_DELAY..]);
        let all_zero = |range: &[u8]| range.iter().all(|x| *x == 0);
        let command = match kind {
            CMD_RELAY if all_zero(&b[RB_END..]) => Command::Relay {
                next: NodeId(addr),
                delay_ms,
                alpha: read_32(&b[RB_ALPHA..]),
                gamma: read_16(&b[RB_GAMMA..]),
            },
            CMD_DELIVER if all_zero(&b[RB_ALPHA..]) => Command::Deliver {
                mailbox: MailboxId(addr),
                delay_ms,
            },
            CMD_DELIVER_REPLY if all_zero(&b[RB_ALPHA + SURB_ID_SIZE..]) => Command::DeliverReply {
                mailbox: MailboxId(addr),
                delay_ms,
                surb_id: SurbId(read_16(&b[RB_ALPHA..])),
            },
            _ => return Err(PacketError::InvalidCommand(kind)),
        };
        Ok(command)
    }
}

/// A header together with the payload keys of its hops, in route order.
pub(crate) struct BuiltHeader {
    pub(crate) header: [u8; HEADER_SIZE],
    pub(crate) payload_keys: Vec<LionessKey>,
}

/// Builds the layered header for `route`, ending in `last`.
///
/// Hop `i` gets a fresh ephemeral key `e_i`; the header carries `alpha_0`
/// and every routing block carries the next hop's `alpha_{i+1}` under the
/// encryption of hop `i`, so each hop does exactly one X25519 and no two
/// hops see a common value. The filler makes the header shift by one routing
/// block per hop while its size and every MAC stay correct.
pub(crate) fn build_header<R: CryptoRng + ?Sized>(
    rng: &mut R,
    epoch: Epoch,
    route: &[Hop<'_>],
    last: Final,
) -> Result<BuiltHeader, PacketError> {
    let n = route.len();
    if n == 0 || n > MAX_HOPS {
        return Err(PacketError::RouteLength { actual: n });
    }

    let mut alphas = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut streams = Vec::with_capacity(n);
    for hop in route {
        let mut ephemeral = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut ephemeral[..]);
        let alpha = crypto::x25519_base(&ephemeral);
        let shared = hop
            .key
            .agree(&ephemeral)
            .ok_or(PacketError::InvalidPublicKey)?;
        let hop_keys = HopKeys::derive(&shared, epoch, &alpha, &hop.key.public().0);
        let mut stream = Zeroizing::new([0u8; STREAM_SIZE]);
        crypto::xor_stream(&hop_keys.header_stream, &mut stream[..]);
        alphas.push(alpha);
        keys.push(hop_keys);
        streams.push(stream);
    }

    // Filler: what hops 0..n-2 shift in at the end of the header, as the
    // last hop will see it.
    let mut filler = Vec::with_capacity((n - 1) * ROUTING_BLOCK_SIZE);
    for stream in &streams[..n - 1] {
        filler.extend_from_slice(&[0u8; ROUTING_BLOCK_SIZE]);
        let tail = &stream[STREAM_SIZE - filler.len()..];
        for (f, s) in filler.iter_mut().zip(tail) {
            *f ^= s;
        }
    }

    // The last hop's routing information: its command, random padding (so
    // that it cannot tell the route length), then the filler.
    let last_delay = route[n - 1].delay_ms;
    let last_command = match last {
        Final::Deliver(mailbox) => Command::Deliver {
            mailbox,
            delay_ms: last_delay,
        },
        Final::Reply(mailbox, surb_id) => Command::DeliverReply {
            mailbox,
            delay_ms: last_delay,
            surb_id,
        },
    };
    let plain = BETA_SIZE - filler.len();
    let mut beta = [0u8; BETA_SIZE];
    beta[..ROUTING_BLOCK_SIZE].copy_from_slice(&last_command.encode());
    rng.fill_bytes(&mut beta[ROUTING_BLOCK_SIZE..plain]);
    for (b, s) in beta[..plain].iter_mut().zip(&streams[n - 1][..]) {
        *b ^= s;
    }
    beta[plain..].copy_from_slice(&filler);
    let mut gamma = crypto::header_mac(&keys[n - 1].header_mac, epoch, &beta);

    // Wrap the earlier hops around it, innermost first.
    for i in (0..n - 1).rev() {
        let command = Command::Relay {
            next: route[i + 1].node,
            delay_ms: route[i].delay_ms,
            alpha: alphas[i + 1],
            gamma,
        };
        let mut wrapped = [0u8; BETA_SIZE];
        wrapped[..ROUTING_BLOCK_SIZE].copy_from_slice(&command.encode());
        wrapped[ROUTING_BLOCK_SIZE..].copy_from_slice(&beta[..BETA_SIZE - ROUTING_BLOCK_SIZE]);
        for (b, s) in wrapped.iter_mut().zip(&streams[i][..]) {
            *b ^= s;
        }
        beta = wrapped;
        gamma = crypto::header_mac(&keys[i].header_mac, epoch, &beta);
    }

    let mut header = [0u8; HEADER_SIZE];
    header[0] = VERSION;
    header[OFF_EPOCH..OFF_ALPHA].copy_from_slice(&epoch.0.to_be_bytes());
    header[OFF_ALPHA..OFF_GAMMA].copy_from_slice(&alphas[0]);
    header[OFF_GAMMA..OFF_BETA].copy_from_slice(&gamma);
    header[OFF_BETA..].copy_from_slice(&beta);
    let payload_keys = keys.iter().map(|k| k.payload.clone()).collect();
    Ok(BuiltHeader {
        header,
        payload_keys,
    })
}

/// Puts `message` behind the zero tag in a payload-sized buffer.
pub(crate) fn plaintext_payload(message: &[u8]) -> Result<Box<[u8; PAYLOAD_SIZE]>, PacketError> {
    if message.len() > MESSAGE_SIZE {
        return Err(PacketError::MessageTooLong {
            actual: message.len(),
        });
    }
    let mut payload = Box::new([0u8; PAYLOAD_SIZE]);
    payload[PAYLOAD_TAG_SIZE..PAYLOAD_TAG_SIZE + message.len()].copy_from_slice(message);
    Ok(payload)
}

/// Checks the zero tag in constant time and returns the message behind it.
pub(crate) fn open_payload(
    payload: &[u8; PAYLOAD_SIZE],
) -> Result<Box<[u8; MESSAGE_SIZE]>, PacketError> {
    if !bool::from(payload[..PAYLOAD_TAG_SIZE].ct_eq(&[0u8; PAYLOAD_TAG_SIZE])) {
        return Err(PacketError::PayloadTampered);
    }
    let mut message = Box::new([0u8; MESSAGE_SIZE]);
    message.copy_from_slice(&payload[PAYLOAD_TAG_SIZE..]);
    Ok(message)
}

/// Builds a packet that carries `message` along `route` into `mailbox` at
/// the last hop. Send it to `route[0].node`.
///
/// `message` may be up to [`MESSAGE_SIZE`] bytes; it is zero-padded, so the
/// layer above frames its own length.
pub fn build_packet<R: CryptoRng + ?Sized>(
    rng: &mut R,
    epoch: Epoch,
    route: &[Hop<'_>],
    mailbox: MailboxId,
    message: &[u8],
) -> Result<Packet, PacketError> {
    let mut payload = plaintext_payload(message)?;
    let built = build_header(rng, epoch, route, Final::Deliver(mailbox))?;
    for key in built.payload_keys.iter().rev() {
        key.encrypt(&mut payload[..]);
    }
    Ok(Packet::from_parts(&built.header, &payload))
}

/// Builds a packet from a SURB's header and an already encrypted payload.
pub(crate) fn packet_from_header(
    header: &[u8; HEADER_SIZE],
    payload: &[u8; PAYLOAD_SIZE],
) -> Packet {
    Packet::from_parts(header, payload)
}

impl MixSecretKey {
    /// Processes one packet at this node: one X25519, header MAC check,
    /// routing command, payload layer. On success the caller checks the
    /// replay tag, then carries out the action.
    ///
    /// Fails with a typed error for a packet of another epoch, another node
    /// or key, or one modified on the way; nothing here panics on any input.
    pub fn process(&self, mut packet: Packet) -> Result<Processed, PacketError> {
        let bytes = &mut packet.0;
        let epoch = Epoch(read_u32(&bytes[OFF_EPOCH..]));
        if epoch != self.epoch() {
            return Err(PacketError::WrongEpoch {
                packet: epoch.0,
                key: self.epoch().0,
            });
        }
        let alpha = read_32(&bytes[OFF_ALPHA..]);
        let point = crypto::decode_point(&alpha).ok_or(PacketError::InvalidEphemeralKey)?;
        let shared =
            crypto::x25519(self.secret(), &point).ok_or(PacketError::InvalidEphemeralKey)?;
        let keys = HopKeys::derive(&shared, epoch, &alpha, &self.public().0);

        let expected = crypto::header_mac(&keys.header_mac, epoch, &bytes[OFF_BETA..HEADER_SIZE]);
        if !bool::from(expected.ct_eq(&bytes[OFF_GAMMA..OFF_BETA])) {
            return Err(PacketError::HeaderMac);
        }

        let mut routing = [0u8; STREAM_SIZE];
        routing[..BETA_SIZE].copy_from_slice(&bytes[OFF_BETA..HEADER_SIZE]);
        crypto::xor_stream(&keys.header_stream, &mut routing);
        let command = Command::decode(&routing[..ROUTING_BLOCK_SIZE])?;

        keys.payload.decrypt(&mut bytes[HEADER_SIZE..]);
        let replay_tag = ReplayTag(keys.replay_tag);
        let action = match command {
            Command::Relay {
                next,
                delay_ms,
                alpha,
                gamma,
            } => {
                bytes[OFF_ALPHA..OFF_GAMMA].copy_from_slice(&alpha);
                bytes[OFF_GAMMA..OFF_BETA].copy_from_slice(&gamma);
                bytes[OFF_BETA..HEADER_SIZE].copy_from_slice(&routing[ROUTING_BLOCK_SIZE..]);
                Action::Forward {
                    next,
                    delay_ms,
                    packet,
                }
            }
            Command::Deliver { mailbox, delay_ms } => {
                let message = open_payload(payload_of(bytes))?;
                Action::Deliver {
                    mailbox,
                    delay_ms,
                    message,
                }
            }
            Command::DeliverReply {
                mailbox,
                delay_ms,
                surb_id,
            } => {
                let payload = Box::new(*payload_of(bytes));
                Action::DeliverReply {
                    mailbox,
                    delay_ms,
                    surb_id,
                    payload,
                }
            }
        };
        Ok(Processed { replay_tag, action })
    }
}

fn payload_of(bytes: &[u8; PACKET_SIZE]) -> &[u8; PAYLOAD_SIZE] {
    let (_, payload) = bytes.split_at(HEADER_SIZE);
    // The split is exact by the constants above; `first_chunk` cannot fail.
    payload.first_chunk().unwrap_or(&[0; PAYLOAD_SIZE])
}

fn read_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn read_16(b: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&b[..16]);
    out
}

fn read_32(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&b[..32]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        let commands = [
            Command::Relay {
                next: NodeId([1; 32]),
                delay_ms: 77,
                alpha: [2; 32],
                gamma: [3; 16],
            },
            Command::Deliver {
                mailbox: MailboxId([4; 32]),
                delay_ms: 0,
            },
            Command::DeliverReply {
                mailbox: MailboxId([5; 32]),
                delay_ms: 9,
                surb_id: SurbId([6; 16]),
            },
        ];
        for c in commands {
            assert_eq!(Command::decode(&c.encode()).unwrap(), c);
        }
    }

    #[test]
    fn commands_with_stray_bytes_are_rejected() {
        let mut b = Command::Deliver {
            mailbox: MailboxId([4; 32]),
            delay_ms: 0,
        }
        .encode();
        b[ROUTING_BLOCK_SIZE - 1] = 1;
        assert_eq!(
            Command::decode(&b),
            Err(PacketError::InvalidCommand(CMD_DELIVER))
        );
        let mut b = [0u8; ROUTING_BLOCK_SIZE];
        b[0] = 0x7f;
        assert_eq!(Command::decode(&b), Err(PacketError::InvalidCommand(0x7f)));
    }
}
