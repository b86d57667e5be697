//! Encrypted client state: a vault of records kept in the key-value table,
//! unreadable without the user's passphrase or key file. The format is
//! described in the crate documentation (README, "Vaults").

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::{AeadInOut, KeyInit, XChaCha20Poly1305};
use rand::rngs::SysRng;
use rand_core::{CryptoRng, TryRng};
use zeroize::{Zeroize, Zeroizing};

use crate::error::StoreError;
use crate::store::Store;
use crate::types::KvOp;
use crate::{MAX_KV_BATCH, MAX_KV_VALUE_SIZE};

/// Longest vault name, in bytes.
pub const MAX_VAULT_NAME_SIZE: usize = 24;
/// Longest vault table name, in bytes (UTF-8).
pub const MAX_VAULT_TABLE_SIZE: usize = 255;
/// Largest vault record key, in bytes.
pub const MAX_VAULT_KEY_SIZE: usize = 1024;
/// Largest vault record value, in bytes: a key-value value less room for
/// the record's key, nonce and tag.
pub const MAX_VAULT_VALUE_SIZE: usize = MAX_KV_VALUE_SIZE - 4096;
/// Most ops one [`Vault::batch`] takes.
pub const MAX_VAULT_BATCH: usize = MAX_KV_BATCH;

/// A record's plain key and its value, as [`Vault::list`] returns them. The
/// value is wiped from memory when dropped.
pub type VaultEntry = (Vec<u8>, Zeroizing<Vec<u8>>);

// ---- Format constants (README, "Vaults") ---------------------------------

/// Key-value namespaces of vaults start with this.
const NAMESPACE_PREFIX: &str = "vault:";
/// Key of the header in the vault's namespace.
const HEADER_KEY: &[u8] = b"header";
const HEADER_MAGIC: [u8; 4] = *b"CMVT";
/// Format version of the header and records.
const FORMAT_VERSION: u8 = 1;
const KIND_PASSPHRASE: u8 = 1;
const KIND_KEY_FILE: u8 = 2;

const KEY_SIZE: usize = 32;
const SALT_SIZE: usize = 16;
const VAULT_ID_SIZE: usize = 16;
const NONCE_SIZE: usize = 24;
const TAG_SIZE: usize = 16;
/// Bytes of a table's namespace tag (hex in the namespace).
const TABLE_TAG_SIZE: usize = 16;
/// Bytes of a record's key in the key-value table.
const RECORD_ID_SIZE: usize = 32;
/// Bytes of the key's length in front of a record's plaintext.
const KEY_LEN_SIZE: usize = 2;

/// The known plaintext of the header's check value.
const CHECK_PLAINTEXT: [u8; 16] = *b"chainmail vault1";

/// Header layout: magic, version, kind, m_cost, t_cost, p_cost, salt,
/// vault id (the plain part, authenticated as associated data), then the
/// check value and the wrapped root key.
const PLAIN_HEADER_SIZE: usize = 4 + 1 + 1 + 4 + 4 + 4 + SALT_SIZE + VAULT_ID_SIZE;
const CHECK_SIZE: usize = NONCE_SIZE + CHECK_PLAINTEXT.len() + TAG_SIZE;
const WRAPPED_SIZE: usize = NONCE_SIZE + KEY_SIZE + TAG_SIZE;
const HEADER_SIZE: usize = PLAIN_HEADER_SIZE + CHECK_SIZE + WRAPPED_SIZE;

/// BLAKE3 `derive_key` contexts.
const CONTEXT_KEY_FILE: &str = "chainmail 2025-01 vault v1 key file";
const CONTEXT_RECORD_KEY: &str = "chainmail 2025-01 vault v1 record encryption";
const CONTEXT_INDEX_KEY: &str = "chainmail 2025-01 vault v1 record index";

/// Associated data labels.
const AD_CHECK: &[u8] = b"chainmail vault v1 check";
const AD_WRAP: &[u8] = b"chainmail vault v1 wrap";
const AD_RECORD: &[u8] = b"chainmail vault v1 record";

// ---- Secrets and parameters ----------------------------------------------

/// What unlocks a vault: a passphrase, or the 32 bytes of a key file. Wiped
/// from memory when dropped; `Debug` shows only which of the two it is.
pub enum VaultSecret {
    /// A passphrase, stretched with argon2id. Its bytes are used as given
    /// (no Unicode normalisation).
    Passphrase(Zeroizing<String>),
    /// The 32 bytes of a key file (see [`generate_key_file`]).
    KeyFile(Zeroizing<[u8; 32]>),
}

impl fmt::Debug for VaultSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VaultSecret::Passphrase(_) => "VaultSecret::Passphrase(..)",
            VaultSecret::KeyFile(_) => "VaultSecret::KeyFile(..)",
        })
    }
}

