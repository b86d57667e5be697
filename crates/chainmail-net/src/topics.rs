//! Gossipsub topics: the descriptor topic and the community topics, which
//! of them the node accepts from peers, and how many.

use libp2p::gossipsub::{MaxCountSubscriptionFilter, TopicHash, TopicSubscriptionFilter};

use crate::{config::ProtocolNames, error::NetError};

/// Longest topic name, in bytes, including the community prefix. Longer
/// topics are refused locally with [`NetError::InvalidTopic`], and remote
/// subscriptions to them are ignored, so the topic names kept per peer stay
/// small.
pub const MAX_TOPIC_LEN: usize = 256;

/// Protobuf framing of one subscription in a gossipsub RPC (field tags,
/// lengths, the subscribe flag), rounded up generously.
const SUBSCRIPTION_OVERHEAD: usize = 16;

/// Admits the descriptor topic and every topic that starts with the
/// community prefix and is at most [`MAX_TOPIC_LEN`] bytes long. Applies to
/// the node's own subscriptions as well as to its peers'.
#[derive(Debug, Clone)]
pub(crate) struct TopicFilter {
    descriptor: TopicHash,
    community_prefix: String,
}

impl TopicSubscriptionFilter for TopicFilter {
    fn can_subscribe(&mut self, topic_hash: &TopicHash) -> bool {
        *topic_hash == self.descriptor || is_community_topic(&self.community_prefix, topic_hash)
    }
}

/// The filter gossipsub runs with: [`TopicFilter`], plus at most
/// `max_community_topics_per_peer` community topics (and the descriptor
/// topic) remembered per remote peer.
///
/// gossipsub's [`MaxCountSubscriptionFilter`] ignores a whole RPC that
/// would take a peer over the cap. A peer sends all its subscriptions in
/// one RPC when it connects, so a peer subscribed to more community topics
/// than the cap is not known to be subscribed to any topic, the descriptor
/// topic included: keep `max_community_topics` at most
/// `max_community_topics_per_peer` network-wide.
pub(crate) type SubscriptionFilter = MaxCountSubscriptionFilter<TopicFilter>;

/// Builds the [`SubscriptionFilter`] for a network.
pub(crate) fn subscription_filter(
    names: &ProtocolNames,
    max_community_topics_per_peer: usize,
) -> SubscriptionFilter {
    // The descriptor topic counts towards gossipsub's cap.
    let max_topics = max_community_topics_per_peer.saturating_add(1);
    MaxCountSubscriptionFilter {
        filter: TopicFilter {
            descriptor: TopicHash::from_raw(names.descriptor_topic.clone()),
            community_prefix: names.community_topic_prefix.clone(),
        },
        max_subscribed_topics: max_topics,
        // A peer within the cap announces all its topics in one RPC when
        // it connects, and one topic per RPC afterwards.
        max_subscriptions_per_request: max_topics,
    }
}

/// Size of the largest RPC a node sends to announce its subscriptions (the
/// one sent to a peer on connecting, with every topic), when subscribed to
/// `max_community_topics` community topics of the longest length plus the
/// descriptor topic. Gossipsub's maximum transmit size must allow it.
pub(crate) fn max_subscriptions_rpc_size(max_community_topics: usize) -> usize {
    max_community_topics
        .saturating_add(1)
        .saturating_mul(MAX_TOPIC_LEN + SUBSCRIPTION_OVERHEAD)
}

/// Whether `topic` is a community topic of the network whose community
/// prefix is `prefix`.
pub(crate) fn is_community_topic(prefix: &str, topic: &TopicHash) -> bool {
    check_community_topic(prefix, topic.as_str()).is_ok()
}

/// Checks that `topic` is a community topic: the community prefix
/// followed by a non-empty name, at most [`MAX_TOPIC_LEN`] bytes in all.
pub(crate) fn check_community_topic(prefix: &str, topic: &str) -> Result<(), NetError> {
    let reason = match topic.strip_prefix(prefix) {
        None => "it does not start with the community topic prefix",
        Some("") => "it has no name after the community topic prefix",
        Some(_) if topic.len() > MAX_TOPIC_LEN => "it is too long",
        Some(_) => return Ok(()),
    };
    Err(NetError::InvalidTopic {
        reason,
        prefix: prefix.to_owned(),
        max_len: MAX_TOPIC_LEN,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> ProtocolNames {
        ProtocolNames::new("net-1")
    }

    #[test]
    fn community_topics_are_checked() {
        let prefix = names().community_topic_prefix;
        assert_eq!(prefix, "chainmail/net-1/community/");
        assert_eq!(
            check_community_topic(&prefix, "chainmail/net-1/community/abc"),
            Ok(())
        );
        let longest = format!("{prefix}{}", "x".repeat(MAX_TOPIC_LEN - prefix.len()));
        assert_eq!(check_community_topic(&prefix, &longest), Ok(()));
        for bad in [
            "",
            "abc",
            "chainmail/net-1/community/",
            "chainmail/net-2/community/abc",
            "chainmail/net-1/descriptors/1",
            "/chainmail/net-1/community/abc",
            &format!("{longest}x"),
        ] {
            let err = check_community_topic(&prefix, bad).unwrap_err();
            assert!(matches!(err, NetError::InvalidTopic { .. }), "{bad:?}");
            assert!(err.to_string().contains(&prefix), "{err}");
        }
    }

    #[test]
    fn filter_admits_descriptor_and_community_topics_only() {
        let names = names();
        let mut filter = subscription_filter(&names, 64);
        assert_eq!(filter.max_subscribed_topics, 65);
        let mut can = |topic: &str| filter.can_subscribe(&TopicHash::from_raw(topic));
        assert!(can(&names.descriptor_topic));
        assert!(can("chainmail/net-1/community/abc"));
        assert!(!can("chainmail/net-1/community/"));
        assert!(!can("chainmail/net-2/community/abc"));
        assert!(!can("chainmail/net-2/descriptors/1"));
        assert!(!can("some/other/topic"));
        assert!(!can(&format!(
            "chainmail/net-1/community/{}",
            "x".repeat(MAX_TOPIC_LEN)
        )));
    }

    #[test]
    fn announcing_every_topic_fits_a_generous_bound() {
        assert_eq!(
            max_subscriptions_rpc_size(256),
            257 * (MAX_TOPIC_LEN + SUBSCRIPTION_OVERHEAD)
        );
        assert_eq!(max_subscriptions_rpc_size(usize::MAX), usize::MAX);
    }
}
