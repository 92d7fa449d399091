//! Submitting referrals: routing, idempotency, validation, limits, Khmer text.

use spean_proto::v1 as pb;
use tonic::Code;

use crate::helpers::{KHMER_NAME, case_file, lama, spawn_broker, spawn_broker_with};

#[tokio::test]
async fn a_referral_addressed_by_service_and_province_goes_to_the_local_provider() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let response = hospital.submit(lama("ahc-0001")).await.unwrap();
    assert!(response.created);
    let referral = response.referral.unwrap();
    let envelope = referral.envelope.unwrap();
    assert_eq!(envelope.sender_agency_id, "ahc-swu");
    assert_eq!(envelope.recipient_agency_id, "mlup-russey");
    assert_eq!(referral.state, pb::ReferralState::Sent as i32);
    assert_eq!(
        uuid::Uuid::parse_str(&envelope.referral_id)
            .unwrap()
            .get_version_num(),
        7
    );
    assert_eq!(referral.history.len(), 1);
    assert_eq!(referral.history[0].kind, pb::FeedbackKind::Submitted as i32);
}

#[tokio::test]
async fn duplicate_client_ref_returns_the_same_referral() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    // The same request again, byte for byte, as an adapter retries it (sealing anew would give
    // other bytes: the adapter keeps what it first sealed).
    let request = lama("ahc-0002");
    let first = hospital.submit(request.clone()).await.unwrap();
    let again = hospital.submit(request).await.unwrap();
    assert!(first.created);
    assert!(!again.created);
    assert_eq!(
        first.referral.unwrap().envelope.unwrap().referral_id,
        again.referral.unwrap().envelope.unwrap().referral_id
    );
    assert_eq!(broker.count("referrals").await, 1);
    assert_eq!(broker.count("mailbox").await, 1);
}

#[tokio::test]
async fn the_same_client_ref_with_other_content_is_already_exists() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    hospital.submit(lama("ahc-0003")).await.unwrap();
    let mut changed = lama("ahc-0003");
    changed.urgency = pb::Urgency::Routine as i32;
    let err = hospital.submit(changed).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(
        err.message().starts_with("client_ref:"),
        "{}",
        err.message()
    );
    assert_eq!(broker.count("referrals").await, 1);
}

#[tokio::test]
async fn client_refs_are_scoped_to_their_sender() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut ssc = broker.client("ssc-smhs").await;
    hospital.submit(lama("shared-ref")).await.unwrap();
    let from_ssc = spean_testkit::sealed::sealed_submit(
        "ssc-smhs",
        spean_testkit::lama_in_clear("shared-ref"),
        &["mlup-russey"],
    );
    let r = ssc.submit(from_ssc).await.unwrap();
    assert!(r.created);
    assert_eq!(broker.count("referrals").await, 2);
}

#[tokio::test]
async fn khmer_text_in_the_case_file_survives_byte_for_byte() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let id = hospital.submit_lama("ahc-0004").await;
    let mut ngo = broker.client("mlup-russey").await;
    let got = ngo
        .referrals
        .get(pb::GetRequest { referral_id: id })
        .await
        .unwrap()
        .into_inner();
    // Sealed, and opened by the NGO byte for byte.
    let decoded = spean_testkit::sealed::open_case_file("mlup-russey", &got).unwrap();
    assert_eq!(prost::Message::encode_to_vec(&decoded), case_file());
    assert_eq!(
        decoded.name.unwrap().khmer.as_bytes(),
        KHMER_NAME.as_bytes()
    );
}

/// A way to break a valid request.
type Breakage = Box<dyn Fn(&mut pb::SubmitRequest)>;

/// Each malformed request gets INVALID_ARGUMENT naming its field, and leaves nothing behind.
#[tokio::test]
async fn malformed_submissions_name_the_field_and_leave_no_trace() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let cases: Vec<(&str, Breakage)> = vec![
        (
            "client_ref",
            Box::new(|r| r.client_ref = "has spaces".into()),
        ),
        ("recipient", Box::new(|r| r.recipient = None)),
        (
            "recipient.agency_id",
            Box::new(|r| {
                r.recipient = Some(pb::Recipient {
                    target: Some(pb::recipient::Target::AgencyId("no-such-agency".into())),
                })
            }),
        ),
        (
            "recipient.service.province",
            Box::new(|r| {
                r.recipient = Some(pb::Recipient {
                    target: Some(pb::recipient::Target::Service(pb::ServiceInProvince {
                        service: "placement".into(),
                        province: "Pailin".into(),
                    })),
                })
            }),
        ),
        ("kind", Box::new(|r| r.kind = "tea_party".into())),
        ("urgency", Box::new(|r| r.urgency = 0)),
        ("subject", Box::new(|r| r.subject = None)),
        (
            "subject.sex",
            Box::new(|r| r.subject.as_mut().unwrap().sex = 99),
        ),
        (
            "subject.province",
            Box::new(|r| r.subject.as_mut().unwrap().province = "77".into()),
        ),
        ("case_file", Box::new(|r| r.case_file.clear())),
        (
            "recipient",
            Box::new(|r| {
                r.recipient = Some(pb::Recipient {
                    target: Some(pb::recipient::Target::AgencyId("ahc-swu".into())),
                })
            }),
        ),
    ];
    for (field, break_it) in cases {
        let mut request = lama("ahc-bad");
        break_it(&mut request);
        let err = hospital.submit(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(&format!("{field}:")),
            "expected the message to name {field}: {}",
            err.message()
        );
    }
    assert_eq!(broker.count("referrals").await, 0);
    assert_eq!(broker.count("referral_events").await, 0);
    assert_eq!(broker.count("mailbox").await, 0);
    // The key was never used, so a valid request with it now succeeds.
    assert!(hospital.submit(lama("ahc-bad")).await.unwrap().created);
}

