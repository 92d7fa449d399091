//! Webhooks against a real HTTP receiver run by the test (hyper on 127.0.0.1:0) and a real store:
//! signatures checked by another implementation (ring, and the docs' Python), retries while the
//! receiver fails or is down, order per referral, disabling and enabling, resending by hand, and
//! messages that outlive a store closed before they were posted.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, AtomicUsize, Ordering},
    },
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use spean_adapter::{
    AdapterError,
    store::Store,
    webhooks::{
        self, EventType, MessageFilter, MessageStatus, MessageView, NewEndpoint, WebhookSettings,
        dispatch,
    },
};
use spean_proto::v1::{FeedbackKind, ReferralState, delivery::Payload};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    BrokerProcess, CONSENTED, delivery, event, eventually, fresh_store, fresh_store_of, id,
    json_of, khmer_case_file, referral, store_khmer_referral,
};

/// One POST as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
    /// What the receiver answered.
    status: u16,
}

/// A webhook receiver on 127.0.0.1: answers `status` to every POST (204 unless changed) after
/// `fail_first` answers of 500, and 500 to any body containing `refuse` (when not empty); records
/// each.
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    status: Arc<AtomicU16>,
    refuse: Arc<Mutex<String>>,
    task: JoinHandle<()>,
}

impl Receiver {
    async fn start(fail_first: usize) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), fail_first).await
    }

    async fn start_on(addr: SocketAddr, fail_first: usize) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(204));
        let failures_left = Arc::new(AtomicUsize::new(fail_first));
        let refuse = Arc::new(Mutex::new(String::new()));
        let (seen2, status2, refuse2) = (seen.clone(), status.clone(), refuse.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, status, failures_left, refuse) = (
                    seen2.clone(),
                    status2.clone(),
                    failures_left.clone(),
                    refuse2.clone(),
                );
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (seen, status, failures_left, refuse) = (
                            seen.clone(),
                            status.clone(),
                            failures_left.clone(),
                            refuse.clone(),
                        );
                        async move {
                            let header = |name: &str| {
                                request
                                    .headers()
                                    .get(name)
                                    .map(|v| v.to_str().unwrap().to_owned())
                                    .unwrap_or_default()
                            };
                            let (id, timestamp, signature) = (
                                header("webhook-id"),
                                header("webhook-timestamp"),
                                header("webhook-signature"),
                            );
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let body = String::from_utf8(body.to_vec()).unwrap();
                            let refused = {
                                let refuse = refuse.lock().unwrap();
                                !refuse.is_empty() && body.contains(refuse.as_str())
                            };
                            let answer = if refused
                                || failures_left
                                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                        n.checked_sub(1)
                                    })
                                    .is_ok()
                            {
                                500
                            } else {
                                status.load(Ordering::SeqCst)
                            };
                            seen.lock().unwrap().push(Seen {
                                id,
                                timestamp,
                                signature,
                                body,
                                status: answer,
                            });
                            let mut response = Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = answer.try_into().unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            status,
            refuse,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/spean", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The ids it answered 2xx to, in the order it did.
    fn delivered(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|s| (200..300).contains(&s.status))
            .map(|s| s.id)
            .collect()
    }

    /// Stops listening: the port refuses connections until a receiver is started on it again.
    fn stop(self) -> SocketAddr {
        self.task.abort();
        self.addr
    }
}

