//! Sealing for tests that speak gRPC themselves instead of through an adapter: each agency gets a
//! key derived from its id ([`test_key`]), so a test seals as any agency and opens any agency's
//! box. The broker checks the shape of what it is given, never the keys, so these boxes pass
//! where an adapter's would; an adapter opens them only once the sending agency published its
//! test key ([`publish_test_key`]).

use prost::Message;
use sha2::{Digest, Sha256};
use spean_proto::v1 as pb;
use spean_seal::{Purpose, SecretKey, box_for, open_box, seal};

/// The test key of `agency`: the same in every process.
pub fn test_key(agency: &str) -> SecretKey {
    SecretKey::derive(&Sha256::digest(format!("spean test key\0{agency}")))
}

fn sealed(from: &str, plaintext: &[u8], purpose: Purpose<'_>, to: &[&str]) -> Vec<u8> {
    let from_key = test_key(from);
    let keys: Vec<(String, SecretKey)> =
        to.iter().map(|a| ((*a).to_owned(), test_key(a))).collect();
    let to: Vec<(&str, &spean_seal::PublicKey)> =
        keys.iter().map(|(a, k)| (a.as_str(), k.public())).collect();
    seal(plaintext, purpose, (from, &from_key), &to)
        .expect("sealing with test keys")
        .encode_to_vec()
}

/// A case file sealed by `sender` to `to` and to itself, as an adapter seals it.
pub fn seal_case_file(sender: &str, client_ref: &str, case_file: &[u8], to: &[&str]) -> Vec<u8> {
    let mut readers = to.to_vec();
    readers.push(sender);
    sealed(
        sender,
        case_file,
        Purpose::CaseFile { sender, client_ref },
        &readers,
    )
}

/// A submit request with its case file (in clear, as the story builders make it) sealed by
/// `sender` to `to` and itself.
pub fn sealed_submit(
    sender: &str,
    mut request: pb::SubmitRequest,
    to: &[&str],
) -> pb::SubmitRequest {
    request.case_file = seal_case_file(sender, &request.client_ref, &request.case_file, to);
    request
}

/// A case file re-sealed by `by` to a redirect's new recipient `to`.
pub fn reseal_case_file(
    by: &str,
    sender: &str,
    client_ref: &str,
    case_file: &[u8],
    to: &str,
) -> Vec<u8> {
    sealed(
        by,
        case_file,
        Purpose::CaseFile { sender, client_ref },
        &[to],
    )
}

/// A follow-up part sealed by `by` to the delegate `to` and itself.
pub fn seal_follow_up_part(by: &str, referral_id: &str, part: &[u8], to: &str) -> Vec<u8> {
    sealed(by, part, Purpose::FollowUpPart { referral_id }, &[to, by])
}

/// An action's free text sealed by `from` to `to` and itself.
pub fn seal_text(from: &str, referral_id: &str, text: &pb::FreeText, to: &[&str]) -> Vec<u8> {
    let mut readers = to.to_vec();
    readers.push(from);
    sealed(
        from,
        &text.encode_to_vec(),
        Purpose::FreeText { referral_id },
        &readers,
    )
}

/// Opens `agency`'s box of a referral's case file; `None` if it holds none.
pub fn open_case_file(agency: &str, referral: &pb::Referral) -> Option<pb::CaseFile> {
    let envelope = referral.envelope.as_ref()?;
    let plain = open(
        agency,
        &referral.case_file,
        Purpose::CaseFile {
            sender: &envelope.sender_agency_id,
            client_ref: &envelope.client_ref,
        },
    )?;
    pb::CaseFile::decode(plain.as_slice()).ok()
}

/// Opens `agency`'s box of an event's free text; `None` if it holds none.
pub fn open_text(agency: &str, event: &pb::FeedbackEvent) -> Option<pb::FreeText> {
    let plain = open(
        agency,
        &event.sealed_text,
        Purpose::FreeText {
            referral_id: &event.referral_id,
        },
    )?;
    pb::FreeText::decode(plain.as_slice()).ok()
}

/// Opens `agency`'s box of sealed bytes for `purpose`, with the test keys.
pub fn open(agency: &str, sealed: &[u8], purpose: Purpose<'_>) -> Option<Vec<u8>> {
    let sealed = pb::Sealed::decode(sealed).ok()?;
    let sealed_box = box_for(&sealed, agency)?;
    let writer = test_key(&sealed_box.from_agency_id);
    open_box(sealed_box, &test_key(agency), writer.public(), purpose).ok()
}

/// The `PublishKeyRequest` that publishes `agency`'s test key, signed with its certificate's key
/// (`cert_pem`, `key_pem` from its identity folder), so that real adapters open what the test
/// seals as that agency.
pub fn publish_test_key(agency: &str, cert_pem: &[u8], key_pem: &[u8]) -> pb::PublishKeyRequest {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let key = test_key(agency);
    let certificate = CertificateDer::from_pem_slice(cert_pem)
        .expect("a certificate PEM")
        .to_vec();
    pb::PublishKeyRequest {
        key: Some(pb::AgencyKey {
            agency_id: agency.into(),
            public_key: key.public().as_bytes().to_vec(),
            certificate,
            signature: spean_seal::sign_binding(agency, key.public(), key_pem)
                .expect("signing a test key"),
            published_at: None,
        }),
    }
}
