//! Identifiers and small domain values that parse: a value that exists is valid.
//!
//! Every parse error names the field it came from, so the gateway can return it to the caller as is.

use std::fmt;

use crate::error::FieldError;

/// Checks a key made of `[A-Za-z0-9._:-]`, 1 to `max` characters.
fn parse_token(field: &'static str, raw: &str, max: usize) -> Result<String, FieldError> {
    if raw.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    if raw.len() > max {
        return Err(FieldError::new(
            field,
            format!("is {} characters long; the limit is {max}", raw.len()),
        ));
    }
    if let Some(bad) = raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(FieldError::new(
            field,
            format!("contains {bad:?}; only letters, digits and . _ : - are allowed"),
        ));
    }
    Ok(raw.to_owned())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A directory agency id such as `mlup-russey`: lower-case letters, digits and `-`, 2 to 64 long.
    /// It is also the common name of the agency's client certificate.
    AgencyId
);

impl AgencyId {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldError> {
        if raw.len() < 2 || raw.len() > 64 {
            return Err(FieldError::new(field, "must be 2 to 64 characters long"));
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            || raw.starts_with('-')
        {
            return Err(FieldError::new(
                field,
                format!("{raw:?} is not an agency id (lower-case letters, digits and -)"),
            ));
        }
        Ok(Self(raw.to_owned()))
    }
}

string_id!(
    /// The sender's idempotency key for a submission.
    ClientRef
);

impl ClientRef {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldError> {
        parse_token(field, raw, 128).map(Self)
    }
}

string_id!(
    /// The caller's idempotency key for one feedback action.
    RequestId
);

impl RequestId {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldError> {
        parse_token(field, raw, 128).map(Self)
    }
}

string_id!(
    /// Cambodia's official two-digit province code, `01` to `25`.
    ProvinceCode
);

impl ProvinceCode {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldError> {
        match raw.parse::<u8>() {
            Ok(n) if raw.len() == 2 && (1..=25).contains(&n) => Ok(Self(raw.to_owned())),
            _ => Err(FieldError::new(
                field,
                format!("{raw:?} is not a province code (two digits, 01 to 25)"),
            )),
        }
    }
}

/// A referral id: a UUIDv7 given by the broker, so ids sort by creation time.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct ReferralId(uuid::Uuid);

impl ReferralId {
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldError> {
        uuid::Uuid::parse_str(raw)
            .map(Self)
            .map_err(|_| FieldError::new(field, format!("{raw:?} is not a referral id (a UUID)")))
    }
}

impl Default for ReferralId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ReferralId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agency_ids_are_lower_case_slugs() {
        assert!(AgencyId::parse("a", "mlup-russey").is_ok());
        assert!(AgencyId::parse("a", "dosvy-24").is_ok());
        let err = AgencyId::parse("recipient.agency_id", "Mlup Russey").unwrap_err();
        assert_eq!(err.field, "recipient.agency_id");
        assert!(AgencyId::parse("a", "x").is_err());
        assert!(AgencyId::parse("a", "-x").is_err());
    }

    #[test]
    fn client_refs_are_printable_tokens() {
        assert!(ClientRef::parse("client_ref", "ahc-2026-11-0042").is_ok());
        assert!(ClientRef::parse("client_ref", "").is_err());
        assert!(ClientRef::parse("client_ref", "has space").is_err());
        assert!(ClientRef::parse("client_ref", &"x".repeat(129)).is_err());
    }

    #[test]
    fn province_codes_are_the_official_two_digit_codes() {
        assert!(ProvinceCode::parse("p", "24").is_ok());
        assert!(ProvinceCode::parse("p", "01").is_ok());
        assert!(ProvinceCode::parse("p", "1").is_err());
        assert!(ProvinceCode::parse("p", "26").is_err());
        assert!(ProvinceCode::parse("p", "00").is_err());
    }
}
