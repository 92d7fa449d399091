//! The delivery stream: say hello, then store what arrives in one local transaction and only then
//! confirm it. Whatever is not confirmed when the stream breaks is delivered again, which storing
//! absorbs (it is idempotent).
//!
//! Deliveries that have already arrived together are stored together, in one transaction: under
//! load that is one fsync for many deliveries instead of one each, and alone it is one delivery.
//!
//! A delivery is stored only if it concerns this agency ([`concerns`]): a broker that misroutes
//! (by a bug, or because it is not the one it claims to be) must not fill this agency's store with
//! another agency's case files. Such a delivery is logged by id and confirmed all the same, so it
//! neither comes back forever nor holds a slot of the window that other deliveries need. A referral
//! redirected away from this agency still reaches it, without its case file, as a former recipient's
//! view: accepted, it only updates the referral already held (the store never inserts it), and the
//! store removes the case file this agency held. A notified party (told by an escalation or a missed
//! visit) and the delegate of a referral's follow-up visits receive a view without the case file
//! too: the store inserts those, as its audience says.

use futures::FutureExt;
use spean_proto::v1::{
    Confirm, Delivery, Hello, SubscribeRequest, delivery::Payload, subscribe_request::Request,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::{
    AdapterError,
    broker::Broker,
    case_file::CaseFile,
    store::{Store, Stored},
};

/// How many unconfirmed deliveries the broker may have in flight to us.
pub const WINDOW: u32 = 64;

/// Runs one subscription until the stream breaks (an error, to reconnect after a backoff) or shutdown
/// is requested (`Ok`). `on_connected` runs once the broker has accepted the subscription, and
/// `on_confirmed` for each delivery once it is stored and its confirmation is on its way.
pub async fn subscribe(
    broker: &mut Broker,
    store: &Store,
    shutdown: &CancellationToken,
    on_connected: impl FnOnce(),
    mut on_confirmed: impl FnMut(&Delivery),
) -> Result<(), AdapterError> {
    // Those who seal to this agency need its key, and open what it sealed with it.
    crate::sealing::publish_key(store, broker).await?;
    let (requests, outgoing) = mpsc::channel(WINDOW as usize * 2);
    send(&requests, Request::Hello(Hello { window: WINDOW })).await?;
    let mut stream = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        response = broker.deliveries.subscribe(ReceiverStream::new(outgoing)) => response?.into_inner(),
    };
    on_connected();
    tracing::info!("subscribed to deliveries");
    let kill_after_store = fault::kill_after_store();
    let mut batch: Vec<Delivery> = Vec::with_capacity(WINDOW as usize);
    loop {
        // Shutdown is only looked at here, between batches: a batch being stored is finished and
        // confirmed first.
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = stream.message() => next?,
        };
        let Some(first) = next else {
            return Err(AdapterError::Unavailable(
                "the broker closed the delivery stream".into(),
            ));
        };
        batch.push(first);
        // Take whatever else has already arrived, without waiting for more.
        while batch.len() < WINDOW as usize {
            match stream.message().now_or_never() {
                Some(Ok(Some(delivery))) => batch.push(delivery),
                Some(Err(status)) => return Err(status.into()),
                Some(Ok(None)) | None => break,
            }
        }
        open_batch(store, broker, &mut batch).await?;
        store_batch(store, &broker.agency_id, &batch).await?;
        if kill_after_store {
            fault::kill_self();
        }
        for delivery in batch.drain(..) {
            send(
                &requests,
                Request::Confirm(Confirm {
                    delivery_id: delivery.delivery_id.clone(),
                }),
            )
            .await?;
            on_confirmed(&delivery);
        }
    }
}

/// Opens what arrived sealed to this agency ([`crate::sealing`]) before it is stored. Fails only
/// when a writer's key could not be fetched: the batch is then not confirmed, and comes again.
pub async fn open_batch(
    store: &Store,
    broker: &mut Broker,
    batch: &mut [Delivery],
) -> Result<(), AdapterError> {
    let mut opener = crate::sealing::Opener::load(store).await?;
    for delivery in batch {
        match delivery.payload.as_mut() {
            Some(Payload::Referral(referral)) => opener.referral(store, broker, referral).await?,
            Some(Payload::Feedback(event)) => opener.event(store, broker, event).await?,
            None => {}
        }
    }
    Ok(())
}

/// Stores, in one transaction, the deliveries of `batch` that concern `agency_id`, and logs (ids
/// only) those that do not; the caller confirms them all.
pub async fn store_batch(
    store: &Store,
    agency_id: &str,
    batch: &[Delivery],
) -> Result<(), AdapterError> {
    // Every delivery of a sound broker concerns this agency: store the batch as it came, without
    // copying its case files.
    if batch.iter().all(|delivery| concerns(delivery, agency_id)) {
        return store_logged(store, batch).await;
    }
    let (ours, foreign): (Vec<&Delivery>, Vec<&Delivery>) = batch
        .iter()
        .partition(|delivery| concerns(delivery, agency_id));
    for delivery in foreign {
        log_foreign(delivery);
    }
    let ours: Vec<Delivery> = ours.into_iter().cloned().collect();
    store_logged(store, &ours).await
}

/// Stores `deliveries` in one transaction and logs each (ids only).
async fn store_logged(store: &Store, deliveries: &[Delivery]) -> Result<(), AdapterError> {
    let stored = store.store_deliveries(deliveries).await?;
    for (delivery, stored) in deliveries.iter().zip(&stored) {
        log_stored(delivery, stored);
    }
    Ok(())
}

