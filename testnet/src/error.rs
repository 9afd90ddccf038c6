//! The one error type of the library: every variant says what was being done, so the binary
//! can print it as is.

use thiserror::Error;

/// Why a testnet operation failed.
#[derive(Debug, Error)]
pub enum Error {
    /// A file or directory operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done (names the path).
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A tool or binary is missing; the message says how to get it.
    #[error("{0}")]
    Missing(String),
    /// Talking to the chain failed, or the chain is not in the expected state.
    #[error("chain: {0}")]
    Chain(String),
    /// A process could not be started, died, or could not be stopped.
    #[error("{0}")]
    Process(String),
    /// A bounded wait ran out.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The run directory's `state.json` is unreadable or inconsistent.
    #[error("state file: {0}")]
    State(String),
    /// A command-line value is invalid.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The membership SDK failed.
    #[error(transparent)]
    Sdk(#[from] membership::sdk::SdkError),
}

/// Maps an I/O error to [`Error::Io`] naming `what`.
pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Shorthand for chain errors.
pub fn chain(e: impl std::fmt::Display) -> Error {
    Error::Chain(e.to_string())
}
