//! Story 2 of `shared/fixtures/scenarios.md`: an infant at risk of abandonment needs whichever
//! foster care place is free first. The hospital sends one placement request to every agency
//! offering `placement` in Siem Reap; the first acceptance wins, atomically, and the placement
//! goes on one to one. Through the adapters, and as a race of many candidates accepting at once:
//! through adapters and through the gRPC API, on the embedded store and on PostgreSQL with two
//! brokers.

use std::path::Path;
use std::time::Duration;

use spean_proto::v1 as pb;
use spean_testkit::placement;

use crate::helpers::{
    AdapterProcess, BrokerProcess, GrpcClient, PATIENCE, eventually, referral_id_of, sealed_action,
    seeded_directory, words,
};
use crate::production::Production;

const HOSPITAL: &str = "ahc-swu";
const NGO: &str = "mlup-russey";
const PROVINCE: &str = "dosvy-17";

/// The infant's name in the case file the hospital's adapter sends: only the winner reads it.
const INFANT_KM: &str = "ស្រី នីតា";

/// The case file the hospital's adapter sends, in its JSON form.
const CASE_FILE: &str = r#"{
  "name": {"khmer": "ស្រី នីតា", "latin": "Srey Nita"},
  "date_of_birth": "2026-09-02",
  "reason_for_referral": "ម្ដាយអាចបោះបង់ចោលទារក ត្រូវការគ្រួសារអប់រំបណ្ដោះអាសន្ន"
}"#;

/// The candidates of [`race_directory`], in the order the broker ranks providers (NGOs before
/// authorities, then the fewest provinces): four agencies offer `placement` in province 17 there.
const RACERS: [&str; 4] = ["mith-samlanh", "legal-aid-nw", NGO, PROVINCE];

/// The repository's directory with two more agencies offering `placement` in province 17, written
/// to `dir`, so that a broadcast there has the four [`RACERS`] as candidates; the setting that
/// seeds a new broker with it.
fn race_directory(dir: &Path) -> (String, String) {
    seeded_directory(dir, "race-directory.json", |directory| {
        for agency in directory["agencies"].as_array_mut().unwrap() {
            if agency["id"] == "mith-samlanh" || agency["id"] == "legal-aid-nw" {
                agency["services"]
                    .as_array_mut()
                    .unwrap()
                    .push("placement".into());
                agency["provinces"]
                    .as_array_mut()
                    .unwrap()
                    .push("17".into());
            }
        }
    })
}

/// Sends story 2's placement from the hospital's adapter, addressed by service and province and
/// left to the kind's default (a broadcast), and returns what `send --json` printed.
async fn send_placement(
    hospital: &AdapterProcess,
    dir: &Path,
    client_ref: &str,
) -> serde_json::Value {
    let case_file = dir.join(format!("{client_ref}.json"));
    std::fs::write(&case_file, CASE_FILE).unwrap();
    hospital
        .json(&[
            "send",
            "--service",
            "placement",
            "--province",
            "17",
            "--kind",
            "placement",
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
            "0-4",
            "--client-ref",
            client_ref,
            "--case-file",
            case_file.to_str().unwrap(),
        ])
        .await
}

/// `show ID --json` at `adapter`, once the referral is in its store.
pub(crate) async fn shown(adapter: &AdapterProcess, id: &str) -> serde_json::Value {
    eventually(&format!("{id} in {}'s store", adapter.agency), || async {
        let out = adapter.run(&["show", id, "--json"]).await;
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    })
    .await
}

