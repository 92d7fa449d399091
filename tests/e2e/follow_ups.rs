//! Stories 1, 4, 6 and 7 of `shared/fixtures/scenarios.md` after acceptance, through the agencies'
//! adapters: missed monthly visits reach the sender and the coordinator, the coordinator's
//! overdue list shows them, a delegated visit reaches `mlup-russey` with who made it, and each
//! agency reads its own figures. Schedules are seconds here, set through the directory.

use crate::escalation::short_schedule;
use crate::helpers::{AdapterProcess, BrokerProcess, KHMER_NAME, eventually};
use crate::story_lama::send_lama;

/// Today in Cambodia, as `figures` reads its days.
fn today() -> String {
    let now = time::OffsetDateTime::now_utc().to_offset(time::macros::offset!(+7));
    let d = now.date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

fn kinds(shown: &serde_json::Value) -> Vec<String> {
    shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// Stories 1 and 6: the hospital's LAMA referral is accepted by `mlup-russey` on a schedule of
/// seconds. The visit nobody makes shows as overdue to the hospital and to the coordinator, in
/// its adapter's store and its overdue list, once per visit. `mlup-russey` then delegates the
/// visits to `dosvy-24`, whose adapter gets the envelope and the follow-up part of the case file;
/// its visit reaches `mlup-russey` and the hospital with who made it. Taken back, the delegate
/// can record no more visits and no longer holds the follow-up part.
#[tokio::test]
async fn missed_and_delegated_visits_reach_every_agency_through_its_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let seed = short_schedule(dir.path());
    let broker =
        BrokerProcess::start_with(&dir.path().join("broker"), "127.0.0.1:0", &[seed]).await;
    let mut hospital = AdapterProcess::installed(&broker, "ahc-swu", dir.path()).await;
    let mut ngo = AdapterProcess::installed(&broker, "mlup-russey", dir.path()).await;
    let mut province = AdapterProcess::installed(&broker, "dosvy-24", dir.path()).await;
    let mut coordinator = AdapterProcess::installed(&broker, "mosvy-coord", dir.path()).await;
    for adapter in [&mut hospital, &mut ngo, &mut province, &mut coordinator] {
        adapter.start();
    }

    let sent = send_lama(&hospital, dir.path(), "ahc-visits-0001").await;
    let id = sent["referral_id"].as_str().unwrap().to_owned();
    eventually("the referral at the NGO", || async {
        (!ngo.inbox().await.is_empty()).then_some(())
    })
    .await;
    ngo.json(&["ack", &id, "--by", "សុភា (Sophea)"]).await;
    ngo.json(&[
        "accept",
        &id,
        "--action",
        "home visits",
        "--date",
        &today(),
        "--by",
        "សុភា (Sophea)",
    ])
    .await;

    // Nobody visits: the hospital and the coordinator hear of the missed visit.
    let at_hospital = eventually("a missed visit at the hospital", || async {
        let shown = hospital.json(&["show", &id]).await;
        kinds(&shown)
            .contains(&"follow_up_overdue".to_owned())
            .then_some(shown)
    })
    .await;
    assert_eq!(
        at_hospital["schedule"]["missed"][0]["agency"],
        "mlup-russey"
    );
    let listed = eventually(
        "the missed visit on the coordinator's overdue list",
        || async {
            let list = coordinator.json(&["overdue"]).await;
            list.as_array()?
                .iter()
                .find(|o| o["referral_id"] == id.as_str())
                .cloned()
        },
    )
    .await;
    assert_eq!(listed["reason"], "follow_up_missed");
    assert_eq!(listed["waiting_on_agency_id"], "mlup-russey");
    // The coordinator's adapter holds the envelope and the skeleton, never the case or the notes.
    let seen = eventually("the referral in the coordinator's store", || async {
        let out = coordinator.run(&["show", &id, "--json"]).await;
        out.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap())
    })
    .await;
    assert_eq!(seen["audience"], "notified");
    assert!(seen["case_file"].is_null(), "{seen}");
    assert!(!seen.to_string().contains(KHMER_NAME));
    assert!(!seen.to_string().contains("Sophea"));
    // Every missed visit came down the coordinator's stream once.
    for (event, n) in coordinator.event_deliveries() {
        assert_eq!(n, 1, "event {event} reached the coordinator {n} times");
    }

    // Story 6: the visits are delegated to Pailin's department.
    ngo.json(&[
        "delegate",
        &id,
        "--to",
        "dosvy-24",
        "--reason",
        "movement restrictions",
        "--by",
        "សុភា (Sophea)",
    ])
    .await;
    let held = eventually("the follow-up part at the department", || async {
        let out = province.run(&["show", &id, "--json"]).await;
        let shown: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (shown["case_file_part"] == "follow_up").then_some(shown)
    })
    .await;
    assert_eq!(held["audience"], "delegate");
    assert_eq!(held["case_file"]["name"]["khmer"], KHMER_NAME);
    assert!(
        !held.to_string().contains("គ្រួសារចាកចេញពីមន្ទីរពេទ្យ"),
        "the delegate read the narrative: {held}"
    );
    assert!(held["schedule"]["next_due_at"].is_string(), "{held}");
    let inbox = province.inbox().await;
    assert!(
        inbox
            .iter()
            .any(|r| r["referral_id"] == id.as_str() && r["follow_up_delegated_here"] == true),
        "{inbox:?}"
    );
    province
        .json(&[
            "followup",
            &id,
            "--activity",
            "home_visit",
            "--date",
            &today(),
            "--by",
            "ចាន់ ធីតា (Chan Thida)",
            "--note",
            "កុមារនៅផ្ទះ",
        ])
        .await;
    for (who, adapter) in [("mlup-russey", &ngo), ("the hospital", &hospital)] {
        let visit = eventually(&format!("the delegated visit at {who}"), || async {
            let shown = adapter.json(&["show", &id]).await;
            shown["schedule"]["visits"]
                .as_array()?
                .iter()
                .find(|v| v["agency"] == "dosvy-24")
                .cloned()
        })
        .await;
        assert_eq!(visit["person"], "ចាន់ ធីតា (Chan Thida)", "{who}");
    }

    // Taken back: the department's visits are refused and its copy of the part is gone.
    ngo.json(&["revoke-delegation", &id, "--by", "សុភា (Sophea)"])
        .await;
    eventually("the department's copy withdrawn", || async {
        let shown = province.json(&["show", &id]).await;
        shown["case_file"].is_null().then_some(())
    })
    .await;
    let refused = province
        .run(&[
            "followup",
            &id,
            "--activity",
            "home_visit",
            "--date",
            &today(),
        ])
        .await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("PERMISSION_DENIED")
            || String::from_utf8_lossy(&refused.stderr).contains("permission"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Story 7: each agency reads its own figures for today; the network's are the coordinator's.
    let own = hospital
        .json(&["figures", "--from", &today(), "--to", &today()])
        .await;
    assert_eq!(own["total"]["referrals"]["total"], 1, "{own}");
    assert_eq!(own["total"]["referrals"]["female"], 1, "{own}");
    assert_eq!(own["total"]["followed_up"]["total"], 1, "{own}");
    let csv = coordinator
        .run(&[
            "figures",
            "--from",
            &today(),
            "--to",
            &today(),
            "--network",
            "--csv",
        ])
        .await;
    assert!(
        csv.status.success(),
        "{}",
        String::from_utf8_lossy(&csv.stderr)
    );
    let csv = String::from_utf8(csv.stdout).unwrap();
    assert!(csv.lines().any(|l| l == "all,,referrals,1,1"), "{csv}");
    let refused = ngo
        .run(&["figures", "--from", &today(), "--to", &today(), "--network"])
        .await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("PERMISSION_DENIED"));
    let refused = province.run(&["overdue", "--province", "17"]).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("PERMISSION_DENIED"));
}

