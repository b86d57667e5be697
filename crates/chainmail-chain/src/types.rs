//! The wire formats: genesis, records and blocks (canonical encoding, see
//! the crate README for the byte layouts).

use rand_core::CryptoRng;

use crate::codec::{Reader, Writer};
use crate::crypto::{Hash, MemberKeys, MemberSecret, WRAP_LEN, hash, sha512_256, verify};
use crate::{ChainError, limits};

/// A member id: the member's Ed25519 public key.
pub type MemberId = [u8; 32];
/// A record id: SHA-512/256 over the record's unsigned encoding.
pub type RecordId = Hash;
/// A block id: SHA-512/256 over the block's unsigned encoding. The
/// genesis block's id is the community id.
pub type BlockId = Hash;

/// Ranks, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads and posts (if the policy allows).
    Member = 0,
    /// Adds, removes, bans and redacts members.
    Moderator = 1,
    /// Also produces blocks, rotates keys and names moderators.
    Admin = 2,
    /// The creator: names admins, cannot be removed.
    Owner = 3,
}

impl Role {
    /// The byte on the wire.
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// The role of a byte.
    pub fn from_byte(b: u8) -> Option<Role> {
        Some(match b {
            0 => Role::Member,
            1 => Role::Moderator,
            2 => Role::Admin,
            3 => Role::Owner,
            _ => return None,
        })
    }

    /// Lower-case name (`member`, `moderator`, `admin`, `owner`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Moderator => "moderator",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// The next rank up (promotion), if any below owner.
    pub fn up(self) -> Option<Role> {
        match self {
            Role::Member => Some(Role::Moderator),
            Role::Moderator => Some(Role::Admin),
            _ => None,
        }
    }

    /// The next rank down (demotion), if any.
    pub fn down(self) -> Option<Role> {
        match self {
            Role::Admin => Some(Role::Moderator),
            Role::Moderator => Some(Role::Member),
            _ => None,
        }
    }
}

/// What the creator fixes at genesis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The lowest rank that may post messages.
    pub post_rank: Role,
    /// The most members at once (at most [`limits::MAX_MEMBERS`]).
    pub max_members: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            post_rank: Role::Member,
            max_members: 256,
        }
    }
}

/// Format version of genesis blocks this crate writes and reads.
pub const GENESIS_VERSION: u16 = 1;

/// The root of a community.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Genesis {
    /// Format version ([`GENESIS_VERSION`]).
    pub version: u16,
    /// Random: two communities with the same name and creator differ.
    pub salt: [u8; 32],
    /// The creator's keys; the creator is the owner.
    pub creator: MemberKeys,
    /// The creator's name in the community.
    pub creator_name: String,
    /// The community's name.
    pub name: String,
    /// Its policy.
    pub policy: Policy,
    /// Creation time, ms since the Unix epoch.
    pub created: u64,
    /// The creator's signature over the community id.
    pub signature: [u8; 64],
}

const GENESIS_MAGIC: &[u8; 4] = b"CMG\x01";
const SIG_GENESIS: &str = "chainmail genesis\0";
const SIG_RECORD: &str = "chainmail record\0";
const SIG_BLOCK: &str = "chainmail block\0";

fn check_name(what: &'static str, name: &str) -> Result<(), ChainError> {
    if name.is_empty() || name.len() > limits::MAX_NAME || name.chars().any(char::is_control) {
        return Err(ChainError::Invalid {
            what,
            reason: "must be 1 to 64 bytes of printable text",
        });
    }
    Ok(())
}

impl Genesis {
    /// A new community created by `creator`.
    pub fn create<R: CryptoRng + ?Sized>(
        rng: &mut R,
        creator: &MemberSecret,
        creator_name: &str,
        name: &str,
        policy: Policy,
        now_ms: u64,
    ) -> Result<Genesis, ChainError> {
        check_name("community name", name)?;
        check_name("member name", creator_name)?;
        if policy.max_members < 2 || policy.max_members > limits::MAX_MEMBERS {
            return Err(ChainError::Invalid {
                what: "policy",
                reason: "max_members must be between 2 and 512",
            });
        }
        let mut salt = [0u8; 32];
        rng.fill_bytes(&mut salt);
        let mut g = Genesis {
            version: GENESIS_VERSION,
            salt,
            creator: creator.public(),
            creator_name: creator_name.to_owned(),
            name: name.to_owned(),
            policy,
            created: now_ms,
            signature: [0; 64],
        };
        g.signature = creator.sign(SIG_GENESIS, &g.id());
        Ok(g)
    }

