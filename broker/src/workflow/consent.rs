//! What a referral's consent allows, checked where the broker decides: a referral goes out only
//! with consent to the sharing it asks for (or under its kind's emergency exception), a redirect
//! or a delegation only if its consent covers it, and once consent is withdrawn nothing more is
//! recorded.

use time::OffsetDateTime;

use crate::directory::Directory;
use crate::error::{BrokerError, FieldError};
use crate::referral::consent::CLOCK_SKEW;
use crate::referral::{Action, Consent, EventDetails, EventKind, NewReferral, Referral, Sharing};
use crate::store::Snapshot;

/// A new referral's consent against the directory and the time: the exception only for a kind
/// that allows it, consent not dated in the future, and consent to a broadcast and to notified
/// parties when the referral has them.
pub(super) fn check_submit(
    directory: &Directory,
    new: &NewReferral,
    now: OffsetDateTime,
) -> Result<(), BrokerError> {
    match &new.consent {
        Consent::EmergencyException { .. } if !directory.allows_emergency_exception(&new.kind) => {
            return Err(FieldError::new(
                "consent.emergency_exception",
                format!(
                    "kind {:?} has no emergency exception in the directory: record the client's \
                     or a guardian's consent",
                    new.kind.as_str()
                ),
            )
            .into());
        }
        Consent::Given { at, .. } if *at > now + CLOCK_SKEW => {
            return Err(FieldError::new("consent.given_at", "is in the future").into());
        }
        _ => {}
    }
    if new.is_broadcast() && !new.consent.allows(Sharing::Broadcast) {
        return Err(FieldError::new(
            "consent.sharing",
            "does not include broadcast, and this referral goes to every agency offering the \
             service in the province (a placement does by default): record consent to broadcast, \
             or send it to one agency",
        )
        .into());
    }
    if !new.notify.is_empty() && !new.consent.allows(Sharing::NotifiedParties) {
        return Err(FieldError::new(
            "consent.sharing",
            "does not include notified_parties, and the referral names agencies to notify",
        )
        .into());
    }
    Ok(())
}

/// An action against the referral's consent: nothing after a withdrawal, and a redirect or a
/// delegation only with consent to it. A withdrawal must not be dated in the future.
pub(super) fn check_action(
    snapshot: &Snapshot,
    action: &Action,
    now: OffsetDateTime,
) -> Result<(), BrokerError> {
    let referral = &snapshot.referral;
    if snapshot.history.contains(&EventKind::ConsentWithdrawn) {
        return Err(BrokerError::Precondition(format!(
            "consent for referral {} was withdrawn; nothing more can be recorded on it",
            referral.id
        )));
    }
    let needs = match &action.details {
        EventDetails::Redirected { .. } => Some(Sharing::Redirect),
        EventDetails::FollowUpDelegated { .. } => Some(Sharing::FollowUpDelegation),
        EventDetails::ConsentWithdrawn { at, .. } if *at > now + CLOCK_SKEW => {
            return Err(FieldError::new("withdrawal.withdrawn_at", "is in the future").into());
        }
        _ => None,
    };
    match needs {
        Some(sharing) if !referral.consent_allows(sharing) => Err(uncovered(referral, sharing)),
        _ => Ok(()),
    }
}

fn uncovered(referral: &Referral, sharing: Sharing) -> BrokerError {
    let instead = match sharing {
        Sharing::Redirect => "decline it, so that the sender can refer the client elsewhere",
        _ => "make the visits yourself",
    };
    BrokerError::Precondition(format!(
        "the consent recorded for referral {} does not cover {sharing}: {instead}",
        referral.id
    ))
}
