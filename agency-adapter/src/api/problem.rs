//! Errors as RFC 9457 problem details (`application/problem+json`): every refusal says which field
//! is at fault and why, with the HTTP status that fits, and never echoes case-file content.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::AdapterError;

/// The media type of a problem.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem, as RFC 9457 lays it out, with this API's two extensions: `field` (which input is at
/// fault) and `broker_code` (the broker's gRPC code, when the broker refused the request).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem; resolves to this API's documentation.
    #[serde(rename = "type", serialize_with = "type_uri")]
    #[schema(value_type = String)]
    pub kind: &'static str,
    /// The kind of problem, in a few words; the same for every problem of its `type`.
    pub title: &'static str,
    pub status: u16,
    /// This occurrence, in a sentence.
    pub detail: String,
    /// The input at fault: a body field (`case_file.name.khmer`), a query parameter, a path
    /// parameter, or a header (`Idempotency-Key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The broker's code when the broker refused the request (e.g. `FAILED_PRECONDITION`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_code: Option<&'static str>,
}

/// The problem's slug as the URI of its documentation.
fn type_uri<S: serde::Serializer>(slug: &&'static str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{TYPES}{slug}"))
}

const TYPES: &str = "https://spean.example/problems/";

impl Problem {
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind: slug,
            title,
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
            broker_code: None,
        }
    }

    pub fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        let field = field.into();
        let mut problem = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-input",
            "Invalid input",
            format!("{field}: {reason}"),
        );
        problem.field = Some(field);
        problem
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Missing or invalid API key",
            "give a live API key as `Authorization: Bearer <key>` (spean-adapter api-key create)",
        )
    }

    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let unauthorized = status == StatusCode::UNAUTHORIZED;
        let mut response = (status, axum::Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if unauthorized {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"spean-adapter\""),
            );
        }
        response
    }
}

/// The broker's refusal codes, by the HTTP status that says the same.
fn broker_status(code: &str) -> StatusCode {
    match code {
        "NOT_FOUND" => StatusCode::NOT_FOUND,
        "PERMISSION_DENIED" => StatusCode::FORBIDDEN,
        "FAILED_PRECONDITION" | "ALREADY_EXISTS" | "ABORTED" => StatusCode::CONFLICT,
        "RESOURCE_EXHAUSTED" => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// The field a broker message names, when it starts with one (`kind: unknown kind "x"`).
fn broker_field(message: &str) -> Option<String> {
    let (head, _) = message.split_once(": ")?;
    head.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'))
        .then(|| head.to_owned())
}

impl From<AdapterError> for Problem {
    fn from(error: AdapterError) -> Self {
        match error {
            AdapterError::Invalid { field, reason } => Self::invalid(field, reason),
            AdapterError::NotFound { what, .. } => Self::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                error.to_string(),
            )
            .with_field(match what {
                "referral" => "id",
                _ => "path",
            }),
            AdapterError::KeyReused { .. } => Self::new(
                StatusCode::CONFLICT,
                "idempotency-key-reused",
                "Idempotency key already used for another request",
                error.to_string(),
            )
            .with_field("Idempotency-Key"),
            AdapterError::RefusedBefore { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "refused-before",
                "Refused by the broker before",
                error.to_string(),
            )
            .with_field("Idempotency-Key"),
            AdapterError::Rejected { code, ref message } => {
                let mut problem = Self::new(
                    broker_status(code),
                    "refused-by-broker",
                    "Refused by the broker",
                    message.clone(),
                );
                problem.field = broker_field(message);
                problem.broker_code = Some(code);
                problem
            }
            AdapterError::CertificateRefused(_) => Self::new(
                StatusCode::BAD_GATEWAY,
                "certificate-refused",
                "The broker refuses this agency's certificate",
                format!("{error}; the request stays queued"),
            ),
            AdapterError::Sealing(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "sealing",
                "Cannot seal or open",
                error.to_string(),
            ),
            other => Self::internal(&other),
        }
    }
}

impl From<anyhow::Error> for Problem {
    fn from(error: anyhow::Error) -> Self {
        match error.downcast::<AdapterError>() {
            Ok(error) => error.into(),
            Err(other) => match other.chain().find_map(|e| e.downcast_ref::<AdapterError>()) {
                Some(AdapterError::Invalid { field, reason }) => Self::invalid(field, reason),
                _ if flag_of(&other.to_string()).is_some() => {
                    let text = other.to_string();
                    let field = flag_of(&text).unwrap_or_default();
                    Self::invalid(field, text)
                }
                _ => Self::internal(&other),
            },
        }
    }
}

/// The field a command-line message is about: `--subject-province: …` or `give --to AGENCY, …`
/// (the shared code speaks the command line's language), as the API names it: `subject_province`.
fn flag_of(text: &str) -> Option<String> {
    let rest = text
        .strip_prefix("--")
        .or_else(|| text.strip_prefix("give --"))?;
    let flag: String = rest
        .chars()
        .take_while(|c| c.is_ascii_lowercase() || *c == '-')
        .collect();
    (!flag.is_empty()).then(|| flag.replace('-', "_"))
}

impl Problem {
    /// The store's and the broker's own errors say nothing a caller can act on, and could say
    /// more than a caller should read: logged here, generic there.
    fn internal(error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%error, "API request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the adapter could not complete the request; its log says why",
        )
    }

    fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }
}
