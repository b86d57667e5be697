//! Real processes in a network lab (`scripts/netlab`): six public hosts on
//! an "internet" with 1 % packet loss, and homes behind NAT routers. The
//! network is started as its README says: a first node, `network new` with
//! its address, the other public nodes, then users at home.
//!
//! These tests need root (network namespaces) and nftables; `scripts/test`
//! runs them (`cargo test --test lab -- --ignored`).

#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_chainmail");
const NETLAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/netlab");

const PUBLIC: [&str; 6] = ["pub1", "pub2", "pub3", "pub4", "pub5", "pub6"];

fn public_ip(host: &str) -> String {
    let n: u32 = host.trim_start_matches("pub").parse().unwrap();
    format!("198.18.0.{}", 10 + n)
}

/// One lab: its namespaces, its processes and its files. Everything is
/// torn down when it is dropped, however the test ends.
struct Lab {
    name: String,
    dir: tempfile::TempDir,
    procs: Vec<(String, Child)>,
}

impl Lab {
    fn up() -> Self {
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
        }
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.name)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs the chainmail CLI on `host`.
    fn cli(&self, host: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(host), EXE])
            .args(args)
            .output()
            .unwrap()
    }

    fn cli_ok(&self, host: &str, args: &[&str]) -> String {
        let out = self.cli(host, args);
        assert!(
            out.status.success(),
            "chainmail {args:?} on {host} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, host: &str, args: &[&str]) -> Option<Value> {
        let out = self.cli(host, args);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Starts `chainmail node` on `host` with its data in `data`.
    fn node(&mut self, host: &str, data: &Path, network: &Path, extra: &[&str]) {
        std::fs::create_dir_all(data).unwrap();
        let log = std::fs::File::create(data.join("node.log")).unwrap();
        let _ = std::fs::remove_file(data.join("api.json"));
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host), EXE, "node", "--network"])
            .arg(network)
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

    fn status(&self, host: &str, data: &Path) -> Option<Value> {
        self.json(host, &["status", "--json", "--data-dir", data.to_str()?])
    }

    /// Packets router `from` forwarded to router `to`'s public address.
    fn count(&self, from: &str, to: &str) -> u64 {
        let out = Command::new(NETLAB)
            .args(["count", &self.name, from, to])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// Every node's log, for a failure message.
    fn logs(&self) -> String {
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
        let _ = Command::new(NETLAB).args(["down", &self.name]).status();
    }
}

