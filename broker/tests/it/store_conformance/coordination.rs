//! What coordinators and provincial departments read, on each store: the overdue list in their
//! provinces with its filters and pages, a timeline without free text, refusals outside their
//! scope, and the figures of a seeded quarter against counts made independently here.

use std::collections::BTreeMap;

use spean_broker::error::BrokerError;
use spean_broker::ids::{ProvinceCode, ReferralId, RequestId};
use spean_broker::referral::{Action, Code, EventDetails, EventKind, FreeText, Urgency};
use spean_broker::workflow::{OverdueFilter, OverdueReason, Workflow};
use spean_proto::v1 as pb;
use time::{Duration, OffsetDateTime};

use super::escalation::{TestClock, agency, workflow};
use super::fixture::Fixture;

fn act(id: ReferralId, key: &str, kind: EventKind, details: EventDetails) -> Action {
    Action {
        referral_id: id,
        request_id: RequestId::parse("request_id", key).unwrap(),
        actor_person: FreeText::line("actor_person", "សុភា", 64).unwrap(),
        note: FreeText::parse("note", "កំណត់ចំណាំ", 512).unwrap(),
        kind,
        details,
        sealed_text: Default::default(),
    }
}

/// One referral of the seeded quarter, as the test plans it.
struct Seed {
    key: &'static str,
    sender: &'static str,
    to: &'static str,
    kind: &'static str,
    sex: pb::Sex,
    province: &'static str,
    /// Days after the quarter's start it is sent (negative: before).
    day: i64,
    /// Minutes after sending it is acknowledged / accepted / declined.
    ack: Option<i64>,
    accept: Option<i64>,
    decline: Option<(i64, &'static str)>,
    /// Days after sending a follow-up visit is recorded.
    visit: Option<i64>,
}

const SEEDS: &[Seed] = &[
    Seed {
        key: "q-1",
        sender: "ahc-swu",
        to: "mlup-russey",
        kind: "lama",
        sex: pb::Sex::Female,
        province: "24",
        day: 1,
        ack: Some(60),
        accept: Some(180),
        decline: None,
        visit: Some(3),
    },
    // Acknowledged after its 2 h deadline: escalated first.
    Seed {
        key: "q-2",
        sender: "ahc-swu",
        to: "mlup-russey",
        kind: "lama",
        sex: pb::Sex::Male,
        province: "24",
        day: 2,
        ack: Some(300),
        accept: Some(360),
        decline: None,
        visit: None,
    },
    Seed {
        key: "q-3",
        sender: "ahc-swu",
        to: "dosvy-17",
        kind: "placement",
        sex: pb::Sex::Female,
        province: "17",
        day: 10,
        ack: None,
        accept: None,
        decline: Some((30, "no_capacity")),
        visit: None,
    },
    Seed {
        key: "q-4",
        sender: "ssc-smhs",
        to: "kps-referral-hospital",
        kind: "medical",
        sex: pb::Sex::Female,
        province: "05",
        day: 20,
        ack: Some(1_000),
        accept: Some(2_000),
        decline: None,
        visit: Some(10),
    },
    // Sent before the quarter; its visit falls in it.
    Seed {
        key: "q-5",
        sender: "ahc-swu",
        to: "mlup-russey",
        kind: "reintegration_follow_up",
        sex: pb::Sex::Female,
        province: "24",
        day: -10,
        ack: Some(10),
        accept: Some(20),
        decline: None,
        visit: Some(15),
    },
    // Sent after the quarter.
    Seed {
        key: "q-6",
        sender: "ahc-swu",
        to: "mlup-russey",
        kind: "lama",
        sex: pb::Sex::Female,
        province: "24",
        day: 95,
        ack: Some(5),
        accept: None,
        decline: None,
        visit: None,
    },
    // Never answered: escalated, and still overdue.
    Seed {
        key: "q-7",
        sender: "ahc-swu",
        to: "mlup-russey",
        kind: "lama",
        sex: pb::Sex::Male,
        province: "24",
        day: 30,
        ack: None,
        accept: None,
        decline: None,
        visit: None,
    },
    Seed {
        key: "q-8",
        sender: "ahc-swu",
        to: "dosvy-17",
        kind: "placement",
        sex: pb::Sex::Male,
        province: "17",
        day: 40,
        ack: None,
        accept: None,
        decline: Some((45, "not_eligible")),
        visit: None,
    },
];

fn quarter() -> (OffsetDateTime, OffsetDateTime) {
    let from = time::macros::datetime!(2027-01-01 0:00 +7).to_offset(time::UtcOffset::UTC);
    (from, from + Duration::days(90))
}

/// Sends and answers every seed at its own time, escalating what passes its deadline on the way.
async fn seed(w: &Workflow, clock: &TestClock) -> BTreeMap<&'static str, ReferralId> {
    let (from, _) = quarter();
    // Every step of every seed, in time order, so that the clock only moves forward.
    let mut steps: Vec<(OffsetDateTime, usize, u8)> = Vec::new();
    for (n, s) in SEEDS.iter().enumerate() {
        let sent = from + Duration::days(s.day);
        steps.push((sent, n, 0));
        if let Some(m) = s.ack {
            steps.push((sent + Duration::minutes(m), n, 1));
        }
        if let Some(m) = s.accept {
            steps.push((sent + Duration::minutes(m), n, 2));
        }
        if let Some((m, _)) = s.decline {
            steps.push((sent + Duration::minutes(m), n, 3));
        }
        if let Some(d) = s.visit {
            steps.push((sent + Duration::days(d), n, 4));
        }
    }
    steps.sort();
    let mut ids = BTreeMap::new();
    for (at, n, step) in steps {
        clock.set(at);
        w.escalate_due().await.unwrap();
        let s = &SEEDS[n];
        match step {
            0 => {
                let mut request = spean_testkit::lama_in_clear(s.key);
                request.recipient = Some(pb::Recipient {
                    target: Some(pb::recipient::Target::AgencyId(s.to.into())),
                });
                request.kind = s.kind.into();
                let mut request = spean_testkit::sealed::sealed_submit(s.sender, request, &[s.to]);
                request.subject = Some(pb::Subject {
                    sex: s.sex as i32,
                    age_band: pb::AgeBand::AgeBand59 as i32,
                    province: s.province.into(),
                });
                let new = spean_broker::wire::new_referral(request).unwrap();
                let (view, _, _) = w.submit(&agency(s.sender), new).await.unwrap();
                ids.insert(s.key, view.referral().id);
            }
            _ => {
                let id = ids[s.key];
                let key = format!("{}-{step}", s.key);
                let (kind, details) = match step {
                    1 => (EventKind::Acknowledged, EventDetails::None),
                    2 => (
                        EventKind::Accepted,
                        EventDetails::Accepted {
                            planned_action: FreeText::parse("p", "visit", 64).unwrap(),
                            planned_date: "2027-01-01".into(),
                        },
                    ),
                    3 => (
                        EventKind::Declined,
                        EventDetails::Declined {
                            reason_code: Code::parse("r", s.decline.unwrap().1).unwrap(),
                            reason_text: FreeText::parse("t", "គ្មានគ្រួសារ", 64).unwrap(),
                        },
                    ),
                    _ => (
                        EventKind::FollowUp,
                        EventDetails::FollowUp {
                            activity: Code::parse("a", "home_visit").unwrap(),
                            date: "2027-01-20".into(),
                        },
                    ),
                };
                w.act(&agency(s.to), act(id, &key, kind, details))
                    .await
                    .unwrap();
            }
        }
    }
    ids
}

