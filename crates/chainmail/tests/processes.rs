//! Real processes on 127.0.0.1, driven only through the `chainmail`
//! binary: a testnet of six nodes and two client nodes; messages both ways;
//! a provider killed with SIGKILL while messages are in flight loses none;
//! a provider killed and restarted still has the mail it held.

#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_chainmail");

/// Each test runs a whole network of processes: on a 2-core machine two
/// at once starve each other's timers, so they take turns.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Children are killed when the test ends, however it ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        std::thread::sleep(Duration::from_secs(2));
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn cli(args: &[&str]) -> Result<String, String> {
    let out = Command::new(EXE)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn status(dir: &Path) -> Option<Value> {
    cli(&["status", "--json", "--data-dir", dir.to_str()?])
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
}

fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_or_explain(what, timeout, f, String::new)
}

/// As [`wait_for`], with `explain()` (the state of the nodes) in the
/// message when it times out.
fn wait_or_explain<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    explain: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                explain()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The inbox entries of one kind; none while the node is not running.
fn inbox_or_none(dir: &Path, kind: &str) -> Vec<Value> {
    let Ok(text) = cli(&["inbox", "--json", "--data-dir", dir.to_str().unwrap()]) else {
        return Vec::new();
    };
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["kind"] == kind)
        .collect()
}

/// The texts of the messages an account was shown, sorted.
fn texts(dir: &Path) -> Vec<String> {
    let mut all: Vec<String> = inbox_or_none(dir, "message")
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect();
    all.sort();
    all
}

/// How many of an account's messages were acknowledged.
fn delivered_count(dir: &Path) -> usize {
    inbox_or_none(dir, "state")
        .iter()
        .filter(|e| e["state"] == "delivered")
        .count()
}

/// Sends `text` to the contact `to`.
fn send(from: &Path, to: &str, text: &str) {
    cli_ok(&["send", to, text, "--data-dir", from.to_str().unwrap()]);
}

/// `a` asks `b` (whose account address is `b_address`) to talk and `b`
/// accepts; each knows the other by the other's directory name.
fn befriend(a: &Path, b: &Path, b_address: &str) {
    let name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
    let d = |p: &Path| p.to_str().unwrap().to_string();
    cli_ok(&[
        "contact",
        "add",
        b_address,
        "--name",
        &name(b),
        "--data-dir",
        &d(a),
    ]);
    wait_for("the contact request", Duration::from_secs(120), || {
        contact_state(b, &name(a))
            .is_some_and(|s| s == "request-received")
            .then_some(())
    });
    cli_ok(&["contact", "accept", &name(a), "--data-dir", &d(b)]);
    wait_for("the acceptance", Duration::from_secs(120), || {
        (contact_state(a, &name(b)).as_deref() == Some("accepted")).then_some(())
    });
}

fn pid(dir: &Path) -> u32 {
    let info: Value =
        serde_json::from_slice(&std::fs::read(dir.join("api.json")).unwrap()).unwrap();
    info["pid"].as_u64().unwrap() as u32
}

fn kill9(dir: &Path) {
    let pid = pid(dir);
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    // Gone, and its API answers no more.
    wait_for(
        "the killed node to be gone",
        Duration::from_secs(10),
        || status(dir).is_none().then_some(()),
    );
}

fn start_node(procs: &mut Procs, network: &Path, dir: &Path, extra: &[&str]) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .ok();
    let _ = std::fs::remove_file(dir.join("api.json"));
    let mut cmd = Command::new(EXE);
    cmd.args([
        "node",
        "--network",
        network.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
    ])
    .args(["--descriptor-refresh-secs", "5", "--log", "info"])
    // A network on this machine only.
    .args([
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
    ])
    .args(extra)
    .stdin(Stdio::null());
    if let Some(log) = log {
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
    }
    procs.0.push(cmd.spawn().unwrap());
}

