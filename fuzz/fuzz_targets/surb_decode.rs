//! Fuzzes the decoders of `Surb` and `SurbSecrets`.
//!
//! Whatever decodes must encode back to exactly the input. A decoded SURB
//! must be usable (`into_reply` succeeds and carries the SURB's header); a
//! decoded `SurbSecrets` must refuse (with an error, not a panic) to open an
//! all-zero payload under its own id.

#![no_main]

use chainmail_packet::{
    HEADER_SIZE, NODE_ID_SIZE, PAYLOAD_SIZE, SURB_ID_SIZE, SURB_SIZE, Surb, SurbSecrets,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(surb) = Surb::from_bytes(data) {
        assert_eq!(data.len(), SURB_SIZE);
        assert_eq!(&surb.to_bytes()[..], data, "Surb round trip");
        assert_eq!(&surb.first_hop().0[..], &data[1..1 + NODE_ID_SIZE]);
        let header = &data[1 + NODE_ID_SIZE..1 + NODE_ID_SIZE + HEADER_SIZE];
        let epoch = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        assert_eq!(surb.epoch().0, epoch);
        let reply = surb
            .into_reply(b"reply")
            .expect("a decoded SURB makes a reply");
        assert_eq!(&reply.as_bytes()[..HEADER_SIZE], header);
    }

    if let Ok(secrets) = SurbSecrets::from_bytes(data) {
        assert_eq!(&secrets.to_bytes()[..], data, "SurbSecrets round trip");
        assert_eq!(&secrets.id().0[..], &data[1..1 + SURB_ID_SIZE]);
        let opened = secrets.open(secrets.id(), &[0u8; PAYLOAD_SIZE]);
        assert!(
            opened.is_err(),
            "an all-zero payload opened as a valid reply"
        );
    }
});