impl VaultSecret {
    /// A key file's secret from the file's contents: exactly 32 raw bytes,
    /// or 64 hexadecimal digits (either case) optionally followed by `\n` or
    /// `\r\n`. Anything else is [`StoreError::InvalidKeyFile`], whose message
    /// never shows the bytes.
    pub fn from_key_file_bytes(bytes: &[u8]) -> Result<VaultSecret, StoreError> {
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() == key.len() {
            key.copy_from_slice(bytes);
            return Ok(VaultSecret::KeyFile(key));
        }
        let invalid = |reason| StoreError::InvalidKeyFile {
            len: bytes.len(),
            reason,
        };
        let digits = bytes
            .strip_suffix(b"\r\n")
            .or_else(|| bytes.strip_suffix(b"\n"))
            .unwrap_or(bytes);
        if digits.len() != 2 * key.len() {
            return Err(invalid("neither 32 bytes nor 64 hexadecimal digits"));
        }
        for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
            match (hex_value(pair[0]), hex_value(pair[1])) {
                (Some(high), Some(low)) => *byte = high << 4 | low,
                _ => return Err(invalid("64 characters, but not all hexadecimal digits")),
            }
        }
        Ok(VaultSecret::KeyFile(key))
    }

    /// "passphrase" or "key file".
    fn kind_name(&self) -> &'static str {
        kind_name(self.kind())
    }

    fn kind(&self) -> u8 {
        match self {
            VaultSecret::Passphrase(_) => KIND_PASSPHRASE,
            VaultSecret::KeyFile(_) => KIND_KEY_FILE,
        }
    }
}

fn kind_name(kind: u8) -> &'static str {
    if kind == KIND_PASSPHRASE {
        "passphrase"
    } else {
        "key file"
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// A new key file's 32 random bytes. Write them to a file only the user can
/// read, raw or as [`encode_key_file`] gives them.
pub fn generate_key_file<R: CryptoRng + ?Sized>(rng: &mut R) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut key[..]);
    key
}

/// A key file's contents as text: 64 lowercase hexadecimal digits and a
/// newline, which [`VaultSecret::from_key_file_bytes`] reads back.
pub fn encode_key_file(key: &[u8; 32]) -> Zeroizing<String> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = Zeroizing::new(String::with_capacity(2 * key.len() + 1));
    for byte in key {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0F)]));
    }
    text.push('\n');
    text
}

/// How hard argon2id works to turn a passphrase into the vault's master
/// key. Stored in the vault's header; unused for key files (which need no
/// stretching) but kept for a later change to a passphrase.
///
/// The default (64 MiB, 3 passes, 1 lane) takes about 0.2 to 0.5 s on a
/// laptop. Tests use the smallest values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaultParams {
    /// Memory, in KiB: at least 8 × `p_cost`, at most
    /// [`VaultParams::MAX_M_COST_KIB`] (4 GiB).
    pub m_cost_kib: u32,
    /// Passes over the memory: 1 to [`VaultParams::MAX_T_COST`].
    pub t_cost: u32,
    /// Lanes: 1 to [`VaultParams::MAX_P_COST`].
    pub p_cost: u32,
}

impl VaultParams {
    /// Largest `m_cost_kib`: 4 GiB.
    pub const MAX_M_COST_KIB: u32 = 4 << 20;
    /// Largest `t_cost`.
    pub const MAX_T_COST: u32 = 64;
    /// Largest `p_cost`.
    pub const MAX_P_COST: u32 = 64;

    /// Checks the bounds above. A header with parameters out of them is
    /// refused, so that a damaged header cannot make an unlock run for days.
    fn check(&self) -> Result<(), String> {
        if !(1..=Self::MAX_P_COST).contains(&self.p_cost) {
            return Err(format!(
                "p_cost {} is not between 1 and {}",
                self.p_cost,
                Self::MAX_P_COST
            ));
        }
        if !(1..=Self::MAX_T_COST).contains(&self.t_cost) {
            return Err(format!(
                "t_cost {} is not between 1 and {}",
                self.t_cost,
                Self::MAX_T_COST
            ));
        }
        let min_m = 8 * self.p_cost;
        if !(min_m..=Self::MAX_M_COST_KIB).contains(&self.m_cost_kib) {
            return Err(format!(
                "m_cost {} KiB is not between {min_m} (8 × p_cost) and {} KiB",
                self.m_cost_kib,
                Self::MAX_M_COST_KIB
            ));
        }
        Ok(())
    }
}

