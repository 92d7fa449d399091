//! Changes to referrals: one change in one statement, and changes that arrive together (a delivery
//! stream's burst of confirmations) in one statement for all of them.
//!
//! A change is one statement whichever way it goes: the versioned `UPDATE` of the referral, and fed
//! by its `RETURNING` the event, the new recipient's access, the deliveries and, on a redirect,
//! the clearing of the referral's carried body in the former recipient's outbox. So a change is
//! one round trip and one commit.
//!
//! A single change and a batch are two statements, not the batch statement run with one row,
//! because they are prepared and planned differently. The single one binds scalars, among them
//! the request id that lets a retry find its first event, and is prepared once per connection. The
//! batch binds parallel arrays joined back to the rows they update, and is not kept prepared, so
//! that it is planned with the arrays in hand, as the batch reads are (see
//! `ReferralStore::referrals_with_history` in `referrals`). Through the batch statement a lone
//! action would be planned anew every time and lose its request id. What the two share (the insert
//! heads, the deliveries' insert and the clearing of a former recipient's body) is written once, in
//! [`super::columns`] and [`clear_former_recipients_body`].
//!
//! A change that moves or clears its referral's acknowledgement deadline, or notifies agencies (an
//! escalation), goes through a variant of either statement with CTEs for those, fed by the same
//! `RETURNING`: a stale change writes neither. Nearly every change does neither, and its statement
//! carries no such CTE, so the common path costs what it did.

use std::collections::HashSet;

use super::columns::{
    AS_PARTY, DeliveryColumns, EventColumns, GRANT_ACCESS, GRANT_ROLE, INSERT_EVENT, Sql,
    Statement, bind_deliveries, bind_event, bind_events, event_details, queue_deliveries,
};
use super::referrals::recorded_request;
use super::{PgStore, audit};
use crate::error::StoreError;
use crate::store::{Change, ChangeOutcome, DeadlineChange, apply_each, micros, rows};

/// The `UPDATE` that clears the carried body of a redirected referral still queued for its former
/// recipient, so that the relay loads it when it publishes it, and it goes without its case file.
/// `redirected` is the `FROM … WHERE …` that yields each redirected referral's id as `u.id` and its
/// row as `r`. `r` is read as it was before the change (one snapshot for the whole statement), so
/// `r.recipient` is the former recipient.
fn clear_former_recipients_body(redirected: &str) -> String {
    format!(
        "UPDATE mailbox SET body = NULL FROM {redirected} \
         AND mailbox.agency_id = r.recipient AND mailbox.referral_id = u.id \
         AND mailbox.event_id IS NULL AND mailbox.body IS NOT NULL"
    )
}

/// One change. A concurrent writer's update of the same row makes this one wait, then match no
/// row: the change is stale, unless it was a retry of this very request that won, which the request
/// id shows. A request id this actor used on another referral fails the event's unique constraint
/// and with it the whole statement. `deadline` (CTEs that only a change of the deadline or of who
/// is notified needs) goes before the final `SELECT`.
/// `audit` is the number of the first of the audit entry's parameters, after the others.
fn change(set_deadline: &str, deadline: &str, audit: usize) -> String {
    format!(
        "WITH u AS ( \
           UPDATE referrals SET state = $1, version = version + 1, updated_at = $2, \
           recipient = COALESCE($3, recipient){set_deadline} \
           WHERE id = $4::uuid AND version = $5 \
           RETURNING id), \
         e AS ( \
           {INSERT_EVENT} \
           SELECT $6::uuid, $7::uuid, $8, $9, $10, $11, $12, $13, $14, $15 FROM u), \
         a AS ( \
           {GRANT_ACCESS} \
           SELECT u.id, $3 FROM u WHERE $3::text IS NOT NULL {AS_PARTY}), \
         m AS ( \
           {deliveries} \
           FROM u, unnest($16::text[], $17::text[], $18::text[], $19::bytea[], $20::int8[]) \
             AS d(agency, delivery, event, body, held)), \
         x AS ( \
           {cleared}) \
         {deadline}SELECT count({append}) FROM u",
        deliveries = queue_deliveries("u.id", "$2"),
        append = audit::append_one(audit),
        cleared = clear_former_recipients_body(
            "u, referrals r WHERE $3::text IS NOT NULL AND r.id = u.id"
        ),
    )
}

/// A change that neither touches its deadline nor notifies anyone: nearly all of them.
static CHANGE: Sql = Sql::new(|| change("", "", 21));

