//! The key check every route runs first. A request without a live key is answered 401 and leaves
//! no trace: nothing is written, nothing is logged, no route runs.

use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{ApiState, problem::Problem};
use crate::api_keys::Caller;

/// Checks `Authorization: Bearer <key>` and hands the route who is calling.
pub async fn require_key(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let caller = match presented {
        Some(key) => state.ctx.store.api_caller(key).await,
        None => Ok(None),
    };
    match caller {
        Ok(Some(caller)) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Ok(None) => Problem::unauthorized().into_response(),
        Err(error) => Problem::from(error).into_response(),
    }
}

/// The name the audit log records for a read through the API: the person the calling system
/// names in `Spean-Reader` (a staff member of the agency), and the key it used; or the key alone.
pub fn reader(caller: &Caller, person: Option<&str>) -> String {
    let key = format!("api:{}", caller.name);
    match person.map(str::trim).filter(|p| !p.is_empty()) {
        Some(person) => format!("{person} via {key}"),
        None => key,
    }
}