/// Whether `delivery` is this agency's to store.
///
/// The broker sends a referral to its current recipient when it is submitted or redirected, as it
/// stood when queued, so a referral with its case file must name `agency_id` as its recipient (or
/// sender). A referral that names neither may still be this agency's, always without the case file:
/// a former recipient's view after a redirect away from it, or the view of a notified party, of
/// the delegate of its follow-up or of a broadcast's candidate (`Referral.audience` says which; an
/// open broadcast names no recipient at all). So a referral naming neither
/// party is accepted only with an empty case file, and a referral naming neither party with a case
/// file is refused (no sound broker sends one). The store then inserts it only as a notified
/// party's, a delegate's or a candidate's view; a former recipient's view only updates a referral already held.
/// (A delegate's follow-up part of the case file travels inside the delegation event, which only
/// the delegate receives whole.) A feedback event goes to every party of its
/// referral and may arrive before the referral itself (the store keeps it until the referral comes,
/// and shows it only with that referral), and a former recipient receives events on a referral
/// whose envelope no longer names it: an event carries nothing the adapter could check it against,
/// and is accepted. A delivery without payload stores nothing.
pub fn concerns(delivery: &Delivery, agency_id: &str) -> bool {
    match &delivery.payload {
        Some(Payload::Referral(referral)) => referral.envelope.as_ref().is_some_and(|envelope| {
            envelope.recipient_agency_id == agency_id
                || envelope.sender_agency_id == agency_id
                || referral.case_file.is_empty()
        }),
        Some(Payload::Feedback(_)) | None => true,
    }
}

/// A delivery refused by [`concerns`]: ids only, never content.
fn log_foreign(delivery: &Delivery) {
    let delivery_id = delivery.delivery_id.as_str();
    let referral_id = match &delivery.payload {
        Some(Payload::Referral(referral)) => referral
            .envelope
            .as_ref()
            .map_or("", |envelope| envelope.referral_id.as_str()),
        _ => "",
    };
    tracing::warn!(
        %delivery_id,
        %referral_id,
        "delivery does not concern this agency; confirmed but not stored"
    );
}

/// Fault injection for the end-to-end tests: with `SPEAN_ADAPTER_FAULT=kill-after-store` the daemon
/// SIGKILLs itself right after storing a delivery and before confirming it, the one moment a crash
/// test cannot hit from outside. Compiled only with the `fault-injection` feature, which the
/// end-to-end test crate turns on, so a build for agencies cannot be made to kill itself by its
/// environment.
#[cfg(feature = "fault-injection")]
mod fault {
    /// Read once per subscription.
    pub fn kill_after_store() -> bool {
        std::env::var("SPEAN_ADAPTER_FAULT").is_ok_and(|v| v == "kill-after-store")
    }

    pub fn kill_self() {
        tracing::warn!(
            "SPEAN_ADAPTER_FAULT=kill-after-store: killing this process before confirming"
        );
        // Ignored on purpose: if the signal cannot be raised, the delivery is simply confirmed.
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Without the `fault-injection` feature the switch does not exist: the variable is never read.
#[cfg(not(feature = "fault-injection"))]
mod fault {
    pub fn kill_after_store() -> bool {
        false
    }

    pub fn kill_self() {}
}

async fn send(
    requests: &mpsc::Sender<SubscribeRequest>,
    request: Request,
) -> Result<(), AdapterError> {
    requests
        .send(SubscribeRequest {
            request: Some(request),
        })
        .await
        .map_err(|_| AdapterError::Unavailable("the delivery stream is closed".into()))
}

/// One info line per new referral or event, ids only; repeats at debug level.
fn log_stored(delivery: &Delivery, stored: &Stored) {
    let delivery_id = delivery.delivery_id.as_str();
    match stored {
        Stored::Referral {
            referral_id,
            new: true,
        } => {
            let sender = match &delivery.payload {
                Some(Payload::Referral(r)) => {
                    if CaseFile::decode(&r.case_file).is_err() {
                        tracing::warn!(%delivery_id, %referral_id, "case file does not decode; stored as received");
                    }
                    r.envelope
                        .as_ref()
                        .map_or(String::new(), |e| e.sender_agency_id.clone())
                }
                _ => String::new(),
            };
            tracing::info!(%delivery_id, %referral_id, %sender, "referral received");
        }
        Stored::Event {
            event_id,
            referral_id,
            kind,
            state_after,
            new: true,
        } => {
            tracing::info!(%delivery_id, %event_id, %referral_id, %kind, %state_after, "event received");
        }
        Stored::Referral { referral_id, .. } => {
            tracing::debug!(%delivery_id, %referral_id, "duplicate referral delivery");
        }
        Stored::Event {
            event_id,
            referral_id,
            ..
        } => {
            tracing::debug!(%delivery_id, %event_id, %referral_id, "duplicate event delivery");
        }
        Stored::NotHeld { referral_id } => {
            tracing::info!(%delivery_id, %referral_id, "former recipient's view of a referral not held here; not stored");
        }
        Stored::RepeatedDelivery => tracing::debug!(%delivery_id, "duplicate delivery"),
        Stored::Empty => tracing::warn!(%delivery_id, "delivery without payload"),
    }
}
