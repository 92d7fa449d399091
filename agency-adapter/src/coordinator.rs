//! What the adapter asks the broker for a coordinator or a provincial department: the referrals
//! overdue now in its provinces, and the network's figures; and, for any agency, its own figures.
//! Each call is bounded by [`REQUEST_TIMEOUT`]. A refusal (an agency that is not a coordinator or
//! an authority asking the network's, a province outside its scope) comes back as
//! [`AdapterError::Rejected`] with the broker's code.

use spean_proto::v1::{FiguresRequest, FiguresResponse, ListOverdueRequest, OverdueReferral};

use crate::{
    AdapterError,
    broker::{Broker, REQUEST_TIMEOUT},
};

/// How many overdue referrals to ask for per page.
const PAGE_SIZE: u32 = 500;

/// Whose figures to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The calling agency's own referrals (`ReferralService.Figures`).
    Own,
    /// The network's, in the caller's provinces (`CoordinatorService.Figures`).
    Network,
}

/// Every referral overdue now that matches `filter`, all pages, oldest due first.
#[tracing::instrument(skip_all, err(level = "debug"))]
pub async fn list_overdue(
    broker: &mut Broker,
    filter: ListOverdueRequest,
) -> Result<Vec<OverdueReferral>, AdapterError> {
    let mut referrals = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListOverdueRequest {
            page_size: PAGE_SIZE,
            page_token: page_token.clone(),
            ..filter.clone()
        };
        let page = bounded(broker.coordinator.list_overdue(request)).await?;
        referrals.extend(page.referrals);
        if page.next_page_token.is_empty() || page.next_page_token == page_token {
            return Ok(referrals);
        }
        page_token = page.next_page_token;
    }
}

/// The figures of `scope` for the period and province of `request`.
#[tracing::instrument(skip_all, err(level = "debug"))]
pub async fn figures(
    broker: &mut Broker,
    scope: Scope,
    request: FiguresRequest,
) -> Result<FiguresResponse, AdapterError> {
    match scope {
        Scope::Own => bounded(broker.referrals.figures(request)).await,
        Scope::Network => bounded(broker.coordinator.figures(request)).await,
    }
}

/// Waits for a unary call at most [`REQUEST_TIMEOUT`], which counts as unavailability.
pub(crate) async fn bounded<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, AdapterError> {
    Ok(tokio::time::timeout(REQUEST_TIMEOUT, call)
        .await
        .map_err(|_| AdapterError::Unavailable("no answer in time".into()))??
        .into_inner())
}
