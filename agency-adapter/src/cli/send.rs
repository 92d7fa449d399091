//! `send` and the feedback actions. Each writes its request to the outbox first, then tries the broker
//! once: sent → stored and printed; refused → the row is `rejected` and the command fails; broker
//! unreachable → the row stays `pending` for the daemon and the command still succeeds.
//!
//! Run again with the same key and the same content, a command reports where the first run's row
//! stands (`sent`, or still `pending`) and does not queue twice; a row the broker refused stays
//! refused. The same key with other content is an error naming the key's field.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use clap::{Args, Subcommand};
use serde::Serialize;
use spean_domain::ids::{AgencyId, ClientRef, ProvinceCode, ReferralId, RequestId};
use spean_proto::v1::{
    AcceptRequest, Acceptance, AcknowledgeRequest, Action, AgeBand, CompleteRequest, Decline,
    DeclineRequest, DelegateFollowUpRequest, Delegation, Envelope, FailRequest, Failure, FollowUp,
    MarkEnteredInErrorRequest, MarkInProgressRequest, Outcome as OutcomeDetails, Recipient,
    RecordFollowUpRequest, Redirect, RedirectRequest, RevokeDelegationRequest, ServiceInProvince,
    Sex, Subject, SubmitRequest, Urgency, WithdrawConsentRequest, WithdrawRequest,
    recipient::Target,
};

use super::consent::{self, ConsentArgs, GiverArg};
use super::{ActionArgs, AgeBandArg, Context, SexArg, UrgencyArg, print_json};
use crate::{
    AdapterError,
    broker::Broker,
    case_file::CaseFile,
    directory,
    outbox::{self, Outcome, OutgoingRequest},
    referral::{key_or_new, kind_name, state_name},
    store::OutboxRow,
};

#[derive(Debug, Args)]
pub struct SendArgs {
    /// The recipient agency id.
    #[arg(long, value_name = "AGENCY", required_unless_present = "service", conflicts_with_all = ["service", "province"])]
    pub to: Option<String>,
    /// A service kind, resolved by the broker in --province.
    #[arg(long, value_name = "KIND", requires = "province")]
    pub service: Option<String>,
    /// The province code for --service.
    #[arg(long, value_name = "CODE", requires = "service")]
    pub province: Option<String>,
    /// With --service: send it to every agency offering the service in the province at once; the
    /// first to accept becomes the recipient [default for kind `placement`].
    #[arg(long, conflicts_with_all = ["to", "one"])]
    pub broadcast: bool,
    /// With --service: send it to the first agency offering the service in the province only
    /// [default for every kind but `placement`].
    #[arg(long, conflicts_with = "to")]
    pub one: bool,
    /// An agency to tell of the referral (repeatable): it sees the envelope and every change of
    /// state, never the case file or notes, and cannot act on it.
    #[arg(long = "notify", value_name = "AGENCY")]
    pub notify: Vec<String>,
    /// A referral this agency sent, about the same client, that this one follows (with the same
    /// --pseudonym, if that one has one).
    #[arg(long, value_name = "REFERRAL_ID")]
    pub follows: Option<String>,
    /// The referral kind from the taxonomy.
    #[arg(long, value_name = "KIND")]
    pub kind: String,
    #[arg(long, value_enum)]
    pub urgency: UrgencyArg,
    #[arg(long, value_enum, default_value = "unknown")]
    pub sex: SexArg,
    #[arg(long, value_enum, default_value = "unknown")]
    pub age_band: AgeBandArg,
    /// Two-digit province code where the subject lives [default: --province with --service; with
    /// --to, the recipient's province if the broker's directory lists only one for it].
    #[arg(long, value_name = "CODE")]
    pub subject_province: Option<String>,
    /// The idempotency key [default: a new UUIDv7].
    #[arg(long, value_name = "REF")]
    pub client_ref: Option<String>,
    /// A pseudonymous reference linking referrals about one person without naming them.
    #[arg(long, value_name = "REF")]
    pub pseudonym: Option<String>,
    /// A JSON file with the case file fields.
    #[arg(long, value_name = "FILE")]
    pub case_file: Option<PathBuf>,
    /// The subject's name in Khmer (overrides the file).
    #[arg(long, value_name = "TEXT")]
    pub name_km: Option<String>,
    /// The subject's name in Latin letters (overrides the file).
    #[arg(long, value_name = "TEXT")]
    pub name_latin: Option<String>,
    /// The reason for referral (overrides the file).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Notes (override the file).
    #[arg(long, value_name = "TEXT")]
    pub notes: Option<String>,
    /// The case file itself, as the API takes it (the command line reads --case-file).
    #[arg(skip)]
    pub case_file_inline: Option<crate::case_file::Given>,
    #[command(flatten)]
    pub consent: ConsentArgs,
    /// Only write the referral to the outbox; the daemon sends it.
    #[arg(long)]
    pub queue_only: bool,
    #[arg(long)]
    pub json: bool,
}

