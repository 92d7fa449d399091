//! The system under test as a black box: a real `spean-broker serve` process with a generated
//! directory, gRPC clients holding agencies' certificates, adapter-equivalent subscribers, and one
//! idle real `spean-adapter` for its memory.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use spean_adapter::broker::Broker as AdapterBroker;
use spean_adapter::delivery;
use spean_adapter::identity::Identity;
use spean_adapter::store::Store;
use spean_proto::v1 as pb;
use spean_proto::v1::referral_service_client::ReferralServiceClient;
use spean_testkit::{AdapterProcess, Patience};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::load::Submitter;
use crate::probe::{self, Memory};
use crate::recorder::Recorder;

/// The agency ids of a generated directory: `bench-0000`, `bench-0001`, …
pub fn agency_ids(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("bench-{i:04}")).collect()
}

/// Writes a directory seed with `ids` plus `extra` (agencies that take no part in the load).
fn write_seed(path: &Path, ids: &[String]) -> anyhow::Result<()> {
    let agencies: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| {
            serde_json::json!({
                "id": id, "name": format!("Benchmark agency {id}"), "type": "ngo",
                "provinces": ["12"], "services": ["lama"],
            })
        })
        .collect();
    let seed = serde_json::json!({"referral_kinds": [{"kind": "lama"}], "agencies": agencies});
    std::fs::write(path, serde_json::to_vec(&seed)?)?;
    Ok(())
}

/// How long a broker may take to listen: a first start creates the PKI and, on the production
/// path, declares a queue per agency, which takes minutes at scale. Looked for every 50 ms, which
/// bounds the error of the startup time the report shows.
const STARTUP: Patience = Patience {
    limit: Duration::from_secs(300),
    poll: Duration::from_millis(50),
};

/// The broker under test, as the shared harness starts it, with what the benchmark reads of it.
pub struct BrokerProcess {
    process: spean_testkit::BrokerProcess,
}

impl BrokerProcess {
    /// Starts a broker over a fresh `data_dir` whose directory holds `ids`, with extra settings.
    pub async fn start(
        data_dir: &Path,
        ids: &[String],
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let seed = data_dir.join("seed.json");
        write_seed(&seed, ids)?;
        let mut all = vec![
            (
                "SPEAN_BROKER_DIRECTORY__SEED".to_owned(),
                seed.display().to_string(),
            ),
            // A few agencies here send what a whole network would: the per-agency rate limit is
            // kept (so its cost is measured) but set far above what they send.
            (
                "SPEAN_BROKER_LIMITS__REQUESTS_PER_SECOND_PER_AGENCY".to_owned(),
                "1000000".to_owned(),
            ),
            (
                "SPEAN_BROKER_LIMITS__REQUEST_BURST_PER_AGENCY".to_owned(),
                "1000000".to_owned(),
            ),
        ];
        all.extend_from_slice(env);
        let process =
            spean_testkit::BrokerProcess::start(data_dir, "127.0.0.1:0", &all, STARTUP).await?;
        Ok(Self { process })
    }

    /// How long from spawn until it accepted connections (includes creating the PKI and queues).
    pub fn startup(&self) -> Duration {
        self.process.startup
    }

