//! End-to-end tests in a real headless Chromium, driven over WebDriver (chromedriver), against
//! the real server. Each test saves screenshots of the pages it passes through to
//! `target/tmp/screenshots/`.
//!
//! Without Chromium and chromedriver these tests fail, saying what to install. Setting
//! `ZDM_SKIP_BROWSER_TESTS=1` skips them on purpose, and each says so on the terminal (not in
//! the captured output a passing test hides); under `CI=true`, which installs the browser,
//! the skip is refused.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use diesel::prelude::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use zdm::domain::Phase;
use zdm::migration::backfill::{self, BackfillState, Direction};

use crate::helpers::{ADMIN_TOKEN, TestApp, WAIT, wait_for};

const CHROMIUM: &str = "/usr/bin/chromium";

fn find(program: &str, fallback: &str) -> Option<PathBuf> {
    let fallback = Path::new(fallback);
    if fallback.is_file() {
        return Some(fallback.to_owned());
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// A browser session; the driver and the browser it started go when this does.
pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver leads a process group of its own, which the browser it started joins:
        // killing the group ends both, also when a failed test never closed its session
        // (killing the driver alone left the browser running).
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.driver.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Set to `1` to skip the browser tests on purpose.
const SKIP_BROWSER_TESTS: &str = "ZDM_SKIP_BROWSER_TESTS";

/// A browser session for the test `test`, or `None` when the browser tests are skipped on
/// purpose.
pub async fn browser(test: &str) -> Option<Browser> {
    if std::env::var(SKIP_BROWSER_TESTS).as_deref() == Ok("1") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{SKIP_BROWSER_TESTS}=1 under CI=true: CI installs Chromium and runs the browser tests"
        );
        // Straight to the terminal: the test harness captures eprintln! and shows it only
        // for a failed test, and this one passes.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("\n!!!!! browser test {test} SKIPPED ({SKIP_BROWSER_TESTS}=1) !!!!!\n")
                .as_bytes(),
        );
        return None;
    }
    let chromium = find("chromium", CHROMIUM);
    let driver_bin = find("chromedriver", "/usr/bin/chromedriver");
    let (Some(chromium), Some(driver_bin)) = (chromium, driver_bin) else {
        panic!(
            "Chromium and chromedriver are not installed (Debian: apt-get install chromium \
             chromium-driver); install them, or set {SKIP_BROWSER_TESTS}=1 to skip the browser \
             tests on purpose"
        );
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = Command::new(driver_bin)
        .process_group(0)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    let profile = std::env::temp_dir().join(format!("zdm-chromium-{port}"));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1280,1100", format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    let mut last_error = String::new();
    for _ in 0..100 {
        match ClientBuilder::native()
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => {
                return Some(Browser {
                    client,
                    driver,
                    profile,
                });
            }
            Err(e) => last_error = e.to_string(),
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not start a Chromium session: {last_error}");
}

pub async fn screenshot(client: &Client, name: &str) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = client.screenshot().await.expect("taking a screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn fill(client: &Client, id: &str, text: &str) {
    let field = client
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"));
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

async fn value_of(client: &Client, id: &str) -> String {
    let field = client.find(Locator::Id(id)).await.unwrap();
    field.prop("value").await.unwrap().unwrap_or_default()
}

/// Clicks and waits for the next page: the clicked element's document must go away first.
async fn click_and_wait(element: fantoccini::elements::Element) {
    element.clone().click().await.unwrap();
    wait_for(
        "the next page after the click",
        WAIT,
        async || match element.is_displayed().await {
            Err(_) => Ok(()),
            Ok(_) => Err("the clicked element is still there".to_owned()),
        },
    )
    .await
}

async fn submit(client: &Client) {
    click_and_wait(
        client
            .find(Locator::Css("form.form button[type=submit]"))
            .await
            .unwrap(),
    )
    .await;
}

async fn page_text(client: &Client) -> String {
    client
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_person_creates_and_edits_users_through_the_v1_and_v2_forms() {
    let Some(b) = browser("a_person_creates_and_edits_users_through_the_v1_and_v2_forms").await
    else {
        return;
    };
    let c = &b.client;
    let app = TestApp::spawn().await;
    c.goto(&app.url("/")).await.unwrap();
    screenshot(c, "home").await;

    // v1: a validation error is shown next to the field, with the input kept.
    c.goto(&app.url("/v1/users/new")).await.unwrap();
    fill(c, "full_name", "   ").await;
    fill(c, "email", "grace@example.com").await;
    submit(c).await;
    let error = c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#full_name-error"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(error, "Full name must not be blank.");
    assert_eq!(
        value_of(c, "email").await,
        "grace@example.com",
        "the input is kept"
    );
    screenshot(c, "v1-form-error").await;
    fill(c, "full_name", "Grace  Hopper").await;
    submit(c).await;
    let list = page_text(c).await;
    assert!(
        list.contains("User created.") && list.contains("Grace Hopper"),
        "{list}"
    );
    click_and_wait(c.find(Locator::LinkText("Edit")).await.unwrap()).await;
    assert_eq!(value_of(c, "full_name").await, "Grace Hopper");
    fill(c, "full_name", "Grace Brewster Hopper").await;
    submit(c).await;
    assert!(page_text(c).await.contains("Grace Brewster Hopper"));

    // v2, once released.
    app.walk_to(Phase::DualWrite).await;
    c.goto(&app.url("/v2/users/new")).await.unwrap();
    fill(c, "first_name", "Mary Ann").await;
    fill(c, "last_name", "Smith").await;
    fill(c, "email", "not-an-email").await;
    submit(c).await;
    screenshot(c, "v2-form-error").await;
    let error = c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#email-error"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(error, "Email must look like name@example.com.");
    assert_eq!(
        value_of(c, "first_name").await,
        "Mary Ann",
        "the input is kept"
    );
    screenshot(c, "v2-form-error").await;
    fill(c, "email", "mary@example.com").await;
    submit(c).await;
    let list = page_text(c).await;
    assert!(
        list.contains("Mary Ann") && list.contains("Smith"),
        "{list}"
    );
    screenshot(c, "v2-list").await;
    c.goto(&app.url("/v1/users")).await.unwrap();
    assert!(
        page_text(c).await.contains("Mary Ann Smith"),
        "v1 sees the joined name"
    );
    b.client.clone().close().await.unwrap();
}

/// The phase the dashboard shows.
async fn shown_phase(c: &Client) -> String {
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("phase"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn text_of(c: &Client, id: &str) -> String {
    c.find(Locator::Id(id)).await.unwrap().text().await.unwrap()
}

/// Waits until the backfill progress bar shows `value`, failing with the values it showed
/// meanwhile.
async fn wait_for_bar(c: &Client, value: f64) {
    let mut seen = Vec::new();
    let what = format!("the bar to show {value} %");
    wait_for(&what, WAIT, async || {
        let shown = c
            .execute(
                "return document.getElementById('backfill-progress').value;",
                vec![],
            )
            .await
            .unwrap()
            .as_f64()
            .unwrap_or(0.0);
        if seen.last() != Some(&shown) {
            seen.push(shown);
        }
        if shown == value {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await
}

/// Waits until the element `id` reads something that starts with `start`.
async fn wait_for_text(c: &Client, id: &str, start: &str) {
    let what = format!("#{id} to read {start}…");
    wait_for(&what, WAIT, async || {
        let shown = text_of(c, id).await;
        if shown.starts_with(start) {
            Ok(())
        } else {
            Err(shown)
        }
    })
    .await
}

/// Waits until the next step's gate list has a gate whose text (name, then detail, the mark
/// and the screen-reader words left out) is `gate`.
async fn wait_for_gate(c: &Client, gate: &str) {
    let what = format!("the gate {gate:?}");
    wait_for(&what, WAIT, async || {
        let shown = c
            .execute(
                "return Array.from(document.querySelectorAll('#next-gates li')).map(li => \
                 Array.from(li.childNodes).filter(n => !(n.classList && \
                 (n.classList.contains('visually-hidden') || n.classList.contains('gate-mark')))) \
                 .map(n => n.textContent).join(' ').replace(/\\s+/g, ' ').trim());",
                vec![],
            )
            .await
            .unwrap();
        if shown
            .as_array()
            .is_some_and(|gates| gates.iter().any(|g| g == gate))
        {
            Ok(())
        } else {
            Err(shown.to_string())
        }
    })
    .await
}

/// Waits until the bars under the backfill's total read `bars` (label and range of each).
async fn wait_for_worker_bars(c: &Client, bars: &[&str]) {
    let what = format!("the worker bars {bars:?}");
    wait_for(&what, WAIT, async || {
        let shown = c
            .execute(
                "return Array.from(document.querySelectorAll('#worker-bars li')).map(li => \
                 li.textContent.replace(/\\s+/g, ' ').trim());",
                vec![],
            )
            .await
            .unwrap();
        let matches = shown.as_array().is_some_and(|shown| {
            shown.len() == bars.len()
                && shown
                    .iter()
                    .zip(bars)
                    .all(|(s, b)| s.as_str().is_some_and(|s| s.starts_with(b)))
        });
        if matches {
            Ok(())
        } else {
            Err(shown.to_string())
        }
    })
    .await
}

async fn click_button(c: &Client, text: &str) {
    let xpath = format!("//button[normalize-space(.)='{text}']");
    click_and_wait(
        c.find(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|e| panic!("button {text:?}: {e}")),
    )
    .await;
}

/// The admin logs in on one instance and clicks through the dashboard of another (the two
/// share a host, so the browser sends the session cookie to both, as behind a load balancer).
#[actix_web::test]
async fn an_admin_walks_the_migration_by_clicking_and_watches_the_backfill() {
    let Some(b) =
        browser("an_admin_walks_the_migration_by_clicking_and_watches_the_backfill").await
    else {
        return;
    };
    let c = &b.client;
    let login_instance = TestApp::spawn().await;
    let app = TestApp::spawn_on(std::sync::Arc::clone(&login_instance.db)).await;
    app.seed(40_000);

    c.goto(&login_instance.url("/admin")).await.unwrap();
    assert!(
        c.current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/admin/login"),
        "log in first"
    );
    fill(c, "token", ADMIN_TOKEN).await;
    submit(c).await;
    assert_eq!(shown_phase(c).await, "baseline");
    c.goto(&app.url("/admin")).await.unwrap();
    assert_eq!(
        c.current_url().await.unwrap().path(),
        "/admin",
        "the log-in on one instance holds on the other"
    );
    assert_eq!(shown_phase(c).await, "baseline");
    screenshot(c, "admin-baseline").await;

    for to in ["expanded", "dual_write"] {
        click_button(c, &format!("Advance to {to}")).await;
        assert_eq!(shown_phase(c).await, to);
        app.wait_for_phase(to.parse().unwrap()).await;
        login_instance.wait_for_phase(to.parse().unwrap()).await;
    }
    // Before the backfill, its gate says it has not started, and the verification the step
    // runs itself is marked as such, not as unmet.
    wait_for_gate(
        c,
        "backfill the backfill has not started yet (Start on the dashboard, or zdm backfill)",
    )
    .await;
    let verify_mark = c
        .execute(
            "return Array.from(document.querySelectorAll('#next-gates li.on-advance .gate-mark'))\
             .map(m => m.textContent);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(verify_mark, json!(["↻"]));

    // A backfill started elsewhere (here, on a thread of the test) is watched live: it holds
    // after 10 of its 40 batches until the page shows 25 %, and pauses itself after 20.
    // Stopping at known points, not sampling a moving bar, makes the timing irrelevant.
    c.execute("window.zdmNotReloaded = true;", vec![])
        .await
        .unwrap();
    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let runner = {
        let url = app.db.url.clone();
        std::thread::spawn(move || {
            let mut conn = PgConnection::establish(&url).unwrap();
            let mut control = PgConnection::establish(&url).unwrap();
            backfill::set_knobs(&mut conn, backfill::Knobs::fixed(1000, 0)).unwrap();
            backfill::run(&mut conn, Direction::Forward, |s| match s.batches {
                10 => {
                    held_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                }
                20 => drop(backfill::request_stop(&mut control, BackfillState::Paused).unwrap()),
                _ => {}
            })
            .unwrap()
        })
    };
    held_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    wait_for_bar(c, 25.0).await;
    assert!(text_of(c, "backfill-state").await.starts_with("running"));
    // One bar per worker under the total, built by the script (the page had none).
    wait_for_worker_bars(c, &["worker 1 25 % ids 1–40000, at 10000 (25 %)"]).await;
    assert_eq!(text_of(c, "backfill-workers").await, "1");
    // The gates follow the progress: the page was rendered before the backfill started.
    wait_for_gate(
        c,
        "backfill the backfill is running (10000 of 40000 rows); run it to the end: `zdm backfill` or the dashboard",
    )
    .await;
    wait_for_gate(
        c,
        "instances all 2 live instance(s) have applied dual_write or later",
    )
    .await;
    screenshot(c, "admin-backfill").await;
    go_tx.send(()).unwrap();
    assert_eq!(runner.join().unwrap().state, BackfillState::Paused);
    wait_for_bar(c, 50.0).await;
    // As at the end: the bar can show the last batch before the state says it stopped.
    wait_for_text(c, "backfill-state", "paused").await;
    wait_for_worker_bars(c, &["waiting 50 % ids 1–40000, at 20000 (50 %)"]).await;
    wait_for_gate(
        c,
        "backfill the backfill is paused (20000 of 40000 rows); run it to the end: `zdm backfill` or the dashboard",
    )
    .await;
    assert_eq!(
        c.execute("return window.zdmNotReloaded === true;", vec![])
            .await
            .unwrap(),
        json!(true),
        "the bar moved from 0 to 25 to 50 % and the gates with it, without a reload"
    );

    // The admin resumes it by clicking; it runs to the end.
    click_button(c, "Start / resume").await;
    wait_for_bar(c, 100.0).await;
    wait_for_gate(
        c,
        "backfill backfill done: 40000 rows scanned, 40000 filled",
    )
    .await;
    // The last batch brings the bar to 100 % while the backfill is still `running`; `done` is
    // stored just after, and the page shows it at its next refresh (every second).
    wait_for_text(c, "backfill-state", "done").await;

    for to in ["backfilled", "read_new", "new_only"] {
        click_button(c, &format!("Advance to {to}")).await;
        assert_eq!(shown_phase(c).await, to);
        app.wait_for_phase(to.parse().unwrap()).await;
        login_instance.wait_for_phase(to.parse().unwrap()).await;
    }
    // The contract asks for the column's name.
    click_button(c, "Contract: drop full_name").await;
    assert!(page_text(c).await.contains("confirmation gate"));
    assert_eq!(shown_phase(c).await, "new_only");
    fill(c, "confirm", "users.full_name").await;
    screenshot(c, "admin-contract-confirmation").await;
    click_button(c, "Contract: drop full_name").await;
    assert_eq!(shown_phase(c).await, "contracted");
    screenshot(c, "admin-contracted").await;
    app.wait_for_phase(Phase::Contracted).await;
    b.client.clone().close().await.unwrap();
}
