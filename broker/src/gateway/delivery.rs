//! `spean.v1.DeliveryService.Subscribe`: the broker pushes deliveries down the stream and removes each
//! one only when the adapter confirms it on the same stream.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use spean_proto::v1 as pb;
use spean_proto::v1::delivery_service_server::DeliveryService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{Shared, caller, convert};
use crate::delivery::{Backend, Pending, Session};
use crate::error::ErrorChain;
use crate::ids::AgencyId;
use crate::referral::workflow::DeliveryContent;

const DEFAULT_WINDOW: u16 = 64;
const MAX_WINDOW: u32 = 1000;

pub struct DeliveryGateway {
    shared: Shared,
    backend: Backend,
}

impl DeliveryGateway {
    pub fn new(shared: Shared, backend: Backend) -> Self {
        Self { shared, backend }
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
        let agency = caller(&self.shared, &request).await?;
        let mut inbound = request.into_inner();
        let window = match inbound.message().await? {
            Some(pb::SubscribeRequest {
                request: Some(pb::subscribe_request::Request::Hello(hello)),
            }) => match hello.window {
                0 => DEFAULT_WINDOW,
                n if n <= MAX_WINDOW => n as u16,
                n => {
                    return Err(Status::invalid_argument(format!(
                        "hello.window: {n} is over the limit of {MAX_WINDOW}"
                    )));
                }
            },
            _ => {
                return Err(Status::invalid_argument(
                    "hello: the first message on the stream must be a hello",
                ));
            }
        };
        let session = self
            .backend
            .open(agency.clone(), window)
            .await
            .map_err(|e| {
                tracing::warn!(error = %ErrorChain(&e), "cannot open a delivery session");
                Status::unavailable("delivery is unavailable right now; reconnect")
            })?;
        let (tx, rx) = mpsc::channel(usize::from(window));
        let span = tracing::info_span!("subscription", agency = %agency);
        tokio::spawn(pump(self.shared.clone(), agency, session, inbound, tx).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Sends deliveries and applies confirmations, until either side goes away or the broker stops.
async fn pump(
    shared: Shared,
    agency: AgencyId,
    mut session: Session,
    mut inbound: Streaming<pb::SubscribeRequest>,
    tx: mpsc::Sender<Result<pb::Delivery, Status>>,
) {
    tracing::info!("adapter connected");
    loop {
        tokio::select! {
            message = inbound.next() => match message {
                Some(Ok(pb::SubscribeRequest { request: Some(pb::subscribe_request::Request::Confirm(c)) })) => {
                    let Ok(id) = uuid::Uuid::parse_str(&c.delivery_id) else {
                        let _ = tx.send(Err(Status::invalid_argument("confirm.delivery_id: not a delivery id"))).await;
                        break;
                    };
                    let Some(reference) = session.in_flight(id) else {
                        tracing::debug!(delivery_id = %id, "confirmation for nothing in flight; ignored");
                        continue;
                    };
                    if let Err(e) = shared.workflow.confirmed(&agency, &reference).await {
                        let _ = tx.send(Err(e.into())).await;
                        break;
                    }
                    if let Err(e) = session.settle(id).await {
                        tracing::warn!(error = %ErrorChain(&e), "cannot settle a confirmed delivery; it will be delivered again");
                        let _ = tx.send(Err(Status::unavailable("delivery interrupted; reconnect"))).await;
                        break;
                    }
                }
                Some(Ok(_)) => {
                    let _ = tx.send(Err(Status::invalid_argument("request: only confirm may follow the hello"))).await;
                    break;
                }
                Some(Err(status)) => {
                    tracing::info!(code = ?status.code(), "adapter stream ended with an error");
                    break;
                }
                None => break,
            },
            batch = session.next_batch() => match batch {
                Ok(batch) => {
                    for pending in batch {
                        let delivery = match pending.message {
                            Some(message) => message,
                            None => match load(&shared, &agency, &pending).await {
                                Ok(Some(d)) => d,
                                Ok(None) => continue,
                                Err(status) => {
                                    let _ = tx.send(Err(status)).await;
                                    return;
                                }
                            },
                        };
                        if tx.send(Ok(delivery)).await.is_err() {
                            tracing::info!("adapter disconnected");
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %ErrorChain(&e), "delivery source failed");
                    let _ = tx.send(Err(Status::unavailable("delivery interrupted; reconnect"))).await;
                    return;
                }
            },
            _ = tx.closed() => break,
            _ = shared.stop.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("the broker is shutting down; reconnect"))).await;
                break;
            }
        }
    }
    tracing::info!("adapter disconnected");
}

/// Builds a mailbox delivery from the referral or event as it is now.
async fn load(
    shared: &Shared,
    agency: &AgencyId,
    pending: &Pending,
) -> Result<Option<pb::Delivery>, Status> {
    let reference = &pending.reference;
    let content = shared
        .workflow
        .load_delivery(agency, reference.referral_id, reference.event_id)
        .await?;
    let payload = match content {
        Some(DeliveryContent::Referral(referral, history)) => {
            pb::delivery::Payload::Referral(convert::referral(*referral, &history))
        }
        Some(DeliveryContent::Event(event)) => {
            pb::delivery::Payload::Feedback(convert::event(&event))
        }
        None => return Ok(None),
    };
    Ok(Some(pb::Delivery {
        delivery_id: pending.reference.delivery_id.to_string(),
        payload: Some(payload),
    }))
}
