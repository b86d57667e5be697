//! The network file: what defines one Chainmail network. Nodes with
//! different network ids never talk to each other.

use std::path::Path;
use std::time::Duration;

use chainmail_mixnet::{Params, Preset, TrafficRates};
use serde::{Deserialize, Serialize};

/// A network file, as written in TOML.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkFile {
    /// Identity of the network.
    pub network: NetworkSection,
    /// Mix-key epochs.
    #[serde(default)]
    pub epochs: EpochSection,
    /// Mixing and cover traffic.
    #[serde(default)]
    pub mixing: MixingSection,
    /// Mailboxes at providers.
    #[serde(default)]
    pub mailboxes: MailboxSection,
    /// Accounts and contact requests.
    #[serde(default)]
    pub accounts: AccountSection,
}

/// `[accounts]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountSection {
    /// Leading zero bits of the proof-of-work stamp a stranger's contact
    /// request must carry (0 to 32; each bit doubles the sender's work).
    pub stamp_difficulty: u8,
    /// Hours per period of the blinded keys account descriptors are
    /// published under.
    pub descriptor_period_hours: u64,
    /// Ed25519 public key (64 hex digits) whose signed advisories of
    /// unsafe client versions this network carries; none if absent.
    pub advisory_key: Option<String>,
}

impl Default for AccountSection {
    fn default() -> Self {
        AccountSection {
            stamp_difficulty: chainmail_session::messenger::DEFAULT_STAMP_DIFFICULTY,
            descriptor_period_hours: 24,
            advisory_key: None,
        }
    }
}

/// `[network]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// Network id: part of every protocol name. Letters, digits and `-`.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// Multiaddresses (with `/p2p/<peer id>`) of nodes to join through.
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// A network inside one machine or one LAN (a testnet): nodes announce
    /// their listen addresses as they are, loopback and private ones
    /// included. On a public network (the default) a node announces only
    /// publicly routable addresses that another node confirmed it could
    /// reach, and a node nobody can reach stays out of the directory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
}

impl NetworkSection {
    /// Which addresses nodes of this network announce.
    pub fn scope(&self) -> chainmail_net::AddressScope {
        if self.local {
            chainmail_net::AddressScope::Local
        } else {
            chainmail_net::AddressScope::Public
        }
    }
}

/// `[epochs]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EpochSection {
    /// Length of a mix-key epoch, seconds.
    pub length_secs: u64,
    /// How long a key stays usable after its epoch, seconds.
    pub key_grace_secs: u64,
}

impl Default for EpochSection {
    fn default() -> Self {
        EpochSection {
            length_secs: 3600,
            key_grace_secs: 600,
        }
    }
}

/// `[mixing]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MixingSection {
    /// Mix layers between the providers.
    pub layers: usize,
    /// Most mixes per layer in an epoch.
    pub layer_width_cap: usize,
    /// Anonymity preset: "low-bandwidth", "standard" or "strong".
    pub preset: Preset,
    /// Override of the preset's mean per-hop delay, milliseconds.
    pub mean_delay_ms: Option<f64>,
    /// Override of the preset's client payload rate, packets per second.
    pub payload_per_s: Option<f64>,
    /// Override of the preset's client loop cover rate.
    pub loop_per_s: Option<f64>,
    /// Override of the preset's client drop cover rate.
    pub drop_per_s: Option<f64>,
    /// Override of the preset's mix loop cover rate.
    pub mix_loop_per_s: Option<f64>,
}

impl Default for MixingSection {
    fn default() -> Self {
        MixingSection {
            layers: 3,
            layer_width_cap: 64,
            preset: Preset::Standard,
            mean_delay_ms: None,
            payload_per_s: None,
            loop_per_s: None,
            drop_per_s: None,
            mix_loop_per_s: None,
        }
    }
}

/// `[mailboxes]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailboxSection {
    /// How long providers keep mail, hours.
    pub retention_hours: u64,
    /// Most items per mailbox.
    pub quota_items: u64,
    /// Most bytes per mailbox.
    pub quota_bytes: u64,
}

impl Default for MailboxSection {
    fn default() -> Self {
        MailboxSection {
            retention_hours: 7 * 24,
            quota_items: 10_000,
            quota_bytes: 32 * 1024 * 1024,
        }
    }
}

