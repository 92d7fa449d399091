//! Turning stored rows into domain values, once for both backends: each backend only says how to
//! read a text, integer or bytes column ([`Columns`]).

use super::MailboxEntry;
use super::from_micros;
use crate::error::StoreError;
use crate::ids::{AgencyId, ClientRef, ProvinceCode, ReferralId, RequestId};
use crate::referral::{
    Addressee, AgeBand, Code, Consent, Event, EventDetails, EventKind, FreeText, Referral, Sealed,
    Sex, State, Subject, Urgency,
};

/// Column access a backend's row type provides.
pub(super) trait Columns {
    fn text(&self, column: &str) -> Result<String, StoreError>;
    fn maybe_text(&self, column: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    fn bytes(&self, column: &str) -> Result<Vec<u8>, StoreError>;
}

/// The production store's rows.
impl Columns for sqlx::postgres::PgRow {
    fn text(&self, column: &str) -> Result<String, StoreError> {
        Ok(sqlx::Row::try_get(self, column)?)
    }
    fn maybe_text(&self, column: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::Row::try_get(self, column)?)
    }
    fn int(&self, column: &str) -> Result<i64, StoreError> {
        Ok(sqlx::Row::try_get(self, column)?)
    }
    fn bytes(&self, column: &str) -> Result<Vec<u8>, StoreError> {
        Ok(sqlx::Row::try_get(self, column)?)
    }
}

/// The embedded store's rows, read through `rusqlite` by its writer and readers.
impl Columns for rusqlite::Row<'_> {
    fn text(&self, column: &str) -> Result<String, StoreError> {
        Ok(self.get(column)?)
    }
    fn maybe_text(&self, column: &str) -> Result<Option<String>, StoreError> {
        Ok(self.get(column)?)
    }
    fn int(&self, column: &str) -> Result<i64, StoreError> {
        Ok(self.get(column)?)
    }
    fn bytes(&self, column: &str) -> Result<Vec<u8>, StoreError> {
        Ok(self.get(column)?)
    }
}

/// The three addressee columns: an agency, or a service and a province.
pub(super) fn addressee_columns(
    addressee: &Addressee,
) -> (Option<String>, Option<String>, Option<String>) {
    match addressee {
        Addressee::Agency(a) => (Some(a.as_str().to_owned()), None, None),
        Addressee::Service { service, province } => (
            None,
            Some(service.as_str().to_owned()),
            Some(province.as_str().to_owned()),
        ),
    }
}

pub(crate) fn corrupt(table: &'static str, reason: &str) -> StoreError {
    StoreError::Corrupt {
        table,
        reason: reason.to_owned(),
    }
}

/// A stored value that its decoder refused; the decoder's error stays the cause.
pub(super) fn undecodable(
    table: &'static str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    StoreError::Undecodable {
        table,
        source: Box::new(source),
    }
}

