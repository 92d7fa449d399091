//! Revoked certificates: what a revocation names, when it takes effect, and the set every broker
//! checks each call against. No I/O: the store keeps revocations ([`crate::store::RevocationStore`])
//! and the gateway keeps the set fresh and closes the streams of a certificate once it is revoked.
//!
//! A revocation names one certificate by the SHA-256 of its DER ([`Fingerprint`]), not the agency:
//! a rotation ends the agency's old certificate at a set time while its new one, for the same
//! agency, goes on working. The agency and the serial number are kept beside it for people reading
//! the list.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, pem::PemObject};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::FieldError;
use crate::ids::AgencyId;

/// The longest reason kept with a revocation: a line for an operator, not a report.
const MAX_REASON_CHARS: usize = 200;

/// The SHA-256 of a certificate's DER encoding: what `openssl x509 -fingerprint -sha256` prints,
/// written here as 64 lowercase hex digits without colons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a certificate as presented on the wire (DER).
    pub fn of(cert_der: &[u8]) -> Self {
        Self(Sha256::digest(cert_der).into())
    }

    /// Reads the stored form, 64 hex digits; `field` names it in the error.
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(raw, &mut bytes)
            .map_err(|_| FieldError::new(field, "must be a SHA-256 fingerprint, 64 hex digits"))?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// What a revocation needs to know of a certificate, read from its PEM file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub fingerprint: Fingerprint,
    /// Its subject's common name, which the gateway takes as the agency id.
    pub agency: AgencyId,
    /// Its serial number, colon-separated hex as `openssl x509 -serial` shows it (with colons).
    pub serial: String,
    /// The end of its validity period: after it the handshake refuses it anyway.
    pub not_after: OffsetDateTime,
}

impl Certificate {
    /// Reads the first certificate of a PEM file; `field` names the file in errors.
    pub fn from_pem(field: &str, pem: &[u8]) -> Result<Self, FieldError> {
        let der = CertificateDer::from_pem_slice(pem)
            .map_err(|e| FieldError::new(field, format!("holds no PEM certificate ({e})")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| FieldError::new(field, format!("is not an X.509 certificate ({e})")))?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| FieldError::new(field, "the certificate has no common name"))?;
        Ok(Self {
            fingerprint: Fingerprint::of(der.as_ref()),
            agency: AgencyId::parse("common name", cn)
                .map_err(|e| FieldError::new(field, e.to_string()))?,
            serial: cert.raw_serial_as_string(),
            not_after: cert.validity().not_after.to_datetime(),
        })
    }

    /// This certificate revoked from `effective_at`, recorded `now`.
    pub fn revoked(
        &self,
        effective_at: OffsetDateTime,
        reason: Reason,
        now: OffsetDateTime,
    ) -> Revocation {
        Revocation {
            fingerprint: self.fingerprint,
            agency: self.agency.clone(),
            serial: self.serial.clone(),
            effective_at,
            reason: reason.0,
            recorded_at: now,
        }
    }
}

/// Why a certificate was revoked, as an operator wrote it: one line, shown to the agency that
/// presents the certificate and in the broker's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason(String);

impl Reason {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let text = raw.trim();
        if text.is_empty() {
            return Err(FieldError::new(field, "must not be empty"));
        }
        if text.chars().count() > MAX_REASON_CHARS {
            return Err(FieldError::new(
                field,
                format!("is longer than {MAX_REASON_CHARS} characters"),
            ));
        }
        if text.chars().any(char::is_control) {
            return Err(FieldError::new(
                field,
                "must be one line without control characters",
            ));
        }
        Ok(Self(text.to_owned()))
    }
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub fingerprint: Fingerprint,
    /// The agency the certificate names, for people reading the list.
    pub agency: AgencyId,
    /// The certificate's serial number, for people reading the list.
    pub serial: String,
    /// From when the certificate is refused: now for `pki revoke`, the end of the overlap for the
    /// old certificate of `pki rotate`.
    pub effective_at: OffsetDateTime,
    pub reason: String,
    /// When it was recorded.
    pub recorded_at: OffsetDateTime,
}

impl Revocation {
    /// Whether the certificate is refused at `now`.
    pub fn in_effect(&self, now: OffsetDateTime) -> bool {
        self.effective_at <= now
    }

