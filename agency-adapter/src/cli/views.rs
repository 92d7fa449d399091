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
//!
//! A referral this agency was only told of (a notified party) or makes the follow-up visits of (a
//! delegate) is held without its case file: `inbox` lists it marked so, and `show` prints, for a
//! delegate, the follow-up part of the case file its delegation carried, labelled as such. Both
//! say who makes the follow-up visits and when the next is due: `show` with the visits made and
//! missed, `inbox` first among what needs this agency when the visit is due or overdue.
//!
//! A broadcast ([`Broadcast`]) names no recipient until a candidate accepts. `show` lists its
//! candidates with each one's answer, who won, and, for a candidate that lost, that it was taken by
//! another agency; `inbox` lists it among what needs this agency while this agency is a candidate
//! that has not answered, and `status` tells the sender how far the candidates got, or that none
//! accepted and the referral waits on it to redirect or withdraw it.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;
use serde_json::{Value, json};
use spean_domain::referral::is_bidi_control;
use spean_proto::v1::{
    Envelope, FeedbackEvent, ReferralConsent, feedback_event::Details, recipient::Target,
};
use time::OffsetDateTime;

use super::{Context, ListArgs, print_json};
use crate::{
    broadcast::{Answer, Broadcast},
    case_file::{CaseFile, PersonName},
    figures::duration,
    follow_up::{self, Schedule, VisitStatus},
    referral::{
        age_band_name, giver_name, is_closed, kind_name, next_action, sex_name, sharing_name,
        state_name, urgency_name,
    },
    store::{OutboxRow, ReferralRow, Withdrawal, timestamp},
};

/// One referral of the inbox: `inbox --json`, and the API's inbox.
#[derive(Serialize, utoipa::ToSchema)]
pub struct InboxItem {
    pub referral_id: String,
    pub sender: String,
    pub recipient: String,
    pub kind: String,
    pub urgency: String,
    pub state: String,
    /// How this agency stands to it: `recipient`, `former_recipient`, `notified`, `delegate`,
    /// `candidate`.
    pub audience: String,
    /// False once the referral was redirected away, and for a referral this agency was only told
    /// of or makes the follow-up visits of: `recipient` says whose it is.
    pub with_this_agency: bool,
    /// With this agency and not acknowledged yet, or an open broadcast this agency is a candidate
    /// of and has not answered: its deadline runs, or has passed.
    pub waiting_on_this_agency: bool,
    /// A broadcast's candidates (empty for a referral sent to one agency).
    pub candidates: Vec<String>,
    /// The candidate that won a broadcast this agency was a candidate of and did not win: it can
    /// no longer act on it. `null` otherwise.
    pub taken_by: Option<String>,
    /// The state column's words for a candidate of a broadcast; not in the JSON, which has
    /// `candidates` and `taken_by`.
    #[serde(skip)]
    pub as_candidate: Option<String>,
    /// How many times the broker escalated it because nobody here acknowledged it in time.
    pub escalations: i64,
    /// The recipient delegated the follow-up visits to this agency, and has not taken them back.
    pub follow_up_delegated_here: bool,
    /// The next follow-up visit, when the visits are this agency's to make (it is the recipient
    /// and delegated none, or they are delegated to it) and one is scheduled; `null` otherwise.
    pub follow_up: Option<FollowUpDue>,
    pub name_km: String,
    pub name_latin: String,
    pub created_at: String,
    pub received_at: String,
}

/// The next follow-up visit this agency has to make.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FollowUpDue {
    /// `upcoming`, `due` or `overdue`.
    pub status: VisitStatus,
    pub next_due_at: String,
    /// How many visits of this referral were missed so far (FOLLOW_UP_OVERDUE events).
    pub missed: usize,
}

impl InboxItem {
    /// Where it stands in the inbox: what needs this agency now comes first (an escalated
    /// acknowledgement, an overdue visit, an acknowledgement, a due visit), then the rest.
    fn rank(&self) -> u8 {
        let visit = self.follow_up.as_ref().map(|f| f.status);
        match (self.waiting_on_this_agency, self.escalations > 0, visit) {
            (true, true, _) => 0,
            (_, _, Some(VisitStatus::Overdue)) => 1,
            (true, false, _) => 2,
            (_, _, Some(VisitStatus::Due)) => 3,
            _ => 4,
        }
    }

