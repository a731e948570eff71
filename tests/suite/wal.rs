//! WAL archiving (`itbackup wal push` / `wal fetch`, PostgreSQL's
//! archive_command and restore_command): the real server archives through
//! `wal push` and `wal fetch` gives every file back byte for byte; the same
//! file pushed twice is accepted, a different one under an archived name is
//! refused and the archived one kept; a name not archived, a damaged stored
//! file and the wrong key are told apart by their exit codes and nothing
//! reaches the destination; encrypted and repository (testenv S3) round trips.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A file that looks like a WAL segment to `wal push`: `bytes` of
/// compressible, seed-dependent content (real segments compress well too).
fn fake_segment(dir: &Path, name: &str, seed: u8, bytes: usize) -> PathBuf {
    let path = dir.join(name);
    let content: Vec<u8> = (0..bytes)
        .map(|i| {
            if i % 97 < 60 {
                0
            } else {
                (i as u8).wrapping_mul(31) ^ seed
            }
        })
        .collect();
    std::fs::write(&path, content).unwrap();
    path
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn push(root: &Path, file: &Path) -> Cmd {
    Cmd::new("wal").root(root).arg("push").arg(s(file))
}

fn fetch(root: &Path, name: &str, dest: &Path) -> Cmd {
    Cmd::new("wal")
        .root(root)
        .arg("fetch")
        .arg(name)
        .arg(s(dest))
}

/// Every file in `dir`, with its content.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn the_same_file_pushed_twice_is_accepted_and_different_content_is_refused() {
    let root = temp_root();
    let work = temp_root();
    let name = "000000010000000000000007";
    let segment = fake_segment(work.path(), name, 1, 16 * 1024 * 1024);

    let first = json_of(&push(root.path(), &segment).arg("--json").ok(&[]));
    assert_eq!(first["archived"], true, "{first:#}");
    assert_eq!(first["bytes"], 16 * 1024 * 1024);
    assert!(
        first["stored_bytes"].as_u64().unwrap() < 4 * 1024 * 1024,
        "{first:#}"
    );
    let wal = root.path().join("wal");
    let names: Vec<String> = snapshot(&wal).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, [format!("{name}.json"), format!("{name}.zst")]);
    let record: Value =
        serde_json::from_slice(&std::fs::read(wal.join(format!("{name}.json"))).unwrap()).unwrap();
    assert_eq!(record["name"], name);
    assert_eq!(record["file"], format!("{name}.zst"));
    assert_eq!(record["bytes"], 16 * 1024 * 1024);
    let before = snapshot(&wal);

    // PostgreSQL retries a file whose success it did not note: accepted.
    let again = json_of(&push(root.path(), &segment).arg("--json").ok(&[]));
    assert_eq!(again["archived"], false, "{again:#}");
    assert_eq!(snapshot(&wal), before);

    // A record alone proves nothing: with its stored file lost (or cut), a
    // retry stores the segment again, or PostgreSQL would then delete the
    // only copy left.
    let stored = wal.join(format!("{name}.zst"));
    std::fs::remove_file(&stored).unwrap();
    let again = json_of(&push(root.path(), &segment).arg("--json").ok(&[]));
    assert_eq!(again["archived"], true, "{again:#}");
    let stored_bytes = std::fs::metadata(&stored).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&stored)
        .unwrap()
        .set_len(stored_bytes / 2)
        .unwrap();
    let again = json_of(&push(root.path(), &segment).arg("--json").ok(&[]));
    assert_eq!(again["archived"], true, "{again:#}");
    let stored_again = std::fs::read(&stored).unwrap();
    assert!(
        before
            .iter()
            .any(|(n, bytes)| *n == format!("{name}.zst") && *bytes == stored_again),
        "the segment stored again differs from the first copy"
    );
    let before = snapshot(&wal);

    // Another file under that name: refused, the archived one untouched.
    let original = std::fs::read(&segment).unwrap();
    fake_segment(work.path(), name, 2, 16 * 1024 * 1024);
    let err = push(root.path(), &segment).fails(&[], exit::USAGE);
    assert!(err.contains("already with different content"), "{err}");
    assert!(err.contains("the archived file is kept"), "{err}");
    assert_eq!(snapshot(&wal), before);
    let dest = work.path().join("RECOVERYXLOG");
    fetch(root.path(), name, &dest).ok(&[]);
    assert!(
        std::fs::read(&dest).unwrap() == original,
        "fetch gave other bytes"
    );

    // Timeline history files and backup labels are archived the same way;
    // anything else is refused before it is read.
    for other in [
        "00000002.history",
        "000000010000000000000007.00000028.backup",
    ] {
        let file = fake_segment(work.path(), other, 3, 300);
        push(root.path(), &file).ok(&[]);
        let back = work.path().join("back");
        fetch(root.path(), other, &back).ok(&[]);
        assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&file).unwrap());
    }
    let stray = fake_segment(work.path(), "postgresql.conf", 3, 10);
    let err = push(root.path(), &stray).fails(&[], exit::USAGE);
    assert!(
        err.contains("is not the name of a file PostgreSQL archives"),
        "{err}"
    );
}

