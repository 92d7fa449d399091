//! `overdue` and `figures`: questions only the broker can answer (they cover other agencies'
//! referrals, which this store does not hold), so they need it online and queue nothing. The broker
//! answers `overdue` and `figures --network` only for agencies the directory lists as coordinator or
//! authority, within their provinces; its refusal is printed as such and the command exits 1.

use anyhow::anyhow;
use clap::Args;
use serde_json::{Value, json};
use spean_domain::ids::{AgencyId, ProvinceCode};
use spean_proto::v1::{
    FiguresRequest, ListOverdueRequest, OverdueReason, OverdueReferral, Urgency,
};

use super::{Context, UrgencyArg, print_json, views};
use crate::{
    AdapterError,
    broker::Broker,
    coordinator::{self, Scope},
    figures,
    referral::{state_name, urgency_name},
    store::timestamp,
};

#[derive(Debug, Args)]
pub struct OverdueArgs {
    /// Only this province (two-digit code; within the caller's provinces).
    #[arg(long, value_name = "CODE")]
    pub province: Option<String>,
    /// Only referrals waiting on this agency (their recipient, or the delegate of their follow-up).
    #[arg(long, value_name = "AGENCY")]
    pub agency: Option<String>,
    /// Only this referral kind.
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    #[arg(long, value_enum)]
    pub urgency: Option<UrgencyArg>,
    /// One JSON array on one line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `figures --help` ends with the CSV layout, which scripts and spreadsheets rely on.
const FIGURES_CSV_HELP: &str = "\
CSV (--csv): a header line `group,key,metric,total,female`, then one row per (group, metric, key).
  group   whose figures: `all`, `agency:<agency id>` (as recipient) or `province:<code>` (the
          subject's province).
  key     for a breakdown (decline_reasons, by_kind, by_state, by_province, by_sex, by_age_band)
          the value tallied, e.g. `lama`; empty for the other metrics.
  metric  the figure, by its proto name: referrals, median_seconds_to_acknowledge,
          p90_seconds_to_acknowledge, median_seconds_to_accept, p90_seconds_to_accept,
          acknowledged_within_deadline, acknowledgement_due, the breakdowns, followed_up,
          follow_up_visits, missed_visits, escalations.
  total   the count, or the value (times in seconds; empty when there is no time to report).
  female  how many of the count are about women and girls; empty for figures that are not counts
          of referrals (times, acknowledgements, visits, missed visits, escalations).";

#[derive(Debug, Args)]
#[command(after_long_help = FIGURES_CSV_HELP)]
pub struct FiguresArgs {
    /// The first day counted (YYYY-MM-DD, a Cambodia day: from 00:00 UTC+7).
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub from: String,
    /// The last day counted, included (YYYY-MM-DD, a Cambodia day: up to 24:00 UTC+7).
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub to: String,
    /// Only referrals about subjects living in this province (two-digit code).
    #[arg(long, value_name = "CODE")]
    pub province: Option<String>,
    /// The network's figures in this agency's provinces (coordinators and authorities only),
    /// instead of this agency's own.
    #[arg(long)]
    pub network: bool,
    /// The response as one JSON object on one line, with the proto's snake_case field names.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// One CSV row per group, metric and key (see below).
    #[arg(long)]
    pub csv: bool,
}

pub(super) async fn overdue(ctx: &Context, args: OverdueArgs) -> anyhow::Result<()> {
    let filter = overdue_filter(&args)?;
    let mut broker = connect(ctx, "overdue").await?;
    let referrals = coordinator::list_overdue(&mut broker, filter)
        .await
        .map_err(|error| explain(error, "list overdue referrals", ONLY_COORDINATORS))?;
    if args.json {
        return print_json(&referrals.iter().map(overdue_json).collect::<Vec<_>>());
    }
    let mut table = views::table(&[
        "referral",
        "kind",
        "urgency",
        "province",
        "waiting on",
        "reason",
        "overdue since",
        "times",
        "escalated to",
    ]);
    for r in &referrals {
        let o = overdue_json(r);
        let text = |key: &str| o[key].as_str().unwrap_or_default().to_owned();
        table.add_row(views::cells(vec![
            text("referral_id"),
            text("kind"),
            text("urgency"),
            text("province"),
            text("waiting_on_agency_id"),
            text("reason"),
            text("overdue_since"),
            r.times.to_string(),
            r.escalated_to.join(", "),
        ]));
    }
    println!("{table}");
    Ok(())
}

/// The filters, checked by the network's rules before anything is asked.
fn overdue_filter(args: &OverdueArgs) -> Result<ListOverdueRequest, AdapterError> {
    Ok(ListOverdueRequest {
        province: match &args.province {
            Some(code) => ProvinceCode::parse("province", code)?.to_string(),
            None => String::new(),
        },
        agency_id: match &args.agency {
            Some(agency) => AgencyId::parse("agency", agency)?.to_string(),
            None => String::new(),
        },
        kind: args.kind.clone().unwrap_or_default(),
        urgency: args.urgency.map_or(Urgency::Unspecified, Urgency::from) as i32,
        ..ListOverdueRequest::default()
    })
}

fn overdue_json(r: &OverdueReferral) -> Value {
    let envelope = r.envelope.clone().unwrap_or_default();
    let province = envelope.subject.map(|s| s.province).unwrap_or_default();
    json!({
        "referral_id": envelope.referral_id,
        "sender_agency_id": envelope.sender_agency_id,
        "recipient_agency_id": envelope.recipient_agency_id,
        "kind": envelope.kind,
        "urgency": urgency_name(envelope.urgency),
        "province": province,
        "state": state_name(r.state),
        "reason": reason_name(r.reason),
        "waiting_on_agency_id": r.waiting_on_agency_id,
        "overdue_since": timestamp(r.overdue_since.as_ref()),
        "times": r.times,
        "escalated_to": r.escalated_to,
    })
}

/// `not_acknowledged` or `follow_up_missed`.
fn reason_name(reason: i32) -> String {
    OverdueReason::try_from(reason).map_or_else(
        |_| format!("unknown_{reason}"),
        |r| {
            r.as_str_name()
                .trim_start_matches("OVERDUE_REASON_")
                .to_ascii_lowercase()
        },
    )
}

pub(super) async fn figures(ctx: &Context, args: FiguresArgs) -> anyhow::Result<()> {
    let (from, to) = figures::cambodia_days(&args.from, &args.to)?;
    let province = match &args.province {
        Some(code) => ProvinceCode::parse("province", code)
            .map_err(AdapterError::from)?
            .to_string(),
        None => String::new(),
    };
    let scope = if args.network {
        Scope::Network
    } else {
        Scope::Own
    };
    let mut broker = connect(ctx, "figures").await?;
    let request = FiguresRequest {
        from: Some(from),
        to: Some(to),
        province,
    };
    let response = coordinator::figures(&mut broker, scope, request)
        .await
        .map_err(|error| match scope {
            Scope::Network => explain(error, "read the network's figures", ONLY_COORDINATORS),
            Scope::Own => explain(error, "read these figures", ""),
        })?;
    if args.json {
        return print_json(&figures::json(&response));
    }
    if args.csv {
        print!("{}", figures::csv(&response));
        return Ok(());
    }
    println!(
        "figures for {} to {} (Cambodia days){}",
        args.from,
        args.to,
        if args.network { ", network" } else { "" }
    );
    for (group, f) in figures::groups(&response) {
        println!("{}", views::shown(&group, views::Lines::One));
        let mut table = views::table(&["figure", "value"]);
        for (label, value) in figures::table_rows(&f) {
            table.add_row(views::cells(vec![label.to_owned(), value]));
        }
        println!("{table}");
    }
    Ok(())
}

/// Connects for a command that cannot work offline.
async fn connect(ctx: &Context, command: &str) -> anyhow::Result<Broker> {
    Broker::connect(&ctx.settings.broker, &ctx.identity)
        .await
        .map_err(|error| anyhow!("{command} asks the broker, which is needed online: {error}"))
}

/// Who may ask the coordinator service, for the refusal's message.
const ONLY_COORDINATORS: &str = ": only agencies the directory lists as coordinator or authority \
     may, within their provinces";

/// A broker refusal said plainly: PERMISSION_DENIED means this agency may not ask this, and
/// `who_may` says who may.
fn explain(error: AdapterError, what: &str, who_may: &str) -> anyhow::Error {
    match &error {
        AdapterError::Rejected {
            code: "PERMISSION_DENIED",
            message,
        } => anyhow!("PERMISSION_DENIED: this agency may not {what}{who_may} (broker: {message})"),
        _ => anyhow::Error::new(error).context(format!("cannot {what}")),
    }
}
