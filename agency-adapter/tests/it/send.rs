//! `send --to` without `--subject-province`, against a real broker: a recipient serving one province
//! gives the subject its province; any other recipient makes the command ask for one, naming the
//! provinces it serves, and nothing is queued.

use std::process::Output;

use crate::helpers::{BrokerProcess, json_of};

const HOSPITAL: &str = "ahc-swu";

/// Sends a referral from the hospital to `to`, giving no subject province.
fn send_to(broker: &BrokerProcess, to: &str) -> Output {
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
            "--name-km",
            "សុខ ស្រីល័ក្ខ",
            "--json",
        ],
    )
}

/// Checks the command failed with exactly `message` and left the outbox empty.
fn refused_with(broker: &BrokerProcess, output: &Output, message: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.trim_end(), message);
    assert!(
        output.stdout.is_empty(),
        "nothing reported as sent or queued"
    );
    let outbox = json_of(&broker.adapter(HOSPITAL, &["outbox", "--json"]));
    assert!(outbox.as_array().unwrap().is_empty(), "{outbox}");
}

#[test]
fn a_referral_to_an_agency_of_one_province_takes_its_province_for_the_subject() {
    let broker = BrokerProcess::start();
    broker.publish_keys(&["ahc-swu", "dosvy-24", "mlup-russey", "mosvy-coord"]);

    let sent = json_of(&send_to(&broker, "dosvy-24"));

    assert_eq!(sent["status"], "sent", "{sent}");
    let id = sent["referral_id"].as_str().unwrap();
    let shown = json_of(&broker.adapter(HOSPITAL, &["show", id, "--json"]));
    assert_eq!(shown["referral"]["subject"]["province"], "24", "{shown}");
    assert_eq!(shown["case_file"]["name"]["khmer"], "សុខ ស្រីល័ក្ខ");
}

#[test]
fn a_referral_to_an_agency_of_several_provinces_asks_for_the_subjects_and_names_them() {
    let broker = BrokerProcess::start();
    broker.publish_keys(&["ahc-swu", "dosvy-24", "mlup-russey", "mosvy-coord"]);

    let output = send_to(&broker, "mlup-russey");

    refused_with(
        &broker,
        &output,
        "error: --subject-province: mlup-russey serves 02, 15, 17, 24, 12 and 25; \
         give one with --subject-province",
    );
}

#[test]
fn a_referral_to_a_national_agency_asks_for_the_subjects_province() {
    let broker = BrokerProcess::start();
    broker.publish_keys(&["ahc-swu", "dosvy-24", "mlup-russey", "mosvy-coord"]);

    let output = send_to(&broker, "mosvy-coord");

    refused_with(
        &broker,
        &output,
        "error: --subject-province: mosvy-coord serves every province; \
         give one with --subject-province",
    );
}

#[test]
fn a_referral_to_an_agency_missing_from_the_directory_is_refused_naming_to() {
    let broker = BrokerProcess::start();
    broker.publish_keys(&["ahc-swu", "dosvy-24", "mlup-russey", "mosvy-coord"]);

    let output = send_to(&broker, "no-such-agency");

    refused_with(
        &broker,
        &output,
        "error: --to: the directory has no agency no-such-agency",
    );
}

/// Free text travels sealed, so the broker can no longer refuse what would drive another agency's
/// terminal: the writing adapter refuses it before anything is queued, naming the field and the
/// character, never the text. Khmer, line breaks in a note and the direction marks pass.
#[test]
fn free_text_with_escapes_or_bidi_controls_is_refused_before_it_is_queued() {
    let broker = BrokerProcess::start();
    let id = "01a242a5-2d43-7670-aa6d-40c3dc0c1fe8";
    for (args, field) in [
        (vec!["ack", id, "--note", "ok\u{1b}[2J"], "note"),
        (vec!["ack", id, "--by", "សុភា\nforged line"], "by"),
        (
            vec![
                "decline",
                id,
                "--reason-code",
                "other",
                "--reason",
                "file \u{202E}fdp.exe",
            ],
            "reason",
        ),
    ] {
        let output = broker.adapter(HOSPITAL, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid {field}: contains")),
            "{args:?}: {stderr}"
        );
        assert!(
            !stderr.contains("fdp.exe") && !stderr.contains("forged"),
            "{stderr}"
        );
    }
    let outbox = json_of(&broker.adapter(HOSPITAL, &["outbox", "--json"]));
    assert!(outbox.as_array().unwrap().is_empty(), "{outbox}");
}
