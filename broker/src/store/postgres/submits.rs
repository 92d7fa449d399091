//! Submits written together. PostgreSQL's work per statement (a round trip, binding, starting the
//! executor, a commit and its WAL flush) is larger than its work per inserted row, and under load
//! many agencies submit at once. So each submit waits in a queue, and a few writers each take
//! whatever is waiting, up to [`MAX_BATCH`], and insert it in one statement. Nothing waits for a
//! batch to fill: a submit that finds a writer idle is written at once, alone, in a statement of
//! its own.
//!
//! A batch is one transaction, and each submit in it still gets its own outcome: created, or the
//! existing referral its `client_ref` names. If the database refuses the batch (two batches that
//! insert the same `client_ref`s in opposite orders can deadlock), its submits are written one by
//! one, so one submit's failure never becomes another's.

use std::collections::HashSet;
use std::sync::Arc;

use sqlx::postgres::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::columns::{
    DeliveryColumns, EventColumns, GRANT_ROLE, INSERT_EVENT, INSERT_REFERRAL, Sql, bind_deliveries,
    bind_event, bind_events, bind_referral, event_details, queue_deliveries,
};
use super::referrals::by_client_ref;
use super::{Batches, audit};
use crate::error::StoreError;
use crate::ids::ReferralId;
use crate::referral::{Event, Referral};
use crate::store::{NewDelivery, SubmitOutcome, micros, rows};

/// Writers taking batches from the queue: a quarter of the pool, so reads and changes keep theirs.
const WRITERS: usize = 4;
/// The most submits in one statement. Case files are at most a few hundred KiB, so a batch's
/// parameters stay far below PostgreSQL's 1 GiB message limit.
const MAX_BATCH: usize = 64;

/// One submit, owned, as it waits in the queue.
pub(super) struct Submission {
    pub referral: Referral,
    pub event: Event,
    pub deliveries: Vec<NewDelivery>,
    /// The acknowledgement deadline to write with the referral, if any.
    pub deadline: Option<time::OffsetDateTime>,
}

type Reply = oneshot::Sender<Result<SubmitOutcome, StoreError>>;
type Queue = Arc<Mutex<mpsc::Receiver<(Submission, Reply)>>>;

/// The queue's sending end; the writers stop once every clone of it is dropped.
#[derive(Debug, Clone)]
pub(super) struct Submits {
    queue: mpsc::Sender<(Submission, Reply)>,
}

impl Submits {
    /// Starts the writers on the current runtime.
    pub fn start(pool: &PgPool, batches: Arc<Batches>) -> Self {
        let (queue, waiting) = mpsc::channel(WRITERS * MAX_BATCH);
        let waiting: Queue = Arc::new(Mutex::new(waiting));
        for _ in 0..WRITERS {
            tokio::spawn(write(pool.clone(), waiting.clone(), batches.clone()));
        }
        Self { queue }
    }

    /// Queues the submit and waits for its outcome. Once queued it is written even if the caller
    /// stops waiting, so a cancelled call leaves a whole referral or none, never part of one.
    pub async fn submit(&self, submission: Submission) -> Result<SubmitOutcome, StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send((submission, reply))
            .await
            .map_err(|_| StoreError::Stopped)?;
        outcome.await.map_err(|_| StoreError::Stopped)?
    }
}

/// A writer: takes what is waiting, writes it, answers each submit.
async fn write(pool: PgPool, waiting: Queue, batches: Arc<Batches>) {
    loop {
        let mut batch = {
            let mut waiting = waiting.lock().await;
            let Some(first) = waiting.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH
                && let Ok(next) = waiting.try_recv()
            {
                batch.push(next);
            }
            batch
        };
        if let [(submission, _)] = &batch[..] {
            let outcome = submit_one(&pool, submission).await;
            if let Some((_, reply)) = batch.pop() {
                let _ = reply.send(outcome);
            }
            continue;
        }
        let inserted = insert_batch(&pool, &batch).await;
        batches.count(inserted.is_ok());
        match inserted {
            Ok(created) => {
                for (submission, reply) in batch {
                    let outcome = if created.contains(&submission.referral.id) {
                        Ok(SubmitOutcome::Created)
                    } else {
                        existing(&pool, &submission.referral).await
                    };
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, submits = batch.len(), "a batch of submits was refused; writing them one by one");
                futures::future::join_all(batch.into_iter().map(|(submission, reply)| {
                    let pool = &pool;
                    async move {
                        let _ = reply.send(submit_one(pool, &submission).await);
                    }
                }))
                .await;
            }
        }
    }
}

