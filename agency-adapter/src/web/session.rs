//! Who is using the pages: staff accounts (`spean-adapter user`, [`crate::staff`]) log in with a
//! password and get a session cookie; every page but the login page needs one.
//!
//! The cookie is `HttpOnly` (no script can read it), `SameSite=Strict` (no other site's page
//! makes the browser send it) and `Secure` (browsers send it only over TLS, or to `localhost`).
//! Every form carries the session's CSRF token as well, checked before anything is done, and a
//! POST from another origin is refused before any handler runs (`super::protect`).

use std::collections::HashMap;

use axum::{
    Form,
    extract::{FromRequestParts, Query, State},
    http::{HeaderMap, StatusCode, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};

use super::{WebState, i18n::Lang, layout};
use crate::staff::{LoginRefused, Session};

/// The session cookie's name: `spean_<agency>`, so that the pages of two adapters on one machine
/// (a coordinator's and an agency's, say) keep their sessions apart: browsers keep cookies per
/// host, not per port.
pub fn cookie_name(state: &WebState) -> String {
    format!("spean_{}", state.ctx.me())
}
/// The cookie that remembers the language chosen before logging in.
const LANG_COOKIE: &str = "spean_lang";

/// The signed-in staff member of a request; a request without a live session is sent to the
/// login page, and back to where it was going once logged in.
pub struct Staff {
    pub session: Session,
    pub lang: Lang,
    /// The page asked for (path and query), where the language switch comes back to.
    pub here: String,
}

impl Staff {
    /// The name recorded with this person's actions and reads, as `--by` records it.
    pub fn name(&self) -> &str {
        &self.session.staff.display_name
    }

    /// The name the audit log records for a read from the pages: the person, and that it was
    /// through the pages with their login (`Sok Dara via web:sdara`).
    pub fn reader(&self) -> String {
        format!(
            "{} via web:{}",
            self.session.staff.display_name, self.session.staff.username
        )
    }

    /// The refusal of a form whose CSRF token is not this session's; `None` for one that is.
    pub fn csrf_refusal(&self, form: &HashMap<String, String>) -> Option<Response> {
        let presented = form.get("csrf").map(String::as_str).unwrap_or_default();
        (!self.session.csrf_matches(presented)).then(|| {
            layout::error_page(self.lang, StatusCode::FORBIDDEN, self.lang.t().form_expired)
        })
    }

    /// The hidden field every form of this session carries.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.session.csrf); }
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

impl FromRequestParts<WebState> for Staff {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &WebState,
    ) -> Result<Self, Self::Rejection> {
        let to_login = || {
            let next = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .filter(|p| *p != "/")
                .map(|p| {
                    format!(
                        "?next={}",
                        form_urlencoded::byte_serialize(p.as_bytes()).collect::<String>()
                    )
                })
                .unwrap_or_default();
            Redirect::to(&format!("/login{next}")).into_response()
        };
        let Some(token) = cookie(&parts.headers, &cookie_name(state)) else {
            return Err(to_login());
        };
        match state.ctx.store.session(token).await {
            Ok(Some(session)) => {
                let lang = Lang::parse(&session.staff.language).unwrap_or(Lang::Km);
                let here = parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
                Ok(Self {
                    session,
                    lang,
                    here,
                })
            }
            Ok(None) => Err(to_login()),
            Err(error) => {
                tracing::error!(error = %error, "cannot read the session");
                Err(layout::error_page(
                    Lang::Km,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Lang::Km.t().error_title,
                ))
            }
        }
    }
}

/// The language of a request that has no session: the `spean_lang` cookie, else the browser's.
fn visitor_lang(headers: &HeaderMap) -> Lang {
    cookie(headers, LANG_COOKIE)
        .and_then(Lang::parse)
        .unwrap_or_else(|| {
            Lang::from_accept_language(
                headers
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok()),
            )
        })
}

/// Where to go after logging in: a path on this server only, never another site.
fn next_path(raw: Option<&String>) -> String {
    match raw {
        Some(next) if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') => {
            next.clone()
        }
        _ => "/".to_owned(),
    }
}

pub async fn login_page(
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let lang = visitor_lang(&headers);
    login_form(lang, &next_path(query.get("next")), None, StatusCode::OK)
}

