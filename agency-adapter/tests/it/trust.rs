//! What the adapter trusts (issue 20): only an `https://` broker, only deliveries that concern this
//! agency, and no text from another agency reaching the terminal with its escapes and bidi controls.

use std::{path::Path, process::Command};

use spean_adapter::{
    case_file::CaseFile,
    delivery::{concerns, store_batch},
    store::Store,
};
use spean_proto::v1::{
    Delivery, FeedbackKind, ReferralState, delivery::Payload, feedback_event::Details,
};

use crate::helpers::{agency_id, delivery, event, id, identity, khmer_case_file, referral};

/// Runs the binary as `agency` with its store in `dir`, against `broker`.
pub fn adapter(dir: &Path, agency: &str, broker: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spean-adapter"))
        .arg("--identity")
        .arg(identity(dir, agency))
        .arg("--store")
        .arg(dir.join(format!("{agency}.db")))
        // The key `Store::open` gives the store a test writes in-process.
        .arg("--store-key")
        .arg(spean_adapter::at_rest::key_beside(
            &dir.join(format!("{agency}.db")),
        ))
        .args(["--broker", broker])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run spean-adapter")
}

#[test]
fn an_http_broker_address_is_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let output = adapter(
        dir.path(),
        "agency-a",
        "http://127.0.0.1:9",
        &["outbox", "--json"],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("broker"), "{stderr}");
    assert!(stderr.contains("https://"), "{stderr}");
    assert!(!dir.path().join("agency-a.db").exists());
}

fn referral_delivery(sender: &str, recipient: &str) -> Delivery {
    let mut r = referral(&id(), &khmer_case_file(), vec![]);
    let envelope = r.envelope.as_mut().unwrap();
    envelope.sender_agency_id = sender.into();
    envelope.recipient_agency_id = recipient.into();
    delivery(Payload::Referral(r))
}

#[test]
fn a_referral_for_another_agency_does_not_concern_this_one() {
    assert!(concerns(
        &referral_delivery("agency-a", "agency-b"),
        "agency-b"
    ));
    assert!(concerns(
        &referral_delivery("agency-a", "agency-b"),
        "agency-a"
    ));
    assert!(!concerns(
        &referral_delivery("agency-a", "agency-c"),
        "agency-b"
    ));
    let mut without_envelope = referral(&id(), &khmer_case_file(), vec![]);
    without_envelope.envelope = None;
    assert!(!concerns(
        &delivery(Payload::Referral(without_envelope)),
        "agency-b"
    ));
}

#[test]
fn an_event_is_accepted_even_before_its_referral_arrives() {
    let ack = event(
        &id(),
        FeedbackKind::Acknowledged,
        ReferralState::Acknowledged,
    );
    assert!(concerns(&delivery(Payload::Feedback(ack)), "agency-a"));
}

#[tokio::test]
async fn a_batch_stores_what_concerns_this_agency_and_nothing_else() {
    let t = crate::helpers::fresh_store().await;
    let ours = referral_delivery("agency-a", "agency-b");
    let theirs = referral_delivery("agency-a", "agency-c");
    let id_of = |d: &Delivery| match &d.payload {
        Some(Payload::Referral(r)) => r.envelope.as_ref().unwrap().referral_id.clone(),
        _ => unreachable!(),
    };
    // An event for a referral not (yet) held is kept, as before: its referral may still come.
    let early_referral = id();
    let early = delivery(Payload::Feedback(event(
        &early_referral,
        FeedbackKind::Acknowledged,
        ReferralState::Acknowledged,
    )));

    store_batch(&t.store, "agency-b", &[theirs.clone(), ours.clone(), early])
        .await
        .unwrap();

    assert!(t.store.referral(&id_of(&ours)).await.unwrap().is_some());
    assert!(t.store.referral(&id_of(&theirs)).await.unwrap().is_none());
    assert_eq!(t.store.received_by("agency-c").await.unwrap().len(), 0);
    assert_eq!(t.store.received_by("agency-b").await.unwrap().len(), 1);
    assert_eq!(t.store.history(&early_referral).await.unwrap().len(), 1);
}

#[tokio::test]
async fn show_prints_khmer_as_is_and_escapes_and_bidi_controls_visibly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("agency-b.db"), &agency_id("agency-b"))
        .await
        .unwrap();
    let referral_id = id();
    let case_file = CaseFile::from_json(
        r#"{"name":{"khmer":"សុខ ស្រីល័ក្ខ","latin":"Sok\u001b[2J"},
            "reason_for_referral":"គ្រួសារ\u200bចាកចេញ\u200bពីមន្ទីរពេទ្យ",
            "notes":"line one\nline two \u202egnp.exe"}"#
            .as_bytes(),
    )
    .unwrap();
    let mut declined = event(
        &referral_id,
        FeedbackKind::Declined,
        ReferralState::Declined,
    );
    declined.actor_person = "សុខ ស្រីល័ក្ខ\n  state: completed".into();
    declined.note = "គ្រួសារចាកចេញពីមន្ទីរពេទ្យ\n\u{1b}]0;pwned\u{7}".into();
    declined.details = Some(Details::Declined(spean_proto::v1::Decline {
        reason_code: "no_capacity".into(),
        reason_text: "\u{2067}full\u{2069}".into(),
    }));
    store
        .store_delivery(&delivery(Payload::Referral(referral(
            &referral_id,
            &case_file,
            vec![declined],
        ))))
        .await
        .unwrap();
    store.close().await;

    let output = adapter(
        dir.path(),
        "agency-b",
        "https://127.0.0.1:9",
        &["show", &referral_id],
    );
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    for raw in ['\u{1b}', '\u{7}', '\u{202e}', '\u{2067}', '\u{2069}'] {
        assert!(!stdout.contains(raw), "{raw:?} reached the terminal");
    }
    for visible in [
        "Sok\\u{1B}[2J",
        "\\u{202E}gnp.exe",
        "\\u{2067}full\\u{2069}",
        "\\u{1B}]0;pwned\\u{7}",
        "សុខ ស្រីល័ក្ខ\\u{A}  state: completed",
        "សុខ ស្រីល័ក្ខ",
        "គ្រួសារ\u{200b}ចាកចេញ\u{200b}ពីមន្ទីរពេទ្យ",
        "គ្រួសារចាកចេញពីមន្ទីរពេទ្យ",
    ] {
        assert!(stdout.contains(visible), "{visible:?} not in {stdout}");
    }
    // The --json output carries the text exactly as written, escaped by JSON itself.
    let output = adapter(
        dir.path(),
        "agency-b",
        "https://127.0.0.1:9",
        &["show", &referral_id, "--json"],
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        json["case_file"]["notes"],
        "line one\nline two \u{202e}gnp.exe"
    );
}
