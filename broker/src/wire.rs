//! The wire codec: conversions between the wire types (`spean_proto::v1`) and the domain, for the
//! gateway and for delivery alike. Requests parse into domain values and name the failing field;
//! answers and deliveries are built from domain values. A referral goes out only as a
//! [`ReferralView`], so what its reader may see was decided by the one rule in
//! [`crate::referral::view`].

mod consent;
mod figures;
mod listing;
pub mod sealed;
mod subscription;
pub use figures::figures_response;
pub use listing::{list_query, page_offset, page_size};
pub use subscription::{confirmation, hello_window};

use prost::Message;
use prost_types::Timestamp;
use spean_proto::v1 as pb;
use time::OffsetDateTime;

use crate::error::FieldError;
use crate::ids::{AgencyId, ClientRef, ProvinceCode, ReferralId, RequestId};
use crate::referral::{
    Action, Addressee, AgeBand, Audience, Code, Day, DeliveryContent, Event, EventDetails,
    EventKind, FreeText, MAX_NOTIFIED, NewReferral, Referral, ReferralView, Role, Sealed, Sex,
    State, Subject, Urgency,
};

/// Largest sealed free text of one action: a person's name, a note and a reason of a few
/// thousand characters each, sealed to a handful of readers. The adapter checks the text's own
/// limits before sealing it.
const MAX_SEALED_TEXT: usize = 64 * 1024;

fn required<T>(field: &'static str, value: Option<T>) -> Result<T, FieldError> {
    value.ok_or_else(|| FieldError::new(field, "is required"))
}

fn urgency(field: &'static str, raw: i32) -> Result<Urgency, FieldError> {
    match pb::Urgency::try_from(raw) {
        Ok(pb::Urgency::Emergency) => Ok(Urgency::Emergency),
        Ok(pb::Urgency::Urgent) => Ok(Urgency::Urgent),
        Ok(pb::Urgency::Routine) => Ok(Urgency::Routine),
        Ok(pb::Urgency::Unspecified) => Err(FieldError::new(field, "is required")),
        Err(_) => Err(FieldError::new(field, format!("{raw} is not an urgency"))),
    }
}

fn sex(raw: i32) -> Result<Sex, FieldError> {
    let field = "subject.sex";
    match pb::Sex::try_from(raw) {
        Ok(pb::Sex::Female) => Ok(Sex::Female),
        Ok(pb::Sex::Male) => Ok(Sex::Male),
        Ok(pb::Sex::Other) => Ok(Sex::Other),
        Ok(pb::Sex::Unknown) => Ok(Sex::Unknown),
        Ok(pb::Sex::Unspecified) => Err(FieldError::new(field, "is required (use SEX_UNKNOWN)")),
        Err(_) => Err(FieldError::new(field, format!("{raw} is not a sex"))),
    }
}

fn age_band(raw: i32) -> Result<AgeBand, FieldError> {
    use pb::AgeBand as A;
    let field = "subject.age_band";
    Ok(match A::try_from(raw) {
        Ok(A::AgeBand04) => AgeBand::Age0To4,
        Ok(A::AgeBand59) => AgeBand::Age5To9,
        Ok(A::AgeBand1014) => AgeBand::Age10To14,
        Ok(A::AgeBand1517) => AgeBand::Age15To17,
        Ok(A::AgeBand1824) => AgeBand::Age18To24,
        Ok(A::AgeBand2559) => AgeBand::Age25To59,
        Ok(A::AgeBand60Plus) => AgeBand::Age60Plus,
        Ok(A::Unknown) => AgeBand::Unknown,
        Ok(A::Unspecified) => {
            return Err(FieldError::new(field, "is required (use AGE_BAND_UNKNOWN)"));
        }
        Err(_) => return Err(FieldError::new(field, format!("{raw} is not an age band"))),
    })
}

/// A submitted referral, parsed.
pub fn new_referral(req: pb::SubmitRequest) -> Result<NewReferral, FieldError> {
    {
        let client_ref = ClientRef::parse("client_ref", &req.client_ref)?;
        let recipient = required("recipient", req.recipient)?;
        let addressee = match required("recipient", recipient.target)? {
            pb::recipient::Target::AgencyId(id) => {
                Addressee::Agency(AgencyId::parse("recipient.agency_id", &id)?)
            }
            pb::recipient::Target::Service(s) => Addressee::Service {
                service: Code::parse("recipient.service.service", &s.service)?,
                province: ProvinceCode::parse("recipient.service.province", &s.province)?,
            },
        };
        let kind = Code::parse("kind", &req.kind)?;
        let urgency = urgency("urgency", req.urgency)?;
        let subject = required("subject", req.subject)?;
        let subject = Subject {
            sex: sex(subject.sex)?,
            age_band: age_band(subject.age_band)?,
            province: ProvinceCode::parse("subject.province", &subject.province)?,
        };
        if req.case_file.is_empty() {
            return Err(FieldError::new("case_file", "is required"));
        }
        sealed::parse("case_file", &req.case_file)?;
        let client_pseudonym = (!req.client_pseudonym.is_empty())
            .then(|| ClientRef::parse("client_pseudonym", &req.client_pseudonym))
            .transpose()?;
        if req.broadcast == Some(true) && matches!(addressee, Addressee::Agency(_)) {
            return Err(FieldError::new(
                "broadcast",
                "needs a recipient addressed by service and province, not one agency",
            ));
        }
        let notify = notify_list(&req.notify_agency_ids)?;
        let follows = (!req.follows_referral_id.is_empty())
            .then(|| ReferralId::parse("follows_referral_id", &req.follows_referral_id))
            .transpose()?;
        Ok(NewReferral {
            client_ref,
            addressee,
            kind,
            urgency,
            subject,
            case_file: Sealed::new(req.case_file),
            client_pseudonym,
            broadcast: req.broadcast,
            notify,
            follows,
            consent: consent::consent(req.consent)?,
        })
    }
}