    pub fn memory(&self) -> Option<Memory> {
        probe::memory(self.process.pid()?)
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub fn url(&self) -> String {
        self.process.url()
    }

    pub fn identity(&self, agency: &str) -> std::path::PathBuf {
        self.process.identity(agency)
    }

    /// The end of the broker's log, to say why a run failed.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// A TLS channel presenting `agency`'s certificate; connects on first use.
    pub fn channel(&self, agency: &str) -> anyhow::Result<Channel> {
        Ok(self
            .process
            .endpoint(agency)?
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .connect_lazy())
    }

    pub async fn stop(mut self) {
        let _ = self.process.kill().await;
    }
}

/// Sending agencies' clients; implements the load's [`Submitter`] with `Submit` calls, each case
/// file sealed as the sending agency's adapter seals it.
#[derive(Clone)]
pub struct Senders {
    clients: Arc<Vec<ReferralServiceClient<Channel>>>,
    ids: Arc<Vec<String>>,
    /// Every referral but its tag, recipient and sealed case file, built once: see [`request`].
    request: Arc<pb::SubmitRequest>,
    /// The case file in clear, sealed anew for each referral.
    case_file: Arc<Vec<u8>>,
    /// Each agency's sealing key, as its receiving adapter's store holds (and published) it.
    keys: Arc<Vec<spean_seal::SecretKey>>,
}

impl Senders {
    /// Built once the receivers of [`subscribe_all`] are up: their stores under `store_dir` hold the
    /// keys they published, which the senders seal to (and, as the same agencies, seal with).
    pub async fn new(
        broker: &BrokerProcess,
        ids: &[String],
        store_dir: &Path,
    ) -> anyhow::Result<Self> {
        let clients = ids
            .iter()
            .map(|id| Ok(ReferralServiceClient::new(broker.channel(id)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut keys = Vec::with_capacity(ids.len());
        for id in ids {
            let identity = Identity::load(&broker.identity(id))?;
            let store = Store::open(
                &store_dir.join(format!("receiver-{id}.db")),
                &identity.agency_id,
            )
            .await?;
            let key = store.seal_keys().await?.into_iter().next();
            store.close().await;
            keys.push(key.ok_or_else(|| anyhow::anyhow!("{id} has no sealing key"))?);
        }
        Ok(Self {
            clients: Arc::new(clients),
            ids: Arc::new(ids.to_vec()),
            request: Arc::new(request()),
            case_file: Arc::new(case_file()),
            keys: Arc::new(keys),
        })
    }

    /// The case file sealed by `from` to `to` and itself, bound to `client_ref`.
    fn sealed(&self, from: usize, to: usize, client_ref: &str) -> Result<Vec<u8>, String> {
        let (sender, recipient) = (&self.ids[from], &self.ids[to]);
        let sealed = spean_seal::seal(
            &self.case_file,
            spean_seal::Purpose::CaseFile { sender, client_ref },
            (sender, &self.keys[from]),
            &[
                (recipient, self.keys[to].public()),
                (sender, self.keys[from].public()),
            ],
        )
        .map_err(|e| e.to_string())?;
        Ok(prost::Message::encode_to_vec(&sealed))
    }
}

/// What sealing costs on this machine, measured apart from the load (`rounds` times each): one
/// ~1 KiB case file sealed to its recipient and its sender, as an adapter sends it, and opened by
/// the recipient, as its adapter does before storing it. In microseconds, the median.
pub fn sealing_cost(rounds: usize) -> (f64, f64) {
    let (sender, recipient) = (
        spean_seal::SecretKey::generate(),
        spean_seal::SecretKey::generate(),
    );
    let plain = case_file();
    let purpose = spean_seal::Purpose::CaseFile {
        sender: "ahc-swu",
        client_ref: "bench-0001",
    };
    let mut seal_us = Vec::with_capacity(rounds);
    let mut open_us = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = std::time::Instant::now();
        let Ok(sealed) = spean_seal::seal(
            &plain,
            purpose,
            ("ahc-swu", &sender),
            &[
                ("mlup-russey", recipient.public()),
                ("ahc-swu", sender.public()),
            ],
        ) else {
            continue;
        };
        seal_us.push(started.elapsed().as_secs_f64() * 1e6);
        let started = std::time::Instant::now();
        let opened = spean_seal::box_for(&sealed, "mlup-russey")
            .map(|b| spean_seal::open_box(b, &recipient, sender.public(), purpose));
        open_us.push(started.elapsed().as_secs_f64() * 1e6);
        debug_assert!(matches!(opened, Some(Ok(_))));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    (median(seal_us), median(open_us))
}

impl Submitter for Senders {
    /// `delivered`, to the sender and to the recipient.
    const FEEDBACK_PER_MESSAGE: u64 = 2;

    async fn submit(&self, from: usize, to: usize, tag: String) -> Result<(), String> {
        let request = pb::SubmitRequest {
            case_file: self.sealed(from, to, &tag)?,
            client_ref: tag,
            recipient: Some(pb::Recipient {
                target: Some(pb::recipient::Target::AgencyId(self.ids[to].clone())),
            }),
            ..self.request.as_ref().clone()
        };
        let mut client = self.clients[from].clone();
        client
            .submit(request)
            .await
            .map(|_| ())
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    }
}

/// Story 1's referral as the benchmark sends it, without its tag and recipient: routine rather
/// than an emergency, about a child in province 12 (where every benchmark agency works), with the
/// same ~1 KiB case file in every referral.
fn request() -> pb::SubmitRequest {
    let story = spean_testkit::lama("");
    pb::SubmitRequest {
        recipient: None,
        urgency: pb::Urgency::Routine as i32,
        subject: story.subject.map(|subject| pb::Subject {
            province: "12".into(),
            ..subject
        }),
        case_file: Vec::new(),
        ..story
    }
}

/// A case file of about 1 KiB with Khmer text, like a real LAMA referral's: story 1's child, with
/// notes added until it weighs what a real one does.
fn case_file() -> Vec<u8> {
    let mut file = pb::CaseFile {
        name: Some(pb::PersonName {
            khmer: spean_testkit::KHMER_NAME.into(),
            latin: spean_testkit::LATIN_NAME.into(),
        }),
        date_of_birth: "2019-03-14".into(),
        reason_for_referral: "ក្រុមគ្រួសារចង់នាំកុមារចេញពីមន្ទីរពេទ្យមុនពេលព្យាបាលចប់".into(),
        ..Default::default()
    };
    while prost::Message::encoded_len(&file) < 1000 {
        file.notes.push_str("កុមារត្រូវការការតាមដានបន្ត។ ");
    }
    prost::Message::encode_to_vec(&file)
}

/// Receives for each agency the way its adapter does, with the adapter's own code: a
/// `spean_adapter::store::Store` (SQLite, `synchronous=FULL`) under `store_dir`, and
/// `spean_adapter::delivery::subscribe`, which stores each batch of deliveries in one transaction and
/// only then confirms it. A referral counts as received when its confirmation is on its way. Returns
/// once every stream is open; a broken stream is reopened.
pub async fn subscribe_all(
    broker: &BrokerProcess,
    ids: &[String],
    store_dir: &Path,
    recorder: &Arc<Recorder>,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let open = Arc::new(AtomicUsize::new(0));
    let url = broker.url();
    for id in ids {
        let identity = Identity::load(&broker.identity(id))?;
        let store = Store::open(
            &store_dir.join(format!("receiver-{id}.db")),
            &identity.agency_id,
        )
        .await?;
        let (recorder, open, url) = (recorder.clone(), open.clone(), url.clone());
        tasks.spawn(async move {
            let mut counted = false;
            // Never cancelled: the benchmark ends these tasks by aborting them.
            let running = CancellationToken::new();
            loop {
                let result = match AdapterBroker::connect(&url, &identity).await {
                    Ok(mut channel) => {
                        delivery::subscribe(
                            &mut channel,
                            &store,
                            &running,
                            || {
                                if !counted {
                                    open.fetch_add(1, Ordering::Relaxed);
                                    counted = true;
                                }
                            },
                            |d| match &d.payload {
                                Some(pb::delivery::Payload::Referral(r)) => {
                                    if let Some(envelope) = &r.envelope {
                                        recorder.received(&envelope.client_ref);
                                    }
                                }
                                Some(pb::delivery::Payload::Feedback(_)) => {
                                    recorder.feedback.fetch_add(1, Ordering::Relaxed);
                                }
                                None => {}
                            },
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                if let Err(error) = result
                    && recorder.reconnects.fetch_add(1, Ordering::Relaxed) == 0
                {
                    eprintln!("  a delivery stream broke (reopening): {error}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while open.load(Ordering::Relaxed) < ids.len() {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} delivery streams opened in 2 minutes",
                open.load(Ordering::Relaxed),
                ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Starts a real `spean-adapter run` for `agency`, lets it connect and settle, reads its memory, and
/// stops it. The adapter is idle: nothing is addressed to this agency.
pub async fn idle_adapter_memory(
    broker: &BrokerProcess,
    agency: &str,
    store_dir: &Path,
    settle: Duration,
) -> anyhow::Result<Memory> {
    let mut adapter = AdapterProcess::new(agency, broker.identity(agency), broker.url(), store_dir);
    adapter.start()?;
    tokio::time::sleep(settle).await;
    if let Some(status) = adapter.try_exited()? {
        bail!("spean-adapter exited early ({status})");
    }
    let memory = adapter
        .pid()
        .and_then(probe::memory)
        .context("spean-adapter's memory is not readable")?;
    let _ = adapter.kill().await;
    Ok(memory)
}
