//! Direct mode between the hosted agent and a contact: what the agent
//! decided, turned into what the network driver does.
//!
//! The agent says whom it may link with ([`chainmail_client::DirectPlan`]);
//! this module knows where this node can be reached (relayed addresses
//! through its providers, taken from their descriptors) and turns the plan
//! into the driver's ([`chainmail_net::DirectPlan`]).

use std::collections::HashMap;

use chainmail_client::{Card, DirectPlan, MAX_CARD_ADDRS};
use chainmail_net::{AddressScope, LinkState, Multiaddr, PeerId, multiaddr::Protocol};
use chainmail_packet::NodeId;

/// Direct mode's state in the host.
#[derive(Debug, Default)]
pub(crate) struct DirectHost {
    /// Where reservations go: `<provider address>/p2p/<provider>/p2p-circuit`.
    relays: Vec<Multiaddr>,
    /// The card last given to the agent.
    card: Option<Card>,
    /// The agent's plan.
    plan: DirectPlan,
    /// What the driver reported, per peer.
    pub(crate) links: HashMap<PeerId, LinkState>,
}

/// Whether `addr` may be dialled on a network of `scope`: its first
/// address (a relay's, for a relayed one) is routable there.
fn dialable(scope: AddressScope, addr: &Multiaddr) -> bool {
    match chainmail_net::addrs::ip_of(addr) {
        Some(ip) => scope == AddressScope::Local || chainmail_net::addrs::is_public_ip(ip),
        None => false,
    }
}

impl DirectHost {
    /// Where this node can be reached, from its providers' descriptor
    /// addresses and its own announced ones; `Some` if the card changed.
    pub(crate) fn update_card(
        &mut self,
        me: PeerId,
        scope: AddressScope,
        providers: &[(NodeId, Vec<String>)],
        announced: &[Multiaddr],
    ) -> Option<Card> {
        let mut relays = Vec::new();
        for (node, addrs) in providers {
            let Ok(peer) = chainmail_net::peer_id_from_node_key(&node.0) else {
                continue;
            };
            if peer == me {
                continue;
            }
            for addr in addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
                if dialable(scope, &addr) && !addr.iter().any(|p| p == Protocol::P2pCircuit) {
                    relays.push(addr.with(Protocol::P2p(peer)).with(Protocol::P2pCircuit));
                }
            }
        }
        // This node's own reachable addresses first (no relay needed), then
        // one relayed address per provider before a second one of any.
        let mut addrs: Vec<String> = announced
            .iter()
            .map(|a| a.clone().with(Protocol::P2p(me)).to_string())
            .collect();
        addrs.extend(
            relays
                .iter()
                .map(|r| r.clone().with(Protocol::P2p(me)).to_string()),
        );
        addrs.truncate(MAX_CARD_ADDRS);
        relays.truncate(chainmail_net::MAX_RELAYS);
        self.relays = relays;
        let card = Card {
            peer: me.to_bytes(),
            addrs,
        };
        if self.card.as_ref() == Some(&card) {
            return None;
        }
        self.card = Some(card.clone());
        Some(card)
    }

    /// The agent's new plan.
    pub(crate) fn set_plan(&mut self, plan: DirectPlan) {
        let live: Vec<Vec<u8>> = plan.peers.iter().map(|c| c.peer.clone()).collect();
        self.links.retain(|p, _| live.contains(&p.to_bytes()));
        self.plan = plan;
    }

    /// What the driver should do now.
    pub(crate) fn net_plan(&self, scope: AddressScope) -> chainmail_net::DirectPlan {
        let relays = if self.plan.reserve {
            self.relays.clone()
        } else {
            Vec::new()
        };
        let peers = self
            .plan
            .peers
            .iter()
            .filter_map(|card| {
                let peer = PeerId::from_bytes(&card.peer).ok()?;
                let addrs = card
                    .addrs
                    .iter()
                    .filter_map(|a| a.parse::<Multiaddr>().ok())
                    .filter(|a| dialable(scope, a))
                    .filter(|a| a.iter().last() == Some(Protocol::P2p(peer)))
                    .collect();
                Some((peer, addrs))
            })
            .collect();
        chainmail_net::DirectPlan {
            relays,
            peers,
            accept_relayed: self.plan.members,
        }
    }
}

/// The driver's link state as the agent takes it: name and detail.
pub(crate) fn link_words(state: &LinkState) -> (String, String) {
    let detail = match state {
        LinkState::Direct { remote } => remote.to_string(),
        LinkState::Failed { error, attempts } => format!("{error}; {attempts} attempts so far"),
        LinkState::Connecting | LinkState::Relayed => String::new(),
    };
    (state.as_str().to_owned(), detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> (NodeId, PeerId) {
        let key = ed25519_dalek::SigningKey::from_bytes(&rand::random())
            .verifying_key()
            .to_bytes();
        (
            NodeId(key),
            chainmail_net::peer_id_from_node_key(&key).unwrap(),
        )
    }

    #[test]
    fn the_card_names_relays_through_public_providers_only() {
        let (me_node, me) = node();
        let (p1, p1_peer) = node();
        let (p2, _) = node();
        let providers = vec![
            (
                p1,
                vec![
                    "/ip4/198.18.0.11/tcp/4001".to_string(),
                    "/ip4/198.18.0.11/udp/4001/quic-v1".to_string(),
                ],
            ),
            (p2, vec!["/ip4/192.168.1.5/tcp/4001".to_string()]),
            (me_node, vec!["/ip4/198.18.0.99/tcp/4001".to_string()]),
        ];
        let mut host = DirectHost::default();
        let card = host
            .update_card(me, AddressScope::Public, &providers, &[])
            .unwrap();
        assert_eq!(card.peer, me.to_bytes());
        assert_eq!(
            card.addrs,
            vec![
                format!("/ip4/198.18.0.11/tcp/4001/p2p/{p1_peer}/p2p-circuit/p2p/{me}"),
                format!("/ip4/198.18.0.11/udp/4001/quic-v1/p2p/{p1_peer}/p2p-circuit/p2p/{me}"),
            ],
            "no private provider address, not itself"
        );
        assert!(
            host.update_card(me, AddressScope::Public, &providers, &[])
                .is_none(),
            "unchanged"
        );

        // Reservations only while the user consented with somebody; a
        // peer's addresses must end in its own id and be dialable.
        assert!(host.net_plan(AddressScope::Public).relays.is_empty());
        let (_, bob) = node();
        host.set_plan(DirectPlan {
            members: false,
            reserve: true,
            peers: vec![Card {
                peer: bob.to_bytes(),
                addrs: vec![
                    format!("/ip4/198.18.0.12/tcp/4001/p2p/{p1_peer}/p2p-circuit/p2p/{bob}"),
                    format!("/ip4/10.0.0.1/tcp/4001/p2p/{p1_peer}/p2p-circuit/p2p/{bob}"),
                    format!("/ip4/198.18.0.12/tcp/4001/p2p/{p1_peer}/p2p-circuit/p2p/{me}"),
                ],
            }],
        });
        let plan = host.net_plan(AddressScope::Public);
        assert_eq!(plan.relays.len(), 2);
        assert_eq!(plan.peers.len(), 1);
        assert_eq!(plan.peers[0].1.len(), 1, "{:?}", plan.peers[0].1);
    }
}