/// Story 4: `ssc-smhs` refers an adult client to the provincial hospital for a psychiatric
/// assessment, with a transport note; the hospital accepts, logs an appointment and an interim
/// report; SSC's review lists the case with its whole history.
#[tokio::test]
async fn story_4_a_psychiatric_referral_with_transport_is_followed_by_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("broker"), "127.0.0.1:0").await;
    let mut ssc = AdapterProcess::installed(&broker, "ssc-smhs", dir.path()).await;
    let mut hospital =
        AdapterProcess::installed(&broker, "kps-referral-hospital", dir.path()).await;
    ssc.start();
    hospital.start();
    let case_file = dir.path().join("client.json");
    std::fs::write(
        &case_file,
        r#"{"name": {"khmer": "ហេង សុវណ្ណ", "latin": "Heng Sovann"},
            "reason_for_referral": "ការវាយតម្លៃផ្លូវចិត្ត (psychiatric assessment)",
            "transport_needs": "SSC will bring the client on Tuesday",
            "consent": {"given_by": "client", "given_at": "2026-12-01T09:00:00+07:00", "scope": "psychiatric assessment"}}"#,
    )
    .unwrap();
    let sent = ssc
        .json(&[
            "send",
            "--to",
            "kps-referral-hospital",
            "--kind",
            "medical",
            "--consent-by",
            "guardian",
            "--consent-at",
            "2026-12-01",
            "--consent-for",
            "redirect,broadcast,notified_parties,follow_up_delegation",
            "--urgency",
            "routine",
            "--sex",
            "male",
            "--age-band",
            "25-59",
            "--subject-province",
            "05",
            "--client-ref",
            "ssc-psy-0001",
            "--case-file",
            case_file.to_str().unwrap(),
        ])
        .await;
    let id = sent["referral_id"].as_str().unwrap().to_owned();
    let shown = eventually("the referral at the hospital", || async {
        let out = hospital.run(&["show", &id, "--json"]).await;
        out.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap())
    })
    .await;
    assert_eq!(
        shown["case_file"]["transport_needs"],
        "SSC will bring the client on Tuesday"
    );
    hospital.json(&["ack", &id]).await;
    hospital
        .json(&[
            "accept",
            &id,
            "--action",
            "psychiatric assessment",
            "--date",
            &today(),
        ])
        .await;
    hospital
        .json(&[
            "followup",
            &id,
            "--activity",
            "appointment",
            "--date",
            &today(),
        ])
        .await;
    hospital
        .json(&[
            "followup",
            &id,
            "--activity",
            "interim_report",
            "--date",
            &today(),
            "--note",
            "stable on treatment",
        ])
        .await;
    let review = eventually("the interim report at SSC", || async {
        let shown = ssc.json(&["show", &id]).await;
        (kinds(&shown).iter().filter(|k| *k == "follow_up").count() == 2).then_some(shown)
    })
    .await;
    assert_eq!(
        kinds(&review),
        [
            "submitted",
            "delivered",
            "acknowledged",
            "accepted",
            "follow_up",
            "follow_up"
        ]
    );
    let activities: Vec<&str> = review["schedule"]["visits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["activity"].as_str().unwrap())
        .collect();
    assert_eq!(activities, ["appointment", "interim_report"]);
    // The six-monthly review: SSC's open cases, this one among them, accepted.
    assert_eq!(ssc.sent_state(&id).await.as_deref(), Some("accepted"));
}
