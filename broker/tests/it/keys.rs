//! `DirectoryService.PublishKey` and `AgencyKeys` through gRPC: an agency publishes the key others
//! seal to it with, bound to the certificate its connection presents; whoever asks reads each
//! agency's newest key, and any key by its id.

use rustls::pki_types::pem::PemObject;
use spean_proto::v1 as pb;
use spean_seal::SecretKey;
use spean_testkit::sealed::{publish_test_key, test_key};
use tonic::Code;

use crate::helpers::{Client, TestBroker, spawn_broker};

/// `agency`'s certificate and certificate key, PEM, from its identity folder.
fn identity(broker: &TestBroker, agency: &str) -> (Vec<u8>, Vec<u8>) {
    let dir = broker.identity_dir(agency);
    (
        std::fs::read(dir.join("cert.pem")).unwrap(),
        std::fs::read(dir.join("key.pem")).unwrap(),
    )
}

/// The request publishing `agency`'s test key, signed as its adapter signs it.
fn test_key_of(broker: &TestBroker, agency: &str) -> pb::PublishKeyRequest {
    let (cert, key) = identity(broker, agency);
    publish_test_key(agency, &cert, &key)
}

/// The same request for another key of `agency` than its test key: a rotated one.
fn rotated_key_of(broker: &TestBroker, agency: &str, seed: &str) -> pb::PublishKeyRequest {
    let (cert, key_pem) = identity(broker, agency);
    let rotated = SecretKey::derive(seed.as_bytes());
    let mut request = publish_test_key(agency, &cert, &key_pem);
    let key = request.key.as_mut().unwrap();
    key.public_key = rotated.public().as_bytes().to_vec();
    key.signature = spean_seal::sign_binding(agency, rotated.public(), &key_pem).unwrap();
    request
}

fn key_id(request: &pb::PublishKeyRequest) -> Vec<u8> {
    spean_seal::keys::key_id(&request.key.as_ref().unwrap().public_key).to_vec()
}

async fn publish(
    c: &mut Client,
    request: pb::PublishKeyRequest,
) -> Result<pb::AgencyKey, tonic::Status> {
    c.directory
        .publish_key(request)
        .await
        .map(|r| r.into_inner().key.unwrap())
}

