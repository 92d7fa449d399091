//! The network's certificate authority: every agency is identified by a client certificate it issues.
//!
//! Layout of the PKI folder (`<data_dir>/pki` by default):
//! - `ca.pem`, `ca.key`: the CA. In production the key stays on an offline machine and only `ca.pem`
//!   is copied to the broker.
//! - `broker.pem`, `broker.key`: the broker's server certificate.
//! - `agencies/<id>/{ca.pem,cert.pem,key.pem}`: one agency's identity, the folder an adapter is given.
//!   After `pki rotate`, also `cert.old.pem` and `key.old.pem`: the identity being replaced, which
//!   works until the end of the rotation's overlap.
//!
//! Nothing here replaces a file that exists: a new CA or a new agency key locks out everyone who
//! holds the old ones, so only `pki issue --force` overwrites, and only the agency it names. Keys are
//! created with mode 0600 in folders created 0700, from their first byte, so no other user can read a
//! key even for the moment between writing it and restricting it.
//!
//! The agency id is the certificate's common name; the gateway reads it from the verified peer
//! certificate ([`agency_of`]) and nothing else.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::ids::AgencyId;

/// Mode of private keys: only the broker's user reads them.
pub const KEY_MODE: u32 = 0o600;
/// Mode of certificates: public, but they sit in folders only the owner can enter.
const CERT_MODE: u32 = 0o644;
/// Mode of every folder this module (and the data folder) creates.
pub const DIR_MODE: u32 = 0o700;

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
    #[error(
        "{0} already exists; refusing to overwrite it (pass --force to replace this agency's key)"
    )]
    AgencyExists(PathBuf),
    #[error(
        "{0} already exists; refusing to overwrite it (pass --force to re-issue the server certificate)"
    )]
    ServerExists(PathBuf),
    #[error("{path} is missing: {reason}")]
    Missing { path: PathBuf, reason: String },
}

/// The files of an agency's identity after [`Pki::rotate_agency`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The identity folder: `cert.pem` and `key.pem` are the new identity.
    pub dir: PathBuf,
    /// The certificate being replaced, kept (0600) until its overlap ends.
    pub old_cert: PathBuf,
    /// The key being replaced (0600).
    pub old_key: PathBuf,
}

