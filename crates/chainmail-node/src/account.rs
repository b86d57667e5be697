//! The node's side of the user's account: the agent's storage in the
//! encrypted vault `account` of the node's store, how the vault is
//! unlocked, and `chainmail init`.
//!
//! Every table of the agent (`chainmail_client::Table`) lives in the vault;
//! a batch the agent asks for is written in one transaction before anything
//! after it leaves the node.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use chainmail_client::{Batch, Record, Storage, StorageError, Table};
use chainmail_session::{Account, Address, MessengerConfig};
use chainmail_store::{Store, Vault, VaultOp, VaultSecret};
use zeroize::Zeroizing;

use crate::network::NetworkFile;

/// Name of the account's vault in the node's store.
pub const VAULT: &str = "account";
/// File name of the generated key file in the data directory.
pub const KEY_FILE: &str = "account.key";

/// How the vault is unlocked: a passphrase file, or a key file.
#[derive(Clone, Debug, Default)]
pub struct Unlock {
    /// File holding the passphrase (first line).
    pub passphrase_file: Option<std::path::PathBuf>,
    /// Key file (32 bytes or 64 hex digits).
    pub key_file: Option<std::path::PathBuf>,
}

impl Unlock {
    /// The secret, from the passphrase file, the key file, or the data
    /// directory's generated key file.
    pub fn secret(&self, data_dir: &Path) -> Result<VaultSecret> {
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
pub fn messenger_config(network: &NetworkFile) -> MessengerConfig {
    let mut config = MessengerConfig::new(chainmail_mixnet::network_hash(&network.network.id));
    config.client_version = crate::VERSION.into();
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
pub fn init(
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
        crate::files::write_private(&path, chainmail_store::encode_key_file(&key).as_bytes())?;
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
                chainmail_client::hex::unhex_array::<32>(text.trim())
                    .ok_or_else(|| anyhow!("{} must hold 64 hex digits", path.display()))?,
            );
            Account::new(ed25519_dalek::SigningKey::from_bytes(&seed))
        }
    };
    let address = account.address();
    let batch =
        chainmail_client::new_account(&messenger_config(network), account, name, rand::random());
    VaultStorage(Arc::new(vault)).write(&batch)?;
    Ok((address, written_key))
}

/// The agent's storage: the account's vault. Clones share the vault.
#[derive(Clone)]
pub struct VaultStorage(pub Arc<Vault>);

fn storage_err(e: chainmail_store::StoreError) -> StorageError {
    StorageError(e.to_string())
}

impl Storage for VaultStorage {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.0
            .get(table.as_str(), key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(storage_err)
    }

    fn list(&self, table: Table) -> Result<Vec<Record>, StorageError> {
        Ok(self
            .0
            .list(table.as_str())
            .map_err(storage_err)?
            .into_iter()
            .map(|(k, v)| (k, v.to_vec()))
            .collect())
    }

    fn write(&self, batch: &Batch) -> Result<(), StorageError> {
        let ops: Vec<VaultOp<'_>> = batch
            .puts
            .iter()
            .map(|(table, key, value)| VaultOp::Put {
                table: table.as_str(),
                key,
                value,
            })
            .chain(batch.deletes.iter().map(|(table, key)| VaultOp::Delete {
                table: table.as_str(),
                key,
            }))
            .collect();
        // A batch larger than one transaction (a sync that brought
        // thousands of blocks) takes several, in order: all are durable
        // before the agent's next output is carried out.
        for chunk in ops.chunks(chainmail_store::MAX_VAULT_BATCH) {
            self.0.batch(chunk).map_err(storage_err)?;
        }
        Ok(())
    }
}

/// Unlocks the account's vault, if the store has one. Keys and the
/// advisory that older versions kept in the store outside the vault move
/// into it.
pub fn open_vault(
    store: Arc<Store>,
    data_dir: &Path,
    unlock: &Unlock,
) -> Result<Option<VaultStorage>> {
    if !Vault::exists(&store, VAULT)? {
        return Ok(None);
    }
    let secret = unlock.secret(data_dir)?;
    let vault = VaultStorage(Arc::new(Vault::unlock(store.clone(), VAULT, secret)?));
    let mut moved = Batch::default();
    for (table, key) in [
        (Table::Client, &b"keys"[..]),
        (Table::Client, &b"cursors"[..]),
        (Table::Advisory, &b"current"[..]),
    ] {
        if vault.get(table, key)?.is_none()
            && let Some(value) = store.kv_get(table.as_str(), key)?
        {
            moved.put(table, key.to_vec(), value);
        }
    }
    if !moved.is_empty() {
        vault.write(&moved)?;
        for (table, key, _) in &moved.puts {
            store.kv_delete(table.as_str(), key)?;
        }
    }
    Ok(Some(vault))
}