fn count(c: &pb::Count) -> (u32, u32) {
    (c.total, c.female)
}

fn tally(t: &[pb::Tally]) -> BTreeMap<String, (u32, u32)> {
    t.iter()
        .map(|t| (t.key.clone(), count(t.count.as_ref().unwrap())))
        .collect()
}

/// Story 7: the figures of a seeded quarter, for the network (the national coordinator), for one
/// province (its department) and for one agency (its own), each against counts made here from
/// the seeds alone.
pub(super) async fn a_quarters_figures_match_counts_made_from_the_seeds(f: Fixture) {
    let clock = TestClock::at(quarter().0);
    let w = workflow(&f, clock.clone()).await;
    seed(&w, &clock).await;
    clock.set(quarter().1 + Duration::days(30));
    let (from, to) = quarter();
    let in_quarter: Vec<&Seed> = SEEDS.iter().filter(|s| (0..90).contains(&s.day)).collect();
    let female = |seeds: &[&Seed]| seeds.iter().filter(|s| s.sex == pb::Sex::Female).count() as u32;

    let report = spean_broker::wire::figures_response(
        &w.network_figures(&agency("mosvy-coord"), from, to, None)
            .await
            .unwrap(),
    );
    let total = report.total.as_ref().unwrap();
    assert_eq!(
        count(total.referrals.as_ref().unwrap()),
        (in_quarter.len() as u32, female(&in_quarter))
    );
    // Time to the first answer: q-1 60 min, q-2 300, q-3 30, q-4 1000, q-8 45 (q-7 none).
    let mut to_answer: Vec<u64> = in_quarter
        .iter()
        .filter_map(|s| s.ack.or(s.decline.map(|d| d.0)).map(|m| m as u64 * 60))
        .collect();
    to_answer.sort();
    let rank =
        |sorted: &[u64], p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).max(1) - 1];
    assert_eq!(
        total.median_seconds_to_acknowledge,
        Some(rank(&to_answer, 0.5))
    );
    assert_eq!(
        total.p90_seconds_to_acknowledge,
        Some(rank(&to_answer, 0.9))
    );
    let mut to_accept: Vec<u64> = in_quarter
        .iter()
        .filter_map(|s| s.accept.map(|m| m as u64 * 60))
        .collect();
    to_accept.sort();
    assert_eq!(total.median_seconds_to_accept, Some(rank(&to_accept, 0.5)));
    assert_eq!(total.p90_seconds_to_accept, Some(rank(&to_accept, 0.9)));
    // Every seed is an emergency (story 1's urgency): due for acknowledgement in 2 h.
    let deadline = |_: &Seed| 120;
    let answer = |s: &Seed| s.ack.or(s.decline.map(|d| d.0));
    let answered_in_time = in_quarter
        .iter()
        .filter(|s| answer(s).is_some_and(|m| m < deadline(s)))
        .count() as u32;
    // Due: answered, or escalated (unanswered past the deadline, which every seed is by now).
    let escalated = |s: &Seed| answer(s).is_none_or(|m| m >= deadline(s));
    let due = in_quarter
        .iter()
        .filter(|s| answer(s).is_some() || escalated(s))
        .count() as u32;
    assert_eq!(
        (
            total.acknowledged_within_deadline,
            total.acknowledgement_due
        ),
        (answered_in_time, due)
    );
    assert_eq!(
        tally(&total.decline_reasons),
        BTreeMap::from([
            ("no_capacity".into(), (1, 1)),
            ("not_eligible".into(), (1, 0))
        ])
    );
    let mut by_kind: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut by_province: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for s in &in_quarter {
        let f = u32::from(s.sex == pb::Sex::Female);
        let k = by_kind.entry(s.kind.into()).or_default();
        *k = (k.0 + 1, k.1 + f);
        let p = by_province.entry(s.province.into()).or_default();
        *p = (p.0 + 1, p.1 + f);
    }
    assert_eq!(tally(&total.by_kind), by_kind);
    assert_eq!(tally(&total.by_province), by_province);
    assert_eq!(
        tally(&total.by_sex),
        BTreeMap::from([
            ("female".into(), (female(&in_quarter), female(&in_quarter))),
            (
                "male".into(),
                (in_quarter.len() as u32 - female(&in_quarter), 0)
            ),
        ])
    );
    // Visits in the quarter: q-1 (day 4), q-4 (day 30), q-5 (day 5), all girls and women.
    let visited: Vec<&Seed> = SEEDS
        .iter()
        .filter(|s| s.visit.is_some_and(|d| (0..90).contains(&(s.day + d))))
        .collect();
    assert_eq!(
        count(total.followed_up.as_ref().unwrap()),
        (visited.len() as u32, female(&visited))
    );
    assert_eq!(total.follow_up_visits, visited.len() as u32);
    // Escalations in the quarter: q-2 and q-4 once each (tier 1, found when they were answered
    // late: the seeding looks for passed deadlines only at its own steps), q-7 twice.
    assert_eq!(total.escalations, 4);
    let agencies: Vec<&str> = report.by_agency.iter().map(|g| g.key.as_str()).collect();
    assert_eq!(
        agencies,
        ["dosvy-17", "kps-referral-hospital", "mlup-russey"]
    );
    let provinces: Vec<&str> = report.by_province.iter().map(|g| g.key.as_str()).collect();
    assert_eq!(provinces, ["05", "17", "24"]);

    // Pailin's department: its province only, and nothing of another.
    let pailin = spean_broker::wire::figures_response(
        &w.network_figures(&agency("dosvy-24"), from, to, None)
            .await
            .unwrap(),
    );
    let in_pailin: Vec<&&Seed> = in_quarter.iter().filter(|s| s.province == "24").collect();
    assert_eq!(
        pailin.total.unwrap().referrals.unwrap().total,
        in_pailin.len() as u32
    );
    let outside = w
        .network_figures(
            &agency("dosvy-24"),
            from,
            to,
            Some(&ProvinceCode::parse("p", "17").unwrap()),
        )
        .await
        .unwrap_err();
    assert!(matches!(outside, BrokerError::Forbidden(_)), "{outside:?}");
    // An NGO may not read the network's figures, but reads its own.
    let ngo = w
        .network_figures(&agency("ssc-smhs"), from, to, None)
        .await
        .unwrap_err();
    assert!(matches!(ngo, BrokerError::Forbidden(_)), "{ngo:?}");
    let own = spean_broker::wire::figures_response(
        &w.own_figures(&agency("ssc-smhs"), from, to, None)
            .await
            .unwrap(),
    );
    let total = own.total.unwrap();
    assert_eq!(count(total.referrals.as_ref().unwrap()), (1, 1));
    assert_eq!(total.median_seconds_to_accept, Some(2_000 * 60));
}