/// Waits until `adapter`'s `show --json` of `id` satisfies `check`, and returns it; on timeout the
/// failure shows the last one read.
pub(crate) async fn shown_when(
    adapter: &AdapterProcess,
    id: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        let out = adapter.run(&["show", id, "--json"]).await;
        let seen: Option<serde_json::Value> = out
            .status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap());
        match seen {
            Some(seen) if check(&seen) => return seen,
            seen if started.elapsed() > PATIENCE => {
                panic!("{what} at {}: last seen {seen:?}", adapter.agency)
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The kinds of `show --json`'s history, in its order.
pub(crate) fn kinds(shown: &serde_json::Value) -> Vec<String> {
    shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// The event ids of `show --json`'s history, in its order.
pub(crate) fn event_ids(shown: &serde_json::Value) -> Vec<String> {
    shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

/// (agency, answer) for each candidate `show --json` lists.
fn answers(shown: &serde_json::Value) -> Vec<(String, String)> {
    shown["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["agency_id"].as_str().unwrap().to_owned(),
                c["answer"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// Story 2 through the adapters: both candidates receive the request without its case file; the
/// province declines with a reason and the NGO accepts. The hospital sees every candidate's
/// answer; the province sees it taken by the NGO and its late acceptance is refused with
/// FAILED_PRECONDITION; the NGO now holds the case file, and the placement goes on one to one: its
/// follow-up reaches the hospital whole, and the province only as a skeleton.
#[tokio::test]
async fn story_2_the_first_acceptance_wins_and_the_placement_goes_on_one_to_one() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("broker"), "127.0.0.1:0").await;
    let mut hospital = AdapterProcess::installed(&broker, HOSPITAL, dir.path()).await;
    let mut ngo = AdapterProcess::installed(&broker, NGO, dir.path()).await;
    let mut province = AdapterProcess::installed(&broker, PROVINCE, dir.path()).await;
    for adapter in [&mut hospital, &mut ngo, &mut province] {
        adapter.start();
    }

    let sent = send_placement(&hospital, dir.path(), "ahc-placement-0001").await;
    let id = sent["referral_id"].as_str().unwrap().to_owned();
    assert_eq!(
        sent["candidate_agency_ids"],
        serde_json::json!([NGO, PROVINCE]),
        "a placement by service is a broadcast by default: {sent}"
    );

    // Both candidates receive it at once, as candidates, without the case file.
    for candidate in [&ngo, &province] {
        let seen = shown(candidate, &id).await;
        assert_eq!(seen["audience"], "candidate", "{seen}");
        assert!(seen["case_file"].is_null(), "{seen}");
        assert!(!seen.to_string().contains(INFANT_KM), "{seen}");
        assert!(seen["taken_by"].is_null(), "{seen}");
    }

    province
        .json(&[
            "decline",
            &id,
            "--reason-code",
            "no_capacity",
            "--reason",
            "គ្មានគ្រួសារអប់រំទំនេរ",
            "--by",
            "វិចិត្រ (Vichet)",
        ])
        .await;
    // The other candidate learns that the province declined, not why nor who wrote it.
    let at_ngo = shown_when(&ngo, &id, "the province's decline at the NGO", |s| {
        kinds(s).contains(&"declined".to_owned())
    })
    .await;
    let text = at_ngo.to_string();
    assert!(
        !text.contains("គ្មានគ្រួសារអប់រំទំនេរ") && !text.contains("Vichet"),
        "{at_ngo}"
    );
    ngo.json(&[
        "accept",
        &id,
        "--action",
        "emergency foster care with the Sok family",
        "--date",
        "2026-12-05",
        "--by",
        "សុភា (Sophea)",
    ])
    .await;

    // The hospital sees every candidate's answer, and the winner.
    let at_hospital = shown_when(&hospital, &id, "every answer", |s| {
        answers(s) == pairs(&[(NGO, "accepted"), (PROVINCE, "declined")])
    })
    .await;
    assert_eq!(at_hospital["won_by"], NGO, "{at_hospital}");
    assert_eq!(
        at_hospital["referral"]["state"], "accepted",
        "{at_hospital}"
    );
    assert_eq!(at_hospital["no_candidate_accepted"], false);
    let declined = at_hospital["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "declined")
        .unwrap();
    assert_eq!(declined["actor_agency_id"], PROVINCE);
    assert_eq!(declined["details"]["reason_text"], "គ្មានគ្រួសារអប់រំទំនេរ");

    // The province sees it taken by the NGO; its late acceptance is refused.
    let at_province =
        shown_when(&province, &id, "taken by the NGO", |s| s["taken_by"] == NGO).await;
    assert!(at_province["case_file"].is_null(), "{at_province}");
    assert!(!at_province.to_string().contains(INFANT_KM));
    let late = province
        .run(&[
            "accept",
            &id,
            "--action",
            "foster care",
            "--date",
            "2026-12-05",
            "--json",
        ])
        .await;
    let stderr = String::from_utf8_lossy(&late.stderr);
    assert!(!late.status.success(), "a late acceptance went through");
    assert!(
        stderr.contains("FAILED_PRECONDITION") && stderr.contains("taken by another agency"),
        "{stderr}"
    );
    assert!(
        broker
            .client(PROVINCE)
            .await
            .referral(&id)
            .await
            .case_file
            .is_empty(),
        "the losing candidate reads the case file through Get"
    );

    // The NGO holds the case file now, as the recipient.
    let at_ngo = shown_when(&ngo, &id, "the case file at the winner", |s| {
        s["case_file"].to_string().contains(INFANT_KM)
    })
    .await;
    assert_eq!(at_ngo["audience"], "recipient", "{at_ngo}");
    assert!(at_ngo["taken_by"].is_null(), "{at_ngo}");

    // One to one from here: the NGO's visit reaches the hospital whole.
    ngo.json(&[
        "followup",
        &id,
        "--activity",
        "home_visit",
        "--date",
        "2026-12-06",
        "--note",
        "ទារកមានសុខភាពល្អ",
        "--by",
        "សុភា (Sophea)",
    ])
    .await;
    let at_hospital = shown_when(&hospital, &id, "the visit at the hospital", |s| {
        kinds(s).contains(&"follow_up".to_owned())
    })
    .await;
    let visit = at_hospital["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "follow_up")
        .unwrap();
    assert_eq!(visit["note"], "ទារកមានសុខភាពល្អ");
    assert_eq!(visit["actor_person"], "សុភា (Sophea)");
    // The candidate that lost keeps the history's skeleton, without what the NGO wrote.
    let at_province = shown_when(&province, &id, "the visit at the province", |s| {
        kinds(s).contains(&"follow_up".to_owned())
    })
    .await;
    let text = at_province.to_string();
    assert!(
        !text.contains("ទារកមានសុខភាពល្អ")
            && !text.contains("Sophea")
            && !text.contains("Sok family")
            && !text.contains(INFANT_KM),
        "{at_province}"
    );
    // The history keeps every candidate's answer: the same events at all three.
    let expected = event_ids(&at_hospital);
    for adapter in [&ngo, &province] {
        shown_when(adapter, &id, "the hospital's history", |s| {
            event_ids(s) == expected
        })
        .await;
    }
}

/// Every candidate declines: the hospital is told that no candidate accepted (in its view and as
/// an event in the history); the referral stays open, and the hospital redirects it to one
/// agency, which receives it with its case file. A candidate can no longer accept it.
#[tokio::test]
async fn when_every_candidate_declines_the_sender_is_told_and_redirects_it_to_one_agency() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("broker"), "127.0.0.1:0").await;
    let mut hospital = AdapterProcess::installed(&broker, HOSPITAL, dir.path()).await;
    let mut ngo = AdapterProcess::installed(&broker, NGO, dir.path()).await;
    let mut province = AdapterProcess::installed(&broker, PROVINCE, dir.path()).await;
    let mut other = AdapterProcess::installed(&broker, "dosvy-12", dir.path()).await;
    for adapter in [&mut hospital, &mut ngo, &mut province, &mut other] {
        adapter.start();
    }

    let sent = send_placement(&hospital, dir.path(), "ahc-placement-0002").await;
    let id = sent["referral_id"].as_str().unwrap().to_owned();
    for candidate in [&ngo, &province] {
        shown(candidate, &id).await;
        candidate
            .json(&[
                "decline",
                &id,
                "--reason-code",
                "no_capacity",
                "--reason",
                "គ្មានកន្លែងទំនេរ",
            ])
            .await;
    }

    let at_hospital = shown_when(&hospital, &id, "no candidate accepted", |s| {
        s["no_candidate_accepted"] == true
    })
    .await;
    assert!(
        kinds(&at_hospital).contains(&"no_candidate_accepted".to_owned()),
        "{at_hospital}"
    );
    assert_eq!(
        answers(&at_hospital),
        pairs(&[(NGO, "declined"), (PROVINCE, "declined")])
    );
    assert!(at_hospital["won_by"].is_null(), "nobody won: {at_hospital}");
    // The broker says so too, once.
    let read = broker.client(HOSPITAL).await.referral(&id).await;
    let told = read
        .history
        .iter()
        .filter(|e| e.kind == pb::FeedbackKind::NoCandidateAccepted as i32)
        .count();
    assert_eq!(told, 1, "{:?}", read.history);

    // Still open: the hospital sends it on to one agency, which receives it whole.
    hospital
        .json(&[
            "redirect",
            &id,
            "--to",
            "dosvy-12",
            "--reason",
            "គ្មានកន្លែងនៅសៀមរាប",
        ])
        .await;
    let at_other = shown_when(&other, &id, "the case file at the new recipient", |s| {
        s["case_file"].to_string().contains(INFANT_KM)
    })
    .await;
    assert_eq!(at_other["audience"], "recipient", "{at_other}");
    other
        .json(&[
            "accept",
            &id,
            "--action",
            "kinship care",
            "--date",
            "2026-12-05",
        ])
        .await;
    shown_when(&hospital, &id, "accepted by dosvy-12", |s| {
        s["referral"]["state"] == "accepted"
    })
    .await;
    // A candidate can no longer take it.
    let late = ngo
        .run(&[
            "accept",
            &id,
            "--action",
            "foster care",
            "--date",
            "2026-12-05",
        ])
        .await;
    let stderr = String::from_utf8_lossy(&late.stderr);
    assert!(
        !late.status.success(),
        "a candidate accepted a redirected broadcast"
    );
    assert!(stderr.contains("FAILED_PRECONDITION"), "{stderr}");
    let at_ngo = shown(&ngo, &id).await;
    assert!(!at_ngo.to_string().contains(INFANT_KM), "{at_ngo}");
}

/// Candidate `by`'s acceptance of `referral_id` under the idempotency key `request_id`, its words
/// sealed to the sender. Asked again for the same key, the same bytes, as an adapter retries (it
/// keeps what it first sealed; sealing again would give other bytes, a conflict for the broker).
fn accept(by: &str, referral_id: &str, request_id: &str) -> pb::AcceptRequest {
    type Sealed = std::collections::HashMap<(String, String, String), pb::AcceptRequest>;
    static SEALED: std::sync::OnceLock<std::sync::Mutex<Sealed>> = std::sync::OnceLock::new();
    let key = (by.to_owned(), referral_id.to_owned(), request_id.to_owned());
    let mut sealed = SEALED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    sealed
        .entry(key)
        .or_insert_with(|| sealed_accept(by, referral_id, request_id))
        .clone()
}

fn sealed_accept(by: &str, referral_id: &str, request_id: &str) -> pb::AcceptRequest {
    pb::AcceptRequest {
        action: sealed_action(
            by,
            &[HOSPITAL],
            referral_id,
            request_id,
            words(
                "សុភា (Sophea)",
                "យើងមានគ្រួសារអប់រំទំនេរ",
                "emergency foster care",
            ),
        ),
        acceptance: Some(pb::Acceptance {
            planned_action: String::new(),
            planned_date: "2026-12-05".into(),
        }),
    }
}

/// Story 2's request sealed to the four [`RACERS`], the candidates of a broadcast in a network
/// where all four place children in 17.
fn placement_to_racers(client_ref: &str) -> pb::SubmitRequest {
    spean_testkit::sealed::sealed_submit(
        HOSPITAL,
        spean_testkit::placement_in_clear(client_ref),
        &RACERS,
    )
}

/// Every candidate in `clients` accepts `referral_id` at once, each on its own connection; returns
/// the winner, after checking that exactly one won and every other got FAILED_PRECONDITION.
async fn race(clients: &[(String, GrpcClient)], referral_id: &str, round: usize) -> String {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients.len()));
    let attempts = clients.iter().map(|(agency, client)| {
        let mut referrals = client.referrals.clone();
        let barrier = barrier.clone();
        let request = accept(agency, referral_id, &format!("accept-{round}-{agency}"));
        let agency = agency.clone();
        tokio::spawn(async move {
            barrier.wait().await;
            (agency, referrals.accept(request).await)
        })
    });
    let mut outcomes = Vec::new();
    for attempt in attempts.collect::<Vec<_>>() {
        outcomes.push(attempt.await.unwrap());
    }
    let winners: Vec<&String> = outcomes
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(a, _)| a)
        .collect();
    assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
    for (agency, outcome) in &outcomes {
        if let Err(status) = outcome {
            assert_eq!(
                status.code(),
                tonic::Code::FailedPrecondition,
                "round {round}, {agency}: {status:?}"
            );
            assert!(
                status.message().contains("taken by another agency"),
                "round {round}, {agency}: {status:?}"
            );
        }
    }
    winners[0].clone()
}

/// The event ids of `referral_id`'s history as `client`'s agency reads it through `Get`, with its
/// recipient, its audience and its case file's length.
async fn read_as(client: &mut GrpcClient, referral_id: &str) -> (Vec<String>, String, i32, usize) {
    let read = client.referral(referral_id).await;
    (
        read.history.iter().map(|e| e.event_id.clone()).collect(),
        read.envelope.unwrap().recipient_agency_id,
        read.audience,
        read.case_file.len(),
    )
}

/// A gRPC client for each of the [`RACERS`], on `brokers` in turn.
async fn racers_on(brokers: &[&BrokerProcess]) -> Vec<(String, GrpcClient)> {
    let mut clients = Vec::new();
    for (n, agency) in RACERS.iter().enumerate() {
        let broker = brokers[n % brokers.len()];
        clients.push(((*agency).to_owned(), broker.client(agency).await));
    }
    clients
}

/// `rounds` races on `brokers` (each candidate talks to the broker its place in [`RACERS`] picks,
/// round-robin): exactly one winner each round, every other refused, one acceptance in the
/// history, and every party reading the same events, the winner and the sender alone the case
/// file.
async fn race_rounds(brokers: &[&BrokerProcess], rounds: usize) {
    let mut sender = brokers[0].client(HOSPITAL).await;
    let mut clients = racers_on(brokers).await;
    let case_file = placement_to_racers("any").case_file;
    for round in 0..rounds {
        let submitted = sender
            .referrals
            .submit(placement_to_racers(&format!("race-{round}")))
            .await
            .unwrap()
            .into_inner()
            .referral
            .unwrap();
        let envelope = submitted.envelope.unwrap();
        assert_eq!(envelope.candidate_agency_ids, RACERS);
        assert_eq!(envelope.recipient_agency_id, "");
        let id = envelope.referral_id;

        let winner = race(&clients, &id, round).await;

        let (history, recipient, audience, file) = read_as(&mut sender, &id).await;
        assert_eq!(recipient, winner, "round {round}");
        assert_eq!(audience, pb::Audience::Sender as i32);
        assert_eq!(file, case_file.len());
        let read = sender.referral(&id).await;
        assert_eq!(read.state, pb::ReferralState::Accepted as i32);
        let accepted: Vec<&str> = read
            .history
            .iter()
            .filter(|e| e.kind == pb::FeedbackKind::Accepted as i32)
            .map(|e| e.actor_agency_id.as_str())
            .collect();
        assert_eq!(accepted, [winner.as_str()], "round {round}");
        // The winner's retry is answered with its first acceptance; a loser's stays refused.
        let accepted_id = read
            .history
            .iter()
            .find(|e| e.kind == pb::FeedbackKind::Accepted as i32)
            .map(|e| e.event_id.clone());
        for (agency, client) in clients.iter_mut() {
            let again = client
                .referrals
                .accept(accept(agency, &id, &format!("accept-{round}-{agency}")))
                .await;
            match again {
                Ok(answer) if *agency == winner => {
                    assert_eq!(
                        answer.into_inner().event.map(|e| e.event_id),
                        accepted_id,
                        "round {round}: the winner's retry"
                    );
                }
                Err(status) if *agency != winner => {
                    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
                }
                other => panic!("round {round}: {agency}'s retry: {other:?}"),
            }
        }
        for (agency, client) in clients.iter_mut() {
            let (seen, recipient, audience, file) = read_as(client, &id).await;
            assert_eq!(seen, history, "round {round}: {agency}'s history");
            assert_eq!(recipient, winner, "round {round}: {agency}");
            if *agency == winner {
                assert_eq!(audience, pb::Audience::Recipient as i32, "{agency}");
                assert_eq!(
                    file,
                    case_file.len(),
                    "round {round}: the winner's case file"
                );
            } else {
                assert_eq!(audience, pb::Audience::Candidate as i32, "{agency}");
                assert_eq!(file, 0, "round {round}: {agency} read the case file");
            }
        }
    }
}

/// The race through the gRPC API on the embedded store: four candidates accept each of twenty
/// placements at once; exactly one wins every time.
#[tokio::test]
async fn one_of_four_concurrent_acceptances_wins_every_round_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let seed = race_directory(dir.path());
    let broker =
        BrokerProcess::start_with(&dir.path().join("broker"), "127.0.0.1:0", &[seed]).await;
    race_rounds(&[&broker], 20).await;
}

/// The race through the gRPC API on PostgreSQL with two brokers: the four candidates, two on each
/// broker, accept each of twenty placements at once; exactly one wins every time.
#[tokio::test]
async fn one_of_four_concurrent_acceptances_wins_every_round_on_postgres_with_two_brokers() {
    let env = Production::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = two_brokers(&env, dir.path()).await;
    race_rounds(&[&first, &second], 20).await;
}

/// Two brokers on one PostgreSQL and RabbitMQ with the [`race_directory`], sharing one CA, both
/// serving.
async fn two_brokers(env: &Production, dir: &Path) -> (BrokerProcess, BrokerProcess) {
    let mut settings = env.broker_env();
    settings.push(race_directory(dir));
    crate::helpers::two_brokers(dir, settings).await
}

/// The race through separate adapters: each candidate's `spean-adapter accept` is launched at
/// once, `rounds` times. Exactly one command succeeds each round, every other fails with
/// FAILED_PRECONDITION, and the sender's and every candidate's adapter end with the same history,
/// the winner alone of the candidates holding the case file.
async fn adapter_race_rounds(brokers: &[&BrokerProcess], dir: &Path, rounds: usize) {
    let mut hospital = AdapterProcess::installed(brokers[0], HOSPITAL, dir).await;
    hospital.start();
    let mut candidates = Vec::new();
    for (n, agency) in RACERS.iter().enumerate() {
        let mut adapter = AdapterProcess::installed(brokers[n % brokers.len()], agency, dir).await;
        adapter.start();
        candidates.push(adapter);
    }
    for round in 0..rounds {
        let sent = send_placement(&hospital, dir, &format!("ahc-race-{round}")).await;
        let id = sent["referral_id"].as_str().unwrap().to_owned();
        assert_eq!(sent["candidate_agency_ids"], serde_json::json!(RACERS));
        for candidate in &candidates {
            shown(candidate, &id).await;
        }
        let accept = [
            "accept",
            id.as_str(),
            "--action",
            "emergency foster care",
            "--date",
            "2026-12-05",
        ];
        let [a, b, c, d] = candidates.as_slice() else {
            panic!("four candidates")
        };
        let (a, b, c, d) = tokio::join!(
            a.run(&accept),
            b.run(&accept),
            c.run(&accept),
            d.run(&accept)
        );
        let outcomes = [a, b, c, d];
        let winners: Vec<&str> = candidates
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.status.success())
            .map(|(c, _)| c.agency.as_str())
            .collect();
        let stderrs: Vec<String> = outcomes
            .iter()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {stderrs:?}");
        let winner = winners[0].to_owned();
        for (candidate, (outcome, stderr)) in candidates.iter().zip(outcomes.iter().zip(&stderrs)) {
            if !outcome.status.success() {
                assert!(
                    stderr.contains("FAILED_PRECONDITION")
                        && stderr.contains("taken by another agency"),
                    "round {round}, {}: {stderr}",
                    candidate.agency
                );
            }
        }

        // Every party's adapter ends with the broker's history, the same events in one order.
        let read = brokers[0].client(HOSPITAL).await.referral(&id).await;
        let expected: Vec<String> = read.history.iter().map(|e| e.event_id.clone()).collect();
        assert_eq!(read.envelope.unwrap().recipient_agency_id, winner);
        let at_hospital = shown_when(&hospital, &id, "the broker's history", |s| {
            event_ids(s) == expected
        })
        .await;
        assert_eq!(at_hospital["won_by"], winner.as_str());
        for candidate in &candidates {
            let seen = shown_when(candidate, &id, "the broker's history", |s| {
                event_ids(s) == expected
            })
            .await;
            if candidate.agency == winner {
                let seen = shown_when(candidate, &id, "the case file at the winner", |s| {
                    s["case_file"].to_string().contains(INFANT_KM)
                })
                .await;
                assert_eq!(seen["audience"], "recipient");
            } else {
                assert_eq!(seen["taken_by"], winner.as_str(), "{}", candidate.agency);
                assert!(
                    !seen.to_string().contains(INFANT_KM),
                    "round {round}: {} holds the case file",
                    candidate.agency
                );
            }
        }
    }
}

