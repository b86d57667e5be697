//! `chainmail node` processes on 127.0.0.1 joining a network the way things
//! go wrong for real users and operators: the bootstrap node is down when
//! a client starts (it keeps trying, says why, and joins once the node is
//! up), a port is taken, a network file names a bootstrap address that
//! cannot work, an operator names a private address as external.

#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_chainmail");

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn node(network: &Path, data: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(EXE);
    cmd.args(["node", "--network"])
        .arg(network)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn status(data: &Path) -> Option<Value> {
    let out = Command::new(EXE)
        .args(["status", "--json", "--data-dir"])
        .arg(data)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())?
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn write_network(path: &Path, id: &str, bootstrap: &[String]) {
    let list: Vec<String> = bootstrap.iter().map(|b| format!("{b:?}")).collect();
    std::fs::write(
        path,
        format!(
            "[network]\nid = \"{id}\"\nname = \"joining\"\nlocal = true\nbootstrap = [{}]\n",
            list.join(", ")
        ),
    )
    .unwrap();
}

/// The error a node that refuses to start prints, once it exited.
fn refusal(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "the node started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_client_started_while_its_bootstrap_node_is_down_joins_when_it_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let id = format!("chainmail-joining-{}", std::process::id());
    let first = dir.path().join("first.toml");
    write_network(&first, &id, &[]);
    let port = free_port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let boot_dir = dir.path().join("boot");
    let mut procs = Killed(Vec::new());

    // The bootstrap node runs once, to have its identity; then it is down.
    procs.0.push(
        node(&first, &boot_dir, &["--listen", &listen])
            .spawn()
            .unwrap(),
    );
    let peer = wait_for("the bootstrap node", Duration::from_secs(30), || {
        status(&boot_dir).and_then(|s| s["peer_id"].as_str().map(String::from))
    });
    for mut child in procs.0.drain(..) {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let network = dir.path().join("network.toml");
    let boot_addr = format!("{listen}/p2p/{peer}");
    write_network(&network, &id, std::slice::from_ref(&boot_addr));

    // A client starts: it has nobody, keeps trying, and says why.
    let client = dir.path().join("client");
    procs.0.push(
        node(&network, &client, &["--roles", "none"])
            .spawn()
            .unwrap(),
    );
    let b = wait_for("failed attempts", Duration::from_secs(30), || {
        let s = status(&client)?;
        let b = s["bootstrap"].as_array()?.first()?.clone();
        (b["failures"].as_u64()? >= 2).then_some(b)
    });
    assert_eq!(b["addr"], boot_addr.as_str());
    assert_eq!(b["connected"], false);
    assert!(b["last_error"].is_string(), "{b}");
    assert_eq!(status(&client).unwrap()["peers"], 0);

    // The bootstrap node comes back: the client finds it on its own.
    let back = Instant::now();
    procs.0.push(
        node(&first, &boot_dir, &["--listen", &listen])
            .spawn()
            .unwrap(),
    );
    wait_for("the client joins", Duration::from_secs(60), || {
        let s = status(&client)?;
        (s["peers"].as_u64()? >= 1 && s["bootstrap"][0]["connected"] == true).then_some(())
    });
    eprintln!(
        "joined {:?} after the bootstrap node came back",
        back.elapsed()
    );
}

#[test]
fn a_taken_port_and_bad_addresses_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let network = dir.path().join("network.toml");
    write_network(&network, "chainmail-joining-errors", &[]);

    // A port someone else listens on.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let e = refusal(node(
        &network,
        &dir.path().join("a"),
        &["--listen", &format!("/ip4/127.0.0.1/tcp/{port}")],
    ));
    assert!(e.contains(&format!("127.0.0.1/tcp/{port}")), "{e}");
    assert!(e.to_lowercase().contains("in use"), "{e}");

    // Not a multiaddress.
    let e = refusal(node(
        &network,
        &dir.path().join("b"),
        &["--listen", "127.0.0.1:4001"],
    ));
    assert!(e.contains("--listen"), "{e}");

    // A private address named as external on a public network.
    let public = dir.path().join("public.toml");
    std::fs::write(
        &public,
        "[network]\nid = \"chainmail-joining-public\"\nname = \"p\"\n",
    )
    .unwrap();
    let e = refusal(node(
        &public,
        &dir.path().join("c"),
        &[
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--external-address",
            "/ip4/192.168.1.10/tcp/4001",
        ],
    ));
    assert!(e.contains("publicly routable"), "{e}");

    // A bootstrap address on loopback in a public network's file.
    std::fs::write(
        &public,
        "[network]\nid = \"chainmail-joining-public\"\nname = \"p\"\nbootstrap = [\"/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWJWEKvSFbben74C7H4YtKjhPMTDxd7gP6zxWSUTeR4Cy9\"]\n",
    )
    .unwrap();
    let e = refusal(node(&public, &dir.path().join("d"), &[]));
    assert!(e.contains("local = true"), "{e}");

    // `network new` refuses the same, and never overwrites silently.
    let out = Command::new(EXE)
        .args([
            "network",
            "new",
            "--id",
            "x",
            "--name",
            "x",
            "--bootstrap",
            "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWJWEKvSFbben74C7H4YtKjhPMTDxd7gP6zxWSUTeR4Cy9",
            "--out",
        ])
        .arg(dir.path().join("new.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("private"));
    let out = Command::new(EXE)
        .args(["network", "new", "--id", "x", "--name", "x", "--out"])
        .arg(&network)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
}
