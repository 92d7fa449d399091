//! A small Chrome DevTools Protocol client for the page tests: Debian's headless Chromium
//! (`/usr/bin/chromium`, or `$SPEAN_CHROMIUM`) started with a fresh profile, driven over one
//! WebSocket with flattened sessions. No browser download and no WebDriver: CDP gives what the
//! tests check directly (console errors, the fonts that drew a node, real key presses, cookies
//! with their flags, full-page screenshots).
//!
//! Every wait is bounded by [`WAIT`]; a failure names the page and what was awaited.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::Error;

/// How long any one wait may take: a page load, a command's answer, an element to appear.
pub const WAIT: Duration = Duration::from_secs(20);

fn fail(what: impl Into<String>) -> Error {
    Error::Browser(what.into())
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>;
type Sinks = Mutex<HashMap<String, mpsc::UnboundedSender<(String, Value)>>>;

/// The one WebSocket to the browser: commands out, answers matched by id, events routed to their
/// page by session id.
struct Connection {
    out: mpsc::UnboundedSender<Message>,
    next_id: AtomicU64,
    pending: Arc<Pending>,
    sinks: Arc<Sinks>,
}

impl Connection {
    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = Value::String(session.to_owned());
        }
        self.out
            .send(Message::text(message.to_string()))
            .map_err(|_| fail("the browser connection is closed"))?;
        match tokio::time::timeout(WAIT, rx).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(error))) => Err(fail(format!("{method}: {error}"))),
            Ok(Err(_)) => Err(fail(format!("{method}: the browser closed the connection"))),
            Err(_) => Err(fail(format!("{method}: no answer within {WAIT:?}"))),
        }
    }
}

