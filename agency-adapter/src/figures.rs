//! Figures as agencies report them to donors and to the ministry, with no I/O: a period of whole
//! Cambodia days, every count with how many of it are about women and girls ("42 (17 F)"), times
//! as people say them ("1h 20m"), and a [`FiguresResponse`] as table rows, CSV or JSON.
//!
//! # CSV
//! One header line, `group,key,metric,total,female`, then one row per (group, metric, key):
//! - `group`: whose figures: `all`, `agency:<agency id>` or `province:<province code>`;
//! - `key`: for a breakdown (`decline_reasons`, `by_kind`, `by_state`, `by_province`, `by_sex`,
//!   `by_age_band`), the tallied value (e.g. `lama`, `no_capacity`); empty for the other metrics;
//! - `metric`: the proto field name (`referrals`, `median_seconds_to_acknowledge`, ...);
//! - `total`: the count, or the metric's value (seconds for times); empty for a time with no data;
//! - `female`: how many of the count are about women and girls; empty for metrics that are not
//!   counts of referrals (times, `acknowledged_within_deadline`, `acknowledgement_due`,
//!   `follow_up_visits`, `missed_visits`, `escalations`, `consent_withdrawals`).

use prost_types::Timestamp;
use serde_json::{Value, json};
use spean_proto::v1::{Count, Figures, FiguresResponse, Tally};
use time::{Date, PrimitiveDateTime, Time, UtcOffset, macros::format_description};

use crate::{AdapterError, store::timestamp};

/// Cambodia's time zone (no daylight saving): UTC+7.
const CAMBODIA_HOURS: i8 = 7;

/// The header of [`csv`].
pub const CSV_HEADER: &str = "group,key,metric,total,female";

/// The period `[from, to)` covering the Cambodia days `from` to `to` (YYYY-MM-DD), both included:
/// from the start of `from` to the start of the day after `to`, in Cambodia time.
pub fn cambodia_days(from: &str, to: &str) -> Result<(Timestamp, Timestamp), AdapterError> {
    let first = date("from", from)?;
    let last = date("to", to)?;
    if last < first {
        return Err(AdapterError::Invalid {
            field: "to".into(),
            reason: format!("{to} is before --from {from}"),
        });
    }
    let after = last.next_day().ok_or_else(|| AdapterError::Invalid {
        field: "to".into(),
        reason: format!("{to} is the last day the calendar has"),
    })?;
    Ok((start_of_day(first)?, start_of_day(after)?))
}

/// The start of the Cambodia day `raw` (YYYY-MM-DD), as a timestamp: how a day given at the
/// command line (a period's bounds, a consent form's date) becomes an instant.
pub fn start_of_cambodia_day(field: &str, raw: &str) -> Result<Timestamp, AdapterError> {
    start_of_day(date(field, raw)?)
}

fn date(field: &str, raw: &str) -> Result<Date, AdapterError> {
    Date::parse(raw, format_description!("[year]-[month]-[day]")).map_err(|error| {
        AdapterError::Invalid {
            field: field.into(),
            reason: format!("{raw:?} is not a YYYY-MM-DD date: {error}"),
        }
    })
}

fn start_of_day(day: Date) -> Result<Timestamp, AdapterError> {
    let offset =
        UtcOffset::from_hms(CAMBODIA_HOURS, 0, 0).map_err(|error| AdapterError::Invalid {
            field: "time zone".into(),
            reason: error.to_string(),
        })?;
    let start = PrimitiveDateTime::new(day, Time::MIDNIGHT).assume_offset(offset);
    Ok(Timestamp {
        seconds: start.unix_timestamp(),
        nanos: 0,
    })
}

/// A count the way agencies write it: `42 (17 F)`; an absent count is `0 (0 F)`.
pub fn count(c: Option<&Count>) -> String {
    let c = c.copied().unwrap_or_default();
    format!("{} ({} F)", c.total, c.female)
}

