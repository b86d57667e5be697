#![doc = include_str!("../README.md")]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod account;
pub mod address;
pub mod advisory;
pub mod blind;
pub mod descriptor;
pub mod envelope;
mod error;
pub mod messenger;
pub mod safety;
pub mod stamp;

pub use account::Account;
pub use address::{Address, AddressError};
pub use advisory::{Advisory, AdvisoryBody, advisory_dht_key};
pub use blind::{descriptor_dht_key, open_descriptor, period_at, seal_descriptor};
pub use descriptor::AccountDescriptor;
pub use envelope::{
    Envelope, Fragment, Kind, MAX_ENVELOPE_BODY, MAX_FRAGMENTS, Reassembler, ReassemblyLimits,
    ReassemblyStats, fragment,
};
pub use error::SessionError;
pub use messenger::{
    Action, Contact, ContactRecord, ContactState, FragmentTag, MessageState, Messenger,
    MessengerConfig, MessengerEvent, MessengerState, MessengerStats,
};
pub use safety::{SafetyNumber, safety_number};
pub use stamp::{MAX_DIFFICULTY, Stamp, day_of, stamp_challenge, stamp_fresh};