#[test]
fn a_name_not_archived_fails_quickly_in_one_line_and_creates_nothing() {
    let root = temp_root();
    let work = temp_root();
    let segment = fake_segment(work.path(), "000000010000000000000001", 1, 4096);
    push(root.path(), &segment).ok(&[]);
    let dest = work.path().join("pg_wal").join("RECOVERYXLOG");
    std::fs::create_dir(work.path().join("pg_wal")).unwrap();
    for missing in ["000000010000000000000002", "00000002.history"] {
        let started = Instant::now();
        // Any status from 1 to 125 is "not there" for PostgreSQL; the
        // documented not_found code is the one given.
        let err = fetch(root.path(), missing, &dest).fails(&[], exit::NOT_FOUND);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(
            err.contains(&format!("{missing} is not in the WAL archive")),
            "{err}"
        );
        assert_eq!(
            err.trim().lines().count(),
            1,
            "more than one line in PostgreSQL's log: {err}"
        );
        assert!(snapshot(&work.path().join("pg_wal")).is_empty());
    }
    // No root given: refused, not archived into PostgreSQL's data directory
    // (its working directory) under the default root.
    let err = Cmd::new("wal")
        .arg("push")
        .arg(s(&segment))
        .fails(&[], exit::USAGE);
    assert!(err.contains("need the archive's root"), "{err}");
    // An archive root that does not exist at all: the same answer.
    let nowhere = work.path().join("no-such-root");
    fetch(&nowhere, "000000010000000000000001", &dest).fails(&[], exit::NOT_FOUND);
}

#[test]
fn a_damaged_stored_file_or_record_is_refused_and_never_handed_over() {
    let root = temp_root();
    let work = temp_root();
    let name = "000000010000000000000003";
    let segment = fake_segment(work.path(), name, 5, 1024 * 1024);
    push(root.path(), &segment).ok(&[]);
    let stored = root.path().join("wal").join(format!("{name}.zst"));
    let good = std::fs::read(&stored).unwrap();
    let pg_wal = work.path().join("pg_wal");
    std::fs::create_dir(&pg_wal).unwrap();
    let dest = pg_wal.join("RECOVERYXLOG");

    // One bit flipped, same size: only the checksum tells.
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x01;
    std::fs::write(&stored, &bad).unwrap();
    let err = fetch(root.path(), name, &dest).fails(&[], exit::DAMAGED_BACKUP);
    assert!(
        err.contains("is damaged") && err.contains("SHA-256 does not match"),
        "{err}"
    );
    assert!(snapshot(&pg_wal).is_empty(), "something reached pg_wal");

    // Truncated, and gone.
    std::fs::write(&stored, &good[..good.len() - 10]).unwrap();
    fetch(root.path(), name, &dest).fails(&[], exit::DAMAGED_BACKUP);
    std::fs::remove_file(&stored).unwrap();
    let err = fetch(root.path(), name, &dest).fails(&[], exit::DAMAGED_BACKUP);
    assert!(err.contains("is missing"), "{err}");
    assert!(snapshot(&pg_wal).is_empty(), "something reached pg_wal");

    // A record that is not one.
    std::fs::write(&stored, &good).unwrap();
    fetch(root.path(), name, &dest).ok(&[]);
    std::fs::remove_file(&dest).unwrap();
    let record = root.path().join("wal").join(format!("{name}.json"));
    std::fs::write(&record, b"{\"name\": \"../../x\"}").unwrap();
    fetch(root.path(), name, &dest).fails(&[], exit::DAMAGED_BACKUP);
    assert!(snapshot(&pg_wal).is_empty(), "something reached pg_wal");
}

