//! Outgoing requests. Every `send` and every feedback action is first written to the local outbox
//! (with its idempotency key chosen up front), then sent: by the command right away if the broker is
//! reachable, otherwise by the daemon later. Both send the same bytes with the same key, so the broker
//! records the request once whoever gets there first.

use prost::Message;
use spean_proto::v1::{
    AcceptRequest, AcknowledgeRequest, Action, CompleteRequest, DeclineRequest, FailRequest,
    FeedbackEvent, FeedbackResponse, MarkEnteredInErrorRequest, MarkInProgressRequest,
    RecordFollowUpRequest, RedirectRequest, Referral, SubmitRequest, WithdrawRequest,
};

use crate::{
    AdapterError,
    broker::{Broker, REQUEST_TIMEOUT},
    store::{OutboxRow, Store},
};

/// One request to the broker, as stored in the outbox.
#[derive(Clone)]
pub enum OutgoingRequest {
    Submit(SubmitRequest),
    Acknowledge(AcknowledgeRequest),
    Accept(AcceptRequest),
    Decline(DeclineRequest),
    Redirect(RedirectRequest),
    MarkInProgress(MarkInProgressRequest),
    RecordFollowUp(RecordFollowUpRequest),
    Complete(CompleteRequest),
    Fail(FailRequest),
    Withdraw(WithdrawRequest),
    MarkEnteredInError(MarkEnteredInErrorRequest),
}

/// What the broker answered to a request that went through.
pub enum Outcome {
    Submitted(Referral),
    Recorded(FeedbackEvent),
}

impl OutgoingRequest {
    /// The operation name stored in the outbox's `operation` column (the RPC, in snake case).
    pub fn operation(&self) -> &'static str {
        match self {
            Self::Submit(_) => "submit",
            Self::Acknowledge(_) => "acknowledge",
            Self::Accept(_) => "accept",
            Self::Decline(_) => "decline",
            Self::Redirect(_) => "redirect",
            Self::MarkInProgress(_) => "mark_in_progress",
            Self::RecordFollowUp(_) => "record_follow_up",
            Self::Complete(_) => "complete",
            Self::Fail(_) => "fail",
            Self::Withdraw(_) => "withdraw",
            Self::MarkEnteredInError(_) => "mark_entered_in_error",
        }
    }

    fn action(&self) -> Option<&Action> {
        match self {
            Self::Submit(_) => None,
            Self::Acknowledge(r) => r.action.as_ref(),
            Self::Accept(r) => r.action.as_ref(),
            Self::Decline(r) => r.action.as_ref(),
            Self::Redirect(r) => r.action.as_ref(),
            Self::MarkInProgress(r) => r.action.as_ref(),
            Self::RecordFollowUp(r) => r.action.as_ref(),
            Self::Complete(r) => r.action.as_ref(),
            Self::Fail(r) => r.action.as_ref(),
            Self::Withdraw(r) => r.action.as_ref(),
            Self::MarkEnteredInError(r) => r.action.as_ref(),
        }
    }

    /// The idempotency key: `client_ref` for a submit, `request_id` for an action.
    pub fn request_id(&self) -> &str {
        match self {
            Self::Submit(r) => &r.client_ref,
            _ => self.action().map_or("", |a| a.request_id.as_str()),
        }
    }

    /// The referral an action is about; unknown for a submit until the broker answers.
    pub fn referral_id(&self) -> Option<&str> {
        self.action().map(|a| a.referral_id.as_str())
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Submit(r) => r.encode_to_vec(),
            Self::Acknowledge(r) => r.encode_to_vec(),
            Self::Accept(r) => r.encode_to_vec(),
            Self::Decline(r) => r.encode_to_vec(),
            Self::Redirect(r) => r.encode_to_vec(),
            Self::MarkInProgress(r) => r.encode_to_vec(),
            Self::RecordFollowUp(r) => r.encode_to_vec(),
            Self::Complete(r) => r.encode_to_vec(),
            Self::Fail(r) => r.encode_to_vec(),
            Self::Withdraw(r) => r.encode_to_vec(),
            Self::MarkEnteredInError(r) => r.encode_to_vec(),
        }
    }

    /// Reads a request back from its outbox row.
    pub fn decode(operation: &str, payload: &[u8]) -> Result<Self, AdapterError> {
        let decoded = match operation {
            "submit" => SubmitRequest::decode(payload).map(Self::Submit),
            "acknowledge" => AcknowledgeRequest::decode(payload).map(Self::Acknowledge),
            "accept" => AcceptRequest::decode(payload).map(Self::Accept),
            "decline" => DeclineRequest::decode(payload).map(Self::Decline),
            "redirect" => RedirectRequest::decode(payload).map(Self::Redirect),
            "mark_in_progress" => MarkInProgressRequest::decode(payload).map(Self::MarkInProgress),
            "record_follow_up" => RecordFollowUpRequest::decode(payload).map(Self::RecordFollowUp),
            "complete" => CompleteRequest::decode(payload).map(Self::Complete),
            "fail" => FailRequest::decode(payload).map(Self::Fail),
            "withdraw" => WithdrawRequest::decode(payload).map(Self::Withdraw),
            "mark_entered_in_error" => {
                MarkEnteredInErrorRequest::decode(payload).map(Self::MarkEnteredInError)
            }
            other => {
                return Err(AdapterError::Invalid {
                    field: "outbox.operation",
                    reason: format!("unknown operation {other:?}"),
                });
            }
        };
        decoded.map_err(|source| AdapterError::Decode {
            what: "outbox request",
            source,
        })
    }

    /// Writes the request to the outbox, before any attempt to send it.
    pub async fn enqueue(&self, store: &Store) -> Result<(), AdapterError> {
        store
            .enqueue(
                self.request_id(),
                self.operation(),
                self.referral_id(),
                &self.encode(),
            )
            .await
    }

    /// Makes the call. Bounded by [`REQUEST_TIMEOUT`], which counts as unavailability.
    async fn call(self, broker: &mut Broker) -> Result<Outcome, AdapterError> {
        let client = &mut broker.referrals;
        let call = async move {
            let feedback = |r: tonic::Response<FeedbackResponse>| {
                r.into_inner()
                    .event
                    .map(Outcome::Recorded)
                    .ok_or_else(|| missing("FeedbackResponse.event"))
            };
            match self {
                Self::Submit(r) => client.submit(r).await?.into_inner().referral.map_or_else(
                    || Err(missing("SubmitResponse.referral")),
                    |r| Ok(Outcome::Submitted(r)),
                ),
                Self::Acknowledge(r) => feedback(client.acknowledge(r).await?),
                Self::Accept(r) => feedback(client.accept(r).await?),
                Self::Decline(r) => feedback(client.decline(r).await?),
                Self::Redirect(r) => feedback(client.redirect(r).await?),
                Self::MarkInProgress(r) => feedback(client.mark_in_progress(r).await?),
                Self::RecordFollowUp(r) => feedback(client.record_follow_up(r).await?),
                Self::Complete(r) => feedback(client.complete(r).await?),
                Self::Fail(r) => feedback(client.fail(r).await?),
                Self::Withdraw(r) => feedback(client.withdraw(r).await?),
                Self::MarkEnteredInError(r) => feedback(client.mark_entered_in_error(r).await?),
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, call)
            .await
            .map_err(|_| AdapterError::Unavailable("no answer in time".into()))?
    }
}

