//! The network directory: agencies, the services they offer, the provinces they serve, and the
//! referral taxonomy. It decides where a referral addressed by service and province goes.
//!
//! The import format is the one of `fixtures/network.json` (documented in `docs/reference.md`); unknown
//! fields are ignored so the same file can carry notes for people.

use serde::{Deserialize, Serialize};

use crate::error::FieldError;
use crate::ids::{AgencyId, ProvinceCode};
use crate::referral::Code;

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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kind {
    pub kind: String,
    #[serde(default)]
    pub meaning: String,
    #[serde(default)]
    pub default_urgency: String,
}

/// The whole directory, as imported.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Directory {
    #[serde(default)]
    pub provinces: Vec<Province>,
    #[serde(default)]
    pub referral_kinds: Vec<Kind>,
    pub agencies: Vec<Agency>,
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
    /// no duplicate agencies.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DirectoryError> {
        let dir: Directory = serde_json::from_slice(bytes)?;
        dir.check()?;
        Ok(dir)
    }

    fn check(&self) -> Result<(), FieldError> {
        for p in &self.provinces {
            ProvinceCode::parse("provinces[].code", &p.code)?;
        }
        for k in &self.referral_kinds {
            Code::parse("referral_kinds[].kind", &k.kind)?;
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
                if !self.referral_kinds.is_empty() && !self.has_kind(&code) {
                    return Err(FieldError::new(
                        "agencies[].services",
                        format!("{} offers {s:?}, which is not in referral_kinds", a.id),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn agency(&self, id: &AgencyId) -> Option<&Agency> {
        self.agencies.iter().find(|a| &a.id == id)
    }

    /// A kind is known when the taxonomy lists it (an empty taxonomy accepts any well-formed code).
    pub fn has_kind(&self, kind: &Code) -> bool {
        self.referral_kinds.is_empty()
            || self.referral_kinds.iter().any(|k| k.kind == kind.as_str())
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Directory {
        Directory::from_json(include_bytes!("../../fixtures/network.json")).unwrap()
    }

    #[test]
    fn the_fixture_network_imports() {
        let dir = fixture();
        assert_eq!(dir.agencies.len(), 12);
        assert_eq!(dir.provinces.len(), 25);
        let pailin = dir.provinces.iter().find(|p| p.code == "24").unwrap();
        assert_eq!(pailin.name_km, "ប៉ៃលិន");
    }

    #[test]
    fn follow_up_in_pailin_resolves_to_the_ngo_before_the_department() {
        let dir = fixture();
        let service = Code::parse("s", "reintegration_follow_up").unwrap();
        let pailin = ProvinceCode::parse("p", "24").unwrap();
        let ids: Vec<&str> = dir
            .providers(&service, &pailin)
            .iter()
            .map(|a| a.id.as_str())
            .collect();
        assert_eq!(ids, ["mlup-russey", "dosvy-24"]);
    }

    #[test]
    fn a_service_outside_the_taxonomy_is_refused_with_its_field() {
        let doc = br#"{"referral_kinds":[{"kind":"lama"}],
            "agencies":[{"id":"x-ngo","name":"X","type":"ngo","provinces":["01"],"services":["tea"]}]}"#;
        let err = Directory::from_json(doc).unwrap_err().to_string();
        assert!(err.contains("agencies[].services"), "{err}");
    }
}