pub(super) fn referral(row: &impl Columns, with_case_file: bool) -> Result<Referral, StoreError> {
    let bad = |what: &str| corrupt("referrals", what);
    let id = row.text("id")?;
    let addressee = match (
        row.maybe_text("addressee_agency")?,
        row.maybe_text("addressee_service")?,
        row.maybe_text("addressee_province")?,
    ) {
        (Some(a), _, _) => {
            Addressee::Agency(AgencyId::parse("addressee", &a).map_err(|_| bad("addressee"))?)
        }
        (None, Some(s), Some(p)) => Addressee::Service {
            service: Code::parse("service", &s).map_err(|_| bad("addressee_service"))?,
            province: ProvinceCode::parse("province", &p).map_err(|_| bad("addressee_province"))?,
        },
        _ => return Err(bad("addressee")),
    };
    let addressing: Addressing = match row.maybe_text("addressing")? {
        Some(json) => serde_json::from_str(&json).map_err(|e| undecodable("referrals", e))?,
        None => Addressing::default(),
    };
    Ok(Referral {
        id: ReferralId::parse("id", &id).map_err(|_| bad("id"))?,
        sender: AgencyId::parse("sender", &row.text("sender")?).map_err(|_| bad("sender"))?,
        client_ref: ClientRef::parse("client_ref", &row.text("client_ref")?)
            .map_err(|_| bad("client_ref"))?,
        fingerprint: row.text("fingerprint")?,
        addressee,
        recipient: recipient_column(&row.text("recipient")?)?,
        kind: Code::parse("kind", &row.text("kind")?).map_err(|_| bad("kind"))?,
        urgency: Urgency::parse(&row.text("urgency")?).ok_or_else(|| bad("urgency"))?,
        subject: Subject {
            sex: Sex::parse(&row.text("subject_sex")?).ok_or_else(|| bad("subject_sex"))?,
            age_band: AgeBand::parse(&row.text("subject_age_band")?)
                .ok_or_else(|| bad("subject_age_band"))?,
            province: ProvinceCode::parse("p", &row.text("subject_province")?)
                .map_err(|_| bad("subject_province"))?,
        },
        client_pseudonym: row
            .maybe_text("client_pseudonym")?
            .map(|p| ClientRef::parse("client_pseudonym", &p))
            .transpose()
            .map_err(|_| bad("client_pseudonym"))?,
        candidates: addressing.candidates,
        notify: addressing.notify,
        follows: addressing.follows,
        consent: addressing.consent,
        state: State::parse(&row.text("state")?).ok_or_else(|| bad("state"))?,
        version: row.int("version")?,
        created_at: from_micros(row.int("created_at")?),
        updated_at: from_micros(row.int("updated_at")?),
        case_file: if with_case_file {
            Sealed::new(row.bytes("case_file")?)
        } else {
            Sealed::default()
        },
    })
}

/// The `details` column: the event's details as JSON, with the next visit the broker stamped on
/// it and the action's sealed free text beside them (more keys of the same object), so that
/// neither needs a column.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredDetails<D, S> {
    #[serde(flatten)]
    details: D,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_visit: Option<crate::referral::NextVisit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_text: Option<S>,
}

/// An event's details and next visit as the `details` column stores them. Without a next visit
/// (nearly every event) that is the details alone, written straight: the same JSON, without the
/// buffering that `flatten` costs.
pub(crate) fn details_column(event: &Event) -> Result<String, StoreError> {
    if event.next_visit.is_none() && event.sealed_text.is_empty() {
        serde_json::to_string(&event.details)
    } else {
        serde_json::to_string(&StoredDetails {
            details: &event.details,
            next_visit: event.next_visit,
            sealed_text: (!event.sealed_text.is_empty()).then_some(&event.sealed_text),
        })
    }
    .map_err(|e| undecodable("referral_events", e))
}

/// What a `details` column holds besides the details.
type Extras = (Option<crate::referral::NextVisit>, Sealed);

/// The details, next visit and sealed text of a `details` column. Only a column that names one of
/// those is read through [`StoredDetails`]: a false match (older free text holding the word) reads
/// the same.
fn stored_details(raw: &str) -> Result<(EventDetails, Extras), String> {
    if !raw.contains("\"next_visit\"") && !raw.contains("\"sealed_text\"") {
        let details: EventDetails = serde_json::from_str(raw).map_err(|e| e.to_string())?;
        return Ok((details, (None, Sealed::default())));
    }
    let stored: StoredDetails<EventDetails, Sealed> =
        serde_json::from_str(raw).map_err(|e| e.to_string())?;
    Ok((
        stored.details,
        (stored.next_visit, stored.sealed_text.unwrap_or_default()),
    ))
}

