//! Who sees the case file, across brokers: the rule of `spean_domain::referral::view`, applied
//! when a delivery goes down an adapter's stream, whichever broker published it and whichever
//! broker the redirect went through.

use std::time::Duration;

use spean_proto::v1 as pb;

use crate::helpers::{BrokerProcess, eventually, sealed_action, two_brokers, words};
use crate::production::Production;

const SENDER: &str = "ahc-swu";
const FORMER: &str = "mlup-russey";
const NEW: &str = "dosvy-24";

/// The former recipient's redirect of the referral sent as `client_ref`, its words sealed to the
/// sender and the case file re-sealed to the new recipient, as its adapter makes them.
fn redirect(referral_id: &str, client_ref: &str) -> pb::RedirectRequest {
    pb::RedirectRequest {
        action: sealed_action(
            FORMER,
            &[SENDER],
            referral_id,
            "redirect-across-brokers",
            words("សុភា (Sophea)", "", "cannot travel to Pailin"),
        ),
        redirect: Some(pb::Redirect {
            to_agency_id: NEW.into(),
            reason: String::new(),
            case_file: spean_testkit::sealed::reseal_case_file(
                FORMER,
                SENDER,
                client_ref,
                &spean_testkit::case_file(),
                NEW,
            ),
        }),
    }
}

/// The case file as `agency` opens it from a referral's sealed bytes.
fn opened(agency: &str, case_file: Vec<u8>, referral_id: &str, client_ref: &str) -> pb::CaseFile {
    let plain = spean_testkit::sealed::open(
        agency,
        &case_file,
        spean_seal::Purpose::CaseFile {
            sender: SENDER,
            client_ref,
        },
    )
    .unwrap_or_else(|| panic!("{agency} cannot open the case file of {referral_id}"));
    <pb::CaseFile as prost::Message>::decode(plain.as_slice()).unwrap()
}

/// The case file each referral delivery on `agency`'s stream carried, until one for `referral_id`
/// arrived; confirms everything it reads.
async fn case_file_delivered(broker: &BrokerProcess, agency: &str, referral_id: &str) -> Vec<u8> {
    let mut client = broker.client(agency).await;
    let mut stream = client.subscribe(10).await;
    loop {
        let delivery = stream
            .next_within(Duration::from_secs(20), "the referral's delivery")
            .await;
        stream.confirm(delivery.delivery_id.clone()).await;
        if let Some(pb::delivery::Payload::Referral(r)) = delivery.payload
            && r.envelope.as_ref().unwrap().referral_id == referral_id
        {
            return r.case_file;
        }
    }
}

/// Two brokers share PostgreSQL and RabbitMQ. The first publishes a referral to its recipient's
/// queue, case file included, while the recipient's adapter is away. The recipient redirects it
/// through the second broker, which cannot reach the message already queued. When the former
/// recipient's adapter comes back, to either broker, the referral reaches it without its case
/// file; the new recipient gets it with the case file.
#[tokio::test]
async fn a_referral_queued_before_a_redirect_through_another_broker_reaches_the_former_recipient_without_its_case_file()
 {
    let env = Production::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = two_brokers(dir.path(), env.broker_env()).await;

    let id = first
        .client(SENDER)
        .await
        .submit_lama("across-brokers")
        .await;
    let queue = format!("spean.agency.{FORMER}");
    eventually(
        "the referral published to the recipient's queue",
        || async { (env.outbox(FORMER).await == 0 && env.depth(&queue).await >= 1).then_some(()) },
    )
    .await;

    let mut ngo = second.client(FORMER).await;
    ngo.referrals
        .redirect(redirect(&id, "across-brokers"))
        .await
        .unwrap();

    assert!(
        case_file_delivered(&first, FORMER, &id).await.is_empty(),
        "the former recipient got the case file after the redirect"
    );
    let read = opened(
        NEW,
        case_file_delivered(&second, NEW, &id).await,
        &id,
        "across-brokers",
    );
    assert_eq!(
        read.name.unwrap().khmer,
        spean_testkit::KHMER_NAME,
        "the new recipient reads the case file"
    );
    // And a later read through either broker agrees.
    for broker in [&first, &second] {
        let read = broker.client(FORMER).await.referral(&id).await;
        assert!(read.case_file.is_empty());
    }
}

