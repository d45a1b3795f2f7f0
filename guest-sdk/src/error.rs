//! Business failures are data: the host records them against the event, never retries them.

use std::fmt;

/// A business failure: a short code for machines and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Machine-readable code, e.g. `invalid-transition`.
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
}

/// The result of a plugin call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with the given code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Error { code: code.into(), message: message.into() }
    }

    /// The event is not valid for the current state (a rule of the domain says no).
    pub fn rejected(message: impl Into<String>) -> Self {
        Error::new("rejected", message)
    }

    /// The configuration is not acceptable.
    pub fn config(message: impl Into<String>) -> Self {
        Error::new("invalid-config", message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}
