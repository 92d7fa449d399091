//! The production path (PostgreSQL + RabbitMQ) under faults. Each test runs a stream of referrals and
//! feedback between several adapters, breaks something mid-stream, and then checks by message id that
//! everything the broker accepted arrived, and that each adapter's user sees it exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use spean_proto::v1 as pb;

use crate::helpers::{
    AdapterProcess, BrokerProcess, Relay, ServingStatus, eventually, lama, referral_id_of,
};
use crate::production::{PASSWORD, Production};
use crate::traffic::{self, ACK, Ledger, RECIPIENTS, Responses, SENDER};

/// A broker on `env` plus the sender's and recipients' adapters, all running.
pub(crate) struct Network {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) broker: BrokerProcess,
    pub(crate) sender: AdapterProcess,
    pub(crate) recipients: Vec<AdapterProcess>,
    /// Which referrals the recipients acknowledged so far (through their outboxes).
    pub(crate) responses: Responses,
}

impl Network {
    async fn start(env: &Production) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), env).await
    }

    async fn start_in(dir: tempfile::TempDir, env: &Production) -> Self {
        Self::start_with(dir, &env.broker_env()).await
    }

    /// The network with a broker started on `settings` (another RabbitMQ, say: `cluster.rs`).
    pub(crate) async fn start_with(dir: tempfile::TempDir, settings: &[(String, String)]) -> Self {
        let broker =
            BrokerProcess::start_with(&dir.path().join("broker"), "127.0.0.1:0", settings).await;
        broker.wait_for_health(ServingStatus::Serving).await;
        let mut sender = AdapterProcess::installed(&broker, SENDER, dir.path()).await;
        sender.start();
        let recipients = RECIPIENTS
            .iter()
            .map(|agency| {
                let mut a = AdapterProcess::new(&broker, agency, dir.path());
                a.start();
                a
            })
            .collect::<Vec<_>>();
        for adapter in std::iter::once(&sender).chain(&recipients) {
            adapter.wait_subscribed(1).await;
        }
        Self {
            dir,
            broker,
            sender,
            recipients,
            responses: Responses::default(),
        }
    }

    /// What the broker accepted from the sender, once its outbox drained.
    pub(crate) async fn accepted(&self, expected: usize) -> BTreeMap<String, String> {
        traffic::accepted(
            &self.sender,
            &mut self.broker.client(SENDER).await,
            expected,
        )
        .await
    }

    /// Acknowledges whatever is left through the recipients' outboxes, then checks the whole ledger
    /// by id: each referral in its recipient's inbox once, one `delivered` and one `acknowledged`
    /// event for each in the sender's adapter.
    pub(crate) async fn finish(&mut self, referrals: BTreeMap<String, String>) {
        self.responses
            .answer_all(&self.recipients, &[ACK], &referrals)
            .await;
        Ledger::new(referrals, &[ACK])
            .assert_exactly_once(&self.broker, &self.sender, &self.recipients)
            .await;
        self.sender.kill().await;
        for r in &mut self.recipients {
            r.kill().await;
        }
        let _ = &self.dir;
    }
}

/// Referrals that must have reached their recipients before a fault starts, so that some are
/// acknowledged during it.
pub(crate) const BEFORE_FAULT: usize = 4;

#[tokio::test]
async fn production_broker_sigkilled_mid_stream_loses_and_duplicates_nothing() {
    let env = Production::new().await;
    let mut net = Network::start(&env).await;
    let Network {
        broker,
        sender,
        recipients,
        responses,
        ..
    } = &mut net;
    let (_, acknowledged_while_down) = tokio::join!(traffic::send(sender, "kill", 0..40), async {
        traffic::wait_for_arrivals(recipients, BEFORE_FAULT).await;
        broker.kill().await;
        let acknowledged = responses.answer_arrivals(recipients, &[ACK]).await;
        broker.start_again().await;
        acknowledged
    });
    assert!(acknowledged_while_down >= BEFORE_FAULT);
    let accepted = net.accepted(40).await;
    net.finish(accepted).await;
}

