//! The command line: global options, the commands, and dispatch. Commands return `anyhow` errors;
//! `main` prints them as `error: ...` and exits 1.
//!
//! - [`send`]: `send` and the feedback actions (delegating follow-up visits and taking them back
//!   among them), which all go through the outbox first.
//! - [`views`]: `inbox`, `show`, `status` and `outbox`, as tables or `--json`, from the local store.
//! - [`audit`]: `audit verify`, `audit head` and `audit broker-head`.
//! - [`local_data`]: `backup`, `restore` and `purge`: the store's copies and its retention.
//! - [`network`]: `overdue` and `figures`, asked of the broker online, as tables, `--json` or
//!   `--csv`.
//! - [`webhooks`]: `webhook add|list|remove|enable|disable|secret|messages|attempts|resend`.

mod api_keys;
mod audit;
pub(crate) mod consent;
mod keys;
mod local_data;
mod network;
pub(crate) mod send;
mod staff;
pub(crate) mod views;
mod webhooks;

/// How `show` renders what a delivery carries, reached by the fuzz targets (`fuzz/`); not an API.
#[doc(hidden)]
pub use views::{Lines, case_file_lines, event_json, history_row, shown};

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use spean_proto::v1::{AgeBand, Sex, Urgency};

use crate::{
    config::{Overrides, Settings},
    daemon::{self, Daemon},
    identity::Identity,
    store::Store,
    telemetry,
};

