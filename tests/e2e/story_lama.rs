//! Story 1 of `shared/fixtures/scenarios.md`: a family leaves hospital against medical advice.
//! The hospital refers by service and province; the NGO's adapter is offline and comes online later;
//! every status change reaches the hospital's adapter, once each.

use std::collections::{BTreeMap, BTreeSet};

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

/// `spean-adapter send` of story 1's referral to `recipient` (`--to AGENCY`, or `--service …
/// --province …`), with the stories' consent: what every test that sends story 1 runs.
pub fn lama_send_args<'a>(
    recipient: &[&'a str],
    client_ref: &'a str,
    case_file: &'a str,
) -> Vec<&'a str> {
    let mut args = vec!["send"];
    args.extend_from_slice(recipient);
    args.extend_from_slice(&[
        "--kind",
        "lama",
        "--consent-by",
        "guardian",
        "--consent-at",
        "2026-12-01",
        "--consent-for",
        "redirect,broadcast,notified_parties,follow_up_delegation",
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
        case_file,
    ]);
    args
}

/// Sends story 1's referral from `hospital` and returns its id.
pub async fn send_lama(
    hospital: &AdapterProcess,
    dir: &std::path::Path,
    client_ref: &str,
) -> serde_json::Value {
    let case_file = dir.join(format!("{client_ref}.json"));
    std::fs::write(&case_file, CASE_FILE).unwrap();
    let recipient = ["--service", "reintegration_follow_up", "--province", "24"];
    hospital
        .json(&lama_send_args(
            &recipient,
            client_ref,
            case_file.to_str().unwrap(),
        ))
        .await
}

#[tokio::test]
async fn story_1_lama_runs_to_the_end_and_the_hospital_sees_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("broker"), "127.0.0.1:0").await;
    let mut hospital = AdapterProcess::installed(&broker, "ahc-swu", dir.path()).await;
    let mut ngo = AdapterProcess::installed(&broker, "mlup-russey", dir.path()).await;
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

    // The hospital's own record shows the whole loop: every kind once, in order.
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
    let history = eventually("the hospital's full history", || async {
        let shown = hospital.json(&["show", &id]).await;
        let history = shown["history"].as_array()?.clone();
        (history.len() >= expected.len()).then_some(history)
    })
    .await;
    let kinds: Vec<&str> = history
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, expected, "the hospital's history");
    assert_eq!(history[2]["actor_person"], "សុភា (Sophea)");

    // The broker sent each later event to each party exactly once: one delivery per event in the
    // adapters' logs (repeats are logged too), and one stored delivery id per event, plus the
    // referral itself for the NGO. (`submitted` comes with the submit answer and the referral.)
    let pushed_to_hospital: BTreeSet<String> = history[1..]
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(pushed_to_hospital.len(), expected.len() - 1);
    assert_delivered_once_each(&hospital, &pushed_to_hospital, 0).await;
    let ngo_history = ngo.json(&["show", &id]).await["history"]
        .as_array()
        .unwrap()
        .clone();
    let ngo_kinds: Vec<&str> = ngo_history
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(ngo_kinds, expected, "the NGO's history");
    let pushed_to_ngo: BTreeSet<String> = ngo_history[1..]
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        pushed_to_ngo, pushed_to_hospital,
        "the parties saw different events"
    );
    assert_delivered_once_each(&ngo, &pushed_to_ngo, 1).await;
    // Everything was confirmed: nothing waits in the broker's mailbox.
    eventually("the broker's mailbox to empty", || async {
        broker.mailbox().await.is_empty().then_some(())
    })
    .await;

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

    // Restarting the NGO's adapter shows nothing twice: once it is subscribed again, its inbox
    // and its deliveries are as they were, and the broker has nothing left for it.
    let stored_before = ngo.stored_deliveries().await;
    ngo.kill().await;
    ngo.start();
    ngo.wait_subscribed(2).await;
    let inbox = ngo.inbox().await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0]["referral_id"], id.as_str());
    assert_eq!(ngo.stored_deliveries().await, stored_before);
    assert_delivered_once_each(&ngo, &pushed_to_ngo, 1).await;
    assert_eq!(broker.mailbox().await, []);

    // Case-file content never reached the broker's log, nor the daemons' logs: the broker holds the
    // case file as opaque bytes and everyone logs ids. The log is checked to be the real one.
    let broker_log = broker.log();
    assert!(
        broker_log.contains(&id),
        "the broker's log does not mention the referral: is it the right file?"
    );
    for (who, log) in [
        ("broker", broker_log),
        ("hospital", hospital.log()),
        ("NGO", ngo.log()),
    ] {
        for content in CONTENT {
            assert!(
                !leaks(&log, content),
                "the {who}'s log contains {content:?}"
            );
        }
        // Written to a file, not a terminal: plain text, for log collectors and `grep`.
        assert!(
            !log.contains('\u{1b}'),
            "the {who}'s log holds terminal colour codes"
        );
    }
    hospital.kill().await;
    ngo.kill().await;
}

