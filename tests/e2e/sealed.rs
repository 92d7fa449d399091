//! Sealed case files and free text (issue 23): stories 1 and 2 run through real adapters with case
//! files and notes that carry known names and words in Khmer and Latin script; then everything the
//! broker holds is searched for them, as UTF-8 text, hex and base64: its SQLite file, a `pg_dump` of
//! its PostgreSQL database, its log, and the body of every message in its RabbitMQ queues, the
//! dead-letter queue included. None may be found. Each reading adapter, meanwhile, shows them byte
//! for byte: sealing hides them from the broker, not from the agencies they were written for.

use std::path::Path;
use std::time::Duration;

use lapin::options::BasicGetOptions;
use lapin::{Connection, ConnectionProperties};

use crate::helpers::{AdapterProcess, BrokerProcess, ServingStatus, eventually};
use crate::production::Production;

const HOSPITAL: &str = "ahc-swu";
const NGO: &str = "mlup-russey";
const PROVINCE: &str = "dosvy-24";
const CANDIDATE: &str = "dosvy-17";
/// Deliveries for it are received and never confirmed, until RabbitMQ sets one aside.
const NEVER_CONFIRMS: &str = "mith-samlanh";

const CHILD_KM: &str = "ស្រី សុវណ្ណារី";
const CHILD_LATIN: &str = "Srey Sovannary";
const MOTHER_KM: &str = "ម៉ៅ ច័ន្ទធូ";
const ADDRESS: &str = "ភូមិត្រពាំងថ្មខាងលិច";
const NARRATIVE: &str = "ឪពុកចុងវាយដំកុមារនៅផ្ទះ";
const INFANT_LATIN: &str = "Baby Rachana Pich";
const STAFF: &str = "ហេង សុធារី (Heng Sotheary)";
const ACK_NOTE: &str = "បានទូរស័ព្ទទៅម្ដាយ Sovannary ព្រឹកនេះ";
const PLANNED: &str = "ចុះសួរសុខទុក្ខនៅផ្ទះរៀងរាល់សប្ដាហ៍";
const REDIRECT_REASON: &str = "grandmother in Pailin will host Sovannary";
const DECLINE_REASON: &str = "គ្មានគ្រួសារអប់រំសម្រាប់ទារក Rachana";

/// Every word the broker must never hold readable.
const SECRETS: [&str; 11] = [
    CHILD_KM,
    CHILD_LATIN,
    MOTHER_KM,
    ADDRESS,
    NARRATIVE,
    INFANT_LATIN,
    STAFF,
    ACK_NOTE,
    PLANNED,
    REDIRECT_REASON,
    DECLINE_REASON,
];

fn case_file(name_km: &str, name_latin: &str) -> String {
    serde_json::json!({
        "name": {"khmer": name_km, "latin": name_latin},
        "date_of_birth": "2019-02-11",
        "guardians": [{"name": {"khmer": MOTHER_KM, "latin": "Mao Chanthou"},
                       "relationship": "mother", "phone": "097 555 0101"}],
        "contact": {"phone": "097 555 0101", "address": ADDRESS, "directions": "behind the school"},
        "reason_for_referral": NARRATIVE,
        "consent": {"given_by": "mother (ម្ដាយ)", "given_at": "2026-12-01T09:00:00+07:00",
                    "scope": "share with the receiving agency"},
        "transport_needs": "",
        "notes": ""
    })
    .to_string()
}

