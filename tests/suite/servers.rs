//! The three servers of `testenv/` answer the project's own client libraries
//! (tokio-postgres, reqwest, neo4rs) with the runbook's development defaults.
//! Every other integration test stands on these.

use crate::common;
use common::{required_env, shared, Neo4j, Opensearch, Postgres};

#[tokio::test]
async fn postgres_answers_select_version() {
    let _guard = shared(&[Postgres]);
    let conninfo = format!(
        "host={} port={} user={} password={} dbname=postgres",
        required_env("PGHOST"),
        required_env("PGPORT"),
        required_env("PGUSER"),
        required_env("PGPASSWORD")
    );
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .expect("connect to the testenv PostgreSQL with password authentication");
    tokio::spawn(connection);
    let row = client.query_one("SELECT version()", &[]).await.unwrap();
    let version: String = row.get(0);
    assert!(version.starts_with("PostgreSQL 15."), "{version}");
}

#[tokio::test]
async fn postgres_refuses_a_wrong_password() {
    let _guard = shared(&[Postgres]);
    let conninfo = format!(
        "host={} port={} user={} password=not-the-password dbname=postgres",
        required_env("PGHOST"),
        required_env("PGPORT"),
        required_env("PGUSER"),
    );
    let err = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .err()
        .expect("password authentication must be enforced over TCP");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
        "{err:?}"
    );
}

