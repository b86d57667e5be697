//! An account: an Ed25519 identity key (the address is derived from it)
//! and a vodozemac Olm account (Curve25519 identity and fallback keys)
//! whose keys the identity signs.
//!
//! First messages are encrypted to the fallback key, not to one-time keys.
//! Without a server handing each one-time key to one sender only (as
//! Signal's and Matrix's servers do), two strangers who read the same
//! descriptor can pick the same one-time key; the second one's request
//! would then be unreadable while its sender saw it delivered. The
//! fallback key opens any number of first messages. It is replaced once
//! per half descriptor lifetime and the replaced one is kept until the
//! next replacement, so a first message stays readable for a whole
//! descriptor lifetime and a stolen device opens no first message older
//! than two replacements (about two days at the default period; Signal
//! keeps a signed prekey for a week or more).

use std::time::Duration;

use chainmail_mixnet::Time;
use chainmail_mixnet::message::ClientAddress;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use vodozemac::olm;
use zeroize::Zeroizing;

use crate::descriptor::{AccountDescriptor, DESCRIPTOR_VERSION, DescriptorBody, sign_binding};
use crate::{Address, SessionError};

/// An account's secrets.
pub struct Account {
    identity: SigningKey,
    olm: olm::Account,
    /// When the current fallback key was made (`None`: before the first
    /// descriptor, or an account stored before this was kept).
    fallback_since: Option<Time>,
}

