//! Story 1 of `shared/fixtures/scenarios.md` (and the README's walkthrough): `ahc-swu`, a hospital,
//! refers a 6-year-old girl from Pailin whose family is leaving against medical advice (LAMA). It
//! addresses the referral by service and province, not by agency, and the broker resolves it.
//!
//! Written once so the broker's unit and integration tests, the end-to-end tests and the benchmark
//! send the same referral, with the same Khmer text, byte for byte.

use spean_proto::v1 as pb;

/// The child's name in Khmer script: multi-byte UTF-8 with combining vowel signs and a coeng, so a
/// store or codec that mangles text cannot pass for one that keeps it.
pub const KHMER_NAME: &str = "សុខ ស្រីល័ក្ខ";

/// The child's name in Latin script, as the hospital also records it.
pub const LATIN_NAME: &str = "Sok Sreyleak";

/// The encoded case file of story 1's child: her name, date of birth and the reason for the
/// referral, in Khmer. The broker carries it as opaque bytes.
pub fn case_file() -> Vec<u8> {
    prost::Message::encode_to_vec(&pb::CaseFile {
        name: Some(pb::PersonName {
            khmer: KHMER_NAME.into(),
            latin: LATIN_NAME.into(),
        }),
        date_of_birth: "2020-05-14".into(),
        reason_for_referral: "គ្រួសារចាកចេញពីមន្ទីរពេទ្យ ត្រូវការតាមដាននៅផ្ទះ".into(),
        ..Default::default()
    })
}

/// Story 1's referral as `ahc-swu` submits it: kind `lama`, emergency, a girl aged 5–9 from Pailin
/// (province 24), to whoever offers `reintegration_follow_up` there. `client_ref` is the sender's
/// own reference, which makes a resubmission idempotent; tests pick one per referral.
pub fn lama(client_ref: &str) -> pb::SubmitRequest {
    pb::SubmitRequest {
        client_ref: client_ref.into(),
        recipient: Some(pb::Recipient {
            target: Some(pb::recipient::Target::Service(pb::ServiceInProvince {
                service: "reintegration_follow_up".into(),
                province: "24".into(),
            })),
        }),
        kind: "lama".into(),
        urgency: pb::Urgency::Emergency as i32,
        subject: Some(pb::Subject {
            sex: pb::Sex::Female as i32,
            age_band: pb::AgeBand::AgeBand59 as i32,
            province: "24".into(),
        }),
        case_file: case_file(),
        client_pseudonym: String::new(),
    }
}
