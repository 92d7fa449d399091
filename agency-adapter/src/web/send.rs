//! The form that sends a referral: to an agency, or to a service in a province (the broker picks
//! the agency, or sends a placement to every candidate), with the directory's choices. It runs the
//! same code as `spean-adapter send` and the API, so it checks the same rules and queues the
//! referral the same way when the broker cannot be reached. The form carries a client reference
//! made when it was drawn: sent twice, it is one referral.

use std::collections::HashMap;

use axum::{
    Form,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use maud::html;
use serde::de::DeserializeOwned;

use super::{
    WebState,
    inbox::link_banner,
    layout::{self, Nav},
    session::Staff,
};
use crate::{
    AdapterError,
    case_file::{CaseFile, Contact, Given, PersonName},
    cli::{consent::ConsentArgs, send::SendArgs},
};

pub async fn page(State(state): State<WebState>, staff: Staff) -> Response {
    form(&state, &staff, &HashMap::new(), None, StatusCode::OK).await
}

/// Draws the form, filled with what was given when it comes back with a problem.
async fn form(
    state: &WebState,
    staff: &Staff,
    given: &HashMap<String, String>,
    problem: Option<String>,
    status: StatusCode,
) -> Response {
    let lang = staff.lang;
    let t = lang.t();
    let directory = state.directory.get(&state.ctx, &state.link).await;
    let value = |name: &str| given.get(name).map(String::as_str).unwrap_or_default();
    let me = state.ctx.me();
    let (agencies, kinds, provinces) = match &directory {
        Some(d) => (
            d.agencies
                .iter()
                .filter(|a| a.id != me)
                .map(|a| (a.id.clone(), format!("{} ({})", a.name, a.id)))
                .collect::<Vec<_>>(),
            d.kinds
                .iter()
                .map(|k| (k.kind.clone(), lang.code_label(&k.kind)))
                .collect::<Vec<_>>(),
            d.provinces
                .iter()
                .map(|p| {
                    (
                        p.code.clone(),
                        format!("{} ({})", d.province_name(&p.code, lang), p.code),
                    )
                })
                .collect::<Vec<_>>(),
        ),
        None => (Vec::new(), Vec::new(), Vec::new()),
    };
    let choice = |id: &str, label: &str, options: &[(String, String)], required: bool| {
        if options.is_empty() {
            layout::text_field(id, label, value(id), required)
        } else {
            layout::select(id, label, options, value(id), Some(t.choose))
        }
    };
    let codes = |list: &[&str]| -> Vec<(String, String)> {
        list.iter()
            .map(|c| ((*c).to_owned(), lang.code_label(c)))
            .collect()
    };
    let by_service = value("to_mode") == "service";
    let client_ref = match value("client_ref") {
        "" => uuid::Uuid::now_v7().to_string(),
        given => given.to_owned(),
    };
    let body = html! {
        h1 { (t.send_title) }
        (link_banner(state, lang))
        @if directory.is_none() { p.offline role="status" { (t.directory_offline) } }
        @if let Some(problem) = &problem { (layout::problem(problem)) }
        form.stack method="post" action="/send" {
            (staff.csrf_field())
            input type="hidden" name="client_ref" value=(client_ref);
            fieldset {
                legend { (t.send_to) }
                label.choice for="by-agency" {
                    input #by-agency type="radio" name="to_mode" value="agency" checked[!by_service];
                    (t.send_to_agency)
                }
                label.choice for="by-service" {
                    input #by-service type="radio" name="to_mode" value="service" checked[by_service];
                    (t.send_to_service)
                }
                div.by-agency { (choice("to", t.agency, &agencies, false)) }
                div.by-service {
                    (choice("service", t.service, &kinds, false))
                    (choice("province", t.province, &provinces, false))
                }
            }
            (choice("kind", t.col_kind, &kinds, true))
            (layout::select("urgency", t.col_urgency, &codes(&["emergency", "urgent", "routine"]),
                match value("urgency") { "" => "urgent", u => u }, None))
            fieldset {
                legend { (t.subject) }
                (layout::text_field("name_km", t.name_km, value("name_km"), false))
                (layout::text_field("name_latin", t.name_latin, value("name_latin"), false))
                (layout::text_field("date_of_birth", t.date_of_birth, value("date_of_birth"), false))
                (layout::select("sex", t.sex, &codes(&["female", "male", "other", "unknown"]),
                    match value("sex") { "" => "unknown", s => s }, None))
                (layout::select("age_band", t.age_band, &codes(&["0-4", "5-9", "10-14", "15-17", "18-24", "25-59", "60+", "unknown"]),
                    match value("age_band") { "" => "unknown", a => a }, None))
                (choice("subject_province", t.subject_province, &provinces, false))
                (layout::text_field("phone", t.contact_phone, value("phone"), false))
                (layout::text_field("address", t.address, value("address"), false))
                label for="reason" { (t.reason_for_referral) }
                textarea #reason name="reason" rows="3" required { (value("reason")) }
                label for="notes" { (t.notes) }
                textarea #notes name="notes" rows="2" { (value("notes")) }
            }
            fieldset {
                legend { (t.consent) }
                (layout::select("consent_by", t.consent, &[
                    ("client".to_owned(), t.consent_by_client.to_owned()),
                    ("guardian".to_owned(), t.consent_by_guardian.to_owned()),
                ], value("consent_by"), Some("–")))
                (layout::date_field("consent_at", t.consent_date, value("consent_at"), false))
                (layout::text_field("emergency_exception", t.emergency_exception, value("emergency_exception"), false))
            }
            button #send type="submit" { (t.send) }
        }
    };
    (
        status,
        layout::page(lang, t.send_title, Some(staff), Nav::Send, body),
    )
        .into_response()
}

/// Reads a code the command line takes as a value enum (`urgent`, `female`, `10-14`), naming
/// the field when it is not one.
fn code<T: DeserializeOwned>(field: &str, raw: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(raw.to_owned()))
        .map_err(|_| format!("{field}: {raw:?} is not one of the choices"))
}

