//! Every agency is identified by its client certificate, and sees only its own referrals.

use spean_broker::ids::AgencyId;
use spean_broker::pki::Pki;
use spean_proto::v1 as pb;
use tonic::Code;

use crate::helpers::{Client, action, lama, spawn_broker};

#[tokio::test]
async fn a_connection_without_a_client_certificate_is_refused() {
    let broker = spawn_broker().await;
    let result = match broker.channel(None, &broker.pki().join("ca.pem")).await {
        // The handshake may complete lazily; the first call must fail either way.
        Ok(channel) => Client::new(channel)
            .referrals
            .list(pb::ListRequest::default())
            .await
            .map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(
        result.is_err(),
        "a call without a client certificate succeeded"
    );
    assert_eq!(broker.count("referrals").await, 0);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let broker = spawn_broker().await;
    let other = tempfile::tempdir().unwrap();
    let rogue = Pki::new(other.path());
    rogue.init().unwrap();
    let dir = rogue
        .issue_agency(&AgencyId::parse("a", "ahc-swu").unwrap())
        .unwrap();
    let result = match broker
        .channel(
            Some((dir.join("cert.pem"), dir.join("key.pem"))),
            &broker.pki().join("ca.pem"),
        )
        .await
    {
        Ok(channel) => Client::new(channel)
            .submit(lama("rogue-1"))
            .await
            .map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(
        result.is_err(),
        "a certificate from another CA was accepted"
    );
    assert_eq!(broker.count("referrals").await, 0);
}

#[tokio::test]
async fn a_certificate_for_an_agency_outside_the_directory_is_refused() {
    let broker = spawn_broker().await;
    // Issued by the network's own CA, but the directory has no such agency.
    Pki::new(broker.pki())
        .issue_agency(&AgencyId::parse("a", "not-in-directory").unwrap())
        .unwrap();
    let mut stranger = broker.client("not-in-directory").await;
    let err = stranger.submit(lama("x-1")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("no agency in the directory"));
    assert_eq!(broker.count("referrals").await, 0);
}

#[tokio::test]
async fn an_agency_sees_only_referrals_it_sent_or_received() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let id = hospital.submit_lama("ahc-1").await;

    let mut outsider = broker.client("ssc-smhs").await;
    let err = outsider
        .referrals
        .get(pb::GetRequest {
            referral_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let listed = outsider
        .referrals
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.referrals.is_empty());

    // Acting on it is refused the same way: its existence is not revealed.
    let err = outsider
        .referrals
        .acknowledge(pb::AcknowledgeRequest {
            action: action(&id, "o-1"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let mut ngo = broker.client("mlup-russey").await;
    let got = ngo
        .referrals
        .get(pb::GetRequest { referral_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.envelope.unwrap().recipient_agency_id, "mlup-russey");
}
