//! The network directory: agencies, the services they offer, the provinces they serve, the
//! referral taxonomy, and the network's rules of time: how long a recipient has to acknowledge a
//! referral, whom its silence is escalated to, and how often a kind of case is followed up. It
//! decides where a referral addressed by service and province goes. The rules of time are data,
//! not code, because each network sets its own.
//!
//! The import format is the one of `fixtures/network.json` (documented in `docs/reference.md`),
//! read and checked in [`document`]; unknown fields are ignored so the same file can carry notes
//! for people.

mod document;
pub(crate) mod duration;
mod escalation;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::FieldError;
use crate::ids::{AgencyId, ProvinceCode};
use crate::referral::{Code, Urgency};

use document::Document;
use escalation::Tier;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgencyType {
    Hospital,
    Ngo,
    Authority,
    Coordinator,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Agency {
    pub id: AgencyId,
    pub name: String,
    #[serde(rename = "type")]
    pub agency_type: AgencyType,
    /// Province codes, or `*` for the whole country.
    pub provinces: Vec<String>,
    #[serde(default)]
    pub services: Vec<String>,
}

impl Agency {
    pub fn serves(&self, province: &ProvinceCode) -> bool {
        self.provinces
            .iter()
            .any(|p| p == "*" || p == province.as_str())
    }
    pub fn offers(&self, service: &Code) -> bool {
        self.services.iter().any(|s| s == service.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Province {
    pub code: String,
    pub name_en: String,
    #[serde(default)]
    pub name_km: String,
}

/// A kind of referral in the taxonomy.
#[derive(Debug, Clone)]
pub struct Kind {
    pub kind: String,
    pub meaning: String,
    pub default_urgency: String,
    /// Overrides the urgency's deadline for every referral of this kind, where a kind needs an
    /// answer faster (or may wait longer) than its urgency alone says.
    pub acknowledgement_deadline: Option<Duration>,
    /// Whether a referral of this kind may be sent without consent, under the emergency exception
    /// (a child in danger is protected first): `child_protection` unless the directory says.
    pub emergency_consent_exception: bool,
}

/// How long a recipient has to acknowledge a referral, per urgency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Deadlines {
    emergency: Duration,
    urgent: Duration,
    routine: Duration,
}

impl Default for Deadlines {
    /// The network's suggested defaults (2h, 24h, 72h), for a directory that sets none.
    fn default() -> Self {
        const HOUR: u64 = 3_600;
        Self {
            emergency: Duration::from_secs(2 * HOUR),
            urgent: Duration::from_secs(24 * HOUR),
            routine: Duration::from_secs(72 * HOUR),
        }
    }
}

impl Deadlines {
    fn for_urgency(&self, urgency: Urgency) -> Duration {
        match urgency {
            Urgency::Emergency => self.emergency,
            Urgency::Urgent => self.urgent,
            Urgency::Routine => self.routine,
        }
    }
    fn for_urgency_mut(&mut self, urgency: Urgency) -> &mut Duration {
        match urgency {
            Urgency::Emergency => &mut self.emergency,
            Urgency::Urgent => &mut self.urgent,
            Urgency::Routine => &mut self.routine,
        }
    }
}

/// How often an open referral of a kind is followed up (a visit, a review).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowUpSchedule {
    /// The interval between two follow-ups.
    pub every: Duration,
    /// How late a follow-up may be before it counts as missed: visits depend on travel and
    /// weather, so a follow-up is rarely on the day.
    pub grace: Duration,
}

/// The whole directory, as imported. It (de)serialises in the import format, checked both ways
/// in [`document`], because the broker stores it as that JSON document and reads it back.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(try_from = "Document", into = "Document")]
pub struct Directory {
    pub provinces: Vec<Province>,
    pub referral_kinds: Vec<Kind>,
    pub agencies: Vec<Agency>,
    /// Acknowledgement deadlines per urgency; [`Kind::acknowledgement_deadline`] overrides them.
    deadlines: Deadlines,
    /// Escalation tiers, in the order they are reached; empty when the network escalates nothing.
    escalation: Vec<Tier>,
    /// Follow-up schedules by kind; kinds with only a note for people have none.
    follow_ups: BTreeMap<String, FollowUpSchedule>,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("the directory is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the directory is invalid: {0}")]
    Invalid(#[from] FieldError),
}

impl Directory {
    /// Parses and checks a directory document: ids, province codes, services from the taxonomy,
    /// no duplicate agencies, durations, escalation tiers and follow-up schedules. A bad value is
    /// refused as [`DirectoryError::Invalid`], naming its field.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DirectoryError> {
        let doc: Document = serde_json::from_slice(bytes)?;
        Ok(Directory::try_from(doc)?)
    }

    pub fn agency(&self, id: &AgencyId) -> Option<&Agency> {
        self.agencies.iter().find(|a| &a.id == id)
    }

    /// A kind is known when the taxonomy lists it (an empty taxonomy accepts any well-formed code).
    pub fn has_kind(&self, kind: &Code) -> bool {
        self.referral_kinds.is_empty()
            || self.referral_kinds.iter().any(|k| k.kind == kind.as_str())
    }

    /// Whether a referral of `kind` may go without consent, under the emergency exception. A
    /// directory without a taxonomy allows it for `child_protection` only.
    pub fn allows_emergency_exception(&self, kind: &Code) -> bool {
        match self.referral_kinds.iter().find(|k| k.kind == kind.as_str()) {
            Some(k) => k.emergency_consent_exception,
            None => kind.as_str() == crate::referral::consent::EMERGENCY_EXCEPTION_BY_DEFAULT,
        }
    }

    /// Every agency offering `service` in `province`, best first: providers (NGOs, hospitals) before
    /// the provincial department, which is the fallback and the escalation point; then the most local
    /// (fewest provinces served); then by id, so the choice is stable.
    pub fn providers(&self, service: &Code, province: &ProvinceCode) -> Vec<&Agency> {
        let mut found: Vec<&Agency> = self
            .agencies
            .iter()
            .filter(|a| a.offers(service) && a.serves(province))
            .collect();
        found.sort_by_key(|a| {
            let rank = match a.agency_type {
                AgencyType::Hospital | AgencyType::Ngo => 0,
                AgencyType::Authority => 1,
                AgencyType::Coordinator => 2,
            };
            (rank, a.provinces.len(), a.id.clone())
        });
        found
    }

    /// How long the recipient of a referral of `kind` and `urgency` has to acknowledge it: the
    /// kind's own deadline when the taxonomy sets one, else the urgency's.
    pub fn acknowledgement_deadline(&self, kind: &Code, urgency: Urgency) -> Duration {
        self.referral_kinds
            .iter()
            .find(|k| k.kind == kind.as_str())
            .and_then(|k| k.acknowledgement_deadline)
            .unwrap_or_else(|| self.deadlines.for_urgency(urgency))
    }

    /// How many escalation tiers the network has; none means a missed deadline is not escalated.
    pub fn escalation_tiers(&self) -> usize {
        self.escalation.len()
    }

    /// After how many missed deadlines `tier` (1-based) is reached; `None` past the last tier.
    pub fn after_deadlines(&self, tier: usize) -> Option<u32> {
        self.tier(tier).map(|t| t.after_deadlines)
    }

    /// The agencies `tier` (1-based) tells about a silent recipient, for a subject in `province`:
    /// sorted, without duplicates; empty when there is no such tier. They are told that the
    /// referral is overdue, never its case file or free text.
    pub fn escalate_to(&self, tier: usize, province: &ProvinceCode) -> Vec<AgencyId> {
        self.tier(tier)
            .map(|t| t.resolve(&self.agencies, province))
            .unwrap_or_default()
    }

    /// The follow-up schedule of `kind`, if the directory sets one (a note for people sets none).
    pub fn follow_up_schedule(&self, kind: &Code) -> Option<FollowUpSchedule> {
        self.follow_ups.get(kind.as_str()).copied()
    }

    /// The network's coordinators for a subject in `province` (agencies of type `coordinator`
    /// serving it, the national one included), sorted: whom a missed follow-up visit is told to.
    pub fn coordinators(&self, province: &ProvinceCode) -> Vec<AgencyId> {
        let mut found: Vec<AgencyId> = self
            .agencies
            .iter()
            .filter(|a| a.agency_type == AgencyType::Coordinator && a.serves(province))
            .map(|a| a.id.clone())
            .collect();
        found.sort();
        found.dedup();
        found
    }

    /// The provinces `agency` oversees as a coordinator or an authority: `Some(None)` for the whole
    /// country (it serves `*`), `Some(Some(codes))` for its own provinces; `None` if it is not a
    /// coordinator or an authority (or not in the directory), which may not oversee anything.
    pub fn oversight(&self, agency: &AgencyId) -> Option<Option<Vec<String>>> {
        let a = self.agency(agency)?;
        if !matches!(
            a.agency_type,
            AgencyType::Coordinator | AgencyType::Authority
        ) {
            return None;
        }
        if a.provinces.iter().any(|p| p == "*") {
            Some(None)
        } else {
            Some(Some(a.provinces.clone()))
        }
    }

    fn tier(&self, tier: usize) -> Option<&Tier> {
        tier.checked_sub(1).and_then(|i| self.escalation.get(i))
    }
}

#[cfg(test)]
mod tests;