    /// Within its rank: the most escalated or most missed, then the oldest (or longest due) first;
    /// the rest keep the store's order (newest first).
    fn order_within_rank(&self, other: &Self) -> std::cmp::Ordering {
        let (mine, theirs) = (self.follow_up.as_ref(), other.follow_up.as_ref());
        match self.rank() {
            0 | 2 => other
                .escalations
                .cmp(&self.escalations)
                .then_with(|| self.created_at.cmp(&other.created_at)),
            1 | 3 => theirs
                .map(|f| f.missed)
                .cmp(&mine.map(|f| f.missed))
                .then_with(|| {
                    mine.map(|f| &f.next_due_at)
                        .cmp(&theirs.map(|f| &f.next_due_at))
                }),
            _ => std::cmp::Ordering::Equal,
        }
    }

    /// The state column: the state, and what this agency has to do about it or how it stands.
    fn state_cell(&self) -> String {
        let visit = match &self.follow_up {
            Some(f) if f.status.needs_a_visit() => format!(
                ", follow-up visit {} since {}{}",
                f.status.as_str(),
                f.next_due_at,
                if f.missed > 0 {
                    format!(", {} missed", f.missed)
                } else {
                    String::new()
                }
            ),
            _ => String::new(),
        };
        let to_do = match &self.as_candidate {
            Some(words) if self.waiting_on_this_agency => words.as_str(),
            _ => "to acknowledge",
        };
        if self.waiting_on_this_agency && self.escalations > 0 {
            format!(
                "{}: {to_do}, escalated {} time(s)",
                self.state, self.escalations
            )
        } else if self.waiting_on_this_agency {
            format!("{}: {to_do}", self.state)
        } else if let Some(words) = &self.as_candidate {
            format!("{} ({words})", self.state)
        } else if self.with_this_agency {
            format!("{}{visit}", self.state)
        } else {
            match self.audience.as_str() {
                _ if self.follow_up_delegated_here => format!(
                    "{} (follow-up delegated here by {}){visit}",
                    self.state, self.recipient
                ),
                "delegate" => format!(
                    "{} (follow-up taken back by {})",
                    self.state, self.recipient
                ),
                "notified" if self.recipient.is_empty() => format!(
                    "{} (notified; broadcast to {} candidates, none accepted yet)",
                    self.state,
                    self.candidates.len()
                ),
                "notified" => format!("{} (notified; with {})", self.state, self.recipient),
                _ => format!(
                    "{} (no longer here: now with {})",
                    self.state, self.recipient
                ),
            }
        }
    }
}

/// How this agency stands to a stored referral: by the envelope when it names this agency, else as
/// the broker's copy said, else (a copy from before audiences) a former recipient.
fn audience_of(row: &ReferralRow, me: &str) -> String {
    if row.sender == me {
        "sender".into()
    } else if row.recipient == me {
        "recipient".into()
    } else if matches!(row.audience.as_str(), "notified" | "delegate" | "candidate") {
        row.audience.clone()
    } else {
        "former_recipient".into()
    }
}

/// What an inbox line needs to know of a referral's follow-up visits when they are this agency's.
#[derive(Default)]
struct FollowUpHere {
    /// Delegated to this agency (rather than its own as recipient).
    delegated_here: bool,
    /// The next visit, if one is scheduled.
    due: Option<FollowUpDue>,
    /// The child's name, from the follow-up part delegated here: a delegate holds no case file.
    name: Option<PersonName>,
}

/// The follow-up visits of a referral, if they are this agency's. Only accepted referrals have
/// visits (and delegations), so only their history is read.
async fn follow_up_here(
    ctx: &Context,
    row: &ReferralRow,
    now: i64,
) -> anyhow::Result<FollowUpHere> {
    if !matches!(row.state.as_str(), "accepted" | "in_progress") {
        return Ok(FollowUpHere::default());
    }
    let history = ctx.store.history(&row.referral_id).await?;
    if !follow_up::follow_up_is_with(&history, &row.recipient, ctx.me()) {
        return Ok(FollowUpHere::default());
    }
    let schedule = Schedule::read(&history, &row.state, now);
    let due = schedule
        .status
        .zip(schedule.next_due_at)
        .map(|(status, next_due_at)| FollowUpDue {
            status,
            next_due_at,
            missed: schedule.missed.len(),
        });
    // A part that does not decode still lists, without a name.
    let name = follow_up::follow_up_part_for(&history, ctx.me())
        .and_then(|part| CaseFile::decode(part).ok())
        .map(|part| part.name);
    Ok(FollowUpHere {
        delegated_here: row.recipient != ctx.me(),
        due,
        name,
    })
}

