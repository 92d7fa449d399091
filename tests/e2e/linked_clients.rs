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
    let file = case_file(dir, client_ref);
    let sent = from
        .json(&[
            "send",
            "--to",
            to,
            "--kind",
            kind,
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
        ])
        .await;
    sent["referral_id"].as_str().unwrap().to_owned()
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
    let mut hospital = AdapterProcess::new(&broker, "ahc-swu", dir.path());
    let mut outreach = AdapterProcess::new(&broker, "mith-samlanh", dir.path());
    let mut ngo = AdapterProcess::new(&broker, "mlup-russey", dir.path());
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
