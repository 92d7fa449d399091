//! [`Error`]: why a binary could not be found, started or reached. The benchmark turns it into a
//! failed run with this text; a test wrapper panics with it.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Tests and the benchmark run the binaries cargo builds with the workspace, never a stale or
    /// installed copy; the message says how to build them.
    #[error(
        "{name} is missing from {looked:?}: cargo builds it with the workspace \
         (`cargo test --workspace`; for the benchmark, `cargo build --release --workspace`)"
    )]
    MissingBinary { name: String, looked: Vec<PathBuf> },

    /// The broker stopped before it listened: the end of its log says why (a bad setting, a
    /// database it cannot reach), which is what the reader needs, not just the status.
    #[error("the broker exited ({status}) before listening: {log_tail}")]
    BrokerExited {
        status: ExitStatus,
        log_tail: String,
    },

    /// The broker neither listened nor exited within the caller's patience.
    #[error("the broker did not listen within {0:?}")]
    BrokerSilent(Duration),

    /// The adapter daemon was asked about while none was running.
    #[error("no adapter daemon is running")]
    NoDaemon,

    /// Spawning a process, or reading a file it or the PKI wrote.
    #[error(transparent)]
    Io(#[from] std::io::Error),

    /// The page tests' browser: it did not start, a command failed, or a wait ran out. The text
    /// names the page and what was awaited.
    #[error("browser: {0}")]
    Browser(String),

    /// An endpoint that could not be built from the URL or the agency's certificate.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}
