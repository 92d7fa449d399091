//! The local HTTP API against real daemons and a real broker: every route, its refusal without a
//! live key (which leaves no trace), bad input named by field, idempotency on `Idempotency-Key`,
//! audit of every case-file read, and the OpenAPI document checked against the routes.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{BrokerProcess, DaemonProcess, json_of};

const HOSPITAL: &str = "ahc-swu";
const NGO: &str = "mlup-russey";
const DELEGATE: &str = "dosvy-24";

/// One agency's daemon with its API, and a key for it.
struct Api {
    _daemon: DaemonProcess,
    base: String,
    key: String,
    http: reqwest::Client,
}

/// Starts `agency`'s daemon serving the API on a port the system chooses, and makes a key.
async fn api(broker: &BrokerProcess, agency: &str) -> Api {
    let key = json_of(&broker.adapter(agency, &["api-key", "create", "oscar-sync", "--json"]));
    let key = key["secret"].as_str().unwrap().to_owned();
    let (daemon, base) = broker.serving(agency).await;
    Api {
        _daemon: daemon,
        base,
        key,
        http: reqwest::Client::new(),
    }
}

/// An answer: its status, its content type and its body as JSON.
struct Answer {
    status: StatusCode,
    content_type: String,
    body: Value,
}

impl Answer {
    /// A problem naming `field`, with `status`.
    fn problem(&self, status: StatusCode, field: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.content_type, "application/problem+json",
            "{}",
            self.body
        );
        assert_eq!(self.body["status"], status.as_u16(), "{}", self.body);
        assert_eq!(self.body["field"], field, "{}", self.body);
        assert!(self.body["type"].as_str().unwrap().starts_with("https://"));
        assert!(!self.body["title"].as_str().unwrap().is_empty());
    }
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Answer {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = response.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            content_type,
            body,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, Some(&self.key), &[], None)
            .await
    }

    /// A write with its idempotency key.
    async fn post(&self, path: &str, key: &str, body: Value) -> Answer {
        self.call(
            Method::POST,
            path,
            Some(&self.key),
            &[("Idempotency-Key", key)],
            Some(&body),
        )
        .await
    }

    /// Waits until `path` lists an item with `referral_id` and returns that item.
    async fn wait_listed(&self, path: &str, referral_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.get(path).await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            if let Some(item) = answer.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["referral_id"] == referral_id)
            {
                return item.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{referral_id} never listed at {path}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until referral `id` is in `state` here.
    async fn wait_state(&self, id: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let shown = self.get(&format!("/v1/referrals/{id}")).await;
            if shown.status == StatusCode::OK && shown.body["referral"]["state"] == state {
                return shown.body;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never reached {state}: {}",
                shown.body
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A LAMA referral from the hospital to the NGO, with consent to every sharing.
fn lama(to: &str) -> Value {
    json!({
        "to": to,
        "kind": "lama",
        "urgency": "urgent",
        "sex": "female",
        "age_band": "0-4",
        "subject_province": "12",
        "case_file": {
            "name": { "khmer": "សុខ ស្រីល័ក្ខ", "latin": "Sok Sreyleak" },
            "reason_for_referral": "ម្ដាយចាកចេញពីមន្ទីរពេទ្យ",
            "notes": "left against medical advice"
        },
        "consent": {
            "by": "guardian",
            "at": "2026-12-01",
            "for": ["redirect", "broadcast", "notified_parties", "follow_up_delegation"]
        }
    })
}

/// Sends a LAMA referral through the hospital's API and returns its id.
async fn sent(hospital: &Api, key: &str) -> String {
    let answer = hospital.post("/v1/referrals", key, lama(NGO)).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.body["referral_id"].as_str().unwrap().to_owned()
}

/// The readers in an agency's audit log, oldest first (opened with the store key, as the adapter
/// reads them), and the number of its outbox rows.
async fn traces(broker: &BrokerProcess, agency: &str) -> (Vec<String>, usize) {
    let store = spean_adapter::store::Store::open_with(
        &broker.dir.path().join(format!("{agency}.db")),
        &spean_domain::ids::AgencyId::parse("agency", agency).unwrap(),
        &spean_adapter::at_rest::StoreKey::File(broker.identity(agency).join("store.key")),
    )
    .await
    .unwrap();
    let readers = store
        .audit_entries()
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.record.actor)
        .collect();
    store.close().await;
    let outbox = json_of(&broker.adapter(agency, &["outbox", "--json"]));
    (readers, outbox.as_array().unwrap().len())
}

/// Waits until `check` holds of what `path` answers, and returns that answer.
async fn eventually_answer(api: &Api, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = api.get(path).await;
        if answer.status == StatusCode::OK && check(&answer.body) {
            return answer.body;
        }
        assert!(Instant::now() < deadline, "{path}: {}", answer.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the document's operation `method path` takes an `Idempotency-Key`, and a body.
fn takes(doc: &Value, method: &str, path: &str) -> (bool, bool) {
    let operation = &doc["paths"][path][method.to_lowercase()];
    let keyed = operation["parameters"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["name"] == "Idempotency-Key"));
    (keyed, operation["requestBody"].is_object())
}

/// Every (method, path) of the OpenAPI document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            routes.insert((method.to_uppercase(), path.clone()));
        }
    }
    routes
}