/// A counter from a node's Prometheus metrics (0 if absent).
/// The node's `/metrics` text.
fn metrics_text(dir: &Path) -> String {
    let info: Value =
        serde_json::from_slice(&std::fs::read(dir.join("api.json")).unwrap()).unwrap();
    let port = info["port"].as_u64().unwrap();
    let token = info["token"].as_str().unwrap();
    let out = Command::new("curl")
        .args(["-s", "-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn metric(dir: &Path, name: &str) -> u64 {
    metrics_text(dir)
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The sum of every sample of a metric, whatever its labels.
fn metric_sum(dir: &Path, name: &str) -> u64 {
    metrics_text(dir)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.trim().parse::<u64>().ok()
        })
        .sum()
}

fn delivered_total(dir: &Path) -> u64 {
    metric(dir, "chainmail_delivered_total")
}

/// Starts `chainmail testnet` with six nodes in `root` and waits for its
/// directory: (node id, data dir) of each node.
fn start_testnet(procs: &mut Procs, root: &Path, extra: &[&str]) -> Vec<(String, PathBuf)> {
    let mut testnet = Command::new(EXE)
        .args(["testnet", "--nodes", "6", "--dir", root.to_str().unwrap()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = testnet.stdout.take().unwrap();
    procs.0.push(testnet);
    let mut nodes: Vec<(String, PathBuf)> = Vec::new();
    let mut ready = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.starts_with("directory complete") {
            ready = true;
        }
        if let Some(rest) = line.strip_prefix("node ") {
            let (_, rest) = rest.split_once(": ").unwrap();
            let (id, dir) = rest.split_once(" (").unwrap();
            nodes.push((id.into(), PathBuf::from(dir.trim_end_matches(')'))));
        }
        if line.starts_with("running") {
            break;
        }
    }
    assert!(
        ready && nodes.len() == 6,
        "testnet did not come up: {nodes:?}"
    );
    nodes
}

/// Starts a client-only node in `dir` with mailboxes at `providers` and
/// waits for its address.
fn start_client(procs: &mut Procs, network: &Path, dir: &Path, providers: &[&str]) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let providers = providers.join(",");
    start_node(
        procs,
        network,
        dir,
        &["--roles", "none", "--client", "--providers", &providers],
    );
    wait_for("a client address", Duration::from_secs(90), || {
        status(dir)
            .filter(|s| s["directory_complete"] == true)
            .and_then(|s| s["address"].as_str().map(String::from))
    })
}

#[test]
fn local_network_delivers_survives_a_provider_crash_and_a_restart() {
    let _one_at_a_time = serial();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut procs = Procs(Vec::new());

    // A testnet of six nodes, each a mix and a provider.
    let nodes = start_testnet(&mut procs, root, &[]);
    let network = root.join("network.toml");

    // Two users on different providers: alice on 0 and 1, bob on 2 and 3.
    let alice = root.join("alice");
    let bob = root.join("bob");
    init_account(&network, &alice, "alice", &[]);
    let bob_address = init_account(&network, &bob, "bob", &[]);
    start_client(&mut procs, &network, &alice, &[&nodes[0].0, &nodes[1].0]);
    start_client(&mut procs, &network, &bob, &[&nodes[2].0, &nodes[3].0]);
    befriend(&alice, &bob, &bob_address);

    // Messages both ways, each received exactly once.
    for k in 0..3 {
        send(&alice, "bob", &format!("a{k}"));
        send(&bob, "alice", &format!("b{k}"));
    }
    wait_for("messages both ways", Duration::from_secs(120), || {
        (texts(&bob) == ["a0", "a1", "a2"] && texts(&alice) == ["b0", "b1", "b2"]).then_some(())
    });
    // And their acknowledgements, so that none of them arrives at bob's
    // providers later and is taken for one of the messages below.
    wait_for(
        "acknowledgements both ways",
        Duration::from_secs(120),
        || (delivered_count(&alice) >= 3 && delivered_count(&bob) >= 3).then_some(()),
    );

    // Bob's provider 2 dies with SIGKILL while six messages are on their
    // way. Bob is stopped first, so that mail piles up at provider 2
    // unfetched: what provider 2 holds is then lost with it, and only the
    // second provider and alice's retransmissions can bring it to bob. (A
    // paused bob would not do: his kernel still takes a long-poll fetch's
    // answer into the socket buffer, and he reads it when he resumes.)
    kill9(&bob);
    // Bob's own cover (loops into his mailboxes) still on its way lands
    // before the count starts.
    std::thread::sleep(Duration::from_secs(3));
    let at_two = delivered_total(&nodes[2].1);
    for k in 0..6 {
        send(&alice, "bob", &format!("c{k}"));
    }
    wait_for(
        "provider 2 to hold some of the messages",
        Duration::from_secs(60),
        || (delivered_total(&nodes[2].1) >= at_two + 2).then_some(()),
    );
    kill9(&nodes[2].1);
    let bob_providers = format!("{},{}", nodes[2].0, nodes[3].0);
    start_node(
        &mut procs,
        &network,
        &bob,
        &["--roles", "none", "--client", "--providers", &bob_providers],
    );
    wait_for(
        "all messages despite the crash",
        Duration::from_secs(180),
        || {
            let t = texts(&bob);
            (t.iter().filter(|x| x.starts_with('c')).count() >= 6).then_some(())
        },
    );
    let expected: Vec<String> = ["a0", "a1", "a2", "c0", "c1", "c2", "c3", "c4", "c5"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(texts(&bob), expected, "every message exactly once");
    let retransmissions = metric(&alice, "chainmail_client_retransmissions_total");
    assert!(
        retransmissions >= 2,
        "the mail lost with provider 2 came by retransmission ({retransmissions})"
    );

    // Bob goes offline; alice writes; the mail waits at bob's provider 3.
    kill9(&bob);
    let before = delivered_total(&nodes[3].1);
    for k in 0..3 {
        send(&alice, "bob", &format!("d{k}"));
    }
    wait_for(
        "the mail to be stored at provider 3",
        Duration::from_secs(120),
        || (delivered_total(&nodes[3].1) >= before + 3).then_some(()),
    );
    // Alice stops (no retransmission can help); provider 3 crashes and
    // comes back; bob comes back and finds his mail.
    kill9(&alice);
    kill9(&nodes[3].1);
    start_node(&mut procs, &network, &nodes[3].1, &[]);
    wait_for("provider 3 to restart", Duration::from_secs(60), || {
        status(&nodes[3].1)
    });
    start_node(
        &mut procs,
        &network,
        &bob,
        &["--roles", "none", "--client", "--providers", &bob_providers],
    );
    wait_for(
        "bob's mail after the restarts",
        Duration::from_secs(120),
        || (texts(&bob).iter().filter(|x| x.starts_with('d')).count() >= 3).then_some(()),
    );
    let mut expected = expected;
    expected.extend(["d0", "d1", "d2"].iter().map(|s| s.to_string()));
    assert_eq!(
        texts(&bob),
        expected,
        "every message exactly once, across restarts"
    );
}

/// Mix keys rotate every 30 seconds while alice and bob talk for about two
/// minutes: every node publishes its next keys, everyone moves to each new
/// epoch's directory, packets in flight at a boundary are processed with
/// the previous key during its grace, and every message arrives once.
#[test]
fn messages_flow_across_key_rotations() {
    let _one_at_a_time = serial();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut procs = Procs(Vec::new());
    let nodes = start_testnet(&mut procs, root, &["--epoch-secs", "30"]);
    let network = root.join("network.toml");
    let alice = root.join("alice");
    let bob = root.join("bob");
    init_account(&network, &alice, "alice", &[]);
    let bob_address = init_account(&network, &bob, "bob", &[]);
    start_client(&mut procs, &network, &alice, &[&nodes[0].0, &nodes[1].0]);
    start_client(&mut procs, &network, &bob, &[&nodes[2].0, &nodes[3].0]);
    befriend(&alice, &bob, &bob_address);
    let epoch = |dir: &Path| status(dir).and_then(|s| s["epoch"].as_u64());
    let first_epoch = epoch(&alice).unwrap();

    let mut expected_bob = Vec::new();
    let mut expected_alice = Vec::new();
    let mut k = 0;
    while epoch(&alice).unwrap() < first_epoch + 4 {
        let (a, b) = (format!("a{k:03}"), format!("b{k:03}"));
        send(&alice, "bob", &a);
        send(&bob, "alice", &b);
        expected_bob.push(a);
        expected_alice.push(b);
        k += 1;
        std::thread::sleep(Duration::from_secs(3));
    }
    wait_for("every message", Duration::from_secs(120), || {
        (texts(&bob).len() >= expected_bob.len() && texts(&alice).len() >= expected_alice.len())
            .then_some(())
    });
    assert_eq!(texts(&bob), expected_bob, "every message exactly once");
    assert_eq!(texts(&alice), expected_alice, "every message exactly once");
    // Each node rotated its keys and still forwarded in the newest epoch.
    for (_, dir) in &nodes {
        let s = status(dir).unwrap();
        assert!(s["epoch"].as_u64().unwrap() >= first_epoch + 4, "{s}");
    }
    let unknown_key: u64 = nodes
        .iter()
        .map(|(_, dir)| {
            metric(
                dir,
                "chainmail_packets_dropped_total{reason=\"unknown_key\"}",
            )
        })
        .sum();
    assert_eq!(unknown_key, 0, "no packet met a node without its key");
}

fn cli_ok(args: &[&str]) -> String {
    cli(args).unwrap_or_else(|e| panic!("chainmail {args:?} failed: {e}"))
}

fn cli_json(args: &[&str]) -> Value {
    let mut all: Vec<&str> = args.to_vec();
    all.push("--json");
    serde_json::from_str(&cli_ok(&all)).unwrap()
}

/// The account's inbox entries of one kind.
fn inbox(dir: &Path, kind: &str) -> Vec<Value> {
    cli_ok(&["inbox", "--json", "--data-dir", dir.to_str().unwrap()])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["kind"] == kind)
        .collect()
}

fn contact_state(dir: &Path, name: &str) -> Option<String> {
    let list = cli_json(&["contact", "list", "--data-dir", dir.to_str().unwrap()]);
    list.as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["state"].as_str().map(String::from))
}