/// How a request left this command.
enum Sending {
    Sent(Box<Outcome>),
    /// The same request (same key and content) went through before, from an earlier run or from the
    /// daemon: its result is already in the local store, and it is not sent again.
    AlreadySent(OutboxRow),
    /// Still pending in the outbox, with why it did not go now.
    Queued(String),
}

impl Sending {
    /// `sent` or `queued`, as the JSON answers say.
    fn status(&self) -> &'static str {
        match self {
            Self::Sent(_) | Self::AlreadySent(_) => "sent",
            Self::Queued(_) => "queued",
        }
    }

    fn queued_because(&self) -> Option<String> {
        match self {
            Self::Queued(why) => Some(why.clone()),
            _ => None,
        }
    }
}

/// Outbox first, then one try, on `broker` if the command is already connected. A key already in the
/// outbox with the same content reports that row as it stands instead of queuing again; with other
/// content it is refused by the store.
///
/// Requests about the same referral queued earlier and still pending (made offline) go first, in
/// order: a referral's actions reach the broker in the order they were made, whether the daemon or
/// a command sends them.
async fn enqueue_and_try(
    ctx: &Context,
    request: OutgoingRequest,
    queue_only: Option<&str>,
    broker: Option<Broker>,
) -> Result<Sending, AdapterError> {
    let request_id = request.request_id().to_owned();
    let request_id = request_id.as_str();
    request.enqueue(&ctx.store).await?;
    let row = ctx
        .store
        .outbox_row(request_id)
        .await?
        .ok_or_else(|| AdapterError::NotFound {
            what: "outbox request",
            id: request_id.to_owned(),
        })?;
    match row.status.as_str() {
        "sent" => return Ok(Sending::AlreadySent(row)),
        "rejected" => {
            return Err(AdapterError::RefusedBefore {
                field: request.key_field(),
                key: request_id.to_owned(),
                reason: row
                    .error
                    .clone()
                    .unwrap_or_else(|| "no reason recorded".into()),
            });
        }
        _ => {}
    }
    if let Some(why) = queue_only {
        return Ok(Sending::Queued(why.to_owned()));
    }
    if broker.is_none()
        && let Some(since) = ctx.store.link_down_since().await?
    {
        return Ok(Sending::Queued(format!(
            "the daemon finds the broker out of reach since {since}"
        )));
    }
    let connected = match broker {
        Some(broker) => Ok(broker),
        None => Broker::connect(&ctx.settings.broker, &ctx.identity).await,
    };
    let mut broker = match connected {
        Ok(broker) => broker,
        Err(error @ AdapterError::Unavailable(_)) => {
            ctx.store
                .note_failed_attempt(request_id, &error.to_string())
                .await?;
            return Ok(Sending::Queued(error.to_string()));
        }
        Err(error) => return Err(error),
    };
    if let Some(referral_id) = request.referral_id() {
        for earlier in ctx.store.pending_before(referral_id, row.seq).await? {
            match outbox::send_row(&ctx.store, &mut broker, &earlier).await {
                Err(error) if error.is_transient() => {
                    return Ok(Sending::Queued(format!(
                        "an earlier request about this referral is not sent yet: {error}"
                    )));
                }
                // Sent; or refused, or unsendable from here: that request's outcome is the
                // user's to see (`outbox`, `status`), and this one is judged on its own.
                _ => {}
            }
        }
    }
    match outbox::send(&ctx.store, &mut broker, request).await {
        Ok(outcome) => Ok(Sending::Sent(Box::new(outcome))),
        Err(error) if error.is_transient() => Ok(Sending::Queued(error.to_string())),
        Err(error) => Err(error),
    }
}

