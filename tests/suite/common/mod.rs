//! Helpers for integration tests: they run the real `itbackup` binary against the
//! real servers started by `testenv/up` (their addresses come from `testenv/env`).
//! A missing server is a failure, never a skip.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use itbackup::manifest::{ArtifactRecord, Manifest, Status, ToolInfo, FORMAT_VERSION};
use itbackup::service::Service;
use jiff::Timestamp;
use sha2::Digest;
use std::process::{Command, Output};

pub mod auth_gate;
pub mod cluster;
mod cmd;
pub mod fixtures;
mod locks;
mod neo4j;
pub mod s3_gate;
mod small_disk;
pub mod writer;

pub use cmd::Cmd;
pub use fixtures::{env_refs, Method, StoreFixture};
pub use locks::*;
pub use neo4j::Neo;
pub use small_disk::SmallDisk;
pub use writer::CrossStoreWriter;

/// A variable `testenv/env` sets; its absence means the tests were not started by `make test`.
pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through `make test` (or `eval \"$(testenv/env)\"` after `testenv/up`)")
    })
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_itbackup")
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `itbackup` with the given arguments and extra environment.
pub fn itbackup(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).env("RUST_LOG", "itbackup=info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run itbackup")
}

pub fn text(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Run itbackup and insist on success.
pub fn ok(args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = itbackup(args, env);
    assert!(
        out.status.success(),
        "itbackup {args:?} failed\n{}",
        text(&out)
    );
    out
}

/// The exit codes scripts rely on (docs/exit-codes.md), written out here as
/// numbers: a test against them fails when a code changes.
pub mod exit {
    pub const FAILURE: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const NOT_FOUND: i32 = 3;
    pub const DAMAGED_BACKUP: i32 = 4;
    pub const VERIFICATION_MISMATCH: i32 = 5;
    pub const LOCKED: i32 = 6;
    pub const UNREACHABLE: i32 = 7;
    pub const AUTHENTICATION: i32 = 8;
    pub const NO_SPACE: i32 = 9;
    pub const STORE_REFUSED: i32 = 10;
    pub const INTERRUPTED: i32 = 11;
}

/// Run itbackup and insist on failure with the given exit code; returns stderr.
pub fn fails(args: &[&str], env: &[(&str, &str)], code: i32) -> String {
    let out = itbackup(args, env);
    assert_eq!(
        out.status.code(),
        Some(code),
        "itbackup {args:?}\n{}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn pg_tool(name: &str) -> String {
    required_env("PGHOST");
    match std::env::var("IT_PG_BIN") {
        Ok(dir) => Path::new(&dir).join(name).to_string_lossy().into_owned(),
        Err(_) => name.to_string(),
    }
}

/// Run SQL through psql in `database`; returns unaligned, tuples-only output.
pub fn psql(database: &str, sql: &str) -> String {
    psql_with(&[], database, sql)
}

/// [`psql`] with `env` over testenv's (another server's `PGPORT`, say).
pub fn psql_with(env: &[(&str, &str)], database: &str, sql: &str) -> String {
    let out = Command::new(pg_tool("psql"))
        .envs(env.iter().copied())
        .args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            database,
            "-c",
            sql,
        ])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql failed on {database}: {sql}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One OpenSearch REST call; the answer's JSON (null when it has none).
pub fn opensearch(
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let url = format!("{}/{}", required_env("OPENSEARCH_URL"), path);
    let mut req = reqwest::blocking::Client::new().request(method, url);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send()
        .unwrap_or_else(|e| panic!("OpenSearch is not answering: {e}"))
        .json()
        .unwrap_or(serde_json::Value::Null)
}

/// A fresh backup root for one test.
pub fn temp_root() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("itbackup-test-")
        .tempdir()
        .expect("temp dir")
}

/// The only backup directory under `root`.
pub fn only_backup(root: &Path) -> PathBuf {
    let dirs: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    assert_eq!(
        dirs.len(),
        1,
        "expected one backup under {}: {dirs:?}",
        root.display()
    );
    dirs[0].clone()
}