/// A network file that could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkFileError {
    /// The file could not be read.
    #[error("cannot read network file {path}: {source}")]
    Read {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped fields.
    #[error("network file {path} is not valid: {message}")]
    Syntax {
        /// Path.
        path: String,
        /// What the parser said (with line and column).
        message: String,
    },
    /// A value is out of range.
    #[error("network file {path}: {message}")]
    Invalid {
        /// Path.
        path: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

impl NetworkFile {
    /// The advisory key, if the file names a valid one.
    pub fn advisory_key(&self) -> Option<ed25519_dalek::VerifyingKey> {
        let text = self.accounts.advisory_key.as_deref()?.trim();
        let bytes = chainmail_client::hex::unhex_array::<32>(text)?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()
    }

    /// Reads and validates a network file.
    pub fn load(path: &Path) -> Result<Self, NetworkFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| NetworkFileError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            NetworkFileError::Syntax { message, .. } => NetworkFileError::Syntax {
                path: shown,
                message,
            },
            NetworkFileError::Invalid { message, .. } => NetworkFileError::Invalid {
                path: shown,
                message,
            },
            other => other,
        })
    }

    /// Parses and validates network file text.
    pub fn parse(text: &str) -> Result<Self, NetworkFileError> {
        let file: NetworkFile = toml::from_str(text).map_err(|e| NetworkFileError::Syntax {
            path: String::new(),
            message: e.to_string(),
        })?;
        file.params().map_err(|message| NetworkFileError::Invalid {
            path: String::new(),
            message,
        })?;
        Ok(file)
    }

    /// The file as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The mixnet parameters this file sets, validated.
    pub fn params(&self) -> Result<Params, String> {
        let id = &self.network.id;
        if id.is_empty()
            || id.len() > 64
            || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(format!(
                "network id {id:?} must be 1 to 64 letters, digits or '-' (it becomes part of protocol names)"
            ));
        }
        for address in &self.network.bootstrap {
            check_bootstrap(address, self.network.scope())?;
        }
        let m = &self.mixing;
        let preset = m.preset.rates();
        let rates = TrafficRates {
            payload_per_s: m.payload_per_s.unwrap_or(preset.payload_per_s),
            loop_per_s: m.loop_per_s.unwrap_or(preset.loop_per_s),
            drop_per_s: m.drop_per_s.unwrap_or(preset.drop_per_s),
            mix_loop_per_s: m.mix_loop_per_s.unwrap_or(preset.mix_loop_per_s),
            mean_delay_ms: m.mean_delay_ms.unwrap_or(preset.mean_delay_ms),
        };
        let epoch_length = Duration::from_secs(self.epochs.length_secs);
        let params = Params {
            epoch_length,
            key_grace: Duration::from_secs(self.epochs.key_grace_secs),
            layers: m.layers,
            layer_width_cap: m.layer_width_cap,
            rates,
            mailbox_ttl: Duration::from_secs(self.mailboxes.retention_hours.saturating_mul(3600)),
            mailbox_max_items: self.mailboxes.quota_items,
            mailbox_max_bytes: self.mailboxes.quota_bytes,
            descriptor_lifetime: (epoch_length * 3).max(Duration::from_secs(600)),
        };
        params.validate()?;
        if self.accounts.stamp_difficulty > chainmail_session::MAX_DIFFICULTY {
            return Err(format!(
                "stamp difficulty must be at most {} bits",
                chainmail_session::MAX_DIFFICULTY
            ));
        }
        if self.accounts.descriptor_period_hours == 0 {
            return Err("descriptor period must be at least 1 hour".into());
        }
        if self.accounts.advisory_key.is_some() && self.advisory_key().is_none() {
            return Err("advisory_key must be an Ed25519 public key in 64 hex digits".into());
        }
        if params.mailbox_ttl < Duration::from_secs(3600) {
            return Err("mailbox retention must be at least 1 hour".into());
        }
        if params.mailbox_max_items == 0 || params.mailbox_max_bytes < 64 * 1024 {
            return Err("mailbox quota must allow at least 1 item and 64 KiB".into());
        }
        Ok(params)
    }
}