impl Default for VaultParams {
    fn default() -> Self {
        Self {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

// ---- Randomness ----------------------------------------------------------

/// Fills `buf` from the operating system's generator.
fn fill_random(buf: &mut [u8]) -> Result<(), StoreError> {
    SysRng
        .try_fill_bytes(buf)
        .map_err(|e| StoreError::Randomness {
            detail: e.to_string(),
        })
}

fn random<const N: usize>() -> Result<[u8; N], StoreError> {
    let mut out = [0; N];
    fill_random(&mut out)?;
    Ok(out)
}

// ---- The header ----------------------------------------------------------

/// A vault's header, parsed. Its plain part is authenticated (associated
/// data of both AEAD values), not secret.
struct Header {
    kind: u8,
    params: VaultParams,
    salt: [u8; SALT_SIZE],
    vault_id: [u8; VAULT_ID_SIZE],
    /// Nonce ‖ AEAD(master key, CHECK_PLAINTEXT).
    check: [u8; CHECK_SIZE],
    /// Nonce ‖ AEAD(master key, root key).
    wrapped: [u8; WRAPPED_SIZE],
}

impl Header {
    fn plain(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PLAIN_HEADER_SIZE);
        out.extend_from_slice(&HEADER_MAGIC);
        out.extend_from_slice(&[FORMAT_VERSION, self.kind]);
        out.extend_from_slice(&self.params.m_cost_kib.to_le_bytes());
        out.extend_from_slice(&self.params.t_cost.to_le_bytes());
        out.extend_from_slice(&self.params.p_cost.to_le_bytes());
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.vault_id);
        out
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_SIZE);
        out.extend_from_slice(&self.plain());
        out.extend_from_slice(&self.check);
        out.extend_from_slice(&self.wrapped);
        out
    }

    /// Parses a stored header; `corrupt` makes the error for a malformed one.
    fn decode(
        bytes: &[u8],
        vault: &str,
        corrupt: impl Fn(&str) -> StoreError,
    ) -> Result<Header, StoreError> {
        let mut r = Reader(bytes);
        if r.take::<4>() != Some(HEADER_MAGIC) {
            return Err(corrupt("its header does not start with the vault magic"));
        }
        match r.take::<1>() {
            Some([FORMAT_VERSION]) => {}
            Some([found]) => {
                return Err(StoreError::UnsupportedVaultVersion {
                    vault: vault.to_owned(),
                    found,
                    supported: FORMAT_VERSION,
                });
            }
            None => return Err(corrupt("its header is truncated")),
        }
        if bytes.len() != HEADER_SIZE {
            return Err(corrupt("its header has the wrong size"));
        }
        let (Some([kind]), Some(m), Some(t), Some(p), Some(salt), Some(vault_id)) = (
            r.take::<1>(),
            r.take::<4>(),
            r.take::<4>(),
            r.take::<4>(),
            r.take(),
            r.take(),
        ) else {
            return Err(corrupt("its header is truncated"));
        };
        let (Some(check), Some(wrapped)) = (r.take(), r.take()) else {
            return Err(corrupt("its header is truncated"));
        };
        if kind != KIND_PASSPHRASE && kind != KIND_KEY_FILE {
            return Err(corrupt("its header names an unknown kind of secret"));
        }
        let params = VaultParams {
            m_cost_kib: u32::from_le_bytes(m),
            t_cost: u32::from_le_bytes(t),
            p_cost: u32::from_le_bytes(p),
        };
        if params.check().is_err() {
            return Err(corrupt(
                "its header has key derivation parameters out of bounds",
            ));
        }
        Ok(Header {
            kind,
            params,
            salt,
            vault_id,
            check,
            wrapped,
        })
    }

    /// Associated data of the check value or wrapped key: its purpose, the
    /// vault's name and the plain header.
    fn associated_data(&self, purpose: &[u8], vault: &str) -> Vec<u8> {
        let mut ad = Vec::with_capacity(purpose.len() + 4 + vault.len() + PLAIN_HEADER_SIZE);
        ad.extend_from_slice(purpose);
        push_len_prefixed(&mut ad, vault.as_bytes());
        ad.extend_from_slice(&self.plain());
        ad
    }

    /// A new header for `root_key` under `secret`, with a fresh salt and
    /// nonces.
    fn seal(
        vault: &str,
        secret: &VaultSecret,
        params: VaultParams,
        vault_id: [u8; VAULT_ID_SIZE],
        root_key: &[u8; KEY_SIZE],
    ) -> Result<Header, StoreError> {
        let mut header = Header {
            kind: secret.kind(),
            params,
            salt: random()?,
            vault_id,
            check: [0; CHECK_SIZE],
            wrapped: [0; WRAPPED_SIZE],
        };
        let master = master_key(secret, &header.params, &header.salt)?;
        let cipher = XChaCha20Poly1305::new((&*master).into());
        let check = seal_into(
            &cipher,
            &header.associated_data(AD_CHECK, vault),
            &CHECK_PLAINTEXT,
        )?;
        let wrapped = seal_into(&cipher, &header.associated_data(AD_WRAP, vault), root_key)?;
        header.check.copy_from_slice(&check);
        header.wrapped.copy_from_slice(&wrapped);
        Ok(header)
    }
}

/// Reads fixed-size fields from untrusted bytes.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
}

