//! Fuzzes the local API's request bodies (`POST /v1/account`, JSON):
//! whatever parses must serialize and parse back to the same request.

#![no_main]

use chainmail_client::AccountRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<AccountRequest>(data) {
        let json = serde_json::to_value(&request).expect("serializes");
        let again: AccountRequest = serde_json::from_value(json.clone()).expect("round trip");
        assert_eq!(serde_json::to_value(&again).expect("serializes"), json);
    }
});
