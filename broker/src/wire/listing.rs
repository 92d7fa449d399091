//! The requests that page through a list: `List` (an agency's referrals) and `ListOverdue` (a
//! coordinator's), their page size and page token.

use spean_proto::v1 as pb;

use super::{role, state_from_pb};
use crate::error::FieldError;
use crate::ids::{ClientRef, ReferralId};
use crate::referral::{Code, ListQuery};

/// A page when the caller asks for none.
const DEFAULT_PAGE: u32 = 50;
/// The longest page: a bigger one holds a database connection and a message too long.
const MAX_PAGE: u32 = 500;

/// The page size asked for: 0 is the default, more than [`MAX_PAGE`] is refused.
pub fn page_size(asked: u32) -> Result<u32, FieldError> {
    match asked {
        0 => Ok(DEFAULT_PAGE),
        n if n <= MAX_PAGE => Ok(n),
        n => Err(FieldError::new(
            "page_size",
            format!("{n} is over the limit of {MAX_PAGE}"),
        )),
    }
}

/// The overdue list's page token: how many entries of the list earlier pages held. The overdue
/// list is made afresh on every call, so a referral answered between two pages shifts the rest by
/// one: the list is a view of now, not a snapshot.
pub fn page_offset(token: &str) -> Result<usize, FieldError> {
    if token.is_empty() {
        return Ok(0);
    }
    token
        .parse()
        .map_err(|_| FieldError::new("page_token", "is not a token this service gave"))
}

/// A `ListRequest`, parsed: the page size, and the query, which asks for one referral more than
/// the page holds so that the answer knows whether another page follows.
pub fn list_query(req: &pb::ListRequest) -> Result<(u32, ListQuery), FieldError> {
    let page = page_size(req.page_size)?;
    let query = ListQuery {
        role: role(req.role)?,
        states: req
            .states
            .iter()
            .map(|s| state_from_pb("states", *s))
            .collect::<Result<Vec<_>, _>>()?,
        kind: (!req.kind.is_empty())
            .then(|| Code::parse("kind", &req.kind))
            .transpose()?,
        client_pseudonym: (!req.client_pseudonym.is_empty())
            .then(|| ClientRef::parse("client_pseudonym", &req.client_pseudonym))
            .transpose()?,
        limit: page + 1,
        before: (!req.page_token.is_empty())
            .then(|| ReferralId::parse("page_token", &req.page_token))
            .transpose()?,
    };
    Ok((page, query))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_fifty_by_default_and_at_most_five_hundred() {
        assert_eq!(page_size(0), Ok(50));
        assert_eq!(page_size(500), Ok(500));
        assert_eq!(page_size(501).unwrap_err().field, "page_size");
        assert_eq!(page_size(u32::MAX).unwrap_err().field, "page_size");
    }

    #[test]
    fn a_page_token_is_a_count_this_service_gave() {
        assert_eq!(page_offset(""), Ok(0));
        assert_eq!(page_offset("100"), Ok(100));
        for token in ["-1", "x", "99999999999999999999999", "٣"] {
            assert_eq!(
                page_offset(token).unwrap_err().field,
                "page_token",
                "{token}"
            );
        }
    }

    #[test]
    fn a_list_query_asks_one_more_than_the_page_and_names_a_bad_field() {
        let (page, query) = list_query(&pb::ListRequest {
            page_size: 20,
            ..Default::default()
        })
        .unwrap();
        assert_eq!((page, query.limit), (20, 21));
        let bad = pb::ListRequest {
            states: vec![pb::ReferralState::Sent as i32, 99],
            ..Default::default()
        };
        assert_eq!(list_query(&bad).unwrap_err().field, "states");
        let bad = pb::ListRequest {
            page_token: "not-an-id".into(),
            ..Default::default()
        };
        assert_eq!(list_query(&bad).unwrap_err().field, "page_token");
    }
}
