//! `keys`: this agency's sealing keys. `show` lists them (ids only: a private key never leaves the
//! store); `publish` publishes the current one; `rotate` makes a new one and publishes it, the older ones staying to open what was
//! sealed to them.

use clap::Subcommand;
use serde_json::json;

use super::{Context, print_json};
use crate::broker::Broker;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// The sealing keys this agency holds, newest (the published one) first.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Publishes the current sealing key through the broker's directory, signed with this
    /// agency's certificate key. The daemon does it on every connection; this is for an agency
    /// that sends and receives without one, or right after its certificate was rotated.
    Publish {
        #[arg(long)]
        json: bool,
    },
    /// Makes a new sealing key and publishes it through the broker's directory. Boxes sealed to
    /// the older keys still open: they are kept.
    Rotate {
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn keys(ctx: &Context, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Show { json } => {
            let ids: Vec<String> = ctx
                .store
                .seal_keys()
                .await?
                .iter()
                .map(|k| hex::encode(k.id()))
                .collect();
            if json {
                print_json(&json!({ "agency_id": ctx.me(), "key_ids": ids }))?;
            } else {
                for (n, id) in ids.iter().enumerate() {
                    let label = if n == 0 { "current" } else { "older" };
                    println!("{id}  {label}");
                }
            }
        }
        KeysCommand::Publish { json } => {
            let mut broker = Broker::connect(&ctx.settings.broker, &ctx.identity).await?;
            crate::sealing::publish_key(&ctx.store, &mut broker).await?;
            let keys = ctx.store.seal_keys().await?;
            let id = keys
                .first()
                .map(|k| hex::encode(k.id()))
                .unwrap_or_default();
            if json {
                print_json(&json!({ "agency_id": ctx.me(), "key_id": id, "published": true }))?;
            } else {
                println!("{id}: sealing key of {} published", ctx.me());
            }
        }
        KeysCommand::Rotate { json } => {
            let mut broker = Broker::connect(&ctx.settings.broker, &ctx.identity).await?;
            let key = crate::sealing::rotate_key(&ctx.store, &mut broker).await?;
            let id = hex::encode(key.id());
            if json {
                print_json(&json!({ "agency_id": ctx.me(), "key_id": id, "published": true }))?;
            } else {
                println!("{id}: new sealing key of {} published", ctx.me());
            }
        }
    }
    Ok(())
}