    /// The canonical genesis bytes (everything but the signature).
    pub fn canonical(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.fixed(GENESIS_MAGIC)
            .u16(self.version)
            .fixed(&self.salt)
            .fixed(&self.creator.sign)
            .fixed(&self.creator.kem)
            .var(self.creator_name.as_bytes())
            .var(self.name.as_bytes())
            .u8(self.policy.post_rank.to_byte())
            .u32(self.policy.max_members)
            .u64(self.created);
        w.finish()
    }

    /// The community id: SHA-512/256 of the canonical genesis bytes.
    pub fn id(&self) -> Hash {
        sha512_256(&self.canonical())
    }

    /// The canonical bytes followed by the signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.canonical();
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes and checks a genesis block.
    pub fn decode(bytes: &[u8]) -> Result<Genesis, ChainError> {
        let mut r = Reader::new(bytes, "genesis");
        if &r.array::<4>()? != GENESIS_MAGIC {
            return Err(ChainError::Malformed {
                what: "genesis",
                reason: "not a genesis block",
            });
        }
        let version = r.u16()?;
        if version != GENESIS_VERSION {
            return Err(ChainError::Malformed {
                what: "genesis",
                reason: "unknown version",
            });
        }
        let g = Genesis {
            version,
            salt: r.array()?,
            creator: MemberKeys {
                sign: r.array()?,
                kem: r.array()?,
            },
            creator_name: r.string(limits::MAX_NAME)?,
            name: r.string(limits::MAX_NAME)?,
            policy: Policy {
                post_rank: Role::from_byte(r.u8()?).ok_or(ChainError::Malformed {
                    what: "genesis",
                    reason: "unknown role",
                })?,
                max_members: r.u32()?,
            },
            created: r.u64()?,
            signature: r.array()?,
        };
        r.finish()?;
        check_name("community name", &g.name)?;
        check_name("member name", &g.creator_name)?;
        if g.policy.max_members < 2 || g.policy.max_members > limits::MAX_MEMBERS {
            return Err(ChainError::Invalid {
                what: "policy",
                reason: "max_members must be between 2 and 512",
            });
        }
        verify(&g.creator.sign, SIG_GENESIS, &g.id(), &g.signature)?;
        Ok(g)
    }
}

/// What a record does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Adds a member (as [`Role::Member`]).
    Add {
        /// The new member's keys.
        member: MemberKeys,
        /// Its name in the community.
        name: String,
    },
    /// Removes a member.
    Remove {
        /// Whom.
        member: MemberId,
    },
    /// Removes a member (if present) and keeps it from being added again.
    Ban {
        /// Whom.
        member: MemberId,
    },
    /// Changes a member's role.
    SetRole {
        /// Whose.
        member: MemberId,
        /// The new role.
        role: Role,
    },
    /// A post, encrypted under the community key named by `key_id`.
    Message {
        /// The key rotation (or genesis) that made the key.
        key_id: Hash,
        /// XChaCha20 nonce.
        nonce: [u8; 24],
        /// Ciphertext and tag.
        sealed: Vec<u8>,
    },
    /// Hides a post.
    Redact {
        /// The post's record id.
        record: RecordId,
    },
    /// A new community key, wrapped for every member.
    RotateKey {
        /// The new epoch number (the old one plus one).
        epoch: u32,
        /// Ephemeral X25519 public key of the wraps.
        ephemeral: [u8; 32],
        /// One wrap per member, sorted by member id.
        wraps: Vec<(MemberId, [u8; WRAP_LEN])>,
    },
    /// The issuer leaves.
    Leave,
}

impl Body {
    fn tag(&self) -> u8 {
        match self {
            Body::Add { .. } => 1,
            Body::Remove { .. } => 2,
            Body::Ban { .. } => 3,
            Body::SetRole { .. } => 4,
            Body::Message { .. } => 5,
            Body::Redact { .. } => 6,
            Body::RotateKey { .. } => 7,
            Body::Leave => 8,
        }
    }

    /// A short name of the kind (`add`, `remove`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Add { .. } => "add",
            Body::Remove { .. } => "remove",
            Body::Ban { .. } => "ban",
            Body::SetRole { .. } => "set_role",
            Body::Message { .. } => "message",
            Body::Redact { .. } => "redact",
            Body::RotateKey { .. } => "rotate_key",
            Body::Leave => "leave",
        }
    }

    /// Whether it changes who is a member.
    pub fn changes_roster(&self) -> bool {
        matches!(
            self,
            Body::Add { .. } | Body::Remove { .. } | Body::Ban { .. } | Body::Leave
        )
    }
}

