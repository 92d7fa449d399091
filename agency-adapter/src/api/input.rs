//! Reading a request: the JSON body (each error names the field by its path, e.g.
//! `case_file.name.khmer`) and the `Idempotency-Key` header every write takes.

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{header, request::Parts},
};
use serde::de::DeserializeOwned;

use super::problem::Problem;

/// The largest body the API reads: a case file with long notes fits many times over.
pub const MAX_BODY: usize = 256 * 1024;

/// The header that makes a write idempotent.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// A JSON body, refused with the path of the field at fault.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(Problem::invalid("Content-Type", "must be application/json"));
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|error| Problem::invalid("body", error.body_text()))?;
        let mut json = serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(&mut json)
            .map(Body)
            .map_err(|error| {
                let path = error.path().to_string();
                let field = if path == "." { "body".to_owned() } else { path };
                Problem::invalid(field, error.into_inner())
            })
    }
}

/// A query string, refused with the name of the parameter at fault.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let pairs = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(pairs)
            .map(Params)
            .map_err(|error| {
                let path = error.path().to_string();
                let field = if path == "." {
                    "query".to_owned()
                } else {
                    path
                };
                Problem::invalid(field, error.into_inner())
            })
    }
}

/// The `Idempotency-Key` header, required on every write. Checked by the network's rules for keys
/// when the write uses it (as `client_ref` or `request_id`).
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(IDEMPOTENCY_KEY)
            .ok_or_else(|| {
                Problem::invalid(
                    IDEMPOTENCY_KEY,
                    "is required on every write: a key of your choosing (e.g. a UUID) that the \
                     same request sent again carries again",
                )
            })?
            .to_str()
            .map_err(|_| Problem::invalid(IDEMPOTENCY_KEY, "is not visible ASCII"))?;
        Ok(Self(value.to_owned()))
    }
}

/// The staff member a calling system says a read is for (`Spean-Reader`), for the audit log.
pub struct Reader(pub Option<String>);

/// The header naming who reads.
pub const READER: &str = "Spean-Reader";

impl<S: Send + Sync> FromRequestParts<S> for Reader {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(READER) else {
            return Ok(Self(None));
        };
        // Names may be Khmer: HTTP carries them as UTF-8 bytes.
        let text = std::str::from_utf8(value.as_bytes())
            .map_err(|_| Problem::invalid(READER, "is not UTF-8"))?;
        if text.chars().count() > crate::sealing::MAX_PERSON || text.chars().any(char::is_control) {
            return Err(Problem::invalid(
                READER,
                "must be a person's name: at most 256 characters, no control characters",
            ));
        }
        Ok(Self(Some(text.to_owned())))
    }
}
