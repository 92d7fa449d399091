//! The directory file as written (`fixtures/network.json`), and its conversion to and from the
//! checked [`Directory`]. Durations, tokens and prose stay strings here so that a bad value is
//! refused by [`Directory::try_from`] with the field it sits in, not by serde with a line number.
//! The same format is what the broker stores, so a stored directory parses the same way.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::FieldError;
use crate::ids::{AgencyId, ProvinceCode};
use crate::referral::consent::EMERGENCY_EXCEPTION_BY_DEFAULT;
use crate::referral::{Code, Urgency};

use super::duration::{self, Zero};
use super::escalation::{self, Tier};
use super::{Agency, Deadlines, Directory, FollowUpSchedule, Kind, Province};

/// The whole file. Unknown fields (`about`, `facts`, `sends`, …) are ignored: the same file
/// carries notes for people.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Document {
    #[serde(default)]
    provinces: Vec<Province>,
    #[serde(default)]
    referral_kinds: Vec<KindEntry>,
    agencies: Vec<Agency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    acknowledgement_deadlines: Option<DeadlinesEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    escalation: Option<EscalationEntry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    follow_up_schedules: BTreeMap<String, ScheduleEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct KindEntry {
    kind: String,
    #[serde(default)]
    meaning: String,
    #[serde(default)]
    default_urgency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    acknowledgement_deadline: Option<String>,
    /// Whether a referral of this kind may go without consent, under the emergency exception.
    /// Absent: only for `child_protection` ([`EMERGENCY_EXCEPTION_BY_DEFAULT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    emergency_consent_exception: Option<bool>,
}

/// One duration per urgency; the prose keys beside them (`about`, `escalation`) are ignored.
#[derive(Debug, Serialize, Deserialize)]
struct DeadlinesEntry {
    emergency: Option<String>,
    urgent: Option<String>,
    routine: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct EscalationEntry {
    #[serde(default)]
    tiers: Vec<TierEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TierEntry {
    /// Signed so that `0` or `-1` is refused naming the field rather than by serde.
    after_deadlines: i64,
    to: Vec<String>,
}

/// A follow-up schedule is either a note for people (no schedule is kept) or an object with
/// `every` and `grace`. `Other` catches anything else so that it can be refused by name.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum ScheduleEntry {
    Note(String),
    Schedule {
        every: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grace: Option<String>,
    },
    Other(serde_json::Value),
}

impl TryFrom<Document> for Directory {
    type Error = FieldError;

