//! One suite of store tests, run against every backend: SQLite in a temporary file, and PostgreSQL
//! in a fresh database per test on the server named by `SPEAN_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). An unreachable PostgreSQL fails the test.

use std::sync::Arc;
use std::time::Duration;

use spean_broker::directory::Directory;
use spean_broker::ids::{AgencyId, ClientRef, ProvinceCode, ReferralId, RequestId};
use spean_broker::referral::{
    Addressee, AgeBand, Code, Event, EventDetails, EventKind, FreeText, ListQuery, Referral, Role,
    SealedCaseFile, Sex, State, Subject, Urgency,
};
use spean_broker::store::postgres::{BatchCounts, PgStore};
use spean_broker::store::sqlite::SqliteStore;
use spean_broker::store::{Change, ChangeOutcome, MailboxEntry, NewDelivery, Store, SubmitOutcome};
use sqlx::Connection;
use time::OffsetDateTime;

/// A store under test, its raw pool (to try what the trait does not offer), and what to clean up.
struct Fixture {
    store: Arc<dyn Store>,
    pool: RawPool,
    /// The PostgreSQL store itself, whose batch counts show which path a write took.
    pg: Option<PgStore>,
    _backing: Backing,
}

enum RawPool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Fixture {
    /// PostgreSQL's batches so far; `None` on SQLite, which has no batches of its own (its writer
    /// commits concurrent writes together instead).
    fn batches(&self) -> Option<BatchCounts> {
        self.pg.as_ref().map(PgStore::batches)
    }

    /// Runs a statement straight on the backend's pool.
    async fn raw(&self, sql: &'static str) -> Result<(), sqlx::Error> {
        match &self.pool {
            RawPool::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
            RawPool::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        }
    }
}

/// Keeps a backend's resources alive for the test and removes them after, also when the test panics.
enum Backing {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin: String, database: String },
}

impl Drop for Backing {
    /// Drops the test's PostgreSQL database, best effort. `Drop` cannot await and the test's runtime
    /// cannot be blocked on from inside, so a short-lived thread with its own runtime does it.
    /// `WITH (FORCE)` ends the store's pooled connections, which close in the background.
    fn drop(&mut self) {
        let Backing::Postgres { admin, database } = self else {
            return;
        };
        let statement = format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)");
        let admin = admin.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(sqlx::AssertSqlSafe(statement))
                    .execute(&mut conn)
                    .await?;
                conn.close().await
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop the test database {database}: {e}");
        }
    }
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("store.db"), false)
        .await
        .unwrap();
    Fixture {
        pool: RawPool::Sqlite(store.pool().clone()),
        pg: None,
        store: Arc::new(store),
        _backing: Backing::Sqlite(dir),
    }
}

/// A fresh database on the test server, migrated by [`PgStore::connect`].
async fn postgres() -> Fixture {
    let admin = std::env::var("SPEAN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let database = format!("spean_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the store conformance tests need PostgreSQL at {admin} \
             (set SPEAN_TEST_POSTGRES_URL to use another server): {e}"
            )
        });
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    // From here on the guard drops the database, whatever happens next.
    let backing = Backing::Postgres {
        admin: admin.clone(),
        database: database.clone(),
    };
    let store = PgStore::connect(&with_database(&admin, &database))
        .await
        .unwrap();
    Fixture {
        pool: RawPool::Postgres(store.pool().clone()),
        pg: Some(store.clone()),
        store: Arc::new(store),
        _backing: backing,
    }
}

/// `url` with its database replaced by `database`, keeping any `?options`.
fn with_database(url: &str, database: &str) -> String {
    let (base, options) = url
        .split_once('?')
        .map_or((url, None), |(b, o)| (b, Some(o)));
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    match options {
        Some(options) => format!("{server}/{database}?{options}"),
        None => format!("{server}/{database}"),
    }
}

/// Generates one test per backend for each conformance check.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test] async fn $name() { super::$name(super::sqlite().await).await; })*
        }
        mod on_postgres {
            $(#[tokio::test] async fn $name() { super::$name(super::postgres().await).await; })*
        }
    };
}

conformance!(
    a_submitted_referral_reads_back_byte_for_byte,
    a_reused_client_ref_returns_the_existing_referral,
    a_change_applies_only_to_the_version_it_read,
    a_repeated_request_id_returns_the_first_event,
    history_is_ordered_and_append_only,
    a_redirect_grants_access_to_the_new_recipient,
    listing_filters_and_pages,
    the_mailbox_keeps_order_and_forgets_confirmed_entries,
    deliveries_load_in_batches_with_their_histories,
    a_snapshot_holds_the_referral_its_parties_and_its_history,
    a_failed_write_leaves_nothing_and_spares_the_writes_beside_it,
    outbox_leases_hand_each_row_to_one_relay,
    held_deliveries_stay_out_of_leases_until_their_hold_runs_out,
    the_directory_round_trips_and_versions,
    concurrent_changes_on_one_version_record_exactly_one,
    concurrent_retries_of_one_request_record_it_once,
    concurrent_submits_of_one_client_ref_create_one_referral,
    changes_applied_together_each_apply_to_the_version_they_read,
    a_refused_change_among_others_leaves_nothing_of_itself,
    crossing_batches_of_changes_record_each_change_once,
    submits_made_at_once_are_each_written_whole,
    confirmations_that_arrive_together_record_each_delivery_once,
    carried_deliveries_come_back_with_their_lease_but_not_to_a_former_recipient,
    tidying_the_outbox_clears_out_published_rows_and_keeps_the_rest,
);

const KHMER: &str = "សុខ ស្រីល័ក្ខ";

fn agency(id: &str) -> AgencyId {
    AgencyId::parse("agency", id).unwrap()
}

fn referral(client_ref: &str) -> Referral {
    let now = OffsetDateTime::now_utc();
    Referral {
        id: ReferralId::new(),
        client_ref: ClientRef::parse("client_ref", client_ref).unwrap(),
        fingerprint: format!("fp-{client_ref}"),
        sender: agency("ahc-swu"),
        addressee: Addressee::Service {
            service: Code::parse("s", "reintegration_follow_up").unwrap(),
            province: ProvinceCode::parse("p", "24").unwrap(),
        },
        recipient: agency("mlup-russey"),
        kind: Code::parse("kind", "lama").unwrap(),
        urgency: Urgency::Emergency,
        subject: Subject {
            sex: Sex::Female,
            age_band: AgeBand::Age5To9,
            province: ProvinceCode::parse("p", "24").unwrap(),
        },
        client_pseudonym: None,
        state: State::Sent,
        version: 1,
        created_at: now,
        updated_at: now,
        case_file: SealedCaseFile::new(KHMER.as_bytes().to_vec()),
    }
}

