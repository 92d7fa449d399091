//! Consent on the wire: the `Consent` a referral is submitted with, its withdrawal, and both back
//! out in envelopes and events.

use spean_proto::v1 as pb;
use time::OffsetDateTime;

use super::{required, time_of, timestamp};
use crate::error::FieldError;
use crate::referral::{Code, Consent, ConsentGiver, EventDetails, Sharing};

/// A referral's consent, parsed: who gave it, when and to what sharing, or the emergency
/// exception and why. Whether the kind allows the exception, and that consent is not dated in the
/// future, the workflow checks: it knows the directory and the time.
pub fn consent(raw: Option<pb::ReferralConsent>) -> Result<Consent, FieldError> {
    let c = raw.ok_or_else(|| {
        FieldError::new(
            "consent",
            "is required: who consented (the client or a guardian), when and to what sharing, \
             or the kind's emergency exception",
        )
    })?;
    if !c.emergency_exception.is_empty() {
        if c.given_by != 0 || c.given_at.is_some() {
            return Err(FieldError::new(
                "consent.emergency_exception",
                "cannot be given with consent.given_by or consent.given_at: a referral goes with \
                 consent or under the exception, not both",
            ));
        }
        return Ok(Consent::EmergencyException {
            reason: Code::parse("consent.emergency_exception", &c.emergency_exception)?,
        });
    }
    let by = giver("consent.given_by", c.given_by)?;
    let at = time_of(
        "consent.given_at",
        required("consent.given_at", c.given_at)?,
    )?;
    let mut sharing = Vec::with_capacity(c.sharing.len());
    for raw in c.sharing {
        sharing.push(sharing_of(raw)?);
    }
    Consent::given(by, at, sharing)
}

/// The details of a `WithdrawConsentRequest`.
pub fn withdrawal(raw: Option<pb::ConsentWithdrawal>) -> Result<EventDetails, FieldError> {
    let w = required("withdrawal", raw)?;
    Ok(EventDetails::ConsentWithdrawn {
        by: giver("withdrawal.withdrawn_by", w.withdrawn_by)?,
        at: time_of(
            "withdrawal.withdrawn_at",
            required("withdrawal.withdrawn_at", w.withdrawn_at)?,
        )?,
    })
}

fn giver(field: &'static str, raw: i32) -> Result<ConsentGiver, FieldError> {
    match pb::ConsentGiver::try_from(raw) {
        Ok(pb::ConsentGiver::Client) => Ok(ConsentGiver::Client),
        Ok(pb::ConsentGiver::Guardian) => Ok(ConsentGiver::Guardian),
        Ok(pb::ConsentGiver::Unspecified) => Err(FieldError::new(
            field,
            "is required: the client or a guardian (CONSENT_GIVER_CLIENT, CONSENT_GIVER_GUARDIAN)",
        )),
        Err(_) => Err(FieldError::new(
            field,
            format!("{raw} is not a consent giver"),
        )),
    }
}

fn sharing_of(raw: i32) -> Result<Sharing, FieldError> {
    const FIELD: &str = "consent.sharing";
    Ok(match pb::Sharing::try_from(raw) {
        Ok(pb::Sharing::Referral) => Sharing::Referral,
        Ok(pb::Sharing::Redirect) => Sharing::Redirect,
        Ok(pb::Sharing::Broadcast) => Sharing::Broadcast,
        Ok(pb::Sharing::NotifiedParties) => Sharing::NotifiedParties,
        Ok(pb::Sharing::FollowUpDelegation) => Sharing::FollowUpDelegation,
        Ok(pb::Sharing::Unspecified) => {
            return Err(FieldError::new(FIELD, "holds SHARING_UNSPECIFIED"));
        }
        Err(_) => return Err(FieldError::new(FIELD, format!("{raw} is not a sharing"))),
    })
}

fn giver_pb(g: ConsentGiver) -> pb::ConsentGiver {
    match g {
        ConsentGiver::Client => pb::ConsentGiver::Client,
        ConsentGiver::Guardian => pb::ConsentGiver::Guardian,
    }
}

