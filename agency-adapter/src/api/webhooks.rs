//! Webhook endpoints and their messages, as `spean-adapter webhook` manages them
//! (docs/integration.md#webhooks). Registering takes an `Idempotency-Key`; enabling, disabling
//! and removing are idempotent by nature; a message resent twice is posted twice under its one
//! `webhook-id`, which receivers already deduplicate on.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use spean_domain::ids::RequestId;

use super::{
    ApiState,
    input::{Body, IDEMPOTENCY_KEY, IdempotencyKey, Params},
    problem::Problem,
};
use crate::webhooks::{
    self, AttemptView, Created, Endpoint, MessageFilter, MessageStatus, MessageView, NewEndpoint,
};

/// Every endpoint registered, oldest first; never their secrets.
#[utoipa::path(
    get, path = "/v1/webhooks", tag = "webhooks",
    responses(
        (status = 200, body = Vec<Endpoint>),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(State(state): State<ApiState>) -> Result<Json<Vec<Endpoint>>, Problem> {
    Ok(Json(webhooks::list(&state.ctx.store).await?))
}

/// Registers an endpoint for the event types it names, and answers its signing secret. The same
/// `Idempotency-Key` with the same endpoint answers the first registration (200).
#[utoipa::path(
    post, path = "/v1/webhooks", tag = "webhooks",
    params(("Idempotency-Key" = String, Header, description = "Your key for this registration")),
    request_body = NewEndpoint,
    responses(
        (status = 201, description = "Registered: the secret is in the answer", body = Created),
        (status = 200, description = "Registered before under this key", body = Created),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn register(
    State(state): State<ApiState>,
    IdempotencyKey(key): IdempotencyKey,
    Body(new): Body<NewEndpoint>,
) -> Result<Response, Problem> {
    RequestId::parse(IDEMPOTENCY_KEY, &key).map_err(crate::AdapterError::from)?;
    let (created, replayed) = webhooks::register_keyed(&state.ctx.store, &key, new).await?;
    let status = if replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(created)).into_response())
}

/// One endpoint.
#[utoipa::path(
    get, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint id (ep_…)")),
    responses(
        (status = 200, body = Endpoint),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, Problem> {
    Ok(Json(webhooks::get(&state.ctx.store, &id).await?))
}

/// Removes an endpoint with its messages: unlike disabling, nothing is kept.
#[utoipa::path(
    delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint id (ep_…)")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn remove(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    webhooks::remove(&state.ctx.store, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Enables an endpoint (after it was disabled by hand or for failing): its kept messages go, in
/// order.
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/enable", tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint id (ep_…)")),
    responses(
        (status = 200, body = Endpoint),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn enable(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, Problem> {
    Ok(Json(
        webhooks::set_enabled(&state.ctx.store, &id, true).await?,
    ))
}

/// Disables an endpoint: nothing is posted to it, and its messages are kept until it is enabled.
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/disable", tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint id (ep_…)")),
    responses(
        (status = 200, body = Endpoint),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn disable(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, Problem> {
    Ok(Json(
        webhooks::set_enabled(&state.ctx.store, &id, false).await?,
    ))
}

/// An endpoint's signing secret.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Secret {
    /// `whsec_…`: base64 of the HMAC-SHA256 key, as Standard Webhooks libraries take it.
    pub secret: String,
}

/// An endpoint's signing secret, for a system that lost it.
#[utoipa::path(
    get, path = "/v1/webhooks/{id}/secret", tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint id (ep_…)")),
    responses(
        (status = 200, body = Secret),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn secret(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Secret>, Problem> {
    Ok(Json(Secret {
        secret: webhooks::secret(&state.ctx.store, &id).await?,
    }))
}

/// Which messages to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// Only this endpoint's.
    pub endpoint: Option<String>,
    /// Only those `pending`, `failing` or `delivered`.
    pub status: Option<MessageStatus>,
}

/// Messages, oldest first, with how their attempts went and when the next is due.
#[utoipa::path(
    get, path = "/v1/webhook-messages", tag = "webhooks",
    params(MessagesQuery),
    responses(
        (status = 200, body = Vec<MessageView>),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn messages(
    State(state): State<ApiState>,
    Params(query): Params<MessagesQuery>,
) -> Result<Json<Vec<MessageView>>, Problem> {
    let filter = MessageFilter {
        endpoint: query.endpoint,
        status: query.status,
    };
    Ok(Json(webhooks::messages(&state.ctx.store, &filter).await?))
}

/// One message.
#[utoipa::path(
    get, path = "/v1/webhook-messages/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "The message id (msg_…), its webhook-id")),
    responses(
        (status = 200, body = MessageView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn message(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, Problem> {
    Ok(Json(webhooks::message(&state.ctx.store, &id).await?))
}

/// Every attempt to post a message: when, the status code or why none came, the latency.
#[utoipa::path(
    get, path = "/v1/webhook-messages/{id}/attempts", tag = "webhooks",
    params(("id" = String, Path, description = "The message id (msg_…)")),
    responses(
        (status = 200, body = Vec<AttemptView>),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn attempts(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<AttemptView>>, Problem> {
    Ok(Json(webhooks::attempts(&state.ctx.store, &id).await?))
}

/// Posts a message again now, under its same id (delivered or not).
#[utoipa::path(
    post, path = "/v1/webhook-messages/{id}/resend", tag = "webhooks",
    params(("id" = String, Path, description = "The message id (msg_…)")),
    responses(
        (status = 200, body = MessageView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn resend(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, Problem> {
    Ok(Json(webhooks::resend(&state.ctx.store, &id).await?))
}
