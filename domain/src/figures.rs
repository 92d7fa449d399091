//! The network's figures for a period, as agencies write them in donor reports ("42 (17 F)
//! reintegrated children received follow-up visits") and as coordinators watch the network: counts
//! split by sex, and how long agencies take to answer. Pure computation over referrals and their
//! histories; the caller loads them and applies any filter (province, agency) first.
//!
//! # Definitions
//! The period is `[from, to)`: an instant `t` is in it when `from <= t < to`.
//!
//! - **Sent in the period**: a referral whose `created_at` is in the period. Only these are
//!   counted in `referrals`, `by_kind`, `by_state` (its current state), `by_province` (its
//!   subject's province), `by_sex`, `by_age_band` and `decline_reasons`, and only these are timed.
//! - **Decline reasons**: for each reason code of a `Declined` event in the history of a referral
//!   sent in the period, the referrals declined with it (a referral counts once per code). The
//!   reason's text is never read: it is free text a person wrote.
//! - **Time to acknowledge**: the first event of kind `Acknowledged`, `Accepted` or `Declined` (the
//!   first human answer) minus `created_at`. **Time to accept**: the first `Accepted` event minus
//!   `created_at`. Both in whole seconds (truncated; a negative gap from clock skew counts as 0),
//!   whenever the answer came, even after the period.
//! - **Percentiles** use the nearest-rank method: the p-th percentile of `n` sorted samples is the
//!   value at rank `ceil(p / 100 * n)` (1-based). The median is the 50th percentile by the same
//!   rule, so with an even count it is the lower of the two middle values, never an average.
//!   `None` when there is no sample.
//! - **Acknowledgement due**: referrals sent in the period that were answered (acknowledged,
//!   accepted or declined) or escalated (an `Escalated` event), whenever. **Acknowledged within
//!   deadline**: those whose first answer comes in their history before any `Escalated` event.
//! - **Followed up**: referrals, whenever sent, with at least one `FollowUp` event in the period;
//!   **follow-up visits**: the number of those events. **Missed visits**: `FollowUpOverdue` events
//!   in the period; **escalations**: `Escalated` events in the period, whenever the referral was
//!   sent.
//! - **Emergency exceptions**: referrals sent in the period without consent, under their kind's
//!   emergency exception. **Consent withdrawals**: `ConsentWithdrawn` events in the period,
//!   whenever the referral was sent.
//! - A [`Count`]'s `female` counts the referrals among `total` whose subject is
//!   [`Sex::Female`]; visits, missed visits and escalations count events, as plain numbers.
//!
//! # Groups
//! [`Report::total`] (key `"all"`) covers every referral given; [`Report::by_agency`] groups by the
//! referral's current recipient (key: the agency id), [`Report::by_province`] by its subject's
//! province (key: the province code). A referral is in a group when it was sent in the period or
//! has a follow-up visit, missed visit or escalation in it, so an agency whose only activity was
//! visiting children referred last year still has its row. Groups are sorted by key, and so are
//! the tallies (`Vec<(key, Count)>`, holding only the keys that occur), except age bands, which
//! come youngest first (`"0-4"`, `"5-9"`, `"10-14"`, …, `"60+"`, `"unknown"`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use time::OffsetDateTime;

use crate::referral::{Event, EventDetails, EventKind, Referral, Sex};

/// A number of referrals and how many of them are about women and girls, because agencies and
/// their donors report every figure split that way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Count {
    pub total: u32,
    /// Of `total`, the referrals whose subject is [`Sex::Female`].
    pub female: u32,
}

impl Count {
    fn add(&mut self, female: bool) {
        self.total = self.total.saturating_add(1);
        if female {
            self.female = self.female.saturating_add(1);
        }
    }
}

/// Prints `42 (17 F)`, the way agencies write a count in their reports.
impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} F)", self.total, self.female)
    }
}

