//! What travels inside packets and between a client and its providers:
//! client addresses, sealed messages, acknowledgements, mailbox items and
//! signed fetch requests.

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use chainmail_packet::{MESSAGE_SIZE, MailboxId, NodeId, PAYLOAD_SIZE, SURB_SIZE, Surb, SurbId};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::{MixnetError, Time};

/// Identifier of a message, chosen at random by its sender.
pub type MessageId = [u8; 16];

/// Size of a sealed message's plaintext: a packet message minus the
/// ephemeral key and the tag.
pub const SEALED_PLAINTEXT_SIZE: usize = MESSAGE_SIZE - 32 - 16;
const DATA_HEADER: usize = 1 + 16 + 1 + SURB_SIZE + 2;
/// Largest message body one packet carries (with a SURB for its
/// acknowledgement).
pub const MAX_BODY: usize = SEALED_PLAINTEXT_SIZE - DATA_HEADER;

const KIND_DATA: u8 = 0x01;
const KIND_LOOP: u8 = 0x02;
const KIND_ACK: u8 = 0x03;

/// The id of the mailbox owned by the Ed25519 key `owner`: a provider can
/// check a fetch request against it without any registration.
pub fn mailbox_id(owner: &[u8; 32]) -> MailboxId {
    MailboxId(
        *blake3::Hasher::new_derive_key("chainmail mailbox id v1")
            .update(owner)
            .finalize()
            .as_bytes(),
    )
}

/// The mailbox id a mix uses for its own loop cover.
pub fn mix_loop_mailbox(node: &NodeId) -> MailboxId {
    MailboxId(
        *blake3::Hasher::new_derive_key("chainmail mix loop mailbox v1")
            .update(&node.0)
            .finalize()
            .as_bytes(),
    )
}

/// Drop cover is delivered to this mailbox, which every provider discards.
pub const DISCARD_MAILBOX: MailboxId = MailboxId([0; 32]);

/// How to reach a client: the key its messages are sealed to, and its
/// mailboxes (at least two providers, so one can fail).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientAddress {
    /// X25519 key that messages to this client are sealed to.
    pub seal_key: [u8; 32],
    /// (provider, mailbox) pairs.
    pub mailboxes: Vec<(NodeId, MailboxId)>,
}

/// At most this many mailboxes per address.
pub const MAX_MAILBOXES: usize = 4;
const ADDRESS_PREFIX: &str = "cmx1";

impl ClientAddress {
    /// The address as text: a prefix, then hex of the encoding and a 4-byte
    /// checksum, so that a mistyped address is an error and never someone
    /// else's address.
    pub fn to_text(&self) -> String {
        let bytes = postcard::to_stdvec(self).unwrap_or_default();
        let check = blake3::hash(&bytes);
        let mut s = String::from(ADDRESS_PREFIX);
        for b in bytes.iter().chain(&check.as_bytes()[..4]) {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Parses [`ClientAddress::to_text`] output.
    pub fn from_text(text: &str) -> Result<Self, MixnetError> {
        let hex = text
            .trim()
            .strip_prefix(ADDRESS_PREFIX)
            .ok_or(MixnetError::InvalidAddress("must start with cmx1"))?;
        if hex.len() % 2 != 0 || hex.len() < 10 || !hex.is_ascii() {
            return Err(MixnetError::InvalidAddress("wrong length"));
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| MixnetError::InvalidAddress("not hexadecimal"))?;
        let (body, check) = bytes.split_at(bytes.len() - 4);
        if blake3::hash(body).as_bytes()[..4] != *check {
            return Err(MixnetError::InvalidAddress("checksum mismatch (mistyped?)"));
        }
        let address: ClientAddress =
            postcard::from_bytes(body).map_err(|_| MixnetError::InvalidAddress("malformed"))?;
        address.validate()?;
        Ok(address)
    }

    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), MixnetError> {
        if self.mailboxes.is_empty() || self.mailboxes.len() > MAX_MAILBOXES {
            return Err(MixnetError::InvalidAddress("must name 1 to 4 mailboxes"));
        }
        Ok(())
    }
}

/// The secret half of a client's sealing key.
pub struct SealKey(StaticSecret);

impl SealKey {
    /// A fresh key.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        SealKey(StaticSecret::random_from_rng(rng))
    }

