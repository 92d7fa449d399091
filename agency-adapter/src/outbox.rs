//! Outgoing requests. Every `send` and every feedback action is first written to the local outbox
//! (with its idempotency key chosen up front), then sent: by the command right away if the broker is
//! reachable, otherwise by the daemon later. Both send the same bytes with the same key, so the broker
//! records the request once whoever gets there first.

use prost::Message;
use spean_proto::v1::{
    AcceptRequest, AcknowledgeRequest, Action, CompleteRequest, DeclineRequest,
    DelegateFollowUpRequest, FailRequest, FeedbackEvent, FeedbackResponse,
    MarkEnteredInErrorRequest, MarkInProgressRequest, RecordFollowUpRequest, RedirectRequest,
    Referral, RevokeDelegationRequest, SubmitRequest, WithdrawConsentRequest, WithdrawRequest,
    referral_service_client::ReferralServiceClient,
};
use tonic::transport::Channel;

use crate::{
    AdapterError,
    broker::{Broker, REQUEST_TIMEOUT},
    store::{OutboxRow, Store},
};

/// What the broker answered to a request that went through.
pub enum Outcome {
    Submitted(Referral),
    Recorded(FeedbackEvent),
}

/// Builds [`OutgoingRequest`] from the table of feedback actions below it: every `match` on an
/// action is written here once, for all rows.
macro_rules! outgoing_requests {
    ($($variant:ident($request:ident) => $rpc:ident;)*) => {
        /// One request to the broker, as stored in the outbox.
        #[derive(Clone)]
        pub enum OutgoingRequest {
            Submit(SubmitRequest),
            $($variant($request),)*
        }

        impl OutgoingRequest {
            /// Every operation name an outbox row can hold.
            pub const OPERATIONS: &[&str] = &["submit", $(stringify!($rpc),)*];

            /// The operation name stored in the outbox's `operation` column: the RPC, in snake case.
            pub fn operation(&self) -> &'static str {
                match self {
                    Self::Submit(_) => "submit",
                    $(Self::$variant(_) => stringify!($rpc),)*
                }
            }

            fn action(&self) -> Option<&Action> {
                match self {
                    Self::Submit(_) => None,
                    $(Self::$variant(r) => r.action.as_ref(),)*
                }
            }

            fn action_mut(&mut self) -> Option<&mut Action> {
                match self {
                    Self::Submit(_) => None,
                    $(Self::$variant(r) => r.action.as_mut(),)*
                }
            }

            /// Fills the fields every action shares; a submit has none, and is left as it is.
            pub fn set_action(&mut self, action: Action) {
                match self {
                    Self::Submit(_) => {}
                    $(Self::$variant(r) => r.action = Some(action),)*
                }
            }

            pub fn encode(&self) -> Vec<u8> {
                match self {
                    Self::Submit(r) => r.encode_to_vec(),
                    $(Self::$variant(r) => r.encode_to_vec(),)*
                }
            }

            /// Reads a request back from its outbox row.
            pub fn decode(operation: &str, payload: &[u8]) -> Result<Self, AdapterError> {
                let decoded = match operation {
                    "submit" => SubmitRequest::decode(payload).map(Self::Submit),
                    $(stringify!($rpc) => $request::decode(payload).map(Self::$variant),)*
                    other => {
                        return Err(AdapterError::Invalid {
                            field: "outbox.operation".into(),
                            reason: format!("unknown operation {other:?}"),
                        });
                    }
                };
                decoded.map_err(|source| AdapterError::Decode {
                    what: "outbox request",
                    source,
                })
            }

            /// Makes the call, with no time limit of its own: [`OutgoingRequest::call`] sets it.
            async fn call_unbounded(
                self,
                client: &mut ReferralServiceClient<Channel>,
            ) -> Result<Outcome, AdapterError> {
                match self {
                    Self::Submit(r) => client.submit(r).await?.into_inner().referral.map_or_else(
                        || Err(missing("SubmitResponse.referral")),
                        |r| Ok(Outcome::Submitted(r)),
                    ),
                    $(Self::$variant(r) => recorded(client.$rpc(r).await?),)*
                }
            }
        }
    };
}

