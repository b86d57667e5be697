//! The directory: which nodes exist, and for each epoch, which mixes are
//! active in which layer. The epoch's directory is a deterministic function
//! of the set of valid descriptors, so every node that holds the same
//! descriptors computes the same one, without a directory authority.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chainmail_packet::{Epoch, Hop, HopKey, NodeId};
use rand::{Rng, RngExt};

use crate::{MixnetError, NodeDescriptor, Params, Time};

/// At most this many descriptors are kept (one per node).
pub const MAX_DESCRIPTORS: usize = 100_000;

/// The valid descriptors a node knows, newest per node.
#[derive(Debug, Default)]
pub struct DescriptorSet {
    network: [u8; 32],
    by_node: BTreeMap<NodeId, (NodeDescriptor, Arc<Vec<u8>>)>,
}

/// What [`DescriptorSet::insert`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Inserted {
    /// A node not seen before.
    New,
    /// A newer descriptor of a known node.
    Updated,
    /// Not newer than the one already held; ignored.
    Stale,
}

impl DescriptorSet {
    /// An empty set for the network with this hash.
    pub fn new(network: [u8; 32]) -> Self {
        DescriptorSet {
            network,
            by_node: BTreeMap::new(),
        }
    }

    /// Verifies and adds a signed descriptor (from gossip, the DHT or a
    /// peer). Keeps the newest descriptor per node.
    pub fn insert(&mut self, bytes: &[u8], now: Time) -> Result<Inserted, MixnetError> {
        let descriptor = NodeDescriptor::verify(bytes, &self.network, now)?;
        match self.by_node.get(&descriptor.node) {
            Some((held, _)) if held.issued_at >= descriptor.issued_at => {
                return Ok(Inserted::Stale);
            }
            Some(_) => {}
            None if self.by_node.len() >= MAX_DESCRIPTORS => {
                return Err(MixnetError::InvalidDescriptor("descriptor set is full"));
            }
            None => {}
        }
        let node = descriptor.node;
        let fresh = self
            .by_node
            .insert(node, (descriptor, Arc::new(bytes.to_vec())))
            .is_none();
        Ok(if fresh {
            Inserted::New
        } else {
            Inserted::Updated
        })
    }

    /// Drops expired descriptors; returns how many.
    pub fn prune(&mut self, now: Time) -> usize {
        let before = self.by_node.len();
        self.by_node.retain(|_, (d, _)| d.expires_at > now);
        before - self.by_node.len()
    }

    /// Number of descriptors held.
    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    /// Whether no descriptor is held.
    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }

    /// The descriptor of `node`.
    pub fn get(&self, node: &NodeId) -> Option<&NodeDescriptor> {
        self.by_node.get(node).map(|(d, _)| d)
    }

    /// Every descriptor with its signed bytes (for passing on to peers).
    pub fn signed(&self) -> impl Iterator<Item = (&NodeDescriptor, &Arc<Vec<u8>>)> {
        self.by_node.values().map(|(d, b)| (d, b))
    }

    /// The directory of `epoch` as of `now`: the nodes with a valid
    /// descriptor and a mix key for that epoch. Mixes are ordered by a hash of
    /// the epoch and their id, dealt round-robin into the layers, and each
    /// layer is capped; providers are all nodes with the provider role.
    pub fn epoch_directory(&self, epoch: Epoch, params: &Params, now: Time) -> EpochDirectory {
        let mut mixes = Vec::new();
        let mut providers = Vec::new();
        for (descriptor, _) in self.by_node.values() {
            if descriptor.expires_at <= now {
                continue;
            }
            let Some(key) = descriptor.mix_key(epoch) else {
                continue;
            };
            let Ok(key) = HopKey::new(key) else { continue };
            let entry = DirNode {
                id: descriptor.node,
                key,
                addresses: descriptor.addresses.clone(),
            };
            if descriptor.roles.provider {
                providers.push(entry.clone());
            }
            if descriptor.roles.mix {
                mixes.push((layer_rank(&self.network, epoch, &descriptor.node), entry));
            }
        }
        mixes.sort_by_key(|(rank, _)| *rank);
        let mut layers = vec![Vec::new(); params.layers];
        for (i, (_, entry)) in mixes.into_iter().enumerate() {
            let layer = &mut layers[i % params.layers];
            if layer.len() < params.layer_width_cap {
                layer.push(entry);
            }
        }
        EpochDirectory {
            epoch,
            layers,
            providers,
        }
    }
}

