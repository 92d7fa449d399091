use std::time::Duration;

use super::*;

const HOUR: u64 = 3_600;
const DAY: u64 = 24 * HOUR;

fn fixture() -> Directory {
    Directory::from_json(include_bytes!("../../../fixtures/network.json")).unwrap()
}

fn code(raw: &str) -> Code {
    Code::parse("kind", raw).unwrap()
}

fn province(raw: &str) -> ProvinceCode {
    ProvinceCode::parse("province", raw).unwrap()
}

fn ids(agencies: &[AgencyId]) -> Vec<&str> {
    agencies.iter().map(AgencyId::as_str).collect()
}

/// A small directory: two provincial departments, a department serving the whole country, a
/// coordinator, and `extra` top-level fields spliced in.
fn network(extra: &str) -> Result<Directory, DirectoryError> {
    let doc = format!(
        r#"{{
        "referral_kinds": [
            {{"kind": "lama", "default_urgency": "emergency"}},
            {{"kind": "placement", "acknowledgement_deadline": "90m"}},
            {{"kind": "medical"}}
        ],
        "agencies": [
            {{"id": "dosvy-24", "name": "Pailin", "type": "authority", "provinces": ["24"]}},
            {{"id": "dosvy-17", "name": "Siem Reap", "type": "authority", "provinces": ["17", "24"]}},
            {{"id": "dosvy-all", "name": "Everywhere", "type": "authority", "provinces": ["*"]}},
            {{"id": "ngo-24", "name": "An NGO", "type": "ngo", "provinces": ["24"]}},
            {{"id": "coord", "name": "Coordinator", "type": "coordinator", "provinces": ["*"]}}
        ]
        {extra}
    }}"#
    );
    Directory::from_json(doc.as_bytes())
}

/// The field a refused directory names.
fn refused_field(result: Result<Directory, DirectoryError>) -> String {
    match result {
        Err(DirectoryError::Invalid(e)) => e.field,
        other => panic!("expected a refusal naming a field, got {other:?}"),
    }
}

#[test]
fn the_fixture_network_imports() {
    let dir = fixture();
    assert_eq!(dir.agencies.len(), 12);
    assert_eq!(dir.provinces.len(), 25);
    let pailin = dir.provinces.iter().find(|p| p.code == "24").unwrap();
    assert_eq!(pailin.name_km, "ប៉ៃលិន");
}

#[test]
fn follow_up_in_pailin_resolves_to_the_ngo_before_the_department() {
    let dir = fixture();
    let service = code("reintegration_follow_up");
    let pailin = province("24");
    let ids: Vec<&str> = dir
        .providers(&service, &pailin)
        .iter()
        .map(|a| a.id.as_str())
        .collect();
    assert_eq!(ids, ["mlup-russey", "dosvy-24"]);
}

#[test]
fn a_service_outside_the_taxonomy_is_refused_with_its_field() {
    let doc = br#"{"referral_kinds":[{"kind":"lama"}],
        "agencies":[{"id":"x-ngo","name":"X","type":"ngo","provinces":["01"],"services":["tea"]}]}"#;
    let err = Directory::from_json(doc).unwrap_err().to_string();
    assert!(err.contains("agencies[].services"), "{err}");
}

#[test]
fn the_fixture_sets_deadlines_of_two_hours_a_day_and_three_days() {
    let dir = fixture();
    let kind = code("lama");
    for (urgency, hours) in [
        (Urgency::Emergency, 2),
        (Urgency::Urgent, 24),
        (Urgency::Routine, 72),
    ] {
        assert_eq!(
            dir.acknowledgement_deadline(&kind, urgency),
            Duration::from_secs(hours * HOUR),
            "{urgency:?}"
        );
    }
}

#[test]
fn the_fixture_escalates_in_two_tiers() {
    let dir = fixture();
    assert_eq!(dir.escalation_tiers(), 2);
    assert_eq!(dir.after_deadlines(1), Some(1));
    assert_eq!(dir.after_deadlines(2), Some(2));
    assert_eq!(dir.after_deadlines(3), None);
    assert_eq!(dir.after_deadlines(0), None);
}

#[test]
fn story_one_escalates_to_pailins_department_and_the_coordinator() {
    let dir = fixture();
    let pailin = province("24");
    assert_eq!(
        ids(&dir.escalate_to(1, &pailin)),
        ["dosvy-24", "mosvy-coord"]
    );
    assert_eq!(ids(&dir.escalate_to(2, &pailin)), ["mosvy-coord"]);
    assert!(dir.escalate_to(3, &pailin).is_empty());
    assert!(dir.escalate_to(0, &pailin).is_empty());
}