/// A change that sets or clears its deadline, or notifies agencies ([`bind_deadline`]): the
/// notified gain access unless they have it (the new recipient, a party, is left to `a`, since one
/// statement may not write a row twice); the deadline is set or cleared in the versioned update.
static CHANGE_WITH_DEADLINE: Sql = Sql::new(|| {
    change(
        ", ack_due_at = CASE WHEN $24::bool THEN NULL ELSE COALESCE($22::int8, ack_due_at) END, \
         escalations = CASE WHEN $24::bool THEN 0 ELSE COALESCE($23::int4, escalations) END",
        &format!(
            ", n AS ( \
               {GRANT_ROLE} \
               SELECT u.id, x, 'notified' FROM u, unnest($21::text[]) AS x \
               WHERE x IS DISTINCT FROM $3::text ON CONFLICT DO NOTHING) "
        ),
        25,
    )
});

/// Whether a change needs [`CHANGE_WITH_DEADLINE`] (or, in a batch, its batch counterpart).
fn touches_deadline(change: &Change) -> bool {
    change.deadline != DeadlineChange::Keep || !change.notified.is_empty()
}

/// Binds [`CHANGE_WITH_DEADLINE`]'s own parameters: the notified agencies, the deadline set (due
/// and escalations, or NULLs) and whether it is cleared.
fn bind_deadline<'q>(query: Statement<'q, i64>, change: &Change) -> Statement<'q, i64> {
    let (due, escalations) = deadline_columns(change.deadline);
    query
        .bind(
            change
                .notified
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect::<Vec<_>>(),
        )
        .bind(due)
        .bind(escalations)
        .bind(change.deadline == DeadlineChange::Clear)
}

/// Changes as parallel arrays for `unnest`, and their deliveries flattened with the referral each
/// belongs to; `redirects` (CTEs that only a redirect needs) and `deadlines` (CTEs that only a
/// change of a deadline or of who is notified needs) go between the CTEs every batch needs and the
/// final `SELECT`, which returns the referrals whose change applied.
fn changes(redirects: &str, deadlines: &str) -> String {
    // With deadlines, each change's deadline (its due time, NULL to clear; absent to keep) is
    // joined to it and written in the versioned update itself.
    let (set_deadline, deadline_rows) = if deadlines.is_empty() {
        ("", "")
    } else {
        (
            ", ack_due_at = CASE WHEN dl.referral IS NULL THEN r.ack_due_at ELSE dl.due_at END, \
             escalations = CASE WHEN dl.referral IS NULL THEN r.escalations \
               ELSE COALESCE(dl.escalations, 0) END",
            " LEFT JOIN unnest($22::text[], $23::int8[], $24::int4[]) \
               AS dl(referral, due_at, escalations) ON dl.referral = c.referral",
        )
    };
    format!(
        "WITH c AS ( \
           SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::text[], $10::int8[], $11::text[], \
             $12::text[], $13::text[]) \
           AS c(referral, version, state, at, recipient, event, kind, actor, person, \
             event_at, note, state_after, details)), \
         u AS ( \
           UPDATE referrals r SET state = c.state, version = r.version + 1, \
           updated_at = c.at, recipient = COALESCE(c.recipient, r.recipient){set_deadline} \
           FROM c{deadline_rows} WHERE r.id = c.referral::uuid AND r.version = c.version \
           RETURNING r.id), \
         e AS ( \
           {INSERT_EVENT} \
           SELECT c.event::uuid, u.id, c.kind, c.actor, c.person, c.event_at, c.note, \
           c.state_after, c.details, NULL FROM c JOIN u ON u.id = c.referral::uuid), \
         m AS ( \
           {deliveries} \
           FROM unnest($14::text[], $15::text[], $16::text[], $17::text[], $18::bytea[], \
             $19::int8[]) AS d(referral, agency, delivery, event, body, held) \
           JOIN u ON u.id = d.referral::uuid JOIN c ON c.referral = d.referral) \
         {redirects}{deadlines}{appending}",
        deliveries = queue_deliveries("u.id", "c.at"),
        appending = audit::select_appending("u", if deadlines.is_empty() { 20 } else { 25 }),
    )
}

/// Changes none of which redirects, such as a burst of confirmations' `delivered`: planned at
/// every execution, so it carries no CTE it does not need.
static CHANGES: Sql = Sql::new(|| changes("", ""));

/// The CTEs of a batch among which at least one redirect: the new recipient gains access (as a
/// party, also if it was notified before), and the referral still queued for the former recipient
/// loses its carried body.
fn redirects() -> String {
    format!(
        ", a AS ( \
           {GRANT_ACCESS} \
           SELECT u.id, c.recipient FROM c JOIN u ON u.id = c.referral::uuid \
           WHERE c.recipient IS NOT NULL {AS_PARTY}), \
         x AS ( \
           {cleared}) ",
        cleared = clear_former_recipients_body(
            "c JOIN u ON u.id = c.referral::uuid JOIN referrals r ON r.id = u.id \
             WHERE c.recipient IS NOT NULL"
        ),
    )
}

