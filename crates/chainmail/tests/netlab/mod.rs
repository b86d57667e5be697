//! The network lab (`scripts/netlab`) for tests and benchmarks: six
//! public hosts and homes behind NAT, real `chainmail` processes in them,
//! and the network started as the README says.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_chainmail");
const NETLAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/netlab");

pub const PUBLIC: [&str; 6] = ["pub1", "pub2", "pub3", "pub4", "pub5", "pub6"];

/// A public host's or a home router's address on the lab's internet.
pub fn public_ip(host: &str) -> String {
    match host {
        "rA" => "198.18.0.101".into(),
        "rB" => "198.18.0.102".into(),
        "rC" => "198.18.0.103".into(),
        _ => {
            let n: u32 = host.trim_start_matches("pub").parse().unwrap();
            format!("198.18.0.{}", 10 + n)
        }
    }
}

/// One lab: its namespaces, its processes and its files. Everything is
/// torn down when it is dropped, however the test ends.
///
/// [`Lab::loopback`] is the same cast on 127.0.0.1 without namespaces (the
/// public hosts on ports of their own, a local network): the baseline the
/// lab is measured against.
pub struct Lab {
    name: String,
    dir: tempfile::TempDir,
    /// The processes started, by data directory.
    pub procs: Vec<(String, Child)>,
    /// On loopback: each public host's TCP and QUIC port.
    loopback: Option<std::collections::HashMap<String, (u16, u16)>>,
}

impl Lab {
    pub fn up() -> Self {
        let name = format!("l{:05x}", std::process::id() & 0xfffff);
        let out = Command::new(NETLAB).args(["up", &name]).output().unwrap();
        assert!(
            out.status.success(),
            "the lab did not come up (it needs root and nftables): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Lab {
            name,
            dir: tempfile::tempdir().unwrap(),
            procs: Vec::new(),
            loopback: None,
        }
    }

    /// The same hosts, all on 127.0.0.1.
    pub fn loopback() -> Self {
        let port = |udp: bool| -> u16 {
            if udp {
                std::net::UdpSocket::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            } else {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            }
        };
        Lab {
            name: "loopback".into(),
            dir: tempfile::tempdir().unwrap(),
            procs: Vec::new(),
            loopback: Some(
                PUBLIC
                    .iter()
                    .map(|h| (h.to_string(), (port(false), port(true))))
                    .collect(),
            ),
        }
    }

