//! The state a chain builds — roster, roles, bans, key epoch — and the
//! rights rules every record is judged by (the table in the crate README).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::ChainError;
use crate::codec::Writer;
use crate::crypto::{Hash, MemberKeys, hash};
use crate::types::{Body, Genesis, MemberId, Policy, Record, RecordId, Role};

/// One member as the chain knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Its keys.
    pub keys: MemberKeys,
    /// Its role.
    pub role: Role,
    /// Its name in the community.
    pub name: String,
}

/// The state after a block. Cheap to clone: the roster and sets are shared
/// until a block changes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    members: Arc<BTreeMap<MemberId, MemberInfo>>,
    banned: Arc<BTreeSet<MemberId>>,
    redacted: Arc<BTreeSet<RecordId>>,
    /// The key epoch (0 at genesis, one more per rotation).
    pub epoch: u32,
    /// The record that made the current key (the community id for the
    /// creator's first key).
    pub key_id: Hash,
    /// The genesis policy.
    pub policy: Policy,
}

fn refused(what: &'static str, reason: &'static str) -> ChainError {
    ChainError::Refused { what, reason }
}

impl State {
    /// The state right after genesis: the creator is the only member and
    /// the owner.
    pub fn genesis(genesis: &Genesis) -> State {
        let mut members = BTreeMap::new();
        members.insert(
            genesis.creator.sign,
            MemberInfo {
                keys: genesis.creator,
                role: Role::Owner,
                name: genesis.creator_name.clone(),
            },
        );
        State {
            members: Arc::new(members),
            banned: Arc::default(),
            redacted: Arc::default(),
            epoch: 0,
            key_id: genesis.id(),
            policy: genesis.policy,
        }
    }

    /// The members, by id.
    pub fn members(&self) -> &BTreeMap<MemberId, MemberInfo> {
        &self.members
    }

    /// Whether `id` is banned.
    pub fn is_banned(&self, id: &MemberId) -> bool {
        self.banned.contains(id)
    }

    /// Whether a post was redacted.
    pub fn is_redacted(&self, record: &RecordId) -> bool {
        self.redacted.contains(record)
    }

    /// A member's role, if a member.
    pub fn role(&self, id: &MemberId) -> Option<Role> {
        self.members.get(id).map(|m| m.role)
    }

    /// Rank for comparisons: a role's number, -1 for non-members.
    fn rank(&self, id: &MemberId) -> i8 {
        self.role(id).map_or(-1, |r| r as i8)
    }

    /// Block producers: the owner and the admins, owner first, then admins
    /// by id.
    pub fn producers(&self) -> Vec<MemberId> {
        let mut out: Vec<(Role, MemberId)> = self
            .members
            .iter()
            .filter(|(_, m)| m.role >= Role::Admin)
            .map(|(id, m)| (m.role, *id))
            .collect();
        out.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        out.into_iter().map(|(_, id)| id).collect()
    }

    /// The state hash a block commits to: epoch, key id, roster (id, keys,
    /// role, name) and bans, in id order.
    pub fn hash(&self) -> Hash {
        let mut w = Writer::default();
        w.u32(self.epoch)
            .fixed(&self.key_id)
            .u32(self.members.len() as u32);
        for (id, m) in self.members.iter() {
            w.fixed(id)
                .fixed(&m.keys.kem)
                .u8(m.role.to_byte())
                .var(m.name.as_bytes());
        }
        w.u32(self.banned.len() as u32);
        for id in self.banned.iter() {
            w.fixed(id);
        }
        hash("chainmail state", &[&w.0])
    }