/// The figures of one group of referrals for the period (see the module documentation for what
/// each one means).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Figures {
    /// The recipient agency's id, the province code, or `"all"`.
    pub key: String,
    /// Referrals sent in the period.
    pub referrals: Count,
    /// How fast agencies answer a referral at all: the measure of a working referral pathway.
    pub median_seconds_to_acknowledge: Option<u64>,
    /// The slow tail a median hides: the referrals left waiting.
    pub p90_seconds_to_acknowledge: Option<u64>,
    /// How fast a child or family actually gets a service.
    pub median_seconds_to_accept: Option<u64>,
    pub p90_seconds_to_accept: Option<u64>,
    /// Of `acknowledgement_due`, those answered before any escalation: the share that met the
    /// deadline.
    pub acknowledged_within_deadline: u32,
    /// Referrals sent in the period that were answered or escalated.
    pub acknowledgement_due: u32,
    /// Why referrals were declined, by reason code: where services are missing.
    pub decline_reasons: Vec<(String, Count)>,
    pub by_kind: Vec<(String, Count)>,
    /// By current state.
    pub by_state: Vec<(String, Count)>,
    /// By the subject's province.
    pub by_province: Vec<(String, Count)>,
    pub by_sex: Vec<(String, Count)>,
    pub by_age_band: Vec<(String, Count)>,
    /// Referrals, whenever sent, with a follow-up visit recorded in the period: the count donors
    /// ask for ("42 (17 F) children received follow-up visits").
    pub followed_up: Count,
    /// Follow-up visits recorded in the period.
    pub follow_up_visits: u32,
    /// Follow-up visits missed in the period.
    pub missed_visits: u32,
    /// Escalations fired in the period.
    pub escalations: u32,
    /// Referrals sent in the period without consent, under their kind's emergency exception:
    /// coordinators check each one was justified.
    pub emergency_exceptions: Count,
    /// Consents withdrawn in the period.
    pub consent_withdrawals: u32,
}

/// The figures for a period: the whole of what was given, and the same per agency and per
/// province, so a coordinator sees where the pathway is slow and an agency has its own rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Start of the period, included.
    pub from: OffsetDateTime,
    /// End of the period, excluded.
    pub to: OffsetDateTime,
    /// Every referral given, key `"all"`.
    pub total: Figures,
    /// Per current recipient agency, sorted by agency id.
    pub by_agency: Vec<Figures>,
    /// Per subject province, sorted by province code.
    pub by_province: Vec<Figures>,
}

/// The key [`Report::by_agency`] counts a broadcast under while no candidate has accepted it.
pub const UNPLACED: &str = "(no candidate yet)";

/// Computes the figures of `referrals` (each with its history, oldest first) for the period
/// `[from, to)`. The caller has already kept only the referrals the reader may count.
pub fn report(
    referrals: &[(Referral, Vec<Event>)],
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Report {
    let period = Period { from, to };
    let mut total = Group::default();
    let mut by_agency: BTreeMap<&str, Group<'_>> = BTreeMap::new();
    let mut by_province: BTreeMap<&str, Group<'_>> = BTreeMap::new();
    for (referral, history) in referrals {
        let part = Part::of(referral, history, period);
        if part.is_empty() {
            continue;
        }
        total.add(&part);
        by_agency
            .entry(referral.recipient.as_ref().map_or(UNPLACED, |r| r.as_str()))
            .or_default()
            .add(&part);
        by_province
            .entry(referral.subject.province.as_str())
            .or_default()
            .add(&part);
    }
    Report {
        from,
        to,
        total: total.finish("all"),
        by_agency: by_agency
            .into_iter()
            .map(|(key, group)| group.finish(key))
            .collect(),
        by_province: by_province
            .into_iter()
            .map(|(key, group)| group.finish(key))
            .collect(),
    }
}

#[derive(Debug, Clone, Copy)]
struct Period {
    from: OffsetDateTime,
    to: OffsetDateTime,
}

impl Period {
    fn contains(self, t: OffsetDateTime) -> bool {
        self.from <= t && t < self.to
    }
}

/// What one referral adds to every group it is in, worked out once.
struct Part<'a> {
    female: bool,
    /// Present when the referral was sent in the period.
    sent: Option<Sent<'a>>,
    visits: u32,
    missed: u32,
    escalations: u32,
    consent_withdrawals: u32,
}

/// What a referral sent in the period adds.
struct Sent<'a> {
    kind: &'a str,
    state: &'static str,
    province: &'a str,
    sex: &'static str,
    age_band: &'static str,
    seconds_to_acknowledge: Option<u64>,
    seconds_to_accept: Option<u64>,
    due: bool,
    within_deadline: bool,
    decline_reasons: BTreeSet<&'a str>,
    emergency_exception: bool,
}

