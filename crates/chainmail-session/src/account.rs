//! An account: an Ed25519 identity key (the address is derived from it)
//! and a vodozemac Olm account (Curve25519 identity, one-time and fallback
//! keys) whose keys the identity signs.

use std::time::Duration;

use chainmail_mixnet::Time;
use chainmail_mixnet::message::ClientAddress;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use vodozemac::olm;
use zeroize::Zeroizing;

use crate::descriptor::{AccountDescriptor, DESCRIPTOR_VERSION, DescriptorBody, sign_binding};
use crate::{Address, SessionError};

/// One-time keys a published descriptor carries at least (the account
/// generates more when fewer are left).
pub const MIN_ONE_TIME_KEYS: usize = 20;
/// One-time keys generated at a time.
pub const ONE_TIME_KEY_BATCH: usize = 40;

/// An account's secrets.
pub struct Account {
    identity: SigningKey,
    olm: olm::Account,
    /// One-time keys consumed since the descriptor was last published.
    consumed_since_publish: usize,
}

/// What [`Account::state`] returns: everything needed to rebuild the
/// account. Secret: keep it encrypted at rest.
#[derive(Serialize, Deserialize)]
pub struct AccountState {
    identity: Seed,
    olm: olm::AccountPickle,
    consumed_since_publish: usize,
}

/// A secret seed, wiped when dropped.
#[derive(Serialize, Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
struct Seed([u8; 32]);

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("address", &self.address().short())
            .finish_non_exhaustive()
    }
}

impl Account {
    /// A new account with the identity key `identity` (fresh Olm keys).
    pub fn new(identity: SigningKey) -> Self {
        let mut olm = olm::Account::new();
        olm.generate_one_time_keys(ONE_TIME_KEY_BATCH);
        olm.generate_fallback_key();
        Account {
            identity,
            olm,
            consumed_since_publish: 0,
        }
    }