#[tokio::test]
async fn rabbitmq_stopped_and_started_mid_stream_loses_and_duplicates_nothing() {
    let env = Production::with_private_rabbit().await;
    let mut net = Network::start(&env).await;
    let Network {
        broker,
        sender,
        recipients,
        responses,
        ..
    } = &mut net;
    let (_, (acknowledged_while_down, accepted_while_down)) =
        tokio::join!(traffic::send(sender, "rmq", 0..20), async {
            traffic::wait_for_arrivals(recipients, BEFORE_FAULT).await;
            env.rabbit().stop();
            broker.wait_for_health(ServingStatus::NotServing).await;
            // The broker keeps recording feedback and accepting referrals into its outbox.
            let acknowledged = responses.answer_arrivals(recipients, &[ACK]).await;
            for r in recipients.iter() {
                r.wait_outbox_sent().await;
            }
            let mut client = broker.client(SENDER).await;
            let before = traffic::broker_sent(&mut client).await;
            traffic::send(sender, "rmq", 20..40).await;
            let during = eventually("the broker to accept every referral", || async {
                let now = traffic::broker_sent(&mut broker.client(SENDER).await).await;
                (now.len() == 40).then_some(now)
            })
            .await;
            assert_eq!(
                broker.health().await,
                Ok(ServingStatus::NotServing),
                "RabbitMQ came back by itself"
            );
            env.rabbit().start_again().await;
            broker.wait_for_health(ServingStatus::Serving).await;
            let accepted = during.keys().filter(|id| !before.contains_key(*id)).count();
            (acknowledged, accepted)
        });
    assert!(acknowledged_while_down >= BEFORE_FAULT);
    assert!(
        accepted_while_down >= 20,
        "only {accepted_while_down} referrals were accepted while RabbitMQ was down"
    );
    let accepted = net.accepted(40).await;
    assert!(net.broker.log().contains("lost the RabbitMQ connection"));
    net.finish(accepted).await;
}

#[tokio::test]
async fn postgres_sessions_cut_mid_stream_lose_and_duplicate_nothing() {
    let env = Production::new().await;
    let mut net = Network::start(&env).await;
    let Network {
        sender,
        recipients,
        responses,
        ..
    } = &mut net;
    let (_, (cut, acknowledged_meanwhile)) =
        tokio::join!(traffic::send(sender, "pg", 0..40), async {
            traffic::wait_for_arrivals(recipients, BEFORE_FAULT).await;
            let (mut cut, mut acknowledged) = (0, 0);
            for _ in 0..3 {
                acknowledged += responses.answer_arrivals(recipients, &[ACK]).await;
                cut += env.terminate_sessions().await;
            }
            (cut, acknowledged)
        });
    assert!(cut > 0, "no broker session was cut");
    assert!(acknowledged_meanwhile >= BEFORE_FAULT);
    let accepted = net.accepted(40).await;
    net.finish(accepted).await;
}

#[tokio::test]
async fn postgres_stopped_and_started_mid_stream_reports_not_serving_and_loses_and_duplicates_nothing()
 {
    let env = Production::with_private_postgres().await;
    let mut net = Network::start(&env).await;
    let Network {
        broker,
        sender,
        recipients,
        responses,
        ..
    } = &mut net;
    let (_, acknowledged_while_down) =
        tokio::join!(traffic::send(sender, "pgstop", 0..20), async {
            traffic::wait_for_arrivals(recipients, BEFORE_FAULT).await;
            env.postgres().stop().await;
            broker.wait_for_health(ServingStatus::NotServing).await;
            // Recipients acknowledge and the sender refers while the database is down: both wait in
            // the adapters' outboxes.
            let acknowledged = responses.answer_arrivals(recipients, &[ACK]).await;
            traffic::send(sender, "pgstop", 20..40).await;
            assert_eq!(
                broker.health().await,
                Ok(ServingStatus::NotServing),
                "the broker serves without its database"
            );
            env.postgres().start_again().await;
            broker.wait_for_health(ServingStatus::Serving).await;
            acknowledged
        });
    assert!(acknowledged_while_down >= BEFORE_FAULT);
    let accepted = net.accepted(40).await;
    net.finish(accepted).await;
    assert!(
        !net.broker.log().contains(PASSWORD),
        "the broker logged its database password"
    );
}

