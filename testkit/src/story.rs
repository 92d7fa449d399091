//! Story 1 of `shared/fixtures/scenarios.md` (and the README's walkthrough): `ahc-swu`, a hospital,
//! refers a 6-year-old girl from Pailin whose family is leaving against medical advice (LAMA). It
//! addresses the referral by service and province, not by agency, and the broker resolves it.
//!
//! Written once so the broker's unit and integration tests, the end-to-end tests and the benchmark
//! send the same referral, with the same Khmer text, byte for byte.

use prost::Message;
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

/// The consent the stories' referrals carry: the child's guardian agreed, on 1 January 2024, to
/// every sharing a story may need (the referral, a redirect, a broadcast, notified parties, a
/// delegated follow-up). A fixed day in the past, so a test that moves the broker's clock does not
/// make it lie in the future.
pub fn guardian_consent() -> pb::ReferralConsent {
    pb::ReferralConsent {
        given_by: pb::ConsentGiver::Guardian as i32,
        given_at: Some(prost_types::Timestamp {
            seconds: 1_704_067_200,
            nanos: 0,
        }),
        sharing: [
            pb::Sharing::Referral,
            pb::Sharing::Redirect,
            pb::Sharing::Broadcast,
            pb::Sharing::NotifiedParties,
            pb::Sharing::FollowUpDelegation,
        ]
        .map(|s| s as i32)
        .to_vec(),
        emergency_exception: String::new(),
    }
}

/// Story 1's referral as `ahc-swu` submits it: kind `lama`, emergency, a girl aged 5–9 from Pailin
/// (province 24), to whoever offers `reintegration_follow_up` there. `client_ref` is the sender's
/// own reference, which makes a resubmission idempotent; tests pick one per referral. The case
/// file is in clear: [`lama`] seals it.
pub fn lama_in_clear(client_ref: &str) -> pb::SubmitRequest {
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
        notify_agency_ids: Vec::new(),
        broadcast: None,
        follows_referral_id: String::new(),
        consent: Some(guardian_consent()),
    }
}

/// Story 1's referral with its case file sealed by `ahc-swu` (with the test keys of
/// [`crate::sealed`]) to the providers of `reintegration_follow_up` in Pailin in the fixture
/// network (`mlup-russey`, `dosvy-24`), as the broker requires.
pub fn lama(client_ref: &str) -> pb::SubmitRequest {
    crate::sealed::sealed_submit(
        "ahc-swu",
        lama_in_clear(client_ref),
        &["mlup-russey", "dosvy-24"],
    )
}

/// Story 2's request as `ahc-swu` submits it: kind `placement`, emergency, an infant girl (0–4)
/// from Siem Reap (province 17), addressed to whoever offers `placement` there. Left to the
/// kind's default, it is a broadcast: every provider in 17 is a candidate (`mlup-russey`,
/// `dosvy-17` in the fixture network). The case file is sealed (test keys) to both and `ahc-swu`.
pub fn placement(client_ref: &str) -> pb::SubmitRequest {
    crate::sealed::sealed_submit(
        "ahc-swu",
        placement_in_clear(client_ref),
        &["mlup-russey", "dosvy-17"],
    )
}

/// Story 2's request with its case file in clear: [`placement`] seals it.
pub fn placement_in_clear(client_ref: &str) -> pb::SubmitRequest {
    pb::SubmitRequest {
        client_ref: client_ref.into(),
        recipient: Some(pb::Recipient {
            target: Some(pb::recipient::Target::Service(pb::ServiceInProvince {
                service: "placement".into(),
                province: "17".into(),
            })),
        }),
        kind: "placement".into(),
        urgency: pb::Urgency::Emergency as i32,
        subject: Some(pb::Subject {
            sex: pb::Sex::Female as i32,
            age_band: pb::AgeBand::AgeBand04 as i32,
            province: "17".into(),
        }),
        case_file: pb::CaseFile {
            name: Some(pb::PersonName {
                khmer: "ស្រី នីតា".into(),
                latin: "Srey Nita".into(),
            }),
            date_of_birth: "2026-09-02".into(),
            reason_for_referral: "ម្ដាយអាចបោះបង់ចោលទារក ត្រូវការគ្រួសារអប់រំបណ្ដោះអាសន្ន".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        client_pseudonym: String::new(),
        notify_agency_ids: Vec::new(),
        broadcast: None,
        follows_referral_id: String::new(),
        consent: Some(guardian_consent()),
    }
}

/// Story 3's referral as `mlup-russey` submits it: kind `child_protection`, urgent, a girl (10–14)
/// from Pursat (province 15), to `legal-aid-nw`, with `dosvy-15` notified. The case file holds
/// the narrative only `legal-aid-nw` may read, sealed (test keys) to it and `mlup-russey`.
pub fn child_protection(client_ref: &str) -> pb::SubmitRequest {
    let request = pb::SubmitRequest {
        client_ref: client_ref.into(),
        recipient: Some(pb::Recipient {
            target: Some(pb::recipient::Target::AgencyId("legal-aid-nw".into())),
        }),
        kind: "child_protection".into(),
        urgency: pb::Urgency::Urgent as i32,
        subject: Some(pb::Subject {
            sex: pb::Sex::Female as i32,
            age_band: pb::AgeBand::AgeBand1014 as i32,
            province: "15".into(),
        }),
        case_file: pb::CaseFile {
            name: Some(pb::PersonName {
                khmer: "ចាន់ សុភា".into(),
                latin: "Chan Sophea".into(),
            }),
            date_of_birth: "2014-03-11".into(),
            reason_for_referral: CHILD_PROTECTION_NARRATIVE.into(),
            ..Default::default()
        }
        .encode_to_vec(),
        client_pseudonym: String::new(),
        notify_agency_ids: vec!["dosvy-15".into()],
        broadcast: None,
        follows_referral_id: String::new(),
        consent: Some(guardian_consent()),
    };
    crate::sealed::sealed_submit("mlup-russey", request, &["legal-aid-nw"])
}

/// The narrative of story 3's case file: the words no notified party, coordinator or operator may
/// ever read. Tests look for it (and for its name) in everything such a party receives.
pub const CHILD_PROTECTION_NARRATIVE: &str = "ការរំលោភបំពានផ្លូវភេទលើកុមារ ត្រូវការជំនួយផ្លូវច្បាប់";