#[test]
fn the_province_authority_is_every_authority_naming_the_province_but_not_the_whole_country() {
    let dir = network(
        r#", "escalation": {"tiers": [
            {"after_deadlines": 1, "to": ["@province_authority", "coord", "dosvy-24"]}]}"#,
    )
    .unwrap();
    assert_eq!(
        ids(&dir.escalate_to(1, &province("24"))),
        ["coord", "dosvy-17", "dosvy-24"]
    );
    assert_eq!(
        ids(&dir.escalate_to(1, &province("17"))),
        ["coord", "dosvy-17", "dosvy-24"]
    );
    assert_eq!(
        ids(&dir.escalate_to(1, &province("01"))),
        ["coord", "dosvy-24"]
    );
}

#[test]
fn a_directory_without_rules_of_time_keeps_the_defaults_and_escalates_nothing() {
    let dir = network("").unwrap();
    let medical = code("medical");
    assert_eq!(
        dir.acknowledgement_deadline(&medical, Urgency::Emergency),
        Duration::from_secs(2 * HOUR)
    );
    assert_eq!(
        dir.acknowledgement_deadline(&medical, Urgency::Urgent),
        Duration::from_secs(24 * HOUR)
    );
    assert_eq!(
        dir.acknowledgement_deadline(&medical, Urgency::Routine),
        Duration::from_secs(72 * HOUR)
    );
    assert_eq!(dir.escalation_tiers(), 0);
    assert!(dir.escalate_to(1, &province("24")).is_empty());
    assert_eq!(dir.follow_up_schedule(&medical), None);
    assert_eq!(Directory::default().escalation_tiers(), 0);
    assert_eq!(
        Directory::default().acknowledgement_deadline(&medical, Urgency::Emergency),
        Duration::from_secs(2 * HOUR)
    );
}

#[test]
fn deadlines_in_seconds_parse_and_an_urgency_left_out_keeps_its_default() {
    let dir = network(
        r#", "acknowledgement_deadlines": {"about": "prose", "escalation": "prose",
            "emergency": "3s", "routine": "45m"}"#,
    )
    .unwrap();
    let medical = code("medical");
    assert_eq!(
        dir.acknowledgement_deadline(&medical, Urgency::Emergency),
        Duration::from_secs(3)
    );
    assert_eq!(
        dir.acknowledgement_deadline(&medical, Urgency::Urgent),
        Duration::from_secs(24 * HOUR)
    );
    assert_eq!(
        dir.acknowledgement_deadline(&medical, Urgency::Routine),
        Duration::from_secs(45 * 60)
    );
}