/// The ways a word could sit in bytes: as UTF-8, as hex (either case), as base64 at each of the
/// three alignments it can start at inside a longer encoding.
fn encodings(word: &str) -> Vec<Vec<u8>> {
    let raw = word.as_bytes();
    let mut all = vec![
        raw.to_vec(),
        hex::encode(raw).into_bytes(),
        hex::encode_upper(raw).into_bytes(),
    ];
    for shift in 0..3 {
        let mut shifted = vec![0u8; shift];
        shifted.extend_from_slice(raw);
        let encoded = base64(&shifted);
        // Skip the characters the prefix shares, and the last ones, which depend on what follows.
        let start = (shift * 4).div_ceil(3);
        let end = encoded.len().saturating_sub(4);
        if end > start {
            all.push(encoded.as_bytes()[start..end].to_vec());
        }
    }
    all
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The secrets found in `bytes`, with the encoding they were found in.
fn found_in(bytes: &[u8]) -> Vec<String> {
    found_among(bytes, &SECRETS)
}

/// Which of `secrets` are in `bytes`, in any encoding of [`encodings`], with the encoding.
pub(crate) fn found_among(bytes: &[u8], secrets: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for &secret in secrets {
        for (n, encoded) in encodings(secret).iter().enumerate() {
            if bytes
                .windows(encoded.len())
                .any(|w| w == encoded.as_slice())
            {
                let how = ["text", "hex", "HEX", "base64", "base64+1", "base64+2"][n];
                found.push(format!("{secret:?} as {how}"));
            }
        }
    }
    found
}

#[test]
fn the_search_finds_each_encoding_it_claims_to() {
    let secret = CHILD_KM;
    for prefix in ["", "x", "xy"] {
        let hidden = format!("{prefix}{secret} and more");
        let b64 = base64(hidden.as_bytes());
        assert!(
            !found_in(b64.as_bytes()).is_empty(),
            "base64 after {prefix:?}"
        );
    }
    assert!(!found_in(hex::encode(secret).as_bytes()).is_empty());
    assert!(!found_in(format!("..{secret}..").as_bytes()).is_empty());
    assert!(found_in(b"nothing of the sort").is_empty());
}

/// `adapter`'s `show --json` of `id`, once it holds the referral.
async fn shown(adapter: &AdapterProcess, id: &str) -> Option<serde_json::Value> {
    let out = adapter.run(&["show", id, "--json"]).await;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Runs the stories through real adapters: story 1 acknowledged, accepted and followed up with
/// notes; a second referral redirected with a reason (re-sealed to the new recipient); story 2 as a
/// broadcast, declined with a reason by one candidate and accepted by the other. Checks that each
/// reader opened what was sealed to it.
/// Returns the adapters (hospital, NGO, department, candidate), and story 1's referral id.
async fn run_stories(broker: &BrokerProcess, dir: &Path) -> (Vec<AdapterProcess>, String) {
    let mut adapters = Vec::new();
    for agency in [HOSPITAL, NGO, PROVINCE, CANDIDATE] {
        let mut adapter = AdapterProcess::installed(broker, agency, dir).await;
        adapter.start();
        adapter.wait_subscribed(1).await;
        adapters.push(adapter);
    }
    let (hospital, ngo, province, candidate) =
        (&adapters[0], &adapters[1], &adapters[2], &adapters[3]);

    let file = dir.join("story-1.json");
    std::fs::write(&file, case_file(CHILD_KM, CHILD_LATIN)).unwrap();
    let send = |client_ref: &'static str, file: &Path| {
        let file = file.to_str().unwrap().to_owned();
        async move {
            let args = crate::story_lama::lama_send_args(&["--to", NGO], client_ref, &file);
            let sent = hospital.json(&args).await;
            assert_eq!(sent["status"], "sent", "{sent}");
            sent["referral_id"].as_str().unwrap().to_owned()
        }
    };
    let kept = send("sealed-kept", &file).await;
    let moved = send("sealed-moved", &file).await;
    for id in [&kept, &moved] {
        eventually("the NGO to open the case file", || async {
            let shown = shown(ngo, id).await?;
            (shown["case_file"]["name"]["khmer"] == CHILD_KM).then_some(())
        })
        .await;
    }

    ngo.json(&["ack", &kept, "--by", STAFF, "--note", ACK_NOTE])
        .await;
    ngo.json(&[
        "accept",
        &kept,
        "--by",
        STAFF,
        "--action",
        PLANNED,
        "--date",
        "2026-12-10",
    ])
    .await;
    ngo.json(&[
        "followup",
        &kept,
        "--by",
        STAFF,
        "--note",
        ACK_NOTE,
        "--activity",
        "home_visit",
        "--date",
        "2026-12-11",
    ])
    .await;
    ngo.json(&[
        "redirect",
        &moved,
        "--to",
        PROVINCE,
        "--by",
        STAFF,
        "--reason",
        REDIRECT_REASON,
    ])
    .await;

    // The hospital opens every word the NGO wrote; the department the case file re-sealed to it.
    eventually("the hospital to open the NGO's notes", || async {
        let shown = hospital.run(&["show", &kept, "--json"]).await;
        let text = String::from_utf8_lossy(&shown.stdout);
        [STAFF, ACK_NOTE, PLANNED]
            .iter()
            .all(|w| text.contains(w))
            .then_some(())
    })
    .await;
    eventually(
        "the department to open the redirected case file",
        || async {
            let shown = shown(province, &moved).await?;
            (shown["case_file"]["reason_for_referral"] == NARRATIVE).then_some(())
        },
    )
    .await;
    eventually("the hospital to open the redirect's reason", || async {
        let shown = hospital.run(&["show", &moved, "--json"]).await;
        String::from_utf8_lossy(&shown.stdout)
            .contains(REDIRECT_REASON)
            .then_some(())
    })
    .await;

    // Story 2: a broadcast, sealed to each candidate.
    let infant = dir.join("story-2.json");
    std::fs::write(&infant, case_file(CHILD_KM, INFANT_LATIN)).unwrap();
    let sent = hospital
        .json(&[
            "send",
            "--service",
            "placement",
            "--province",
            "17",
            "--kind",
            "placement",
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
            "0-4",
            "--subject-province",
            "17",
            "--client-ref",
            "sealed-placement",
            "--case-file",
            infant.to_str().unwrap(),
        ])
        .await;
    assert_eq!(sent["status"], "sent", "{sent}");
    let placement = sent["referral_id"].as_str().unwrap().to_owned();
    for adapter in [ngo, candidate] {
        eventually("the candidates to hold the broadcast", || async {
            let shown = adapter.run(&["show", &placement, "--json"]).await;
            shown.status.success().then_some(())
        })
        .await;
    }
    candidate
        .json(&[
            "decline",
            &placement,
            "--reason-code",
            "no_capacity",
            "--reason",
            DECLINE_REASON,
        ])
        .await;
    ngo.json(&[
        "accept",
        &placement,
        "--by",
        STAFF,
        "--action",
        PLANNED,
        "--date",
        "2026-12-12",
    ])
    .await;
    eventually("the winner to open the infant's case file", || async {
        let shown = shown(ngo, &placement).await?;
        (shown["case_file"]["name"]["latin"] == INFANT_LATIN).then_some(())
    })
    .await;
    eventually("the hospital to open the decline's reason", || async {
        let shown = hospital.run(&["show", &placement, "--json"]).await;
        String::from_utf8_lossy(&shown.stdout)
            .contains(DECLINE_REASON)
            .then_some(())
    })
    .await;
    // The losing candidate keeps its own words, and nothing of the case or of the winner's.
    let at_loser = candidate.run(&["show", &placement, "--json"]).await;
    let held: Vec<String> = found_in(&at_loser.stdout)
        .into_iter()
        .filter(|f| !f.starts_with(&format!("{DECLINE_REASON:?}")))
        .collect();
    assert!(held.is_empty(), "the losing candidate holds {held:?}");
    (adapters, kept)
}

/// Every file under `dir` (the broker's data folder: its SQLite database, WAL and keys), read whole.
pub(crate) fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
    out
}

