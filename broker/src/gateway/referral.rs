//! `spean.v1.ReferralService`.

use spean_proto::v1 as pb;
use spean_proto::v1::referral_service_server::ReferralService;
use tonic::{Request, Response, Status};

use super::{GatewayResult, Shared, caller, respond};
use crate::error::BrokerError;
use crate::ids::ReferralId;
use crate::wire::{self, FeedbackRequest};

pub struct ReferralGateway {
    shared: Shared,
}

impl ReferralGateway {
    pub fn new(shared: Shared) -> Self {
        Self { shared }
    }

    /// Any feedback RPC: parse the action its request asks for and record it.
    async fn feedback<R: FeedbackRequest + Clone>(
        &self,
        request: Request<R>,
    ) -> GatewayResult<pb::FeedbackResponse> {
        let agency = caller(&self.shared, &request).await?;
        let action = parsed(request.into_inner().into_action())?;
        respond(
            self.shared
                .workflow
                .act(&agency, action)
                .await
                .map(|(event, state)| pb::FeedbackResponse {
                    event: Some(wire::event(&event)),
                    state: wire::state(state) as i32,
                }),
        )
    }
}

fn parsed<T>(r: Result<T, crate::error::FieldError>) -> Result<T, Status> {
    r.map_err(|e| BrokerError::from(e).into())
}

#[tonic::async_trait]
impl ReferralService for ReferralGateway {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> GatewayResult<pb::SubmitResponse> {
        let sender = caller(&self.shared, &request).await?;
        let new = parsed(wire::new_referral(request.into_inner()))?;
        respond(self.shared.workflow.submit(&sender, new).await.map(
            |(referral, history, created)| pb::SubmitResponse {
                referral: Some(wire::referral(referral, &history)),
                created,
            },
        ))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> GatewayResult<pb::Referral> {
        let agency = caller(&self.shared, &request).await?;
        let id = parsed(ReferralId::parse(
            "referral_id",
            &request.get_ref().referral_id,
        ))?;
        respond(
            self.shared
                .workflow
                .get(&agency, id)
                .await
                .map(|(referral, history)| wire::referral(referral, &history)),
        )
    }

    async fn list(&self, request: Request<pb::ListRequest>) -> GatewayResult<pb::ListResponse> {
        let agency = caller(&self.shared, &request).await?;
        let req = request.into_inner();
        let (limit, query) = parsed(wire::list_query(&req))?;
        let mut found = self
            .shared
            .workflow
            .list(&agency, &query)
            .await
            .map_err(Status::from)?;
        let next_page_token = if found.len() > limit as usize {
            found.truncate(limit as usize);
            found.last().map(|r| r.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListResponse {
            referrals: found
                .iter()
                .map(|r| pb::ReferralSummary {
                    envelope: Some(wire::envelope(r)),
                    state: wire::state(r.state) as i32,
                })
                .collect(),
            next_page_token,
        }))
    }

    // Every feedback RPC is the same: its request names the action ([`FeedbackRequest`]).
    async fn acknowledge(
        &self,
        request: Request<pb::AcknowledgeRequest>,
    ) -> GatewayResult<pb::FeedbackResponse> {
        self.feedback(request).await
    }

    async fn accept(
        &self,
        request: Request<pb::AcceptRequest>,
    ) -> GatewayResult<pb::FeedbackResponse> {
        self.feedback(request).await
    }

    async fn decline(
        &self,
        request: Request<pb::DeclineRequest>,
    ) -> GatewayResult<pb::FeedbackResponse> {
        self.feedback(request).await
    }

    async fn redirect(
        &self,
        request: Request<pb::RedirectRequest>,
    ) -> GatewayResult<pb::FeedbackResponse> {
        self.feedback(request).await
    }

    async fn mark_in_progress(
        &self,
        request: Request<pb::MarkInProgressRequest>,
    ) -> GatewayResult<pb::FeedbackResponse> {
        self.feedback(request).await
    }

    async fn record_follow_up(
        &self,
        request: Request<pb::RecordFollowUpRequest>,
    ) -> GatewayResult<pb::FeedbackResponse> {
        self.feedback(request).await
    }

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> GatewayResult<pb::FeedbackResponse> {
        self.feedback(request).await
    }

    async fn fail(&self, request: Request<pb::FailRequest>) -> GatewayResult<pb::FeedbackResponse> {
        self.feedback(request).await
    }

    async fn withdraw(
        &self,
        request: Request<pb::WithdrawRequest>,
    ) -> GatewayResult<pb::FeedbackResponse> {
        self.feedback(request).await
    }

    async fn mark_entered_in_error(
        &self,
        request: Request<pb::MarkEnteredInErrorRequest>,
    ) -> GatewayResult<pb::FeedbackResponse> {
        self.feedback(request).await
    }

    async fn delegate_follow_up(
        &self,
        request: Request<pb::DelegateFollowUpRequest>,
    ) -> GatewayResult<pb::FeedbackResponse> {
        self.feedback(request).await
    }

    async fn revoke_delegation(
        &self,
        request: Request<pb::RevokeDelegationRequest>,
    ) -> GatewayResult<pb::FeedbackResponse> {
        self.feedback(request).await
    }

    async fn withdraw_consent(
        &self,
        request: Request<pb::WithdrawConsentRequest>,
    ) -> GatewayResult<pb::FeedbackResponse> {
        self.feedback(request).await
    }

    async fn figures(
        &self,
        request: Request<pb::FiguresRequest>,
    ) -> GatewayResult<pb::FiguresResponse> {
        let agency = caller(&self.shared, &request).await?;
        let period = parsed(wire::period(request.into_inner()))?;
        respond(
            self.shared
                .workflow
                .own_figures(&agency, period.from, period.to, period.province.as_ref())
                .await
                .map(|report| wire::figures_response(&report)),
        )
    }
}
