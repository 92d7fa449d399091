//! Builders for referrals and events as the broker would send them, a fresh store per test, a
//! throwaway agency identity for the binary, and a real broker process for the binary to talk to.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use prost_types::Timestamp;
use spean_adapter::{broker::Broker, case_file::CaseFile, identity::Identity, store::Store};
use spean_domain::ids::AgencyId;
use spean_proto::v1::{
    Audience, Delivery, Envelope, FeedbackEvent, FeedbackKind, Recipient, Redirect, Referral,
    ReferralState, Subject, Urgency, delivery::Payload, feedback_event::Details, recipient::Target,
};

pub struct TestStore {
    pub store: Store,
    pub path: PathBuf,
    // Held so the directory lives as long as the test.
    pub _dir: tempfile::TempDir,
}

/// A fresh store of `agency-b`, the recipient of the referrals [`referral`] builds.
pub async fn fresh_store() -> TestStore {
    fresh_store_of("agency-b").await
}

/// A fresh store belonging to `agency`.
pub async fn fresh_store_of(agency: &str) -> TestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("adapter.db");
    let store = Store::open(&path, &agency_id(agency))
        .await
        .expect("open store");
    TestStore {
        store,
        path,
        _dir: dir,
    }
}

pub fn agency_id(raw: &str) -> AgencyId {
    AgencyId::parse("agency", raw).expect("agency id")
}

/// A new UUIDv7: later calls sort after earlier ones, like the broker's ids.
pub fn id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub fn at(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

pub fn event(referral_id: &str, kind: FeedbackKind, state_after: ReferralState) -> FeedbackEvent {
    FeedbackEvent {
        event_id: id(),
        referral_id: referral_id.to_owned(),
        kind: kind as i32,
        actor_agency_id: "agency-b".into(),
        actor_person: "សុភា".into(),
        at: at(1_700_000_100),
        note: String::new(),
        state_after: state_after as i32,
        details: None,
        next_visit: None,
        sealed_text: Vec::new(),
    }
}

/// `agency-b` redirects the referral to `to`, with a Khmer note and reason; the referral is sent
/// again, to its new recipient.
pub fn redirected(referral_id: &str, to: &str) -> FeedbackEvent {
    let mut redirected = event(referral_id, FeedbackKind::Redirected, ReferralState::Sent);
    redirected.note = "ផ្ទេរទៅអង្គការផ្សេង".into();
    redirected.details = Some(Details::Redirected(Redirect {
        to_agency_id: to.into(),
        reason: "មិនអាចធ្វើដំណើរទៅប៉ៃលិនបាន".into(),
        case_file: Vec::new(),
    }));
    redirected
}

pub fn referral(referral_id: &str, case_file: &CaseFile, history: Vec<FeedbackEvent>) -> Referral {
    Referral {
        envelope: Some(Envelope {
            referral_id: referral_id.to_owned(),
            client_ref: "ref-1".into(),
            sender_agency_id: "agency-a".into(),
            requested_recipient: Some(Recipient {
                target: Some(Target::AgencyId("agency-b".into())),
            }),
            recipient_agency_id: "agency-b".into(),
            kind: "lama".into(),
            urgency: Urgency::Urgent as i32,
            subject: Some(Subject {
                sex: 1,
                age_band: 2,
                province: "12".into(),
            }),
            created_at: at(1_700_000_000),
            updated_at: at(1_700_000_000),
            client_pseudonym: String::new(),
            ..Default::default()
        }),
        state: history
            .last()
            .map_or(ReferralState::Sent as i32, |e| e.state_after),
        case_file: case_file.encode(),
        history,
        audience: Audience::Recipient as i32,
    }
}

pub fn delivery(payload: Payload) -> Delivery {
    Delivery {
        delivery_id: id(),
        payload: Some(payload),
        audit_head: None,
    }
}

pub fn khmer_case_file() -> CaseFile {
    CaseFile::from_json(
        r#"{"name":{"khmer":"សុខ ស្រីល័ក្ខ","latin":"Sok Sreyleak"},
            "date_of_birth":"2016-03-01",
            "guardians":[{"name":{"khmer":"ចាន់ ធារី","latin":"Chan Theary"},"relationship":"mother","phone":"012 345 678"}],
            "contact":{"phone":"","address":"ភូមិ ស្រែ, ឃុំ ថ្មី","directions":"ជិតវត្ត"},
            "reason_for_referral":"ត្រូវការការថែទាំ","consent":{"given_by":"mother (ម្ដាយ)","given_at":"2025-01-02T09:00:00+07:00","scope":"home follow-up"},
            "transport_needs":"","notes":"កំណត់ចំណាំ"}"#
            .as_bytes(),
    )
    .expect("valid case file")
}

