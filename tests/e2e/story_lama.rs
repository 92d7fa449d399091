//! Story 1 of `shared/fixtures/scenarios.md`: a family leaves hospital against medical advice.
//! The hospital refers by service and province; the NGO's adapter is offline and comes online later;
//! every status change reaches the hospital's adapter, once each.

use crate::helpers::{AdapterProcess, BrokerProcess, KHMER_NAME, eventually};

pub const CASE_FILE: &str = r#"{
  "name": {"khmer": "សុខ ស្រីល័ក្ខ", "latin": "Sok Sreyleak"},
  "date_of_birth": "2020-05-14",
  "guardians": [{"name": {"khmer": "ចាន់ ធីតា", "latin": "Chan Thida"}, "relationship": "mother", "phone": "012 345 678"}],
  "contact": {"phone": "012 345 678", "address": "ភូមិអូរតាវ៉ៅ ខេត្តប៉ៃលិន", "directions": "near the pagoda"},
  "reason_for_referral": "គ្រួសារចាកចេញពីមន្ទីរពេទ្យ ត្រូវការតាមដាននៅផ្ទះ និងជំនួយហិរញ្ញវត្ថុ",
  "consent": {"given_by": "mother (ម្ដាយ)", "given_at": "2026-11-22T09:00:00+07:00", "scope": "share with the receiving agency for home follow-up"},
  "transport_needs": "",
  "notes": "LAMA: the family is taking her home today"
}"#;

/// Sends story 1's referral from `hospital` and returns its id.
pub async fn send_lama(
    hospital: &AdapterProcess,
    dir: &std::path::Path,
    client_ref: &str,
) -> serde_json::Value {
    let case_file = dir.join(format!("{client_ref}.json"));
    std::fs::write(&case_file, CASE_FILE).unwrap();
    hospital
        .json(&[
            "send",
            "--service",
            "reintegration_follow_up",
            "--province",
            "24",
            "--kind",
            "lama",
            "--urgency",
            "emergency",
            "--sex",
            "female",
            "--age-band",
            "5-9",
            "--subject-province",
            "24",
            "--client-ref",
            client_ref,
            "--case-file",
            case_file.to_str().unwrap(),
        ])
        .await
}

#[tokio::test]
async fn story_1_lama_runs_to_the_end_and_the_hospital_sees_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("broker"), "127.0.0.1:0").await;
    let mut hospital = AdapterProcess::new(&broker, "ahc-swu", dir.path());
    let mut ngo = AdapterProcess::new(&broker, "mlup-russey", dir.path());
    hospital.start();

    // 00:00: the hospital refers; the NGO's adapter is offline.
    let sent = send_lama(&hospital, dir.path(), "ahc-lama-0001").await;
    assert_eq!(sent["status"], "sent", "{sent}");
    let id = sent["referral_id"].as_str().unwrap().to_owned();
    assert_eq!(hospital.sent_state(&id).await.as_deref(), Some("sent"));

    // 02:30: the NGO's adapter comes online and receives the referral, once.
    ngo.start();
    let inbox = eventually("the referral in the NGO's inbox", || async {
        let inbox = ngo.inbox().await;
        (!inbox.is_empty()).then_some(inbox)
    })
    .await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0]["referral_id"], id.as_str());
    assert_eq!(inbox[0]["sender"], "ahc-swu");
    assert_eq!(inbox[0]["name_km"], KHMER_NAME);
    wait_for_state(&hospital, &id, "delivered").await;

    // A social worker acknowledges, then accepts; the hospital sees each change as it happens.
    ngo.json(&["ack", &id, "--by", "សុភា (Sophea)"]).await;
    wait_for_state(&hospital, &id, "acknowledged").await;
    ngo.json(&[
        "accept",
        &id,
        "--action",
        "home follow-up and family grant",
        "--date",
        "2026-11-24",
        "--by",
        "សុភា (Sophea)",
    ])
    .await;
    wait_for_state(&hospital, &id, "accepted").await;

    // Day 3, 33, 63: follow-up visits.
    for (activity, date) in [
        ("home_visit", "2026-11-25"),
        ("school_attendance", "2026-12-25"),
        ("grant_received", "2027-01-24"),
    ] {
        ngo.json(&[
            "followup",
            &id,
            "--activity",
            activity,
            "--date",
            date,
            "--note",
            "ជួបគ្រួសារនៅផ្ទះ",
        ])
        .await;
    }
    // Day 90: closed with an outcome.
    ngo.json(&[
        "complete",
        &id,
        "--outcome",
        "child_well_in_school",
        "--summary",
        "កុមារមានសុខភាពល្អ និងទៅសាលារៀន",
    ])
    .await;
    wait_for_state(&hospital, &id, "completed").await;

    // The hospital's own record shows the whole loop, each event once.
    let expected = [
        "submitted",
        "delivered",
        "acknowledged",
        "accepted",
        "follow_up",
        "follow_up",
        "follow_up",
        "completed",
    ];
    let shown = eventually("the hospital's full history", || async {
        let shown = hospital.json(&["show", &id]).await;
        let n = shown["history"].as_array().map_or(0, |h| h.len());
        (n >= expected.len()).then_some(shown)
    })
    .await;
    let history = shown["history"].as_array().unwrap();
    let kinds: Vec<&str> = history
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, expected);
    let mut ids: Vec<&str> = history
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), expected.len(), "an event was shown twice");
    assert_eq!(history[2]["actor_person"], "សុភា (Sophea)");

    // The Khmer case file reached the NGO byte for byte.
    let at_ngo = ngo.json(&["show", &id]).await;
    let sent_case: serde_json::Value = serde_json::from_str(CASE_FILE).unwrap();
    assert_eq!(at_ngo["case_file"]["name"]["khmer"], KHMER_NAME);
    assert_eq!(
        at_ngo["case_file"]["reason_for_referral"],
        sent_case["reason_for_referral"]
    );
    assert_eq!(
        at_ngo["case_file"]["contact"]["address"],
        sent_case["contact"]["address"]
    );
    assert_eq!(
        at_ngo["case_file"]["guardians"][0]["name"]["khmer"],
        "ចាន់ ធីតា"
    );

    // Restarting the NGO's adapter shows nothing twice.
    ngo.kill().await;
    ngo.start();
    let inbox = ngo.inbox().await;
    assert_eq!(inbox.len(), 1);
    hospital.kill().await;
    ngo.kill().await;
}

pub async fn wait_for_state(adapter: &AdapterProcess, id: &str, state: &str) {
    eventually(
        &format!("{} to see {id} {state}", adapter.agency),
        || async { (adapter.sent_state(id).await.as_deref() == Some(state)).then_some(()) },
    )
    .await;
}
