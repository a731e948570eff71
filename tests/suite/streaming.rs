//! Backups larger than the local disk: `backup --upload URL --no-local`
//! streams every artifact into the repository, and `verify --from` and
//! `restore --from` stream them back out, with the backup root on a small
//! tmpfs that a sampler watches all along (docs/remote.md, "Local disk").

use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::fixtures::{Neo4jGraph, OsIndex};
use common::*;

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The most the root may hold while a streaming command runs: its lock, a
/// staging directory with the stores' small records and the manifest, a
/// restore's scratch directory (docs/remote.md).
const LOCAL_BOUND: u64 = 4 * 1024 * 1024;
/// The root's disk: far smaller than the backup.
const DISK: u64 = 64 * 1024 * 1024;
/// The PostgreSQL table that makes the backup large: random bytes, which
/// neither PostgreSQL nor zstd can compress.
const BLOB_MIB: u64 = 1024;

/// Bytes in use on the file system at `path`, as `df` counts them (files
/// deleted while open included).
fn used_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut stats) }, 0);
    (stats.f_blocks - stats.f_bfree) * stats.f_frsize
}

/// Samples the disk's use every 10 ms until dropped; `peak` is the most seen.
struct Sampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(path: &Path) -> Sampler {
        let (peak, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (p, s, path) = (peak.clone(), stop.clone(), path.to_path_buf());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(used_bytes(&path), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Sampler {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn peak(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// The big table, and what proves it came back: rows, bytes, a digest.
struct Blob;

impl Blob {
    fn create() -> Blob {
        psql("postgres", "CREATE EXTENSION IF NOT EXISTS pgcrypto");
        psql(
            "postgres",
            "DROP TABLE IF EXISTS stream_blob; \
             CREATE TABLE stream_blob (id int PRIMARY KEY, b bytea); \
             ALTER TABLE stream_blob ALTER COLUMN b SET STORAGE EXTERNAL",
        );
        // 8 KiB rows of fresh random bytes each (an uncorrelated subquery
        // would be one value for every row, which compresses to nothing),
        // written in slices so that no statement runs long.
        let row = ["gen_random_bytes(1024)"; 8].join(" || ");
        let rows = BLOB_MIB * 128;
        for first in (0..rows).step_by(16384) {
            psql(
                "postgres",
                &format!(
                    "INSERT INTO stream_blob SELECT g, {row} FROM generate_series({first}, {}) g",
                    (first + 16384).min(rows) - 1
                ),
            );
        }
        psql("postgres", "CHECKPOINT");
        Blob
    }

    fn fingerprint() -> String {
        psql(
            "postgres",
            "SELECT count(*), sum(length(b)), md5(string_agg(md5(b), '' ORDER BY id)) FROM stream_blob",
        )
    }
}

impl Drop for Blob {
    fn drop(&mut self) {
        psql("postgres", "DROP TABLE IF EXISTS stream_blob");
    }
}

#[test]
fn a_backup_many_times_the_local_disk_streams_through_the_repository_and_back() {
    let _guard = exclusive(&[Postgres, Opensearch, Neo4j, S3]);
    let _server = ServerBack;
    let disk = SmallDisk::mount(DISK);
    let root = disk.path();
    let url = repository("streaming");
    let keys = temp_root();
    let key = keys.path().join("key.txt");
    let recipient = json_of(&ok(&["--json", "keygen", "--out", s(&key)], &[]))["recipient"]
        .as_str()
        .unwrap()
        .to_string();
    let key = s(&key).to_string();
    let blob = Blob::create();
    let before = Blob::fingerprint();
    let (index, graph) = (
        OsIndex {
            index: "itb-streaming",
            docs: 500,
        },
        Neo4jGraph {
            label: "ItbStreaming",
            nodes: 500,
        },
    );
    index.populate();
    graph.populate();
    let others = (index.fingerprint(), graph.fingerprint());

    let sampler = Sampler::start(root);
    let out = Cmd::backup(root)
        .arg("--json")
        .arg("--postgres-method")
        .arg("physical")
        .arg("--upload")
        .arg(url.as_str())
        .arg("--no-local")
        .arg("--encrypt-to")
        .arg(recipient.as_str())
        .ok(&[]);
    let backup_peak = sampler.peak();
    let manifest = &json_of(&out)["result"]["manifest"];
    let artifacts: u64 = manifest["artifacts"]
        .as_object()
        .unwrap()
        .values()
        .map(|a| a["bytes"].as_u64().unwrap())
        .sum();
    assert!(
        artifacts >= BLOB_MIB << 20,
        "the artifacts hold {artifacts} bytes, less than the {BLOB_MIB} MiB the test means"
    );

    let sampler = Sampler::start(root);
    ok(
        &[
            "--root",
            s(root),
            "verify",
            "--from",
            &url,
            "--identity",
            &key,
        ],
        &[],
    );
    let verify_peak = sampler.peak();

    psql("postgres", "UPDATE stream_blob SET b = '' WHERE id < 10");
    index.change();
    graph.change();
    let sampler = Sampler::start(root);
    Cmd::restore(root)
        .yes()
        .arg("--from")
        .arg(url.as_str())
        .arg("--identity")
        .arg(key.as_str())
        .ok(&[]);
    let restore_peak = sampler.peak();
    assert_eq!(Blob::fingerprint(), before, "the restored table differs");
    assert_eq!((index.fingerprint(), graph.fingerprint()), others);
    remove_kept_data_dirs();
    drop(blob);
    index.cleanup();
    graph.cleanup();

    for (command, peak) in [
        ("backup", backup_peak),
        ("verify", verify_peak),
        ("restore", restore_peak),
    ] {
        eprintln!("{command}: local disk peak {peak} bytes for {artifacts} bytes of artifacts");
        assert!(
            peak <= LOCAL_BOUND,
            "{command} held {peak} bytes on the root's disk, more than the documented {LOCAL_BOUND}"
        );
    }
}
