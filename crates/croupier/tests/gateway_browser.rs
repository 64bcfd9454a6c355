//! The demo page in a real browser (issue 8): Debian's headless Chromium, driven over the Chrome
//! DevTools Protocol on its own WebSocket (ADR 0011: no npm, no chromedriver, no extra crate),
//! against GMS and GS processes on real NATS and Postgres and a gateway with dev tokens on.
//!
//! The page connects, shows a round, mints a dev token, places a bet on the layout, shows the
//! settlement and the seed verified in the browser; the screenshot is kept as a CI artifact in
//! `artifacts/demo-page.png`. Then an operator switches betting off (issue 16): the page says
//! why in a player's words, the layout goes out of reach while rounds go on
//! (`artifacts/demo-page-paused.png`), and both come back when betting is switched on again.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Stack, StackOptions};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(60);
/// For the betting status to reach the page: GS reads the operator's switch within a second or
/// two, and a round takes ~5.5 s here.
const STATUS_WAIT: Duration = Duration::from_secs(30);

/// A headless Chromium with a private profile, killed when dropped.
struct Browser {
    child: Child,
    devtools: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium_binary() -> String {
    if let Ok(path) = std::env::var("CROUPIER_CHROMIUM") {
        return path;
    }
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(candidate).exists() {
            return candidate.to_string();
        }
    }
    panic!("no Chromium: run `just deps` (installs Debian's chromium) or set CROUPIER_CHROMIUM");
}

