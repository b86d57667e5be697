//! The messenger core: contacts, contact requests, Olm sessions, envelopes
//! and message states, as a sans-IO state machine.
//!
//! It sits on top of the mixnet client. What it hands out
//! ([`Messenger::poll_action`]) the driver carries out: look up or publish
//! a descriptor in the DHT, mint a proof-of-work stamp, or give a fragment
//! to the mixnet client for sending. What comes back (descriptors found,
//! stamps minted, mixnet ids, acknowledgements, received mixnet messages)
//! goes in through the `handle_*` methods. Nothing here reads a clock or
//! touches the network.
//!
//! Delivery: each envelope is encrypted once with the contact's Olm
//! session, split into fragments that fit one mixnet packet each, and each
//! fragment is acknowledged by the recipient's client through a SURB
//! ([`chainmail_mixnet::Client`]); a message is `delivered` when every
//! fragment is. The acknowledgement leaves the recipient in its Poisson
//! payload stream behind its own messages and crosses three mixes with
//! their delays, like any packet, so seeing it tells no mix that the
//! recipient just received something from the sender (the confirmation
//! attack of naive acknowledgements).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use chainmail_mixnet::Time;
use chainmail_mixnet::message::ClientAddress;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use vodozemac::olm;

use crate::account::{Account, AccountState};
use crate::blind::{descriptor_dht_key, open_descriptor, period_at, seal_descriptor};
use crate::descriptor::{AccountDescriptor, verify_binding};
use crate::envelope::{Envelope, Fragment, Kind, Reassembler, ReassemblyLimits, fragment};
use crate::stamp::{Stamp, day_of, stamp_challenge, stamp_fresh};
use crate::{Address, SessionError};

/// A message's id (also its envelope's).
pub type MessageId = [u8; 16];

/// Configuration of a [`Messenger`].
#[derive(Clone, Debug)]
pub struct MessengerConfig {
    /// Hash of the network.
    pub network: [u8; 32],
    /// This client's version, sent in every envelope.
    pub client_version: String,
    /// Leading zero bits a stranger's contact request must carry.
    pub stamp_difficulty: u8,
    /// Period of the blinded descriptor keys in the DHT.
    pub descriptor_period: Duration,
    /// Encoded size of one fragment: what one mixnet message carries.
    pub max_fragment: usize,
    /// How long a message that arrived out of order is held back waiting
    /// for the ones before it.
    pub reorder_timeout: Duration,
    /// How long to wait before looking an address up again after a
    /// lookup found nothing: `first_lookup_retry`, doubled after each
    /// failure up to `lookup_retry` (a descriptor published a moment ago
    /// is usually there a few seconds later).
    pub lookup_retry: Duration,
    /// The first wait after a lookup found nothing.
    pub first_lookup_retry: Duration,
    /// How long a recipient collects receipts before sending them (one
    /// envelope for many messages; it also loosens the timing link between
    /// a message and its receipt).
    pub receipt_delay: Duration,
    /// How long after a message reached the recipient's client its receipt
    /// may take before the message is encrypted and sent again (a message
    /// delayed past several ratchet steps cannot be opened any more).
    pub resend_after: Duration,
    /// Sends of one message, counting the first, before it is failed.
    pub max_sends: u32,
    /// When the mixnet client gave up on a message (its recipient offline
    /// longer than the mixnet retransmits), how long to wait before
    /// encrypting and sending it again; the copies already in the
    /// recipient's mailboxes may still arrive and be confirmed meanwhile.
    pub offline_resend_after: Duration,
    /// A message without a receipt this long after it was written is
    /// failed (mailboxes keep mail about this long).
    pub max_wait: Duration,
}

impl MessengerConfig {
    /// Defaults for `network`.
    pub fn new(network: [u8; 32]) -> Self {
        MessengerConfig {
            network,
            client_version: env!("CARGO_PKG_VERSION").into(),
            stamp_difficulty: DEFAULT_STAMP_DIFFICULTY,
            descriptor_period: Duration::from_secs(24 * 3600),
            max_fragment: chainmail_mixnet::message::MAX_BODY,
            reorder_timeout: Duration::from_secs(300),
            lookup_retry: Duration::from_secs(30),
            first_lookup_retry: Duration::from_secs(4),
            receipt_delay: Duration::from_secs(1),
            resend_after: Duration::from_secs(45),
            max_sends: 4,
            offline_resend_after: Duration::from_secs(3600),
            max_wait: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Where a contact stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContactState {
    /// Added by us; looking up their descriptor to send the request.
    LookingUp,
    /// Our request is on its way or waiting for their answer.
    RequestSent,
    /// They asked us; waiting for the user to accept, deny or ignore.
    RequestReceived,
    /// Both sides talk.
    Accepted,
    /// We denied their request (they were told).
    Denied,
    /// They denied our request.
    DeniedByThem,
    /// We ignored their request (nobody was told).
    Ignored,
}

impl ContactState {
    /// A short lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ContactState::LookingUp => "looking-up",
            ContactState::RequestSent => "request-sent",
            ContactState::RequestReceived => "request-received",
            ContactState::Accepted => "accepted",
            ContactState::Denied => "denied",
            ContactState::DeniedByThem => "denied-by-them",
            ContactState::Ignored => "ignored",
        }
    }
}

/// The state of a message this client sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageState {
    /// Waiting in this client (for a descriptor, a stamp, or a session).
    Queued,
    /// Handed to the mixnet.
    Sent,
    /// Every part reached the recipient's client (mixnet acknowledgements),
    /// not yet confirmed read by its session.
    Stored,
    /// The recipient's session opened it (its end-to-end receipt came back).
    Delivered,
    /// Some part was never acknowledged, or the recipient could not open it.
    Failed,
}

impl MessageState {
    /// A short lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Queued => "queued",
            MessageState::Sent => "sent",
            MessageState::Stored => "stored",
            MessageState::Delivered => "delivered",
            MessageState::Failed => "failed",
        }
    }
}

/// A contact.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Contact {
    /// Their address.
    pub address: Address,
    /// The name the user gave them (or the one they suggested).
    pub name: String,
    /// Where the contact stands.
    pub state: ContactState,
    /// Their Olm identity key, once known.
    pub curve_key: Option<[u8; 32]>,
    /// Where their packets go.
    pub mixnet: Option<ClientAddress>,
    /// Their client version, as last seen.
    pub client_version: Option<String>,
    /// The user compared safety numbers with them.
    pub verified: bool,
    /// Their keys changed since the user last looked (a loud warning).
    pub key_changed: bool,
    /// The text of their contact request, or of ours to them.
    pub request_text: Option<String>,
    /// The version of theirs the user was last warned about.
    #[serde(default)]
    warned_version: Option<String>,
    /// Messages of theirs to confirm, with when they came.
    #[serde(default)]
    receipts: Vec<(Time, MessageId)>,
    next_seq_out: u64,
    next_seq_in: u64,
    /// Envelopes that came early, encoded, with when they came.
    held: BTreeMap<u64, (Time, Vec<u8>)>,
    seen_ahead: Vec<u64>,
    lookup_at: Option<Time>,
    /// Lookups in a row that found nothing.
    #[serde(default)]
    lookups_failed: u32,
}

