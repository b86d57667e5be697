//! Fuzzes the community layer's decoders: genesis blocks, records, blocks,
//! sync requests and responses, and letters (invites, join requests), all
//! of which come from other nodes or from contacts.
//!
//! The first byte picks the decoder. Whatever decodes must survive a round
//! trip: encoding the value and decoding it again gives the same value.

#![no_main]

use chainmail_chain::{Block, Genesis, Letter, Record, SyncRequest, SyncResponse};
use libfuzzer_sys::fuzz_target;

macro_rules! round_trip {
    ($t:ty, $bytes:expr) => {
        if let Ok(v) = <$t>::decode($bytes) {
            let again = <$t>::decode(&v.encode()).expect(concat!(stringify!($t), " round trip"));
            assert_eq!(again, v, concat!(stringify!($t), " round trip"));
        }
    };
}

fuzz_target!(|data: &[u8]| {
    let Some((which, bytes)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => round_trip!(Genesis, bytes),
        1 => round_trip!(Record, bytes),
        2 => round_trip!(Block, bytes),
        3 => round_trip!(SyncRequest, bytes),
        4 => round_trip!(SyncResponse, bytes),
        _ => round_trip!(Letter, bytes),
    }
});
