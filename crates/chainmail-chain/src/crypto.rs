//! Hashes, member keys, epoch-key wrapping and message encryption.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce, XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use sha2::{Digest, Sha512_256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::ChainError;

/// A 32-byte SHA-512/256 digest.
pub type Hash = [u8; 32];

/// SHA-512/256 of `bytes`.
pub fn sha512_256(bytes: &[u8]) -> Hash {
    Sha512_256::digest(bytes).into()
}

/// SHA-512/256 over a domain label and parts, each part length-prefixed so
/// that no two inputs collide by shifting bytes between parts.
pub(crate) fn hash(domain: &str, parts: &[&[u8]]) -> Hash {
    let mut h = Sha512_256::new();
    h.update((domain.len() as u32).to_be_bytes());
    h.update(domain.as_bytes());
    for part in parts {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// A member's public keys: Ed25519 to sign records and blocks (its bytes
/// are the member's id), X25519 to receive community keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberKeys {
    /// Ed25519 verifying key; also the member's id.
    pub sign: [u8; 32],
    /// X25519 public key for key wraps.
    pub kem: [u8; 32],
}

/// A member's secret keys for one community (a fresh pair per community,
/// so memberships are not linkable to each other or to the account).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MemberSecret {
    sign: [u8; 32],
    kem: [u8; 32],
    /// Derived once: two scalar multiplications, and the id is asked for
    /// on every record, block and insertion.
    #[zeroize(skip)]
    public: MemberKeys,
}

impl std::fmt::Debug for MemberSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberSecret")
            .field("id", &crate::short(&self.public().sign))
            .finish_non_exhaustive()
    }
}

impl MemberSecret {
    /// Fresh keys.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut sign = [0u8; 32];
        let mut kem = [0u8; 32];
        rng.fill_bytes(&mut sign);
        rng.fill_bytes(&mut kem);
        Self::new(sign, kem)
    }

    /// The keys back from [`MemberSecret::to_bytes`].
    pub fn from_bytes(bytes: &[u8; 64]) -> Self {
        let mut sign = [0u8; 32];
        let mut kem = [0u8; 32];
        sign.copy_from_slice(&bytes[..32]);
        kem.copy_from_slice(&bytes[32..]);
        Self::new(sign, kem)
    }

    fn new(sign: [u8; 32], kem: [u8; 32]) -> Self {
        let public = MemberKeys {
            sign: SigningKey::from_bytes(&sign).verifying_key().to_bytes(),
            kem: x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(kem)).to_bytes(),
        };
        Self { sign, kem, public }
    }

    /// The secret seeds (keep them encrypted at rest).
    pub fn to_bytes(&self) -> Zeroizing<[u8; 64]> {
        let mut out = Zeroizing::new([0u8; 64]);
        out[..32].copy_from_slice(&self.sign);
        out[32..].copy_from_slice(&self.kem);
        out
    }

    /// The public keys.
    pub fn public(&self) -> MemberKeys {
        self.public
    }

    /// The member id (the Ed25519 public key).
    pub fn id(&self) -> [u8; 32] {
        self.public.sign
    }

    pub(crate) fn sign(&self, domain: &str, digest: &Hash) -> [u8; 64] {
        let key = SigningKey::from_bytes(&self.sign);
        key.sign(&signed_message(domain, digest)).to_bytes()
    }

    fn diffie_hellman(&self, public: &[u8; 32]) -> Zeroizing<[u8; 32]> {
        let secret = x25519_dalek::StaticSecret::from(self.kem);
        Zeroizing::new(
            secret
                .diffie_hellman(&x25519_dalek::PublicKey::from(*public))
                .to_bytes(),
        )
    }
}

fn signed_message(domain: &str, digest: &Hash) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + 32);
    m.extend_from_slice(domain.as_bytes());
    m.extend_from_slice(digest);
    m
}

/// Checks an Ed25519 signature by `key` over `domain ‖ digest` (strict:
/// no malleable or small-order forms).
pub(crate) fn verify(
    key: &[u8; 32],
    domain: &str,
    digest: &Hash,
    signature: &[u8; 64],
) -> Result<(), ChainError> {
    let key = VerifyingKey::from_bytes(key).map_err(|_| ChainError::BadSignature)?;
    key.verify_strict(
        &signed_message(domain, digest),
        &Signature::from_bytes(signature),
    )
    .map_err(|_| ChainError::BadSignature)
}

/// A community key of one epoch.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct EpochKey(pub(crate) [u8; 32]);

