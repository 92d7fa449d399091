//! Follow-up visits and their delegation, read from a referral's history, with no I/O: who makes
//! the visits now (the recipient, or the agency it delegated them to), which visits were made and
//! which missed, and whether the next one is upcoming, due or overdue at a given moment.
//!
//! The broker writes the schedule into the history: every event that moves it (an acceptance, a
//! visit, a missed visit) carries `next_visit`, so the newest event carrying one says when the next
//! visit is due. Everything here takes the history oldest first, as the store returns it (event ids
//! are UUIDv7, so id order is time order).

use prost_types::Timestamp;
use serde::Serialize;
use spean_proto::v1::{
    Delegation, FeedbackEvent, FeedbackKind, NextVisit, feedback_event::Details,
};

use crate::{referral::is_closed, store::timestamp};

/// Where the next visit stands at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VisitStatus {
    /// Before its due date.
    Upcoming,
    /// Due (from its due date), and not late yet: within the schedule's grace.
    Due,
    /// Past its due date plus grace: the broker records it as missed.
    Overdue,
}

impl VisitStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upcoming => "upcoming",
            Self::Due => "due",
            Self::Overdue => "overdue",
        }
    }

    /// Whether the agency making the visits has something to do now.
    pub fn needs_a_visit(self) -> bool {
        matches!(self, Self::Due | Self::Overdue)
    }
}

/// The status of `next` at `now` (Unix seconds): due once `now >= due_at`, overdue once
/// `now > due_at + grace`. `None` when the broker gave no due date.
pub fn visit_status(next: &NextVisit, now: i64) -> Option<VisitStatus> {
    let due_at = next.due_at.as_ref()?.seconds;
    let late_after = due_at.saturating_add(i64::from(next.grace_seconds));
    Some(if now > late_after {
        VisitStatus::Overdue
    } else if now >= due_at {
        VisitStatus::Due
    } else {
        VisitStatus::Upcoming
    })
}

/// A visit made: a FOLLOW_UP event. What another agency's visit was is hidden from a notified party
/// or a delegate (a skeleton): then only when and who.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Visit {
    /// The visit's date as recorded (YYYY-MM-DD), or the event's time when hidden.
    pub date: String,
    /// e.g. `home_visit`; empty when hidden.
    pub activity: String,
    /// The agency that made the visit.
    pub agency: String,
    /// Who made it there; empty when hidden.
    pub person: String,
}

/// A visit missed: a FOLLOW_UP_OVERDUE event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Missed {
    /// When the visit was due (RFC 3339 UTC), or the event's time when hidden.
    pub due_at: String,
    /// 1 for the first visit missed in a row, 2 for the second, ...; 0 when hidden.
    pub missed_in_a_row: u32,
    /// The agency that was to make it.
    pub agency: String,
}

/// A referral's follow-up schedule as its history tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Schedule {
    /// When the next visit is due (RFC 3339 UTC); `None` when nothing is scheduled (a kind the
    /// directory does not schedule, not accepted yet, or closed).
    pub next_due_at: Option<String>,
    pub grace_seconds: Option<u32>,
    pub every_seconds: Option<u32>,
    /// The next visit's status at the moment the schedule was read.
    pub status: Option<VisitStatus>,
    pub visits: Vec<Visit>,
    pub missed: Vec<Missed>,
}

impl Schedule {
    /// Reads the schedule of a referral in `state` from its `history` (oldest first) at `now` (Unix
    /// seconds). A closed referral has no next visit.
    pub fn read(history: &[FeedbackEvent], state: &str, now: i64) -> Self {
        let next = if is_closed(state) {
            None
        } else {
            latest_next_visit(history)
        };
        Self {
            next_due_at: next.map(|n| timestamp(n.due_at.as_ref())),
            grace_seconds: next.map(|n| n.grace_seconds),
            every_seconds: next.map(|n| n.every_seconds),
            status: next.and_then(|n| visit_status(n, now)),
            visits: history.iter().filter_map(visit).collect(),
            missed: history.iter().filter_map(missed).collect(),
        }
    }
}

/// The newest `next_visit` in the history: when the next visit is due.
pub fn latest_next_visit(history: &[FeedbackEvent]) -> Option<&NextVisit> {
    history.iter().rev().find_map(|e| e.next_visit.as_ref())
}

fn visit(event: &FeedbackEvent) -> Option<Visit> {
    if event.kind != FeedbackKind::FollowUp as i32 {
        return None;
    }
    let (date, activity) = match &event.details {
        Some(Details::FollowUp(f)) => (f.date.clone(), f.activity.clone()),
        _ => (timestamp(event.at.as_ref()), String::new()),
    };
    Some(Visit {
        date,
        activity,
        agency: event.actor_agency_id.clone(),
        person: event.actor_person.clone(),
    })
}