/// A time as people say it: `45s`, `12m`, `1h 20m`, `3d 4h`; `-` when there is none.
pub fn duration(seconds: Option<u64>) -> String {
    let Some(s) = seconds else {
        return "-".into();
    };
    let (days, hours, minutes) = (s / 86_400, s % 86_400 / 3_600, s % 3_600 / 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// `a/b (p%)`, the percentage rounded; `0/0 (-)` when there is nothing to divide.
pub fn share(part: u32, whole: u32) -> String {
    if whole == 0 {
        return format!("{part}/{whole} (-)");
    }
    let percent = (u64::from(part) * 100 + u64::from(whole) / 2) / u64::from(whole);
    format!("{part}/{whole} ({percent}%)")
}

/// A breakdown on one line: `lama 10 (4 F), cash 2 (1 F)`; `-` when empty.
pub fn tallies(list: &[Tally]) -> String {
    if list.is_empty() {
        return "-".into();
    }
    list.iter()
        .map(|t| format!("{} {}", t.key, count(t.count.as_ref())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The groups of a response in the order they are printed: the total, each agency, each province,
/// each with its name in the CSV's `group` column.
pub fn groups(response: &FiguresResponse) -> Vec<(String, Figures)> {
    let total = response.total.clone().unwrap_or_else(|| Figures {
        key: "all".into(),
        ..Figures::default()
    });
    let mut groups = vec![("all".to_owned(), total)];
    groups.extend(
        response
            .by_agency
            .iter()
            .map(|f| (format!("agency:{}", f.key), f.clone())),
    );
    groups.extend(
        response
            .by_province
            .iter()
            .map(|f| (format!("province:{}", f.key), f.clone())),
    );
    groups
}

/// One group's figures as (label, value) lines for a table.
pub fn table_rows(f: &Figures) -> Vec<(&'static str, String)> {
    let times = |median, p90| format!("median {}, p90 {}", duration(median), duration(p90));
    vec![
        ("referrals", count(f.referrals.as_ref())),
        (
            "time to acknowledge",
            times(
                f.median_seconds_to_acknowledge,
                f.p90_seconds_to_acknowledge,
            ),
        ),
        (
            "time to accept",
            times(f.median_seconds_to_accept, f.p90_seconds_to_accept),
        ),
        (
            "acknowledged within deadline",
            share(f.acknowledged_within_deadline, f.acknowledgement_due),
        ),
        ("decline reasons", tallies(&f.decline_reasons)),
        ("by kind", tallies(&f.by_kind)),
        ("by state", tallies(&f.by_state)),
        ("by province", tallies(&f.by_province)),
        ("by sex", tallies(&f.by_sex)),
        ("by age band", tallies(&f.by_age_band)),
        ("followed up", count(f.followed_up.as_ref())),
        ("visits", f.follow_up_visits.to_string()),
        ("missed visits", f.missed_visits.to_string()),
        ("escalations", f.escalations.to_string()),
        (
            "emergency exceptions",
            count(f.emergency_exceptions.as_ref()),
        ),
        ("consent withdrawals", f.consent_withdrawals.to_string()),
    ]
}

/// The response as CSV (see the module docs), header first, lines ending in `\n`.
pub fn csv(response: &FiguresResponse) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    for (group, f) in groups(response) {
        for (metric, key, total, female) in csv_rows(&f) {
            let line = [group.as_str(), key, metric, &total, &female]
                .map(csv_field)
                .join(",");
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// One group's (metric, key, total, female) rows, in the proto's field order.
fn csv_rows(f: &Figures) -> Vec<(&'static str, &str, String, String)> {
    let counted = |metric, c: Option<&Count>| {
        let c = c.copied().unwrap_or_default();
        (metric, "", c.total.to_string(), c.female.to_string())
    };
    let value = |metric, v: String| (metric, "", v, String::new());
    let seconds =
        |metric, s: Option<u64>| value(metric, s.map_or_else(String::new, |s| s.to_string()));
    let mut rows = vec![
        counted("referrals", f.referrals.as_ref()),
        seconds(
            "median_seconds_to_acknowledge",
            f.median_seconds_to_acknowledge,
        ),
        seconds("p90_seconds_to_acknowledge", f.p90_seconds_to_acknowledge),
        seconds("median_seconds_to_accept", f.median_seconds_to_accept),
        seconds("p90_seconds_to_accept", f.p90_seconds_to_accept),
        value(
            "acknowledged_within_deadline",
            f.acknowledged_within_deadline.to_string(),
        ),
        value("acknowledgement_due", f.acknowledgement_due.to_string()),
    ];
    for (metric, list) in breakdowns(f) {
        rows.extend(list.iter().map(|t| {
            let c = t.count.unwrap_or_default();
            (
                metric,
                t.key.as_str(),
                c.total.to_string(),
                c.female.to_string(),
            )
        }));
    }
    rows.extend([
        counted("followed_up", f.followed_up.as_ref()),
        value("follow_up_visits", f.follow_up_visits.to_string()),
        value("missed_visits", f.missed_visits.to_string()),
        value("escalations", f.escalations.to_string()),
        counted("emergency_exceptions", f.emergency_exceptions.as_ref()),
        value("consent_withdrawals", f.consent_withdrawals.to_string()),
    ]);
    rows
}

/// The breakdowns of a group by their proto field names.
fn breakdowns(f: &Figures) -> [(&'static str, &[Tally]); 6] {
    [
        ("decline_reasons", &f.decline_reasons),
        ("by_kind", &f.by_kind),
        ("by_state", &f.by_state),
        ("by_province", &f.by_province),
        ("by_sex", &f.by_sex),
        ("by_age_band", &f.by_age_band),
    ]
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

/// The response as JSON with the proto's snake_case field names; times are RFC 3339 UTC, absent
/// times of a group are `null`.
pub fn json(response: &FiguresResponse) -> Value {
    json!({
        "from": timestamp(response.from.as_ref()),
        "to": timestamp(response.to.as_ref()),
        "total": response.total.as_ref().map(figures_json),
        "by_agency": response.by_agency.iter().map(figures_json).collect::<Vec<_>>(),
        "by_province": response.by_province.iter().map(figures_json).collect::<Vec<_>>(),
    })
}

fn figures_json(f: &Figures) -> Value {
    let mut value = json!({
        "key": f.key,
        "referrals": count_json(f.referrals.as_ref()),
        "median_seconds_to_acknowledge": f.median_seconds_to_acknowledge,
        "p90_seconds_to_acknowledge": f.p90_seconds_to_acknowledge,
        "median_seconds_to_accept": f.median_seconds_to_accept,
        "p90_seconds_to_accept": f.p90_seconds_to_accept,
        "acknowledged_within_deadline": f.acknowledged_within_deadline,
        "acknowledgement_due": f.acknowledgement_due,
        "followed_up": count_json(f.followed_up.as_ref()),
        "follow_up_visits": f.follow_up_visits,
        "missed_visits": f.missed_visits,
        "escalations": f.escalations,
        "emergency_exceptions": count_json(f.emergency_exceptions.as_ref()),
        "consent_withdrawals": f.consent_withdrawals,
    });
    for (metric, list) in breakdowns(f) {
        value[metric] = list
            .iter()
            .map(|t| json!({ "key": t.key, "count": count_json(t.count.as_ref()) }))
            .collect();
    }
    value
}

fn count_json(c: Option<&Count>) -> Value {
    let c = c.copied().unwrap_or_default();
    json!({ "total": c.total, "female": c.female })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(total: u32, female: u32) -> Option<Count> {
        Some(Count { total, female })
    }

    fn tally(key: &str, total: u32, female: u32) -> Tally {
        Tally {
            key: key.into(),
            count: c(total, female),
        }
    }

    #[test]
    fn a_count_reads_the_way_agencies_write_it() {
        assert_eq!(count(c(42, 17).as_ref()), "42 (17 F)");
        assert_eq!(count(None), "0 (0 F)");
        assert_eq!(
            tallies(&[tally("lama", 10, 4), tally("ផ្ទះ", 1, 1)]),
            "lama 10 (4 F), ផ្ទះ 1 (1 F)"
        );
        assert_eq!(tallies(&[]), "-");
    }

    #[test]
    fn times_read_as_people_say_them() {
        assert_eq!(duration(Some(4_800)), "1h 20m");
        assert_eq!(duration(Some(45)), "45s");
        assert_eq!(duration(Some(720)), "12m");
        assert_eq!(duration(Some(7_200)), "2h");
        assert_eq!(duration(Some(3 * 86_400 + 4 * 3_600 + 59)), "3d 4h");
        assert_eq!(duration(None), "-");
        assert_eq!(share(30, 35), "30/35 (86%)");
        assert_eq!(share(0, 0), "0/0 (-)");
    }

    #[test]
    fn the_period_runs_from_the_first_cambodia_midnight_to_the_one_after_the_last_day() {
        let (from, to) = cambodia_days("2027-01-01", "2027-01-31").unwrap();
        assert_eq!(timestamp(Some(&from)), "2026-12-31T17:00:00.000000Z");
        assert_eq!(timestamp(Some(&to)), "2027-01-31T17:00:00.000000Z");
        let (from, to) = cambodia_days("2027-02-01", "2027-02-01").unwrap();
        assert_eq!(to.seconds - from.seconds, 86_400);
        assert!(cambodia_days("2027-02-02", "2027-02-01").is_err());
        assert!(cambodia_days("2027-13-01", "2027-02-01").is_err());
    }

    #[test]
    fn csv_has_one_row_per_group_metric_and_key() {
        let response = FiguresResponse {
            total: Some(Figures {
                key: "all".into(),
                referrals: c(3, 2),
                median_seconds_to_acknowledge: Some(4_800),
                acknowledged_within_deadline: 2,
                acknowledgement_due: 3,
                by_kind: vec![tally("lama", 2, 1), tally("cash, food", 1, 1)],
                ..Figures::default()
            }),
            by_agency: vec![Figures {
                key: "mlup-russey".into(),
                referrals: c(3, 2),
                ..Figures::default()
            }],
            ..FiguresResponse::default()
        };
        let csv = csv(&response);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "group,key,metric,total,female");
        assert_eq!(lines[1], "all,,referrals,3,2");
        assert_eq!(lines[2], "all,,median_seconds_to_acknowledge,4800,");
        assert_eq!(lines[3], "all,,p90_seconds_to_acknowledge,,");
        assert!(lines.contains(&"all,,acknowledged_within_deadline,2,"));
        assert!(lines.contains(&"all,lama,by_kind,2,1"));
        assert!(lines.contains(&"all,\"cash, food\",by_kind,1,1"));
        assert!(lines.contains(&"all,,followed_up,0,0"));
        assert!(lines.contains(&"all,,emergency_exceptions,0,0"));
        assert!(lines.contains(&"all,,consent_withdrawals,0,"));
        assert!(lines.contains(&"agency:mlup-russey,,referrals,3,2"));
        // 11 rows per group without breakdowns, plus the total's two kinds.
        // 11 metrics with a value per group (`all`, one agency), and two tallies.
        assert_eq!(lines.len(), 1 + 2 * 13 + 2);
    }

    #[test]
    fn json_uses_the_proto_field_names() {
        let response = FiguresResponse {
            total: Some(Figures {
                key: "all".into(),
                referrals: c(42, 17),
                by_sex: vec![tally("female", 17, 17)],
                ..Figures::default()
            }),
            ..FiguresResponse::default()
        };
        let value = json(&response);
        assert_eq!(
            value["total"]["referrals"],
            json!({ "total": 42, "female": 17 })
        );
        assert_eq!(value["total"]["by_sex"][0]["key"], "female");
        assert!(value["total"]["median_seconds_to_accept"].is_null());
        assert_eq!(value["by_agency"], json!([]));
    }
}