fn login_form(lang: Lang, next: &str, problem: Option<String>, status: StatusCode) -> Response {
    let t = lang.t();
    let body = html! {
        h1 { (t.log_in_title) }
        @if let Some(problem) = &problem {
            p.problem role="alert" { (problem) }
        }
        form.card method="post" action="/login" {
            input type="hidden" name="next" value=(next);
            label for="username" { (t.username) }
            input #username name="username" type="text" autocomplete="username"
                autocapitalize="none" spellcheck="false" required autofocus;
            label for="password" { (t.password) }
            input #password name="password" type="password" autocomplete="current-password" required;
            button type="submit" { (t.log_in) }
        }
    };
    (
        status,
        layout::page(lang, t.log_in_title, None, layout::Nav::None, body),
    )
        .into_response()
}

pub async fn log_in(
    State(state): State<WebState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let lang = visitor_lang(&headers);
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    let next = next_path(form.get("next"));
    match state
        .ctx
        .store
        .log_in(field("username"), field("password"))
        .await
    {
        Ok(Ok(opened)) => {
            let cookie = format!(
                "{}={}; Path=/; HttpOnly; Secure; SameSite=Strict",
                cookie_name(&state),
                opened.token
            );
            (
                StatusCode::SEE_OTHER,
                [(header::SET_COOKIE, cookie), (header::LOCATION, next)],
            )
                .into_response()
        }
        Ok(Err(LoginRefused::WrongCredentials)) => login_form(
            lang,
            &next,
            Some(lang.t().wrong_credentials.to_owned()),
            StatusCode::UNAUTHORIZED,
        ),
        Ok(Err(LoginRefused::LockedOut { until })) => login_form(
            lang,
            &next,
            Some(format!(
                "{} {}.",
                lang.t().locked_out_until,
                lang.stored_time(&until)
            )),
            StatusCode::TOO_MANY_REQUESTS,
        ),
        Err(error) => {
            tracing::error!(error = %error, "cannot log in");
            layout::error_page(
                lang,
                StatusCode::INTERNAL_SERVER_ERROR,
                lang.t().error_title,
            )
        }
    }
}

pub async fn log_out(
    State(state): State<WebState>,
    staff: Staff,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = staff.csrf_refusal(&form) {
        return refused;
    }
    if let Some(token) = cookie(&headers, &cookie_name(&state))
        && let Err(error) = state.ctx.store.log_out(token).await
    {
        tracing::error!(error = %error, "cannot end the session");
    }
    let gone = format!(
        "{}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
        cookie_name(&state)
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, gone),
            (header::LOCATION, "/login".into()),
        ],
    )
        .into_response()
}

/// Switches the language: the staff member's own setting when signed in, else the visitor's cookie.
pub async fn switch_language(
    State(state): State<WebState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let lang = form
        .get("lang")
        .and_then(|l| Lang::parse(l))
        .unwrap_or(Lang::Km);
    let back = next_path(form.get("next"));
    let remember = format!("{LANG_COOKIE}={}; Path=/; SameSite=Strict", lang.code());
    if let Some(token) = cookie(&headers, &cookie_name(&state)) {
        let session = match state.ctx.store.session(token).await {
            Ok(session) => session,
            Err(error) => {
                tracing::error!(error = %error, "cannot read the session");
                None
            }
        };
        if let Some(session) = session {
            if !session.csrf_matches(form.get("csrf").map(String::as_str).unwrap_or_default()) {
                return layout::error_page(lang, StatusCode::FORBIDDEN, lang.t().form_expired);
            }
            if let Err(error) = state
                .ctx
                .store
                .set_staff_language(session.staff.id, lang.code())
                .await
            {
                tracing::error!(error = %error, "cannot keep the language");
            }
        }
    }
    (
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, remember), (header::LOCATION, back)],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_login_only_a_path_on_this_server_is_followed() {
        let next = |raw: &str| next_path(Some(&raw.to_owned()));
        assert_eq!(next("/referrals/abc"), "/referrals/abc");
        assert_eq!(next("//evil.example/"), "/");
        assert_eq!(next("https://evil.example/"), "/");
        assert_eq!(next("/\\evil.example"), "/");
        assert_eq!(next_path(None), "/");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; spean_ngo-a=tok; spean_lang=en".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, "spean_ngo-a"), Some("tok"));
        assert_eq!(visitor_lang(&headers), Lang::En);
    }
}
