//! `spean.v1.CoordinatorService`: the overdue list, timelines and figures, for coordinators and
//! provincial departments. Who may call it, and about which provinces, is the workflow's to say
//! (`workflow::coordination`); this parses and answers.

use spean_proto::v1 as pb;
use spean_proto::v1::coordinator_service_server::CoordinatorService;
use tonic::{Request, Status};

use super::{GatewayResult, Shared, caller, respond};
use crate::error::{BrokerError, FieldError};
use crate::ids::ReferralId;
use crate::wire;
use crate::workflow::{Overdue, OverdueFilter, OverdueReason};

pub struct CoordinatorGateway {
    shared: Shared,
}

impl CoordinatorGateway {
    pub fn new(shared: Shared) -> Self {
        Self { shared }
    }
}

fn parsed<T>(r: Result<T, FieldError>) -> Result<T, Status> {
    r.map_err(|e| BrokerError::from(e).into())
}

fn overdue_pb(o: &Overdue) -> pb::OverdueReferral {
    pb::OverdueReferral {
        envelope: Some(wire::envelope(&o.referral)),
        state: wire::state(o.referral.state) as i32,
        reason: match o.reason {
            OverdueReason::NotAcknowledged => pb::OverdueReason::NotAcknowledged,
            OverdueReason::FollowUpMissed => pb::OverdueReason::FollowUpMissed,
        } as i32,
        waiting_on_agency_id: o
            .waiting_on
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        overdue_since: Some(wire::timestamp(o.since)),
        times: o.times,
        escalated_to: o.escalated_to.iter().map(ToString::to_string).collect(),
    }
}

#[tonic::async_trait]
impl CoordinatorService for CoordinatorGateway {
    async fn list_overdue(
        &self,
        request: Request<pb::ListOverdueRequest>,
    ) -> GatewayResult<pb::ListOverdueResponse> {
        let agency = caller(&self.shared, &request).await?;
        let req = request.into_inner();
        let query = parsed(wire::overdue_filter(&req))?;
        let filter = OverdueFilter {
            province: query.province,
            agency: query.agency,
            kind: query.kind,
            urgency: query.urgency,
            limit: parsed(wire::page_size(req.page_size))? as usize,
            offset: parsed(wire::page_offset(&req.page_token))?,
        };
        respond(
            self.shared
                .workflow
                .overdue(&agency, &filter)
                .await
                .map(|(page, more)| pb::ListOverdueResponse {
                    next_page_token: if more {
                        (filter.offset + page.len()).to_string()
                    } else {
                        String::new()
                    },
                    referrals: page.iter().map(overdue_pb).collect(),
                }),
        )
    }

    async fn timeline(&self, request: Request<pb::TimelineRequest>) -> GatewayResult<pb::Referral> {
        let agency = caller(&self.shared, &request).await?;
        let id = parsed(ReferralId::parse(
            "referral_id",
            &request.get_ref().referral_id,
        ))?;
        respond(
            self.shared
                .workflow
                .timeline(&agency, id)
                .await
                .map(|(view, history)| wire::referral(view, &history)),
        )
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
                .network_figures(&agency, period.from, period.to, period.province.as_ref())
                .await
                .map(|report| wire::figures_response(&report)),
        )
    }
}