/// `backup --services <services>` (plus `extra`) into `root`, which must
/// hold no other backup; the new backup's directory.
pub fn backup_into(root: &Path, services: &str, extra: &[&str], env: &[(&str, &str)]) -> PathBuf {
    extra
        .iter()
        .fold(Cmd::backup(root).services(services), |cmd, arg| {
            cmd.arg(*arg)
        })
        .ok(env);
    only_backup(root)
}

/// The arguments of `restore --path <dir> [--services <services>] --yes`.
pub fn restore_args<'a>(dir: &'a Path, services: Option<&'a str>) -> Vec<&'a str> {
    let mut args = vec!["restore", "--path", dir.to_str().unwrap()];
    if let Some(services) = services {
        args.extend(["--services", services]);
    }
    args.push("--yes");
    args
}

/// Nothing but dot files (the root's lock) under `root`: no backup, not even
/// a partial one, was left there.
pub fn assert_no_backup(root: &Path) {
    let left: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{} holds {left:?}", root.display());
}

/// The manifest of the backup in `dir`, as JSON.
pub fn manifest_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("backup-manifest.json")).unwrap()).unwrap()
}

/// The artifact in `dir` whose name ends with `suffix` (".ndjson.zst" for a
/// logical export).
pub fn artifact_ending(dir: &Path, suffix: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(suffix))
        .unwrap_or_else(|| panic!("no *{suffix} in {}", dir.display()))
}

/// Make the manifest in `dir` vouch for `file` as `service`'s artifact
/// (checksum and size, sealed again), as a forger or a careless operator
/// would after changing it.
pub fn reseal(dir: &Path, service: Service, file: &Path) {
    let mut manifest = Manifest::read_dir(dir).unwrap();
    let digest = itbackup::artifact::digest_file(file).unwrap();
    let record = manifest.artifacts.get_mut(&service).unwrap();
    record.sha256 = digest.sha256;
    record.bytes = digest.bytes;
    manifest.write(dir).unwrap();
}

/// Run itbackup and kill it (SIGKILL, like a crash or an operator's kill -9)
/// as soon as `reached` says it is half-way. Returns false when the run ended
/// before that point, so a test can insist it really interrupted something.
pub fn kill_when(args: &[&str], reached: impl Fn() -> bool) -> bool {
    let mut child = Command::new(bin())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start itbackup");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        if child.try_wait().expect("poll itbackup").is_some() {
            return false;
        }
        if reached() {
            child.kill().expect("kill itbackup");
            child.wait().expect("reap itbackup");
            return true;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "itbackup never reached the point to interrupt"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Run itbackup in a process group of its own and kill the group with
/// SIGKILL after `after` (pg_dump, psql, neo4j-admin and the like die with
/// it, as with an operator's kill -9 of the whole job); true when the run
/// was still going (it was killed).
pub fn kill_group_after(args: &[&str], after: std::time::Duration) -> bool {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(bin())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start itbackup");
    let deadline = std::time::Instant::now() + after;
    while std::time::Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    child.wait().unwrap();
    true
}

/// A complete backup `root/name` started at `started`, holding one small
/// PostgreSQL artifact whose size and checksum match its manifest.
pub fn fake_backup(root: &Path, name: &str, started: Timestamp) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let file = format!("postgres_{name}.tar");
    let content = format!("not really a dump of {name}\n");
    std::fs::write(dir.join(&file), &content).unwrap();
    let started_at = started.to_string();
    let finished_at = (started + jiff::SignedDuration::from_secs(5)).to_string();
    let record = ArtifactRecord {
        file: file.clone(),
        sha256: hex::encode(sha2::Sha256::digest(content.as_bytes())),
        bytes: content.len() as u64,
        method: "pg_dump".into(),
        format: "tar+custom".into(),
        server_version: "15".into(),
        started_at: started_at.clone(),
        finished_at: finished_at.clone(),
        digests: Default::default(),
        counts: BTreeMap::from([("app/public.items".to_string(), 42)]),
        members: vec![],
        details: Default::default(),
        encryption: None,
        position: None,
    };
    Manifest {
        timestamp: name.into(),
        services: BTreeMap::from([(Service::Postgres, file)]),
        format_version: FORMAT_VERSION,
        tool: ToolInfo {
            name: "itbackup".into(),
            version: "0.1.0".into(),
        },
        started_at,
        finished_at,
        status: Status::Complete,
        host: "test".into(),
        artifacts: BTreeMap::from([(Service::Postgres, record)]),
        consistency: None,
        manifest_sha256: None,
    }
    .write(&dir)
    .unwrap();
    dir
}

