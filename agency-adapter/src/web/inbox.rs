//! The inbox: first what waits for this agency (referrals to acknowledge, with the time left
//! before the broker escalates them to the province and the coordinators; follow-up visits due or
//! overdue), the escalated and overdue first, as `spean-adapter inbox` orders them; then the rest,
//! filterable by state and kind.
//!
//! The time left counts from when the referral was sent, by the deadline the network's directory
//! sets for its kind and urgency. While the broker has never been reached since the daemon started,
//! the deadline is not known and the page says so rather than guess.

use std::collections::{BTreeSet, HashMap};

use axum::{
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use maud::{Markup, html};
use time::OffsetDateTime;

use super::{
    WebState,
    directory::Directory,
    i18n::Lang,
    layout::{self, Nav},
    session::Staff,
};
use crate::{cli::views::InboxItem, follow_up::VisitStatus};

pub async fn page(
    State(state): State<WebState>,
    staff: Staff,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let lang = staff.lang;
    let t = lang.t();
    let all = query.get("all").is_some_and(|v| v == "1");
    let items = match crate::cli::views::inbox_items(&state.ctx, all, &staff.reader()).await {
        Ok(items) => items,
        Err(error) => {
            tracing::error!(error = %error, "cannot read the inbox");
            return layout::error_page(lang, StatusCode::INTERNAL_SERVER_ERROR, t.error_title);
        }
    };
    let directory = state.directory.get(&state.ctx, &state.link).await;
    let now = OffsetDateTime::now_utc();
    let (waiting, rest): (Vec<&InboxItem>, Vec<&InboxItem>) =
        items.iter().partition(|i| needs_us(i));
    let wanted = |key: &str| query.get(key).filter(|v| !v.is_empty());
    let shown_rest: Vec<&InboxItem> = rest
        .iter()
        .copied()
        .filter(|i| wanted("state").is_none_or(|s| &i.state == s))
        .filter(|i| wanted("kind").is_none_or(|k| &i.kind == k))
        .collect();
    let states: BTreeSet<&str> = rest.iter().map(|i| i.state.as_str()).collect();
    let kinds: BTreeSet<&str> = rest.iter().map(|i| i.kind.as_str()).collect();
    let options = |codes: &BTreeSet<&str>| -> Vec<(String, String)> {
        codes
            .iter()
            .map(|c| ((*c).to_owned(), lang.code_label(c)))
            .collect()
    };
    let body = html! {
        h1 { (t.inbox_title) }
        (link_banner(&state, lang))
        section aria-labelledby="waiting" {
            h2 #waiting { (t.waiting_for_you) " (" (lang.number(waiting.len() as i64)) ")" }
            @if waiting.is_empty() {
                p.muted { (t.nothing_waiting) }
            } @else {
                (table(lang, &waiting, directory.as_deref(), Some(now)))
            }
        }
        section aria-labelledby="rest" {
            h2 #rest { (t.everything_else) }
            form.filters method="get" action="/" {
                div {
                    (layout::select("state", t.col_state, &options(&states),
                        wanted("state").map_or("", |s| s.as_str()), Some(t.any)))
                }
                div {
                    (layout::select("kind", t.col_kind, &options(&kinds),
                        wanted("kind").map_or("", |s| s.as_str()), Some(t.any)))
                }
                label.choice for="all" {
                    input #all type="checkbox" name="all" value="1" checked[all];
                    (t.include_closed)
                }
                button type="submit" { (t.apply) }
            }
            @if shown_rest.is_empty() {
                p.muted { (t.nothing_else) }
            } @else {
                (table(lang, &shown_rest, directory.as_deref(), None))
            }
        }
    };
    layout::page(lang, t.inbox_title, Some(&staff), Nav::Inbox, body).into_response()
}

/// Whether a referral is among what waits for this agency now.
fn needs_us(item: &InboxItem) -> bool {
    item.waiting_on_this_agency
        || item
            .follow_up
            .as_ref()
            .is_some_and(|f| f.status.needs_a_visit())
}

/// Says when the broker cannot be reached: what staff do is kept and sent later.
pub fn link_banner(state: &WebState, lang: Lang) -> Markup {
    if state.link.is_up() {
        html! {}
    } else {
        html! { p.offline role="status" { (lang.t().broker_link_down) } }
    }
}

/// The inbox's table; with `now`, the "waiting" table, whose state column says what is needed
/// and by when.
fn table(
    lang: Lang,
    items: &[&InboxItem],
    directory: Option<&Directory>,
    now: Option<OffsetDateTime>,
) -> Markup {
    let agency = |id: &str| {
        directory
            .and_then(|d| d.agencies.iter().find(|a| a.id == id))
            .map_or_else(|| id.to_owned(), |a| a.name.clone())
    };
    let t = lang.t();
    html! {
        div.table-wrap {
            table {
                (layout::head(&[t.col_referral, t.col_name, t.col_from, t.col_kind, t.col_urgency, t.col_state, t.col_received]))
                tbody {
                    @for item in items {
                        tr.escalated[item.escalations > 0 && item.waiting_on_this_agency]
                          .waiting[now.is_some()] data-referral=(item.referral_id) {
                            td {
                                a href=(format!("/referrals/{}", item.referral_id)) { (short_id(&item.referral_id)) }
                            }
                            td { (name(item)) }
                            td { (agency(&item.sender)) }
                            td { (lang.code_label(&item.kind)) }
                            td { (lang.code_label(&item.urgency)) }
                            td {
                                (lang.code_label(&item.state))
                                @if let Some(now) = now {
                                    br;
                                    (what_is_needed(lang, item, directory, now))
                                }
                            }
                            td { (lang.stored_time(&item.received_at)) }
                        }
                    }
                }
            }
        }
    }
}

/// The first part of a referral id: enough to tell referrals apart on a page; the link holds all.
pub fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// The child's name as the case file gives it, Khmer first.
fn name(item: &InboxItem) -> String {
    [item.name_km.as_str(), item.name_latin.as_str()]
        .iter()
        .filter(|n| !n.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" / ")
}

/// What this agency has to do about a referral, and by when.
fn what_is_needed(
    lang: Lang,
    item: &InboxItem,
    directory: Option<&Directory>,
    now: OffsetDateTime,
) -> Markup {
    let t = lang.t();
    if item.waiting_on_this_agency {
        let to_do = if item.as_candidate.is_some() {
            t.broadcast_to_answer
        } else {
            t.to_acknowledge
        };
        if item.escalations > 0 {
            return html! {
                span.badge.alert { (to_do) ": " (t.escalated_times) " " (lang.number(item.escalations)) }
            };
        }
        let within = directory.and_then(|d| d.acknowledge_within(&item.kind, &item.urgency));
        let sent = OffsetDateTime::parse(
            &item.created_at,
            &time::format_description::well_known::Rfc3339,
        )
        .ok();
        return match (within, sent) {
            (Some(within), Some(sent)) => {
                let due =
                    sent + time::Duration::seconds(i64::try_from(within).unwrap_or(i64::MAX / 2));
                let left = (due - now).whole_seconds();
                if left > 0 {
                    html! {
                        span.badge.warn {
                            (to_do) ": " (t.escalates_in) " "
                            time datetime=(item.created_at) { (lang.duration(left.unsigned_abs())) }
                        }
                    }
                } else {
                    html! { span.badge.alert { (to_do) ": " (t.deadline_passed) } }
                }
            }
            _ => html! { span.badge.warn { (to_do) } " " span.muted { (t.deadline_unknown) } },
        };
    }
    match &item.follow_up {
        Some(f) if f.status.needs_a_visit() => {
            let (class, words) = match f.status {
                VisitStatus::Overdue => ("badge alert", t.visit_overdue),
                _ => ("badge warn", t.visit_due),
            };
            html! {
                span class=(class) {
                    (words) ": " (lang.stored_time(&f.next_due_at))
                    @if f.missed > 0 { "; " (t.visits_missed) " " (lang.number(f.missed as i64)) }
                }
            }
        }
        _ => html! {},
    }
}
