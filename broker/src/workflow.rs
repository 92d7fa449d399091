//! The broker's use cases: submit, read, act on a referral, confirm a delivery.
//!
//! Each one checks who the caller is to the referral, asks [`super::state::decide`], and hands the
//! store one [`Change`] holding the new state, its event and its deliveries. A change made on a stale
//! read is decided again, so two concurrent actions cannot both win.

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::RwLock;

use crate::delivery::Dispatch;
use crate::directory::Directory;
use crate::error::{BrokerError, FieldError};
use crate::ids::{AgencyId, ReferralId};
use crate::referral::state::Role;
use crate::referral::state::{self, EventKind, State};
use crate::referral::{
    Action, Addressee, Audience, Code, DeliveryContent, Event, EventDetails, ListQuery,
    NewReferral, Referral, ReferralView, Sealed, Urgency, delegate_in,
};
use crate::store::{
    Change, ChangeOutcome, DeadlineChange, DeliveryRef, DueDeadline, NEVER, NewDelivery,
    PublishedKey, Snapshot, Store, SubmitOutcome,
};

mod consent;
mod coordination;
mod schedule;

use crate::wire;
pub use coordination::{Overdue, OverdueFilter, OverdueReason};

/// How many times a change is decided again after losing a race.
const MAX_ATTEMPTS: usize = 8;
/// How often the cached directory is compared with the stored one.
const DIRECTORY_CHECK: Duration = Duration::from_secs(2);

/// Limits applied to what callers send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_case_file_bytes: usize,
}

struct CachedDirectory {
    directory: Arc<Directory>,
    version: Option<i64>,
    checked: Instant,
}

pub struct Workflow {
    store: Arc<dyn Store>,
    dispatch: Arc<Dispatch>,
    limits: Limits,
    directory: RwLock<CachedDirectory>,
    /// Whether deliveries are encoded when their change is written and carried in the outbox
    /// rows ([`Workflow::carrying_deliveries`]).
    carry: bool,
    /// How long a carried delivery's row is held for the relay of the broker that wrote it.
    hold: Duration,
    /// Where every decision reads the time: deadlines are decided on it, so tests drive it.
    clock: Arc<dyn Clock>,
}

/// The time, as every decision of the workflow reads it. The broker runs on [`SystemClock`]; a
/// test can pass its own to [`Workflow::with_clock`] and move time on at will.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

/// The machine's clock, at the store's precision (microseconds), so that a time read back from
/// the store compares equal to the one written.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        crate::store::from_micros(crate::store::micros(OffsetDateTime::now_utc()))
    }
}

/// Deadlines read and escalated per pass of [`Workflow::escalate_due`].
const ESCALATION_BATCH: u32 = 100;

impl Workflow {
    pub async fn new(
        store: Arc<dyn Store>,
        dispatch: Arc<Dispatch>,
        limits: Limits,
    ) -> Result<Self, BrokerError> {
        let (directory, version) = match store.directory().await? {
            Some((d, v)) => (d, Some(v)),
            None => (Directory::default(), None),
        };
        Ok(Self {
            store,
            dispatch,
            limits,
            directory: RwLock::new(CachedDirectory {
                directory: Arc::new(directory),
                version,
                checked: Instant::now(),
            }),
            carry: false,
            hold: Duration::ZERO,
            clock: Arc::new(SystemClock),
        })
    }

    /// Reads the time from `clock` instead of the machine's: for tests that move time on.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Encodes each delivery when its change is written, for the store to carry in its outbox row
    /// ([`crate::store::NewDelivery::body`]), if the store does. For the RabbitMQ relay: it then
    /// publishes a batch as it leased it, without reading the referrals and events back, which
    /// takes a round trip to the database out of its serial cycle. Embedded delivery reads its
    /// mailbox rows as they are and has no use for it.
    ///
    /// Carried deliveries are also written held ([`crate::store::NewDelivery::held`]) and handed
    /// to this process's relay once the change is committed ([`Dispatch::queued`]), which
    /// publishes them without leasing their rows: the relay's handoff.
    ///
    /// `hold` is how long such a row stays out of every relay's lease: the relay's own lease, so
    /// that a handoff that did not happen is published by any relay as late as a lease that ran
    /// out. A policy value given at startup, so that this layer does not reach into delivery's.
    pub fn carrying_deliveries(mut self, carry: bool, hold: Duration) -> Self {
        self.carry = carry && self.store.carries_deliveries();
        self.hold = hold;
        self
    }