    fn try_from(doc: Document) -> Result<Self, FieldError> {
        let referral_kinds = doc
            .referral_kinds
            .into_iter()
            .map(KindEntry::check)
            .collect::<Result<_, _>>()?;
        let mut dir = Directory {
            provinces: doc.provinces,
            referral_kinds,
            agencies: doc.agencies,
            ..Directory::default()
        };
        dir.check_places()?;
        if let Some(deadlines) = doc.acknowledgement_deadlines {
            dir.deadlines = deadlines.check()?;
        }
        if let Some(escalation) = doc.escalation {
            dir.escalation = escalation::parse_tiers(
                escalation
                    .tiers
                    .into_iter()
                    .map(|t| (t.after_deadlines, t.to)),
                &dir.agencies,
            )?;
        }
        for (kind, entry) in doc.follow_up_schedules {
            if let Some(schedule) = entry.check(&kind, &dir)? {
                dir.follow_ups.insert(kind, schedule);
            }
        }
        Ok(dir)
    }
}

impl From<Directory> for Document {
    fn from(dir: Directory) -> Self {
        let format = |d| Some(duration::format(d));
        Document {
            provinces: dir.provinces,
            referral_kinds: dir
                .referral_kinds
                .into_iter()
                .map(|k| KindEntry {
                    kind: k.kind,
                    meaning: k.meaning,
                    default_urgency: k.default_urgency,
                    acknowledgement_deadline: k.acknowledgement_deadline.and_then(format),
                    emergency_consent_exception: Some(k.emergency_consent_exception),
                })
                .collect(),
            agencies: dir.agencies,
            acknowledgement_deadlines: Some(DeadlinesEntry {
                emergency: format(dir.deadlines.emergency),
                urgent: format(dir.deadlines.urgent),
                routine: format(dir.deadlines.routine),
            }),
            escalation: (!dir.escalation.is_empty()).then(|| EscalationEntry {
                tiers: dir.escalation.iter().map(TierEntry::from).collect(),
            }),
            follow_up_schedules: dir
                .follow_ups
                .into_iter()
                .map(|(kind, s)| {
                    let entry = ScheduleEntry::Schedule {
                        every: format(s.every),
                        grace: format(s.grace),
                    };
                    (kind, entry)
                })
                .collect(),
        }
    }
}

impl From<&Tier> for TierEntry {
    fn from(tier: &Tier) -> Self {
        TierEntry {
            after_deadlines: i64::from(tier.after_deadlines),
            to: tier.to.iter().map(|n| n.as_str().to_owned()).collect(),
        }
    }
}

impl KindEntry {
    fn check(self) -> Result<Kind, FieldError> {
        Code::parse("referral_kinds[].kind", &self.kind)?;
        let acknowledgement_deadline = self
            .acknowledgement_deadline
            .map(|raw| {
                duration::parse(
                    "referral_kinds[].acknowledgement_deadline",
                    &raw,
                    Zero::Refused,
                )
            })
            .transpose()?;
        let emergency_consent_exception = self
            .emergency_consent_exception
            .unwrap_or(self.kind == EMERGENCY_EXCEPTION_BY_DEFAULT);
        Ok(Kind {
            kind: self.kind,
            meaning: self.meaning,
            default_urgency: self.default_urgency,
            acknowledgement_deadline,
            emergency_consent_exception,
        })
    }
}

impl DeadlinesEntry {
    /// Each urgency the file leaves out keeps its default.
    fn check(self) -> Result<Deadlines, FieldError> {
        let mut deadlines = Deadlines::default();
        for (urgency, raw) in [
            (Urgency::Emergency, self.emergency),
            (Urgency::Urgent, self.urgent),
            (Urgency::Routine, self.routine),
        ] {
            if let Some(raw) = raw {
                let field = format!("acknowledgement_deadlines.{}", urgency.as_str());
                *deadlines.for_urgency_mut(urgency) = duration::parse(&field, &raw, Zero::Refused)?;
            }
        }
        Ok(deadlines)
    }
}

impl ScheduleEntry {
    /// The schedule for `kind`, or `None` for a note. A note is for people and is not checked;
    /// a schedule must be for a kind of the taxonomy, or no referral could ever follow it.
    fn check(self, kind: &str, dir: &Directory) -> Result<Option<FollowUpSchedule>, FieldError> {
        let field = |name: &str| format!("follow_up_schedules.{kind}{name}");
        let (every, grace) = match self {
            ScheduleEntry::Note(_) => return Ok(None),
            ScheduleEntry::Other(_) => {
                return Err(FieldError::new(
                    field(""),
                    "must be a note (a string) or an object with every and grace",
                ));
            }
            ScheduleEntry::Schedule { every, grace } => (every, grace),
        };
        let code = Code::parse("follow_up_schedules", kind)?;
        if !dir.has_kind(&code) {
            return Err(FieldError::new(
                field(""),
                format!("{kind} is not in referral_kinds"),
            ));
        }
        let every = every.ok_or_else(|| FieldError::new(field(".every"), "is required"))?;
        let every = duration::parse(&field(".every"), &every, Zero::Refused)?;
        let grace = match grace {
            Some(raw) => duration::parse(&field(".grace"), &raw, Zero::Allowed)?,
            None => std::time::Duration::ZERO,
        };
        Ok(Some(FollowUpSchedule { every, grace }))
    }
}

impl Directory {
    /// Checks agencies, provinces and services: ids, province codes, services from the taxonomy,
    /// no duplicate agencies.
    fn check_places(&self) -> Result<(), FieldError> {
        for p in &self.provinces {
            ProvinceCode::parse("provinces[].code", &p.code)?;
        }
        let mut seen = std::collections::HashSet::new();
        for a in &self.agencies {
            if !seen.insert(a.id.as_str()) {
                return Err(FieldError::new(
                    "agencies[].id",
                    format!("{} appears twice", a.id),
                ));
            }
            AgencyId::parse("agencies[].id", a.id.as_str())?;
            for p in &a.provinces {
                if p != "*" {
                    ProvinceCode::parse("agencies[].provinces", p)?;
                }
            }
            for s in &a.services {
                let code = Code::parse("agencies[].services", s)?;
                if !self.has_kind(&code) {
                    return Err(FieldError::new(
                        "agencies[].services",
                        format!("{} offers {s:?}, which is not in referral_kinds", a.id),
                    ));
                }
            }
        }
        Ok(())
    }
}