#[tokio::test]
async fn a_service_nobody_offers_in_the_province_is_failed_precondition() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut r = lama("ahc-0005");
    r.recipient = Some(pb::Recipient {
        target: Some(pb::recipient::Target::Service(pb::ServiceInProvince {
            service: "drug_treatment".into(),
            province: "24".into(),
        })),
    });
    let err = hospital.submit(r).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(broker.count("referrals").await, 0);
}

#[tokio::test]
async fn oversize_case_files_and_messages_are_refused_and_leave_no_trace() {
    let broker = spawn_broker_with(|c| {
        c.limits.max_case_file_bytes = 4 * 1024;
        c.limits.max_message_bytes = 64 * 1024;
    })
    .await;
    let mut hospital = broker.client("ahc-swu").await;

    let mut big_case = lama("ahc-big-1");
    big_case.case_file = vec![7; 5 * 1024];
    let err = hospital.submit(big_case).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("case_file:"), "{}", err.message());

    let mut huge = lama("ahc-big-2");
    huge.case_file = vec![7; 100 * 1024];
    let err = hospital.submit(huge).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains("limits.max_message_bytes (65536 bytes)"),
        "{err:?}"
    );
    // Over the size, not the rate: nothing tells the adapter to retry it later.
    assert!(err.metadata().get("grpc-retry-pushback-ms").is_none());

    assert_eq!(broker.count("referrals").await, 0);
    assert_eq!(broker.count("mailbox").await, 0);
}

#[tokio::test]
async fn the_directory_resolves_a_service_in_a_province_best_first() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let found = hospital
        .directory
        .resolve_service(pb::ResolveServiceRequest {
            service: "reintegration_follow_up".into(),
            province: "24".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = found.agencies.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["mlup-russey", "dosvy-24"]);
    let provinces = hospital
        .directory
        .list_provinces(pb::ListProvincesRequest {})
        .await
        .unwrap()
        .into_inner();
    let pailin = provinces.provinces.iter().find(|p| p.code == "24").unwrap();
    assert_eq!(pailin.name_km, "ប៉ៃលិន");
}

/// Each kind announces how long a recipient has to acknowledge it at each urgency (the urgency's
/// deadline here, as the demo network sets no kind its own), so an agency's pages can show the
/// time left before a referral is escalated.
#[tokio::test]
async fn the_directory_announces_each_kinds_acknowledgement_deadlines() {
    let broker = spawn_broker().await;
    let kinds = broker
        .client("mlup-russey")
        .await
        .directory
        .list_kinds(pb::ListKindsRequest {})
        .await
        .unwrap()
        .into_inner()
        .kinds;
    let lama = kinds.iter().find(|k| k.kind == "lama").unwrap();
    assert_eq!(lama.acknowledge_within_emergency_seconds, 2 * 3600);
    assert_eq!(lama.acknowledge_within_urgent_seconds, 24 * 3600);
    assert_eq!(lama.acknowledge_within_routine_seconds, 72 * 3600);
}

/// The case file is the sender's, opaque to the broker: sealed bytes that would be refused as free
/// text (an escape sequence, a bidi override) pass through untouched; the adapter renders them
/// safely.
#[tokio::test]
async fn the_case_file_stays_opaque_bytes_whatever_text_it_holds() {
    let broker = spawn_broker().await;
    let mut hospital = broker.client("ahc-swu").await;
    let mut request = spean_testkit::lama_in_clear("opaque-1");
    let case_file = pb::CaseFile {
        name: Some(pb::PersonName {
            khmer: "សុខ ស្រីល័ក្ខ\u{202E}".into(),
            latin: "Sok\u{1b}[2J".into(),
        }),
        notes: "គ្រួសារចាកចេញពីមន្ទីរពេទ្យ".into(),
        ..Default::default()
    };
    request.case_file = prost::Message::encode_to_vec(&case_file);
    let request = spean_testkit::sealed::sealed_submit("ahc-swu", request, &["mlup-russey"]);
    let id = hospital
        .submit(request.clone())
        .await
        .unwrap()
        .referral
        .unwrap()
        .envelope
        .unwrap()
        .referral_id;
    let mut ngo = broker.client("mlup-russey").await;
    let got = ngo
        .referrals
        .get(pb::GetRequest { referral_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        spean_testkit::sealed::open_case_file("mlup-russey", &got).unwrap(),
        case_file
    );
}