/// The CTEs of a batch among which at least one change sets or clears its deadline or notifies
/// agencies, as [`CHANGE_WITH_DEADLINE`] does for one; their arrays hold only the changes that do
/// ([`BatchColumns::deadlines`]). A NULL `due_at` clears the deadline.
fn deadlines() -> String {
    format!(
        ", n AS ( \
           {GRANT_ROLE} \
           SELECT u.id, x.agency, 'notified' \
           FROM unnest($20::text[], $21::text[]) AS x(referral, agency) \
           JOIN u ON u.id = x.referral::uuid JOIN c ON c.referral = x.referral \
           WHERE x.agency IS DISTINCT FROM c.recipient ON CONFLICT DO NOTHING) "
    )
}

/// Changes among which at least one redirect.
static CHANGES_WITH_REDIRECTS: Sql = Sql::new(|| changes(&redirects(), ""));

/// Changes among which at least one changes a deadline or notifies, and none redirects.
static CHANGES_WITH_DEADLINES: Sql = Sql::new(|| changes("", &deadlines()));

/// Changes among which both.
static CHANGES_WITH_REDIRECTS_AND_DEADLINES: Sql = Sql::new(|| changes(&redirects(), &deadlines()));

/// The columns of a batch of changes, one array per column.
#[derive(Default)]
struct BatchColumns {
    referral: Vec<String>,
    version: Vec<i64>,
    state: Vec<String>,
    at: Vec<i64>,
    recipient: Vec<Option<String>>,
    e: EventColumns,
    /// The referral each delivery belongs to, beside its columns.
    d_referral: Vec<String>,
    d: DeliveryColumns,
    deadlines: DeadlineColumns,
    /// Each change's audit entry, appended if the change applies.
    audit: audit::Records,
}

/// What the changes of a batch do to deadlines and access by notification, for
/// [`deadlines`]: only the changes that do something.
#[derive(Default)]
struct DeadlineColumns {
    /// Each notified agency, beside the referral it is notified of.
    n_referral: Vec<String>,
    n_agency: Vec<String>,
    /// Each deadline set or cleared: its referral, and its due time and escalations (NULL: cleared).
    referral: Vec<String>,
    due_at: Vec<Option<i64>>,
    escalations: Vec<Option<i32>>,
}

impl DeadlineColumns {
    fn push(&mut self, change: &Change) {
        let id = change.referral_id.to_string();
        for agency in &change.notified {
            self.n_referral.push(id.clone());
            self.n_agency.push(agency.as_str().to_owned());
        }
        if change.deadline == DeadlineChange::Keep {
            return;
        }
        let (due_at, escalations) = deadline_columns(change.deadline);
        self.referral.push(id);
        self.due_at.push(due_at);
        self.escalations.push(escalations);
    }
}

