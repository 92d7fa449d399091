//! One suite of delivery tests, run against both delivery backends: a real broker in this process,
//! clients with real agency certificates over mutual TLS, and the real `Subscribe` stream.
//!
//! - `on_mailbox`: the embedded backend, whose sessions read the mailbox of a SQLite database in a
//!   temporary folder.
//! - `on_rabbitmq`: the production backend, whose relay publishes the PostgreSQL outbox to RabbitMQ
//!   and whose sessions consume the agencies' quorum queues. Each test has a fresh database on the
//!   server named by `SPEAN_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`)
//!   and a fresh vhost, made with `rabbitmqctl`, on the server named by `SPEAN_TEST_AMQP_URL`
//!   (default `amqp://guest:guest@127.0.0.1:5672`). A server out of reach fails the test: it
//!   never skips.
//!
//! The tests wait on what the broker sends, never on a clock; each wait is bounded, so that a
//! delivery that never comes fails the test instead of hanging it.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use spean_broker::config::Secret;
use spean_proto::v1 as pb;
use sqlx::Connection;
use tokio::sync::mpsc;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{
    Client, TestBroker, action, case_file, confirm, lama, next_delivery, resealed, said,
    spawn_broker, spawn_broker_with,
};

/// Generates, for each test, one run per backend.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod on_mailbox {
            $(#[tokio::test] async fn $name() { super::$name(super::mailbox().await).await; })*
        }
        mod on_rabbitmq {
            $(#[tokio::test] async fn $name() { super::$name(super::rabbitmq().await).await; })*
        }
    };
}

suite!(
    every_submitted_referral_reaches_its_recipients_session_with_its_case_file,
    each_agency_receives_its_deliveries_in_the_order_they_were_queued,
    an_unconfirmed_delivery_comes_again_to_the_next_session_and_is_recorded_delivered_once,
    a_settled_delivery_never_comes_again,
    every_event_reaches_every_party_of_its_referral,
    a_referral_redirected_before_it_was_delivered_reaches_its_former_recipient_without_its_case_file,
);

/// How long any one delivery may take to arrive, in seconds.
const PATIENCE_SECS: u64 = 15;

/// A broker serving on one delivery backend.
struct Fixture {
    broker: TestBroker,
    /// The RabbitMQ backend's database and vhost, removed after the broker when the test ends.
    _servers: Option<Servers>,
}

/// The embedded backend: SQLite, and sessions reading its mailbox.
async fn mailbox() -> Fixture {
    let broker = spawn_broker().await;
    serving(&broker).await;
    Fixture {
        broker,
        _servers: None,
    }
}

/// The production backend: PostgreSQL's outbox, the relay, and RabbitMQ's queues.
async fn rabbitmq() -> Fixture {
    let servers = Servers::create().await;
    let (database_url, amqp_url) = (servers.database_url(), servers.amqp_url());
    let broker = spawn_broker_with(|config| {
        config.database.url = Secret::new(database_url);
        config.amqp.url = Secret::new(amqp_url);
        // A test network: its CA and keys are made on first start, as an operator never would.
        config.tls.dev_pki = spean_broker::config::DevPki::Set(true);
    })
    .await;
    serving(&broker).await;
    Fixture {
        broker,
        _servers: Some(servers),
    }
}

/// Waits until the broker's delivery service reports serving: with RabbitMQ, once it is connected
/// and has declared its exchanges.
async fn serving(broker: &TestBroker) {
    let identity = broker.identity_dir("ahc-swu");
    let channel = broker
        .channel(
            Some((identity.join("cert.pem"), identity.join("key.pem"))),
            &broker.pki().join("ca.pem"),
        )
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let request = || HealthCheckRequest {
        service: "spean.v1.DeliveryService".into(),
    };
    tokio::time::timeout(Duration::from_secs(30), async {
        // The service is known once the broker first reports on it, a moment after it listens.
        let mut statuses = loop {
            match health.watch(request()).await {
                Ok(statuses) => break statuses.into_inner(),
                Err(status) if status.code() == tonic::Code::NotFound => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(status) => panic!("watching the broker's health failed: {status}"),
            }
        };
        while let Some(reply) = statuses.message().await.unwrap() {
            if reply.status == ServingStatus::Serving as i32 {
                return;
            }
        }
        panic!("the health stream ended before the broker was serving");
    })
    .await
    .expect("the broker did not serve in time: are PostgreSQL and RabbitMQ up?");
}