impl Browser {
    fn launch() -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("croupier-chromium-")
            .tempdir()
            .expect("profile dir");
        let mut child = Command::new(chromium_binary())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1400,1100",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().expect("stderr");
        let (found, receive) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("DevTools listening on ")
                    && let Some(found) = found.take()
                {
                    let _ = found.send(url.trim().to_string());
                }
                // Keep draining so Chromium never blocks on a full pipe.
            }
        });
        let devtools = receive
            .recv_timeout(WAIT)
            .expect("Chromium printed no DevTools address");
        Browser {
            child,
            devtools,
            _profile: profile,
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A minimal DevTools Protocol client: commands by id, on one page's flat session.
struct Cdp {
    socket: Socket,
    next_id: u64,
    session: Option<String>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect to DevTools");
        Cdp {
            socket,
            next_id: 0,
            session: None,
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            command["sessionId"] = json!(session);
        }
        self.socket
            .send(Message::text(command.to_string()))
            .await
            .expect("send to DevTools");
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("DevTools answers")
                .expect("DevTools open")
                .expect("DevTools frame");
            let Message::Text(text) = message else {
                continue;
            };
            let value: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if value["id"] == id {
                assert!(
                    value.get("error").is_none(),
                    "{method} failed: {}",
                    value["error"]
                );
                return value["result"].clone();
            }
        }
    }

    /// Opens a page and attaches to it; later commands go to that page.
    async fn open_page(&mut self) {
        let target = self
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        self.session = Some(
            attached["sessionId"]
                .as_str()
                .expect("session id")
                .to_string(),
        );
        self.call("Page.enable", json!({})).await;
        self.call("Runtime.enable", json!({})).await;
    }

    /// Evaluates `expression` in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression} threw: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy in the page, and returns its value.
    async fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        self.wait_for_within(what, expression, WAIT).await
    }

    /// [`Cdp::wait_for`], giving up after `timeout`.
    async fn wait_for_within(&mut self, what: &str, expression: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        // While the page is still loading, its elements may not exist yet: not yet, not an error.
        let guarded = format!(
            "(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        );
        loop {
            let value = self.eval(&guarded).await;
            if !(value.is_null()
                || value == json!(false)
                || value == json!("")
                || value == json!(0))
            {
                return value;
            }
            if tokio::time::Instant::now() > deadline {
                let page = self.eval("document.body.innerText").await;
                panic!("the page never showed {what}; it shows:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&mut self, path: &std::path::Path) {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64_decode(shot["data"].as_str().expect("png data"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("artifacts dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter_map(value) {
        buffer = (buffer << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_plays_a_round_in_a_real_browser_and_verifies_the_seed() {
    let stack = Stack::start(StackOptions {
        dev_tokens: true,
        // Time for a person (or a polling test) to click before the round closes.
        gms_args: vec!["--betting-ms", "5000"],
        ..StackOptions::default()
    })
    .await;
    let browser = Browser::launch();
    let mut cdp = Cdp::connect(&browser.devtools).await;
    cdp.open_page().await;
    let url = format!("http://{}/", stack.gateway().addr);
    cdp.call("Page.navigate", json!({"url": url})).await;

    // A spectator first: connected, a round on the table.
    cdp.wait_for(
        "the connection",
        "document.getElementById('conn').textContent === 'live'",
    )
    .await;
    cdp.wait_for(
        "a round",
        "/^[0-9]+$/.test(document.getElementById('round').textContent)",
    )
    .await;

    // Mint a dev token for alice: the page reconnects as her and shows her balance.
    cdp.eval(
        "document.getElementById('player').value = 'alice'; \
         document.getElementById('mint').click(); true",
    )
    .await;
    cdp.wait_for(
        "alice",
        "document.getElementById('who').textContent === 'alice'",
    )
    .await;
    let balance = cdp
        .wait_for(
            "the balance",
            "Number(document.getElementById('balance').textContent) || null",
        )
        .await;
    assert_eq!(balance, json!(10000), "alice's deposit");

    // Bet on red while a round is open, by clicking the layout.
    cdp.wait_for(
        "an open round",
        "document.getElementById('phase').dataset.phase === 'open' && \
         !document.getElementById('bet-red').disabled && \
         parseFloat(document.getElementById('countdown').textContent) > 2",
    )
    .await;
    cdp.eval(
        "document.getElementById('amount').value = '250'; \
         document.getElementById('bet-red').click(); true",
    )
    .await;
    let accepted = cdp
        .wait_for(
            "the bet's answer",
            "(document.querySelector('#log li[data-kind=bet_result], #log li[data-kind=error]') \
              || {}).textContent",
        )
        .await;
    assert!(
        accepted.as_str().is_some_and(|t| t.contains("accepted")),
        "the bet is accepted: {accepted}"
    );
    assert_eq!(
        cdp.eval("document.getElementById('balance').textContent")
            .await,
        json!("9750")
    );

    // The settlement arrives, and the round's seed is verified in the browser.
    let settled = cdp
        .wait_for(
            "the settlement",
            "(document.querySelector('#log li[data-kind=bet_settled]') || {}).textContent",
        )
        .await;
    assert!(
        settled.as_str().is_some_and(|t| t.contains("red × 250")),
        "{settled}"
    );
    let verified = cdp
        .wait_for(
            "the verified seed",
            "document.getElementById('verify').className === 'ok' && \
             document.getElementById('verify').textContent",
        )
        .await;
    assert!(
        verified.as_str().is_some_and(|t| t.contains("verified")),
        "{verified}"
    );
    cdp.screenshot(&testkit::workspace_root().join("artifacts/demo-page.png"))
        .await;

    // An operator switches betting off: the page says so and why, and takes the layout away.
    let before = cdp
        .eval("Number(document.getElementById('round').textContent)")
        .await;
    let before = before.as_u64().expect("a round number");
    stack.set_betting(false, "drill").await;
    let paused = cdp
        .wait_for_within(
            "the paused banner",
            "document.getElementById('betting-banner').dataset.reason === 'operator' && \
             document.getElementById('betting-banner').offsetHeight > 0 && \
             document.getElementById('betting-banner').textContent",
            STATUS_WAIT,
        )
        .await;
    assert_eq!(
        paused,
        json!(
            "Betting is paused by the casino operator. Rounds go on; betting resumes when the \
             operator switches it back on."
        ),
        "the operator's reason, in words"
    );
    assert_eq!(
        cdp.eval("document.getElementById('betting-banner').getAttribute('role')")
            .await,
        json!("status"),
        "the banner is announced"
    );
    assert_eq!(
        cdp.eval("document.getElementById('betting').textContent")
            .await,
        json!("paused")
    );
    // Rounds go on while paused: a new one opens and shows, but the layout stays disabled.
    let during = cdp
        .wait_for_within(
            "a round opened while betting is paused",
            &format!(
                "document.getElementById('phase').dataset.phase === 'open' && \
                 Number(document.getElementById('round').textContent) > {before} && ({{ \
                   buttons: document.querySelectorAll('#layout button').length, \
                   enabled: [...document.querySelectorAll('#layout button')] \
                     .filter((b) => !b.disabled).length, \
                   ariaDisabled: document.getElementById('layout').getAttribute('aria-disabled'), \
                   stake: document.getElementById('amount').disabled }})"
            ),
            STATUS_WAIT,
        )
        .await;
    assert!(
        during["buttons"].as_u64().is_some_and(|n| n > 40),
        "{during}"
    );
    assert_eq!(
        during["enabled"],
        json!(0),
        "no bet button while paused: {during}"
    );
    assert_eq!(during["ariaDisabled"], json!("true"), "{during}");
    assert_eq!(during["stake"], json!(true), "{during}");
    cdp.screenshot(&testkit::workspace_root().join("artifacts/demo-page-paused.png"))
        .await;

    // Switched on again: the banner goes, and the layout comes back at the next open round.
    stack.set_betting(true, "").await;
    cdp.wait_for_within(
        "the banner gone",
        "document.getElementById('betting-banner').dataset.betting === 'enabled' && \
         document.getElementById('betting-banner').textContent === '' && \
         document.getElementById('betting-banner').offsetHeight === 0 && \
         document.getElementById('betting').textContent === 'open'",
        STATUS_WAIT,
    )
    .await;
    cdp.wait_for_within(
        "the layout enabled again",
        "document.getElementById('phase').dataset.phase === 'open' && \
         [...document.querySelectorAll('#layout button')].every((b) => !b.disabled) && \
         document.getElementById('layout').getAttribute('aria-disabled') === 'false' && \
         !document.getElementById('amount').disabled",
        STATUS_WAIT,
    )
    .await;
    let back = cdp
        .eval("(document.querySelector('#log li[data-kind=status]') || {}).textContent")
        .await;
    assert_eq!(back, json!("Betting is open again."));

    // A pasted token works too (here: bob's, minted by the CLI's code path).
    let bob = stack.token("bob");
    cdp.eval(&format!(
        "document.getElementById('token').value = '{bob}'; \
         document.getElementById('connect').click(); true"
    ))
    .await;
    cdp.wait_for(
        "bob",
        "document.getElementById('who').textContent === 'bob'",
    )
    .await;
    cdp.wait_for(
        "bob's balance",
        "document.getElementById('balance').textContent === '0'",
    )
    .await;
}
