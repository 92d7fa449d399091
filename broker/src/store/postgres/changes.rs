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

use std::collections::HashSet;

use super::PgStore;
use super::columns::{
    DeliveryColumns, EventColumns, GRANT_ACCESS, INSERT_EVENT, Sql, bind_deliveries, bind_event,
    bind_events, event_details, queue_deliveries,
};
use super::referrals::recorded_request;
use crate::error::StoreError;
use crate::store::{Change, ChangeOutcome, apply_each, micros};

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
/// and with it the whole statement.
static CHANGE: Sql = Sql::new(|| {
    format!(
        "WITH u AS ( \
           UPDATE referrals SET state = $1, version = version + 1, updated_at = $2, \
           recipient = COALESCE($3, recipient) WHERE id = $4::uuid AND version = $5 \
           RETURNING id), \
         e AS ( \
           {INSERT_EVENT} \
           SELECT $6::uuid, $7::uuid, $8, $9, $10, $11, $12, $13, $14, $15 FROM u), \
         a AS ( \
           {GRANT_ACCESS} \
           SELECT u.id, $3 FROM u WHERE $3::text IS NOT NULL ON CONFLICT DO NOTHING), \
         m AS ( \
           {deliveries} \
           FROM u, unnest($16::text[], $17::text[], $18::text[], $19::bytea[], $20::int8[]) \
             AS d(agency, delivery, event, body, held)), \
         x AS ( \
           {cleared}) \
         SELECT count(*) FROM u",
        deliveries = queue_deliveries("u.id", "$2"),
        cleared = clear_former_recipients_body(
            "u, referrals r WHERE $3::text IS NOT NULL AND r.id = u.id"
        ),
    )
});

/// Changes as parallel arrays for `unnest`, and their deliveries flattened with the referral each
/// belongs to; `redirects` (CTEs that only a redirect needs) goes between the CTEs every batch
/// needs and the final `SELECT`, which returns the referrals whose change applied.
fn changes(redirects: &str) -> String {
    format!(
        "WITH c AS ( \
           SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::text[], $10::int8[], $11::text[], \
             $12::text[], $13::text[]) \
           AS c(referral, version, state, at, recipient, event, kind, actor, person, \
             event_at, note, state_after, details)), \
         u AS ( \
           UPDATE referrals r SET state = c.state, version = r.version + 1, \
           updated_at = c.at, recipient = COALESCE(c.recipient, r.recipient) \
           FROM c WHERE r.id = c.referral::uuid AND r.version = c.version \
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
         {redirects}SELECT id::text FROM u",
        deliveries = queue_deliveries("u.id", "c.at"),
    )
}

/// Changes none of which redirects, such as a burst of confirmations' `delivered`: planned at
/// every execution, so it carries no CTE it does not need.
static CHANGES: Sql = Sql::new(|| changes(""));

/// Changes among which at least one redirect: the new recipient gains access, and the referral
/// still queued for the former recipient loses its carried body.
static CHANGES_WITH_REDIRECTS: Sql = Sql::new(|| {
    changes(&format!(
        ", a AS ( \
           {GRANT_ACCESS} \
           SELECT u.id, c.recipient FROM c JOIN u ON u.id = c.referral::uuid \
           WHERE c.recipient IS NOT NULL ON CONFLICT DO NOTHING), \
         x AS ( \
           {cleared}) ",
        cleared = clear_former_recipients_body(
            "c JOIN u ON u.id = c.referral::uuid JOIN referrals r ON r.id = u.id \
             WHERE c.recipient IS NOT NULL"
        ),
    ))
});

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
        let query = sqlx::query_scalar::<_, i64>(CHANGE.as_str())
            .bind(change.state.as_str())
            .bind(micros(change.at))
            .bind(change.new_recipient.as_ref().map(|a| a.as_str().to_owned()))
            .bind(change.referral_id.to_string())
            .bind(change.expected_version);
        let query = bind_event(query, &change.event, details);
        let applied = bind_deliveries(query, DeliveryColumns::of(&change.deliveries))
            .fetch_one(&self.pool)
            .await;
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

    /// The changes in one statement ([`CHANGES`], or [`CHANGES_WITH_REDIRECTS`] if any of them
    /// redirects).
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
            c.d_referral.extend(std::iter::repeat_n(
                change.referral_id.to_string(),
                change.deliveries.len(),
            ));
            c.d.extend(&change.deliveries);
        }
        let statement = if changes.iter().any(|c| c.new_recipient.is_some()) {
            &CHANGES_WITH_REDIRECTS
        } else {
            &CHANGES
        };
        let query = sqlx::query_scalar(statement.as_str())
            .persistent(false)
            .bind(c.referral)
            .bind(c.version)
            .bind(c.state)
            .bind(c.at)
            .bind(c.recipient);
        let query = bind_events(query, c.e).bind(c.d_referral);
        let applied: Vec<String> = bind_deliveries(query, c.d).fetch_all(&self.pool).await?;
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