#[tokio::test]
async fn a_broker_started_while_postgres_is_down_serves_once_postgres_comes_up() {
    let env = Production::with_private_postgres().await;
    env.postgres().stop().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("broker");
    let log = data_dir.join("broker.log");
    let settings = env.broker_env();
    let (broker, ()) = tokio::join!(
        BrokerProcess::start_with(&data_dir, "127.0.0.1:0", &settings),
        async {
            // The broker is up and waiting for its database, not exited.
            eventually("the broker to retry reaching PostgreSQL", || async {
                std::fs::read_to_string(&log)
                    .ok()?
                    .contains("cannot reach PostgreSQL; retrying")
                    .then_some(())
            })
            .await;
            env.postgres().start_again().await;
        }
    );
    broker.wait_for_health(ServingStatus::Serving).await;

    // It works: a referral is stored and read back.
    let mut hospital = broker.client(SENDER).await;
    let submitted = hospital
        .referrals
        .submit(crate::helpers::lama("late-start-1"))
        .await
        .unwrap()
        .into_inner();
    let id = submitted.referral.unwrap().envelope.unwrap().referral_id;
    assert_eq!(traffic::broker_sent(&mut hospital).await.len(), 1);
    assert!(traffic::broker_sent(&mut hospital).await.contains_key(&id));
    assert!(
        !broker.log().contains(PASSWORD),
        "the broker logged its database password"
    );
}

#[tokio::test]
async fn an_adapter_offline_for_a_while_gets_its_filled_queue_once_it_reconnects() {
    let env = Production::new().await;
    let mut net = Network::start(&env).await;
    let offline = 0; // mlup-russey
    net.recipients[offline].kill().await;
    traffic::send(&net.sender, "offline", 0..30).await;
    let accepted = net.accepted(30).await;
    let queue = format!("spean.agency.{}", RECIPIENTS[offline]);
    eventually(
        "the offline agency's deliveries all in its queue",
        || async {
            (env.outbox(RECIPIENTS[offline]).await == 0 && env.depth(&queue).await >= 1)
                .then_some(())
        },
    )
    .await;
    // Meanwhile the agency that is online acknowledges all it got, through its outbox.
    let online = &net.recipients[1..];
    traffic::wait_for_arrivals(online, 15).await;
    assert_eq!(net.responses.answer_arrivals(online, &[ACK]).await, 15);
    online[0].wait_outbox_sent().await;
    net.recipients[offline].start();
    net.finish(accepted).await;
    assert_eq!(env.depth(&queue).await, 0);
}

