//! Story 5, the part that is built: referrals about one young person, linked by the pseudonymous
//! client reference the senders give them, read as one history by an agency that sent or received
//! them; and never another agency's referrals under the same pseudonym, through the adapter's
//! `client` command or the broker's `List`.

use spean_proto::v1 as pb;

use crate::helpers::{AdapterProcess, BrokerProcess, eventually};

const PSEUDONYM: &str = "ms-2026-0142";

fn case_file(dir: &std::path::Path, name: &str) -> String {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(
        &path,
        r#"{"name": {"khmer": "វណ្ណ ដារ៉ា", "latin": "Vann Dara"}, "reason_for_referral": "volunteered for detox"}"#,
    )
    .unwrap();
    path.display().to_string()
}

async fn send(
    from: &AdapterProcess,
    dir: &std::path::Path,
    to: &str,
    kind: &str,
    client_ref: &str,
) -> String {
    let sent = send_with(from, dir, to, kind, client_ref, &[]).await;
    sent["referral_id"].as_str().unwrap().to_owned()
}

/// The command of [`send`] with `extra` arguments (`--follows`, say); what `send --json` printed.
async fn send_with(
    from: &AdapterProcess,
    dir: &std::path::Path,
    to: &str,
    kind: &str,
    client_ref: &str,
    extra: &[&str],
) -> serde_json::Value {
    let file = case_file(dir, client_ref);
    let mut args = vec![
        "send",
        "--to",
        to,
        "--kind",
        kind,
        "--consent-by",
        "guardian",
        "--consent-at",
        "2026-12-01",
        "--consent-for",
        "redirect,broadcast,notified_parties,follow_up_delegation",
        "--urgency",
        "urgent",
        "--sex",
        "male",
        "--age-band",
        "18-24",
        "--subject-province",
        "12",
        "--pseudonym",
        PSEUDONYM,
        "--client-ref",
        client_ref,
        "--case-file",
        &file,
    ];
    args.extend_from_slice(extra);
    from.json(&args).await
}

