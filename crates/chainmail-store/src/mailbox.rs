//! Mailboxes: durable appends under a quota, reads, deletion, expiry.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ops::Bound;

use redb::{ReadableTable, WriteTransaction};

use crate::error::StoreError;
use crate::store::{Result, Store};
use crate::tables::{
    COUNTERS, EXPIRE_BATCH, EXPIRY, ITEMS, META, META_TOTAL_BYTES, META_TOTAL_ITEMS,
};
use crate::types::{
    AppendOutcome, MailboxId, MailboxItem, MailboxStats, Quota, QuotaExceeded, StoreStats,
};
use crate::{MAX_APPEND_BATCH, MAX_ITEM_SIZE, MAX_READ_ITEMS};

/// Counters of one mailbox.
#[derive(Clone, Copy)]
struct Counters {
    items: u64,
    bytes: u64,
    next_seq: u64,
}

impl Counters {
    const NEW: Counters = Counters {
        items: 0,
        bytes: 0,
        next_seq: 1,
    };

    fn get(
        table: &impl ReadableTable<MailboxId, (u64, u64, u64)>,
        mailbox: &MailboxId,
    ) -> Result<Self> {
        Ok(match table.get(mailbox)? {
            Some(row) => {
                let (items, bytes, next_seq) = row.value();
                Counters {
                    items,
                    bytes,
                    next_seq,
                }
            }
            None => Counters::NEW,
        })
    }

    fn row(self) -> (u64, u64, u64) {
        (self.items, self.bytes, self.next_seq)
    }
}

/// Store-wide item and byte counts.
struct Totals {
    items: u64,
    bytes: u64,
}

impl Totals {
    fn get(meta: &impl ReadableTable<&'static str, u64>) -> Result<Self> {
        let read =
            |key: &str| -> Result<u64> { Ok(meta.get(key)?.map(|v| v.value()).unwrap_or(0)) };
        Ok(Totals {
            items: read(META_TOTAL_ITEMS)?,
            bytes: read(META_TOTAL_BYTES)?,
        })
    }

    fn put(&self, meta: &mut redb::Table<'_, &'static str, u64>) -> Result<()> {
        meta.insert(META_TOTAL_ITEMS, self.items)?;
        meta.insert(META_TOTAL_BYTES, self.bytes)?;
        Ok(())
    }
}

/// Removes items whose keys are given, with their expiry entries, and
/// updates the counters. Keys of items that are not there are skipped.
/// Returns how many were removed.
fn remove_items(
    txn: &WriteTransaction,
    keys: impl IntoIterator<Item = (MailboxId, u64)>,
) -> Result<usize> {
    let mut items = txn.open_table(ITEMS)?;
    let mut expiry = txn.open_table(EXPIRY)?;
    let mut counters = txn.open_table(COUNTERS)?;
    let mut meta = txn.open_table(META)?;
    let mut totals = Totals::get(&meta)?;
    let mut changed: HashMap<MailboxId, Counters> = HashMap::new();
    let mut removed = 0;
    for (mailbox, seq) in keys {
        let Some(value) = items.remove((mailbox, seq))? else {
            continue;
        };
        let (stored_at, bytes) = value.value();
        let size = bytes.len() as u64;
        drop(value);
        expiry.remove((stored_at, mailbox, seq))?;
        let c = match changed.entry(mailbox) {
            Entry::Occupied(c) => c.into_mut(),
            Entry::Vacant(c) => c.insert(Counters::get(&counters, &mailbox)?),
        };
        c.items = c.items.saturating_sub(1);
        c.bytes = c.bytes.saturating_sub(size);
        totals.items = totals.items.saturating_sub(1);
        totals.bytes = totals.bytes.saturating_sub(size);
        removed += 1;
    }
    for (mailbox, c) in changed {
        counters.insert(mailbox, c.row())?;
    }
    totals.put(&mut meta)?;
    Ok(removed)
}

/// The limit storing `size` more bytes in a mailbox with counters `c` would
/// break, if any.
fn check_quota(quota: &Quota, c: &Counters, totals: &Totals, size: u64) -> Option<QuotaExceeded> {
    if c.items >= quota.max_items {
        return Some(QuotaExceeded::Items {
            max_items: quota.max_items,
        });
    }
    if c.bytes.saturating_add(size) > quota.max_bytes {
        return Some(QuotaExceeded::Bytes {
            stored: c.bytes,
            item: size,
            max_bytes: quota.max_bytes,
        });
    }
    if totals.bytes.saturating_add(size) > quota.max_total_bytes {
        return Some(QuotaExceeded::TotalBytes {
            stored: totals.bytes,
            item: size,
            max_total_bytes: quota.max_total_bytes,
        });
    }
    None
}

