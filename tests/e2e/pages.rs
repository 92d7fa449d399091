//! The staff pages in a real browser (Debian's headless Chromium, driven over the DevTools
//! protocol) against a real broker and three real adapters: story 1 carried by people, not
//! commands. A hospital social worker sends the referral from the form; the NGO's social worker
//! sees it waiting with the time left, lets it pass its deadline, and the coordinator sees it
//! escalate; then the NGO acknowledges it (from the keyboard alone), accepts it and records a
//! follow-up visit, and the hospital's page shows each change; the coordinator's overdue list
//! drops it once acknowledged, and its timeline shows what happened without the case file.
//!
//! Every page is saved as a screenshot in both languages under `target/screenshots/`, and checked
//! for what the browser reports: no console error (a failed load, a blocked resource, a script
//! error), every form control labelled, every control reachable with Tab, and Khmer text drawn with
//! a Khmer font (not boxes).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use spean_testkit::browser::{Browser, Key, Page};
use tokio::io::AsyncWriteExt;

use crate::helpers::{AdapterProcess, BrokerProcess, bin, eventually, seeded_directory};
use crate::production::Production;

const HOSPITAL: &str = "ahc-swu";
const NGO: &str = "mlup-russey";
const COORDINATOR: &str = "mosvy-coord";
const PASSWORD: &str = "ស្ពាន-bridge-2026";

/// The emergency acknowledgement deadline here: long enough for the NGO's worker to see the time
/// left before it passes, short enough to watch it escalate.
const DEADLINE: Duration = Duration::from_secs(25);

/// Where screenshots go: `target/screenshots/`, beside the binaries under test.
fn screenshots() -> PathBuf {
    let binary = bin("spean-adapter");
    binary
        .parent()
        .and_then(Path::parent)
        .expect("target folder")
        .join("screenshots")
}

/// One person at one agency: their adapter's daemon serving the pages, and their own browser
/// context (own cookies), logged in.
struct Person {
    adapter: AdapterProcess,
    base: String,
    page: Page,
    lang: &'static str,
    /// Where its pages' screenshots go.
    shots: PathBuf,
}

