//! Errors of the community layer.

/// Why a chain refused something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// Bytes that do not decode.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// What was wrong.
        reason: &'static str,
    },
    /// Larger than its limit.
    #[error("{what} too large: {size} bytes, at most {max}")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A signature that does not verify.
    #[error("bad signature")]
    BadSignature,
    /// A value outside what is allowed.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What.
        what: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// A record the rights rules (or its anchor) do not allow.
    #[error("{what} refused: {reason}")]
    Refused {
        /// The record's kind.
        what: &'static str,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A block that breaks a block rule.
    #[error("block refused: {reason}")]
    BadBlock {
        /// The rule it breaks.
        reason: &'static str,
    },
}

impl ChainError {
    /// A short snake_case name of the kind of error, for metric labels:
    /// `malformed`, `too_large`, `bad_signature`, `invalid`, `refused`
    /// (a rights or anchor rule) or `bad_block`.
    pub fn kind(&self) -> &'static str {
        match self {
            ChainError::Malformed { .. } => "malformed",
            ChainError::TooLarge { .. } => "too_large",
            ChainError::BadSignature => "bad_signature",
            ChainError::Invalid { .. } => "invalid",
            ChainError::Refused { .. } => "refused",
            ChainError::BadBlock { .. } => "bad_block",
        }
    }
}
