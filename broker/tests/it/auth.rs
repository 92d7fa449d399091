//! Every agency is identified by its client certificate, and sees only its own referrals.

use std::path::PathBuf;

use spean_broker::ids::AgencyId;
use spean_broker::pki::Pki;
use spean_proto::v1 as pb;
use tonic::Code;

use crate::helpers::{Client, TestBroker, action, lama, spawn_broker};

/// How a `Submit` over a fresh channel presenting `identity` (certificate and key files) ended:
/// `Ok`, or the status code (none when the connection itself failed) with the whole error chain on
/// one line, so that the TLS alert deep inside it can be checked.
async fn submit_presenting(
    broker: &TestBroker,
    identity: Option<(PathBuf, PathBuf)>,
    client_ref: &str,
) -> Result<(), (Option<Code>, String)> {
    let channel = broker
        .channel(identity, &broker.pki().join("ca.pem"))
        .await
        .map_err(|e| (None, chain(&e)))?;
    // The handshake may complete lazily (TLS 1.3 sends the server's verdict after the client's
    // Finished), so the refusal can arrive with the first call.
    Client::new(channel)
        .submit(lama(client_ref))
        .await
        .map(|_| ())
        .map_err(|status| (Some(status.code()), chain(&status)))
}

/// An error and its sources, `a: b: c`.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Submits once presenting the genuine `ahc-swu` certificate (the control: this very setup works),
/// then once presenting `presented`, and checks that the second was refused in the TLS handshake
/// with `alert`, before any service ran, and wrote nothing.
async fn assert_refused_in_handshake(
    broker: &TestBroker,
    presented: Option<(PathBuf, PathBuf)>,
    alert: &str,
) {
    let genuine = broker.identity_dir("ahc-swu");
    submit_presenting(
        broker,
        Some((genuine.join("cert.pem"), genuine.join("key.pem"))),
        &format!("control-{}", uuid::Uuid::now_v7().simple()),
    )
    .await
    .unwrap();
    let before = broker.count("referrals").await;

    let (code, text) = match submit_presenting(broker, presented, "refused-1").await {
        Ok(()) => panic!("the call succeeded; expected the TLS alert {alert}"),
        Err(refusal) => refusal,
    };

    // Refused by TLS, not by a service: a transport failure, never an answer like
    // PERMISSION_DENIED or UNAUTHENTICATED from the gateway.
    assert!(
        matches!(code, None | Some(Code::Unavailable) | Some(Code::Unknown)),
        "{code:?}: {text}"
    );
    assert!(
        text.contains(alert),
        "expected the TLS alert {alert}: {text}"
    );
    assert_eq!(
        broker.count("referrals").await,
        before,
        "only the controls were written"
    );
}

#[tokio::test]
async fn a_connection_without_a_client_certificate_is_refused() {
    let broker = spawn_broker().await;
    assert_refused_in_handshake(&broker, None, "CertificateRequired").await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_with_the_networks_name_is_refused() {
    let broker = spawn_broker().await;
    let other = tempfile::tempdir().unwrap();
    let rogue = Pki::new(other.path());
    rogue.init().unwrap();
    // The same agency id as a real one, so only the issuer differs.
    let forged = rogue
        .issue_agency(&AgencyId::parse("a", "ahc-swu").unwrap())
        .unwrap();

    // Both CAs carry the same name, so the broker finds "its" issuer and the signature does not
    // verify: rustls answers a bad signature with the decrypt_error alert (RFC 8446, 6.2).
    let presented = Some((forged.join("cert.pem"), forged.join("key.pem")));
    assert_refused_in_handshake(&broker, presented, "DecryptError").await;
}

/// Writes a certificate for `agency` issued by a CA of another name, unknown to the broker.
fn issued_by_a_stranger(dir: &std::path::Path, agency: &str) -> (PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "Another network CA");
    let issuer = Issuer::new(ca, KeyPair::generate().unwrap());
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, agency);
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = (dir.join("stranger.pem"), dir.join("stranger.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// Writes a certificate for `agency` issued by the network's own CA (from the broker's PKI
/// folder `pki`), valid from `not_before` to `not_after`.
fn issued_by_the_network(
    pki: &std::path::Path,
    out: &std::path::Path,
    agency: &str,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> (PathBuf, PathBuf) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(pki.join("ca.pem")).unwrap(),
        ca_key,
    )
    .unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, agency);
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = (out.join("dated.pem"), out.join("dated.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// A certificate the network's own CA issued, for an agency in the directory, is refused in the
/// handshake once it has expired, and before it is valid: a certificate is good only for its
/// period, whoever holds it.
#[tokio::test]
async fn an_expired_or_not_yet_valid_certificate_is_refused() {
    let broker = spawn_broker().await;
    let other = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc();
    let expired = issued_by_the_network(
        &broker.pki(),
        other.path(),
        "ahc-swu",
        now - time::Duration::days(400),
        now - time::Duration::days(1),
    );
    assert_refused_in_handshake(&broker, Some(expired), "CertificateExpired").await;
    let early = tempfile::tempdir().unwrap();
    let not_yet = issued_by_the_network(
        &broker.pki(),
        early.path(),
        "ahc-swu",
        now + time::Duration::days(1),
        now + time::Duration::days(400),
    );
    // TLS has one alert for both: outside its period. (The second control is an idempotent retry
    // of the first's referral.)
    assert_refused_in_handshake(&broker, Some(not_yet), "CertificateExpired").await;
}

#[tokio::test]
async fn a_certificate_from_a_ca_of_another_name_is_refused_as_unknown() {
    let broker = spawn_broker().await;
    let other = tempfile::tempdir().unwrap();
    let presented = Some(issued_by_a_stranger(other.path(), "ahc-swu"));
    assert_refused_in_handshake(&broker, presented, "UnknownCA").await;
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
