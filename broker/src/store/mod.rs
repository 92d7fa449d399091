//! Where referrals, their history and undelivered messages live.
//!
//! Two traits state the contract: [`ReferralStore`] holds referrals, their events and the
//! directory, and [`Mailbox`] holds the deliveries waiting for each agency, which delivery hands
//! out and settles. A third, [`RevocationStore`], keeps the revoked certificates every broker of
//! a deployment refuses. A backend implements both over one database, as one [`Store`]. Every change to
//! a referral arrives as one [`Change`] and is written in one transaction with its history event
//! and its deliveries, so a crash leaves either all of it or none.
//!
//! # Layout
//! - [`sqlite`]: the embedded default, one file in WAL mode; its writes go through one [`writer`]
//!   that commits concurrent writes together, its reads through a few [`readers`].
//! - [`postgres`]: the production store, shared by every broker process; writes that arrive
//!   together are batched into one statement.
//! - [`audit`]: the [`AuditStore`]: the hash-chained log of every accepted action, appended in
//!   the transaction of the action.
//! - `rows`: stored rows to domain values, once for both backends.

pub mod audit;
pub mod postgres;
pub mod readers;
pub mod revocations;
mod rows;
pub mod sqlite;
pub mod writer;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::directory::Directory;
use crate::error::StoreError;
use crate::ids::{AgencyId, ClientRef, ReferralId, RequestId};
use crate::referral::{Event, ListQuery, Referral, State};

pub use audit::AuditStore;
pub use revocations::{RevocationFeed, RevocationStore};

/// What a delivery is about, kept while it is in flight so its confirmation can be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryRef {
    pub delivery_id: uuid::Uuid,
    pub referral_id: ReferralId,
    /// `None`: the referral itself.
    pub event_id: Option<uuid::Uuid>,
}

/// A referral's sender and its recipient now ([`ReferralStore::parties_now`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartiesNow {
    pub referral_id: ReferralId,
    pub sender: AgencyId,
    /// `None` while a broadcast waits for a candidate to accept it.
    pub recipient: Option<AgencyId>,
}

/// A message waiting in an agency's mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxEntry {
    /// Position in the mailbox; later entries have larger values.
    pub seq: i64,
    pub agency: AgencyId,
    pub delivery_id: uuid::Uuid,
    pub referral_id: ReferralId,
    /// `None`: the referral itself; otherwise one history event.
    pub event_id: Option<uuid::Uuid>,
    /// The delivery as it was encoded when queued ([`NewDelivery::body`]), if the store carries
    /// it and the outbox relay leased the row; `None`: load the content when sending.
    pub carried: Option<Vec<u8>>,
}

impl MailboxEntry {
    /// What the entry delivers, as a delivery session tracks it.
    pub fn reference(&self) -> DeliveryRef {
        DeliveryRef {
            delivery_id: self.delivery_id,
            referral_id: self.referral_id,
            event_id: self.event_id,
        }
    }
}

/// A delivery to enqueue with a change.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Made by the caller, so that it can publish the delivery itself once the change is written
    /// ([`NewDelivery::held`]).
    pub id: uuid::Uuid,
    pub agency: AgencyId,
    pub event_id: Option<uuid::Uuid>,
    /// The delivery encoded now, without its id ([`crate::wire::carried`]), for a
    /// store that [carries deliveries](Mailbox::carries_deliveries): the relay publishes it as it is
    /// instead of reading the referral or event back. `None`: loaded when it is sent.
    pub body: Option<Vec<u8>>,
    /// Kept out of every relay's lease for this long after it is written, as if leased then: the
    /// broker that writes a carried delivery publishes it itself straight after the commit (the
    /// relay's handoff), and a relay takes the row only if that did not happen in time. `None`:
    /// any relay may lease it at once.
    pub held: Option<std::time::Duration>,
}

/// One change to an existing referral: the new state, the event that explains it, and who hears of it.
#[derive(Debug, Clone)]
pub struct Change {
    pub referral_id: ReferralId,
    /// The version the decision was made on; the change applies only if it is still current.
    pub expected_version: i64,
    pub state: State,
    /// Set on redirect: the new recipient, who also gains access.
    pub new_recipient: Option<AgencyId>,
    pub event: Event,
    pub deliveries: Vec<NewDelivery>,
    pub at: OffsetDateTime,
    /// What becomes of the referral's acknowledgement deadline; written only if the change applies.
    pub deadline: DeadlineChange,
    /// Agencies told of the referral by this change (an escalation), who gain access to it with the
    /// role `notified`. An agency that already has access keeps its access as it was, and a new
    /// recipient ([`Change::new_recipient`]) is a party, not notified. Written only if the change
    /// applies.
    pub notified: Vec<AgencyId>,
}