fn event(r: &Referral, kind: EventKind, actor: &str, state: State, request: Option<&str>) -> Event {
    Event {
        id: uuid::Uuid::now_v7(),
        referral_id: r.id,
        kind,
        actor: agency(actor),
        actor_person: FreeText::parse("p", "សុភា", 100).unwrap(),
        at: OffsetDateTime::now_utc(),
        note: FreeText::parse("note", "ជួបគ្រួសារ", 100).unwrap(),
        state_after: state,
        details: EventDetails::None,
        request_id: request.map(|r| RequestId::parse("request_id", r).unwrap()),
    }
}

async fn submit(store: &Arc<dyn Store>, client_ref: &str) -> Referral {
    submit_with(store, client_ref, None, None).await.0
}

/// Submits a referral whose delivery to its recipient carries `body` and is `held`; returns it
/// with that delivery's id.
async fn submit_with(
    store: &Arc<dyn Store>,
    client_ref: &str,
    body: Option<Vec<u8>>,
    held: Option<Duration>,
) -> (Referral, uuid::Uuid) {
    let r = referral(client_ref);
    let e = event(&r, EventKind::Submitted, "ahc-swu", State::Sent, None);
    let d = [NewDelivery {
        id: uuid::Uuid::now_v7(),
        agency: r.recipient.clone(),
        event_id: None,
        body,
        held,
    }];
    assert!(matches!(
        store.submit(&r, &e, &d).await.unwrap(),
        SubmitOutcome::Created
    ));
    (r, d[0].id)
}

fn change(r: &Referral, version: i64, e: Event, to: State) -> Change {
    Change {
        referral_id: r.id,
        expected_version: version,
        state: to,
        new_recipient: None,
        at: e.at,
        deliveries: vec![NewDelivery {
            id: uuid::Uuid::now_v7(),
            agency: r.sender.clone(),
            event_id: Some(e.id),
            body: None,
            held: None,
        }],
        event: e,
    }
}

/// The NGO redirects `r`, read at version 1, to `to`: its event to the sender, and the referral
/// itself to the new recipient.
fn redirect(r: &Referral, to: &str) -> Change {
    let mut redirect = change(
        r,
        1,
        event(r, EventKind::Redirected, "mlup-russey", State::Sent, None),
        State::Sent,
    );
    redirect.new_recipient = Some(agency(to));
    redirect.deliveries.push(NewDelivery {
        id: uuid::Uuid::now_v7(),
        agency: agency(to),
        event_id: None,
        body: None,
        held: None,
    });
    redirect
}

/// Runs `task` on `n` tasks at once: each first takes a pooled connection (so the pool is warm) and
/// waits for the others, so that the calls under test overlap instead of queueing on connects.
async fn all_at_once<T, F, Fut>(store: &Arc<dyn Store>, n: usize, task: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (store, start) = (store.clone(), start.clone());
        let work = task(i, store.clone());
        tasks.push(tokio::spawn(async move {
            store.ping().await.unwrap();
            start.wait().await;
            work.await
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results
}

async fn a_submitted_referral_reads_back_byte_for_byte(f: Fixture) {
    let store = f.store.clone();
    let r = submit(&store, "c-1").await;
    let got = store.referral(r.id).await.unwrap().unwrap();
    assert_eq!(got.case_file.as_bytes(), KHMER.as_bytes());
    assert_eq!(got.client_ref, r.client_ref);
    assert_eq!(got.addressee, r.addressee);
    assert_eq!(got.state, State::Sent);
    assert_eq!(got.version, 1);
    assert_eq!(got.fingerprint, r.fingerprint);
    assert_eq!(
        (got.sender, got.recipient),
        (r.sender.clone(), r.recipient.clone())
    );
    assert_eq!(
        got.created_at.unix_timestamp(),
        r.created_at.unix_timestamp()
    );
    let by_ref = store
        .referral_by_client_ref(&r.sender, &r.client_ref)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_ref.id, r.id);
    assert_eq!(by_ref.case_file.as_bytes(), KHMER.as_bytes());
    let history = store.history(r.id).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].note.as_str(), "ជួបគ្រួសារ");
    assert_eq!(history[0].actor_person.as_str(), "សុភា");
    let submitted = store.event(history[0].id).await.unwrap().unwrap();
    assert_eq!(submitted.note.as_str().as_bytes(), "ជួបគ្រួសារ".as_bytes());
    assert_eq!(submitted.referral_id, r.id);
    assert!(store.event(uuid::Uuid::now_v7()).await.unwrap().is_none());
    assert!(
        store
            .has_access(&agency("mlup-russey"), r.id)
            .await
            .unwrap()
    );
    assert!(!store.has_access(&agency("ssc-smhs"), r.id).await.unwrap());
}

async fn a_reused_client_ref_returns_the_existing_referral(f: Fixture) {
    let store = f.store.clone();
    let first = submit(&store, "c-2").await;
    let again = referral("c-2");
    let e = event(&again, EventKind::Submitted, "ahc-swu", State::Sent, None);
    match store.submit(&again, &e, &[]).await.unwrap() {
        SubmitOutcome::Existing(existing) => assert_eq!(existing.id, first.id),
        SubmitOutcome::Created => panic!("a second referral was created"),
    }
    assert!(store.referral(again.id).await.unwrap().is_none());
    assert_eq!(
        store.mailbox(&first.recipient, 0, 10).await.unwrap().len(),
        1
    );
}

async fn a_change_applies_only_to_the_version_it_read(f: Fixture) {
    let store = f.store.clone();
    let r = submit(&store, "c-3").await;
    let e = event(
        &r,
        EventKind::Acknowledged,
        "mlup-russey",
        State::Acknowledged,
        Some("k1"),
    );
    assert!(matches!(
        store
            .apply(&change(&r, 1, e, State::Acknowledged))
            .await
            .unwrap(),
        ChangeOutcome::Recorded
    ));
    let stale = event(
        &r,
        EventKind::Declined,
        "mlup-russey",
        State::Declined,
        Some("k2"),
    );
    let mut stale = change(&r, 1, stale, State::Declined);
    stale.new_recipient = Some(agency("dosvy-24"));
    assert!(matches!(
        store.apply(&stale).await.unwrap(),
        ChangeOutcome::Stale
    ));
    // Nothing of the stale change was written: state, history, deliveries, access.
    let got = store.referral(r.id).await.unwrap().unwrap();
    assert_eq!((got.state, got.version), (State::Acknowledged, 2));
    assert_eq!(got.recipient, agency("mlup-russey"));
    assert_eq!(store.history(r.id).await.unwrap().len(), 2);
    assert_eq!(store.mailbox(&r.sender, 0, 10).await.unwrap().len(), 1);
    assert!(!store.has_access(&agency("dosvy-24"), r.id).await.unwrap());
    assert!(store.event(stale.event.id).await.unwrap().is_none());
    let missing = change(&referral("c-none"), 1, stale.event.clone(), State::Declined);
    assert!(matches!(
        store.apply(&missing).await.unwrap(),
        ChangeOutcome::Stale
    ));
}