/// A dispatcher running in the background until dropped.
struct Dispatcher {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Dispatcher {
    fn start(store: &Store, settings: WebhookSettings) -> Self {
        let (store, stop) = (store.clone(), CancellationToken::new());
        let token = stop.clone();
        let task = tokio::spawn(async move {
            dispatch::run_until_stopped(&store, &settings, &token).await;
        });
        Self {
            stop,
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Retries in fractions of a second, so that tests see several.
fn quick() -> WebhookSettings {
    WebhookSettings {
        first_retry: Duration::from_millis(200),
        max_retry_interval: Duration::from_secs(2),
        disable_after: Duration::from_secs(3_600),
        request_timeout: Duration::from_secs(5),
    }
}

async fn register(store: &Store, url: &str, types: &[EventType]) -> webhooks::Created {
    webhooks::register(
        store,
        NewEndpoint {
            url: url.to_owned(),
            event_types: types.to_vec(),
            description: "OSCaR ប៉ៃលិន".into(),
        },
    )
    .await
    .unwrap()
}

/// Stores, as deliveries, a new referral sent to agency-b and `events` acknowledgements on it;
/// returns its id.
async fn referral_with_events(store: &Store, events: usize) -> String {
    let referral_id = store_khmer_referral(store).await;
    for _ in 0..events {
        let mut update = event(
            &referral_id,
            FeedbackKind::Acknowledged,
            ReferralState::Acknowledged,
        );
        update.actor_agency_id = "agency-a".into();
        store
            .store_delivery(&delivery(Payload::Feedback(update)))
            .await
            .unwrap();
    }
    referral_id
}

/// Registers an endpoint for what happens to referrals this agency received.
async fn register_for_referrals(store: &Store, url: &str) -> webhooks::Created {
    register(
        store,
        url,
        &[EventType::ReferralReceived, EventType::ReferralUpdated],
    )
    .await
}

/// Each referral's messages were delivered in the order they were queued.
fn assert_in_order_per_referral(delivered: &[String], queued: &[MessageView], referrals: &[&str]) {
    for referral_id in referrals {
        let order = ids_of(queued, referral_id);
        assert_eq!(in_delivery_order(delivered, &order), order, "{referral_id}");
    }
}

async fn all_messages(store: &Store) -> Vec<MessageView> {
    webhooks::messages(store, &MessageFilter::default())
        .await
        .unwrap()
}

/// The message ids of one referral, in the order they were queued.
fn ids_of(messages: &[MessageView], referral_id: &str) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m.payload["data"]["referral_id"] == referral_id)
        .map(|m| m.id.clone())
        .collect()
}

/// `wanted`, in the order `delivered` has them.
fn in_delivery_order(delivered: &[String], wanted: &[String]) -> Vec<String> {
    delivered
        .iter()
        .filter(|id| wanted.contains(id))
        .cloned()
        .collect()
}

/// Checks a signature the way a receiver would, with ring's HMAC rather than the `hmac` crate the
/// adapter signs with.
fn verify_with_ring(secret: &str, seen: &Seen) -> bool {
    let key_bytes = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key_bytes);
    let signed = format!("{}.{}.{}", seen.id, seen.timestamp, seen.body);
    seen.signature.split(' ').any(|candidate| {
        candidate
            .strip_prefix("v1,")
            .and_then(|sig| STANDARD.decode(sig).ok())
            .is_some_and(|sig| ring::hmac::verify(&key, signed.as_bytes(), &sig).is_ok())
    })
}

#[tokio::test]
async fn each_post_is_signed_so_that_another_implementation_verifies_it_and_carries_no_case_data() {
    let test = fresh_store().await;
    let receiver = Receiver::start(0).await;
    let created = register(&test.store, &receiver.url(), &[EventType::ReferralReceived]).await;
    assert!(created.secret.starts_with("whsec_"));
    assert_eq!(
        webhooks::secret(&test.store, &created.endpoint.id)
            .await
            .unwrap(),
        created.secret
    );
    let referral_id = referral_with_events(&test.store, 0).await;
    let _dispatcher = Dispatcher::start(&test.store, quick());

    let seen = eventually("the referral.received post", || {
        let seen = receiver.seen();
        async move { seen.first().cloned() }
    })
    .await;
    assert!(seen.id.starts_with("msg_"), "{}", seen.id);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let stamped: i64 = seen.timestamp.parse().unwrap();
    assert!(
        (now - stamped).abs() < 60,
        "timestamp {stamped} vs now {now}"
    );
    assert!(
        verify_with_ring(&created.secret, &seen),
        "signature did not verify"
    );
    // Altered in transit, or signed with another secret: refused.
    let tampered = Seen {
        body: seen.body.replace("referral.received", "referral.updated"),
        ..seen.clone()
    };
    assert!(!verify_with_ring(&created.secret, &tampered));
    let other = webhooks::signing::new_secret().unwrap();
    assert!(!verify_with_ring(&other, &seen));
    // The docs' Python snippet says the same.
    assert!(
        python_verifies(&created.secret, &seen),
        "docs' Python refused it"
    );

    let body: Value = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(body["type"], "referral.received");
    assert_eq!(body["data"]["referral_id"], referral_id.as_str());
    assert_eq!(body["data"]["audience"], "recipient");
    assert_eq!(body["data"]["urgency"], "urgent");
    for case_data in ["សុខ", "Sok", "ចាន់", "012 345 678", "កំណត់ចំណាំ", "ត្រូវការ"]
    {
        assert!(
            !seen.body.contains(case_data),
            "{case_data} in {}",
            seen.body
        );
    }
}

/// The verification snippet of docs/integration.md, run by python3 (stdlib only).
fn python_verifies(secret: &str, seen: &Seen) -> bool {
    const SNIPPET: &str = r#"
import base64, hashlib, hmac, os, sys
def verify(secret, msg_id, timestamp, body, signature_header):
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.{body}".encode()
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, s.removeprefix("v1,"))
               for s in signature_header.split() if s.startswith("v1,"))