    /// How long a carried delivery written now is held for the relay's handoff: only while the
    /// relay can take it ([`Dispatch::hold`]).
    fn held(&self) -> Option<std::time::Duration> {
        self.dispatch.hold(self.hold).filter(|_| self.carry)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The directory, reloaded when another process imported a new one.
    pub async fn directory(&self) -> Result<Arc<Directory>, BrokerError> {
        {
            let cached = self.directory.read().await;
            if cached.checked.elapsed() < DIRECTORY_CHECK {
                return Ok(cached.directory.clone());
            }
        }
        let mut cached = self.directory.write().await;
        if cached.checked.elapsed() >= DIRECTORY_CHECK {
            let version = self.store.directory_version().await?;
            if version != cached.version
                && let Some((directory, version)) = self.store.directory().await?
            {
                cached.directory = Arc::new(directory);
                cached.version = Some(version);
            }
            cached.checked = Instant::now();
        }
        Ok(cached.directory.clone())
    }

    /// Records an agency's sealing key, whose binding the gateway checked.
    pub async fn publish_key(&self, key: PublishedKey) -> Result<PublishedKey, BrokerError> {
        Ok(self.store.publish_key(&key).await?)
    }

    /// Published keys: the newest of each agency named, and each key named by its id.
    pub async fn agency_keys(
        &self,
        agencies: &[AgencyId],
        key_ids: &[Vec<u8>],
    ) -> Result<Vec<PublishedKey>, BrokerError> {
        Ok(self.store.agency_keys(agencies, key_ids).await?)
    }

    /// Maps a verified certificate's common name to a directory agency.
    pub async fn authenticate(&self, common_name: &str) -> Result<AgencyId, BrokerError> {
        let unknown = || {
            BrokerError::Forbidden(
                "the client certificate names no agency in the directory".to_owned(),
            )
        };
        let agency = AgencyId::parse("certificate", common_name).map_err(|_| unknown())?;
        if self.directory().await?.agency(&agency).is_none() {
            return Err(unknown());
        }
        Ok(agency)
    }

    #[tracing::instrument(skip_all, fields(sender = %sender, client_ref = %new.client_ref), err(Display))]
    pub async fn submit(
        &self,
        sender: &AgencyId,
        new: NewReferral,
    ) -> Result<(ReferralView, Vec<Event>, bool), BrokerError> {
        if new.case_file.len() > self.limits.max_case_file_bytes {
            return Err(FieldError::new(
                "case_file",
                format!(
                    "is {} bytes; the limit is {}",
                    new.case_file.len(),
                    self.limits.max_case_file_bytes
                ),
            )
            .into());
        }
        let fingerprint = new.fingerprint();
        // No read first: the store recognises a repeated `client_ref` as it inserts.
        let Routed {
            recipient,
            candidates,
        } = match self.route(sender, &new).await {
            Ok(routed) => routed,
            Err(e) => {
                // A retry of a referral accepted earlier gets the same answer, even if the
                // directory has changed since.
                if let Some(existing) = self
                    .store
                    .referral_by_client_ref(sender, &new.client_ref)
                    .await?
                {
                    return self.resubmitted(sender, existing, &fingerprint).await;
                }
                return Err(e);
            }
        };

        let now = self.now();
        consent::check_submit(&*self.directory().await?, &new, now)?;
        let case_file =
            sealed_for_readers(sender, new.case_file, recipient.iter().chain(&candidates))?;
        let deadline = self
            .acknowledgement_deadline(&new.kind, new.urgency)
            .await?
            .map(|d| now + d);
        let referral = Referral {
            id: ReferralId::new(),
            client_ref: new.client_ref,
            fingerprint,
            sender: sender.clone(),
            addressee: new.addressee,
            recipient,
            kind: new.kind,
            urgency: new.urgency,
            subject: new.subject,
            client_pseudonym: new.client_pseudonym,
            candidates,
            notify: new.notify,
            follows: new.follows,
            consent: Some(new.consent),
            state: State::Sent,
            version: 1,
            created_at: now,
            updated_at: now,
            case_file,
        };
        // The emergency exception is flagged where every reader of the history sees it.
        let flag = referral
            .consent
            .as_ref()
            .and_then(|c| c.emergency_exception())
            .map_or(EventDetails::None, |reason| {
                EventDetails::EmergencyException {
                    reason: reason.clone(),
                }
            });
        let event = Event::recorded(
            referral.id,
            EventKind::Submitted,
            sender.clone(),
            now,
            State::Sent,
            flag,
        );
        // The recipient, or every candidate of a broadcast, and the agencies named to be notified:
        // each gets the referral as it may see it.
        let deliveries: Vec<NewDelivery> = referral
            .recipient
            .iter()
            .chain(&referral.candidates)
            .chain(&referral.notify)
            .map(|agency| NewDelivery {
                id: uuid::Uuid::now_v7(),
                agency: agency.clone(),
                event_id: None,
                body: self.carry.then(|| {
                    wire::carried(DeliveryContent::Referral(
                        Box::new(referral.clone().as_seen_by(agency)),
                        vec![event.clone()],
                    ))
                }),
                held: self.held(),
            })
            .collect();
        match self
            .store
            .submit(&referral, &event, &deliveries, deadline)
            .await?
        {
            SubmitOutcome::Created => {
                tracing::info!(referral_id = %referral.id, recipients = deliveries.len(), "referral submitted");
                self.dispatch.queued(referral.id, &deliveries);
                Ok((referral.as_seen_by(sender), vec![event], true))
            }
            SubmitOutcome::Existing(existing) => {
                self.resubmitted(sender, *existing, &referral.fingerprint)
                    .await
            }
        }
    }

    /// Where a new referral goes, checked against the directory: the agency it names, the first
    /// provider of the service in the province, or for a broadcast every provider there; and
    /// whether the agencies it names to be notified and the referral it follows may be named.
    async fn route(&self, sender: &AgencyId, new: &NewReferral) -> Result<Routed, BrokerError> {
        let directory = self.directory().await?;
        if !directory.has_kind(&new.kind) {
            return Err(FieldError::new(
                "kind",
                format!(
                    "{:?} is not a referral kind in the directory",
                    new.kind.as_str()
                ),
            )
            .into());
        }
        let routed = match &new.addressee {
            Addressee::Agency(id) => {
                if directory.agency(id).is_none() {
                    return Err(FieldError::new(
                        "recipient.agency_id",
                        format!("{id} is not an agency in the directory"),
                    )
                    .into());
                }
                if id == sender {
                    return Err(
                        FieldError::new("recipient", "an agency cannot refer to itself").into(),
                    );
                }
                Routed {
                    recipient: Some(id.clone()),
                    candidates: Vec::new(),
                }
            }
            Addressee::Service { service, province } => {
                let mut providers = directory
                    .providers(service, province)
                    .into_iter()
                    .filter(|a| &a.id != sender)
                    .map(|a| a.id.clone());
                let unroutable = || {
                    BrokerError::Unroutable(format!(
                        "no agency in the directory offers {service} in province {province}"
                    ))
                };
                if new.is_broadcast() {
                    let candidates: Vec<AgencyId> = providers.collect();
                    if candidates.is_empty() {
                        return Err(unroutable());
                    }
                    Routed {
                        recipient: None,
                        candidates,
                    }
                } else {
                    Routed {
                        recipient: Some(providers.next().ok_or_else(unroutable)?),
                        candidates: Vec::new(),
                    }
                }
            }
        };
        for agency in &new.notify {
            let refused = |reason: String| -> BrokerError {
                FieldError::new("notify_agency_ids", reason).into()
            };
            if directory.agency(agency).is_none() {
                return Err(refused(format!(
                    "{agency} is not an agency in the directory"
                )));
            }
            if agency == sender {
                return Err(refused(format!(
                    "{agency} is the sender; it sees the referral whole already"
                )));
            }
            if routed.recipient.as_ref() == Some(agency) || routed.candidates.contains(agency) {
                return Err(refused(format!(
                    "{agency} receives the referral; an agency cannot also be notified of it"
                )));
            }
        }
        if let Some(follows) = new.follows {
            self.check_follows(sender, new, follows).await?;
        }
        Ok(routed)
    }

    /// Checks that the referral a new one `follows` is one `sender` sent, about the same client:
    /// a link only the sender can make, to its own referrals.
    async fn check_follows(
        &self,
        sender: &AgencyId,
        new: &NewReferral,
        follows: ReferralId,
    ) -> Result<(), BrokerError> {
        const FIELD: &str = "follows_referral_id";
        let followed = self
            .store
            .referral(follows)
            .await?
            .filter(|r| &r.sender == sender)
            .ok_or_else(|| {
                FieldError::new(
                    FIELD,
                    format!("{follows} is not a referral this agency sent"),
                )
            })?;
        if let Some(pseudonym) = &followed.client_pseudonym
            && new.client_pseudonym.as_ref() != Some(pseudonym)
        {
            return Err(FieldError::new(
                "client_pseudonym",
                format!(
                    "must be {pseudonym}, the client_pseudonym of the referral it follows ({follows})"
                ),
            )
            .into());
        }
        Ok(())
    }

    async fn resubmitted(
        &self,
        sender: &AgencyId,
        existing: Referral,
        fingerprint: &str,
    ) -> Result<(ReferralView, Vec<Event>, bool), BrokerError> {
        if existing.fingerprint != fingerprint {
            return Err(BrokerError::AlreadyExists(format!(
                "client_ref: {} was already used for referral {} with other content",
                existing.client_ref, existing.id
            )));
        }
        let history = self.store.history(existing.id).await?;
        Ok((existing.as_seen_by(sender), history, false))
    }

    /// A referral and its history as `agency` may see it ([`Referral::as_seen_by`]).
    pub async fn get(
        &self,
        agency: &AgencyId,
        id: ReferralId,
    ) -> Result<(ReferralView, Vec<Event>), BrokerError> {
        let referral = self.visible(agency, id).await?;
        let history = self.store.history(id).await?;
        let standing = Audience::outside_party(&history, agency);
        Ok((referral.as_seen_by_as(agency, standing), history))
    }

    async fn visible(&self, agency: &AgencyId, id: ReferralId) -> Result<Referral, BrokerError> {
        let not_found = || BrokerError::NotFound(format!("referral {id} not found"));
        if !self.store.has_access(agency, id).await? {
            return Err(not_found());
        }
        self.store.referral(id).await?.ok_or_else(not_found)
    }

    /// The referrals `agency` may see, each as it may see it: a referral it is only told of comes
    /// without what only its parties read (the client's pseudonym).
    pub async fn list(
        &self,
        agency: &AgencyId,
        query: &ListQuery,
    ) -> Result<Vec<Referral>, BrokerError> {
        Ok(self
            .store
            .list(agency, query)
            .await?
            .into_iter()
            .map(|r| r.as_seen_by(agency).into_referral())
            .collect())
    }

    /// Records a feedback action; a retry with the same request id returns the first event.
    #[tracing::instrument(skip_all, fields(referral_id = %action.referral_id, action = %action.kind, actor = %actor), err(Display))]
    pub async fn act(
        &self,
        actor: &AgencyId,
        action: Action,
    ) -> Result<(Event, State), BrokerError> {
        match self.decide_and_write(actor, &action).await {
            // The same request sent twice at once (an adapter's daemon and a command) can be
            // recorded by the other between this one's look for its id and its decision, which
            // then finds the referral already moved on: it is a replay, and answers as one.
            Err(refused @ (BrokerError::Transition(_) | BrokerError::Precondition(_))) => {
                match self
                    .store
                    .event_by_request(actor, &action.request_id)
                    .await?
                {
                    Some(done) if done.kind == action.kind => self.replayed(done, &action).await,
                    _ => Err(refused),
                }
            }
            decided => decided,
        }
    }

    /// [`Workflow::act`]'s decision and write, retried while the referral changes under it.
    async fn decide_and_write(
        &self,
        actor: &AgencyId,
        action: &Action,
    ) -> Result<(Event, State), BrokerError> {
        for _ in 0..MAX_ATTEMPTS {
            if let Some(done) = self
                .store
                .event_by_request(actor, &action.request_id)
                .await?
            {
                return self.replayed(done, action).await;
            }
            let snapshot = self
                .store
                .snapshot(action.referral_id)
                .await?
                .filter(|s| s.parties.contains(actor))
                .ok_or_else(|| {
                    BrokerError::NotFound(format!("referral {} not found", action.referral_id))
                })?;
            let referral = &snapshot.referral;
            // The history, read only when the action needs it: to know who the follow-up is
            // delegated to (a caller outside the two parties, a delegation), or how a
            // broadcast's candidates answered.
            let history = if !matches!(
                referral.role_of(actor),
                Some(Role::Sender | Role::Recipient)
            ) || matches!(
                action.kind,
                EventKind::FollowUpDelegated | EventKind::DelegationRevoked
            ) {
                Some(self.store.history(referral.id).await?)
            } else {
                None
            };
            let delegate = history.as_deref().and_then(delegate_in);
            let role = match referral.role_of(actor) {
                Some(role) => role,
                None if delegate.as_ref() == Some(actor) => Role::Delegate,
                None => return Err(outside_party(&snapshot, actor)),
            };
            // A sender whose redirect of its broadcast crossed a candidate's acceptance lost a
            // race, not a permission. (Once the sender sent it on, it is a one-to-one referral.)
            if role == Role::Sender
                && action.kind == EventKind::Redirected
                && !referral.candidates.is_empty()
                && snapshot.history.contains(&EventKind::Accepted)
                && !snapshot.history.contains(&EventKind::Redirected)
                && let Some(winner) = &referral.recipient
            {
                return Err(BrokerError::Precondition(format!(
                    "referral {} was accepted by {winner}; only its recipient redirects it now",
                    referral.id
                )));
            }
            let transition = if referral.is_open_broadcast() {
                if role == Role::Candidate {
                    answered_before(
                        referral,
                        history.as_deref().unwrap_or_default(),
                        actor,
                        action.kind,
                    )?;
                }
                state::decide_broadcast(referral.state, role, action.kind)?
            } else {
                state::decide(referral.state, role, action.kind)?
            };
            // One who may act so: what it sealed must be its own, and the consent must allow it.
            sealed_by(actor, action)?;
            consent::check_action(&snapshot, action, self.now())?;
            let new_recipient = match &action.details {
                EventDetails::Redirected { to, .. } => {
                    Some(self.redirect_target(referral, to).await?)
                }
                // The first acceptance of a broadcast makes its candidate the recipient.
                EventDetails::Accepted { .. } if role == Role::Candidate => Some(actor.clone()),
                _ => None,
            };
            let details = match &action.details {
                EventDetails::FollowUpDelegated { to, .. } => {
                    self.delegation_target(referral, to, delegate.as_ref())
                        .await?;
                    action.details.clone()
                }
                _ if action.kind == EventKind::DelegationRevoked => {
                    EventDetails::DelegationRevoked {
                        from: delegate.clone().ok_or_else(|| {
                            BrokerError::Precondition(format!(
                                "the follow-up of referral {} is not delegated; there is nothing to revoke",
                                referral.id
                            ))
                        })?,
                    }
                }
                details => details.clone(),
            };
            let now = self.now();
            let (mut timer, next_visit) = self
                .timer_after(referral, action.kind, &details, now)
                .await?;
            // The last candidate to decline a broadcast sets its timer to fall due now: the
            // broker tells the sender that no candidate accepted as a timer that fell due, so
            // that it is recorded once, and still if this process stops before it does.
            let none_left = role == Role::Candidate
                && action.kind == EventKind::Declined
                && every_candidate_declined(
                    referral,
                    history.as_deref().unwrap_or_default(),
                    Some(actor),
                );
            if role == Role::Candidate && action.kind == EventKind::Declined && !none_left {
                // One candidate's decline answers for itself: the others' deadline runs on.
                timer = DeadlineChange::Keep;
            }
            if none_left {
                let escalations = self
                    .store
                    .deadline(referral.id)
                    .await?
                    .map_or(0, |d| d.escalations);
                timer = DeadlineChange::Set {
                    due_at: now,
                    escalations,
                };
            }
            let event = Event {
                id: uuid::Uuid::now_v7(),
                referral_id: referral.id,
                kind: action.kind,
                actor: actor.clone(),
                actor_person: action.actor_person.clone(),
                at: now,
                note: action.note.clone(),
                state_after: transition.to,
                details,
                request_id: Some(action.request_id.clone()),
                next_visit,
                sealed_text: action.sealed_text.clone(),
            };
            let told: Vec<AgencyId> = match &event.details {
                EventDetails::FollowUpDelegated { to, .. } => vec![to.clone()],
                _ => Vec::new(),
            };
            let mut change = change_for(
                &snapshot,
                event.clone(),
                transition.to,
                new_recipient,
                &told,
                self.carry,
                self.held(),
            );
            change.deadline = timer;
            match self.write(&change).await? {
                ChangeOutcome::Recorded => {
                    if none_left {
                        self.escalate_now(referral.id).await?;
                    }
                    if event.kind == EventKind::ConsentWithdrawn {
                        self.store.forget_sealed(referral.id).await?;
                    }
                    return Ok((event, transition.to));
                }
                ChangeOutcome::Duplicate(done) => return self.replayed(*done, action).await,
                ChangeOutcome::Stale => continue,
            }
        }
        Err(BrokerError::Contended)
    }

    async fn replayed(&self, done: Event, action: &Action) -> Result<(Event, State), BrokerError> {
        // A revocation is asked without details: the broker fills in whom it was taken from.
        let same_details = match (&done.details, &action.details) {
            (EventDetails::DelegationRevoked { .. }, EventDetails::None) => {
                action.kind == EventKind::DelegationRevoked
            }
            (stored, asked) => stored == asked,
        };
        // A withdrawal of consent forgets every sealed text of its referral, its own too: there
        // is nothing left to compare a replay's with (a daemon and a command sending the same
        // queued withdrawal at once).
        let same_text = done.sealed_text == action.sealed_text
            || (done.kind == EventKind::ConsentWithdrawn && done.sealed_text.is_empty());
        if done.referral_id != action.referral_id
            || done.kind != action.kind
            || !same_details
            || done.note != action.note
            || !same_text
        {
            return Err(BrokerError::AlreadyExists(format!(
                "request_id: {} was already used for another action",
                action.request_id
            )));
        }
        // A withdrawal replayed after a crash cut its forgetting short finishes it.
        if done.kind == EventKind::ConsentWithdrawn {
            self.store.forget_sealed(done.referral_id).await?;
        }
        let state = self
            .store
            .referral(done.referral_id)
            .await?
            .map(|r| r.state)
            .unwrap_or(done.state_after);
        Ok((done, state))
    }

    async fn redirect_target(
        &self,
        referral: &Referral,
        to: &AgencyId,
    ) -> Result<AgencyId, BrokerError> {
        self.third_agency(
            "redirect.to_agency_id",
            referral,
            to,
            "must be another agency than the sender and the current recipient",
        )
        .await?;
        Ok(to.clone())
    }

    /// Checks that `to`, named in `field` as the agency a referral goes to next (a redirect, a
    /// delegation), is in the directory and is neither of the referral's two parties.
    async fn third_agency(
        &self,
        field: &'static str,
        referral: &Referral,
        to: &AgencyId,
        not_a_party: &'static str,
    ) -> Result<(), BrokerError> {
        if self.directory().await?.agency(to).is_none() {
            return Err(
                FieldError::new(field, format!("{to} is not an agency in the directory")).into(),
            );
        }
        if referral.recipient.as_ref() == Some(to) || to == &referral.sender {
            return Err(FieldError::new(field, not_a_party).into());
        }
        Ok(())
    }

    /// The agency a follow-up is delegated to, checked: in the directory, neither party, and
    /// only while no delegation is in force (one agency makes the visits at a time).
    async fn delegation_target(
        &self,
        referral: &Referral,
        to: &AgencyId,
        current: Option<&AgencyId>,
    ) -> Result<(), BrokerError> {
        self.third_agency(
            "delegation.to_agency_id",
            referral,
            to,
            "must be another agency than the sender and the recipient",
        )
        .await?;
        if let Some(current) = current {
            return Err(BrokerError::Precondition(format!(
                "the follow-up of referral {} is delegated to {current}; revoke that delegation first",
                referral.id
            )));
        }
        Ok(())
    }

    /// Writes one change, then sends its deliveries on their way if it was recorded.
    async fn write(&self, change: &Change) -> Result<ChangeOutcome, BrokerError> {
        let outcome = self.store.apply(change).await?;
        if matches!(outcome, ChangeOutcome::Recorded) {
            self.announce(change);
        }
        Ok(outcome)
    }

    /// Writes the `delivered` event a confirmation records, with a delivery of it to every party,
    /// then wakes their sessions. A delivery moves no timer: the deadline runs on until a person
    /// answers, as in a batch of confirmations ([`Workflow::confirmed`]).
    async fn record_delivery(
        &self,
        snapshot: &Snapshot,
        event: Event,
        to: State,
    ) -> Result<ChangeOutcome, BrokerError> {
        let change = change_for(snapshot, event, to, None, &[], self.carry, self.held());
        self.write(&change).await
    }

    /// How long a referral of `kind` and `urgency` waits for its recipient's acknowledgement
    /// before it is escalated; `None` when the directory sets no escalation tiers, so that no
    /// deadline is kept for nothing.
    async fn acknowledgement_deadline(
        &self,
        kind: &Code,
        urgency: Urgency,
    ) -> Result<Option<Duration>, BrokerError> {
        let directory = self.directory().await?;
        Ok((directory.escalation_tiers() > 0)
            .then(|| directory.acknowledgement_deadline(kind, urgency)))
    }

    /// Escalates every referral whose acknowledgement deadline has passed, up to
    /// [`ESCALATION_BATCH`] of them; returns how many it escalated. Any broker may run this at
    /// any time, several at once: each escalation is a versioned change, so of two brokers (or of
    /// an escalation and the acknowledgement that crosses it) exactly one writes, and the other
    /// finds the deadline moved on or gone.
    pub async fn escalate_due(&self) -> Result<usize, BrokerError> {
        let now = self.now();
        let mut escalated = 0;
        for due in self.store.due_deadlines(now, ESCALATION_BATCH).await? {
            if self.escalate(&due, now).await? {
                escalated += 1;
            }
        }
        Ok(escalated)
    }

    /// Escalates one referral whose deadline passed, unless another broker or an acknowledgement
    /// got there first; true if this call recorded the escalation.
    async fn escalate(&self, due: &DueDeadline, now: OffsetDateTime) -> Result<bool, BrokerError> {
        let directory = self.directory().await?;
        for _ in 0..MAX_ATTEMPTS {
            let Some(snapshot) = self.store.snapshot(due.referral_id).await? else {
                return Ok(false);
            };
            let referral = &snapshot.referral;
            let Some(current) = self.store.deadline(referral.id).await? else {
                return Ok(false);
            };
            if current != *due {
                // Moved on by another broker, or stopped by an answer, since it was read.
                return Ok(false);
            }
            let open_broadcast = if referral.is_open_broadcast() {
                Some(self.store.history(referral.id).await?)
            } else {
                None
            };
            let change = match (referral.state, open_broadcast) {
                (State::Sent | State::Delivered | State::Acknowledged, Some(history))
                    if every_candidate_declined(referral, &history, None) =>
                {
                    no_candidate_accepted(&snapshot, now, self.carry, self.held())
                }
                (State::Sent | State::Delivered, _) => {
                    escalation(&directory, &snapshot, due, now, self.carry, self.held())
                }
                (State::Accepted | State::InProgress, _) => {
                    let history = self.store.history(referral.id).await?;
                    let responsible = match delegate_in(&history).or(referral.recipient.clone()) {
                        Some(responsible) => responsible,
                        None => return Ok(false),
                    };
                    schedule::missed_visit(
                        &directory,
                        &snapshot,
                        responsible,
                        due,
                        now,
                        self.carry,
                        self.held(),
                    )
                }
                // A closed referral's timer is cleared with the change that closes it.
                _ => return Ok(false),
            };
            match self.store.apply(&change).await? {
                ChangeOutcome::Recorded => {
                    match &change.event.details {
                        EventDetails::Escalated { tier, .. } => {
                            tracing::warn!(referral_id = %referral.id, waiting_on = %change.event.actor, tier, "acknowledgement deadline passed; escalated");
                        }
                        EventDetails::FollowUpOverdue { .. } => {
                            tracing::warn!(referral_id = %referral.id, responsible = %change.event.actor, "follow-up visit missed");
                        }
                        _ => {
                            tracing::warn!(referral_id = %referral.id, "every candidate declined the broadcast");
                        }
                    }
                    self.announce(&change);
                    return Ok(true);
                }
                ChangeOutcome::Duplicate(_) => return Ok(false),
                ChangeOutcome::Stale => continue,
            }
        }
        Err(BrokerError::Contended)
    }

    /// Fires the referral's timer now if it is due: what the last decline of a broadcast asks
    /// for, so that its sender hears at once that no candidate accepted. Another broker's sweep
    /// may get there first; the versioned change lets only one record it.
    async fn escalate_now(&self, id: ReferralId) -> Result<(), BrokerError> {
        let now = self.now();
        if let Some(due) = self.store.deadline(id).await?
            && due.due_at <= now
        {
            self.escalate(&due, now).await?;
        }
        Ok(())
    }

    /// Logs a recorded change and sends its deliveries on their way: wakes the sessions of
    /// everyone who hears of it, or hands carried deliveries to the relay.
    fn announce(&self, change: &Change) {
        tracing::info!(referral_id = %change.referral_id, event = %change.event.kind, state = %change.state, "referral changed");
        self.dispatch.queued(change.referral_id, &change.deliveries);
    }

    /// The adapter of `agency` stored these deliveries and confirmed them (together, as they arrived
    /// on its stream). For a referral itself this is the moment it is delivered: the broker records
    /// that once. The caller then settles the deliveries with its backend, so a crash in between
    /// only causes a harmless redelivery. The referrals are decided on from one read of them all
    /// and written with one [`ReferralStore::apply_all`](crate::store::ReferralStore::apply_all): on PostgreSQL a burst of confirmations costs two
    /// statements, not two per referral. One that changed between the read and the write is
    /// decided again on its own.
    #[tracing::instrument(skip_all, fields(agency = %agency, deliveries = deliveries.len()), err(Display))]
    pub async fn confirmed(
        &self,
        agency: &AgencyId,
        deliveries: &[DeliveryRef],
    ) -> Result<(), BrokerError> {
        let mut ids: Vec<ReferralId> = deliveries
            .iter()
            .filter(|d| d.event_id.is_none())
            .map(|d| d.referral_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if let [id] = ids[..] {
            return self.record_delivered(agency, id).await;
        }
        if ids.is_empty() {
            return Ok(());
        }
        let mut changes = Vec::with_capacity(ids.len());
        for snapshot in self.store.snapshots(&ids).await? {
            if let Some((event, to)) = delivered_event(agency, &snapshot, self.now()) {
                changes.push(change_for(
                    &snapshot,
                    event,
                    to,
                    None,
                    &[],
                    self.carry,
                    self.held(),
                ));
            }
        }
        let outcomes = self.store.apply_all(&changes).await?;
        for (change, outcome) in changes.iter().zip(outcomes) {
            match outcome {
                ChangeOutcome::Recorded => self.announce(change),
                ChangeOutcome::Stale => self.record_delivered(agency, change.referral_id).await?,
                // A recorded delivery carries no request id, so it cannot repeat one.
                ChangeOutcome::Duplicate(_) => {}
            }
        }
        Ok(())
    }

    async fn record_delivered(&self, agency: &AgencyId, id: ReferralId) -> Result<(), BrokerError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(snapshot) = self.store.snapshot(id).await? else {
                return Ok(());
            };
            let Some((event, to)) = delivered_event(agency, &snapshot, self.now()) else {
                return Ok(());
            };
            match self.record_delivery(&snapshot, event, to).await? {
                ChangeOutcome::Stale => continue,
                _ => return Ok(()),
            }
        }
        Err(BrokerError::Contended)
    }
}