    /// A new account with a random identity.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut seed[..]);
        Self::new(SigningKey::from_bytes(&seed))
    }

    /// The account's address.
    pub fn address(&self) -> Address {
        Address::from_key(&self.identity.verifying_key())
    }

    /// The identity key's secret seed (to move the account to another
    /// device; its Olm keys are new there, which contacts see as a key
    /// change).
    pub fn identity_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.identity.to_bytes())
    }

    /// The Olm identity key.
    pub fn curve_key(&self) -> [u8; 32] {
        self.olm.curve25519_key().to_bytes()
    }

    /// The identity's signature binding the Olm identity key to the address.
    pub fn binding(&self, network: &[u8; 32]) -> [u8; 64] {
        sign_binding(&self.identity, network, &self.curve_key())
    }

    /// A fresh signed descriptor valid for `lifetime`, with every unused
    /// one-time key (at least [`MIN_ONE_TIME_KEYS`]: more are generated
    /// when fewer are left).
    pub fn descriptor(
        &mut self,
        now: Time,
        network: [u8; 32],
        mixnet: ClientAddress,
        client_version: &str,
        lifetime: Duration,
    ) -> Result<AccountDescriptor, SessionError> {
        // Keys are never marked published, so vodozemac lists every
        // one-time key it still holds: the pool in the DHT is always the
        // set of keys this account can still open a first message with
        // (less those used since, which [`Account::wants_republish`]
        // tracks).
        if self.olm.stored_one_time_key_count() < MIN_ONE_TIME_KEYS {
            self.olm.generate_one_time_keys(ONE_TIME_KEY_BATCH);
        }
        let mut one_time_keys: Vec<[u8; 32]> = self
            .olm
            .one_time_keys()
            .values()
            .map(|k| k.to_bytes())
            .collect();
        one_time_keys.sort_unstable();
        one_time_keys.truncate(crate::descriptor::MAX_ONE_TIME_KEYS);
        if self.olm.fallback_key().is_empty() {
            self.olm.generate_fallback_key();
        }
        let fallback_key = self
            .olm
            .fallback_key()
            .values()
            .next()
            .map(|k| k.to_bytes())
            .ok_or(SessionError::Invalid("no fallback key"))?;
        let lifetime_ms = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
        let body = DescriptorBody {
            version: DESCRIPTOR_VERSION,
            network,
            address: self.address(),
            curve_key: self.curve_key(),
            one_time_keys,
            fallback_key,
            mixnet,
            client_version: client_version.into(),
            issued: now,
            expires: Time(now.0.saturating_add(lifetime_ms)),
        };
        self.consumed_since_publish = 0;
        body.sign(&self.identity)
    }

    /// Whether so many one-time keys were used since the last descriptor
    /// that a new one should be published.
    pub fn wants_republish(&self) -> bool {
        self.consumed_since_publish >= MIN_ONE_TIME_KEYS / 2
    }

    /// A session to the account with Olm identity key `their_curve_key`,
    /// using `one_time_key`, one of the keys of its descriptor (or its
    /// fallback key).
    pub fn outbound_session(
        &self,
        their_curve_key: &[u8; 32],
        one_time_key: &[u8; 32],
    ) -> Result<olm::Session, SessionError> {
        self.olm
            .create_outbound_session(
                olm::SessionConfig::version_1(),
                vodozemac::Curve25519PublicKey::from_bytes(*their_curve_key),
                vodozemac::Curve25519PublicKey::from_bytes(*one_time_key),
            )
            .map_err(|_| SessionError::Invalid("the contact's keys are unusable"))
    }

    /// A session from the first message someone sent us.
    pub fn inbound_session(
        &mut self,
        their_curve_key: &[u8; 32],
        message: &olm::PreKeyMessage,
    ) -> Result<(olm::Session, Vec<u8>), SessionError> {
        let result = self
            .olm
            .create_inbound_session(
                olm::SessionConfig::version_1(),
                vodozemac::Curve25519PublicKey::from_bytes(*their_curve_key),
                message,
            )
            .map_err(|e| match e {
                olm::SessionCreationError::MissingOneTimeKey(_) => SessionError::Invalid(
                    "the message used a one-time key this account no longer has",
                ),
                _ => SessionError::Auth("first message of a session"),
            })?;
        self.consumed_since_publish += 1;
        Ok((result.session, result.plaintext))
    }

    /// Everything needed to rebuild the account (secret).
    pub fn state(&self) -> AccountState {
        AccountState {
            identity: Seed(self.identity.to_bytes()),
            olm: self.olm.pickle(),
            consumed_since_publish: self.consumed_since_publish,
        }
    }

    /// Rebuilds an account from [`Account::state`].
    pub fn from_state(state: AccountState) -> Self {
        Account {
            identity: SigningKey::from_bytes(&state.identity.0),
            olm: olm::Account::from_pickle(state.olm),
            consumed_since_publish: state.consumed_since_publish,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainmail_packet::{MailboxId, NodeId};
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    const NOW: Time = Time(1_800_000_000_000);

    fn mixnet(rng: &mut StdRng) -> ClientAddress {
        ClientAddress {
            seal_key: rng.random(),
            mailboxes: vec![
                (NodeId(rng.random()), MailboxId(rng.random())),
                (NodeId(rng.random()), MailboxId(rng.random())),
            ],
        }
    }

    #[test]
    fn descriptors_carry_enough_one_time_keys_and_verify() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut account = Account::generate(&mut rng);
        let d = account
            .descriptor(
                NOW,
                [1; 32],
                mixnet(&mut rng),
                "0.1.0",
                Duration::from_secs(3600),
            )
            .unwrap();
        assert!(d.body.one_time_keys.len() >= MIN_ONE_TIME_KEYS);
        let bytes = d.encode().unwrap();
        AccountDescriptor::decode_verified(&bytes, &[1; 32], &account.address(), NOW).unwrap();
    }

    #[test]
    fn a_session_starts_from_a_descriptor_and_the_state_survives_a_pickle() {
        let mut rng = StdRng::seed_from_u64(4);
        let alice = Account::generate(&mut rng);
        let mut bob = Account::generate(&mut rng);
        let d = bob
            .descriptor(
                NOW,
                [1; 32],
                mixnet(&mut rng),
                "0.1.0",
                Duration::from_secs(3600),
            )
            .unwrap();
        let mut out = alice
            .outbound_session(&d.body.curve_key, &d.body.one_time_keys[3])
            .unwrap();
        let olm::OlmMessage::PreKey(m) = out.encrypt(b"hello").unwrap() else {
            panic!("first message must be a pre-key message");
        };
        // Bob restarts between publishing and receiving.
        let json = serde_json::to_vec(&bob.state()).unwrap();
        let mut bob = Account::from_state(serde_json::from_slice(&json).unwrap());
        let (_, plaintext) = bob.inbound_session(&alice.curve_key(), &m).unwrap();
        assert_eq!(plaintext, b"hello");
        // The one-time key is gone: the same message cannot start a second
        // session.
        assert!(bob.inbound_session(&alice.curve_key(), &m).is_err());
    }
}
