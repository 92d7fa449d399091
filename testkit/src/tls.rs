//! Reaching the broker as an agency: mutual TLS with the certificate from the agency's identity
//! folder, as `spean-broker pki issue` writes it (`ca.pem`, `cert.pem`, `key.pem`).

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::Error;

/// An endpoint for `url` that presents the certificate in `identity` and trusts that folder's CA
/// for the broker, whose certificate is issued for `localhost`. The caller sets its own timeouts
/// and chooses to connect now or lazily: tests want quick failures, the benchmark patience.
pub fn agency_endpoint(url: &str, identity: &Path) -> Result<Endpoint, Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(
            identity.join("ca.pem"),
        )?))
        .identity(Identity::from_pem(
            std::fs::read(identity.join("cert.pem"))?,
            std::fs::read(identity.join("key.pem"))?,
        ))
        .domain_name("localhost");
    Ok(Endpoint::from_shared(url.to_owned())?.tls_config(tls)?)
}
