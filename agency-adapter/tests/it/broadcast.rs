//! Broadcasts (story 2), notified agencies (story 3) and referrals that follow another (story 5),
//! on the agency's side: a candidate's copy is held without the case file until it wins, the winner
//! becomes the recipient and receives the case file, a losing candidate is told it was taken; the
//! `send` flags make the request the broker expects; and the sender is told when no candidate
//! accepted, in `show` and in `status`, against a real broker.

use prost::Message;
use serde_json::Value;
use spean_adapter::store::{ReferralRow, Stored};
use spean_proto::v1::{
    Acceptance, Audience, FeedbackEvent, FeedbackKind, Recipient, Referral, ReferralState,
    ServiceInProvince, SubmitRequest, delivery::Payload, feedback_event::Details,
    recipient::Target,
};

use crate::helpers::{
    BrokerProcess, TestStore, agency_id, delivery, event, eventually, fresh_store_of, id, json_of,
    khmer_case_file, referral,
};

/// The candidate that accepts in the store tests.
const WINNER: &str = "agency-b";
/// The candidate that does not.
const LOSER: &str = "agency-c";

async fn row(t: &TestStore, referral_id: &str) -> ReferralRow {
    t.store
        .referral(referral_id)
        .await
        .unwrap()
        .expect("referral held")
}

/// `agency-a`'s placement broadcast to `agency-b` and `agency-c`, as the broker sends it to a
/// candidate: no recipient, no case file, audience candidate, the history as skeletons.
fn candidates_copy(referral_id: &str, history: Vec<FeedbackEvent>) -> Referral {
    let mut copy = referral(referral_id, &khmer_case_file(), history);
    copy.case_file = Vec::new();
    copy.audience = Audience::Candidate as i32;
    let envelope = copy.envelope.as_mut().unwrap();
    envelope.kind = "placement".into();
    envelope.requested_recipient = Some(Recipient {
        target: Some(Target::Service(ServiceInProvince {
            service: "placement".into(),
            province: "12".into(),
        })),
    });
    envelope.recipient_agency_id = String::new();
    envelope.candidate_agency_ids = vec![WINNER.into(), LOSER.into()];
    envelope.notified_agency_ids = vec!["dosvy-12".into()];
    copy
}

fn submitted(referral_id: &str) -> FeedbackEvent {
    let mut submitted = event(referral_id, FeedbackKind::Submitted, ReferralState::Sent);
    submitted.actor_agency_id = "agency-a".into();
    submitted
}

/// `WINNER`'s acceptance, whole (as the winner and the sender see it).
fn accepted(referral_id: &str) -> FeedbackEvent {
    let mut accepted = event(referral_id, FeedbackKind::Accepted, ReferralState::Accepted);
    accepted.actor_agency_id = WINNER.into();
    accepted.details = Some(Details::Accepted(Acceptance {
        planned_action: "ដាក់ក្នុងគ្រួសារបណ្ដោះអាសន្ន".into(),
        planned_date: "2026-12-10".into(),
    }));
    accepted
}

/// An event as an agency that does not read notes sees it: who, what, when.
fn skeleton(mut event: FeedbackEvent) -> FeedbackEvent {
    event.note = String::new();
    event.actor_person = String::new();
    event.details = None;
    event
}