/// One submit: the referral (unless its `client_ref` is taken), its access (`$30` agencies, each
/// with its role in `$39`), first event, deliveries, each insert fed by the referral's
/// `RETURNING`, its acknowledgement deadline (`$37`, NULL for none) and its addressing (`$38`) in
/// its own row, and its audit entry (`$40`…), so there is one round trip and one commit. A concurrent submit of the same `client_ref` makes the insert wait for it, then insert
/// nothing; the existing referral is read back.
static SUBMIT: Sql = Sql::new(|| {
    format!(
        "WITH r AS ( \
           {INSERT_REFERRAL} \
           VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
           $16, $17, $18, $19, $37::int8, $38) \
           ON CONFLICT (sender, client_ref) DO NOTHING RETURNING id), \
         e AS ( \
           {INSERT_EVENT} \
           SELECT $20::uuid, $21::uuid, $22, $23, $24, $25, $26, $27, $28, $29 FROM r), \
         a AS ( \
           {GRANT_ROLE} \
           SELECT r.id, x.agency, x.role FROM r, unnest($30::text[], $39::text[]) \
             AS x(agency, role) ON CONFLICT DO NOTHING), \
         m AS ( \
           {deliveries} \
           FROM r, unnest($32::text[], $33::text[], $34::text[], $35::bytea[], $36::int8[]) \
             AS d(agency, delivery, event, body, held)) \
         SELECT count({append}) FROM r",
        deliveries = queue_deliveries("r.id", "$31"),
        append = audit::append_one(40),
    )
});

/// Writes one submit alone, in [`SUBMIT`].
async fn submit_one(pool: &PgPool, s: &Submission) -> Result<SubmitOutcome, StoreError> {
    let (referral, event) = (&s.referral, &s.event);
    let details = event_details(event)?;
    let query = bind_referral(sqlx::query_scalar::<_, i64>(SUBMIT.as_str()), referral);
    let (agencies, roles): (Vec<&str>, Vec<&str>) = rows::access_of(referral)
        .into_iter()
        .map(|(agency, role)| (agency.as_str(), role))
        .unzip();
    let query = bind_event(query, event, details)
        .bind(agencies)
        .bind(micros(event.at));
    let query = bind_deliveries(query, DeliveryColumns::of(&s.deliveries))
        .bind(s.deadline.map(micros))
        .bind(rows::addressing_column(referral)?)
        .bind(roles);
    let inserted = audit::bind_one(query, crate::store::audit::event_record(event)?)
        .fetch_one(pool)
        .await?;
    if inserted == 1 {
        Ok(SubmitOutcome::Created)
    } else {
        existing(pool, referral).await
    }
}

/// The referral that already holds this submit's `client_ref`. The insert that found it waited for
/// its transaction, so it is committed and visible.
async fn existing(pool: &PgPool, referral: &Referral) -> Result<SubmitOutcome, StoreError> {
    match by_client_ref(pool, &referral.sender, &referral.client_ref).await? {
        Some(existing) => Ok(SubmitOutcome::Existing(Box::new(existing))),
        None => Err(rows::corrupt(
            "referrals",
            "a client_ref conflict without its referral",
        )),
    }
}