/// What [`Pki::ensure_dev`] could not do, for the caller to report.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DevPkiReport {
    /// A CA was created (the folder held no CA and no server certificate).
    pub created_ca: bool,
    /// Agencies of the directory that have no identity folder and could not be given one, because
    /// `ca.key` is not here (it is kept offline).
    pub without_identity: Vec<String>,
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
    pub fn ca_key(&self) -> PathBuf {
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

    /// Creates the CA. Refuses when either half of one exists: every issued certificate depends on
    /// it, and a lone `ca.pem` is the production layout (the key kept offline), not a missing CA.
    pub fn init(&self) -> Result<(), PkiError> {
        if self.ca_cert().exists() || self.ca_key().exists() {
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
        // The key first: should writing it fail, no lone ca.pem is left that would stop a retry.
        create(&self.ca_key(), key.serialize_pem().as_bytes(), KEY_MODE)?;
        create(&self.ca_cert(), cert.pem().as_bytes(), CERT_MODE)?;
        Ok(())
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        if !self.has_ca() {
            return Err(PkiError::NoCa(self.dir.clone()));
        }
        let key = KeyPair::from_pem(&read(&self.ca_key())?)?;
        Ok(Issuer::from_ca_cert_pem(&read(&self.ca_cert())?, key)?)
    }

    /// Issues the broker's server certificate for the given DNS names and IP addresses. Refuses to
    /// replace an existing `broker.pem` or `broker.key`.
    pub fn issue_server(&self, hosts: &[String]) -> Result<(), PkiError> {
        self.issue_server_with(hosts, false)
    }

    /// As [`Pki::issue_server`]; with `force`, replaces an existing server key and certificate,
    /// signed by the same CA: for a certificate about to expire, new server names or a leaked
    /// server key. Agencies trust the CA, not the certificate, so they keep their identities and
    /// connect to the broker restarted with the new one.
    pub fn issue_server_with(&self, hosts: &[String], force: bool) -> Result<(), PkiError> {
        let issuer = self.issuer()?;
        let files = [self.server_key(), self.server_cert()];
        if !force && let Some(existing) = files.iter().find(|f| f.exists()) {
            return Err(PkiError::ServerExists(existing.clone()));
        }
        if force {
            // Removed rather than truncated: a file opened for writing keeps its old mode.
            for file in &files {
                remove_if_present(file)?;
            }
        }
        let mut params = CertificateParams::new(hosts.to_vec())?;
        params.distinguished_name = name("spean-broker");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, 2);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        create(&self.server_key(), key.serialize_pem().as_bytes(), KEY_MODE)?;
        create(&self.server_cert(), cert.pem().as_bytes(), CERT_MODE)?;
        Ok(())
    }

    /// Writes `agencies/<id>/{ca.pem,cert.pem,key.pem}`; returns the folder. Refuses when the agency
    /// already has a key or certificate: the agency's adapter holds that key, and replacing it
    /// locks the agency out until it is given the new one.
    pub fn issue_agency(&self, agency: &AgencyId) -> Result<PathBuf, PkiError> {
        self.issue_agency_with(agency, false)
    }

    /// [`Pki::issue_agency`], replacing an existing key and certificate when `force`
    /// (`pki issue --force`: a lost or leaked key).
    pub fn issue_agency_with(&self, agency: &AgencyId, force: bool) -> Result<PathBuf, PkiError> {
        let issuer = self.issuer()?;
        let dir = self.agency_dir(agency);
        let files = [
            dir.join("key.pem"),
            dir.join("cert.pem"),
            dir.join("ca.pem"),
        ];
        if !force && let Some(existing) = files[..2].iter().find(|f| f.exists()) {
            return Err(PkiError::AgencyExists(existing.clone()));
        }
        let (key, cert) = agency_certificate(agency, &issuer)?;
        let ca = read(&self.ca_cert())?;
        // Removed rather than truncated: a file opened for writing keeps its old mode, and an old
        // key file may be readable by others.
        for file in &files {
            remove_if_present(file)?;
        }
        create(&files[0], key.as_bytes(), KEY_MODE)?;
        create(&files[1], cert.as_bytes(), CERT_MODE)?;
        create(&files[2], ca.as_bytes(), CERT_MODE)?;
        Ok(dir)
    }

    /// Gives the agency a new key pair and certificate from the same CA, keeping the current ones
    /// as `cert.old.pem` and `key.old.pem` (both 0600): the agency's adapter goes on presenting
    /// them until it is restarted with the new ones. Replaces the `.old` files of an earlier
    /// rotation, whose end is recorded in the store already. The new key and certificate are made
    /// before any file is touched, so a failure leaves the identity as it was.
    pub fn rotate_agency(&self, agency: &AgencyId) -> Result<Rotated, PkiError> {
        let issuer = self.issuer()?;
        let dir = self.agency_dir(agency);
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        for path in [&cert, &key] {
            if !path.exists() {
                return Err(PkiError::Missing {
                    path: path.clone(),
                    reason: "there is no identity to rotate; issue one with `pki issue`".into(),
                });
            }
        }
        let (new_key, new_cert) = agency_certificate(agency, &issuer)?;
        let rotated = Rotated {
            old_cert: dir.join("cert.old.pem"),
            old_key: dir.join("key.old.pem"),
            dir,
        };
        for (current, old) in [(&key, &rotated.old_key), (&cert, &rotated.old_cert)] {
            remove_if_present(old)?;
            let io = |source| PkiError::Io {
                path: old.clone(),
                source,
            };
            // Restricted before the move, so the old key is never readable by others under its
            // new name either.
            std::fs::set_permissions(current, std::fs::Permissions::from_mode(KEY_MODE))
                .map_err(io)?;
            std::fs::rename(current, old).map_err(io)?;
        }
        create(&key, new_key.as_bytes(), KEY_MODE)?;
        create(&cert, new_cert.as_bytes(), CERT_MODE)?;
        Ok(rotated)
    }

    /// The development PKI: creates what is missing and can be made without replacing anything.
    ///
    /// - A CA is created only in a folder that has none of `ca.pem`, `ca.key`, `broker.pem` and
    ///   `broker.key`: any of them means a PKI exists, and a new CA would lock out every agency
    ///   that holds a certificate from the old one.
    /// - The server certificate is issued when both its files are missing and `ca.key` is here;
    ///   otherwise a missing one is an error naming it, since the broker cannot serve without it.
    /// - Each agency without an identity folder gets one when `ca.key` is here. Without `ca.key`
    ///   (production copies only `ca.pem`) it is listed in the report instead: those agencies were
    ///   issued their identities offline, and the broker serves the others meanwhile.
    pub fn ensure_dev(
        &self,
        server_names: &[String],
        agencies: &[AgencyId],
    ) -> Result<DevPkiReport, PkiError> {
        let mut report = DevPkiReport::default();
        let parts = [
            self.ca_cert(),
            self.ca_key(),
            self.server_cert(),
            self.server_key(),
        ];
        if parts.iter().all(|p| !p.exists()) {
            self.init()?;
            report.created_ca = true;
        }
        if !self.ca_cert().exists() {
            return Err(PkiError::Missing {
                path: self.ca_cert(),
                reason:
                    "other PKI files exist, so no new CA is created; copy the network's ca.pem here"
                        .into(),
            });
        }
        let can_issue = self.ca_key().exists();
        let server = [self.server_cert(), self.server_key()];
        if server.iter().all(|p| !p.exists()) && can_issue {
            self.issue_server(server_names)?;
        }
        for path in server {
            if !path.exists() {
                return Err(PkiError::Missing {
                    path,
                    reason: if can_issue {
                        "its other half exists and is not replaced; restore it, or remove both broker.pem and broker.key to issue a new pair".into()
                    } else {
                        "ca.key is not here to issue it (kept offline): issue it with `spean-broker pki init` on the CA machine and copy broker.pem and broker.key here".into()
                    },
                });
            }
        }
        for agency in agencies {
            let dir = self.agency_dir(agency);
            if dir.join("cert.pem").exists() || dir.join("key.pem").exists() {
                continue;
            }
            if can_issue {
                self.issue_agency(agency)?;
            } else {
                report.without_identity.push(agency.as_str().to_owned());
            }
        }
        Ok(report)
    }

    /// Checks that the files the server needs exist, naming the first that does not; used when the
    /// development PKI is off, so that a missing file is reported as such and nothing is created.
    pub fn check_server_files(&self) -> Result<(), PkiError> {
        for path in [self.ca_cert(), self.server_cert(), self.server_key()] {
            if !path.exists() {
                return Err(PkiError::Missing {
                    path,
                    reason: "tls.dev_pki is off, so nothing is created: issue it with `spean-broker pki init` on the CA machine and copy ca.pem, broker.pem and broker.key to tls.pki_dir".into(),
                });
            }
        }
        Ok(())
    }
}