#[tokio::test]
async fn opensearch_answers_get_root() {
    let _guard = shared(&[Opensearch]);
    let url = required_env("OPENSEARCH_URL");
    let body: serde_json::Value = reqwest::get(format!("{url}/"))
        .await
        .expect("GET / on the testenv OpenSearch")
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["version"]["distribution"], "opensearch", "{body}");
    assert!(
        body["version"]["number"]
            .as_str()
            .unwrap()
            .starts_with("2.19."),
        "{body}"
    );
    // Snapshots need path.repo, and pipelines need the ingest-common module.
    let settings: serde_json::Value = reqwest::get(format!(
        "{url}/_nodes/settings?filter_path=nodes.*.settings.path.repo"
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(settings.to_string().contains("snapshots"), "{settings}");
    let plugins = reqwest::get(format!("{url}/_cat/plugins?h=component"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let modules: serde_json::Value = reqwest::get(format!("{url}/_nodes/plugins"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        modules.to_string().contains("ingest-common"),
        "{plugins} {modules}"
    );
}

#[tokio::test]
async fn neo4j_answers_return_1() {
    let _guard = shared(&[Neo4j]);
    let graph = neo4rs::Graph::new(
        required_env("NEO4J_URI"),
        required_env("NEO4J_USER"),
        required_env("NEO4J_PASSWORD"),
    )
    .await
    .expect("connect to the testenv Neo4j over Bolt");
    let mut rows = graph
        .execute(neo4rs::query("RETURN 1 AS one"))
        .await
        .unwrap();
    let row = rows.next().await.unwrap().expect("one row");
    assert_eq!(row.get::<i64>("one").unwrap(), 1);
    let mut rows = graph
        .execute(neo4rs::query(
            "CALL dbms.components() YIELD name, versions, edition RETURN versions[0] AS v, edition",
        ))
        .await
        .unwrap();
    let row = rows.next().await.unwrap().expect("one row");
    assert!(row.get::<String>("v").unwrap().starts_with("5.26."));
    assert_eq!(row.get::<String>("edition").unwrap(), "community");
}

/// A testenv state directory of a test's own, which the postgres user can
/// reach (as under .testenv), and a free port: not a fixed one, since every
/// stack on this host (another worktree's tests, say) runs these tests too.
fn private_stack(prefix: &str) -> (tempfile::TempDir, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
        .to_string();
    (dir, port)
}

/// `testenv/<action> postgres` on the stack in `dir`.
fn testenv_postgres(dir: &tempfile::TempDir, port: &str, action: &str) -> std::process::Command {
    let mut command = std::process::Command::new(common::repo_root().join("testenv").join(action));
    command
        .arg("postgres")
        .env("IT_TESTENV_DIR", dir.path())
        .env("IT_TESTENV_PG_PORT", port);
    command
}

/// A server that cannot start makes `testenv/up` fail quickly with the last
/// lines of that server's log, instead of hanging.
#[test]
fn a_server_that_fails_to_start_fails_up_with_its_log() {
    let (dir, port) = private_stack("itbackup-testenv-");
    let testenv = |action: &str| testenv_postgres(&dir, &port, action).output().unwrap();
    let first = testenv("up");
    assert!(first.status.success(), "{}", common::text(&first));
    let stopped = testenv("down");
    assert!(stopped.status.success(), "{}", common::text(&stopped));
    // Break the cluster's configuration.
    let conf = dir.path().join("postgres/data/postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\nthis_setting_does_not_exist = 1\n");
    std::fs::write(&conf, text).unwrap();

    let started = std::time::Instant::now();
    let broken = testenv("up");
    assert!(!broken.status.success(), "{}", common::text(&broken));
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(stderr.contains("postgres failed to start"), "{stderr}");
    assert!(stderr.contains("this_setting_does_not_exist"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    testenv("down");
}

/// Two starts of one server at once — a killed backup's start command still
/// running when the rerun starts the same server — take turns: both succeed,
/// one server runs, and that server does not keep the start lock (a stop
/// after it returns at once).
#[test]
fn two_starts_of_one_server_at_once_both_succeed() {
    let (dir, port) = private_stack("itbackup-testenv-twice-");
    let testenv = |action: &str| {
        testenv_postgres(&dir, &port, action)
            .env("IT_TESTENV_LOCK_TIMEOUT", "30")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let starts = [testenv("up"), testenv("up")];
    let outputs: Vec<_> = starts
        .into_iter()
        .map(|start| start.wait_with_output().unwrap())
        .collect();
    let stopped = std::time::Instant::now();
    let down = testenv("down").wait_with_output().unwrap();
    for out in &outputs {
        assert!(out.status.success(), "{}", common::text(out));
    }
    assert!(down.status.success(), "{}", common::text(&down));
    assert!(
        stopped.elapsed() < std::time::Duration::from_secs(25),
        "the stop waited for the start lock: the server holds it"
    );
}

/// testenv's start wait (`wait_until` in testenv/lib.sh) against launches
/// whose exec chain is slow: for two seconds the pid names a shell, not the
/// server, as every `cmd &` does for a moment after the fork. Such a launch
/// must be waited for; a launch that dies must fail at once; a pid that never
/// becomes the server must fail after a few checks, not after the whole start
/// timeout.
#[test]
fn testenv_counts_a_server_as_exited_only_when_its_process_is_gone() {
    let dir = tempfile::Builder::new()
        .prefix("itbackup-testenv-wait-")
        .tempdir()
        .unwrap();
    let d = dir.path().display();
    // `launch.sh SECONDS` is a shell for SECONDS, then execs a process whose
    // command line names the marker directory $d/server.
    std::fs::write(
        dir.path().join("launch.sh"),
        "sleep \"$1\"\nexec tail -f /dev/null \"$(dirname \"$0\")/server\"\n",
    )
    .unwrap();
    // The check passes 4 s after the launch, or never; each launch has its own
    // ready file (an earlier launch's timer may still be running).
    let launches = std::cell::Cell::new(0);
    let wait = |launcher: &str, ready: bool| {
        launches.set(launches.get() + 1);
        let ready_file = format!("{d}/ready-{}", launches.get());
        let script = format!(
            "source '{lib}'\n\
             {ready}\n\
             {launcher} </dev/null >/dev/null 2>&1 &\n\
             echo $! >'{d}/pid'\n\
             rc=0; (wait_until demo /dev/null '{d}/pid' '{d}/server' test -e '{ready_file}') || rc=$?\n\
             kill \"$(cat '{d}/pid')\" 2>/dev/null || true\n\
             exit $rc\n",
            lib = common::repo_root().join("testenv/lib.sh").display(),
            ready = if ready { format!("(sleep 4; touch '{ready_file}') >/dev/null 2>&1 &") } else { String::new() },
        );
        let started = std::time::Instant::now();
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        (out, started.elapsed())
    };

    let (slow, _) = wait(&format!("bash '{d}/launch.sh' 2"), true);
    assert!(slow.status.success(), "{}", common::text(&slow));

    let (died, took) = wait("bash -c 'sleep 1; exit 3'", true);
    let stderr = String::from_utf8_lossy(&died.stderr);
    assert!(!died.status.success(), "{}", common::text(&died));
    assert!(
        stderr.contains("demo failed to start: the server process"),
        "{stderr}"
    );
    assert!(stderr.contains("exited"), "{stderr}");
    assert!(took < std::time::Duration::from_secs(4), "{took:?}");

    let (stranger, took) = wait(&format!("bash '{d}/launch.sh' 30"), false);
    let stderr = String::from_utf8_lossy(&stranger.stderr);
    assert!(!stranger.status.success(), "{}", common::text(&stranger));
    assert!(stderr.contains("it is not the server"), "{stderr}");
    assert!(took < std::time::Duration::from_secs(15), "{took:?}");
}
