//! The clock: the one place the binary reads it. The cores take `now` as
//! an input and never read a clock (`clippy.toml` bans it); the host reads
//! it here and passes it in.

use std::time::Instant;

use chainmail_mixnet::Time;

/// Wall-clock time, for the cores (descriptor expiry, epochs, timers).
#[allow(clippy::disallowed_methods)] // the host's clock, read once, here
pub fn now() -> Time {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Time(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// A monotonic instant, for measuring and for deadlines of the tools
/// (demo, testnet, API long-polls).
#[allow(clippy::disallowed_methods)] // the host's clock, read once, here
pub fn instant() -> Instant {
    Instant::now()
}