async fn inbox_item(
    ctx: &Context,
    row: ReferralRow,
    escalations: i64,
    now: i64,
) -> anyhow::Result<InboxItem> {
    let here = follow_up_here(ctx, &row, now).await?;
    // A case file that does not decode still lists, without a name.
    let name = here
        .name
        .unwrap_or_else(|| CaseFile::decode(&row.case_file).unwrap_or_default().name);
    let with_this_agency = row.recipient == ctx.me();
    let envelope = row.decode_envelope()?;
    let broadcast = if envelope.candidate_agency_ids.is_empty() {
        None
    } else {
        Broadcast::read(&envelope, &ctx.store.history(&row.referral_id).await?)
    };
    let candidate = broadcast
        .as_ref()
        .filter(|b| !with_this_agency && b.is_candidate(ctx.me()));
    let to_answer = candidate.is_some_and(|b| {
        b.is_open() && !is_closed(&row.state) && b.answer_of(ctx.me()) == Some(Answer::None)
    });
    Ok(InboxItem {
        waiting_on_this_agency: (with_this_agency
            && matches!(row.state.as_str(), "sent" | "delivered"))
            || to_answer,
        taken_by: candidate.and_then(|b| b.taken_from(ctx.me()).map(str::to_owned)),
        as_candidate: candidate.map(|b| candidate_words(b, ctx.me())),
        candidates: envelope.candidate_agency_ids,
        escalations,
        with_this_agency,
        audience: audience_of(&row, ctx.me()),
        follow_up_delegated_here: here.delegated_here,
        follow_up: here.due,
        referral_id: row.referral_id,
        sender: row.sender,
        recipient: row.recipient,
        kind: row.kind,
        urgency: row.urgency,
        state: row.state,
        name_km: name.khmer,
        name_latin: name.latin,
        created_at: row.created_at,
        received_at: row.received_at,
    })
}

/// How a broadcast stands for `me`, one of its candidates that did not win it, in the inbox's
/// state column.
fn candidate_words(broadcast: &Broadcast, me: &str) -> String {
    if let Some(winner) = broadcast.taken_from(me) {
        return format!("taken by {winner}; no longer open to this agency");
    }
    if let Some(to) = &broadcast.redirected_to {
        return format!("sent on by its sender to {to}; no longer open to this agency");
    }
    let n = broadcast.candidates.len();
    match broadcast.answer_of(me) {
        Some(Answer::Acknowledged) => {
            format!("broadcast to {n} candidates: acknowledged here, to accept or decline")
        }
        Some(Answer::Declined) if broadcast.no_candidate_accepted => {
            "declined here; no candidate accepted".into()
        }
        Some(Answer::Declined) => "declined here; open to the other candidates".into(),
        _ => format!("broadcast to {n} candidates: to acknowledge, accept or decline"),
    }
}

