//! The shell every page is drawn in: a skip link, the navigation, who is signed in, the language
//! switch, and the page's own content; and the one style sheet, served by the adapter itself.
//!
//! The style sheet names the Khmer fonts Debian's `fonts-khmeros` installs first, then the usual
//! ones, so Khmer script is shaped by a Khmer font wherever one is installed. It needs no font
//! from the internet. On a narrow screen (a phone) tables scroll sideways inside their own box and
//! forms take the whole width.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use maud::{DOCTYPE, Markup, html};

use super::{i18n::Lang, session::Staff};

/// Which navigation entry a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    None,
    Inbox,
    Send,
    Sent,
    Network,
    Figures,
}

/// A whole page: `staff` is `None` on the login and error pages.
pub fn page(lang: Lang, title: &str, staff: Option<&Staff>, nav: Nav, body: Markup) -> Markup {
    let t = lang.t();
    let other = match lang {
        Lang::Km => Lang::En,
        Lang::En => Lang::Km,
    };
    let here = staff.map_or("/login", |s| s.here.as_str());
    let entry = |target: Nav, href: &str, label: &str| {
        html! {
            li {
                @if nav == target {
                    a href=(href) aria-current="page" { (label) }
                } @else {
                    a href=(href) { (label) }
                }
            }
        }
    };
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (t.app) }
                link rel="stylesheet" href="/assets/spean.css";
                link rel="icon" href="/assets/icon.svg" type="image/svg+xml";
            }
            body {
                a.skip href="#main" { (t.skip_to_content) }
                header {
                    span.brand { (t.app) }
                    @if staff.is_some() {
                        nav aria-label=(t.app) {
                            ul {
                                (entry(Nav::Inbox, "/", t.nav_inbox))
                                (entry(Nav::Send, "/send", t.nav_send))
                                (entry(Nav::Sent, "/sent", t.nav_sent))
                                (entry(Nav::Network, "/network", t.nav_network))
                                (entry(Nav::Figures, "/network/figures", t.nav_figures))
                            }
                        }
                    }
                    div.who {
                        form.inline method="post" action="/language" {
                            @if let Some(staff) = staff { (staff.csrf_field()) }
                            input type="hidden" name="next" value=(here);
                            input type="hidden" name="lang" value=(other.code());
                            button.link type="submit" lang=(other.code())
                                aria-label=(format!("{}: {}", t.language, other.t().lang_name)) {
                                (t.switch_language)
                            }
                        }
                        @if let Some(staff) = staff {
                            span { (t.signed_in_as) " " strong { (staff.name()) } }
                            form.inline method="post" action="/logout" {
                                (staff.csrf_field())
                                button.link type="submit" { (t.log_out) }
                            }
                        }
                    }
                }
                main #main tabindex="-1" { (body) }
            }
        }
    }
}

/// A page saying what went wrong, with its status.
pub fn error_page(lang: Lang, status: StatusCode, message: &str) -> Response {
    let t = lang.t();
    let body = html! {
        h1 { (t.error_title) }
        p.problem role="alert" { (message) }
        p { a href="/" { (t.nav_inbox) } }
    };
    (status, page(lang, t.error_title, None, Nav::None, body)).into_response()
}

/// A table's header row, each cell a column header.
pub fn head(columns: &[&str]) -> Markup {
    html! {
        thead { tr { @for column in columns { th scope="col" { (column) } } } }
    }
}

/// A notice at the top of a page: `role="status"` so a screen reader says it.
pub fn notice(text: &str) -> Markup {
    html! { p.notice role="status" { (text) } }
}

/// A problem at the top of a page: `role="alert"`.
pub fn problem(text: &str) -> Markup {
    html! { p.problem role="alert" { (text) } }
}

/// A labelled text field.
pub fn text_field(id: &str, label: &str, value: &str, required: bool) -> Markup {
    html! {
        label for=(id) { (label) }
        input id=(id) name=(id) type="text" value=(value) required[required];
    }
}

/// A labelled multi-line field.
pub fn text_area(id: &str, label: &str, required: bool) -> Markup {
    html! {
        label for=(id) { (label) }
        textarea id=(id) name=(id) rows="3" required[required] {}
    }
}

/// A labelled date field.
pub fn date_field(id: &str, label: &str, value: &str, required: bool) -> Markup {
    html! {
        label for=(id) { (label) }
        input id=(id) name=(id) type="date" value=(value) required[required];
    }
}

/// A labelled choice among `options` (value, shown), with a first empty choice unless `required`
/// has a default.
pub fn select(
    id: &str,
    label: &str,
    options: &[(String, String)],
    selected: &str,
    blank: Option<&str>,
) -> Markup {
    html! {
        label for=(id) { (label) }
        select id=(id) name=(id) {
            @if let Some(blank) = blank {
                option value="" selected[selected.is_empty()] { (blank) }
            }
            @for (value, shown) in options {
                option value=(value) selected[value == selected] { (shown) }
            }
        }
    }
}

const STYLE: &str = include_str!("spean.css");
const ICON: &str = include_str!("icon.svg");

pub async fn style_sheet() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=3600"),
            ),
        ],
        STYLE,
    )
        .into_response()
}

pub async fn icon() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("image/svg+xml"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=86400"),
            ),
        ],
        ICON,
    )
        .into_response()
}