#[test]
fn a_kinds_own_deadline_wins_over_its_urgency() {
    let dir = network(r#", "acknowledgement_deadlines": {"emergency": "3s"}"#).unwrap();
    for urgency in [Urgency::Emergency, Urgency::Urgent, Urgency::Routine] {
        assert_eq!(
            dir.acknowledgement_deadline(&code("placement"), urgency),
            Duration::from_secs(90 * 60)
        );
    }
    assert_eq!(
        dir.acknowledgement_deadline(&code("lama"), Urgency::Emergency),
        Duration::from_secs(3)
    );
}

#[test]
fn a_bad_deadline_is_refused_naming_its_field() {
    let err = network(r#", "acknowledgement_deadlines": {"urgent": "a day"}"#).unwrap_err();
    let DirectoryError::Invalid(e) = err else {
        panic!("{err:?}");
    };
    assert_eq!(e.field, "acknowledgement_deadlines.urgent");
    assert!(
        e.reason.contains("must be a duration like 2h, 30m or 45s"),
        "{e}"
    );
    assert_eq!(
        refused_field(network(
            r#", "acknowledgement_deadlines": {"emergency": "0s"}"#
        )),
        "acknowledgement_deadlines.emergency"
    );
    let doc = br#"{"referral_kinds": [{"kind": "lama", "acknowledgement_deadline": "2 hours"}],
        "agencies": []}"#;
    assert_eq!(
        refused_field(Directory::from_json(doc)),
        "referral_kinds[].acknowledgement_deadline"
    );
}

#[test]
fn a_tier_naming_an_unknown_agency_is_refused() {
    for to in [
        r#"["nobody-here"]"#,
        r#"["@province_department"]"#,
        r#"["Not An Id"]"#,
        "[]",
    ] {
        let extra =
            format!(r#", "escalation": {{"tiers": [{{"after_deadlines": 1, "to": {to}}}]}}"#);
        assert_eq!(
            refused_field(network(&extra)),
            "escalation.tiers[].to",
            "{to}"
        );
    }
}

#[test]
fn tiers_must_be_reached_in_order() {
    for after in ["[1, 1]", "[2, 1]", "[0, 1]", "[-1, 2]", "[1, 101]"] {
        let after: Vec<i64> = serde_json::from_str(after).unwrap();
        let tiers: Vec<String> = after
            .iter()
            .map(|n| format!(r#"{{"after_deadlines": {n}, "to": ["coord"]}}"#))
            .collect();
        let extra = format!(r#", "escalation": {{"tiers": [{}]}}"#, tiers.join(","));
        assert_eq!(
            refused_field(network(&extra)),
            "escalation.tiers[].after_deadlines",
            "{after:?}"
        );
    }
    let dir = network(
        r#", "escalation": {"about": "prose", "tiers": [
            {"after_deadlines": 1, "to": ["coord"]}, {"after_deadlines": 3, "to": ["coord"]}]}"#,
    )
    .unwrap();
    assert_eq!(dir.after_deadlines(2), Some(3));
}

#[test]
fn the_fixture_follows_up_reintegration_monthly() {
    let dir = fixture();
    let monthly = Some(FollowUpSchedule {
        every: Duration::from_secs(30 * DAY),
        grace: Duration::from_secs(7 * DAY),
    });
    assert_eq!(
        dir.follow_up_schedule(&code("reintegration_follow_up")),
        monthly
    );
    assert_eq!(dir.follow_up_schedule(&code("placement")), monthly);
    assert_eq!(dir.follow_up_schedule(&code("lama")), None);
}

#[test]
fn a_schedule_written_as_prose_is_a_note_and_sets_none() {
    let dir = network(
        r#", "follow_up_schedules": {"lama": "a visit every month",
            "caseload_review": "every six months", "medical": {"every": "182d", "grace": "14d"}}"#,
    )
    .unwrap();
    assert_eq!(dir.follow_up_schedule(&code("lama")), None);
    assert_eq!(dir.follow_up_schedule(&code("caseload_review")), None);
    assert_eq!(
        dir.follow_up_schedule(&code("medical")),
        Some(FollowUpSchedule {
            every: Duration::from_secs(182 * DAY),
            grace: Duration::from_secs(14 * DAY),
        })
    );
}

#[test]
fn a_bad_schedule_is_refused_naming_its_field() {
    for (schedules, field) in [
        (
            r#"{"tea": {"every": "30d", "grace": "7d"}}"#,
            "follow_up_schedules.tea",
        ),
        (
            r#"{"medical": {"every": "monthly"}}"#,
            "follow_up_schedules.medical.every",
        ),
        (
            r#"{"medical": {"every": "30d", "grace": "a week"}}"#,
            "follow_up_schedules.medical.grace",
        ),
        (
            r#"{"medical": {"grace": "7d"}}"#,
            "follow_up_schedules.medical.every",
        ),
        (r#"{"medical": 30}"#, "follow_up_schedules.medical"),
    ] {
        let extra = format!(r#", "follow_up_schedules": {schedules}"#);
        assert_eq!(refused_field(network(&extra)), field, "{schedules}");
    }
}

#[test]
fn a_stored_directory_reads_back_the_same() {
    let dir = network(
        r#", "acknowledgement_deadlines": {"emergency": "3s"},
        "escalation": {"tiers": [{"after_deadlines": 1, "to": ["@province_authority", "coord"]}]},
        "follow_up_schedules": {"medical": {"every": "30d", "grace": "7d"}, "lama": "a note"}"#,
    )
    .unwrap();
    let stored = serde_json::to_string(&dir).unwrap();
    let back: Directory = serde_json::from_str(&stored).unwrap();
    assert_eq!(back.deadlines, dir.deadlines);
    assert_eq!(back.escalation, dir.escalation);
    assert_eq!(back.follow_ups, dir.follow_ups);
    assert_eq!(
        back.acknowledgement_deadline(&code("placement"), Urgency::Routine),
        Duration::from_secs(90 * 60)
    );
    assert_eq!(back.agencies.len(), dir.agencies.len());
    let fixture = fixture();
    let again: Directory = serde_json::from_str(&serde_json::to_string(&fixture).unwrap()).unwrap();
    assert_eq!(again.escalation, fixture.escalation);
    assert_eq!(again.follow_ups, fixture.follow_ups);
    assert_eq!(again.deadlines, fixture.deadlines);
}

#[test]
fn a_directory_stored_before_rules_of_time_existed_still_reads() {
    let old = r#"{"provinces": [], "referral_kinds": [{"kind": "lama", "meaning": "", "default_urgency": ""}],
        "agencies": [{"id": "coord", "name": "C", "type": "coordinator", "provinces": ["*"], "services": []}]}"#;
    let dir: Directory = serde_json::from_str(old).unwrap();
    assert_eq!(dir.escalation_tiers(), 0);
    assert_eq!(
        dir.acknowledgement_deadline(&code("lama"), Urgency::Urgent),
        Duration::from_secs(24 * HOUR)
    );
}
