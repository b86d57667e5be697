//! Direct mode: two contacts' nodes talk without the mixnet, when both
//! users asked for it (DESIGN.md §1, "IP addresses hidden unless both
//! agree").
//!
//! Each user's consent travels as a letter over the end-to-end session (a
//! [`Kind::Community`](chainmail_session::Kind) payload whose first byte is
//! [`LETTER_TAG`]): it carries the sender node's peer id and the relayed
//! addresses it can be reached at through its providers. Only when both
//! sides consented does the host link the two nodes (relay, then hole
//! punching). Messages then travel over the direct connection, encrypted by
//! the same session as through the mixnet; whenever no direct connection is
//! up they go through the mixnet. Withdrawing consent tells the other side
//! and closes the link.
//!
//! What a direct connection gives away, plainly: each side learns the
//! other's network address, and that the two talk.

use std::collections::{BTreeMap, HashMap};

use chainmail_session::Address;
use serde::{Deserialize, Serialize};

use crate::storage::{Batch, Storage, StorageError, Table};

/// The first byte of a direct-mode letter (community letters start with
/// 1 or 2).
pub const LETTER_TAG: u8 = 0x40;

/// Longest peer id accepted in a letter (an Ed25519 peer id has 38 bytes).
const MAX_PEER: usize = 64;

/// Addresses accepted in a letter.
pub const MAX_CARD_ADDRS: usize = 8;

/// Longest address accepted in a letter.
const MAX_ADDR: usize = 256;

/// How a node can be reached for direct mode: its peer id (bytes) and
/// relayed addresses (through its providers).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Card {
    /// Peer id bytes.
    pub peer: Vec<u8>,
    /// Multiaddresses, as text.
    pub addrs: Vec<String>,
}

/// A direct-mode letter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Letter {
    /// The sender agrees to direct mode, and can be reached so.
    Offer(Card),
    /// The sender withdrew its consent.
    Withdraw,
}

impl Letter {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![LETTER_TAG];
        match self {
            Letter::Withdraw => out.push(0),
            Letter::Offer(card) => {
                out.push(1);
                out.push(card.peer.len() as u8);
                out.extend_from_slice(&card.peer);
                out.push(card.addrs.len() as u8);
                for a in &card.addrs {
                    out.extend_from_slice(&(a.len() as u16).to_le_bytes());
                    out.extend_from_slice(a.as_bytes());
                }
            }
        }
        out
    }

    /// `None` if `bytes` is no direct-mode letter; `Some(Err)` if it is a
    /// malformed one.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Result<Letter, &'static str>> {
        let (&tag, rest) = bytes.split_first()?;
        if tag != LETTER_TAG {
            return None;
        }
        Some(Self::decode_body(rest))
    }

    fn decode_body(mut rest: &[u8]) -> Result<Letter, &'static str> {
        let mut take = |n: usize| -> Result<&[u8], &'static str> {
            if rest.len() < n {
                return Err("truncated");
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let letter = match take(1)?[0] {
            0 => Letter::Withdraw,
            1 => {
                let n = usize::from(take(1)?[0]);
                if n == 0 || n > MAX_PEER {
                    return Err("bad peer id length");
                }
                let peer = take(n)?.to_vec();
                let count = usize::from(take(1)?[0]);
                if count > MAX_CARD_ADDRS {
                    return Err("too many addresses");
                }
                let mut addrs = Vec::with_capacity(count);
                for _ in 0..count {
                    let len = take(2)?;
                    let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
                    if len == 0 || len > MAX_ADDR {
                        return Err("bad address length");
                    }
                    let text = std::str::from_utf8(take(len)?).map_err(|_| "address not text")?;
                    addrs.push(text.to_owned());
                }
                Letter::Offer(Card { peer, addrs })
            }
            _ => return Err("unknown letter"),
        };
        if !rest.is_empty() {
            return Err("trailing bytes");
        }
        Ok(letter)
    }
}

/// What one contact and this user agreed to, stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Consent {
    /// This user asked for direct mode with them.
    mine: bool,
    /// They asked for it, and can be reached so.
    theirs: Option<Card>,
}

/// Where direct mode with one contact stands, for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectView {
    /// off, asked (waiting for them), offered (they asked), connecting,
    /// relayed, direct, failed.
    pub state: String,
    /// One line for people.
    pub detail: String,
}

/// The link the host reported for a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Link {
    state: String,
    detail: String,
}

/// What the host must do: hold reservations, and link with these peers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectPlan {
    /// Hold reservations at the providers (this user consented with
    /// somebody, so others may need to reach this node).
    pub reserve: bool,
    /// Peers to link with (both consented), with their addresses.
    pub peers: Vec<Card>,
    /// Take connections relayed through this node's providers from any
    /// peer (the account is in a community: other members reach its node
    /// through its providers, and hole punching may make that direct).
    /// Direct-mode messages are still taken only from `peers`.
    pub members: bool,
}