    /// From stored bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SealKey(StaticSecret::from(bytes))
    }

    /// The stored bytes.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public key.
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.0).to_bytes()
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealKey").finish_non_exhaustive()
    }
}

struct SealKeys {
    stream: Zeroizing<[u8; 32]>,
    mac: Zeroizing<[u8; 32]>,
}

fn seal_keys(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &[u8; 32]) -> SealKeys {
    let mut out = Zeroizing::new([0u8; 64]);
    blake3::Hasher::new_derive_key("chainmail sealed message v1")
        .update(ephemeral)
        .update(recipient)
        .update(shared)
        .finalize_xof()
        .fill(&mut out[..]);
    let mut stream = Zeroizing::new([0u8; 32]);
    let mut mac = Zeroizing::new([0u8; 32]);
    stream.copy_from_slice(&out[..32]);
    mac.copy_from_slice(&out[32..]);
    SealKeys { stream, mac }
}

fn seal_tag(mac: &[u8; 32], ephemeral: &[u8; 32], ciphertext: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new_keyed(mac);
    h.update(ephemeral).update(ciphertext);
    let mut tag = [0u8; 16];
    h.finalize_xof().fill(&mut tag);
    tag
}

/// Seals a fixed-size plaintext to `recipient`: an ephemeral X25519 key,
/// ChaCha20 and a keyed-BLAKE3 tag (encrypt-then-MAC). The result fills a
/// packet message exactly, so providers cannot tell a real message from a
/// client's loop cover.
pub fn seal<R: CryptoRng + ?Sized>(
    rng: &mut R,
    recipient: &[u8; 32],
    plaintext: &[u8; SEALED_PLAINTEXT_SIZE],
) -> Box<[u8; MESSAGE_SIZE]> {
    let ephemeral = StaticSecret::random_from_rng(rng);
    let ephemeral_public = PublicKey::from(&ephemeral).to_bytes();
    let shared = Zeroizing::new(
        ephemeral
            .diffie_hellman(&PublicKey::from(*recipient))
            .to_bytes(),
    );
    let keys = seal_keys(&shared, &ephemeral_public, recipient);
    let mut out = Box::new([0u8; MESSAGE_SIZE]);
    out[..32].copy_from_slice(&ephemeral_public);
    let body = &mut out[32..32 + SEALED_PLAINTEXT_SIZE];
    body.copy_from_slice(plaintext);
    ChaCha20::new((&*keys.stream).into(), &[0u8; 12].into()).apply_keystream(body);
    let tag = seal_tag(
        &keys.mac,
        &ephemeral_public,
        &out[32..32 + SEALED_PLAINTEXT_SIZE],
    );
    out[32 + SEALED_PLAINTEXT_SIZE..].copy_from_slice(&tag);
    out
}

/// Opens a sealed message; fails if it was not sealed to this key or was
/// modified.
pub fn open(
    key: &SealKey,
    sealed: &[u8; MESSAGE_SIZE],
) -> Result<Zeroizing<[u8; SEALED_PLAINTEXT_SIZE]>, MixnetError> {
    let mut ephemeral = [0u8; 32];
    ephemeral.copy_from_slice(&sealed[..32]);
    let shared = Zeroizing::new(key.0.diffie_hellman(&PublicKey::from(ephemeral)).to_bytes());
    let keys = seal_keys(&shared, &ephemeral, &key.public());
    let ciphertext = &sealed[32..32 + SEALED_PLAINTEXT_SIZE];
    let tag = seal_tag(&keys.mac, &ephemeral, ciphertext);
    if !bool::from(tag.ct_eq(&sealed[32 + SEALED_PLAINTEXT_SIZE..])) {
        return Err(MixnetError::Decoding(
            "sealed message (not for us, or modified)",
        ));
    }
    let mut plain = Zeroizing::new([0u8; SEALED_PLAINTEXT_SIZE]);
    plain.copy_from_slice(ciphertext);
    ChaCha20::new((&*keys.stream).into(), &[0u8; 12].into()).apply_keystream(&mut plain[..]);
    Ok(plain)
}