fn wait_for<T>(lab: &Lab, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
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

fn peer_id(data: &Path) -> String {
    let info: Value =
        serde_json::from_slice(&std::fs::read(data.join("api.json")).unwrap()).unwrap();
    info["peer_id"].as_str().unwrap().to_string()
}

/// The public part of the lab: six nodes on public hosts, started the way
/// the README says. Returns the network file.
fn start_public_network(lab: &mut Lab) -> PathBuf {
    let first = lab.path("first.toml");
    let network = lab.path("network.toml");
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
    let boot = format!("/ip4/{}/tcp/4001/p2p/{}", public_ip("pub1"), peer_id(&pub1));
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
fn start_user(lab: &mut Lab, host: &str, name: &str, network: &Path, extra: &[&str]) -> String {
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

fn inbox(lab: &Lab, host: &str, data: &Path, kind: &str) -> Vec<Value> {
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
fn texts(lab: &Lab, host: &str, data: &Path) -> Vec<String> {
    inbox(lab, host, data, "message")
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn contact_state(lab: &Lab, host: &str, data: &Path, name: &str) -> Option<String> {
    let list = lab.json(
        host,
        &["contact", "list", "--json", "--data-dir", data.to_str()?],
    )?;
    list.as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["state"].as_str().map(String::from))
}

/// The README's chat flow between alice (home A) and bob (home B), through
/// the public nodes: a contact request, its acceptance, 20 messages each
/// way, exactly once and in order. Meanwhile: no packet goes between the
/// two homes' routers; every descriptor names public addresses only; carol
/// runs a node with the default roles behind a symmetric NAT, which nobody
/// can reach: it says so and never enters the directory.
#[test]
#[ignore = "needs root and nftables: run by scripts/test"]
fn chat_between_two_homes_through_the_public_nodes() {
    let mut lab = Lab::up();
    let network = start_public_network(&mut lab);

    // Carol: default roles (mix, provider) at home behind symmetric NAT.
    let carol = lab.path("carol");
    let carol_address = start_user(&mut lab, "hC", "carol", &network, &["--client"]);
    assert!(!carol_address.is_empty());

    let alice = lab.path("alice");
    let bob = lab.path("bob");
    start_user(
        &mut lab,
        "hA",
        "alice",
        &network,
        &["--roles", "none", "--client"],
    );
    let bob_address = start_user(
        &mut lab,
        "hB",
        "bob",
        &network,
        &["--roles", "none", "--client"],
    );
    let d = |p: &Path| p.to_str().unwrap().to_string();

    lab.cli_ok(
        "hA",
        &[
            "contact",
            "add",
            &bob_address,
            "--name",
            "bob",
            "--data-dir",
            &d(&alice),
        ],
    );
    wait_for(
        &lab,
        "bob sees alice's request",
        Duration::from_secs(180),
        || {
            (contact_state(&lab, "hB", &bob, "alice").as_deref() == Some("request-received"))
                .then_some(())
        },
    );
    lab.cli_ok(
        "hB",
        &["contact", "accept", "alice", "--data-dir", &d(&bob)],
    );
    wait_for(
        &lab,
        "alice sees the acceptance",
        Duration::from_secs(180),
        || (contact_state(&lab, "hA", &alice, "bob").as_deref() == Some("accepted")).then_some(()),
    );

    let mut to_bob = Vec::new();
    let mut to_alice = Vec::new();
    for k in 0..20 {
        let (a, b) = (format!("a{k:02}"), format!("b{k:02}"));
        lab.cli_ok("hA", &["send", "bob", &a, "--data-dir", &d(&alice)]);
        lab.cli_ok("hB", &["send", "alice", &b, "--data-dir", &d(&bob)]);
        to_bob.push(a);
        to_alice.push(b);
    }
    wait_for(
        &lab,
        "20 messages each way",
        Duration::from_secs(300),
        || {
            (texts(&lab, "hB", &bob).len() >= 20 && texts(&lab, "hA", &alice).len() >= 20)
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(texts(&lab, "hB", &bob), to_bob, "exactly once, in order");
    assert_eq!(
        texts(&lab, "hA", &alice),
        to_alice,
        "exactly once, in order"
    );

    // No packet between the homes: everything went through public nodes.
    assert_eq!(lab.count("rA", "rB"), 0, "home A sent to home B's router");
    assert_eq!(lab.count("rB", "rA"), 0, "home B sent to home A's router");

    // Every descriptor names public addresses only; carol is in none.
    let pub1 = lab.path("pub1");
    let directory = lab
        .json("pub1", &["directory", "--json", "--data-dir", &d(&pub1)])
        .unwrap();
    let entries = directory.as_array().unwrap();
    assert_eq!(entries.len(), 6, "{directory:#}");
    for e in entries {
        for a in e["addresses"].as_array().unwrap() {
            let a = a.as_str().unwrap();
            assert!(
                PUBLIC
                    .iter()
                    .any(|h| a.starts_with(&format!("/ip4/{}/", public_ip(h)))),
                "not a public host's address: {a}"
            );
        }
    }
    let carol_status = lab.status("hC", &carol).unwrap();
    assert_eq!(carol_status["in_directory"], false);
    assert!(
        carol_status["announced_addrs"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{carol_status:#}"
    );
    let line = carol_status["reachability"].as_str().unwrap();
    assert!(line.starts_with("not reachable"), "{line}");
}

/// The node id (hex) of the node in `data`, from its status.
fn node_id(lab: &Lab, host: &str, data: &Path) -> String {
    lab.status(host, data).unwrap()["node_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `a` asks `b` to talk and `b` accepts.
fn befriend(lab: &Lab, a: (&str, &str), b: (&str, &str), b_address: &str) {
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

/// A public node that is a provider of bob's is killed and started again
/// on its host while mail waits there for bob: its keys and mailboxes are
/// back, bob finds his mail, and both users carry on. Meanwhile a user
/// whose node starts while the bootstrap node is unreachable keeps trying,
/// says why in its status, and joins once the way is clear.
#[test]
#[ignore = "needs root and nftables: run by scripts/test"]
fn a_public_node_restarts_with_its_mail_and_a_client_joins_after_an_outage() {
    let mut lab = Lab::up();
    let network = start_public_network(&mut lab);
    let (pub2, pub3) = (lab.path("pub2"), lab.path("pub3"));
    let providers = format!(
        "{},{}",
        node_id(&lab, "pub2", &pub2),
        node_id(&lab, "pub3", &pub3)
    );
    let client = ["--roles", "none", "--client"];
    start_user(&mut lab, "hA", "alice", &network, &client);
    let bob_args = ["--roles", "none", "--client", "--providers", &providers];
    let bob_address = start_user(&mut lab, "hB", "bob", &network, &bob_args);
    befriend(&lab, ("hA", "alice"), ("hB", "bob"), &bob_address);
    let (alice, bob) = (lab.path("alice"), lab.path("bob"));
    let d = |p: &Path| p.to_str().unwrap().to_string();

    // Bob goes offline; alice's mail waits at his providers.
    let kill = |lab: &mut Lab, data: &Path| {
        let key = data.display().to_string();
        let i = lab.procs.iter().position(|(k, _)| *k == key).unwrap();
        let (_, mut child) = lab.procs.remove(i);
        child.kill().unwrap();
        child.wait().unwrap();
    };
    kill(&mut lab, &bob);
    let delivered =
        |lab: &Lab, host: &str, data: &Path| metric(lab, host, data, "chainmail_delivered_total");
    let before = delivered(&lab, "pub2", &pub2);
    for k in 0..3 {
        lab.cli_ok(
            "hA",
            &["send", "bob", &format!("d{k}"), "--data-dir", &d(&alice)],
        );
    }
    wait_for(
        &lab,
        "mail stored at provider pub2",
        Duration::from_secs(120),
        || (delivered(&lab, "pub2", &pub2) >= before + 3).then_some(()),
    );
    // The provider dies and comes back on the same host.
    kill(&mut lab, &pub2);
    lab.node("pub2", &pub2, &network, &[]);
    wait_for(
        &lab,
        "pub2 back in the directory",
        Duration::from_secs(120),
        || {
            let s = lab.status("pub2", &pub2)?;
            (s["in_directory"] == true).then_some(())
        },
    );
    lab.node("hB", &bob, &network, &bob_args);
    wait_for(
        &lab,
        "bob's mail after the restarts",
        Duration::from_secs(180),
        || (texts(&lab, "hB", &bob) == ["d0", "d1", "d2"]).then_some(()),
    );
    // And they carry on, both ways.
    lab.cli_ok("hB", &["send", "alice", "back", "--data-dir", &d(&bob)]);
    lab.cli_ok(
        "hA",
        &["send", "bob", "welcome back", "--data-dir", &d(&alice)],
    );
    wait_for(
        &lab,
        "messages after the restart",
        Duration::from_secs(180),
        || {
            (texts(&lab, "hA", &alice) == ["back"] && texts(&lab, "hB", &bob).len() == 4)
                .then_some(())
        },
    );

    // Carol's way to the bootstrap node is blocked when her node starts.
    let block = |lab: &Lab, on: bool| {
        let ns = lab.ns("pub1");
        let commands: &[&str] = if on {
            &[
                "add table inet outage",
                "add chain inet outage in { type filter hook prerouting priority -400; }",
                "add rule inet outage in ip saddr 198.18.0.103 drop",
            ]
        } else {
            &["delete table inet outage"]
        };
        for command in commands {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns, "nft", command])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "nft {command}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    block(&lab, true);
    let carol = lab.path("carol");
    lab.cli_ok(
        "hC",
        &[
            "init",
            "--network",
            network.to_str().unwrap(),
            "--data-dir",
            &d(&carol),
            "--name",
            "carol",
        ],
    );
    lab.node("hC", &carol, &network, &client);
    let failing = wait_for(
        &lab,
        "carol's failed attempts",
        Duration::from_secs(60),
        || {
            let s = lab.status("hC", &carol)?;
            let b = s["bootstrap"].as_array()?.first()?.clone();
            (b["failures"].as_u64()? >= 2).then_some(b)
        },
    );
    assert_eq!(failing["connected"], false);
    assert!(failing["last_error"].is_string(), "{failing}");
    block(&lab, false);
    wait_for(
        &lab,
        "carol joins after the outage",
        Duration::from_secs(90),
        || lab.status("hC", &carol)?["address"].as_str().map(|_| ()),
    );
}

/// One counter of a node's /metrics (summed over labels).
fn metric(lab: &Lab, host: &str, data: &Path, name: &str) -> u64 {
    let info: Value =
        serde_json::from_slice(&std::fs::read(data.join("api.json")).unwrap()).unwrap();
    let port = info["port"].as_u64().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(host), "curl", "-s"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
