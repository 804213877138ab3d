//! Headless Chromium driven over the W3C WebDriver protocol (Debian's `chromium` and
//! `chromium-driver`): a few JSON requests to a `chromedriver` this process starts, so the
//! tests need no browser-automation crate.
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The key WebDriver gives an element reference under.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    http: reqwest::Client,
    session: String,
    driver: Child,
}

/// Whether the browser is installed; outside CI a missing one skips the test with a note, in CI
/// (`CI=true`, where `.ci/run` installs it) it fails, unless `.ci/run` could not install it.
pub fn available() -> bool {
    if std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists() {
        return true;
    }
    let message = format!("missing {CHROMIUM} or {CHROMEDRIVER}: apt-get install chromium chromium-driver");
    // `.ci/run` sets this when the packages could not be installed (and says so).
    let excused = std::env::var_os("RECYCLEGPT_NO_BROWSER").is_some();
    if std::env::var("CI").is_ok_and(|v| v == "true") && !excused {
        panic!("{message}");
    }
    eprintln!("SKIPPED: the browser tests ({message})");
    false
}

impl Browser {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"]},
            "goog:loggingPrefs": {"browser": "ALL"}
        }}});
        let reply: Value =
            http.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let session = reply["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {reply}"));
        Self { http, session: format!("{base}/session/{session}"), driver }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let request = self.http.request(method, format!("{}{path}", self.session));
        let request = if body.is_null() { request } else { request.json(&body) };
        let reply: Value = request.send().await.expect("webdriver").json().await.expect("webdriver JSON");
        assert!(!reply["value"]["error"].is_string(), "webdriver {path}: {reply}");
        reply["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({"url": url})).await;
    }

    /// Runs `script` in the page (WebDriver's injection, not subject to the page's CSP).
    pub async fn execute(&self, script: &str) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", json!({"script": script, "args": []})).await
    }

    pub async fn find(&self, css: &str) -> String {
        let found = self.call(reqwest::Method::POST, "/element", json!({"using": "css selector", "value": css})).await;
        found[ELEMENT].as_str().expect("an element").to_string()
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{element}/value"), json!({"text": text})).await;
    }

    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{element}/click"), json!({})).await;
    }

    /// Waits until `css` matches something, for at most `limit`.
    pub async fn wait_for(&self, css: &str, limit: Duration) {
        let started = Instant::now();
        let script = format!("return document.querySelector({}) !== null", json!(css));
        while self.execute(&script).await != json!(true) {
            assert!(started.elapsed() < limit, "{css} did not appear within {limit:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The console's entries since the last call (chromedriver's log endpoint).
    pub async fn console(&self) -> Vec<Value> {
        let entries = self.call(reqwest::Method::POST, "/se/log", json!({"type": "browser"})).await;
        entries.as_array().cloned().unwrap_or_default()
    }

    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let data = self.call(reqwest::Method::GET, "/screenshot", Value::Null).await;
        base64::engine::general_purpose::STANDARD.decode(data.as_str().expect("base64 PNG")).expect("a PNG")
    }

    /// Ends the session (Chromium quits), then the driver.
    pub async fn close(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

/// A test that fails before `close` still stops the driver (and Chromium is its child).
impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