/// What a change does to its referral's acknowledgement deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeadlineChange {
    /// The deadline stays as it is (or absent): what nearly every change does.
    #[default]
    Keep,
    /// The referral no longer waits for an acknowledgement: its deadline is removed.
    Clear,
    /// The timer is (re)set, for instance after an escalation fired: it falls due at `due_at`,
    /// `escalations` tiers having fired so far. The same timer follows an accepted referral's
    /// follow-up schedule: it falls due when the next visit is missed, `escalations` counting the
    /// visits missed in a row. A referral waits for an acknowledgement or follows a schedule,
    /// never both, so one timer serves both. An escalation past the last tier sets it to
    /// [`NEVER`], so that it stays in the overdue list until answered.
    Set {
        due_at: OffsetDateTime,
        escalations: u32,
    },
}

/// The due time of a timer that is kept but never falls due: an escalation past the last tier.
pub const NEVER: OffsetDateTime = time::macros::datetime!(9999-12-31 0:00 UTC);

/// A deadline that has passed ([`ReferralStore::due_deadlines`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDeadline {
    pub referral_id: ReferralId,
    /// When it fell due, to the microsecond (the stored precision).
    pub due_at: OffsetDateTime,
    /// Escalation tiers that fired so far.
    pub escalations: u32,
}

/// A referral as a decision about it needs it, read in one query: without its case file, with the
/// agencies that may see it and the kinds of its events so far, oldest first.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub referral: Referral,
    /// Every agency with access, in byte order: sender, recipients past and present, and agencies
    /// [notified](Change::notified) by an escalation. Later events are delivered to all of them.
    pub parties: Vec<AgencyId>,
    /// The agencies of `parties` that have access only because they were
    /// [notified](Change::notified), in byte order.
    pub notified: Vec<AgencyId>,
    pub history: Vec<crate::referral::EventKind>,
}

#[derive(Debug)]
pub enum SubmitOutcome {
    Created,
    /// A referral with this sender and `client_ref` already exists.
    Existing(Box<Referral>),
}

#[derive(Debug)]
pub enum ChangeOutcome {
    Recorded,
    /// The referral changed since it was read: decide again on the new state.
    Stale,
    /// This actor already used the request id: the event recorded then.
    Duplicate(Box<Event>),
}

