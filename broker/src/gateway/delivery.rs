//! `spean.v1.DeliveryService.Subscribe`: the broker pushes deliveries down the stream and removes each
//! one only when the adapter confirms it on the same stream.
//!
//! One task per stream ([`pump`]) sends deliveries while the adapter's window has room and reads
//! confirmations. The confirmations that arrive together (an adapter stores a burst of deliveries in
//! one transaction and confirms them at once) are applied and settled as a group, by a task of its
//! own: groups are applied concurrently, not one after another, and a group is one read and one
//! write of the store, so a stream's throughput is not one database commit per delivery.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use spean_proto::v1 as pb;
use spean_proto::v1::delivery_service_server::DeliveryService;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::revocations::StreamWatch;
use super::{Shared, caller_certificate};
use crate::delivery::{Backend, Pending, Session, Settle, contents};
use crate::error::{BrokerError, ErrorChain};
use crate::ids::{AgencyId, ReferralId};
use crate::referral::Audience;
use crate::store::{DeliveryRef, Store};
use crate::wire;
use crate::workflow::Workflow;

/// Longest wait between two attempts to apply a confirmation while the database is unavailable.
const MAX_RETRY: Duration = Duration::from_secs(5);

pub struct DeliveryGateway {
    shared: Shared,
    backend: Backend,
    streams: Arc<OpenStreams>,
}

impl DeliveryGateway {
    pub fn new(shared: Shared, backend: Backend) -> Self {
        Self {
            shared,
            backend,
            streams: Arc::default(),
        }
    }
}

/// How many delivery streams each agency has open on this broker (`limits.max_streams_per_agency`).
#[derive(Debug, Default)]
struct OpenStreams(std::sync::Mutex<HashMap<AgencyId, usize>>);

impl OpenStreams {
    /// Counts one more stream for `agency`, or refuses it over `max`.
    fn open(self: &Arc<Self>, agency: &AgencyId, max: usize) -> Result<StreamPlace, Status> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(agency.clone()).or_default();
        if *n >= max {
            return Err(Status::resource_exhausted(format!(
                "limits.max_streams_per_agency: {agency} already has {n} delivery streams open on \
                 this broker, the most it may; close one first"
            )));
        }
        *n += 1;
        Ok(StreamPlace {
            streams: self.clone(),
            agency: agency.clone(),
        })
    }
}

/// One counted stream; dropping it, when the stream ends however it ends, gives the place back.
struct StreamPlace {
    streams: Arc<OpenStreams>,
    agency: AgencyId,
}

impl Drop for StreamPlace {
    fn drop(&mut self) {
        let mut open = self.streams.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.agency) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.agency);
            }
        }
    }
}

type DeliveryStream = Pin<Box<dyn Stream<Item = Result<pb::Delivery, Status>> + Send>>;

