//! Bad input and bad luck: each gets a clear message, a non-zero exit, and changes nothing.

use crate::common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A database the restore would rewind, with a value changed after the backup.
struct Canary;

impl Canary {
    fn create() -> Canary {
        psql(
            "postgres",
            "DROP DATABASE IF EXISTS itb_canary WITH (FORCE)",
        );
        psql("postgres", "CREATE DATABASE itb_canary");
        psql(
            "itb_canary",
            "CREATE TABLE c (id int primary key, v text); INSERT INTO c VALUES (1, 'at backup')",
        );
        Canary
    }
    fn change_after_backup(&self) {
        psql("itb_canary", "UPDATE c SET v = 'after backup'");
    }
    fn assert_untouched(&self) {
        assert_eq!(
            psql("itb_canary", "SELECT v FROM c"),
            "after backup",
            "a failed restore changed the database"
        );
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        psql(
            "postgres",
            "DROP DATABASE IF EXISTS itb_canary WITH (FORCE)",
        );
    }
}

/// A complete backup of the current cluster in a fresh root, plus the canary changed after it.
fn backed_up() -> (tempfile::TempDir, PathBuf, Canary) {
    backed_up_with(&[], &[])
}

/// [`backed_up`] with extra backup arguments and environment.
fn backed_up_with(extra: &[&str], env: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf, Canary) {
    let canary = Canary::create();
    let (root, dir) = postgres_backup(extra, env);
    canary.change_after_backup();
    (root, dir, canary)
}

fn restore_fails(dir: &Path, code: i32, expect: &str) {
    let err = fails(&restore_args(dir, None), &[], code);
    assert!(err.contains(expect), "expected '{expect}' in:\n{err}");
    assert!(err.contains("hint:"), "no hint in:\n{err}");
}

fn tar_of(dir: &Path) -> PathBuf {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "tar"))
        .expect("a postgres tar")
}

#[test]
fn unknown_service_is_a_usage_error_listing_the_valid_ones() {
    let err = fails(
        &["backup", "--services", "postgres,mysql"],
        &[],
        exit::USAGE,
    );
    assert!(
        err.contains("mysql") && err.contains("opensearch, neo4j, postgres"),
        "{err}"
    );
    let err = fails(
        &["restore", "--services", "redis", "--yes"],
        &[],
        exit::USAGE,
    );
    assert!(err.contains("redis"), "{err}");
}

#[test]
fn missing_garbled_and_tampered_manifests_are_refused_before_any_change() {
    let _guard = exclusive(&[Postgres]);
    let (_root, dir, canary) = backed_up();
    let manifest = dir.join("backup-manifest.json");
    let original = fs::read_to_string(&manifest).unwrap();

    fs::write(&manifest, &original[..original.len() / 2]).unwrap();
    restore_fails(&dir, exit::DAMAGED_BACKUP, "not a valid manifest");

    let tampered = original.replacen("\"bytes\": ", "\"bytes\": 1", 1);
    fs::write(&manifest, tampered).unwrap();
    restore_fails(&dir, exit::DAMAGED_BACKUP, "manifest_sha256 does not match");
    let err = fails(
        &["verify", "--path", dir.to_str().unwrap()],
        &[],
        exit::DAMAGED_BACKUP,
    );
    assert!(err.contains("manifest_sha256"), "{err}");

    fs::remove_file(&manifest).unwrap();
    restore_fails(&dir, exit::NOT_FOUND, "backup-manifest.json");
    canary.assert_untouched();
}

#[test]
fn truncated_or_flipped_artifacts_are_refused_before_any_change() {
    let _guard = exclusive(&[Postgres]);
    let (_root, dir, canary) = backed_up();
    let tar = tar_of(&dir);
    let original = fs::read(&tar).unwrap();

    // One flipped byte in the middle of the data.
    let mut flipped = original.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    fs::write(&tar, &flipped).unwrap();
    let err = fails(
        &["verify", "--path", dir.to_str().unwrap()],
        &[],
        exit::DAMAGED_BACKUP,
    );
    assert!(err.contains("does not match its sha256"), "{err}");
    restore_fails(&dir, exit::DAMAGED_BACKUP, "does not match its sha256");

    // Cut short.
    fs::write(&tar, &original[..original.len() - 1000]).unwrap();
    restore_fails(&dir, exit::DAMAGED_BACKUP, "the manifest says");

    fs::write(&tar, &original).unwrap();
    ok(&["verify", "--path", dir.to_str().unwrap()], &[]);
    canary.assert_untouched();
}

#[test]
fn a_backup_from_a_newer_major_version_is_refused_before_any_change() {
    let _guard = exclusive(&[Postgres]);
    let (_root, dir, canary) = backed_up();
    let mut manifest = itbackup::manifest::Manifest::read_dir(&dir).unwrap();
    manifest
        .artifacts
        .get_mut(&itbackup::service::Service::Postgres)
        .unwrap()
        .server_version = "99.1 (from the future)".into();
    manifest.write(&dir).unwrap();
    restore_fails(&dir, exit::FAILURE, "newer than this server's");
    canary.assert_untouched();
}

