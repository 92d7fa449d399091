//! `spean-adapter`: parses the command line and hands over to [`spean_adapter::cli`].

use std::process::ExitCode;

use clap::Parser;
use spean_adapter::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    // Before anything is created: the store's -wal and -shm, backups, the key file and logs can
    // hold case data, so whatever this process makes is its user's alone.
    spean_adapter::private_files::restrict_umask();
    // Ignored on purpose: it only fails when a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match spean_adapter::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