/// `spean-adapter user add`, the password on stdin.
async fn add_user(adapter: &AdapterProcess, username: &str, name: &str, lang: &str) {
    let mut child = adapter
        .command()
        .unwrap()
        .args(["user", "add", username, "--name", name, "--language", lang])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "user add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Person {
    /// Installs `agency`'s adapter with a staff account, starts its daemon serving the pages,
    /// and opens a browser on the login page.
    async fn at(
        browser: &Browser,
        broker: &BrokerProcess,
        agency: &str,
        dir: &Path,
        (username, name, lang): (&str, &str, &'static str),
        shots: &Path,
    ) -> Self {
        let mut adapter = AdapterProcess::installed(broker, agency, dir).await;
        add_user(&adapter, username, name, lang).await;
        adapter.start_with(&[("SPEAN_ADAPTER_API__LISTEN", "127.0.0.1:0")]);
        let file = PathBuf::from(format!("{}.api-addr", adapter.store().display()));
        let addr = eventually(&format!("{agency}'s pages to listen"), || async {
            std::fs::read_to_string(&file).ok()
        })
        .await;
        // `localhost`, as staff are told to open it: browsers send a `Secure` cookie over plain
        // HTTP to localhost only.
        let port = addr.trim().rsplit(':').next().unwrap().to_owned();
        let page = browser.new_person().await.unwrap();
        Self {
            adapter,
            base: format!("http://localhost:{port}"),
            page,
            lang,
            shots: shots.to_owned(),
        }
    }

    async fn open(&self, path: &str) {
        self.page
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
    }

    /// Logs in from the keyboard: the username, Tab, the password, Enter.
    async fn log_in(&self, username: &str) {
        self.open("/").await;
        assert!(self.page.url().await.unwrap().contains("/login"));
        // Before login the page follows the browser's language (headless Chromium asks for en).
        let shown: String = self
            .page
            .eval("document.documentElement.lang")
            .await
            .unwrap();
        let shown = if shown == "km" { "km" } else { "en" };
        check_page(
            &self.page,
            &self.shots,
            &format!("login-{}", self.adapter.agency),
            shown,
        )
        .await;
        self.page.fill("#username", username).await.unwrap();
        self.page.press(Key::Tab).await.unwrap();
        assert!(
            self.page
                .focused()
                .await
                .unwrap()
                .unwrap_or_default()
                .contains("password"),
            "Tab goes from the username to the password"
        );
        self.page.fill("#password", PASSWORD).await.unwrap();
        self.page.press_and_wait(Key::Enter).await.unwrap();
        assert!(
            !self.page.url().await.unwrap().contains("/login"),
            "logged in: {}",
            self.page.html().await.unwrap()
        );
        let cookies = self.page.cookies().await.unwrap();
        let session = cookies
            .iter()
            .find(|c| c.name.starts_with("spean_") && c.name != "spean_lang")
            .expect("a session cookie");
        assert!(session.http_only && session.secure, "{session:?}");
        assert_eq!(session.same_site.as_deref(), Some("Strict"));
    }

    /// Opens `path` until `check` holds of its HTML (another agency's change takes a moment to
    /// reach this adapter), within the tests' patience.
    async fn open_until(&self, path: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        eventually(what, || async {
            self.open(path).await;
            let html = self.page.html().await.unwrap();
            check(&html).then_some(html)
        })
        .await
    }
}

/// What every page is held to, and its screenshots in both languages: `name.km.png`, `name.en.png`.
async fn check_page(page: &Page, dir: &Path, name: &str, lang: &str) {
    let errors = page.console_errors().await;
    assert!(errors.is_empty(), "{name}: the browser reported {errors:?}");
    let unlabelled = page.unlabelled_controls().await.unwrap();
    assert!(
        unlabelled.is_empty(),
        "{name}: unlabelled controls {unlabelled:?}"
    );
    every_control_reached_by_tab(page, name).await;
    let other = if lang == "km" { "en" } else { "km" };
    shoot(page, dir, name, lang).await;
    switch_language(page).await;
    shoot(page, dir, name, other).await;
    switch_language(page).await;
}

/// Saves the page; a Khmer page must show Khmer text, drawn by a Khmer font.
async fn shoot(page: &Page, dir: &Path, name: &str, lang: &str) {
    let html_lang: String = page.eval("document.documentElement.lang").await.unwrap();
    assert_eq!(html_lang, lang, "{name}: the page is in {html_lang}");
    // The picture without the focus ring the Tab check left.
    page.eval::<serde_json::Value>("document.activeElement && document.activeElement.blur()")
        .await
        .unwrap();
    page.screenshot(&dir.join(format!("{name}.{lang}.png")))
        .await
        .unwrap();
    if lang == "km" {
        let heading = page.text("h1").await.unwrap();
        assert!(
            heading
                .chars()
                .any(|c| ('\u{1780}'..='\u{17FF}').contains(&c)),
            "{name}: the Khmer page's heading has no Khmer: {heading:?}"
        );
        let fonts = page.fonts_rendering("h1").await.unwrap();
        assert!(
            fonts
                .iter()
                .any(|(family, glyphs)| family.contains("Khmer") && *glyphs > 0),
            "{name}: Khmer is not drawn with a Khmer font: {fonts:?}"
        );
    }
    let errors = page.console_errors().await;
    assert!(errors.is_empty(), "{name} ({lang}): {errors:?}");
}

/// Presses the language switch at the top of the page and waits for the page again.
async fn switch_language(page: &Page) {
    page.click_and_wait("form[action=\"/language\"] button")
        .await
        .unwrap();
}

/// Tabs through the whole page: every link, button and field visible must take the focus. A group
/// of radio buttons is one stop (its checked one; the arrow keys move within it), as in every
/// browser.
async fn every_control_reached_by_tab(page: &Page, name: &str) {
    let controls: usize = page
        .eval(
            "(() => { let n = 0; document.querySelectorAll('a[href], button, input:not([type=hidden]):not([type=radio]), \
             input[type=radio]:checked, select, textarea').forEach(e => { if (e.offsetParent !== null || e === document.activeElement) \
             { e.dataset.kb = String(n++); } }); \
             const first = document.querySelector('[data-kb=\"0\"]'); if (first) { first.focus(); } \
             return n; })()",
        )
        .await
        .unwrap();
    // From the first control (the skip link), Tab must visit every other one, in one pass.
    let mut reached = BTreeSet::from([0]);
    for _ in 0..controls + 5 {
        page.press(Key::Tab).await.unwrap();
        let at: Option<String> = page
            .eval("document.activeElement && document.activeElement.dataset.kb || null")
            .await
            .unwrap();
        if let Some(at) = at {
            reached.insert(at.parse::<usize>().unwrap());
        }
    }
    let missed: Vec<usize> = (0..controls).filter(|i| !reached.contains(i)).collect();
    assert!(
        missed.is_empty(),
        "{name}: {} of {controls} controls cannot be reached with Tab: {missed:?}",
        missed.len()
    );
}

/// The setting that seeds a broker with the repository's directory, emergency referrals due for
/// acknowledgement in [`DEADLINE`].
fn short_deadline(dir: &Path) -> (String, String) {
    seeded_directory(dir, "pages-deadlines.json", |directory| {
        directory["acknowledgement_deadlines"]["emergency"] =
            serde_json::Value::String(format!("{}s", DEADLINE.as_secs()));
    })
}

#[tokio::test]
async fn staff_carry_story_one_through_the_pages_in_khmer_and_english() {
    let dir = tempfile::tempdir().unwrap();
    let seed = short_deadline(dir.path());
    let broker =
        BrokerProcess::start_with(&dir.path().join("broker"), "127.0.0.1:0", &[seed]).await;
    story_one_through_the_pages(&broker, dir.path(), "").await;
}

/// The same on the production path: PostgreSQL and RabbitMQ behind the broker; its screenshots
/// go to `target/screenshots/production/`.
#[tokio::test]
async fn staff_carry_story_one_through_the_pages_on_postgres_and_rabbitmq() {
    let env = Production::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = env.broker_env();
    settings.push(short_deadline(dir.path()));
    let broker =
        BrokerProcess::start_with(&dir.path().join("broker"), "127.0.0.1:0", &settings).await;
    story_one_through_the_pages(&broker, dir.path(), "production").await;
}

/// Story 1 by three people; screenshots under `target/screenshots/<shots>/` (the top folder for
/// an empty `shots`).
async fn story_one_through_the_pages(broker: &BrokerProcess, dir: &Path, shots: &str) {
    let shots = screenshots().join(shots);
    let browser = Browser::launch().await.unwrap();
    let hospital = Person::at(
        &browser,
        broker,
        HOSPITAL,
        dir,
        ("dara", "Dara Chan", "en"),
        &shots,
    )
    .await;
    let ngo = Person::at(&browser, broker, NGO, dir, ("sophea", "សុភា", "km"), &shots).await;
    let coordinator = Person::at(
        &browser,
        broker,
        COORDINATOR,
        dir,
        ("vanna", "វណ្ណា", "km"),
        &shots,
    )
    .await;
    hospital.log_in("dara").await;
    ngo.log_in("sophea").await;
    coordinator.log_in("vanna").await;

    // The hospital's social worker sends story 1 from the form.
    hospital.open("/send").await;
    check_page(&hospital.page, &shots, "send", hospital.lang).await;
    let page = &hospital.page;
    page.check("#by-agency").await.unwrap();
    page.select("#to", NGO).await.unwrap();
    page.select("#kind", "lama").await.unwrap();
    page.select("#urgency", "emergency").await.unwrap();
    page.fill("#name_km", spean_testkit::KHMER_NAME)
        .await
        .unwrap();
    page.fill("#name_latin", "Sok Sreyleak").await.unwrap();
    page.select("#sex", "female").await.unwrap();
    page.select("#age_band", "5-9").await.unwrap();
    page.select("#subject_province", "24").await.unwrap();
    page.fill("#reason", "គ្រួសារចាកចេញពីមន្ទីរពេទ្យ ត្រូវការតាមដាននៅផ្ទះ")
        .await
        .unwrap();
    page.select("#consent_by", "guardian").await.unwrap();
    page.fill("#consent_at", "2026-12-01").await.unwrap();
    page.click_and_wait("#send").await.unwrap();
    let url = page.url().await.unwrap();
    let html = page.html().await.unwrap();
    let id = url
        .split("/referrals/")
        .nth(1)
        .and_then(|rest| rest.split('?').next())
        .unwrap_or_else(|| panic!("not on the referral's page: {url}: {html}"))
        .to_owned();
    let referral = format!("/referrals/{id}");

    // The NGO sees it waiting for it, with the time left before it is escalated.
    let inbox = ngo
        .open_until("/", "the referral waiting in the NGO's inbox", |html| {
            html.contains(&format!("data-referral=\"{id}\""))
        })
        .await;
    assert!(
        inbox.contains("នឹងរាយការណ៍ទៅថ្នាក់លើក្នុងរយៈពេល"),
        "the time left before escalation, in Khmer"
    );
    assert!(
        inbox.contains(spean_testkit::KHMER_NAME),
        "the child's name"
    );
    check_page(&ngo.page, &shots, "inbox", ngo.lang).await;

    // Nobody acknowledges it in time: the coordinator sees it escalated, overdue.
    let overdue = coordinator
        .open_until(
            "/network",
            "the referral in the coordinator's overdue list",
            |html| html.contains(&format!("data-referral=\"{id}\"")),
        )
        .await;
    assert!(
        !overdue.contains(spean_testkit::KHMER_NAME),
        "a coordinator reads no case file"
    );
    check_page(
        &coordinator.page,
        &shots,
        "network-overdue",
        coordinator.lang,
    )
    .await;
    ngo.open_until("/", "the escalation in the NGO's inbox", |html| {
        html.contains("class=\"escalated waiting\"") || html.contains("class=\"waiting escalated\"")
    })
    .await;

    // The NGO opens it and acknowledges it from the keyboard alone.
    ngo.open(&referral).await;
    check_page(&ngo.page, &shots, "referral-delivered", ngo.lang).await;
    ngo.page.tab_until("#acknowledge-submit", 60).await.unwrap();
    ngo.page.press_and_wait(Key::Enter).await.unwrap();
    assert!(ngo.page.html().await.unwrap().contains("បានទទួលស្គាល់"));
    hospital
        .open_until(
            &referral,
            "the hospital to see the acknowledgement",
            |html| html.contains("acknowledged"),
        )
        .await;
    coordinator
        .open_until(
            "/network",
            "the referral to leave the overdue list",
            |html| !html.contains(&format!("data-referral=\"{id}\"")),
        )
        .await;

    // It accepts it, and records a follow-up visit; the hospital sees each.
    ngo.page
        .fill("#accept-planned_action", "ចុះសួរសុខទុក្ខតាមផ្ទះ និងជំនួយគ្រួសារ")
        .await
        .unwrap();
    ngo.page.click_and_wait("#accept-submit").await.unwrap();
    hospital
        .open_until(&referral, "the hospital to see the acceptance", |html| {
            html.contains("data-kind=\"accepted\"")
        })
        .await;
    ngo.page
        .select("#follow_up-activity", "home_visit")
        .await
        .unwrap();
    ngo.page
        .fill("#follow_up-note", "កុមារសុខសប្បាយ")
        .await
        .unwrap();
    ngo.page.click_and_wait("#follow_up-submit").await.unwrap();
    check_page(&ngo.page, &shots, "referral-accepted", ngo.lang).await;
    let seen = hospital
        .open_until(&referral, "the hospital to see the follow-up", |html| {
            html.contains("data-kind=\"follow_up\"")
        })
        .await;
    assert!(seen.contains("សុភា"), "who acted, by name");
    check_page(&hospital.page, &shots, "referral-sender", hospital.lang).await;
    hospital.open("/sent").await;
    check_page(&hospital.page, &shots, "sent", hospital.lang).await;

    // The coordinator's timeline: what happened and when, no case file, no notes.
    coordinator.open(&format!("/network/referrals/{id}")).await;
    let timeline = coordinator.page.html().await.unwrap();
    assert!(timeline.contains("data-kind=\"follow_up\""));
    for secret in [spean_testkit::KHMER_NAME, "កុមារសុខសប្បាយ", "សុភា"]
    {
        assert!(!timeline.contains(secret), "the timeline shows {secret:?}");
    }
    check_page(
        &coordinator.page,
        &shots,
        "network-timeline",
        coordinator.lang,
    )
    .await;

    // Its figures, with charts and a CSV download.
    coordinator.open("/network/figures").await;
    let figures = coordinator.page.html().await.unwrap();
    assert!(figures.contains("<svg"), "charts");
    check_page(
        &coordinator.page,
        &shots,
        "network-figures",
        coordinator.lang,
    )
    .await;
    // The download, as the browser would fetch it with the coordinator's session.
    let href: String = coordinator
        .page
        .eval("document.querySelector('#csv').href")
        .await
        .unwrap();
    let session = coordinator
        .page
        .cookies()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.name == format!("spean_{COORDINATOR}"))
        .expect("the coordinator's session cookie");
    let csv = reqwest::Client::new()
        .get(&href)
        .header("cookie", format!("{}={}", session.name, session.value))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(csv.starts_with("group,key,metric,total,female"), "{csv}");

    // On a phone's screen.
    ngo.page.set_viewport(390, 844, true).await.unwrap();
    ngo.open("/").await;
    ngo.page
        .screenshot(&shots.join("inbox-phone.km.png"))
        .await
        .unwrap();
    let overflow: bool = ngo
        .page
        .eval("document.documentElement.scrollWidth > window.innerWidth + 1")
        .await
        .unwrap();
    assert!(!overflow, "the inbox fits a phone's width");
}
