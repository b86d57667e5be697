//! Fuzzes the verifiers of signed records from the network: node
//! descriptors (gossip and the DHT), account descriptors (inside their
//! sealed DHT records) and advisories (DHT).
//!
//! The first byte picks the record. A valid record is made with a fixed
//! key; the rest of the input is XORed into it from an offset the second
//! byte picks. Unchanged, it must verify; with any byte changed it must be
//! refused, with an error and without a panic: a signed record cannot be
//! altered in transit, not even in its encoding. Then the raw input is
//! given to the verifier as it is.

#![no_main]

use std::time::Duration;

use chainmail_mixnet::message::ClientAddress;
use chainmail_mixnet::{NodeDescriptor, Roles, Time};
use chainmail_packet::{Epoch, MailboxId, MixSecretKey, NodeId};
use chainmail_session::{Account, AccountDescriptor, Advisory, AdvisoryBody};
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;

const NOW: Time = Time(1_800_000_000_000);
const NETWORK: [u8; 32] = [5; 32];

fn xor_from(record: &mut [u8], at: usize, input: &[u8]) -> bool {
    let mut changed = false;
    for (i, b) in input.iter().take(record.len()).enumerate() {
        let j = (at + i) % record.len();
        changed |= *b != 0;
        record[j] ^= b;
    }
    changed
}

fuzz_target!(|data: &[u8]| {
    let [which, at, rest @ ..] = data else {
        return;
    };
    let key = SigningKey::from_bytes(&[9; 32]);
    match which % 3 {
        0 => {
            let descriptor = NodeDescriptor {
                network: NETWORK,
                node: NodeId(key.verifying_key().to_bytes()),
                addresses: vec!["/ip4/203.0.113.1/tcp/4001".into()],
                roles: Roles {
                    mix: true,
                    provider: false,
                },
                mix_keys: vec![(
                    Epoch(500),
                    MixSecretKey::from_bytes(Epoch(500), [3; 32]).public(),
                )],
                version: "chainmail 0.1.0".into(),
                issued_at: NOW,
                expires_at: Time(NOW.0 + 3_600_000),
            };
            let mut bytes = descriptor.sign(&key).expect("signs");
            let changed = xor_from(&mut bytes, usize::from(*at), rest);
            let verified = NodeDescriptor::verify(&bytes, &NETWORK, NOW);
            assert_eq!(verified.is_ok(), !changed, "node descriptor");
            if let Ok(d) = NodeDescriptor::verify(rest, &NETWORK, NOW) {
                assert_eq!(d.network, NETWORK);
            }
        }
        1 => {
            let mut account = Account::new(key);
            let mixnet = ClientAddress {
                seal_key: [4; 32],
                mailboxes: vec![
                    (NodeId([6; 32]), MailboxId([7; 32])),
                    (NodeId([8; 32]), MailboxId([9; 32])),
                ],
            };
            let descriptor = account
                .descriptor(NOW, NETWORK, mixnet, "0.1.0", Duration::from_secs(3600))
                .expect("signs");
            let address = account.address();
            let mut bytes = descriptor.encode().expect("encodes");
            let changed = xor_from(&mut bytes, usize::from(*at), rest);
            let verified = AccountDescriptor::decode_verified(&bytes, &NETWORK, &address, NOW);
            assert_eq!(verified.is_ok(), !changed, "account descriptor");
            let _ = AccountDescriptor::decode_verified(rest, &NETWORK, &address, NOW);
        }
        _ => {
            let body = AdvisoryBody {
                network: NETWORK,
                sequence: 7,
                issued: NOW,
                unsafe_versions: vec!["0.0.9".into()],
            };
            let advisory = body.sign(&key).expect("signs");
            let mut bytes = advisory.encode().expect("encodes");
            let changed = xor_from(&mut bytes, usize::from(*at), rest);
            let verified = Advisory::decode_verified(&bytes, &key.verifying_key(), &NETWORK);
            assert_eq!(verified.is_ok(), !changed, "advisory");
            let _ = Advisory::decode_verified(rest, &key.verifying_key(), &NETWORK);
        }
    }
});