/// The current time as the store keeps it, in whole microseconds: what a caller is answered, what a
/// carried delivery holds and what a later read returns are then the same instant.
/// The `delivered` event to record for a referral `agency` confirmed, and the state it leaves; `None`
/// if nothing is to be recorded (the agency is not its recipient, or this delivery is recorded).
fn delivered_event(
    agency: &AgencyId,
    snapshot: &Snapshot,
    at: OffsetDateTime,
) -> Option<(Event, State)> {
    let referral = &snapshot.referral;
    // A broadcast's first delivery to any of its candidates is the one recorded.
    let receives = match &referral.recipient {
        Some(recipient) => recipient == agency,
        None => referral.candidates.contains(agency),
    };
    if !receives || !state::records_delivery(snapshot.history.iter().copied()) {
        return None;
    }
    let to = state::after_delivery(snapshot.referral.state);
    let event = Event::recorded(
        referral.id,
        EventKind::Delivered,
        agency.clone(),
        at,
        to,
        EventDetails::None,
    );
    Some((event, to))
}

/// Why an agency that may see a referral but is neither its sender, its recipient nor the
/// delegate of its follow-up cannot act on it.
fn outside_party(snapshot: &Snapshot, actor: &AgencyId) -> BrokerError {
    let referral = &snapshot.referral;
    let id = referral.id;
    // A candidate too late: the question is closed, which is a state, not a permission.
    if referral.candidates.contains(actor)
        && let Some(recipient) = &referral.recipient
    {
        // Only its sender redirects a broadcast, and only while no candidate has accepted it.
        return BrokerError::Precondition(if snapshot.history.contains(&EventKind::Redirected) {
            format!(
                "referral {id} was sent on to {recipient} by its sender; it is no longer open to its candidates"
            )
        } else {
            format!(
                "referral {id} was taken by another agency ({recipient}); it is no longer open to its candidates"
            )
        });
    }
    BrokerError::Forbidden(if snapshot.notified.contains(actor) {
        format!(
            "{actor} is notified of referral {id} (named by its sender, or by an escalation, a missed visit or a delegation since taken back); only its sender and recipient act on it"
        )
    } else {
        format!("referral {id} was redirected away from {actor}; it can no longer act on it")
    })
}

