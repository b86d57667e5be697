//! Getting connections back: which peers to dial again, and when.
//!
//! Two kinds of peers are redialled. Bootstrap peers, while the node has
//! fewer peers of its network than it wants (a node started while its
//! bootstrap peers were down joins once they are back; a node whose
//! connections all died in a network change or a long sleep finds its way
//! back in). And peers the application asked to keep (a client's
//! providers), whenever they are not connected.
//!
//! Each failed attempt doubles the wait before the next, from one second up
//! to a minute; a connection that identify confirmed resets it. Sans-IO:
//! the driver says what happened and asks what is due.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use libp2p::{Multiaddr, PeerId};

/// Wait before the first redial of a peer that was lost.
pub(crate) const FIRST_DELAY: Duration = Duration::from_secs(1);
/// Longest wait between two attempts.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(60);
/// Most peers tracked (bootstrap peers and kept peers).
pub(crate) const MAX_PEERS: usize = 1024;

/// What the node knows about reaching one peer it wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerReach {
    /// The peer.
    pub peer: PeerId,
    /// The bootstrap address it was configured with, if it is a bootstrap
    /// peer.
    pub bootstrap: Option<Multiaddr>,
    /// Whether the application asked to keep a connection to it.
    pub kept: bool,
    /// Whether it is connected now (and identify confirmed the network).
    pub connected: bool,
    /// Attempts that failed since the last connection.
    pub failures: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Time until the next attempt, if one is scheduled.
    pub retry_in: Option<Duration>,
}

#[derive(Debug)]
struct Entry {
    bootstrap: Option<Multiaddr>,
    kept: bool,
    connected: bool,
    failures: u32,
    delay: Duration,
    next: Instant,
    last_error: Option<String>,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self {
            bootstrap: None,
            kept: false,
            connected: false,
            failures: 0,
            delay: FIRST_DELAY,
            next: now,
            last_error: None,
        }
    }
}

/// The redial schedule of one node.
#[derive(Debug, Default)]
pub(crate) struct Redial {
    peers: HashMap<PeerId, Entry>,
}

impl Redial {
    /// A bootstrap peer, first dialled at once.
    pub(crate) fn add_bootstrap(&mut self, now: Instant, peer: PeerId, addr: Multiaddr) {
        if self.peers.len() >= MAX_PEERS && !self.peers.contains_key(&peer) {
            return;
        }
        self.peers
            .entry(peer)
            .or_insert_with(|| Entry::new(now))
            .bootstrap = Some(addr);
    }

    /// Keeps (or stops keeping) a connection to `peer`.
    pub(crate) fn keep(&mut self, now: Instant, peer: PeerId, keep: bool) {
        if keep {
            if self.peers.len() >= MAX_PEERS && !self.peers.contains_key(&peer) {
                return;
            }
            self.peers
                .entry(peer)
                .or_insert_with(|| Entry::new(now))
                .kept = true;
        } else if let Some(entry) = self.peers.get_mut(&peer) {
            entry.kept = false;
            if entry.bootstrap.is_none() {
                self.peers.remove(&peer);
            }
        }
    }

    /// A connection to `peer` is up and of this network.
    pub(crate) fn connected(&mut self, peer: &PeerId) {
        if let Some(entry) = self.peers.get_mut(peer) {
            entry.connected = true;
            entry.failures = 0;
            entry.delay = FIRST_DELAY;
            entry.last_error = None;
        }
    }

    /// The last connection to `peer` closed: try again soon.
    pub(crate) fn disconnected(&mut self, now: Instant, peer: &PeerId) {
        if let Some(entry) = self.peers.get_mut(peer) {
            entry.connected = false;
            entry.next = now + entry.delay;
        }
    }

    /// A dial of `peer` failed, or the peer turned out to be of no use
    /// (another network): wait longer before the next attempt. `give_up`
    /// goes straight to the longest wait.
    pub(crate) fn failed(&mut self, now: Instant, peer: &PeerId, error: String, give_up: bool) {
        if let Some(entry) = self.peers.get_mut(peer) {
            entry.connected = false;
            entry.failures = entry.failures.saturating_add(1);
            entry.last_error = Some(error);
            if give_up {
                entry.delay = MAX_DELAY;
            }
            entry.next = now + entry.delay;
            entry.delay = (entry.delay * 2).min(MAX_DELAY);
        }
    }

    /// A due dial was not made (another dial of the peer is under way, by
    /// another part of the node): look again shortly, without counting a
    /// failure.
    pub(crate) fn not_dialled(&mut self, now: Instant, peer: &PeerId) {
        if let Some(entry) = self.peers.get_mut(peer) {
            entry.next = now + FIRST_DELAY;
        }
    }