/// The agencies a sender names to be notified: directory ids, each once, at most
/// [`MAX_NOTIFIED`]. Whether they are in the directory and outside the referral's parties is the
/// workflow's to check.
fn notify_list(raw: &[String]) -> Result<Vec<AgencyId>, FieldError> {
    const FIELD: &str = "notify_agency_ids";
    if raw.len() > MAX_NOTIFIED {
        return Err(FieldError::new(
            FIELD,
            format!("names {} agencies; the limit is {MAX_NOTIFIED}", raw.len()),
        ));
    }
    let mut notify: Vec<AgencyId> = Vec::with_capacity(raw.len());
    for id in raw {
        let agency = AgencyId::parse(FIELD, id)?;
        if notify.contains(&agency) {
            return Err(FieldError::new(FIELD, format!("names {agency} twice")));
        }
        notify.push(agency);
    }
    Ok(notify)
}

/// A feedback request (`AcknowledgeRequest`, `AcceptRequest`, …) parsed into the action it asks
/// for. The table below is the one place that says which request is which action and where its
/// details are: adding an action is one row here, one in the state machine, and its RPC.
pub trait FeedbackRequest {
    fn into_action(self) -> Result<Action, FieldError>;
}

macro_rules! feedback_requests {
    ($($request:ident: $kind:ident $(, $field:ident => $parse:path)?;)*) => {$(
        impl FeedbackRequest for pb::$request {
            fn into_action(self) -> Result<Action, FieldError> {
                let details = feedback_requests!(@details self $(, $field, $parse)?);
                action(self.action, EventKind::$kind, details)
            }
        }
    )*};
    (@details $request:ident) => { EventDetails::None };
    (@details $request:ident, $field:ident, $parse:path) => { $parse($request.$field)? };
}

feedback_requests! {
    AcknowledgeRequest: Acknowledged;
    AcceptRequest: Accepted, acceptance => acceptance;
    DeclineRequest: Declined, decline => decline;
    RedirectRequest: Redirected, redirect => redirect;
    MarkInProgressRequest: InProgress;
    RecordFollowUpRequest: FollowUp, follow_up => follow_up;
    CompleteRequest: Completed, outcome => outcome;
    FailRequest: Failed, failure => failure;
    WithdrawRequest: Withdrawn;
    MarkEnteredInErrorRequest: EnteredInError;
    DelegateFollowUpRequest: FollowUpDelegated, delegation => delegation;
    RevokeDelegationRequest: DelegationRevoked;
}

/// A withdrawal of consent says who withdrew it and when, and nothing more: any text it carried
/// would be deleted with the rest of the case at once.
impl FeedbackRequest for pb::WithdrawConsentRequest {
    fn into_action(self) -> Result<Action, FieldError> {
        let details = consent::withdrawal(self.withdrawal)?;
        let action = action(self.action, EventKind::ConsentWithdrawn, details)?;
        if !action.sealed_text.is_empty() {
            return Err(FieldError::new(
                "action.sealed_text",
                "must be empty: a withdrawal of consent carries no free text, which every agency \
                 would delete with the case at once",
            ));
        }
        Ok(action)
    }
}

/// Parses the fields every feedback action shares.
pub fn action(
    raw: Option<pb::Action>,
    kind: EventKind,
    details: EventDetails,
) -> Result<Action, FieldError> {
    let a = required("action", raw)?;
    cleartext("action.actor_person", &a.actor_person)?;
    cleartext("action.note", &a.note)?;
    let referral_id = ReferralId::parse("action.referral_id", &a.referral_id)?;
    let request_id = RequestId::parse("action.request_id", &a.request_id)?;
    if a.sealed_text.is_empty() {
        if let Some(what) = text_required(kind) {
            return Err(FieldError::new(
                "action.sealed_text",
                format!("is required: {what} is sealed there"),
            ));
        }
    } else if a.sealed_text.len() > MAX_SEALED_TEXT {
        return Err(FieldError::new(
            "action.sealed_text",
            format!(
                "is {} bytes; the limit is {MAX_SEALED_TEXT}",
                a.sealed_text.len()
            ),
        ));
    } else {
        sealed::parse("action.sealed_text", &a.sealed_text)?;
    }
    Ok(Action {
        referral_id,
        request_id,
        actor_person: FreeText::default(),
        note: FreeText::default(),
        kind,
        details,
        sealed_text: Sealed::new(a.sealed_text),
    })
}

