//! What the production store's statements share, written once: the columns each table is read
//! with, the heads of the inserts that every submit and change makes, and the parallel arrays that
//! carry a batch's rows into one statement.
//!
//! Statements that use these pieces are put together once, on first use, and kept ([`Sql`]): sqlx
//! takes a statement as a `&'static str`, and the text PostgreSQL receives is the same on every
//! call, so each persistent statement is still prepared once per connection.

use std::sync::LazyLock;

use sqlx::Postgres;
use sqlx::postgres::PgArguments;

use crate::error::StoreError;
use crate::referral::{Event, Referral};
use crate::store::{NewDelivery, duration_micros, micros, rows};

/// A statement put together from the pieces below on first use.
pub(super) type Sql = LazyLock<String>;

/// A statement whose first column is its answer, as every writing statement here is, with its
/// parameters still being bound.
pub(super) type Statement<'q, O> = sqlx::query::QueryScalar<'q, Postgres, O, PgArguments>;

/// The columns [`rows::referral`] reads, without the case file. Ids are `uuid` columns, read as
/// text because [`rows`] maps both backends from text.
pub(super) const REFERRAL_COLUMNS: &str = "id::text AS id, sender, client_ref, fingerprint, \
    addressee_agency, addressee_service, addressee_province, recipient, kind, urgency, \
    subject_sex, subject_age_band, subject_province, client_pseudonym, state, version, \
    created_at, updated_at, addressing";

/// The columns [`rows::event`] reads.
pub(super) const EVENT_COLUMNS: &str = "seq, id::text AS id, referral_id::text AS referral_id, \
    kind, actor, actor_person, at, note, state_after, details, request_id";

/// The columns [`rows::mailbox`] reads.
pub(super) const MAILBOX_COLUMNS: &str = "seq, agency_id, delivery_id::text AS delivery_id, \
    referral_id::text AS referral_id, event_id::text AS event_id";

/// Now in microseconds by the database's clock: the one clock every broker process shares, so
/// that the leases and holds of the outbox mean the same to every relay.
pub(super) const NOW_MICROS: &str = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint";

/// The head of every insert of a new referral; [`bind_referral`] binds its values.
pub(super) const INSERT_REFERRAL: &str = "INSERT INTO referrals (id, sender, client_ref, \
    fingerprint, addressee_agency, addressee_service, addressee_province, recipient, kind, \
    urgency, subject_sex, subject_age_band, subject_province, client_pseudonym, state, version, \
    created_at, updated_at, case_file, ack_due_at, addressing)";

/// The head of every insert of an event; [`bind_event`] binds its values.
pub(super) const INSERT_EVENT: &str = "INSERT INTO referral_events (id, referral_id, kind, actor, \
    actor_person, at, note, state_after, details, request_id)";

/// The head of every insert that gives an agency access to a referral as a party.
pub(super) const GRANT_ACCESS: &str = "INSERT INTO referral_access (referral_id, agency_id)";

/// What [`GRANT_ACCESS`] does for a new recipient that already has access: an agency that was only
/// notified becomes a party, and a party stays one (the `WHERE` leaves its row unwritten).
pub(super) const AS_PARTY: &str = "ON CONFLICT (agency_id, referral_id) DO UPDATE \
    SET role = 'party' WHERE referral_access.role <> 'party'";

/// The head of the insert that gives agencies access with a role: as notified
/// ([`crate::store::Change::notified`]), or each as a new referral's access says
/// ([`rows::access_of`]); it ends `ON CONFLICT DO NOTHING`, so an agency with access keeps it as
/// it was.
pub(super) const GRANT_ROLE: &str = "INSERT INTO referral_access (referral_id, agency_id, role)";

/// The insert of deliveries into the mailbox, up to its `FROM`, which the statement adds: it
/// yields the deliveries as `d`, unnested from the arrays [`bind_deliveries`] binds, beside the
/// `referral` they belong to and the moment they were `created_at`. A held row's `lease_until`
/// is now by the database's clock plus its hold, as if leased then ([`NewDelivery::held`]); any
/// other row's is NULL, for any relay to lease at once.
pub(super) fn queue_deliveries(referral: &str, created_at: &str) -> String {
    format!(
        "INSERT INTO mailbox (agency_id, delivery_id, referral_id, event_id, created_at, body, \
         lease_until) SELECT d.agency, d.delivery::uuid, {referral}, d.event::uuid, {created_at}, \
         d.body, {NOW_MICROS} + d.held"
    )
}

