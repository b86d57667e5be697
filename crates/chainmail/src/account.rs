//! The node's side of the user's account: the messenger core
//! (`chainmail-session`) with its state in an encrypted vault, its history,
//! and the requests the CLI makes through the local API.
//!
//! Everything about the account lives in the vault `account` of the node's
//! store: the messenger state (keys, sessions, contacts), the history
//! (table `history`, one entry per event, numbered from 1) and the sent
//! messages with their states (table `sent`). A batch of changes is written
//! in one transaction before anything it produced leaves the node.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use chainmail_mixnet::Time;
use chainmail_session::{
    Account, Address, ContactState, MessageState, Messenger, MessengerConfig, MessengerEvent,
    MessengerState,
};
use chainmail_store::{Store, Vault, VaultOp, VaultSecret};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::network::NetworkFile;
use crate::runtime::hex;
use crate::tables::Table;

/// Name of the account's vault in the node's store.
pub(crate) const VAULT: &str = "account";
/// File name of the generated key file in the data directory.
pub(crate) const KEY_FILE: &str = "account.key";

/// How the vault is unlocked: a passphrase file, or a key file.
#[derive(Clone, Debug, Default)]
pub(crate) struct Unlock {
    /// File holding the passphrase (first line).
    pub(crate) passphrase_file: Option<std::path::PathBuf>,
    /// Key file (32 bytes or 64 hex digits).
    pub(crate) key_file: Option<std::path::PathBuf>,
}

impl Unlock {
    /// The secret, from the passphrase file, the key file, or the data
    /// directory's generated key file.
    pub(crate) fn secret(&self, data_dir: &Path) -> Result<VaultSecret> {
        if let Some(path) = &self.passphrase_file {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the passphrase file {}", path.display()))?,
            );
            let line = text.lines().next().unwrap_or("").to_string();
            if line.is_empty() {
                bail!("the passphrase file {} is empty", path.display());
            }
            return Ok(VaultSecret::Passphrase(Zeroizing::new(line)));
        }
        let path = self
            .key_file
            .clone()
            .unwrap_or_else(|| data_dir.join(KEY_FILE));
        let bytes = Zeroizing::new(std::fs::read(&path).with_context(|| {
            format!(
                "reading the key file {} (give --key-file or --passphrase-file)",
                path.display()
            )
        })?);
        VaultSecret::from_key_file_bytes(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))
    }
}

/// The messenger settings a network file implies.
pub(crate) fn messenger_config(network: &NetworkFile) -> MessengerConfig {
    let mut config = MessengerConfig::new(chainmail_mixnet::network_hash(&network.network.id));
    config.client_version = crate::runtime::VERSION.into();
    config.stamp_difficulty = network.accounts.stamp_difficulty;
    config.descriptor_period = Duration::from_secs(
        network
            .accounts
            .descriptor_period_hours
            .saturating_mul(3600),
    );
    config
}

/// `chainmail init`: creates the account in the data directory's store.
pub(crate) fn init(
    data_dir: &Path,
    network: &NetworkFile,
    name: &str,
    unlock: &Unlock,
    identity_file: Option<&Path>,
) -> Result<(Address, Option<std::path::PathBuf>)> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let store = Arc::new(Store::open(&data_dir.join("node.redb")).context(
        "opening the node's database (is a node running on this data directory? stop it first)",
    )?);
    if Vault::exists(&store, VAULT)? {
        bail!(
            "{} already has an account; `chainmail whoami` shows it",
            data_dir.display()
        );
    }
    let mut written_key = None;
    let secret = if unlock.passphrase_file.is_none() && unlock.key_file.is_none() {
        // No secret given: generate a key file next to the data.
        let path = data_dir.join(KEY_FILE);
        let key = chainmail_store::generate_key_file(&mut rand::rng());
        crate::runtime::write_private(&path, chainmail_store::encode_key_file(&key).as_bytes())?;
        written_key = Some(path);
        VaultSecret::KeyFile(key)
    } else {
        unlock.secret(data_dir)?
    };
    let vault = Vault::create(store, VAULT, secret)?;
    let account = match identity_file {
        None => Account::generate(&mut rand::rng()),
        Some(path) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the identity file {}", path.display()))?,
            );
            let seed = Zeroizing::new(
                crate::runtime::unhex_array::<32>(text.trim())
                    .ok_or_else(|| anyhow!("{} must hold 64 hex digits", path.display()))?,
            );
            Account::new(ed25519_dalek::SigningKey::from_bytes(&seed))
        }
    };
    let address = account.address();
    let messenger = Messenger::new(messenger_config(network), account, name, rand::random());
    vault.put(
        Table::Messenger.as_str(),
        b"state",
        &serde_json::to_vec(&messenger.state())?,
    )?;
    Ok((address, written_key))
}