    /// Peers to dial now: kept peers that are not connected, and bootstrap
    /// peers while fewer than `min_peers` peers are connected; with the
    /// bootstrap address where there is one.
    pub(crate) fn due(
        &mut self,
        now: Instant,
        peers: usize,
        min_peers: usize,
    ) -> Vec<(PeerId, Option<Multiaddr>)> {
        let want_more = peers < min_peers;
        let mut due = Vec::new();
        for (peer, entry) in &mut self.peers {
            let wanted = entry.kept || (want_more && entry.bootstrap.is_some());
            if wanted && !entry.connected && entry.next <= now {
                // Not due again while the dial is under way; should it never
                // report back, it is tried again after the longest wait.
                entry.next = now + MAX_DELAY;
                due.push((*peer, entry.bootstrap.clone()));
            }
        }
        due
    }

    /// Whether `peer` is a bootstrap peer.
    pub(crate) fn is_bootstrap(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|e| e.bootstrap.is_some())
    }

    /// What is known about every tracked peer.
    pub(crate) fn report(&self, now: Instant) -> Vec<PeerReach> {
        let mut all: Vec<PeerReach> = self
            .peers
            .iter()
            .map(|(peer, e)| PeerReach {
                peer: *peer,
                bootstrap: e.bootstrap.clone(),
                kept: e.kept,
                connected: e.connected,
                failures: e.failures,
                last_error: e.last_error.clone(),
                retry_in: (!e.connected).then(|| e.next.saturating_duration_since(now)),
            })
            .collect();
        all.sort_by_key(|r| r.peer);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        let key = libp2p::identity::Keypair::ed25519_from_bytes([n; 32]).unwrap();
        key.public().to_peer_id()
    }

    fn addr() -> Multiaddr {
        "/ip4/198.18.0.1/tcp/4001".parse().unwrap()
    }

    #[test]
    fn bootstrap_peers_are_redialled_with_backoff_until_they_answer() {
        let t0 = crate::limiter::now();
        let mut r = Redial::default();
        let b = peer(1);
        r.add_bootstrap(t0, b, addr());
        assert_eq!(r.due(t0, 0, 4), vec![(b, Some(addr()))]);
        // Being dialled: not due again.
        assert!(r.due(t0, 0, 4).is_empty());
        let mut at = t0;
        let mut waits = Vec::new();
        for _ in 0..9 {
            r.failed(at, &b, "connection refused".into(), false);
            let mut t = at;
            while r.due(t, 0, 4).is_empty() {
                t += Duration::from_millis(250);
            }
            waits.push((t - at).as_secs());
            at = t;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        let report = r.report(at);
        assert_eq!(report[0].failures, 9);
        assert_eq!(report[0].last_error.as_deref(), Some("connection refused"));
        // It answers at last: the backoff starts over.
        r.connected(&b);
        r.disconnected(at, &b);
        assert!(r.due(at, 0, 4).is_empty());
        assert_eq!(r.due(at + FIRST_DELAY, 0, 4).len(), 1);
    }

    #[test]
    fn bootstrap_peers_rest_while_the_node_has_enough_peers() {
        let t0 = crate::limiter::now();
        let mut r = Redial::default();
        r.add_bootstrap(t0, peer(1), addr());
        assert!(r.due(t0, 4, 4).is_empty());
        assert_eq!(r.due(t0, 3, 4).len(), 1);
    }

    #[test]
    fn kept_peers_are_redialled_however_many_peers_there_are() {
        let t0 = crate::limiter::now();
        let mut r = Redial::default();
        let p = peer(2);
        r.keep(t0, p, true);
        assert_eq!(r.due(t0, 100, 4), vec![(p, None)]);
        r.connected(&p);
        r.disconnected(t0, &p);
        assert_eq!(r.due(t0 + FIRST_DELAY, 100, 4), vec![(p, None)]);
        r.keep(t0, p, false);
        assert!(r.report(t0).is_empty());
    }

    #[test]
    fn a_peer_of_another_network_is_tried_rarely() {
        let t0 = crate::limiter::now();
        let mut r = Redial::default();
        let b = peer(3);
        r.add_bootstrap(t0, b, addr());
        r.due(t0, 0, 4);
        r.failed(t0, &b, "belongs to another network".into(), true);
        assert!(
            r.due(t0 + MAX_DELAY - Duration::from_secs(1), 0, 4)
                .is_empty()
        );
        assert_eq!(r.due(t0 + MAX_DELAY, 0, 4).len(), 1);
    }

    #[test]
    fn a_dial_that_never_reports_back_is_retried() {
        let t0 = crate::limiter::now();
        let mut r = Redial::default();
        let b = peer(4);
        r.add_bootstrap(t0, b, addr());
        r.due(t0, 0, 4);
        assert_eq!(r.due(t0 + MAX_DELAY, 0, 4).len(), 1);
    }
}
