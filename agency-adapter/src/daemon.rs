//! `spean-adapter run`: three loops side by side until shutdown. The delivery loop keeps a subscription
//! open (reconnecting with backoff); the relay loop sends the outbox in order whenever there is
//! something pending. A successful (re)subscription wakes the relay, since the broker is evidently back.
//! The webhook dispatcher posts the messages stored deliveries queued ([`crate::webhooks::dispatch`]).

use std::{sync::Arc, time::Duration};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    AdapterError,
    api::{self, ApiState, server::Listening},
    backoff::Backoff,
    broker::Broker,
    cli::Context,
    config::Settings,
    delivery,
    identity::Identity,
    link::Link,
    outbox, retention,
    store::Store,
};

/// How often an idle relay looks for rows the command line queued.
const OUTBOX_POLL: Duration = Duration::from_millis(500);

/// How often the retention purge runs (and once at start): a period is days long, an hour late
/// is nothing, and the purge is one indexed query when nothing is due.
const PURGE_EVERY: Duration = Duration::from_secs(3_600);

pub struct Daemon {
    store: Store,
    identity: Identity,
    broker_url: String,
    settings: Settings,
    /// The link to the broker as the delivery loop last found it, for the API.
    link: Arc<Link>,
    /// The API's listener, bound at build so that a port already taken fails the start.
    api: Option<Listening>,
    webhooks: crate::webhooks::WebhookSettings,
    /// How long closed referrals keep their case files, and the setting as written (recorded).
    retention: (retention::Period, String),
}

impl Daemon {
    pub async fn build(settings: &Settings) -> Result<Self, AdapterError> {
        let identity = Identity::load(&settings.identity)?;
        let store =
            Store::open_with(&settings.store, &identity.agency_id, &settings.store_key()).await?;
        let api = api::server::bind(&settings.api).await?;
        if let Some(listening) = &api {
            // Where a script (or a test) finds a port chosen by the system (`api.listen` port 0).
            let file = api::server::address_file(&settings.store);
            std::fs::write(&file, listening.addr.to_string())
                .map_err(|e| AdapterError::Config(format!("writing {}: {e}", file.display())))?;
        }
        Ok(Self {
            store,
            identity,
            broker_url: settings.broker.clone(),
            settings: settings.clone(),
            link: Arc::new(Link::default()),
            api,
            webhooks: settings.webhooks.clone(),
            retention: (
                settings.retention_period()?,
                settings.retention.closed_case_files_for.clone(),
            ),
        })
    }

    /// Where the API listens, when it is served.
    pub fn api_addr(&self) -> Option<std::net::SocketAddr> {
        self.api.as_ref().map(|l| l.addr)
    }

    pub fn agency_id(&self) -> &str {
        self.identity.agency_id.as_str()
    }

    /// Runs until `shutdown` is cancelled; each loop stops between units of work.
    pub async fn run_until_stopped(
        mut self,
        shutdown: CancellationToken,
    ) -> Result<(), AdapterError> {
        let broker_back = Arc::new(Notify::new());
        let span = tracing::info_span!("adapter", agency = %self.identity.agency_id);
        let api = self.api.take().map(|listening| {
            let ctx = Context::new(
                self.settings.clone(),
                self.identity.clone(),
                self.store.clone(),
            );
            let api_state = ApiState::new(ctx, self.link.clone());
            let pages = crate::web::WebState::new(api_state.ctx.clone(), self.link.clone());
            let router = api::router(api_state).merge(crate::web::router(pages));
            tokio::spawn(
                api::server::serve(listening, router, shutdown.clone())
                    .instrument(tracing::info_span!(parent: &span, "api")),
            )
        });
        let deliveries = self
            .delivery_loop(&shutdown, &broker_back)
            .instrument(tracing::info_span!(parent: &span, "deliveries"));
        let relay = self
            .relay_loop(&shutdown, &broker_back)
            .instrument(tracing::info_span!(parent: &span, "outbox"));
        let webhooks =
            crate::webhooks::dispatch::run_until_stopped(&self.store, &self.webhooks, &shutdown)
                .instrument(tracing::info_span!(parent: &span, "webhooks"));
        let purge = self
            .retention_loop(&shutdown)
            .instrument(tracing::info_span!(parent: &span, "retention"));
        tokio::join!(deliveries, relay, webhooks, purge);
        if let Some(api) = api {
            let _ = api.await;
        }
        if let Err(error) = self.store.forget_link().await {
            tracing::warn!(%error, "cannot forget the link");
        }
        self.store.close().await;
        tracing::info!(parent: &span, "stopped");
        Ok(())
    }

