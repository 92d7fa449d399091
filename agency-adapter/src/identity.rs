//! The agency's identity folder: the network CA, its certificate and its key. The agency id is not
//! configured separately: it is the certificate's common name, so it cannot disagree with what the
//! broker sees on the TLS connection.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use rustls::pki_types::{CertificateDer, pem::PemObject};

use spean_domain::ids::AgencyId;

use crate::AdapterError;

/// What this adapter presents to the broker, and the agency id it proves.
#[derive(Clone)]
pub struct Identity {
    /// Read from the certificate's common name.
    pub agency_id: AgencyId,
    /// The CA that signed the broker's certificate: the only one we trust.
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    /// Never printed: `Debug` below leaves it out.
    key_pem: Vec<u8>,
    /// When the certificate is valid, and its file: brokers refuse it outside this period, in
    /// the TLS handshake, and the alert saying so does not always reach the caller (TLS 1.3 sends
    /// it after the client has finished its part), so the adapter checks first and says why.
    validity: Validity,
}

/// A certificate's validity period.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Validity {
    file: PathBuf,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("agency_id", &self.agency_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Reads `ca.pem`, `cert.pem` and `key.pem` from `dir` and the agency id from `cert.pem`.
    pub fn load(dir: &Path) -> Result<Self, AdapterError> {
        let ca_pem = read(&dir.join("ca.pem"))?;
        let cert_path = dir.join("cert.pem");
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&dir.join("key.pem"))?;
        let invalid = |reason| AdapterError::Identity {
            path: cert_path.clone(),
            reason,
        };
        let agency_id = agency_id_of(&cert_pem).map_err(invalid)?;
        let (not_before, not_after) = validity_of(&cert_pem).map_err(invalid)?;
        Ok(Self {
            agency_id,
            ca_pem,
            cert_pem,
            key_pem,
            validity: Validity {
                file: cert_path,
                not_before,
                not_after,
            },
        })
    }

    /// Why brokers refuse this certificate at `now`, if it is outside its validity period.
    pub fn outside_validity(&self, now: time::OffsetDateTime) -> Option<String> {
        let Validity {
            file,
            not_before,
            not_after,
        } = &self.validity;
        let at = |t: &time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| t.unix_timestamp().to_string())
        };
        if now > *not_after {
            Some(format!(
                "{} expired at {}, and brokers refuse it in the TLS handshake \
                 (CertificateExpired); ask the network operator for a new identity",
                file.display(),
                at(not_after)
            ))
        } else if now < *not_before {
            Some(format!(
                "{} is not valid before {}, and brokers refuse it in the TLS handshake \
                 (CertificateExpired); check this machine's clock",
                file.display(),
                at(not_before)
            ))
        } else {
            None
        }
    }

    pub fn key_pem(&self) -> &[u8] {
        &self.key_pem
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, AdapterError> {
    std::fs::read(path).map_err(|error| AdapterError::Identity {
        path: path.clone(),
        reason: error.to_string(),
    })
}

/// The common name of the first certificate in a PEM file. It must be an agency id by the network's
/// rule: the broker refuses any other name, so an adapter holding one could never be let in.
pub fn agency_id_of(cert_pem: &[u8]) -> Result<AgencyId, String> {
    let der = CertificateDer::from_pem_slice(cert_pem).map_err(|error| error.to_string())?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|error| error.to_string())?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or("the certificate's subject has no common name")?
        .as_str()
        .map_err(|error| error.to_string())?;
    AgencyId::parse("common name", common_name).map_err(|error| error.to_string())
}

/// The validity period of the first certificate in a PEM file.
fn validity_of(cert_pem: &[u8]) -> Result<(time::OffsetDateTime, time::OffsetDateTime), String> {
    let der = CertificateDer::from_pem_slice(cert_pem).map_err(|error| error.to_string())?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|error| error.to_string())?;
    let validity = cert.validity();
    Ok((
        validity.not_before.to_datetime(),
        validity.not_after.to_datetime(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_for(common_name: &str) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem().into_bytes()
    }

    #[test]
    fn a_certificate_outside_its_period_is_named_with_its_end() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert_for("ca")).unwrap();
        std::fs::write(dir.path().join("key.pem"), "key").unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert_for("mlup-russey")).unwrap();
        let identity = Identity::load(dir.path()).unwrap();
        let now = time::OffsetDateTime::now_utc();
        assert_eq!(identity.outside_validity(now), None);
        let later = identity.validity.not_after + time::Duration::seconds(1);
        let why = identity.outside_validity(later).unwrap();
        assert!(why.contains("cert.pem expired at"), "{why}");
        let earlier = identity.validity.not_before - time::Duration::seconds(1);
        let why = identity.outside_validity(earlier).unwrap();
        assert!(why.contains("is not valid before"), "{why}");
    }

    #[test]
    fn the_agency_id_is_the_common_name() {
        let id = agency_id_of(&cert_for("mlup-russey")).unwrap();
        assert_eq!(id.as_str(), "mlup-russey");
    }

    #[test]
    fn a_common_name_the_broker_refuses_as_an_agency_id_is_refused_here_too() {
        for refused in ["MLUP_Russey", "a", "mlup.russey", "-mlup"] {
            let error = agency_id_of(&cert_for(refused)).unwrap_err();
            assert!(
                error.starts_with(&format!("common name: {refused:?} is not an agency id"))
                    || error.starts_with("common name: must be 2 to 64"),
                "{refused}: {error}"
            );
        }
    }
}