/// The inbox: first what needs this agency now (referrals with it that nobody here has
/// acknowledged yet, and follow-up visits it has to make that are due or overdue), the escalated and
/// the overdue first, since those are the ones the province and the coordinators already heard of;
/// then the rest, newest first.
pub(super) async fn inbox(ctx: &Context, args: &ListArgs) -> anyhow::Result<()> {
    let items = inbox_items(ctx, args.all, &crate::audit::reader(None)).await?;
    if args.json {
        return print_json(&items);
    }
    let mut table = table(&[
        "referral", "received", "from", "kind", "urgency", "state", "name",
    ]);
    for i in &items {
        table.add_row(cells(vec![
            i.referral_id.clone(),
            i.received_at.clone(),
            i.sender.clone(),
            i.kind.clone(),
            i.urgency.clone(),
            i.state_cell(),
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

/// The inbox as `inbox` lists it (open referrals only unless `all`): each child's name shown is
/// a read of the case file, recorded for `reader` before the list is returned.
pub(crate) async fn inbox_items(
    ctx: &Context,
    all: bool,
    reader: &str,
) -> anyhow::Result<Vec<InboxItem>> {
    let rows = ctx.store.received().await?;
    let escalations = ctx.store.escalations().await?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut items = Vec::with_capacity(rows.len());
    for row in rows.into_iter().filter(|r| all || !is_closed(&r.state)) {
        let escalated = escalations.get(&row.referral_id).copied().unwrap_or(0);
        items.push(inbox_item(ctx, row, escalated, now).await?);
    }
    // Stable: within each group the store's order (newest first) stays.
    items.sort_by(|a, b| a.rank().cmp(&b.rank()).then_with(|| a.order_within_rank(b)));
    let named: Vec<String> = items
        .iter()
        .filter(|i| !i.name_km.is_empty() || !i.name_latin.is_empty())
        .map(|i| i.referral_id.clone())
        .collect();
    crate::audit::record_reads(&ctx.store, reader, &named, "name").await?;
    Ok(items)
}

/// The part of the case file `show` prints, and which part it is.
pub(crate) enum CaseFileShown {
    /// The whole case file: this agency sent or received the referral.
    Whole(CaseFile),
    /// The follow-up part a recipient delegated the visits here with.
    FollowUpPart { part: CaseFile, from: String },
    /// This agency held it (or its follow-up part) and removed it.
    Withdrawn(Withdrawal),
    /// Never shared with this agency (a notified party, a delegate not yet sent its part).
    NotShared,
}

impl CaseFileShown {
    /// The whole case file held here, else the follow-up part delegated here, else the record of
    /// its withdrawal, else nothing.
    async fn read(
        ctx: &Context,
        row: &ReferralRow,
        history: &[FeedbackEvent],
        audience: &str,
    ) -> anyhow::Result<Self> {
        if !row.case_file.is_empty() {
            return Ok(Self::Whole(CaseFile::decode(&row.case_file)?));
        }
        if let Some(part) = follow_up::follow_up_part_for(history, ctx.me()) {
            return Ok(Self::FollowUpPart {
                part: CaseFile::decode(part)?,
                from: row.recipient.clone(),
            });
        }
        if let Some(withdrawal) = ctx.store.withdrawal(&row.referral_id).await? {
            return Ok(Self::Withdrawn(withdrawal));
        }
        Ok(match audience {
            "sender" | "recipient" => Self::Whole(CaseFile::default()),
            _ => Self::NotShared,
        })
    }

    /// `case_file_part` in `show --json`.
    fn part_name(&self) -> Option<&'static str> {
        match self {
            Self::Whole(_) => Some("whole"),
            Self::FollowUpPart { .. } => Some("follow_up"),
            Self::Withdrawn(_) | Self::NotShared => None,
        }
    }

    pub(crate) fn case_file(&self) -> Option<&CaseFile> {
        match self {
            Self::Whole(case_file)
            | Self::FollowUpPart {
                part: case_file, ..
            } => Some(case_file),
            Self::Withdrawn(_) | Self::NotShared => None,
        }
    }

    fn print(&self) -> anyhow::Result<()> {
        match self {
            Self::Whole(_) => println!("case file"),
            Self::FollowUpPart { from, .. } => println!(
                "case file (follow-up part only: the follow-up visits were delegated here by {})",
                shown(from, Lines::One)
            ),
            Self::Withdrawn(withdrawal) => {
                println!("case file");
                println!("  {}", withdrawn_line(withdrawal));
            }
            Self::NotShared => {
                println!("case file");
                println!("  not shared with this agency");
            }
        }
        if let Some(case_file) = self.case_file() {
            print_case_file(case_file)?;
        }
        Ok(())
    }
}

fn print_case_file(case_file: &CaseFile) -> anyhow::Result<()> {
    for line in case_file_lines(case_file)? {
        println!("{line}");
    }
    Ok(())
}

/// The lines of `show`'s case file section, each field made [`shown`].
pub fn case_file_lines(case_file: &CaseFile) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    if let Value::Object(fields) = serde_json::to_value(case_file)? {
        for (key, value) in fields {
            // Free prose keeps its line breaks, indented under its key; every other value is one line.
            let value = match &value {
                Value::String(text) if MULTI_LINE_CASE_FIELDS.contains(&key.as_str()) => {
                    shown(text, Lines::Many).replace('\n', "\n    ")
                }
                other => plain(other),
            };
            lines.push(format!("  {key}: {value}"));
        }
    }
    Ok(lines)
}

/// The agency the follow-up visits are delegated to now, when this agency may know it.
fn delegated_to(history: &[FeedbackEvent]) -> Option<String> {
    follow_up::active_delegation(history)
        .and_then(follow_up::delegated_to)
        .map(|d| d.to_agency_id.clone())
}

pub(super) async fn show(
    ctx: &Context,
    id: &str,
    json_out: bool,
    by: Option<&str>,
) -> anyhow::Result<()> {
    let shown = Shown::read(ctx, id, &crate::audit::reader(by)).await?;
    if json_out {
        return print_json(&shown.json(ctx.me()));
    }
    shown.print(ctx.me())
}

/// One referral as `show` and the API show it: read from the store, its read of the case file
/// recorded in the audit log before anything is shown.
pub(crate) struct Shown {
    pub(crate) row: ReferralRow,
    pub(crate) envelope: Envelope,
    pub(crate) history: Vec<FeedbackEvent>,
    pub(crate) audience: String,
    pub(crate) case_file: CaseFileShown,
    pub(crate) schedule: Schedule,
    pub(crate) delegated_to: Option<String>,
    pub(crate) broadcast: Option<Broadcast>,
}

impl Shown {
    pub(crate) async fn read(ctx: &Context, id: &str, reader: &str) -> anyhow::Result<Self> {
        let Some(row) = ctx.store.referral(id).await? else {
            return Err(crate::AdapterError::NotFound {
                what: "referral",
                id: id.to_owned(),
            }
            .into());
        };
        let envelope = row.decode_envelope()?;
        let history = ctx.store.history(id).await?;
        let audience = audience_of(&row, ctx.me());
        let case_file = CaseFileShown::read(ctx, &row, &history, &audience).await?;
        // Recorded before anything is shown: no read without its audit entry.
        let part = case_file.part_name().unwrap_or("none");
        crate::audit::record_read(&ctx.store, reader, id, part).await?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let schedule = Schedule::read(&history, &row.state, now);
        let delegated_to = delegated_to(&history);
        let broadcast = Broadcast::read(&envelope, &history);
        Ok(Self {
            row,
            envelope,
            history,
            audience,
            case_file,
            schedule,
            delegated_to,
            broadcast,
        })
    }

    /// `show --json`.
    pub(crate) fn json(&self, me: &str) -> Value {
        let (row, envelope, broadcast) = (&self.row, &self.envelope, &self.broadcast);
        let withdrawn = match &self.case_file {
            CaseFileShown::Withdrawn(withdrawal) => Some(withdrawal_json(withdrawal)),
            _ => None,
        };
        json!({
            "referral": referral_json(row, envelope),
            "audience": self.audience,
            "candidates": broadcast.as_ref().map_or(&[][..], |b| b.candidates.as_slice()),
            "won_by": broadcast.as_ref().and_then(|b| b.winner.as_deref()),
            "taken_by": broadcast.as_ref().and_then(|b| b.taken_from(me)),
            "no_candidate_accepted": broadcast.as_ref().is_some_and(|b| b.no_candidate_accepted),
            "notified_agency_ids": envelope.notified_agency_ids,
            "follows_referral_id": envelope.follows_referral_id,
            "consent": consent_json(envelope.consent.as_ref()),
            "case_file": self.case_file.case_file(),
            "case_file_part": self.case_file.part_name(),
            "case_file_withdrawn": withdrawn,
            "delegated_to": self.delegated_to,
            "schedule": self.schedule,
            "history": self.history.iter().map(event_json).collect::<Vec<_>>(),
        })
    }

    fn print(&self, me: &str) -> anyhow::Result<()> {
        let Self {
            row,
            envelope,
            history,
            audience,
            case_file,
            schedule,
            delegated_to,
            broadcast,
        } = self;
        print_referral(row, envelope, audience);
        if let Some(broadcast) = broadcast {
            print_broadcast(broadcast, row, me, audience);
        }
        case_file.print()?;
        print_follow_up(delegated_to.as_deref(), schedule);
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
        for event in history {
            table.add_row(history_row(event));
        }
        println!("{table}");
        Ok(())
    }
}

/// One event as a row of `show`'s history table, every cell made [`shown`].
pub fn history_row(event: &FeedbackEvent) -> Vec<String> {
    vec![
        shown(&timestamp(event.at.as_ref()), Lines::One),
        shown(&kind_name(event.kind), Lines::One),
        shown(&event.actor_agency_id, Lines::One),
        shown(&event.actor_person, Lines::One),
        shown(&event.note, Lines::Many),
        shown(&state_name(event.state_after), Lines::One),
        plain(&details_json(event)),
    ]
}

fn print_referral(row: &ReferralRow, envelope: &Envelope, audience: &str) {
    let referral = referral_json(row, envelope);
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
        let value = match &referral[key] {
            // An open broadcast names no recipient yet.
            Value::String(empty) if key == "recipient" && empty.is_empty() => "-".to_owned(),
            value => plain(value),
        };
        println!("  {key}: {value}");
    }
    println!("  subject: {}", plain(&referral["subject"]));
    println!(
        "  requested_recipient: {}",
        plain(&referral["requested_recipient"])
    );
    println!("  this agency: {}", shown(audience, Lines::One));
    println!("  consent: {}", consent_line(envelope.consent.as_ref()));
    if !envelope.follows_referral_id.is_empty() {
        println!(
            "  follows: {}",
            shown(&envelope.follows_referral_id, Lines::One)
        );
    }
    // Everybody who holds the envelope sees whom the sender asked to be told of it.
    if !envelope.notified_agency_ids.is_empty() {
        println!(
            "  notified: {}",
            shown(&envelope.notified_agency_ids.join(", "), Lines::One)
        );
    }
}

/// The broadcast section of `show`: each candidate's answer, who won, and what the one reading
/// can still do about it.
fn print_broadcast(broadcast: &Broadcast, row: &ReferralRow, me: &str, audience: &str) {
    println!("broadcast");
    for candidate in &broadcast.candidates {
        let answer = match (candidate.answer, &candidate.reason_code) {
            (Answer::None, _) => "no answer".to_owned(),
            (Answer::Declined, Some(code)) => format!("declined ({code})"),
            (answer, _) => answer.as_str().to_owned(),
        };
        let here = if candidate.agency_id == me {
            " (this agency)"
        } else {
            ""
        };
        println!(
            "  candidate {}{here}: {}",
            shown(&candidate.agency_id, Lines::One),
            shown(&answer, Lines::One)
        );
    }
    match (&broadcast.winner, &broadcast.redirected_to) {
        (Some(winner), _) => println!("  won by: {}", shown(winner, Lines::One)),
        (None, Some(to)) => println!(
            "  sent on by its sender to {} instead; no longer open to the candidates",
            shown(to, Lines::One)
        ),
        (None, None) => println!("  won by: - (no candidate has accepted)"),
    }
    if let Some(winner) = broadcast.taken_from(me) {
        println!(
            "  taken by another agency: {}; this agency can no longer act on this referral",
            shown(winner, Lines::One)
        );
    }
    let still_open = broadcast.is_open() && !is_closed(&row.state);
    if broadcast.no_candidate_accepted && still_open {
        if audience == "sender" {
            let id = shown(&row.referral_id, Lines::One);
            println!(
                "  no candidate accepted: every candidate declined. Send it to one agency with \
                 `spean-adapter redirect {id} --to AGENCY --reason TEXT`, or withdraw it with \
                 `spean-adapter withdraw {id}`"
            );
        } else {
            println!(
                "  no candidate accepted: every candidate declined; its sender may send it to one \
                 agency or withdraw it"
            );
        }
    }
}

/// The follow-up section of `show`: who makes the visits, the next one and its status, the visits
/// made and those missed.
fn print_follow_up(delegated_to: Option<&str>, schedule: &Schedule) {
    println!("follow-up");
    println!(
        "  delegated to: {}",
        delegated_to.map_or_else(|| "-".into(), |to| shown(to, Lines::One))
    );
    match (&schedule.next_due_at, schedule.status) {
        (Some(due_at), Some(status)) => println!(
            "  next visit: {} ({}; every {}, grace {})",
            shown(due_at, Lines::One),
            status.as_str(),
            duration(schedule.every_seconds.map(u64::from)),
            duration(schedule.grace_seconds.map(u64::from)),
        ),
        _ => println!("  next visit: -"),
    }
    if !schedule.visits.is_empty() {
        let mut visits = table(&["visit date", "activity", "agency", "person"]);
        for v in &schedule.visits {
            visits.add_row(cells(vec![
                v.date.clone(),
                v.activity.clone(),
                v.agency.clone(),
                v.person.clone(),
            ]));
        }
        println!("  visits done\n{visits}");
    }
    if !schedule.missed.is_empty() {
        let mut missed = table(&["due", "missed in a row", "agency"]);
        for m in &schedule.missed {
            missed.add_row(cells(vec![
                m.due_at.clone(),
                m.missed_in_a_row.to_string(),
                m.agency.clone(),
            ]));
        }
        println!("  visits missed\n{missed}");
    }
}

/// One referral this agency sent: `status --json`, and the API's list of what was sent.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StatusItem {
    pub referral_id: String,
    pub client_ref: String,
    pub recipient: String,
    pub kind: String,
    pub urgency: String,
    pub state: String,
    /// Who acts next; for an open broadcast, how far its candidates got, or that none accepted
    /// and the sender has to redirect or withdraw it.
    pub next_action: String,
    /// A broadcast's candidates (empty for a referral sent to one agency).
    pub candidates: Vec<String>,
    /// The broker recorded that every candidate of this broadcast declined it.
    pub no_candidate_accepted: bool,
    pub updated_at: String,
}

/// One outbox row: `outbox --json`, and the API's outbox.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OutboxItem {
    pub seq: i64,
    pub request_id: String,
    pub operation: String,
    pub referral_id: Option<String>,
    pub status: String,
    pub error: Option<String>,
    pub attempts: i64,
    pub created_at: String,
    pub sent_at: Option<String>,
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

/// What this agency sent (open ones unless `all`), newest first, and who acts next on each.
pub(crate) async fn status_items(ctx: &Context, all: bool) -> anyhow::Result<Vec<StatusItem>> {
    let mut referrals: Vec<StatusItem> = Vec::new();
    for r in ctx
        .store
        .sent_by(ctx.me())
        .await?
        .into_iter()
        .filter(|r| all || !is_closed(&r.state))
    {
        let envelope = r.decode_envelope()?;
        // Only a broadcast needs its history here: how its candidates answered.
        let broadcast = if envelope.candidate_agency_ids.is_empty() {
            None
        } else {
            Broadcast::read(&envelope, &ctx.store.history(&r.referral_id).await?)
        };
        let open_broadcast = broadcast
            .as_ref()
            .filter(|_| !is_closed(&r.state))
            .and_then(Broadcast::sender_next);
        referrals.push(StatusItem {
            next_action: open_broadcast.unwrap_or_else(|| next_action(&r.state, &r.recipient)),
            no_candidate_accepted: broadcast.as_ref().is_some_and(|b| b.no_candidate_accepted),
            candidates: envelope.candidate_agency_ids,
            referral_id: r.referral_id,
            client_ref: r.client_ref,
            recipient: r.recipient,
            kind: r.kind,
            urgency: r.urgency,
            state: r.state,
            updated_at: r.updated_at,
        });
    }
    Ok(referrals)
}

pub(super) async fn status(ctx: &Context, args: &ListArgs) -> anyhow::Result<()> {
    let referrals = status_items(ctx, args.all).await?;
    let outbox: Vec<OutboxItem> = outbox_items(ctx)
        .await?
        .into_iter()
        .filter(|r| r.status != "sent")
        .collect();
    if args.json {
        return print_json(&json!({ "referrals": referrals, "outbox": outbox }));
    }
    let mut table = table(&[
        "referral", "to", "kind", "urgency", "state", "next", "updated",
    ]);
    for r in &referrals {
        let to = if r.recipient.is_empty() && !r.candidates.is_empty() {
            format!("broadcast: {}", r.candidates.join(", "))
        } else {
            r.recipient.clone()
        };
        table.add_row(cells(vec![
            r.referral_id.clone(),
            to,
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

/// Every outbox row, oldest first.
pub(crate) async fn outbox_items(ctx: &Context) -> anyhow::Result<Vec<OutboxItem>> {
    Ok(ctx
        .store
        .outbox()
        .await?
        .into_iter()
        .map(OutboxItem::from)
        .collect())
}

pub(super) async fn outbox(ctx: &Context, json_out: bool) -> anyhow::Result<()> {
    let rows = outbox_items(ctx).await?;
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

pub(super) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    table
}

/// What `show` prints in place of a withdrawn case file; the agency id came from the network.
fn withdrawn_line(withdrawal: &Withdrawal) -> String {
    let at = shown(&withdrawal.withdrawn_at, Lines::One);
    let now_with = shown(&withdrawal.now_with, Lines::One);
    match withdrawal.because.as_str() {
        "retention" => format!(
            "purged {at} by retention: the referral was closed longer than this agency keeps \
             case files (setting retention.closed_case_files_for); the envelope and the \
             history's kinds and times remain"
        ),
        "consent_withdrawn" => format!(
            "deleted {at}: consent was withdrawn; the envelope and the history's kinds and times \
             are kept"
        ),
        "delegation_revoked" => format!(
            "withdrawn {at} (the follow-up visits were taken back by {now_with}); this agency no \
             longer holds the follow-up part of the case file"
        ),
        because => format!(
            "withdrawn {at} (the referral was {} to {now_with}); this agency no longer holds the \
             case file",
            shown(because, Lines::One),
        ),
    }
}

fn withdrawal_json(withdrawal: &Withdrawal) -> Value {
    json!({
        "withdrawn_at": withdrawal.withdrawn_at,
        "now_with": withdrawal.now_with,
        "because": withdrawal.because,
    })
}

/// A referral's consent as `show --json` prints it; `null` for one sent before consent was
/// recorded.
fn consent_json(consent: Option<&ReferralConsent>) -> Value {
    match consent {
        None => Value::Null,
        Some(c) if !c.emergency_exception.is_empty() => {
            json!({ "emergency_exception": c.emergency_exception })
        }
        Some(c) => json!({
            "given_by": giver_name(c.given_by),
            "given_at": timestamp(c.given_at.as_ref()),
            "sharing": c.sharing.iter().map(|s| sharing_name(*s)).collect::<Vec<_>>(),
        }),
    }
}

/// A referral's consent in one line of `show`.
pub(crate) fn consent_line(consent: Option<&ReferralConsent>) -> String {
    match consent {
        None => "not recorded (sent before consent was required)".to_owned(),
        Some(c) if !c.emergency_exception.is_empty() => format!(
            "none: emergency exception ({})",
            shown(&c.emergency_exception, Lines::One)
        ),
        Some(c) => format!(
            "given by the {} {}, for {}",
            giver_name(c.given_by),
            timestamp(c.given_at.as_ref()),
            c.sharing
                .iter()
                .map(|s| sharing_name(*s))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
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
pub(super) fn cells(row: Vec<String>) -> Vec<String> {
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
/// `client PSEUDONYM`: the referrals this agency sent or received about one client, and their
/// events merged into one history, oldest first, each event naming its referral.
pub async fn client(ctx: &Context, pseudonym: &str, json: bool) -> anyhow::Result<()> {
    let rows = ctx.store.about_client(ctx.me(), pseudonym).await?;
    let mut referrals = Vec::with_capacity(rows.len());
    let mut history: Vec<FeedbackEvent> = Vec::new();
    for row in &rows {
        let envelope = row.decode_envelope()?;
        referrals.push(referral_json(row, &envelope));
        history.extend(ctx.store.history(&row.referral_id).await?);
    }
    // Event ids are UUIDv7: their order is the order in time, across referrals.
    history.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    // Every note of the client's referrals is shown: recorded before printing, one entry each.
    let ids: Vec<String> = rows.iter().map(|r| r.referral_id.clone()).collect();
    crate::audit::record_reads(&ctx.store, &crate::audit::reader(None), &ids, "history").await?;
    if json {
        return print_json(&json!({
            "client_pseudonym": pseudonym,
            "referrals": referrals,
            "history": history.iter().map(event_json).collect::<Vec<_>>(),
        }));
    }
    if rows.is_empty() {
        println!("no referral about {} here", shown(pseudonym, Lines::One));
        return Ok(());
    }
    // Which referral follows which (story 5), before the merged history.
    let mut links = table(&["referral", "kind", "state", "follows"]);
    for row in &rows {
        let follows = row.decode_envelope()?.follows_referral_id;
        links.add_row(cells(vec![
            row.referral_id.clone(),
            row.kind.clone(),
            row.state.clone(),
            if follows.is_empty() {
                "-".to_owned()
            } else {
                follows
            },
        ]));
    }
    println!("{links}");
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["at", "referral", "kind", "event", "by"]);
    for event in &history {
        let kind = rows
            .iter()
            .find(|r| r.referral_id == event.referral_id)
            .map_or("", |r| r.kind.as_str());
        table.add_row([
            timestamp(event.at.as_ref()),
            event.referral_id.clone(),
            kind.to_owned(),
            kind_name(event.kind).to_owned(),
            shown(
                &format!("{} {}", event.actor_agency_id, event.actor_person),
                Lines::One,
            ),
        ]);
    }
    println!("{table}");
    Ok(())
}

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
        "candidate_agency_ids": envelope.candidate_agency_ids,
        "notified_agency_ids": envelope.notified_agency_ids,
        "follows_referral_id": envelope.follows_referral_id,
        "created_at": timestamp(envelope.created_at.as_ref()),
        "updated_at": row.updated_at,
        "state": row.state,
        "last_event_id": row.last_event_id,
    })
}

/// One event as `show --json` and `client --json` print it.
pub fn event_json(event: &FeedbackEvent) -> Value {
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
        "next_visit": event.next_visit.as_ref().map(|n| json!({
            "due_at": timestamp(n.due_at.as_ref()),
            "grace_seconds": n.grace_seconds,
            "every_seconds": n.every_seconds,
        })),
    })
}

/// The kind-specific details by their proto field names; `{}` for kinds without details.
pub(crate) fn details_json(event: &FeedbackEvent) -> Value {
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
        Some(Details::FollowUpOverdue(m)) => json!({
            "due_at": timestamp(m.due_at.as_ref()),
            "missed_in_a_row": m.missed_in_a_row,
        }),
        // The follow-up part itself is `show`'s case file section, never a detail: only whether
        // this copy of the event still carries one.
        Some(Details::Delegated(d)) => json!({
            "to_agency_id": d.to_agency_id,
            "reason": d.reason,
            "carries_follow_up_part": !d.follow_up_case_file.is_empty(),
        }),
        Some(Details::DelegationRevoked(d)) => json!({ "to_agency_id": d.to_agency_id }),
        Some(Details::ConsentWithdrawn(w)) => json!({
            "withdrawn_by": giver_name(w.withdrawn_by),
            "withdrawn_at": timestamp(w.withdrawn_at.as_ref()),
        }),
        Some(Details::EmergencyException(e)) => json!({ "emergency_exception": e.reason }),
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