/// What the user should see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessengerEvent {
    /// A stranger asks to talk.
    ContactRequest {
        /// Who.
        from: Address,
        /// The name they suggest.
        name: String,
        /// Their message, if any.
        text: Option<String>,
    },
    /// Our request was accepted.
    ContactAccepted {
        /// By whom.
        contact: Address,
    },
    /// Our request was denied.
    ContactDenied {
        /// By whom.
        contact: Address,
    },
    /// A message from a contact, in the order they sent it.
    Message {
        /// From whom.
        from: Address,
        /// Its id.
        id: MessageId,
        /// Its position in the conversation (the sender's count).
        seq: u64,
        /// When the sender wrote it (their clock).
        sent_at: Time,
        /// The text.
        text: String,
    },
    /// A payload for the community layer (an invite, a join request) from a
    /// contact, in the order they sent it, among their messages.
    Community {
        /// From whom.
        from: Address,
        /// Its id.
        id: MessageId,
        /// Its position in the conversation (the sender's count, shared
        /// with their messages).
        seq: u64,
        /// When the sender made it (their clock).
        sent_at: Time,
        /// The payload, opaque to this layer.
        body: Vec<u8>,
    },
    /// A message of ours changed state.
    MessageState {
        /// Which.
        id: MessageId,
        /// To whom.
        to: Address,
        /// Its new state.
        state: MessageState,
    },
    /// A contact's keys changed: someone else may be in the middle, or they
    /// moved to a new device. Their safety number must be compared again.
    KeyChanged {
        /// Whose.
        contact: Address,
    },
    /// A contact runs a client version the network's advisory lists as
    /// unsafe.
    UnsafeVersion {
        /// Who.
        contact: Address,
        /// Their version.
        version: String,
    },
    /// Looking a contact up found no valid descriptor (will try again).
    LookupFailed {
        /// Whom.
        contact: Address,
    },
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Look up these DHT keys (in order) and give every value found to
    /// [`Messenger::handle_descriptor`], then call
    /// [`Messenger::handle_lookup_done`].
    Lookup {
        /// The account looked up.
        address: Address,
        /// (period, DHT key) pairs.
        keys: Vec<(u64, [u8; 32])>,
    },
    /// Put this record in the DHT.
    Publish {
        /// DHT key.
        key: [u8; 32],
        /// Value (encrypted descriptor).
        value: Vec<u8>,
        /// When it may be dropped.
        expires: Time,
    },
    /// Mint a stamp ([`Stamp::mint`]) and give it to
    /// [`Messenger::handle_stamp`].
    MintStamp {
        /// Job id.
        job: u64,
        /// The challenge.
        challenge: [u8; 32],
        /// Day it is for.
        day: u32,
        /// Leading zero bits needed.
        difficulty: u8,
    },
    /// Give `body` to the mixnet client for `to`. If `acknowledged`, with
    /// `Client::send`, then report its mixnet message id with
    /// [`Messenger::handle_transmitted`]; if not (end-to-end receipts, whose
    /// loss a resend of the message repairs), with
    /// `Client::send_unacknowledged`, and report nothing.
    Transmit {
        /// Which message and fragment.
        tag: FragmentTag,
        /// Recipient.
        to: ClientAddress,
        /// One encoded fragment.
        body: Vec<u8>,
        /// Whether the mixnet acknowledges and retransmits it.
        acknowledged: bool,
    },
}

/// Identifies one fragment of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FragmentTag {
    /// Message.
    pub message: MessageId,
    /// Fragment index.
    pub index: u16,
}

/// Why something that arrived was not shown.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MessengerStats {
    /// A stranger's first message without a valid stamp.
    pub rejected_stamp: u64,
    /// A first message whose key binding did not verify.
    pub rejected_binding: u64,
    /// Could not be decrypted.
    pub undecryptable: u64,
    /// Could not be decoded.
    pub malformed: u64,
    /// From someone not accepted (hidden).
    pub hidden: u64,
    /// From someone denied or ignored.
    pub from_blocked: u64,
    /// Envelopes seen before.
    pub duplicates: u64,
    /// Out-of-order messages shown after waiting too long for a gap.
    pub gaps_skipped: u64,
    /// Descriptors that failed to open or verify.
    pub bad_descriptors: u64,
    /// Messages encrypted and sent again because no receipt came.
    #[serde(default)]
    pub resent: u64,
    /// Contact requests refused because the contact list is full
    /// ([`MAX_CONTACTS`]).
    #[serde(default)]
    pub requests_refused_full: u64,
    /// Partial messages whose fragments were dropped to make room in the
    /// reassembler (before anything said who sent them).
    #[serde(default)]
    pub partial_messages_evicted: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct OutMessage {
    to: Address,
    state: MessageState,
    fragments: u16,
    acked: Vec<bool>,
    /// The encoded fragments, kept until delivered so that a restart (which
    /// loses the mixnet client's retransmission state) sends them again.
    bodies: Vec<Vec<u8>>,
    /// The envelope (plaintext), kept to encrypt it again if its receipt
    /// does not come; empty for envelopes that get no receipt.
    #[serde(default)]
    envelope: Vec<u8>,
    /// Sends so far.
    #[serde(default)]
    sends: u32,
    /// When to send again if no receipt came.
    #[serde(default)]
    resend_at: Option<Time>,
    /// When it was written.
    #[serde(default)]
    created: Time,
    /// The mixnet client gave up on a fragment: the recipient has been
    /// offline for a while.
    #[serde(default)]
    mixnet_gave_up: bool,
}

#[derive(Clone, Serialize, Deserialize)]
struct StampJob {
    to: Address,
    message: MessageId,
    day: u32,
    frame: Frame,
}

/// The first envelope to a stranger carries this in its body.
#[derive(Serialize, Deserialize)]
struct RequestBody {
    name: String,
    text: Option<String>,
    reply: ClientAddress,
}

/// What is fragmented and sent: an Olm message with what the receiver
/// needs to find or make the session.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Frame {
    /// The first messages of a session.
    PreKey {
        sender: Address,
        curve_key: [u8; 32],
        binding: Vec<u8>,
        stamp: Option<Stamp>,
        message: Vec<u8>,
    },
    /// Later messages.
    Normal { sender: Address, message: Vec<u8> },
}

/// Everything a [`Messenger`] must keep across restarts (secret: store it
/// encrypted).
#[derive(Serialize, Deserialize)]
pub struct MessengerState {
    account: AccountState,
    name: String,
    contacts: Vec<Contact>,
    sessions: Vec<(Address, Vec<olm::SessionPickle>)>,
    outgoing: Vec<(MessageId, OutMessage)>,
    mixnet_ids: Vec<([u8; 16], FragmentTag)>,
    stamp_jobs: Vec<(u64, StampJob)>,
    stats: MessengerStats,
}

/// Leading zero bits of a stranger's stamp unless the network says
/// otherwise: about 0.4 s of one laptop core (BENCHMARKS.md).
pub const DEFAULT_STAMP_DIFFICULTY: u8 = 22;
/// Most contacts.
pub const MAX_CONTACTS: usize = 10_000;
/// Most message ids in one receipt.
pub const MAX_RECEIPTS: usize = 50;

/// Whether the recipient confirms an envelope of this kind with a receipt.
/// Requests are not confirmed (an ignored request tells its sender
/// nothing); receipts are not confirmed either.
fn needs_receipt(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Text | Kind::Community | Kind::Accept | Kind::Deny
    )
}
/// Most messages held back per contact waiting for an earlier one.
pub const MAX_HELD: usize = 1000;
/// Most messages in flight.
pub const MAX_OUTGOING: usize = 10_000;
/// Most Olm sessions kept per contact.
pub const MAX_SESSIONS: usize = 4;
/// Longest text.
pub const MAX_TEXT: usize = 16 * 1024;
/// Largest community payload ([`Messenger::send_community`]): room for a
/// community's genesis and a few members' addresses, about 19 mixnet
/// packets, well under the envelope's 64 KiB.
pub const MAX_COMMUNITY: usize = 16 * 1024;
/// Longest contact name.
pub const MAX_NAME: usize = 64;

/// The messenger core of one account.
pub struct Messenger {
    config: MessengerConfig,
    rng: StdRng,
    account: Account,
    name: String,
    mixnet: Option<ClientAddress>,
    contacts: BTreeMap<Address, Contact>,
    sessions: HashMap<Address, Vec<olm::Session>>,
    outgoing: BTreeMap<MessageId, OutMessage>,
    mixnet_ids: BTreeMap<[u8; 16], FragmentTag>,
    stamp_jobs: HashMap<u64, StampJob>,
    next_job: u64,
    reassembler: Reassembler<()>,
    advisory: Option<crate::advisory::Advisory>,
    next_publish: Option<Time>,
    actions: VecDeque<Action>,
    events: VecDeque<MessengerEvent>,
    stats: MessengerStats,
    dirty: bool,
    /// Contacts whose record (the contact, its sessions) changed since
    /// [`Messenger::take_touched`] was last called.
    touched: BTreeSet<Address>,
}