    /// What a caller presenting the certificate is told: which certificate, since when, and why.
    pub fn refusal(&self) -> String {
        format!(
            "the certificate of {} (serial {}, SHA-256 {}) was revoked as of {}: {}; \
             ask the network operator for a new identity",
            self.agency,
            self.serial,
            self.fingerprint,
            rfc3339(self.effective_at),
            self.reason
        )
    }
}

/// The revocations a broker knows of, by fingerprint.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RevokedSet(HashMap<Fingerprint, Revocation>);

impl RevokedSet {
    /// The set of `revocations`; of two for one certificate, the earlier takes effect.
    pub fn new(revocations: impl IntoIterator<Item = Revocation>) -> Self {
        let mut set = HashMap::new();
        for revocation in revocations {
            match set.get(&revocation.fingerprint) {
                Some(Revocation { effective_at, .. })
                    if *effective_at <= revocation.effective_at => {}
                _ => {
                    set.insert(revocation.fingerprint, revocation);
                }
            }
        }
        Self(set)
    }

    /// The revocation of this certificate if it is in effect at `now`.
    pub fn in_effect(&self, fingerprint: &Fingerprint, now: OffsetDateTime) -> Option<&Revocation> {
        self.0.get(fingerprint).filter(|r| r.in_effect(now))
    }