async fn a_repeated_request_id_returns_the_first_event(f: Fixture) {
    let store = f.store.clone();
    let r = submit(&store, "c-4").await;
    let first = event(
        &r,
        EventKind::Acknowledged,
        "mlup-russey",
        State::Acknowledged,
        Some("same"),
    );
    store
        .apply(&change(&r, 1, first.clone(), State::Acknowledged))
        .await
        .unwrap();
    let retry = event(
        &r,
        EventKind::Acknowledged,
        "mlup-russey",
        State::Acknowledged,
        Some("same"),
    );
    match store
        .apply(&change(&r, 2, retry, State::Acknowledged))
        .await
        .unwrap()
    {
        ChangeOutcome::Duplicate(done) => assert_eq!(done.id, first.id),
        other => panic!("expected the first event, got {other:?}"),
    }
    // The retry wrote nothing: the version and the sender's mailbox are as the first call left them.
    assert_eq!(store.referral(r.id).await.unwrap().unwrap().version, 2);
    assert_eq!(store.mailbox(&r.sender, 0, 10).await.unwrap().len(), 1);
    let found = store
        .event_by_request(
            &agency("mlup-russey"),
            &RequestId::parse("r", "same").unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, first.id);
    assert_eq!(store.history(r.id).await.unwrap().len(), 2);
}

async fn history_is_ordered_and_append_only(f: Fixture) {
    let store = f.store.clone();
    let r = submit(&store, "c-5").await;
    for (version, (kind, state)) in (1..).zip([
        (EventKind::Acknowledged, State::Acknowledged),
        (EventKind::Accepted, State::Accepted),
        (EventKind::FollowUp, State::Accepted),
    ]) {
        let e = event(&r, kind, "mlup-russey", state, None);
        store.apply(&change(&r, version, e, state)).await.unwrap();
    }
    let kinds: Vec<EventKind> = store
        .history(r.id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::Submitted,
            EventKind::Acknowledged,
            EventKind::Accepted,
            EventKind::FollowUp
        ]
    );
    // Neither backend lets history be rewritten, even by a direct statement.
    let refused = f.raw("UPDATE referral_events SET note = 'changed'").await;
    assert!(refused.is_err(), "an UPDATE of history succeeded");
    let refused = f.raw("DELETE FROM referral_events").await;
    assert!(refused.is_err(), "a DELETE of history succeeded");
    assert_eq!(store.history(r.id).await.unwrap().len(), 4);
}

async fn a_redirect_grants_access_to_the_new_recipient(f: Fixture) {
    let store = f.store.clone();
    let r = submit(&store, "c-6").await;
    let e = event(&r, EventKind::Redirected, "mlup-russey", State::Sent, None);
    let mut c = change(&r, 1, e, State::Sent);
    c.new_recipient = Some(agency("dosvy-24"));
    store.apply(&c).await.unwrap();
    let got = store.referral(r.id).await.unwrap().unwrap();
    assert_eq!(got.recipient, agency("dosvy-24"));
    let parties = store.snapshot(r.id).await.unwrap().unwrap().parties;
    assert_eq!(
        parties,
        [agency("ahc-swu"), agency("dosvy-24"), agency("mlup-russey")]
    );
    // The new recipient gains access; the former one keeps it (to read, not to act); others have none.
    for party in ["ahc-swu", "dosvy-24", "mlup-russey"] {
        assert!(
            store.has_access(&agency(party), r.id).await.unwrap(),
            "{party}"
        );
    }
    assert!(!store.has_access(&agency("ssc-smhs"), r.id).await.unwrap());
    let listed = store
        .list(
            &agency("dosvy-24"),
            &ListQuery {
                role: Some(Role::Recipient),
                states: vec![],
                kind: None,
                limit: 10,
                before: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), [r.id]);
}

async fn listing_filters_and_pages(f: Fixture) {
    let store = f.store.clone();
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(submit(&store, &format!("l-{n}")).await);
    }
    let e = event(
        &ids[0],
        EventKind::Acknowledged,
        "mlup-russey",
        State::Acknowledged,
        None,
    );
    store
        .apply(&change(&ids[0], 1, e, State::Acknowledged))
        .await
        .unwrap();
    let q = |role, states: Vec<State>, limit, before| ListQuery {
        role,
        states,
        kind: None,
        limit,
        before,
    };
    let sender = agency("ahc-swu");
    let all = store
        .list(&sender, &q(Some(Role::Sender), vec![], 10, None))
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[0].id, ids[4].id, "newest first");
    assert!(all[0].case_file.is_empty(), "listing carries no case files");
    let page = store
        .list(&sender, &q(None, vec![], 2, Some(all[1].id)))
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|r| r.id).collect::<Vec<_>>(),
        [all[2].id, all[3].id]
    );
    let acked = store
        .list(
            &agency("mlup-russey"),
            &q(Some(Role::Recipient), vec![State::Acknowledged], 10, None),
        )
        .await
        .unwrap();
    assert_eq!(acked.iter().map(|r| r.id).collect::<Vec<_>>(), [ids[0].id]);
    let either = store
        .list(
            &sender,
            &q(None, vec![State::Sent, State::Acknowledged], 10, None),
        )
        .await
        .unwrap();
    assert_eq!(either.len(), 5);
    let sent = store
        .list(&sender, &q(None, vec![State::Sent], 10, None))
        .await
        .unwrap();
    assert_eq!(sent.len(), 4);
    assert!(sent.iter().all(|r| r.state == State::Sent));
    let outsider = store
        .list(&agency("ssc-smhs"), &q(None, vec![], 10, None))
        .await
        .unwrap();
    assert!(outsider.is_empty(), "an agency sees only its own referrals");
    let lama = ListQuery {
        kind: Some(Code::parse("k", "lama").unwrap()),
        ..q(None, vec![], 10, None)
    };
    assert_eq!(store.list(&sender, &lama).await.unwrap().len(), 5);
    let none = store
        .list(&sender, &q(Some(Role::Recipient), vec![], 10, None))
        .await
        .unwrap();
    assert!(none.is_empty());
    let by_kind = ListQuery {
        kind: Some(Code::parse("k", "placement").unwrap()),
        ..q(None, vec![], 10, None)
    };
    assert!(store.list(&sender, &by_kind).await.unwrap().is_empty());
}

