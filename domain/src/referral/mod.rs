//! Referrals as the broker understands them: what a sender submits, what is stored, and what happened.
//!
//! No I/O and no wire types here: the gateway converts from proto with `TryFrom`, the store persists
//! these values, and [`state`] decides what may change.

pub mod consent;
pub mod state;
pub mod view;

use std::fmt;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::FieldError;
use crate::ids::{AgencyId, ClientRef, ProvinceCode, ReferralId, RequestId};
pub use consent::{Consent, ConsentGiver, Sharing};
pub use state::{EventKind, Role, State};
pub use view::{Audience, ReferralView};

/// What agencies sealed to each other (an encoded `spean.v1.Sealed`: a case file, the follow-up
/// part of one, or the free text of an action): bytes the broker stores and forwards but cannot
/// open. Two of them concatenated are one with the boxes of both, which is how a redirect's box for
/// the new recipient joins the case file.
///
/// It has no `Display` and its `Debug` prints only the length, so no log line or error can carry it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Sealed(Vec<u8>);

impl Sealed {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// This one with the boxes of `more` after its own.
    pub fn joined(mut self, more: &Sealed) -> Self {
        self.0.extend_from_slice(&more.0);
        self
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

/// Free text written by a person (notes, reasons, names of staff). It may be sensitive, so like the
/// case file it never prints: `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct FreeText(String);

impl FreeText {
    /// Accepts any UTF-8 text (Khmer included, with its combining marks, U+200B ZERO WIDTH SPACE and
    /// the U+200E/U+200F direction marks) up to `max` bytes, with line breaks and tabs: notes,
    /// reasons, summaries and planned actions span lines.
    ///
    /// Refused, because the text is shown on another agency's terminal: control characters (escape
    /// sequences could rewrite that screen; a lone carriage return could hide what came before it)
    /// and the bidirectional embeddings, overrides and isolates U+202A–U+202E and U+2066–U+2069,
    /// which make text read differently from what it says.
    pub fn parse(field: &'static str, raw: &str, max: usize) -> Result<Self, FieldError> {
        Self::checked(field, raw, max, true)
    }

    /// Like [`FreeText::parse`], for text that is one line (a staff member's name): line breaks and
    /// tabs are refused too, so a name cannot push a forged line into a table.
    pub fn line(field: &'static str, raw: &str, max: usize) -> Result<Self, FieldError> {
        Self::checked(field, raw, max, false)
    }

    fn checked(
        field: &'static str,
        raw: &str,
        max: usize,
        multi_line: bool,
    ) -> Result<Self, FieldError> {
        if raw.len() > max {
            return Err(FieldError::new(
                field,
                format!("is {} bytes long; the limit is {max}", raw.len()),
            ));
        }
        let mut chars = raw.chars().peekable();
        while let Some(c) = chars.next() {
            let line_break = match c {
                '\n' | '\t' => true,
                // Windows line ends: a carriage return only right before a line feed.
                '\r' => chars.peek() == Some(&'\n'),
                _ => false,
            };
            if line_break {
                if multi_line {
                    continue;
                }
                return Err(FieldError::new(
                    field,
                    format!("contains {c:?}; it must be one line"),
                ));
            }
            if c.is_control() {
                return Err(FieldError::new(
                    field,
                    format!("contains the control character U+{:04X}", u32::from(c)),
                ));
            }
            if is_bidi_control(c) {
                return Err(FieldError::new(
                    field,
                    format!(
                        "contains the bidirectional control U+{:04X}, which makes text read \
                         differently from what it says",
                        u32::from(c)
                    ),
                ));
            }
        }
        Ok(Self(raw.to_owned()))
    }

    /// Like [`FreeText::parse`], but empty text is refused.
    pub fn required(field: &'static str, raw: &str, max: usize) -> Result<Self, FieldError> {
        if raw.trim().is_empty() {
            return Err(FieldError::new(field, "is required"));
        }
        Self::parse(field, raw, max)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn from_stored(raw: String) -> Self {
        Self(raw)
    }
}

/// The bidirectional embeddings, overrides (U+202A–U+202E) and isolates (U+2066–U+2069): invisible
/// characters that reorder the text around them. The marks U+200E and U+200F are not here: they
/// only nudge neutral characters and cannot disguise text.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Debug for FreeText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FreeText({} bytes)", self.0.len())
    }
}

/// A short machine-readable code (kind, reason code, outcome code): lower-case letters, digits, `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Code(String);

impl Code {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldError> {
        if raw.is_empty() {
            return Err(FieldError::new(field, "is required"));
        }
        if raw.len() > 64
            || !raw
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(FieldError::new(
                field,
                format!("{raw:?} is not a code (lower-case letters, digits and _, at most 64)"),
            ));
        }
        Ok(Self(raw.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A calendar date, `YYYY-MM-DD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day(time::Date);

impl Day {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldError> {
        let format = time::macros::format_description!("[year]-[month]-[day]");
        time::Date::parse(raw, format)
            .map(Self)
            .map_err(|_| FieldError::new(field, format!("{raw:?} is not a date (YYYY-MM-DD)")))
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}",
            self.0.year(),
            u8::from(self.0.month()),
            self.0.day()
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Urgency {
    Emergency,
    Urgent,
    Routine,
}

impl Urgency {
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::Emergency => "emergency",
            Urgency::Urgent => "urgent",
            Urgency::Routine => "routine",
        }
    }
    pub fn parse(raw: &str) -> Option<Self> {
        [Urgency::Emergency, Urgency::Urgent, Urgency::Routine]
            .into_iter()
            .find(|u| u.as_str() == raw)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sex {
    Female,
    Male,
    Other,
    Unknown,
}

impl Sex {
    pub const ALL: [Sex; 4] = [Sex::Female, Sex::Male, Sex::Other, Sex::Unknown];
    pub fn as_str(self) -> &'static str {
        match self {
            Sex::Female => "female",
            Sex::Male => "male",
            Sex::Other => "other",
            Sex::Unknown => "unknown",
        }
    }
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgeBand {
    Age0To4,
    Age5To9,
    Age10To14,
    Age15To17,
    Age18To24,
    Age25To59,
    Age60Plus,
    Unknown,
}

impl AgeBand {
    pub const ALL: [AgeBand; 8] = [
        AgeBand::Age0To4,
        AgeBand::Age5To9,
        AgeBand::Age10To14,
        AgeBand::Age15To17,
        AgeBand::Age18To24,
        AgeBand::Age25To59,
        AgeBand::Age60Plus,
        AgeBand::Unknown,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            AgeBand::Age0To4 => "0-4",
            AgeBand::Age5To9 => "5-9",
            AgeBand::Age10To14 => "10-14",
            AgeBand::Age15To17 => "15-17",
            AgeBand::Age18To24 => "18-24",
            AgeBand::Age25To59 => "25-59",
            AgeBand::Age60Plus => "60+",
            AgeBand::Unknown => "unknown",
        }
    }
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// Who a referral is about, without naming them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub sex: Sex,
    pub age_band: AgeBand,
    pub province: ProvinceCode,
}

/// How the sender addressed a referral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addressee {
    Agency(AgencyId),
    Service {
        service: Code,
        province: ProvinceCode,
    },
}

/// A referral as submitted, parsed and valid.
#[derive(Debug, Clone)]
pub struct NewReferral {
    pub client_ref: ClientRef,
    pub addressee: Addressee,
    pub kind: Code,
    pub urgency: Urgency,
    pub subject: Subject,
    pub case_file: Sealed,
    pub client_pseudonym: Option<ClientRef>,
    /// Whether a referral addressed by service and province goes to every agency offering it
    /// there, as the sender asked; `None`: as the kind's default ([`NewReferral::is_broadcast`]).
    pub broadcast: Option<bool>,
    /// Agencies the sender names to be told of the referral, without reading it (story 3).
    pub notify: Vec<AgencyId>,
    /// The referral from the same sender this one follows, about the same client (story 5).
    pub follows: Option<ReferralId>,
    /// Who consented to what sharing, or the kind's emergency exception.
    pub consent: Consent,
}

/// The kind whose referrals addressed by service and province go to every provider by default:
/// a placement needs whichever place is free first (story 2).
pub const BROADCAST_BY_DEFAULT: &str = "placement";

/// The most agencies a sender may name to be notified of one referral.
pub const MAX_NOTIFIED: usize = 8;

impl NewReferral {
    /// Whether this referral goes to every agency offering its service in its province: asked
    /// for, or by default for a placement addressed by service and province.
    pub fn is_broadcast(&self) -> bool {
        matches!(self.addressee, Addressee::Service { .. })
            && self
                .broadcast
                .unwrap_or(self.kind.as_str() == BROADCAST_BY_DEFAULT)
    }
}

impl NewReferral {
    /// A digest of everything the sender chose, so a retry with the same `client_ref` can be told apart
    /// from a different referral that reuses the key.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        field(self.client_ref.as_str().as_bytes());
        match &self.addressee {
            Addressee::Agency(a) => {
                field(b"agency");
                field(a.as_str().as_bytes());
            }
            Addressee::Service { service, province } => {
                field(b"service");
                field(service.as_str().as_bytes());
                field(province.as_str().as_bytes());
            }
        }
        field(self.kind.as_str().as_bytes());
        field(self.urgency.as_str().as_bytes());
        field(self.subject.sex.as_str().as_bytes());
        field(self.subject.age_band.as_str().as_bytes());
        field(self.subject.province.as_str().as_bytes());
        field(self.case_file.as_bytes());
        field(
            self.client_pseudonym
                .as_ref()
                .map(|p| p.as_str())
                .unwrap_or("")
                .as_bytes(),
        );
        // Added with broadcasts and notified parties: a referral without any of them digests as it
        // did before, so a retry of one submitted earlier is still recognised.
        if self.broadcast.is_some() || !self.notify.is_empty() || self.follows.is_some() {
            field(match self.broadcast {
                None => b"default",
                Some(true) => b"broadcast",
                Some(false) => b"one",
            });
            for agency in &self.notify {
                field(agency.as_str().as_bytes());
            }
            field(b"follows");
            field(
                self.follows
                    .map(|f| f.to_string())
                    .unwrap_or_default()
                    .as_bytes(),
            );
        }
        // Consent, required since it was added: every digest since has it, last.
        match &self.consent {
            Consent::Given { by, at, sharing } => {
                field(b"consent");
                field(by.as_str().as_bytes());
                field(&(at.unix_timestamp_nanos() / 1_000).to_be_bytes());
                for s in sharing {
                    field(s.as_str().as_bytes());
                }
            }
            Consent::EmergencyException { reason } => {
                field(b"emergency_exception");
                field(reason.as_str().as_bytes());
            }
        }
        hex::encode(h.finalize())
    }
}

/// A stored referral.
#[derive(Debug, Clone)]
pub struct Referral {
    pub id: ReferralId,
    pub client_ref: ClientRef,
    pub fingerprint: String,
    pub sender: AgencyId,
    pub addressee: Addressee,
    /// The agency it is with now (changes on redirect). `None` only for a broadcast no candidate
    /// has accepted yet: nobody holds it.
    pub recipient: Option<AgencyId>,
    pub kind: Code,
    pub urgency: Urgency,
    pub subject: Subject,
    pub client_pseudonym: Option<ClientRef>,
    /// A broadcast's candidates: the providers of the service in the province when it was sent,
    /// in routing order; empty for a referral sent to one agency.
    pub candidates: Vec<AgencyId>,
    /// The agencies the sender named to be notified.
    pub notify: Vec<AgencyId>,
    /// The referral from the same sender this one follows.
    pub follows: Option<ReferralId>,
    /// The consent recorded with it; `None` only for referrals recorded before consent was
    /// required ([`Referral::consent_allows`]).
    pub consent: Option<Consent>,
    pub state: State,
    /// Bumped on every change; a change states the version it read (optimistic concurrency).
    pub version: i64,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub case_file: Sealed,
}

impl Referral {
    /// Whether the consent recorded with this referral covers `sharing`. A referral recorded
    /// before consent was required goes on as it was allowed to then: its agencies recorded
    /// consent on paper, and stopping its redirect or delegation now would strand the client.
    pub fn consent_allows(&self, sharing: Sharing) -> bool {
        self.consent.as_ref().is_none_or(|c| c.allows(sharing))
    }

    /// Which side `agency` is on now, if any: a candidate only while its broadcast is open.
    pub fn role_of(&self, agency: &AgencyId) -> Option<Role> {
        if &self.sender == agency {
            Some(Role::Sender)
        } else if self.recipient.as_ref() == Some(agency) {
            Some(Role::Recipient)
        } else if self.is_open_broadcast() && self.candidates.contains(agency) {
            Some(Role::Candidate)
        } else {
            None
        }
    }

    /// A broadcast that no candidate has accepted (and its sender has not redirected) yet.
    pub fn is_open_broadcast(&self) -> bool {
        self.recipient.is_none()
    }

    /// Whether `agency` is, or was, a candidate of this broadcast and did not win it.
    pub fn is_candidate(&self, agency: &AgencyId) -> bool {
        self.candidates.contains(agency) && self.recipient.as_ref() != Some(agency)
    }
}

/// The candidates of a broadcast who declined it, from its history (oldest first): a candidate
/// answers once.
pub fn declined_by<'e>(history: impl IntoIterator<Item = &'e Event>) -> Vec<AgencyId> {
    let mut declined: Vec<AgencyId> = Vec::new();
    for event in history {
        if event.kind == EventKind::Declined && !declined.contains(&event.actor) {
            declined.push(event.actor.clone());
        }
    }
    declined
}

/// The agency the follow-up of a referral is delegated to now, from its history (oldest first):
/// the last delegation not taken back since.
pub fn delegate_in<'e>(history: impl IntoIterator<Item = &'e Event>) -> Option<AgencyId> {
    let mut delegate = None;
    for event in history {
        match &event.details {
            EventDetails::FollowUpDelegated { to, .. } => delegate = Some(to.clone()),
            EventDetails::DelegationRevoked { .. } => delegate = None,
            _ => {}
        }
    }
    delegate
}

/// What an event adds to its kind.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventDetails {
    #[default]
    None,
    Accepted {
        planned_action: FreeText,
        planned_date: String,
    },
    Declined {
        reason_code: Code,
        reason_text: FreeText,
    },
    Redirected {
        to: AgencyId,
        reason: FreeText,
        /// The case file re-sealed by the redirecting adapter to `to`: joined to the referral's
        /// case file in the new recipient's copy, never sent as part of the event.
        #[serde(default, skip_serializing_if = "Sealed::is_empty")]
        case_file: Sealed,
    },
    FollowUp {
        activity: Code,
        date: String,
    },
    Completed {
        outcome_code: Code,
        summary: FreeText,
    },
    Failed {
        reason: FreeText,
    },
    /// The escalation's tier (1: after one deadline) and the agencies it reached, which became
    /// notified parties. No free text: every party and notified agency reads it whole.
    Escalated {
        tier: u32,
        to: Vec<AgencyId>,
    },
    /// A visit due at `due_at` was not recorded in time (the event's actor is the agency
    /// responsible for it); `missed_in_a_row` counts the missed visits since the last one made.
    /// The agencies told of it, besides the parties, became notified parties. No free text.
    FollowUpOverdue {
        #[serde(with = "micros")]
        due_at: OffsetDateTime,
        missed_in_a_row: u32,
        /// Told of the missed visit as notified parties (the network's coordinators).
        #[serde(default)]
        told: Vec<AgencyId>,
    },
    /// The follow-up visits now made by `to`, with why, and the part of the case file a visit
    /// needs, encoded by the delegating adapter: only `to` reads it besides the two parties.
    FollowUpDelegated {
        to: AgencyId,
        reason: FreeText,
        follow_up_part: Sealed,
    },
    /// The follow-up visits taken back from `from`.
    DelegationRevoked {
        from: AgencyId,
    },
    /// On a `submitted` event: the referral went without consent, under its kind's emergency
    /// exception, because of `reason`. Every audience reads it: it is the flag.
    EmergencyException {
        reason: Code,
    },
    /// The client or their guardian withdrew consent, at `at` as they said it.
    ConsentWithdrawn {
        by: ConsentGiver,
        #[serde(with = "micros")]
        at: OffsetDateTime,
    },
}

/// When a referral's next follow-up visit is due, and the schedule it follows: stamped by the
/// broker on the events that move the schedule, so that every adapter shows the same schedule
/// without knowing the directory's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NextVisit {
    #[serde(with = "micros")]
    pub due_at: OffsetDateTime,
    /// How late the visit may be before it counts as missed.
    pub grace_seconds: u32,
    /// The schedule's interval between visits.
    pub every_seconds: u32,
}

impl NextVisit {
    /// When the visit counts as missed.
    pub fn missed_at(&self) -> OffsetDateTime {
        self.due_at + std::time::Duration::from_secs(u64::from(self.grace_seconds))
    }
}

/// Timestamps in stored details as unix microseconds, the precision of every stored time.
mod micros {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64((t.unix_timestamp_nanos() / 1_000) as i64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let us = i64::deserialize(d)?;
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
            .map_err(serde::de::Error::custom)
    }
}

/// Stored case file parts as hex, in JSON details.
impl serde::Serialize for Sealed {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> serde::Deserialize<'de> for Sealed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        hex::decode(raw).map(Self).map_err(serde::de::Error::custom)
    }
}

/// One append-only history entry.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: uuid::Uuid,
    pub referral_id: ReferralId,
    pub kind: EventKind,
    pub actor: AgencyId,
    pub actor_person: FreeText,
    pub at: OffsetDateTime,
    pub note: FreeText,
    pub state_after: State,
    pub details: EventDetails,
    /// The caller's idempotency key for the action that made this event.
    pub request_id: Option<RequestId>,
    /// When the referral's next follow-up visit is due after this event: stamped by the broker on
    /// the events that move a follow-up schedule (an acceptance, a follow-up, a missed visit, a
    /// delegation), for kinds the directory schedules. Not free text: every audience reads it.
    pub next_visit: Option<NextVisit>,
    /// The free text of the action (who acted, the note, the details' text) sealed by the acting
    /// agency to itself and the agencies that read the event whole. Those who read the skeleton
    /// get it empty, as they get the note.
    pub sealed_text: Sealed,
}

impl Event {
    /// An event the broker records itself (a submission, a delivery, an escalation, a missed
    /// visit, a broadcast nobody accepted), at `at`, in the name of `actor`: nobody wrote it, so
    /// it has no person, note or request id.
    pub fn recorded(
        referral_id: ReferralId,
        kind: EventKind,
        actor: AgencyId,
        at: OffsetDateTime,
        state_after: State,
        details: EventDetails,
    ) -> Self {
        Self {
            id: uuid::Uuid::now_v7(),
            referral_id,
            kind,
            actor,
            actor_person: FreeText::default(),
            at,
            note: FreeText::default(),
            state_after,
            details,
            request_id: None,
            next_visit: None,
            sealed_text: Sealed::default(),
        }
    }
}

impl Event {
    /// Drops everything sealed this event holds: its sealed free text, a redirect's re-sealed case
    /// file, a delegation's follow-up part. What is left (kind, actor, time, codes, dates) is what
    /// every agency keeps once consent is withdrawn. Whether anything was dropped.
    pub fn forget_sealed(&mut self) -> bool {
        let mut dropped = !std::mem::take(&mut self.sealed_text).is_empty();
        match &mut self.details {
            EventDetails::Redirected { case_file, .. } => {
                dropped |= !std::mem::take(case_file).is_empty();
            }
            EventDetails::FollowUpDelegated { follow_up_part, .. } => {
                dropped |= !std::mem::take(follow_up_part).is_empty();
            }
            _ => {}
        }
        dropped
    }
}

/// A feedback action requested by a party, parsed and valid.
#[derive(Debug, Clone)]
pub struct Action {
    pub referral_id: ReferralId,
    pub request_id: RequestId,
    pub actor_person: FreeText,
    pub note: FreeText,
    pub kind: EventKind,
    pub details: EventDetails,
    /// The action's free text as its agency sealed it ([`Event::sealed_text`]).
    pub sealed_text: Sealed,
}

/// What one delivery carries to an agency: the referral as that agency may see it, with its
/// history, or one event of its history.
#[derive(Debug)]
pub enum DeliveryContent {
    Referral(Box<ReferralView>, Vec<Event>),
    Event(Box<Event>),
}

/// Filters for listing an agency's referrals.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub role: Option<Role>,
    pub states: Vec<State>,
    pub kind: Option<Code>,
    /// Only this agency's own referrals (as sender or recipient now) about the client with this
    /// pseudonym: never another agency's, nor those it is only notified of or was redirected
    /// away from.
    pub client_pseudonym: Option<ClientRef>,
    pub limit: u32,
    /// Only referrals older than this one (ids sort by creation time).
    pub before: Option<ReferralId>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A stored referral from `sender` to `recipient` whose case file is a Khmer name.
    pub(crate) fn sample(sender: &str, recipient: &str) -> Referral {
        let agency = |raw| AgencyId::parse("agency", raw).unwrap();
        let at = OffsetDateTime::UNIX_EPOCH;
        Referral {
            id: ReferralId::new(),
            client_ref: ClientRef::parse("client_ref", "ref-1").unwrap(),
            fingerprint: String::new(),
            sender: agency(sender),
            addressee: Addressee::Agency(agency(recipient)),
            recipient: Some(agency(recipient)),
            kind: Code::parse("kind", "lama").unwrap(),
            urgency: Urgency::Emergency,
            subject: Subject {
                sex: Sex::Female,
                age_band: AgeBand::Age5To9,
                province: ProvinceCode::parse("province", "24").unwrap(),
            },
            client_pseudonym: None,
            candidates: Vec::new(),
            notify: Vec::new(),
            follows: None,
            consent: None,
            state: State::Sent,
            version: 1,
            created_at: at,
            updated_at: at,
            case_file: Sealed::new("សុខ".as_bytes().to_vec()),
        }
    }

    #[test]
    fn sensitive_values_never_print_their_content() {
        let name = "សុខ ស្រីល័ក្ខ";
        let case = Sealed::new(name.as_bytes().to_vec());
        assert_eq!(format!("{case:?}"), format!("Sealed({} bytes)", name.len()));
        let note = FreeText::parse("note", "ក្មេងស្រី", 100).unwrap();
        assert!(!format!("{note:?}").contains("ក្មេង"));
    }

    #[test]
    fn free_text_keeps_khmer_and_refuses_control_characters() {
        let t = FreeText::parse("note", "ជួបគ្រួសារ\nនៅផ្ទះ", 100).unwrap();
        assert_eq!(t.as_str(), "ជួបគ្រួសារ\nនៅផ្ទះ");
        assert!(FreeText::parse("note", "a\u{0}b", 100).is_err());
        assert_eq!(
            FreeText::required("decline.reason_text", "  ", 100)
                .unwrap_err()
                .to_string(),
            "decline.reason_text: is required"
        );
    }

    #[test]
    fn free_text_keeps_real_khmer_byte_for_byte() {
        for khmer in [
            "សុខ ស្រីល័ក្ខ",
            "គ្រួសារចាកចេញពីមន្ទីរពេទ្យ",
            // Khmer is written without spaces between words; U+200B marks the word breaks.
            "គ្រួសារ\u{200B}ចាកចេញ\u{200B}ពី\u{200B}មន្ទីរពេទ្យ",
            "ជួបគ្រួសារ\r\nនៅផ្ទះ\u{200F}",
        ] {
            let t = FreeText::parse("note", khmer, 1000).unwrap();
            assert_eq!(t.as_str().as_bytes(), khmer.as_bytes());
        }
        let name = FreeText::line("action.actor_person", "សុខ ស្រីល័ក្ខ", 256).unwrap();
        assert_eq!(name.as_str(), "សុខ ស្រីល័ក្ខ");
    }

    #[test]
    fn free_text_refuses_escapes_bidi_controls_and_lone_carriage_returns() {
        for bad in [
            "a\u{1b}[2Jb",
            "a\u{7f}",
            "a\u{9b}31m",
            "paid\rfree",
            "a\u{202E}gnp.exe",
            "a\u{202A}b",
            "a\u{2066}b\u{2069}",
        ] {
            let error = FreeText::parse("decline.reason_text", bad, 100).unwrap_err();
            assert!(
                error
                    .to_string()
                    .starts_with("decline.reason_text: contains"),
                "{error}"
            );
        }
        assert!(FreeText::line("action.actor_person", "Sok\nFake line", 100).is_err());
        assert!(FreeText::line("action.actor_person", "Sok\tDara", 100).is_err());
    }

    #[test]
    fn days_parse_iso_dates_only() {
        assert_eq!(
            Day::parse("d", "2026-11-22").unwrap().to_string(),
            "2026-11-22"
        );
        assert!(Day::parse("d", "22/11/2026").is_err());
    }
}