/// A fresh age key pair in `dir`: (identity file, recipient).
fn keypair(dir: &Path, file: &str) -> (String, String) {
    let path = dir.join(file);
    let out = ok(&["--json", "keygen", "--out", s(&path)], &[]);
    let v = json_of(&out);
    (
        s(&path).to_string(),
        v["recipient"].as_str().unwrap().to_string(),
    )
}

#[test]
fn an_encrypted_archive_round_trips_only_with_the_key() {
    let root = temp_root();
    let work = temp_root();
    let (identity, recipient) = keypair(work.path(), "key.txt");
    let (other_identity, _) = keypair(work.path(), "other.txt");
    let name = "000000010000000000000009";
    let segment = fake_segment(work.path(), name, 9, 2 * 1024 * 1024);

    let out = json_of(
        &push(root.path(), &segment)
            .arg("--json")
            .arg("--encrypt-to")
            .arg(&recipient)
            .ok(&[]),
    );
    assert_eq!(out["encrypted"], true, "{out:#}");
    let stored = root.path().join("wal").join(format!("{name}.zst.age"));
    assert!(std::fs::read(&stored)
        .unwrap()
        .starts_with(b"age-encryption.org/v1\n"));
    assert!(!root.path().join("wal").join(format!("{name}.zst")).exists());

    let dest = work.path().join("RECOVERYXLOG");
    let err = fetch(root.path(), name, &dest).fails(&[], exit::USAGE);
    assert!(err.contains("--identity"), "{err}");
    let err = fetch(root.path(), name, &dest)
        .arg("--identity")
        .arg(&other_identity)
        .fails(&[], exit::AUTHENTICATION);
    assert!(err.contains("not one of the keys"), "{err}");
    assert!(!dest.exists());
    // The identity from the environment, as a restore_command would have it.
    fetch(root.path(), name, &dest).ok(&[("IT_AGE_IDENTITY", identity.as_str())]);
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&segment).unwrap());
}

