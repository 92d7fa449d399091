//! The commands that ask the broker for what this store does not hold, and delegation, against a
//! real broker: `overdue` and `figures --network` for coordinators and authorities only, `figures`
//! for every agency's own referrals, and `delegate` / `revoke-delegation` recorded by the broker.

use crate::helpers::{BrokerProcess, eventually, json_of};

const HOSPITAL: &str = "ahc-swu";
const NGO: &str = "mlup-russey";
const DEPARTMENT: &str = "dosvy-24";
const COORDINATOR: &str = "mosvy-coord";

/// The hospital sends a referral to the NGO, which acknowledges and accepts it.
fn accepted_referral(broker: &BrokerProcess, client_ref: &str) -> String {
    let sent = json_of(&broker.adapter(
        HOSPITAL,
        &[
            "send",
            "--to",
            NGO,
            "--kind",
            "lama",
            "--consent-by",
            "guardian",
            "--consent-at",
            "2026-12-01",
            "--consent-for",
            "redirect,broadcast,notified_parties,follow_up_delegation",
            "--urgency",
            "urgent",
            "--sex",
            "female",
            "--age-band",
            "5-9",
            "--subject-province",
            "24",
            "--client-ref",
            client_ref,
            "--name-km",
            "សុខ ស្រីល័ក្ខ",
            "--reason",
            "ត្រូវការតាមដាន",
            "--json",
        ],
    ));
    let id = sent["referral_id"].as_str().unwrap().to_owned();
    json_of(&broker.adapter(NGO, &["ack", &id, "--json"]));
    json_of(&broker.adapter(
        NGO,
        &[
            "accept",
            &id,
            "--action",
            "home visit",
            "--date",
            "2026-12-24",
            "--json",
        ],
    ));
    id
}

#[test]
fn only_coordinators_and_authorities_list_overdue_referrals() {
    let broker = BrokerProcess::start();
    broker.publish_keys(&[HOSPITAL, NGO, DEPARTMENT, COORDINATOR]);

    let refused = broker.adapter(NGO, &["overdue"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("PERMISSION_DENIED"), "{stderr}");

    let listed = json_of(&broker.adapter(COORDINATOR, &["overdue", "--json"]));
    assert!(listed.is_array(), "{listed}");
    let table = broker.adapter(DEPARTMENT, &["overdue", "--urgency", "urgent"]);
    assert!(table.status.success(), "{table:?}");
}

#[test]
fn an_agency_reads_its_own_figures_and_a_coordinator_the_networks() {
    let broker = BrokerProcess::start();
    broker.publish_keys(&[HOSPITAL, NGO, DEPARTMENT, COORDINATOR]);
    accepted_referral(&broker, "figures-1");
    let period = ["--from", "2020-01-01", "--to", "2099-12-31"];

    let own = json_of(&broker.adapter(HOSPITAL, &[&["figures", "--json"][..], &period].concat()));
    assert_eq!(own["total"]["referrals"]["total"], 1, "{own}");
    assert_eq!(own["total"]["referrals"]["female"], 1, "{own}");
    let csv = broker.adapter(HOSPITAL, &[&["figures", "--csv"][..], &period].concat());
    let csv = String::from_utf8(csv.stdout).unwrap();
    assert!(
        csv.starts_with("group,key,metric,total,female\nall,,referrals,1,1\n"),
        "{csv}"
    );
    let table = broker.adapter(HOSPITAL, &[&["figures"][..], &period].concat());
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.contains("1 (1 F)"), "{table}");

    let refused = broker.adapter(NGO, &[&["figures", "--network"][..], &period].concat());
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("PERMISSION_DENIED"));
    let network = json_of(&broker.adapter(
        COORDINATOR,
        &[&["figures", "--network", "--json"][..], &period].concat(),
    ));
    assert_eq!(network["total"]["referrals"]["total"], 1, "{network}");
}

/// `agency`'s `show --json` of `id` once its daemon has stored it and `ready` holds.
async fn shown_when(
    broker: &BrokerProcess,
    agency: &str,
    id: &str,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(what, || async {
        let output = broker.adapter(agency, &["show", id, "--json"]);
        let shown: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        ready(&shown).then_some(shown)
    })
    .await
}

#[tokio::test]
async fn the_delegate_receives_the_follow_up_part_and_loses_it_when_the_follow_up_is_taken_back() {
    let broker = BrokerProcess::start();
    broker.publish_keys(&[HOSPITAL, NGO, DEPARTMENT, COORDINATOR]);
    let _recipient = broker.daemon(NGO, &[]);
    let _delegate = broker.daemon(DEPARTMENT, &[]);
    let id = accepted_referral(&broker, "delegate-1");
    shown_when(&broker, NGO, &id, "the NGO to hold the case file", |s| {
        s["case_file_part"] == "whole" && s["referral"]["state"] == "accepted"
    })
    .await;

    let delegated = json_of(&broker.adapter(
        NGO,
        &[
            "delegate",
            &id,
            "--to",
            DEPARTMENT,
            "--reason",
            "នៅជិតគ្រួសារ",
            "--json",
        ],
    ));
    assert_eq!(delegated["status"], "sent", "{delegated}");
    assert_eq!(delegated["kind"], "follow_up_delegated", "{delegated}");
    let shown = json_of(&broker.adapter(NGO, &["show", &id, "--json"]));
    assert_eq!(shown["delegated_to"], DEPARTMENT, "{shown}");
    let at_delegate = shown_when(&broker, DEPARTMENT, &id, "the delegate's part", |s| {
        s["case_file_part"] == "follow_up"
    })
    .await;
    assert_eq!(at_delegate["audience"], "delegate");
    assert_eq!(at_delegate["case_file"]["name"]["khmer"], "សុខ ស្រីល័ក្ខ");
    assert_eq!(at_delegate["case_file"]["reason_for_referral"], "");
    let inbox = json_of(&broker.adapter(DEPARTMENT, &["inbox", "--json"]));
    assert!(
        inbox
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["referral_id"] == id.as_str() && i["follow_up_delegated_here"] == true),
        "{inbox}"
    );

    let out = broker.adapter(NGO, &["revoke-delegation", &id, "--json"]);
    if !out.status.success() {
        let shown = broker.adapter(NGO, &["show", &id, "--json"]);
        let outbox = broker.adapter(NGO, &["outbox", "--json"]);
        panic!(
            "DEBUG {}\nOUTBOX {}\nERR {}",
            String::from_utf8_lossy(&shown.stdout),
            String::from_utf8_lossy(&outbox.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let revoked = json_of(&out);
    assert_eq!(revoked["kind"], "delegation_revoked", "{revoked}");
    let shown = json_of(&broker.adapter(NGO, &["show", &id, "--json"]));
    assert!(shown["delegated_to"].is_null(), "{shown}");
    let at_delegate = shown_when(
        &broker,
        DEPARTMENT,
        &id,
        "the delegate's part withdrawn",
        |s| s["case_file_withdrawn"]["because"] == "delegation_revoked",
    )
    .await;
    assert!(at_delegate["case_file"].is_null(), "{at_delegate}");
}