/// Writes ca.pem, cert.pem and key.pem for `agency` (self-signed: enough to load and to present).
pub fn identity(dir: &Path, agency: &str) -> PathBuf {
    let folder = dir.join(format!("identity-{agency}"));
    std::fs::create_dir_all(&folder).expect("identity dir");
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("cert params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, agency);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed cert");
    std::fs::write(folder.join("ca.pem"), cert.pem()).expect("write ca");
    std::fs::write(folder.join("cert.pem"), cert.pem()).expect("write cert");
    std::fs::write(folder.join("key.pem"), key.serialize_pem()).expect("write key");
    folder
}

/// How long the broker process may take to start before a test fails.
const BROKER_START: Duration = Duration::from_secs(30);

/// A real `spean-broker serve` process on port 0 in a temporary folder: SQLite, the development CA
/// (which issues a certificate to every demo directory agency) and the demo directory. Killed, by
/// its own process id, when dropped.
pub struct BrokerProcess {
    /// `https://127.0.0.1:PORT`, covered by the development server certificate.
    pub url: String,
    pub dir: tempfile::TempDir,
    child: Child,
}

/// The `spean-broker` binary cargo built beside this test (`target/<profile>/spean-broker`). This
/// crate cannot depend on the broker, so it is started as a process, as the agencies will run it.
fn broker_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/it-<hash> → target/<profile>/spean-broker
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target folder")
        .join("spean-broker");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p spean-broker` (`cargo test --workspace` does)",
        path.display()
    );
    path
}

impl BrokerProcess {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("broker");
        std::fs::create_dir_all(&data).expect("broker data dir");
        let log = std::fs::File::create(dir.path().join("broker.log")).expect("broker log");
        let mut child = Command::new(broker_binary())
            .arg("--data-dir")
            .arg(&data)
            .args(["serve", "--listen", "127.0.0.1:0"])
            // Only these settings: nothing from the environment running the tests leaks in.
            .env_clear()
            .env("SPEAN_BROKER_DATABASE__DURABLE", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start spean-broker");
        let address_file = data.join("broker.addr");
        let deadline = Instant::now() + BROKER_START;
        let addr = loop {
            if let Some(addr) = std::fs::read_to_string(&address_file)
                .ok()
                .and_then(|text| text.trim().parse::<SocketAddr>().ok())
            {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "spean-broker exited ({status}): {}",
                    std::fs::read_to_string(dir.path().join("broker.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "spean-broker did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        Self {
            url: format!("https://{addr}"),
            dir,
            child,
        }
    }

    /// The identity folder the development CA wrote for `agency`.
    pub fn identity(&self, agency: &str) -> PathBuf {
        self.dir
            .path()
            .join("broker")
            .join("pki")
            .join("agencies")
            .join(agency)
    }

    /// Runs `spean-adapter` as `agency` against this broker, with that agency's own local store.
    pub fn adapter(&self, agency: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_spean-adapter"))
            .arg("--identity")
            .arg(self.identity(agency))
            .arg("--store")
            .arg(self.dir.path().join(format!("{agency}.db")))
            .args(["--broker", &self.url])
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .expect("run spean-adapter")
    }
}

impl BrokerProcess {
    /// Sends story 1's referral from the hospital to the NGO and returns its referral id.
    pub fn send_story_one(&self, client_ref: &str) -> String {
        let sent = json_of(&self.adapter(
            "ahc-swu",
            &[
                "send",
                "--to",
                "mlup-russey",
                "--kind",
                "lama",
                "--consent-by",
                "guardian",
                "--consent-at",
                "2026-12-01",
                "--consent-for",
                "redirect,broadcast,notified_parties,follow_up_delegation",
                "--urgency",
                "emergency",
                "--sex",
                "female",
                "--age-band",
                "5-9",
                "--subject-province",
                "24",
                "--client-ref",
                client_ref,
                "--name-km",
                "សុខ ស្រីល័ក្ខ",
                "--reason",
                "ត្រូវការតាមដាននៅផ្ទះ",
                "--json",
            ],
        ));
        assert_eq!(sent["status"], "sent", "{sent}");
        sent["referral_id"].as_str().unwrap().to_owned()
    }

    /// Publishes each agency's sealing key (`keys publish`), as its daemon would on connecting:
    /// an agency sends only to agencies that published one.
    pub fn publish_keys(&self, agencies: &[&str]) {
        for agency in agencies {
            let out = self.adapter(agency, &["keys", "publish"]);
            assert!(
                out.status.success(),
                "keys publish as {agency}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Starts `spean-adapter run` as `agency` with `env` added, on the store its commands use.
    pub fn daemon(&self, agency: &str, env: &[(&str, &str)]) -> DaemonProcess {
        let log = std::fs::File::create(self.dir.path().join(format!("{agency}-daemon.log")))
            .expect("daemon log");
        let child = Command::new(env!("CARGO_BIN_EXE_spean-adapter"))
            .arg("--identity")
            .arg(self.identity(agency))
            .arg("--store")
            .arg(self.dir.path().join(format!("{agency}.db")))
            .args(["--broker", &self.url, "run"])
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start spean-adapter run");
        DaemonProcess { child }
    }

    /// Starts `agency`'s daemon serving its HTTP API and pages on a port the system chooses, and
    /// returns it with its base URL (`http://127.0.0.1:PORT`), once it listens.
    pub async fn serving(&self, agency: &str) -> (DaemonProcess, String) {
        let daemon = self.daemon(agency, &[("SPEAN_ADAPTER_API__LISTEN", "127.0.0.1:0")]);
        let file = PathBuf::from(format!(
            "{}.api-addr",
            self.dir.path().join(format!("{agency}.db")).display()
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Ok(addr) = std::fs::read_to_string(&file) {
                break addr;
            }
            assert!(Instant::now() < deadline, "{agency}: the API did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        (daemon, format!("http://{}", addr.trim()))
    }

    /// The broker's services as `agency` sees them, for what the adapter's commands do not show.
    pub async fn client(&self, agency: &str) -> Broker {
        // Ignored on purpose: it only fails when a provider is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let identity = Identity::load(&self.identity(agency)).expect("identity");
        Broker::connect(&self.url, &identity)
            .await
            .expect("connect to the broker")
    }

    /// Kills the broker; commands run after this find nothing listening at its address.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An adapter daemon, killed by its own process id when dropped.
pub struct DaemonProcess {
    child: Child,
}

impl DaemonProcess {
    /// Starts `command` (a `spean-adapter run`) with its output discarded.
    pub fn spawn(mut command: Command) -> Self {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start spean-adapter run");
        Self { child }
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("daemon status")
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The consent a test referral is sent on (`send` is refused without one).
pub const CONSENTED: &[&str] = &[
    "--consent-by",
    "guardian",
    "--consent-at",
    "2026-12-01",
    "--consent-for",
    "redirect,broadcast,notified_parties,follow_up_delegation",
];

/// A file's or folder's permission bits.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// How long an effect in another process may take before a test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// Asks `check` until it answers, failing the test naming `what` after [`PATIENCE`].
pub async fn eventually<T, F>(what: &str, mut check: impl FnMut() -> F) -> T
where
    F: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The JSON a successful command printed; panics with its stderr when it failed.
pub fn json_of(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is JSON")
}

/// Stores, as a delivery, a new referral whose case file is Khmer, with its `submitted` event;
/// returns its id.
pub async fn store_khmer_referral(store: &Store) -> String {
    let referral_id = id();
    let submitted = event(&referral_id, FeedbackKind::Submitted, ReferralState::Sent);
    store
        .store_delivery(&delivery(Payload::Referral(referral(
            &referral_id,
            &khmer_case_file(),
            vec![submitted],
        ))))
        .await
        .unwrap();
    referral_id
}
