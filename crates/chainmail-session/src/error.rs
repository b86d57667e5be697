//! Errors of the session layer.

/// What went wrong in the session layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Bytes that do not decode as what they claim to be.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        detail: String,
    },
    /// Something a peer or the user asked for that cannot be done.
    #[error("{0}")]
    Invalid(&'static str),
    /// A signature or authentication tag did not verify.
    #[error("{0}: authentication failed")]
    Auth(&'static str),
    /// Something is larger than allowed.
    #[error("{what} too large: {actual} bytes (at most {max})")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Its size.
        actual: usize,
        /// The limit.
        max: usize,
    },
    /// Something is smaller than required.
    #[error("{what} too small: {actual} bytes (at least {min})")]
    TooSmall {
        /// What.
        what: &'static str,
        /// Its size.
        actual: usize,
        /// The minimum.
        min: usize,
    },
}
