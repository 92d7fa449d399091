//! Local data protection (issue 24): files the adapter's user's alone, case data sealed at rest
//! (nowhere in clear in the store, its WAL or a backup), a wrong key refused, a store written in
//! clear sealed in place, backup and restore while a writer runs, and retention.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use prost::Message;
use spean_adapter::{AdapterError, at_rest::StoreKey, backup, retention, store::Store};
use spean_proto::v1::{FeedbackEvent, FeedbackKind, ReferralState, delivery::Payload};

use crate::helpers::{
    DaemonProcess, agency_id, at, delivery, event, eventually, id, identity, json_of,
    khmer_case_file, mode, referral,
};

/// The child's name in the case file [`khmer_case_file`] builds, and a note written about her.
const NAME: &str = "សុខ ស្រីល័ក្ខ";
const NOTE: &str = "ម្ដាយនិយាយថាឪពុកវាយកូន";
/// A staff member who reads the case file.
const READER: &str = "ចាន់ ដារា";

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Whether `file` holds `text`'s UTF-8 bytes anywhere.
fn holds(file: &Path, text: &str) -> bool {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let needle = text.as_bytes();
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// An agency's folder: its identity, its store, and the binary run against a broker address where
/// nothing listens (everything here is local).
struct Agency {
    dir: tempfile::TempDir,
    identity: PathBuf,
    store: PathBuf,
}

impl Agency {
    fn new(agency: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let identity = identity(dir.path(), agency);
        let store = dir.path().join("data").join("adapter.db");
        Self {
            dir,
            identity,
            store,
        }
    }

    /// The key file the binary uses by default: in the identity folder.
    fn key(&self) -> StoreKey {
        StoreKey::File(self.identity.join("store.key"))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_spean-adapter"));
        command
            .arg("--identity")
            .arg(&self.identity)
            .arg("--store")
            .arg(&self.store)
            .args(["--broker", "https://127.0.0.1:9"])
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove(spean_adapter::at_rest::PASSPHRASE_ENV);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run spean-adapter")
    }

    async fn open(&self, agency: &str) -> Store {
        Store::open_with(&self.store, &agency_id(agency), &self.key())
            .await
            .unwrap()
    }
}

/// A referral with the Khmer case file, its submission, and then `kind` (leaving `state`) at
/// `at_seconds` with a Khmer note.
fn noted_referral(
    kind: FeedbackKind,
    state: ReferralState,
    at_seconds: i64,
) -> (String, spean_proto::v1::Referral) {
    let referral_id = id();
    let submitted = event(&referral_id, FeedbackKind::Submitted, ReferralState::Sent);
    let mut noted = event(&referral_id, kind, state);
    noted.note = NOTE.into();
    noted.at = at(at_seconds);
    let referral = referral(&referral_id, &khmer_case_file(), vec![submitted, noted]);
    (referral_id, referral)
}

/// Stores, as a delivery, a referral acknowledged with a Khmer note; returns its id.
async fn store_referral_with_a_note(store: &Store) -> String {
    let (referral_id, referral) = noted_referral(
        FeedbackKind::Acknowledged,
        ReferralState::Acknowledged,
        1_700_000_100,
    );
    store
        .store_delivery(&delivery(Payload::Referral(referral)))
        .await
        .unwrap();
    referral_id
}

#[tokio::test]
async fn case_data_is_in_clear_nowhere_in_the_store_its_wal_or_a_backup_while_show_prints_it() {
    let agency = Agency::new("agency-b");
    let store = agency.open("agency-b").await;
    let referral_id = store_referral_with_a_note(&store).await;
    // A referral sent offline: its case file waits in the outbox (before it is sealed to readers).
    let case = agency.dir.path().join("case.json");
    std::fs::write(
        &case,
        r#"{"name":{"khmer":"ចាន់ សុភាព","latin":"Chan Sopheap"},"reason_for_referral":"x"}"#,
    )
    .unwrap();
    json_of(&agency.run(&[
        "send",
        "--to",
        "agency-c",
        "--kind",
        "lama",
        "--urgency",
        "urgent",
        "--sex",
        "female",
        "--age-band",
        "5-9",
        "--consent-by",
        "guardian",
        "--consent-at",
        "2026-12-01",
        "--consent-for",
        "redirect",
        "--subject-province",
        "12",
        "--case-file",
        case.to_str().unwrap(),
        "--client-ref",
        "ref-77",
        "--json",
    ]));
    let backup = agency.dir.path().join("backups").join("b1.db");
    json_of(&agency.run(&["backup", backup.to_str().unwrap(), "--json"]));

    // The store is still open here: what was written is in its WAL.
    let wal = sibling(&agency.store, "-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    for file in [&agency.store, &wal, &backup] {
        for text in [NAME, NOTE, "ចាន់ សុភាព", "សុភា"] {
            assert!(
                !holds(file, text),
                "{} holds {text} in clear",
                file.display()
            );
        }
    }
    store.close().await;
    assert!(!holds(&agency.store, NAME));

    let shown = json_of(&agency.run(&["show", &referral_id, "--by", READER, "--json"]));
    let text = shown.to_string();
    assert!(text.contains(NAME), "show does not print the name: {text}");
    assert!(text.contains(NOTE), "show does not print the note: {text}");
    // Who read it is in the audit log, sealed too.
    for file in [&agency.store, &sibling(&agency.store, "-wal")] {
        assert!(!file.exists() || !holds(file, READER), "{}", file.display());
    }
    let store = agency.open("agency-b").await;
    let entries = store.audit_entries().await.unwrap();
    assert_eq!(
        entries.last().map(|e| e.record.actor.as_str()),
        Some(format!("{READER}@agency-b").as_str())
    );
    store.close().await;
    let outbox = json_of(&agency.run(&["outbox", "--json"]));
    assert_eq!(outbox.as_array().map(Vec::len), Some(1), "{outbox}");
}

#[tokio::test]
async fn a_wrong_key_or_passphrase_is_refused_naming_the_setting_and_nothing_is_written() {
    let agency = Agency::new("agency-b");
    let store = agency.open("agency-b").await;
    store_referral_with_a_note(&store).await;
    store.close().await;
    let before = std::fs::read(&agency.store).unwrap();

    let other_key = agency.dir.path().join("elsewhere").join("other.key");
    let refused = Store::open_with(
        &agency.store,
        &agency_id("agency-b"),
        &StoreKey::File(other_key.clone()),
    )
    .await;
    match refused {
        Err(error @ AdapterError::Invalid { .. }) => {
            // No key file there: it is not made for a store that has its key already.
            assert!(error.to_string().contains("store_key"), "{error}");
            assert!(!other_key.exists());
        }
        other => panic!("a missing key file was not refused: {:?}", other.err()),
    }
    std::fs::create_dir_all(other_key.parent().unwrap()).unwrap();
    std::fs::write(&other_key, [9u8; 32]).unwrap();
    let refused = Store::open_with(
        &agency.store,
        &agency_id("agency-b"),
        &StoreKey::File(other_key),
    )
    .await;
    match refused {
        Err(error @ AdapterError::WrongStoreKey { .. }) => {
            assert!(error.to_string().contains("store_key"), "{error}")
        }
        other => panic!("another key was not refused: {:?}", other.err()),
    }
    // The binary says so too, naming the passphrase's variable when that is what was given.
    let out = agency
        .command(&["inbox", "--json"])
        .env(spean_adapter::at_rest::PASSPHRASE_ENV, "ពាក្យខុស")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(spean_adapter::at_rest::PASSPHRASE_ENV),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&agency.store).unwrap(), before);
}

