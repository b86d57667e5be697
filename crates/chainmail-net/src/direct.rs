//! Direct mode: a connection between two contacts' nodes, without the
//! mixnet, when both users asked for it.
//!
//! Both nodes hold a reservation at relays (their providers). The node
//! with the smaller peer id dials the other through one of its relays;
//! the relayed connection carries only the hole-punching handshake
//! (DCUtR), after which both dial each other at the same moment. Once a
//! direct connection is up the relayed one is closed. Messages travel only
//! over direct connections: a request on a relayed connection is refused.
//! When hole punching fails (a symmetric NAT picks a new port for every
//! destination), the link is reported as failed and tried again later,
//! with backoff; the application keeps using the mixnet meanwhile.
//!
//! This module is the bookkeeping, without I/O; the driver does what it
//! says.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use libp2p::{Multiaddr, PeerId, core::transport::ListenerId, swarm::ConnectionId};

/// The larger peer dials too if the smaller one has not connected within
/// this time (its relay may be down, or it may not know our relays yet).
const DIAL_GRACE: Duration = Duration::from_secs(10);

/// Time between dials through a relay while nothing connects.
const REDIAL: Duration = Duration::from_secs(15);

/// Longest wait before hole punching is tried again after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// Time between two attempts at a reservation with one relay.
const RESERVE_RETRY: Duration = Duration::from_secs(30);

/// A direct connection with no traffic is kept open by an empty request
/// this often (idle connections are closed after a minute).
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(20);

/// Contacts' nodes this node may keep direct links with.
pub const MAX_DIRECT_PEERS: usize = 256;

/// Relays a node holds reservations at.
pub const MAX_RELAYS: usize = 8;

/// Addresses remembered per direct peer.
const MAX_ADDRS: usize = 8;

/// What direct mode should do: where to hold reservations, and which peers
/// to link with. Each call of
/// [`NetHandle::set_direct`](crate::NetHandle::set_direct) replaces the
/// previous plan; an empty plan closes every direct link and reservation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectPlan {
    /// Relays to hold a reservation at, each
    /// `<relay address>/p2p/<relay>/p2p-circuit`: others reach this node
    /// through them. At most [`MAX_RELAYS`].
    pub relays: Vec<Multiaddr>,
    /// The peers to link with, with the relayed addresses they gave
    /// (`…/p2p-circuit/p2p/<peer>`). At most [`MAX_DIRECT_PEERS`].
    pub peers: Vec<(PeerId, Vec<Multiaddr>)>,
    /// Also take relayed connections from peers not in `peers` (community
    /// members reaching this node through its relays); hole punching runs
    /// on them too. Direct-mode requests are still taken only from
    /// `peers`.
    pub accept_relayed: bool,
}

/// Where the link with one peer stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// No connection yet: dialling through their relay, or waiting for
    /// them to dial through ours.
    Connecting,
    /// Connected through a relay; hole punching under way.
    Relayed,
    /// A direct connection: each side sees the other's network address.
    Direct {
        /// Their address, as this node sees it.
        remote: Multiaddr,
    },
    /// No direct connection could be made (the last error); tried again
    /// after `retry_in`.
    Failed {
        /// What went wrong.
        error: String,
        /// Attempts that failed in a row.
        attempts: u32,
    },
}

impl LinkState {
    /// A short lowercase name: connecting, relayed, direct, failed.
    pub fn as_str(&self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Relayed => "relayed",
            LinkState::Direct { .. } => "direct",
            LinkState::Failed { .. } => "failed",
        }
    }
}

/// One link, for [`NetHandle::direct_links`](crate::NetHandle::direct_links).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectLink {
    /// The peer.
    pub peer: PeerId,
    /// Where it stands.
    pub state: LinkState,
}

/// The connections to one peer: remote address, and whether relayed.
type Connections = HashMap<ConnectionId, (Multiaddr, bool)>;

#[derive(Debug)]
struct Link {
    addrs: Vec<Multiaddr>,
    failure: Option<String>,
    attempts: u32,
    wanted_since: Instant,
    next_dial: Instant,
    last_keepalive: Instant,
    reported: Option<LinkState>,
}

