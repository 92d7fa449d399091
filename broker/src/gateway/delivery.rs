//! `spean.v1.DeliveryService.Subscribe`: the broker pushes deliveries down the stream and removes each
//! one only when the adapter confirms it on the same stream.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use spean_proto::v1 as pb;
use spean_proto::v1::delivery_service_server::DeliveryService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{Shared, caller, convert};
use crate::delivery::Doorbell;
use crate::delivery::mailbox::MailboxSession;
use crate::error::ErrorChain;
use crate::ids::AgencyId;
use crate::referral::workflow::DeliveryContent;
use std::sync::Arc;

const DEFAULT_WINDOW: u32 = 64;
const MAX_WINDOW: u32 = 1000;

pub struct DeliveryGateway {
    shared: Shared,
    doorbell: Arc<Doorbell>,
}

impl DeliveryGateway {
    pub fn new(shared: Shared, doorbell: Arc<Doorbell>) -> Self {
        Self { shared, doorbell }
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
                n if n <= MAX_WINDOW => n,
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
        let session = MailboxSession::open(
            self.shared.workflow.store().clone(),
            &self.doorbell,
            agency.clone(),
            window as usize,
            Duration::from_millis(self.shared.config.delivery.poll_interval_ms),
        );
        let (tx, rx) = mpsc::channel(window as usize);
        let span = tracing::info_span!("subscription", agency = %agency);
        tokio::spawn(pump(self.shared.clone(), agency, session, inbound, tx).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Sends what the mailbox holds and applies confirmations, until either side goes away.
async fn pump(
    shared: Shared,
    agency: AgencyId,
    mut session: MailboxSession,
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
                    if let Err(e) = shared.workflow.confirm(&agency, id).await {
                        let _ = tx.send(Err(e.into())).await;
                        break;
                    }
                    session.confirmed(id);
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
                Ok(entries) => {
                    for entry in entries {
                        let content = match shared.workflow.load_delivery(&entry).await {
                            Ok(c) => c,
                            Err(e) => {
                                let _ = tx.send(Err(e.into())).await;
                                return;
                            }
                        };
                        let payload = match content {
                            Some(DeliveryContent::Referral(referral, history)) => {
                                pb::delivery::Payload::Referral(convert::referral(*referral, &history))
                            }
                            Some(DeliveryContent::Event(event)) => {
                                pb::delivery::Payload::Feedback(convert::event(&event))
                            }
                            None => continue,
                        };
                        let delivery = pb::Delivery {
                            delivery_id: entry.delivery_id.to_string(),
                            payload: Some(payload),
                        };
                        if tx.send(Ok(delivery)).await.is_err() {
                            tracing::info!("adapter disconnected");
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %ErrorChain(&e), "mailbox read failed");
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