#[tokio::test]
async fn the_embedded_broker_holds_no_case_file_or_note_readable_in_any_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("broker");
    let broker = BrokerProcess::start(&data, "127.0.0.1:0").await;
    let (mut adapters, _) = run_stories(&broker, dir.path()).await;
    for adapter in &mut adapters {
        adapter.kill().await;
    }
    // The control: the NGO reads the words, so the search below can find them; its own store
    // keeps them sealed at rest (docs/security.md#at-rest), so no clear copy is found there.
    let ngo = adapters
        .iter()
        .find(|a| a.agency == "mlup-russey")
        .expect("the NGO's adapter");
    let listed = ngo.run(&["inbox", "--all", "--json"]).await;
    assert!(
        found_in(&listed.stdout)
            .iter()
            .any(|f| f.starts_with(&format!("{CHILD_KM:?}"))),
        "the NGO does not read the child's name"
    );
    let at_ngo: Vec<u8> = ["mlup-russey.db", "mlup-russey.db-wal"]
        .iter()
        .filter_map(|f| std::fs::read(dir.path().join(f)).ok())
        .flatten()
        .collect();
    assert!(
        !found_in(&at_ngo)
            .iter()
            .any(|f| f.starts_with(&format!("{CHILD_KM:?}"))),
        "the NGO's store holds the child's name in clear"
    );
    let log = broker.log();
    let mut files = files_under(&data);
    assert!(
        files.iter().any(|(name, _)| name.ends_with("broker.db")),
        "no SQLite file under {}",
        data.display()
    );
    files.push(("the broker's log".into(), log.into_bytes()));
    for (name, bytes) in &files {
        assert_eq!(found_in(bytes), Vec::<String>::new(), "in {name}");
    }
}

