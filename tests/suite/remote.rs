//! Remote repositories and encryption against the real S3 server from
//! `testenv/` (MinIO): all three stores through a repository, plain and
//! sealed with age; wrong or missing keys and tampered objects refused before
//! any store is touched; an interrupted upload that is incomplete until it is
//! run again; prune and status on a repository.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A fresh age key pair in `dir`: (identity file, recipient).
fn keypair(dir: &Path, name: &str) -> (String, String) {
    let file = dir.join(name);
    let out = ok(&["--json", "keygen", "--out", file.to_str().unwrap()], &[]);
    let v = json_of(&out);
    (
        file.to_str().unwrap().to_string(),
        v["recipient"].as_str().unwrap().to_string(),
    )
}

fn remote_list(url: &str) -> Value {
    json_of(&ok(&["--json", "list", "--from", url], &[]))
}

fn drill_through(url: &str, root: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "--root",
        root.to_str().unwrap(),
        "--json",
        "drill",
        "--yes",
        "--scale",
        "2000",
        "--upload",
        url,
    ];
    args.extend_from_slice(extra);
    let out = itbackup(&args, &[]);
    let v = json_of(&out);
    assert!(out.status.success(), "{v:#}\n{}", text(&out));
    assert_eq!(v["ok"], true, "{v:#}");
    for service in ["postgres", "opensearch", "neo4j"] {
        let s = &v["services"][service];
        assert_eq!(s["ok"], true, "{service}: {s:#}");
        assert_eq!(s["expected"], s["restored"], "{service}: {s:#}");
        assert_eq!(s["expected"]["count"], 2000, "{service}: {s:#}");
    }
    v
}

#[test]
fn all_three_stores_through_a_repository_plain_and_encrypted() {
    let _guard = lock(&[Postgres, Opensearch, Neo4j], &[S3]);
    let root = temp_root();

    // Plain: the drill uploads its backup and restores from the repository
    // into wiped stores, then compares counts and digests.
    let url = repository("plain");
    drill_through(&url, &root.path().join("plain"), &[]);
    let listed = remote_list(&url);
    let backups = listed["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 1, "{listed:#}");
    assert_eq!(backups[0]["complete"], true);
    assert_eq!(
        backups[0]["services"],
        serde_json::json!(["opensearch", "neo4j", "postgres"])
    );

    // Sealed with age: the same round trip, the artifacts are `.age` files,
    // the manifest stays readable (list works without a key).
    let keys = temp_root();
    let (identity, recipient) = keypair(keys.path(), "key.txt");
    let url = repository("sealed");
    let v = drill_through(
        &url,
        &root.path().join("sealed"),
        &["--encrypt-to", &recipient, "--identity", &identity],
    );
    let dir = Path::new(v["backup_dir"].as_str().unwrap());
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("backup-manifest.json")).unwrap()).unwrap();
    for (service, record) in manifest["artifacts"].as_object().unwrap() {
        let file = record["file"].as_str().unwrap();
        assert!(file.ends_with(".age"), "{service}: {file}");
        assert_eq!(record["encryption"]["scheme"], "age");
        assert_eq!(record["encryption"]["recipients"][0], recipient.as_str());
        assert_ne!(record["encryption"]["plaintext_sha256"], record["sha256"]);
        // What is on disk is an age file, not a dump.
        let head = std::fs::read(dir.join(file)).unwrap();
        assert!(head.starts_with(b"age-encryption.org/v1\n"), "{service}");
    }
    assert_eq!(remote_list(&url)["backups"][0]["complete"], true);
    ok(
        &[
            "--identity",
            &identity,
            "verify",
            "--from",
            &format!("{url}/{}", manifest["timestamp"].as_str().unwrap()),
        ],
        &[],
    );
}

/// A database of its own with one table and a known number of rows.
fn pg_fixture(database: &str, rows: u32) {
    psql("postgres", &format!("DROP DATABASE IF EXISTS {database}"));
    psql("postgres", &format!("CREATE DATABASE {database}"));
    psql(
        database,
        &format!(
            "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, {rows}) g"
        ),
    );
}

fn pg_rows(database: &str) -> String {
    psql(database, "SELECT count(*) FROM t")
}