#[test]
fn unreachable_server_and_wrong_password_fail_clearly_and_write_nothing() {
    let _guard = exclusive(&[Postgres]);
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();

    let err = fails(
        &["--root", root_arg, "backup", "--services", "postgres"],
        &[("PGPORT", "1")],
        exit::UNREACHABLE,
    );
    assert!(
        err.contains("postgres") && err.contains("cannot connect") && err.contains("reachable"),
        "{err}"
    );

    let err = fails(
        &["--root", root_arg, "backup", "--services", "postgres"],
        &[("PGPASSWORD", "wrong-password")],
        exit::AUTHENTICATION,
    );
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(
        err.contains("PGPASSWORD"),
        "the hint names the variable: {err}"
    );
    assert!(
        !err.contains("wrong-password"),
        "the password was printed: {err}"
    );

    assert_no_backup(root.path());

    // A restore that cannot reach the server changes nothing either.
    let (_root, dir, canary) = backed_up();
    let err = fails(
        &restore_args(&dir, None),
        &[("PGPORT", "1")],
        exit::UNREACHABLE,
    );
    assert!(err.contains("cannot connect"), "{err}");
    canary.assert_untouched();
}

/// itbackup with a time limit: a run that hangs (on a FIFO, say) is killed
/// and fails the test instead of hanging it.
fn bounded(args: &[&str]) -> std::process::Output {
    let limit = Duration::from_secs(30);
    let mut child = Command::new(bin())
        .args(args)
        .env("RUST_LOG", "itbackup=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start itbackup");
    let started = Instant::now();
    while child.try_wait().expect("poll itbackup").is_none() {
        if started.elapsed() > limit {
            child.kill().expect("kill itbackup");
            child.wait().expect("reap itbackup");
            panic!("itbackup {args:?} hung for {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("collect itbackup")
}

fn mkfifo(path: &Path) {
    let _ = fs::remove_file(path);
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Make the manifest agree with whatever the artifact now is, as a forger would.
fn manifest_matches(dir: &Path, tar: &Path) {
    use sha2::Digest;
    let bytes = fs::read(tar).unwrap();
    let mut manifest = itbackup::manifest::Manifest::read_dir(dir).unwrap();
    let record = manifest
        .artifacts
        .get_mut(&itbackup::service::Service::Postgres)
        .unwrap();
    record.sha256 = hex::encode(sha2::Sha256::digest(&bytes));
    record.bytes = bytes.len() as u64;
    record.members.clear();
    manifest.write(dir).unwrap();
}

/// Artifacts and manifests must be regular files inside the backup
/// directory: a FIFO or a link to /dev/zero hung verify and restore (the size
/// was checked after hashing), a FIFO manifest hung list, status and prune
/// (which then held the root's lock), a link to a copy elsewhere was
/// accepted, and a refused file's first bytes were printed.
#[test]
fn special_files_are_refused_fast_without_printing_their_content() {
    let _guard = exclusive(&[Postgres]);
    let (_root, dir, canary) = backed_up();
    let dir_arg = dir.to_str().unwrap();
    let tar = tar_of(&dir);
    let original = fs::read(&tar).unwrap();
    let manifest_text = fs::read(dir.join("backup-manifest.json")).unwrap();
    let outside = temp_root();
    let verify = ["verify", "--path", dir_arg];
    let restore = ["restore", "--path", dir_arg, "--yes"];

    let refused = |what: &str, expect: &str| {
        for args in [&verify[..], &restore[..]] {
            let out = bounded(args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(exit::DAMAGED_BACKUP),
                "{what}: {args:?}\n{}",
                text(&out)
            );
            assert!(
                err.contains(expect),
                "{what}: expected '{expect}' in\n{err}"
            );
            assert!(err.contains("hint:"), "{what}: no hint in\n{err}");
            assert!(
                !err.contains("root:x:0"),
                "{what}: file content printed\n{err}"
            );
        }
    };

    mkfifo(&tar);
    refused("a FIFO artifact", "not a regular file");

    fs::remove_file(&tar).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &tar).unwrap();
    refused("a link to /dev/zero", "symbolic link");

    // A faithful copy outside the backup directory is still not the backup.
    let copy = outside.path().join("copy.tar");
    fs::write(&copy, &original).unwrap();
    fs::remove_file(&tar).unwrap();
    std::os::unix::fs::symlink(&copy, &tar).unwrap();
    refused("a link to a copy elsewhere", "symbolic link");

    // A link to /etc/passwd, with a manifest forged to match it.
    fs::remove_file(&tar).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &tar).unwrap();
    manifest_matches(&dir, Path::new("/etc/passwd"));
    refused("a link to /etc/passwd", "symbolic link");
    // The same bytes as a regular file: refused by the decode, unprinted.
    fs::remove_file(&tar).unwrap();
    fs::copy("/etc/passwd", &tar).unwrap();
    for args in [&verify[..], &restore[..]] {
        let out = bounded(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(exit::DAMAGED_BACKUP),
            "{args:?}\n{}",
            text(&out)
        );
        assert!(!err.contains("root:x:0"), "file content printed\n{err}");
    }

    fs::write(&tar, &original).unwrap();
    fs::write(dir.join("backup-manifest.json"), &manifest_text).unwrap();
    ok(&verify, &[]);

    // A FIFO in place of the manifest: every command that reads it answers.
    let manifest = dir.join("backup-manifest.json");
    mkfifo(&manifest);
    let root_arg = dir.parent().unwrap().to_str().unwrap();
    let out = bounded(&["--root", root_arg, "list"]);
    assert!(out.status.code().is_some(), "{}", text(&out));
    let out = bounded(&["--root", root_arg, "status", "--offline"]);
    assert!(out.status.code().is_some(), "{}", text(&out));
    let out = bounded(&["--root", root_arg, "prune", "--keep-last", "1"]);
    assert!(out.status.code().is_some(), "{}", text(&out));
    assert!(manifest.exists(), "prune removed what it could not read");
    let out = bounded(&["verify", "--path", dir_arg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(exit::DAMAGED_BACKUP),
        "{}",
        text(&out)
    );
    assert!(err.contains("not a regular file"), "{err}");
    canary.assert_untouched();
}

/// A duplicate key was resolved last-wins (so a manifest could say two
/// things at once and pass its checksum), and a manifest of any size was
/// read whole into memory.
#[test]
fn manifests_with_duplicate_keys_or_of_absurd_size_are_refused() {
    let _guard = exclusive(&[Postgres]);
    let (_root, dir, canary) = backed_up();
    let dir_arg = dir.to_str().unwrap();
    let path = dir.join("backup-manifest.json");
    let original = fs::read_to_string(&path).unwrap();

    // 17 MiB of spaces after a valid manifest: refused by its size, unread.
    let mut huge = original.clone().into_bytes();
    huge.resize(17 * 1024 * 1024, b' ');
    fs::write(&path, &huge).unwrap();
    let err = fails(&["verify", "--path", dir_arg], &[], exit::DAMAGED_BACKUP);
    assert!(err.contains("at most 16777216"), "{err}");
    restore_fails(&dir, exit::DAMAGED_BACKUP, "at most 16777216");

    // The first of two "postgres" in "services" names another file; the
    // last names the real one, so last-wins parsing passed the checksum.
    let doubled = original.replacen(
        "\"services\": {",
        "\"services\": {\n    \"postgres\": \"elsewhere.tar\",",
        1,
    );
    assert_ne!(doubled, original);
    fs::write(&path, &doubled).unwrap();
    let err = fails(&["verify", "--path", dir_arg], &[], exit::DAMAGED_BACKUP);
    assert!(err.contains("duplicate key \"postgres\""), "{err}");
    restore_fails(&dir, exit::DAMAGED_BACKUP, "duplicate key");
    // Deeper levels too: a repeated "sha256" inside the artifact's record.
    let nested = original.replacen("\"sha256\": ", "\"sha256\": \"0\", \"sha256\": ", 1);
    fs::write(&path, &nested).unwrap();
    restore_fails(&dir, exit::DAMAGED_BACKUP, "duplicate key \"sha256\"");

    fs::write(&path, &original).unwrap();
    ok(&["verify", "--path", dir_arg], &[]);
    canary.assert_untouched();
}

/// Rewrite the PostgreSQL tar in `dir` with each member name passed through
/// `rename` (raw header bytes: the tar crate itself refuses to write such
/// names), and make the manifest agree, as a forger would.
fn forge_member_names(dir: &Path, rename: impl Fn(&str) -> String, in_manifest: bool) {
    let tar = tar_of(dir);
    let mut members = Vec::new();
    let mut archive = tar::Archive::new(fs::File::open(&tar).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        members.push((name, data));
    }
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in &members {
        let mut header = tar::Header::new_gnu();
        let forged = rename(name);
        header.as_gnu_mut().unwrap().name[..forged.len()].copy_from_slice(forged.as_bytes());
        header.set_size(data.len() as u64);
        header.set_mode(0o600);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, data.as_slice()).unwrap();
    }
    let bytes = builder.into_inner().unwrap();
    fs::write(&tar, &bytes).unwrap();
    let mut manifest = itbackup::manifest::Manifest::read_dir(dir).unwrap();
    let record = manifest
        .artifacts
        .get_mut(&itbackup::service::Service::Postgres)
        .unwrap();
    use sha2::Digest;
    record.sha256 = hex::encode(sha2::Sha256::digest(&bytes));
    record.bytes = bytes.len() as u64;
    if !in_manifest {
        manifest.write(dir).unwrap();
        return;
    }
    for member in &mut record.members {
        member.name = rename(&member.name);
    }
    if let Some(databases) = record
        .details
        .get_mut("databases")
        .and_then(|d| d.as_array_mut())
    {
        for db in databases {
            if let Some(member) = db.get("member").and_then(|m| m.as_str()).map(&rename) {
                db["member"] = member.into();
            }
        }
    }
    manifest.write(dir).unwrap();
}

/// Member names with `..` or a leading `/` were accepted (flattened into
/// the scratch directory); they are refused like the OpenSearch case,
/// before anything changes.
#[test]
fn postgres_tar_members_that_climb_out_or_are_absolute_are_refused() {
    let _guard = exclusive(&[Postgres]);
    for (what, rename, expect) in [
        (
            "'..'",
            (|n: &str| format!("../{n}")) as fn(&str) -> String,
            "'..'",
        ),
        ("absolute", |n: &str| format!("/{n}"), "absolute"),
    ] {
        // The archive alone (its manifest names the real members), then
        // both: each level refuses on its own.
        for (in_manifest, expect) in [(false, expect), (true, "is not a relative path")] {
            let (_root, dir, canary) = backed_up();
            forge_member_names(&dir, rename, in_manifest);
            let err = fails(
                &["verify", "--path", dir.to_str().unwrap()],
                &[],
                exit::DAMAGED_BACKUP,
            );
            assert!(err.contains(expect), "{what}: {err}");
            restore_fails(&dir, exit::DAMAGED_BACKUP, expect);
            canary.assert_untouched();
        }
    }
}

/// With --json a failed run printed nothing on standard output; it prints
/// `{"error": {"kind", "exit_code", "service", "step", "message", "hint"}}`
/// (design.md, docs/exit-codes.md).
#[test]
fn a_failed_run_with_json_prints_the_error_object_on_stdout() {
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    let out = itbackup(
        &[
            "--root",
            root_arg,
            "--json",
            "backup",
            "--services",
            "postgres",
        ],
        &[("PGPORT", "1")],
    );
    assert_eq!(out.status.code(), Some(exit::UNREACHABLE), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON on stdout ({e})\n{}", text(&out)));
    let error = &v["error"];
    assert_eq!(error["kind"], "unreachable", "{v:#}");
    assert_eq!(error["exit_code"], exit::UNREACHABLE, "{v:#}");
    assert_eq!(error["service"], "postgres", "{v:#}");
    assert!(
        error["step"].as_str().is_some_and(|s| !s.is_empty()),
        "{v:#}"
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{v:#}"
    );
    assert!(
        error["hint"].as_str().is_some_and(|h| !h.is_empty()),
        "{v:#}"
    );
    // The human form stays on standard error.
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: postgres"));

    let out = itbackup(&["--root", root_arg, "--json", "prune"], &[]);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON on stdout ({e})\n{}", text(&out)));
    assert_eq!(v["error"]["kind"], "usage", "{v:#}");
    assert_eq!(v["error"]["exit_code"], exit::USAGE, "{v:#}");
    assert_eq!(v["error"]["service"], serde_json::Value::Null, "{v:#}");
}

#[test]
fn a_second_concurrent_run_is_told_who_holds_the_lock() {
    let _guard = exclusive(&[Postgres]);
    let root = temp_root();
    fs::create_dir_all(root.path()).unwrap();
    let mut holder = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.path().join(".itbackup.lock"))
        .unwrap();
    holder.lock().unwrap();
    holder
        .write_all(b"itbackup backup (pid 4242, started earlier)\n")
        .unwrap();
    let err = fails(
        &[
            "--root",
            root.path().to_str().unwrap(),
            "backup",
            "--services",
            "postgres",
        ],
        &[],
        exit::LOCKED,
    );
    assert!(err.contains("locked by itbackup backup (pid 4242"), "{err}");
    drop(holder);
    ok(
        &[
            "--root",
            root.path().to_str().unwrap(),
            "backup",
            "--services",
            "postgres",
        ],
        &[],
    );
}

/// Peak resident memory of a running process, in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every process's command line, joined: to look for secrets in argv.
fn all_command_lines() -> String {
    let mut all = String::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(mut f) = fs::File::open(entry.path().join("cmdline")) {
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            all.push_str(&String::from_utf8_lossy(&buf).replace('\0', " "));
            all.push('\n');
        }
    }
    all
}

fn create_big_database() {
    psql("postgres", "DROP DATABASE IF EXISTS itb_big WITH (FORCE)");
    psql("postgres", "CREATE DATABASE itb_big");
    psql(
        "itb_big",
        "CREATE TABLE big AS SELECT i, md5(i::text) || md5((i * 7)::text) AS payload, random() AS r FROM generate_series(1, 1500000) i",
    );
}

#[test]
fn a_backup_killed_half_way_is_never_taken_for_complete_and_the_next_run_completes() {
    let _guard = exclusive(&[Postgres]);
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    ok(
        &[
            "--root",
            root_arg,
            "backup",
            "--services",
            "postgres",
            "--timestamp",
            "20250101_000000",
        ],
        &[],
    );
    create_big_database();

    let mut child = Command::new(bin())
        .args([
            "--root",
            root_arg,
            "backup",
            "--services",
            "postgres",
            "--timestamp",
            "20250102_000000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let killed_dir = root.path().join("20250102_000000");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !killed_dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !killed_dir.join("backup-manifest.json").exists(),
        "the backup finished before it was killed: make the database bigger"
    );

    let listed = ok(&["--root", root_arg, "--json", "list"], &[]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let states: Vec<(String, bool)> = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["complete"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(
        states.contains(&("20250101_000000".into(), true)),
        "{states:?}"
    );
    assert!(
        states.contains(&("20250102_000000".into(), false)),
        "{states:?}"
    );

    let plan = ok(&["--root", root_arg, "restore", "--dry-run"], &[]);
    assert!(
        String::from_utf8_lossy(&plan.stdout).contains("20250101_000000"),
        "restore would not pick the complete backup"
    );

    // The same run again completes over the debris.
    ok(
        &[
            "--root",
            root_arg,
            "backup",
            "--services",
            "postgres",
            "--timestamp",
            "20250102_000000",
        ],
        &[],
    );
    ok(
        &[
            "--root",
            root_arg,
            "verify",
            "--path",
            killed_dir.to_str().unwrap(),
        ],
        &[],
    );
    psql("postgres", "DROP DATABASE IF EXISTS itb_big WITH (FORCE)");
}

#[test]
fn memory_stays_flat_and_no_secret_reaches_argv_logs_or_manifest() {
    let _guard = exclusive(&[Postgres]);
    create_big_database();
    let secret = "S3cret-itb-7f2a9c";
    psql("postgres", "DROP ROLE IF EXISTS itb_operator");
    psql(
        "postgres",
        &format!("CREATE ROLE itb_operator SUPERUSER LOGIN PASSWORD '{secret}'"),
    );
    let root = temp_root();
    let mut child = Command::new(bin())
        .args([
            "--root",
            root.path().to_str().unwrap(),
            "backup",
            "--services",
            "postgres",
        ])
        .env("PGUSER", "itb_operator")
        .env("PGPASSWORD", secret)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    let mut leaked_in_argv = false;
    while child.try_wait().unwrap().is_none() {
        peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        let lines = all_command_lines();
        leaked_in_argv |= lines.contains(secret);
        std::thread::sleep(Duration::from_millis(25));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!leaked_in_argv, "the password appeared in a process's argv");
    let logs = text(&out);
    assert!(
        !logs.contains(secret),
        "the password appeared in the output"
    );
    let dir = only_backup(root.path());
    let manifest = fs::read_to_string(dir.join("backup-manifest.json")).unwrap();
    assert!(!manifest.contains(secret));
    let tar = tar_of(&dir);
    let size = fs::metadata(&tar).unwrap().len();
    assert!(
        size > 20 << 20,
        "the test database is too small to show streaming ({size} bytes)"
    );
    assert!(
        peak < 60 * 1024,
        "peak RSS {peak} KiB while writing a {size}-byte artifact"
    );

    // The tar's tail really is the last member's end (not a stale partial write).
    let mut f = fs::File::open(&tar).unwrap();
    f.seek(SeekFrom::End(-1024)).unwrap();
    let mut tail = [0u8; 1024];
    f.read_exact(&mut tail).unwrap();
    assert!(
        tail.iter().all(|b| *b == 0),
        "tar archive is not terminated"
    );

    psql("postgres", "DROP ROLE IF EXISTS itb_operator");
    psql("postgres", "DROP DATABASE IF EXISTS itb_big WITH (FORCE)");
}

/// Backs up the PostgreSQL store with extra arguments (and environment) into a
/// fresh root; returns the root and the backup directory.
fn postgres_backup(extra: &[&str], env: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let root = temp_root();
    let dir = backup_into(root.path(), "postgres", extra, env);
    (root, dir)
}

/// Databases named like the safety copies a restore keeps while it works.
fn restore_leftovers() -> String {
    psql(
        "postgres",
        "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE 'itbackup\\_%'",
    )
}

/// Defect: a plain-format restore run by a superuser that is not `postgres`
/// dropped the databases, then stopped at `DROP ROLE IF EXISTS postgres` (the
/// bootstrap superuser cannot be dropped), and every rerun failed there too.
#[test]
fn a_plain_restore_by_another_superuser_restores_and_drops_no_role() {
    let _guard = exclusive(&[Postgres]);
    psql("postgres", "DROP ROLE IF EXISTS itb_admin");
    psql(
        "postgres",
        "CREATE ROLE itb_admin SUPERUSER LOGIN PASSWORD 'itb-admin-pw'",
    );
    let admin = [("PGUSER", "itb_admin"), ("PGPASSWORD", "itb-admin-pw")];
    let (_root, dir, canary) = backed_up_with(&["--postgres-format", "plain"], &admin);
    // A role created after the backup owns a table: dropping roles would fail here too.
    psql("postgres", "DROP ROLE IF EXISTS itb_later");
    psql("postgres", "CREATE ROLE itb_later");
    psql(
        "itb_canary",
        "CREATE TABLE later_owned (x int); ALTER TABLE later_owned OWNER TO itb_later",
    );
    let out = itbackup(&restore_args(&dir, None), &admin);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert_eq!(
        psql("itb_canary", "SELECT v FROM c"),
        "at backup",
        "{report}"
    );
    assert_eq!(
        psql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname IN ('postgres', 'itb_admin')"
        ),
        "2"
    );
    assert_eq!(restore_leftovers(), "");
    drop(canary);
    psql("postgres", "DROP ROLE IF EXISTS itb_later");
    psql("postgres", "DROP ROLE itb_admin");
}

/// A database whose schema, large objects and database-level properties
/// changed after the backup.
fn create_changing_database() {
    psql(
        "postgres",
        "DROP DATABASE IF EXISTS itb_schema WITH (FORCE)",
    );
    psql("postgres", "CREATE DATABASE itb_schema");
    psql(
        "itb_schema",
        "CREATE SCHEMA app; \
         CREATE TABLE app.t (id int PRIMARY KEY, v text); \
         INSERT INTO app.t SELECT g, 'row ' || g FROM generate_series(1, 1500) g; \
         SELECT lo_from_bytea(0, 'large object ' || g::text::bytea) FROM generate_series(1, 3) g; \
         COMMENT ON DATABASE itb_schema IS 'at backup'; \
         ALTER DATABASE itb_schema SET work_mem = '7MB'",
    );
}

fn database_state(database: &str) -> String {
    psql(
        "postgres",
        &format!(
            "SELECT shobj_description(d.oid, 'pg_database') || ' ' || \
               coalesce((SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting \
                         WHERE setdatabase = d.oid AND setrole = 0), '-') \
             FROM pg_database d WHERE datname = '{database}'"
        ),
    )
}

/// Defect: one table added to an existing schema after the backup made
/// `pg_restore --clean` drop everything, then fail on `DROP SCHEMA app`,
/// leaving the database empty but for the new table; the database's comment
/// and settings kept their changed values; large objects were not counted.
#[test]
fn a_restore_over_a_changed_schema_gives_back_exactly_the_backup() {
    let _guard = exclusive(&[Postgres]);
    create_changing_database();
    let (_root, dir) = postgres_backup(&[], &[]);
    let manifest = manifest_json(&dir);
    assert_eq!(
        manifest["artifacts"]["postgres"]["counts"]
            ["itb_schema/pg_catalog.pg_largeobject_metadata"],
        3,
        "large objects are counted in the manifest"
    );
    psql(
        "itb_schema",
        "CREATE TABLE app.added (x int); INSERT INTO app.added VALUES (1); \
         DELETE FROM app.t WHERE id > 10; \
         SELECT lo_unlink(oid) FROM pg_largeobject_metadata; \
         COMMENT ON DATABASE itb_schema IS 'changed'; \
         ALTER DATABASE itb_schema SET work_mem = '9MB'",
    );
    let out = itbackup(&restore_args(&dir, None), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(psql("itb_schema", "SELECT count(*) FROM app.t"), "1500");
    assert_eq!(
        psql("itb_schema", "SELECT count(*) FROM pg_largeobject_metadata"),
        "3"
    );
    assert_eq!(
        psql(
            "itb_schema",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'added'"
        ),
        "0"
    );
    assert_eq!(database_state("itb_schema"), "at backup work_mem=7MB");
    assert_eq!(restore_leftovers(), "");
    psql("postgres", "DROP DATABASE itb_schema WITH (FORCE)");
}

/// `itb_unloadable`, whose dump pg_restore cannot load: a CHECK calls a
/// function whose body names a table without its schema, and pg_restore
/// runs with an empty search_path.
fn create_unloadable_database() {
    psql(
        "postgres",
        "DROP DATABASE IF EXISTS itb_unloadable WITH (FORCE)",
    );
    psql("postgres", "CREATE DATABASE itb_unloadable");
    psql(
        "itb_unloadable",
        "CREATE TABLE lim (v int); INSERT INTO lim VALUES (100); \
         CREATE FUNCTION below_lim(x int) RETURNS bool LANGUAGE sql AS 'SELECT x < (SELECT v FROM lim)'; \
         CREATE TABLE t (x int CHECK (below_lim(x))); INSERT INTO t VALUES (1), (2)",
    );
}

/// A dump pg_restore cannot load (a CHECK calls a function whose body names
/// a table without its schema, and pg_restore runs with an empty search_path)
/// fails in the middle of the restore: the database must be back exactly as
/// it was before the restore, and the other databases of the set with it.
#[test]
fn a_restore_that_fails_half_way_puts_every_database_back_as_it_was() {
    let _guard = exclusive(&[Postgres]);
    create_unloadable_database();
    let (_root, dir, canary) = backed_up();
    psql("itb_unloadable", "INSERT INTO t VALUES (3)");
    let err = fails(&restore_args(&dir, None), &[], exit::STORE_REFUSED);
    assert!(err.contains("itb_unloadable"), "{err}");
    assert!(err.contains("put back"), "{err}");
    canary.assert_untouched();
    assert_eq!(psql("itb_unloadable", "SELECT count(*) FROM t"), "3");
    assert_eq!(restore_leftovers(), "");
    psql("postgres", "DROP DATABASE itb_unloadable WITH (FORCE)");
}

/// The safety name a restore keeps `database` under while it replaces it.
fn safety_name(database: &str) -> String {
    psql(
        "postgres",
        &format!(
            "SELECT 'itbackup_old_' || substr(encode(sha256('{database}'::bytea), 'hex'), 1, 16)"
        ),
    )
}

/// A restore killed inside `DROP DATABASE` of a safety copy, once every
/// database had loaded, leaves that copy invalid (`datconnlimit = -2`, which
/// DROP DATABASE sets first), and PostgreSQL refuses to alter or rename an
/// invalid database. Found by the fault injection: "drop the replaced
/// databases: cannot alter invalid database". The rerun must drop the
/// half-dropped copy and restore as usual.
#[test]
fn a_rerun_drops_a_safety_copy_a_killed_restore_left_half_dropped() {
    let _guard = exclusive(&[Postgres]);
    let canary = Canary::create();
    let (_root, dir) = postgres_backup(&[], &[]);
    canary.change_after_backup();
    let safety = safety_name("itb_canary");
    psql("postgres", &format!("DROP DATABASE IF EXISTS {safety}"));
    psql("postgres", &format!("CREATE DATABASE {safety}"));
    psql(
        "postgres",
        &format!("UPDATE pg_database SET datconnlimit = -2 WHERE datname = '{safety}'"),
    );
    let out = itbackup(&["restore", "--path", dir.to_str().unwrap(), "--yes"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(psql("itb_canary", "SELECT v FROM c"), "at backup");
    assert_eq!(restore_leftovers(), "");
    drop(canary);
}

/// A plain-format restore killed after it renamed both `postgres` and
/// `template1` aside (its work database exists) leaves a cluster where the
/// usual bootstrap databases are missing: the rerun must still connect, put
/// them back from the backup and drop the safety copies.
#[test]
fn a_rerun_connects_when_a_killed_plain_restore_left_postgres_and_template1_aside() {
    let _guard = exclusive(&[Postgres]);
    let canary = Canary::create();
    let (_root, dir) = postgres_backup(&["--postgres-format", "plain"], &[]);
    canary.change_after_backup();
    let (postgres_aside, template1_aside) = (safety_name("postgres"), safety_name("template1"));
    psql(
        "template1",
        "CREATE DATABASE itbackup_restore_work TEMPLATE template0",
    );
    psql(
        "itbackup_restore_work",
        &format!("ALTER DATABASE postgres RENAME TO {postgres_aside}"),
    );
    psql(
        "itbackup_restore_work",
        &format!("ALTER DATABASE template1 IS_TEMPLATE false; ALTER DATABASE template1 RENAME TO {template1_aside}"),
    );
    let out = itbackup(&["restore", "--path", dir.to_str().unwrap(), "--yes"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(psql("itb_canary", "SELECT v FROM c"), "at backup");
    assert_eq!(
        psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname IN ('postgres', 'template1')"
        ),
        "2"
    );
    assert_eq!(restore_leftovers(), "");
    drop(canary);
}

/// Roles named `itb_r_*`: attributes, password hash, settings and
/// memberships, one line each, for comparing before and after.
fn roles_state() -> String {
    psql(
        "postgres",
        "SELECT string_agg(line, E'\\n' ORDER BY line) FROM ( \
           SELECT a.rolname || ' ' || a.rolcanlogin || ' ' || a.rolcreatedb || ' ' || a.rolconnlimit \
                  || ' ' || coalesce(a.rolpassword, '-') \
                  || ' ' || coalesce((SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting \
                                      WHERE setrole = a.oid AND setdatabase = 0), '-') \
                  || ' in ' || coalesce((SELECT string_agg(g.rolname, ',' ORDER BY g.rolname) \
                                         FROM pg_auth_members m JOIN pg_authid g ON g.oid = m.roleid \
                                         WHERE m.member = a.oid), '-') AS line \
           FROM pg_authid a WHERE a.rolname LIKE 'itb\\_r\\_%') lines",
    )
}

fn drop_test_roles() {
    psql(
        "postgres",
        "DROP ROLE IF EXISTS itb_r_kept; DROP ROLE IF EXISTS itb_r_group; DROP ROLE IF EXISTS itb_r_gone",
    );
}

/// A restore that fails once the roles of the backup were applied (its
/// database does not load) must put the roles back too: passwords,
/// attributes, settings and memberships as they were before the restore,
/// and no role of the backup left behind that did not exist.
#[test]
fn a_restore_that_fails_half_way_puts_the_roles_back_as_they_were() {
    let _guard = exclusive(&[Postgres]);
    for format in ["custom", "plain"] {
        drop_test_roles();
        create_unloadable_database();
        psql(
            "postgres",
            "CREATE ROLE itb_r_group; CREATE ROLE itb_r_gone; \
             CREATE ROLE itb_r_kept LOGIN PASSWORD 'pw-at-backup' CONNECTION LIMIT 5; \
             ALTER ROLE itb_r_kept SET work_mem = '3MB'; GRANT itb_r_group TO itb_r_kept",
        );
        let (_root, dir) = postgres_backup(&["--postgres-format", format], &[]);
        psql(
            "postgres",
            "ALTER ROLE itb_r_kept PASSWORD 'pw-after' CONNECTION LIMIT 7 CREATEDB; \
             ALTER ROLE itb_r_kept SET work_mem = '4MB'; REVOKE itb_r_group FROM itb_r_kept; \
             DROP ROLE itb_r_gone",
        );
        let before = roles_state();
        let err = fails(&restore_args(&dir, None), &[], exit::STORE_REFUSED);
        assert!(err.contains("put back"), "{format}: {err}");
        assert_eq!(
            roles_state(),
            before,
            "{format}: the roles were not put back\n{err}"
        );
        assert_eq!(restore_leftovers(), "", "{format}");
    }
    psql("postgres", "DROP DATABASE itb_unloadable WITH (FORCE)");
    drop_test_roles();
}

/// Defect: the lock belonged to the backup root, so two restores of the same
/// servers from different roots (or `restore --from` beside `restore --path`)
/// ran at once and corrupted the store. Now each server has one writer at a
/// time, whatever the root: here another process holds PostgreSQL's lock.
#[test]
fn a_server_being_written_by_another_run_is_refused_whatever_the_root() {
    let _guard = exclusive(&[Postgres]);
    let (_root, dir, canary) = backed_up();
    let other_root = temp_root();
    let other_dir = other_root.path().join("copy");
    fs::create_dir_all(&other_dir).unwrap();
    for entry in fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), other_dir.join(entry.file_name())).unwrap();
    }
    // Another itbackup process, as far as the lock can tell: the lock is the
    // file's flock, and this test process holds it.
    let key = itbackup::lock::server_key(
        itbackup::service::Service::Postgres,
        &format!("{}:{}", required_env("PGHOST"), required_env("PGPORT")),
    );
    let held = itbackup::lock::StoreLock::acquire(
        itbackup::service::Service::Postgres,
        &key,
        "restore (the other run)",
    )
    .unwrap();
    let other = other_root.path().to_str().unwrap();
    for args in [
        vec!["restore", "--path", other_dir.to_str().unwrap(), "--yes"],
        vec!["restore", "--path", dir.to_str().unwrap(), "--yes"],
        vec!["--root", other, "backup", "--services", "postgres"],
    ] {
        let err = fails(&args, &[], exit::LOCKED);
        assert!(
            err.contains("is being written by itbackup restore (the other run) (pid"),
            "{args:?}: {err}"
        );
        assert!(err.contains("hint:"), "{err}");
        canary.assert_untouched();
    }
    drop(held);
    ok(&restore_args(&other_dir, None), &[]);
    assert_eq!(psql("itb_canary", "SELECT v FROM c"), "at backup");
}

/// Defect: a plain-format restore killed while template1 was renamed aside
/// left the cluster without template1. A custom-format restore, which does
/// not replace template1, then failed at its first step (the roles are
/// applied through template1) and never put it back, nor did any later run.
#[test]
fn a_restore_puts_back_template1_an_interrupted_plain_restore_left_aside() {
    let _guard = exclusive(&[Postgres]);
    let (_root, dir, canary) = backed_up();
    // What the killed run leaves: template1 under its safety name (derived
    // from a hash of the name, see stores/postgres/replace.rs).
    let safety = "itbackup_old_2285d22431ac6548";
    psql(
        "postgres",
        &format!("ALTER DATABASE template1 RENAME TO {safety}"),
    );
    let out = itbackup(&restore_args(&dir, None), &[]);
    let template1 = || {
        psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'template1' AND datistemplate",
        )
    };
    // Whatever the outcome, the other tests get their template1 back.
    if template1() == "0" {
        psql(
            "postgres",
            &format!("ALTER DATABASE {safety} RENAME TO template1"),
        );
        panic!("template1 was not put back:\n{}", text(&out));
    }
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(restore_leftovers(), "");
    assert_eq!(psql("itb_canary", "SELECT v FROM c"), "at backup");
    drop(canary);
}

/// Defect: while an interrupted restore's safety copy held a database's data
/// from before it, a backup took the (possibly partial) database under its
/// name, left the copy out with only a warning, and counted as complete.
#[test]
fn a_backup_is_refused_while_an_interrupted_restore_holds_a_safety_copy() {
    let _guard = exclusive(&[Postgres]);
    let copy = "itbackup_old_0123456789abcdef";
    /// Drops the copy however the test ends.
    struct Dropped(&'static str);
    impl Drop for Dropped {
        fn drop(&mut self) {
            psql("postgres", &format!("DROP DATABASE IF EXISTS {}", self.0));
        }
    }
    let dropped = Dropped(copy);
    psql("postgres", &format!("DROP DATABASE IF EXISTS {copy}"));
    psql("postgres", &format!("CREATE DATABASE {copy}"));
    let root = temp_root();
    for format in ["custom", "plain"] {
        let err = Cmd::backup(root.path())
            .services("postgres")
            .arg("--postgres-format")
            .arg(format)
            .fails(&[], exit::FAILURE);
        assert!(
            err.contains(copy) && err.contains("hint:"),
            "{format}: {err}"
        );
        assert_no_backup(root.path());
    }
    drop(dropped);
    Cmd::backup(root.path()).services("postgres").ok(&[]);
}
