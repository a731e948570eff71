//! Timeouts: a server that accepts TCP connections and never answers must not
//! hang a run. Every store's backup, an OpenSearch restore and `list --from`
//! an S3 repository fail within a bounded time, with an error that names the
//! service, the step, the timeout and the setting that changes it; and they
//! leave nothing that looks like a complete backup.

use crate::common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A loopback port whose listener accepts every connection and then says
/// nothing, for ever (the connections stay open while the test runs).
fn silent_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    port
}

/// A loopback port whose listener answers every request `404 Not Found`, as
/// another web service on that port, or a proxy without a route to
/// OpenSearch, would.
fn not_found_server() -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&stream);
                // The request head, up to its empty line; a body, if any, is never read.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let _ = (&stream).write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\nNot Found\n",
                );
            });
        }
    });
    port
}

/// What a bounded run did.
struct Bounded {
    code: Option<i32>,
    stderr: String,
    elapsed: Duration,
}

/// Run itbackup, killing it after `limit` (a hang): the test then fails
/// instead of hanging with it.
fn run_bounded(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Bounded {
    let dir = tempfile::tempdir().unwrap();
    let err_path = dir.path().join("stderr");
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("RUST_LOG", "itbackup=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start itbackup");
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Bounded {
        code,
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        elapsed: started.elapsed(),
    }
}

/// The run failed on its own, well before `within`, naming every word of `names`.
fn assert_timed_out(run: &Bounded, within: Duration, names: &[&str]) {
    assert!(
        run.code.is_some(),
        "still running after {:?} (killed): no timeout\n{}",
        run.elapsed,
        run.stderr
    );
    assert_eq!(run.code, Some(exit::UNREACHABLE), "{}", run.stderr);
    assert!(
        run.elapsed < within,
        "took {:?}, more than {within:?}\n{}",
        run.elapsed,
        run.stderr
    );
    let error = run
        .stderr
        .split_once("error: ")
        .map(|(_, e)| e)
        .unwrap_or_else(|| panic!("no error line\n{}", run.stderr));
    for name in names {
        assert!(
            error.contains(name),
            "the error does not name {name:?}:\n{error}"
        );
    }
    assert!(error.contains("hint:"), "no hint:\n{error}");
}

/// No directory under `root` has a manifest.
fn assert_nothing_complete(root: &Path) {
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        assert!(
            !entry.path().join("backup-manifest.json").exists(),
            "{} looks complete after a timeout",
            entry.path().display()
        );
    }
}

const LIMIT: Duration = Duration::from_secs(60);
const WITHIN: Duration = Duration::from_secs(25);

#[test]
fn a_silent_postgres_fails_the_backup_at_connect() {
    let port = silent_server().to_string();
    let root = temp_root();
    let run = run_bounded(
        &[
            "--root",
            root.path().to_str().unwrap(),
            "backup",
            "--services",
            "postgres",
        ],
        &[
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", &port),
            ("IT_POSTGRES_CONNECT_TIMEOUT", "2s"),
        ],
        LIMIT,
    );
    assert_timed_out(
        &run,
        WITHIN,
        &["postgres", "connect", "2 s", "IT_POSTGRES_CONNECT_TIMEOUT"],
    );
    assert_nothing_complete(root.path());
}

#[test]
fn a_silent_opensearch_fails_the_backup_and_the_restore() {
    let port = silent_server();
    let silent = format!("http://127.0.0.1:{port}");
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    let env = [
        ("OPENSEARCH_URL", silent.as_str()),
        ("IT_OPENSEARCH_IDLE_TIMEOUT", "2s"),
    ];
    let run = run_bounded(
        &["--root", root_arg, "backup", "--services", "opensearch"],
        &env,
        LIMIT,
    );
    assert_timed_out(
        &run,
        WITHIN,
        &[
            "opensearch",
            "no answer within 2 s",
            "IT_OPENSEARCH_IDLE_TIMEOUT",
        ],
    );
    assert_nothing_complete(root.path());

    // A real backup of one small index, restored into the silent server.
    let _guard = exclusive(&[Opensearch]);
    let url = required_env("OPENSEARCH_URL");
    let http = reqwest::blocking::Client::new();
    http.delete(format!("{url}/itb-timeout")).send().unwrap();
    http.put(format!("{url}/itb-timeout/_doc/1?refresh=true"))
        .json(&json!({"n": 1}))
        .send()
        .unwrap()
        .error_for_status()
        .unwrap();
    let good = temp_root();
    let good_arg = good.path().to_str().unwrap();
    ok(
        &[
            "--root",
            good_arg,
            "backup",
            "--services",
            "opensearch",
            "--opensearch-method",
            "logical",
            "--indices",
            "itb-timeout",
        ],
        &[],
    );
    http.delete(format!("{url}/itb-timeout")).send().unwrap();
    let run = run_bounded(&["--root", good_arg, "restore", "--yes"], &env, LIMIT);
    assert_timed_out(
        &run,
        WITHIN,
        &[
            "opensearch",
            "no answer within 2 s",
            "IT_OPENSEARCH_IDLE_TIMEOUT",
        ],
    );
}

