//! Direct mode with real swarms on 127.0.0.1: two nodes that hold
//! reservations at a relay link up through it, hole punching gives them a
//! direct connection, and messages travel over it; a stranger can neither
//! come in through the relay nor hand a node a direct message.

mod common;

use chainmail_net::{
    AddressScope, DirectPlan, LinkState, Multiaddr, NetError, NetEvent, PeerId, RequestKind,
};
use common::*;
use libp2p::multiaddr::Protocol;

fn both() -> Vec<Multiaddr> {
    let mut all = tcp();
    all.extend(quic());
    all
}

fn circuit(relay: &Multiaddr) -> Multiaddr {
    relay.clone().with(Protocol::P2pCircuit)
}

fn through(relay: &Multiaddr, peer: PeerId) -> Multiaddr {
    circuit(relay).with(Protocol::P2p(peer))
}

async fn reserved(node: &mut Node) {
    wait_for(&mut node.events, |event| match event {
        NetEvent::ListeningOn { addr } if addr.iter().any(|p| p == Protocol::P2pCircuit) => {
            Some(())
        }
        _ => None,
    })
    .await;
}

async fn direct_with(node: &mut Node, peer: PeerId) -> Multiaddr {
    wait_for(&mut node.events, |event| match event {
        NetEvent::DirectLink {
            peer: p,
            state: LinkState::Direct { remote },
        } if p == peer => Some(remote),
        _ => None,
    })
    .await
}

/// Waits until `node` is (or is not) connected to `peer`.
async fn poll_connected(node: &Node, peer: PeerId, connected: bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while node.handle.connected_peers().await.unwrap().contains(&peer) != connected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connected to {peer} stayed {}",
            !connected
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_punch_through_a_relay_and_strangers_stay_out() {
    init_tracing();
    within(async {
        let net = network("direct");
        let mut relay = config(&net, both());
        relay.relay_server = true;
        let mut relay = start(relay).await;
        // As behind NAT: no address of theirs is confirmed, so what peers
        // observe (identify) is what hole punching tries.
        let behind_nat = || {
            let mut c = config(&net, both());
            c.scope = AddressScope::Public;
            // Clients: no DHT, so no connections but the ones made here.
            c.dht = false;
            c
        };
        let mut a = start(behind_nat()).await;
        let mut b = start(behind_nat()).await;
        let mut stranger = start(behind_nat()).await;
        connect(&mut relay, &mut a).await;
        connect(&mut relay, &mut b).await;
        connect(&mut relay, &mut stranger).await;

        // Each holds a reservation at the relay before the other dials.
        for node in [&mut a, &mut b] {
            let plan = DirectPlan {
                accept_relayed: false,
                relays: vec![circuit(&relay.addr)],
                peers: Vec::new(),
            };
            node.handle.set_direct(plan).await.unwrap();
            reserved(node).await;
        }
        let (a_peer, b_peer) = (a.peer, b.peer);
        a.handle
            .set_direct(DirectPlan {
                accept_relayed: false,
                relays: vec![circuit(&relay.addr)],
                peers: vec![(b_peer, vec![through(&relay.addr, b_peer)])],
            })
            .await
            .unwrap();
        b.handle
            .set_direct(DirectPlan {
                accept_relayed: false,
                relays: vec![circuit(&relay.addr)],
                peers: vec![(a_peer, vec![through(&relay.addr, a_peer)])],
            })
            .await
            .unwrap();
        let seen_by_a = direct_with(&mut a, b_peer).await;
        assert!(
            !seen_by_a.iter().any(|p| p == Protocol::P2pCircuit),
            "{seen_by_a}"
        );
        direct_with(&mut b, a_peer).await;

        // A message over the direct connection, answered.
        let ask = a
            .handle
            .request(b_peer, RequestKind::Direct, b"hello".to_vec());
        let answer = async {
            let (bytes, reply) = wait_for(&mut b.events, |event| match event {
                NetEvent::RequestReceived {
                    kind: RequestKind::Direct,
                    peer,
                    bytes,
                    reply,
                } if peer == a_peer => Some((bytes, reply)),
                _ => None,
            })
            .await;
            assert_eq!(bytes, b"hello");
            reply.send(b"ok".to_vec()).unwrap();
        };
        let (response, ()) = tokio::join!(ask, answer);
        assert_eq!(response.unwrap(), b"ok");
        assert!(
            a.handle.metrics().hole_punches_succeeded + b.handle.metrics().hole_punches_succeeded
                >= 1
        );

        // A stranger who learnt b's relayed address: its relayed connection
        // is closed, and with no direct link its own driver sends nothing.
        stranger
            .handle
            .dial(through(&relay.addr, b_peer))
            .await
            .unwrap();
        eventually("b refuses the stranger's relayed connection", || {
            b.handle.metrics().direct_refused >= 1
        })
        .await;
        assert_eq!(
            stranger
                .handle
                .request(b_peer, RequestKind::Direct, b"spam".to_vec())
                .await,
            Err(NetError::NotDirect(b_peer))
        );

        // A stranger connected straight to b (it knows b's address) whose
        // own plan names b: its request reaches b and is refused there.
        stranger
            .handle
            .set_direct(DirectPlan {
                accept_relayed: false,
                relays: Vec::new(),
                peers: vec![(b_peer, Vec::new())],
            })
            .await
            .unwrap();
        stranger.handle.dial(b.addr.clone()).await.unwrap();
        direct_with(&mut stranger, b_peer).await;
        let refused_before = b.handle.metrics().direct_refused;
        let result = stranger
            .handle
            .request(b_peer, RequestKind::Direct, b"spam".to_vec())
            .await;
        assert!(
            matches!(result, Err(NetError::RequestFailed(_))),
            "{result:?}"
        );
        assert!(b.handle.metrics().direct_refused > refused_before);

        // Ending direct mode closes the link.
        a.handle.set_direct(DirectPlan::default()).await.unwrap();
        assert!(a.handle.direct_links().await.unwrap().is_empty());
        poll_connected(&a, b_peer, false).await;
    })
    .await;
}
