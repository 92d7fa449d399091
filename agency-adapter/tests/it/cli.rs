//! The binary without a broker: requests are queued, commands succeed, the outbox and status show them.

use std::{path::Path, process::Command};

use serde_json::Value;

use crate::helpers::identity;

/// Runs the binary against a broker address where nothing listens.
fn adapter(dir: &Path, agency: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spean-adapter"))
        .arg("--identity")
        .arg(identity(dir, agency))
        .arg("--store")
        .arg(dir.join(format!("{agency}.db")))
        // Port 9 (discard) on localhost: connection refused straight away.
        .args(["--broker", "https://127.0.0.1:9"])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run spean-adapter")
}

/// Records a home visit on `r-1` dated `date`, with `extra` arguments.
fn followup(dir: &Path, date: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "followup",
        "r-1",
        "--activity",
        "home_visit",
        "--date",
        date,
    ];
    args.extend_from_slice(extra);
    adapter(dir, "agency-b", &args)
}

fn json(output: &std::process::Output) -> Value {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is JSON")
}

#[test]
fn a_referral_sent_while_the_broker_is_down_is_queued_and_the_command_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let case_file = dir.path().join("case.json");
    std::fs::write(
        &case_file,
        r#"{"name":{"khmer":"សុខ ស្រីល័ក្ខ","latin":"Sok Sreyleak"},"reason_for_referral":"x"}"#,
    )
    .unwrap();

    let sent = json(&adapter(
        dir.path(),
        "agency-a",
        &[
            "send",
            "--to",
            "agency-b",
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
            "12",
            "--client-ref",
            "ref-42",
            "--case-file",
            case_file.to_str().unwrap(),
            "--json",
        ],
    ));

    assert_eq!(sent["client_ref"], "ref-42");
    assert_eq!(sent["status"], "queued");
    assert!(sent["referral_id"].is_null());
    let outbox = json(&adapter(dir.path(), "agency-a", &["outbox", "--json"]));
    assert_eq!(outbox.as_array().unwrap().len(), 1);
    assert_eq!(outbox[0]["request_id"], "ref-42");
    assert_eq!(outbox[0]["operation"], "submit");
    assert_eq!(outbox[0]["status"], "pending");
    let status = json(&adapter(dir.path(), "agency-a", &["status", "--json"]));
    assert_eq!(status["referrals"].as_array().unwrap().len(), 0);
    assert_eq!(status["outbox"][0]["request_id"], "ref-42");
}

#[test]
fn an_action_queued_offline_waits_in_the_outbox_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let first = json(&adapter(
        dir.path(),
        "agency-b",
        &["ack", "r-1", "--by", "សុភា", "--queue-only", "--json"],
    ));
    let second = json(&adapter(
        dir.path(),
        "agency-b",
        &[
            "accept",
            "r-1",
            "--action",
            "home visit",
            "--date",
            "2025-02-01",
            "--json",
        ],
    ));

    assert_eq!(first["status"], "queued");
    assert_eq!(second["status"], "queued");
    let outbox = json(&adapter(dir.path(), "agency-b", &["outbox", "--json"]));
    let operations: Vec<&str> = outbox
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["operation"].as_str().unwrap())
        .collect();
    assert_eq!(operations, ["acknowledge", "accept"]);
    assert_eq!(outbox[0]["request_id"], first["request_id"]);
}

#[test]
fn a_malformed_date_is_refused_before_anything_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let output = followup(dir.path(), "01/02/2025", &[]);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.starts_with("error: invalid date"),
        "stderr: {stderr}"
    );
    let outbox = json(&adapter(dir.path(), "agency-b", &["outbox", "--json"]));
    assert!(outbox.as_array().unwrap().is_empty());
}

#[test]
fn an_empty_inbox_lists_as_an_empty_json_array() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = json(&adapter(dir.path(), "agency-b", &["inbox", "--json"]));
    assert_eq!(inbox, Value::Array(vec![]));
}

