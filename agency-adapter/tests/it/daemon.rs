//! The daemon as agencies run it, and the crash tests' switch: only a build with the
//! `fault-injection` feature (which the end-to-end tests turn on) kills itself when
//! `SPEAN_ADAPTER_FAULT` says so, and `--version` tells the two builds apart. `cargo test -p
//! spean-adapter` checks the plain build; `cargo test --workspace` the other.

use std::process::Command;

use spean_proto::v1::{GetRequest, ReferralState};

use crate::helpers::{BrokerProcess, DaemonProcess, eventually, json_of};

const HOSPITAL: &str = "ahc-swu";
const DEPARTMENT: &str = "dosvy-24";

#[test]
fn the_version_says_whether_the_build_can_kill_itself() {
    let output = Command::new(env!("CARGO_BIN_EXE_spean-adapter"))
        .arg("--version")
        .output()
        .unwrap();

    let version = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        version.contains("(fault-injection)"),
        cfg!(feature = "fault-injection"),
        "{version}"
    );
}

/// Sends a referral to the department, then starts the department's daemon with the kill switch
/// set; returns the referral id and the daemon.
fn deliver_with_the_switch_on(broker: &BrokerProcess) -> (String, DaemonProcess) {
    let sent = json_of(&broker.adapter(
        HOSPITAL,
        &[
            "send",
            "--to",
            DEPARTMENT,
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
            "--json",
        ],
    ));
    let referral_id = sent["referral_id"].as_str().unwrap().to_owned();
    let daemon = broker.daemon(DEPARTMENT, &[("SPEAN_ADAPTER_FAULT", "kill-after-store")]);
    (referral_id, daemon)
}

/// The referral's state as the broker has it.
async fn state_at_broker(broker: &BrokerProcess, referral_id: &str) -> Option<i32> {
    let mut referrals = broker.client(HOSPITAL).await.referrals;
    let request = GetRequest {
        referral_id: referral_id.to_owned(),
    };
    Some(referrals.get(request).await.ok()?.into_inner().state)
}

#[cfg(not(feature = "fault-injection"))]
#[tokio::test]
async fn a_build_without_fault_injection_ignores_the_kill_switch_and_confirms_the_delivery() {
    let broker = BrokerProcess::start();
    broker.publish_keys(&[HOSPITAL, DEPARTMENT]);
    let (referral_id, mut daemon) = deliver_with_the_switch_on(&broker);

    eventually("the broker to record the delivery", || async {
        let state = state_at_broker(&broker, &referral_id).await?;
        (state == ReferralState::Delivered as i32).then_some(())
    })
    .await;

    assert_eq!(daemon.exited(), None, "the daemon killed itself");
    let inbox = json_of(&broker.adapter(DEPARTMENT, &["inbox", "--json"]));
    assert_eq!(inbox.as_array().unwrap().len(), 1, "{inbox}");
}

#[cfg(feature = "fault-injection")]
#[tokio::test]
async fn a_build_with_fault_injection_kills_itself_between_storing_and_confirming() {
    use std::os::unix::process::ExitStatusExt;

    let broker = BrokerProcess::start();

    broker.publish_keys(&[HOSPITAL, DEPARTMENT]);
    let (referral_id, mut daemon) = deliver_with_the_switch_on(&broker);

    let status = eventually("the daemon to kill itself", || {
        let exited = daemon.exited();
        async move { exited }
    })
    .await;

    assert_eq!(status.signal(), Some(9), "{status:?}");
    let inbox = json_of(&broker.adapter(DEPARTMENT, &["inbox", "--json"]));
    assert_eq!(
        inbox.as_array().unwrap().len(),
        1,
        "stored before the kill: {inbox}"
    );
    let state = state_at_broker(&broker, &referral_id).await;
    assert_eq!(state, Some(ReferralState::Sent as i32), "never confirmed");
}