/// The race through four candidates' adapters on the embedded store, five rounds.
#[tokio::test]
async fn one_of_four_candidates_adapters_wins_every_round_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let seed = race_directory(dir.path());
    let broker =
        BrokerProcess::start_with(&dir.path().join("broker"), "127.0.0.1:0", &[seed]).await;
    adapter_race_rounds(&[&broker], dir.path(), 5).await;
}

/// The race through four candidates' adapters on PostgreSQL with two brokers, two adapters on
/// each, five rounds.
#[tokio::test]
async fn one_of_four_candidates_adapters_wins_every_round_on_postgres_with_two_brokers() {
    let env = Production::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = two_brokers(&env, dir.path()).await;
    adapter_race_rounds(&[&first, &second], dir.path(), 5).await;
}

/// The emergency deadline of [`short_deadlines`]: long enough to act before it on a slow
/// machine, short enough to keep the test quick.
const DEADLINE: Duration = Duration::from_secs(4);

/// The repository's directory with emergency referrals (story 2's placement) due for
/// acknowledgement in [`DEADLINE`], written to `dir`; the setting that seeds a new broker with it.
fn short_deadlines(dir: &Path) -> (String, String) {
    seeded_directory(dir, "short-deadlines.json", |directory| {
        directory["acknowledgement_deadlines"]["emergency"] =
            serde_json::Value::String(format!("{}s", DEADLINE.as_secs()));
    })
}

