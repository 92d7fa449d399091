//! Every feedback command, run as the binary against a real broker: the JSON it prints is the
//! broker's answer (the event kind and the state after it), and a refused command fails.

use serde_json::Value;

use crate::helpers::{BrokerProcess, json_of};

const HOSPITAL: &str = "ahc-swu";
const NGO: &str = "mlup-russey";
const DEPARTMENT: &str = "dosvy-24";

/// Runs an action command as `agency` and checks the broker recorded `kind`, leaving `state`.
fn act(broker: &BrokerProcess, agency: &str, args: &[&str], kind: &str, state: &str) -> Value {
    let mut with_json = args.to_vec();
    with_json.extend(["--by", "សុភា (Sophea)", "--json"]);
    let answer = json_of(&broker.adapter(agency, &with_json));
    assert_eq!(answer["status"], "sent", "{args:?}: {answer}");
    assert_eq!(answer["kind"], kind, "{args:?}: {answer}");
    assert_eq!(answer["state"], state, "{args:?}: {answer}");
    assert!(answer["event_id"].is_string(), "{args:?}: {answer}");
    answer
}

#[test]
fn the_recipient_commands_walk_a_referral_to_completed_and_the_sender_marks_it_in_error() {
    let broker = BrokerProcess::start();
    broker.publish_keys(&[HOSPITAL, NGO, DEPARTMENT]);
    let id = broker.send_story_one("walk-1");
    let id = id.as_str();

    act(&broker, NGO, &["ack", id], "acknowledged", "acknowledged");
    act(
        &broker,
        NGO,
        &[
            "accept",
            id,
            "--action",
            "home visit",
            "--date",
            "2026-11-24",
        ],
        "accepted",
        "accepted",
    );
    act(
        &broker,
        NGO,
        &["progress", id],
        "in_progress",
        "in_progress",
    );
    act(
        &broker,
        NGO,
        &[
            "followup",
            id,
            "--activity",
            "home_visit",
            "--date",
            "2026-11-25",
        ],
        "follow_up",
        "in_progress",
    );
    act(
        &broker,
        NGO,
        &[
            "complete",
            id,
            "--outcome",
            "child_well_in_school",
            "--summary",
            "កុមារទៅសាលារៀន",
        ],
        "completed",
        "completed",
    );
    act(
        &broker,
        HOSPITAL,
        &["error", id],
        "entered_in_error",
        "entered_in_error",
    );

    // The sender's own answer is stored locally with the referral it sent.
    let shown = json_of(&broker.adapter(HOSPITAL, &["show", id, "--json"]));
    assert_eq!(shown["referral"]["state"], "entered_in_error", "{shown}");
}

#[test]
fn decline_fail_withdraw_and_redirect_each_close_or_move_their_referral() {
    let broker = BrokerProcess::start();
    broker.publish_keys(&[HOSPITAL, NGO, DEPARTMENT]);

    let declined = broker.send_story_one("decline-1");
    act(
        &broker,
        NGO,
        &[
            "decline",
            &declined,
            "--reason-code",
            "no_capacity",
            "--reason",
            "no foster family free",
        ],
        "declined",
        "declined",
    );

    let failed = broker.send_story_one("fail-1");
    act(
        &broker,
        NGO,
        &[
            "accept",
            &failed,
            "--action",
            "home visit",
            "--date",
            "2026-11-24",
        ],
        "accepted",
        "accepted",
    );
    act(
        &broker,
        NGO,
        &["fail", &failed, "--reason", "family moved away"],
        "failed",
        "failed",
    );

    let withdrawn = broker.send_story_one("withdraw-1");
    act(
        &broker,
        HOSPITAL,
        &["withdraw", &withdrawn],
        "withdrawn",
        "withdrawn",
    );

    let redirected = broker.send_story_one("redirect-1");
    act(
        &broker,
        NGO,
        &[
            "redirect",
            &redirected,
            "--to",
            DEPARTMENT,
            "--reason",
            "cannot travel to Pailin",
        ],
        "redirected",
        "sent",
    );
    // The new recipient may act now, and the old one may not.
    act(
        &broker,
        DEPARTMENT,
        &["ack", &redirected],
        "acknowledged",
        "acknowledged",
    );
    let refused = broker.adapter(NGO, &["ack", &redirected, "--json"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).starts_with("error: PERMISSION_DENIED: "),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn an_action_the_state_does_not_allow_fails_and_its_outbox_row_is_rejected() {
    let broker = BrokerProcess::start();
    broker.publish_keys(&[HOSPITAL, NGO, DEPARTMENT]);
    let id = broker.send_story_one("closed-1");
    act(
        &broker,
        HOSPITAL,
        &["withdraw", &id],
        "withdrawn",
        "withdrawn",
    );

    let output = broker.adapter(
        NGO,
        &[
            "fail",
            &id,
            "--reason",
            "too late",
            "--request-id",
            "late-1",
        ],
    );

    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim_end(),
        "error: FAILED_PRECONDITION: cannot record failed on a referral that is withdrawn"
    );
    let outbox = json_of(&broker.adapter(NGO, &["outbox", "--json"]));
    assert_eq!(outbox[0]["request_id"], "late-1");
    assert_eq!(outbox[0]["status"], "rejected");
}
