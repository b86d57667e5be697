//! What the user asks of the agent and what it shows: the typed requests of
//! the CLI and the local API, the history, sent messages and contacts.

use serde::{Deserialize, Serialize};

use crate::community::CommunityRequest;

/// One entry of the account's history.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HistoryEntry {
    /// Position, from 1.
    pub seq: u64,
    /// When it happened here (ms since the Unix epoch).
    pub at: u64,
    /// `message`, `request`, `accepted`, `denied`, `key-changed`,
    /// `unsafe-version`, `lookup-failed`, `state`, `community-invite` (id:
    /// the invitation's token, text: the community's name).
    pub kind: String,
    /// The contact's address.
    pub contact: String,
    /// The contact's name.
    pub name: String,
    /// Message id (hex), for messages and states.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Text of a message or request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A message's new state, for `state`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The sender's position of a message in the conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}

/// A message this account sent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SentMessage {
    /// Id (hex).
    pub id: String,
    /// Recipient address.
    pub to: String,
    /// Recipient name.
    pub name: String,
    /// The text.
    pub text: String,
    /// queued, sent, delivered, failed.
    pub state: String,
    /// When it was sent (ms).
    pub at: u64,
    /// When its state last changed (ms).
    pub changed: u64,
}

/// A contact as the CLI shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContactView {
    /// Our name for them.
    pub name: String,
    /// Their address.
    pub address: String,
    /// looking-up, request-sent, request-received, accepted, denied, …
    pub state: String,
    /// Whether we compared safety numbers.
    pub verified: bool,
    /// Their keys changed since we last verified them.
    pub key_changed: bool,
    /// The client version their descriptor names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_version: Option<String>,
    /// The text of their contact request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_text: Option<String>,
    /// The network's advisory lists their client version as unsafe.
    pub unsafe_version: bool,
    /// Direct mode with them.
    pub direct: crate::DirectView,
}

/// Requests of the CLI and the local API (`POST /v1/account`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum AccountRequest {
    /// Our address, name and identity key.
    Whoami,
    /// The identity seed, to move the account to a new device.
    ExportIdentity,
    /// Send a contact request.
    ContactAdd {
        /// Their address.
        address: String,
        /// Our name for them.
        name: String,
        /// A message with the request.
        message: Option<String>,
    },
    /// Every contact.
    ContactList,
    /// Contact requests waiting for an answer.
    ContactRequests,
    /// Accept a contact request.
    ContactAccept {
        /// The contact.
        name: String,
    },
    /// Deny a contact request (they are told).
    ContactDeny {
        /// The contact.
        name: String,
    },
    /// Ignore a contact request (they are not told).
    ContactIgnore {
        /// The contact.
        name: String,
    },
    /// Send a text to a contact.
    Send {
        /// The contact's name or address.
        to: String,
        /// The text.
        text: String,
    },
    /// The history after a position.
    Inbox {
        /// Entries after this position.
        after: u64,
    },
    /// The messages we sent, with their states.
    Sent,
    /// A contact's safety number; with `mark`, mark them verified.
    Verify {
        /// The contact.
        name: String,
        /// Mark them verified.
        mark: bool,
    },
    /// A signed advisory (hex) for the agent to check, apply and publish.
    AdvisoryPublish {
        /// The encoded advisory, hex.
        advisory: String,
    },
    /// Turn direct mode with a contact on or off. On: this user agrees
    /// to a direct connection, which starts once the contact agrees too;
    /// each then sees the other's network address. Off: withdraws that,
    /// tells them, and closes the connection.
    ContactDirect {
        /// The contact.
        name: String,
        /// On or off.
        on: bool,
    },
    /// A community request.
    Community {
        /// What to do.
        community: CommunityRequest,
    },
}

/// Who the account is.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Whoami {
    /// The account's address.
    pub address: String,
    /// The name it introduces itself with.
    pub name: String,
    /// Its Olm identity key (hex): changes only with a new device.
    pub olm_identity_key: String,
}

/// The identity seed, to move the account to a new device (secret).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct IdentityExport {
    /// 32 bytes, hex.
    pub identity_seed: String,
}

impl std::fmt::Debug for IdentityExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityExport(…)")
    }
}

/// A contact's new state after a request about them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContactChange {
    /// Our name for them.
    pub name: String,
    /// Their address (for a new contact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `looking-up`, `accepted`, `denied`, `ignored`.
    pub state: String,
}

/// Direct mode with a contact after [`AccountRequest::ContactDirect`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DirectChange {
    /// Our name for them.
    pub name: String,
    /// Where it stands.
    pub direct: crate::DirectView,
}

/// A message handed to the messenger.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Queued {
    /// Its id (hex).
    pub id: String,
    /// Its state: `queued` or `sent`.
    pub state: String,
}

/// A contact's safety number.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SafetyNumberView {
    /// Our name for them.
    pub name: String,
    /// The number, in one line.
    pub safety_number: String,
    /// The number in three lines, to read out.
    pub lines: Vec<String>,
    /// Whether they are marked verified.
    pub verified: bool,
    /// Their keys changed since they were last verified.
    pub key_changed: bool,
}

/// An advisory checked, applied and on its way to the DHT.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdvisoryPublished {
    /// Its sequence number.
    pub sequence: u64,
}

/// The answer to an [`AccountRequest`]; it serializes as the type it holds
/// (the local API's JSON), and whoever asked knows which one to expect.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Response {
    /// [`AccountRequest::Whoami`].
    Whoami(Whoami),
    /// [`AccountRequest::ExportIdentity`].
    IdentityExport(IdentityExport),
    /// Adding, accepting, denying or ignoring a contact.
    Contact(ContactChange),
    /// [`AccountRequest::ContactList`], [`AccountRequest::ContactRequests`].
    Contacts(Vec<ContactView>),
    /// [`AccountRequest::Send`].
    Queued(Queued),
    /// [`AccountRequest::Inbox`].
    History(Vec<HistoryEntry>),
    /// [`AccountRequest::Sent`].
    Sent(Vec<SentMessage>),
    /// [`AccountRequest::Verify`].
    SafetyNumber(SafetyNumberView),
    /// [`AccountRequest::AdvisoryPublish`].
    AdvisoryPublished(AdvisoryPublished),
    /// [`AccountRequest::ContactDirect`]: where direct mode with the
    /// contact stands now.
    Direct(DirectChange),
    /// [`AccountRequest::Community`]: a community's summary, log, members,
    /// export or import report, as JSON.
    Community(serde_json::Value),
}
