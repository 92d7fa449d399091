//! Escalation tiers: who is told when a referral's recipient stays silent past its acknowledgement
//! deadline. Each network decides this for itself, so it is data in the directory file, not code.

use crate::error::FieldError;
use crate::ids::{AgencyId, ProvinceCode};

use super::{Agency, AgencyType};

/// The token standing for "the provincial department of the subject's province": one directory
/// serves many provinces, so a tier cannot name each province's department by id.
pub(super) const PROVINCE_AUTHORITY: &str = "@province_authority";

/// The most deadlines a tier may wait for. The broker multiplies a deadline by the gap between
/// tiers; a bound keeps that far from overflow, and no network waits a hundred deadlines.
const MOST_DEADLINES: u32 = 100;

/// One escalation tier, reached when the recipient has missed `after_deadlines` deadlines in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Tier {
    /// How many acknowledgement deadlines pass before this tier is told; strictly increasing
    /// from one tier to the next, so tiers are reached in order.
    pub(super) after_deadlines: u32,
    /// Who is told, as written in the file; resolved per referral by [`Tier::resolve`].
    pub(super) to: Vec<Notified>,
}

/// One entry of a tier's `to` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Notified {
    /// Every `authority` agency naming the subject's province (not `*`).
    ProvinceAuthority,
    /// One agency of the directory.
    Agency(AgencyId),
}

impl Notified {
    /// Parses one `to` entry; an agency id must be one of `agencies`, so that a tier can never
    /// point at nobody because of a typo.
    fn parse(raw: &str, agencies: &[Agency]) -> Result<Self, FieldError> {
        const FIELD: &str = "escalation.tiers[].to";
        if raw == PROVINCE_AUTHORITY {
            return Ok(Self::ProvinceAuthority);
        }
        if raw.starts_with('@') {
            return Err(FieldError::new(
                FIELD,
                format!("{raw:?} is not a known token; the one token is {PROVINCE_AUTHORITY}"),
            ));
        }
        let id = AgencyId::parse(FIELD, raw)?;
        if !agencies.iter().any(|a| a.id == id) {
            return Err(FieldError::new(
                FIELD,
                format!("{raw} is not an agency of the directory"),
            ));
        }
        Ok(Self::Agency(id))
    }

    /// The entry as the file writes it.
    pub(super) fn as_str(&self) -> &str {
        match self {
            Self::ProvinceAuthority => PROVINCE_AUTHORITY,
            Self::Agency(id) => id.as_str(),
        }
    }
}

impl Tier {
    /// The agencies this tier tells about a referral whose subject lives in `province`: sorted
    /// and without duplicates, so that each is notified once and the order is stable.
    pub(super) fn resolve(&self, agencies: &[Agency], province: &ProvinceCode) -> Vec<AgencyId> {
        let mut ids: Vec<AgencyId> = Vec::new();
        for entry in &self.to {
            match entry {
                Notified::Agency(id) => ids.push(id.clone()),
                Notified::ProvinceAuthority => ids.extend(
                    agencies
                        .iter()
                        .filter(|a| {
                            a.agency_type == AgencyType::Authority
                                && a.provinces.iter().any(|p| p == province.as_str())
                        })
                        .map(|a| a.id.clone()),
                ),
            }
        }
        ids.sort();
        ids.dedup();
        ids
    }
}

/// Parses the tiers as the file writes them (`after_deadlines`, `to`), checking that they are
/// reached in order and name only agencies of `agencies`.
pub(super) fn parse_tiers(
    raw: impl IntoIterator<Item = (i64, Vec<String>)>,
    agencies: &[Agency],
) -> Result<Vec<Tier>, FieldError> {
    const AFTER: &str = "escalation.tiers[].after_deadlines";
    let mut tiers: Vec<Tier> = Vec::new();
    for (after, to) in raw {
        let after_deadlines = u32::try_from(after)
            .ok()
            .filter(|n| (1..=MOST_DEADLINES).contains(n))
            .ok_or_else(|| {
                FieldError::new(
                    AFTER,
                    format!("must be from 1 to {MOST_DEADLINES}, not {after}"),
                )
            })?;
        if let Some(previous) = tiers.last()
            && after_deadlines <= previous.after_deadlines
        {
            return Err(FieldError::new(
                AFTER,
                format!(
                    "must increase from one tier to the next, but {after_deadlines} follows {}",
                    previous.after_deadlines
                ),
            ));
        }
        if to.is_empty() {
            return Err(FieldError::new(
                "escalation.tiers[].to",
                format!("the tier after {after_deadlines} deadlines names no one"),
            ));
        }
        let to = to
            .iter()
            .map(|raw| Notified::parse(raw, agencies))
            .collect::<Result<_, _>>()?;
        tiers.push(Tier {
            after_deadlines,
            to,
        });
    }
    Ok(tiers)
}
