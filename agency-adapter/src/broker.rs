//! The connection to the broker: one tonic channel with mutual TLS, carrying the referral,
//! directory and coordinator services (unary calls, each bounded by [`REQUEST_TIMEOUT`]) and the delivery stream
//! (unbounded, kept honest by HTTP/2 keep-alives instead).

use std::time::Duration;

use spean_proto::v1::{
    audit_service_client::AuditServiceClient, coordinator_service_client::CoordinatorServiceClient,
    delivery_service_client::DeliveryServiceClient,
    directory_service_client::DirectoryServiceClient,
    referral_service_client::ReferralServiceClient,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

use crate::{AdapterError, identity::Identity};

/// How long to wait for the TCP and TLS handshake before calling the broker unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a unary call may take before it counts as unanswered (and stays queued).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive pings notice a dead broker on an idle delivery stream.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Clients for the broker's services over one connection.
#[derive(Clone)]
pub struct Broker {
    pub referrals: ReferralServiceClient<Channel>,
    pub deliveries: DeliveryServiceClient<Channel>,
    /// Read by `send --to` for the recipient's provinces.
    pub directory: DirectoryServiceClient<Channel>,
    /// Read by `overdue` and `figures --network`; the broker answers only coordinators and
    /// authorities.
    pub coordinator: CoordinatorServiceClient<Channel>,
    /// Where this agency's audit head is kept outside its store (`crate::audit`).
    pub audit: AuditServiceClient<Channel>,
    /// Who this agency is (from its certificate): the delivery stream stores only what concerns it.
    pub agency_id: String,
    /// The identity it connected with: its key signs the sealing key it publishes, and the
    /// network CA checks the keys other agencies publish (`sealing`).
    pub identity: Identity,
    /// Whether this connection published the agency's sealing key yet: done once per connection,
    /// before the first delivery or the first sealed request.
    pub key_published: bool,
}

impl Broker {
    /// Connects to `url` presenting the agency's certificate and trusting only the network CA.
    /// A certificate outside its validity period is refused here, saying so, since every broker
    /// would refuse it; any other failure here means "unreachable for now".
    #[tracing::instrument(skip_all, fields(broker = %url), err(level = "debug"))]
    pub async fn connect(url: &str, identity: &Identity) -> Result<Self, AdapterError> {
        if let Some(why) = identity.outside_validity(time::OffsetDateTime::now_utc()) {
            return Err(AdapterError::CertificateRefused(why));
        }
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&identity.ca_pem))
            .identity(TlsIdentity::from_pem(
                &identity.cert_pem,
                identity.key_pem(),
            ));
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|error| AdapterError::Invalid {
                field: "broker".into(),
                reason: error.to_string(),
            })?
            .tls_config(tls)
            .map_err(|error| AdapterError::Identity {
                path: "cert.pem/key.pem/ca.pem".into(),
                reason: error.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let channel = tokio::time::timeout(CONNECT_TIMEOUT * 2, endpoint.connect())
            .await
            .map_err(|_| AdapterError::Unavailable("connect timed out".into()))??;
        Ok(Self {
            referrals: ReferralServiceClient::new(channel.clone()),
            deliveries: DeliveryServiceClient::new(channel.clone()),
            directory: DirectoryServiceClient::new(channel.clone()),
            coordinator: CoordinatorServiceClient::new(channel.clone()),
            audit: AuditServiceClient::new(channel),
            agency_id: identity.agency_id.as_str().to_owned(),
            identity: identity.clone(),
            key_published: false,
        })
    }
}