/// A headless Chromium with its own profile, killed when dropped.
pub struct Browser {
    _child: Child,
    connection: Arc<Connection>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium and connects to it.
    pub async fn launch() -> Result<Self, Error> {
        let executable =
            std::env::var("SPEAN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
        let profile = tempfile::tempdir()?;
        let child = Command::new(&executable)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                fail(format!(
                    "starting {executable}: {e} (install Debian's chromium)"
                ))
            })?;
        // Chromium writes the port it chose, and the browser's WebSocket path, to this file.
        let port_file = profile.path().join("DevToolsActivePort");
        let started = tokio::time::Instant::now();
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break format!("ws://127.0.0.1:{port}{path}");
                }
            }
            if started.elapsed() > WAIT {
                return Err(fail("chromium wrote no DevToolsActivePort"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|e| fail(format!("connecting to {url}: {e}")))?;
        let (mut write, mut read) = socket.split();
        let (out, mut to_send) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(message) = to_send.recv().await {
                if write.send(message).await.is_err() {
                    break;
                }
            }
        });
        let pending: Arc<Pending> = Arc::default();
        let sinks: Arc<Sinks> = Arc::default();
        let (answers, events) = (pending.clone(), sinks.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = read.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if let Some(id) = value["id"].as_u64() {
                    let answer = match value.get("error") {
                        Some(error) => Err(error.to_string()),
                        None => Ok(value["result"].clone()),
                    };
                    let waiting = answers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    if let Some(waiting) = waiting {
                        let _ = waiting.send(answer);
                    }
                } else if let (Some(method), Some(session)) =
                    (value["method"].as_str(), value["sessionId"].as_str())
                {
                    let sink = events
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(session)
                        .cloned();
                    if let Some(sink) = sink {
                        let _ = sink.send((method.to_owned(), value["params"].clone()));
                    }
                }
            }
        });
        Ok(Self {
            _child: child,
            connection: Arc::new(Connection {
                out,
                next_id: AtomicU64::new(1),
                pending,
                sinks,
            }),
            _profile: profile,
        })
    }

    /// A new tab, listening for its loads and for every error the browser reports in it.
    pub async fn new_page(&self) -> Result<Page, Error> {
        self.open_tab(json!({ "url": "about:blank" })).await
    }

    /// A new tab in a context of its own: its own cookies and storage, as another person's browser
    /// would have, in the same browser process (one Chromium for several people is far lighter
    /// than one each).
    pub async fn new_person(&self) -> Result<Page, Error> {
        let context = self
            .connection
            .call(None, "Target.createBrowserContext", json!({}))
            .await?;
        let id = context["browserContextId"]
            .as_str()
            .ok_or_else(|| fail("no browser context"))?;
        self.open_tab(json!({ "url": "about:blank", "browserContextId": id }))
            .await
    }

    async fn open_tab(&self, create: Value) -> Result<Page, Error> {
        let c = &self.connection;
        let target = c.call(None, "Target.createTarget", create).await?;
        let target_id = target["targetId"].as_str().unwrap_or_default().to_owned();
        let attached = c
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| fail("no session for the new tab"))?
            .to_owned();
        let (sink, mut events) = mpsc::unbounded_channel();
        c.sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.clone(), sink);
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let (loads_tx, loads) = watch::channel(0u64);
        let seen = errors.clone();
        tokio::spawn(async move {
            let mut count = 0;
            while let Some((method, params)) = events.recv().await {
                match method.as_str() {
                    "Page.loadEventFired" => {
                        count += 1;
                        let _ = loads_tx.send(count);
                    }
                    "Runtime.consoleAPICalled"
                        if matches!(params["type"].as_str(), Some("error" | "assert")) =>
                    {
                        let text: Vec<String> = params["args"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|a| {
                                a["value"]
                                    .as_str()
                                    .map(str::to_owned)
                                    .unwrap_or_else(|| a["description"].to_string())
                            })
                            .collect();
                        record(&seen, format!("console.error: {}", text.join(" ")));
                    }
                    "Runtime.exceptionThrown" => {
                        let details = &params["exceptionDetails"];
                        record(
                            &seen,
                            format!(
                                "exception: {} {}",
                                details["text"].as_str().unwrap_or_default(),
                                details["exception"]["description"]
                                    .as_str()
                                    .unwrap_or_default()
                            ),
                        );
                    }
                    "Log.entryAdded" if params["entry"]["level"] == "error" => {
                        record(
                            &seen,
                            format!(
                                "{}: {} ({})",
                                params["entry"]["source"].as_str().unwrap_or_default(),
                                params["entry"]["text"].as_str().unwrap_or_default(),
                                params["entry"]["url"].as_str().unwrap_or_default()
                            ),
                        );
                    }
                    _ => {}
                }
            }
        });
        let page = Page {
            connection: c.clone(),
            session,
            errors,
            loads,
        };
        for domain in [
            "Page.enable",
            "Runtime.enable",
            "Log.enable",
            "DOM.enable",
            "CSS.enable",
            "Network.enable",
        ] {
            page.call(domain, json!({})).await?;
        }
        Ok(page)
    }
}

fn record(errors: &Mutex<Vec<String>>, error: String) {
    errors.lock().unwrap_or_else(|p| p.into_inner()).push(error);
}

/// A key [`Page::press`] sends as a real key press.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Tab,
    ShiftTab,
    Enter,
    Space,
    Escape,
}

/// A cookie as the browser keeps it.
#[derive(Debug, Clone)]
pub struct Cookie {
    pub name: String,
    pub value: String,
    pub http_only: bool,
    pub secure: bool,
    /// `Strict`, `Lax` or `None`; `None` (the Rust one) when the cookie set none.
    pub same_site: Option<String>,
}

/// One tab.
pub struct Page {
    connection: Arc<Connection>,
    session: String,
    errors: Arc<Mutex<Vec<String>>>,
    loads: watch::Receiver<u64>,
}

impl Page {
    async fn call(&self, method: &str, params: Value) -> Result<Value, Error> {
        self.connection
            .call(Some(&self.session), method, params)
            .await
    }

    fn load_count(&self) -> u64 {
        *self.loads.borrow()
    }

