//! Messages around the chain: sync requests and responses between member
//! nodes, invites and join requests carried inside end-to-end sessions,
//! and the encrypted rendezvous record in the DHT.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use rand_core::CryptoRng;

use crate::codec::{Reader, Writer};
use crate::crypto::{Hash, MemberKeys, MemberSecret, hash, sha512_256, verify};
use crate::types::{BlockId, MemberId};
use crate::{ChainError, limits};

/// Where a member node can be reached (libp2p peer id bytes and
/// multiaddresses as text; the chain crate does not interpret them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEntry {
    /// Peer id bytes.
    pub peer: Vec<u8>,
    /// Addresses.
    pub addrs: Vec<String>,
    /// When the entry was made, ms since the Unix epoch.
    pub published: u64,
}

/// At most this many addresses per peer entry.
pub const MAX_ADDRS: usize = 4;
/// At most this many bytes per address (a relayed address names two peer
/// ids: `/ip4/…/tcp/…/p2p/<relay>/p2p-circuit/p2p/<node>` is about 150).
pub const MAX_ADDR_LEN: usize = 256;
/// At most this many entries in an invite or a rendezvous record.
pub const MAX_PEERS: usize = 16;

fn write_peers(w: &mut Writer, peers: &[PeerEntry]) {
    w.u32(peers.len().min(MAX_PEERS) as u32);
    for p in peers.iter().take(MAX_PEERS) {
        w.var(&p.peer).u64(p.published);
        w.u32(p.addrs.len().min(MAX_ADDRS) as u32);
        for a in p.addrs.iter().take(MAX_ADDRS) {
            w.var(a.as_bytes());
        }
    }
}

fn read_peers(r: &mut Reader<'_>) -> Result<Vec<PeerEntry>, ChainError> {
    let n = r.count(MAX_PEERS)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let peer = r.var(64)?.to_vec();
        let published = r.u64()?;
        let m = r.count(MAX_ADDRS)?;
        let mut addrs = Vec::with_capacity(m);
        for _ in 0..m {
            addrs.push(r.string(MAX_ADDR_LEN)?);
        }
        out.push(PeerEntry {
            peer,
            addrs,
            published,
        });
    }
    Ok(out)
}

/// Merges `new` into `entries`: one entry per peer (the newest), at most
/// [`MAX_PEERS`], newest first.
pub fn merge_peers(entries: &mut Vec<PeerEntry>, new: PeerEntry) {
    entries.retain(|e| e.peer != new.peer);
    entries.push(new);
    entries.sort_by_key(|e| std::cmp::Reverse(e.published));
    entries.truncate(MAX_PEERS);
}

/// The DHT key of a community's rendezvous record for one period:
/// `SHA-512/256("rv" ‖ community_id ‖ secret ‖ period)`. Without the
/// secret (which only members derive) nobody can compute it, and it shows
/// the DHT neither the id nor any member key.
pub fn rendezvous_key(community: &Hash, secret: &Hash, period: u64) -> Hash {
    let mut bytes = Vec::with_capacity(2 + 32 + 32 + 8);
    bytes.extend_from_slice(b"rv");
    bytes.extend_from_slice(community);
    bytes.extend_from_slice(secret);
    bytes.extend_from_slice(&period.to_be_bytes());
    sha512_256(&bytes)
}

/// The gossipsub topic suffix of a community's current epoch, derived from
/// the rendezvous secret (never the community id).
pub fn topic_suffix(secret: &Hash) -> String {
    hash("chainmail topic", &[secret])[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn rendezvous_cipher(secret: &Hash, period: u64) -> XChaCha20Poly1305 {
    let key = zeroize::Zeroizing::new(hash(
        "chainmail rendezvous seal",
        &[secret, &period.to_be_bytes()],
    ));
    XChaCha20Poly1305::new((&*key).into())
}

/// Encrypts peer entries for the rendezvous record: nonce (24) ‖
/// XChaCha20-Poly1305 ciphertext, under a key derived from the secret and
/// the period.
pub fn seal_peers<R: CryptoRng + ?Sized>(
    rng: &mut R,
    secret: &Hash,
    period: u64,
    peers: &[PeerEntry],
) -> Vec<u8> {
    let mut w = Writer::default();
    write_peers(&mut w, peers);
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let sealed = rendezvous_cipher(secret, period)
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &w.0,
                aad: &period.to_be_bytes(),
            },
        )
        .unwrap_or_default();
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    out
}

/// Opens a rendezvous record.
pub fn open_peers(secret: &Hash, period: u64, bytes: &[u8]) -> Result<Vec<PeerEntry>, ChainError> {
    let bad = ChainError::Malformed {
        what: "rendezvous record",
        reason: "cannot be opened with this community's secret",
    };
    if bytes.len() < 24 + 16 || bytes.len() > 16 * 1024 {
        return Err(bad);
    }
    let (nonce, sealed) = bytes.split_at(24);
    let mut n = [0u8; 24];
    n.copy_from_slice(nonce);
    let plain = rendezvous_cipher(secret, period)
        .decrypt(
            &XNonce::from(n),
            Payload {
                msg: sealed,
                aad: &period.to_be_bytes(),
            },
        )
        .map_err(|_| bad)?;
    let mut r = Reader::new(&plain, "rendezvous record");
    let peers = read_peers(&mut r)?;
    r.finish()?;
    Ok(peers)
}

