//! Direct mode with real processes on 127.0.0.1: two users agree to it,
//! their nodes connect directly, messages go over that connection, a
//! contact who did not agree gets nothing direct, and turning it off goes
//! back to the mixnet. (Hole punching behind NAT is the lab's test.)

#![allow(clippy::disallowed_methods)]

mod netlab;

use std::time::Duration;

use netlab::*;

#[test]
fn two_users_agree_to_direct_mode_and_messages_skip_the_mixnet() {
    let mut lab = Lab::loopback();
    let network = start_public_network(&mut lab);
    let client = ["--roles", "none", "--client"];
    start_user(&mut lab, "hA", "alice", &network, &client);
    let bob_address = start_user(&mut lab, "hB", "bob", &network, &client);
    befriend(&lab, ("hA", "alice"), ("hB", "bob"), &bob_address);
    let alice = lab.path("alice");
    let bob = lab.path("bob");
    let a = alice.to_str().unwrap();

    // Only a contact: a stranger's name is a clear error.
    let out = lab.cli(
        "hA",
        &["contact", "direct", "mallory", "on", "--data-dir", a],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no contact named"));

    // Alice asks, bob sees the offer and agrees.
    let detail = direct_on(&lab, ("hA", "alice"), ("hB", "bob"), "direct");
    assert!(detail.contains("can see your network address"), "{detail}");
    let list = lab.cli_ok(
        "hB",
        &["contact", "list", "--data-dir", bob.to_str().unwrap()],
    );
    assert!(list.contains("direct mode direct"), "{list}");
    let inbox = inbox(&lab, "hB", &bob, "direct");
    assert!(
        inbox.iter().any(|e| e["text"]
            .as_str()
            .unwrap_or_default()
            .contains("asks for direct mode")),
        "{inbox:?}"
    );

    let received = |lab: &Lab| {
        metric(
            lab,
            "hB",
            &bob,
            "chainmail_direct_total{event=\"received\"}",
        )
    };
    let before = received(&lab);
    exchange(&lab, ("hA", "alice"), ("hB", "bob"), "d", 5);
    exchange(&lab, ("hB", "bob"), ("hA", "alice"), "e", 5);
    assert!(
        received(&lab) >= before + 5,
        "{before} -> {}: alice {}, bob {}",
        received(&lab),
        direct_metrics(&lab, "hA", &alice),
        direct_metrics(&lab, "hB", &bob)
    );

    // Off: bob is told; messages go through the mixnet again.
    lab.cli_ok("hA", &["contact", "direct", "bob", "off", "--data-dir", a]);
    wait_for(&lab, "bob told", Duration::from_secs(60), || {
        let (state, _) = direct_state(&lab, "hB", &bob, "alice")?;
        (state == "asked").then_some(())
    });
    // Bob still agrees: alice sees his offer standing.
    let (state, _) = direct_state(&lab, "hA", &alice, "bob").unwrap();
    assert_eq!(state, "offered");
    let before = received(&lab);
    exchange(&lab, ("hA", "alice"), ("hB", "bob"), "h", 3);
    assert_eq!(received(&lab), before, "nothing direct after off");
}
