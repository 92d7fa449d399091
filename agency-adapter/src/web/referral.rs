//! One referral: its envelope, its case file where this agency holds it, who makes the follow-up
//! visits and when the next is due, its timeline (every event, who and when), and a form for each
//! action its state allows this agency, and only those. The state machine that decides is the
//! broker's own ([`spean_domain::referral::state`]), so a page never offers what the broker would
//! refuse for the state.
//!
//! Reading the page reads the case file: it is recorded in the audit log under the staff member's
//! name before anything is shown, as `show --by` does. An action is recorded under their name, as
//! `--by` records it. Each form carries a request id made when the page was drawn, so a form sent
//! twice (a double click, a reload) records the action once.

use std::collections::HashMap;

use axum::{
    Form,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};
use serde_json::Value;
use spean_domain::referral::state::{EventKind, Role, State as RefState, decide, decide_broadcast};
use spean_proto::v1::FeedbackEvent;

use super::{
    WebState,
    directory::Names,
    i18n::Lang,
    inbox::{link_banner, short_id},
    layout::{self, Nav},
    session::Staff,
};
use crate::{
    AdapterError,
    broadcast::Answer,
    case_file::CaseFile,
    cli::{
        ActionArgs,
        consent::GiverArg,
        send::{Act, perform},
        views::{CaseFileShown, Shown, details_json},
    },
    referral::{kind_name, state_name},
    store::timestamp,
};

/// The actions a page may offer, in the order they are shown.
const ACTIONS: [EventKind; 13] = [
    EventKind::Acknowledged,
    EventKind::Accepted,
    EventKind::Declined,
    EventKind::Redirected,
    EventKind::InProgress,
    EventKind::FollowUp,
    EventKind::Completed,
    EventKind::Failed,
    EventKind::FollowUpDelegated,
    EventKind::DelegationRevoked,
    EventKind::Withdrawn,
    EventKind::EnteredInError,
    EventKind::ConsentWithdrawn,
];

pub async fn page(
    State(state): State<WebState>,
    staff: Staff,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let notice = match query.get("done").map(String::as_str) {
        Some("sent") => Some(staff.lang.t().done_sent),
        Some("queued") => Some(staff.lang.t().done_queued),
        _ => None,
    };
    render(&state, &staff, &id, notice, None, StatusCode::OK).await
}

/// Draws the page, with a notice of what was just done or a problem with what was just tried.
async fn render(
    state: &WebState,
    staff: &Staff,
    id: &str,
    notice: Option<&str>,
    problem: Option<String>,
    status: StatusCode,
) -> Response {
    let lang = staff.lang;
    let t = lang.t();
    let shown = match Shown::read(&state.ctx, id, &staff.reader()).await {
        Ok(shown) => shown,
        Err(error) => {
            return match error.downcast_ref::<AdapterError>() {
                Some(AdapterError::NotFound { .. }) => {
                    layout::error_page(lang, StatusCode::NOT_FOUND, t.not_found)
                }
                _ => {
                    tracing::error!(error = %error, "cannot read a referral");
                    layout::error_page(lang, StatusCode::INTERNAL_SERVER_ERROR, t.error_title)
                }
            };
        }
    };
    let directory = state.directory.get(&state.ctx, &state.link).await;
    let names = Names {
        directory: directory.as_deref(),
        lang,
    };
    let agency = |id: &str| names.agency(id);
    let me = state.ctx.me();
    let row = &shown.row;
    let subject = shown.envelope.subject.clone().unwrap_or_default();
    let title = format!("{} {}", t.referral_title, short_id(&row.referral_id));
    let offered = offered_actions(&shown, me);
    // The agencies a referral can be sent on or delegated to: the directory's, but its two parties.
    let others: Vec<(String, String)> = directory
        .as_deref()
        .map(|d| {
            d.agencies
                .iter()
                .filter(|a| a.id != row.sender && a.id != row.recipient && a.id != me)
                .map(|a| (a.id.clone(), format!("{} ({})", a.name, a.id)))
                .collect()
        })
        .unwrap_or_default();
    let body = html! {
        h1 { (title) " " span.badge { (lang.code_label(&row.state)) } }
        (link_banner(state, lang))
        @if let Some(notice) = notice { (layout::notice(notice)) }
        @if let Some(problem) = &problem { (layout::problem(problem)) }
        section.card aria-labelledby="envelope" {
            h2 #envelope { (t.envelope) }
            dl.facts {
                dt { (t.col_referral) } dd { code { (row.referral_id) } }
                dt { (t.sender) } dd { (agency(&row.sender)) }
                dt { (t.recipient) } dd {
                    @if row.recipient.is_empty() { (t.no_recipient_yet) } @else { (agency(&row.recipient)) }
                }
                dt { (t.col_kind) } dd { (lang.code_label(&row.kind)) }
                dt { (t.col_urgency) } dd { (lang.code_label(&row.urgency)) }
                dt { (t.col_state) } dd { (lang.code_label(&row.state)) }
                dt { (t.col_received) } dd { (lang.stored_time(&row.created_at)) }
                dt { (t.subject) } dd {
                    (lang.code_label(&crate::referral::sex_name(subject.sex))) ", "
                    (lang.code_label(&crate::referral::age_band_name(subject.age_band))) ", "
                    (directory.as_ref().map_or_else(|| subject.province.clone(), |d| d.province_name(&subject.province, lang)))
                }
                dt { (t.consent) } dd { (consent_text(lang, shown.envelope.consent.as_ref())) }
                dt { (t.this_agency_is) } dd { (lang.code_label(&shown.audience)) }
            }
            @if let Some(broadcast) = &shown.broadcast {
                h3 { (t.candidates) }
                ul {
                    @for c in &broadcast.candidates {
                        li { (agency(&c.agency_id)) ": " (answer_label(lang, c.answer)) }
                    }
                }
            }
        }
        (case_file_section(lang, &shown.case_file, &agency))
        (follow_up_section(lang, &shown, &agency))
        section aria-labelledby="actions" {
            h2 #actions { (t.actions) }
            @if offered.is_empty() {
                p.muted { (t.no_actions) }
            } @else {
                div.actions {
                    @for kind in &offered {
                        (action_form(staff, &row.referral_id, *kind, &others))
                    }
                }
            }
        }
        section aria-labelledby="timeline" {
            h2 #timeline { (t.timeline) }
            (timeline(lang, &shown.history, &agency, true))
        }
    };
    (
        status,
        layout::page(lang, &title, Some(staff), Nav::Inbox, body),
    )
        .into_response()
}

