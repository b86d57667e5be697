//! Fuzzes what a messenger does with bytes from the mixnet: any body a
//! stranger can put in a mailbox. Nothing may panic, and nothing forged
//! may reach the user: bytes nobody encrypted for this account show no
//! message, request or contact, however they are put together.

#![no_main]

use chainmail_mixnet::Time;
use chainmail_session::{Account, Messenger, MessengerConfig};
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut config = MessengerConfig::new([5; 32]);
    config.stamp_difficulty = 0;
    let account = Account::new(SigningKey::from_bytes(&[9; 32]));
    let mut messenger = Messenger::new(config, account, "fuzz", [1; 32]);
    // Several bodies, split where the input says: fragments of one message
    // can come in several.
    for (i, body) in data.split(|b| *b == 0xfe).enumerate() {
        messenger.handle_received(Time(1_800_000_000_000 + i as u64), body);
    }
    assert!(
        messenger.poll_event().is_none(),
        "a forged input reached the user"
    );
    assert!(
        messenger.contacts().next().is_none(),
        "a forged input made a contact"
    );
});
