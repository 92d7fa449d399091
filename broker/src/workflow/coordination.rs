//! What coordinators and provincial departments read: the overdue list, one referral's timeline,
//! and the figures of a period; and an agency's own figures.
//!
//! Who may ask is the directory's to say: an agency of type `coordinator` or `authority`
//! oversees the provinces the directory lists for it, or the whole country if it serves `*`
//! ([`crate::directory::Directory::oversight`]). Anyone else is refused, and so is a province
//! outside the caller's. Nothing here reads a case file or free text: a timeline is the view of a
//! notified party, and figures are counts and times.

use std::collections::HashMap;

use spean_domain::figures::{self, Report};
use time::OffsetDateTime;

use super::Workflow;
use crate::error::{BrokerError, FieldError};
use crate::ids::{AgencyId, ProvinceCode, ReferralId};
use crate::referral::state::{EventKind, State};
use crate::referral::{
    Audience, Code, Event, EventDetails, Referral, ReferralView, Urgency, delegate_in,
};
use crate::store::DueDeadline;

/// Most timers read for one overdue list: far more than a network has overdue at once.
const OVERDUE_SCAN: u32 = 10_000;
/// Most referrals read for one period's figures.
const FIGURES_SCAN: u32 = 200_000;
/// Referrals read back per round trip for figures.
const FIGURES_CHUNK: usize = 500;

/// Why a referral is on the overdue list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverdueReason {
    NotAcknowledged,
    FollowUpMissed,
}

/// One referral on the overdue list.
#[derive(Debug, Clone)]
pub struct Overdue {
    /// Without its case file.
    pub referral: Referral,
    pub reason: OverdueReason,
    /// The recipient, or the delegate of its follow-up; `None` for a broadcast no candidate has
    /// acknowledged, which waits on all its candidates.
    pub waiting_on: Option<AgencyId>,
    /// The deadline that passed, or the due date of the first visit missed in a row.
    pub since: OffsetDateTime,
    /// Escalation tiers fired, or visits missed in a row.
    pub times: u32,
    /// Agencies told by its escalations so far.
    pub escalated_to: Vec<AgencyId>,
}

/// The overdue list's filters and page.
#[derive(Debug, Clone, Default)]
pub struct OverdueFilter {
    pub province: Option<ProvinceCode>,
    pub agency: Option<AgencyId>,
    pub kind: Option<Code>,
    pub urgency: Option<Urgency>,
    pub limit: usize,
    /// How many of the list's entries earlier pages had.
    pub offset: usize,
}

/// The provinces a caller oversees: `None` for the whole country.
type Scope = Option<Vec<String>>;

impl Workflow {
    /// The provinces `agency` oversees, or PERMISSION_DENIED if it oversees none; and, if it asks
    /// about one `province`, that this is one of them.
    async fn scope(
        &self,
        agency: &AgencyId,
        province: Option<&ProvinceCode>,
    ) -> Result<Scope, BrokerError> {
        let directory = self.directory().await?;
        let scope = directory.oversight(agency).ok_or_else(|| {
            BrokerError::Forbidden(format!(
                "{agency} is not a coordinator or a provincial authority in the directory; only they read the network's overdue list, timelines and figures"
            ))
        })?;
        if let (Some(province), Some(own)) = (province, &scope)
            && !own.iter().any(|p| p == province.as_str())
        {
            return Err(BrokerError::Forbidden(format!(
                "province {province} is outside the provinces {agency} oversees ({})",
                own.join(", ")
            )));
        }
        Ok(scope)
    }

    /// The referrals overdue now in the caller's provinces, filtered, oldest overdue first, one
    /// page; and whether more follow.
    pub async fn overdue(
        &self,
        agency: &AgencyId,
        filter: &OverdueFilter,
    ) -> Result<(Vec<Overdue>, bool), BrokerError> {
        let scope = self.scope(agency, filter.province.as_ref()).await?;
        let now = self.now();
        let timers = self.store.overdue_timers(now, OVERDUE_SCAN).await?;
        let timer_of: HashMap<ReferralId, DueDeadline> =
            timers.iter().map(|t| (t.referral_id, t.clone())).collect();
        let ids: Vec<ReferralId> = timers.iter().map(|t| t.referral_id).collect();
        let mut list = Vec::new();
        for chunk in ids.chunks(FIGURES_CHUNK) {
            for (mut referral, history) in self.store.referrals_with_history(chunk).await? {
                if !in_scope(&scope, &referral) {
                    continue;
                }
                let Some(timer) = timer_of.get(&referral.id) else {
                    continue;
                };
                referral.case_file = Default::default();
                if let Some(entry) = overdue_entry(referral, &history, timer)
                    && matches(filter, &entry)
                {
                    list.push(entry);
                }
            }
        }
        list.sort_by_key(|a| (a.since, a.referral.id));
        let more = list.len() > filter.offset + filter.limit;
        let page = list
            .into_iter()
            .skip(filter.offset)
            .take(filter.limit)
            .collect();
        Ok((page, more))
    }