/// RabbitMQ out of reach for a while: submissions go on into the outbox. Once it is back, the relay
/// publishes the agency's backlog in bundles (here of at most 10 deliveries a message). A stream
/// that drops with one bundle fully confirmed and another partly confirmed gets the partly
/// confirmed bundle again, whole, and nothing else; and a referral confirmed twice that way is
/// recorded delivered once.
#[tokio::test]
async fn a_backlog_goes_out_in_bundles_and_a_partly_confirmed_bundle_comes_back_whole() {
    const BACKLOG: usize = 20;
    const BUNDLE: usize = 10;
    const CONFIRMED: usize = 15;
    let env = Production::new().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("broker");
    let mut settings = env.broker_env();
    settings.push(("SPEAN_BROKER_AMQP__BUNDLE_MAX".into(), BUNDLE.to_string()));
    let out_of_reach = env.out_of_reach(&settings);
    let recipient = RECIPIENTS[0];
    let mut broker = BrokerProcess::start_with(&data, "127.0.0.1:0", &out_of_reach).await;
    let mut hospital = broker.client(SENDER).await;
    let mut submitted = BTreeSet::new();
    for n in 0..BACKLOG {
        let mut request = lama(&format!("backlog-{n}"));
        request.recipient = Some(pb::Recipient {
            target: Some(pb::recipient::Target::AgencyId(recipient.into())),
        });
        let referral = hospital
            .referrals
            .submit(request)
            .await
            .unwrap()
            .into_inner();
        submitted.insert(referral.referral.unwrap().envelope.unwrap().referral_id);
    }
    assert_eq!(env.outbox(recipient).await, BACKLOG as i64);

    broker.kill().await;
    let broker = BrokerProcess::start_with(&data, &broker.addr.to_string(), &settings).await;
    broker.wait_for_health(ServingStatus::Serving).await;
    eventually("the backlog published", || async {
        (env.outbox(recipient).await == 0).then_some(())
    })
    .await;
    let queue = format!("spean.agency.{recipient}");
    assert_eq!(env.depth(&queue).await, (BACKLOG / BUNDLE) as u32);

    // The first stream confirms 15 referrals: one bundle whole, five of the other, and the
    // `delivered` feedback those 15 confirmations bring the recipient.
    let mut ngo = broker.client(recipient).await;
    let mut stream = ngo.subscribe(BACKLOG as u32).await;
    let mut referrals = Vec::new();
    for _ in 0..BACKLOG {
        let delivery = stream
            .next_within(Duration::from_secs(10), "the backlog")
            .await;
        referrals.push((referral_of(&delivery), delivery.delivery_id));
    }
    let received: BTreeSet<String> = referrals.iter().map(|(r, _)| r.clone()).collect();
    assert_eq!(received, submitted);
    for (_, delivery_id) in &referrals[..CONFIRMED] {
        stream.confirm(delivery_id.clone()).await;
    }
    for _ in 0..CONFIRMED {
        let feedback = stream
            .next_within(Duration::from_secs(10), "feedback")
            .await;
        assert!(matches!(
            feedback.payload,
            Some(pb::delivery::Payload::Feedback(_))
        ));
        stream.confirm(feedback.delivery_id).await;
    }
    eventually(
        "every message acked but the partly confirmed bundle",
        || async { (env.unacked(recipient) == 1).then_some(()) },
    )
    .await;
    drop(stream);

    // The next stream gets that bundle again, all of it: ten referrals, five of them confirmed
    // before. Only the five confirmed for the first time bring feedback.
    let mut stream = ngo.subscribe(BACKLOG as u32).await;
    let (mut again, mut feedback) = (Vec::new(), 0);
    while again.len() < BUNDLE || feedback < BUNDLE - (CONFIRMED - BUNDLE) {
        let delivery = stream
            .next_within(
                Duration::from_secs(10),
                "the returned bundle and its feedback",
            )
            .await;
        match delivery.payload {
            Some(pb::delivery::Payload::Referral(_)) => {
                again.push(referral_of(&delivery));
            }
            _ => feedback += 1,
        }
        stream.confirm(delivery.delivery_id).await;
    }
    let first_stream_only: BTreeSet<String> = referrals[..CONFIRMED]
        .iter()
        .map(|(r, _)| r.clone())
        .collect();
    let again: BTreeSet<String> = again.into_iter().collect();
    assert_eq!(again.len(), BUNDLE);
    assert_eq!(
        again.intersection(&first_stream_only).count(),
        CONFIRMED - BUNDLE
    );
    let unseen: BTreeSet<String> = referrals[CONFIRMED..]
        .iter()
        .map(|(r, _)| r.clone())
        .collect();
    assert!(unseen.is_subset(&again));
    assert!(
        tokio::time::timeout(Duration::from_secs(1), stream.deliveries.message())
            .await
            .is_err(),
        "a delivery came after the returned bundle and its feedback"
    );
    eventually("everything acked", || async {
        (env.unacked(recipient) == 0).then_some(())
    })
    .await;
    assert_eq!(env.depth(&queue).await, 0);
    for id in &submitted {
        let referral = hospital.referral(id).await;
        let delivered = referral
            .history
            .iter()
            .filter(|e| e.kind == pb::FeedbackKind::Delivered as i32)
            .count();
        assert_eq!(delivered, 1, "{id} recorded delivered {delivered} times");
    }
}

