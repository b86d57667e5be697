//! Errors of the packet format.

/// Everything that can go wrong when building, decoding or processing a
/// packet or a SURB. Every malformed or modified input maps to one of these;
/// none of them panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// The input is not exactly the size of the object being decoded.
    #[error("{what} must be exactly {expected} bytes, got {actual}")]
    WrongSize {
        /// What was being decoded.
        what: &'static str,
        /// The only valid size.
        expected: usize,
        /// The size that was given.
        actual: usize,
    },
    /// The format version byte is not one this implementation speaks.
    #[error("unsupported packet format version {0} (this node speaks version {v})", v = crate::VERSION)]
    UnsupportedVersion(u8),
    /// The packet was made for the mix key of another epoch.
    #[error("packet is for key epoch {packet}, but the key given is for epoch {key}")]
    WrongEpoch {
        /// Epoch named by the packet.
        packet: u32,
        /// Epoch of the key it was processed with.
        key: u32,
    },
    /// The ephemeral key in the header is not a usable curve point.
    #[error("header carries an invalid or low-order ephemeral key")]
    InvalidEphemeralKey,
    /// The header MAC does not verify: the header was modified, or the packet
    /// is for another node or another key.
    #[error("header authentication failed (modified packet, or not for this key)")]
    HeaderMac,
    /// The authenticated routing command is not one this version knows, or
    /// has non-zero bytes where zeros are required.
    #[error("unknown or malformed routing command (type {0:#04x})")]
    InvalidCommand(u8),
    /// The payload failed authentication at the final hop: it was modified
    /// on the way.
    #[error("payload authentication failed: the payload was modified in transit")]
    PayloadTampered,
    /// A route must have between 1 and [`MAX_HOPS`](crate::MAX_HOPS) hops.
    #[error("a route must have 1 to {max} hops, got {actual}", max = crate::MAX_HOPS)]
    RouteLength {
        /// Number of hops that was given.
        actual: usize,
    },
    /// The message does not fit in one packet.
    #[error("message of {actual} bytes does not fit in one packet (at most {max})", max = crate::MESSAGE_SIZE)]
    MessageTooLong {
        /// Length of the message that was given.
        actual: usize,
    },
    /// A mix public key is not a valid X25519 public key.
    #[error("not a valid X25519 mix public key")]
    InvalidPublicKey,
    /// The reply does not belong to this SURB.
    #[error("reply is for SURB {reply}, not for SURB {ours}")]
    SurbMismatch {
        /// Id of the SURB the reply was sent with (hex).
        reply: String,
        /// Id of the SURB secrets it was opened with (hex).
        ours: String,
    },
}