    /// Judges `record` by the rights rules against this state. For a
    /// redaction, `redact_target` is the issuer of the post it names, if
    /// that post is in the chain before it.
    pub fn check(
        &self,
        record: &Record,
        redact_target: Option<MemberId>,
    ) -> Result<(), ChainError> {
        let issuer = self.rank(&record.issuer);
        if issuer < 0 {
            return Err(refused(record.body.kind(), "the issuer is not a member"));
        }
        let mod_rank = Role::Moderator as i8;
        match &record.body {
            Body::Add { member, .. } => {
                if issuer < mod_rank {
                    return Err(refused("add", "only moderators and above add members"));
                }
                if self.members.contains_key(&member.sign) {
                    return Err(refused("add", "already a member"));
                }
                if self.banned.contains(&member.sign) {
                    return Err(refused("add", "banned"));
                }
                if self.members.len() >= self.policy.max_members as usize {
                    return Err(refused("add", "the community is full"));
                }
            }
            Body::Remove { member } => {
                if issuer < mod_rank {
                    return Err(refused("remove", "only moderators and above remove"));
                }
                let target = self.rank(member);
                if target < 0 {
                    return Err(refused("remove", "not a member"));
                }
                if target >= issuer {
                    return Err(refused("remove", "only members of lower rank"));
                }
            }
            Body::Ban { member } => {
                if issuer < mod_rank {
                    return Err(refused("ban", "only moderators and above ban"));
                }
                if self.banned.contains(member) {
                    return Err(refused("ban", "already banned"));
                }
                if *member == record.issuer {
                    return Err(refused("ban", "cannot ban yourself"));
                }
                if self.rank(member) >= issuer {
                    return Err(refused("ban", "only members of lower rank"));
                }
            }
            Body::SetRole { member, role } => {
                let target = self.rank(member);
                if target < 0 {
                    return Err(refused("set_role", "not a member"));
                }
                if *role == Role::Owner {
                    return Err(refused("set_role", "there is one owner"));
                }
                if target >= issuer || (*role as i8) >= issuer {
                    return Err(refused("set_role", "roles change only below your own rank"));
                }
                if target == *role as i8 {
                    return Err(refused("set_role", "already has that role"));
                }
            }
            Body::Message { key_id, .. } => {
                if issuer < self.policy.post_rank as i8 {
                    return Err(refused("message", "the policy does not let this rank post"));
                }
                if *key_id != self.key_id {
                    return Err(refused("message", "encrypted under an old community key"));
                }
            }
            Body::Redact { record: target } => {
                let Some(author) = redact_target else {
                    return Err(refused("redact", "no such post before it"));
                };
                if self.redacted.contains(target) {
                    return Err(refused("redact", "already redacted"));
                }
                if author != record.issuer && (issuer < mod_rank || self.rank(&author) >= issuer) {
                    return Err(refused(
                        "redact",
                        "only your own posts, or as a moderator those of lower ranks",
                    ));
                }
            }
            Body::RotateKey { epoch, wraps, .. } => {
                if issuer < Role::Admin as i8 {
                    return Err(refused(
                        "rotate_key",
                        "only admins and the owner rotate keys",
                    ));
                }
                if *epoch != self.epoch.wrapping_add(1) {
                    return Err(refused("rotate_key", "not the next epoch"));
                }
                if wraps.len() != self.members.len()
                    || !wraps
                        .iter()
                        .zip(self.members.keys())
                        .all(|((member, _), id)| member == id)
                {
                    return Err(refused(
                        "rotate_key",
                        "must wrap the key for exactly the members, in id order",
                    ));
                }
            }
            Body::Leave => {
                if issuer == Role::Owner as i8 {
                    return Err(refused("leave", "the owner cannot leave"));
                }
            }
        }
        Ok(())
    }

    /// Applies a record that [`State::check`] accepted.
    pub fn apply(&mut self, record: &Record) {
        match &record.body {
            Body::Add { member, name } => {
                Arc::make_mut(&mut self.members).insert(
                    member.sign,
                    MemberInfo {
                        keys: *member,
                        role: Role::Member,
                        name: name.clone(),
                    },
                );
            }
            Body::Remove { member } => {
                Arc::make_mut(&mut self.members).remove(member);
            }
            Body::Ban { member } => {
                Arc::make_mut(&mut self.members).remove(member);
                Arc::make_mut(&mut self.banned).insert(*member);
            }
            Body::SetRole { member, role } => {
                if let Some(m) = Arc::make_mut(&mut self.members).get_mut(member) {
                    m.role = *role;
                }
            }
            Body::Message { .. } => {}
            Body::Redact { record } => {
                Arc::make_mut(&mut self.redacted).insert(*record);
            }
            Body::RotateKey { epoch, .. } => {
                self.epoch = *epoch;
                self.key_id = record.id();
            }
            Body::Leave => {
                Arc::make_mut(&mut self.members).remove(&record.issuer);
            }
        }
    }
}
