//! The chat page at `/`: its headers and its guard over real HTTP, and the page itself in
//! headless Chromium against the real server (the embedded model, and SmolLM2 from ../shared):
//! a message sent, the answer streamed with the text accepted drafts wrote marked, the
//! recycling figures shown, and no console errors.
mod common;

use common::browser::{self, Browser};
use common::server::TestServer;
use recyclegpt_model::{LoadOptions, LoadedModel, RecycleInit};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const KEY: &str = "page-key";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The embedded model with its trained module.
async fn embedded(tweak: impl FnOnce(&mut recyclegpt_server::ServerConfig)) -> TestServer {
    let model = root().join("models/shakespeare");
    TestServer::start_loaded(&model, common::load(&model, RecycleInit::FromFiles), tweak).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_with_its_headers_and_guarded_by_the_key() {
    let server = embedded(|c| c.api_key = Some(KEY.into())).await;
    let http = reqwest::Client::new();
    // A browser opens the page without headers: the 401 asks it for the key (as a password).
    let refused = http.get(server.url("/")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic realm="));
    let api = http.get(server.url("/v1/models")).send().await.unwrap();
    assert_eq!(api.status(), 401);
    let challenge = api.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    assert!(!challenge.unwrap_or_default().starts_with("Basic"), "API clients are not asked for Basic credentials");
    let wrong = http.get(server.url("/")).basic_auth("me", Some("nope")).send().await.unwrap();
    assert_eq!(wrong.status(), 401);

    let page = http.get(server.url("/")).basic_auth("me", Some(KEY)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let header = |r: &reqwest::Response, name: &str| r.headers()[name].to_str().unwrap().to_string();
    assert_eq!(header(&page, "cache-control"), "no-cache");
    let csp = header(&page, "content-security-policy");
    for directive in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
        assert!(csp.contains(directive), "{csp}");
    }
    let html = page.text().await.unwrap();
    let script = regex::Regex::new(r#"src="(webui/[0-9a-f]{16}/app\.js)""#).unwrap();
    let path = script.captures(&html).expect("the page loads its script by a versioned path")[1].to_string();
    // The basic credentials work on the API too (the page's requests carry them).
    let models = http.get(server.url("/v1/models")).basic_auth("", Some(KEY)).send().await.unwrap();
    assert_eq!(models.status(), 200);
    let asset = http.get(server.url(&format!("/{path}"))).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(asset.status(), 200);
    assert!(header(&asset, "content-type").starts_with("text/javascript"));
    assert!(header(&asset, "cache-control").contains("immutable"));
    assert!(asset.text().await.unwrap().contains("/v1/chat/completions"));
    let stale = http.get(server.url("/webui/0000000000000000/app.js")).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(header(&stale, "cache-control"), "no-cache");
    let missing = http
        .get(server.url(&format!("/{}", path.replace("app.js", "nothing.js"))))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    server.shutdown().await.unwrap();

    // `--no-webui`: no page.
    let server = embedded(|c| c.webui = false).await;
    let gone: Value = reqwest::get(server.url("/")).await.unwrap().json().await.unwrap();
    assert_eq!(gone["error"]["code"], "not_found", "{gone}");
    server.shutdown().await.unwrap();
}

/// Sends `message` from the page at `url` and checks the answer; returns its text.
async fn chat_in_the_page(browser: &Browser, url: &str, message: &str, shot: &Path) -> String {
    browser.goto(url).await;
    // The page asks the server for its model first.
    browser.wait_for("#model:not(:empty)", Duration::from_secs(10)).await;
    let model = browser.execute("return document.getElementById('model').textContent").await;
    assert!(!model.as_str().unwrap().contains("cannot"), "{model}");
    browser
        .execute("document.getElementById('mode').value = 'verify'; document.getElementById('max-tokens').value = '96'")
        .await;
    browser.type_into("#input", message).await;
    browser.click("#send").await;
    browser.wait_for(".message.assistant .stats", Duration::from_secs(120)).await;
    let answer = browser
        .execute(
            "const a = document.querySelector('.message.assistant'); return {
                text: a.querySelector('.text').textContent,
                stats: a.querySelector('.stats').textContent,
                marked: a.querySelectorAll('mark.module, mark.lookup').length,
                error: a.classList.contains('error'),
                stop: document.getElementById('stop').disabled }",
        )
        .await;
    std::fs::write(shot, browser.screenshot().await).unwrap();
    assert_eq!(answer["error"], false, "{answer}");
    assert!(!answer["text"].as_str().unwrap().trim().is_empty(), "{answer}");
    assert!(answer["stats"].as_str().unwrap().contains("tokens per full forward"), "{answer}");
    assert!(answer["marked"].as_u64().unwrap() > 0, "verify with a trained module marks accepted drafts: {answer}");
    assert_eq!(answer["stop"], true, "the stop button is off once the answer is in");
    let errors: Vec<Value> = browser.console().await.into_iter().filter(|e| e["level"] == "SEVERE").collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    answer["text"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_streams_an_answer_with_its_drafts_marked_in_chromium() {
    if !browser::available() {
        return;
    }
    let shots = common::scratch("webui");
    let browser = Browser::start().await;
    // The embedded model, behind a key given as the page's URL credentials.
    let server = embedded(|c| c.api_key = Some(KEY.into())).await;
    let url = server.url("/").replace("http://", &format!("http://me:{KEY}@"));
    chat_in_the_page(&browser, &url, "Once upon a time", &shots.join("embedded.png")).await;
    server.shutdown().await.unwrap();

    if let Some(path) = common::smollm2() {
        let module = root().join("models/smollm2-135m-instruct-recycle");
        let options = LoadOptions { recycle_init: RecycleInit::FromDir(module), ..LoadOptions::default() };
        let loaded = LoadedModel::load(&path, &options).expect("SmolLM2 loads");
        let server = TestServer::start_loaded(&path, loaded, |_| {}).await;
        let answer =
            chat_in_the_page(&browser, &server.url("/"), "What is the capital of France?", &shots.join("smollm2.png"))
                .await;
        assert!(answer.contains("Paris"), "{answer}");
        server.shutdown().await.unwrap();
    }
    browser.close().await;
}