#[tokio::test]
async fn a_store_opened_with_a_passphrase_opens_again_with_it_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter.db");
    let key = |p: &str| StoreKey::Passphrase(p.to_owned().into());
    let store = Store::open_with(&path, &agency_id("agency-b"), &key("ផ្កាឈូក ២០២៦"))
        .await
        .unwrap();
    let referral_id = store_referral_with_a_note(&store).await;
    store.close().await;
    assert!(!holds(&path, NAME));
    let store = Store::open_with(&path, &agency_id("agency-b"), &key("ផ្កាឈូក ២០២៦"))
        .await
        .unwrap();
    let row = store.referral(&referral_id).await.unwrap().unwrap();
    assert_eq!(
        spean_adapter::case_file::CaseFile::decode(&row.case_file)
            .unwrap()
            .name
            .khmer,
        NAME
    );
    store.close().await;
    assert!(matches!(
        Store::open_with(&path, &agency_id("agency-b"), &key("ផ្កាឈូក")).await,
        Err(AdapterError::WrongStoreKey { .. })
    ));
}

#[tokio::test]
async fn a_store_written_in_clear_by_an_earlier_version_is_sealed_in_place_on_first_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter.db");
    // The store as the previous version left it: every migration but this one, rows in clear.
    let earlier = dir.path().join("migrations");
    std::fs::create_dir(&earlier).unwrap();
    for entry in
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations")).unwrap()
    {
        let entry = entry.unwrap();
        if !entry.file_name().to_string_lossy().starts_with("0009") {
            std::fs::copy(entry.path(), earlier.join(entry.file_name())).unwrap();
        }
    }
    let old = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal),
    )
    .await
    .unwrap();
    sqlx::migrate::Migrator::new(earlier.as_path())
        .await
        .unwrap()
        .run(&old)
        .await
        .unwrap();
    let referral_id = id();
    let mut noted = event(
        &referral_id,
        FeedbackKind::Acknowledged,
        ReferralState::Acknowledged,
    );
    noted.note = NOTE.into();
    sqlx::query(
        "INSERT INTO referrals (referral_id, client_ref, sender, recipient, kind, urgency, \
         subject_sex, subject_age_band, subject_province, client_pseudonym, state, case_file, \
         envelope, created_at, updated_at, received_at) VALUES (?, 'ref-1', 'agency-a', \
         'agency-b', 'lama', 'urgent', 'female', '5-9', '12', '', 'acknowledged', ?, x'', \
         '2025-01-01', '2025-01-01', '2025-01-01')",
    )
    .bind(&referral_id)
    .bind(khmer_case_file().encode())
    .execute(&old)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO events (event_id, referral_id, kind, actor_agency_id, actor_person, at, \
         note, state_after, encoded) VALUES (?, ?, 'acknowledged', 'agency-b', 'សុភា', \
         '2025-01-01', ?, 'acknowledged', ?)",
    )
    .bind(&noted.event_id)
    .bind(&referral_id)
    .bind(NOTE)
    .bind(noted.encode_to_vec())
    .execute(&old)
    .await
    .unwrap();
    old.close().await;
    assert!(holds(&path, NAME) && holds(&path, NOTE));

    let store = Store::open(&path, &agency_id("agency-b")).await.unwrap();
    store.close().await;
    for text in [NAME, NOTE, "សុភា"] {
        assert!(!holds(&path, text), "{text} is still in clear");
    }
    let store = Store::open(&path, &agency_id("agency-b")).await.unwrap();
    let row = store.referral(&referral_id).await.unwrap().unwrap();
    assert_eq!(
        spean_adapter::case_file::CaseFile::decode(&row.case_file)
            .unwrap()
            .name
            .khmer,
        NAME
    );
    let history = store.history(&referral_id).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].note, NOTE);
    assert_eq!(history[0].actor_person, "សុភា");
    store.close().await;
}

