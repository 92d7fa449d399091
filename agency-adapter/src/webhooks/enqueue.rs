//! The messages an occurrence makes, written inside the store's write transaction that records
//! the occurrence itself: a referral new to this store, an event new to it, an outbox row the
//! broker refused. The store calls these only for what is new, so a repeated delivery writes
//! nothing; and since message and occurrence commit together, a daemon killed before it posts
//! finds the messages on restart.
//!
//! Every endpoint subscribed gets one, enabled or not: a disabled endpoint keeps its messages for
//! when it is enabled again.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};
use spean_domain::ids::AgencyId;
use spean_proto::v1::{Envelope, FeedbackEvent, FeedbackKind};

use super::{EventType, now_ms, rfc3339};
use crate::{
    AdapterError,
    referral::{audience_name, kind_name, state_name},
    store::timestamp,
};

/// A referral this store had not held: `referral.received`, unless this agency sent it (a sender
/// learns of its own referral from its own submit).
pub(crate) fn referral_received(
    conn: &Connection,
    agency: &AgencyId,
    envelope: &Envelope,
    state: i32,
    audience: i32,
) -> Result<(), AdapterError> {
    if envelope.sender_agency_id == agency.as_str() {
        return Ok(());
    }
    let data = json!({
        "referral_id": envelope.referral_id,
        "referral_kind": envelope.kind,
        "urgency": crate::referral::urgency_name(envelope.urgency),
        "state": state_name(state),
        "audience": audience_name(audience),
        "sender_agency_id": envelope.sender_agency_id,
        "at": timestamp(envelope.created_at.as_ref()),
    });
    put(
        conn,
        &[EventType::ReferralReceived],
        &envelope.referral_id,
        data,
    )
}

/// An event this store had not held. `with_new_referral` says it came in the history of a
/// referral new here: that referral's `referral.received` already tells of it, so only an
/// escalation or a missed visit in it makes a message of its own.
pub(crate) fn event_stored(
    conn: &Connection,
    agency: &AgencyId,
    event: &FeedbackEvent,
    with_new_referral: bool,
) -> Result<(), AdapterError> {
    // What the referral is, as held now; an event for a referral not held tells nothing to send.
    let held: Option<(String, String, String)> = conn
        .prepare_cached("SELECT sender, kind, urgency FROM referrals WHERE referral_id = ?")?
        .query_row(params![event.referral_id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    let Some((sender, referral_kind, urgency)) = held else {
        return Ok(());
    };
    let mut types = Vec::with_capacity(2);
    if event.kind == FeedbackKind::Escalated as i32 {
        types.push(EventType::ReferralEscalated);
    } else if event.kind == FeedbackKind::FollowUpOverdue as i32 {
        types.push(EventType::FollowUpOverdue);
    }
    if !with_new_referral {
        types.push(if sender == agency.as_str() {
            EventType::ReferralFeedback
        } else {
            EventType::ReferralUpdated
        });
    }
    if types.is_empty() {
        return Ok(());
    }
    let data = json!({
        "referral_id": event.referral_id,
        "event_id": event.event_id,
        "kind": kind_name(event.kind),
        "state": state_name(event.state_after),
        "actor_agency_id": event.actor_agency_id,
        "at": timestamp(event.at.as_ref()),
        "referral_kind": referral_kind,
        "urgency": urgency,
    });
    put(conn, &types, &event.referral_id, data)
}

/// An outbox row the broker refused for good: `request.rejected`, with the broker's reason, so
/// that a system learns an action it queued offline did not happen.
pub(crate) fn request_rejected(
    conn: &Connection,
    request_id: &str,
    reason: &str,
) -> Result<(), AdapterError> {
    let row: Option<(String, Option<String>)> = conn
        .prepare_cached("SELECT operation, referral_id FROM outbox WHERE request_id = ?")?
        .query_row(params![request_id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((operation, referral_id)) = row else {
        return Ok(());
    };
    let data = json!({
        "request_id": request_id,
        "operation": operation,
        "referral_id": referral_id,
        "reason": reason,
    });
    put(
        conn,
        &[EventType::RequestRejected],
        referral_id.as_deref().unwrap_or(""),
        data,
    )
}

/// Writes one message per endpoint subscribed to any of `types` (most specific first), typed with
/// the first it subscribed to. `referral_id` orders them (empty: each message on its own).
fn put(
    conn: &Connection,
    types: &[EventType],
    referral_id: &str,
    data: Value,
) -> Result<(), AdapterError> {
    let endpoints: Vec<(String, String)> = conn
        .prepare_cached("SELECT endpoint_id, event_types FROM webhook_endpoints")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let now = now_ms();
    for (endpoint_id, subscribed) in endpoints {
        // Written by `register` from a checked list; were one unreadable, it must not stop the
        // delivery it rides with from being stored (the broker would send it again and again).
        let subscribed: Vec<EventType> = serde_json::from_str(&subscribed).unwrap_or_default();
        let Some(event_type) = types.iter().find(|t| subscribed.contains(t)) else {
            continue;
        };
        let message_id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        let order_key = if referral_id.is_empty() {
            message_id.as_str()
        } else {
            referral_id
        };
        let payload = json!({
            "type": event_type,
            "timestamp": rfc3339(now),
            "data": data,
        });
        conn.prepare_cached(
            "INSERT INTO webhook_messages (message_id, endpoint_id, event_type, order_key, \
             payload, created_at, next_attempt_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        )?
        .execute(params![
            message_id,
            endpoint_id,
            event_type.as_str(),
            order_key,
            payload.to_string(),
            now
        ])?;
    }
    Ok(())
}
