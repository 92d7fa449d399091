//! The gRPC gateway: tonic services behind mutual TLS, where the client certificate is the caller's
//! identity. Each service parses its request ([`crate::wire`]), asks the [`Workflow`], and lets
//! `From<BrokerError> for Status` (in `error.rs`) choose the status.

mod audit;
pub mod connections;
mod coordinator;
mod delivery;
mod directory;
pub mod oversize;
pub mod quota;
mod referral;
pub mod revocations;

use std::sync::Arc;

use tonic::Request;

use crate::config::Config;
use crate::error::BrokerError;
use crate::ids::AgencyId;
use crate::revocation::Fingerprint;
use crate::workflow::Workflow;

pub use audit::AuditGateway;
pub use coordinator::CoordinatorGateway;
pub use delivery::DeliveryGateway;
pub use directory::DirectoryGateway;
pub use referral::ReferralGateway;

/// State the services share.
#[derive(Clone)]
pub struct Shared {
    pub workflow: Arc<Workflow>,
    pub config: Arc<Config>,
    /// Cancelled on shutdown: long-lived delivery streams end so the server can stop.
    pub stop: tokio_util::sync::CancellationToken,
    /// How many calls each agency may still make ([`quota`]).
    pub quota: Arc<quota::Quota>,
    /// The revoked certificates and the open streams to close when one is revoked
    /// ([`revocations`]).
    pub revocations: Arc<revocations::Revocations>,
}

/// The agency a request comes from, read from its verified client certificate, if the certificate
/// is not revoked ([`revocations`]) and the agency is within its rate ([`quota`]): every call goes
/// through here first.
pub async fn caller<T>(shared: &Shared, request: &Request<T>) -> Result<AgencyId, tonic::Status> {
    Ok(caller_certificate(shared, request).await?.0)
}

/// [`caller`], with the fingerprint of the certificate the agency presented: what a long-lived
/// stream registers under, to be closed if that certificate is revoked.
pub async fn caller_certificate<T>(
    shared: &Shared,
    request: &Request<T>,
) -> Result<(AgencyId, Fingerprint), tonic::Status> {
    let (agency, fingerprint) = identified(shared, request).await?;
    if let Err(wait) = shared.quota.take(&agency) {
        let (rate, burst) = shared.quota.limits();
        let ms = wait.as_millis().max(1);
        let mut status = tonic::Status::resource_exhausted(format!(
            "{agency} is over limits.requests_per_second_per_agency ({rate} calls per second, \
             {burst} at once); retry in {ms} ms"
        ));
        if let Ok(value) = ms.to_string().parse() {
            status.metadata_mut().insert(quota::PUSHBACK, value);
        }
        return Err(status);
    }
    Ok((agency, fingerprint))
}

/// The agency a request comes from, read from its verified client certificate, and that
/// certificate's fingerprint; refused if the certificate is revoked.
async fn identified<T>(
    shared: &Shared,
    request: &Request<T>,
) -> Result<(AgencyId, Fingerprint), tonic::Status> {
    let certs = request.peer_certs().ok_or_else(|| {
        BrokerError::Unauthenticated(
            "a client certificate issued by the network CA is required".into(),
        )
    })?;
    let der = certs
        .first()
        .ok_or_else(|| BrokerError::Unauthenticated("the client certificate is missing".into()))?;
    let fingerprint = Fingerprint::of(der.as_ref());
    shared
        .revocations
        .check(&fingerprint, time::OffsetDateTime::now_utc())?;
    let cn = crate::pki::agency_of(der.as_ref()).ok_or_else(|| {
        BrokerError::Unauthenticated("the client certificate has no common name".into())
    })?;
    Ok((shared.workflow.authenticate(&cn).await?, fingerprint))
}

/// Shorthand for handlers: a domain result as a tonic result.
pub(crate) type GatewayResult<T> = Result<tonic::Response<T>, tonic::Status>;

pub(crate) fn respond<T>(value: Result<T, BrokerError>) -> GatewayResult<T> {
    value.map(tonic::Response::new).map_err(Into::into)
}
