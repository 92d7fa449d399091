//! What still waits for the broker, health, and the API's own document.

use axum::{
    Json,
    extract::{Path, State},
};
use serde::Serialize;

use super::{ApiState, problem::Problem};
use crate::{
    cli::views::{OutboxItem, outbox_items},
    link::LinkStatus,
};

/// The outbox, oldest first: every request made here, `pending` until the broker records it,
/// `sent`, or `rejected` with the broker's reason.
#[utoipa::path(
    get, path = "/v1/outbox", tag = "outbox",
    responses(
        (status = 200, body = Vec<OutboxItem>),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn outbox(State(state): State<ApiState>) -> Result<Json<Vec<OutboxItem>>, Problem> {
    Ok(Json(outbox_items(&state.ctx).await?))
}

/// One request of the outbox, by its idempotency key: whether it was sent, is still waiting, or
/// was refused and why.
#[utoipa::path(
    get, path = "/v1/outbox/{key}", tag = "outbox",
    params(("key" = String, Path, description = "The request's Idempotency-Key")),
    responses(
        (status = 200, body = OutboxItem),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn outbox_request(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Json<OutboxItem>, Problem> {
    let row = state
        .ctx
        .store
        .outbox_row(&key)
        .await?
        .ok_or(crate::AdapterError::NotFound {
            what: "outbox request",
            id: key,
        })?;
    Ok(Json(OutboxItem::from(row)))
}

/// The outbox in numbers.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OutboxCounts {
    /// Waiting for the broker.
    pub pending: usize,
    /// Refused by the broker: each needs a person to look at its reason.
    pub rejected: usize,
    /// When the oldest pending request was made; `null` when none waits.
    pub oldest_pending_at: Option<String>,
}

/// Whether the adapter is up, whether it reaches the broker, and what waits.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` whenever the adapter answers; `degraded` while the broker is out of reach or a
    /// request was refused.
    pub status: &'static str,
    pub agency_id: String,
    pub broker: LinkStatus,
    pub outbox: OutboxCounts,
}

/// Health: the link to the broker and what waits in the outbox.
#[utoipa::path(
    get, path = "/v1/health", tag = "meta",
    responses(
        (status = 200, body = Health),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn health(State(state): State<ApiState>) -> Result<Json<Health>, Problem> {
    let rows = state.ctx.store.outbox().await?;
    let pending: Vec<_> = rows.iter().filter(|r| r.status == "pending").collect();
    let rejected = rows.iter().filter(|r| r.status == "rejected").count();
    let broker = state.link.status();
    let degraded = !broker.connected || rejected > 0;
    Ok(Json(Health {
        status: if degraded { "degraded" } else { "ok" },
        agency_id: state.ctx.me().to_owned(),
        outbox: OutboxCounts {
            pending: pending.len(),
            rejected,
            oldest_pending_at: pending.first().map(|r| r.created_at.clone()),
        },
        broker,
    }))
}

/// This document: the OpenAPI 3.1 description of every route, generated from the code.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", body = Object),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(super::document())
}
