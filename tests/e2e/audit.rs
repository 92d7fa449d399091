//! The audit trail across real processes: a referral flows from the hospital's adapter to the
//! NGO's through the broker, the NGO's social worker reads it with `show`, the NGO's adapter keeps
//! the broker head its deliveries carried, and that head exposes a broker log cut short.

use sqlx::Connection;

use crate::helpers::{AdapterProcess, BrokerProcess, eventually};
use crate::story_lama::{send_lama, wait_for_state};

fn said(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn a_truncated_broker_log_is_caught_with_the_head_an_adapter_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(&dir.path().join("broker"), "127.0.0.1:0").await;
    let mut hospital = AdapterProcess::installed(&broker, "ahc-swu", dir.path()).await;
    let mut ngo = AdapterProcess::installed(&broker, "mlup-russey", dir.path()).await;
    hospital.start();
    ngo.start();

    let sent = send_lama(&hospital, dir.path(), "ahc-audit-0001").await;
    let id = sent["referral_id"].as_str().unwrap().to_owned();
    // Delivered: the NGO's adapter stored it (its inbox is not read yet, which would be logged).
    wait_for_state(&hospital, &id, "delivered").await;

    // The social worker reads the case file: the NGO's log says who, and which referral.
    let shown = ngo.run(&["show", &id, "--by", "Sokha"]).await;
    assert!(shown.status.success(), "{}", said(&shown));
    let verified = ngo.run(&["audit", "verify"]).await;
    assert!(
        said(&verified).contains("audit log OK: 1 entries"),
        "{}",
        said(&verified)
    );
    // The inbox shows the child's name: a read too, one entry per referral listed.
    assert_eq!(ngo.inbox().await.len(), 1);
    let verified = ngo.run(&["audit", "verify"]).await;
    assert!(
        said(&verified).contains("audit log OK: 2 entries"),
        "{}",
        said(&verified)
    );

    // Its daemon reports its head when it connects, and the broker witnesses it: `audit verify`
    // then checks the NGO's log reaches what the broker saw.
    ngo.kill().await;
    ngo.start();
    let witnessed = eventually("the broker to witness the NGO's head", || async {
        let out = ngo.run(&["audit", "verify"]).await;
        let text = said(&out);
        (out.status.success() && text.contains("the broker witnessed: 2:")).then_some(text)
    })
    .await;
    assert!(witnessed.contains("audit log OK: 2 entries"), "{witnessed}");

    // The NGO's adapter kept the broker head its delivery carried; the broker's log holds it.
    let kept = ngo.run(&["audit", "broker-head"]).await;
    assert!(kept.status.success(), "{}", said(&kept));
    let kept = String::from_utf8(kept.stdout).unwrap().trim().to_owned();
    let (seq, _) = kept.split_once(':').unwrap();
    let seq: u64 = seq.parse().unwrap();
    assert!(seq >= 1, "{kept}");
    let checked = broker.admin(&["audit", "verify", "--head", &kept]).await;
    assert!(checked.status.success(), "{}", said(&checked));
    let head = broker.admin(&["audit", "head"]).await;
    let head = String::from_utf8(head.stdout).unwrap();
    let broker_seq: u64 = head.split(':').next().unwrap().trim().parse().unwrap();
    assert!(
        broker_seq >= seq,
        "the broker's head {head} is behind the kept {kept}"
    );

    // The broker's operator cuts the log's tail, back to before the head the NGO kept.
    broker.kill().await;
    let url = format!("sqlite://{}", broker.data_dir.join("broker.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("DELETE FROM audit_log WHERE seq >= ?")
        .bind(i64::try_from(seq).unwrap())
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();

    // Alone, the shorter log is a valid chain; against the NGO's head, it is not.
    let alone = broker.admin(&["audit", "verify"]).await;
    assert!(alone.status.success(), "{}", said(&alone));
    let caught = broker.admin(&["audit", "verify", "--head", &kept]).await;
    assert!(!caught.status.success(), "{}", said(&caught));
    assert!(
        said(&caught).contains(&format!("BROKEN at entry {seq}")),
        "{}",
        said(&caught)
    );
    hospital.kill().await;
    ngo.kill().await;
}