fn sharing_pb(s: Sharing) -> pb::Sharing {
    match s {
        Sharing::Referral => pb::Sharing::Referral,
        Sharing::Redirect => pb::Sharing::Redirect,
        Sharing::Broadcast => pb::Sharing::Broadcast,
        Sharing::NotifiedParties => pb::Sharing::NotifiedParties,
        Sharing::FollowUpDelegation => pb::Sharing::FollowUpDelegation,
    }
}

/// A referral's consent as its envelope carries it.
pub fn consent_pb(c: &Consent) -> pb::ReferralConsent {
    match c {
        Consent::Given { by, at, sharing } => pb::ReferralConsent {
            given_by: giver_pb(*by) as i32,
            given_at: Some(timestamp(*at)),
            sharing: sharing.iter().map(|s| sharing_pb(*s) as i32).collect(),
            emergency_exception: String::new(),
        },
        Consent::EmergencyException { reason } => pb::ReferralConsent {
            emergency_exception: reason.to_string(),
            ..Default::default()
        },
    }
}

/// A withdrawal as an event's details carry it.
pub fn withdrawal_pb(by: ConsentGiver, at: OffsetDateTime) -> pb::ConsentWithdrawal {
    pb::ConsentWithdrawal {
        withdrawn_by: giver_pb(by) as i32,
        withdrawn_at: Some(timestamp(at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given() -> pb::ReferralConsent {
        pb::ReferralConsent {
            given_by: pb::ConsentGiver::Guardian as i32,
            given_at: Some(prost_types::Timestamp {
                seconds: 1_780_000_000,
                nanos: 0,
            }),
            sharing: vec![pb::Sharing::Referral as i32, pb::Sharing::Redirect as i32],
            emergency_exception: String::new(),
        }
    }

    fn field_of(raw: Option<pb::ReferralConsent>) -> String {
        consent(raw).unwrap_err().field
    }

    #[test]
    fn consent_round_trips_and_every_bad_field_is_named() {
        let parsed = consent(Some(given())).unwrap();
        assert_eq!(consent_pb(&parsed), given());
        assert!(parsed.allows(Sharing::Redirect));

        assert_eq!(field_of(None), "consent");
        let mut c = given();
        c.given_by = 0;
        assert_eq!(field_of(Some(c)), "consent.given_by");
        let mut c = given();
        c.given_by = 9;
        assert_eq!(field_of(Some(c)), "consent.given_by");
        let mut c = given();
        c.given_at = None;
        assert_eq!(field_of(Some(c)), "consent.given_at");
        let mut c = given();
        c.sharing = vec![pb::Sharing::Broadcast as i32];
        assert_eq!(field_of(Some(c)), "consent.sharing");
        let mut c = given();
        c.sharing.push(0);
        assert_eq!(field_of(Some(c)), "consent.sharing");
        let mut c = given();
        c.emergency_exception = "immediate_danger".into();
        assert_eq!(field_of(Some(c)), "consent.emergency_exception");
        let c = pb::ReferralConsent {
            emergency_exception: "Immediate danger".into(),
            ..Default::default()
        };
        assert_eq!(field_of(Some(c)), "consent.emergency_exception");
    }

    #[test]
    fn an_emergency_exception_names_its_reason() {
        let c = pb::ReferralConsent {
            emergency_exception: "immediate_danger".into(),
            ..Default::default()
        };
        let parsed = consent(Some(c.clone())).unwrap();
        assert_eq!(
            parsed.emergency_exception().map(Code::as_str),
            Some("immediate_danger")
        );
        assert_eq!(consent_pb(&parsed), c);
    }

    #[test]
    fn a_withdrawal_says_who_and_when() {
        let w = pb::ConsentWithdrawal {
            withdrawn_by: pb::ConsentGiver::Client as i32,
            withdrawn_at: Some(prost_types::Timestamp {
                seconds: 1_780_000_000,
                nanos: 0,
            }),
        };
        let EventDetails::ConsentWithdrawn { by, at } = withdrawal(Some(w)).unwrap() else {
            panic!("not a withdrawal");
        };
        assert_eq!(withdrawal_pb(by, at), w);
        assert_eq!(
            withdrawal(None).unwrap_err().field,
            "withdrawal",
            "the details are required"
        );
        let w = pb::ConsentWithdrawal {
            withdrawn_by: 0,
            ..w
        };
        assert_eq!(
            withdrawal(Some(w)).unwrap_err().field,
            "withdrawal.withdrawn_by"
        );
    }
}
