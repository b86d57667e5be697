//! Per-peer admission of inbound packet frames: a token bucket, flood
//! detection and the count of open inbound packet streams.
//!
//! The arithmetic takes `now` as an argument (STYLE.md §5); the driver reads
//! the clock in one place, [`now`].

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use crate::config::RateLimit;

/// The driver's clock (packet admission, redials): the only place this
/// crate reads it.
#[allow(clippy::disallowed_methods)] // a driver reads the clock, once, here
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// A token bucket. Starts full.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(limit: RateLimit, now: Instant) -> Self {
        let burst = f64::from(limit.burst.max(1));
        Self {
            rate: f64::from(limit.frames_per_second.max(1)),
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now.max(self.last);
    }

    /// Takes one token if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The packet budget of one source (IP address), shared by all its peers.
#[derive(Debug)]
pub(crate) struct SourceBucket(Mutex<TokenBucket>);

impl SourceBucket {
    pub(crate) fn new(limit: RateLimit, now: Instant) -> Self {
        SourceBucket(Mutex::new(TokenBucket::new(limit, now)))
    }

    fn try_take(&self, now: Instant) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .try_take(now)
    }
}

/// What to do with one complete inbound frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Within the rate limit: deliver it.
    Accept,
    /// Over the limit: drop it.
    Drop,
    /// Within the peer's limit, over its source's: drop it.
    SourceDrop,
    /// Over the limit, and the peer has been far over it for a while: drop
    /// it and reset the stream.
    Reset,
}

/// Inbound packet state of one peer, shared by all its connections.
#[derive(Debug)]
pub(crate) struct PeerInbound {
    bucket: TokenBucket,
    /// Over-limit frames, draining at the rate limit (a leaky bucket).
    excess: f64,
    excess_last: Instant,
    rate: f64,
    tolerance: f64,
    open_streams: usize,
    max_streams: usize,
}

impl PeerInbound {
    pub(crate) fn new(
        limit: RateLimit,
        flood_tolerance: u32,
        max_streams: usize,
        now: Instant,
    ) -> Self {
        Self {
            bucket: TokenBucket::new(limit, now),
            excess: 0.0,
            excess_last: now,
            rate: f64::from(limit.frames_per_second.max(1)),
            tolerance: f64::from(flood_tolerance),
            open_streams: 0,
            max_streams,
        }
    }

    /// Decides the fate of one complete frame arriving at `now`.
    pub(crate) fn admit(&mut self, now: Instant) -> Admission {
        if self.bucket.try_take(now) {
            return Admission::Accept;
        }
        let elapsed = now
            .saturating_duration_since(self.excess_last)
            .as_secs_f64();
        self.excess = (self.excess - elapsed * self.rate).max(0.0) + 1.0;
        self.excess_last = now.max(self.excess_last);
        if self.excess > self.tolerance {
            Admission::Reset
        } else {
            Admission::Drop
        }
    }
}

/// A [`PeerInbound`] shared between the connection handlers of one peer,
/// with the budget of the source it connects from.
#[derive(Debug, Clone)]
pub(crate) struct SharedInbound(Arc<Mutex<PeerInbound>>, Option<Arc<SourceBucket>>);

impl SharedInbound {
    pub(crate) fn new(state: PeerInbound, source: Option<Arc<SourceBucket>>) -> Self {
        Self(Arc::new(Mutex::new(state)), source)
    }

    fn lock(&self) -> MutexGuard<'_, PeerInbound> {
        // The state stays consistent even if a holder panicked: every
        // update is a plain assignment.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The peer's limit first (a flooding peer is cut off by it), then its
    /// source's.
    pub(crate) fn admit(&self, now: Instant) -> Admission {
        match self.lock().admit(now) {
            Admission::Accept => match &self.1 {
                Some(source) if !source.try_take(now) => Admission::SourceDrop,
                _ => Admission::Accept,
            },
            other => other,
        }
    }

