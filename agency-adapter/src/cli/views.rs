//! `inbox`, `show`, `status` and `outbox`: read the local store only (they work offline) and print a
//! table, or with `--json` one JSON value on stdout.
//!
//! Everything in a table or in `show` was written by a person at some agency (notes, reasons, names,
//! the case file) and reaches this agency's terminal: it goes through [`shown`] first, so escape
//! sequences cannot drive the terminal and bidirectional controls cannot make text read differently
//! from what it says. `--json` needs none of this: JSON escapes control characters itself, and
//! whoever reads it gets the text exactly as it was written.
//!
//! A referral redirected away from this agency no longer carries its case file here (the store
//! removed it): `inbox` still lists it, marked as no longer with this agency, and `show` says when
//! the case file was withdrawn and where the referral went instead of printing an empty case file.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;
use serde_json::{Value, json};
use spean_domain::referral::is_bidi_control;
use spean_proto::v1::{Envelope, FeedbackEvent, feedback_event::Details, recipient::Target};

use super::{Context, ListArgs, print_json};
use crate::{
    case_file::CaseFile,
    referral::{
        age_band_name, is_closed, kind_name, next_action, sex_name, state_name, urgency_name,
    },
    store::{OutboxRow, ReferralRow, Withdrawal, timestamp},
};

#[derive(Serialize)]
struct InboxItem {
    referral_id: String,
    sender: String,
    recipient: String,
    kind: String,
    urgency: String,
    state: String,
    /// False once the referral was redirected away: `recipient` says where it is now.
    with_this_agency: bool,
    /// With this agency and not acknowledged yet: its deadline runs, or has passed.
    waiting_on_this_agency: bool,
    /// How many times the broker escalated it because nobody here acknowledged it in time.
    escalations: i64,
    name_km: String,
    name_latin: String,
    created_at: String,
    received_at: String,
}

/// The inbox: first what waits on this agency (referrals with it that nobody here has
/// acknowledged yet), the most escalated and then the oldest first, since those are the ones the
/// province and the coordinators already heard of; then the rest, newest first.
pub(super) async fn inbox(ctx: &Context, args: &ListArgs) -> anyhow::Result<()> {
    let rows = ctx.store.received().await?;
    let escalations = ctx.store.escalations().await?;
    let mut items: Vec<InboxItem> = rows
        .into_iter()
        .filter(|r| args.all || !is_closed(&r.state))
        .map(|r| {
            // A case file that does not decode still lists, without a name.
            let name = CaseFile::decode(&r.case_file).unwrap_or_default().name;
            let with_this_agency = r.recipient == ctx.me();
            InboxItem {
                waiting_on_this_agency: with_this_agency
                    && matches!(r.state.as_str(), "sent" | "delivered"),
                escalations: escalations.get(&r.referral_id).copied().unwrap_or(0),
                with_this_agency,
                referral_id: r.referral_id,
                sender: r.sender,
                recipient: r.recipient,
                kind: r.kind,
                urgency: r.urgency,
                state: r.state,
                name_km: name.khmer,
                name_latin: name.latin,
                created_at: r.created_at,
                received_at: r.received_at,
            }
        })
        .collect();
    // Stable: within each group the store's order (newest first) stays.
    items.sort_by(|a, b| {
        b.waiting_on_this_agency
            .cmp(&a.waiting_on_this_agency)
            .then_with(|| match a.waiting_on_this_agency {
                true => b
                    .escalations
                    .cmp(&a.escalations)
                    .then_with(|| a.created_at.cmp(&b.created_at)),
                false => std::cmp::Ordering::Equal,
            })
    });
    if args.json {
        return print_json(&items);
    }
    let mut table = table(&[
        "referral", "received", "from", "kind", "urgency", "state", "name",
    ]);
    for i in &items {
        let state = if i.waiting_on_this_agency && i.escalations > 0 {
            format!(
                "{}: to acknowledge, escalated {} time(s)",
                i.state, i.escalations
            )
        } else if i.waiting_on_this_agency {
            format!("{}: to acknowledge", i.state)
        } else if i.with_this_agency {
            i.state.clone()
        } else {
            format!("{} (no longer here: now with {})", i.state, i.recipient)
        };
        table.add_row(cells(vec![
            i.referral_id.clone(),
            i.received_at.clone(),
            i.sender.clone(),
            i.kind.clone(),
            i.urgency.clone(),
            state,
            [i.name_km.as_str(), i.name_latin.as_str()]
                .iter()
                .filter(|n| !n.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" / "),
        ]));
    }
    println!("{table}");
    Ok(())
}

