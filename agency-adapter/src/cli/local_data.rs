//! `backup`, `restore` and `purge`: the store's copies and its retention, safe while the daemon
//! runs (the work is in [`crate::backup`] and [`crate::retention`]).

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::{Context, print_json};
use crate::{backup, broker::Broker, retention};

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where to write the copy (created 0600).
    pub file: PathBuf,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A file `backup` wrote, of this agency's store, under this store's key.
    pub file: PathBuf,
    /// Restore even though the store holds what was received after the backup; those referrals
    /// are then read again from the broker.
    #[arg(long)]
    pub accept_loss: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// List what would be purged; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn backup(ctx: &Context, args: &BackupArgs) -> anyhow::Result<()> {
    let made = backup::backup(&ctx.store, &args.file, args.force).await?;
    if args.json {
        print_json(&made)?;
    } else {
        println!(
            "{}: backup of {}'s store written ({} bytes); it opens only with the store key, keep \
             that apart",
            made.file.display(),
            ctx.me(),
            made.bytes
        );
    }
    Ok(())
}

pub(super) async fn restore(ctx: &Context, args: &RestoreArgs) -> anyhow::Result<()> {
    let restored = backup::restore(&ctx.store, &args.file, args.accept_loss).await?;
    // Read again now if the broker answers; what is not stays for the daemon's next connection.
    let not_read: Vec<(String, String)> = if restored.referrals_to_read_again.is_empty() {
        Vec::new()
    } else {
        match Broker::connect(&ctx.settings.broker, &ctx.identity).await {
            Ok(mut broker) => backup::read_again(&ctx.store, &mut broker)
                .await?
                .into_iter()
                .map(|(id, error)| (id, error.to_string()))
                .collect(),
            Err(error) => restored
                .referrals_to_read_again
                .iter()
                .map(|id| (id.clone(), error.to_string()))
                .collect(),
        }
    };
    if args.json {
        print_json(&json!({
            "restored_from": args.file,
            "requests_carried_over": restored.requests_carried_over,
            "referrals_read_again": restored.referrals_to_read_again.len() - not_read.len(),
            "referrals_not_read_again": not_read
                .iter()
                .map(|(id, error)| json!({ "referral_id": id, "error": error }))
                .collect::<Vec<_>>(),
        }))?;
    } else {
        println!(
            "{}: restored into {}'s store; {} queued request(s) carried over, {} referral(s) read \
             again from the broker",
            args.file.display(),
            ctx.me(),
            restored.requests_carried_over,
            restored.referrals_to_read_again.len() - not_read.len()
        );
        for (id, error) in &not_read {
            println!(
                "  {id}: not read again ({error}); run `restore` again later or ask the broker"
            );
        }
    }
    Ok(())
}

pub(super) async fn purge(ctx: &Context, args: &PurgeArgs) -> anyhow::Result<()> {
    let setting = &ctx.settings.retention.closed_case_files_for;
    let purge = retention::purge(
        &ctx.store,
        ctx.settings.retention_period()?,
        setting,
        args.dry_run,
    )
    .await?;
    if args.json {
        let runs = retention::history(&ctx.store).await?;
        print_json(&json!({
            "purge": purge,
            "closed_case_files_for": setting,
            "earlier": runs
                .iter()
                .map(|(at, referrals, closed_for)| {
                    json!({ "at": at, "referrals": referrals, "closed_for": closed_for })
                })
                .collect::<Vec<_>>(),
        }))?;
        return Ok(());
    }
    let verb = if purge.dry_run {
        "would be purged"
    } else {
        "purged"
    };
    println!(
        "{} referral(s) closed before {} (retention {setting}) {verb}",
        purge.referral_ids.len(),
        purge.closed_before
    );
    for id in &purge.referral_ids {
        println!("  {id}");
    }
    Ok(())
}
