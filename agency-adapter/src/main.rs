//! `spean-adapter`: parses the command line and hands over to [`spean_adapter::cli`].

use std::process::ExitCode;

use clap::Parser;
use spean_adapter::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
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