    async fn delivery_loop(&self, shutdown: &CancellationToken, broker_back: &Notify) {
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            let result = match Broker::connect(&self.broker_url, &self.identity).await {
                Ok(mut broker) => {
                    // The broker keeps this agency's audit head; best effort, on every connect.
                    if let Err(error) = crate::audit::report_head(&mut broker, &self.store).await {
                        tracing::warn!(%error, "reporting the audit head failed");
                    }
                    // What a restore lost, read again; best effort, on every connect.
                    match crate::backup::read_again(&self.store, &mut broker).await {
                        Ok(failed) if !failed.is_empty() => {
                            tracing::warn!(
                                referrals = failed.len(),
                                "reading again what a restore lost failed; will retry"
                            );
                        }
                        Ok(_) => {}
                        Err(error) => tracing::warn!(%error, "cannot read what a restore lost"),
                    }
                    delivery::subscribe(
                        &mut broker,
                        &self.store,
                        shutdown,
                        || {
                            backoff.reset();
                            self.link.up();
                            let (store, status) = (self.store.clone(), self.link.status());
                            tokio::spawn(async move {
                                if let Err(error) = store.note_link(status).await {
                                    tracing::warn!(%error, "cannot record the link");
                                }
                            });
                            broker_back.notify_one();
                        },
                        |_| {},
                    )
                    .await
                }
                Err(error) => Err(error),
            };
            if let Err(error) = result {
                self.link.down(&error.to_string());
                // Recorded for commands only when the broker is out of reach: a refused
                // certificate, say, is for a command to find and report itself.
                let status = self.link.status();
                let recorded = if error.is_transient() {
                    self.store.note_link(status).await
                } else {
                    self.store.forget_link().await
                };
                if let Err(error) = recorded {
                    tracing::warn!(%error, "cannot record the link");
                }
                let wait = backoff.next_delay();
                tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "delivery stream down");
                sleep_or_stop(wait, shutdown, None).await;
            }
        }
    }

    async fn retention_loop(&self, shutdown: &CancellationToken) {
        let (period, setting) = &self.retention;
        while !shutdown.is_cancelled() {
            if let Err(error) = retention::purge(&self.store, *period, setting, false).await {
                tracing::error!(%error, "retention purge failed; will retry");
            }
            sleep_or_stop(PURGE_EVERY, shutdown, None).await;
        }
    }

    async fn relay_loop(&self, shutdown: &CancellationToken, broker_back: &Notify) {
        let mut backoff = Backoff::default();
        let mut broker: Option<Broker> = None;
        while !shutdown.is_cancelled() {
            let row = match self.store.next_pending().await {
                Ok(Some(row)) => row,
                Ok(None) => {
                    sleep_or_stop(OUTBOX_POLL, shutdown, None).await;
                    continue;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot read the outbox");
                    sleep_or_stop(backoff.next_delay(), shutdown, None).await;
                    continue;
                }
            };
            let connected = match broker.take() {
                Some(b) => Ok(b),
                None => Broker::connect(&self.broker_url, &self.identity).await,
            };
            let result = match connected {
                Ok(mut b) => {
                    let result = outbox::send_row(&self.store, &mut b, &row).await;
                    broker = Some(b);
                    result
                }
                Err(error) => Err(error),
            };
            match result {
                Ok(_) => {
                    backoff.reset();
                    tracing::info!(request_id = %row.request_id, operation = %row.operation, "outbox request sent");
                }
                Err(error) if error.is_refusal() => {
                    backoff.reset();
                    tracing::warn!(request_id = %row.request_id, operation = %row.operation, %error, "outbox request rejected");
                }
                Err(error @ AdapterError::Decode { .. }) => {
                    // A row we cannot read back will never send: set it aside so the rest can go.
                    tracing::error!(request_id = %row.request_id, %error, "unreadable outbox row");
                    if let Err(error) = self
                        .store
                        .mark_rejected(&row.request_id, &error.to_string())
                        .await
                    {
                        tracing::error!(%error, "cannot set the unreadable row aside");
                    }
                }
                Err(error) => {
                    if error.is_transient() {
                        broker = None;
                    }
                    let wait = backoff.next_delay();
                    tracing::warn!(request_id = %row.request_id, %error, retry_in_ms = wait.as_millis() as u64, "outbox request not sent; will retry");
                    sleep_or_stop(wait, shutdown, Some(broker_back)).await;
                }
            }
        }
    }
}

/// Waits `wait`, or less if shutdown is requested or (when given) the broker is known to be back.
async fn sleep_or_stop(wait: Duration, shutdown: &CancellationToken, wake: Option<&Notify>) {
    let woken = async {
        match wake {
            Some(notify) => notify.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = shutdown.cancelled() => {}
        () = woken => {}
    }
}

/// Resolves on ctrl-c or SIGTERM, whichever comes first.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested");
}