#[test]
fn a_queued_request_run_again_stays_one_row_and_other_content_under_its_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ack = ["ack", "r-1", "--request-id", "k-7", "--json"];
    let first = json(&adapter(dir.path(), "agency-b", &ack));
    let again = json(&adapter(dir.path(), "agency-b", &ack));
    assert_eq!(first["status"], "queued");
    assert_eq!(again["status"], "queued");

    let other = adapter(
        dir.path(),
        "agency-b",
        &[
            "ack",
            "r-1",
            "--request-id",
            "k-7",
            "--note",
            "another note",
        ],
    );

    assert_eq!(other.status.code(), Some(1));
    assert!(other.stdout.is_empty(), "nothing reported as queued");
    assert_eq!(
        String::from_utf8_lossy(&other.stderr).trim_end(),
        "error: request_id \"k-7\" is already used for another request (acknowledge, pending); \
         give a new request_id"
    );
    let outbox = json(&adapter(dir.path(), "agency-b", &["outbox", "--json"]));
    assert_eq!(outbox.as_array().unwrap().len(), 1, "{outbox}");
}

/// A command's own answer is all it prints, even when a statement is slow: a write that waits
/// 1.5 s for the store (held here by another connection, as a slow disk or the daemon would)
/// is queued, and sqlx's note of the slow statement stays below the commands' `warn` level.
#[test]
fn a_slow_write_is_not_reported_to_the_person_running_a_command() {
    let dir = tempfile::tempdir().unwrap();
    // Creates and migrates the store.
    json(&adapter(dir.path(), "agency-b", &["outbox", "--json"]));

    let holder = rusqlite::Connection::open(dir.path().join("agency-b.db")).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (started, release) = std::sync::mpsc::channel::<()>();
    let held = std::thread::spawn(move || {
        started.send(()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        holder.execute_batch("COMMIT").unwrap();
    });
    release.recv().unwrap();
    let output = followup(dir.path(), "2025-01-02", &["--json"]);
    held.join().unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("slow statement"), "stderr: {stderr}");
    assert_eq!(json(&output)["status"], "queued");
}

/// Runs `args`, expects it refused with a message starting `expected`, and nothing queued.
fn refused_before_queuing(dir: &Path, agency: &str, args: &[&str], expected: &str) {
    let output = adapter(dir, agency, args);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.starts_with(expected), "stderr: {stderr}");
    let outbox = json(&adapter(dir, agency, &["outbox", "--json"]));
    assert!(outbox.as_array().unwrap().is_empty(), "{outbox}");
}

#[test]
fn an_agency_id_the_broker_would_refuse_is_refused_before_anything_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let send = |to| {
        [
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
            "12",
        ]
    };
    refused_before_queuing(
        dir.path(),
        "agency-a",
        &send("MLUP_Russey"),
        "error: invalid to: \"MLUP_Russey\" is not an agency id",
    );
    refused_before_queuing(
        dir.path(),
        "agency-a",
        &send("a"),
        "error: invalid to: must be 2 to 64 characters long",
    );
    refused_before_queuing(
        dir.path(),
        "agency-b",
        &["redirect", "r-1", "--to", "Mlup.Russey", "--reason", "x"],
        "error: invalid to: \"Mlup.Russey\" is not an agency id",
    );
}

#[test]
fn without_the_broker_a_referral_to_an_agency_needs_the_subjects_province_given() {
    let dir = tempfile::tempdir().unwrap();
    refused_before_queuing(
        dir.path(),
        "agency-a",
        &[
            "send",
            "--to",
            "agency-b",
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
        ],
        "error: --subject-province: cannot ask the broker's directory which provinces agency-b \
         serves (broker unavailable:",
    );
}

#[test]
fn a_key_the_broker_would_refuse_is_refused_before_anything_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    refused_before_queuing(
        dir.path(),
        "agency-b",
        &["ack", "r-1", "--request-id", "has space"],
        "error: invalid request_id: contains ' '",
    );
}