/// One test's PostgreSQL database and RabbitMQ vhost, dropped when the test ends, also when it
/// fails.
struct Servers {
    /// The server's URL, to create and drop the database from.
    postgres: String,
    database: String,
    /// The server's URL without a vhost.
    amqp: String,
    vhost: String,
}

impl Servers {
    async fn create() -> Self {
        let postgres = std::env::var("SPEAN_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let amqp = std::env::var("SPEAN_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into());
        let id = uuid::Uuid::now_v7().simple();
        let servers = Self {
            database: format!("spean_delivery_{id}"),
            vhost: format!("spean-delivery-{id}"),
            postgres,
            amqp: server_of(&amqp),
        };
        let mut admin = sqlx::PgConnection::connect(&servers.postgres)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the delivery conformance tests need PostgreSQL at {} \
                     (set SPEAN_TEST_POSTGRES_URL to use another server): {e}",
                    servers.postgres
                )
            });
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {}",
            servers.database
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        admin.close().await.unwrap();
        rabbitmqctl(&["add_vhost", &servers.vhost]).await;
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &servers.vhost,
            "guest",
            ".*",
            ".*",
            ".*",
        ])
        .await;
        servers
    }

    /// The test's database on the PostgreSQL server, keeping any `?options`.
    fn database_url(&self) -> String {
        let (base, options) = self
            .postgres
            .split_once('?')
            .map_or((self.postgres.as_str(), None), |(b, o)| (b, Some(o)));
        let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
        match options {
            Some(options) => format!("{server}/{}?{options}", self.database),
            None => format!("{server}/{}", self.database),
        }
    }

    fn amqp_url(&self) -> String {
        format!("{}/{}", self.amqp, self.vhost)
    }
}

impl Drop for Servers {
    /// Deletes the vhost, with every queue in it, and drops the database. Best effort: a leftover
    /// is named after its test and harms no other.
    fn drop(&mut self) {
        let quiet = |program: &str, args: &[&str]| {
            let _ = std::process::Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        quiet("rabbitmqctl", &["delete_vhost", &self.vhost]);
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database);
        quiet("psql", &[&self.postgres, "-qc", &drop]);
    }
}

/// `url` without its vhost: scheme, credentials, host and port.
fn server_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

async fn rabbitmqctl(args: &[&str]) {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("the RabbitMQ tests need rabbitmqctl on the PATH: {e}"));
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One adapter connection's delivery stream.
struct Stream {
    confirms: mpsc::Sender<pb::SubscribeRequest>,
    deliveries: tonic::Streaming<pb::Delivery>,
}

impl Stream {
    /// Subscribes with room for `window` unconfirmed deliveries.
    async fn open(client: &mut Client, window: u32) -> Self {
        let (confirms, requests) = mpsc::channel(64);
        confirms
            .send(pb::SubscribeRequest {
                request: Some(pb::subscribe_request::Request::Hello(pb::Hello { window })),
            })
            .await
            .unwrap();
        let deliveries = client
            .delivery
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        Self {
            confirms,
            deliveries,
        }
    }

    /// The next delivery; fails the test if none comes in time.
    async fn next(&mut self) -> pb::Delivery {
        next_delivery(&mut self.deliveries, PATIENCE_SECS).await
    }

    /// Deliveries up to and including the first that `last` picks.
    async fn until(&mut self, last: impl Fn(&pb::Delivery) -> bool) -> Vec<pb::Delivery> {
        let mut read = Vec::new();
        loop {
            let delivery = self.next().await;
            let done = last(&delivery);
            read.push(delivery);
            if done {
                return read;
            }
        }
    }

    async fn confirm(&self, delivery: &pb::Delivery) {
        self.confirms
            .send(confirm(&delivery.delivery_id))
            .await
            .unwrap();
    }
}

fn referral(delivery: &pb::Delivery) -> Option<&pb::Referral> {
    match &delivery.payload {
        Some(pb::delivery::Payload::Referral(r)) => Some(r),
        _ => None,
    }
}