fn backup_postgres(root: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "--root",
        root.to_str().unwrap(),
        "--json",
        "backup",
        "--services",
        "postgres",
    ];
    args.extend_from_slice(extra);
    json_of(&ok(&args, &[]))
}

#[test]
fn a_wrong_or_missing_identity_fails_before_any_store_is_touched() {
    let _guard = lock(&[Postgres], &[S3]);
    let root = temp_root();
    let r = root.path().to_str().unwrap();
    let keys = temp_root();
    let (identity, recipient) = keypair(keys.path(), "right.txt");
    let (wrong, _) = keypair(keys.path(), "wrong.txt");
    pg_fixture("itb_remote_keys", 10);
    let url = repository("keys");
    let out = backup_postgres(
        root.path(),
        &["--encrypt-to", &recipient, "--upload", &url, "--no-local"],
    );
    assert_eq!(out["result"]["local"], false, "{out:#}");
    // --no-local: nothing stays under the root but its lock.
    let left: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".itbackup.lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Changed after the backup: a restore that touched the store would undo it.
    psql("itb_remote_keys", "INSERT INTO t VALUES (11, 'late')");
    let err = fails(
        &[
            "--root",
            r,
            "--identity",
            &wrong,
            "restore",
            "--from",
            &url,
            "--yes",
        ],
        &[],
        exit::AUTHENTICATION,
    );
    assert!(err.contains("not one of the keys"), "{err}");
    assert_eq!(pg_rows("itb_remote_keys"), "11");
    let err = fails(
        &["--root", r, "restore", "--from", &url, "--yes"],
        &[],
        exit::USAGE,
    );
    assert!(err.contains("--identity"), "{err}");
    assert_eq!(pg_rows("itb_remote_keys"), "11");
    // A key file that is not a key is a usage error, also before anything.
    let junk = keys.path().join("junk.txt");
    std::fs::write(&junk, "not a key\n").unwrap();
    let err = fails(
        &[
            "--root",
            r,
            "--identity",
            junk.to_str().unwrap(),
            "restore",
            "--from",
            &url,
            "--yes",
        ],
        &[],
        2,
    );
    assert!(err.contains("identity"), "{err}");
    assert_eq!(pg_rows("itb_remote_keys"), "11");

    // The right key restores the backup's state; the staging copy is gone.
    ok(
        &[
            "--root",
            r,
            "--identity",
            &identity,
            "restore",
            "--from",
            &url,
            "--yes",
        ],
        &[],
    );
    assert_eq!(pg_rows("itb_remote_keys"), "10");
    let staged: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".itbackup-staging"))
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
    psql("postgres", "DROP DATABASE itb_remote_keys");
}

#[test]
fn a_tampered_remote_object_is_refused_by_verify_and_restore() {
    let _guard = lock(&[Postgres], &[S3]);
    let root = temp_root();
    let r = root.path().to_str().unwrap();
    pg_fixture("itb_remote_tamper", 10);
    let url = repository("tamper");
    let out = backup_postgres(root.path(), &["--upload", &url]);
    let manifest = &out["result"]["manifest"];
    let name = manifest["timestamp"].as_str().unwrap().to_string();
    let file = manifest["artifacts"]["postgres"]["file"]
        .as_str()
        .unwrap()
        .to_string();
    ok(&["--root", r, "verify", "--from", &url], &[]);

    // One byte flipped in the remote copy, same size: only the checksum tells.
    let local = root.path().join(&name).join(&file);
    let mut bytes = std::fs::read(&local).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    let location = itbackup::remote::Remote::open(&url).unwrap();
    block_on(location.put_object(&name, &file, bytes)).unwrap();

    // Streamed, the flipped byte is met by whichever check reads it first:
    // the archive member's checksum, pg_restore's decoder, or the object's
    // SHA-256 at its end.
    let damaged = |err: &str| err.contains("does not match") || err.contains("is damaged");
    let err = fails(
        &["--root", r, "verify", "--from", &url],
        &[],
        exit::DAMAGED_BACKUP,
    );
    assert!(damaged(&err), "{err}");
    psql("itb_remote_tamper", "INSERT INTO t VALUES (11, 'late')");
    let err = fails(
        &["--root", r, "restore", "--from", &url, "--yes"],
        &[],
        exit::DAMAGED_BACKUP,
    );
    assert!(damaged(&err), "{err}");
    assert_eq!(pg_rows("itb_remote_tamper"), "11");

    // A truncated object is named by its size.
    block_on(location.put_object(&name, &file, b"short".to_vec())).unwrap();
    let err = fails(
        &["--root", r, "verify", "--from", &url],
        &[],
        exit::DAMAGED_BACKUP,
    );
    assert!(err.contains("bytes, the manifest says"), "{err}");
    assert_eq!(pg_rows("itb_remote_tamper"), "11");

    // The local copy is intact: pushing it again repairs the remote one.
    ok(
        &["push", root.path().join(&name).to_str().unwrap(), &url],
        &[],
    );
    ok(&["--root", r, "verify", "--from", &url], &[]);
    psql("postgres", "DROP DATABASE itb_remote_tamper");
}

