//! The local store holds case files: its folder, the file and its WAL are the agency user's alone
//! from their creation.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use spean_adapter::store::Store;
use spean_proto::v1::{FeedbackKind, ReferralState, delivery::Payload};

use crate::helpers::{delivery, event, id, khmer_case_file, referral};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn the_store_folder_file_and_wal_are_readable_by_the_agency_user_alone() {
    let root = tempfile::tempdir().unwrap();
    // A folder the adapter creates itself (the temporary folder already is 0700).
    let folder = root.path().join("spean").join("agency");
    let path = folder.join("spean-adapter.db");
    let store = Store::open(&path).await.unwrap();
    let referral_id = id();
    let submitted = event(&referral_id, FeedbackKind::Submitted, ReferralState::Sent);
    // A write, so that the WAL holds something.
    store
        .store_delivery(&delivery(Payload::Referral(referral(
            &referral_id,
            &khmer_case_file(),
            vec![submitted],
        ))))
        .await
        .unwrap();

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