fn event(delivery: &pb::Delivery) -> Option<&pb::FeedbackEvent> {
    match &delivery.payload {
        Some(pb::delivery::Payload::Feedback(e)) => Some(e),
        _ => None,
    }
}

/// The referral a delivery is about, whether it carries the referral or one of its events.
fn referral_id(delivery: &pb::Delivery) -> String {
    match &delivery.payload {
        Some(pb::delivery::Payload::Referral(r)) => r.envelope.clone().unwrap().referral_id,
        Some(pb::delivery::Payload::Feedback(e)) => e.referral_id.clone(),
        None => panic!("a delivery without a payload"),
    }
}

/// Whether `delivery` is an event of `kind` about referral `id`.
fn is_event(delivery: &pb::Delivery, id: &str, kind: pb::FeedbackKind) -> bool {
    event(delivery).is_some_and(|e| e.referral_id == id && e.kind == kind as i32)
}

/// Story 1's referral, addressed to `agency` by its id rather than by service and province.
/// Story 1's referral from `sender` to `agency`, its case file sealed to that agency.
fn lama_to(sender: &str, agency: &str, client_ref: &str) -> pb::SubmitRequest {
    let request = pb::SubmitRequest {
        recipient: Some(pb::Recipient {
            target: Some(pb::recipient::Target::AgencyId(agency.into())),
        }),
        ..spean_testkit::lama_in_clear(client_ref)
    };
    spean_testkit::sealed::sealed_submit(sender, request, &[agency])
}

/// The case file of `referral` as `agency` opens it (the test keys); `None` if it holds no box.
fn opened(agency: &str, referral: &pb::Referral) -> Option<Vec<u8>> {
    let envelope = referral.envelope.as_ref()?;
    spean_testkit::sealed::open(
        agency,
        &referral.case_file,
        spean_seal::Purpose::CaseFile {
            sender: &envelope.sender_agency_id,
            client_ref: &envelope.client_ref,
        },
    )
}

async fn submit(client: &mut Client, request: pb::SubmitRequest) -> String {
    let answer = client.submit(request).await.unwrap();
    answer.referral.unwrap().envelope.unwrap().referral_id
}

/// `client` redirects story 1's referral `id`, sent as `client_ref`, to `to`, re-sealing its case
/// file to it.
async fn redirect(client: &mut Client, id: &str, client_ref: &str, to: &str) {
    let by = client.agency.clone();
    client
        .referrals
        .redirect(pb::RedirectRequest {
            action: said(
                &by,
                id,
                &format!("redirect-{id}"),
                "cannot travel to Pailin",
            ),
            redirect: Some(pb::Redirect {
                to_agency_id: to.into(),
                reason: String::new(),
                case_file: resealed(&by, client_ref, to),
            }),
        })
        .await
        .unwrap();
}

/// Referrals reach their recipients from any sender, whether the recipient was connected when
/// they were submitted or connects later, and each carries the case file its recipient reads.
async fn every_submitted_referral_reaches_its_recipients_session_with_its_case_file(f: Fixture) {
    let mut hospital = f.broker.client("ahc-swu").await;
    let mut health_centre = f.broker.client("ssc-smhs").await;
    let mut ngo = f.broker.client("mlup-russey").await;
    let mut ngo_stream = Stream::open(&mut ngo, 16).await;

    let mut for_ngo = BTreeSet::new();
    let mut for_department = BTreeSet::new();
    for n in 0..3 {
        for_ngo.insert(submit(&mut hospital, lama(&format!("reach-ngo-{n}"))).await);
        for_ngo.insert(
            submit(
                &mut health_centre,
                lama_to("ssc-smhs", "mlup-russey", &format!("reach-ngo-{n}")),
            )
            .await,
        );
        for_department.insert(
            submit(
                &mut hospital,
                lama_to("ahc-swu", "dosvy-24", &format!("reach-dept-{n}")),
            )
            .await,
        );
    }
    let mut department = f.broker.client("dosvy-24").await;
    let mut department_stream = Stream::open(&mut department, 16).await;

    for (stream, expected) in [
        (&mut ngo_stream, for_ngo),
        (&mut department_stream, for_department),
    ] {
        let mut got = BTreeSet::new();
        while got.len() < expected.len() {
            let delivery = stream.next().await;
            let referral = referral(&delivery).expect("a referral");
            let reader = referral
                .envelope
                .as_ref()
                .unwrap()
                .recipient_agency_id
                .clone();
            assert_eq!(
                opened(&reader, referral),
                Some(case_file()),
                "the recipient reads the case file"
            );
            got.insert(referral_id(&delivery));
        }
        assert_eq!(got, expected);
    }
}

