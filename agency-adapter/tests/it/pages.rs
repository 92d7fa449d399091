//! The staff pages over plain HTTP against a real daemon and a real broker: a login is needed for
//! every page, the session cookie cannot be read by a script or sent by another site, a form
//! without the session's token or from another site changes nothing, repeated wrong passwords lock
//! the account, a page read of a case file is audited under the person's name, an action is
//! recorded under it once however often its form is sent, only the actions the state allows are
//! offered, and the pages speak the person's language. The browser's view of the same pages is in
//! `tests/e2e/pages.rs`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{StatusCode, header};

use crate::helpers::{BrokerProcess, DaemonProcess, json_of};

const HOSPITAL: &str = "ahc-swu";
const NGO: &str = "mlup-russey";
const PASSWORD: &str = "ស្ពាន-bridge-2026";

/// `spean-adapter user …` as `agency`, with `password` on standard input; must succeed.
fn user(broker: &BrokerProcess, agency: &str, args: &[&str], password: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spean-adapter"))
        .arg("--identity")
        .arg(broker.identity(agency))
        .arg("--store")
        .arg(broker.dir.path().join(format!("{agency}.db")))
        .args(["--broker", &broker.url, "user"])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run spean-adapter user");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "user {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A staff account with [`PASSWORD`].
fn add_staff(broker: &BrokerProcess, agency: &str, username: &str, name: &str, language: &str) {
    user(
        broker,
        agency,
        &["add", username, "--name", name, "--language", language],
        PASSWORD,
    );
}

/// One agency's daemon serving the pages, and a browser-like client of them.
struct Pages {
    _daemon: DaemonProcess,
    base: String,
    http: reqwest::Client,
}

/// What a page answered.
struct Page {
    status: StatusCode,
    headers: header::HeaderMap,
    html: String,
}

impl Page {
    /// The value of the hidden field `name` (the first one on the page).
    fn hidden(&self, name: &str) -> String {
        let marker = format!(r#"name="{name}" value=""#);
        let start = self
            .html
            .find(&marker)
            .unwrap_or_else(|| panic!("no {name} field: {}", self.html))
            + marker.len();
        self.html[start..].split('"').next().unwrap().to_owned()
    }

    fn offers(&self, action: &str) -> bool {
        self.html
            .contains(&format!(r#"name="action" value="{action}""#))
    }
}

async fn pages(broker: &BrokerProcess, agency: &str) -> Pages {
    let (daemon, base) = broker.serving(agency).await;
    Pages {
        _daemon: daemon,
        base,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    }
}

impl Pages {
    async fn get(&self, path: &str, cookie: Option<&str>) -> Page {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        answer(request.send().await.unwrap()).await
    }

    async fn post(
        &self,
        path: &str,
        cookie: Option<&str>,
        headers: &[(&str, &str)],
        form: &[(&str, &str)],
    ) -> Page {
        let mut request = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        answer(request.send().await.unwrap()).await
    }

    /// Logs in and returns the cookie to send back.
    async fn log_in(&self, username: &str, password: &str) -> String {
        let page = self
            .post(
                "/login",
                None,
                &[],
                &[("username", username), ("password", password)],
            )
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
        let set = page.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_owned();
        set.split(';').next().unwrap().to_owned()
    }
}

async fn answer(response: reqwest::Response) -> Page {
    Page {
        status: response.status(),
        headers: response.headers().clone(),
        html: response.text().await.unwrap(),
    }
}

/// The referral's history as the NGO holds it (each action it sent is stored with the event the
/// broker recorded): (kind, actor person) of each event.
async fn history(broker: &BrokerProcess, id: &str) -> Vec<(String, String)> {
    let shown = json_of(&broker.adapter(NGO, &["show", id, "--json"]));
    shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["actor_person"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_page_needs_a_login_and_the_session_cookie_is_httponly_strict_and_secure() {
    let broker = BrokerProcess::start();
    add_staff(&broker, NGO, "sophea", "សុភា", "km");
    let pages = pages(&broker, NGO).await;

    for path in ["/", "/sent", "/send", "/network", "/referrals/x"] {
        let page = pages.get(path, None).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{path}");
        assert!(
            page.headers[header::LOCATION]
                .to_str()
                .unwrap()
                .starts_with("/login"),
            "{path}"
        );
    }
    let login = pages.get("/login", None).await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(
        login.html.contains(r#"<html lang="km">"#),
        "Khmer by default"
    );

    let wrong = pages
        .post(
            "/login",
            None,
            &[],
            &[("username", "sophea"), ("password", "not the password")],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.headers.get(header::SET_COOKIE).is_none());
    let unknown = pages
        .post(
            "/login",
            None,
            &[],
            &[("username", "nobody"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        unknown.html, wrong.html,
        "an unknown user reads as a wrong password"
    );

    let right = pages
        .post(
            "/login",
            None,
            &[],
            &[("username", "sophea"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(right.status, StatusCode::SEE_OTHER);
    let set = right.headers[header::SET_COOKIE].to_str().unwrap();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attribute), "{attribute} missing: {set}");
    }
    let cookie = set.split(';').next().unwrap();
    let inbox = pages.get("/", Some(cookie)).await;
    assert_eq!(inbox.status, StatusCode::OK, "{}", inbox.html);
    assert!(inbox.html.contains("ប្រអប់ទទួល"), "the inbox in Khmer");
    assert!(inbox.html.contains("សុភា"), "who is signed in");
    let csp = inbox.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("form-action 'self'"));
    assert_eq!(inbox.headers[header::CACHE_CONTROL], "no-store");

    // Logging out ends the session: the cookie opens nothing any more.
    let csrf = inbox.hidden("csrf");
    let out = pages
        .post("/logout", Some(cookie), &[], &[("csrf", csrf.as_str())])
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(
        pages.get("/", Some(cookie)).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn repeated_wrong_passwords_lock_the_account_and_the_page_says_until_when() {
    let broker = BrokerProcess::start();
    add_staff(&broker, NGO, "dara", "Dara", "en");
    let pages = pages(&broker, NGO).await;
    for attempt in 1..=5 {
        let wrong = pages
            .post(
                "/login",
                None,
                &[],
                &[("username", "dara"), ("password", "guess-guess-guess")],
            )
            .await;
        // The fifth wrong password locks the account, and the page says so at once.
        let expected = if attempt < 5 {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(wrong.status, expected, "attempt {attempt}");
    }
    let locked = pages
        .post(
            "/login",
            None,
            &[("Accept-Language", "en")],
            &[("username", "dara"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(
        locked.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the right password is refused while locked"
    );
    assert!(locked.html.contains("locked until"), "{}", locked.html);
    assert!(locked.headers.get(header::SET_COOKIE).is_none());
    let listed = json_of(&broker.adapter(NGO, &["user", "list", "--json"]));
    assert!(
        listed[0]["locked_until"].is_string(),
        "the lockout shows in `user list`: {listed}"
    );
    // An administrator's reset (`user password`) lifts it.
    user(&broker, NGO, &["password", "dara"], "a-new-password-2026");
    pages.log_in("dara", "a-new-password-2026").await;
}

#[tokio::test]
async fn a_social_worker_acts_from_the_page_under_their_own_name_once_per_form() {
    let broker = BrokerProcess::start();
    broker.publish_keys(&[HOSPITAL, NGO]);
    add_staff(&broker, NGO, "sophea", "សុភា", "km");
    let pages = pages(&broker, NGO).await;
    let id = broker.send_story_one("pages-1");
    let cookie = pages.log_in("sophea", PASSWORD).await;

    let referral = format!("/referrals/{id}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        let page = pages.get(&referral, Some(&cookie)).await;
        if page.status == StatusCode::OK {
            break page;
        }
        assert!(Instant::now() < deadline, "{}", page.html);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(page.html.contains("សុខ ស្រីល័ក្ខ"), "the case file, in Khmer");
    for offered in ["acknowledge", "accept", "decline", "redirect"] {
        assert!(page.offers(offered), "{offered} is offered when delivered");
    }
    for not_offered in ["complete", "follow_up", "withdraw", "in_progress"] {
        assert!(
            !page.offers(not_offered),
            "{not_offered} is not offered when delivered"
        );
    }
    let csrf = page.hidden("csrf");
    let act = format!("{referral}/act");

    // Without the session's token, or from another site: refused, nothing recorded.
    let forged = pages
        .post(
            &act,
            Some(&cookie),
            &[],
            &[("action", "acknowledge"), ("request_id", "forged-1")],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let cross_site = pages
        .post(
            &act,
            Some(&cookie),
            &[("Origin", "http://evil.example")],
            &[
                ("csrf", csrf.as_str()),
                ("action", "acknowledge"),
                ("request_id", "forged-2"),
            ],
        )
        .await;
    assert_eq!(cross_site.status, StatusCode::FORBIDDEN);
    let fetched_cross_site = pages
        .post(
            &act,
            Some(&cookie),
            &[("Sec-Fetch-Site", "cross-site")],
            &[
                ("csrf", csrf.as_str()),
                ("action", "acknowledge"),
                ("request_id", "forged-3"),
            ],
        )
        .await;
    assert_eq!(fetched_cross_site.status, StatusCode::FORBIDDEN);
    assert!(
        !history(&broker, &id)
            .await
            .iter()
            .any(|(kind, _)| kind == "acknowledged"),
        "a refused form recorded nothing"
    );

    // The form sent twice (a double tap): one acknowledgement, under the person's name.
    for _ in 0..2 {
        let done = pages
            .post(
                &act,
                Some(&cookie),
                &[],
                &[
                    ("csrf", csrf.as_str()),
                    ("action", "acknowledge"),
                    ("request_id", "page-ack-1"),
                    ("acknowledge-note", "យើងនឹងទៅលេងផ្ទះ"),
                ],
            )
            .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.html);
    }
    // A field left out is named, and nothing is recorded.
    let missing = pages
        .post(
            &act,
            Some(&cookie),
            &[],
            &[
                ("csrf", csrf.as_str()),
                ("action", "accept"),
                ("request_id", "page-accept-0"),
                ("accept-date", "2026-12-06"),
            ],
        )
        .await;
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(missing.html.contains("planned_action"), "{}", missing.html);
    let accepted = pages
        .post(
            &act,
            Some(&cookie),
            &[],
            &[
                ("csrf", csrf.as_str()),
                ("action", "accept"),
                ("request_id", "page-accept-1"),
                ("accept-planned_action", "ចុះសួរសុខទុក្ខតាមផ្ទះ"),
                ("accept-date", "2026-12-06"),
            ],
        )
        .await;
    assert_eq!(accepted.status, StatusCode::SEE_OTHER, "{}", accepted.html);

    let seen = history(&broker, &id).await;
    let acks: Vec<_> = seen.iter().filter(|(k, _)| k == "acknowledged").collect();
    assert_eq!(acks.len(), 1, "one acknowledgement: {seen:?}");
    assert_eq!(acks[0].1, "សុភា", "recorded under the person's name");
    assert!(seen.contains(&("accepted".to_owned(), "សុភា".to_owned())));

    let after = pages.get(&referral, Some(&cookie)).await;
    assert!(after.html.contains("បានទទួលយក"), "the state in Khmer");
    for offered in ["follow_up", "complete", "fail", "in_progress", "delegate"] {
        assert!(after.offers(offered), "{offered} is offered when accepted");
    }
    for not_offered in ["acknowledge", "accept", "decline", "redirect", "withdraw"] {
        assert!(
            !after.offers(not_offered),
            "{not_offered} is not offered when accepted"
        );
    }

    // Each page read of the case file is in the audit log under the person and their login.
    let store = spean_adapter::store::Store::open_with(
        &broker.dir.path().join(format!("{NGO}.db")),
        &spean_domain::ids::AgencyId::parse("agency", NGO).unwrap(),
        &spean_adapter::at_rest::StoreKey::File(broker.identity(NGO).join("store.key")),
    )
    .await
    .unwrap();
    let readers: Vec<String> = store
        .audit_entries()
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.record.actor)
        .collect();
    store.close().await;
    assert!(
        readers
            .iter()
            .filter(|r| *r == "សុភា via web:sophea@mlup-russey")
            .count()
            >= 2,
        "{readers:?}"
    );
}

#[tokio::test]
async fn the_pages_speak_each_persons_language_and_switch_on_request() {
    let broker = BrokerProcess::start();
    add_staff(&broker, NGO, "dara", "Dara", "en");
    let pages = pages(&broker, NGO).await;
    let cookie = pages.log_in("dara", PASSWORD).await;
    let english = pages.get("/sent", Some(&cookie)).await;
    assert!(english.html.contains(r#"<html lang="en">"#));
    assert!(english.html.contains("What we sent"));
    let csrf = english.hidden("csrf");
    let switched = pages
        .post(
            "/language",
            Some(&cookie),
            &[],
            &[("csrf", csrf.as_str()), ("lang", "km"), ("next", "/sent")],
        )
        .await;
    assert_eq!(switched.status, StatusCode::SEE_OTHER);
    assert_eq!(switched.headers[header::LOCATION], "/sent");
    let khmer = pages.get("/sent", Some(&cookie)).await;
    assert!(khmer.html.contains(r#"<html lang="km">"#));
    assert!(khmer.html.contains("អ្វីដែលយើងបានផ្ញើ"));
    // The choice is the person's: it holds in a new session.
    let again = pages.log_in("dara", PASSWORD).await;
    assert!(
        pages
            .get("/", Some(&again))
            .await
            .html
            .contains(r#"<html lang="km">"#)
    );
}

#[tokio::test]
async fn a_referral_sent_from_the_page_while_the_broker_is_out_of_reach_waits_on_the_sent_page() {
    let mut broker = BrokerProcess::start();
    broker.publish_keys(&[HOSPITAL, NGO]);
    add_staff(&broker, HOSPITAL, "dara", "Dara", "en");
    broker.stop();
    let pages = pages(&broker, HOSPITAL).await;
    let cookie = pages.log_in("dara", PASSWORD).await;

    let form = pages.get("/send", Some(&cookie)).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(
        form.html.contains("type the codes"),
        "the form says the directory cannot be read: {}",
        form.html
    );
    let csrf = form.hidden("csrf");
    let sent = pages
        .post(
            "/send",
            Some(&cookie),
            &[],
            &[
                ("csrf", csrf.as_str()),
                ("client_ref", "page-offline-1"),
                ("to_mode", "agency"),
                ("to", NGO),
                ("kind", "lama"),
                ("urgency", "emergency"),
                ("sex", "female"),
                ("age_band", "5-9"),
                ("subject_province", "24"),
                ("name_km", "សុខ ស្រីល័ក្ខ"),
                ("reason", "ត្រូវការតាមដាននៅផ្ទះ"),
                ("consent_by", "guardian"),
                ("consent_at", "2026-12-01"),
            ],
        )
        .await;
    assert_eq!(sent.status, StatusCode::SEE_OTHER, "{}", sent.html);
    assert_eq!(sent.headers[header::LOCATION], "/sent?queued=1");

    let waiting = pages.get("/sent?queued=1", Some(&cookie)).await;
    assert!(
        waiting
            .html
            .contains("it will be sent when the broker can be reached")
    );
    assert!(
        waiting.html.contains("waiting for the broker"),
        "the queued referral is listed as waiting: {}",
        waiting.html
    );
    let outbox = json_of(&broker.adapter(HOSPITAL, &["outbox", "--json"]));
    let rows = outbox.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{outbox}");
    assert_eq!(rows[0]["request_id"], "page-offline-1");
    assert_eq!(rows[0]["status"], "pending");
}