/// What an action of this kind must say in its sealed free text, if anything.
fn text_required(kind: EventKind) -> Option<&'static str> {
    match kind {
        EventKind::Accepted => Some("an acceptance's planned action"),
        EventKind::Declined => Some("a decline's reason"),
        EventKind::Redirected => Some("a redirect's reason"),
        EventKind::Failed => Some("a failure's reason"),
        EventKind::FollowUpDelegated => Some("a delegation's reason"),
        _ => None,
    }
}

/// Refuses free text sent in clear: what people write about a case travels sealed
/// (`action.sealed_text`), so that the broker never holds it readable.
fn cleartext(field: &'static str, raw: &str) -> Result<(), FieldError> {
    if raw.is_empty() {
        return Ok(());
    }
    Err(FieldError::new(
        field,
        "must be empty: free text travels sealed in action.sealed_text (a spean.v1.FreeText \
         sealed to its readers), never in clear",
    ))
}

pub fn acceptance(raw: Option<pb::Acceptance>) -> Result<EventDetails, FieldError> {
    let a = required("acceptance", raw)?;
    cleartext("acceptance.planned_action", &a.planned_action)?;
    Ok(EventDetails::Accepted {
        planned_action: FreeText::default(),
        planned_date: Day::parse("acceptance.planned_date", &a.planned_date)?.to_string(),
    })
}

pub fn decline(raw: Option<pb::Decline>) -> Result<EventDetails, FieldError> {
    let d = required("decline", raw)?;
    cleartext("decline.reason_text", &d.reason_text)?;
    Ok(EventDetails::Declined {
        reason_code: Code::parse("decline.reason_code", &d.reason_code)?,
        reason_text: FreeText::default(),
    })
}

pub fn redirect(raw: Option<pb::Redirect>) -> Result<EventDetails, FieldError> {
    let r = required("redirect", raw)?;
    cleartext("redirect.reason", &r.reason)?;
    let to = AgencyId::parse("redirect.to_agency_id", &r.to_agency_id)?;
    sealed_to(
        "redirect.case_file",
        &r.case_file,
        &to,
        "the case file re-sealed",
    )?;
    Ok(EventDetails::Redirected {
        to,
        reason: FreeText::default(),
        case_file: Sealed::new(r.case_file),
    })
}

pub fn follow_up(raw: Option<pb::FollowUp>) -> Result<EventDetails, FieldError> {
    let f = required("follow_up", raw)?;
    Ok(EventDetails::FollowUp {
        activity: Code::parse("follow_up.activity", &f.activity)?,
        date: Day::parse("follow_up.date", &f.date)?.to_string(),
    })
}

/// A delegation as requested. The agency it is taken back from, on a revocation, is the broker's
/// to fill in (the history knows it), so [`EventDetails::DelegationRevoked`] is made there.
pub fn delegation(raw: Option<pb::Delegation>) -> Result<EventDetails, FieldError> {
    let d = required("delegation", raw)?;
    cleartext("delegation.reason", &d.reason)?;
    let to = AgencyId::parse("delegation.to_agency_id", &d.to_agency_id)?;
    sealed_to(
        "delegation.follow_up_case_file",
        &d.follow_up_case_file,
        &to,
        "the part of the case file the delegate's visits need, sealed",
    )?;
    Ok(EventDetails::FollowUpDelegated {
        to,
        reason: FreeText::default(),
        follow_up_part: Sealed::new(d.follow_up_case_file),
    })
}

pub fn outcome(raw: Option<pb::Outcome>) -> Result<EventDetails, FieldError> {
    let o = required("outcome", raw)?;
    cleartext("outcome.summary", &o.summary)?;
    Ok(EventDetails::Completed {
        outcome_code: Code::parse("outcome.outcome_code", &o.outcome_code)?,
        summary: FreeText::default(),
    })
}

pub fn failure(raw: Option<pb::Failure>) -> Result<EventDetails, FieldError> {
    let f = required("failure", raw)?;
    cleartext("failure.reason", &f.reason)?;
    Ok(EventDetails::Failed {
        reason: FreeText::default(),
    })
}

/// Sealed bytes that must hold a box for `to`: `what` says what they are, for the error.
fn sealed_to(
    field: &'static str,
    bytes: &[u8],
    to: &AgencyId,
    what: &str,
) -> Result<(), FieldError> {
    if bytes.is_empty() {
        return Err(FieldError::new(
            field,
            format!("is required: {what} to {to}"),
        ));
    }
    if !sealed::parse(field, bytes)?.iter().any(|b| &b.to == to) {
        return Err(FieldError::new(
            field,
            format!("has no box for {to}: it must hold {what} to {to}"),
        ));
    }
    Ok(())
}

