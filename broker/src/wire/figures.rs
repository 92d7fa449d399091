//! The network's figures on the wire: [`spean_domain::figures::Report`] as a `FiguresResponse`.
//! The domain computes every figure; this only copies it field by field, so the response and the
//! report an agency prints from it cannot disagree.

use spean_domain::figures::{Count, Figures, Report};
use spean_proto::v1 as pb;

use super::timestamp;

/// The answer to `Figures` (coordinators, and an agency for its own referrals), from a computed
/// report.
pub fn figures_response(report: &Report) -> pb::FiguresResponse {
    pb::FiguresResponse {
        from: Some(timestamp(report.from)),
        to: Some(timestamp(report.to)),
        total: Some(figures(&report.total)),
        by_agency: report.by_agency.iter().map(figures).collect(),
        by_province: report.by_province.iter().map(figures).collect(),
    }
}

fn figures(f: &Figures) -> pb::Figures {
    pb::Figures {
        key: f.key.clone(),
        referrals: Some(count(f.referrals)),
        median_seconds_to_acknowledge: f.median_seconds_to_acknowledge,
        p90_seconds_to_acknowledge: f.p90_seconds_to_acknowledge,
        median_seconds_to_accept: f.median_seconds_to_accept,
        p90_seconds_to_accept: f.p90_seconds_to_accept,
        acknowledged_within_deadline: f.acknowledged_within_deadline,
        acknowledgement_due: f.acknowledgement_due,
        decline_reasons: tallies(&f.decline_reasons),
        by_kind: tallies(&f.by_kind),
        by_state: tallies(&f.by_state),
        by_province: tallies(&f.by_province),
        by_sex: tallies(&f.by_sex),
        by_age_band: tallies(&f.by_age_band),
        followed_up: Some(count(f.followed_up)),
        follow_up_visits: f.follow_up_visits,
        missed_visits: f.missed_visits,
        escalations: f.escalations,
        emergency_exceptions: Some(count(f.emergency_exceptions)),
        consent_withdrawals: f.consent_withdrawals,
    }
}

fn count(c: Count) -> pb::Count {
    pb::Count {
        total: c.total,
        female: c.female,
    }
}

fn tallies(rows: &[(String, Count)]) -> Vec<pb::Tally> {
    rows.iter()
        .map(|(key, c)| pb::Tally {
            key: key.clone(),
            count: Some(count(*c)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn every_figure_and_tally_reaches_the_wire_in_order() {
        let agency = Figures {
            key: "ngo-a".to_owned(),
            referrals: Count {
                total: 42,
                female: 17,
            },
            median_seconds_to_acknowledge: Some(3_600),
            p90_seconds_to_acknowledge: Some(86_400),
            median_seconds_to_accept: None,
            p90_seconds_to_accept: None,
            acknowledged_within_deadline: 30,
            acknowledgement_due: 40,
            decline_reasons: vec![(
                "no_capacity".to_owned(),
                Count {
                    total: 2,
                    female: 1,
                },
            )],
            by_kind: vec![
                (
                    "health".to_owned(),
                    Count {
                        total: 2,
                        female: 0,
                    },
                ),
                (
                    "reintegration".to_owned(),
                    Count {
                        total: 40,
                        female: 17,
                    },
                ),
            ],
            followed_up: Count {
                total: 12,
                female: 5,
            },
            follow_up_visits: 20,
            missed_visits: 3,
            escalations: 4,
            ..Figures::default()
        };
        let report = Report {
            from: datetime!(2025-01-01 0:00 UTC),
            to: datetime!(2025-04-01 0:00 UTC),
            total: Figures {
                key: "all".to_owned(),
                ..agency.clone()
            },
            by_agency: vec![agency],
            by_province: Vec::new(),
        };

        let wire = figures_response(&report);

        assert_eq!(wire.from.map(|t| t.seconds), Some(1_735_689_600));
        assert_eq!(wire.to.map(|t| t.seconds), Some(1_743_465_600));
        assert_eq!(wire.total.as_ref().map(|f| f.key.as_str()), Some("all"));
        let a = &wire.by_agency[0];
        assert_eq!(a.key, "ngo-a");
        assert_eq!(
            a.referrals,
            Some(pb::Count {
                total: 42,
                female: 17
            })
        );
        assert_eq!(a.median_seconds_to_acknowledge, Some(3_600));
        assert_eq!(a.p90_seconds_to_acknowledge, Some(86_400));
        assert_eq!(a.median_seconds_to_accept, None, "no sample stays absent");
        assert_eq!(
            (a.acknowledged_within_deadline, a.acknowledgement_due),
            (30, 40)
        );
        let keys: Vec<&str> = a.by_kind.iter().map(|t| t.key.as_str()).collect();
        assert_eq!(keys, ["health", "reintegration"]);
        assert_eq!(
            a.by_kind[1].count,
            Some(pb::Count {
                total: 40,
                female: 17
            })
        );
        assert_eq!(a.decline_reasons[0].key, "no_capacity");
        assert_eq!(
            a.followed_up,
            Some(pb::Count {
                total: 12,
                female: 5
            })
        );
        assert_eq!(
            (a.follow_up_visits, a.missed_visits, a.escalations),
            (20, 3, 4)
        );
        assert!(wire.by_province.is_empty());
    }
}
