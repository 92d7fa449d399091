//! The tracing subscriber, built once at start. Logs go to stderr so that stdout stays clean for
//! `--json` output; the level comes from `RUST_LOG`, else the default the command asks for.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Ignored on purpose: only fails if a subscriber is already installed (tests calling twice).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or a journal gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
