//! `send` and the feedback actions. Each writes its request to the outbox first, then tries the broker
//! once: sent → stored and printed; refused → the row is `rejected` and the command fails; broker
//! unreachable → the row stays `pending` for the daemon and the command still succeeds.
//!
//! Run again with the same key and the same content, a command reports where the first run's row
//! stands (`sent`, or still `pending`) and does not queue twice; a row the broker refused stays
//! refused. The same key with other content is an error naming the key's field.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use serde_json::json;
use spean_proto::v1::{
    AcceptRequest, Acceptance, AcknowledgeRequest, Action, AgeBand, CompleteRequest, Decline,
    DeclineRequest, FailRequest, Failure, FollowUp, MarkEnteredInErrorRequest,
    MarkInProgressRequest, Outcome as OutcomeDetails, Recipient, RecordFollowUpRequest, Redirect,
    RedirectRequest, ServiceInProvince, Sex, Subject, SubmitRequest, Urgency, WithdrawRequest,
    recipient::Target,
};

use super::{ActionArgs, AgeBandArg, Context, SexArg, UrgencyArg, print_json};
use crate::{
    AdapterError,
    broker::Broker,
    case_file::CaseFile,
    outbox::{self, Outcome, OutgoingRequest},
    referral::{AgencyId, IdempotencyKey, kind_name, state_name},
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
    /// The referral kind from the taxonomy.
    #[arg(long, value_name = "KIND")]
    pub kind: String,
    #[arg(long, value_enum)]
    pub urgency: UrgencyArg,
    #[arg(long, value_enum, default_value = "unknown")]
    pub sex: SexArg,
    #[arg(long, value_enum, default_value = "unknown")]
    pub age_band: AgeBandArg,
    /// Two-digit province code where the subject lives [default: --province, when given].
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

/// The name the user gave the request's idempotency key under, for messages.
fn key_field(request: &OutgoingRequest) -> &'static str {
    match request {
        OutgoingRequest::Submit(_) => "client_ref",
        _ => "request_id",
    }
}

/// Outbox first, then one try. A key already in the outbox with the same content reports that row
/// as it stands instead of queuing again; with other content it is refused by the store.
async fn enqueue_and_try(
    ctx: &Context,
    request: OutgoingRequest,
    queue_only: bool,
) -> anyhow::Result<Sending> {
    let request_id = request.request_id().to_owned();
    let request_id = request_id.as_str();
    match request.enqueue(&ctx.store).await {
        Ok(()) => {}
        Err(reused @ AdapterError::KeyReused { .. }) => return Err(reused.into()),
        Err(error) => {
            return Err(
                anyhow::Error::new(error).context("cannot write the request to the local outbox")
            );
        }
    }
    let row = ctx
        .store
        .outbox_row(request_id)
        .await?
        .context("the request is missing from the local outbox just after it was written")?;
    match row.status.as_str() {
        "sent" => return Ok(Sending::AlreadySent(row)),
        "rejected" => {
            let field = key_field(&request);
            anyhow::bail!(
                "{field} {request_id:?} was refused by the broker before ({}) and is not sent \
                 again; give a new {field}",
                row.error.as_deref().unwrap_or("no reason recorded")
            );
        }
        _ => {}
    }
    if queue_only {
        return Ok(Sending::Queued("--queue-only".into()));
    }
    let mut broker = match Broker::connect(&ctx.settings.broker, &ctx.identity).await {
        Ok(broker) => broker,
        Err(error @ AdapterError::Unavailable(_)) => {
            ctx.store
                .note_failed_attempt(request_id, &error.to_string())
                .await?;
            return Ok(Sending::Queued(error.to_string()));
        }
        Err(error) => return Err(error.into()),
    };
    match outbox::send(&ctx.store, &mut broker, request).await {
        Ok(outcome) => Ok(Sending::Sent(Box::new(outcome))),
        Err(error) if error.is_transient() => Ok(Sending::Queued(error.to_string())),
        Err(error) => Err(error.into()),
    }
}