#[tokio::test]
async fn the_winners_copy_replaces_its_candidate_view_and_makes_it_the_recipient() {
    let t = fresh_store_of(WINNER).await;
    let referral_id = id();
    let copy = candidates_copy(&referral_id, vec![skeleton(submitted(&referral_id))]);

    let stored = t
        .store
        .store_delivery(&delivery(Payload::Referral(copy)))
        .await
        .unwrap();

    assert_eq!(
        stored,
        Stored::Referral {
            referral_id: referral_id.clone(),
            new: true
        }
    );
    let held = row(&t, &referral_id).await;
    assert_eq!(held.audience, "candidate");
    assert_eq!(held.recipient, "", "an open broadcast names no recipient");
    assert!(held.case_file.is_empty());
    assert_eq!(t.store.received().await.unwrap().len(), 1);

    // Its own acceptance, as the broker answers it, makes it the recipient at once.
    t.store
        .enqueue("accept-1", "accept", Some(&referral_id), b"")
        .await
        .unwrap();
    t.store
        .record_event("accept-1", &accepted(&referral_id))
        .await
        .unwrap();
    let held = row(&t, &referral_id).await;
    assert_eq!(held.recipient, WINNER);
    assert_eq!(held.state, "accepted");
    assert!(
        held.case_file.is_empty(),
        "the case file comes with the copy"
    );

    // Then the broker delivers it again as the recipient's, with the case file.
    let mut won = referral(
        &referral_id,
        &khmer_case_file(),
        vec![submitted(&referral_id), accepted(&referral_id)],
    );
    won.envelope.as_mut().unwrap().candidate_agency_ids = vec![WINNER.into(), LOSER.into()];
    t.store
        .store_delivery(&delivery(Payload::Referral(won)))
        .await
        .unwrap();
    let held = row(&t, &referral_id).await;
    assert_eq!(held.audience, "recipient");
    assert_eq!(held.recipient, WINNER);
    assert_eq!(held.case_file, khmer_case_file().encode());
    assert!(t.store.withdrawal(&referral_id).await.unwrap().is_none());
}

#[tokio::test]
async fn a_losing_candidate_is_told_who_took_it_and_never_holds_the_case_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{LOSER}.db"));
    let store = spean_adapter::store::Store::open(&path, &agency_id(LOSER))
        .await
        .unwrap();
    let (open, taken) = (id(), id());
    for referral_id in [&open, &taken] {
        store
            .store_delivery(&delivery(Payload::Referral(candidates_copy(
                referral_id,
                vec![skeleton(submitted(referral_id))],
            ))))
            .await
            .unwrap();
    }
    // The acceptance of the other candidate reaches it as a skeleton: who, and when.
    store
        .store_delivery(&delivery(Payload::Feedback(skeleton(accepted(&taken)))))
        .await
        .unwrap();
    let held = store.referral(&taken).await.unwrap().unwrap();
    assert_eq!(held.recipient, WINNER);
    assert_eq!(held.audience, "candidate");
    assert!(held.case_file.is_empty());
    assert!(store.withdrawal(&taken).await.unwrap().is_none());
    store.close().await;
    let run = |args: &[&str]| crate::trust::adapter(dir.path(), LOSER, "https://127.0.0.1:9", args);

    let shown = json_of(&run(&["show", &taken, "--json"]));
    assert_eq!(shown["audience"], "candidate", "{shown}");
    assert_eq!(shown["taken_by"], WINNER, "{shown}");
    assert_eq!(shown["won_by"], WINNER, "{shown}");
    assert_eq!(shown["no_candidate_accepted"], false, "{shown}");
    assert!(shown["case_file"].is_null(), "{shown}");
    assert_eq!(
        shown["candidates"],
        serde_json::json!([
            {"agency_id": WINNER, "answer": "accepted", "reason_code": null},
            {"agency_id": LOSER, "answer": "none", "reason_code": null},
        ])
    );
    assert_eq!(
        shown["notified_agency_ids"],
        serde_json::json!(["dosvy-12"])
    );
    assert_eq!(shown["follows_referral_id"], "");
    assert_eq!(shown["referral"]["recipient_agency_id"], WINNER);
    let text = String::from_utf8(run(&["show", &taken]).stdout).unwrap();
    assert!(
        text.contains("taken by another agency: agency-b; this agency can no longer act"),
        "{text}"
    );
    assert!(text.contains("notified: dosvy-12"), "{text}");
    assert!(!text.contains("សុខ ស្រីល័ក្ខ"), "{text}");

    // The open one waits on this agency and comes first; the taken one no longer does.
    let inbox = json_of(&run(&["inbox", "--json"]));
    let items = inbox.as_array().unwrap();
    assert_eq!(items.len(), 2, "{inbox}");
    assert_eq!(items[0]["referral_id"], open.as_str(), "{inbox}");
    assert_eq!(items[0]["waiting_on_this_agency"], true);
    assert!(items[0]["taken_by"].is_null());
    assert_eq!(items[0]["candidates"], serde_json::json!([WINNER, LOSER]));
    assert_eq!(items[0]["recipient"], "");
    assert_eq!(items[1]["referral_id"], taken.as_str());
    assert_eq!(items[1]["waiting_on_this_agency"], false);
    assert_eq!(items[1]["taken_by"], WINNER);
    let table = String::from_utf8(run(&["inbox"]).stdout).unwrap();
    assert!(table.contains("taken by agency-b"), "{table}");
    assert!(
        table.contains("to acknowledge, accept or decline"),
        "{table}"
    );
}