/// A period asked for figures, `[from, to)`, and the province it is narrowed to.
#[derive(Debug, Clone)]
pub struct Period {
    pub from: OffsetDateTime,
    pub to: OffsetDateTime,
    pub province: Option<ProvinceCode>,
}

pub fn period(req: pb::FiguresRequest) -> Result<Period, FieldError> {
    let from = time_of("from", required("from", req.from)?)?;
    let to = time_of("to", required("to", req.to)?)?;
    let province = (!req.province.is_empty())
        .then(|| ProvinceCode::parse("province", &req.province))
        .transpose()?;
    Ok(Period { from, to, province })
}

fn time_of(field: &'static str, t: Timestamp) -> Result<OffsetDateTime, FieldError> {
    OffsetDateTime::from_unix_timestamp(t.seconds)
        .ok()
        .and_then(|at| at.replace_nanosecond(t.nanos.max(0) as u32).ok())
        .ok_or_else(|| FieldError::new(field, "is not a valid time"))
}

/// The overdue list's filters, as asked.
#[derive(Debug, Clone)]
pub struct OverdueQuery {
    pub province: Option<ProvinceCode>,
    pub agency: Option<AgencyId>,
    pub kind: Option<Code>,
    pub urgency: Option<Urgency>,
}

/// The overdue list's filters, parsed; the page size and token are the gateway's.
pub fn overdue_filter(req: &pb::ListOverdueRequest) -> Result<OverdueQuery, FieldError> {
    Ok(OverdueQuery {
        province: (!req.province.is_empty())
            .then(|| ProvinceCode::parse("province", &req.province))
            .transpose()?,
        agency: (!req.agency_id.is_empty())
            .then(|| AgencyId::parse("agency_id", &req.agency_id))
            .transpose()?,
        kind: (!req.kind.is_empty())
            .then(|| Code::parse("kind", &req.kind))
            .transpose()?,
        urgency: (req.urgency != 0)
            .then(|| urgency("urgency", req.urgency))
            .transpose()?,
    })
}

pub fn role(raw: i32) -> Result<Option<Role>, FieldError> {
    match pb::Role::try_from(raw) {
        Ok(pb::Role::Unspecified) => Ok(None),
        Ok(pb::Role::Sender) => Ok(Some(Role::Sender)),
        Ok(pb::Role::Recipient) => Ok(Some(Role::Recipient)),
        Err(_) => Err(FieldError::new("role", format!("{raw} is not a role"))),
    }
}

pub fn state_from_pb(field: &'static str, raw: i32) -> Result<State, FieldError> {
    use pb::ReferralState as P;
    Ok(match P::try_from(raw) {
        Ok(P::Sent) => State::Sent,
        Ok(P::Delivered) => State::Delivered,
        Ok(P::Acknowledged) => State::Acknowledged,
        Ok(P::Accepted) => State::Accepted,
        Ok(P::InProgress) => State::InProgress,
        Ok(P::Declined) => State::Declined,
        Ok(P::Completed) => State::Completed,
        Ok(P::Failed) => State::Failed,
        Ok(P::Withdrawn) => State::Withdrawn,
        Ok(P::EnteredInError) => State::EnteredInError,
        Ok(P::Unspecified) | Err(_) => {
            return Err(FieldError::new(
                field,
                format!("{raw} is not a referral state"),
            ));
        }
    })
}

pub fn state(s: State) -> pb::ReferralState {
    use pb::ReferralState as P;
    match s {
        State::Sent => P::Sent,
        State::Delivered => P::Delivered,
        State::Acknowledged => P::Acknowledged,
        State::Accepted => P::Accepted,
        State::InProgress => P::InProgress,
        State::Declined => P::Declined,
        State::Completed => P::Completed,
        State::Failed => P::Failed,
        State::Withdrawn => P::Withdrawn,
        State::EnteredInError => P::EnteredInError,
    }
}

fn event_kind(k: EventKind) -> pb::FeedbackKind {
    use pb::FeedbackKind as P;
    match k {
        EventKind::Submitted => P::Submitted,
        EventKind::Delivered => P::Delivered,
        EventKind::Acknowledged => P::Acknowledged,
        EventKind::Accepted => P::Accepted,
        EventKind::Declined => P::Declined,
        EventKind::Redirected => P::Redirected,
        EventKind::InProgress => P::InProgress,
        EventKind::FollowUp => P::FollowUp,
        EventKind::Completed => P::Completed,
        EventKind::Failed => P::Failed,
        EventKind::Withdrawn => P::Withdrawn,
        EventKind::EnteredInError => P::EnteredInError,
        EventKind::Escalated => P::Escalated,
        EventKind::FollowUpOverdue => P::FollowUpOverdue,
        EventKind::FollowUpDelegated => P::FollowUpDelegated,
        EventKind::DelegationRevoked => P::DelegationRevoked,
        EventKind::NoCandidateAccepted => P::NoCandidateAccepted,
        EventKind::ConsentWithdrawn => P::ConsentWithdrawn,
    }
}