fn push_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    // Names and tables are bounded well below 2^32 bytes.
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The master key of `secret`: argon2id of a passphrase, or BLAKE3
/// `derive_key` of a key file; both over the header's salt.
fn master_key(
    secret: &VaultSecret,
    params: &VaultParams,
    salt: &[u8; SALT_SIZE],
) -> Result<Zeroizing<[u8; KEY_SIZE]>, StoreError> {
    let mut master = Zeroizing::new([0u8; KEY_SIZE]);
    match secret {
        VaultSecret::Passphrase(passphrase) => {
            let argon_params = Params::new(
                params.m_cost_kib,
                params.t_cost,
                params.p_cost,
                Some(KEY_SIZE),
            )
            .map_err(|e| StoreError::InvalidVaultParams {
                detail: e.to_string(),
            })?;
            Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params)
                .hash_password_into(passphrase.as_bytes(), salt, &mut master[..])
                .map_err(|e| StoreError::KeyDerivation {
                    detail: e.to_string(),
                })?;
        }
        VaultSecret::KeyFile(key) => {
            let mut hasher = blake3::Hasher::new_derive_key(CONTEXT_KEY_FILE);
            hasher.update(&key[..]).update(salt);
            let mut output = hasher.finalize_xof();
            output.fill(&mut master[..]);
            output.zeroize();
            hasher.zeroize();
        }
    }
    Ok(master)
}

/// Nonce ‖ ciphertext ‖ tag of `plaintext` under `cipher`, with a random
/// nonce.
fn seal_into(
    cipher: &XChaCha20Poly1305,
    associated_data: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(NONCE_SIZE + plaintext.len() + TAG_SIZE);
    out.extend_from_slice(&random::<NONCE_SIZE>()?);
    out.extend_from_slice(plaintext);
    seal_in_place(cipher, associated_data, &mut out, plaintext.len())?;
    Ok(out)
}

/// Encrypts `buf[NONCE_SIZE..]` in place under the nonce `buf[..NONCE_SIZE]`
/// and appends the tag. `buf` must have room for the tag already, so that
/// no copy of the plaintext is left behind by a reallocation.
fn seal_in_place(
    cipher: &XChaCha20Poly1305,
    associated_data: &[u8],
    buf: &mut Vec<u8>,
    plaintext_len: usize,
) -> Result<(), StoreError> {
    let too_large = || StoreError::InvalidVaultRecord {
        what: "value",
        size: plaintext_len,
        max: MAX_VAULT_VALUE_SIZE,
    };
    let Some((nonce, plaintext)) = buf.split_first_chunk_mut::<NONCE_SIZE>() else {
        return Err(too_large());
    };
    let tag = cipher
        .encrypt_inout_detached((&*nonce).into(), associated_data, plaintext.into())
        .map_err(|_| too_large())?;
    buf.extend_from_slice(&tag);
    Ok(())
}

/// The plaintext of nonce ‖ ciphertext ‖ tag, if it authenticates.
fn open(
    cipher: &XChaCha20Poly1305,
    associated_data: &[u8],
    sealed: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let (nonce, rest) = sealed.split_first_chunk::<NONCE_SIZE>()?;
    let (ciphertext, tag) = rest.split_last_chunk::<TAG_SIZE>()?;
    let mut plaintext = Zeroizing::new(ciphertext.to_vec());
    cipher
        .decrypt_inout_detached(
            nonce.into(),
            associated_data,
            plaintext.as_mut_slice().into(),
            tag.into(),
        )
        .ok()?;
    Some(plaintext)
}

// ---- The vault -----------------------------------------------------------

/// One write of [`Vault::batch`].
///
/// `Debug` shows the table and sizes, never keys or values.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum VaultOp<'a> {
    /// Store `value` under `key` in `table`, replacing what was there.
    Put {
        /// The table, 1 to [`MAX_VAULT_TABLE_SIZE`] bytes.
        table: &'a str,
        /// The key, at most [`MAX_VAULT_KEY_SIZE`] bytes.
        key: &'a [u8],
        /// The value, at most [`MAX_VAULT_VALUE_SIZE`] bytes.
        value: &'a [u8],
    },
    /// Delete `key` from `table`, if it is there.
    Delete {
        /// The table.
        table: &'a str,
        /// The key.
        key: &'a [u8],
    },
}

impl fmt::Debug for VaultOp<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VaultOp::Put { table, key, value } => f
                .debug_struct("Put")
                .field("table", table)
                .field("key_len", &key.len())
                .field("value_len", &value.len())
                .finish(),
            VaultOp::Delete { table, key } => f
                .debug_struct("Delete")
                .field("table", table)
                .field("key_len", &key.len())
                .finish(),
        }
    }
}

/// An unlocked vault: records in tables, encrypted in the store's
/// key-value table under keys derived from the user's passphrase or key
/// file. See the crate documentation for the format and what it protects.
///
/// Every method that writes is one durable transaction of the store;
/// [`Vault::batch`] writes several records at once, all or nothing. A
/// `Vault` may be shared between threads (it is `Send + Sync`; wrap it in
/// an `Arc`). Its keys are wiped from memory when it is dropped, and its
/// `Debug` shows none of them.
pub struct Vault {
    store: Arc<Store>,
    name: String,
    vault_id: [u8; VAULT_ID_SIZE],
    /// The random key the header wraps; kept to re-wrap it.
    root_key: Zeroizing<[u8; KEY_SIZE]>,
    /// Keys the record ids (BLAKE3 keyed hash).
    index_key: Zeroizing<[u8; KEY_SIZE]>,
    /// Encrypts the records (its key is wiped when it is dropped).
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("name", &self.name)
            .field("store", &self.store.path())
            .finish_non_exhaustive()
    }
}