/// The overdue list: in the caller's provinces only, filtered and paged, oldest overdue first,
/// without case files; a timeline without free text; PERMISSION_DENIED outside the scope.
pub(super) async fn the_overdue_list_shows_what_waits_in_the_callers_provinces(f: Fixture) {
    let start = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let clock = TestClock::at(start);
    let w = workflow(&f, clock.clone()).await;
    let hospital = agency("ahc-swu");
    let mut silent = Vec::new();
    for (n, (province, to)) in [
        ("24", "mlup-russey"),
        ("24", "mlup-russey"),
        ("17", "dosvy-17"),
    ]
    .into_iter()
    .enumerate()
    {
        clock.set(start + Duration::minutes(n as i64));
        let mut request = spean_testkit::lama_in_clear(&format!("silent-{n}"));
        request.recipient = Some(pb::Recipient {
            target: Some(pb::recipient::Target::AgencyId(to.into())),
        });
        request.subject.as_mut().unwrap().province = province.into();
        let request = spean_testkit::sealed::sealed_submit("ahc-swu", request, &[to]);
        let new = spean_broker::wire::new_referral(request).unwrap();
        silent.push(w.submit(&hospital, new).await.unwrap().0.referral().id);
    }
    // One answered in time, which never shows.
    let answered = w
        .submit(
            &hospital,
            spean_broker::wire::new_referral(spean_testkit::lama("answered")).unwrap(),
        )
        .await
        .unwrap()
        .0
        .referral()
        .id;
    w.act(
        &agency("mlup-russey"),
        act(answered, "ack", EventKind::Acknowledged, EventDetails::None),
    )
    .await
    .unwrap();
    clock.set(start + Duration::hours(3));
    w.escalate_due().await.unwrap();

    let all = OverdueFilter {
        limit: 50,
        ..Default::default()
    };
    let (list, more) = w.overdue(&agency("mosvy-coord"), &all).await.unwrap();
    assert!(!more);
    let ids: Vec<ReferralId> = list.iter().map(|o| o.referral.id).collect();
    assert_eq!(ids, silent, "oldest overdue first");
    for o in &list {
        assert_eq!(o.reason, OverdueReason::NotAcknowledged);
        assert_eq!(o.times, 1);
        assert!(o.referral.case_file.is_empty());
        assert_eq!(o.since, start + Duration::hours(3));
    }
    assert_eq!(list[0].waiting_on, Some(agency("mlup-russey")));
    assert_eq!(
        list[0].escalated_to,
        [agency("dosvy-24"), agency("mosvy-coord")]
    );
    // A department sees its province; filters and pages narrow the list.
    let (pailin, _) = w.overdue(&agency("dosvy-24"), &all).await.unwrap();
    assert_eq!(pailin.len(), 2);
    let (first, more) = w
        .overdue(
            &agency("mosvy-coord"),
            &OverdueFilter {
                limit: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(more);
    let (rest, more) = w
        .overdue(
            &agency("mosvy-coord"),
            &OverdueFilter {
                limit: 2,
                offset: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!more);
    assert_eq!(first.len() + rest.len(), 3);
    assert_eq!(rest[0].referral.id, silent[2]);
    let (by_agency, _) = w
        .overdue(
            &agency("mosvy-coord"),
            &OverdueFilter {
                agency: Some(agency("dosvy-17")),
                limit: 50,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(by_agency.len(), 1);
    let (by_urgency, _) = w
        .overdue(
            &agency("mosvy-coord"),
            &OverdueFilter {
                urgency: Some(Urgency::Routine),
                limit: 50,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(by_urgency.is_empty());
    let outside = w
        .overdue(
            &agency("dosvy-24"),
            &OverdueFilter {
                province: Some(ProvinceCode::parse("p", "17").unwrap()),
                limit: 50,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(outside, BrokerError::Forbidden(_)), "{outside:?}");
    let not_a_coordinator = w.overdue(&agency("mlup-russey"), &all).await.unwrap_err();
    assert!(matches!(not_a_coordinator, BrokerError::Forbidden(_)));

    // The timeline: envelope, state, kinds and times; no case file, no note, no staff name.
    let (view, history) = w.timeline(&agency("dosvy-24"), answered).await.unwrap();
    assert!(view.referral().case_file.is_empty());
    let seen: Vec<_> = history.iter().map(|e| view.event(e).into_owned()).collect();
    assert!(seen.iter().any(|e| e.kind == EventKind::Acknowledged));
    for e in &seen {
        assert!(
            e.note.as_str().is_empty() && e.actor_person.as_str().is_empty(),
            "{e:?}"
        );
    }
    let elsewhere = w
        .timeline(&agency("dosvy-24"), silent[2])
        .await
        .unwrap_err();
    assert!(
        matches!(elsewhere, BrokerError::NotFound(_)),
        "{elsewhere:?}"
    );

    // Answered, it leaves the list.
    w.act(
        &agency("dosvy-17"),
        act(
            silent[2],
            "ack-17",
            EventKind::Acknowledged,
            EventDetails::None,
        ),
    )
    .await
    .unwrap();
    let (list, _) = w.overdue(&agency("mosvy-coord"), &all).await.unwrap();
    assert_eq!(list.len(), 2);
}