/// Takes every message out of the vhost's queues (each agency's and the dead-letter queue) and
/// returns their bodies, with how many came from the dead-letter queue.
async fn queued_bodies(env: &Production, queues: &[String]) -> (Vec<Vec<u8>>, usize) {
    let connection = Connection::connect(&env.amqp_url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let (mut bodies, mut dead) = (Vec::new(), 0);
    for queue in queues {
        while let Ok(Some(message)) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
        {
            if queue == "spean.dead-letter" {
                dead += 1;
            }
            bodies.push(message.delivery.data.clone());
        }
    }
    let _ = connection.close(0, "done".into()).await;
    (bodies, dead)
}

#[tokio::test]
async fn the_production_broker_holds_no_case_file_or_note_readable_in_its_database_queues_or_log() {
    let env = Production::new().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("broker");
    let broker = BrokerProcess::start_with(&data, "127.0.0.1:0", &env.broker_env()).await;
    broker.wait_for_health(ServingStatus::Serving).await;
    let (mut adapters, kept) = run_stories(&broker, dir.path()).await;
    let hospital = &adapters[0];

    // A referral its recipient receives and never confirms, until RabbitMQ sets it aside.
    let silent = AdapterProcess::installed(&broker, NEVER_CONFIRMS, dir.path()).await;
    drop(silent);
    let file = dir.path().join("dead.json");
    std::fs::write(&file, case_file(CHILD_KM, CHILD_LATIN)).unwrap();
    let sent = hospital
        .json(&[
            "send",
            "--to",
            NEVER_CONFIRMS,
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
            "12",
            "--client-ref",
            "sealed-dead-letter",
            "--case-file",
            file.to_str().unwrap(),
        ])
        .await;
    assert_eq!(sent["status"], "sent", "{sent}");
    let mut never = broker.client(NEVER_CONFIRMS).await;
    let mut handed_out = 0;
    while env.depth("spean.dead-letter").await == 0 {
        assert!(
            handed_out <= 10,
            "delivered {handed_out} times and never set aside"
        );
        let mut stream = never.subscribe(1).await;
        if let Ok(Ok(Some(_))) =
            tokio::time::timeout(Duration::from_secs(2), stream.deliveries.message()).await
        {
            handed_out += 1;
        }
    }
    // And messages left in agencies' queues: the hospital's adapter stops before its feedback comes.
    adapters[0].kill().await;
    adapters[1].json(&["progress", &kept]).await;
    for adapter in &mut adapters {
        adapter.kill().await;
    }
    let hospital_queue = format!("spean.agency.{HOSPITAL}");
    eventually("a message waiting in the hospital's queue", || async {
        (env.depth(&hospital_queue).await >= 1).then_some(())
    })
    .await;

    let mut queues: Vec<String> = [HOSPITAL, NGO, PROVINCE, CANDIDATE, NEVER_CONFIRMS]
        .iter()
        .map(|a| format!("spean.agency.{a}"))
        .collect();
    queues.push("spean.dead-letter".into());
    let (bodies, dead) = queued_bodies(&env, &queues).await;
    assert!(dead >= 1, "the dead-letter queue was empty");
    assert!(
        bodies.len() > dead,
        "no message waited in an agency's queue"
    );
    for body in &bodies {
        assert_eq!(found_in(body), Vec::<String>::new(), "in a queued message");
    }
    // What was dead-lettered is that referral's delivery, whole: its id is there, its words not.
    let dead_id = sent["referral_id"].as_str().unwrap().to_owned();
    assert!(
        bodies
            .iter()
            .any(|b| b.windows(dead_id.len()).any(|w| w == dead_id.as_bytes()) && b.len() > 500),
        "no queued message carried the dead-lettered referral"
    );
    let dump = std::process::Command::new("pg_dump")
        .arg("--data-only")
        .arg(&env.database_url)
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert!(
        String::from_utf8_lossy(&dump.stdout).contains("referral_events"),
        "the dump holds no events"
    );
    assert_eq!(found_in(&dump.stdout), Vec::<String>::new(), "in pg_dump");
    assert_eq!(
        found_in(broker.log().as_bytes()),
        Vec::<String>::new(),
        "in the broker's log"
    );
    for (name, bytes) in files_under(&data) {
        assert_eq!(found_in(&bytes), Vec::<String>::new(), "in {name}");
    }
}
