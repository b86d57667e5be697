//! Chainmail's node as a library: the host (tokio) that drives the node
//! core (mix, provider, exit) of `chainmail-mixnet` against libp2p
//! (`chainmail-net`) and redb (`chainmail-store`), hosts at most one agent
//! (`chainmail-client`) whose storage is the account's encrypted vault, and
//! serves the local API and metrics. The `chainmail` binary is its command
//! line.
//!
//! Start a node with [`runtime::run_node`]; create an account with
//! [`account::init`].

pub mod account;
pub mod api;
pub mod clock;
mod direct;
mod files;
pub mod network;
pub mod runtime;
mod tasks;

/// Software version carried in descriptors and account descriptors.
pub const VERSION: &str = concat!("chainmail ", env!("CARGO_PKG_VERSION"));