/// Every `$ref` in `value`, resolved against `doc`'s components.
fn assert_refs_resolve(doc: &Value, value: &Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                let pointer = target.strip_prefix('#').expect("a local reference");
                assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
            }
            map.values().for_each(|v| assert_refs_resolve(doc, v));
        }
        Value::Array(items) => items.iter().for_each(|v| assert_refs_resolve(doc, v)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_does_what_the_command_line_does_for_a_caller_with_a_live_key() {
    let broker = BrokerProcess::start();
    broker.publish_keys(&[HOSPITAL, NGO, DELEGATE, "mosvy-coord"]);
    let hospital = api(&broker, HOSPITAL).await;
    let ngo = api(&broker, NGO).await;
    let mut driven: BTreeSet<(String, String)> = BTreeSet::new();
    let mut drove = |method: &str, path: &str| {
        driven.insert((method.to_owned(), path.to_owned()));
    };

    // The document: OpenAPI 3.1, generated, every reference resolving, parsed by an independent
    // implementation of the specification (oas3).
    let doc = hospital.get("/v1/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    drove("GET", "/v1/openapi.json");
    let doc = doc.body;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_refs_resolve(&doc, &doc);
    let parsed = oas3::from_json(doc.to_string()).expect("a valid OpenAPI 3.1 document");
    assert!(parsed.openapi.starts_with("3.1"));
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());

    // The NGO's system registers a webhook endpoint (nothing listens there: its messages wait).
    let hook = json!({
        "url": "http://127.0.0.1:9/spean",
        "event_types": ["referral.received", "referral.updated"],
        "description": "OSCaR"
    });
    let registered = ngo.post("/v1/webhooks", "api-hook-1", hook.clone()).await;
    assert_eq!(
        registered.status,
        StatusCode::CREATED,
        "{}",
        registered.body
    );
    drove("POST", "/v1/webhooks");
    let endpoint = registered.body["endpoint"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        registered.body["secret"]
            .as_str()
            .unwrap()
            .starts_with("whsec_")
    );
    let again = ngo.post("/v1/webhooks", "api-hook-1", hook.clone()).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["endpoint"]["id"], endpoint.as_str());
    assert_eq!(again.body["secret"], registered.body["secret"]);
    let mut other_hook = hook.clone();
    other_hook["url"] = json!("http://127.0.0.1:10/other");
    ngo.post("/v1/webhooks", "api-hook-1", other_hook)
        .await
        .problem(StatusCode::CONFLICT, "Idempotency-Key");
    let mut far = hook.clone();
    far["url"] = json!("http://example.org/hook");
    ngo.post("/v1/webhooks", "api-hook-2", far)
        .await
        .problem(StatusCode::BAD_REQUEST, "url");

    // Send, then the same again (a replay: same referral, nothing new), then other content under
    // the same key (refused, naming the header).
    let sent_answer = hospital
        .post("/v1/referrals", "api-send-1", lama(NGO))
        .await;
    assert_eq!(
        sent_answer.status,
        StatusCode::CREATED,
        "{}",
        sent_answer.body
    );
    drove("POST", "/v1/referrals");
    let id = sent_answer.body["referral_id"].as_str().unwrap().to_owned();
    assert_eq!(sent_answer.body["status"], "sent");
    let again = hospital
        .post("/v1/referrals", "api-send-1", lama(NGO))
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["referral_id"], id.as_str());
    assert_eq!(again.body["replayed"], true);
    let mut other = lama(NGO);
    other["urgency"] = json!("routine");
    hospital
        .post("/v1/referrals", "api-send-1", other)
        .await
        .problem(StatusCode::CONFLICT, "Idempotency-Key");

    // Bad input, each named by its field.
    let no_key = hospital
        .call(
            Method::POST,
            "/v1/referrals",
            Some(&hospital.key),
            &[],
            Some(&lama(NGO)),
        )
        .await;
    no_key.problem(StatusCode::BAD_REQUEST, "Idempotency-Key");
    hospital
        .post("/v1/referrals", "bad key with spaces", lama(NGO))
        .await
        .problem(StatusCode::BAD_REQUEST, "Idempotency-Key");
    let mut missing_kind = lama(NGO);
    missing_kind.as_object_mut().unwrap().remove("kind");
    let answer = hospital
        .post("/v1/referrals", "api-bad-1", missing_kind)
        .await;
    answer.problem(StatusCode::BAD_REQUEST, "body");
    assert!(
        answer.body["detail"].as_str().unwrap().contains("kind"),
        "{}",
        answer.body
    );
    let mut wrong_name = lama(NGO);
    wrong_name["case_file"]["name"]["khmer"] = json!(42);
    hospital
        .post("/v1/referrals", "api-bad-2", wrong_name)
        .await
        .problem(StatusCode::BAD_REQUEST, "case_file.name.khmer");
    let mut wrong_urgency = lama(NGO);
    wrong_urgency["urgency"] = json!("soon");
    hospital
        .post("/v1/referrals", "api-bad-3", wrong_urgency)
        .await
        .problem(StatusCode::BAD_REQUEST, "urgency");
    let mut no_consent_date = lama(NGO);
    no_consent_date["consent"]
        .as_object_mut()
        .unwrap()
        .remove("at");
    hospital
        .post("/v1/referrals", "api-bad-4", no_consent_date)
        .await
        .problem(StatusCode::BAD_REQUEST, "consent.at");
    let mut bad_recipient = lama("Not An Agency");
    bad_recipient["to"] = json!("Not An Agency");
    hospital
        .post("/v1/referrals", "api-bad-5", bad_recipient)
        .await
        .problem(StatusCode::BAD_REQUEST, "to");
    // None of the refused requests reached the outbox.
    let outbox = hospital.get("/v1/outbox").await;
    assert_eq!(outbox.status, StatusCode::OK);
    drove("GET", "/v1/outbox");
    assert_eq!(outbox.body.as_array().unwrap().len(), 1, "{}", outbox.body);
    let row = hospital.get("/v1/outbox/api-send-1").await;
    assert_eq!(row.body["status"], "sent", "{}", row.body);
    drove("GET", "/v1/outbox/{key}");
    hospital
        .get("/v1/outbox/no-such-request")
        .await
        .problem(StatusCode::NOT_FOUND, "path");

    // The NGO's inbox lists it, waiting on it; filters and paging.
    let item = ngo.wait_listed("/v1/inbox", &id).await;
    drove("GET", "/v1/inbox");
    assert_eq!(item["waiting_on_this_agency"], true);
    assert_eq!(item["name_km"], "សុខ ស្រីល័ក្ខ");
    let waiting = ngo.get("/v1/inbox?waiting_on_us=true&kind=lama").await;
    assert_eq!(waiting.body["total"], 1, "{}", waiting.body);
    let accepted = ngo.get("/v1/inbox?state=accepted").await;
    assert_eq!(accepted.body["total"], 0, "{}", accepted.body);
    let second = sent(&hospital, "api-send-2").await;
    ngo.wait_listed("/v1/inbox", &second).await;
    let page = ngo.get("/v1/inbox?limit=1").await;
    assert_eq!(page.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(page.body["total"], 2);
    assert_eq!(page.body["next_offset"], 1);
    let last = ngo.get("/v1/inbox?limit=1&offset=1").await;
    assert_eq!(last.body["next_offset"], Value::Null);
    ngo.get("/v1/inbox?limit=0")
        .await
        .problem(StatusCode::BAD_REQUEST, "limit");

    // One referral: the case file in Khmer, the read audited under the staff member and the key.
    let (audited_before, _) = traces(&broker, NGO).await;
    let shown = ngo
        .call(
            Method::GET,
            &format!("/v1/referrals/{id}"),
            Some(&ngo.key),
            &[("Spean-Reader", "ចាន់ ដារា")],
            None,
        )
        .await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.body);
    drove("GET", "/v1/referrals/{id}");
    assert_eq!(shown.body["case_file"]["name"]["khmer"], "សុខ ស្រីល័ក្ខ");
    let (audited_after, _) = traces(&broker, NGO).await;
    assert_eq!(audited_after.len(), audited_before.len() + 1);
    assert_eq!(
        audited_after.last().map(String::as_str),
        Some("ចាន់ ដារា via api:oscar-sync@mlup-russey")
    );
    ngo.get("/v1/referrals/no-such-referral")
        .await
        .problem(StatusCode::NOT_FOUND, "id");

    // The actions, each through its route.
    let act = |path: &str| format!("/v1/referrals/{id}/{path}");
    let ack = ngo
        .post(
            &act("acknowledge"),
            "api-ack-1",
            json!({ "by": "ចាន់ ដារា" }),
        )
        .await;
    assert_eq!(ack.status, StatusCode::OK, "{}", ack.body);
    assert_eq!(ack.body["kind"], "acknowledged");
    drove("POST", "/v1/referrals/{id}/acknowledge");
    ngo.post(
        &act("accept"),
        "api-accept-0",
        json!({ "planned_action": "home visit", "date": "5 Dec" }),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "date");
    let accepted = ngo
        .post(
            &act("accept"),
            "api-accept-1",
            json!({ "planned_action": "ការសួរសុខទុក្ខតាមផ្ទះ", "date": "2026-12-20" }),
        )
        .await;
    assert_eq!(accepted.body["state"], "accepted", "{}", accepted.body);
    drove("POST", "/v1/referrals/{id}/accept");
    let progress = ngo
        .post(&act("in-progress"), "api-progress-1", json!({}))
        .await;
    assert_eq!(progress.body["state"], "in_progress", "{}", progress.body);
    drove("POST", "/v1/referrals/{id}/in-progress");
    let visit = ngo
        .post(
            &act("follow-ups"),
            "api-visit-1",
            json!({ "activity": "home_visit", "date": "2026-12-04" }),
        )
        .await;
    assert_eq!(visit.body["kind"], "follow_up", "{}", visit.body);
    drove("POST", "/v1/referrals/{id}/follow-ups");
    let delegated = ngo
        .post(
            &act("delegation"),
            "api-delegate-1",
            json!({ "to": DELEGATE, "reason": "nearer the family" }),
        )
        .await;
    assert_eq!(delegated.status, StatusCode::OK, "{}", delegated.body);
    drove("POST", "/v1/referrals/{id}/delegation");
    let revoked = ngo
        .post(&act("delegation/revoke"), "api-revoke-1", json!({}))
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    drove("POST", "/v1/referrals/{id}/delegation/revoke");
    // The hospital cannot complete the NGO's referral: the broker's refusal, with its code.
    let refused = hospital
        .post(
            &act("complete"),
            "api-complete-0",
            json!({ "outcome": "reunited_with_family", "summary": "x" }),
        )
        .await;
    assert!(refused.status.is_client_error(), "{}", refused.body);
    assert!(refused.body["broker_code"].is_string(), "{}", refused.body);
    let completed = ngo
        .post(
            &act("complete"),
            "api-complete-1",
            json!({ "outcome": "reunited_with_family", "summary": "ត្រឡប់ទៅគ្រួសារវិញ" }),
        )
        .await;
    assert_eq!(completed.body["state"], "completed", "{}", completed.body);
    drove("POST", "/v1/referrals/{id}/complete");

    // The second referral: declined. A third: redirected. A fourth: failed after acceptance.
    let declined = ngo
        .post(
            &format!("/v1/referrals/{second}/decline"),
            "api-decline-1",
            json!({ "reason_code": "no_capacity", "reason": "ពេញ" }),
        )
        .await;
    assert_eq!(declined.body["state"], "declined", "{}", declined.body);
    drove("POST", "/v1/referrals/{id}/decline");
    let third = sent(&hospital, "api-send-3").await;
    ngo.wait_listed("/v1/inbox", &third).await;
    let redirected = ngo
        .post(
            &format!("/v1/referrals/{third}/redirect"),
            "api-redirect-1",
            json!({ "to": DELEGATE, "reason": "nearer" }),
        )
        .await;
    assert_eq!(redirected.status, StatusCode::OK, "{}", redirected.body);
    drove("POST", "/v1/referrals/{id}/redirect");
    let fourth = sent(&hospital, "api-send-4").await;
    ngo.wait_listed("/v1/inbox", &fourth).await;
    ngo.post(
        &format!("/v1/referrals/{fourth}/accept"),
        "api-accept-4",
        json!({ "planned_action": "visit", "date": "2026-12-20" }),
    )
    .await;
    let failed = ngo
        .post(
            &format!("/v1/referrals/{fourth}/fail"),
            "api-fail-4",
            json!({ "reason": "family moved" }),
        )
        .await;
    assert_eq!(failed.body["state"], "failed", "{}", failed.body);
    drove("POST", "/v1/referrals/{id}/fail");
    // The hospital withdraws a fifth, marks a sixth entered in error; consent for a seventh is
    // withdrawn by the guardian.
    let fifth = sent(&hospital, "api-send-5").await;
    let withdrawn = hospital
        .post(
            &format!("/v1/referrals/{fifth}/withdraw"),
            "api-withdraw-5",
            json!({}),
        )
        .await;
    assert_eq!(withdrawn.body["state"], "withdrawn", "{}", withdrawn.body);
    drove("POST", "/v1/referrals/{id}/withdraw");
    let sixth = sent(&hospital, "api-send-6").await;
    let in_error = hospital
        .post(
            &format!("/v1/referrals/{sixth}/entered-in-error"),
            "api-error-6",
            json!({}),
        )
        .await;
    assert_eq!(in_error.status, StatusCode::OK, "{}", in_error.body);
    drove("POST", "/v1/referrals/{id}/entered-in-error");
    let seventh = sent(&hospital, "api-send-7").await;
    hospital
        .post(
            &format!("/v1/referrals/{seventh}/consent-withdrawal"),
            "api-consent-0",
            json!({ "withdrawn_by": "guardian", "note": "no notes here" }),
        )
        .await
        .problem(StatusCode::BAD_REQUEST, "note");
    let consent = hospital
        .post(
            &format!("/v1/referrals/{seventh}/consent-withdrawal"),
            "api-consent-7",
            json!({ "withdrawn_by": "guardian" }),
        )
        .await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.body);
    drove("POST", "/v1/referrals/{id}/consent-withdrawal");

    // The NGO's webhook endpoint: its messages wait (nobody listens), each attempt visible;
    // disabled, enabled, a message resent by hand, the endpoint removed.
    let listed = ngo.get("/v1/webhooks").await;
    assert_eq!(listed.body.as_array().unwrap().len(), 1, "{}", listed.body);
    assert!(
        listed.body[0].get("secret").is_none(),
        "the list never shows a secret"
    );
    drove("GET", "/v1/webhooks");
    let one = ngo.get(&format!("/v1/webhooks/{endpoint}")).await;
    assert_eq!(one.body["url"], "http://127.0.0.1:9/spean");
    drove("GET", "/v1/webhooks/{id}");
    let secret = ngo.get(&format!("/v1/webhooks/{endpoint}/secret")).await;
    assert_eq!(secret.body["secret"], registered.body["secret"]);
    drove("GET", "/v1/webhooks/{id}/secret");
    let messages = ngo
        .get(&format!("/v1/webhook-messages?endpoint={endpoint}"))
        .await;
    drove("GET", "/v1/webhook-messages");
    let received: Vec<&Value> = messages
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["event_type"] == "referral.received")
        .collect();
    assert!(received.len() >= 4, "{}", messages.body);
    let message = received[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(received[0]["payload"]["data"]["referral_id"], id.as_str());
    ngo.get("/v1/webhook-messages?status=lost")
        .await
        .problem(StatusCode::BAD_REQUEST, "status");
    let shown_message = ngo.get(&format!("/v1/webhook-messages/{message}")).await;
    assert_eq!(shown_message.body["id"], message.as_str());
    drove("GET", "/v1/webhook-messages/{id}");
    let tried = eventually_answer(
        &ngo,
        &format!("/v1/webhook-messages/{message}/attempts"),
        |b| !b.as_array().unwrap().is_empty(),
    )
    .await;
    assert!(tried[0]["status_code"].is_null(), "nobody listens: {tried}");
    drove("GET", "/v1/webhook-messages/{id}/attempts");
    let disabled = ngo
        .call(
            Method::POST,
            &format!("/v1/webhooks/{endpoint}/disable"),
            Some(&ngo.key),
            &[],
            None,
        )
        .await;
    assert_eq!(disabled.body["enabled"], false, "{}", disabled.body);
    drove("POST", "/v1/webhooks/{id}/disable");
    let enabled = ngo
        .call(
            Method::POST,
            &format!("/v1/webhooks/{endpoint}/enable"),
            Some(&ngo.key),
            &[],
            None,
        )
        .await;
    assert_eq!(enabled.body["enabled"], true, "{}", enabled.body);
    drove("POST", "/v1/webhooks/{id}/enable");
    let resent = ngo
        .call(
            Method::POST,
            &format!("/v1/webhook-messages/{message}/resend"),
            Some(&ngo.key),
            &[],
            None,
        )
        .await;
    assert_eq!(resent.status, StatusCode::OK, "{}", resent.body);
    assert_eq!(resent.body["id"], message.as_str());
    drove("POST", "/v1/webhook-messages/{id}/resend");
    ngo.call(
        Method::POST,
        "/v1/webhook-messages/msg_none/resend",
        Some(&ngo.key),
        &[],
        None,
    )
    .await
    .problem(StatusCode::NOT_FOUND, "path");
    let removed = ngo
        .call(
            Method::DELETE,
            &format!("/v1/webhooks/{endpoint}"),
            Some(&ngo.key),
            &[],
            None,
        )
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    drove("DELETE", "/v1/webhooks/{id}");
    ngo.get(&format!("/v1/webhooks/{endpoint}"))
        .await
        .problem(StatusCode::NOT_FOUND, "path");

    // What the hospital sent, with filters; health.
    hospital.wait_state(&id, "completed").await;
    let sent_list = hospital.get("/v1/sent?all=true&state=completed").await;
    assert_eq!(sent_list.status, StatusCode::OK);
    drove("GET", "/v1/sent");
    let ids: Vec<&str> = sent_list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["referral_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()], "{}", sent_list.body);
    let open = hospital.get("/v1/sent").await;
    assert!(
        open.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] != "completed"),
        "{}",
        open.body
    );
    let health = hospital.get("/v1/health").await;
    assert_eq!(health.status, StatusCode::OK);
    drove("GET", "/v1/health");
    assert_eq!(health.body["agency_id"], HOSPITAL);
    assert_eq!(health.body["broker"]["connected"], true, "{}", health.body);
    assert_eq!(health.body["outbox"]["pending"], 0, "{}", health.body);

    // Every route in the document was driven above, and every route driven is in the document.
    assert_eq!(documented(&doc), driven);

    // Without a live key, every route answers 401 and leaves no trace.
    let before = traces(&broker, NGO).await;
    let revoked_key = json_of(&broker.adapter(NGO, &["api-key", "create", "old-system", "--json"]));
    let revoked_key = revoked_key["secret"].as_str().unwrap().to_owned();
    let revoke = broker.adapter(NGO, &["api-key", "revoke", "old-system"]);
    assert!(
        revoke.status.success(),
        "{}",
        String::from_utf8_lossy(&revoke.stderr)
    );
    let forged = format!("{}x", &ngo.key[..ngo.key.len() - 1]);
    for (method, path) in documented(&doc) {
        let path = path.replace("{id}", &id).replace("{key}", "api-ack-1");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        for key in [
            None,
            Some(forged.as_str()),
            Some(revoked_key.as_str()),
            Some("Basic x"),
        ] {
            let answer = ngo
                .call(
                    method.clone(),
                    &path,
                    key,
                    &[("Idempotency-Key", "api-unauth")],
                    Some(&json!({})),
                )
                .await;
            answer.problem_unauthorized(&path);
        }
    }
    assert_eq!(
        traces(&broker, NGO).await,
        before,
        "a refused request left a trace"
    );
}