impl std::fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EpochKey(..)")
    }
}

impl EpochKey {
    /// A random key.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        Self(k)
    }
    /// The key back from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
    /// Its bytes (keep them encrypted at rest).
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0)
    }

    /// The rendezvous secret of this epoch: members derive it, removed
    /// members (who never get the key) cannot.
    pub fn rendezvous_secret(&self, community: &Hash) -> Hash {
        hash("chainmail rendezvous secret", &[community, &self.0])
    }
}

/// Size of one wrapped epoch key: ciphertext (32) and tag (16).
pub const WRAP_LEN: usize = 48;

fn wrap_key(
    community: &Hash,
    epoch: u32,
    ephemeral: &[u8; 32],
    member_kem: &[u8; 32],
    shared: &[u8; 32],
) -> ChaCha20Poly1305 {
    let key = Zeroizing::new(hash(
        "chainmail key wrap",
        &[
            community,
            &epoch.to_be_bytes(),
            ephemeral,
            member_kem,
            shared,
        ],
    ));
    ChaCha20Poly1305::new((&*key).into())
}

/// Wraps `key` for each of `members` with one ephemeral X25519 key.
/// Returns the ephemeral public key and one 48-byte wrap per member, in
/// the order given.
pub(crate) fn wrap_for<R: CryptoRng + ?Sized>(
    rng: &mut R,
    community: &Hash,
    epoch: u32,
    key: &EpochKey,
    members: &[[u8; 32]],
) -> ([u8; 32], Vec<[u8; WRAP_LEN]>) {
    let mut seed = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut *seed);
    let secret = x25519_dalek::StaticSecret::from(*seed);
    let ephemeral = x25519_dalek::PublicKey::from(&secret).to_bytes();
    let wraps = members
        .iter()
        .map(|kem| {
            let shared = Zeroizing::new(
                secret
                    .diffie_hellman(&x25519_dalek::PublicKey::from(*kem))
                    .to_bytes(),
            );
            let sealed = wrap_key(community, epoch, &ephemeral, kem, &shared)
                .encrypt(&Nonce::default(), key.0.as_slice())
                .unwrap_or_default();
            let mut out = [0u8; WRAP_LEN];
            if sealed.len() == WRAP_LEN {
                out.copy_from_slice(&sealed);
            }
            out
        })
        .collect();
    (ephemeral, wraps)
}

/// Opens a wrap addressed to `me`.
pub(crate) fn unwrap_for(
    me: &MemberSecret,
    community: &Hash,
    epoch: u32,
    ephemeral: &[u8; 32],
    sealed: &[u8; WRAP_LEN],
) -> Option<EpochKey> {
    let shared = me.diffie_hellman(ephemeral);
    let kem = me.public().kem;
    let plain = Zeroizing::new(
        wrap_key(community, epoch, ephemeral, &kem, &shared)
            .decrypt(&Nonce::default(), sealed.as_slice())
            .ok()?,
    );
    let mut k = [0u8; 32];
    k.copy_from_slice(plain.get(..32)?);
    Some(EpochKey(k))
}

fn message_aad(community: &Hash, issuer: &[u8; 32], key_id: &Hash) -> Vec<u8> {
    let mut aad = Vec::with_capacity(96);
    aad.extend_from_slice(community);
    aad.extend_from_slice(issuer);
    aad.extend_from_slice(key_id);
    aad
}

/// Encrypts a post under an epoch key (XChaCha20-Poly1305, random nonce,
/// bound to the community, the author and the key).
pub(crate) fn seal_post<R: CryptoRng + ?Sized>(
    rng: &mut R,
    key: &EpochKey,
    community: &Hash,
    issuer: &[u8; 32],
    key_id: &Hash,
    plain: &[u8],
) -> ([u8; 24], Vec<u8>) {
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    let sealed = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plain,
                aad: &message_aad(community, issuer, key_id),
            },
        )
        .unwrap_or_default();
    (nonce, sealed)
}

/// Decrypts a post; `None` if the key is wrong or the bytes were altered.
pub(crate) fn open_post(
    key: &EpochKey,
    community: &Hash,
    issuer: &[u8; 32],
    key_id: &Hash,
    nonce: &[u8; 24],
    sealed: &[u8],
) -> Option<Vec<u8>> {
    XChaCha20Poly1305::new((&key.0).into())
        .decrypt(
            &XNonce::from(*nonce),
            Payload {
                msg: sealed,
                aad: &message_aad(community, issuer, key_id),
            },
        )
        .ok()
}