async fn the_mailbox_keeps_order_and_forgets_confirmed_entries(f: Fixture) {
    let store = f.store.clone();
    let a = submit(&store, "m-1").await;
    let b = submit(&store, "m-2").await;
    let ngo = agency("mlup-russey");
    let entries = store.mailbox(&ngo, 0, 10).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.referral_id).collect::<Vec<_>>(),
        [a.id, b.id]
    );
    let after = store.mailbox(&ngo, entries[0].seq, 10).await.unwrap();
    assert_eq!(after.len(), 1);
    let first = entries[0].delivery_id;
    assert!(store.mailbox_entry(&ngo, first).await.unwrap().is_some());
    assert!(
        store
            .mailbox_entry(&agency("ahc-swu"), first)
            .await
            .unwrap()
            .is_none()
    );
    // Only the agency a row is for can settle it; settling twice settles nothing more.
    assert_eq!(store.settle(&agency("ahc-swu"), &[first]).await.unwrap(), 0);
    assert_eq!(store.settle(&ngo, &[first]).await.unwrap(), 1);
    assert_eq!(store.settle(&ngo, &[first]).await.unwrap(), 0);
    assert_eq!(store.mailbox(&ngo, 0, 10).await.unwrap().len(), 1);
    let c = submit(&store, "m-3").await;
    let rest: Vec<_> = store
        .mailbox(&ngo, 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.delivery_id)
        .collect();
    assert_eq!(rest.len(), 2);
    assert_eq!(store.settle(&ngo, &rest).await.unwrap(), 2);
    assert!(store.mailbox(&ngo, 0, 10).await.unwrap().is_empty());
    assert!(store.referral(c.id).await.unwrap().is_some());
}

async fn deliveries_load_in_batches_with_their_histories(f: Fixture) {
    let store = f.store.clone();
    let a = submit(&store, "b-1").await;
    let b = submit(&store, "b-2").await;
    let ack = event(
        &a,
        EventKind::Acknowledged,
        "mlup-russey",
        State::Acknowledged,
        None,
    );
    let ack_id = ack.id;
    assert!(matches!(
        store
            .apply(&change(&a, 1, ack, State::Acknowledged))
            .await
            .unwrap(),
        ChangeOutcome::Recorded
    ));
    let loaded = store
        .referrals_with_history(&[a.id, b.id, ReferralId::new()])
        .await
        .unwrap();
    assert_eq!(loaded.len(), 2, "unknown ids are left out");
    let (got_a, history_a) = loaded.iter().find(|(r, _)| r.id == a.id).unwrap();
    assert_eq!(got_a.case_file.as_bytes(), KHMER.as_bytes());
    assert_eq!(got_a.state, State::Acknowledged);
    assert_eq!(
        history_a.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::Submitted, EventKind::Acknowledged]
    );
    let (_, history_b) = loaded.iter().find(|(r, _)| r.id == b.id).unwrap();
    assert_eq!(history_b.len(), 1);
    assert_eq!(history_b[0].referral_id, b.id);
    let submitted_b = history_b[0].id;
    let events = store
        .events(&[ack_id, submitted_b, uuid::Uuid::now_v7()])
        .await
        .unwrap();
    let mut ids: Vec<_> = events.iter().map(|e| e.id).collect();
    ids.sort();
    let mut want = vec![ack_id, submitted_b];
    want.sort();
    assert_eq!(ids, want);
    assert!(store.referrals_with_history(&[]).await.unwrap().is_empty());
    assert!(store.events(&[]).await.unwrap().is_empty());
}

async fn a_snapshot_holds_the_referral_its_parties_and_its_history(f: Fixture) {
    let store = f.store.clone();
    let r = submit(&store, "s-1").await;
    let ack = event(
        &r,
        EventKind::Acknowledged,
        "mlup-russey",
        State::Acknowledged,
        None,
    );
    store
        .apply(&change(&r, 1, ack, State::Acknowledged))
        .await
        .unwrap();
    let snapshot = store.snapshot(r.id).await.unwrap().unwrap();
    assert_eq!(snapshot.referral.id, r.id);
    assert_eq!(snapshot.referral.state, State::Acknowledged);
    assert_eq!(snapshot.referral.version, 2);
    assert!(
        snapshot.referral.case_file.is_empty(),
        "a snapshot is for decisions; it carries no case file"
    );
    assert_eq!(snapshot.parties, [agency("ahc-swu"), agency("mlup-russey")]);
    assert_eq!(
        snapshot.history,
        [EventKind::Submitted, EventKind::Acknowledged]
    );
    assert!(store.snapshot(ReferralId::new()).await.unwrap().is_none());
}

/// Writes that run together (the embedded store commits concurrent writes in one transaction) stay
/// independent: one that fails half-way leaves nothing of itself and takes nothing of the others.
async fn a_failed_write_leaves_nothing_and_spares_the_writes_beside_it(f: Fixture) {
    let store = f.store.clone();
    let broken = submit(&store, "w-broken").await;
    let fine = submit(&store, "w-fine").await;
    // An event id that already exists: the state update succeeds, then the event insert fails.
    let taken = store.history(broken.id).await.unwrap()[0].id;
    let results = all_at_once(&store, 6, |n, store| {
        let (broken, fine) = (broken.clone(), fine.clone());
        async move {
            match n {
                0 => {
                    let mut e = event(
                        &broken,
                        EventKind::Acknowledged,
                        "mlup-russey",
                        State::Acknowledged,
                        None,
                    );
                    e.id = taken;
                    store
                        .apply(&change(&broken, 1, e, State::Acknowledged))
                        .await
                        .is_ok()
                }
                1 => {
                    let e = event(
                        &fine,
                        EventKind::Acknowledged,
                        "mlup-russey",
                        State::Acknowledged,
                        None,
                    );
                    matches!(
                        store
                            .apply(&change(&fine, 1, e, State::Acknowledged))
                            .await
                            .unwrap(),
                        ChangeOutcome::Recorded
                    )
                }
                n => {
                    let r = referral(&format!("w-new-{n}"));
                    let e = event(&r, EventKind::Submitted, "ahc-swu", State::Sent, None);
                    let d = [NewDelivery {
                        id: uuid::Uuid::now_v7(),
                        agency: r.recipient.clone(),
                        event_id: None,
                        body: None,
                        held: None,
                    }];
                    matches!(
                        store.submit(&r, &e, &d).await.unwrap(),
                        SubmitOutcome::Created
                    )
                }
            }
        }
    })
    .await;
    assert_eq!(results, [false, true, true, true, true, true]);
    let after = store.referral(broken.id).await.unwrap().unwrap();
    assert_eq!((after.state, after.version), (State::Sent, 1));
    assert_eq!(store.history(broken.id).await.unwrap().len(), 1);
    assert_eq!(store.referral(fine.id).await.unwrap().unwrap().version, 2);
    // broken and fine's submits, fine's acknowledgement to its sender, four new referrals.
    let ngo = store.mailbox(&agency("mlup-russey"), 0, 100).await.unwrap();
    let hospital = store.mailbox(&agency("ahc-swu"), 0, 100).await.unwrap();
    assert_eq!((ngo.len(), hospital.len()), (6, 1));
}