/// What is queued for one agency reaches it in the order it was queued: referrals and the events
/// about them alike.
async fn each_agency_receives_its_deliveries_in_the_order_they_were_queued(f: Fixture) {
    let mut hospital = f.broker.client("ahc-swu").await;
    let mut ngo = f.broker.client("mlup-russey").await;
    // Connected first, so that the agency's queue exists (a session declares it), as it does once
    // a broker has run a moment: a message RabbitMQ returns for want of a queue is published
    // again once the queue is declared, after any published meanwhile.
    let mut stream = Stream::open(&mut ngo, 64).await;
    let mut queued = Vec::new();
    for n in 0..12 {
        let id = submit(&mut hospital, lama(&format!("order-{n}"))).await;
        queued.push((id.clone(), None));
        if n % 3 == 0 {
            ngo.referrals
                .acknowledge(pb::AcknowledgeRequest {
                    action: action(&id, &format!("ack-{n}")),
                })
                .await
                .unwrap();
            queued.push((id, Some(pb::FeedbackKind::Acknowledged as i32)));
        }
    }
    let mut received = Vec::new();
    while received.len() < queued.len() {
        let delivery = stream.next().await;
        received.push((referral_id(&delivery), event(&delivery).map(|e| e.kind)));
    }
    assert_eq!(received, queued);
}