fn answer_label(lang: Lang, answer: Answer) -> String {
    match answer {
        Answer::None => "–".to_owned(),
        Answer::Acknowledged => lang.code_label("acknowledged"),
        Answer::Accepted => lang.code_label("accepted"),
        Answer::Declined => lang.code_label("declined"),
    }
}

/// How this agency stands to the referral, as the state machine names the sides.
fn role_of(shown: &Shown, me: &str) -> Option<Role> {
    match shown.audience.as_str() {
        "sender" => Some(Role::Sender),
        "recipient" => Some(Role::Recipient),
        "delegate" if shown.delegated_to.as_deref() == Some(me) => Some(Role::Delegate),
        "candidate" => Some(Role::Candidate),
        _ => None,
    }
}

/// The actions this agency may take on the referral now, by the state machine.
fn offered_actions(shown: &Shown, me: &str) -> Vec<EventKind> {
    let (Some(role), Some(state)) = (role_of(shown, me), RefState::parse(&shown.row.state)) else {
        return Vec::new();
    };
    let open_broadcast = shown
        .broadcast
        .as_ref()
        .filter(|b| b.winner.is_none() && b.redirected_to.is_none());
    if let Some(broadcast) = open_broadcast
        && role == Role::Candidate
        && broadcast.answer_of(me) == Some(Answer::Declined)
    {
        return Vec::new();
    }
    if shown
        .broadcast
        .as_ref()
        .is_some_and(|b| b.taken_from(me).is_some())
    {
        return Vec::new();
    }
    ACTIONS
        .into_iter()
        .filter(|kind| {
            // A delegation can be taken back only while there is one, and made only while there is
            // none.
            match kind {
                EventKind::DelegationRevoked if shown.delegated_to.is_none() => return false,
                EventKind::FollowUpDelegated if shown.delegated_to.is_some() => return false,
                EventKind::Acknowledged if state == RefState::Acknowledged => return false,
                _ => {}
            }
            if open_broadcast.is_some() {
                decide_broadcast(state, role, *kind).is_ok()
            } else {
                decide(state, role, *kind).is_ok()
            }
        })
        .collect()
}