/// The plaintext of a sealed message.
#[derive(Debug)]
pub enum Inner {
    /// A message for the client, with a SURB for its acknowledgement.
    Data {
        /// Message id.
        id: MessageId,
        /// SURB to acknowledge with.
        surb: Option<Box<Surb>>,
        /// The body.
        body: Vec<u8>,
    },
    /// The client's own loop cover coming back.
    Loop {
        /// The loop's id.
        id: [u8; 16],
    },
}

impl Inner {
    /// Encodes into a sealed plaintext.
    pub fn encode(&self) -> Result<Box<[u8; SEALED_PLAINTEXT_SIZE]>, MixnetError> {
        let mut out = Box::new([0u8; SEALED_PLAINTEXT_SIZE]);
        match self {
            Inner::Data { id, surb, body } => {
                if body.len() > MAX_BODY {
                    return Err(MixnetError::MessageTooLong {
                        actual: body.len(),
                        max: MAX_BODY,
                    });
                }
                out[0] = KIND_DATA;
                out[1..17].copy_from_slice(id);
                if let Some(surb) = surb {
                    out[17] = 1;
                    out[18..18 + SURB_SIZE].copy_from_slice(&surb.to_bytes());
                }
                let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
                out[DATA_HEADER - 2..DATA_HEADER].copy_from_slice(&len.to_be_bytes());
                out[DATA_HEADER..DATA_HEADER + body.len()].copy_from_slice(body);
            }
            Inner::Loop { id } => {
                out[0] = KIND_LOOP;
                out[1..17].copy_from_slice(id);
            }
        }
        Ok(out)
    }

    /// Decodes a sealed plaintext.
    pub fn decode(plain: &[u8; SEALED_PLAINTEXT_SIZE]) -> Result<Self, MixnetError> {
        let mut id = [0u8; 16];
        id.copy_from_slice(&plain[1..17]);
        match plain[0] {
            KIND_DATA => {
                let surb = match plain[17] {
                    0 => None,
                    1 => Some(Box::new(Surb::from_bytes(&plain[18..18 + SURB_SIZE])?)),
                    _ => return Err(MixnetError::Decoding("message (SURB flag)")),
                };
                let len = usize::from(u16::from_be_bytes([
                    plain[DATA_HEADER - 2],
                    plain[DATA_HEADER - 1],
                ]));
                if len > MAX_BODY {
                    return Err(MixnetError::Decoding("message (length)"));
                }
                Ok(Inner::Data {
                    id,
                    surb,
                    body: plain[DATA_HEADER..DATA_HEADER + len].to_vec(),
                })
            }
            KIND_LOOP => Ok(Inner::Loop { id }),
            _ => Err(MixnetError::Decoding("message (kind)")),
        }
    }
}

/// The plaintext of an acknowledgement sent through a SURB.
pub fn encode_ack(id: &MessageId) -> [u8; 17] {
    let mut out = [0u8; 17];
    out[0] = KIND_ACK;
    out[1..].copy_from_slice(id);
    out
}

/// Decodes an opened SURB reply as an acknowledgement.
pub fn decode_ack(reply: &[u8; MESSAGE_SIZE]) -> Result<MessageId, MixnetError> {
    if reply[0] != KIND_ACK || reply[17..].iter().any(|b| *b != 0) {
        return Err(MixnetError::Decoding("acknowledgement"));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&reply[1..17]);
    Ok(id)
}

/// An item in a provider's mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailboxItem {
    /// A message delivered by the last hop of a packet.
    Message(Box<[u8; MESSAGE_SIZE]>),
    /// A reply that came through a SURB, still encrypted for its creator.
    Reply {
        /// Which SURB.
        surb_id: SurbId,
        /// The payload.
        payload: Box<[u8; PAYLOAD_SIZE]>,
    },
}