/// Accounts through the CLI only: alice asks bob, bob accepts, they talk
/// (one message long enough for several packets); carol asks bob and is
/// denied; safety numbers agree.
#[test]
fn accounts_request_accept_deny_and_talk() {
    let _one_at_a_time = serial();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut procs = Procs(Vec::new());
    let nodes = start_testnet(&mut procs, root, &[]);
    // The users' network file names an advisory key.
    let advisory_key = root.join("advisory.key");
    let out = cli_ok(&[
        "advisory",
        "keygen",
        "--out",
        advisory_key.to_str().unwrap(),
    ]);
    let key_line = out.lines().find(|l| l.starts_with("advisory_key")).unwrap();
    let network = root.join("users.toml");
    let text = std::fs::read_to_string(root.join("network.toml")).unwrap();
    let text = text.replace("[accounts]\n", &format!("[accounts]\n{key_line}\n"));
    assert!(text.contains("advisory_key"), "{text}");
    std::fs::write(&network, text).unwrap();
    // A stranger runs a node of its own: a mix, a provider and a DHT
    // server (in a network this small, near every key), with an account.
    let stranger = root.join("stranger");
    init_account(&network, &stranger, "stranger", &[]);
    start_node(
        &mut procs,
        &network,
        &stranger,
        &["--roles", "mix,provider", "--client"],
    );
    wait_for("the stranger's client", Duration::from_secs(90), || {
        status(&stranger).and_then(|s| s["address"].as_str().map(String::from))
    });
    let mut addresses = HashMap::new();
    for (name, a, b) in [("alice", 0, 1), ("bob", 2, 3), ("carol", 4, 5)] {
        let dir = root.join(name);
        let init = cli_json(&[
            "init",
            "--network",
            network.to_str().unwrap(),
            "--data-dir",
            dir.to_str().unwrap(),
            "--name",
            name,
        ]);
        let address = init["address"].as_str().unwrap().to_string();
        assert!(address.starts_with("cm1"), "{init}");
        // A second init refuses to overwrite the account.
        assert!(
            cli(&[
                "init",
                "--network",
                network.to_str().unwrap(),
                "--data-dir",
                dir.to_str().unwrap(),
                "--name",
                name,
            ])
            .unwrap_err()
            .contains("already has an account")
        );
        start_client(&mut procs, &network, &dir, &[&nodes[a].0, &nodes[b].0]);
        let who = cli_json(&["whoami", "--data-dir", dir.to_str().unwrap()]);
        assert_eq!(who["address"].as_str().unwrap(), address);
        addresses.insert(name, address);
    }
    let (alice, bob, carol) = (root.join("alice"), root.join("bob"), root.join("carol"));
    let d = |p: &Path| p.to_str().unwrap().to_string();

    // A mistyped address is refused before anything is looked up.
    let mut typo = addresses["bob"].clone();
    let last = typo.pop().unwrap();
    typo.push(if last == 'a' { 'b' } else { 'a' });
    let err = cli(&[
        "contact",
        "add",
        &typo,
        "--name",
        "bob",
        "--data-dir",
        &d(&alice),
    ])
    .unwrap_err();
    assert!(
        err.contains("checksum") || err.contains("mistyped"),
        "{err}"
    );

    cli_ok(&[
        "contact",
        "add",
        &addresses["bob"],
        "--name",
        "bob",
        "--message",
        "hi bob, alice here",
        "--data-dir",
        &d(&alice),
    ]);
    cli_ok(&[
        "contact",
        "add",
        &addresses["bob"],
        "--name",
        "bob",
        "--data-dir",
        &d(&carol),
    ]);
    wait_for("both requests at bob", Duration::from_secs(120), || {
        let r = cli_json(&["contact", "requests", "--data-dir", &d(&bob)]);
        (r.as_array().unwrap().len() == 2).then_some(())
    });
    let requests = inbox(&bob, "request");
    let from_alice = requests
        .iter()
        .find(|r| r["contact"] == addresses["alice"].as_str())
        .unwrap();
    assert_eq!(from_alice["text"], "hi bob, alice here");
    let alice_name = from_alice["name"].as_str().unwrap().to_string();
    let carol_name = requests
        .iter()
        .find(|r| r["contact"] == addresses["carol"].as_str())
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    // Nothing can be sent before acceptance.
    assert!(
        cli(&["send", "bob", "too early", "--data-dir", &d(&alice)])
            .unwrap_err()
            .contains("not accepted")
    );
    cli_ok(&["contact", "accept", &alice_name, "--data-dir", &d(&bob)]);
    cli_ok(&["contact", "deny", &carol_name, "--data-dir", &d(&bob)]);
    wait_for(
        "alice accepted, carol denied",
        Duration::from_secs(120),
        || {
            (contact_state(&alice, "bob").as_deref() == Some("accepted")
                && contact_state(&carol, "bob").as_deref() == Some("denied-by-them"))
            .then_some(())
        },
    );

    let long: String = (0..2500)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut to_bob = Vec::new();
    let mut to_alice = Vec::new();
    for k in 0..5 {
        let text = if k == 2 {
            long.clone()
        } else {
            format!("a{k}")
        };
        cli_ok(&["send", "bob", &text, "--data-dir", &d(&alice)]);
        to_bob.push(text);
        let text = format!("b{k}");
        cli_ok(&["send", &alice_name, &text, "--data-dir", &d(&bob)]);
        to_alice.push(text);
    }
    let texts = |dir: &Path| -> Vec<String> {
        inbox(dir, "message")
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_string())
            .collect()
    };
    wait_for("the conversation", Duration::from_secs(180), || {
        (texts(&bob).len() >= 5 && texts(&alice).len() >= 5).then_some(())
    });
    assert_eq!(texts(&bob), to_bob, "exactly once, in order");
    assert_eq!(texts(&alice), to_alice, "exactly once, in order");
    wait_for("every message delivered", Duration::from_secs(120), || {
        let s = cli_json(&["status", "--data-dir", &d(&alice)]);
        // The preset is named with its measured anonymity.
        let anonymity = s["anonymity"].as_str().unwrap();
        assert!(
            anonymity.starts_with("preset standard: ") && anonymity.contains("bits"),
            "{anonymity}"
        );
        let m = s["messages"].as_array().unwrap().clone();
        (m.len() == 5 && m.iter().all(|m| m["state"] == "delivered")).then_some(())
    });

    // Both sides compute the same safety number.
    let a = cli_json(&["verify", "bob", "--data-dir", &d(&alice)]);
    let b = cli_json(&["verify", &alice_name, "--mark", "--data-dir", &d(&bob)]);
    assert_eq!(a["safety_number"], b["safety_number"]);
    assert_eq!(b["verified"], true);

    // The advisory key's holder lists the version bob runs as unsafe and
    // publishes it through bob's node; alice's node finds it in the DHT and
    // warns her.
    let list = cli_json(&["contact", "list", "--data-dir", &d(&alice)]);
    let version = list[0]["client_version"].as_str().unwrap().to_string();
    assert_eq!(list[0]["unsafe_version"], false);
    let signed = root.join("advisory.hex");
    cli_ok(&[
        "advisory",
        "sign",
        "--key-file",
        advisory_key.to_str().unwrap(),
        "--network",
        network.to_str().unwrap(),
        "--sequence",
        "1",
        "--unsafe",
        &format!("chainmail 0.0.1,{version}"),
        "--out",
        signed.to_str().unwrap(),
    ]);
    // A forged advisory (signed by another key) is refused.
    let other_key = root.join("other.key");
    cli_ok(&["advisory", "keygen", "--out", other_key.to_str().unwrap()]);
    assert!(
        cli(&[
            "advisory",
            "sign",
            "--key-file",
            other_key.to_str().unwrap(),
            "--network",
            network.to_str().unwrap(),
            "--sequence",
            "2",
            "--unsafe",
            "x",
            "--out",
            root.join("forged.hex").to_str().unwrap(),
        ])
        .is_err()
    );
    cli_ok(&[
        "advisory",
        "publish",
        signed.to_str().unwrap(),
        "--data-dir",
        &d(&bob),
    ]);
    wait_for(
        "alice warned of bob's version",
        Duration::from_secs(120),
        || (!inbox(&alice, "unsafe-version").is_empty()).then_some(()),
    );
    let list = cli_json(&["contact", "list", "--data-dir", &d(&alice)]);
    assert_eq!(list[0]["unsafe_version"], true);

    // The stranger, who knows bob's address, sends a request; bob gets it,
    // accepts and answers, and the stranger's node never learns his.
    cli_ok(&[
        "contact",
        "add",
        &addresses["bob"],
        "--name",
        "bob",
        "--message",
        "hello bob, we have not met",
        "--data-dir",
        &d(&stranger),
    ]);
    wait_or_explain(
        "the stranger's request",
        Duration::from_secs(120),
        || {
            inbox(&bob, "request")
                .into_iter()
                .find(|r| r["text"] == "hello bob, we have not met")
                .and_then(|r| r["name"].as_str().map(String::from))
        },
        || {
            format!(
                "stranger's contacts: {}\nstranger's inbox: {:?}\nstranger's metrics:\n{}\nbob's metrics:\n{}",
                cli(&["contact", "list", "--json", "--data-dir", &d(&stranger)])
                    .unwrap_or_default(),
                inbox_or_none(&stranger, "lookup-failed"),
                metrics_text(&stranger)
                    .lines()
                    .filter(|l| l.starts_with("chainmail_client")
                        || l.starts_with("chainmail_agent")
                        || l.starts_with("chainmail_tasks")
                        || l.starts_with("chainmail_errands"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                metrics_text(&bob)
                    .lines()
                    .filter(
                        |l| l.starts_with("chainmail_session") || l.starts_with("chainmail_client")
                    )
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        },
    );
    let stranger_name = inbox(&bob, "request")
        .into_iter()
        .find(|r| r["text"] == "hello bob, we have not met")
        .and_then(|r| r["name"].as_str().map(String::from))
        .unwrap();
    cli_ok(&["contact", "accept", &stranger_name, "--data-dir", &d(&bob)]);
    wait_for("bob accepted", Duration::from_secs(120), || {
        (contact_state(&stranger, "bob").as_deref() == Some("accepted")).then_some(())
    });
    cli_ok(&[
        "send",
        &stranger_name,
        "who are you?",
        "--data-dir",
        &d(&bob),
    ]);
    wait_for("bob's answer", Duration::from_secs(120), || {
        texts(&stranger)
            .contains(&"who are you?".to_string())
            .then_some(())
    });

    // The stranger tries the other way to bob's node: a message sealed to
    // bob's mixnet address whose SURB starts at the stranger's own node.
    // Were bob's node to acknowledge through it, it would connect to the
    // stranger's node. It must not use the SURB, and count it.
    attack_with_a_strangers_surb(&network, &stranger, &bob);
    wait_for(
        "bob's node to refuse the stranger's SURB",
        Duration::from_secs(120),
        || (metric(&bob, "chainmail_client_foreign_surbs_total") >= 1).then_some(()),
    );

    // Who saw whom. The users' nodes are client-only: they connect to
    // their providers and the bootstrap nodes (the first three of the
    // testnet) and to nobody else; the stranger's node, a DHT server that
    // stored bob's descriptors and carried errands out, never saw a
    // connection from any of them.
    let peers_seen = |dir: &Path| -> Vec<String> {
        serde_json::from_value(status(dir).unwrap()["peers_seen"].clone()).unwrap()
    };
    let testnet_peer = |i: usize| peer_id(&nodes[i].1);
    let stranger_seen = peers_seen(&stranger);
    for (name, providers) in [("alice", [0, 1]), ("bob", [2, 3]), ("carol", [4, 5])] {
        let dir = root.join(name);
        let me = peer_id(&dir);
        assert!(
            !stranger_seen.contains(&me),
            "the stranger's node saw {name}'s node"
        );
        let mut allowed: Vec<String> = [0, 1, 2].into_iter().map(testnet_peer).collect();
        allowed.extend(providers.into_iter().map(testnet_peer));
        let seen = peers_seen(&dir);
        assert!(!seen.is_empty());
        for peer in &seen {
            assert!(
                allowed.contains(peer),
                "{name}'s node connected to {peer}, neither a provider of its own nor a bootstrap node"
            );
        }
    }
}

/// Builds, as a stranger would with the network's public directory and
/// bob's mixnet address (from his descriptor), a message to bob whose SURB
/// starts at the stranger's node, and enters it through the first
/// bootstrap provider from a bare libp2p peer of the network.
#[allow(clippy::disallowed_methods)] // the test's own clock
fn attack_with_a_strangers_surb(network: &Path, stranger: &Path, bob: &Path) {
    use chainmail_mixnet::message::{self, ClientAddress, Inner};
    use chainmail_mixnet::{DescriptorSet, Time, network_hash};
    use chainmail_net::{Multiaddr, Net, NetConfig, PeerId, RequestKind, node_key_from_peer_id};
    use chainmail_packet::{MailboxId, NodeId, build_packet, build_surb};
    use rand::RngExt;

    let file = chainmail_node::network::NetworkFile::load(network).unwrap();
    let params = file.params().unwrap();
    let id = file.network.id.clone();
    let bob_address =
        ClientAddress::from_text(status(bob).unwrap()["address"].as_str().unwrap()).unwrap();
    let stranger_node = NodeId(
        hex_decode(status(stranger).unwrap()["node_id"].as_str().unwrap())
            .try_into()
            .unwrap(),
    );
    let boot: Multiaddr = file.network.bootstrap[0].parse().unwrap();
    let entry_peer: PeerId = file.network.bootstrap[0]
        .rsplit("/p2p/")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let entry_node = NodeId(node_key_from_peer_id(&entry_peer).unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (net, _events) = Net::spawn(NetConfig::new(id.clone(), rand::rng().random())).unwrap();
        net.dial(boot).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let all: Vec<Vec<u8>> = loop {
            if let Ok(bytes) = net
                .request(entry_peer, RequestKind::Descriptors, Vec::new())
                .await
                && let Ok(all) = postcard::from_bytes(&bytes)
            {
                break all;
            }
            assert!(Instant::now() < deadline, "no descriptors from the entry");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let now = Time(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
        );
        let mut descriptors = DescriptorSet::new(network_hash(&id));
        for bytes in &all {
            let _ = descriptors.insert(bytes, now);
        }
        let epoch = params.epoch_at(now);
        let directory = descriptors.epoch_directory(epoch, &params, now);
        let mut rng = rand::rng();
        let first = directory.node(&stranger_node).unwrap();
        let surb_route = directory.route(&mut rng, first, first, 10.0).unwrap();
        let (surb, _) = {
            let mailbox = MailboxId(rng.random());
            build_surb(&mut rng, epoch, &surb_route, mailbox).unwrap()
        };
        let inner = Inner::Data {
            id: rng.random(),
            surb: Some(Box::new(surb)),
            body: b"who is behind this address?".to_vec(),
        }
        .encode()
        .unwrap();
        let sealed = message::seal(&mut rng, &bob_address.seal_key, &inner);
        let (provider, mailbox) = bob_address.mailboxes[0];
        let entry = directory.provider(&entry_node).unwrap();
        let to = directory.provider(&provider).unwrap();
        let route = directory.route(&mut rng, entry, to, 10.0).unwrap();
        assert_eq!(route[0].node, entry_node);
        let packet = build_packet(&mut rng, epoch, &route, mailbox, &sealed[..]).unwrap();
        net.send_packet(entry_peer, Box::new(*packet.as_bytes()))
            .await
            .unwrap();
        // Time for the frame to leave before the peer goes.
        tokio::time::sleep(Duration::from_secs(2)).await;
        net.shutdown().await;
    });
}

fn init_account(network: &Path, dir: &Path, name: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "init",
        "--network",
        network.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
        "--name",
        name,
    ];
    args.extend_from_slice(extra);
    cli_json(&args)["address"].as_str().unwrap().to_string()
}

fn peer_id(dir: &Path) -> String {
    let info: Value =
        serde_json::from_slice(&std::fs::read(dir.join("api.json")).unwrap()).unwrap();
    info["peer_id"].as_str().unwrap().to_string()
}

/// Bob goes offline mid-conversation and comes back after a restart; 50
/// messages each way (one in several packets) arrive exactly once, in
/// order, all `delivered`; his contacts, sessions and history survive the
/// restart. A stranger's request without proof of work is refused and
/// counted. Bob moves to a new device: alice is warned loudly. Alice's
/// node never connects to bob's.
#[test]
fn accounts_survive_offline_restart_strangers_and_a_new_device() {
    let _one_at_a_time = serial();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut procs = Procs(Vec::new());
    let nodes = start_testnet(&mut procs, root, &[]);
    let network = root.join("network.toml");
    let (alice, bob) = (root.join("alice"), root.join("bob"));
    let d = |p: &Path| p.to_str().unwrap().to_string();
    let alice_address = init_account(&network, &alice, "alice", &[]);
    let bob_address = init_account(&network, &bob, "bob", &[]);
    let bob_providers = [nodes[2].0.as_str(), nodes[3].0.as_str()];
    start_client(&mut procs, &network, &alice, &[&nodes[0].0, &nodes[1].0]);
    start_client(&mut procs, &network, &bob, &bob_providers);

    cli_ok(&[
        "contact",
        "add",
        &bob_address,
        "--name",
        "bob",
        "--data-dir",
        &d(&alice),
    ]);
    wait_for("alice's request", Duration::from_secs(120), || {
        contact_state(&bob, "alice")
            .is_some_and(|s| s == "request-received")
            .then_some(())
    });
    cli_ok(&["contact", "accept", "alice", "--data-dir", &d(&bob)]);
    wait_for("acceptance", Duration::from_secs(120), || {
        (contact_state(&alice, "bob").as_deref() == Some("accepted")).then_some(())
    });

    let long: String = (0..3000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut to_bob = Vec::new();
    let mut to_alice = Vec::new();
    let send = |from: &Path, to: &str, text: String, log: &mut Vec<String>| {
        cli_ok(&["send", to, &text, "--data-dir", &d(from)]);
        log.push(text);
    };
    for k in 0..20 {
        let text = if k == 7 {
            long.clone()
        } else {
            format!("a{k:02}")
        };
        send(&alice, "bob", text, &mut to_bob);
        send(&bob, "alice", format!("b{k:02}"), &mut to_alice);
    }
    // Bob's node dies; alice goes on writing into his mailboxes.
    wait_for("bob to have some messages", Duration::from_secs(60), || {
        (inbox(&bob, "message").len() >= 5).then_some(())
    });
    kill9(&bob);
    for k in 20..35 {
        send(&alice, "bob", format!("a{k:02}"), &mut to_bob);
    }
    std::thread::sleep(Duration::from_secs(5));
    start_node(
        &mut procs,
        &network,
        &bob,
        &[
            "--roles",
            "none",
            "--client",
            "--providers",
            &bob_providers.join(","),
        ],
    );
    wait_for("bob back", Duration::from_secs(60), || {
        status(&bob).filter(|s| s["address"].is_string())
    });
    for k in 35..50 {
        send(&alice, "bob", format!("a{k:02}"), &mut to_bob);
    }
    for k in 20..50 {
        send(&bob, "alice", format!("b{k:02}"), &mut to_alice);
    }
    let texts = |dir: &Path| -> Vec<String> {
        inbox(dir, "message")
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_string())
            .collect()
    };
    wait_for("the whole conversation", Duration::from_secs(300), || {
        (texts(&bob).len() >= 50 && texts(&alice).len() >= 50).then_some(())
    });
    assert_eq!(
        texts(&bob),
        to_bob,
        "exactly once, in order, across bob's crash"
    );
    assert_eq!(texts(&alice), to_alice, "exactly once, in order");
    // Bob's history from before the crash is still there.
    assert_eq!(inbox(&bob, "request").len(), 1);
    for dir in [&alice, &bob] {
        wait_for("every message delivered", Duration::from_secs(300), || {
            let s = cli_json(&["status", "--data-dir", &d(dir)]);
            let m = s["messages"].as_array().unwrap().clone();
            (m.len() == 50 && m.iter().all(|m| m["state"] == "delivered")).then_some(())
        });
    }

    // A stranger whose client mints no stamps.
    let cheap = root.join("no-stamps.toml");
    let text = std::fs::read_to_string(&network).unwrap();
    let text = text.replace("stamp_difficulty = 12", "stamp_difficulty = 0");
    assert!(text.contains("stamp_difficulty = 0"));
    std::fs::write(&cheap, text).unwrap();
    let mallory = root.join("mallory");
    init_account(&cheap, &mallory, "mallory", &[]);
    start_client(&mut procs, &cheap, &mallory, &[&nodes[4].0, &nodes[5].0]);
    cli_ok(&[
        "contact",
        "add",
        &bob_address,
        "--name",
        "bob",
        "--message",
        "buy now",
        "--data-dir",
        &d(&mallory),
    ]);
    wait_for(
        "mallory's request refused",
        Duration::from_secs(120),
        || (metric(&bob, "chainmail_session_dropped_total{reason=\"stamp\"}") >= 1).then_some(()),
    );
    assert_eq!(
        inbox(&bob, "request").len(),
        1,
        "no request shown from mallory"
    );

    // Bob moves to a new device: same identity, new keys.
    let seed = root.join("bob.seed");
    cli_ok(&[
        "whoami",
        "--export-identity",
        seed.to_str().unwrap(),
        "--data-dir",
        &d(&bob),
    ]);
    kill9(&bob);
    let bob2 = root.join("bob2");
    let again = init_account(
        &network,
        &bob2,
        "bob",
        &["--identity-file", seed.to_str().unwrap()],
    );
    assert_eq!(again, bob_address, "same address on the new device");
    start_client(&mut procs, &network, &bob2, &bob_providers);
    cli_ok(&[
        "contact",
        "add",
        &alice_address,
        "--name",
        "alice",
        "--data-dir",
        &d(&bob2),
    ]);
    wait_for(
        "alice warned of bob's new keys",
        Duration::from_secs(120),
        || (!inbox(&alice, "key-changed").is_empty()).then_some(()),
    );
    let list = cli_json(&["contact", "list", "--data-dir", &d(&alice)]);
    let bob_entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "bob")
        .unwrap()
        .clone();
    assert_eq!(bob_entry["key_changed"], true);
    assert_eq!(bob_entry["verified"], false);
    wait_for(
        "bob's new device accepted",
        Duration::from_secs(120),
        || (contact_state(&bob2, "alice").as_deref() == Some("accepted")).then_some(()),
    );
    cli_ok(&["send", "alice", "new phone", "--data-dir", &d(&bob2)]);
    wait_for(
        "a message from the new device",
        Duration::from_secs(120),
        || {
            texts(&alice)
                .contains(&"new phone".to_string())
                .then_some(())
        },
    );

    // Through all of it, alice's node never connected to a node of bob's.
    let seen = status(&alice).unwrap()["peers_seen"].clone();
    let seen: Vec<String> = serde_json::from_value(seen).unwrap();
    for dir in [&bob, &bob2] {
        assert!(!seen.contains(&peer_id(dir)), "alice connected to bob");
    }
    assert!(!seen.is_empty());
}

