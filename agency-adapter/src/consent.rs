//! What this agency deletes once a referral's consent is withdrawn: the case file, everything people
//! wrote in its history (who acted, notes, reasons, summaries, planned actions), a delegation's
//! follow-up part, and what its outbox kept of requests about it. The envelope and the history's
//! kinds, actors, times, codes and dates stay, so the agency's records and the network's figures
//! still add up; the deletion itself is recorded in `withdrawn_case_files`.
//!
//! It runs in the transaction that stores anything about a referral, once the referral has a
//! `consent_withdrawn` event. So whatever order deliveries arrive in (a copy of the referral
//! delivered again after the withdrawal, an earlier event late), nothing deleted comes back.

use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use spean_proto::v1::{FeedbackEvent, feedback_event::Details};

use crate::{AdapterError, at_rest::Vault};

/// Why a case file was deleted, as `withdrawn_case_files.because` records it.
pub const BECAUSE_CONSENT_WITHDRAWN: &str = "consent_withdrawn";

/// The status and reason given to requests about the referral that were still waiting to be sent.
const NOT_SENT: &str = "consent for this referral was withdrawn; the request was not sent";

thread_local! {
    /// Set when [`forget_if_withdrawn`] deleted something in the transaction running on this
    /// thread; the store's writer takes it after the commit ([`take_forgot`]).
    static FORGOT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks that the transaction running on this thread deleted something (consent, retention), so
/// the store's writer empties the write-ahead log after the commit.
pub(crate) fn mark_forgot() {
    FORGOT.with(|f| f.set(true));
}

/// Whether the transaction that just ran on this thread deleted anything, clearing the mark.
pub(crate) fn take_forgot() -> bool {
    FORGOT.with(|f| f.replace(false))
}

/// Deletes what this agency holds of `referral_id` beyond its envelope and the history's kinds
/// and times, if its consent was withdrawn; true if there was anything left to delete. One
/// indexed probe when it was not.
pub(crate) fn forget_if_withdrawn(
    conn: &Connection,
    vault: &Vault,
    referral_id: &str,
) -> Result<bool, AdapterError> {
    let withdrawn_by: Option<String> = conn
        .prepare_cached(
            "SELECT actor_agency_id FROM events \
             WHERE referral_id = ?1 AND kind = 'consent_withdrawn' LIMIT 1",
        )?
        .query_row(params![referral_id], |row| row.get(0))
        .optional()?;
    let Some(withdrawn_by) = withdrawn_by else {
        return Ok(false);
    };
    let mut forgot = conn
        .prepare_cached(
            "UPDATE referrals SET case_file = x'' \
             WHERE referral_id = ?1 AND length(case_file) > 0",
        )?
        .execute(params![referral_id])?
        > 0;
    forgot |= forget_what_people_wrote(conn, vault, referral_id)?;
    // The outbox kept each request as it was asked (and sealed): the texts go, the rows stay so
    // that their keys still answer; those not sent yet never will be. The withdrawal itself stays
    // as it is, sealed copy included (it holds who withdrew and when, nothing written): run again
    // with its key, the command still finds it the same, and a second sender of it (the daemon
    // and the command racing for the row, with this agency's own copy of the event delivered in
    // between) sends the very bytes the broker recorded, not a sealing of its own that the
    // broker would take for another action under the same key.
    let sealed_copies = conn
        .prepare_cached(
            "DELETE FROM outbox_sealed WHERE request_id IN \
             (SELECT request_id FROM outbox \
              WHERE referral_id = ?1 AND operation <> 'withdraw_consent')",
        )?
        .execute(params![referral_id])?;
    let requests = conn
        .prepare_cached(
            "UPDATE outbox SET payload = x'', \
               error = CASE status WHEN 'pending' THEN ?2 ELSE error END, \
               status = CASE status WHEN 'pending' THEN 'rejected' ELSE status END \
             WHERE referral_id = ?1 AND length(payload) > 0 AND operation <> 'withdraw_consent'",
        )?
        .execute(params![referral_id, NOT_SENT])?;
    forgot |= sealed_copies > 0 || requests > 0;
    if forgot {
        mark_forgot();
        crate::store::record_withdrawal(
            conn,
            referral_id,
            &withdrawn_by,
            BECAUSE_CONSENT_WITHDRAWN,
        )?;
        // Ids only.
        tracing::info!(%referral_id, %withdrawn_by, "consent withdrawn: case file and notes deleted");
    }
    Ok(forgot)
}

/// Rewrites every stored event of `referral_id` (but the consent withdrawal, which holds nothing
/// written) without what people wrote ([`without_what_people_wrote`]), sealed again; true if any
/// changed. Shared by consent and retention (`crate::retention`).
pub(crate) fn forget_what_people_wrote(
    conn: &Connection,
    vault: &Vault,
    referral_id: &str,
) -> Result<bool, AdapterError> {
    let written: Vec<(String, Vec<u8>)> = {
        let mut statement = conn.prepare_cached(
            "SELECT event_id, encoded FROM events WHERE referral_id = ?1 \
             AND kind <> 'consent_withdrawn'",
        )?;
        let rows = statement.query_map(params![referral_id], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let mut rewrite = conn.prepare_cached(
        "UPDATE events SET actor_person = '', note = '', encoded = ?1 WHERE event_id = ?2",
    )?;
    let mut forgot = false;
    for (event_id, sealed) in written {
        let event = crate::store::open_event(vault, &event_id, &sealed)?;
        let kept = without_what_people_wrote(&event);
        if kept != event {
            let encoded = vault.seal(crate::at_rest::EVENT, &event_id, &kept.encode_to_vec())?;
            rewrite.execute(params![encoded, event_id])?;
            forgot = true;
        }
    }
    Ok(forgot)
}

/// `event` without what people wrote or sealed: no person, note, sealed text, free text in its
/// details, re-sealed case file or follow-up part. Codes, dates, agencies and times stay.
pub fn without_what_people_wrote(event: &FeedbackEvent) -> FeedbackEvent {
    let mut kept = event.clone();
    kept.actor_person.clear();
    kept.note.clear();
    kept.sealed_text.clear();
    match &mut kept.details {
        Some(Details::Accepted(a)) => a.planned_action.clear(),
        Some(Details::Declined(d)) => d.reason_text.clear(),
        Some(Details::Redirected(r)) => {
            r.reason.clear();
            r.case_file.clear();
        }
        Some(Details::Completed(o)) => o.summary.clear(),
        Some(Details::Failed(f)) => f.reason.clear(),
        Some(Details::Delegated(d)) | Some(Details::DelegationRevoked(d)) => {
            d.reason.clear();
            d.follow_up_case_file.clear();
        }
        Some(
            Details::FollowUp(_)
            | Details::Escalated(_)
            | Details::FollowUpOverdue(_)
            | Details::ConsentWithdrawn(_)
            | Details::EmergencyException(_),
        )
        | None => {}
    }
    kept
}

#[cfg(test)]
mod tests {
    use spean_proto::v1::{Acceptance, Delegation, FollowUp};

    use super::*;

    #[test]
    fn what_people_wrote_goes_and_codes_and_dates_stay() {
        let accepted = FeedbackEvent {
            event_id: "e".into(),
            actor_agency_id: "mlup-russey".into(),
            actor_person: "សុភា".into(),
            note: "ជួបគ្រួសារ".into(),
            sealed_text: vec![1, 2, 3],
            details: Some(Details::Accepted(Acceptance {
                planned_action: "home visit".into(),
                planned_date: "2026-12-10".into(),
            })),
            ..Default::default()
        };
        let kept = without_what_people_wrote(&accepted);
        assert_eq!(
            kept,
            FeedbackEvent {
                event_id: "e".into(),
                actor_agency_id: "mlup-russey".into(),
                details: Some(Details::Accepted(Acceptance {
                    planned_action: String::new(),
                    planned_date: "2026-12-10".into(),
                })),
                ..Default::default()
            }
        );
        let delegated = FeedbackEvent {
            details: Some(Details::Delegated(Delegation {
                to_agency_id: "dosvy-24".into(),
                reason: "nearer".into(),
                follow_up_case_file: vec![9; 10],
            })),
            ..Default::default()
        };
        let Some(Details::Delegated(d)) = without_what_people_wrote(&delegated).details else {
            panic!("the delegation stays a delegation");
        };
        assert_eq!(d.to_agency_id, "dosvy-24");
        assert!(d.reason.is_empty() && d.follow_up_case_file.is_empty());
        let visit = FeedbackEvent {
            details: Some(Details::FollowUp(FollowUp {
                activity: "home_visit".into(),
                date: "2026-12-11".into(),
            })),
            ..Default::default()
        };
        assert_eq!(without_what_people_wrote(&visit), visit);
    }
}
