//! An agency's sealing key, bound to its TLS certificate.
//!
//! The agency signs its public key with the private key of its certificate (issued by the
//! network's CA, common name = agency id). Whoever seals to the agency checks that the certificate
//! chains to the CA it trusts, names the agency, and signed this key. The broker relays keys but
//! cannot substitute one: it would need a certificate in the agency's name.

use rustls::SignatureScheme;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use spean_proto::v1 as pb;

use crate::keys::PublicKey;

#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    #[error("{agency}'s key is malformed: {reason}")]
    Malformed { agency: String, reason: String },
    #[error("{agency}'s certificate is not one the network CA issued to it: {reason}")]
    Certificate { agency: String, reason: String },
    #[error("{agency}'s key is not signed by its certificate's key")]
    Signature { agency: String },
    #[error("cannot sign the key: {0}")]
    Signing(String),
}

/// What the certificate's key signs: a fixed label, the agency id and the public key.
pub fn binding_message(agency: &str, public_key: &[u8]) -> Vec<u8> {
    let mut message = b"spean/v1 agency key\0".to_vec();
    message.extend_from_slice(agency.as_bytes());
    message.push(0);
    message.extend_from_slice(public_key);
    message
}

/// Signs `public` for `agency` with the certificate key in `key_pem` (ECDSA P-256, as the network's
/// certificates are issued).
pub fn sign_binding(
    agency: &str,
    public: &PublicKey,
    key_pem: &[u8],
) -> Result<Vec<u8>, BindingError> {
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| BindingError::Signing(format!("key.pem: {e}")))?;
    let key = rustls::crypto::ring::sign::any_ecdsa_type(&key)
        .map_err(|e| BindingError::Signing(e.to_string()))?;
    let signer = key
        .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
        .ok_or_else(|| BindingError::Signing("the key is not ECDSA P-256".into()))?;
    signer
        .sign(&binding_message(agency, public.as_bytes()))
        .map_err(|e| BindingError::Signing(e.to_string()))
}

/// Checks a published key: its certificate chains to `ca_pem` for client authentication (at the
/// time it was published), names the agency, and signed the key. Returns the key.
pub fn verify_binding(key: &pb::AgencyKey, ca_pem: &[u8]) -> Result<PublicKey, BindingError> {
    let agency = key.agency_id.clone();
    let certificate = |reason: String| BindingError::Certificate {
        agency: agency.clone(),
        reason,
    };
    let public = PublicKey::from_bytes(&key.public_key).map_err(|e| BindingError::Malformed {
        agency: agency.clone(),
        reason: format!("public_key: {e}"),
    })?;
    let ca = CertificateDer::from_pem_slice(ca_pem).map_err(|e| certificate(e.to_string()))?;
    let anchor = webpki::anchor_from_trusted_cert(&ca).map_err(|e| certificate(e.to_string()))?;
    let der = CertificateDer::from(key.certificate.as_slice());
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| certificate(e.to_string()))?;
    let at = key
        .published_at
        .as_ref()
        .and_then(|t| u64::try_from(t.seconds).ok())
        .map_or_else(UnixTime::now, |s| {
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(s))
        });
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        at,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| certificate(e.to_string()))?;
    check_signature(key)?;
    Ok(public)
}

/// Checks only that `key.certificate` names the agency and signed the key, for a caller that
/// verified the certificate itself (the broker: it is the one the agency's TLS connection
/// presented). Returns the key.
pub fn check_signature(key: &pb::AgencyKey) -> Result<PublicKey, BindingError> {
    let agency = key.agency_id.clone();
    let public = PublicKey::from_bytes(&key.public_key).map_err(|e| BindingError::Malformed {
        agency: agency.clone(),
        reason: format!("public_key: {e}"),
    })?;
    if common_name(&key.certificate).as_deref() != Some(agency.as_str()) {
        return Err(BindingError::Certificate {
            agency,
            reason: "its common name is another agency's".into(),
        });
    }
    let der = CertificateDer::from(key.certificate.as_slice());
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| BindingError::Certificate {
        agency: agency.clone(),
        reason: e.to_string(),
    })?;
    cert.verify_signature(
        webpki::ring::ECDSA_P256_SHA256,
        &binding_message(&agency, &key.public_key),
        &key.signature,
    )
    .map_err(|_| BindingError::Signature { agency })?;
    Ok(public)
}

fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };

    use super::*;
    use crate::keys::SecretKey;

    struct Ca {
        cert: rcgen::Certificate,
        issuer: rcgen::Issuer<'static, KeyPair>,
    }

    fn ca() -> Ca {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn agency_cert(ca: &Ca, cn: &str) -> (Vec<u8>, String) {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        (cert.der().to_vec(), key.serialize_pem())
    }

    fn published(agency: &str, cert: &[u8], key_pem: &str, public: &PublicKey) -> pb::AgencyKey {
        pb::AgencyKey {
            agency_id: agency.into(),
            public_key: public.as_bytes().to_vec(),
            certificate: cert.to_vec(),
            signature: sign_binding(agency, public, key_pem.as_bytes()).unwrap(),
            published_at: None,
        }
    }

    #[test]
    fn a_key_signed_by_its_agencys_certificate_verifies_and_nothing_else_does() {
        let ca = ca();
        let ca_pem = ca.cert.pem();
        let (cert, key_pem) = agency_cert(&ca, "mlup-russey");
        let sealing = SecretKey::generate();
        let good = published("mlup-russey", &cert, &key_pem, sealing.public());
        assert_eq!(
            &verify_binding(&good, ca_pem.as_bytes()).unwrap(),
            sealing.public()
        );

        // The broker swaps in a key of its own: the signature no longer matches.
        let mut swapped = good.clone();
        swapped.public_key = SecretKey::generate().public().as_bytes().to_vec();
        assert!(matches!(
            verify_binding(&swapped, ca_pem.as_bytes()),
            Err(BindingError::Signature { .. })
        ));
        // Another agency's certificate presented for this one.
        let (other, other_key) = agency_cert(&ca, "dosvy-17");
        let mut wrong = published("mlup-russey", &other, &other_key, sealing.public());
        wrong.agency_id = "mlup-russey".into();
        assert!(matches!(
            verify_binding(&wrong, ca_pem.as_bytes()),
            Err(BindingError::Certificate { .. })
        ));
        // A certificate from another CA.
        let stranger = self::ca();
        let (cert, key_pem) = agency_cert(&stranger, "mlup-russey");
        let foreign = published("mlup-russey", &cert, &key_pem, sealing.public());
        assert!(matches!(
            verify_binding(&foreign, ca_pem.as_bytes()),
            Err(BindingError::Certificate { .. })
        ));
    }
}