fn community_json(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["community"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--data-dir", dir.to_str().unwrap()]);
    cli_json(&all)
}

fn community_posts(dir: &Path) -> Vec<Option<String>> {
    try_community_posts(dir).unwrap_or_else(|e| panic!("{e}"))
}

fn try_community_posts(dir: &Path) -> Result<Vec<Option<String>>, String> {
    let out = cli(&[
        "community",
        "log",
        "garden",
        "--json",
        "--data-dir",
        dir.to_str().unwrap(),
    ])?;
    Ok(out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["kind"].as_str().is_some_and(|k| k.starts_with("post")))
        .map(|e| e["text"].as_str().map(str::to_string))
        .collect())
}

/// What each community node knows, for a failure message: its summary,
/// posts, community metrics and the community lines of its log.
fn community_report(dirs: &[PathBuf]) -> String {
    let mut out = String::new();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy();
        let summary = cli(&[
            "community",
            "list",
            "--json",
            "--data-dir",
            dir.to_str().unwrap(),
        ])
        .unwrap_or_else(|e| format!("(no answer: {})", e.trim()));
        let peers = status(dir).map(|s| s["peers"].clone()).unwrap_or_default();
        out += &format!("== {name}: connected peers {peers}\n{}\n", summary.trim());
        out += &format!("posts: {:?}\n", try_community_posts(dir));
        for l in metrics_text(dir).lines() {
            if l.starts_with("chainmail_community") {
                out += &format!("{l}\n");
            }
        }
        let log = std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("communit") || l.contains("WARN") || l.contains("ERROR"))
            .collect();
        for l in &lines[lines.len().saturating_sub(20)..] {
            out += &format!("log: {l}\n");
        }
    }
    out
}