pub fn timestamp(t: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    }
}

pub fn event(e: &Event) -> pb::FeedbackEvent {
    use pb::feedback_event::Details;
    let details = match &e.details {
        EventDetails::None => None,
        EventDetails::Accepted {
            planned_action,
            planned_date,
        } => Some(Details::Accepted(pb::Acceptance {
            planned_action: planned_action.as_str().to_owned(),
            planned_date: planned_date.clone(),
        })),
        EventDetails::Declined {
            reason_code,
            reason_text,
        } => Some(Details::Declined(pb::Decline {
            reason_code: reason_code.as_str().to_owned(),
            reason_text: reason_text.as_str().to_owned(),
        })),
        // The re-sealed case file joins the new recipient's copy of the referral (`referral`).
        EventDetails::Redirected { to, reason, .. } => Some(Details::Redirected(pb::Redirect {
            to_agency_id: to.as_str().to_owned(),
            reason: reason.as_str().to_owned(),
            case_file: Vec::new(),
        })),
        EventDetails::FollowUp { activity, date } => Some(Details::FollowUp(pb::FollowUp {
            activity: activity.as_str().to_owned(),
            date: date.clone(),
        })),
        EventDetails::Completed {
            outcome_code,
            summary,
        } => Some(Details::Completed(pb::Outcome {
            outcome_code: outcome_code.as_str().to_owned(),
            summary: summary.as_str().to_owned(),
        })),
        EventDetails::Failed { reason } => Some(Details::Failed(pb::Failure {
            reason: reason.as_str().to_owned(),
        })),
        EventDetails::Escalated { tier, to } => Some(Details::Escalated(pb::Escalation {
            tier: *tier,
            to_agency_ids: to.iter().map(ToString::to_string).collect(),
        })),
        EventDetails::FollowUpOverdue {
            due_at,
            missed_in_a_row,
            ..
        } => Some(Details::FollowUpOverdue(pb::MissedVisit {
            due_at: Some(timestamp(*due_at)),
            missed_in_a_row: *missed_in_a_row,
        })),
        EventDetails::FollowUpDelegated {
            to,
            reason,
            follow_up_part,
        } => Some(Details::Delegated(pb::Delegation {
            to_agency_id: to.to_string(),
            reason: reason.as_str().to_owned(),
            follow_up_case_file: follow_up_part.as_bytes().to_vec(),
        })),
        EventDetails::DelegationRevoked { from } => {
            Some(Details::DelegationRevoked(pb::Delegation {
                to_agency_id: from.to_string(),
                ..Default::default()
            }))
        }
        EventDetails::EmergencyException { reason } => {
            Some(Details::EmergencyException(pb::EmergencyException {
                reason: reason.to_string(),
            }))
        }
        EventDetails::ConsentWithdrawn { by, at } => {
            Some(Details::ConsentWithdrawn(consent::withdrawal_pb(*by, *at)))
        }
    };
    pb::FeedbackEvent {
        event_id: e.id.to_string(),
        referral_id: e.referral_id.to_string(),
        kind: event_kind(e.kind) as i32,
        actor_agency_id: e.actor.to_string(),
        actor_person: e.actor_person.as_str().to_owned(),
        at: Some(timestamp(e.at)),
        note: e.note.as_str().to_owned(),
        state_after: state(e.state_after) as i32,
        details,
        next_visit: e.next_visit.map(|v| pb::NextVisit {
            due_at: Some(timestamp(v.due_at)),
            grace_seconds: v.grace_seconds,
            every_seconds: v.every_seconds,
        }),
        sealed_text: e.sealed_text.as_bytes().to_vec(),
    }
}

pub fn audience(a: Audience) -> pb::Audience {
    match a {
        Audience::Sender => pb::Audience::Sender,
        Audience::Recipient => pb::Audience::Recipient,
        Audience::FormerRecipient => pb::Audience::FormerRecipient,
        Audience::Notified => pb::Audience::Notified,
        Audience::Delegate => pb::Audience::Delegate,
        Audience::Candidate => pb::Audience::Candidate,
    }
}

fn sex_pb(s: Sex) -> pb::Sex {
    match s {
        Sex::Female => pb::Sex::Female,
        Sex::Male => pb::Sex::Male,
        Sex::Other => pb::Sex::Other,
        Sex::Unknown => pb::Sex::Unknown,
    }
}