// The feedback actions, one row each: the variant, its request message, and the `ReferralService`
// client method that sends it. The method's name is also the operation stored in the outbox, so a
// stored row and the call it makes cannot disagree. Stored names never change: rows written by an
// older adapter must still read back.
outgoing_requests! {
    Acknowledge(AcknowledgeRequest) => acknowledge;
    Accept(AcceptRequest) => accept;
    Decline(DeclineRequest) => decline;
    Redirect(RedirectRequest) => redirect;
    MarkInProgress(MarkInProgressRequest) => mark_in_progress;
    RecordFollowUp(RecordFollowUpRequest) => record_follow_up;
    Complete(CompleteRequest) => complete;
    Fail(FailRequest) => fail;
    Withdraw(WithdrawRequest) => withdraw;
    MarkEnteredInError(MarkEnteredInErrorRequest) => mark_entered_in_error;
    DelegateFollowUp(DelegateFollowUpRequest) => delegate_follow_up;
    RevokeDelegation(RevokeDelegationRequest) => revoke_delegation;
    WithdrawConsent(WithdrawConsentRequest) => withdraw_consent;
}

impl OutgoingRequest {
    /// The idempotency key: `client_ref` for a submit, `request_id` for an action.
    pub fn request_id(&self) -> &str {
        match self {
            Self::Submit(r) => &r.client_ref,
            _ => self.action().map_or("", |a| a.request_id.as_str()),
        }
    }

    /// The fields every action shares; `None` for a submit.
    pub fn shared(&self) -> Option<&Action> {
        self.action()
    }

    pub fn shared_mut(&mut self) -> Option<&mut Action> {
        self.action_mut()
    }

    /// The free text of the action's details, for the kinds that have one: an acceptance's
    /// planned action, a decline's, redirect's, failure's or delegation's reason, an outcome's
    /// summary.
    pub fn detail_text(&self) -> Option<&str> {
        match self {
            Self::Accept(r) => r.acceptance.as_ref().map(|a| a.planned_action.as_str()),
            Self::Decline(r) => r.decline.as_ref().map(|d| d.reason_text.as_str()),
            Self::Redirect(r) => r.redirect.as_ref().map(|d| d.reason.as_str()),
            Self::Complete(r) => r.outcome.as_ref().map(|o| o.summary.as_str()),
            Self::Fail(r) => r.failure.as_ref().map(|f| f.reason.as_str()),
            Self::DelegateFollowUp(r) => r.delegation.as_ref().map(|d| d.reason.as_str()),
            _ => None,
        }
    }

    /// Takes everything a person wrote out of the request (the person, the note and the details'
    /// text), leaving those fields empty, as the broker takes them: sealed, never in clear.
    pub fn take_free_text(&mut self) -> spean_proto::v1::FreeText {
        let take = std::mem::take::<String>;
        let detail = match self {
            Self::Accept(r) => r.acceptance.as_mut().map(|a| take(&mut a.planned_action)),
            Self::Decline(r) => r.decline.as_mut().map(|d| take(&mut d.reason_text)),
            Self::Redirect(r) => r.redirect.as_mut().map(|d| take(&mut d.reason)),
            Self::Complete(r) => r.outcome.as_mut().map(|o| take(&mut o.summary)),
            Self::Fail(r) => r.failure.as_mut().map(|f| take(&mut f.reason)),
            Self::DelegateFollowUp(r) => r.delegation.as_mut().map(|d| take(&mut d.reason)),
            _ => None,
        };
        let (actor_person, note) = self
            .action_mut()
            .map(|a| (take(&mut a.actor_person), take(&mut a.note)))
            .unwrap_or_default();
        spean_proto::v1::FreeText {
            actor_person,
            note,
            detail: detail.unwrap_or_default(),
        }
    }

    /// The agency a delegation hands the follow-up visits to.
    pub fn delegate(&self) -> Option<&str> {
        match self {
            Self::DelegateFollowUp(r) => r.delegation.as_ref().map(|d| d.to_agency_id.as_str()),
            _ => None,
        }
    }