/// Case-file text and free-text feedback used in the story: none of it may reach a log.
const CONTENT: [&str; 14] = [
    KHMER_NAME,
    "Sok Sreyleak",
    "ចាន់ ធីតា",
    "Chan Thida",
    "012 345 678",
    "ភូមិអូរតាវ៉ៅ ខេត្តប៉ៃលិន",
    "near the pagoda",
    "គ្រួសារចាកចេញពីមន្ទីរពេទ្យ ត្រូវការតាមដាននៅផ្ទះ និងជំនួយហិរញ្ញវត្ថុ",
    "share with the receiving agency for home follow-up",
    "LAMA: the family is taking her home today",
    "home follow-up and family grant",
    "ជួបគ្រួសារនៅផ្ទះ",
    "កុមារមានសុខភាពល្អ និងទៅសាលារៀន",
    "2020-05-14",
];

/// Whether `log` holds `content` as text, as `Debug` prints it (Khmer vowel signs escaped), or as
/// its bytes printed in decimal (`Debug` of a byte vector) or hex.
fn leaks(log: &str, content: &str) -> bool {
    let bytes = content.as_bytes();
    let decimal = format!("{bytes:?}");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    [
        content.to_owned(),
        format!("{content:?}").trim_matches('"').to_owned(),
        decimal.trim_matches(['[', ']']).to_owned(),
        hex,
    ]
    .iter()
    .any(|form| log.contains(form.as_str()))
}

/// `adapter`'s daemon received each of `events` in exactly one delivery and no other event, and
/// stored exactly one delivery per event plus `referrals` deliveries of the referral itself;
/// nothing arrived twice.
async fn assert_delivered_once_each(
    adapter: &AdapterProcess,
    events: &BTreeSet<String>,
    referrals: i64,
) {
    let counts = eventually(
        &format!("{}'s log to show every delivery", adapter.agency),
        || async {
            let counts = adapter.event_deliveries();
            (counts.len() >= events.len()).then_some(counts)
        },
    )
    .await;
    let once: BTreeMap<String, usize> = events.iter().map(|e| (e.clone(), 1)).collect();
    assert_eq!(
        counts, once,
        "{} got deliveries other than one per event",
        adapter.agency
    );
    // An agency's own actions come back to it as `duplicate event delivery` (its command line
    // stored them first), counted above; a delivery id or a referral seen twice is a repeat.
    let log = adapter.log();
    let repeats: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("duplicate delivery") || l.contains("duplicate referral delivery"))
        .collect();
    assert!(
        repeats.is_empty(),
        "{} was sent something twice: {repeats:#?}",
        adapter.agency
    );
    assert_eq!(
        adapter.stored_deliveries().await,
        events.len() as i64 + referrals,
        "{} stored more deliveries than it was sent",
        adapter.agency
    );
}

pub async fn wait_for_state(adapter: &AdapterProcess, id: &str, state: &str) {
    eventually(
        &format!("{} to see {id} {state}", adapter.agency),
        || async { (adapter.sent_state(id).await.as_deref() == Some(state)).then_some(()) },
    )
    .await;
}

#[test]
fn the_log_check_finds_content_printed_as_text_debug_or_bytes() {
    let name = "ចាន់ ធីតា";
    assert!(leaks(&format!("x name={name} y"), name));
    assert!(leaks(&format!("x name={name:?} y"), name));
    assert!(leaks(&format!("x bytes={:?} y", name.as_bytes()), name));
    let hex: String = name.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert!(leaks(&format!("x {hex} y"), name));
    assert!(!leaks("x referral_id=01a2 y", name));
}
