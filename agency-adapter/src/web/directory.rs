//! The broker's directory as the pages need it: agencies and their names for the send form, kinds
//! with their acknowledgement deadlines for the inbox's countdown, provinces with their Khmer and
//! English names. Read from the broker at most every [`FRESH_FOR`] and kept in memory, so a page
//! asks the broker rarely, and still has the last copy when the broker cannot be reached.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use spean_proto::v1::{
    Agency, AgencyType, Kind, ListAgenciesRequest, ListKindsRequest, ListProvincesRequest, Province,
};
use tokio::sync::Mutex;

use super::i18n::Lang;
use crate::{AdapterError, broker::Broker, cli::Context, coordinator::bounded, link::Link};

/// How long a copy is used before it is read again.
const FRESH_FOR: Duration = Duration::from_secs(600);
/// How long a page waits for the broker's directory before it goes on without it.
const WAIT: Duration = Duration::from_secs(4);

/// What the pages know of the network.
#[derive(Debug, Default)]
pub struct Directory {
    pub agencies: Vec<Agency>,
    pub kinds: Vec<Kind>,
    pub provinces: Vec<Province>,
}

impl Directory {
    /// Seconds a recipient has to acknowledge a referral of `kind` and `urgency`; `None` when
    /// the kind is unknown or the network escalates nothing.
    pub fn acknowledge_within(&self, kind: &str, urgency: &str) -> Option<u64> {
        let kind = self.kinds.iter().find(|k| k.kind == kind)?;
        let seconds = match urgency {
            "emergency" => kind.acknowledge_within_emergency_seconds,
            "urgent" => kind.acknowledge_within_urgent_seconds,
            _ => kind.acknowledge_within_routine_seconds,
        };
        (seconds > 0).then_some(u64::from(seconds))
    }

    /// "Name (id)" of an agency, or its id alone when the directory does not list it.
    pub fn agency_label(&self, id: &str) -> String {
        match self.agencies.iter().find(|a| a.id == id) {
            Some(agency) => format!("{} ({id})", agency.name),
            None => id.to_owned(),
        }
    }

    /// A province's name in `lang`, or its code.
    pub fn province_name(&self, code: &str, lang: Lang) -> String {
        match self.provinces.iter().find(|p| p.code == code) {
            Some(p) if lang == Lang::Km && !p.name_km.is_empty() => p.name_km.clone(),
            Some(p) => p.name_en.clone(),
            None => code.to_owned(),
        }
    }

    /// Whether the directory lists `id` as a coordinator or a provincial department: they see the
    /// network's pages.
    pub fn oversees(&self, id: &str) -> bool {
        self.agencies.iter().any(|a| {
            a.id == id
                && matches!(
                    AgencyType::try_from(a.r#type),
                    Ok(AgencyType::Coordinator | AgencyType::Authority)
                )
        })
    }
}

/// Names of agencies and provinces as a page shows them: from the directory when one was read,
/// else their ids and codes.
#[derive(Clone, Copy)]
pub struct Names<'a> {
    pub directory: Option<&'a Directory>,
    pub lang: Lang,
}

impl Names<'_> {
    /// "Name (id)", or the id alone.
    pub fn agency(&self, id: &str) -> String {
        match self.directory {
            Some(d) if !id.is_empty() => d.agency_label(id),
            _ => id.to_owned(),
        }
    }

    /// The province's name in the page's language, or its code.
    pub fn province(&self, code: &str) -> String {
        self.directory
            .map_or_else(|| code.to_owned(), |d| d.province_name(code, self.lang))
    }
}

/// The copy kept between pages.
#[derive(Default)]
pub struct Cached {
    copy: Mutex<Option<(Instant, Arc<Directory>)>>,
}

impl Cached {
    /// The directory: the kept copy while fresh; else read again, unless the daemon finds the
    /// broker out of reach and a copy is kept; else the kept copy, if any.
    pub(crate) async fn get(&self, ctx: &Context, link: &Link) -> Option<Arc<Directory>> {
        let mut copy = self.copy.lock().await;
        if let Some((read_at, directory)) = copy.as_ref()
            && (read_at.elapsed() < FRESH_FOR || !link.is_up())
        {
            return Some(directory.clone());
        }
        match tokio::time::timeout(WAIT, read(ctx)).await {
            Ok(Ok(directory)) => {
                let directory = Arc::new(directory);
                *copy = Some((Instant::now(), directory.clone()));
                Some(directory)
            }
            Ok(Err(error)) => {
                tracing::debug!(error = %error, "directory not read; the pages go on without it");
                copy.as_ref().map(|(_, d)| d.clone())
            }
            Err(_) => copy.as_ref().map(|(_, d)| d.clone()),
        }
    }
}

async fn read(ctx: &Context) -> Result<Directory, AdapterError> {
    let mut broker = Broker::connect(&ctx.settings.broker, &ctx.identity).await?;
    let agencies = bounded(
        broker
            .directory
            .list_agencies(ListAgenciesRequest::default()),
    )
    .await?
    .agencies;
    let kinds = bounded(broker.directory.list_kinds(ListKindsRequest {}))
        .await?
        .kinds;
    let provinces = bounded(broker.directory.list_provinces(ListProvincesRequest {}))
        .await?
        .provinces;
    Ok(Directory {
        agencies,
        kinds,
        provinces,
    })
}
