//! Counters of the driver, readable at any time without asking the driver.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters shared by the driver, the connection handlers and every
/// [`NetHandle`](crate::NetHandle).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) frames_in: AtomicU64,
    pub(crate) frames_out: AtomicU64,
    pub(crate) dropped_rate_limited: AtomicU64,
    pub(crate) dropped_source_limited: AtomicU64,
    pub(crate) connections_refused_per_source: AtomicU64,
    pub(crate) dropped_malformed: AtomicU64,
    pub(crate) dropped_queue_full: AtomicU64,
    pub(crate) dropped_no_connection: AtomicU64,
    pub(crate) dropped_event_queue_full: AtomicU64,
    pub(crate) packet_streams_opened: AtomicU64,
    pub(crate) packet_streams_accepted: AtomicU64,
    pub(crate) packet_streams_refused: AtomicU64,
    pub(crate) packet_streams_reset: AtomicU64,
    pub(crate) gossip_in: AtomicU64,
    pub(crate) gossip_out: AtomicU64,
    pub(crate) community_in: AtomicU64,
    pub(crate) community_out: AtomicU64,
    pub(crate) gossip_too_large: AtomicU64,
    pub(crate) requests_in: AtomicU64,
    pub(crate) requests_out: AtomicU64,
    pub(crate) requests_failed: AtomicU64,
    pub(crate) events_dropped: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    pub(crate) foreign_peers_rejected: AtomicU64,
    pub(crate) direct_refused: AtomicU64,
    pub(crate) direct_in: AtomicU64,
    pub(crate) direct_out: AtomicU64,
    pub(crate) hole_punches_failed: AtomicU64,
    pub(crate) hole_punches_succeeded: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Takes one from a gauge, never below zero.
pub(crate) fn dec(counter: &AtomicU64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(1))
    });
}

impl Counters {
    pub(crate) fn snapshot(&self) -> NetMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetMetrics {
            frames_in: get(&self.frames_in),
            frames_out: get(&self.frames_out),
            frames_dropped: DroppedFrames {
                rate_limited: get(&self.dropped_rate_limited),
                source_limited: get(&self.dropped_source_limited),
                malformed: get(&self.dropped_malformed),
                queue_full: get(&self.dropped_queue_full),
                no_connection: get(&self.dropped_no_connection),
                event_queue_full: get(&self.dropped_event_queue_full),
            },
            packet_streams_opened: get(&self.packet_streams_opened),
            packet_streams_accepted: get(&self.packet_streams_accepted),
            packet_streams_refused: get(&self.packet_streams_refused),
            packet_streams_reset: get(&self.packet_streams_reset),
            gossip_in: get(&self.gossip_in),
            gossip_out: get(&self.gossip_out),
            community_in: get(&self.community_in),
            community_out: get(&self.community_out),
            gossip_too_large: get(&self.gossip_too_large),
            requests_in: get(&self.requests_in),
            requests_out: get(&self.requests_out),
            requests_failed: get(&self.requests_failed),
            events_dropped: get(&self.events_dropped),
            connections: get(&self.connections),
            connections_total: get(&self.connections_total),
            foreign_peers_rejected: get(&self.foreign_peers_rejected),
            direct_refused: get(&self.direct_refused),
            direct_in: get(&self.direct_in),
            direct_out: get(&self.direct_out),
            hole_punches_failed: get(&self.hole_punches_failed),
            hole_punches_succeeded: get(&self.hole_punches_succeeded),
            connections_refused_per_source: get(&self.connections_refused_per_source),
        }
    }
}

/// Packet frames dropped, by reason. Every frame the node received or was
/// asked to send and did not deliver is counted in exactly one of these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DroppedFrames {
    /// Inbound frames over the peer's rate limit.
    pub rate_limited: u64,
    /// Inbound frames within their peer's limit but over the limit of the
    /// source (IP address) the peer connects from.
    pub source_limited: u64,
    /// Inbound streams that ended inside a frame (the partial frame is
    /// dropped).
    pub malformed: u64,
    /// Outbound frames dropped because the peer's outbound queue was full.
    pub queue_full: u64,
    /// Outbound frames for a peer with no connection, or whose stream could
    /// not be opened or broke (the frame being written is lost).
    pub no_connection: u64,
    /// Inbound frames dropped because the [`NetEvents`](crate::NetEvents)
    /// channel was full (the application is not keeping up).
    pub event_queue_full: u64,
}

/// A snapshot of the driver's counters (all totals since start, except
/// `connections`, which is the current number).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetMetrics {
    /// Inbound frames accepted from the network (within the rate limit).
    pub frames_in: u64,
    /// Outbound frames handed to a stream.
    pub frames_out: u64,
    /// Frames dropped, by reason.
    pub frames_dropped: DroppedFrames,
    /// Outbound packet streams opened.
    pub packet_streams_opened: u64,
    /// Inbound packet streams accepted.
    pub packet_streams_accepted: u64,
    /// Inbound packet streams refused because the peer was at its cap.
    pub packet_streams_refused: u64,
    /// Inbound packet streams reset because the peer flooded.
    pub packet_streams_reset: u64,
    /// Gossip messages received on the descriptor topic.
    pub gossip_in: u64,
    /// Gossip messages published on the descriptor topic.
    pub gossip_out: u64,
    /// Gossip messages received on community topics (delivered as
    /// [`NetEvent::TopicMessage`](crate::NetEvent::TopicMessage), or dropped
    /// and counted in `events_dropped` if the event queue was full).
    pub community_in: u64,
    /// Gossip messages published on community topics.
    pub community_out: u64,
    /// Inbound gossip messages dropped because their payload exceeded
    /// [`Limits::max_gossip_size`](crate::Limits::max_gossip_size).
    pub gossip_too_large: u64,
    /// Fetch requests received.
    pub requests_in: u64,
    /// Fetch requests sent.
    pub requests_out: u64,
    /// Fetch requests sent that failed.
    pub requests_failed: u64,
    /// Events other than packets dropped because the event channel was full.
    pub events_dropped: u64,
    /// Connections open now.
    pub connections: u64,
    /// Connections established since start.
    pub connections_total: u64,
    /// Connections closed because identify showed another network.
    pub foreign_peers_rejected: u64,
    /// Direct-mode traffic refused: relayed connections from peers this
    /// node has no direct link with, and direct requests from such peers or
    /// over a relayed connection.
    pub direct_refused: u64,
    /// Direct-mode messages taken.
    pub direct_in: u64,
    /// Direct-mode messages sent.
    pub direct_out: u64,
    /// Hole punching attempts that failed.
    pub hole_punches_failed: u64,
    /// Hole punching attempts that gave a direct connection.
    pub hole_punches_succeeded: u64,
    /// Inbound connections refused because their source (IP address)
    /// already had as many as it may.
    pub connections_refused_per_source: u64,
}
