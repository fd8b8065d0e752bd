//! Graceful shutdown of a real `zdm serve` process on its own private PostgreSQL: requests in
//! flight finish, the backfill stops at a batch boundary, and the PostgreSQL it started is
//! stopped cleanly.

use std::path::PathBuf;
use std::time::Duration;

use diesel::prelude::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use zdm::local_pg::LocalPg;
use zdm::migration::backfill::{self, BackfillState};

use crate::helpers::{ADMIN_TOKEN, ServeProcess, TableLock, free_port};

#[actix_web::test]
async fn sigterm_finishes_requests_pauses_the_backfill_and_stops_its_postgres() {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pg-shutdown-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let port = free_port();
    let address = format!("http://127.0.0.1:{port}");
    // initdb, the server's start and the migrations: seconds, longer on a loaded machine.
    let mut server = ServeProcess::start(
        port,
        &[("ZDM_DATA_DIR", base.to_str().unwrap())],
        Duration::from_secs(120),
    )
    .await;
    let client = reqwest::Client::new();

    let pg = LocalPg::ensure_running(&base).unwrap();
    assert!(
        !pg.started_here,
        "the server's PostgreSQL was already running"
    );
    let url = pg.url("zdm");
    let mut conn = PgConnection::establish(&url).unwrap();
    zdm::tools::seed::seed_users(&mut conn, zdm::domain::Phase::Baseline, 20_000, 3, |_| {})
        .unwrap();
    let admin = |path: &str, body: Value| {
        client
            .post(format!("{address}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    for _ in 0..2 {
        assert_eq!(
            admin("/api/admin/migration/advance", json!({}))
                .await
                .unwrap()
                .status(),
            200
        );
        crate::helpers::wait_for_every_instance(&mut conn).await;
    }
    let started = admin(
        "/api/admin/backfill/start",
        json!({ "batch_size": 500, "sleep_ms": 200 }),
    )
    .await
    .unwrap();
    assert_eq!(started.status(), 202);
    crate::helpers::eventually("a first backfill batch", || {
        backfill::status(&mut conn).unwrap().last_id > 0
    })
    .await;

    // A request in flight: it waits on a table lock while the shutdown begins.
    let mut lock = TableLock::take(&url);
    let in_flight = {
        let (client, url) = (client.clone(), format!("{address}/api/v1/users?limit=5"));
        actix_web::rt::spawn(
            async move { client.get(url).send().await.map(|r| r.status().as_u16()) },
        )
    };
    lock.wait_for_a_request().await;
    server.signal(Signal::SIGTERM).unwrap();
    // The shutdown has begun once the server stops taking connections; only then does the
    // lock go, so the request is still in flight while the server shuts down.
    crate::helpers::eventually("the server to stop listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    })
    .await;
    assert!(
        !in_flight.is_finished(),
        "the request is still in flight, not cut off, once the shutdown has begun"
    );
    drop(lock);
    drop(conn);
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        200,
        "the request in flight was answered"
    );

    let status = server.exited().await;
    assert!(status.success(), "{status}");
    assert!(
        !pg.data_dir.join("postmaster.pid").exists(),
        "its PostgreSQL was stopped"
    );

    let pg = LocalPg::ensure_running(&base).unwrap();
    let mut conn = PgConnection::establish(&pg.url("zdm")).unwrap();
    let state = backfill::status(&mut conn).unwrap();
    assert_eq!(
        state.state,
        BackfillState::Paused,
        "stopped at a batch boundary, ready to resume"
    );
    assert!(
        state.last_id > 0 && state.last_id < state.max_id,
        "{state:?}"
    );
    drop(conn);
    pg.stop().unwrap();
    std::fs::remove_dir_all(&pg.base_dir).unwrap();
    let _ = std::fs::remove_dir_all(&base);
}