e = os.environ
sys.exit(0 if verify(e["SECRET"], e["ID"], e["TS"], sys.stdin.read(), e["SIG"]) else 1)
"#;
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/integration.md"
    ))
    .expect("docs/integration.md");
    let function = SNIPPET
        .lines()
        .skip(2)
        .take(6)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        docs.contains(&function),
        "docs/integration.md no longer shows the verify function this test runs"
    );
    let mut child = std::process::Command::new("python3")
        .args(["-c", SNIPPET])
        .env("SECRET", secret)
        .env("ID", &seen.id)
        .env("TS", &seen.timestamp)
        .env("SIG", &seen.signature)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(seen.body.as_bytes())
        .unwrap();
    child.wait().unwrap().success()
}

#[tokio::test]
async fn while_the_receiver_is_down_then_failing_retries_grow_apart_then_all_arrive_in_order() {
    let test = fresh_store().await;
    // A port with nobody behind it, for now.
    let addr = Receiver::start(0).await.stop();
    let url = format!("http://{addr}/hooks/spean");
    register_for_referrals(&test.store, &url).await;
    let first = referral_with_events(&test.store, 2).await;
    let second = referral_with_events(&test.store, 1).await;
    let queued = all_messages(&test.store).await;
    assert_eq!(queued.len(), 5);
    let dispatcher = Dispatcher::start(&test.store, quick());

    // Down: the first message is tried again and again, further apart each time.
    let head = queued[0].id.clone();
    let attempts = eventually("five attempts while down", || {
        let (store, head) = (test.store.clone(), head.clone());
        async move {
            let attempts = webhooks::attempts(&store, &head).await.unwrap();
            (attempts.len() >= 5).then_some(attempts)
        }
    })
    .await;
    assert!(
        attempts
            .iter()
            .all(|a| a.status_code.is_none() && a.error.is_some())
    );
    let at: Vec<_> = attempts
        .iter()
        .map(|a| {
            time::OffsetDateTime::parse(&a.at, &time::format_description::well_known::Rfc3339)
                .unwrap()
        })
        .collect();
    let gaps: Vec<Duration> = at
        .windows(2)
        .map(|w| (w[1] - w[0]).unsigned_abs())
        .collect();
    // Waits are drawn from [step/2, step] with the step doubling from 200 ms.
    // Each is at least half its step, so the lower bounds double too.
    for (n, gap) in gaps.iter().take(4).enumerate() {
        assert!(*gap >= Duration::from_millis(100 << n), "{gaps:?}");
    }
    assert!(gaps[3] > gaps[0], "{gaps:?}");
    // While down, the endpoint waits as a whole: the other referral's head was not tried.
    let other_head = ids_of(&queued, &second)[0].clone();
    assert!(
        webhooks::attempts(&test.store, &other_head)
            .await
            .unwrap()
            .len()
            < attempts.len(),
        "the endpoint was hammered once per referral while down"
    );
    let failing = webhooks::messages(
        &test.store,
        &MessageFilter {
            endpoint: None,
            status: Some(MessageStatus::Failing),
        },
    )
    .await
    .unwrap();
    assert!(
        failing
            .iter()
            .any(|m| m.id == head && m.next_attempt_at.is_some())
    );

    // Back, but answering 500 three times first.
    let receiver = Receiver::start_on(addr, 3).await;
    eventually("all five delivered", || {
        let n = receiver.delivered().len();
        async move { (n >= 5).then_some(()) }
    })
    .await;
    dispatcher.stop().await;

    let delivered = receiver.delivered();
    let mut unique = delivered.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        delivered.len(),
        "delivered twice: {delivered:?}"
    );
    assert_in_order_per_referral(&delivered, &queued, &[&first, &second]);
    // The ids that failed are the ids that then arrived: stable across retries.
    let failed: Vec<String> = receiver
        .seen()
        .into_iter()
        .filter(|s| s.status == 500)
        .map(|s| s.id)
        .collect();
    assert_eq!(failed.len(), 3);
    assert!(failed.iter().all(|id| delivered.contains(id)));
    let views = all_messages(&test.store).await;
    assert!(views.iter().all(|m| m.status == MessageStatus::Delivered));
    let head_view = views.iter().find(|m| m.id == head).unwrap();
    assert_eq!(head_view.last_status, Some(204));
    assert!(head_view.next_attempt_at.is_none());
}