fn announce_queued(key: &str, why: &str) {
    eprintln!("{key}: not sent now ({why}); it is queued and the daemon will send it");
}

fn announce_already_sent(key: &str) {
    eprintln!("{key}: this request was sent before; it is not sent again");
}

pub(super) async fn send(ctx: &Context, args: SendArgs) -> anyhow::Result<()> {
    let client_ref = match &args.client_ref {
        Some(raw) => IdempotencyKey::parse("client_ref", raw)?,
        None => IdempotencyKey::generate(),
    };
    let recipient = match (&args.to, &args.service, &args.province) {
        (Some(to), _, _) => Target::AgencyId(AgencyId::parse(to)?.to_string()),
        (None, Some(service), Some(province)) => Target::Service(ServiceInProvince {
            service: service.clone(),
            province: province_code("province", province)?,
        }),
        _ => anyhow::bail!("give --to AGENCY, or --service KIND with --province CODE"),
    };
    let subject_province = match args.subject_province.as_ref().or(args.province.as_ref()) {
        Some(code) => province_code("subject_province", code)?,
        None => {
            anyhow::bail!("give --subject-province CODE (the province where the subject lives)")
        }
    };
    let mut case_file = match &args.case_file {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read case file {}", path.display()))?;
            CaseFile::from_json(&bytes)?
        }
        None => CaseFile::default(),
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
            province: subject_province,
        }),
        case_file: case_file.encode(),
        client_pseudonym: args.pseudonym.unwrap_or_default(),
    };
    let sending = enqueue_and_try(ctx, OutgoingRequest::Submit(request), args.queue_only).await?;
    let referral_id = match &sending {
        Sending::Sent(outcome) => match outcome.as_ref() {
            Outcome::Submitted(referral) => {
                referral.envelope.as_ref().map(|e| e.referral_id.clone())
            }
            Outcome::Recorded(_) => None,
        },
        Sending::AlreadySent(row) => row.referral_id.clone(),
        Sending::Queued(_) => None,
    };
    match &sending {
        Sending::Queued(why) => announce_queued(client_ref.as_str(), why),
        Sending::AlreadySent(_) => announce_already_sent(client_ref.as_str()),
        Sending::Sent(_) => {}
    }
    if args.json {
        print_json(&json!({
            "client_ref": client_ref.as_str(),
            "referral_id": referral_id,
            "status": if referral_id.is_some() { "sent" } else { "queued" },
        }))?;
    } else {
        match referral_id {
            Some(id) => println!("{id}"),
            None => println!("{client_ref} queued"),
        }
    }
    Ok(())
}

/// The kind-specific part of each feedback action.
pub(super) enum Act {
    Acknowledge,
    Accept {
        planned_action: String,
        date: String,
    },
    Decline {
        reason_code: String,
        reason: String,
    },
    Redirect {
        to: String,
        reason: String,
    },
    MarkInProgress,
    FollowUp {
        activity: String,
        date: String,
    },
    Complete {
        outcome: String,
        summary: String,
    },
    Fail {
        reason: String,
    },
    Withdraw,
    EnteredInError,
}

/// Checks a two-digit province code before it is queued; the broker checks it names a province.
fn province_code(field: &'static str, raw: &str) -> Result<String, AdapterError> {
    if raw.len() == 2 && raw.bytes().all(|b| b.is_ascii_digit()) {
        Ok(raw.to_owned())
    } else {
        Err(AdapterError::Invalid {
            field,
            reason: format!("{raw:?} is not a two-digit province code"),
        })
    }
}

/// Checks a YYYY-MM-DD date before it is queued, so a typo fails now rather than in the daemon.
fn iso_date(field: &'static str, raw: &str) -> Result<String, AdapterError> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(raw, format)
        .map(|_| raw.to_owned())
        .map_err(|error| AdapterError::Invalid {
            field,
            reason: format!("{raw:?} is not a YYYY-MM-DD date: {error}"),
        })
}

