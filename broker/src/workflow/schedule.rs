//! A referral's one timer: its acknowledgement deadline while it waits for an answer, then, once
//! accepted, its follow-up schedule.
//!
//! The timer lives in the store beside the referral ([`crate::store::DeadlineChange`]) and moves
//! with the change that moves the referral, so every broker reads the same timer and a timer
//! survives restarts. A timer that falls due becomes one versioned change (an escalation, or a
//! missed visit), so of several brokers, or of a broker and a crossing action, one writes it.
//!
//! The follow-up schedule: accepting a referral of a kind the directory schedules starts it from
//! the acceptance's planned date (the acceptance itself if that date is past): the first visit is
//! due one interval after. Each follow-up recorded moves the next visit to one interval after it.
//! A visit not recorded by its due date plus the schedule's grace is missed: the broker records a
//! `follow_up_overdue` event, once, and the next visit is due one interval after the missed one.

use std::time::Duration;

use time::OffsetDateTime;

use super::{Workflow, change_for};
use crate::directory::{Directory, FollowUpSchedule};
use crate::error::BrokerError;
use crate::ids::AgencyId;
use crate::referral::state::{EventKind, State};
use crate::referral::{Event, EventDetails, NextVisit, Referral};
use crate::store::{Change, DeadlineChange, DueDeadline, NEVER, Snapshot};

/// Cambodia's offset from UTC: a planned date is a day in Cambodia.
const CAMBODIA: time::UtcOffset = time::macros::offset!(+7);

impl Workflow {
    /// What an event of `kind` with `details`, recorded at `at` on `referral`, does to the
    /// referral's timer, and the next visit to stamp on the event (for the events that move a
    /// follow-up schedule).
    pub(super) async fn timer_after(
        &self,
        referral: &Referral,
        kind: EventKind,
        details: &EventDetails,
        at: OffsetDateTime,
    ) -> Result<(DeadlineChange, Option<NextVisit>), BrokerError> {
        let directory = self.directory().await?;
        let schedule = directory.follow_up_schedule(&referral.kind);
        Ok(match kind {
            // A new deadline starts for the new recipient.
            EventKind::Redirected => {
                match self
                    .acknowledgement_deadline(&referral.kind, referral.urgency)
                    .await?
                {
                    Some(d) => (
                        DeadlineChange::Set {
                            due_at: at + d,
                            escalations: 0,
                        },
                        None,
                    ),
                    None => (DeadlineChange::Clear, None),
                }
            }
            // An acceptance answers the deadline and starts the schedule.
            EventKind::Accepted => match schedule {
                Some(schedule) => {
                    let start = planned_start(details).map_or(at, |planned| planned.max(at));
                    visit_due(schedule, start + schedule.every)
                }
                None => (DeadlineChange::Clear, None),
            },
            EventKind::FollowUp => match schedule {
                Some(schedule) if matches!(referral.state, State::Accepted | State::InProgress) => {
                    visit_due(schedule, at + schedule.every)
                }
                _ => (DeadlineChange::Keep, None),
            },
            // The delegate learns when the next visit is due from its delegation.
            EventKind::FollowUpDelegated => {
                let next = match (schedule, self.store.deadline(referral.id).await?) {
                    (Some(schedule), Some(timer)) if timer.due_at != NEVER => {
                        Some(next_visit(schedule, timer.due_at - schedule.grace))
                    }
                    _ => None,
                };
                (DeadlineChange::Keep, next)
            }
            // A human answered, or the loop closed: nothing more falls due.
            EventKind::Acknowledged
            | EventKind::Declined
            | EventKind::Withdrawn
            | EventKind::EnteredInError
            | EventKind::Completed
            | EventKind::Failed
            | EventKind::ConsentWithdrawn => (DeadlineChange::Clear, None),
            _ => (DeadlineChange::Keep, None),
        })
    }
}