/// The change that records `event` on the referral read in `snapshot`, with a delivery of the event
/// to every party (and, on redirect, the referral itself to the new recipient). The agencies
/// `told` of the referral by this change (an escalation, a missed visit, a delegation) gain
/// access as notified parties, and get the event and the referral itself. With `carry`, the
/// event's deliveries carry it encoded, and are `held` for the relay's handoff if that is given.
/// A referral sent by a change never does: the snapshot has no case file, so it is loaded when it
/// is published.
fn change_for(
    snapshot: &Snapshot,
    event: Event,
    to: State,
    new_recipient: Option<AgencyId>,
    told: &[AgencyId],
    carry: bool,
    held: Option<std::time::Duration>,
) -> Change {
    let referral = &snapshot.referral;
    let mut parties = snapshot.parties.clone();
    let mut deliveries: Vec<NewDelivery> = Vec::new();
    let referral_to = |agency: &AgencyId| NewDelivery {
        id: uuid::Uuid::now_v7(),
        agency: agency.clone(),
        event_id: None,
        body: None,
        held: None,
    };
    if let Some(new) = &new_recipient {
        if !parties.contains(new) {
            parties.push(new.clone());
        }
        deliveries.push(referral_to(new));
    }
    // Each agency told gets the referral as it now stands, even one told before: how it stands
    // to the referral may have changed (a department notified by an escalation becomes the
    // delegate of its visits), and its copy says so.
    for agency in told {
        if !parties.contains(agency) {
            parties.push(agency.clone());
        }
        deliveries.push(referral_to(agency));
    }
    // Who the referral is with once this change is written decides what each party reads of the
    // event: a former recipient gets it through the view, without what people wrote.
    let recipient = new_recipient.as_ref().or(referral.recipient.as_ref());
    let body = carry.then(|| wire::carried(DeliveryContent::Event(Box::new(event.clone()))));
    deliveries.extend(parties.iter().map(|agency| {
        let audience = Audience::of_event(&event, &referral.sender, recipient, agency);
        let body = if audience.reads_notes() || &event.actor == agency {
            body.clone()
        } else {
            carry.then(|| {
                let seen = event.clone().as_seen_by(agency, audience);
                wire::carried(DeliveryContent::Event(Box::new(seen)))
            })
        };
        NewDelivery {
            id: uuid::Uuid::now_v7(),
            agency: agency.clone(),
            event_id: Some(event.id),
            body,
            held: held.filter(|_| carry),
        }
    }));
    Change {
        referral_id: referral.id,
        expected_version: referral.version,
        state: to,
        new_recipient,
        at: event.at,
        event,
        deliveries,
        deadline: DeadlineChange::Keep,
        notified: told.to_vec(),
    }
}

