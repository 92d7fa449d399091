//! `user add|list|disable|enable|password`: the staff accounts of the pages. A password is read
//! from standard input (its first line), never from the command line, so it is in no process
//! list and no shell history.

use std::io::{BufRead, IsTerminal, Write};

use clap::Subcommand;

use super::{Context, print_json, views::table};

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a staff member; their password is read from standard input.
    Add {
        /// The login name: letters a-z, digits and . _ -.
        username: String,
        /// The person's name, recorded with what they do and read (may be Khmer).
        #[arg(long, value_name = "NAME")]
        name: String,
        /// The language of their pages: km (Khmer) or en (English).
        #[arg(long, default_value = "km", value_name = "km|en")]
        language: String,
    },
    /// Every staff member, live ones first (never a password or its hash).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Disable an account: it can no longer log in, and its sessions end at once.
    Disable { username: String },
    /// Enable a disabled account again.
    Enable { username: String },
    /// Set a new password (read from standard input): ends the person's sessions and lifts a
    /// lockout after wrong passwords.
    Password { username: String },
}

/// The first line of standard input; on a terminal, asked for on stderr first.
fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password (at least 10 characters): ");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

pub(super) async fn user(ctx: &Context, command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            username,
            name,
            language,
        } => {
            let password = read_password()?;
            let added = ctx
                .store
                .add_staff(&username, &name, &password, &language)
                .await?;
            eprintln!(
                "{} ({}) can log in to the pages now.",
                added.username, added.display_name
            );
        }
        UserCommand::List { json } => {
            let members = ctx.store.staff().await?;
            if json {
                return print_json(&members);
            }
            let mut shown = table(&[
                "username",
                "name",
                "language",
                "created",
                "last login",
                "state",
            ]);
            let now = time::OffsetDateTime::now_utc();
            let future = |at: &str| {
                time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                    .is_ok_and(|at| at > now)
            };
            for m in members {
                let state = match (&m.disabled_at, &m.locked_until) {
                    (Some(at), _) => format!("disabled {at}"),
                    (None, Some(until)) if future(until) => format!("locked until {until}"),
                    _ => "live".to_owned(),
                };
                shown.add_row(vec![
                    m.username,
                    m.display_name,
                    m.language,
                    m.created_at,
                    m.last_login_at.unwrap_or_default(),
                    state,
                ]);
            }
            println!("{shown}");
        }
        UserCommand::Disable { username } => {
            let m = ctx.store.disable_staff(&username).await?;
            println!("{} disabled; their sessions ended", m.username);
        }
        UserCommand::Enable { username } => {
            let m = ctx.store.enable_staff(&username).await?;
            println!("{} enabled", m.username);
        }
        UserCommand::Password { username } => {
            let password = read_password()?;
            let m = ctx.store.set_staff_password(&username, &password).await?;
            println!("{}: password set; their sessions ended", m.username);
        }
    }
    Ok(())
}