/// Submits as parallel arrays for `unnest`, their deliveries flattened with the referral each
/// belongs to, `n` keeping every insert in the order the submits arrived; each referral's
/// acknowledgement deadline is one more of its columns. Not kept prepared, so
/// that it is planned with the arrays in hand.
static SUBMITS: Sql = Sql::new(|| {
    format!(
        "WITH c AS ( \
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], \
             $12::text[], $13::text[], $14::text[], $15::text[], $16::int8[], $17::int8[], \
             $18::int8[], $19::bytea[], $20::text[], $21::text[], $22::text[], $23::text[], \
             $24::int8[], $25::text[], $26::text[], $27::text[], $28::text[], $35::int8[], \
             $36::text[]) \
           WITH ORDINALITY \
           AS c(id, sender, client_ref, fingerprint, addressee_agency, addressee_service, \
             addressee_province, recipient, kind, urgency, subject_sex, subject_age_band, \
             subject_province, client_pseudonym, state, version, created_at, updated_at, \
             case_file, event, event_kind, actor, actor_person, at, note, state_after, \
             details, request_id, ack_due_at, addressing, n)), \
         r AS ( \
           {INSERT_REFERRAL} \
           SELECT id::uuid, sender, client_ref, fingerprint, addressee_agency, \
           addressee_service, addressee_province, recipient, kind, urgency, subject_sex, \
           subject_age_band, subject_province, client_pseudonym, state, version, created_at, \
           updated_at, case_file, ack_due_at, addressing FROM c ORDER BY n \
           ON CONFLICT (sender, client_ref) DO NOTHING RETURNING id), \
         e AS ( \
           {INSERT_EVENT} \
           SELECT c.event::uuid, r.id, c.event_kind, c.actor, c.actor_person, c.at, c.note, \
           c.state_after, c.details, c.request_id \
           FROM c JOIN r ON r.id = c.id::uuid ORDER BY c.n), \
         a AS ( \
           {GRANT_ROLE} \
           SELECT r.id, x.agency, x.role \
           FROM unnest($37::text[], $38::text[], $39::text[]) AS x(referral, agency, role) \
           JOIN r ON r.id = x.referral::uuid ON CONFLICT DO NOTHING), \
         m AS ( \
           {deliveries} \
           FROM unnest($29::text[], $30::text[], $31::text[], $32::text[], $33::bytea[], \
             $34::int8[]) WITH ORDINALITY AS d(referral, agency, delivery, event, body, held, n) \
           JOIN r ON r.id = d.referral::uuid JOIN c ON c.id = d.referral ORDER BY d.n) \
         {appending}",
        deliveries = queue_deliveries("r.id", "c.at"),
        appending = audit::select_appending("r", 40),
    )
});

/// Writes a batch in one statement ([`SUBMITS`]). Returns the ids of the referrals it created; the
/// others found their `client_ref` taken, by an earlier submit or by one in the same batch.
async fn insert_batch(
    pool: &PgPool,
    batch: &[(Submission, Reply)],
) -> Result<HashSet<ReferralId>, StoreError> {
    let mut c = Columns::with_capacity(batch.len());
    for (s, _) in batch {
        c.push(s)?;
    }
    let query = sqlx::query_scalar(SUBMITS.as_str())
        .persistent(false)
        .bind(c.id)
        .bind(c.sender)
        .bind(c.client_ref)
        .bind(c.fingerprint)
        .bind(c.addressee_agency)
        .bind(c.addressee_service)
        .bind(c.addressee_province)
        .bind(c.recipient)
        .bind(c.kind)
        .bind(c.urgency)
        .bind(c.sex)
        .bind(c.age_band)
        .bind(c.province)
        .bind(c.pseudonym)
        .bind(c.state)
        .bind(c.version)
        .bind(c.created_at)
        .bind(c.updated_at)
        .bind(c.case_file);
    let query = bind_events(query, c.e)
        .bind(c.request_id)
        .bind(c.d_referral);
    let query = bind_deliveries(query, c.d)
        .bind(c.ack_due_at)
        .bind(c.addressing)
        .bind(c.a_referral)
        .bind(c.a_agency)
        .bind(c.a_role);
    let created: Vec<String> = c.audit.bind(query).fetch_all(pool).await?;
    created
        .iter()
        .map(|id| {
            ReferralId::parse("referrals.id", id).map_err(|e| rows::undecodable("referrals", e))
        })
        .collect()
}