/// Direct-mode state of one account.
#[derive(Debug, Default)]
pub(crate) struct Direct {
    consents: BTreeMap<Address, Consent>,
    links: HashMap<Vec<u8>, Link>,
    /// This node's card, from the host.
    pub(crate) card: Option<Card>,
    /// The plan last handed out.
    plan: Option<DirectPlan>,
    /// Letters and messages refused (malformed, or from a peer without
    /// consent on both sides).
    pub(crate) refused: u64,
}

impl Direct {
    pub(crate) fn load(storage: &impl Storage) -> Result<Self, StorageError> {
        let mut consents = BTreeMap::new();
        for (key, value) in storage.list(Table::Direct)? {
            let Ok(address) = std::str::from_utf8(&key)
                .map_err(|_| ())
                .and_then(|k| k.parse::<Address>().map_err(|_| ()))
            else {
                continue;
            };
            if let Ok(consent) = serde_json::from_slice::<Consent>(&value) {
                consents.insert(address, consent);
            }
        }
        Ok(Self {
            consents,
            ..Self::default()
        })
    }

    fn store(&self, writes: &mut Batch, address: &Address) {
        let key = address.to_string().into_bytes();
        match self.consents.get(address) {
            Some(c) if *c != Consent::default() => {
                if let Ok(bytes) = serde_json::to_vec(c) {
                    writes.put(Table::Direct, key, bytes);
                }
            }
            _ => writes.delete(Table::Direct, key),
        }
    }

    /// This user's choice for `contact`: the letter to send them.
    pub(crate) fn set_mine(
        &mut self,
        writes: &mut Batch,
        contact: Address,
        on: bool,
    ) -> Result<Letter, String> {
        let letter = if on {
            let card = self.card.clone().ok_or(
                "this node does not know its providers yet, so it cannot say where it can be \
                 reached; try again in a few seconds",
            )?;
            Letter::Offer(card)
        } else {
            Letter::Withdraw
        };
        self.consents.entry(contact).or_default().mine = on;
        self.store(writes, &contact);
        Ok(letter)
    }

    /// A letter from a contact: whether it was one (and the new state).
    pub(crate) fn handle_letter(
        &mut self,
        writes: &mut Batch,
        from: Address,
        body: &[u8],
    ) -> Option<Result<bool, ()>> {
        let letter = match Letter::decode(body)? {
            Ok(letter) => letter,
            Err(_) => {
                self.refused += 1;
                return Some(Err(()));
            }
        };
        let consent = self.consents.entry(from).or_default();
        consent.theirs = match letter {
            Letter::Offer(card) => Some(card),
            Letter::Withdraw => None,
        };
        let on = consent.theirs.is_some();
        self.store(writes, &from);
        Some(Ok(on))
    }

    /// The contacts this user consented with (their cards are re-sent when
    /// this node's card changes).
    pub(crate) fn mine(&self) -> Vec<Address> {
        self.consents
            .iter()
            .filter(|(_, c)| c.mine)
            .map(|(a, _)| *a)
            .collect()
    }

    /// The contact linked with `peer`, if both consented.
    pub(crate) fn contact_of(&self, peer: &[u8]) -> Option<Address> {
        self.consents
            .iter()
            .find(|(_, c)| c.mine && c.theirs.as_ref().is_some_and(|t| t.peer == peer))
            .map(|(a, _)| *a)
    }

    /// Whether any link is direct now (else no fragment needs looking at).
    pub(crate) fn any_direct(&self) -> bool {
        self.links.values().any(|l| l.state == "direct")
    }

    /// The peer to send to `contact` directly, if a direct connection is up.
    pub(crate) fn direct_peer(&self, contact: &Address) -> Option<Vec<u8>> {
        let c = self.consents.get(contact)?;
        let card = c.theirs.as_ref().filter(|_| c.mine)?;
        let link = self.links.get(&card.peer)?;
        (link.state == "direct").then(|| card.peer.clone())
    }

    /// The host's report on the link with `peer`; `true` if it changed.
    pub(crate) fn set_link(&mut self, peer: Vec<u8>, state: String, detail: String) -> bool {
        let link = Link { state, detail };
        self.links.insert(peer, link.clone()) != Some(link)
    }

    /// The plan, if it changed since last taken.
    pub(crate) fn take_plan(&mut self, members: bool) -> Option<DirectPlan> {
        let plan = DirectPlan {
            members,
            reserve: members || self.consents.values().any(|c| c.mine),
            peers: self
                .consents
                .values()
                .filter(|c| c.mine)
                .filter_map(|c| c.theirs.clone())
                .collect(),
        };
        if self.plan.as_ref() == Some(&plan) {
            return None;
        }
        let live: Vec<&Vec<u8>> = plan.peers.iter().map(|c| &c.peer).collect();
        self.links.retain(|peer, _| live.contains(&peer));
        self.plan = Some(plan.clone());
        Some(plan)
    }

