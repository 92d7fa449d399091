//! The feedback actions on a referral, one route each, as the command line has one subcommand
//! each: `POST /v1/referrals/{id}/<action>`. Each takes an `Idempotency-Key` (the action's
//! `request_id`), is written to the outbox first, and is sent now when the broker can be reached;
//! otherwise it is queued and sent in order when the link returns.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use spean_domain::ids::RequestId;

use super::{
    ApiState,
    input::{Body, IDEMPOTENCY_KEY, IdempotencyKey},
    problem::Problem,
};
use crate::cli::{
    ActionArgs,
    consent::GiverArg,
    send::{Act, Acted, perform},
};

/// Records `act` under `key`: 200 when the broker recorded it (now or before), 202 when queued.
async fn record(state: &ApiState, key: String, act: Act) -> Result<Response, Problem> {
    RequestId::parse(IDEMPOTENCY_KEY, &key).map_err(crate::AdapterError::from)?;
    let acted = perform(&state.ctx, act).await.map_err(|error| {
        let mut problem = Problem::from(error);
        if problem.field.as_deref() == Some("request_id") {
            problem.field = Some(IDEMPOTENCY_KEY.into());
        }
        problem
    })?;
    let status = if acted.status == "queued" {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(acted)).into_response())
}

fn common(id: String, key: String, by: Option<String>, note: Option<String>) -> ActionArgs {
    ActionArgs {
        id,
        by,
        note,
        request_id: Some(key),
        queue_only: false,
        json: true,
    }
}

/// Who acts, and a note: what every action may carry.
#[derive(Deserialize, utoipa::ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Said {
    /// Who acts: a person's name, may be Khmer.
    pub by: Option<String>,
    pub note: Option<String>,
}

/// Declares an action's body: who acts, a note, and the action's own fields.
macro_rules! action_body {
    ($(#[$meta:meta])* $name:ident { $($(#[$field_meta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Deserialize, utoipa::ToSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Who acts: a person's name, may be Khmer.
            pub by: Option<String>,
            pub note: Option<String>,
            $($(#[$field_meta])* pub $field: $ty,)*
        }
    };
}

action_body!(
    /// Accepting: what will be done, and by when.
    AcceptBody {
        /// The planned action.
        planned_action: String,
        /// When it is due (YYYY-MM-DD).
        date: String,
    }
);
action_body!(
    /// Declining, with a code and why.
    DeclineBody {
        /// e.g. no_capacity, out_of_area, not_eligible, duplicate, other.
        reason_code: String,
        reason: String,
    }
);
action_body!(
    /// Sending it on to another agency.
    RedirectBody {
        /// The agency to redirect to.
        to: String,
        reason: String,
    }
);
action_body!(
    /// A follow-up activity made.
    FollowUpBody {
        /// e.g. home_visit, school_attendance, grant_received, appointment, interim_report.
        activity: String,
        /// When it happened (YYYY-MM-DD).
        date: String,
    }
);
action_body!(
    /// Completing, with the outcome.
    CompleteBody {
        /// e.g. child_well_in_school, reunited_with_family.
        outcome: String,
        summary: String,
    }
);
action_body!(
    /// Recording that it failed.
    FailBody { reason: String, }
);
action_body!(
    /// Handing the follow-up visits to another agency.
    DelegateBody {
        /// The agency that makes the visits from now on.
        to: String,
        /// Why (e.g. it is nearer the family).
        reason: String,
    }
);

/// A withdrawal of consent: it carries no note (every agency deletes the referral's notes).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentWithdrawalBody {
    /// Who withdrew it: `client` or `guardian`.
    pub withdrawn_by: GiverArg,
    /// When they said so: RFC 3339, or YYYY-MM-DD [default: now].
    pub at: Option<String>,
    /// Who records it here (stays in this agency's outbox, is not sent).
    pub by: Option<String>,
}

/// The documentation every action route shares, and its route.
macro_rules! action_route {
    ($name:ident, $path:literal, $summary:literal, $body:ty, |$id:ident, $key:ident, $b:ident| $act:expr) => {
        #[doc = $summary]
        #[utoipa::path(
            post, path = $path, tag = "actions",
            params(("id" = String, Path, description = "The referral id"),
                   ("Idempotency-Key" = String, Header, description = "The action's request_id")),
            request_body = $body,
            responses(
                (status = 200, description = "Sent: the broker recorded it (now, or before under this key)", body = Acted),
                (status = 202, description = "Queued: sent in order when the broker can be reached", body = Acted),
                (status = 400, body = Problem, content_type = "application/problem+json"),
                (status = 401, body = Problem, content_type = "application/problem+json"),
                (status = 404, body = Problem, content_type = "application/problem+json"),
                (status = 409, body = Problem, content_type = "application/problem+json"),
                (status = 422, body = Problem, content_type = "application/problem+json"),
            )
        )]
        pub async fn $name(
            State(state): State<ApiState>,
            Path($id): Path<String>,
            IdempotencyKey($key): IdempotencyKey,
            Body($b): Body<$body>,
        ) -> Result<Response, Problem> {
            record(&state, $key.clone(), $act).await
        }
    };
}