impl<'a> Part<'a> {
    fn of(referral: &'a Referral, history: &'a [Event], period: Period) -> Self {
        let in_period = |kind: EventKind| {
            let n = history
                .iter()
                .filter(|e| e.kind == kind && period.contains(e.at))
                .count();
            // A history never holds 4 billion events; saturate rather than wrap if it did.
            u32::try_from(n).unwrap_or(u32::MAX)
        };
        Part {
            female: referral.subject.sex == Sex::Female,
            sent: period
                .contains(referral.created_at)
                .then(|| Sent::of(referral, history)),
            visits: in_period(EventKind::FollowUp),
            missed: in_period(EventKind::FollowUpOverdue),
            escalations: in_period(EventKind::Escalated),
            consent_withdrawals: in_period(EventKind::ConsentWithdrawn),
        }
    }

    /// Nothing to count: the referral is in no group.
    fn is_empty(&self) -> bool {
        self.sent.is_none()
            && self.visits == 0
            && self.missed == 0
            && self.escalations == 0
            && self.consent_withdrawals == 0
    }
}

impl<'a> Sent<'a> {
    fn of(referral: &'a Referral, history: &'a [Event]) -> Self {
        let first = |kinds: &[EventKind]| history.iter().position(|e| kinds.contains(&e.kind));
        let answer = first(&[
            EventKind::Acknowledged,
            EventKind::Accepted,
            EventKind::Declined,
        ]);
        let accept = first(&[EventKind::Accepted]);
        let escalation = first(&[EventKind::Escalated]);
        let seconds = |index: Option<usize>| {
            index
                .and_then(|i| history.get(i))
                .map(|e| u64::try_from((e.at - referral.created_at).whole_seconds()).unwrap_or(0))
        };
        let decline_reasons = history
            .iter()
            .filter_map(|e| match &e.details {
                EventDetails::Declined { reason_code, .. } => Some(reason_code.as_str()),
                _ => None,
            })
            .collect();
        Sent {
            kind: referral.kind.as_str(),
            state: referral.state.as_str(),
            province: referral.subject.province.as_str(),
            sex: referral.subject.sex.as_str(),
            age_band: referral.subject.age_band.as_str(),
            seconds_to_acknowledge: seconds(answer),
            seconds_to_accept: seconds(accept),
            due: answer.is_some() || escalation.is_some(),
            within_deadline: match (answer, escalation) {
                (Some(a), Some(e)) => a < e,
                (Some(_), None) => true,
                (None, _) => false,
            },
            decline_reasons,
            emergency_exception: referral
                .consent
                .as_ref()
                .is_some_and(|c| c.emergency_exception().is_some()),
        }
    }
}

/// The running figures of one group, before the samples are sorted and the tallies listed.
#[derive(Default)]
struct Group<'a> {
    referrals: Count,
    to_acknowledge: Vec<u64>,
    to_accept: Vec<u64>,
    within_deadline: u32,
    due: u32,
    decline_reasons: BTreeMap<&'a str, Count>,
    by_kind: BTreeMap<&'a str, Count>,
    by_state: BTreeMap<&'a str, Count>,
    by_province: BTreeMap<&'a str, Count>,
    by_sex: BTreeMap<&'a str, Count>,
    by_age_band: BTreeMap<&'a str, Count>,
    followed_up: Count,
    visits: u32,
    missed: u32,
    escalations: u32,
    emergency_exceptions: Count,
    consent_withdrawals: u32,
}

impl<'a> Group<'a> {
    fn add(&mut self, part: &Part<'a>) {
        let female = part.female;
        if let Some(sent) = &part.sent {
            self.referrals.add(female);
            self.to_acknowledge.extend(sent.seconds_to_acknowledge);
            self.to_accept.extend(sent.seconds_to_accept);
            if sent.due {
                self.due = self.due.saturating_add(1);
            }
            if sent.within_deadline {
                self.within_deadline = self.within_deadline.saturating_add(1);
            }
            for reason in &sent.decline_reasons {
                self.decline_reasons.entry(reason).or_default().add(female);
            }
            self.by_kind.entry(sent.kind).or_default().add(female);
            self.by_state.entry(sent.state).or_default().add(female);
            self.by_province
                .entry(sent.province)
                .or_default()
                .add(female);
            self.by_sex.entry(sent.sex).or_default().add(female);
            self.by_age_band
                .entry(sent.age_band)
                .or_default()
                .add(female);
            if sent.emergency_exception {
                self.emergency_exceptions.add(female);
            }
        }
        if part.visits > 0 {
            self.followed_up.add(female);
        }
        self.visits = self.visits.saturating_add(part.visits);
        self.missed = self.missed.saturating_add(part.missed);
        self.escalations = self.escalations.saturating_add(part.escalations);
        self.consent_withdrawals = self
            .consent_withdrawals
            .saturating_add(part.consent_withdrawals);
    }

