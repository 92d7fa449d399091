//! The page tests' browser driver against pages made to break its checks: a script error and a
//! missing resource are reported, an unlabelled field is found, Khmer typed into a form comes back
//! byte for byte, Khmer is drawn by a Khmer font, and a screenshot is a PNG. Without these, a check
//! that silently passed everything would pass the page tests too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use spean_testkit::browser::{Browser, Key};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BROKEN: &str = r#"<!doctype html><html lang="km"><head><meta charset="utf-8"><title>t</title>
<link rel="stylesheet" href="/missing.css"></head><body>
<h1 id="k">សួស្តី ពិភពលោក</h1>
<form method="post" action="/echo"><label for="named">Name</label><input id="named" name="named">
<input id="nameless" name="nameless"><button id="go" type="submit">Go</button></form>
<script>console.error("something broke")</script></body></html>"#;

const CLEAN: &str = r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>c</title>
<link rel="icon" href="data:,"></head><body><p>fine</p></body></html>"#;

/// A one-request-per-connection HTTP server: `/` the broken page, `/clean`, `/echo` (a POST
/// answered with its own body), anything else 404.
async fn serve() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| {
                                l.to_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let text = String::from_utf8_lossy(&request).to_string();
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let body_at = text.find("\r\n\r\n").map_or(text.len(), |i| i + 4);
                let (status, body) = match path.as_str() {
                    "/" => ("200 OK", BROKEN.to_owned()),
                    "/clean" => ("200 OK", CLEAN.to_owned()),
                    "/echo" => (
                        "200 OK",
                        format!(
                            "<!doctype html><html><body><pre id=\"echo\">{}</pre></body></html>",
                            &text[body_at..]
                        ),
                    ),
                    _ => ("404 Not Found", String::new()),
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\n\
                     set-cookie: s=1; HttpOnly; SameSite=Strict; Path=/\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://127.0.0.1:{}", addr.port())
}

#[tokio::test]
async fn the_driver_reports_what_a_broken_page_does_wrong_and_nothing_on_a_clean_one() {
    let base = serve().await;
    let browser = Browser::launch().await.unwrap();

    let clean = browser.new_page().await.unwrap();
    clean.goto(&format!("{base}/clean")).await.unwrap();
    assert_eq!(clean.console_errors().await, Vec::<String>::new());
    assert!(clean.unlabelled_controls().await.unwrap().is_empty());

    let page = browser.new_page().await.unwrap();
    page.goto(&format!("{base}/")).await.unwrap();
    let errors = page.console_errors().await;
    assert!(
        errors.iter().any(|e| e.contains("something broke")),
        "the script's error: {errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("404")),
        "the missing style sheet: {errors:?}"
    );
    assert_eq!(
        page.unlabelled_controls().await.unwrap(),
        ["input#nameless[name=nameless]"]
    );
    let fonts = page.fonts_rendering("#k").await.unwrap();
    assert!(
        fonts
            .iter()
            .any(|(family, glyphs)| family.contains("Khmer") && *glyphs > 0),
        "Khmer drawn by a Khmer font: {fonts:?}"
    );
    let cookie = page
        .cookies()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.name == "s")
        .unwrap();
    assert!(cookie.http_only && !cookie.secure);
    assert_eq!(cookie.same_site.as_deref(), Some("Strict"));

    // Typed Khmer goes through a form and back; Tab reaches the button, Enter submits.
    page.fill("#named", "សុខ ស្រីល័ក្ខ").await.unwrap();
    page.tab_until("#go", 5).await.unwrap();
    page.press_and_wait(Key::Enter).await.unwrap();
    let echoed = page.text("#echo").await.unwrap();
    let sent: String = form_urlencoded::parse(echoed.trim().as_bytes())
        .find(|(k, _)| k == "named")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    assert_eq!(sent, "សុខ ស្រីល័ក្ខ");

    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("shot.png");
    page.screenshot(&png).await.unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000);
}
