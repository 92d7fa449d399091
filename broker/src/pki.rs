//! The network's certificate authority: every agency is identified by a client certificate it issues.
//!
//! Layout of the PKI folder (`<data_dir>/pki` by default):
//! - `ca.pem`, `ca.key`: the CA. The key never leaves this folder.
//! - `broker.pem`, `broker.key`: the broker's server certificate.
//! - `agencies/<id>/{ca.pem,cert.pem,key.pem}`: one agency's identity, the folder an adapter is given.
//!
//! The agency id is the certificate's common name; the gateway reads it from the verified peer
//! certificate ([`agency_of`]) and nothing else.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::ids::AgencyId;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no CA in {0}: run `spean-broker pki init` first")]
    NoCa(PathBuf),
    #[error("a CA already exists in {0}; refusing to overwrite it")]
    CaExists(PathBuf),
}

/// Paths inside a PKI folder.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("broker.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("broker.key")
    }
    pub fn agency_dir(&self, agency: &AgencyId) -> PathBuf {
        self.dir.join("agencies").join(agency.as_str())
    }
    pub fn has_ca(&self) -> bool {
        self.ca_cert().exists() && self.ca_key().exists()
    }

    /// Creates the CA. Refuses to replace an existing one: every issued certificate depends on it.
    pub fn init(&self) -> Result<(), PkiError> {
        if self.has_ca() {
            return Err(PkiError::CaExists(self.dir.clone()));
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name("Spean network CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, 10);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        write(&self.ca_cert(), cert.pem().as_bytes(), false)?;
        write(&self.ca_key(), key.serialize_pem().as_bytes(), true)?;
        Ok(())
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        if !self.has_ca() {
            return Err(PkiError::NoCa(self.dir.clone()));
        }
        let key = KeyPair::from_pem(&read(&self.ca_key())?)?;
        Ok(Issuer::from_ca_cert_pem(&read(&self.ca_cert())?, key)?)
    }

    /// Issues the broker's server certificate for the given DNS names and IP addresses.
    pub fn issue_server(&self, hosts: &[String]) -> Result<(), PkiError> {
        let issuer = self.issuer()?;
        let mut params = CertificateParams::new(hosts.to_vec())?;
        params.distinguished_name = name("spean-broker");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, 2);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write(&self.server_cert(), cert.pem().as_bytes(), false)?;
        write(&self.server_key(), key.serialize_pem().as_bytes(), true)?;
        Ok(())
    }

    /// Writes `agencies/<id>/{ca.pem,cert.pem,key.pem}`; returns the folder.
    pub fn issue_agency(&self, agency: &AgencyId) -> Result<PathBuf, PkiError> {
        let issuer = self.issuer()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(agency.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, 2);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let dir = self.agency_dir(agency);
        write(&dir.join("cert.pem"), cert.pem().as_bytes(), false)?;
        write(&dir.join("key.pem"), key.serialize_pem().as_bytes(), true)?;
        write(
            &dir.join("ca.pem"),
            read(&self.ca_cert())?.as_bytes(),
            false,
        )?;
        Ok(dir)
    }
}

/// The agency a verified client certificate (DER) names, from its subject common name.
pub fn agency_of(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Spean");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn validity(params: &mut CertificateParams, years: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365 * years);
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, bytes: &[u8], secret: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, bytes).map_err(io)?;
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_agency_certificate_names_the_agency() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        pki.init().unwrap();
        assert!(matches!(pki.init(), Err(PkiError::CaExists(_))));
        let agency = AgencyId::parse("agency", "mlup-russey").unwrap();
        let folder = pki.issue_agency(&agency).unwrap();
        let pem = std::fs::read_to_string(folder.join("cert.pem")).unwrap();
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(agency_of(&der).as_deref(), Some("mlup-russey"));
    }
}