/// One entry of the account's history.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct HistoryEntry {
    /// Position, from 1.
    pub(crate) seq: u64,
    /// When it happened here (ms since the Unix epoch).
    pub(crate) at: u64,
    /// `message`, `request`, `accepted`, `denied`, `key-changed`,
    /// `unsafe-version`, `lookup-failed`, `state`, `community-invite` (id:
    /// the invitation's token, text: the community's name).
    pub(crate) kind: String,
    /// The contact's address.
    pub(crate) contact: String,
    /// The contact's name.
    pub(crate) name: String,
    /// Message id (hex), for messages and states.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    /// Text of a message or request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) text: Option<String>,
    /// A message's new state, for `state`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) state: Option<String>,
    /// The sender's position of a message in the conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) position: Option<u64>,
}

/// A message this account sent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct SentMessage {
    /// Id (hex).
    pub(crate) id: String,
    /// Recipient address.
    pub(crate) to: String,
    /// Recipient name.
    pub(crate) name: String,
    /// The text.
    pub(crate) text: String,
    /// queued, sent, delivered, failed.
    pub(crate) state: String,
    /// When it was sent (ms).
    pub(crate) at: u64,
    /// When its state last changed (ms).
    pub(crate) changed: u64,
}

/// A contact as the CLI shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ContactView {
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) state: String,
    pub(crate) verified: bool,
    pub(crate) key_changed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) client_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) request_text: Option<String>,
    /// The network's advisory lists their client version as unsafe.
    pub(crate) unsafe_version: bool,
}

/// Requests the CLI makes (`POST /v1/account`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub(crate) enum AccountRequest {
    Whoami,
    ExportIdentity,
    ContactAdd {
        address: String,
        name: String,
        message: Option<String>,
    },
    ContactList,
    ContactRequests,
    ContactAccept {
        name: String,
    },
    ContactDeny {
        name: String,
    },
    ContactIgnore {
        name: String,
    },
    Send {
        to: String,
        text: String,
    },
    Inbox {
        after: u64,
    },
    Sent,
    Verify {
        name: String,
        mark: bool,
    },
    /// A signed advisory (hex) for the node to check, apply and store in
    /// the DHT.
    AdvisoryPublish {
        advisory: String,
    },
    /// A community request.
    Community {
        community: crate::community::CommunityRequest,
    },
}

/// The account while the node runs.
pub(crate) struct AccountDriver {
    vault: Vault,
    pub(crate) messenger: Messenger,
    history_seq: u64,
    pending: Vec<(String, Vec<u8>, Vec<u8>)>,
    /// Community payloads received, in order, for the community layer.
    letters: Vec<(Address, Vec<u8>)>,
    /// The account's communities.
    pub(crate) communities: crate::community::Hub,
}