/// What a sync request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Want {
    /// Best-chain blocks after where this locator meets the responder's.
    After(Vec<BlockId>),
    /// These blocks (parents of orphans).
    Blocks(Vec<BlockId>),
}

/// A member asks a member node for blocks. Signed by the member's key;
/// the responder answers only members of its current state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncRequest {
    /// `H("chainmail sync" ‖ community_id)`: names the community to the
    /// responder without the id itself.
    pub tag: Hash,
    /// Who asks.
    pub member: MemberId,
    /// When, ms since the Unix epoch (stale requests are refused).
    pub timestamp: u64,
    /// What it wants.
    pub want: Want,
    /// The member's signature.
    pub signature: [u8; 64],
}

const SIG_SYNC: &str = "chainmail sync\0";
/// At most this many ids in a sync request.
pub const MAX_WANT: usize = 64;

/// The sync tag of a community.
pub fn sync_tag(community: &Hash) -> Hash {
    hash("chainmail sync", &[community])
}

impl SyncRequest {
    /// A signed request.
    pub fn new(me: &MemberSecret, community: &Hash, timestamp: u64, want: Want) -> SyncRequest {
        let mut req = SyncRequest {
            tag: sync_tag(community),
            member: me.id(),
            timestamp,
            want,
            signature: [0; 64],
        };
        req.signature = me.sign(SIG_SYNC, &req.digest());
        req
    }

    fn unsigned(&self) -> Writer {
        let mut w = Writer::default();
        w.fixed(&self.tag).fixed(&self.member).u64(self.timestamp);
        let (kind, ids) = match &self.want {
            Want::After(ids) => (1, ids),
            Want::Blocks(ids) => (2, ids),
        };
        w.u8(kind).u32(ids.len().min(MAX_WANT) as u32);
        for id in ids.iter().take(MAX_WANT) {
            w.fixed(id);
        }
        w
    }

    fn digest(&self) -> Hash {
        hash("chainmail sync request", &[&self.unsigned().0])
    }

    /// Encoded.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = self.unsigned();
        w.fixed(&self.signature);
        w.finish()
    }

    /// Decodes and checks the signature (not membership).
    pub fn decode(bytes: &[u8]) -> Result<SyncRequest, ChainError> {
        let mut r = Reader::new(bytes, "sync request");
        let tag = r.array()?;
        let member = r.array()?;
        let timestamp = r.u64()?;
        let kind = r.u8()?;
        let n = r.count(MAX_WANT)?;
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(r.array()?);
        }
        let want = match kind {
            1 => Want::After(ids),
            2 => Want::Blocks(ids),
            _ => {
                return Err(ChainError::Malformed {
                    what: "sync request",
                    reason: "unknown kind",
                });
            }
        };
        let signature = r.array()?;
        r.finish()?;
        let req = SyncRequest {
            tag,
            member,
            timestamp,
            want,
            signature,
        };
        verify(&req.member, SIG_SYNC, &req.digest(), &req.signature)?;
        Ok(req)
    }
}

/// The answer to a sync request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncResponse {
    /// Blocks, parents first (empty: nothing newer).
    Blocks(Vec<Vec<u8>>),
    /// The requester is not a member at the responder's tip (yet).
    NotMember,
    /// The responder does not know this community.
    Unknown,
    /// The request's time is too far from the responder's clock.
    Stale,
}

impl SyncResponse {
    /// Encoded.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            SyncResponse::Blocks(blocks) => {
                w.u8(0).u32(blocks.len() as u32);
                for b in blocks {
                    w.var(b);
                }
            }
            SyncResponse::NotMember => {
                w.u8(1);
            }
            SyncResponse::Unknown => {
                w.u8(2);
            }
            SyncResponse::Stale => {
                w.u8(3);
            }
        }
        w.finish()
    }

    /// Decodes (the blocks are checked when inserted).
    pub fn decode(bytes: &[u8]) -> Result<SyncResponse, ChainError> {
        let mut r = Reader::new(bytes, "sync response");
        let out = match r.u8()? {
            0 => {
                let n = r.count(limits::MAX_SYNC_BLOCKS)?;
                let mut blocks = Vec::with_capacity(n);
                for _ in 0..n {
                    blocks.push(r.var(limits::MAX_BLOCK_BYTES)?.to_vec());
                }
                SyncResponse::Blocks(blocks)
            }
            1 => SyncResponse::NotMember,
            2 => SyncResponse::Unknown,
            3 => SyncResponse::Stale,
            _ => {
                return Err(ChainError::Malformed {
                    what: "sync response",
                    reason: "unknown kind",
                });
            }
        };
        r.finish()?;
        Ok(out)
    }
}