async fn outbox_leases_hand_each_row_to_one_relay(f: Fixture) {
    let store = f.store.clone();
    for n in 0..5 {
        submit(&store, &format!("o-{n}")).await;
    }
    let lease = Duration::from_secs(30);
    let first = store.lease_outbox(3, lease).await.unwrap();
    let second = store.lease_outbox(10, lease).await.unwrap();
    assert_eq!((first.len(), second.len()), (3, 2));
    assert!(first.iter().all(|a| second.iter().all(|b| a.seq != b.seq)));
    assert!(store.lease_outbox(10, lease).await.unwrap().is_empty());
    store
        .remove_published(&first.iter().map(|e| e.delivery_id).collect::<Vec<_>>())
        .await
        .unwrap();
    // Published rows are gone; the two still leased stay in the mailbox.
    assert_eq!(
        store
            .mailbox(&agency("mlup-russey"), 0, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    // An expired lease hands a row out again: the relay that held it died.
    let fresh = submit(&store, "o-late").await;
    let brief = store
        .lease_outbox(10, Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(
        brief.iter().map(|e| e.referral_id).collect::<Vec<_>>(),
        [fresh.id]
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = store.lease_outbox(10, lease).await.unwrap();
    assert_eq!(
        again.iter().map(|e| e.referral_id).collect::<Vec<_>>(),
        [fresh.id]
    );
}

/// A delivery written held stays out of every relay's lease until its hold runs out: the broker
/// that wrote it publishes it itself (the relay's handoff), and deletes its row by delivery id once
/// RabbitMQ confirmed it. One written without a hold is leased at once. Submits, a change alone and
/// changes in a batch all write the hold.
async fn held_deliveries_stay_out_of_leases_until_their_hold_runs_out(f: Fixture) {
    let store = f.store.clone();
    let (long, short) = (Duration::from_secs(60), Duration::from_millis(150));
    let (a, a_sent) = submit_with(&store, "h-a", None, Some(long)).await;
    let (b, b_sent) = submit_with(&store, "h-b", None, None).await;
    let (c, c_sent) = submit_with(&store, "h-c", None, Some(short)).await;
    let lease = Duration::from_secs(30);
    let ids = |entries: Vec<MailboxEntry>| -> Vec<uuid::Uuid> {
        entries.iter().map(|e| e.delivery_id).collect()
    };
    assert_eq!(ids(store.lease_outbox(10, lease).await.unwrap()), [b_sent]);

    let acknowledged = |r: &Referral| {
        let mut ack = change(
            r,
            1,
            event(
                r,
                EventKind::Acknowledged,
                "mlup-russey",
                State::Acknowledged,
                None,
            ),
            State::Acknowledged,
        );
        ack.deliveries[0].held = Some(long);
        ack
    };
    assert!(matches!(
        store.apply(&acknowledged(&a)).await.unwrap(),
        ChangeOutcome::Recorded
    ));
    let together = store
        .apply_all(&[acknowledged(&b), acknowledged(&c)])
        .await
        .unwrap();
    assert!(
        together
            .iter()
            .all(|o| matches!(o, ChangeOutcome::Recorded))
    );
    assert!(store.lease_outbox(10, lease).await.unwrap().is_empty());
    let hospital = store.mailbox(&agency("ahc-swu"), 0, 10).await.unwrap();
    assert_eq!(
        hospital.len(),
        3,
        "held rows are in the mailbox all the same"
    );

    // `a` was handed off and published: its row goes, by delivery id.
    store.remove_published(&[a_sent]).await.unwrap();
    let ngo = ids(store.mailbox(&agency("mlup-russey"), 0, 10).await.unwrap());
    assert_eq!(ngo, [b_sent, c_sent]);
    // `c`'s hand-off did not happen: once its hold runs out, a relay leases it; the rest stay held.
    tokio::time::sleep(short * 2).await;
    assert_eq!(ids(store.lease_outbox(10, lease).await.unwrap()), [c_sent]);
}

async fn the_directory_round_trips_and_versions(f: Fixture) {
    let store = f.store.clone();
    assert!(store.directory().await.unwrap().is_none());
    let dir = Directory::from_json(include_bytes!("../../../fixtures/network.json")).unwrap();
    assert_eq!(store.import_directory(&dir).await.unwrap(), 1);
    assert_eq!(store.import_directory(&dir).await.unwrap(), 2);
    let (got, version) = store.directory().await.unwrap().unwrap();
    assert_eq!(version, 2);
    assert_eq!(got.agencies.len(), dir.agencies.len());
    let pailin = got.provinces.iter().find(|p| p.code == "24").unwrap();
    assert_eq!(pailin.name_km, "ប៉ៃលិន");
}

async fn concurrent_changes_on_one_version_record_exactly_one(f: Fixture) {
    let store = f.store.clone();
    let r = submit(&store, "race").await;
    let outcomes = all_at_once(&store, 8, |n, store| {
        let e = event(
            &r,
            EventKind::Acknowledged,
            "mlup-russey",
            State::Acknowledged,
            Some(&format!("race-{n}")),
        );
        let c = change(&r, 1, e, State::Acknowledged);
        async move { store.apply(&c).await.unwrap() }
    })
    .await;
    let recorded = outcomes
        .iter()
        .filter(|o| matches!(o, ChangeOutcome::Recorded))
        .count();
    let stale = outcomes
        .iter()
        .filter(|o| matches!(o, ChangeOutcome::Stale))
        .count();
    assert_eq!((recorded, stale), (1, 7));
    assert_eq!(store.history(r.id).await.unwrap().len(), 2);
    assert_eq!(store.referral(r.id).await.unwrap().unwrap().version, 2);
}

async fn concurrent_retries_of_one_request_record_it_once(f: Fixture) {
    let store = f.store.clone();
    let r = submit(&store, "retry").await;
    let outcomes = all_at_once(&store, 8, |_, store| {
        let e = event(
            &r,
            EventKind::Acknowledged,
            "mlup-russey",
            State::Acknowledged,
            Some("one-request"),
        );
        let c = change(&r, 1, e, State::Acknowledged);
        async move { (c.event.id, store.apply(&c).await.unwrap()) }
    })
    .await;
    let mut recorded = Vec::new();
    let mut replayed = Vec::new();
    for (id, outcome) in outcomes {
        match outcome {
            ChangeOutcome::Recorded => recorded.push(id),
            ChangeOutcome::Duplicate(done) => replayed.push(done.id),
            ChangeOutcome::Stale => panic!("a retry of a recorded request was called stale"),
        }
    }
    assert_eq!(recorded.len(), 1);
    assert!(replayed.iter().all(|id| *id == recorded[0]));
    let history = store.history(r.id).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].id, recorded[0]);
}

async fn concurrent_submits_of_one_client_ref_create_one_referral(f: Fixture) {
    let store = f.store.clone();
    let outcomes = all_at_once(&store, 8, |_, store| {
        let r = referral("same-client");
        let e = event(&r, EventKind::Submitted, "ahc-swu", State::Sent, None);
        let d = [NewDelivery {
            id: uuid::Uuid::now_v7(),
            agency: r.recipient.clone(),
            event_id: None,
            body: None,
            held: None,
        }];
        async move { (r.id, store.submit(&r, &e, &d).await.unwrap()) }
    })
    .await;
    let mut created = Vec::new();
    let mut existing = Vec::new();
    for (id, outcome) in outcomes {
        match outcome {
            SubmitOutcome::Created => created.push(id),
            SubmitOutcome::Existing(r) => existing.push(r.id),
        }
    }
    assert_eq!(created.len(), 1);
    assert_eq!(existing.len(), 7);
    assert!(existing.iter().all(|id| *id == created[0]));
    if let Some(batches) = f.batches() {
        // The submits that met in one batch settled their shared client_ref inside it.
        assert!(batches.written >= 1 && batches.refused == 0, "{batches:?}");
    }
    assert_eq!(
        store
            .mailbox(&agency("mlup-russey"), 0, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.history(created[0]).await.unwrap().len(), 1);
}

/// `apply_all` gives each change the outcome `apply` would: the stale one is written nowhere, a
/// redirect grants access, a repeated request id returns its first event; and `snapshots` reads the
/// referrals those changes are decided on.
async fn changes_applied_together_each_apply_to_the_version_they_read(f: Fixture) {
    let store = f.store.clone();
    let (a, b, c) = (
        submit(&store, "m-a").await,
        submit(&store, "m-b").await,
        submit(&store, "m-c").await,
    );
    let acked = event(
        &b,
        EventKind::Acknowledged,
        "mlup-russey",
        State::Acknowledged,
        Some("k1"),
    );
    store
        .apply(&change(&b, 1, acked.clone(), State::Acknowledged))
        .await
        .unwrap();
    let mut snapshots = store
        .snapshots(&[a.id, b.id, ReferralId::new()])
        .await
        .unwrap();
    snapshots.sort_by_key(|s| s.referral.id);
    let mut want = vec![(a.id, 1, 1), (b.id, 2, 2)];
    want.sort();
    let got: Vec<_> = snapshots
        .iter()
        .map(|s| (s.referral.id, s.referral.version, s.history.len()))
        .collect();
    assert_eq!(got, want);
    assert!(store.snapshots(&[]).await.unwrap().is_empty());

    let delivered = |r: &Referral, version| {
        let e = event(
            r,
            EventKind::Delivered,
            "mlup-russey",
            State::Delivered,
            None,
        );
        change(r, version, e, State::Delivered)
    };
    let stale = delivered(&b, 1);
    let changes = [delivered(&a, 1), stale.clone(), redirect(&c, "dosvy-24")];
    let outcomes = store.apply_all(&changes).await.unwrap();
    assert!(
        matches!(
            outcomes[..],
            [
                ChangeOutcome::Recorded,
                ChangeOutcome::Stale,
                ChangeOutcome::Recorded
            ]
        ),
        "{outcomes:?}"
    );
    if let Some(batches) = f.batches() {
        // Written as one batch, not change by change.
        assert_eq!(
            batches,
            BatchCounts {
                written: 1,
                refused: 0
            }
        );
    }
    let got = store.referral(a.id).await.unwrap().unwrap();
    assert_eq!((got.state, got.version), (State::Delivered, 2));
    assert_eq!(
        store.history(a.id).await.unwrap()[1].id,
        changes[0].event.id
    );
    // Nothing of the stale change was written.
    let got = store.referral(b.id).await.unwrap().unwrap();
    assert_eq!((got.state, got.version), (State::Acknowledged, 2));
    assert!(store.event(stale.event.id).await.unwrap().is_none());
    // The redirect moved the referral, granted access and queued it for the new recipient.
    let got = store.referral(c.id).await.unwrap().unwrap();
    assert_eq!((got.recipient, got.version), (agency("dosvy-24"), 2));
    assert!(store.has_access(&agency("dosvy-24"), c.id).await.unwrap());
    let queued = store.mailbox(&agency("dosvy-24"), 0, 10).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!((queued[0].referral_id, queued[0].event_id), (c.id, None));
    // Each applied change queued its event for the sender: a's and c's, not b's stale one.
    let events: Vec<_> = store
        .mailbox(&a.sender, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| m.event_id)
        .collect();
    assert!(events.contains(&changes[0].event.id) && events.contains(&changes[2].event.id));
    assert!(!events.contains(&stale.event.id));

    // A request id used before returns its first event, beside a change that applies.
    let again = change(&b, 2, acked.clone(), State::Acknowledged);
    let outcomes = store.apply_all(&[again, delivered(&a, 2)]).await.unwrap();
    assert!(
        matches!(&outcomes[..], [ChangeOutcome::Duplicate(e), ChangeOutcome::Recorded] if e.id == acked.id),
        "{outcomes:?}"
    );
    assert!(store.apply_all(&[]).await.unwrap().is_empty());
}

/// A `delivered` event for `r` that the store must refuse: its id is that of `r`'s first event.
async fn refused_event(store: &Arc<dyn Store>, r: &Referral) -> Event {
    let mut bad = event(
        r,
        EventKind::Delivered,
        "mlup-russey",
        State::Delivered,
        None,
    );
    bad.id = store.history(r.id).await.unwrap()[0].id;
    bad
}

/// Two referrals and a change for each, to apply together: a `delivered` on `fine` (its event
/// returned, with `request` as its request id) and one the store must refuse on `broken`.
async fn a_good_change_and_a_refused_one(
    store: &Arc<dyn Store>,
    fine: &str,
    request: Option<&str>,
) -> (Referral, Referral, Event, Vec<Change>) {
    let fine = submit(store, fine).await;
    let broken = submit(store, "r-broken").await;
    let bad = refused_event(store, &broken).await;
    let good = event(
        &fine,
        EventKind::Delivered,
        "mlup-russey",
        State::Delivered,
        request,
    );
    let changes = vec![
        change(&fine, 1, good.clone(), State::Delivered),
        change(&broken, 1, bad, State::Delivered),
    ];
    (fine, broken, good, changes)
}

/// A change that cannot be written (its event id is taken) fails without a trace of itself, and
/// whatever else was applied with it is whole or absent, never half-written.
async fn a_refused_change_among_others_leaves_nothing_of_itself(f: Fixture) {
    let store = f.store.clone();
    let (fine, broken, good, changes) =
        a_good_change_and_a_refused_one(&store, "r-fine", None).await;
    let result = store.apply_all(&changes).await;
    assert!(result.is_err(), "{result:?}");
    if let Some(batches) = f.batches() {
        assert_eq!(
            batches.refused, 1,
            "the batch failed whole, then change by change"
        );
    }
    let got = store.referral(broken.id).await.unwrap().unwrap();
    assert_eq!((got.state, got.version), (State::Sent, 1));
    assert_eq!(store.history(broken.id).await.unwrap().len(), 1);
    let got = store.referral(fine.id).await.unwrap().unwrap();
    let history = store.history(fine.id).await.unwrap();
    let recorded = store.event(good.id).await.unwrap().is_some();
    assert_eq!(
        (got.version, history.len()),
        if recorded { (2, 2) } else { (1, 1) }
    );
}

/// After an error, `apply_all` returns only once every other change of the call is decided, so
/// that what a caller reads next is what was recorded. It used to return at the first error and
/// drop the others mid-flight, whose statements could still commit afterwards: the caller then
/// saw a referral at its old version beside the event of its new one. On PostgreSQL a row lock
/// holds one change back for as long as the test wants, while the other fails at once.
#[tokio::test]
async fn on_postgres_apply_all_returns_after_an_error_only_once_every_change_is_decided() {
    let f = postgres().await;
    let RawPool::Postgres(pool) = &f.pool else {
        unreachable!("a PostgreSQL fixture")
    };
    let store = f.store.clone();
    // A request id keeps the two out of one batch statement: each is applied alone, side by side.
    let (fine, broken, good, changes) =
        a_good_change_and_a_refused_one(&store, "r-held-back", Some("held-back-1")).await;

    let mut lock = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM referrals WHERE id = $1::text::uuid FOR UPDATE")
        .bind(fine.id.to_string())
        .execute(&mut *lock)
        .await
        .unwrap();
    let applying = tokio::spawn({
        let store = store.clone();
        async move { store.apply_all(&changes).await }
    });
    // The broken change fails at once; the other waits for the lock.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !applying.is_finished(),
        "apply_all returned while one of its changes was still on its way"
    );
    lock.commit().await.unwrap();
    let result = applying.await.unwrap();
    assert!(result.is_err(), "{result:?}");

    let got = store.referral(fine.id).await.unwrap().unwrap();
    let history = store.history(fine.id).await.unwrap();
    assert_eq!(
        (got.state, got.version, history.len()),
        (State::Delivered, 2, 2)
    );
    assert!(history.iter().any(|e| e.id == good.id));
    let got = store.referral(broken.id).await.unwrap().unwrap();
    assert_eq!(
        (got.version, store.history(broken.id).await.unwrap().len()),
        (1, 1)
    );
}

/// Two batches on the same referrals, in opposite orders, at once (two streams of one agency, say):
/// every referral takes exactly one of the two changes made on its version, and neither batch fails.
async fn crossing_batches_of_changes_record_each_change_once(f: Fixture) {
    let store = f.store.clone();
    let mut referrals = Vec::new();
    for i in 0..6 {
        referrals.push(submit(&store, &format!("x-{i}")).await);
    }
    let referrals = Arc::new(referrals);
    let results = all_at_once(&store, 2, |n, store| {
        let referrals = referrals.clone();
        async move {
            let mut changes: Vec<Change> = referrals
                .iter()
                .map(|r| {
                    let e = event(
                        r,
                        EventKind::Delivered,
                        "mlup-russey",
                        State::Delivered,
                        None,
                    );
                    change(r, 1, e, State::Delivered)
                })
                .collect();
            if n == 1 {
                changes.reverse();
            }
            store.apply_all(&changes).await.unwrap()
        }
    })
    .await;
    let recorded = results
        .iter()
        .flatten()
        .filter(|o| matches!(o, ChangeOutcome::Recorded))
        .count();
    assert_eq!(recorded, referrals.len(), "{results:?}");
    if let Some(batches) = f.batches() {
        assert_eq!(batches.written + batches.refused, 2, "{batches:?}");
    }
    for r in referrals.iter() {
        let history = store.history(r.id).await.unwrap();
        assert_eq!(history.len(), 2, "one change of the two recorded");
        assert_eq!(store.referral(r.id).await.unwrap().unwrap().version, 2);
    }
}

/// Submits that arrive together (PostgreSQL writes them in one statement) each come back created,
/// whole: the referral byte for byte, its first event, its access and its delivery.
async fn submits_made_at_once_are_each_written_whole(f: Fixture) {
    let store = f.store.clone();
    let outcomes = all_at_once(&store, 24, |i, store| {
        let mut r = referral(&format!("together-{i}"));
        if i % 2 == 0 {
            r.addressee = Addressee::Agency(agency("mlup-russey"));
        }
        r.case_file = SealedCaseFile::new(format!("{KHMER} {i}").into_bytes());
        let e = event(&r, EventKind::Submitted, "ahc-swu", State::Sent, None);
        let d = [NewDelivery {
            id: uuid::Uuid::now_v7(),
            agency: r.recipient.clone(),
            event_id: None,
            body: None,
            held: None,
        }];
        async move {
            let outcome = store.submit(&r, &e, &d).await.unwrap();
            (r, e, outcome)
        }
    })
    .await;
    if let Some(batches) = f.batches() {
        assert!(batches.written >= 1 && batches.refused == 0, "{batches:?}");
    }
    let mut queued: Vec<_> = store
        .mailbox(&agency("mlup-russey"), 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.referral_id, m.event_id))
        .collect();
    queued.sort();
    let mut want = Vec::new();
    for (r, e, outcome) in outcomes {
        assert!(matches!(outcome, SubmitOutcome::Created), "{outcome:?}");
        let got = store.referral(r.id).await.unwrap().unwrap();
        assert_eq!(got.case_file.as_bytes(), r.case_file.as_bytes());
        assert_eq!(got.addressee, r.addressee);
        assert_eq!(got.client_ref, r.client_ref);
        let history = store.history(r.id).await.unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(
            (history[0].id, history[0].note.as_str()),
            (e.id, e.note.as_str())
        );
        assert!(store.has_access(&r.sender, r.id).await.unwrap());
        assert!(store.has_access(&r.recipient, r.id).await.unwrap());
        want.push((r.id, None));
    }
    want.sort();
    assert_eq!(queued, want);
}

/// What a delivery stream does with confirmations that arrive together: `delivered` is recorded once
/// for each referral the agency received, in one batch on PostgreSQL, and nothing is recorded for a
/// referral it is not the recipient of, one whose delivery is already recorded, or an event.
async fn confirmations_that_arrive_together_record_each_delivery_once(f: Fixture) {
    use spean_broker::delivery::Dispatch;
    use spean_broker::store::DeliveryRef;
    use spean_broker::workflow::{Limits, Workflow};

    let store = f.store.clone();
    let workflow = Workflow::new(
        store.clone(),
        Arc::new(Dispatch::default()),
        Limits {
            max_case_file_bytes: 1 << 20,
        },
    )
    .await
    .unwrap();
    let (fresh, other, done) = (
        submit(&store, "g-fresh").await,
        submit(&store, "g-other").await,
        submit(&store, "g-done").await,
    );
    let elsewhere = {
        let mut r = referral("g-elsewhere");
        r.recipient = agency("dosvy-24");
        let e = event(&r, EventKind::Submitted, "ahc-swu", State::Sent, None);
        store.submit(&r, &e, &[]).await.unwrap();
        r
    };
    let recorded = event(
        &done,
        EventKind::Delivered,
        "mlup-russey",
        State::Delivered,
        None,
    );
    store
        .apply(&change(&done, 1, recorded, State::Delivered))
        .await
        .unwrap();
    let before = f.batches();
    let delivery = |r: &Referral, event_id| DeliveryRef {
        delivery_id: uuid::Uuid::now_v7(),
        referral_id: r.id,
        event_id,
    };
    let submitted = store.history(other.id).await.unwrap()[0].id;
    let together = [
        delivery(&fresh, None),
        delivery(&other, None),
        // The same referral again (a redelivery confirmed beside the first), and an event.
        delivery(&fresh, None),
        delivery(&other, Some(submitted)),
        delivery(&done, None),
        delivery(&elsewhere, None),
    ];
    workflow
        .confirmed(&agency("mlup-russey"), &together)
        .await
        .unwrap();
    let delivered = |history: Vec<Event>| {
        history
            .iter()
            .filter(|e| e.kind == EventKind::Delivered)
            .count()
    };
    for r in [&fresh, &other, &done] {
        assert_eq!(delivered(store.history(r.id).await.unwrap()), 1);
        let got = store.referral(r.id).await.unwrap().unwrap();
        assert_eq!((got.state, got.version), (State::Delivered, 2));
    }
    assert_eq!(delivered(store.history(elsewhere.id).await.unwrap()), 0);
    if let (Some(before), Some(after)) = (before, f.batches()) {
        // `fresh` and `other` went in one statement; the rest was decided without a write.
        assert_eq!(after.written - before.written, 1, "{after:?}");
        assert_eq!(after.refused, before.refused);
    }
    // Confirmed again (the adapter's retry after a lost stream): nothing more is recorded.
    workflow
        .confirmed(&agency("mlup-russey"), &together)
        .await
        .unwrap();
    for r in [&fresh, &other, &done] {
        assert_eq!(delivered(store.history(r.id).await.unwrap()), 1);
    }
}

/// A store that carries deliveries hands each row's body back with its lease, so the relay
/// publishes it without loading it. A redirect, applied alone or in a batch, clears the body of
/// the referral still queued for the former recipient: loaded at publish time, it goes without its
/// case file. A store that does not carry them leases every row without a body.
async fn carried_deliveries_come_back_with_their_lease_but_not_to_a_former_recipient(f: Fixture) {
    let store = f.store.clone();
    let submit_carried = |client_ref: &'static str| {
        let body = format!("referral {client_ref}").into_bytes();
        let store = store.clone();
        async move { submit_with(&store, client_ref, Some(body), None).await.0 }
    };
    let (a, b, c) = (
        submit_carried("k-a").await,
        submit_carried("k-b").await,
        submit_carried("k-c").await,
    );
    assert!(matches!(
        store.apply(&redirect(&b, "dosvy-24")).await.unwrap(),
        ChangeOutcome::Recorded
    ));
    let mut acked = change(
        &a,
        1,
        event(
            &a,
            EventKind::Acknowledged,
            "mlup-russey",
            State::Acknowledged,
            None,
        ),
        State::Acknowledged,
    );
    acked.deliveries[0].body = Some("acknowledged".as_bytes().to_vec());
    let outcomes = store
        .apply_all(&[acked.clone(), redirect(&c, "dosvy-24")])
        .await
        .unwrap();
    assert!(
        matches!(
            outcomes[..],
            [ChangeOutcome::Recorded, ChangeOutcome::Recorded]
        ),
        "{outcomes:?}"
    );
    if let Some(batches) = f.batches() {
        assert_eq!(batches.written, 1, "the redirect went through the batch");
    }

    let leased = store
        .lease_outbox(100, Duration::from_secs(30))
        .await
        .unwrap();
    let body = |who: &str, r: &Referral, event: Option<uuid::Uuid>| {
        let found: Vec<_> = leased
            .iter()
            .filter(|e| e.agency == agency(who) && e.referral_id == r.id && e.event_id == event)
            .collect();
        assert_eq!(found.len(), 1, "{who} {event:?}");
        found[0]
            .carried
            .as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let carries = store.carries_deliveries();
    let expect = |text: &str| carries.then(|| text.to_owned());
    assert_eq!(body("mlup-russey", &a, None), expect("referral k-a"));
    assert_eq!(
        body("ahc-swu", &a, Some(acked.event.id)),
        expect("acknowledged")
    );
    for r in [&b, &c] {
        assert_eq!(
            body("mlup-russey", r, None),
            None,
            "the former recipient's queued referral keeps its body"
        );
        assert_eq!(body("dosvy-24", r, None), None);
    }
}

/// Published rows are deleted, but on PostgreSQL they stay in the table until a vacuum, and the
/// relay's lease walks past every one of them. Tidying clears them out: with every row published,
/// the table is empty again, down to its last page. Rows not yet published stay, and are leased.
async fn tidying_the_outbox_clears_out_published_rows_and_keeps_the_rest(f: Fixture) {
    let store = f.store.clone();
    for n in 0..200 {
        submit(&store, &format!("t-{n}")).await;
    }
    let lease = Duration::from_secs(30);
    let published: Vec<uuid::Uuid> = store
        .lease_outbox(500, lease)
        .await
        .unwrap()
        .iter()
        .map(|e| e.delivery_id)
        .collect();
    assert_eq!(published.len(), 200);
    store.remove_published(&published).await.unwrap();
    let size = |pool: &sqlx::PgPool| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT pg_relation_size('mailbox')")
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    if let Some(pg) = &f.pg {
        assert!(
            size(pg.pool()).await > 0,
            "deleted rows stay until a vacuum"
        );
    }
    store.tidy_outbox().await.unwrap();
    if let Some(pg) = &f.pg {
        assert_eq!(
            size(pg.pool()).await,
            0,
            "the deleted rows were cleared out"
        );
    }

    let fresh = submit(&store, "t-late").await;
    store.tidy_outbox().await.unwrap();
    let leased = store.lease_outbox(10, lease).await.unwrap();
    assert_eq!(
        leased.iter().map(|e| e.referral_id).collect::<Vec<_>>(),
        [fresh.id]
    );
}
