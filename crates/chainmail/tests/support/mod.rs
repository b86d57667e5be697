//! Shared by the tests and benches that talk to a node as a raw libp2p peer.

#![allow(dead_code, unreachable_pub, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use chainmail_mixnet::{NodeDescriptor, Time, network_hash};
use chainmail_net::{NetHandle, PeerId};

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
        if let Ok(bytes) = net
            .request(node, chainmail_net::RequestKind::Descriptors, Vec::new())
            .await
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

/// A `chainmail node` process with role mix, killed (SIGKILL) on drop.
pub struct MixNode {
    child: std::process::Child,
    /// Port of its local API on 127.0.0.1.
    pub api_port: u64,
    /// Its peer id.
    pub peer: PeerId,
    /// Its process id.
    pub pid: u32,
    /// The local API's bearer token.
    pub token: String,
}

impl MixNode {
    /// Starts a mix node of the network in `network` with data in `data`,
    /// listening on TCP `port`, accepting `peer_packet_rate` packets/s per
    /// peer; returns once its API is up.
    pub fn start(
        network: &std::path::Path,
        data: &std::path::Path,
        port: u16,
        peer_packet_rate: u32,
    ) -> Self {
        let _ = std::fs::remove_file(data.join("api.json"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_chainmail"))
            .args(["node", "--network"])
            .arg(network)
            .arg("--data-dir")
            .arg(data)
            .args(["--roles", "mix"])
            .args(["--listen", &format!("/ip4/127.0.0.1/tcp/{port}")])
            .args(["--peer-packet-rate", &peer_packet_rate.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let info: serde_json::Value = loop {
            if let Ok(bytes) = std::fs::read(data.join("api.json")) {
                break serde_json::from_slice(&bytes).unwrap();
            }
            assert!(Instant::now() < deadline, "node did not start");
            std::thread::sleep(Duration::from_millis(100));
        };
        MixNode {
            pid: child.id(),
            child,
            api_port: info["port"].as_u64().unwrap(),
            peer: info["peer_id"].as_str().unwrap().parse().unwrap(),
            token: info["token"].as_str().unwrap().to_string(),
        }
    }

    /// Its `/metrics` text.
    pub fn metrics(&self) -> String {
        let out = std::process::Command::new("curl")
            .args(["-s", "-H", &format!("Authorization: Bearer {}", self.token)])
            .arg(format!("http://127.0.0.1:{}/metrics", self.api_port))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for MixNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
