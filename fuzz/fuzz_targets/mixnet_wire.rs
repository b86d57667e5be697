//! Fuzzes the mixnet's decoders of what providers and clients exchange:
//! mailbox items, fetch responses, and client addresses as text (typed or
//! pasted by users, carried in contact requests).
//!
//! The first byte picks the decoder. Whatever decodes must survive a round
//! trip.

#![no_main]

use chainmail_mixnet::message::{ClientAddress, FetchResponse, MailboxItem};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((which, bytes)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(item) = MailboxItem::decode(bytes) {
                assert_eq!(
                    MailboxItem::decode(&item.encode()).expect("round trip"),
                    item
                );
            }
        }
        1 => {
            if let Ok(response) = FetchResponse::decode(bytes) {
                let again = FetchResponse::decode(&response.encode()).expect("round trip");
                assert_eq!(again, response);
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(bytes)
                && let Ok(address) = ClientAddress::from_text(text)
            {
                let again = ClientAddress::from_text(&address.to_text()).expect("round trip");
                assert_eq!(again, address);
                assert!(address.validate().is_ok(), "a parsed address validates");
            }
        }
    }
});