fn announce(key: &str, sending: &Sending) {
    match sending {
        Sending::Queued(why) => {
            eprintln!("{key}: not sent now ({why}); it is queued and the daemon will send it");
        }
        Sending::AlreadySent(_) => {
            eprintln!("{key}: this request was sent before; it is not sent again");
        }
        Sending::Sent(_) => {}
    }
}

/// What became of a referral sent: `send --json`, and the API's answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Submitted {
    /// The idempotency key it went under.
    pub client_ref: String,
    /// The broker's id for it; `null` while it is queued.
    pub referral_id: Option<String>,
    /// `sent` (the broker recorded it, now or before) or `queued` (the daemon sends it when the
    /// broker can be reached).
    pub status: &'static str,
    /// Why it did not go now, while queued.
    pub queued_because: Option<String>,
    /// True when this key was sent before: nothing new was sent.
    pub replayed: bool,
    /// Empty for a broadcast until a candidate accepts, and while it is queued.
    pub recipient_agency_id: String,
    pub candidate_agency_ids: Vec<String>,
    pub notified_agency_ids: Vec<String>,
    pub follows_referral_id: String,
}

/// What became of a feedback action: `--json` of each action, and the API's answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Acted {
    pub request_id: String,
    pub referral_id: String,
    /// The operation, e.g. `acknowledge`.
    pub operation: &'static str,
    /// `sent` or `queued`, as for [`Submitted`].
    pub status: &'static str,
    pub queued_because: Option<String>,
    pub replayed: bool,
    /// The event the broker recorded, when it was sent now. A request sent before reports `sent`
    /// without its event: the event is in the referral's history, and the outbox does not record
    /// which event answered it.
    pub event_id: Option<String>,
    pub kind: Option<String>,
    pub state: Option<String>,
}

pub(super) async fn send(ctx: &Context, args: SendArgs) -> anyhow::Result<()> {
    let json_out = args.json;
    let queue_only = args.queue_only.then_some("--queue-only");
    let submitted = submit(ctx, args, queue_only).await?;
    if json_out {
        return print_json(&submitted);
    }
    match &submitted.referral_id {
        Some(id) => println!("{id}"),
        None => println!("{} queued", submitted.client_ref),
    }
    Ok(())
}