action_route!(
    acknowledge,
    "/v1/referrals/{id}/acknowledge",
    "Acknowledges a referral: a person here has seen it.",
    Said,
    |id, key, b| Act::Ack {
        common: common(id, key, b.by, b.note)
    }
);
action_route!(
    accept,
    "/v1/referrals/{id}/accept",
    "Accepts a referral with a planned action and its date.",
    AcceptBody,
    |id, key, b| Act::Accept {
        common: common(id, key, b.by, b.note),
        planned_action: b.planned_action,
        date: b.date
    }
);
action_route!(
    decline,
    "/v1/referrals/{id}/decline",
    "Declines a referral.",
    DeclineBody,
    |id, key, b| Act::Decline {
        common: common(id, key, b.by, b.note),
        reason_code: b.reason_code,
        reason: b.reason
    }
);
action_route!(
    redirect,
    "/v1/referrals/{id}/redirect",
    "Redirects a referral to another agency.",
    RedirectBody,
    |id, key, b| Act::Redirect {
        common: common(id, key, b.by, b.note),
        to: b.to,
        reason: b.reason
    }
);
action_route!(
    in_progress,
    "/v1/referrals/{id}/in-progress",
    "Marks a referral in progress.",
    Said,
    |id, key, b| Act::Progress {
        common: common(id, key, b.by, b.note)
    }
);
action_route!(
    follow_up,
    "/v1/referrals/{id}/follow-ups",
    "Records a follow-up activity.",
    FollowUpBody,
    |id, key, b| Act::Followup {
        common: common(id, key, b.by, b.note),
        activity: b.activity,
        date: b.date
    }
);
action_route!(
    complete,
    "/v1/referrals/{id}/complete",
    "Completes a referral with its outcome.",
    CompleteBody,
    |id, key, b| Act::Complete {
        common: common(id, key, b.by, b.note),
        outcome: b.outcome,
        summary: b.summary
    }
);
action_route!(
    fail,
    "/v1/referrals/{id}/fail",
    "Records that a referral failed.",
    FailBody,
    |id, key, b| Act::Fail {
        common: common(id, key, b.by, b.note),
        reason: b.reason
    }
);
action_route!(
    withdraw,
    "/v1/referrals/{id}/withdraw",
    "Withdraws a referral this agency sent.",
    Said,
    |id, key, b| Act::Withdraw {
        common: common(id, key, b.by, b.note)
    }
);
action_route!(
    entered_in_error,
    "/v1/referrals/{id}/entered-in-error",
    "Marks a referral as entered in error.",
    Said,
    |id, key, b| Act::Error {
        common: common(id, key, b.by, b.note)
    }
);
action_route!(
    delegate,
    "/v1/referrals/{id}/delegation",
    "Hands the follow-up visits of a referral this agency accepted to another agency.",
    DelegateBody,
    |id, key, b| Act::Delegate {
        common: common(id, key, b.by, b.note),
        to: b.to,
        reason: b.reason
    }
);
action_route!(
    revoke_delegation,
    "/v1/referrals/{id}/delegation/revoke",
    "Takes back the follow-up visits delegated to another agency.",
    Said,
    |id, key, b| Act::RevokeDelegation {
        common: common(id, key, b.by, b.note)
    }
);
action_route!(
    withdraw_consent,
    "/v1/referrals/{id}/consent-withdrawal",
    "Records that the client or their guardian withdrew consent: every agency deletes the case file and notes; an open referral is withdrawn.",
    ConsentWithdrawalBody,
    |id, key, b| Act::WithdrawConsent {
        common: common(id, key, b.by, None),
        withdrawn_by: b.withdrawn_by,
        at: b.at
    }
);