    /// The referral an action is about; unknown for a submit until the broker answers.
    pub fn referral_id(&self) -> Option<&str> {
        self.action().map(|a| a.referral_id.as_str())
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

    /// The name the user gives the idempotency key under, for messages.
    pub fn key_field(&self) -> &'static str {
        match self {
            Self::Submit(_) => "client_ref",
            _ => "request_id",
        }
    }

    /// Makes the call. Bounded by [`REQUEST_TIMEOUT`], which counts as unavailability.
    async fn call(self, broker: &mut Broker) -> Result<Outcome, AdapterError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.call_unbounded(&mut broker.referrals))
            .await
            .map_err(|_| AdapterError::Unavailable("no answer in time".into()))?
    }
}

/// The event the broker recorded for an action.
fn recorded(response: tonic::Response<FeedbackResponse>) -> Result<Outcome, AdapterError> {
    response
        .into_inner()
        .event
        .map(Outcome::Recorded)
        .ok_or_else(|| missing("FeedbackResponse.event"))
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
    let sealed = match sealed(store, broker, &request).await {
        Ok(sealed) => sealed,
        Err(error) => {
            if error.is_transient() {
                store
                    .note_failed_attempt(&request_id, &error.to_string())
                    .await?;
            }
            return Err(error);
        }
    };
    match sealed.call(broker).await {
        Ok(mut outcome) => {
            crate::sealing::restore_own(&request, &mut outcome);
            match &outcome {
                Outcome::Submitted(referral) => {
                    store.record_submitted(&request_id, referral).await?;
                }
                Outcome::Recorded(event) => store.record_event(&request_id, event).await?,
            }
            Ok(outcome)
        }
        Err(error) if error.to_string().contains(crate::sealing::UNSEALED_READER) => {
            // The directory routes the referral to an agency it was not sealed to: seal it again,
            // to the directory as it is now, on the next attempt.
            store.forget_sealed_request(&request_id).await?;
            store
                .note_failed_attempt(&request_id, &error.to_string())
                .await?;
            Err(error)
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

/// The request as the broker is to receive it: as sealed on its first attempt, or sealed now and
/// kept for the next ones.
async fn sealed(
    store: &Store,
    broker: &mut Broker,
    request: &OutgoingRequest,
) -> Result<OutgoingRequest, AdapterError> {
    let request_id = request.request_id();
    if let Some(payload) = store.sealed_request(request_id).await? {
        return OutgoingRequest::decode(request.operation(), &payload);
    }
    let sealed = crate::sealing::seal_request(store, broker, request).await?;
    let kept = store
        .keep_sealed_request(request_id, &sealed.encode())
        .await?;
    OutgoingRequest::decode(request.operation(), &kept)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_operation_names_stay_what_older_rows_hold() {
        assert_eq!(
            OutgoingRequest::OPERATIONS,
            [
                "submit",
                "acknowledge",
                "accept",
                "decline",
                "redirect",
                "mark_in_progress",
                "record_follow_up",
                "complete",
                "fail",
                "withdraw",
                "mark_entered_in_error",
                "delegate_follow_up",
                "revoke_delegation",
                "withdraw_consent",
            ]
        );
    }

    #[test]
    fn every_operation_reads_back_as_itself_with_its_action() {
        for &operation in OutgoingRequest::OPERATIONS {
            let mut request = OutgoingRequest::decode(operation, &[]).unwrap();
            assert_eq!(request.operation(), operation);
            request.set_action(Action {
                referral_id: "r-1".into(),
                request_id: "k-1".into(),
                actor_person: "សុភា".into(),
                note: String::new(),
                sealed_text: Vec::new(),
            });
            let again = OutgoingRequest::decode(operation, &request.encode()).unwrap();
            if operation == "submit" {
                assert_eq!(again.referral_id(), None);
                assert_eq!(again.key_field(), "client_ref");
            } else {
                assert_eq!(again.referral_id(), Some("r-1"), "{operation}");
                assert_eq!(again.request_id(), "k-1", "{operation}");
                assert_eq!(again.key_field(), "request_id");
                assert_eq!(again.action().unwrap().actor_person, "សុភា");
            }
        }
        assert!(OutgoingRequest::decode("reopen", &[]).is_err());
    }
}
