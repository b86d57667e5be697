//! Shared by the tests and benches that talk to a node as a raw libp2p peer.

#![allow(dead_code, unreachable_pub, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use chainmail_mixnet::{NodeDescriptor, Time, network_hash};
use chainmail_net::{NetHandle, PeerId};

/// The wall clock as the cores' time.
pub fn now() -> Time {
    Time(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    )
}

/// The node's own descriptor, asked from the node (descriptor sync request)
/// and verified.
pub async fn node_descriptor(net: &NetHandle, node: PeerId, network_id: &str) -> NodeDescriptor {
    let network = network_hash(network_id);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(bytes) = net.request(node, vec![0x02]).await
            && let Ok(all) = postcard::from_bytes::<Vec<Vec<u8>>>(&bytes)
            && let Some(d) = all
                .iter()
                .find_map(|b| NodeDescriptor::verify(b, &network, now()).ok())
        {
            return d;
        }
        assert!(Instant::now() < deadline, "no descriptor from the node");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