/// The escalation of the referral read in `snapshot`, whose deadline `due` passed: the event (the
/// recipient's silence, at `now`), delivered to every party and to the agencies of the tier,
/// which become notified parties; and the next deadline, one tier on. After the last tier the
/// timer is kept at [`NEVER`], so that the referral stays on the overdue list until answered.
/// A tier the directory no longer has escalates to its last one.
fn escalation(
    directory: &Directory,
    snapshot: &Snapshot,
    due: &DueDeadline,
    now: OffsetDateTime,
    carry: bool,
    held: Option<std::time::Duration>,
) -> Change {
    let referral = &snapshot.referral;
    let tiers = directory.escalation_tiers();
    let tier = (due.escalations as usize + 1).min(tiers.max(1));
    let to = directory.escalate_to(tier, &referral.subject.province);
    let event = Event::recorded(
        referral.id,
        EventKind::Escalated,
        // Whose silence it records: the recipient's, or for a broadcast, on behalf of its sender.
        referral
            .recipient
            .clone()
            .unwrap_or_else(|| referral.sender.clone()),
        now,
        referral.state,
        EventDetails::Escalated {
            tier: tier as u32,
            to: to.clone(),
        },
    );
    let deadline = directory.acknowledgement_deadline(&referral.kind, referral.urgency);
    let next = match (
        directory.after_deadlines(tier),
        directory.after_deadlines(tier + 1),
    ) {
        (Some(this), Some(after)) if tier > due.escalations as usize => DeadlineChange::Set {
            due_at: due.due_at + deadline * after.saturating_sub(this),
            escalations: tier as u32,
        },
        _ => DeadlineChange::Set {
            due_at: NEVER,
            escalations: tier as u32,
        },
    };
    let mut change = change_for(snapshot, event, referral.state, None, &to, carry, held);
    change.deadline = next;
    change
}

