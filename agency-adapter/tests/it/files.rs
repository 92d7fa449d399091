//! The local store holds case files: its folder, the file and its WAL are the agency user's alone
//! from their creation, and stay so when a newer version migrates the store.

use std::path::Path;

use spean_adapter::store::Store;
use spean_proto::v1::delivery::Payload;

use crate::helpers::{agency_id, delivery, mode, redirected, store_khmer_referral};

#[tokio::test]
async fn the_store_folder_file_and_wal_are_readable_by_the_agency_user_alone() {
    let root = tempfile::tempdir().unwrap();
    // A folder the adapter creates itself (the temporary folder already is 0700).
    let folder = root.path().join("spean").join("agency");
    let path = folder.join("spean-adapter.db");
    let store = Store::open(&path, &agency_id("agency-b")).await.unwrap();
    // A write, so that the WAL holds something.
    store_khmer_referral(&store).await;

    for dir in [root.path().join("spean"), folder.clone()] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    for file in [
        "spean-adapter.db",
        "spean-adapter.db-wal",
        "spean-adapter.db-shm",
    ] {
        let file = folder.join(file);
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    store.close().await;
}

#[tokio::test]
async fn a_store_from_before_withdrawals_is_migrated_and_stays_readable_by_the_agency_user_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spean-adapter.db");
    // The store as the previous version left it: its first migration only, on a 0600 file.
    let first_only = dir.path().join("migrations");
    std::fs::create_dir(&first_only).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/0001_local_store.sql"),
        first_only.join("0001_local_store.sql"),
    )
    .unwrap();
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
    }
    let old = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal),
    )
    .await
    .unwrap();
    sqlx::migrate::Migrator::new(first_only.as_path())
        .await
        .unwrap()
        .run(&old)
        .await
        .unwrap();
    old.close().await;

    let store = Store::open(&path, &agency_id("agency-b")).await.unwrap();
    let referral_id = store_khmer_referral(&store).await;
    store
        .store_delivery(&delivery(Payload::Feedback(redirected(
            &referral_id,
            "agency-c",
        ))))
        .await
        .unwrap();

    // The new table is there and used: the redirect removed the case file and recorded it.
    assert!(store.withdrawal(&referral_id).await.unwrap().is_some());
    for file in [
        "spean-adapter.db",
        "spean-adapter.db-wal",
        "spean-adapter.db-shm",
    ] {
        let file = dir.path().join(file);
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    store.close().await;
}
