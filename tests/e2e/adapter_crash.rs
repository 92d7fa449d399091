//! Adapters crash and go offline; nothing is lost and nothing shows twice.

use std::os::unix::process::ExitStatusExt;

use spean_proto::v1 as pb;

use crate::helpers::{AdapterProcess, BrokerProcess, bin, eventually};
use crate::story_lama::{send_lama, wait_for_state};

/// Fails at once, saying why, when the adapter binary cannot kill itself on request. Only a build
/// with the `fault-injection` feature can: `cargo test --workspace` builds it so (this crate's
/// dev-dependency turns the feature on), but `cargo test -p spean-tests` builds no binary and runs
/// whichever one the last build left, which may be a plain one. Without this check the test would
/// wait for a kill that never comes.
fn require_fault_injection() {
    let adapter = bin("spean-adapter");
    let output = std::process::Command::new(&adapter)
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&output.stdout);
    assert!(
        version.contains("(fault-injection)"),
        "{} is a build without the fault-injection feature ({}): run `cargo build -p \
         spean-adapter --features fault-injection` or `cargo test --workspace` first",
        adapter.display(),
        version.trim_end()
    );
}

#[tokio::test]
async fn an_adapter_killed_between_storing_and_confirming_gets_the_delivery_again_and_shows_it_once()
 {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("broker"), "127.0.0.1:0").await;
    let hospital = AdapterProcess::installed(&broker, "ahc-swu", dir.path()).await;
    let mut ngo = AdapterProcess::installed(&broker, "mlup-russey", dir.path()).await;
    let sent = send_lama(&hospital, dir.path(), "crash-0001").await;
    let id = sent["referral_id"].as_str().unwrap().to_owned();

    // The daemon stores the delivery, then SIGKILLs itself before it can confirm.
    require_fault_injection();
    ngo.start_with(&[("SPEAN_ADAPTER_FAULT", "kill-after-store")]);
    let status = ngo.exited().await;
    assert_eq!(
        status.signal(),
        Some(nix::sys::signal::Signal::SIGKILL as i32),
        "{status:?}"
    );
    assert_eq!(
        ngo.inbox().await.len(),
        1,
        "the delivery was not stored before the kill"
    );

    // The broker never heard a confirmation: the referral is not delivered yet.
    let mut grpc = broker.client("ahc-swu").await;
    let get = || pb::GetRequest {
        referral_id: id.clone(),
    };
    let seen = grpc.referrals.get(get()).await.unwrap().into_inner();
    assert_eq!(seen.state, pb::ReferralState::Sent as i32);

    // Restarted, the adapter receives it again, stores it once, and confirms.
    ngo.start();
    eventually("the broker to record the delivery", || {
        let mut grpc = grpc.referrals.clone();
        let req = get();
        async move {
            let r = grpc.get(req).await.ok()?.into_inner();
            (r.state == pb::ReferralState::Delivered as i32).then_some(())
        }
    })
    .await;
    let inbox = ngo.inbox().await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0]["referral_id"], id.as_str());
    let history = grpc
        .referrals
        .get(get())
        .await
        .unwrap()
        .into_inner()
        .history;
    let delivered = history
        .iter()
        .filter(|e| e.kind == pb::FeedbackKind::Delivered as i32)
        .count();
    assert_eq!(delivered, 1);
    ngo.kill().await;
}

#[tokio::test]
async fn a_referral_sent_while_the_broker_is_down_is_queued_and_arrives_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker_dir = dir.path().join("broker");
    let mut broker = BrokerProcess::start(&broker_dir, "127.0.0.1:0").await;
    let mut hospital = AdapterProcess::installed(&broker, "ahc-swu", dir.path()).await;
    let mut ngo = AdapterProcess::installed(&broker, "mlup-russey", dir.path()).await;
    broker.kill().await;

    // The field site is offline: the referral waits in the local outbox.
    let queued = send_lama(&hospital, dir.path(), "offline-0001").await;
    assert_eq!(queued["status"], "queued", "{queued}");
    assert!(queued["referral_id"].is_null());

    // The broker comes back; the daemon submits it with its client_ref.
    let listen = broker.addr.to_string();
    let broker = BrokerProcess::start(&broker_dir, &listen).await;
    hospital.start();
    ngo.start();
    let inbox = eventually("the queued referral to reach the NGO", || async {
        let inbox = ngo.inbox().await;
        (!inbox.is_empty()).then_some(inbox)
    })
    .await;
    assert_eq!(inbox.len(), 1);
    let id = inbox[0]["referral_id"].as_str().unwrap().to_owned();
    wait_for_state(&hospital, &id, "delivered").await;

    // Sending the same request again (a retry) does not create a second referral.
    let again = send_lama(&hospital, dir.path(), "offline-0001").await;
    assert_eq!(again["referral_id"], id.as_str());
    let mut grpc = broker.client("mlup-russey").await;
    let listed = grpc
        .referrals
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.referrals.len(), 1);
    hospital.kill().await;
    ngo.kill().await;
}

/// Fails until the broker records `delivered` for a referral whose recipient acted on it before the
/// delivery confirmation reached the broker: `state::records_delivery` only accepts `sent`, so the
/// late confirmation is dropped and the sender never learns the referral was delivered. The fault
/// tests hit the same race when a crash or an outage delays a confirmation.
#[tokio::test]
async fn a_referral_acknowledged_before_its_delivery_was_confirmed_still_shows_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("broker"), "127.0.0.1:0").await;
    let mut hospital = AdapterProcess::installed(&broker, "ahc-swu", dir.path()).await;
    let mut ngo = AdapterProcess::installed(&broker, "mlup-russey", dir.path()).await;
    hospital.start();
    let sent = send_lama(&hospital, dir.path(), "late-confirm-0001").await;
    let id = sent["referral_id"].as_str().unwrap().to_owned();

    // The NGO's daemon stores the referral and dies before confirming; a social worker, who sees it
    // in the inbox, acknowledges it at once.
    require_fault_injection();
    ngo.start_with(&[("SPEAN_ADAPTER_FAULT", "kill-after-store")]);
    ngo.exited().await;
    let ack = ngo.json(&["ack", &id, "--by", "សុភា (Sophea)"]).await;
    assert_eq!(ack["status"], "sent", "{ack}");

    // The daemon comes back, is sent the referral again and confirms it.
    ngo.start();
    eventually("the NGO to confirm the referral", || async {
        (!broker
            .mailbox()
            .await
            .iter()
            .any(|(agency, event)| agency == "mlup-russey" && event.is_none()))
        .then_some(())
    })
    .await;
    wait_for_state(&hospital, &id, "acknowledged").await;

    // The referral was delivered: the broker's history and the hospital's both say so, once.
    let mut grpc = broker.client("ahc-swu").await;
    let history = grpc.referral(&id).await.history;
    let delivered = history
        .iter()
        .filter(|e| e.kind == pb::FeedbackKind::Delivered as i32)
        .count();
    assert_eq!(delivered, 1, "the broker's history: {history:?}");
    let shown = eventually("the hospital to show the delivery", || async {
        let shown = hospital.json(&["show", &id]).await;
        shown["history"]
            .as_array()?
            .iter()
            .any(|e| e["kind"] == "delivered")
            .then_some(shown)
    })
    .await;
    let delivered = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "delivered")
        .count();
    assert_eq!(delivered, 1);
    hospital.kill().await;
    ngo.kill().await;
}
