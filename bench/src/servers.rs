//! The machine's PostgreSQL and RabbitMQ, isolated per run: a fresh database and a fresh vhost, both
//! removed afterwards, so runs neither see each other's data nor leave queues behind.

use std::process::Stdio;

use anyhow::{Context, bail};
use sqlx::Connection as _;
use tokio::process::Command;

/// Where the servers are; each run makes its own database and vhost there.
#[derive(Debug, Clone)]
pub struct Servers {
    /// An administrative PostgreSQL URL (its database is only used to create and drop others).
    pub postgres_admin_url: String,
    /// `amqp://user:password@host:port` without a vhost.
    pub amqp_url: String,
}

/// One run's database; [`Database::drop_now`] removes it.
pub struct Database {
    admin_url: String,
    name: String,
    pub url: String,
}

impl Database {
    pub async fn create(servers: &Servers) -> anyhow::Result<Self> {
        let name = format!("spean_bench_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(&servers.postgres_admin_url)
            .await
            .with_context(|| format!("PostgreSQL at {}", servers.postgres_admin_url))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await?;
        // The run's database on the same server, with the admin URL's options (`?sslmode=…`).
        let (path, options) = servers
            .postgres_admin_url
            .split_once('?')
            .map_or((servers.postgres_admin_url.as_str(), None), |(p, o)| {
                (p, Some(o))
            });
        let base = path.rsplit_once('/').map_or(path, |(b, _)| b);
        Ok(Self {
            url: match options {
                Some(options) => format!("{base}/{name}?{options}"),
                None => format!("{base}/{name}"),
            },
            admin_url: servers.postgres_admin_url.clone(),
            name,
        })
    }

    pub async fn drop_now(self) -> anyhow::Result<()> {
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut admin)
        .await?;
        Ok(())
    }
}

/// One run's RabbitMQ vhost (guest has every permission in it); [`Vhost::delete`] removes it with
/// every queue in it.
pub struct Vhost {
    pub name: String,
    pub url: String,
}

impl Vhost {
    pub async fn create(servers: &Servers) -> anyhow::Result<Self> {
        let name = format!("spean-bench-{}", uuid::Uuid::now_v7().simple());
        rabbitmqctl(&["add_vhost", &name]).await?;
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]).await?;
        Ok(Self {
            url: format!("{}/{name}", servers.amqp_url.trim_end_matches('/')),
            name,
        })
    }

    /// How many queues the vhost holds now.
    pub async fn queue_count(&self) -> anyhow::Result<usize> {
        let out = Command::new("rabbitmqctl")
            .args([
                "list_queues",
                "-q",
                "--no-table-headers",
                "-p",
                &self.name,
                "name",
            ])
            .stderr(Stdio::null())
            .output()
            .await?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count())
    }

    pub async fn delete(self) -> anyhow::Result<()> {
        rabbitmqctl(&["delete_vhost", &self.name]).await
    }
}

async fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .context("rabbitmqctl is required to make a vhost per run")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
