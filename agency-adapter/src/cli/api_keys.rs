//! `api-key create|list|revoke`: the keys a case-management system calls the local API with.

use clap::Subcommand;

use super::{Context, print_json, views::table};

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Make a key and print it, once: it is not stored, only its hash.
    Create {
        /// What the key is for, e.g. oscar-sync (letters, digits, - _ .). Written in the audit
        /// log with every case file read through it.
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Every key made, live ones first (never the keys themselves).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key, by its id or its name: the next request with it is refused.
    Revoke { key: String },
}

pub(super) async fn api_key(ctx: &Context, command: ApiKeyCommand) -> anyhow::Result<()> {
    match command {
        ApiKeyCommand::Create { name, json } => {
            let created = ctx.store.create_api_key(&name).await?;
            if json {
                return print_json(&created);
            }
            println!("{}", created.secret);
            eprintln!(
                "API key {} ({}) made. Give it to the system that calls the API; it is not shown \
                 again.",
                created.key.key_id, created.key.name
            );
        }
        ApiKeyCommand::List { json } => {
            let keys = ctx.store.api_keys().await?;
            if json {
                return print_json(&keys);
            }
            let mut shown = table(&["key", "name", "created", "revoked"]);
            for key in keys {
                shown.add_row(vec![
                    key.key_id,
                    key.name,
                    key.created_at,
                    key.revoked_at.unwrap_or_default(),
                ]);
            }
            println!("{shown}");
        }
        ApiKeyCommand::Revoke { key } => {
            let revoked = ctx.store.revoke_api_key(&key).await?;
            println!(
                "{} ({}) revoked at {}",
                revoked.key_id,
                revoked.name,
                revoked.revoked_at.unwrap_or_default()
            );
        }
    }
    Ok(())
}