impl BatchColumns {
    fn with_capacity(n: usize) -> Self {
        Self {
            referral: Vec::with_capacity(n),
            version: Vec::with_capacity(n),
            state: Vec::with_capacity(n),
            at: Vec::with_capacity(n),
            recipient: Vec::with_capacity(n),
            ..Self::default()
        }
    }
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl PgStore {
    /// [`ReferralStore::apply`](crate::store::ReferralStore::apply): the change in one statement
    /// ([`CHANGE`]), after looking for an earlier use of its request id.
    pub(super) async fn apply_one(&self, change: &Change) -> Result<ChangeOutcome, StoreError> {
        let actor = &change.event.actor;
        let request_id = change.event.request_id.as_ref();
        if let Some(request_id) = request_id
            && let Some(done) = recorded_request(&self.pool, actor, request_id).await?
        {
            return Ok(ChangeOutcome::Duplicate(Box::new(done)));
        }
        let details = event_details(&change.event)?;
        let with_deadline = touches_deadline(change);
        let statement = if with_deadline {
            &CHANGE_WITH_DEADLINE
        } else {
            &CHANGE
        };
        let query = sqlx::query_scalar::<_, i64>(statement.as_str())
            .bind(change.state.as_str())
            .bind(micros(change.at))
            .bind(change.new_recipient.as_ref().map(|a| a.as_str().to_owned()))
            .bind(change.referral_id.to_string())
            .bind(change.expected_version);
        let query = bind_event(query, &change.event, details);
        let query = bind_deliveries(query, DeliveryColumns::of(&change.deliveries));
        let query = if with_deadline {
            bind_deadline(query, change)
        } else {
            query
        };
        let query = audit::bind_one(query, crate::store::audit::event_record(&change.event)?);
        let applied = query.fetch_one(&self.pool).await;
        match applied {
            Ok(1) => Ok(ChangeOutcome::Recorded),
            Ok(_) => Ok(match request_id {
                Some(request_id) => recorded_request(&self.pool, actor, request_id)
                    .await?
                    .map_or(ChangeOutcome::Stale, |done| {
                        ChangeOutcome::Duplicate(Box::new(done))
                    }),
                None => ChangeOutcome::Stale,
            }),
            Err(e) if is_unique_violation(&e) => {
                // The statement waited for the transaction that used this request id to commit,
                // so its event is visible now.
                match request_id {
                    Some(request_id) => recorded_request(&self.pool, actor, request_id)
                        .await?
                        .map(|done| ChangeOutcome::Duplicate(Box::new(done)))
                        .ok_or_else(|| e.into()),
                    None => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// [`ReferralStore::apply_all`](crate::store::ReferralStore::apply_all). Changes without
    /// request ids, each on a referral of its own, go in one statement and one commit: the
    /// versioned updates, and fed by their `RETURNING` the events, access and deliveries of the
    /// changes that applied; the others are stale. This is how a stream's confirmations are
    /// recorded together. Anything else, or a batch the database refuses (a deadlock with another
    /// batch, say), is applied change by change, which decides each on its own.
    pub(super) async fn apply_together(
        &self,
        changes: &[Change],
    ) -> Result<Vec<ChangeOutcome>, StoreError> {
        let mut ids = HashSet::with_capacity(changes.len());
        let batchable = changes.len() > 1
            && changes
                .iter()
                .all(|c| c.event.request_id.is_none() && ids.insert(c.referral_id));
        if batchable {
            let written = self.apply_batch(changes).await;
            self.batches.count(written.is_ok());
            match written {
                Ok(outcomes) => return Ok(outcomes),
                Err(e) => {
                    tracing::debug!(error = %e, changes = changes.len(), "a batch of changes was refused; applying them one by one");
                }
            }
        }
        apply_each(self, changes).await
    }

    /// The changes in one statement: [`CHANGES`], or a variant with the CTEs that redirects
    /// ([`CHANGES_WITH_REDIRECTS`]) or changes of deadlines and notifications
    /// ([`CHANGES_WITH_DEADLINES`]) among them need.
    async fn apply_batch(&self, changes: &[Change]) -> Result<Vec<ChangeOutcome>, StoreError> {
        let mut c = BatchColumns::with_capacity(changes.len());
        for change in changes {
            c.referral.push(change.referral_id.to_string());
            c.version.push(change.expected_version);
            c.state.push(change.state.as_str().to_owned());
            c.at.push(micros(change.at));
            c.recipient
                .push(change.new_recipient.as_ref().map(|a| a.as_str().to_owned()));
            c.e.push(&change.event)?;
            c.audit
                .push(crate::store::audit::event_record(&change.event)?);
            c.d_referral.extend(std::iter::repeat_n(
                change.referral_id.to_string(),
                change.deliveries.len(),
            ));
            c.d.extend(&change.deliveries);
            c.deadlines.push(change);
        }
        let redirects = changes.iter().any(|c| c.new_recipient.is_some());
        let deadlines = changes.iter().any(touches_deadline);
        let statement = match (redirects, deadlines) {
            (false, false) => &CHANGES,
            (true, false) => &CHANGES_WITH_REDIRECTS,
            (false, true) => &CHANGES_WITH_DEADLINES,
            (true, true) => &CHANGES_WITH_REDIRECTS_AND_DEADLINES,
        };
        let query = sqlx::query_scalar(statement.as_str())
            .persistent(false)
            .bind(c.referral)
            .bind(c.version)
            .bind(c.state)
            .bind(c.at)
            .bind(c.recipient);
        let query = bind_events(query, c.e).bind(c.d_referral);
        let query = bind_deliveries(query, c.d);
        let query = if deadlines {
            let n = c.deadlines;
            query
                .bind(n.n_referral)
                .bind(n.n_agency)
                .bind(n.referral)
                .bind(n.due_at)
                .bind(n.escalations)
        } else {
            query
        };
        let applied: Vec<String> = c.audit.bind(query).fetch_all(&self.pool).await?;
        let applied: HashSet<String> = applied.into_iter().collect();
        Ok(changes
            .iter()
            .map(|change| {
                if applied.contains(&change.referral_id.to_string()) {
                    ChangeOutcome::Recorded
                } else {
                    ChangeOutcome::Stale
                }
            })
            .collect())
    }
}

/// A deadline as its two columns: its due time and escalations when set, NULLs otherwise.
fn deadline_columns(deadline: DeadlineChange) -> (Option<i64>, Option<i32>) {
    match deadline {
        DeadlineChange::Set {
            due_at,
            escalations,
        } => (
            Some(micros(due_at)),
            Some(rows::escalations_column(escalations)),
        ),
        DeadlineChange::Keep | DeadlineChange::Clear => (None, None),
    }
}
