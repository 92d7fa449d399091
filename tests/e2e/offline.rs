//! Offline for days: an agency's adapter cut off from the broker (a relay that goes silent, as a
//! field site's mobile network does) while both sides keep working. The NGO reads and acts through
//! its command line and its local API, is restarted while still cut off, and the hospital acts on
//! the same referrals meanwhile, two of them in ways that make the NGO's queued actions
//! impossible. When the link returns, both sides converge on the broker's history: nothing
//! duplicated, nothing lost, the NGO's actions in the order it made them, and each refused one
//! shown with the broker's reason. On the embedded and on the production path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{AdapterProcess, BrokerProcess, Relay, eventually};
use crate::production::Production;
use crate::story_lama::{CASE_FILE, lama_send_args};

const HOSPITAL: &str = "ahc-swu";
const NGO: &str = "mlup-russey";

/// The NGO's local API: its address (from the file the daemon writes) and a key.
struct Api {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Api {
    async fn of(adapter: &AdapterProcess) -> Self {
        let key = adapter.json(&["api-key", "create", "case-system"]).await["secret"]
            .as_str()
            .unwrap()
            .to_owned();
        Self {
            base: String::new(),
            key,
            http: reqwest::Client::new(),
        }
    }

    /// Reads the address the (re)started daemon bound.
    async fn find(&mut self, adapter: &AdapterProcess) {
        let file = PathBuf::from(format!("{}.api-addr", adapter.store().display()));
        let _ = std::fs::remove_file(&file);
        let addr = eventually("the NGO's API to listen", || async {
            std::fs::read_to_string(&file).ok()
        })
        .await;
        self.base = format!("http://{}", addr.trim());
    }

    async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// A write; returns its status code and answer.
    async fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }
}

/// Sends story 1's referral from the hospital to the NGO, online; returns its id.
async fn sent(hospital: &AdapterProcess, dir: &Path, client_ref: &str) -> String {
    let case_file = dir.join(format!("{client_ref}.json"));
    std::fs::write(&case_file, CASE_FILE).unwrap();
    let answer = hospital
        .json(&lama_send_args(
            &["--to", NGO],
            client_ref,
            case_file.to_str().unwrap(),
        ))
        .await;
    assert_eq!(answer["status"], "sent", "{answer}");
    answer["referral_id"].as_str().unwrap().to_owned()
}

/// A feedback action by the command line, while cut off: queued, not failed.
async fn queued(ngo: &AdapterProcess, args: &[&str]) {
    let answer = ngo.json(args).await;
    assert_eq!(answer["status"], "queued", "{args:?}: {answer}");
}

/// A referral's history as an agency's store holds it: (event id, kind, actor, details).
async fn history(adapter: &AdapterProcess, id: &str) -> Vec<(String, String, String, Value)> {
    let shown = adapter.json(&["show", id]).await;
    shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event_id"].as_str().unwrap().to_owned(),
                e["kind"].as_str().unwrap().to_owned(),
                e["actor_agency_id"].as_str().unwrap().to_owned(),
                e["details"].clone(),
            )
        })
        .collect()
}

/// The history's event ids as the broker holds them, read by the NGO.
async fn broker_history(broker: &BrokerProcess, id: &str) -> Vec<String> {
    let read = broker.client(NGO).await.referral(id).await;
    read.history.into_iter().map(|e| e.event_id).collect()
}

