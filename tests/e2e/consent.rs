//! Consent (issue 23) through real adapters and a real broker: a referral goes only with consent
//! (or its kind's emergency exception), and when the guardian withdraws consent every agency that
//! holds the case is told. The sender and the recipient delete the case file and everything people
//! wrote, keep the envelope and the history's kinds and times, and record that they did; the
//! notified department, which never held the case file, keeps its skeleton. Then each adapter's
//! store files are searched for the child's name and the notes, as text, hex and base64: none may
//! be left on the disk.

use std::path::Path;

use crate::helpers::{AdapterProcess, BrokerProcess, eventually};
use crate::sealed::{files_under, found_among};

const HOSPITAL: &str = "ahc-swu";
const NGO: &str = "mlup-russey";
const DEPARTMENT: &str = "dosvy-24";

const CHILD_KM: &str = "ចាន់ ស្រីពេជ្រ";
const CHILD_LATIN: &str = "Chan Sreypich";
const MOTHER_KM: &str = "សួន ម៉ាលី";
const NARRATIVE: &str = "កុមារត្រូវការការព្យាបាលបន្ត ក្រុមគ្រួសារចាកចេញ";
const STAFF: &str = "ឡុង សុគន្ធា (Long Sokuntha)";
const ACK_NOTE: &str = "បានជួបម្ដាយ Sreypich នៅមន្ទីរពេទ្យ";
const PLANNED: &str = "ចុះជួបគ្រួសារ Sreypich រៀងរាល់ខែ";

const SECRETS: [&str; 7] = [
    CHILD_KM,
    CHILD_LATIN,
    MOTHER_KM,
    NARRATIVE,
    STAFF,
    ACK_NOTE,
    PLANNED,
];

fn case_file() -> String {
    serde_json::json!({
        "name": {"khmer": CHILD_KM, "latin": CHILD_LATIN},
        "date_of_birth": "2021-07-03",
        "guardians": [{"name": {"khmer": MOTHER_KM, "latin": "Suon Maly"},
                       "relationship": "mother", "phone": "088 555 0190"}],
        "reason_for_referral": NARRATIVE,
        "consent": {"given_by": "mother (ម្ដាយ)", "given_at": "2026-12-01T09:00:00+07:00",
                    "scope": "share with the receiving agency and tell the department"},
    })
    .to_string()
}

/// `send` for story 1 (LAMA, Pailin) with `consent` flags, the department notified.
fn send_args<'a>(case_file: &'a str, client_ref: &'a str, consent: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
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
        "--notify",
        DEPARTMENT,
        "--client-ref",
        client_ref,
        "--case-file",
        case_file,
    ];
    args.extend_from_slice(consent);
    args
}

/// `show --json` of `id` once `adapter` holds it in `state` with `kinds` as its history.
async fn settled(
    adapter: &AdapterProcess,
    id: &str,
    state: &str,
    last_kind: &str,
) -> serde_json::Value {
    eventually(
        &format!("{} to hold {id} {state}", adapter.agency),
        || async {
            let out = adapter.run(&["show", id, "--json"]).await;
            let shown: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let last = shown["history"].as_array()?.last()?["kind"].clone();
            (shown["referral"]["state"] == state && last == last_kind).then_some(shown)
        },
    )
    .await
}

fn kinds(shown: &serde_json::Value) -> Vec<String> {
    shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// The secrets found in an adapter's store files (the database, its WAL and shared memory).
fn left_in_store(dir: &Path, agency: &str) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .filter(|(name, _)| {
            Path::new(name)
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(&format!("{agency}.db")))
        })
        .flat_map(|(name, bytes)| {
            found_among(&bytes, &SECRETS)
                .into_iter()
                .map(move |found| format!("{found} in {name}"))
        })
        .collect()
}

