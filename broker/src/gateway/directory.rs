//! `spean.v1.DirectoryService`: read-only, for any agency of the network.

use spean_proto::v1 as pb;
use spean_proto::v1::directory_service_server::DirectoryService;
use tonic::{Request, Response};

use super::{GatewayResult, Shared, caller};
use crate::directory::{Agency, AgencyType};
use crate::error::{BrokerError, FieldError};
use crate::ids::ProvinceCode;
use crate::referral::Code;

pub struct DirectoryGateway {
    shared: Shared,
}

impl DirectoryGateway {
    pub fn new(shared: Shared) -> Self {
        Self { shared }
    }
}

fn agency(a: &Agency) -> pb::Agency {
    pb::Agency {
        id: a.id.to_string(),
        name: a.name.clone(),
        r#type: match a.agency_type {
            AgencyType::Hospital => pb::AgencyType::Hospital,
            AgencyType::Ngo => pb::AgencyType::Ngo,
            AgencyType::Authority => pb::AgencyType::Authority,
            AgencyType::Coordinator => pb::AgencyType::Coordinator,
        } as i32,
        provinces: a.provinces.clone(),
        services: a.services.clone(),
    }
}

fn optional<T>(
    raw: &str,
    parse: impl FnOnce(&str) -> Result<T, FieldError>,
) -> Result<Option<T>, BrokerError> {
    Ok((!raw.is_empty()).then(|| parse(raw)).transpose()?)
}

#[tonic::async_trait]
impl DirectoryService for DirectoryGateway {
    async fn list_agencies(
        &self,
        request: Request<pb::ListAgenciesRequest>,
    ) -> GatewayResult<pb::ListAgenciesResponse> {
        caller(&self.shared, &request).await?;
        let req = request.into_inner();
        let service = optional(&req.service, |s| Code::parse("service", s))?;
        let province = optional(&req.province, |p| ProvinceCode::parse("province", p))?;
        let directory = self.shared.workflow.directory().await?;
        let agencies = directory
            .agencies
            .iter()
            .filter(|a| service.as_ref().is_none_or(|s| a.offers(s)))
            .filter(|a| province.as_ref().is_none_or(|p| a.serves(p)))
            .map(agency)
            .collect();
        Ok(Response::new(pb::ListAgenciesResponse { agencies }))
    }

    async fn resolve_service(
        &self,
        request: Request<pb::ResolveServiceRequest>,
    ) -> GatewayResult<pb::ResolveServiceResponse> {
        caller(&self.shared, &request).await?;
        let req = request.into_inner();
        let service = Code::parse("service", &req.service).map_err(BrokerError::from)?;
        let province = ProvinceCode::parse("province", &req.province).map_err(BrokerError::from)?;
        let directory = self.shared.workflow.directory().await?;
        let agencies = directory
            .providers(&service, &province)
            .into_iter()
            .map(agency)
            .collect();
        Ok(Response::new(pb::ResolveServiceResponse { agencies }))
    }

    async fn list_provinces(
        &self,
        request: Request<pb::ListProvincesRequest>,
    ) -> GatewayResult<pb::ListProvincesResponse> {
        caller(&self.shared, &request).await?;
        let directory = self.shared.workflow.directory().await?;
        Ok(Response::new(pb::ListProvincesResponse {
            provinces: directory
                .provinces
                .iter()
                .map(|p| pb::Province {
                    code: p.code.clone(),
                    name_en: p.name_en.clone(),
                    name_km: p.name_km.clone(),
                })
                .collect(),
        }))
    }

    async fn list_kinds(
        &self,
        request: Request<pb::ListKindsRequest>,
    ) -> GatewayResult<pb::ListKindsResponse> {
        caller(&self.shared, &request).await?;
        let directory = self.shared.workflow.directory().await?;
        Ok(Response::new(pb::ListKindsResponse {
            kinds: directory
                .referral_kinds
                .iter()
                .map(|k| {
                    let schedule = Code::parse("kind", &k.kind)
                        .ok()
                        .and_then(|code| directory.follow_up_schedule(&code));
                    let seconds =
                        |d: std::time::Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
                    pb::Kind {
                        kind: k.kind.clone(),
                        meaning: k.meaning.clone(),
                        default_urgency: k.default_urgency.clone(),
                        follow_up_every_seconds: schedule.map_or(0, |s| seconds(s.every)),
                        follow_up_grace_seconds: schedule.map_or(0, |s| seconds(s.grace)),
                    }
                })
                .collect(),
        }))
    }
}