#[tonic::async_trait]
impl DeliveryService for DeliveryGateway {
    type SubscribeStream = DeliveryStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let (agency, fingerprint) = caller_certificate(&self.shared, &request).await?;
        let place = self
            .streams
            .open(&agency, self.shared.config.limits.max_streams_per_agency)?;
        let mut inbound = request.into_inner();
        let window = wire::hello_window(inbound.message().await?).map_err(BrokerError::from)?;
        let session = self
            .backend
            .open(agency.clone(), window)
            .await
            .map_err(|e| {
                tracing::warn!(error = %ErrorChain(&e), "cannot open a delivery session");
                unavailable("delivery is unavailable right now; reconnect")
            })?;
        let (tx, rx) = mpsc::channel(usize::from(window));
        let span = tracing::info_span!("subscription", agency = %agency);
        let shared = self.shared.clone();
        let watch = self.shared.revocations.watch(fingerprint);
        tokio::spawn(
            async move {
                pump(
                    shared,
                    agency,
                    session,
                    usize::from(window),
                    inbound,
                    tx,
                    watch,
                )
                .await;
                drop(place);
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn unavailable(message: &str) -> Status {
    BrokerError::Unavailable(message.to_owned()).into()
}

/// Sends deliveries and applies confirmations, until either side goes away, the broker stops, or
/// the certificate that opened the stream is revoked (`watch`).
async fn pump(
    shared: Shared,
    agency: AgencyId,
    mut session: Session,
    window: usize,
    inbound: Streaming<pb::SubscribeRequest>,
    tx: mpsc::Sender<Result<pb::Delivery, Status>>,
    watch: StreamWatch,
) {
    tracing::info!("adapter connected");
    // Sent and not yet settled: bounded by the adapter's window.
    let mut outstanding = 0usize;
    // Confirmations being applied, a task per group: they hold database connections, so they must
    // make progress while this loop waits on something else (a batch load needs a connection too).
    // Each task returns how many deliveries it settled.
    let mut settling: JoinSet<Result<usize, Status>> = JoinSet::new();
    // What the adapter sent that is already here, up to a window's worth at a time: the
    // confirmations of deliveries it stored together arrive together and are applied as a group.
    let mut inbound = inbound.ready_chunks(window.max(1));
    let ended: Option<Status> = loop {
        let room = window.saturating_sub(outstanding);
        tokio::select! {
            messages = inbound.next() => {
                let Some(messages) = messages else { break None };
                let mut group = Vec::with_capacity(messages.len());
                let mut end = None;
                for message in messages {
                    match message {
                        Ok(request) => match wire::confirmation(request) {
                            Ok(id) => match session.take(id) {
                                Some(taken) => group.push(taken),
                                None => tracing::debug!(delivery_id = %id, "confirmation for nothing in flight; ignored"),
                            },
                            Err(e) => {
                                end = Some(Some(BrokerError::from(e).into()));
                                break;
                            }
                        },
                        Err(status) => {
                            tracing::info!(code = ?status.code(), "adapter stream ended with an error");
                            end = Some(None);
                            break;
                        }
                    }
                }
                // Confirmations before a bad message still count: the adapter stored those.
                if !group.is_empty() {
                    settling.spawn(confirm(
                        shared.workflow.clone(),
                        agency.clone(),
                        group,
                        shared.stop.clone(),
                    ).in_current_span());
                }
                if let Some(end) = end {
                    break end;
                }
            },
            Some(settled) = settling.join_next(), if !settling.is_empty() => match settled {
                Ok(Ok(settled)) => outstanding = outstanding.saturating_sub(settled),
                Ok(Err(status)) => break Some(status),
                Err(e) => {
                    tracing::error!(error = %e, "applying a confirmation failed");
                    break Some(unavailable("delivery interrupted; reconnect"));
                }
            },
            batch = session.next_batch(room), if room > 0 => match batch {
                Ok(batch) => {
                    let deliveries = match load(shared.workflow.store().as_ref(), &agency, batch).await {
                        Ok(d) => d,
                        Err(status) => break Some(status),
                    };
                    let mut gone = false;
                    for delivery in deliveries {
                        match delivery {
                            Loaded::Send(delivery) => {
                                outstanding += 1;
                                if tx.send(Ok(*delivery)).await.is_err() {
                                    gone = true;
                                    break;
                                }
                            }
                            // Its referral or event no longer exists: nothing to deliver, ever.
                            Loaded::Nothing(id) => {
                                if let Some((_, settle)) = session.take(id) {
                                    outstanding += 1;
                                    settling.spawn(async { settle_only(settle).await.map(|()| 1) }.in_current_span());
                                }
                            }
                        }
                    }
                    if gone {
                        break None;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %ErrorChain(&e), "delivery source failed");
                    break Some(unavailable("delivery interrupted; reconnect"));
                }
            },
            _ = tx.closed() => break None,
            _ = shared.stop.cancelled() => {
                break Some(unavailable("the broker is shutting down; reconnect"));
            }
            () = watch.revoked() => {
                tracing::info!("the stream's certificate was revoked; closing it");
                break Some(watch.refusal());
            }
        }
    };
    if let Some(status) = ended {
        let _ = tx.send(Err(status)).await;
    }
    // Confirmations already received are finished, not abandoned: the adapter stored those
    // deliveries, and settling them now spares it a redelivery.
    settling.detach_all();
    tracing::info!("adapter disconnected");
}

enum Loaded {
    Send(Box<pb::Delivery>),
    Nothing(uuid::Uuid),
}

/// The messages of a batch. Mailbox deliveries are loaded now, in one go, through [`contents`],
/// which applies who may see what as the referral stands now. A RabbitMQ message goes as it was
/// published, except a referral whose agency may no longer read its case file: a redirect since
/// (through any broker) made it a former recipient, so that delivery is made again through
/// [`contents`], without the case file. One light read of who each published referral is between
/// now ([`ReferralStore::parties_now`](crate::store::ReferralStore::parties_now)) decides it.
async fn load(
    store: &dyn Store,
    agency: &AgencyId,
    batch: Vec<Pending>,
) -> Result<Vec<Loaded>, Status> {
    let published: Vec<ReferralId> = batch
        .iter()
        .filter(|p| p.message.is_some() && p.reference.event_id.is_none())
        .map(|p| p.reference.referral_id)
        .collect();
    let withdrawn: HashSet<ReferralId> = if published.is_empty() {
        HashSet::new()
    } else {
        store
            .parties_now(&published)
            .await
            .map_err(BrokerError::from)?
            .into_iter()
            .filter(|p| !Audience::of(&p.sender, p.recipient.as_ref(), agency).reads_case_file())
            .map(|p| p.referral_id)
            .collect()
    };
    let made_now = |p: &Pending| {
        p.message.is_none()
            || (p.reference.event_id.is_none() && withdrawn.contains(&p.reference.referral_id))
    };
    let wanted: Vec<(AgencyId, DeliveryRef)> = batch
        .iter()
        .filter(|p| made_now(p))
        .map(|p| (agency.clone(), p.reference))
        .collect();
    let mut loaded = if wanted.is_empty() {
        Vec::new().into_iter()
    } else {
        contents(store, &wanted)
            .await
            .map_err(BrokerError::from)?
            .into_iter()
    };
    // Every delivery carries the broker's audit head, for the adapter to keep: read once a second
    // at most, not once per delivery.
    let head = store.recent_audit_head().await.map(wire::audit_head);
    Ok(batch
        .into_iter()
        .map(|pending| {
            let id = pending.reference.delivery_id;
            let message = if made_now(&pending) {
                loaded.next().flatten().map(|c| wire::delivery(id, c))
            } else {
                pending.message
            };
            match message {
                Some(mut message) => {
                    message.audit_head = head.clone();
                    Loaded::Send(Box::new(message))
                }
                None => Loaded::Nothing(id),
            }
        })
        .collect())
}

/// Applies a group of confirmations, then settles their deliveries; returns how many. While the
/// database is unavailable the group is retried in place, with backoff: tearing the stream down would
/// hand every unconfirmed delivery back to the queue, each return counting towards its delivery
/// limit. A retry decides again, so what an earlier attempt recorded is not recorded twice.
async fn confirm(
    workflow: Arc<Workflow>,
    agency: AgencyId,
    group: Vec<(DeliveryRef, Settle)>,
    stop: CancellationToken,
) -> Result<usize, Status> {
    let references: Vec<DeliveryRef> = group.iter().map(|(r, _)| *r).collect();
    let mut wait = Duration::from_millis(100);
    loop {
        match workflow.confirmed(&agency, &references).await {
            Ok(()) => break,
            Err(e) if e.is_transient() => {
                tracing::warn!(deliveries = references.len(), error = %ErrorChain(&e), "cannot apply confirmations yet; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return Err(unavailable("the broker is shutting down; reconnect")),
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(MAX_RETRY);
            }
            Err(e) => return Err(e.into()),
        }
    }
    let settled = group.len();
    futures::future::try_join_all(group.into_iter().map(|(_, settle)| settle_only(settle))).await?;
    Ok(settled)
}

async fn settle_only(settle: Settle) -> Result<(), Status> {
    settle.run().await.map_err(|e| {
        tracing::warn!(error = %ErrorChain(&e), "cannot settle a confirmed delivery; it will be delivered again");
        unavailable("delivery interrupted; reconnect")
    })
}
