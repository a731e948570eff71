//! A full disk, on either side: a backup that runs out of space leaves nothing
//! that looks like a backup, and a restore that would run out of space stops
//! before it has changed any store. The disks are small tmpfs mounts (the
//! tests run as root, like CI on this machine).

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A database whose dump (about 1 MiB compressed) does not fit a small disk.
struct Filler;

impl Filler {
    fn create() -> Filler {
        psql(
            "postgres",
            "DROP DATABASE IF EXISTS itb_filler WITH (FORCE)",
        );
        psql("postgres", "CREATE DATABASE itb_filler");
        psql(
            "itb_filler",
            "CREATE TABLE f AS SELECT i, (SELECT string_agg(md5(random()::text || i || j), '') FROM generate_series(1, 32) j) AS payload FROM generate_series(1, 2000) i",
        );
        Filler
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        psql(
            "postgres",
            "DROP DATABASE IF EXISTS itb_filler WITH (FORCE)",
        );
    }
}

/// A fresh index of 60 documents of 4 KiB random letters: about 250 KB that
/// compress poorly, so it outgrows a small disk.
fn random_index(index: &str) {
    opensearch(reqwest::Method::DELETE, index, None);
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for doc in 0..60 {
        let text: String = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'a' + (state % 26) as u8)
            })
            .collect();
        opensearch(
            reqwest::Method::PUT,
            &format!("{index}/_doc/{doc}"),
            Some(serde_json::json!({ "text": text })),
        );
    }
    opensearch(reqwest::Method::POST, &format!("{index}/_refresh"), None);
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_backup_that_fills_the_disk_fails_clearly_and_leaves_nothing() {
    let _guard = exclusive(&[Postgres, Opensearch]);
    let _filler = Filler::create();
    let index = "itb-full-export";
    random_index(index);
    let disk = SmallDisk::mount(128 * 1024);
    let root = disk.path().to_str().unwrap();

    // pg_dump's own file, and the logical export's stream (shared with Neo4j's).
    for (service, extra) in [
        ("postgres", vec![]),
        (
            "opensearch",
            vec!["--opensearch-method", "logical", "--indices", index],
        ),
    ] {
        let mut args = vec!["--root", root, "backup", "--services", service];
        args.extend(extra);
        let err = fails(&args, &[], exit::NO_SPACE);
        assert!(
            err.contains("No space left on device") && err.contains("the disk is full"),
            "the error should say the disk is full:\n{err}"
        );
        assert!(
            err.contains(service),
            "the error should name the service:\n{err}"
        );
        // No artifact, partial file or manifest is left to take space or be mistaken for a backup.
        let left = disk.files_but_the_lock();
        assert!(
            left.is_empty(),
            "{service}: files left on the full disk: {left:?}"
        );
        let listed = ok(&["--root", root, "--json", "list"], &[]);
        let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
        assert_eq!(
            listed["backups"].as_array().map(|b| b.len()),
            Some(0),
            "{service}: list shows a backup after a failed run: {listed}"
        );
        // The lock went with the run: the next attempt meets the disk again, not a lock.
        let again = fails(&args, &[], exit::NO_SPACE);
        assert!(!again.contains("lock"), "{again}");
    }
    opensearch(reqwest::Method::DELETE, index, None);
}