    fn finish(mut self, key: &str) -> Figures {
        self.to_acknowledge.sort_unstable();
        self.to_accept.sort_unstable();
        let listed = |tally: BTreeMap<&str, Count>| {
            tally
                .into_iter()
                .map(|(key, count)| (key.to_owned(), count))
                .collect()
        };
        Figures {
            key: key.to_owned(),
            referrals: self.referrals,
            median_seconds_to_acknowledge: percentile(&self.to_acknowledge, 50),
            p90_seconds_to_acknowledge: percentile(&self.to_acknowledge, 90),
            median_seconds_to_accept: percentile(&self.to_accept, 50),
            p90_seconds_to_accept: percentile(&self.to_accept, 90),
            acknowledged_within_deadline: self.within_deadline,
            acknowledgement_due: self.due,
            decline_reasons: listed(self.decline_reasons),
            by_kind: listed(self.by_kind),
            by_state: listed(self.by_state),
            by_province: listed(self.by_province),
            by_sex: listed(self.by_sex),
            by_age_band: in_age_order(listed(self.by_age_band)),
            followed_up: self.followed_up,
            follow_up_visits: self.visits,
            missed_visits: self.missed,
            escalations: self.escalations,
            emergency_exceptions: self.emergency_exceptions,
            consent_withdrawals: self.consent_withdrawals,
        }
    }
}

/// Age bands youngest first, as a report reads them, rather than as text (`"10-14"` before
/// `"5-9"`).
fn in_age_order(mut bands: Vec<(String, Count)>) -> Vec<(String, Count)> {
    bands.sort_by_key(|(band, _)| {
        crate::referral::AgeBand::ALL
            .iter()
            .position(|a| a.as_str() == band)
            .unwrap_or(usize::MAX)
    });
    bands
}

