//! A stream of referrals and feedback for the fault tests, and the ledger that checks it: by message
//! id, every referral the broker accepted reached its recipient's adapter, and every feedback event it
//! accepted reached the sender's adapter, each shown exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use spean_proto::v1 as pb;

use crate::helpers::{AdapterProcess, GrpcClient, KHMER_NAME, PATIENCE, eventually};

/// The sender of every referral in the stream.
pub const SENDER: &str = "ahc-swu";
/// Recipients, addressed by id in turn.
pub const RECIPIENTS: [&str; 2] = ["mlup-russey", "dosvy-17"];

/// What the broker accepted: referral id → recipient, and acknowledgement event id → referral id.
#[derive(Debug, Default)]
pub struct Ledger {
    pub referrals: BTreeMap<String, String>,
    pub acks: BTreeMap<String, String>,
}

/// Queues referrals `tag-<n>` for `n` in `range` in the sender adapter's outbox (`send
/// --queue-only`), so its daemon carries them to the broker through whatever fault is injected.
pub async fn send(sender: &AdapterProcess, tag: &str, range: std::ops::Range<usize>) {
    for n in range {
        let recipient = RECIPIENTS[n % RECIPIENTS.len()];
        let client_ref = format!("{tag}-{n}");
        let queued = sender
            .json(&[
                "send",
                "--to",
                recipient,
                "--kind",
                "lama",
                "--urgency",
                "routine",
                "--subject-province",
                "24",
                "--name-km",
                KHMER_NAME,
                "--client-ref",
                &client_ref,
                "--queue-only",
            ])
            .await;
        assert_eq!(queued["status"], "queued", "{queued}");
    }
}

/// Every referral the broker holds with `client` as its sender: referral id → recipient.
pub async fn broker_sent(client: &mut GrpcClient) -> BTreeMap<String, String> {
    let mut broker = BTreeMap::new();
    let mut token = String::new();
    loop {
        let page = client
            .referrals
            .list(pb::ListRequest {
                role: pb::Role::Sender as i32,
                page_size: 500,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for r in page.referrals {
            let e = r.envelope.unwrap();
            let id = e.referral_id.clone();
            assert!(
                broker
                    .insert(e.referral_id, e.recipient_agency_id)
                    .is_none(),
                "the broker lists {id} twice"
            );
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    broker
}

/// Waits until the sender's outbox is empty and `expected` referrals are sent, then returns what the
/// broker accepted (referral id → recipient), checked against the sender adapter's own record.
pub async fn accepted(
    sender: &AdapterProcess,
    client: &mut GrpcClient,
    expected: usize,
) -> BTreeMap<String, String> {
    let local = eventually("the sender's outbox to drain", || async {
        let status = sender.json(&["status", "--all"]).await;
        let pending = status["outbox"].as_array().map_or(0, |o| o.len());
        let rows = status["referrals"].as_array()?;
        let sent: BTreeMap<String, String> = rows
            .iter()
            .map(|r| {
                (
                    r["referral_id"].as_str().unwrap_or_default().to_owned(),
                    r["recipient"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        assert_eq!(sent.len(), rows.len(), "the sender lists a referral twice");
        (pending == 0 && sent.len() >= expected).then_some(sent)
    })
    .await;
    let broker = broker_sent(client).await;
    assert_eq!(
        broker.len(),
        expected,
        "the broker holds a referral twice or lost one"
    );
    assert_eq!(local, broker, "the sender's record and the broker's differ");
    broker
}

/// Acknowledges each referral as its recipient, retrying until the broker accepts; returns event
/// id → referral id.
pub async fn acknowledge(
    clients: &mut BTreeMap<String, GrpcClient>,
    referrals: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut acks = BTreeMap::new();
    for (id, recipient) in referrals {
        let client = clients.get_mut(recipient).expect("a client per recipient");
        let request = pb::AcknowledgeRequest {
            action: Some(pb::Action {
                referral_id: id.clone(),
                request_id: format!("ack-{id}"),
                actor_person: "សុភា".into(),
                note: String::new(),
            }),
        };
        let deadline = tokio::time::Instant::now() + PATIENCE * 2;
        loop {
            match client.referrals.acknowledge(request.clone()).await {
                Ok(r) => {
                    acks.insert(r.into_inner().event.unwrap().event_id, id.clone());
                    break;
                }
                Err(status) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "acknowledging {id} kept failing: {status}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    acks
}

/// Every referral the broker accepted for `adapter`'s agency is in its inbox exactly once, and
/// nothing else is.
pub async fn assert_inbox_exactly(adapter: &AdapterProcess, ledger: &Ledger) {
    let expected: BTreeSet<&str> = ledger
        .referrals
        .iter()
        .filter(|(_, r)| **r == adapter.agency)
        .map(|(id, _)| id.as_str())
        .collect();
    let inbox = eventually(
        &format!(
            "{} to hold all {} referrals",
            adapter.agency,
            expected.len()
        ),
        || async {
            let inbox = adapter.inbox().await;
            let ids: BTreeSet<String> = inbox
                .iter()
                .map(|r| r["referral_id"].as_str().unwrap().to_owned())
                .collect();
            expected.iter().all(|id| ids.contains(*id)).then_some(inbox)
        },
    )
    .await;
    let mut ids: Vec<&str> = inbox
        .iter()
        .map(|r| r["referral_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(
        ids.len(),
        unique.len(),
        "{} shows a referral twice",
        adapter.agency
    );
    assert_eq!(
        unique, expected,
        "{} shows referrals it was not sent",
        adapter.agency
    );
}

/// Every acknowledgement the broker accepted is in the sender's history of its referral, once.
pub async fn assert_feedback_exactly(sender: &AdapterProcess, ledger: &Ledger) {
    for (event_id, referral_id) in &ledger.acks {
        let shown = eventually(
            &format!("{} to show acknowledgement {event_id}", sender.agency),
            || async {
                let out = sender.run(&["show", referral_id, "--json"]).await;
                if !out.status.success() {
                    return None;
                }
                let shown: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                shown["history"]
                    .as_array()?
                    .iter()
                    .any(|e| e["event_id"] == event_id.as_str())
                    .then_some(shown)
            },
        )
        .await;
        let acks = shown["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "acknowledged")
            .count();
        assert_eq!(acks, 1, "{referral_id} shows {acks} acknowledgements");
    }
}
