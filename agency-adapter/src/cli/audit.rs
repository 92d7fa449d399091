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
            let expected = match expected {
                Some(head) => Some(head),
                None => witnessed(ctx).await,
            };
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

/// The head the broker witnessed for this agency, to check the log's tail against; says so on
/// stderr when the broker cannot be asked, so that a check of the chain alone is never taken for a
/// check of its tail.
async fn witnessed(ctx: &Context) -> Option<Head> {
    let asked = async {
        let mut broker =
            crate::broker::Broker::connect(&ctx.settings.broker, &ctx.identity).await?;
        crate::audit::witnessed_head(&mut broker).await
    };
    match asked.await {
        Ok(Some(head)) => {
            eprintln!("checking against the head the broker witnessed: {head}");
            Some(head)
        }
        Ok(None) => {
            eprintln!("the broker has witnessed no head of this log yet: checking the chain only");
            None
        }
        Err(error) => {
            eprintln!(
                "OFFLINE: could not ask the broker for the witnessed head ({error}): checking \
                 the chain only, not whether its tail was cut (give --head to check that)"
            );
            None
        }
    }
}

/// A head as SEQ:HEX; an empty log's is `0:` and 32 zero bytes.
fn print_head(head: Option<Head>) {
    match head {
        Some(head) => println!("{head}"),
        None => println!("0:{GENESIS}"),
    }
}
