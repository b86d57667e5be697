//! Helpers for tests with real swarms on 127.0.0.1.

#![allow(dead_code, unreachable_pub)]

use std::{future::Future, time::Duration};

use chainmail_net::{
    Frame, Multiaddr, Net, NetConfig, NetEvent, NetEvents, NetHandle, PACKET_SIZE, PeerId,
};
use libp2p::{
    StreamProtocol, SwarmBuilder, futures::StreamExt, identity, multiaddr::Protocol, noise, yamux,
};

/// Every test body runs under this limit.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Waiting for one event or condition.
pub const WAIT: Duration = Duration::from_secs(10);

pub async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, future)
        .await
        .expect("test took longer than its time limit")
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A fresh random identity secret.
pub fn secret() -> [u8; 32] {
    let keypair = identity::Keypair::generate_ed25519()
        .try_into_ed25519()
        .unwrap();
    keypair.secret().as_ref().try_into().unwrap()
}

pub fn tcp() -> Vec<Multiaddr> {
    vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]
}

pub fn quic() -> Vec<Multiaddr> {
    vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()]
}

/// A config for network `network`, listening on `listen`.
pub fn config(network: &str, listen: Vec<Multiaddr>) -> NetConfig {
    let mut config = NetConfig::new(network, secret());
    config.listen_addrs = listen;
    config
}

/// A network id unique to one test.
pub fn network(name: &str) -> String {
    format!("chainmail-test-{name}")
}

pub struct Node {
    pub handle: NetHandle,
    pub events: NetEvents,
    pub peer: PeerId,
    /// First listen address, with `/p2p/<peer>`.
    pub addr: Multiaddr,
}

pub async fn start(config: NetConfig) -> Node {
    let (handle, mut events) = Net::spawn(config).expect("driver starts");
    let peer = handle.local_peer_id();
    let addr = wait_for(&mut events, |event| match event {
        NetEvent::ListeningOn { addr } => Some(addr),
        _ => None,
    })
    .await;
    assert!(addr.to_string().starts_with("/ip4/127.0.0.1/"), "{addr}");
    let addr = addr.with(Protocol::P2p(peer));
    Node {
        handle,
        events,
        peer,
        addr,
    }
}

/// The first event `pick` accepts; other events are discarded.
pub async fn wait_for<T>(events: &mut NetEvents, mut pick: impl FnMut(NetEvent) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.recv().await.expect("driver still running");
            if let Some(found) = pick(event) {
                return found;
            }
        }
    })
    .await
    .expect("event did not come in time")
}

/// Polls `condition` until it holds.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_connected(node: &mut Node, peer: PeerId) {
    wait_for(&mut node.events, |event| match event {
        NetEvent::PeerConnected { peer: p } if p == peer => Some(()),
        _ => None,
    })
    .await;
}

/// Waits until `node` saw every peer of `peers` connect, in any order.
pub async fn wait_connected_all(node: &mut Node, peers: &[PeerId]) {
    let mut missing: Vec<PeerId> = peers.to_vec();
    while !missing.is_empty() {
        let peer = wait_for(&mut node.events, |event| match event {
            NetEvent::PeerConnected { peer } => Some(peer),
            _ => None,
        })
        .await;
        missing.retain(|p| *p != peer);
    }
}

/// `b` dials `a`; returns when both saw the other identified.
pub async fn connect(a: &mut Node, b: &mut Node) {
    b.handle.dial(a.addr.clone()).await.unwrap();
    wait_connected(b, a.peer).await;
    wait_connected(a, b.peer).await;
}

/// Frame number `index` of stream `tag`: recognisable in every byte.
pub fn frame(tag: u8, index: u32) -> Box<Frame> {
    let mut frame = Box::new([0u8; PACKET_SIZE]);
    for (j, byte) in frame.iter_mut().enumerate() {
        *byte = (j as u8) ^ (index as u8).wrapping_mul(31) ^ tag;
    }
    frame[0] = tag;
    frame[1..5].copy_from_slice(&index.to_be_bytes());
    frame
}

/// The next `count` frames from `from`, in arrival order.
pub async fn receive_frames(events: &mut NetEvents, from: PeerId, count: usize) -> Vec<Box<Frame>> {
    let mut frames = Vec::with_capacity(count);
    while frames.len() < count {
        let frame = wait_for(events, |event| match event {
            NetEvent::PacketReceived { peer, frame } if peer == from => Some(frame),
            _ => None,
        })
        .await;
        frames.push(frame);
    }
    frames
}

/// A bare libp2p peer (TCP only, no identify) that can open the packet
/// protocol and write whatever bytes it likes.
pub struct RawPeer {
    pub peer: PeerId,
    pub control: libp2p_stream::Control,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawPeer {
    pub async fn connect(target: &Multiaddr) -> Self {
        let mut swarm = SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                Default::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|_| libp2p_stream::Behaviour::new())
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
            .build();
        let peer = *swarm.local_peer_id();
        let control = swarm.behaviour().new_control();
        swarm.dial(target.clone()).unwrap();
        let task = tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        Self {
            peer,
            control,
            task,
        }
    }

    /// Opens a stream of `protocol` to `target`, retrying while the
    /// connection comes up.
    pub async fn open(&mut self, target: PeerId, protocol: &str) -> libp2p::Stream {
        let protocol = StreamProtocol::try_from_owned(protocol.to_owned()).unwrap();
        for _ in 0..100 {
            match self.control.open_stream(target, protocol.clone()).await {
                Ok(stream) => return stream,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        panic!("could not open a {protocol} stream");
    }
}