/// On the production path a referral's outbox row carries it as submitted, case file included,
/// so the relay publishes it without reading it back. One redirected before the relay published it
/// still reaches the former recipient without its case file, as one redirected before its
/// delivery always did, and reaches the new recipient with it; one not redirected keeps it.
#[tokio::test]
async fn a_referral_redirected_before_it_was_published_reaches_the_former_recipient_without_its_case_file()
 {
    let env = Production::new().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("broker");
    let settings = env.broker_env();
    let out_of_reach = env.out_of_reach(&settings);
    let mut broker = BrokerProcess::start_with(&data, "127.0.0.1:0", &out_of_reach).await;
    let mut hospital = broker.client(SENDER).await;
    let mut ids = Vec::new();
    for client_ref in ["carried-kept", "carried-moved"] {
        let referral = hospital
            .referrals
            .submit(lama(client_ref))
            .await
            .unwrap()
            .into_inner();
        ids.push(referral.referral.unwrap().envelope.unwrap().referral_id);
    }
    let (kept, moved) = (ids[0].clone(), ids[1].clone());
    let moved_ref = "carried-moved";
    let mut ngo = broker.client("mlup-russey").await;
    ngo.referrals
        .redirect(pb::RedirectRequest {
            action: crate::helpers::sealed_action(
                "mlup-russey",
                &["ahc-swu"],
                &moved,
                "redirect-1",
                crate::helpers::words("សុភា (Sophea)", "", "cannot travel to Pailin"),
            ),
            redirect: Some(pb::Redirect {
                to_agency_id: "dosvy-24".into(),
                reason: String::new(),
                case_file: spean_testkit::sealed::reseal_case_file(
                    "mlup-russey",
                    "ahc-swu",
                    moved_ref,
                    &spean_testkit::case_file(),
                    "dosvy-24",
                ),
            }),
        })
        .await
        .unwrap();
    // Nothing was published: both referrals still wait in the NGO's outbox.
    assert_eq!(
        env.outbox("mlup-russey").await,
        3,
        "two referrals and the redirect's event"
    );
    assert_eq!(
        env.carried_referrals("mlup-russey").await,
        1,
        "the redirect left the moved referral's body in the former recipient's outbox"
    );

    broker.kill().await;
    let broker = BrokerProcess::start_with(&data, &broker.addr.to_string(), &settings).await;
    broker.wait_for_health(ServingStatus::Serving).await;
    let case_file =
        <pb::CaseFile as prost::Message>::decode(spean_testkit::case_file().as_slice()).unwrap();
    let mut ngo = broker.client("mlup-russey").await;
    let mut stream = ngo.subscribe(10).await;
    let mut seen = BTreeMap::new();
    while seen.len() < 2 {
        let delivery = stream
            .next_within(Duration::from_secs(10), "the NGO's referrals")
            .await;
        if let Some(pb::delivery::Payload::Referral(r)) = &delivery.payload {
            seen.insert(
                referral_of(&delivery),
                (
                    r.case_file.is_empty(),
                    spean_testkit::sealed::open_case_file("mlup-russey", r),
                ),
            );
        }
        stream.confirm(delivery.delivery_id).await;
    }
    assert_eq!(
        seen[&kept].1.as_ref(),
        Some(&case_file),
        "the referral kept its case file"
    );
    assert!(seen[&moved].0, "the former recipient got the case file");

    let mut department = broker.client("dosvy-24").await;
    let mut stream = department.subscribe(10).await;
    loop {
        let delivery = stream
            .next_within(Duration::from_secs(10), "the department's referral")
            .await;
        if let Some(pb::delivery::Payload::Referral(r)) = &delivery.payload {
            assert_eq!(referral_of(&delivery), moved);
            assert_eq!(
                spean_testkit::sealed::open_case_file("dosvy-24", r).as_ref(),
                Some(&case_file),
                "the new recipient reads the case file"
            );
            break;
        }
        stream.confirm(delivery.delivery_id).await;
    }
}

