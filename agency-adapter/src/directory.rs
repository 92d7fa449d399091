//! What the adapter reads from the broker's directory: the provinces an agency serves, so that
//! `send --to` can take the subject's province from a recipient that serves only one.

use spean_domain::ids::AgencyId;
use spean_proto::v1::{Agency, ListAgenciesRequest};

use crate::{
    AdapterError,
    broker::{Broker, REQUEST_TIMEOUT},
};

/// The directory's entry for `id`, or `None` when it has no such agency. The directory service has
/// no call for a single agency, so this lists them all: one call per `send --to` that needs it.
#[tracing::instrument(skip_all, fields(agency = %id), err(level = "debug"))]
pub async fn agency(broker: &mut Broker, id: &AgencyId) -> Result<Option<Agency>, AdapterError> {
    let call = broker
        .directory
        .list_agencies(ListAgenciesRequest::default());
    let agencies = tokio::time::timeout(REQUEST_TIMEOUT, call)
        .await
        .map_err(|_| AdapterError::Unavailable("no answer in time".into()))??
        .into_inner()
        .agencies;
    Ok(agencies.into_iter().find(|a| a.id == id.as_str()))
}

/// The one province `agency` serves, if it serves exactly one. A national agency (`*`) serves them
/// all, so it has none to offer.
pub fn sole_province(agency: &Agency) -> Option<&str> {
    match agency.provinces.as_slice() {
        [only] if only != "*" => Some(only),
        _ => None,
    }
}

/// The provinces an agency serves, in the directory's order, as the end of a sentence:
/// `24`, `24 and 02`, `02, 15 and 24`, or `every province` for a national agency.
pub fn describe_provinces(provinces: &[String]) -> String {
    if provinces.iter().any(|p| p == "*") {
        return "every province".to_owned();
    }
    match provinces {
        [] => "no province".to_owned(),
        [only] => only.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving(provinces: &[&str]) -> Agency {
        Agency {
            id: "mlup-russey".into(),
            provinces: provinces.iter().map(|p| (*p).to_owned()).collect(),
            ..Agency::default()
        }
    }

    #[test]
    fn only_an_agency_of_one_province_gives_the_subject_its_province() {
        assert_eq!(sole_province(&serving(&["24"])), Some("24"));
        assert_eq!(sole_province(&serving(&["24", "02"])), None);
        assert_eq!(sole_province(&serving(&["*"])), None);
        assert_eq!(sole_province(&serving(&[])), None);
    }

    #[test]
    fn provinces_read_as_a_list() {
        let list = |p: &[&str]| describe_provinces(&serving(p).provinces);
        assert_eq!(list(&["24"]), "24");
        assert_eq!(list(&["24", "02"]), "24 and 02");
        assert_eq!(list(&["02", "15", "24"]), "02, 15 and 24");
        assert_eq!(list(&["*"]), "every province");
        assert_eq!(list(&[]), "no province");
    }
}
