//! A local network of node processes on 127.0.0.1: `chainmail testnet`,
//! and the building block of `chainmail demo` and the process tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chainmail_mixnet::Preset;
use chainmail_net::peer_id_from_node_key;
use chainmail_packet::NodeId;
use chainmail_store::Store;
use ed25519_dalek::SigningKey;
use rand::RngExt;

use crate::network::{
    AccountSection, EpochSection, MailboxSection, MixingSection, NetworkFile, NetworkSection,
};
use crate::runtime::Status;
use chainmail_client::hex::hex;

/// One node of a local network.
pub(crate) struct LocalNode {
    /// Its data directory.
    pub(crate) data_dir: PathBuf,
    /// Its id.
    pub(crate) id: NodeId,
    tcp_port: u16,
    quic_port: u16,
    child: Option<Child>,
    extra_args: Vec<String>,
}

/// A running local network.
pub(crate) struct Testnet {
    /// Its directory.
    pub(crate) dir: PathBuf,
    /// The network file.
    pub(crate) network_file: PathBuf,
    /// The nodes (mixes and providers), then any client nodes.
    pub(crate) nodes: Vec<LocalNode>,
}

/// How to set up a local network.
pub(crate) struct TestnetOptions {
    pub(crate) nodes: usize,
    pub(crate) preset: Preset,
    pub(crate) epoch_secs: u64,
    pub(crate) mean_delay_ms: Option<f64>,
}

fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).context("no free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

fn free_udp_port() -> Result<u16> {
    let socket =
        std::net::UdpSocket::bind(("127.0.0.1", 0)).context("no free UDP port on 127.0.0.1")?;
    Ok(socket.local_addr()?.port())
}

/// Gives a data directory a fixed identity (so the network file can name
/// it as a bootstrap peer before it runs) and returns its id.
fn prepare_identity(data_dir: &Path) -> Result<NodeId> {
    std::fs::create_dir_all(data_dir)?;
    let store = Store::open(&data_dir.join("node.redb"))?;
    let key = match store.node_identity()? {
        Some(secret) => SigningKey::from_bytes(&secret),
        None => {
            let secret: [u8; 32] = rand::rng().random();
            store.set_node_identity(&secret)?;
            SigningKey::from_bytes(&secret)
        }
    };
    Ok(NodeId(key.verifying_key().to_bytes()))
}

impl Testnet {
    /// Writes the network file and starts `opts.nodes` node processes in
    /// `dir` (created if missing).
    pub(crate) fn start(dir: &Path, opts: &TestnetOptions) -> Result<Self> {
        if opts.nodes < 4 {
            bail!(
                "a network needs at least 4 nodes (3 mix layers and 2 providers, which may overlap); got {}",
                opts.nodes
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut nodes = Vec::new();
        for i in 0..opts.nodes {
            let data_dir = dir.join(format!("node-{i:02}"));
            let id = prepare_identity(&data_dir)?;
            nodes.push(LocalNode {
                data_dir,
                id,
                tcp_port: free_port()?,
                quic_port: free_udp_port()?,
                child: None,
                extra_args: vec![],
            });
        }
        let bootstrap = nodes
            .iter()
            .take(3)
            .map(|n| {
                Ok(format!(
                    "/ip4/127.0.0.1/tcp/{}/p2p/{}",
                    n.tcp_port,
                    peer_id_from_node_key(&n.id.0)?
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let file = NetworkFile {
            network: NetworkSection {
                id: format!("chainmail-local-{}", hex(&rand::rng().random::<[u8; 4]>())),
                name: "Local test network".into(),
                bootstrap,
                local: true,
            },
            epochs: EpochSection {
                length_secs: opts.epoch_secs,
                // Short epochs (tests) get a grace of a sixth of an epoch.
                key_grace_secs: EpochSection::default()
                    .key_grace_secs
                    .min(opts.epoch_secs / 6),
            },
            mixing: MixingSection {
                preset: opts.preset,
                mean_delay_ms: opts.mean_delay_ms,
                ..MixingSection::default()
            },
            mailboxes: MailboxSection::default(),
            // Local networks: a cheap stamp, so requests leave at once.
            accounts: AccountSection {
                stamp_difficulty: 12,
                ..AccountSection::default()
            },
        };
        file.params().map_err(|e| anyhow::anyhow!(e))?;
        let network_file = dir.join("network.toml");
        std::fs::write(&network_file, file.to_toml())?;
        let mut net = Testnet {
            dir: dir.to_path_buf(),
            network_file,
            nodes,
        };
        for i in 0..net.nodes.len() {
            net.spawn(i)?;
        }
        Ok(net)
    }

    /// Starts (or restarts) node `i`.
    pub(crate) fn spawn(&mut self, i: usize) -> Result<()> {
        let network_file = self.network_file.clone();
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.data_dir.join("node.log"))?;
        let exe = std::env::current_exe().context("cannot find the chainmail executable")?;
        let _ = std::fs::remove_file(node.data_dir.join("api.json"));
        let child = Command::new(exe)
            .arg("node")
            .arg("--network")
            .arg(&network_file)
            .arg("--data-dir")
            .arg(&node.data_dir)
            // A testnet is a network on this machine only.
            .args([
                "--listen",
                &format!("/ip4/127.0.0.1/tcp/{}", node.tcp_port),
                "--listen",
                &format!("/ip4/127.0.0.1/udp/{}/quic-v1", node.quic_port),
            ])
            .args(["--descriptor-refresh-secs", "5", "--log", "info"])
            .args(&node.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start a node process")?;
        node.child = Some(child);
        Ok(())
    }

    /// Adds a client-only node using `providers` and starts it.
    pub(crate) fn add_client(&mut self, name: &str, providers: &[NodeId]) -> Result<PathBuf> {
        let data_dir = self.dir.join(name);
        let id = prepare_identity(&data_dir)?;
        let providers: Vec<String> = providers.iter().map(|p| hex(&p.0)).collect();
        self.nodes.push(LocalNode {
            data_dir: data_dir.clone(),
            id,
            tcp_port: free_port()?,
            quic_port: free_udp_port()?,
            child: None,
            extra_args: vec![
                "--roles".into(),
                "none".into(),
                "--client".into(),
                "--providers".into(),
                providers.join(","),
            ],
        });
        self.spawn(self.nodes.len() - 1)?;
        Ok(data_dir)
    }

    /// Stops node `i` with SIGTERM (SIGKILL after a grace period).
    pub(crate) fn stop_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = crate::clock::instant() + Duration::from_secs(5);
            while crate::clock::instant() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops every node with SIGTERM, then SIGKILL after a grace period.
    pub(crate) fn stop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = &node.child {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .status();
            }
        }
        let deadline = crate::clock::instant() + Duration::from_secs(5);
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                while crate::clock::instant() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Status of node `i`, if it answers.
    pub(crate) async fn status(&self, i: usize) -> Option<Status> {
        crate::api_client::get(&self.nodes[i].data_dir, "/v1/status")
            .await
            .ok()
    }

    /// Waits until the first `count` nodes see a complete directory listing
    /// all of them; reports progress through `progress(ready, count)`.
    pub(crate) async fn wait_ready(
        &self,
        count: usize,
        timeout: Duration,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Status> {
        let deadline = crate::clock::instant() + timeout;
        loop {
            let mut ready = 0;
            let mut last = None;
            for i in 0..count {
                if let Some(s) = self.status(i).await
                    && s.directory_complete
                    && s.descriptors >= count
                {
                    ready += 1;
                    last = Some(s);
                }
            }
            progress(ready, count);
            if ready == count
                && let Some(s) = last
            {
                return Ok(s);
            }
            if crate::clock::instant() > deadline {
                bail!(
                    "only {ready} of {count} nodes saw the complete directory within {}s; logs are in {}",
                    timeout.as_secs(),
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `chainmail testnet`: starts the network, says when it is ready, runs
/// until interrupted.
pub(crate) async fn run(dir: &Path, opts: TestnetOptions) -> Result<()> {
    let mut net = Testnet::start(dir, &opts)?;
    println!("network file: {}", net.network_file.display());
    let status = net
        .wait_ready(opts.nodes, Duration::from_secs(120), |ready, total| {
            eprint!("\rwaiting for the directory: {ready}/{total} nodes ready");
        })
        .await?;
    eprintln!();
    println!(
        "directory complete: {} nodes, mix layers {:?}, {} providers (epoch {})",
        opts.nodes, status.layers, status.providers, status.epoch
    );
    for (i, node) in net.nodes.iter().enumerate() {
        println!(
            "node {i:02}: {} ({})",
            hex(&node.id.0),
            node.data_dir.display()
        );
    }
    println!("running; press Ctrl-C to stop");
    crate::shutdown_signal().await;
    net.stop();
    Ok(())
}