/// One contact with its Olm sessions: the part of [`MessengerState`] that
/// grows with the number of contacts, stored one record per contact so
/// that a message costs a write of its contact's record, not of all of
/// them (secret: store it encrypted).
#[derive(Serialize, Deserialize)]
pub struct ContactRecord {
    contact: Contact,
    sessions: Vec<olm::SessionPickle>,
}

impl ContactRecord {
    /// Whose record it is.
    pub fn address(&self) -> Address {
        self.contact.address
    }
}

impl MessengerState {
    /// Splits the state into its core (everything but contacts and
    /// sessions) and one record per contact.
    pub fn into_parts(mut self) -> (MessengerState, Vec<ContactRecord>) {
        let mut sessions: HashMap<Address, Vec<olm::SessionPickle>> =
            std::mem::take(&mut self.sessions).into_iter().collect();
        let records = std::mem::take(&mut self.contacts)
            .into_iter()
            .map(|contact| ContactRecord {
                sessions: sessions.remove(&contact.address).unwrap_or_default(),
                contact,
            })
            .collect();
        (self, records)
    }

    /// Joins what [`MessengerState::into_parts`] split (or a core and the
    /// records written one by one).
    pub fn from_parts(mut core: MessengerState, records: Vec<ContactRecord>) -> MessengerState {
        for record in records {
            if !record.sessions.is_empty() {
                core.sessions
                    .push((record.contact.address, record.sessions));
            }
            core.contacts.push(record.contact);
        }
        core
    }
}

impl Messenger {
    /// A messenger for `account`, whose user calls themself `name`.
    pub fn new(config: MessengerConfig, account: Account, name: &str, seed: [u8; 32]) -> Self {
        Messenger {
            config,
            rng: StdRng::from_seed(seed),
            account,
            name: truncate(name, MAX_NAME),
            mixnet: None,
            contacts: BTreeMap::new(),
            sessions: HashMap::new(),
            outgoing: BTreeMap::new(),
            mixnet_ids: BTreeMap::new(),
            stamp_jobs: HashMap::new(),
            next_job: 0,
            reassembler: Reassembler::new(ReassemblyLimits {
                max_messages: 256,
                max_bytes: 4 * 1024 * 1024,
                timeout: Duration::from_secs(600),
            }),
            next_publish: None,
            advisory: None,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            stats: MessengerStats::default(),
            dirty: true,
            touched: BTreeSet::new(),
        }
    }

    /// Rebuilds a messenger from [`Messenger::state`]. Fragments of messages
    /// not yet delivered come out again as [`Action::Transmit`], and stamps
    /// being minted as [`Action::MintStamp`]: the mixnet client's
    /// retransmission state does not survive a restart, this does.
    pub fn from_state(
        config: MessengerConfig,
        state: MessengerState,
        seed: [u8; 32],
    ) -> Result<Self, SessionError> {
        let mut m = Messenger::new(
            config,
            Account::from_state(state.account),
            &state.name,
            seed,
        );
        m.contacts = state.contacts.into_iter().map(|c| (c.address, c)).collect();
        m.sessions = state
            .sessions
            .into_iter()
            .map(|(a, s)| (a, s.into_iter().map(olm::Session::from_pickle).collect()))
            .collect();
        m.outgoing = state.outgoing.into_iter().collect();
        m.mixnet_ids = state.mixnet_ids.into_iter().collect();
        m.next_job = state
            .stamp_jobs
            .iter()
            .map(|(j, _)| j + 1)
            .max()
            .unwrap_or(0);
        m.stamp_jobs = state.stamp_jobs.into_iter().collect();
        m.stats = state.stats;
        m.dirty = false;
        m.touched = m.contacts.keys().copied().collect();
        m.resume();
        Ok(m)
    }

    /// Everything to keep across restarts (secret).
    pub fn state(&self) -> MessengerState {
        let records = self
            .contacts
            .keys()
            .filter_map(|a| self.contact_record(a))
            .collect();
        MessengerState::from_parts(self.core_state(), records)
    }

    /// Whether the state changed since the last call (then store
    /// [`Messenger::state`], or [`Messenger::core_state`] and the records
    /// of [`Messenger::take_touched`], before acting on what came out).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// The state without contacts and sessions: what is in flight, the
    /// account, counters. Small however many contacts there are.
    pub fn core_state(&self) -> MessengerState {
        MessengerState {
            account: self.account.state(),
            name: self.name.clone(),
            contacts: Vec::new(),
            sessions: Vec::new(),
            outgoing: self.outgoing.iter().map(|(k, v)| (*k, v.clone())).collect(),
            mixnet_ids: self.mixnet_ids.iter().map(|(k, v)| (*k, *v)).collect(),
            stamp_jobs: self
                .stamp_jobs
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            stats: self.stats.clone(),
        }
    }

    /// The contacts whose records changed since the last call (all of them
    /// after [`Messenger::from_state`]).
    pub fn take_touched(&mut self) -> Vec<Address> {
        std::mem::take(&mut self.touched).into_iter().collect()
    }

    /// A contact's record: the contact and its sessions.
    pub fn contact_record(&self, address: &Address) -> Option<ContactRecord> {
        let contact = self.contacts.get(address)?.clone();
        let sessions = self
            .sessions
            .get(address)
            .map(|s| s.iter().map(olm::Session::pickle).collect())
            .unwrap_or_default();
        Some(ContactRecord { contact, sessions })
    }

    /// This account's address.
    pub fn address(&self) -> Address {
        self.account.address()
    }

    /// This account's Olm identity key.
    pub fn curve_key(&self) -> [u8; 32] {
        self.account.curve_key()
    }

    /// The name the user goes by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The account (for its identity seed).
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// Counters.
    pub fn stats(&self) -> &MessengerStats {
        &self.stats
    }

    /// Contacts, by address.
    pub fn contacts(&self) -> impl Iterator<Item = &Contact> {
        self.contacts.values()
    }

    /// One contact.
    pub fn contact(&self, address: &Address) -> Option<&Contact> {
        self.contacts.get(address)
    }

    /// Finds a contact by name (exact, then case-insensitive) or address.
    pub fn find_contact(&self, name_or_address: &str) -> Option<&Contact> {
        if let Ok(a) = name_or_address.parse::<Address>() {
            return self.contacts.get(&a);
        }
        self.contacts
            .values()
            .find(|c| c.name == name_or_address)
            .or_else(|| {
                self.contacts
                    .values()
                    .find(|c| c.name.eq_ignore_ascii_case(name_or_address))
            })
    }

    /// State of a message this client sent, while it is remembered.
    pub fn message_state(&self, id: &MessageId) -> Option<MessageState> {
        self.outgoing.get(id).map(|m| m.state)
    }

    /// Takes the network's advisory (verified by the caller against the
    /// network's advisory key) if it is newer than the one held, and warns
    /// about every contact whose version it lists.
    pub fn set_advisory(&mut self, advisory: crate::advisory::Advisory) {
        if self
            .advisory
            .as_ref()
            .is_some_and(|a| a.body.sequence >= advisory.body.sequence)
        {
            return;
        }
        self.advisory = Some(advisory);
        let all: Vec<Address> = self.contacts.keys().copied().collect();
        for a in all {
            self.check_version(a);
        }
    }

    /// Whether the advisory lists this contact's version.
    pub fn runs_unsafe_version(&self, contact: &Contact) -> bool {
        match (&self.advisory, &contact.client_version) {
            (Some(a), Some(v)) => a.lists(v),
            _ => false,
        }
    }