#[tokio::test]
async fn a_withdrawal_of_consent_reaches_every_holder_and_leaves_no_case_file_or_note_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("broker"), "127.0.0.1:0").await;
    let mut adapters = Vec::new();
    for agency in [HOSPITAL, NGO, DEPARTMENT] {
        let mut adapter = AdapterProcess::installed(&broker, agency, dir.path()).await;
        adapter.start();
        adapters.push(adapter);
    }
    let (hospital, ngo, department) = (&adapters[0], &adapters[1], &adapters[2]);
    let case_path = dir.path().join("case.json");
    std::fs::write(&case_path, case_file()).unwrap();
    let case_path = case_path.to_str().unwrap();
    // The refused attempts carry another child: a refused request stays in the outbox as it
    // was asked, so that its key still answers (the search below is about the one sent).
    let other_path = dir.path().join("other.json");
    std::fs::write(&other_path, r#"{"name": {"latin": "Another Child"}}"#).unwrap();
    let other = other_path.to_str().unwrap();

    // Without consent, or under an exception LAMA does not have, nothing goes.
    let out = hospital.run(&send_args(other, "lama-c-1", &[])).await;
    assert!(!out.status.success(), "a referral without consent was sent");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--consent-by"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = hospital
        .run(&send_args(
            other,
            "lama-c-1",
            &["--emergency-exception", "immediate_danger"],
        ))
        .await;
    assert!(
        !out.status.success(),
        "LAMA went under the emergency exception"
    );
    let refused = String::from_utf8_lossy(&out.stderr);
    assert!(refused.contains("consent.emergency_exception"), "{refused}");
    // Consent to the referral alone does not cover telling the department.
    let out = hospital
        .run(&send_args(
            other,
            "lama-c-2",
            &["--consent-by", "guardian", "--consent-at", "2026-12-01"],
        ))
        .await;
    assert!(
        !out.status.success(),
        "notified parties went without consent"
    );
    let refused = String::from_utf8_lossy(&out.stderr);
    assert!(refused.contains("notified_parties"), "{refused}");

    let sent = hospital
        .json(&send_args(
            case_path,
            "lama-c-3",
            &[
                "--consent-by",
                "guardian",
                "--consent-at",
                "2026-12-01",
                "--consent-for",
                "notified_parties",
            ],
        ))
        .await;
    let id = sent["referral_id"].as_str().unwrap().to_owned();
    let received = settled(ngo, &id, "delivered", "delivered").await;
    assert_eq!(received["case_file"]["name"]["khmer"], CHILD_KM);
    assert_eq!(received["consent"]["given_by"], "guardian");
    assert_eq!(
        received["consent"]["sharing"],
        serde_json::json!(["referral", "notified_parties"])
    );
    ngo.json(&["ack", &id, "--by", STAFF, "--note", ACK_NOTE])
        .await;
    ngo.json(&[
        "accept",
        &id,
        "--action",
        PLANNED,
        "--date",
        "2026-12-10",
        "--by",
        STAFF,
    ])
    .await;
    let before = settled(hospital, &id, "accepted", "accepted").await;
    assert_eq!(
        before["history"][2]["note"], ACK_NOTE,
        "the sender read the note"
    );
    settled(department, &id, "accepted", "accepted").await;
    // The control for the search at the end: the NGO reads the case now, while its store files
    // hold none of it in clear (sealed at rest, docs/security.md#at-rest).
    let held = settled(ngo, &id, "accepted", "accepted").await;
    assert!(!found_among(held.to_string().as_bytes(), &SECRETS).is_empty());
    let left = left_in_store(dir.path(), NGO);
    assert!(left.is_empty(), "in clear at rest: {left:#?}");

    // A withdrawal carries no note; then the mother withdraws consent through the NGO.
    let out = ngo
        .run(&[
            "withdraw-consent",
            &id,
            "--withdrawn-by",
            "guardian",
            "--note",
            "she called",
        ])
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("note"));
    ngo.json(&["withdraw-consent", &id, "--withdrawn-by", "guardian"])
        .await;

    let expected = [
        "submitted",
        "delivered",
        "acknowledged",
        "accepted",
        "consent_withdrawn",
    ];
    for holder in [hospital, ngo] {
        let shown = settled(holder, &id, "withdrawn", "consent_withdrawn").await;
        assert_eq!(kinds(&shown), expected, "{}", holder.agency);
        assert!(shown["case_file"].is_null(), "{}: {shown}", holder.agency);
        assert_eq!(shown["case_file_withdrawn"]["because"], "consent_withdrawn");
        assert_eq!(
            shown["consent"]["given_by"], "guardian",
            "the envelope stays"
        );
        for event in shown["history"].as_array().unwrap() {
            assert_eq!(event["actor_person"], "", "{}: {event}", holder.agency);
            assert_eq!(event["note"], "", "{}: {event}", holder.agency);
        }
        assert_eq!(shown["history"][3]["details"]["planned_date"], "2026-12-10");
        assert_eq!(shown["history"][3]["details"]["planned_action"], "");
        let withdrawal = &shown["history"][4];
        assert_eq!(withdrawal["actor_agency_id"], NGO);
        assert_eq!(withdrawal["details"]["withdrawn_by"], "guardian");
    }
    let told = settled(department, &id, "withdrawn", "consent_withdrawn").await;
    assert_eq!(kinds(&told), expected);
    // Nothing more can be recorded.
    let out = ngo
        .run(&[
            "followup",
            &id,
            "--activity",
            "home_visit",
            "--date",
            "2026-12-11",
        ])
        .await;
    assert!(
        !out.status.success(),
        "an action after the withdrawal went through"
    );

    // Stopped, and each store opened and closed once more by a command (which leaves no WAL),
    // the files hold none of it.
    for adapter in adapters.iter_mut() {
        adapter.kill().await;
        adapter.run(&["outbox", "--json"]).await;
    }
    for agency in [HOSPITAL, NGO, DEPARTMENT] {
        let left = left_in_store(dir.path(), agency);
        assert!(left.is_empty(), "{agency} still holds: {left:#?}");
    }
    // The control: the search finds what a store does hold.
    assert!(!found_among(case_file().as_bytes(), &SECRETS).is_empty());
}