/// The first event of `kind` on `referral_id` that comes down `agency`'s stream; confirms
/// everything it reads.
async fn event_delivered(
    broker: &BrokerProcess,
    agency: &str,
    referral_id: &str,
    kind: pb::FeedbackKind,
) -> pb::FeedbackEvent {
    let mut client = broker.client(agency).await;
    let mut stream = client.subscribe(10).await;
    loop {
        let delivery = stream
            .next_within(Duration::from_secs(20), "the event's delivery")
            .await;
        stream.confirm(delivery.delivery_id.clone()).await;
        if let Some(pb::delivery::Payload::Feedback(e)) = delivery.payload
            && e.referral_id == referral_id
            && e.kind == kind as i32
        {
            return e;
        }
    }
}

/// What the new recipient writes once the referral is with it: its staff member's name and a note,
/// in Khmer.
fn acknowledge(referral_id: &str) -> pb::AcknowledgeRequest {
    pb::AcknowledgeRequest {
        action: sealed_action(
            NEW,
            &[SENDER],
            referral_id,
            "acknowledge-after-redirect",
            words("ដារ៉ា (Dara)", "កុមារស្នាក់នៅជាមួយយាយ", ""),
        ),
    }
}

/// After a redirect, on either delivery path and across two brokers, what the new recipient
/// writes reaches the former recipient only as a skeleton (kind, time, agency), without the staff
/// name or the note, on its stream and in a later read; the sender reads it whole, and the former
/// recipient's own redirect stays whole for it.
async fn later_notes_are_withheld_from_the_former_recipient(env: &Production, rabbitmq: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = env.broker_env();
    if !rabbitmq {
        settings.retain(|(k, _)| !k.starts_with("SPEAN_BROKER_AMQP__"));
    }
    let (first, second) = two_brokers(dir.path(), settings).await;

    let id = first
        .client(SENDER)
        .await
        .submit_lama("notes-after-redirect")
        .await;
    let mut ngo = second.client(FORMER).await;
    ngo.referrals
        .redirect(redirect(&id, "notes-after-redirect"))
        .await
        .unwrap();
    case_file_delivered(&second, NEW, &id).await;
    let mut province = second.client(NEW).await;
    province
        .referrals
        .acknowledge(acknowledge(&id))
        .await
        .unwrap();

    let seen = event_delivered(&first, FORMER, &id, pb::FeedbackKind::Acknowledged).await;
    assert_eq!(seen.actor_agency_id, NEW);
    assert!(
        seen.note.is_empty() && seen.actor_person.is_empty() && seen.sealed_text.is_empty(),
        "the former recipient read what the new recipient wrote: {seen:?}"
    );
    let whole = event_delivered(&first, SENDER, &id, pb::FeedbackKind::Acknowledged).await;
    let words = spean_testkit::sealed::open_text(SENDER, &whole).unwrap();
    assert_eq!(words.note, "កុមារស្នាក់នៅជាមួយយាយ");
    assert_eq!(words.actor_person, "ដារ៉ា (Dara)");

    let read = first.client(FORMER).await.referral(&id).await;
    let kind = |k: pb::FeedbackKind| {
        read.history
            .iter()
            .find(|e| e.kind == k as i32)
            .unwrap_or_else(|| panic!("no {k:?} in the history"))
    };
    let later = kind(pb::FeedbackKind::Acknowledged);
    assert!(later.note.is_empty() && later.actor_person.is_empty() && later.sealed_text.is_empty());
    let own = kind(pb::FeedbackKind::Redirected);
    assert_eq!(
        spean_testkit::sealed::open_text(FORMER, own)
            .unwrap()
            .actor_person,
        "សុភា (Sophea)",
        "its own redirect stays whole"
    );
}

#[tokio::test]
async fn later_notes_are_withheld_from_the_former_recipient_on_rabbitmq() {
    later_notes_are_withheld_from_the_former_recipient(&Production::new().await, true).await;
}

#[tokio::test]
async fn later_notes_are_withheld_from_the_former_recipient_on_the_database_mailbox() {
    later_notes_are_withheld_from_the_former_recipient(&Production::new().await, false).await;
}
