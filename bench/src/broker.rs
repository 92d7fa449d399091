//! The system under test as a black box: a real `spean-broker serve` process with a generated
//! directory, gRPC clients holding agencies' certificates, adapter-equivalent subscribers, and one
//! idle real `spean-adapter` for its memory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
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
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

use crate::load::Submitter;
use crate::probe::{self, Memory};
use crate::recorder::Recorder;

/// A binary next to this one in the cargo target folder.
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .context("the benchmark binary has no folder")?
        .join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build --release --workspace` first",
            path.display()
        );
    }
    Ok(path)
}

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

pub struct BrokerProcess {
    pub data_dir: PathBuf,
    pub addr: std::net::SocketAddr,
    child: Child,
    /// How long from spawn until it accepted connections (includes creating the PKI and queues).
    pub startup: Duration,
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
        let log = std::fs::File::create(data_dir.join("broker.log"))?;
        let began = Instant::now();
        let mut child = Command::new(sibling("spean-broker")?)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("SPEAN_BROKER_DIRECTORY__SEED", &seed)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let addr_file = data_dir.join("broker.addr");
        let deadline = began + Duration::from_secs(300);
        let addr = loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the broker exited ({status}) before listening: {}",
                    log_tail(data_dir)
                );
            }
            let parsed = std::fs::read_to_string(&addr_file)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            if let Some(addr) = parsed
                && tokio::net::TcpStream::connect(addr).await.is_ok()
            {
                break addr;
            }
            if Instant::now() > deadline {
                bail!("the broker did not listen within 5 minutes");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(Self {
            data_dir: data_dir.to_owned(),
            addr,
            child,
            startup: began.elapsed(),
        })
    }

    pub fn memory(&self) -> Option<Memory> {
        probe::memory(self.child.id()?)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn identity(&self, agency: &str) -> PathBuf {
        self.data_dir.join("pki").join("agencies").join(agency)
    }

    /// A TLS channel presenting `agency`'s certificate; connects on first use.
    pub fn channel(&self, agency: &str) -> anyhow::Result<Channel> {
        let dir = self.identity(agency);
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(dir.join("ca.pem"))?))
            .identity(TlsIdentity::from_pem(
                std::fs::read(dir.join("cert.pem"))?,
                std::fs::read(dir.join("key.pem"))?,
            ))
            .domain_name("localhost");
        Ok(Endpoint::from_shared(format!("https://{}", self.addr))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .connect_lazy())
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The end of the broker's log, to say why it failed.
pub fn log_tail(data_dir: &Path) -> String {
    let log = std::fs::read_to_string(data_dir.join("broker.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    strip_ansi(&tail)
}

/// Removes terminal colour codes (`ESC [ … m`) the broker's log may hold.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sending agencies' clients; implements the load's [`Submitter`] with `Submit` calls.
#[derive(Clone)]
pub struct Senders {
    clients: Arc<Vec<ReferralServiceClient<Channel>>>,
    ids: Arc<Vec<String>>,
    /// The same ~1 KiB encoded case file in every referral.
    case_file: Arc<Vec<u8>>,
}

impl Senders {
    pub fn new(broker: &BrokerProcess, ids: &[String]) -> anyhow::Result<Self> {
        let clients = ids
            .iter()
            .map(|id| Ok(ReferralServiceClient::new(broker.channel(id)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            clients: Arc::new(clients),
            ids: Arc::new(ids.to_vec()),
            case_file: Arc::new(case_file()),
        })
    }
}

impl Submitter for Senders {
    /// `delivered`, to the sender and to the recipient.
    const FEEDBACK_PER_MESSAGE: u64 = 2;

    async fn submit(&self, from: usize, to: usize, tag: String) -> Result<(), String> {
        let request = pb::SubmitRequest {
            client_ref: tag,
            recipient: Some(pb::Recipient {
                target: Some(pb::recipient::Target::AgencyId(self.ids[to].clone())),
            }),
            kind: "lama".into(),
            urgency: pb::Urgency::Routine as i32,
            subject: Some(pb::Subject {
                sex: pb::Sex::Female as i32,
                age_band: pb::AgeBand::AgeBand59 as i32,
                province: "12".into(),
            }),
            case_file: self.case_file.as_ref().clone(),
            client_pseudonym: String::new(),
        };
        let mut client = self.clients[from].clone();
        client
            .submit(request)
            .await
            .map(|_| ())
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    }
}

/// A case file of about 1 KiB with Khmer text, like a real LAMA referral's.
fn case_file() -> Vec<u8> {
    let mut file = pb::CaseFile {
        name: Some(pb::PersonName {
            khmer: "សុខ ស្រីល័ក្ខ".into(),
            latin: "Sok Sreyleak".into(),
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
    let url = format!("https://{}", broker.addr);
    for id in ids {
        let identity = Identity::load(&broker.identity(id))?;
        let store = Store::open(&store_dir.join(format!("receiver-{id}.db"))).await?;
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
    let mut child = Command::new(sibling("spean-adapter")?)
        .arg("--identity")
        .arg(broker.identity(agency))
        .arg("--broker")
        .arg(format!("https://{}", broker.addr))
        .arg("--store")
        .arg(store_dir.join(format!("{agency}.db")))
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(
            store_dir.join(format!("{agency}.log")),
        )?)
        .kill_on_drop(true)
        .spawn()?;
    tokio::time::sleep(settle).await;
    if let Some(status) = child.try_wait()? {
        bail!("spean-adapter exited early ({status})");
    }
    let memory = child
        .id()
        .and_then(probe::memory)
        .context("spean-adapter's memory is not readable")?;
    let _ = child.kill().await;
    Ok(memory)
}