/// With RabbitMQ up, each referral and its feedback are handed by the broker that wrote them to
/// its own relay and published straight after the commit, without a lease: their rows are held for
/// 15 s, and this broker's relay is set never to poll, so they could only arrive this soon by the
/// handoff. Their rows go once RabbitMQ confirms them.
#[tokio::test]
async fn carried_deliveries_are_handed_to_the_relay_and_published_without_a_lease() {
    let env = Production::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = env.broker_env();
    settings.push((
        "SPEAN_BROKER_DELIVERY__POLL_INTERVAL_MS".into(),
        "3600000".into(),
    ));
    let broker =
        BrokerProcess::start_with(&dir.path().join("broker"), "127.0.0.1:0", &settings).await;
    broker.wait_for_health(ServingStatus::Serving).await;
    env.watch_leases().await;
    let mut ngo = broker.client("mlup-russey").await;
    let mut ngo_stream = ngo.subscribe(10).await;
    let mut hospital = broker.client(SENDER).await;
    let mut hospital_stream = hospital.subscribe(10).await;
    let mut sent = BTreeSet::new();
    for n in 0..3 {
        let referral = hospital
            .referrals
            .submit(lama(&format!("handed-{n}")))
            .await
            .unwrap()
            .into_inner();
        sent.insert(referral.referral.unwrap().envelope.unwrap().referral_id);
    }
    let mut received = BTreeSet::new();
    while received.len() < sent.len() {
        let delivery = ngo_stream
            .next_within(Duration::from_secs(10), "a handed-off referral")
            .await;
        if let Some(pb::delivery::Payload::Referral(_)) = &delivery.payload {
            received.insert(referral_of(&delivery));
        }
        ngo_stream.confirm(delivery.delivery_id).await;
    }
    assert_eq!(received, sent);
    // The hospital hears that each was delivered: feedback written by the confirmation, handed
    // off in turn.
    let mut told = BTreeSet::new();
    while told.len() < sent.len() {
        let delivery = hospital_stream
            .next_within(Duration::from_secs(10), "a handed-off `delivered` event")
            .await;
        if let Some(pb::delivery::Payload::Feedback(e)) = &delivery.payload
            && e.kind == pb::FeedbackKind::Delivered as i32
        {
            told.insert(e.referral_id.clone());
        }
        hospital_stream.confirm(delivery.delivery_id).await;
    }
    assert_eq!(told, sent);
    eventually("the handed-off rows deleted", || async {
        (env.outbox("mlup-russey").await == 0 && env.outbox(SENDER).await == 0).then_some(())
    })
    .await;
    assert_eq!(
        env.leases_seen().await,
        0,
        "a relay leased a handed-off row"
    );
}

fn referral_of(delivery: &pb::Delivery) -> String {
    match &delivery.payload {
        Some(pb::delivery::Payload::Referral(r)) => {
            r.envelope.as_ref().unwrap().referral_id.clone()
        }
        other => panic!("expected a referral, got {other:?}"),
    }
}