/// What [`Account::state`] returns: everything needed to rebuild the
/// account. Secret: keep it encrypted at rest.
#[derive(Serialize, Deserialize)]
pub struct AccountState {
    identity: Seed,
    olm: olm::AccountPickle,
    #[serde(default)]
    fallback_since: Option<Time>,
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
        Account {
            identity,
            olm: olm::Account::new(),
            fallback_since: None,
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

    /// A fresh signed descriptor valid for `lifetime` at most, naming the
    /// current fallback key. The key is replaced when it is half a lifetime
    /// old, and the descriptor expires before the key it names is dropped
    /// (two replacements later), so a sender who found it can always be
    /// read.
    pub fn descriptor(
        &mut self,
        now: Time,
        network: [u8; 32],
        mixnet: ClientAddress,
        client_version: &str,
        lifetime: Duration,
    ) -> Result<AccountDescriptor, SessionError> {
        let lifetime_ms = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
        let since = match self.fallback_since {
            Some(t) if now.0 < t.0.saturating_add(lifetime_ms / 2) && now >= t => t,
            _ => {
                self.olm.generate_fallback_key();
                self.fallback_since = Some(now);
                now
            }
        };
        // Keys are never marked published, so vodozemac always lists the
        // current fallback key.
        let fallback_key = self
            .olm
            .fallback_key()
            .values()
            .next()
            .map(|k| k.to_bytes())
            .ok_or(SessionError::Invalid("no fallback key"))?;
        let expires = now
            .0
            .saturating_add(lifetime_ms)
            .min(since.0.saturating_add(lifetime_ms));
        let body = DescriptorBody {
            version: DESCRIPTOR_VERSION,
            network,
            address: self.address(),
            curve_key: self.curve_key(),
            one_time_keys: Vec::new(),
            fallback_key,
            mixnet,
            client_version: client_version.into(),
            issued: now,
            expires: Time(expires),
        };
        body.sign(&self.identity)
    }

    /// A session to the account with Olm identity key `their_curve_key`,
    /// using `one_time_key`: the fallback key of its descriptor (or, from
    /// descriptors of older versions, one of their one-time keys).
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
                olm::SessionCreationError::MissingOneTimeKey(_) => {
                    SessionError::Invalid("the message used a key this account no longer has")
                }
                _ => SessionError::Auth("first message of a session"),
            })?;
        Ok((result.session, result.plaintext))
    }

    /// Everything needed to rebuild the account (secret).
    pub fn state(&self) -> AccountState {
        AccountState {
            identity: Seed(self.identity.to_bytes()),
            olm: self.olm.pickle(),
            fallback_since: self.fallback_since,
        }
    }

    /// Rebuilds an account from [`Account::state`].
    pub fn from_state(state: AccountState) -> Self {
        Account {
            identity: SigningKey::from_bytes(&state.identity.0),
            olm: olm::Account::from_pickle(state.olm),
            fallback_since: state.fallback_since,
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

    const HOUR: u64 = 3_600_000;

    fn descriptor_at(account: &mut Account, rng: &mut StdRng, at: u64) -> AccountDescriptor {
        account
            .descriptor(
                Time(NOW.0 + at),
                [1; 32],
                mixnet(rng),
                "0.1.0",
                Duration::from_millis(48 * HOUR),
            )
            .unwrap()
    }

    /// A first message to the fallback key of the descriptor `d`.
    fn first_message(alice: &Account, d: &AccountDescriptor, text: &[u8]) -> olm::PreKeyMessage {
        let mut out = alice
            .outbound_session(&d.body.curve_key, &d.body.fallback_key)
            .unwrap();
        let olm::OlmMessage::PreKey(m) = out.encrypt(text).unwrap() else {
            panic!("first message must be a pre-key message");
        };
        m
    }

    #[test]
    fn descriptors_verify_and_name_a_fallback_key_but_no_one_time_keys() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut account = Account::generate(&mut rng);
        let d = descriptor_at(&mut account, &mut rng, 0);
        assert!(d.body.one_time_keys.is_empty());
        assert_eq!(d.body.expires, Time(NOW.0 + 48 * HOUR));
        let bytes = d.encode().unwrap();
        AccountDescriptor::decode_verified(&bytes, &[1; 32], &account.address(), NOW).unwrap();
    }

    #[test]
    fn many_strangers_reading_one_descriptor_are_all_readable() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut bob = Account::generate(&mut rng);
        let d = descriptor_at(&mut bob, &mut rng, 0);
        for i in 0..50u8 {
            let stranger = Account::generate(&mut rng);
            let m = first_message(&stranger, &d, &[i]);
            let (_, plain) = bob.inbound_session(&stranger.curve_key(), &m).unwrap();
            assert_eq!(plain, [i]);
        }
    }

    #[test]
    fn the_fallback_key_turns_over_and_outlives_every_descriptor_naming_it() {
        let mut rng = StdRng::seed_from_u64(5);
        let alice = Account::generate(&mut rng);
        let mut bob = Account::generate(&mut rng);
        let first = descriptor_at(&mut bob, &mut rng, 0);
        // Republished often within half a lifetime: the same key.
        let later = descriptor_at(&mut bob, &mut rng, 23 * HOUR);
        assert_eq!(later.body.fallback_key, first.body.fallback_key);
        // It expires when the key it names is replaced for the second time.
        assert_eq!(later.body.expires, Time(NOW.0 + 48 * HOUR));
        let old = first_message(&alice, &later, b"sent late");
        // Half a lifetime on: a new key; the old one still opens.
        let second = descriptor_at(&mut bob, &mut rng, 24 * HOUR);
        assert_ne!(second.body.fallback_key, first.body.fallback_key);
        assert_eq!(second.body.expires, Time(NOW.0 + 72 * HOUR));
        // Bob restarts in between: the key's age is kept.
        let json = serde_json::to_vec(&bob.state()).unwrap();
        let mut bob = Account::from_state(serde_json::from_slice(&json).unwrap());
        let again = descriptor_at(&mut bob, &mut rng, 30 * HOUR);
        assert_eq!(again.body.fallback_key, second.body.fallback_key);
        let m = first_message(&alice, &again, b"new key");
        assert_eq!(
            bob.inbound_session(&alice.curve_key(), &m).unwrap().1,
            b"new key"
        );
        let (_, plain) = bob.inbound_session(&alice.curve_key(), &old).unwrap();
        assert_eq!(plain, b"sent late");
        // Two replacements on, when `first` and `later` have expired, the
        // first key is gone: a device stolen now opens no first message
        // sent to it.
        descriptor_at(&mut bob, &mut rng, 48 * HOUR);
        assert!(bob.inbound_session(&alice.curve_key(), &old).is_err());
    }
}