#[tokio::test]
async fn everything_the_daemon_and_commands_write_is_the_agency_users_alone() {
    let agency = Agency::new("agency-b");
    // An older store left readable by others is tightened when opened.
    {
        let store = agency.open("agency-b").await;
        store_referral_with_a_note(&store).await;
        store.close().await;
    }
    std::fs::set_permissions(&agency.store, std::fs::Permissions::from_mode(0o644)).unwrap();
    let daemon = DaemonProcess::spawn(agency.command(&["run"]));
    let wal = sibling(&agency.store, "-wal");
    let shm = sibling(&agency.store, "-shm");
    eventually("the daemon's WAL", || async {
        (wal.exists() && shm.exists()).then_some(())
    })
    .await;
    let backup = agency.dir.path().join("backups").join("b.db");
    json_of(&agency.run(&["backup", backup.to_str().unwrap(), "--json"]));
    for file in [
        agency.store.clone(),
        wal,
        shm,
        backup.clone(),
        agency.identity.join("store.key"),
    ] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    for folder in [agency.store.parent().unwrap(), backup.parent().unwrap()] {
        assert_eq!(mode(folder), 0o700, "{}", folder.display());
    }
    // An existing backup is not overwritten without --force.
    let again = agency.run(&["backup", backup.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    json_of(&agency.run(&["backup", backup.to_str().unwrap(), "--force", "--json"]));
    assert_eq!(mode(&backup), 0o600);
    drop(daemon);
}

#[tokio::test]
async fn a_backup_taken_while_a_writer_runs_restores_and_reads_back() {
    let agency = Agency::new("agency-b");
    let store = agency.open("agency-b").await;
    for _ in 0..5 {
        store_referral_with_a_note(&store).await;
    }
    // A writer storing referrals the whole time the backup is taken.
    let writing = store.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    let writer = tokio::spawn(async move {
        let mut written = 0;
        while !stopped.is_cancelled() {
            store_referral_with_a_note(&writing).await;
            written += 1;
        }
        written
    });
    let file = agency.dir.path().join("b.db");
    backup::backup(&store, &file, false).await.unwrap();
    stop.cancel();
    let written = writer.await.unwrap();
    assert!(written > 0, "the writer never ran beside the backup");
    let in_backup: i64 = rusqlite::Connection::open(&file)
        .unwrap()
        .query_row("SELECT count(*) FROM referrals", [], |r| r.get(0))
        .unwrap();
    assert!(in_backup >= 5);
    // A request queued after the backup.
    store
        .enqueue("req-after", "acknowledge", Some("r-x"), b"queued later")
        .await
        .unwrap();

    // The live store holds referrals the backup lacks: refused unless the loss is accepted.
    match backup::restore(&store, &file, false).await {
        Err(AdapterError::Invalid { reason, .. }) => {
            assert!(reason.contains("--accept-loss"), "{reason}")
        }
        other => panic!("a restore losing deliveries went through: {other:?}"),
    }
    let restored = backup::restore(&store, &file, true).await.unwrap();
    assert_eq!(
        restored.referrals_to_read_again.len() as i64,
        5 + written - in_backup
    );
    assert_eq!(restored.requests_carried_over, 1);
    let received = store.received().await.unwrap();
    assert_eq!(received.len() as i64, in_backup);
    for row in &received {
        let case_file = spean_adapter::case_file::CaseFile::decode(&row.case_file).unwrap();
        assert_eq!(case_file.name.khmer, NAME);
        let history = store.history(&row.referral_id).await.unwrap();
        assert_eq!(history.last().map(|e| e.note.as_str()), Some(NOTE));
    }
    let carried = store.outbox_row("req-after").await.unwrap().unwrap();
    assert_eq!(
        (carried.status.as_str(), carried.payload.as_slice()),
        ("pending", &b"queued later"[..])
    );
    // The store still writes after the restore.
    store_referral_with_a_note(&store).await;
    store.close().await;
}

#[tokio::test]
async fn a_backup_of_another_agency_or_under_another_key_is_refused_and_nothing_changes() {
    let ours = Agency::new("agency-b");
    let store = ours.open("agency-b").await;
    let kept = store_referral_with_a_note(&store).await;

    let theirs = Agency::new("agency-c");
    let other = theirs.open("agency-c").await;
    store_referral_with_a_note(&other).await;
    let their_backup = theirs.dir.path().join("c.db");
    backup::backup(&other, &their_backup, false).await.unwrap();
    other.close().await;
    match backup::restore(&store, &their_backup, true).await {
        Err(AdapterError::Invalid { reason, .. }) => {
            assert!(reason.contains("agency-c"), "{reason}")
        }
        other => panic!("another agency's backup was restored: {other:?}"),
    }

    // Same agency, another store (and key).
    let twin = Agency::new("agency-b");
    let twin_store = twin.open("agency-b").await;
    let twin_backup = twin.dir.path().join("twin.db");
    backup::backup(&twin_store, &twin_backup, false)
        .await
        .unwrap();
    twin_store.close().await;
    match backup::restore(&store, &twin_backup, true).await {
        Err(AdapterError::Invalid { reason, .. }) => assert!(reason.contains("key"), "{reason}"),
        other => panic!("a backup under another key was restored: {other:?}"),
    }
    // Not a store at all.
    let junk = ours.dir.path().join("junk.db");
    std::fs::write(&junk, "not sqlite").unwrap();
    assert!(backup::restore(&store, &junk, true).await.is_err());

    assert!(store.referral(&kept).await.unwrap().is_some());
    assert_eq!(store.received().await.unwrap().len(), 1);
    store.close().await;
}

/// A referral closed (completed) at `closed_at` (Unix seconds), with Khmer notes on its way.
fn closed_referral(closed_at: i64) -> (String, spean_proto::v1::Referral) {
    noted_referral(FeedbackKind::Completed, ReferralState::Completed, closed_at)
}

#[tokio::test]
async fn retention_purges_case_files_closed_longer_than_the_period_and_keeps_the_counts() {
    let agency = Agency::new("agency-b");
    let store = agency.open("agency-b").await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (old, old_referral) = closed_referral(now - 3 * 86_400);
    let (recent, recent_referral) = closed_referral(now - 3_600);
    let open = store_referral_with_a_note(&store).await;
    for r in [&old_referral, &recent_referral] {
        store
            .store_delivery(&delivery(Payload::Referral(r.clone())))
            .await
            .unwrap();
    }
    let two_days = retention::Period::parse("retention", "2d").unwrap();

    let dry = retention::purge(&store, two_days, "2d", true)
        .await
        .unwrap();
    assert_eq!(dry.referral_ids, vec![old.clone()]);
    assert!(
        !store
            .referral(&old)
            .await
            .unwrap()
            .unwrap()
            .case_file
            .is_empty()
    );

    let purged = retention::purge(&store, two_days, "2d", false)
        .await
        .unwrap();
    assert_eq!(purged.referral_ids, vec![old.clone()]);
    let row = store.referral(&old).await.unwrap().unwrap();
    assert!(row.case_file.is_empty());
    assert_eq!(row.state, "completed");
    let history: Vec<FeedbackEvent> = store.history(&old).await.unwrap();
    assert_eq!(history.len(), 2, "the history's events stay");
    assert!(
        history
            .iter()
            .all(|e| e.note.is_empty() && e.actor_person.is_empty())
    );
    assert_eq!(history[1].kind, FeedbackKind::Completed as i32);
    let withdrawal = store.withdrawal(&old).await.unwrap().unwrap();
    assert_eq!(withdrawal.because, "retention");
    for kept in [&recent, &open] {
        assert!(
            !store
                .referral(kept)
                .await
                .unwrap()
                .unwrap()
                .case_file
                .is_empty()
        );
    }
    assert_eq!(
        store.received().await.unwrap().len(),
        3,
        "every referral still counts"
    );

    // Delivered again (a replay, a restore): the case file does not come back.
    store
        .store_delivery(&delivery(Payload::Referral(old_referral)))
        .await
        .unwrap();
    assert!(
        store
            .referral(&old)
            .await
            .unwrap()
            .unwrap()
            .case_file
            .is_empty()
    );
    assert!(
        store
            .history(&old)
            .await
            .unwrap()
            .iter()
            .all(|e| e.note.is_empty())
    );
    // Run again: nothing more to purge.
    let again = retention::purge(&store, two_days, "2d", false)
        .await
        .unwrap();
    assert!(again.referral_ids.is_empty());
    assert_eq!(retention::history(&store).await.unwrap().len(), 1);
    store.close().await;

    // The command and `show` say it.
    let shown = json_of(&agency.run(&["show", &old, "--json"]));
    assert_eq!(
        shown["case_file_withdrawn"]["because"], "retention",
        "{shown}"
    );
    let listed = json_of(&agency.run(&["purge", "--dry-run", "--json"]));
    assert_eq!(
        listed["purge"]["referral_ids"],
        serde_json::json!([]),
        "{listed}"
    );
    assert_eq!(listed["earlier"][0]["referrals"], 1, "{listed}");
    // The setting comes from the environment too, and a period that does not parse is named.
    let from_env = agency
        .command(&["purge", "--dry-run", "--json"])
        .env("SPEAN_ADAPTER_RETENTION__CLOSED_CASE_FILES_FOR", "1s")
        .output()
        .unwrap();
    let from_env = json_of(&from_env);
    assert_eq!(from_env["closed_case_files_for"], "1s", "{from_env}");
    assert_eq!(
        from_env["purge"]["referral_ids"].as_array().map(Vec::len),
        Some(1),
        "the recent closed referral is due after a second: {from_env}"
    );
    let bad = agency
        .command(&["purge", "--dry-run"])
        .env("SPEAN_ADAPTER_RETENTION__CLOSED_CASE_FILES_FOR", "one year")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("retention.closed_case_files_for"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// The NGO's outbox row with `request_id`, as `outbox --json` shows it.
fn outbox_status(broker: &crate::helpers::BrokerProcess, agency: &str, request_id: &str) -> String {
    let outbox = json_of(&broker.adapter(agency, &["outbox", "--json"]));
    outbox
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["request_id"] == request_id)
        .map(|row| row["status"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn acknowledgements(shown: &serde_json::Value) -> usize {
    shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "acknowledged")
        .count()
}

#[tokio::test]
async fn a_restore_while_the_daemon_runs_reads_back_what_was_lost_and_resends_under_the_same_key() {
    const HOSPITAL: &str = "ahc-swu";
    const NGO: &str = "mlup-russey";
    let broker = crate::helpers::BrokerProcess::start();
    broker.publish_keys(&[HOSPITAL, NGO]);
    let id = broker.send_story_one("ref-restore");
    let daemon = broker.daemon(NGO, &[]);
    eventually("the NGO's daemon stores the referral", || async {
        broker
            .adapter(NGO, &["show", &id, "--json"])
            .status
            .success()
            .then_some(())
    })
    .await;
    drop(daemon);
    // Queued, then the backup: in the backup the acknowledgement waits to be sent.
    json_of(&broker.adapter(
        NGO,
        &[
            "ack",
            &id,
            "--note",
            NOTE,
            "--request-id",
            "ack-restore",
            "--queue-only",
            "--json",
        ],
    ));
    let backup = broker.dir.path().join("ngo-backup.db");
    json_of(&broker.adapter(NGO, &["backup", backup.to_str().unwrap(), "--json"]));
    let mut daemon = broker.daemon(NGO, &[]);
    eventually("the daemon sends the acknowledgement", || async {
        (outbox_status(&broker, NGO, "ack-restore") == "sent").then_some(())
    })
    .await;

    // The live store holds the acknowledgement the broker answered; the backup does not.
    let refused = broker.adapter(NGO, &["restore", backup.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--accept-loss"));
    // Restored with the broker out of reach: what was lost is kept to be read again.
    let offline = Command::new(env!("CARGO_BIN_EXE_spean-adapter"))
        .arg("--identity")
        .arg(broker.identity(NGO))
        .arg("--store")
        .arg(broker.dir.path().join(format!("{NGO}.db")))
        .args(["--broker", "https://127.0.0.1:9"])
        .args([
            "restore",
            backup.to_str().unwrap(),
            "--accept-loss",
            "--json",
        ])
        .output()
        .unwrap();
    let restored = json_of(&offline);
    assert_eq!(restored["referrals_read_again"], 0, "{restored}");
    assert_eq!(
        restored["referrals_not_read_again"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "{restored}"
    );
    assert!(
        daemon.exited().is_none(),
        "the daemon stopped during the restore"
    );
    // The daemon reads it again when it (re)connects.
    drop(daemon);
    let mut daemon = broker.daemon(NGO, &[]);
    let store_file = broker.dir.path().join(format!("{NGO}.db"));
    eventually("the daemon reads again what the restore lost", || async {
        let left: i64 = rusqlite::Connection::open(&store_file)
            .ok()?
            .query_row("SELECT count(*) FROM to_read_again", [], |r| r.get(0))
            .ok()?;
        (left == 0).then_some(())
    })
    .await;

    // And the request, pending again, goes again under its key with the bytes it was first sealed
    // to: the broker answers it as a replay, so the history holds one acknowledgement.
    eventually("the acknowledgement is sent again", || async {
        (outbox_status(&broker, NGO, "ack-restore") == "sent").then_some(())
    })
    .await;
    assert!(daemon.exited().is_none());
    let shown = json_of(&broker.adapter(NGO, &["show", &id, "--json"]));
    assert_eq!(acknowledgements(&shown), 1, "{shown}");
    assert!(shown.to_string().contains(NAME) && shown.to_string().contains(NOTE));
    // The broker, too, holds one.
    let mut hospital = broker.client(HOSPITAL).await;
    let at_broker = hospital
        .referrals
        .get(spean_proto::v1::GetRequest {
            referral_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let acknowledged = at_broker
        .history
        .iter()
        .filter(|e| e.kind == FeedbackKind::Acknowledged as i32)
        .count();
    assert_eq!(acknowledged, 1);
}
