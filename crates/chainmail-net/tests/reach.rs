//! Reachability and rejoining, with real swarms on 127.0.0.1: bootstrap
//! peers redialled until they answer, kept peers brought back, a bootstrap
//! of another network reported, addresses announced only within the
//! network's scope.

mod common;

use std::time::Duration;

use chainmail_net::{AddressScope, Multiaddr, NetConfig, NetError, NetEvent, NetHandle, PeerId};
use common::*;
use libp2p::multiaddr::Protocol;

/// A free TCP port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn peer_of(secret: [u8; 32]) -> PeerId {
    libp2p::identity::Keypair::ed25519_from_bytes(secret)
        .unwrap()
        .public()
        .to_peer_id()
}

fn tcp_at(port: u16) -> Multiaddr {
    format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
}

async fn poll_until<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connected_to(handle: &NetHandle, peer: PeerId) -> bool {
    handle.connected_peers().await.unwrap().contains(&peer)
}

/// A client started while its bootstrap node is down keeps trying, says
/// why it has no peer, and joins within seconds once the node is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_before_its_bootstrap_peer_joins_when_it_comes_up() {
    init_tracing();
    let net = network("rejoin");
    let port = free_port();
    let boot_secret = secret();
    let boot_peer = peer_of(boot_secret);
    let boot_addr = tcp_at(port).with(Protocol::P2p(boot_peer));

    let mut client = config(&net, Vec::new());
    client.bootstrap = vec![boot_addr.clone()];
    client.min_peers = 1;
    let (client, _events) = chainmail_net::Net::spawn(client).unwrap();

    // Down: several attempts fail, each reported with its reason.
    let reach = poll_until("failed attempts", Duration::from_secs(15), async || {
        let r = client.reachability().await.unwrap();
        r.peers
            .iter()
            .find(|p| p.peer == boot_peer && p.failures >= 2)
            .cloned()
    })
    .await;
    assert_eq!(reach.bootstrap.as_ref(), Some(&boot_addr));
    assert!(!reach.connected);
    assert!(reach.last_error.is_some(), "{reach:?}");
    assert!(reach.retry_in.is_some(), "{reach:?}");

    // Up: the client finds it on its own.
    let mut boot = NetConfig::new(net.clone(), boot_secret);
    boot.listen_addrs = vec![tcp_at(port)];
    let (boot, _boot_events) = chainmail_net::Net::spawn(boot).unwrap();
    // The next attempt comes at most one backoff (60 s at most) later; on a
    // loaded machine the failures before the node came up can have pushed
    // it that far.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(75);
    while !connected_to(&client, boot_peer).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client never joined: {:?}",
            client.reachability().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = client.reachability().await.unwrap();
    let p = r.peers.iter().find(|p| p.peer == boot_peer).unwrap();
    assert!(
        p.connected && p.failures == 0 && p.last_error.is_none(),
        "{p:?}"
    );
    boot.shutdown().await;
    client.shutdown().await;
}

/// A kept peer that goes away and comes back (a provider restarting) is
/// reconnected without anyone asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_peer_is_reconnected_after_a_restart() {
    init_tracing();
    let net = network("keep");
    let port = free_port();
    let provider_secret = secret();
    let start_provider = || {
        let mut c = NetConfig::new(net.clone(), provider_secret);
        c.listen_addrs = vec![tcp_at(port)];
        chainmail_net::Net::spawn(c).unwrap()
    };
    let (provider, _p_events) = start_provider();
    let provider_peer = provider.local_peer_id();

    let mut c = config(&net, Vec::new());
    c.min_peers = 0;
    let (client, _events) = chainmail_net::Net::spawn(c).unwrap();
    client
        .add_peer_address(provider_peer, tcp_at(port))
        .await
        .unwrap();
    client.keep_connected(provider_peer, true).await.unwrap();
    poll_until("connected", Duration::from_secs(10), async || {
        connected_to(&client, provider_peer).await.then_some(())
    })
    .await;

    provider.shutdown().await;
    poll_until("the loss is seen", Duration::from_secs(10), async || {
        (!connected_to(&client, provider_peer).await).then_some(())
    })
    .await;
    // Down for a few seconds: attempts fail meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (provider, _p_events) = start_provider();
    poll_until("reconnected", Duration::from_secs(15), async || {
        connected_to(&client, provider_peer).await.then_some(())
    })
    .await;
    provider.shutdown().await;
    client.shutdown().await;
}

/// A bootstrap address that leads to a node of another network is
/// reported as such, and tried again only rarely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_peer_of_another_network_is_reported() {
    init_tracing();
    within(async {
        let other = start(config(&network("other"), tcp())).await;
        let mut c = config(&network("mine"), Vec::new());
        c.bootstrap = vec![other.addr.clone()];
        c.min_peers = 1;
        let (client, _events) = chainmail_net::Net::spawn(c).unwrap();
        let reach = poll_until("the refusal", Duration::from_secs(10), async || {
            let r = client.reachability().await.unwrap();
            r.peers.into_iter().find(|p| {
                p.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("another network"))
            })
        })
        .await;
        assert!(!reach.connected);
        assert!(
            reach.retry_in.unwrap() > Duration::from_secs(30),
            "{reach:?}"
        );
        client.shutdown().await;
    })
    .await;
}

/// On a local network a node's listen addresses are confirmed at once; on
/// a public network loopback addresses are never announced, even when a
/// peer confirms them by dialling back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_are_announced_only_within_the_scope() {
    init_tracing();
    within(async {
        let mut local = start(config(&network("local-scope"), tcp())).await;
        let confirmed = wait_for(&mut local.events, |event| match event {
            NetEvent::AddressConfirmed { addr } => Some(addr),
            _ => None,
        })
        .await;
        assert!(confirmed.to_string().starts_with("/ip4/127.0.0.1/tcp/"));

        let net = network("public-scope");
        let public = |net: &str| {
            let mut c = config(net, tcp());
            c.scope = AddressScope::Public;
            c.autonat = true;
            c.timeouts.reachability_probe = Duration::from_millis(500);
            c
        };
        let mut a = start(public(&net)).await;
        let mut b = start(public(&net)).await;
        connect(&mut a, &mut b).await;
        // Each dials the other's loopback address back, and it works...
        let probed = poll_until("a reachability test", Duration::from_secs(10), async || {
            let r = b.handle.reachability().await.unwrap();
            r.probes.into_iter().find(|p| p.error.is_none())
        })
        .await;
        assert!(probed.addr.to_string().starts_with("/ip4/127.0.0.1/"));
        // ...but nothing is announced.
        for node in [&a, &b] {
            assert!(
                node.handle
                    .reachability()
                    .await
                    .unwrap()
                    .announced
                    .is_empty(),
                "a loopback address was announced on a public network"
            );
        }
        while let Some(event) = b.events.try_recv() {
            assert!(
                !matches!(event, NetEvent::AddressConfirmed { .. }),
                "{event:?}"
            );
        }
    })
    .await;
}

#[test]
fn a_private_external_address_is_refused_on_a_public_network() {
    let mut c = config(&network("ext"), tcp());
    c.scope = AddressScope::Public;
    c.external_addrs = vec!["/ip4/192.168.1.10/tcp/4001".parse().unwrap()];
    let err = c.validate().unwrap_err();
    assert!(matches!(err, NetError::InvalidConfig { .. }), "{err}");
    assert!(err.to_string().contains("publicly routable"), "{err}");
    c.external_addrs = vec!["/ip4/198.18.0.10/tcp/4001".parse().unwrap()];
    c.validate().unwrap();
}