async fn keys(c: &mut Client, agencies: &[&str], key_ids: &[Vec<u8>]) -> Vec<pb::AgencyKey> {
    c.directory
        .agency_keys(pb::AgencyKeysRequest {
            agency_ids: agencies.iter().map(|a| (*a).to_owned()).collect(),
            key_ids: key_ids.to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .keys
}

#[tokio::test]
async fn an_agency_publishes_its_key_and_any_agency_reads_it() {
    let broker = spawn_broker().await;
    let mut ngo = broker.client("mlup-russey").await;
    let mut hospital = broker.client("ahc-swu").await;
    assert!(keys(&mut hospital, &["mlup-russey"], &[]).await.is_empty());

    let request = test_key_of(&broker, "mlup-russey");
    let published = publish(&mut ngo, request.clone()).await.unwrap();
    let sent = request.key.unwrap();
    assert_eq!(published.agency_id, "mlup-russey");
    assert_eq!(
        published.public_key,
        test_key("mlup-russey").public().as_bytes().to_vec()
    );
    assert_eq!(published.certificate, sent.certificate);
    assert_eq!(published.signature, sent.signature);
    assert!(published.published_at.is_some());

    let read = keys(&mut hospital, &["mlup-russey", "dosvy-24"], &[]).await;
    assert_eq!(read, vec![published.clone()], "dosvy-24 published nothing");
    // The hospital checks the binding against the network CA before it seals to the key.
    let ca = std::fs::read(broker.pki().join("ca.pem")).unwrap();
    let checked = spean_seal::verify_binding(&read[0], &ca).unwrap();
    assert_eq!(
        checked.as_bytes(),
        test_key("mlup-russey").public().as_bytes()
    );
}

#[tokio::test]
async fn publishing_another_agencys_key_is_permission_denied() {
    let broker = spawn_broker().await;
    let mut ngo = broker.client("mlup-russey").await;
    // Signed by the hospital's own certificate key, but sent over the NGO's connection.
    let err = publish(&mut ngo, test_key_of(&broker, "ahc-swu"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("ahc-swu"), "{}", err.message());
    assert!(keys(&mut ngo, &["ahc-swu"], &[]).await.is_empty());
}

#[tokio::test]
async fn a_key_bound_to_another_certificate_than_the_connections_is_invalid() {
    let broker = spawn_broker().await;
    let mut ngo = broker.client("mlup-russey").await;
    // The NGO's key, but with the hospital's certificate: not the one this connection presented.
    let mut request = test_key_of(&broker, "mlup-russey");
    let (hospital_cert, _) = identity(&broker, "ahc-swu");
    request.key.as_mut().unwrap().certificate =
        rustls::pki_types::CertificateDer::from_pem_slice(&hospital_cert)
            .unwrap()
            .to_vec();
    let err = publish(&mut ngo, request).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("key.certificate:"),
        "{}",
        err.message()
    );
    assert!(keys(&mut ngo, &["mlup-russey"], &[]).await.is_empty());
}

#[tokio::test]
async fn a_key_whose_signature_does_not_verify_is_invalid() {
    let broker = spawn_broker().await;
    let mut ngo = broker.client("mlup-russey").await;
    // A signature over another key: the broker (or anyone between) swapping the public key.
    let mut swapped = test_key_of(&broker, "mlup-russey");
    swapped.key.as_mut().unwrap().public_key = test_key("dosvy-24").public().as_bytes().to_vec();
    // And a signature damaged in transit.
    let mut damaged = test_key_of(&broker, "mlup-russey");
    let signature = &mut damaged.key.as_mut().unwrap().signature;
    let last = signature.len() - 1;
    signature[last] ^= 0x01;
    for request in [swapped, damaged] {
        let err = publish(&mut ngo, request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().starts_with("key.signature:"),
            "{}",
            err.message()
        );
    }
    assert!(keys(&mut ngo, &["mlup-russey"], &[]).await.is_empty());
}

/// A rotated key becomes the agency's current key; the one before stays readable by its id, so
/// that what was sealed with it still opens. Publishing a key again changes nothing.
#[tokio::test]
async fn the_newest_key_is_current_and_every_key_stays_readable_by_its_id() {
    let broker = spawn_broker().await;
    let mut ngo = broker.client("mlup-russey").await;
    let mut hospital = broker.client("ahc-swu").await;
    let first_request = test_key_of(&broker, "mlup-russey");
    let first = publish(&mut ngo, first_request.clone()).await.unwrap();
    let second_request = rotated_key_of(
        &broker,
        "mlup-russey",
        "mlup-russey rotated its key in 2027, seed of 32+ bytes",
    );
    let second = publish(&mut ngo, second_request.clone()).await.unwrap();
    assert_ne!(first.public_key, second.public_key);
    let hospitals = publish(&mut hospital, test_key_of(&broker, "ahc-swu"))
        .await
        .unwrap();

    assert_eq!(
        keys(&mut hospital, &["mlup-russey"], &[]).await,
        vec![second.clone()]
    );
    assert_eq!(
        keys(&mut hospital, &[], &[key_id(&first_request)]).await,
        vec![first.clone()]
    );
    // Named both ways, each key comes once.
    let mut both = keys(
        &mut hospital,
        &["mlup-russey", "ahc-swu"],
        &[key_id(&first_request), key_id(&second_request)],
    )
    .await;
    both.sort_by(|a, b| a.public_key.cmp(&b.public_key));
    let mut expected = vec![first.clone(), second.clone(), hospitals];
    expected.sort_by(|a, b| a.public_key.cmp(&b.public_key));
    assert_eq!(both, expected);

    // Publishing the first key again (an adapter retrying) keeps its time: it does not become
    // current again.
    let again = publish(&mut ngo, first_request).await.unwrap();
    assert_eq!(again, first);
    let again = publish(&mut ngo, second_request).await.unwrap();
    assert_eq!(again, second);
    assert_eq!(keys(&mut hospital, &["mlup-russey"], &[]).await, [second]);
    assert_eq!(broker.count("agency_keys").await, 3);
}

#[tokio::test]
async fn asking_for_malformed_key_ids_or_agency_ids_is_invalid() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    for (request, field) in [
        (
            pb::AgencyKeysRequest {
                agency_ids: vec![],
                key_ids: vec![vec![7; 31]],
            },
            "key_ids:",
        ),
        (
            pb::AgencyKeysRequest {
                agency_ids: vec!["Not An Agency!".into()],
                key_ids: vec![],
            },
            "agency_ids:",
        ),
    ] {
        let err = hospital.directory.agency_keys(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(field), "{}", err.message());
    }
}
