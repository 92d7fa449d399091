//! `spawn_broker()`: a real broker on port 0 in a temporary folder, with its own SQLite database and
//! development CA, and clients that present real agency certificates over mutual TLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use spean_broker::{Broker, Config};
use spean_proto::v1 as pb;
use spean_proto::v1::delivery_service_client::DeliveryServiceClient;
use spean_proto::v1::directory_service_client::DirectoryServiceClient;
use spean_proto::v1::referral_service_client::ReferralServiceClient;
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Story 1's referral and its case file, shared with the end-to-end tests and the benchmark.
pub use spean_testkit::{KHMER_NAME, case_file, lama};

pub struct TestBroker {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub async fn spawn_broker() -> TestBroker {
    spawn_broker_with(|_| {}).await
}

pub async fn spawn_broker_with(adjust: impl FnOnce(&mut Config)) -> TestBroker {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    config.database.durable = false;
    config.delivery.poll_interval_ms = 200;
    adjust(&mut config);
    let broker = Broker::build(config).await.unwrap();
    let addr = broker.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        broker
            .run_until_stopped(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    TestBroker {
        addr,
        dir,
        stop: Some(stop),
        task: Some(task),
    }
}

pub struct Client {
    /// The agency whose certificate it presents: the author of what it seals.
    pub agency: String,
    pub referrals: ReferralServiceClient<Channel>,
    pub delivery: DeliveryServiceClient<Channel>,
    pub directory: DirectoryServiceClient<Channel>,
}

impl TestBroker {
    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    pub fn identity_dir(&self, agency: &str) -> PathBuf {
        self.pki().join("agencies").join(agency)
    }

    /// A client presenting `agency`'s certificate.
    pub async fn client(&self, agency: &str) -> Client {
        let dir = self.identity_dir(agency);
        let channel = self
            .channel(
                Some((dir.join("cert.pem"), dir.join("key.pem"))),
                &self.pki().join("ca.pem"),
            )
            .await
            .unwrap();
        Client {
            agency: agency.to_owned(),
            ..Client::new(channel)
        }
    }

    /// A channel with an optional client identity, trusting `ca` for the server.
    pub async fn channel(
        &self,
        identity: Option<(PathBuf, PathBuf)>,
        ca: &Path,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(cert).unwrap(),
                std::fs::read(key).unwrap(),
            ));
        }
        Endpoint::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    /// Counts rows in a table of the broker's database, to prove nothing was written.
    pub async fn count(&self, table: &str) -> i64 {
        let url = format!("sqlite://{}", self.dir.path().join("broker.db").display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&pool)
                .await
                .unwrap();
        pool.close().await;
        n
    }
}

impl Client {
    pub fn new(channel: Channel) -> Self {
        Self {
            agency: String::new(),
            referrals: ReferralServiceClient::new(channel.clone()),
            delivery: DeliveryServiceClient::new(channel.clone()),
            directory: DirectoryServiceClient::new(channel),
        }
    }

    pub async fn submit(
        &mut self,
        req: pb::SubmitRequest,
    ) -> Result<pb::SubmitResponse, tonic::Status> {
        self.referrals.submit(req).await.map(|r| r.into_inner())
    }

    /// Submits story 1's LAMA referral and returns its id.
    pub async fn submit_lama(&mut self, client_ref: &str) -> String {
        let r = self.submit(lama(client_ref)).await.unwrap();
        r.referral.unwrap().envelope.unwrap().referral_id
    }
}

/// The fields every action shares, with nothing a person wrote.
pub fn action(referral_id: &str, request_id: &str) -> Option<pb::Action> {
    Some(pb::Action {
        referral_id: referral_id.into(),
        request_id: request_id.into(),
        actor_person: String::new(),
        note: String::new(),
        sealed_text: Vec::new(),
    })
}

/// An action by `by` with its free text (a staff name and `detail`, the details' text) sealed as
/// an adapter seals it, with the test keys, to `by` and story 1's sender.
pub fn said(by: &str, referral_id: &str, request_id: &str, detail: &str) -> Option<pb::Action> {
    Some(pb::Action {
        sealed_text: spean_testkit::sealed::seal_text(
            by,
            referral_id,
            &pb::FreeText {
                actor_person: "សុភា (Sophea)".into(),
                note: String::new(),
                detail: detail.into(),
            },
            &["ahc-swu"],
        ),
        ..action(referral_id, request_id)?
    })
}

/// The case file of story 1 (`lama(client_ref)`) re-sealed by `by` to `to`, for a redirect.
pub fn resealed(by: &str, client_ref: &str, to: &str) -> Vec<u8> {
    spean_testkit::sealed::reseal_case_file(
        by,
        "ahc-swu",
        client_ref,
        &spean_testkit::case_file(),
        to,
    )
}

/// Opens a delivery stream and returns the sender for confirmations and the incoming stream.
pub async fn subscribe(
    client: &mut Client,
) -> (
    tokio::sync::mpsc::Sender<pb::SubscribeRequest>,
    tonic::Streaming<pb::Delivery>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(pb::SubscribeRequest {
        request: Some(pb::subscribe_request::Request::Hello(pb::Hello {
            window: 8,
        })),
    })
    .await
    .unwrap();
    let stream = client
        .delivery
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, stream)
}

pub fn confirm(delivery_id: &str) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        request: Some(pb::subscribe_request::Request::Confirm(pb::Confirm {
            delivery_id: delivery_id.into(),
        })),
    }
}

/// The next delivery, or a panic after `secs` seconds.
pub async fn next_delivery(stream: &mut tonic::Streaming<pb::Delivery>, secs: u64) -> pb::Delivery {
    tokio::time::timeout(Duration::from_secs(secs), stream.message())
        .await
        .expect("no delivery in time")
        .unwrap()
        .expect("stream ended")
}