/// Community messages carried inside an end-to-end session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Letter {
    /// An invitation: the genesis, where member nodes are, and a token the
    /// join request must return.
    Invite {
        /// The encoded genesis (its hash is the community id).
        genesis: Vec<u8>,
        /// Member nodes to sync from.
        peers: Vec<PeerEntry>,
        /// Ties the join request to this invite.
        token: [u8; 16],
    },
    /// The invitee's answer: the keys it will use in the community.
    Join {
        /// The community id.
        community: Hash,
        /// The invite's token.
        token: [u8; 16],
        /// The new member's public keys.
        member: MemberKeys,
        /// Its name in the community.
        name: String,
    },
}

impl Letter {
    /// Encoded.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Letter::Invite {
                genesis,
                peers,
                token,
            } => {
                w.u8(1).var(genesis).fixed(token);
                write_peers(&mut w, peers);
            }
            Letter::Join {
                community,
                token,
                member,
                name,
            } => {
                w.u8(2)
                    .fixed(community)
                    .fixed(token)
                    .fixed(&member.sign)
                    .fixed(&member.kem)
                    .var(name.as_bytes());
            }
        }
        w.finish()
    }

    /// Decodes.
    pub fn decode(bytes: &[u8]) -> Result<Letter, ChainError> {
        let mut r = Reader::new(bytes, "community letter");
        let out = match r.u8()? {
            1 => Letter::Invite {
                genesis: r.var(1024)?.to_vec(),
                token: r.array()?,
                peers: read_peers(&mut r)?,
            },
            2 => Letter::Join {
                community: r.array()?,
                token: r.array()?,
                member: MemberKeys {
                    sign: r.array()?,
                    kem: r.array()?,
                },
                name: r.string(limits::MAX_NAME)?,
            },
            _ => {
                return Err(ChainError::Malformed {
                    what: "community letter",
                    reason: "unknown kind",
                });
            }
        };
        r.finish()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn entry(n: u8, t: u64) -> PeerEntry {
        PeerEntry {
            peer: vec![n; 38],
            addrs: vec![format!("/ip4/127.0.0.1/tcp/{n}")],
            published: t,
        }
    }

    #[test]
    fn rendezvous_records_open_only_with_the_secret_and_period() {
        let mut rng = StdRng::seed_from_u64(4);
        let peers = vec![entry(1, 5), entry(2, 6)];
        let sealed = seal_peers(&mut rng, &[7; 32], 9, &peers);
        assert_eq!(open_peers(&[7; 32], 9, &sealed).unwrap(), peers);
        assert!(open_peers(&[8; 32], 9, &sealed).is_err());
        assert!(open_peers(&[7; 32], 10, &sealed).is_err());
        for i in 0..sealed.len() {
            let mut b = sealed.clone();
            b[i] ^= 1;
            assert!(open_peers(&[7; 32], 9, &b).is_err());
        }
        let community = [1; 32];
        assert_ne!(
            rendezvous_key(&community, &[7; 32], 9),
            rendezvous_key(&community, &[7; 32], 10)
        );
        assert_ne!(
            rendezvous_key(&community, &[7; 32], 9),
            rendezvous_key(&community, &[8; 32], 9)
        );
    }

    #[test]
    fn merging_keeps_the_newest_entry_per_peer_and_is_bounded() {
        let mut all = Vec::new();
        for i in 0..40u8 {
            merge_peers(&mut all, entry(i % 20, u64::from(i)));
        }
        assert_eq!(all.len(), MAX_PEERS);
        assert_eq!(all[0].published, 39);
        assert!(all.windows(2).all(|w| w[0].published >= w[1].published));
    }

    #[test]
    fn sync_requests_are_signed() {
        let mut rng = StdRng::seed_from_u64(5);
        let me = MemberSecret::generate(&mut rng);
        let req = SyncRequest::new(&me, &[3; 32], 77, Want::After(vec![[1; 32], [2; 32]]));
        let bytes = req.encode();
        assert_eq!(SyncRequest::decode(&bytes).unwrap(), req);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(SyncRequest::decode(&b).is_err(), "byte {i}");
        }
        for resp in [
            SyncResponse::Blocks(vec![vec![1, 2], vec![]]),
            SyncResponse::NotMember,
            SyncResponse::Unknown,
            SyncResponse::Stale,
        ] {
            assert_eq!(SyncResponse::decode(&resp.encode()).unwrap(), resp);
        }
    }

    #[test]
    fn letters_round_trip() {
        let letters = [
            Letter::Invite {
                genesis: vec![9; 200],
                peers: vec![entry(1, 2)],
                token: [4; 16],
            },
            Letter::Join {
                community: [1; 32],
                token: [4; 16],
                member: MemberKeys {
                    sign: [2; 32],
                    kem: [3; 32],
                },
                name: "bob".into(),
            },
        ];
        for l in letters {
            let b = l.encode();
            assert_eq!(Letter::decode(&b).unwrap(), l);
            assert!(Letter::decode(&b[..b.len() - 1]).is_err());
        }
    }
}
