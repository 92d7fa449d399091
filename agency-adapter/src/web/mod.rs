//! The staff pages (docs/operations.md#pages): what social workers and coordinators use instead of
//! the command line, served by the daemon on the same local HTTP server as the API, in Khmer and
//! in English. Server-rendered HTML with no script at all and no file fetched from anywhere but
//! the adapter itself, so that a field site with no internet beyond its link to the broker gets
//! every page whole.
//!
//! - [`i18n`]: the two languages: every word, numbers, dates, durations.
//! - [`session`]: staff login, the session cookie, CSRF checks, the language switch.
//! - [`layout`]: the page shell (navigation, who is signed in, the language switch) and the
//!   style sheet.
//! - [`inbox`]: the inbox, what waits for this agency first.
//! - [`referral`]: one referral, its timeline and follow-up, and the forms of the actions its state
//!   allows.
//! - [`send`]: the form that sends a referral, with the directory's choices.
//! - [`sent`]: what this agency sent, and what still waits to go out.
//! - [`network`]: for coordinators and provincial departments: the overdue list, a referral's
//!   timeline without its case file, figures with charts, and their CSV.
//! - [`chart`]: bar charts drawn as SVG by the server.
//! - [`directory`]: the broker's directory (agencies, kinds and their deadlines, provinces), kept
//!   for a while so that the pages work when the broker cannot be reached.
//!
//! Every case-file read a page makes is recorded in the audit log under the staff member's name,
//! as `show --by` records it; every action is recorded with their name, as `--by` is.

pub mod chart;
pub mod directory;
pub mod i18n;
pub mod inbox;
pub mod layout;
pub mod network;
pub mod referral;
pub mod send;
pub mod sent;
pub mod session;

use std::sync::Arc;

use axum::{
    Router,
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
};

use crate::{cli::Context, link::Link};

/// What every page handler works with.
#[derive(Clone)]
pub struct WebState {
    pub(crate) ctx: Arc<Context>,
    pub(crate) link: Arc<Link>,
    pub(crate) directory: Arc<directory::Cached>,
}

impl WebState {
    pub(crate) fn new(ctx: Arc<Context>, link: Arc<Link>) -> Self {
        Self {
            ctx,
            link,
            directory: Arc::new(directory::Cached::default()),
        }
    }
}

/// Every page, behind the checks every response gets ([`protect`]).
pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/", get(inbox::page))
        .route("/login", get(session::login_page).post(session::log_in))
        .route("/logout", post(session::log_out))
        .route("/language", post(session::switch_language))
        .route("/referrals/{id}", get(referral::page))
        .route("/referrals/{id}/act", post(referral::act))
        .route("/send", get(send::page).post(send::send))
        .route("/sent", get(sent::page))
        .route("/network", get(network::overdue))
        .route("/network/referrals/{id}", get(network::timeline))
        .route("/network/figures", get(network::figures))
        .route("/network/figures.csv", get(network::figures_csv))
        .route("/assets/spean.css", get(layout::style_sheet))
        .route("/assets/icon.svg", get(layout::icon))
        .route("/favicon.ico", get(layout::icon))
        .layer(axum::middleware::from_fn(protect))
        .with_state(state)
}

/// The policy every page is served under. Nothing may load from anywhere but the adapter, no
/// script runs, forms post only back here, no other site may frame a page; and no page is kept in
/// a cache (they hold case files). A POST whose `Origin` is another site is refused before it
/// reaches a handler, on top of each form's CSRF token.
async fn protect(request: Request, next: Next) -> Response {
    if request.method() == axum::http::Method::POST && !same_origin(&request) {
        return (StatusCode::FORBIDDEN, "cross-site form refused").into_response();
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// A POST comes from this server's own pages: the browser says it is same-origin
/// (`Sec-Fetch-Site`), or its `Origin` names the host it was sent to. A client that sends
/// neither (not a browser) still has to carry the session's CSRF token.
fn same_origin(request: &Request) -> bool {
    let headers = request.headers();
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return matches!(site, "same-origin" | "none");
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| !host.is_empty() && rest == host)
}