#[test]
fn a_restore_without_room_to_extract_stops_before_any_store_changes() {
    let _guard = exclusive(&[Postgres, Opensearch]);
    let _filler = Filler::create();
    let index = "itb-full-disk";
    opensearch(reqwest::Method::DELETE, index, None);
    opensearch(
        reqwest::Method::PUT,
        &format!("{index}/_doc/before?refresh=true"),
        Some(serde_json::json!({"v": "at backup"})),
    );

    // A complete backup of both stores on an ordinary disk.
    let roomy = temp_root();
    let backup = backup_into(
        roomy.path(),
        "postgres,opensearch",
        &["--indices", index],
        &[],
    );
    psql(
        "itb_filler",
        "UPDATE f SET payload = 'after backup' WHERE i = 1",
    );
    opensearch(
        reqwest::Method::PUT,
        &format!("{index}/_doc/after?refresh=true"),
        Some(serde_json::json!({"v": "after backup"})),
    );

    // The same backup on a disk with room for it but not for the extracted dumps.
    let backup_bytes: u64 = fs::read_dir(&backup)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let disk = SmallDisk::mount(2 * backup_bytes + (4 << 20));
    let copied = disk.path().join(backup.file_name().unwrap());
    copy_tree(&backup, &copied);
    disk.fill_leaving(256 * 1024);

    let err = fails(&restore_args(&copied, None), &[], exit::NO_SPACE);
    assert_eq!(
        psql("itb_filler", "SELECT payload FROM f WHERE i = 1"),
        "after backup",
        "the failed restore changed PostgreSQL"
    );
    let count = opensearch(reqwest::Method::GET, &format!("{index}/_count"), None);
    assert_eq!(
        count["count"], 2,
        "the failed restore changed OpenSearch: {count}"
    );
    assert!(
        err.contains("extracting the dumps needs") && err.contains("the disk is full"),
        "the error should say the dumps do not fit:\n{err}"
    );
    // Its scratch directory went with it.
    let scratch: Vec<_> = fs::read_dir(disk.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".itbackup-restore-")
        })
        .collect();
    assert!(scratch.is_empty(), "scratch left behind");

    opensearch(reqwest::Method::DELETE, index, None);
}

/// The OpenSearch test server's `path.repo` (its first entry).
fn path_repo() -> PathBuf {
    let settings = opensearch(reqwest::Method::GET, "_nodes/_local/settings", None);
    let node = settings["nodes"]
        .as_object()
        .and_then(|n| n.values().next())
        .expect("a node")
        .clone();
    let repo = &node["settings"]["path"]["repo"];
    PathBuf::from(
        repo.as_str()
            .or_else(|| repo[0].as_str())
            .expect("testenv's OpenSearch has path.repo"),
    )
}

#[test]
fn a_full_path_repo_stops_snapshot_backup_and_restore_before_they_start() {
    // The tmpfs hides every snapshot repository under path.repo while it is mounted.
    let _guard = exclusive(&[Opensearch]);
    let index = "itb-full-repo";
    random_index(index);
    let small: u64 = 64 * 1024;
    let stats = opensearch(
        reqwest::Method::GET,
        &format!("_cat/indices/{index}?format=json&bytes=b&h=pri.store.size"),
        None,
    );
    let store: u64 = stats[0]["pri.store.size"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        store > small,
        "the test index ({store} bytes) must outgrow {small} bytes"
    );

    let roomy = temp_root();
    let roomy_arg = roomy.path().to_str().unwrap();
    let snapshot_backup = [
        "--root",
        roomy_arg,
        "backup",
        "--services",
        "opensearch",
        "--opensearch-method",
        "snapshot",
        "--indices",
        index,
    ];
    ok(&snapshot_backup, &[]);
    let backup = only_backup(roomy.path());
    opensearch(
        reqwest::Method::PUT,
        &format!("{index}/_doc/after?refresh=true"),
        Some(serde_json::json!({"text": "after backup"})),
    );

    // path.repo on a small disk, owned like the real one so OpenSearch could write.
    let repo = path_repo();
    let owner = Command::new("stat")
        .args(["-c", "uid=%u,gid=%g,mode=0755"])
        .arg(&repo)
        .output()
        .expect("run stat");
    let owner = String::from_utf8_lossy(&owner.stdout).trim().to_string();
    let small_repo = SmallDisk::mount_over(&repo, small, &owner);

    let err = fails(&snapshot_backup, &[], exit::NO_SPACE);
    assert!(
        err.contains("the snapshot (a full copy") && err.contains("the disk is full"),
        "the backup should be refused for path.repo's free space:\n{err}"
    );
    assert_eq!(
        fs::read_dir(&repo).unwrap().count(),
        0,
        "the refused backup wrote under path.repo"
    );

    let err = fails(&restore_args(&backup, None), &[], exit::NO_SPACE);
    let count = opensearch(reqwest::Method::GET, &format!("{index}/_count"), None);
    assert_eq!(
        count["count"], 61,
        "the refused restore changed the index: {count}"
    );
    assert!(
        err.contains("unpacking the snapshot under path.repo needs")
            && err.contains("the disk is full"),
        "the restore should be refused for path.repo's free space:\n{err}"
    );

    drop(small_repo);
    opensearch(reqwest::Method::DELETE, index, None);
}

