//! The inbox, what this agency sent, one referral, and sending one. Lists are filtered and paged
//! here, over the local store (an agency holds thousands of referrals, not millions).

use axum::{
    Extension, Json,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use spean_domain::ids::ClientRef;

use super::{
    ApiState,
    auth::reader,
    input::{Body, IdempotencyKey, Params, Reader},
    problem::Problem,
};
use crate::{
    api_keys::Caller,
    case_file::{CaseFile, Given},
    cli::{
        AgeBandArg, SexArg, UrgencyArg,
        consent::{ConsentArgs, GiverArg, SharingArg},
        send::{SendArgs, Submitted, submit},
        views::{InboxItem, Shown, StatusItem, inbox_items, status_items},
    },
    follow_up::VisitStatus,
    referral::is_closed,
};

/// The most items one page holds.
const MAX_LIMIT: usize = 500;
const DEFAULT_LIMIT: usize = 50;

/// Filters and paging for the inbox and for what was sent.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only referrals in this state (e.g. `delivered`, `accepted`).
    pub state: Option<String>,
    /// Only referrals of this kind (e.g. `lama`, `placement`).
    pub kind: Option<String>,
    /// Only those waiting on this agency: in the inbox, to acknowledge or answer (a broadcast);
    /// in what was sent, a broadcast no candidate accepted, for this agency to send on.
    pub waiting_on_us: Option<bool>,
    /// Only overdue ones: escalated for want of an acknowledgement, or (in the inbox) with a
    /// follow-up visit of this agency's overdue.
    pub overdue: Option<bool>,
    /// Include closed referrals (completed, failed, withdrawn, …) [default: false].
    pub all: Option<bool>,
    /// How many to skip [default: 0].
    pub offset: Option<usize>,
    /// How many at most [default: 50, at most 500].
    pub limit: Option<usize>,
}

impl ListQuery {
    fn page<T>(&self, items: Vec<T>) -> Result<Page<T>, Problem> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(Problem::invalid("limit", "must be 1 to 500"));
        }
        let offset = self.offset.unwrap_or(0);
        let total = items.len();
        let items: Vec<T> = items.into_iter().skip(offset).take(limit).collect();
        let next_offset = (offset + items.len() < total).then_some(offset + items.len());
        Ok(Page {
            items,
            total,
            offset,
            limit,
            next_offset,
        })
    }

    fn keeps(&self, state: &str, kind: &str) -> bool {
        self.state.as_deref().is_none_or(|s| s == state)
            && self.kind.as_deref().is_none_or(|k| k == kind)
    }
}

/// One page of a list.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// How many match the filters in all.
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    /// The `offset` of the next page; `null` on the last.
    pub next_offset: Option<usize>,
}