/// Checks a vault name; returns the namespace of its header.
fn header_namespace(name: &str) -> Result<String, StoreError> {
    let valid = (1..=MAX_VAULT_NAME_SIZE).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(StoreError::InvalidVaultName {
            name: name.to_owned(),
        });
    }
    Ok(format!("{NAMESPACE_PREFIX}{name}"))
}

impl Vault {
    /// Whether the store holds a vault of this name.
    pub fn exists(store: &Store, name: &str) -> Result<bool, StoreError> {
        let namespace = header_namespace(name)?;
        Ok(store.kv_get(&namespace, HEADER_KEY)?.is_some())
    }

    /// Creates a vault named `name` (1 to [`MAX_VAULT_NAME_SIZE`] ASCII
    /// letters, digits, `-` or `_`) unlocked by `secret`, with the default
    /// [`VaultParams`]. See [`Vault::create_with`].
    pub fn create(store: Arc<Store>, name: &str, secret: VaultSecret) -> Result<Vault, StoreError> {
        Self::create_with(store, name, secret, VaultParams::default())
    }

    /// Creates a vault named `name` unlocked by `secret`, deriving the key
    /// from a passphrase with `params`, and returns it unlocked.
    ///
    /// A vault of that name already there is never overwritten:
    /// [`StoreError::VaultExists`], checked in the transaction that writes
    /// the header. An empty passphrase is refused.
    pub fn create_with(
        store: Arc<Store>,
        name: &str,
        secret: VaultSecret,
        params: VaultParams,
    ) -> Result<Vault, StoreError> {
        let namespace = header_namespace(name)?;
        params
            .check()
            .map_err(|detail| StoreError::InvalidVaultParams { detail })?;
        check_not_empty(&secret)?;
        let exists = || StoreError::VaultExists {
            path: store.path().to_path_buf(),
            vault: name.to_owned(),
        };
        // Fail before the expensive key derivation, if we can.
        if store.kv_get(&namespace, HEADER_KEY)?.is_some() {
            return Err(exists());
        }
        let mut root_key = Zeroizing::new([0u8; KEY_SIZE]);
        fill_random(&mut root_key[..])?;
        let vault_id = random()?;
        let header = Header::seal(name, &secret, params, vault_id, &root_key)?.encode();
        store.kv_update(&namespace, HEADER_KEY, |old| match old {
            Some(_) => Err(exists()),
            None => Ok(Some(header)),
        })?;
        Ok(Self::with_keys(store, name, vault_id, root_key))
    }

    /// Unlocks the vault named `name` with `secret`.
    ///
    /// [`StoreError::NoVault`] if there is none; [`StoreError::WrongSecret`]
    /// if `secret` is not the vault's (found by the header's check value,
    /// never by decrypting records with a wrong key);
    /// [`StoreError::WrongSecretKind`] if the vault takes a passphrase and
    /// was given a key file, or the other way round. Writes nothing.
    pub fn unlock(store: Arc<Store>, name: &str, secret: VaultSecret) -> Result<Vault, StoreError> {
        let namespace = header_namespace(name)?;
        let Some(bytes) = store.kv_get(&namespace, HEADER_KEY)? else {
            return Err(StoreError::NoVault {
                path: store.path().to_path_buf(),
                vault: name.to_owned(),
            });
        };
        let corrupt = |what: &str| corrupt_header(store.path(), name, what);
        let header = Header::decode(&bytes, name, corrupt)?;
        if header.kind != secret.kind() {
            return Err(StoreError::WrongSecretKind {
                vault: name.to_owned(),
                expected: kind_name(header.kind),
                given: secret.kind_name(),
            });
        }
        let master = master_key(&secret, &header.params, &header.salt)?;
        let cipher = XChaCha20Poly1305::new((&*master).into());
        let check = open(
            &cipher,
            &header.associated_data(AD_CHECK, name),
            &header.check,
        );
        match check {
            None => {
                return Err(StoreError::WrongSecret {
                    vault: name.to_owned(),
                });
            }
            Some(check) if *check != CHECK_PLAINTEXT => {
                return Err(corrupt("its header's check value is wrong"));
            }
            Some(_) => {}
        }
        let root = open(
            &cipher,
            &header.associated_data(AD_WRAP, name),
            &header.wrapped,
        )
        .ok_or_else(|| corrupt("its wrapped key fails authentication, but the check passes"))?;
        let mut root_key = Zeroizing::new([0u8; KEY_SIZE]);
        if root.len() != KEY_SIZE {
            return Err(corrupt("its wrapped key has the wrong size"));
        }
        root_key.copy_from_slice(&root);
        Ok(Self::with_keys(store, name, header.vault_id, root_key))
    }

