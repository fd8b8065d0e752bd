//! The private PostgreSQL: started from nothing, reused, and safe to start from two places.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use zdm::local_pg::LocalPg;

use crate::helpers::scratch_cluster;

#[test]
fn two_starts_at_once_share_one_healthy_cluster() {
    let cluster = scratch_cluster("race");
    let base = cluster.base.clone();
    let starts: Vec<_> = (0..2)
        .map(|_| {
            let base = base.clone();
            std::thread::spawn(move || LocalPg::ensure_running(&base))
        })
        .collect();
    let clusters: Vec<LocalPg> = starts
        .into_iter()
        .map(|t| t.join().unwrap().expect("both starts succeed"))
        .collect();
    assert_eq!(clusters[0].socket_dir, clusters[1].socket_dir);

    let pg = &clusters[0];
    pg.create_database_if_missing("zdm").unwrap();
    pg.create_database_if_missing("zdm")
        .expect("creating it again is a no-op");
    let mut conn = PgConnection::establish(&pg.url("zdm")).expect("the database answers");
    conn.batch_execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        .unwrap();
    drop(conn);

    // A later start reuses the cluster and its data.
    let again = LocalPg::ensure_running(&base).expect("restarting");
    let mut conn = PgConnection::establish(&again.url("zdm")).unwrap();
    let kept: i32 = diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
        "(SELECT v FROM kept)",
    ))
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(kept, 42);
    drop(conn);

    again.stop().expect("stopping the cluster");
    let restarted = LocalPg::ensure_running(&base).expect("starting a stopped cluster");
    let mut conn = PgConnection::establish(&restarted.url("zdm")).unwrap();
    let kept: i32 = diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
        "(SELECT v FROM kept)",
    ))
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(kept, 42, "data survives a stop and start");
}

#[test]
fn a_private_streaming_replica_follows_the_primary() {
    let mut cluster = scratch_cluster("replica");
    let primary = cluster.primary().unwrap();
    primary.create_database_if_missing("zdm").unwrap();
    let mut conn = PgConnection::establish(&primary.url("zdm")).unwrap();
    conn.batch_execute("CREATE TABLE seen (v int); INSERT INTO seen VALUES (1)")
        .unwrap();

    let replica = cluster.replica(&primary).unwrap();
    assert_ne!(
        replica.socket_dir, primary.socket_dir,
        "a socket of its own"
    );
    let mut on_replica = PgConnection::establish(&replica.url("zdm")).unwrap();
    let in_recovery: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "pg_is_in_recovery()",
    ))
    .get_result(&mut on_replica)
    .unwrap();
    assert!(in_recovery, "it is a hot standby");
    assert!(
        on_replica
            .batch_execute("INSERT INTO seen VALUES (9)")
            .is_err(),
        "it refuses writes"
    );

    conn.batch_execute("INSERT INTO seen VALUES (2)").unwrap();
    let mut replayed = false;
    for _ in 0..100 {
        let count: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "(SELECT count(*) FROM seen)",
        ))
        .get_result(&mut on_replica)
        .unwrap();
        if count == 2 {
            replayed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(replayed, "the primary's write reached the replica");
    drop(on_replica);
    let again = primary.ensure_replica(1).unwrap();
    assert!(
        !again.started_here,
        "a later call reuses the running replica"
    );
}

/// A command that starts the private PostgreSQL leaves it running for the commands after it,
/// and says so; `zdm db stop` stops it, and says when nothing runs.
#[test]
fn a_command_that_starts_the_private_postgres_says_so_and_db_stop_stops_it() {
    let cluster = scratch_cluster("left-running");
    let zdm = |args: &[&str]| {
        let out = crate::helpers::zdm_command()
            .args(args)
            .env("ZDM_DATA_DIR", &cluster.base)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "zdm {args:?}: {stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    let (_, stderr) = zdm(&["seed", "--users", "10"]);
    assert!(
        stderr.contains("was started by this command and keeps running; `zdm db stop` stops it"),
        "{stderr}"
    );
    // Found running, it is not this command's to mention.
    let (_, stderr) = zdm(&["migrate", "status"]);
    assert!(!stderr.contains("keeps running"), "{stderr}");
    let (stdout, _) = zdm(&["db", "stop"]);
    assert!(
        stdout.contains("stopped the private PostgreSQL in"),
        "{stdout}"
    );
    let (stdout, _) = zdm(&["db", "stop"]);
    assert!(
        stdout.contains("no private PostgreSQL is running"),
        "{stdout}"
    );
}
