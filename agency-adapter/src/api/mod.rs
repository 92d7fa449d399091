//! The local HTTP API (docs/integration.md): everything the command line does, as JSON over HTTP,
//! for an agency's own case-management system. Served by the daemon on a local address.
//!
//! - [`problem`]: errors as RFC 9457 problem details, naming the field at fault.
//! - [`auth`]: API keys (`spean-adapter api-key`), checked before any route runs.
//! - [`input`]: the JSON body and the `Idempotency-Key` header, read with errors that name the field.
//! - [`referrals`]: the inbox, what was sent, one referral, and sending one.
//! - [`actions`]: the feedback actions on a referral.
//! - [`outbox`]: what still waits for the broker, and health.
//! - [`webhooks`]: webhook endpoints and their messages.
//! - [`server`]: listening, on localhost, or beyond it over TLS only.
//!
//! The OpenAPI 3.1 document is generated from the handlers' annotations (utoipa) as the router is
//! built, so a route cannot be served without being documented; it is served at
//! `/v1/openapi.json`.

pub mod actions;
pub mod auth;
pub mod input;
pub mod outbox;
pub mod problem;
pub mod referrals;
pub mod server;
pub mod webhooks;

use std::sync::Arc;

use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{cli::Context, link::Link};

/// What every handler works with.
#[derive(Clone)]
pub struct ApiState {
    pub(crate) ctx: Arc<Context>,
    pub(crate) link: Arc<Link>,
}

impl ApiState {
    pub(crate) fn new(ctx: Context, link: Arc<Link>) -> Self {
        Self {
            ctx: Arc::new(ctx),
            link,
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Spean agency adapter",
        description = "The local API of an agency's Spean adapter: its inbox, what it sent, the \
                       feedback actions, the outbox and webhooks. Every route needs an API key \
                       (`spean-adapter api-key create NAME`) as `Authorization: Bearer <key>`. \
                       Every write takes an `Idempotency-Key` header. Errors are RFC 9457 \
                       problem details.",
        license(name = "Apache-2.0"),
    ),
    modifiers(&BearerKey),
    security(("api_key" = [])),
    tags(
        (name = "referrals", description = "The inbox, what was sent, one referral, sending one"),
        (name = "actions", description = "Feedback on a referral"),
        (name = "outbox", description = "What waits for the broker"),
        (name = "webhooks", description = "Endpoints of the agency's own system, and the signed messages posted to them"),
        (name = "meta", description = "Health and this document"),
    )
)]
struct ApiDoc;

/// Declares the bearer scheme the document's `security` names.
struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key made by `spean-adapter api-key create`"))
                    .build(),
            ),
        );
    }
}

/// Every route with its documentation, before the state and the key check are added.
fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(referrals::inbox))
        .routes(routes!(referrals::sent))
        .routes(routes!(referrals::send))
        .routes(routes!(referrals::show))
        .routes(routes!(actions::acknowledge))
        .routes(routes!(actions::accept))
        .routes(routes!(actions::decline))
        .routes(routes!(actions::redirect))
        .routes(routes!(actions::in_progress))
        .routes(routes!(actions::follow_up))
        .routes(routes!(actions::complete))
        .routes(routes!(actions::fail))
        .routes(routes!(actions::withdraw))
        .routes(routes!(actions::entered_in_error))
        .routes(routes!(actions::delegate))
        .routes(routes!(actions::revoke_delegation))
        .routes(routes!(actions::withdraw_consent))
        .routes(routes!(outbox::outbox))
        .routes(routes!(outbox::outbox_request))
        .routes(routes!(outbox::health))
        .routes(routes!(outbox::openapi))
        .routes(routes!(webhooks::list, webhooks::register))
        .routes(routes!(webhooks::get, webhooks::remove))
        .routes(routes!(webhooks::enable))
        .routes(routes!(webhooks::disable))
        .routes(routes!(webhooks::secret))
        .routes(routes!(webhooks::messages))
        .routes(routes!(webhooks::message))
        .routes(routes!(webhooks::attempts))
        .routes(routes!(webhooks::resend))
}

/// The OpenAPI 3.1 document of every route.
pub fn document() -> utoipa::openapi::OpenApi {
    routes().split_for_parts().1
}

/// The router, every route behind the key check.
pub fn router(state: ApiState) -> axum::Router {
    let (router, _) = routes().split_for_parts();
    router
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(input::MAX_BODY))
        .with_state(state)
}