/// The outbox row `send` queued under `client_ref`, decoded.
async fn queued_submit(dir: &std::path::Path, client_ref: &str) -> SubmitRequest {
    let store = spean_adapter::store::Store::open(&dir.join("ahc-swu.db"), &agency_id("ahc-swu"))
        .await
        .unwrap();
    let row = store.outbox_row(client_ref).await.unwrap().expect("queued");
    store.close().await;
    SubmitRequest::decode(row.payload.as_slice()).unwrap()
}

#[tokio::test]
async fn send_flags_ask_for_a_broadcast_or_one_agency_name_who_is_told_and_what_it_follows() {
    let dir = tempfile::tempdir().unwrap();
    let follows = id();
    let send = |client_ref: &str, extra: &[&str]| {
        let mut args = vec![
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
            "urgent",
            "--client-ref",
            client_ref,
            "--queue-only",
            "--json",
        ];
        args.extend_from_slice(extra);
        crate::trust::adapter(dir.path(), "ahc-swu", "https://127.0.0.1:9", &args)
    };

    let queued = json_of(&send(
        "wide-1",
        &[
            "--broadcast",
            "--notify",
            "dosvy-17",
            "--notify",
            "mosvy-coord",
            "--follows",
            &follows,
            "--pseudonym",
            "client-7",
        ],
    ));
    assert_eq!(queued["status"], "queued", "{queued}");
    assert_eq!(
        queued["notified_agency_ids"],
        serde_json::json!(["dosvy-17", "mosvy-coord"])
    );
    assert_eq!(queued["follows_referral_id"], follows.as_str());
    assert_eq!(queued["candidate_agency_ids"], serde_json::json!([]));
    json_of(&send("one-1", &["--one"]));
    json_of(&send("default-1", &[]));

    let wide = queued_submit(dir.path(), "wide-1").await;
    assert_eq!(wide.broadcast, Some(true));
    assert_eq!(wide.notify_agency_ids, ["dosvy-17", "mosvy-coord"]);
    assert_eq!(wide.follows_referral_id, follows);
    assert_eq!(wide.client_pseudonym, "client-7");
    let one = queued_submit(dir.path(), "one-1").await;
    assert_eq!(one.broadcast, Some(false));
    assert!(one.notify_agency_ids.is_empty());
    assert_eq!(one.follows_referral_id, "");
    assert_eq!(
        queued_submit(dir.path(), "default-1").await.broadcast,
        None,
        "left to the broker's default for the kind"
    );

    // Refused before anything is queued: a broadcast to one agency, both at once, a bad id.
    for (extra, what) in [
        (&["--broadcast", "--one"][..], "cannot be used with"),
        (&["--follows", "not-a-uuid"][..], "invalid follows"),
        (&["--notify", "Not An Agency"][..], "invalid notify"),
    ] {
        let output = send("refused-1", extra);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{extra:?}");
        assert!(stderr.contains(what), "{extra:?}: {stderr}");
    }
    // Both choose among the providers of --service: with --to there is nothing to choose.
    for choice in ["--broadcast", "--one"] {
        let to_one = crate::trust::adapter(
            dir.path(),
            "ahc-swu",
            "https://127.0.0.1:9",
            &[
                "send",
                "--to",
                "dosvy-17",
                "--kind",
                "placement",
                "--consent-by",
                "guardian",
                "--consent-at",
                "2026-12-01",
                "--consent-for",
                "redirect,broadcast,notified_parties,follow_up_delegation",
                "--urgency",
                "urgent",
                "--subject-province",
                "17",
                choice,
                "--queue-only",
            ],
        );
        let stderr = String::from_utf8_lossy(&to_one.stderr);
        assert_eq!(to_one.status.code(), Some(2), "{choice}: {stderr}");
        assert!(
            stderr.contains(&format!("'--to <AGENCY>' cannot be used with '{choice}'")),
            "{stderr}"
        );
    }
    let outbox = json_of(&crate::trust::adapter(
        dir.path(),
        "ahc-swu",
        "https://127.0.0.1:9",
        &["outbox", "--json"],
    ));
    assert_eq!(outbox.as_array().unwrap().len(), 3, "{outbox}");
}

