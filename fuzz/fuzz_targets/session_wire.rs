//! Fuzzes the session layer's decoders of untrusted bytes: fragments (what
//! arrives from the mixnet, before anything says who sent it) and
//! envelopes (what a decrypted message holds).
//!
//! Whatever decodes must survive a round trip: encoding the value and
//! decoding it again gives the same value, and a fragment's encoding is at
//! most its declared length.

#![no_main]

use chainmail_session::{Envelope, Fragment};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(fragment) = Fragment::decode(data) {
        let bytes = fragment.encode().expect("a decoded fragment encodes");
        assert_eq!(bytes.len(), fragment.encoded_len());
        assert_eq!(Fragment::decode(&bytes).expect("round trip"), fragment);
    }
    if let Ok(envelope) = Envelope::decode(data) {
        let bytes = envelope.encode().expect("a decoded envelope encodes");
        let again = Envelope::decode(&bytes).expect("round trip");
        assert!(again == envelope, "envelope round trip");
    }
});
