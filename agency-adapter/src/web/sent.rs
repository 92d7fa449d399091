//! What this agency sent, with its state and who must act next; and below it, what still waits
//! to go out (made while the broker could not be reached) or was refused by the broker when it
//! went, with the broker's reason.

use std::collections::HashMap;

use axum::{
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use maud::html;

use super::{
    WebState,
    directory::Names,
    inbox::{link_banner, short_id},
    layout::{self, Nav},
    session::Staff,
};

pub async fn page(
    State(state): State<WebState>,
    staff: Staff,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let lang = staff.lang;
    let t = lang.t();
    let all = query.get("all").is_some_and(|v| v == "1");
    let read = async {
        let sent = crate::cli::views::status_items(&state.ctx, all).await?;
        let outbox = crate::cli::views::outbox_items(&state.ctx).await?;
        anyhow::Ok((sent, outbox))
    };
    let (sent, outbox) = match read.await {
        Ok(read) => read,
        Err(error) => {
            tracing::error!(error = %error, "cannot read what was sent");
            return layout::error_page(lang, StatusCode::INTERNAL_SERVER_ERROR, t.error_title);
        }
    };
    let directory = state.directory.get(&state.ctx, &state.link).await;
    let names = Names {
        directory: directory.as_deref(),
        lang,
    };
    let agency = |id: &str| names.agency(id);
    let unsent: Vec<_> = outbox.iter().filter(|r| r.status != "sent").collect();
    let body = html! {
        h1 { (t.sent_title) }
        (link_banner(&state, lang))
        @if query.contains_key("queued") { (layout::notice(t.done_queued)) }
        form.filters method="get" action="/sent" {
            label.choice for="all" {
                input #all type="checkbox" name="all" value="1" checked[all];
                (t.include_closed)
            }
            button type="submit" { (t.apply) }
        }
        @if sent.is_empty() {
            p.muted { (t.nothing_sent) }
        } @else {
            div.table-wrap {
                table {
                    (layout::head(&[t.col_referral, t.col_to, t.col_kind, t.col_urgency, t.col_state, t.col_next, t.col_updated]))
                    tbody {
                        @for r in &sent {
                            tr data-referral=(r.referral_id) {
                                td { a href=(format!("/referrals/{}", r.referral_id)) { (short_id(&r.referral_id)) } }
                                td {
                                    @if r.recipient.is_empty() {
                                        (r.candidates.iter().map(|c| agency(c)).collect::<Vec<_>>().join(", "))
                                    } @else { (agency(&r.recipient)) }
                                }
                                td { (lang.code_label(&r.kind)) }
                                td { (lang.code_label(&r.urgency)) }
                                td.state { (lang.code_label(&r.state)) }
                                td { (next_action(lang, &r.state, &agency(&r.recipient), &r.next_action)) }
                                td { (lang.stored_time(&r.updated_at)) }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="outbox" {
            h2 #outbox { (t.outbox_title) }
            @if unsent.is_empty() {
                p.muted { (t.outbox_empty) }
            } @else {
                div.table-wrap {
                    table {
                        (layout::head(&[t.col_what, t.col_referral, t.col_state, t.col_when, t.col_reason]))
                        tbody {
                            @for r in &unsent {
                                tr {
                                    td { (r.operation.replace('_', " ")) }
                                    td { (r.referral_id.as_deref().map(short_id).unwrap_or("–")) }
                                    td {
                                        @if r.status == "rejected" {
                                            span.badge.alert { (t.outbox_rejected) }
                                        } @else {
                                            span.badge.warn { (t.outbox_waiting) }
                                        }
                                    }
                                    td { (lang.stored_time(&r.created_at)) }
                                    td { (r.error.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout::page(lang, t.sent_title, Some(&staff), Nav::Sent, body).into_response()
}

/// Who acts next, in the page's language: the recipient's next step by the state, or (for an open
/// broadcast, whose words the command line builds) what the command line says.
fn next_action(lang: super::i18n::Lang, state: &str, recipient: &str, fallback: &str) -> String {
    let t = lang.t();
    let step = match state {
        "sent" | "delivered" => t.to_acknowledge,
        "acknowledged" => t.to_accept_or_decline,
        "accepted" | "in_progress" => t.to_follow_up_or_complete,
        _ => return "–".to_owned(),
    };
    if recipient.is_empty() {
        fallback.to_owned()
    } else {
        format!("{recipient}: {step}")
    }
}