async fn offline_for_days_then_both_sides_converge(broker: &BrokerProcess, dir: &Path) {
    let relay = Relay::start(broker.addr).await;
    let mut hospital = AdapterProcess::installed(broker, HOSPITAL, dir).await;
    let mut ngo = AdapterProcess::installed(broker, NGO, dir).await;
    ngo.point_to_url(relay.url());
    let mut api = Api::of(&ngo).await;
    let with_api = [("SPEAN_ADAPTER_API__LISTEN", "127.0.0.1:0")];
    hospital.start();
    ngo.start_with(&with_api);
    api.find(&ngo).await;

    // Online: six referrals reach the NGO; it acknowledges the first.
    let mut ids = Vec::new();
    for n in 1..=6 {
        ids.push(sent(&hospital, dir, &format!("offline-r{n}")).await);
    }
    eventually("the six referrals in the NGO's inbox", || async {
        (ngo.inbox().await.len() == 6).then_some(())
    })
    .await;
    let [r1, r2, r3, r4, r5, r6] = ids.clone().try_into().unwrap();
    assert_eq!(
        ngo.json(&["ack", &r1, "--request-id", "ngo-ack-1"]).await["status"],
        "sent"
    );

    // The network goes silent; the NGO's laptop is restarted while it is, and finds the broker
    // out of reach.
    let started = std::time::Instant::now();
    relay.go_silent();
    ngo.kill().await;
    ngo.start_with(&with_api);
    api.find(&ngo).await;
    eventually(
        "the NGO's daemon to find the broker out of reach",
        || async {
            let health = api.get("/v1/health").await;
            (health["broker"]["connected"] == false && health["broker"]["since"].is_string())
                .then_some(())
        },
    )
    .await;

    eprintln!("cut off noticed after {:?}", started.elapsed());
    // Days of work at the NGO, cut off: through the command line and the API, every action
    // queued with its key; reading works.
    let by = "សុភា (Sophea)";
    queued(
        &ngo,
        &[
            "accept",
            &r1,
            "--action",
            "home follow-up",
            "--date",
            "2026-12-20",
            "--by",
            by,
            "--request-id",
            "ngo-accept-1",
        ],
    )
    .await;
    let (code, answer) = api
        .post(
            &format!("/v1/referrals/{r1}/in-progress"),
            "ngo-progress-1",
            json!({ "by": by }),
        )
        .await;
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["status"], "queued");
    queued(
        &ngo,
        &[
            "followup",
            &r1,
            "--activity",
            "home_visit",
            "--date",
            "2026-12-10",
            "--request-id",
            "ngo-visit-1",
        ],
    )
    .await;
    let (code, _) = api
        .post(
            &format!("/v1/referrals/{r1}/follow-ups"),
            "ngo-visit-2",
            json!({ "activity": "school_attendance", "date": "2027-01-10" }),
        )
        .await;
    assert_eq!(code, 202);
    queued(
        &ngo,
        &[
            "followup",
            &r1,
            "--activity",
            "grant_received",
            "--date",
            "2027-02-10",
            "--request-id",
            "ngo-visit-3",
        ],
    )
    .await;
    let (code, _) = api
        .post(
            &format!("/v1/referrals/{r2}/acknowledge"),
            "ngo-ack-2",
            json!({}),
        )
        .await;
    assert_eq!(code, 202);
    queued(
        &ngo,
        &[
            "accept",
            &r2,
            "--action",
            "placement",
            "--date",
            "2026-12-21",
            "--request-id",
            "ngo-accept-2",
        ],
    )
    .await;
    queued(
        &ngo,
        &[
            "complete",
            &r2,
            "--outcome",
            "reunited_with_family",
            "--summary",
            "ត្រឡប់ទៅគ្រួសារវិញ",
            "--request-id",
            "ngo-complete-2",
        ],
    )
    .await;
    queued(&ngo, &["ack", &r3, "--request-id", "ngo-ack-3"]).await;
    queued(
        &ngo,
        &[
            "decline",
            &r3,
            "--reason-code",
            "no_capacity",
            "--reason",
            "ពេញ",
            "--request-id",
            "ngo-decline-3",
        ],
    )
    .await;
    queued(&ngo, &["ack", &r4, "--request-id", "ngo-ack-4"]).await;
    queued(
        &ngo,
        &[
            "accept",
            &r4,
            "--action",
            "visit",
            "--date",
            "2026-12-22",
            "--request-id",
            "ngo-accept-4",
        ],
    )
    .await;
    let (code, _) = api
        .post(
            &format!("/v1/referrals/{r5}/acknowledge"),
            "ngo-ack-5",
            json!({}),
        )
        .await;
    assert_eq!(code, 202);
    queued(&ngo, &["ack", &r6, "--request-id", "ngo-ack-6"]).await;
    // The same action made again (a retry by the case system): not queued twice.
    let (code, again) = api
        .post(
            &format!("/v1/referrals/{r2}/acknowledge"),
            "ngo-ack-2",
            json!({}),
        )
        .await;
    assert_eq!(code, 202, "{again}");
    let shown = api.get(&format!("/v1/referrals/{r1}")).await;
    assert_eq!(
        shown["case_file"]["name"]["khmer"],
        crate::helpers::KHMER_NAME
    );
    assert_eq!(ngo.inbox().await.len(), 6);
    let health = api.get("/v1/health").await;
    assert_eq!(health["outbox"]["pending"], 14, "{health}");
    let waiting = ngo.json(&["outbox"]).await;
    assert_eq!(
        waiting
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["status"] == "pending")
            .count(),
        14,
        "{waiting}"
    );

    // Meanwhile the hospital, online, withdraws the fourth, marks the fifth entered in error,
    // and sends two more.
    hospital
        .json(&["withdraw", &r4, "--request-id", "hosp-withdraw-4"])
        .await;
    hospital
        .json(&["error", &r5, "--request-id", "hosp-error-5"])
        .await;
    let r7 = sent(&hospital, dir, "offline-r7").await;
    let r8 = sent(&hospital, dir, "offline-r8").await;
    // The cut lasts long enough for the daemon's reconnection backoff to reach its ceiling.
    tokio::time::sleep(Duration::from_secs(12)).await;

    // The link returns.
    eprintln!("healing after {:?}", started.elapsed());
    relay.heal();
    let outbox = eventually("the NGO's outbox to drain", || async {
        let rows = ngo.json(&["outbox"]).await;
        let rows = rows.as_array().unwrap().clone();
        (!rows.iter().any(|r| r["status"] == "pending")).then_some(rows)
    })
    .await;
    eventually(
        "the referrals sent meanwhile in the NGO's inbox",
        || async {
            let inbox: BTreeSet<String> = ngo
                .inbox()
                .await
                .iter()
                .map(|i| i["referral_id"].as_str().unwrap().to_owned())
                .collect();
            (inbox.contains(&r7) && inbox.contains(&r8)).then_some(())
        },
    )
    .await;
    assert_eq!(ngo.inbox().await.len(), 8, "each referral once");
    eprintln!("drained after {:?}", started.elapsed());

    // The refused actions are those the hospital made impossible, each with the broker's reason,
    // shown by the command line and the API alike; everything else went through.
    let refused: BTreeMap<&str, &str> = outbox
        .iter()
        .filter(|r| r["status"] == "rejected")
        .map(|r| {
            (
                r["request_id"].as_str().unwrap(),
                r["error"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        refused.keys().copied().collect::<Vec<_>>(),
        ["ngo-accept-4", "ngo-ack-4", "ngo-ack-5"],
        "{outbox:?}"
    );
    for (key, reason) in &refused {
        assert!(reason.contains("FAILED_PRECONDITION"), "{key}: {reason}");
    }
    let shown_refused = api.get("/v1/outbox/ngo-ack-5").await;
    assert_eq!(shown_refused["status"], "rejected");
    assert_eq!(
        shown_refused["error"].as_str(),
        refused.get("ngo-ack-5").copied()
    );
    let status = ngo.json(&["status"]).await;
    assert_eq!(status["outbox"].as_array().unwrap().len(), 3, "{status}");

    // Both sides hold the broker's history of every referral: same events, same order, none
    // twice.
    for id in [&r1, &r2, &r3, &r4, &r5, &r6, &r7, &r8] {
        let held = broker_history(broker, id).await;
        let unique: BTreeSet<&String> = held.iter().collect();
        assert_eq!(
            unique.len(),
            held.len(),
            "{id}: an event twice at the broker"
        );
        for side in [&ngo, &hospital] {
            let events = eventually(&format!("{id} to converge at {}", side.agency), || async {
                let events = history(side, id).await;
                let ids: Vec<String> = events.iter().map(|e| e.0.clone()).collect();
                (ids == held).then_some(events)
            })
            .await;
            assert_eq!(events.len(), held.len());
        }
    }

    // The NGO's actions reached the broker in the order it made them.
    let mine = |events: Vec<(String, String, String, Value)>| -> Vec<String> {
        events
            .into_iter()
            // `delivered` is the NGO's adapter confirming, not a person acting.
            .filter(|e| e.2 == NGO && e.1 != "delivered")
            .map(|e| match e.3["activity"].as_str() {
                Some(activity) => format!("{}:{activity}", e.1),
                None => e.1,
            })
            .collect()
    };
    assert_eq!(
        mine(history(&hospital, &r1).await),
        [
            "acknowledged",
            "accepted",
            "in_progress",
            "follow_up:home_visit",
            "follow_up:school_attendance",
            "follow_up:grant_received"
        ]
    );
    assert_eq!(
        mine(history(&hospital, &r2).await),
        ["acknowledged", "accepted", "completed"]
    );
    assert_eq!(
        mine(history(&hospital, &r3).await),
        ["acknowledged", "declined"]
    );
    assert_eq!(mine(history(&hospital, &r4).await), Vec::<String>::new());
    assert_eq!(mine(history(&hospital, &r6).await), ["acknowledged"]);
    // Nothing lost, nothing twice: one event at the broker for every action the NGO sent.
    let actions_sent = outbox.iter().filter(|r| r["status"] == "sent").count();
    let mut ngo_events = 0;
    for id in [&r1, &r2, &r3, &r4, &r5, &r6] {
        ngo_events += history(&hospital, id)
            .await
            .iter()
            .filter(|e| e.2 == NGO && e.1 != "delivered")
            .count();
    }
    assert_eq!(ngo_events, actions_sent, "{outbox:?}");
    let health = api.get("/v1/health").await;
    assert_eq!(health["broker"]["connected"], true, "{health}");
    assert_eq!(health["outbox"]["pending"], 0);
    assert_eq!(health["outbox"]["rejected"], 3);
}

#[tokio::test]
async fn offline_for_days_then_both_sides_converge_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("broker"), "127.0.0.1:0").await;
    offline_for_days_then_both_sides_converge(&broker, dir.path()).await;
}

#[tokio::test]
async fn offline_for_days_then_both_sides_converge_on_postgres_and_rabbitmq() {
    let env = Production::new().await;
    let dir = tempfile::tempdir().unwrap();
    let broker =
        BrokerProcess::start_with(&dir.path().join("broker"), "127.0.0.1:0", &env.broker_env())
            .await;
    offline_for_days_then_both_sides_converge(&broker, dir.path()).await;
}