impl Act {
    fn into_request(self, action: Action) -> Result<OutgoingRequest, AdapterError> {
        let action = Some(action);
        Ok(match self {
            Act::Acknowledge => OutgoingRequest::Acknowledge(AcknowledgeRequest { action }),
            Act::Accept {
                planned_action,
                date,
            } => OutgoingRequest::Accept(AcceptRequest {
                action,
                acceptance: Some(Acceptance {
                    planned_action,
                    planned_date: iso_date("date", &date)?,
                }),
            }),
            Act::Decline {
                reason_code,
                reason,
            } => OutgoingRequest::Decline(DeclineRequest {
                action,
                decline: Some(Decline {
                    reason_code,
                    reason_text: reason,
                }),
            }),
            Act::Redirect { to, reason } => OutgoingRequest::Redirect(RedirectRequest {
                action,
                redirect: Some(Redirect {
                    to_agency_id: AgencyId::parse(&to)?.to_string(),
                    reason,
                }),
            }),
            Act::MarkInProgress => {
                OutgoingRequest::MarkInProgress(MarkInProgressRequest { action })
            }
            Act::FollowUp { activity, date } => {
                OutgoingRequest::RecordFollowUp(RecordFollowUpRequest {
                    action,
                    follow_up: Some(FollowUp {
                        activity,
                        date: iso_date("date", &date)?,
                    }),
                })
            }
            Act::Complete { outcome, summary } => OutgoingRequest::Complete(CompleteRequest {
                action,
                outcome: Some(OutcomeDetails {
                    outcome_code: outcome,
                    summary,
                }),
            }),
            Act::Fail { reason } => OutgoingRequest::Fail(FailRequest {
                action,
                failure: Some(Failure { reason }),
            }),
            Act::Withdraw => OutgoingRequest::Withdraw(WithdrawRequest { action }),
            Act::EnteredInError => {
                OutgoingRequest::MarkEnteredInError(MarkEnteredInErrorRequest { action })
            }
        })
    }
}

pub(super) async fn act(ctx: &Context, common: ActionArgs, act: Act) -> anyhow::Result<()> {
    let request_id = match &common.request_id {
        Some(raw) => IdempotencyKey::parse("request_id", raw)?,
        None => IdempotencyKey::generate(),
    };
    let request = act.into_request(Action {
        referral_id: common.id.clone(),
        request_id: request_id.to_string(),
        actor_person: common.by.unwrap_or_default(),
        note: common.note.unwrap_or_default(),
    })?;
    let operation = request.operation();
    let sending = enqueue_and_try(ctx, request, common.queue_only).await?;
    let event = match &sending {
        Sending::Sent(outcome) => match outcome.as_ref() {
            Outcome::Recorded(event) => Some(event),
            Outcome::Submitted(_) => None,
        },
        Sending::AlreadySent(_) | Sending::Queued(_) => None,
    };
    let sent = matches!(sending, Sending::Sent(_) | Sending::AlreadySent(_));
    match &sending {
        Sending::Queued(why) => announce_queued(request_id.as_str(), why),
        Sending::AlreadySent(_) => announce_already_sent(request_id.as_str()),
        Sending::Sent(_) => {}
    }
    if common.json {
        // A request sent before reports `sent` without its event: the event is in the referral's
        // history (`show`), and the outbox does not record which event answered it.
        print_json(&json!({
            "request_id": request_id.as_str(),
            "referral_id": common.id,
            "operation": operation,
            "status": if sent { "sent" } else { "queued" },
            "event_id": event.map(|e| e.event_id.clone()),
            "kind": event.map(|e| kind_name(e.kind)),
            "state": event.map(|e| state_name(e.state_after)),
        }))?;
    } else {
        match event {
            Some(e) => println!(
                "{}: {} recorded, state {}",
                common.id,
                kind_name(e.kind),
                state_name(e.state_after)
            ),
            None if sent => println!("{}: {operation} was already sent", common.id),
            None => println!("{request_id} queued"),
        }
    }
    Ok(())
}
