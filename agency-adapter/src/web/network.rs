//! The pages of coordinators and provincial departments: what is overdue in their provinces (by
//! province, then by the agency it waits on), one referral's timeline without its case file or
//! any free text, and the network's figures for a period, with charts and a CSV download.
//!
//! These ask the broker (they cover other agencies' referrals, which this adapter does not hold),
//! which answers only agencies the directory lists as coordinator or authority, within their
//! provinces. A refusal is shown as such; a broker out of reach is said plainly.

use std::collections::{BTreeMap, HashMap};

use axum::{
    extract::{Path, Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use maud::{Markup, html};
use spean_proto::v1::{
    FiguresRequest, FiguresResponse, ListOverdueRequest, OverdueReason, TimelineRequest,
};

use super::{
    WebState,
    chart::{self, Bar},
    directory::Names,
    i18n::Lang,
    inbox::short_id,
    layout::{self, Nav},
    referral::timeline as timeline_table,
    session::Staff,
};
use crate::{
    AdapterError,
    broker::Broker,
    coordinator::{self, Scope, bounded},
    figures,
    referral::{age_band_name, sex_name, state_name},
    store::timestamp,
};

/// What a page says when the broker refuses or cannot be reached.
fn broker_problem(lang: Lang, error: &AdapterError) -> Response {
    let t = lang.t();
    match error {
        AdapterError::Rejected {
            code: "PERMISSION_DENIED",
            ..
        } => layout::error_page(lang, StatusCode::FORBIDDEN, t.coordinators_only),
        AdapterError::Rejected {
            code: "NOT_FOUND", ..
        } => layout::error_page(lang, StatusCode::NOT_FOUND, t.not_found),
        AdapterError::Invalid { field, reason } => layout::error_page(
            lang,
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("{field}: {reason}"),
        ),
        AdapterError::Rejected {
            code: "INVALID_ARGUMENT",
            message,
        } => layout::error_page(lang, StatusCode::UNPROCESSABLE_ENTITY, message),
        other => {
            tracing::warn!(error = %other, "a coordinator page could not ask the broker");
            layout::error_page(lang, StatusCode::SERVICE_UNAVAILABLE, t.broker_needed)
        }
    }
}

async fn connect(state: &WebState) -> Result<Broker, AdapterError> {
    Broker::connect(&state.ctx.settings.broker, &state.ctx.identity).await
}

pub async fn overdue(
    State(state): State<WebState>,
    staff: Staff,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let lang = staff.lang;
    let t = lang.t();
    let wanted = |key: &str| query.get(key).cloned().unwrap_or_default();
    let filter = ListOverdueRequest {
        province: wanted("province"),
        agency_id: wanted("agency"),
        ..ListOverdueRequest::default()
    };
    let listed = async {
        let mut broker = connect(&state).await?;
        coordinator::list_overdue(&mut broker, filter).await
    };
    let referrals = match listed.await {
        Ok(referrals) => referrals,
        Err(error) => return broker_problem(lang, &error),
    };
    let directory = state.directory.get(&state.ctx, &state.link).await;
    let names = Names {
        directory: directory.as_deref(),
        lang,
    };
    let agency = |id: &str| names.agency(id);
    let province = |code: &str| names.province(code);
    // By province, then by the agency each waits on; oldest due first within each, as listed.
    let mut grouped: BTreeMap<String, BTreeMap<String, Vec<_>>> = BTreeMap::new();
    for r in &referrals {
        let envelope = r.envelope.clone().unwrap_or_default();
        let code = envelope
            .subject
            .as_ref()
            .map(|s| s.province.clone())
            .unwrap_or_default();
        grouped
            .entry(code)
            .or_default()
            .entry(r.waiting_on_agency_id.clone())
            .or_default()
            .push((r, envelope));
    }
    let body = html! {
        h1 { (t.overdue_title) }
        p { strong { (t.overdue_count) " " (lang.number(referrals.len() as i64)) } }
        form.filters method="get" action="/network" {
            div { (layout::text_field("province", t.col_province, &wanted("province"), false)) }
            div { (layout::text_field("agency", t.col_agency, &wanted("agency"), false)) }
            button type="submit" { (t.apply) }
        }
        @if referrals.is_empty() {
            p.notice role="status" { (t.overdue_none) }
        }
        @for (code, by_agency) in &grouped {
            section aria-labelledby=(format!("province-{code}")) {
                h2 id=(format!("province-{code}")) {
                    (t.col_province) ": " (province(code))
                    " (" (lang.number(by_agency.values().map(Vec::len).sum::<usize>() as i64)) ")"
                }
                @for (waiting_on, rows) in by_agency {
                    h3 { (t.col_waiting_on) ": " (if waiting_on.is_empty() { t.candidates.to_owned() } else { agency(waiting_on) }) }
                    div.table-wrap {
                        table {
                            (layout::head(&[t.col_referral, t.col_kind, t.col_urgency, t.col_state, t.col_reason, t.col_since, t.col_times, t.col_escalated_to]))
                            tbody {
                                @for (r, envelope) in rows {
                                    tr data-referral=(envelope.referral_id) {
                                        td { a href=(format!("/network/referrals/{}", envelope.referral_id)) { (short_id(&envelope.referral_id)) } }
                                        td { (lang.code_label(&envelope.kind)) }
                                        td { (lang.code_label(&crate::referral::urgency_name(envelope.urgency))) }
                                        td { (lang.code_label(&state_name(r.state))) }
                                        td { (lang.code_label(reason_code(r.reason))) }
                                        td { (lang.stored_time(&timestamp(r.overdue_since.as_ref()))) }
                                        td { (lang.number(i64::from(r.times))) }
                                        td { (r.escalated_to.iter().map(|a| agency(a)).collect::<Vec<_>>().join(", ")) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout::page(lang, t.overdue_title, Some(&staff), Nav::Network, body).into_response()
}

fn reason_code(reason: i32) -> &'static str {
    match OverdueReason::try_from(reason) {
        Ok(OverdueReason::NotAcknowledged) => "not_acknowledged",
        Ok(OverdueReason::FollowUpMissed) => "follow_up_missed",
        _ => "unknown",
    }
}

pub async fn timeline(
    State(state): State<WebState>,
    staff: Staff,
    Path(id): Path<String>,
) -> Response {
    let lang = staff.lang;
    let t = lang.t();
    let asked = async {
        let mut broker = connect(&state).await?;
        bounded(broker.coordinator.timeline(TimelineRequest {
            referral_id: id.clone(),
        }))
        .await
    };
    let referral = match asked.await {
        Ok(referral) => referral,
        Err(error) => return broker_problem(lang, &error),
    };
    let directory = state.directory.get(&state.ctx, &state.link).await;
    let names = Names {
        directory: directory.as_deref(),
        lang,
    };
    let agency = |id: &str| names.agency(id);
    let envelope = referral.envelope.clone().unwrap_or_default();
    let subject = envelope.subject.clone().unwrap_or_default();
    let title = format!("{} {}", t.timeline_title, short_id(&envelope.referral_id));
    let body = html! {
        h1 { (title) " " span.badge { (lang.code_label(&state_name(referral.state))) } }
        p.muted { (t.timeline_no_case_file) }
        section.card {
            dl.facts {
                dt { (t.col_referral) } dd { code { (envelope.referral_id) } }
                dt { (t.sender) } dd { (agency(&envelope.sender_agency_id)) }
                dt { (t.recipient) } dd {
                    @if envelope.recipient_agency_id.is_empty() { (t.no_recipient_yet) }
                    @else { (agency(&envelope.recipient_agency_id)) }
                }
                dt { (t.col_kind) } dd { (lang.code_label(&envelope.kind)) }
                dt { (t.col_urgency) } dd { (lang.code_label(&crate::referral::urgency_name(envelope.urgency))) }
                dt { (t.subject) } dd {
                    (lang.code_label(&sex_name(subject.sex))) ", " (lang.code_label(&age_band_name(subject.age_band))) ", "
                    (names.province(&subject.province))
                }
            }
        }
        (timeline_table(lang, &referral.history, &agency, false))
    };
    layout::page(lang, &title, Some(&staff), Nav::Network, body).into_response()
}

/// The period and province a figures page is for: from the query, or the last 30 days.
fn figures_request(
    query: &HashMap<String, String>,
) -> Result<(FiguresRequest, String, String), AdapterError> {
    let today = time::OffsetDateTime::now_utc()
        .to_offset(super::i18n::CAMBODIA)
        .date();
    let wanted = |key: &str| query.get(key).filter(|v| !v.is_empty()).cloned();
    let to = wanted("to").unwrap_or_else(|| today.to_string());
    let from = wanted("from").unwrap_or_else(|| (today - time::Duration::days(29)).to_string());
    let (from_at, to_at) = figures::cambodia_days(&from, &to)?;
    Ok((
        FiguresRequest {
            from: Some(from_at),
            to: Some(to_at),
            province: wanted("province").unwrap_or_default(),
        },
        from,
        to,
    ))
}

async fn ask_figures(
    state: &WebState,
    request: FiguresRequest,
) -> Result<FiguresResponse, AdapterError> {
    let mut broker = connect(state).await?;
    coordinator::figures(&mut broker, Scope::Network, request).await
}

pub async fn figures(
    State(state): State<WebState>,
    staff: Staff,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let lang = staff.lang;
    let t = lang.t();
    let (request, from, to) = match figures_request(&query) {
        Ok(asked) => asked,
        Err(error) => return broker_problem(lang, &error),
    };
    let province = request.province.clone();
    let response = match ask_figures(&state, request).await {
        Ok(response) => response,
        Err(error) => return broker_problem(lang, &error),
    };
    let directory = state.directory.get(&state.ctx, &state.link).await;
    let names = Names {
        directory: directory.as_deref(),
        lang,
    };
    let agency = |id: &str| names.agency(id);
    let province_name = |code: &str| names.province(code);
    let total = response.total.clone().unwrap_or_default();
    let time_bars = |groups: &[spean_proto::v1::Figures],
                     name: &dyn Fn(&str) -> String,
                     median: fn(&spean_proto::v1::Figures) -> Option<u64>,
                     p90: fn(&spean_proto::v1::Figures) -> Option<u64>|
     -> Vec<Bar> {
        groups
            .iter()
            .map(|g| Bar {
                label: name(&g.key),
                values: [
                    median(g).map(|s| (s, lang.duration(s))),
                    p90(g).map(|s| (s, lang.duration(s))),
                ],
            })
            .collect()
    };
    let ack_median = |f: &spean_proto::v1::Figures| f.median_seconds_to_acknowledge;
    let ack_p90 = |f: &spean_proto::v1::Figures| f.p90_seconds_to_acknowledge;
    let acc_median = |f: &spean_proto::v1::Figures| f.median_seconds_to_accept;
    let acc_p90 = |f: &spean_proto::v1::Figures| f.p90_seconds_to_accept;
    let legend = [t.median, t.p90];
    let csv_link = format!(
        "/network/figures.csv?from={from}&to={to}&province={}",
        form_urlencoded::byte_serialize(province.as_bytes()).collect::<String>()
    );
    let count = |c: Option<&spean_proto::v1::Count>| {
        let c = c.cloned().unwrap_or_default();
        lang.count(c.total, c.female)
    };
    let tallies = |title: &str,
                   list: &[spean_proto::v1::Tally],
                   label: &dyn Fn(&str) -> String|
     -> Markup {
        html! {
            h3 { (title) }
            @if list.is_empty() { p.muted { "–" } } @else {
                div.table-wrap {
                    table {
                        tbody {
                            @for tally in list {
                                tr { th scope="row" { (label(&tally.key)) } td { (count(tally.count.as_ref())) } }
                            }
                        }
                    }
                }
            }
        }
    };
    let code_label = |code: &str| lang.code_label(code);
    let body = html! {
        h1 { (t.figures_title) }
        form.filters method="get" action="/network/figures" {
            div { (layout::date_field("from", t.from, &from, true)) }
            div { (layout::date_field("to", t.to, &to, true)) }
            div { (layout::text_field("province", t.col_province, &province, false)) }
            button type="submit" { (t.apply) }
        }
        p { a #csv href=(csv_link) download="spean-figures.csv" { (t.download_csv) } }
        section.card aria-labelledby="totals" {
            h2 #totals { (t.all_referrals) ": " (lang.day(&from)) " – " (lang.day(&to)) }
            dl.facts {
                dt { (t.referrals) } dd #total-referrals { (count(total.referrals.as_ref())) }
                dt { (t.time_to_acknowledge) } dd {
                    (t.median) " " (total.median_seconds_to_acknowledge.map_or_else(|| t.no_time.to_owned(), |s| lang.duration(s)))
                    " · " (t.p90) " " (total.p90_seconds_to_acknowledge.map_or_else(|| t.no_time.to_owned(), |s| lang.duration(s)))
                }
                dt { (t.time_to_accept) } dd {
                    (t.median) " " (total.median_seconds_to_accept.map_or_else(|| t.no_time.to_owned(), |s| lang.duration(s)))
                    " · " (t.p90) " " (total.p90_seconds_to_accept.map_or_else(|| t.no_time.to_owned(), |s| lang.duration(s)))
                }
                dt { (t.within_deadline) } dd {
                    (lang.number(i64::from(total.acknowledged_within_deadline))) " / " (lang.number(i64::from(total.acknowledgement_due)))
                }
                dt { (t.escalations) } dd { (lang.number(i64::from(total.escalations))) }
                dt { (t.missed_visits) } dd { (lang.number(i64::from(total.missed_visits))) }
            }
        }
        section aria-labelledby="times" {
            h2 #times { (t.time_to_acknowledge) }
            (chart::bars("ack-agency", &format!("{} · {}", t.time_to_acknowledge, t.by_agency), legend,
                &time_bars(&response.by_agency, &agency, ack_median, ack_p90)))
            (chart::bars("ack-province", &format!("{} · {}", t.time_to_acknowledge, t.by_province), legend,
                &time_bars(&response.by_province, &province_name, ack_median, ack_p90)))
            h2 { (t.time_to_accept) }
            (chart::bars("accept-agency", &format!("{} · {}", t.time_to_accept, t.by_agency), legend,
                &time_bars(&response.by_agency, &agency, acc_median, acc_p90)))
            (chart::bars("accept-province", &format!("{} · {}", t.time_to_accept, t.by_province), legend,
                &time_bars(&response.by_province, &province_name, acc_median, acc_p90)))
        }
        section aria-labelledby="counts" {
            h2 #counts { (t.referrals) }
            (tallies(t.by_kind, &total.by_kind, &code_label))
            (tallies(t.by_sex, &total.by_sex, &code_label))
            (tallies(t.by_age_band, &total.by_age_band, &code_label))
            (tallies(t.by_province, &total.by_province, &province_name))
        }
    };
    layout::page(lang, t.figures_title, Some(&staff), Nav::Figures, body).into_response()
}

/// The figures as CSV, in the layout `figures --csv` writes (its help documents the columns).
pub async fn figures_csv(
    State(state): State<WebState>,
    staff: Staff,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let lang = staff.lang;
    let (request, from, to) = match figures_request(&query) {
        Ok(asked) => asked,
        Err(error) => return broker_problem(lang, &error),
    };
    match ask_figures(&state, request).await {
        Ok(response) => {
            let disposition = format!("attachment; filename=\"spean-figures-{from}-{to}.csv\"");
            let mut response = (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/csv; charset=utf-8"),
                )],
                figures::csv(&response),
            )
                .into_response();
            if let Ok(value) = HeaderValue::from_str(&disposition) {
                response
                    .headers_mut()
                    .insert(header::CONTENT_DISPOSITION, value);
            }
            response
        }
        Err(error) => broker_problem(lang, &error),
    }
}