/// A batch's columns, one array per column, in the order of the statement's parameters.
#[derive(Default)]
struct Columns {
    id: Vec<String>,
    sender: Vec<String>,
    client_ref: Vec<String>,
    fingerprint: Vec<String>,
    addressee_agency: Vec<Option<String>>,
    addressee_service: Vec<Option<String>>,
    addressee_province: Vec<Option<String>>,
    recipient: Vec<String>,
    kind: Vec<String>,
    urgency: Vec<String>,
    sex: Vec<String>,
    age_band: Vec<String>,
    province: Vec<String>,
    pseudonym: Vec<Option<String>>,
    state: Vec<String>,
    version: Vec<i64>,
    created_at: Vec<i64>,
    updated_at: Vec<i64>,
    case_file: Vec<Vec<u8>>,
    e: EventColumns,
    request_id: Vec<Option<String>>,
    /// The referral each delivery belongs to, beside its columns.
    d_referral: Vec<String>,
    d: DeliveryColumns,
    /// Each submit's acknowledgement deadline (NULL: none), beside its referral's columns.
    ack_due_at: Vec<Option<i64>>,
    /// Each submit's addressing ([`rows::addressing_column`]), beside its referral's columns.
    addressing: Vec<Option<String>>,
    /// Who may see each new referral, flattened as the deliveries are: the referral, the agency
    /// and its role ([`rows::access_of`]).
    a_referral: Vec<String>,
    a_agency: Vec<String>,
    a_role: Vec<&'static str>,
    /// Each submit's audit entry, appended if its referral is created.
    audit: audit::Records,
}

impl Columns {
    fn with_capacity(n: usize) -> Self {
        Self {
            id: Vec::with_capacity(n),
            case_file: Vec::with_capacity(n),
            ..Self::default()
        }
    }

    fn push(&mut self, s: &Submission) -> Result<(), StoreError> {
        let (r, e) = (&s.referral, &s.event);
        let (agency, service, province) = rows::addressee_columns(&r.addressee);
        self.id.push(r.id.to_string());
        self.sender.push(r.sender.as_str().to_owned());
        self.client_ref.push(r.client_ref.as_str().to_owned());
        self.fingerprint.push(r.fingerprint.clone());
        self.addressee_agency.push(agency);
        self.addressee_service.push(service);
        self.addressee_province.push(province);
        self.recipient
            .push(rows::recipient_text(r.recipient.as_ref()).to_owned());
        self.kind.push(r.kind.as_str().to_owned());
        self.urgency.push(r.urgency.as_str().to_owned());
        self.sex.push(r.subject.sex.as_str().to_owned());
        self.age_band.push(r.subject.age_band.as_str().to_owned());
        self.province.push(r.subject.province.as_str().to_owned());
        self.pseudonym
            .push(r.client_pseudonym.as_ref().map(|p| p.as_str().to_owned()));
        self.state.push(r.state.as_str().to_owned());
        self.version.push(r.version);
        self.created_at.push(micros(r.created_at));
        self.updated_at.push(micros(r.updated_at));
        self.case_file.push(r.case_file.as_bytes().to_vec());
        self.e.push(e)?;
        self.audit.push(crate::store::audit::event_record(e)?);
        self.request_id
            .push(e.request_id.as_ref().map(|r| r.as_str().to_owned()));
        self.d_referral
            .extend(std::iter::repeat_n(r.id.to_string(), s.deliveries.len()));
        self.d.extend(&s.deliveries);
        self.ack_due_at.push(s.deadline.map(micros));
        self.addressing.push(rows::addressing_column(r)?);
        for (agency, role) in rows::access_of(r) {
            self.a_referral.push(r.id.to_string());
            self.a_agency.push(agency.as_str().to_owned());
            self.a_role.push(role);
        }
        Ok(())
    }
}
