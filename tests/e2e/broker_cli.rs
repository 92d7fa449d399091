//! The broker's administrative commands, as an operator runs them.

use tokio::process::Command;

use crate::helpers::bin;

async fn broker(data_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("spean-broker"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn pki_init_creates_a_ca_once_and_issue_writes_an_agency_identity() {
    let dir = tempfile::tempdir().unwrap();
    let out = broker(dir.path(), &["pki", "init"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("pki/ca.pem").exists());
    assert!(dir.path().join("pki/broker.pem").exists());

    let again = broker(dir.path(), &["pki", "init"]).await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));

    let out = broker(dir.path(), &["pki", "issue", "kps-referral-hospital"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let identity = dir.path().join("pki/agencies/kps-referral-hospital");
    for file in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(identity.join(file).exists(), "{file} missing");
    }
    let bad = broker(dir.path(), &["pki", "issue", "Not An Id"]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("AGENCY"));
}

#[tokio::test]
async fn directory_import_accepts_the_fixture_and_refuses_a_broken_file_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/network.json");
    let out = broker(dir.path(), &["directory", "import", fixture]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 12 agencies"));

    let broken = dir.path().join("broken.json");
    std::fs::write(
        &broken,
        r#"{"agencies":[{"id":"a-ngo","name":"A","type":"ngo","provinces":["99"]}]}"#,
    )
    .unwrap();
    let out = broker(
        dir.path(),
        &["directory", "import", broken.to_str().unwrap()],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("agencies[].provinces"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn pki_issue_refuses_to_replace_an_agency_key_unless_forced() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = broker(dir.path(), &["pki", "init"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = broker(dir.path(), &["pki", "issue", "mlup-russey"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = dir.path().join("pki/agencies/mlup-russey/key.pem");
    let first = std::fs::read(&key).unwrap();
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&dir.path().join("pki/agencies/mlup-russey")), 0o700);
    assert_eq!(mode(&dir.path().join("pki/ca.key")), 0o600);

    let again = broker(dir.path(), &["pki", "issue", "mlup-russey"]).await;
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("key.pem") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&key).unwrap(),
        first,
        "the agency's key was replaced"
    );

    let forced = broker(dir.path(), &["pki", "issue", "--force", "mlup-russey"]).await;
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert_ne!(std::fs::read(&key).unwrap(), first);
    assert_eq!(mode(&key), 0o600);
}

/// The server certificate is re-issued from the same CA, only when forced; the broker restarted
/// with it serves an agency whose identity was issued before, unchanged.
#[tokio::test]
async fn pki_issue_server_re_issues_the_server_certificate_from_the_same_ca() {
    let dir = tempfile::tempdir().unwrap();
    let mut running = crate::helpers::BrokerProcess::start(dir.path(), "127.0.0.1:0").await;
    running
        .client("ahc-swu")
        .await
        .referrals
        .list(spean_proto::v1::ListRequest::default())
        .await
        .unwrap();
    let cert = dir.path().join("pki/broker.pem");
    let (before, ca) = (
        std::fs::read(&cert).unwrap(),
        std::fs::read(dir.path().join("pki/ca.pem")).unwrap(),
    );
    let refused = running.admin(&["pki", "issue-server"]).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--force"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let forced = running.admin(&["pki", "issue-server", "--force"]).await;
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert_ne!(std::fs::read(&cert).unwrap(), before);
    assert_eq!(
        std::fs::read(dir.path().join("pki/ca.pem")).unwrap(),
        ca,
        "the same CA"
    );
    running.kill().await;
    running.start_again().await;
    // The agency's identity from before the re-issue still connects.
    running
        .client("ahc-swu")
        .await
        .referrals
        .list(spean_proto::v1::ListRequest::default())
        .await
        .unwrap();
}

/// A rotation on a CA machine that cannot reach the brokers' database writes the files only and
/// prints the `pki revoke --at` that records the old certificate's end; that command records it,
/// a later revocation of the same certificate never postpones it, and bad input names its flag.
#[tokio::test]
async fn pki_rotate_offline_prints_the_revocation_to_record_and_revoke_at_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &'static [&'static str]| broker(dir.path(), args);
    let said = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    assert!(run(&["pki", "init"]).await.status.success());
    assert!(run(&["pki", "issue", "mlup-russey"]).await.status.success());
    for (args, expected) in [
        (&["pki", "rotate", "mlup-russey"][..], "--overlap"),
        (
            &["pki", "rotate", "mlup-russey", "--overlap", "3 days"][..],
            "--overlap: must be a duration",
        ),
        (
            &[
                "pki",
                "rotate",
                "mlup-russey",
                "--old-valid-until",
                "2020-01-01T00:00:00Z",
            ][..],
            "--old-valid-until: must be in the future",
        ),
        (
            &["pki", "revoke", "mlup-russey", "--reason", ""][..],
            "--reason: must not be empty",
        ),
    ] {
        let out = broker(dir.path(), args).await;
        assert!(!out.status.success(), "{args:?}");
        assert!(said(&out).contains(expected), "{args:?}: {}", said(&out));
    }

    let out = run(&[
        "pki",
        "rotate",
        "mlup-russey",
        "--overlap",
        "1h",
        "--offline",
    ])
    .await;
    let printed = said(&out);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("NOT recorded"), "{printed}");
    let at = printed
        .split("--at ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no --at in {printed}"))
        .to_owned();
    let folder = dir.path().join("pki/agencies/mlup-russey");
    let old = folder.join("cert.old.pem");
    let old = old.to_str().unwrap();

    let elsewhere = broker(dir.path(), &["pki", "revoke", "kps-referral-hospital"]).await;
    assert!(
        said(&elsewhere).contains("pass it with --cert FILE"),
        "{}",
        said(&elsewhere)
    );
    let wrong = broker(dir.path(), &["pki", "revoke", "ssc-smhs", "--cert", old]).await;
    assert!(
        said(&wrong).contains("is the certificate of mlup-russey, not of ssc-smhs"),
        "{}",
        said(&wrong)
    );
    let later = broker(
        dir.path(),
        &[
            "pki",
            "revoke",
            "mlup-russey",
            "--cert",
            old,
            "--at",
            &at,
            "--reason",
            "rotated",
        ],
    )
    .await;
    assert!(
        said(&later).contains(&format!("revoked, as of {at}")),
        "{}",
        said(&later)
    );
    // Revoked at once after all (the old laptop was stolen): the earlier time stands, and a
    // later one does not move it back.
    let now = broker(dir.path(), &["pki", "revoke", "mlup-russey", "--cert", old]).await;
    assert!(said(&now).contains("revoked, as of"), "{}", said(&now));
    let again = broker(
        dir.path(),
        &["pki", "revoke", "mlup-russey", "--cert", old, "--at", &at],
    )
    .await;
    assert!(
        said(&again).contains("already revoked, as of"),
        "{}",
        said(&again)
    );
    assert!(
        !said(&again).contains(&format!("as of {at}")),
        "{}",
        said(&again)
    );
    // The new identity is not revoked.
    let url = format!("sqlite://{}", dir.path().join("broker.db").display());
    let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let revoked: Vec<(String,)> = sqlx::query_as("SELECT agency_id FROM revocations")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(revoked, vec![("mlup-russey".to_owned(),)]);
}
