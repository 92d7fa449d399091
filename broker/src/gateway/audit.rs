//! `spean.v1.AuditService`: where each adapter's audit head is kept outside the adapter. The
//! caller's reported head goes into the broker's own chained log (`store::audit`), so that a cut
//! tail of the adapter's log shows against what the broker saw (docs/security.md#audit).

use spean_proto::v1 as pb;
use spean_proto::v1::audit_service_server::AuditService;
use tonic::Request;

use super::{GatewayResult, Shared, caller, respond};
use crate::error::{BrokerError, FieldError};
use crate::wire;

pub struct AuditGateway {
    shared: Shared,
}

impl AuditGateway {
    pub fn new(shared: Shared) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl AuditService for AuditGateway {
    async fn witness_head(&self, request: Request<pb::AuditHead>) -> GatewayResult<pb::AuditHead> {
        let agency = caller(&self.shared, &request).await?;
        let store = self.shared.workflow.store();
        let answer = async {
            let reported = wire::parse_audit_head(request.get_ref()).ok_or_else(|| {
                FieldError::new("hash", "a head is a positive seq and a 32-byte hash")
            })?;
            store
                .witness_head(&agency, reported, time::OffsetDateTime::now_utc())
                .await?;
            let head = store.audit_head().await?;
            Ok::<_, BrokerError>(head.map(wire::audit_head).unwrap_or_default())
        }
        .await;
        respond(answer)
    }

    async fn witnessed_head(
        &self,
        request: Request<pb::WitnessedHeadRequest>,
    ) -> GatewayResult<pb::AuditHead> {
        let agency = caller(&self.shared, &request).await?;
        let witnessed = self.shared.workflow.store().witnessed_head(&agency).await;
        respond(
            witnessed
                .map(|head| head.map(wire::audit_head).unwrap_or_default())
                .map_err(BrokerError::from),
        )
    }
}