#[tokio::test]
async fn an_adapter_moved_between_two_brokers_mid_stream_loses_and_duplicates_nothing() {
    let env = Production::new().await;
    let mut net = Network::start(&env).await;
    // The second broker shares the database, RabbitMQ and the network's PKI.
    let mut settings = env.broker_env();
    settings.push((
        "SPEAN_BROKER_TLS__PKI_DIR".into(),
        net.dir.path().join("broker/pki").display().to_string(),
    ));
    let second =
        BrokerProcess::start_with(&net.dir.path().join("broker-2"), "127.0.0.1:0", &settings).await;
    second.wait_for_health(ServingStatus::Serving).await;
    let Network {
        sender,
        recipients,
        responses,
        ..
    } = &mut net;
    let (_, acknowledged_while_moving) =
        tokio::join!(traffic::send(sender, "move", 0..40), async {
            traffic::wait_for_arrivals(recipients, BEFORE_FAULT).await;
            // The first recipient's adapter moves to the second broker mid-stream; what its agency
            // acknowledges meanwhile waits in its outbox and goes to the second broker.
            recipients[0].kill().await;
            let acknowledged = responses.answer_arrivals(recipients, &[ACK]).await;
            recipients[0].point_to(&second);
            recipients[0].start();
            acknowledged
        });
    assert!(acknowledged_while_moving >= BEFORE_FAULT);
    // It did reconnect, to the second broker.
    net.recipients[0].wait_subscribed(2).await;
    let accepted = net.accepted(40).await;
    net.finish(accepted).await;
}

#[tokio::test]
async fn a_message_that_is_not_a_spean_delivery_is_dead_lettered_at_once_and_reported() {
    let env = Production::new().await;
    let mut net = Network::start(&env).await;
    env.publish_poison(RECIPIENTS[0]).await;
    traffic::send(&net.sender, "poison", 0..10).await;
    let accepted = net.accepted(10).await;
    eventually("the poison message in the dead-letter queue", || async {
        (env.depth("spean.dead-letter").await == 1).then_some(())
    })
    .await;
    assert!(net.broker.log().contains("not a Spean delivery"));
    let count = net.broker.admin(&["dead-letters", "count"]).await;
    assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), "1");
    net.finish(accepted).await;
    eventually("the broker to report the dead letter", || async {
        net.broker
            .log()
            .contains("messages are in the dead-letter queue")
            .then_some(())
    })
    .await;
}

/// A delivery that adapters keep receiving and never confirm (an adapter that crashes on it, say)
/// returns to its queue each time the stream ends. At the delivery limit RabbitMQ sets it aside in
/// the dead-letter queue instead of looping; the broker reports it; and once the cause is fixed an
/// operator re-drives it, and it reaches the adapter once.
/// A connection that goes silent without closing (a mobile network dropping, a NAT forgetting it)
/// must not keep what it was sent: the broker pings it, gets no answer, closes it, and the
/// unconfirmed delivery goes to the agency's next connection. Without the ping RabbitMQ holds the
/// delivery for the silent connection's consumer until TCP gives up, some 15 minutes later.
#[tokio::test]
async fn a_connection_gone_silent_hands_its_unconfirmed_delivery_to_the_next() {
    let env = Production::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = env.broker_env();
    for key in ["INTERVAL", "TIMEOUT"] {
        settings.push((
            format!("SPEAN_BROKER_DELIVERY__KEEPALIVE_{key}_MS"),
            "500".into(),
        ));
    }
    let broker =
        BrokerProcess::start_with(&dir.path().join("broker"), "127.0.0.1:0", &settings).await;
    broker.wait_for_health(ServingStatus::Serving).await;
    let recipient = RECIPIENTS[0];
    let relay = Relay::start(broker.addr).await;
    let mut far = broker.client_at(&relay.url(), recipient).await;
    let mut far_stream = far.subscribe(8).await;

    let mut request = lama("gone-silent");
    request.recipient = Some(pb::Recipient {
        target: Some(pb::recipient::Target::AgencyId(recipient.into())),
    });
    broker
        .client(SENDER)
        .await
        .referrals
        .submit(request)
        .await
        .unwrap();
    let first = far_stream
        .next_within(
            std::time::Duration::from_secs(10),
            "the referral on the first connection",
        )
        .await;

    relay.go_silent();
    let mut near = broker.client(recipient).await;
    let mut near_stream = near.subscribe(8).await;
    let again = near_stream
        .next_within(
            std::time::Duration::from_secs(20),
            "the delivery the silent connection held, on the next one",
        )
        .await;
    assert_eq!(again.delivery_id, first.delivery_id);
    drop(far_stream);
}