/// Where a new referral goes ([`Workflow::route`]): its recipient, or a broadcast's candidates.
struct Routed {
    recipient: Option<AgencyId>,
    candidates: Vec<AgencyId>,
}

/// Refuses an answer (`action`) from a candidate of the broadcast `referral` (with this
/// `history`) that declined it already: a candidate answers once. Acknowledging twice is refused
/// too: the sender learns nothing from it.
fn answered_before(
    referral: &Referral,
    history: &[Event],
    candidate: &AgencyId,
    action: EventKind,
) -> Result<(), BrokerError> {
    let id = referral.id;
    if crate::referral::declined_by(history).contains(candidate) {
        return Err(BrokerError::Precondition(format!(
            "{candidate} declined referral {id}; a candidate answers once"
        )));
    }
    if action == EventKind::Acknowledged
        && history
            .iter()
            .any(|e| e.kind == EventKind::Acknowledged && &e.actor == candidate)
    {
        return Err(BrokerError::Precondition(format!(
            "{candidate} acknowledged referral {id} already"
        )));
    }
    Ok(())
}

/// Whether every candidate of the open broadcast `referral` declined it, counting `declining`
/// (whose decline is being decided) as one that did; and, if none is, that the broker has not
/// recorded so yet.
fn every_candidate_declined(
    referral: &Referral,
    history: &[Event],
    declining: Option<&AgencyId>,
) -> bool {
    if history
        .iter()
        .any(|e| e.kind == EventKind::NoCandidateAccepted)
    {
        return false;
    }
    let declined = crate::referral::declined_by(history);
    !referral.candidates.is_empty()
        && referral
            .candidates
            .iter()
            .all(|c| declined.contains(c) || declining == Some(c))
}