#[test]
fn an_interrupted_upload_is_incomplete_until_it_is_run_again() {
    let _guard = lock(&[Postgres], &[S3]);
    let root = temp_root();
    let r = root.path().to_str().unwrap();
    // Incompressible rows, so that the upload takes long enough to interrupt.
    psql("postgres", "DROP DATABASE IF EXISTS itb_remote_big");
    psql("postgres", "CREATE DATABASE itb_remote_big");
    psql("itb_remote_big", "CREATE EXTENSION pgcrypto");
    psql(
        "itb_remote_big",
        "CREATE TABLE t AS SELECT g AS id, gen_random_bytes(1024) AS v FROM generate_series(1, 60000) g",
    );
    let out = backup_postgres(root.path(), &[]);
    let name = out["result"]["manifest"]["timestamp"]
        .as_str()
        .unwrap()
        .to_string();
    let file = out["result"]["manifest"]["artifacts"]["postgres"]["file"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = root.path().join(&name);
    let url = repository("interrupted");

    // Killed once the artifact is in the bucket but before the manifest is.
    let data = Path::new(&required_env("IT_S3_DATA")).join(url.trim_start_matches("s3://"));
    let artifact_stored = || data.join(&name).join(&file).exists();
    let killed = kill_when(&["push", dir.to_str().unwrap(), &url], artifact_stored);
    assert!(killed, "the upload finished before it could be interrupted");
    assert!(!data.join(&name).join("backup-manifest.json").exists());

    let listed = remote_list(&url);
    assert_eq!(listed["backups"][0]["name"], name.as_str(), "{listed:#}");
    assert_eq!(listed["backups"][0]["complete"], false, "{listed:#}");
    let err = fails(
        &["--root", r, "restore", "--from", &url, "--yes"],
        &[],
        exit::NOT_FOUND,
    );
    assert!(err.contains("no complete backup"), "{err}");
    let err = fails(
        &[
            "--root",
            r,
            "restore",
            "--from",
            &format!("{url}/{name}"),
            "--yes",
        ],
        &[],
        exit::NOT_FOUND,
    );
    assert!(err.contains("incomplete"), "{err}");

    // Running it again completes it.
    ok(&["push", dir.to_str().unwrap(), &url], &[]);
    assert_eq!(remote_list(&url)["backups"][0]["complete"], true);
    ok(&["--root", r, "verify", "--from", &url], &[]);

    // Pulled to another host's root, it is a complete local backup.
    let elsewhere = temp_root();
    let e = elsewhere.path().to_str().unwrap();
    ok(&["--root", e, "pull", &url], &[]);
    let listed = json_of(&ok(&["--root", e, "--json", "list"], &[]));
    assert_eq!(listed["backups"][0]["complete"], true, "{listed:#}");
    ok(&["--root", e, "verify"], &[]);
    let err = fails(&["--root", e, "pull", &url], &[], 1);
    assert!(err.contains("already holds a complete backup"), "{err}");
    psql("postgres", "DROP DATABASE itb_remote_big");
}

#[test]
fn prune_and_status_work_on_a_repository() {
    // Fake backups under a prefix of its own; no store is involved.
    let _guard = shared(&[S3]);
    let local = temp_root();
    let url = repository("history");
    // Five daily backups, the newest 30 hours old, pushed to the repository.
    for day in 0..5 {
        let started = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(30 + 24 * day);
        let dir = fake_backup(local.path(), &format!("day{day}"), started);
        ok(&["push", dir.to_str().unwrap(), &url], &[]);
    }
    // And an upload that is still running (no manifest yet).
    let partial = fake_backup(local.path(), "running", jiff::Timestamp::now());
    ok(&["push", partial.to_str().unwrap(), &url], &[]);
    let location = itbackup::remote::Remote::open(&url).unwrap();
    block_on(location.delete_object("running", "backup-manifest.json")).unwrap();
    // PostgreSQL's WAL archive beside the backups: neither listed nor pruned.
    let segment = "000000010000000000000001.zst";
    block_on(location.put_object("wal", segment, b"segment".to_vec())).unwrap();

    // Status: the RPO of 24 h is breached, two days is fine.
    let status = |extra: &[&str], code: i32| {
        let mut args = vec![
            "--root",
            local.path().to_str().unwrap(),
            "--json",
            "status",
            "--offline",
            "--from",
            &url,
        ];
        args.extend_from_slice(extra);
        let out = itbackup(&args, &[]);
        assert_eq!(out.status.code(), Some(code), "{}", text(&out));
        json_of(&out)
    };
    let report = status(&["--rpo", "24h"], 1);
    assert_eq!(
        report["services"][0]["newest"]["name"], "day0",
        "{report:#}"
    );
    assert!(report["alarms"].to_string().contains("RPO breached"));
    let report = status(&["--rpo", "2d"], 0);
    assert_eq!(report["services"][0]["verification"]["checked"], "sizes");
    // A full verification downloads the newest backup, re-hashes it and
    // decodes it: these fakes pass the checksum and fail the decode.
    let report = status(&["--rpo", "2d", "--verify"], 1);
    let problem = report["services"][0]["verification"]["problem"].to_string();
    assert!(
        problem.contains("cannot be read as a tar archive"),
        "{report:#}"
    );

    // Prune keeps the two newest complete backups and the running upload.
    let out = ok(
        &["--json", "prune", "--from", &url, "--keep-last", "2"],
        &[],
    );
    let done = json_of(&out);
    assert_eq!(done["removed"], 3, "{done:#}");
    let mut names: Vec<String> = remote_list(&url)["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["day0", "day1", "running"]);

    // Once the unfinished upload is older than the grace period, it goes too;
    // the newest complete backup never does.
    std::thread::sleep(Duration::from_secs(2));
    let done = json_of(&ok(
        &[
            "--json",
            "prune",
            "--from",
            &url,
            "--keep-last",
            "1",
            "--grace",
            "1s",
        ],
        &[],
    ));
    assert_eq!(done["removed"], 2, "{done:#}");
    let names: Vec<String> = remote_list(&url)["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["day0"]);
    assert!(!done["items"].to_string().contains("\"wal\""), "{done:#}");
    assert!(
        block_on(location.holds("wal")).unwrap(),
        "the WAL archive is kept"
    );
}

/// `--limit-upload` and `--limit-download` hold a transfer to its rate: 48
/// MiB at 16 MiB/s take 3 s (± 10 %, beside what the same transfer takes
/// unthrottled). bench/remote.sh measures 1 GiB at 20 MiB/s.
#[test]
fn transfers_keep_to_their_rate_limits() {
    let _guard = shared(&[S3]);
    let root = temp_root();
    let dir = fake_backup(
        root.path(),
        "20250301_120000",
        "2025-03-01T12:00:00Z".parse().unwrap(),
    );
    let file = dir.join("postgres_20250301_120000.tar");
    let data: Vec<u8> = (0..48u32 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, data).unwrap();
    reseal(&dir, itbackup::service::Service::Postgres, &file);
    let dir_arg = dir.to_str().unwrap();
    let timed = |args: &[&str]| {
        let started = std::time::Instant::now();
        ok(args, &[]);
        started.elapsed().as_secs_f64()
    };
    let (fast_url, slow_url) = (repository("unthrottled"), repository("throttled"));
    let fast_push = timed(&["push", dir_arg, &fast_url]);
    let slow_push = timed(&["--limit-upload", "16MiB/s", "push", dir_arg, &slow_url]);
    let within =
        |seconds: f64, unthrottled: f64| seconds >= 3.0 * 0.9 && seconds <= 3.0 * 1.1 + unthrottled;
    assert!(
        within(slow_push, fast_push),
        "push took {slow_push:.2} s (unthrottled {fast_push:.2} s)"
    );

    let into = temp_root();
    let into_arg = into.path().to_str().unwrap();
    let fast_pull = timed(&[
        "--root",
        into_arg,
        "pull",
        &format!("{fast_url}/20250301_120000"),
    ]);
    let again = temp_root();
    let again_arg = again.path().to_str().unwrap();
    let slow_pull = timed(&[
        "--root",
        again_arg,
        "--limit-download",
        "16MiB/s",
        "pull",
        &format!("{slow_url}/20250301_120000"),
    ]);
    assert!(
        within(slow_pull, fast_pull),
        "pull took {slow_pull:.2} s (unthrottled {fast_pull:.2} s)"
    );
}

/// Pull `url/name` into a fresh root: every object checked against the manifest.
fn pulled(url: &str, name: &str) {
    let into = temp_root();
    let root = into.path().to_str().unwrap();
    ok(&["--root", root, "pull", &format!("{url}/{name}")], &[]);
}

/// A push run again after an interruption sends only what is not in the
/// repository intact: the artifact an interrupted push completed is read
/// back, found equal and kept; one that differs (damaged, or another backup
/// of that name) is sent again.
#[test]
fn a_push_run_again_sends_only_what_is_not_there_intact() {
    let _guard = shared(&[S3]);
    let root = temp_root();
    let name = "20250302_120000";
    let dir = fake_backup(root.path(), name, "2025-03-02T12:00:00Z".parse().unwrap());
    let file = format!("postgres_{name}.tar");
    let data: Vec<u8> = (0..4u32 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.join(&file), &data).unwrap();
    reseal(&dir, itbackup::service::Service::Postgres, &dir.join(&file));
    let url = repository("resume");
    let dir_arg = dir.to_str().unwrap();
    let push = || json_of(&ok(&["--json", "push", dir_arg, &url], &[]))["result"].clone();
    let first = push();
    assert_eq!(first["reused"], 0, "{first:#}");
    assert!(first["uploaded_bytes"].as_u64().unwrap() > data.len() as u64);

    // Killed after the artifact, before the manifest: incomplete until run again.
    let location = itbackup::remote::Remote::open(&url).unwrap();
    block_on(location.delete_object(name, "backup-manifest.json")).unwrap();
    let again = push();
    assert_eq!(again["reused"], 1, "{again:#}");
    assert!(
        again["uploaded_bytes"].as_u64().unwrap() < 4096,
        "{again:#}"
    );
    pulled(&url, name);

    // The same size, other bytes: sent again, and the copy verifies.
    let mut other = data.clone();
    other[1000] ^= 0xff;
    block_on(location.put_object(name, &file, other)).unwrap();
    let repaired = push();
    assert_eq!(repaired["reused"], 0, "{repaired:#}");
    assert!(repaired["uploaded_bytes"].as_u64().unwrap() > data.len() as u64);
    pulled(&url, name);
}

/// A push killed half-way through a large artifact resumes its multipart
/// upload where it stopped: the parts already in the repository are not
/// sent again, and the object completed from them verifies.
#[test]
fn a_push_killed_inside_an_artifact_resumes_its_upload() {
    let _guard = shared(&[S3]);
    let root = temp_root();
    let name = "20250304_120000";
    let dir = big_fake_backup(root.path(), name, 48);
    let file = format!("postgres_{name}.tar");
    let size: u32 = 48 * 1024 * 1024;
    let url = repository("resume-parts");
    let dir_arg = dir.to_str().unwrap();

    // 8 MiB parts at 16 MiB/s: killed once three of the six are stored.
    let state = dir.join(format!(".itbackup-upload-{file}.json"));
    let parts_stored = || {
        std::fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| v["parts"].as_object().is_some_and(|p| p.len() >= 3))
    };
    let args = ["--limit-upload", "16MiB/s", "push", dir_arg, &url];
    assert!(
        kill_when(&args, parts_stored),
        "the push finished before it could be interrupted"
    );
    assert_nothing_complete(&url);

    let again = json_of(&ok(&["--json", "push", dir_arg, &url], &[]))["result"].clone();
    let sent = again["uploaded_bytes"].as_u64().unwrap();
    assert!(
        sent < u64::from(size) * 6 / 10,
        "the resumed push sent {sent} of {size} bytes: {again:#}"
    );
    assert!(!state.exists(), "the upload's state outlived it");
    pulled(&url, name);
}

/// No backup in the repository at `url` looks complete (an unfinished
/// multipart upload shows no object at all).
fn assert_nothing_complete(url: &str) {
    let listed = remote_list(url);
    let backups = listed["backups"].as_array().unwrap();
    assert!(backups.iter().all(|b| b["complete"] != true), "{listed:#}");
}

/// A fake backup of one `mib` MiB artifact, for the upload tests.
fn big_fake_backup(root: &Path, name: &str, mib: u32) -> std::path::PathBuf {
    let at = format!("{}-{}-{}T12:00:00Z", &name[..4], &name[4..6], &name[6..8]);
    let dir = fake_backup(root, name, at.parse().unwrap());
    let file = dir.join(format!("postgres_{name}.tar"));
    let data: Vec<u8> = (0..mib * 1024 * 1024)
        .map(|i| (i.wrapping_mul(7919) % 251) as u8)
        .collect();
    std::fs::write(&file, &data).unwrap();
    reseal(&dir, itbackup::service::Service::Postgres, &file);
    dir
}

/// Starts MinIO again at the end of a test that stopped it.
struct S3Back;

impl Drop for S3Back {
    fn drop(&mut self) {
        let _ = std::process::Command::new("sh")
            .args(["-c", &required_env("IT_S3_START_CMD")])
            .status();
    }
}

/// The repository going away in the middle of an upload: a clear error
/// within the remote bounds, no backup that looks complete, and the same
/// push completes it once the repository is back.
#[test]
fn a_repository_that_goes_away_mid_upload_fails_clearly_and_the_rerun_completes() {
    let _guard = exclusive(&[S3]);
    let _back = S3Back;
    let root = temp_root();
    let name = "20250305_120000";
    let dir = big_fake_backup(root.path(), name, 48);
    let url = repository("unreachable");
    let state = dir.join(format!(".itbackup-upload-postgres_{name}.tar.json"));
    let push = std::process::Command::new(bin())
        .args([
            "--limit-upload",
            "16MiB/s",
            "push",
            dir.to_str().unwrap(),
            &url,
        ])
        .env("IT_REMOTE_CONNECT_TIMEOUT", "2s")
        .env("IT_REMOTE_IDLE_TIMEOUT", "5s")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !state.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never began"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = std::time::Instant::now();
    let status = std::process::Command::new("sh")
        .args(["-c", &required_env("IT_S3_STOP_CMD")])
        .status()
        .unwrap();
    assert!(status.success(), "cannot stop the testenv S3 server");
    let out = push.wait_with_output().unwrap();
    let waited = stopped.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(exit::UNREACHABLE), "{err}");
    assert!(
        err.contains(&url),
        "the error should name the repository: {err}"
    );
    assert!(
        waited < Duration::from_secs(30),
        "the push took {waited:?} to give up"
    );

    drop(_back);
    assert_nothing_complete(&url);
    ok(&["push", dir.to_str().unwrap(), &url], &[]);
    pulled(&url, name);
}

/// Credentials that expire during a push: the repository's answer is told
/// as such (exit 8, what to do), nothing looks complete, and a push with
/// renewed credentials finishes the upload where it stopped.
#[test]
fn credentials_that_expire_mid_upload_are_told_and_the_push_resumes() {
    let _guard = shared(&[S3]);
    let root = temp_root();
    let name = "20250306_120000";
    let dir = big_fake_backup(root.path(), name, 48);
    let url = repository("expired");
    let gate = s3_gate::expiring_s3(20 * 1024 * 1024);
    let gated = [
        ("AWS_ENDPOINT_URL", gate.url.as_str()),
        ("AWS_ENDPOINT", gate.url.as_str()),
    ];
    // Paced, so that the first parts have landed when the cut comes (in the third).
    let err = fails(
        &[
            "--limit-upload",
            "16MiB/s",
            "push",
            dir.to_str().unwrap(),
            &url,
        ],
        &gated,
        exit::AUTHENTICATION,
    );
    assert!(err.contains("credentials expired"), "{err}");
    assert_nothing_complete(&url);

    let again =
        json_of(&ok(&["--json", "push", dir.to_str().unwrap(), &url], &[]))["result"].clone();
    let sent = again["uploaded_bytes"].as_u64().unwrap();
    // Two of the six 8 MiB parts were in the repository: four are sent.
    assert!(
        sent < 34 * 1024 * 1024,
        "the renewed push sent {sent} bytes again: {again:#}"
    );
    pulled(&url, name);
}

/// A streaming backup whose manifest cannot be uploaded (the credentials
/// expire after the artifacts went up) leaves nothing that looks complete,
/// and the root holds no staging directory a later push would trip over
/// (its artifacts are not there to push).
#[test]
fn a_streaming_backup_that_fails_at_its_manifest_leaves_nothing() {
    let _guard = lock(&[Postgres], &[S3]);
    let root = temp_root();
    let url = repository("stream-fails");
    pg_fixture("itb_stream_fails", 10);
    let gate = s3_gate::expiring_s3_at("PUT", "/backup-manifest.json ");
    let gated = [
        ("AWS_ENDPOINT_URL", gate.url.as_str()),
        ("AWS_ENDPOINT", gate.url.as_str()),
    ];
    let r = root.path().to_str().unwrap();
    let err = fails(
        &[
            "--root",
            r,
            "backup",
            "--services",
            "postgres",
            "--upload",
            &url,
            "--no-local",
        ],
        &gated,
        exit::AUTHENTICATION,
    );
    assert!(err.contains("credentials expired"), "{err}");
    // The uploaded artifact's deletion met the same expired credentials:
    // it stays, without a manifest (prune's to remove), never complete.
    assert_nothing_complete(&url);
    let left: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".itbackup.lock")
        .collect();
    assert!(left.is_empty(), "left under the root: {left:?}");
    psql("postgres", "DROP DATABASE itb_stream_fails");
}