fn layer_rank(network: &[u8; 32], epoch: Epoch, node: &NodeId) -> [u8; 32] {
    *blake3::Hasher::new_derive_key("chainmail layer assignment v1")
        .update(network)
        .update(&epoch.0.to_be_bytes())
        .update(&node.0)
        .finalize()
        .as_bytes()
}

/// A node as listed in an epoch's directory.
#[derive(Clone, Debug)]
pub struct DirNode {
    /// The node.
    pub id: NodeId,
    /// Its mix key for the epoch.
    pub key: HopKey,
    /// Its addresses.
    pub addresses: Vec<String>,
}

/// The active mixes per layer and the providers of one epoch.
#[derive(Clone, Debug)]
pub struct EpochDirectory {
    /// The epoch.
    pub epoch: Epoch,
    /// Mixes of each layer, in layer order.
    pub layers: Vec<Vec<DirNode>>,
    /// Providers.
    pub providers: Vec<DirNode>,
}

impl EpochDirectory {
    /// Whether every layer has a mix and there is a provider: whether a route
    /// can be built at all.
    pub fn is_complete(&self) -> bool {
        !self.providers.is_empty() && self.layers.iter().all(|l| !l.is_empty())
    }

    /// The provider `id`, if listed.
    pub fn provider(&self, id: &NodeId) -> Option<&DirNode> {
        self.providers.iter().find(|p| p.id == *id)
    }

    /// A node of this epoch by id (provider or mix).
    pub fn node(&self, id: &NodeId) -> Option<&DirNode> {
        self.provider(id)
            .or_else(|| self.layers.iter().flatten().find(|n| n.id == *id))
    }

    /// A random provider.
    pub fn random_provider<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<&DirNode> {
        (!self.providers.is_empty())
            .then(|| &self.providers[rng.random_range(0..self.providers.len())])
    }

    /// One random mix per layer, in layer order.
    pub fn random_mixes<R: Rng + ?Sized>(&self, rng: &mut R) -> Result<Vec<&DirNode>, MixnetError> {
        self.random_mixes_avoiding(rng, &HashSet::new())
    }

    /// One random mix per layer, avoiding the nodes in `avoid` (known to be
    /// unreachable) unless a layer has no other.
    pub fn random_mixes_avoiding<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        avoid: &HashSet<NodeId>,
    ) -> Result<Vec<&DirNode>, MixnetError> {
        self.layers
            .iter()
            .enumerate()
            .map(|(i, layer)| {
                let live: Vec<&DirNode> = layer.iter().filter(|n| !avoid.contains(&n.id)).collect();
                let choice = if live.is_empty() {
                    layer.iter().collect()
                } else {
                    live
                };
                if choice.is_empty() {
                    Err(MixnetError::NoRoute(format!(
                        "layer {} of {} has no mix",
                        i + 1,
                        self.epoch
                    )))
                } else {
                    Ok(choice[rng.random_range(0..choice.len())])
                }
            })
            .collect()
    }

    /// A route `first → one mix per layer → last` with delays drawn from an
    /// exponential distribution of the given mean (the last hop does not
    /// delay: it stores or discards).
    pub fn route<'a, R: Rng + ?Sized>(
        &'a self,
        rng: &mut R,
        first: &'a DirNode,
        last: &'a DirNode,
        mean_delay_ms: f64,
    ) -> Result<Vec<Hop<'a>>, MixnetError> {
        self.route_avoiding(rng, first, last, mean_delay_ms, &HashSet::new())
    }

    /// As [`EpochDirectory::route`], with mixes in `avoid` left out where
    /// their layer has another.
    pub fn route_avoiding<'a, R: Rng + ?Sized>(
        &'a self,
        rng: &mut R,
        first: &'a DirNode,
        last: &'a DirNode,
        mean_delay_ms: f64,
        avoid: &HashSet<NodeId>,
    ) -> Result<Vec<Hop<'a>>, MixnetError> {
        let mut nodes = vec![first];
        nodes.extend(self.random_mixes_avoiding(rng, avoid)?);
        nodes.push(last);
        let n = nodes.len();
        Ok(nodes
            .into_iter()
            .enumerate()
            .map(|(i, node)| Hop {
                node: node.id,
                key: &node.key,
                delay_ms: if i + 1 == n {
                    0
                } else {
                    exponential_ms(rng, mean_delay_ms)
                },
            })
            .collect())
    }
}