/// The JSON a `--json` run printed on standard output.
pub fn json_of(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("no JSON on stdout ({e})\n{}", text(output)))
}

/// A repository URL of its own for each test (one testenv bucket, many prefixes).
pub fn repository(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}/{test}-{nanos}", required_env("IT_S3_URL"))
}

/// Run async work of the library (direct object access) from a test.
pub fn block_on<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(work)
}

/// Sets a server setting with ALTER SYSTEM for the length of a test and
/// resets it when dropped, also when the test fails.
pub struct SystemSetting(&'static str);

impl SystemSetting {
    pub fn set(name: &'static str, value: &str) -> SystemSetting {
        psql(
            "postgres",
            &format!("ALTER SYSTEM SET {name} = '{}'", value.replace('\'', "''")),
        );
        psql("postgres", "SELECT pg_reload_conf()");
        SystemSetting(name)
    }
}

impl Drop for SystemSetting {
    /// Never panics (a test that failed may have left the server down; a
    /// panic while unwinding would abort every test of the binary).
    fn drop(&mut self) {
        for sql in [
            format!("ALTER SYSTEM RESET {}", self.0),
            "SELECT pg_reload_conf()".to_string(),
        ] {
            let _ = Command::new(pg_tool("psql"))
                .args(["-X", "-q", "-d", "postgres", "-c", &sql])
                .output();
        }
    }
}

/// pg_stat_archiver's (archived_count, failed_count, last_archived_wal).
pub fn archiver() -> (u64, u64, String) {
    let row = psql("postgres", "SELECT archived_count, failed_count, coalesce(last_archived_wal, '') FROM pg_stat_archiver");
    let mut parts = row.split('|');
    let mut next = || parts.next().unwrap().to_string();
    (next().parse().unwrap(), next().parse().unwrap(), next())
}

/// The testenv PostgreSQL's data directory (`IT_PG_DATA`).
pub fn data_dir() -> PathBuf {
    PathBuf::from(required_env("IT_PG_DATA"))
}

/// Remove the data directories restores kept aside (they are ours, and large).
pub fn remove_kept_data_dirs() {
    let data = data_dir();
    let name = data.file_name().unwrap().to_string_lossy().into_owned();
    for entry in std::fs::read_dir(data.parent().unwrap()).unwrap() {
        let entry = entry.unwrap();
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with(&format!("{name}.itbackup-")) && entry.path().is_dir() {
            std::fs::remove_dir_all(entry.path()).unwrap();
        }
    }
}

pub fn kept_data_dirs() -> usize {
    let data = data_dir();
    let name = data.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir(data.parent().unwrap())
        .unwrap()
        .filter(|e| {
            let e = e.as_ref().unwrap();
            e.path().is_dir()
                && e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{name}.itbackup-"))
        })
        .count()
}

/// SIGKILLs a child (a scheduler) when a failed assertion unwinds past it: a
/// failing test must not leave it running.
pub struct KillOnPanic(pub u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

/// Starts the server again at the end of a test that left it down (a
/// failed restore of a crashed server leaves it down, as it found it).
pub struct ServerBack;

impl Drop for ServerBack {
    fn drop(&mut self) {
        let answers = Command::new(pg_tool("psql"))
            .args(["-X", "-q", "-d", "postgres", "-c", "SELECT 1"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !answers {
            let _ = Command::new("sh")
                .args(["-c", &required_env("IT_PG_START_CMD")])
                .status();
        }
    }
}