/// Checks one bootstrap address: a multiaddress of an IP address, a TCP
/// or QUIC port and a peer id, that nodes of a network of `scope` can dial.
pub fn check_bootstrap(address: &str, scope: chainmail_net::AddressScope) -> Result<(), String> {
    use chainmail_net::multiaddr::Protocol;
    let addr: chainmail_net::Multiaddr = address.parse().map_err(|e| {
        format!("bootstrap address {address:?} is not a multiaddress ({e}); it looks like /ip4/198.18.0.11/tcp/4001/p2p/12D3KooW…")
    })?;
    if !matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        return Err(format!(
            "bootstrap address {address:?} must end in /p2p/<peer id> (the node's peer id, shown by its `chainmail status`)"
        ));
    }
    let Some(ip) = chainmail_net::addrs::ip_of(&addr) else {
        return Err(format!(
            "bootstrap address {address:?} must start with /ip4/ or /ip6/ (DNS names are not resolved)"
        ));
    };
    if !addr
        .iter()
        .any(|p| matches!(p, Protocol::Tcp(_) | Protocol::QuicV1))
    {
        return Err(format!(
            "bootstrap address {address:?} needs a TCP port (/tcp/4001) or a QUIC one (/udp/4001/quic-v1)"
        ));
    }
    if scope == chainmail_net::AddressScope::Public && !chainmail_net::addrs::is_public_ip(ip) {
        return Err(format!(
            "bootstrap address {address:?} is a loopback, private or reserved address, which nodes on other networks cannot reach; for a network on one machine or LAN set `local = true` under [network]"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../network.example.toml");

    #[test]
    fn the_example_file_parses() {
        let file = NetworkFile::parse(EXAMPLE).unwrap();
        assert_eq!(file.params().unwrap().rates, Preset::Standard.rates());
        // And it survives a round trip through TOML.
        assert_eq!(NetworkFile::parse(&file.to_toml()).unwrap(), file);
    }

    #[test]
    fn mistakes_give_clear_errors() {
        let bad_id = EXAMPLE.replace("id = \"chainmail-example\"", "id = \"has spaces\"");
        let e = NetworkFile::parse(&bad_id).unwrap_err().to_string();
        assert!(e.contains("letters, digits"), "{e}");
        let unknown = format!("{EXAMPLE}\n[extra]\nx = 1\n");
        let e = NetworkFile::parse(&unknown).unwrap_err().to_string();
        assert!(e.contains("extra"), "{e}");
        let fast = EXAMPLE.replace("length_secs = 3600", "length_secs = 2");
        let e = NetworkFile::parse(&fast).unwrap_err().to_string();
        assert!(e.contains("epoch length"), "{e}");
        let preset = EXAMPLE.replace("preset = \"standard\"", "preset = \"paranoid\"");
        let e = NetworkFile::parse(&preset).unwrap_err().to_string();
        assert!(e.contains("paranoid") || e.contains("variant"), "{e}");
    }

    #[test]
    fn bootstrap_addresses_are_checked() {
        use chainmail_net::AddressScope::{Local, Public};
        let peer = "12D3KooWJWEKvSFbben74C7H4YtKjhPMTDxd7gP6zxWSUTeR4Cy9";
        check_bootstrap(&format!("/ip4/198.18.0.11/tcp/4001/p2p/{peer}"), Public).unwrap();
        check_bootstrap(
            &format!("/ip6/2a01:4f8::1/udp/4001/quic-v1/p2p/{peer}"),
            Public,
        )
        .unwrap();
        check_bootstrap(&format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}"), Local).unwrap();
        for (bad, why) in [
            (
                format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}"),
                "local = true",
            ),
            (format!("/ip4/192.168.1.5/tcp/4001/p2p/{peer}"), "private"),
            ("/ip4/198.18.0.11/tcp/4001".to_string(), "/p2p/"),
            (format!("/dns4/boot.example.org/tcp/4001/p2p/{peer}"), "DNS"),
            (format!("/ip4/198.18.0.11/p2p/{peer}"), "TCP port"),
            ("198.18.0.11:4001".to_string(), "not a multiaddress"),
        ] {
            let e = check_bootstrap(&bad, Public).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
