//! `audit verify`, `audit head` and `audit broker-head`: the local log of case file reads, and the
//! broker's head this adapter kept.

use anyhow::Context as _;
use clap::Subcommand;
use spean_domain::audit::{GENESIS, Head};

use super::Context;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the chain of this agency's log of case file reads; exits non-zero naming the first
    /// bad entry.
    Verify {
        /// A head recorded elsewhere, as SEQ:HEX: the log must reach it and hold it, so that a cut
        /// tail shows.
        #[arg(long)]
        head: Option<String>,
    },
    /// Print this agency's log head, SEQ:HEX.
    Head,
    /// Print the newest head of the broker's log that a delivery carried here, SEQ:HEX: give it
    /// to `spean-broker audit verify --head` to check the broker's log was not cut short.
    BrokerHead,
}

pub(super) async fn audit(ctx: &Context, command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { head } => {
            let expected = head
                .as_deref()
                .map(Head::parse)
                .transpose()
                .context("--head")?;
            let entries = ctx.store.audit_entries().await?;
            match crate::audit::verify(&entries, expected) {
                Ok(Some(head)) => println!("audit log OK: {} entries, head {head}", head.seq),
                Ok(None) => println!("audit log OK: empty"),
                Err(broken) => anyhow::bail!("audit log BROKEN at entry {}: {broken}", broken.seq),
            }
        }
        AuditCommand::Head => print_head(ctx.store.audit_head().await?),
        AuditCommand::BrokerHead => match ctx.store.broker_head().await? {
            Some(head) => println!("{head}"),
            None => anyhow::bail!("no delivery has carried the broker's audit head here yet"),
        },
    }
    Ok(())
}

/// A head as SEQ:HEX; an empty log's is `0:` and 32 zero bytes.
fn print_head(head: Option<Head>) {
    match head {
        Some(head) => println!("{head}"),
        None => println!("0:{GENESIS}"),
    }
}