/// Creates `dir` and any missing parents with mode 0700. A folder that exists is left as it is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// The agency a verified client certificate (DER) names, from its subject common name.
pub fn agency_of(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// A new key pair and client certificate for `agency`, signed by `issuer`: (key, certificate), PEM.
fn agency_certificate(
    agency: &AgencyId,
    issuer: &Issuer<'static, KeyPair>,
) -> Result<(String, String), PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(agency.as_str());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, 2);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((key.serialize_pem(), cert.pem()))
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

fn remove_if_present(path: &Path) -> Result<(), PkiError> {
    match std::fs::remove_file(path) {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => Err(PkiError::Io {
            path: path.to_owned(),
            source,
        }),
        _ => Ok(()),
    }
}

/// Writes a new file with `mode` from its creation (its folders 0700); fails if it exists.
fn create(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        create_private_dir(parent).map_err(io)?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn agency(id: &str) -> AgencyId {
        AgencyId::parse("agency", id).unwrap()
    }

    #[test]
    fn an_issued_agency_certificate_names_the_agency() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        pki.init().unwrap();
        assert!(matches!(pki.init(), Err(PkiError::CaExists(_))));
        let agency = agency("mlup-russey");
        let folder = pki.issue_agency(&agency).unwrap();
        let pem = std::fs::read_to_string(folder.join("cert.pem")).unwrap();
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(agency_of(&der).as_deref(), Some("mlup-russey"));
    }

    #[test]
    fn keys_are_0600_in_folders_created_0700() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path().join("pki"));
        pki.init().unwrap();
        pki.issue_server(&["localhost".into()]).unwrap();
        let folder = pki.issue_agency(&agency("mlup-russey")).unwrap();
        for key in [pki.ca_key(), pki.server_key(), folder.join("key.pem")] {
            assert_eq!(mode(&key), 0o600, "{}", key.display());
        }
        for dir in [pki.dir().to_owned(), pki.dir().join("agencies"), folder] {
            assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        }
    }

    #[test]
    fn issuing_again_refuses_to_replace_the_agency_key_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        pki.init().unwrap();
        let id = agency("mlup-russey");
        let folder = pki.issue_agency(&id).unwrap();
        let key = std::fs::read(folder.join("key.pem")).unwrap();
        // An old key left readable by others must not stay so when it is replaced.
        std::fs::set_permissions(
            folder.join("key.pem"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();

        let err = pki.issue_agency(&id).unwrap_err();
        assert!(err.to_string().contains("key.pem"), "{err}");
        assert_eq!(std::fs::read(folder.join("key.pem")).unwrap(), key);

        pki.issue_agency_with(&id, true).unwrap();
        assert_ne!(std::fs::read(folder.join("key.pem")).unwrap(), key);
        assert_eq!(mode(&folder.join("key.pem")), 0o600);
    }

    #[test]
    fn a_ca_certificate_without_its_key_is_used_and_never_replaced() {
        // What the production guide has the operator copy: ca.pem, broker.pem, broker.key.
        let offline = tempfile::tempdir().unwrap();
        let ca = Pki::new(offline.path());
        ca.init().unwrap();
        ca.issue_server(&["localhost".into()]).unwrap();
        let online = tempfile::tempdir().unwrap();
        let pki = Pki::new(online.path());
        for file in ["ca.pem", "broker.pem", "broker.key"] {
            std::fs::copy(offline.path().join(file), online.path().join(file)).unwrap();
        }
        let before = std::fs::read(pki.ca_cert()).unwrap();

        let report = pki
            .ensure_dev(&["localhost".into()], &[agency("mlup-russey")])
            .unwrap();

        assert_eq!(
            report,
            DevPkiReport {
                created_ca: false,
                without_identity: vec!["mlup-russey".into()],
            }
        );
        assert_eq!(std::fs::read(pki.ca_cert()).unwrap(), before);
        assert!(!pki.ca_key().exists());
        assert!(!pki.agency_dir(&agency("mlup-russey")).exists());
    }

    #[test]
    fn the_server_certificate_is_re_issued_by_the_same_ca_only_when_forced() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        pki.init().unwrap();
        pki.issue_server(&["localhost".into()]).unwrap();
        let agency_dir = pki.issue_agency(&agency("mlup-russey")).unwrap();
        let (ca, cert, key, identity) = (
            std::fs::read(pki.ca_cert()).unwrap(),
            std::fs::read(pki.server_cert()).unwrap(),
            std::fs::read(pki.server_key()).unwrap(),
            std::fs::read(agency_dir.join("cert.pem")).unwrap(),
        );
        let refused = pki.issue_server(&["localhost".into()]).unwrap_err();
        assert!(refused.to_string().contains("--force"), "{refused}");
        assert_eq!(std::fs::read(pki.server_cert()).unwrap(), cert);

        pki.issue_server_with(&["localhost".into(), "broker.example".into()], true)
            .unwrap();
        assert_ne!(std::fs::read(pki.server_cert()).unwrap(), cert);
        assert_ne!(std::fs::read(pki.server_key()).unwrap(), key);
        assert_eq!(mode(&pki.server_key()), 0o600);
        // The same CA, and the agencies' identities as they were.
        assert_eq!(std::fs::read(pki.ca_cert()).unwrap(), ca);
        assert_eq!(
            std::fs::read(agency_dir.join("cert.pem")).unwrap(),
            identity
        );
        let pem = std::fs::read(pki.server_cert()).unwrap();
        let (_, der) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der.contents).unwrap();
        let ca_pem = x509_parser::pem::parse_x509_pem(&ca).unwrap().1;
        let (_, ca_parsed) = x509_parser::parse_x509_certificate(&ca_pem.contents).unwrap();
        assert_eq!(parsed.issuer(), ca_parsed.subject());
        parsed
            .verify_signature(Some(ca_parsed.public_key()))
            .unwrap();
    }

    #[test]
    fn a_rotation_keeps_the_old_identity_aside_0600_and_issues_a_new_one_from_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        pki.init().unwrap();
        let id = agency("mlup-russey");
        let missing = pki.rotate_agency(&id).unwrap_err();
        assert!(
            missing.to_string().contains("cert.pem is missing"),
            "{missing}"
        );
        let folder = pki.issue_agency(&id).unwrap();
        let (cert, key) = (
            std::fs::read(folder.join("cert.pem")).unwrap(),
            std::fs::read(folder.join("key.pem")).unwrap(),
        );

        let rotated = pki.rotate_agency(&id).unwrap();

        assert_eq!(rotated.dir, folder);
        assert_eq!(std::fs::read(&rotated.old_cert).unwrap(), cert);
        assert_eq!(std::fs::read(&rotated.old_key).unwrap(), key);
        let new_cert = std::fs::read(folder.join("cert.pem")).unwrap();
        assert_ne!(new_cert, cert);
        assert_ne!(std::fs::read(folder.join("key.pem")).unwrap(), key);
        for file in [&rotated.old_cert, &rotated.old_key, &folder.join("key.pem")] {
            assert_eq!(mode(file), 0o600, "{}", file.display());
        }
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let der = CertificateDer::from_pem_slice(&new_cert).unwrap();
        assert_eq!(agency_of(&der).as_deref(), Some("mlup-russey"));
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ca_pem = std::fs::read(pki.ca_cert()).unwrap();
        let ca_der = x509_parser::pem::parse_x509_pem(&ca_pem).unwrap().1;
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der.contents).unwrap();
        parsed.verify_signature(Some(ca.public_key())).unwrap();

        // A second rotation sets the first one's new identity aside in turn.
        pki.rotate_agency(&id).unwrap();
        assert_eq!(std::fs::read(&rotated.old_cert).unwrap(), new_cert);
    }

    #[test]
    fn a_missing_server_key_is_named_and_not_replaced_by_a_new_pki() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        pki.init().unwrap();
        pki.issue_server(&["localhost".into()]).unwrap();
        std::fs::remove_file(pki.server_key()).unwrap();
        std::fs::remove_file(pki.ca_key()).unwrap();
        let before = std::fs::read(pki.server_cert()).unwrap();

        let err = pki.ensure_dev(&["localhost".into()], &[]).unwrap_err();

        assert!(err.to_string().contains("broker.key is missing"), "{err}");
        assert_eq!(std::fs::read(pki.server_cert()).unwrap(), before);
        assert!(!pki.ca_key().exists());
    }

    #[test]
    fn an_empty_folder_gets_a_whole_development_pki_and_a_second_run_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path().join("pki"));
        let agencies = [agency("mlup-russey")];
        let report = pki.ensure_dev(&["localhost".into()], &agencies).unwrap();
        assert!(report.created_ca && report.without_identity.is_empty());
        let key = std::fs::read(pki.agency_dir(&agencies[0]).join("key.pem")).unwrap();
        let ca = std::fs::read(pki.ca_cert()).unwrap();

        let again = pki.ensure_dev(&["localhost".into()], &agencies).unwrap();

        assert_eq!(again, DevPkiReport::default());
        assert_eq!(std::fs::read(pki.ca_cert()).unwrap(), ca);
        assert_eq!(
            std::fs::read(pki.agency_dir(&agencies[0]).join("key.pem")).unwrap(),
            key
        );
    }
}
