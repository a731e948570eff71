//! Daily operation: retention (prune), status and alarms, metrics, hooks and
//! the failure webhook. Prune and most status tests build fake backup
//! histories with real manifests (written by the crate's own `Manifest`), so
//! they need no server; the ones that back up or probe use the real servers.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::*;
use itbackup::manifest::Manifest;
use itbackup::prune::{self, Policy, Snapshot};
use itbackup::service::Service;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde_json::Value;

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn hours_ago(hours: i64) -> Timestamp {
    Timestamp::now() - jiff::SignedDuration::from_hours(hours)
}

/// Set the modification time of `path` and everything directly in it.
fn age(path: &Path, by: Duration) {
    let when = SystemTime::now() - by;
    for entry in fs::read_dir(path).unwrap() {
        let entry = entry.unwrap().path();
        fs::File::open(&entry).unwrap().set_modified(when).unwrap();
    }
    fs::File::open(path).unwrap().set_modified(when).unwrap();
}

fn names(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".itbackup.lock")
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------- retention

/// The history the policy tests share, newest first (UTC).
const HISTORY: [&str; 12] = [
    "2025-03-31T22:00:00Z", // Monday, ISO week 14
    "2025-03-31T10:00:00Z",
    "2025-03-30T10:00:00Z", // Sunday, week 13
    "2025-03-29T10:00:00Z",
    "2025-03-24T10:00:00Z", // Monday, week 13
    "2025-03-23T10:00:00Z", // Sunday, week 12
    "2025-03-10T10:00:00Z", // week 11
    "2025-02-28T10:00:00Z", // week 9
    "2025-02-01T10:00:00Z", // week 5
    "2025-01-15T10:00:00Z", // week 3
    "2024-12-31T10:00:00Z", // Tuesday of ISO week 2025-W01
    "2024-12-30T10:00:00Z", // Monday of ISO week 2025-W01
];

fn history() -> Vec<Snapshot> {
    // Shuffled on purpose: the policy must not rely on the order it is given.
    let mut snapshots: Vec<Snapshot> = HISTORY
        .iter()
        .map(|t| Snapshot {
            name: t.to_string(),
            time: at(t),
        })
        .collect();
    snapshots.reverse();
    snapshots.swap(0, 7);
    snapshots
}

fn kept(policy: Policy, tz: &TimeZone) -> Vec<String> {
    let decisions = prune::apply(&policy, &history(), tz);
    assert_eq!(decisions.len(), HISTORY.len());
    decisions
        .into_iter()
        .filter(|d| d.keep)
        .map(|d| d.name)
        .collect()
}

#[test]
fn retention_keeps_exactly_what_the_policy_says() {
    let utc = TimeZone::UTC;
    let policy = Policy {
        keep_last: 2,
        keep_daily: 3,
        keep_weekly: 3,
        keep_monthly: 3,
    };
    // Worked by hand, restic's way: last → both of 03-31; daily → 03-31,
    // 03-30, 03-29; weekly → W14, W13 (03-30), W12 (03-23); monthly → 2025-03,
    // 2025-02 (02-28), 2025-01 (01-15).
    assert_eq!(
        kept(policy, &utc),
        [
            "2025-03-31T22:00:00Z",
            "2025-03-31T10:00:00Z",
            "2025-03-30T10:00:00Z",
            "2025-03-29T10:00:00Z",
            "2025-03-23T10:00:00Z",
            "2025-02-28T10:00:00Z",
            "2025-01-15T10:00:00Z",
        ]
    );

    // ISO weeks span the turn of the year: 12-30 and 12-31 are one week.
    let weekly = Policy {
        keep_weekly: 10,
        ..Policy::default()
    };
    assert_eq!(
        kept(weekly, &utc),
        [
            "2025-03-31T22:00:00Z",
            "2025-03-30T10:00:00Z",
            "2025-03-23T10:00:00Z",
            "2025-03-10T10:00:00Z",
            "2025-02-28T10:00:00Z",
            "2025-02-01T10:00:00Z",
            "2025-01-15T10:00:00Z",
            "2024-12-31T10:00:00Z",
        ]
    );

    // Each month keeps its newest backup.
    let monthly = Policy {
        keep_monthly: 4,
        ..Policy::default()
    };
    assert_eq!(
        kept(monthly, &utc),
        [
            "2025-03-31T22:00:00Z",
            "2025-02-28T10:00:00Z",
            "2025-01-15T10:00:00Z",
            "2024-12-31T10:00:00Z",
        ]
    );

    // Days are local days: at UTC+3, 03-31 22:00 UTC is already April 1st.
    let east = TimeZone::fixed(jiff::tz::offset(3));
    let daily = Policy {
        keep_daily: 2,
        ..Policy::default()
    };
    assert_eq!(
        kept(daily, &east),
        ["2025-03-31T22:00:00Z", "2025-03-31T10:00:00Z"]
    );
    assert_eq!(
        kept(daily, &utc),
        ["2025-03-31T22:00:00Z", "2025-03-30T10:00:00Z"]
    );
}