#[tokio::test]
async fn one_referral_stuck_on_500_does_not_hold_back_another() {
    let test = fresh_store().await;
    let receiver = Receiver::start(0).await;
    register_for_referrals(&test.store, &receiver.url()).await;
    let stuck = referral_with_events(&test.store, 1).await;
    // The system fails on everything about the first referral.
    *receiver.refuse.lock().unwrap() = stuck.clone();
    let fine = referral_with_events(&test.store, 2).await;
    let messages = all_messages(&test.store).await;
    let _dispatcher = Dispatcher::start(&test.store, quick());
    let fine_ids = ids_of(&messages, &fine);
    eventually("the other referral delivered", || {
        let (d, want) = (receiver.delivered(), fine_ids.clone());
        async move { want.iter().all(|id| d.contains(id)).then_some(()) }
    })
    .await;
    assert_eq!(
        in_delivery_order(&receiver.delivered(), &fine_ids),
        fine_ids
    );
    // The stuck referral's second message waits behind its first, never tried.
    let stuck_ids = ids_of(&messages, &stuck);
    assert!(
        !webhooks::attempts(&test.store, &stuck_ids[0])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        webhooks::attempts(&test.store, &stuck_ids[1])
            .await
            .unwrap()
            .is_empty()
    );
    receiver.refuse.lock().unwrap().clear();
    eventually("the stuck referral delivered once it is accepted", || {
        let (d, want) = (receiver.delivered(), stuck_ids.clone());
        async move { (in_delivery_order(&d, &want) == want).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn an_endpoint_failing_past_disable_after_is_disabled_keeping_its_messages_until_enabled() {
    let test = fresh_store().await;
    let receiver = Receiver::start(0).await;
    receiver.status.store(503, Ordering::SeqCst);
    let endpoint = register_for_referrals(&test.store, &receiver.url())
        .await
        .endpoint;
    let first = referral_with_events(&test.store, 2).await;
    let settings = WebhookSettings {
        disable_after: Duration::from_secs(1),
        ..quick()
    };
    let dispatcher = Dispatcher::start(&test.store, settings.clone());
    let disabled = eventually("the endpoint disabled", || {
        let (store, id) = (test.store.clone(), endpoint.id.clone());
        async move {
            let e = webhooks::get(&store, &id).await.unwrap();
            (!e.enabled).then_some(e)
        }
    })
    .await;
    let reason = disabled.disabled_reason.clone().unwrap();
    assert!(
        reason.starts_with("failing since ") && reason.contains("HTTP 503"),
        "{reason}"
    );
    assert!(disabled.disabled_at.is_some());
    assert!(
        webhooks::list(&test.store)
            .await
            .unwrap()
            .contains(&disabled)
    );

    // Nothing is dropped, and what happens meanwhile is kept too.
    let second = referral_with_events(&test.store, 1).await;
    let kept = all_messages(&test.store).await;
    assert_eq!(kept.len(), 5);
    assert!(kept.iter().all(|m| m.status != MessageStatus::Delivered));
    // Disabled: nothing is posted, even once the receiver would take it.
    receiver.status.store(204, Ordering::SeqCst);
    let before = receiver.seen().len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        receiver.seen().len(),
        before,
        "posted to a disabled endpoint"
    );

    let enabled = webhooks::set_enabled(&test.store, &endpoint.id, true)
        .await
        .unwrap();
    assert!(enabled.enabled && enabled.disabled_reason.is_none());
    eventually("all five delivered after enabling", || {
        let n = receiver.delivered().len();
        async move { (n == 5).then_some(()) }
    })
    .await;
    dispatcher.stop().await;
    let delivered = receiver.delivered();
    assert_in_order_per_referral(&delivered, &kept, &[&first, &second]);
}

#[tokio::test]
async fn a_message_resent_by_hand_is_posted_again_with_the_same_id() {
    let test = fresh_store().await;
    let receiver = Receiver::start(0).await;
    let created = register(&test.store, &receiver.url(), &[EventType::ReferralReceived]).await;
    referral_with_events(&test.store, 0).await;
    let _dispatcher = Dispatcher::start(&test.store, quick());
    let id = eventually("delivered once", || {
        let d = receiver.delivered();
        async move { d.first().cloned() }
    })
    .await;
    let view = eventually("recorded as delivered", || {
        let (store, id) = (test.store.clone(), id.clone());
        async move {
            let m = webhooks::message(&store, &id).await.unwrap();
            (m.status == MessageStatus::Delivered).then_some(m)
        }
    })
    .await;
    assert_eq!(view.attempts, 1);

    webhooks::resend(&test.store, &id).await.unwrap();
    eventually("delivered again", || {
        let d = receiver.delivered();
        async move { (d.len() == 2).then_some(()) }
    })
    .await;
    assert_eq!(receiver.delivered(), vec![id.clone(), id.clone()]);
    let attempts = eventually("two attempts recorded", || {
        let (store, id) = (test.store.clone(), id.clone());
        async move {
            let a = webhooks::attempts(&store, &id).await.unwrap();
            (a.len() == 2).then_some(a)
        }
    })
    .await;
    assert!(attempts.iter().all(|a| a.status_code == Some(204)));
    assert_eq!(attempts[1].attempt, 2);
    let seen = receiver.seen();
    assert!(verify_with_ring(&created.secret, &seen[1]));

    match webhooks::resend(&test.store, "msg_nope").await {
        Err(AdapterError::NotFound { what, id }) => {
            assert_eq!((what, id.as_str()), ("webhook message", "msg_nope"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_repeated_delivery_queues_nothing() {
    let test = fresh_store().await;
    register_for_referrals(&test.store, "http://127.0.0.1:9/").await;
    let referral_id = id();
    let submitted = event(&referral_id, FeedbackKind::Submitted, ReferralState::Sent);
    let received = delivery(Payload::Referral(referral(
        &referral_id,
        &khmer_case_file(),
        vec![submitted],
    )));
    let update = event(
        &referral_id,
        FeedbackKind::Acknowledged,
        ReferralState::Acknowledged,
    );
    let updated = delivery(Payload::Feedback(update.clone()));
    test.store.store_delivery(&received).await.unwrap();
    test.store.store_delivery(&updated).await.unwrap();
    assert_eq!(all_messages(&test.store).await.len(), 2);
    // The same deliveries again, and the same referral and event under new delivery ids.
    test.store.store_delivery(&received).await.unwrap();
    test.store.store_delivery(&updated).await.unwrap();
    let mut again = received.clone();
    again.delivery_id = id();
    test.store.store_delivery(&again).await.unwrap();
    test.store
        .store_delivery(&delivery(Payload::Feedback(update)))
        .await
        .unwrap();
    assert_eq!(all_messages(&test.store).await.len(), 2);
}

#[tokio::test]
async fn messages_stored_with_their_deliveries_are_posted_after_the_store_is_reopened() {
    let test = fresh_store().await;
    let receiver = Receiver::start(0).await;
    register_for_referrals(&test.store, &receiver.url()).await;
    let first = referral_with_events(&test.store, 3).await;
    let second = referral_with_events(&test.store, 1).await;
    // Nothing posted; the store closed as a killed daemon would leave it (no dispatcher ran).
    test.store.close().await;
    drop(test.store);
    let store = Store::open(&test.path, &crate::helpers::agency_id("agency-b"))
        .await
        .unwrap();
    let queued = all_messages(&store).await;
    assert_eq!(queued.len(), 6);
    let _dispatcher = Dispatcher::start(&store, quick());
    eventually("all six delivered", || {
        let n = receiver.delivered().len();
        async move { (n == 6).then_some(()) }
    })
    .await;
    let delivered = receiver.delivered();
    assert_in_order_per_referral(&delivered, &queued, &[&first, &second]);
}

#[tokio::test]
async fn events_are_typed_by_how_this_agency_stands_to_the_referral() {
    // agency-a sent the referral: what agency-b does is feedback to it.
    let test = fresh_store_of("agency-a").await;
    let feedback = register(
        &test.store,
        "http://127.0.0.1:9/",
        &[EventType::ReferralFeedback],
    )
    .await;
    let escalations = register(
        &test.store,
        "http://localhost:9/",
        &[EventType::ReferralEscalated],
    )
    .await;
    let both = register(
        &test.store,
        "http://[::1]:9/",
        &[
            EventType::ReferralFeedback,
            EventType::ReferralEscalated,
            EventType::ReferralReceived,
        ],
    )
    .await;
    // The referral agency-a sent, as the broker echoes it back: not "received".
    let referral_id = store_khmer_referral(&test.store).await;
    assert!(all_messages(&test.store).await.is_empty());
    let ack = event(
        &referral_id,
        FeedbackKind::Acknowledged,
        ReferralState::Acknowledged,
    );
    let escalated = event(
        &referral_id,
        FeedbackKind::Escalated,
        ReferralState::Acknowledged,
    );
    for e in [&ack, &escalated] {
        test.store
            .store_delivery(&delivery(Payload::Feedback(e.clone())))
            .await
            .unwrap();
    }
    let of = |endpoint: &str, messages: &[MessageView]| -> Vec<(EventType, String)> {
        messages
            .iter()
            .filter(|m| m.endpoint_id == endpoint)
            .map(|m| {
                (
                    m.event_type,
                    m.payload["data"]["kind"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let messages = all_messages(&test.store).await;
    assert_eq!(
        of(&feedback.endpoint.id, &messages),
        vec![
            (EventType::ReferralFeedback, "acknowledged".into()),
            (EventType::ReferralFeedback, "escalated".into())
        ]
    );
    assert_eq!(
        of(&escalations.endpoint.id, &messages),
        vec![(EventType::ReferralEscalated, "escalated".into())]
    );
    assert_eq!(
        of(&both.endpoint.id, &messages),
        vec![
            (EventType::ReferralFeedback, "acknowledged".into()),
            (EventType::ReferralEscalated, "escalated".into())
        ]
    );
    let data = &messages[0].payload["data"];
    assert_eq!(data["actor_agency_id"], "agency-b");
    assert_eq!(data["state"], "acknowledged");
    assert_eq!(data["event_id"], ack.event_id.as_str());
    assert_eq!(messages[0].payload["type"], "referral.feedback");
}

#[tokio::test]
async fn a_request_the_broker_refused_is_announced_with_its_reason() {
    let test = fresh_store().await;
    let endpoint = register(
        &test.store,
        "http://127.0.0.1:9/",
        &[EventType::RequestRejected],
    )
    .await;
    test.store
        .enqueue("req-1", "withdraw", Some("r-1"), b"payload")
        .await
        .unwrap();
    test.store
        .mark_rejected("req-1", "FAILED_PRECONDITION: the referral is closed")
        .await
        .unwrap();
    // Marking it again changes nothing, so announces nothing.
    test.store.mark_rejected("req-1", "again").await.unwrap();
    let messages = all_messages(&test.store).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].endpoint_id, endpoint.endpoint.id);
    assert_eq!(messages[0].payload["type"], "request.rejected");
    let data = &messages[0].payload["data"];
    assert_eq!(data["request_id"], "req-1");
    assert_eq!(data["operation"], "withdraw");
    assert_eq!(data["referral_id"], "r-1");
    assert_eq!(
        data["reason"],
        "FAILED_PRECONDITION: the referral is closed"
    );
}

#[tokio::test]
async fn bad_endpoints_are_refused_naming_the_field_and_unknown_ids_are_not_found() {
    let test = fresh_store().await;
    let refused = |result: Result<webhooks::Created, AdapterError>| match result {
        Err(AdapterError::Invalid { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    let new = |url: &str, types: Vec<EventType>| NewEndpoint {
        url: url.into(),
        event_types: types,
        description: String::new(),
    };
    assert_eq!(
        refused(
            webhooks::register(
                &test.store,
                new(
                    "http://oscar.example.org/h",
                    vec![EventType::ReferralReceived]
                )
            )
            .await
        ),
        "url"
    );
    assert_eq!(
        refused(webhooks::register(&test.store, new("https://oscar.example.org/h", vec![])).await),
        "event_types"
    );
    for missing in [
        webhooks::get(&test.store, "ep_nope").await.map(|_| ()),
        webhooks::remove(&test.store, "ep_nope").await,
        webhooks::set_enabled(&test.store, "ep_nope", true)
            .await
            .map(|_| ()),
        webhooks::secret(&test.store, "ep_nope").await.map(|_| ()),
        webhooks::attempts(&test.store, "msg_nope")
            .await
            .map(|_| ()),
    ] {
        assert!(
            matches!(missing, Err(AdapterError::NotFound { .. })),
            "{missing:?}"
        );
    }
}

/// Runs the binary on a store of `agency-b` in `dir`, with `env` set; no broker is needed.
fn adapter(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_spean-adapter"))
        .arg("--identity")
        .arg(crate::helpers::identity(dir, "agency-b"))
        .arg("--store")
        .arg(dir.join("agency-b.db"))
        .args(["--broker", "https://127.0.0.1:9"])
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .output()
        .expect("run spean-adapter")
}

#[test]
fn the_command_line_manages_endpoints_and_reads_its_settings_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let refused = adapter(
        dir.path(),
        &[],
        &[
            "webhook",
            "add",
            "--url",
            "http://oscar.example.org/h",
            "--event",
            "referral.received",
        ],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("invalid url"), "{stderr}");

    let created = crate::helpers::json_of(&adapter(
        dir.path(),
        &[],
        &[
            "webhook",
            "add",
            "--url",
            "http://127.0.0.1:9/h",
            "--event",
            "referral.received",
            "--event",
            "request.rejected",
            "--description",
            "OSCaR ប៉ៃលិន",
            "--json",
        ],
    ));
    let id = created["endpoint"]["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let listed = crate::helpers::json_of(&adapter(dir.path(), &[], &["webhook", "list", "--json"]));
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["description"], "OSCaR ប៉ៃលិន");
    assert_eq!(
        listed[0]["event_types"],
        serde_json::json!(["referral.received", "request.rejected"])
    );
    assert!(listed[0].get("secret").is_none(), "list shows the secret");
    let shown = adapter(dir.path(), &[], &["webhook", "secret", &id]);
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), secret);

    assert!(
        adapter(dir.path(), &[], &["webhook", "disable", &id])
            .status
            .success()
    );
    let listed = crate::helpers::json_of(&adapter(dir.path(), &[], &["webhook", "list", "--json"]));
    assert_eq!(listed[0]["enabled"], false);
    assert_eq!(listed[0]["disabled_reason"], "disabled by hand");
    let messages = crate::helpers::json_of(&adapter(
        dir.path(),
        &[],
        &["webhook", "messages", "--status", "failing", "--json"],
    ));
    assert_eq!(messages, serde_json::json!([]));
    let missing = adapter(dir.path(), &[], &["webhook", "attempts", "msg_nope"]);
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("NOT_FOUND: webhook message msg_nope is not in the local store")
    );
    assert!(
        adapter(dir.path(), &[], &["webhook", "remove", &id])
            .status
            .success()
    );
    let listed = crate::helpers::json_of(&adapter(dir.path(), &[], &["webhook", "list", "--json"]));
    assert_eq!(listed, serde_json::json!([]));

    let bad_setting = adapter(
        dir.path(),
        &[("SPEAN_ADAPTER_WEBHOOKS__FIRST_RETRY", "soon")],
        &["webhook", "list"],
    );
    assert!(!bad_setting.status.success());
    let stderr = String::from_utf8_lossy(&bad_setting.stderr).to_lowercase();
    assert!(stderr.contains("webhooks.first_retry"), "{stderr}");
}

#[tokio::test]
async fn the_daemon_posts_what_it_receives_and_after_being_killed_what_it_had_not_posted() {
    const HOSPITAL: &str = "ahc-swu";
    const DEPARTMENT: &str = "dosvy-24";
    let broker = BrokerProcess::start();
    broker.publish_keys(&[HOSPITAL, DEPARTMENT]);
    // The department's system is down at first.
    let addr = Receiver::start(0).await.stop();
    let added = json_of(&broker.adapter(
        DEPARTMENT,
        &[
            "webhook",
            "add",
            "--url",
            &format!("http://{addr}/hooks"),
            "--event",
            "referral.received",
            "--event",
            "referral.updated",
            "--json",
        ],
    ));
    let secret = added["secret"].as_str().unwrap().to_owned();
    let settings = [("SPEAN_ADAPTER_WEBHOOKS__FIRST_RETRY", "1")];
    let daemon = broker.daemon(DEPARTMENT, &settings);
    let send = [
        &[
            "send",
            "--to",
            DEPARTMENT,
            "--kind",
            "lama",
            "--urgency",
            "urgent",
            "--json",
        ],
        CONSENTED,
    ]
    .concat();
    let sent = json_of(&broker.adapter(HOSPITAL, &send));
    let referral_id = sent["referral_id"].as_str().unwrap().to_owned();
    let failing = eventually("the daemon to try the message and fail", || async {
        let messages = json_of(&broker.adapter(DEPARTMENT, &["webhook", "messages", "--json"]));
        (messages[0]["status"] == "failing").then_some(messages)
    })
    .await;
    let message_id = failing[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        failing[0]["payload"]["data"]["referral_id"],
        referral_id.as_str()
    );
    // Killed (SIGKILL) with the message unposted; the system comes back; the daemon restarts.
    drop(daemon);
    let receiver = Receiver::start_on(addr, 0).await;
    let _daemon = broker.daemon(DEPARTMENT, &settings);
    eventually("the message posted after the restart", || {
        let delivered = receiver.delivered();
        let id = message_id.clone();
        async move { delivered.contains(&id).then_some(()) }
    })
    .await;
    assert!(verify_with_ring(&secret, &receiver.seen()[0]));

    // The department's own action, echoed back, is told too, naming it as the actor.
    json_of(&broker.adapter(DEPARTMENT, &["ack", &referral_id, "--json"]));
    let update = eventually("the acknowledgement posted", || {
        let seen = receiver.seen();
        async move {
            seen.iter()
                .map(|s| serde_json::from_str::<Value>(&s.body).unwrap())
                .find(|body| body["data"]["kind"] == "acknowledged")
        }
    })
    .await;
    assert_eq!(update["type"], "referral.updated");
    assert_eq!(update["data"]["actor_agency_id"], DEPARTMENT);
    // In between, the broker recorded the delivery itself: every event, in order, once.
    let delivered = receiver.delivered();
    let queued = json_of(&broker.adapter(DEPARTMENT, &["webhook", "messages", "--json"]));
    let queued: Vec<&str> = queued
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(delivered, queued);
    assert_eq!(delivered[0], message_id);
}

#[tokio::test]
async fn an_https_endpoint_is_spoken_to_in_tls_and_a_failed_handshake_fails_the_attempt() {
    use tokio::io::AsyncReadExt;

    let test = fresh_store().await;
    // Not a TLS server: it only keeps the first bytes the adapter sends, then hangs up.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let first_bytes = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut bytes = vec![0u8; 5];
        stream.read_exact(&mut bytes).await.unwrap();
        bytes
    });
    register_for_referrals(&test.store, &format!("https://localhost:{port}/hooks")).await;
    referral_with_events(&test.store, 0).await;
    let _dispatcher = Dispatcher::start(&test.store, quick());

    // A TLS handshake record (0x16), not an HTTP request with the payload in clear.
    let bytes = first_bytes.await.unwrap();
    assert_eq!(bytes[0], 0x16, "{bytes:?}");
    let message = all_messages(&test.store).await.remove(0);
    let attempts = eventually("the attempt recorded", || {
        let (store, id) = (test.store.clone(), message.id.clone());
        async move {
            let a = webhooks::attempts(&store, &id).await.unwrap();
            (!a.is_empty()).then_some(a)
        }
    })
    .await;
    let error = attempts[0].error.clone().unwrap();
    assert!(error.starts_with("TLS:"), "{error}");
    assert_eq!(attempts[0].status_code, None);
}
