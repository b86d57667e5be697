//! Real processes in a network lab (`scripts/netlab`): six public hosts on
//! an "internet" with 1 % packet loss, and homes behind NAT routers. The
//! network is started as its README says: a first node, `network new` with
//! its address, the other public nodes, then users at home.
//!
//! These tests need root (network namespaces) and nftables; `scripts/test`
//! runs them (`cargo test --test lab -- --ignored`).

#![allow(clippy::disallowed_methods)]

mod netlab;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use netlab::*;

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

    befriend(&lab, ("hA", "alice"), ("hB", "bob"), &bob_address);

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
    lab.kill(&bob);
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
    lab.kill(&pub2);
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

/// Direct mode. Alice (home A) and bob (home B), both behind routers that
/// keep a port mapping for every destination, agree to it: hole punching
/// through a public node gives them a direct connection (its remote
/// address is bob's router, not a relay, and packets now flow between the
/// two routers), and messages travel over it. Carol sits behind a
/// symmetric NAT: hole punching with her fails, status says so, and
/// messages still arrive through the mixnet. Alice turning direct mode
/// off closes the connection and messages go through the mixnet again.
#[test]
#[ignore = "needs root and nftables: run by scripts/test"]
fn direct_mode_between_two_homes_and_the_mixnet_behind_a_symmetric_nat() {
    let mut lab = Lab::up();
    three_homes(&mut lab);
    let alice = lab.path("alice");
    let bob = lab.path("bob");
    let carol = lab.path("carol");
    assert_eq!(lab.count("rA", "rB"), 0, "nothing between the homes yet");

    let detail = direct_on(&lab, ("hA", "alice"), ("hB", "bob"), "direct");
    assert!(
        detail.contains(&public_ip("rB")) && !detail.contains("p2p-circuit"),
        "connected through {detail}"
    );
    let before = metric(
        &lab,
        "hB",
        &bob,
        "chainmail_direct_total{event=\"received\"}",
    );
    exchange(&lab, ("hA", "alice"), ("hB", "bob"), "d", 10);
    exchange(&lab, ("hB", "bob"), ("hA", "alice"), "e", 10);
    let received = metric(
        &lab,
        "hB",
        &bob,
        "chainmail_direct_total{event=\"received\"}",
    );
    assert!(
        received >= before + 10,
        "{before} -> {received}: alice {}, bob {}",
        direct_metrics(&lab, "hA", &alice),
        direct_metrics(&lab, "hB", &bob)
    );
    assert!(
        lab.count("rA", "rB") > 0,
        "the direct connection runs between the routers"
    );

    // Symmetric NAT: no direct connection, and the mixnet carries on.
    let detail = direct_on(&lab, ("hA", "alice"), ("hC", "carol"), "failed");
    assert!(detail.contains("mixnet"), "{detail}");
    exchange(&lab, ("hA", "alice"), ("hC", "carol"), "f", 5);
    exchange(&lab, ("hC", "carol"), ("hA", "alice"), "g", 5);
    // The side that started hole punching counts the failure; neither
    // side got anything over a direct connection.
    let failed = |host: &str, data: &Path| {
        metric(
            &lab,
            host,
            data,
            "chainmail_direct_total{event=\"hole_punch_failed\"}",
        )
    };
    assert!(
        failed("hA", &alice) + failed("hC", &carol) >= 1,
        "alice {}, carol {}",
        direct_metrics(&lab, "hA", &alice),
        direct_metrics(&lab, "hC", &carol)
    );
    assert!(
        lab.count("rA", "rC") + lab.count("rC", "rA") > 0,
        "they tried"
    );

    // Off: bob is told, the link closes, messages still arrive.
    let d = alice.to_str().unwrap();
    lab.cli_ok("hA", &["contact", "direct", "bob", "off", "--data-dir", d]);
    wait_for(&lab, "bob told", Duration::from_secs(120), || {
        let (state, _) = direct_state(&lab, "hB", &bob, "alice")?;
        (state == "asked").then_some(())
    });
    let before = metric(
        &lab,
        "hB",
        &bob,
        "chainmail_direct_total{event=\"received\"}",
    );
    exchange(&lab, ("hA", "alice"), ("hB", "bob"), "h", 3);
    assert_eq!(
        metric(
            &lab,
            "hB",
            &bob,
            "chainmail_direct_total{event=\"received\"}"
        ),
        before,
        "nothing direct after off"
    );
}

/// A community of three users in three homes (two behind
/// endpoint-independent NAT, one behind symmetric NAT). Members' nodes
/// reach each other through their providers' relays (hole punching makes
/// it direct where the routers allow): everyone's posts reach everyone,
/// and a removed member reads nothing posted after.
#[test]
#[ignore = "needs root and nftables: run by scripts/test"]
fn a_community_across_three_homes_converges_and_a_removed_member_is_locked_out() {
    let mut lab = Lab::up();
    three_homes(&mut lab);
    let members = [("hA", "alice"), ("hB", "bob"), ("hC", "carol")];

    let created = community(&lab, "hA", "alice", &["create", "garden"]);
    assert_eq!(created["role"], "owner");
    for (host, name) in &members[1..] {
        community(&lab, "hA", "alice", &["invite", "garden", name]);
        let token = wait_for(&lab, "the invitation", Duration::from_secs(180), || {
            community(&lab, host, name, &["invites"])
                .as_array()
                .and_then(|a| a.first().cloned())
                .and_then(|i| i["token"].as_str().map(str::to_string))
        });
        community(&lab, host, name, &["join", &token]);
    }
    for (host, name) in &members[1..] {
        wait_for(
            &lab,
            &format!("{name} admitted"),
            Duration::from_secs(240),
            || {
                community(&lab, host, name, &["list"])
                    .as_array()
                    .and_then(|a| a.first().cloned())
                    .is_some_and(|c| c["admitted"] == true)
                    .then_some(())
            },
        );
    }
    for (host, name) in &members {
        community(
            &lab,
            host,
            name,
            &["post", "garden", &format!("hello from {name}")],
        );
    }
    for (host, name) in &members {
        wait_for(
            &lab,
            &format!("{name} sees all three posts"),
            Duration::from_secs(240),
            || {
                let posts = community_posts(&lab, host, name, "garden");
                members
                    .iter()
                    .all(|(_, n)| posts.contains(&format!("hello from {n}")))
                    .then_some(())
            },
        );
    }

    // Carol removed: bob's next post reaches alice, never carol.
    community(&lab, "hA", "alice", &["remove", "garden", "carol"]);
    wait_for(
        &lab,
        "bob sees the removal",
        Duration::from_secs(240),
        || {
            let m = community(&lab, "hB", "bob", &["members", "garden"]);
            (!m.to_string().contains("\"carol\"")).then_some(())
        },
    );
    community(&lab, "hB", "bob", &["post", "garden", "after carol left"]);
    wait_for(
        &lab,
        "alice sees the post",
        Duration::from_secs(240),
        || {
            community_posts(&lab, "hA", "alice", "garden")
                .contains(&"after carol left".to_string())
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(5));
    let carol_posts = community_posts(&lab, "hC", "carol", "garden");
    assert!(
        !carol_posts.contains(&"after carol left".to_string()),
        "a removed member read a later post: {carol_posts:?}"
    );
}