/// The referral ids `client --json` printed, in its order.
fn referral_ids(client: &serde_json::Value) -> Vec<&str> {
    client["referrals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["referral_id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn one_clients_referrals_read_as_one_history_at_each_agency_and_no_further() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("broker"), "127.0.0.1:0").await;
    let mut hospital = AdapterProcess::installed(&broker, "ahc-swu", dir.path()).await;
    let mut outreach = AdapterProcess::installed(&broker, "mith-samlanh", dir.path()).await;
    let mut ngo = AdapterProcess::installed(&broker, "mlup-russey", dir.path()).await;
    for adapter in [&mut hospital, &mut outreach, &mut ngo] {
        adapter.start();
    }
    // The hospital refers the young man to detox; after the programme the outreach team refers
    // him on, under the same pseudonym.
    let detox = send(
        &hospital,
        dir.path(),
        "mith-samlanh",
        "drug_treatment",
        "ahc-detox-1",
    )
    .await;
    eventually("the detox referral at the outreach team", || async {
        let out = outreach.run(&["show", &detox, "--json"]).await;
        out.status.success().then_some(())
    })
    .await;
    outreach.json(&["ack", &detox]).await;
    let onward = send(
        &outreach,
        dir.path(),
        "mlup-russey",
        "reintegration_follow_up",
        "ms-onward-1",
    )
    .await;
    eventually("the onward referral at the NGO", || async {
        let out = ngo.run(&["show", &onward, "--json"]).await;
        out.status.success().then_some(())
    })
    .await;

    // The outreach team received one and sent the other: one history of both, oldest first.
    let client = outreach.json(&["client", PSEUDONYM]).await;
    assert_eq!(referral_ids(&client), [detox.as_str(), onward.as_str()]);
    let events: Vec<(&str, &str)> = client["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["referral_id"].as_str().unwrap(),
                e["kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(events.first(), Some(&(detox.as_str(), "submitted")));
    assert!(events.contains(&(onward.as_str(), "submitted")));
    let acknowledged = events
        .iter()
        .position(|e| *e == (detox.as_str(), "acknowledged"))
        .unwrap();
    let onward_sent = events
        .iter()
        .position(|e| *e == (onward.as_str(), "submitted"))
        .unwrap();
    assert!(
        acknowledged < onward_sent,
        "one history in time order: {events:?}"
    );

    // Each of the others sees only its own, under the same pseudonym.
    for (adapter, own) in [(&hospital, &detox), (&ngo, &onward)] {
        let client = adapter.json(&["client", PSEUDONYM]).await;
        assert_eq!(referral_ids(&client), [own.as_str()], "{}", adapter.agency);
    }
    // So does the broker's List.
    for (agency, expected) in [
        ("mith-samlanh", vec![onward.clone(), detox.clone()]),
        ("ahc-swu", vec![detox.clone()]),
        ("mlup-russey", vec![onward.clone()]),
        ("dosvy-12", vec![]),
    ] {
        let listed = broker
            .client(agency)
            .await
            .referrals
            .list(pb::ListRequest {
                client_pseudonym: PSEUDONYM.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .referrals;
        let ids: Vec<String> = listed
            .iter()
            .map(|r| r.envelope.as_ref().unwrap().referral_id.clone())
            .collect();
        assert_eq!(ids, expected, "{agency}");
    }
}

/// The referrals ids and the one each follows, as `client --json` printed them.
fn follows(client: &serde_json::Value) -> Vec<(String, String)> {
    client["referrals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["referral_id"].as_str().unwrap().to_owned(),
                r["follows_referral_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A referral `agency` submits through the gRPC API to `mith-samlanh` for vocational training,
/// under `pseudonym`, following `follows`.
fn following(client_ref: &str, pseudonym: &str, follows: &str) -> pb::SubmitRequest {
    let mut request = crate::helpers::lama(client_ref);
    request.recipient = Some(pb::Recipient {
        target: Some(pb::recipient::Target::AgencyId("mith-samlanh".into())),
    });
    request.kind = "vocational_training".into();
    request.client_pseudonym = pseudonym.into();
    request.follows_referral_id = follows.into();
    request
}

/// Story 5's link: the hospital's second referral for the young man (vocational training after
/// detox) names the first as the one it follows, under the same pseudonym. The recipient and the
/// sender see the link, in the broker's envelope and in each adapter's `client` history. A
/// referral cannot follow another agency's referral, nor one about another pseudonym, nor one
/// that does not exist: INVALID_ARGUMENT naming the field.
#[tokio::test]
async fn a_referral_names_the_one_it_follows_and_both_parties_see_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("broker"), "127.0.0.1:0").await;
    let mut hospital = AdapterProcess::installed(&broker, "ahc-swu", dir.path()).await;
    let mut outreach = AdapterProcess::installed(&broker, "mith-samlanh", dir.path()).await;
    // The NGO the outreach team tries to send to has its key published, so that its try reaches
    // the broker.
    AdapterProcess::installed(&broker, "mlup-russey", dir.path()).await;
    for adapter in [&mut hospital, &mut outreach] {
        adapter.start();
    }
    let detox = send(
        &hospital,
        dir.path(),
        "mith-samlanh",
        "drug_treatment",
        "ahc-detox-2",
    )
    .await;
    let sent = send_with(
        &hospital,
        dir.path(),
        "mith-samlanh",
        "vocational_training",
        "ahc-training-2",
        &["--follows", &detox],
    )
    .await;
    assert_eq!(sent["follows_referral_id"], detox.as_str(), "{sent}");
    let training = sent["referral_id"].as_str().unwrap().to_owned();

    // The broker's envelope carries the link, for both parties.
    for agency in ["ahc-swu", "mith-samlanh"] {
        let read = broker.client(agency).await.referral(&training).await;
        assert_eq!(
            read.envelope.unwrap().follows_referral_id,
            detox,
            "{agency}"
        );
        let first = broker.client(agency).await.referral(&detox).await;
        assert_eq!(first.envelope.unwrap().follows_referral_id, "", "{agency}");
    }
    // So does each adapter's history of the client.
    let expected = vec![
        (detox.clone(), String::new()),
        (training.clone(), detox.clone()),
    ];
    let at_outreach = eventually("both referrals at the outreach team", || async {
        let client = outreach.json(&["client", PSEUDONYM]).await;
        (referral_ids(&client).len() == 2).then_some(client)
    })
    .await;
    assert_eq!(follows(&at_outreach), expected, "{at_outreach}");
    let at_hospital = hospital.json(&["client", PSEUDONYM]).await;
    assert_eq!(follows(&at_hospital), expected, "{at_hospital}");
    let shown = outreach.json(&["show", &training]).await;
    assert_eq!(shown["follows_referral_id"], detox.as_str(), "{shown}");

    // The outreach team cannot link its referral to the hospital's, through its adapter or the
    // API.
    let out = outreach
        .run(&[
            "send",
            "--to",
            "mlup-russey",
            "--kind",
            "reintegration_follow_up",
            "--consent-by",
            "guardian",
            "--consent-at",
            "2026-12-01",
            "--consent-for",
            "redirect,broadcast,notified_parties,follow_up_delegation",
            "--urgency",
            "routine",
            "--subject-province",
            "12",
            "--pseudonym",
            PSEUDONYM,
            "--follows",
            &detox,
            "--json",
        ])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("INVALID_ARGUMENT") && stderr.contains("follows_referral_id"),
        "{stderr}"
    );
    let mut other = following("ms-follows-other", PSEUDONYM, &detox);
    other.recipient = Some(pb::Recipient {
        target: Some(pb::recipient::Target::AgencyId("mlup-russey".into())),
    });
    refused(&broker, "mith-samlanh", other, "follows_referral_id").await;
    // Nor can the hospital link one about another client, or about no named client, to it.
    refused(
        &broker,
        "ahc-swu",
        following("ahc-follows-other-client", "ms-2026-9999", &detox),
        "client_pseudonym",
    )
    .await;
    refused(
        &broker,
        "ahc-swu",
        following("ahc-follows-no-client", "", &detox),
        "client_pseudonym",
    )
    .await;
    refused(
        &broker,
        "ahc-swu",
        following(
            "ahc-follows-nothing",
            PSEUDONYM,
            &uuid::Uuid::now_v7().to_string(),
        ),
        "follows_referral_id",
    )
    .await;
    // None of them was recorded: the client's history at the hospital is the two referrals.
    let at_hospital = hospital.json(&["client", PSEUDONYM]).await;
    assert_eq!(follows(&at_hospital), expected);
}

/// Submits `request` as `agency` and requires INVALID_ARGUMENT naming `field`.
async fn refused(broker: &BrokerProcess, agency: &str, request: pb::SubmitRequest, field: &str) {
    let refused = broker
        .client(agency)
        .await
        .referrals
        .submit(request)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().starts_with(field), "{field}: {refused:?}");
}