pub(super) async fn show(ctx: &Context, id: &str, json_out: bool) -> anyhow::Result<()> {
    let Some(row) = ctx.store.referral(id).await? else {
        anyhow::bail!("NOT_FOUND: referral {id} is not in the local store");
    };
    let envelope = row.decode_envelope()?;
    let case_file = CaseFile::decode(&row.case_file)?;
    // Only an empty case file can have been withdrawn: one held again (the referral came back)
    // is shown as it is.
    let withdrawal = if row.case_file.is_empty() {
        ctx.store.withdrawal(id).await?
    } else {
        None
    };
    let history = ctx.store.history(id).await?;
    if json_out {
        let case_file = match &withdrawal {
            Some(_) => Value::Null,
            None => serde_json::to_value(&case_file)?,
        };
        return print_json(&json!({
            "referral": referral_json(&row, &envelope),
            "case_file": case_file,
            "case_file_withdrawn": withdrawal.as_ref().map(withdrawal_json),
            "history": history.iter().map(event_json).collect::<Vec<_>>(),
        }));
    }
    let referral = referral_json(&row, &envelope);
    println!("referral {}", shown(&row.referral_id, Lines::One));
    for key in [
        "state",
        "sender",
        "recipient",
        "kind",
        "urgency",
        "client_ref",
        "client_pseudonym",
        "created_at",
        "updated_at",
    ] {
        println!("  {key}: {}", plain(&referral[key]));
    }
    println!("  subject: {}", plain(&referral["subject"]));
    println!(
        "  requested_recipient: {}",
        plain(&referral["requested_recipient"])
    );
    println!("case file");
    if let Some(withdrawal) = &withdrawal {
        println!("  {}", withdrawn_line(withdrawal));
    } else if let Value::Object(fields) = serde_json::to_value(&case_file)? {
        for (key, value) in fields {
            // Free prose keeps its line breaks, indented under its key; every other value is one line.
            let value = match &value {
                Value::String(text) if MULTI_LINE_CASE_FIELDS.contains(&key.as_str()) => {
                    shown(text, Lines::Many).replace('\n', "\n    ")
                }
                other => plain(other),
            };
            println!("  {key}: {value}");
        }
    }
    println!("history");
    let mut table = table(&[
        "at",
        "kind",
        "actor",
        "person",
        "note",
        "state after",
        "details",
    ]);
    for event in &history {
        table.add_row(vec![
            shown(&timestamp(event.at.as_ref()), Lines::One),
            shown(&kind_name(event.kind), Lines::One),
            shown(&event.actor_agency_id, Lines::One),
            shown(&event.actor_person, Lines::One),
            shown(&event.note, Lines::Many),
            shown(&state_name(event.state_after), Lines::One),
            plain(&details_json(event)),
        ]);
    }
    println!("{table}");
    Ok(())
}

#[derive(Serialize)]
struct StatusItem {
    referral_id: String,
    client_ref: String,
    recipient: String,
    kind: String,
    urgency: String,
    state: String,
    next_action: String,
    updated_at: String,
}

#[derive(Serialize)]
struct OutboxItem {
    seq: i64,
    request_id: String,
    operation: String,
    referral_id: Option<String>,
    status: String,
    error: Option<String>,
    attempts: i64,
    created_at: String,
    sent_at: Option<String>,
}

impl From<OutboxRow> for OutboxItem {
    fn from(r: OutboxRow) -> Self {
        Self {
            seq: r.seq,
            request_id: r.request_id,
            operation: r.operation,
            referral_id: r.referral_id,
            status: r.status,
            error: r.error,
            attempts: r.attempts,
            created_at: r.created_at,
            sent_at: r.sent_at,
        }
    }
}