/// The timer for a visit due at `due` (it falls due when the visit is missed), and the next visit
/// to stamp.
fn visit_due(
    schedule: FollowUpSchedule,
    due: OffsetDateTime,
) -> (DeadlineChange, Option<NextVisit>) {
    (
        DeadlineChange::Set {
            due_at: due + schedule.grace,
            escalations: 0,
        },
        Some(next_visit(schedule, due)),
    )
}

fn next_visit(schedule: FollowUpSchedule, due: OffsetDateTime) -> NextVisit {
    NextVisit {
        due_at: due,
        grace_seconds: seconds(schedule.grace),
        every_seconds: seconds(schedule.every),
    }
}

fn seconds(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// The start of an acceptance's planned date, in Cambodia.
fn planned_start(details: &EventDetails) -> Option<OffsetDateTime> {
    let EventDetails::Accepted { planned_date, .. } = details else {
        return None;
    };
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let day = time::Date::parse(planned_date, format).ok()?;
    Some(
        day.midnight()
            .assume_offset(CAMBODIA)
            .to_offset(time::UtcOffset::UTC),
    )
}

/// The missed visit of the referral read in `snapshot`, whose timer `due` fell due: the event (the
/// silence of `responsible`, the recipient or its delegate, at `now`), delivered to every party
/// (the delegate included) and to the network's coordinators for the subject's province, who
/// become notified parties; and the next visit, one interval after the missed one. A kind the
/// directory no longer schedules records the missed visit and keeps no timer.
pub(super) fn missed_visit(
    directory: &Directory,
    snapshot: &Snapshot,
    responsible: AgencyId,
    due: &DueDeadline,
    now: OffsetDateTime,
    carry: bool,
    held: Option<Duration>,
) -> Change {
    let referral = &snapshot.referral;
    let schedule = directory.follow_up_schedule(&referral.kind);
    let grace = schedule.map_or(Duration::ZERO, |s| s.grace);
    let visit_was_due = due.due_at - grace;
    let told = directory.coordinators(&referral.subject.province);
    let (timer, next) = match schedule {
        Some(schedule) => {
            let (timer, next) = visit_due(schedule, visit_was_due + schedule.every);
            let timer = match timer {
                DeadlineChange::Set { due_at, .. } => DeadlineChange::Set {
                    due_at,
                    escalations: due.escalations.saturating_add(1),
                },
                other => other,
            };
            (timer, next)
        }
        None => (DeadlineChange::Clear, None),
    };
    let mut event = Event::recorded(
        referral.id,
        EventKind::FollowUpOverdue,
        responsible,
        now,
        referral.state,
        EventDetails::FollowUpOverdue {
            due_at: visit_was_due,
            missed_in_a_row: due.escalations.saturating_add(1),
            told: told.clone(),
        },
    );
    event.next_visit = next;
    let mut change = change_for(snapshot, event, referral.state, None, &told, carry, held);
    change.deadline = timer;
    change
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::referral::FreeText;

    #[test]
    fn a_planned_date_starts_at_midnight_in_cambodia() {
        let details = EventDetails::Accepted {
            planned_action: FreeText::default(),
            planned_date: "2026-12-05".into(),
        };
        assert_eq!(
            planned_start(&details),
            Some(time::macros::datetime!(2026-12-04 17:00 UTC))
        );
        assert_eq!(planned_start(&EventDetails::None), None);
    }

    #[test]
    fn a_visit_falls_due_after_its_grace() {
        let schedule = FollowUpSchedule {
            every: Duration::from_secs(30 * 86_400),
            grace: Duration::from_secs(7 * 86_400),
        };
        let due = time::macros::datetime!(2027-01-04 17:00 UTC);
        let (timer, next) = visit_due(schedule, due);
        assert_eq!(
            timer,
            DeadlineChange::Set {
                due_at: time::macros::datetime!(2027-01-11 17:00 UTC),
                escalations: 0
            }
        );
        let next = next.unwrap();
        assert_eq!(next.due_at, due);
        assert_eq!(
            next.missed_at(),
            time::macros::datetime!(2027-01-11 17:00 UTC)
        );
        assert_eq!(next.every_seconds, 30 * 86_400);
    }
}