/// What `--version` prints: a build that can kill itself on request says so, so that a test can
/// tell it has one and an operator can tell a deployed binary is not one.
#[cfg(feature = "fault-injection")]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (fault-injection)");
#[cfg(not(feature = "fault-injection"))]
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Spean agency adapter: keeps this agency's inbox, sent referrals and their history in a local store,
/// and sends referrals and feedback through the broker (queuing them while offline).
#[derive(Debug, Parser)]
#[command(name = "spean-adapter", version = VERSION)]
pub struct Cli {
    /// A TOML file with `identity`, `broker` and `store` (see config.example.toml).
    #[arg(long, global = true, env = "SPEAN_ADAPTER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The identity folder (ca.pem, cert.pem, key.pem).
    #[arg(
        long,
        global = true,
        env = "SPEAN_ADAPTER_IDENTITY",
        value_name = "DIR"
    )]
    pub identity: Option<PathBuf>,
    /// The broker URL [default: https://localhost:50051].
    #[arg(long, global = true, env = "SPEAN_ADAPTER_BROKER", value_name = "URL")]
    pub broker: Option<String>,
    /// The local SQLite store [default: spean-adapter.db].
    #[arg(long, global = true, env = "SPEAN_ADAPTER_STORE", value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// The store's key file [default: store.key in the identity folder]; unused when
    /// SPEAN_ADAPTER_STORE_PASSPHRASE is set.
    #[arg(
        long,
        global = true,
        env = "SPEAN_ADAPTER_STORE_KEY",
        value_name = "FILE"
    )]
    pub store_key: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: receive deliveries and send the outbox until SIGTERM or ctrl-c.
    Run,
    /// Send a referral.
    Send(Box<send::SendArgs>),
    /// Referrals this agency received, was told of, or makes the follow-up visits of (open ones
    /// unless --all): first what needs it now (referrals waiting for its acknowledgement, and
    /// follow-up visits of its own that are due or overdue), the escalated and overdue first; then
    /// the rest, newest first. --json adds `audience`, `follow_up_delegated_here` and `follow_up`
    /// (status, next_due_at, missed).
    Inbox(ListArgs),
    /// One referral: envelope, case file (for a delegate, the follow-up part it was handed), who
    /// makes the follow-up visits, the visits made and missed and the next one due, and the history.
    Show {
        /// The referral id.
        id: String,
        #[arg(long)]
        json: bool,
        /// Who reads, for the audit log [default: the OS user, $USER].
        #[arg(long, value_name = "PERSON")]
        by: Option<String>,
    },
    /// One client's referrals at this agency, sent or received, under their pseudonymous
    /// reference, as one history oldest first (story 5). Reads the local store only.
    Client {
        /// The pseudonym the referrals carry (`send --pseudonym`).
        pseudonym: String,
        #[arg(long)]
        json: bool,
    },
    // The feedback actions (`ack`, `accept`, …), one subcommand each, defined beside what they send.
    #[command(flatten)]
    Act(send::Act),
    /// What this agency sent, its state and who acts next, plus unsent or rejected outbox rows.
    Status(ListArgs),
    /// The local outbox.
    Outbox {
        #[arg(long)]
        json: bool,
    },
    /// Referrals overdue now in this agency's provinces (coordinators and authorities only; asks
    /// the broker): unacknowledged past their deadline, or with a follow-up visit missed.
    Overdue(network::OverdueArgs),
    /// Figures for a period as donors and the ministry ask for them, counts with women and girls
    /// ("42 (17 F)"): this agency's own, or with --network the network's in its provinces
    /// (coordinators and authorities only). Asks the broker.
    Figures(network::FiguresArgs),
    /// This agency's keys for opening what other agencies seal to it: `show`, `rotate`.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// The audit log of case file reads, and the broker's head kept here (docs/security.md#audit).
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Staff accounts of the pages (docs/operations.md#staff-accounts): `add USERNAME --name NAME`,
    /// `list`, `disable`, `enable`, `password`; passwords are read from standard input.
    User {
        #[command(subcommand)]
        command: staff::UserCommand,
    },
    /// Keys for the local HTTP API (docs/integration.md): `create NAME`, `list`, `revoke KEY`.
    ApiKey {
        #[command(subcommand)]
        command: api_keys::ApiKeyCommand,
    },
    /// Webhooks: endpoints of this agency's own system, and the signed messages posted to them
    /// (docs/integration.md#webhooks).
    Webhook {
        #[command(subcommand)]
        command: webhooks::WebhookCommand,
    },
    /// Copy the store to FILE (0600), consistent even while the daemon writes. The copy stays
    /// encrypted under the store key: keep the key apart (docs/operations.md#backup).
    Backup(local_data::BackupArgs),
    /// Replace the store's content with a backup of it, while the daemon runs; checked first.
    Restore(local_data::RestoreArgs),
    /// Purge now the case files of referrals closed longer than `retention` (the daemon does it
    /// hourly); --dry-run lists them only.
    Purge(local_data::PurgeArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Include closed referrals.
    #[arg(long)]
    pub all: bool,
    #[arg(long)]
    pub json: bool,
}

/// What every feedback action takes.
#[derive(Debug, Args)]
pub struct ActionArgs {
    /// The referral id.
    pub id: String,
    /// Who acts (a person's name, may be Khmer).
    #[arg(long, value_name = "PERSON")]
    pub by: Option<String>,
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
    /// The idempotency key [default: a new UUIDv7].
    #[arg(long, value_name = "KEY")]
    pub request_id: Option<String>,
    /// Only write the request to the outbox; the daemon sends it.
    #[arg(long)]
    pub queue_only: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UrgencyArg {
    Emergency,
    Urgent,
    Routine,
}

impl From<UrgencyArg> for Urgency {
    fn from(u: UrgencyArg) -> Self {
        match u {
            UrgencyArg::Emergency => Urgency::Emergency,
            UrgencyArg::Urgent => Urgency::Urgent,
            UrgencyArg::Routine => Urgency::Routine,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SexArg {
    Female,
    Male,
    Other,
    Unknown,
}

impl From<SexArg> for Sex {
    fn from(s: SexArg) -> Self {
        match s {
            SexArg::Female => Sex::Female,
            SexArg::Male => Sex::Male,
            SexArg::Other => Sex::Other,
            SexArg::Unknown => Sex::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgeBandArg {
    #[value(name = "0-4")]
    #[serde(rename = "0-4")]
    A0to4,
    #[value(name = "5-9")]
    #[serde(rename = "5-9")]
    A5to9,
    #[value(name = "10-14")]
    #[serde(rename = "10-14")]
    A10to14,
    #[value(name = "15-17")]
    #[serde(rename = "15-17")]
    A15to17,
    #[value(name = "18-24")]
    #[serde(rename = "18-24")]
    A18to24,
    #[value(name = "25-59")]
    #[serde(rename = "25-59")]
    A25to59,
    #[value(name = "60+")]
    #[serde(rename = "60+")]
    A60Plus,
    Unknown,
}

impl From<AgeBandArg> for AgeBand {
    fn from(a: AgeBandArg) -> Self {
        match a {
            AgeBandArg::A0to4 => AgeBand::AgeBand04,
            AgeBandArg::A5to9 => AgeBand::AgeBand59,
            AgeBandArg::A10to14 => AgeBand::AgeBand1014,
            AgeBandArg::A15to17 => AgeBand::AgeBand1517,
            AgeBandArg::A18to24 => AgeBand::AgeBand1824,
            AgeBandArg::A25to59 => AgeBand::AgeBand2559,
            AgeBandArg::A60Plus => AgeBand::AgeBand60Plus,
            AgeBandArg::Unknown => AgeBand::Unknown,
        }
    }
}

/// What every command works with: the settings, who we are, and the local store. The API's
/// handlers work with the same, built by the daemon.
pub(crate) struct Context {
    pub settings: Settings,
    pub identity: Identity,
    pub store: Store,
}

impl Context {
    pub(crate) fn new(settings: Settings, identity: Identity, store: Store) -> Self {
        Self {
            settings,
            identity,
            store,
        }
    }

    async fn open(settings: Settings) -> anyhow::Result<Self> {
        let identity = Identity::load(&settings.identity)?;
        let store =
            Store::open_with(&settings.store, &identity.agency_id, &settings.store_key()).await?;
        Ok(Self {
            settings,
            identity,
            store,
        })
    }

    pub fn me(&self) -> &str {
        self.identity.agency_id.as_str()
    }
}

/// Loads the settings and runs the command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let is_daemon = matches!(cli.command, Command::Run);
    telemetry::init(if is_daemon { "info" } else { "warn" });
    let settings = Settings::load(
        cli.config.as_deref(),
        Overrides {
            identity: cli.identity,
            broker: cli.broker,
            store: cli.store,
            store_key: cli.store_key,
        },
    )?;
    if is_daemon {
        let daemon = Daemon::build(&settings).await?;
        tracing::info!(
            agency = daemon.agency_id(),
            broker = %settings.broker,
            api = ?daemon.api_addr(),
            "adapter starting"
        );
        let shutdown = tokio_util::sync::CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            daemon::shutdown_signal().await;
            trigger.cancel();
        });
        daemon.run_until_stopped(shutdown).await?;
        return Ok(());
    }
    let ctx = Context::open(settings).await?;
    let result = dispatch(&ctx, cli.command).await;
    ctx.store.close().await;
    result
}

async fn dispatch(ctx: &Context, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run => Ok(()),
        Command::Send(args) => send::send(ctx, *args).await,
        Command::Inbox(args) => views::inbox(ctx, &args).await,
        Command::Show { id, json, by } => views::show(ctx, &id, json, by.as_deref()).await,
        Command::Client { pseudonym, json } => views::client(ctx, &pseudonym, json).await,
        Command::Status(args) => views::status(ctx, &args).await,
        Command::Outbox { json } => views::outbox(ctx, json).await,
        Command::Act(act) => send::act(ctx, act).await,
        Command::Overdue(args) => network::overdue(ctx, args).await,
        Command::Figures(args) => network::figures(ctx, args).await,
        Command::Keys { command } => keys::keys(ctx, command).await,
        Command::Audit { command } => audit::audit(ctx, command).await,
        Command::User { command } => staff::user(ctx, command).await,
        Command::ApiKey { command } => api_keys::api_key(ctx, command).await,
        Command::Webhook { command } => webhooks::webhook(ctx, command).await,
        Command::Backup(args) => local_data::backup(ctx, &args).await,
        Command::Restore(args) => local_data::restore(ctx, &args).await,
        Command::Purge(args) => local_data::purge(ctx, &args).await,
    }
}

/// Prints a value as one line of JSON on stdout.
pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