/// A pull killed half-way is resumed by the next one into the same place:
/// the bytes it kept are hashed and the rest fetched from where it stopped
/// (a ranged GET), the whole checked against the manifest. A kept part that
/// is not the object's beginning is thrown away and fetched whole.
#[test]
fn a_killed_pull_resumes_where_it_stopped() {
    let _guard = shared(&[S3]);
    let root = temp_root();
    let name = "20250303_120000";
    let dir = fake_backup(root.path(), name, "2025-03-03T12:00:00Z".parse().unwrap());
    let file = format!("postgres_{name}.tar");
    let data: Vec<u8> = (0..32u32 * 1024 * 1024).map(|i| (i % 241) as u8).collect();
    std::fs::write(dir.join(&file), &data).unwrap();
    reseal(&dir, itbackup::service::Service::Postgres, &dir.join(&file));
    let url = repository("pull-resume");
    ok(&["push", dir.to_str().unwrap(), &url], &[]);

    let into = temp_root();
    let into_arg = into.path().to_str().unwrap();
    let source = format!("{url}/{name}");
    // 8 MiB/s: killed after about half of the 32 MiB.
    let slow = [
        "--root",
        into_arg,
        "--limit-download",
        "8MiB/s",
        "pull",
        &source,
    ];
    assert!(
        kill_group_after(&slow, Duration::from_secs(2)),
        "the pull ended before it was killed"
    );
    let partial = into.path().join(name).join(format!("{file}.partial"));
    let kept = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(kept > 4 << 20 && kept < 32 << 20, "kept {kept} bytes");

    let pull = |args: &[&str]| json_of(&ok(args, &[]))["result"].clone();
    let resumed = pull(&["--root", into_arg, "--json", "pull", &source]);
    let downloaded = resumed["downloaded_bytes"].as_u64().unwrap();
    assert_eq!(downloaded, data.len() as u64 - kept, "{resumed:#}");
    assert_eq!(
        std::fs::read(into.path().join(name).join(&file)).unwrap(),
        data
    );
    assert!(!partial.exists());

    // A kept part of something else: thrown away, the object fetched whole.
    let other = temp_root();
    let other_dir = other.path().join(name);
    std::fs::create_dir_all(&other_dir).unwrap();
    std::fs::write(
        other_dir.join(format!("{file}.partial")),
        vec![7u8; 1 << 20],
    )
    .unwrap();
    let other_arg = other.path().to_str().unwrap();
    let whole = pull(&["--root", other_arg, "--json", "pull", &source]);
    assert_eq!(whole["downloaded_bytes"], data.len() as u64, "{whole:#}");
    assert_eq!(std::fs::read(other_dir.join(&file)).unwrap(), data);
}