#[test]
fn retention_never_drops_the_newest_backup() {
    let newest = "2025-03-31T22:00:00Z";
    // Even a policy that keeps nothing keeps the newest complete backup.
    assert_eq!(kept(Policy::default(), &TimeZone::UTC), [newest]);
    for n in 1..4 {
        for policy in [
            Policy {
                keep_last: n,
                ..Policy::default()
            },
            Policy {
                keep_daily: n,
                ..Policy::default()
            },
            Policy {
                keep_weekly: n,
                ..Policy::default()
            },
            Policy {
                keep_monthly: n,
                ..Policy::default()
            },
        ] {
            let kept = kept(policy, &TimeZone::UTC);
            assert_eq!(kept[0], newest, "{policy:?}");
        }
    }
}

/// A backup root with every kind of entry prune meets.
struct Scene {
    root: tempfile::TempDir,
}

impl Scene {
    fn new() -> Self {
        let root = temp_root();
        let r = root.path();
        // Five daily backups, the newest 2 hours old.
        for day in 0..5 {
            fake_backup(r, &format!("day{day}"), hours_ago(2 + 24 * day));
        }
        // A run killed two days ago: only debris, past the grace period.
        let old = r.join("20250101_030000");
        fs::create_dir(&old).unwrap();
        fs::write(old.join("postgres_20250101_030000.tar.partial"), "half").unwrap();
        fs::create_dir(old.join(".postgres_20250101_030000.77.work")).unwrap();
        age(&old, Duration::from_secs(48 * 3600));
        // A run that stopped an hour ago: within the grace period.
        let young = r.join("20250102_030000");
        fs::create_dir(&young).unwrap();
        fs::write(young.join("neo4j_20250102_030000.ndjson.zst.partial"), "x").unwrap();
        age(&young, Duration::from_secs(3600));
        // A killed restore's scratch directory.
        let scratch = r.join(".itbackup-restore-abc123");
        fs::create_dir(&scratch).unwrap();
        fs::write(scratch.join("x"), "x").unwrap();
        age(&scratch, Duration::from_secs(48 * 3600));
        // Things itbackup did not write, and a damaged backup: never touched.
        let photos = r.join("photos");
        fs::create_dir(&photos).unwrap();
        fs::write(photos.join("cat.jpg"), "meow").unwrap();
        age(&photos, Duration::from_secs(30 * 24 * 3600));
        let damaged = fake_backup(r, "damaged", hours_ago(24 * 40));
        let manifest = damaged.join("backup-manifest.json");
        let text = fs::read_to_string(&manifest).unwrap();
        fs::write(&manifest, text.replace("\"bytes\": ", "\"bytes\": 1")).unwrap();
        age(&damaged, Duration::from_secs(40 * 24 * 3600));
        std::os::unix::fs::symlink(r.join("day4"), r.join("link-to-day4")).unwrap();
        // PostgreSQL's WAL archive: not a backup, never listed or pruned here.
        let wal = r.join("wal");
        fs::create_dir(&wal).unwrap();
        fs::write(wal.join("000000010000000000000001.zst"), "segment").unwrap();
        age(&wal, Duration::from_secs(60 * 24 * 3600));
        Scene { root }
    }

    fn arg(&self) -> &str {
        self.root.path().to_str().unwrap()
    }
}

const EVERYTHING: [&str; 12] = [
    ".itbackup-restore-abc123",
    "20250101_030000",
    "20250102_030000",
    "damaged",
    "day0",
    "day1",
    "day2",
    "day3",
    "day4",
    "link-to-day4",
    "photos",
    "wal",
];