fn missing(what: &str) -> AdapterError {
    AdapterError::Broker {
        code: "MALFORMED_RESPONSE",
        message: format!("{what} is missing"),
    }
}

/// Sends one outbox request and records the verdict: on success the result is stored and the row
/// marked `sent` in one transaction; on a refusal the row becomes `rejected` with the broker's
/// message; otherwise the row stays `pending` and the error is returned for the caller to back off.
#[tracing::instrument(skip_all, fields(request_id = %request.request_id(), operation = request.operation()))]
pub async fn send(
    store: &Store,
    broker: &mut Broker,
    request: OutgoingRequest,
) -> Result<Outcome, AdapterError> {
    let request_id = request.request_id().to_owned();
    match request.call(broker).await {
        Ok(outcome) => {
            match &outcome {
                Outcome::Submitted(referral) => {
                    store.record_submitted(&request_id, referral).await?;
                }
                Outcome::Recorded(event) => store.record_event(&request_id, event).await?,
            }
            Ok(outcome)
        }
        Err(error) if error.is_refusal() => {
            tracing::debug!(%error, "broker refused the request");
            store.mark_rejected(&request_id, &error.to_string()).await?;
            Err(error)
        }
        Err(error) => {
            store
                .note_failed_attempt(&request_id, &error.to_string())
                .await?;
            Err(error)
        }
    }
}

/// Sends a stored outbox row (the daemon's path).
pub async fn send_row(
    store: &Store,
    broker: &mut Broker,
    row: &OutboxRow,
) -> Result<Outcome, AdapterError> {
    let request = OutgoingRequest::decode(&row.operation, &row.payload)?;
    send(store, broker, request).await
}