/// The escalations in `referral_id`'s history as its sender reads it.
async fn escalations(client: &mut GrpcClient, referral_id: &str) -> Vec<pb::FeedbackEvent> {
    client
        .referral(referral_id)
        .await
        .history
        .into_iter()
        .filter(|e| e.kind == pb::FeedbackKind::Escalated as i32)
        .collect()
}

/// Acknowledgement deadlines apply to a broadcast until one candidate acknowledges: a placement
/// nobody answers (one candidate's decline answers only for itself) is escalated, in its sender's
/// name, to the province's department and the coordinator, who read no case file; one a candidate
/// acknowledged is not. The department, told by the escalation and a candidate itself, can still
/// accept it, and wins it whole.
#[tokio::test]
async fn a_broadcast_nobody_acknowledges_is_escalated_and_one_acknowledged_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let seed = short_deadlines(dir.path());
    let broker =
        BrokerProcess::start_with(&dir.path().join("broker"), "127.0.0.1:0", &[seed]).await;
    let mut hospital = broker.client(HOSPITAL).await;
    let mut ngo = broker.client(NGO).await;
    let silent = referral_id_of(
        hospital
            .referrals
            .submit(placement("silent"))
            .await
            .unwrap(),
    );
    let answered = referral_id_of(
        hospital
            .referrals
            .submit(placement("answered"))
            .await
            .unwrap(),
    );
    ngo.referrals
        .decline(pb::DeclineRequest {
            action: sealed_action(
                NGO,
                &[HOSPITAL],
                &silent,
                "decline-silent",
                words("", "", "គ្មានកន្លែងទំនេរ"),
            ),
            decline: Some(pb::Decline {
                reason_code: "no_capacity".into(),
                reason_text: String::new(),
            }),
        })
        .await
        .unwrap();
    ngo.referrals
        .acknowledge(pb::AcknowledgeRequest {
            action: sealed_action(
                NGO,
                &[HOSPITAL],
                &answered,
                "ack-answered",
                words("", "", ""),
            ),
        })
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let escalated = loop {
        let seen = escalations(&mut hospital, &silent).await;
        if !seen.is_empty() {
            break seen;
        }
        assert!(
            started.elapsed() < DEADLINE * 4,
            "the silent broadcast was not escalated"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(escalated[0].actor_agency_id, HOSPITAL, "{escalated:?}");
    let Some(pb::feedback_event::Details::Escalated(tier)) = &escalated[0].details else {
        panic!("an escalation without its tier: {escalated:?}");
    };
    assert_eq!(tier.tier, 1);
    assert_eq!(tier.to_agency_ids, [PROVINCE, "mosvy-coord"]);
    // The acknowledged one, due at the same time, stays quiet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(escalations(&mut hospital, &answered).await.is_empty());

    let coordinator = broker.client("mosvy-coord").await.referral(&silent).await;
    assert!(coordinator.case_file.is_empty());
    assert_eq!(coordinator.audience, pb::Audience::Notified as i32);
    // The department is a candidate still: it accepts, and wins the case file.
    let mut department = broker.client(PROVINCE).await;
    let before = department.referral(&silent).await;
    assert!(before.case_file.is_empty());
    assert_eq!(before.audience, pb::Audience::Candidate as i32);
    department
        .referrals
        .accept(accept(PROVINCE, &silent, "department-accepts"))
        .await
        .unwrap();
    let after = department.referral(&silent).await;
    assert_eq!(after.audience, pb::Audience::Recipient as i32);
    let opened = spean_testkit::sealed::open_case_file(PROVINCE, &after).unwrap();
    assert_eq!(opened.name.unwrap().khmer, INFANT_KM);
    let after = broker.client("mosvy-coord").await.referral(&silent).await;
    assert!(after.case_file.is_empty());
}

/// The sender sends an open broadcast on to one agency while its candidates accept it, `rounds`
/// times on `brokers`: exactly one of the redirect and the acceptances goes through each round;
/// a candidate that lost to the redirect is told it was sent on.
async fn redirect_races_acceptances(brokers: &[&BrokerProcess], rounds: usize) {
    let mut sender = brokers[0].client(HOSPITAL).await;
    let clients = racers_on(brokers).await;
    for round in 0..rounds {
        let id = referral_id_of(
            sender
                .referrals
                .submit(placement_to_racers(&format!("redirect-race-{round}")))
                .await
                .unwrap(),
        );
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients.len() + 1));
        let mut accepts = Vec::new();
        for (agency, client) in &clients {
            let mut referrals = client.referrals.clone();
            let barrier = barrier.clone();
            let request = accept(agency, &id, &format!("accept-{round}-{agency}"));
            accepts.push(tokio::spawn(async move {
                barrier.wait().await;
                referrals.accept(request).await
            }));
        }
        let mut redirecting = brokers[brokers.len() - 1].client(HOSPITAL).await.referrals;
        let request = pb::RedirectRequest {
            action: sealed_action(
                HOSPITAL,
                &[],
                &id,
                &format!("redirect-{round}"),
                words("", "", "a family is ready in Banteay Meanchey"),
            ),
            redirect: Some(pb::Redirect {
                to_agency_id: "dosvy-12".into(),
                reason: String::new(),
                case_file: spean_testkit::sealed::reseal_case_file(
                    HOSPITAL,
                    HOSPITAL,
                    &format!("redirect-race-{round}"),
                    &spean_testkit::placement_in_clear("any").case_file,
                    "dosvy-12",
                ),
            }),
        };
        let redirect = tokio::spawn(async move {
            barrier.wait().await;
            redirecting.redirect(request).await
        });
        let redirect = redirect.await.unwrap();
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        for (n, attempt) in accepts.into_iter().enumerate() {
            match attempt.await.unwrap() {
                Ok(_) => accepted.push(RACERS[n]),
                Err(status) => refused.push((RACERS[n], status)),
            }
        }
        let read = sender.referral(&id).await;
        let recipient = read.envelope.unwrap().recipient_agency_id;
        match &redirect {
            Ok(_) => {
                assert!(
                    accepted.is_empty(),
                    "round {round}: {accepted:?} and the redirect"
                );
                assert_eq!(recipient, "dosvy-12");
                assert_eq!(read.state, pb::ReferralState::Sent as i32);
                for (agency, status) in &refused {
                    assert_eq!(
                        status.code(),
                        tonic::Code::FailedPrecondition,
                        "{agency}: {status:?}"
                    );
                    assert!(
                        status.message().contains("sent on to dosvy-12"),
                        "{agency}: {status:?}"
                    );
                }
            }
            Err(status) => {
                assert_eq!(
                    accepted.len(),
                    1,
                    "round {round}: {accepted:?}; {refused:?}"
                );
                assert_eq!(recipient, accepted[0]);
                assert_eq!(read.state, pb::ReferralState::Accepted as i32);
                // The sender's redirect lost the race to an acceptance: too late, naming the
                // winner, as a candidate's late acceptance is.
                assert_eq!(
                    status.code(),
                    tonic::Code::FailedPrecondition,
                    "round {round}: the sender's redirect: {status:?}"
                );
                assert!(
                    status
                        .message()
                        .contains(&format!("was accepted by {}", accepted[0])),
                    "round {round}: the sender's redirect: {status:?}"
                );
                for (agency, status) in &refused {
                    assert_eq!(
                        status.code(),
                        tonic::Code::FailedPrecondition,
                        "{agency}: {status:?}"
                    );
                }
            }
        }
    }
}

/// [`redirect_races_acceptances`] on the embedded store, ten rounds.
#[tokio::test]
async fn the_senders_redirect_and_the_candidates_acceptances_at_once_let_exactly_one_through() {
    let dir = tempfile::tempdir().unwrap();
    let seed = race_directory(dir.path());
    let broker =
        BrokerProcess::start_with(&dir.path().join("broker"), "127.0.0.1:0", &[seed]).await;
    redirect_races_acceptances(&[&broker], 10).await;
}

/// [`redirect_races_acceptances`] on PostgreSQL with two brokers, ten rounds.
#[tokio::test]
async fn the_senders_redirect_and_the_candidates_acceptances_at_once_let_exactly_one_through_on_postgres()
 {
    let env = Production::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = two_brokers(&env, dir.path()).await;
    redirect_races_acceptances(&[&first, &second], 10).await;
}