/// A signed action of one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The community it belongs to (a record never counts elsewhere).
    pub community: Hash,
    /// Who signed it.
    pub issuer: MemberId,
    /// A block the issuer had seen: the record is valid only in blocks that
    /// descend from it within [`limits::ANCHOR_WINDOW`] heights.
    pub anchor: BlockId,
    /// When it was made, ms since the Unix epoch.
    pub timestamp: u64,
    /// What it does.
    pub body: Body,
    /// The issuer's signature over the id.
    pub signature: [u8; 64],
}

impl Record {
    /// A signed record.
    pub fn sign(
        issuer: &MemberSecret,
        community: Hash,
        anchor: BlockId,
        timestamp: u64,
        body: Body,
    ) -> Record {
        let mut r = Record {
            community,
            issuer: issuer.id(),
            anchor,
            timestamp,
            body,
            signature: [0; 64],
        };
        r.signature = issuer.sign(SIG_RECORD, &r.id());
        r
    }

    fn write_unsigned(&self, w: &mut Writer) {
        w.fixed(&self.community)
            .fixed(&self.issuer)
            .fixed(&self.anchor)
            .u64(self.timestamp)
            .u8(self.body.tag());
        match &self.body {
            Body::Add { member, name } => {
                w.fixed(&member.sign)
                    .fixed(&member.kem)
                    .var(name.as_bytes());
            }
            Body::Remove { member } | Body::Ban { member } => {
                w.fixed(member);
            }
            Body::SetRole { member, role } => {
                w.fixed(member).u8(role.to_byte());
            }
            Body::Message {
                key_id,
                nonce,
                sealed,
            } => {
                w.fixed(key_id).fixed(nonce).var(sealed);
            }
            Body::Redact { record } => {
                w.fixed(record);
            }
            Body::RotateKey {
                epoch,
                ephemeral,
                wraps,
            } => {
                w.u32(*epoch)
                    .fixed(ephemeral)
                    .u32(u32::try_from(wraps.len()).unwrap_or(u32::MAX));
                for (member, wrap) in wraps {
                    w.fixed(member).fixed(wrap);
                }
            }
            Body::Leave => {}
        }
    }

    /// The record id.
    pub fn id(&self) -> RecordId {
        let mut w = Writer::default();
        self.write_unsigned(&mut w);
        hash("chainmail record", &[&w.0])
    }

    /// Unsigned encoding followed by the signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        self.write_unsigned(&mut w);
        w.fixed(&self.signature);
        w.finish()
    }

    /// Decodes a record and checks its signature (not its rights: that
    /// needs a chain state).
    pub fn decode(bytes: &[u8]) -> Result<Record, ChainError> {
        if bytes.len() > limits::MAX_RECORD_BYTES {
            return Err(ChainError::TooLarge {
                what: "record",
                size: bytes.len(),
                max: limits::MAX_RECORD_BYTES,
            });
        }
        let mut r = Reader::new(bytes, "record");
        let community = r.array()?;
        let issuer = r.array()?;
        let anchor = r.array()?;
        let timestamp = r.u64()?;
        let bad_role = ChainError::Malformed {
            what: "record",
            reason: "unknown role",
        };
        let body = match r.u8()? {
            1 => Body::Add {
                member: MemberKeys {
                    sign: r.array()?,
                    kem: r.array()?,
                },
                name: r.string(limits::MAX_NAME)?,
            },
            2 => Body::Remove { member: r.array()? },
            3 => Body::Ban { member: r.array()? },
            4 => Body::SetRole {
                member: r.array()?,
                role: Role::from_byte(r.u8()?).ok_or(bad_role)?,
            },
            5 => Body::Message {
                key_id: r.array()?,
                nonce: r.array()?,
                sealed: r.var(limits::MAX_POST_BYTES + 16)?.to_vec(),
            },
            6 => Body::Redact { record: r.array()? },
            7 => {
                let epoch = r.u32()?;
                let ephemeral = r.array()?;
                let n = r.count(limits::MAX_MEMBERS as usize)?;
                let mut wraps = Vec::with_capacity(n);
                for _ in 0..n {
                    wraps.push((r.array()?, r.array()?));
                }
                Body::RotateKey {
                    epoch,
                    ephemeral,
                    wraps,
                }
            }
            8 => Body::Leave,
            _ => {
                return Err(ChainError::Malformed {
                    what: "record",
                    reason: "unknown kind",
                });
            }
        };
        let signature = r.array()?;
        r.finish()?;
        if let Body::Add { name, .. } = &body {
            check_name("member name", name)?;
        }
        let record = Record {
            community,
            issuer,
            anchor,
            timestamp,
            body,
            signature,
        };
        verify(&record.issuer, SIG_RECORD, &record.id(), &record.signature)?;
        Ok(record)
    }
}