impl MailboxItem {
    /// Encodes the item for storage and for fetch responses.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            MailboxItem::Message(m) => {
                let mut v = Vec::with_capacity(1 + MESSAGE_SIZE);
                v.push(1);
                v.extend_from_slice(&m[..]);
                v
            }
            MailboxItem::Reply { surb_id, payload } => {
                let mut v = Vec::with_capacity(1 + 16 + PAYLOAD_SIZE);
                v.push(2);
                v.extend_from_slice(&surb_id.0);
                v.extend_from_slice(&payload[..]);
                v
            }
        }
    }

    /// Decodes a stored or fetched item.
    pub fn decode(bytes: &[u8]) -> Result<Self, MixnetError> {
        match bytes.split_first() {
            Some((1, rest)) if rest.len() == MESSAGE_SIZE => {
                let mut m = Box::new([0u8; MESSAGE_SIZE]);
                m.copy_from_slice(rest);
                Ok(MailboxItem::Message(m))
            }
            Some((2, rest)) if rest.len() == 16 + PAYLOAD_SIZE => {
                let mut surb_id = [0u8; 16];
                surb_id.copy_from_slice(&rest[..16]);
                let mut payload = Box::new([0u8; PAYLOAD_SIZE]);
                payload.copy_from_slice(&rest[16..]);
                Ok(MailboxItem::Reply {
                    surb_id: SurbId(surb_id),
                    payload,
                })
            }
            _ => Err(MixnetError::Decoding("mailbox item")),
        }
    }
}

/// A request from a mailbox owner to its provider: hand over what is in
/// the mailbox (after deleting what the owner already holds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// The owner's Ed25519 key; the mailbox id is derived from it.
    pub owner: [u8; 32],
    /// The provider the request is for (a request cannot be replayed to
    /// another provider).
    pub provider: NodeId,
    /// Items up to and including this sequence number are safely stored by
    /// the owner and may be deleted.
    pub ack_through: u64,
    /// When the request was made (requests older than a few minutes are
    /// refused).
    pub issued_at: Time,
    /// Random, so that two requests are never the same bytes.
    pub nonce: [u8; 16],
    /// If the mailbox is empty, wait up to this long for an item.
    pub wait_ms: u32,
}

/// How far a fetch request's time may be from the provider's clock.
pub const FETCH_MAX_SKEW_MS: u64 = 2 * 60 * 1000;
/// Largest encoded fetch request.
pub const MAX_FETCH_REQUEST: usize = 512;
/// At most this many items in one fetch response.
pub const MAX_FETCH_ITEMS: usize = 64;
/// Longest wait a provider grants.
pub const MAX_FETCH_WAIT_MS: u32 = 30_000;

#[derive(Serialize, Deserialize)]
struct SignedFetch {
    body: Vec<u8>,
    signature: Vec<u8>,
}

const FETCH_CONTEXT: &[u8] = b"chainmail mailbox fetch v1\0";

impl FetchRequest {
    /// Signs and encodes the request with the mailbox owner's key.
    pub fn sign(&self, key: &SigningKey) -> Vec<u8> {
        let body = postcard::to_stdvec(self).unwrap_or_default();
        let mut msg = FETCH_CONTEXT.to_vec();
        msg.extend_from_slice(&body);
        let signature = key.sign(&msg).to_bytes().to_vec();
        postcard::to_stdvec(&SignedFetch { body, signature }).unwrap_or_default()
    }

