//! Errors of the network driver.

use libp2p::{Multiaddr, PeerId};

/// Everything that can go wrong when starting the driver or asking it to do
/// something. Nothing a remote peer sends turns into a panic: misbehaving
/// peers are counted in [`NetMetrics`](crate::NetMetrics) and, where there is
/// a caller waiting, reported as one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The network id cannot be used inside protocol names.
    #[error(
        "invalid network id {id:?}: {reason}; use 1 to 64 characters from A-Z, a-z, 0-9, '-', '_' and '.'"
    )]
    InvalidNetworkId {
        /// The id that was given.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {field} {reason}")]
    InvalidConfig {
        /// The field of [`NetConfig`](crate::NetConfig) at fault.
        field: &'static str,
        /// What is wrong with it and what is allowed.
        reason: String,
    },
    /// A bootstrap address does not say which peer it belongs to.
    #[error(
        "bootstrap address {0} has no /p2p/<peer id> suffix; bootstrap peers are authenticated, so their peer id is required"
    )]
    BootstrapWithoutPeerId(Multiaddr),
    /// The node could not listen on an address.
    #[error("cannot listen on {addr}: {reason}; check that the address is local and the port free")]
    Listen {
        /// The address that failed.
        addr: Multiaddr,
        /// What the transport reported.
        reason: String,
    },
    /// Building the libp2p transport failed.
    #[error("cannot build the libp2p transport: {0}")]
    Transport(String),
    /// [`Net::spawn`](crate::Net::spawn) was called outside a tokio runtime.
    #[error(
        "no tokio runtime: call Net::spawn from within a tokio runtime (e.g. under #[tokio::main])"
    )]
    NoRuntime,
    /// 32 bytes that are not an Ed25519 public key.
    #[error("not a valid Ed25519 public key, so it names no node")]
    InvalidNodeKey,
    /// A peer id that does not embed an Ed25519 public key.
    #[error(
        "peer id {0} does not embed an Ed25519 public key; Chainmail nodes always use Ed25519 identities"
    )]
    NotEd25519PeerId(PeerId),
    /// The driver task has stopped: after [`NetHandle::shutdown`](crate::NetHandle::shutdown),
    /// or because its runtime went away.
    #[error("the network driver has stopped; start a new one with Net::spawn")]
    Stopped,
    /// The bounded command queue is full (only from the `try_` methods).
    #[error(
        "the driver's command queue is full; retry later, use the waiting variant, or raise limits.command_queue"
    )]
    CommandQueueFull,
    /// A request is larger than the fetch protocol allows.
    #[error("request of {size} bytes exceeds the fetch protocol maximum of {max} bytes; split it")]
    RequestTooLarge {
        /// Size of the request.
        size: usize,
        /// Maximum allowed ([`Limits::max_request_size`](crate::Limits::max_request_size)).
        max: usize,
    },
    /// A response is larger than the fetch protocol allows.
    #[error(
        "response of {size} bytes exceeds the fetch protocol maximum of {max} bytes; send less per request"
    )]
    ResponseTooLarge {
        /// Size of the response.
        size: usize,
        /// Maximum allowed ([`Limits::max_response_size`](crate::Limits::max_response_size)).
        max: usize,
    },
    /// A gossip message is larger than allowed.
    #[error("gossip message of {size} bytes exceeds the maximum of {max} bytes")]
    GossipTooLarge {
        /// Size of the message.
        size: usize,
        /// Maximum allowed ([`Limits::max_gossip_size`](crate::Limits::max_gossip_size)).
        max: usize,
    },
    /// A DHT record value is larger than allowed.
    #[error("record value of {size} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge {
        /// Size of the value.
        size: usize,
        /// Maximum allowed ([`Limits::max_record_size`](crate::Limits::max_record_size)).
        max: usize,
    },
    /// Too many operations of one kind are waiting for an answer.
    #[error("too many pending {what} (at most {max}); wait for some to finish or raise the limit")]
    TooManyPending {
        /// What kind of operation.
        what: &'static str,
        /// The cap.
        max: usize,
    },
    /// An operation did not finish in time.
    #[error("{what} timed out")]
    Timeout {
        /// What timed out.
        what: &'static str,
    },
    /// A request to a peer failed (dial failure, timeout, the peer refused or
    /// closed the stream, or its response was too large).
    #[error("request failed: {0}")]
    RequestFailed(String),
    /// A direct-mode message, but no direct connection to the peer is up
    /// (send it through the mixnet).
    #[error("no direct connection to {0}")]
    NotDirect(libp2p::PeerId),
    /// The reply to an inbound request can no longer be sent (the request
    /// timed out or the connection closed).
    #[error(
        "the requester is gone (request timed out or connection closed); the reply was not sent"
    )]
    ReplyClosed,
    /// No record was found under the key.
    #[error("no record found under this key")]
    RecordNotFound,
    /// This node takes no part in the DHT ([`NetConfig::dht`](crate::NetConfig::dht)
    /// is off): its lookups and publications go through the mixnet.
    #[error("this node takes no part in the DHT (its providers carry out lookups for it)")]
    DhtDisabled,
    /// Storing a record in the DHT failed.
    #[error("storing the record failed: {0} (it is still stored locally)")]
    PutRecordFailed(String),
    /// A topic given to [`NetHandle::subscribe`](crate::NetHandle::subscribe),
    /// [`unsubscribe`](crate::NetHandle::unsubscribe),
    /// [`publish_to`](crate::NetHandle::publish_to) or
    /// [`topic_peers`](crate::NetHandle::topic_peers) is not a community
    /// topic of this network.
    #[error(
        "not a community topic: {reason}; community topics are {prefix:?} followed by a name, at most {max_len} bytes in all"
    )]
    InvalidTopic {
        /// What is wrong with it.
        reason: &'static str,
        /// The community topic prefix of this network
        /// ([`ProtocolNames::community_topic_prefix`](crate::ProtocolNames::community_topic_prefix)).
        prefix: String,
        /// The longest topic allowed ([`MAX_TOPIC_LEN`](crate::MAX_TOPIC_LEN)).
        max_len: usize,
    },
    /// The node is subscribed to as many community topics as it may be.
    #[error(
        "already subscribed to {max} community topics, the maximum; unsubscribe from one first or raise limits.max_community_topics"
    )]
    TooManyTopics {
        /// The cap ([`Limits::max_community_topics`](crate::Limits::max_community_topics)).
        max: usize,
    },
    /// Publishing a gossip message failed.
    #[error("publishing failed: {0}")]
    PublishFailed(String),
    /// Dialing failed immediately.
    #[error("dial failed: {0}")]
    DialFailed(String),
}