impl AccountDriver {
    /// Unlocks the account of the store, if it has one.
    pub(crate) fn open(
        store: Arc<Store>,
        network: &NetworkFile,
        data_dir: &Path,
        unlock: &Unlock,
    ) -> Result<Option<Self>> {
        if !Vault::exists(&store, VAULT)? {
            return Ok(None);
        }
        let secret = unlock.secret(data_dir)?;
        let vault = Vault::unlock(store, VAULT, secret)?;
        let bytes = vault
            .get(Table::Messenger.as_str(), b"state")?
            .ok_or_else(|| anyhow!("the account's state is missing from the vault"))?;
        let state: MessengerState =
            serde_json::from_slice(&bytes).context("the account's state is damaged")?;
        let messenger = Messenger::from_state(messenger_config(network), state, rand::random())?;
        let history_seq = vault.list(Table::History.as_str())?.len() as u64;
        let communities = crate::community::Hub::load(
            &vault,
            chainmail_net::ProtocolNames::new(&network.network.id).community_topic_prefix,
            crate::runtime::now().0,
        )?;
        Ok(Some(AccountDriver {
            vault,
            messenger,
            history_seq,
            pending: Vec::new(),
            letters: Vec::new(),
            communities,
        }))
    }

    /// Takes the messenger's events into history and sent-message records,
    /// and writes them with the messenger's state in one transaction.
    pub(crate) fn persist(&mut self, now: Time) -> Result<()> {
        while let Some(event) = self.messenger.poll_event() {
            self.record(now, event)?;
        }
        for (from, body) in std::mem::take(&mut self.letters) {
            let name = self.name_of(&from);
            let invited =
                self.communities
                    .handle_letter(now.0, &mut self.pending, from, name.clone(), &body);
            if let Some((token, community)) = invited {
                // In the inbox too, with what to run to join.
                self.history(HistoryEntry {
                    seq: 0,
                    at: now.0,
                    kind: "community-invite".into(),
                    contact: from.to_string(),
                    name,
                    id: Some(token),
                    text: Some(community),
                    state: None,
                    position: None,
                })?;
            }
        }
        let writes = self.communities.take_writes();
        self.pending.extend(writes);
        if self.messenger.take_dirty() {
            self.pending.push((
                Table::Messenger.into(),
                b"state".to_vec(),
                serde_json::to_vec(&self.messenger.state())?,
            ));
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let ops: Vec<VaultOp<'_>> = self
            .pending
            .iter()
            .map(|(table, key, value)| VaultOp::Put { table, key, value })
            .collect();
        self.vault.batch(&ops)?;
        self.pending.clear();
        Ok(())
    }

    fn name_of(&self, address: &Address) -> String {
        self.messenger
            .contact(address)
            .map(|c| c.name.clone())
            .unwrap_or_else(|| address.short())
    }

    fn history(&mut self, mut entry: HistoryEntry) -> Result<()> {
        self.history_seq += 1;
        entry.seq = self.history_seq;
        self.pending.push((
            Table::History.into(),
            self.history_seq.to_be_bytes().to_vec(),
            serde_json::to_vec(&entry)?,
        ));
        Ok(())
    }

    fn record(&mut self, now: Time, event: MessengerEvent) -> Result<()> {
        let entry = |kind: &str, contact: &Address, name: String| HistoryEntry {
            seq: 0,
            at: now.0,
            kind: kind.into(),
            contact: contact.to_string(),
            name,
            id: None,
            text: None,
            state: None,
            position: None,
        };
        match event {
            MessengerEvent::ContactRequest { from, name, text } => {
                let mut e = entry("request", &from, name);
                e.text = text;
                self.history(e)
            }
            MessengerEvent::ContactAccepted { contact } => {
                let e = entry("accepted", &contact, self.name_of(&contact));
                self.history(e)
            }
            MessengerEvent::ContactDenied { contact } => {
                let e = entry("denied", &contact, self.name_of(&contact));
                self.history(e)
            }
            MessengerEvent::KeyChanged { contact } => {
                let e = entry("key-changed", &contact, self.name_of(&contact));
                self.history(e)
            }
            MessengerEvent::UnsafeVersion { contact, version } => {
                let mut e = entry("unsafe-version", &contact, self.name_of(&contact));
                e.text = Some(version);
                self.history(e)
            }
            MessengerEvent::LookupFailed { contact } => {
                let e = entry("lookup-failed", &contact, self.name_of(&contact));
                self.history(e)
            }
            MessengerEvent::Message {
                from,
                id,
                seq,
                text,
                ..
            } => {
                let mut e = entry("message", &from, self.name_of(&from));
                e.id = Some(hex(&id));
                e.text = Some(text);
                e.position = Some(seq);
                self.history(e)
            }
            MessengerEvent::Community { from, body, .. } => {
                self.letters.push((from, body));
                Ok(())
            }
            MessengerEvent::MessageState { id, to, state } => {
                let key = hex(&id);
                if let Some(bytes) = self.vault.get(Table::Sent.as_str(), key.as_bytes())?
                    && let Ok(mut sent) = serde_json::from_slice::<SentMessage>(&bytes)
                {
                    sent.state = state.as_str().into();
                    sent.changed = now.0;
                    self.pending.push((
                        Table::Sent.into(),
                        key.clone().into_bytes(),
                        serde_json::to_vec(&sent)?,
                    ));
                } else if let Some(i) = self
                    .pending
                    .iter()
                    .position(|(t, k, _)| t == Table::Sent.as_str() && k == key.as_bytes())
                    && let Ok(mut sent) = serde_json::from_slice::<SentMessage>(&self.pending[i].2)
                {
                    sent.state = state.as_str().into();
                    sent.changed = now.0;
                    self.pending[i].2 = serde_json::to_vec(&sent)?;
                }
                if matches!(state, MessageState::Delivered | MessageState::Failed) {
                    let mut e = entry("state", &to, self.name_of(&to));
                    e.id = Some(key);
                    e.state = Some(state.as_str().into());
                    self.history(e)?;
                }
                Ok(())
            }
        }
    }

    fn contact_address(&self, name: &str) -> Result<Address, String> {
        self.messenger
            .find_contact(name)
            .map(|c| c.address)
            .ok_or_else(|| format!("no contact named {name:?} (`chainmail contact list`)"))
    }

    fn view(m: &Messenger, c: &chainmail_session::Contact) -> ContactView {
        ContactView {
            unsafe_version: m.runs_unsafe_version(c),
            name: c.name.clone(),
            address: c.address.to_string(),
            state: c.state.as_str().into(),
            verified: c.verified,
            key_changed: c.key_changed,
            client_version: c.client_version.clone(),
            request_text: c.request_text.clone(),
        }
    }

    /// Answers a CLI request.
    pub(crate) fn handle(
        &mut self,
        now: Time,
        request: AccountRequest,
    ) -> Result<serde_json::Value, String> {
        use serde_json::json;
        if let AccountRequest::Community { community } = request {
            let invites: Vec<crate::community::InviteView> = self
                .vault
                .list(Table::Invites.as_str())
                .map_err(|e| e.to_string())?
                .iter()
                .filter_map(|(_, v)| serde_json::from_slice(v).ok())
                .collect();
            return self.communities.handle(
                now.0,
                &mut self.messenger,
                &invites,
                &mut self.pending,
                community,
            );
        }
        let m = &mut self.messenger;
        match request {
            AccountRequest::Whoami => Ok(json!({
                "address": m.address().to_string(),
                "name": m.name(),
                "olm_identity_key": hex(&m.curve_key()),
            })),
            AccountRequest::ExportIdentity => Ok(json!({
                "identity_seed": hex(&m.account().identity_seed()[..]),
            })),
            AccountRequest::ContactAdd {
                address,
                name,
                message,
            } => {
                let address: Address = address.parse().map_err(|e| format!("{e}"))?;
                m.add_contact(now, address, &name, message.as_deref())
                    .map_err(|e| e.to_string())?;
                Ok(json!({ "name": name, "address": address.to_string(), "state": "looking-up" }))
            }
            AccountRequest::ContactList => Ok(json!(
                m.contacts().map(|c| Self::view(m, c)).collect::<Vec<_>>()
            )),
            AccountRequest::ContactRequests => Ok(json!(
                m.contacts()
                    .filter(|c| c.state == ContactState::RequestReceived)
                    .map(|c| Self::view(m, c))
                    .collect::<Vec<_>>()
            )),
            AccountRequest::AdvisoryPublish { .. } | AccountRequest::Community { .. } => {
                Err("handled by the node".into())
            }
            AccountRequest::ContactAccept { name } => {
                let a = self.contact_address(&name)?;
                self.messenger.accept(now, &a).map_err(|e| e.to_string())?;
                Ok(json!({ "name": name, "state": "accepted" }))
            }
            AccountRequest::ContactDeny { name } => {
                let a = self.contact_address(&name)?;
                self.messenger.deny(now, &a).map_err(|e| e.to_string())?;
                Ok(json!({ "name": name, "state": "denied" }))
            }
            AccountRequest::ContactIgnore { name } => {
                let a = self.contact_address(&name)?;
                self.messenger.ignore(&a).map_err(|e| e.to_string())?;
                Ok(json!({ "name": name, "state": "ignored" }))
            }
            AccountRequest::Send { to, text } => {
                let a = self.contact_address(&to)?;
                let id = self
                    .messenger
                    .send_text(now, &a, &text)
                    .map_err(|e| e.to_string())?;
                let name = self.name_of(&a);
                let sent = SentMessage {
                    id: hex(&id),
                    to: a.to_string(),
                    name,
                    text,
                    state: self
                        .messenger
                        .message_state(&id)
                        .unwrap_or(MessageState::Sent)
                        .as_str()
                        .into(),
                    at: now.0,
                    changed: now.0,
                };
                self.pending.push((
                    Table::Sent.into(),
                    sent.id.clone().into_bytes(),
                    serde_json::to_vec(&sent).map_err(|e| e.to_string())?,
                ));
                Ok(json!({ "id": sent.id, "state": sent.state }))
            }
            AccountRequest::Inbox { after } => {
                let entries = self
                    .vault
                    .list(Table::History.as_str())
                    .map_err(|e| e.to_string())?;
                let out: Vec<serde_json::Value> = entries
                    .iter()
                    .filter(|(k, _)| {
                        <[u8; 8]>::try_from(&k[..]).is_ok_and(|k| u64::from_be_bytes(k) > after)
                    })
                    .filter_map(|(_, v)| serde_json::from_slice(v).ok())
                    .collect();
                Ok(json!(out))
            }
            AccountRequest::Sent => {
                let entries = self
                    .vault
                    .list(Table::Sent.as_str())
                    .map_err(|e| e.to_string())?;
                let mut out: Vec<SentMessage> = entries
                    .iter()
                    .filter_map(|(_, v)| serde_json::from_slice(v).ok())
                    .collect();
                out.sort_by_key(|s| s.at);
                Ok(json!(out))
            }
            AccountRequest::Verify { name, mark } => {
                let a = self.contact_address(&name)?;
                let number = self.messenger.safety_number(&a).ok_or_else(|| {
                    "their keys are not known yet: wait for their answer".to_string()
                })?;
                if mark {
                    self.messenger
                        .set_verified(&a, true)
                        .map_err(|e| e.to_string())?;
                }
                let c = self
                    .messenger
                    .contact(&a)
                    .ok_or_else(|| "no such contact".to_string())?;
                Ok(json!({
                    "name": c.name,
                    "safety_number": number.to_string(),
                    "lines": number.lines(),
                    "verified": c.verified,
                    "key_changed": c.key_changed,
                }))
            }
        }
    }
}