/// The form of one action: its own fields, a note (but for a consent withdrawal), the request id
/// made now, and the session's CSRF token.
/// `agencies` are the choices of an action that names another agency; with none (the directory
/// could not be read), the agency's id is typed.
fn action_form(staff: &Staff, id: &str, kind: EventKind, agencies: &[(String, String)]) -> Markup {
    let lang = staff.lang;
    let t = lang.t();
    let (name, label) = action_name(lang, kind);
    let field = |suffix: &str| format!("{name}-{suffix}");
    let today = time::OffsetDateTime::now_utc()
        .to_offset(super::i18n::CAMBODIA)
        .date()
        .to_string();
    let own_fields = match kind {
        EventKind::Accepted => html! {
            (layout::text_field(&field("planned_action"), t.field_planned_action, "", true))
            (layout::date_field(&field("date"), t.field_date, &today, true))
        },
        EventKind::Declined => html! {
            (layout::select(&field("reason_code"), t.field_reason_code, &codes(&["no_capacity", "out_of_area", "not_eligible", "duplicate", "other"]), "", Some(t.choose)))
            (layout::text_area(&field("reason"), t.field_reason, true))
        },
        EventKind::Redirected | EventKind::FollowUpDelegated => html! {
            @if agencies.is_empty() {
                (layout::text_field(&field("to"), t.field_to_agency, "", true))
            } @else {
                (layout::select(&field("to"), t.field_to_agency, agencies, "", Some(t.choose)))
            }
            (layout::text_area(&field("reason"), t.field_reason, true))
        },
        EventKind::FollowUp => html! {
            (layout::select(&field("activity"), t.field_activity, &codes(&["home_visit", "school_attendance", "grant_received", "appointment", "interim_report"]), "home_visit", None))
            (layout::date_field(&field("date"), t.field_date, &today, true))
        },
        EventKind::Completed => html! {
            (layout::text_field(&field("outcome"), t.field_outcome, "", true))
            (layout::text_area(&field("summary"), t.field_summary, true))
        },
        EventKind::Failed => html! {
            (layout::text_area(&field("reason"), t.field_reason, true))
        },
        EventKind::ConsentWithdrawn => html! {
            (layout::select(&field("withdrawn_by"), &lang.code_label("withdrawn_by"), &[
                ("client".to_owned(), lang.code_label("client")),
                ("guardian".to_owned(), lang.code_label("guardian")),
            ], "client", None))
        },
        _ => html! {},
    };
    html! {
        section.card aria-labelledby=(field("title")) {
            h3 id=(field("title")) { (label) }
            form.stack method="post" action=(format!("/referrals/{id}/act")) {
                (staff.csrf_field())
                input type="hidden" name="action" value=(name);
                input type="hidden" name="request_id" value=(uuid::Uuid::now_v7().to_string());
                (own_fields)
                @if kind != EventKind::ConsentWithdrawn {
                    label for=(field("note")) { (t.field_note) }
                    textarea id=(field("note")) name=(field("note")) rows="2" {}
                }
                button type="submit" id=(field("submit")) { (label) }
            }
        }
    }
}

/// Codes shown as themselves, translated where the pages know them.
fn codes(list: &[&str]) -> Vec<(String, String)> {
    list.iter()
        .map(|c| ((*c).to_owned(), c.replace('_', " ")))
        .collect()
}

/// The form name and the button label of an action.
fn action_name(lang: Lang, kind: EventKind) -> (&'static str, &'static str) {
    let t = lang.t();
    match kind {
        EventKind::Acknowledged => ("acknowledge", t.act_acknowledge),
        EventKind::Accepted => ("accept", t.act_accept),
        EventKind::Declined => ("decline", t.act_decline),
        EventKind::Redirected => ("redirect", t.act_redirect),
        EventKind::InProgress => ("in_progress", t.act_in_progress),
        EventKind::FollowUp => ("follow_up", t.act_follow_up),
        EventKind::Completed => ("complete", t.act_complete),
        EventKind::Failed => ("fail", t.act_fail),
        EventKind::FollowUpDelegated => ("delegate", t.act_delegate),
        EventKind::DelegationRevoked => ("revoke_delegation", t.act_revoke_delegation),
        EventKind::Withdrawn => ("withdraw", t.act_withdraw),
        EventKind::EnteredInError => ("entered_in_error", t.act_entered_in_error),
        _ => ("withdraw_consent", t.act_withdraw_consent),
    }
}

