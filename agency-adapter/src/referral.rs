//! The adapter's side of the vocabulary, with no I/O: idempotency keys, the lower-snake-case names
//! users and scripts see for states, kinds and enums, and who must act next on a referral. Ids and
//! keys themselves are [`spean_domain::ids`], so the adapter refuses exactly what the broker refuses.

use spean_domain::FieldError;
use spean_proto::v1::{
    AgeBand, Audience, ConsentGiver, FeedbackKind, ReferralState, Sex, Sharing, Urgency,
};

/// The idempotency key the user gave (`client_ref` or `request_id`), or a fresh one: a UUIDv7, so keys
/// also sort by creation time. Both go through `parse`, the network's rule for the key
/// ([`spean_domain::ids::ClientRef`], [`spean_domain::ids::RequestId`]), which the broker applies too,
/// so a key the broker would refuse is refused here, before it is queued. A UUID always passes.
pub fn key_or_new<K>(
    given: Option<&str>,
    parse: impl FnOnce(&str) -> Result<K, FieldError>,
) -> Result<K, FieldError> {
    match given {
        Some(raw) => parse(raw),
        None => parse(&uuid::Uuid::now_v7().to_string()),
    }
}

/// `REFERRAL_STATE_IN_PROGRESS` → `in_progress`: the proto name without its prefix, lower case.
fn short_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
}

pub fn state_name(state: i32) -> String {
    ReferralState::try_from(state).map_or_else(
        |_| format!("unknown_{state}"),
        |s| short_name(s.as_str_name(), "REFERRAL_STATE_"),
    )
}

pub fn kind_name(kind: i32) -> String {
    FeedbackKind::try_from(kind).map_or_else(
        |_| format!("unknown_{kind}"),
        |k| short_name(k.as_str_name(), "FEEDBACK_KIND_"),
    )
}

/// Who gave or withdrew consent: `client`, `guardian`.
pub fn giver_name(giver: i32) -> String {
    ConsentGiver::try_from(giver).map_or_else(
        |_| format!("unknown_{giver}"),
        |g| short_name(g.as_str_name(), "CONSENT_GIVER_"),
    )
}

/// What consent covers: `referral`, `redirect`, `broadcast`, `notified_parties`,
/// `follow_up_delegation`.
pub fn sharing_name(sharing: i32) -> String {
    Sharing::try_from(sharing).map_or_else(
        |_| format!("unknown_{sharing}"),
        |s| short_name(s.as_str_name(), "SHARING_"),
    )
}

pub fn urgency_name(urgency: i32) -> String {
    Urgency::try_from(urgency).map_or_else(
        |_| format!("unknown_{urgency}"),
        |u| short_name(u.as_str_name(), "URGENCY_"),
    )
}

pub fn sex_name(sex: i32) -> String {
    Sex::try_from(sex).map_or_else(
        |_| format!("unknown_{sex}"),
        |s| short_name(s.as_str_name(), "SEX_"),
    )
}

/// How an agency stands to a referral: `sender`, `recipient`, `former_recipient`, `notified`,
/// `delegate`, `candidate` (one of the agencies a broadcast went to, that has not won it).
pub fn audience_name(audience: i32) -> String {
    Audience::try_from(audience).map_or_else(
        |_| format!("unknown_{audience}"),
        |a| short_name(a.as_str_name(), "AUDIENCE_"),
    )
}

/// Age bands as users type them on the command line: `0-4`, `60+`, `unknown`.
pub fn age_band_name(band: i32) -> String {
    let name = match AgeBand::try_from(band) {
        Ok(AgeBand::Unspecified) => "unspecified",
        Ok(AgeBand::AgeBand04) => "0-4",
        Ok(AgeBand::AgeBand59) => "5-9",
        Ok(AgeBand::AgeBand1014) => "10-14",
        Ok(AgeBand::AgeBand1517) => "15-17",
        Ok(AgeBand::AgeBand1824) => "18-24",
        Ok(AgeBand::AgeBand2559) => "25-59",
        Ok(AgeBand::AgeBand60Plus) => "60+",
        Ok(AgeBand::Unknown) => "unknown",
        Err(_) => return format!("unknown_{band}"),
    };
    name.to_owned()
}

/// States after which nobody acts on the referral any more.
pub const CLOSED_STATES: [&str; 5] = [
    "declined",
    "completed",
    "failed",
    "withdrawn",
    "entered_in_error",
];

pub fn is_closed(state: &str) -> bool {
    CLOSED_STATES.contains(&state)
}

/// Who must act next on a referral in `state`, as the sender's `status` shows it.
pub fn next_action(state: &str, recipient: &str) -> String {
    match state {
        "sent" | "delivered" => format!("{recipient} to acknowledge"),
        "acknowledged" => format!("{recipient} to accept or decline"),
        "accepted" | "in_progress" => format!("{recipient} to follow up or complete"),
        _ => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use spean_domain::ids::{ClientRef, RequestId};

    use super::*;

    #[test]
    fn names_are_the_proto_names_without_prefix() {
        assert_eq!(state_name(ReferralState::InProgress as i32), "in_progress");
        assert_eq!(
            state_name(ReferralState::EnteredInError as i32),
            "entered_in_error"
        );
        assert_eq!(kind_name(FeedbackKind::FollowUp as i32), "follow_up");
        assert_eq!(kind_name(FeedbackKind::Acknowledged as i32), "acknowledged");
        assert_eq!(urgency_name(Urgency::Emergency as i32), "emergency");
        assert_eq!(age_band_name(AgeBand::AgeBand60Plus as i32), "60+");
        assert_eq!(audience_name(Audience::Delegate as i32), "delegate");
        assert_eq!(audience_name(Audience::Candidate as i32), "candidate");
        assert_eq!(
            kind_name(FeedbackKind::NoCandidateAccepted as i32),
            "no_candidate_accepted"
        );
        assert_eq!(
            kind_name(FeedbackKind::FollowUpOverdue as i32),
            "follow_up_overdue"
        );
    }

    #[test]
    fn the_recipient_acts_until_the_referral_closes() {
        assert_eq!(next_action("delivered", "b"), "b to acknowledge");
        assert_eq!(next_action("acknowledged", "b"), "b to accept or decline");
        assert_eq!(
            next_action("in_progress", "b"),
            "b to follow up or complete"
        );
        assert_eq!(next_action("completed", "b"), "-");
    }

    #[test]
    fn a_given_key_is_checked_by_the_network_rule_and_a_new_one_passes_it() {
        let parse = |raw: &str| ClientRef::parse("client_ref", raw);
        assert_eq!(
            key_or_new(Some("ok.key:1-2_3"), parse).unwrap().as_str(),
            "ok.key:1-2_3"
        );
        let error = key_or_new(Some("has space"), parse).unwrap_err();
        assert_eq!(error.field, "client_ref");
        assert!(key_or_new(Some(""), parse).is_err());
        assert!(key_or_new(Some(&"x".repeat(129)), parse).is_err());
        let first = key_or_new(None, |raw| RequestId::parse("request_id", raw)).unwrap();
        let second = key_or_new(None, |raw| RequestId::parse("request_id", raw)).unwrap();
        assert!(first < second, "new keys sort by creation time");
    }
}