/// The change that tells the sender of the open broadcast read in `snapshot` that every candidate
/// declined it: an event recorded by the broker in the sender's name, delivered to every party,
/// and the timer that brought it cleared. The referral stays as it is, for its sender to redirect
/// or withdraw.
fn no_candidate_accepted(
    snapshot: &Snapshot,
    now: OffsetDateTime,
    carry: bool,
    held: Option<std::time::Duration>,
) -> Change {
    let referral = &snapshot.referral;
    let event = Event::recorded(
        referral.id,
        EventKind::NoCandidateAccepted,
        referral.sender.clone(),
        now,
        referral.state,
        EventDetails::None,
    );
    let mut change = change_for(snapshot, event, referral.state, None, &[], carry, held);
    change.deadline = DeadlineChange::Clear;
    change
}

/// The submitted case file, checked and trimmed: sealed by the sender alone, with a box for every
/// agency the referral was routed to (else FAILED_PRECONDITION naming the first missing: the
/// sender sealed to an older view of the directory and must seal again), keeping only the boxes
/// of the sender and those agencies.
fn sealed_for_readers<'a>(
    sender: &AgencyId,
    case_file: Sealed,
    readers: impl Iterator<Item = &'a AgencyId> + Clone,
) -> Result<Sealed, BrokerError> {
    let boxes = wire::sealed::parse("case_file", case_file.as_bytes())?;
    if let Some(other) = boxes.iter().find(|b| &b.from != sender) {
        return Err(FieldError::new(
            "case_file",
            format!(
                "has a box sealed by {}, not by the sender {sender}",
                other.from
            ),
        )
        .into());
    }
    if let Some(missing) = readers
        .clone()
        .find(|reader| !boxes.iter().any(|b| &&b.to == reader))
    {
        return Err(BrokerError::Precondition(format!(
            "the directory routes this referral to {missing}, but case_file has no box for it: \
             fetch its key (DirectoryService.AgencyKeys) and seal the case file to it"
        )));
    }
    if boxes
        .iter()
        .all(|b| &b.to == sender || readers.clone().any(|r| r == &b.to))
    {
        return Ok(case_file);
    }
    Ok(Sealed::new(wire::sealed::keep_boxes(
        case_file.as_bytes(),
        |to| to == sender.as_str() || readers.clone().any(|r| r.as_str() == to),
    )))
}

/// Checks that what an action carries sealed was sealed by the agency that acts: the broker
/// cannot open a box, but it can refuse one that claims another author.
fn sealed_by(actor: &AgencyId, action: &Action) -> Result<(), BrokerError> {
    let sealed: [(&'static str, &Sealed); 2] = [
        ("action.sealed_text", &action.sealed_text),
        match &action.details {
            EventDetails::Redirected { case_file, .. } => ("redirect.case_file", case_file),
            EventDetails::FollowUpDelegated { follow_up_part, .. } => {
                ("delegation.follow_up_case_file", follow_up_part)
            }
            _ => ("", &action.sealed_text),
        },
    ];
    for (field, bytes) in sealed {
        if field.is_empty() || bytes.is_empty() {
            continue;
        }
        if let Some(other) = wire::sealed::parse(field, bytes.as_bytes())?
            .iter()
            .find(|b| &b.from != actor)
        {
            return Err(FieldError::new(
                field,
                format!("has a box sealed by {}, not by {actor}", other.from),
            )
            .into());
        }
    }
    Ok(())
}
