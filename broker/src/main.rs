//! `spean-broker`: parses the command line, loads the configuration, and runs one command.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use spean_broker::delivery::amqp::Amqp;
use spean_broker::directory::Directory;
use spean_broker::ids::AgencyId;
use spean_broker::pki::Pki;
use spean_broker::revocation::{Certificate, Reason, future_time, old_valid_until, rfc3339};
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
    /// Check the audit log of every accepted action (docs/security.md#audit).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the chain of the configured store's log; exits non-zero naming the first bad entry.
    Verify {
        /// A head recorded elsewhere, as SEQ:HEX (`spean-adapter audit broker-head` prints the
        /// last one an adapter received): the log must reach it and hold it, so a cut tail shows.
        #[arg(long)]
        head: Option<String>,
    },
    /// Print the log's head, SEQ:HEX.
    Head,
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
    /// Revoke an agency's certificate with effect now: every broker sharing this configuration's
    /// database refuses it within `tls.revocation_refresh_ms` and closes its open streams.
    Revoke {
        agency: String,
        /// Why, in one line: the agency presenting the certificate is told, and brokers log it.
        #[arg(long, default_value = "revoked by the network operator")]
        reason: String,
        /// Revoke this certificate file instead of the one in the agency's identity folder (the
        /// `cert.old.pem` of a rotation, or a certificate kept elsewhere).
        #[arg(long)]
        cert: Option<PathBuf>,
        /// With effect at this later time (RFC 3339) instead of now: the end of a rotation's
        /// overlap, when `pki rotate --offline` ran where the database is out of reach.
        #[arg(long)]
        at: Option<String>,
    },
    /// Give an agency a new key and certificate from the same CA; the old ones (kept as
    /// `cert.old.pem` and `key.old.pem`) keep working until the overlap ends, then every broker
    /// refuses them.
    Rotate {
        agency: String,
        /// How long the old certificate keeps working, e.g. 72h, 30m, 2d.
        #[arg(long, required_unless_present = "old_valid_until")]
        overlap: Option<String>,
        /// Until when the old certificate keeps working, instead of --overlap (RFC 3339, e.g.
        /// 2026-12-24T17:00:00+07:00).
        #[arg(long, conflicts_with = "overlap")]
        old_valid_until: Option<String>,
        /// Only write the files, on a CA machine that cannot reach the brokers' database; the
        /// command prints the `pki revoke --cert … --at …` that records the old certificate's end.
        #[arg(long)]
        offline: bool,
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
                PkiCommand::Revoke {
                    agency,
                    reason,
                    cert,
                    at,
                } => revoke(&config, &pki, &agency, &reason, cert, at.as_deref()).await?,
                PkiCommand::Rotate {
                    agency,
                    overlap,
                    old_valid_until,
                    offline,
                } => {
                    let until = old_valid_until.as_deref();
                    rotate(&config, &pki, &agency, (overlap.as_deref(), until), offline).await?
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
        Command::Audit { command } => audit(&config, command).await?,
    }
    Ok(())
}

/// `audit verify` and `audit head` on the store the configuration names.
async fn audit(config: &Config, command: AuditCommand) -> anyhow::Result<()> {
    use spean_broker::store::audit::{self, Head};
    let store = startup::open_store(config).await?;
    match command {
        AuditCommand::Verify { head } => {
            let expected = head.as_deref().map(Head::parse).transpose()?;
            match audit::verify(store.as_ref(), expected).await? {
                Ok(Some(head)) => println!("audit log OK: {} entries, head {head}", head.seq),
                Ok(None) => println!("audit log OK: empty"),
                Err(broken) => anyhow::bail!("audit log BROKEN at entry {}: {broken}", broken.seq),
            }
        }
        AuditCommand::Head => match store.audit_head().await? {
            Some(head) => println!("{head}"),
            None => println!("0:{}", audit::GENESIS),
        },
    }
    Ok(())
}