fn missed(event: &FeedbackEvent) -> Option<Missed> {
    if event.kind != FeedbackKind::FollowUpOverdue as i32 {
        return None;
    }
    let (due_at, missed_in_a_row) = match &event.details {
        Some(Details::FollowUpOverdue(m)) => (due(m.due_at.as_ref(), event), m.missed_in_a_row),
        _ => (timestamp(event.at.as_ref()), 0),
    };
    Some(Missed {
        due_at,
        missed_in_a_row,
        agency: event.actor_agency_id.clone(),
    })
}

fn due(due_at: Option<&Timestamp>, event: &FeedbackEvent) -> String {
    due_at.map_or_else(|| timestamp(event.at.as_ref()), |at| timestamp(Some(at)))
}

/// The delegation in force: the newest FOLLOW_UP_DELEGATED event with no DELEGATION_REVOKED after
/// it. Its details are hidden from a notified party (a skeleton), so the agency may be unknown.
pub fn active_delegation(history: &[FeedbackEvent]) -> Option<&FeedbackEvent> {
    history.iter().rev().find_map(|e| match kind(e) {
        Some(FeedbackKind::FollowUpDelegated) => Some(Some(e)),
        Some(FeedbackKind::DelegationRevoked) => Some(None),
        _ => None,
    })?
}

/// The agency an active delegation names, when its details are not hidden.
pub fn delegated_to(delegation: &FeedbackEvent) -> Option<&Delegation> {
    match &delegation.details {
        Some(Details::Delegated(d)) => Some(d),
        _ => None,
    }
}

/// The follow-up part of the case file (encoded `CaseFile`) that the delegation in force hands
/// to `agency`, if it is `agency`'s and carries one.
pub fn follow_up_part_for<'a>(history: &'a [FeedbackEvent], agency: &str) -> Option<&'a [u8]> {
    active_delegation(history)
        .and_then(delegated_to)
        .filter(|d| d.to_agency_id == agency && !d.follow_up_case_file.is_empty())
        .map(|d| d.follow_up_case_file.as_slice())
}

/// Whether the follow-up visits are `agency`'s to make: it is the recipient and has delegated none,
/// or the delegation in force is to it.
pub fn follow_up_is_with(history: &[FeedbackEvent], recipient: &str, agency: &str) -> bool {
    match active_delegation(history) {
        None => recipient == agency,
        Some(delegation) => delegated_to(delegation).is_some_and(|d| d.to_agency_id == agency),
    }
}

/// The delegations to `agency` that are no longer in force and still hold a follow-up part: each
/// has a revocation, or another delegation, after it. There is at most one delegate at a time, so
/// whatever comes after a delegation ends it, even when its details are hidden or name another
/// agency (whose delegation could only start after ours ended).
pub fn ended_delegations_holding_a_part<'a>(
    history: &'a [FeedbackEvent],
    agency: &str,
) -> Vec<&'a FeedbackEvent> {
    history
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            delegated_to(e)
                .is_some_and(|d| d.to_agency_id == agency && !d.follow_up_case_file.is_empty())
        })
        .filter(|(i, _)| history[i + 1..].iter().any(moves_the_delegation))
        .map(|(_, e)| e)
        .collect()
}

/// Whether an event starts or ends a delegation.
pub fn moves_the_delegation(event: &FeedbackEvent) -> bool {
    matches!(
        kind(event),
        Some(FeedbackKind::FollowUpDelegated | FeedbackKind::DelegationRevoked)
    )
}

/// `event` without the follow-up part its delegation carried; other events as they are.
pub fn without_follow_up_part(event: &FeedbackEvent) -> FeedbackEvent {
    let mut stripped = event.clone();
    if let Some(Details::Delegated(d)) = stripped.details.as_mut() {
        d.follow_up_case_file.clear();
    }
    stripped
}

fn kind(event: &FeedbackEvent) -> Option<FeedbackKind> {
    FeedbackKind::try_from(event.kind).ok()
}

#[cfg(test)]
mod tests {
    use spean_proto::v1::{FollowUp, MissedVisit};

    use super::*;

    const DUE: i64 = 1_800_000_000;

    fn next(due_at: i64, grace_seconds: u32) -> NextVisit {
        NextVisit {
            due_at: Some(Timestamp {
                seconds: due_at,
                nanos: 0,
            }),
            grace_seconds,
            every_seconds: 7 * 86_400,
        }
    }

    fn event(n: u8, kind: FeedbackKind, details: Option<Details>) -> FeedbackEvent {
        FeedbackEvent {
            event_id: format!("0000000{n}"),
            kind: kind as i32,
            actor_agency_id: "agency-b".into(),
            details,
            ..FeedbackEvent::default()
        }
    }

