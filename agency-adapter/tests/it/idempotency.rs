//! A command run again with the key of a request already in the outbox: the same request reports
//! where that row stands and is not queued twice; another request under the key is refused, naming
//! the key's field. Checked against a real broker, and after it stops, so "queued" cannot hide a
//! request that will never be sent.

use std::process::Output;

use crate::helpers::{BrokerProcess, json_of};

const HOSPITAL: &str = "ahc-swu";
const NGO: &str = "mlup-russey";

fn send(broker: &BrokerProcess, client_ref: &str, to: &str, reason: &str) -> Output {
    broker.adapter(
        HOSPITAL,
        &[
            "send",
            "--to",
            to,
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
            "--subject-province",
            "24",
            "--client-ref",
            client_ref,
            "--reason",
            reason,
            "--json",
        ],
    )
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn sending_the_same_referral_again_reports_it_sent_even_with_the_broker_gone() {
    let mut broker = BrokerProcess::start();
    broker.publish_keys(&[HOSPITAL, NGO]);
    let first = json_of(&send(&broker, "same-1", NGO, "home follow-up"));
    assert_eq!(first["status"], "sent");
    broker.stop();

    let again = send(&broker, "same-1", NGO, "home follow-up");

    let again_json = json_of(&again);
    assert_eq!(again_json["status"], "sent", "{again_json}");
    assert_eq!(again_json["referral_id"], first["referral_id"]);
    assert!(stderr(&again).contains("sent before"), "{}", stderr(&again));
    let outbox = json_of(&broker.adapter(HOSPITAL, &["outbox", "--json"]));
    assert_eq!(outbox.as_array().unwrap().len(), 1, "{outbox}");
    assert_eq!(outbox[0]["status"], "sent");
}

#[test]
fn a_client_ref_already_sent_with_other_content_is_refused_naming_client_ref() {
    let mut broker = BrokerProcess::start();
    broker.publish_keys(&[HOSPITAL, NGO]);
    json_of(&send(&broker, "reused-1", NGO, "home follow-up"));
    broker.stop();

    let other = send(&broker, "reused-1", NGO, "a different child");

    assert_eq!(other.status.code(), Some(1));
    assert!(other.stdout.is_empty(), "nothing reported as queued");
    assert_eq!(
        stderr(&other).trim_end(),
        "error: client_ref \"reused-1\" is already used for another request (submit, sent); \
         give a new client_ref"
    );
    let outbox = json_of(&broker.adapter(HOSPITAL, &["outbox", "--json"]));
    assert_eq!(outbox.as_array().unwrap().len(), 1, "{outbox}");
}

#[test]
fn a_refused_request_run_again_fails_again_without_being_sent() {
    let broker = BrokerProcess::start();
    broker.publish_keys(&[HOSPITAL, NGO]);
    // A referral to oneself: the broker refuses it for good.
    let refused = send(&broker, "self-1", HOSPITAL, "x");
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).starts_with("error: INVALID_ARGUMENT: recipient:"),
        "{}",
        stderr(&refused)
    );

    let again = send(&broker, "self-1", HOSPITAL, "x");

    assert_eq!(again.status.code(), Some(1));
    let message = stderr(&again);
    assert!(
        message.starts_with("error: client_ref \"self-1\" was refused by the broker before (INVALID_ARGUMENT: recipient:"),
        "{message}"
    );
    assert!(
        message.trim_end().ends_with("give a new client_ref"),
        "{message}"
    );
    let outbox = json_of(&broker.adapter(HOSPITAL, &["outbox", "--json"]));
    assert_eq!(outbox[0]["status"], "rejected");
    // One attempt: the second run did not call the broker.
    assert_eq!(outbox[0]["attempts"], 1, "{outbox}");
}

#[test]
fn an_action_run_again_with_its_request_id_reports_sent_and_another_action_under_it_is_refused() {
    let mut broker = BrokerProcess::start();
    broker.publish_keys(&[HOSPITAL, NGO]);
    let id = json_of(&send(&broker, "act-1", NGO, "home follow-up"))["referral_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ack = ["ack", id.as_str(), "--request-id", "k-1", "--json"];
    let first = json_of(&broker.adapter(NGO, &ack));
    assert_eq!(first["state"], "acknowledged");
    broker.stop();

    let again = json_of(&broker.adapter(NGO, &ack));
    assert_eq!(again["status"], "sent", "{again}");
    assert_eq!(again["operation"], "acknowledge");

    let other = broker.adapter(
        NGO,
        &[
            "accept",
            &id,
            "--action",
            "home visit",
            "--date",
            "2026-11-24",
            "--request-id",
            "k-1",
        ],
    );
    assert_eq!(other.status.code(), Some(1));
    assert_eq!(
        stderr(&other).trim_end(),
        "error: request_id \"k-1\" is already used for another request (acknowledge, sent); \
         give a new request_id"
    );
    let outbox = json_of(&broker.adapter(NGO, &["outbox", "--json"]));
    assert_eq!(outbox.as_array().unwrap().len(), 1, "{outbox}");
}