fn community_admitted(dir: &Path) -> bool {
    community_json(dir, &["list"])
        .as_array()
        .and_then(|a| a.first().cloned())
        .is_some_and(|c| c["admitted"] == true)
}

/// An owner, an admin and three members on five nodes: invitations through
/// the sessions, joins, posts that converge everywhere, a removed member
/// that cannot read later posts, concurrent admin actions that converge,
/// and a member offline during twenty posts that catches up.
#[test]
fn communities_converge_across_nodes() {
    let _one_at_a_time = serial();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut procs = Procs(Vec::new());
    let nodes = start_testnet(&mut procs, root, &[]);
    let network = root.join("network.toml");
    let names = ["alice", "bob", "carol", "dave", "erin"];
    let dirs: Vec<PathBuf> = names.iter().map(|n| root.join(n)).collect();
    let d = |p: &Path| p.to_str().unwrap().to_string();
    let mut addresses = Vec::new();
    for (i, (name, dir)) in names.iter().zip(&dirs).enumerate() {
        addresses.push(init_account(&network, dir, name, &[]));
        let a = (2 * i) % nodes.len();
        let b = (2 * i + 1) % nodes.len();
        start_client(&mut procs, &network, dir, &[&nodes[a].0, &nodes[b].0]);
    }
    let alice = &dirs[0];
    for i in 1..5 {
        cli_ok(&[
            "contact",
            "add",
            &addresses[i],
            "--name",
            names[i],
            "--data-dir",
            &d(alice),
        ]);
    }
    for dir in &dirs[1..] {
        wait_for("alice's request", Duration::from_secs(120), || {
            contact_state(dir, "alice")
                .is_some_and(|s| s == "request-received")
                .then_some(())
        });
        cli_ok(&["contact", "accept", "alice", "--data-dir", &d(dir)]);
    }
    for name in &names[1..] {
        wait_for("acceptance", Duration::from_secs(120), || {
            (contact_state(alice, name).as_deref() == Some("accepted")).then_some(())
        });
    }

    let created = community_json(alice, &["create", "garden"]);
    assert_eq!(created["role"], "owner");
    for name in &names[1..] {
        community_json(alice, &["invite", "garden", name]);
    }
    for dir in &dirs[1..] {
        let token = wait_for("the invitation", Duration::from_secs(120), || {
            community_json(dir, &["invites"])
                .as_array()
                .and_then(|a| a.first().cloned())
                .and_then(|i| i["token"].as_str().map(str::to_string))
        });
        // The inbox shows it too, with the token to join with.
        let shown = inbox(dir, "community-invite");
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert_eq!(shown[0]["id"].as_str(), Some(token.as_str()));
        assert_eq!(shown[0]["text"], "garden");
        assert_eq!(shown[0]["name"], "alice");
        community_json(dir, &["join", &token]);
    }
    for dir in &dirs[1..] {
        wait_for("admission", Duration::from_secs(180), || {
            community_admitted(dir).then_some(())
        });
    }
    // bob becomes an admin (two steps: member → moderator → admin).
    community_json(alice, &["promote", "garden", "bob"]);
    wait_for("bob moderator", Duration::from_secs(60), || {
        community_json(alice, &["members", "garden"])
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "bob" && m["role"] == "moderator")
            .then_some(())
    });
    community_json(alice, &["promote", "garden", "bob"]);

    // Everyone posts; every node shows the same posts in the same order.
    for (i, dir) in dirs.iter().enumerate() {
        community_json(
            dir,
            &["post", "garden", &format!("hello from {}", names[i])],
        );
    }
    let all = wait_or_explain(
        "posts to converge",
        Duration::from_secs(120),
        || {
            let first = community_posts(alice);
            (first.len() == 5 && dirs.iter().all(|d| community_posts(d) == first)).then_some(first)
        },
        || community_report(&dirs),
    );
    assert!(all.iter().all(Option::is_some), "{all:?}");

    // Concurrent admin actions: bob (admin) makes carol a moderator while
    // alice (owner) removes erin.
    community_json(&dirs[1], &["promote", "garden", "carol"]);
    community_json(alice, &["remove", "garden", "erin"]);
    let members = |dir: &Path| -> Vec<(String, String)> {
        let mut m: Vec<(String, String)> = community_json(dir, &["members", "garden"])
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().into(),
                    m["role"].as_str().unwrap().into(),
                )
            })
            .collect();
        m.sort();
        m
    };
    let expected: Vec<(String, String)> = vec![
        ("alice".into(), "owner".into()),
        ("bob".into(), "admin".into()),
        ("carol".into(), "moderator".into()),
        ("dave".into(), "member".into()),
    ];
    for dir in &dirs[..4] {
        wait_or_explain(
            "the roster to converge",
            Duration::from_secs(120),
            || (members(dir) == expected).then_some(()),
            || community_report(&dirs),
        );
    }
    community_json(&dirs[2], &["post", "garden", "after erin left"]);
    for dir in &dirs[..4] {
        wait_or_explain(
            "the post after the removal",
            Duration::from_secs(120),
            || {
                community_posts(dir)
                    .contains(&Some("after erin left".into()))
                    .then_some(())
            },
            || community_report(&dirs),
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    let erin_posts = community_posts(&dirs[4]);
    assert!(
        !erin_posts.contains(&Some("after erin left".into())),
        "a removed member read a later post: {erin_posts:?}"
    );

    // dave is offline during twenty posts, then catches up.
    kill9(&dirs[3]);
    for k in 0..20 {
        let who = [0, 1, 2][k % 3];
        community_json(
            &dirs[who],
            &["post", "garden", &format!("while dave was away {k}")],
        );
    }
    wait_or_explain(
        "the twenty posts at alice",
        Duration::from_secs(120),
        || (community_posts(alice).len() >= 26).then_some(()),
        || community_report(&dirs[..3]),
    );
    start_node(
        &mut procs,
        &network,
        &dirs[3],
        &["--roles", "none", "--client"],
    );
    let expect = community_posts(alice);
    wait_or_explain(
        "dave to catch up",
        Duration::from_secs(120),
        || (try_community_posts(&dirs[3]).ok()? == expect).then_some(()),
        || community_report(&dirs[..4]),
    );
    // Records that raced their blocks are not refusals: nothing honest was
    // refused anywhere.
    for dir in &dirs[..4] {
        eprintln!(
            "{}: {} gossiped records raced their blocks",
            dir.display(),
            metric_sum(dir, "chainmail_community_records_out_of_date_total")
        );
        let refused = metric_sum(dir, "chainmail_community_refused_total");
        if refused != 0 {
            let log = std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
            let why: Vec<&str> = log.lines().filter(|l| l.contains("refused")).collect();
            panic!(
                "{refused} refused at {}:\n{}\n{}",
                dir.display(),
                metrics_text(dir)
                    .lines()
                    .filter(|l| l.starts_with("chainmail_community"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                why.join("\n")
            );
        }
    }

    // A copy of the chain from alice adds nothing new at dave; a block
    // forged by an outsider (well formed, signed, on dave's tip) and a
    // block with one byte changed are refused and counted, and dave's
    // chain is what it was.
    let export = root.join("garden.blocks");
    let exported = community_json(
        alice,
        &["export", "garden", "--out", export.to_str().unwrap()],
    );
    let blocks = exported["blocks"].as_u64().unwrap();
    assert!(blocks >= 5, "{exported}");
    let imported = community_json(&dirs[3], &["import", export.to_str().unwrap()]);
    // (Blocks of a branch that lost may be new to dave; nothing is refused.)
    assert_eq!(
        imported["refused"].as_array().map(Vec::len),
        Some(0),
        "{imported}"
    );
    assert_eq!(
        imported["known"].as_u64().unwrap() + imported["stored"].as_u64().unwrap(),
        blocks,
        "{imported}"
    );
    let text = std::fs::read_to_string(&export).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let tip_hex = lines.last().unwrap();
    let tip = chainmail_chain::Block::decode(&hex_decode(tip_hex)).unwrap();
    let outsider = chainmail_chain::MemberSecret::from_bytes(&[7; 64]);
    let mut forged = chainmail_chain::Block {
        community: tip.community,
        height: tip.height + 1,
        parent: tip.id(),
        producer: outsider.id(),
        timestamp: tip.timestamp + 1,
        state_hash: tip.state_hash,
        records: Vec::new(),
        signature: [0; 64],
    };
    forged.sign(&outsider);
    let mut tampered = hex_decode(tip_hex);
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let bad = root.join("forged.blocks");
    std::fs::write(
        &bad,
        format!(
            "{}\n{}\n{}\n{}\n",
            lines[0],
            lines[1],
            hex_encode(&forged.encode()),
            hex_encode(&tampered)
        ),
    )
    .unwrap();
    let err = cli(&[
        "community",
        "import",
        bad.to_str().unwrap(),
        "--data-dir",
        &d(&dirs[3]),
    ])
    .expect_err("a forged block was accepted");
    assert!(err.contains("2 of 2 blocks"), "{err}");
    assert!(err.contains("not an admin"), "{err}");
    assert_eq!(metric_sum(&dirs[3], "chainmail_community_refused_total"), 2);
    assert_eq!(
        metric(
            &dirs[3],
            "chainmail_community_refused_total{kind=\"bad_block\"}"
        ),
        1
    );
    assert_eq!(community_posts(&dirs[3]), expect);
    let status = community_json(&dirs[3], &["list"]);
    assert_eq!(status[0]["height"].as_u64(), Some(tip.height), "{status}");
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
