//! The agent's errands in flight: DHT lookups and publications that a
//! provider carries out for it through the mixnet, so that no DHT node, no
//! record's publisher field and no connection names the user's node.

use std::collections::HashMap;

use chainmail_mixnet::{Client, Errand, ErrandId, Time};
use chainmail_session::Address;

use crate::community::Rendezvous;

/// Why an errand was sent: what to do with its answer.
pub(crate) enum Purpose {
    /// One period's descriptor of an account being looked up.
    Lookup {
        /// The account.
        address: Address,
        /// The descriptor period the key is for.
        period: u64,
    },
    /// A publication (account descriptor, rendezvous record, advisory):
    /// nothing waits for it; it is published again on the next refresh.
    Publish,
    /// The network's advisory.
    Advisory,
    /// A community's rendezvous record.
    Rendezvous(Rendezvous),
}

/// Most errands in flight.
pub(crate) const MAX_ERRANDS: usize = 1024;

/// Errands in flight and the lookups they belong to.
#[derive(Default)]
pub(crate) struct Errands {
    purposes: HashMap<ErrandId, Purpose>,
    /// Lookups not answered yet, per account.
    lookups: HashMap<Address, usize>,
    /// Errands the mixnet client refused, or not sent because too many
    /// were in flight.
    pub(crate) refused: u64,
}

impl Errands {
    /// Hands `errand` to the client; false if it was not sent.
    pub(crate) fn start(
        &mut self,
        now: Time,
        client: &mut Client,
        errand: Errand,
        purpose: Purpose,
    ) -> bool {
        if self.purposes.len() >= MAX_ERRANDS {
            tracing::warn!("too many DHT errands in flight; one was not sent");
            self.refused += 1;
            return false;
        }
        match client.errand(now, errand) {
            Ok(id) => {
                if let Purpose::Lookup { address, .. } = &purpose {
                    *self.lookups.entry(*address).or_default() += 1;
                }
                self.purposes.insert(id, purpose);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the mixnet client refused a DHT errand");
                self.refused += 1;
                false
            }
        }
    }

    /// An errand ended: its purpose, and for a lookup whether it was the
    /// account's last one in flight.
    pub(crate) fn finish(&mut self, id: ErrandId) -> Option<(Purpose, bool)> {
        let purpose = self.purposes.remove(&id)?;
        let mut last = false;
        if let Purpose::Lookup { address, .. } = &purpose {
            let left = self.lookups.entry(*address).or_default();
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.lookups.remove(address);
                last = true;
            }
        }
        Some((purpose, last))
    }

    /// Errands in flight.
    pub(crate) fn len(&self) -> usize {
        self.purposes.len()
    }
}
