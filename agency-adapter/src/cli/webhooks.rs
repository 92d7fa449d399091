//! `webhook`: the endpoints this agency's own system registered, and the messages sent to them
//! (docs/integration.md#webhooks). Works on the local store; the daemon need not be stopped, and
//! it picks up any change on its next pass.

use clap::Subcommand;
use comfy_table::Table;

use super::{Context, print_json};
use crate::webhooks::{self, EventType, MessageFilter, MessageStatus, NewEndpoint};

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Registers an endpoint and prints its signing secret (shown once; `webhook secret` shows it
    /// again).
    Add {
        /// https://..., or http:// to this machine only.
        #[arg(long)]
        url: String,
        /// An event type it wants (repeat for more): referral.received, referral.feedback,
        /// referral.updated, referral.escalated, follow_up.overdue, request.rejected.
        #[arg(long = "event", value_name = "TYPE", required = true, num_args = 1..)]
        events: Vec<String>,
        /// Which system this is, for people.
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        json: bool,
    },
    /// The endpoints, with whether each is enabled (and if not, why and since when).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Removes an endpoint, with its messages and their attempts.
    Remove { id: String },
    /// Enables an endpoint again: its undelivered messages go at once, in order.
    Enable { id: String },
    /// Disables an endpoint: nothing is posted to it, and its messages are kept.
    Disable { id: String },
    /// Prints an endpoint's signing secret.
    Secret { id: String },
    /// The messages, oldest first: status, attempts, last answer, next try.
    Messages {
        /// Only this endpoint's.
        #[arg(long, value_name = "ID")]
        endpoint: Option<String>,
        /// Only those pending, delivered or failing.
        #[arg(long, value_name = "STATUS")]
        status: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Every attempt of one message: when, the status code or error, how long it took.
    Attempts {
        msg_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Sends a message again now, with the same id (delivered or failing alike).
    Resend { msg_id: String },
}

pub(super) async fn webhook(ctx: &Context, command: WebhookCommand) -> anyhow::Result<()> {
    let store = &ctx.store;
    match command {
        WebhookCommand::Add {
            url,
            events,
            description,
            json,
        } => {
            let event_types = events
                .iter()
                .map(|e| e.parse::<EventType>())
                .collect::<Result<Vec<_>, _>>()?;
            let created = webhooks::register(
                store,
                NewEndpoint {
                    url,
                    event_types,
                    description,
                },
            )
            .await?;
            if json {
                print_json(&created)?;
            } else {
                println!("{}  {}", created.endpoint.id, created.endpoint.url);
                println!("secret: {}", created.secret);
            }
        }
        WebhookCommand::List { json } => {
            let endpoints = webhooks::list(store).await?;
            if json {
                return print_json(&endpoints);
            }
            let mut table = Table::new();
            table.set_header(["id", "url", "events", "enabled", "disabled", "description"]);
            for e in endpoints {
                let types: Vec<&str> = e.event_types.iter().map(|t| t.as_str()).collect();
                let disabled = match (&e.disabled_at, &e.disabled_reason) {
                    (Some(at), Some(reason)) => format!("{at}: {reason}"),
                    _ => String::new(),
                };
                table.add_row([
                    e.id,
                    e.url,
                    types.join(" "),
                    if e.enabled { "yes" } else { "no" }.to_owned(),
                    disabled,
                    e.description,
                ]);
            }
            println!("{table}");
        }
        WebhookCommand::Remove { id } => {
            webhooks::remove(store, &id).await?;
            println!("{id}: removed");
        }
        WebhookCommand::Enable { id } => {
            webhooks::set_enabled(store, &id, true).await?;
            println!("{id}: enabled");
        }
        WebhookCommand::Disable { id } => {
            webhooks::set_enabled(store, &id, false).await?;
            println!("{id}: disabled");
        }
        WebhookCommand::Secret { id } => println!("{}", webhooks::secret(store, &id).await?),
        WebhookCommand::Messages {
            endpoint,
            status,
            json,
        } => {
            let filter = MessageFilter {
                endpoint,
                status: status
                    .as_deref()
                    .map(str::parse::<MessageStatus>)
                    .transpose()?,
            };
            let messages = webhooks::messages(store, &filter).await?;
            if json {
                return print_json(&messages);
            }
            let mut table = Table::new();
            table.set_header([
                "id", "endpoint", "type", "status", "attempts", "last", "ms", "next try",
            ]);
            for m in messages {
                let last = match (m.last_status, &m.last_error) {
                    (Some(code), _) => code.to_string(),
                    (None, Some(error)) => error.clone(),
                    (None, None) => String::new(),
                };
                table.add_row([
                    m.id,
                    m.endpoint_id,
                    m.event_type.to_string(),
                    m.status.as_str().to_owned(),
                    m.attempts.to_string(),
                    last,
                    m.last_latency_ms
                        .map(|ms| ms.to_string())
                        .unwrap_or_default(),
                    m.next_attempt_at.unwrap_or_default(),
                ]);
            }
            println!("{table}");
        }
        WebhookCommand::Attempts { msg_id, json } => {
            let attempts = webhooks::attempts(store, &msg_id).await?;
            if json {
                return print_json(&attempts);
            }
            let mut table = Table::new();
            table.set_header(["attempt", "at", "status", "error", "ms"]);
            for a in attempts {
                table.add_row([
                    a.attempt.to_string(),
                    a.at,
                    a.status_code.map(|c| c.to_string()).unwrap_or_default(),
                    a.error.unwrap_or_default(),
                    a.latency_ms.to_string(),
                ]);
            }
            println!("{table}");
        }
        WebhookCommand::Resend { msg_id } => {
            let message = webhooks::resend(store, &msg_id).await?;
            println!(
                "{}: scheduled now ({} attempts so far)",
                message.id, message.attempts
            );
        }
    }
    Ok(())
}
