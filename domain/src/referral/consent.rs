//! Consent: who agreed that a referral's case may be shared, when, and with whom; or why it goes
//! without, under its kind's emergency exception.
//!
//! The record names nobody. Who gave consent is a role (the client, a guardian), so the broker can
//! read and enforce it without reading the case file, where the agency may write the person's name.

use std::fmt;

use time::OffsetDateTime;

use super::Code;
use crate::error::FieldError;

/// Who gave, or withdrew, consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentGiver {
    /// The client: an adult, or a child old enough to consent.
    Client,
    /// A parent, a legal guardian or the caregiver responsible for a child.
    Guardian,
}

impl ConsentGiver {
    pub const ALL: [ConsentGiver; 2] = [ConsentGiver::Client, ConsentGiver::Guardian];
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentGiver::Client => "client",
            ConsentGiver::Guardian => "guardian",
        }
    }
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == raw)
    }
}

impl fmt::Display for ConsentGiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a person consented to share their case with.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Sharing {
    /// The agency the referral is sent to: what a referral is.
    Referral,
    /// Another agency, should the referral be redirected.
    Redirect,
    /// Every agency offering the service in the province at once (a broadcast placement).
    Broadcast,
    /// Agencies told that the referral exists, never its case file.
    NotifiedParties,
    /// An agency the recipient delegates the follow-up visits to.
    FollowUpDelegation,
}

impl Sharing {
    pub const ALL: [Sharing; 5] = [
        Sharing::Referral,
        Sharing::Redirect,
        Sharing::Broadcast,
        Sharing::NotifiedParties,
        Sharing::FollowUpDelegation,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Sharing::Referral => "referral",
            Sharing::Redirect => "redirect",
            Sharing::Broadcast => "broadcast",
            Sharing::NotifiedParties => "notified_parties",
            Sharing::FollowUpDelegation => "follow_up_delegation",
        }
    }
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

impl fmt::Display for Sharing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A referral's consent, as its sender recorded it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "basis", rename_all = "snake_case")]
pub enum Consent {
    /// The client or a guardian consented, at `at`, to `sharing` (sorted, without repeats, and
    /// always including [`Sharing::Referral`]).
    Given {
        by: ConsentGiver,
        #[serde(with = "super::micros")]
        at: OffsetDateTime,
        sharing: Vec<Sharing>,
    },
    /// Sent without consent, for a kind whose directory entry allows it, because of `reason`.
    EmergencyException { reason: Code },
}

impl Consent {
    /// Consent given, checked: `sharing` must include the referral itself.
    pub fn given(
        by: ConsentGiver,
        at: OffsetDateTime,
        sharing: impl IntoIterator<Item = Sharing>,
    ) -> Result<Self, FieldError> {
        let mut sharing: Vec<Sharing> = sharing.into_iter().collect();
        sharing.sort();
        sharing.dedup();
        if !sharing.contains(&Sharing::Referral) {
            return Err(FieldError::new(
                "consent.sharing",
                "must include referral: consent to share the case with the agency it is sent to",
            ));
        }
        Ok(Consent::Given { by, at, sharing })
    }

    /// Whether this consent covers `sharing`. The emergency exception covers what the referral
    /// needs: the exception is for a child in danger, and its use is flagged and counted.
    pub fn allows(&self, sharing: Sharing) -> bool {
        match self {
            Consent::Given { sharing: given, .. } => given.contains(&sharing),
            Consent::EmergencyException { .. } => true,
        }
    }

    /// The reason of an emergency exception, if this is one.
    pub fn emergency_exception(&self) -> Option<&Code> {
        match self {
            Consent::EmergencyException { reason } => Some(reason),
            Consent::Given { .. } => None,
        }
    }
}

/// The kind whose directory entry allows the emergency exception when the directory does not say:
/// a child in danger is protected first, and consent sought after.
pub const EMERGENCY_EXCEPTION_BY_DEFAULT: &str = "child_protection";

/// How much later than the broker's clock a consent or withdrawal may be dated (the adapters'
/// clocks drift), before it is refused as in the future.
pub const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consent_must_cover_the_referral_and_keeps_its_sharing_sorted() {
        let at = OffsetDateTime::UNIX_EPOCH;
        let error = Consent::given(ConsentGiver::Guardian, at, [Sharing::Redirect]).unwrap_err();
        assert_eq!(error.field, "consent.sharing");
        let consent = Consent::given(
            ConsentGiver::Client,
            at,
            [Sharing::Redirect, Sharing::Referral, Sharing::Redirect],
        )
        .unwrap();
        assert_eq!(
            consent,
            Consent::Given {
                by: ConsentGiver::Client,
                at,
                sharing: vec![Sharing::Referral, Sharing::Redirect]
            }
        );
        assert!(consent.allows(Sharing::Redirect));
        assert!(!consent.allows(Sharing::Broadcast));
        let exception = Consent::EmergencyException {
            reason: Code::parse("r", "immediate_danger").unwrap(),
        };
        assert!(exception.allows(Sharing::Broadcast));
        assert_eq!(
            exception.emergency_exception().map(Code::as_str),
            Some("immediate_danger")
        );
    }

    #[test]
    fn consent_round_trips_through_its_stored_form() {
        for consent in [
            Consent::given(
                ConsentGiver::Guardian,
                OffsetDateTime::from_unix_timestamp(1_780_000_000).unwrap(),
                [Sharing::Referral, Sharing::FollowUpDelegation],
            )
            .unwrap(),
            Consent::EmergencyException {
                reason: Code::parse("r", "immediate_danger").unwrap(),
            },
        ] {
            let json = serde_json::to_string(&consent).unwrap();
            assert_eq!(serde_json::from_str::<Consent>(&json).unwrap(), consent);
        }
    }
}