    fn check_version(&mut self, address: Address) {
        let Some(c) = self.contacts.get(&address) else {
            return;
        };
        if !self.runs_unsafe_version(c) || c.warned_version == c.client_version {
            return;
        }
        let version = c.client_version.clone().unwrap_or_default();
        self.touched.insert(address);
        if let Some(c) = self.contacts.get_mut(&address) {
            c.warned_version = Some(version.clone());
        }
        self.dirty = true;
        self.events.push_back(MessengerEvent::UnsafeVersion {
            contact: address,
            version,
        });
    }

    /// Sets this client's mixnet address (what contacts reply to); needed
    /// before anything is published or requested.
    pub fn set_mixnet_address(&mut self, address: ClientAddress) {
        if self.mixnet.as_ref() != Some(&address) {
            self.mixnet = Some(address);
            self.next_publish = None;
        }
    }

    /// Adds a contact and asks them to talk, with an optional first text.
    pub fn add_contact(
        &mut self,
        now: Time,
        address: Address,
        name: &str,
        text: Option<&str>,
    ) -> Result<(), SessionError> {
        if address == self.address() {
            return Err(SessionError::Invalid("that is your own address"));
        }
        if let Some(text) = text
            && text.len() > MAX_TEXT
        {
            return Err(SessionError::TooLarge {
                what: "text",
                actual: text.len(),
                max: MAX_TEXT,
            });
        }
        let name = self.check_name(name, Some(&address))?;
        match self.contacts.get(&address).map(|c| c.state) {
            None | Some(ContactState::DeniedByThem) => {}
            Some(ContactState::RequestReceived) => {
                return Err(SessionError::Invalid(
                    "they already asked you: accept their request instead",
                ));
            }
            Some(_) => return Err(SessionError::Invalid("already a contact")),
        }
        if self.contacts.len() >= MAX_CONTACTS {
            return Err(SessionError::Invalid("too many contacts"));
        }
        self.touched.insert(address);
        self.contacts.insert(
            address,
            Contact {
                address,
                name,
                state: ContactState::LookingUp,
                curve_key: None,
                mixnet: None,
                client_version: None,
                verified: false,
                key_changed: false,
                request_text: text.map(String::from),
                warned_version: None,
                receipts: Vec::new(),
                next_seq_out: 1,
                next_seq_in: 1,
                held: BTreeMap::new(),
                seen_ahead: Vec::new(),
                lookup_at: Some(now),
                lookups_failed: 0,
            },
        );
        self.dirty = true;
        self.lookup(now, address);
        Ok(())
    }