impl Link {
    /// Direct once a direct connection is up and the relayed ones are
    /// gone (a request could otherwise go out on a relayed one, which the
    /// other side refuses).
    fn state(&self, conns: Option<&Connections>) -> LinkState {
        let direct = conns.and_then(|c| c.values().find(|(_, relayed)| !relayed));
        let relayed = conns.is_some_and(|c| c.values().any(|(_, relayed)| *relayed));
        if let Some((remote, _)) = direct.filter(|_| !relayed) {
            LinkState::Direct {
                remote: remote.clone(),
            }
        } else if let Some(error) = &self.failure {
            LinkState::Failed {
                error: error.clone(),
                attempts: self.attempts,
            }
        } else if conns.is_some_and(|c| !c.is_empty()) {
            // Hole punching under way, or done with the relayed connection
            // still closing.
            LinkState::Relayed
        } else {
            LinkState::Connecting
        }
    }

    fn fail(&mut self, now: Instant, error: String) {
        self.failure = Some(error);
        self.attempts = self.attempts.saturating_add(1);
        let backoff = REDIAL
            .saturating_mul(1 << self.attempts.saturating_sub(1).min(8))
            .min(MAX_BACKOFF);
        self.next_dial = now + backoff;
    }
}

#[derive(Debug)]
struct Reservation {
    listener: Option<ListenerId>,
    next_try: Instant,
}

/// What the driver must do for direct mode.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Todo {
    /// Dial these peers at these (relayed) addresses.
    pub dial: Vec<(PeerId, Vec<Multiaddr>)>,
    /// Close these connections (relayed ones made redundant by a direct
    /// one, or ones of a failed attempt).
    pub close: Vec<ConnectionId>,
    /// Listen on these relay addresses (make a reservation).
    pub reserve: Vec<Multiaddr>,
    /// Stop these listeners (reservations no longer wanted).
    pub unreserve: Vec<ListenerId>,
    /// Send an empty request to keep these direct connections open.
    pub keepalive: Vec<PeerId>,
    /// Disconnect these peers: direct mode with them ended.
    pub disconnect: Vec<PeerId>,
}

/// The direct links of one node.
#[derive(Debug)]
pub(crate) struct Links {
    local: PeerId,
    relays: HashMap<Multiaddr, Reservation>,
    peers: HashMap<PeerId, Link>,
    /// Every open connection, of any peer (a link may be wanted with a
    /// peer already connected). Bounded by the connection limits.
    conns: HashMap<PeerId, Connections>,
    /// Peers whose link ended, to disconnect.
    ended: Vec<PeerId>,
    /// [`DirectPlan::accept_relayed`].
    accept_relayed: bool,
}

impl Links {
    pub(crate) fn new(local: PeerId) -> Self {
        Self {
            local,
            relays: HashMap::new(),
            peers: HashMap::new(),
            conns: HashMap::new(),
            ended: Vec::new(),
            accept_relayed: false,
        }
    }