    fn with_keys(
        store: Arc<Store>,
        name: &str,
        vault_id: [u8; VAULT_ID_SIZE],
        root_key: Zeroizing<[u8; KEY_SIZE]>,
    ) -> Vault {
        let record_key = Zeroizing::new(blake3::derive_key(CONTEXT_RECORD_KEY, &root_key[..]));
        let index_key = Zeroizing::new(blake3::derive_key(CONTEXT_INDEX_KEY, &root_key[..]));
        Vault {
            cipher: XChaCha20Poly1305::new((&*record_key).into()),
            store,
            name: name.to_owned(),
            vault_id,
            root_key,
            index_key,
        }
    }

    /// The vault's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The store the vault is in.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Makes `new` the vault's secret, with the key derivation parameters
    /// the vault has now. See [`Vault::change_secret_with`].
    pub fn change_secret(&self, new: VaultSecret) -> Result<(), StoreError> {
        let header = self.read_header()?;
        self.change_secret_with(new, header.params)
    }

    /// Makes `new` the vault's secret (a passphrase or a key file, whatever
    /// the old one was), deriving the key from a passphrase with `params`.
    ///
    /// Only the header is rewritten, in one transaction: the records are
    /// encrypted under a random key the header wraps, and that key stays.
    /// When this returns, the old secret no longer unlocks the vault (but
    /// the old header may stay in free pages of the file for a while: see
    /// the crate documentation).
    pub fn change_secret_with(
        &self,
        new: VaultSecret,
        params: VaultParams,
    ) -> Result<(), StoreError> {
        params
            .check()
            .map_err(|detail| StoreError::InvalidVaultParams { detail })?;
        check_not_empty(&new)?;
        let header = Header::seal(&self.name, &new, params, self.vault_id, &self.root_key)?;
        let header = header.encode();
        let namespace = header_namespace(&self.name)?;
        self.store.kv_update(&namespace, HEADER_KEY, |old| {
            // Replace the header only if it is still this vault's.
            let old = old.ok_or_else(|| self.no_vault())?;
            let old = Header::decode(old, &self.name, |what| self.corrupt_header(what))?;
            if old.vault_id != self.vault_id {
                return Err(
                    self.corrupt_header("it was replaced by another vault of the same name")
                );
            }
            Ok(Some(header))
        })
    }

    fn read_header(&self) -> Result<Header, StoreError> {
        let namespace = header_namespace(&self.name)?;
        let bytes = self
            .store
            .kv_get(&namespace, HEADER_KEY)?
            .ok_or_else(|| self.no_vault())?;
        Header::decode(&bytes, &self.name, |what| self.corrupt_header(what))
    }

    fn no_vault(&self) -> StoreError {
        StoreError::NoVault {
            path: self.store.path().to_path_buf(),
            vault: self.name.clone(),
        }
    }

    fn corrupt_header(&self, what: &str) -> StoreError {
        corrupt_header(self.store.path(), &self.name, what)
    }

    // ---- Records -------------------------------------------------------

    /// Stores `value` under `key` in `table`, replacing what was there.
    /// Tables need not be created; a table is 1 to [`MAX_VAULT_TABLE_SIZE`]
    /// bytes, a key at most [`MAX_VAULT_KEY_SIZE`], a value at most
    /// [`MAX_VAULT_VALUE_SIZE`].
    pub fn put(&self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let record = self.seal_record(table, key, value)?;
        self.store
            .kv_put(&record.namespace, &record.id, &record.sealed)
    }

    /// The value under `key` in `table`, if any. A record that fails
    /// authentication is [`StoreError::Corrupt`], naming the table; other
    /// records stay readable.
    pub fn get(&self, table: &str, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        check_record(table, key, None)?;
        let namespace = self.table_namespace(table);
        let id = self.record_id(table, key);
        let Some(sealed) = self.store.kv_get(&namespace, &id)? else {
            return Ok(None);
        };
        let (stored_key, value) = self.open_record(table, &id, &sealed)?;
        if stored_key != key {
            return Err(self.corrupt_record(table, "it holds another key than its own"));
        }
        Ok(Some(value))
    }

    /// Deletes `key` from `table`. Returns whether it was there.
    pub fn delete(&self, table: &str, key: &[u8]) -> Result<bool, StoreError> {
        check_record(table, key, None)?;
        let namespace = self.table_namespace(table);
        let id = self.record_id(table, key);
        self.store.kv_delete(&namespace, &id)
    }

