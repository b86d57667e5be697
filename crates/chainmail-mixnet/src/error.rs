//! Errors of the mixnet layer.

use chainmail_packet::PacketError;

/// What can go wrong in the mixnet cores. Inputs from the network map to
/// these and are counted; none of them panics a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MixnetError {
    /// A node descriptor failed a check.
    #[error("invalid node descriptor: {0}")]
    InvalidDescriptor(&'static str),
    /// Bytes from a peer do not decode as the named structure.
    #[error("malformed {0}")]
    Decoding(&'static str),
    /// A structure could not be encoded (too large for its bound).
    #[error("cannot encode {0}")]
    Encoding(&'static str),
    /// No route can be built (an empty layer, an unknown provider).
    #[error("no route: {0}")]
    NoRoute(String),
    /// The packet layer refused.
    #[error(transparent)]
    Packet(#[from] PacketError),
    /// A message body is longer than one packet carries.
    #[error("message of {actual} bytes is longer than the {max} bytes one packet carries")]
    MessageTooLong {
        /// Length given.
        actual: usize,
        /// Largest accepted.
        max: usize,
    },
    /// The send queue is full: the client sends at a fixed rate and this
    /// many messages are already waiting.
    #[error("send queue is full ({0} messages waiting); try again later")]
    QueueFull(usize),
    /// A client address is malformed.
    #[error("invalid address: {0}")]
    InvalidAddress(&'static str),
    /// A mailbox fetch request was refused.
    #[error("fetch refused: {0}")]
    FetchRefused(&'static str),
    /// The mailbox store failed.
    #[error("mailbox store: {0}")]
    Store(String),
}