    /// Registers a new inbound stream, unless the peer is at its cap.
    pub(crate) fn open_stream(&self) -> Option<StreamSlot> {
        let mut state = self.lock();
        if state.open_streams >= state.max_streams {
            return None;
        }
        state.open_streams += 1;
        Some(StreamSlot(self.clone()))
    }
}

/// One of a peer's inbound packet stream slots; freed on drop.
#[derive(Debug)]
pub(crate) struct StreamSlot(SharedInbound);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.open_streams = state.open_streams.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LIMIT: RateLimit = RateLimit {
        frames_per_second: 10,
        burst: 5,
    };

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = now();
        let mut bucket = TokenBucket::new(LIMIT, t0);
        for _ in 0..5 {
            assert!(bucket.try_take(t0));
        }
        assert!(!bucket.try_take(t0));
        // 10 frames/s: one token every 100 ms.
        assert!(!bucket.try_take(t0 + Duration::from_millis(50)));
        assert!(bucket.try_take(t0 + Duration::from_millis(110)));
        assert!(!bucket.try_take(t0 + Duration::from_millis(120)));
        // Long quiet: back to the burst, not more.
        let later = t0 + Duration::from_secs(100);
        for _ in 0..5 {
            assert!(bucket.try_take(later));
        }
        assert!(!bucket.try_take(later));
    }

    #[test]
    fn flood_is_reset_slight_excess_is_not() {
        let t0 = now();
        let mut peer = PeerInbound::new(LIMIT, 20, 1, t0);
        // A flood at once: 5 accepted, then 20 tolerated drops, then reset.
        let outcomes: Vec<_> = (0..26).map(|_| peer.admit(t0)).collect();
        assert_eq!(
            outcomes.iter().filter(|a| **a == Admission::Accept).count(),
            5
        );
        assert_eq!(outcomes[24], Admission::Drop);
        assert_eq!(outcomes[25], Admission::Reset);

        // 12 frames/s against a limit of 10/s for a long time: drops, never
        // a reset.
        let mut peer = PeerInbound::new(LIMIT, 20, 1, t0);
        let mut accepted = 0;
        for i in 0..1200u64 {
            let t = t0 + Duration::from_micros(i * 1_000_000 / 12);
            match peer.admit(t) {
                Admission::Accept => accepted += 1,
                Admission::Drop => {}
                Admission::Reset | Admission::SourceDrop => panic!("{i}: cut off"),
            }
        }
        assert!((995..=1010).contains(&accepted), "{accepted}");
    }

    #[test]
    fn stream_slots_are_capped_and_freed() {
        let shared = SharedInbound::new(PeerInbound::new(LIMIT, 1, 2, now()), None);
        let a = shared.open_stream().unwrap();
        let _b = shared.open_stream().unwrap();
        assert!(shared.open_stream().is_none());
        drop(a);
        assert!(shared.open_stream().is_some());
    }

    #[test]
    fn fresh_peer_ids_from_one_source_share_its_budget() {
        let t0 = now();
        let source = Arc::new(SourceBucket::new(
            RateLimit {
                frames_per_second: 10,
                burst: 8,
            },
            t0,
        ));
        // Four peers of one source, each within its own limit (burst 5):
        // together they get the source's 8 frames and no more.
        let peers: Vec<SharedInbound> = (0..4)
            .map(|_| SharedInbound::new(PeerInbound::new(LIMIT, 100, 1, t0), Some(source.clone())))
            .collect();
        let accepted = peers
            .iter()
            .flat_map(|p| (0..5).map(move |_| p.admit(t0)))
            .filter(|a| *a == Admission::Accept)
            .count();
        assert_eq!(accepted, 8);
        // A fifth fresh peer id buys nothing.
        let fresh = SharedInbound::new(PeerInbound::new(LIMIT, 100, 1, t0), Some(source.clone()));
        assert_eq!(fresh.admit(t0), Admission::SourceDrop);
        // A peer of another source is not affected.
        let other = SharedInbound::new(PeerInbound::new(LIMIT, 100, 1, t0), None);
        assert_eq!(other.admit(t0), Admission::Accept);
    }
}