const HOSPITAL: &str = "ahc-swu";
/// The agencies offering placement in province 17, in the demo directory's order.
const CANDIDATES: [&str; 2] = ["mlup-russey", "dosvy-17"];

/// The hospital's placement in province 17, where the demo directory lists two providers: a
/// broadcast, by default for the kind. Returns the `send --json` answer.
fn placement_in_17(broker: &BrokerProcess, client_ref: &str) -> Value {
    json_of(&broker.adapter(
        HOSPITAL,
        &[
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
            "urgent",
            "--client-ref",
            client_ref,
            "--name-km",
            "សុខ ស្រីល័ក្ខ",
            "--json",
        ],
    ))
}

fn decline(broker: &BrokerProcess, agency: &str, id: &str) -> Value {
    json_of(&broker.adapter(
        agency,
        &[
            "decline",
            id,
            "--reason-code",
            "no_capacity",
            "--reason",
            "គ្មានកន្លែង",
            "--json",
        ],
    ))
}

#[tokio::test]
async fn the_sender_is_told_when_no_candidate_accepted_and_may_send_it_to_one_agency() {
    let broker = BrokerProcess::start();
    broker.publish_keys(&[
        "ahc-swu",
        "mlup-russey",
        "dosvy-17",
        "dosvy-12",
        "mith-samlanh",
    ]);
    let _sender = broker.daemon(HOSPITAL, &[]);
    let sent = placement_in_17(&broker, "place-1");
    assert_eq!(sent["status"], "sent", "{sent}");
    assert_eq!(sent["recipient_agency_id"], "", "{sent}");
    assert_eq!(sent["candidate_agency_ids"], serde_json::json!(CANDIDATES));
    let id = sent["referral_id"].as_str().unwrap().to_owned();
    let status = json_of(&broker.adapter(HOSPITAL, &["status", "--json"]));
    assert_eq!(
        status["referrals"][0]["next_action"], "broadcast to 2 candidates",
        "{status}"
    );

    let first = decline(&broker, CANDIDATES[0], &id);
    assert_eq!(first["kind"], "declined", "{first}");
    let status = eventually("the sender to hold the first decline", || async {
        let status = json_of(&broker.adapter(HOSPITAL, &["status", "--json"]));
        (status["referrals"][0]["next_action"] == "broadcast to 2 candidates, 1 declined")
            .then_some(status)
    })
    .await;
    assert_eq!(status["referrals"][0]["no_candidate_accepted"], false);
    decline(&broker, CANDIDATES[1], &id);

    let shown = eventually("the sender to be told no candidate accepted", || async {
        let output = broker.adapter(HOSPITAL, &["show", &id, "--json"]);
        let shown: Value = serde_json::from_slice(&output.stdout).ok()?;
        (shown["no_candidate_accepted"] == true).then_some(shown)
    })
    .await;
    assert!(shown["taken_by"].is_null(), "{shown}");
    let answers: Vec<&Value> = shown["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["answer"])
        .collect();
    assert_eq!(answers, ["declined", "declined"], "{shown}");
    assert_eq!(shown["candidates"][0]["reason_code"], "no_capacity");
    let status = json_of(&broker.adapter(HOSPITAL, &["status", "--json"]));
    assert_eq!(
        status["referrals"][0]["next_action"], "no candidate accepted: redirect or withdraw",
        "{status}"
    );
    let text = String::from_utf8(broker.adapter(HOSPITAL, &["show", &id]).stdout).unwrap();
    assert!(text.contains("no candidate accepted"), "{text}");
    assert!(
        text.contains(&format!("spean-adapter redirect {id} --to AGENCY")),
        "{text}"
    );

    // The sender sends it to one agency: a referral to one agency from then on.
    let redirected = json_of(&broker.adapter(
        HOSPITAL,
        &[
            "redirect",
            &id,
            "--to",
            "mith-samlanh",
            "--reason",
            "ផ្ទះសុវត្ថិភាព",
            "--json",
        ],
    ));
    assert_eq!(redirected["kind"], "redirected", "{redirected}");
    let status = json_of(&broker.adapter(HOSPITAL, &["status", "--json"]));
    assert_eq!(status["referrals"][0]["recipient"], "mith-samlanh");
    assert_eq!(
        status["referrals"][0]["next_action"], "mith-samlanh to acknowledge",
        "{status}"
    );
}

#[tokio::test]
async fn the_first_acceptance_wins_and_the_other_candidate_is_told_it_was_taken() {
    let broker = BrokerProcess::start();
    broker.publish_keys(&[
        "ahc-swu",
        "mlup-russey",
        "dosvy-17",
        "dosvy-12",
        "mith-samlanh",
    ]);
    let _winner = broker.daemon(CANDIDATES[1], &[]);
    let _loser = broker.daemon(CANDIDATES[0], &[]);
    let sent = placement_in_17(&broker, "place-2");
    let id = sent["referral_id"].as_str().unwrap().to_owned();
    let held = |agency: &'static str, ready: fn(&Value) -> bool| {
        let (broker, id) = (&broker, id.clone());
        async move {
            eventually(agency, || async {
                let output = broker.adapter(agency, &["show", &id, "--json"]);
                let shown: Value = serde_json::from_slice(&output.stdout).ok()?;
                ready(&shown).then_some(shown)
            })
            .await
        }
    };
    let at_loser = held(CANDIDATES[0], |s| s["audience"] == "candidate").await;
    assert!(at_loser["case_file"].is_null(), "{at_loser}");
    assert!(at_loser["taken_by"].is_null(), "{at_loser}");

    let accepted = json_of(&broker.adapter(
        CANDIDATES[1],
        &[
            "accept",
            &id,
            "--action",
            "ផ្ទះបណ្ដោះអាសន្ន",
            "--date",
            "2026-12-10",
            "--json",
        ],
    ));
    assert_eq!(accepted["kind"], "accepted", "{accepted}");
    let too_late = broker.adapter(
        CANDIDATES[0],
        &["accept", &id, "--action", "x", "--date", "2026-12-10"],
    );
    let stderr = String::from_utf8_lossy(&too_late.stderr);
    assert!(
        stderr.starts_with("error: FAILED_PRECONDITION: ") && stderr.contains(CANDIDATES[1]),
        "{stderr}"
    );

    let at_winner = held(CANDIDATES[1], |s| s["case_file_part"] == "whole").await;
    assert_eq!(at_winner["audience"], "recipient", "{at_winner}");
    assert_eq!(at_winner["case_file"]["name"]["khmer"], "សុខ ស្រីល័ក្ខ");
    assert!(at_winner["taken_by"].is_null());
    let at_loser = held(CANDIDATES[0], |s| !s["taken_by"].is_null()).await;
    assert_eq!(at_loser["taken_by"], CANDIDATES[1], "{at_loser}");
    assert_eq!(at_loser["audience"], "candidate");
    assert!(at_loser["case_file"].is_null(), "{at_loser}");
    let inbox = json_of(&broker.adapter(CANDIDATES[0], &["inbox", "--json"]));
    assert_eq!(inbox[0]["taken_by"], CANDIDATES[1], "{inbox}");
    assert_eq!(inbox[0]["waiting_on_this_agency"], false, "{inbox}");
}