#[tokio::test]
async fn a_delivery_never_confirmed_is_set_aside_at_the_delivery_limit_and_redriven() {
    let env = Production::new().await;
    let dir = tempfile::tempdir().unwrap();
    let broker =
        BrokerProcess::start_with(&dir.path().join("broker"), "127.0.0.1:0", &env.broker_env())
            .await;
    broker.wait_for_health(ServingStatus::Serving).await;
    let recipient = RECIPIENTS[0];
    let mut request = lama("never-confirmed");
    request.recipient = Some(pb::Recipient {
        target: Some(pb::recipient::Target::AgencyId(recipient.into())),
    });
    let referral_id = referral_id_of(
        broker
            .client(SENDER)
            .await
            .referrals
            .submit(request)
            .await
            .unwrap(),
    );

    // Receive it and drop the stream without confirming, until RabbitMQ stops handing it out.
    let dead_letters = "spean.dead-letter";
    let mut ngo = broker.client(recipient).await;
    let mut handed_out = 0;
    while env.depth(dead_letters).await == 0 {
        assert!(
            handed_out <= 10,
            "delivered {handed_out} times and never set aside"
        );
        let mut stream = ngo.subscribe(1).await;
        let next = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            stream.deliveries.message(),
        )
        .await;
        if let Ok(Ok(Some(delivery))) = next {
            match delivery.payload {
                Some(pb::delivery::Payload::Referral(r)) => {
                    assert_eq!(r.envelope.unwrap().referral_id, referral_id);
                }
                other => panic!("unexpected delivery {other:?}"),
            }
            handed_out += 1;
        }
    }
    // The test environment's limit is 5: the first delivery and five returns.
    assert!(
        handed_out >= 5,
        "set aside after only {handed_out} deliveries"
    );
    let count = broker.admin(&["dead-letters", "count"]).await;
    assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), "1");
    eventually("the broker to report the dead letter", || async {
        broker
            .log()
            .contains("messages are in the dead-letter queue")
            .then_some(())
    })
    .await;

    let redriven = broker.admin(&["dead-letters", "redrive"]).await;
    assert_eq!(
        String::from_utf8_lossy(&redriven.stdout).trim(),
        "re-drove 1 messages"
    );
    assert_eq!(env.depth(dead_letters).await, 0);
    let mut adapter = AdapterProcess::installed(&broker, recipient, dir.path()).await;
    adapter.start();
    eventually("the re-driven referral in the adapter's inbox", || async {
        let inbox = adapter.inbox().await;
        (inbox.len() == 1 && inbox[0]["referral_id"] == referral_id.as_str()).then_some(())
    })
    .await;
    adapter.kill().await;
}

#[tokio::test]
async fn the_broker_reaches_rabbitmq_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    // The network's PKI issues RabbitMQ's server certificate too (for localhost).
    let init = tokio::process::Command::new(crate::helpers::bin("spean-broker"))
        .arg("--data-dir")
        .arg(dir.path().join("broker"))
        .args(["pki", "init"])
        .output()
        .await
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let env = Production::with_tls_rabbit(&dir.path().join("broker/pki")).await;
    let mut net = Network::start_in(dir, &env).await;
    assert!(
        env.broker_env()
            .iter()
            .any(|(_, v)| v.starts_with("amqps://")),
        "the broker is not using TLS"
    );
    traffic::send(&net.sender, "tls", 0..6).await;
    let accepted = net.accepted(6).await;
    net.finish(accepted).await;
}