    fn delegation(n: u8, to: &str, part: &[u8]) -> FeedbackEvent {
        event(
            n,
            FeedbackKind::FollowUpDelegated,
            Some(Details::Delegated(Delegation {
                to_agency_id: to.into(),
                reason: "ជិតផ្ទះ".into(),
                follow_up_case_file: part.to_vec(),
            })),
        )
    }

    fn revocation(n: u8, from: &str) -> FeedbackEvent {
        event(
            n,
            FeedbackKind::DelegationRevoked,
            Some(Details::DelegationRevoked(Delegation {
                to_agency_id: from.into(),
                ..Delegation::default()
            })),
        )
    }

    #[test]
    fn a_visit_is_upcoming_then_due_then_overdue_after_its_grace() {
        let visit = next(DUE, 3_600);
        assert_eq!(visit_status(&visit, DUE - 1), Some(VisitStatus::Upcoming));
        assert_eq!(visit_status(&visit, DUE), Some(VisitStatus::Due));
        assert_eq!(visit_status(&visit, DUE + 3_600), Some(VisitStatus::Due));
        assert_eq!(
            visit_status(&visit, DUE + 3_601),
            Some(VisitStatus::Overdue)
        );
        assert_eq!(
            visit_status(&next(DUE, 0), DUE + 1),
            Some(VisitStatus::Overdue)
        );
        assert_eq!(visit_status(&NextVisit::default(), DUE), None);
    }

    #[test]
    fn the_newest_next_visit_sets_the_schedule_and_a_closed_referral_has_none() {
        let mut accepted = event(1, FeedbackKind::Accepted, None);
        accepted.next_visit = Some(next(DUE - 86_400, 0));
        let mut visited = event(
            2,
            FeedbackKind::FollowUp,
            Some(Details::FollowUp(FollowUp {
                activity: "home_visit".into(),
                date: "2027-01-14".into(),
            })),
        );
        visited.actor_person = "សុភា".into();
        visited.next_visit = Some(next(DUE, 3_600));
        let mut missed = event(
            3,
            FeedbackKind::FollowUpOverdue,
            Some(Details::FollowUpOverdue(MissedVisit {
                due_at: Some(Timestamp {
                    seconds: DUE,
                    nanos: 0,
                }),
                missed_in_a_row: 1,
            })),
        );
        missed.next_visit = Some(next(DUE + 7 * 86_400, 3_600));
        let history = [accepted, visited, missed];

        let schedule = Schedule::read(&history, "in_progress", DUE + 7 * 86_400);
        assert_eq!(schedule.status, Some(VisitStatus::Due));
        assert_eq!(schedule.grace_seconds, Some(3_600));
        assert_eq!(schedule.visits.len(), 1);
        assert_eq!(schedule.visits[0].person, "សុភា");
        assert_eq!(schedule.visits[0].date, "2027-01-14");
        assert_eq!(schedule.missed.len(), 1);
        assert_eq!(
            schedule.missed[0].due_at,
            timestamp(next(DUE, 0).due_at.as_ref())
        );

        let closed = Schedule::read(&history, "completed", DUE + 7 * 86_400);
        assert_eq!(closed.next_due_at, None);
        assert_eq!(closed.status, None);
        assert_eq!(closed.visits.len(), 1);
    }

    #[test]
    fn the_follow_up_goes_to_the_delegate_and_comes_back_on_revocation() {
        let delegated = vec![delegation(1, "agency-c", b"part")];
        assert!(follow_up_is_with(&delegated, "agency-b", "agency-c"));
        assert!(!follow_up_is_with(&delegated, "agency-b", "agency-b"));
        assert_eq!(
            follow_up_part_for(&delegated, "agency-c"),
            Some(&b"part"[..])
        );
        assert_eq!(follow_up_part_for(&delegated, "agency-d"), None);

        let revoked = vec![
            delegation(1, "agency-c", b"part"),
            revocation(2, "agency-c"),
        ];
        assert!(active_delegation(&revoked).is_none());
        assert!(follow_up_is_with(&revoked, "agency-b", "agency-b"));
        assert!(!follow_up_is_with(&revoked, "agency-b", "agency-c"));
        assert_eq!(follow_up_part_for(&revoked, "agency-c"), None);
    }

    #[test]
    fn only_ended_delegations_to_this_agency_lose_their_part() {
        let history = vec![
            delegation(1, "agency-c", b"old"),
            revocation(2, "agency-c"),
            delegation(3, "agency-d", b"other"),
            revocation(4, "agency-d"),
            delegation(5, "agency-c", b"new"),
        ];
        let ended = ended_delegations_holding_a_part(&history, "agency-c");
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].event_id, "00000001");
        let stripped = without_follow_up_part(ended[0]);
        assert_eq!(
            delegated_to(&stripped).map(|d| d.follow_up_case_file.len()),
            Some(0)
        );
        assert_eq!(
            delegated_to(&stripped).map(|d| d.reason.as_str()),
            Some("ជិតផ្ទះ")
        );
    }
}