#[test]
fn a_download_that_would_not_fit_is_refused_before_it_starts() {
    let _guard = lock(&[Postgres], &[S3]);
    let _filler = Filler::create();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let url = format!("{}/full-disk-{nanos}", required_env("IT_S3_URL"));
    let roomy = temp_root();
    ok(
        &[
            "--root",
            roomy.path().to_str().unwrap(),
            "backup",
            "--services",
            "postgres",
            "--upload",
            &url,
            "--no-local",
        ],
        &[],
    );
    psql(
        "itb_filler",
        "UPDATE f SET payload = 'after backup' WHERE i = 1",
    );

    let disk = SmallDisk::mount(512 * 1024);
    let root = disk.path().to_str().unwrap();
    let err = fails(&["--root", root, "pull", &url], &[], exit::NO_SPACE);
    assert!(
        err.contains("downloading the backup needs") && err.contains("the disk is full"),
        "the pull should be refused for free space:\n{err}"
    );
    let err = fails(
        &["--root", root, "restore", "--from", &url, "--yes"],
        &[],
        exit::NO_SPACE,
    );
    assert_eq!(
        psql("itb_filler", "SELECT payload FROM f WHERE i = 1"),
        "after backup",
        "the refused restore changed PostgreSQL"
    );
    // The restore streams from the repository; what needs the room is
    // the custom format's dumps, extracted for pg_restore --jobs.
    assert!(
        err.contains("extracting the dumps needs"),
        "the restore should be refused for free space:\n{err}"
    );
    let left = disk.files_but_the_lock();
    assert!(left.is_empty(), "files left on the small disk: {left:?}");
    let dirs: Vec<_> = fs::read_dir(disk.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(
        dirs.is_empty(),
        "directories left on the small disk: {dirs:?}"
    );
}

#[test]
fn status_raises_an_alarm_before_the_next_backup_runs_out_of_room() {
    let _guard = exclusive(&[Postgres]);
    let _filler = Filler::create();
    let roomy = temp_root();
    let roomy_arg = roomy.path().to_str().unwrap();
    ok(
        &["--root", roomy_arg, "backup", "--services", "postgres"],
        &[],
    );
    // With room to spare: no alarm (and so exit 0).
    let fine = ok(&["--root", roomy_arg, "--json", "status", "--offline"], &[]);
    let fine: serde_json::Value = serde_json::from_slice(&fine.stdout).unwrap();
    assert_eq!(fine["ok"], true, "{fine:#}");
    assert!(fine["disk"]["free_bytes"].as_u64().unwrap() > 0, "{fine:#}");

    // The same backup on a disk left with less room than it takes.
    let backup = only_backup(roomy.path());
    let backup_bytes: u64 = fs::read_dir(&backup)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let disk = SmallDisk::mount(2 * backup_bytes + (4 << 20));
    copy_tree(&backup, &disk.path().join(backup.file_name().unwrap()));
    disk.fill_leaving(64 * 1024);
    let root = disk.path().to_str().unwrap();
    let out = itbackup(&["--root", root, "--json", "status", "--offline"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let alarms = report["alarms"].to_string();
    assert!(
        alarms.contains("the next backup will probably not fit"),
        "{report:#}"
    );
    assert_eq!(
        report["disk"]["newest_backup_bytes"].as_u64(),
        Some(backup_bytes),
        "{report:#}"
    );
}

/// One Cypher statement against the testenv Neo4j, over Bolt as itbackup talks to it.
fn cypher(statement: &str) {
    Neo::connect().run(statement);
}

#[test]
fn a_neo4j_export_that_fills_the_disk_says_so_with_the_path_and_leaves_nothing() {
    let _guard = exclusive(&[Neo4j]);
    // About 9 MB of properties that compress poorly: more than the writer's
    // queue holds, so the export is still sending when the disk fills and
    // finds the writer gone (the path that lost the disk error).
    cypher("MATCH (n:ItbFullDisk) DETACH DELETE n");
    cypher(
        "UNWIND range(1, 4000) AS i CREATE (:ItbFullDisk {i: i, pad: reduce(s = '', j IN range(1, 64) | s + randomUUID())})",
    );
    let disk = SmallDisk::mount(128 * 1024);
    let root = disk.path().to_str().unwrap();
    let args = [
        "--root",
        root,
        "backup",
        "--services",
        "neo4j",
        "--neo4j-method",
        "logical",
    ];
    let err = fails(&args, &[], exit::NO_SPACE);
    cypher("MATCH (n:ItbFullDisk) DETACH DELETE n");
    assert!(
        err.contains("neo4j: write export"),
        "the error should name the service and the step:\n{err}"
    );
    assert!(
        err.contains("No space left on device") && err.contains("the disk is full"),
        "the error should say the disk is full, with the usual advice:\n{err}"
    );
    assert!(
        err.contains(root) && err.contains("the export needs more than"),
        "the error should name where it was writing, and the room it had:\n{err}"
    );
    let left = disk.files_but_the_lock();
    assert!(left.is_empty(), "files left on the full disk: {left:?}");
    let listed = ok(&["--root", root, "--json", "list"], &[]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        listed["backups"].as_array().map(|b| b.len()),
        Some(0),
        "list shows a backup after a failed run: {listed}"
    );
}

/// tmpfs hands out space in pages.
const PAGE: u64 = 4096;

#[test]
fn a_backup_whose_manifest_does_not_fit_leaves_nothing_that_looks_complete() {
    let _guard = exclusive(&[Postgres, Opensearch, Neo4j]);
    let index = "itb-full-manifest";
    opensearch(reqwest::Method::DELETE, index, None);
    for doc in 0..20 {
        opensearch(
            reqwest::Method::PUT,
            &format!("{index}/_doc/{doc}"),
            Some(serde_json::json!({ "n": doc, "text": "a small document" })),
        );
    }
    opensearch(reqwest::Method::POST, &format!("{index}/_refresh"), None);
    // Every store, each writing its artifact straight into the backup
    // directory (no scratch copy), under a fixed name: the same run twice
    // writes the same bytes.
    let backup = [
        "backup",
        "--services",
        "postgres,opensearch,neo4j",
        "--postgres-format",
        "plain",
        "--opensearch-method",
        "logical",
        "--indices",
        index,
        "--neo4j-method",
        "logical",
        "--timestamp",
        "20260101_000000",
    ];

    // What the artifacts take on a tmpfs, measured on an ordinary disk.
    let roomy = temp_root();
    let mut args = vec!["--root", roomy.path().to_str().unwrap()];
    args.extend(backup);
    ok(&args, &[]);
    let mut artifacts = 0;
    let mut manifest = 0;
    for entry in fs::read_dir(only_backup(roomy.path())).unwrap().flatten() {
        let bytes = entry.metadata().unwrap().len();
        if entry.file_name() == "backup-manifest.json" {
            manifest = bytes;
        } else {
            artifacts += bytes.div_ceil(PAGE) * PAGE;
        }
    }
    assert!(manifest > 0 && artifacts > 0);

    // A disk with room for the artifacts and the root's lock file, and not a
    // byte more: the manifest, written last, does not fit.
    let disk = SmallDisk::mount(artifacts + (2 << 20));
    disk.fill_leaving(artifacts + PAGE);
    let root = disk.path().to_str().unwrap();
    let mut args = vec!["--root", root];
    args.extend(backup);
    let err = fails(&args, &[], exit::NO_SPACE);
    opensearch(reqwest::Method::DELETE, index, None);
    assert!(
        err.contains("write manifest") && err.contains("the disk is full"),
        "the manifest should be what did not fit:\n{err}"
    );
    // No artifact under its final name, no partial file, no directory that
    // could pass for a backup.
    let left: Vec<_> = disk
        .files_but_the_lock()
        .into_iter()
        .filter(|p| p.file_name().unwrap() != "filler")
        .collect();
    assert!(
        left.is_empty(),
        "a failed manifest left files that look like a backup: {left:?}"
    );
    let dirs: Vec<_> = fs::read_dir(disk.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.path())
        .collect();
    assert!(dirs.is_empty(), "directories left on the disk: {dirs:?}");
    let listed = ok(&["--root", root, "--json", "list"], &[]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        listed["backups"].as_array().map(|b| b.len()),
        Some(0),
        "list shows a backup after a failed run: {listed}"
    );
    let verify = fails(&["--root", root, "verify"], &[], exit::NOT_FOUND);
    assert!(
        !verify.contains("20260101_000000"),
        "verify found the failed backup:\n{verify}"
    );
}