#[test]
fn a_repository_archive_round_trips_refuses_conflicts_and_damage() {
    let _guard = shared(&[S3]);
    let url = repository("wal");
    let root = temp_root();
    let work = temp_root();
    let (identity, recipient) = keypair(work.path(), "key.txt");

    // Local and remote copies; then a sealed one in the repository only.
    let first = fake_segment(work.path(), "000000010000000000000001", 1, 4 * 1024 * 1024);
    let out = json_of(
        &push(root.path(), &first)
            .arg("--json")
            .arg("--upload")
            .arg(&url)
            .ok(&[]),
    );
    assert_eq!(out["remote"], format!("{url}/wal"), "{out:#}");
    assert!(root
        .path()
        .join("wal/000000010000000000000001.zst")
        .exists());
    let second = fake_segment(work.path(), "000000010000000000000002", 2, 4 * 1024 * 1024);
    push(root.path(), &second)
        .arg("--upload")
        .arg(&url)
        .arg("--no-local")
        .arg("--encrypt-to")
        .arg(&recipient)
        .ok(&[]);
    assert!(!root
        .path()
        .join("wal/000000010000000000000002.json")
        .exists());
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["wal"], "staging left behind");

    // Fetched from the repository alone (an empty root), byte for byte.
    let elsewhere = temp_root();
    let dest = work.path().join("RECOVERYXLOG");
    for (name, original) in [
        ("000000010000000000000001", &first),
        ("000000010000000000000002", &second),
    ] {
        fetch(elsewhere.path(), name, &dest)
            .arg("--from")
            .arg(&url)
            .arg("--identity")
            .arg(&identity)
            .ok(&[]);
        assert!(
            std::fs::read(&dest).unwrap() == std::fs::read(original).unwrap(),
            "{name}"
        );
    }
    fetch(elsewhere.path(), "000000010000000000000003", &dest)
        .arg("--from")
        .arg(&url)
        .fails(&[], exit::NOT_FOUND);

    // Again: accepted. Different content: refused, the remote copy kept.
    push(root.path(), &second)
        .arg("--upload")
        .arg(&url)
        .arg("--no-local")
        .ok(&[]);
    fake_segment(work.path(), "000000010000000000000002", 7, 4 * 1024 * 1024);
    let err = push(root.path(), &second)
        .arg("--upload")
        .arg(&url)
        .arg("--no-local")
        .fails(&[], exit::USAGE);
    assert!(err.contains("already with different content"), "{err}");

    // A record whose object is gone: a retry uploads the segment again.
    let location = itbackup::remote::Remote::open(&url).unwrap();
    block_on(location.delete_object("wal", "000000010000000000000001.zst")).unwrap();
    push(root.path(), &first).arg("--upload").arg(&url).ok(&[]);
    fetch(elsewhere.path(), "000000010000000000000001", &dest)
        .arg("--from")
        .arg(&url)
        .ok(&[]);
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&first).unwrap());

    // A damaged remote object never reaches the destination.
    let stored = std::fs::read(root.path().join("wal/000000010000000000000001.zst")).unwrap();
    let mut bad = stored.clone();
    bad[stored.len() / 2] ^= 0x01;
    block_on(location.put_object("wal", "000000010000000000000001.zst", bad)).unwrap();
    std::fs::remove_file(&dest).unwrap();
    let err = fetch(elsewhere.path(), "000000010000000000000001", &dest)
        .arg("--from")
        .arg(&url)
        .fails(&[], exit::DAMAGED_BACKUP);
    assert!(err.contains("does not match its sha256"), "{err}");
    assert!(!dest.exists());
    let debris: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".itbackup-wal-"))
        .collect();
    assert!(debris.is_empty(), "{debris:?}");
}