impl Store {
    /// Appends items to mailboxes, all in one transaction that is on disk
    /// (fsync'ed) when this returns: an item reported
    /// [`Stored`](AppendOutcome::Stored) survives a crash or power loss from
    /// then on, so the caller may acknowledge it.
    ///
    /// Returns one outcome per item, in order. Items that would break the
    /// quota are [`Rejected`](AppendOutcome::Rejected) and the others stored.
    /// `now_ms` is the time stored with each item, for expiry.
    ///
    /// Fails, storing nothing, if an item is larger than [`MAX_ITEM_SIZE`]
    /// or there are more than [`MAX_APPEND_BATCH`] items.
    pub fn mailbox_append(
        &self,
        items: &[(MailboxId, &[u8])],
        now_ms: u64,
        quota: &Quota,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        if items.len() > MAX_APPEND_BATCH {
            return Err(StoreError::BatchTooLarge {
                what: "mailbox items",
                count: items.len(),
                max: MAX_APPEND_BATCH,
            });
        }
        if let Some((index, (_, bytes))) = items
            .iter()
            .enumerate()
            .find(|(_, (_, bytes))| bytes.len() > MAX_ITEM_SIZE)
        {
            return Err(StoreError::ItemTooLarge {
                index,
                size: bytes.len(),
            });
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|txn| {
            let mut table = txn.open_table(ITEMS)?;
            let mut expiry = txn.open_table(EXPIRY)?;
            let mut counters = txn.open_table(COUNTERS)?;
            let mut meta = txn.open_table(META)?;
            let mut totals = Totals::get(&meta)?;
            let mut outcomes = Vec::with_capacity(items.len());
            for (mailbox, bytes) in items {
                let mut c = Counters::get(&counters, mailbox)?;
                let size = bytes.len() as u64;
                if let Some(exceeded) = check_quota(quota, &c, &totals, size) {
                    outcomes.push(AppendOutcome::Rejected(exceeded));
                    continue;
                }
                let seq = c.next_seq;
                c.next_seq = seq.checked_add(1).ok_or(StoreError::SequenceExhausted)?;
                c.items += 1;
                c.bytes += size;
                totals.items += 1;
                totals.bytes += size;
                table.insert((*mailbox, seq), (now_ms, *bytes))?;
                expiry.insert((now_ms, *mailbox, seq), ())?;
                counters.insert(mailbox, c.row())?;
                outcomes.push(AppendOutcome::Stored { seq });
            }
            totals.put(&mut meta)?;
            Ok(outcomes)
        })
    }

    /// The items of `mailbox` with a sequence number above `after_seq`, in
    /// ascending order, at most `limit` of them (and never more than
    /// [`MAX_READ_ITEMS`]).
    pub fn mailbox_read(
        &self,
        mailbox: &MailboxId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<MailboxItem>, StoreError> {
        let limit = limit.min(MAX_READ_ITEMS);
        if after_seq == u64::MAX || limit == 0 {
            return Ok(Vec::new());
        }
        self.read(|txn| {
            let table = txn.open_table(ITEMS)?;
            let range = (
                Bound::Excluded((*mailbox, after_seq)),
                Bound::Included((*mailbox, u64::MAX)),
            );
            let mut out = Vec::with_capacity(limit.min(64));
            for entry in table.range(range)?.take(limit) {
                let (key, value) = entry?;
                let (stored_at_ms, bytes) = value.value();
                out.push(MailboxItem {
                    seq: key.value().1,
                    stored_at_ms,
                    bytes: bytes.to_vec(),
                });
            }
            Ok(out)
        })
    }

    /// Deletes the items of `mailbox` with a sequence number up to and
    /// including `through` (the owner has them). Returns how many were
    /// deleted. Their sequence numbers are not reused.
    pub fn mailbox_delete_through(
        &self,
        mailbox: &MailboxId,
        through: u64,
    ) -> Result<usize, StoreError> {
        if through == 0 {
            return Ok(0);
        }
        self.write(|txn| {
            let seqs = {
                let table = txn.open_table(ITEMS)?;
                let mut seqs = Vec::new();
                for entry in table.range((*mailbox, 0)..=(*mailbox, through))? {
                    seqs.push(entry?.0.value().1);
                }
                seqs
            };
            remove_items(txn, seqs.into_iter().map(|seq| (*mailbox, seq)))
        })
    }

    /// Deletes every item stored `ttl_ms` or longer ago (`stored_at_ms +
    /// ttl_ms <= now_ms`), in transactions of at most a few thousand items.
    /// Returns how many were deleted.
    pub fn mailbox_expire(&self, now_ms: u64, ttl_ms: u64) -> Result<usize, StoreError> {
        let Some(cutoff) = now_ms.checked_sub(ttl_ms) else {
            return Ok(0);
        };
        let mut total = 0;
        loop {
            let (found, removed) = self.write(|txn| {
                // Take the oldest index entries out first, then their items.
                let keys = {
                    let mut expiry = txn.open_table(EXPIRY)?;
                    let mut keys = Vec::new();
                    let due =
                        expiry.extract_from_if(..=(cutoff, [0xFF; 32], u64::MAX), |_, ()| true)?;
                    for entry in due.take(EXPIRE_BATCH) {
                        let (_, mailbox, seq) = entry?.0.value();
                        keys.push((mailbox, seq));
                    }
                    keys
                };
                let removed = remove_items(txn, keys.iter().copied())?;
                Ok((keys.len(), removed))
            })?;
            total += removed;
            if found < EXPIRE_BATCH {
                return Ok(total);
            }
        }
    }

    /// Items and bytes of every non-empty mailbox, and of all together.
    /// Reads the counters only, one row per mailbox ever used.
    pub fn mailbox_stats(&self) -> Result<StoreStats, StoreError> {
        self.read(|txn| {
            let counters = txn.open_table(COUNTERS)?;
            let meta = txn.open_table(META)?;
            let totals = Totals::get(&meta)?;
            let mut mailboxes = Vec::new();
            for entry in counters.iter()? {
                let (mailbox, row) = entry?;
                let (items, bytes, _) = row.value();
                if items > 0 {
                    mailboxes.push(MailboxStats {
                        mailbox: mailbox.value(),
                        items,
                        bytes,
                    });
                }
            }
            Ok(StoreStats {
                mailboxes,
                total_items: totals.items,
                total_bytes: totals.bytes,
            })
        })
    }
}