    fn check_name(
        &self,
        name: &str,
        for_address: Option<&Address>,
    ) -> Result<String, SessionError> {
        let name = name.trim();
        if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
            return Err(SessionError::Invalid(
                "a contact name is 1 to 64 characters, no control characters",
            ));
        }
        if name.parse::<Address>().is_ok() {
            return Err(SessionError::Invalid("a contact name cannot be an address"));
        }
        if self
            .contacts
            .values()
            .any(|c| c.name == name && Some(&c.address) != for_address)
        {
            return Err(SessionError::Invalid("another contact has that name"));
        }
        Ok(name.into())
    }

    fn lookup(&mut self, now: Time, address: Address) {
        let period = period_at(now, self.config.descriptor_period);
        let keys = [period, period.saturating_sub(1)]
            .into_iter()
            .map(|p| (p, descriptor_dht_key(&self.config.network, &address, p)))
            .collect();
        self.touched.insert(address);
        if let Some(c) = self.contacts.get_mut(&address) {
            c.lookup_at = None;
        }
        self.actions.push_back(Action::Lookup { address, keys });
    }

    /// A DHT value found under one of the keys of an [`Action::Lookup`].
    pub fn handle_descriptor(&mut self, now: Time, address: Address, period: u64, value: &[u8]) {
        let descriptor = match open_descriptor(&self.config.network, &address, period, value)
            .and_then(|plain| {
                AccountDescriptor::decode_verified(&plain, &self.config.network, &address, now)
            }) {
            Ok(d) => d,
            Err(_) => {
                self.stats.bad_descriptors += 1;
                return;
            }
        };
        self.touched.insert(address);
        let Some(contact) = self.contacts.get_mut(&address) else {
            return;
        };
        if contact.state != ContactState::LookingUp {
            return;
        }
        let body = descriptor.body;
        contact.curve_key = Some(body.curve_key);
        contact.mixnet = Some(body.mixnet.clone());
        contact.client_version = Some(body.client_version.clone());
        // Their fallback key, never a one-time key: another stranger may
        // have picked the same one-time key from the same descriptor, and
        // then this request could not be read (see `account`).
        let session = match self
            .account
            .outbound_session(&body.curve_key, &body.fallback_key)
        {
            Ok(s) => s,
            Err(_) => {
                self.stats.bad_descriptors += 1;
                return;
            }
        };
        self.touched.insert(address);
        self.sessions.insert(address, vec![session]);
        let Some(reply) = self.mixnet.clone() else {
            return;
        };
        let request = RequestBody {
            name: self.name.clone(),
            text: contact.request_text.clone(),
            reply,
        };
        let Ok(body) = postcard::to_stdvec(&request) else {
            return;
        };
        contact.state = ContactState::RequestSent;
        contact.lookups_failed = 0;
        self.dirty = true;
        if self
            .send_envelope(now, address, Kind::ContactRequest, body, true)
            .is_err()
        {
            // Too much in flight: look up and try again later.
            let retry = self.config.lookup_retry;
            self.touched.insert(address);
            if let Some(c) = self.contacts.get_mut(&address) {
                c.state = ContactState::LookingUp;
                c.lookup_at = Some(now + retry);
            }
        }
    }

    /// The lookup of `address` ended; if no descriptor was usable, it is
    /// tried again later.
    pub fn handle_lookup_done(&mut self, now: Time, address: Address) {
        let (first, most) = (self.config.first_lookup_retry, self.config.lookup_retry);
        self.touched.insert(address);
        if let Some(c) = self.contacts.get_mut(&address)
            && c.state == ContactState::LookingUp
        {
            c.lookups_failed = c.lookups_failed.saturating_add(1);
            let doublings = c.lookups_failed.saturating_sub(1).min(16);
            let retry = first.saturating_mul(1 << doublings).min(most);
            c.lookup_at = Some(now + retry);
            self.dirty = true;
            // Said once, then every tenth time: not on every quick retry.
            if c.lookups_failed % 10 == 1 {
                self.events
                    .push_back(MessengerEvent::LookupFailed { contact: address });
            }
        }
    }

    /// Accepts a contact request.
    pub fn accept(&mut self, now: Time, address: &Address) -> Result<(), SessionError> {
        let c = self.request_from(address)?;
        c.state = ContactState::Accepted;
        self.dirty = true;
        self.send_envelope(now, *address, Kind::Accept, Vec::new(), false)
            .map(|_| ())
    }

    /// Denies a contact request; the sender is told.
    pub fn deny(&mut self, now: Time, address: &Address) -> Result<(), SessionError> {
        let c = self.request_from(address)?;
        c.state = ContactState::Denied;
        self.dirty = true;
        self.send_envelope(now, *address, Kind::Deny, Vec::new(), false)
            .map(|_| ())
    }

    /// Ignores a contact request; nobody is told, and nothing from them is
    /// shown.
    pub fn ignore(&mut self, address: &Address) -> Result<(), SessionError> {
        let c = self.request_from(address)?;
        c.state = ContactState::Ignored;
        self.dirty = true;
        Ok(())
    }

    fn request_from(&mut self, address: &Address) -> Result<&mut Contact, SessionError> {
        self.touched.insert(*address);
        match self.contacts.get_mut(address) {
            Some(c) if c.state == ContactState::RequestReceived => Ok(c),
            Some(_) => Err(SessionError::Invalid("no open request from this contact")),
            None => Err(SessionError::Invalid("no such contact")),
        }
    }

    /// Renames a contact.
    pub fn rename(&mut self, address: &Address, name: &str) -> Result<(), SessionError> {
        let name = self.check_name(name, Some(address))?;
        self.touched.insert(*address);
        let c = self
            .contacts
            .get_mut(address)
            .ok_or(SessionError::Invalid("no such contact"))?;
        c.name = name;
        self.dirty = true;
        Ok(())
    }

    /// Marks a contact verified (the user compared safety numbers), which
    /// also clears a key-change warning.
    pub fn set_verified(&mut self, address: &Address, verified: bool) -> Result<(), SessionError> {
        self.touched.insert(*address);
        let c = self
            .contacts
            .get_mut(address)
            .ok_or(SessionError::Invalid("no such contact"))?;
        if c.curve_key.is_none() {
            return Err(SessionError::Invalid(
                "their keys are not known yet: wait for their answer",
            ));
        }
        c.verified = verified;
        if verified {
            c.key_changed = false;
        }
        self.dirty = true;
        Ok(())
    }

    /// The safety number with a contact, once their keys are known.
    pub fn safety_number(&self, address: &Address) -> Option<crate::safety::SafetyNumber> {
        let c = self.contacts.get(address)?;
        let theirs = c.curve_key?;
        Some(crate::safety::safety_number(
            (&self.address(), &self.curve_key()),
            (address, &theirs),
        ))
    }

    /// Sends a text to an accepted contact.
    ///
    /// Fails with [`SessionError::TooLarge`] for a text over [`MAX_TEXT`]
    /// bytes, and with [`SessionError::Invalid`] if `to` is not an accepted
    /// contact or too many messages are in flight.
    pub fn send_text(
        &mut self,
        now: Time,
        to: &Address,
        text: &str,
    ) -> Result<MessageId, SessionError> {
        self.check_conversation(to, "text", text.len(), MAX_TEXT)?;
        self.send_envelope(now, *to, Kind::Text, text.as_bytes().to_vec(), false)
    }

    /// Sends a payload of the community layer (an invite, a join request)
    /// to an accepted contact, inside the end-to-end session: it is part of
    /// the numbered conversation like a text (shown in order, confirmed,
    /// sent again, its states reported as [`MessengerEvent::MessageState`])
    /// and comes out on the other side as [`MessengerEvent::Community`].
    ///
    /// At most [`MAX_COMMUNITY`] (16 KiB) bytes; larger fails with
    /// [`SessionError::TooLarge`]. Fails with [`SessionError::Invalid`] if
    /// `to` is not an accepted contact or too many messages are in flight.
    pub fn send_community(
        &mut self,
        now: Time,
        to: &Address,
        body: Vec<u8>,
    ) -> Result<MessageId, SessionError> {
        self.check_conversation(to, "community payload", body.len(), MAX_COMMUNITY)?;
        self.send_envelope(now, *to, Kind::Community, body, false)
    }

    /// Whether `len` bytes of `what` (at most `max`) may go to `to` in the
    /// numbered conversation: only to an accepted contact.
    fn check_conversation(
        &self,
        to: &Address,
        what: &'static str,
        len: usize,
        max: usize,
    ) -> Result<(), SessionError> {
        if len > max {
            return Err(SessionError::TooLarge {
                what,
                actual: len,
                max,
            });
        }
        match self.contacts.get(to).map(|c| c.state) {
            Some(ContactState::Accepted) => {}
            Some(ContactState::LookingUp | ContactState::RequestSent) => {
                return Err(SessionError::Invalid(
                    "they have not accepted your request yet",
                ));
            }
            Some(ContactState::RequestReceived) => {
                return Err(SessionError::Invalid("accept their request first"));
            }
            Some(_) => return Err(SessionError::Invalid("this contact is not accepted")),
            None => return Err(SessionError::Invalid("no such contact")),
        }
        Ok(())
    }

    fn send_envelope(
        &mut self,
        now: Time,
        to: Address,
        kind: Kind,
        body: Vec<u8>,
        stamped: bool,
    ) -> Result<MessageId, SessionError> {
        if self.outgoing.len() >= MAX_OUTGOING {
            return Err(SessionError::Invalid(
                "too many messages in flight: wait for some to be delivered",
            ));
        }
        self.touched.insert(to);
        let contact = self
            .contacts
            .get_mut(&to)
            .ok_or(SessionError::Invalid("no such contact"))?;
        let session = self
            .sessions
            .get_mut(&to)
            .and_then(|s| s.first_mut())
            .ok_or(SessionError::Invalid("no session with this contact"))?;
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        // Receipts are outside the numbered conversation: they are applied
        // at once, never held back, and never leave a gap.
        let seq = if kind == Kind::Receipt {
            0
        } else {
            contact.next_seq_out
        };
        let envelope = Envelope {
            kind,
            id,
            seq,
            timestamp: now,
            client_version: self.config.client_version.clone(),
            body,
        };
        let plain = envelope.encode()?;
        let message = session
            .encrypt(&plain)
            .map_err(|_| SessionError::Invalid("encryption failed"))?;
        if kind != Kind::Receipt {
            contact.next_seq_out += 1;
        }
        let frame = self.frame(message);
        if kind == Kind::Receipt {
            // Untracked and unacknowledged: a receipt that is lost costs a
            // resend of the message it confirms, which brings another.
            self.transmit_frame(id, to, &frame, 1, false)?;
            return Ok(id);
        }
        self.outgoing.insert(
            id,
            OutMessage {
                to,
                state: MessageState::Queued,
                fragments: 0,
                acked: Vec::new(),
                bodies: Vec::new(),
                envelope: if needs_receipt(kind) {
                    plain.clone()
                } else {
                    Vec::new()
                },
                sends: 1,
                resend_at: None,
                created: now,
                mixnet_gave_up: false,
            },
        );
        self.dirty = true;
        if stamped && self.config.stamp_difficulty > 0 {
            let Frame::PreKey { message, .. } = &frame else {
                return Err(SessionError::Invalid("a request must start a session"));
            };
            let day = day_of(now);
            let challenge =
                stamp_challenge(&self.config.network, &to, &self.address(), day, message);
            let job = self.next_job;
            self.next_job += 1;
            self.stamp_jobs.insert(
                job,
                StampJob {
                    to,
                    message: id,
                    day,
                    frame,
                },
            );
            self.actions.push_back(Action::MintStamp {
                job,
                challenge,
                day,
                difficulty: self.config.stamp_difficulty,
            });
        } else {
            self.transmit(id, to, &frame)?;
        }
        Ok(id)
    }

    /// The frame that carries an Olm message: a session's first messages
    /// name the sender's keys and prove they belong to its address.
    fn frame(&self, message: olm::OlmMessage) -> Frame {
        match message {
            olm::OlmMessage::PreKey(m) => Frame::PreKey {
                sender: self.account.address(),
                curve_key: self.account.curve_key(),
                binding: self.account.binding(&self.config.network).to_vec(),
                stamp: None,
                message: m.to_bytes(),
            },
            olm::OlmMessage::Normal(m) => Frame::Normal {
                sender: self.account.address(),
                message: m.to_bytes(),
            },
        }
    }

    /// A stamp minted for an [`Action::MintStamp`].
    pub fn handle_stamp(&mut self, job: u64, stamp: Stamp) {
        let Some(StampJob {
            to,
            message,
            mut frame,
            ..
        }) = self.stamp_jobs.remove(&job)
        else {
            return;
        };
        if let Frame::PreKey { stamp: s, .. } = &mut frame {
            *s = Some(stamp);
        }
        if self.transmit(message, to, &frame).is_err() {
            self.set_state(message, MessageState::Failed);
        }
    }

    fn transmit(&mut self, id: MessageId, to: Address, frame: &Frame) -> Result<(), SessionError> {
        let sends = self.outgoing.get(&id).map_or(1, |m| m.sends);
        let bodies = self.transmit_frame(id, to, frame, sends, true)?;
        let count = u16::try_from(bodies.len()).unwrap_or(u16::MAX);
        if let Some(m) = self.outgoing.get_mut(&id) {
            m.fragments = count;
            m.acked = vec![false; bodies.len()];
            m.bodies = bodies;
        }
        self.set_state(id, MessageState::Sent);
        Ok(())
    }

    /// Fragments a frame and hands the fragments out; their encodings.
    fn transmit_frame(
        &mut self,
        id: MessageId,
        to: Address,
        frame: &Frame,
        sends: u32,
        acknowledged: bool,
    ) -> Result<Vec<Vec<u8>>, SessionError> {
        let mixnet = self
            .contacts
            .get(&to)
            .and_then(|c| c.mixnet.clone())
            .ok_or(SessionError::Invalid(
                "the contact's mixnet address is unknown",
            ))?;
        let bytes = postcard::to_stdvec(frame).map_err(|e| SessionError::Malformed {
            what: "frame",
            detail: e.to_string(),
        })?;
        // Each send gets its own transport id: the recipient's reassembler
        // remembers completed ids, and a message sent again (encrypted
        // anew) must not be taken for a copy of the first send.
        let mut h = blake3::Hasher::new_derive_key("chainmail transport id v1");
        h.update(&id);
        h.update(&sends.to_le_bytes());
        let mut transport = [0u8; 16];
        transport.copy_from_slice(&h.finalize().as_bytes()[..16]);
        let fragments = fragment(transport, &bytes, self.config.max_fragment)?;
        let count = u16::try_from(fragments.len()).unwrap_or(u16::MAX);
        let bodies = fragments
            .iter()
            .map(Fragment::encode)
            .collect::<Result<Vec<_>, _>>()?;
        for (index, body) in (0..count).zip(&bodies) {
            self.actions.push_back(Action::Transmit {
                tag: FragmentTag { message: id, index },
                to: mixnet.clone(),
                body: body.clone(),
                acknowledged,
            });
        }
        Ok(bodies)
    }

    /// After a restart: fragments not yet acknowledged are handed to the
    /// mixnet again (the recipient drops what it already has), and stamps
    /// that were being minted are asked for again.
    fn resume(&mut self) {
        self.mixnet_ids.clear();
        let mut again = Vec::new();
        for (id, m) in &self.outgoing {
            let Some(mixnet) = self.contacts.get(&m.to).and_then(|c| c.mixnet.clone()) else {
                continue;
            };
            for ((index, body), acked) in (0u16..).zip(&m.bodies).zip(&m.acked) {
                if !acked {
                    again.push(Action::Transmit {
                        tag: FragmentTag {
                            message: *id,
                            index,
                        },
                        to: mixnet.clone(),
                        body: body.clone(),
                        acknowledged: true,
                    });
                }
            }
        }
        self.actions.extend(again);
        for (job, j) in &self.stamp_jobs {
            let Frame::PreKey { message, .. } = &j.frame else {
                continue;
            };
            self.actions.push_back(Action::MintStamp {
                job: *job,
                challenge: stamp_challenge(
                    &self.config.network,
                    &j.to,
                    &self.account.address(),
                    j.day,
                    message,
                ),
                day: j.day,
                difficulty: self.config.stamp_difficulty,
            });
        }
    }

    /// The mixnet client took the fragment `tag` as its message `mixnet_id`.
    pub fn handle_transmitted(&mut self, tag: FragmentTag, mixnet_id: [u8; 16]) {
        self.mixnet_ids.insert(mixnet_id, tag);
        self.dirty = true;
    }

    /// The mixnet client could not take the fragment (queue full, bad
    /// address): the message failed.
    pub fn handle_transmit_failed(&mut self, tag: FragmentTag) {
        self.set_state(tag.message, MessageState::Failed);
    }

    /// The mixnet client's acknowledgement of `mixnet_id` came back.
    pub fn handle_mixnet_delivered(&mut self, mixnet_id: &[u8; 16]) {
        let Some(tag) = self.mixnet_ids.remove(mixnet_id) else {
            return;
        };
        self.dirty = true;
        let Some(m) = self.outgoing.get_mut(&tag.message) else {
            return;
        };
        if let Some(a) = m.acked.get_mut(usize::from(tag.index)) {
            *a = true;
        }
        if m.state == MessageState::Sent && m.acked.iter().all(|a| *a) {
            // Receipts and requests get no receipt: for them, reaching the
            // recipient's client is the end.
            let end = if m.envelope.is_empty() {
                MessageState::Delivered
            } else {
                MessageState::Stored
            };
            self.set_state(tag.message, end);
        }
    }

    /// The mixnet client gave up on `mixnet_id`. A message that gets a
    /// receipt is not failed for that: its copies may wait in the
    /// recipient's mailboxes, and it is sent again later
    /// (`offline_resend_after`) until a receipt comes or `max_wait` passes.
    pub fn handle_mixnet_failed(&mut self, mixnet_id: &[u8; 16]) {
        let Some(tag) = self.mixnet_ids.remove(mixnet_id) else {
            return;
        };
        self.dirty = true;
        match self.outgoing.get_mut(&tag.message) {
            Some(m) if !m.envelope.is_empty() => {
                if !m.mixnet_gave_up {
                    m.mixnet_gave_up = true;
                    m.resend_at = None;
                }
            }
            _ => self.set_state(tag.message, MessageState::Failed),
        }
    }

    fn set_state(&mut self, id: MessageId, state: MessageState) {
        let Some(m) = self.outgoing.get_mut(&id) else {
            return;
        };
        if m.state == state || m.state == MessageState::Failed || m.state == MessageState::Delivered
        {
            return;
        }
        m.state = state;
        let to = m.to;
        if matches!(state, MessageState::Delivered | MessageState::Failed) {
            self.outgoing.remove(&id);
            self.mixnet_ids.retain(|_, t| t.message != id);
        }
        self.dirty = true;
        self.events
            .push_back(MessengerEvent::MessageState { id, to, state });
    }

    /// A message the mixnet client received (one fragment).
    pub fn handle_received(&mut self, now: Time, body: &[u8]) {
        let Ok(fragment) = Fragment::decode(body) else {
            self.stats.malformed += 1;
            return;
        };
        let evicted = self.reassembler.stats().evicted;
        let inserted = self.reassembler.insert(now, (), fragment);
        self.stats.partial_messages_evicted += self.reassembler.stats().evicted - evicted;
        let bytes = match inserted {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        let frame: Frame = match postcard::from_bytes(&bytes) {
            Ok(f) => f,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        let (sender, plain) = match frame {
            Frame::PreKey {
                sender,
                curve_key,
                binding,
                stamp,
                message,
            } => match self.open_pre_key(now, sender, curve_key, &binding, stamp, &message) {
                Some(plain) => (sender, plain),
                None => return,
            },
            Frame::Normal { sender, message } => {
                let Ok(m) = olm::Message::from_bytes(&message) else {
                    self.stats.malformed += 1;
                    return;
                };
                match self.decrypt_with_sessions(&sender, &olm::OlmMessage::Normal(m)) {
                    Some(plain) => (sender, plain),
                    None => {
                        self.stats.undecryptable += 1;
                        return;
                    }
                }
            }
        };
        self.dirty = true;
        let envelope = match Envelope::decode(&plain) {
            Ok(e) => e,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        self.handle_envelope(now, sender, envelope);
    }

    fn decrypt_with_sessions(
        &mut self,
        sender: &Address,
        message: &olm::OlmMessage,
    ) -> Option<Vec<u8>> {
        self.touched.insert(*sender);
        let sessions = self.sessions.get_mut(sender)?;
        // The session that opens it becomes the one we send with, so two
        // sides that started sessions at once settle on one.
        for i in 0..sessions.len() {
            if let Ok(plain) = sessions[i].decrypt(message) {
                let s = sessions.remove(i);
                sessions.insert(0, s);
                return Some(plain);
            }
        }
        None
    }

    fn open_pre_key(
        &mut self,
        now: Time,
        sender: Address,
        curve_key: [u8; 32],
        binding: &[u8],
        stamp: Option<Stamp>,
        message: &[u8],
    ) -> Option<Vec<u8>> {
        let Ok(binding) = <[u8; 64]>::try_from(binding) else {
            self.stats.malformed += 1;
            return None;
        };
        if verify_binding(&sender, &self.config.network, &curve_key, &binding).is_err() {
            self.stats.rejected_binding += 1;
            return None;
        }
        let state = self.contacts.get(&sender).map(|c| c.state);
        match state {
            Some(ContactState::Denied | ContactState::Ignored) => {
                self.stats.from_blocked += 1;
                return None;
            }
            Some(_) => {}
            None => {
                // A stranger: the request must carry work.
                let today = day_of(now);
                let ok = stamp.is_some_and(|s| {
                    stamp_fresh(s.day, today)
                        && s.verify(
                            &stamp_challenge(
                                &self.config.network,
                                &self.address(),
                                &sender,
                                s.day,
                                message,
                            ),
                            self.config.stamp_difficulty,
                        )
                });
                if !ok && self.config.stamp_difficulty > 0 {
                    self.stats.rejected_stamp += 1;
                    return None;
                }
            }
        }
        let Ok(pre_key) = olm::PreKeyMessage::from_bytes(message) else {
            self.stats.malformed += 1;
            return None;
        };
        // A later first-message of a session we already have (the sender has
        // not heard from us yet): decrypt with that session.
        self.touched.insert(sender);
        if let Some(sessions) = self.sessions.get_mut(&sender)
            && let Some(i) = sessions
                .iter()
                .position(|s| s.session_keys() == pre_key.session_keys())
        {
            let plain = sessions[i].decrypt(&olm::OlmMessage::PreKey(pre_key)).ok();
            if plain.is_none() {
                self.stats.undecryptable += 1;
            } else {
                let s = sessions.remove(i);
                sessions.insert(0, s);
            }
            return plain;
        }
        let (session, plain) = match self.account.inbound_session(&curve_key, &pre_key) {
            Ok(r) => r,
            Err(_) => {
                self.stats.undecryptable += 1;
                return None;
            }
        };
        self.touched.insert(sender);
        let sessions = self.sessions.entry(sender).or_default();
        sessions.insert(0, session);
        sessions.truncate(MAX_SESSIONS);
        self.touched.insert(sender);
        if let Some(c) = self.contacts.get_mut(&sender) {
            match c.curve_key {
                Some(old) if old != curve_key => {
                    c.curve_key = Some(curve_key);
                    c.verified = false;
                    c.key_changed = true;
                    // A new device counts its messages from the start, and
                    // ours to it start again too.
                    c.next_seq_in = 1;
                    c.next_seq_out = 1;
                    c.held.clear();
                    c.seen_ahead.clear();
                    self.events
                        .push_back(MessengerEvent::KeyChanged { contact: sender });
                }
                Some(_) => {}
                None => c.curve_key = Some(curve_key),
            }
        }
        Some(plain)
    }

    fn handle_envelope(&mut self, now: Time, sender: Address, envelope: Envelope) {
        if envelope.kind == Kind::ContactRequest && !self.contacts.contains_key(&sender) {
            return self.new_request(sender, envelope);
        }
        self.touched.insert(sender);
        let Some(c) = self.contacts.get_mut(&sender) else {
            self.stats.hidden += 1;
            return;
        };
        if c.client_version.as_deref() != Some(envelope.client_version.as_str()) {
            c.client_version = Some(envelope.client_version.clone());
            self.check_version(sender);
        }
        self.touched.insert(sender);
        let Some(c) = self.contacts.get_mut(&sender) else {
            return;
        };
        if envelope.kind == Kind::Receipt {
            return self.apply(now, sender, envelope);
        }
        // The session opened it: say so (again, if it is a copy whose
        // receipt was lost).
        if needs_receipt(envelope.kind) && c.state != ContactState::Denied {
            c.receipts.push((now, envelope.id));
        }
        // Order: envelopes are numbered by the sender per conversation.
        if envelope.seq < c.next_seq_in || c.seen_ahead.contains(&envelope.seq) {
            self.stats.duplicates += 1;
            return;
        }
        if envelope.seq > c.next_seq_in {
            if c.held.len() >= MAX_HELD || c.held.contains_key(&envelope.seq) {
                self.stats.duplicates += 1;
                return;
            }
            let Ok(bytes) = envelope.encode() else {
                self.stats.malformed += 1;
                return;
            };
            c.held.insert(envelope.seq, (now, bytes));
            return;
        }
        c.next_seq_in += 1;
        self.apply(now, sender, envelope);
        self.release_held(sender, now, false);
    }

    /// Applies the held envelopes that are next in line (or, when `skip` is
    /// set, the oldest ones even across a gap).
    fn release_held(&mut self, sender: Address, now: Time, skip: bool) {
        loop {
            self.touched.insert(sender);
            let Some(c) = self.contacts.get_mut(&sender) else {
                return;
            };
            let Some((&seq, (held_at, _))) = c.held.iter().next() else {
                return;
            };
            let overdue = skip && now.saturating_since(*held_at) >= self.config.reorder_timeout;
            if seq != c.next_seq_in && !overdue {
                return;
            }
            if seq != c.next_seq_in {
                self.stats.gaps_skipped += 1;
            }
            let Some((_, bytes)) = c.held.remove(&seq) else {
                return;
            };
            c.next_seq_in = seq + 1;
            if let Ok(envelope) = Envelope::decode(&bytes) {
                self.apply(now, sender, envelope);
            }
        }
    }

    fn new_request(&mut self, sender: Address, envelope: Envelope) {
        let Ok(request) = postcard::from_bytes::<RequestBody>(&envelope.body) else {
            self.stats.malformed += 1;
            return;
        };
        if request.reply.validate().is_err() {
            self.stats.malformed += 1;
            return;
        }
        if self.contacts.len() >= MAX_CONTACTS {
            self.stats.requests_refused_full += 1;
            return;
        }
        // Their suggested name, made unique among the contacts: with a
        // piece of their address if it is taken, so that a thousand
        // requests all named "bob" cost one scan each, not a thousand.
        let base = sanitize_name(&request.name);
        let taken = |name: &str| self.contacts.values().any(|c| c.name == name);
        let mut name = base.clone();
        if taken(&name) {
            name = format!("{base}-{}", sender.short());
            let mut n = 2;
            while taken(&name) {
                name = format!("{base}-{}-{n}", sender.short());
                n += 1;
            }
        }
        let curve_key = self
            .sessions
            .get(&sender)
            .and_then(|s| s.first().map(|s| s.session_keys().identity_key.to_bytes()));
        let text = request.text.map(|t| truncate(&t, MAX_TEXT));
        self.touched.insert(sender);
        self.contacts.insert(
            sender,
            Contact {
                address: sender,
                name: name.clone(),
                state: ContactState::RequestReceived,
                curve_key,
                mixnet: Some(request.reply),
                client_version: Some(envelope.client_version),
                verified: false,
                key_changed: false,
                request_text: text.clone(),
                warned_version: None,
                receipts: Vec::new(),
                next_seq_out: 1,
                next_seq_in: envelope.seq + 1,
                held: BTreeMap::new(),
                seen_ahead: Vec::new(),
                lookup_at: None,
                lookups_failed: 0,
            },
        );
        self.dirty = true;
        self.events.push_back(MessengerEvent::ContactRequest {
            from: sender,
            name,
            text,
        });
        self.check_version(sender);
    }

    fn apply(&mut self, now: Time, sender: Address, envelope: Envelope) {
        self.touched.insert(sender);
        let Some(c) = self.contacts.get_mut(&sender) else {
            return;
        };
        self.dirty = true;
        match (envelope.kind, c.state) {
            (Kind::Accept, ContactState::RequestSent | ContactState::DeniedByThem) => {
                c.state = ContactState::Accepted;
                self.events
                    .push_back(MessengerEvent::ContactAccepted { contact: sender });
            }
            (Kind::Deny, ContactState::RequestSent) => {
                c.state = ContactState::DeniedByThem;
                self.events
                    .push_back(MessengerEvent::ContactDenied { contact: sender });
            }
            (Kind::Receipt, _) => {
                for id in envelope.body.chunks_exact(16) {
                    let Ok(id) = <MessageId>::try_from(id) else {
                        continue;
                    };
                    if self.outgoing.get(&id).is_some_and(|m| m.to == sender) {
                        self.set_state(id, MessageState::Delivered);
                    }
                }
            }
            (Kind::Text, ContactState::Accepted) => {
                let text = String::from_utf8_lossy(&envelope.body).into_owned();
                self.events.push_back(MessengerEvent::Message {
                    from: sender,
                    id: envelope.id,
                    seq: envelope.seq,
                    sent_at: envelope.timestamp,
                    text,
                });
            }
            (Kind::Community, ContactState::Accepted) => {
                self.events.push_back(MessengerEvent::Community {
                    from: sender,
                    id: envelope.id,
                    seq: envelope.seq,
                    sent_at: envelope.timestamp,
                    body: envelope.body,
                });
            }
            (
                Kind::ContactRequest,
                ContactState::Accepted | ContactState::RequestSent | ContactState::LookingUp,
            ) => {
                // Both asked each other at once, or they lost their state and
                // ask again: they are welcome, so answer with an acceptance
                // on their session.
                if let Ok(request) = postcard::from_bytes::<RequestBody>(&envelope.body)
                    && request.reply.validate().is_ok()
                {
                    c.mixnet = Some(request.reply);
                }
                if c.mixnet.is_none() {
                    self.stats.malformed += 1;
                    return;
                }
                if c.state != ContactState::Accepted {
                    c.state = ContactState::Accepted;
                    c.lookup_at = None;
                    self.events
                        .push_back(MessengerEvent::ContactAccepted { contact: sender });
                }
                let _ = self.send_envelope(now, sender, Kind::Accept, Vec::new(), false);
            }
            _ => self.stats.hidden += 1,
        }
    }

    /// Advances time: retries of lookups, descriptor publication, held
    /// messages whose gap is overdue.
    pub fn handle_timeout(&mut self, now: Time) {
        let due: Vec<Address> = self
            .contacts
            .values()
            .filter(|c| c.state == ContactState::LookingUp && c.lookup_at.is_some_and(|t| t <= now))
            .map(|c| c.address)
            .collect();
        for a in due {
            self.lookup(now, a);
        }
        let with_held: Vec<Address> = self
            .contacts
            .values()
            .filter(|c| !c.held.is_empty())
            .map(|c| c.address)
            .collect();
        for a in with_held {
            self.release_held(a, now, true);
        }
        self.send_receipts(now);
        self.resend_overdue(now);
        self.reassembler.expire(now);
        if self.mixnet.is_some() && self.next_publish.is_none_or(|t| t <= now) {
            self.publish(now);
        }
    }

    /// Sends each contact one envelope confirming the messages of theirs
    /// that came in at least `receipt_delay` ago.
    fn send_receipts(&mut self, now: Time) {
        let delay = self.config.receipt_delay;
        let due: Vec<Address> = self
            .contacts
            .values()
            .filter(|c| {
                c.receipts
                    .first()
                    .is_some_and(|(t, _)| now.saturating_since(*t) >= delay)
            })
            .map(|c| c.address)
            .collect();
        for address in due {
            self.touched.insert(address);
            let Some(c) = self.contacts.get_mut(&address) else {
                continue;
            };
            let take = c.receipts.len().min(MAX_RECEIPTS);
            let ids: Vec<MessageId> = c.receipts.drain(..take).map(|(_, id)| id).collect();
            let body: Vec<u8> = ids.iter().flatten().copied().collect();
            self.dirty = true;
            if self
                .send_envelope(now, address, Kind::Receipt, body, false)
                .is_err()
            {
                // Too much in flight: the sender will send again and get a
                // receipt then.
                continue;
            }
        }
    }

    /// Messages that reached the recipient's client but whose receipt did
    /// not come: encrypted again with the current session and sent again,
    /// or failed after `max_sends`.
    fn resend_overdue(&mut self, now: Time) {
        let after = self.config.resend_after;
        let offline = self.config.offline_resend_after;
        let mut due = Vec::new();
        for (id, m) in &mut self.outgoing {
            if m.envelope.is_empty() || !(m.state == MessageState::Stored || m.mixnet_gave_up) {
                continue;
            }
            match m.resend_at {
                None => {
                    let wait = if m.mixnet_gave_up {
                        offline
                    } else {
                        after * m.sends
                    };
                    m.resend_at = Some(now + wait);
                    self.dirty = true;
                }
                Some(t) if t <= now => due.push(*id),
                Some(_) => {}
            }
        }
        for id in due {
            let Some(m) = self.outgoing.get(&id) else {
                continue;
            };
            let (to, sends, envelope) = (m.to, m.sends, m.envelope.clone());
            let too_old = now.saturating_since(m.created) >= self.config.max_wait;
            if too_old || (sends >= self.config.max_sends && !m.mixnet_gave_up) {
                self.set_state(id, MessageState::Failed);
                continue;
            }
            if sends >= self.config.max_sends {
                // Sent often enough: only wait for the receipt now.
                if let Some(m) = self.outgoing.get_mut(&id) {
                    m.resend_at = Some(m.created + self.config.max_wait);
                }
                continue;
            }
            self.touched.insert(to);
            let frame = self
                .sessions
                .get_mut(&to)
                .and_then(|s| s.first_mut())
                .and_then(|s| s.encrypt(&envelope).ok())
                .map(|message| self.frame(message));
            let Some(frame) = frame else {
                self.set_state(id, MessageState::Failed);
                continue;
            };
            if let Some(m) = self.outgoing.get_mut(&id) {
                m.sends += 1;
                m.resend_at = None;
                m.mixnet_gave_up = false;
                m.state = MessageState::Queued;
            }
            self.stats.resent += 1;
            self.mixnet_ids.retain(|_, t| t.message != id);
            if self.transmit(id, to, &frame).is_err() {
                self.set_state(id, MessageState::Failed);
            }
        }
    }

    fn publish(&mut self, now: Time) {
        let Some(mixnet) = self.mixnet.clone() else {
            return;
        };
        let period = self.config.descriptor_period;
        let lifetime = period * 2;
        let Ok(descriptor) = self.account.descriptor(
            now,
            self.config.network,
            mixnet,
            &self.config.client_version,
            lifetime,
        ) else {
            return;
        };
        let Ok(plain) = descriptor.encode() else {
            return;
        };
        let address = self.address();
        let p = period_at(now, period);
        for p in [p, p + 1] {
            let key = descriptor_dht_key(&self.config.network, &address, p);
            let value = seal_descriptor(&mut self.rng, &self.config.network, &address, p, &plain);
            self.actions.push_back(Action::Publish {
                key,
                value,
                expires: descriptor.body.expires,
            });
        }
        self.dirty = true;
        // Again a few times per period, so a lost record is soon replaced.
        self.next_publish = Some(now + period / 8);
    }

    /// When to call [`Messenger::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Time> {
        let lookups = self.contacts.values().filter_map(|c| c.lookup_at);
        let held = self.contacts.values().filter_map(|c| {
            c.held
                .values()
                .next()
                .map(|(t, _)| *t + self.config.reorder_timeout)
        });
        let receipts = self.contacts.values().filter_map(|c| {
            c.receipts
                .first()
                .map(|(t, _)| *t + self.config.receipt_delay)
        });
        let resends = self
            .outgoing
            .values()
            .filter(|m| {
                !m.envelope.is_empty() && (m.state == MessageState::Stored || m.mixnet_gave_up)
            })
            .map(|m| m.resend_at.unwrap_or(Time(0)));
        lookups
            .chain(held)
            .chain(receipts)
            .chain(resends)
            .chain(self.next_publish)
            .min()
            .or(self.mixnet.as_ref().map(|_| Time(0)))
    }

    /// The next thing for the driver to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event for the user.
    pub fn poll_event(&mut self) -> Option<MessengerEvent> {
        self.events.pop_front()
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn sanitize_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .to_string();
    let cleaned = truncate(&cleaned, MAX_NAME - 4);
    if cleaned.is_empty() || cleaned.parse::<Address>().is_ok() {
        "someone".into()
    } else {
        cleaned
    }
}