/// A draw from the exponential distribution with the given mean, in whole
/// milliseconds, cut at [`MAX_DELAY_FACTOR`](crate::MAX_DELAY_FACTOR)
/// times the mean (what mixes accept).
pub fn exponential_ms<R: Rng + ?Sized>(rng: &mut R, mean_ms: f64) -> u32 {
    if mean_ms <= 0.0 {
        return 0;
    }
    let u: f64 = rng.random(); // [0, 1)
    let x = -(1.0 - u).ln() * mean_ms;
    x.min(mean_ms * crate::MAX_DELAY_FACTOR) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Roles, network_hash};
    use chainmail_packet::MixSecretKey;
    use ed25519_dalek::SigningKey;
    use rand::SeedableRng;

    fn descriptor(i: u8, epoch: Epoch, now: Time, roles: Roles) -> Vec<u8> {
        let key = SigningKey::from_bytes(&[i; 32]);
        let mix = MixSecretKey::from_bytes(epoch, [i.wrapping_add(100); 32]);
        NodeDescriptor {
            network: network_hash("dir"),
            node: NodeId(key.verifying_key().to_bytes()),
            addresses: vec![format!("/ip4/127.0.0.1/tcp/{}", 4000 + u32::from(i))],
            roles,
            mix_keys: vec![(epoch, mix.public())],
            version: "test".into(),
            issued_at: now,
            expires_at: Time(now.0 + 3_600_000),
        }
        .sign(&key)
        .unwrap()
    }

    #[test]
    fn directory_is_independent_of_insertion_order_and_capped() {
        let now = Time(10_000_000);
        let epoch = Epoch(3);
        let both = Roles {
            mix: true,
            provider: true,
        };
        let all: Vec<Vec<u8>> = (1..=40).map(|i| descriptor(i, epoch, now, both)).collect();
        let params = Params {
            layer_width_cap: 10,
            ..Params::default()
        };
        let mut a = DescriptorSet::new(network_hash("dir"));
        let mut b = DescriptorSet::new(network_hash("dir"));
        for d in &all {
            a.insert(d, now).unwrap();
        }
        for d in all.iter().rev() {
            b.insert(d, now).unwrap();
        }
        let (da, db) = (
            a.epoch_directory(epoch, &params, now),
            b.epoch_directory(epoch, &params, now),
        );
        let ids = |d: &EpochDirectory| -> Vec<Vec<NodeId>> {
            d.layers
                .iter()
                .map(|l| l.iter().map(|n| n.id).collect())
                .collect()
        };
        assert_eq!(ids(&da), ids(&db));
        assert!(
            da.layers.iter().all(|l| l.len() == 10),
            "{:?}",
            da.layers.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert_eq!(da.providers.len(), 40);
        // Another epoch has no keys here: empty.
        assert!(!a.epoch_directory(Epoch(4), &params, now).is_complete());
        // Re-inserting the same descriptor is stale.
        assert_eq!(a.insert(&all[0], now).unwrap(), Inserted::Stale);
    }

    #[test]
    fn routes_avoid_down_nodes_while_their_layer_has_another() {
        let now = Time(10_000_000);
        let epoch = Epoch(3);
        let both = Roles {
            mix: true,
            provider: true,
        };
        let mut set = DescriptorSet::new(network_hash("dir"));
        for i in 1..=6 {
            set.insert(&descriptor(i, epoch, now, both), now).unwrap();
        }
        let d = set.epoch_directory(epoch, &Params::default(), now);
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        // Avoid one mix of every layer: the other is always chosen.
        let avoid: HashSet<NodeId> = d.layers.iter().map(|l| l[0].id).collect();
        for _ in 0..100 {
            let mixes = d.random_mixes_avoiding(&mut rng, &avoid).unwrap();
            assert!(mixes.iter().all(|m| !avoid.contains(&m.id)));
        }
        // A layer whose every mix is down still gives a route.
        let all: HashSet<NodeId> = d.layers.iter().flatten().map(|n| n.id).collect();
        assert_eq!(d.random_mixes_avoiding(&mut rng, &all).unwrap().len(), 3);
    }

    #[test]
    fn exponential_delays_have_the_right_mean() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let n = 200_000;
        let mean = (0..n)
            .map(|_| f64::from(exponential_ms(&mut rng, 40.0)))
            .sum::<f64>()
            / n as f64;
        // Whole milliseconds round down by 0.5 ms on average.
        assert!((mean - 39.5).abs() < 0.5, "{mean}");
    }
}