impl Answer {
    fn problem_unauthorized(&self, path: &str) {
        assert_eq!(
            self.status,
            StatusCode::UNAUTHORIZED,
            "{path}: {}",
            self.body
        );
        assert_eq!(self.content_type, "application/problem+json", "{path}");
        assert_eq!(self.body["status"], 401, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_write_refuses_a_missing_key_and_unknown_fields_naming_them() {
    let broker = BrokerProcess::start();
    broker.publish_keys(&[HOSPITAL, NGO]);
    let hospital = api(&broker, HOSPITAL).await;
    let doc = hospital.get("/v1/openapi.json").await.body;
    let mut keyed_routes = 0;
    for (method, path) in documented(&doc).into_iter().filter(|(m, _)| m == "POST") {
        let (keyed, with_body) = takes(&doc, &method, &path);
        let path = path.replace("{id}", "r-unknown");
        if keyed {
            keyed_routes += 1;
            let no_key = hospital
                .call(
                    Method::POST,
                    &path,
                    Some(&hospital.key),
                    &[],
                    Some(&json!({})),
                )
                .await;
            no_key.problem(StatusCode::BAD_REQUEST, "Idempotency-Key");
        }
        if !with_body {
            continue;
        }
        let unknown = hospital
            .post(&path, "api-unknown-field", json!({ "nonsense": 1 }))
            .await;
        assert_eq!(
            unknown.status,
            StatusCode::BAD_REQUEST,
            "{method} {path}: {}",
            unknown.body
        );
        assert!(
            unknown.body["detail"]
                .as_str()
                .unwrap()
                .contains("nonsense"),
            "{path}: {}",
            unknown.body
        );
        let not_json = hospital
            .call(
                Method::POST,
                &path,
                Some(&hospital.key),
                &[("Idempotency-Key", "k-1")],
                None,
            )
            .await;
        not_json.problem(StatusCode::BAD_REQUEST, "Content-Type");
    }
    // A referral, its thirteen actions, and a webhook endpoint.
    assert_eq!(keyed_routes, 15);
    let outbox = hospital.get("/v1/outbox").await;
    assert_eq!(outbox.body, json!([]), "nothing was queued");
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_localhost_the_api_speaks_tls_only() {
    let broker = BrokerProcess::start();
    let key = json_of(&broker.adapter(HOSPITAL, &["api-key", "create", "ward-system", "--json"]));
    let key = key["secret"].as_str().unwrap().to_owned();
    // The agency's own certificate for the API (its IT staff's, not the network's).
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let cert = broker.dir.path().join("api-cert.pem");
    let private = broker.dir.path().join("api-key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&private, certified.signing_key.serialize_pem()).unwrap();
    let _daemon = broker.daemon(
        HOSPITAL,
        &[
            ("SPEAN_ADAPTER_API__LISTEN", "0.0.0.0:0"),
            ("SPEAN_ADAPTER_API__TLS_CERT", cert.to_str().unwrap()),
            ("SPEAN_ADAPTER_API__TLS_KEY", private.to_str().unwrap()),
        ],
    );
    let file = PathBuf::from(format!(
        "{}.api-addr",
        broker.dir.path().join(format!("{HOSPITAL}.db")).display()
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    let port = loop {
        if let Some(addr) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|a| a.trim().parse::<std::net::SocketAddr>().ok())
        {
            break addr.port();
        }
        assert!(Instant::now() < deadline, "the API did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let trusting = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let health = trusting
        .get(format!("https://127.0.0.1:{port}/v1/health"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("TLS answers");
    assert_eq!(health.status(), StatusCode::OK);
    // In clear, nothing an HTTP client can read comes back.
    let clear = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/v1/health"))
        .bearer_auth(&key)
        .send()
        .await;
    assert!(clear.is_err() || !clear.unwrap().status().is_success());
}

#[test]
fn the_daemon_refuses_to_serve_the_api_beyond_localhost_in_clear() {
    let broker = BrokerProcess::start();
    let mut daemon = broker.daemon(HOSPITAL, &[("SPEAN_ADAPTER_API__LISTEN", "0.0.0.0:0")]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = daemon.exited() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon started with the API in clear"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let log =
        std::fs::read_to_string(broker.dir.path().join(format!("{HOSPITAL}-daemon.log"))).unwrap();
    assert!(log.contains("api.listen"), "{log}");
}