fn args_from(form: &HashMap<String, String>) -> Result<SendArgs, String> {
    let get = |name: &str| {
        form.get(name)
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let some = |name: &str| Some(get(name)).filter(|v| !v.is_empty());
    let by_service = get("to_mode") == "service";
    let (to, service, province) = if by_service {
        (None, some("service"), some("province"))
    } else {
        (some("to"), None, None)
    };
    if !by_service && to.is_none() {
        return Err("to: choose the agency to send it to".into());
    }
    if by_service && (service.is_none() || province.is_none()) {
        return Err("service, province: choose both".into());
    }
    let exception = some("emergency_exception");
    let consent = match (some("consent_by"), exception) {
        (Some(by), None) => ConsentArgs {
            consent_by: Some(code("consent_by", &by)?),
            consent_at: Some(some("consent_at").ok_or("consent_at: when was consent given?")?),
            consent_for: Vec::new(),
            emergency_exception: None,
        },
        (None, Some(reason)) => ConsentArgs {
            consent_by: None,
            consent_at: None,
            consent_for: Vec::new(),
            emergency_exception: Some(reason),
        },
        (Some(_), Some(_)) => {
            return Err(
                "emergency_exception: give consent or an emergency exception, not both".into(),
            );
        }
        (None, None) => {
            return Err("consent_by: who consented? (or give an emergency exception)".into());
        }
    };
    let case_file = CaseFile {
        name: PersonName {
            khmer: get("name_km"),
            latin: get("name_latin"),
        },
        date_of_birth: get("date_of_birth"),
        contact: Contact {
            phone: get("phone"),
            address: get("address"),
            directions: String::new(),
        },
        reason_for_referral: get("reason"),
        notes: get("notes"),
        ..CaseFile::default()
    };
    Ok(SendArgs {
        to,
        service,
        province,
        broadcast: false,
        one: false,
        notify: Vec::new(),
        follows: None,
        kind: some("kind").ok_or("kind: choose the kind of referral")?,
        urgency: code("urgency", &get("urgency"))?,
        sex: code("sex", &some("sex").unwrap_or_else(|| "unknown".into()))?,
        age_band: code(
            "age_band",
            &some("age_band").unwrap_or_else(|| "unknown".into()),
        )?,
        subject_province: some("subject_province"),
        client_ref: some("client_ref"),
        pseudonym: None,
        case_file: None,
        name_km: None,
        name_latin: None,
        reason: None,
        notes: None,
        case_file_inline: Some(Given(case_file)),
        consent,
        queue_only: false,
        json: true,
    })
}

pub async fn send(
    State(state): State<WebState>,
    staff: Staff,
    Form(given): Form<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = staff.csrf_refusal(&given) {
        return refused;
    }
    let args = match args_from(&given) {
        Ok(args) => args,
        Err(problem) => {
            return form(
                &state,
                &staff,
                &given,
                Some(problem),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
        }
    };
    match crate::cli::send::submit(&state.ctx, args, None).await {
        Ok(submitted) => match &submitted.referral_id {
            Some(id) => Redirect::to(&format!("/referrals/{id}?done=sent")).into_response(),
            None => Redirect::to("/sent?queued=1").into_response(),
        },
        Err(error) => {
            let problem = match error.downcast_ref::<AdapterError>() {
                Some(AdapterError::Invalid { field, reason }) => format!("{field}: {reason}"),
                Some(AdapterError::Rejected { code, message }) => format!("{code}: {message}"),
                Some(AdapterError::RefusedBefore { .. } | AdapterError::KeyReused { .. }) => {
                    error.to_string()
                }
                _ => {
                    tracing::error!(error = %error, "cannot send a referral");
                    staff.lang.t().error_title.to_owned()
                }
            };
            form(
                &state,
                &staff,
                &given,
                Some(problem),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
    }
}