pub(super) async fn status(ctx: &Context, args: &ListArgs) -> anyhow::Result<()> {
    let referrals: Vec<StatusItem> = ctx
        .store
        .sent_by(ctx.me())
        .await?
        .into_iter()
        .filter(|r| args.all || !is_closed(&r.state))
        .map(|r| StatusItem {
            next_action: next_action(&r.state, &r.recipient),
            referral_id: r.referral_id,
            client_ref: r.client_ref,
            recipient: r.recipient,
            kind: r.kind,
            urgency: r.urgency,
            state: r.state,
            updated_at: r.updated_at,
        })
        .collect();
    let outbox: Vec<OutboxItem> = ctx
        .store
        .outbox()
        .await?
        .into_iter()
        .filter(|r| r.status != "sent")
        .map(OutboxItem::from)
        .collect();
    if args.json {
        return print_json(&json!({ "referrals": referrals, "outbox": outbox }));
    }
    let mut table = table(&[
        "referral", "to", "kind", "urgency", "state", "next", "updated",
    ]);
    for r in &referrals {
        table.add_row(cells(vec![
            r.referral_id.clone(),
            r.recipient.clone(),
            r.kind.clone(),
            r.urgency.clone(),
            r.state.clone(),
            r.next_action.clone(),
            r.updated_at.clone(),
        ]));
    }
    println!("{table}");
    if !outbox.is_empty() {
        println!("outbox (not sent)");
        println!("{}", outbox_table(&outbox));
    }
    Ok(())
}

pub(super) async fn outbox(ctx: &Context, json_out: bool) -> anyhow::Result<()> {
    let rows: Vec<OutboxItem> = ctx
        .store
        .outbox()
        .await?
        .into_iter()
        .map(OutboxItem::from)
        .collect();
    if json_out {
        return print_json(&rows);
    }
    println!("{}", outbox_table(&rows));
    Ok(())
}

fn outbox_table(rows: &[OutboxItem]) -> Table {
    let mut table = table(&[
        "seq",
        "request",
        "operation",
        "referral",
        "status",
        "tries",
        "error",
    ]);
    for r in rows {
        table.add_row(cells(vec![
            r.seq.to_string(),
            r.request_id.clone(),
            r.operation.clone(),
            r.referral_id.clone().unwrap_or_default(),
            r.status.clone(),
            r.attempts.to_string(),
            r.error.clone().unwrap_or_default(),
        ]));
    }
    table
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    table
}

/// What `show` prints in place of a withdrawn case file; the agency id came from the network.
fn withdrawn_line(withdrawal: &Withdrawal) -> String {
    format!(
        "withdrawn {} (the referral was {} to {}); this agency no longer holds the case file",
        shown(&withdrawal.withdrawn_at, Lines::One),
        shown(&withdrawal.because, Lines::One),
        shown(&withdrawal.now_with, Lines::One),
    )
}

fn withdrawal_json(withdrawal: &Withdrawal) -> Value {
    json!({
        "withdrawn_at": withdrawal.withdrawn_at,
        "now_with": withdrawal.now_with,
        "because": withdrawal.because,
    })
}

/// The case-file fields that are prose, whose line breaks `show` keeps.
const MULTI_LINE_CASE_FIELDS: [&str; 3] = ["reason_for_referral", "transport_needs", "notes"];

/// Whether a text may keep its line breaks when shown.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// A name, an id, a table cell that must stay one line: a line break could forge a line.
    One,
    /// A note: its line breaks are the writer's.
    Many,
}