    pub fn is_loopback(&self) -> bool {
        self.loopback.is_some()
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.name)
    }

    /// A public host's TCP address.
    pub fn public_tcp(&self, host: &str) -> String {
        match &self.loopback {
            Some(ports) => format!("/ip4/127.0.0.1/tcp/{}", ports[host].0),
            None => format!("/ip4/{}/tcp/4001", public_ip(host)),
        }
    }

    /// A command run on `host`.
    fn command(&self, host: &str) -> Command {
        if self.loopback.is_some() {
            Command::new(EXE)
        } else {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &self.ns(host), EXE]);
            cmd
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs the chainmail CLI on `host`.
    pub fn cli(&self, host: &str, args: &[&str]) -> Output {
        self.command(host).args(args).output().unwrap()
    }

    pub fn cli_ok(&self, host: &str, args: &[&str]) -> String {
        let out = self.cli(host, args);
        assert!(
            out.status.success(),
            "chainmail {args:?} on {host} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, host: &str, args: &[&str]) -> Option<Value> {
        let out = self.cli(host, args);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Starts `chainmail node` on `host` with its data in `data`.
    pub fn node(&mut self, host: &str, data: &Path, network: &Path, extra: &[&str]) {
        std::fs::create_dir_all(data).unwrap();
        let log = std::fs::File::create(data.join("node.log")).unwrap();
        let _ = std::fs::remove_file(data.join("api.json"));
        let mut cmd = self.command(host);
        cmd.args(["node", "--network"]).arg(network);
        if let Some((tcp, udp)) = self.loopback.as_ref().and_then(|p| p.get(host)) {
            cmd.args(["--listen", &format!("/ip4/127.0.0.1/tcp/{tcp}")])
                .args(["--listen", &format!("/ip4/127.0.0.1/udp/{udp}/quic-v1")]);
        }
        let child = cmd
            .arg("--data-dir")
            .arg(data)
            .args(["--descriptor-refresh-secs", "5", "--log", "info"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.push((data.display().to_string(), child));
    }

    /// Kills the node whose data is in `data` (SIGKILL) and waits for it.
    pub fn kill(&mut self, data: &Path) {
        let key = data.display().to_string();
        let i = self.procs.iter().position(|(k, _)| *k == key).unwrap();
        let (_, mut child) = self.procs.remove(i);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn status(&self, host: &str, data: &Path) -> Option<Value> {
        self.json(host, &["status", "--json", "--data-dir", data.to_str()?])
    }

    /// Packets router `from` forwarded to router `to`'s public address.
    pub fn count(&self, from: &str, to: &str) -> u64 {
        let out = Command::new(NETLAB)
            .args(["count", &self.name, from, to])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// Every node's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for (data, _) in &self.procs {
            let log = std::fs::read_to_string(Path::new(data).join("node.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            all.push_str(&format!("--- {data}\n"));
            for line in tail.into_iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.loopback.is_none() {
            let _ = Command::new(NETLAB).args(["down", &self.name]).status();
        }
    }
}

pub fn wait_for<T>(
    lab: &Lab,
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                lab.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn peer_id(data: &Path) -> String {
    let info: Value =
        serde_json::from_slice(&std::fs::read(data.join("api.json")).unwrap()).unwrap();
    info["peer_id"].as_str().unwrap().to_string()
}

/// The public part of the lab: six nodes on public hosts, started the way
/// the README says. Returns the network file.
pub fn start_public_network(lab: &mut Lab) -> PathBuf {
    let first = lab.path("first.toml");
    let network = lab.path("network.toml");
    let local = lab.is_loopback();
    let new_network = |out: &Path, bootstrap: &[String]| {
        let mut args = vec![
            "network",
            "new",
            "--id",
            "lab-net",
            "--name",
            "Lab network",
            "--out",
            out.to_str().unwrap(),
        ];
        for b in bootstrap {
            args.extend(["--bootstrap", b.as_str()]);
        }
        if local {
            args.push("--local");
        }
        let out = Command::new(EXE).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The first node, from a file without bootstrap nodes.
    new_network(&first, &[]);
    let pub1 = lab.path("pub1");
    lab.node("pub1", &pub1, &first, &[]);
    wait_for(lab, "the first node", Duration::from_secs(30), || {
        lab.status("pub1", &pub1)
    });
    let boot = format!("{}/p2p/{}", lab.public_tcp("pub1"), peer_id(&pub1));
    new_network(&network, &[boot]);
    for host in &PUBLIC[1..] {
        let data = lab.path(host);
        lab.node(host, &data, &network, &[]);
    }
    for host in PUBLIC {
        let data = lab.path(host);
        wait_for(
            lab,
            &format!("{host} confirmed reachable and in the directory"),
            Duration::from_secs(120),
            || {
                let s = lab.status(host, &data)?;
                (s["in_directory"] == true && s["directory_complete"] == true).then_some(s)
            },
        );
    }
    network
}

/// A user at `host` (a home): account, then a client-only node.
pub fn start_user(lab: &mut Lab, host: &str, name: &str, network: &Path, extra: &[&str]) -> String {
    let data = lab.path(name);
    let init: Value = serde_json::from_str(&lab.cli_ok(
        host,
        &[
            "init",
            "--network",
            network.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--name",
            name,
            "--json",
        ],
    ))
    .unwrap();
    lab.node(host, &data, network, extra);
    wait_for(
        lab,
        &format!("{name}'s node"),
        Duration::from_secs(120),
        || {
            let s = lab.status(host, &data)?;
            s["address"].as_str().map(String::from)
        },
    );
    init["address"].as_str().unwrap().to_string()
}

pub fn inbox(lab: &Lab, host: &str, data: &Path, kind: &str) -> Vec<Value> {
    let out = lab.cli(
        host,
        &["inbox", "--json", "--data-dir", data.to_str().unwrap()],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["kind"] == kind)
        .collect()
}

/// Texts an account was shown, in the order it was shown them.
pub fn texts(lab: &Lab, host: &str, data: &Path) -> Vec<String> {
    inbox(lab, host, data, "message")
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

pub fn contact_state(lab: &Lab, host: &str, data: &Path, name: &str) -> Option<String> {
    let list = lab.json(
        host,
        &["contact", "list", "--json", "--data-dir", data.to_str()?],
    )?;
    list.as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["state"].as_str().map(String::from))
}

/// The node id (hex) of the node in `data`, from its status.
pub fn node_id(lab: &Lab, host: &str, data: &Path) -> String {
    lab.status(host, data).unwrap()["node_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `a` asks `b` to talk and `b` accepts.
pub fn befriend(lab: &Lab, a: (&str, &str), b: (&str, &str), b_address: &str) {
    let (a_host, a_name) = a;
    let (b_host, b_name) = b;
    let a_data = lab.path(a_name);
    let b_data = lab.path(b_name);
    lab.cli_ok(
        a_host,
        &[
            "contact",
            "add",
            b_address,
            "--name",
            b_name,
            "--data-dir",
            a_data.to_str().unwrap(),
        ],
    );
    wait_for(lab, "the contact request", Duration::from_secs(180), || {
        (contact_state(lab, b_host, &b_data, a_name).as_deref() == Some("request-received"))
            .then_some(())
    });
    lab.cli_ok(
        b_host,
        &[
            "contact",
            "accept",
            a_name,
            "--data-dir",
            b_data.to_str().unwrap(),
        ],
    );
    wait_for(lab, "the acceptance", Duration::from_secs(180), || {
        (contact_state(lab, a_host, &a_data, b_name).as_deref() == Some("accepted")).then_some(())
    });
}

/// One counter of a node's /metrics (summed over labels).
pub fn metric(lab: &Lab, host: &str, data: &Path, name: &str) -> u64 {
    let info: Value =
        serde_json::from_slice(&std::fs::read(data.join("api.json")).unwrap()).unwrap();
    let port = info["port"].as_u64().unwrap();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let auth = format!("Authorization: Bearer {}", info["token"].as_str().unwrap());
    let out = if lab.is_loopback() {
        Command::new("curl")
            .args(["-s", "-H", &auth, &url])
            .output()
            .unwrap()
    } else {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns(host),
                "curl",
                "-s",
                "-H",
                &auth,
                &url,
            ])
            .output()
            .unwrap()
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Direct mode with `contact` as `host`'s status shows it: state and detail.
pub fn direct_state(lab: &Lab, host: &str, data: &Path, contact: &str) -> Option<(String, String)> {
    let s = lab.status(host, data)?;
    s["direct"].as_array()?.iter().find_map(|d| {
        (d["contact"] == contact).then(|| {
            (
                d["state"].as_str().unwrap_or_default().to_string(),
                d["detail"].as_str().unwrap_or_default().to_string(),
            )
        })
    })
}

/// Both users turn direct mode on with each other; returns once both see
/// `want` (e.g. "direct" or "failed"), with `a`'s detail line.
pub fn direct_on(lab: &Lab, a: (&str, &str), b: (&str, &str), want: &str) -> String {
    let (a_host, a_name) = a;
    let (b_host, b_name) = b;
    let a_data = lab.path(a_name);
    let b_data = lab.path(b_name);
    let out = lab.cli_ok(
        a_host,
        &[
            "contact",
            "direct",
            b_name,
            "on",
            "--data-dir",
            a_data.to_str().unwrap(),
        ],
    );
    assert!(out.contains("can see your network (IP) address"), "{out}");
    // Bob is told, and asked.
    wait_for(
        lab,
        "the direct-mode offer",
        Duration::from_secs(120),
        || {
            let (state, detail) = direct_state(lab, b_host, &b_data, a_name)?;
            (state == "offered").then_some(detail)
        },
    );
    lab.cli_ok(
        b_host,
        &[
            "contact",
            "direct",
            a_name,
            "on",
            "--data-dir",
            b_data.to_str().unwrap(),
        ],
    );
    let detail = wait_for(
        lab,
        &format!("direct mode {want} at {a_name}"),
        Duration::from_secs(150),
        || {
            let (state, detail) = direct_state(lab, a_host, &a_data, b_name)?;
            (state == want).then_some(detail)
        },
    );
    wait_for(
        lab,
        &format!("direct mode {want} at {b_name}"),
        Duration::from_secs(150),
        || {
            let (state, _) = direct_state(lab, b_host, &b_data, a_name)?;
            (state == want).then_some(())
        },
    );
    detail
}

/// `from` sends `count` messages to `to` (names prefixed by `tag`); waits
/// until all arrived, exactly once and in order.
pub fn exchange(lab: &Lab, from: (&str, &str), to: (&str, &str), tag: &str, count: usize) {
    let from_data = lab.path(from.1);
    let to_data = lab.path(to.1);
    let want: Vec<String> = (0..count).map(|k| format!("{tag}{k:02}")).collect();
    for text in &want {
        lab.cli_ok(
            from.0,
            &[
                "send",
                to.1,
                text,
                "--data-dir",
                from_data.to_str().unwrap(),
            ],
        );
    }
    wait_for(
        lab,
        &format!("{tag} messages"),
        Duration::from_secs(180),
        || {
            let got: Vec<String> = texts(lab, to.0, &to_data)
                .into_iter()
                .filter(|t| t.starts_with(tag))
                .collect();
            assert!(got.len() <= count, "duplicates: {got:?}");
            (got == want).then_some(())
        },
    );
}

/// A node's direct-mode counters, in one line (for failure messages).
pub fn direct_metrics(lab: &Lab, host: &str, data: &Path) -> String {
    [
        "sent",
        "received",
        "refused",
        "fallback",
        "agent_refused",
        "hole_punch_ok",
        "hole_punch_failed",
    ]
    .map(|e| {
        let name = format!("chainmail_direct_total{{event=\"{e}\"}}");
        format!("{e}={}", metric(lab, host, data, &name))
    })
    .join(" ")
}

/// `chainmail community ARGS --json` as `name` on `host`.
pub fn community(lab: &Lab, host: &str, name: &str, args: &[&str]) -> Value {
    let data = lab.path(name);
    let mut all = vec!["community"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", "--data-dir", data.to_str().unwrap()]);
    serde_json::from_str(&lab.cli_ok(host, &all)).unwrap()
}

/// The posts of community `community` as `name` sees them, in order.
pub fn community_posts(lab: &Lab, host: &str, name: &str, community: &str) -> Vec<String> {
    let data = lab.path(name);
    let out = lab.cli(
        host,
        &[
            "community",
            "log",
            community,
            "--json",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["kind"].as_str().is_some_and(|k| k.starts_with("post")))
        .filter_map(|e| e["text"].as_str().map(str::to_string))
        .collect()
}

/// The public network, and alice (home A), bob (home B) and carol (home C,
/// symmetric NAT) as client-only users; alice is a contact of both others.
/// Returns their addresses.
pub fn three_homes(lab: &mut Lab) -> [String; 3] {
    let network = start_public_network(lab);
    let client = ["--roles", "none", "--client"];
    let alice = start_user(lab, "hA", "alice", &network, &client);
    let bob = start_user(lab, "hB", "bob", &network, &client);
    let carol = start_user(lab, "hC", "carol", &network, &client);
    befriend(lab, ("hA", "alice"), ("hB", "bob"), &bob);
    befriend(lab, ("hA", "alice"), ("hC", "carol"), &carol);
    [alice, bob, carol]
}