    /// Decodes and checks a request: signature by the owner key, addressed
    /// to `provider`, issued recently. Returns the request and its mailbox.
    pub fn verify(
        bytes: &[u8],
        provider: &NodeId,
        now: Time,
    ) -> Result<(Self, MailboxId), MixnetError> {
        if bytes.len() > MAX_FETCH_REQUEST {
            return Err(MixnetError::FetchRefused("request too large"));
        }
        let signed: SignedFetch =
            postcard::from_bytes(bytes).map_err(|_| MixnetError::Decoding("fetch request"))?;
        let request: FetchRequest = postcard::from_bytes(&signed.body)
            .map_err(|_| MixnetError::Decoding("fetch request"))?;
        let key = VerifyingKey::from_bytes(&request.owner)
            .map_err(|_| MixnetError::FetchRefused("owner key is not an Ed25519 key"))?;
        let signature = Signature::from_slice(&signed.signature)
            .map_err(|_| MixnetError::FetchRefused("malformed signature"))?;
        let mut msg = FETCH_CONTEXT.to_vec();
        msg.extend_from_slice(&signed.body);
        key.verify_strict(&msg, &signature)
            .map_err(|_| MixnetError::FetchRefused("bad signature"))?;
        if request.provider != *provider {
            return Err(MixnetError::FetchRefused("request is for another provider"));
        }
        if request.issued_at.0.abs_diff(now.0) > FETCH_MAX_SKEW_MS {
            return Err(MixnetError::FetchRefused(
                "request too old or clock too far off",
            ));
        }
        let mailbox = mailbox_id(&request.owner);
        Ok((request, mailbox))
    }
}

/// A provider's answer to a fetch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResponse {
    /// Items in sequence order: (sequence number, encoded [`MailboxItem`]).
    pub items: Vec<(u64, Vec<u8>)>,
    /// Why the request was refused, if it was.
    pub refused: Option<String>,
}

impl FetchResponse {
    /// Encodes the response.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes a response.
    pub fn decode(bytes: &[u8]) -> Result<Self, MixnetError> {
        let r: FetchResponse =
            postcard::from_bytes(bytes).map_err(|_| MixnetError::Decoding("fetch response"))?;
        if r.items.len() > MAX_FETCH_ITEMS {
            return Err(MixnetError::Decoding("fetch response (too many items)"));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sealed_messages_open_only_for_their_recipient() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let bob = SealKey::generate(&mut rng);
        let eve = SealKey::generate(&mut rng);
        let inner = Inner::Data {
            id: [9; 16],
            surb: None,
            body: b"hi bob".to_vec(),
        };
        let sealed = seal(&mut rng, &bob.public(), &inner.encode().unwrap());
        let Inner::Data { id, body, surb } = Inner::decode(&open(&bob, &sealed).unwrap()).unwrap()
        else {
            panic!("data")
        };
        assert_eq!(
            (id, body.as_slice(), surb.is_none()),
            ([9; 16], &b"hi bob"[..], true)
        );
        assert!(open(&eve, &sealed).is_err());
        let mut tampered = sealed.clone();
        tampered[100] ^= 1;
        assert!(open(&bob, &tampered).is_err());
    }

    #[test]
    fn addresses_round_trip_and_typos_are_caught() {
        let a = ClientAddress {
            seal_key: [1; 32],
            mailboxes: vec![
                (NodeId([2; 32]), MailboxId([3; 32])),
                (NodeId([4; 32]), MailboxId([5; 32])),
            ],
        };
        let text = a.to_text();
        assert_eq!(ClientAddress::from_text(&text).unwrap(), a);
        let mut typo = text.clone().into_bytes();
        typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
        assert!(ClientAddress::from_text(std::str::from_utf8(&typo).unwrap()).is_err());
        assert!(ClientAddress::from_text("hello").is_err());
    }

    #[test]
    fn fetch_requests_are_bound_to_owner_provider_and_time() {
        let owner = SigningKey::from_bytes(&[1; 32]);
        let provider = NodeId([7; 32]);
        let now = Time(1_000_000_000);
        let req = FetchRequest {
            owner: owner.verifying_key().to_bytes(),
            provider,
            ack_through: 3,
            issued_at: now,
            nonce: [0; 16],
            wait_ms: 0,
        };
        let bytes = req.sign(&owner);
        let (got, mailbox) = FetchRequest::verify(&bytes, &provider, now).unwrap();
        assert_eq!(got, req);
        assert_eq!(mailbox, mailbox_id(&owner.verifying_key().to_bytes()));
        assert!(FetchRequest::verify(&bytes, &NodeId([8; 32]), now).is_err());
        assert!(
            FetchRequest::verify(&bytes, &provider, Time(now.0 + FETCH_MAX_SKEW_MS + 1)).is_err()
        );
        let mut forged = bytes.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(FetchRequest::verify(&forged, &provider, now).is_err());
    }
}