#[test]
fn a_silent_neo4j_fails_the_backup_within_its_connect_timeout() {
    let port = silent_server();
    let uri = format!("bolt://127.0.0.1:{port}");
    let root = temp_root();
    let run = run_bounded(
        &[
            "--root",
            root.path().to_str().unwrap(),
            "backup",
            "--services",
            "neo4j",
        ],
        &[
            ("NEO4J_URI", uri.as_str()),
            ("IT_NEO4J_CONNECT_TIMEOUT", "2s"),
        ],
        LIMIT,
    );
    // The driver's own give-up time was 20 s; the setting must rule.
    assert_timed_out(
        &run,
        Duration::from_secs(12),
        &["neo4j", "connect", "2 s", "IT_NEO4J_CONNECT_TIMEOUT"],
    );
    assert_nothing_complete(root.path());
}

#[test]
fn a_silent_s3_endpoint_fails_list_from() {
    let port = silent_server();
    let endpoint = format!("http://127.0.0.1:{port}");
    let run = run_bounded(
        &["list", "--from", "s3://itbackup-silent/prefix"],
        &[
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "silent"),
            ("AWS_SECRET_ACCESS_KEY", "silent-secret"),
            ("AWS_ALLOW_HTTP", "true"),
            ("IT_REMOTE_IDLE_TIMEOUT", "2s"),
        ],
        LIMIT,
    );
    assert_timed_out(
        &run,
        WITHIN,
        &[
            "s3://itbackup-silent/prefix",
            "no answer within 2 s",
            "IT_REMOTE_IDLE_TIMEOUT",
        ],
    );
}

#[test]
fn an_address_that_answers_404_is_named_as_not_opensearch() {
    // The prefixed URL is the real server's (itbackup locks it by host and
    // port, whatever the path).
    let _guard = exclusive(&[Opensearch]);
    let port = not_found_server();
    // Another service on the port, with credentials in the URL…
    let elsewhere = format!("http://admin:s3cret-pw@127.0.0.1:{port}");
    // …and the real OpenSearch behind a proxy path it does not have.
    let real = required_env("OPENSEARCH_URL");
    let prefixed = format!("{}/no-such-prefix", real.trim_end_matches('/'));
    for (url, shown) in [
        (elsewhere, format!("http://admin:***@127.0.0.1:{port}")),
        (prefixed.clone(), prefixed),
    ] {
        let root = temp_root();
        let run = run_bounded(
            &[
                "--root",
                root.path().to_str().unwrap(),
                "backup",
                "--services",
                "opensearch",
            ],
            &[("OPENSEARCH_URL", url.as_str())],
            LIMIT,
        );
        assert_eq!(run.code, Some(1), "{url}:\n{}", run.stderr);
        let error = run
            .stderr
            .lines()
            .skip_while(|l| !l.starts_with("error"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            error.contains("opensearch: connect") && error.contains("404"),
            "{url}: the error should name the service, the step and the answer:\n{}",
            run.stderr
        );
        assert!(
            error.contains("does not seem to point at OpenSearch")
                && error.contains("OPENSEARCH_URL"),
            "{url}: the error should say the URL is not OpenSearch and what to check:\n{}",
            run.stderr
        );
        assert!(
            error.contains(&shown),
            "{url}: the error should name the URL as {shown}:\n{}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("s3cret-pw"),
            "the password was shown:\n{}",
            run.stderr
        );
        assert_nothing_complete(root.path());
    }
}