/// Records the action a form asks for, under the staff member's name; back to the referral with a
/// notice, or the page again with the problem named.
pub async fn act(
    State(state): State<WebState>,
    staff: Staff,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = staff.csrf_refusal(&form) {
        return refused;
    }
    let lang = staff.lang;
    let act = match act_from(&form, &id, staff.name()) {
        Ok(act) => act,
        Err(problem) => {
            return render(
                &state,
                &staff,
                &id,
                None,
                Some(problem),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
        }
    };
    match perform(&state.ctx, act).await {
        Ok(acted) => {
            Redirect::to(&format!("/referrals/{id}?done={}#main", acted.status)).into_response()
        }
        Err(error) => {
            let problem = match &error {
                AdapterError::Invalid { field, reason } => format!("{field}: {reason}"),
                AdapterError::Rejected { code, message } => format!("{code}: {message}"),
                AdapterError::RefusedBefore { .. } | AdapterError::KeyReused { .. } => {
                    error.to_string()
                }
                _ => {
                    tracing::error!(error = %error, "cannot record an action");
                    lang.t().error_title.to_owned()
                }
            };
            render(
                &state,
                &staff,
                &id,
                None,
                Some(problem),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
    }
}

/// The action a form asks for, as the command line would take it; a problem names the field.
fn act_from(form: &HashMap<String, String>, id: &str, by: &str) -> Result<Act, String> {
    let action = form.get("action").map(String::as_str).unwrap_or_default();
    let get = |name: &str| -> String {
        form.get(&format!("{action}-{name}"))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let required = |name: &str| -> Result<String, String> {
        let value = get(name);
        if value.is_empty() {
            Err(format!("{name}: required"))
        } else {
            Ok(value)
        }
    };
    let note = Some(get("note")).filter(|n| !n.is_empty());
    let common = ActionArgs {
        id: id.to_owned(),
        by: Some(by.to_owned()),
        note,
        request_id: form.get("request_id").cloned(),
        queue_only: false,
        json: true,
    };
    Ok(match action {
        "acknowledge" => Act::Ack { common },
        "accept" => Act::Accept {
            common,
            planned_action: required("planned_action")?,
            date: required("date")?,
        },
        "decline" => Act::Decline {
            common,
            reason_code: required("reason_code")?,
            reason: required("reason")?,
        },
        "redirect" => Act::Redirect {
            common,
            to: required("to")?,
            reason: required("reason")?,
        },
        "in_progress" => Act::Progress { common },
        "follow_up" => Act::Followup {
            common,
            activity: required("activity")?,
            date: required("date")?,
        },
        "complete" => Act::Complete {
            common,
            outcome: required("outcome")?,
            summary: required("summary")?,
        },
        "fail" => Act::Fail {
            common,
            reason: required("reason")?,
        },
        "delegate" => Act::Delegate {
            common,
            to: required("to")?,
            reason: required("reason")?,
        },
        "revoke_delegation" => Act::RevokeDelegation { common },
        "withdraw" => Act::Withdraw { common },
        "entered_in_error" => Act::Error { common },
        "withdraw_consent" => Act::WithdrawConsent {
            common: ActionArgs {
                note: None,
                ..common
            },
            withdrawn_by: match get("withdrawn_by").as_str() {
                "guardian" => GiverArg::Guardian,
                _ => GiverArg::Client,
            },
            at: None,
        },
        other => return Err(format!("action: {other:?} is not an action")),
    })
}

fn case_file_section(
    lang: Lang,
    case_file: &CaseFileShown,
    agency: &dyn Fn(&str) -> String,
) -> Markup {
    let t = lang.t();
    html! {
        section.card aria-labelledby="case-file" {
            h2 #case-file { (t.case_file) }
            @match case_file {
                CaseFileShown::Whole(file) => { (case_file_facts(lang, file)) }
                CaseFileShown::FollowUpPart { part, from } => {
                    p.muted { (t.case_file_follow_up_part) " " (agency(from)) }
                    (case_file_facts(lang, part))
                }
                CaseFileShown::Withdrawn(_) => { p.muted { (t.case_file_withdrawn) } }
                CaseFileShown::NotShared => { p.muted { (t.case_file_not_shared) } }
            }
        }
    }
}

fn case_file_facts(lang: Lang, file: &CaseFile) -> Markup {
    let t = lang.t();
    let fact = |label: &str, value: &str| {
        html! {
            @if !value.is_empty() { dt { (label) } dd { (value) } }
        }
    };
    html! {
        dl.facts {
            (fact(t.name_km, &file.name.khmer))
            (fact(t.name_latin, &file.name.latin))
            (fact(t.date_of_birth, &file.date_of_birth))
            (fact(t.reason_for_referral, &file.reason_for_referral))
            @if !file.guardians.is_empty() {
                dt { (t.guardians) }
                dd {
                    @for g in &file.guardians {
                        div { (g.name.khmer) " " (g.name.latin) " (" (g.relationship) ") " (g.phone) }
                    }
                }
            }
            (fact(t.contact_phone, &file.contact.phone))
            (fact(t.address, &file.contact.address))
            (fact(t.directions, &file.contact.directions))
            (fact(t.transport_needs, &file.transport_needs))
            (fact(t.notes, &file.notes))
        }
    }
}

fn follow_up_section(lang: Lang, shown: &Shown, agency: &dyn Fn(&str) -> String) -> Markup {
    let t = lang.t();
    let schedule = &shown.schedule;
    html! {
        section.card aria-labelledby="follow-up" {
            h2 #follow-up { (t.follow_up_schedule) }
            dl.facts {
                @if let Some(to) = &shown.delegated_to {
                    dt { (t.delegated_to) } dd { (agency(to)) }
                }
                dt { (t.next_visit) }
                dd {
                    @match (&schedule.next_due_at, schedule.status) {
                        (Some(due), Some(status)) => {
                            (lang.stored_time(due)) " "
                            span.badge.alert[status == crate::follow_up::VisitStatus::Overdue] { (lang.code_label(status.as_str())) }
                            @if let Some(every) = schedule.every_seconds {
                                " · " (t.every) " " (lang.duration(u64::from(every)))
                            }
                        }
                        _ => { (t.no_visit_scheduled) }
                    }
                }
            }
            @if !schedule.visits.is_empty() {
                h3 { (t.visits_done) }
                ul {
                    @for v in &schedule.visits {
                        li { (lang.day(&v.date)) ": " (lang.code_label(&v.activity)) " · " (agency(&v.agency)) " · " (v.person) }
                    }
                }
            }
        }
    }
}

/// Every event, oldest first: when, what, which agency, who. With `free_text`, the note and the
/// details people wrote; without (a coordinator's view), the kinds, times and agencies only.
pub fn timeline(
    lang: Lang,
    history: &[FeedbackEvent],
    agency: &dyn Fn(&str) -> String,
    free_text: bool,
) -> Markup {
    let t = lang.t();
    html! {
        div.table-wrap {
            table {
                thead {
                    tr {
                        th scope="col" { (t.col_when) }
                        th scope="col" { (t.col_what) }
                        th scope="col" { (t.col_agency) }
                        @if free_text {
                            th scope="col" { (t.col_person) }
                            th scope="col" { (t.col_note) }
                        }
                        th scope="col" { (t.col_state) }
                    }
                }
                tbody {
                    @for event in history {
                        tr data-kind=(kind_name(event.kind)) {
                            td { (lang.stored_time(&timestamp(event.at.as_ref()))) }
                            td { (lang.code_label(&kind_name(event.kind))) }
                            td { (agency(&event.actor_agency_id)) }
                            @if free_text {
                                td { (event.actor_person) }
                                td { (event.note) (details_text(lang, event)) }
                            }
                            td { (lang.code_label(&state_name(event.state_after))) }
                        }
                    }
                }
            }
        }
    }
}

/// An event's details (what was planned, why declined, to whom) as short lines, in `lang`.
fn details_text(lang: Lang, event: &FeedbackEvent) -> Markup {
    let Value::Object(details) = details_json(event) else {
        return html! {};
    };
    let shown = |key: &str, value: &Value| -> String {
        match value {
            Value::String(s) if key.ends_with("_at") => lang.stored_time(s),
            Value::String(s) if key.ends_with("date") => lang.day(s),
            Value::String(s)
                if key.ends_with("code") || key == "activity" || key == "withdrawn_by" =>
            {
                lang.code_label(s)
            }
            Value::String(s) => s.clone(),
            Value::Number(n) => n.as_i64().map_or_else(|| n.to_string(), |n| lang.number(n)),
            Value::Array(items) => items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            _ => String::new(),
        }
    };
    html! {
        @for (key, value) in &details {
            @let value = shown(key, value);
            @if !value.is_empty() {
                div.muted { (lang.code_label(key)) ": " (value) }
            }
        }
    }
}

/// A referral's consent in `lang`: who gave it and when, and what it covers; or the emergency
/// exception it went under.
fn consent_text(lang: Lang, consent: Option<&spean_proto::v1::ReferralConsent>) -> String {
    let t = lang.t();
    match consent {
        None => t.consent_not_recorded.to_owned(),
        Some(c) if !c.emergency_exception.is_empty() => {
            format!("{} ({})", t.consent_exception, c.emergency_exception)
        }
        Some(c) => format!(
            "{} {}, {} · {} {}",
            t.consent_given_by,
            lang.code_label(&crate::referral::giver_name(c.given_by)),
            lang.stored_time(&timestamp(c.given_at.as_ref())),
            t.consent_for,
            c.sharing
                .iter()
                .map(|s| lang.code_label(&crate::referral::sharing_name(*s)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