pub(super) fn event(row: &impl Columns) -> Result<Event, StoreError> {
    let bad = |what: &str| corrupt("referral_events", what);
    let (details, (next_visit, sealed_text)) =
        stored_details(&row.text("details")?).map_err(|e| bad(&e))?;
    Ok(Event {
        id: uuid::Uuid::parse_str(&row.text("id")?).map_err(|_| bad("id"))?,
        referral_id: ReferralId::parse("referral_id", &row.text("referral_id")?)
            .map_err(|_| bad("referral_id"))?,
        kind: EventKind::parse(&row.text("kind")?).ok_or_else(|| bad("kind"))?,
        actor: AgencyId::parse("actor", &row.text("actor")?).map_err(|_| bad("actor"))?,
        actor_person: FreeText::from_stored(row.text("actor_person")?),
        at: from_micros(row.int("at")?),
        note: FreeText::from_stored(row.text("note")?),
        state_after: State::parse(&row.text("state_after")?).ok_or_else(|| bad("state_after"))?,
        details,
        next_visit,
        sealed_text,
        request_id: row
            .maybe_text("request_id")?
            .map(|r| RequestId::parse("request_id", &r))
            .transpose()
            .map_err(|_| bad("request_id"))?,
    })
}

/// The role of an agency given access by an escalation ([`super::Change::notified`]); every other
/// access row has the role `party`.
pub(super) const NOTIFIED: &str = "notified";

/// A snapshot from its referral columns, the agencies with access (all of them, and those only
/// notified) and the event kinds, as each backend lists them.
pub(super) fn snapshot(
    row: &impl Columns,
    parties: Vec<String>,
    notified: Vec<String>,
    history: Vec<String>,
) -> Result<super::Snapshot, StoreError> {
    let agencies = |list: Vec<String>| -> Result<Vec<AgencyId>, StoreError> {
        list.iter()
            .map(|a| AgencyId::parse("agency_id", a).map_err(|e| undecodable("referral_access", e)))
            .collect()
    };
    Ok(super::Snapshot {
        referral: referral(row, false)?,
        parties: agencies(parties)?,
        notified: agencies(notified)?,
        history: history
            .iter()
            .map(|k| EventKind::parse(k).ok_or_else(|| corrupt("referral_events", "kind")))
            .collect::<Result<_, _>>()?,
    })
}

pub(super) fn mailbox(row: &impl Columns) -> Result<MailboxEntry, StoreError> {
    let bad = |what: &str| corrupt("mailbox", what);
    Ok(MailboxEntry {
        seq: row.int("seq")?,
        agency: AgencyId::parse("agency_id", &row.text("agency_id")?)
            .map_err(|_| bad("agency_id"))?,
        delivery_id: uuid::Uuid::parse_str(&row.text("delivery_id")?)
            .map_err(|_| bad("delivery_id"))?,
        referral_id: ReferralId::parse("referral_id", &row.text("referral_id")?)
            .map_err(|_| bad("referral_id"))?,
        event_id: row
            .maybe_text("event_id")?
            .map(|e| uuid::Uuid::parse_str(&e))
            .transpose()
            .map_err(|_| bad("event_id"))?,
        carried: None,
    })
}

/// The `referral_id`, `due_at` and `escalations` columns of a deadline row.
pub(super) fn due_deadline(row: &impl Columns) -> Result<super::DueDeadline, StoreError> {
    let bad = |what: &str| corrupt("referral_deadlines", what);
    Ok(super::DueDeadline {
        referral_id: ReferralId::parse("referral_id", &row.text("referral_id")?)
            .map_err(|_| bad("referral_id"))?,
        due_at: from_micros(row.int("due_at")?),
        escalations: u32::try_from(row.int("escalations")?).map_err(|_| bad("escalations"))?,
    })
}

/// Escalations as the `escalations` column stores them (an `INTEGER`); a count that does not fit,
/// which no real schedule reaches, stays at the largest.
pub(super) fn escalations_column(escalations: u32) -> i32 {
    i32::try_from(escalations).unwrap_or(i32::MAX)
}

