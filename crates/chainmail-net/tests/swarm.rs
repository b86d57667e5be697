//! Real swarms in one process, on 127.0.0.1 only.

mod common;

use std::time::Duration;

use chainmail_net::{
    Multiaddr, Net, NetError, NetEvent, NetHandle, ProtocolNames, RateLimit, RequestKind, Verdict,
};
use common::*;
use libp2p::futures::AsyncWriteExt;
use libp2p::multiaddr::Protocol;

async fn exchange_frames(name: &str, listen: Vec<Multiaddr>) {
    let net = network(name);
    let mut a = start(config(&net, listen.clone())).await;
    let mut b = start(config(&net, listen)).await;
    connect(&mut a, &mut b).await;

    const N: u32 = 300;
    for i in 0..N {
        a.handle.send_packet(b.peer, frame(1, i)).await.unwrap();
        b.handle.send_packet(a.peer, frame(2, i)).await.unwrap();
    }
    let at_b = receive_frames(&mut b.events, a.peer, N as usize).await;
    let at_a = receive_frames(&mut a.events, b.peer, N as usize).await;
    for i in 0..N {
        assert!(at_b[i as usize] == frame(1, i), "frame {i} a→b");
        assert!(at_a[i as usize] == frame(2, i), "frame {i} b→a");
    }

    for node in [&a, &b] {
        let m = node.handle.metrics();
        assert_eq!(m.frames_out, u64::from(N));
        assert_eq!(m.frames_in, u64::from(N));
        assert_eq!(m.packet_streams_opened, 1, "one long-lived stream");
        assert_eq!(m.packet_streams_accepted, 1);
        assert_eq!(m.frames_dropped, Default::default());
    }
    a.handle.shutdown().await;
    b.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_both_ways_over_tcp() {
    init_tracing();
    within(exchange_frames("frames-tcp", tcp())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_both_ways_over_quic() {
    init_tracing();
    within(exchange_frames("frames-quic", quic())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_to_unconnected_peer_are_dropped_and_counted() {
    init_tracing();
    within(async {
        let a = start(config(&network("unconnected"), tcp())).await;
        let stranger = start(config(&network("unconnected"), tcp())).await;
        a.handle
            .send_packet(stranger.peer, frame(0, 0))
            .await
            .unwrap();
        let handle = a.handle.clone();
        eventually("no_connection counted", || {
            handle.metrics().frames_dropped.no_connection == 1
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_and_dht_across_three_nodes() {
    init_tracing();
    within(async {
        let net = network("three");
        let mut a = start(config(&net, tcp())).await;
        let mut b_config = config(&net, tcp());
        b_config.bootstrap = vec![a.addr.clone()];
        let mut b = start(b_config).await;
        let mut c_config = config(&net, tcp());
        c_config.bootstrap = vec![a.addr.clone()];
        let mut c = start(c_config).await;
        wait_connected(&mut b, a.peer).await;
        wait_connected(&mut c, a.peer).await;
        wait_connected_all(&mut a, &[b.peer, c.peer]).await;

        // Gossip: B publishes; A and C get it. A message published before a
        // peer has joined the mesh may miss that peer (gossipsub gives no
        // guarantee there), so B publishes a new message every 300 ms until
        // both have one.
        let mut sent: Vec<Vec<u8>> = Vec::new();
        let (mut at_a, mut at_c) = (None, None);
        for i in 0..30 {
            let message = format!("descriptor of b, version {i}").into_bytes();
            match b.handle.publish(message.clone()).await {
                Ok(()) => sent.push(message),
                Err(NetError::PublishFailed(_)) => {}
                Err(e) => panic!("{e}"),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            for (node, got) in [(&mut a, &mut at_a), (&mut c, &mut at_c)] {
                while let Some(event) = node.events.try_recv() {
                    if let NetEvent::GossipReceived { source, bytes } = event {
                        assert_eq!(source, b.peer);
                        assert!(sent.contains(&bytes), "not a published message");
                        got.get_or_insert(bytes);
                    }
                }
            }
            if at_a.is_some() && at_c.is_some() {
                break;
            }
        }
        assert!(at_a.is_some(), "A never got B's gossip");
        assert!(at_c.is_some(), "C never got B's gossip");
        assert_eq!(b.handle.metrics().gossip_out, sent.len() as u64);
        assert!(c.handle.metrics().gossip_in >= 1);

        // DHT: A stores a record, C finds it.
        let key = b"mailbox-descriptor-key".to_vec();
        let value = b"signed descriptor bytes".to_vec();
        let mut stored = Err(NetError::RecordNotFound);
        for _ in 0..20 {
            stored = a.handle.put_record(key.clone(), value.clone()).await;
            if stored.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stored.unwrap();
        assert_eq!(c.handle.get_record(key).await.unwrap(), value);
        assert_eq!(
            c.handle.get_record(b"no such key".to_vec()).await,
            Err(NetError::RecordNotFound)
        );
        let too_big = vec![0; 16 * 1024 + 1];
        assert!(matches!(
            a.handle.put_record(b"k".to_vec(), too_big).await,
            Err(NetError::RecordTooLarge { .. })
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_round_trip_and_size_limits() {
    init_tracing();
    within(async {
        let net = network("fetch");
        let mut a = start(config(&net, tcp())).await;
        // The responder may send up to 4 MiB, more than A accepts (1 MiB).
        let mut b_config = config(&net, tcp());
        b_config.limits.max_response_size = 4 << 20;
        let mut b = start(b_config).await;
        // D may send requests of 256 KiB, more than B accepts (64 KiB).
        let mut d_config = config(&net, tcp());
        d_config.limits.max_request_size = 256 << 10;
        let mut d = start(d_config).await;
        connect(&mut b, &mut a).await;
        connect(&mut b, &mut d).await;

        // B answers: reversed bytes; "huge": 2 MiB; "too big": 5 MiB.
        let (refused_tx, mut refused_rx) = tokio::sync::mpsc::channel(4);
        let mut b_events = b.events;
        tokio::spawn(async move {
            while let Some(event) = b_events.recv().await {
                if let NetEvent::RequestReceived { bytes, reply, .. } = event {
                    let response = match bytes.as_slice() {
                        b"huge" => vec![7; 2 << 20],
                        b"too big" => vec![7; 5 << 20],
                        other => other.iter().rev().copied().collect(),
                    };
                    if let Err(e) = reply.send(response) {
                        refused_tx.send(e).await.unwrap();
                    }
                }
            }
        });

        assert_eq!(
            a.handle
                .request(b.peer, RequestKind::Fetch, b"hello".to_vec())
                .await
                .unwrap(),
            b"olleh"
        );

        // Over-size request, refused locally.
        assert_eq!(
            a.handle
                .request(b.peer, RequestKind::Fetch, vec![0; (64 << 10) + 1])
                .await,
            Err(NetError::RequestTooLarge {
                size: (64 << 10) + 1,
                max: 64 << 10
            })
        );
        // Over-size request on the wire, refused by the responder's codec.
        assert!(matches!(
            d.handle
                .request(b.peer, RequestKind::Fetch, vec![1; 100 << 10])
                .await,
            Err(NetError::RequestFailed(_))
        ));
        // Over-size response on the wire, refused by the requester's codec.
        assert!(matches!(
            a.handle
                .request(b.peer, RequestKind::Fetch, b"huge".to_vec())
                .await,
            Err(NetError::RequestFailed(_))
        ));
        // Response over the responder's own limit: refused by ReplyHandle,
        // and the requester gets an error.
        assert!(matches!(
            a.handle
                .request(b.peer, RequestKind::Fetch, b"too big".to_vec())
                .await,
            Err(NetError::RequestFailed(_))
        ));
        assert!(matches!(
            refused_rx.recv().await,
            Some(NetError::ResponseTooLarge { .. })
        ));

        // Everybody still works.
        assert_eq!(
            d.handle
                .request(b.peer, RequestKind::Fetch, b"still there".to_vec())
                .await
                .unwrap(),
            b"ereht llits"
        );
        assert_eq!(
            a.handle
                .request(b.peer, RequestKind::Fetch, b"ok".to_vec())
                .await
                .unwrap(),
            b"ko"
        );
        let m = a.handle.metrics();
        assert_eq!(m.requests_out, 4);
        assert_eq!(m.requests_failed, 2);
        // The over-size request never became a request event.
        assert_eq!(b.handle.metrics().requests_in, 5);
        drop(d.events);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_networks_never_talk() {
    init_tracing();
    within(async {
        let mut a = start(config(&network("alpha"), tcp())).await;
        let mut b = start(config(&network("beta"), tcp())).await;
        b.handle.dial(a.addr.clone()).await.unwrap();

        let (ha, hb) = (a.handle.clone(), b.handle.clone());
        // Whichever side reads the other's identify first hangs up; the
        // other may never get to see it.
        eventually("the other network is rejected", || {
            ha.metrics().foreign_peers_rejected + hb.metrics().foreign_peers_rejected >= 1
        })
        .await;
        eventually("connections closed after identify", || {
            ha.metrics().connections == 0 && hb.metrics().connections == 0
        })
        .await;

        // Nothing crosses afterwards either.
        a.handle.send_packet(b.peer, frame(1, 0)).await.unwrap();
        b.handle.send_packet(a.peer, frame(2, 0)).await.unwrap();
        assert!(matches!(
            b.handle.publish(b"hello other net".to_vec()).await,
            Err(NetError::PublishFailed(_))
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;

        for node in [&mut a, &mut b] {
            while let Some(event) = node.events.try_recv() {
                assert!(
                    matches!(
                        event,
                        NetEvent::ListeningOn { .. } | NetEvent::AddressConfirmed { .. }
                    ),
                    "unexpected {event:?}"
                );
            }
            let m = node.handle.metrics();
            assert_eq!(m.frames_in, 0);
            assert_eq!(m.gossip_in, 0);
            assert_eq!(m.frames_dropped.no_connection, 1);
            assert!(node.handle.connected_peers().await.unwrap().is_empty());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_malformed_and_node_still_serves() {
    init_tracing();
    within(async {
        let net = network("garbage");
        let names = ProtocolNames::new(&net);
        let mut v_config = config(&net, tcp());
        v_config.limits.max_inbound_packet_streams_per_peer = 2;
        let mut v = start(v_config).await;

        let mut raw = RawPeer::connect(&v.addr).await;
        // 5000 bytes: two whole frames, then 904 bytes that end the stream
        // inside a frame.
        let mut stream = raw.open(v.peer, &names.packet).await;
        stream.write_all(&[0xee; 5000]).await.unwrap();
        stream.close().await.unwrap();
        let garbage = receive_frames(&mut v.events, raw.peer, 2).await;
        assert!(garbage.iter().all(|f| f.iter().all(|b| *b == 0xee)));
        let handle = v.handle.clone();
        eventually("malformed frame counted", || {
            handle.metrics().frames_dropped.malformed == 1
        })
        .await;

        // A third concurrent stream from the same peer is refused.
        let _s1 = raw.open(v.peer, &names.packet).await;
        let _s2 = raw.open(v.peer, &names.packet).await;
        let mut s3 = raw.open(v.peer, &names.packet).await;
        let _ = s3.write_all(&[0; 10]).await;
        eventually("third stream refused", || {
            handle.metrics().packet_streams_refused == 1
        })
        .await;

        // A well-behaved peer is still served.
        let mut g = start(config(&net, tcp())).await;
        connect(&mut v, &mut g).await;
        for i in 0..10 {
            g.handle.send_packet(v.peer, frame(9, i)).await.unwrap();
        }
        let frames = receive_frames(&mut v.events, g.peer, 10).await;
        for (i, f) in frames.iter().enumerate() {
            assert!(*f == frame(9, i as u32));
        }
        assert_eq!(v.handle.metrics().frames_dropped.malformed, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooder_is_rate_limited_and_reset_while_good_peer_is_served() {
    init_tracing();
    within(async {
        let net = network("flood");
        let names = ProtocolNames::new(&net);
        let mut v_config = config(&net, tcp());
        v_config.limits.packet_rate = RateLimit {
            frames_per_second: 50,
            burst: 20,
        };
        v_config.limits.flood_tolerance = 200;
        let mut v = start(v_config).await;
        let mut g = start(config(&net, tcp())).await;
        connect(&mut v, &mut g).await;

        let mut raw = RawPeer::connect(&v.addr).await;
        let flooder = raw.peer;
        let mut stream = raw.open(v.peer, &names.packet).await;
        let flood = tokio::spawn(async move {
            // 4000 frames (8 MB) as fast as possible; the victim resets the
            // stream long before the end.
            let junk = [0x55u8; 2048];
            let mut written = 0u32;
            for _ in 0..4000 {
                if stream.write_all(&junk).await.is_err() {
                    break;
                }
                written += 1;
            }
            let _ = stream.close().await;
            drop(raw);
            written
        });

        // Meanwhile the good peer sends at its allowance: 20 frames, 25 ms
        // apart (40/s, under 50/s).
        for i in 0..20 {
            g.handle.send_packet(v.peer, frame(3, i)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let mut from_good = 0;
        let mut from_flooder = 0;
        while from_good < 20 {
            let peer = wait_for(&mut v.events, |event| match event {
                NetEvent::PacketReceived { peer, frame } => {
                    if peer == g.peer {
                        let expected = frame_index_ok(&frame);
                        assert!(expected, "good frame intact");
                    }
                    Some(peer)
                }
                _ => None,
            })
            .await;
            if peer == g.peer {
                from_good += 1;
            } else if peer == flooder {
                from_flooder += 1;
            }
        }
        let written = flood.await.unwrap();
        let handle = v.handle.clone();
        eventually("flooder's stream reset", || {
            handle.metrics().packet_streams_reset >= 1
        })
        .await;
        let m = v.handle.metrics();
        eprintln!("flood: flooder wrote {written} frames; victim {m:?}");
        assert!(m.frames_dropped.rate_limited >= 200, "{m:?}");
        assert!(written < 4000, "the stream was cut off (wrote {written})");
        // The flooder got at most its burst plus the rate for the test's
        // duration through.
        while let Some(event) = v.events.try_recv() {
            if matches!(event, NetEvent::PacketReceived { peer, .. } if peer == flooder) {
                from_flooder += 1;
            }
        }
        assert!(from_flooder <= 20 + 50 * 20, "{from_flooder}");
        let flooder_in = m.frames_in.saturating_sub(20);
        assert!(
            flooder_in <= 20 + 50 * 20,
            "flooder frames in: {flooder_in}"
        );
        assert_eq!(m.frames_dropped.malformed, 0);
    })
    .await;
}

/// Checks a frame made by [`frame`] against its own index.
fn frame_index_ok(f: &chainmail_net::Frame) -> bool {
    let index = u32::from_be_bytes(f[1..5].try_into().unwrap());
    *frame(f[0], index) == *f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_keys_and_listen_addrs() {
    init_tracing();
    within(async {
        let a = start(config(&network("keys"), tcp())).await;
        let key = a.handle.local_node_key();
        assert_eq!(chainmail_net::peer_id_from_node_key(&key).unwrap(), a.peer);
        assert_eq!(chainmail_net::node_key_from_peer_id(&a.peer).unwrap(), key);
        let addrs = a.handle.listen_addrs().await.unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|addr| addr.to_string().starts_with("/ip4/127.0.0.1/tcp/"))
        );
        a.handle.shutdown().await;
        assert_eq!(a.handle.listen_addrs().await, Err(NetError::Stopped));
    })
    .await;
}

#[test]
fn spawn_outside_a_runtime_is_an_error() {
    let result = chainmail_net::Net::spawn(config(&network("nort"), tcp()));
    assert!(matches!(result, Err(NetError::NoRuntime)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_event_queue_drops_frames_without_blocking() {
    init_tracing();
    within(async {
        let net = network("slow-app");
        let mut v_config = config(&net, tcp());
        v_config.limits.event_queue = 8;
        let mut v = start(v_config).await;
        let mut g = start(config(&net, tcp())).await;
        connect(&mut v, &mut g).await;

        // The application does not read V's events while 200 frames arrive.
        for i in 0..200 {
            g.handle.send_packet(v.peer, frame(4, i)).await.unwrap();
        }
        let handle = v.handle.clone();
        eventually("every frame received or counted", || {
            let m = handle.metrics();
            m.frames_in == 200 && m.frames_dropped.event_queue_full > 0
        })
        .await;
        // The driver still answers, and the queue held at most its capacity.
        assert!(v.handle.listen_addrs().await.is_ok());
        let m = v.handle.metrics();
        let mut queued = 0;
        while let Some(event) = v.events.try_recv() {
            if matches!(event, NetEvent::PacketReceived { .. }) {
                queued += 1;
            }
        }
        assert!(queued <= 8, "{queued}");
        assert_eq!(queued + m.frames_dropped.event_queue_full, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_outbound_queue_drops_frames() {
    init_tracing();
    within(async {
        let net = network("stalled-peer");
        let names = ProtocolNames::new(&net);
        let mut v_config = config(&net, tcp());
        v_config.limits.outbound_queue_frames = 8;
        let v = start(v_config).await;

        // A peer that accepts packet streams but never reads them: V's
        // writes stall once the multiplexer's window is full.
        let mut raw = RawPeer::connect(&v.addr).await;
        let _incoming = raw
            .control
            .accept(libp2p::StreamProtocol::try_from_owned(names.packet.clone()).unwrap())
            .unwrap();
        // Make sure the connection is up (V counts it) before sending.
        let handle = v.handle.clone();
        eventually("raw peer connected", || handle.metrics().connections == 1).await;

        for i in 0..1000 {
            v.handle.send_packet(raw.peer, frame(5, i)).await.unwrap();
        }
        eventually("queue overflow counted", || {
            let m = handle.metrics();
            m.frames_dropped.queue_full > 0
                && m.frames_out + m.frames_dropped.queue_full + 8 + 1 >= 1000
        })
        .await;
        let m = v.handle.metrics();
        eprintln!("stalled peer: {m:?}");
        // Written into the stream, waiting in the queue (at most 8, plus one
        // being written), or dropped: nothing else, nothing unbounded.
        assert!(m.frames_out + m.frames_dropped.queue_full <= 1000, "{m:?}");
        assert!(
            m.frames_out < 1000,
            "the stalled peer did not take everything"
        );
    })
    .await;
}

/// `from` publishes a new message on `topic` every 100 ms (publishing fails
/// until `from` knows a subscriber) until `to` receives one as
/// [`NetEvent::TopicMessage`]; returns what `to` got. Every message starts
/// with `tag`.
async fn publish_until_received(
    from: &Node,
    to: &mut Node,
    topic: &str,
    tag: &str,
) -> (
    String,
    chainmail_net::PeerId,
    Vec<u8>,
    chainmail_net::TopicMessageId,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut sent: Vec<Vec<u8>> = Vec::new();
    for i in 0u32.. {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{tag}: no message arrived"
        );
        let message = format!("{tag} {i}").into_bytes();
        match from
            .handle
            .publish_to(topic.to_owned(), message.clone())
            .await
        {
            Ok(()) => sent.push(message),
            Err(NetError::PublishFailed(_)) => {}
            Err(e) => panic!("{e}"),
        }
        let wait = tokio::time::sleep(Duration::from_millis(100));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                event = to.events.recv() => match event.expect("driver still running") {
                    NetEvent::TopicMessage { topic, source, bytes, id } => {
                        assert!(sent.contains(&bytes), "not a published message");
                        return (topic, source, bytes, id);
                    }
                    NetEvent::GossipReceived { bytes, .. } => {
                        assert!(!bytes.starts_with(tag.as_bytes()), "community message as descriptor");
                    }
                    _ => {}
                },
            }
        }
    }
    unreachable!()
}

/// Waits until `node` knows exactly `peers` (in any order) to be
/// subscribed to `topic`.
async fn wait_topic_peers(node: &Node, topic: &str, peers: &[chainmail_net::PeerId]) {
    let mut expected = peers.to_vec();
    expected.sort();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut known = node.handle.topic_peers(topic.to_owned()).await.unwrap();
        known.sort();
        if known == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "topic peers {known:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Discards every event waiting in `node`'s queue.
fn drain(node: &mut Node) {
    while node.events.try_recv().is_some() {}
}

/// No community message is waiting in `node`'s events.
fn assert_no_topic_message(node: &mut Node, who: &str) {
    while let Some(event) = node.events.try_recv() {
        assert!(
            !matches!(event, NetEvent::TopicMessage { .. }),
            "{who} got {event:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn community_topics_reach_subscribers_only() {
    init_tracing();
    within(async {
        let net = network("community");
        let names = ProtocolNames::new(&net);
        let topic = format!("{}abc", names.community_topic_prefix);
        let mut a = start(config(&net, tcp())).await;
        let mut b = start(config(&net, tcp())).await;
        let mut c = start(config(&net, tcp())).await;
        connect(&mut a, &mut b).await;
        connect(&mut a, &mut c).await;
        connect(&mut b, &mut c).await;

        // Topics outside the community prefix are refused, locally.
        let too_long = format!(
            "{}{}",
            names.community_topic_prefix,
            "x".repeat(chainmail_net::MAX_TOPIC_LEN)
        );
        for bad in [
            names.descriptor_topic.clone(),
            "abc".to_owned(),
            names.community_topic_prefix.clone(),
            "chainmail/chainmail-test-other/community/abc".to_owned(),
            too_long,
        ] {
            let invalid = |r: Result<_, NetError>| matches!(r, Err(NetError::InvalidTopic { .. }));
            assert!(invalid(a.handle.subscribe(bad.clone()).await), "{bad}");
            assert!(invalid(a.handle.unsubscribe(bad.clone()).await), "{bad}");
            assert!(
                invalid(a.handle.publish_to(bad.clone(), b"x".to_vec()).await),
                "{bad}"
            );
            assert!(
                invalid(a.handle.topic_peers(bad.clone()).await.map(|_| ())),
                "{bad}"
            );
        }
        assert_eq!(
            a.handle
                .publish_to(topic.clone(), vec![0; (64 << 10) + 1])
                .await,
            Err(NetError::GossipTooLarge {
                size: (64 << 10) + 1,
                max: 64 << 10
            })
        );
        // Nobody is subscribed yet: a non-fatal publish error.
        assert!(matches!(
            a.handle.publish_to(topic.clone(), b"early".to_vec()).await,
            Err(NetError::PublishFailed(_))
        ));

        // A and B subscribe (twice is the same as once); C does not.
        a.handle.subscribe(topic.clone()).await.unwrap();
        b.handle.subscribe(topic.clone()).await.unwrap();
        b.handle.subscribe(topic.clone()).await.unwrap();

        let (got_topic, source, bytes, id) =
            publish_until_received(&a, &mut b, &topic, "to b").await;
        assert_eq!(got_topic, topic);
        assert_eq!(source, a.peer);
        assert!(bytes.starts_with(b"to b"));
        let debug = format!(
            "{:?}",
            NetEvent::TopicMessage {
                topic: got_topic,
                source,
                bytes,
                id,
            }
        );
        assert!(
            !debug.contains("community") && !debug.contains("to b"),
            "{debug}"
        );

        // Every node learns who is subscribed, C included.
        wait_topic_peers(&a, &topic, &[b.peer]).await;
        wait_topic_peers(&b, &topic, &[a.peer]).await;
        wait_topic_peers(&c, &topic, &[a.peer, b.peer]).await;

        // C, connected to both, never got anything.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_no_topic_message(&mut c, "C (not subscribed)");
        assert_eq!(c.handle.metrics().community_in, 0);
        assert!(b.handle.metrics().community_in >= 1);
        assert!(a.handle.metrics().community_out >= 1);
        assert_eq!(a.handle.metrics().gossip_out, 0);
        assert_eq!(b.handle.metrics().gossip_in, 0);

        // B leaves; C joins. Messages reach C, no longer B.
        b.handle.unsubscribe(topic.clone()).await.unwrap();
        b.handle.unsubscribe(topic.clone()).await.unwrap();
        // What arrived before is no concern.
        drain(&mut b);
        let b_in = b.handle.metrics().community_in;
        c.handle.subscribe(topic.clone()).await.unwrap();
        let (_, source, _, _) = publish_until_received(&a, &mut c, &topic, "to c").await;
        assert_eq!(source, a.peer);
        // And C's own messages reach A, not B.
        let (_, source, _, _) = publish_until_received(&c, &mut a, &topic, "from c").await;
        assert_eq!(source, c.peer);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_no_topic_message(&mut b, "B (after leaving)");
        assert_eq!(b.handle.metrics().community_in, b_in);
        wait_topic_peers(&a, &topic, &[c.peer]).await;
        wait_topic_peers(&b, &topic, &[a.peer, c.peer]).await;
        wait_topic_peers(&c, &topic, &[a.peer]).await;

        // Once C leaves too, A's publishes fail again (not fatal).
        c.handle.unsubscribe(topic.clone()).await.unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match a
                .handle
                .publish_to(topic.clone(), b"anyone?".to_vec())
                .await
            {
                Err(NetError::PublishFailed(_)) => break,
                Ok(()) => {}
                Err(e) => panic!("{e}"),
            }
            assert!(tokio::time::Instant::now() < deadline, "C never left");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wait_topic_peers(&a, &topic, &[]).await;
        // The descriptor topic still works alongside.
        assert!(a.handle.publish(b"descriptor".to_vec()).await.is_ok());
    })
    .await;
}

/// The next community message at `node` within `wait`, if any.
async fn next_topic_message(
    node: &mut Node,
    wait: Duration,
) -> Option<(Vec<u8>, chainmail_net::TopicMessageId)> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, node.events.recv()).await {
            Err(_) => return None,
            Ok(None) => panic!("driver stopped"),
            Ok(Some(NetEvent::TopicMessage { bytes, id, .. })) => return Some((bytes, id)),
            Ok(Some(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn community_messages_are_relayed_only_once_accepted() {
    init_tracing();
    within(async {
        let net = network("relay");
        let topic = format!("{}relay", ProtocolNames::new(&net).community_topic_prefix);
        // A line: A — B — C. C hears A only through B (A and C are no DHT
        // servers, so B tells neither about the other).
        let client = || {
            let mut c = config(&net, tcp());
            c.kad_server = false;
            c
        };
        let mut a = start(client()).await;
        let mut b = start(config(&net, tcp())).await;
        let mut c = start(client()).await;
        connect(&mut a, &mut b).await;
        connect(&mut b, &mut c).await;
        for n in [&a, &b, &c] {
            n.handle.subscribe(topic.clone()).await.unwrap();
        }
        wait_topic_peers(&b, &topic, &[a.peer, c.peer]).await;
        wait_topic_peers(&c, &topic, &[b.peer]).await;

        // Accepted at B: relayed to C (once B's mesh holds C).
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut i = 0u32;
        loop {
            assert!(tokio::time::Instant::now() < deadline, "never relayed");
            i += 1;
            let message = format!("good {i}").into_bytes();
            if a.handle
                .publish_to(topic.clone(), message.clone())
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let Some((bytes, id)) = next_topic_message(&mut b, Duration::from_secs(2)).await else {
                continue;
            };
            assert_eq!(bytes, message);
            b.handle.validate(id, Verdict::Accept).await.unwrap();
            if let Some((bytes, _)) = next_topic_message(&mut c, Duration::from_secs(1)).await {
                assert!(bytes.starts_with(b"good "), "{bytes:?}");
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        drain(&mut b);
        drain(&mut c);

        // Rejected at B, or not judged at all: C never sees them.
        for (tag, verdict) in [("rejected", Some(Verdict::Reject)), ("unjudged", None)] {
            a.handle
                .publish_to(topic.clone(), tag.as_bytes().to_vec())
                .await
                .unwrap();
            let (bytes, id) = next_topic_message(&mut b, WAIT).await.expect("B got it");
            assert_eq!(bytes, tag.as_bytes());
            if let Some(v) = verdict {
                b.handle.validate(id, v).await.unwrap();
            }
            let got = next_topic_message(&mut c, Duration::from_secs(2)).await;
            let a_peers = a.handle.connected_peers().await.unwrap();
            assert!(!a_peers.contains(&c.peer), "A and C met");
            assert!(
                got.is_none(),
                "{tag} message relayed: {got:?} (a {}, b {}, c {})",
                a.peer,
                b.peer,
                c.peer
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn community_topic_counts_are_capped() {
    init_tracing();
    within(async {
        let net = network("topic-caps");
        let prefix = ProtocolNames::new(&net).community_topic_prefix;
        let t = |n: u32| format!("{prefix}t{n}");

        // Locally: at most 2 topics at once.
        let mut a_config = config(&net, tcp());
        a_config.limits.max_community_topics = 2;
        let a = start(a_config).await;
        a.handle.subscribe(t(1)).await.unwrap();
        a.handle.subscribe(t(2)).await.unwrap();
        a.handle.subscribe(t(2)).await.unwrap();
        assert_eq!(
            a.handle.subscribe(t(3)).await,
            Err(NetError::TooManyTopics { max: 2 })
        );
        a.handle.unsubscribe(t(2)).await.unwrap();
        a.handle.subscribe(t(3)).await.unwrap();
        a.handle.unsubscribe(t(1)).await.unwrap();
        a.handle.unsubscribe(t(3)).await.unwrap();

        // Per remote peer: V remembers at most 2 community topics of P.
        let mut v_config = config(&net, tcp());
        v_config.limits.max_community_topics_per_peer = 2;
        let mut v = start(v_config).await;
        let mut p = start(config(&net, tcp())).await;
        connect(&mut v, &mut p).await;
        // Subscriptions reach V one by one, in this order: t3 would be a
        // third topic and is ignored; t4, after t1 is gone, is a second.
        for n in [1, 2, 3] {
            p.handle.subscribe(t(n)).await.unwrap();
        }
        p.handle.unsubscribe(t(1)).await.unwrap();
        p.handle.subscribe(t(4)).await.unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while v.handle.topic_peers(t(4)).await.unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "V never saw t4");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(v.handle.topic_peers(t(4)).await.unwrap(), vec![p.peer]);
        assert_eq!(v.handle.topic_peers(t(2)).await.unwrap(), vec![p.peer]);
        assert!(v.handle.topic_peers(t(1)).await.unwrap().is_empty());
        assert!(v.handle.topic_peers(t(3)).await.unwrap().is_empty());
        // Descriptors still cross between V and P.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match p.handle.publish(b"descriptor of p".to_vec()).await {
                Ok(()) => break,
                Err(NetError::PublishFailed(_)) => {}
                Err(e) => panic!("{e}"),
            }
            assert!(tokio::time::Instant::now() < deadline, "no descriptor peer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let bytes = wait_for(&mut v.events, |event| match event {
            NetEvent::GossipReceived { bytes, .. } => Some(bytes),
            _ => None,
        })
        .await;
        assert_eq!(bytes, b"descriptor of p");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_peer_ids_from_one_address_share_its_connections_and_budget() {
    // Peer ids cost nothing: twelve of them on 127.0.0.1 try to connect
    // and flood, each within its own per-peer limit. The victim counts
    // 127.0.0.1 as one source (loopback is limited here on purpose): four
    // connections, 300 frames/s between them. An honest peer on ::1 (a
    // source of its own) is served meanwhile.
    init_tracing();
    within(async {
        let net = network("sources");
        let mut v_config = config(
            &net,
            vec![
                "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
                "/ip6/::1/tcp/0".parse().unwrap(),
            ],
        );
        v_config.limits.limit_loopback = true;
        v_config.limits.max_connections_per_source = 4;
        v_config.limits.source_packet_rate = RateLimit {
            frames_per_second: 300,
            burst: 300,
        };
        let (handle, mut events) = Net::spawn(v_config).expect("driver starts");
        let v_peer = handle.local_peer_id();
        let mut v4 = None;
        let mut v6 = None;
        while v4.is_none() || v6.is_none() {
            let addr = wait_for(&mut events, |event| match event {
                NetEvent::ListeningOn { addr } => Some(addr),
                _ => None,
            })
            .await;
            if addr.to_string().starts_with("/ip4/") {
                v4 = Some(addr.with(Protocol::P2p(v_peer)));
            } else {
                v6 = Some(addr.with(Protocol::P2p(v_peer)));
            }
        }
        let (v4, v6) = (v4.unwrap(), v6.unwrap());
        let mut victim = Node {
            handle,
            events,
            peer: v_peer,
            addr: v4.clone(),
        };

        let mut attackers = Vec::new();
        for _ in 0..12 {
            let (h, e) = Net::spawn(config(&net, tcp())).unwrap();
            let _ = h.dial(v4.clone()).await;
            attackers.push((h, e));
        }
        let (good, _good_events) = Net::spawn(config(
            &net,
            vec!["/ip6/::1/tcp/0".parse().unwrap()],
        ))
        .unwrap();
        let good_peer = good.local_peer_id();
        good.dial(v6).await.unwrap();
        wait_connected(&mut victim, good_peer).await;
        let handle = victim.handle.clone();
        eventually("eight attackers refused", || {
            handle.metrics().connections_refused_per_source >= 8
        })
        .await;

        // Every attacker that got in sends 400 frames at once: within its
        // own limit (1000/s, burst 1000), far over the source's.
        let mut connected: Vec<NetHandle> = Vec::new();
        for (h, _) in &attackers {
            if h.connected_peers().await.unwrap().contains(&v_peer) {
                connected.push(h.clone());
            }
        }
        assert!(!connected.is_empty() && connected.len() <= 4, "{}", connected.len());
        let flood = tokio::spawn(async move {
            for h in connected {
                for i in 0..400 {
                    let _ = h.send_packet(v_peer, frame(9, i)).await;
                }
            }
        });
        // The honest peer sends 100 frames, 10 ms apart.
        for i in 0..100 {
            good.send_packet(v_peer, frame(4, i)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        flood.await.unwrap();
        let got = receive_frames(&mut victim.events, good_peer, 100).await;
        assert!(got.iter().all(|f| frame_index_ok(f)));
        let handle = victim.handle.clone();
        eventually("the flood counted against its source", || {
            handle.metrics().frames_dropped.source_limited > 0
        })
        .await;
        let m = victim.handle.metrics();
        eprintln!(
            "sources: {} connections refused; {} flood frames over the source's budget; honest 100 of 100",
            m.connections_refused_per_source, m.frames_dropped.source_limited
        );
        // At most the source's burst and rate got through from 127.0.0.1.
        let flood_in = m.frames_in - 100;
        assert!(flood_in <= 300 + 300 * 5, "{flood_in}");
    })
    .await;
}
