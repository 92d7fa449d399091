//! `spean-broker`: parses the command line, loads the configuration, and runs one command.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use spean_broker::delivery::amqp::Amqp;
use spean_broker::directory::Directory;
use spean_broker::ids::AgencyId;
use spean_broker::pki::Pki;
use spean_broker::{Broker, Config, startup, telemetry};

#[derive(Parser)]
#[command(name = "spean-broker", version, about = "The Spean referral broker")]
struct Cli {
    /// A TOML configuration file (see config.example.toml).
    #[arg(long, global = true, env = "SPEAN_BROKER_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `data_dir`.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (embedded defaults: SQLite and a development CA under ./spean-data; the
    /// development CA is made only with SQLite unless `tls.dev_pki` says otherwise).
    Serve {
        /// Overrides `listen`, e.g. 127.0.0.1:0.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Manage the network's certificate authority.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Manage the directory of agencies.
    Directory {
        #[command(subcommand)]
        command: DirectoryCommand,
    },
    /// Inspect and re-drive messages RabbitMQ dead-lettered (requires amqp.url).
    DeadLetters {
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// How many messages wait in the dead-letter queue.
    Count,
    /// Move every dead letter back to the agency queue it came from.
    Redrive,
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create the CA and the broker's server certificate.
    Init,
    /// Write an agency's certificate, key and the CA certificate to <pki>/agencies/AGENCY.
    Issue {
        agency: String,
        /// Replace the agency's existing key and certificate. Its adapter is locked out until it
        /// is given the new folder, so this is for a key that was lost or leaked.
        #[arg(long)]
        force: bool,
    },
    /// Issue the broker's server certificate (for `tls.server_names`) from the existing CA:
    /// agencies keep their identities. Restart the broker to serve it.
    IssueServer {
        /// Replace the existing server key and certificate (one about to expire, new names, a
        /// leaked key).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum DirectoryCommand {
    /// Replace the directory with FILE (the format of fixtures/network.json).
    Import { file: PathBuf },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // One crypto provider for the whole process, before any TLS is configured.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    telemetry::init(&config.log);

    match cli.command {
        Command::Serve { listen } => {
            if let Some(listen) = listen {
                config.listen = listen;
            }
            let address_file = config.address_file();
            let broker = Broker::build(config).await?;
            let addr = broker.local_addr()?;
            std::fs::write(&address_file, addr.to_string())
                .with_context(|| format!("writing {}", address_file.display()))?;
            tracing::info!(%addr, "spean-broker listening");
            broker.run_until_stopped(shutdown_signal()).await?;
        }
        Command::Pki { command } => {
            let pki = Pki::new(config.pki_dir());
            match command {
                PkiCommand::Init => {
                    pki.init()?;
                    pki.issue_server(&config.tls.server_names)?;
                    println!(
                        "CA and server certificate written to {}",
                        pki.dir().display()
                    );
                }
                PkiCommand::Issue { agency, force } => {
                    let agency = AgencyId::parse("AGENCY", &agency)?;
                    let dir = pki.issue_agency_with(&agency, force)?;
                    println!("{}", dir.display());
                }
                PkiCommand::IssueServer { force } => {
                    pki.issue_server_with(&config.tls.server_names, force)?;
                    println!("{}", pki.server_cert().display());
                }
            }
        }
        Command::Directory {
            command: DirectoryCommand::Import { file },
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let directory = Directory::from_json(&bytes)?;
            let store = startup::open_store(&config).await?;
            let version = store.import_directory(&directory).await?;
            println!(
                "imported {} agencies (directory version {version})",
                directory.agencies.len()
            );
        }
        Command::DeadLetters { command } => {
            anyhow::ensure!(
                !config.amqp.url.is_empty(),
                "amqp.url is not set: dead letters exist only with RabbitMQ delivery"
            );
            let amqp = Amqp::new(config.amqp.clone());
            let connection = amqp.connect().await?;
            match command {
                DeadLetterCommand::Count => {
                    println!("{}", amqp.dead_letters(&connection).await?);
                }
                DeadLetterCommand::Redrive => {
                    println!("re-drove {} messages", amqp.redrive(&connection).await?);
                }
            }
            let _ = connection.close(200, "done".into()).await;
        }
    }
    Ok(())
}

/// Completes on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
