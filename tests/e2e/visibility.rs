//! Who sees the case file, across brokers: the rule of `spean_domain::referral::view`, applied
//! when a delivery goes down an adapter's stream, whichever broker published it and whichever
//! broker the redirect went through.

use std::time::Duration;

use spean_proto::v1 as pb;

use crate::helpers::{BrokerProcess, ServingStatus, eventually, lama};
use crate::production::Production;

const SENDER: &str = "ahc-swu";
const FORMER: &str = "mlup-russey";
const NEW: &str = "dosvy-24";

fn redirect(referral_id: &str) -> pb::RedirectRequest {
    pb::RedirectRequest {
        action: Some(pb::Action {
            referral_id: referral_id.to_owned(),
            request_id: "redirect-across-brokers".into(),
            actor_person: "សុភា (Sophea)".into(),
            note: String::new(),
        }),
        redirect: Some(pb::Redirect {
            to_agency_id: NEW.into(),
            reason: "cannot travel to Pailin".into(),
        }),
    }
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
    let first =
        BrokerProcess::start_with(&dir.path().join("broker"), "127.0.0.1:0", &env.broker_env())
            .await;
    first.wait_for_health(ServingStatus::Serving).await;
    let mut settings = env.broker_env();
    settings.push((
        "SPEAN_BROKER_TLS__PKI_DIR".into(),
        dir.path().join("broker/pki").display().to_string(),
    ));
    let second =
        BrokerProcess::start_with(&dir.path().join("broker-2"), "127.0.0.1:0", &settings).await;
    second.wait_for_health(ServingStatus::Serving).await;

    let mut hospital = first.client(SENDER).await;
    let submitted = hospital
        .referrals
        .submit(lama("across-brokers"))
        .await
        .unwrap()
        .into_inner();
    let id = submitted.referral.unwrap().envelope.unwrap().referral_id;
    let queue = format!("spean.agency.{FORMER}");
    eventually(
        "the referral published to the recipient's queue",
        || async { (env.outbox(FORMER).await == 0 && env.depth(&queue).await >= 1).then_some(()) },
    )
    .await;

    let mut ngo = second.client(FORMER).await;
    ngo.referrals.redirect(redirect(&id)).await.unwrap();

    let case_file = lama("any").case_file;
    assert!(
        case_file_delivered(&first, FORMER, &id).await.is_empty(),
        "the former recipient got the case file after the redirect"
    );
    assert_eq!(
        case_file_delivered(&second, NEW, &id).await,
        case_file,
        "the new recipient reads the case file"
    );
    // And a later read through either broker agrees.
    for broker in [&first, &second] {
        let read = broker
            .client(FORMER)
            .await
            .referrals
            .get(pb::GetRequest {
                referral_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(read.case_file.is_empty());
    }
}