    /// The revocations of this set that `earlier` did not have (or had with another time), for the
    /// log.
    pub fn news<'a>(&'a self, earlier: &'a RevokedSet) -> impl Iterator<Item = &'a Revocation> {
        self.0
            .values()
            .filter(move |r| earlier.0.get(&r.fingerprint) != Some(r))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Until when the old certificate of a rotation keeps working: `now` plus `overlap` (`72h`,
/// `30m`, `45s`, `2d`), or the time `until` names (RFC 3339). Exactly one is given; the result is
/// after `now`, since a certificate that is to stop now is revoked, not rotated.
pub fn old_valid_until(
    overlap: Option<&str>,
    until: Option<&str>,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, FieldError> {
    match (overlap, until) {
        (Some(raw), None) => {
            let overlap: Duration = crate::directory::duration::parse(
                "--overlap",
                raw,
                crate::directory::duration::Zero::Refused,
            )?;
            Ok(now + overlap)
        }
        (None, Some(raw)) => future_time("--old-valid-until", raw, now),
        _ => Err(FieldError::new(
            "--overlap",
            "give either --overlap or --old-valid-until",
        )),
    }
}

/// An RFC 3339 time after `now`, `field` named in the error.
pub fn future_time(
    field: &str,
    raw: &str,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, FieldError> {
    let at = OffsetDateTime::parse(raw, &Rfc3339).map_err(|_| {
        FieldError::new(
            field,
            format!("must be an RFC 3339 time like 2026-12-24T17:00:00Z, not {raw:?}"),
        )
    })?;
    if at <= now {
        return Err(FieldError::new(
            field,
            "must be in the future (to end the certificate now, use `pki revoke` without it)",
        ));
    }
    Ok(at)
}

/// A time as RFC 3339 (UTC, whole seconds), as the CLI prints and refusals say it.
pub fn rfc3339(at: OffsetDateTime) -> String {
    let whole = at.replace_nanosecond(0).unwrap_or(at);
    whole
        .to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| whole.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn issued(agency: &str) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, agency);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    fn revocation(byte: u8, effective_at: OffsetDateTime) -> Revocation {
        Revocation {
            fingerprint: Fingerprint([byte; 32]),
            agency: AgencyId::parse("a", "mlup-russey").unwrap(),
            serial: "01".into(),
            effective_at,
            reason: "laptop stolen".into(),
            recorded_at: datetime!(2026-12-01 0:00 UTC),
        }
    }

    #[test]
    fn the_fingerprint_is_the_sha256_of_the_der_and_reads_back_from_hex() {
        let pem = issued("mlup-russey");
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let cert = Certificate::from_pem("cert.pem", pem.as_bytes()).unwrap();
        assert_eq!(
            cert.fingerprint.to_string(),
            hex::encode(Sha256::digest(der.as_ref()))
        );
        assert_eq!(cert.fingerprint.to_string().len(), 64);
        assert_eq!(
            Fingerprint::parse("f", &cert.fingerprint.to_string()).unwrap(),
            cert.fingerprint
        );
        assert_eq!(cert.agency.as_str(), "mlup-russey");
        assert!(!cert.serial.is_empty());
        // Two certificates for the same agency differ: a rotation revokes one, not the other.
        let other = Certificate::from_pem("cert.pem", issued("mlup-russey").as_bytes()).unwrap();
        assert_ne!(other.fingerprint, cert.fingerprint);
    }

    #[test]
    fn a_file_that_is_not_a_certificate_is_refused_naming_it() {
        let err = Certificate::from_pem("--cert", b"not a certificate").unwrap_err();
        assert!(err.to_string().starts_with("--cert"), "{err}");
        let err = Fingerprint::parse("fingerprint", "abc").unwrap_err();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }

    #[test]
    fn a_revocation_is_in_effect_from_its_time_on() {
        let at = datetime!(2026-12-04 12:00 UTC);
        let set = RevokedSet::new([revocation(1, at)]);
        let fp = Fingerprint([1; 32]);
        assert!(
            set.in_effect(&fp, at - time::Duration::seconds(1))
                .is_none()
        );
        assert!(set.in_effect(&fp, at).is_some());
        assert!(set.in_effect(&Fingerprint([2; 32]), at).is_none());
        let refusal = set.in_effect(&fp, at).unwrap().refusal();
        assert!(
            refusal.contains("revoked as of 2026-12-04T12:00:00Z: laptop stolen"),
            "{refusal}"
        );
        assert!(refusal.contains(&fp.to_string()), "{refusal}");
    }

    #[test]
    fn of_two_revocations_of_one_certificate_the_earlier_takes_effect() {
        let (early, late) = (
            datetime!(2026-12-04 12:00 UTC),
            datetime!(2026-12-07 12:00 UTC),
        );
        for order in [[early, late], [late, early]] {
            let set = RevokedSet::new(order.map(|at| revocation(1, at)));
            assert_eq!(set.len(), 1);
            assert!(set.in_effect(&Fingerprint([1; 32]), early).is_some());
        }
    }

    #[test]
    fn news_lists_what_a_refresh_added_or_moved() {
        let at = datetime!(2026-12-04 12:00 UTC);
        let before = RevokedSet::new([revocation(1, at)]);
        let after = RevokedSet::new([revocation(1, at), revocation(2, at)]);
        let news: Vec<_> = after.news(&before).map(|r| r.fingerprint).collect();
        assert_eq!(news, vec![Fingerprint([2; 32])]);
        let moved = RevokedSet::new([revocation(1, at - time::Duration::hours(1))]);
        assert_eq!(moved.news(&before).count(), 1);
    }

    #[test]
    fn the_overlap_is_a_duration_or_a_time_in_the_future() {
        let now = datetime!(2026-12-04 12:00 UTC);
        assert_eq!(
            old_valid_until(Some("72h"), None, now).unwrap(),
            datetime!(2026-12-07 12:00 UTC)
        );
        assert_eq!(
            old_valid_until(Some("5s"), None, now).unwrap(),
            datetime!(2026-12-04 12:00:05 UTC)
        );
        assert_eq!(
            old_valid_until(None, Some("2026-12-24T17:00:00+07:00"), now).unwrap(),
            datetime!(2026-12-24 10:00 UTC)
        );
        for (overlap, until, field) in [
            (Some("72"), None, "--overlap"),
            (Some("0h"), None, "--overlap"),
            (Some("3 days"), None, "--overlap"),
            (None, Some("tomorrow"), "--old-valid-until"),
            (None, Some("2026-12-01T00:00:00Z"), "--old-valid-until"),
            (None, None, "--overlap"),
            (Some("1h"), Some("2026-12-24T17:00:00Z"), "--overlap"),
        ] {
            let err = old_valid_until(overlap, until, now).unwrap_err();
            assert!(
                err.to_string().starts_with(field),
                "{overlap:?} {until:?}: {err}"
            );
        }
    }

    #[test]
    fn a_reason_is_one_short_line() {
        assert_eq!(
            Reason::parse("--reason", "  laptop stolen ").unwrap(),
            Reason("laptop stolen".into())
        );
        for bad in ["", "   ", "two\nlines", &"x".repeat(201)] {
            let err = Reason::parse("--reason", bad).unwrap_err();
            assert!(err.to_string().starts_with("--reason"), "{err}");
        }
    }
}