/// `text` made safe for a terminal: control characters (but a line feed in [`Lines::Many`] text)
/// and bidirectional embeddings, overrides and isolates are replaced by a visible `\u{…}`, so
/// the reader sees that they were there. Everything else, Khmer with its combining marks and
/// U+200B ZERO WIDTH SPACE included, passes byte for byte.
pub fn shown(text: &str, lines: Lines) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let keep = c == '\n' && lines == Lines::Many;
        if !keep && (c.is_control() || is_bidi_control(c)) {
            out.push_str(&format!("\\u{{{:X}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// A table row with every cell made one safe line.
fn cells(row: Vec<String>) -> Vec<String> {
    row.iter().map(|cell| shown(cell, Lines::One)).collect()
}

/// A JSON value as a human reads it, on one line: strings bare (made [`shown`]), objects as
/// `key=value` pairs.
fn plain(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => shown(s, Lines::One),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", plain(v)))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join("; "),
        other => other.to_string(),
    }
}

/// The envelope fields by their proto names, plus `sender`/`recipient` as the listings name them and
/// the local `state`.
fn referral_json(row: &ReferralRow, envelope: &Envelope) -> Value {
    let subject = envelope.subject.clone().unwrap_or_default();
    let requested = match envelope
        .requested_recipient
        .as_ref()
        .and_then(|r| r.target.as_ref())
    {
        Some(Target::AgencyId(id)) => json!({ "agency_id": id }),
        Some(Target::Service(s)) => json!({ "service": s.service, "province": s.province }),
        None => Value::Null,
    };
    json!({
        "referral_id": row.referral_id,
        "client_ref": envelope.client_ref,
        "sender": row.sender,
        "recipient": row.recipient,
        "sender_agency_id": envelope.sender_agency_id,
        "recipient_agency_id": row.recipient,
        "requested_recipient": requested,
        "kind": envelope.kind,
        "urgency": urgency_name(envelope.urgency),
        "subject": {
            "sex": sex_name(subject.sex),
            "age_band": age_band_name(subject.age_band),
            "province": subject.province,
        },
        "client_pseudonym": envelope.client_pseudonym,
        "created_at": timestamp(envelope.created_at.as_ref()),
        "updated_at": row.updated_at,
        "state": row.state,
        "last_event_id": row.last_event_id,
    })
}

fn event_json(event: &FeedbackEvent) -> Value {
    json!({
        "event_id": event.event_id,
        "referral_id": event.referral_id,
        "kind": kind_name(event.kind),
        "actor_agency_id": event.actor_agency_id,
        "actor_person": event.actor_person,
        "at": timestamp(event.at.as_ref()),
        "note": event.note,
        "state_after": state_name(event.state_after),
        "details": details_json(event),
    })
}

/// The kind-specific details by their proto field names; `{}` for kinds without details.
fn details_json(event: &FeedbackEvent) -> Value {
    match &event.details {
        Some(Details::Accepted(a)) => {
            json!({ "planned_action": a.planned_action, "planned_date": a.planned_date })
        }
        Some(Details::Declined(d)) => {
            json!({ "reason_code": d.reason_code, "reason_text": d.reason_text })
        }
        Some(Details::Redirected(r)) => {
            json!({ "to_agency_id": r.to_agency_id, "reason": r.reason })
        }
        Some(Details::FollowUp(f)) => json!({ "activity": f.activity, "date": f.date }),
        Some(Details::Completed(o)) => {
            json!({ "outcome_code": o.outcome_code, "summary": o.summary })
        }
        Some(Details::Failed(f)) => json!({ "reason": f.reason }),
        Some(Details::Escalated(e)) => json!({ "tier": e.tier, "to_agency_ids": e.to_agency_ids }),
        None => json!({}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn khmer_is_shown_byte_for_byte() {
        for khmer in [
            "សុខ ស្រីល័ក្ខ",
            "គ្រួសារចាកចេញពីមន្ទីរពេទ្យ",
            "គ្រួសារ\u{200B}ចាកចេញ\u{200B}ពីមន្ទីរពេទ្យ\u{200F}",
        ] {
            assert_eq!(shown(khmer, Lines::One).as_bytes(), khmer.as_bytes());
        }
        let note = "ជួបគ្រួសារ\nនៅផ្ទះ";
        assert_eq!(shown(note, Lines::Many), note);
    }

    #[test]
    fn escapes_and_bidi_controls_are_shown_as_visible_escapes() {
        assert_eq!(
            shown("a\u{1b}[2Jb\u{202E}cd\u{2066}", Lines::Many),
            "a\\u{1B}[2Jb\\u{202E}cd\\u{2066}"
        );
        assert_eq!(shown("x\ry\tz", Lines::Many), "x\\u{D}y\\u{9}z");
        assert_eq!(
            shown("Sok\n  state: completed", Lines::One),
            "Sok\\u{A}  state: completed"
        );
        assert_eq!(plain(&json!({ "reason": "\u{9b}2J" })), "reason=\\u{9B}2J");
    }
}