fn age_band_pb(a: AgeBand) -> pb::AgeBand {
    use pb::AgeBand as A;
    match a {
        AgeBand::Age0To4 => A::AgeBand04,
        AgeBand::Age5To9 => A::AgeBand59,
        AgeBand::Age10To14 => A::AgeBand1014,
        AgeBand::Age15To17 => A::AgeBand1517,
        AgeBand::Age18To24 => A::AgeBand1824,
        AgeBand::Age25To59 => A::AgeBand2559,
        AgeBand::Age60Plus => A::AgeBand60Plus,
        AgeBand::Unknown => A::Unknown,
    }
}

fn urgency_pb(u: Urgency) -> pb::Urgency {
    match u {
        Urgency::Emergency => pb::Urgency::Emergency,
        Urgency::Urgent => pb::Urgency::Urgent,
        Urgency::Routine => pb::Urgency::Routine,
    }
}

pub fn envelope(r: &Referral) -> pb::Envelope {
    let target = match &r.addressee {
        Addressee::Agency(a) => pb::recipient::Target::AgencyId(a.to_string()),
        Addressee::Service { service, province } => {
            pb::recipient::Target::Service(pb::ServiceInProvince {
                service: service.to_string(),
                province: province.to_string(),
            })
        }
    };
    pb::Envelope {
        referral_id: r.id.to_string(),
        client_ref: r.client_ref.to_string(),
        sender_agency_id: r.sender.to_string(),
        requested_recipient: Some(pb::Recipient {
            target: Some(target),
        }),
        recipient_agency_id: r
            .recipient
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        kind: r.kind.to_string(),
        urgency: urgency_pb(r.urgency) as i32,
        subject: Some(pb::Subject {
            sex: sex_pb(r.subject.sex) as i32,
            age_band: age_band_pb(r.subject.age_band) as i32,
            province: r.subject.province.to_string(),
        }),
        created_at: Some(timestamp(r.created_at)),
        updated_at: Some(timestamp(r.updated_at)),
        client_pseudonym: r
            .client_pseudonym
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        candidate_agency_ids: r.candidates.iter().map(|a| a.to_string()).collect(),
        notified_agency_ids: r.notify.iter().map(|a| a.to_string()).collect(),
        follows_referral_id: r.follows.map(|f| f.to_string()).unwrap_or_default(),
        consent: r.consent.as_ref().map(consent::consent_pb),
    }
}

/// A referral with its history, as the party its view was made for may see it: each event through
/// the view too ([`ReferralView::event`]).
pub fn referral(view: ReferralView, history: &[Event]) -> pb::Referral {
    let events = history.iter().map(|e| event(&view.event(e))).collect();
    let audience = audience(view.audience()) as i32;
    let mut r = view.into_referral();
    let envelope = envelope(&r);
    let referral_state = state(r.state) as i32;
    // Who reads the case file reads it with the boxes each redirect sealed to its new recipient.
    let own = std::mem::take(&mut r.case_file);
    let case_file = if own.is_empty() {
        own
    } else {
        history
            .iter()
            .filter_map(|e| match &e.details {
                EventDetails::Redirected { case_file, .. } => Some(case_file),
                _ => None,
            })
            .fold(own, |all, more| all.joined(more))
    };
    pb::Referral {
        audience,
        envelope: Some(envelope),
        state: referral_state,
        history: events,
        case_file: case_file.into_bytes(),
    }
}

/// One delivery as it goes down a `Subscribe` stream (or into an agency's queue).
pub fn delivery(delivery_id: uuid::Uuid, content: DeliveryContent) -> pb::Delivery {
    pb::Delivery {
        delivery_id: delivery_id.to_string(),
        payload: Some(payload(content)),
        audit_head: None,
    }
}

/// An audit head as the wire carries it (`spean.v1.AuditHead`).
pub fn audit_head(head: spean_domain::audit::Head) -> pb::AuditHead {
    pb::AuditHead {
        seq: head.seq,
        hash: head.hash.0.to_vec(),
    }
}

/// A head from the wire; `None` for an empty log's (seq 0) and for a hash of the wrong length.
pub fn parse_audit_head(head: &pb::AuditHead) -> Option<spean_domain::audit::Head> {
    let hash = spean_domain::audit::Hash::from_slice(&head.hash)?;
    (head.seq > 0).then_some(spean_domain::audit::Head {
        seq: head.seq,
        hash,
    })
}

/// What a delivery carries, without its id.
pub fn payload(content: DeliveryContent) -> pb::delivery::Payload {
    match content {
        DeliveryContent::Referral(r, history) => {
            pb::delivery::Payload::Referral(referral(*r, &history))
        }
        DeliveryContent::Event(event) => pb::delivery::Payload::Feedback(self::event(&event)),
    }
}

/// A delivery's content encoded when its change is written, to be carried in its outbox row: a
/// `spean.v1.Delivery` without its `delivery_id`. The relay then publishes it without reading the
/// referral or event back from the store.
pub fn carried(content: DeliveryContent) -> Vec<u8> {
    pb::Delivery {
        delivery_id: String::new(),
        payload: Some(payload(content)),
        audit_head: None,
    }
    .encode_to_vec()
}

