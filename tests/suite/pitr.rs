//! PostgreSQL physical backups and point-in-time restore on the real server:
//! the server archives through `wal push` while a table receives rows; a base
//! backup is taken; a time T is noted between two batches; the server is
//! killed (-9); `restore --until latest` brings back every archived row and
//! `restore --until T` exactly those committed up to T — with a local root
//! and with the testenv S3 repository, plain and encrypted. Then the bad
//! cases, each refused with the server and its data as they were.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The server's user: archive_command and restore_command run as it.
fn give_to_server(path: &Path) {
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(data_dir()).unwrap());
    std::os::unix::fs::chown(path, Some(owner), None).unwrap();
}

/// Inserts a row into `pitr_ticks` every few milliseconds, each its own
/// transaction, until dropped: the table that "receives rows continuously".
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start() -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut child = Command::new(pg_tool("psql"))
                .args(["-X", "-q", "-d", "postgres"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            while !flag.load(Ordering::Relaxed) {
                if writeln!(
                    stdin,
                    "INSERT INTO pitr_ticks DEFAULT VALUES; SELECT pg_sleep(0.01);"
                )
                .is_err()
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            drop(stdin);
            let _ = child.wait();
        });
        Ticker {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Five commits of 100 rows each, ids from `first`.
fn batch(first: u32) {
    for k in 0..5 {
        let from = first + k * 100;
        psql(
            "postgres",
            &format!(
                "INSERT INTO pitr_rows (id) SELECT g FROM generate_series({from}, {}) g",
                from + 99
            ),
        );
    }
}

/// Close the current segment and wait until the server has archived it.
fn archive_now() {
    let segment = psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, failed, last) = archiver();
        if last >= segment {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{segment} not archived within 60 s (last archived {last}, {failed} failures)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kill the postmaster with SIGKILL and wait until it is gone.
fn crash_server() {
    let pid: i32 = std::fs::read_to_string(data_dir().join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "postmaster {pid} survived kill -9"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its backends notice the postmaster is gone and exit.
    std::thread::sleep(Duration::from_millis(500));
}

fn rows() -> (u64, u64) {
    let row = psql(
        "postgres",
        "SELECT count(*), coalesce(max(id), 0) FROM pitr_rows",
    );
    let (count, max) = row.split_once('|').unwrap();
    (count.parse().unwrap(), max.parse().unwrap())
}

/// Where the archive and the backups go: a local root, or the S3 repository.
struct Setup {
    root: tempfile::TempDir,
    url: Option<String>,
    keys: Option<(String, String)>,
    _work: tempfile::TempDir,
}

impl Setup {
    fn new(remote: bool, encrypted: bool) -> Setup {
        let root = temp_root();
        give_to_server(root.path());
        let work = temp_root();
        let keys = encrypted.then(|| {
            let path = work.path().join("key.txt");
            let out = json_of(&ok(&["--json", "keygen", "--out", s(&path)], &[]));
            (
                s(&path).to_string(),
                out["recipient"].as_str().unwrap().to_string(),
            )
        });
        Setup {
            root,
            url: remote.then(|| repository("pitr")),
            keys,
            _work: work,
        }
    }

    fn archive_command(&self) -> String {
        let mut command = String::new();
        if self.url.is_some() {
            // The server's environment has no repository credentials.
            for name in [
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_REGION",
                "AWS_ENDPOINT_URL",
                "AWS_ALLOW_HTTP",
            ] {
                command.push_str(&format!("{name}={} ", required_env(name)));
            }
        }
        command.push_str(&format!(
            "{} wal push --root {}",
            bin(),
            s(self.root.path())
        ));
        if let Some(url) = &self.url {
            command.push_str(&format!(" --upload {url} --no-local"));
        }
        if let Some((_, recipient)) = &self.keys {
            command.push_str(&format!(" --encrypt-to {recipient}"));
        }
        command + " %p"
    }

    fn backup(&self) {
        let mut cmd = Cmd::backup(self.root.path())
            .services("postgres")
            .arg("--postgres-method")
            .arg("physical");
        if let Some(url) = &self.url {
            cmd = cmd.arg("--upload").arg(url.as_str());
        }
        if let Some((_, recipient)) = &self.keys {
            cmd = cmd.arg("--encrypt-to").arg(recipient.as_str());
        }
        cmd.ok(&[]);
    }

    fn restore(&self, until: &str) -> Cmd {
        let mut cmd = Cmd::restore(self.root.path())
            .services("postgres")
            .yes()
            .arg("--until")
            .arg(until);
        if let Some(url) = &self.url {
            cmd = cmd.arg("--from").arg(url.as_str());
        }
        if let Some((identity, _)) = &self.keys {
            cmd = cmd.arg("--identity").arg(identity.as_str());
        }
        cmd
    }
}

fn round_trip(remote: bool, encrypted: bool) {
    let _guard = lock(&[Postgres], if remote { &[S3] } else { &[] });
    let setup = Setup::new(remote, encrypted);
    let _archive = SystemSetting::set("archive_command", &setup.archive_command());
    // Dropped first: the setting is reset on a server that answers.
    let _server = ServerBack;
    psql(
        "postgres",
        "DROP TABLE IF EXISTS pitr_rows, pitr_ticks; \
         CREATE TABLE pitr_rows (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp()); \
         CREATE TABLE pitr_ticks (n serial, at timestamptz DEFAULT clock_timestamp())",
    );
    let ticker = Ticker::start();
    setup.backup();
    batch(1);
    // T: after the first batch's last commit, before the second's first.
    std::thread::sleep(Duration::from_millis(300));
    let t = psql(
        "postgres",
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    std::thread::sleep(Duration::from_millis(300));
    batch(501);
    ticker.finish();
    let ticks = psql("postgres", "SELECT count(*) FROM pitr_ticks");
    archive_now();
    crash_server();

    // Everything archived: both batches and every tick.
    setup.restore("latest").ok(&[]);
    assert_eq!(rows(), (1000, 1000));
    assert_eq!(psql("postgres", "SELECT count(*) FROM pitr_ticks"), ticks);
    assert!(
        psql("postgres", "SELECT pg_is_in_recovery()") == "f",
        "the server did not promote"
    );

    // Back to T, from the running server (stopped by IT_PG_STOP_CMD): the
    // first batch, no row of the second, no tick after T.
    setup.restore(&t).ok(&[]);
    assert_eq!(rows(), (500, 500), "--until {t}");
    let late = psql(
        "postgres",
        &format!("SELECT count(*) FROM pitr_ticks WHERE at > '{t}'"),
    );
    assert_eq!(late, "0", "ticks after {t} survived");
    let early: u64 = psql("postgres", "SELECT count(*) FROM pitr_ticks")
        .parse()
        .unwrap();
    assert!(early > 0, "no tick before {t}");
    psql("postgres", "DROP TABLE pitr_rows, pitr_ticks");
    remove_kept_data_dirs();
}

#[test]
fn local_root_restores_to_latest_and_to_a_time() {
    round_trip(false, false);
}

#[test]
fn local_root_encrypted_restores_to_latest_and_to_a_time() {
    round_trip(false, true);
}

#[test]
fn repository_restores_to_latest_and_to_a_time() {
    round_trip(true, false);
}

#[test]
fn repository_encrypted_restores_to_latest_and_to_a_time() {
    round_trip(true, true);
}

/// A local root the server archives its WAL into, an empty `pitr_rows`
/// table and a physical backup: where the bad-case and killed-run tests
/// start. Fields drop in order: the server is up again before the archive
/// setting is reset.
struct Archiving {
    _server: ServerBack,
    _archive: SystemSetting,
    setup: Setup,
}

impl Archiving {
    fn start() -> Archiving {
        let setup = Setup::new(false, false);
        let archive = SystemSetting::set("archive_command", &setup.archive_command());
        psql(
            "postgres",
            "DROP TABLE IF EXISTS pitr_rows; \
             CREATE TABLE pitr_rows (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())",
        );
        setup.backup();
        Archiving {
            _server: ServerBack,
            _archive: archive,
            setup,
        }
    }
}

/// The archived WAL segments of `root` (names), oldest first.
fn archived_segments(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("wal"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".json")?.to_string();
            (stem.len() == 24).then_some(stem)
        })
        .collect();
    names.sort();
    names
}

#[test]
fn a_restore_that_cannot_succeed_changes_nothing() {
    let _guard = exclusive(&[Postgres]);
    let archiving = Archiving::start();
    let setup = &archiving.setup;
    for first in [1, 501, 1001] {
        batch(first);
        archive_now();
    }
    let before = rows();
    let pid = std::fs::read_to_string(data_dir().join("postmaster.pid")).unwrap();
    let unchanged = |what: &str| {
        assert_eq!(rows(), before, "{what}: the data changed");
        assert_eq!(
            std::fs::read_to_string(data_dir().join("postmaster.pid")).unwrap(),
            pid,
            "{what}: the server was restarted"
        );
        assert_eq!(
            kept_data_dirs(),
            0,
            "{what}: a data directory was set aside"
        );
    };

    // A segment missing from the middle of the chain is named.
    let segments = archived_segments(setup.root.path());
    let missing = &segments[segments.len() - 2];
    let wal = setup.root.path().join("wal");
    let aside = setup.root.path().join("aside");
    std::fs::create_dir(&aside).unwrap();
    for ext in ["json", "zst"] {
        std::fs::rename(wal.join(format!("{missing}.{ext}")), aside.join(ext)).unwrap();
    }
    let err = setup.restore("latest").fails(&[], exit::NOT_FOUND);
    assert!(
        err.contains(missing.as_str()) && err.contains("missing"),
        "{err}"
    );
    unchanged("a missing segment");
    for ext in ["json", "zst"] {
        std::fs::rename(aside.join(ext), wal.join(format!("{missing}.{ext}"))).unwrap();
    }

    // A damaged one is refused before the server is stopped.
    let stored = wal.join(format!("{missing}.zst"));
    let original = std::fs::read(&stored).unwrap();
    let mut damaged = original.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x55;
    std::fs::write(&stored, &damaged).unwrap();
    let err = setup.restore("latest").fails(&[], exit::DAMAGED_BACKUP);
    assert!(err.contains(missing.as_str()), "{err}");
    unchanged("a damaged segment");
    std::fs::write(&stored, &original).unwrap();

    // A target before the oldest base backup.
    let err = setup
        .restore("2001-01-01T00:00:00Z")
        .fails(&[], exit::NOT_FOUND);
    assert!(err.contains("before the oldest base backup"), "{err}");
    unchanged("a target before every base backup");

    // IT_PG_DATA that is not a data directory.
    let elsewhere = temp_root();
    std::fs::write(elsewhere.path().join("notes.txt"), "not a cluster").unwrap();
    let out = setup
        .restore("latest")
        .run(&[("IT_PG_DATA", s(elsewhere.path()))]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("IT_PG_DATA"), "{}", text(&out));
    unchanged("a wrong IT_PG_DATA");
    assert!(elsewhere.path().join("notes.txt").exists());

    // Another cluster's data directory: its system identifier differs.
    let other = temp_root();
    give_to_server(other.path());
    let other_data = other.path().join("data");
    let owner = Command::new("stat")
        .args(["-c", "%U", s(&data_dir())])
        .output()
        .unwrap();
    let user = String::from_utf8_lossy(&owner.stdout).trim().to_string();
    let initdb = Command::new("runuser")
        .args([
            "-u",
            &user,
            "--",
            &pg_tool("initdb"),
            "-D",
            s(&other_data),
            "-A",
            "trust",
        ])
        .output()
        .unwrap();
    assert!(
        initdb.status.success(),
        "{}",
        String::from_utf8_lossy(&initdb.stderr)
    );
    let err = setup
        .restore("latest")
        .fails(&[("IT_PG_DATA", s(&other_data))], exit::USAGE);
    assert!(err.contains("system identifier"), "{err}");
    unchanged("another cluster");
    assert!(other_data.join("PG_VERSION").exists());

    // A stop command that fails: the server keeps running, nothing changes.
    let err = setup.restore("latest").fails(
        &[("IT_PG_STOP_CMD", "echo cannot stop >&2; exit 1")],
        exit::STORE_REFUSED,
    );
    assert!(err.contains("cannot stop"), "{err}");
    unchanged("a failing stop command");

    psql("postgres", "DROP TABLE pitr_rows");
}

/// Whether `<data><suffix>` exists beside the data directory (a prefix
/// when `suffix` ends with `*`).
fn beside_data(suffix: &str) -> bool {
    let data = data_dir();
    let name = format!(
        "{}{}",
        data.file_name().unwrap().to_string_lossy(),
        suffix.trim_end_matches('*')
    );
    std::fs::read_dir(data.parent().unwrap()).unwrap().any(|e| {
        let file = e.unwrap().file_name().to_string_lossy().into_owned();
        if suffix.ends_with('*') {
            file.starts_with(&name)
        } else {
            file == name
        }
    })
}

#[test]
fn a_restore_killed_midway_is_undone_by_the_next_run() {
    let _guard = exclusive(&[Postgres]);
    let archiving = Archiving::start();
    let setup = &archiving.setup;
    batch(1);
    archive_now();
    let before = rows();
    let restore = setup.restore("latest");
    // The next run that takes the server's lock (a backup here) undoes what
    // the killed one left, then does its own work.
    let next_run = || {
        Cmd::backup(setup.root.path()).services("postgres").ok(&[]);
        assert_eq!(rows(), before);
        assert!(!beside_data(".itbackup-restoring"), "the marker stays");
        assert!(!beside_data(".itbackup-new"), "the unfinished copy stays");
    };

    // 1. Killed while it writes the new data directory beside the live one
    //    (the server still running): only that copy goes.
    let killed = kill_when(&restore.args(), || {
        beside_data(".itbackup-new") && !beside_data(".itbackup-restoring")
    });
    assert!(killed, "the restore ended before it wrote its copy");
    next_run();
    assert_eq!(kept_data_dirs(), 0);

    // 2. Killed after its marker, before the data directory was renamed
    //    aside (while the server is being stopped): the directory stays as it
    //    is and the server is started again.
    let killed = kill_when(&restore.args(), || {
        beside_data(".itbackup-restoring") && !beside_data(".itbackup-old-*")
    });
    assert!(killed, "the restore ended before it could be killed");
    next_run();
    assert_eq!(kept_data_dirs(), 0, "nothing was replaced, nothing is kept");

    // 3. Killed once the new directory has taken the live one's name (while
    //    the server starts and recovers): the old one is put back.
    let killed = kill_when(&restore.args(), || beside_data(".itbackup-old-*"));
    assert!(killed, "the restore ended before it could be killed");
    next_run();
    assert_eq!(
        kept_data_dirs(),
        1,
        "the interrupted attempt is kept aside for inspection"
    );
    psql("postgres", "DROP TABLE pitr_rows");
    remove_kept_data_dirs();
}

/// The name of the segment holding `lsn` (`X/Y`) on `timeline` (16 MiB segments).
fn segment_of(timeline: u64, lsn: &str) -> String {
    let (high, low) = lsn.split_once('/').unwrap();
    let low = u64::from_str_radix(low, 16).unwrap();
    format!(
        "{timeline:08X}{:08X}{:08X}",
        u64::from_str_radix(high, 16).unwrap(),
        low >> 24
    )
}

/// `list` shows how far each base backup reaches in the archive, `verify`
/// re-hashes the chain after it (and names a damaged segment), and `prune`
/// removes the archived WAL older than the oldest kept base backup, never
/// what a kept one needs.
#[test]
fn list_verify_and_prune_follow_the_wal_archive() {
    let _guard = exclusive(&[Postgres]);
    let archiving = Archiving::start();
    let root = archiving.setup.root.path();
    batch(1);
    archive_now();
    archiving.setup.backup();
    batch(501);
    archive_now();
    let newest = archived_segments(root).last().unwrap().clone();

    let listed = json_of(&ok(&["--json", "list", "--root", s(root)], &[]));
    let backups = listed["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 2, "{listed:#}");
    for backup in backups {
        let wal = &backup["wal"];
        assert_eq!(wal["last_segment"], newest.as_str(), "{backup:#}");
        assert!(wal["problem"].is_null(), "{backup:#}");
        assert!(wal["segments"].as_u64().unwrap() >= 1, "{backup:#}");
    }
    assert!(
        backups[0]["wal"]["segments"].as_u64() > backups[1]["wal"]["segments"].as_u64(),
        "the older backup needs more of the archive: {listed:#}"
    );

    let verified = json_of(&ok(&["--json", "verify", "--root", s(root)], &[]));
    assert_eq!(
        verified["wal"]["last_segment"],
        newest.as_str(),
        "{verified:#}"
    );

    // A damaged segment after the newest backup: verify names it.
    let stored = root.join("wal").join(format!("{newest}.zst"));
    let good = std::fs::read(&stored).unwrap();
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0xff;
    std::fs::write(&stored, &bad).unwrap();
    let err = fails(&["verify", "--root", s(root)], &[], exit::DAMAGED_BACKUP);
    assert!(err.contains(&newest), "{err}");
    std::fs::write(&stored, &good).unwrap();

    let kept_start = {
        let dir = backups[1]["path"].as_str().unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(Path::new(dir).join("backup-manifest.json")).unwrap(),
        )
        .unwrap();
        let physical = &manifest["artifacts"]["postgres"]["details"]["physical"];
        segment_of(
            physical["timeline"].as_u64().unwrap(),
            physical["start_lsn"].as_str().unwrap(),
        )
    };
    // A gap between the two backups (the segment the first batch filled):
    // list shows the older backup's chain broken there, the newer one whole.
    let segments = archived_segments(root);
    let at = segments.iter().position(|s| *s == kept_start).unwrap();
    let gap = &segments[at - 1];
    let record = root.join("wal").join(format!("{gap}.json"));
    let aside = root.join(format!("{gap}.json.aside"));
    std::fs::rename(&record, &aside).unwrap();
    let listed = json_of(&ok(&["--json", "list", "--root", s(root)], &[]));
    let problem = listed["backups"][0]["wal"]["problem"]
        .as_str()
        .unwrap_or_default();
    assert!(problem.contains(gap.as_str()), "{listed:#}");
    assert!(
        listed["backups"][1]["wal"]["problem"].is_null(),
        "{listed:#}"
    );
    std::fs::rename(&aside, &record).unwrap();

    // prune --keep-last 1: the older backup goes, and with it the WAL
    // before the kept one's first segment; the kept one still verifies.
    let before = archived_segments(root);
    assert!(before[0] < kept_start, "nothing to prune: {before:?}");
    let planned = json_of(&ok(
        &[
            "--json",
            "prune",
            "--root",
            s(root),
            "--keep-last",
            "1",
            "--dry-run",
        ],
        &[],
    ));
    let would = planned["wal"]["removed_files"].as_u64().unwrap();
    assert!(would > 0, "{planned:#}");
    assert_eq!(archived_segments(root), before, "a dry run removed WAL");
    let pruned = json_of(&ok(
        &["--json", "prune", "--root", s(root), "--keep-last", "1"],
        &[],
    ));
    assert_eq!(
        pruned["wal"]["keep_from"],
        kept_start.as_str(),
        "{pruned:#}"
    );
    assert_eq!(pruned["wal"]["removed_files"].as_u64(), Some(would));
    let after = archived_segments(root);
    assert_eq!(after.first(), Some(&kept_start), "{after:?}");
    assert_eq!(after.last(), Some(&newest));
    let verified = json_of(&ok(&["--json", "verify", "--root", s(root)], &[]));
    assert_eq!(
        verified["wal"]["last_segment"],
        newest.as_str(),
        "{verified:#}"
    );
    // Nothing more to remove while the same backup is kept.
    let again = json_of(&ok(
        &["--json", "prune", "--root", s(root), "--keep-last", "1"],
        &[],
    ));
    assert_eq!(again["wal"]["removed_files"], 0, "{again:#}");
    psql("postgres", "DROP TABLE pitr_rows");
}

/// The recovery drill on the physical method: the whole cluster restored
/// from a base backup, the drill data found again, the RTO measured.
#[test]
fn the_drill_runs_on_the_physical_method() {
    let _guard = exclusive(&[Postgres]);
    let _server = ServerBack;
    let root = temp_root();
    let out = ok(
        &[
            "--json",
            "drill",
            "--root",
            s(root.path()),
            "--services",
            "postgres",
            "--postgres-method",
            "physical",
            "--scale",
            "500",
            "--yes",
        ],
        &[],
    );
    let v = json_of(&out);
    assert_eq!(v["ok"], true, "{v:#}");
    let postgres = &v["services"]["postgres"];
    assert_eq!(postgres["method"], "pg_basebackup", "{v:#}");
    assert_eq!(postgres["expected"], postgres["restored"], "{v:#}");
    assert_eq!(v["postgres_rows"], 500, "{v:#}");
    assert!(v["rto_seconds"].as_f64().unwrap() > 0.0, "{v:#}");
    assert_eq!(v["rto_ok"], true, "{v:#}");
    remove_kept_data_dirs();
}

/// A time target whose segment was archived late: the segment holding the
/// last commit before T is archived only after T (a slow archiver), the
/// first commit after T is in the next one. Recovery must be given that
/// next segment to find where to stop; a staged (sealed) archive once held
/// only up to the first segment archived after T, and the recovery ended
/// "before the configured recovery target was reached".
#[test]
fn a_time_target_whose_segment_was_archived_late_is_reached() {
    let _guard = exclusive(&[Postgres]);
    let setup = Setup::new(false, true);
    let fast = setup.archive_command();
    let _archive = SystemSetting::set("archive_command", &fast);
    let _server = ServerBack;
    psql(
        "postgres",
        "DROP TABLE IF EXISTS pitr_rows; \
         CREATE TABLE pitr_rows (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())",
    );
    setup.backup();
    batch(1);
    // The archiver falls behind: the segment with the first batch closes
    // now and is archived seconds later, after T.
    let set_command = |command: &str| {
        psql(
            "postgres",
            &format!(
                "ALTER SYSTEM SET archive_command = '{}'",
                command.replace('\'', "''")
            ),
        );
        psql("postgres", "SELECT pg_reload_conf()");
    };
    set_command(&format!("sleep 4; {fast}"));
    let closed = psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    std::thread::sleep(Duration::from_millis(1500));
    let t = psql(
        "postgres",
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while archiver().2 < closed {
        assert!(Instant::now() < deadline, "{closed} was not archived");
        std::thread::sleep(Duration::from_millis(200));
    }
    set_command(&fast);
    batch(501);
    archive_now();
    crash_server();
    setup.restore(&t).ok(&[]);
    assert_eq!(rows(), (500, 500), "--until {t}");
    psql("postgres", "DROP TABLE pitr_rows");
    remove_kept_data_dirs();
}

/// `restore --until consistent`: a set is taken WITHOUT a freeze while a
/// writer puts every event into PostgreSQL (first) and OpenSearch; replayed
/// to the set's consistency point (OpenSearch's snapshot start),
/// PostgreSQL comes back holding the events OpenSearch holds, to within
/// the events written while the snapshot's shards were starting.
#[test]
fn a_set_taken_without_a_freeze_is_restored_to_its_consistency_point() {
    use common::writer::{create_event_stores, drop_event_stores, ids_in_stores};
    /// The snapshot's shards flush a moment after its start; the events
    /// written meanwhile may be in OpenSearch and not yet in PostgreSQL's
    /// replay (docs/consistency.md, "Restore to one moment").
    const WINDOW_EVENTS: i64 = 25;
    let _guard = exclusive(&[Postgres, Opensearch, Neo4j]);
    let setup = Setup::new(false, false);
    let _archive = SystemSetting::set("archive_command", &setup.archive_command());
    let _server = ServerBack;
    create_event_stores();
    // An earlier base backup, for when the set's own ends after its moment.
    setup.backup();
    let work = tempfile::tempdir().unwrap();
    let writer = CrossStoreWriter::start(work.path());
    writer.wait_for(30);
    let root = setup.root.path();
    Cmd::backup(root)
        .services("postgres,opensearch")
        .arg("--postgres-method")
        .arg("physical")
        .arg("--opensearch-method")
        .arg("snapshot")
        .arg("--timestamp")
        .arg("set")
        .ok(&[]);
    writer.wait_for(writer.written() + 30);
    let written = writer.stop() as i64;
    archive_now();
    let set = root.join("set");
    let manifest = manifest_json(&set);
    let moment: jiff::Timestamp = manifest["artifacts"]["opensearch"]["position"]["taken_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let base_end: jiff::Timestamp = manifest["artifacts"]["postgres"]["details"]["physical"]
        ["consistent_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // All stores at once: possible only when the set's base backup ended
    // before the moment; otherwise refused with the two commands to run.
    let from_set = || Cmd::restore_path(&set).root(root);
    let whole = from_set()
        .arg("--until")
        .arg("consistent")
        .arg("--dry-run")
        .run(&[]);
    if base_end <= moment {
        assert!(whole.status.success(), "{}", text(&whole));
    } else {
        assert_eq!(whole.status.code(), Some(exit::USAGE), "{}", text(&whole));
        let err = String::from_utf8_lossy(&whole.stderr);
        assert!(
            err.contains("restore in two steps") && err.contains("--services opensearch"),
            "{err}"
        );
    }

    from_set().services("opensearch").yes().ok(&[]);
    let out = from_set()
        .services("postgres")
        .arg("--until")
        .arg("consistent")
        .yes()
        .ok(&[]);
    if base_end > moment {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("an earlier base backup is replayed"), "{err}");
    }
    let [(_, postgres), (_, opensearch), _] = ids_in_stores();
    let from_one =
        |ids: &std::collections::BTreeSet<u64>| ids.iter().copied().eq(1..=ids.len() as u64);
    assert!(
        from_one(&postgres) && from_one(&opensearch),
        "ids are not 1..=n"
    );
    let (p, o) = (postgres.len() as i64, opensearch.len() as i64);
    eprintln!(
        "written {written}, OpenSearch at its snapshot {o}, PostgreSQL replayed to its start {p}"
    );
    assert!(
        o >= 30 && p < written - 20,
        "PostgreSQL {p}, OpenSearch {o}, written {written}"
    );
    assert!(
        (p - o).abs() <= WINDOW_EVENTS,
        "PostgreSQL holds {p} events, OpenSearch {o}: not the same moment"
    );
    drop_event_stores();
    remove_kept_data_dirs();
}
