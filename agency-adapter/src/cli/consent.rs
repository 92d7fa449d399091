//! Consent at the command line: the flags `send` records it with, and what `withdraw-consent`
//! sends. Who consented is a role, never a name: the name, if the agency keeps it, goes in the
//! case file's `consent` section, sealed.

use clap::{Args, ValueEnum};
use spean_proto::v1::{ConsentGiver, ConsentWithdrawal, ReferralConsent, Sharing};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::AdapterError;

fn timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        // Below one billion, so it fits.
        nanos: i32::try_from(at.nanosecond()).unwrap_or(0),
    }
}

/// Who gave or withdrew consent.
#[derive(Debug, Clone, Copy, ValueEnum, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GiverArg {
    /// The client: an adult, or a child old enough to consent.
    Client,
    /// A parent, a legal guardian or the caregiver responsible for a child.
    Guardian,
}

impl From<GiverArg> for ConsentGiver {
    fn from(g: GiverArg) -> Self {
        match g {
            GiverArg::Client => ConsentGiver::Client,
            GiverArg::Guardian => ConsentGiver::Guardian,
        }
    }
}

/// What the consent covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SharingArg {
    /// The agency the referral is sent to (always included).
    Referral,
    /// Another agency, should the referral be redirected.
    Redirect,
    /// Every agency offering the service in the province at once (a placement by default).
    Broadcast,
    /// The agencies named with --notify.
    #[value(name = "notified_parties")]
    NotifiedParties,
    /// An agency the recipient delegates the follow-up visits to.
    #[value(name = "follow_up_delegation")]
    FollowUpDelegation,
}

impl From<SharingArg> for Sharing {
    fn from(s: SharingArg) -> Self {
        match s {
            SharingArg::Referral => Sharing::Referral,
            SharingArg::Redirect => Sharing::Redirect,
            SharingArg::Broadcast => Sharing::Broadcast,
            SharingArg::NotifiedParties => Sharing::NotifiedParties,
            SharingArg::FollowUpDelegation => Sharing::FollowUpDelegation,
        }
    }
}

/// How `send` records consent: who gave it, when and to what sharing; or the kind's emergency
/// exception. The broker refuses a referral with neither.
#[derive(Debug, Args)]
pub struct ConsentArgs {
    /// Who consented to the referral: the client or a guardian.
    #[arg(
        long,
        value_enum,
        value_name = "WHO",
        required_unless_present = "emergency_exception",
        conflicts_with = "emergency_exception"
    )]
    pub consent_by: Option<GiverArg>,
    /// When consent was given, as the consent form is dated: RFC 3339, or YYYY-MM-DD (the start
    /// of that day in Cambodia). Required with --consent-by: a default of "now" would make the
    /// same referral sent again a different request.
    #[arg(
        long,
        value_name = "TIME",
        requires = "consent_by",
        required_unless_present = "emergency_exception"
    )]
    pub consent_at: Option<String>,
    /// What the consent covers, comma-separated; `referral` is always included
    /// [default: referral].
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "SHARING",
        requires = "consent_by"
    )]
    pub consent_for: Vec<SharingArg>,
    /// Send without consent under the kind's emergency exception (child protection, unless the
    /// directory says otherwise), giving why as a code, e.g. immediate_danger. Flagged in the
    /// history and counted for the coordinators.
    #[arg(long, value_name = "REASON")]
    pub emergency_exception: Option<String>,
}

impl ConsentArgs {
    /// The consent as the broker takes it.
    pub fn to_wire(&self) -> Result<ReferralConsent, AdapterError> {
        if let Some(reason) = &self.emergency_exception {
            return Ok(ReferralConsent {
                emergency_exception: reason.clone(),
                ..Default::default()
            });
        }
        let by = self.consent_by.ok_or_else(|| AdapterError::Invalid {
            field: "consent-by".into(),
            reason: "is required: who consented (client or guardian), or --emergency-exception"
                .into(),
        })?;
        let at = time_given(
            "consent-at",
            self.consent_at
                .as_deref()
                .ok_or_else(|| AdapterError::Invalid {
                    field: "consent-at".into(),
                    reason: "is required: when consent was given".into(),
                })?,
        )?;
        let mut sharing = vec![Sharing::Referral];
        for s in &self.consent_for {
            let s = Sharing::from(*s);
            if !sharing.contains(&s) {
                sharing.push(s);
            }
        }
        Ok(ReferralConsent {
            given_by: ConsentGiver::from(by) as i32,
            given_at: Some(at),
            sharing: sharing.into_iter().map(|s| s as i32).collect(),
            emergency_exception: String::new(),
        })
    }
}

/// A withdrawal as the broker takes it: who withdrew consent, and when they said so.
pub fn withdrawal(
    by: GiverArg,
    at: Option<&str>,
    now: OffsetDateTime,
) -> Result<ConsentWithdrawal, AdapterError> {
    let at = match at {
        Some(raw) => time_given("at", raw)?,
        None => timestamp(now),
    };
    Ok(ConsentWithdrawal {
        withdrawn_by: ConsentGiver::from(by) as i32,
        withdrawn_at: Some(at),
    })
}

/// A time given at the command line: RFC 3339, or a day (its start in Cambodia).
fn time_given(field: &'static str, raw: &str) -> Result<prost_types::Timestamp, AdapterError> {
    if let Ok(at) = OffsetDateTime::parse(raw, &Rfc3339) {
        return Ok(timestamp(at));
    }
    crate::figures::start_of_cambodia_day(field, raw).map_err(|_| AdapterError::Invalid {
        field: field.into(),
        reason: format!("{raw:?} is neither an RFC 3339 time nor a YYYY-MM-DD day"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(by: Option<GiverArg>, at: Option<&str>, sharing: &[SharingArg]) -> ConsentArgs {
        ConsentArgs {
            consent_by: by,
            consent_at: at.map(str::to_owned),
            consent_for: sharing.to_vec(),
            emergency_exception: None,
        }
    }

    #[test]
    fn consent_always_covers_the_referral_and_takes_days_in_cambodia_time() {
        let c = args(
            Some(GiverArg::Guardian),
            Some("2026-12-01"),
            &[SharingArg::Broadcast, SharingArg::Referral],
        )
        .to_wire()
        .unwrap();
        assert_eq!(c.given_by, ConsentGiver::Guardian as i32);
        assert_eq!(
            c.sharing,
            [Sharing::Referral as i32, Sharing::Broadcast as i32]
        );
        // 1 December 2026, 00:00 in Phnom Penh is 30 November, 17:00 UTC.
        let expected = OffsetDateTime::parse("2026-11-30T17:00:00Z", &Rfc3339).unwrap();
        assert_eq!(c.given_at, Some(timestamp(expected)));
        let c = args(
            Some(GiverArg::Client),
            Some("2026-12-01T09:30:00+07:00"),
            &[],
        )
        .to_wire()
        .unwrap();
        assert_eq!(
            c.given_at,
            Some(timestamp(expected + time::Duration::minutes(570)))
        );
        assert_eq!(c.sharing, [Sharing::Referral as i32]);
        let error = args(Some(GiverArg::Client), Some("yesterday"), &[])
            .to_wire()
            .unwrap_err();
        assert!(error.to_string().contains("consent-at"), "{error}");
    }
}