    /// Where direct mode with `contact` stands.
    pub(crate) fn view(&self, contact: &Address, name: &str) -> DirectView {
        let view = |state: &str, detail: String| DirectView {
            state: state.into(),
            detail,
        };
        let Some(c) = self.consents.get(contact) else {
            return view("off", "messages go through the mixnet".into());
        };
        match (c.mine, &c.theirs) {
            (false, None) => view("off", "messages go through the mixnet".into()),
            (true, None) => view(
                "asked",
                format!("waiting for {name} to agree; until then messages go through the mixnet"),
            ),
            (false, Some(_)) => view(
                "offered",
                format!(
                    "{name} asks for direct mode (`contact direct {name} on` to agree: your \
                     network address becomes visible to {name})"
                ),
            ),
            (true, Some(card)) => match self.links.get(&card.peer) {
                Some(link) if link.state == "direct" => view(
                    "direct",
                    format!(
                        "connected directly: {name} can see your network address, and you \
                         theirs ({})",
                        link.detail
                    ),
                ),
                Some(link) if link.state == "failed" => view(
                    "failed",
                    format!(
                        "no direct connection ({}); messages go through the mixnet meanwhile",
                        link.detail
                    ),
                ),
                Some(link) if link.state == "relayed" => view(
                    "relayed",
                    "hole punching through a relay; messages go through the mixnet meanwhile"
                        .into(),
                ),
                _ => view(
                    "connecting",
                    "both agreed; connecting (messages go through the mixnet meanwhile)".into(),
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> Card {
        Card {
            peer: vec![7; 38],
            addrs: vec!["/ip4/198.18.0.11/tcp/4001/p2p/x/p2p-circuit/p2p/y".into()],
        }
    }

    #[test]
    fn letters_round_trip_and_bad_ones_are_refused() {
        for letter in [Letter::Offer(card()), Letter::Withdraw] {
            assert_eq!(Letter::decode(&letter.encode()), Some(Ok(letter)));
        }
        assert_eq!(Letter::decode(&[1, 2, 3]), None, "a community letter");
        let good = Letter::Offer(card()).encode();
        for cut in 2..good.len() {
            assert!(
                matches!(Letter::decode(&good[..cut]), Some(Err(_))),
                "{cut}"
            );
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(Letter::decode(&long), Some(Err("trailing bytes")));
        let mut many = vec![LETTER_TAG, 1, 1, 9, (MAX_CARD_ADDRS + 1) as u8];
        many.extend([0; 4]);
        assert_eq!(Letter::decode(&many), Some(Err("too many addresses")));
        assert_eq!(
            Letter::decode(&[LETTER_TAG, 9]),
            Some(Err("unknown letter"))
        );
    }

    #[test]
    fn a_link_is_planned_only_when_both_agree_and_ends_when_one_withdraws() {
        let bob = Address::from_bytes([3; 32]);
        let mut d = Direct::default();
        let mut w = Batch::default();
        assert!(d.set_mine(&mut w, bob, true).is_err(), "no card yet");
        d.card = Some(Card {
            peer: vec![1; 38],
            addrs: vec![],
        });
        assert_eq!(
            d.set_mine(&mut w, bob, true),
            Ok(Letter::Offer(d.card.clone().unwrap()))
        );
        let plan = d.take_plan(false).unwrap();
        assert!(plan.reserve && plan.peers.is_empty());
        assert_eq!(d.view(&bob, "bob").state, "asked");

        let offer = Letter::Offer(card()).encode();
        assert_eq!(d.handle_letter(&mut w, bob, &offer), Some(Ok(true)));
        assert_eq!(d.take_plan(false).unwrap().peers, vec![card()]);
        assert!(d.take_plan(false).is_none(), "unchanged");
        assert_eq!(d.view(&bob, "bob").state, "connecting");
        assert_eq!(d.contact_of(&card().peer), Some(bob));
        assert_eq!(d.direct_peer(&bob), None, "not connected yet");
        assert!(d.set_link(card().peer, "direct".into(), "/ip4/…".into()));
        assert_eq!(d.direct_peer(&bob), Some(card().peer));
        assert_eq!(d.view(&bob, "bob").state, "direct");

        let withdraw = Letter::Withdraw.encode();
        assert_eq!(d.handle_letter(&mut w, bob, &withdraw), Some(Ok(false)));
        assert!(d.take_plan(false).unwrap().peers.is_empty());
        assert_eq!(d.direct_peer(&bob), None);
        assert_eq!(d.contact_of(&card().peer), None);
        assert_eq!(d.view(&bob, "bob").state, "asked");
    }
}