/// `pki revoke`: records the revocation, with effect now (or `at`), in the store the
/// configuration names.
async fn revoke(
    config: &Config,
    pki: &Pki,
    agency: &str,
    reason: &str,
    cert: Option<PathBuf>,
    at: Option<&str>,
) -> anyhow::Result<()> {
    let agency = AgencyId::parse("AGENCY", agency)?;
    let reason = Reason::parse("--reason", reason)?;
    let now = time::OffsetDateTime::now_utc();
    let from = match at {
        Some(raw) => future_time("--at", raw, now)?,
        None => now,
    };
    let path = match cert {
        Some(path) => path,
        None => {
            let path = pki.agency_dir(&agency).join("cert.pem");
            // In production the identity folders stay with the CA; certificates are public, so
            // one is copied to where the database is reachable.
            anyhow::ensure!(
                path.exists(),
                "{} does not exist: the agency's identity folder is not here (it is kept where \
                 the CA is); copy the certificate to revoke and pass it with --cert FILE",
                path.display()
            );
            path
        }
    };
    let certificate = certificate_of(&path, &agency)?;
    let store = startup::open_store(config).await?;
    let stored = store
        .revoke(&certificate.revoked(from, reason, now))
        .await
        .context("recording the revocation")?;
    let since = if stored.effective_at < from {
        "already revoked, as of"
    } else {
        "revoked, as of"
    };
    println!(
        "the certificate of {agency} is {since} {}\n  file:    {}\n  serial:  {}\n  SHA-256: {}\n  reason:  {}\n\
         Every broker using this database refuses it within tls.revocation_refresh_ms ({} ms) and \
         closes its open streams. Give the agency a new identity with \
         `spean-broker pki issue --force {agency}`.",
        rfc3339(stored.effective_at),
        path.display(),
        stored.serial,
        stored.fingerprint,
        stored.reason,
        config.tls.revocation_refresh_ms,
    );
    Ok(())
}

/// `pki rotate`: a new identity in the agency's folder, and the old certificate's end recorded
/// (unless `offline`, when the command says how to record it).
async fn rotate(
    config: &Config,
    pki: &Pki,
    agency: &str,
    (overlap, until): (Option<&str>, Option<&str>),
    offline: bool,
) -> anyhow::Result<()> {
    let agency = AgencyId::parse("AGENCY", agency)?;
    let now = time::OffsetDateTime::now_utc();
    let until = old_valid_until(overlap, until, now)?;
    let old = certificate_of(&pki.agency_dir(&agency).join("cert.pem"), &agency)?;
    // Opened before any file moves: an unreachable database stops the rotation with nothing done.
    let store = if offline {
        None
    } else {
        Some(startup::open_store(config).await?)
    };
    let rotated = pki.rotate_agency(&agency)?;
    let new = certificate_of(&rotated.dir.join("cert.pem"), &agency)?;
    let Some(store) = store else {
        println!(
            "new identity of {agency} in {}\n  cert.pem, key.pem: serial {}, SHA-256 {}\n\
             The old certificate's end is NOT recorded yet: where the brokers' database is \
             reachable, with cert.old.pem copied there, run\n  spean-broker pki revoke {agency} \
             --cert cert.old.pem --at {} --reason \"replaced in a rotation\"",
            rotated.dir.display(),
            new.serial,
            new.fingerprint,
            rfc3339(until),
        );
        return Ok(());
    };
    let reason = Reason::parse(
        "reason",
        &format!(
            "replaced by a new certificate (serial {}) in a rotation",
            new.serial
        ),
    )?;
    let stored = store
        .revoke(&old.revoked(until, reason, now))
        .await
        .with_context(|| {
            format!(
                "the new identity is in {}, but the old certificate's end was not recorded: it \
                 stays valid until revoked (`spean-broker pki revoke {agency} --cert {}`)",
                rotated.dir.display(),
                rotated.old_cert.display()
            )
        })?;
    println!(
        "new identity of {agency} in {}\n  cert.pem, key.pem: serial {}, SHA-256 {}\n  \
         cert.old.pem, key.old.pem: serial {}, SHA-256 {}\n\
         The old certificate works until {}; from then on every broker refuses it. Hand the \
         agency its folder and restart its adapter with the new cert.pem and key.pem before then.",
        rotated.dir.display(),
        new.serial,
        new.fingerprint,
        stored.serial,
        stored.fingerprint,
        rfc3339(stored.effective_at),
    );
    Ok(())
}

/// The certificate in `path`, which must name `agency`.
fn certificate_of(path: &std::path::Path, agency: &AgencyId) -> anyhow::Result<Certificate> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certificate = Certificate::from_pem(&path.display().to_string(), &pem)?;
    anyhow::ensure!(
        certificate.agency == *agency,
        "{} is the certificate of {}, not of {agency}",
        path.display(),
        certificate.agency
    );
    Ok(certificate)
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