#[test]
fn prune_removes_what_the_policy_drops_and_old_debris_and_nothing_else() {
    let scene = Scene::new();
    let root = scene.root.path();
    let before = names(root);
    assert_eq!(before, EVERYTHING);

    // A dry run says what would go and changes nothing.
    let out = ok(
        &[
            "--root",
            scene.arg(),
            "--json",
            "prune",
            "--keep-daily",
            "2",
            "--dry-run",
        ],
        &[],
    );
    let plan = json_of(&out);
    assert_eq!(plan["dry_run"], true);
    let mut would_remove: Vec<&str> = plan["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["action"] == "remove")
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    would_remove.sort();
    let expected_removed = [
        ".itbackup-restore-abc123",
        "20250101_030000",
        "day2",
        "day3",
        "day4",
    ];
    assert_eq!(would_remove, expected_removed, "{plan:#}");
    assert_eq!(names(root), before);

    let out = ok(
        &[
            "--root",
            scene.arg(),
            "--json",
            "prune",
            "--keep-daily",
            "2",
        ],
        &[],
    );
    let done = json_of(&out);
    assert_eq!(done["removed"], 5, "{done:#}");
    let after = names(root);
    assert_eq!(
        after,
        [
            "20250102_030000",
            "damaged",
            "day0",
            "day1",
            "link-to-day4",
            "photos",
            "wal"
        ]
    );
    // The WAL archive is not a backup: prune does not even consider it.
    assert!(!done["items"].to_string().contains("\"wal\""), "{done:#}");
    assert!(root.join("wal/000000010000000000000001.zst").exists());
    let listed = json_of(&ok(&["--root", scene.arg(), "--json", "list"], &[]));
    assert!(!listed.to_string().contains("\"wal\""), "{listed:#}");
    // Left alone, and said so: the damaged backup, the stranger, the link.
    for name in ["damaged", "photos", "link-to-day4"] {
        let item = done["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap();
        assert_eq!(item["action"], "leave", "{item:#}");
    }
    assert!(root.join("photos/cat.jpg").exists());
    // The survivors are intact complete backups.
    Manifest::read_dir(&root.join("day0")).unwrap();
    Manifest::read_dir(&root.join("day1")).unwrap();

    // Pruning again with the same policy finds nothing more to do.
    let again = json_of(&ok(
        &[
            "--root",
            scene.arg(),
            "--json",
            "prune",
            "--keep-daily",
            "2",
        ],
        &[],
    ));
    assert_eq!(again["removed"], 0, "{again:#}");
}

#[test]
fn prune_waits_for_no_one_and_touches_nothing_while_a_run_holds_the_root() {
    let scene = Scene::new();
    let root = scene.root.path();
    let before = names(root);
    let lock = itbackup::lock::RootLock::acquire(root, "backup").unwrap();
    let stderr = fails(
        &["--root", scene.arg(), "prune", "--keep-last", "1"],
        &[],
        exit::LOCKED,
    );
    assert!(stderr.contains("locked by itbackup backup"), "{stderr}");
    assert_eq!(names(root), before);
    drop(lock);
    ok(&["--root", scene.arg(), "prune", "--keep-last", "1"], &[]);
    assert!(root.join("day0").exists());
    assert!(!root.join("day1").exists());
}

#[test]
fn prune_refuses_to_run_without_a_rule() {
    let scene = Scene::new();
    let stderr = fails(&["--root", scene.arg(), "prune"], &[], 2);
    assert!(stderr.contains("--keep-last"), "{stderr}");
    let stderr = fails(
        &[
            "--root",
            scene.arg(),
            "prune",
            "--keep-last",
            "1",
            "--grace",
            "soon",
        ],
        &[],
        2,
    );
    assert!(stderr.contains("soon"), "{stderr}");
    assert_eq!(names(scene.root.path()), EVERYTHING);
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Directories that existed before a run keep their mode: `backup --out
/// /tmp/x` once made `/tmp` drwx------ (the lock root is the parent of
/// --out), which locked every other user and service out of it. Only the
/// directories itbackup creates are 0700.
#[test]
fn existing_directories_keep_their_mode_through_backup_restore_prune_and_drill() {
    let _guard = exclusive(&[Postgres]);
    let top = temp_root();
    // A shared directory like /tmp, and a backup root an operator made 0755.
    let shared = top.path().join("shared");
    let root = top.path().join("root");
    fs::create_dir(&shared).unwrap();
    fs::create_dir(&root).unwrap();
    set_mode(top.path(), 0o755);
    set_mode(&shared, 0o1777);
    set_mode(&root, 0o755);
    let expect = |when: &str| {
        assert_eq!(mode_of(top.path()), 0o755, "{when}: parent of the root");
        assert_eq!(mode_of(&shared), 0o1777, "{when}: parent of --out");
        assert_eq!(mode_of(&root), 0o755, "{when}: backup root");
    };
    let root_arg = root.to_str().unwrap();
    let pg = ["--services", "postgres"];

    let out = shared.join("x");
    let out_arg = out.to_str().unwrap();
    ok(&[&["backup", "--out", out_arg][..], &pg].concat(), &[]);
    expect("backup --out");
    assert_eq!(mode_of(&out), 0o700, "the backup directory itbackup made");
    // Each component itbackup creates is private, not only the last.
    let deep = shared.join("new/deeper/x");
    let deep_arg = deep.to_str().unwrap();
    ok(&[&["backup", "--out", deep_arg][..], &pg].concat(), &[]);
    expect("backup --out into new directories");
    assert_eq!(mode_of(&shared.join("new")), 0o700);
    assert_eq!(mode_of(&shared.join("new/deeper")), 0o700);

    ok(&["restore", "--path", out_arg, "--yes"], &[]);
    expect("restore --path");

    ok(&[&["--root", root_arg, "backup"][..], &pg].concat(), &[]);
    expect("backup --root");
    ok(&["--root", root_arg, "restore", "--yes"], &[]);
    expect("restore --root");
    ok(&["--root", root_arg, "prune", "--keep-last", "1"], &[]);
    expect("prune");
    ok(
        &[
            "--root",
            root_arg,
            "drill",
            "--yes",
            "--scale",
            "50",
            "--services",
            "postgres",
        ],
        &[],
    );
    expect("drill --root");
    let drilled = shared.join("drill");
    ok(
        &[
            "drill",
            "--yes",
            "--scale",
            "50",
            "--services",
            "postgres",
            "--out",
            drilled.to_str().unwrap(),
        ],
        &[],
    );
    expect("drill --out");
}

/// node_exporter's textfile collector runs as its own user: the metrics file
/// must be readable by it whatever itbackup's umask (0600 under umask 077
/// made the metrics silently vanish). It holds no secret, so 0644.
#[test]
fn the_metrics_file_is_readable_by_the_collector_whatever_the_umask() {
    let root = temp_root();
    let metrics = root.path().join("itbackup.prom");
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "umask 077; exec \"$0\" --root \"$1\" status --offline --metrics-file \"$2\"",
            bin(),
            root.path().to_str().unwrap(),
            metrics.to_str().unwrap(),
        ])
        .env("PGPASSWORD", "metrics-Secret-42")
        .output()
        .unwrap();
    assert!(metrics.exists(), "{}", text(&out));
    assert_eq!(mode_of(&metrics), 0o644);
    let content = fs::read_to_string(&metrics).unwrap();
    assert!(content.contains("itbackup_status_ok"), "{content}");
    assert!(!content.contains("metrics-Secret-42"), "{content}");
}

// ---------------------------------------------------------------- status

/// `synthetic-validation.json` as a drill leaves it, with the given RTO.
fn fake_drill(dir: &Path, rto_seconds: f64) {
    let v = serde_json::json!({
        "postgres_rows": 10, "neo4j_nodes": null, "opensearch_doc": null,
        "ok": rto_seconds <= 1800.0, "timestamp": "drill-ts",
        "rto_seconds": rto_seconds, "rto_objective_seconds": 1800.0,
        "rto_ok": rto_seconds <= 1800.0,
    });
    fs::write(dir.join("synthetic-validation.json"), v.to_string()).unwrap();
}

fn status_json(root: &Path, extra: &[&str], code: i32) -> Value {
    let mut args = vec!["--root", root.to_str().unwrap(), "--json", "status"];
    args.extend_from_slice(extra);
    let out = itbackup(&args, &[]);
    assert_eq!(out.status.code(), Some(code), "{}", text(&out));
    json_of(&out)
}

#[test]
fn status_alarms_on_a_breached_rpo_and_reports_the_last_drill() {
    let root = temp_root();
    let r = root.path();
    fake_backup(r, "old", hours_ago(50));
    let dir = fake_backup(r, "newer", hours_ago(30));
    fake_drill(&dir, 2400.0);

    let report = status_json(r, &["--offline", "--rpo", "24h"], 1);
    assert_eq!(report["ok"], false);
    let pg = &report["services"][0];
    assert_eq!(pg["service"], "postgres");
    assert_eq!(pg["newest"]["name"], "newer", "{report:#}");
    assert_eq!(pg["rpo_ok"], false);
    let age = pg["newest"]["age_seconds"].as_f64().unwrap();
    assert!((age - 30.0 * 3600.0).abs() < 120.0, "{age}");
    let alarms = report["alarms"].to_string();
    assert!(alarms.contains("postgres: RPO breached"), "{alarms}");
    // The drill missed the 30-minute RTO: reported, a warning only.
    assert_eq!(report["last_drill"]["rto_seconds"], 2400.0);
    assert_eq!(report["last_drill"]["rto_ok"], false);
    assert!(report["warnings"]
        .to_string()
        .contains("last recovery drill"));

    // The human report says why, and standard error carries the alarm.
    let out = itbackup(&["--root", r.to_str().unwrap(), "status", "--offline"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("RPO breached"),
        "{}",
        text(&out)
    );

    // Within a longer objective, all is well.
    let report = status_json(r, &["--offline", "--rpo", "2d"], 0);
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["alarms"], serde_json::json!([]));

    // No backup at all is an alarm for every service.
    let empty = temp_root();
    let report = status_json(empty.path(), &["--offline"], 1);
    assert_eq!(
        report["services"].as_array().unwrap().len(),
        3,
        "{report:#}"
    );
}

#[test]
fn status_alarms_when_the_newest_backup_fails_verification() {
    let root = temp_root();
    let r = root.path();
    fake_backup(r, "yesterday", hours_ago(20));
    let newest = fake_backup(r, "today", hours_ago(1));
    status_json(r, &["--offline"], 0);
    let artifact = newest.join("postgres_today.tar");

    // Same size, other content: only re-hashing (--verify) can tell.
    let content = fs::read_to_string(&artifact).unwrap();
    fs::write(&artifact, content.replace("dump", "DUMP")).unwrap();
    status_json(r, &["--offline"], 0);
    let report = status_json(r, &["--offline", "--verify"], 1);
    let v = &report["services"][0]["verification"];
    assert_eq!(v["checked"], "full");
    assert!(
        v["problem"].as_str().unwrap().contains("sha256"),
        "{report:#}"
    );
    assert!(report["alarms"].to_string().contains("fails verification"));

    // Truncated: the size check every status does finds it.
    fs::write(&artifact, "short").unwrap();
    let report = status_json(r, &["--offline"], 1);
    assert_eq!(report["services"][0]["verification"]["checked"], "sizes");
    assert!(
        report["alarms"]
            .to_string()
            .contains("postgres: the newest backup today fails verification"),
        "{report:#}"
    );
}

// ------------------------------------------------- metrics, hooks, webhook

/// Parse a metrics file with the Prometheus project's Python client parser
/// (installed from PyPI into the target directory when missing). Returns
/// family → sample name → labels (as JSON text) → value.
fn parse_with_prometheus(path: &Path) -> Value {
    let site = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-prometheus");
    let importable = |python_path: &Path| {
        std::process::Command::new("python3")
            .args(["-c", "import prometheus_client.parser"])
            .env("PYTHONPATH", python_path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !importable(&site) {
        let out = std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&site)
            .arg("prometheus_client")
            .output()
            .expect("run pip");
        assert!(
            out.status.success(),
            "pip install prometheus_client: {}",
            text(&out)
        );
        assert!(importable(&site));
    }
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    assert family.type == "gauge", family
    assert family.documentation, family
    samples = out.setdefault(family.name, {})
    for s in family.samples:
        samples[json.dumps(s.labels, sort_keys=True)] = s.value
print(json.dumps(out))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .env("PYTHONPATH", &site)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "the Prometheus parser rejects {}:\n{}\n{}",
        path.display(),
        fs::read_to_string(path).unwrap_or_default(),
        text(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sample(metrics: &Value, family: &str, labels: &str) -> f64 {
    metrics[family][labels]
        .as_f64()
        .unwrap_or_else(|| panic!("no {family} {labels} in {metrics:#}"))
}

/// A real HTTP listener on loopback that answers 200 to `expected` requests
/// and hands over each request's headers and body.
fn webhook_listener(expected: usize) -> (String, std::sync::mpsc::Receiver<(String, String)>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/hooks/itbackup?token=secret",
        listener.local_addr().unwrap()
    );
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(expected) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .unwrap();
            send.send((head, String::from_utf8(body).unwrap())).unwrap();
        }
    });
    (url, receive)
}

#[test]
fn backup_writes_metrics_runs_hooks_and_status_verifies_it() {
    let _guard = exclusive(&[Postgres]);
    required_env("PGHOST");
    let root = temp_root();
    let r = root.path().join("backups");
    let r_arg = r.to_str().unwrap();
    let metrics_file = root.path().join("itbackup.prom");
    let m_arg = metrics_file.to_str().unwrap();
    let hook_log = root.path().join("hooks.log");
    // Each hook appends what it saw; the post-hook also checks the backup is complete.
    let pre = format!(
        "echo \"$IT_HOOK_EVENT $IT_BACKUP_DIR $IT_HOOK_SERVICES\" >> {0}; test ! -e \"$IT_BACKUP_DIR\"",
        hook_log.display()
    );
    let post = format!(
        "echo \"$IT_HOOK_EVENT $IT_HOOK_STATUS\" >> {0}; test -f \"$IT_BACKUP_DIR/backup-manifest.json\"",
        hook_log.display()
    );
    ok(
        &[
            "--root",
            r_arg,
            "backup",
            "--services",
            "postgres",
            "--timestamp",
            "first",
            "--metrics-file",
            m_arg,
            "--pre-hook",
            &pre,
            "--post-hook",
            &post,
        ],
        &[],
    );
    let dir = r.join("first");
    assert_eq!(
        fs::read_to_string(&hook_log).unwrap(),
        format!(
            "pre-backup {} postgres\npost-backup success\n",
            dir.display()
        )
    );
    let manifest = Manifest::read_dir(&dir).unwrap();
    let record = &manifest.artifacts[&Service::Postgres];

    let metrics = parse_with_prometheus(&metrics_file);
    let pg = r#"{"service": "postgres"}"#;
    let backup = r#"{"operation": "backup"}"#;
    assert_eq!(sample(&metrics, "itbackup_last_run_success", backup), 1.0);
    assert_eq!(
        sample(&metrics, "itbackup_backup_bytes", pg),
        record.bytes as f64
    );
    let objects: u64 = record.counts.values().sum();
    assert_eq!(
        sample(&metrics, "itbackup_backup_objects", pg),
        objects as f64
    );
    assert!(sample(&metrics, "itbackup_backup_duration_seconds", pg) >= 0.0);
    let success = sample(&metrics, "itbackup_last_success_timestamp_seconds", backup);
    let now = Timestamp::now().as_second() as f64;
    assert!((now - success).abs() < 600.0, "{success} vs {now}");

    // status --verify re-hashes and decodes the real backup, probes the server,
    // and adds its series to the same file.
    let report = status_json(
        &r,
        &[
            "--services",
            "postgres",
            "--verify",
            "--metrics-file",
            m_arg,
        ],
        0,
    );
    let s = &report["services"][0];
    assert_eq!(s["verification"]["checked"], "full", "{report:#}");
    assert_eq!(s["verification"]["ok"], true, "{report:#}");
    assert_eq!(s["server"]["up"], true, "{report:#}");

    // A failed backup (the server is unreachable) keeps the last success time.
    std::thread::sleep(Duration::from_millis(1100));
    let stderr = fails(
        &[
            "--root",
            r_arg,
            "backup",
            "--services",
            "postgres",
            "--metrics-file",
            m_arg,
        ],
        &[("PGPORT", "1")],
        exit::UNREACHABLE,
    );
    assert!(stderr.contains("postgres"), "{stderr}");
    let metrics = parse_with_prometheus(&metrics_file);
    assert_eq!(sample(&metrics, "itbackup_last_run_success", backup), 0.0);
    assert_eq!(
        sample(&metrics, "itbackup_last_success_timestamp_seconds", backup),
        success
    );
    assert_eq!(
        sample(&metrics, "itbackup_backup_bytes", pg),
        record.bytes as f64
    );
    assert_eq!(sample(&metrics, "itbackup_status_ok", "{}"), 1.0);
    assert_eq!(sample(&metrics, "itbackup_server_up", pg), 1.0);
    assert_eq!(sample(&metrics, "itbackup_newest_backup_verified", pg), 1.0);
    assert_eq!(sample(&metrics, "itbackup_rpo_seconds", "{}"), 86400.0);

    // An unreachable server is an alarm for status.
    let out = itbackup(
        &[
            "--root",
            r_arg,
            "--json",
            "status",
            "--services",
            "postgres",
            "--metrics-file",
            m_arg,
        ],
        &[("PGPORT", "1")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = json_of(&out);
    assert!(
        report["alarms"]
            .to_string()
            .contains("postgres: server down"),
        "{report:#}"
    );
    assert_eq!(report["services"][0]["server"]["up"], false, "{report:#}");
    let metrics = parse_with_prometheus(&metrics_file);
    assert_eq!(sample(&metrics, "itbackup_status_ok", "{}"), 0.0);
    assert_eq!(sample(&metrics, "itbackup_server_up", pg), 0.0);
}

#[test]
fn a_failed_backup_posts_to_the_webhook_and_tells_the_post_hook() {
    let _guard = exclusive(&[Postgres]);
    let root = temp_root();
    let r = root.path().join("backups");
    let hook_log = root.path().join("hooks.log");
    let (url, requests) = webhook_listener(2);
    let post = format!(
        "echo \"$IT_HOOK_EVENT $IT_HOOK_STATUS $IT_HOOK_ERROR\" >> {}",
        hook_log.display()
    );
    let stderr = fails(
        &[
            "--root",
            r.to_str().unwrap(),
            "backup",
            "--services",
            "postgres",
            "--notify-url",
            &url,
            "--post-hook",
            &post,
        ],
        &[("PGPORT", "1")],
        exit::UNREACHABLE,
    );
    let (head, body) = requests.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(
        head.starts_with("POST /hooks/itbackup?token=secret HTTP/1.1"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let payload: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(payload["event"], "itbackup.failure", "{payload:#}");
    assert_eq!(payload["operation"], "backup");
    assert_eq!(payload["ok"], false);
    assert_eq!(payload["services"], serde_json::json!(["postgres"]));
    assert_eq!(payload["error"]["service"], "postgres", "{payload:#}");
    assert!(!payload["error"]["message"].as_str().unwrap().is_empty());
    assert!(payload["time"]
        .as_str()
        .unwrap()
        .parse::<Timestamp>()
        .is_ok());
    assert!(
        !stderr.contains("token=secret"),
        "the webhook's token leaked: {stderr}"
    );
    let log = fs::read_to_string(&hook_log).unwrap();
    assert!(log.starts_with("post-backup failure postgres: "), "{log}");
    // Nothing that looks like a backup was left behind.
    assert!(itbackup::catalog::scan(&r)
        .unwrap()
        .iter()
        .all(|e| !e.complete));

    // A failing pre-hook aborts before anything is touched, and is reported too.
    let stderr = backup_refused_by_pre_hook(
        &r,
        "never",
        &[
            "--notify-url",
            &url,
            "--pre-hook",
            "echo maintenance mode refused >&2; exit 3",
        ],
    );
    assert!(
        stderr.contains("pre-hook") && stderr.contains("maintenance mode refused"),
        "{stderr}"
    );
    assert!(!r.join("never").exists());
    let (_, body) = requests.recv_timeout(Duration::from_secs(30)).unwrap();
    let payload: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(payload["error"]["step"], "pre-hook", "{payload:#}");

    // A hook that hangs is killed, with what it started, after --hook-timeout.
    let late = root.path().join("late-marker");
    let hang = format!("sleep 3 && touch {}", late.display());
    let started = std::time::Instant::now();
    let stderr =
        backup_refused_by_pre_hook(&r, "hung", &["--pre-hook", &hang, "--hook-timeout", "1"]);
    assert!(
        stderr.contains("did not finish within 1 s") && stderr.contains("--hook-timeout"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(!r.join("hung").exists());
    std::thread::sleep(Duration::from_secs(3));
    assert!(!late.exists(), "the hook's sleep outlived the timeout");
}

/// A PostgreSQL backup into `root` at `timestamp` that the pre-hook in `extra`
/// stops (exit 1); answers its standard error.
fn backup_refused_by_pre_hook(root: &Path, timestamp: &str, extra: &[&str]) -> String {
    let root = root.to_str().unwrap();
    let mut args = vec!["--root", root, "backup", "--services", "postgres"];
    args.extend_from_slice(&["--timestamp", timestamp]);
    args.extend_from_slice(extra);
    fails(&args, &[], 1)
}

#[test]
fn with_upload_and_no_local_the_hooks_see_the_directory_the_backup_is_written_to() {
    let _guard = exclusive(&[Postgres]);
    required_env("PGHOST");
    let root = temp_root();
    let r = root.path().join("backups");
    let repo = root.path().join("repo");
    fs::create_dir_all(&repo).unwrap();
    let url = format!("file://{}", repo.display());
    let hook_log = root.path().join("hooks.log");
    // Each hook records what it is told; the run's report says where the
    // backup was written (the staging directory, removed after the upload).
    let pre = format!(
        "echo \"$IT_HOOK_EVENT $IT_BACKUP_ROOT $IT_BACKUP_DIR\" >> {0}",
        hook_log.display()
    );
    let post = format!(
        "echo \"$IT_HOOK_EVENT $IT_BACKUP_ROOT $IT_BACKUP_DIR $IT_HOOK_STATUS\" >> {0}",
        hook_log.display()
    );
    let out = ok(
        &[
            "--root",
            r.to_str().unwrap(),
            "--json",
            "backup",
            "--services",
            "postgres",
            "--upload",
            &url,
            "--no-local",
            "--pre-hook",
            &pre,
            "--post-hook",
            &post,
        ],
        &[],
    );
    let report = json_of(&out);
    let result = &report["result"];
    assert_eq!(result["local"], false, "{report:#}");
    let written = result["dir"].as_str().unwrap();
    let name = result["manifest"]["timestamp"].as_str().unwrap();
    assert_eq!(
        written,
        r.join(format!(".itbackup-staging-upload-{name}"))
            .to_str()
            .unwrap(),
        "{report:#}"
    );
    assert!(!Path::new(written).exists(), "the staging copy stayed");
    assert!(repo.join(name).join("backup-manifest.json").is_file());
    assert_eq!(
        fs::read_to_string(&hook_log).unwrap(),
        format!(
            "pre-backup {root} {written}\npost-backup {root} {written} success\n",
            root = r.display()
        ),
        "the hooks were told another directory than the one the backup was written to"
    );
}

/// The default directory names of the next `seconds` seconds, in the
/// backup's own format and time zone.
fn default_names(seconds: i64) -> Vec<String> {
    let now = jiff::Zoned::now();
    (0..seconds)
        .map(|s| {
            now.checked_add(jiff::SignedDuration::from_secs(s))
                .unwrap()
                .strftime(itbackup::backup::TIMESTAMP_FORMAT)
                .to_string()
        })
        .collect()
}

#[test]
fn a_backup_never_replaces_a_complete_one_taken_in_the_same_second() {
    let _guard = exclusive(&[Postgres]);
    required_env("PGHOST");
    let root = temp_root();
    let r = root.path().join("backups");
    let r_arg = r.to_str().unwrap();
    // Complete backups already hold every name a backup started within the
    // next 20 s would get by default: as if each was taken in that second.
    let names = default_names(20);
    let taken: Vec<(PathBuf, String)> = names
        .iter()
        .map(|name| {
            let dir = fake_backup(&r, name, Timestamp::now());
            let manifest = fs::read_to_string(dir.join("backup-manifest.json")).unwrap();
            (dir, manifest)
        })
        .collect();
    let unchanged = |taken: &[(PathBuf, String)]| {
        for (dir, manifest) in taken {
            assert!(
                &fs::read_to_string(dir.join("backup-manifest.json")).unwrap() == manifest,
                "{} was replaced",
                dir.display()
            );
        }
    };

    // A default name: the run takes the same second's name with a suffix.
    let out = ok(
        &[
            "--root",
            r_arg,
            "--json",
            "backup",
            "--services",
            "postgres",
        ],
        &[],
    );
    unchanged(&taken);
    let report = json_of(&out);
    let dir = PathBuf::from(report["result"]["dir"].as_str().unwrap());
    let name = dir.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        names.iter().any(|n| name == format!("{n}-2")),
        "{name} is not a second's name with -2: {report:#}"
    );
    assert_eq!(report["result"]["manifest"]["timestamp"], name.as_str());
    assert!(dir.join("backup-manifest.json").is_file());

    // The same with a repository: a backup of that second in the repository
    // is not replaced either.
    let other = root.path().join("other-root");
    let repo = root.path().join("repo");
    let remote_taken: Vec<(PathBuf, String)> = default_names(20)
        .iter()
        .map(|name| {
            let dir = fake_backup(&repo, name, Timestamp::now());
            let manifest = fs::read_to_string(dir.join("backup-manifest.json")).unwrap();
            (dir, manifest)
        })
        .collect();
    let url = format!("file://{}", repo.display());
    let stderr = fails(
        &[
            "--root",
            other.to_str().unwrap(),
            "backup",
            "--services",
            "postgres",
            "--upload",
            &url,
            "--no-local",
        ],
        &[],
        1,
    );
    unchanged(&remote_taken);
    assert!(
        stderr.contains("already holds a backup named") && stderr.contains("run again"),
        "{stderr}"
    );

    // A name the operator gives re-takes that backup on purpose, as the
    // runbook's deterministic names intend.
    let (again, fake_manifest) = &taken[0];
    let again_name = again.file_name().unwrap().to_str().unwrap();
    ok(
        &[
            "--root",
            r_arg,
            "backup",
            "--services",
            "postgres",
            "--timestamp",
            again_name,
        ],
        &[],
    );
    assert!(&fs::read_to_string(again.join("backup-manifest.json")).unwrap() != fake_manifest);
    Manifest::read_dir(again).unwrap();
}

// ---------------------------------------------------------------- schedule

#[test]
fn schedule_runs_backups_on_time_and_stops_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::sync::{Arc, Mutex};
    let _guard = exclusive(&[Postgres]);
    required_env("PGHOST");
    let root = temp_root();
    let r = root.path().join("backups");
    let metrics_file = root.path().join("schedule.prom");
    let mut child = std::process::Command::new(bin())
        .args([
            "--root",
            r.to_str().unwrap(),
            "--json",
            "schedule",
            "--every",
            "2s",
        ])
        .args([
            "--services",
            "postgres",
            "--keep-last",
            "2",
            "--metrics-file",
        ])
        .arg(&metrics_file)
        .env("RUST_LOG", "itbackup=info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start itbackup schedule");
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let collector = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let line = line.unwrap();
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        })
    };
    let kill_on_panic = KillOnPanic(child.id());

    // Two scheduled runs, each backing up, verifying and pruning.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let line = lines.next().expect("a run's JSON line").unwrap();
        let run: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(run["ok"], true, "{run:#}\n{}", log.lock().unwrap());
        assert_eq!(run["backup"]["ok"], true);
        assert_eq!(run["verify"]["ok"], true);
        assert_eq!(run["prune"]["ok"], true);
        runs.push(run);
    }
    let first = runs[0]["started_at"]
        .as_str()
        .unwrap()
        .parse::<Timestamp>()
        .unwrap();
    let second = runs[1]["started_at"]
        .as_str()
        .unwrap()
        .parse::<Timestamp>()
        .unwrap();
    assert!(
        second.duration_since(first) >= jiff::SignedDuration::from_millis(1900),
        "{runs:?}"
    );

    // SIGTERM while the third run is under way: it finishes its step, then stops.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !log.lock().unwrap().contains("run=3") {
        assert!(
            std::time::Instant::now() < deadline,
            "no third run\n{}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_with_timeout(&mut child, Duration::from_secs(120));
    drop(kill_on_panic);
    collector.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert!(status.success(), "{status}\n{log}");
    assert!(
        log.contains("stop requested") && log.contains("schedule stopped"),
        "{log}"
    );
    // The third run reports its backup, and that the stop cut the rest short.
    let rest: Vec<Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert_eq!(rest.len(), 1, "{rest:?}\n{log}");
    assert_eq!(rest[0]["run"], 3);
    assert_eq!(rest[0]["stopped"], true, "{:#}", rest[0]);
    assert_eq!(rest[0]["backup"]["ok"], true, "{:#}", rest[0]);
    assert!(rest[0].get("prune").is_none(), "{:#}", rest[0]);

    // Nothing partial is marked complete: every directory left is a complete,
    // valid backup (prune kept two after run 2; run 3 added one before it
    // stopped), and no *.partial lies around.
    let entries = itbackup::catalog::scan(&r).unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert!(
        entries.len() == 3 && entries.iter().all(|e| e.complete),
        "{names:?}\n{log}"
    );
    for entry in &entries {
        Manifest::read_dir(&entry.path).unwrap();
        for file in fs::read_dir(&entry.path).unwrap() {
            let name = file.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !name.ends_with(".partial"),
                "{name} in {}",
                entry.path.display()
            );
        }
    }
    let metrics = parse_with_prometheus(&metrics_file);
    for operation in ["backup", "verify", "prune"] {
        let labels = format!(r#"{{"operation": "{operation}"}}"#);
        assert_eq!(sample(&metrics, "itbackup_last_run_success", &labels), 1.0);
    }
}

#[test]
fn schedule_refuses_a_bad_cron_expression() {
    let stderr = fails(&["schedule", "--cron", "61 * * * *"], &[], 2);
    assert!(stderr.contains("--cron '61 * * * *'"), "{stderr}");
    let stderr = fails(&["schedule"], &[], 2);
    assert!(
        stderr.contains("--every") || stderr.contains("--cron"),
        "{stderr}"
    );
}

fn wait_with_timeout(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "itbackup schedule did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