    /// Every key and value of `table`, by ascending key. Any record of the
    /// table that fails authentication makes the whole call
    /// [`StoreError::Corrupt`]; [`Vault::get`] still reads the others.
    pub fn list(&self, table: &str) -> Result<Vec<VaultEntry>, StoreError> {
        check_table(table)?;
        let namespace = self.table_namespace(table);
        let mut out = Vec::new();
        for (id, sealed) in self.store.kv_list(&namespace)? {
            let Ok(id) = <[u8; RECORD_ID_SIZE]>::try_from(id.as_slice()) else {
                return Err(self.corrupt_record(table, "a record has a key of the wrong size"));
            };
            let (key, value) = self.open_record(table, &id, &sealed)?;
            if self.record_id(table, &key) != id {
                return Err(self.corrupt_record(table, "a record holds another key than its own"));
            }
            out.push((key, value));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Applies `ops` in order, all in one transaction: all of them are on
    /// disk when this returns `Ok`, none of them if it fails or the process
    /// dies first. At most [`MAX_VAULT_BATCH`] ops; one out of bounds fails
    /// the batch before anything is written.
    pub fn batch(&self, ops: &[VaultOp<'_>]) -> Result<(), StoreError> {
        if ops.len() > MAX_VAULT_BATCH {
            return Err(StoreError::BatchTooLarge {
                what: "vault ops",
                count: ops.len(),
                max: MAX_VAULT_BATCH,
            });
        }
        let records = ops
            .iter()
            .map(|op| match *op {
                VaultOp::Put { table, key, value } => self.seal_record(table, key, value),
                VaultOp::Delete { table, key } => {
                    check_record(table, key, None)?;
                    Ok(SealedRecord {
                        namespace: self.table_namespace(table),
                        id: self.record_id(table, key),
                        sealed: Vec::new(),
                    })
                }
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let kv_ops: Vec<KvOp<'_>> = ops
            .iter()
            .zip(&records)
            .map(|(op, record)| match op {
                VaultOp::Put { .. } => KvOp::Put {
                    namespace: &record.namespace,
                    key: &record.id,
                    value: &record.sealed,
                },
                VaultOp::Delete { .. } => KvOp::Delete {
                    namespace: &record.namespace,
                    key: &record.id,
                },
            })
            .collect();
        self.store.kv_batch(&kv_ops)
    }

    /// The key-value namespace of `table`: the vault's, then a keyed hash
    /// of the table's name, so that table names do not show in the file.
    fn table_namespace(&self, table: &str) -> String {
        let mut hasher = blake3::Hasher::new_keyed(&self.index_key);
        hasher.update(b"T");
        hasher.update(table.as_bytes());
        let hash = hasher.finalize();
        hasher.zeroize();
        let mut namespace = String::with_capacity(
            NAMESPACE_PREFIX.len() + self.name.len() + 1 + 2 * TABLE_TAG_SIZE,
        );
        namespace.push_str(NAMESPACE_PREFIX);
        namespace.push_str(&self.name);
        namespace.push('/');
        let tag = &hash.to_hex()[..2 * TABLE_TAG_SIZE];
        namespace.push_str(tag);
        namespace
    }

    /// The key-value key of `key` in `table`: a keyed hash of both, so that
    /// record keys do not show in the file.
    fn record_id(&self, table: &str, key: &[u8]) -> [u8; RECORD_ID_SIZE] {
        let mut hasher = blake3::Hasher::new_keyed(&self.index_key);
        hasher.update(b"R");
        let mut prefix = Vec::with_capacity(4 + table.len());
        push_len_prefixed(&mut prefix, table.as_bytes());
        hasher.update(&prefix);
        hasher.update(key);
        let id = *hasher.finalize().as_bytes();
        hasher.zeroize();
        id
    }

    /// Associated data of a record: the vault, the table and the record's
    /// id, so that a record moved to another key, table or vault fails.
    fn record_associated_data(&self, table: &str, id: &[u8; RECORD_ID_SIZE]) -> Vec<u8> {
        let mut ad =
            Vec::with_capacity(AD_RECORD.len() + 8 + self.name.len() + table.len() + id.len());
        ad.extend_from_slice(AD_RECORD);
        push_len_prefixed(&mut ad, self.name.as_bytes());
        push_len_prefixed(&mut ad, table.as_bytes());
        ad.extend_from_slice(id);
        ad
    }

    /// Checks and encrypts a record: nonce ‖ AEAD(key length ‖ key ‖ value).
    fn seal_record(
        &self,
        table: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<SealedRecord, StoreError> {
        check_record(table, key, Some(value))?;
        let namespace = self.table_namespace(table);
        let id = self.record_id(table, key);
        let key_len = u16::try_from(key.len()).map_err(|_| StoreError::InvalidVaultRecord {
            what: "key",
            size: key.len(),
            max: MAX_VAULT_KEY_SIZE,
        })?;
        let plaintext_len = KEY_LEN_SIZE + key.len() + value.len();
        // Room for the tag from the start: the plaintext is never copied.
        let mut sealed = Vec::with_capacity(NONCE_SIZE + plaintext_len + TAG_SIZE);
        sealed.extend_from_slice(&random::<NONCE_SIZE>()?);
        sealed.extend_from_slice(&key_len.to_le_bytes());
        sealed.extend_from_slice(key);
        sealed.extend_from_slice(value);
        let ad = self.record_associated_data(table, &id);
        if let Err(e) = seal_in_place(&self.cipher, &ad, &mut sealed, plaintext_len) {
            sealed.zeroize();
            return Err(e);
        }
        Ok(SealedRecord {
            namespace,
            id,
            sealed,
        })
    }

    /// Decrypts a record stored under `id` in `table`: its plain key and
    /// value.
    fn open_record(
        &self,
        table: &str,
        id: &[u8; RECORD_ID_SIZE],
        sealed: &[u8],
    ) -> Result<VaultEntry, StoreError> {
        let ad = self.record_associated_data(table, id);
        let plaintext = open(&self.cipher, &ad, sealed).ok_or_else(|| {
            self.corrupt_record(
                table,
                "a record fails authentication: it was tampered with, damaged, \
                 or moved from another key",
            )
        })?;
        let split = plaintext
            .split_first_chunk::<KEY_LEN_SIZE>()
            .and_then(|(len, rest)| {
                let len = usize::from(u16::from_le_bytes(*len));
                (len <= rest.len()).then(|| rest.split_at(len))
            });
        let Some((key, value)) = split else {
            return Err(self.corrupt_record(table, "a record's key length is wrong"));
        };
        Ok((key.to_vec(), Zeroizing::new(value.to_vec())))
    }

    fn corrupt_record(&self, table: &str, what: &str) -> StoreError {
        StoreError::Corrupt {
            path: self.store.path().to_path_buf(),
            detail: format!("vault {:?}, table {table:?}: {what}", self.name),
        }
    }
}

/// A record ready to be written.
struct SealedRecord {
    namespace: String,
    id: [u8; RECORD_ID_SIZE],
    sealed: Vec<u8>,
}

fn corrupt_header(path: &Path, vault: &str, what: &str) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("vault {vault:?}: {what}"),
    }
}

fn check_not_empty(secret: &VaultSecret) -> Result<(), StoreError> {
    match secret {
        VaultSecret::Passphrase(passphrase) if passphrase.is_empty() => {
            Err(StoreError::EmptyPassphrase)
        }
        _ => Ok(()),
    }
}

fn check_table(table: &str) -> Result<(), StoreError> {
    if table.is_empty() || table.len() > MAX_VAULT_TABLE_SIZE {
        return Err(StoreError::InvalidVaultRecord {
            what: "table name",
            size: table.len(),
            max: MAX_VAULT_TABLE_SIZE,
        });
    }
    Ok(())
}

fn check_record(table: &str, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
    check_table(table)?;
    if key.len() > MAX_VAULT_KEY_SIZE {
        return Err(StoreError::InvalidVaultRecord {
            what: "key",
            size: key.len(),
            max: MAX_VAULT_KEY_SIZE,
        });
    }
    if let Some(value) = value
        && value.len() > MAX_VAULT_VALUE_SIZE
    {
        return Err(StoreError::InvalidVaultRecord {
            what: "value",
            size: value.len(),
            max: MAX_VAULT_VALUE_SIZE,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_adds_up() {
        assert_eq!(PLAIN_HEADER_SIZE, 50);
        assert_eq!(HEADER_SIZE, 50 + 56 + 72);
        // The longest namespace fits the key-value bound.
        let longest = NAMESPACE_PREFIX.len() + MAX_VAULT_NAME_SIZE + 1 + 2 * TABLE_TAG_SIZE;
        assert!(longest <= crate::MAX_KV_NAMESPACE_SIZE);
        // The largest record fits a key-value value.
        let largest =
            NONCE_SIZE + KEY_LEN_SIZE + MAX_VAULT_KEY_SIZE + MAX_VAULT_VALUE_SIZE + TAG_SIZE;
        assert!(largest <= MAX_KV_VALUE_SIZE);
        assert!(u16::try_from(MAX_VAULT_KEY_SIZE).is_ok());
    }

    #[test]
    fn header_round_trips() {
        let header = Header {
            kind: KIND_KEY_FILE,
            params: VaultParams {
                m_cost_kib: 8,
                t_cost: 1,
                p_cost: 1,
            },
            salt: [1; SALT_SIZE],
            vault_id: [2; VAULT_ID_SIZE],
            check: [3; CHECK_SIZE],
            wrapped: [4; WRAPPED_SIZE],
        };
        let bytes = header.encode();
        assert_eq!(bytes.len(), HEADER_SIZE);
        let corrupt = |what: &str| StoreError::Corrupt {
            path: "x".into(),
            detail: what.to_owned(),
        };
        let back = Header::decode(&bytes, "v", corrupt).unwrap();
        assert_eq!(back.encode(), bytes);
        // Every truncation is an error, not a panic.
        for len in 0..bytes.len() {
            assert!(Header::decode(&bytes[..len], "v", corrupt).is_err());
        }
    }

    #[test]
    fn default_params_are_in_bounds() {
        VaultParams::default().check().unwrap();
    }
}