/// The referrals, their history and the directory: what the use cases read, decide on and change.
/// Every write here is one transaction that also queues the change's deliveries in the
/// [`Mailbox`], so a referral and the messages about it are never out of step.
#[async_trait]
pub trait ReferralStore: Send + Sync + 'static {
    /// Replaces the directory document; returns its new version.
    async fn import_directory(&self, directory: &Directory) -> Result<i64, StoreError>;
    /// The current directory and its version; `None` before the first import.
    async fn directory(&self) -> Result<Option<(Directory, i64)>, StoreError>;
    async fn directory_version(&self) -> Result<Option<i64>, StoreError>;

    /// Inserts a new referral with its `submitted` event and deliveries, unless the sender already used
    /// its `client_ref`. With a `deadline`, the referral's acknowledgement deadline (no escalation
    /// fired yet) is written with it, in the same transaction; a submit that finds its
    /// `client_ref` taken ([`SubmitOutcome::Existing`]) writes none.
    async fn submit(
        &self,
        referral: &Referral,
        event: &Event,
        deliveries: &[NewDelivery],
        deadline: Option<OffsetDateTime>,
    ) -> Result<SubmitOutcome, StoreError>;
    async fn referral(&self, id: ReferralId) -> Result<Option<Referral>, StoreError>;
    async fn referral_by_client_ref(
        &self,
        sender: &AgencyId,
        client_ref: &ClientRef,
    ) -> Result<Option<Referral>, StoreError>;
    /// The referral, who may see it and what happened to it, in one round trip; `None` if unknown.
    async fn snapshot(&self, id: ReferralId) -> Result<Option<Snapshot>, StoreError>;
    /// The snapshots of these referrals, in one round trip where the backend allows; unknown ids
    /// are left out. What a batch of confirmations decides on.
    async fn snapshots(&self, ids: &[ReferralId]) -> Result<Vec<Snapshot>, StoreError> {
        let read = futures::future::try_join_all(ids.iter().map(|id| self.snapshot(*id))).await?;
        Ok(read.into_iter().flatten().collect())
    }
    /// Whether `agency` may see the referral (sender, recipient, a former recipient, or an agency
    /// [notified](Change::notified) of it).
    async fn has_access(&self, agency: &AgencyId, id: ReferralId) -> Result<bool, StoreError>;
    async fn history(&self, id: ReferralId) -> Result<Vec<Event>, StoreError>;
    async fn event(&self, id: uuid::Uuid) -> Result<Option<Event>, StoreError>;
    /// The referrals with these ids (with case files), each with its history, in one round trip per
    /// table: what a batch of deliveries carries. Unknown ids are left out.
    async fn referrals_with_history(
        &self,
        ids: &[ReferralId],
    ) -> Result<Vec<(Referral, Vec<Event>)>, StoreError>;
    /// The events with these ids; unknown ids are left out.
    async fn events(&self, ids: &[uuid::Uuid]) -> Result<Vec<Event>, StoreError>;
    /// Who each of these referrals is between now, in one round trip and without case files:
    /// what a delivery session checks a referral published earlier against, because a redirect
    /// since (through any broker) changes who may read it. Unknown ids are left out.
    async fn parties_now(&self, ids: &[ReferralId]) -> Result<Vec<PartiesNow>, StoreError>;
    async fn event_by_request(
        &self,
        actor: &AgencyId,
        request_id: &RequestId,
    ) -> Result<Option<Event>, StoreError>;
    /// The referrals `agency` may see, newest first, without case files.
    async fn list(&self, agency: &AgencyId, query: &ListQuery)
    -> Result<Vec<Referral>, StoreError>;
    async fn apply(&self, change: &Change) -> Result<ChangeOutcome, StoreError>;
    /// Drops everything sealed the store holds of a referral: its case file, and each event's
    /// sealed free text, re-sealed case file or follow-up part ([`Event::forget_sealed`]). For a
    /// referral whose consent was withdrawn; idempotent, so that a replay finishes what a crash
    /// cut short. Deliveries already on their way keep what they carry: their agencies delete it
    /// when the withdrawal reaches them.
    async fn forget_sealed(&self, id: ReferralId) -> Result<(), StoreError>;
    /// Applies each change as [`ReferralStore::apply`] would and returns their outcomes in order.
    /// Each change is atomic on its own; after an error, some of them may have been recorded, so a
    /// caller retries by deciding again. Every change is decided by the time this returns, the
    /// error included: none is still on its way to the database, to be recorded after the caller
    /// read what was. By default the changes go to [`ReferralStore::apply`] side by side; a backend
    /// may write them in fewer statements.
    async fn apply_all(&self, changes: &[Change]) -> Result<Vec<ChangeOutcome>, StoreError> {
        apply_each(self, changes).await
    }
    /// Up to `limit` acknowledgement deadlines due by `now` (`due_at <= now`), the oldest first.
    ///
    /// Nothing is claimed or locked: every broker may read the same deadline. Each caller turns
    /// one into a [`Change`] on the version it read (which sets or clears the deadline), and the
    /// version check lets only one of those changes apply, so a deadline fires once however many
    /// brokers see it; the others' changes come back [`ChangeOutcome::Stale`] and write nothing.
    /// Deadlines are stored rows, so they outlive a restart.
    async fn due_deadlines(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<DueDeadline>, StoreError>;
    /// The referral's acknowledgement deadline now, due or not; `None` if it has none (or the
    /// referral is unknown). What a caller checks a deadline it read among the due ones against.
    async fn deadline(&self, id: ReferralId) -> Result<Option<DueDeadline>, StoreError>;
    /// Every timer that is due by `now` or has fired before (an escalated referral still waiting
    /// for its acknowledgement, a follow-up with visits missed in a row), up to `limit`, the
    /// oldest due first: what the coordinators' overdue list is made from. A referral's timer is
    /// cleared when it is answered or closed, so these are the overdue referrals and only they.
    async fn overdue_timers(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<DueDeadline>, StoreError>;
    /// The referrals sent in `[from, to)`, and those with a follow-up, a missed visit or an
    /// escalation recorded in it, up to `limit`: what the figures of a period are computed from.
    async fn referrals_active_between(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<ReferralId>, StoreError>;
    /// A round trip to the database, for health checks.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Records an agency's sealing key, checked by the caller. A key already published keeps its
    /// time unless it comes with another certificate (the agency's certificate was rotated):
    /// then it is published again, now. Returns the key as stored.
    async fn publish_key(&self, key: &PublishedKey) -> Result<PublishedKey, StoreError>;
    /// The newest key of each agency in `agencies`, and every key whose id is in `key_ids`, each
    /// once.
    async fn agency_keys(
        &self,
        agencies: &[AgencyId],
        key_ids: &[Vec<u8>],
    ) -> Result<Vec<PublishedKey>, StoreError>;
}

/// An agency's public key for sealing to it, bound to its certificate (see `spean_seal::binding`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedKey {
    pub agency: AgencyId,
    /// SHA-256 of `public_key`.
    pub key_id: Vec<u8>,
    pub public_key: Vec<u8>,
    /// DER.
    pub certificate: Vec<u8>,
    pub signature: Vec<u8>,
    pub published_at: OffsetDateTime,
}

/// The kinds of event that count in a period's figures whenever their referral was sent.
pub const FIGURED_EVENTS: &str = "'follow_up', 'follow_up_overdue', 'escalated'";

/// The deliveries waiting for each agency, as delivery reads, hands out and settles them: the
/// mailbox that adapter sessions read on the embedded path, and the same table as the outbox that
/// the RabbitMQ relay leases and empties. Rows arrive only with a [`ReferralStore`] write.
#[async_trait]
pub trait Mailbox: Send + Sync + 'static {
    /// Up to `limit` mailbox entries for `agency` after position `after`, oldest first.
    async fn mailbox(
        &self,
        agency: &AgencyId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<MailboxEntry>, StoreError>;
    /// The entry, if `agency` still has it.
    async fn mailbox_entry(
        &self,
        agency: &AgencyId,
        delivery_id: uuid::Uuid,
    ) -> Result<Option<MailboxEntry>, StoreError>;
    /// Removes entries `agency`'s adapter confirmed; returns how many were still there.
    async fn settle(
        &self,
        agency: &AgencyId,
        delivery_ids: &[uuid::Uuid],
    ) -> Result<u64, StoreError>;
    /// Leases up to `limit` of the oldest mailbox rows that no relay holds, for `lease` by the
    /// database's clock: the outbox relay's claim, so that two relays never publish the same row at
    /// the same time.
    async fn lease_outbox(
        &self,
        limit: u32,
        lease: std::time::Duration,
    ) -> Result<Vec<MailboxEntry>, StoreError>;
    /// Whether mailbox rows keep [`NewDelivery::body`] and hand it back from
    /// [`Mailbox::lease_outbox`]. Worth it only with RabbitMQ, whose relay publishes the body as it
    /// is; a store that does not simply ignores bodies, and its relay loads every delivery.
    fn carries_deliveries(&self) -> bool {
        false
    }
    /// Deletes the rows of deliveries RabbitMQ confirmed, by delivery id: the relay publishes
    /// rows it leased and deliveries handed to it as they were written alike.
    async fn remove_published(&self, delivery_ids: &[uuid::Uuid]) -> Result<(), StoreError>;
    /// Clears out the outbox rows [`Mailbox::remove_published`] deleted, for a backend that leaves
    /// them behind until a vacuum: the relay calls it each time it has deleted many rows. A
    /// backend may skip it, for instance while another process is at it.
    async fn tidy_outbox(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A whole backend: the referral store and its mailbox, which share one database and one
/// transaction per write, so they are opened together and passed around as one `Arc<dyn Store>`,
/// with the revocations beside them. The methods of the traits are callable on `dyn Store` without
/// importing them.
pub trait Store: ReferralStore + Mailbox + RevocationStore + AuditStore {}

impl<S: ReferralStore + Mailbox + RevocationStore + AuditStore> Store for S {}

/// Pairs each referral with its events (given in history order, for any of the referrals).
pub(crate) fn with_histories(
    referrals: Vec<Referral>,
    events: Vec<Event>,
) -> Vec<(Referral, Vec<Event>)> {
    let mut histories: std::collections::HashMap<ReferralId, Vec<Event>> =
        std::collections::HashMap::with_capacity(referrals.len());
    for event in events {
        histories.entry(event.referral_id).or_default().push(event);
    }
    referrals
        .into_iter()
        .map(|r| {
            let history = histories.remove(&r.id).unwrap_or_default();
            (r, history)
        })
        .collect()
}

/// Unix microseconds, the stored form of every timestamp.
pub(crate) fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

/// A lease or hold in microseconds, the unit stored timestamps count in; one too long for an
/// `i64` lasts as long as one can.
fn duration_micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

pub(crate) fn from_micros(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// [`ReferralStore::apply`] for each change, side by side, waiting for every one of them before it returns
/// the first error, if any. `try_join_all` would return at the first error and drop the others
/// mid-flight, when their statements may already be on their way: they could then be recorded
/// after the caller had read the store and decided on what it saw.
pub(crate) async fn apply_each<S: ReferralStore + ?Sized>(
    store: &S,
    changes: &[Change],
) -> Result<Vec<ChangeOutcome>, StoreError> {
    futures::future::join_all(changes.iter().map(|c| store.apply(c)))
        .await
        .into_iter()
        .collect()
}
