//! The adapter's audit trail through the binary: every `show` appends who read which referral to a
//! hash-chained log, the newest broker head a delivery carried is kept, and `audit verify` names
//! the first bad entry of a tampered copy of the store.

use std::path::Path;
use std::process::{Command, Output};

use spean_adapter::case_file::CaseFile;
use spean_proto::v1::{AuditHead, delivery::Payload};

use crate::helpers::{delivery, fresh_store_of, id, identity, referral};

const ME: &str = "agency-b";

/// Runs the binary as `agency-b` on the store at `store`, with `USER` set as an OS login would.
fn adapter(dir: &Path, store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spean-adapter"))
        .arg("--identity")
        .arg(identity(dir, ME))
        .arg("--store")
        .arg(store)
        // The key `Store::open` gave the store this test wrote in-process.
        .arg("--store-key")
        .arg(spean_adapter::at_rest::key_beside(store))
        .args(["--broker", "https://127.0.0.1:9"])
        .args(args)
        .env_remove("RUST_LOG")
        .env("USER", "os-login")
        .output()
        .expect("run spean-adapter")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn head_of(seq: u64, byte: u8) -> AuditHead {
    AuditHead {
        seq,
        hash: vec![byte; 32],
    }
}

#[tokio::test]
async fn every_show_is_logged_and_a_tampered_copy_names_its_first_bad_entry() {
    let t = fresh_store_of(ME).await;
    let dir = t._dir.path();
    let referral_id = id();
    let mut first = delivery(Payload::Referral(referral(
        &referral_id,
        &CaseFile::default(),
        vec![],
    )));
    first.audit_head = Some(head_of(7, 7));
    // A delivery carrying an older head (from a broker that read its head earlier) is not kept.
    let mut older = delivery(Payload::Referral(referral(
        &id(),
        &CaseFile::default(),
        vec![],
    )));
    older.audit_head = Some(head_of(3, 3));
    t.store.store_deliveries(&[first, older]).await.unwrap();
    t.store.close().await;

    for by in ["Sokha", "Dara", "", "Sokha", "Dara"] {
        let mut args = vec!["show", referral_id.as_str()];
        if !by.is_empty() {
            args.extend(["--by", by]);
        }
        stdout(&adapter(dir, &t.path, &args));
    }
    let verified = stdout(&adapter(dir, &t.path, &["audit", "verify"]));
    assert!(
        verified.starts_with("audit log OK: 5 entries"),
        "{verified}"
    );
    let head = stdout(&adapter(dir, &t.path, &["audit", "head"]));
    assert!(head.starts_with("5:"), "{head}");
    assert_eq!(
        stdout(&adapter(dir, &t.path, &["audit", "broker-head"])),
        format!("7:{}", "07".repeat(32))
    );

    // Who read which referral, and nothing of the case file.
    let reopened = spean_adapter::store::Store::open(&t.path, &crate::helpers::agency_id(ME))
        .await
        .unwrap();
    let entries = reopened.audit_entries().await.unwrap();
    reopened.close().await;
    let actors: Vec<&str> = entries.iter().map(|e| e.record.actor.as_str()).collect();
    assert_eq!(
        actors,
        [
            "Sokha@agency-b",
            "Dara@agency-b",
            "os-login@agency-b",
            "Sokha@agency-b",
            "Dara@agency-b"
        ]
    );
    assert!(entries.iter().all(|e| e.record.action == "show"
        && e.record.referral_id.as_deref() == Some(referral_id.as_str())));

    let tamperings: [(&str, &[&str], &str); 4] = [
        (
            "a changed field",
            &["UPDATE audit_log SET actor = 'someone@agency-b' WHERE seq = 3"],
            "BROKEN at entry 3: entry 3 was changed",
        ),
        (
            "a deleted middle row",
            &["DELETE FROM audit_log WHERE seq = 3"],
            "BROKEN at entry 3: entry 3 was removed",
        ),
        (
            "two swapped rows",
            &[
                "UPDATE audit_log SET seq = -1 WHERE seq = 2",
                "UPDATE audit_log SET seq = 2 WHERE seq = 3",
                "UPDATE audit_log SET seq = 3 WHERE seq = -1",
            ],
            "BROKEN at entry 2: entry 2 is out of order",
        ),
        (
            "a deleted tail",
            &["DELETE FROM audit_log WHERE seq > 3"],
            "BROKEN at entry 4: entry 4 was removed: the log ends before the head",
        ),
    ];
    for (name, statements, said) in tamperings {
        let copy = dir.join(format!("copy-{}.db", id()));
        let original = rusqlite::Connection::open(&t.path).unwrap();
        original
            .execute("VACUUM INTO ?", [copy.to_str().unwrap()])
            .unwrap();
        let tampered = rusqlite::Connection::open(&copy).unwrap();
        for statement in statements {
            tampered.execute(statement, []).unwrap();
        }
        drop(tampered);
        // The copy opens with the original's key.
        std::fs::copy(
            spean_adapter::at_rest::key_beside(&t.path),
            spean_adapter::at_rest::key_beside(&copy),
        )
        .unwrap();
        let output = adapter(dir, &copy, &["audit", "verify", "--head", &head]);
        assert!(!output.status.success(), "{name}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(said), "{name}: {stderr}");
    }
}
