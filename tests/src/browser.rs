//! A real browser: Debian's chromium, headless, driven through chromium-driver (WebDriver) with
//! fantoccini. Each [`Browser`] has its own chromedriver on a free port and its own profile (so
//! cookies never cross tests); both end when it is dropped. Screenshots go to
//! `tests/screenshots/` (README, "Admin console").
use crate::http::free_port;
use crate::wait::{eventually, WAIT};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::process::{Child, Command};

pub struct Browser {
    pub client: Client,
    _driver: Child,
    _profile: tempdir::Dir,
}

/// A throwaway profile directory, removed on drop.
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Where the tests write screenshots.
pub fn screenshots_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/screenshots"))
}

impl Browser {
    pub async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new(std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into()))
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver is installed (scripts/setup.sh: chromium-driver)");
        let profile = std::env::temp_dir().join(format!("console-browser-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&profile).unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1800", format!("--user-data-dir={}", profile.display()),
                         "--no-first-run", "--disable-extensions", "--lang=en-US"],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let client = eventually(WAIT, &format!("chromedriver on port {port}"), || {
            let caps = caps.clone();
            let url = url.clone();
            async move { ClientBuilder::new(HttpConnector::new()).capabilities(caps).connect(&url).await.ok() }
        })
        .await;
        Browser { client, _driver: driver, _profile: tempdir::Dir(profile) }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The text of the first element matching a CSS selector.
    pub async fn text(&self, css: &str) -> String {
        let e = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("find {css}: {e}"));
        e.text().await.unwrap()
    }

    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let e = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("find {css}: {e}"));
        e.attr(name).await.unwrap()
    }

    pub async fn exists(&self, css: &str) -> bool {
        self.client.find_all(Locator::Css(css)).await.map(|v| !v.is_empty()).unwrap_or(false)
    }

    /// Type into the field labelled by `css`.
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("find {css}: {e}"));
        e.clear().await.ok();
        e.send_keys(text).await.unwrap();
    }

    pub async fn select(&self, css: &str, value: &str) {
        let e = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("find {css}: {e}"));
        e.select_by_value(value).await.unwrap_or_else(|e| panic!("select {value} in {css}: {e}"));
    }

    /// Click and wait for the next page to load (a form post or link).
    pub async fn click(&self, css: &str) {
        let e = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("find {css}: {e}"));
        e.click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    pub async fn current_url(&self) -> String {
        self.client.current_url().await.unwrap().to_string()
    }

    pub async fn title(&self) -> String {
        self.client.title().await.unwrap()
    }

    /// The page's HTTP status as the console puts it on error pages (`data-status`), else 200.
    pub async fn page_status(&self) -> u16 {
        match self.client.find_all(Locator::Css("[data-status]")).await {
            Ok(v) if !v.is_empty() => v[0].attr("data-status").await.unwrap().unwrap_or_default().parse().unwrap_or(0),
            _ => 200,
        }
    }

    /// A full-page PNG in tests/screenshots/NAME.png.
    pub async fn screenshot(&self, name: &str) {
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Run JavaScript in the page and get its JSON result.
    pub async fn eval(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// Wait until the browser shows a page whose URL contains `part`.
pub async fn wait_for_url(b: &Browser, part: &str) {
    eventually(WAIT, &format!("the browser at a URL with {part}"), || async {
        b.current_url().await.contains(part).then_some(())
    })
    .await;
}

/// Wait until the browser shows a page titled `title` (the next page has loaded).
pub async fn wait_for_title(b: &Browser, title: &str) {
    eventually(WAIT, &format!("a page titled {title:?}"), || async { (b.title().await == title).then_some(()) }).await;
}