/// Sends a referral: checks it, writes it to the outbox, and (unless `queue_only` says why not)
/// tries the broker once.
pub(crate) async fn submit(
    ctx: &Context,
    args: SendArgs,
    queue_only: Option<&str>,
) -> anyhow::Result<Submitted> {
    // Parse errors go through `AdapterError` so that they read `invalid <field>: <reason>`.
    let client_ref = key_or_new(args.client_ref.as_deref(), |raw| {
        ClientRef::parse("client_ref", raw)
    })
    .map_err(AdapterError::from)?;
    let (recipient, to) = match (&args.to, &args.service, &args.province) {
        (Some(to), _, _) => {
            let to = AgencyId::parse("to", to).map_err(AdapterError::from)?;
            (Target::AgencyId(to.to_string()), Some(to))
        }
        (None, Some(service), Some(province)) => {
            let service = ServiceInProvince {
                service: service.clone(),
                province: ProvinceCode::parse("province", province)
                    .map_err(AdapterError::from)?
                    .to_string(),
            };
            (Target::Service(service), None)
        }
        _ => anyhow::bail!("give --to AGENCY, or --service KIND with --province CODE"),
    };
    // Unset unless asked: the broker's default for the kind applies (a broadcast for placements).
    let broadcast = match (args.broadcast, args.one) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let notify = args
        .notify
        .iter()
        .map(|raw| AgencyId::parse("notify", raw).map(|id| id.to_string()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(AdapterError::from)?;
    let follows = args
        .follows
        .as_deref()
        .map(|raw| ReferralId::parse("follows", raw).map(|id| id.to_string()))
        .transpose()
        .map_err(AdapterError::from)?
        .unwrap_or_default();
    let mut broker = None;
    let subject_province = match (
        args.subject_province.as_ref().or(args.province.as_ref()),
        &to,
    ) {
        (Some(code), _) => {
            ProvinceCode::parse("subject_province", code).map_err(AdapterError::from)?
        }
        (None, Some(to)) => {
            let (province, connected) = recipients_province(ctx, to).await?;
            broker = Some(connected);
            province
        }
        (None, None) => {
            anyhow::bail!("give --subject-province CODE (the province where the subject lives)")
        }
    };
    let mut case_file = match (&args.case_file, args.case_file_inline) {
        (_, Some(inline)) => inline.0,
        (Some(path), None) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read case file {}", path.display()))?;
            CaseFile::from_json(&bytes)?
        }
        (None, None) => CaseFile::default(),
    };
    if let Some(v) = args.name_km {
        case_file.name.khmer = v;
    }
    if let Some(v) = args.name_latin {
        case_file.name.latin = v;
    }
    if let Some(v) = args.reason {
        case_file.reason_for_referral = v;
    }
    if let Some(v) = args.notes {
        case_file.notes = v;
    }
    let request = SubmitRequest {
        client_ref: client_ref.to_string(),
        recipient: Some(Recipient {
            target: Some(recipient),
        }),
        kind: args.kind,
        urgency: Urgency::from(args.urgency) as i32,
        subject: Some(Subject {
            sex: Sex::from(args.sex) as i32,
            age_band: AgeBand::from(args.age_band) as i32,
            province: subject_province.to_string(),
        }),
        case_file: case_file.encode(),
        client_pseudonym: args.pseudonym.unwrap_or_default(),
        notify_agency_ids: notify.clone(),
        broadcast,
        follows_referral_id: follows.clone(),
        consent: Some(args.consent.to_wire()?),
    };
    let sending =
        enqueue_and_try(ctx, OutgoingRequest::Submit(request), queue_only, broker).await?;
    let envelope = match &sending {
        Sending::Sent(outcome) => match outcome.as_ref() {
            Outcome::Submitted(referral) => referral.envelope.clone(),
            Outcome::Recorded(_) => None,
        },
        Sending::AlreadySent(row) => match &row.referral_id {
            Some(id) => match ctx.store.referral(id).await? {
                Some(held) => Some(held.decode_envelope()?),
                None => None,
            },
            None => None,
        },
        Sending::Queued(_) => None,
    };
    let referral_id = match (&sending, &envelope) {
        (_, Some(envelope)) => Some(envelope.referral_id.clone()),
        (Sending::AlreadySent(row), None) => row.referral_id.clone(),
        _ => None,
    };
    // What the broker made of it, or, while it is queued, what was asked.
    let sent_as = envelope.unwrap_or_else(|| Envelope {
        notified_agency_ids: notify,
        follows_referral_id: follows,
        ..Default::default()
    });
    announce(client_ref.as_str(), &sending);
    Ok(Submitted {
        client_ref: client_ref.to_string(),
        status: if referral_id.is_some() {
            "sent"
        } else {
            "queued"
        },
        referral_id,
        queued_because: sending.queued_because(),
        replayed: matches!(sending, Sending::AlreadySent(_)),
        recipient_agency_id: sent_as.recipient_agency_id,
        candidate_agency_ids: sent_as.candidate_agency_ids,
        notified_agency_ids: sent_as.notified_agency_ids,
        follows_referral_id: sent_as.follows_referral_id,
    })
}

/// The subject's province when the sender gave none: the recipient's, when the broker's directory
/// lists exactly one for it. A recipient serving several (or all) leaves the choice to the sender,
/// who is told which they are. The connection is handed back for the send itself.
async fn recipients_province(
    ctx: &Context,
    to: &AgencyId,
) -> anyhow::Result<(ProvinceCode, Broker)> {
    let give_one =
        |why: String| anyhow!("--subject-province: {why}; give one with --subject-province");
    let cannot_ask = |error: AdapterError| {
        give_one(format!(
            "cannot ask the broker's directory which provinces {to} serves ({error})"
        ))
    };
    let mut broker = Broker::connect(&ctx.settings.broker, &ctx.identity)
        .await
        .map_err(cannot_ask)?;
    let agency = directory::agency(&mut broker, to)
        .await
        .map_err(cannot_ask)?
        .ok_or_else(|| anyhow!("--to: the directory has no agency {to}"))?;
    match directory::sole_province(&agency) {
        Some(code) => {
            let code = ProvinceCode::parse("subject_province", code).map_err(AdapterError::from)?;
            Ok((code, broker))
        }
        None => Err(give_one(format!(
            "{to} serves {}",
            directory::describe_provinces(&agency.provinces)
        ))),
    }
}

/// The feedback actions: one subcommand each, with the flags its details need. Adding one is a
/// variant here and its arm in [`Act::into_parts`]; the outbox's table says how it is stored and sent.
#[derive(Debug, Subcommand)]
pub enum Act {
    /// Acknowledge a referral: a person here has seen it.
    Ack {
        #[command(flatten)]
        common: ActionArgs,
    },
    /// Accept a referral with a planned action and its date.
    Accept {
        #[command(flatten)]
        common: ActionArgs,
        /// The planned action.
        #[arg(long = "action", value_name = "TEXT")]
        planned_action: String,
        /// When the planned action is due (YYYY-MM-DD).
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: String,
    },
    /// Decline a referral.
    Decline {
        #[command(flatten)]
        common: ActionArgs,
        /// e.g. no_capacity, out_of_area, not_eligible, duplicate, other.
        #[arg(long, value_name = "CODE")]
        reason_code: String,
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Redirect a referral to another agency.
    Redirect {
        #[command(flatten)]
        common: ActionArgs,
        /// The agency to redirect to.
        #[arg(long, value_name = "AGENCY")]
        to: String,
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Mark a referral in progress.
    Progress {
        #[command(flatten)]
        common: ActionArgs,
    },
    /// Record a follow-up activity.
    Followup {
        #[command(flatten)]
        common: ActionArgs,
        /// e.g. home_visit, school_attendance, grant_received, appointment, interim_report.
        #[arg(long, value_name = "CODE")]
        activity: String,
        /// When the activity happened (YYYY-MM-DD).
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: String,
    },
    /// Complete a referral with its outcome.
    Complete {
        #[command(flatten)]
        common: ActionArgs,
        /// e.g. child_well_in_school, reunited_with_family.
        #[arg(long, value_name = "CODE")]
        outcome: String,
        #[arg(long, value_name = "TEXT")]
        summary: String,
    },
    /// Record that a referral failed.
    Fail {
        #[command(flatten)]
        common: ActionArgs,
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Withdraw a referral this agency sent.
    Withdraw {
        #[command(flatten)]
        common: ActionArgs,
    },
    /// Mark a referral as entered in error.
    Error {
        #[command(flatten)]
        common: ActionArgs,
    },
    /// Hand the follow-up visits of a referral this agency accepted to another agency. The referral
    /// stays here; the other agency may then record follow-ups, and receives the follow-up part of
    /// the case file held here (name, date of birth, guardians, contact and consent; never the
    /// reason for referral, transport needs or notes).
    Delegate {
        #[command(flatten)]
        common: ActionArgs,
        /// The agency that makes the visits from now on.
        #[arg(long, value_name = "AGENCY")]
        to: String,
        /// Why (e.g. it is nearer the family).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Take back the follow-up visits delegated to another agency; it loses the follow-up part of
    /// the case file.
    RevokeDelegation {
        #[command(flatten)]
        common: ActionArgs,
    },
    /// Record that the client or their guardian withdrew consent (sender, recipient or delegate).
    /// Every agency holding the referral deletes its case file and notes and keeps the envelope
    /// and the history's kinds and times; an open referral is withdrawn. It cannot be undone, and
    /// carries no --note.
    WithdrawConsent {
        #[command(flatten)]
        common: ActionArgs,
        /// Who withdrew it: the client or a guardian.
        #[arg(long, value_enum, value_name = "WHO")]
        withdrawn_by: GiverArg,
        /// When they said so: RFC 3339, or YYYY-MM-DD (that day's start in Cambodia)
        /// [default: now].
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
}

/// Checks a YYYY-MM-DD date before it is queued, so a typo fails now rather than in the daemon.
fn iso_date(field: &'static str, raw: &str) -> Result<String, AdapterError> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(raw, format)
        .map(|_| raw.to_owned())
        .map_err(|error| AdapterError::Invalid {
            field: field.into(),
            reason: format!("{raw:?} is not a YYYY-MM-DD date: {error}"),
        })
}

impl Act {
    /// The flags every action shares.
    pub fn common(&self) -> &ActionArgs {
        match self {
            Act::Ack { common }
            | Act::Accept { common, .. }
            | Act::Decline { common, .. }
            | Act::Redirect { common, .. }
            | Act::Progress { common }
            | Act::Followup { common, .. }
            | Act::Complete { common, .. }
            | Act::Fail { common, .. }
            | Act::Withdraw { common }
            | Act::Error { common }
            | Act::Delegate { common, .. }
            | Act::RevokeDelegation { common }
            | Act::WithdrawConsent { common, .. } => common,
        }
    }

    /// The flags every action shares, and this action's request with its details checked (so a typo
    /// fails now rather than in the daemon). The shared `action` field is filled in by [`act`].
    fn into_parts(self) -> Result<(ActionArgs, OutgoingRequest), AdapterError> {
        use OutgoingRequest as R;
        Ok(match self {
            Act::Ack { common } => (common, R::Acknowledge(AcknowledgeRequest::default())),
            Act::Accept {
                common,
                planned_action,
                date,
            } => (
                common,
                R::Accept(AcceptRequest {
                    action: None,
                    acceptance: Some(Acceptance {
                        planned_action,
                        planned_date: iso_date("date", &date)?,
                    }),
                }),
            ),
            Act::Decline {
                common,
                reason_code,
                reason,
            } => (
                common,
                R::Decline(DeclineRequest {
                    action: None,
                    decline: Some(Decline {
                        reason_code,
                        reason_text: reason,
                    }),
                }),
            ),
            Act::Redirect { common, to, reason } => (
                common,
                R::Redirect(RedirectRequest {
                    action: None,
                    redirect: Some(Redirect {
                        to_agency_id: AgencyId::parse("to", &to)?.to_string(),
                        reason,
                        // Sealed to the new recipient when sent (`sealing`).
                        case_file: Vec::new(),
                    }),
                }),
            ),
            Act::Progress { common } => {
                (common, R::MarkInProgress(MarkInProgressRequest::default()))
            }
            Act::Followup {
                common,
                activity,
                date,
            } => (
                common,
                R::RecordFollowUp(RecordFollowUpRequest {
                    action: None,
                    follow_up: Some(FollowUp {
                        activity,
                        date: iso_date("date", &date)?,
                    }),
                }),
            ),
            Act::Complete {
                common,
                outcome,
                summary,
            } => (
                common,
                R::Complete(CompleteRequest {
                    action: None,
                    outcome: Some(OutcomeDetails {
                        outcome_code: outcome,
                        summary,
                    }),
                }),
            ),
            Act::Fail { common, reason } => (
                common,
                R::Fail(FailRequest {
                    action: None,
                    failure: Some(Failure { reason }),
                }),
            ),
            Act::Withdraw { common } => (common, R::Withdraw(WithdrawRequest::default())),
            Act::Error { common } => (
                common,
                R::MarkEnteredInError(MarkEnteredInErrorRequest::default()),
            ),
            Act::Delegate { common, to, reason } => (
                common,
                R::DelegateFollowUp(DelegateFollowUpRequest {
                    action: None,
                    delegation: Some(Delegation {
                        to_agency_id: AgencyId::parse("to", &to)?.to_string(),
                        reason,
                        // Filled from the store by `with_follow_up_part`.
                        follow_up_case_file: Vec::new(),
                    }),
                }),
            ),
            Act::RevokeDelegation { common } => (
                common,
                R::RevokeDelegation(RevokeDelegationRequest::default()),
            ),
            Act::WithdrawConsent {
                mut common,
                withdrawn_by,
                at,
            } => {
                if common.note.is_some() {
                    return Err(AdapterError::Invalid {
                        field: "note".into(),
                        reason: "a withdrawal of consent carries no note: every agency deletes \
                                 the referral's notes at once"
                            .into(),
                    });
                }
                // Who recorded it stays here (the outbox row), not in what is sent.
                common.by = None;
                let withdrawal = consent::withdrawal(
                    withdrawn_by,
                    at.as_deref(),
                    time::OffsetDateTime::now_utc(),
                )?;
                (
                    common,
                    R::WithdrawConsent(WithdrawConsentRequest {
                        action: None,
                        withdrawal: Some(withdrawal),
                    }),
                )
            }
        })
    }
}

/// A delegation carries the follow-up part of the case file this agency holds
/// ([`CaseFile::follow_up_part`]): made here, so the broker never sees more than the delegate may.
/// Other requests pass as they are. Built the same way from the same case file every time, so a
/// delegation run again with its `--request-id` is the same request.
async fn with_follow_up_part(
    ctx: &Context,
    referral_id: &str,
    mut request: OutgoingRequest,
) -> Result<OutgoingRequest, AdapterError> {
    let OutgoingRequest::DelegateFollowUp(delegate) = &mut request else {
        return Ok(request);
    };
    let row = ctx
        .store
        .referral(referral_id)
        .await?
        .ok_or_else(|| AdapterError::Invalid {
            field: "id".into(),
            reason: format!(
                "referral {referral_id} is not in the local store; a delegation needs the case \
                 file held here"
            ),
        })?;
    if row.case_file.is_empty() {
        return Err(AdapterError::Invalid {
            field: "case_file".into(),
            reason: format!(
                "this agency holds no case file for referral {referral_id}, so it has no \
                 follow-up part to delegate"
            ),
        });
    }
    let part = CaseFile::decode(&row.case_file)?.follow_up_part().encode();
    if let Some(delegation) = delegate.delegation.as_mut() {
        delegation.follow_up_case_file = part;
    }
    Ok(request)
}

pub(super) async fn act(ctx: &Context, act: Act) -> anyhow::Result<()> {
    let json_out = act.common().json;
    let acted = perform(ctx, act).await?;
    if json_out {
        return print_json(&acted);
    }
    match (&acted.kind, &acted.state) {
        (Some(kind), Some(state)) => {
            println!("{}: {kind} recorded, state {state}", acted.referral_id);
        }
        _ if acted.status == "sent" => println!(
            "{}: {} was already sent",
            acted.referral_id, acted.operation
        ),
        _ => println!("{} queued", acted.request_id),
    }
    Ok(())
}

/// Records a feedback action: checks it, writes it to the outbox, and (unless `--queue-only`, or
/// the caller knows the broker is out of reach) tries the broker once.
pub(crate) async fn perform(ctx: &Context, act: Act) -> Result<Acted, AdapterError> {
    let (common, request) = act.into_parts()?;
    let mut request = with_follow_up_part(ctx, &common.id, request).await?;
    let request_id = key_or_new(common.request_id.as_deref(), |raw| {
        RequestId::parse("request_id", raw)
    })?;
    request.set_action(Action {
        referral_id: common.id.clone(),
        request_id: request_id.to_string(),
        actor_person: common.by.unwrap_or_default(),
        note: common.note.unwrap_or_default(),
        // Filled when the request is sent: the broker takes free text sealed only.
        sealed_text: Vec::new(),
    });
    crate::sealing::check_free_text(&request)?;
    let operation = request.operation();
    let queue_only = common.queue_only.then_some("--queue-only");
    let sending = enqueue_and_try(ctx, request, queue_only, None).await?;
    announce(request_id.as_str(), &sending);
    let event = match &sending {
        Sending::Sent(outcome) => match outcome.as_ref() {
            Outcome::Recorded(event) => Some(event),
            Outcome::Submitted(_) => None,
        },
        Sending::AlreadySent(_) | Sending::Queued(_) => None,
    };
    Ok(Acted {
        request_id: request_id.to_string(),
        referral_id: common.id,
        operation,
        status: sending.status(),
        queued_because: sending.queued_because(),
        replayed: matches!(sending, Sending::AlreadySent(_)),
        event_id: event.map(|e| e.event_id.clone()),
        kind: event.map(|e| kind_name(e.kind)),
        state: event.map(|e| state_name(e.state_after)),
    })
}
