//! `spean.v1.DirectoryService`: the network's agencies, services and provinces for any agency of
//! it, and the keys agencies publish for sealing to them.

use spean_proto::v1 as pb;
use spean_proto::v1::directory_service_server::DirectoryService;
use tonic::{Request, Response};

use super::{GatewayResult, Shared, caller};
use crate::directory::{Agency, AgencyType};
use crate::error::{BrokerError, FieldError};
use crate::ids::ProvinceCode;
use crate::referral::{Code, Urgency};
use crate::store::PublishedKey;

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

fn agency_key(k: PublishedKey) -> pb::AgencyKey {
    pb::AgencyKey {
        agency_id: k.agency.to_string(),
        public_key: k.public_key,
        certificate: k.certificate,
        signature: k.signature,
        published_at: Some(crate::wire::timestamp(k.published_at)),
    }
}

/// Most agencies or key ids one `AgencyKeys` call may name.
const MAX_KEYS_ASKED: usize = 256;

#[tonic::async_trait]
impl DirectoryService for DirectoryGateway {
    async fn publish_key(
        &self,
        request: Request<pb::PublishKeyRequest>,
    ) -> GatewayResult<pb::PublishKeyResponse> {
        let agency = caller(&self.shared, &request).await?;
        let presented = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()))
            .unwrap_or_default();
        let key = request
            .into_inner()
            .key
            .ok_or_else(|| FieldError::new("key", "is required"))
            .map_err(BrokerError::from)?;
        if key.agency_id != agency.as_str() {
            return Err(BrokerError::Forbidden(format!(
                "{agency} may publish only its own key, not {}'s",
                key.agency_id
            ))
            .into());
        }
        if key.certificate != presented {
            return Err(BrokerError::from(FieldError::new(
                "key.certificate",
                "is not the certificate this connection presented",
            ))
            .into());
        }
        let public = spean_seal::check_signature(&key)
            .map_err(|e| BrokerError::from(FieldError::new("key.signature", e.to_string())))?;
        let stored = self
            .shared
            .workflow
            .publish_key(PublishedKey {
                agency,
                key_id: public.id().to_vec(),
                public_key: key.public_key,
                certificate: key.certificate,
                signature: key.signature,
                published_at: time::OffsetDateTime::now_utc(),
            })
            .await?;
        Ok(Response::new(pb::PublishKeyResponse {
            key: Some(agency_key(stored)),
        }))
    }

    async fn agency_keys(
        &self,
        request: Request<pb::AgencyKeysRequest>,
    ) -> GatewayResult<pb::AgencyKeysResponse> {
        caller(&self.shared, &request).await?;
        let req = request.into_inner();
        if req.agency_ids.len() + req.key_ids.len() > MAX_KEYS_ASKED {
            return Err(BrokerError::from(FieldError::new(
                "agency_ids",
                format!("with key_ids names more than {MAX_KEYS_ASKED}"),
            ))
            .into());
        }
        let agencies = req
            .agency_ids
            .iter()
            .map(|a| crate::ids::AgencyId::parse("agency_ids", a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(BrokerError::from)?;
        if let Some(bad) = req.key_ids.iter().find(|k| k.len() != 32) {
            return Err(BrokerError::from(FieldError::new(
                "key_ids",
                format!("a key id is {} bytes, not 32", bad.len()),
            ))
            .into());
        }
        let keys = self
            .shared
            .workflow
            .agency_keys(&agencies, &req.key_ids)
            .await?;
        Ok(Response::new(pb::AgencyKeysResponse {
            keys: keys.into_iter().map(agency_key).collect(),
        }))
    }

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
                    // No tiers: no deadline is kept, so none is announced.
                    let within = |urgency: Urgency| match Code::parse("kind", &k.kind) {
                        Ok(code) if directory.escalation_tiers() > 0 => {
                            seconds(directory.acknowledgement_deadline(&code, urgency))
                        }
                        _ => 0,
                    };
                    pb::Kind {
                        kind: k.kind.clone(),
                        meaning: k.meaning.clone(),
                        default_urgency: k.default_urgency.clone(),
                        follow_up_every_seconds: schedule.map_or(0, |s| seconds(s.every)),
                        follow_up_grace_seconds: schedule.map_or(0, |s| seconds(s.grace)),
                        emergency_consent_exception: k.emergency_consent_exception,
                        acknowledge_within_emergency_seconds: within(Urgency::Emergency),
                        acknowledge_within_urgent_seconds: within(Urgency::Urgent),
                        acknowledge_within_routine_seconds: within(Urgency::Routine),
                    }
                })
                .collect(),
        }))
    }
}