/// The inbox: what needs this agency first (escalated, overdue, to acknowledge, due), then the
/// rest, newest first. Each child's name listed is a read of the case file, in the audit log.
#[utoipa::path(
    get, path = "/v1/inbox", tag = "referrals",
    params(ListQuery, ("Spean-Reader" = Option<String>, Header, description = "The staff member reading, for the audit log")),
    responses(
        (status = 200, body = Page<InboxItem>),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn inbox(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Reader(person): Reader,
    Params(query): Params<ListQuery>,
) -> Result<Json<Page<InboxItem>>, Problem> {
    let items = inbox_items(
        &state.ctx,
        query.all.unwrap_or(false),
        &reader(&caller, person.as_deref()),
    )
    .await?;
    let items = items
        .into_iter()
        .filter(|i| query.keeps(&i.state, &i.kind))
        .filter(|i| {
            query
                .waiting_on_us
                .is_none_or(|w| w == i.waiting_on_this_agency)
        })
        .filter(|i| {
            let overdue = (i.waiting_on_this_agency && i.escalations > 0)
                || i.follow_up
                    .as_ref()
                    .is_some_and(|f| f.status == VisitStatus::Overdue);
            query.overdue.is_none_or(|o| o == overdue)
        })
        .collect();
    Ok(Json(query.page(items)?))
}

/// What this agency sent, newest first, with who acts next on each.
#[utoipa::path(
    get, path = "/v1/sent", tag = "referrals",
    params(ListQuery),
    responses(
        (status = 200, body = Page<StatusItem>),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn sent(
    State(state): State<ApiState>,
    Params(query): Params<ListQuery>,
) -> Result<Json<Page<StatusItem>>, Problem> {
    let escalations = state.ctx.store.escalations().await?;
    let items = status_items(&state.ctx, query.all.unwrap_or(false))
        .await?
        .into_iter()
        .filter(|i| query.keeps(&i.state, &i.kind))
        .filter(|i| {
            query
                .waiting_on_us
                .is_none_or(|w| w == i.no_candidate_accepted)
        })
        .filter(|i| {
            let escalated = escalations.get(&i.referral_id).copied().unwrap_or(0) > 0
                && !is_closed(&i.state)
                && matches!(i.state.as_str(), "sent" | "delivered");
            query.overdue.is_none_or(|o| o == escalated)
        })
        .collect();
    Ok(Json(query.page(items)?))
}

/// One referral: envelope, case file (or the part of it this agency holds), follow-up schedule
/// and history. The read is in the audit log before the answer leaves.
#[utoipa::path(
    get, path = "/v1/referrals/{id}", tag = "referrals",
    params(("id" = String, Path, description = "The referral id"),
           ("Spean-Reader" = Option<String>, Header, description = "The staff member reading, for the audit log")),
    responses(
        (status = 200, description = "As `spean-adapter show --json` prints it", body = Object),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Reader(person): Reader,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, Problem> {
    let shown = Shown::read(&state.ctx, &id, &reader(&caller, person.as_deref())).await?;
    Ok(Json(shown.json(state.ctx.me())))
}

/// Who consented, when, and to what; or the kind's emergency exception.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentBody {
    /// `client` or `guardian`; required unless `emergency_exception`.
    pub by: Option<GiverArg>,
    /// When consent was given: RFC 3339, or YYYY-MM-DD (that day's start in Cambodia).
    pub at: Option<String>,
    /// What it covers besides the referral itself.
    #[serde(default, rename = "for")]
    pub covers: Vec<SharingArg>,
    /// Send without consent under the kind's emergency exception, giving why as a code.
    pub emergency_exception: Option<String>,
}

/// A referral to send. Give `to`, or `service` with `province`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    /// The recipient agency id.
    pub to: Option<String>,
    /// A service kind, resolved by the broker in `province`.
    pub service: Option<String>,
    /// The province code for `service`.
    pub province: Option<String>,
    /// With `service`: to every agency offering it in the province at once (`true`), or to the
    /// first only (`false`) [default: the kind's, a broadcast for placements].
    pub broadcast: Option<bool>,
    /// Agencies to tell of the referral; they never see the case file.
    #[serde(default)]
    pub notify: Vec<String>,
    /// A referral this agency sent about the same client that this one follows.
    pub follows: Option<String>,
    /// The referral kind from the taxonomy, e.g. `lama`.
    pub kind: String,
    pub urgency: UrgencyArg,
    pub sex: Option<SexArg>,
    pub age_band: Option<AgeBandArg>,
    /// Two-digit province code where the subject lives [default: `province`, or the recipient's
    /// when it serves one only].
    pub subject_province: Option<String>,
    /// A pseudonymous reference linking referrals about one person without naming them.
    pub pseudonym: Option<String>,
    /// The case file: sealed to its readers before it leaves this machine.
    pub case_file: Option<CaseFile>,
    pub consent: ConsentBody,
}

/// Sends a referral. The `Idempotency-Key` is its `client_ref`: the same body sent again with it
/// answers as the first did and sends nothing; another body with it is refused (409).
#[utoipa::path(
    post, path = "/v1/referrals", tag = "referrals",
    params(("Idempotency-Key" = String, Header, description = "The referral's client_ref")),
    request_body = SendBody,
    responses(
        (status = 201, description = "Sent: the broker recorded it", body = Submitted),
        (status = 200, description = "Sent before under this key: nothing new was sent", body = Submitted),
        (status = 202, description = "Queued: the daemon sends it when the broker can be reached", body = Submitted),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn send(
    State(state): State<ApiState>,
    IdempotencyKey(key): IdempotencyKey,
    Body(body): Body<SendBody>,
) -> Result<Response, Problem> {
    ClientRef::parse(super::input::IDEMPOTENCY_KEY, &key).map_err(crate::AdapterError::from)?;
    if body.to.is_some() && (body.service.is_some() || body.province.is_some()) {
        return Err(Problem::invalid(
            "to",
            "give `to`, or `service` with `province`, not both",
        ));
    }
    if body.service.is_some() != body.province.is_some() {
        return Err(Problem::invalid(
            if body.service.is_some() {
                "province"
            } else {
                "service"
            },
            "`service` and `province` go together",
        ));
    }
    if body.broadcast.is_some() && body.service.is_none() {
        return Err(Problem::invalid("broadcast", "only with `service`"));
    }
    let consent = body.consent;
    if consent.emergency_exception.is_some() && (consent.by.is_some() || consent.at.is_some()) {
        return Err(Problem::invalid(
            "consent.emergency_exception",
            "give consent (`by`, `at`) or an emergency exception, not both",
        ));
    }
    let args = SendArgs {
        to: body.to,
        service: body.service,
        province: body.province,
        broadcast: body.broadcast == Some(true),
        one: body.broadcast == Some(false),
        notify: body.notify,
        follows: body.follows,
        kind: body.kind,
        urgency: body.urgency,
        sex: body.sex.unwrap_or(SexArg::Unknown),
        age_band: body.age_band.unwrap_or(AgeBandArg::Unknown),
        subject_province: body.subject_province,
        client_ref: Some(key),
        pseudonym: body.pseudonym,
        case_file: None,
        name_km: None,
        name_latin: None,
        reason: None,
        notes: None,
        case_file_inline: Some(Given(body.case_file.unwrap_or_default())),
        consent: ConsentArgs {
            consent_by: consent.by,
            consent_at: consent.at,
            consent_for: consent.covers,
            emergency_exception: consent.emergency_exception,
        },
        queue_only: false,
        json: true,
    };
    let submitted = submit(&state.ctx, args, None)
        .await
        .map_err(|e| renamed(e.into()))?;
    let status = match (submitted.status, submitted.replayed) {
        ("queued", _) => StatusCode::ACCEPTED,
        (_, true) => StatusCode::OK,
        _ => StatusCode::CREATED,
    };
    let location = match &submitted.referral_id {
        Some(id) => format!("/v1/referrals/{id}"),
        None => format!("/v1/outbox/{}", submitted.client_ref),
    };
    Ok((status, [(header::LOCATION, location)], Json(submitted)).into_response())
}

/// The command line's names for consent fields, as the API names them.
fn renamed(mut problem: Problem) -> Problem {
    let api_name = match problem.field.as_deref() {
        Some("consent-by" | "consent_by") => Some("consent.by"),
        Some("consent-at" | "consent_at") => Some("consent.at"),
        Some("client_ref") => Some(super::input::IDEMPOTENCY_KEY),
        _ => None,
    };
    if let Some(name) = api_name {
        problem.field = Some(name.to_owned());
    }
    problem
}