/// A block of records, signed by its producer (an owner or admin).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The community.
    pub community: Hash,
    /// Height: the parent's plus one (genesis is 0).
    pub height: u64,
    /// The parent block's id (the community id at height 1).
    pub parent: BlockId,
    /// Who produced it.
    pub producer: MemberId,
    /// When, ms since the Unix epoch (not before the parent's).
    pub timestamp: u64,
    /// Hash of the state after the block (roster, roles, bans, key epoch).
    pub state_hash: Hash,
    /// The records, applied in order.
    pub records: Vec<Record>,
    /// The producer's signature over the id.
    pub signature: [u8; 64],
}

impl Block {
    fn unsigned(&self) -> Writer {
        let mut w = Writer::default();
        w.fixed(&self.community)
            .u64(self.height)
            .fixed(&self.parent)
            .fixed(&self.producer)
            .u64(self.timestamp)
            .fixed(&self.state_hash)
            .u32(u32::try_from(self.records.len()).unwrap_or(u32::MAX));
        for record in &self.records {
            w.var(&record.encode());
        }
        w
    }

    /// The block id.
    pub fn id(&self) -> BlockId {
        hash("chainmail block", &[&self.unsigned().0])
    }

    /// Sets the producer to `producer` and signs the block (call after
    /// every other field is final: the signature covers them all).
    pub fn sign(&mut self, producer: &MemberSecret) {
        self.producer = producer.id();
        self.signature = producer.sign(SIG_BLOCK, &self.id());
    }

    /// Unsigned encoding followed by the signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = self.unsigned();
        w.fixed(&self.signature);
        w.finish()
    }

    /// Decodes a block and checks its producer's signature and every
    /// record's signature and bounds (not their rights).
    pub fn decode(bytes: &[u8]) -> Result<Block, ChainError> {
        if bytes.len() > limits::MAX_BLOCK_BYTES {
            return Err(ChainError::TooLarge {
                what: "block",
                size: bytes.len(),
                max: limits::MAX_BLOCK_BYTES,
            });
        }
        let mut r = Reader::new(bytes, "block");
        let community = r.array()?;
        let height = r.u64()?;
        let parent = r.array()?;
        let producer = r.array()?;
        let timestamp = r.u64()?;
        let state_hash = r.array()?;
        let n = r.count(limits::MAX_RECORDS_PER_BLOCK)?;
        let mut records = Vec::with_capacity(n);
        for _ in 0..n {
            records.push(Record::decode(r.var(limits::MAX_RECORD_BYTES)?)?);
        }
        let signature = r.array()?;
        r.finish()?;
        if height == 0 {
            return Err(ChainError::Malformed {
                what: "block",
                reason: "height 0 is the genesis",
            });
        }
        let block = Block {
            community,
            height,
            parent,
            producer,
            timestamp,
            state_hash,
            records,
            signature,
        };
        verify(&block.producer, SIG_BLOCK, &block.id(), &block.signature)?;
        Ok(block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn genesis_round_trips_and_refuses_any_changed_byte() {
        let mut rng = StdRng::seed_from_u64(1);
        let me = MemberSecret::generate(&mut rng);
        let g = Genesis::create(&mut rng, &me, "ann", "garden", Policy::default(), 5).unwrap();
        let bytes = g.encode();
        assert_eq!(Genesis::decode(&bytes).unwrap(), g);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(Genesis::decode(&b).is_err(), "byte {i}");
        }
        assert!(Genesis::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Genesis::decode(&longer).is_err());
    }

    #[test]
    fn names_are_checked() {
        let mut rng = StdRng::seed_from_u64(1);
        let me = MemberSecret::generate(&mut rng);
        for bad in ["", "a\nb", &"x".repeat(65)] {
            assert!(Genesis::create(&mut rng, &me, "ann", bad, Policy::default(), 5).is_err());
            assert!(Genesis::create(&mut rng, &me, bad, "garden", Policy::default(), 5).is_err());
        }
        let policy = Policy {
            max_members: 513,
            ..Policy::default()
        };
        assert!(Genesis::create(&mut rng, &me, "ann", "garden", policy, 5).is_err());
    }
}