/// The `p`-th percentile (1 to 100) of `sorted` by the nearest-rank method: the value at rank
/// `ceil(p / 100 * n)`. Always one of the samples, so a median of times is a time some referral
/// actually took.
fn percentile(sorted: &[u64], p: usize) -> Option<u64> {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::ids::{AgencyId, ClientRef, ProvinceCode, ReferralId};
    use crate::referral::{Addressee, AgeBand, Code, FreeText, Sealed, State, Subject, Urgency};

    const FROM: OffsetDateTime = datetime!(2025-01-01 0:00 UTC);
    const TO: OffsetDateTime = datetime!(2025-04-01 0:00 UTC);

    fn agency(raw: &str) -> AgencyId {
        AgencyId::parse("agency", raw).unwrap()
    }

    fn referral(
        recipient: &str,
        kind: &str,
        sex: Sex,
        age_band: AgeBand,
        province: &str,
        state: State,
        created_at: OffsetDateTime,
    ) -> Referral {
        Referral {
            id: ReferralId::new(),
            client_ref: ClientRef::parse("client_ref", "ref-1").unwrap(),
            fingerprint: String::new(),
            sender: agency("sender-ngo"),
            addressee: Addressee::Agency(agency(recipient)),
            recipient: Some(agency(recipient)),
            kind: Code::parse("kind", kind).unwrap(),
            urgency: Urgency::Routine,
            subject: Subject {
                sex,
                age_band,
                province: ProvinceCode::parse("province", province).unwrap(),
            },
            client_pseudonym: None,
            candidates: Vec::new(),
            notify: Vec::new(),
            follows: None,
            consent: None,
            state,
            version: 1,
            created_at,
            updated_at: created_at,
            case_file: Sealed::new(Vec::new()),
        }
    }

    fn event(r: &Referral, kind: EventKind, at: OffsetDateTime) -> Event {
        Event {
            id: uuid::Uuid::nil(),
            referral_id: r.id,
            kind,
            actor: r.recipient.clone().unwrap(),
            actor_person: FreeText::default(),
            at,
            note: FreeText::default(),
            state_after: r.state,
            details: EventDetails::None,
            request_id: None,
            next_visit: None,
            sealed_text: Default::default(),
        }
    }

    fn declined(r: &Referral, reason: &str, at: OffsetDateTime) -> Event {
        Event {
            details: EventDetails::Declined {
                reason_code: Code::parse("reason_code", reason).unwrap(),
                reason_text: FreeText::from_stored("the shelter is full".to_owned()),
            },
            ..event(r, EventKind::Declined, at)
        }
    }

    fn secs(n: i64) -> time::Duration {
        time::Duration::seconds(n)
    }

    fn tally(rows: &[(&str, u32, u32)]) -> Vec<(String, Count)> {
        rows.iter()
            .map(|&(key, total, female)| (key.to_owned(), Count { total, female }))
            .collect()
    }

    fn count(total: u32, female: u32) -> Count {
        Count { total, female }
    }

    /// The first quarter of 2025 for two agencies in Phnom Penh (12) and Siem Reap (17), plus one
    /// referral sent before the quarter and one after it.
    fn quarter() -> Vec<(Referral, Vec<Event>)> {
        use EventKind::*;
        let mut all = Vec::new();

        // R1: reintegration, girl 10-14, Phnom Penh, with ngo-a. Acknowledged in 1 h, accepted
        // in 2 h; visits in the quarter (two), on its last instant excluded (`to`), and after.
        let at = datetime!(2025-01-10 0:00 UTC);
        let r1 = referral(
            "ngo-a",
            "reintegration",
            Sex::Female,
            AgeBand::Age10To14,
            "12",
            State::InProgress,
            at,
        );
        let h1 = vec![
            event(&r1, Submitted, at),
            event(&r1, Delivered, at + secs(60)),
            event(&r1, Acknowledged, at + secs(3_600)),
            event(&r1, Accepted, at + secs(7_200)),
            event(&r1, InProgress, at + secs(86_400)),
            event(&r1, FollowUp, datetime!(2025-02-10 9:00 UTC)),
            event(&r1, FollowUp, datetime!(2025-03-10 9:00 UTC)),
            event(&r1, FollowUp, TO),
            event(&r1, FollowUpOverdue, datetime!(2025-04-20 0:00 UTC)),
        ];
        all.push((r1, h1));

        // R2: reintegration, boy 15-17, Siem Reap, with ngo-b: declined after 30 min.
        let at = datetime!(2025-02-01 8:00 UTC);
        let r2 = referral(
            "ngo-b",
            "reintegration",
            Sex::Male,
            AgeBand::Age15To17,
            "17",
            State::Declined,
            at,
        );
        let h2 = vec![
            event(&r2, Submitted, at),
            event(&r2, Delivered, at + secs(10)),
            declined(&r2, "no_capacity", at + secs(1_800)),
        ];
        all.push((r2, h2));

        // R3: legal aid, woman 18-24, Phnom Penh, with ngo-b: escalated after 2 days, then
        // acknowledged after 3: due, not within the deadline.
        let at = datetime!(2025-03-01 8:00 UTC);
        let r3 = referral(
            "ngo-b",
            "legal_aid",
            Sex::Female,
            AgeBand::Age18To24,
            "12",
            State::Acknowledged,
            at,
        );
        let h3 = vec![
            event(&r3, Submitted, at),
            event(&r3, Delivered, at + secs(5)),
            event(&r3, Escalated, at + secs(172_800)),
            event(&r3, Acknowledged, at + secs(259_200)),
        ];
        all.push((r3, h3));

        // R4: health, sex and age unknown, Siem Reap, with ngo-a: never answered, escalated
        // after the quarter: due (escalated) though its escalation is not in the quarter.
        let at = datetime!(2025-03-20 8:00 UTC);
        let r4 = referral(
            "ngo-a",
            "health",
            Sex::Unknown,
            AgeBand::Unknown,
            "17",
            State::Delivered,
            at,
        );
        let h4 = vec![
            event(&r4, Submitted, at),
            event(&r4, Delivered, at + secs(30)),
            event(&r4, Escalated, datetime!(2025-04-02 8:00 UTC)),
        ];
        all.push((r4, h4));

        // R5: reintegration, girl 5-9, Siem Reap, with ngo-a, sent in November: only its visit on
        // the quarter's first instant and a missed visit count.
        let at = datetime!(2024-11-01 8:00 UTC);
        let r5 = referral(
            "ngo-a",
            "reintegration",
            Sex::Female,
            AgeBand::Age5To9,
            "17",
            State::InProgress,
            at,
        );
        let h5 = vec![
            event(&r5, Submitted, at),
            event(&r5, Acknowledged, at + secs(600)),
            event(&r5, Accepted, at + secs(86_400)),
            event(&r5, FollowUp, datetime!(2024-12-15 9:00 UTC)),
            event(&r5, FollowUp, FROM),
            event(&r5, FollowUpOverdue, datetime!(2025-02-20 0:00 UTC)),
        ];
        all.push((r5, h5));

        // R6: sent after the quarter, by another agency in another province: in no figure.
        let at = datetime!(2025-04-02 8:00 UTC);
        let r6 = referral(
            "ngo-c",
            "legal_aid",
            Sex::Female,
            AgeBand::Age25To59,
            "03",
            State::Declined,
            at,
        );
        let h6 = vec![
            event(&r6, Submitted, at),
            declined(&r6, "out_of_area", at + secs(60)),
        ];
        all.push((r6, h6));

        // R7: reintegration, girl 10-14, Phnom Penh, with ngo-a: accepted straight away after
        // 90 min (its first answer), one visit in the quarter.
        let at = datetime!(2025-01-20 8:00 UTC);
        let r7 = referral(
            "ngo-a",
            "reintegration",
            Sex::Female,
            AgeBand::Age10To14,
            "12",
            State::Accepted,
            at,
        );
        let h7 = vec![
            event(&r7, Submitted, at),
            event(&r7, Delivered, at + secs(20)),
            event(&r7, Accepted, at + secs(5_400)),
            event(&r7, FollowUp, datetime!(2025-03-01 9:00 UTC)),
        ];
        all.push((r7, h7));

        all
    }

    #[test]
    fn the_whole_network_counts_referrals_sent_in_the_quarter_and_visits_made_in_it() {
        let report = report(&quarter(), FROM, TO);
        assert_eq!(report.from, FROM);
        assert_eq!(report.to, TO);
        // Sent in the quarter: R1, R2, R3, R4, R7; girls and women: R1, R3, R7.
        // To acknowledge: R2 1800, R1 3600, R7 5400, R3 259200 → median rank 2, p90 rank 4.
        // To accept: R7 5400, R1 7200 → median rank 1, p90 rank 2.
        // Due: R1, R2, R3, R7 answered, R4 escalated; within: R1, R2, R7.
        // Visits: R1 twice, R7, R5 at `from`; missed: R5; escalations: R3.
        let expected = Figures {
            key: "all".to_owned(),
            referrals: count(5, 3),
            median_seconds_to_acknowledge: Some(3_600),
            p90_seconds_to_acknowledge: Some(259_200),
            median_seconds_to_accept: Some(5_400),
            p90_seconds_to_accept: Some(7_200),
            acknowledged_within_deadline: 3,
            acknowledgement_due: 5,
            decline_reasons: tally(&[("no_capacity", 1, 0)]),
            by_kind: tally(&[
                ("health", 1, 0),
                ("legal_aid", 1, 1),
                ("reintegration", 3, 2),
            ]),
            by_state: tally(&[
                ("accepted", 1, 1),
                ("acknowledged", 1, 1),
                ("declined", 1, 0),
                ("delivered", 1, 0),
                ("in_progress", 1, 1),
            ]),
            by_province: tally(&[("12", 3, 3), ("17", 2, 0)]),
            by_sex: tally(&[("female", 3, 3), ("male", 1, 0), ("unknown", 1, 0)]),
            by_age_band: tally(&[
                ("10-14", 2, 2),
                ("15-17", 1, 0),
                ("18-24", 1, 1),
                ("unknown", 1, 0),
            ]),
            followed_up: count(3, 3),
            follow_up_visits: 4,
            missed_visits: 1,
            escalations: 1,
            emergency_exceptions: Count::default(),
            consent_withdrawals: 0,
        };
        assert_eq!(report.total, expected);
        assert_eq!(
            report.total.followed_up.to_string(),
            "3 (3 F)",
            "the donor report's sentence"
        );
    }

    #[test]
    fn each_recipient_agency_has_its_own_figures_including_follow_ups_of_older_referrals() {
        let report = report(&quarter(), FROM, TO);
        // ngo-a: sent R1, R4, R7; R5 (sent in November) only for its visit and missed visit.
        // To acknowledge: 3600, 5400; to accept: 5400, 7200. Due: R1, R7, R4; within: R1, R7.
        let ngo_a = Figures {
            key: "ngo-a".to_owned(),
            referrals: count(3, 2),
            median_seconds_to_acknowledge: Some(3_600),
            p90_seconds_to_acknowledge: Some(5_400),
            median_seconds_to_accept: Some(5_400),
            p90_seconds_to_accept: Some(7_200),
            acknowledged_within_deadline: 2,
            acknowledgement_due: 3,
            decline_reasons: Vec::new(),
            by_kind: tally(&[("health", 1, 0), ("reintegration", 2, 2)]),
            by_state: tally(&[
                ("accepted", 1, 1),
                ("delivered", 1, 0),
                ("in_progress", 1, 1),
            ]),
            by_province: tally(&[("12", 2, 2), ("17", 1, 0)]),
            by_sex: tally(&[("female", 2, 2), ("unknown", 1, 0)]),
            by_age_band: tally(&[("10-14", 2, 2), ("unknown", 1, 0)]),
            followed_up: count(3, 3),
            follow_up_visits: 4,
            missed_visits: 1,
            escalations: 0,
            emergency_exceptions: Count::default(),
            consent_withdrawals: 0,
        };
        // ngo-b: R2 declined, R3 escalated then acknowledged. Never accepted.
        let ngo_b = Figures {
            key: "ngo-b".to_owned(),
            referrals: count(2, 1),
            median_seconds_to_acknowledge: Some(1_800),
            p90_seconds_to_acknowledge: Some(259_200),
            median_seconds_to_accept: None,
            p90_seconds_to_accept: None,
            acknowledged_within_deadline: 1,
            acknowledgement_due: 2,
            decline_reasons: tally(&[("no_capacity", 1, 0)]),
            by_kind: tally(&[("legal_aid", 1, 1), ("reintegration", 1, 0)]),
            by_state: tally(&[("acknowledged", 1, 1), ("declined", 1, 0)]),
            by_province: tally(&[("12", 1, 1), ("17", 1, 0)]),
            by_sex: tally(&[("female", 1, 1), ("male", 1, 0)]),
            by_age_band: tally(&[("15-17", 1, 0), ("18-24", 1, 1)]),
            followed_up: count(0, 0),
            follow_up_visits: 0,
            missed_visits: 0,
            escalations: 1,
            emergency_exceptions: Count::default(),
            consent_withdrawals: 0,
        };
        assert_eq!(
            report.by_agency,
            vec![ngo_a, ngo_b],
            "ngo-c sent nothing in the quarter"
        );
    }

    #[test]
    fn each_province_has_its_own_figures_sorted_by_code() {
        let report = report(&quarter(), FROM, TO);
        // Phnom Penh (12): R1, R3, R7. To acknowledge 3600, 5400, 259200: median rank 2, p90 rank 3.
        let phnom_penh = Figures {
            key: "12".to_owned(),
            referrals: count(3, 3),
            median_seconds_to_acknowledge: Some(5_400),
            p90_seconds_to_acknowledge: Some(259_200),
            median_seconds_to_accept: Some(5_400),
            p90_seconds_to_accept: Some(7_200),
            acknowledged_within_deadline: 2,
            acknowledgement_due: 3,
            decline_reasons: Vec::new(),
            by_kind: tally(&[("legal_aid", 1, 1), ("reintegration", 2, 2)]),
            by_state: tally(&[
                ("accepted", 1, 1),
                ("acknowledged", 1, 1),
                ("in_progress", 1, 1),
            ]),
            by_province: tally(&[("12", 3, 3)]),
            by_sex: tally(&[("female", 3, 3)]),
            by_age_band: tally(&[("10-14", 2, 2), ("18-24", 1, 1)]),
            followed_up: count(2, 2),
            follow_up_visits: 3,
            missed_visits: 0,
            escalations: 1,
            emergency_exceptions: Count::default(),
            consent_withdrawals: 0,
        };
        // Siem Reap (17): R2 and R4 sent, R5 visited. One sample to acknowledge: it is both the
        // median and the 90th percentile.
        let siem_reap = Figures {
            key: "17".to_owned(),
            referrals: count(2, 0),
            median_seconds_to_acknowledge: Some(1_800),
            p90_seconds_to_acknowledge: Some(1_800),
            median_seconds_to_accept: None,
            p90_seconds_to_accept: None,
            acknowledged_within_deadline: 1,
            acknowledgement_due: 2,
            decline_reasons: tally(&[("no_capacity", 1, 0)]),
            by_kind: tally(&[("health", 1, 0), ("reintegration", 1, 0)]),
            by_state: tally(&[("declined", 1, 0), ("delivered", 1, 0)]),
            by_province: tally(&[("17", 2, 0)]),
            by_sex: tally(&[("male", 1, 0), ("unknown", 1, 0)]),
            by_age_band: tally(&[("15-17", 1, 0), ("unknown", 1, 0)]),
            followed_up: count(1, 1),
            follow_up_visits: 1,
            missed_visits: 1,
            escalations: 0,
            emergency_exceptions: Count::default(),
            consent_withdrawals: 0,
        };
        assert_eq!(
            report.by_province,
            vec![phnom_penh, siem_reap],
            "03 sent nothing in it"
        );
    }

    #[test]
    fn an_empty_period_has_no_groups_and_no_times() {
        let report = report(&quarter(), TO, TO);
        assert_eq!(
            report.total,
            Figures {
                key: "all".to_owned(),
                ..Figures::default()
            }
        );
        assert!(report.by_agency.is_empty());
        assert!(report.by_province.is_empty());
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[], 90), None);
        assert_eq!(percentile(&[7], 50), Some(7));
        assert_eq!(percentile(&[7], 90), Some(7));
        // An even count: the median is the lower middle value, not the mean of the two.
        assert_eq!(percentile(&[10, 20], 50), Some(10));
        assert_eq!(percentile(&[10, 20, 30, 40], 50), Some(20));
        assert_eq!(percentile(&[10, 20, 30, 40], 90), Some(40));
        let ten: Vec<u64> = (1..=10).collect();
        assert_eq!(percentile(&ten, 50), Some(5));
        assert_eq!(percentile(&ten, 90), Some(9));
        let eleven: Vec<u64> = (1..=11).collect();
        assert_eq!(percentile(&eleven, 50), Some(6));
        assert_eq!(percentile(&eleven, 90), Some(10));
    }

    #[test]
    fn age_bands_come_youngest_first() {
        let bands = in_age_order(tally(&[
            ("10-14", 1, 1),
            ("5-9", 1, 0),
            ("unknown", 1, 0),
            ("0-4", 1, 1),
        ]));
        let keys: Vec<&str> = bands.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["0-4", "5-9", "10-14", "unknown"]);
    }

    #[test]
    fn a_count_prints_the_way_agencies_report_it() {
        assert_eq!(count(42, 17).to_string(), "42 (17 F)");
        assert_eq!(Count::default().to_string(), "0 (0 F)");
    }

    #[test]
    fn emergency_exceptions_and_consent_withdrawals_are_counted_for_coordinators() {
        use crate::referral::{Consent, ConsentGiver, EventDetails};
        let at = datetime!(2025-02-01 8:00 UTC);
        let mut excepted = referral(
            "ngo-a",
            "child_protection",
            Sex::Female,
            AgeBand::Age5To9,
            "12",
            State::Withdrawn,
            at,
        );
        excepted.consent = Some(Consent::EmergencyException {
            reason: Code::parse("r", "immediate_danger").unwrap(),
        });
        let withdrawn = Event {
            details: EventDetails::ConsentWithdrawn {
                by: ConsentGiver::Guardian,
                at: at + secs(60),
            },
            ..event(&excepted, EventKind::ConsentWithdrawn, at + secs(120))
        };
        let history = vec![event(&excepted, EventKind::Submitted, at), withdrawn];
        // Sent last year, consent withdrawn in the quarter: counted as a withdrawal only.
        let mut older = referral(
            "ngo-b",
            "medical",
            Sex::Male,
            AgeBand::Age25To59,
            "17",
            State::Completed,
            datetime!(2024-06-01 8:00 UTC),
        );
        older.consent = Some(
            Consent::given(
                ConsentGiver::Client,
                older.created_at,
                [crate::referral::Sharing::Referral],
            )
            .unwrap(),
        );
        let older_history = vec![event(&older, EventKind::ConsentWithdrawn, at)];
        let report = report(&[(excepted, history), (older, older_history)], FROM, TO);
        assert_eq!(report.total.emergency_exceptions, count(1, 1));
        assert_eq!(report.total.consent_withdrawals, 2);
        assert_eq!(report.total.referrals, count(1, 1));
        let ngo_b = report.by_agency.iter().find(|f| f.key == "ngo-b").unwrap();
        assert_eq!(ngo_b.consent_withdrawals, 1);
        assert_eq!(ngo_b.emergency_exceptions, Count::default());
    }
}
