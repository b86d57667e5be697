//! Shared test support: a deterministic RNG and a small set of mix nodes.

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;

use chainmail_packet::{Epoch, Hop, HopKey, MailboxId, MixSecretKey, NodeId};
use rand_core::{TryCryptoRng, TryRng};

/// A deterministic RNG: the BLAKE3 XOF of a seed. Test vectors depend on
/// exactly this stream, so it must never change.
pub struct XofRng(blake3::OutputReader);

impl XofRng {
    pub fn new(seed: &str) -> Self {
        let mut h = blake3::Hasher::new_derive_key("chainmail-packet test rng");
        h.update(seed.as_bytes());
        XofRng(h.finalize_xof())
    }
}

impl TryRng for XofRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.0.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.0.fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill(dst);
        Ok(())
    }
}

impl TryCryptoRng for XofRng {}

/// A mix node of the test network.
pub struct TestNode {
    pub id: NodeId,
    pub secret: MixSecretKey,
    pub hop_key: HopKey,
}

pub const EPOCH: Epoch = Epoch(20_250);

/// `count` nodes with keys derived from `seed`.
pub fn nodes(seed: &str, count: usize) -> Vec<TestNode> {
    let mut rng = XofRng::new(seed);
    (0..count)
        .map(|i| {
            let mut id = [0u8; 32];
            rng.0.fill(&mut id);
            let secret = MixSecretKey::generate(&mut rng, EPOCH);
            // Alternate the two sender-side code paths.
            let hop_key = if i % 2 == 0 {
                HopKey::new(secret.public()).unwrap()
            } else {
                HopKey::precomputed(secret.public()).unwrap()
            };
            TestNode {
                id: NodeId(id),
                secret,
                hop_key,
            }
        })
        .collect()
}

/// The route through `nodes`, with delays 10, 20, ... ms.
pub fn route(nodes: &[TestNode]) -> Vec<Hop<'_>> {
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| Hop {
            node: n.id,
            key: &n.hop_key,
            delay_ms: 10 * (i as u32 + 1),
        })
        .collect()
}

pub const MAILBOX: MailboxId = MailboxId([0x4d; 32]);