/// A [`carried`] delivery with its id, encoded. Protobuf reads concatenated messages as one (a
/// field present in both takes the later value, and `carried` has no id), so the id's encoding
/// followed by the carried bytes is the whole delivery, byte for byte what encoding it whole gives.
pub fn with_id(delivery_id: uuid::Uuid, carried: &[u8]) -> Vec<u8> {
    let head = pb::Delivery {
        delivery_id: delivery_id.to_string(),
        payload: None,
        audit_head: None,
    };
    let mut out = head.encode_to_vec();
    out.extend_from_slice(carried);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Story 1's referral, which is valid; each test breaks one field of it.
    fn valid() -> pb::SubmitRequest {
        spean_testkit::lama("ahc-0001")
    }

    fn field_of(req: pb::SubmitRequest) -> String {
        new_referral(req).unwrap_err().field
    }

    #[test]
    fn a_valid_submission_parses() {
        assert!(new_referral(valid()).is_ok());
    }

    #[test]
    fn who_else_a_referral_reaches_is_checked_field_by_field() {
        let mut r = valid();
        r.recipient = Some(pb::Recipient {
            target: Some(pb::recipient::Target::AgencyId("mlup-russey".into())),
        });
        r.broadcast = Some(true);
        assert_eq!(field_of(r), "broadcast");
        let mut r = valid();
        r.notify_agency_ids = vec!["dosvy-24".into(), "dosvy-24".into()];
        assert_eq!(field_of(r), "notify_agency_ids");
        let mut r = valid();
        r.notify_agency_ids = (0..=MAX_NOTIFIED).map(|n| format!("agency-{n}")).collect();
        assert_eq!(field_of(r), "notify_agency_ids");
        let mut r = valid();
        r.notify_agency_ids = vec!["Not An Id".into()];
        assert_eq!(field_of(r), "notify_agency_ids");
        let mut r = valid();
        r.follows_referral_id = "yesterday's".into();
        assert_eq!(field_of(r), "follows_referral_id");
        // A placement addressed by service and province is a broadcast unless asked otherwise;
        // a referral to one agency never is.
        let placement = new_referral(spean_testkit::placement("p-1")).unwrap();
        assert!(placement.is_broadcast());
        let mut one = spean_testkit::placement("p-2");
        one.broadcast = Some(false);
        assert!(!new_referral(one).unwrap().is_broadcast());
        assert!(!new_referral(valid()).unwrap().is_broadcast());
        let mut asked = valid();
        asked.broadcast = Some(true);
        assert!(new_referral(asked).unwrap().is_broadcast());
    }

    #[test]
    fn who_else_a_referral_reaches_is_part_of_its_fingerprint() {
        // The same client_ref with another notify list, or another choice of broadcast, is
        // another referral: ALREADY_EXISTS, not a retry.
        let plain = new_referral(valid()).unwrap();
        let mut named = valid();
        named.notify_agency_ids = vec!["dosvy-24".into()];
        let named = new_referral(named).unwrap();
        assert_ne!(plain.fingerprint(), named.fingerprint());
        let mut asked = valid();
        asked.broadcast = Some(false);
        assert_ne!(
            plain.fingerprint(),
            new_referral(asked).unwrap().fingerprint()
        );
    }

    #[test]
    fn each_invalid_field_is_named() {
        let mut r = valid();
        r.client_ref = String::new();
        assert_eq!(field_of(r), "client_ref");
        let mut r = valid();
        r.recipient = None;
        assert_eq!(field_of(r), "recipient");
        let mut r = valid();
        r.recipient = Some(pb::Recipient {
            target: Some(pb::recipient::Target::Service(pb::ServiceInProvince {
                service: "reintegration_follow_up".into(),
                province: "99".into(),
            })),
        });
        assert_eq!(field_of(r), "recipient.service.province");
        let mut r = valid();
        r.urgency = 0;
        assert_eq!(field_of(r), "urgency");
        let mut r = valid();
        r.urgency = 42;
        assert_eq!(field_of(r), "urgency");
        let mut r = valid();
        r.subject.as_mut().unwrap().age_band = 0;
        assert_eq!(field_of(r), "subject.age_band");
        let mut r = valid();
        r.case_file.clear();
        assert_eq!(field_of(r), "case_file");
        let mut r = valid();
        r.kind = "LAMA!".into();
        assert_eq!(field_of(r), "kind");
    }

    #[test]
    fn a_cleartext_case_file_is_refused_naming_the_field() {
        let mut r = valid();
        r.case_file = spean_testkit::case_file();
        let err = new_referral(r).unwrap_err();
        assert_eq!(err.field, "case_file");
        // A `CaseFile` is protobuf too: its name reads as a box, which is malformed.
        assert!(err.reason.contains("a box's"), "{}", err.reason);
        let mut r = valid();
        r.case_file = "សុខ ស្រីល័ក្ខ".as_bytes().to_vec();
        let err = new_referral(r).unwrap_err();
        assert_eq!(err.field, "case_file");
        assert!(
            err.reason.contains("cleartext is refused"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn a_decline_needs_its_code_and_its_sealed_reason() {
        let decline_of = |code: &str, sealed_text: Vec<u8>| {
            let request = pb::DeclineRequest {
                action: Some(pb::Action {
                    sealed_text,
                    ..with_action("", "")
                }),
                decline: Some(pb::Decline {
                    reason_code: code.into(),
                    reason_text: String::new(),
                }),
            };
            request.into_action()
        };
        let text = sealed_text("mlup-russey");
        assert!(decline_of("no_capacity", text.clone()).is_ok());
        assert_eq!(
            decline_of("no_capacity", Vec::new()).unwrap_err().field,
            "action.sealed_text"
        );
        assert_eq!(
            decline_of("", text).unwrap_err().field,
            "decline.reason_code"
        );
    }

    fn with_action(note: &str, person: &str) -> pb::Action {
        pb::Action {
            referral_id: "0190e1f0-0000-7000-8000-000000000001".into(),
            request_id: "r-1".into(),
            actor_person: person.into(),
            note: note.into(),
            sealed_text: Vec::new(),
        }
    }

    fn sealed_text(by: &str) -> Vec<u8> {
        spean_testkit::sealed::seal_text(
            by,
            "0190e1f0-0000-7000-8000-000000000001",
            &pb::FreeText {
                actor_person: "សុភា".into(),
                note: "កុមារនៅផ្ទះ".into(),
                detail: "គ្មានគ្រួសារ".into(),
            },
            &["ahc-swu"],
        )
    }

    /// Whatever a person wrote is refused in clear, in every field of every feedback request,
    /// naming the field: it travels sealed, so the broker never holds it readable.
    #[test]
    fn every_free_text_field_is_refused_in_clear() {
        let text = "សុខ ស្រីល័ក្ខ";
        let field = |r: Result<Action, FieldError>| r.unwrap_err().field;
        assert_eq!(
            field(action(
                Some(with_action(text, "")),
                EventKind::Acknowledged,
                EventDetails::None
            )),
            "action.note"
        );
        assert_eq!(
            field(action(
                Some(with_action("", text)),
                EventKind::Acknowledged,
                EventDetails::None
            )),
            "action.actor_person"
        );
        let refused = |r: Result<EventDetails, FieldError>| r.unwrap_err().field;
        assert_eq!(
            refused(acceptance(Some(pb::Acceptance {
                planned_action: text.into(),
                planned_date: "2026-11-24".into(),
            }))),
            "acceptance.planned_action"
        );
        assert_eq!(
            refused(decline(Some(pb::Decline {
                reason_code: "no_capacity".into(),
                reason_text: text.into(),
            }))),
            "decline.reason_text"
        );
        assert_eq!(
            refused(redirect(Some(pb::Redirect {
                to_agency_id: "mlup-russey".into(),
                reason: text.into(),
                case_file: Vec::new(),
            }))),
            "redirect.reason"
        );
        assert_eq!(
            refused(outcome(Some(pb::Outcome {
                outcome_code: "reunified".into(),
                summary: text.into(),
            }))),
            "outcome.summary"
        );
        assert_eq!(
            refused(failure(Some(pb::Failure {
                reason: text.into()
            }))),
            "failure.reason"
        );
        // Sealed, the same words pass through untouched.
        let sealed = sealed_text("mlup-russey");
        let ok = action(
            Some(pb::Action {
                sealed_text: sealed.clone(),
                ..with_action("", "")
            }),
            EventKind::Acknowledged,
            EventDetails::None,
        )
        .unwrap();
        assert_eq!(ok.sealed_text.as_bytes(), sealed.as_slice());
        assert!(ok.note.as_str().is_empty());
    }

    #[test]
    fn a_redirect_needs_the_case_file_sealed_to_its_new_recipient() {
        let redirect_with = |case_file: Vec<u8>| {
            redirect(Some(pb::Redirect {
                to_agency_id: "dosvy-24".into(),
                reason: String::new(),
                case_file,
            }))
        };
        let err = redirect_with(Vec::new()).unwrap_err();
        assert_eq!(err.field, "redirect.case_file");
        let to_someone_else = spean_testkit::sealed::reseal_case_file(
            "mlup-russey",
            "ahc-swu",
            "ahc-0001",
            &spean_testkit::case_file(),
            "fcf-kandal",
        );
        let err = redirect_with(to_someone_else).unwrap_err();
        assert!(err.reason.contains("no box for dosvy-24"), "{}", err.reason);
        let resealed = spean_testkit::sealed::reseal_case_file(
            "mlup-russey",
            "ahc-swu",
            "ahc-0001",
            &spean_testkit::case_file(),
            "dosvy-24",
        );
        assert!(matches!(
            redirect_with(resealed),
            Ok(EventDetails::Redirected { case_file, .. }) if !case_file.is_empty()
        ));
    }
}