    /// Replaces the plan; the number of entries beyond the limits is
    /// returned (they are ignored).
    pub(crate) fn set_plan(&mut self, now: Instant, plan: DirectPlan) -> usize {
        let mut ignored = 0;
        self.accept_relayed = plan.accept_relayed;
        let mut relays: Vec<Multiaddr> = plan.relays;
        relays.dedup();
        if relays.len() > MAX_RELAYS {
            ignored += relays.len() - MAX_RELAYS;
            relays.truncate(MAX_RELAYS);
        }
        // Reservations no longer wanted keep their entry until the driver
        // stopped the listener (`take_todo`).
        for (addr, r) in self.relays.iter_mut() {
            if !relays.contains(addr) {
                r.next_try = far_future(now);
            }
        }
        for addr in relays {
            self.relays.entry(addr).or_insert(Reservation {
                listener: None,
                next_try: now,
            });
        }
        let mut peers = plan.peers;
        if peers.len() > MAX_DIRECT_PEERS {
            ignored += peers.len() - MAX_DIRECT_PEERS;
            peers.truncate(MAX_DIRECT_PEERS);
        }
        let wanted: HashSet<PeerId> = peers.iter().map(|(p, _)| *p).collect();
        let gone: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|p| !wanted.contains(p))
            .copied()
            .collect();
        for peer in gone {
            self.peers.remove(&peer);
            self.ended.push(peer);
        }
        for (peer, mut addrs) in peers {
            if peer == self.local {
                ignored += 1;
                continue;
            }
            addrs.truncate(MAX_ADDRS);
            let link = self.peers.entry(peer).or_insert_with(|| Link {
                addrs: Vec::new(),
                failure: None,
                attempts: 0,
                wanted_since: now,
                next_dial: now,
                last_keepalive: now,
                reported: None,
            });
            if link.addrs != addrs {
                // New relays to try: at once.
                link.addrs = addrs;
                link.next_dial = now;
            }
        }
        ignored
    }

    /// Whether `peer` is a direct-mode peer.
    pub(crate) fn wants(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    fn connected(&self, peer: &PeerId) -> bool {
        self.conns.get(peer).is_some_and(|c| !c.is_empty())
    }

    /// Whether `peer`, a direct-mode peer, is reached only over direct
    /// connections: requests to it then never go through a relay.
    pub(crate) fn is_direct(&self, peer: &PeerId) -> bool {
        self.wants(peer)
            && self.conns.get(peer).is_some_and(|c| {
                c.values().any(|(_, relayed)| !relayed) && c.values().all(|(_, relayed)| !relayed)
            })
    }

    /// Whether a request from `peer` on `connection` may be taken: only
    /// from a direct-mode peer, and only over a direct connection.
    pub(crate) fn accepts(&self, peer: &PeerId, connection: ConnectionId) -> bool {
        self.wants(peer)
            && self
                .conns
                .get(peer)
                .and_then(|c| c.get(&connection))
                .is_some_and(|(_, relayed)| !relayed)
    }

    /// The relayed connections to `peer`.
    pub(crate) fn relayed(&self, peer: &PeerId) -> Vec<ConnectionId> {
        self.conns
            .get(peer)
            .map(|c| {
                c.iter()
                    .filter(|(_, (_, relayed))| *relayed)
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A connection came up. `false`: a relayed connection from a peer
    /// this node has no direct link with, to be closed.
    pub(crate) fn on_established(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        remote: &Multiaddr,
        relayed: bool,
    ) -> bool {
        match self.peers.get_mut(&peer) {
            None if relayed && !self.accept_relayed => return false,
            Some(link) if !relayed => {
                link.failure = None;
                link.attempts = 0;
            }
            _ => {}
        }
        self.conns
            .entry(peer)
            .or_default()
            .insert(connection, (remote.clone(), relayed));
        true
    }

    /// A connection closed. A relayed one that leaves a direct-mode peer
    /// with no connection at all means hole punching did not succeed (the
    /// side that started it reports its own failure; this side only sees
    /// the relayed connection end).
    pub(crate) fn on_closed(&mut self, now: Instant, peer: &PeerId, connection: ConnectionId) {
        let Some(c) = self.conns.get_mut(peer) else {
            return;
        };
        let relayed = c.remove(&connection).is_some_and(|(_, relayed)| relayed);
        if !c.is_empty() {
            return;
        }
        self.conns.remove(peer);
        if let Some(link) = self.peers.get_mut(peer)
            && relayed
            && link.failure.is_none()
        {
            link.fail(
                now,
                "hole punching did not succeed before the relayed connection ended".into(),
            );
        }
    }

    /// Hole punching with `peer` ended; on failure its relayed connections
    /// are closed and the attempt is made again later.
    pub(crate) fn on_hole_punch(
        &mut self,
        now: Instant,
        peer: &PeerId,
        result: Result<(), String>,
    ) -> Vec<ConnectionId> {
        let relayed = self.relayed(peer);
        let Some(link) = self.peers.get_mut(peer) else {
            return Vec::new();
        };
        match result {
            Ok(()) => Vec::new(),
            Err(error) => {
                link.fail(now, format!("hole punching failed: {error}"));
                relayed
            }
        }
    }

    /// Dialling `peer` through its relays failed.
    pub(crate) fn on_dial_failed(&mut self, now: Instant, peer: &PeerId, error: String) {
        let connected = self.connected(peer);
        if let Some(link) = self.peers.get_mut(peer)
            && !connected
        {
            link.fail(
                now,
                format!("cannot reach them through their relays: {error}"),
            );
        }
    }

    /// A reservation listener closed (the relay refused, or went away):
    /// tried again later.
    pub(crate) fn on_listener_closed(&mut self, now: Instant, listener: ListenerId) -> bool {
        for r in self.relays.values_mut() {
            if r.listener == Some(listener) {
                r.listener = None;
                r.next_try = r.next_try.max(now + RESERVE_RETRY);
                return true;
            }
        }
        false
    }

    /// The driver made a reservation listener for `addr`.
    pub(crate) fn on_reserving(
        &mut self,
        now: Instant,
        addr: &Multiaddr,
        listener: Option<ListenerId>,
    ) {
        if let Some(r) = self.relays.get_mut(addr) {
            r.listener = listener;
            r.next_try = now + RESERVE_RETRY;
        }
    }

    /// What is due now.
    pub(crate) fn take_todo(&mut self, now: Instant) -> Todo {
        let mut todo = Todo {
            disconnect: std::mem::take(&mut self.ended),
            ..Todo::default()
        };
        let far = far_future(now);
        self.relays.retain(|addr, r| {
            if r.next_try >= far {
                // No longer wanted.
                todo.unreserve.extend(r.listener);
                return false;
            }
            if r.listener.is_none() && now >= r.next_try {
                todo.reserve.push(addr.clone());
            }
            true
        });
        for (peer, link) in self.peers.iter_mut() {
            let conns = self.conns.get(peer);
            if conns.is_some_and(|c| c.values().any(|(_, relayed)| !relayed)) {
                let relayed = conns.into_iter().flatten().filter(|(_, (_, r))| *r);
                todo.close.extend(relayed.map(|(id, _)| *id));
                if now.saturating_duration_since(link.last_keepalive) >= KEEPALIVE {
                    link.last_keepalive = now;
                    todo.keepalive.push(*peer);
                }
                continue;
            }
            let first = self.local < *peer;
            let waited = now.saturating_duration_since(link.wanted_since) >= DIAL_GRACE;
            if conns.is_none_or(|c| c.is_empty())
                && now >= link.next_dial
                && (first || waited)
                && !link.addrs.is_empty()
            {
                link.next_dial = now + REDIAL;
                todo.dial.push((*peer, link.addrs.clone()));
            }
        }
        todo
    }

    /// Links whose state changed since last asked.
    pub(crate) fn changes(&mut self) -> Vec<(PeerId, LinkState)> {
        let mut out = Vec::new();
        for (peer, link) in self.peers.iter_mut() {
            let state = link.state(self.conns.get(peer));
            if link.reported.as_ref() != Some(&state) {
                link.reported = Some(state.clone());
                out.push((*peer, state));
            }
        }
        out
    }

    /// Every link.
    pub(crate) fn report(&self) -> Vec<DirectLink> {
        let mut out: Vec<DirectLink> = self
            .peers
            .iter()
            .map(|(peer, link)| DirectLink {
                peer: *peer,
                state: link.state(self.conns.get(peer)),
            })
            .collect();
        out.sort_by_key(|l| l.peer);
        out
    }
}

/// A time no schedule reaches: marks reservations to drop.
fn far_future(now: Instant) -> Instant {
    now + Duration::from_secs(100 * 365 * 24 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> (PeerId, PeerId) {
        let a = PeerId::random();
        let b = PeerId::random();
        if a < b { (a, b) } else { (b, a) }
    }

    fn circuit(peer: PeerId) -> Multiaddr {
        format!(
            "/ip4/198.18.0.11/tcp/4001/p2p/{}/p2p-circuit/p2p/{peer}",
            PeerId::random()
        )
        .parse()
        .unwrap()
    }

    #[test]
    fn the_smaller_peer_dials_first_and_the_larger_after_a_grace() {
        let (small, large) = peers();
        let t0 = crate::limiter::now();
        let mut a = Links::new(small);
        a.set_plan(
            t0,
            DirectPlan {
                accept_relayed: false,
                relays: vec![],
                peers: vec![(large, vec![circuit(large)])],
            },
        );
        assert_eq!(a.take_todo(t0).dial.len(), 1);
        // Not again while the dial is under way.
        assert!(a.take_todo(t0 + Duration::from_secs(1)).dial.is_empty());

        let mut b = Links::new(large);
        b.set_plan(
            t0,
            DirectPlan {
                accept_relayed: false,
                relays: vec![],
                peers: vec![(small, vec![circuit(small)])],
            },
        );
        assert!(b.take_todo(t0).dial.is_empty());
        assert_eq!(b.take_todo(t0 + DIAL_GRACE).dial.len(), 1);
    }

    #[test]
    fn a_direct_connection_closes_the_relayed_one_and_takes_requests() {
        let (small, large) = peers();
        let t0 = crate::limiter::now();
        let mut a = Links::new(small);
        a.set_plan(
            t0,
            DirectPlan {
                accept_relayed: false,
                relays: vec![],
                peers: vec![(large, vec![circuit(large)])],
            },
        );
        let relayed = ConnectionId::new_unchecked(1);
        let direct = ConnectionId::new_unchecked(2);
        assert!(a.on_established(large, relayed, &circuit(large), true));
        assert_eq!(a.changes(), vec![(large, LinkState::Relayed)]);
        assert!(
            !a.accepts(&large, relayed),
            "nothing travels through the relay"
        );
        let remote: Multiaddr = "/ip4/198.18.0.102/udp/5000/quic-v1".parse().unwrap();
        assert!(a.on_established(large, direct, &remote, false));
        assert!(a.accepts(&large, direct));
        assert!(!a.is_direct(&large), "not while the relayed one is open");
        assert!(a.changes().is_empty(), "still relayed");
        assert_eq!(a.take_todo(t0).close, vec![relayed]);
        a.on_closed(t0, &large, relayed);
        assert!(a.is_direct(&large));
        assert_eq!(a.changes(), vec![(large, LinkState::Direct { remote })]);
        assert!(a.changes().is_empty(), "reported once");
        // Kept open.
        assert_eq!(a.take_todo(t0 + KEEPALIVE).keepalive, vec![large]);
    }

    #[test]
    fn strangers_are_refused_and_a_failed_punch_backs_off() {
        let (small, large) = peers();
        let stranger = PeerId::random();
        let t0 = crate::limiter::now();
        let mut a = Links::new(small);
        a.set_plan(
            t0,
            DirectPlan {
                accept_relayed: false,
                relays: vec![],
                peers: vec![(large, vec![circuit(large)])],
            },
        );
        let c = ConnectionId::new_unchecked(7);
        assert!(
            !a.on_established(stranger, c, &circuit(stranger), true),
            "relayed stranger"
        );
        assert!(a.on_established(
            stranger,
            c,
            &"/ip4/198.18.0.12/tcp/4001".parse().unwrap(),
            false
        ));
        assert!(!a.accepts(&stranger, c));

        assert_eq!(a.take_todo(t0).dial.len(), 1);
        let relayed = ConnectionId::new_unchecked(8);
        a.on_established(large, relayed, &circuit(large), true);
        let closed = a.on_hole_punch(t0, &large, Err("no route".into()));
        assert_eq!(closed, vec![relayed]);
        a.on_closed(t0, &large, relayed);
        assert!(matches!(
            a.report()[0].state,
            LinkState::Failed { attempts: 1, .. }
        ));
        assert!(
            a.take_todo(t0 + REDIAL - Duration::from_secs(1))
                .dial
                .is_empty()
        );
        assert_eq!(a.take_todo(t0 + REDIAL).dial.len(), 1);
        a.on_dial_failed(t0 + REDIAL, &large, "relay gone".into());
        // Second failure: twice the wait.
        assert!(a.take_todo(t0 + REDIAL * 2).dial.is_empty());
        assert_eq!(a.take_todo(t0 + REDIAL * 3).dial.len(), 1);
    }

    #[test]
    fn a_relayed_connection_ending_alone_is_a_failure_on_the_quiet_side() {
        let (small, large) = peers();
        let t0 = crate::limiter::now();
        let mut b = Links::new(large);
        b.set_plan(
            t0,
            DirectPlan {
                accept_relayed: false,
                relays: vec![],
                peers: vec![(small, vec![circuit(small)])],
            },
        );
        let relayed = ConnectionId::new_unchecked(3);
        b.on_established(small, relayed, &circuit(small), true);
        b.on_closed(t0, &small, relayed);
        assert!(matches!(
            b.report()[0].state,
            LinkState::Failed { attempts: 1, .. }
        ));
        // Still failed while the next attempt is relayed; cleared by a
        // direct connection.
        b.on_established(small, relayed, &circuit(small), true);
        assert!(matches!(b.report()[0].state, LinkState::Failed { .. }));
        let remote: Multiaddr = "/ip4/198.18.0.101/tcp/5000".parse().unwrap();
        b.on_established(small, ConnectionId::new_unchecked(4), &remote, false);
        b.on_closed(t0, &small, relayed);
        assert_eq!(b.report()[0].state, LinkState::Direct { remote });
    }

    #[test]
    fn community_members_come_in_through_the_relay_but_send_nothing_direct() {
        let (small, large) = peers();
        let member = PeerId::random();
        let t0 = crate::limiter::now();
        let mut a = Links::new(small);
        a.set_plan(
            t0,
            DirectPlan {
                accept_relayed: true,
                relays: vec![],
                peers: vec![(large, vec![])],
            },
        );
        let c = ConnectionId::new_unchecked(9);
        assert!(a.on_established(member, c, &circuit(member), true));
        let d = ConnectionId::new_unchecked(10);
        let remote: Multiaddr = "/ip4/198.18.0.103/tcp/6000".parse().unwrap();
        assert!(a.on_established(member, d, &remote, false));
        assert!(!a.accepts(&member, d), "not a direct-mode peer");
        assert!(a.report().iter().all(|l| l.peer != member));
    }

    #[test]
    fn reservations_follow_the_plan_and_ended_links_disconnect() {
        let (small, large) = peers();
        let t0 = crate::limiter::now();
        let relay: Multiaddr = format!(
            "/ip4/198.18.0.11/tcp/4001/p2p/{}/p2p-circuit",
            PeerId::random()
        )
        .parse()
        .unwrap();
        let mut a = Links::new(small);
        a.set_plan(
            t0,
            DirectPlan {
                accept_relayed: false,
                relays: vec![relay.clone()],
                peers: vec![(large, vec![])],
            },
        );
        let todo = a.take_todo(t0);
        assert_eq!(todo.reserve, vec![relay.clone()]);
        assert!(todo.dial.is_empty(), "no address to dial: wait for them");
        let id = ListenerId::next();
        a.on_reserving(t0, &relay, Some(id));
        assert!(a.take_todo(t0 + RESERVE_RETRY * 2).reserve.is_empty());
        assert!(a.on_listener_closed(t0, id));
        assert_eq!(a.take_todo(t0 + RESERVE_RETRY).reserve, vec![relay.clone()]);
        a.on_reserving(t0, &relay, Some(id));

        a.set_plan(t0, DirectPlan::default());
        let todo = a.take_todo(t0);
        assert_eq!(todo.unreserve, vec![id]);
        assert_eq!(todo.disconnect, vec![large]);
        assert!(a.report().is_empty());
    }
}