/// The `addressing` column: how the sender addressed a referral beyond one recipient (a
/// broadcast's candidates, the agencies it named to be notified, the referral it follows) and the
/// consent it recorded, as JSON; NULL for referrals recorded before consent, with none of the rest.
/// Consent lives here rather than in columns of its own: the broker reads it with the referral,
/// never queries by it, and so it costs no migration and no wider insert.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Addressing {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    candidates: Vec<AgencyId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    notify: Vec<AgencyId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    follows: Option<ReferralId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    consent: Option<Consent>,
}

/// The `addressing` column of a new referral ([`Addressing`]).
pub(super) fn addressing_column(r: &Referral) -> Result<Option<String>, StoreError> {
    if r.candidates.is_empty() && r.notify.is_empty() && r.follows.is_none() && r.consent.is_none()
    {
        return Ok(None);
    }
    let addressing = Addressing {
        candidates: r.candidates.clone(),
        notify: r.notify.clone(),
        follows: r.follows,
        consent: r.consent.clone(),
    };
    serde_json::to_string(&addressing)
        .map(Some)
        .map_err(|e| undecodable("referrals", e))
}

/// The `recipient` column: empty while a broadcast waits for a candidate to accept it.
pub(super) fn recipient_column(raw: &str) -> Result<Option<AgencyId>, StoreError> {
    if raw.is_empty() {
        return Ok(None);
    }
    AgencyId::parse("recipient", raw)
        .map(Some)
        .map_err(|_| corrupt("referrals", "recipient"))
}

/// The stored form of a referral's recipient ([`recipient_column`]).
pub(super) fn recipient_text(recipient: Option<&AgencyId>) -> &str {
    recipient.map_or("", |r| r.as_str())
}

/// Who may see a new referral, each as a party or as notified: its sender, its recipient or a
/// broadcast's candidates (parties: every later event goes to them), and the agencies its sender
/// named (notified).
pub(super) fn access_of(r: &Referral) -> Vec<(&AgencyId, &'static str)> {
    let mut access = vec![(&r.sender, "party")];
    access.extend(r.recipient.iter().map(|a| (a, "party")));
    access.extend(r.candidates.iter().map(|a| (a, "party")));
    access.extend(r.notify.iter().map(|a| (a, "notified")));
    access
}

/// The `id`, `sender` and `recipient` columns of a referral row.
pub(super) fn parties_now(row: &impl Columns) -> Result<super::PartiesNow, StoreError> {
    let bad = |what: &str| corrupt("referrals", what);
    Ok(super::PartiesNow {
        referral_id: ReferralId::parse("id", &row.text("id")?).map_err(|_| bad("id"))?,
        sender: AgencyId::parse("sender", &row.text("sender")?).map_err(|_| bad("sender"))?,
        recipient: recipient_column(&row.text("recipient")?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the `details` column holds reads back whole: the details, the next visit and the
    /// sealed free text, for every shape of details.
    #[test]
    fn details_with_sealed_text_read_back_whole() {
        let delegated = EventDetails::FollowUpDelegated {
            to: crate::ids::AgencyId::parse("to", "dosvy-24").unwrap(),
            reason: FreeText::default(),
            follow_up_part: Sealed::new(vec![1, 2, 3]),
        };
        for details in [EventDetails::None, delegated] {
            let mut event = Event::recorded(
                ReferralId::new(),
                EventKind::FollowUpDelegated,
                crate::ids::AgencyId::parse("actor", "mlup-russey").unwrap(),
                time::OffsetDateTime::UNIX_EPOCH,
                crate::referral::State::Accepted,
                details.clone(),
            );
            event.sealed_text = Sealed::new(vec![9; 40]);
            let column = details_column(&event).unwrap();
            let (read, (next_visit, sealed_text)) = stored_details(&column).unwrap();
            assert_eq!(read, details, "{column}");
            assert_eq!(next_visit, None);
            assert_eq!(sealed_text, event.sealed_text);
        }
    }
}
