//! Sealed case files and agencies' keys (issue 23), as the workflow keeps them on each store: a
//! case file is stored with the boxes of its sender and the agencies it goes to and no other, a
//! redirect's box for the new recipient outlives the process that wrote it, and published keys read
//! back newest first per agency and by id.

use spean_broker::error::BrokerError;
use spean_broker::ids::{ReferralId, RequestId};
use spean_broker::referral::{Action, EventDetails, EventKind, FreeText, Sealed};
use spean_broker::store::PublishedKey;
use spean_broker::workflow::Workflow;
use spean_proto::v1 as pb;
use spean_testkit::sealed::{open_case_file, open_text, seal_text, sealed_submit};
use time::OffsetDateTime;

use super::escalation::{TestClock, agency, workflow};
use super::fixture::Fixture;

fn start() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

/// Whom each box of a stored case file is for, sorted.
fn readers(sealed: &Sealed) -> Vec<String> {
    let mut to: Vec<String> = spean_broker::wire::sealed::parse("case_file", sealed.as_bytes())
        .unwrap()
        .into_iter()
        .map(|b| b.to.to_string())
        .collect();
    to.sort_unstable();
    to
}

async fn submit(
    w: &Workflow,
    sender: &str,
    request: pb::SubmitRequest,
) -> Result<ReferralId, BrokerError> {
    let new = spean_broker::wire::new_referral(request)?;
    let (view, _, _) = w.submit(&agency(sender), new).await?;
    Ok(view.referral().id)
}

/// The referral `id` as `who` reads it through the gateway.
async fn seen_by(w: &Workflow, who: &str, id: ReferralId) -> pb::Referral {
    let (view, history) = w.get(&agency(who), id).await.unwrap();
    spean_broker::wire::referral(view, &history)
}

fn story_case_file() -> pb::CaseFile {
    prost::Message::decode(spean_testkit::case_file().as_slice()).unwrap()
}

/// Story 1 goes to `mlup-russey`: sealed also to `dosvy-24`, it is stored with the boxes of the
/// sender and the recipient only. Sealed in another agency's name, or without a box for the
/// recipient, it is refused and nothing is stored, so that the right one is then created.
pub(super) async fn a_case_file_is_stored_with_the_boxes_of_its_sender_and_recipients_only(
    f: Fixture,
) {
    let w = workflow(&f, TestClock::at(start())).await;
    let clear = || spean_testkit::lama_in_clear("sealed-1");
    let forged = sealed_submit("ssc-smhs", clear(), &["mlup-russey"]);
    match submit(&w, "ahc-swu", forged).await {
        Err(BrokerError::InvalidField(e)) => {
            assert_eq!(e.field, "case_file");
            assert!(e.reason.contains("sealed by ssc-smhs"), "{}", e.reason);
        }
        other => panic!("expected case_file to be refused: {other:?}"),
    }
    let unsealed = sealed_submit("ahc-swu", clear(), &["dosvy-24"]);
    match submit(&w, "ahc-swu", unsealed).await {
        Err(BrokerError::Precondition(message)) => {
            assert!(message.contains("mlup-russey"), "{message}")
        }
        other => panic!("expected a precondition naming mlup-russey: {other:?}"),
    }

    let request = spean_testkit::lama("sealed-1");
    let new = spean_broker::wire::new_referral(request).unwrap();
    let (view, _, created) = w.submit(&agency("ahc-swu"), new).await.unwrap();
    assert!(created, "the refused submits stored nothing under sealed-1");
    let id = view.referral().id;
    let stored = f.store.referral(id).await.unwrap().unwrap();
    assert_eq!(readers(&stored.case_file), ["ahc-swu", "mlup-russey"]);
    // What is stored is still what the sender sealed: each reader opens its box.
    let seen = seen_by(&w, "mlup-russey", id).await;
    assert_eq!(
        open_case_file("mlup-russey", &seen),
        Some(story_case_file())
    );
}