/// Binds a new referral's values, in the order of [`INSERT_REFERRAL`].
pub(super) fn bind_referral<'q, O>(query: Statement<'q, O>, r: &'q Referral) -> Statement<'q, O> {
    let (agency, service, province) = rows::addressee_columns(&r.addressee);
    query
        .bind(r.id.to_string())
        .bind(r.sender.as_str())
        .bind(r.client_ref.as_str())
        .bind(&r.fingerprint)
        .bind(agency)
        .bind(service)
        .bind(province)
        .bind(rows::recipient_text(r.recipient.as_ref()))
        .bind(r.kind.as_str())
        .bind(r.urgency.as_str())
        .bind(r.subject.sex.as_str())
        .bind(r.subject.age_band.as_str())
        .bind(r.subject.province.as_str())
        .bind(r.client_pseudonym.as_ref().map(|p| p.as_str().to_owned()))
        .bind(r.state.as_str())
        .bind(r.version)
        .bind(micros(r.created_at))
        .bind(micros(r.updated_at))
        .bind(r.case_file.as_bytes())
}

/// Binds an event's values, in the order of [`INSERT_EVENT`]; `details` is the event's details as
/// stored ([`event_details`]).
pub(super) fn bind_event<'q, O>(
    query: Statement<'q, O>,
    e: &'q Event,
    details: String,
) -> Statement<'q, O> {
    query
        .bind(e.id.to_string())
        .bind(e.referral_id.to_string())
        .bind(e.kind.as_str())
        .bind(e.actor.as_str())
        .bind(e.actor_person.as_str())
        .bind(micros(e.at))
        .bind(e.note.as_str())
        .bind(e.state_after.as_str())
        .bind(details)
        .bind(e.request_id.as_ref().map(|r| r.as_str().to_owned()))
}

/// An event's details as the `details` column stores them.
pub(super) fn event_details(e: &Event) -> Result<String, StoreError> {
    rows::details_column(e)
}

/// Deliveries as parallel arrays for `unnest`: any number of deliveries in one statement.
#[derive(Default)]
pub(super) struct DeliveryColumns {
    agency: Vec<String>,
    /// A new delivery id for each.
    delivery: Vec<String>,
    /// NULL: the referral itself.
    event: Vec<Option<String>>,
    /// The carried delivery, or NULL.
    body: Vec<Option<Vec<u8>>>,
    /// How long the row is held, in microseconds, or NULL.
    held: Vec<Option<i64>>,
}

impl DeliveryColumns {
    pub(super) fn of(deliveries: &[NewDelivery]) -> Self {
        let mut columns = Self::default();
        columns.extend(deliveries);
        columns
    }

    pub(super) fn extend(&mut self, deliveries: &[NewDelivery]) {
        for d in deliveries {
            self.agency.push(d.agency.as_str().to_owned());
            self.delivery.push(d.id.to_string());
            self.event.push(d.event_id.map(|e| e.to_string()));
            self.body.push(d.body.clone());
            self.held.push(d.held.map(duration_micros));
        }
    }
}

/// Binds a [`DeliveryColumns`]' arrays, in the order every statement unnests them: agency,
/// delivery id, event id, body, hold.
pub(super) fn bind_deliveries<'q, O>(
    query: Statement<'q, O>,
    d: DeliveryColumns,
) -> Statement<'q, O> {
    query
        .bind(d.agency)
        .bind(d.delivery)
        .bind(d.event)
        .bind(d.body)
        .bind(d.held)
}

/// Events as parallel arrays for `unnest`, one element per change or submit of a batch: what
/// both batch statements insert into `referral_events`.
#[derive(Default)]
pub(super) struct EventColumns {
    id: Vec<String>,
    kind: Vec<String>,
    actor: Vec<String>,
    person: Vec<String>,
    at: Vec<i64>,
    note: Vec<String>,
    state_after: Vec<String>,
    details: Vec<String>,
}

impl EventColumns {
    pub(super) fn push(&mut self, e: &Event) -> Result<(), StoreError> {
        self.id.push(e.id.to_string());
        self.kind.push(e.kind.as_str().to_owned());
        self.actor.push(e.actor.as_str().to_owned());
        self.person.push(e.actor_person.as_str().to_owned());
        self.at.push(micros(e.at));
        self.note.push(e.note.as_str().to_owned());
        self.state_after.push(e.state_after.as_str().to_owned());
        self.details.push(event_details(e)?);
        Ok(())
    }
}

/// Binds an [`EventColumns`]' arrays, in the order both batch statements unnest them: id, kind,
/// actor, actor_person, at, note, state_after, details.
pub(super) fn bind_events<'q, O>(query: Statement<'q, O>, e: EventColumns) -> Statement<'q, O> {
    query
        .bind(e.id)
        .bind(e.kind)
        .bind(e.actor)
        .bind(e.person)
        .bind(e.at)
        .bind(e.note)
        .bind(e.state_after)
        .bind(e.details)
}