    /// One referral in the caller's provinces as a notified party sees it: envelope, state and
    /// the skeleton of its history.
    pub async fn timeline(
        &self,
        agency: &AgencyId,
        id: ReferralId,
    ) -> Result<(ReferralView, Vec<Event>), BrokerError> {
        let scope = self.scope(agency, None).await?;
        let not_found = || BrokerError::NotFound(format!("referral {id} not found"));
        let referral = self.store.referral(id).await?.ok_or_else(not_found)?;
        if !in_scope(&scope, &referral) {
            // Said the same way as an unknown id: a department learns nothing of other provinces.
            return Err(not_found());
        }
        let history = self.store.history(id).await?;
        Ok((referral.as_seen_by_as(agency, Audience::Notified), history))
    }

    /// The figures of `[from, to)` for the caller's provinces, or one of them.
    pub async fn network_figures(
        &self,
        agency: &AgencyId,
        from: OffsetDateTime,
        to: OffsetDateTime,
        province: Option<&ProvinceCode>,
    ) -> Result<Report, BrokerError> {
        let scope = self.scope(agency, province).await?;
        let referrals = self
            .active_between(from, to, |r| {
                in_scope(&scope, r) && province.is_none_or(|p| &r.subject.province == p)
            })
            .await?;
        Ok(figures::report(&referrals, from, to))
    }

    /// The figures of `[from, to)` for the referrals `agency` sent or received: what any agency
    /// reports to its donors. `province` narrows them to subjects of one province.
    pub async fn own_figures(
        &self,
        agency: &AgencyId,
        from: OffsetDateTime,
        to: OffsetDateTime,
        province: Option<&ProvinceCode>,
    ) -> Result<Report, BrokerError> {
        let referrals = self
            .active_between(from, to, |r| {
                (&r.sender == agency || r.recipient.as_ref() == Some(agency))
                    && province.is_none_or(|p| &r.subject.province == p)
            })
            .await?;
        Ok(figures::report(&referrals, from, to))
    }

    /// The referrals active in `[from, to)` that `keep` keeps, with their histories and without
    /// case files.
    async fn active_between(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
        keep: impl Fn(&Referral) -> bool,
    ) -> Result<Vec<(Referral, Vec<Event>)>, BrokerError> {
        if to <= from {
            return Err(FieldError::new("to", "must be after from").into());
        }
        let ids = self
            .store
            .referrals_active_between(from, to, FIGURES_SCAN)
            .await?;
        let mut kept = Vec::new();
        for chunk in ids.chunks(FIGURES_CHUNK) {
            for (mut referral, history) in self.store.referrals_with_history(chunk).await? {
                if keep(&referral) {
                    referral.case_file = Default::default();
                    kept.push((referral, history));
                }
            }
        }
        Ok(kept)
    }
}

fn in_scope(scope: &Scope, referral: &Referral) -> bool {
    scope
        .as_ref()
        .is_none_or(|own| own.iter().any(|p| p == referral.subject.province.as_str()))
}

fn matches(filter: &OverdueFilter, entry: &Overdue) -> bool {
    let r = &entry.referral;
    filter
        .province
        .as_ref()
        .is_none_or(|p| &r.subject.province == p)
        && filter
            .agency
            .as_ref()
            .is_none_or(|a| match &entry.waiting_on {
                Some(waiting_on) => waiting_on == a,
                None => r.candidates.contains(a),
            })
        && filter.kind.as_ref().is_none_or(|k| &r.kind == k)
        && filter.urgency.is_none_or(|u| r.urgency == u)
}

/// The overdue entry of a referral with this timer, if it is overdue: waiting for an
/// acknowledgement past its deadline, or followed up with a visit missed.
fn overdue_entry(referral: Referral, history: &[Event], timer: &DueDeadline) -> Option<Overdue> {
    // Events since the referral last reached a recipient (its submission or last redirect).
    let since_reached = history
        .iter()
        .rposition(|e| matches!(e.kind, EventKind::Submitted | EventKind::Redirected))
        .map_or(history, |at| &history[at..]);
    match referral.state {
        State::Sent | State::Delivered => {
            let escalations: Vec<&Event> = since_reached
                .iter()
                .filter(|e| e.kind == EventKind::Escalated)
                .collect();
            let escalated_to = escalations
                .iter()
                .flat_map(|e| match &e.details {
                    EventDetails::Escalated { to, .. } => to.clone(),
                    _ => Vec::new(),
                })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let since = escalations.first().map_or(timer.due_at, |e| e.at);
            Some(Overdue {
                waiting_on: referral.recipient.clone(),
                reason: OverdueReason::NotAcknowledged,
                since,
                times: timer.escalations,
                escalated_to,
                referral,
            })
        }
        State::Accepted | State::InProgress if timer.escalations > 0 => {
            // The first visit of the run missed since the last one made.
            let since = history
                .iter()
                .rev()
                .take_while(|e| e.kind != EventKind::FollowUp)
                .filter_map(|e| match &e.details {
                    EventDetails::FollowUpOverdue { due_at, .. } => Some(*due_at),
                    _ => None,
                })
                .min()?;
            Some(Overdue {
                waiting_on: delegate_in(history).or_else(|| referral.recipient.clone()),
                reason: OverdueReason::FollowUpMissed,
                since,
                times: timer.escalations,
                escalated_to: Vec::new(),
                referral,
            })
        }
        _ => None,
    }
}