/// Mlup Russey redirects story 1 to `dosvy-24` with the case file re-sealed to it: the department
/// opens the case file, the NGO no longer gets it, and the sender reads why, also through another
/// store on the same database (a broker that restarted).
pub(super) async fn a_redirects_box_reaches_the_new_recipient_and_outlives_the_process(f: Fixture) {
    let w = workflow(&f, TestClock::at(start())).await;
    let id = submit(&w, "ahc-swu", spean_testkit::lama("moved-1"))
        .await
        .unwrap();
    let reason = pb::FreeText {
        actor_person: "សុភា".into(),
        note: String::new(),
        detail: "cannot travel to Pailin".into(),
    };
    let by_id = id.to_string();
    let resealed = spean_testkit::sealed::reseal_case_file(
        "mlup-russey",
        "ahc-swu",
        "moved-1",
        &spean_testkit::case_file(),
        "dosvy-24",
    );
    let redirect = Action {
        referral_id: id,
        request_id: RequestId::parse("request_id", "redirect-1").unwrap(),
        actor_person: FreeText::default(),
        note: FreeText::default(),
        kind: EventKind::Redirected,
        details: EventDetails::Redirected {
            to: agency("dosvy-24"),
            reason: FreeText::default(),
            case_file: Sealed::new(resealed),
        },
        sealed_text: Sealed::new(seal_text("mlup-russey", &by_id, &reason, &["ahc-swu"])),
    };
    w.act(&agency("mlup-russey"), redirect).await.unwrap();

    let restarted = Workflow::new(
        f.reopen().await,
        std::sync::Arc::new(spean_broker::delivery::Dispatch::default()),
        spean_broker::workflow::Limits {
            max_case_file_bytes: 1 << 20,
        },
    )
    .await
    .unwrap();
    for w in [&w, &restarted] {
        let department = seen_by(w, "dosvy-24", id).await;
        assert_eq!(
            open_case_file("dosvy-24", &department),
            Some(story_case_file())
        );
        let former = seen_by(w, "mlup-russey", id).await;
        assert!(former.case_file.is_empty());
        let sender = seen_by(w, "ahc-swu", id).await;
        assert_eq!(open_case_file("ahc-swu", &sender), Some(story_case_file()));
        let event = sender.history.last().unwrap();
        assert!(event.actor_person.is_empty() && event.note.is_empty());
        assert_eq!(open_text("ahc-swu", event), Some(reason.clone()));
    }
}

/// A key as the gateway would store it once it checked the binding: the bytes here are the test
/// keys, the certificate and signature stand-ins (the store does not check them).
fn key(agency_id: &str, seed: &str, certificate: &[u8], at: i64) -> PublishedKey {
    let secret = spean_seal::SecretKey::derive(
        format!("{agency_id} {seed}: a seed of at least 32 bytes").as_bytes(),
    );
    let public = secret.public().as_bytes().to_vec();
    PublishedKey {
        agency: agency(agency_id),
        key_id: spean_seal::keys::key_id(&public).to_vec(),
        public_key: public,
        certificate: certificate.to_vec(),
        signature: format!("signature over {seed}").into_bytes(),
        published_at: start() + time::Duration::seconds(at),
    }
}

/// Every key an agency published stays: the newest is its current key, and any is found by its id,
/// each once however it is named. Publishing a key again keeps its time, unless it comes with
/// another certificate (the agency's certificate was renewed): then it is current again.
pub(super) async fn published_keys_read_back_newest_per_agency_and_each_by_id(f: Fixture) {
    let s = &f.store;
    let ngo = [agency("mlup-russey")];
    assert!(s.agency_keys(&ngo, &[]).await.unwrap().is_empty());

    let first = key("mlup-russey", "first", b"certificate 1", 0);
    let second = key("mlup-russey", "second", b"certificate 1", 60);
    let hospitals = key("ahc-swu", "first", b"hospital certificate", 30);
    assert_eq!(s.publish_key(&first).await.unwrap(), first);
    assert_eq!(s.publish_key(&second).await.unwrap(), second);
    assert_eq!(s.publish_key(&hospitals).await.unwrap(), hospitals);

    assert_eq!(
        s.agency_keys(&ngo, &[]).await.unwrap(),
        vec![second.clone()]
    );
    assert_eq!(
        s.agency_keys(&[], std::slice::from_ref(&first.key_id))
            .await
            .unwrap(),
        vec![first.clone()]
    );
    let sorted = |mut keys: Vec<PublishedKey>| {
        keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        keys
    };
    let both = s
        .agency_keys(
            &[ngo[0].clone(), agency("ahc-swu"), agency("dosvy-24")],
            &[first.key_id.clone(), second.key_id.clone(), vec![0; 32]],
        )
        .await
        .unwrap();
    assert_eq!(
        sorted(both),
        sorted(vec![first.clone(), second.clone(), hospitals.clone()])
    );

    // The first key again, later, as a retrying adapter sends it: stored as it was.
    let retried = PublishedKey {
        published_at: start() + time::Duration::seconds(120),
        ..first.clone()
    };
    assert_eq!(s.publish_key(&retried).await.unwrap(), first);
    assert_eq!(
        s.agency_keys(&ngo, &[]).await.unwrap(),
        vec![second.clone()]
    );

    // The first key under a renewed certificate: published again, now, and current.
    let renewed = PublishedKey {
        certificate: b"certificate 2".to_vec(),
        signature: b"signature by certificate 2".to_vec(),
        published_at: start() + time::Duration::seconds(180),
        ..first.clone()
    };
    assert_eq!(s.publish_key(&renewed).await.unwrap(), renewed);
    assert_eq!(s.agency_keys(&ngo, &[]).await.unwrap(), vec![renewed]);
    assert_eq!(
        s.agency_keys(&[], std::slice::from_ref(&second.key_id))
            .await
            .unwrap(),
        vec![second]
    );
}