/// A delivery the adapter did not confirm comes again, with the same delivery id, to the agency's
/// next connection; once confirmed (twice, as a retry would), "delivered" is recorded once and
/// both parties hear of it.
async fn an_unconfirmed_delivery_comes_again_to_the_next_session_and_is_recorded_delivered_once(
    f: Fixture,
) {
    let mut hospital = f.broker.client("ahc-swu").await;
    let id = submit(&mut hospital, lama("again-1")).await;

    let mut ngo = f.broker.client("mlup-russey").await;
    let mut first = Stream::open(&mut ngo, 8).await;
    let sent = first.next().await;
    assert_eq!(referral_id(&sent), id);
    drop(first);

    let mut second = Stream::open(&mut ngo, 8).await;
    let again = second.next().await;
    assert_eq!(again.delivery_id, sent.delivery_id);
    assert_eq!(
        opened("mlup-russey", referral(&again).unwrap()),
        Some(case_file())
    );
    second.confirm(&again).await;
    second.confirm(&again).await;

    let heard = second.next().await;
    assert!(
        is_event(&heard, &id, pb::FeedbackKind::Delivered),
        "{heard:?}"
    );
    second.confirm(&heard).await;
    let mut sender = Stream::open(&mut hospital, 8).await;
    let told = sender.next().await;
    assert!(
        is_event(&told, &id, pb::FeedbackKind::Delivered),
        "{told:?}"
    );
    assert_eq!(
        event(&told).unwrap().event_id,
        event(&heard).unwrap().event_id
    );

    let got = hospital
        .referrals
        .get(pb::GetRequest { referral_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.state, pb::ReferralState::Delivered as i32);
    let delivered = got
        .history
        .iter()
        .filter(|e| e.kind == pb::FeedbackKind::Delivered as i32)
        .count();
    assert_eq!(delivered, 1);
}

/// A delivery the adapter confirmed and the broker settled does not come again, to this connection
/// or the next. With a window of one, the broker sends the next delivery only once the previous
/// one is settled, so the test knows when that is without watching the backend.
async fn a_settled_delivery_never_comes_again(f: Fixture) {
    let mut hospital = f.broker.client("ahc-swu").await;
    let mut ngo = f.broker.client("mlup-russey").await;
    let id = submit(&mut hospital, lama("settled-1")).await;

    let mut first = Stream::open(&mut ngo, 1).await;
    let sent = first.next().await;
    assert_eq!(referral_id(&sent), id);
    first.confirm(&sent).await;
    let delivered = first.next().await;
    assert!(
        is_event(&delivered, &id, pb::FeedbackKind::Delivered),
        "{delivered:?}"
    );
    first.confirm(&delivered).await;
    let marker = submit(&mut hospital, lama("settled-marker")).await;
    let unconfirmed = first.next().await;
    assert_eq!(referral_id(&unconfirmed), marker);
    drop(first);

    // The next connection gets what was not confirmed, then what was queued since, and nothing
    // that was settled: being older, it would have come first.
    let mut second = Stream::open(&mut ngo, 8).await;
    let again = second.next().await;
    assert_eq!(again.delivery_id, unconfirmed.delivery_id);
    let later = submit(&mut hospital, lama("settled-later")).await;
    let rest = second
        .until(|d| referral(d).is_some() && referral_id(d) == later)
        .await;
    assert_eq!(rest.len(), 1, "a settled delivery came again: {rest:?}");
}

/// Each event reaches every party of its referral as it then stands: the sender, the current
/// recipient and the former ones, the actor among them.
async fn every_event_reaches_every_party_of_its_referral(f: Fixture) {
    let mut hospital = f.broker.client("ahc-swu").await;
    let mut ngo = f.broker.client("mlup-russey").await;
    let mut department = f.broker.client("dosvy-24").await;
    let mut streams = Vec::new();
    for client in [&mut hospital, &mut ngo, &mut department] {
        streams.push(Stream::open(client, 16).await);
    }
    let id = submit(&mut hospital, lama("parties-1")).await;
    redirect(&mut ngo, &id, "parties-1", "dosvy-24").await;
    department
        .referrals
        .acknowledge(pb::AcknowledgeRequest {
            action: action(&id, "ack-parties-1"),
        })
        .await
        .unwrap();

    let mut heard = Vec::new();
    for stream in &mut streams {
        let read = stream
            .until(|d| is_event(d, &id, pb::FeedbackKind::Acknowledged))
            .await;
        let events: Vec<(i32, String)> = read
            .iter()
            .filter_map(event)
            .map(|e| (e.kind, e.event_id.clone()))
            .collect();
        heard.push(events);
    }
    let kinds: Vec<i32> = heard[0].iter().map(|(kind, _)| *kind).collect();
    assert_eq!(
        kinds,
        [
            pb::FeedbackKind::Redirected as i32,
            pb::FeedbackKind::Acknowledged as i32
        ]
    );
    assert_eq!(heard[1], heard[0], "the former recipient heard otherwise");
    assert_eq!(heard[2], heard[0], "the new recipient heard otherwise");
}

/// A referral redirected before its first recipient took it reaches that former recipient, if at
/// all, without the case file, however long its delivery was queued; the new recipient gets it
/// with the case file.
async fn a_referral_redirected_before_it_was_delivered_reaches_its_former_recipient_without_its_case_file(
    f: Fixture,
) {
    let mut hospital = f.broker.client("ahc-swu").await;
    let mut ngo = f.broker.client("mlup-russey").await;
    let id = submit(&mut hospital, lama("moved-1")).await;
    redirect(&mut ngo, &id, "moved-1", "dosvy-24").await;

    let mut former = Stream::open(&mut ngo, 8).await;
    let read = former
        .until(|d| is_event(d, &id, pb::FeedbackKind::Redirected))
        .await;
    for delivery in &read {
        if let Some(referral) = referral(delivery) {
            assert!(
                referral.case_file.is_empty(),
                "the former recipient got the case file"
            );
        }
    }

    let mut department = f.broker.client("dosvy-24").await;
    let mut new = Stream::open(&mut department, 8).await;
    let read = new.until(|d| referral(d).is_some()).await;
    let delivery = read.last().unwrap();
    assert_eq!(referral_id(delivery), id);
    let referral = referral(delivery).unwrap();
    assert_eq!(
        referral.envelope.clone().unwrap().recipient_agency_id,
        "dosvy-24"
    );
    assert_eq!(
        opened("dosvy-24", referral),
        Some(case_file()),
        "the new recipient reads the case file"
    );
}
