//! The case file as JSON (what `send --case-file` reads and `show --json` prints), mirroring the
//! `CaseFile` proto field for field, and its follow-up part ([`CaseFile::follow_up_part`]): what a
//! recipient hands, with the follow-up visits, to the agency it delegates them to. These types derive no `Debug` on purpose: case-file content must
//! never reach a log line or an error message.

use prost::Message;
use serde::{Deserialize, Serialize};
use spean_proto::v1;

use crate::AdapterError;

#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PersonName {
    pub khmer: String,
    pub latin: String,
}

#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Guardian {
    pub name: PersonName,
    pub relationship: String,
    pub phone: String,
}

#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Contact {
    pub phone: String,
    pub address: String,
    pub directions: String,
}

#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Consent {
    pub given_by: String,
    pub given_at: String,
    pub scope: String,
}

#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CaseFile {
    pub name: PersonName,
    pub date_of_birth: String,
    pub guardians: Vec<Guardian>,
    pub contact: Contact,
    pub reason_for_referral: String,
    pub consent: Consent,
    pub transport_needs: String,
    pub notes: String,
}

/// A case file given in a request (the API's `send`), in a value that must be `Debug`: it prints
/// that one is there, never what it says.
#[derive(Clone, Default)]
pub struct Given(pub CaseFile);

impl std::fmt::Debug for Given {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaseFile { .. }")
    }
}

impl CaseFile {
    /// Parses the JSON form. The error names the position only, never the content.
    pub fn from_json(json: &[u8]) -> Result<Self, AdapterError> {
        serde_json::from_slice(json).map_err(|error| AdapterError::Invalid {
            field: "case_file".into(),
            reason: format!(
                "not a case file (line {}, column {}): {:?}",
                error.line(),
                error.column(),
                error.classify()
            ),
        })
    }

    /// The bytes that travel in `SubmitRequest.case_file`.
    pub fn encode(&self) -> Vec<u8> {
        v1::CaseFile::from(self.clone()).encode_to_vec()
    }

    /// What an agency making follow-up visits needs to find and recognise the child and to know it
    /// may visit: name, date of birth, guardians, contact and consent. The reason for referral,
    /// transport needs and notes stay with the recipient.
    pub fn follow_up_part(&self) -> Self {
        Self {
            name: self.name.clone(),
            date_of_birth: self.date_of_birth.clone(),
            guardians: self.guardians.clone(),
            contact: self.contact.clone(),
            consent: self.consent.clone(),
            ..Self::default()
        }
    }

    /// Reads the bytes of `Referral.case_file` back.
    pub fn decode(bytes: &[u8]) -> Result<Self, AdapterError> {
        v1::CaseFile::decode(bytes)
            .map(Self::from)
            .map_err(|source| AdapterError::Decode {
                what: "case file",
                source,
            })
    }
}

impl From<PersonName> for v1::PersonName {
    fn from(n: PersonName) -> Self {
        Self {
            khmer: n.khmer,
            latin: n.latin,
        }
    }
}

impl From<v1::PersonName> for PersonName {
    fn from(n: v1::PersonName) -> Self {
        Self {
            khmer: n.khmer,
            latin: n.latin,
        }
    }
}

impl From<CaseFile> for v1::CaseFile {
    fn from(c: CaseFile) -> Self {
        Self {
            name: Some(c.name.into()),
            date_of_birth: c.date_of_birth,
            guardians: c
                .guardians
                .into_iter()
                .map(|g| v1::Guardian {
                    name: Some(g.name.into()),
                    relationship: g.relationship,
                    phone: g.phone,
                })
                .collect(),
            contact: Some(v1::Contact {
                phone: c.contact.phone,
                address: c.contact.address,
                directions: c.contact.directions,
            }),
            reason_for_referral: c.reason_for_referral,
            consent: Some(v1::Consent {
                given_by: c.consent.given_by,
                given_at: c.consent.given_at,
                scope: c.consent.scope,
            }),
            transport_needs: c.transport_needs,
            notes: c.notes,
        }
    }
}

impl From<v1::CaseFile> for CaseFile {
    fn from(c: v1::CaseFile) -> Self {
        let contact = c.contact.unwrap_or_default();
        let consent = c.consent.unwrap_or_default();
        Self {
            name: c.name.unwrap_or_default().into(),
            date_of_birth: c.date_of_birth,
            guardians: c
                .guardians
                .into_iter()
                .map(|g| Guardian {
                    name: g.name.unwrap_or_default().into(),
                    relationship: g.relationship,
                    phone: g.phone,
                })
                .collect(),
            contact: Contact {
                phone: contact.phone,
                address: contact.address,
                directions: contact.directions,
            },
            reason_for_referral: c.reason_for_referral,
            consent: Consent {
                given_by: consent.given_by,
                given_at: consent.given_at,
                scope: consent.scope,
            },
            transport_needs: c.transport_needs,
            notes: c.notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn khmer_survives_json_encode_and_decode_byte_for_byte() -> Result<(), AdapterError> {
        let json = r#"{"name":{"khmer":"សុខ ស្រីល័ក្ខ","latin":"Sok Sreyleak"},
            "guardians":[{"name":{"khmer":"ម្ដាយ"},"relationship":"mother"}],
            "consent":{"given_by":"mother (ម្ដាយ)"}}"#;
        let case = CaseFile::from_json(json.as_bytes())?;
        let back = CaseFile::decode(&case.encode())?;
        assert_eq!(back.name.khmer.as_bytes(), "សុខ ស្រីល័ក្ខ".as_bytes());
        assert_eq!(back.guardians[0].name.khmer, "ម្ដាយ");
        assert_eq!(back.consent.given_by, "mother (ម្ដាយ)");
        assert!(back == case);
        Ok(())
    }

    #[test]
    fn the_follow_up_part_keeps_who_and_where_and_leaves_the_narrative() -> Result<(), AdapterError>
    {
        let json = r#"{"name":{"khmer":"សុខ ស្រីល័ក្ខ","latin":"Sok Sreyleak"},
            "date_of_birth":"2016-03-01",
            "guardians":[{"name":{"khmer":"ម្ដាយ"},"relationship":"mother","phone":"012"}],
            "contact":{"address":"ភូមិ ស្រែ","directions":"ជិតវត្ត"},
            "reason_for_referral":"ត្រូវការការថែទាំ","consent":{"given_by":"ម្ដាយ","scope":"visits"},
            "transport_needs":"ម៉ូតូ","notes":"កំណត់ចំណាំ"}"#;
        let whole = CaseFile::from_json(json.as_bytes())?;
        let part = CaseFile::decode(&whole.follow_up_part().encode())?;
        assert_eq!(part.name.khmer, "សុខ ស្រីល័ក្ខ");
        assert_eq!(part.date_of_birth, "2016-03-01");
        assert!(part.guardians == whole.guardians);
        assert!(part.contact == whole.contact);
        assert!(part.consent == whole.consent);
        assert_eq!(part.reason_for_referral, "");
        assert_eq!(part.transport_needs, "");
        assert_eq!(part.notes, "");
        Ok(())
    }

    #[test]
    fn unknown_fields_are_refused_so_typos_do_not_drop_data() {
        assert!(CaseFile::from_json(br#"{"nmae":{"khmer":"x"}}"#).is_err());
    }
}
