//! The harness's error type.

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The cluster (testnet library) failed.
    #[error("testnet: {0}")]
    Testnet(#[from] testnet::Error),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A required tool or binary is missing.
    #[error("{0}")]
    Missing(String),
    /// Invalid options or data.
    #[error("{0}")]
    Invalid(String),
    /// A client process or request failed.
    #[error("{0}")]
    Client(String),
    /// Drawing a plot failed.
    #[error("plot {path}: {msg}")]
    Plot {
        /// The SVG file.
        path: String,
        /// What went wrong.
        msg: String,
    },
}

/// Maps an I/O error with a description of what was being done.
pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}