#[test]
fn the_help_gives_the_exact_archive_and_restore_commands() {
    let out = ok(&["wal", "--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("archive_command = 'itbackup wal push --root /backups %p'"),
        "{help}"
    );
    assert!(
        help.contains("restore_command = 'itbackup wal fetch --root /backups %f %p'"),
        "{help}"
    );
}

#[test]
fn the_server_archives_through_wal_push_and_fetch_gives_its_segments_back() {
    let _guard = exclusive(&[Postgres]);
    let root = temp_root();
    // archive_command runs as the server's user.
    let data = PathBuf::from(required_env("IT_PG_DATA"));
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&data).unwrap());
    std::os::unix::fs::chown(root.path(), Some(owner), None).unwrap();
    let command = format!("{} wal push --root {} %p", bin(), s(root.path()));
    // Archived segments stay in pg_wal long enough to be compared.
    let _keep = SystemSetting::set("wal_keep_size", "1GB");
    let _archive = SystemSetting::set("archive_command", &command);
    assert_eq!(psql("postgres", "SHOW archive_command"), command);
    let (archived_before, failed_before, _) = archiver();

    psql(
        "postgres",
        "DROP TABLE IF EXISTS itb_wal; CREATE TABLE itb_wal (id int, pad text)",
    );
    let mut segments = Vec::new();
    for round in 0..3 {
        psql("postgres", &format!("INSERT INTO itb_wal SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g -- {round}"));
        segments.push(psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())"));
    }
    // A base backup's end: its .backup label is archived, and the call waits for it.
    let label = psql("postgres", "SET statement_timeout = '60s'; SELECT pg_backup_start('itb-wal', true); SELECT labelfile IS NOT NULL FROM pg_backup_stop(true)");
    assert!(label.ends_with('t'), "{label}");

    let deadline = Instant::now() + Duration::from_secs(60);
    let last = segments.last().unwrap().clone();
    loop {
        let (archived, failed, last_archived) = archiver();
        assert_eq!(
            failed, failed_before,
            "the archiver failed; see the server log"
        );
        if archived >= archived_before + 3 && last_archived.as_str() >= last.as_str() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not archived after 60 s: {archived} archived, last {last_archived}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let wal = root.path().join("wal");
    let labels: Vec<String> = snapshot(&wal)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.ends_with(".backup.json"))
        .collect();
    assert_eq!(labels.len(), 1, "{labels:?}");

    let work = temp_root();
    let dest = work.path().join("RECOVERYXLOG");
    for segment in &segments {
        assert!(
            wal.join(format!("{segment}.json")).exists(),
            "{segment} has no record"
        );
        fetch(root.path(), segment, &dest).ok(&[]);
        let original = std::fs::read(data.join("pg_wal").join(segment)).unwrap();
        assert_eq!(original.len(), 16 * 1024 * 1024);
        assert!(
            std::fs::read(&dest).unwrap() == original,
            "{segment} came back different"
        );
    }
    psql("postgres", "DROP TABLE itb_wal");
}

#[test]
fn status_alarms_when_the_newest_archived_segment_is_older_than_the_wal_rpo() {
    let root = temp_root();
    let work = temp_root();
    let status = |extra: &[&str]| {
        let mut cmd = Cmd::new("status")
            .root(root.path())
            .arg("--offline")
            .arg("--json");
        for arg in extra {
            cmd = cmd.arg(*arg);
        }
        json_of(&cmd.run(&[]))
    };
    let wal_alarms = |report: &Value| {
        report["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a.as_str().unwrap().contains("WAL archiving RPO breached"))
            .count()
    };

    // No archive: not an archiving set-up, nothing said about WAL.
    let report = status(&[]);
    assert!(report["wal"].is_null(), "{report:#}");

    let older = "000000010000000000000007";
    let newer = "000000010000000000000008";
    push(
        root.path(),
        &fake_segment(work.path(), older, 1, 1024 * 1024),
    )
    .ok(&[]);
    push(
        root.path(),
        &fake_segment(work.path(), newer, 2, 1024 * 1024),
    )
    .ok(&[]);
    let report = status(&[]);
    assert_eq!(report["wal"]["newest_segment"], newer, "{report:#}");
    assert_eq!(report["wal"]["rpo_ok"], true, "{report:#}");
    assert_eq!(report["wal"]["rpo_seconds"], 300);
    assert_eq!(wal_alarms(&report), 0, "{report:#}");

    // Archiving stopped an hour ago: an alarm, and exit status 1.
    let record = root.path().join("wal").join(format!("{newer}.json"));
    let mut value: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let hour_ago = (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(3600)).to_string();
    value["archived_at"] = Value::String(hour_ago);
    std::fs::write(&record, serde_json::to_vec(&value).unwrap()).unwrap();
    let report = status(&[]);
    assert_eq!(report["wal"]["rpo_ok"], false, "{report:#}");
    assert_eq!(wal_alarms(&report), 1, "{report:#}");
    let out = Cmd::new("status")
        .root(root.path())
        .arg("--offline")
        .run(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("RPO BREACHED"), "{}", text(&out));

    // A looser objective for this set-up: no alarm.
    let report = status(&["--wal-rpo", "2h"]);
    assert_eq!(report["wal"]["rpo_ok"], true, "{report:#}");
    assert_eq!(wal_alarms(&report), 0, "{report:#}");
}