    /// Waits for a load after the `before`th.
    async fn loaded_after(&self, before: u64, what: &str) -> Result<(), Error> {
        let mut loads = self.loads.clone();
        tokio::time::timeout(WAIT, loads.wait_for(|n| *n > before))
            .await
            .map_err(|_| fail(format!("{what}: no page loaded within {WAIT:?}")))?
            .map_err(|_| fail(format!("{what}: the tab closed")))?;
        Ok(())
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) -> Result<(), Error> {
        let before = self.load_count();
        let answer = self.call("Page.navigate", json!({ "url": url })).await?;
        if let Some(error) = answer["errorText"].as_str().filter(|e| !e.is_empty()) {
            return Err(fail(format!("{url}: {error}")));
        }
        self.loaded_after(before, url).await
    }

    /// Runs `js` in the page (awaiting a promise it returns) and reads its value.
    pub async fn eval<T: DeserializeOwned>(&self, js: &str) -> Result<T, Error> {
        let answer = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": js, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(details) = answer.get("exceptionDetails") {
            return Err(fail(format!(
                "{js}: {}",
                details["exception"]["description"]
                    .as_str()
                    .or(details["text"].as_str())
                    .unwrap_or_default()
            )));
        }
        let value = answer["result"]
            .get("value")
            .cloned()
            .unwrap_or(Value::Null);
        serde_json::from_value(value.clone())
            .map_err(|e| fail(format!("{js}: {value} is not what was expected: {e}")))
    }

    pub async fn url(&self) -> Result<String, Error> {
        self.eval("location.href").await
    }

    pub async fn html(&self) -> Result<String, Error> {
        self.eval("document.documentElement.outerHTML").await
    }

    /// Runs `body` with `el` bound to the element `css` selects; an error if there is none.
    async fn on<T: DeserializeOwned>(&self, css: &str, body: &str) -> Result<T, Error> {
        let selector = serde_json::to_string(css).unwrap_or_default();
        let found: Value = self
            .eval(&format!(
                "(() => {{ const el = document.querySelector({selector}); \
                 if (!el) return {{ missing: true }}; return {{ value: (() => {{ {body} }})() }}; }})()"
            ))
            .await?;
        if found["missing"] == true {
            let url = self.url().await.unwrap_or_default();
            return Err(fail(format!("no element {css} on {url}")));
        }
        serde_json::from_value(found["value"].clone()).map_err(|e| fail(format!("{css}: {e}")))
    }

    /// Types `text` into the field `css`, replacing what it held, as typed text (Khmer too); a
    /// date field is set to its YYYY-MM-DD value.
    pub async fn fill(&self, css: &str, text: &str) -> Result<(), Error> {
        let value = serde_json::to_string(text).unwrap_or_default();
        let is_date: bool = self
            .on(
                css,
                &format!(
                    "el.focus(); if (el.type === 'date') {{ el.value = {value}; \
                     el.dispatchEvent(new Event('input', {{bubbles: true}})); \
                     el.dispatchEvent(new Event('change', {{bubbles: true}})); return true; }} \
                     if (el.select) el.select(); return false;"
                ),
            )
            .await?;
        if !is_date {
            self.call("Input.insertText", json!({ "text": text }))
                .await?;
        }
        Ok(())
    }

    /// Chooses `value` in the select `css`; an error if it is not one of its options.
    pub async fn select(&self, css: &str, value: &str) -> Result<(), Error> {
        let quoted = serde_json::to_string(value).unwrap_or_default();
        let chosen: bool = self
            .on(
                css,
                &format!(
                    "if (![...el.options].some(o => o.value === {quoted})) return false; \
                     el.value = {quoted}; el.dispatchEvent(new Event('change', {{bubbles: true}})); return true;"
                ),
            )
            .await?;
        if chosen {
            Ok(())
        } else {
            Err(fail(format!("{css} has no option {value:?}")))
        }
    }

    /// Checks the checkbox or radio button `css`, as a click does.
    pub async fn check(&self, css: &str) -> Result<(), Error> {
        self.on::<Value>(css, "if (!el.checked) el.click(); return null;")
            .await
            .map(|_| ())
    }

    /// Clicks `css`.
    pub async fn click(&self, css: &str) -> Result<(), Error> {
        self.on::<Value>(css, "el.click(); return null;")
            .await
            .map(|_| ())
    }

    /// Clicks `css` and waits for the page it leads to (a form posted and answered with a
    /// redirect, then the next page).
    pub async fn click_and_wait(&self, css: &str) -> Result<(), Error> {
        let before = self.load_count();
        self.click(css).await?;
        self.loaded_after(before, &format!("after clicking {css}"))
            .await
    }

    /// A real key press: what the keyboard does, focus moves and forms submit as for a person.
    pub async fn press(&self, key: Key) -> Result<(), Error> {
        let (name, code, vk, text, modifiers) = match key {
            Key::Tab => ("Tab", "Tab", 9, "", 0),
            Key::ShiftTab => ("Tab", "Tab", 9, "", 8),
            Key::Enter => ("Enter", "Enter", 13, "\r", 0),
            Key::Space => (" ", "Space", 32, " ", 0),
            Key::Escape => ("Escape", "Escape", 27, "", 0),
        };
        let mut down = json!({
            "type": if text.is_empty() { "rawKeyDown" } else { "keyDown" },
            "key": name, "code": code, "windowsVirtualKeyCode": vk,
            "nativeVirtualKeyCode": vk, "modifiers": modifiers,
        });
        if !text.is_empty() {
            down["text"] = Value::String(text.to_owned());
            down["unmodifiedText"] = Value::String(text.to_owned());
        }
        self.call("Input.dispatchKeyEvent", down).await?;
        self.call(
            "Input.dispatchKeyEvent",
            json!({
                "type": "keyUp", "key": name, "code": code, "windowsVirtualKeyCode": vk,
                "nativeVirtualKeyCode": vk, "modifiers": modifiers,
            }),
        )
        .await?;
        Ok(())
    }

    /// Presses `key` and waits for the page it leads to.
    pub async fn press_and_wait(&self, key: Key) -> Result<(), Error> {
        let before = self.load_count();
        self.press(key).await?;
        self.loaded_after(before, &format!("after pressing {key:?}"))
            .await
    }

    /// The focused element as `tag#id[name=…]`, or `None` when nothing in the page has focus.
    pub async fn focused(&self) -> Result<Option<String>, Error> {
        self.eval(
            "(() => { const e = document.activeElement; if (!e || e === document.body) return null; \
             return e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + \
             (e.name ? '[name=' + e.name + ']' : ''); })()",
        )
        .await
    }

    /// Presses Tab until `css` has the focus; an error after `max` presses, naming where the focus
    /// went.
    pub async fn tab_until(&self, css: &str, max: usize) -> Result<usize, Error> {
        let selector = serde_json::to_string(css).unwrap_or_default();
        let mut path = Vec::new();
        for presses in 1..=max {
            self.press(Key::Tab).await?;
            let there: bool = self
                .eval(&format!(
                    "!!document.activeElement && document.activeElement.matches({selector})"
                ))
                .await?;
            if there {
                return Ok(presses);
            }
            path.push(self.focused().await?.unwrap_or_else(|| "-".into()));
        }
        Err(fail(format!(
            "Tab never reached {css} in {max} presses: {path:?}"
        )))
    }

    /// Waits until an element matches `css`.
    pub async fn wait_for(&self, css: &str) -> Result<(), Error> {
        let selector = serde_json::to_string(css).unwrap_or_default();
        let started = tokio::time::Instant::now();
        loop {
            if self
                .eval::<bool>(&format!("!!document.querySelector({selector})"))
                .await?
            {
                return Ok(());
            }
            if started.elapsed() > WAIT {
                let url = self.url().await.unwrap_or_default();
                return Err(fail(format!(
                    "{css} did not appear on {url} within {WAIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of the first element `css` selects, as shown.
    pub async fn text(&self, css: &str) -> Result<String, Error> {
        self.on(css, "return el.innerText;").await
    }

    /// How many elements `css` selects.
    pub async fn count(&self, css: &str) -> Result<usize, Error> {
        let selector = serde_json::to_string(css).unwrap_or_default();
        self.eval(&format!("document.querySelectorAll({selector}).length"))
            .await
    }

    /// Saves the whole page, not only what the window shows, as a PNG at `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<(), Error> {
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await?;
        let size = &metrics["cssContentSize"];
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": {
                        "x": 0, "y": 0, "scale": 1,
                        "width": size["width"].as_f64().unwrap_or(1280.0),
                        "height": size["height"].as_f64().unwrap_or(900.0),
                    },
                }),
            )
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .map_err(|e| fail(format!("screenshot: {e}")))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Shows the page as a device `width`×`height` CSS pixels wide shows it (`mobile`: a phone).
    pub async fn set_viewport(&self, width: u32, height: u32, mobile: bool) -> Result<(), Error> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        )
        .await
        .map(|_| ())
    }

    /// Every error the browser reported in this tab since it opened: console errors, uncaught
    /// exceptions, and its own log's errors (a failed load, a resource the policy blocked).
    pub async fn console_errors(&self) -> Vec<String> {
        // Let events already sent reach the tab's listener.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The cookies the browser would send to this page.
    pub async fn cookies(&self) -> Result<Vec<Cookie>, Error> {
        let answer = self.call("Network.getCookies", json!({})).await?;
        Ok(answer["cookies"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| Cookie {
                name: c["name"].as_str().unwrap_or_default().to_owned(),
                value: c["value"].as_str().unwrap_or_default().to_owned(),
                http_only: c["httpOnly"] == true,
                secure: c["secure"] == true,
                same_site: c["sameSite"].as_str().map(str::to_owned),
            })
            .collect())
    }

    /// Every visible form control without a name a screen reader would read: no `<label>`, no
    /// `aria-label` or `aria-labelledby`, and for a button no text. Hidden inputs do not count.
    pub async fn unlabelled_controls(&self) -> Result<Vec<String>, Error> {
        self.eval(
            "[...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]\
             .filter(e => e.offsetParent !== null)\
             .filter(e => { \
               const text = s => (s || '').trim().length > 0; \
               if (text(e.getAttribute('aria-label'))) return false; \
               const by = e.getAttribute('aria-labelledby'); \
               if (by && by.split(/\\s+/).some(id => text((document.getElementById(id) || {}).textContent))) return false; \
               if ([...(e.labels || [])].some(l => text(l.textContent))) return false; \
               if (e.tagName === 'BUTTON' && text(e.textContent)) return false; \
               return true; })\
             .map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + (e.name ? '[name=' + e.name + ']' : ''))",
        )
        .await
    }

    /// The fonts that drew the text of the first node `css` selects, with how many glyphs each:
    /// a Khmer page whose text fell to a font without Khmer would draw boxes.
    pub async fn fonts_rendering(&self, css: &str) -> Result<Vec<(String, u64)>, Error> {
        let document = self.call("DOM.getDocument", json!({ "depth": 0 })).await?;
        let root = document["root"]["nodeId"].clone();
        let found = self
            .call(
                "DOM.querySelector",
                json!({ "nodeId": root, "selector": css }),
            )
            .await?;
        let node = found["nodeId"].as_u64().unwrap_or(0);
        if node == 0 {
            return Err(fail(format!("no element {css} for its fonts")));
        }
        let fonts = self
            .call("CSS.getPlatformFontsForNode", json!({ "nodeId": node }))
            .await?;
        Ok(fonts["fonts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                (
                    f["familyName"].as_str().unwrap_or_default().to_owned(),
                    f["glyphCount"].as_u64().unwrap_or(0),
                )
            })
            .collect())
    }
}
