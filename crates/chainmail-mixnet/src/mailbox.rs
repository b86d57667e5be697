//! Where a provider keeps mailbox items. The node core talks to storage
//! through [`MailboxStore`]; the node binary implements it on redb
//! (`chainmail-store`), simulations and tests use [`MemoryMailboxes`].

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chainmail_packet::MailboxId;

use crate::{MixnetError, Time};

/// Result of storing one item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Stored durably under this sequence number.
    Stored(u64),
    /// Refused: the mailbox is over its quota.
    OverQuota,
}

/// Per-mailbox limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Items.
    pub max_items: u64,
    /// Bytes.
    pub max_bytes: u64,
}

/// Durable mailbox storage for a provider.
pub trait MailboxStore {
    /// Stores `item` in `mailbox`. Must be durable when it returns `Stored`:
    /// the provider may then hand it out and the sender's retries stop.
    fn append(
        &mut self,
        mailbox: &MailboxId,
        item: &[u8],
        now: Time,
        quota: Quota,
    ) -> Result<Appended, MixnetError>;
    /// Items with a sequence number above `after`, ascending, at most `limit`.
    fn read(
        &mut self,
        mailbox: &MailboxId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, MixnetError>;
    /// Deletes items up to and including `through`.
    fn delete_through(&mut self, mailbox: &MailboxId, through: u64) -> Result<(), MixnetError>;
    /// Deletes items stored at least `ttl` ago; returns how many.
    fn expire(&mut self, now: Time, ttl: Duration) -> Result<usize, MixnetError>;
}

#[derive(Default, Debug)]
struct Mailbox {
    next_seq: u64,
    bytes: u64,
    items: BTreeMap<u64, (Time, Vec<u8>)>,
}

/// Mailboxes in memory (simulations, tests): the same semantics as the
/// durable store, without the durability.
#[derive(Default, Debug)]
pub struct MemoryMailboxes {
    boxes: HashMap<MailboxId, Mailbox>,
}

impl MemoryMailboxes {
    /// Empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Items held in `mailbox`.
    pub fn len(&self, mailbox: &MailboxId) -> usize {
        self.boxes.get(mailbox).map_or(0, |m| m.items.len())
    }
}

impl MailboxStore for MemoryMailboxes {
    fn append(
        &mut self,
        mailbox: &MailboxId,
        item: &[u8],
        now: Time,
        quota: Quota,
    ) -> Result<Appended, MixnetError> {
        let m = self.boxes.entry(*mailbox).or_default();
        if m.items.len() as u64 >= quota.max_items || m.bytes + item.len() as u64 > quota.max_bytes
        {
            return Ok(Appended::OverQuota);
        }
        m.next_seq += 1;
        m.bytes += item.len() as u64;
        m.items.insert(m.next_seq, (now, item.to_vec()));
        Ok(Appended::Stored(m.next_seq))
    }

    fn read(
        &mut self,
        mailbox: &MailboxId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, MixnetError> {
        Ok(self.boxes.get(mailbox).map_or_else(Vec::new, |m| {
            m.items
                .range(after.saturating_add(1)..)
                .take(limit)
                .map(|(s, (_, b))| (*s, b.clone()))
                .collect()
        }))
    }

    fn delete_through(&mut self, mailbox: &MailboxId, through: u64) -> Result<(), MixnetError> {
        if let Some(m) = self.boxes.get_mut(mailbox) {
            let keep = m.items.split_off(&through.saturating_add(1));
            let removed: u64 = m.items.values().map(|(_, b)| b.len() as u64).sum();
            m.bytes -= removed;
            m.items = keep;
        }
        Ok(())
    }

    fn expire(&mut self, now: Time, ttl: Duration) -> Result<usize, MixnetError> {
        let mut count = 0;
        for m in self.boxes.values_mut() {
            let before = m.items.len();
            let mut freed = 0;
            m.items.retain(|_, (at, b)| {
                let keep = *at + ttl > now;
                if !keep {
                    freed += b.len() as u64;
                }
                keep
            });
            m.bytes -= freed;
            count += before - m.items.len();
        }
        Ok(count)
    }
}
